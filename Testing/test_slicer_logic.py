"""The Slicer-side logic on Slicer's real core (slicer-core): geometry, masking, overwrite, undo, errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from MedSAM2Lib.slicer_glue import scenario as slicer_scenario
from MedSAM2Lib.inference.predictor import Cancelled, PromptError, VolumePredictor
from MedSAM2Lib.inference.preprocessing import Windowing, window
from MedSAM2Lib.slicer_glue.geometry import BoxError, ObliqueViewError
from MedSAM2Lib.slicer_glue.logic import (EditorStateError, MedSAM2Logic, save_segment_as_labelmap,
                                     save_segmentation)
from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras, segment_array

from conftest import DATA
from slicer_support import (LESION_CENTRE, LESION_HALF_BOX, BoxFillingPredictor, app,  # noqa: F401
                            ijk_to_ras, lesion_volume, set_segment, volume_node, voxels_inside_box_in_view, xy_of)

ORIENTATIONS = {"Axial": 2, "Coronal": 1, "Sagittal": 0}  # view -> IJK axis it looks along (LPS-like volume)
CENTRE = LESION_CENTRE
HALF_BOX = LESION_HALF_BOX


def box_corners(slice_node, volume_node, axis: int):
    """Two opposite XY corners of a box around the lesion, on the view's plane."""
    low, high = np.array(CENTRE) - HALF_BOX, np.array(CENTRE) + HALF_BOX
    low[axis] = high[axis] = CENTRE[axis]
    return xy_of(slice_node, volume_node, low), xy_of(slice_node, volume_node, high)


def propagate_box(app, volume_node, orientation="Axial", predictor=None, **options):
    axis = ORIENTATIONS[orientation]
    slice_node = app.view(volume_node, orientation, CENTRE)
    corners = box_corners(slice_node, volume_node, axis)
    logic = MedSAM2Logic(predictor or BoxFillingPredictor())
    result = logic.process(app.editor, slice_node, corners, **options)
    return logic, slice_node, corners, result


def selected_segment(app, reference_node):
    return segment_array(app.editor_node.GetSegmentationNode(), app.editor_node.GetSelectedSegmentID(), reference_node)


def expected_box(volume_node, slice_node, corners, slices=None, axis=None):
    expected = voxels_inside_box_in_view(volume_node, slice_node, corners)
    if slices is not None:
        keep = np.zeros(expected.shape[::-1][axis], bool)
        keep[list(slices)] = True
        expected = expected * np.expand_dims(keep, tuple(a for a in range(3) if a != 2 - axis))
    return expected


def write_lps_file(tmp_path, volume_node, suffix):
    """The volume as a file written by SimpleITK in LPS, as scanners' tools write them."""
    volume = slicer.util.arrayFromVolume(volume_node)
    matrix = ijk_to_ras(volume_node)
    lps = np.diag([-1.0, -1.0, 1.0]) @ matrix[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).ravel().tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ matrix[:3, 3]).tolist())
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("source", ["scene", ".nii.gz", ".nrrd"])
def test_box_lands_where_it_was_drawn(app, volume_node, tmp_path, orientation, source):
    if source != "scene":
        loaded = app.volumes_logic.AddArchetypeVolume(str(write_lps_file(tmp_path, volume_node, source)), "loaded")
        np.testing.assert_allclose(ijk_to_ras(loaded), ijk_to_ras(volume_node), atol=1e-4)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(volume_node))
        volume_node = loaded
    app.segmentation_for(volume_node)
    predictor = BoxFillingPredictor()
    _, slice_node, corners, result = propagate_box(app, volume_node, orientation, predictor)
    axis = ORIENTATIONS[orientation]
    assert predictor.calls[0]["key_slice"] == round(CENTRE[axis])
    mask = selected_segment(app, volume_node)
    np.testing.assert_array_equal(mask, expected_box(volume_node, slice_node, corners))
    assert mask.sum() > 100 and result.slices == list(range(volume_node.GetImageData().GetDimensions()[axis]))


