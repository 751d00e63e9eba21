"""Interactive sessions against the official video predictor's outputs (sessions/ fixtures, Testing/Data/session_*)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedSAM2Lib.apps import cli
from MedSAM2Lib.apps.cli import main
from MedSAM2Lib.inference.predictor import FeatureCache, PromptError, VolumePredictor
from MedSAM2Lib.inference.session import Session
from MedSAM2Lib.inference.session_file import (SessionFileError, read_session, read_session_file, run_steps,
                                               session_options, write_session_file)
from MedSAM2Lib.slicer_glue.geometry import StackGeometry

from MedSAM2Lib.inference.reference_check import LOGIT_TOLERANCE as TOLERANCE

from conftest import DATA, reference_masks, relative_error

EXACT = ["--precision", "float32", "--no-early-stop"]  # the command line's defaults are the fast modes
BOX = [104, 70, 183, 131]
KEYFRAME_BOX = [108, 73, 179, 128]


def reference(name: str):
    return np.load(DATA / f"session_{name}.npz")


def masks(name: str):
    return {int(key[5:]): reference(name)[key] for key in reference(name).files if key.startswith("mask_")}


def scenario_steps(name: str):
    """Each scenario as a user gives it to one session: the official calls of both directions, merged (a
    correction goes to the direction that tracked its slice)."""
    given = masks(name)
    first = {
        "box_and_points": [{"slice": 12, "box": BOX, "points": [[143, 100], [60, 40]], "labels": [1, 0]}],
        "points_only": [{"slice": 12, "points": [[143, 100], [130, 110], [220, 190]], "labels": [1, 1, 0]}],
        "two_boxes": [{"slice": 8, "box": KEYFRAME_BOX}, {"slice": 16, "box": KEYFRAME_BOX}],
        "mask_on_key": [{"slice": 12, "mask": given.get(12)}],
        "correct_tracked_with_points": [{"slice": 12, "box": BOX}],
        "correct_tracked_with_mask": [{"slice": 12, "box": BOX}],
    }[name]
    steps = first + [{"propagate": "both"}]
    if name == "correct_tracked_with_points":
        steps += [{"slice": 17, "points": [[143, 100], [40, 200]], "labels": [1, 0]},
                  {"slice": 7, "points": [[200, 40]], "labels": [0]}, {"propagate": "both"}]
    if name == "correct_tracked_with_mask":
        steps += [{"slice": 17, "mask": given[17]}, {"slice": 7, "mask": given[7]}, {"propagate": "both"}]
    return steps


def propagate_calls(name: str):
    """[(direction prefix, call number)] of the reference's propagate calls, grouped by our propagate steps."""
    calls = json.loads(str(reference(name)["calls_json"]))
    numbers = [i for i, call in enumerate(calls["fwd"]) if call["call"] == "propagate_in_video"]
    return [[("fwd", i), ("rev", i)] for i in numbers]


