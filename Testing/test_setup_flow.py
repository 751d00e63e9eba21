"""The Slicer module's setup before PyTorch exists: readiness, one confirmation, the PyTorch extension's installer,
pip, the verified download and a local checkpoint, with Slicer's installers replaced by test doubles.

The fresh-Slicer case runs in a subprocess in which ``import torch`` fails, as in a Slicer without the PyTorch
extension's install yet."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from MedSAM2Lib.slicer_glue import runtime, setup_flow
from MedSAM2Lib.slicer_glue.runtime import TorchState
from MedSAM2Lib.slicer_glue.setup_flow import MedSAM2Settings, SetupError, SetupFlow

from conftest import DATA
from test_weights import publish

ROOT = Path(__file__).resolve().parents[1]
# What the module and the effect may import before PyTorch is installed.
TORCH_FREE_MODULES = ["MedSAM2Lib.weights", "MedSAM2Lib.model_catalogue", "MedSAM2Lib.resources",
                      "MedSAM2Lib.slicer_glue.runtime",
                      "MedSAM2Lib.slicer_glue.setup_flow", "MedSAM2Lib.slicer_glue.run_controller",
                      "MedSAM2Lib.slicer_glue.box", "MedSAM2Lib.slicer_glue.gestures",
                      "MedSAM2Lib.slicer_glue.effect", "MedSAM2Lib.slicer_glue.module_state"]

FRESH_SLICER_SCRIPT = textwrap.dedent('''
    import json, sys, types
    sys.modules["torch"] = None  # "import torch" fails, as in a Slicer without PyTorch
    modules = json.loads(sys.argv[1])
    for name in modules:
        __import__(name)
    from MedSAM2Lib.slicer_glue.setup_flow import MedSAM2Settings, SetupFlow, SetupError
    from MedSAM2Lib.weights import WeightsSource

    class SettingsDouble(dict):
        def value(self, key, default=None):
            return self.get(key, default)
        def setValue(self, key, value):
            self[key] = value

    calls = []

    class PyTorchUtilsLogicDouble:
        """Test double for PyTorchUtils.PyTorchUtilsLogic: "installs" a torch 2.6 module stand-in."""
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append(["installTorch", askConfirmation, torchVersionRequirement])
            sys.modules["torch"] = types.SimpleNamespace(__version__="2.6.0")
            return sys.modules["torch"]

    def confirm_double(question):
        calls.append(["confirm", question])
        return True

    settings = SettingsDouble()
    settings.setValue("MedSAM2/Checkpoint", sys.argv[2])
    flow = SetupFlow(MedSAM2Settings(settings), PyTorchUtilsLogicDouble, lambda package: calls.append(["pip", package]),
                     confirm_double, progress=lambda label, done, total: calls.append(["progress", label]),
                     weights_source=WeightsSource(base_url=sys.argv[3]))
    before = flow.readiness()
    ready = flow.ensure_ready()
    print(json.dumps({"status_before": before.status(), "ready": ready, "calls": calls,
                      "ready_after": flow.readiness().ready}))
''')


class SettingsDouble(dict):
    """Test double for qt.QSettings."""

    def value(self, key, default=None):
        return self.get(key, default)

    def setValue(self, key, value):
        self[key] = value


class PyTorchUtilsLogicDouble:
    """Test double for PyTorchUtils.PyTorchUtilsLogic that records calls and installs nothing."""

    def __init__(self):
        self.calls = []

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        self.calls.append(torchVersionRequirement)
        return None


def flow_with(tmp_path, confirm=lambda question: True, **overrides):
    settings = MedSAM2Settings(SettingsDouble())
    settings.set_checkpoint_path(tmp_path / "MedSAM2_latest.pt")
    installer = PyTorchUtilsLogicDouble()
    pip_calls = []
    arguments = dict(pytorch_utils=lambda: installer, pip_install=pip_calls.append, confirm=confirm)
    arguments.update(overrides)
    return SetupFlow(settings, **arguments), installer, pip_calls


def test_fresh_slicer_without_torch_reports_it_and_installs_through_the_injected_installer(tmp_path):
    server = tmp_path / "server"
    content = b"checkpoint bytes"
    source = publish(server, content)
    checkpoint = tmp_path / "cache" / "MedSAM2_latest.pt"
    result = subprocess.run([sys.executable, "-c", FRESH_SLICER_SCRIPT, json.dumps(TORCH_FREE_MODULES),
                             str(checkpoint), source.base_url], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status_before"].startswith("PyTorch is not installed (MedSAM2 needs 2.5 or later).")
    assert f"weights 'latest' will be downloaded to {checkpoint}" in report["status_before"]
    calls = report["calls"]
    assert [call[0] for call in calls if call[0] != "progress"] == ["confirm", "installTorch"]
    assert calls[0][1].count("PyTorch is not installed") == 1  # one confirmation naming everything
    assert ["installTorch", False, ">=2.5"] in calls
    assert report["ready"] and report["ready_after"] and checkpoint.read_bytes() == content


def test_qt_layer_imports_only_torch_free_modules_at_module_level():
    """The module and the effect are loaded by Slicer at startup, before any setup."""
    for path in (ROOT / "MedSAM2Slicer").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("MedSAM2Lib"):
                assert node.module in TORCH_FREE_MODULES, f"{path.name} imports {node.module} at module level"
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith(("MedSAM2Lib", "torch")) for alias in node.names), path.name


EFFECT_FILE = ROOT / "MedSAM2Slicer" / "SegmentEditorMedSAM2Lib" / "SegmentEditorEffect.py"
GLUE_EFFECT_FILE = ROOT / "MedSAM2Lib" / "slicer_glue" / "effect.py"


def imports_torch_needing_modules(function: ast.AST) -> bool:
    """The function imports a MedSAM2Lib module that is not torch-free, or torch itself."""
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(("MedSAM2Lib", "torch")):
            if node.module not in TORCH_FREE_MODULES:
                return True
        if isinstance(node, ast.ImportFrom) and node.level > 0:  # inside MedSAM2Lib.slicer_glue
            if f"MedSAM2Lib.slicer_glue.{node.module}" not in TORCH_FREE_MODULES:
                return True
        if isinstance(node, ast.Import) and any(alias.name.startswith(("MedSAM2Lib", "torch")) for alias in node.names):
            return True
    return False


def torch_needing_calls(tree: ast.Module, glue: ast.Module) -> set:
    """Names of the effect's methods (called as self.name) and of slicer_glue.effect's functions (called by
    name) whose bodies import what needs torch, directly or through another such method."""
    effect_class = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SegmentEditorEffect")
    methods = {node.name: node for node in effect_class.body if isinstance(node, ast.FunctionDef)}
    needing = {node.name for node in glue.body if isinstance(node, ast.FunctionDef) and imports_torch_needing_modules(node)}
    needing |= {name for name, method in methods.items() if imports_torch_needing_modules(method)}
    while True:
        more = {name for name, method in methods.items() if name not in needing and any(
            isinstance(call, ast.Call) and called_name(call) in needing for call in ast.walk(method))}
        if not more:
            return needing
        needing |= more


def called_name(call: ast.Call):
    if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and call.func.value.id == "self":
        return call.func.attr
    return call.func.id if isinstance(call.func, ast.Name) else None


def test_the_effect_sets_up_before_importing_torch_inside_its_action_slot():
    """Inside the effect's act slot, nothing that imports torch (an import, a method or glue function that
    imports it) comes before slicer_glue.effect.act_after_setup: it is inside the run handed to it, which it
    calls only after the setup (test_effect.py checks that order). Moved above the setup call or into its
    other arguments, this fails; the error report and refresh after it run once setup is over."""
    tree = ast.parse(EFFECT_FILE.read_text(encoding="utf-8"))
    needing = torch_needing_calls(tree, ast.parse(GLUE_EFFECT_FILE.read_text(encoding="utf-8")))
    assert {"runAction", "editorAccess", "session_options", "segmenter_for"} <= needing
    effect_class = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SegmentEditorEffect")
    act = next(node for node in effect_class.body if isinstance(node, ast.FunctionDef) and node.name == "act")
    setup_calls = [node for node in ast.walk(act) if isinstance(node, ast.Call) and called_name(node) == "act_after_setup"]
    assert len(setup_calls) == 1
    run = next(keyword.value for keyword in setup_calls[0].keywords if keyword.arg == "run")
    deferred = {id(node) for node in ast.walk(run)}
    # Before the setup: the statements above its call, and the call's other arguments (evaluated before it).
    before = [node for node in ast.walk(act) if getattr(node, "lineno", 0) < setup_calls[0].lineno]
    before += [node for argument in setup_calls[0].args for node in ast.walk(argument)]
    early = [ast.unparse(node) for node in before if id(node) not in deferred and (
        isinstance(node, (ast.Import, ast.ImportFrom))
        or isinstance(node, ast.Call) and called_name(node) in needing)]
    assert early == [], f"imports torch before the setup: {early}"
    assert any(isinstance(node, ast.Call) and called_name(node) in needing for node in ast.walk(run))
    # The setup callback itself imports nothing that needs torch.
    setup_argument = setup_calls[0].args[1]
    assert isinstance(setup_argument, ast.Attribute) and setup_argument.attr not in needing


def test_declined_confirmation_installs_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(setup_flow, "torch_state", lambda: TorchState(None, None))
    questions = []
    flow, installer, pip_calls = flow_with(tmp_path, confirm=lambda question: questions.append(question) or False)
    assert flow.ensure_ready() is False
    assert len(questions) == 1 and installer.calls == [] and pip_calls == []


def test_failed_torch_install_is_a_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(setup_flow, "torch_state", lambda: TorchState(None, None))
    flow, installer, _ = flow_with(tmp_path)
    with pytest.raises(SetupError, match="PyTorch could not be installed"):
        flow.ensure_ready()
    assert installer.calls == [">=2.5"]


def test_missing_pytorch_extension_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(setup_flow, "torch_state", lambda: TorchState(None, None))

    def no_extension():
        raise ModuleNotFoundError("No module named 'PyTorchUtils'")

    flow, _, _ = flow_with(tmp_path, pytorch_utils=no_extension)
    with pytest.raises(SetupError, match="install 'PyTorch' from the Extensions Manager"):
        flow.ensure_ready()


@pytest.mark.parametrize("state, expected", [
    (TorchState("2.4.1", "2.4.1"), "Upgrade it in the PyTorch Utils module (version requirement >=2.5), then restart"),
    (TorchState("2.4.1", "2.6.0"), "PyTorch 2.4.1 is loaded and MedSAM2 needs 2.5 or later; PyTorch 2.6.0 is "
                                   "installed now: restart Slicer to use it."),
])
def test_old_torch_is_never_reinstalled_under_a_running_slicer(tmp_path, monkeypatch, state, expected):
    monkeypatch.setattr(setup_flow, "torch_state", lambda: state)
    flow, installer, _ = flow_with(tmp_path)
    assert expected in flow.readiness().status()
    with pytest.raises(SetupError, match="restart"):
        flow.ensure_ready()
    assert installer.calls == []


def test_missing_packages_are_pip_installed_and_weights_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(setup_flow, "missing_packages", lambda: ["no-such-package"])
    source = publish(tmp_path / "server", b"weights")
    labels = []
    flow, installer, pip_calls = flow_with(tmp_path, weights_source=source,
                                           progress=lambda label, done, total: labels.append(label))
    assert "The Python package no-such-package will be installed." in flow.readiness().to_do()
    assert flow.ensure_ready() is True
    assert pip_calls == ["no-such-package"] and installer.calls == []
    assert (tmp_path / "MedSAM2_latest.pt").read_bytes() == b"weights"
    assert "Downloading MedSAM2 weights..." in labels


def test_cancelled_download_keeps_nothing_and_is_not_ready(tmp_path):
    source = publish(tmp_path / "server", b"weights")
    flow, _, _ = flow_with(tmp_path, weights_source=source, should_cancel=lambda: True)
    assert flow.ensure_ready() is False
    assert not (tmp_path / "MedSAM2_latest.pt").exists() and not flow.readiness().ready


def test_local_checkpoint_is_checked_and_remembered(tmp_path, checkpoints):
    flow, _, _ = flow_with(tmp_path)
    assert flow.use_local_checkpoint(checkpoints["tiny"]) == checkpoints["tiny"]
    assert flow.settings.checkpoint_path() == checkpoints["tiny"]
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="damaged or not a PyTorch file"):
        flow.use_local_checkpoint(tmp_path / "broken.pt")
    assert flow.settings.checkpoint_path() == checkpoints["tiny"]


def test_settings_default_to_the_cache_and_automatic_device(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(tmp_path))
    settings = MedSAM2Settings(SettingsDouble())
    assert settings.checkpoint_path() == tmp_path / "MedSAM2_latest.pt" and settings.device() == "auto"
    settings.set_device("cpu")
    assert settings.model_choice() == runtime.ModelChoice(tmp_path / "MedSAM2_latest.pt", None, "cpu")


def test_torch_state_reads_the_loaded_module_first(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="2.4.0"))
    state = runtime.torch_state()
    assert state.loaded == "2.4.0" and state.too_old
    monkeypatch.setitem(sys.modules, "torch", None)
    assert runtime.torch_state().absent


def test_model_cache_keeps_one_logic_and_its_features_while_the_model_stays(checkpoints, input_volume):
    from MedSAM2Lib.slicer_glue.runtime import ModelCache, ModelChoice

    cache = ModelCache()
    choice = ModelChoice(checkpoints["tiny"], DATA / "medsam2_tiny_test.yaml", "cpu")
    first = cache.logic(choice, fill_holes=True)
    again = cache.logic(choice, fill_holes=False, keep_largest_component=False)
    assert again is first and not first.predictor.fill_holes and not first.predictor.keep_largest_component
    cache.clear()
    assert cache.logic(choice) is not first


def test_a_published_model_is_chosen_by_name_and_listed_with_its_state(tmp_path, monkeypatch):
    from MedSAM2Lib.slicer_glue.setup_flow import OWN_FILE, model_entries, selected_model_entry

    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(tmp_path))
    settings = MedSAM2Settings(SettingsDouble())
    assert selected_model_entry(settings) == "latest" and settings.model().name == "latest"
    (tmp_path / "eff_medsam2_tiny_FLARE25_RECIST_baseline.pt").write_bytes(b"weights")
    settings.set_model("efficient-tiny")
    assert settings.checkpoint_path() == tmp_path / "eff_medsam2_tiny_FLARE25_RECIST_baseline.pt"
    entries = {entry.value: entry for entry in model_entries(settings)}
    assert list(entries) == ["latest", "2411", "ct-lesion", "mri-liver-lesion", "us-heart", "efficient-tiny",
                             "efficient-small"]
    assert entries["efficient-tiny"].label == "efficient-tiny (EfficientTAM-Ti (ViT), 512 px, about 71 MB, downloaded)"
    assert "to download" in entries["latest"].label and "CPU-only" in entries["efficient-tiny"].tooltip
    assert selected_model_entry(settings) == "efficient-tiny"
    # A file of one's own comes first and is the one in use; choosing a model by name replaces it.
    settings.set_checkpoint_path(tmp_path / "mine.pt")
    assert settings.model() is None and selected_model_entry(settings) == OWN_FILE
    assert model_entries(settings)[0].label == "File: mine.pt"
    settings.set_model("us-heart")
    assert settings.checkpoint_path() == tmp_path / "MedSAM2_US_Heart.pt" and len(model_entries(settings)) == 7
    with pytest.raises(ValueError, match="no MedSAM2 model named 'huge'"):
        settings.set_model("huge")
    assert settings.model().name == "us-heart"


def test_setup_downloads_the_chosen_model_after_one_confirmation(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(tmp_path / "cache"))
    source = publish(tmp_path / "server", b"small weights", filename="eff_medsam2_small_FLARE25_RECIST_baseline.pt")
    questions = []
    settings = MedSAM2Settings(SettingsDouble())
    settings.set_model("efficient-small")
    flow = SetupFlow(settings, pytorch_utils=PyTorchUtilsLogicDouble, pip_install=lambda package: None,
                     confirm=lambda question: questions.append(question) or True, weights_source=source)
    monkeypatch.setattr(setup_flow, "missing_packages", lambda: [])
    monkeypatch.setattr(setup_flow, "torch_state", lambda: TorchState(loaded="2.6.0", installed=None))
    assert "The MedSAM2 weights 'efficient-small' will be downloaded to" in flow.readiness().status()
    assert "(about 136 MB)" in flow.readiness().status()
    assert flow.ensure_ready() is True and len(questions) == 1
    assert (tmp_path / "cache" / "eff_medsam2_small_FLARE25_RECIST_baseline.pt").read_bytes() == b"small weights"
    assert flow.readiness().ready