def test_segmentation_with_another_geometry_gets_a_correctly_placed_result(app, volume_node):
    fine = add_volume(app.scene, np.zeros((30, 70, 90), np.int16), oblique_ijk_to_ras((0.45, 0.5, 1.6), 20.0,
                                                                                      (14.0, -38.0, 101.0)), "fine")
    segmentation = app.segmentation_for(volume_node)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(fine)
    _, slice_node, corners, _ = propagate_box(app, volume_node)
    mask = segment_array(segmentation, app.editor_node.GetSelectedSegmentID(), fine)
    # On the segmentation's finer grid, the box covers the voxels whose centres the view shows inside it;
    # the slice direction covers the whole source volume, which the finer grid only partly overlaps.
    expected = voxels_inside_box_in_view(fine, slice_node, corners)
    source_ras = np.linalg.inv(ijk_to_ras(volume_node))
    k, j, i = np.nonzero(expected)
    ijk_in_source = source_ras @ ijk_to_ras(fine) @ np.stack([i, j, k, np.ones(i.size)])
    outside_source = (ijk_in_source[2] < -0.5) | (ijk_in_source[2] > 19.5)
    expected[k[outside_source], j[outside_source], i[outside_source]] = 0
    assert mask.sum() > 1000
    assert np.count_nonzero(mask != expected) <= 0.02 * expected.sum()  # resampled source: edge voxels only


