"""Volume predictor: runs the network over a uint8 (D, H, W) volume. A box on one slice -> a mask on every
slice it reaches is the one-box case of a :class:`~MedSAM2Lib.inference.session.Session`, which holds the
tracking itself (prompts on any slice, corrections, re-propagation).

It reproduces what the official MedSAM2 CT script does (add the box, propagate forward, reset, add the box
again, propagate backward) with three differences that do not change the result:

- each slice is encoded once (the prompted slice serves both directions; the official code encodes D+2 times);
- slices are resized and normalised one at a time (the official code holds the whole volume in float64);
- small-hole filling runs on every device with our own connected components (the official code needs a
  CUDA extension and skips it on CPU); ``fill_holes=False`` reproduces its CPU output.
"""

from __future__ import annotations

import contextlib
import numbers
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..model.medsam2 import ImageFeatures, MedSAM2
from .connected_components import fill_small_holes, largest_component
from .cpu_memory import keep_freed_memory_for_reuse
from ..model.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT
from ..model.precision import autocast, resolve_precision, with_bfloat16_weights
from .early_stop import DIRECTIONS, DirectionStop, check_absent_slices
from .preprocessing import model_input


class PromptError(ValueError):
    """The volume, slice, box, direction or range given to the predictor cannot be used."""


def check_point_labels(labels: Sequence[object]) -> Tuple[int, ...]:
    """Point labels as ints, each exactly 1 (object) or 0 (background), or :class:`PromptError`: 0.9, True or "1"
    are refused, not truncated to a label the user did not give."""
    if not all(isinstance(label, numbers.Real) and not isinstance(label, bool) and label in (0, 1) for label in labels):
        shown = [label.item() if isinstance(label, np.generic) else label for label in labels]
        raise PromptError(f"Point labels must be 1 (object) or 0 (background); got {shown!r}.")
    return tuple(int(label) for label in labels)


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
        if name == "cuda":
            raise ValueError(cuda_unavailable_reason())
        raise ValueError(f"The device {name!r} is not available in this PyTorch installation; use auto or cpu.")
    return torch.device(name)


def cuda_unavailable_reason() -> str:
    """Why CUDA cannot be used: this PyTorch has no CUDA at all, or it has but finds no GPU (different fixes)."""
    if torch.version.cuda is None:
        return ("The device 'cuda' needs a PyTorch built with CUDA, and this one is a CPU-only build; install a CUDA "
                "build of PyTorch (https://pytorch.org/get-started/locally/), or choose the device auto or cpu.")
    return (f"This PyTorch is built with CUDA {torch.version.cuda} but finds no usable NVIDIA GPU (none in this "
            "computer, no driver, or hidden by CUDA_VISIBLE_DEVICES; nvidia-smi tells which); choose the device auto "
            "or cpu.")


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

    def __contains__(self, index: int) -> bool:
        return index in self._features

    @property
    def nbytes(self) -> int:
        """Bytes of the image features held now."""
        return self._bytes

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


