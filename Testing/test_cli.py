"""The ``medsam2 segment`` command end to end on the tiny fixture model."""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAM2Lib import __version__
from MedSAM2Lib.apps import cli, volume_io
from MedSAM2Lib.apps.cli import main
from MedSAM2Lib.apps.volume_io import read_volume
from MedSAM2Lib.inference import objects as objects_module
from MedSAM2Lib.inference import session as session_module
from MedSAM2Lib.inference.objects import segment_objects
from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.inference.preprocessing import window

from conftest import DATA, reference_masks
from interruptions import fill, run_killed_at_rename, small_filesystem

OBLIQUE = (0.8660254, -0.5, 0.0, 0.5, 0.8660254, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def model_arguments(checkpoints):
    """The tiny model in exact mode: the expected masks are the official pipeline's."""
    return ["--checkpoint", str(checkpoints["tiny"]), "--config", str(DATA / "medsam2_tiny_test.yaml"),
            "--precision", "float32"]


def test_segment_npz_to_npz(tmp_path, model_arguments, capsys):
    output = tmp_path / "mask.npz"
    code = main(["segment", str(DATA / "input_volume.npz"), "--slice", "12", "--box", "104", "70", "183", "131",
                 "-o", str(output)] + model_arguments)
    assert code == 0
    reference_masks("tiny_fillholes").check(np.load(output)["mask"])
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


def test_segment_nifti_keeps_geometry(tmp_path, model_arguments):
    image = sitk.GetImageFromArray(np.load(DATA / "input_volume.npz")["imgs"])
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-120.0, 33.5, 410.0))
    image.SetDirection(OBLIQUE)
    source, output = tmp_path / "scan.nii.gz", tmp_path / "out" / "mask.nii.gz"
    sitk.WriteImage(image, str(source))
    assert main(["segment", str(source), "--slice", "12", "--box", "104", "70", "183", "131", "-o", str(output),
                 "--no-window"] + model_arguments) == 0
    mask = sitk.ReadImage(str(output))
    reference_masks("tiny_fillholes").check(sitk.GetArrayFromImage(mask))
    assert np.allclose(mask.GetSpacing(), image.GetSpacing()) and np.allclose(mask.GetOrigin(), image.GetOrigin())
    assert np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)


def test_window_option_on_ct_values(tmp_path, model_arguments, tiny_model):
    ct = np.load(DATA / "input_volume.npz")["imgs"].astype(np.int16) * 4 - 500
    source = tmp_path / "ct.npz"
    np.savez(source, imgs=ct)
    output = tmp_path / "mask.npz"
    assert main(["segment", str(source), "--slice", "12", "--box", "104", "70", "183", "131", "-o", str(output),
                 "--window", "-500", "520"] + model_arguments) == 0
    # The command's defaults (hole filling, the largest component) are VolumePredictor's.
    expected = VolumePredictor(tiny_model).segment(window(ct, -500, 520), 12, [104, 70, 183, 131])
    assert expected.sum() > 1000
    np.testing.assert_array_equal(np.load(output)["mask"], expected)


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
    assert "medsam2 download" in result.stderr
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


# -- outputs checked before any work, and written atomically -------------------------------------------------


class NoModel:
    """Test double for build_predictor: fails the test if the command gets as far as loading the model."""

    def __call__(self, args, saved_options=None):
        raise AssertionError("the model was loaded before the output was checked")


class PredictorDouble:
    """Test double for the predictor ``segment`` builds: what the command reads of it, without a model."""

    early_stop = None

    def single_pass_cache(self, volume):
        return None

    def segment_objects(self, volume, objects, cache=None, on_result=None, errors=None):
        return segment_objects(self, volume, objects, cache, on_result, errors)  # on the Session double


