"""MedSAM2 segment-editor effect: drag a box on a slice view, then segment that slice or propagate.

A thin Qt layer: it collects the box and the options, shows progress and errors. Geometry, computation and
the undoable write are MedSAM2Lib.slicer_glue.logic's, the same code the headless tests run.
"""

import os

import qt
import vtk

import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

DIRECTIONS = [("Both directions", "both"), ("Forward (increasing slice index)", "forward"),
              ("Backward (decreasing slice index)", "backward")]
WINDOWINGS = [("Display window (as shown)", "display"), ("CT soft tissue", "soft-tissue"),
              ("CT lung", "lung"), ("CT bone", "bone"), ("CT brain", "brain"),
              ("MR percentiles 0.5-99.5", "mr-percentiles"), ("Values as they are (0-255)", "none")]
CORNER_GRAB_PIXELS = 8


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Box prompt -> MedSAM2 segment of the selected segment (created if none)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAM2"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = False  # the first propagation creates a segment
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.box = None  # BoxPipeline of the view the box was drawn in
        self.logic = None  # MedSAM2Lib MedSAM2Logic; created on first use, tests may set it
        self.running = False
        self.cancelRequested = False

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
<li><b>Segment slice</b>: preview on the box's slice only. <b>Propagate</b>: follow the structure slice by slice
through the volume (Esc or Cancel stops; nothing is changed until it finishes).
</ul>
<p>The result replaces the selected segment on the slices computed, honouring the editable area, intensity
range and overwrite settings; Undo reverts it. Limits: slice views must be aligned with the volume (not
oblique); one structure per box; results need review, especially far from the box's slice.</html>"""

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
        self.segmentSliceButton.enabled = self.box is not None and not self.running
        self.propagateButton.enabled = self.box is not None and not self.running
        self.cancelButton.enabled = self.running
        self.rangeFirstSpinBox.enabled = self.rangeLastSpinBox.enabled = self.rangeCheckBox.checked

    def deactivate(self):
        self.clearBox()

    # -- the box ------------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget" or self.running:
            return False
        if eventId == vtk.vtkCommand.KeyPressEvent and callerInteractor.GetKeySym() == "Escape":
            self.clearBox()
            return True
        anyModifier = callerInteractor.GetShiftKey() or callerInteractor.GetControlKey() or callerInteractor.GetAltKey()
        xy = callerInteractor.GetEventPosition()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent and not anyModifier:
            if self.box is None or self.box.sliceWidget is not viewWidget or not self.box.grabCorner(xy):
                self.clearBox()
                self.box = BoxPipeline(self.scriptedEffect, viewWidget, xy)
            return True
        if self.box is None or self.box.sliceWidget is not viewWidget or not self.box.dragging:
            return False
        if eventId == vtk.vtkCommand.MouseMoveEvent:
            self.box.moveCorner(xy)
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            self.box.moveCorner(xy)
            self.box.dragging = False
            self.statusLabel.text = "Box drawn. Click Segment slice to preview or Propagate to segment in 3D."
            self.updateButtons()
            return True
        return False

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        if self.box is not None and self.box.sliceWidget is viewWidget:
            self.box.positionActor()

    def setBox(self, sliceWidget, xyCorners):
        """Set the box programmatically: two opposite corners in the view's XY coordinates."""
        self.clearBox()
        self.box = BoxPipeline(self.scriptedEffect, sliceWidget, xyCorners[0])
        self.box.moveCorner(xyCorners[1])
        self.box.dragging = False
        self.updateButtons()

    def clearBox(self):
        if self.box is not None:
            self.box.remove()
            self.box = None
        if hasattr(self, "segmentSliceButton"):
            self.updateButtons()

    # -- running ------------------------------------------------------------------------------------------

    def segmentSlice(self):
        self.run(propagate=False)

    def propagate(self):
        self.run(propagate=True)

    def cancel(self):
        self.cancelRequested = True

    def run(self, propagate):
        """Segment with the current box and options; every failure is shown and changes nothing."""
        if self.running or self.box is None:
            return
        from MedSAM2Lib.inference.predictor import Cancelled
        from MedSAM2Lib.slicer_glue.geometry import ObliqueViewError
        from MedSAM2Lib.slicer_glue.logic import EditorAccess

        with slicer.util.tryWithErrorDisplay("MedSAM2 could not segment.", waitCursor=True):
            try:
                logic = self.logic or self.createLogic()
                if logic is None:
                    return
                access = EditorAccess(ScriptedEffectBackend(self.scriptedEffect))
                prompt = logic.prompt_from_view(access.source(), self.box.sliceNode(), self.box.xyzCorners())
                self.setRunning(True)
                try:
                    result = logic.segment(prompt, propagate=propagate, progress=self.onProgress,
                                           should_cancel=lambda: self.cancelRequested, **self.segmentOptions())
                finally:
                    self.setRunning(False)
                logic.write(access, prompt, result)
                self.statusLabel.text = f"Segmented {len(result.slices)} slice(s). Undo (Ctrl+Z) reverts it."
            except Cancelled:
                self.statusLabel.text = "Cancelled: the segmentation was not changed."
            except ObliqueViewError as error:
                self.offerRotateViews(str(error))

    def segmentOptions(self):
        from MedSAM2Lib.inference.preprocessing import Windowing

        effect = self.scriptedEffect
        windowing = effect.parameter("Windowing")
        options = {"windowing": None if windowing == "display" else Windowing.parse(windowing),
                   "direction": effect.parameter("Direction")}
        if effect.integerParameter("RangeEnabled"):
            options["slice_range"] = (effect.integerParameter("RangeFirst"), effect.integerParameter("RangeLast"))
        return options

    def createLogic(self):
        """The headless logic on the model chosen in the MedSAM2 module (installs/downloads on consent)."""
        import MedSAM2

        predictor = MedSAM2.moduleLogic().predictor(
            fill_holes=self.scriptedEffect.integerParameter("FillHoles") != 0,
            keep_largest_component=self.scriptedEffect.integerParameter("LargestComponent") != 0,
        )
        if predictor is None:
            return None
        from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic

        return MedSAM2Logic(predictor)

    def setRunning(self, running):
        self.running = running
        self.cancelRequested = False
        self.progressBar.value = 0
        self.updateButtons()

    def onProgress(self, done, total):
        self.progressBar.maximum = total
        self.progressBar.value = done
        self.statusLabel.text = f"Segmenting slice {done} of {total}..."
        slicer.app.processEvents()  # keeps the GUI responsive and lets Cancel be clicked

    def offerRotateViews(self, message):
        box = qt.QMessageBox(qt.QMessageBox.Warning, "MedSAM2", message, qt.QMessageBox.Cancel, slicer.util.mainWindow())
        rotateButton = box.addButton("Rotate slice views to volume plane", qt.QMessageBox.AcceptRole)
        box.exec_()
        if box.clickedButton() == rotateButton:
            layoutManager = slicer.app.layoutManager()
            for viewName in layoutManager.sliceViewNames():
                layoutManager.sliceWidget(viewName).sliceLogic().RotateSliceToLowestVolumeAxes()


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

    def modify_selected_segment(self, labelmap):
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet
        )


