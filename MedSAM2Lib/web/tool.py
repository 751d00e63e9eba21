"""The MedSAM2 tool of ``medsam2 web``, without any web widget: slice-view events become the desktop effect's
gestures (:mod:`~MedSAM2Lib.slicer_glue.gestures`), actions run as the effect's do
(:meth:`InteractiveSegmenter.run` on a :class:`RunController`), Undo/Redo is the segment editor logic's history,
and Save writes atomically.

One difference from the desktop: the desktop computes on Qt's thread and processes events after each slice; a
web server must keep answering the browser (progress, Cancel) while the model runs. So an action's computation
runs on a worker thread and everything that changes the scene runs on the event loop's thread:
:class:`LoopRunController` hands the run's write back to the loop, and progress and status reach the page
through ``loop.call_soon_threadsafe``. The worker reads the scene only when an action starts (the source volume,
the view's geometry, the target segment), while the page waits for it.

The page's options are the desktop effect's: session options are the effect's parameters on the segment editor
node (:func:`~MedSAM2Lib.slicer_glue.effect.session_options`), and so are fill holes and the largest component
(:func:`~MedSAM2Lib.slicer_glue.effect.post_processing`, handed to the logic as the desktop effect hands them;
the command line's choice is where they start), precision and early stop the module's settings
(:class:`~MedSAM2Lib.web.model.PageModel`), read when an action starts. The segment shown in the 3D view is its
closed surface, made after each action that propagated; other actions drop it before they write (a preview
would otherwise convert the whole segment again on every click, on the loop's thread). Not even after a first
preview, whose segment is one slice: CreateClosedSurfaceRepresentation of a one-slice segment took 30 ms on an
11 x 224 x 256 volume but 130 ms on 64 x 512 x 512 (250 ms with all 64 slices;
benchmarks/surface_conversion.py on the 2-core development machine under load), against 0.30 s from release to
preview at 512 x 512 (README, In the browser, Latency).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import slicer
from vtkmodules.vtkCommonCore import vtkCommand

from ..atomic import FileUses, write_atomically
from ..model.precision import PRECISIONS, resolve_precision
from ..slicer_glue.box import BoxEvent
from ..slicer_glue.effect import (PreEncodeTrigger, SelectionWatch, parameter, post_processing, reset_session,
                                  segmenter_for, session_options, set_parameter, switch)
from ..slicer_glue.geometry import ObliqueViewError
from ..slicer_glue.gestures import ViewGestures
from ..slicer_glue.interactive import InteractionError
from ..slicer_glue.logic import (EditorAccess, EditorStateError, SegmentEditorLogicBackend, save_segment_as_labelmap,
                                 save_segmentation)
from ..slicer_glue.run_controller import RunController, RunRefused, session_buttons
from .model import PageModel

LOG = logging.getLogger(__name__)
# Refusals that carry a sentence for the page; anything else is a bug: logged with its traceback, named in a sentence.
REFUSALS = (InteractionError, EditorStateError, ObliqueViewError, RunRefused, ValueError)
# The effect parameters the page sets (slicer_glue.effect.PARAMETER_DEFAULTS), as the desktop effect's options panel.
PAGE_PARAMETERS = ("Direction", "RangeEnabled", "RangeFirst", "RangeLast", "WriteMode", "NewSegmentPerBox",
                   "BackgroundClicks", "Windowing", "FillHoles", "LargestComponent")
SAVE_FORMATS = {"seg.nrrd": "segmentation (all segments, names, colours, MedSAM2 sessions)",
                "nii.gz": "the selected segment as a 0/1 label map on the volume's grid"}


class LoopRunController(RunController):
    """A RunController whose runs are started on a worker thread and write on the event loop's thread.

    ``loop``: the loop serving the page, set before a run starts (the server creates it after the tool).
    ``writing(write, result, target)``: how the write is called on the loop (the tool wraps it).
    """

    def __init__(self, writing: Callable = lambda write, result, target: write(result, target)) -> None:
        super().__init__()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.writing = writing

    def run(self, editor_node, compute, write, owner=None, confirm_target=None, activity="segmenting"):
        return super().run(editor_node, compute,
                           lambda result, target: self.on_loop(self.writing, write, result, target), owner,
                           confirm_target, activity)

    def on_loop(self, function: Callable, *arguments):
        """``function(*arguments)`` on the loop's thread, waited for; directly when already there."""
        if self.loop is None or _is_loop_thread(self.loop):
            return function(*arguments)
        future: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(function(*arguments))
            except BaseException as error:  # handed to the worker, which raises it as the run's failure
                future.set_exception(error)

        self.loop.call_soon_threadsafe(call)
        return future.result()


