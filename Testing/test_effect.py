"""What the Segment Editor effect decides (MedSAM2Lib.slicer_glue.effect and module_state), on Slicer's real core
(slicer-core): which views and events it acts on, which view a command applies to, what it shows when the
selected segment changes, its parameters as session options, the status line or a dialog, setup before
computing (and nothing written when the effect is left during setup), and the module's scene observation.
The Qt file only copies these answers into widgets and Slicer calls."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import vtk

from MedSAM2Lib.inference.predictor import VolumePredictor
from MedSAM2Lib.inference.preprocessing import Windowing
from MedSAM2Lib.slicer_glue import effect, setup_flow
from MedSAM2Lib.slicer_glue.box import BoxTool
from MedSAM2Lib.slicer_glue.effect import (LEFT_DURING_SETUP, SETUP_DECLINED, DeferredActions, LastSliceView,
                                           SelectionWatch, act_after_setup, report_for, segmenter_for,
                                           session_options, slice_node_of, what_to_show)
from MedSAM2Lib.slicer_glue.geometry import BoxError, ObliqueViewError, PointError
from MedSAM2Lib.slicer_glue.interactive import InteractionError, InteractiveOptions, InteractiveSegmenter
from MedSAM2Lib.slicer_glue.logic import EditorStateError, MedSAM2Logic
from MedSAM2Lib.slicer_glue.module_state import ModuleState
from MedSAM2Lib.slicer_glue.run_controller import NoSegmentationError, RunController, RunRefused
from MedSAM2Lib.slicer_glue.runtime import TorchState
from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras, segment_array
from MedSAM2Lib.slicer_glue.setup_flow import MedSAM2Settings, SetupFlow

from slicer_support import app, lesion_volume, xy_of  # noqa: F401 (app is a fixture)
from test_setup_flow import PyTorchUtilsLogicDouble, SettingsDouble
from test_weights import publish

LESION = InteractiveOptions(windowing=Windowing("window", (0.0, 200.0)))
CENTRE = (40.3, 20.4, 3.0)
HALF_BOX = np.array([8.6, 6.3, 0.0])


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return VolumePredictor(tiny_model)


@pytest.fixture
def volume_node(app):
    return add_volume(app.scene, lesion_volume((7, 48, 64)), oblique_ijk_to_ras(), "lesion")


def box_corners(slice_node, volume_node, centre=CENTRE):
    low, high = np.array(centre) - HALF_BOX, np.array(centre) + HALF_BOX
    return xy_of(slice_node, volume_node, low), xy_of(slice_node, volume_node, high)


# -- parameters ---------------------------------------------------------------------------------------------


def test_parameters_become_session_options_as_the_effect_stores_them(app):
    """qSlicerSegmentEditorAbstractEffect::setParameter(name, value) sets the segment editor node's attribute
    "MedSAM2.<name>"; integers are stored as text."""
    node = app.editor_node
    assert session_options(node) == InteractiveOptions()  # the defaults: display window, both directions
    assert effect.post_processing(node) == (True, True)
    for name, value in {"Direction": "forward", "Windowing": "lung", "RangeEnabled": "1", "RangeFirst": "2",
                        "RangeLast": "9", "FillHoles": "0", "AutoUpdate": "1", "NewSegmentPerBox": "1",
                        "WriteMode": "add"}.items():
        node.SetAttribute(f"MedSAM2.{name}", value)
    node.SetAttribute("Direction", "backward")  # a common parameter of another name space is not ours
    options = session_options(node)
    assert options == InteractiveOptions(windowing=Windowing.parse("lung"), direction="forward", slice_range=(2, 9),
                                         add=True, auto_update=True, new_segment_per_box=True)
    assert effect.post_processing(node) == (False, True)
    node.SetAttribute("MedSAM2.RangeEnabled", "0")
    assert session_options(node).slice_range is None


def test_a_front_end_without_the_effect_object_stores_parameters_where_the_effect_does(app):
    """The web page sets parameters through effect.set_parameter: the effect's attributes, switches as 0/1."""
    node = app.editor_node
    effect.set_parameter(node, "Direction", "backward")
    effect.set_parameter(node, "NewSegmentPerBox", True)
    effect.set_parameter(node, "RangeEnabled", True)
    effect.set_parameter(node, "RangeFirst", 3)
    effect.set_parameter(node, "RangeLast", 5)
    effect.set_parameter(node, "WriteMode", "add")
    assert node.GetAttribute("MedSAM2.NewSegmentPerBox") == "1"
    assert session_options(node) == InteractiveOptions(direction="backward", slice_range=(3, 5), add=True,
                                                       new_segment_per_box=True)
    effect.set_parameter(node, "NewSegmentPerBox", False)
    assert not session_options(node).new_segment_per_box
    with pytest.raises(KeyError, match="no parameter 'Directions'"):
        effect.set_parameter(node, "Directions", "both")


