"""Our connected components (SimpleITK) against scipy's (scipy is a test-only dependency)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MedSAM2Lib.inference.connected_components import fill_small_holes, label, largest_component


@pytest.mark.parametrize("shape, density", [((64, 64), 0.45), ((128, 128), 0.6), ((12, 30, 40), 0.3), ((5, 9, 7), 0.5)])
def test_labels_equal_scipy_full_connectivity(shape, density):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    mask = rng.random(shape) < density
    labels, sizes = label(mask)
    expected, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    np.testing.assert_array_equal(labels, expected)  # same numbering: raster order of first voxel
    np.testing.assert_array_equal(sizes, np.bincount(expected.ravel(), minlength=count + 1) * (np.arange(count + 1) > 0))


def test_a_long_spiral_is_one_component():
    mask = np.zeros((41, 41), bool)
    top, left, bottom, right = 0, 0, 40, 40
    while top <= bottom and left <= right:
        mask[top, left:right + 1] = True
        mask[top:bottom + 1, right] = True
        mask[bottom, left:right + 1] = True
        mask[top + 2:bottom + 1, left] = True
        if left + 2 <= right - 2:
            mask[top + 2, left:left + 3] = True
        top, left, bottom, right = top + 4, left + 4, bottom - 4, right - 4
    labels, _ = label(mask)
    assert labels.max() == ndimage.label(mask, structure=np.ones((3, 3)))[1]


def test_empty_mask():
    labels, sizes = label(np.zeros((4, 4), bool))
    assert not labels.any() and sizes.tolist() == [0]


def test_fill_small_holes_fills_background_components_up_to_the_area():
    logits = np.full((20, 20), 5.0, dtype=np.float32)
    logits[0:20, 14:20] = -3  # large background: stays
    logits[3:5, 3:7] = -2  # hole of 8 pixels: filled
    logits[10:13, 3:6] = -2  # hole of 9 pixels: stays
    logits[16, 2] = logits[17, 3] = -1  # diagonal neighbours: one 2-pixel hole (8-connected)
    filled = fill_small_holes(logits, 8)
    assert filled.dtype == np.float32
    assert (filled[3:5, 3:7] == np.float32(0.1)).all() and filled[16, 2] == filled[17, 3] == np.float32(0.1)
    assert (filled[10:13, 3:6] == -2).all() and (filled[:, 14:] == -3).all()
    assert (filled[logits > 0] == 5).all()


def test_largest_component_keeps_first_of_equal_size_and_crops_nothing_else():
    mask = np.zeros((6, 10, 10), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[4, 7:9, 7:9] = 1  # 4 voxels
    mask[0, 9, 0] = 1
    mask[5, 0, 9] = 1
    kept = largest_component(mask)
    assert kept.sum() == 8 and kept[1:3, 1:3, 1:3].all()
    tie = np.zeros((3, 5, 5), np.uint8)
    tie[0, 0, 0] = tie[2, 4, 4] = 1
    assert largest_component(tie)[0, 0, 0] == 1 and largest_component(tie).sum() == 1
    assert not largest_component(np.zeros((2, 2, 2))).any()


def test_largest_component_is_26_connected():
    mask = np.zeros((3, 3, 3), np.uint8)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner-to-corner chain
    assert largest_component(mask).sum() == 3


@pytest.mark.parametrize("shape, density", [((20, 40, 50), 0.3), ((30, 32, 32), 0.08), ((7, 64, 48), 0.05)])
def test_largest_component_equals_scipy_on_random_masks(shape, density):
    rng = np.random.default_rng(shape[0])
    mask = rng.random(shape) < density
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    expected = labels == 1 + int(np.argmax(sizes))  # argmax: first of equal sizes in raster order
    kept = largest_component(mask.astype(np.uint8))
    assert kept.dtype == np.uint8
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(largest_component(mask), expected)