def _is_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


@dataclass(frozen=True)
class ToolState:
    """What the page shows of the tool."""

    message: str
    busy: bool
    done: int  # slices computed so far in the run
    total: int
    propagate_text: str  # "Propagate", or "Update" once the selected segment's session has propagated
    propagate_enabled: bool
    reset_enabled: bool
    can_undo: bool
    can_redo: bool
    segments: List["SegmentRow"]  # the segmentation's segments, in order
    selected_segment: Optional[str]  # the segment the tool edits (its ID)


@dataclass(frozen=True)
class SegmentRow:
    """A segment as the page lists it."""

    id: str
    name: str
    colour: str  # "#rrggbb"


class WebTool:
    """The MedSAM2 tool on one scene: the segment editor node's segmentation and source volume.

    app_logic: the scene's vtkSlicerApplicationLogic (slice logics, for the slice spacing). model: the page's
    model (loaded here if it is not yet). on_change(): called on the loop's thread whenever :meth:`state` changes.
    """

    def __init__(self, scene, app_logic, editor_node, model: PageModel, on_change: Callable[[], None]) -> None:
        self.scene = scene
        self.app_logic = app_logic
        self.editor_node = editor_node
        self.model = model
        self.on_change = on_change
        # A segment editor logic of our own on the editor node, keeping the undo history: the same backend as the
        # headless tests (trame-slicer's own editor logic keeps none: SetSegmentationHistory(None)).
        self.editor_logic = slicer.vtkSlicerSegmentEditorLogic()
        self.editor_logic.SetMRMLScene(scene)
        self.editor_logic.SetMRMLApplicationLogic(app_logic)
        self.editor_logic.SetSegmentEditorNode(editor_node)
        self.editor = EditorAccess(SegmentEditorLogicBackend(self.editor_logic))
        # The command line's post-processing (--no-fill-holes, --all-components, a session file's) is where the
        # page's options start.
        set_parameter(editor_node, "FillHoles", model.options.fill_holes)
        set_parameter(editor_node, "LargestComponent", model.options.keep_largest_component)
        self.segmenter = segmenter_for(None, model.logic(*post_processing(editor_node)), scene)
        self.gestures = ViewGestures()
        self.pre_encoding = PreEncodeTrigger()
        # Another segment selected (in the list, by Undo): the box drawn for the previous one goes, and the page
        # shows the new one's points and buttons, as in the desktop effect. A segment that MedSAM2's own write
        # creates and selects (the first box, a new segment per box) keeps the box: it is that segment's prompt.
        self.selection = SelectionWatch()
        self.selection.changed(editor_node)
        self._writing = False
        self._editor_node_observer = editor_node.AddObserver(vtkCommand.ModifiedEvent, self._on_editor_node_modified)
        self.runs = LoopRunController(self._write)
        self.runs.observe(self._changed_from_any_thread)
        self.message = "Drag a box around the structure in a slice view."
        self.progress = (0, 0)
        self.task: Optional[asyncio.Task] = None

    # -- what the page shows -------------------------------------------------------------------------------

    def state(self) -> ToolState:
        session = self.segmenter.session_of(self.editor)
        busy = self.busy
        buttons = session_buttons(session.propagated if session is not None else None,
                                  self.segmenter.restorable(self.editor), True, busy)
        return ToolState(self.message, busy, *self.progress, buttons.propagate_text, buttons.propagate_enabled,
                         buttons.reset_enabled,
                         not busy and self.editor_logic.CanUndo(), not busy and self.editor_logic.CanRedo(),
                         self.segments(), self.editor.selected_segment_id())

    def segments(self) -> List[SegmentRow]:
        segmentation = self.editor_node.GetSegmentationNode().GetSegmentation()
        rows = []
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            red, green, blue = (round(255 * channel) for channel in segment.GetColor())
            rows.append(SegmentRow(segmentation.GetNthSegmentID(index), segment.GetName(),
                                   f"#{red:02x}{green:02x}{blue:02x}"))
        return rows

    def option(self, name: str) -> str:
        """An effect parameter as the page shows it (:data:`PAGE_PARAMETERS`)."""
        return parameter(self.editor_node, name)

    @property
    def busy(self) -> bool:
        return self.runs.busy or (self.task is not None and not self.task.done())

    def points_in_view(self, slice_node) -> List[tuple]:
        """The selected segment's points on the slice the view shows: (view x, view y, label)."""
        return self.segmenter.points_in_view(self.editor, slice_node)

    def tolerance_mm(self, slice_node) -> float:
        """Half the view's slice spacing: the box counts as on the slice shown within it (as in the effect)."""
        return self.app_logic.GetSliceLogic(slice_node).GetLowestVolumeSliceSpacing()[2] / 2

    # -- mouse and keys ------------------------------------------------------------------------------------

    def view_event(self, event: str, slice_node, xy, shift: bool = False, control: bool = False,
                   alt: bool = False) -> BoxEvent:
        """A slice-view event ("press", "move", "release", "double_click", "escape", "backspace") at view XY;
        returns the box tool's answer (consumed: the view must not also act on it). Actions start in the
        background (:meth:`start`)."""
        if event == "escape":  # the page's own key (in Slicer, Esc belongs to the Segment Editor): stops a run
            if self.busy:
                self.cancel("Cancelled (Esc).")
            return BoxEvent(consumed=self.busy)
        if event == "move":  # the mouse over a view: its slice is encoded in the background, as in the effect
            self._pre_encode(slice_node)
        gesture = self.gestures.handle(event, slice_node, xy, shift=shift, control=control, alt=alt,
                                       running=self.busy, background=switch(self.editor_node, "BackgroundClicks"),
                                       tolerance_mm=self.tolerance_mm(slice_node),
                                       segmenter=self.segmenter, editor=self.editor)
        answer = gesture.box_event
        if answer.status:
            self.message = answer.status
        if gesture.action is not None:
            self.start(gesture.action, *gesture.arguments)
        elif answer.changed or answer.status:
            self.on_change()
        return answer

    # -- actions -------------------------------------------------------------------------------------------

    def start(self, action: str, *arguments) -> Optional[asyncio.Task]:
        """Run ``InteractiveSegmenter.compute_<action>`` in the background (from the loop's thread); None, with
        a sentence, when a run is going on."""
        if self.busy:
            self.message = f"MedSAM2 is busy {self.runs.activity or 'starting'}: wait for it to finish or cancel it."
            self.on_change()
            return None
        self.runs.loop = asyncio.get_running_loop()
        self.task = asyncio.ensure_future(self._act(action, arguments))
        self.on_change()
        return self.task

    def propagate(self) -> Optional[asyncio.Task]:
        return self.start("propagate")

    def close(self) -> None:
        """The app ends (:meth:`MedSAM2WebApp.close`): a run still going is told to stop, the sessions and the
        background encoding end, and the tool lets go of the editor node and the scene."""
        self.cancel("MedSAM2 is closing.")
        self.segmenter.close()
        self.editor_node.RemoveObserver(self._editor_node_observer)
        self.editor_logic.SetMRMLScene(None)

    def reset(self) -> None:
        """Forget the selected segment's prompts (its session, also the one saved with it; the content is kept)."""
        if not self._refused_while_busy("reset"):
            self.message = reset_session(self.segmenter, self.editor, self.gestures.box_tool)
            self.on_change()

    def cancel(self, reason: str = "Cancelled.") -> None:
        self.runs.cancel(reason)

    # -- options ---------------------------------------------------------------------------------------------

    def set_option(self, name: str, value) -> None:
        """An effect parameter (:data:`PAGE_PARAMETERS`), stored where the desktop effect stores it; the next
        action uses it."""
        if name not in PAGE_PARAMETERS:
            raise KeyError(f"The page has no option {name!r}.")
        if name in ("RangeFirst", "RangeLast") and not str(value).isdigit():
            self.message = f"The range's slices are voxel indices (0, 1, 2, ...): {value!r} is not one; unchanged."
            self.on_change()
            return
        set_parameter(self.editor_node, name, value)
        self.on_change()

    def set_early_stop(self, slices: Optional[int]) -> None:
        """End each direction after that many slices without the object (None: track to the end); applies to the
        next Propagate or Update, also of the sessions started before (as the desktop module's setting)."""
        if slices is not None and not isinstance(slices, int):
            self.message = f"Early stop unchanged: {slices!r} is not a whole number of slices."
        else:
            try:
                self.model.settings.set_early_stop(slices)
                self.message = (f"Early stop: each direction ends after {slices} slice(s) without the object"
                                if slices is not None else "Early stop off: each direction tracks to the end")
                self.message += ", from the next Propagate or Update."
            except ValueError as error:
                self.message = f"Early stop unchanged: {error}"
        self.on_change()

    def set_precision(self, precision: str) -> None:
        """auto, float32 or bfloat16 for the next action. A change of the type computed in makes a new logic on
        the same model (not loaded again): MedSAM2's sessions end then, and each is restored from its segment
        (a replay) when next used, as in the desktop module."""
        if precision not in PRECISIONS:
            self.message = f"Unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}."
        else:
            self.model.settings.set_precision(precision)
            predictor = self.segmenter.logic.predictor
            dtype = resolve_precision(precision, predictor.device)
            name = str(dtype).removeprefix("torch.")
            self.message = (f"Precision {precision}: already computing in {name}." if dtype == predictor.dtype else
                            f"Precision {precision}: the next action computes in {name}; MedSAM2's sessions are "
                            "then restored from their segments (their prompts are replayed).")
        self.on_change()

    # -- segments ------------------------------------------------------------------------------------------

    def select_segment(self, segment_id: str) -> None:
        """The segment the tool edits from now on (its own session); the box drawn for another segment goes."""
        if self.editor_node.GetSegmentationNode().GetSegmentation().GetSegment(segment_id) is None:
            self.message = "That segment no longer exists."
        else:
            self.editor_node.SetSelectedSegmentID(segment_id)
            self.message = f"Segment '{self._segment_name(segment_id)}' selected: drag a box, or click to correct it."
        self.on_change()

    def add_segment(self) -> None:
        """A new empty segment, selected (undoable, as the Segment Editor's Add)."""
        if self._refused_while_busy("add a segment"):
            return
        segment_id = self.editor_logic.AddEmptySegment()  # saves the state for Undo and selects it
        self.message = f"Segment '{self._segment_name(segment_id)}' added: drag a box around its structure."
        self.on_change()

    def remove_segment(self) -> None:
        """Remove the selected segment (undoable, as the Segment Editor's Remove; its session ends, and Undo
        brings it back with its prompts, restored when next used)."""
        if self._refused_while_busy("remove a segment"):
            return
        segment_id = self.editor.selected_segment_id()
        if segment_id is None:
            self.message = "Select a segment to remove first."
        else:
            name = self._segment_name(segment_id)
            self.editor_logic.RemoveSelectedSegment()  # saves the state for Undo, selects the next segment
            self.message = f"Segment '{name}' removed (Undo brings it back)."
        self.on_change()

    def _on_editor_node_modified(self, caller, event) -> None:
        if self._writing:
            self.selection.changed(caller)  # noted, the box kept
        elif self.selection.changed(caller, self.gestures.box_tool):
            self.on_change()

    def _segment_name(self, segment_id: str) -> str:
        return self.editor_node.GetSegmentationNode().GetSegmentation().GetSegment(segment_id).GetName()

    def _refused_while_busy(self, what: str) -> bool:
        if self.busy:
            self.message = f"MedSAM2 is segmenting: {what} once it has finished (or cancel it)."
            self.on_change()
        return self.busy

    # -- history -------------------------------------------------------------------------------------------

    def undo(self) -> None:
        self._history(self.editor_logic.Undo, "Undone.")

    def redo(self) -> None:
        self._history(self.editor_logic.Redo, "Redone.")

    def save(self, folder: Path, file_format: str, reads: Sequence[Tuple[str, Path]] = ()) -> Path:
        """Write the segmentation (``seg.nrrd``) or the selected segment (``nii.gz``) atomically into folder, named
        after the source volume; returns the path. ``reads``: (role, path) of the files the app reads (the image,
        the data folder's images), which the file must not replace (a ``.nii.gz`` image saved into its own folder
        would otherwise be overwritten by its label map). The message says what was written or why nothing was."""
        editor_node = self.editor_logic.GetSegmentEditorNode()
        segmentation_node, volume_node = editor_node.GetSegmentationNode(), editor_node.GetSourceVolumeNode()
        path = Path(folder) / f"{volume_node.GetName()}.{file_format}"
        try:
            if self.busy:
                raise RunRefused("MedSAM2 is segmenting: save once it has finished (or cancel it).")
            files = FileUses()
            for role, read in reads:
                files.read(role, read)
            files.write(f"the .{file_format} file", path, fix="start medsam2 web with another --out folder")
            if file_format == "seg.nrrd":
                write_atomically(path, lambda temporary: save_segmentation(segmentation_node, temporary))
            elif file_format == "nii.gz":
                segment_id = self.editor.selected_segment_id()
                if segment_id is None:
                    raise EditorStateError("Select a segment to save as a label map first.")
                write_atomically(path, lambda temporary: save_segment_as_labelmap(segmentation_node, segment_id,
                                                                                  volume_node, temporary))
            else:
                raise ValueError(f"Cannot save as .{file_format}: choose one of {', '.join(SAVE_FORMATS)}.")
            self.message = f"Saved {path}."
        except (OSError, *REFUSALS) as error:
            self.message = str(error)
            LOG.warning("%s", error)
            raise
        finally:
            self.on_change()
        return path

    # -- internals -----------------------------------------------------------------------------------------

    async def _act(self, action: str, arguments: tuple) -> None:
        try:
            # The options chosen now. A precision change makes a new logic (a bfloat16 copy, warmed up): on the
            # worker; the segmenter that replaces the old one (ending its sessions) watches the scene: on the loop.
            logic = await asyncio.to_thread(self.model.logic, *post_processing(self.editor_node))
            self.segmenter = segmenter_for(self.segmenter, logic, self.scene)
            outcome = await asyncio.to_thread(self.segmenter.run, self.runs, self.editor, action, *arguments,
                                              session_options(self.editor_node), owner=self,
                                              progress=self._progress_from_worker)
            self.message = outcome.message
        except REFUSALS as refusal:  # a sentence saying what to do instead
            self.message = str(refusal)
        except Exception as error:  # a bug: the log keeps the traceback, the page a sentence
            LOG.exception("MedSAM2 %s failed", action)
            self.message = f"MedSAM2 could not {action.replace('_', ' ')} ({type(error).__name__}: {error}); see the log."
        finally:
            self.progress, self.task = (0, 0), None
            self.on_change()

    def _write(self, write: Callable, computed, target):
        """The run's write on the loop, with the 3D view's closed surface made again only after an action that
        propagated; the segment it selects keeps the box."""
        node = target.segmentation_node
        node.RemoveClosedSurfaceRepresentation()  # else every single-slice write converts the whole segment again
        self._writing = True
        try:
            return write(computed, target)
        finally:
            self._writing = False
            if computed.propagated:
                node.CreateClosedSurfaceRepresentation()

    def _pre_encode(self, slice_node) -> None:
        if slice_node is not self.pre_encoding.slice_node:
            self.pre_encoding.entered(slice_node)
        failure = self.pre_encoding.ask(self.segmenter, self.editor, slice_node,
                                        lambda: session_options(self.editor_node), self.busy)
        if failure:
            self.message = failure
            self.on_change()

    def _progress_from_worker(self, done: int, total: int) -> None:
        def show() -> None:
            self.progress = (done, total)
            self.message = f"Segmenting slice {done} of {total}... (Esc or Cancel stops)"
            self.on_change()

        self.runs.loop.call_soon_threadsafe(show)

    def _changed_from_any_thread(self) -> None:
        loop = self.runs.loop
        if loop is None or _is_loop_thread(loop):
            self.on_change()
        else:
            loop.call_soon_threadsafe(self.on_change)

    def _history(self, step: Callable[[], None], sentence: str) -> None:
        if self.busy:
            self.message = "MedSAM2 is segmenting: undo and redo wait until it has finished (or cancel it)."
        else:
            step()
            self.message = f"{sentence} The session keeps its prompts: the next action recomputes from them."
        self.on_change()
