"""The effect's interactive workflow on Slicer's real core (slicer-core) with the tiny fixture model: box
preview, propagation, corrections by points, boxes and repainted slices from view coordinates, one session
per segment, undo, refusals, the session stored with the segment."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.inference.session import Session
from MedSAM2Lib.inference.preprocessing import Windowing
from MedSAM2Lib.slicer_glue import scenario as slicer_scenario
from MedSAM2Lib.apps.cli import main
from MedSAM2Lib.inference.session_file import SessionFileError, read_session
from MedSAM2Lib.slicer_glue.interactive import (SESSION_TAG, InteractionError, InteractiveOptions,
                                                InteractiveSegmenter, session_tag_from_file, write_session_from_tag)
from MedSAM2Lib.slicer_glue.geometry import PointError, point_prompt, transform_points
from MedSAM2Lib.slicer_glue.gestures import ViewGestures
from MedSAM2Lib.slicer_glue.logic import (MedSAM2Logic, SegmentEditorLogicBackend, grid_part, labelmap_stamp,
                                          save_segmentation, segment_mask_on, view_geometry, view_to_index)
from MedSAM2Lib.slicer_glue.run_controller import RunController, saved_session_tag, selected_has_saved_session
from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras, segment_array

from conftest import DATA
from slicer_support import app, lesion_volume, set_segment, xy_of  # noqa: F401 (app is a fixture)

RAW = InteractiveOptions(windowing=Windowing("none"))  # the fixture volume is already 0..255
LESION = InteractiveOptions(windowing=Windowing("window", (0.0, 200.0)))
CENTRE = (40.3, 20.4, 3.0)  # on the small lesion volume's slice K = 3
HALF_BOX = np.array([8.6, 6.3, 2.2])  # in IJK; none along the view's axis


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return VolumePredictor(tiny_model)


class HeadlessActions:
    """The scenario's actions on InteractiveSegmenter, as the effect performs them."""

    def __init__(self, app, predictor, options=RAW):
        self.app, self.options = app, options
        self.segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
        self.messages = []

    def box(self, slice_node, xy_corners):
        self.messages.append(self.segmenter.box(self.app.editor, slice_node, xy_corners, self.options).message)

    def propagate(self):
        self.messages.append(self.segmenter.propagate(self.app.editor, self.options).message)

    def points(self, slice_node, clicks):
        self.messages.append(self.segmenter.points(self.app.editor, slice_node, clicks, self.options).message)

    def use_segment_on_slice(self, slice_node):
        self.messages.append(self.segmenter.use_segment_on_slice(self.app.editor, slice_node, self.options).message)


@pytest.mark.parametrize("orientation", ["Axial", "Coronal", "Sagittal"])
def test_a_click_maps_to_the_pixel_a_box_corner_would(app, orientation):
    """Voxel centres are integer pixel coordinates for points as for boxes, in every view of the oblique volume."""
    scenario = slicer_scenario.set_up_correction(app.scene, app.slice_logic(), DATA, orientation, "points",
                                                 app.editor_node)
    source = app.editor.source()
    scenario.show_slice(17)
    to_index = view_to_index(source, scenario.slice_node)
    geometry = view_geometry(source, scenario.slice_node)
    assert geometry == scenario.storage  # the view shows the fixture's slices as they are
    for x, y in ((143, 100), (40, 200), (0, 0), (255, 223)):
        index, point = point_prompt(geometry, transform_points(to_index, [[*scenario.xy(17, x, y), 0.0]])[0],
                                    source.shape_ijk)
        assert index == 17
        np.testing.assert_allclose(point, (x, y), atol=1e-9)
    prompt = MedSAM2Logic(None).prompt_from_view(source, scenario.slice_node,
                                                 (scenario.xy(17, 104, 70), scenario.xy(17, 183, 131)))
    np.testing.assert_allclose(prompt.stack.box, (104, 70, 183, 131), atol=1e-9)
    with pytest.raises(PointError, match="outside the volume"):
        point_prompt(geometry, transform_points(to_index, [[*scenario.xy(17, -3, 10), 0.0]])[0], source.shape_ijk)


@pytest.mark.parametrize("orientation", ["Axial", "Coronal", "Sagittal"])
def test_correction_by_points_equals_the_official_session(app, predictor, orientation):
    """Box, propagate, points on tracked slices of both directions, update: the official session's mask."""
    actions = HeadlessActions(app, predictor)
    scenario = slicer_scenario.run_correction(app.scene, app.slice_logic(), DATA, orientation, "points", actions,
                                              app.editor_logic.Undo, editor_node=app.editor_node)
    assert scenario.reference.final.sum() > 0
    assert "correction of the forward tracking" in actions.messages[2]
    assert "correction of the backward tracking" in actions.messages[3]


def test_repainted_slice_as_mask_prompt_equals_the_official_session(app, predictor):
    actions = HeadlessActions(app, predictor)
    slicer_scenario.run_correction(app.scene, app.slice_logic(), DATA, "Sagittal", "mask", actions,
                                   app.editor_logic.Undo, editor_node=app.editor_node)
    assert "slice 7 is its prompt: a correction of the backward tracking" in actions.messages[-1]


def write_volume(volume_node, path):
    """The volume as Slicer saves it (its voxels, spacing, origin and directions)."""
    storage = volume_node.GetScene().AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(volume_node)
    volume_node.GetScene().RemoveNode(storage)


