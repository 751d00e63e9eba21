"""Propagation through time on Slicer's Sequences (slicer_glue/cine.py, sequence_browser.py), on slicer-core: a
synthetic cine as a vtkMRMLSequenceNode of volumes, played by a vtkMRMLSequenceBrowserNode (with Slicer's
vtkSlicerSequencesLogic observing it, as in the app), its proxy the Segment Editor's source volume; the editor is
the real vtkSlicerSegmentEditorLogic, whose Undo and Redo are the user's."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.inference.preprocessing import Windowing
from MedSAM2Lib.inference.session import Session
from MedSAM2Lib.slicer_glue import cine as cine_module
from MedSAM2Lib.slicer_glue.cine import CINE_EDIT_TAG, CineSegmenter, frame_source, time_stack
from MedSAM2Lib.slicer_glue.box import BoxTool
from MedSAM2Lib.slicer_glue.effect import (PreEncodeTrigger, offers_through_time, progress_sentence, segmenter_for,
                                           through_time, what_to_show)
from MedSAM2Lib.slicer_glue.interactive import InteractionError, InteractiveOptions, InteractiveSegmenter
from MedSAM2Lib.slicer_glue.logic import EditorStateError, MedSAM2Logic, display_windowing, segment_mask_on
from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras, segment_array, set_segment_array
from MedSAM2Lib.slicer_glue.sequence_browser import cine_of, segmentation_sequence

from slicer_support import app, ras_of, xy_of  # noqa: F401 (fixture)

FRAMES, SLICE = 6, 1
SHOWN = 2
BOX_IJK = [(14.0, 12.0, SLICE), (38.0, 34.0, SLICE)]  # corners around the disc on the shown frame


def box_prompt_on(cine):
    """The box given as two RAS corners on slice 1 of the frames, as the effect's logic takes a box."""
    corners = [ras_of(cine.proxy, ijk) for ijk in BOX_IJK]
    return MedSAM2Logic(predictor=None).prompt_from_ras(frame_source(cine), corners).stack


def on_frame_grid(prompt, mask_2d: np.ndarray) -> np.ndarray:
    """A (rows, columns) mask of the prompt's slice as (J, I), computed from the geometry's flags here."""
    geometry = prompt.geometry
    assert geometry.slice_axis == 2 and prompt.slice_index == SLICE  # a K slice: rows and columns are J and I
    mask_2d = mask_2d[:: -1 if geometry.flip_rows else 1, :: -1 if geometry.flip_columns else 1]
    return mask_2d if geometry.row_axis == 1 else mask_2d.T


def cine_frames(num_frames: int = FRAMES, shape_kji=(2, 48, 64)) -> np.ndarray:
    """(T, K, J, I) int16: a bright disc moving along I on slice 1, a fixed bar on slice 0."""
    rng = np.random.default_rng(1)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    frames = []
    for t in range(num_frames):
        frame = rng.normal(30, 8, shape_kji)
        frame[(k == 1) & ((i - (22 + 2 * t)) ** 2 + (j - 23) ** 2 < 81)] += 150
        frame[(k == 0) & (np.abs(j - 10) < 3)] += 150
        frames.append(frame.astype(np.int16))
    return np.stack(frames)


@pytest.fixture
def sequences_logic(app):  # noqa: F811
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(app.scene)
    logic.SetMRMLApplicationLogic(app.app_logic)
    yield logic
    logic.SetMRMLScene(None)


def add_cine(app, logic, frames: np.ndarray, name: str = "cine"):  # noqa: F811
    """A volume sequence of the frames (index: time in ms), a browser playing it showing frame SHOWN, and its
    proxy volume displayed with a window."""
    sequence = app.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("ms")
    for number, frame_kji in enumerate(frames):
        frame = add_volume(app.scene, frame_kji, oblique_ijk_to_ras(), f"frame {number}")
        sequence.SetDataNodeAtValue(frame, str(40 * number))  # copied into the sequence
        app.scene.RemoveNode(frame)
    browser = app.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.SetSelectedItemNumber(min(SHOWN, len(frames) - 1))
    logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    proxy.CreateDefaultDisplayNodes()
    proxy.GetDisplayNode().SetAutoWindowLevel(False)
    proxy.GetDisplayNode().SetWindowLevel(200, 80)
    return browser, sequence, proxy


