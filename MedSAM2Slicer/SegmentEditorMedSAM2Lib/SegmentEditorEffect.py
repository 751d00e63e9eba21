"""MedSAM2 segment-editor effect: an interactive session per segment: a box segments its slice at once,
Propagate follows it through the volume, clicks on any slice of that axis correct it, Update re-propagates.

A thin Qt layer: it wires widgets and mouse events to MedSAM2Lib, which the headless tests run: the box and
what events do to it (slicer_glue.box), clicks and keys as session actions (slicer_glue.gestures), the
sessions and their undoable writes (slicer_glue.interactive), one run at a time with cancel and the write into the segment chosen at
the start (slicer_glue.run_controller), setup (slicer_glue.setup_flow, through the MedSAM2 module's logic),
the computation and the undoable write (slicer_glue.logic). Only torch-free modules are imported at the top:
Slicer loads this file at startup, before PyTorch may be installed.
"""

import os

import qt
import vtk

import slicer
from MedSAM2Lib.slicer_glue.box import BoxTool, rotate_views_to_grid
from MedSAM2Lib.slicer_glue.gestures import ViewGestures
from MedSAM2Lib.slicer_glue.run_controller import selected_has_saved_session, session_buttons
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

DIRECTIONS = [("Both directions", "both"), ("Forward (increasing slice index)", "forward"),
              ("Backward (decreasing slice index)", "backward")]
WINDOWINGS = [("Display window (as shown)", "display"), ("CT soft tissue", "soft-tissue"),
              ("CT lung", "lung"), ("CT bone", "bone"), ("CT brain", "brain"),
              ("MR percentiles 0.5-99.5", "mr-percentiles"), ("Values as they are (0-255)", "none")]
# VTK interactor events -> BoxTool events. The double-click is taken too: unhandled, it maximizes the view
# (SegmentEditorDrawEffect handles it for the same reason).
BOX_EVENTS = {vtk.vtkCommand.LeftButtonPressEvent: "press", vtk.vtkCommand.MouseMoveEvent: "move",
              vtk.vtkCommand.LeftButtonReleaseEvent: "release", vtk.vtkCommand.LeftButtonDoubleClickEvent: "double_click"}
