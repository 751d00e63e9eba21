"""Objects tracked through a clip from masks given on some frames: the official ``medsam2_infer_video.py``.

Two ways, as the official script has them (its ``vos_inference`` and ``vos_separate_inference_per_object``):

- together (default): every object is in the first frame's mask (or, with ``use_all_masks``, in the first mask
  file's; the later mask files may not name new objects). Tracking runs forward from the first prompted frame,
  and a PNG is written for that frame and every later one.
- ``objects_appearing_later``: each object is tracked forward from the first frame whose mask holds it (or from
  all its masks); a PNG is written for every frame, objects not yet seen scoring -1024.

A session file (:func:`read_session_prompts`) may give the prompts instead: the steps of a volume session file
(boxes, points, masks, corrections, propagations; objects by ``"object"``) with frames in the role of slices,
named by their names or indices. Its objects are tracked as its steps say, and a PNG is written for every frame.

Each object is tracked by its own session (its own memory; one encoding of each frame for all of them, see
:mod:`..inference.objects`). On a frame's label PNG, objects compete by the official non-overlap rule; with
per-object PNGs they may overlap (the official script then turns the rule off). One difference: with
``use_all_masks`` in the first way, an object missing from a later mask file gets an empty mask on that frame
(the official predictor fills in a placeholder that still scores the object present).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..inference.objects import MultiObjectSession, label_map, non_overlapping
from ..inference.predictor import SliceResult, VolumePredictor
from ..inference.session_file import SessionDocument, check_steps, object_steps, read_session
from .frames import Frames, VideoError, objects_of, read_label_png, voc_palette, write_label_png

APPEARING_LATER = "--track-objects-appearing-later"


@dataclass(frozen=True)
class VideoOptions:
    use_all_masks: bool = False  # every mask file prompts, not only each object's first
    per_object_png: bool = False  # masks in and out as one folder per object (001/, 002/, ...)
    objects_appearing_later: bool = False  # each object tracked from its own first mask
    score_threshold: float = 0.0  # a pixel is in an object where its logit exceeds this


@dataclass
class VideoPrompts:
    """The masks that prompt the tracking: object id -> {frame index: (H, W) bool}, and the palette of the
    last mask file read (None: none had one)."""

    masks: Dict[int, Dict[int, np.ndarray]] = field(default_factory=dict)
    palette: Optional[List[int]] = None

    @property
    def object_ids(self) -> List[int]:
        return sorted(self.masks)


def read_prompts(mask_folder: Path, frames: Frames, options: VideoOptions) -> VideoPrompts:
    """The masks of ``mask_folder`` that prompt the tracking, chosen by the official rules of each way."""
    mask_folder = Path(mask_folder)
    if not mask_folder.is_dir():
        raise VideoError(f"The masks folder {mask_folder} does not exist or is not a folder.")
    reader = _MaskReader(mask_folder, frames, options.per_object_png)
    if options.objects_appearing_later:
        return _prompts_appearing_later(reader, frames, options.use_all_masks)
    return _prompts_together(reader, frames, options.use_all_masks)


class _MaskReader:
    """Reads one frame's masks as {object id: bool mask}, from one label PNG or from per-object folders."""

    def __init__(self, folder: Path, frames: Frames, per_object: bool) -> None:
        self.folder, self.frames, self.per_object = folder, frames, per_object
        self.palette: Optional[List[int]] = None
        self.object_folders: Dict[int, Path] = {}
        if per_object:
            for path in sorted(folder.iterdir()):
                if path.is_dir():
                    if not path.name.isdigit() or not 1 <= int(path.name) <= 255:
                        raise VideoError(f"{path} is not named by an object id 1..255 (such as 001); per-object "
                                         "masks go in one folder per object.")
                    self.object_folders[int(path.name)] = path
            if not self.object_folders:
                raise VideoError(f"{folder} holds no per-object folders (001, 002, ...) of masks.")

    def paths(self, index: int) -> Dict[Optional[int], Path]:
        """Where frame ``index``'s masks would be: object id -> path (key None: one label PNG for all)."""
        name = f"{self.frames.names[index]}.png"
        if self.per_object:
            return {object_id: folder / name for object_id, folder in self.object_folders.items()}
        return {None: self.folder / name}

    def has_mask(self, index: int) -> bool:
        return any(path.is_file() for path in self.paths(index).values())

    def read(self, index: int, allow_missing: bool) -> Dict[int, np.ndarray]:
        masks: Dict[int, np.ndarray] = {}
        for object_id, path in self.paths(index).items():
            if not path.is_file():
                if allow_missing:
                    continue
                raise VideoError(f"There is no mask {path} for frame {self.frames.names[index]}; if an object "
                                 f"appears only in later frames, add {APPEARING_LATER}.")
            labels, palette = read_label_png(path, self.frames.size)
            self.palette = palette if palette is not None else self.palette
            if object_id is None:
                masks.update(objects_of(labels))
            else:
                masks[object_id] = labels > 0
        return masks