@pytest.mark.parametrize("orientation", ["Coronal", "Sagittal"])
def test_the_session_file_of_a_segment_reproduces_it_from_the_volume_file(app, predictor, orientation, tmp_path,
                                                                           checkpoints):
    """Box, propagate, correction points, update in a coronal or sagittal view of the oblique anisotropic volume;
    the segment's tag as a session file; ``medsam2 segment VOLUME --prompts FILE`` gives the segment voxel by
    voxel on the volume's grid."""
    actions = HeadlessActions(app, predictor)
    scenario = slicer_scenario.run_correction(app.scene, app.slice_logic(), DATA, orientation, "points", actions,
                                              app.editor_logic.Undo, editor_node=app.editor_node)
    actions.propagate()  # Update again: run_correction ends by undoing it
    segment_id = app.editor_node.GetSelectedSegmentID()
    expected = segment_array(scenario.segmentation_node, segment_id, scenario.volume_node)
    scenario.reference.check(scenario.storage.to_stack(expected), "The updated segment")
    write_volume(scenario.volume_node, tmp_path / "volume.nrrd")
    write_session_from_tag(saved_session_tag(scenario.segmentation_node, segment_id), tmp_path / "session.json")
    document = json.loads((tmp_path / "session.json").read_text())
    assert document["stack"] == scenario.storage.as_json() and document["window"] == "none"
    # How it computed travels with it: the command line's defaults (auto precision, early stop) do not apply.
    assert document["options"] == {"precision": "float32", "early_stop": None, "fill_holes": True,
                                   "keep_largest_component": True}
    output = tmp_path / "mask.nrrd"
    assert main(["segment", str(tmp_path / "volume.nrrd"), "--prompts", str(tmp_path / "session.json"), "-o",
                 str(output), "--checkpoint", str(checkpoints["tiny"]),
                 "--config", str(DATA / "medsam2_tiny_test.yaml")]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), expected)


# -- a small volume for the rest -------------------------------------------------------------------------


@pytest.fixture
def volume_node(app):
    return add_volume(app.scene, lesion_volume((7, 48, 64)), oblique_ijk_to_ras(), "lesion")


def box_in(app, volume_node, orientation="Axial", centre=CENTRE):
    slice_node = app.view(volume_node, orientation, centre)
    half = HALF_BOX.copy()
    half[{"Axial": 2, "Coronal": 1, "Sagittal": 0}[orientation]] = 0
    low, high = np.array(centre) - half, np.array(centre) + half
    return slice_node, (xy_of(slice_node, volume_node, low), xy_of(slice_node, volume_node, high))


def boxed_and_propagated(app, volume_node, predictor, options=LESION):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    slice_node, corners = box_in(app, volume_node)
    segmenter.box(app.editor, slice_node, corners, options)
    segmenter.propagate(app.editor, options)
    return segmentation, segmenter, slice_node


def selected(app, volume_node):
    return segment_array(app.editor_node.GetSegmentationNode(), app.editor_node.GetSelectedSegmentID(), volume_node)


def test_a_segment_without_a_saved_session_has_none_to_restore(app, volume_node):
    assert not selected_has_saved_session(None)
    assert not selected_has_saved_session(app.editor_node)  # no segmentation selected
    app.segmentation_for(volume_node, with_segment=True)
    assert not selected_has_saved_session(app.editor_node)


def test_correction_on_a_slice_of_another_axis_is_refused(app, volume_node, predictor):
    _, segmenter, _ = boxed_and_propagated(app, volume_node, predictor)
    before = selected(app, volume_node)
    coronal = app.view(volume_node, "Coronal", CENTRE)
    with pytest.raises(InteractionError, match="runs on slices along K .*this view shows slices along J"):
        segmenter.points(app.editor, coronal, [(xy_of(coronal, volume_node, CENTRE), 1)], LESION)
    with pytest.raises(InteractionError, match="slices along K"):
        segmenter.use_segment_on_slice(app.editor, coronal, LESION)
    np.testing.assert_array_equal(selected(app, volume_node), before)
    assert len(segmenter.sessions) == 1


def test_switching_segments_keeps_both_sessions(app, volume_node, predictor):
    segmentation, segmenter, slice_node = boxed_and_propagated(app, volume_node, predictor)
    first = app.editor_node.GetSelectedSegmentID()
    first_session = segmenter.session_of(app.editor)
    second = segmentation.GetSegmentation().AddEmptySegment("", "second")
    app.editor_node.SetSelectedSegmentID(second)
    other_slice, corners = box_in(app, volume_node, centre=(20.0, 30.0, 4.0))
    segmenter.box(app.editor, other_slice, corners, LESION)
    second_session = segmenter.session_of(app.editor)
    assert second_session is not first_session and len(segmenter.sessions) == 2
    app.editor_node.SetSelectedSegmentID(first)
    assert segmenter.session_of(app.editor) is first_session
    result = segmenter.points(app.editor, slice_node, [(xy_of(slice_node, volume_node, (45.0, 22.0, 3.0)), 0)], LESION)
    assert result.segment_id == first and "added to its prompt" in result.message  # slice 3 holds the box
    app.editor_node.SetSelectedSegmentID(second)
    assert segmenter.session_of(app.editor) is second_session