KEY_EVENTS = {"Escape": "escape", "BackSpace": "backspace"}
WRITE_MODES = [("Replace the computed slices", "replace"), ("Add to the segment's earlier content", "add")]
POINT_COLOURS = {1: (0, 220, 0), 0: (230, 40, 40)}  # object, background


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Box and point prompts -> the selected segment (created if none), one MedSAM2 session per segment."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAM2"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = False  # the first propagation creates a segment
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.tool = BoxTool()
        self.gestures = ViewGestures(self.tool)
        self.segmenter = None  # MedSAM2Lib InteractiveSegmenter on the current logic (after setup)
        self.actors = {}  # slice widget -> BoxActor showing the box there
        self.pointActors = {}  # slice widget -> PointsActor showing the session's points of its slice
        self.lastSliceWidget = None  # the view clicked last: "Use the segment on this slice" works there
        self.sceneClosedTag = None
        self.logic = None  # a MedSAM2Logic to use instead of the module's (the self-test sets it)
        self.stopObservingRuns = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return """<html>MedSAM2: <b>drag a box</b> around a structure: its slice is segmented at once; <b>Propagate</b> follows it through the volume, each direction ending a few slices after the structure (<i>Early stop</i>).<br>
<b>Click</b> (object) or <b>Shift+click</b> (background) on any slice of that axis re-segments it; <b>Update</b> (or <i>Update automatically</i>) re-propagates from there; <b>Ctrl+click</b> a point removes it, <b>Backspace</b> the last one.<br>
<b>Use the segment on this slice</b> makes a repainted slice the prompt; each segment keeps its session (or each box gets a new segment); Undo reverts the segment; Esc or Cancel stops a run.</html>"""

    # -- options ------------------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        self.directionCombo = qt.QComboBox()
        for label, value in DIRECTIONS:
            self.directionCombo.addItem(label, value)
        self.scriptedEffect.addLabeledOptionsWidget("Direction:", self.directionCombo)

        self.rangeCheckBox = qt.QCheckBox("Only slices")
        self.rangeCheckBox.setToolTip("Voxel indices along the axis the view looks through; must include the box's slice.")
        self.rangeFirstSpinBox = qt.QSpinBox()
        self.rangeLastSpinBox = qt.QSpinBox()
        for spinBox in (self.rangeFirstSpinBox, self.rangeLastSpinBox):
            spinBox.setRange(0, 100000)
        rangeLayout = qt.QHBoxLayout()
        rangeLayout.addWidget(self.rangeCheckBox)
        rangeLayout.addWidget(self.rangeFirstSpinBox)
        rangeLayout.addWidget(qt.QLabel("to"))
        rangeLayout.addWidget(self.rangeLastSpinBox)
        self.scriptedEffect.addLabeledOptionsWidget("Range:", rangeLayout)

        # The model is a setting of the MedSAM2 module too (MedSAM2Settings): one choice for the panel and here.
        self.modelCombo = qt.QComboBox()
        self.modelCombo.setToolTip("Which MedSAM2 model segments; one not yet downloaded is downloaded after one "
                                   "confirmation when it is first used.")
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelCombo)

        # Early stop is a setting of the MedSAM2 module (MedSAM2Settings, kept across Slicer sessions), as precision
        # and device are: the module's logic hands it to the predictor and to every session.
        self.earlyStopCheckBox = qt.QCheckBox("Stop a direction after")
        self.earlyStopCheckBox.setToolTip("The model's object score says where the structure ends; unticked, each "
                                          "direction tracks to the end of the volume or range.")
        self.earlyStopSpinBox = qt.QSpinBox()
        self.earlyStopSpinBox.setRange(1, 1000)
        self.earlyStopSpinBox.suffix = " slices without the object"
        earlyStopLayout = qt.QHBoxLayout()
        earlyStopLayout.addWidget(self.earlyStopCheckBox)
        earlyStopLayout.addWidget(self.earlyStopSpinBox)
        self.scriptedEffect.addLabeledOptionsWidget("Early stop:", earlyStopLayout)

        self.windowingCombo = qt.QComboBox()
        for label, value in WINDOWINGS:
            self.windowingCombo.addItem(label, value)
        self.windowingCombo.setToolTip("How intensities become the model's 0-255 input.")
        self.scriptedEffect.addLabeledOptionsWidget("Intensities:", self.windowingCombo)

        self.fillHolesCheckBox = qt.QCheckBox("Fill small holes")
        self.largestComponentCheckBox = qt.QCheckBox("Keep largest 3D component")
        postLayout = qt.QHBoxLayout()
        postLayout.addWidget(self.fillHolesCheckBox)
        postLayout.addWidget(self.largestComponentCheckBox)
        self.scriptedEffect.addOptionsWidget(postLayout)

        self.backgroundCheckBox = qt.QCheckBox("Clicks add background points")
        self.backgroundCheckBox.setToolTip("Without it, Shift+click adds a background point.")
        self.autoUpdateCheckBox = qt.QCheckBox("Update automatically")
        self.autoUpdateCheckBox.setToolTip("Re-propagate after every correction instead of on Update.")
        self.newSegmentCheckBox = qt.QCheckBox("New segment for each box")
        self.newSegmentCheckBox.setToolTip("Each box creates and selects a segment with its own session.")
        sessionLayout = qt.QHBoxLayout()
        for checkBox in (self.backgroundCheckBox, self.autoUpdateCheckBox, self.newSegmentCheckBox):
            sessionLayout.addWidget(checkBox)
        self.scriptedEffect.addOptionsWidget(sessionLayout)
        self.writeModeCombo = qt.QComboBox()
        for label, value in WRITE_MODES:
            self.writeModeCombo.addItem(label, value)
        self.scriptedEffect.addLabeledOptionsWidget("Write:", self.writeModeCombo)

        self.propagateButton = qt.QPushButton("Propagate")
        self.propagateButton.setToolTip("Follow the structure through the volume; after corrections, Update "
                                        "recomputes only what they change.")
        self.useSegmentButton = qt.QPushButton("Use the segment on this slice")
        self.useSegmentButton.setToolTip("The segment's content on the slice shown in the view clicked last becomes "
                                         "that slice's prompt; then re-propagate.")
        self.resetButton = qt.QPushButton("Reset")
        self.resetButton.setToolTip("Forget the selected segment's prompts (the segment is kept).")
        self.cancelButton = qt.QPushButton("Cancel")
        buttonLayout = qt.QHBoxLayout()
        for button in (self.propagateButton, self.useSegmentButton, self.resetButton, self.cancelButton):
            buttonLayout.addWidget(button)
        self.scriptedEffect.addOptionsWidget(buttonLayout)

        self.progressBar = qt.QProgressBar()
        self.statusLabel = qt.QLabel("Drag a box around the structure in a slice view.")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        for widget, signal in ((self.directionCombo, "currentIndexChanged(int)"),
                               (self.windowingCombo, "currentIndexChanged(int)"),
                               (self.rangeCheckBox, "toggled(bool)"),
                               (self.rangeFirstSpinBox, "valueChanged(int)"),
                               (self.rangeLastSpinBox, "valueChanged(int)"),
                               (self.fillHolesCheckBox, "toggled(bool)"),
                               (self.largestComponentCheckBox, "toggled(bool)"),
                               (self.backgroundCheckBox, "toggled(bool)"),
                               (self.autoUpdateCheckBox, "toggled(bool)"),
                               (self.newSegmentCheckBox, "toggled(bool)"),
                               (self.writeModeCombo, "currentIndexChanged(int)")):
            widget.connect(signal, self.updateMRMLFromGUI)
        self.modelCombo.connect("currentIndexChanged(int)", self.onModelChanged)
        self.earlyStopCheckBox.connect("toggled(bool)", self.onEarlyStopChanged)
        self.earlyStopSpinBox.connect("valueChanged(int)", self.onEarlyStopChanged)
        self.propagateButton.connect("clicked()", self.propagate)
        self.useSegmentButton.connect("clicked()", self.useSegmentOnSlice)
        self.resetButton.connect("clicked()", self.reset)
        self.cancelButton.connect("clicked()", self.cancel)
        # Sessions belong to the scene's volumes: they end when it closes.
        self.sceneClosedTag = slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)
        self.updateButtons()

    def setMRMLDefaults(self):
        for name, value in (("Direction", "both"), ("Windowing", "display"), ("RangeEnabled", 0),
                            ("RangeFirst", 0), ("RangeLast", 0), ("FillHoles", 1), ("LargestComponent", 1),
                            ("BackgroundClicks", 0), ("AutoUpdate", 0), ("NewSegmentPerBox", 0), ("WriteMode", "replace")):
            self.scriptedEffect.setParameterDefault(name, value)

    def updateGUIFromMRML(self):
        effect = self.scriptedEffect
        widgets = (self.directionCombo, self.windowingCombo, self.rangeCheckBox, self.rangeFirstSpinBox,
                   self.rangeLastSpinBox, self.fillHolesCheckBox, self.largestComponentCheckBox, self.backgroundCheckBox,
                   self.autoUpdateCheckBox, self.newSegmentCheckBox, self.writeModeCombo, self.earlyStopCheckBox,
                   self.earlyStopSpinBox)
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.directionCombo.setCurrentIndex(max(0, self.directionCombo.findData(effect.parameter("Direction"))))
        self.windowingCombo.setCurrentIndex(max(0, self.windowingCombo.findData(effect.parameter("Windowing"))))
        self.rangeCheckBox.checked = effect.integerParameter("RangeEnabled") != 0
        self.rangeFirstSpinBox.value = effect.integerParameter("RangeFirst")
        self.rangeLastSpinBox.value = effect.integerParameter("RangeLast")
        self.fillHolesCheckBox.checked = effect.integerParameter("FillHoles") != 0
        self.largestComponentCheckBox.checked = effect.integerParameter("LargestComponent") != 0
        self.backgroundCheckBox.checked = effect.integerParameter("BackgroundClicks") != 0
        self.autoUpdateCheckBox.checked = effect.integerParameter("AutoUpdate") != 0
        self.newSegmentCheckBox.checked = effect.integerParameter("NewSegmentPerBox") != 0
        self.writeModeCombo.setCurrentIndex(max(0, self.writeModeCombo.findData(effect.parameter("WriteMode"))))
        settings = moduleLogic().settings
        self.earlyStopCheckBox.checked = settings.early_stop() is not None
        self.earlyStopSpinBox.value = settings.early_stop_slices()
        moduleWidgets().fillModelCombo(self.modelCombo, settings)  # blocks its own signals
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        self.updateButtons()
        self.drawPoints()  # the selected segment may have changed: show its session's points

    def updateMRMLFromGUI(self):
        effect = self.scriptedEffect
        effect.setParameter("Direction", self.directionCombo.currentData)
        effect.setParameter("Windowing", self.windowingCombo.currentData)
        effect.setParameter("RangeEnabled", int(self.rangeCheckBox.checked))
        effect.setParameter("RangeFirst", self.rangeFirstSpinBox.value)
        effect.setParameter("RangeLast", self.rangeLastSpinBox.value)
        effect.setParameter("FillHoles", int(self.fillHolesCheckBox.checked))
        effect.setParameter("LargestComponent", int(self.largestComponentCheckBox.checked))
        effect.setParameter("BackgroundClicks", int(self.backgroundCheckBox.checked))
        effect.setParameter("AutoUpdate", int(self.autoUpdateCheckBox.checked))
        effect.setParameter("NewSegmentPerBox", int(self.newSegmentCheckBox.checked))
        effect.setParameter("WriteMode", self.writeModeCombo.currentData)

    def onModelChanged(self, index):
        """Applies to the next run (the setup downloads the model first if needed)."""
        moduleWidgets().onModelChosen(self.modelCombo, index)
        self.updateButtons()

    def onEarlyStopChanged(self):
        """Applies to the next Propagate or Update, also of the sessions started before."""
        moduleLogic().settings.set_early_stop(self.earlyStopSpinBox.value if self.earlyStopCheckBox.checked else None)
        self.updateButtons()

    def updateButtons(self):
        runs = moduleLogic().runs
        session = self.selectedSession()
        buttons = session_buttons(session.propagated if session is not None else None, self.selectedHasSavedSession(),
                                  self.segmenter is not None, runs.busy)
        self.propagateButton.text = buttons.propagate_text
        self.propagateButton.enabled = self.useSegmentButton.enabled = buttons.propagate_enabled
        self.resetButton.enabled = buttons.reset_enabled
        self.cancelButton.enabled = runs.busy
        self.rangeFirstSpinBox.enabled = self.rangeLastSpinBox.enabled = self.rangeCheckBox.checked
        self.earlyStopSpinBox.enabled = self.earlyStopCheckBox.checked

    def activate(self):
        if self.stopObservingRuns is None:
            self.stopObservingRuns = moduleLogic().runs.observe(self.updateButtons)

    def deactivate(self):
        # Esc (the Segment Editor's shortcut), another effect, another module or another segmentation deactivate
        # the effect, also while a run processes events: the run stops and writes nothing.
        moduleLogic().runs.cancel("The MedSAM2 effect was deactivated.", owner=self)
        self.clearBox()
        self.removePoints()

    def cleanup(self):
        """Called before the effect is deleted (qSlicerSegmentEditorAbstractEffect::cleanup): nothing of ours may
        outlive it."""
        self.clearBox()
        self.removePoints()
        if self.stopObservingRuns is not None:
            self.stopObservingRuns()
            self.stopObservingRuns = None
        if self.sceneClosedTag is not None:
            slicer.mrmlScene.RemoveObserver(self.sceneClosedTag)
            self.sceneClosedTag = None

    # -- the box ------------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.KeyPressEvent:
            event = KEY_EVENTS.get(callerInteractor.GetKeySym())
        else:
            event = BOX_EVENTS.get(eventId)
        if event is None:
            return False
        busy = moduleLogic().runs.busy
        gesture = self.gestures.handle(
            event, viewWidget.mrmlSliceNode(), callerInteractor.GetEventPosition(),
            shift=bool(callerInteractor.GetShiftKey()), control=bool(callerInteractor.GetControlKey()),
            alt=bool(callerInteractor.GetAltKey()), running=busy, background=self.backgroundCheckBox.checked,
            tolerance_mm=sliceTolerance(viewWidget), segmenter=self.segmenter,
            editor=self.editorAccess() if self.segmenter is not None else None)
        result = gesture.box_event
        if result.cancel_run:
            moduleLogic().runs.cancel("Cancelled (Esc).", owner=self)
        if result.changed:
            self.drawBox()
            self.updateButtons()
        if result.status:
            self.statusLabel.text = result.status
        if event == "press":
            self.lastSliceWidget = viewWidget
        if gesture.action is not None:
            # Run after the event returns: a run processes Qt events, which must not happen inside this handler.
            qt.QTimer.singleShot(0, lambda: self.act(gesture.action, *gesture.arguments))
        return result.consumed

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        if self.tool.box is not None and self.tool.box.slice_node is viewWidget.mrmlSliceNode():
            self.drawBox()  # pan, zoom and scrolling change where and how the box is drawn
        self.drawPoints(viewWidget)  # points are shown on their own slice only

    def setBox(self, sliceWidget, xyCorners):
        """Set the box programmatically: two opposite corners in the view's XY coordinates."""
        sliceNode = sliceWidget.mrmlSliceNode()
        tolerance = sliceTolerance(sliceWidget)
        self.tool.box = None
        for event, xy in (("press", xyCorners[0]), ("move", xyCorners[1]), ("release", xyCorners[1])):
            self.tool.handle(event, sliceNode, xy, False, False, tolerance)
        self.drawBox()
        self.updateButtons()

    def clearBox(self):
        self.tool.box = None
        self.drawBox()
        if hasattr(self, "propagateButton"):
            self.updateButtons()

    def drawBox(self):
        """Show the box in its view only; remove the actors of views that no longer show it."""
        box = self.tool.box
        for sliceWidget in list(self.actors):
            if box is None or sliceWidget.mrmlSliceNode() is not box.slice_node:
                self.actors.pop(sliceWidget).remove()
        if box is None:
            return
        sliceWidget = sliceWidgetOf(box.slice_node)
        if sliceWidget is None:
            return
        if sliceWidget not in self.actors:
            self.actors[sliceWidget] = BoxActor(self.scriptedEffect, sliceWidget)
        self.actors[sliceWidget].show(*box.outline(sliceTolerance(sliceWidget)))

    # -- the session's points --------------------------------------------------------------------------

    def drawPoints(self, sliceWidget=None):
        """Show the selected segment's points of the slice each view shows (or only sliceWidget's)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or not hasattr(self, "propagateButton"):
            return
        widgets = [sliceWidget] if sliceWidget is not None else [
            layoutManager.sliceWidget(name) for name in layoutManager.sliceViewNames()]
        editor = self.editorAccess() if self.segmenter is not None else None
        for widget in widgets:
            points = self.segmenter.points_in_view(editor, widget.mrmlSliceNode()) if editor is not None else []
            if not points and widget not in self.pointActors:
                continue
            if widget not in self.pointActors:
                self.pointActors[widget] = PointsActor(self.scriptedEffect, widget)
            self.pointActors[widget].show(points)

    def removePoints(self):
        for actor in self.pointActors.values():
            actor.remove()
        self.pointActors = {}

    # -- running ------------------------------------------------------------------------------------------

    def propagate(self):
        self.act("propagate")

    def useSegmentOnSlice(self):
        sliceWidget = self.lastSliceWidget or slicer.app.layoutManager().sliceWidget("Red")
        self.act("use_segment_on_slice", sliceWidget.mrmlSliceNode())

    def reset(self):
        if self.segmenter is not None:  # a session saved in the segment's tag is dropped too (not restored)
            self.segmenter.end_session(self.editorAccess())
        self.clearBox()
        self.drawPoints()
        self.updateButtons()
        self.statusLabel.text = "The selected segment's MedSAM2 session was reset. Drag a box to start again."

    def cancel(self):
        moduleLogic().runs.cancel("Cancelled.", owner=self)

    def onSceneClosed(self, caller=None, event=None):
        if self.segmenter is not None:
            self.segmenter.end_sessions()
        self.removePoints()

    def selectedSession(self):
        return self.segmenter.session_of(self.editorAccess()) if self.segmenter is not None else None

    def selectedHasSavedSession(self):
        """The selected segment keeps a session in its tag (after a scene was loaded) that its next action
        restores (InteractiveSegmenter.restorable); before setup, read without torch."""
        if self.segmenter is not None:
            return self.segmenter.restorable(self.editorAccess())
        return selected_has_saved_session(self.scriptedEffect.parameterSetNode())

    def act(self, action, *arguments):
        """One session action (InteractiveSegmenter.compute_<action>) as one run of the shared controller; every
        failure reaches a dialog or, for a refusal, the status line, which is updated whatever happens."""
        # No waitCursor=True: the setup's confirmation and download, the hidden-segment and the rotate dialogs need
        # a normal cursor; tryWithErrorDisplay shows the error and re-raises (slicer/util.py), so the buttons are
        # updated in finally.
        try:
            with slicer.util.tryWithErrorDisplay("MedSAM2 could not segment."):
                # Setup first, as its own step of the shared controller: nothing below may import torch before.
                if self.logic is None and not moduleLogic().setUp(owner=self):
                    self.statusLabel.text = "MedSAM2 is not set up yet: nothing was changed."
                    return
                from MedSAM2Lib.slicer_glue.geometry import ObliqueViewError
                from MedSAM2Lib.slicer_glue.interactive import InteractionError

                try:
                    segmenter = self.segmenterForRun()
                    outcome = segmenter.run(moduleLogic().runs, self.editorAccess(), action, *arguments,
                                            self.sessionOptions(), owner=self, progress=self.onProgress,
                                            confirm_target=self.confirmTargetVisible)
                    self.statusLabel.text = outcome.message
                except InteractionError as refusal:  # a sentence saying what to do instead
                    self.statusLabel.text = str(refusal)
                except ObliqueViewError as error:
                    restoreWaitCursor()
                    self.offerRotateViews(str(error))
        finally:
            restoreWaitCursor()
            self.progressBar.value = 0
            self.drawPoints()
            self.updateButtons()

    def segmenterForRun(self):
        """The sessions live on the logic (the model and its image features): a new logic, after the model or the
        device changed, starts without sessions."""
        from MedSAM2Lib.slicer_glue.interactive import InteractiveSegmenter

        logic = self.logicForRun()
        if self.segmenter is None or self.segmenter.logic is not logic:
            self.segmenter = InteractiveSegmenter(logic)
        return self.segmenter

    def sessionOptions(self):
        from MedSAM2Lib.slicer_glue.interactive import InteractiveOptions

        effect = self.scriptedEffect
        return InteractiveOptions(add=effect.parameter("WriteMode") == "add",
                                  auto_update=effect.integerParameter("AutoUpdate") != 0,
                                  new_segment_per_box=effect.integerParameter("NewSegmentPerBox") != 0,
                                  **self.segmentOptions())

    def editorAccess(self):
        from MedSAM2Lib.slicer_glue.logic import EditorAccess  # imports torch: only after setup can run

        return EditorAccess(ScriptedEffectBackend(self.scriptedEffect))

    def logicForRun(self):
        """The logic on the module's model, kept with its image features between clicks; loading the model is
        the first slow step, so the wait cursor starts here (after any setup dialog)."""
        setWaitCursor()
        effect = self.scriptedEffect
        return self.logic or moduleLogic().segmentationLogic(effect.integerParameter("FillHoles") != 0,
                                                             effect.integerParameter("LargestComponent") != 0)

    def confirmTargetVisible(self, target):
        # Draw and Paint ask before editing a hidden segment (qSlicerSegmentEditorAbstractEffect::
        # confirmCurrentSegmentVisible: Yes shows it, No goes on, Cancel stops).
        return self.scriptedEffect.confirmCurrentSegmentVisible() != self.scriptedEffect.NotConfirmed

    def segmentOptions(self):
        from MedSAM2Lib.inference.preprocessing import Windowing  # imports torch: only after setup

        effect = self.scriptedEffect
        windowing = effect.parameter("Windowing")
        options = {"windowing": None if windowing == "display" else Windowing.parse(windowing),
                   "direction": effect.parameter("Direction")}
        if effect.integerParameter("RangeEnabled"):
            options["slice_range"] = (effect.integerParameter("RangeFirst"), effect.integerParameter("RangeLast"))
        return options

    def onProgress(self, done, total):
        self.progressBar.maximum = total
        self.progressBar.value = done
        self.statusLabel.text = f"Segmenting slice {done} of {total}... (Esc or Cancel stops)"
        slicer.app.processEvents()  # keeps the GUI responsive and lets Cancel be clicked

    def offerRotateViews(self, message):
        box = qt.QMessageBox(qt.QMessageBox.Warning, "MedSAM2", message, qt.QMessageBox.Cancel, slicer.util.mainWindow())
        rotateButton = box.addButton("Rotate slice views to the segmentation", qt.QMessageBox.AcceptRole)
        box.exec_()
        if box.clickedButton() != rotateButton:
            return
        source = self.editorAccess().source()
        layoutManager = slicer.app.layoutManager()
        sliceNodes = [layoutManager.sliceWidget(name).mrmlSliceNode() for name in layoutManager.sliceViewNames()]
        import numpy as np

        rotated = rotate_views_to_grid(sliceNodes, np.linalg.inv(source.ras_to_array_index()))
        self.clearBox()
        self.statusLabel.text = f"Rotated {len(rotated)} view(s) to the segmentation's grid: draw the box again."


def moduleLogic():
    return moduleWidgets().moduleLogic()


def moduleWidgets():
    """The MedSAM2 module's Python module (its logic and the model combo helpers shared with its panel)."""
    import MedSAM2

    return MedSAM2


