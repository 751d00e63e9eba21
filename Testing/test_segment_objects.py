"""Several lesions of one scan in one pass: ``medsam2 segment`` with a session file naming objects, and
``medsam2 batch`` rows of one scan with different labels. Where the lesions do not overlap, each keeps exactly
the mask of its separate run; where they overlap, the higher logit wins (the official non-overlap rule)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSAM2Lib.apps import cli
from MedSAM2Lib.apps.batch import BatchRunner, read_prompt_table
from MedSAM2Lib.apps.cli import main
from MedSAM2Lib.inference.objects import Region, compose_labels
from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.inference.session import Session

from conftest import DATA

VOLUME = DATA / "input_volume.npz"
LESION = [104, 70, 183, 131]  # the fixture's box, on slice 12
FAR = [10, 150, 70, 210]  # away from it, on slice 10
OVERLAPPING = [130, 90, 200, 150]  # overlaps the fixture's box, on slice 13


@pytest.fixture
def model_arguments(checkpoints):
    return ["--checkpoint", str(checkpoints["tiny"]), "--config", str(DATA / "medsam2_tiny_test.yaml"),
            "--precision", "float32"]


@pytest.fixture
def predictors(monkeypatch):
    """The predictors ``segment`` builds (to count their encoder calls)."""
    made = []
    build = cli.build_predictor

    def build_and_keep(*args, **kwargs):
        made.append(build(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(cli, "build_predictor", build_and_keep)
    return made


def alone_region(predictor, volume, key_slice, box) -> Region:
    """The Region (mask and logits) of a box propagated alone, without early stop."""
    session = Session(predictor, volume, early_stop=None)
    session.add_prompt(key_slice, box=box)
    list(session.propagate())
    mask = session.mask()
    logits = np.stack([session.results[index].logits for index in range(volume.shape[0])])
    return Region.of(mask, logits[Region.of(mask).box])


def segment(tmp_path, name, steps, model_arguments):
    session = tmp_path / f"{name}.json"
    session.write_text(json.dumps({"steps": steps}))
    output = tmp_path / f"{name}.npz"
    assert main(["segment", str(VOLUME), "--prompts", str(session), "-o", str(output)] + model_arguments) == 0
    return np.load(output)["mask"]


def object_logits(tiny_model, steps):
    """(D, H, W) float32 logits of one object's session run alone in Python (-1024 where not computed)."""
    volume = np.load(VOLUME)["imgs"]
    session = Session(VolumePredictor(tiny_model, precision="float32"), volume)
    for step in steps:
        if "propagate" in step:
            list(session.propagate(step["propagate"]))
        else:
            session.add_prompt(step["slice"], box=step["box"])
    logits = np.full(volume.shape, -1024.0, np.float32)
    for index, result in session.results.items():
        logits[index] = result.logits
    return logits


@pytest.mark.parametrize("second_box, second_slice", [(FAR, 10), (OVERLAPPING, 13)])
def test_objects_of_one_session_file_are_their_separate_runs_in_one_pass(
        second_box, second_slice, tmp_path, model_arguments, predictors, tiny_model, capsys):
    first = [{"slice": 12, "box": LESION}]
    second = [{"slice": second_slice, "box": second_box}]
    propagate = [{"propagate": "both"}]
    alone = [segment(tmp_path, "one", first + propagate, model_arguments),
             segment(tmp_path, "three", second + propagate, model_arguments)]
    depth = alone[0].shape[0]
    assert [predictor.encoder_calls for predictor in predictors] == [depth, depth]
    capsys.readouterr()

    labels = segment(tmp_path, "both", first + [dict(second[0], object=3)] + propagate, model_arguments)
    assert predictors[-1].encoder_calls == depth  # each slice encoded once for both objects
    assert "(object 1: " in capsys.readouterr().out
    one, three = (mask.astype(bool) for mask in alone)
    assert one.any() and three.any() and set(np.unique(labels)) == {0, 1, 3}
    np.testing.assert_array_equal(labels[one & ~three], 1)
    np.testing.assert_array_equal(labels[three & ~one], 3)
    np.testing.assert_array_equal(labels[~one & ~three], 0)
    assert (one & ~three).sum() > 1000 and (three & ~one).sum() > 1000
    # Where both lesions hold a voxel (the tiny random model's masks are large), the higher logit wins it (the
    # first object on a tie).
    overlap = one & three
    assert overlap.sum() > 1000
    logits_one, logits_three = object_logits(tiny_model, first + propagate), object_logits(tiny_model, second + propagate)
    expected = np.where(logits_one >= logits_three, 1, 3)
    np.testing.assert_array_equal(labels[overlap], expected[overlap])
    assert {1, 3} <= set(np.unique(labels[overlap]))  # both win some