class BoxMaskSession:
    """Test double for Session: the mask is the prompt's box on its slice (for tests about files and inputs, not
    the model). Keeps the volume it was given."""

    def __init__(self, predictor, volume, cache=None, early_stop=None):
        self.volume = volume
        self.stops = {}  # no propagation, so no direction stopped
        self.results = {}  # no logits: no overlaps to decide
        self._mask = np.zeros(volume.shape, np.uint8)

    def add_prompt(self, slice_index, box=None, points=None, labels=None, mask=None, add=False):
        x0, y0, x1, y1 = (int(value) for value in box)
        self._mask[slice_index, y0:y1, x0:x1] = 1

    def propagate(self, direction="both", slice_range=None):
        return iter(())

    def mask(self):
        return self._mask


@pytest.fixture
def box_sessions(monkeypatch):
    """``segment`` without the model: BoxMaskSession instead of Session; returns the sessions made."""
    made = []

    def make(predictor, volume, cache=None, early_stop=None):
        made.append(BoxMaskSession(predictor, volume, cache))
        return made[-1]

    monkeypatch.setattr(cli, "build_predictor", lambda args, saved_options=None: PredictorDouble())
    monkeypatch.setattr(session_module, "Session", make)
    monkeypatch.setattr(objects_module, "Session", make)
    return made


SEGMENT = ["segment", str(DATA / "input_volume.npz"), "--slice", "12", "--box", "104", "70", "183", "131"]