def show(browser, logic, number: int) -> None:
    browser.SetSelectedItemNumber(number)
    logic.UpdateProxyNodesFromSequences(browser)


def test_a_proxy_volume_is_found_as_a_cine_and_its_slice_through_time_is_the_stack(app, sequences_logic):  # noqa: F811
    frames = cine_frames()
    browser, sequence, proxy = add_cine(app, sequences_logic, frames)
    cine = cine_of(proxy)
    assert (cine.browser, cine.sequence, cine.proxy) == (browser, sequence, proxy)
    assert cine.num_frames == FRAMES and cine.shown_frame == SHOWN
    assert cine_of(add_volume(app.scene, frames[0], np.eye(4), "alone")) is None
    _, _, still = add_cine(app, sequences_logic, frames[:1], "one frame")
    assert cine_of(still) is None  # a sequence of one frame is no cine
    windowing = display_windowing(proxy)
    assert windowing == Windowing("window", (-20.0, 180.0))
    prompt = box_prompt_on(cine)
    stack = time_stack(cine, prompt, windowing)
    expected = windowing.apply(frames[:, SLICE])
    for number in range(FRAMES):
        np.testing.assert_array_equal(on_frame_grid(prompt, stack[number]), expected[number])
    x0, y0, x1, y1 = prompt.box  # the box's corners on the stack are the corners given, wherever they went
    corners = {(round(x), round(y)) for x in (x0, x1) for y in (y0, y1)}
    marked = np.zeros(stack.shape[1:], np.uint8)
    for x, y in corners:
        marked[y, x] = 1
    assert {tuple(ij) for ij in np.argwhere(on_frame_grid(prompt, marked))} >= {(12, 14), (34, 38)}


def test_frames_of_another_grid_are_refused(app, sequences_logic):  # noqa: F811
    browser, sequence, proxy = add_cine(app, sequences_logic, cine_frames(2))
    odd = add_volume(app.scene, cine_frames(1, (2, 40, 64))[0], oblique_ijk_to_ras(), "odd")
    sequence.SetDataNodeAtValue(odd, "80")
    cine = cine_of(proxy)
    with pytest.raises(EditorStateError, match=r"differ in size \(\(64, 40, 2\) and \(64, 48, 2\) voxels\)"):
        time_stack(cine, box_prompt_on(cine), display_windowing(proxy))




# -- the effect's actions through time -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return VolumePredictor(tiny_model, precision="float32")


@pytest.fixture
def cine_editor(app, sequences_logic):  # noqa: F811
    """The cine, a segmentation on the proxy's grid with a selected segment in the editor, and an axial view of
    slice 1 (the one with the moving disc)."""
    browser, sequence, proxy = add_cine(app, sequences_logic, cine_frames())
    segmentation = app.segmentation_for(proxy, with_segment=True)
    view = app.view(proxy, "Axial", (32.0, 24.0, SLICE))
    return browser, proxy, segmentation, view


def frames_written(app, browser, sequences_logic, proxy, segmentation, segment_id, frames=range(FRAMES)):
    """uint8 (T, K, J, I): the segment on every frame, read from the proxy as the browser shows each frame."""
    shown = browser.GetSelectedItemNumber()
    written = []
    for number in frames:
        show(browser, sequences_logic, number)
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        written.append(segment_array(segmentation, segment_id, proxy) if segment is not None
                       else np.zeros((2, 48, 64), np.uint8))
    show(browser, sequences_logic, shown)
    return np.stack(written)


def frames_in_sequence(browser, segmentation, segment_id):
    """uint8 (T, K, J, I): the segment on every frame, read from the items of the segmentation's sequence (without
    showing another frame, which would clear the editor's undo history)."""
    sequence = browser.GetSequenceNode(segmentation)
    image = frame_source(cine_of(browser.GetProxyNode(browser.GetMasterSequenceNode()))).image
    frames = []
    for number in range(sequence.GetNumberOfDataNodes()):
        item = sequence.GetNthDataNode(number)
        has_segment = item.GetSegmentation().GetSegment(segment_id) is not None
        frames.append(segment_mask_on(item, segment_id, image) if has_segment else np.zeros((2, 48, 64), np.uint8))
    return np.stack(frames)


