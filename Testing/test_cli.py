"""The ``medsam2 segment`` command end to end on the tiny fixture model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAM2Lib.apps.cli import main

from conftest import DATA

OBLIQUE = (0.8660254, -0.5, 0.0, 0.5, 0.8660254, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def model_arguments(checkpoints):
    """The tiny model in exact mode: the expected masks are the official pipeline's."""
    return ["--checkpoint", str(checkpoints["tiny"]), "--config", str(DATA / "medsam2_tiny_test.yaml"),
            "--precision", "float32"]


@pytest.fixture(scope="module")
def expected_mask():
    return np.load(DATA / "expected_tiny_fillholes.npz")["seg_final"]


def test_segment_npz_to_npz(tmp_path, model_arguments, expected_mask, capsys):
    output = tmp_path / "mask.npz"
    code = main(["segment", str(DATA / "input_volume.npz"), "--slice", "12", "--box", "104", "70", "183", "131",
                 "-o", str(output)] + model_arguments)
    assert code == 0
    np.testing.assert_array_equal(np.load(output)["mask"], expected_mask)
    captured = capsys.readouterr()
    assert "24/24" in captured.err and "s/slice" in captured.err
    assert f"Wrote {output}" in captured.out


@pytest.mark.parametrize("stop_arguments, computed", [(["--early-stop", "2"], 5), (["--no-early-stop"], 24)])
def test_segment_reports_early_stop(stop_arguments, computed, tmp_path, checkpoints, capsys):
    """The tiny_absent checkpoint sees no object on any tracked slice."""
    output = tmp_path / "mask.npz"
    code = main(["segment", str(DATA / "input_volume.npz"), "--slice", "12", "--box", "104", "70", "183", "131",
                 "-o", str(output), "--checkpoint", str(checkpoints["tiny_absent"]),
                 "--config", str(DATA / "medsam2_tiny_test.yaml")] + stop_arguments)
    assert code == 0
    err = capsys.readouterr().err
    assert f"{computed}/24" in err
    stopped = ["Forward propagation stopped at slice 14: the model saw no object on slices 13-14 (2 in a row).",
               "Backward propagation stopped at slice 10: the model saw no object on slices 11-10 (2 in a row)."]
    assert all((line in err) == (computed == 5) for line in stopped)


def test_segment_nifti_keeps_geometry(tmp_path, model_arguments, expected_mask):
    image = sitk.GetImageFromArray(np.load(DATA / "input_volume.npz")["imgs"])
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-120.0, 33.5, 410.0))
    image.SetDirection(OBLIQUE)
    source, output = tmp_path / "scan.nii.gz", tmp_path / "out" / "mask.nii.gz"
    sitk.WriteImage(image, str(source))
    assert main(["segment", str(source), "--slice", "12", "--box", "104", "70", "183", "131", "-o", str(output),
                 "--no-window"] + model_arguments) == 0
    mask = sitk.ReadImage(str(output))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected_mask)
    assert np.allclose(mask.GetSpacing(), image.GetSpacing()) and np.allclose(mask.GetOrigin(), image.GetOrigin())
    assert np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)


def test_window_option_on_ct_values(tmp_path, model_arguments):
    ct = np.load(DATA / "input_volume.npz")["imgs"].astype(np.int16) * 4 - 500
    source = tmp_path / "ct.npz"
    np.savez(source, imgs=ct)
    output = tmp_path / "mask.npz"
    assert main(["segment", str(source), "--slice", "12", "--box", "104", "70", "183", "131", "-o", str(output),
                 "--window", "-500", "520"] + model_arguments) == 0
    assert np.load(output)["mask"].any()


def test_ct_values_without_window_get_advice(tmp_path, model_arguments, capsys):
    source = tmp_path / "ct.npz"
    np.savez(source, imgs=np.full((3, 20, 20), -1000, np.int16))
    assert main(["segment", str(source), "--slice", "1", "--box", "1", "1", "9", "9", "-o",
                 str(tmp_path / "m.npz")] + model_arguments) == 1
    assert "not whole numbers in 0..255; give a display window" in capsys.readouterr().err


def test_missing_checkpoint_is_a_sentence_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "MedSAM2Lib.apps.cli", "segment", str(DATA / "input_volume.npz"), "--slice", "12", "--box",
         "104", "70", "183", "131", "-o", str(tmp_path / "m.npz"), "--checkpoint", str(tmp_path / "none.pt")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "medsam2: error: No MedSAM2 checkpoint at" in result.stderr and "Traceback" not in result.stderr
    assert "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt" in result.stderr
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("kind", ["vector", "2d"])
def test_non_volume_images_are_refused(tmp_path, model_arguments, capsys, kind):
    if kind == "vector":
        image = sitk.GetImageFromArray(np.zeros((3, 8, 8, 3), np.uint8), isVector=True)
        expected = "3 components per voxel"
    else:
        image = sitk.GetImageFromArray(np.zeros((8, 8), np.uint8))
        expected = "is a 2D image; MedSAM2 needs a 3D volume"
    source = tmp_path / f"{kind}.nrrd"
    sitk.WriteImage(image, str(source))
    assert main(["segment", str(source), "--slice", "0", "--box", "1", "1", "5", "5", "-o",
                 str(tmp_path / "m.npz")] + model_arguments) == 1
    assert expected in capsys.readouterr().err


def test_bad_box_is_reported(tmp_path, model_arguments, capsys):
    assert main(["segment", str(DATA / "input_volume.npz"), "--slice", "12", "--box", "104", "70", "300", "131",
                 "-o", str(tmp_path / "m.npz")] + model_arguments) == 1
    assert "reaches outside the slice" in capsys.readouterr().err


def test_npz_output_keeps_the_spacing(tmp_path, model_arguments):
    source = tmp_path / "scan.npz"
    np.savez(source, imgs=np.load(DATA / "input_volume.npz")["imgs"], spacing=np.array([2.5, 0.8, 0.7]))
    output = tmp_path / "mask.npz"
    assert main(["segment", str(source), "--slice", "12", "--box", "104", "70", "183", "131", "-o", str(output)]
                + model_arguments) == 0
    np.testing.assert_array_equal(np.load(output)["spacing"], [2.5, 0.8, 0.7])
