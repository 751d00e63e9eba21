"""The MedSAM2 effect's interactive workflow, headless: one tracking session per segment, driven from views.

What the clinician does, and what happens (the Qt effect only forwards mouse events and buttons here):

- **Box** dragged on a slice: that slice is segmented at once and written (a preview). On a slice already
  tracked by a propagation the box is a correction; elsewhere a new keyframe.
- **Propagate** / **Update**: the session follows the structure through the volume; after a correction only
  what the correction can change is recomputed (see :class:`MedSAM2Lib.inference.session.Session`).
- **Point** clicked on any slice of the session's axis (object, or background with Shift): the slice is
  re-segmented at once; with ``auto_update`` the volume is updated in the same action.
- **Use the segment on this slice**: the segment's current content on the viewed slice (after Paint, Erase,
  ...) becomes that slice's mask prompt, and the session re-propagates from it.

**Writing.** An action writes, as one undoable, masking-aware edit of the segment captured when it started, only
the slices whose MedSAM2 content changed in that action: the session's output there (Replace) or the segment's
content from before the session plus the output (Add). Each run of consecutive changed slices is written on its
own extent (Slicer's Remove then Add, so the editable area, the intensity range and overwriting other segments
apply as to a Set); other slices are not touched. What MedSAM2 last wrote on each slice is recorded as a digest in the segment's tag
:data:`WRITTEN_TAG` (Undo and Redo restore it with the voxels). A slice whose content differs from its digest at
the start of an action was edited with another effect: it is left exactly as the user left it, from then on, and
its content becomes the session's mask prompt there (a correction), so that tracking goes on from the user's fix;
only a new prompt on that slice hands it back to MedSAM2. Undo reverts the segment and the record with it, so
nothing undone is mistaken for an edit; the session's prompts stay, and the next propagation writes their result
again wherever the segment differs. The prompts are stored with the segment in the tag :data:`SESSION_TAG`,
saved in ``.seg.nrrd`` files and scenes.

**Largest component.** With the predictor's ``keep_largest_component``, an action that propagates (Propagate,
Update, a prompt with ``auto_update``) or restores a session writes the largest 26-connected component of the
session's whole mask, as :meth:`Session.mask` gives it (slices where that component changed are written too). A
prompt that re-segments one slice writes that slice as the model segments it, without a 3D pass over the volume
(which costs a tenth of a second on a large structure, every click); the next propagation applies the component
again.

**Restore**: an action on a segment that has a saved session but no live one (after the scene was saved and
loaded again, the module reloaded, or the session ended when the axis or window changed) first rebuilds the
session by replaying its saved steps (with progress and cancel; nothing is written by the replay itself), then
applies: a correction after a reload does exactly what it would have done before saving. The saved session
must fit: a view along its axis, and the same images (the source volume's voxels under the same window, on
the same stack, checked by a digest); otherwise the action is refused with a sentence, and the saved session
is dropped only by Reset (the next box then starts a new one). With Add, a restored session adds to the
segment as it is when restored. A box that ends live sessions by changing the axis starts a new session on its
segment, as before.

**Windowing.** A session keeps the intensity mapping it started with (the effect's option, or with the default
"display window" the volume's window/level at its first box), stored in its tag: changing the display window
later changes nothing for it. Only choosing another intensity option in the effect, or Reset, starts a session
with another window. The live sessions share one stack and its image features, so a session started with
another window (a box on another segment after the display window changed) ends the live sessions of the old
one; their next action restores them from their tags (a replay, with progress).

**Lifetime and memory.** Sessions live while the source volume and the stack axis stay the same: one session
per segment, kept when another segment is selected. Reset (:meth:`InteractiveSegmenter.end_session`) ends the
selected segment's; a box along another axis ends them all. A session ends when its segment or segmentation is
removed, and every session ends and the image features are released when the scene closes
(:meth:`InteractiveSegmenter.watch` observes the scene). What sessions keep (outputs, memories, masks) is
bounded in total by ``max_session_bytes`` (:data:`MAX_SESSION_BYTES`, 1 GiB): beyond it the least recently used
sessions end, and are restored from their tags when next used. A point or a mask prompt in a view along
another axis is refused with a sentence.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import slicer
import vtk
from PIL import Image

from ..inference.connected_components import largest_component
from ..inference.predictor import Cancelled, FeatureCache
from ..inference.preprocessing import Windowing
from ..inference.session import Session
from ..inference.session_file import SessionFileError, run_steps, session_options, write_session_file
from .geometry import AXIS_NAMES, StackGeometry, point_prompt, transform_points
from .logic import (EditorAccess, EditorStateError, MedSAM2Logic, PropagationProgress, SourceImage, display_windowing,
                    grid_part, labelmap_stamp, segment_mask_on, slab_modifications, view_geometry, view_to_index)
from .pre_encoder import slices_to_encode
from .run_controller import (NEW_SEGMENT_NAME, SESSION_TAG, RunController, RunOutcome, WriteTarget,
                             saved_session_tag)

VIEW_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}  # usual view of slices along I, J, K (LPS/RAS volumes)
# How a saved session that does not fit is dropped: only by the user's choice.
RESET_ADVICE = "Click Reset to drop it and start a new session on this segment (its content is kept)."
# Where a segment keeps what MedSAM2 last wrote on each slice of its session (WriteRecord): stored with the voxels,
# so that Undo and Redo restore both together and a reloaded scene still knows which slices the user edited.
WRITTEN_TAG = "MedSAM2.Written"
# The most that sessions keep in all (outputs, memories and masks; the image features have their own bound): about
# 4 sessions of 300 slices of 512 x 512. Beyond it the least recently used sessions end (their segments' tags
# restore them when next used).
MAX_SESSION_BYTES = 2**30

ProgressCallback = Callable[[int, int], None]


class InteractionError(ValueError):
    """An action that cannot apply here (wrong axis, no session yet, ...); the message says what to do."""


@dataclass(frozen=True)
class InteractiveOptions:
    windowing: Optional[Windowing] = None  # None: a session's own window (a new one: the display window now)
    direction: str = "both"  # of Propagate / Update
    slice_range: Optional[Tuple[int, int]] = None
    add: bool = False  # Add to the segment's earlier content instead of replacing it on computed slices
    auto_update: bool = False  # a prompt after propagation re-propagates in the same action
    new_segment_per_box: bool = False  # each box creates and selects a new segment with its own session


@dataclass
class SlicePrompts:
    """What was given on one slice, in stack pixels (x = column, y = row), for display and removal."""

    box: Optional[Tuple[float, float, float, float]] = None
    points: List[Tuple[float, float]] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    mask: Optional[np.ndarray] = None  # (H, W) bool


@dataclass
class WriteRecord:
    """What MedSAM2 last wrote on each slice of a segment's session (stack slices), kept in :data:`WRITTEN_TAG`."""

    session_id: str  # the session it belongs to: a tag left by an earlier session (before a Reset) is not this one's
    digests: Dict[int, str] = field(default_factory=dict)  # slice -> slice_digest of the segment there after the write
    kept: Set[int] = field(default_factory=set)  # slices left as the user edited them (their content is a mask prompt)

    def as_tag(self, geometry: StackGeometry) -> str:
        return json.dumps({"session": self.session_id, "stack": geometry.as_json(),
                           "slices": {str(index): digest for index, digest in sorted(self.digests.items())},
                           "kept": sorted(self.kept)})

    @classmethod
    def of_segment(cls, segmentation_node, segment_id: str, geometry: StackGeometry,
                   session_id: Optional[str]) -> "WriteRecord":
        """The record in the segment's tag if it belongs to that session (any session when session_id is None: a
        restored one) on that stack; else an empty record of that session."""
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        tag = vtk.reference("")
        if segment is not None and segment.GetTag(WRITTEN_TAG, tag):
            try:
                document = json.loads(str(tag))
                if session_id in (None, document["session"]) and StackGeometry.from_json(document["stack"]) == geometry:
                    return cls(str(document["session"]),
                               {int(index): str(digest) for index, digest in document["slices"].items()},
                               {int(index) for index in document["kept"]})
            except (ValueError, KeyError, TypeError, AttributeError):  # not a record this version wrote: none
                pass
        return cls(session_id or uuid.uuid4().hex)


