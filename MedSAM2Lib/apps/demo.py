"""``medsam2 demo``: the whole pipeline on a real scan shipped with the project.

The scan (``Resources/mni152_t1_demo.nii.gz``, 750 kB; see MedSAM2Lib.resources) is the MNI ICBM152 2009a T1
template, reoriented to LPS, cropped to the brain and resampled to 2 mm axial slices: 78 slices of 195 x 157
one-millimetre pixels. Its copyright notice and licence are in ``Resources/MNI152_NOTICE.txt``, and
``Resources/make_demo_scan.py`` makes it from the template that nilearn ships.

The preset prompt is a box around the right lateral ventricle on axial slice 45 (MNI z = +18.5 mm), propagated
within slices 28..60 (z = -15.5..+48.5 mm), which hold the lateral ventricles with a margin, after MR
percentile windowing. The outputs are the mask (NIfTI, with the scan's geometry) and a PNG of three axial
slices with the mask's outline.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..inference.preprocessing import mr_percentile_window
from ..atomic import FileUses, check_writable, write_atomically
from ..resources import resource_path
from ..model_catalogue import DEFAULT_MODEL, CatalogueModel
from .evaluation import surface_voxels
from .volume_io import check_output, read_volume, write_mask

DEMO_SCAN = resource_path("mni152_t1_demo.nii.gz")
DEMO_NOTICE = resource_path("MNI152_NOTICE.txt")
CREDIT = (
    "Scan: MNI ICBM152 2009a T1 template, Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
    f"Montreal Neurological Institute, McGill University (notice: {DEMO_NOTICE})."
)


@dataclass(frozen=True)
class DemoPrompt:
    structure: str = "right lateral ventricle"
    key_slice: int = 45
    box: Tuple[int, int, int, int] = (52, 62, 79, 127)  # x0, y0, x1, y1: columns 52..79, rows 62..127
    slice_range: Tuple[int, int] = (28, 60)
    name: str = "right_lateral_ventricle"  # of the output files


DEMO_PROMPT = DemoPrompt()
OUTLINE_COLOUR = (255, 40, 40)
BOX_COLOUR = (255, 220, 0)
PNG_SCALE = 2  # pixels per voxel in the PNG


@dataclass
class DemoResult:
    mask_path: Path
    png_path: Path
    voxels: int
    millilitres: float
    slices: Tuple[int, int]  # first and last slice of the mask (key slice twice when it is empty)


def missing_weights_message(checkpoint: Path, model: CatalogueModel = DEFAULT_MODEL) -> str:
    command = "-o" if model == DEFAULT_MODEL else f"--model {model.name} -o"
    return (
        f"The demo needs the MedSAM2 weights, and there is no checkpoint at {checkpoint}. Get them with\n"
        f"    medsam2 download {command} \"{checkpoint}\"\n"
        f"(or download {model.source().file_url} yourself and save it there),\n"
        "or pass --checkpoint PATH to use a MedSAM2 checkpoint you already have."
    )


def confirm_download(checkpoint: Path, assume_yes: bool, ask: Callable[[str], str] = input,
                     interactive: Optional[bool] = None, model: CatalogueModel = DEFAULT_MODEL) -> bool:
    """Whether to download the missing weights for the demo: asked once on a terminal; yes with ``--yes`` or
    without a terminal (a script or CI asked for the demo, so it gets the one step it needs)."""
    interactive = sys.stdin.isatty() if interactive is None else interactive
    if assume_yes or not interactive:
        return True
    answer = ask(f"The demo needs the MedSAM2 weights (about {model.approximate_mb} MB, verified against their "
                 "published SHA256). "
                 f"Download them to {checkpoint}? [Y/n] ")
    return answer.strip().lower() in ("", "y", "yes")


def demo_outputs(output_folder: Path, prompt: DemoPrompt = DEMO_PROMPT) -> Tuple[Path, Path]:
    """The mask and the picture the demo writes in ``output_folder``."""
    return Path(output_folder) / f"{prompt.name}.nii.gz", Path(output_folder) / f"{prompt.name}.png"


def check_demo_outputs(output_folder: Path, files: Optional[FileUses] = None, prompt: DemoPrompt = DEMO_PROMPT) -> None:
    """Refuse, before the model loads, an output folder the demo cannot write its two files in, or whose files
    are files the demo reads (the scan, and the model's files already in ``files``)."""
    files = files or FileUses()
    files.read("the demo scan", DEMO_SCAN)
    mask_path, png_path = demo_outputs(output_folder, prompt)
    files.write("the mask", check_output(mask_path))
    files.write("the picture", check_writable(png_path))


def run_demo(predictor, output_folder: Path, on_slice: Optional[Callable] = None,
             prompt: DemoPrompt = DEMO_PROMPT) -> DemoResult:
    """Segment the demo prompt with ``predictor`` (a VolumePredictor) and write the mask and the PNG (each
    atomically: an earlier run's files are replaced only by complete ones)."""
    check_demo_outputs(output_folder, prompt=prompt)
    intensities, geometry = read_volume(DEMO_SCAN)
    volume = mr_percentile_window(intensities)
    mask = predictor.segment(volume, prompt.key_slice, prompt.box, slice_range=prompt.slice_range, on_slice=on_slice)
    mask_path, png_path = demo_outputs(output_folder, prompt)
    write_mask(mask_path, mask, geometry)
    occupied = np.flatnonzero(mask.any(axis=(1, 2)))
    extent = (int(occupied[0]), int(occupied[-1])) if occupied.size else (prompt.key_slice, prompt.key_slice)
    picture = overview(volume, mask, overview_slices(prompt.key_slice, extent), prompt)
    write_atomically(png_path, lambda temporary: picture.save(temporary, format="PNG"), check=_check_png)
    voxels = int(mask.sum())
    return DemoResult(mask_path, png_path, voxels, voxels * float(np.prod(geometry.spacing)) / 1000.0, extent)


def _check_png(path: Path) -> None:
    with Image.open(path) as written:
        written.load()  # decodes (decompresses) every pixel


def overview_slices(key_slice: int, extent: Tuple[int, int]) -> List[int]:
    """Three slices to show: halfway from the mask's first slice to the key slice, the key slice, and halfway
    from the key slice to the mask's last slice."""
    first, last = extent
    return [(first + key_slice) // 2, key_slice, (key_slice + last + 1) // 2]


def overview(volume: np.ndarray, mask: np.ndarray, slices: Sequence[int], prompt: DemoPrompt) -> Image.Image:
    """Side by side: each slice of uint8 ``volume`` (D, H, W) with the outline of ``mask`` on it, the box on the
    key slice, and the slice number under it."""
    panels = [
        slice_panel(volume[index], mask[index], prompt.box if index == prompt.key_slice else None,
                    f"slice {index}" + (" (box)" if index == prompt.key_slice else ""))
        for index in slices
    ]
    gap = 4
    sheet = Image.new("RGB", (sum(panel.width for panel in panels) + gap * (len(panels) - 1), panels[0].height))
    for number, panel in enumerate(panels):
        sheet.paste(panel, (number * (panel.width + gap), 0))
    return sheet


def slice_panel(image: np.ndarray, mask: np.ndarray, box: Optional[Sequence[int]], caption: str) -> Image.Image:
    """One (H, W) uint8 slice as RGB, enlarged PNG_SCALE times, with the mask outline, the box and a caption."""
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    rgb[surface_voxels(mask)] = OUTLINE_COLOUR
    rgb = rgb.repeat(PNG_SCALE, axis=0).repeat(PNG_SCALE, axis=1)
    caption_height = 14
    panel = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + caption_height))
    panel.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(panel)
    if box is not None:
        x0, y0, x1, y1 = (PNG_SCALE * value for value in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=BOX_COLOUR)
    draw.text((2, rgb.shape[0] + 1), caption, fill=(255, 255, 255))
    return panel
