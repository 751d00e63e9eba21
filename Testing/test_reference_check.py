"""The rule by which masks are compared with a reference computed on another CPU family or device."""

from __future__ import annotations

import numpy as np
import pytest
from MedSAM2Lib.inference.reference_check import MAX_BORDERLINE_DIFFERENCES, borderline, compare_masks
from MedSAM2Lib.slicer_glue.scenario import self_test_model

from conftest import DATA, FIXTURE_SETS, reference_masks


def test_borderline_is_within_the_tolerance_of_each_slices_largest_logit():
    logits = np.array([[[100.0, -0.009, 0.011, -50.0]], [[1.0, 1e-5, -4e-4, 3.0]]])
    np.testing.assert_array_equal(borderline(logits), [[[False, True, False, False]], [[False, True, False, False]]])


def test_differences_only_at_borderline_voxels_are_allowed_up_to_a_handful():
    logits = np.full((2, 4, 16), -30.0)
    logits[0, :2] = 30.0
    near_zero = [(1, 0, i) for i in range(MAX_BORDERLINE_DIFFERENCES + 1)]
    for index in near_zero:
        logits[index] = 1e-4  # within 1e-4 x 30 of 0
    reference = logits > 0
    ours = reference.copy()
    for index in near_zero[:-1]:
        ours[index] = ~ours[index]
    comparison = compare_masks(ours, reference, logits)
    assert comparison.borderline_voxels == MAX_BORDERLINE_DIFFERENCES + 1
    assert comparison.problem() is None

    ours[near_zero[-1]] = ~ours[near_zero[-1]]  # one borderline flip too many
    assert "9 borderline voxels" in compare_masks(ours, reference, logits).problem()

    ours = reference.copy()
    ours[0, 0, 0] = False  # a voxel whose reference logit is 30: never allowed
    problem = compare_masks(ours, reference, logits).problem("The segment")
    assert problem.startswith("The segment differs from the reference in 1 voxels whose reference logit is clear of 0")


@pytest.mark.parametrize("name", [*FIXTURE_SETS, "session_two_boxes", "session_correct_tracked_with_mask"])
def test_reference_logits_decide_the_reference_masks(name):
    """The logits rebuilt from a fixture's low-resolution ones give its seg_union, and leave few voxels
    borderline (the fixtures were made so)."""
    reference = reference_masks(name)
    assert not np.isnan(reference.logits).any()
    comparison = reference.compare(np.nan_to_num(reference.logits) > 0, union=True)
    assert comparison.clear_differences == 0 and comparison.borderline_differences == 0
    assert comparison.borderline_voxels < 1e-3 * reference.logits.size


def test_a_real_difference_is_caught():
    """A mask one voxel short of the reference where the logit is clear of 0 fails, with the sentence."""
    reference = reference_masks("tiny_fillholes")
    mask = reference.final.copy()
    inside = np.argwhere(mask & ~borderline(reference.logits))[0]
    mask[tuple(inside)] = 0
    with pytest.raises(AssertionError, match="differs from the reference in 1 voxels whose reference logit is clear"):
        reference.check(mask)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="Shapes differ"):
        compare_masks(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 2)))


def test_self_test_runs_the_fixture_model_on_the_cpu_in_float32(tmp_path):
    choice, real = self_test_model(tmp_path / "MedSAM2_latest.pt", DATA)
    assert not real and choice.device == "cpu" and choice.precision == "float32"
    assert choice.checkpoint == DATA / "medsam2_tiny_random_seed0.pt" and choice.config.is_file()
    (tmp_path / "MedSAM2_latest.pt").write_bytes(b"weights")
    choice, real = self_test_model(tmp_path / "MedSAM2_latest.pt", DATA)
    assert real and choice.checkpoint == tmp_path / "MedSAM2_latest.pt" and choice.precision == "float32"