@dataclass
class SegmentSession:
    """A segment's session: the tracker, the stack orientation and window it runs on, its prompts per slice, and
    what it wrote."""

    session: Session
    geometry: StackGeometry
    windowing: Windowing  # the intensity mapping it started with (kept when the display window changes)
    record: WriteRecord
    prompts: Dict[int, SlicePrompts] = field(default_factory=dict)
    point_order: List[int] = field(default_factory=list)  # slice of each point, in the order they were added
    baseline: Optional[np.ndarray] = None  # (D, H, ceil(W / 8)) packed bits: the segment's stack before the session
    propagated: bool = False
    restored: str = ""  # what restoring it from the segment's tag did, not yet said in a result
    masks: Optional[np.ndarray] = None  # uint8 (D, H, W): each computed slice's latest output, updated slice by slice
    seen: Optional[Tuple[str, int]] = None  # the segment's labelmap_stamp when last written or checked for edits

    def nbytes(self) -> int:
        """Bytes it keeps (what :data:`MAX_SESSION_BYTES` bounds)."""
        arrays = [array for array in (self.masks, self.baseline) if array is not None]
        return self.session.nbytes() + sum(array.nbytes for array in arrays)


@dataclass
class ActionResult:
    message: str  # one sentence for the status line
    slice_index: Optional[int]  # the prompted slice, if any
    recomputed: List[int]  # slices whose output was recomputed, in order
    segment_id: str  # the segment written


@dataclass
class Computed:
    """An action's computation, to be written to the target captured when the action started."""

    state: SegmentSession
    source: SourceImage
    options: InteractiveOptions
    slice_index: Optional[int]
    recomputed: List[int]
    sentence: str
    new_segment: bool = False
    propagated: bool = False  # the action propagated: the largest component applies (module docstring)


class SegmentActions:
    """What the effect calls on a segmenter, whatever its sessions track through (the slices of the volume here,
    the frames of a cine in :class:`.cine.CineSegmenter`): each action is computed by ``compute_<action>``
    (nothing written) and written by ``write`` to the segment selected when it started; one session per
    segment, in ``sessions`` (keyed by segmentation node ID and segment ID), whose points ``_shown_points(editor,
    slice_node)`` lists as (slice or frame, point number, view x, view y, label). Inside Slicer, actions run
    through :meth:`run` on the shared RunController (one run at a time, cancel, captured target)."""

    sessions: Dict[Tuple[str, str], Any]

    # -- running and writing ------------------------------------------------------------------------

    def run(self, controller: RunController, editor: EditorAccess, action: str, *arguments, owner=None,
            progress: Optional[ProgressCallback] = None,
            confirm_target: Optional[Callable[[WriteTarget], bool]] = None) -> RunOutcome:
        """``compute_<action>(editor, *arguments)`` as one run of the controller (one at a time; cancel, a
        deleted target or a closed scene write nothing), then the write to the target captured at its start."""
        compute = getattr(self, f"compute_{action}")
        return controller.run(
            editor.backend.editor_node(),
            lambda should_cancel: self._computing(compute, editor, *arguments, progress=progress,
                                                  should_cancel=should_cancel),
            lambda computed, target: self.write(editor, computed, target).message,
            owner,
            confirm_target,
        )

    def box(self, editor: EditorAccess, *arguments, **keywords) -> ActionResult:
        return self._act(editor, self.compute_box, *arguments, **keywords)

    def points(self, editor: EditorAccess, *arguments, **keywords) -> ActionResult:
        return self._act(editor, self.compute_points, *arguments, **keywords)

    def use_segment_on_slice(self, editor: EditorAccess, *arguments, **keywords) -> ActionResult:
        return self._act(editor, self.compute_use_segment_on_slice, *arguments, **keywords)

    def propagate(self, editor: EditorAccess, *arguments, **keywords) -> ActionResult:
        return self._act(editor, self.compute_propagate, *arguments, **keywords)

    def remove_point(self, editor: EditorAccess, *arguments, **keywords) -> ActionResult:
        return self._act(editor, self.compute_remove_point, *arguments, **keywords)

    def remove_last_point(self, editor: EditorAccess, *arguments, **keywords) -> ActionResult:
        return self._act(editor, self.compute_remove_last_point, *arguments, **keywords)

    def pre_encode(self, editor: EditorAccess, slice_node, options: InteractiveOptions = InteractiveOptions()
                   ) -> Optional[str]:
        """Encode in the background what a box drawn in this view now would need (the slice segmenter does:
        :meth:`InteractiveSegmenter.pre_encode`); by default nothing: a cine's frames are encoded when it runs."""
        return None

    def _act(self, editor: EditorAccess, compute, *arguments, **keywords) -> ActionResult:
        target = WriteTarget.capture(editor.backend.editor_node())
        return self.write(editor, self._computing(compute, editor, *arguments, **keywords), target)

    def _computing(self, compute, editor: EditorAccess, *arguments, **keywords) -> Computed:
        """An action's computation with the model to itself: the background encoding stops for it
        (:meth:`PreEncoder.paused`), whatever the session tracks through."""
        with self.logic.pre_encoder.paused():
            return compute(editor, *arguments, **keywords)

    def _selected_key(self, editor: EditorAccess) -> Optional[Tuple[str, str]]:
        segment_id = editor.selected_segment_id()
        node = editor.segmentation_node()
        return (node.GetID(), segment_id) if segment_id and node is not None else None

    def session_of(self, editor: EditorAccess) -> Optional[Any]:
        """The selected segment's live session, or None."""
        key = self._selected_key(editor)
        return self.sessions.get(key) if key is not None else None

    def points_in_view(self, editor: EditorAccess, slice_node) -> List[Tuple[float, float, int]]:
        """The selected segment's points on the slice the view shows: view x, view y, label."""
        return [(x, y, label) for _, _, x, y, label in self._shown_points(editor, slice_node)]

    def point_near(self, editor: EditorAccess, slice_node, xy: Sequence[float], radius: float
                   ) -> Optional[Tuple[int, int]]:
        """(slice, point number) of the selected segment's point nearest xy on the viewed slice (frame), within
        ``radius`` view pixels; None if there is none."""
        shown = [(index, number, np.hypot(x - xy[0], y - xy[1]))
                 for index, number, x, y, _ in self._shown_points(editor, slice_node)]
        near = [entry for entry in shown if entry[2] <= radius]
        return min(near, key=lambda entry: entry[2])[:2] if near else None