def test_editable_area_inside_another_segment(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    limit = lesion_volume()[:] * 0
    limit[:, :, :40] = 1  # left half of the box
    limit_id = segmentation.GetSegmentation().AddEmptySegment("", "limit")
    set_segment(segmentation, limit_id, limit.astype(np.uint8), volume_node)
    app.editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    app.editor_node.SetMaskSegmentID(limit_id)
    _, slice_node, corners, _ = propagate_box(app, volume_node)
    expected = expected_box(volume_node, slice_node, corners) * limit
    assert 0 < expected.sum() < expected_box(volume_node, slice_node, corners).sum()
    np.testing.assert_array_equal(selected_segment(app, volume_node), expected)
    # Overwrite-all (the default) moves the painted voxels out of the masking segment, as Slicer's effects do.
    np.testing.assert_array_equal(segment_array(segmentation, limit_id, volume_node), limit * (1 - expected))


def test_intensity_range_mask(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    app.editor_node.SetSourceVolumeIntensityMask(True)
    app.editor_node.SetSourceVolumeIntensityMaskRange(100, 1000)
    _, slice_node, corners, _ = propagate_box(app, volume_node)
    bright = (slicer.util.arrayFromVolume(volume_node) >= 100) & (slicer.util.arrayFromVolume(volume_node) <= 1000)
    expected = expected_box(volume_node, slice_node, corners) * bright
    assert expected.sum() > 50
    np.testing.assert_array_equal(selected_segment(app, volume_node), expected)


@pytest.mark.parametrize("mode, other_keeps_overlap", [("OverwriteAllSegments", False),
                                                       ("OverwriteVisibleSegments", False),
                                                       ("OverwriteNone", True)])
def test_overwrite_modes(app, volume_node, mode, other_keeps_overlap):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    other = np.zeros(lesion_volume().shape, np.uint8)
    other[5:14, 15:26, 30:50] = 1
    other_id = segmentation.GetSegmentation().AddEmptySegment("", "other")
    set_segment(segmentation, other_id, other, volume_node)
    app.editor_node.SetOverwriteMode(getattr(slicer.vtkMRMLSegmentEditorNode, mode))
    _, slice_node, corners, _ = propagate_box(app, volume_node)
    box = expected_box(volume_node, slice_node, corners)
    remaining = segment_array(segmentation, other_id, volume_node)
    overlap = box & other
    assert overlap.sum() > 0
    assert bool(remaining[overlap == 1].all()) == other_keeps_overlap
    np.testing.assert_array_equal(remaining[other & ~box == 1], 1)
    # The edited segment gets the whole box; "none" lets it overlap the other segment instead of erasing it.
    np.testing.assert_array_equal(selected_segment(app, volume_node), box)


def test_undo_and_redo(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    _, slice_node, corners, _ = propagate_box(app, volume_node)
    box = expected_box(volume_node, slice_node, corners)
    assert app.editor_logic.CanUndo()
    app.editor_logic.Undo()
    assert not selected_segment(app, volume_node).any()
    app.editor_logic.Redo()
    np.testing.assert_array_equal(selected_segment(app, volume_node), box)


def test_segment_is_created_and_selected_when_none_is(app, volume_node):
    segmentation = app.segmentation_for(volume_node)
    propagate_box(app, volume_node)
    segment_id = app.editor_node.GetSelectedSegmentID()
    assert segment_id and segmentation.GetSegmentation().GetNumberOfSegments() == 1
    app.editor_logic.Undo()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0


def test_cancel_half_way_leaves_everything_as_it_was(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    before = np.zeros(lesion_volume().shape, np.uint8)
    before[2:4, 2:8, 2:9] = 1
    set_segment(segmentation, app.editor_node.GetSelectedSegmentID(), before, volume_node)
    seen = []
    with pytest.raises(Cancelled):
        propagate_box(app, volume_node, progress=lambda done, total: seen.append((done, total)),
                      should_cancel=lambda: len(seen) >= 3)
    assert seen == [(1, 20), (2, 20), (3, 20)]
    np.testing.assert_array_equal(selected_segment(app, volume_node), before)
    assert not app.editor_logic.CanUndo()


def test_preview_changes_only_the_box_slice(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    everywhere = np.ones(lesion_volume().shape, np.uint8)
    set_segment(segmentation, app.editor_node.GetSelectedSegmentID(), everywhere, volume_node)
    _, slice_node, corners, result = propagate_box(app, volume_node, propagate=False)
    key = round(CENTRE[2])
    mask = selected_segment(app, volume_node)
    assert result.slices == [key]
    np.testing.assert_array_equal(mask[key], expected_box(volume_node, slice_node, corners)[key])
    assert mask[:key].all() and mask[key + 1:].all()


@pytest.mark.parametrize("direction, slice_range, slices", [("forward", None, range(9, 20)),
                                                            ("backward", None, range(0, 10)),
                                                            ("both", (5, 12), range(5, 13))])
def test_direction_and_range_limit_the_written_slices(app, volume_node, direction, slice_range, slices):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    marker = np.zeros(lesion_volume().shape, np.uint8)
    marker[:, 40:46, 2:6] = 1  # outside the box, on every slice
    set_segment(segmentation, app.editor_node.GetSelectedSegmentID(), marker, volume_node)
    _, slice_node, corners, result = propagate_box(app, volume_node, direction=direction, slice_range=slice_range)
    assert result.slices == list(slices)
    mask = selected_segment(app, volume_node)
    written = np.zeros(mask.shape[0], bool)
    written[list(slices)] = True
    box = expected_box(volume_node, slice_node, corners)
    np.testing.assert_array_equal(mask[written], box[written])  # Set mode: the written slices are the box only
    np.testing.assert_array_equal(mask[~written], marker[~written])  # the rest is untouched


def test_oblique_view_is_refused_with_the_fix(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    slice_node = app.view(volume_node, "Axial", CENTRE)
    angle = np.radians(10)
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]  # about R
    slice_to_ras = slice_node.GetSliceToRAS()
    slice_to_ras.DeepCopy(slicer.util.vtkMatrixFromArray(tilt @ slicer.util.arrayFromVTKMatrix(slice_to_ras)))
    slice_node.UpdateMatrices()
    with pytest.raises(ObliqueViewError, match="Rotate the slice views to the volume plane"):
        MedSAM2Logic(BoxFillingPredictor()).process(app.editor, slice_node, ((10, 10), (60, 50)))
    assert not app.editor_logic.CanUndo()


@pytest.mark.parametrize("corners, message", [(((100, 100), (100, 140)), "narrower than one voxel"),
                                              (((-900, -900), (-800, -850)), "entirely outside the volume")])
def test_empty_or_outside_box(app, volume_node, corners, message):
    app.segmentation_for(volume_node, with_segment=True)
    slice_node = app.view(volume_node, "Axial", CENTRE)
    with pytest.raises(BoxError, match=message):
        MedSAM2Logic(BoxFillingPredictor()).process(app.editor, slice_node, corners)


def test_view_outside_the_volume(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    slice_node = app.view(volume_node, "Axial", (40, 20, 30))  # K = 30 of 0..19
    with pytest.raises(BoxError, match="outside the volume"):
        MedSAM2Logic(BoxFillingPredictor()).process(app.editor, slice_node, ((100, 100), (200, 200)))


def test_single_slice_volume_is_refused(app):
    flat = add_volume(app.scene, lesion_volume()[9:10], oblique_ijk_to_ras(), "flat")
    app.segmentation_for(flat, with_segment=True)
    with pytest.raises(EditorStateError, match="a single slice"):
        app.editor.source()


def test_vector_volume_is_refused(app):
    vector = app.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 4)
    image.AllocateScalars(3, 3)  # VTK_UNSIGNED_CHAR, 3 components
    vector.SetAndObserveImageData(image)
    vector.CreateDefaultDisplayNodes()
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(vector)
    app.editor_node.SetAndObserveSegmentationNode(segmentation)
    app.editor_node.SetAndObserveSourceVolumeNode(vector)
    with pytest.raises(EditorStateError, match="3 values per voxel"):
        app.editor.source()


def test_missing_source_volume(app, volume_node):
    app.segmentation_for(volume_node)
    app.editor_node.SetAndObserveSourceVolumeNode(None)
    with pytest.raises(EditorStateError, match="Select a source volume"):
        app.editor.source()


def test_box_given_as_ras_points_equals_the_drawn_box(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    slice_node = app.view(volume_node, "Axial", CENTRE)
    corners = box_corners(slice_node, volume_node, 2)
    logic = MedSAM2Logic(BoxFillingPredictor())
    source = app.editor.source()
    drawn = logic.prompt_from_view(source, slice_node, corners)
    xy_to_ras = slicer.util.arrayFromVTKMatrix(slice_node.GetXYToRAS())
    ras = [(xy_to_ras @ np.array([x, y, 0, 1.0]))[:3] for x, y in corners]
    given = logic.prompt_from_ras(source, ras)
    assert given.stack.geometry == drawn.stack.geometry and given.stack.slice_index == drawn.stack.slice_index
    np.testing.assert_allclose(given.stack.box, drawn.stack.box, atol=1e-6)
    with pytest.raises(EditorStateError, match="not on one slice"):
        logic.prompt_from_ras(source, [ras[0], ras[1] + np.array([0, 0, 30.0])])


def test_display_window_is_the_default_intensity_mapping(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    display = volume_node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(200, 60)
    predictor = BoxFillingPredictor()
    propagate_box(app, volume_node, predictor=predictor)
    stack = predictor.calls[0]["volume"]
    # LPS-like volume in an axial view: the stack is the (K, J, I) array itself.
    np.testing.assert_array_equal(stack, window(slicer.util.arrayFromVolume(volume_node), -40, 160))
    predictor.calls.clear()
    propagate_box(app, volume_node, predictor=predictor, windowing=Windowing("lung"))
    np.testing.assert_array_equal(predictor.calls[0]["volume"],
                                  window(slicer.util.arrayFromVolume(volume_node), -1350, 150))


def test_prompt_errors_from_the_predictor_reach_the_caller(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    with pytest.raises(PromptError, match="slice range"):
        propagate_box(app, volume_node, slice_range=(12, 15))
    assert not app.editor_logic.CanUndo()


def test_real_tiny_model_end_to_end(app, tiny_model):
    """The shared scenario: the segment equals the official pipeline's mask mapped back voxel by voxel."""
    predictor = VolumePredictor(tiny_model)

    def segment_box(scenario):
        logic = MedSAM2Logic(predictor)
        logic.process(app.editor, scenario.slice_node, scenario.xy_corners, windowing=Windowing("none"))

    scenario = slicer_scenario.run(app.scene, app.slice_logic(), DATA, segment_box, app.editor_logic.Undo,
                                   editor_node=app.editor_node)
    assert scenario.expected_mask.sum() > 0


def test_save_segmentation_and_labelmap(app, volume_node, tmp_path):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    _, slice_node, corners, _ = propagate_box(app, volume_node)
    box = expected_box(volume_node, slice_node, corners)
    save_segmentation(segmentation, tmp_path / "result.seg.nrrd")
    reloaded = app.load_segmentation(tmp_path / "result.seg.nrrd")
    segment_id = reloaded.GetSegmentation().GetNthSegmentID(0)
    np.testing.assert_array_equal(segment_array(reloaded, segment_id, volume_node), box)

    for suffix in (".nii.gz", ".nrrd"):
        path = tmp_path / f"segment{suffix}"
        save_segment_as_labelmap(segmentation, app.editor_node.GetSelectedSegmentID(), volume_node, path)
        image = sitk.ReadImage(str(path))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image) > 0, box.astype(bool))
        matrix = ijk_to_ras(volume_node)
        lps = np.diag([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)) * image.GetSpacing(),
                                   lps @ matrix[:3, :3], atol=1e-5)
        np.testing.assert_allclose(image.GetOrigin(), lps @ matrix[:3, 3], atol=1e-4)
