"""MedSAM2 segment-editor effect: drag a box on a slice view, then segment that slice or propagate.

A thin Qt layer: it wires widgets and mouse events to MedSAM2Lib, which the headless tests run: the box and
what events do to it (slicer_glue.box), one run at a time with cancel and the write into the segment chosen at
the start (slicer_glue.run_controller), setup (slicer_glue.setup_flow, through the MedSAM2 module's logic),
the computation and the undoable write (slicer_glue.logic). Only torch-free modules are imported at the top:
Slicer loads this file at startup, before PyTorch may be installed.
"""

import os

import qt
import vtk

import slicer
from MedSAM2Lib.slicer_glue.box import BoxTool, rotate_views_to_grid
from MedSAM2Lib.slicer_glue.run_controller import segment_box
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


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Box prompt -> MedSAM2 segment of the selected segment (created if none)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAM2"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = False  # the first propagation creates a segment
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.tool = BoxTool()
        self.actors = {}  # slice widget -> BoxActor showing the box there
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
        return """<html>Segment a structure in 3D from a box drawn on one slice, with MedSAM2.<br>
<p><ul style="margin: 0">
<li><b>Left-button drag</b> in a slice view: draw the box; drag a corner to adjust it, drag elsewhere to redraw.
<li>The box should enclose the whole structure on that slice, with a small margin.
<li>The box is drawn solid on its own slice and dashed on the others; <b>Segment slice</b> and <b>Propagate</b>
always start from the box's slice (the view is brought back to it).
<li><b>Segment slice</b>: preview on the box's slice only. <b>Propagate</b>: follow the structure slice by slice
through the volume. <b>Esc</b> or <b>Cancel</b> stops; leaving the effect or the module, switching segmentation
or closing the scene also stops, and nothing is changed.
</ul>
<p>The result goes to the segment selected when the run started (a new segment if none was), replacing it on the
slices computed, honouring the editable area, intensity range and overwrite settings; Undo reverts it. If that
segment or segmentation is deleted meanwhile, nothing is written. Limits: slice views must show voxel planes
of the segmentation (the effect offers to rotate them); one structure per box; results need review,
especially far from the box's slice.</html>"""

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

        self.segmentSliceButton = qt.QPushButton("Segment slice")
        self.segmentSliceButton.setToolTip("Segment the box's slice only (preview).")
        self.propagateButton = qt.QPushButton("Propagate")
        self.propagateButton.setToolTip("Segment the structure through the volume, starting at the box's slice.")
        self.cancelButton = qt.QPushButton("Cancel")
        buttonLayout = qt.QHBoxLayout()
        for button in (self.segmentSliceButton, self.propagateButton, self.cancelButton):
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
                               (self.largestComponentCheckBox, "toggled(bool)")):
            widget.connect(signal, self.updateMRMLFromGUI)
        self.segmentSliceButton.connect("clicked()", self.segmentSlice)
        self.propagateButton.connect("clicked()", self.propagate)
        self.cancelButton.connect("clicked()", self.cancel)
        self.updateButtons()

    def setMRMLDefaults(self):
        for name, value in (("Direction", "both"), ("Windowing", "display"), ("RangeEnabled", 0),
                            ("RangeFirst", 0), ("RangeLast", 0), ("FillHoles", 1), ("LargestComponent", 1)):
            self.scriptedEffect.setParameterDefault(name, value)

    def updateGUIFromMRML(self):
        effect = self.scriptedEffect
        widgets = (self.directionCombo, self.windowingCombo, self.rangeCheckBox, self.rangeFirstSpinBox,
                   self.rangeLastSpinBox, self.fillHolesCheckBox, self.largestComponentCheckBox)
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.directionCombo.setCurrentIndex(max(0, self.directionCombo.findData(effect.parameter("Direction"))))
        self.windowingCombo.setCurrentIndex(max(0, self.windowingCombo.findData(effect.parameter("Windowing"))))
        self.rangeCheckBox.checked = effect.integerParameter("RangeEnabled") != 0
        self.rangeFirstSpinBox.value = effect.integerParameter("RangeFirst")
        self.rangeLastSpinBox.value = effect.integerParameter("RangeLast")
        self.fillHolesCheckBox.checked = effect.integerParameter("FillHoles") != 0
        self.largestComponentCheckBox.checked = effect.integerParameter("LargestComponent") != 0
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        self.updateButtons()

    def updateMRMLFromGUI(self):
        effect = self.scriptedEffect
        effect.setParameter("Direction", self.directionCombo.currentData)
        effect.setParameter("Windowing", self.windowingCombo.currentData)
        effect.setParameter("RangeEnabled", int(self.rangeCheckBox.checked))
        effect.setParameter("RangeFirst", self.rangeFirstSpinBox.value)
        effect.setParameter("RangeLast", self.rangeLastSpinBox.value)
        effect.setParameter("FillHoles", int(self.fillHolesCheckBox.checked))
        effect.setParameter("LargestComponent", int(self.largestComponentCheckBox.checked))

    def updateButtons(self):
        runs = moduleLogic().runs
        canRun = self.tool.box is not None and not runs.busy
        self.segmentSliceButton.enabled = self.propagateButton.enabled = canRun
        self.cancelButton.enabled = runs.busy
        self.rangeFirstSpinBox.enabled = self.rangeLastSpinBox.enabled = self.rangeCheckBox.checked

    def activate(self):
        if self.stopObservingRuns is None:
            self.stopObservingRuns = moduleLogic().runs.observe(self.updateButtons)

    def deactivate(self):
        # Esc (the Segment Editor's shortcut), another effect, another module or another segmentation deactivate
        # the effect, also while a run processes events: the run stops and writes nothing.
        moduleLogic().runs.cancel("The MedSAM2 effect was deactivated.", owner=self)
        self.clearBox()

    def cleanup(self):
        """Called before the effect is deleted (qSlicerSegmentEditorAbstractEffect::cleanup): nothing of ours may
        outlive it."""
        self.clearBox()
        if self.stopObservingRuns is not None:
            self.stopObservingRuns()
            self.stopObservingRuns = None

    # -- the box ------------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.KeyPressEvent:
            event = "escape" if callerInteractor.GetKeySym() == "Escape" else None
        else:
            event = BOX_EVENTS.get(eventId)
        if event is None:
            return False
        anyModifier = callerInteractor.GetShiftKey() or callerInteractor.GetControlKey() or callerInteractor.GetAltKey()
        result = self.tool.handle(event, viewWidget.mrmlSliceNode(), callerInteractor.GetEventPosition(),
                                  bool(anyModifier), moduleLogic().runs.busy, sliceTolerance(viewWidget))
        if result.cancel_run:
            moduleLogic().runs.cancel("Cancelled (Esc).", owner=self)
        if result.changed:
            self.drawBox()
            self.updateButtons()
        if result.status:
            self.statusLabel.text = result.status
        return result.consumed

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        if self.tool.box is not None and self.tool.box.slice_node is viewWidget.mrmlSliceNode():
            self.drawBox()  # pan, zoom and scrolling change where and how the box is drawn

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
        if hasattr(self, "segmentSliceButton"):
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

    # -- running ------------------------------------------------------------------------------------------

    def segmentSlice(self):
        self.run(propagate=False)

    def propagate(self):
        self.run(propagate=True)

    def cancel(self):
        moduleLogic().runs.cancel("Cancelled.", owner=self)

    def run(self, propagate):
        """Segment with the current box and options as one run of the shared controller; every failure reaches
        a dialog, and the status line is updated whatever happens."""
        box = self.tool.box
        if box is None:
            return
        sliceWidget = sliceWidgetOf(box.slice_node)
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

                if box.show_its_slice(sliceTolerance(sliceWidget)):
                    self.statusLabel.text = "The view was brought back to the box's slice."
                try:
                    outcome = segment_box(
                        moduleLogic().runs, self.editorAccess(), self.logicForRun, box.slice_node, box.xyz_corners(),
                        progress=self.onProgress, owner=self, confirm_target=self.confirmTargetVisible,
                        propagate=propagate, **self.segmentOptions())
                    self.statusLabel.text = outcome.message
                except ObliqueViewError as error:
                    restoreWaitCursor()
                    self.offerRotateViews(str(error))
        finally:
            restoreWaitCursor()
            self.progressBar.value = 0
            self.updateButtons()

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
    import MedSAM2

    return MedSAM2.moduleLogic()


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
