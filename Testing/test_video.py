"""``medsam2 video`` against the official ``medsam2_infer_video.py`` (Testing/Data/video/, see Data/README.md),
and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from MedSAM2Lib.apps import cli
from MedSAM2Lib.apps.cli import main
from MedSAM2Lib.inference.reference_check import (LOGIT_TOLERANCE, MAX_BORDERLINE_DIFFERENCES, compare_masks,
                                                  relative_error)
from MedSAM2Lib.video import tracking
from MedSAM2Lib.video.frames import VIDEO_EXTRA, read_frames, voc_palette

from conftest import DATA

VIDEO = DATA / "video"
REFERENCE = np.load(VIDEO / "reference.npz")
META = json.loads(str(REFERENCE["meta_json"]))
FRAMES = VIDEO / "frames" / "clip"
MASKS = VIDEO / "masks" / "clip"
MODES = {"joint": [], "separate": ["--track-objects-appearing-later"]}


@pytest.fixture(scope="module")
def video_checkpoint(tmp_path_factory) -> Path:
    """The tiny checkpoint with the tensors the reference run scaled (its meta_json names them)."""
    state_dict = torch.load(DATA / "medsam2_tiny_random_seed0.pt", weights_only=True)["model"]
    for key, factor in META["variant"].items():
        state_dict[key] = state_dict[key] * factor
    path = tmp_path_factory.mktemp("video") / "medsam2_tiny_video.pt"
    torch.save({"model": state_dict}, path)
    return path


def model_arguments(checkpoint: Path):
    return ["--checkpoint", str(checkpoint), "--config", str(DATA / "medsam2_tiny_test.yaml"),
            "--precision", "float32"]


def reference_logits(mode: str):
    """frame index -> (objects, H, W) official logits before the non-overlap rule; -1024 where an object was
    not tracked, as the official script fills it."""
    ids = sorted(set(REFERENCE[f"{mode}_object_ids"].ravel().tolist()))
    height, width = REFERENCE["labels"].shape[1:]
    stacks = {}
    for frame, frame_ids, logits in zip(REFERENCE[f"{mode}_frames"], REFERENCE[f"{mode}_object_ids"],
                                        REFERENCE[f"{mode}_logits"]):
        stack = stacks.setdefault(int(frame), np.full((len(ids), height, width), -1024.0, np.float32))
        for number, object_id in enumerate(frame_ids):
            stack[ids.index(object_id)] = logits[number]
    return ids, stacks


def undecided(stack: np.ndarray) -> np.ndarray:
    """(H, W): pixels whose label the reference decides within the logit tolerance (reference_check's
    borderline rule, extended to the merge): its best object's logit within tolerance of 0, or above it with the
    runner-up within tolerance of the best; the tolerance is relative to the frame's largest |logit|."""
    tolerance = LOGIT_TOLERANCE * np.abs(stack).max()
    ordered = np.sort(stack, axis=0)
    best, second = ordered[-1], ordered[-2]
    return (np.abs(best) <= tolerance) | ((best > -tolerance) & (best - second <= tolerance))


