"""The predictor refuses unusable input with a sentence, before any computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedSAM2Lib.inference.predictor import PromptError, VolumePredictor, planned_slices, select_device, validate_prompt

VOLUME = np.zeros((5, 40, 60), dtype=np.uint8)


@pytest.mark.parametrize(
    "volume, key_slice, box, extra, message",
    [
        (np.zeros((40, 60), np.uint8), 0, [1, 1, 5, 5], {}, "needs a 3D volume"),
        (np.zeros((2, 5, 40, 60), np.uint8), 0, [1, 1, 5, 5], {}, "needs a 3D volume"),
        (VOLUME.astype(np.int16), 0, [1, 1, 5, 5], {}, "windowed to uint8"),
        (VOLUME, 5, [1, 1, 5, 5], {}, r"Slice 5 is outside the volume, which has slices 0\.\.4"),
        (VOLUME, -1, [1, 1, 5, 5], {}, "outside the volume"),
        (VOLUME, 2, [10, 10, 10, 20], {}, "has no area"),
        (VOLUME, 2, [10, 20, 30, 20], {}, "has no area"),
        (VOLUME, 2, [30, 10, 10, 20], {}, r"^The box \(30, 10\) - \(10, 20\) has its corners swapped: x1 is left of x0; "
                                          r"give the top-left corner first: 10 10 30 20\.$"),
        (VOLUME, 2, [10, 20, 30, 5], {}, r"^The box \(10, 20\) - \(30, 5\) has its corners swapped: y1 is above y0; "
                                         r"give the top-left corner first: 10 5 30 20\.$"),
        (VOLUME, 2, [10, 10, 61, 20], {}, r"reaches outside the slice.*x 0\.\.60 and y 0\.\.40"),
        (VOLUME, 2, [-1, 10, 20, 20], {}, "reaches outside the slice"),
        (VOLUME, 2, [1, 2, 3], {}, "four numbers"),
        (VOLUME, 2, [1, 2, 3, float("nan")], {}, "four numbers"),
        (VOLUME, 2, [1, 2, 30, 30], {"direction": "up"}, "Unknown direction 'up'"),
        (VOLUME, 2, [1, 2, 30, 30], {"slice_range": (3, 4)}, "must .* include the box's slice 2"),
        (VOLUME, 2, [1, 2, 30, 30], {"slice_range": (0, 5)}, "within 0..4"),
        (VOLUME, 2, [1, 2, 30, 30], {"slice_range": (4, 1)},
         r"^The slice range 4\.\.1 is inverted: its first slice comes after its last; give 1\.\.4\.$"),
    ],
)
def test_bad_prompts_are_refused_clearly(tiny_model, volume, key_slice, box, extra, message):
    predictor = VolumePredictor(tiny_model)
    with pytest.raises(PromptError, match=message):
        next(predictor.propagate(volume, key_slice, box, **extra))
    assert predictor.encoder_calls == 0


def test_box_touching_the_slice_edges_is_accepted(tiny_model):
    result = VolumePredictor(tiny_model).segment_slice(VOLUME, 0, [0, 0, 60, 40])
    assert result.index == 0 and result.logits.shape == (40, 60)


def test_single_slice_volume_is_refused_as_in_slicer():
    """One answer everywhere: the Slicer logic refuses single-slice volumes, so the predictor (and with it the
    command line and batch) does too."""
    with pytest.raises(PromptError, match=r"^The volume is a single slice of 40 x 60 pixels; MedSAM2 propagates "
                                          r"through a 3D volume with at least two slices\.$"):
        validate_prompt(VOLUME[:1], 0, [5, 5, 30, 30])


def test_stopping_the_iteration_stops_the_work(tiny_model):
    predictor = VolumePredictor(tiny_model)
    iterator = predictor.propagate(VOLUME, 2, [5, 5, 30, 30])
    next(iterator), next(iterator)
    iterator.close()
    assert predictor.encoder_calls == 2


def test_planned_slices():
    assert planned_slices(6, 2, "both", None) == [2, 3, 4, 5, 1, 0]
    assert planned_slices(6, 2, "forward", None) == [2, 3, 4, 5]
    assert planned_slices(6, 2, "backward", (1, 4)) == [2, 1]


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_device_selection(monkeypatch, cuda, mps, expected):
    """auto prefers CUDA, then MPS, then the CPU; an explicit device must be available (availability is set
    here, so every branch runs on any machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert select_device("auto") == torch.device(expected)
    assert select_device("cpu") == torch.device("cpu")
    for name, available in (("cuda", cuda), ("mps", mps)):
        if available:
            assert select_device(name) == torch.device(name)
        else:  # what CUDA's sentence says: test_cuda_unavailable_names_the_actual_problem
            with pytest.raises(ValueError, match="CUDA|The device 'mps' is not available in this PyTorch installation"):
                select_device(name)
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        select_device("tpu")


@pytest.mark.parametrize("cuda_version, expected", [
    (None, "The device 'cuda' needs a PyTorch built with CUDA, and this one is a CPU-only build; install a CUDA "
           "build of PyTorch (https://pytorch.org/get-started/locally/), or choose the device auto or cpu."),
    ("12.6", "This PyTorch is built with CUDA 12.6 but finds no usable NVIDIA GPU (none in this computer, no driver, "
             "or hidden by CUDA_VISIBLE_DEVICES; nvidia-smi tells which); choose the device auto or cpu."),
])
def test_cuda_unavailable_names_the_actual_problem(monkeypatch, cuda_version, expected):
    """Test double: torch.cuda as a build with or without CUDA on a machine without a usable GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_version)
    with pytest.raises(ValueError) as refused:
        select_device("cuda")
    assert str(refused.value) == expected
