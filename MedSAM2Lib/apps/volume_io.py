"""Reading volumes and writing masks with their geometry (SimpleITK, imported only here).

Arrays are (D, H, W) = (slices, rows, columns), i.e. SimpleITK's k, j, i order. Geometry follows SimpleITK
(LPS, spacing/origin in x, y, z order, direction as a row-major 3x3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np


class VolumeError(ValueError):
    """A file cannot be read as a scalar 3D volume, or a mask cannot be written."""


@dataclass(frozen=True)
class Geometry:
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def is_npz(path: str | Path) -> bool:
    return str(path).lower().endswith(".npz")


def read_volume(path: str | Path) -> Tuple[np.ndarray, Geometry]:
    """A scalar 3D volume as a (D, H, W) array and its geometry.

    ``.npz`` files hold ``imgs`` (D, H, W) and optionally ``spacing`` (MedSAM2's npz layout, spacing in
    z, y, x order); anything else is read with SimpleITK (NIfTI, NRRD, MHA, a DICOM file, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"No image file at {path}.")
    if is_npz(path):
        return _read_npz(path)
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise VolumeError(f"SimpleITK cannot read {path}: {str(error).strip().splitlines()[-1]}") from error
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (a colour or vector image); "
            "MedSAM2 needs a scalar (greyscale) volume."
        )
    if image.GetDimension() != 3:
        raise VolumeError(f"{path} is a {image.GetDimension()}D image; MedSAM2 needs a 3D volume.")
    geometry = Geometry(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))
    return sitk.GetArrayFromImage(image), geometry


def _read_npz(path: Path) -> Tuple[np.ndarray, Geometry]:
    with np.load(path, allow_pickle=False) as content:
        if "imgs" not in content.files:
            raise VolumeError(f"{path} has no 'imgs' array (found: {', '.join(content.files) or 'nothing'}).")
        volume = content["imgs"]
        spacing = content["spacing"] if "spacing" in content.files else None
    if volume.ndim != 3:
        raise VolumeError(f"'imgs' in {path} has shape {volume.shape}; MedSAM2 needs (slices, rows, columns).")
    geometry = Geometry()
    if spacing is not None and np.size(spacing) == 3:
        geometry = Geometry(spacing=tuple(float(s) for s in np.asarray(spacing)[::-1]))
    return volume, geometry


def write_mask(path: str | Path, mask: np.ndarray, geometry: Optional[Geometry] = None) -> None:
    """Save a uint8 (D, H, W) mask: ``.npz`` with keys ``mask`` and ``spacing``, or a volume file with the given
    geometry."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if is_npz(path):
        # MedSAM2's npz layout keeps the spacing in array order (z, y, x), as read_volume expects it.
        spacing = np.asarray((geometry or Geometry()).spacing, dtype=np.float64)[::-1]
        np.savez_compressed(path, mask=mask, spacing=spacing)
        return
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask)
    geometry = geometry or Geometry()
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:
        raise VolumeError(f"Cannot write {path}: {str(error).strip().splitlines()[-1]}") from error
