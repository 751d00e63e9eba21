"""An interactive session: one object tracked through one volume, with prompts on any slice, corrections of
tracked slices and incremental re-propagation.

It follows the official video predictor (``SAM2VideoPredictorNPZ``) as the official CT script drives it, one
tracking state per direction (forward and backward never share memory):

- a prompt on a slice that neither direction has tracked makes it a *conditioning* slice of both directions,
  decoded without memory, like SAM;
- a prompt on a slice tracked in one direction is a *correction* in that direction: decoded with that
  direction's memory and the slice's previous low-res logits (clamped to +-32) as mask input; it stays a
  non-conditioning slice and its output is kept as given on every later propagation;
- a second prompt on a slice before any propagation reached it is decoded with the slice's previous output
  as mask input (points are added to the earlier ones with ``add=True``);
- propagation starts, in each direction, at the first conditioning slice; prompts reach the memory bank
  (their masks binarised) when a propagation starts, not when they are given.

One deliberate difference: a prompt given to a conditioning slice *after* a propagation reached it is dropped
by the official predictor. Here the slice's prompts are one prompt that can grow: the slice is decoded again
from everything given on it, as if given at the start, and both directions are recomputed.

Re-propagation is incremental: only slices whose memory changed are tracked again (a correction on slice s
restarts its direction after s; the other direction is untouched). Each tracked slice keeps what a restart
needs: its memory features (bfloat16, as the reference stores them), object pointer and low-res logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..model.medsam2 import ImageFeatures, MemoryContext, SpatialMemory
from .connected_components import largest_component
from .early_stop import DEFAULT_ABSENT_SLICES, AbsenceWatch, DirectionStop, check_absent_slices
from .predictor import (DIRECTIONS, FeatureCache, PromptError, SliceResult, VolumePredictor, check_box,
                        check_point_labels, check_slice_range, check_volume)

FORWARD, BACKWARD = "forward", "backward"
CORRECTION_LOGIT_CLAMP = 32.0  # previous logits fed back as mask input are clamped to +-32 (as the reference)


@dataclass(frozen=True)
class SlicePrompt:
    """Everything given on one slice: a box and/or points, or a mask. Pixels of the slice, x = column."""

    box: Optional[Tuple[float, float, float, float]] = None
    points: Tuple[Tuple[float, float], ...] = ()
    labels: Tuple[int, ...] = ()  # 1 object, 0 background, one per point
    mask: Optional[np.ndarray] = field(default=None, compare=False)  # (H, W) bool

    def extended(self, other: "SlicePrompt") -> "SlicePrompt":
        """``other``'s points added to these (a box in ``other`` replaces this one's, a mask replaces all)."""
        if other.mask is not None:
            return other
        box = other.box if other.box is not None else self.box
        return SlicePrompt(box, self.points + other.points, self.labels + other.labels)


@dataclass(eq=False)  # compared by identity: a re-decoded slice is a new output
class _Output:
    """A slice's decoded output as the tracking states keep it."""

    low_res: torch.Tensor  # (1, 1, 4s, 4s) logits, small holes filled
    obj_ptr: torch.Tensor  # (1, C)
    object_score: torch.Tensor  # (1, 1)
    memory: Optional[torch.Tensor] = None  # (1, M, s, s) bfloat16; None until a propagation encodes it

    def spatial_memory(self) -> SpatialMemory:
        return SpatialMemory(self.memory, self.obj_ptr)


class _Direction:
    """One direction's tracking state: what the official predictor keeps in one inference state."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sign = 1 if name == FORWARD else -1
        self.outputs: Dict[int, _Output] = {}  # non-conditioning slices: tracked, and committed corrections
        self.corrections: Dict[int, SlicePrompt] = {}  # prompts of corrected slices (committed or pending)
        self.pending: Dict[int, _Output] = {}  # corrections not yet in the memory bank
        self.conditioning: Dict[int, _Output] = {}  # the conditioning outputs this direction's memory holds
        self.valid: Set[int] = set()  # tracked slices whose output is current

    def before(self, a: int, b: int) -> bool:
        """Slice a comes before slice b in this direction's order."""
        return (a - b) * self.sign < 0

    def invalidate_after(self, index: int) -> None:
        self.valid = {i for i in self.valid if self.before(i, index)}

    def order(self, start: int, first: int, last: int) -> range:
        return range(start, last + 1) if self.sign > 0 else range(start, first - 1, -1)


