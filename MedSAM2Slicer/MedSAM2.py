"""MedSAM2 module: gets PyTorch and the model weights ready, chooses the device, registers the Segment Editor
effect and the demo scan in Sample Data, and holds the self-test. Segmenting happens in the Segment Editor's
MedSAM2 effect.

A thin Qt layer: what the module and the effect share (settings, model, runs, setup, the scene observation) is
MedSAM2Lib.slicer_glue.module_state's, readiness and the one-confirmation setup slicer_glue.setup_flow's; they
import without torch (Slicer loads this file at startup, when PyTorch may not be installed yet) and are tested
headless with Slicer's installers replaced by doubles.
"""

import contextlib
from pathlib import Path

import qt

import slicer
from MedSAM2Lib.resources import resource_path
from MedSAM2Lib.slicer_glue.module_state import ModuleState
from MedSAM2Lib.slicer_glue.setup_flow import OWN_FILE, model_entries, selected_model_entry
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget

MODULE_DIR = Path(__file__).resolve().parent
SELF_TEST_DATA = MODULE_DIR / "Resources" / "Testing"
# Where CMake puts the module icon (MedSAM2Slicer/CMakeLists.txt, MODULE_ICON), also the Sample Data thumbnail.
MODULE_ICON = MODULE_DIR / "Resources" / "Icons" / "MedSAM2.png"
DEVICES = [("Automatic (CUDA, then Apple MPS, then CPU)", "auto"), ("NVIDIA CUDA", "cuda"), ("Apple MPS", "mps"),
           ("CPU", "cpu")]
PRECISIONS = [("Automatic (bfloat16 where the hardware is fast at it)", "auto"),
              ("float32 (exact, as the official pipeline)", "float32"), ("bfloat16 (fast)", "bfloat16")]


class MedSAM2(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSAM2"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MedSAM2 for 3D Slicer developers"]
        self.parent.helpText = """Segment a structure in 3D from a box on one slice with MedSAM2 (SAM 2.1 fine-tuned
for medical images). This module installs PyTorch and the model weights; use the <b>MedSAM2</b> effect of
the Segment Editor to segment. A demo scan (MNI152 T1 brain) is in the Sample Data module, category MedSAM2."""
        self.parent.acknowledgementText = """MedSAM2 by Jun Ma, Bo Wang et al. (bowang-lab/MedSAM2, Apache-2.0);
SAM 2 by Meta AI. This extension implements the network itself in PyTorch and loads the official weights.
Demo scan: MNI ICBM152 2009a T1 template, Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University."""
        slicer.app.connect("startupCompleted()", registerEffect)
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerEffect():
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    effect.setPythonSource(str(MODULE_DIR / "SegmentEditorMedSAM2Lib" / "SegmentEditorEffect.py").replace("\\", "/"))
    effect.self().register()


def registerSampleData():
    """The demo scan in the Sample Data module (one click loads it); it ships with the extension, so its URI is
    a local file (SampleData downloads with urllib, which reads file:// URIs)."""
    import SampleData

    scan = resource_path("mni152_t1_demo.nii.gz")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MedSAM2", sampleName="MNI152 T1 brain (MedSAM2 demo)", uris=scan.as_uri(), fileNames=scan.name,
        nodeNames="MNI152 T1 demo", thumbnailFileName=str(MODULE_ICON), loadFileTypes="VolumeFile")


_moduleLogic = None


def moduleLogic():
    """The module's one logic: the effect and the widget share its settings, loaded model and run controller."""
    global _moduleLogic
    if _moduleLogic is None:
        _moduleLogic = MedSAM2ModuleLogic()
    return _moduleLogic


def cleanupModuleLogic():
    """Slicer is unloading or reloading this module (slicer.util.reloadScriptedModule calls the widget's
    cleanup, then runs this file again as a new module): the old logic stops observing the scene, so that
    neither it nor its model stays alive."""
    global _moduleLogic
    if _moduleLogic is not None:
        _moduleLogic.cleanup()
        _moduleLogic = None


def fillModelCombo(combo, settings):
    """The model combo of the module panel or the effect's options: setup_flow.model_entries, the current one
    selected, without emitting a change."""
    wasBlocked = combo.blockSignals(True)
    combo.clear()
    for entry in model_entries(settings):
        combo.addItem(entry.label, entry.value)
        combo.setItemData(combo.count - 1, entry.tooltip, qt.Qt.ToolTipRole)
    combo.setCurrentIndex(max(0, combo.findData(selected_model_entry(settings))))
    combo.blockSignals(wasBlocked)


def onModelChosen(combo, index):
    """A model picked in either combo: a published one by name (its own file entry needs nothing); the next run
    loads it, after the setup downloads it (one confirmation)."""
    name = combo.itemData(index)
    if name != OWN_FILE:
        moduleLogic().settings.set_model(name)


def pyTorchUtilsLogic():
    """The PyTorch extension's installer (SlicerPyTorch's PyTorchUtils.PyTorchUtilsLogic); ModuleNotFoundError
    when that extension is missing, which the setup flow turns into a sentence."""
    import PyTorchUtils

    return PyTorchUtils.PyTorchUtilsLogic()


