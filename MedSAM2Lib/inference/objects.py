"""Several objects tracked through one stack of slices or video frames.

As the official video predictor keeps a tracking state per object, each object here is its own
:class:`~MedSAM2Lib.inference.session.Session` (its own prompts and memory bank); what they share is the image:
one :class:`~MedSAM2Lib.inference.predictor.FeatureCache`, filled as the objects' propagations advance side by
side, so each slice is encoded once for all of them.

Where one label map is written, objects compete for pixels by the official non-overlap rule
(``_apply_non_overlapping_constraints`` of SAM 2): each pixel keeps the logit of the object that scores highest
there, every other object's logit is capped at -10 (first object on a tie); a pixel then takes the label of the
lowest object id whose logit is above the threshold (with a threshold below -10 several could be).
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..model.medsam2 import NO_OBJECT_LOGIT
from .early_stop import DEFAULT_ABSENT_SLICES
from .predictor import FeatureCache, PromptError, SliceResult, VolumePredictor
from .session import Session

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
        while walks:
            for object_id in list(walks):
                result = next(walks[object_id], None)
                if result is None:
                    del walks[object_id]
                else:
                    yield object_id, result

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
