"""Comparing our output with a reference computed on another machine: the official pipeline's fixtures in the
tests, and the same fixtures in the extension's self-test inside Slicer.

Float32 kernels differ between CPU families (AMD Zen 4, Intel with AMX, AVX2-only) and between a CPU and a GPU:
the same network gives logits that agree to about 5e-5 of the array's largest magnitude, not bit for bit. So
logits are compared within :data:`LOGIT_TOLERANCE`, and a mask (logits > 0) can only be trusted where the
reference logit is clear of 0 by more than that tolerance. Masks must be equal everywhere else; at the few
*borderline* voxels either side of the threshold is right, and no more than :data:`MAX_BORDERLINE_DIFFERENCES`
of them may differ (the fixtures were chosen so that very few logits lie that close to 0).

Importable without torch (the self-test imports it before it knows whether torch is there); reading a
fixture's logits (:meth:`ReferenceMasks.from_file`) resizes them with torch, as the official pipeline did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

LOGIT_TOLERANCE = 1e-4  # |ours - reference| <= LOGIT_TOLERANCE x max|reference|, per slice (the fixtures' rule)
MAX_BORDERLINE_DIFFERENCES = 8  # "at most a handful of boundary voxels" (the fixtures' README)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference|: the measure the logit tolerance applies to."""
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / np.abs(reference).max())


def borderline(reference_logits: np.ndarray, tolerance: float = LOGIT_TOLERANCE) -> np.ndarray:
    """Where the sign of a logit is not decided by float32 arithmetic: bool, same shape as ``reference_logits``
    ((H, W) for a slice, (D, H, W) for a volume of slices): |logit| <= tolerance x max|logits| of its slice.

    Voxels that no reference slice covers hold NaN and are never borderline."""
    logits = np.asarray(reference_logits, np.float64)
    slices = logits.reshape((-1,) + logits.shape[-2:])
    magnitude = np.abs(slices)
    scale = np.nanmax(np.where(np.isnan(magnitude), -np.inf, magnitude), axis=(1, 2), keepdims=True)
    return (magnitude <= tolerance * scale).reshape(logits.shape)


@dataclass(frozen=True)
class MaskComparison:
    """How a mask differs from the reference mask, split by whether the reference logit is borderline."""

    clear_differences: int  # voxels that differ where the reference logit is clear of 0: never allowed
    borderline_differences: int  # voxels that differ where it is within the tolerance of 0
    borderline_voxels: int  # voxels whose reference logit is within the tolerance of 0

    def problem(self, what: str = "The mask", limit: int = MAX_BORDERLINE_DIFFERENCES) -> Optional[str]:
        """None when the mask agrees as float32 allows; otherwise one sentence saying how it does not."""
        if self.clear_differences:
            return (f"{what} differs from the reference in {self.clear_differences} voxels whose reference logit is "
                    f"clear of 0 (and in {self.borderline_differences} of the {self.borderline_voxels} borderline "
                    "ones).")
        if self.borderline_differences > limit:
            return (f"{what} differs from the reference in {self.borderline_differences} borderline voxels (reference "
                    f"logit within {LOGIT_TOLERANCE:g} x the slice's largest of 0), more than the {limit} allowed.")
        return None


def compare_masks(ours: np.ndarray, reference_mask: np.ndarray, reference_logits: np.ndarray,
                  tolerance: float = LOGIT_TOLERANCE) -> MaskComparison:
    """Compare a (D, H, W) or (H, W) mask with the reference mask, given the reference logits that decided it
    (same shape; for a union over several passes, the largest logit of any pass: see :func:`union_logits`)."""
    ours, reference_mask = np.asarray(ours) != 0, np.asarray(reference_mask) != 0
    if ours.shape != reference_mask.shape or reference_mask.shape != np.shape(reference_logits):
        raise ValueError(f"Shapes differ: ours {ours.shape}, reference mask {reference_mask.shape}, reference logits "
                         f"{np.shape(reference_logits)}.")
    near_zero = borderline(reference_logits, tolerance)
    different = ours != reference_mask
    return MaskComparison(int(np.count_nonzero(different & ~near_zero)), int(np.count_nonzero(different & near_zero)),
                          int(np.count_nonzero(near_zero)))


def resize_logits(low_res: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(N, 128, 128) low-resolution logits -> (N, H, W) as the official pipeline resizes them: torch's bilinear
    interpolation, align_corners=False, in float32 (the reference's yielded logits are exactly this)."""
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(np.asarray(low_res, np.float32))[:, None], size=tuple(shape),
                         mode="bilinear", align_corners=False)[:, 0].numpy()


@dataclass(frozen=True)
class ReferenceMasks:
    """An official fixture's volume masks and the logits that decided them.

    union: (D, H, W) ``seg_union``, the OR of (logits > 0) over the passes; final: ``seg_final``, its largest
    component; logits: (D, H, W) the largest logit of any pass at each voxel (a voxel is in the union iff some
    pass has it > 0), NaN where no pass went."""

    union: np.ndarray
    final: np.ndarray
    logits: np.ndarray

    @classmethod
    def from_file(cls, path) -> "ReferenceMasks":
        """From an ``expected_<set>.npz`` (the official CT pipeline: each pass's tracking state) or a
        ``session_<scenario>.npz`` (the official video predictor: each direction's last propagate call), both
        holding 128 x 128 low-resolution logits of which the slice-size ones are the resize (needs torch)."""
        with np.load(path) as reference:
            shape = reference["seg_union"].shape
            if "calls_json" in reference.files:
                keys = [cls._last_call_keys(reference.files, direction) for direction in ("fwd", "rev")]
            else:
                keys = [(f"{direction}_state_frames", f"{direction}_lowres_logits") for direction in ("fwd", "rev")]
            logits = np.full(shape, -np.inf)
            for frames_key, logits_key in keys:
                slices = resize_logits(reference[logits_key], shape[1:])
                for k, index in enumerate(reference[frames_key]):
                    logits[index] = np.maximum(logits[index], slices[k])
            return cls(reference["seg_union"], reference["seg_final"], np.where(np.isneginf(logits), np.nan, logits))

    @staticmethod
    def _last_call_keys(files: Sequence[str], direction: str):
        last = max(int(key[len(direction) + 5:].split("_")[0]) for key in files
                   if key.startswith(f"{direction}_call") and key.endswith("_frames"))
        return f"{direction}_call{last}_frames", f"{direction}_call{last}_lowres_logits"

    def compare(self, mask: np.ndarray, union: bool = False) -> MaskComparison:
        """Compare a (D, H, W) mask with ``seg_final`` (or ``seg_union``)."""
        return compare_masks(mask, self.union if union else self.final, self.logits)

    def check(self, mask: np.ndarray, what: str = "The mask", union: bool = False) -> MaskComparison:
        """:meth:`compare`, raising AssertionError with its sentence unless the mask agrees as float32 allows."""
        comparison = self.compare(mask, union)
        problem = comparison.problem(what)
        if problem:
            raise AssertionError(problem)
        return comparison