def test_undo_reverts_the_segment_and_keeps_the_prompts(app, volume_node, predictor):
    _, segmenter, slice_node = boxed_and_propagated(app, volume_node, predictor)
    propagated = selected(app, volume_node)
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    result = segmenter.points(app.editor, view5, [(xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)], LESION)
    assert "correction of the forward tracking" in result.message
    corrected = selected(app, volume_node)
    assert np.count_nonzero(corrected != propagated)
    app.editor_logic.Undo()
    np.testing.assert_array_equal(selected(app, volume_node), propagated)
    assert segmenter.session_of(app.editor).prompts[5].labels == [0]
    segmenter.propagate(app.editor, LESION)  # recomputes from the prompts kept: the correction is back
    updated = selected(app, volume_node)
    np.testing.assert_array_equal(updated[5], corrected[5])


def test_points_are_shown_on_their_slice_only_and_removable(app, volume_node, predictor):
    _, segmenter, slice_node = boxed_and_propagated(app, volume_node, predictor)
    before = selected(app, volume_node)
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    clicks = [(xy_of(view5, volume_node, (44.0, 22.0, 5.0)), 1), (xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)]
    for click in clicks:
        segmenter.points(app.editor, view5, [click], LESION)
    shown = segmenter.points_in_view(app.editor, view5)
    np.testing.assert_allclose([s[:2] for s in shown], [c[0] for c in clicks], atol=1e-6)
    assert [s[2] for s in shown] == [1, 0]
    assert segmenter.points_in_view(app.editor, slice_node) == []  # slice 3 has the box, no points
    coronal = app.view(volume_node, "Coronal", CENTRE)
    assert segmenter.points_in_view(app.editor, coronal) == []
    assert segmenter.point_near(app.editor, view5, np.add(clicks[0][0], (30, 30)), 8) is None
    near = segmenter.point_near(app.editor, view5, np.add(clicks[0][0], (3, -2)), 8)
    assert near == (5, 0)
    segmenter.remove_point(app.editor, *near, LESION)
    assert [s[2] for s in segmenter.points_in_view(app.editor, view5)] == [0]
    segmenter.remove_last_point(app.editor, LESION)
    assert segmenter.points_in_view(app.editor, view5) == [] and 5 not in segmenter.session_of(app.editor).prompts
    segmenter.propagate(app.editor, LESION)
    np.testing.assert_array_equal(selected(app, volume_node), before)  # no prompt left on slice 5
    with pytest.raises(InteractionError, match="no points to remove"):
        segmenter.remove_last_point(app.editor, LESION)


def test_the_write_goes_to_the_segment_selected_when_the_action_started(app, volume_node, predictor):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    first = app.editor_node.GetSelectedSegmentID()
    other = segmentation.GetSegmentation().AddEmptySegment("", "other")
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    slice_node, corners = box_in(app, volume_node)
    segmenter.box(app.editor, slice_node, corners, LESION)
    segmenter.propagate(app.editor, LESION, progress=lambda done, total: app.editor_node.SetSelectedSegmentID(other))
    assert segment_array(segmentation, first, volume_node).sum() > 0
    assert segment_array(segmentation, other, volume_node).sum() == 0


def cancel_at(slice_count, controller, seen):
    """A progress callback that records (done, total) and cancels the run once slice_count slices are done."""
    def progress(done, total):
        seen.append((done, total))
        if done == slice_count:
            controller.cancel("Cancelled.")
    return progress


def test_a_replayed_re_propagation_ends_its_progress_full(app, volume_node, predictor):
    """The replay's total counts every propagation's whole range; an incremental one computes less."""
    _, segmenter, _ = boxed_and_propagated(app, volume_node, predictor)
    on_slice_5 = (CENTRE[0], CENTRE[1], 5.0)
    view = app.view(volume_node, "Axial", on_slice_5)
    segmenter.points(app.editor, view, [(xy_of(view, volume_node, on_slice_5), 1)], LESION)
    segmenter.propagate(app.editor, LESION)
    seen = []
    outcome = InteractiveSegmenter(MedSAM2Logic(predictor)).run(
        RunController(), app.editor, "propagate", LESION, progress=lambda done, total: seen.append((done, total)))
    assert outcome.written and outcome.message.startswith("Restored the segment's saved MedSAM2 session (4 steps).")
    assert seen[0] == (1, 14) and seen[-1][0] == seen[-1][1] < 14  # 7 slices, then only those after slice 5


def test_a_session_restored_in_another_precision_says_so(app, volume_node, predictor, tiny_model):
    boxed_and_propagated(app, volume_node, predictor)  # float32
    fast = InteractiveSegmenter(MedSAM2Logic(VolumePredictor(tiny_model, precision="bfloat16")))
    outcome = fast.run(RunController(), app.editor, "propagate", LESION)
    assert outcome.written and outcome.message.startswith(
        "Restored the segment's saved MedSAM2 session (2 steps). It was computed in float32 and replayed in "
        "bfloat16, the precision set now, so its slices may differ slightly from the saved segment. ")


