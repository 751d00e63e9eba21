"""One run at a time, cancel and deactivation, and the write into the segment captured at the start, on Slicer's
real editor logic (slicer-core). Things a user does while a run processes events are done from its progress
callback, which is where Slicer would process them."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic
from MedSAM2Lib.slicer_glue.run_controller import RunController, RunRefused, segment_box, session_buttons
from MedSAM2Lib.slicer_glue.scenario import segment_array

from slicer_support import LESION_CENTRE as CENTRE
from slicer_support import LESION_HALF_BOX as HALF_BOX
from slicer_support import BoxFillingPredictor, app, volume_node, xy_of  # noqa: F401 (fixtures)


def axial_box(app, volume_node):
    slice_node = app.view(volume_node, "Axial", CENTRE)
    low, high = np.array(CENTRE) - HALF_BOX, np.array(CENTRE) + HALF_BOX
    low[2] = high[2] = CENTRE[2]
    return slice_node, (xy_of(slice_node, volume_node, low), xy_of(slice_node, volume_node, high))


def run_box(app, volume_node, controller, during=None, at=3, **options):
    """Propagate a box; ``during()`` is called when the progress reports slice ``at``."""
    slice_node, corners = axial_box(app, volume_node)
    logic = MedSAM2Logic(BoxFillingPredictor())

    def progress(done, total):
        if done == at and during is not None:
            during()

    return segment_box(controller, app.editor, lambda: logic, slice_node, corners, progress, **options)


def segment(app, segmentation, segment_id, volume_node):
    return segment_array(segmentation, segment_id, volume_node)


def test_a_run_writes_into_the_selected_segment_and_says_where(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    target = app.editor_node.GetSelectedSegmentID()
    outcome = run_box(app, volume_node, RunController())
    assert outcome.written and not outcome.cancelled
    assert "into 'target'" in outcome.message and "20 slices (0-19)" in outcome.message
    assert segment(app, segmentation, target, volume_node).sum() > 100


def test_selecting_another_segment_mid_run_writes_to_the_original_one(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    original = app.editor_node.GetSelectedSegmentID()
    other = segmentation.GetSegmentation().AddEmptySegment("", "other")
    outcome = run_box(app, volume_node, RunController(), during=lambda: app.editor_node.SetSelectedSegmentID(other))
    assert outcome.written
    assert segment(app, segmentation, original, volume_node).sum() > 100
    assert segment(app, segmentation, other, volume_node).sum() == 0
    assert app.editor_node.GetSelectedSegmentID() == other  # the user's new selection is kept


def test_a_run_without_a_selected_segment_creates_one_even_if_the_user_selects_another(app, volume_node):
    segmentation = app.segmentation_for(volume_node)
    other = segmentation.GetSegmentation().AddEmptySegment("", "other")
    app.editor_node.SetSelectedSegmentID("")
    outcome = run_box(app, volume_node, RunController(), during=lambda: app.editor_node.SetSelectedSegmentID(other))
    assert outcome.written and "into 'MedSAM2'" in outcome.message
    created = [segment_id for segment_id in segmentation.GetSegmentation().GetSegmentIDs() if segment_id != other]
    assert len(created) == 1 and segment(app, segmentation, created[0], volume_node).sum() > 100
    assert segment(app, segmentation, other, volume_node).sum() == 0


def test_removing_the_segmentation_mid_run_writes_nothing_and_says_so(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    bystander = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "bystander")
    segment_count = app.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    outcome = run_box(app, volume_node, RunController(), during=lambda: app.scene.RemoveNode(segmentation))
    assert not outcome.written and outcome.cancelled
    assert outcome.message == ("The segmentation 'Segmentation' was removed during the run. "
                               "The segmentation was not changed.")
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == segment_count - 1
    assert bystander.GetSegmentation().GetNumberOfSegments() == 0


def test_deleting_the_segment_mid_run_cancels_it_at_once_and_writes_nothing(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    target = app.editor_node.GetSelectedSegmentID()
    controller = RunController()
    seen = []

    def delete_segment():
        segmentation.GetSegmentation().RemoveSegment(target)
        seen.append(controller.should_cancel())  # before the run's next progress check

    outcome = run_box(app, volume_node, controller, during=delete_segment)
    assert seen == [True] and outcome.cancelled and not outcome.written
    assert outcome.message == "The segment 'target' was deleted during the run. The segmentation was not changed."
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0


def test_deleting_another_segment_mid_run_does_not_cancel_it(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    other = segmentation.GetSegmentation().AddEmptySegment("", "other")
    outcome = run_box(app, volume_node, RunController(), during=lambda: segmentation.GetSegmentation().RemoveSegment(other))
    assert outcome.written


def test_the_computing_context_surrounds_the_computation_never_the_confirmation(app, volume_node):
    """The effect's wait cursor is that context: the hidden-segment question must show a normal cursor."""
    app.segmentation_for(volume_node, with_segment=True)
    log = []

    @contextlib.contextmanager
    def computing():
        log.append("enter")
        yield
        log.append("exit")

    def confirm(target):
        log.append("confirm")
        return True

    outcome = run_box(app, volume_node, RunController(computing), during=lambda: log.append("computing"),
                      confirm_target=confirm)
    assert outcome.written and log == ["confirm", "enter", "computing", "exit"]


