"""``medsam2 demo``: the shipped scan and its notice, the run on the tiny model, and the message without weights."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from MedSAM2Lib.atomic import WriteError
from MedSAM2Lib.apps import cli
from MedSAM2Lib.apps.cli import main
from MedSAM2Lib.apps.demo import (DEMO_NOTICE, DEMO_PROMPT, DEMO_SCAN, OUTLINE_COLOUR, PNG_SCALE, confirm_download,
                                  overview_slices, run_demo)
from MedSAM2Lib.weights import CHECKPOINT_URL
from MedSAM2Lib.inference.predictor import validate_prompt

from conftest import DATA
from test_weights import publish


def test_the_scan_is_small_credited_and_the_box_is_on_the_ventricle():
    assert DEMO_SCAN.stat().st_size < 2 * 1024 * 1024
    notice = DEMO_NOTICE.read_text()
    assert "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre" in notice
    assert "provided that the above copyright" in notice
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(DEMO_SCAN)))
    assert volume.shape == (78, 195, 157) and volume.dtype == np.uint8
    validate_prompt(volume, DEMO_PROMPT.key_slice, DEMO_PROMPT.box, "both", DEMO_PROMPT.slice_range)
    key_slice = volume[DEMO_PROMPT.key_slice]
    x0, y0, x1, y1 = DEMO_PROMPT.box
    brain = key_slice[key_slice > 20]
    dark = np.median(brain) / 2  # cerebrospinal fluid is dark on T1
    assert (key_slice[y0:y1, x0:x1] < dark).mean() > 3 * (brain < dark).mean()


def test_overview_slices_lie_halfway_to_the_mask_ends():
    assert overview_slices(45, (30, 60)) == [37, 45, 53]
    assert overview_slices(45, (45, 45)) == [45, 45, 45]


def test_on_a_fresh_machine_the_demo_downloads_the_weights_and_writes_the_mask_and_the_picture(
        tmp_path, monkeypatch, checkpoints, capsys):
    """No weights yet: --yes downloads the verified file (from a mirror serving the tiny model), then the demo runs."""
    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(tmp_path / "cache"))
    source = publish(tmp_path / "mirror", checkpoints["tiny"].read_bytes())
    out = tmp_path / "demo"
    code = main(["demo", "--yes", "--mirror", source.base_url, "--config", str(DATA / "medsam2_tiny_test.yaml"),
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "cache" / "MedSAM2_latest.pt").read_bytes() == checkpoints["tiny"].read_bytes()
    mask_path, png_path = out / "right_lateral_ventricle.nii.gz", out / "right_lateral_ventricle.png"
    assert f"Mask: {mask_path}" in captured.out and f"Picture: {png_path}" in captured.out
    assert "Louis Collins" in captured.out and "33/33" in captured.err
    scan, mask = sitk.ReadImage(str(DEMO_SCAN)), sitk.ReadImage(str(mask_path))
    assert mask.GetSize() == scan.GetSize() and np.allclose(mask.GetSpacing(), scan.GetSpacing())
    assert np.allclose(mask.GetOrigin(), scan.GetOrigin()) and np.allclose(mask.GetDirection(), scan.GetDirection())
    voxels = sitk.GetArrayFromImage(mask)
    first, last = DEMO_PROMPT.slice_range
    assert voxels.any() and not voxels[:first].any() and not voxels[last + 1:].any()
    picture = np.asarray(Image.open(png_path).convert("RGB"))
    assert picture.shape[1] == 3 * 157 * PNG_SCALE + 2 * 4 and picture.shape[0] > 195 * PNG_SCALE
    assert (picture == OUTLINE_COLOUR).all(axis=2).any()


def test_offline_without_weights_the_demo_says_how_to_get_them(tmp_path):
    """No terminal: the demo tries the download; the mirror cannot be reached, so it says what to do."""
    environment = dict(os.environ, MEDSAM2_CACHE_DIR=str(tmp_path / "cache"),
                       HF_ENDPOINT=(tmp_path / "unreachable").as_uri())
    result = subprocess.run([sys.executable, "-m", "MedSAM2Lib.apps.cli", "demo", "--out", str(tmp_path / "demo")],
                            capture_output=True, text=True, env=environment, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    expected = tmp_path / "cache" / "MedSAM2_latest.pt"
    assert "Could not download the MedSAM2 weights" in result.stderr and "cannot be reached" in result.stderr
    assert f"no checkpoint at {expected}" in result.stderr
    assert f'medsam2 download -o "{expected}"' in result.stderr and CHECKPOINT_URL in result.stderr and "--checkpoint PATH" in result.stderr
    assert not (tmp_path / "demo").exists() and not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_the_demo_asks_once_on_a_terminal_and_never_for_a_named_checkpoint(tmp_path, capsys):
    questions = []
    assert confirm_download(tmp_path / "w.pt", False, lambda q: questions.append(q) or "", interactive=True)
    assert not confirm_download(tmp_path / "w.pt", False, lambda q: questions.append(q) or "n", interactive=True)
    assert confirm_download(tmp_path / "w.pt", True, lambda q: questions.append(q) or "n", interactive=True)
    assert confirm_download(tmp_path / "w.pt", False, lambda q: questions.append(q) or "n", interactive=False)
    assert len(questions) == 2 and "about 156 MB" in questions[0]
    named = tmp_path / "mine.pt"
    assert main(["demo", "--yes", "--checkpoint", str(named), "--out", str(tmp_path / "demo")]) == 1
    assert f"no checkpoint at {named}" in capsys.readouterr().err and not named.exists()


def test_an_unusable_output_folder_is_refused_before_the_model_loads(tmp_path, checkpoints, monkeypatch, capsys):
    def no_model(args):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(cli, "build_predictor", no_model)
    (tmp_path / "taken").write_text("a file where the folder should be")
    assert main(["demo", "--checkpoint", str(checkpoints["tiny"]), "--out", str(tmp_path / "taken")]) == 1
    assert capsys.readouterr().err == (f"medsam2: error: Cannot write {tmp_path / 'taken' / 'right_lateral_ventricle.nii.gz'}"
                                       f": {tmp_path / 'taken'} is a file, not a folder.\n")


def test_a_demo_output_that_is_the_checkpoint_is_refused_before_the_model_loads(tmp_path, checkpoints, monkeypatch,
                                                                               capsys):
    def no_model(args):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(cli, "build_predictor", no_model)
    weights = tmp_path / "out" / "right_lateral_ventricle.png"
    weights.parent.mkdir()
    weights.write_bytes(checkpoints["tiny"].read_bytes())
    assert main(["demo", "--checkpoint", str(weights), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (f"medsam2: error: Cannot write the picture to {weights}: that is the "
                                       "checkpoint, which it would replace; choose another name.\n")
    assert weights.read_bytes() == checkpoints["tiny"].read_bytes()


def test_a_failed_picture_keeps_the_earlier_one(tmp_path, monkeypatch):
    """The picture is written atomically too: a failing save leaves the previous run's picture as it was."""

    class BoxPredictor:
        def segment(self, volume, key_slice, box, slice_range=None, on_slice=None):
            mask = np.zeros(volume.shape, np.uint8)
            mask[key_slice, box[1]:box[3], box[0]:box[2]] = 1
            return mask

    out = tmp_path / "demo"
    result = run_demo(BoxPredictor(), out)
    earlier = result.png_path.read_bytes()

    def failing_save(self, path, format=None, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(WriteError, match="no space left on device; the existing file was left unchanged"):
        run_demo(BoxPredictor(), out)
    assert result.png_path.read_bytes() == earlier
    assert sorted(path.name for path in out.iterdir()) == ["right_lateral_ventricle.nii.gz", "right_lateral_ventricle.png"]