class SetupProgress:
    """A progress dialog for the setup flow's progress(label, done, total) and should_cancel()."""

    def __init__(self):
        self.dialog = None

    def __call__(self, label, done, total):
        if self.dialog is None:
            self.dialog = slicer.util.createProgressDialog(labelText=label, maximum=0)
        self.dialog.labelText = label
        self.dialog.maximum = 100 if total else 0  # 0: busy indicator (PyTorch and pip give no progress)
        self.dialog.value = int(100 * done / total) if total else 0
        slicer.app.processEvents()

    def wasCanceled(self):
        return self.dialog is not None and self.dialog.wasCanceled

    def close(self):
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None


@contextlib.contextmanager
def waitCursor():
    """Around computation only (RunController.computing): never over a dialog."""
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        slicer.app.restoreOverrideCursor()


class MedSAM2ModuleLogic(ModuleState):
    """slicer_glue.module_state.ModuleState on Slicer's settings, scene, installers, dialogs and cursor."""

    def __init__(self):
        self.progress = SetupProgress()
        ModuleState.__init__(self, qt.QSettings(), slicer.mrmlScene, pyTorchUtilsLogic, slicer.util.pip_install,
                             self.confirm, self.progress, self.progress.wasCanceled, self.progress.close, waitCursor)

    @staticmethod
    def confirm(question):
        return slicer.util.confirmOkCancelDisplay(question, "MedSAM2 setup")


class MedSAM2Widget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        form = qt.QFormLayout()
        self.layout.addLayout(form)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        form.addRow("Status:", self.statusLabel)

        self.setupButton = qt.QPushButton("Install PyTorch and download weights")
        self.setupButton.setToolTip("Installs what is missing after one confirmation.")
        form.addRow(self.setupButton)

        self.checkpointLabel = qt.QLabel()
        self.checkpointLabel.wordWrap = True
        self.chooseCheckpointButton = qt.QPushButton("Use a checkpoint file on this computer...")
        form.addRow("Weights:", self.checkpointLabel)
        form.addRow(self.chooseCheckpointButton)

        self.modelCombo = qt.QComboBox()
        self.modelCombo.setToolTip("The published MedSAM2 models; Efficient MedSAM2 is made for computers without "
                                   "a GPU. A model not yet downloaded is downloaded by the setup.")
        form.addRow("Model:", self.modelCombo)

        self.deviceCombo = qt.QComboBox()
        for label, value in DEVICES:
            self.deviceCombo.addItem(label, value)
        form.addRow("Device:", self.deviceCombo)

        self.precisionCombo = qt.QComboBox()
        for label, value in PRECISIONS:
            self.precisionCombo.addItem(label, value)
        self.precisionCombo.setToolTip("Automatic: bfloat16 on CUDA and on CPUs with AVX-512 BF16 or AMX, float32 "
                                       "elsewhere. A change ends the Segment Editor's MedSAM2 sessions.")
        form.addRow("Precision:", self.precisionCombo)

        self.editorButton = qt.QPushButton("Open the Segment Editor")
        self.editorButton.setToolTip("Select the MedSAM2 effect there, drag a box on a slice and click Propagate.")
        form.addRow(self.editorButton)
        self.layout.addStretch(1)

        self.setupButton.connect("clicked()", self.onSetup)
        self.chooseCheckpointButton.connect("clicked()", self.onChooseCheckpoint)
        self.modelCombo.connect("currentIndexChanged(int)", self.onModelChanged)
        self.deviceCombo.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.precisionCombo.connect("currentIndexChanged(int)", self.onPrecisionChanged)
        self.editorButton.connect("clicked()", lambda: slicer.util.selectModule("SegmentEditor"))
        self.stopObservingRuns = moduleLogic().runs.observe(self.updateStatus)
        self.updateStatus()

    def cleanup(self):
        self.stopObservingRuns()
        cleanupModuleLogic()

    def updateStatus(self):
        logic = moduleLogic()
        self.statusLabel.text = logic.status()
        self.setupButton.enabled = logic.setup_button_enabled()
        self.chooseCheckpointButton.enabled = self.deviceCombo.enabled = self.precisionCombo.enabled = not logic.runs.busy
        self.modelCombo.enabled = not logic.runs.busy
        self.checkpointLabel.text = str(logic.settings.checkpoint_path())
        settings = logic.settings
        fillModelCombo(self.modelCombo, settings)
        for combo, value in ((self.deviceCombo, settings.device()), (self.precisionCombo, settings.precision())):
            wasBlocked = combo.blockSignals(True)
            combo.setCurrentIndex(max(0, combo.findData(value)))
            combo.blockSignals(wasBlocked)

    def onSetup(self):
        # tryWithErrorDisplay shows the error, then re-raises (slicer/util.py): the status is updated in finally.
        try:
            with slicer.util.tryWithErrorDisplay("MedSAM2 setup failed."):
                moduleLogic().set_up(owner=self)
        finally:
            self.updateStatus()

    def onChooseCheckpoint(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, "MedSAM2 checkpoint", "", "PyTorch checkpoint (*.pt *.pth)")
        if not path:
            return
        try:
            with slicer.util.tryWithErrorDisplay("This file cannot be used as MedSAM2 weights.", waitCursor=True):
                moduleLogic().use_local_checkpoint(path)  # no dialog inside: the wait cursor is right here
        finally:
            self.updateStatus()

    def onModelChanged(self, index):
        onModelChosen(self.modelCombo, index)
        self.updateStatus()

    def onDeviceChanged(self, index):
        moduleLogic().settings.set_device(self.deviceCombo.itemData(index))  # the next run loads the model on it

    def onPrecisionChanged(self, index):
        moduleLogic().settings.set_precision(self.precisionCombo.itemData(index))  # the next run: a new logic