def slice_logits(low_res: np.ndarray, shape) -> np.ndarray:
    return F.interpolate(torch.from_numpy(low_res)[None, None], size=tuple(shape), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def check_against_reference(session: Session, ref, prefix: str, call: int, yielded):
    frames = [int(f) for f in ref[f"{prefix}_call{call}_frames"]]
    for k, index in enumerate(frames):
        expected = slice_logits(ref[f"{prefix}_call{call}_lowres_logits"][k], session.volume.shape[1:])
        result = session.results[index]
        assert relative_error(result.logits, expected) <= TOLERANCE, (prefix, call, index)
        assert result.object_score == pytest.approx(float(ref[f"{prefix}_call{call}_object_scores"][k]), abs=1e-4)
    # Yield order: the reference's order, restricted to the slices whose output is new.
    ours = [i for i in yielded if i in frames]
    assert ours == [i for i in frames if i in ours]


def give(session: Session, step: dict):
    """A prompt step of a session file, given through the Python API."""
    return session.add_prompt(step["slice"], **{key: value for key, value in step.items() if key != "slice"})


SCENARIOS = ["box_and_points", "points_only", "two_boxes", "mask_on_key", "correct_tracked_with_points",
             "correct_tracked_with_mask"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_matches_official_video_predictor(name, tiny_model, input_volume):
    volume = input_volume[0]
    ref = reference(name)
    session = Session(VolumePredictor(tiny_model), volume)
    groups = iter(propagate_calls(name))
    for step in scenario_steps(name):
        if "propagate" in step:
            yielded = [result.index for result in session.propagate(step["propagate"])]
            for prefix, call in next(groups):
                check_against_reference(session, ref, prefix, call, yielded)
        else:
            give(session, step)
    union = np.zeros(volume.shape, dtype=np.uint8)
    for index, result in session.results.items():
        union[index] = result.mask
    reference_masks(f"session_{name}").check(union, "The union", union=True)
    reference_masks(f"session_{name}").check(session.mask())


def test_prompt_results_are_the_reference_add_call_outputs(tiny_model, input_volume):
    """What add_prompt returns is the slice's output at once (the add call's return value in the reference)."""
    volume = input_volume[0]
    ref = reference("two_boxes")
    session = Session(VolumePredictor(tiny_model), volume)
    session.add_prompt(8, box=KEYFRAME_BOX)
    keyframe = session.add_prompt(16, box=KEYFRAME_BOX)
    assert relative_error(keyframe.logits, ref["rev_call1_logits"]) <= TOLERANCE


def test_correction_restarts_only_its_direction_after_the_corrected_slice(tiny_model, input_volume, monkeypatch):
    volume = input_volume[0]
    predictor = VolumePredictor(tiny_model)
    session = Session(predictor, volume, FeatureCache(volume))
    session.add_prompt(12, box=BOX)
    list(session.propagate())
    tracked = []
    segment = tiny_model.segment
    monkeypatch.setattr(tiny_model, "segment", lambda *a, **k: tracked.append(1) or segment(*a, **k))
    encoder_calls = predictor.encoder_calls
    session.add_prompt(17, points=[[143, 100], [40, 200]], labels=[1, 0])
    yielded = [result.index for result in session.propagate()]
    assert yielded == [17, 18, 19, 20, 21, 22, 23]  # the backward direction is not touched
    assert len(tracked) == 1 + 6  # the correction, then slices 18..23 (a full run tracks 23 slices)
    assert predictor.encoder_calls == encoder_calls  # every slice's features are in the cache
    assert [result.index for result in session.propagate()] == []  # nothing changed since


def test_restart_without_cache_encodes_only_recomputed_slices(tiny_model, input_volume):
    volume = input_volume[0]
    predictor = VolumePredictor(tiny_model)
    session = Session(predictor, volume, FeatureCache(volume, max_slices=1))
    session.add_prompt(12, box=BOX)
    list(session.propagate())
    before = predictor.encoder_calls
    session.add_prompt(7, points=[[200, 40]], labels=[0])
    list(session.propagate("backward"))
    assert predictor.encoder_calls - before == 1 + 7  # slice 7 once (decode and memory), then 6..0


def test_points_added_to_the_key_slice_after_propagation_give_box_and_points(tiny_model, input_volume):
    """The deliberate difference from the official predictor (sessions/README.md)."""
    volume = input_volume[0]
    ref = reference("box_and_points")
    session = Session(VolumePredictor(tiny_model), volume)
    session.add_prompt(12, box=BOX)
    list(session.propagate())
    session.add_prompt(12, points=[[143, 100], [60, 40]], labels=[1, 0], add=True)
    yielded = [result.index for result in session.propagate()]
    assert yielded[0] == 12 and len(yielded) == volume.shape[0]  # everything is recomputed
    check_against_reference(session, ref, "fwd", 1, yielded)
    check_against_reference(session, ref, "rev", 1, yielded)
    reference_masks("session_box_and_points").check(session.mask())


def test_box_predictor_is_the_one_box_session(tiny_model, input_volume):
    volume, key_slice, box = input_volume
    predictor = VolumePredictor(tiny_model)
    plain = [(r.index, r.logits) for r in predictor.propagate(volume, key_slice, box)]
    session = Session(predictor, volume)
    session.add_prompt(key_slice, box=box)
    assert [(r.index, r.logits.tobytes()) for r in session.propagate()] == [(i, l.tobytes()) for i, l in plain]


def test_remove_and_reset(tiny_model, input_volume):
    volume = input_volume[0]
    session = Session(VolumePredictor(tiny_model), volume)
    session.add_prompt(12, box=BOX)
    list(session.propagate())
    session.add_prompt(17, points=[[143, 100]], labels=[1])
    assert session.prompted_slices == [12, 17] and session.tracked_by(17) == "forward"
    session.remove_prompt(17)
    assert session.prompted_slices == [12]
    assert [r.index for r in session.propagate()] == list(range(17, 24))  # 17 is tracked again, and after it
    with pytest.raises(PromptError, match="no prompt"):
        session.remove_prompt(3)
    session.reset()
    assert session.prompted_slices == [] and len(session.results) == 0 and session.steps == []
    with pytest.raises(PromptError, match="before propagating"):
        list(session.propagate())


@pytest.mark.parametrize("prompt, message", [
    ({"slice": 30, "box": BOX}, "outside the volume"),
    ({"slice": 12}, "Give a box, points or a mask"),
    ({"slice": 12, "points": [[10, 10]], "labels": [1, 0]}, "one label each"),
    ({"slice": 12, "points": [[300, 10]], "labels": [1]}, "outside the slice"),
    ({"slice": 12, "points": [[10, 10]], "labels": [2]}, "1 \\(object\\) or 0"),
    ({"slice": 12, "box": [5, 5, 5, 9]}, "no area"),
    ({"slice": 12, "box": [5, 5, 1, 1]}, "corners swapped"),
    ({"slice": 12, "points": [[10, 10]], "labels": [0.9]}, "1 \\(object\\) or 0 \\(background\\); got \\[0.9\\]"),
    ({"slice": 12, "points": [[10, 10]], "labels": [True]}, "1 \\(object\\) or 0 \\(background\\); got \\[True\\]"),
    ({"slice": 12, "points": [[10, 10]], "labels": ["1"]}, "1 \\(object\\) or 0 \\(background\\); got \\['1'\\]"),
    ({"slice": 12, "mask": np.zeros((3, 3))}, "shape"),
    ({"slice": 12, "mask": np.zeros((224, 256)), "box": BOX}, "one or the other"),
])
def test_bad_prompts_are_refused_with_a_sentence(prompt, message, tiny_model, input_volume):
    session = Session(VolumePredictor(tiny_model), input_volume[0])
    with pytest.raises(PromptError, match=message):
        give(session, prompt)


def test_a_point_label_other_than_0_or_1_is_refused_not_truncated(tiny_model, tmp_path, monkeypatch, capsys):
    """0.9 used to become label 0 (background) through int(); on the command line, in a session file and in the
    predictor's own prompt encoding."""
    with pytest.raises(PromptError, match="1 \\(object\\) or 0 \\(background\\); got \\[1, 0.9\\]"):
        VolumePredictor(tiny_model).model_points(None, [[5, 5], [6, 6]], [1, 0.9], (16, 16))

    def no_model(args, saved_options=None):
        raise AssertionError("the model was loaded before the prompts were checked")

    monkeypatch.setattr(cli, "build_predictor", no_model)
    np.savez(tmp_path / "volume.npz", imgs=np.zeros((4, 16, 16), np.uint8))
    session_file = tmp_path / "session.json"
    session_file.write_text('{"steps": [{"slice": 1, "points": [[5, 5]], "labels": [0.9]}, {"propagate": "both"}]}')
    segment = ["segment", str(tmp_path / "volume.npz"), "-o", str(tmp_path / "mask.npz")]
    for prompt, step in ((["--slice", "1", "--point", "5", "5", "0.9"], ""), (["--prompts", str(session_file)], "Step 1: ")):
        assert main(segment + prompt) == 1
        assert capsys.readouterr().err == (f"medsam2: error: {step}Point labels must be 1 (object) or 0 (background); "
                                           "got [0.9].\n")
    assert not (tmp_path / "mask.npz").exists()


def test_propagation_range_must_include_the_first_prompted_slice(tiny_model, input_volume):
    session = Session(VolumePredictor(tiny_model), input_volume[0])
    session.add_prompt(12, box=BOX)
    with pytest.raises(PromptError, match="include the first prompted slice 12"):
        list(session.propagate(slice_range=(14, 20)))


# -- session files and the command line ---------------------------------------------------------------------


def write_scenario_file(folder, name, **entries):
    """The official scenario as a session file; entries: its optional "stack", "window", "size_ijk"."""
    steps = []
    for step in scenario_steps(name):
        if isinstance(step.get("mask"), np.ndarray):
            mask_file = f"mask{step['slice']}.npy"
            np.save(folder / mask_file, step["mask"])
            step = dict(step, mask=mask_file)
        steps.append(step)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({**entries, "steps": steps}))
    return path


@pytest.mark.parametrize("name", ["correct_tracked_with_mask", "two_boxes"])
def test_cli_prompts_file_gives_the_official_mask(name, tmp_path, checkpoints, input_volume):
    volume = input_volume[0]
    np.savez(tmp_path / "volume.npz", imgs=volume)
    prompts = write_scenario_file(tmp_path, name)
    out = tmp_path / "mask.npz"
    status = main(["segment", str(tmp_path / "volume.npz"), "--prompts", str(prompts), "-o", str(out),
                   *EXACT, "--checkpoint", str(checkpoints["tiny"]),
                   "--config", str(DATA / "medsam2_tiny_test.yaml")])
    assert status == 0
    reference_masks(f"session_{name}").check(np.load(out)["mask"])


def test_cli_points_with_a_box(tmp_path, checkpoints, input_volume):
    volume = input_volume[0]
    np.savez(tmp_path / "volume.npz", imgs=volume)
    out = tmp_path / "mask.npz"
    status = main(["segment", str(tmp_path / "volume.npz"), "--slice", "12", "--box", *map(str, BOX),
                   "--point", "143", "100", "1", "--point", "60", "40", "0", "-o", str(out),
                   *EXACT, "--checkpoint", str(checkpoints["tiny"]),
                   "--config", str(DATA / "medsam2_tiny_test.yaml")])
    assert status == 0
    reference_masks("session_box_and_points").check(np.load(out)["mask"])


def test_session_file_round_trip(tmp_path, tiny_model, input_volume):
    volume = input_volume[0]
    session = Session(VolumePredictor(tiny_model), volume)
    run_steps(session, read_session_file(write_scenario_file(tmp_path, "correct_tracked_with_mask")))
    saved = tmp_path / "saved" / "session.json"
    saved.parent.mkdir()
    write_session_file(saved, session.steps, options=session_options(session))
    assert read_session(saved).options == {"precision": "float32", "early_stop": 5, "fill_holes": True,
                                           "keep_largest_component": True}
    again = Session(VolumePredictor(tiny_model), volume)
    run_steps(again, read_session_file(saved))
    reference_masks("session_correct_tracked_with_mask").check(again.mask())
    assert sorted(p.name for p in saved.parent.iterdir()) == [
        "session.json", "session.step3.slice17.npy", "session.step4.slice7.npy"]


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ('{"steps": []}', "at least one step"),
    ('{"steps": [{"slice": "x", "box": [1, 2, 3, 4]}]}', "Step 1 .* needs a slice number"),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}, {"propagate": "sideways"}]}', "Step 2 .* propagate must be"),
    ('{"steps": [{"slice": 1, "colour": 3, "box": [1, 2, 3, 4]}]}', "Step 1 .* unknown keys: colour"),
    ('{"steps": [{"slice": 1}]}', "Step 1 .* no box, points or mask"),
    ('{"steps": [{"slice": 1, "mask": "missing.png"}]}', "Step 1 .* cannot read the mask"),
    ('{"steps": [{"propagate": "both", "range": [3]}]}', "Step 1 .* range must be two slice numbers"),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}], "colour": 3}', "unknown entries: colour"),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}], "stack": {"slice_axis": "K"}}', "the stack must be an object"),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}], "stack": {"slice_axis": "K", "row_axis": "K", "column_axis": "I", '
     '"flip_rows": false, "flip_columns": false}}', "must be I, J and K"),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}], "window": 200}', "window must be text"),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}], "size_ijk": [3, 4]}', "size_ijk must be three voxel counts"),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}], "options": {"precision": "auto"}}',
     'option precision must be "float32" or "bfloat16"; got \'auto\''),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}], "options": {"early_stop": 0}}', "early_stop must be a slice count"),
    ('{"steps": [{"slice": 1, "box": [1, 2, 3, 4]}], "options": {"speed": 1}}', "unknown option 'speed'"),
])
def test_bad_session_files_name_the_step(content, message, tmp_path):
    path = tmp_path / "session.json"
    path.write_text(content)
    with pytest.raises(SessionFileError, match=message):
        read_session_file(path)


