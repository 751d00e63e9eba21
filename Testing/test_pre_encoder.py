"""Encoding the slice a view shows in the background (slicer_glue.pre_encoder), on Slicer's real core with the tiny
fixture model: a pre-encoded preview calls no image encoder and changes nothing in the results, a run pre-empts the
worker and no slice is encoded twice, closing the scene stops it, a failure in it is reported and harms no preview."""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
import weakref

import numpy as np
import pytest
import vtk

from MedSAM2Lib.inference.predictor import FeatureCache, VolumePredictor
from MedSAM2Lib.inference.preprocessing import Windowing
from MedSAM2Lib.slicer_glue.effect import PreEncodeTrigger, set_parameter
from MedSAM2Lib.slicer_glue.interactive import InteractiveOptions, InteractiveSegmenter, window_text
from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic, view_geometry
from MedSAM2Lib.slicer_glue.pre_encoder import PreEncoder, slices_to_encode
from MedSAM2Lib.slicer_glue.scenario import segment_array
from MedSAM2Lib.slicer_glue.runtime import ModelChoice
from MedSAM2Lib.web.model import ModelOptions, PageModel
from MedSAM2Lib.web.tool import WebTool

from conftest import DATA
from slicer_support import app, ras_of  # noqa: F401 (app is a fixture)
from test_effect import CENTRE, LESION, box_corners, predictor, volume_node  # noqa: F401 (fixtures)

WAIT = 60.0  # seconds a test waits for the worker at most (a loaded machine is slow; a hang fails, never passes)


class BlockingEncoderDouble(VolumePredictor):
    """TEST DOUBLE of the predictor: the real one, except that an encoder call made on another thread than the main
    one (the pre-encoder's worker) sets ``entered`` and waits for ``release`` first, so that a test can act while a
    slice is in flight; with ``fail_in_worker`` that call then raises. It counts the slices really encoded (cache
    misses) per index and the most encoder calls that ever ran at once."""

    def __init__(self, model, fail_in_worker: bool = False) -> None:
        super().__init__(model)
        self.entered, self.release = threading.Event(), threading.Event()
        self.fail_in_worker = fail_in_worker
        self.encoded = collections.Counter()
        self.most_at_once = 0
        self._running = 0
        self._lock = threading.Lock()

    def encode(self, volume, index, cache, ahead=()):
        if cache is not None and index in cache:
            return super().encode(volume, index, cache, ahead)
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        try:
            if threading.current_thread() is not threading.main_thread():
                self.entered.set()
                assert self.release.wait(WAIT)
                if self.fail_in_worker:
                    raise RuntimeError("test double: the encoder failed")
            self.encoded[index] += 1
            return super().encode(volume, index, cache, ahead)
        finally:
            with self._lock:
                self._running -= 1


def axial_box(app, volume_node, centre=CENTRE):
    slice_node = app.view(volume_node, "Axial", centre)
    return slice_node, box_corners(slice_node, volume_node, centre)


def selected(app, volume_node):
    return segment_array(app.editor_node.GetSegmentationNode(), app.editor_node.GetSelectedSegmentID(), volume_node)


def preview_and_propagate(app, volume_node, segmenter, slice_node, corners):
    """Box then Propagate on a new segment: the box's logits, and the segment after each."""
    segmentation = app.editor_node.GetSegmentationNode()
    app.editor_node.SetSelectedSegmentID(segmentation.GetSegmentation().AddEmptySegment("", "target"))
    box = segmenter.box(app.editor, slice_node, corners, LESION)
    logits = segmenter.session_of(app.editor).session.results[box.slice_index].logits
    previewed = selected(app, volume_node)
    segmenter.propagate(app.editor, LESION)
    return box, logits, previewed, selected(app, volume_node)


def test_a_pre_encoded_preview_calls_no_image_encoder_and_changes_nothing(app, volume_node, predictor):
    app.segmentation_for(volume_node)
    slice_node, corners = axial_box(app, volume_node)
    plain = preview_and_propagate(app, volume_node, InteractiveSegmenter(MedSAM2Logic(predictor)), slice_node,
                                  corners)

    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    app.editor_node.SetSelectedSegmentID(None)  # no session selected: the stack a new session would start on
    assert segmenter.pre_encode(app.editor, slice_node, LESION) is None
    pre_encoder = segmenter.logic.pre_encoder
    assert pre_encoder.wait(WAIT)
    shown = plain[0].slice_index
    assert pre_encoder.encoded == slices_to_encode(shown, 7) == [shown, shown + 1, shown - 1]
    calls = predictor.encoder_calls
    segmentation = app.editor_node.GetSegmentationNode()
    app.editor_node.SetSelectedSegmentID(segmentation.GetSegmentation().AddEmptySegment("", "target"))
    box = segmenter.box(app.editor, slice_node, corners, LESION)
    assert predictor.encoder_calls == calls  # the preview ran the decoders only
    logits = segmenter.session_of(app.editor).session.results[box.slice_index].logits
    previewed = selected(app, volume_node)
    segmenter.propagate(app.editor, LESION)
    assert predictor.encoder_calls == calls + 7 - 3  # the propagation encoded only the slices not pre-encoded

    assert box.slice_index == shown and previewed.any()
    np.testing.assert_array_equal(logits, plain[1])  # identical, not close: the same computation
    np.testing.assert_array_equal(previewed, plain[2])
    np.testing.assert_array_equal(selected(app, volume_node), plain[3])


