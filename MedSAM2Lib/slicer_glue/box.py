"""The box prompt drawn in a slice view, without Qt: its corners, the slice it belongs to, how it looks when the
view shows another slice, what each mouse event does to it, and rotating views onto the segmentation's grid.

The effect (MedSAM2Slicer) only maps VTK interactor events to :meth:`BoxTool.handle` (through
slicer_glue.gestures) and copies :meth:`SliceBox.outline` into a 2D actor.

The corners are kept in RAS, so pan and zoom move the box with the image and the box keeps the slice it was
drawn on when the view scrolls away. Like Slicer's Draw effect (SegmentEditorDrawEffect.processViewNodeEvents,
which dashes its outline once the slice offset changes), the box is drawn solid only on its own slice and
dashed elsewhere; a corner can be grabbed only on the box's slice, so a drag on another slice draws a new box
there instead of silently moving the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .geometry import ObliqueViewError, stack_geometry

CORNER_GRAB_PIXELS = 8
DASH_PIXELS = 6  # dash and gap length of the outline off its slice
OFF_SLICE_OPACITY = 0.6


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def xy_to_ras(slice_node, xy: Sequence[float]) -> np.ndarray:
    """A view pixel (x, y) on the slice shown, in RAS."""
    return (_matrix(slice_node.GetXYToRAS()) @ np.array([xy[0], xy[1], 0.0, 1.0]))[:3]


def ras_to_xyz(slice_node, ras: Sequence[float]) -> np.ndarray:
    """RAS in the view's XYZ: x, y pixels and z in slices from the one shown."""
    return (np.linalg.inv(_matrix(slice_node.GetXYToRAS())) @ np.append(np.asarray(ras, float), 1.0))[:3]


@dataclass(frozen=True)
class BoxDisplay:
    """How the box is shown in its view now."""

    on_slice: bool
    offset_mm: float  # signed distance from the slice shown to the box's plane, along the view normal

    @property
    def line(self) -> str:
        return "solid" if self.on_slice else "dashed"

    @property
    def opacity(self) -> float:
        return 1.0 if self.on_slice else OFF_SLICE_OPACITY


def box_display(corners_ras: Sequence[Sequence[float]], slice_node, tolerance_mm: float) -> BoxDisplay:
    """Whether the view shows the box's slice: the box's plane is within ``tolerance_mm`` (half the slice
    spacing) of the slice shown."""
    slice_to_ras = _matrix(slice_node.GetSliceToRAS())
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    offset = float(np.mean([normal @ (np.asarray(corner) - slice_to_ras[:3, 3]) for corner in corners_ras]))
    return BoxDisplay(abs(offset) <= tolerance_mm, offset)


def slice_tolerance_mm(slice_logic) -> float:
    """How far from the slice a view shows the box still counts as on it: half the view's slice spacing (one
    scroll step is a whole spacing, vtkMRMLSliceLogic::GetLowestVolumeSliceSpacing)."""
    return slice_logic.GetLowestVolumeSliceSpacing()[2] / 2


def dashed(points: Sequence[Tuple[float, float]], dash: float = DASH_PIXELS) -> List[Tuple[Tuple[float, float], Tuple[float, float]]]:
    """The closed polygon through ``points`` cut into dashes of ``dash`` pixels separated by gaps of the same."""
    segments = []
    for start, end in zip(points, list(points[1:]) + [points[0]]):
        start, end = np.asarray(start, float), np.asarray(end, float)
        length = float(np.linalg.norm(end - start))
        for position in np.arange(0.0, length, 2 * dash):
            a = start + (end - start) * position / length
            b = start + (end - start) * min(position + dash, length) / length
            segments.append((tuple(a), tuple(b)))
    return segments


class SliceBox:
    """A box drawn in one slice view: two opposite corners in RAS, one of them being dragged."""

    def __init__(self, slice_node, xy: Sequence[float]) -> None:
        self.slice_node = slice_node
        self.corners = [xy_to_ras(slice_node, xy), xy_to_ras(slice_node, xy)]
        self.moving_corner = 1
        self.dragging = True

    def xyz_corners(self) -> List[np.ndarray]:
        """The corners in the view's XYZ; z locates the box's slice, so prompts use it whatever the view shows."""
        return [ras_to_xyz(self.slice_node, corner) for corner in self.corners]

    def display(self, tolerance_mm: float) -> BoxDisplay:
        return box_display(self.corners, self.slice_node, tolerance_mm)

    def grab_corner(self, xy: Sequence[float], tolerance_mm: float) -> bool:
        """Start dragging the rectangle's corner within CORNER_GRAB_PIXELS of xy; only on the box's slice."""
        if not self.display(tolerance_mm).on_slice:
            return False
        (x0, y0, z), (x1, y1, _) = self.xyz_corners()
        for x, y in ((x0, y0), (x1, y1), (x0, y1), (x1, y0)):
            if abs(x - xy[0]) <= CORNER_GRAB_PIXELS and abs(y - xy[1]) <= CORNER_GRAB_PIXELS:
                # Keep the diagonally opposite corner fixed and move the grabbed one.
                opposite = (x1 if x == x0 else x0, y1 if y == y0 else y0)
                self.corners = [self._ras(opposite, z), self._ras((x, y), z)]
                self.moving_corner = 1
                self.dragging = True
                return True
        return False

    def move_corner(self, xy: Sequence[float]) -> None:
        """Move the dragged corner to xy, staying on the box's plane."""
        z = self.xyz_corners()[1 - self.moving_corner][2]
        self.corners[self.moving_corner] = self._ras(xy, z)

    def outline(self, tolerance_mm: float):
        """(display, segments): the rectangle in view XY as line segments, whole if the view shows the box's
        slice, dashed otherwise."""
        display = self.display(tolerance_mm)
        (x0, y0, _), (x1, y1, _) = self.xyz_corners()
        rectangle = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        if display.on_slice:
            return display, list(zip(rectangle, rectangle[1:] + rectangle[:1]))
        return display, dashed(rectangle)

    def size_pixels(self) -> Tuple[float, float]:
        (x0, y0, _), (x1, y1, _) = self.xyz_corners()
        return abs(x1 - x0), abs(y1 - y0)

    def _ras(self, xy: Sequence[float], z: float) -> np.ndarray:
        return (_matrix(self.slice_node.GetXYToRAS()) @ np.array([xy[0], xy[1], z, 1.0]))[:3]


