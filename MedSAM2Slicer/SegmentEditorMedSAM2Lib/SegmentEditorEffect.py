"""MedSAM2 segment-editor effect: an interactive session per segment: a box segments its slice at once,
Propagate follows it through the volume, clicks on any slice of that axis correct it, Update re-propagates.

A thin Qt layer: it wires widgets and mouse events to MedSAM2Lib, which the headless tests run: the box and
what events do to it (slicer_glue.box), clicks and keys as session actions (slicer_glue.gestures), what the
effect decides (slicer_glue.effect: which events and views, what is shown for the selected segment, parameters
to options, setup before computing, status line or dialog), the sessions and their undoable writes
(slicer_glue.interactive), one run at a time with cancel and the write into the segment chosen at the start
(slicer_glue.run_controller), setup (through the MedSAM2 module's slicer_glue.module_state). Only torch-free
modules are imported at the top: Slicer loads this file at startup, before PyTorch may be installed.
"""

import os
import traceback

import qt
import vtk

import slicer
from MedSAM2Lib.slicer_glue.effect import (DIRECTIONS, PARAMETER_DEFAULTS, WINDOWINGS, WRITE_MODES, DeferredActions,
                                           LastSliceView, PreEncodeTrigger, SelectionWatch, act_after_setup,
                                           offers_through_time, post_processing, progress_sentence, report_for,
                                           reset_session, segmenter_for, session_options, slice_node_of, through_time,
                                           what_to_show)
from MedSAM2Lib.slicer_glue.box import BoxTool, rotate_views_to_segmentation, slice_tolerance_mm
from MedSAM2Lib.slicer_glue.gestures import KEY_EVENTS, ViewGestures, point_glyph_mapper, set_point_glyphs
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