def test_the_effect_asks_when_the_mouse_enters_a_view_and_when_it_scrolls(app, volume_node, predictor):
    """Not before setup, not during a run, not for another view than the one entered, not for pan or zoom; again
    when the active view shows another slice."""
    app.segmentation_for(volume_node, with_segment=True)
    slice_node, _ = axial_box(app, volume_node)
    other_view, _ = axial_box(app, volume_node)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    pre_encoder = segmenter.logic.pre_encoder
    trigger = PreEncodeTrigger()

    def ask(node, busy=False, live=True):
        trigger.ask(segmenter if live else None, app.editor if live else None, node, lambda: LESION, busy)
        assert pre_encoder.wait(WAIT)
        return list(pre_encoder.encoded)

    trigger.entered(slice_node)
    assert ask(slice_node, live=False) == [] and ask(slice_node, busy=True) == []
    assert ask(other_view) == []  # not the view the mouse is in
    assert ask(slice_node) == [3, 4, 2]
    segmenter.end_sessions()  # the features are dropped: asking again would encode them again
    slice_node.SetFieldOfView(30.0, 20.0, 1.0)  # zoom (as vtkMRMLSliceIntersectionWidget::ProcessZoomSlice)
    slice_node.SetSliceOrigin(5.0, 2.0, 0.0)  # pan (as its ProcessTranslateSlice)
    assert ask(slice_node) == [3, 4, 2]  # the same slice: not asked
    slice_node.JumpSliceByOffsetting(*ras_of(volume_node, (40.3, 20.4, 5.0)))  # scrolled to slice 5
    assert ask(slice_node) == [3, 4, 2, 5, 6, 4]


def test_a_run_pre_empts_the_worker_and_no_slice_is_encoded_twice(app, volume_node, tiny_model):
    """A box released while the worker encodes its slice waits for that one slice (it is then in the cache) and
    drops the neighbours; the model never computes two things at once."""
    double = BlockingEncoderDouble(tiny_model)
    app.segmentation_for(volume_node, with_segment=True)
    slice_node, corners = axial_box(app, volume_node)
    segmenter = InteractiveSegmenter(MedSAM2Logic(double))
    segmenter.pre_encode(app.editor, slice_node, LESION)
    assert double.entered.wait(WAIT)
    releaser = threading.Timer(0.3, double.release.set)
    started = time.perf_counter()
    releaser.start()
    box = segmenter.box(app.editor, slice_node, corners, LESION)
    waited = time.perf_counter() - started
    releaser.join()
    pre_encoder = segmenter.logic.pre_encoder
    assert pre_encoder.wait(WAIT)
    assert box.slice_index == 3 and selected(app, volume_node).any()
    assert waited >= 0.25  # the run waited for the slice in flight instead of encoding it beside the worker
    assert pre_encoder.encoded == [3]  # the neighbours were dropped when the run started
    assert double.encoded == {3: 1} and double.most_at_once == 1
    segmenter.pre_encode(app.editor, slice_node, LESION)  # after the run: the neighbours again, slice 3 not
    assert pre_encoder.wait(WAIT)
    assert pre_encoder.encoded == [3, 4, 2] and double.encoded == {3: 1, 4: 1, 2: 1}


def test_closing_the_scene_stops_the_worker_and_releases_the_features(app, volume_node, tiny_model):
    double = BlockingEncoderDouble(tiny_model)
    app.segmentation_for(volume_node, with_segment=True)
    slice_node, _ = axial_box(app, volume_node)
    segmenter = InteractiveSegmenter(MedSAM2Logic(double))
    segmenter.watch(app.scene)
    segmenter.pre_encode(app.editor, slice_node, LESION)
    assert double.entered.wait(WAIT)
    source = app.editor.source()
    cache = weakref.ref(segmenter.logic.stack_for(source, view_geometry(source, slice_node), LESION.windowing)[1])
    releaser = threading.Timer(0.2, double.release.set)
    releaser.start()
    app.scene.Clear(False)  # waits for the slice in flight, then the worker ends
    releaser.join()
    pre_encoder = segmenter.logic.pre_encoder
    assert pre_encoder._thread is None and pre_encoder.idle
    assert pre_encoder.encoded == [3] and segmenter.held_bytes() == 0
    gc.collect()
    assert cache() is None  # nothing keeps the features the worker computed
    segmenter.close()