def test_reset_before_setup_drops_the_box_only(app):
    tool = BoxTool()
    tool.box = object()  # any box
    assert effect.reset_session(None, None, tool).startswith("The selected segment's MedSAM2 session was reset.")
    assert tool.box is None


# -- views ----------------------------------------------------------------------------------------------------


def test_3d_view_nodes_are_ignored_slice_view_nodes_kept(app):
    """qMRMLSegmentEditorWidget sends 3D views' vtkMRMLViewNode events to processViewNodeEvents too."""
    view_node = app.scene.AddNewNodeByClass("vtkMRMLViewNode")
    slice_node = app.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    assert slice_node_of(view_node) is None and slice_node_of(None) is None
    assert slice_node_of(slice_node) is slice_node


def press(interactor, event=vtk.vtkCommand.LeftButtonPressEvent):
    interactor.InvokeEvent(event)


def test_a_command_applies_to_the_slice_view_last_worked_in_with_any_effect(app):
    red, yellow = (app.scene.AddNewNodeByClass("vtkMRMLSliceNode") for _ in range(2))
    red_interactor, yellow_interactor = vtk.vtkRenderWindowInteractor(), vtk.vtkRenderWindowInteractor()
    aborted = []

    def editor_observer(caller, event):  # as qMRMLSegmentEditorWidget::processEvents for a consuming effect
        aborted.append(event)
        caller.GetCommand(tag).SetAbortFlag(1)

    tag = yellow_interactor.AddObserver(vtk.vtkCommand.LeftButtonPressEvent, editor_observer, 1.0)
    views = LastSliceView()
    assert views.view_for_command([red, yellow]) is red  # nothing worked in yet: the first view
    views.watch([(red_interactor, red), (yellow_interactor, yellow)])
    press(yellow_interactor)  # Paint's stroke in Yellow: the editor aborts it after us
    assert aborted and views.view_for_command([red, yellow]) is yellow
    red_interactor.InvokeEvent(vtk.vtkCommand.MouseMoveEvent)  # passing over Red on the way to the button
    assert views.view_for_command([red, yellow]) is yellow
    press(red_interactor, vtk.vtkCommand.MouseWheelForwardEvent)  # scrolling Red is working in it
    assert views.view_for_command([red, yellow]) is red
    assert views.view_for_command([yellow]) is yellow  # Red no longer in the layout
    views.stop()
    press(yellow_interactor)
    assert views.view_for_command([red, yellow]) is red  # no observation left after stop


# -- what is shown --------------------------------------------------------------------------------------------


def test_switching_the_selected_segment_refreshes_box_points_and_buttons(app, volume_node, predictor):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    first = app.editor_node.GetSelectedSegmentID()
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))
    axial = app.view(volume_node, "Axial", CENTRE)
    other_view = app.view(volume_node, "Axial", (40.3, 20.4, 5.0))
    segmenter.box(app.editor, axial, box_corners(axial, volume_node), LESION)
    segmenter.propagate(app.editor, LESION)
    segmenter.points(app.editor, axial, [(xy_of(axial, volume_node, (42.0, 21.0, 3.0)), 1)], LESION)
    second = segmentation.GetSegmentation().AddEmptySegment("", "second")
    tool = BoxTool()
    for event, xy in zip(("press", "move", "release"), box_corners(axial, volume_node) + box_corners(axial, volume_node)[1:]):
        tool.handle(event, axial, xy, False, False, 1.25)
    watch = SelectionWatch()
    assert not watch.changed(app.editor_node, tool)  # the first look only records the selection
    # What the effect observes: the node's ModifiedEvent, which a selection and a parameter change both invoke.
    refreshes = []
    tag = app.editor_node.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                      lambda caller, event: refreshes.append(watch.changed(caller)))
    app.editor_node.SetAttribute("MedSAM2.Direction", "forward")
    app.editor_node.SetSelectedSegmentID(second)
    app.editor_node.SetSelectedSegmentID(first)
    app.editor_node.RemoveObserver(tag)
    assert refreshes == [False, True, True]

    shown = what_to_show(tool, segmenter, app.editor, app.editor_node, [axial, other_view], busy=False)
    assert shown.box_view is axial  # only the view the box was drawn in draws it
    assert len(shown.points[axial.GetID()]) == 1 and shown.points[other_view.GetID()] == []
    assert shown.buttons.propagate_text == "Update" and shown.buttons.reset_enabled
    inactive = what_to_show(tool, segmenter, app.editor, app.editor_node, [axial, other_view], False, active=False)
    assert inactive.box_view is None and inactive.points[axial.GetID()] == [] and inactive.buttons == shown.buttons

    app.editor_node.SetSelectedSegmentID(second)
    assert watch.changed(app.editor_node, tool) and tool.box is None  # the box was the first segment's prompt
    assert not watch.changed(app.editor_node, tool)  # an unrelated modification is no change
    shown = what_to_show(tool, segmenter, app.editor, app.editor_node, [axial, other_view], busy=False)
    assert shown.box_view is None and shown.points[axial.GetID()] == []
    assert shown.buttons.propagate_text == "Propagate" and not shown.buttons.propagate_enabled
    assert not shown.buttons.reset_enabled

    app.editor_node.SetSelectedSegmentID(first)
    assert watch.changed(app.editor_node, tool)
    shown = what_to_show(tool, segmenter, app.editor, app.editor_node, [axial, other_view], busy=True)
    assert len(shown.points[axial.GetID()]) == 1 and not shown.buttons.propagate_enabled  # busy