class VolumePredictor:
    """Runs a loaded :class:`MedSAM2` over volumes. One instance can serve many volumes and prompts."""

    def __init__(
        self,
        model: MedSAM2,
        fill_holes: bool = True,
        keep_largest_component: bool = True,
        precision: str = "float32",
        early_stop: Optional[int] = None,
        encode_batch: Optional[int] = None,
        binarize_prompt_memory: bool = True,
    ) -> None:
        """precision: ``float32`` (exact), ``bfloat16`` (fast) or ``auto`` (see :mod:`..model.precision`);
        early_stop: end each direction after this many slices in a row without the object (None: never);
        encode_batch: slices encoded in one batch ahead of the tracker (default 4 on CUDA, where one batch
        keeps the GPU busier than four single slices; 1 elsewhere: a CPU computes a batch no faster);
        binarize_prompt_memory: a prompted slice's mask enters the memory binarised, as the official 3D scripts
        build the predictor (post-processing on); False: as sigmoid probabilities, as the official video script
        builds it (post-processing off)."""
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            keep_freed_memory_for_reuse()  # else each slice page-faults its tensors in afresh (see cpu_memory)
        self.fill_holes = fill_holes
        self.binarize_prompt_memory = binarize_prompt_memory
        self.keep_largest_component = keep_largest_component
        self.dtype = resolve_precision(precision, self.device)
        # Fast mode computes on a copy whose layers hold bfloat16 weights: no rounding of weights per slice.
        self.model = with_bfloat16_weights(model) if self.dtype == torch.bfloat16 else model.eval()
        check_absent_slices(early_stop)
        self.early_stop = early_stop
        if encode_batch is not None and encode_batch < 1:
            raise ValueError(f"encode_batch must be at least 1; got {encode_batch}.")
        self.encode_batch = encode_batch or (4 if self.device.type == "cuda" else 1)
        self.encoder_calls = 0  # slices encoded

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
        session, _ = self._box_session(volume, key_slice, box, cache)
        yield from session.propagate(direction, slice_range)

    def segment_slice(
        self, volume: np.ndarray, key_slice: int, box: Sequence[float], cache: Optional[FeatureCache] = None
    ) -> SliceResult:
        """Preview: the box's slice only (no memory encoding)."""
        validate_prompt(volume, key_slice, box)
        return self._box_session(volume, key_slice, box, cache)[1]

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
        mask = np.zeros(volume.shape[:3], dtype=np.uint8)
        for result in self.propagate(volume, key_slice, box, direction, slice_range, cache):
            mask[result.index] |= result.mask
            if on_slice is not None:
                on_slice(result)
        return largest_component(mask) if self.keep_largest_component else mask

    def segment_objects(self, volume: np.ndarray, objects, cache: Optional[FeatureCache] = None, on_result=None,
                        errors=None):
        """Several objects' steps in one pass over a volume, one session each: see
        :func:`~MedSAM2Lib.inference.objects.segment_objects` (key -> TrackedObject)."""
        from .objects import segment_objects  # which builds on this class

        return segment_objects(self, volume, objects, cache, on_result, errors)

    def _box_session(self, volume: np.ndarray, key_slice: int, box: Sequence[float],
                     cache: Optional[FeatureCache]) -> Tuple["Session", SliceResult]:
        """The one-box case: a session holding the box, and the box slice's result."""
        from .session import Session  # the session builds on this class

        session = Session(self, volume, cache if cache is not None else self.single_pass_cache(volume),
                          early_stop=self.early_stop)
        return session, session.add_prompt(key_slice, box=box)

    def warm_up(self) -> None:
        """Encode a blank slice and decode a box on it once, keeping nothing. The first call of each kernel
        pays a one-time set-up (on CPU, oneDNN builds its kernels: about 0.2-0.3 s here); an application that
        keeps the model loaded (Slicer) calls this while loading, so that the first preview does not pay it."""
        size = self.model.config.image_size
        image = model_input(np.zeros((size, size), dtype=np.uint8), size).to(self.device)
        box = self.model_points((0.25 * size, 0.25 * size, 0.75 * size, 0.75 * size), [], [], (size, size))
        with self.compute():
            self.model.segment(self.model.encode_image(image.unsqueeze(0)), box)

    # -- per-slice steps the session uses -------------------------------------------------------------

    def compute(self):
        """Inference mode (and autocast in bfloat16 mode) around each step, never across a ``yield``."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.dtype))
        return stack

    def single_pass_cache(self, volume: np.ndarray) -> FeatureCache:
        """A cache for work that never returns to a slice: it keeps one batch of slices (the last encoded slice
        is the prompted one until a propagation puts it into the memory bank)."""
        return FeatureCache(volume, max_slices=self.encode_batch)

    def encode(self, volume: np.ndarray, index: int, cache: Optional[FeatureCache],
               ahead: Sequence[int] = ()) -> ImageFeatures:
        """A slice's image features, from the cache when it holds them. Otherwise the slice is encoded, in one
        batch with the first ``encode_batch - 1`` of the slices ``ahead`` that the cache lacks (they go to the
        cache)."""
        features = cache.get(index) if cache is not None else None
        if features is not None:
            return features
        batch = [index]
        if cache is not None:
            batch += [other for other in ahead if other not in cache and other != index][: self.encode_batch - 1]
        size = self.model.config.image_size
        images = torch.stack([model_input(volume[number], size) for number in batch]).to(self.device)
        with self.compute():
            encoded = self.model.encode_image(images)
        self.encoder_calls += len(batch)
        if len(batch) == 1:
            features = encoded
        else:  # each slice's own copy, so that the cache frees them one by one
            features = encoded.item(0)
            for number, other in enumerate(batch[1:], start=1):
                cache.put(other, encoded.item(number))
        if cache is not None:
            cache.put(index, features)
        return features

    def model_points(
        self,
        box: Optional[Sequence[float]],
        points: Sequence[Sequence[float]],
        labels: Sequence[int],
        slice_shape: Tuple[int, int],
    ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """A box and points in slice pixels -> (1, N, 2) model-input pixels and (1, N) labels, the box's corners
        first (labels 2, 3); each axis scaled to image_size (anisotropic, as the reference). None if empty."""
        height, width = slice_shape
        coords = [list(box[:2]), list(box[2:])] if box is not None else []
        coords += [list(point) for point in points]
        if not coords:
            return None
        point_labels = ([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT] if box is not None else []) + list(check_point_labels(labels))
        scaled = torch.tensor(coords, dtype=torch.float32) / torch.tensor([width, height])
        return (
            (scaled * self.model.config.image_size).unsqueeze(0).to(self.device),
            torch.tensor(point_labels, dtype=torch.int32, device=self.device).unsqueeze(0),
        )

    def model_mask(self, mask: np.ndarray) -> torch.Tensor:
        """A binary (H, W) mask prompt -> (1, 1, S, S) at model-input size (antialiased resize, >= 0.5)."""
        size = self.model.config.image_size
        tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None].to(self.device)
        if tensor.shape[-2:] != (size, size):
            tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            tensor = (tensor >= 0.5).float()
        return tensor

    def filled(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits with small background holes filled (the reference's fill_hole_area)."""
        if not self.fill_holes:
            return low_res_logits
        filled = fill_small_holes(low_res_logits[0, 0].float().cpu().numpy(), self.model.config.fill_hole_area)
        return torch.from_numpy(filled).to(low_res_logits.device)[None, None]

    def slice_result(self, index: int, low_res_logits: torch.Tensor, object_score: float, slice_shape) -> SliceResult:
        """Low-res logits -> a :class:`SliceResult` at slice resolution (bilinear, align_corners=False)."""
        with self.compute():
            logits = F.interpolate(low_res_logits.float(), size=tuple(slice_shape), mode="bilinear", align_corners=False)
        return SliceResult(index, logits[0, 0].cpu().numpy(), object_score)