class Session:
    """One object in one uint8 (D, H, W) volume, or in (D, H, W, 3) RGB video frames. See the module docstring for
    the semantics."""

    def __init__(self, predictor: VolumePredictor, volume: np.ndarray, cache: Optional[FeatureCache] = None,
                 early_stop: Optional[int] = DEFAULT_ABSENT_SLICES) -> None:
        """early_stop: a direction ends after this many slices in a row on which the model sees no object
        (None: track to the end of the volume or range)."""
        check_volume(volume)
        check_absent_slices(early_stop)
        self.early_stop = early_stop
        self.stops: Dict[str, DirectionStop] = {}  # direction -> where and why its last propagation ended
        if cache is not None and cache.volume is not volume:
            raise ValueError("The feature cache belongs to another volume.")
        self.predictor = predictor
        self.volume = volume
        self.shape: Tuple[int, int, int] = volume.shape[:3]  # (D, H, W); video frames have a colour axis after
        self.cache = cache if cache is not None else FeatureCache(volume)
        self._conditioning: Dict[int, _Output] = {}
        self._conditioning_prompts: Dict[int, SlicePrompt] = {}
        self._reached: Set[int] = set()  # conditioning slices a propagation has reached
        self._directions = {FORWARD: _Direction(FORWARD), BACKWARD: _Direction(BACKWARD)}
        self._latest: Dict[int, torch.Tensor] = {}  # slice -> latest low-res logits (1, 1, 4s, 4s)
        self._object_scores: Dict[int, float] = {}
        self._steps: List[dict] = []

    # -- what the session holds ------------------------------------------------------------------------

    @property
    def prompted_slices(self) -> List[int]:
        corrected = set().union(*(d.corrections for d in self._directions.values()))
        return sorted(set(self._conditioning_prompts) | corrected)

    def tracked_by(self, index: int) -> Optional[str]:
        """The direction that tracked a slice ("forward" or "backward"), None for conditioning or untracked
        slices."""
        for direction in self._directions.values():
            if index in direction.outputs or index in direction.pending:
                return direction.name
        return None

    @property
    def results(self) -> "Mapping[int, SliceResult]":
        """The latest output of every slice computed so far (slice-size logits made on access)."""
        return _Results(self)

    @property
    def steps(self) -> List[dict]:
        """What was done, as steps of a session file (masks as arrays)."""
        return [dict(step) for step in self._steps]

    def nbytes(self) -> int:
        """Bytes of the tensors the session holds (decoded outputs, memories, logits), not counting the image
        features of its cache, which sessions on one stack share."""
        outputs = [*self._conditioning.values()]
        for direction in self._directions.values():
            outputs += [*direction.outputs.values(), *direction.pending.values(), *direction.conditioning.values()]
        tensors = {id(tensor): tensor for output in outputs
                   for tensor in (output.low_res, output.obj_ptr, output.object_score, output.memory)
                   if tensor is not None}
        tensors.update((id(tensor), tensor) for tensor in self._latest.values())
        return sum(tensor.nbytes for tensor in tensors.values())

    def mask(self) -> np.ndarray:
        """uint8 (D, H, W): each slice's latest output, then (by default) its largest 26-connected component."""
        mask = np.zeros(self.shape, dtype=np.uint8)
        for index, result in self.results.items():
            mask[index] = result.mask
        return largest_component(mask) if self.predictor.keep_largest_component else mask

    # -- prompts ---------------------------------------------------------------------------------------

    def add_prompt(
        self,
        slice_index: int,
        box: Optional[Sequence[float]] = None,
        points: Optional[Sequence[Sequence[float]]] = None,
        labels: Optional[Sequence[int]] = None,
        mask: Optional[np.ndarray] = None,
        add: bool = False,
    ) -> SliceResult:
        """Give a box and/or points (or a mask) on a slice; returns that slice's new output at once.

        add: the points join the slice's earlier points (official ``clear_old_points=False``); otherwise they
        replace them. Routing (conditioning slice, correction, new conditioning slice): module docstring.
        """
        prompt = check_prompt(self.shape, slice_index, box, points, labels, mask)
        self._steps.append(_prompt_step(slice_index, prompt, add))
        direction = self._directions.get(self.tracked_by(slice_index) or "")
        if direction is not None:
            output = self._correct(direction, slice_index, prompt, add)
        else:
            output = self._condition(slice_index, prompt, add)
        return self._publish(slice_index, output)

    def remove_prompt(self, slice_index: int) -> None:
        """Forget what was given on a slice; it is tracked like any other slice on the next propagation."""
        self._steps.append({"slice": slice_index, "remove": True})
        if slice_index in self._conditioning_prompts:
            del self._conditioning_prompts[slice_index], self._conditioning[slice_index]
            self._reached.discard(slice_index)
            if not self._conditioning_prompts:
                self._clear()
            return
        for direction in self._directions.values():
            if slice_index in direction.corrections:
                del direction.corrections[slice_index]
                direction.pending.pop(slice_index, None)
                direction.outputs.pop(slice_index, None)
                direction.invalidate_after(slice_index)
                return
        raise PromptError(f"Slice {slice_index} has no prompt to remove.")

    def reset(self) -> None:
        """Forget every prompt and result."""
        self._clear()
        self._steps.clear()

    # -- propagation -----------------------------------------------------------------------------------

    def propagate(self, direction: str = "both", slice_range: Optional[Tuple[int, int]] = None) -> Iterator[SliceResult]:
        """Track from the first conditioning slice, forward then backward; yield each slice whose output is
        new (tracked now, or a prompted slice entering the memory bank now), in tracking order.

        slice_range: inclusive (first, last) slices to stay within; it must include the first conditioning
        slice. Stop iterating to cancel: what was computed so far is kept and reused.
        """
        names, start, first, last = self._walk(direction, slice_range)
        step = {"propagate": direction}
        if slice_range is not None:
            step["range"] = [first, last]
        self._steps.append(step)
        yielded: Set[int] = set()
        for name in names:
            for result in self._track(self._directions[name], start, first, last):
                if result.index not in yielded:
                    yielded.add(result.index)
                    yield result

    def planned(self, direction: str = "both", slice_range: Optional[Tuple[int, int]] = None) -> Dict[str, List[int]]:
        """The slices :meth:`propagate` would yield now, per direction in tracking order, if no direction stopped
        early; nothing is computed (a progress total). It follows :meth:`_track`."""
        names, start, first, last = self._walk(direction, slice_range)
        plan: Dict[str, List[int]] = {}
        planned: Set[int] = set()
        for name in names:
            state = self._directions[name]
            new, valid = self._commit_effect(state)
            prompted = set(self._conditioning) | set(state.corrections)
            plan[name] = [i for i in state.order(start, first, last) if i not in planned
                          and (i in new if i in prompted else i not in valid)]
            planned.update(plan[name])
        return plan

    def _walk(self, direction: str, slice_range: Optional[Tuple[int, int]]) -> Tuple[List[str], int, int, int]:
        """The directions a propagation walks, its start (the first conditioning slice) and its inclusive range;
        PromptError saying what is wrong."""
        if direction not in DIRECTIONS:
            raise PromptError(f"Unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}.")
        if not self._conditioning:
            raise PromptError("Give a box, points or a mask on a slice before propagating.")
        num_slices = self.volume.shape[0]
        start = min(self._conditioning)
        first, last = slice_range if slice_range is not None else (0, num_slices - 1)
        check_slice_range((first, last), num_slices, start, "the first prompted slice")
        return ([FORWARD, BACKWARD] if direction == "both" else [direction]), start, first, last

    # -- internals: decoding prompts ---------------------------------------------------------------------

    def _condition(self, index: int, prompt: SlicePrompt, add: bool) -> _Output:
        """A conditioning slice: decoded without memory."""
        previous = self._conditioning.get(index)
        reached = index in self._reached
        if previous is not None and add:
            prompt = self._conditioning_prompts[index].extended(prompt)
        # Before a propagation reached it, a slice prompted again is decoded with its previous output as mask
        # input (the reference); after, from its whole prompt as if given at the start (our difference).
        mask_input = previous.low_res if previous is not None and not reached else None
        output = self._decode(index, prompt, mask_input, memory=None)
        self._conditioning_prompts[index] = prompt
        self._conditioning[index] = output
        self._reached.discard(index)
        return output

    def _correct(self, direction: _Direction, index: int, prompt: SlicePrompt, add: bool) -> _Output:
        """A correction of a slice tracked in one direction: decoded with that direction's memory."""
        if add and index in direction.corrections:
            prompt = direction.corrections[index].extended(prompt)
        previous = direction.pending[index] if index in direction.pending else direction.outputs[index]
        output = self._decode(index, prompt, previous.low_res, memory=self._memory(direction, index))
        direction.corrections[index] = prompt
        direction.pending[index] = output
        return output

    def _decode(self, index: int, prompt: SlicePrompt, mask_input: Optional[torch.Tensor],
                memory: Optional[MemoryContext]) -> _Output:
        predictor = self.predictor
        features = self._features(index)
        with predictor.compute():
            if prompt.mask is not None:
                output = predictor.model.mask_as_output(features, predictor.model_mask(prompt.mask))
            else:
                if mask_input is not None:
                    mask_input = mask_input.clamp(-CORRECTION_LOGIT_CLAMP, CORRECTION_LOGIT_CLAMP)
                points = predictor.model_points(prompt.box, prompt.points, prompt.labels, self.shape[1:])
                output = predictor.model.segment(features, points, mask_input, memory)
        return _Output(predictor.filled(output.low_res_logits), output.obj_ptr, output.object_score_logits)

    # -- internals: tracking ---------------------------------------------------------------------------

    def _track(self, direction: _Direction, start: int, first: int, last: int) -> Iterator[SliceResult]:
        """Yield the slices of one direction whose output is new; every slice's object score (new or not)
        feeds the early stop, so a repeated propagation stops where a full recomputation would."""
        new = self._commit(direction)
        watch = AbsenceWatch(direction.name, self.early_stop)
        indices = direction.order(start, first, last)
        for position, index in enumerate(indices):
            result = None
            prompted = index in direction.conditioning or index in direction.corrections
            if index in direction.conditioning:
                self._reached.add(index)
                output = direction.conditioning[index]
                if index in new:
                    result = self._publish(index, output)
            elif index in direction.corrections:
                output = direction.outputs[index]
                if index in new:
                    result = self._publish(index, output)
            elif index in direction.valid:
                output = direction.outputs[index]
            else:
                ahead = [other for other in indices[position + 1 : position + self.predictor.encode_batch]
                         if not (other in direction.valid or other in direction.conditioning
                                 or other in direction.corrections)]
                output = direction.outputs[index] = self._tracked(direction, index, ahead)
                direction.valid.add(index)  # later slices are already invalid: invalidation always cuts a suffix
                result = self._publish(index, output)
            stop = watch.update(index, float(output.object_score.float()[0, 0]), index == indices[-1], prompted)
            if stop is not None:
                self.stops[direction.name] = stop
            if result is not None:
                result.stop = stop
                yield result
            if stop is not None:
                return

    def _tracked(self, direction: _Direction, index: int, ahead: Sequence[int]) -> _Output:
        """Track one slice with the direction's memory bank (``ahead``: the next slices to track, which may be
        encoded in one batch with this one)."""
        features = self.predictor.encode(self.volume, index, self.cache, ahead)
        predictor = self.predictor
        with predictor.compute():
            output = predictor.model.segment(features, memory=self._memory(direction, index))
            memory = predictor.model.encode_memory(
                features, output.low_res_logits, output.object_score_logits, binarize=False,
                candidates=output.candidates,
            )
        return _Output(predictor.filled(output.low_res_logits), output.obj_ptr, output.object_score_logits, memory)

    def _commit(self, direction: _Direction) -> Set[int]:
        """Put prompts given since this direction's last propagation into its memory bank (as the reference's
        pre-flight step: their masks binarised); returns the slices whose output is new to it."""
        new, direction.valid = self._commit_effect(direction)
        if direction.conditioning != self._conditioning:
            for index, output in self._conditioning.items():
                if output.memory is None:
                    output.memory = self._prompt_memory(index, output)
            direction.conditioning = dict(self._conditioning)
        for index, output in sorted(direction.pending.items(), key=lambda item: item[0] * direction.sign):
            output.memory = self._prompt_memory(index, output)
            direction.outputs[index] = output
        direction.pending.clear()
        return new

    def _commit_effect(self, direction: _Direction) -> Tuple[Set[int], Set[int]]:
        """What committing a direction's new prompts does to its outputs, computing nothing: the slices whose
        output becomes new to it, and its tracked slices still valid after (:meth:`_commit` applies it,
        :meth:`planned` plans with it)."""
        new = set(direction.pending)
        valid = set(direction.valid)
        if direction.conditioning != self._conditioning:
            new |= {i for i, output in self._conditioning.items() if direction.conditioning.get(i) is not output}
            valid.clear()  # every tracked slice attends to every conditioning slice
        for index in direction.pending:  # a correction invalidates itself and the slices after it
            valid = {i for i in valid if direction.before(i, index)}
        return new, valid

    def _prompt_memory(self, index: int, output: _Output) -> torch.Tensor:
        with self.predictor.compute():
            return self.predictor.model.encode_memory(self._features(index), output.low_res, output.object_score,
                                                      binarize=self.predictor.binarize_prompt_memory)

    def _memory(self, direction: _Direction, index: int) -> MemoryContext:
        """The memory bank a slice attends to in one direction (the reference's choice of frames):
        every conditioning slice, the num_maskmem-1 slices just before it, and object pointers of the
        conditioning slices not ahead of it plus up to max_obj_ptrs-1 slices just before it."""
        config = self.predictor.model.config
        num_slices = self.volume.shape[0]
        sign = direction.sign
        conditioning = sorted(direction.conditioning.items())
        memories = [(config.num_maskmem - 1, output.spatial_memory()) for _, output in conditioning]
        for distance in range(config.num_maskmem - 1, 0, -1):
            output = direction.outputs.get(index - sign * distance)
            if output is not None:
                memories.append((distance - 1, output.spatial_memory()))
        pointers = [((index - slice_) * sign, output.obj_ptr) for slice_, output in conditioning
                    if not direction.before(index, slice_)]
        for distance in range(1, min(num_slices, config.max_obj_ptrs)):
            previous = index - sign * distance
            if not 0 <= previous < num_slices:
                break
            if previous in direction.outputs:
                pointers.append((distance, direction.outputs[previous].obj_ptr))
        return MemoryContext(memories, pointers, num_slices)

    # -- internals: bookkeeping ------------------------------------------------------------------------

    def _features(self, index: int) -> ImageFeatures:
        return self.predictor.encode(self.volume, index, self.cache)

    def _publish(self, index: int, output: _Output) -> SliceResult:
        self._latest[index] = output.low_res
        self._object_scores[index] = float(output.object_score.float()[0, 0])
        return self._result(index)

    def _result(self, index: int) -> SliceResult:
        return self.predictor.slice_result(index, self._latest[index], self._object_scores[index],
                                           self.shape[1:])

    def _clear(self) -> None:
        self.stops.clear()
        self._conditioning.clear()
        self._conditioning_prompts.clear()
        self._reached.clear()
        self._directions = {FORWARD: _Direction(FORWARD), BACKWARD: _Direction(BACKWARD)}
        self._latest.clear()
        self._object_scores.clear()


