"""``medsam2 web``'s command line: what it refuses before loading anything (no browser needed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the web front end's extra is not installed: pip install -e '.[web]'")

from trame.app import get_server  # noqa: E402

from MedSAM2Lib.apps.cli import build_parser, main, prepare_web  # noqa: E402
from MedSAM2Lib.inference.predictor import FeatureCache  # noqa: E402
from MedSAM2Lib.inference.session import Session  # noqa: E402
from MedSAM2Lib.inference.session_file import SessionFileError, run_steps  # noqa: E402
from MedSAM2Lib.model_catalogue import CATALOGUE, DEFAULT_MODEL  # noqa: E402
from MedSAM2Lib.slicer_glue.scenario import segment_array  # noqa: E402
from MedSAM2Lib.web.app import LOOPBACK, MedSAM2WebApp, check_exposure, volume_name  # noqa: E402
from MedSAM2Lib.web.data_folder import DataFolder, DataFolderError, check_image_in  # noqa: E402
from MedSAM2Lib.web.single_tab import TabGuard  # noqa: E402

from conftest import DATA  # noqa: E402


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


def test_a_missing_image_is_refused_before_the_model_loads(capsys, tmp_path):
    assert main(["web", str(tmp_path / "missing.nrrd"), "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert capsys.readouterr().err == f"medsam2: error: No image at {tmp_path / 'missing.nrrd'}: give a volume file " \
                                      "or a folder of DICOM files.\n"


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


# -- --data: the images the page may open ------------------------------------------------------------------------

def write_volume(path: Path, slices: slice = slice(7, 18)) -> Path:
    """Slices of the fixture volume (uint8 0..217: a session without a window runs on it as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.load(DATA / "input_volume.npz")["imgs"][slices])
    image.SetSpacing((1.0, 1.0, 2.5))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def data_folder(tmp_path) -> Path:
    """A data folder: two volumes, one in a subfolder, a DICOM folder, an .npz, and what must not be listed."""
    data = tmp_path / "data"
    write_volume(data / "a.nrrd")
    write_volume(data / "sub" / "b.nii.gz", slice(0, 12))
    np.savez(data / "c.npz", imgs=np.zeros((3, 8, 8), np.uint8))
    dicom = data / "series"
    dicom.mkdir()
    (dicom / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # listed by its marker (not read here)
    (data / "notes.txt").write_text("not an image")
    (data / "detached.mhd").write_text("ElementDataFile = /etc/passwd\n")  # names a file outside the folder
    (data / ".hidden.nrrd").write_bytes(b"")
    (data / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    outside = write_volume(tmp_path / "outside" / "secret.nrrd")
    (data / "link.nrrd").symlink_to(outside)  # a link out of the folder: neither listed nor opened
    (data / "linked_series").mkdir()
    (data / "linked_series" / "IM0001.dcm").symlink_to(outside)  # a DICOM folder whose file lies outside: same
    return data


def test_the_data_folder_lists_the_images_segment_reads(data_folder):
    names, cut_short = DataFolder(data_folder).images()
    assert names == ["a.nrrd", "broken.nii.gz", "c.npz", "series", "sub/b.nii.gz"] and not cut_short


@pytest.mark.parametrize("name", ["../outside/secret.nrrd", "link.nrrd", "sub/../../outside/secret.nrrd", "/etc/passwd",
                                  "missing.nrrd", "detached.mhd", "linked_series", ""])
def test_names_outside_the_data_folder_are_refused_with_a_sentence(data_folder, name):
    with pytest.raises(DataFolderError) as refusal:
        DataFolder(data_folder).path_of(name)
    message = str(refusal.value)
    assert message.endswith(".") and "\n" not in message


def test_image_must_be_inside_the_data_folder(capsys, data_folder):
    outside = data_folder.parent / "outside" / "secret.nrrd"
    assert main(["web", str(outside), "--data", str(data_folder), "--checkpoint", "missing.pt"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"medsam2: error: {outside} is not inside the data folder") and "Traceback" not in error


def test_a_data_folder_without_images_is_refused(capsys, tmp_path):
    assert main(["web", "--data", str(tmp_path), "--checkpoint", "missing.pt"]) == 1
    assert "holds no image medsam2 can read" in capsys.readouterr().err


def test_without_image_the_data_folders_first_image_opens(data_folder):
    assert check_image_in(DataFolder(data_folder), None) == (data_folder / "a.nrrd").resolve()
    assert check_image_in(None, None) is None  # the caller's default: the demo scan


# -- --model, as on segment ----------------------------------------------------------------------------------------

def test_model_names_the_checkpoint_to_load(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(tmp_path))
    model = next(entry for entry in CATALOGUE if entry != DEFAULT_MODEL)
    assert main(["web", "--model", model.name, "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert str(model.path()) in error and f"--model {model.name}" in error


def test_model_and_checkpoint_together_are_refused_as_on_segment(capsys):
    for command in ("segment", "web"):
        with pytest.raises(SystemExit) as exit_status:
            main([command, "--model", DEFAULT_MODEL.name, "--checkpoint", "x.pt"])
        assert exit_status.value.code == 2
        assert "not allowed with argument" in capsys.readouterr().err


# -- --prompts ---------------------------------------------------------------------------------------------------

def test_an_unreadable_session_file_is_refused_before_the_model_loads(capsys, tmp_path):
    session = tmp_path / "session.json"
    session.write_text('{"steps": [{"slice": 5}]}')
    checkpoint = tmp_path / "empty.pt"
    checkpoint.write_bytes(b"")  # loading it would fail: the session file must be refused first
    assert main(["web", str(write_volume(tmp_path / "a.nrrd")), "--prompts", str(session), "--checkpoint",
                 str(checkpoint), "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error == "medsam2: error: Step 1 of the session file gives no box, points or mask for slice 5.\n"


def web_args(image: Path, out: Path, *extra: str):
    return build_parser().parse_args([
        "web", str(image), "--port", "0", "--out", str(out), "--device", "cpu", "--precision", "float32",
        "--checkpoint", str(DATA / "medsam2_tiny_random_seed0.pt"), "--config", str(DATA / "medsam2_tiny_test.yaml"),
        *extra])


async def serve(args):
    """The command's app (made inside the running loop, as trame-slicer wants), serving on a free port."""
    options, model = prepare_web(args)
    app = MedSAM2WebApp(options, model, server=get_server(f"medsam2-web-{uuid.uuid4()}", client_type="vue3"))
    app.start(exec_mode="task")
    assert await app.server.ready
    return app


def test_a_session_file_that_does_not_fit_the_image_is_refused_before_serving(tmp_path):
    session = tmp_path / "session.json"
    session.write_text(json.dumps({"steps": [{"slice": 40, "box": [10, 10, 50, 50]}, {"propagate": "both"}]}))

    async def scenario():
        with pytest.raises(SessionFileError, match="Step 1: .*40"):
            await serve(web_args(write_volume(tmp_path / "a.nrrd"), tmp_path, "--prompts", str(session)))

    asyncio.run(scenario())


def test_a_session_file_opens_with_its_segment_and_the_user_goes_on(tmp_path, data_folder):
    """--prompts: the steps are replayed by the effect's restore and the segment is what the library computes
    from them; a point then corrects it. Then another image of --data replaces the scene."""
    steps = [{"slice": 5, "box": [104, 70, 183, 131]}, {"propagate": "both"}]
    session_file = tmp_path / "lesion.json"
    session_file.write_text(json.dumps({"steps": steps, "window": "none"}))
    image = data_folder / "a.nrrd"

    async def scenario():
        app = await serve(web_args(image, tmp_path / "out", "--prompts", str(session_file), "--data",
                                   str(data_folder)))
        try:
            # The restore starts once the server is ready, as the page's first run; when it ends, the tool is idle
            # with the run's sentence in place of the opening one.
            for _ in range(6000):
                if not app.tool.busy and not app.tool.message.startswith("Opening the session"):
                    break
                await asyncio.sleep(0.05)
            tool = app.tool
            assert tool.message.startswith("Restored the segment's saved MedSAM2 session (2 steps)."), tool.message
            segment_id = app.slicer.segmentation_editor.editor_node.GetSelectedSegmentID()
            assert app.segmentation_node.GetSegmentation().GetSegment(segment_id).GetName() == "lesion"
            predictor = tool.segmenter.logic.predictor
            volume = np.load(DATA / "input_volume.npz")["imgs"][7:18]
            library = Session(predictor, volume, FeatureCache(volume), early_stop=predictor.early_stop)
            run_steps(library, steps)
            expected = library.mask()
            assert expected.any()
            np.testing.assert_array_equal(segment_array(app.segmentation_node, segment_id, app.volume_node), expected)
            assert tool.state().propagate_text == "Update" and tool.editor_logic.CanUndo()

            # Going on: Update works on the restored session, live, with nothing left to recompute.
            await tool.start("propagate")
            assert tool.message.startswith("Nothing to update: every slice is up to date."), tool.message

            # Another image of the folder: the scene is replaced, sessions end, the undo history goes.
            old_nodes = (app.volume_node, app.segmentation_node)
            assert not app.open_image("../outside/secret.nrrd")
            assert "is not inside the data folder" in tool.message and app.volume_node is old_nodes[0]
            assert not app.open_image("broken.nii.gz")
            assert tool.message.startswith("Cannot read ") and app.volume_node is old_nodes[0]
            assert app.open_image("sub/b.nii.gz"), tool.message
            assert app.volume_node.GetName() == "b" and app.volume_node.GetImageData().GetDimensions() == (256, 224, 12)
            assert not any(app.slicer.scene.IsNodePresent(node) for node in old_nodes)
            assert app.segmentation_node.GetSegmentation().GetNumberOfSegments() == 0
            assert tool.segmenter.sessions == {} and not tool.editor_logic.CanUndo()
            assert app.server.state.medsam2_message.startswith("Opened sub/b.nii.gz.")
        finally:
            await app.server.stop()
            app.close()

    asyncio.run(scenario())


# -- a second tab --------------------------------------------------------------------------------------------------

def test_the_first_tab_owns_the_app_until_its_connection_closes_or_another_takes_it_over():
    guard = TabGuard(get_server(f"medsam2-tabs-{uuid.uuid4()}", client_type="vue3"))
    # A test double of wslink's server, which names the connection each claim comes from (the browser test runs it).
    guard.web_app = SimpleNamespace(last_active_client_id="connection 1")
    assert guard.claim("first") and guard.owner == "first"
    guard.web_app.last_active_client_id = "connection 2"
    assert not guard.claim("second") and guard.owner == "first"
    guard.connection_closed("connection 2")  # not the owner's: nothing changes
    assert guard.owner == "first"
    assert guard.claim("second", take_over=True) and guard.owner == "second"
    guard.connection_closed("connection 1")
    assert guard.owner == "second"
    guard.connection_closed("connection 2")
    assert guard.owner is None and not guard.claim("")