def test_switching_the_editor_to_another_segmentation_writes_nothing(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    other = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    outcome = run_box(app, volume_node, RunController(),
                      during=lambda: app.editor_node.SetAndObserveSegmentationNode(other))
    assert not outcome.written and "now edits another segmentation than 'Segmentation'" in outcome.message
    assert not segment(app, segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), volume_node).any()
    assert other.GetSegmentation().GetNumberOfSegments() == 0


def test_deactivation_mid_run_cancels_and_writes_nothing(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    target = app.editor_node.GetSelectedSegmentID()
    controller = RunController()
    effect = object()  # the effect that started the run
    outcome = run_box(app, volume_node, controller, owner=effect,
                      during=lambda: controller.cancel("The MedSAM2 effect was deactivated.", owner=effect))
    assert outcome.cancelled and not outcome.written
    assert outcome.message == "The MedSAM2 effect was deactivated. The segmentation was not changed."
    assert not segment(app, segmentation, target, volume_node).any() and not controller.busy


def test_cancel_after_the_last_slice_still_writes_nothing(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    controller = RunController()
    outcome = run_box(app, volume_node, controller, at=1, propagate=False,
                      during=lambda: controller.cancel("Cancelled."))
    assert outcome.cancelled and not segment(app, segmentation, app.editor_node.GetSelectedSegmentID(), volume_node).any()


def test_closing_the_scene_mid_run_cancels(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    outcome = run_box(app, volume_node, RunController(), during=app.scene.Clear)
    assert outcome.cancelled and outcome.message.startswith("The scene was closed.")


def test_another_owner_cannot_cancel_the_run(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    controller = RunController()
    outcome = run_box(app, volume_node, controller, owner="effect",
                      during=lambda: controller.cancel("deactivated", owner="another effect"))
    assert outcome.written


def test_a_second_start_while_running_is_refused(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    controller = RunController()
    refusals = []

    def start_again():
        # try/except rather than pytest.raises(...) as: a kept traceback would put the scene in a reference cycle,
        # and VTK objects freed by the cyclic collector in arbitrary order crash at exit.
        try:
            run_box(app, volume_node, controller)
        except RunRefused as error:
            refusals.append(str(error))
        with pytest.raises(RunRefused):
            with controller.exclusive("setting up MedSAM2"):
                pass

    outcome = run_box(app, volume_node, controller, during=start_again)
    assert refusals == ["MedSAM2 is busy segmenting: wait for it to finish or cancel it first."]
    assert outcome.written and not controller.busy
    assert segment(app, segmentation, app.editor_node.GetSelectedSegmentID(), volume_node).sum() > 100


def test_busy_changes_are_reported_and_released_after_an_error(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    controller = RunController()
    seen = []
    controller.observe(lambda: seen.append(controller.activity))
    slice_node, corners = axial_box(app, volume_node)

    def failing_logic():
        raise RuntimeError("No module named 'torch'")

    with pytest.raises(RuntimeError, match="torch"):
        segment_box(controller, app.editor, failing_logic, slice_node, corners)
    assert seen == ["segmenting", None] and not controller.busy


def test_a_hidden_segment_refusal_changes_nothing(app, volume_node):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    slice_node, corners = axial_box(app, volume_node)
    asked = []
    logic = MedSAM2Logic(BoxFillingPredictor())
    outcome = segment_box(RunController(), app.editor, lambda: logic, slice_node, corners,
                          confirm_target=lambda target: asked.append(target.segment_name) or False)
    assert asked == ["target"] and outcome.cancelled and not logic.predictor.calls
    assert not segment(app, segmentation, app.editor_node.GetSelectedSegmentID(), volume_node).any()


def test_segment_slice_then_propagate_encodes_each_slice_once_with_the_kept_logic(app, volume_node, checkpoints):
    """The effect asks the module's ModelCache for its logic on every click; the image features survive."""
    from MedSAM2Lib.slicer_glue.runtime import ModelCache, ModelChoice

    from conftest import DATA

    app.segmentation_for(volume_node, with_segment=True)
    slice_node, corners = axial_box(app, volume_node)
    models = ModelCache()
    choice = ModelChoice(checkpoints["tiny"], DATA / "medsam2_tiny_test.yaml", "cpu")
    controller = RunController()
    for propagate in (False, True):  # Segment slice (key slice 9), then Propagate over slices 8..10
        outcome = segment_box(controller, app.editor, lambda: models.logic(choice), slice_node, corners,
                              propagate=propagate, slice_range=(8, 10))
        assert outcome.written
    assert models.logic(choice).predictor.encoder_calls == 3


@pytest.mark.parametrize("propagated, saved, set_up, busy, expected", [
    (None, False, True, False, ("Propagate", False, False)),  # no session: draw a box first
    (False, False, True, False, ("Propagate", True, True)),
    (True, False, True, False, ("Update", True, True)),
    (True, False, True, True, ("Update", False, False)),  # a run is going on
    (None, True, True, False, ("Propagate", True, True)),  # a saved session: its next action restores it
    (None, True, False, False, ("Propagate", True, False)),  # before setup, Reset cannot drop it yet
    (None, True, True, True, ("Propagate", False, False)),
])
def test_session_buttons(propagated, saved, set_up, busy, expected):
    buttons = session_buttons(propagated, saved, set_up, busy)
    assert (buttons.propagate_text, buttons.propagate_enabled, buttons.reset_enabled) == expected