def run_video(tmp_path, monkeypatch, arguments):
    """Run ``medsam2 video`` and return its exit status and the VideoResult it wrote."""
    results = []
    track = tracking.track

    def track_and_keep(*args, **kwargs):
        results.append(track(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(tracking, "track", track_and_keep)
    status = main(["video", *map(str, arguments)])
    return status, (results[0] if results else None)


def test_frames_decode_as_in_the_reference_run():
    frames = read_frames(FRAMES)
    assert frames.names == tuple(META["frames"])
    np.testing.assert_array_equal(frames.images, REFERENCE["decoded_frames"])  # else: another JPEG decoder


@pytest.mark.parametrize("mode", MODES)
def test_video_writes_the_official_pngs(mode, video_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    status, result = run_video(tmp_path, monkeypatch, [FRAMES, "--masks", MASKS, "-o", out, *MODES[mode],
                                                       *model_arguments(video_checkpoint)])
    assert status == 0
    ids, expected = reference_logits(mode)
    assert result.object_ids == ids == [1, 2]
    assert result.frames == sorted(expected) == list(range(12))
    with Image.open(MASKS / "00000.png") as given:
        palette = given.getpalette()
    undecided_pixels = differing = 0
    for index, stack in expected.items():
        for number, object_id in enumerate(ids):
            error = relative_error(result.logits(index)[number], stack[number])
            assert error <= LOGIT_TOLERANCE, f"frame {index}, object {object_id}: {error:.2e}"
        with Image.open(out / f"{index:05d}.png") as written, \
                Image.open(VIDEO / f"expected_{mode}" / "clip" / f"{index:05d}.png") as official:
            assert written.mode == official.mode == "P"
            assert written.getpalette() == official.getpalette() == palette  # the input masks' palette
            ours, theirs = np.asarray(written), np.asarray(official)
        open_pixels = undecided(stack)
        undecided_pixels += int(open_pixels.sum())
        differing += int((ours != theirs)[open_pixels].sum())
        np.testing.assert_array_equal(ours[~open_pixels], theirs[~open_pixels], err_msg=f"frame {index}")
        assert set(np.unique(theirs)) <= {0, 1, 2}
    # The comparison leaves out few pixels, and the objects do compete for some (the merge rule is exercised).
    assert undecided_pixels < 0.002 * 12 * 72 * 96
    assert differing <= MAX_BORDERLINE_DIFFERENCES
    overlaps = sum(int(((stack > 0).sum(axis=0) > 1).sum()) for stack in expected.values())
    assert overlaps > 100


def test_per_object_pngs_are_each_objects_own_mask(video_checkpoint, tmp_path, monkeypatch):
    """--per-object-png: one 0/1 PNG per object and frame, no merge (the official script turns it off), from
    masks given the same way."""
    masks = tmp_path / "masks"
    labels = np.asarray(Image.open(MASKS / "00000.png"))
    for object_id in (1, 2):
        folder = masks / f"{object_id:03d}"
        folder.mkdir(parents=True)
        Image.fromarray((labels == object_id).astype(np.uint8)).save(folder / "00000.png")
    out = tmp_path / "out"
    status, _ = run_video(tmp_path, monkeypatch, [FRAMES, "--masks", masks, "-o", out, "--per-object-png",
                                                  *model_arguments(video_checkpoint)])
    assert status == 0
    _, expected = reference_logits("joint")
    for index, stack in expected.items():
        for number, object_id in enumerate((1, 2)):
            with Image.open(out / f"{object_id:03d}" / f"{index:05d}.png") as written:
                assert written.mode == "P" and written.getpalette() == voc_palette()  # inputs had none: DAVIS's
                ours = np.asarray(written)
            problem = compare_masks(ours, stack[number] > 0, stack[number]).problem(
                f"Object {object_id}'s mask on frame {index}")
            assert problem is None, problem
    overlap = (np.asarray(Image.open(out / "001" / "00005.png")) & np.asarray(Image.open(out / "002" / "00005.png")))
    assert overlap.any()  # unmerged


def test_davis_palette_is_the_voc_colour_map():
    palette = voc_palette()
    assert len(palette) == 768
    assert palette[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    assert palette[24:27] == [64, 0, 0] and palette[-3:] == [224, 224, 192]


# -- refusals: each is one sentence, before the model loads, and nothing is written --------------------------


def refused(capsys, arguments, tmp_path):
    status = main(["video", *map(str, arguments), "--checkpoint", str(tmp_path / "absent.pt")])
    assert status == 1
    return capsys.readouterr().err.strip()


@pytest.fixture
def clip(tmp_path) -> Path:
    folder = tmp_path / "clip"
    shutil.copytree(VIDEO, folder)
    return folder


def test_output_folder_must_not_be_an_input(clip, tmp_path, capsys):
    frames, masks = clip / "frames" / "clip", clip / "masks" / "clip"
    before = sorted(path.name for path in masks.iterdir())
    for output in (frames, masks, masks / "out"):
        message = refused(capsys, [frames, "--masks", masks, "-o", output], tmp_path)
        assert "is (or is inside) the input folder" in message and "choose another folder" in message
    assert sorted(path.name for path in masks.iterdir()) == before
    (tmp_path / "file.png").write_bytes(b"x")
    assert "is a file; name a folder" in refused(capsys, [frames, "--masks", masks, "-o", tmp_path / "file.png"],
                                                 tmp_path)


def test_masks_follow_the_official_rules(clip, tmp_path, capsys):
    frames, masks = clip / "frames" / "clip", clip / "masks" / "clip"
    out = tmp_path / "out"
    (masks / "00000.png").rename(masks / "00003.png")
    message = refused(capsys, [frames, "--masks", masks, "-o", out], tmp_path)
    assert message == (f"medsam2: error: There is no mask {masks / '00000.png'} for frame 00000; if an object "
                       "appears only in later frames, add --track-objects-appearing-later.")
    later = np.asarray(Image.open(masks / "00003.png")).copy()
    later[:5, :5] = 3
    Image.fromarray(later).save(masks / "00003.png")
    shutil.copy(VIDEO / "masks" / "clip" / "00000.png", masks / "00000.png")
    message = refused(capsys, [frames, "--masks", masks, "-o", out, "--use-all-masks"], tmp_path)
    assert "Object 3 appears in the mask of frame 00003 but not in that of frame 00000; add " \
           "--track-objects-appearing-later" in message
    Image.fromarray(np.zeros((72, 96), np.uint8)).save(masks / "00000.png")
    assert "holds no object (every pixel 0)" in refused(capsys, [frames, "--masks", masks, "-o", out], tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "00000.png")
    assert "is 10 x 10 pixels; the frames are 72 x 96" in refused(capsys, [frames, "--masks", masks, "-o", out],
                                                                  tmp_path)
    assert not out.exists()


def test_frames_are_checked(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    assert "holds no JPEG or PNG frames" in refused(capsys, [frames, "--masks", MASKS, "-o", tmp_path / "o"],
                                                    tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "a.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "a.png")
    assert "several frames named a" in refused(capsys, [frames, "--masks", MASKS, "-o", tmp_path / "o"], tmp_path)
    (frames / "a.png").unlink()
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(frames / "b.jpg")
    assert "differ in size (8 x 8 and 9 x 8 pixels)" in refused(capsys, [frames, "--masks", MASKS, "-o",
                                                                         tmp_path / "o"], tmp_path)


def test_a_video_file_without_pyav_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "av" else
                        find_spec(name, *args))
    video = tmp_path / "echo.mp4"
    video.write_bytes(b"not decoded")
    message = refused(capsys, [video, "--masks", MASKS, "-o", tmp_path / "o"], tmp_path)
    assert message == (f"medsam2: error: Reading echo.mp4 needs PyAV, the optional video extra: {VIDEO_EXTRA} (or "
                       "give a folder of JPEG frames).")


def test_a_video_file_is_decoded_with_pyav(tmp_path, capsys):
    av = pytest.importorskip("av")  # the video extra; the test extra installs it
    path = tmp_path / "cine.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for number in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 40 * number, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = read_frames(path)
    assert frames.names == ("00000", "00001", "00002", "00003") and frames.images.shape == (4, 32, 48, 3)
    assert [round(float(image.mean()) / 40) for image in frames.images] == [0, 1, 2, 3]  # lossy, in order
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video")
    message = refused(capsys, [broken, "--masks", MASKS, "-o", tmp_path / "o"], tmp_path)
    assert message.startswith(f"medsam2: error: Cannot decode the video {broken}: ")


def test_objects_appearing_later_are_tracked_from_their_first_mask(video_checkpoint, tmp_path, monkeypatch):
    """--track-objects-appearing-later: object 2's first mask is on frame 3, so frames 0-2 have no object 2;
    every frame gets a PNG. The official rule also skips empty masks and, without --use-all-masks, later ones."""
    masks = tmp_path / "masks"
    masks.mkdir()
    labels = REFERENCE["labels"]
    first = np.where(labels[0] == 1, 1, 0).astype(np.uint8)
    Image.fromarray(first).save(masks / "00000.png")
    Image.fromarray(labels[3]).save(masks / "00003.png")
    Image.fromarray(labels[6]).save(masks / "00006.png")  # not used: each object's first mask only
    out = tmp_path / "out"
    status, result = run_video(tmp_path, monkeypatch, [FRAMES, "--masks", masks, "-o", out,
                                                       "--track-objects-appearing-later",
                                                       *model_arguments(video_checkpoint)])
    assert status == 0 and result.object_ids == [1, 2] and result.frames == list(range(12))
    assert result.session.session(1).prompted_slices == [0] and result.session.session(2).prompted_slices == [3]
    written = [np.asarray(Image.open(out / f"{index:05d}.png")) for index in range(12)]
    assert all(not (frame == 2).any() for frame in written[:3])
    assert all((frame == 2).any() for frame in written[3:]) and all((frame == 1).any() for frame in written)
    np.testing.assert_array_equal(result.logits(1)[1], np.full((72, 96), -1024.0, np.float32))


def test_all_masks_prompt_and_an_object_missing_from_one_gets_an_empty_mask(video_checkpoint, tmp_path,
                                                                            monkeypatch):
    masks = tmp_path / "masks"
    masks.mkdir()
    labels = REFERENCE["labels"]
    shutil.copy(MASKS / "00000.png", masks / "00000.png")
    Image.fromarray(np.where(labels[5] == 1, 1, 0).astype(np.uint8)).save(masks / "00005.png")  # no object 2
    out = tmp_path / "out"
    status, result = run_video(tmp_path, monkeypatch, [FRAMES, "--masks", masks, "-o", out, "--use-all-masks",
                                                       *model_arguments(video_checkpoint)])
    assert status == 0
    assert [result.session.session(object_id).prompted_slices for object_id in (1, 2)] == [[0, 5], [0, 5]]
    frame5 = np.asarray(Image.open(out / "00005.png"))
    np.testing.assert_array_equal(frame5 == 1, labels[5] == 1)  # a mask prompt is its frame's answer
    assert not (frame5 == 2).any()  # the empty mask: object 2 absent there
    assert (np.asarray(Image.open(out / "00004.png")) == 2).any()


# -- session files: steps that name frames ---------------------------------------------------------------


def write_video_session(folder: Path, steps, **entries) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "session.json"
    path.write_text(json.dumps({"steps": steps, **entries}))
    return path


def first_frame_object_masks(folder: Path) -> list:
    """Steps giving each object of the first frame's label PNG as a mask PNG beside the session file."""
    labels = np.asarray(Image.open(MASKS / "00000.png"))
    steps = []
    for object_id in (1, 2):
        Image.fromarray((labels == object_id).astype(np.uint8)).save(folder / f"object{object_id}.png")
        steps.append({"frame": "00000", "mask": f"object{object_id}.png", "object": object_id})
    return steps


def test_a_session_file_tracks_the_objects_of_its_steps_as_the_masks_do(video_checkpoint, tmp_path, monkeypatch):
    """Masks on the first frame as session steps (frames by name), propagated forward: the same PNGs as the
    official first-frame run of --masks, every frame encoded once for both objects."""
    folder = tmp_path / "session"
    folder.mkdir()
    session = write_video_session(folder, first_frame_object_masks(folder) + [{"propagate": "forward"}])
    predictors = []
    build = cli.build_predictor
    monkeypatch.setattr(cli, "build_predictor", lambda *args, **kwargs: predictors.append(build(*args, **kwargs))
                        or predictors[-1])
    status = main(["video", str(FRAMES), "--prompts", str(session), "-o", str(tmp_path / "out"),
                   *model_arguments(video_checkpoint)])
    assert status == 0 and predictors[0].encoder_calls == 12
    status, _ = run_video(tmp_path, monkeypatch, [FRAMES, "--masks", MASKS, "-o", tmp_path / "masks_out",
                                                  *model_arguments(video_checkpoint)])
    assert status == 0
    for index in range(12):
        with Image.open(tmp_path / "out" / f"{index:05d}.png") as ours, \
                Image.open(tmp_path / "masks_out" / f"{index:05d}.png") as theirs:
            assert ours.getpalette() == voc_palette()  # no input palette: DAVIS's
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=f"frame {index}")


def test_a_session_file_with_boxes_and_a_correction_by_frame_index(video_checkpoint, tmp_path):
    """Frames named by index, a box, a later object, a correction after a propagation; a PNG per frame and
    per object with --per-object-png."""
    labels = REFERENCE["labels"]
    rows, columns = np.nonzero(labels[0] == 1)
    box = [int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1]
    rows, columns = np.nonzero(labels[4] == 2)
    later = [int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1]
    session = write_video_session(tmp_path / "s", [
        {"frame": 0, "box": box}, {"propagate": "forward"},
        {"frame": 4, "box": later, "object": 2}, {"frame": 8, "points": [[box[0] + 2, box[1] + 2]], "labels": [0]},
        {"propagate": "both"}])
    out = tmp_path / "out"
    assert main(["video", str(FRAMES), "--prompts", str(session), "-o", str(out), "--per-object-png",
                 *model_arguments(video_checkpoint)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["001", "002"]
    assert all(len(list((out / folder).iterdir())) == 12 for folder in ("001", "002"))
    assert np.asarray(Image.open(out / "002" / "00004.png")).any()


@pytest.mark.parametrize("steps, entries, expected", [
    ([{"frame": "00099", "box": [1, 1, 9, 9]}], {},
     "Step 1 of the session file: there is no frame named '00099'; the frames are 00000..00011 (12 frames)."),
    ([{"frame": 12, "box": [1, 1, 9, 9]}], {},
     "Step 1 of the session file: frame 12 is outside the clip, whose frames are numbered 0..11."),
    ([{"frame": 0, "box": [1, 1, 9, 9]}, {"frame": -1, "remove": True}], {},
     "Step 2 of the session file: frame -1 is outside the clip, whose frames are numbered 0..11."),
    ([{"frame": 1.5, "box": [1, 1, 9, 9]}], {},
     "Step 1 of the session file: frame must be a frame's name or its index from 0; got 1.5."),
    ([{"slice": 3, "box": [1, 1, 9, 9]}], {},
     'Step 1 of the session file names a slice; the steps of a video session file name a "frame" (its name, or '
     "its index from 0)."),
    ([{"box": [1, 1, 9, 9]}], {},
     'Step 1 of the session file needs a frame (its name, or its index from 0), or "propagate".'),
    ([{"frame": 0, "box": [1, 1, 9, 9], "object": 0}], {},
     "Step 1 of the session file: object must be a label value 1..255; got 0."),
    ([{"frame": 0, "box": [1, 1, 200, 9]}, {"propagate": "forward"}], {},
     "Step 1: The box (1, 1) - (200, 9) reaches outside the slice, whose pixels span x 0..96 and y 0..72."),
    ([{"propagate": "forward"}, {"frame": 0, "box": [1, 1, 9, 9]}], {},
     "Step 1: Give a box, points or a mask on a slice before propagating."),
    ([{"frame": 0, "box": [1, 1, 9, 9]}], {"window": "0 255"},
     "has window, which describe a volume; a video session file holds only steps (the command line gives the "
     "options)."),
])
def test_bad_frames_in_a_session_file_are_one_sentence_and_nothing_is_written(steps, entries, expected, tmp_path,
                                                                             capsys):
    session = write_video_session(tmp_path / "s", steps, **entries)
    out = tmp_path / "out"
    message = refused(capsys, [FRAMES, "--prompts", session, "-o", out], tmp_path)
    assert message.startswith("medsam2: error: ") and message.endswith(expected) and "\n" not in message
    assert not out.exists()


def test_a_session_file_cannot_be_mixed_with_the_mask_options_nor_have_its_masks_replaced(tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    steps = first_frame_object_masks(folder)
    Image.open(folder / "object1.png").save(folder / "00000.png")
    steps[0]["mask"] = "00000.png"
    session = write_video_session(folder, steps + [{"propagate": "forward"}])
    before = (folder / "00000.png").read_bytes()
    message = refused(capsys, [FRAMES, "--prompts", session, "-o", folder], tmp_path)
    assert message == (f"medsam2: error: Cannot write the PNG of frame 00000 to {folder / '00000.png'}: that is a "
                       "mask of the session file, which it would replace; choose another name.")
    assert (folder / "00000.png").read_bytes() == before
    message = refused(capsys, [FRAMES, "--prompts", session, "-o", tmp_path / "out", "--use-all-masks"], tmp_path)
    assert "choose among the masks of --masks; a session file (--prompts) names its prompts itself" in message
    with pytest.raises(SystemExit):  # argparse: one of --masks and --prompts, not both
        main(["video", str(FRAMES), "--prompts", str(session), "--masks", str(MASKS), "-o", str(tmp_path / "o")])
    assert "not allowed with argument" in capsys.readouterr().err