def _prompts_together(reader: _MaskReader, frames: Frames, use_all_masks: bool) -> VideoPrompts:
    if use_all_masks:
        prompted = [index for index in range(len(frames.names)) if reader.has_mask(index)]
        if not prompted:
            raise VideoError(f"{reader.folder} holds no mask named like a frame ({frames.names[0]}.png, ...).")
    else:
        prompted = [0]
    prompts = VideoPrompts()
    for index in prompted:
        masks = reader.read(index, allow_missing=False)
        if index == prompted[0]:
            prompts.masks = {object_id: {} for object_id in masks}
        new = sorted(set(masks) - set(prompts.masks))
        if new:
            raise VideoError(f"Object {new[0]} appears in the mask of frame {frames.names[index]} but not in that "
                             f"of frame {frames.names[prompted[0]]}; add {APPEARING_LATER} to track objects that "
                             "appear later.")
        for object_id, object_masks in prompts.masks.items():
            # Missing from a later mask file: an empty mask there (see the module docstring).
            object_masks[index] = masks.get(object_id, np.zeros(frames.size, dtype=bool))
    if not prompts.masks:
        raise VideoError(f"The mask of frame {frames.names[prompted[0]]} holds no object (every pixel 0); add "
                         f"{APPEARING_LATER} if the objects appear later.")
    prompts.palette = reader.palette
    return prompts


def _prompts_appearing_later(reader: _MaskReader, frames: Frames, use_all_masks: bool) -> VideoPrompts:
    prompts = VideoPrompts()
    for index in range(len(frames.names)):
        if not reader.has_mask(index):
            continue
        for object_id, mask in reader.read(index, allow_missing=True).items():
            given = prompts.masks.setdefault(object_id, {})
            if mask.any() and (use_all_masks or not given):
                given[index] = mask
    prompts.masks = {object_id: given for object_id, given in prompts.masks.items() if given}
    if not prompts.masks:
        raise VideoError(f"No mask in {reader.folder} holds an object on a frame of the clip.")
    prompts.palette = reader.palette
    return prompts


@dataclass
class VideoResult:
    """The tracked objects of a clip and the frames to write. Logits are made per frame on access from what the
    sessions keep (low-resolution logits), so a long clip is never held at frame size."""

    session: MultiObjectSession
    frames: List[int]  # the frames to write, in order
    options: VideoOptions

    @property
    def object_ids(self) -> List[int]:
        return self.session.object_ids

    def logits(self, index: int) -> np.ndarray:
        """(N, H, W) float32 logits of frame ``index`` before the non-overlap rule, objects in id order (-1024
        for an object without an output there)."""
        return self.session.logits(index)

    def merged(self, index: int) -> np.ndarray:
        """The logits after the non-overlap rule where one label PNG is written (as they are per object)."""
        logits = self.logits(index)
        return logits if self.options.per_object_png else non_overlapping(logits)

    def masks(self, index: int) -> Dict[int, np.ndarray]:
        merged = self.merged(index)
        return {object_id: merged[number] > self.options.score_threshold
                for number, object_id in enumerate(self.object_ids)}

    def labels(self, index: int) -> np.ndarray:
        masks = self.masks(index)
        return label_map(masks, next(iter(masks.values())).shape)


