"""What the MedSAM2 Segment Editor effect decides, without Qt: which events and views it acts on, which view a
command applies to, what it shows for the selected segment, how its parameters become session options, where a
failure is said, and the order of setup and computing. The effect (MedSAM2Slicer/SegmentEditorMedSAM2Lib)
only copies these answers into widgets, actors and Slicer calls.

No torch at import: Slicer loads the effect at startup, before PyTorch may be installed; what needs torch is
imported inside the functions that run after setup.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import vtk

from .box import BoxTool
from .run_controller import SessionButtons, WriteTarget, selected_has_saved_session, session_buttons
from .sequence_browser import cine_of

EFFECT_NAME = "MedSAM2"
# The effect's parameters and their defaults. qSlicerSegmentEditorAbstractEffect::setParameter stores each as the
# segment editor node's attribute "<effect name>.<parameter>" (and parameter() reads it back from there).
PARAMETER_DEFAULTS = {"Direction": "both", "Windowing": "display", "RangeEnabled": 0, "RangeFirst": 0, "RangeLast": 0,
                      "FillHoles": 1, "LargestComponent": 1, "BackgroundClicks": 0, "AutoUpdate": 0,
                      "NewSegmentPerBox": 0, "WriteMode": "replace", "ThroughTime": 0}
# The choices of the effect's list parameters, (label, value), as both front ends offer them.
DIRECTIONS = [("Both directions", "both"), ("Forward (increasing slice index)", "forward"),
              ("Backward (decreasing slice index)", "backward")]
WINDOWINGS = [("Display window (as shown)", "display"), ("CT soft tissue", "soft-tissue"),
              ("CT lung", "lung"), ("CT bone", "bone"), ("CT brain", "brain"),
              ("MR percentiles 0.5-99.5", "mr-percentiles"), ("Values as they are (0-255)", "none")]
WRITE_MODES = [("Replace the computed slices", "replace"), ("Add to the segment's earlier content", "add")]


# -- parameters -----------------------------------------------------------------------------------------------


def parameter(editor_node, name: str) -> str:
    """An effect parameter as the effect stores it on the segment editor node (its default when unset)."""
    value = editor_node.GetAttribute(f"{EFFECT_NAME}.{name}") if editor_node is not None else None
    return str(PARAMETER_DEFAULTS[name]) if value is None else value


def set_parameter(editor_node, name: str, value) -> None:
    """Store an effect parameter where the effect keeps it (what qSlicerSegmentEditorAbstractEffect::setParameter
    does: the node's attribute "<effect name>.<parameter>"; switches as 0/1), for a front end without Slicer's
    effect object (the web page). KeyError for a name the effect does not have."""
    if name not in PARAMETER_DEFAULTS:
        raise KeyError(f"The MedSAM2 effect has no parameter {name!r}.")
    editor_node.SetAttribute(f"{EFFECT_NAME}.{name}", str(int(value)) if isinstance(value, bool) else str(value))


def switch(editor_node, name: str) -> bool:
    """An on/off parameter (stored as "0"/"1", as qSlicerSegmentEditorAbstractEffect::setParameter(int) does)."""
    try:
        return int(parameter(editor_node, name)) != 0
    except ValueError:
        return bool(PARAMETER_DEFAULTS[name])


def post_processing(editor_node) -> Tuple[bool, bool]:
    """(fill holes, keep the largest 3D component) for the module's logic."""
    return switch(editor_node, "FillHoles"), switch(editor_node, "LargestComponent")


def session_options(editor_node):
    """The effect's parameters as an InteractiveOptions (imports torch: only after setup)."""
    from ..inference.preprocessing import Windowing
    from .interactive import InteractiveOptions

    windowing = parameter(editor_node, "Windowing")
    slice_range = None
    if switch(editor_node, "RangeEnabled"):
        slice_range = (int(parameter(editor_node, "RangeFirst")), int(parameter(editor_node, "RangeLast")))
    return InteractiveOptions(windowing=None if windowing == "display" else Windowing.parse(windowing),
                              direction=parameter(editor_node, "Direction"), slice_range=slice_range,
                              add=parameter(editor_node, "WriteMode") == "add",
                              auto_update=switch(editor_node, "AutoUpdate"),
                              new_segment_per_box=switch(editor_node, "NewSegmentPerBox"))


def offers_through_time(editor_node) -> bool:
    """Whether the effect offers "propagate through time": the source volume is the proxy of a Sequence of two
    frames or more (a cine loop or 4D image) that a sequence browser plays (read without torch: before setup)."""
    return editor_node is not None and cine_of(editor_node.GetSourceVolumeNode()) is not None


def through_time(editor_node) -> bool:
    """Whether the effect's actions run through time: offered and chosen (the "ThroughTime" parameter)."""
    return switch(editor_node, "ThroughTime") and offers_through_time(editor_node)


def progress_sentence(editor_node, done: int, total: int) -> str:
    """The status line during a run: slices, or frames through time."""
    unit = "frame" if through_time(editor_node) else "slice"
    return f"Segmenting {unit} {done} of {total}... (Cancel stops)"


# -- views ----------------------------------------------------------------------------------------------------


def slice_node_of(view_node) -> Optional[Any]:
    """The view node when it is a slice view's, else None. qMRMLSegmentEditorWidget passes 3D view nodes to
    processViewNodeEvents too (it observes each 3D view's vtkMRMLViewNode); Draw ignores them the same way
    (SegmentEditorDrawEffect.processViewNodeEvents: callerViewNode.IsA("vtkMRMLSliceNode"))."""
    return view_node if view_node is not None and view_node.IsA("vtkMRMLSliceNode") else None


class LastSliceView:
    """The slice view the user last worked in, whatever effect was active (a press, a wheel step or a key in it):
    the view "Use the segment on this slice" applies to.

    It observes each slice view's interactor at a priority above the Segment Editor's (1.0:
    qMRMLSegmentEditorWidget::setupViewObservations), because the editor aborts the events its active effect
    consumes (Paint's strokes among them) and later observers would not see them. The crosshair node cannot
    tell: the slice interactor style invalidates its cursor position when the mouse leaves a view
    (vtkMRMLSliceViewInteractorStyle, LeaveEvent), so it names no view once the mouse is on a button.
    """

    PRIORITY = 2.0
    EVENTS = (vtk.vtkCommand.LeftButtonPressEvent, vtk.vtkCommand.MiddleButtonPressEvent,
              vtk.vtkCommand.RightButtonPressEvent, vtk.vtkCommand.MouseWheelForwardEvent,
              vtk.vtkCommand.MouseWheelBackwardEvent, vtk.vtkCommand.KeyPressEvent)

    def __init__(self) -> None:
        self.slice_node = None
        self._observations: List[Tuple[Any, int]] = []

    def watch(self, views: Sequence[Tuple[Any, Any]]) -> None:
        """(interactor, slice node) of each slice view; replaces the views watched before (layout changes)."""
        self.stop()
        for interactor, slice_node in views:
            def worked_in(caller, event, slice_node=slice_node):
                self.slice_node = slice_node
            self._observations += [(interactor, interactor.AddObserver(event, worked_in, self.PRIORITY))
                                   for event in self.EVENTS]

    def stop(self) -> None:
        for interactor, tag in self._observations:
            interactor.RemoveObserver(tag)
        self._observations = []

    def view_for_command(self, slice_nodes: Sequence[Any]) -> Optional[Any]:
        """The view a command from the options panel applies to: the last one worked in if the layout still
        shows it, else the layout's first slice view (Red in Slicer's layouts)."""
        if self.slice_node is not None and any(node is self.slice_node for node in slice_nodes):
            return self.slice_node
        return slice_nodes[0] if slice_nodes else None


class PreEncodeTrigger:
    """When the effect asks for the slice a view shows to be encoded in the background
    (:meth:`InteractiveSegmenter.pre_encode`), so that the box the user is about to drag previews with the decoder
    only: when the mouse enters a slice view, which becomes the active view (qMRMLSegmentEditorWidget::
    setupViewObservations forwards each slice view's EnterEvent to the active effect, as Paint uses it), and when
    the active view shows another slice (scrolling, or a jump, changes its slice node's SliceToRAS; pan and zoom
    change only its XYToSlice: vtkMRMLSliceIntersectionWidget::ProcessTranslateSlice calls SetSliceOrigin and
    ProcessZoomSlice SetFieldOfView, so they ask nothing; the editor forwards the slice node's ModifiedEvent to
    processViewNodeEvents). Never while a run goes on (the run has the model), nor before setup (no segmenter:
    the model is not loaded yet).
    """

    def __init__(self) -> None:
        self.slice_node = None  # the active view's slice node
        self._shown: Optional[Tuple[float, ...]] = None  # its SliceToRAS when last asked

    def entered(self, slice_node) -> None:
        self.slice_node, self._shown = slice_node, None

    def ask(self, segmenter, editor, slice_node, options: Callable[[], Any], busy: bool) -> Optional[str]:
        """Start the background encoding if the active view shows a slice not asked for yet; returns the
        sentence of an earlier background failure for the status line (once), else None. options(): the
        effect's InteractiveOptions (read only when asking)."""
        if slice_node is None or slice_node is not self.slice_node or busy or segmenter is None or editor is None:
            return None
        matrix = slice_node.GetSliceToRAS()
        shown = tuple(matrix.GetElement(row, column) for row in range(4) for column in range(4))
        if shown == self._shown:
            return None
        self._shown = shown
        return segmenter.pre_encode(editor, slice_node, options())


# -- what is shown --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """What the effect shows now, for the selected segment."""

    box_view: Optional[Any]  # the slice node of the only view that draws the box (None: no box)
    points: Dict[str, List[Tuple[float, float, int]]]  # slice node ID -> the points drawn there (x, y, label)
    buttons: SessionButtons
    through_time_offered: bool = False  # the "Propagate through time" option is shown (the source is a cine)


def what_to_show(box_tool: BoxTool, segmenter, editor, editor_node, slice_nodes: Sequence[Any],
                 busy: bool, active: bool = True) -> Shown:
    """The box in the view it was drawn in only (other views of the layout never draw it); the selected
    segment's points in each view that shows their slice (none in the others; through time, those of the shown
    frame); nothing in the views while the effect is not active (a run that ends after Esc refreshes the buttons
    only); the session buttons ("Propagate through time" when the effect runs through time); whether the
    "Propagate through time" option is offered.

    segmenter, editor: the InteractiveSegmenter and its EditorAccess, or None before setup.
    """
    box = box_tool.box
    box_view = (box.slice_node if active and box is not None and any(node is box.slice_node for node in slice_nodes)
                else None)
    live = segmenter is not None and editor is not None
    points = {node.GetID(): (segmenter.points_in_view(editor, node) if live and active else [])
              for node in slice_nodes}
    session = segmenter.session_of(editor) if live else None
    saved = segmenter.restorable(editor) if live else selected_has_saved_session(editor_node)
    buttons = session_buttons(session.propagated if session is not None else None, saved, live, busy)
    if through_time(editor_node):
        buttons = replace(buttons, propagate_text=f"{buttons.propagate_text} through time")
    return Shown(box_view, points, buttons, offers_through_time(editor_node))


class SelectionWatch:
    """Tells when the segment editor node's selected segment (or segmentation) changed since last asked.

    Slicer calls an effect's updateGUIFromMRML only when an effect parameter changes, not when another segment
    is selected, so the effect observes the node's ModifiedEvent and asks this; on a change the box (the
    previous segment's prompt) is dropped and the points and buttons are those of the new selection.
    """

    def __init__(self) -> None:
        self._selection: Optional[Tuple[Optional[str], Optional[str]]] = None

    def changed(self, editor_node, box_tool: Optional[BoxTool] = None) -> bool:
        node = editor_node.GetSegmentationNode() if editor_node is not None else None
        selection = (node.GetID() if node is not None else None,
                     editor_node.GetSelectedSegmentID() or None if editor_node is not None else None)
        if selection == self._selection:
            return False
        first = self._selection is None
        self._selection = selection
        if not first and box_tool is not None:
            box_tool.box = None
        return not first


# -- running --------------------------------------------------------------------------------------------------


def segmenter_for(segmenter, logic, scene, sequences_logic=None):
    """The segmenter on this logic: an InteractiveSegmenter on the slices, or with ``sequences_logic`` (Slicer's
    vtkSlicerSequencesLogic; the effect passes it when :func:`through_time`) a CineSegmenter through time. Sessions
    live on the logic (the model and its image features): a new logic, after the model, device or precision
    changed, or the other kind of segmenter, starts a segmenter without sessions, and the one it replaces is closed
    (its sessions end, it stops observing the scene; slice sessions are restored from their segments' tags when
    next used). The new one watches ``scene``: sessions end with their segment or segmentation, and closing the
    scene releases the image features at once."""
    from .cine import CineSegmenter
    from .interactive import InteractiveSegmenter

    kind = CineSegmenter if sequences_logic is not None else InteractiveSegmenter
    if segmenter is not None and segmenter.logic is logic and type(segmenter) is kind:
        return segmenter
    if segmenter is not None:
        segmenter.close()
    segmenter = CineSegmenter(logic, sequences_logic) if sequences_logic is not None else InteractiveSegmenter(logic)
    segmenter.watch(scene)
    return segmenter


def reset_session(segmenter, editor, box_tool: BoxTool) -> str:
    """Reset: the selected segment's session ends, and a session saved in its tag is dropped too (not restored;
    the segment's content is kept); the box goes. segmenter, editor: None before setup. Returns the status."""
    if segmenter is not None:
        segmenter.end_session(editor)
    box_tool.box = None
    return "The selected segment's MedSAM2 session was reset. Drag a box to start again."


SETUP_DECLINED = "MedSAM2 is not set up yet: nothing was changed."
LEFT_DURING_SETUP = "The MedSAM2 effect was left during setup: nothing was changed."


def act_after_setup(editor_node, set_up: Callable[[], bool], active: Callable[[], bool],
                    run: Callable[[], Any]) -> str:
    """One action of the effect: setup first (it may install PyTorch: nothing that imports torch comes before
    it), then, because setup shows dialogs and processes events, a check that the effect is still active and
    the segmentation and segment selected when the action started are still there; only then ``run()``
    (a RunOutcome). Returns the status sentence.

    active(): qSlicerSegmentEditorAbstractEffect::active(), false once the effect was deactivated (Esc, another
    effect, another module or segmentation).
    """
    target = WriteTarget.capture(editor_node)
    if not set_up():
        return SETUP_DECLINED
    if not active():
        return LEFT_DURING_SETUP
    problem = target.problem(editor_node)
    if problem is not None:
        return problem
    return run().message


class DeferredActions:
    """Session actions started by mouse events run after the event handler returns (a run processes Qt events,
    which must not happen inside the interactor's callback), and only if the effect is still active then.

    schedule(callable): runs it once the event has returned (QTimer.singleShot(0, ...) in Slicer).
    """

    def __init__(self, schedule: Callable[[Callable[[], None]], None]) -> None:
        self.schedule = schedule

    def defer(self, action: Callable[[], None], active: Callable[[], bool]) -> None:
        def later():
            if active():
                action()
        self.schedule(later)


@dataclass(frozen=True)
class Report:
    """Where a failure is said: "status" (a refusal: one sentence in the status line), "rotate" (the view is
    oblique: offer to rotate the views) or "dialog" (an error, with its details)."""

    where: str
    sentence: str


# Refusals: the user can do something about them, and the sentence says what. Classes of modules that need
# torch are looked up only once their module is loaded (an error of theirs cannot exist before).
REFUSALS = (("geometry", "BoxError"), ("geometry", "PointError"), ("run_controller", "RunRefused"),
            ("run_controller", "NoSegmentationError"), ("logic", "EditorStateError"),
            ("interactive", "InteractionError"))


def report_for(error: BaseException) -> Report:
    """A refusal (click outside the image, no session, busy, ...) goes to the status line; an oblique view to
    the rotate offer; anything else to an error dialog."""
    from .geometry import ObliqueViewError

    if isinstance(error, ObliqueViewError):
        return Report("rotate", str(error))
    package = __package__
    refusals = tuple(getattr(sys.modules[f"{package}.{module}"], name) for module, name in REFUSALS
                     if f"{package}.{module}" in sys.modules)
    if isinstance(error, refusals):
        return Report("status", str(error))
    return Report("dialog", f"MedSAM2 could not segment: {error}")