def test_a_step_the_session_refuses_is_named(tmp_path, tiny_model, input_volume):
    path = tmp_path / "session.json"
    path.write_text('{"steps": [{"slice": 12, "box": [104, 70, 183, 131]}, {"slice": 40, "box": [1, 1, 9, 9]}]}')
    with pytest.raises(SessionFileError, match="Step 2: Slice 40 is outside the volume"):
        run_steps(Session(VolumePredictor(tiny_model), input_volume[0]), read_session_file(path))



def test_batch_session_column_beside_a_box_row(tmp_path, checkpoints, input_volume, monkeypatch):
    """A session row and a box row on one scan, in one pass: each row's own mask (the official session's for the
    session row), then composed into one label map (overlaps by logit: Testing/test_segment_objects.py)."""
    from MedSAM2Lib.apps import batch

    composed = []
    compose = batch.compose_labels
    monkeypatch.setattr(batch, "compose_labels", lambda shape, regions: composed.append(regions) or compose(
        shape, regions))
    volume = input_volume[0]
    images = tmp_path / "images"
    images.mkdir()
    np.savez(images / "case.npz", imgs=volume)
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    session_file = write_scenario_file(sessions, "two_boxes")
    table = tmp_path / "prompts.csv"
    table.write_text("image,slice,x0,y0,x1,y1,session,label\n"
                     f"case.npz,,,,,,sessions/{session_file.name},1\n"
                     "case.npz,3,0,0,20,20,,2\n")
    status = main(["batch", str(table), "--images", str(images), "--out", str(tmp_path / "out"),
                   *EXACT, "--checkpoint", str(checkpoints["tiny"]),
                   "--config", str(DATA / "medsam2_tiny_test.yaml")])
    assert status == 0
    (first_label, first), (second_label, second) = composed[0]
    own = np.zeros(volume.shape, bool)
    own[first.box] = first.values
    assert (first_label, second_label) == (1, 2) and second.voxels > 0
    reference_masks("session_two_boxes").check(own)
    labels = np.load(tmp_path / "out" / "case.npz")["mask"]
    np.testing.assert_array_equal(labels, compose(volume.shape, composed[0])[0])


