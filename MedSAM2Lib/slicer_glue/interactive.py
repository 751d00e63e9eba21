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

Every action writes the session's whole mask, through the segment editor's undoable, masking-aware Set, to the
segment captured when the action started: the slices the session has computed get the session's mask (Replace)
or the segment's content from before the session plus the mask (Add); other slices keep their content. Undo
reverts the segment; the session's prompts stay, so the next action recomputes from them. The prompts are
stored with the segment in the tag :data:`SESSION_TAG`, saved in ``.seg.nrrd`` files.

Sessions live while the source volume, the stack axis and the intensity windowing stay the same: one session
per segment, kept when another segment is selected; a change of any of these, :meth:`end_sessions` (Reset) or
a closed scene ends them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..inference.predictor import Cancelled, FeatureCache
from ..inference.preprocessing import Windowing
from ..inference.session import Session
from .geometry import AXIS_NAMES, StackGeometry, point_prompt, transform_points
from .logic import (EditorAccess, EditorStateError, MedSAM2Logic, SourceImage, labelmap_like, segment_mask_on,
                    view_geometry, view_to_index)

SESSION_TAG = "MedSAM2.Session"
VIEW_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}  # usual view of slices along I, J, K (LPS/RAS volumes)

ProgressCallback = Callable[[int, int], None]


class InteractionError(ValueError):
    """An action that cannot apply here (wrong axis, no session yet, ...); the message says what to do."""


@dataclass(frozen=True)
class InteractiveOptions:
    windowing: Optional[Windowing] = None  # None: the volume's display window
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
class SegmentSession:
    """A segment's session: the tracker, the stack orientation it runs on, and its prompts per slice."""

    session: Session
    geometry: StackGeometry
    prompts: Dict[int, SlicePrompts] = field(default_factory=dict)
    point_order: List[int] = field(default_factory=list)  # slice of each point, in the order they were added
    baseline: Optional[np.ndarray] = None  # packed bits of the segment before the session's first write (Add)
    propagated: bool = False


@dataclass(frozen=True)
class WriteTarget:
    """Where an action writes, captured when it starts: a segment that exists, or a new one to create."""

    segmentation_node: "slicer.vtkMRMLSegmentationNode"  # noqa: F821
    segment_id: Optional[str]  # None: create a segment when writing

    @property
    def key(self) -> Tuple[str, str]:
        return self.segmentation_node.GetID(), self.segment_id


@dataclass
class ActionResult:
    message: str  # one sentence for the status line
    slice_index: Optional[int]  # the prompted slice, if any
    recomputed: List[int]  # slices whose output was recomputed, in order
    segment_id: str  # the segment written


