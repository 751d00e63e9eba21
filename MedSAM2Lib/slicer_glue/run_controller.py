"""One MedSAM2 run at a time, shared by the module and the Segment Editor effect: start, cancel, and the write
into the segment chosen when the run started.

A run computes (setup, model, propagation: slow) and then writes. Inside Slicer the computation processes Qt
events after each slice to stay responsive, so anything may happen meanwhile: Cancel, the effect being
deactivated (the Segment Editor's own Escape shortcut, another effect, another module, another segmentation:
``qMRMLSegmentEditorWidget::setSegmentationNode`` deactivates the active effect), another segment selected, the
target deleted, the scene closed, a run button clicked again. Each has one defined outcome here:

- a second start while one is running is refused (:class:`RunRefused`), whichever button started the first;
- :meth:`RunController.cancel` (Cancel, deactivation: Esc is the Segment Editor's shortcut for it, scene close,
  the target segment or segmentation deleted) stops the computation at its next progress check and nothing is
  written;
- the result goes to the segmentation node and segment captured at the start (:class:`WriteTarget`); when the
  node or segment is gone, or the editor now edits another segmentation, nothing is written and the outcome
  says so.

Usage (the effect's Propagate button)::

    outcome = controller.run(editor_node, compute=lambda should_cancel: ..., write=lambda result, target: ...,
                             owner=effect)
    statusLabel.text = outcome.message

No Qt and no torch here: the module imports this before PyTorch is installed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, List, Optional, TypeVar

import slicer
import vtk

NEW_SEGMENT_NAME = "MedSAM2"
# The tag a segment keeps its MedSAM2 session in (written by slicer_glue.interactive); read here, without torch, so
# that the effect can tell before setup that the selected segment has a session to go on with.
SESSION_TAG = "MedSAM2.Session"

Result = TypeVar("Result")
CancelCheck = Callable[[], bool]


class RunRefused(RuntimeError):
    """Another MedSAM2 run or setup is in progress."""


class NoSegmentationError(ValueError):
    """The Segment Editor has no segmentation selected."""


@dataclass(frozen=True)
class WriteTarget:
    """Where a run's result goes, captured when the run starts."""

    segmentation_node: Any  # vtkMRMLSegmentationNode
    segment_id: Optional[str]  # None: no segment was selected; a new one is created when writing
    segmentation_name: str
    segment_name: str

    @classmethod
    def capture(cls, editor_node) -> "WriteTarget":
        """The editor's segmentation and selected segment now (the segment None when none is selected)."""
        node = editor_node.GetSegmentationNode()
        if node is None:
            raise NoSegmentationError("Select a segmentation in the Segment Editor first.")
        segment_id = editor_node.GetSelectedSegmentID() or None
        segment = node.GetSegmentation().GetSegment(segment_id) if segment_id else None
        if segment is None:
            return cls(node, None, node.GetName(), NEW_SEGMENT_NAME)
        return cls(node, segment_id, node.GetName(), segment.GetName())

    def problem(self, editor_node) -> Optional[str]:
        """Why the result cannot be written now (a sentence), or None."""
        node = self.segmentation_node
        scene = node.GetScene()
        if scene is None or not scene.IsNodePresent(node):
            return f"The segmentation '{self.segmentation_name}' was removed during the run: nothing was written."
        if editor_node.GetSegmentationNode() is not node:
            return (f"The Segment Editor now edits another segmentation than '{self.segmentation_name}': nothing was "
                    f"written. Select '{self.segmentation_name}' and run again.")
        if self.segment_id is not None and node.GetSegmentation().GetSegment(self.segment_id) is None:
            return f"The segment '{self.segment_name}' was deleted during the run: nothing was written."
        return None


@dataclass(frozen=True)
class RunOutcome:
    """What happened, in one sentence for the status line."""

    written: bool
    cancelled: bool
    message: str
    result: Any = None