@pytest.mark.parametrize("name, expected", [
    ("mask.png", "a .png file holds a 2D picture, not a 3D mask with its spacing and orientation; name the output "
                 ".nii.gz, .nii, .nrrd, .mha or .npz."),
    ("mask.JPEG", "a .jpeg file holds a 2D picture"),
    ("mask.txt", ".txt is not a 3D mask format"),
    ("mask.mhd", "keeps its voxels in a second file"),
    ("folder", "is a folder; name a file in it"),
    ("afile/mask.nii.gz", "afile is a file, not a folder."),
])
def test_unusable_outputs_are_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, name, expected):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(cli, "build_predictor", NoModel())
    assert main(SEGMENT + ["-o", str(tmp_path / name)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("medsam2: error: ") and expected in error and error.count("\n") == 1


def test_the_input_itself_is_refused_as_output_also_through_a_link(tmp_path, monkeypatch, capsys):
    scan = tmp_path / "scan.npz"
    scan.write_bytes((DATA / "input_volume.npz").read_bytes())
    os.link(scan, tmp_path / "same.npz")
    monkeypatch.setattr(cli, "build_predictor", NoModel())
    for output, what in ((scan, "that is the input image"), (tmp_path / "sub" / ".." / "scan.npz", "that is the input image"),
                         (tmp_path / "same.npz", f"that is the same file as {scan}, the input image")):
        assert main(["segment", str(scan)] + SEGMENT[2:] + ["-o", str(output)]) == 1
        assert capsys.readouterr().err == (f"medsam2: error: Cannot write the mask to {output}: {what}, which it would "
                                           "replace; choose another name.\n")
    assert scan.read_bytes() == (DATA / "input_volume.npz").read_bytes()


def test_a_mask_that_is_another_file_segment_reads_is_refused(tmp_path, monkeypatch, capsys):
    """Not only the image: the checkpoint, the model's configuration and the session file are read too."""
    monkeypatch.setattr(cli, "build_predictor", NoModel())
    session = tmp_path / "session.json"
    session.write_text('{"steps": [{"slice": 12, "box": [104, 70, 183, 131]}, {"propagate": "both"}]}')
    os.symlink(session, tmp_path / "session.nii.gz")
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"weights")
    cases = [
        (SEGMENT + ["--checkpoint", str(weights), "-o", str(weights)], weights, "that is the checkpoint"),
        (SEGMENT + ["--config", str(weights), "-o", str(weights)], weights, "that is the model configuration"),
        (SEGMENT[:2] + ["--prompts", str(session), "-o", str(tmp_path / "session.nii.gz")], tmp_path / "session.nii.gz",
         "that is the session file"),
    ]
    for arguments, output, what in cases:
        assert main(arguments) == 1
        assert capsys.readouterr().err == (f"medsam2: error: Cannot write the mask to {output}: {what}, which it would "
                                           "replace; choose another name.\n")
    assert weights.read_bytes() == b"weights" and session.read_text().startswith('{"steps"')


def test_the_file_named_is_the_file_written_in_any_case(tmp_path, box_sessions):
    for name in ("x.NPZ", "y.NII.GZ", "z.Nrrd"):
        assert main(SEGMENT + ["-o", str(tmp_path / name)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["x.NPZ", "y.NII.GZ", "z.Nrrd"]
    expected = np.zeros((24, 224, 256), np.uint8)
    expected[12, 70:131, 104:183] = 1
    np.testing.assert_array_equal(np.load(tmp_path / "x.NPZ")["mask"], expected)
    for name in ("y.NII.GZ", "z.Nrrd"):
        np.testing.assert_array_equal(read_volume(tmp_path / name)[0], expected)


OLD_OUTPUT = b"an earlier run's finished mask"


@pytest.mark.parametrize("suffix", [".nii.gz", ".npz", ".nrrd"])
def test_a_full_disk_keeps_the_existing_output_byte_for_byte(tmp_path, box_sessions, capsys, suffix):
    with small_filesystem(tmp_path / "disk", kilobytes=128) as disk:
        output = disk / f"mask{suffix}"
        output.write_bytes(OLD_OUTPUT)
        fill(disk)
        assert main(SEGMENT + ["-o", str(output)]) == 1
        assert output.read_bytes() == OLD_OUTPUT and sorted(p.name for p in disk.iterdir()) == ["ballast", output.name]
    error = capsys.readouterr().err
    assert error.startswith(f"medsam2: error: Could not write {output}: no space left on device")
    assert error.endswith("; the existing file was left unchanged.\n") and "Wrote" not in error


def test_an_injected_full_disk_keeps_the_existing_output(tmp_path, box_sessions, monkeypatch, capsys):

    def disk_full(path, mask, geometry):
        path.write_bytes(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(volume_io, "_write_npz", disk_full)
    output = tmp_path / "mask.npz"
    output.write_bytes(OLD_OUTPUT)
    assert main(SEGMENT + ["-o", str(output)]) == 1
    assert output.read_bytes() == OLD_OUTPUT and [p.name for p in tmp_path.iterdir()] == ["mask.npz"]
    assert capsys.readouterr().err == (f"medsam2: error: Could not write {output}: no space left on device; the "
                                       "existing file was left unchanged.\n")


def test_a_segment_killed_before_the_rename_keeps_the_existing_output(tmp_path):
    output = tmp_path / "mask.nii.gz"
    output.write_bytes(OLD_OUTPUT)
    result = run_killed_at_rename(
        "from MedSAM2Lib.apps import cli\n"
        "from MedSAM2Lib.inference import objects, session\n"
        "from test_cli import BoxMaskSession, PredictorDouble, SEGMENT\n"
        "cli.build_predictor = lambda args, saved_options=None: PredictorDouble()\n"
        "session.Session = objects.Session = BoxMaskSession\n"
        "cli.main(SEGMENT + ['-o', 'mask.nii.gz'])\n",
        tmp_path,
    )
    assert result.returncode == -9, result.stderr
    assert output.read_bytes() == OLD_OUTPUT


# -- inputs and arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".nrrd", ".nii.gz"])  # SimpleITK reads a NIfTI's NaN as 0
def test_nan_voxels_are_refused_with_their_count_or_replaced(tmp_path, box_sessions, capsys, suffix):
    ct = np.load(DATA / "input_volume.npz")["imgs"].astype(np.float32) * 4 - 500
    ct[0, 0, :26] = np.nan
    ct[1, 0, 0] = -np.inf
    source, output = tmp_path / f"ct{suffix}", tmp_path / "mask.npz"
    if suffix == ".npz":
        np.savez(source, imgs=ct)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(ct), str(source))
    arguments = ["segment", str(source)] + SEGMENT[2:] + ["-o", str(output), "--window", "-500", "520"]
    assert main(arguments) == 1
    assert capsys.readouterr().err == (
        f"medsam2: error: {source} has 26 NaN and 1 infinite voxels (of 1,376,256), which no window can map to an "
        "intensity; give --nan-as VALUE to replace them with VALUE (for example the background's intensity).\n")
    assert not output.exists()
    assert main(arguments + ["--nan-as", "-500"]) == 0
    ct[~np.isfinite(ct)] = -500
    (session,) = box_sessions
    np.testing.assert_array_equal(session.volume, window(ct, -500, 520))  # what the model was given


def test_a_single_slice_is_refused_as_in_slicer(tmp_path, monkeypatch, capsys):
    source = tmp_path / "one.npz"
    np.savez(source, imgs=np.zeros((1, 20, 20), np.uint8))
    monkeypatch.setattr(cli, "build_predictor", NoModel())
    assert main(["segment", str(source), "--slice", "0", "--box", "1", "1", "9", "9", "-o", str(tmp_path / "m.npz")]) == 1
    assert "a single slice of 20 x 20 pixels; MedSAM2 propagates through a 3D volume with at least two slices" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("arguments, expected", [
    (["batch", "t.csv", "--images", ".", "--out", "o", "--cache-slices", "0"], "argument --cache-slices: 0 is not allowed: give a whole number at least 1"),
    (["batch", "t.csv", "--images", ".", "--out", "o", "--cache-slices", "many"], "'many' is not a whole number"),
    (["evaluate", "a", "b", "--tolerance", "-1"], "argument --tolerance: -1 is negative"),
    (["evaluate", "a", "b", "--tolerance", "nan"], "argument --tolerance: 'nan' is not a finite number"),
    (["evaluate", "a", "b", "--labels", "1", "0"], "argument --labels: 0 is not allowed: give a whole number at least 1"),
    (SEGMENT + ["-o", "m.npz", "--window", "nan", "5"], "argument --window: 'nan' is not a finite number"),
    (SEGMENT + ["-o", "m.npz", "--nan-as", "inf"], "argument --nan-as: 'inf' is not a finite number"),
])
def test_numeric_arguments_are_checked(capsys, arguments, expected):
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2 and expected in capsys.readouterr().err


def test_an_inverted_window_is_a_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_predictor", NoModel())
    assert main(SEGMENT + ["-o", str(tmp_path / "m.npz"), "--window", "5", "1"]) == 1
    assert capsys.readouterr().err == "medsam2: error: --window 5 1: LO must be below HI.\n"


def test_version_and_help_on_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"medsam2 {__version__}\n"
    parser = cli.build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    undocumented = [(name, action.dest) for name, command in [("medsam2", parser)] + list(commands.choices.items())
                    for action in command._actions if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert undocumented == []


# -- session files refused before the model loads -------------------------------------------------------------


def write_session(folder, steps):
    path = folder / "session.json"
    path.write_text(json.dumps({"steps": steps}))
    return path


@pytest.mark.parametrize("steps, expected", [
    ([{"slice": 12, "box": [104, 70, 183, 131]}, {"propagate": "both", "range": [14, 20]}],
     "Step 2: The slice range 14..20 must lie within 0..23 and include the first prompted slice 12."),
    ([{"slice": 12, "box": [104, 70, 183, 131]}, {"slice": 3, "box": [104, 70, 183, 131]},
      {"propagate": "forward", "range": [5, 20]}],
     "Step 3: The slice range 5..20 must lie within 0..23 and include the first prompted slice 3."),
    ([{"slice": 12, "box": [104, 70, 183, 131]}, {"slice": 12, "remove": True}, {"propagate": "both"}],
     "Step 3: Give a box, points or a mask on a slice before propagating."),
    ([{"slice": 12, "box": [104, 70, 183, 131]}, {"propagate": "both", "range": [20, 14]}],
     "Step 2: The slice range 20..14 is inverted: its first slice comes after its last; give 14..20."),
])
def test_a_session_that_cannot_propagate_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, steps,
                                                                          expected):
    monkeypatch.setattr(cli, "build_predictor", NoModel())
    session = write_session(tmp_path, steps)
    assert main(["segment", str(DATA / "input_volume.npz"), "--prompts", str(session), "-o",
                 str(tmp_path / "m.npz")]) == 1
    assert capsys.readouterr().err == f"medsam2: error: {expected}\n"


def test_a_range_a_later_prompt_may_satisfy_is_left_to_the_session(tmp_path, box_sessions):
    """After a propagation, whether a prompt conditions (and so where the next one starts) depends on what the
    propagation reached: only what is sure is refused beforehand."""
    box = [104, 70, 183, 131]
    # Slice 5 corrects the backward propagation if it reached it (the start stays 12, inside 8..23), else it
    # conditions and the second propagation would start outside its range.
    session = write_session(tmp_path, [{"slice": 12, "box": box}, {"propagate": "both"}, {"slice": 5, "box": box},
                                       {"propagate": "forward", "range": [8, 23]}])
    assert main(["segment", str(DATA / "input_volume.npz"), "--prompts", str(session), "-o",
                 str(tmp_path / "m.npz")]) == 0


def test_a_session_file_with_too_many_steps_is_refused(tmp_path, monkeypatch, capsys):
    from MedSAM2Lib.inference.session_file import MAX_STEPS

    monkeypatch.setattr(cli, "build_predictor", NoModel())
    session = write_session(tmp_path, [{"slice": 12, "points": [[120, 100]], "labels": [1]}] * 10_000)
    assert main(["segment", str(DATA / "input_volume.npz"), "--prompts", str(session), "-o",
                 str(tmp_path / "m.npz")]) == 1
    assert capsys.readouterr().err == (
        f"medsam2: error: The session file {session} has 10,000 steps, more than the {MAX_STEPS:,} a session file may "
        "hold; keep the steps that make the segment.\n")
    write_session(tmp_path, [{"slice": 12, "points": [[120, 100]], "labels": [1]}] * MAX_STEPS)
    with pytest.raises(AssertionError, match="the model was loaded"):  # accepted: it gets as far as the model
        main(["segment", str(DATA / "input_volume.npz"), "--prompts", str(session), "-o", str(tmp_path / "m.npz")])


# -- progress on a terminal and in a log ------------------------------------------------------------------------


class Terminal(io.StringIO):
    """Test double for stderr on a terminal."""

    def isatty(self):
        return True


def test_progress_on_a_terminal_is_one_line_redrawn():
    stream = Terminal()
    with cli.ProgressBar(4, "Propagating", stream=stream) as progress:
        for _ in range(4):
            progress.advance()
    shown = stream.getvalue()
    assert shown.count("\r") == 4 and shown.count("\n") == 1 and shown.endswith("] 4/4 (0.00 s/slice)\n")


def test_progress_in_a_log_has_no_carriage_returns_and_a_line_per_tenth():
    stream = io.StringIO()  # not a terminal: a log file or a pipe
    with cli.ProgressBar(25, "Propagating", stream=stream) as progress:
        for _ in range(25):
            progress.advance()
        progress.note("a note")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and stream.getvalue().endswith("\n")
    assert [line.split(" ")[1] for line in lines[:-1]] == [f"{done}/25" for done in (3, 5, 8, 10, 13, 15, 18, 20, 23, 25)]
    assert lines[0].startswith("Propagating 3/25 (12%, ") and lines[-1] == "a note"


class FailingRemoval(BoxMaskSession):
    """Test double: a session refusing to remove a prompt, to fail a command half way through its steps."""

    def remove_prompt(self, slice_index):
        raise session_module.PromptError(f"Slice {slice_index} has no prompt to remove.")


def test_an_error_half_way_starts_on_a_line_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "build_predictor", lambda args, saved_options=None: PredictorDouble())
    monkeypatch.setattr(session_module, "Session", FailingRemoval)
    monkeypatch.setattr(objects_module, "Session", FailingRemoval)
    monkeypatch.setattr(sys, "stderr", Terminal())
    box = [104, 70, 183, 131]
    session = write_session(tmp_path, [{"slice": 12, "box": box}, {"slice": 14, "box": box},
                                       {"slice": 3, "remove": True}, {"propagate": "both"}])
    assert main(["segment", str(DATA / "input_volume.npz"), "--prompts", str(session), "-o",
                 str(tmp_path / "m.npz")]) == 1
    shown = sys.stderr.getvalue()
    assert "2/4" in shown and shown.endswith("s/step)\nmedsam2: error: Step 3: Slice 3 has no prompt to remove.\n")


# -- a DICOM series folder as the image -------------------------------------------------------------------------


@pytest.fixture
def dicom_folder(tmp_path):
    """Two series in one folder: 6 slices of the fixture (slices 9..14) and 3 slices of something else."""
    from dicom_support import write_dicom_series

    folder = tmp_path / "dicom"
    volume = np.load(DATA / "input_volume.npz")["imgs"]
    write_dicom_series(folder, volume[9:15], "1.2.3.4.1", prefix="a")
    write_dicom_series(folder, volume[:3] // 2, "1.2.3.4.2", prefix="b")
    return folder, volume


def test_a_dicom_folder_is_read_as_its_largest_series_or_the_one_named(dicom_folder, tmp_path, box_sessions, capsys):
    from dicom_support import ORIGIN, SPACING

    folder, volume = dicom_folder
    output = tmp_path / "mask.nii.gz"
    assert main(["segment", str(folder), "--slice", "3", "--box", "104", "70", "183", "131", "-o", str(output)]) == 0
    np.testing.assert_array_equal(box_sessions[-1].volume, volume[9:15])
    assert capsys.readouterr().err == (
        f"medsam2: {folder} holds 2 DICOM series: 1.2.3.4.1 (6 slices), 1.2.3.4.2 (3 slices); reading 1.2.3.4.1, "
        "the one with the most slices (a series UID picks another).\n")
    written = sitk.ReadImage(str(output))
    assert written.GetSize() == (256, 224, 6) and np.allclose(written.GetSpacing(), SPACING)
    assert np.allclose(written.GetOrigin(), ORIGIN)
    assert main(["segment", str(folder), "--series", "1.2.3.4.2", "--slice", "1", "--box", "104", "70", "183", "131",
                 "-o", str(output)]) == 0
    np.testing.assert_array_equal(box_sessions[-1].volume, volume[:3] // 2)
    assert capsys.readouterr().err == ""


def test_a_dicom_folder_without_the_series_named_is_refused_before_the_model_loads(dicom_folder, tmp_path,
                                                                                  monkeypatch, capsys):
    folder, _ = dicom_folder
    monkeypatch.setattr(cli, "build_predictor", NoModel())
    (tmp_path / "empty").mkdir()
    for image, extra, expected in (
            (folder, ["--series", "9.9"], f"{folder} has no DICOM series 9.9; it has 1.2.3.4.1 (6 slices), "
                                          "1.2.3.4.2 (3 slices)."),
            (tmp_path / "empty", [], f"{tmp_path / 'empty'} is a folder without a DICOM series in it; give a volume "
                                     "file (NIfTI, NRRD, MHA, .npz) or a folder holding the DICOM files of a series."),
            (DATA / "input_volume.npz", ["--series", "9.9"], "A series UID picks one DICOM series of a folder")):
        assert main(["segment", str(image), "--slice", "1", "--box", "1", "1", "9", "9", "-o",
                     str(tmp_path / "m.nii.gz")] + extra) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"medsam2: error: {expected}") and error.count("\n") == 1
