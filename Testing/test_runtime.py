"""Readiness checks and the model cache the Slicer module relies on."""

from __future__ import annotations

import os

import pytest

from MedSAM2Lib.slicer_glue import runtime
from MedSAM2Lib.slicer_glue.runtime import ModelCache, ModelChoice, TorchState

from conftest import DATA


def test_torch_state_with_the_installed_torch():
    state = runtime.torch_state()
    assert state.usable and state.sentence().startswith("PyTorch 2.")


@pytest.mark.parametrize("version, usable", [("2.4.1", False), ("2.5.0+cu121", True), ("2.13.0", True),
                                             ("1.13.1", False), ("2.5.0a0", True)])
def test_minimum_torch_version(version, usable):
    assert TorchState(None, version).usable is usable
    assert TorchState(version, None).usable is usable


def test_missing_torch_is_named():
    assert TorchState(None, None).sentence() == "PyTorch is not installed (MedSAM2 needs 2.5 or later)."


def test_missing_packages_are_pip_names(monkeypatch):
    assert runtime.missing_packages() == []
    monkeypatch.setattr(runtime, "EXTRA_PACKAGES", {"yaml": "PyYAML", "no_such_module_here": "no-such-package"})
    assert runtime.missing_packages() == ["no-such-package"]


def test_model_cache_loads_once_and_reloads_when_the_file_changes(checkpoints, tmp_path):
    copy = tmp_path / "tiny.pt"
    copy.write_bytes(checkpoints["tiny"].read_bytes())
    # float32: the predictor runs the loaded model itself (in bfloat16 it runs a copy with bfloat16 layers).
    choice = ModelChoice(copy, DATA / "medsam2_tiny_test.yaml", "cpu", precision="float32")
    cache = ModelCache()
    first = cache.model(choice)
    assert cache.model(choice) is first
    predictor = cache.predictor(choice, fill_holes=False, keep_largest_component=False)
    assert predictor.model is first and not predictor.fill_holes and not predictor.keep_largest_component
    logic = cache.logic(choice)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.model(choice) is not first
    assert cache.logic(choice) is not logic and cache.logic(choice).predictor.model is cache.model(choice)


def test_a_new_logic_warms_its_predictor_up_once(checkpoints, monkeypatch):
    """The kernels' one-time set-up is paid while loading, not by the first preview (what warm_up does and
    keeps: test_speed.py)."""
    from dataclasses import replace

    from MedSAM2Lib.inference.predictor import VolumePredictor

    warmed = []
    monkeypatch.setattr(VolumePredictor, "warm_up", lambda predictor: warmed.append(predictor))
    cache = ModelCache()
    choice = ModelChoice(checkpoints["tiny"], DATA / "medsam2_tiny_test.yaml", "cpu", precision="float32")
    logic = cache.logic(choice)
    assert warmed == [logic.predictor]
    assert cache.logic(choice) is logic and len(warmed) == 1  # the kept logic is not warmed up again
    fast = cache.logic(replace(choice, precision="bfloat16"))
    assert warmed == [logic.predictor, fast.predictor]  # a new precision: new kernels
