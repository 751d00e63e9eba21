"""Reading volumes and writing masks with their geometry (SimpleITK, imported only here).

Arrays are (D, H, W) = (slices, rows, columns), i.e. SimpleITK's k, j, i order. Geometry follows SimpleITK
(LPS, spacing/origin in x, y, z order, direction as a row-major 3x3).
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from ..atomic import check_writable, reason, write_atomically
from .nifti_voxels import float_voxels, non_finite_voxels

# Files a 3D mask can be written to with its geometry, each read and written as one file (so it can be replaced
# atomically), and the ITK reader/writer of each (ITK matches extensions case-sensitively; we do not).
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".npz")
ITK_IO = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
          ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # 2D, no geometry
DETACHED_SUFFIXES = (".mhd", ".nhdr", ".hdr")  # a header file and a separate voxel file


# The command line's way out for volumes with NaN or infinite voxels (medsam2 segment and batch).
NAN_AS_FIX = "give --nan-as VALUE to replace them with VALUE (for example the background's intensity)"

# What np.load raises on a file that is not a readable .npz (truncated, not a zip, a damaged member).
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


class VolumeError(ValueError):
    """A file cannot be read as a scalar 3D volume, or a mask cannot be written."""


# ITK prefixes its messages with the class and its address ("ITK ERROR: NiftiImageIO(0x55c6...): ").
ITK_PREFIX = re.compile(r"^(ITK ERROR: \w+\(0x[0-9a-fA-F]+\):|sitk::ERROR:)\s*")


def library_reason(error: BaseException) -> str:
    """The cause in a SimpleITK/ITK/numpy error, one line without ITK's class-and-address prefix."""
    return ITK_PREFIX.sub("", reason(error))


def _suffix(path: str | Path, suffixes: Iterable[str]) -> Optional[str]:
    name = Path(path).name.lower()
    return next((suffix for suffix in suffixes if name.endswith(suffix)), None)


def mask_suffix(path: str | Path) -> Optional[str]:
    """The mask format of ``path`` as its lower-case extension (``.nii.gz``, ``.npz``, ...), or None."""
    return _suffix(path, MASK_SUFFIXES)


def mask_formats() -> str:
    return ", ".join(MASK_SUFFIXES[:-1]) + " or " + MASK_SUFFIXES[-1]


def check_output(path: str | Path) -> Path:
    """Refuse, with a sentence, an output path a mask cannot be written to as named; returns it as a Path.

    Checked before any work: the extension is a 3D mask format (any case), the path is not a folder, and its
    folder exists or can be created and is writable. (Whether it is a file the command reads is
    :class:`~MedSAM2Lib.atomic.FileUses`'s to say.)"""
    path = Path(path)
    if path.is_dir():
        raise VolumeError(f"The output {path} is a folder; name a file in it, such as {path / ('mask' + MASK_SUFFIXES[0])}.")
    if mask_suffix(path) is None:
        picture = _suffix(path, PICTURE_SUFFIXES)
        if picture:
            why = f"a {picture} file holds a 2D picture, not a 3D mask with its spacing and orientation"
        elif _suffix(path, DETACHED_SUFFIXES):
            why = "that format keeps its voxels in a second file, which cannot be replaced in one step"
        else:
            why = f"{path.suffix or 'a name without an extension'} is not a 3D mask format"
        raise VolumeError(f"Cannot write the mask to {path}: {why}; name the output {mask_formats()}.")
    return check_writable(path)


@dataclass(frozen=True)
class Geometry:
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def is_npz(path: str | Path) -> bool:
    return str(path).lower().endswith(".npz")


