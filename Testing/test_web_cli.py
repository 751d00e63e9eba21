"""``medsam2 web``'s command line: what it refuses before loading anything (no browser needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("trame_slicer", reason="the web front end's extra is not installed: pip install -e '.[web]'")

from MedSAM2Lib.apps.cli import main  # noqa: E402
from MedSAM2Lib.web.app import LOOPBACK, check_exposure, volume_name  # noqa: E402


def test_binds_loopback_unless_a_host_is_given():
    assert check_exposure(None, None) == LOOPBACK
    assert check_exposure("0.0.0.0", "s3cret") == "0.0.0.0"


@pytest.mark.parametrize("token", [None, ""])
def test_a_host_without_a_token_is_refused_with_a_sentence(capsys, token):
    argv = ["web", "--host", "0.0.0.0", "--checkpoint", "missing.pt"] + (["--token", token] if token is not None else [])
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("medsam2: error: --host 0.0.0.0 would let anyone") and "--token" in error
    assert "Traceback" not in error


def test_a_missing_checkpoint_is_refused_before_serving(capsys, tmp_path):
    assert main(["web", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 1
    assert str(tmp_path / "missing.pt") in capsys.readouterr().err


@pytest.mark.parametrize("name, expected", [("ct.nii.gz", "ct"), ("CT.NRRD", "CT"), ("scan.mha", "scan"),
                                            ("dicom_folder", "dicom_folder"), ("a.b.nii", "a.b")])
def test_saved_files_are_named_after_the_image(name, expected):
    assert volume_name(Path(name)) == expected


def test_the_command_lines_model_options_are_where_the_page_starts(tmp_path):
    from MedSAM2Lib.apps.cli import build_parser
    from MedSAM2Lib.web.model import ModelOptions, PageModel

    checkpoint = tmp_path / "own.pt"
    args = build_parser().parse_args(["web", "--checkpoint", str(checkpoint), "--device", "cpu", "--precision",
                                      "bfloat16", "--no-early-stop", "--all-components"])
    options = ModelOptions.from_arguments(args)
    assert options.choice.checkpoint == checkpoint and options.choice.device == "cpu"
    assert options.choice.precision == "bfloat16" and options.early_stop is None
    assert options.fill_holes and not options.keep_largest_component
    page = PageModel(options)  # nothing is loaded until the logic is asked for
    assert page.settings.precision() == "bfloat16" and page.settings.early_stop() is None
    defaults = ModelOptions.from_arguments(build_parser().parse_args(["web", "--checkpoint", str(checkpoint)]))
    assert defaults.choice.precision == "auto" and defaults.early_stop == 5 and defaults.keep_largest_component
