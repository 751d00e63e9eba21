"""MedSAM2 module: gets PyTorch and the model weights ready, chooses the device, registers the Segment Editor
effect and holds the self-test. Segmenting happens in the Segment Editor's MedSAM2 effect; everything that
is not Qt lives in MedSAM2Lib."""

from pathlib import Path

import qt

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget

MODULE_DIR = Path(__file__).resolve().parent
SELF_TEST_DATA = MODULE_DIR / "Resources" / "Testing"
DEVICES = [("Automatic (CUDA, then Apple MPS, then CPU)", "auto"), ("NVIDIA CUDA", "cuda"), ("Apple MPS", "mps"),
           ("CPU", "cpu")]


class MedSAM2(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSAM2"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MedSAM2 for 3D Slicer developers"]
        self.parent.helpText = """Segment a structure in 3D from a box on one slice with MedSAM2 (SAM 2.1 fine-tuned
for medical images). This module installs PyTorch and the model weights; use the <b>MedSAM2</b> effect of
the Segment Editor to segment."""
        self.parent.acknowledgementText = """MedSAM2 by Jun Ma, Bo Wang et al. (bowang-lab/MedSAM2, Apache-2.0);
SAM 2 by Meta AI. This extension implements the network itself in PyTorch and loads the official weights."""
        slicer.app.connect("startupCompleted()", registerEffect)


def registerEffect():
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    effect.setPythonSource(str(MODULE_DIR / "SegmentEditorMedSAM2Lib" / "SegmentEditorEffect.py").replace("\\", "/"))
    effect.self().register()


_moduleLogic = None


def moduleLogic():
    """The module's one logic: the effect and the widget share its settings and loaded model."""
    global _moduleLogic
    if _moduleLogic is None:
        _moduleLogic = MedSAM2ModuleLogic()
    return _moduleLogic


class MedSAM2ModuleLogic:
    """Settings (checkpoint, device), installs on consent, and the loaded model."""

    def __init__(self):
        from MedSAM2Lib.slicer_glue.runtime import ModelCache

        self.models = ModelCache()

    # settings

    def checkpointPath(self):
        from MedSAM2Lib.model.checkpoint import default_checkpoint_path

        return Path(qt.QSettings().value("MedSAM2/Checkpoint", str(default_checkpoint_path())))

    def setCheckpointPath(self, path):
        qt.QSettings().setValue("MedSAM2/Checkpoint", str(path))

    def device(self):
        return qt.QSettings().value("MedSAM2/Device", "auto")

    def setDevice(self, device):
        qt.QSettings().setValue("MedSAM2/Device", device)

    # readiness

    def missingRequirements(self):
        """Sentences naming what must be installed or downloaded before segmenting (empty when ready)."""
        from MedSAM2Lib.slicer_glue.runtime import missing_packages, torch_status

        missing = []
        torchReady, torchMessage = torch_status()
        if not torchReady:
            missing.append(torchMessage + " It will be installed by the PyTorch extension.")
        missing += [f"The Python package {package} will be installed." for package in missing_packages()]
        if not self.checkpointPath().is_file():
            missing.append(f"The MedSAM2 weights will be downloaded to {self.checkpointPath()} (about 150 MB).")
        return missing

    def ensureReady(self, askConfirmation=True):
        """Install what is missing after one confirmation; False if the user declines."""
        missing = self.missingRequirements()
        if not missing:
            return True
        question = "MedSAM2 needs a few things first:\n\n- " + "\n- ".join(missing) + "\n\nProceed?"
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(question, "MedSAM2 setup"):
            return False
        self.installPythonPackages()
        if not self.checkpointPath().is_file():
            return self.downloadWeights()
        return True

    def installPythonPackages(self):
        from MedSAM2Lib.slicer_glue.runtime import MINIMUM_TORCH_VERSION, missing_packages, torch_status

        if not torch_status()[0]:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError("MedSAM2 needs the PyTorch extension: install 'PyTorch' from the Extensions "
                                   "Manager, restart Slicer and try again.") from None
            requirement = ">=" + ".".join(map(str, MINIMUM_TORCH_VERSION))
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement)
            if torch is None or not torch_status()[0]:
                raise RuntimeError("PyTorch could not be installed; see the Python console for details.")
        for package in missing_packages():
            slicer.util.pip_install(package)

    def downloadWeights(self):
        """Download the official checkpoint into the cache folder, verified against its published SHA256;
        False if the user cancelled (nothing is left behind)."""
        from MedSAM2Lib import weights

        progress = slicer.util.createProgressDialog(labelText="Downloading MedSAM2 weights...", maximum=100)
        try:
            def report(done, total):
                progress.value = int(100 * done / total) if total else 0
                slicer.app.processEvents()

            weights.download_checkpoint(self.checkpointPath(), progress=report, should_cancel=lambda: progress.wasCanceled)
            return True
        except weights.DownloadCancelled:
            return False
        finally:
            progress.close()

    def useLocalCheckpoint(self, path):
        """Pick a checkpoint file already on this computer (offline sites); it is checked before use."""
        from MedSAM2Lib.weights import install_local_checkpoint

        self.setCheckpointPath(install_local_checkpoint(path))

    def predictor(self, fill_holes=True, keep_largest_component=True):
        """A VolumePredictor on the configured checkpoint and device, or None if setup was declined."""
        if not self.ensureReady():
            return None
        from MedSAM2Lib.slicer_glue.runtime import ModelChoice

        return self.models.predictor(ModelChoice(self.checkpointPath(), None, self.device()), fill_holes,
                                     keep_largest_component)


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

        self.deviceCombo = qt.QComboBox()
        for label, value in DEVICES:
            self.deviceCombo.addItem(label, value)
        form.addRow("Device:", self.deviceCombo)

        self.editorButton = qt.QPushButton("Open the Segment Editor")
        self.editorButton.setToolTip("Select the MedSAM2 effect there, drag a box on a slice and click Propagate.")
        form.addRow(self.editorButton)
        self.layout.addStretch(1)

        self.setupButton.connect("clicked()", self.onSetup)
        self.chooseCheckpointButton.connect("clicked()", self.onChooseCheckpoint)
        self.deviceCombo.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.editorButton.connect("clicked()", lambda: slicer.util.selectModule("SegmentEditor"))
        self.updateStatus()

    def updateStatus(self):
        logic = moduleLogic()
        missing = logic.missingRequirements()
        self.statusLabel.text = "Ready." if not missing else "\n".join(missing)
        self.setupButton.enabled = bool(missing)
        self.checkpointLabel.text = str(logic.checkpointPath())
        wasBlocked = self.deviceCombo.blockSignals(True)
        self.deviceCombo.setCurrentIndex(max(0, self.deviceCombo.findData(logic.device())))
        self.deviceCombo.blockSignals(wasBlocked)

    def onSetup(self):
        with slicer.util.tryWithErrorDisplay("MedSAM2 setup failed.", waitCursor=True):
            moduleLogic().ensureReady()
        self.updateStatus()

    def onChooseCheckpoint(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, "MedSAM2 checkpoint", "", "PyTorch checkpoint (*.pt *.pth)")
        if path:
            with slicer.util.tryWithErrorDisplay("This file cannot be used as MedSAM2 weights.", waitCursor=True):
                moduleLogic().useLocalCheckpoint(path)
        self.updateStatus()

    def onDeviceChanged(self, index):
        moduleLogic().setDevice(self.deviceCombo.itemData(index))