class InteractiveSegmenter(SegmentActions):
    """The effect's actions on one MedSAM2Logic (which holds the model and the feature cache), on the slices of
    the source volume.

    Each action has a ``compute_*`` method (the session's work; nothing written) and a headless shortcut of
    the same name (:class:`SegmentActions`) that computes and writes to the segment selected when it started.
    """

    def __init__(self, logic: MedSAM2Logic, max_session_bytes: int = MAX_SESSION_BYTES) -> None:
        self.logic = logic
        self.max_session_bytes = max_session_bytes
        self.sessions: Dict[Tuple[str, str], SegmentSession] = {}  # least recently written first
        # The context every session shares: the stack's orientation, its window and its feature cache (which the
        # logic replaces when the volume, the window or the orientation changes).
        self._geometry: Optional[StackGeometry] = None
        self._windowing: Optional[Windowing] = None
        self._cache: Optional[FeatureCache] = None
        self._digest: Optional[Tuple[FeatureCache, str]] = None  # the digest of that cache's stack
        self._discarded: Dict[Tuple[str, str], str] = {}  # segment -> the saved tag its Reset dropped
        self._segmentations: Dict[str, Tuple[Any, int]] = {}  # node ID -> (segmentation node, SegmentRemoved observer)
        self._scene_observers: List[Tuple[Any, int]] = []

    def write(self, editor: EditorAccess, computed: Computed, target: WriteTarget) -> ActionResult:
        """Write the slices whose content changed (:meth:`_changed_slices`) undoably to the target segment (a new
        one for a new-segment box), each on its own extent; record what the segment holds there now. The session
        is then the target's, and its prompts are stored in the segment's tag."""
        state, source = computed.state, computed.source
        problem = target.problem(editor.backend.editor_node())
        if problem is not None:  # before reading the segment: it may be gone
            raise EditorStateError(problem)
        if computed.new_segment:
            target = replace(target, segment_id=None, segment_name=NEW_SEGMENT_NAME)
            state.record = WriteRecord(state.record.session_id)  # nothing of the new segment was written yet
        contents = self._changed_slices(state, computed)
        node, geometry = target.segmentation_node, state.geometry
        parts = []  # (first slice, last slice, box in the (K, J, I) array, new content there)
        modifications = []
        for first, last in _runs(sorted(contents)):
            box = _slab(source, geometry, first, last)
            new = geometry.from_stack(np.stack([contents[index] for index in range(first, last + 1)]))
            current = (segment_mask_on(node, target.segment_id, grid_part(source.image, box))
                       if target.segment_id is not None else np.zeros_like(new))
            modifications += slab_modifications(source.image, box, current, new)
            parts.append((first, last, box, new))
        if modifications or target.segment_id is None:
            segment_id = editor.modify(modifications, target)
        else:  # nothing changed: no edit, so no empty undo step; the tags still follow the session
            segment_id = target.segment_id
        if computed.new_segment:
            editor.backend.editor_node().SetSelectedSegmentID(segment_id)
        masking = editor.masking_applies()
        for first, last, box, new in parts:  # what the segment holds there now (the editable area may have cut it)
            stored = geometry.to_stack(segment_mask_on(node, segment_id, grid_part(source.image, box)) if masking
                                       else new)
            for index in range(first, last + 1):
                state.record.digests[index] = slice_digest(stored[index - first])
                state.record.kept.discard(index)
        key = (node.GetID(), segment_id)
        self.sessions.pop(key, None)
        self.sessions[key] = state  # the most recently used last
        self._observe(node)
        segment = node.GetSegmentation().GetSegment(segment_id)
        digest = self._stack_digest(state.session.volume, state.session.cache)
        segment.SetTag(SESSION_TAG, session_tag(state, state.windowing, source, digest))
        segment.SetTag(WRITTEN_TAG, state.record.as_tag(geometry))
        state.seen = labelmap_stamp(node, segment_id)
        self._bound_memory()
        sentence = computed.sentence
        if state.restored:
            sentence, state.restored = f"{state.restored} {sentence}", ""
        return ActionResult(sentence, computed.slice_index, computed.recomputed, segment_id)

    def _changed_slices(self, state: SegmentSession, computed: Computed) -> Dict[int, np.ndarray]:
        """slice -> the uint8 (H, W) content to write there, where it differs from what the record says the
        segment holds: on the slices the action recomputed, or after a propagation or a restore on every slice
        the session computed or wrote (the largest component may change anywhere, and Undo may have reverted
        any), less those kept as the user edited them (unless the action prompted them)."""
        session, record = state.session, state.record
        if state.masks is None:  # a new or restored session: every computed slice
            state.masks = np.zeros(session.volume.shape, dtype=np.uint8)
            updated = set(session.results)
        else:
            updated = set(computed.recomputed)
        for index in updated:
            state.masks[index] = session.results[index].mask
        candidates, final = updated, state.masks
        if computed.propagated or state.restored:
            candidates = set(session.results) | set(record.digests)
            if session.predictor.keep_largest_component:
                final = largest_component(state.masks)
        contents = {}
        width = session.volume.shape[2]
        for index in sorted(candidates):
            if index in record.kept and index != computed.slice_index:
                continue
            content = final[index]
            if computed.options.add and state.baseline is not None:
                content = content | np.unpackbits(state.baseline[index], axis=-1, count=width)
            if record.digests.get(index) != slice_digest(content):
                contents[index] = content
        return contents

    # -- the actions --------------------------------------------------------------------------------

    def compute_box(self, editor: EditorAccess, slice_node, xy_corners: Sequence[Sequence[float]],
                    options: InteractiveOptions = InteractiveOptions(), progress=None, should_cancel=None) -> Computed:
        """A box released in a view: a prompt on the segment's session (started if none), the slice computed
        at once. A box along another axis than the sessions', or after the volume or windowing changed, ends
        them all."""
        source = editor.source()
        view = view_geometry(source, slice_node)
        key = None if options.new_segment_per_box else self._selected_key(editor)
        if key is not None and key not in self.sessions:  # a saved session is restored first (or refused)
            self._restored(editor, source, key, options, view.slice_axis, progress, should_cancel)
        state = self.sessions.get(key) if key is not None else None
        if state is None or state.geometry.slice_axis != view.slice_axis or not self._fits(state, source, options):
            state = self._start(editor, source, key, view, options)
        prompt = self.logic.prompt_from_view(source, slice_node, xy_corners, state.geometry)
        index = prompt.stack.slice_index
        taken = self._take_edits(editor, source, state, exclude=index)  # the box replaces what was on its slice
        kind = self._kind(state, index, replacing=True)
        recomputed = taken + [state.session.add_prompt(index, box=list(prompt.stack.box)).index]
        state.prompts[index] = SlicePrompts(box=prompt.stack.box)
        state.point_order = [s for s in state.point_order if s != index]
        return self._then(source, state, options, index, recomputed,
                          edits_sentence(taken, index) + f"Box on slice {index}: {kind}", progress, should_cancel,
                          new_segment=options.new_segment_per_box)

    def compute_points(self, editor: EditorAccess, slice_node, clicks: Sequence[Tuple[Sequence[float], int]],
                       options: InteractiveOptions = InteractiveOptions(), progress=None, should_cancel=None) -> Computed:
        """Points clicked in a view, each ((x, y) view XY, label 1 object / 0 background), added to the
        prompt of the slice they are on (a click is one point; the slice is re-segmented at once)."""
        source = editor.source()
        state = self._session_for(editor, source, slice_node, options, "a point", progress, should_cancel)
        located = [self._locate(source, slice_node, state, xy) for xy, _ in clicks]
        index = located[0][0]
        if any(slice_index != index for slice_index, _ in located):
            raise InteractionError("The points are on different slices; give the points of one slice at a time.")
        labels = [int(label) for _, label in clicks]
        taken = self._take_edits(editor, source, state)  # an edit of this slice is the mask the points refine
        kind = self._kind(state, index, replacing=False)
        result = state.session.add_prompt(index, points=[list(xy) for _, xy in located], labels=labels, add=True)
        slice_prompts = state.prompts.setdefault(index, SlicePrompts())
        slice_prompts.points += [xy for _, xy in located]
        slice_prompts.labels += labels
        state.point_order += [index] * len(located)
        what = "Point" if len(labels) == 1 else f"{len(labels)} points"
        return self._then(source, state, options, index, taken + [result.index],
                          edits_sentence(taken, index) + f"{what} on slice {index}: {kind}",
                          progress, should_cancel)

    def compute_use_segment_on_slice(self, editor: EditorAccess, slice_node,
                                     options: InteractiveOptions = InteractiveOptions(), progress=None,
                                     should_cancel=None) -> Computed:
        """The segment's content on the viewed slice becomes that slice's (mask) prompt; then re-propagate."""
        source = editor.source()
        state = self._session_for(editor, source, slice_node, options, "Use the segment on this slice", progress,
                                  should_cancel)
        index = self._slice_at(source, slice_node, state.geometry, (0.0, 0.0))
        mask = self._segment_stack(editor, source, state.geometry, index, index)[0].astype(bool)
        if not mask.any():
            raise InteractionError(f"The segment is empty on slice {index}; paint the structure there first.")
        taken = self._take_edits(editor, source, state, exclude=index)
        kind = self._kind(state, index, replacing=True)
        recomputed = taken + [state.session.add_prompt(index, mask=mask).index]
        state.prompts[index] = SlicePrompts(mask=mask)
        state.point_order = [s for s in state.point_order if s != index]
        return self._then(source, state, replace(options, auto_update=True), index, recomputed,
                          edits_sentence(taken, index) + f"The segment on slice {index} is its prompt: {kind}",
                          progress, should_cancel)

    def compute_propagate(self, editor: EditorAccess, options: InteractiveOptions = InteractiveOptions(),
                          progress=None, should_cancel=None) -> Computed:
        """Propagate, or Update after corrections: the session recomputes only what its prompts change."""
        source = editor.source()
        state = self._session_for(editor, source, None, options, "Propagate", progress, should_cancel)
        taken = self._take_edits(editor, source, state)
        propagated, stops = self._propagate(state, options, progress, should_cancel)
        recomputed = taken + [index for index in propagated if index not in taken]
        sentence = (f"Propagated: {len(propagated)} slice(s) recomputed." if propagated
                    else "Nothing to update: every slice is up to date.")
        return Computed(state, source, options, None, recomputed,
                        " ".join([edits_sentence(taken, None) + sentence, *stops, "Undo (Ctrl+Z) reverts it."]),
                        propagated=True)

    def compute_remove_point(self, editor: EditorAccess, index: int, number: int,
                             options: InteractiveOptions = InteractiveOptions(), progress=None,
                             should_cancel=None) -> Computed:
        """Remove a point (from :meth:`point_near`): the slice is prompted again with what remains on it, or
        loses its prompt when nothing remains."""
        source = editor.source()
        state = self._session_for(editor, source, None, options, "removing a point", progress, should_cancel)
        taken = self._take_edits(editor, source, state, exclude=index)  # the slice is prompted again below
        recomputed = remove_point(state, index, number)
        return self._then(source, state, options, index, taken + recomputed,
                          edits_sentence(taken, index) + f"Point removed from slice {index}", progress, should_cancel)

    def compute_remove_last_point(self, editor: EditorAccess, options: InteractiveOptions = InteractiveOptions(),
                                  progress=None, should_cancel=None) -> Computed:
        """Remove the point added last to the selected segment's session (Backspace)."""
        state = self._session_for(editor, editor.source(), None, options, "removing a point", progress,
                                  should_cancel)
        if not state.point_order:
            raise InteractionError("The selected segment's MedSAM2 session has no points to remove.")
        index = state.point_order[-1]
        return self.compute_remove_point(editor, index, len(state.prompts[index].points) - 1, options, progress,
                                         should_cancel)

    # -- queries and lifetime -----------------------------------------------------------------------

    def restorable(self, editor: EditorAccess) -> bool:
        """True if the selected segment has no live session but a saved one that its next action restores (or,
        if it does not fit, names in a refusal)."""
        key = self._selected_key(editor)
        return key is not None and key not in self.sessions and self._saved_tag(editor, key) is not None

    def end_session(self, editor: EditorAccess) -> None:
        """Reset: the selected segment's session ends (its prompts are forgotten; the segment is kept), and the
        session saved in its tag is not restored: the next box starts a new one, whose write replaces the tag."""
        key = self._selected_key(editor)
        if key is not None:
            self.sessions.pop(key, None)
            tag = saved_session_tag(editor.segmentation_node(), key[1])
            if tag is not None:
                self._discarded[key] = tag

    def end_sessions(self) -> None:
        """Every session ends (another volume, axis or window; scene closed) and the image features are released
        (the segments keep their sessions in their tags)."""
        self.sessions.clear()
        self._geometry = self._windowing = self._cache = self._digest = None
        self.logic.clear_cache()
        self._forget_segmentations()

    def watch(self, scene) -> None:
        """Follow the scene: a removed segmentation ends its segments' sessions (a removed segment its own, see
        :meth:`write`), and closing the scene ends every session and releases the image features at once."""
        self._scene_observers += [
            (scene, scene.AddObserver(scene.NodeRemovedEvent, lambda caller, event: self.drop_removed())),
            (scene, scene.AddObserver(scene.EndCloseEvent, lambda caller, event: self.end_sessions())),
        ]

    def close(self) -> None:
        """End every session and stop observing (before this segmenter is replaced, e.g. on another model)."""
        self.end_sessions()
        for scene, tag in self._scene_observers:
            scene.RemoveObserver(tag)
        self._scene_observers = []

    def drop_removed(self) -> None:
        """End the sessions whose segment or segmentation is no longer there."""
        for key in list(self.sessions):
            node = self._segmentations.get(key[0], (None, 0))[0]
            scene = node.GetScene() if node is not None else None
            if scene is None or not scene.IsNodePresent(node) or node.GetSegmentation().GetSegment(key[1]) is None:
                del self.sessions[key]
        self._forget_segmentations({node_id for node_id, _ in self.sessions})

    def pre_encode(self, editor: EditorAccess, slice_node, options: InteractiveOptions = InteractiveOptions()
                   ) -> Optional[str]:
        """While the user finds the slice and drags the box: encode the slice this view shows, then its neighbours,
        in the background (:class:`PreEncoder`), on the stack a box drawn here now would use (the selected segment's
        session's, else the stack a new session would start on), so that the box's preview needs only the
        decoder. Returns at once; call it from the thread that starts the runs, never during one.

        Nothing is started where a box could not segment (no source volume, an oblique view, ...: the box says
        why), where the selected segment has a saved session to restore (restoring picks its own stack), or where
        the stack differs from the live sessions' (building it would replace their image features, which only a
        box may do). Returns, once, a sentence saying that an earlier background encoding failed (else None)."""
        failure = self.logic.pre_encoder.take_failure()
        try:
            source = editor.source()
            view = view_geometry(source, slice_node)
            state = self.session_of(editor)
            if state is not None and state.geometry.slice_axis == view.slice_axis and self._fits(state, source,
                                                                                                  options):
                geometry, windowing = state.geometry, state.windowing
            elif self.restorable(editor) and not options.new_segment_per_box:
                return failure
            else:
                geometry, windowing = self._new_session_stack(source, view, options)
                if self._cache is not None and not self._same_stack(source, geometry, windowing):
                    return failure
            stack, cache = self.logic.stack_for(source, geometry, windowing)
            shown = self._slice_at(source, slice_node, geometry, (0.0, 0.0))
        except ValueError:  # EditorStateError, ObliqueViewError, InteractionError, NonFiniteError: the box says it
            return failure
        self.logic.pre_encoder.request(stack, cache, slices_to_encode(shown, stack.shape[0]))
        return failure

    def held_bytes(self) -> int:
        """Bytes kept for segmenting: the image features and every session's outputs, memories and masks."""
        return self.logic.feature_bytes() + sum(state.nbytes() for state in self.sessions.values())

    # -- internals ----------------------------------------------------------------------------------

    def _fits(self, state: SegmentSession, source: SourceImage, options: InteractiveOptions) -> bool:
        """True if the session goes on here: the effect's intensity option is its window or the default (the
        session's own window, whatever the display shows now) and its stack is still the volume's."""
        return options.windowing in (None, state.windowing) and self._same_stack(source, state.geometry,
                                                                                 state.windowing)

    def _same_stack(self, source: SourceImage, geometry: StackGeometry, windowing: Windowing) -> bool:
        """True if the live sessions run on this orientation and window and the volume's voxels are unchanged."""
        return (self._cache is not None and (self._geometry, self._windowing) == (geometry, windowing)
                and self.logic.stack_for(source, geometry, windowing)[1] is self._cache)

    def _start(self, editor, source: SourceImage, key, view: StackGeometry, options: InteractiveOptions,
               geometry: Optional[StackGeometry] = None, windowing: Optional[Windowing] = None,
               session_id: Optional[str] = None) -> SegmentSession:
        """A new session (restored: on the saved geometry and window, with the saved session's ID), joining the live
        sessions' stack if it runs along the view's axis with the same window; otherwise the live sessions end."""
        if geometry is None:
            geometry, windowing = self._new_session_stack(source, view, options)
        windowing = windowing or options.windowing or display_windowing(source.volume_node)
        if self._cache is not None and not self._same_stack(source, geometry, windowing):
            self.end_sessions()
        stack, cache = self.logic.stack_for(source, geometry, windowing)
        self._geometry, self._windowing, self._cache = geometry, windowing, cache
        baseline = None
        if key is not None:  # the segment's content before the session, for Add
            content = geometry.to_stack(segment_mask_on(editor.segmentation_node(), key[1], source.image))
            baseline = np.packbits(content.astype(bool), axis=2)
        session = Session(self.logic.predictor, stack, cache, early_stop=self.logic.predictor.early_stop)
        record = WriteRecord(session_id or uuid.uuid4().hex)
        return SegmentSession(session, geometry, windowing, record, baseline=baseline)

    def _new_session_stack(self, source: SourceImage, view: StackGeometry, options: InteractiveOptions
                           ) -> Tuple[StackGeometry, Windowing]:
        """The stack orientation and window of a session a box in this view would start: the live sessions'
        orientation if it runs along the view's axis with the same window (it then joins them), else the view's."""
        windowing = options.windowing or display_windowing(source.volume_node)
        joins = self._geometry is not None and self._geometry.slice_axis == view.slice_axis
        return (self._geometry if joins and self._same_stack(source, self._geometry, windowing) else view), windowing

    def _take_edits(self, editor, source: SourceImage, state: SegmentSession, exclude: Optional[int] = None
                    ) -> List[int]:
        """The slices of the selected segment edited with another effect since MedSAM2 last wrote them (their
        content differs from the record's digest), except ``exclude``: each becomes the session's mask prompt
        there (unless it already is) and is kept as it is from now on. Returns them, in order."""
        key = self._selected_key(editor)
        if key is None:
            return []
        stamp = labelmap_stamp(editor.segmentation_node(), key[1])
        if stamp is not None and stamp == state.seen:  # the voxels did not change since the last check
            return []
        # The tag, not memory: Undo and Redo restore it with the voxels.
        state.record = WriteRecord.of_segment(editor.segmentation_node(), key[1], state.geometry,
                                              state.record.session_id)
        state.seen = stamp
        digests = state.record.digests
        if not digests:
            return []
        first = min(digests)
        content = self._segment_stack(editor, source, state.geometry, first, max(digests))
        taken = [index for index, digest in sorted(digests.items())
                 if index != exclude and slice_digest(content[index - first]) != digest]
        for index in taken:
            mask = content[index - first].astype(bool)
            given = state.prompts.get(index)
            if given is None or given.mask is None or not np.array_equal(given.mask, mask):
                state.session.add_prompt(index, mask=mask)
                state.prompts[index] = SlicePrompts(mask=mask)
                state.point_order = [s for s in state.point_order if s != index]
            digests[index] = slice_digest(content[index - first])
            state.record.kept.add(index)
        return taken

    def _segment_stack(self, editor, source: SourceImage, geometry: StackGeometry, first: int, last: int
                       ) -> np.ndarray:
        """uint8 (last - first + 1, H, W): the selected segment on stack slices first..last (only those read)."""
        part = grid_part(source.image, _slab(source, geometry, first, last))
        return geometry.to_stack(segment_mask_on(editor.segmentation_node(), editor.selected_segment_id(), part))

    def _observe(self, segmentation_node) -> None:
        """Drop a segment's session when the segment is removed."""
        node_id = segmentation_node.GetID()
        if node_id not in self._segmentations:
            tag = segmentation_node.AddObserver(slicer.vtkSegmentation.SegmentRemoved,
                                                lambda caller, event: self.drop_removed())
            self._segmentations[node_id] = (segmentation_node, tag)

    def _forget_segmentations(self, keep: Set[str] = frozenset()) -> None:
        for node_id in [node_id for node_id in self._segmentations if node_id not in keep]:
            node, tag = self._segmentations.pop(node_id)
            node.RemoveObserver(tag)

    def _bound_memory(self) -> None:
        """End the least recently used sessions while all keep more than max_session_bytes (the last stays)."""
        sizes = {key: state.nbytes() for key, state in self.sessions.items()}
        total = sum(sizes.values())
        for key in list(self.sessions)[:-1]:
            if total <= self.max_session_bytes:
                break
            total -= sizes[key]
            del self.sessions[key]
        self._forget_segmentations({node_id for node_id, _ in self.sessions})

    def _restored(self, editor, source: SourceImage, key, options: InteractiveOptions, view_axis: Optional[int],
                  progress, should_cancel) -> Optional[SegmentSession]:
        """The session saved in the segment's tag, rebuilt by replaying its steps on the images it was made on;
        None if the segment has none (or its Reset dropped it). InteractionError says why a saved session does
        not fit (nothing is restored, nothing written); Cancelled stops the replay (nothing kept)."""
        tag = self._saved_tag(editor, key)
        if tag is None:
            return None
        try:
            saved = SavedSession.from_tag(tag)
        except ValueError as error:
            raise InteractionError(f"The segment's saved MedSAM2 session cannot be read ({error}). {RESET_ADVICE}"
                                   ) from error
        axis = saved.geometry.slice_axis
        if view_axis is not None and view_axis != axis:
            raise InteractionError(
                f"The segment's saved MedSAM2 session runs on slices along {AXIS_NAMES[axis]} (the {VIEW_NAMES[axis]} "
                f"view of a volume stored axially); this view shows slices along {AXIS_NAMES[view_axis]}. Use a view "
                f"along {AXIS_NAMES[axis]} to go on with it. {RESET_ADVICE}")
        if saved.size_ijk != source.shape_ijk:
            raise InteractionError(
                f"The segment's saved MedSAM2 session was made on a volume of {_size(saved.size_ijk)} voxels; the "
                f"source volume here has {_size(source.shape_ijk)}. Select the volume it was made on. {RESET_ADVICE}")
        # Its own window, whatever the display shows now, unless the effect's option names another.
        windowing = options.windowing or Windowing.parse(saved.window)
        if self._cache is None or self._same_stack(source, saved.geometry, windowing):
            digest = self._stack_digest(*self.logic.stack_for(source, saved.geometry, windowing))
        else:  # checked without replacing the live sessions' stack (the logic keeps one)
            digest = stack_digest(saved.geometry.to_stack(windowing.apply(source.array())))
        if digest != saved.digest:
            now = window_text(windowing)
            raise InteractionError(
                f"The segment's saved MedSAM2 session was made with the intensity window {saved.window}, and the "
                f"current window is {now}: set it back to go on with the session. {RESET_ADVICE}"
                if now != saved.window else
                f"The segment's saved MedSAM2 session was made on other images: the source volume's voxels differ "
                f"from those it was made on. Select the volume it was made on. {RESET_ADVICE}")
        # The sessions of another stack end (their segments keep their tags).
        record = WriteRecord.of_segment(editor.segmentation_node(), key[1], saved.geometry, None)
        state = self._start(editor, source, key, saved.geometry, options, saved.geometry, windowing,
                            record.session_id)
        state.record = record
        # Replayed as it computed (the next propagation follows the current setting again).
        state.session.early_stop = saved.options.get("early_stop", state.session.early_stop)
        self._replay(state, saved.steps, progress, should_cancel)
        state.prompts, state.point_order = prompts_of(saved.steps)
        state.propagated = any("propagate" in step for step in saved.steps)
        state.restored = f"Restored the segment's saved MedSAM2 session ({len(saved.steps)} steps)."
        saved_precision, now = saved.options.get("precision"), session_options(state.session)["precision"]
        if saved_precision not in (None, now):
            state.restored += (f" It was computed in {saved_precision} and replayed in {now}, the precision set now, "
                               "so its slices may differ slightly from the saved segment.")
        self.sessions[key] = state
        return state

    def _replay(self, state: SegmentSession, steps: List[dict], progress, should_cancel) -> None:
        """Run saved steps on a new session, reporting each slice a propagation computes. The total is every
        propagation's whole range (a re-propagation or an early stop computes less: the bar then ends full at
        the end of the replay)."""
        num_slices = state.session.volume.shape[0]
        total = sum(last - first + 1 for first, last in
                    (step.get("range", (0, num_slices - 1)) for step in steps if "propagate" in step))
        done = 0

        def on_slice(_result) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, max(total, done))
            if should_cancel is not None and should_cancel():
                raise Cancelled()

        try:
            run_steps(state.session, steps, on_slice=on_slice)
        except (SessionFileError, KeyError, TypeError) as error:
            raise InteractionError(f"The segment's saved MedSAM2 session cannot be replayed ({error}). {RESET_ADVICE}"
                                   ) from error
        if progress is not None and 0 < done < total:
            progress(done, done)

    def _saved_tag(self, editor, key) -> Optional[str]:
        """The session saved in the segment's tag, unless its Reset dropped it."""
        tag = saved_session_tag(editor.segmentation_node(), key[1])
        return tag if tag is not None and self._discarded.get(key) != tag else None

    def _stack_digest(self, stack: np.ndarray, cache: FeatureCache) -> str:
        """The digest of a stack, computed once per stack (its feature cache)."""
        if self._digest is None or self._digest[0] is not cache:
            self._digest = (cache, stack_digest(stack))
        return self._digest[1]

    def _session_for(self, editor, source, slice_node, options, action: str, progress=None,
                     should_cancel=None) -> SegmentSession:
        """The selected segment's session (restored from its tag if it has none), checked against the view's
        axis and the current context."""
        key = self._selected_key(editor)
        state = self.sessions.get(key) if key is not None else None
        if state is None and key is not None:
            view_axis = view_geometry(source, slice_node).slice_axis if slice_node is not None else None
            state = self._restored(editor, source, key, options, view_axis, progress, should_cancel)
        if state is None:
            raise InteractionError(
                f"The selected segment has no MedSAM2 session: draw a box around the structure first ({action} "
                "works on the session the box starts)."
            )
        if slice_node is not None:
            view_axis = view_geometry(source, slice_node).slice_axis
            axis = state.geometry.slice_axis
            if view_axis != axis:
                raise InteractionError(
                    f"This segment's MedSAM2 session runs on slices along {AXIS_NAMES[axis]} (the "
                    f"{VIEW_NAMES[axis]} view of a volume stored axially); this view shows slices along "
                    f"{AXIS_NAMES[view_axis]}. Use a view along {AXIS_NAMES[axis]}, or draw a new box here to start "
                    "over along this axis."
                )
        if not self._fits(state, source, options):
            self.end_sessions()
            if options.windowing not in (None, state.windowing):
                raise InteractionError(
                    f"The intensity windowing changed in the effect's options: the session runs on the window "
                    f"{window_text(state.windowing)}, the option is {window_text(options.windowing)}, which ends "
                    "MedSAM2's sessions. Set the option back to go on with it (it is restored from the segment), or "
                    "draw a box to start a new session.")
            raise InteractionError(
                "The source volume changed since the box was drawn, which ends MedSAM2's sessions. Draw a box to "
                "start again.")
        return state

    def _slice_at(self, source, slice_node, geometry, xy) -> int:
        """The stack slice under view XY (the slice the view shows)."""
        ijk = transform_points(view_to_index(source, slice_node), [[xy[0], xy[1], 0.0]])
        slice_index = int(np.floor(geometry.stack_coordinates(ijk, source.shape_ijk)[0, 0] + 0.5))
        if not 0 <= slice_index < source.shape_ijk[geometry.slice_axis]:
            raise InteractionError(f"The view shows slice {slice_index}, outside the volume.")
        return slice_index

    def _locate(self, source, slice_node, state: SegmentSession, xy) -> Tuple[int, Tuple[float, float]]:
        ijk = transform_points(view_to_index(source, slice_node), [[xy[0], xy[1], 0.0]])[0]
        return point_prompt(state.geometry, ijk, source.shape_ijk)

    def _shown_points(self, editor: EditorAccess, slice_node) -> List[Tuple[int, int, float, float, int]]:
        """(slice, point number, view x, view y, label) of the selected segment's points on the viewed slice;
        none when the view is along another axis or the editor cannot segment now."""
        state = self.session_of(editor)
        if state is None:
            return []
        try:
            source = editor.source()
            if view_geometry(source, slice_node).slice_axis != state.geometry.slice_axis:
                return []
            index = self._slice_at(source, slice_node, state.geometry, (0.0, 0.0))
        except ValueError:  # EditorStateError, ObliqueViewError, InteractionError: nothing to show
            return []
        slice_prompts = state.prompts.get(index)
        if slice_prompts is None or not slice_prompts.points:
            return []
        ijk = state.geometry.index_coordinates([[index, y, x] for x, y in slice_prompts.points], source.shape_ijk)
        xy = transform_points(np.linalg.inv(view_to_index(source, slice_node)), ijk)
        return [(index, number, float(x), float(y), label)
                for number, ((x, y, _), label) in enumerate(zip(xy, slice_prompts.labels))]

    def _kind(self, state: SegmentSession, index: int, replacing: bool) -> str:
        return prompt_kind(state.session, state.propagated, index, replacing)

    def _propagate(self, state: SegmentSession, options: InteractiveOptions, progress, should_cancel
                   ) -> Tuple[List[int], List[str]]:
        recomputed, stops = propagate_session(state.session, self.logic.predictor.early_stop, options, progress,
                                              should_cancel)
        state.propagated = True
        return recomputed, stops

    def _then(self, source, state, options, index, recomputed, sentence, progress, should_cancel,
              new_segment: bool = False) -> Computed:
        """After a prompt: propagate too when asked (auto update) and the session has propagated before."""
        stops: List[str] = []
        propagates = options.auto_update and state.propagated
        if propagates:
            propagated, stops = self._propagate(state, options, progress, should_cancel)
            recomputed += [i for i in propagated if i not in recomputed]
            sentence += f"; {len(propagated)} slice(s) re-propagated"
        elif state.propagated:
            sentence += ". Click Update to re-propagate from it"
        else:
            sentence += ". Propagate to follow it through the volume"
        return Computed(state, source, options, index, recomputed, " ".join([sentence + ".", *stops]), new_segment,
                        propagates)


