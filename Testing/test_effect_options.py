"""The Slicer side of precision and early stop: from the persisted settings to the predictor and the sessions,
where each direction stopped said in the status sentence, and progress that ends at its total. On Slicer's real
core (slicer-core) with the tiny model; the object's extent comes from ScriptedObjectScoreDouble."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.inference.preprocessing import Windowing
from MedSAM2Lib.inference.session import Session
from MedSAM2Lib.slicer_glue.interactive import InteractiveOptions, InteractiveSegmenter
from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic, PropagationProgress, view_geometry
from MedSAM2Lib.slicer_glue.run_controller import RunController, segment_box
from MedSAM2Lib.slicer_glue.runtime import ModelCache, ModelChoice
from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras
from MedSAM2Lib.slicer_glue.setup_flow import MedSAM2Settings

from conftest import DATA
from model_doubles import scripted_score_model
from slicer_support import app, lesion_volume, ras_of, xy_of  # noqa: F401 (app is a fixture)
from test_setup_flow import SettingsDouble

OPTIONS = InteractiveOptions(windowing=Windowing("window", (0.0, 200.0)))
SLICES = 12
KEY = 3  # the box's slice (K)
CENTRE = (40.3, 20.4, float(KEY))
HALF_BOX = np.array([8.6, 6.3, 0.0])
ABSENT_FROM = 6  # the double's object ends here: forward stops at 7 with early stop 2
STOP_SENTENCE = "Forward propagation stopped at slice 7: the model saw no object on slices 6-7 (2 in a row)."


@pytest.fixture
def scene_with_box(app):
    """The lesion volume of 12 slices, a segment selected, an axial view on slice 3 and a box there."""
    volume_node = add_volume(app.scene, lesion_volume((SLICES, 48, 64)), oblique_ijk_to_ras(), "lesion")
    app.segmentation_for(volume_node, with_segment=True)
    slice_node = app.view(volume_node, "Axial", CENTRE)
    low, high = np.array(CENTRE) - HALF_BOX, np.array(CENTRE) + HALF_BOX
    return slice_node, (xy_of(slice_node, volume_node, low), xy_of(slice_node, volume_node, high))


def extent_predictor(app, slice_node, tiny_config, checkpoints, early_stop):
    """The tiny model whose object score says the object is absent on slices >= ABSENT_FROM of the stack the
    view's box is propagated through."""
    source = app.editor.source()
    stack = MedSAM2Logic(None).stack_for(source, view_geometry(source, slice_node), OPTIONS.windowing)[0]
    assert stack.shape[0] == SLICES
    scores = {index: -1.0 for index in range(ABSENT_FROM, SLICES)}
    model = scripted_score_model(tiny_config, checkpoints["tiny"], stack, scores)
    return VolumePredictor(model, early_stop=early_stop)


def on_slice(app, slice_node, k):
    """Scroll the view to slice K = k; the view XY of a point inside the box there."""
    volume_node = app.editor_node.GetSourceVolumeNode()
    ijk = (41.0, 21.0, float(k))
    slice_node.JumpSliceByOffsetting(*ras_of(volume_node, ijk))
    return xy_of(slice_node, volume_node, ijk)


def recorder():
    calls = []
    return calls, lambda done, total: calls.append((done, total))


def test_settings_persist_and_parse_what_qsettings_returns():
    store = SettingsDouble()
    settings = MedSAM2Settings(store)
    assert settings.precision() == "auto" and settings.early_stop() == 5 and settings.model_choice().precision == "auto"
    settings.set_precision("bfloat16")
    settings.set_early_stop(8)
    settings.set_early_stop(None)  # track to the end; the number is kept for when it is switched on again
    again = MedSAM2Settings(store)
    assert again.precision() == "bfloat16" and again.model_choice().precision == "bfloat16"
    assert again.early_stop() is None and again.early_stop_slices() == 8
    # An INI-backed QSettings returns text.
    store.update({MedSAM2Settings.EARLY_STOP_KEY: "true", MedSAM2Settings.EARLY_STOP_SLICES_KEY: "7"})
    assert again.early_stop() == 7
    store[MedSAM2Settings.EARLY_STOP_KEY] = "false"
    assert again.early_stop() is None
    with pytest.raises(ValueError, match="at least one slice"):
        again.set_early_stop(0)


def test_settings_reach_the_predictor_and_the_sessions_and_precision_makes_a_new_logic(app, scene_with_box,
                                                                                      checkpoints):
    slice_node, corners = scene_with_box
    settings = MedSAM2Settings(SettingsDouble())
    settings.set_precision("float32")
    settings.set_early_stop(3)
    cache = ModelCache()
    base = ModelChoice(checkpoints["tiny"], DATA / "medsam2_tiny_test.yaml", "cpu")

    def logic():  # what the module's segmentationLogic does with its settings
        return cache.logic(replace(base, precision=settings.precision()), early_stop=settings.early_stop())

    exact = logic()
    loaded = cache.model(base)
    assert exact.predictor.dtype == torch.float32 and exact.predictor.early_stop == 3
    segmenter = InteractiveSegmenter(exact)
    segmenter.box(app.editor, slice_node, corners, OPTIONS)
    session = segmenter.session_of(app.editor).session
    assert session.early_stop == 3
    settings.set_early_stop(None)
    assert logic() is exact and exact.predictor.early_stop is None  # no new logic: features are kept
    assert len(segmenter.propagate(app.editor, OPTIONS).recomputed) == SLICES
    assert session.early_stop is None  # a session started before follows the setting on its next propagation

    # An incremental update (no early stop): the progress total is what it recomputes.
    segmenter.points(app.editor, slice_node, [(on_slice(app, slice_node, 9), 1)], OPTIONS)
    calls, progress = recorder()
    assert segmenter.propagate(app.editor, OPTIONS, progress=progress).recomputed == [9, 10, 11]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls, progress = recorder()
    assert segmenter.propagate(app.editor, OPTIONS, progress=progress).recomputed == [] and calls == []

    settings.set_precision("bfloat16")
    fast = logic()
    assert fast is not exact and fast.predictor.dtype == torch.bfloat16
    assert cache.model(base) is loaded  # the model is not loaded again
    assert fast.predictor.early_stop is None