def reference_session(predictor, cine, view, steps):
    """The masks of a Session on the time stack given the same steps directly: (T, rows, columns)."""
    prompt = MedSAM2Logic(predictor).prompt_from_view(frame_source(cine), view, [xy_of(view, cine.proxy, ijk)
                                                                                  for ijk in BOX_IJK]).stack
    session = Session(predictor, time_stack(cine, prompt, display_windowing(cine.proxy)),
                      early_stop=predictor.early_stop)
    for step in steps:
        if step == "propagate":
            list(session.propagate())
        else:
            session.add_prompt(step[0], **step[1])
    return prompt, np.stack([session.results[t].mask if t in session.results else np.zeros_like(session.volume[0])
                             for t in range(FRAMES)])


def click_inside(view, proxy, frame_kji: np.ndarray):
    """The view XY of a voxel of the segment on slice 1 of a frame (K, J, I), to click there."""
    inside = np.argwhere(frame_kji[SLICE])[0]
    return xy_of(view, proxy, (float(inside[1]), float(inside[0]), SLICE))


def box_and_propagate(app, sequences_logic, predictor, view, proxy):  # noqa: F811
    segmenter = CineSegmenter(MedSAM2Logic(predictor), sequences_logic)
    corners = [xy_of(view, proxy, ijk) for ijk in BOX_IJK]
    box = segmenter.box(app.editor, view, corners)
    refreshed = []  # the browser refreshes the volume's proxy when the segmentation sequence is modified
    tag = proxy.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: refreshed.append(event))
    propagated = segmenter.propagate(app.editor)
    proxy.RemoveObserver(tag)
    assert len(refreshed) <= 2, refreshed  # the five frames written refresh it once (the shown frame once more)
    return segmenter, box, propagated


def test_the_effect_offers_propagation_through_time_only_on_a_cine(app, sequences_logic, predictor):  # noqa: F811
    browser, sequence, proxy = add_cine(app, sequences_logic, cine_frames())
    alone = add_volume(app.scene, cine_frames(1)[0], oblique_ijk_to_ras(), "alone")
    app.segmentation_for(alone)
    assert not offers_through_time(app.editor_node)
    app.editor_node.SetAttribute("MedSAM2.ThroughTime", "1")
    assert not through_time(app.editor_node)  # chosen, but the source is no cine
    app.editor_node.SetAndObserveSourceVolumeNode(proxy)
    assert offers_through_time(app.editor_node) and through_time(app.editor_node)
    app.editor_node.SetAttribute("MedSAM2.ThroughTime", "0")
    assert offers_through_time(app.editor_node) and not through_time(app.editor_node)

    logic = MedSAM2Logic(predictor)
    cine_segmenter = segmenter_for(None, logic, app.scene, sequences_logic)
    assert isinstance(cine_segmenter, CineSegmenter)
    assert segmenter_for(cine_segmenter, logic, app.scene, sequences_logic) is cine_segmenter
    slices = segmenter_for(cine_segmenter, logic, app.scene)  # the option untied: the slice segmenter again
    assert type(slices) is InteractiveSegmenter
    slices.close()
    with pytest.raises(EditorStateError, match="is not played by a sequence browser"):
        app.editor_node.SetAndObserveSourceVolumeNode(alone)
        CineSegmenter(logic, sequences_logic).compute_box(app.editor, None, [(0, 0), (1, 1)])


def test_the_editors_segmentation_becomes_a_segmentation_sequence_played_with_the_volume(
        app, sequences_logic, cine_editor):  # noqa: F811
    browser, proxy, segmentation, _ = cine_editor
    segment_id = app.editor_node.GetSelectedSegmentID()
    set_segment_array(segmentation, segment_id, np.pad(np.ones((1, 4, 4), np.uint8), ((0, 1), (3, 41), (5, 55))),
                      proxy)
    sequence = segmentation_sequence(cine_of(proxy), segmentation, sequences_logic)
    assert browser.GetProxyNode(sequence) is segmentation and browser.GetSaveChanges(sequence)
    assert [sequence.GetNthIndexValue(n) for n in range(sequence.GetNumberOfDataNodes())] == \
        [str(40 * n) for n in range(FRAMES)]
    assert (sequence.GetIndexName(), sequence.GetIndexUnit()) == ("time", "ms")
    # The proxy shares the shown item's segmentation: the editor edits that frame (and its undo history stays).
    assert segmentation.GetSegmentation() is sequence.GetDataNodeAtValue(str(40 * SHOWN)).GetSegmentation()
    assert frames_written(app, browser, sequences_logic, proxy, segmentation, segment_id)[:, 0, 3:7, 5:9].all()
    assert segmentation_sequence(cine_of(proxy), segmentation, sequences_logic) is sequence  # found again

    other_browser = app.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "other")
    other_sequence = app.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "other")
    other_sequence.SetDataNodeAtValue(segmentation, "0")
    other_browser.SetAndObserveMasterSequenceNodeID(other_sequence.GetID())
    elsewhere = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "elsewhere")
    other_browser.AddProxyNode(elsewhere, other_sequence, False)
    with pytest.raises(ValueError, match="is played by the sequence browser 'other'"):
        segmentation_sequence(cine_of(proxy), elsewhere, sequences_logic)