def remove_point(state, index: int, number: int) -> List[int]:
    """Remove point ``number`` of slice (or frame) ``index`` from a session state (a :class:`SegmentSession` or
    a cine's): the slice is prompted again with what remains on it, or loses its prompt when nothing remains.
    Returns the slices recomputed."""
    slice_prompts = state.prompts[index]
    points = slice_prompts.points[:number] + slice_prompts.points[number + 1:]
    labels = slice_prompts.labels[:number] + slice_prompts.labels[number + 1:]
    if slice_prompts.box is None and not points:
        state.session.remove_prompt(index)
        del state.prompts[index]
        recomputed = []
    else:
        prompt = {"box": list(slice_prompts.box)} if slice_prompts.box is not None else {}
        if points:
            prompt.update(points=[list(point) for point in points], labels=labels)
        recomputed = [state.session.add_prompt(index, **prompt).index]
        slice_prompts.points, slice_prompts.labels = points, labels
    del state.point_order[[i for i, s in enumerate(state.point_order) if s == index][number]]
    return recomputed


def prompt_kind(session: Session, propagated: bool, index: int, replacing: bool) -> str:
    """What a prompt on this slice (or frame) of the session does, said before it is given."""
    tracked = session.tracked_by(index)
    if tracked is not None:
        return f"a correction of the {tracked} tracking"
    if index in session.prompted_slices:
        return ("its prompt replaced" if replacing else "added to its prompt") + ", the session recomputed"
    return "a new keyframe" if propagated else "segmented"