class MedSAM2Test(ScriptedLoadableModuleTest):
    """Runs MedSAM2Lib's box scenario through the real Segment Editor widget and the MedSAM2 effect."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_box_propagation_through_the_effect()

    def test_box_propagation_through_the_effect(self):
        from MedSAM2Lib.slicer_glue import scenario as slicer_scenario
        from MedSAM2Lib.slicer_glue.runtime import ModelCache, ModelChoice
        from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic

        realWeights = moduleLogic().checkpointPath()
        if realWeights.is_file():
            choice = ModelChoice(realWeights)
        else:
            choice = ModelChoice(SELF_TEST_DATA / "medsam2_tiny_random_seed0.pt", SELF_TEST_DATA / "medsam2_tiny_test.yaml")
        # Exact mode, every slice: the scenario compares voxel for voxel with the official pipeline.
        predictor = ModelCache().predictor(choice, precision="float32", early_stop=None)

        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget.setMRMLSegmentEditorNode(editorNode)
        sliceWidget = slicer.app.layoutManager().sliceWidget("Red")

        def segmentBox(scenario):
            editorWidget.setSegmentationNode(scenario.segmentation_node)
            editorWidget.setSourceVolumeNode(scenario.volume_node)
            editorWidget.setActiveEffectByName("MedSAM2")
            effect = editorWidget.activeEffect()
            effect.setParameter("Windowing", "none")  # the scenario volume is already 0..255
            effect.self().logic = MedSAM2Logic(predictor)
            effect.self().setBox(sliceWidget, scenario.xy_corners)
            effect.self().propagate()

        slicer_scenario.run(slicer.mrmlScene, sliceWidget.sliceLogic(), SELF_TEST_DATA, segmentBox, editorWidget.undo,
                            exact=not realWeights.is_file(), editor_node=editorNode)
        self.delayDisplay("MedSAM2 box propagation through the Segment Editor passed.")
