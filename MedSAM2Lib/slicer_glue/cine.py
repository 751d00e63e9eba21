"""Propagation through time: a cine loop or a 4D image, shown as the proxy volume of a Sequence, segmented on
one slice of every frame by a session over the frames instead of the slices, written into the segmentation
Sequence whose proxy the editor's segmentation is (:func:`.sequence_browser.segmentation_sequence`), so that the
volume's sequence browser plays both together.

- :func:`frame_source` is the frames' voxel grid as the prompt functions of :mod:`.logic` take it, so that a
  box drawn on a view (``MedSAM2Logic.prompt_from_view``) becomes a :class:`~.geometry.StackPrompt`: the slice
  the view shows, oriented as it shows it, and the box on it;
- :func:`time_stack` takes that slice from every frame: a (T, rows, columns) stack, windowed as the proxy is
  displayed, which a :class:`~MedSAM2Lib.inference.session.Session` tracks through time as through slices;
- :class:`CineSegmenter` is the effect's "propagate through time": the same actions as on slices (a box or
  points on the shown frame, Propagate, corrections on any frame and Update re-propagating from them, point
  removal), on one session per segment over the frames; each action is written as one :class:`CineEdit`;
- :class:`CineUndo` makes the Segment Editor's Undo and Redo take back or bring back a whole :class:`CineEdit`.

**Undo.** Slicer's Segment Editor undoes the segmentation it edits: its history (``vtkSegmentationHistory``)
snapshots the proxy segmentation's segments, which, with "save changes" on, are the shown frame's item
(:mod:`.sequence_browser`). An action writes the other frames' items directly (no undo of their own) and the
shown frame through the editor, as one undo step of the editor, tagging the segment there with the action's ID
(:data:`CINE_EDIT_TAG`); the history restores the tag with the voxels. When the tag of the shown frame goes
back to what it was before an action (Undo), :class:`CineUndo` puts that action's other frames back; when it
becomes the action's ID again (Redo), it writes them again. Showing another frame clears the editor's history
(the proxy's ``vtkSegmentation`` changes), as for any edit of a sequence in Slicer: an action is undoable until
another frame is shown.

**Writing.** A prompt writes the frames it recomputed, a propagation every frame the session computed, each only
where the segment's content on the session's slice differs. The session records a digest of what MedSAM2 last
wrote on each frame's slice (:attr:`CineSession.written`, in memory: sessions through time are not saved). A frame
whose content there differs from its digest at the start of an action was edited with another effect (Paint,
Erase, ...): it is kept exactly as the user left it from then on, and its content becomes the session's mask
prompt there, so that tracking goes on from the user's fix, as slice sessions do (:mod:`.interactive`); only a
box on that frame hands it back to MedSAM2. When writing, a frame kept, or edited since the action started, is
not written. Undo and Redo of an action put the record back with its frames. The session's slice is the view's
when the box was drawn; the segmentation must be on the source volume's grid.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import slicer
import vtk

from ..inference.predictor import FeatureCache
from ..inference.preprocessing import Windowing
from ..inference.session import Session
from .geometry import AXIS_NAMES, StackGeometry, StackPrompt, point_prompt, transform_points
from .interactive import (ActionResult, InteractionError, InteractiveOptions, SegmentActions, SlicePrompts, _slab,
                          prompt_kind, propagate_session, remove_point, slice_digest)
from .logic import (EditorAccess, EditorStateError, MedSAM2Logic, SourceImage, array_from_image, display_windowing,
                    grid_part, labelmap_like, segment_mask_on, slab_modifications, view_geometry, view_to_index,
                    world_to_node_matrix)
from .run_controller import WriteTarget
from .sequence_browser import Cine, cine_of, segmentation_sequence

# The ID of the cine action that last wrote a frame's segment (CineUndo follows it through Undo and Redo).
CINE_EDIT_TAG = "MedSAM2.CineEdit"
# How many actions CineUndo keeps the other frames of (each keeps two copies of the frames it wrote).
MAX_UNDO_EDITS = 20


def frame_source(cine: Cine) -> SourceImage:
    """The frames' voxel grid (the proxy's) as a :class:`~.logic.SourceImage` for the prompt functions."""
    return SourceImage(_frame_image(cine.proxy), cine.proxy, world_to_node_matrix(cine.proxy))


def time_stack(cine: Cine, prompt: StackPrompt, windowing: Windowing) -> np.ndarray:
    """uint8 (T, rows, columns): the prompt's slice of every frame, oriented as its geometry says, windowed
    together; frames of one grid only."""
    if cine.num_frames < 2:
        raise EditorStateError(f"The sequence '{cine.sequence.GetName()}' has {cine.num_frames} frame; propagating "
                               "through time needs at least two.")
    frames = [array_from_image(cine.frame(number).GetImageData()) for number in range(cine.num_frames)]
    shapes = sorted({frame.shape for frame in frames})
    if len(shapes) > 1:
        raise EditorStateError(f"The frames of '{cine.sequence.GetName()}' differ in size ({shapes[0][::-1]} and "
                               f"{shapes[1][::-1]} voxels); propagating through time needs frames of one grid.")
    return windowing.apply(np.stack([prompt.geometry.to_stack(frame)[prompt.slice_index] for frame in frames]))


@dataclass
class CineSession:
    """A segment's session through time: the tracker over the frames' slice, where it runs, and its prompts per
    frame (for display and point removal, as :class:`~.interactive.SegmentSession`'s per slice)."""

    session: Session
    cine: Cine
    geometry: StackGeometry  # the frames' slice orientation
    slice_index: int  # the slice of every frame the session tracks
    windowing: Windowing
    prompts: Dict[int, SlicePrompts] = field(default_factory=dict)
    point_order: List[int] = field(default_factory=list)  # frame of each point, in the order they were added
    propagated: bool = False
    written: Dict[int, str] = field(default_factory=dict)  # frame -> slice_digest of what MedSAM2 last wrote there
    kept: Set[int] = field(default_factory=set)  # frames kept as the user edited them (their content a mask prompt)


@dataclass
class CineComputed:
    """An action's computation through time, to be written to the target captured when it started."""

    state: CineSession
    frames: List[int]  # frames whose output to write where it differs from the segment
    frame: Optional[int]  # the prompted frame, if any
    sentence: str
    taken: List[int] = field(default_factory=list)  # frames the user edited, taken as mask prompts by the action


class CineSegmenter(SegmentActions):
    """The effect's actions through time, on one MedSAM2Logic; the editor's source volume is a cine's proxy."""

    def __init__(self, logic: MedSAM2Logic, sequences_logic: "slicer.vtkSlicerSequencesLogic") -> None:
        self.logic, self.sequences_logic = logic, sequences_logic
        self.sessions: Dict[Tuple[str, str], CineSession] = {}
        self.undo = CineUndo()
        self._scene_observers: List[Tuple[Any, int]] = []

    # -- the actions --------------------------------------------------------------------------------

    def compute_box(self, editor: EditorAccess, slice_node, xy_corners: Sequence[Sequence[float]],
                    options: InteractiveOptions = InteractiveOptions(), progress=None, should_cancel=None
                    ) -> CineComputed:
        """A box on the shown frame: a prompt there on the segment's session, started if there is none or if the
        box is on another slice (or the cine, or the intensity option, changed)."""
        cine, source = self._cine(editor)
        key = self._selected_key(editor)
        state = self.sessions.get(key) if key is not None else None
        same_axis = state is not None and state.geometry.slice_axis == view_geometry(source, slice_node).slice_axis
        prompt = self.logic.prompt_from_view(source, slice_node, xy_corners,
                                             state.geometry if same_axis else None).stack
        frame = cine.shown_frame
        if state is None or not _fits(state, cine, prompt, options):
            state = self._start(cine, prompt, options)
            taken = []
        else:
            taken = self._take_edits(editor, state, exclude=frame)  # the box replaces what was on its frame
            state.kept.discard(frame)
        kind = prompt_kind(state.session, state.propagated, frame, replacing=True)
        state.session.add_prompt(frame, box=list(prompt.box))
        state.prompts[frame] = SlicePrompts(box=prompt.box)
        state.point_order = [f for f in state.point_order if f != frame]
        return self._then(state, options, frame, f"Box on frame {frame}: {kind}", progress, should_cancel, taken)

    def compute_points(self, editor: EditorAccess, slice_node, clicks: Sequence[Tuple[Sequence[float], int]],
                       options: InteractiveOptions = InteractiveOptions(), progress=None, should_cancel=None
                       ) -> CineComputed:
        """Points clicked on the shown frame, each ((x, y) view XY, label 1 object / 0 background), added to that
        frame's prompt: a correction where the session tracked it, a new keyframe elsewhere."""
        state, source = self._session_for(editor, "a point")
        to_index = view_to_index(source, slice_node)
        if view_geometry(source, slice_node).slice_axis != state.geometry.slice_axis:
            raise InteractionError(f"This segment's MedSAM2 session runs through time on slices along "
                                   f"{AXIS_NAMES[state.geometry.slice_axis]}; click in a view along that axis.")
        located = [point_prompt(state.geometry, transform_points(to_index, [[x, y, 0.0]])[0], source.shape_ijk)
                   for (x, y), _ in clicks]
        for index, _ in located:
            if index != state.slice_index:
                raise InteractionError(f"This segment's MedSAM2 session runs through time on slice "
                                       f"{state.slice_index} of every frame; this view shows slice {index}. Go back to "
                                       "that slice, or draw a box here to start over on this one.")
        frame = state.cine.shown_frame
        taken = self._take_edits(editor, state)  # an edit of this frame is the mask the points refine
        state.kept.discard(frame)
        labels = [int(label) for _, label in clicks]
        kind = prompt_kind(state.session, state.propagated, frame, replacing=False)
        state.session.add_prompt(frame, points=[list(xy) for _, xy in located], labels=labels, add=True)
        frame_prompts = state.prompts.setdefault(frame, SlicePrompts())
        frame_prompts.points += [xy for _, xy in located]
        frame_prompts.labels += labels
        state.point_order += [frame] * len(located)
        what = "Point" if len(labels) == 1 else f"{len(labels)} points"
        return self._then(state, options, frame, f"{what} on frame {frame}: {kind}", progress, should_cancel,
                          taken)

    def compute_propagate(self, editor: EditorAccess, options: InteractiveOptions = InteractiveOptions(),
                          progress=None, should_cancel=None) -> CineComputed:
        """Propagate through time, or Update after corrections: only what the prompts change is recomputed; every
        frame the session computed is written where it differs."""
        state, _ = self._session_for(editor, "Propagate")
        taken = self._take_edits(editor, state)
        propagated, stops = propagate_session(state.session, self.logic.predictor.early_stop, _in_time(options),
                                              progress, should_cancel)
        state.propagated = True
        sentence = (f"Propagated through time: {len(propagated)} frame(s) recomputed." if propagated
                    else "Nothing to update: every frame is up to date.")
        return CineComputed(state, sorted(state.session.results), None,
                            " ".join([sentence, *stops, "Undo (Ctrl+Z) reverts every frame."]), taken)

    def compute_remove_point(self, editor: EditorAccess, frame: int, number: int,
                             options: InteractiveOptions = InteractiveOptions(), progress=None,
                             should_cancel=None) -> CineComputed:
        """Remove a point (from :meth:`point_near`): its frame is prompted again with what remains on it."""
        state, _ = self._session_for(editor, "removing a point")
        taken = self._take_edits(editor, state, exclude=frame)  # the frame is prompted again below
        recomputed = remove_point(state, frame, number)
        return self._then(state, options, frame if recomputed else None, f"Point removed from frame {frame}",
                          progress, should_cancel, taken)

    def compute_remove_last_point(self, editor: EditorAccess, options: InteractiveOptions = InteractiveOptions(),
                                  progress=None, should_cancel=None) -> CineComputed:
        state, _ = self._session_for(editor, "removing a point")
        if not state.point_order:
            raise InteractionError("The selected segment's MedSAM2 session has no points to remove.")
        frame = state.point_order[-1]
        return self.compute_remove_point(editor, frame, len(state.prompts[frame].points) - 1, options, progress,
                                         should_cancel)

    def compute_use_segment_on_slice(self, editor: EditorAccess, slice_node, options=None, progress=None,
                                     should_cancel=None) -> CineComputed:
        raise InteractionError("Through time, a frame is corrected with a box or clicks; 'Use the segment on this "
                               "slice' works on the slices of one volume (untick 'Propagate through time').")

    # -- writing ------------------------------------------------------------------------------------

    def write(self, editor: EditorAccess, computed: CineComputed, target: WriteTarget) -> ActionResult:
        """Write the computed frames where they differ (:class:`CineEdit`) into the segmentation sequence of the
        target segmentation (made one when it is not yet), as one action that the editor's Undo takes back."""
        problem = target.problem(editor.backend.editor_node())
        if problem is not None:
            raise EditorStateError(problem)
        state = computed.state
        if state.cine.proxy is not editor.backend.editor_node().GetSourceVolumeNode():
            raise EditorStateError("The source volume changed during the run: nothing was written.")
        try:
            sequence = segmentation_sequence(state.cine, target.segmentation_node, self.sequences_logic)
        except ValueError as error:
            raise EditorStateError(str(error)) from error
        edited = set(_edited_frames(state, sequence, target.segment_id)) if target.segment_id else set()
        # Frames left as the user edited them: taken by the action or edited since, less the prompted one (written).
        left = set(computed.taken) | state.kept | edited
        kept = sorted(frame for frame in left & (set(computed.taken) | set(computed.frames)) if frame != computed.frame)
        contents = {frame: state.session.results[frame].mask for frame in computed.frames if frame not in kept}
        edit = CineEdit(state.cine, sequence, state.geometry, state.slice_index)
        edit.follow_record(state)
        segment_id = edit.write(editor, target, contents)
        for frame, content in _frame_contents(state, sequence, segment_id, contents).items():
            state.written[frame] = slice_digest(content)  # as stored (the editable area may have cut the shown one)
            state.kept.discard(frame)
        edit.record_after = (dict(state.written), set(state.kept))
        self.undo.add(edit)
        key = (target.segmentation_node.GetID(), segment_id)
        self.sessions.pop(key, None)
        self.sessions[key] = state
        changed = len(edit.frames) + edit.shown_changed
        return ActionResult(f"{computed.sentence} {_kept_sentence(kept)}{changed} frame(s) changed.", computed.frame,
                            computed.frames, segment_id)

    # -- queries and lifetime -----------------------------------------------------------------------

    def restorable(self, editor: EditorAccess) -> bool:
        """Sessions through time are not saved with the segment: none to restore."""
        return False

    def end_session(self, editor: EditorAccess) -> None:
        """Reset: the selected segment's session through time ends (the frames are kept)."""
        key = self._selected_key(editor)
        if key is not None:
            self.sessions.pop(key, None)

    def end_sessions(self) -> None:
        self.sessions.clear()

    def watch(self, scene) -> None:
        """Closing the scene ends every session and forgets the actions' frames."""
        def closed(caller, event):
            self.end_sessions()
            self.undo.close()
        self._scene_observers.append((scene, scene.AddObserver(scene.EndCloseEvent, closed)))

    def close(self) -> None:
        """End every session and stop observing (before this segmenter is replaced)."""
        self.end_sessions()
        self.undo.close()
        for scene, tag in self._scene_observers:
            scene.RemoveObserver(tag)
        self._scene_observers = []

    # -- internals ----------------------------------------------------------------------------------

    def _cine(self, editor: EditorAccess) -> Tuple[Cine, SourceImage]:
        """The cine whose proxy the editor's source volume is, and its frames' grid; refused when the volume is not
        one, or when the segmentation is not on that grid (its items are written on the frames' grid)."""
        aligned = editor.source()
        cine = cine_of(aligned.volume_node)
        if cine is None:
            raise EditorStateError(f"The source volume '{aligned.volume_node.GetName()}' is not played by a sequence "
                                   "browser: propagating through time needs a cine loop or 4D image (a Sequence).")
        source = frame_source(cine)
        if aligned.shape_ijk != source.shape_ijk or not np.allclose(aligned.ras_to_array_index(),
                                                                    source.ras_to_array_index(), atol=1e-6):
            raise EditorStateError("Propagating through time needs the segmentation on the source volume's grid "
                                   "(Segment Editor: Specify geometry, the source volume).")
        return cine, source

    def _start(self, cine: Cine, prompt: StackPrompt, options: InteractiveOptions) -> CineSession:
        windowing = options.windowing or display_windowing(cine.proxy)
        stack = time_stack(cine, prompt, windowing)
        cache = FeatureCache(stack, self.logic.max_cached_slices)
        session = Session(self.logic.predictor, stack, cache, early_stop=self.logic.predictor.early_stop)
        return CineSession(session, cine, prompt.geometry, prompt.slice_index, windowing)

    def _session_for(self, editor: EditorAccess, action: str) -> Tuple[CineSession, SourceImage]:
        cine, source = self._cine(editor)
        key = self._selected_key(editor)
        state = self.sessions.get(key) if key is not None else None
        if state is None:
            raise InteractionError(f"The selected segment has no MedSAM2 session through time: draw a box around the "
                                   f"structure on a frame first ({action} works on the session the box starts).")
        if state.cine.proxy is not cine.proxy or state.cine.sequence is not cine.sequence:
            self.sessions.pop(key)
            raise InteractionError("The source volume changed since the box was drawn, which ends the session "
                                   "through time. Draw a box to start again.")
        return state, source

    def _take_edits(self, editor: EditorAccess, state: CineSession, exclude: Optional[int] = None) -> List[int]:
        """The frames edited with another effect since MedSAM2 last wrote them (their content on the session's
        slice differs from the record's digest), except ``exclude``: each becomes the session's mask prompt there and
        is kept as it is from now on. Returns them, in order."""
        key = self._selected_key(editor)
        sequence = state.cine.browser.GetSequenceNode(editor.segmentation_node()) if key is not None else None
        if sequence is None:
            return []
        taken = []
        for frame, content in _edited_frames(state, sequence, key[1]).items():
            if frame == exclude:
                continue
            mask = content.astype(bool)
            state.session.add_prompt(frame, mask=mask)
            state.prompts[frame] = SlicePrompts(mask=mask)
            state.point_order = [f for f in state.point_order if f != frame]
            state.written[frame] = slice_digest(content)
            state.kept.add(frame)
            taken.append(frame)
        return taken

    def _then(self, state: CineSession, options: InteractiveOptions, frame: Optional[int], sentence: str,
              progress, should_cancel, taken: List[int]) -> CineComputed:
        """After a prompt: propagate too when asked (auto update) and the session has propagated before."""
        frames = [frame] if frame is not None else []
        if options.auto_update and state.propagated:
            propagated, stops = propagate_session(state.session, self.logic.predictor.early_stop, _in_time(options),
                                                  progress, should_cancel)
            frames += [f for f in propagated if f not in frames]
            sentence = " ".join([f"{sentence}; {len(propagated)} frame(s) re-propagated.", *stops])
        elif state.propagated:
            sentence += ". Click Update to re-propagate from it."
        else:
            sentence += ". Propagate to follow it through time."
        return CineComputed(state, frames, frame, sentence, taken)

    def _shown_points(self, editor: EditorAccess, slice_node) -> List[Tuple[int, int, float, float, int]]:
        """(frame, point number, view x, view y, label) of the selected segment's points on the shown frame, when
        the view shows the session's slice; none otherwise."""
        key = self._selected_key(editor)
        state = self.sessions.get(key) if key is not None else None
        if state is None or state.cine.proxy.GetScene() is None:
            return []
        frame = state.cine.shown_frame
        frame_prompts = state.prompts.get(frame)
        if frame_prompts is None or not frame_prompts.points:
            return []
        source = frame_source(state.cine)
        try:
            to_index = view_to_index(source, slice_node)
            if view_geometry(source, slice_node).slice_axis != state.geometry.slice_axis:
                return []
        except ValueError:  # an oblique view: nothing to show
            return []
        viewed = state.geometry.stack_coordinates(transform_points(to_index, [[0.0, 0.0, 0.0]]), source.shape_ijk)
        shown = int(np.floor(viewed[0, 0] + 0.5))  # the slice the view shows
        if shown != state.slice_index:
            return []
        ijk = state.geometry.index_coordinates([[shown, y, x] for x, y in frame_prompts.points], source.shape_ijk)
        xy = transform_points(np.linalg.inv(to_index), ijk)
        return [(frame, number, float(x), float(y), label)
                for number, ((x, y, _), label) in enumerate(zip(xy, frame_prompts.labels))]


def _in_time(options: InteractiveOptions) -> InteractiveOptions:
    """The options through time: the effect's slice range ("Only slices") does not apply to frames."""
    return replace(options, slice_range=None)


def _fits(state: CineSession, cine: Cine, prompt: StackPrompt, options: InteractiveOptions) -> bool:
    """True if a box goes on with the session: the same cine, slice and orientation, and intensity option."""
    return (state.cine.proxy is cine.proxy and state.cine.sequence is cine.sequence
            and (state.geometry, state.slice_index) == (prompt.geometry, prompt.slice_index)
            and options.windowing in (None, state.windowing))


def _frame_contents(state: CineSession, sequence, segment_id: str, frames) -> Dict[int, np.ndarray]:
    """frame -> uint8 (rows, columns): the segment on the session's slice of those frames' items (zeros where an
    item has no such segment)."""
    source = frame_source(state.cine)
    part = grid_part(source.image, _slab(source, state.geometry, state.slice_index, state.slice_index))
    contents = {}
    for frame in frames:
        item = sequence.GetDataNodeAtValue(state.cine.index_value(frame), True)
        contents[frame] = (state.geometry.to_stack(segment_mask_on(item, segment_id, part))[0]
                           if item is not None and item.GetSegmentation().GetSegment(segment_id) is not None
                           else np.zeros(state.session.volume.shape[1:], np.uint8))
    return contents


def _edited_frames(state: CineSession, sequence, segment_id: str) -> Dict[int, np.ndarray]:
    """frame -> content (:func:`_frame_contents`) of the frames whose content differs from what MedSAM2 last wrote
    there: edited with another effect since."""
    contents = _frame_contents(state, sequence, segment_id, sorted(state.written))
    return {frame: content for frame, content in contents.items() if slice_digest(content) != state.written[frame]}


def _kept_sentence(kept: Sequence[int]) -> str:
    """Which frames an action left as the user edited them ("" if none)."""
    if not kept:
        return ""
    if len(kept) == 1:
        return f"Frame {kept[0]} kept as you edited it, used as a correction. "
    return f"Frames {', '.join(map(str, kept))} kept as you edited them, used as corrections. "


class CineEdit:
    """One action's output written on the session's slice of several frames of a segmentation sequence.

    The shown frame goes through the editor (masking-aware, one undo step of the Segment Editor); each other frame
    is written into its item, the item as it was kept to put it back (:meth:`undo_frames`) and the item as written
    to write it again (:meth:`redo_frames`).
    """

    def __init__(self, cine: Cine, sequence: "slicer.vtkMRMLSequenceNode", geometry: StackGeometry,
                 slice_index: int) -> None:
        self.id = uuid.uuid4().hex
        self.cine, self.sequence, self.geometry, self.slice_index = cine, sequence, geometry, slice_index
        self.shown_value = cine.index_value(cine.shown_frame)
        self.segmentation_node = None
        self.segment_id: Optional[str] = None
        self.previous_tag: Optional[str] = None  # the shown frame's tag before this action (None: no segment)
        self.frames: Dict[str, Tuple[Any, Any]] = {}  # index value -> (item before, item after) of other frames
        self.shown_changed = False
        self.applied = False
        # The session whose record of what MedSAM2 wrote (written, kept) Undo and Redo put back with the frames, as
        # it was before and after this action (CineSegmenter.write sets them).
        self.state: Optional[CineSession] = None
        self.record_before: Optional[Tuple[Dict[int, str], Set[int]]] = None
        self.record_after: Optional[Tuple[Dict[int, str], Set[int]]] = None

    def write(self, editor: EditorAccess, target: WriteTarget, contents: Dict[int, np.ndarray]) -> str:
        """Write ``contents`` (frame -> uint8 (rows, columns) on the session's slice) where it differs; returns the
        segment's ID. On a failure every frame is left as it was (what was written is put back)."""
        node, cine = target.segmentation_node, self.cine
        source = frame_source(cine)
        box = _slab(source, self.geometry, self.slice_index, self.slice_index)
        part = grid_part(source.image, box)
        shown = cine.shown_frame
        self.previous_tag = _tag(node, target.segment_id)
        created = target.segment_id is None
        current = (segment_mask_on(node, target.segment_id, part) if not created
                   else np.zeros(_shape_kji(part), np.uint8))
        new_shown = self.geometry.from_stack(contents[shown][None]) if shown in contents else current
        before_shown = (segment_mask_on(node, target.segment_id, source.image) if not created else None,
                        self.previous_tag, created)
        # The shown frame first, as one undo step of the editor (a new segment gets its ID there), tagged after.
        self.shown_changed = not np.array_equal(current, new_shown)
        modifications = slab_modifications(source.image, box, current, new_shown) if self.shown_changed else []
        segment_id = editor.modify(modifications, target)
        self.segmentation_node, self.segment_id = node, segment_id
        node.GetSegmentation().GetSegment(segment_id).SetTag(CINE_EDIT_TAG, self.id)
        try:
            with _batched(self.sequence):
                for frame in sorted(contents):
                    if frame != shown:
                        self._write_frame(frame, contents[frame], node.GetSegmentation().GetSegment(segment_id),
                                          source, part)
        except BaseException:  # nothing half written: the other frames and the shown one back as they were
            self.undo_frames()
            _put_back(node, segment_id, *before_shown, source.image)
            raise
        self.applied = True
        return segment_id

    def _on_slice(self, node, segment_id: str, part) -> np.ndarray:
        """The segment's content on the session's slice, (rows, columns)."""
        return self.geometry.to_stack(segment_mask_on(node, segment_id, part))[0]

    def _write_frame(self, frame: int, mask: np.ndarray, segment, source: SourceImage, part) -> None:
        value = self.cine.index_value(frame)
        item = self.sequence.GetDataNodeAtValue(value, True)
        segment_id = self.segment_id
        has_segment = item.GetSegmentation().GetSegment(segment_id) is not None
        if has_segment and np.array_equal(self._on_slice(item, segment_id, part), mask):
            return
        after = _copy(item)
        if not has_segment:  # the segment as on the shown frame (ID, name, colour), empty
            after.GetSegmentation().AddEmptySegment(segment_id, segment.GetName(), segment.GetColor())
        content = segment_mask_on(after, segment_id, source.image)
        content[_slab(source, self.geometry, self.slice_index, self.slice_index)] = self.geometry.from_stack(mask[None])
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap_like(source.image, content), after, segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        after.GetSegmentation().GetSegment(segment_id).SetTag(CINE_EDIT_TAG, self.id)
        self.frames[value] = (_copy(item), after)
        self.sequence.SetDataNodeAtValue(after, value)  # copied into the sequence

    def shows_its_frame(self) -> bool:
        browser = self.cine.browser
        return browser.GetMasterSequenceNode().GetNthIndexValue(browser.GetSelectedItemNumber()) == self.shown_value

    def shown_tag(self) -> Optional[str]:
        return _tag(self.segmentation_node, self.segment_id)

    def undo_frames(self) -> None:
        """Put the other frames back as they were before the action."""
        self._set_frames(applied=False)

    def redo_frames(self) -> None:
        """Write the other frames again as the action wrote them."""
        self._set_frames(applied=True)

    def _set_frames(self, applied: bool) -> None:
        """The other frames (and the session's record of what MedSAM2 wrote) as after the action, or as before."""
        with _batched(self.sequence):
            for value, (before, after) in self.frames.items():
                self.sequence.SetDataNodeAtValue(after if applied else before, value)
        self._put_record(self.record_after if applied else self.record_before)
        self.applied = applied

    def follow_record(self, state: CineSession) -> None:
        """Undo and Redo put the session's record back with the frames; this is it before the action."""
        self.state, self.record_before = state, (dict(state.written), set(state.kept))

    def _put_record(self, record: Optional[Tuple[Dict[int, str], Set[int]]]) -> None:
        if self.state is not None and record is not None:
            self.state.written, self.state.kept = dict(record[0]), set(record[1])


class CineUndo:
    """The Segment Editor's Undo and Redo extended to whole cine actions (module docstring): it observes the
    segmentations the actions wrote, and when the shown frame's tag says that an action was undone or redone
    there, puts that action's other frames back or writes them again. Keeps the last :data:`MAX_UNDO_EDITS`."""

    def __init__(self) -> None:
        self.edits: Deque[CineEdit] = deque(maxlen=MAX_UNDO_EDITS)
        self._observations: Dict[str, Tuple[Any, List[int]]] = {}  # segmentation node ID -> (node, observer tags)
        self._following = False

    def add(self, edit: CineEdit) -> None:
        self.edits.append(edit)
        node = edit.segmentation_node
        if node.GetID() not in self._observations:
            self._observations[node.GetID()] = (node, [
                node.AddObserver(event, lambda caller, event_id: self.follow(caller))
                for event in (slicer.vtkSegmentation.SegmentModified, slicer.vtkSegmentation.SegmentRemoved,
                              slicer.vtkSegmentation.SegmentAdded)])

    def follow(self, segmentation_node) -> None:
        """After the segmentation changed: undo the actions whose tag went back on their shown frame (newest
        first), redo those whose tag came back (oldest first)."""
        if self._following:  # the items written below update the proxy: not an undo
            return
        self._following = True
        try:
            mine = [edit for edit in self.edits
                    if edit.segmentation_node is segmentation_node and edit.shows_its_frame()]
            for edit in reversed(mine):
                if edit.applied and edit.shown_tag() == edit.previous_tag:
                    edit.undo_frames()
            for edit in mine:
                if not edit.applied and edit.shown_tag() == edit.id:
                    edit.redo_frames()
        finally:
            self._following = False

    def close(self) -> None:
        for node, tags in self._observations.values():
            for tag in tags:
                node.RemoveObserver(tag)
        self._observations.clear()
        self.edits.clear()


@contextlib.contextmanager
def _batched(sequence) -> Iterator[None]:
    """Items set inside count as one modification of the sequence: the browser refreshes its proxies once
    (vtkSlicerSequencesLogic updates every proxy, the volume's included, on each SequenceNodeModifiedEvent)."""
    modifying = sequence.StartModify()
    try:
        yield
    finally:
        sequence.EndModify(modifying)


def _tag(segmentation_node, segment_id: Optional[str]) -> Optional[str]:
    """The segment's :data:`CINE_EDIT_TAG`: "" when it has none, None when the segment is not there (so that
    deleting a segment an action did not create is not taken for the Undo of that action)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    if segment is None:
        return None
    tag = vtk.reference("")
    return str(tag) if segment.GetTag(CINE_EDIT_TAG, tag) else ""


def _put_back(node, segment_id: str, content: Optional[np.ndarray], tag: Optional[str], created: bool, image) -> None:
    """The shown frame's segment as it was before a failed action (removed if the action created it)."""
    if created:
        node.GetSegmentation().RemoveSegment(segment_id)
        return
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap_like(image, content), node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    segment = node.GetSegmentation().GetSegment(segment_id)
    if tag:
        segment.SetTag(CINE_EDIT_TAG, tag)
    else:
        segment.RemoveTag(CINE_EDIT_TAG)


def _shape_kji(image) -> Tuple[int, int, int]:
    extent = image.GetExtent()
    return tuple(extent[2 * axis + 1] - extent[2 * axis] + 1 for axis in (2, 1, 0))


def _copy(segmentation):
    copy = slicer.vtkMRMLSegmentationNode()
    copy.Copy(segmentation)
    return copy


def _frame_image(frame) -> "slicer.vtkOrientedImageData":
    """A frame's voxel grid (its extent and IJK-to-RAS) as an oriented image, no scalars."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(frame.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    frame.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image