def propagate_session(session: Session, early_stop: Optional[int], options: InteractiveOptions,
                      progress: Optional[ProgressCallback], should_cancel) -> Tuple[List[int], List[str]]:
    """Run the session's propagation with the predictor's current early stop (the setting may have changed since
    it started): the slices recomputed, and where and why each direction it walked stopped early. The progress
    total is what the session plans to recompute; should_cancel() saying yes raises Cancelled (nothing is
    written)."""
    session.early_stop = early_stop
    plan = session.planned(options.direction, options.slice_range)
    counter = PropagationProgress(plan, progress)
    recomputed: List[int] = []
    propagation = session.propagate(direction=options.direction, slice_range=options.slice_range)
    try:
        for result in propagation:
            recomputed.append(result.index)
            counter.slice_done(result)
            if should_cancel is not None and should_cancel():
                raise Cancelled()
    finally:
        propagation.close()
    counter.finish()
    return recomputed, [str(session.stops[name]) for name in plan if session.stops[name].early]


def session_tag(state: SegmentSession, windowing: Windowing, source: SourceImage, digest: str) -> str:
    """The session as the JSON stored in the segment's tag: its steps (mask prompts as base64 PNG), the stack
    orientation they refer to, the window (full precision), the size of the grid, whether that grid is the
    source volume's own (``volume_grid``; else a session file cannot address the volume's voxels) and the
    digest of the stack (:func:`stack_digest`). No '|' in it: that character separates tags in .seg.nrrd."""
    document = {
        "steps": [_encoded_step(step) for step in state.session.steps],
        "stack": state.geometry.as_json(),
        "window": window_text(windowing),
        "size_ijk": [int(n) for n in source.shape_ijk],
        "volume_grid": source.on_volume_grid(),
        "digest": digest,
        "options": session_options(state.session),
    }
    return json.dumps(document).replace("|", "\\u007c")