@dataclass(frozen=True)
class BoxEvent:
    """What the effect does after an interaction event."""

    consumed: bool  # abort the event: the view does not also act on it
    changed: bool = False  # the box changed: redraw it, update the buttons
    status: Optional[str] = None  # a new status line
    clicked: bool = False  # a press and release without dragging: no box drawn, the previous box kept


class BoxTool:
    """The box and what mouse events in slice views do to it while the effect is active.

    Events: "press", "move", "release" (left button), "double_click". Keys are not the box's: Esc never
    reaches an effect (the Segment Editor's shortcut for deactivating it), and Backspace/Delete is a session
    gesture (slicer_glue.gestures).
    """

    def __init__(self) -> None:
        self.box: Optional[SliceBox] = None
        self._before_press: Optional[SliceBox] = None  # kept if the press turns out to be a click
        self._replacing_off_slice = False

    def handle(self, event: str, slice_node, xy: Sequence[float], any_modifier: bool, running: bool,
               tolerance_mm: float) -> BoxEvent:
        if event == "double_click":
            # Without this the view widget maximizes on a double-click (Draw handles it too).
            return BoxEvent(not any_modifier)
        if running:
            return BoxEvent(False)
        if event == "press" and not any_modifier:
            box = self.box
            if box is not None and box.slice_node is slice_node and box.grab_corner(xy, tolerance_mm):
                return BoxEvent(True)
            self._before_press = box
            self._replacing_off_slice = (box is not None and box.slice_node is slice_node
                                         and not box.display(tolerance_mm).on_slice)
            self.box = SliceBox(slice_node, xy)  # not drawn until it is dragged: it may be a click
            return BoxEvent(True)
        box = self.box
        if box is None or box.slice_node is not slice_node or not box.dragging:
            return BoxEvent(False)
        if event == "move":
            box.move_corner(xy)
            return BoxEvent(True, changed=True)
        if event == "release":
            box.move_corner(xy)
            box.dragging = False
            if min(box.size_pixels()) < 2:
                self.box = self._before_press
                return BoxEvent(True, changed=True, clicked=True)
            if self._replacing_off_slice:
                return BoxEvent(True, changed=True,
                                status="New box on this slice (the previous one was on another slice).")
            return BoxEvent(True, changed=True, status="Box drawn.")
        return BoxEvent(False)


def misaligned_views(slice_nodes, index_to_world: np.ndarray) -> list:
    """The slice views whose plane is not a voxel plane of the grid (4x4 index to world): those on which a box
    cannot be drawn (the same test as the prompt's, geometry.stack_geometry)."""
    world_to_index = np.linalg.inv(index_to_world)
    misaligned = []
    for slice_node in slice_nodes:
        xy_to_index = world_to_index @ _matrix(slice_node.GetXYToRAS())
        try:
            stack_geometry(xy_to_index[:3, 0], xy_to_index[:3, 1])
        except ObliqueViewError:
            misaligned.append(slice_node)
    return misaligned


def rotate_views_to_segmentation(slice_nodes, source) -> list:
    """Rotate the misaligned views to the grid MedSAM2 computes on: the editor's aligned source image
    (a logic.SourceImage, whose ras_to_array_index maps world RAS to its voxel indices); returns those rotated."""
    return rotate_views_to_grid(slice_nodes, np.linalg.inv(source.ras_to_array_index()))


def rotate_views_to_grid(slice_nodes, index_to_world: np.ndarray) -> list:
    """Rotate the misaligned views to the grid's axes, as the Segment Editor's own "rotate to segmentation"
    button does (qMRMLSegmentEditorWidget::rotateSliceViewsToSegmentation: vtkMRMLSliceNode::RotateToAxes with
    the segmentation's IJK-to-RAS); returns those rotated. Views already aligned are left as they are.

    The grid is the one MedSAM2 computes on: the segmentation's (the aligned source image's), not each view's
    background volume, which may have other axes.
    """
    import slicer  # Slicer's MRML; kept out of module import so box geometry loads anywhere

    rotated = misaligned_views(slice_nodes, index_to_world)
    matrix = slicer.util.vtkMatrixFromArray(index_to_world)
    for slice_node in rotated:
        slice_node.RotateToAxes(matrix)
    return rotated
