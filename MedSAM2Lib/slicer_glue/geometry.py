"""From a box drawn on a slice view to a prompt on a stack of 2D slices, and back (numpy only).

A view shows a plane of the volume. When that plane is a plane of the volume's voxel grid (I, J or K
constant), the volume can be cut into 2D slices along that axis and given to the predictor as a
(slices, rows, columns) stack. The stack is oriented as the view shows it: column index grows to the right
of the screen and row index grows downwards, so the model sees each slice as the clinician does, whatever
the volume's storage order. Slices keep the volume's index order along the slice axis ("forward" is
increasing I, J or K).

All matrices are 4x4 numpy arrays; IJK coordinates are continuous voxel indices (voxel centres at integers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Sequence, Tuple

import numpy as np

AXIS_NAMES = "IJK"
# Largest sine between the view's normal and a voxel axis that still counts as aligned: 1e-4 keeps the
# view plane within 0.1 voxel of one slice across 1000 voxels.
ALIGNMENT_TOLERANCE = 1e-4


class ObliqueViewError(ValueError):
    """The view's plane is not a plane of the volume's voxel grid."""


class BoxError(ValueError):
    """The box has no area or lies outside the volume."""


class PointError(ValueError):
    """The point lies outside the volume."""


@dataclass(frozen=True)
class StackGeometry:
    """How a volume array in (K, J, I) order becomes a (slices, rows, columns) stack and back."""

    slice_axis: int  # 0, 1, 2 for I, J, K
    row_axis: int
    column_axis: int
    flip_rows: bool  # row 0 is the highest index along row_axis
    flip_columns: bool

    def to_stack(self, volume_kji: np.ndarray) -> np.ndarray:
        ijk = volume_kji.transpose(2, 1, 0)
        stack = ijk.transpose(self.slice_axis, self.row_axis, self.column_axis)
        return np.ascontiguousarray(stack[:, :: -1 if self.flip_rows else 1, :: -1 if self.flip_columns else 1])

    def from_stack(self, stack: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_stack`: a (slices, rows, columns) array back to (K, J, I)."""
        unflipped = stack[:, :: -1 if self.flip_rows else 1, :: -1 if self.flip_columns else 1]
        ijk = unflipped.transpose(np.argsort([self.slice_axis, self.row_axis, self.column_axis]))
        return np.ascontiguousarray(ijk.transpose(2, 1, 0))

    def stack_coordinates(self, ijk: np.ndarray, shape_ijk: Sequence[int]) -> np.ndarray:
        """(N, 3) continuous IJK array indices -> (N, 3) continuous (slice, row, column) stack indices."""
        ijk = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        rows, columns = ijk[:, self.row_axis], ijk[:, self.column_axis]
        if self.flip_rows:
            rows = shape_ijk[self.row_axis] - 1 - rows
        if self.flip_columns:
            columns = shape_ijk[self.column_axis] - 1 - columns
        return np.stack([ijk[:, self.slice_axis], rows, columns], axis=1)

    def index_coordinates(self, stack_points: np.ndarray, shape_ijk: Sequence[int]) -> np.ndarray:
        """Inverse of :meth:`stack_coordinates`: (N, 3) (slice, row, column) -> (N, 3) IJK array indices."""
        stack_points = np.asarray(stack_points, dtype=np.float64).reshape(-1, 3)
        slices, rows, columns = stack_points.T
        if self.flip_rows:
            rows = shape_ijk[self.row_axis] - 1 - rows
        if self.flip_columns:
            columns = shape_ijk[self.column_axis] - 1 - columns
        ijk = np.empty_like(stack_points)
        ijk[:, self.slice_axis], ijk[:, self.row_axis], ijk[:, self.column_axis] = slices, rows, columns
        return ijk

    @property
    def description(self) -> str:
        return f"slices along {AXIS_NAMES[self.slice_axis]}"

    def as_json(self) -> Dict[str, Any]:
        """The orientation as session files and segment tags store it (axes named I, J, K)."""
        return {"slice_axis": AXIS_NAMES[self.slice_axis], "row_axis": AXIS_NAMES[self.row_axis],
                "column_axis": AXIS_NAMES[self.column_axis], "flip_rows": self.flip_rows,
                "flip_columns": self.flip_columns}

    @classmethod
    def from_json(cls, entry: Any) -> "StackGeometry":
        """Inverse of :meth:`as_json`; ValueError with a sentence when the entry is not an orientation."""
        keys = ("slice_axis", "row_axis", "column_axis", "flip_rows", "flip_columns")
        if not isinstance(entry, dict) or set(entry) != set(keys):
            raise ValueError(f"the stack must be an object with exactly the keys {', '.join(keys)}; got {entry!r}")
        axes = [entry[key] for key in keys[:3]]
        if sorted(map(str, axes)) != sorted(AXIS_NAMES):
            raise ValueError(f"the stack's slice, row and column axes must be I, J and K in some order; got {axes}")
        flips = [entry[key] for key in keys[3:]]
        if not all(isinstance(flip, bool) for flip in flips):
            raise ValueError(f"flip_rows and flip_columns must be true or false; got {flips}")
        return cls(*(AXIS_NAMES.index(axis) for axis in axes), *flips)


# The array's own order: slices along K (the first axis of a (K, J, I) array), rows along J, columns along I.
ARRAY_ORDER = StackGeometry(slice_axis=2, row_axis=1, column_axis=0, flip_rows=False, flip_columns=False)