def test_a_box_propagated_through_time_writes_every_frame_as_a_session_over_the_frames(
        app, sequences_logic, cine_editor, predictor):  # noqa: F811
    browser, proxy, segmentation, view = cine_editor
    segment_id = app.editor_node.GetSelectedSegmentID()
    segmenter, box, propagated = box_and_propagate(app, sequences_logic, predictor, view, proxy)
    cine = cine_of(proxy)
    state = segmenter.session_of(app.editor)
    prompt, expected = reference_session(predictor, cine, view,
                                         [(SHOWN, {"box": list(state.session.steps[0]["box"])}), "propagate"])
    assert state.slice_index == SLICE and state.propagated and box.segment_id == segment_id
    assert box.message == "Box on frame 2: segmented. Propagate to follow it through time. 1 frame(s) changed."
    # The box's frame stays as the box wrote it: the other five change.
    assert propagated.message.endswith("6 frame(s) recomputed. Undo (Ctrl+Z) reverts every frame. 5 frame(s) changed.")
    written = frames_written(app, browser, sequences_logic, proxy, segmentation, segment_id)
    for number in range(FRAMES):
        np.testing.assert_array_equal(written[number, SLICE], on_frame_grid(prompt, expected[number]),
                                      err_msg=f"frame {number}")
    assert expected[SHOWN].any() and expected[0].any() and not written[:, 0].any()  # only the session's slice
    assert len({segmentation.GetSegmentation().GetSegmentIdBySegmentName("target")}) == 1
    # The disc moves along I: what was found moves with it.
    centres = [np.argwhere(written[number, SLICE])[:, 1].mean() for number in (0, FRAMES - 1)]
    assert centres[1] - centres[0] > 5


def test_undo_takes_back_a_whole_action_through_time_and_redo_brings_it_back(
        app, sequences_logic, cine_editor, predictor):  # noqa: F811
    browser, proxy, segmentation, view = cine_editor
    segment_id = app.editor_node.GetSelectedSegmentID()
    segmenter, _, _ = box_and_propagate(app, sequences_logic, predictor, view, proxy)
    propagated = frames_in_sequence(browser, segmentation, segment_id)
    assert propagated[:, SLICE].reshape(FRAMES, -1).any(axis=1).all()
    # A correction: a background click inside the found region on the shown frame, written as a second action.
    click = click_inside(view, proxy, propagated[SHOWN])
    segmenter.points(app.editor, view, [(click, 0)], InteractiveOptions(auto_update=True))
    corrected = frames_in_sequence(browser, segmentation, segment_id)
    assert not np.array_equal(corrected, propagated)

    app.editor_logic.Undo()  # the user's Undo: the correction, on every frame
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id),
                                  propagated)
    app.editor_logic.Undo()  # then the propagation: only the box's frame is left
    boxed = frames_in_sequence(browser, segmentation, segment_id)
    np.testing.assert_array_equal(boxed[SHOWN], propagated[SHOWN])
    assert not np.delete(boxed, SHOWN, axis=0).any()
    app.editor_logic.Undo()  # then the box: every frame empty again
    assert not frames_in_sequence(browser, segmentation, segment_id).any()
    app.editor_logic.Redo()
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id), boxed)
    app.editor_logic.Redo()
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id),
                                  propagated)
    app.editor_logic.Redo()
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id),
                                  corrected)
    # Deleting the segment (which was there before MedSAM2) on the shown frame is no Undo: the others stay.
    segmentation.GetSegmentation().RemoveSegment(segment_id)
    np.testing.assert_array_equal(np.delete(frames_in_sequence(browser, segmentation, segment_id), SHOWN, axis=0),
                                  np.delete(corrected, SHOWN, axis=0))
    app.editor_logic.Undo()
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id), corrected)
    # Showing another frame clears the editor's history, as for any edit of a sequence in Slicer.
    show(browser, sequences_logic, 4)
    assert not app.editor_logic.CanUndo()
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id),
                                  corrected)


