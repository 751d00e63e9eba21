"""Intensities to the model's input, exactly as the official MedSAM2 scripts prepare them.

A volume is first windowed to uint8 (D, H, W); each slice is then resized to 512x512 with Pillow's bicubic
filter (still uint8), repeated to RGB and normalised with ImageNet statistics in float64, then cast to float32.
Video frames are RGB (D, H, W, 3) uint8 and are normalised as the official video script does it.
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


# How to get rid of NaN/infinite voxels, said to users of the Python API (the command line and Slicer say
# their own way).
NON_FINITE_FIX = "replace them first with replace_non_finite(volume, VALUE)"


class NonFiniteError(ValueError):
    """The volume holds NaN or infinite voxels, which no window maps to an intensity."""


def _parts(volume: np.ndarray):
    """(index, view) pairs covering ``volume``: its slices along the first axis, or the whole of a 0D/1D array, so
    that float64 work needs memory for one slice, not for the volume."""
    if volume.ndim < 2:
        return [(Ellipsis, volume)]
    return enumerate(volume)


def count_non_finite(volume: np.ndarray) -> Tuple[int, int]:
    """(NaN voxels, infinite voxels) of ``volume``; (0, 0) for integer volumes. Slice by slice."""
    volume = np.asarray(volume)
    if not np.issubdtype(volume.dtype, np.inexact):
        return 0, 0
    nan = infinite = 0
    for _, part in _parts(volume):
        nan += int(np.count_nonzero(np.isnan(part)))
        infinite += int(np.count_nonzero(np.isinf(part)))
    return nan, infinite


def check_finite(volume: np.ndarray, fix: str = NON_FINITE_FIX, name: str = "The volume") -> None:
    """Raise :class:`NonFiniteError` counting the NaN and infinite voxels, and saying ``fix``, if there are any."""
    nan, infinite = count_non_finite(volume)
    if nan or infinite:
        counts = " and ".join(f"{count:,} {kind}" for count, kind in ((nan, "NaN"), (infinite, "infinite")) if count)
        raise NonFiniteError(
            f"{name} has {counts} voxels (of {np.size(volume):,}), which no window can map to an intensity; {fix}."
        )


def replace_non_finite(volume: np.ndarray, value: float) -> np.ndarray:
    """``volume`` with its NaN and infinite voxels set to ``value`` (a copy when there are any; integer volumes,
    which have none, are returned as they are)."""
    if not math.isfinite(value):
        raise ValueError(f"The replacement for NaN and infinite voxels must be a finite number, not {value}.")
    volume = np.asarray(volume)
    if count_non_finite(volume) == (0, 0):
        return volume
    return np.nan_to_num(volume, copy=True, nan=value, posinf=value, neginf=value)


def window(volume: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Clip to [lower, upper], stretch the clipped range to 0..255 and truncate to uint8 (the CT script).

    The script's float64 arithmetic, one slice at a time: the result is the script's, and the memory is the
    uint8 output plus one float64 slice. NaN or infinite voxels are refused (:class:`NonFiniteError`)."""
    if not lower < upper:
        raise ValueError(f"The window's lower bound ({lower}) must be below its upper bound ({upper}).")
    volume = np.asarray(volume)
    check_finite(volume)
    return _window(volume, lower, upper)


def _window(volume: np.ndarray, lower: float, upper: float) -> np.ndarray:
    windowed = np.zeros(volume.shape, dtype=np.uint8)
    if volume.size == 0:
        return windowed
    low, high = math.inf, -math.inf
    for _, part in _parts(volume):
        clipped = np.clip(part.astype(np.float64), lower, upper)
        low, high = min(low, float(clipped.min())), max(high, float(clipped.max()))
    if high == low:
        return windowed
    for index, part in _parts(volume):
        clipped = np.clip(part.astype(np.float64), lower, upper)
        windowed[index] = np.uint8((clipped - low) / (high - low) * 255.0)
    return windowed


def ct_preset_window(volume: np.ndarray, preset: str) -> np.ndarray:
    try:
        lower, upper = CT_WINDOW_PRESETS[preset]
    except KeyError:
        raise ValueError(f"Unknown CT window preset {preset!r}; choose one of {', '.join(CT_WINDOW_PRESETS)}.") from None
    return window(volume, lower, upper)


def _exact_dtype(dtype: np.dtype) -> np.dtype:
    """A dtype in which np.percentile gives the float64 result of the script: int32 for integers of up to 16 bits
    (their differences cannot overflow it, and numpy interpolates in float64), float64 otherwise."""
    if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
        return np.dtype(np.int32)
    return np.dtype(np.float64)


def mr_percentile_window(volume: np.ndarray, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> np.ndarray:
    """MedSAM's MR convention: percentiles of the non-zero voxels, and zero (background) stays zero."""
    volume = np.asarray(volume)
    check_finite(volume)
    background = volume == 0
    foreground = volume[~background].astype(_exact_dtype(volume.dtype), copy=False)
    if foreground.size == 0:
        return np.zeros(volume.shape, dtype=np.uint8)
    lower, upper = np.percentile(foreground, [lower_percentile, upper_percentile])
    del foreground
    upper = max(upper, lower + 1.0)  # a constant foreground still maps to a valid window
    windowed = _window(volume, float(lower), float(upper))
    windowed[background] = 0
    return windowed


def as_uint8(volume: np.ndarray) -> np.ndarray:
    """Pass-through for data already in 0..255 (e.g. PNG stacks, pre-windowed volumes)."""
    volume = np.asarray(volume)
    if volume.dtype == np.uint8:
        return volume
    check_finite(volume)
    whole = np.issubdtype(volume.dtype, np.integer) or all(
        np.array_equal(part, np.round(part)) for _, part in _parts(volume))
    if volume.size and (volume.min() < 0 or volume.max() > 255 or not whole):
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
    """(H, W) or (H, W, 3) uint8 -> (size, size[, 3]) uint8 with Pillow's bicubic filter, as the official scripts
    do."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(slice_u8)).resize((size, size), Image.BICUBIC))


def normalise(resized_u8: np.ndarray) -> torch.Tensor:
    """(S, S) uint8 -> (3, S, S) float32 model input: /255, minus ImageNet mean, over std, in float64."""
    scaled = resized_u8.astype(np.float64)[None] / 255.0
    normalised = (scaled - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    return torch.from_numpy(normalised.astype(np.float32))


def normalise_frame(resized_rgb: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 video frame -> (3, S, S) float32 model input as the official video loader makes it: /255
    in float64, cast to float32, then minus the ImageNet mean and over the std in float32 (the slice path above
    stays in float64 to the end; the two differ by a rounding step)."""
    scaled = torch.from_numpy(resized_rgb.astype(np.float64) / 255.0).permute(2, 0, 1).float()
    mean = torch.from_numpy(IMAGENET_MEAN.astype(np.float32))[:, None, None]
    std = torch.from_numpy(IMAGENET_STD.astype(np.float32))[:, None, None]
    return (scaled - mean) / std


def model_input(slice_u8: np.ndarray, size: int) -> torch.Tensor:
    """One volume slice (H, W) uint8, or one RGB video frame (H, W, 3) uint8 -> (3, size, size) float32 network
    input (frames as the official video script prepares them, see :func:`normalise_frame`)."""
    if slice_u8.ndim == 3:
        return normalise_frame(resize_slice(slice_u8, size))
    return normalise(resize_slice(slice_u8, size))