class BoxPipeline:
    """The box drawn in one slice view: two corners kept in RAS (so pan and zoom move it with the image),
    shown as a 2D rectangle."""

    def __init__(self, scriptedEffect, sliceWidget, xy):
        self.scriptedEffect = scriptedEffect
        self.sliceWidget = sliceWidget
        self.corners = [self.xyToRas(xy), self.xyToRas(xy)]
        self.movingCorner = 1
        self.dragging = True
        self.points = vtk.vtkPoints()
        self.points.SetNumberOfPoints(4)
        polyData = vtk.vtkPolyData()
        polyData.SetPoints(self.points)
        outline = vtk.vtkCellArray()
        outline.InsertNextCell(5, [0, 1, 2, 3, 0])
        polyData.SetLines(outline)
        self.polyData = polyData
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(polyData)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(1, 1, 0)
        self.actor.GetProperty().SetLineWidth(2)
        scriptedEffect.addActor2D(sliceWidget, self.actor)
        self.positionActor()

    def sliceNode(self):
        return self.sliceWidget.mrmlSliceNode()

    def xyToRas(self, xy):
        xyToRas = self.sliceNode().GetXYToRAS()
        return xyToRas.MultiplyPoint((xy[0], xy[1], 0.0, 1.0))[:3]

    def rasToXyz(self, ras):
        rasToXy = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(self.sliceNode().GetXYToRAS(), rasToXy)
        return rasToXy.MultiplyPoint((*ras, 1.0))[:3]

    def xyzCorners(self):
        """The corners in the view's XYZ: z locates the slice the box was drawn on."""
        return [self.rasToXyz(corner) for corner in self.corners]

    def grabCorner(self, xy):
        """Start dragging the drawn rectangle's corner nearest to xy, if it is close enough."""
        (x0, y0, _), (x1, y1, _) = self.xyzCorners()
        for x, y in ((x0, y0), (x1, y1), (x0, y1), (x1, y0)):
            if abs(x - xy[0]) <= CORNER_GRAB_PIXELS and abs(y - xy[1]) <= CORNER_GRAB_PIXELS:
                # Keep the diagonally opposite corner fixed and move the grabbed one.
                opposite = (x1 if x == x0 else x0, y1 if y == y0 else y0)
                self.corners = [self.xyToRas(opposite), self.xyToRas((x, y))]
                self.movingCorner = 1
                self.dragging = True
                return True
        return False

    def moveCorner(self, xy):
        self.corners[self.movingCorner] = self.xyToRas(xy)
        self.positionActor()

    def positionActor(self):
        (x0, y0, _), (x1, y1, _) = self.xyzCorners()
        for index, point in enumerate(((x0, y0), (x1, y0), (x1, y1), (x0, y1))):
            self.points.SetPoint(index, point[0], point[1], 0.0)
        self.points.Modified()
        self.polyData.Modified()
        self.sliceWidget.sliceView().scheduleRender()

    def remove(self):
        self.scriptedEffect.removeActor2D(self.sliceWidget, self.actor)
        self.sliceWidget.sliceView().scheduleRender()