def read_volume(path: str | Path, series: Optional[str] = None,
                on_note: Optional[Callable[[str], None]] = None) -> Tuple[np.ndarray, Geometry]:
    """A scalar 3D volume as a (D, H, W) array and its geometry.

    ``.npz`` files hold ``imgs`` (D, H, W) and optionally ``spacing`` (MedSAM2's npz layout, spacing in
    z, y, x order); a folder is read as a DICOM series (:func:`read_dicom_series`: ``series`` is its Series
    Instance UID, ``on_note`` hears which one was chosen among several); anything else is read with SimpleITK
    (NIfTI, NRRD, MHA, a DICOM file, ...). NaN and infinite voxels are kept as they are in the file
    (SimpleITK's NIfTI reader would make them 0).
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, series, on_note)
    if series is not None:
        raise VolumeError(f"A series UID picks one DICOM series of a folder, and {path} is a file; give the folder "
                          "that holds the series, or leave the series out.")
    if not path.is_file():
        raise VolumeError(f"No image file at {path}.")
    if is_npz(path):
        return _read_npz(path)
    import SimpleITK as sitk

    reader = ITK_IO.get(_suffix(path, ITK_IO) or "", "")  # empty: SimpleITK chooses by the content
    try:
        image = sitk.ReadImage(str(path), imageIO=reader)
    except RuntimeError as error:
        raise VolumeError(f"Cannot read {path} as an image: {library_reason(error)}.") from error
    return _scalar_volume(image, path)


def read_dicom_series(folder: Path, series: Optional[str] = None,
                      on_note: Optional[Callable[[str], None]] = None) -> Tuple[np.ndarray, Geometry]:
    """The DICOM series in ``folder`` (its files directly in it) as :func:`read_volume` gives a volume: the one
    whose Series Instance UID is ``series``, else the one with the most slices (the first of those in GDCM's
    order on a tie); when there are several, ``on_note`` hears which was read and what the others are. Slices
    are ordered, and the geometry taken, from their positions (SimpleITK's ImageSeriesReader, GDCM)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    try:
        files = {uid: reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in reader.GetGDCMSeriesIDs(str(folder))}
    except RuntimeError as error:
        raise VolumeError(f"Cannot look for DICOM series in {folder}: {library_reason(error)}.") from error
    if not files:
        raise VolumeError(f"{folder} is a folder without a DICOM series in it; give a volume file (NIfTI, NRRD, MHA, "
                          ".npz) or a folder holding the DICOM files of a series.")
    listed = ", ".join(f"{uid} ({len(names)} slices)" for uid, names in files.items())
    if series is None:
        series = max(files, key=lambda uid: len(files[uid]))
        if len(files) > 1 and on_note is not None:
            on_note(f"{folder} holds {len(files)} DICOM series: {listed}; reading {series}, the one with the most "
                    "slices (a series UID picks another).")
    elif series not in files:
        raise VolumeError(f"{folder} has no DICOM series {series}; it has {listed}.")
    reader.SetFileNames(files[series])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeError(f"Cannot read the DICOM series {series} in {folder}: {library_reason(error)}.") from error
    return _scalar_volume(image, folder)


def _scalar_volume(image, path: Path) -> Tuple[np.ndarray, Geometry]:
    """A SimpleITK image read from ``path`` as (D, H, W) voxels and geometry; VolumeError unless scalar 3D."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (a colour or vector image); "
            "MedSAM2 needs a scalar (greyscale) volume."
        )
    if image.GetDimension() != 3:
        raise VolumeError(f"{path} is a {image.GetDimension()}D image; MedSAM2 needs a 3D volume.")
    geometry = Geometry(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))
    volume = sitk.GetArrayFromImage(image)
    if np.issubdtype(volume.dtype, np.floating):
        _restore_non_finite(path, volume)
    return volume, geometry


def _restore_non_finite(path: Path, volume: np.ndarray) -> None:
    """Put back in ``volume`` (read by SimpleITK from ``path``) the NaN and infinite voxels that SimpleITK's NIfTI
    reader set to 0 (see :mod:`MedSAM2Lib.apps.nifti_voxels`); nothing for other formats, which keep them."""
    voxels = float_voxels(path)
    if voxels is None:
        return
    if voxels.count != volume.size:
        raise VolumeError(f"Cannot check {path} for NaN voxels: its header describes {voxels.count:,} voxels and "
                          f"SimpleITK read {volume.size:,}.")
    indices, values = non_finite_voxels(voxels)
    volume.flat[indices] = values


def read_scan(path: str | Path, nan_as: Optional[float] = None, series: Optional[str] = None,
              on_note: Optional[Callable[[str], None]] = None) -> Tuple[np.ndarray, Geometry]:
    """:func:`read_volume` for segmenting from the command line: NaN and infinite voxels are replaced by
    ``nan_as``, or refused with a sentence counting them (:class:`~MedSAM2Lib.inference.preprocessing.NonFiniteError`)."""
    from ..inference.preprocessing import check_finite, replace_non_finite  # imports torch

    volume, geometry = read_volume(path, series, on_note)
    if nan_as is not None:
        return replace_non_finite(volume, nan_as), geometry
    check_finite(volume, NAN_AS_FIX, name=str(path))
    return volume, geometry


def check_npz(path: Path) -> None:
    """Refuse a file that is not an .npz archive before numpy tries it as a pickle (and suggests unpickling)."""
    if not zipfile.is_zipfile(path):
        raise VolumeError(f"Cannot read {path}: it is not an .npz file (not a zip archive of arrays).")


def _read_npz(path: Path) -> Tuple[np.ndarray, Geometry]:
    check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as content:
            if "imgs" not in content.files:
                raise VolumeError(f"{path} has no 'imgs' array (found: {', '.join(content.files) or 'nothing'}).")
            volume = content["imgs"]
            spacing = content["spacing"] if "spacing" in content.files else None
    except VolumeError:
        raise
    except NPZ_ERRORS as error:
        raise VolumeError(f"Cannot read {path} as an .npz file: {library_reason(error)}.") from error
    if volume.ndim != 3:
        raise VolumeError(f"'imgs' in {path} has shape {volume.shape}; MedSAM2 needs (slices, rows, columns).")
    geometry = Geometry()
    if spacing is not None and np.size(spacing) == 3:
        geometry = Geometry(spacing=tuple(float(s) for s in np.asarray(spacing)[::-1]))
    return volume, geometry


def write_mask(path: str | Path, mask: np.ndarray, geometry: Optional[Geometry] = None) -> Path:
    """Save a uint8 (D, H, W) mask atomically at exactly ``path`` (see :mod:`MedSAM2Lib.atomic`): ``.npz`` with
    keys ``mask`` and ``spacing``, or a volume file with the given geometry. The written file is read back and
    compared with ``mask`` before it replaces ``path``; WriteError (an OSError) says what failed, and ``path`` is
    then as it was."""
    path = check_output(path)
    suffix = mask_suffix(path)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    geometry = geometry or Geometry()
    if suffix == ".npz":
        return write_atomically(path, lambda temporary: _write_npz(temporary, mask, geometry),
                                lambda temporary: _check_npz(temporary, mask))
    return write_atomically(path, lambda temporary: _write_itk(temporary, mask, geometry),
                            lambda temporary: _check_itk(temporary, mask, suffix), suffix=suffix)


def _write_npz(path: Path, mask: np.ndarray, geometry: Geometry) -> None:
    # MedSAM2's npz layout keeps the spacing in array order (z, y, x), as read_volume expects it. An open file,
    # not a name: numpy would append ".npz" to a name ending in ".NPZ".
    spacing = np.asarray(geometry.spacing, dtype=np.float64)[::-1]
    with open(path, "wb") as stream:
        np.savez_compressed(stream, mask=mask, spacing=spacing)


def _check_npz(path: Path, mask: np.ndarray) -> None:
    try:
        with np.load(path, allow_pickle=False) as content:
            written = content["mask"]  # decompresses the whole array
    except NPZ_ERRORS as error:
        raise VolumeError(_unreadable_write(path, error)) from error
    if not np.array_equal(written, mask):
        raise VolumeError("the written file does not read back as the mask")


def _unreadable_write(path: Path, error: BaseException) -> str:
    # ITK reports no error when the disk fills during a compressed write; the file is just cut short.
    if shutil.disk_usage(path.parent).free == 0:
        return "no space left on device (the written file is incomplete)"
    return f"the written file does not read back ({library_reason(error)})"


def _write_itk(path: Path, mask: np.ndarray, geometry: Geometry) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:
        raise VolumeError(library_reason(error)) from error


def _check_itk(path: Path, mask: np.ndarray, suffix: str) -> None:
    import SimpleITK as sitk

    try:
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(path), imageIO=ITK_IO[suffix]))  # decompresses all
    except RuntimeError as error:
        raise VolumeError(_unreadable_write(path, error)) from error
    if written.shape != mask.shape or not np.array_equal(written, mask):
        raise VolumeError("the written file does not read back as the mask")