def test_a_correction_on_another_frame_re_propagates_from_it(
        app, sequences_logic, cine_editor, predictor):  # noqa: F811
    browser, proxy, segmentation, view = cine_editor
    segment_id = app.editor_node.GetSelectedSegmentID()
    segmenter, _, _ = box_and_propagate(app, sequences_logic, predictor, view, proxy)
    state = segmenter.session_of(app.editor)
    box = list(state.session.steps[0]["box"])
    before = frames_in_sequence(browser, segmentation, segment_id)
    show(browser, sequences_logic, 4)  # the user plays the cine to frame 4 and clicks there
    click = click_inside(view, proxy, before[4])
    result = segmenter.points(app.editor, view, [(click, 0)])
    assert "Point on frame 4: a correction of the forward tracking" in result.message
    assert segmenter.points_in_view(app.editor, view) == [(pytest.approx(click[0]), pytest.approx(click[1]), 0)]
    pointed = frames_in_sequence(browser, segmentation, segment_id)
    np.testing.assert_array_equal(np.delete(pointed, 4, axis=0), np.delete(before, 4, axis=0))  # frame 4 only
    update = segmenter.propagate(app.editor)
    assert "frame(s) recomputed" in update.message
    point = list(state.session.steps[-2]["points"][0])
    prompt, expected = reference_session(predictor, cine_of(proxy), view, [
        (SHOWN, {"box": box}), "propagate", (4, {"points": [point], "labels": [0], "add": True}), "propagate"])
    written = frames_in_sequence(browser, segmentation, segment_id)
    for number in range(FRAMES):
        np.testing.assert_array_equal(written[number, SLICE], on_frame_grid(prompt, expected[number]),
                                      err_msg=f"frame {number}")
    np.testing.assert_array_equal(written[:SHOWN + 1], before[:SHOWN + 1])  # before the box's frame: unchanged
    assert not np.array_equal(written[4], before[4])

    app.editor_logic.Undo()  # on frame 4, where the correction was made: Update's frames go back
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id), pointed)
    app.editor_logic.Undo()  # and the point
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id), before)
    show(browser, sequences_logic, 1)
    assert segmenter.points_in_view(app.editor, view) == []  # the point is frame 4's


def test_a_frame_painted_after_a_propagation_is_kept_and_becomes_a_correction(
        app, sequences_logic, cine_editor, predictor):  # noqa: F811
    browser, proxy, segmentation, view = cine_editor
    segment_id = app.editor_node.GetSelectedSegmentID()
    segmenter, _, _ = box_and_propagate(app, sequences_logic, predictor, view, proxy)
    before = frames_in_sequence(browser, segmentation, segment_id)
    show(browser, sequences_logic, 5)  # the user paints frame 5 (the editor edits the shown frame's item)
    painted = before[5].copy()
    painted[SLICE, 2:9, 2:9] = 1
    set_segment_array(segmentation, segment_id, painted, proxy)
    painted = frames_in_sequence(browser, segmentation, segment_id)[5]
    show(browser, sequences_logic, 4)  # then corrects frame 4 with a click and updates
    click = click_inside(view, proxy, before[4])
    pointed = segmenter.points(app.editor, view, [(click, 0)])
    state = segmenter.session_of(app.editor)
    assert "Frame 5 kept as you edited it, used as a correction." in pointed.message
    assert state.prompts[5].mask is not None and 5 in state.kept
    after_point = frames_in_sequence(browser, segmentation, segment_id)
    update = segmenter.propagate(app.editor)
    assert "Frame 5 kept as you edited it" in update.message and "frame(s) recomputed" in update.message
    written = frames_in_sequence(browser, segmentation, segment_id)
    assert written[5].tobytes() == painted.tobytes()  # byte for byte as painted
    np.testing.assert_array_equal(written[:SHOWN + 1], before[:SHOWN + 1])
    assert not np.array_equal(written[4], before[4])  # the corrected frame is rewritten
    prompt = box_prompt_on(cine_of(proxy))
    for number in range(5):
        np.testing.assert_array_equal(written[number, SLICE], on_frame_grid(prompt, state.session.results[number].mask),
                                      err_msg=f"frame {number}")

    app.editor_logic.Undo()  # Update's frames go back; the painted frame stays, and stays kept
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id), after_point)
    app.editor_logic.Redo()
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id), written)
    app.editor_logic.Undo()
    again = segmenter.propagate(app.editor)  # Update again after the Undo: the paint is still not overwritten
    assert "Frame 5 kept" in again.message
    assert frames_in_sequence(browser, segmentation, segment_id)[5].tobytes() == painted.tobytes()
    # A box on the painted frame hands it back to MedSAM2.
    show(browser, sequences_logic, 5)
    boxed = segmenter.box(app.editor, view, [xy_of(view, proxy, ijk) for ijk in BOX_IJK])
    assert "kept" not in boxed.message and 5 not in state.kept
    assert not np.array_equal(frames_in_sequence(browser, segmentation, segment_id)[5], painted)


