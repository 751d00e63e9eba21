"""Volume predictor: a box on one slice of a uint8 (D, H, W) volume -> a mask on every slice it reaches.

It reproduces what the official MedSAM2 CT script does (add the box, propagate forward, reset, add the box
again, propagate backward) with three differences that do not change the result:

- each slice is encoded once (the prompted slice serves both directions; the official code encodes D+2 times);
- slices are resized and normalised one at a time (the official code holds the whole volume in float64);
- small-hole filling runs on every device with our own connected components (the official code needs a
  CUDA extension and skips it on CPU); ``fill_holes=False`` reproduces its CPU output.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Deque, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..model.medsam2 import ImageFeatures, MedSAM2, SliceOutput, SpatialMemory
from ..model.precision import autocast, resolve_precision
from .connected_components import fill_small_holes, largest_component
from .early_stop import AbsenceWatch, DirectionStop, check_absent_slices
from .preprocessing import model_input

DIRECTIONS = ("both", "forward", "backward")


class PromptError(ValueError):
    """The volume, slice, box, direction or range given to the predictor cannot be used."""


class Cancelled(Exception):
    """Raised by a progress callback to stop a propagation; nothing partial is returned."""


@dataclass
class SliceResult:
    index: int  # slice index along the volume's first axis
    logits: np.ndarray  # (H, W) float32 mask logits at slice resolution
    object_score: float  # > 0: the model sees the object on this slice
    stop: Optional[DirectionStop] = None  # set on the last slice a propagation direction computes

    @property
    def mask(self) -> np.ndarray:
        return self.logits > 0


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit choice must be available."""
    mps_available = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps_available}
    if name not in available:
        raise ValueError(f"Unknown device {name!r}; choose auto, cpu, cuda or mps.")
    if not available[name]:
        raise ValueError(f"The device {name!r} is not available in this PyTorch installation; use auto or cpu.")
    return torch.device(name)