class InteractiveSegmenter:
    """The effect's actions on one MedSAM2Logic (which holds the model and the feature cache)."""

    def __init__(self, logic: MedSAM2Logic) -> None:
        self.logic = logic
        self.sessions: Dict[Tuple[str, str], SegmentSession] = {}
        # The context every session shares: the stack's orientation and its feature cache (which the logic
        # replaces when the volume or the windowing changes).
        self._geometry: Optional[StackGeometry] = None
        self._cache: Optional[FeatureCache] = None

    # -- the actions --------------------------------------------------------------------------------

    def box(self, editor: EditorAccess, slice_node, xy_corners: Sequence[Sequence[float]],
            options: InteractiveOptions = InteractiveOptions(), progress=None, should_cancel=None) -> ActionResult:
        """A box released in a view: a prompt on the segment's session (started if none), the slice written.

        A box along another axis than the sessions', or after the volume or windowing changed, ends them all.
        """
        source = editor.source()
        target = self._target(editor, new_segment=options.new_segment_per_box)
        geometry = self._shared_geometry(source, view_geometry(source, slice_node), options)
        prompt = self.logic.prompt_from_view(source, slice_node, xy_corners, geometry)
        state = self.sessions.get(target.key) if target.segment_id is not None else None
        if state is None:
            state = self._start(source, target, geometry, options)
        index = prompt.stack.slice_index
        kind = self._kind(state, index, replacing=True)
        recomputed = [state.session.add_prompt(index, box=list(prompt.stack.box)).index]
        state.prompts[index] = SlicePrompts(box=prompt.stack.box)
        state.point_order = [s for s in state.point_order if s != index]
        return self._finish(editor, source, target, state, options, index, recomputed, f"Box on slice {index}: {kind}",
                            progress, should_cancel)

    def points(self, editor: EditorAccess, slice_node, clicks: Sequence[Tuple[Sequence[float], int]],
               options: InteractiveOptions = InteractiveOptions(), progress=None, should_cancel=None) -> ActionResult:
        """Points clicked in a view, each ((x, y) in view XY, label 1 object / 0 background), added to the
        prompt of the slice they are on (a single click is one point)."""
        source = editor.source()
        target, state = self._session_for(editor, source, slice_node, options, "a point")
        located = [self._locate(source, slice_node, state, xy) for xy, _ in clicks]
        index = located[0][0]
        if any(slice_index != index for slice_index, _ in located):
            raise InteractionError("The points are on different slices; give the points of one slice at a time.")
        labels = [int(label) for _, label in clicks]
        kind = self._kind(state, index, replacing=False)
        result = state.session.add_prompt(index, points=[list(xy) for _, xy in located], labels=labels, add=True)
        slice_prompts = state.prompts.setdefault(index, SlicePrompts())
        slice_prompts.points += [xy for _, xy in located]
        slice_prompts.labels += labels
        state.point_order += [index] * len(located)
        what = "point" if len(labels) == 1 else f"{len(labels)} points"
        return self._finish(editor, source, target, state, options, index, [result.index],
                            f"{what.capitalize()} on slice {index}: {kind}", progress, should_cancel)

    def use_segment_on_slice(self, editor: EditorAccess, slice_node, options: InteractiveOptions = InteractiveOptions(),
                             progress=None, should_cancel=None) -> ActionResult:
        """The segment's content on the viewed slice becomes that slice's (mask) prompt; then re-propagate."""
        source = editor.source()
        target, state = self._session_for(editor, source, slice_node, options, "the segment on this slice")
        index = self._slice_at(source, slice_node, state.geometry, (0.0, 0.0))
        current = state.geometry.to_stack(segment_mask_on(target.segmentation_node, target.segment_id, source.image))
        mask = current[index].astype(bool)
        if not mask.any():
            raise InteractionError(f"The segment is empty on slice {index}; paint the structure there first.")
        kind = self._kind(state, index, replacing=True)
        recomputed = [state.session.add_prompt(index, mask=mask).index]
        state.prompts[index] = SlicePrompts(mask=mask)
        state.point_order = [s for s in state.point_order if s != index]
        return self._finish(editor, source, target, state, replace(options, auto_update=True), index, recomputed,
                            f"The segment on slice {index} is its prompt: {kind}", progress, should_cancel)

    def propagate(self, editor: EditorAccess, options: InteractiveOptions = InteractiveOptions(), progress=None,
                  should_cancel=None) -> ActionResult:
        """Propagate (or Update after corrections) the selected segment's session; only what changed is
        recomputed."""
        source = editor.source()
        target, state = self._session_for(editor, source, None, options, "Propagate")
        recomputed = self._propagate(source, state, options, progress, should_cancel)
        self._write(editor, source, target, state, options)
        message = (f"Propagated: {len(recomputed)} slice(s) recomputed." if recomputed
                   else "Nothing to update: every slice is up to date.")
        return ActionResult(message + " Undo (Ctrl+Z) reverts it.", None, recomputed, target.segment_id)

    def remove_point_near(self, editor: EditorAccess, slice_node, xy: Sequence[float], radius: float,
                          options: InteractiveOptions = InteractiveOptions()) -> Optional[ActionResult]:
        """Remove the point of the viewed slice within ``radius`` view pixels of xy (the nearest); None if none."""
        source = editor.source()
        target, state = self._session_for(editor, source, slice_node, options, "removing a point")
        shown = [(index, number, np.hypot(px - xy[0], py - xy[1]))
                 for index, number, px, py, _ in self._points_in_view(source, slice_node, state)]
        near = [entry for entry in shown if entry[2] <= radius]
        if not near:
            return None
        index, number, _ = min(near, key=lambda entry: entry[2])
        return self._remove_point(editor, source, target, state, index, number, options)

    def remove_last_point(self, editor: EditorAccess, options: InteractiveOptions = InteractiveOptions()
                          ) -> Optional[ActionResult]:
        """Remove the point added last to the selected segment's session (Backspace); None if it has none."""
        source = editor.source()
        target, state = self._session_for(editor, source, None, options, "removing a point")
        if not state.point_order:
            return None
        index = state.point_order[-1]
        return self._remove_point(editor, source, target, state, index, len(state.prompts[index].points) - 1, options)

    def points_in_view(self, editor: EditorAccess, slice_node) -> List[Tuple[float, float, int]]:
        """The selected segment's points on the slice the view shows: (x, y) view XY and label."""
        segment_id = editor.selected_segment_id()
        state = self.sessions.get((editor.segmentation_node().GetID(), segment_id)) if segment_id else None
        if state is None:
            return []
        source = editor.source()
        try:
            return [(x, y, label) for _, _, x, y, label in self._points_in_view(source, slice_node, state)]
        except InteractionError:  # a view along another axis shows none of them
            return []

    def session_of(self, editor: EditorAccess) -> Optional[SegmentSession]:
        segment_id = editor.selected_segment_id()
        return self.sessions.get((editor.segmentation_node().GetID(), segment_id)) if segment_id else None

    def end_session(self, editor: EditorAccess) -> None:
        """Reset: the selected segment's session ends (its prompts are forgotten; the segment is kept)."""
        segment_id = editor.selected_segment_id()
        if segment_id:
            self.sessions.pop((editor.segmentation_node().GetID(), segment_id), None)

    def end_sessions(self) -> None:
        """Every session ends (another volume, axis or windowing; scene closed)."""
        self.sessions.clear()
        self._geometry = self._cache = None

    # -- internals ----------------------------------------------------------------------------------

    def _target(self, editor: EditorAccess, new_segment: bool = False) -> WriteTarget:
        node = editor.segmentation_node()
        if node is None:
            raise EditorStateError("Select a segmentation in the Segment Editor first.")
        return WriteTarget(node, None if new_segment else editor.selected_segment_id())

    def _shared_geometry(self, source: SourceImage, view: StackGeometry, options: InteractiveOptions) -> StackGeometry:
        """The sessions' stack orientation if they run along the view's axis on the current volume and
        windowing; otherwise they all end and the view's orientation starts a new context."""
        if self._geometry is not None and self._geometry.slice_axis == view.slice_axis and self._same_context(
                source, self._geometry, options):
            return self._geometry
        self.end_sessions()
        return view

    def _same_context(self, source: SourceImage, geometry: StackGeometry, options: InteractiveOptions) -> bool:
        """True if the sessions' stack still applies (same volume content and windowing)."""
        _, cache = self.logic.stack_for(source, geometry, options.windowing)
        return cache is self._cache

    def _start(self, source: SourceImage, target: WriteTarget, geometry: StackGeometry,
               options: InteractiveOptions) -> SegmentSession:
        stack, cache = self.logic.stack_for(source, geometry, options.windowing)
        self._geometry, self._cache = geometry, cache
        baseline = None
        if target.segment_id is not None:
            current = segment_mask_on(target.segmentation_node, target.segment_id, source.image)
            baseline = np.packbits(current.astype(bool))
        return SegmentSession(Session(self.logic.predictor, stack, cache), geometry, baseline=baseline)

    def _session_for(self, editor, source, slice_node, options, action: str) -> Tuple[WriteTarget, SegmentSession]:
        """The selected segment's session, checked against the view's axis and the current context."""
        target = self._target(editor)
        state = self.sessions.get(target.key) if target.segment_id is not None else None
        if state is None:
            raise InteractionError(
                f"The selected segment has no MedSAM2 session: draw a box around the structure first ({action} "
                "works on the session the box starts)."
            )
        if slice_node is not None:
            view_axis = view_geometry(source, slice_node).slice_axis
            if view_axis != state.geometry.slice_axis:
                raise InteractionError(
                    f"This segment's MedSAM2 session runs on slices along {AXIS_NAMES[state.geometry.slice_axis]} "
                    f"(the {VIEW_NAMES[state.geometry.slice_axis]} view of a standard volume); this view shows "
                    f"slices along {AXIS_NAMES[view_axis]}. Use a view along {AXIS_NAMES[state.geometry.slice_axis]}, "
                    "or draw a new box here to start over along this axis."
                )
        if not self._same_context(source, state.geometry, options):
            self.end_sessions()
            raise InteractionError(
                "The source volume or its intensity windowing changed since the box was drawn, which ends MedSAM2's "
                "sessions. Draw a box to start again."
            )
        return target, state

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

    def _points_in_view(self, source, slice_node, state: SegmentSession):
        """(slice, point number, view x, view y, label) of the points on the slice the view shows."""
        if view_geometry(source, slice_node).slice_axis != state.geometry.slice_axis:
            raise InteractionError("The view is along another axis than the session.")
        index = self._slice_at(source, slice_node, state.geometry, (0.0, 0.0))
        slice_prompts = state.prompts.get(index)
        if slice_prompts is None or not slice_prompts.points:
            return []
        stack_points = [[index, y, x] for x, y in slice_prompts.points]
        ijk = state.geometry.index_coordinates(stack_points, source.shape_ijk)
        xy = transform_points(np.linalg.inv(view_to_index(source, slice_node)), ijk)
        return [(index, number, float(x), float(y), label)
                for number, ((x, y, _), label) in enumerate(zip(xy, slice_prompts.labels))]

    def _remove_point(self, editor, source, target, state: SegmentSession, index: int, number: int,
                      options: InteractiveOptions) -> ActionResult:
        """The slice is prompted again with what remains on it (or loses its prompt if nothing remains)."""
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
        position = [i for i, s in enumerate(state.point_order) if s == index][number]
        del state.point_order[position]
        return self._finish(editor, source, target, state, options, index, recomputed,
                            f"Point removed from slice {index}", None, None)

    def _kind(self, state: SegmentSession, index: int, replacing: bool) -> str:
        """What a prompt on this slice does, said before it is given."""
        if index in state.session.prompted_slices:
            return ("its prompt replaced" if replacing else "added to its prompt") + ", the session recomputed"
        tracked = state.session.tracked_by(index)
        if tracked is not None:
            return f"a correction of the {tracked} tracking"
        return "a new keyframe" if state.propagated else "segmented"

    def _propagate(self, source: SourceImage, state: SegmentSession, options: InteractiveOptions, progress,
                   should_cancel) -> List[int]:
        """Run the session's propagation; Cancelled (raised from should_cancel) stops it, writing nothing."""
        total = _range_length(source.shape_ijk[state.geometry.slice_axis], options)
        recomputed = []
        propagation = state.session.propagate(direction=options.direction, slice_range=options.slice_range)
        try:
            for result in propagation:
                recomputed.append(result.index)
                if progress is not None:
                    progress(len(recomputed), max(total, len(recomputed)))
                if should_cancel is not None and should_cancel():
                    raise Cancelled()
        finally:
            propagation.close()
        state.propagated = True
        return recomputed

    def _finish(self, editor, source, target, state, options, index, recomputed, sentence, progress,
                should_cancel) -> ActionResult:
        """After a prompt: propagate too if asked (auto update), then write and report."""
        if options.auto_update and state.propagated:
            propagated = self._propagate(source, state, options, progress, should_cancel)
            recomputed += [i for i in propagated if i not in recomputed]
        segment_id = self._write(editor, source, target, state, options)
        follow = ("" if options.auto_update and state.propagated
                  else " Click Update to re-propagate from it." if state.propagated
                  else " Propagate to follow it through the volume.")
        return ActionResult(f"{sentence}.{follow}", index, recomputed, segment_id)

    def _write(self, editor: EditorAccess, source: SourceImage, target: WriteTarget, state: SegmentSession,
               options: InteractiveOptions) -> str:
        """Write the session's mask undoably to the target; returns the segment's ID (created if new)."""
        mask = state.geometry.from_stack(state.session.mask())
        computed = np.zeros(source.shape_ijk[state.geometry.slice_axis], dtype=bool)
        computed[sorted(state.session.results)] = True
        index = [slice(None)] * 3
        index[2 - state.geometry.slice_axis] = computed
        index = tuple(index)
        modifier = mask.copy()
        if options.add and state.baseline is not None:
            baseline = np.unpackbits(state.baseline, count=mask.size).reshape(mask.shape)
            modifier[index] |= baseline[index]
        if target.segment_id is not None and not computed.all():
            current = segment_mask_on(target.segmentation_node, target.segment_id, source.image)
            untouched = [slice(None)] * 3
            untouched[2 - state.geometry.slice_axis] = ~computed
            modifier[tuple(untouched)] = current[tuple(untouched)]
        segment_id = editor.write_segment(target.segmentation_node, target.segment_id, labelmap_like(source.image, modifier))
        self.sessions[(target.segmentation_node.GetID(), segment_id)] = state
        target.segmentation_node.GetSegmentation().GetSegment(segment_id).SetTag(SESSION_TAG, session_tag(state))
        return segment_id


def _range_length(num_slices: int, options: InteractiveOptions) -> int:
    first, last = options.slice_range if options.slice_range is not None else (0, num_slices - 1)
    return last - first + 1


def session_tag(state: SegmentSession) -> str:
    """The session's prompts as the JSON stored in the segment's tag (no '|': it separates tags in .seg.nrrd)."""
    document = {"steps": state.session.steps, "stack": {
        "slice_axis": AXIS_NAMES[state.geometry.slice_axis], "row_axis": AXIS_NAMES[state.geometry.row_axis],
        "column_axis": AXIS_NAMES[state.geometry.column_axis], "flip_rows": state.geometry.flip_rows,
        "flip_columns": state.geometry.flip_columns}}
    return json.dumps(document).replace("|", "\\u007c")