def test_refusals_through_time(app, sequences_logic, cine_editor, predictor):  # noqa: F811
    browser, proxy, segmentation, view = cine_editor
    segmenter = CineSegmenter(MedSAM2Logic(predictor), sequences_logic)
    with pytest.raises(InteractionError, match="has no MedSAM2 session through time: draw a box"):
        segmenter.propagate(app.editor)
    segmenter.box(app.editor, view, [xy_of(view, proxy, ijk) for ijk in BOX_IJK])
    other_slice = app.view(proxy, "Axial", (32.0, 24.0, 0))
    with pytest.raises(InteractionError, match="on slice 1 of every frame; this view shows slice 0"):
        segmenter.points(app.editor, other_slice, [(xy_of(other_slice, proxy, (30.0, 20.0, 0)), 1)])
    with pytest.raises(InteractionError, match="Use the segment on this slice"):
        segmenter.use_segment_on_slice(app.editor, view)
    with pytest.raises(InteractionError, match="no points to remove"):
        segmenter.remove_last_point(app.editor)


def test_an_action_that_fails_leaves_every_frame_as_it_was(app, sequences_logic, cine_editor, predictor,
                                                           monkeypatch):  # noqa: F811
    browser, proxy, segmentation, view = cine_editor
    segment_id = app.editor_node.GetSelectedSegmentID()
    segmenter = CineSegmenter(MedSAM2Logic(predictor), sequences_logic)
    segmenter.box(app.editor, view, [xy_of(view, proxy, ijk) for ijk in BOX_IJK])
    before = frames_in_sequence(browser, segmentation, segment_id)
    tag = cine_module._tag(segmentation, segment_id)
    write_frame = cine_module.CineEdit._write_frame
    calls = []

    def fail_on_the_third_frame(self, *args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return write_frame(self, *args)

    monkeypatch.setattr(cine_module.CineEdit, "_write_frame", fail_on_the_third_frame)
    with pytest.raises(RuntimeError, match="out of memory"):
        segmenter.propagate(app.editor)
    assert len(calls) == 3
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id),
                                  before)
    assert cine_module._tag(segmentation, segment_id) == tag and tag
    monkeypatch.setattr(cine_module.CineEdit, "_write_frame", write_frame)
    assert "5 frame(s) changed" in segmenter.propagate(app.editor).message  # the session is intact: it writes now
    assert not np.delete(before, SHOWN, axis=0).any() and frames_in_sequence(
        browser, segmentation, segment_id)[:, SLICE].reshape(FRAMES, -1).any(axis=1).all()