def planned_slices(num_slices: int, key_slice: int, direction: str, slice_range: Optional[Tuple[int, int]]) -> List[int]:
    """The slice indices a propagation yields, in order: key slice, then forward, then backward."""
    first, last = slice_range if slice_range is not None else (0, num_slices - 1)
    order = [key_slice]
    if direction in ("both", "forward"):
        order += range(key_slice + 1, last + 1)
    if direction in ("both", "backward"):
        order += range(key_slice - 1, first - 1, -1)
    return order


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (Linux /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class FeatureCache:
    """Image features of one volume's slices, kept across propagations: several prompts on one scan, or a
    preview followed by a propagation, encode each slice once. Least recently used slices are dropped beyond
    ``max_slices`` or, when that is None, beyond ``max_bytes`` (default: a quarter of the available memory, at
    most 512 MiB: 128 slices of the t512 model in float32, 256 in bfloat16)."""

    DEFAULT_MAX_BYTES = 512 * 2**20

    def __init__(self, volume: np.ndarray, max_slices: Optional[int] = None, max_bytes: Optional[int] = None) -> None:
        self.volume = volume
        self.max_slices = max_slices
        if max_bytes is None:
            available = available_memory()
            max_bytes = min(self.DEFAULT_MAX_BYTES, available // 4) if available else self.DEFAULT_MAX_BYTES
        self.max_bytes = max_bytes
        self._bytes = 0
        self._features: "OrderedDict[int, ImageFeatures]" = OrderedDict()

    def get(self, index: int) -> Optional[ImageFeatures]:
        features = self._features.get(index)
        if features is not None:
            self._features.move_to_end(index)
        return features

    def put(self, index: int, features: ImageFeatures) -> None:
        self._features[index] = features
        self._bytes += _nbytes(features)
        while len(self._features) > 1 and (
            len(self._features) > self.max_slices if self.max_slices is not None else self._bytes > self.max_bytes
        ):
            self._bytes -= _nbytes(self._features.popitem(last=False)[1])


def _nbytes(features: ImageFeatures) -> int:
    return sum(tensor.nbytes for tensor in (features.embedding, *features.high_res))


class _MemoryBank:
    """What one propagation direction remembers: the prompted slice and the most recent tracked slices."""

    def __init__(self, key_slice: int, key_memory: SpatialMemory, num_maskmem: int, max_pointers: int):
        self.key_slice = key_slice
        self.key_memory = key_memory
        self.num_maskmem = num_maskmem
        self.max_pointers = max_pointers
        self.recent: Deque[Tuple[int, SpatialMemory]] = deque(maxlen=max(num_maskmem - 1, max_pointers - 1, 1))

    def add(self, index: int, memory: SpatialMemory) -> None:
        self.recent.append((index, memory))

    def memories(self, index: int) -> List[Tuple[int, SpatialMemory]]:
        """(temporal slot, memory) pairs: the prompted slice in the last slot, then the slices at most
        num_maskmem-1 away, oldest first, in slot distance-1."""
        selected = [(self.num_maskmem - 1, self.key_memory)]
        for previous, memory in self.recent:
            distance = abs(index - previous)
            if distance < self.num_maskmem:
                selected.append((distance - 1, memory))
        return selected

    def pointers(self, index: int) -> List[Tuple[int, torch.Tensor]]:
        """(temporal distance, object pointer): the prompted slice, then tracked slices nearest first."""
        selected = [(abs(index - self.key_slice), self.key_memory.obj_ptr)]
        for previous, memory in reversed(self.recent):
            distance = abs(index - previous)
            if distance < self.max_pointers:
                selected.append((distance, memory.obj_ptr))
        return selected


class VolumePredictor:
    """Runs a loaded :class:`MedSAM2` over volumes. One instance can serve many volumes and prompts."""

    def __init__(
        self,
        model: MedSAM2,
        fill_holes: bool = True,
        keep_largest_component: bool = True,
        precision: str = "float32",
        early_stop: Optional[int] = None,
    ) -> None:
        """precision: ``float32`` (exact), ``bfloat16`` (fast) or ``auto`` (see :mod:`..model.precision`);
        early_stop: end each direction after this many slices in a row without the object (None: never)."""
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.fill_holes = fill_holes
        self.keep_largest_component = keep_largest_component
        self.dtype = resolve_precision(precision, self.device)
        check_absent_slices(early_stop)
        self.early_stop = early_stop
        self.encoder_calls = 0

    # -- public API -----------------------------------------------------------------------------------

    def propagate(
        self,
        volume: np.ndarray,
        key_slice: int,
        box: Sequence[float],
        direction: str = "both",
        slice_range: Optional[Tuple[int, int]] = None,
        cache: Optional[FeatureCache] = None,
    ) -> Iterator[SliceResult]:
        """Yield one :class:`SliceResult` per slice: the key slice, then forward, then backward.

        volume: uint8 (D, H, W); box: x0, y0, x1, y1 in pixels of a slice (x = column, y = row, 0..W and
        0..H); slice_range: inclusive (first, last) slices to stay within; cache: features of this volume
        from earlier calls. Stop iterating to cancel.
        """
        validate_prompt(volume, key_slice, box, direction, slice_range)
        if cache is not None and cache.volume is not volume:
            raise ValueError("The feature cache belongs to another volume.")
        num_slices = volume.shape[0]
        config = self.model.config
        max_pointers = min(num_slices, config.max_obj_ptrs)

        key_features = self._encode(volume, key_slice, cache)
        with self._compute():
            key_output = self.model.segment_with_box(key_features, self._model_box(box, volume.shape[1:]))
            key_logits = self._filled(key_output.low_res_logits)
        yield self._result(key_slice, key_logits, key_output, volume.shape[1:])
        # After the yield: a preview (the key slice only) never runs the memory encoder.
        with self._compute():
            key_memory = SpatialMemory(
                self.model.encode_memory(key_features, key_logits, key_output.object_score_logits, binarize=True),
                key_output.obj_ptr,
            )

        order = planned_slices(num_slices, key_slice, direction, slice_range)[1:]
        forward = [index for index in order if index > key_slice]
        backward = [index for index in order if index < key_slice]
        for name, indices in (("forward", forward), ("backward", backward)):
            bank = _MemoryBank(key_slice, key_memory, config.num_maskmem, max_pointers)
            watch = AbsenceWatch(name, self.early_stop)
            for index in indices:
                features = self._encode(volume, index, cache)
                with self._compute():
                    output = self.model.track(features, bank.memories(index), bank.pointers(index), num_slices)
                    memory = self.model.encode_memory(
                        features, output.low_res_logits, output.object_score_logits, binarize=False
                    )
                    bank.add(index, SpatialMemory(memory, output.obj_ptr))
                    logits = self._filled(output.low_res_logits)
                result = self._result(index, logits, output, volume.shape[1:])
                result.stop = watch.update(index, result.object_score, last=index == indices[-1])
                yield result
                if result.stop is not None:
                    break

    def segment_slice(
        self, volume: np.ndarray, key_slice: int, box: Sequence[float], cache: Optional[FeatureCache] = None
    ) -> SliceResult:
        """Preview: the box's slice only."""
        return next(self.propagate(volume, key_slice, box, cache=cache))

    def segment(
        self,
        volume: np.ndarray,
        key_slice: int,
        box: Sequence[float],
        direction: str = "both",
        slice_range: Optional[Tuple[int, int]] = None,
        on_slice: Optional[Callable[[SliceResult], None]] = None,
        cache: Optional[FeatureCache] = None,
    ) -> np.ndarray:
        """Whole-volume uint8 (D, H, W) mask: union of every yielded slice, then (by default) its largest
        26-connected component. ``on_slice`` sees each result and may raise :class:`Cancelled`."""
        mask = np.zeros(volume.shape, dtype=np.uint8)
        for result in self.propagate(volume, key_slice, box, direction, slice_range, cache):
            mask[result.index] |= result.mask
            if on_slice is not None:
                on_slice(result)
        return largest_component(mask) if self.keep_largest_component else mask

    # -- internals ------------------------------------------------------------------------------------

    def _compute(self):
        """Inference mode (and autocast in bfloat16 mode) around each step, never across a ``yield``."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.dtype))
        return stack

    def _encode(self, volume: np.ndarray, index: int, cache: Optional[FeatureCache]) -> ImageFeatures:
        features = cache.get(index) if cache is not None else None
        if features is None:
            image = model_input(volume[index], self.model.config.image_size).to(self.device)
            with self._compute():
                features = self.model.encode_image(image.unsqueeze(0))
            self.encoder_calls += 1
            if cache is not None:
                cache.put(index, features)
        return features

    def _model_box(self, box: Sequence[float], slice_shape: Tuple[int, int]) -> torch.Tensor:
        """Slice pixels -> model-input pixels: each axis scaled to image_size (anisotropic, as the reference)."""
        height, width = slice_shape
        corners = torch.tensor(box, dtype=torch.float32).reshape(2, 2) / torch.tensor([width, height])
        return (corners * self.model.config.image_size).reshape(1, 4).to(self.device)

    def _filled(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        if not self.fill_holes:
            return low_res_logits
        filled = fill_small_holes(low_res_logits[0, 0].float().cpu().numpy(), self.model.config.fill_hole_area)
        return torch.from_numpy(filled).to(low_res_logits.device)[None, None]

    def _result(self, index: int, low_res_logits: torch.Tensor, output: SliceOutput, slice_shape) -> SliceResult:
        with self._compute():
            logits = F.interpolate(low_res_logits.float(), size=tuple(slice_shape), mode="bilinear", align_corners=False)
        return SliceResult(index, logits[0, 0].cpu().numpy(), float(output.object_score_logits.float()[0, 0]))


def validate_prompt(
    volume: np.ndarray,
    key_slice: int,
    box: Sequence[float],
    direction: str = "both",
    slice_range: Optional[Tuple[int, int]] = None,
) -> None:
    """Raise :class:`PromptError` with a sentence saying what is wrong with a predictor call."""
    if not isinstance(volume, np.ndarray) or volume.ndim != 3:
        shape = getattr(volume, "shape", None)
        raise PromptError(f"MedSAM2 needs a 3D volume (slices, rows, columns); got an array of shape {shape}.")
    if volume.dtype != np.uint8:
        raise PromptError(f"The volume must be windowed to uint8 first; got {volume.dtype}.")
    num_slices, height, width = volume.shape
    if min(volume.shape) < 1:
        raise PromptError(f"The volume is empty (shape {volume.shape}).")
    if not 0 <= key_slice < num_slices:
        raise PromptError(f"Slice {key_slice} is outside the volume, which has slices 0..{num_slices - 1}.")
    values = np.asarray(box, dtype=np.float64).ravel()
    if values.size != 4 or not np.all(np.isfinite(values)):
        raise PromptError(f"The box must be four numbers x0 y0 x1 y1; got {box!r}.")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise PromptError(
            f"The box ({x0:g}, {y0:g}) - ({x1:g}, {y1:g}) has no area: x1 must exceed x0 and y1 must exceed y0."
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise PromptError(
            f"The box ({x0:g}, {y0:g}) - ({x1:g}, {y1:g}) reaches outside the slice, whose pixels span "
            f"x 0..{width} and y 0..{height}."
        )
    if direction not in DIRECTIONS:
        raise PromptError(f"Unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}.")
    if slice_range is not None:
        first, last = slice_range
        if not 0 <= first <= key_slice <= last < num_slices:
            raise PromptError(
                f"The slice range {first}..{last} must lie within 0..{num_slices - 1} and include the box's "
                f"slice {key_slice}."
            )