# VTK interactor events -> gesture events. The double-click is taken too: unhandled, it maximizes the view
# (SegmentEditorDrawEffect handles it for the same reason). Esc is not among the keys: the Segment Editor widget
# owns it (qMRMLSegmentEditorWidget::installKeyboardShortcuts: Escape deactivates the active effect).
BOX_EVENTS = {vtk.vtkCommand.LeftButtonPressEvent: "press", vtk.vtkCommand.MouseMoveEvent: "move",
              vtk.vtkCommand.LeftButtonReleaseEvent: "release", vtk.vtkCommand.LeftButtonDoubleClickEvent: "double_click"}


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
        self.lastSliceView = LastSliceView()  # the view "Use the segment on this slice" works in
        self.selection = SelectionWatch()
        self.preEncoding = PreEncodeTrigger()  # when the slice the active view shows is encoded in the background
        self.deferred = DeferredActions(lambda action: qt.QTimer.singleShot(0, action))
        self.sceneClosedTag = None
        self.editorNodeObservation = None  # (segment editor node, tag): its selected segment is watched
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
<b>Click</b> (object) or <b>Shift+click</b> (background) on any slice of that axis re-segments it; <b>Update</b> (or <i>Update automatically</i>) re-propagates from there; <b>Ctrl+click</b> (Mac: Cmd+click) a point removes it; <b>Backspace</b> or <b>Delete</b> (Mac: delete) removes the last point, then the box.<br>
<b>Use the segment on this slice</b> makes a repainted slice (in the view you last worked in) the prompt; each segment keeps its session (or each box gets a new segment); Undo reverts the segment; <b>Cancel</b> stops a run (Esc leaves the effect, which stops it too). When the source volume is a frame of a Sequence (cine, 4D), <b>Propagate through time</b> follows the box's slice through the frames instead: correct any frame (show it with the Sequences toolbar) with clicks or a box, then <b>Update</b>.</html>"""

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
        # Offered only when the source volume is the proxy of a Sequence (refresh shows it: what_to_show decides).
        self.throughTimeCheckBox = qt.QCheckBox("Propagate through time (cine)")
        self.throughTimeCheckBox.setToolTip(
            "The source volume is a frame of a Sequence (a cine loop or 4D image): the box's slice is followed "
            "through the frames instead of the slices and written into a segmentation sequence played with the "
            "volume. Clicks or a box on any other frame correct it, Update re-propagates from there, Undo reverts "
            "a whole step on every frame (until another frame is shown, as for every edit of a sequence).")
        self.scriptedEffect.addOptionsWidget(self.throughTimeCheckBox)
        self.writeModeCombo = qt.QComboBox()
        for label, value in WRITE_MODES:
            self.writeModeCombo.addItem(label, value)
        self.scriptedEffect.addLabeledOptionsWidget("Write:", self.writeModeCombo)

        self.propagateButton = qt.QPushButton("Propagate")
        self.propagateButton.setToolTip("Follow the structure through the volume; after corrections, Update "
                                        "recomputes only what they change.")
        self.useSegmentButton = qt.QPushButton("Use the segment on this slice")
        self.useSegmentButton.setToolTip("The segment's content on the slice shown in the view you last worked in "
                                         "(with any effect) becomes that slice's prompt; then re-propagate.")
        self.resetButton = qt.QPushButton("Reset")
        self.resetButton.setToolTip("Forget the selected segment's prompts (the segment is kept).")
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.setToolTip("Stop the run: nothing is written.")
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
                               (self.throughTimeCheckBox, "toggled(bool)"),
                               (self.writeModeCombo, "currentIndexChanged(int)")):
            widget.connect(signal, self.updateMRMLFromGUI)
        self.modelCombo.connect("currentIndexChanged(int)", self.onModelChanged)
        self.earlyStopCheckBox.connect("toggled(bool)", self.onEarlyStopChanged)
        self.earlyStopSpinBox.connect("valueChanged(int)", self.onEarlyStopChanged)
        self.propagateButton.connect("clicked()", self.propagate)
        self.useSegmentButton.connect("clicked()", self.useSegmentOnSlice)
        self.resetButton.connect("clicked()", self.reset)
        self.cancelButton.connect("clicked()", self.cancel)
        # The box and points drawn belong to the scene's volume (its sessions end on their own: the segmenter
        # watches the scene, slicer_glue.effect.segmenter_for).
        self.sceneClosedTag = slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)
        # The view worked in last, with any effect: watched from now on, and again when the layout changes.
        self.watchSliceViews()
        slicer.app.layoutManager().connect("layoutChanged(int)", self.watchSliceViews)
        self.refresh()

    def setMRMLDefaults(self):
        for name, value in PARAMETER_DEFAULTS.items():
            self.scriptedEffect.setParameterDefault(name, value)

    def updateGUIFromMRML(self):
        effect = self.scriptedEffect
        widgets = (self.directionCombo, self.windowingCombo, self.rangeCheckBox, self.rangeFirstSpinBox,
                   self.rangeLastSpinBox, self.fillHolesCheckBox, self.largestComponentCheckBox, self.backgroundCheckBox,
                   self.autoUpdateCheckBox, self.newSegmentCheckBox, self.throughTimeCheckBox, self.writeModeCombo,
                   self.earlyStopCheckBox, self.earlyStopSpinBox)
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
        self.throughTimeCheckBox.checked = effect.integerParameter("ThroughTime") != 0
        self.writeModeCombo.setCurrentIndex(max(0, self.writeModeCombo.findData(effect.parameter("WriteMode"))))
        settings = moduleLogic().settings
        self.earlyStopCheckBox.checked = settings.early_stop() is not None
        self.earlyStopSpinBox.value = settings.early_stop_slices()
        moduleWidgets().fillModelCombo(self.modelCombo, settings)  # blocks its own signals
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        self.refresh()

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
        effect.setParameter("ThroughTime", int(self.throughTimeCheckBox.checked))
        effect.setParameter("WriteMode", self.writeModeCombo.currentData)

    def onModelChanged(self, index):
        """Applies to the next run (the setup downloads the model first if needed)."""
        moduleWidgets().onModelChosen(self.modelCombo, index)
        self.refresh()

    def onEarlyStopChanged(self):
        """Applies to the next Propagate or Update, also of the sessions started before."""
        moduleLogic().settings.set_early_stop(self.earlyStopSpinBox.value if self.earlyStopCheckBox.checked else None)
        self.refresh()

    # -- what is shown: slicer_glue.effect.what_to_show decides, this copies it into widgets and actors -------

    def sliceWidgets(self):
        layoutManager = slicer.app.layoutManager()
        return [layoutManager.sliceWidget(name) for name in layoutManager.sliceViewNames()] if layoutManager else []

    def refresh(self, sliceWidget=None):
        """Box, points and buttons for the selected segment, in every slice view or only in sliceWidget."""
        if not hasattr(self, "propagateButton"):
            return  # before setupOptionsFrame
        widgets = [sliceWidget] if sliceWidget is not None else self.sliceWidgets()
        editor = self.editorAccess() if self.segmenter is not None else None
        shown = what_to_show(self.tool, self.segmenter, editor, self.scriptedEffect.parameterSetNode(),
                             [widget.mrmlSliceNode() for widget in widgets], moduleLogic().runs.busy,
                             self.scriptedEffect.active())
        for widget in widgets:
            sliceNode = widget.mrmlSliceNode()
            if sliceNode is not shown.box_view and widget in self.actors:
                self.actors.pop(widget).remove()
            if sliceNode is shown.box_view:
                if widget not in self.actors:
                    self.actors[widget] = BoxActor(self.scriptedEffect, widget)
                self.actors[widget].show(*self.tool.box.outline(sliceTolerance(widget)))
            points = shown.points.get(sliceNode.GetID(), [])
            if points:
                if widget not in self.pointActors:
                    self.pointActors[widget] = PointsActor(self.scriptedEffect, widget)
                self.pointActors[widget].show(points)
            elif widget in self.pointActors:
                self.pointActors.pop(widget).remove()
        buttons = shown.buttons
        self.throughTimeCheckBox.visible = shown.through_time_offered
        self.propagateButton.text = buttons.propagate_text
        self.propagateButton.enabled = self.useSegmentButton.enabled = buttons.propagate_enabled
        self.resetButton.enabled = buttons.reset_enabled
        self.cancelButton.enabled = moduleLogic().runs.busy
        self.rangeFirstSpinBox.enabled = self.rangeLastSpinBox.enabled = self.rangeCheckBox.checked
        self.earlyStopSpinBox.enabled = self.earlyStopCheckBox.checked

    def removeActors(self):
        for actor in list(self.actors.values()) + list(self.pointActors.values()):
            actor.remove()
        self.actors, self.pointActors = {}, {}

    def watchSliceViews(self, layout=None):
        self.lastSliceView.watch([(widget.sliceView().interactorStyle().GetInteractor(), widget.mrmlSliceNode())
                                  for widget in self.sliceWidgets()])

    # -- lifetime -----------------------------------------------------------------------------------------------

    def activate(self):
        if self.stopObservingRuns is None:
            self.stopObservingRuns = moduleLogic().runs.observe(self.refresh)
        # Slicer calls updateGUIFromMRML only when an effect parameter changes, not when another segment is
        # selected: the segment editor node's ModifiedEvent is observed for that (slicer_glue.effect.SelectionWatch).
        editorNode = self.scriptedEffect.parameterSetNode()
        if self.editorNodeObservation is None and editorNode is not None:
            self.selection.changed(editorNode)
            self.editorNodeObservation = (editorNode, editorNode.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                                                             self.onEditorNodeModified))
        self.refresh()

    def onEditorNodeModified(self, caller, event):
        if self.selection.changed(caller, self.tool):
            self.refresh()
        elif hasattr(self, "throughTimeCheckBox"):  # another source volume may be a cine, or no longer one
            self.throughTimeCheckBox.visible = offers_through_time(caller)

    def deactivate(self):
        # Esc (the Segment Editor's shortcut), another effect, another module or another segmentation deactivate
        # the effect, also while a run or the setup processes events: the run stops and writes nothing, and an
        # action waiting for setup does not start (slicer_glue.effect.act_after_setup).
        moduleLogic().runs.cancel("The MedSAM2 effect was deactivated.", owner=self)
        self.stopObservingEditorNode()
        self.preEncoding.entered(None)
        self.tool.box = None
        self.removeActors()

    def stopObservingEditorNode(self):
        if self.editorNodeObservation is not None:
            editorNode, tag = self.editorNodeObservation
            editorNode.RemoveObserver(tag)
            self.editorNodeObservation = None

    def cleanup(self):
        """Called before the effect is deleted (qSlicerSegmentEditorAbstractEffect::cleanup): nothing of ours may
        outlive it."""
        self.tool.box = None
        self.removeActors()
        self.stopObservingEditorNode()
        slicer.app.layoutManager().disconnect("layoutChanged(int)", self.watchSliceViews)
        self.lastSliceView.stop()
        if self.stopObservingRuns is not None:
            self.stopObservingRuns()
            self.stopObservingRuns = None
        if self.sceneClosedTag is not None:
            slicer.mrmlScene.RemoveObserver(self.sceneClosedTag)
            self.sceneClosedTag = None

    # -- events -------------------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        # qMRMLSegmentEditorWidget also sends 3D views' interactor events: only slice views take a box.
        sliceNode = slice_node_of(viewWidget.mrmlAbstractViewNode())
        if sliceNode is None:
            return False
        if eventId == vtk.vtkCommand.EnterEvent:  # the editor forwards it (qMRMLSegmentEditorWidget::setupViewObservations)
            self.preEncoding.entered(sliceNode)
            self.preEncode(sliceNode)
            return False
        if eventId == vtk.vtkCommand.KeyPressEvent:
            event = KEY_EVENTS.get(callerInteractor.GetKeySym())
        else:
            event = BOX_EVENTS.get(eventId)
        if event is None:
            return False
        gesture = self.gestures.handle(
            event, sliceNode, callerInteractor.GetEventPosition(),
            shift=bool(callerInteractor.GetShiftKey()), control=bool(callerInteractor.GetControlKey()),
            alt=bool(callerInteractor.GetAltKey()), running=moduleLogic().runs.busy,
            background=self.backgroundCheckBox.checked, tolerance_mm=sliceTolerance(viewWidget),
            segmenter=self.segmenter, editor=self.editorAccess() if self.segmenter is not None else None)
        result = gesture.box_event
        if result.changed:
            self.refresh()
        if result.status:
            self.statusLabel.text = result.status
        if gesture.action is not None:
            self.deferred.defer(lambda: self.act(gesture.action, *gesture.arguments), self.scriptedEffect.active)
        return result.consumed

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        # Called for 3D view nodes too (qMRMLSegmentEditorWidget observes them): those show neither box nor points.
        if slice_node_of(callerViewNode) is not None:
            self.refresh(viewWidget)  # pan, zoom and scrolling change where the box is drawn and which points are shown
            self.preEncode(callerViewNode)  # the active view scrolled to another slice: encode it in the background

    def preEncode(self, sliceNode):
        """The slice the active view shows, and its neighbours, are encoded in the background so that the box's
        preview needs only the decoder (slicer_glue.effect.PreEncodeTrigger decides when; nothing before setup)."""
        try:
            failure = self.preEncoding.ask(self.segmenter, self.editorAccess() if self.segmenter is not None else None,
                                           sliceNode, lambda: session_options(self.scriptedEffect.parameterSetNode()),
                                           moduleLogic().runs.busy)
        except Exception as error:
            self.report(error)
            return
        if failure:
            self.statusLabel.text = failure

    def setBox(self, sliceWidget, xyCorners):
        """Set the box programmatically: two opposite corners in the view's XY coordinates."""
        sliceNode = sliceWidget.mrmlSliceNode()
        tolerance = sliceTolerance(sliceWidget)
        self.tool.box = None
        for event, xy in (("press", xyCorners[0]), ("move", xyCorners[1]), ("release", xyCorners[1])):
            self.tool.handle(event, sliceNode, xy, False, False, tolerance)
        self.refresh()

    # -- commands -----------------------------------------------------------------------------------------------

    def propagate(self):
        self.act("propagate")

    def useSegmentOnSlice(self):
        sliceNode = self.lastSliceView.view_for_command([widget.mrmlSliceNode() for widget in self.sliceWidgets()])
        self.act("use_segment_on_slice", sliceNode)

    def reset(self):
        status = reset_session(self.segmenter, self.editorAccess() if self.segmenter is not None else None, self.tool)
        self.refresh()
        self.statusLabel.text = status

    def cancel(self):
        moduleLogic().runs.cancel("Cancelled.", owner=self)

    def onSceneClosed(self, caller=None, event=None):
        self.tool.box = None
        self.removeActors()

    def act(self, action, *arguments):
        """One session action: setup first, then (if the effect is still active and its target still there) one
        run of the shared controller; the outcome or a refusal goes to the status line, an error to a dialog."""
        try:
            # Nothing that imports torch may run before the setup: the run is handed to act_after_setup, which
            # calls it after setting up (Testing/test_setup_flow.py checks this slot's order).
            self.statusLabel.text = act_after_setup(self.scriptedEffect.parameterSetNode(), self.setUp,
                                                    self.scriptedEffect.active,
                                                    run=lambda: self.runAction(action, arguments))
        except Exception as error:
            self.report(error)
        finally:
            self.progressBar.value = 0
            self.refresh()

    def setUp(self):
        return self.logic is not None or moduleLogic().set_up(owner=self)

    def runAction(self, action, arguments):
        """After setup: the logic (loading the model is the first slow step: under the wait cursor, as every
        computation, slicer_glue.run_controller.RunController.computing) and the action as one run."""
        with moduleLogic().runs.computing():
            fillHoles, largestComponent = post_processing(self.scriptedEffect.parameterSetNode())
            logic = self.logic or moduleLogic().segmentation_logic(fillHoles, largestComponent)
            # Through time the segmenter writes segmentation sequences with Slicer's Sequences logic, the
            # vtkSlicerSequencesLogic that slicer.modules.sequences.logic() returns (as Slicer's own
            # CropVolumeSequence.py gets it): AddSynchronizedNode, UpdateProxyNodesFromSequences.
            throughTime = through_time(self.scriptedEffect.parameterSetNode())
            sequencesLogic = slicer.modules.sequences.logic() if throughTime else None
            self.segmenter = segmenter_for(self.segmenter, logic, slicer.mrmlScene, sequencesLogic)
        return self.segmenter.run(moduleLogic().runs, self.editorAccess(), action, *arguments,
                                  session_options(self.scriptedEffect.parameterSetNode()), owner=self,
                                  progress=self.onProgress, confirm_target=self.confirmTargetVisible)

    def report(self, error):
        report = report_for(error)
        if report.where == "status":
            self.statusLabel.text = report.sentence
        elif report.where == "rotate":
            self.offerRotateViews(report.sentence)
        else:
            self.statusLabel.text = report.sentence
            slicer.util.errorDisplay(report.sentence, detailedText=traceback.format_exc())

    def editorAccess(self):
        from MedSAM2Lib.slicer_glue.logic import EditorAccess  # imports torch: only after setup can run

        return EditorAccess(ScriptedEffectBackend(self.scriptedEffect))

    def confirmTargetVisible(self, target):
        # Draw and Paint ask before editing a hidden segment (qSlicerSegmentEditorAbstractEffect::
        # confirmCurrentSegmentVisible: Yes shows it, No goes on, Cancel stops).
        return self.scriptedEffect.confirmCurrentSegmentVisible() != self.scriptedEffect.NotConfirmed

    def onProgress(self, done, total):
        self.progressBar.maximum = total
        self.progressBar.value = done
        self.statusLabel.text = progress_sentence(self.scriptedEffect.parameterSetNode(), done, total)
        slicer.app.processEvents()  # keeps the GUI responsive and lets Cancel be clicked

    def offerRotateViews(self, message):
        box = qt.QMessageBox(qt.QMessageBox.Warning, "MedSAM2", message, qt.QMessageBox.Cancel, slicer.util.mainWindow())
        rotateButton = box.addButton("Rotate slice views to the segmentation", qt.QMessageBox.AcceptRole)
        box.exec_()
        if box.clickedButton() != rotateButton:
            return
        rotated = rotate_views_to_segmentation([widget.mrmlSliceNode() for widget in self.sliceWidgets()],
                                               self.editorAccess().source())
        self.tool.box = None
        self.refresh()
        self.statusLabel.text = f"Rotated {len(rotated)} view(s) to the segmentation's grid: draw the box again."