@dataclass(frozen=True)
class SavedSession:
    """A session as a segment's tag holds it (:func:`session_tag`), masks decoded."""

    steps: List[dict]
    geometry: StackGeometry
    window: str
    size_ijk: Tuple[int, int, int]
    volume_grid: bool
    digest: str
    options: Dict[str, Any]  # how it computed (session_file.session_options)

    @classmethod
    def from_tag(cls, tag: str) -> "SavedSession":
        """ValueError with the reason when the tag is not a session this version wrote."""
        try:
            document = json.loads(tag)
            saved = cls([_decoded_step(step) for step in document["steps"]], StackGeometry.from_json(document["stack"]),
                        document["window"], tuple(int(n) for n in document["size_ijk"]), document["volume_grid"],
                        document["digest"], document["options"])
            Windowing.parse(saved.window)
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:  # json, PNG errors included
            raise ValueError(f"{type(error).__name__}: {error}") from error
        return saved


def write_session_from_tag(tag: str, path: Path) -> None:
    """A segment's ``MedSAM2.Session`` tag as a session file (JSON, masks in ``.npy`` files beside it) for
    ``medsam2 segment VOLUME --prompts PATH`` on the source volume's file: it names the stack orientation, the
    window and the size. Refused (SessionFileError) when the session ran on a grid other than the volume's."""
    try:
        saved = SavedSession.from_tag(tag)
    except ValueError as error:
        raise SessionFileError(f"The segment's MedSAM2 session cannot be read ({error}).") from error
    if not saved.volume_grid:
        raise SessionFileError(
            "The segment's MedSAM2 session ran on the segmentation's own grid, which is not the source volume's "
            "voxel grid, so a session file would prompt other voxels of the volume's file; to save one, give the "
            "segmentation the source volume's geometry (Segment Editor: Specify geometry) and segment again."
        )
    write_session_file(path, saved.steps, saved.geometry, saved.window, saved.size_ijk, saved.options)


