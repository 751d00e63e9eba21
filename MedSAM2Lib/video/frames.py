"""Video frames and label PNGs as the official MedSAM2 video script reads and writes them.

Frames: a folder of JPEG (or PNG) images sorted by name without the extension, each read as RGB; or a video
file decoded by PyAV (the ``video`` extra), its frames named 00000, 00001, ... Labels: palette ("P" mode) PNGs
named like the frames, one per frame with a value per object (DAVIS), or one folder per object named by its id
(``001``, ``002``, ...) holding 0/1 PNGs (SA-V, ``--per-object-png``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..atomic import write_atomically

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
VIDEO_EXTRA = "pip install av, or in a checkout of this project pip install -e '.[video]'"


class VideoError(ValueError):
    """Frames, masks or an output folder that cannot be used; the message is one sentence."""


def voc_palette() -> List[int]:
    """The 256-colour PASCAL VOC palette, which DAVIS label PNGs use: colour i spreads the bits of i over the
    high bits of red, green and blue (1 -> dark red, 2 -> dark green, 3 -> olive, ...). 768 values."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


@dataclass(frozen=True)
class Frames:
    """A clip: ``names`` (no extension) and ``images`` (D, H, W, 3) uint8 RGB, in the same order."""

    names: Tuple[str, ...]
    images: np.ndarray

    @property
    def size(self) -> Tuple[int, int]:
        """(height, width) of every frame."""
        return self.images.shape[1], self.images.shape[2]


def frame_files(folder: Path) -> List[Path]:
    """The frame images of a folder sorted by name without extension (the official order); refused with a
    sentence when there are none or two share a name."""
    files = [path for path in Path(folder).iterdir() if path.is_file() and path.suffix.lower() in FRAME_SUFFIXES]
    if not files:
        raise VideoError(f"{folder} holds no JPEG or PNG frames.")
    files.sort(key=lambda path: path.stem)
    stems = [path.stem for path in files]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:
        raise VideoError(f"{folder} holds several frames named {twice[0]} (different extensions); keep one.")
    return files


def read_frames(source: Path) -> Frames:
    """A folder of frames, or a video file (needs PyAV); every frame the same size."""
    source = Path(source)
    if source.is_dir():
        files = frame_files(source)
        names = tuple(path.stem for path in files)
        images = [_read_rgb(path) for path in files]
    elif source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        images = read_video_file(source)
        names = tuple(f"{number:05d}" for number in range(len(images)))
    elif source.exists():
        raise VideoError(f"{source} is neither a folder of frames nor a video file ({', '.join(VIDEO_SUFFIXES)}).")
    else:
        raise VideoError(f"{source} does not exist.")
    sizes = sorted({image.shape[:2] for image in images})
    if len(sizes) > 1:
        raise VideoError(f"The frames of {source} differ in size ({sizes[0][0]} x {sizes[0][1]} and "
                         f"{sizes[1][0]} x {sizes[1][1]} pixels); a clip's frames must all be one size.")
    if len(images) < 2:
        raise VideoError(f"{source} holds a single frame; tracking needs at least two.")
    return Frames(names, np.stack(images))


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise VideoError(f"Cannot read the frame {path}: {error}.") from error


def read_video_file(path: Path) -> List[np.ndarray]:
    """The frames of a video file as RGB arrays, decoded by PyAV; without it, a sentence naming the extra."""
    if importlib.util.find_spec("av") is None:
        raise VideoError(f"Reading {path.name} needs PyAV, the optional video extra: {VIDEO_EXTRA} (or give a "
                         "folder of JPEG frames).")
    import av

    try:
        with av.open(str(path)) as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.FFmpegError, IndexError) as error:  # IndexError: the file has no video stream
        raise VideoError(f"Cannot decode the video {path}: {error}.") from error


# -- label PNGs --------------------------------------------------------------------------------------------


def read_label_png(path: Path, size: Tuple[int, int]) -> Tuple[np.ndarray, Optional[List[int]]]:
    """(H, W) uint8 labels of a PNG and its palette (None without one); refused unless it is one channel of
    ``size``."""
    try:
        with Image.open(path) as image:
            palette = image.getpalette()
            labels = np.asarray(image)
    except OSError as error:
        raise VideoError(f"Cannot read the mask {path}: {error}.") from error
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise VideoError(f"The mask {path} is not a palette or greyscale PNG of 8-bit labels "
                         f"(it has {labels.ndim} axes of {labels.dtype}).")
    if labels.shape != tuple(size):
        raise VideoError(f"The mask {path} is {labels.shape[0]} x {labels.shape[1]} pixels; the frames are "
                         f"{size[0]} x {size[1]}.")
    return labels, palette


def objects_of(labels: np.ndarray) -> Dict[int, np.ndarray]:
    """Label map -> {object id: boolean mask} of the ids present (0 is background)."""
    return {int(value): labels == value for value in np.unique(labels) if value > 0}


def write_label_png(path: Path, labels: np.ndarray, palette: Sequence[int]) -> Path:
    """uint8 (H, W) labels as a palette PNG, atomically, checked by reading it back."""

    def write(temporary: Path) -> None:
        image = Image.fromarray(labels)
        image.putpalette(list(palette))
        image.save(temporary, format="PNG")

    def check(temporary: Path) -> None:
        with Image.open(temporary) as image:
            if image.mode != "P" or not np.array_equal(np.asarray(image), labels):
                raise VideoError(f"{temporary} does not read back as the labels written")

    return write_atomically(Path(path), write, check)