def track(predictor: VolumePredictor, frames: Frames, prompts: VideoPrompts, options: VideoOptions,
          early_stop: Optional[int] = None, on_result: Optional[Callable[[int, SliceResult], None]] = None
          ) -> VideoResult:
    """Track every prompted object forward through the clip (see the module docstring)."""
    session = MultiObjectSession(predictor, frames.images, prompts.object_ids, early_stop=early_stop)
    for object_id, given in prompts.masks.items():
        for index, mask in sorted(given.items()):
            session.session(object_id).add_prompt(index, mask=mask)
    for object_id, result in session.propagate(direction="forward"):
        if on_result is not None:
            on_result(object_id, result)
    first = 0 if options.objects_appearing_later else min(min(given) for given in prompts.masks.values())
    return VideoResult(session, list(range(first, len(frames.names))), options)


def read_session_prompts(path: Path, frames: Frames) -> SessionDocument:
    """A session file whose steps name frames of ``frames``, checked against the clip before any work."""
    document = read_session(path, frames.names)
    check_steps(document.steps, frames.images)
    return document


def track_session(predictor: VolumePredictor, frames: Frames, document: SessionDocument, options: VideoOptions,
                  early_stop: Optional[int] = None, on_step: Optional[Callable[[int, int], None]] = None
                  ) -> VideoResult:
    """Run a session file's steps on the clip, every object in one pass; ``on_step(object id, step number)``
    sees each object's finished steps. Every frame is written."""
    objects = object_steps(document.steps)
    session = MultiObjectSession(predictor, frames.images, objects, early_stop=early_stop)
    for object_id, number, result in session.run_steps(objects):
        if result is None and on_step is not None:
            on_step(object_id, number)
    return VideoResult(session, list(range(len(frames.names))), options)


def png_path(output: Path, frame_name: str, object_id: Optional[int] = None) -> Path:
    """Where a frame's label PNG goes (``OUTPUT/<frame>.png``), or one object's 0/1 PNG of it
    (``OUTPUT/<id:03d>/<frame>.png``)."""
    folder = Path(output) if object_id is None else Path(output) / f"{object_id:03d}"
    return folder / f"{frame_name}.png"


def planned_results(frames: Frames, prompts: VideoPrompts) -> int:
    """How many (object, frame) results :func:`track` computes without an early stop (a progress total)."""
    return sum(len(frames.names) - min(given) for given in prompts.masks.values())


def check_output_folder(output: Path, inputs: Tuple[Path, ...]) -> Path:
    """Refuse, before any work, an output folder that is a file, one of the input folders or inside one (the
    PNGs would replace input masks or join the frames)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise VideoError(f"The output {output} is a file; name a folder for the mask PNGs.")
    resolved = output.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source.is_dir() and (resolved == source or source in resolved.parents):
            raise VideoError(f"The output folder {output} is (or is inside) the input folder {source}; the mask "
                             "PNGs would mix with the inputs, so choose another folder.")
    from ..atomic import check_writable

    check_writable(output / "frame.png")
    return output


def write_result(output: Path, frames: Frames, result: VideoResult, palette: Optional[List[int]]) -> List[Path]:
    """The PNGs of every frame in the result, each written atomically: ``OUTPUT/<frame>.png`` label maps, or
    ``OUTPUT/<id:03d>/<frame>.png`` 0/1 masks per object; the input masks' palette, else DAVIS's."""
    palette = palette or voc_palette()
    written = []
    for index in result.frames:
        name = frames.names[index]
        if result.options.per_object_png:
            for object_id, mask in result.masks(index).items():
                written.append(write_label_png(png_path(output, name, object_id), mask.astype(np.uint8), palette))
        else:
            written.append(write_label_png(png_path(output, name), result.labels(index), palette))
    return written