def test_a_failure_in_the_worker_is_reported_once_and_the_next_preview_works(app, volume_node, tiny_model, predictor,
                                                                            caplog):
    double = BlockingEncoderDouble(tiny_model, fail_in_worker=True)
    double.release.set()
    app.segmentation_for(volume_node, with_segment=True)
    slice_node, corners = axial_box(app, volume_node)
    segmenter = InteractiveSegmenter(MedSAM2Logic(double))
    with caplog.at_level(logging.ERROR, logger="MedSAM2Lib.slicer_glue.pre_encoder"):
        assert segmenter.pre_encode(app.editor, slice_node, LESION) is None
        assert segmenter.logic.pre_encoder.wait(WAIT)
    assert "could not encode slice 3 in the background" in caplog.text
    assert "RuntimeError: test double: the encoder failed" in caplog.text  # with its traceback
    assert segmenter.logic.pre_encoder.encoded == []  # it stopped at the failure

    box = segmenter.box(app.editor, slice_node, corners, LESION)
    assert double.encoded == {3: 1}  # the preview encoded its slice itself
    logits = segmenter.session_of(app.editor).session.results[box.slice_index].logits
    plain = InteractiveSegmenter(MedSAM2Logic(predictor))
    app.editor_node.SetSelectedSegmentID(
        app.editor_node.GetSegmentationNode().GetSegmentation().AddEmptySegment("", "plain"))
    plain_box = plain.box(app.editor, slice_node, corners, LESION)
    np.testing.assert_array_equal(logits, plain.session_of(app.editor).session.results[plain_box.slice_index].logits)

    failure = segmenter.pre_encode(app.editor, slice_node, LESION)
    assert failure is not None and "RuntimeError: test double: the encoder failed" in failure
    assert segmenter.pre_encode(app.editor, slice_node, LESION) is None  # said once


def test_pre_encoding_never_replaces_the_live_sessions_stack(app, volume_node, predictor):
    """A view along another axis, or another window, would need another stack: building it would drop the live
    sessions' image features, which only a box may do; nothing is encoded and the sessions stay."""
    app.segmentation_for(volume_node, with_segment=True)
    slice_node, corners = axial_box(app, volume_node)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    segmenter.box(app.editor, slice_node, corners, LESION)
    state = segmenter.session_of(app.editor)
    app.editor_node.SetSelectedSegmentID(None)
    coronal = app.view(volume_node, "Coronal", CENTRE)
    other_window = InteractiveOptions(windowing=Windowing("window", (0.0, 100.0)))
    assert segmenter.pre_encode(app.editor, coronal, LESION) is None
    assert segmenter.pre_encode(app.editor, slice_node, other_window) is None
    assert segmenter.logic.pre_encoder.wait(WAIT) and segmenter.logic.pre_encoder.encoded == []
    assert list(segmenter.sessions.values()) == [state] and segmenter.logic.stack_for(
        app.editor.source(), state.geometry, state.windowing)[1] is state.session.cache


def test_the_web_tool_encodes_the_slice_under_the_mouse(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    slice_node, corners = axial_box(app, volume_node)
    slice_logics = vtk.vtkCollection()  # the views' logics, as trame-slicer registers them (the tool asks for spacing)
    slice_logics.AddItem(app._slice_logics[-1])
    app.app_logic.SetSliceLogics(slice_logics)
    set_parameter(app.editor_node, "Windowing", window_text(LESION.windowing))  # as the desktop effect stores it
    model = PageModel(ModelOptions(ModelChoice(DATA / "medsam2_tiny_random_seed0.pt", DATA / "medsam2_tiny_test.yaml",
                                               "cpu", "float32")))
    tool = WebTool(app.scene, app.app_logic, app.editor_node, model, lambda: None)
    tool.view_event("move", slice_node, corners[0])  # the mouse over the view, no button pressed
    pre_encoder = tool.segmenter.logic.pre_encoder
    assert pre_encoder.wait(WAIT) and pre_encoder.encoded == [3, 4, 2]
    tool.view_event("move", slice_node, corners[1])  # the same slice: nothing more
    assert pre_encoder.wait(WAIT) and pre_encoder.encoded == [3, 4, 2]
    tool.segmenter.close()


def test_the_worker_keeps_no_more_than_the_cache_allows(predictor):
    """The worker only adds to the cache it is given, whose bound evicts the least recently used slices."""
    stack = np.random.default_rng(0).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    cache = FeatureCache(stack, max_slices=2)
    pre_encoder = PreEncoder(predictor)
    pre_encoder.request(stack, cache, slices_to_encode(0, 6, neighbours=2))
    assert pre_encoder.wait(WAIT)
    assert slices_to_encode(0, 6, neighbours=2) == [0, 1, 2] and pre_encoder.encoded == [0, 1, 2]
    assert [index for index in range(6) if index in cache] == [1, 2]
    assert slices_to_encode(5, 6) == [5, 4]
