"""Several objects tracked through one stack of slices or video frames.

As the official video predictor keeps a tracking state per object, each object here is its own
:class:`~MedSAM2Lib.inference.session.Session` (its own prompts and memory bank); what they share is the image:
one :class:`~MedSAM2Lib.inference.predictor.FeatureCache`, filled as the objects' propagations advance side by
side, so each slice is encoded once for all of them.

Where one label map is written, objects compete for pixels by the official non-overlap rule
(``_apply_non_overlapping_constraints`` of SAM 2): each pixel keeps the logit of the object that scores highest
there, every other object's logit is capped at -10 (first object on a tie); a pixel then takes the label of the
lowest object id whose logit is above the threshold (with a threshold below -10 several could be).

Where each object's mask is post-processed first (volumes: its largest 3D component, as a single run does),
the rule decides among the objects whose own mask holds a voxel: it goes to the one with the highest logit
there (the first on a tie). Without post-processing this is the rule above at threshold 0; where masks do not
overlap, each object keeps exactly its own mask (:func:`compose_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Hashable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..model.medsam2 import NO_OBJECT_LOGIT
from .cpu_memory import release_free_memory
from .early_stop import DEFAULT_ABSENT_SLICES, DirectionStop
from .predictor import FeatureCache, PromptError, SliceResult, VolumePredictor
from .session import Session
from .session_file import step_results

if TYPE_CHECKING:
    from ..slicer_glue.geometry import StackGeometry

OBJECT_ERRORS = (ValueError, RuntimeError)  # what ends one object's walk without ending the others' (collected)
NumberedSteps = Sequence[Tuple[int, Dict[str, Any]]]  # (step number in its file, step), as object_steps gives

OVERLAP_CAP = -10.0  # the logit every object but the highest-scoring one is capped at (the reference's value)


def non_overlapping(logits: np.ndarray) -> np.ndarray:
    """(N, ...) per-object logits -> the same with, at each position, every object but the highest-scoring one
    capped at -10 (the first of equal highest ones keeps its value). One object is returned as it is."""
    logits = np.asarray(logits)
    if logits.shape[0] <= 1:
        return logits
    winner = np.argmax(logits, axis=0)
    keep = winner[None] == np.arange(logits.shape[0]).reshape((-1,) + (1,) * (logits.ndim - 1))
    return np.where(keep, logits, np.minimum(logits, np.asarray(OVERLAP_CAP, logits.dtype)))


def label_map(masks: Mapping[int, np.ndarray], shape: Tuple[int, ...]) -> np.ndarray:
    """Per-object boolean masks -> one uint8 label map of ``shape``: each pixel the lowest object id whose mask
    holds it (the official writer paints ids from the highest down), 0 elsewhere."""
    labels = np.zeros(shape, dtype=np.uint8)
    for object_id in sorted(masks, reverse=True):
        labels[masks[object_id]] = object_id
    return labels


def advance_together(walks: Dict[Hashable, Iterator], errors: Optional[Dict[Hashable, Exception]] = None
                     ) -> Iterator[Tuple[Hashable, Any]]:
    """(key, item) from each walk in turn, one item each, until every walk ends, so that walks over one stack
    ask a shared feature cache for about the same slices at about the same time. ``errors`` given: a walk that
    raises one of OBJECT_ERRORS ends there and its error is kept under its key; the others go on."""
    walks = dict(walks)
    while walks:
        for key in list(walks):
            try:
                item = next(walks[key], walks)  # the dict itself: a sentinel no walk yields
            except OBJECT_ERRORS as error:
                if errors is None:
                    raise
                errors[key], item = error, walks
            if item is walks:
                del walks[key]
            else:
                yield key, item


@dataclass
class Region:
    """An object's mask kept as its bounding box, with its logits there (masks are small against the volume)."""

    box: Tuple[slice, ...]
    values: np.ndarray  # bool, the mask inside ``box``
    logits: np.ndarray  # float32, the logits inside ``box``: they decide overlaps

    @classmethod
    def of(cls, mask: np.ndarray, box_logits: Optional[np.ndarray] = None) -> "Region":
        """The region of ``mask``; ``box_logits``: the logits inside its bounding box (None: 0 everywhere)."""
        mask = np.asarray(mask, bool)
        if not mask.any():
            box = tuple(slice(0, 0) for _ in mask.shape)
        else:
            box = tuple(slice(int(occupied[0]), int(occupied[-1]) + 1) for occupied in (
                np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
                for axis in range(mask.ndim)))
        values = mask[box]
        logits = np.zeros(values.shape, np.float32) if box_logits is None else np.asarray(box_logits, np.float32)
        if logits.shape != values.shape:
            raise ValueError(f"The logits of a region are {logits.shape}; its box is {values.shape}.")
        return cls(box, values, logits)

    @property
    def voxels(self) -> int:
        return int(self.values.sum())

    @property
    def slices(self) -> int:
        return int(self.values.any(axis=(1, 2)).sum()) if self.values.ndim == 3 else 0