@pytest.mark.parametrize("row, message", [
    ("case.npz,12,1,1,9,9,s.json", "leave slice, x0, y0, x1, y1 empty"),
    ("case.npz,,,,,,missing.json", "Cannot read the session file"),
])
def test_batch_session_rows_that_cannot_be_used(row, message, tmp_path):
    from MedSAM2Lib.apps.batch import read_prompt_table

    (tmp_path / "s.json").write_text('{"steps": [{"slice": 1, "box": [1, 1, 9, 9]}, {"propagate": "both"}]}')
    table = tmp_path / "prompts.csv"
    table.write_text(f"image,slice,x0,y0,x1,y1,session\n{row}\n")
    prompts, failures = read_prompt_table(table, tmp_path)
    assert prompts == [] and message in failures[0].message


# A sagittal-like stack: slices along I, rows along K from the top, columns along J.
SAGITTAL = StackGeometry(slice_axis=0, row_axis=2, column_axis=1, flip_rows=True, flip_columns=False)


def test_batch_session_row_on_the_stack_its_file_names(tmp_path, checkpoints, input_volume):
    """A session file made on slices along I of a scan: the row's mask is the official one, on the scan's grid."""
    images = tmp_path / "images"
    images.mkdir()
    np.savez(images / "case.npz", imgs=SAGITTAL.from_stack(input_volume[0]))  # stored (K, J, I)
    session_file = write_scenario_file(tmp_path, "two_boxes", stack=SAGITTAL.as_json(), window="none")
    table = tmp_path / "prompts.csv"
    table.write_text(f"image,session\ncase.npz,{session_file.name}\n")
    status = main(["batch", str(table), "--images", str(images), "--out", str(tmp_path / "out"), "--ct-preset",
                   "lung", *EXACT, "--checkpoint", str(checkpoints["tiny"]),  # the file's window wins over the default
                   "--config", str(DATA / "medsam2_tiny_test.yaml")])
    assert status == 0
    reference_masks("session_two_boxes").check(SAGITTAL.to_stack(np.load(tmp_path / "out" / "case.npz")["mask"]))