def test_before_setup_nothing_but_the_box_is_shown(app, volume_node):
    app.segmentation_for(volume_node, with_segment=True)
    axial = app.view(volume_node, "Axial", CENTRE)
    shown = what_to_show(BoxTool(), None, None, app.editor_node, [axial], busy=False)
    assert shown.box_view is None and shown.points == {axial.GetID(): []}
    assert shown.buttons.propagate_text == "Propagate" and not shown.buttons.propagate_enabled


# -- running --------------------------------------------------------------------------------------------------


def test_a_new_logic_starts_without_sessions(app, predictor):
    logic = MedSAM2Logic(predictor)
    segmenter = segmenter_for(None, logic, app.scene)
    assert segmenter_for(segmenter, logic, app.scene) is segmenter  # kept between clicks: its sessions go on
    replaced = segmenter_for(segmenter, MedSAM2Logic(predictor), app.scene)  # model, device or precision changed
    assert replaced is not segmenter
    assert segmenter._scene_observers == [] and len(replaced._scene_observers) == 2  # the old one stopped watching
    replaced.close()


def test_actions_from_mouse_events_run_after_the_event_and_only_while_active():
    scheduled, ran = [], []
    deferred = DeferredActions(scheduled.append)
    active = [True]
    deferred.defer(lambda: ran.append("box"), lambda: active[0])
    assert ran == []  # not inside the event handler
    scheduled.pop()()
    assert ran == ["box"]
    deferred.defer(lambda: ran.append("points"), lambda: active[0])
    active[0] = False  # Esc before the event loop came back
    scheduled.pop()()
    assert ran == ["box"]


@pytest.mark.parametrize("error, where", [
    (PointError("The point lies outside the volume."), "status"),
    (BoxError("The box lies entirely outside the volume."), "status"),
    (InteractionError("The selected segment has no MedSAM2 session: draw a box first."), "status"),
    (EditorStateError("Select a source volume in the Segment Editor first."), "status"),
    (RunRefused("MedSAM2 is busy segmenting."), "status"),
    (NoSegmentationError("Select a segmentation in the Segment Editor first."), "status"),
    (ObliqueViewError("The slice view is not parallel to the volume's slices."), "rotate"),
    (ValueError("operands could not be broadcast together"), "dialog"),  # a defect, not a refusal
    (setup_flow.SetupError("PyTorch could not be installed."), "dialog"),
    (RuntimeError("CUDA out of memory"), "dialog"),
])
def test_refusals_go_to_the_status_line_errors_to_a_dialog(error, where):
    report = report_for(error)
    assert report.where == where and str(error) in report.sentence


class EffectDouble:
    """Test double for the scripted effect's active(): deactivate() is what Esc or another effect does."""

    def __init__(self):
        self.is_active = True

    def active(self):
        return self.is_active

    def deactivate(self):
        self.is_active = False


def setup_needing_weights(tmp_path, monkeypatch, confirm):
    """The real setup flow with PyTorch present and the weights to download (from a local test server)."""
    monkeypatch.setattr(setup_flow, "torch_state", lambda: TorchState("2.13.0", "2.13.0"))
    settings = MedSAM2Settings(SettingsDouble())
    settings.set_checkpoint_path(tmp_path / "MedSAM2_latest.pt")
    source = publish(tmp_path / "server", b"checkpoint bytes")
    return SetupFlow(settings, PyTorchUtilsLogicDouble, lambda package: None, confirm, weights_source=source)


def box_run(app, volume_node, predictor, log):
    """The effect's run: one box action of the interactive segmenter on the shared controller."""
    slice_node = app.view(volume_node, "Axial", CENTRE)
    segmenter = InteractiveSegmenter(MedSAM2Logic(predictor))

    def run():
        log.append("run")
        return segmenter.run(RunController(), app.editor, "box", slice_node, box_corners(slice_node, volume_node),
                             LESION)

    return run