def sliceWidgetOf(sliceNode):
    layoutManager = slicer.app.layoutManager()
    return layoutManager.sliceWidget(sliceNode.GetLayoutName()) if layoutManager is not None else None


def sliceTolerance(sliceWidget):
    """Half the slice spacing of the view: the box counts as on the slice shown within it (one scroll step is a
    whole spacing, vtkMRMLSliceLogic::GetLowestVolumeSliceSpacing)."""
    return sliceWidget.sliceLogic().GetLowestVolumeSliceSpacing()[2] / 2


_waitCursorSet = False


def setWaitCursor():
    global _waitCursorSet
    if not _waitCursorSet:
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        _waitCursorSet = True


def restoreWaitCursor():
    global _waitCursorSet
    if _waitCursorSet:
        slicer.app.restoreOverrideCursor()
        _waitCursorSet = False


class ScriptedEffectBackend:
    """MedSAM2Lib's EditorBackend on the effect API, so that the Segment Editor's undo sees the edit."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def editor_node(self):
        return self.scriptedEffect.parameterSetNode()

    def aligned_source_image(self):
        return self.scriptedEffect.sourceVolumeImageData()

    def save_state_for_undo(self):
        self.scriptedEffect.saveStateForUndo()

    def modify_segment(self, segmentation_node, segment_id, labelmap):
        # qSlicerSegmentEditorAbstractEffect::modifySegmentByLabelmap(segmentationNode, segmentID, ...): the
        # segment captured when the run started, not the one selected now.
        self.scriptedEffect.modifySegmentByLabelmap(
            segmentation_node, segment_id, labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet
        )


class BoxActor:
    """The box's outline in one slice view, as BoxTool computes it (dashed and faded off the box's slice)."""

    def __init__(self, scriptedEffect, sliceWidget):
        self.scriptedEffect = scriptedEffect
        self.sliceWidget = sliceWidget
        self.polyData = vtk.vtkPolyData()
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(self.polyData)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(1, 1, 0)
        self.actor.GetProperty().SetLineWidth(2)
        scriptedEffect.addActor2D(sliceWidget, self.actor)

    def show(self, display, segments):
        points = vtk.vtkPoints()
        lines = vtk.vtkCellArray()
        for start, end in segments:
            lines.InsertNextCell(2, [points.InsertNextPoint(start[0], start[1], 0.0),
                                     points.InsertNextPoint(end[0], end[1], 0.0)])
        self.polyData.SetPoints(points)
        self.polyData.SetLines(lines)
        self.actor.GetProperty().SetOpacity(display.opacity)
        self.sliceWidget.sliceView().scheduleRender()

    def remove(self):
        self.scriptedEffect.removeActor2D(self.sliceWidget, self.actor)
        self.sliceWidget.sliceView().scheduleRender()


class PointsActor:
    """Points of the session in one slice view: green dots for object points, red for background points."""

    def __init__(self, scriptedEffect, sliceWidget):
        self.scriptedEffect = scriptedEffect
        self.sliceWidget = sliceWidget
        self.polyData = vtk.vtkPolyData()
        glyph = vtk.vtkGlyphSource2D()
        glyph.SetGlyphTypeToCircle()
        glyph.FilledOn()
        glyph.SetScale(10)
        glyphs = vtk.vtkGlyph2D()
        glyphs.SetInputData(self.polyData)
        glyphs.SetSourceConnection(glyph.GetOutputPort())
        glyphs.SetScaleModeToDataScalingOff()
        glyphs.SetColorModeToColorByScalar()
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputConnection(glyphs.GetOutputPort())
        mapper.SetColorModeToDirectScalars()  # the points' RGB values, not a lookup table
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        scriptedEffect.addActor2D(sliceWidget, self.actor)

    def show(self, points):
        """points: (x, y, label) in the view's XY."""
        vtkPoints = vtk.vtkPoints()
        colours = vtk.vtkUnsignedCharArray()
        colours.SetNumberOfComponents(3)
        for x, y, label in points:
            vtkPoints.InsertNextPoint(x, y, 0.0)
            colours.InsertNextTuple3(*POINT_COLOURS[label])
        self.polyData.SetPoints(vtkPoints)
        self.polyData.GetPointData().SetScalars(colours)
        self.polyData.Modified()
        self.sliceWidget.sliceView().scheduleRender()

    def remove(self):
        self.scriptedEffect.removeActor2D(self.sliceWidget, self.actor)
        self.sliceWidget.sliceView().scheduleRender()
