"""Propagation through time on Slicer's Sequences (slicer_glue/cine.py), on slicer-core: a synthetic cine as a
vtkMRMLSequenceNode of volumes, played by a vtkMRMLSequenceBrowserNode, its proxy the source volume."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.inference.preprocessing import Windowing
from MedSAM2Lib.inference.session import Session
from MedSAM2Lib.slicer_glue import cine as cine_module
from MedSAM2Lib.slicer_glue.cine import (SegmentationSequenceEdit, cine_of, frame_source, propagate_through_time,
                                         run_through_time, time_stack)
from MedSAM2Lib.slicer_glue.logic import EditorStateError, MedSAM2Logic, display_windowing
from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras, segment_array

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
    browser.SetSelectedItemNumber(SHOWN)
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


def test_propagation_through_time_is_written_as_a_segmentation_sequence_played_with_the_volume(
        app, sequences_logic, tiny_model):  # noqa: F811
    frames = cine_frames()
    browser, sequence, proxy = add_cine(app, sequences_logic, frames)
    cine = cine_of(proxy)
    prompt = box_prompt_on(cine)
    stack = time_stack(cine, prompt, display_windowing(proxy))
    predictor = VolumePredictor(tiny_model, precision="float32")
    masks = propagate_through_time(predictor, stack, cine.shown_frame, prompt.box)
    # The same as a session on the stack, box on the shown frame, propagated both ways in time.
    session = Session(predictor, stack, early_stop=None)
    session.add_prompt(SHOWN, box=prompt.box)
    list(session.propagate())
    np.testing.assert_array_equal(masks, np.stack([session.results[t].mask for t in range(FRAMES)]))
    assert masks[SHOWN].any()

    edit = SegmentationSequenceEdit(cine, sequences_logic)
    target = edit.write(masks, prompt, "heart")
    assert browser.IsSynchronizedSequenceNodeID(target.GetID())
    assert [target.GetNthIndexValue(n) for n in range(target.GetNumberOfDataNodes())] == \
        [str(40 * n) for n in range(FRAMES)]
    assert (target.GetIndexName(), target.GetIndexUnit()) == ("time", "ms")
    segment_ids = set()
    for number in range(FRAMES):  # the browser shows each frame's segment with that frame
        show(browser, sequences_logic, number)
        segmentation = edit.proxy
        segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("heart")
        segment_ids.add(segment_id)
        written = segment_array(segmentation, segment_id, proxy)
        np.testing.assert_array_equal(written[SLICE], on_frame_grid(prompt, masks[number]), err_msg=f"frame {number}")
        assert not written[0].any()
    assert len(segment_ids) == 1  # one ID on every frame: the segment stays selected while the browser plays

    edit.undo()  # one action: the sequence, its place in the browser and its proxy go
    assert not browser.IsSynchronizedSequenceNodeID(target.GetID()) and target.GetScene() is None
    assert app.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_a_second_run_into_the_same_sequence_is_undone_to_the_first(app, sequences_logic):  # noqa: F811
    browser, sequence, proxy = add_cine(app, sequences_logic, cine_frames())
    cine = cine_of(proxy)
    prompt = box_prompt_on(cine)
    shape = time_stack(cine, prompt, display_windowing(proxy)).shape
    first = np.zeros(shape, np.uint8)
    first[:, 20:30, 10:20] = 1
    first[4, 0, 0] = 1  # one frame differs
    target = SegmentationSequenceEdit(cine, sequences_logic).write(first, prompt, "heart")
    second = np.zeros_like(first)
    second[:, 5:9, 40:50] = 1
    again = SegmentationSequenceEdit(cine, sequences_logic, target)
    assert again.write(second, prompt, "heart") is target
    show(browser, sequences_logic, 4)
    heart = again.proxy.GetSegmentation().GetSegmentIdBySegmentName("heart")
    np.testing.assert_array_equal(segment_array(again.proxy, heart, proxy)[SLICE], on_frame_grid(prompt, second[4]))
    again.undo()
    for number in (0, 4):
        show(browser, sequences_logic, number)
        np.testing.assert_array_equal(segment_array(again.proxy, heart, proxy)[SLICE],
                                      on_frame_grid(prompt, first[number]))
    assert target.GetNumberOfDataNodes() == FRAMES

    other = app.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "elsewhere")
    with pytest.raises(EditorStateError, match="is not played by the browser"):
        SegmentationSequenceEdit(cine, sequences_logic, other)


def test_a_box_drawn_on_a_view_of_the_proxy_is_propagated_through_time(app, sequences_logic, tiny_model):  # noqa: F811
    """What the effect's "propagate through time" calls: the box in view XY, the rest as above."""
    browser, sequence, proxy = add_cine(app, sequences_logic, cine_frames())
    cine = cine_of(proxy)
    view = app.view(proxy, "Axial", (32.0, 24.0, SLICE))
    logic = MedSAM2Logic(VolumePredictor(tiny_model, precision="float32"))
    edit = run_through_time(logic, cine, view, [xy_of(view, proxy, ijk) for ijk in BOX_IJK], sequences_logic,
                            "heart")
    prompt = logic.prompt_from_view(frame_source(cine), view, [xy_of(view, proxy, ijk) for ijk in BOX_IJK]).stack
    assert prompt.slice_index == SLICE
    expected = propagate_through_time(logic.predictor, time_stack(cine, prompt, display_windowing(proxy)), SHOWN,
                                      prompt.box)
    show(browser, sequences_logic, SHOWN)
    heart = edit.proxy.GetSegmentation().GetSegmentIdBySegmentName("heart")
    np.testing.assert_array_equal(segment_array(edit.proxy, heart, proxy)[SLICE],
                                  on_frame_grid(prompt, expected[SHOWN]))
    assert expected[SHOWN].any()