@pytest.mark.parametrize("during_setup", ["leave the effect", "delete the segment", "remove the segmentation",
                                          "nothing"])
def test_leaving_during_first_time_setup_writes_nothing(app, volume_node, predictor, tmp_path, monkeypatch,
                                                        during_setup):
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    target = app.editor_node.GetSelectedSegmentID()
    scripted_effect, log = EffectDouble(), []

    def confirm(question):  # the setup's dialog: the user acts in Slicer meanwhile
        log.append("setup")
        if during_setup == "leave the effect":
            scripted_effect.deactivate()
        elif during_setup == "delete the segment":
            segmentation.GetSegmentation().RemoveSegment(target)
        elif during_setup == "remove the segmentation":
            app.scene.RemoveNode(segmentation)
        return True

    flow = setup_needing_weights(tmp_path, monkeypatch, confirm)
    message = act_after_setup(app.editor_node, flow.ensure_ready, scripted_effect.active,
                              box_run(app, volume_node, predictor, log))
    assert flow.readiness().checkpoint_present  # the setup itself went through
    if during_setup == "nothing":
        assert log == ["setup", "run"] and message.startswith("Box on slice 3")
        assert segment_array(segmentation, target, volume_node).any()
        return
    assert log == ["setup"]
    assert message == {"leave the effect": LEFT_DURING_SETUP,
                       "delete the segment": "The segment 'target' was deleted during the run: nothing was written.",
                       "remove the segmentation": "The segmentation 'Segmentation' was removed during the run: "
                                                  "nothing was written."}[during_setup]
    if during_setup == "leave the effect":
        assert not segment_array(segmentation, target, volume_node).any()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == (0 if during_setup == "delete the segment" else 1)
    removed = during_setup == "remove the segmentation"
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == (0 if removed else 1)


def test_a_declined_setup_computes_nothing(app, volume_node, predictor, tmp_path, monkeypatch):
    app.segmentation_for(volume_node, with_segment=True)
    log = []
    flow = setup_needing_weights(tmp_path, monkeypatch, lambda question: False)
    assert act_after_setup(app.editor_node, flow.ensure_ready, lambda: True,
                           box_run(app, volume_node, predictor, log)) == SETUP_DECLINED
    assert log == []


def test_without_a_segmentation_nothing_is_set_up(app):
    with pytest.raises(NoSegmentationError):
        act_after_setup(app.editor_node, lambda: pytest.fail("set up"), lambda: True, lambda: pytest.fail("run"))


# -- the module's shared state ----------------------------------------------------------------------------------


class ModelCacheProbe:
    """Test double for runtime.ModelCache that counts releases."""

    def __init__(self):
        self.features_dropped = self.cleared = 0

    def forget_features(self):
        self.features_dropped += 1

    def clear(self):
        self.cleared += 1


def module_state(scene):
    state = ModuleState(SettingsDouble(), scene, PyTorchUtilsLogicDouble, lambda package: None, lambda question: True,
                        lambda label, done, total: None, lambda: False)
    state.models = ModelCacheProbe()
    return state


def test_the_module_state_releases_features_at_scene_close_and_leaves_the_scene_on_cleanup(app):
    state = module_state(app.scene)
    probe = state.models
    app.scene.Clear()
    assert probe.features_dropped == 1
    state.cleanup()
    assert probe.cleared == 1
    app.scene.Clear()
    assert probe.features_dropped == 1  # no longer observed
    alive = weakref.ref(state)
    del state
    gc.collect()
    assert alive() is None  # the scene keeps no reference to a module's old state (module reload)


def test_without_cleanup_the_scene_keeps_the_state_alive(app):
    """What the cleanup is for: the scene's observer holds the state (and so its model) otherwise."""
    alive = weakref.ref(module_state(app.scene))
    gc.collect()
    assert alive() is not None
    alive().cleanup()


def test_setup_button_only_when_setup_can_fix_something_and_nothing_runs(app, tmp_path, monkeypatch):
    state = module_state(app.scene)
    state.settings.set_checkpoint_path(tmp_path / "absent.pt")
    monkeypatch.setattr(setup_flow, "torch_state", lambda: TorchState(None, None))
    assert state.setup_button_enabled()
    with state.runs.exclusive("segmenting"):
        assert not state.setup_button_enabled() and state.status() == "Busy segmenting..."
    monkeypatch.setattr(setup_flow, "torch_state", lambda: TorchState("2.1.0", "2.1.0"))  # too old: a blocker
    assert not state.setup_button_enabled()
    monkeypatch.setattr(setup_flow, "torch_state", lambda: TorchState("2.13.0", "2.13.0"))
    (tmp_path / "absent.pt").write_bytes(b"weights")
    assert not state.setup_button_enabled()  # ready
    state.cleanup()