def test_what_the_effect_shows_through_time(app, sequences_logic, cine_editor, predictor):  # noqa: F811
    browser, proxy, segmentation, view = cine_editor
    box_tool = BoxTool()
    shown = what_to_show(box_tool, None, None, app.editor_node, [view], busy=False)
    assert shown.through_time_offered and shown.buttons.propagate_text == "Propagate"  # offered, not chosen
    assert progress_sentence(app.editor_node, 3, 6) == "Segmenting slice 3 of 6... (Cancel stops)"
    app.editor_node.SetAttribute("MedSAM2.ThroughTime", "1")
    assert progress_sentence(app.editor_node, 3, 6) == "Segmenting frame 3 of 6... (Cancel stops)"
    segmenter = segmenter_for(None, MedSAM2Logic(predictor), app.scene, sequences_logic)
    segmenter.box(app.editor, view, [xy_of(view, proxy, ijk) for ijk in BOX_IJK])
    shown = what_to_show(box_tool, segmenter, app.editor, app.editor_node, [view], busy=False)
    assert shown.buttons.propagate_text == "Propagate through time" and shown.buttons.propagate_enabled
    segmenter.points(app.editor, view, [(xy_of(view, proxy, (30.0, 22.0, SLICE)), 1)])
    segmenter.propagate(app.editor)
    shown = what_to_show(box_tool, segmenter, app.editor, app.editor_node, [view], busy=False)
    assert shown.buttons.propagate_text == "Update through time"
    assert shown.points[view.GetID()] == [(pytest.approx(x), pytest.approx(y), 1)
                                          for x, y in [xy_of(view, proxy, (30.0, 22.0, SLICE))]]
    assert segmenter.point_near(app.editor, view, shown.points[view.GetID()][0][:2], 3.0) == (SHOWN, 0)
    assert "Point removed from frame 2" in segmenter.remove_last_point(app.editor).message
    assert segmenter.session_of(app.editor).point_order == []
    app.editor_node.SetAndObserveSourceVolumeNode(add_volume(app.scene, cine_frames(1)[0], oblique_ijk_to_ras()))
    shown = what_to_show(box_tool, segmenter, app.editor, app.editor_node, [view], busy=False)
    assert not shown.through_time_offered and shown.buttons.propagate_text == "Update"
    segmenter.close()


def test_undo_of_another_edit_leaves_the_frames_and_undo_of_a_new_segment_removes_it_everywhere(
        app, sequences_logic, predictor):  # noqa: F811
    browser, _, proxy = add_cine(app, sequences_logic, cine_frames())
    segmentation = app.segmentation_for(proxy)  # no segment selected: the first box creates one
    view = app.view(proxy, "Axial", (32.0, 24.0, SLICE))
    segmenter, box, _ = box_and_propagate(app, sequences_logic, predictor, view, proxy)
    segment_id = box.segment_id
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == "MedSAM2"
    propagated = frames_in_sequence(browser, segmentation, segment_id)
    assert cine_module._tag(segmentation, segment_id) != ""
    # Paint on the shown frame, then its Undo: the Segment Editor's, which MedSAM2 leaves alone.
    app.editor_logic.SaveStateForUndo()
    set_segment_array(segmentation, segment_id, np.ones((2, 48, 64), np.uint8), proxy)
    assert frames_in_sequence(browser, segmentation, segment_id)[SHOWN].all()
    app.editor_logic.Undo()
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id), propagated)
    app.editor_logic.Undo()  # the propagation
    app.editor_logic.Undo()  # the box, which created the segment: gone from every frame
    sequence = browser.GetSequenceNode(segmentation)
    assert segmentation.GetSegmentation().GetSegment(segment_id) is None
    assert all(sequence.GetNthDataNode(n).GetSegmentation().GetSegment(segment_id) is None for n in range(FRAMES))
    app.editor_logic.Redo()
    app.editor_logic.Redo()
    np.testing.assert_array_equal(frames_in_sequence(browser, segmentation, segment_id), propagated)
    segmenter.close()


def test_the_effect_encodes_nothing_in_the_background_through_time(app, sequences_logic, cine_editor, predictor):  # noqa: F811
    """The effect asks its segmenter to pre-encode the slice a view shows whatever the segmenter; through time the
    frames are encoded when the action runs, so the cine segmenter starts nothing (and does not fail)."""
    browser, proxy, segmentation, view = cine_editor
    segmenter = CineSegmenter(MedSAM2Logic(predictor), sequences_logic)
    trigger = PreEncodeTrigger()
    trigger.entered(view)
    assert trigger.ask(segmenter, app.editor, view, lambda: InteractiveOptions(), busy=False) is None
    assert segmenter.logic.pre_encoder.idle and segmenter.logic.pre_encoder.encoded == []