def test_actions_run_on_the_run_controller_and_cancel_writes_nothing(app, volume_node, predictor):
    app.segmentation_for(volume_node, with_segment=True)
    controller = RunController()
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    slice_node, corners = box_in(app, volume_node)
    outcome = segmenter.run(controller, app.editor, "box", slice_node, corners, LESION)
    assert outcome.written and outcome.message.startswith("Box on slice 3: segmented.")
    before = selected(app, volume_node)
    seen = []
    outcome = segmenter.run(controller, app.editor, "propagate", LESION, progress=cancel_at(3, controller, seen))
    assert outcome.cancelled and not outcome.written and seen == [(1, 7), (2, 7), (3, 7)]
    np.testing.assert_array_equal(selected(app, volume_node), before)
    outcome = segmenter.run(controller, app.editor, "propagate", LESION)  # continues from the session's state
    assert outcome.written and selected(app, volume_node).sum() > before.sum()


@pytest.mark.parametrize("add", [False, True])
def test_add_keeps_the_segment_s_earlier_content_replace_does_not(app, volume_node, predictor, add):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    earlier = np.zeros((7, 48, 64), np.uint8)
    earlier[:, 40:46, 2:6] = 1  # on every slice
    set_segment(segmentation, app.editor_node.GetSelectedSegmentID(), earlier, volume_node)
    options = InteractiveOptions(windowing=LESION.windowing, add=add)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    slice_node, corners = box_in(app, volume_node)
    for action in ("box", "propagate"):
        arguments = (slice_node, corners, options) if action == "box" else (options,)
        getattr(segmenter, action)(app.editor, *arguments)
        state = segmenter.session_of(app.editor)
        session_mask = state.geometry.from_stack(state.session.mask())
        computed = np.isin(np.arange(7), list(state.session.results))  # slices along K
        expected = earlier.copy()
        expected[computed] = (session_mask | earlier)[computed] if add else session_mask[computed]
        np.testing.assert_array_equal(selected(app, volume_node), expected)
    assert computed.all() and session_mask.sum() > 0
    assert (earlier & (1 - session_mask)).any()  # Add and Replace differ here


def test_new_segment_for_each_box(app, volume_node, predictor):
    segmentation = app.segmentation_for(volume_node)
    options = InteractiveOptions(windowing=LESION.windowing, new_segment_per_box=True)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    slice_node, corners = box_in(app, volume_node)
    first = segmenter.box(app.editor, slice_node, corners, options).segment_id
    second = segmenter.box(app.editor, slice_node, corners, options).segment_id
    assert first != second and app.editor_node.GetSelectedSegmentID() == second
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2 and len(segmenter.sessions) == 2
    app.editor_logic.Undo()
    assert segmentation.GetSegmentation().GetSegment(second) is None


def test_a_box_along_another_axis_or_a_new_window_ends_the_sessions(app, volume_node, predictor):
    _, segmenter, slice_node = boxed_and_propagated(app, volume_node, predictor)
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    other_window = InteractiveOptions(windowing=Windowing("window", (-50.0, 250.0)))
    with pytest.raises(InteractionError, match="windowing changed"):
        segmenter.points(app.editor, view5, [(xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)], other_window)
    assert not segmenter.sessions
    segmenter.box(app.editor, *box_in(app, volume_node), LESION)
    sagittal, corners = box_in(app, volume_node, "Sagittal", (40.0, 20.4, 3.0))
    segmenter.box(app.editor, sagittal, corners, LESION)
    assert segmenter.session_of(app.editor).geometry.slice_axis == 0 and len(segmenter.sessions) == 1


def test_session_is_stored_with_the_segment_and_reproduces_it(app, volume_node, predictor, tmp_path):
    from MedSAM2Lib.inference.session import Session
    from MedSAM2Lib.inference.session_file import read_session_file, run_steps

    segmentation, segmenter, _ = boxed_and_propagated(app, volume_node, predictor)
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    segmenter.points(app.editor, view5, [(xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)], LESION)
    segmenter.propagate(app.editor, LESION)
    expected = selected(app, volume_node)
    save_segmentation(segmentation, tmp_path / "result.seg.nrrd")
    reloaded = app.load_segmentation(tmp_path / "result.seg.nrrd")
    tag = vtk.reference("")
    assert reloaded.GetSegmentation().GetNthSegment(0).GetTag(SESSION_TAG, tag)
    document = json.loads(str(tag))
    assert document["stack"]["slice_axis"] == "K"
    session_path = tmp_path / "session.json"
    write_session_from_tag(str(tag), session_path)
    stack = segmenter.logic.stack_for(app.editor.source(), segmenter.session_of(app.editor).geometry,
                                      LESION.windowing)[0]
    session = Session(predictor, stack)
    run_steps(session, read_session_file(session_path))
    np.testing.assert_array_equal(segmenter.session_of(app.editor).geometry.from_stack(session.mask()), expected)