def test_compose_labels_gives_each_voxel_to_the_highest_logit_and_merges_equal_labels():
    first, second, third = (np.zeros((1, 4, 4), bool) for _ in range(3))
    first[0, 0:2, 0:2] = True
    second[0, 1:3, 1:3] = True  # overlaps the first at (1, 1)
    third[0, 2:4, 2:4] = True  # same label as the second: shares (2, 2) without losing it
    logits = np.arange(16, dtype=np.float32).reshape(1, 4, 4)

    def region(mask, scale):
        box = Region.of(mask).box
        return Region.of(mask, scale * logits[box])

    labels, lost = compose_labels((1, 4, 4), [(5, region(first, 1)), (2, region(second, 2)), (2, region(third, 1))])
    np.testing.assert_array_equal(labels[0], [[5, 5, 0, 0], [5, 2, 2, 0], [0, 2, 2, 2], [0, 0, 2, 2]])
    assert lost == [1, 0, 0] and labels.dtype == np.uint8
    tie, _ = compose_labels((1, 4, 4), [(5, region(first, 0)), (2, region(second, 0))])
    assert tie[0, 1, 1] == 5  # a tie: the first
    assert Region.of(np.zeros((2, 3, 3))).voxels == 0


def test_batch_rows_of_one_scan_run_in_one_pass(tmp_path, tiny_model):
    """Rows of one scan and window with different labels: one pass, each slice encoded once; each row reported,
    and the label map equals the separate runs' masks composed by the overlap rule."""
    images = tmp_path / "images"
    images.mkdir()
    volume = np.load(VOLUME)["imgs"][6:18]
    np.savez(images / "scan.npz", imgs=volume)
    table = tmp_path / "prompts.csv"
    table.write_text("image,slice,x0,y0,x1,y1,label\n"
                     "scan.npz,6,104,70,183,131,1\n"
                     "scan.npz,4,10,150,70,210,2\n"
                     "scan.npz,7,130,90,200,150,3\n")
    prompts, bad = read_prompt_table(table, images)
    assert not bad
    predictor = VolumePredictor(tiny_model, precision="float32")
    outcomes = BatchRunner(lambda: predictor, images, tmp_path / "out").run(prompts)
    assert predictor.encoder_calls == volume.shape[0]
    assert [(outcome.row, outcome.label, outcome.status) for outcome in outcomes] == [
        (2, 1, "ok"), (3, 2, "ok"), (4, 3, "ok")]
    labels = np.load(tmp_path / "out" / "scan.npz")["mask"]

    regions = [(prompt.label, alone_region(VolumePredictor(tiny_model, precision="float32"), volume,
                                           prompt.key_slice, prompt.box)) for prompt in prompts]
    assert [(outcome.voxels, outcome.slices) for outcome in outcomes] == [
        (region.voxels, region.slices) for _, region in regions]
    expected, lost = compose_labels(volume.shape, regions)
    np.testing.assert_array_equal(labels, expected)
    assert [outcome.overlap_voxels for outcome in outcomes] == lost and sum(lost) > 0
    assert len({outcome.seconds for outcome in outcomes}) == 1  # one pass: its time is each row's