def compose_labels(shape: Tuple[int, ...], regions: Sequence[Tuple[int, Region]]) -> Tuple[np.ndarray, List[int]]:
    """Label map (uint8, ``shape``) of (label, region) pairs, and per pair the voxels of its mask labelled
    otherwise. A voxel that regions of different labels hold goes to the one with the highest logit there (the
    earlier pair on a tie): the official non-overlap rule among the objects that claim the voxel. Pairs with the
    same label merge."""
    kept = [region.values.copy() for _, region in regions]
    for first in range(len(regions)):
        for second in range(first + 1, len(regions)):
            (label_a, a), (label_b, b) = regions[first], regions[second]
            common = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a.box, b.box))
            if label_a == label_b or any(part.start >= part.stop for part in common):
                continue
            in_a = tuple(slice(part.start - p.start, part.stop - p.start) for part, p in zip(common, a.box))
            in_b = tuple(slice(part.start - q.start, part.stop - q.start) for part, q in zip(common, b.box))
            both = a.values[in_a] & b.values[in_b]
            a_wins = a.logits[in_a] >= b.logits[in_b]
            kept[first][in_a] &= ~(both & ~a_wins)
            kept[second][in_b] &= ~(both & a_wins)
    labels = np.zeros(shape, dtype=np.uint8)
    for (label, region), own in zip(regions, kept):
        labels[region.box][own] = label  # regions of different labels keep disjoint voxels
    return labels, [int((region.values & (labels[region.box] != label)).sum()) for label, region in regions]


@dataclass
class TrackedObject:
    """What one object's session produced on a stack of slices: its mask (post-processed as a single run's) with
    its logits, as a :class:`Region` of the stack, and the session's early stops."""

    region: Region
    stops: List[DirectionStop]

    @classmethod
    def of(cls, session: Session) -> "TrackedObject":
        mask = session.mask()
        box = Region.of(mask).box
        box_logits = np.full(tuple(part.stop - part.start for part in box), NO_OBJECT_LOGIT, np.float32)
        for number, index in enumerate(range(box[0].start, box[0].stop)):
            result = session.results.get(index)
            if result is not None:
                box_logits[number] = result.logits[box[1:]]
        return cls(Region.of(mask, box_logits), [stop for stop in session.stops.values() if stop.early])

    def on_grid(self, stack: StackGeometry, stack_shape: Tuple[int, int, int]) -> Region:
        """The region on the volume's voxel grid, for a (slices, rows, columns) stack of ``stack_shape`` that
        ``stack`` made of it. A tight box maps to a tight box, so the box's logits map as they are."""
        mask = np.zeros(stack_shape, bool)
        mask[self.region.box] = self.region.values
        return Region.of(stack.from_stack(mask), stack.from_stack(self.region.logits))


def segment_objects(predictor: VolumePredictor, volume: np.ndarray, objects: Mapping[Hashable, NumberedSteps],
                    cache: Optional[FeatureCache] = None, on_result=None,
                    errors: Optional[Dict[Hashable, Exception]] = None) -> Dict[Hashable, TrackedObject]:
    """Run each object's numbered steps (:func:`~MedSAM2Lib.inference.session_file.object_steps`) on a session of
    its own over one uint8 (D, H, W) volume, all in one pass (:func:`advance_together`): each slice is encoded
    once for all of them while ``cache`` (default: a FeatureCache of the volume) holds it. ``on_result(key,
    step number, result or None)`` sees each yielded slice and each finished step and may raise to cancel.
    ``errors`` given: an object whose steps fail is left out of the result, its error kept there. The result
    is in the order of ``objects``."""
    cache = cache if cache is not None else FeatureCache(volume)
    tracked: Dict[Hashable, TrackedObject] = {}

    def walk(key: Hashable, steps: NumberedSteps) -> Iterator:
        session = Session(predictor, volume, cache, predictor.early_stop)
        yield from step_results(session, steps)
        release_free_memory()  # its tracking is over: the heap's free pages go before its whole-volume mask comes
        tracked[key] = TrackedObject.of(session)  # the session (its memory of every slice) goes once it is done

    walks = {key: walk(key, steps) for key, steps in objects.items()}
    for key, (number, result) in advance_together(walks, errors):
        if on_result is not None:
            on_result(key, number, result)
    return {key: tracked[key] for key in objects if key in tracked}