def slice_digest(mask: np.ndarray) -> str:
    """A digest of a 0/1 (H, W) slice: the same exactly when the same voxels are set."""
    digest = hashlib.blake2b(str(mask.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(mask, dtype=np.uint8).data)
    return digest.hexdigest()


def edits_sentence(taken: Sequence[int], prompted: Optional[int]) -> str:
    """What an action did with slices the user edited (:meth:`InteractiveSegmenter._take_edits`), as the start of
    its status line ("" if none)."""
    kept = [index for index in taken if index != prompted]
    sentences = []
    if len(kept) == 1:
        sentences.append(f"Slice {kept[0]} kept as you painted it, used as a correction. ")
    elif kept:
        sentences.append(f"Slices {', '.join(map(str, kept))} kept as you painted them, used as corrections. ")
    if prompted is not None and prompted in taken:
        sentences.append(f"Your edit of slice {prompted} is the mask this prompt refines. ")
    return "".join(sentences)


def _runs(indices: Sequence[int]) -> List[Tuple[int, int]]:
    """Sorted indices as (first, last) runs of consecutive ones."""
    runs: List[Tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def _slab(source: SourceImage, geometry: StackGeometry, first: int, last: int) -> Tuple[slice, slice, slice]:
    """The part of the (K, J, I) array that holds stack slices first..last."""
    box = [slice(0, size) for size in source.shape_ijk[::-1]]
    box[2 - geometry.slice_axis] = slice(first, last + 1)
    return tuple(box)


def stack_digest(stack: np.ndarray) -> str:
    """A digest of a uint8 (slices, rows, columns) stack: the same exactly when the model sees the same images."""
    digest = hashlib.blake2b(str(stack.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(stack).data)
    return digest.hexdigest()


def window_text(windowing: Windowing) -> str:
    """The windowing as ``Windowing.parse`` reads it, bounds at full precision."""
    return " ".join(repr(float(bound)) for bound in windowing.bounds) if windowing.bounds else windowing.name


def prompts_of(steps: Sequence[dict]) -> Tuple[Dict[int, "SlicePrompts"], List[int]]:
    """What each slice was given (for display and removal) and the slice of each point in the order they were
    added, from the steps that gave them (the order of points a step removed from a slice is not recorded:
    its last ones are taken as removed)."""
    prompts: Dict[int, SlicePrompts] = {}
    order: List[int] = []
    for step in steps:
        if "propagate" in step:
            continue
        index = step["slice"]
        if step.get("remove"):
            prompts.pop(index, None)
            order = [s for s in order if s != index]
            continue
        points = [tuple(point) for point in step.get("points", [])]
        labels = [int(label) for label in step.get("labels", [])]
        if step.get("add") and index in prompts:
            prompts[index].points += points
            prompts[index].labels += labels
            order += [index] * len(points)
            continue
        box = tuple(step["box"]) if "box" in step else None
        prompts[index] = SlicePrompts(box=box, points=points, labels=labels, mask=step.get("mask"))
        kept = [i for i, s in enumerate(order) if s == index][:len(points)]
        order = [s for i, s in enumerate(order) if s != index or i in kept] + [index] * (len(points) - len(kept))
    return prompts, order


def _size(size_ijk: Sequence[int]) -> str:
    return " x ".join(map(str, size_ijk))


def _encoded_step(step: dict) -> dict:
    mask = step.get("mask")
    if not isinstance(mask, np.ndarray):
        return step
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return {**step, "mask": {"png_base64": base64.b64encode(buffer.getvalue()).decode("ascii")}}


def _decoded_step(step: dict) -> dict:
    mask = step.get("mask")
    if not isinstance(mask, dict):
        return step
    return {**step, "mask": np.asarray(Image.open(io.BytesIO(base64.b64decode(mask["png_base64"])))) != 0}