@pytest.mark.parametrize("entries, options, message", [
    ({"window": "0 200"}, ["--window", "0", "100"], "made on intensities windowed with 0 200, but the window option "
                                                    "asks for 0 100"),
    ({"size_ijk": [256, 224, 25]}, [], "made on a 256 x 224 x 25 volume .* this one is 256 x 224 x 24"),
])
def test_segment_refuses_a_session_file_made_on_other_images(entries, options, message, tmp_path, input_volume,
                                                              capsys):
    np.savez(tmp_path / "volume.npz", imgs=input_volume[0])
    prompts = write_scenario_file(tmp_path, "two_boxes", **entries)
    status = main(["segment", str(tmp_path / "volume.npz"), "--prompts", str(prompts), "-o", str(tmp_path / "m.npz"),
                   "--checkpoint", str(tmp_path / "no-model-needed.pt"), *options])
    assert status == 1
    assert re.search(message, capsys.readouterr().err) and not (tmp_path / "m.npz").exists()


def test_a_batch_row_window_other_than_its_session_file_s_is_refused(tmp_path):
    from MedSAM2Lib.apps.batch import read_prompt_table

    (tmp_path / "s.json").write_text('{"window": "0 200", "steps": [{"slice": 1, "box": [1, 1, 9, 9]}]}')
    table = tmp_path / "prompts.csv"
    table.write_text("image,session,window\ncase.npz,s.json,0 100\ncase.npz,s.json,\ncase.npz,s.json,0 200\n")
    prompts, failures = read_prompt_table(table, tmp_path)
    assert "the row's window asks for 0 100" in failures[0].message
    assert [str(prompt.window) for prompt in prompts] == ["0 200", "0 200"]


