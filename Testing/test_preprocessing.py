"""Windowing and model-input preparation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from MedSAM2Lib.inference.preprocessing import (IMAGENET_MEAN, IMAGENET_STD, as_uint8, ct_preset_window, mr_percentile_window,
                                      normalise, resize_slice, window)


def test_ct_window_clips_stretches_and_truncates_like_the_script():
    volume = np.array([[[-1000, -160, 0], [40, 240, 3000]]], dtype=np.int16)
    # clip to [-160, 240], then (x - min) / (max - min) * 255, truncated
    expected = np.uint8((np.clip(volume, -160, 240).astype(float) + 160) / 400 * 255)
    np.testing.assert_array_equal(window(volume, -160, 240), expected)
    assert window(volume, -160, 240).tolist() == [[[0, 0, 102], [127, 255, 255]]]


def test_window_stretches_the_clipped_range_not_the_window():
    # The script min-max normalises the clipped volume: a volume inside the window still spans 0..255.
    assert window(np.array([[[10.0, 20.0]]]), -100, 100).tolist() == [[[0, 255]]]


def test_window_of_a_constant_volume_is_zero():
    assert not window(np.full((2, 3, 3), 7.0), 0, 10).any()


def test_window_rejects_inverted_bounds():
    with pytest.raises(ValueError, match="lower bound"):
        window(np.zeros((1, 2, 2)), 10, -10)


def test_ct_presets():
    volume = np.linspace(-1200, 1500, 60).reshape(3, 4, 5)
    np.testing.assert_array_equal(ct_preset_window(volume, "soft-tissue"), window(volume, -160, 240))
    with pytest.raises(ValueError, match="Unknown CT window preset 'soft'"):
        ct_preset_window(volume, "soft")


def test_mr_percentiles_use_foreground_and_keep_background_zero():
    rng = np.random.default_rng(0)
    volume = np.zeros((4, 20, 20))
    volume[:, 5:15, 5:15] = rng.normal(500, 100, (4, 10, 10))
    volume[0, 6, 6] = 1e6  # a hot voxel must not squash the rest
    result = mr_percentile_window(volume)
    assert result.dtype == np.uint8 and not result[volume == 0].any()
    foreground = volume[volume != 0]
    low, high = np.percentile(foreground, [0.5, 99.5])
    inside = (volume > low) & (volume < high)
    np.testing.assert_array_equal(result[inside], window(volume, low, high)[inside])
    assert result[0, 6, 6] == 255


def test_pass_through_accepts_only_0_to_255_integers():
    assert as_uint8(np.array([[[0.0, 255.0]]])).dtype == np.uint8
    with pytest.raises(ValueError, match="not whole numbers in 0..255"):
        as_uint8(np.array([[[-5, 300]]], dtype=np.int16))
    with pytest.raises(ValueError, match="not whole numbers"):
        as_uint8(np.array([[[0.5]]]))


def test_resize_equals_the_scripts_rgb_resize():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(image).convert("RGB").resize((512, 512)))
    resized = resize_slice(image, 512)
    for channel in range(3):
        np.testing.assert_array_equal(resized, rgb[..., channel])


def test_normalise_uses_imagenet_statistics_in_float64():
    image = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    result = normalise(image)
    expected = ((image / 255.0)[None] - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    assert result.dtype.is_floating_point and tuple(result.shape) == (3, 2, 2)
    np.testing.assert_array_equal(result.numpy(), expected.astype(np.float32))

