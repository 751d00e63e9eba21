"""Intensities to the model's input, exactly as the official MedSAM2 scripts prepare them.

A volume is first windowed to uint8 (D, H, W); each slice is then resized to 512x512 with Pillow's bicubic
filter (still uint8), repeated to RGB and normalised with ImageNet statistics in float64, then cast to float32.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image

# The official script keeps these as float32 tensors and subtracts them from a float64 image.
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], dtype=np.float32).astype(np.float64)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], dtype=np.float32).astype(np.float64)

_SLICES_PER_BLOCK = 8  # windowing works on this many slices at a time

# CT display windows as (lower, upper) Hounsfield units.
CT_WINDOW_PRESETS: Dict[str, Tuple[float, float]] = {
    "soft-tissue": (-160.0, 240.0),  # W400 L40
    "abdomen": (-150.0, 250.0),  # W400 L50
    "liver": (-45.0, 105.0),  # W150 L30
    "mediastinum": (-125.0, 225.0),  # W350 L50
    "lung": (-1350.0, 150.0),  # W1500 L-600
    "bone": (-500.0, 1300.0),  # W1800 L400
    "brain": (0.0, 80.0),  # W80 L40
}


def window(volume: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Clip to [lower, upper], stretch the clipped range to 0..255 and truncate to uint8 (the CT script).

    The script's float64 arithmetic, a few slices at a time: never a float copy of the whole volume.
    """
    if not lower < upper:
        raise ValueError(f"The window's lower bound ({lower}) must be below its upper bound ({upper}).")
    volume = np.asarray(volume)
    # Clipping is monotone: the clipped volume's extremes are the clipped extremes of the volume.
    low, high = (np.clip(np.float64(extreme), lower, upper) for extreme in (volume.min(), volume.max()))
    windowed = np.zeros(volume.shape, dtype=np.uint8)
    if high == low:
        return windowed
    for start in range(0, len(windowed), _SLICES_PER_BLOCK):
        clipped = np.clip(volume[start : start + _SLICES_PER_BLOCK].astype(np.float64), lower, upper)
        windowed[start : start + _SLICES_PER_BLOCK] = np.uint8((clipped - low) / (high - low) * 255.0)
    return windowed


def ct_preset_window(volume: np.ndarray, preset: str) -> np.ndarray:
    try:
        lower, upper = CT_WINDOW_PRESETS[preset]
    except KeyError:
        raise ValueError(f"Unknown CT window preset {preset!r}; choose one of {', '.join(CT_WINDOW_PRESETS)}.") from None
    return window(volume, lower, upper)


def mr_percentile_window(volume: np.ndarray, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> np.ndarray:
    """MedSAM's MR convention: percentiles of the non-zero voxels, and zero (background) stays zero."""
    volume = np.asarray(volume)
    foreground = volume[volume != 0]
    if foreground.size == 0:
        return np.zeros(volume.shape, dtype=np.uint8)
    lower, upper = np.percentile(foreground, [lower_percentile, upper_percentile])
    upper = max(upper, lower + 1.0)  # a constant foreground still maps to a valid window
    windowed = window(volume, float(lower), float(upper))
    windowed[volume == 0] = 0
    return windowed


def as_uint8(volume: np.ndarray) -> np.ndarray:
    """Pass-through for data already in 0..255 (e.g. PNG stacks, pre-windowed volumes)."""
    volume = np.asarray(volume)
    if volume.dtype == np.uint8:
        return volume
    if volume.size and (volume.min() < 0 or volume.max() > 255 or not np.array_equal(volume, np.round(volume))):
        raise ValueError(
            f"The volume's values ({volume.min()}..{volume.max()}) are not whole numbers in 0..255; "
            "give a display window (or a CT preset, or MR percentile windowing) instead of no windowing."
        )
    return volume.astype(np.uint8)


@dataclass(frozen=True)
class Windowing:
    """How intensities become the model's uint8 input; volumes windowed alike share image features.

    name: ``none`` (values already 0..255), ``mr-percentiles``, a CT preset name, or ``window`` with bounds."""

    name: str
    bounds: Optional[Tuple[float, float]] = None

    @classmethod
    def parse(cls, text: str) -> "Windowing":
        text = text.strip().lower()
        if text in ("none", "mr-percentiles") or text in CT_WINDOW_PRESETS:
            return cls(text)
        parts = [part for part in re.split(r"[,;\s]+", text) if part]
        try:
            lower, upper = (float(part) for part in parts)
        except ValueError:
            raise ValueError(
                f"window {text!r} is not 'LO HI', 'none', 'mr-percentiles' or a CT preset "
                f"({', '.join(CT_WINDOW_PRESETS)})."
            ) from None
        if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
            raise ValueError(f"window {text!r}: LO must be below HI and both finite.")
        return cls("window", (lower, upper))

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """(D, H, W) intensities -> uint8 (D, H, W)."""
        if self.bounds is not None:
            return window(volume, *self.bounds)
        if self.name == "mr-percentiles":
            return mr_percentile_window(volume)
        if self.name == "none":
            return as_uint8(volume)
        return ct_preset_window(volume, self.name)

    def __str__(self) -> str:
        return f"{self.bounds[0]:g} {self.bounds[1]:g}" if self.bounds else self.name


def resize_slice(slice_u8: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 -> (size, size) uint8 with Pillow's bicubic filter, as the official script does."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(slice_u8)).resize((size, size), Image.BICUBIC))


def normalise(resized_u8: np.ndarray) -> torch.Tensor:
    """(S, S) uint8 -> (3, S, S) float32 model input: /255, minus ImageNet mean, over std, in float64."""
    scaled = resized_u8.astype(np.float64)[None] / 255.0
    normalised = (scaled - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    return torch.from_numpy(normalised.astype(np.float32))


def model_input(slice_u8: np.ndarray, size: int) -> torch.Tensor:
    """One volume slice (H, W) uint8 -> (3, size, size) float32 network input."""
    return normalise(resize_slice(slice_u8, size))