def test_mouse_gestures_drive_the_session(app, volume_node, predictor):
    app.segmentation_for(volume_node, with_segment=True)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    gestures = ViewGestures()
    slice_node, (corner, opposite) = box_in(app, volume_node)
    actions = []

    def perform(event, xy, **modifiers):
        gesture = gestures.handle(event, slice_node, xy, segmenter=segmenter, editor=app.editor, **modifiers)
        if gesture.action is not None:
            actions.append(gesture.action)
            getattr(segmenter, gesture.action)(app.editor, *gesture.arguments, LESION)
        return gesture

    perform("press", corner)
    perform("move", opposite)
    assert perform("release", opposite).action == "box"
    assert segmenter.session_of(app.editor).prompts[3].box is not None
    inside = xy_of(slice_node, volume_node, (42.0, 21.0, 3.0))
    outside = xy_of(slice_node, volume_node, (25.0, 12.0, 3.0))
    assert perform("press", inside).action is None and perform("release", inside).action == "points"
    assert gestures.box_tool.box is not None  # the click kept the box's outline
    assert perform("press", outside, shift=True).box_event.consumed
    assert [label for _, _, label in segmenter.points_in_view(app.editor, slice_node)] == [1, 0]
    assert perform("press", np.add(inside, (2, 2)), control=True).action == "remove_point"
    assert [label for _, _, label in segmenter.points_in_view(app.editor, slice_node)] == [0]
    assert not perform("press", np.add(inside, (40, 40)), control=True).box_event.consumed  # no point there
    assert perform("backspace", (0, 0)).action == "remove_last_point"
    assert segmenter.points_in_view(app.editor, slice_node) == []
    cleared = perform("backspace", (0, 0))  # no point left: the box goes
    assert cleared.action is None and cleared.box_event.changed and gestures.box_tool.box is None
    assert not perform("backspace", (0, 0)).box_event.consumed
    assert perform("press", inside, running=True).action is None
    assert actions == ["box", "points", "points", "remove_point", "remove_last_point"]


def edit_saved_segmentation(app, path):
    """Load a .seg.nrrd file as a new node and edit its segment: what a saved scene gives back."""
    reloaded = app.load_segmentation(path)
    app.editor_node.SetAndObserveSegmentationNode(reloaded)
    app.editor_node.SetSelectedSegmentID(reloaded.GetSegmentation().GetNthSegmentID(0))
    return reloaded


def test_a_correction_after_reloading_restores_the_saved_session(app, volume_node, predictor, tmp_path):
    """Box, propagate, a correction; saved and reloaded; a new segmenter (no live session): a further
    correction and Update give what the uninterrupted session gives, voxel by voxel; Undo reverts the write."""
    segmentation, segmenter, _ = boxed_and_propagated(app, volume_node, predictor)
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    segmenter.points(app.editor, view5, [(xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)], LESION)
    save_segmentation(segmentation, tmp_path / "saved.seg.nrrd")
    view1 = app.view(volume_node, "Axial", (40.3, 20.4, 1.0))
    click = [(xy_of(view1, volume_node, (44.0, 22.0, 1.0)), 1)]
    segmenter.points(app.editor, view1, click, LESION)
    segmenter.propagate(app.editor, LESION)
    uninterrupted = selected(app, volume_node)

    edit_saved_segmentation(app, tmp_path / "saved.seg.nrrd")
    saved = selected(app, volume_node)
    assert np.count_nonzero(saved != uninterrupted)
    reloaded = app.editor_node.GetSegmentationNode()
    saved_tag = saved_session_tag(reloaded, app.editor_node.GetSelectedSegmentID())
    restored = InteractiveSegmenter(MedSAM2Logic(predictor))
    assert restored.restorable(app.editor)
    assert selected_has_saved_session(app.editor_node)  # what the effect reads before setup (no segmenter yet)
    progress = []
    result = restored.points(app.editor, view1, click, LESION, progress=lambda done, total: progress.append(done))
    assert result.message.startswith("Restored the segment's saved MedSAM2 session (3 steps). Point on slice 1: a "
                                     "correction of the backward tracking")
    assert progress == list(range(1, 8))  # the replayed propagation
    state = restored.session_of(app.editor)
    assert not restored.restorable(app.editor)
    assert state.prompts[5].labels == [0] and state.prompts[1].labels == [1] and state.point_order == [5, 1]
    assert [label for _, _, label in restored.points_in_view(app.editor, view5)] == [0]
    assert saved_session_tag(reloaded, app.editor_node.GetSelectedSegmentID()) != saved_tag
    app.editor_logic.Undo()
    np.testing.assert_array_equal(selected(app, volume_node), saved)
    assert saved_session_tag(reloaded, app.editor_node.GetSelectedSegmentID()) == saved_tag  # Undo reverts it too
    restored.propagate(app.editor, LESION)  # Update: the prompts stay after Undo
    np.testing.assert_array_equal(selected(app, volume_node), uninterrupted)


def test_a_saved_session_that_does_not_fit_is_refused_until_reset(app, volume_node, predictor):
    segmentation, _, _ = boxed_and_propagated(app, volume_node, predictor)
    before = selected(app, volume_node)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))  # as after a reload: no live session
    coronal = app.view(volume_node, "Coronal", CENTRE)
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    click = [(xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)]
    other_window = InteractiveOptions(windowing=Windowing("window", (-50.0, 250.0)))
    with pytest.raises(InteractionError, match="saved MedSAM2 session runs on slices along K .*Click Reset"):
        segmenter.points(app.editor, coronal, [(xy_of(coronal, volume_node, CENTRE), 1)], LESION)
    with pytest.raises(InteractionError, match="window 0.0 200.0, and the current window is -50.0 250.0"):
        segmenter.points(app.editor, view5, click, other_window)
    with pytest.raises(InteractionError, match="window 0.0 200.0"):
        segmenter.box(app.editor, *box_in(app, volume_node), other_window)
    other = add_volume(app.scene, lesion_volume((7, 48, 64), seed=1), oblique_ijk_to_ras(), "other")
    app.editor_node.SetAndObserveSourceVolumeNode(other)
    with pytest.raises(InteractionError, match="made on other images"):
        segmenter.propagate(app.editor, LESION)
    app.editor_node.SetAndObserveSourceVolumeNode(volume_node)
    segment = segmentation.GetSegmentation().GetSegment(app.editor_node.GetSelectedSegmentID())
    segment.SetTag(SESSION_TAG, '{"steps": [')
    with pytest.raises(InteractionError, match="cannot be read"):
        segmenter.propagate(app.editor, LESION)
    np.testing.assert_array_equal(selected(app, volume_node), before)
    assert not segmenter.sessions
    assert segmenter.restorable(app.editor)  # the effect's Update and Reset stay enabled
    segmenter.end_session(app.editor)  # Reset: the user drops the saved session
    assert not segmenter.restorable(app.editor)
    with pytest.raises(InteractionError, match="has no MedSAM2 session"):
        segmenter.propagate(app.editor, LESION)
    assert segmenter.box(app.editor, *box_in(app, volume_node), other_window).message.startswith(
        "Box on slice 3: segmented.")


