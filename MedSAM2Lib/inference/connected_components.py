"""Connected components with full connectivity (8 in 2D, 26 in 3D), computed by SimpleITK in C++.

Used for MedSAM2's two post-processing steps: filling small background holes in each slice's low-resolution
logits, and keeping the largest 3D component of the final mask. SimpleITK ships with 3D Slicer and needs no
scipy or CUDA kernel; its ``ConnectedComponent`` numbers components in the raster order of their first voxel,
as ``scipy.ndimage.label`` and scikit-image do (the tests check this), so ties resolve the same way.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

# Label counts are summed over blocks of this many slices: np.bincount would otherwise cast the whole uint32
# label image to int64 (8 bytes a voxel) at once.
_SLICES_PER_BLOCK = 8


def _label_image(mask: np.ndarray) -> sitk.Image:
    """Fully connected components of an array's nonzero voxels as a uint32 SimpleITK image (0 = background)."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    return sitk.ConnectedComponent(sitk.GetImageFromArray(mask), True)


def label(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Label the fully connected components of the nonzero voxels of a 2D or 3D array.

    Returns (labels, sizes): labels uint32 with 0 for background and components numbered 1.. in the raster
    order of their first voxel; sizes[k] is the voxel count of component k (sizes[0] = 0).
    """
    labels = sitk.GetArrayFromImage(_label_image(mask))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels, sizes


def fill_small_holes(logits: np.ndarray, max_area: int, fill_value: float = 0.1) -> np.ndarray:
    """Set background (logit <= 0) components of at most max_area pixels to a small positive logit.

    This is SAM 2's ``fill_holes_in_mask_scores`` (8-connected) on a (h, w) low-resolution logit map; like it,
    it also fills small background islands that touch the border.
    """
    labels, sizes = label(logits <= 0)
    small = (labels > 0) & (sizes[labels] <= max_area)
    return np.where(small, np.float32(fill_value), logits).astype(logits.dtype, copy=False)


def bounding_box(mask: np.ndarray) -> Optional[Tuple[slice, ...]]:
    """The smallest box (one slice per axis) holding every nonzero voxel of an array; None if there is none."""
    box = []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if occupied.size == 0:
            return None
        box.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    return tuple(box)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected (in 3D) component of a mask; ties go to the first in raster order.

    Memory beyond the result: a uint8 copy, then a uint32 label image, of the foreground's bounding box.
    """
    mask = np.asarray(mask)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.uint8)
    # Label only the bounding box of the foreground: masks are usually small against the volume.
    box = bounding_box(mask)
    label_image = _label_image(mask[box])
    labels = sitk.GetArrayViewFromImage(label_image)  # a view: valid while label_image lives
    sizes = np.zeros(1, dtype=np.int64)
    for start in range(0, labels.shape[0], _SLICES_PER_BLOCK):
        counts = np.bincount(labels[start : start + _SLICES_PER_BLOCK].ravel())
        if counts.size > sizes.size:
            counts[: sizes.size] += sizes
            sizes = counts
        else:
            sizes[: counts.size] += counts
    sizes[0] = 0
    largest = int(np.argmax(sizes))  # first of equal sizes: the lowest label, first in raster order
    result = np.zeros(mask.shape, dtype=np.uint8)
    np.equal(labels, largest, out=result[box].view(np.bool_))
    return result