def check_volume(volume: np.ndarray) -> None:
    """Raise :class:`PromptError` unless the volume is a non-empty uint8 (D, H, W) array, or (D, H, W, 3): the RGB
    frames of a video."""
    frames = isinstance(volume, np.ndarray) and volume.ndim == 4 and volume.shape[3] == 3
    if not isinstance(volume, np.ndarray) or not (volume.ndim == 3 or frames):
        shape = getattr(volume, "shape", None)
        raise PromptError(f"MedSAM2 needs a 3D volume (slices, rows, columns) or RGB video frames (frames, rows, "
                          f"columns, 3); got an array of shape {shape}.")
    if volume.dtype != np.uint8:
        raise PromptError(f"The volume must be windowed to uint8 first; got {volume.dtype}.")
    if min(volume.shape) < 1:
        raise PromptError(f"The volume is empty (shape {volume.shape}).")
    if volume.shape[0] < 2:  # the same answer as the Slicer logic's check_source_volume
        raise PromptError(f"The volume is a single slice of {volume.shape[1]} x {volume.shape[2]} pixels; MedSAM2 "
                          "propagates through a 3D volume with at least two slices.")


def check_box(box: Sequence[float], slice_shape: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """The box as four floats, or :class:`PromptError` saying what is wrong with it."""
    height, width = slice_shape
    try:
        values = np.asarray(box, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.array([])
    if values.size != 4 or not np.all(np.isfinite(values)):
        raise PromptError(f"The box must be four numbers x0 y0 x1 y1; got {box!r}.")
    x0, y0, x1, y1 = values
    if x1 < x0 or y1 < y0:
        which = "x1 is left of x0" if x1 < x0 else "y1 is above y0"
        raise PromptError(
            f"The box ({x0:g}, {y0:g}) - ({x1:g}, {y1:g}) has its corners swapped: {which}; give the top-left corner "
            f"first: {min(x0, x1):g} {min(y0, y1):g} {max(x0, x1):g} {max(y0, y1):g}."
        )
    if x1 == x0 or y1 == y0:
        raise PromptError(
            f"The box ({x0:g}, {y0:g}) - ({x1:g}, {y1:g}) has no area: x1 must exceed x0 and y1 must exceed y0."
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise PromptError(
            f"The box ({x0:g}, {y0:g}) - ({x1:g}, {y1:g}) reaches outside the slice, whose pixels span "
            f"x 0..{width} and y 0..{height}."
        )
    return (float(x0), float(y0), float(x1), float(y1))


def validate_prompt(
    volume: np.ndarray,
    key_slice: int,
    box: Sequence[float],
    direction: str = "both",
    slice_range: Optional[Tuple[int, int]] = None,
) -> None:
    """Raise :class:`PromptError` with a sentence saying what is wrong with a predictor call."""
    check_volume(volume)
    num_slices = volume.shape[0]
    if not 0 <= key_slice < num_slices:
        raise PromptError(f"Slice {key_slice} is outside the volume, which has slices 0..{num_slices - 1}.")
    check_box(box, volume.shape[1:3])
    if direction not in DIRECTIONS:
        raise PromptError(f"Unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}.")
    if slice_range is not None:
        check_slice_range(slice_range, num_slices, key_slice, "the box's slice")


def check_slice_range(slice_range: Sequence[int], num_slices: int, prompted: Optional[int] = None,
                      prompted_name: str = "the prompted slice") -> None:
    """Refuse an inclusive slice range (first, last) that is inverted, reaches outside 0..num_slices - 1, or
    leaves out the slice ``prompted`` (named ``prompted_name``) a propagation starts from."""
    first, last = slice_range
    if first > last:
        raise PromptError(f"The slice range {first}..{last} is inverted: its first slice comes after its last; give "
                          f"{last}..{first}.")
    if prompted is None and not 0 <= first <= last < num_slices:
        raise PromptError(f"The slice range {first}..{last} must lie within 0..{num_slices - 1}.")
    if prompted is not None and not 0 <= first <= prompted <= last < num_slices:
        raise PromptError(f"The slice range {first}..{last} must lie within 0..{num_slices - 1} and include "
                          f"{prompted_name} {prompted}.")
