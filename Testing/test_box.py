"""The box drawn in a slice view (MedSAM2Lib.slicer_glue.box) on Slicer's real slice nodes: the slice it belongs to
whatever the view shows, its look off that slice, the mouse events, and rotating views to the segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from MedSAM2Lib.slicer_glue.box import (BoxTool, dashed, misaligned_views, rotate_views_to_segmentation,
                                        slice_tolerance_mm)
from MedSAM2Lib.slicer_glue.geometry import ObliqueViewError
from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic, matrix_to_array
from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras

from slicer_support import LESION_CENTRE as CENTRE
from slicer_support import BoxFillingPredictor, app, ras_of, volume_node, xy_of  # noqa: F401 (fixtures)

SLICE_SPACING = 2.5  # oblique_ijk_to_ras's K spacing
TOLERANCE = SLICE_SPACING / 2


def drag(tool, slice_node, start, end, **kwargs):
    events = [tool.handle("press", slice_node, start, False, False, TOLERANCE, **kwargs),
              tool.handle("move", slice_node, end, False, False, TOLERANCE),
              tool.handle("release", slice_node, end, False, False, TOLERANCE)]
    return events


def box_on_lesion(app, volume_node):
    slice_node = app.view(volume_node, "Axial", CENTRE)
    start = xy_of(slice_node, volume_node, (32.0, 14.0, CENTRE[2]))
    end = xy_of(slice_node, volume_node, (49.0, 27.0, CENTRE[2]))
    tool = BoxTool()
    drag(tool, slice_node, start, end)
    return tool, slice_node, start, end


def scroll(slice_node, volume_node, k):
    slice_node.JumpSliceByOffsetting(*ras_of(volume_node, (CENTRE[0], CENTRE[1], k)))


def test_the_boxs_slice_is_the_drawn_one_whatever_the_view_shows(app, volume_node):
    app.segmentation_for(volume_node)
    tool, slice_node, _, _ = box_on_lesion(app, volume_node)
    assert tool.box.display(TOLERANCE).on_slice
    scroll(slice_node, volume_node, 3)
    display = tool.box.display(TOLERANCE)
    assert not display.on_slice and display.line == "dashed" and display.opacity < 1
    assert display.offset_mm == pytest.approx(6 * SLICE_SPACING, abs=1e-6)
    predictor = BoxFillingPredictor()
    logic = MedSAM2Logic(predictor)
    prompt = logic.prompt_from_view(app.editor.source(), slice_node, tool.box.xyz_corners())
    assert prompt.stack.slice_index == 9  # drawn on K = 9, shown K = 3
    logic.segment(prompt, propagate=False)
    assert predictor.calls[0]["key_slice"] == 9


def test_the_tolerance_is_half_the_views_slice_spacing(app, volume_node):
    app.view(volume_node, "Axial", CENTRE)
    assert slice_tolerance_mm(app._slice_logics[-1]) == pytest.approx(TOLERANCE)


def test_off_its_slice_the_outline_is_dashed_and_on_it_whole(app, volume_node):
    tool, slice_node, start, end = box_on_lesion(app, volume_node)
    display, segments = tool.box.outline(TOLERANCE)
    assert display.line == "solid" and len(segments) == 4
    scroll(slice_node, volume_node, 12)
    display, segments = tool.box.outline(TOLERANCE)
    assert display.line == "dashed" and len(segments) > 8
    lengths = [np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in segments]
    assert max(lengths) <= 6 + 1e-9


def test_dashes_cover_half_of_each_side():
    segments = dashed([(0, 0), (24, 0), (24, 12), (0, 12)], dash=6)
    assert sum(np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in segments) == pytest.approx(36)


def test_a_corner_cannot_be_grabbed_on_another_slice(app, volume_node):
    tool, slice_node, start, end = box_on_lesion(app, volume_node)
    drawn = [corner.copy() for corner in tool.box.corners]
    scroll(slice_node, volume_node, 5)
    events = drag(tool, slice_node, end, (end[0] + 20, end[1] + 20))
    assert events[-1].changed and "previous one was on another slice" in events[-1].status
    assert tool.box.display(TOLERANCE).on_slice  # the new box is on the slice shown
    assert not np.allclose(tool.box.corners[0], drawn[0])


def test_a_corner_grab_on_its_slice_moves_only_that_corner(app, volume_node):
    tool, slice_node, start, end = box_on_lesion(app, volume_node)
    fixed = tool.box.corners[0].copy()
    new_end = (end[0] + 10, end[1] + 5)
    events = drag(tool, slice_node, end, new_end)
    assert events[0].consumed and not events[0].changed  # grabbed, not redrawn
    np.testing.assert_allclose(tool.box.corners[0], fixed)
    np.testing.assert_allclose(tool.box.xyz_corners()[1][:2], new_end, atol=1e-6)


def test_double_click_is_consumed_so_the_view_does_not_maximize(app, volume_node):
    tool, slice_node, start, _ = box_on_lesion(app, volume_node)
    assert tool.handle("double_click", slice_node, start, False, False, TOLERANCE).consumed
    assert not tool.handle("double_click", slice_node, start, True, False, TOLERANCE).consumed


def test_no_edits_while_running(app, volume_node):
    tool, slice_node, start, end = box_on_lesion(app, volume_node)
    assert not tool.handle("press", slice_node, start, False, True, TOLERANCE).consumed
    assert tool.box.xyz_corners()[0][:2] == pytest.approx(start)


def test_a_click_draws_no_box_and_keeps_the_one_drawn(app, volume_node):
    """A click adds a point (slicer_glue.gestures): the box drawn before stays, outline included."""
    tool, slice_node, start, end = box_on_lesion(app, volume_node)
    drawn = [corner.copy() for corner in tool.box.corners]
    press = tool.handle("press", slice_node, (100, 100), False, False, TOLERANCE)
    assert press.consumed and not press.changed  # nothing redrawn until it is dragged
    release = tool.handle("release", slice_node, (100.5, 100), False, False, TOLERANCE)
    assert release.clicked and release.changed and release.status is None
    np.testing.assert_array_equal(tool.box.corners, drawn)
    empty = BoxTool()
    assert drag(empty, slice_node, (100, 100), (100.5, 100))[-1].clicked and empty.box is None


def test_rotate_aligns_only_misaligned_views_to_the_segmentations_grid(app, volume_node):
    """The segmentation's grid is tilted 10 degrees about R from the volume's: views rotated to the volume, as
    RotateSliceToLowestVolumeAxes would, cannot take a box; rotating to the segmentation's grid fixes that."""
    tilt = np.radians(10.0)
    tilted = np.eye(4)
    tilted[1:3, 1:3] = [[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]
    segmentation_grid = add_volume(app.scene, np.zeros((20, 48, 64), np.int16), tilted @ oblique_ijk_to_ras(),
                                   "segmentation grid")
    segmentation = app.segmentation_for(volume_node)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(segmentation_grid)
    axial = app.view(volume_node, "Axial", CENTRE)  # rotated to the volume's axes
    source = app.editor.source()
    index_to_world = np.linalg.inv(source.ras_to_array_index())
    aligned = app.view(segmentation_grid, "Axial", CENTRE)  # already on the segmentation's grid
    aligned_before = matrix_to_array(aligned.GetSliceToRAS())
    logic = MedSAM2Logic(BoxFillingPredictor())
    corners = [(200, 200), (260, 250)]
    with pytest.raises(ObliqueViewError):
        logic.prompt_from_view(source, axial, corners)
    assert misaligned_views([axial, aligned], index_to_world) == [axial]
    assert rotate_views_to_segmentation([axial, aligned], source) == [axial]
    assert misaligned_views([axial, aligned], index_to_world) == []  # a box can be drawn on both now
    np.testing.assert_array_equal(matrix_to_array(aligned.GetSliceToRAS()), aligned_before)


def test_points_are_drawn_in_the_colour_of_their_label():
    """Both front ends draw points through set_point_glyphs: object green, background red."""
    import vtk

    from MedSAM2Lib.slicer_glue.gestures import POINT_COLOURS, set_point_glyphs

    polydata = vtk.vtkPolyData()
    set_point_glyphs(polydata, [(10.0, 20.0, 1), (30.0, 40.0, 0)])
    assert polydata.GetNumberOfPoints() == 2 and polydata.GetPoint(1) == (30.0, 40.0, 0.0)
    colours = polydata.GetPointData().GetScalars()
    assert [colours.GetTuple3(i) for i in range(2)] == [POINT_COLOURS[1], POINT_COLOURS[0]]
    assert POINT_COLOURS[0] == (230, 40, 40)


def test_points_are_rendered_in_the_colour_of_their_label():
    """What both front ends' points actor shows (gestures.point_glyph_mapper), rendered offscreen: each dot in
    its label's colour, not the actor's (white)."""
    import vtk
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from MedSAM2Lib.slicer_glue.gestures import POINT_COLOURS, point_glyph_mapper, set_point_glyphs

    polydata = vtk.vtkPolyData()
    set_point_glyphs(polydata, [(20.0, 30.0, 1), (60.0, 40.0, 0)])
    actor = vtk.vtkActor2D()
    actor.SetMapper(point_glyph_mapper(polydata))
    renderer = vtk.vtkRenderer()
    renderer.AddViewProp(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetSize(80, 60)
    window.AddRenderer(renderer)
    window.Render()
    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(window)
    capture.Update()
    pixels = vtk_to_numpy(capture.GetOutput().GetPointData().GetScalars()).reshape(60, 80, -1)[..., :3]
    np.testing.assert_array_equal(pixels[30, 20], POINT_COLOURS[1])
    np.testing.assert_array_equal(pixels[40, 60], POINT_COLOURS[0])
    np.testing.assert_array_equal(pixels[5, 5], (0, 0, 0))