class MultiObjectSession:
    """Objects (ids 1..255, as label values) in one uint8 (D, H, W) volume or (D, H, W, 3) RGB frames."""

    def __init__(self, predictor: VolumePredictor, volume: np.ndarray, object_ids: Iterable[int],
                 cache: Optional[FeatureCache] = None, early_stop: Optional[int] = DEFAULT_ABSENT_SLICES) -> None:
        ids = [int(object_id) for object_id in object_ids]
        if not ids:
            raise PromptError("Name at least one object to track.")
        bad = [object_id for object_id in ids if not 1 <= object_id <= 255]
        if bad or len(set(ids)) != len(ids):
            raise PromptError(f"Object ids must be distinct whole numbers 1..255 (label values); got {ids}.")
        self.cache = cache if cache is not None else FeatureCache(volume)
        self.sessions: Dict[int, Session] = {
            object_id: Session(predictor, volume, self.cache, early_stop) for object_id in sorted(ids)}
        self.shape = next(iter(self.sessions.values())).shape

    @property
    def object_ids(self) -> List[int]:
        return list(self.sessions)

    def session(self, object_id: int) -> Session:
        """The object's own session: prompts, corrections, removal, as for one object."""
        try:
            return self.sessions[object_id]
        except KeyError:
            raise PromptError(f"There is no object {object_id}; the objects are {self.object_ids}.") from None

    def propagate(self, direction: str = "both", slice_range: Optional[Tuple[int, int]] = None,
                  object_ids: Optional[Sequence[int]] = None) -> Iterator[Tuple[int, SliceResult]]:
        """(object id, result) for every new output of every object with a prompt (or of ``object_ids``), the
        objects' propagations advanced one slice each in turn, so that they ask the shared cache for the same
        slices at about the same time. Each object's results are those of its session propagated alone."""
        chosen = self.object_ids if object_ids is None else [int(object_id) for object_id in object_ids]
        walks = {object_id: self.session(object_id).propagate(direction, slice_range) for object_id in chosen
                 if object_ids is not None or self.sessions[object_id].prompted_slices}
        if not walks:
            raise PromptError("Give a box, points or a mask for an object before propagating.")
        yield from advance_together(walks)

    def run_steps(self, objects: Mapping[int, NumberedSteps]) -> Iterator[Tuple[int, int, Optional[SliceResult]]]:
        """Run each object's numbered steps (:func:`~MedSAM2Lib.inference.session_file.object_steps`) on its
        session, the objects advanced side by side as in :meth:`propagate`: (object id, step number, result) for
        each slice yielded, result None once a step is done."""
        walks = {object_id: step_results(self.session(object_id), steps) for object_id, steps in objects.items()}
        for object_id, (number, result) in advance_together(walks):
            yield object_id, number, result

    def logits(self, index: int) -> np.ndarray:
        """(N, H, W) float32 logits of slice ``index``, objects in id order; an object without an output there
        scores NO_OBJECT_LOGIT (-1024) everywhere, as the reference fills a missing object."""
        stack = np.full((len(self.sessions),) + tuple(self.shape[1:]), NO_OBJECT_LOGIT, dtype=np.float32)
        for number, session in enumerate(self.sessions.values()):
            result = session.results.get(index)
            if result is not None:
                stack[number] = result.logits
        return stack

    def computed_slices(self) -> List[int]:
        """The slices on which any object has an output."""
        return sorted(set().union(*(session.results.keys() for session in self.sessions.values())))

    def label_map(self, index: int, threshold: float = 0.0) -> np.ndarray:
        """uint8 (H, W) labels of slice ``index``: the non-overlap rule on the objects' logits, then each pixel
        to the lowest id above ``threshold`` (see the module docstring)."""
        merged = non_overlapping(self.logits(index))
        return label_map({object_id: merged[number] > threshold for number, object_id in enumerate(self.sessions)},
                         tuple(self.shape[1:]))