def test_early_stop_is_said_and_the_progress_ends_at_its_total_interactively(app, scene_with_box, tiny_config,
                                                                             checkpoints):
    slice_node, corners = scene_with_box
    segmenter = InteractiveSegmenter(MedSAM2Logic(extent_predictor(app, slice_node, tiny_config, checkpoints, 2)))
    segmenter.box(app.editor, slice_node, corners, OPTIONS)
    calls, progress = recorder()
    result = segmenter.propagate(app.editor, OPTIONS, progress=progress)
    # Planned: 3..11 forward, 2..0 backward; forward stops at 7, leaving 8..11 out of the total.
    assert result.recomputed == [3, 4, 5, 6, 7, 2, 1, 0]
    assert calls == [(1, 12), (2, 12), (3, 12), (4, 12), (5, 8), (6, 8), (7, 8), (8, 8)]
    assert result.message == f"Propagated: 8 slice(s) recomputed. {STOP_SENTENCE} Undo (Ctrl+Z) reverts it."

    # A correction on slice 5 (tracked forward), then Update: only forward from 5 is recomputed, and it stops again.
    point = on_slice(app, slice_node, 5)
    calls, progress = recorder()
    point_result = segmenter.points(app.editor, slice_node, [(point, 1)], OPTIONS)
    assert point_result.slice_index == 5 and calls == []
    update = segmenter.propagate(app.editor, OPTIONS, progress=progress)
    assert update.recomputed == [5, 6, 7]
    assert calls == [(1, 7), (2, 7), (3, 3)] and update.message.count("Forward propagation stopped at slice 7") == 1

    # Automatic update says it too.
    auto = replace(OPTIONS, auto_update=True)
    calls, progress = recorder()
    auto_result = segmenter.points(app.editor, slice_node, [(point, 1)], auto, progress=progress)
    assert auto_result.message.endswith(f"re-propagated. {STOP_SENTENCE}") and calls[-1] == (3, 3)


def test_early_stop_is_said_and_the_progress_ends_at_its_total_in_one_run(app, scene_with_box, tiny_config,
                                                                          checkpoints):
    slice_node, corners = scene_with_box
    logic = MedSAM2Logic(extent_predictor(app, slice_node, tiny_config, checkpoints, 2))
    calls, progress = recorder()
    outcome = segment_box(RunController(), app.editor, lambda: logic, slice_node, corners, progress,
                          windowing=OPTIONS.windowing)
    assert outcome.written
    assert outcome.message.startswith("Segmented 8 slices (0-7) into 'target' of ")
    assert outcome.message.endswith(f"'. {STOP_SENTENCE} Undo (Ctrl+Z) reverts it.")
    assert calls == [(1, 12), (2, 12), (3, 12), (4, 12), (5, 8), (6, 8), (7, 8), (8, 8)]


def test_the_session_plans_what_its_propagation_yields(tiny_model, input_volume):
    """Without early stop, Session.planned is exactly what propagate then yields, per direction: a range, a new
    keyframe on an untracked slice, corrections in both directions, one direction, a prompt again on a
    conditioning slice, nothing left to do."""
    volume, key_slice, box = input_volume
    session = Session(VolumePredictor(tiny_model), volume[key_slice - 4 : key_slice + 4], early_stop=None)
    point = [[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]]
    steps = [("box", 4), ("propagate", "forward", (2, 6)), ("box", 1), ("propagate", "both", None),
             ("points", 6), ("points", 0), ("propagate", "backward", None), ("propagate", "both", None),
             ("box", 4), ("propagate", "both", None), ("propagate", "both", None)]
    yields = []
    for step in steps:
        if step[0] == "box":
            session.add_prompt(step[1], box=box)
        elif step[0] == "points":
            session.add_prompt(step[1], points=point, labels=[1])
        else:
            plan = session.planned(step[1], step[2])
            yielded = [result.index for result in session.propagate(step[1], step[2])]
            assert [i for slices in plan.values() for i in slices] == yielded
            yields.append(yielded)
    # 4 is already in the forward memory when the keyframe 1 comes; corrections stay as given when 4 changes.
    assert yields == [[4, 5, 6], [1, 2, 3, 5, 6, 7, 0], [0], [6, 7], [2, 3, 4, 5, 7], []]


def test_progress_without_a_yielded_stop_still_ends_at_its_total():
    """A direction may stop on a slice it did not need to recompute: finish() closes the total."""
    from MedSAM2Lib.inference.predictor import SliceResult

    calls, progress = recorder()
    counter = PropagationProgress({"forward": [4, 5, 6], "backward": [3, 2]}, progress)
    counter.slice_done(SliceResult(4, np.zeros((1, 1)), 1.0))
    counter.finish()
    assert calls == [(1, 5), (1, 1)]