def check_prompt(volume_shape: Tuple[int, int, int], index: int, box=None, points=None, labels=None,
                 mask=None) -> SlicePrompt:
    """What is given on a slice as a :class:`SlicePrompt`, or :class:`PromptError` saying what is wrong."""
    num_slices, height, width = volume_shape
    if not isinstance(index, (int, np.integer)) or not 0 <= index < num_slices:
        raise PromptError(f"Slice {index} is outside the volume, which has slices 0..{num_slices - 1}.")
    if mask is not None:
        if box is not None or points is not None:
            raise PromptError("A mask prompt replaces the box and points of its slice: give one or the other.")
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            raise PromptError(f"The mask on slice {index} has shape {mask.shape}; the slices are {height} x {width}.")
        return SlicePrompt(mask=mask != 0)
    if box is None and points is None:
        raise PromptError(f"Give a box, points or a mask on slice {index}.")
    checked_box = check_box(box, (height, width)) if box is not None else None
    checked_points: Tuple[Tuple[float, float], ...] = ()
    checked_labels: Tuple[int, ...] = ()
    if points is not None or labels is not None:
        checked_points, checked_labels = _checked_points(index, points, labels, height, width)
    if checked_box is None and not checked_points:
        raise PromptError(f"Give a box, points or a mask on slice {index}.")
    return SlicePrompt(checked_box, checked_points, checked_labels)