class RunController:
    """Allows one MedSAM2 run (or setup) at a time; the module and the effect share one instance.

    ``busy``/``activity`` say what runs; ``cancel(reason)`` stops it; ``observe(callback)`` is told whenever
    busy changes (to enable or disable buttons).
    """

    def __init__(self, computing: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        """computing(): a context entered around each run's computation and write only, never around what
        asks the user (the effect's wait cursor: a dialog under it would show a busy cursor)."""
        self.computing = computing
        self._activity: Optional[str] = None
        self._owner: Any = None
        self._cancel_reason: Optional[str] = None
        self._listeners: List[Callable[[], None]] = []

    @property
    def busy(self) -> bool:
        return self._activity is not None

    @property
    def activity(self) -> Optional[str]:
        """What is running ("segmenting", "setting up MedSAM2"), or None."""
        return self._activity

    def observe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever a run starts or ends; returns the function that stops it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def cancel(self, reason: str = "Cancelled.", owner: Any = None) -> None:
        """Stop the current run at its next check (nothing is written); with ``owner``, only that owner's run."""
        if self.busy and (owner is None or owner is self._owner) and self._cancel_reason is None:
            self._cancel_reason = reason

    def should_cancel(self) -> bool:
        return self._cancel_reason is not None

    @contextlib.contextmanager
    def exclusive(self, activity: str, owner: Any = None) -> Iterator[None]:
        """Hold the controller for ``activity``; RunRefused if something else holds it."""
        if self.busy:
            raise RunRefused(f"MedSAM2 is busy {self._activity}: wait for it to finish or cancel it first.")
        self._activity, self._owner, self._cancel_reason = activity, owner, None
        self._notify()
        try:
            yield
        finally:
            self._activity = self._owner = self._cancel_reason = None
            self._notify()

    def run(
        self,
        editor_node,
        compute: Callable[[CancelCheck], Result],
        write: Callable[[Result, WriteTarget], str],
        owner: Any = None,
        confirm_target: Optional[Callable[[WriteTarget], bool]] = None,
        activity: str = "segmenting",
    ) -> RunOutcome:
        """Capture the target, ``compute(should_cancel)``, then ``write(result, target)`` unless cancelled or the
        target went away. ``write`` returns the sentence saying what was written.

        confirm_target(target): asked before computing (the effect asks to show a hidden segment); False stops.
        Exceptions from compute or write propagate (the caller shows them) unless a cancel was requested, in
        which case the computation was interrupted by it and the outcome is "cancelled".
        """
        with self.exclusive(activity, owner):
            target = WriteTarget.capture(editor_node)
            if confirm_target is not None and not confirm_target(target):
                return RunOutcome(False, True, "Cancelled: the segmentation was not changed.")
            with self._watching(target), self.computing():
                try:
                    result = compute(self.should_cancel)
                except Exception:
                    if self._cancel_reason is None:
                        raise
                    return self._cancelled()
                if self._cancel_reason is not None:
                    return self._cancelled()
                problem = target.problem(editor_node)
                if problem is not None:
                    return RunOutcome(False, False, problem, result)
                return RunOutcome(True, False, write(result, target), result)

    # internals

    def _cancelled(self) -> RunOutcome:
        return RunOutcome(False, True, f"{self._cancel_reason} The segmentation was not changed.")

    @contextlib.contextmanager
    def _watching(self, target: WriteTarget) -> Iterator[None]:
        """Cancel as soon as the scene closes, the target segmentation node leaves the scene or the target
        segment is deleted (vtkMRMLSegmentationNode passes on its segmentation's SegmentRemoved event)."""
        node = target.segmentation_node
        scene = node.GetScene()

        def on_node_removed(*_):
            if not scene.IsNodePresent(node):
                self.cancel(f"The segmentation '{target.segmentation_name}' was removed during the run.")

        def on_segment_removed(*_):
            if target.segment_id is not None and node.GetSegmentation().GetSegment(target.segment_id) is None:
                self.cancel(f"The segment '{target.segment_name}' was deleted during the run.")

        observed = [(scene, scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                              lambda *_: self.cancel("The scene was closed."))),
                    (scene, scene.AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, on_node_removed)),
                    (node, node.AddObserver(slicer.vtkSegmentation.SegmentRemoved, on_segment_removed))]
        try:
            yield
        finally:
            for caller, tag in observed:
                caller.RemoveObserver(tag)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback()


def segment_box(
    controller: RunController,
    editor,
    logic: Callable[[], Any],
    slice_node,
    xyz_corners,
    progress: Optional[Callable[[int, int], None]] = None,
    owner: Any = None,
    confirm_target: Optional[Callable[[WriteTarget], bool]] = None,
    **options,
) -> RunOutcome:
    """Segment slice / Propagate as one run of ``controller``.

    editor: an EditorAccess. logic(): the MedSAM2Logic to use, asked for inside the run (loading a model is slow).
    xyz_corners: the box's two corners in the view's XYZ, z locating the slice the box was drawn on, so the box's
    slice is used whatever the view shows.
    options: those of MedSAM2Logic.segment (propagate, windowing, direction, slice_range).
    """

    def compute(should_cancel: CancelCheck):
        medsam2 = logic()
        prompt = medsam2.prompt_from_view(editor.source(), slice_node, xyz_corners)
        return medsam2, prompt, medsam2.segment(prompt, progress=progress, should_cancel=should_cancel, **options)

    def write(computed, target: WriteTarget) -> str:
        medsam2, prompt, result = computed
        medsam2.write(editor, prompt, result, target)
        slices = result.slices
        where = f"slice {slices[0]}" if len(slices) == 1 else f"{len(slices)} slices ({slices[0]}-{slices[-1]})"
        return " ".join([f"Segmented {where} into '{target.segment_name}' of '{target.segmentation_name}'.",
                         *result.early_stops, "Undo (Ctrl+Z) reverts it."])

    return controller.run(editor.backend.editor_node(), compute, write, owner, confirm_target)


def saved_session_tag(segmentation_node, segment_id: Optional[str]) -> Optional[str]:
    """A segment's :data:`SESSION_TAG`, or None (no such segment, or no session saved in it)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    tag = vtk.reference("")
    return str(tag) if segment is not None and segment.GetTag(SESSION_TAG, tag) and str(tag) else None


def selected_has_saved_session(editor_node) -> bool:
    """The segment editor node's selected segment holds a saved session (read without torch: before setup)."""
    segmentation_node = editor_node.GetSegmentationNode() if editor_node is not None else None
    return segmentation_node is not None and saved_session_tag(segmentation_node,
                                                               editor_node.GetSelectedSegmentID()) is not None


@dataclass(frozen=True)
class SessionButtons:
    """The effect's session buttons: Propagate's text, and which can run."""

    propagate_text: str  # "Update" once the selected segment's session has propagated
    propagate_enabled: bool  # Propagate/Update and Use the segment on this slice
    reset_enabled: bool


def session_buttons(propagated: Optional[bool], has_saved_session: bool, set_up: bool, busy: bool) -> SessionButtons:
    """propagated: whether the selected segment's live session has propagated (None: it has no live session);
    has_saved_session: it keeps a saved session that its next action restores; set_up: MedSAM2 is set up (the
    segmenter exists); busy: a run is going on. A saved session can be acted on before setup (the action sets up
    first), but only the segmenter can drop it, so Reset waits for setup."""
    live = propagated is not None
    saved = not live and has_saved_session
    return SessionButtons("Update" if propagated else "Propagate", (live or saved) and not busy,
                          (live or (saved and set_up)) and not busy)