@pytest.mark.parametrize("step, expected", [
    ({"slice": 12, "box": LESION, "object": 256}, "Step 2 of the session file: object must be a label value 1..255; "
                                                  "got 256."),
    ({"slice": 12, "box": LESION, "object": "2"}, "Step 2 of the session file: object must be a label value 1..255; "
                                                  "got '2'."),
    ({"slice": 12, "remove": True, "object": True}, "Step 2 of the session file: object must be a label value "
                                                    "1..255; got True."),
    ({"propagate": "both", "object": 2}, "Step 2 of the session file propagates and cannot also have object."),
    ({"slice": 40, "box": LESION, "object": 2}, "Step 2: Slice 40 is outside the volume, which has slices 0..23."),
])
def test_bad_objects_in_a_session_file_are_refused_before_the_model_loads(step, expected, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setattr(cli, "build_predictor", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    session = tmp_path / "session.json"
    session.write_text(json.dumps({"steps": [{"slice": 12, "box": LESION}, step, {"propagate": "both"}]}))
    assert main(["segment", str(VOLUME), "--prompts", str(session), "-o", str(tmp_path / "m.npz")]) == 1
    assert capsys.readouterr().err == f"medsam2: error: {expected}\n"
    assert not (tmp_path / "m.npz").exists()


def test_an_object_prompted_after_a_propagation_is_propagated_by_the_next_one_only(tmp_path):
    """Each object's steps: its prompts, and the propagations while it has one."""
    from MedSAM2Lib.inference.session_file import object_steps

    box, propagate = {"slice": 12, "box": LESION}, {"propagate": "both"}
    later = {"slice": 3, "box": FAR, "object": 2}
    removal = {"slice": 12, "remove": True}
    assert object_steps([box, propagate, later, propagate, removal, propagate]) == {
        1: [(1, box), (2, propagate), (4, propagate), (5, removal)],
        2: [(3, {"slice": 3, "box": FAR}), (4, propagate), (6, propagate)]}


def test_a_session_runner_of_one_object_refuses_steps_of_another():
    from MedSAM2Lib.inference.session_file import SessionFileError, run_steps

    with pytest.raises(SessionFileError, match="Step 1 is about object 2, and a session tracks one object"):
        run_steps(None, [{"slice": 12, "box": LESION, "object": 2}])


def test_a_batch_session_row_naming_several_objects_or_refused_half_way_fails_alone(tmp_path, tiny_model):
    images = tmp_path / "images"
    images.mkdir()
    np.savez(images / "scan.npz", imgs=np.load(VOLUME)["imgs"][8:16])
    (tmp_path / "two.json").write_text(json.dumps({"steps": [
        {"slice": 4, "box": LESION}, {"slice": 2, "box": FAR, "object": 2}, {"propagate": "both"}]}))
    (tmp_path / "one.json").write_text(json.dumps({"steps": [
        {"slice": 2, "box": FAR, "object": 2}, {"propagate": "both"}]}))
    (tmp_path / "refused.json").write_text(json.dumps({"steps": [  # refused by the session half-way
        {"slice": 4, "box": LESION}, {"propagate": "both"}, {"slice": 3, "remove": True}]}))
    table = tmp_path / "prompts.csv"
    table.write_text("image,session,label\nscan.npz,two.json,1\nscan.npz,one.json,4\nscan.npz,refused.json,5\n")
    prompts, bad = read_prompt_table(table, images)  # the file naming two objects: refused before any work
    assert [(outcome.row, outcome.status, outcome.message) for outcome in bad] == [
        (2, "failed", "the session file names objects 1, 2; a row is one structure: give each object a row (and "
                      "label) of its own.")]
    predictor = VolumePredictor(tiny_model, precision="float32")
    outcomes = BatchRunner(lambda: predictor, images, tmp_path / "out").run(prompts)
    assert [(outcome.row, outcome.status, outcome.message) for outcome in outcomes] == [
        (3, "ok", ""), (4, "failed", "Step 3: Slice 3 has no prompt to remove.")]
    labels = np.load(tmp_path / "out" / "scan.npz")["mask"]
    assert set(np.unique(labels)) == {0, 4}  # the file's one object gets the row's label


def test_a_tracked_object_maps_to_the_volume_grid_with_its_logits():
    """A session file's stack (slices along J, rows flipped): the region and its logits land where the full
    arrays mapped back would put them."""
    from MedSAM2Lib.inference.objects import TrackedObject
    from MedSAM2Lib.slicer_glue.geometry import StackGeometry

    stack = StackGeometry.from_json({"slice_axis": "J", "row_axis": "K", "column_axis": "I", "flip_rows": True,
                                     "flip_columns": False})
    rng = np.random.default_rng(0)
    mask = np.zeros((6, 5, 7), bool)
    mask[1:4, 2:5, 3:6] = rng.random((3, 3, 3)) > 0.3
    logits = rng.normal(size=mask.shape).astype(np.float32)
    box = Region.of(mask).box
    mapped = TrackedObject(Region.of(mask, logits[box]), []).on_grid(stack, mask.shape)
    expected = Region.of(stack.from_stack(mask), stack.from_stack(logits)[Region.of(stack.from_stack(mask)).box])
    assert mapped.box == expected.box
    np.testing.assert_array_equal(mapped.values, expected.values)
    np.testing.assert_array_equal(mapped.logits, expected.logits)