def moduleLogic():
    return moduleWidgets().moduleLogic()


def moduleWidgets():
    """The MedSAM2 module's Python module (its logic and the model combo helpers shared with its panel)."""
    import MedSAM2

    return MedSAM2


def sliceTolerance(sliceWidget):
    return slice_tolerance_mm(sliceWidget.sliceLogic())


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

    def modify_segment(self, segmentation_node, segment_id, labelmap, mode="set"):
        from MedSAM2Lib.slicer_glue.logic import MODIFICATION_MODES

        # The segment captured when the run started: EditorAccess.modify selects it while writing (and restores the
        # user's selection after), so the selected segment is segment_id here. modifySelectedSegmentByLabelmap is
        # the overload that takes the modification extent from Python, as a list (QList<int>; the Smoothing
        # effect, SegmentEditorSmoothingEffect.py, calls it so); modifySegmentByLabelmap takes it only as int[6].
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            labelmap, getattr(slicer.qSlicerSegmentEditorAbstractEffect, MODIFICATION_MODES[mode]),
            list(labelmap.GetExtent())
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
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(point_glyph_mapper(self.polyData))
        scriptedEffect.addActor2D(sliceWidget, self.actor)

    def show(self, points):
        """points: (x, y, label) in the view's XY."""
        set_point_glyphs(self.polyData, points)
        self.sliceWidget.sliceView().scheduleRender()

    def remove(self):
        self.scriptedEffect.removeActor2D(self.sliceWidget, self.actor)
        self.sliceWidget.sliceView().scheduleRender()
