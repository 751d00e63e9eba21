"""Connected components in numpy (full connectivity: 8 in 2D, 26 in 3D), without scipy or a CUDA kernel.

Used for MedSAM2's two post-processing steps: filling small background holes in each slice's low-resolution
logits, and keeping the largest 3D component of the final mask.
"""

from __future__ import annotations

import itertools
from typing import Tuple

import numpy as np


def _forward_offsets(ndim: int):
    """Half of the full neighbourhood: each undirected neighbour pair is visited once."""
    for offset in itertools.product((-1, 0, 1), repeat=ndim):
        if offset > (0,) * ndim:
            yield offset


def _shifted_pairs(index: np.ndarray, offset) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (into the foreground list) of foreground voxels p and p + offset, both in the array."""
    source, target = [], []
    for step, size in zip(offset, index.shape):
        source.append(slice(max(0, -step), size - max(0, step)))
        target.append(slice(max(0, step), size - max(0, -step)))
    a, b = index[tuple(source)], index[tuple(target)]
    both = (a >= 0) & (b >= 0)
    return a[both], b[both]


def label(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Label the fully connected components of a boolean N-D array.

    Returns (labels, sizes): labels int32 with 0 for background and components numbered 1.. in the raster
    order of their first voxel (as scikit-image numbers them); sizes[k] is the voxel count of component k
    (sizes[0] = 0).
    """
    mask = np.asarray(mask, dtype=bool)
    foreground = np.flatnonzero(mask)
    count = foreground.size
    dtype = np.int32 if count < 2**31 - 1 else np.int64
    index = np.full(mask.shape, -1, dtype=dtype)
    index.flat[foreground] = np.arange(count, dtype=dtype)
    # Union-find over foreground voxels; a root is always the smallest index of its tree, hence the voxel
    # first in raster order. Each offset's neighbour pairs are merged before the next offset's are built.
    parent = np.arange(count, dtype=dtype)
    for offset in _forward_offsets(mask.ndim):
        a, b = _shifted_pairs(index, offset)
        while a.size:
            root_a, root_b = parent[a], parent[b]
            apart = root_a != root_b
            if not apart.any():
                break
            a, b, root_a, root_b = a[apart], b[apart], root_a[apart], root_b[apart]
            np.minimum.at(parent, np.maximum(root_a, root_b), np.minimum(root_a, root_b))
            while True:  # pointer jumping until every voxel points at its root
                grandparent = parent[parent]
                if np.array_equal(grandparent, parent):
                    break
                parent = grandparent
    roots, component = np.unique(parent, return_inverse=True)
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels.flat[foreground] = component + 1
    sizes = np.concatenate([[0], np.bincount(component, minlength=roots.size)])
    return labels, sizes


def fill_small_holes(logits: np.ndarray, max_area: int, fill_value: float = 0.1) -> np.ndarray:
    """Set background (logit <= 0) components of at most max_area pixels to a small positive logit.

    This is SAM 2's ``fill_holes_in_mask_scores`` (8-connected) on a (h, w) low-resolution logit map; like it,
    it also fills small background islands that touch the border.
    """
    labels, sizes = label(logits <= 0)
    small = (labels > 0) & (sizes[labels] <= max_area)
    return np.where(small, np.float32(fill_value), logits).astype(logits.dtype, copy=False)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected (in 3D) component of a mask; ties go to the first in raster order."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.astype(np.uint8)
    # Label only the bounding box of the foreground: masks are usually small against the volume.
    box = []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    box = tuple(box)
    labels, sizes = label(mask[box])
    result = np.zeros(mask.shape, dtype=np.uint8)
    result[box] = labels == int(np.argmax(sizes))
    return result