def test_session_files_are_read_and_written_without_torch(tmp_path):
    script = textwrap.dedent('''
        import sys
        sys.modules["torch"] = None  # "import torch" fails
        from MedSAM2Lib.inference.session_file import read_session, write_session_file
        document = read_session(sys.argv[1])
        write_session_file(sys.argv[2], document.steps, document.stack, document.window, document.size_ijk)
        copy = read_session(sys.argv[2])
        print(copy.stack == document.stack, copy.window == document.window, copy.size_ijk == document.size_ijk,
              bool((copy.steps[1]["mask"] == document.steps[1]["mask"]).all()))
    ''')
    np.save(tmp_path / "mask.npy", np.eye(8, dtype=bool))
    source = tmp_path / "session.json"
    source.write_text(json.dumps({"stack": SAGITTAL.as_json(), "window": "0 200", "size_ijk": [8, 9, 10], "steps": [
        {"slice": 1, "box": [1, 1, 6, 6]}, {"slice": 2, "mask": "mask.npy"}, {"propagate": "both"}]}))
    result = subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / "copy.json")],
                            capture_output=True, text=True, cwd=DATA.parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"] * 4


def test_the_command_line_names_options_and_a_session_file_fills_in_the_rest():
    from MedSAM2Lib.apps.cli import build_parser, computing_options

    def options(*arguments, saved=None):
        args = build_parser().parse_args(["segment", "scan.nii.gz", "-o", "mask.nii.gz", *arguments])
        return computing_options(args, saved or {})

    assert options() == {"precision": "auto", "early_stop": 5, "fill_holes": True, "keep_largest_component": True}
    saved = {"precision": "float32", "early_stop": None, "fill_holes": False, "keep_largest_component": False}
    assert options(saved=saved) == saved
    assert options("--precision", "bfloat16", "--early-stop", "3", "--no-fill-holes", saved=saved) == {
        "precision": "bfloat16", "early_stop": 3, "fill_holes": False, "keep_largest_component": False}
    assert options("--no-early-stop", saved={"early_stop": 7})["early_stop"] is None
    assert options(saved={"early_stop": 7})["early_stop"] == 7