def test_no_session_file_for_a_session_on_another_grid_than_the_volume_s(app, volume_node, predictor, tmp_path):
    coarse = add_volume(app.scene, lesion_volume((7, 24, 32)), oblique_ijk_to_ras(spacing=(1.4, 1.4, 2.5)), "coarse")
    segmentation = app.segmentation_for(coarse, with_segment=True)
    app.editor_node.SetAndObserveSourceVolumeNode(volume_node)  # resampled to the segmentation's grid
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    slice_node, corners = box_in(app, volume_node)
    segmenter.box(app.editor, slice_node, corners, LESION)
    tag = saved_session_tag(segmentation, app.editor_node.GetSelectedSegmentID())
    assert json.loads(tag)["size_ijk"] == [32, 24, 7]
    with pytest.raises(SessionFileError, match="not the source volume's voxel grid"):
        write_session_from_tag(tag, tmp_path / "session.json")
    assert not (tmp_path / "session.json").exists()


def test_restoring_runs_on_the_run_controller_and_cancel_keeps_nothing(app, volume_node, predictor):
    boxed_and_propagated(app, volume_node, predictor)
    before = selected(app, volume_node)
    controller = RunController()
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    seen = []
    outcome = segmenter.run(controller, app.editor, "propagate", LESION, progress=cancel_at(2, controller, seen))
    assert outcome.cancelled and not outcome.written and seen == [(1, 7), (2, 7)]  # the replayed propagation
    assert not segmenter.sessions and segmenter.restorable(app.editor)
    np.testing.assert_array_equal(selected(app, volume_node), before)
    outcome = segmenter.run(controller, app.editor, "propagate", LESION)
    assert outcome.written and outcome.message.startswith(
        "Restored the segment's saved MedSAM2 session (2 steps). Nothing to update")
    np.testing.assert_array_equal(selected(app, volume_node), before)


# -- what an action writes: only changed slices, never a slice the user edited ----------------------------


class RecordingBackend(SegmentEditorLogicBackend):
    """A test double that records the extent of every labelmap the segmenter writes, then writes it through the
    real vtkSlicerSegmentEditorLogic."""

    def __init__(self, editor_logic) -> None:
        super().__init__(editor_logic)
        self.extents = []

    def modify_segment(self, segmentation_node, segment_id, labelmap, mode="set"):
        self.extents.append((mode, labelmap.GetExtent()))
        super().modify_segment(segmentation_node, segment_id, labelmap, mode)


def test_a_slice_edited_with_another_effect_is_kept_and_corrects_the_session(app, volume_node, predictor):
    """Paint a computed slice, click a point on another: only the clicked slice is written, the painted one stays
    byte for byte and is the session's mask prompt; Update equals a library session given that mask step before
    the point. Undo reverts each action, and after it nothing is mistaken for an edit."""
    segmentation, segmenter, _ = boxed_and_propagated(app, volume_node, predictor)
    segment_id = app.editor_node.GetSelectedSegmentID()
    state = segmenter.session_of(app.editor)
    painted = selected(app, volume_node)
    painted[5, 14:26, 30:46] = 1  # on slice K = 5, tracked forward from the box on slice 3
    painted[5, 20:23, 36:40] = 0
    set_segment(segmentation, segment_id, painted, volume_node)  # as the Paint and Erase effects would
    backend = app.editor.backend = RecordingBackend(app.editor_logic)
    view1 = app.view(volume_node, "Axial", (40.3, 20.4, 1.0))
    result = segmenter.points(app.editor, view1, [(xy_of(view1, volume_node, (44.0, 22.0, 1.0)), 1)], LESION)
    assert result.message.startswith("Slice 5 kept as you painted it, used as a correction. Point on slice 1: a "
                                     "correction of the backward tracking")
    clicked = selected(app, volume_node)
    np.testing.assert_array_equal(clicked[5], painted[5])
    np.testing.assert_array_equal(np.delete(clicked, 1, axis=0), np.delete(painted, 1, axis=0))
    assert np.count_nonzero(clicked[1] != painted[1])
    assert backend.extents and all(extent[4:] == (1, 1) for _, extent in backend.extents)  # slice K = 1 only
    assert [mode for mode, _ in backend.extents] in (["add"], ["remove", "add"])
    # Writing the tags does not change the voxels' stamp: the next action need not read the segment for edits.
    assert state.seen == labelmap_stamp(segmentation, segment_id)

    segmenter.propagate(app.editor, LESION)  # Update
    updated = selected(app, volume_node)
    geometry = state.geometry
    library = Session(predictor, state.session.volume, early_stop=predictor.early_stop)
    library.add_prompt(3, box=list(state.prompts[3].box))
    list(library.propagate())
    library.add_prompt(5, mask=geometry.to_stack(painted)[5])
    library.add_prompt(1, points=[list(state.prompts[1].points[0])], labels=[1], add=True)
    list(library.propagate())
    expected = geometry.from_stack(library.mask())
    expected[5] = painted[5]
    np.testing.assert_array_equal(updated, expected)
    assert np.count_nonzero(updated != clicked)

    app.editor_logic.Undo()
    np.testing.assert_array_equal(selected(app, volume_node), clicked)
    app.editor_logic.Undo()
    np.testing.assert_array_equal(selected(app, volume_node), painted)
    steps = len(state.session.steps)
    result = segmenter.propagate(app.editor, LESION)  # the prompts stay: Update writes their result again
    assert result.message.startswith("Slice 5 kept as you painted it, used as a correction. Nothing to update")
    assert len(state.session.steps) == steps + 1  # the propagation only: slice 5 already is its mask prompt
    np.testing.assert_array_equal(selected(app, volume_node), updated)