class MedSAM2Test(ScriptedLoadableModuleTest):
    """Runs MedSAM2Lib's box and correction scenarios through the real Segment Editor widget and the MedSAM2
    effect."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_box_propagation_through_the_effect()
        self.setUp()
        self.test_correction_through_the_effect()

    def prepare(self, what):
        """(predictor, real weights?, Segment Editor widget, its node, the Red view), or None without torch."""
        from MedSAM2Lib.slicer_glue.runtime import torch_state

        if not torch_state().usable:
            # Extension build machines have the PyTorch extension but not torch itself.
            self.delayDisplay(f"MedSAM2 {what} self-test SKIPPED: {torch_state().sentence()}")
            return None
        from MedSAM2Lib.slicer_glue.runtime import ModelCache
        from MedSAM2Lib.slicer_glue.scenario import self_test_model

        choice, realWeights = self_test_model(moduleLogic().settings.checkpoint_path(), SELF_TEST_DATA)
        # Exact mode, every slice: the scenario compares with the official pipeline's mask.
        predictor = ModelCache().predictor(choice, early_stop=None)

        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget.setMRMLSegmentEditorNode(editorNode)
        return (predictor, realWeights, editorWidget, editorNode,
                slicer.app.layoutManager().sliceWidget("Red"))

    def activateEffect(self, editorWidget, scenario, predictor):
        """The MedSAM2 effect on the scenario's segmentation and volume, with the test's model; its Python object."""
        from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic

        editorWidget.setSegmentationNode(scenario.segmentation_node)
        editorWidget.setSourceVolumeNode(scenario.volume_node)
        editorWidget.setActiveEffectByName("MedSAM2")
        effect = editorWidget.activeEffect()
        effect.setParameter("Windowing", "none")  # the scenario volume is already 0..255
        effect.self().logic = MedSAM2Logic(predictor)
        return effect.self()

    def test_box_propagation_through_the_effect(self):
        prepared = self.prepare("box")
        if prepared is None:
            return
        from MedSAM2Lib.slicer_glue import scenario as slicer_scenario

        predictor, realWeights, editorWidget, editorNode, sliceWidget = prepared

        def segmentBox(scenario):
            effect = self.activateEffect(editorWidget, scenario, predictor)
            effect.setBox(sliceWidget, scenario.xy_corners)
            effect.act("box", sliceWidget.mrmlSliceNode(), effect.tool.box.xyz_corners())  # as on mouse release
            effect.propagate()

        def undoPropagationAndPreview():
            editorWidget.undo()
            editorWidget.undo()

        slicer_scenario.run(slicer.mrmlScene, sliceWidget.sliceLogic(), SELF_TEST_DATA, segmentBox,
                            undoPropagationAndPreview, exact=not realWeights, editor_node=editorNode)
        editorWidget.setActiveEffect(None)  # deactivation removes the box from the view
        self.delayDisplay("MedSAM2 box propagation through the Segment Editor passed.")

    def test_correction_through_the_effect(self):
        """Box, Propagate, points clicked on tracked slices, Update: the official session's mask; then Undo."""
        prepared = self.prepare("correction")
        if prepared is None:
            return
        from MedSAM2Lib.slicer_glue import scenario as slicer_scenario

        predictor, realWeights, editorWidget, editorNode, sliceWidget = prepared

        def ready(scenario):
            self.activateEffect(editorWidget, scenario, predictor)

        class EffectActions:
            """The scenario's actions as the effect performs them on mouse release, clicks and buttons."""

            def effect(self):
                return editorWidget.activeEffect().self()

            def box(self, sliceNode, xyCorners):
                self.effect().setBox(sliceWidget, xyCorners)
                self.effect().act("box", sliceNode, self.effect().tool.box.xyz_corners())

            def propagate(self):
                self.effect().propagate()

            def points(self, sliceNode, clicks):
                self.effect().act("points", sliceNode, clicks)

            def use_segment_on_slice(self, sliceNode):
                self.effect().lastSliceView.slice_node = sliceNode  # as a press in that view would set it
                self.effect().useSegmentOnSlice()

        slicer_scenario.run_correction(slicer.mrmlScene, sliceWidget.sliceLogic(), SELF_TEST_DATA, "Axial", "points",
                                       EffectActions(), editorWidget.undo, exact=not realWeights,
                                       editor_node=editorNode, ready=ready)
        editorWidget.setActiveEffect(None)
        self.delayDisplay("MedSAM2 correction through the Segment Editor passed.")