class _Results(Mapping):
    """Read-only view of a session's latest output per slice; slice-size logits are made on access."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def __getitem__(self, index: int) -> SliceResult:
        if index not in self._session._latest:
            raise KeyError(index)
        return self._session._result(index)

    def __iter__(self):
        return iter(sorted(self._session._latest))

    def __len__(self) -> int:
        return len(self._session._latest)


def _checked_points(index: int, points, labels, height: int, width: int):
    try:
        values = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        label_values = list(labels)
    except (TypeError, ValueError):
        values, label_values = None, None
    if values is None or len(label_values) != len(values):
        raise PromptError(
            f"Points on slice {index} need one label each (1 object, 0 background): got points {points!r} and "
            f"labels {labels!r}."
        )
    for x, y in values:
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
            raise PromptError(
                f"The point ({x:g}, {y:g}) on slice {index} is outside the slice, whose pixels span x 0..{width} and "
                f"y 0..{height}."
            )
    return tuple((float(x), float(y)) for x, y in values), check_point_labels(label_values)


def _prompt_step(index: int, prompt: SlicePrompt, add: bool) -> dict:
    step: dict = {"slice": int(index)}
    if prompt.mask is not None:
        step["mask"] = prompt.mask
    if prompt.box is not None:
        step["box"] = list(prompt.box)
    if prompt.points:
        step["points"] = [list(point) for point in prompt.points]
        step["labels"] = list(prompt.labels)
    if add:
        step["add"] = True
    return step