def test_a_new_prompt_on_an_edited_slice_hands_it_back_to_medsam2(app, volume_node, predictor):
    segmentation, segmenter, _ = boxed_and_propagated(app, volume_node, predictor)
    painted = selected(app, volume_node)
    painted[5, 14:26, 30:46] = 1
    set_segment(segmentation, app.editor_node.GetSelectedSegmentID(), painted, volume_node)
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    result = segmenter.points(app.editor, view5, [(xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)], LESION)
    assert result.message.startswith("Your edit of slice 5 is the mask this prompt refines. Point on slice 5")
    state = segmenter.session_of(app.editor)
    assert 5 not in state.record.kept and state.prompts[5].mask is not None and state.prompts[5].labels == [0]
    np.testing.assert_array_equal(selected(app, volume_node)[5],
                                  state.geometry.from_stack(state.session.mask())[5])


# -- the intensity window ------------------------------------------------------------------------------


def test_changing_the_display_window_mid_session_changes_nothing(app, volume_node, predictor):
    """A session started with the display window keeps it: the window changed between Propagate and a correction,
    the session goes on (a box too), gives what it gives without the change, and is restored with its own window."""
    display = volume_node.GetDisplayNode()
    display.AutoWindowLevelOff()
    as_displayed = InteractiveOptions()
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    click = [(xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)]

    def corrected(change_window: bool):
        display.SetWindowLevel(200.0, 100.0)
        _, segmenter, slice_node = boxed_and_propagated(app, volume_node, predictor, as_displayed)
        session = segmenter.session_of(app.editor)
        if change_window:
            display.SetWindowLevel(80.0, 30.0)
        segmenter.points(app.editor, view5, click, as_displayed)
        segmenter.box(app.editor, *box_in(app, volume_node, centre=(40.3, 20.4, 4.0)), as_displayed)
        segmenter.propagate(app.editor, as_displayed)
        assert segmenter.session_of(app.editor) is session
        return selected(app, volume_node)

    unchanged = corrected(False)
    changed = corrected(True)
    np.testing.assert_array_equal(changed, unchanged)
    tag = saved_session_tag(app.editor_node.GetSegmentationNode(), app.editor_node.GetSelectedSegmentID())
    assert json.loads(tag)["window"] == "0.0 200.0"
    restored = InteractiveSegmenter(MedSAM2Logic(predictor))  # as after a reload, the display still at 80/30
    assert restored.propagate(app.editor, as_displayed).message.startswith("Restored the segment's saved MedSAM2")
    np.testing.assert_array_equal(selected(app, volume_node), unchanged)


# -- memory --------------------------------------------------------------------------------------------


def test_sessions_end_with_their_segment_or_segmentation_and_are_bounded_in_bytes(app, volume_node, predictor):
    segmentation, segmenter, slice_node = boxed_and_propagated(app, volume_node, predictor)
    segmenter.watch(app.scene)
    first = app.editor_node.GetSelectedSegmentID()
    first_bytes = segmenter.session_of(app.editor).nbytes()
    assert first_bytes > 0
    segmenter.max_session_bytes = first_bytes  # the next session goes beyond: the least recently used ends
    second = segmentation.GetSegmentation().AddEmptySegment("", "second")
    app.editor_node.SetSelectedSegmentID(second)
    segmenter.box(app.editor, *box_in(app, volume_node, centre=(20.0, 30.0, 4.0)), LESION)
    assert list(segmenter.sessions) == [(segmentation.GetID(), second)]
    app.editor_node.SetSelectedSegmentID(first)
    assert segmenter.restorable(app.editor)  # its segment keeps it: the next action restores it
    segmentation.GetSegmentation().RemoveSegment(second)
    assert not segmenter.sessions
    segmenter.propagate(app.editor, LESION)
    assert list(segmenter.sessions) == [(segmentation.GetID(), first)]
    app.scene.RemoveNode(segmentation)
    assert not segmenter.sessions
    segmenter.close()  # its scene observers go