def test_a_write_that_fails_leaves_every_frame_as_it_was(app, sequences_logic, monkeypatch):  # noqa: F811
    browser, sequence, proxy = add_cine(app, sequences_logic, cine_frames())
    cine = cine_of(proxy)
    prompt = box_prompt_on(cine)
    masks = np.ones(time_stack(cine, prompt, display_windowing(proxy)).shape, np.uint8)
    target = SegmentationSequenceEdit(cine, sequences_logic).write(masks, prompt, "heart")
    set_segment = cine_module._set_segment
    written = []

    def fail_on_the_fourth_frame(*args):
        written.append(args)
        if len(written) == 4:
            raise RuntimeError("disk full")
        return set_segment(*args)

    monkeypatch.setattr(cine_module, "_set_segment", fail_on_the_fourth_frame)
    with pytest.raises(RuntimeError, match="disk full"):
        SegmentationSequenceEdit(cine, sequences_logic, target).write(np.zeros_like(masks), prompt, "heart")
    monkeypatch.setattr(cine_module, "_set_segment", set_segment)
    for number in range(FRAMES):  # the first run's content on every frame
        show(browser, sequences_logic, number)
        proxy_segmentation = browser.GetProxyNode(target)
        heart = proxy_segmentation.GetSegmentation().GetSegmentIdBySegmentName("heart")
        assert segment_array(proxy_segmentation, heart, proxy)[SLICE].all(), f"frame {number}"
    written.clear()
    monkeypatch.setattr(cine_module, "_set_segment", fail_on_the_fourth_frame)
    sequences = app.scene.GetNodesByClass("vtkMRMLSequenceNode").GetNumberOfItems()
    with pytest.raises(RuntimeError, match="disk full"):
        SegmentationSequenceEdit(cine, sequences_logic).write(masks, prompt, "heart")  # a new sequence: removed
    assert app.scene.GetNodesByClass("vtkMRMLSequenceNode").GetNumberOfItems() == sequences
    assert browser.GetNumberOfSynchronizedSequenceNodes() == 1  # the first run's (the master is not counted)
    assert browser.IsSynchronizedSequenceNodeID(target.GetID())