def _nearest_axis(direction: np.ndarray) -> Tuple[int, float]:
    """Index of the voxel axis closest to a direction, and the sine of the angle between them."""
    axis = int(np.argmax(np.abs(direction)))
    norm = np.linalg.norm(direction)
    off_axis = np.linalg.norm(np.delete(direction, axis))
    return axis, float(off_axis / norm) if norm > 0 else 1.0


def stack_geometry(screen_right_ijk: np.ndarray, screen_up_ijk: np.ndarray) -> StackGeometry:
    """Stack orientation for a view whose screen-right and screen-up directions, in IJK, are given.

    Raises ObliqueViewError when the view's plane is not a voxel plane of the volume.
    """
    right = np.asarray(screen_right_ijk, dtype=np.float64)
    up = np.asarray(screen_up_ijk, dtype=np.float64)
    normal = np.cross(right, up)  # in IJK index space, a grid plane has a normal along one axis
    slice_axis, misalignment = _nearest_axis(normal)
    if misalignment > ALIGNMENT_TOLERANCE:
        raise ObliqueViewError(
            "The slice view is not parallel to the volume's slices (an oblique reformat), so a box on it is "
            "not a box on any slice of the volume. Rotate the slice views to the volume plane "
            "(slice view menu > 'Rotate to volume plane'), then draw the box again."
        )
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    # Columns follow the in-plane axis closest to screen right; rows the other one.
    column_axis = max(in_plane, key=lambda axis: abs(right[axis]))
    row_axis = in_plane[0] if column_axis == in_plane[1] else in_plane[1]
    return StackGeometry(
        slice_axis=slice_axis,
        row_axis=row_axis,
        column_axis=column_axis,
        flip_rows=bool(up[row_axis] > 0),  # screen up is towards row 0
        flip_columns=bool(right[column_axis] < 0),
    )


@dataclass(frozen=True)
class StackPrompt:
    """A box prompt in predictor terms, with the geometry to map the result back."""

    geometry: StackGeometry
    slice_index: int
    box: Tuple[float, float, float, float]  # x0, y0, x1, y1 = column, row indices on the slice


def box_prompt(geometry: StackGeometry, corners_ijk: np.ndarray, shape_ijk: Sequence[int]) -> StackPrompt:
    """A prompt from the corners of a box (any number >= 2, continuous IJK array indices, all on one view
    plane): the slice through their mean, and their bounding rectangle clipped to the slice."""
    stack_points = geometry.stack_coordinates(corners_ijk, shape_ijk)
    slices = shape_ijk[geometry.slice_axis]
    height, width = shape_ijk[geometry.row_axis], shape_ijk[geometry.column_axis]
    slice_index = int(np.floor(stack_points[:, 0].mean() + 0.5))
    if not 0 <= slice_index < slices:
        raise BoxError(
            f"The view shows slice {slice_index} along {AXIS_NAMES[geometry.slice_axis]}, outside the volume "
            f"(slices 0..{slices - 1}). Move to a slice inside the volume and draw the box again."
        )
    (row0, column0), (row1, column1) = stack_points[:, 1:].min(axis=0), stack_points[:, 1:].max(axis=0)
    # Voxel centres are at integers, so the volume spans -0.5 .. n-0.5 in each direction.
    if column1 < -0.5 or row1 < -0.5 or column0 > width - 0.5 or row0 > height - 0.5:
        raise BoxError("The box lies entirely outside the volume. Draw it over the structure to segment.")
    column0, column1 = np.clip([column0, column1], 0, width - 1)
    row0, row1 = np.clip([row0, row1], 0, height - 1)
    if column1 - column0 < 1 or row1 - row0 < 1:
        raise BoxError(
            "The box is narrower than one voxel inside the volume. Drag a box around the whole structure."
        )
    return StackPrompt(geometry, slice_index, (float(column0), float(row0), float(column1), float(row1)))


def point_prompt(geometry: StackGeometry, point_ijk: Sequence[float], shape_ijk: Sequence[int]) -> Tuple[int, Tuple[float, float]]:
    """A click at a continuous IJK array index -> (slice index, (x, y)) on the stack, x = column, y = row.

    Same convention as :func:`box_prompt`: voxel centres at integers, so a click on the centre of the voxel in
    column 143, row 100 is the point (143, 100), as a box corner there would be.
    """
    slice_position, row, column = geometry.stack_coordinates(point_ijk, shape_ijk)[0]
    slice_index = int(np.floor(slice_position + 0.5))
    slices = shape_ijk[geometry.slice_axis]
    height, width = shape_ijk[geometry.row_axis], shape_ijk[geometry.column_axis]
    if not 0 <= slice_index < slices:
        raise PointError(
            f"The view shows slice {slice_index} along {AXIS_NAMES[geometry.slice_axis]}, outside the volume "
            f"(slices 0..{slices - 1}). Move to a slice inside the volume and click again."
        )
    if not (-0.5 <= column <= width - 0.5 and -0.5 <= row <= height - 0.5):
        raise PointError("The point lies outside the volume. Click on the structure or the background next to it.")
    return slice_index, (float(np.clip(column, 0, width - 1)), float(np.clip(row, 0, height - 1)))


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous matrix to (N, 3) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return points @ matrix[:3, :3].T + matrix[:3, 3]