def test_closing_the_scene_releases_the_image_features_at_once(app, volume_node, predictor):
    _, segmenter, _ = boxed_and_propagated(app, volume_node, predictor)
    segmenter.watch(app.scene)
    cache = weakref.ref(segmenter.session_of(app.editor).session.cache)
    assert segmenter.held_bytes() > cache().nbytes > 0
    app.scene.Clear(False)
    assert segmenter.held_bytes() == 0 and not segmenter.sessions
    gc.collect()
    assert cache() is None  # nothing else keeps the features
    segmenter.close()


def test_what_the_editable_intensity_range_cuts_is_not_mistaken_for_an_edit(app, volume_node, predictor):
    """With the editor's intensity range on, the writes hold only voxels in range; the record is what the segment
    holds, so the next actions find no edit."""
    app.editor_node.SetSourceVolumeIntensityMask(True)
    app.editor_node.SetSourceVolumeIntensityMaskRange(100.0, 1000.0)  # the lesion (about 160), not the tissue (40)
    _, segmenter, _ = boxed_and_propagated(app, volume_node, predictor)
    intensities = slicer.util.arrayFromVolume(volume_node)
    segment = selected(app, volume_node)
    state = segmenter.session_of(app.editor)
    model = state.geometry.from_stack(state.session.mask())
    np.testing.assert_array_equal(segment, model & (intensities >= 100))
    assert np.count_nonzero(model != segment)  # the range cut something
    view5 = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    result = segmenter.points(app.editor, view5, [(xy_of(view5, volume_node, (30.0, 15.0, 5.0)), 0)], LESION)
    assert result.message.startswith("Point on slice 5") and not state.record.kept
    state.seen = None  # check the voxels again, as after another effect's edit
    assert segmenter.propagate(app.editor, LESION).message.startswith("Propagated")
    assert not state.record.kept


def test_a_segment_is_read_from_its_own_labelmap_part_as_export_reads_it(app, volume_node):
    """segment_mask_on reads a part of the grid straight from a labelmap two segments share (label values 1 and
    2): the same voxels as Slicer's export of each segment."""
    segmentation = app.segmentation_for(volume_node)
    ids = [segmentation.GetSegmentation().AddEmptySegment("", name) for name in ("first", "second")]
    masks = [np.zeros((7, 48, 64), np.uint8) for _ in ids]
    masks[0][1:4, 10:30, 20:40] = 1
    masks[1][3:6, 25:40, 35:60] = 1
    masks[1][masks[0] != 0] = 0  # one layer holds both only where they do not overlap
    for segment_id, mask in zip(ids, masks):
        set_segment(segmentation, segment_id, mask, volume_node)
    layers = segmentation.GetSegmentation()
    assert layers.GetNumberOfLayers() == 1 and {layers.GetSegment(i).GetLabelValue() for i in ids} == {1, 2}
    source = app.editor.source()
    box = (slice(2, 5), slice(0, 48), slice(30, 64))
    for segment_id, mask in zip(ids, masks):
        np.testing.assert_array_equal(segment_mask_on(segmentation, segment_id, source.image),
                                      segment_array(segmentation, segment_id, volume_node))
        np.testing.assert_array_equal(segment_mask_on(segmentation, segment_id, grid_part(source.image, box)),
                                      mask[box])


def test_a_session_file_restores_as_a_segment_s_saved_session(app, volume_node, predictor, tmp_path):
    """A segment's session as a session file (as ``medsam2 segment --prompts`` reads it), made the tag of a new
    segment of another segmentation (``medsam2 web --prompts``): the restore replays it and writes the same
    segment, voxel by voxel, on the oblique volume; a further restore of the live session is refused."""
    segmentation, _, _ = boxed_and_propagated(app, volume_node, predictor)
    expected = selected(app, volume_node)
    write_session_from_tag(saved_session_tag(segmentation, app.editor_node.GetSelectedSegmentID()),
                           tmp_path / "session.json")
    document = read_session(tmp_path / "session.json")
    app.segmentation_for(volume_node, with_segment=True)
    tag = session_tag_from_file(document, app.editor.source(), Windowing("none"))
    segment_id = app.editor_node.GetSelectedSegmentID()
    app.editor_node.GetSegmentationNode().GetSegmentation().GetSegment(segment_id).SetTag(SESSION_TAG, tag)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    assert not selected(app, volume_node).any() and segmenter.restorable(app.editor)
    result = segmenter.restore(app.editor, LESION)
    assert result.message.startswith("Restored the segment's saved MedSAM2 session (2 steps).")
    np.testing.assert_array_equal(selected(app, volume_node), expected)
    assert segmenter.session_of(app.editor).propagated
    with pytest.raises(InteractionError, match="already open"):
        segmenter.restore(app.editor, LESION)
    app.editor_logic.Undo()  # the restore is one undoable write
    assert not selected(app, volume_node).any()


def test_a_session_file_for_another_volume_size_is_refused_before_any_work(app, volume_node, tmp_path):
    (tmp_path / "session.json").write_text(json.dumps({"size_ijk": [64, 48, 8], "steps": [
        {"slice": 3, "box": [10, 10, 30, 30]}, {"propagate": "both"}]}))
    app.segmentation_for(volume_node, with_segment=True)
    with pytest.raises(SessionFileError, match="made on a 64 x 48 x 8 volume"):
        session_tag_from_file(read_session(tmp_path / "session.json"), app.editor.source(), Windowing("none"))
