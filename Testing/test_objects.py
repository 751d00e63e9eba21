"""Several objects in one session (inference/objects.py): the same outputs as separate single-object runs, one
encoding per slice for all objects, and the official non-overlap rule."""

from __future__ import annotations

import numpy as np
import pytest

from MedSAM2Lib.inference.objects import MultiObjectSession, label_map, non_overlapping
from MedSAM2Lib.inference.predictor import FeatureCache, PromptError, VolumePredictor
from MedSAM2Lib.inference.session import Session

# Two boxes on the test volume far apart, each object prompted on its own slice.
PROMPTS = {1: (12, [104, 70, 183, 131]), 3: (10, [10, 150, 70, 210])}


def separate_run(tiny_model, volume, object_id):
    predictor = VolumePredictor(tiny_model, precision="float32")
    session = Session(predictor, volume, FeatureCache(volume), early_stop=None)
    index, box = PROMPTS[object_id]
    session.add_prompt(index, box=box)
    results = {result.index: result for result in session.propagate()}
    return results, predictor.encoder_calls


def test_objects_in_one_session_give_the_separate_runs_outputs_and_encode_each_slice_once(tiny_model, input_volume):
    volume = input_volume[0][:8 + 6]  # 14 slices keep the test short
    predictor = VolumePredictor(tiny_model, precision="float32")
    together = MultiObjectSession(predictor, volume, PROMPTS, early_stop=None)
    for object_id, (index, box) in PROMPTS.items():
        together.session(object_id).add_prompt(index, box=box)
    yielded = {object_id: {} for object_id in PROMPTS}
    for object_id, result in together.propagate():
        yielded[object_id][result.index] = result
    assert predictor.encoder_calls == volume.shape[0]  # once per slice for both objects

    separate_calls = 0
    masks = {}
    for object_id in PROMPTS:
        alone, calls = separate_run(tiny_model, volume, object_id)
        separate_calls += calls
        assert sorted(alone) == sorted(yielded[object_id]) == list(range(volume.shape[0]))
        for index, result in alone.items():
            np.testing.assert_array_equal(yielded[object_id][index].logits, result.logits)
        masks[object_id] = np.stack([alone[index].mask for index in range(volume.shape[0])])
    assert separate_calls == 2 * volume.shape[0]

    overlap = masks[1] & masks[3]
    assert masks[1].any() and masks[3].any()
    for index in range(volume.shape[0]):
        labels = together.label_map(index)
        only_one = ~overlap[index]
        expected = np.where(masks[1][index], 1, np.where(masks[3][index], 3, 0)).astype(np.uint8)
        np.testing.assert_array_equal(labels[only_one], expected[only_one])
        # Where both masks hold a pixel, the higher logit wins it.
        logits = together.logits(index)
        np.testing.assert_array_equal(labels[overlap[index]],
                                      np.where(logits[0] >= logits[1], 1, 3)[overlap[index]].astype(np.uint8))


def test_an_object_without_output_on_a_slice_scores_minus_1024(tiny_model, input_volume):
    volume = input_volume[0][:6]
    together = MultiObjectSession(VolumePredictor(tiny_model, precision="float32"), volume, [1, 2], early_stop=None)
    together.session(1).add_prompt(3, box=[104, 70, 183, 131])
    list(together.propagate(direction="forward"))  # object 2 has no prompt: not propagated
    assert together.computed_slices() == [3, 4, 5]
    logits = together.logits(4)
    assert np.all(logits[1] == -1024.0) and logits.dtype == np.float32
    assert together.logits(0).max() == -1024.0
    assert not together.label_map(0).any()


def test_non_overlap_rule_on_a_constructed_overlap():
    # Three objects on a 1 x 4 strip: pixel 0 object 0 highest, pixel 1 object 2, pixel 2 a tie of 0 and 1,
    # pixel 3 everyone negative.
    logits = np.array([[[5.0, 1.0, 4.0, -20.0]],
                       [[3.0, -2.0, 4.0, -30.0]],
                       [[-1.0, 9.0, 0.5, -15.0]]], dtype=np.float32)
    merged = non_overlapping(logits)
    np.testing.assert_array_equal(merged, np.array([[[5.0, -10.0, 4.0, -20.0]],
                                                    [[-10.0, -10.0, -10.0, -30.0]],
                                                    [[-10.0, 9.0, -10.0, -15.0]]], dtype=np.float32))
    assert merged.dtype == np.float32
    np.testing.assert_array_equal(non_overlapping(logits[:1]), logits[:1])  # one object: unchanged
    labels = label_map({2: merged[0] > 0, 5: merged[1] > 0, 7: merged[2] > 0}, (1, 4))
    np.testing.assert_array_equal(labels, [[2, 7, 2, 0]])
    # Below -10 every capped object is "in": the lowest id wins the pixel, as the official writer paints.
    low = label_map({2: merged[0] > -25, 5: merged[1] > -25, 7: merged[2] > -25}, (1, 4))
    np.testing.assert_array_equal(low, [[2, 2, 2, 2]])


def test_object_ids_are_label_values(tiny_model, input_volume):
    predictor = VolumePredictor(tiny_model)
    volume = input_volume[0][:4]
    for ids, expected in (([], "at least one object"), ([0], "1..255"), ([1, 1], "distinct"), ([256], "1..255")):
        with pytest.raises(PromptError, match=expected):
            MultiObjectSession(predictor, volume, ids)
    together = MultiObjectSession(predictor, volume, [4])
    with pytest.raises(PromptError, match=r"There is no object 5; the objects are \[4\]"):
        together.session(5)
    with pytest.raises(PromptError, match="before propagating"):
        list(together.propagate())
