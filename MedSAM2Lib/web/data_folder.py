"""The images ``medsam2 web`` may open: the one named on the command line, or those of the ``--data`` folder, read
with the command line's own reader (:func:`~MedSAM2Lib.apps.volume_io.read_volume`) and placed in the scene.

The page names an image by its path relative to the folder; :meth:`DataFolder.path_of` resolves it (symbolic
links and ``..`` included) and refuses, with a sentence, anything that is not inside the folder. Images are
files in the formats ``medsam2 segment`` reads (NIfTI, NRRD, MHA/MHD, ``.npz``) and folders holding DICOM files
(read as ``segment`` reads a folder: the series with the most slices).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..apps.volume_io import DETACHED_SUFFIXES, ITK_IO, Geometry, VolumeError, read_volume

# The files read_volume reads (a lone .dcm: with SimpleITK), less the headers whose voxels are in a file they name:
# that name may lie outside the folder.
IMAGE_SUFFIXES = tuple(suffix for suffix in (*ITK_IO, ".npz", ".dcm") if suffix not in DETACHED_SUFFIXES)
# Folders are walked to this depth below the data folder, and the list stops at this many images: a data folder
# given by mistake (a home folder) lists quickly and says it was cut short.
MAX_DEPTH = 4
MAX_IMAGES = 500
DICOM_MAGIC_OFFSET = 128  # a DICOM file's preamble, then "DICM"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class DataFolderError(ValueError):
    """A name the page asked for that is not an image of the data folder; the message says why."""


class DataFolder:
    """``root``: the ``--data`` folder (resolved once: every path handed out lies inside it)."""

    def __init__(self, root: Path) -> None:
        if not Path(root).is_dir():
            raise DataFolderError(f"The data folder {root} is not a folder: give --data a folder of images.")
        self.root = Path(root).resolve()

    def images(self) -> Tuple[List[str], bool]:
        """The images in the folder as paths relative to it ('/'-separated, sorted), and whether the list was cut
        short at :data:`MAX_IMAGES`. Links are followed only to files inside the folder."""
        found: List[str] = []
        for folder, subfolders, files in os.walk(self.root):
            here = Path(folder)
            depth = len(here.relative_to(self.root).parts)
            subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")) if depth < MAX_DEPTH else []
            if _holds_dicom(here, files):  # the data folder itself too: listed as "."
                if all(self._inside(here / name) for name in files):
                    found.append(here.relative_to(self.root).as_posix())
                files = [name for name in files if not _is_dicom_name(name)]  # the series, listed once
            for name in sorted(files):
                if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES) and self._inside(here / name):
                    found.append((here / name).relative_to(self.root).as_posix())
            if len(found) >= MAX_IMAGES:
                return sorted(found)[:MAX_IMAGES], True
        return sorted(found), False

    def path_of(self, name: str) -> Path:
        """The image called ``name`` (relative to the folder, or an absolute path into it), resolved; refused with a
        sentence when it is not inside the folder or not there."""
        if not isinstance(name, str) or not name.strip():
            raise DataFolderError("Choose an image of the data folder.")
        path = (self.root / name).resolve()
        if not self._inside(path):
            raise DataFolderError(f"{name} is not inside the data folder {self.root}: only its images can be opened.")
        if not path.exists():
            raise DataFolderError(f"{name} is not in the data folder {self.root} (any more).")
        if path.is_dir() and not all(self._inside(child) for child in path.iterdir()):
            raise DataFolderError(f"{name} holds links to files outside the data folder {self.root}: only its "
                                  "images can be opened.")
        if path.name.lower().endswith(DETACHED_SUFFIXES):
            raise DataFolderError(f"{name} is a header whose voxels are in a file it names, which may lie outside the "
                                  "data folder: convert it to .nrrd or .nii.gz to open it here.")
        return path

    def name_of(self, path: Path) -> str:
        """``path`` (inside the folder) as the page names it."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def _inside(self, path: Path) -> bool:
        return Path(path).resolve().is_relative_to(self.root)


def _is_dicom_name(name: str) -> bool:
    return name.lower().endswith(".dcm")


def _holds_dicom(folder: Path, files: List[str]) -> bool:
    """True if one of the first files of ``folder`` is a DICOM file (by its name or its "DICM" marker)."""
    for name in sorted(files)[:5]:
        if _is_dicom_name(name):
            return True
        try:
            with open(folder / name, "rb") as stream:
                stream.seek(DICOM_MAGIC_OFFSET)
                if stream.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def read_image(path: Path, on_note=None) -> Tuple[np.ndarray, Geometry]:
    """A scalar 3D volume as ``medsam2 segment`` reads it: (K, J, I) voxels and their LPS geometry. VolumeError
    says why not (NaN or infinite voxels included: no window could show them)."""
    from ..inference.preprocessing import check_finite

    volume, geometry = read_volume(path, on_note=on_note)
    check_finite(volume, "replace them (medsam2 segment --nan-as shows how) before opening it here", name=str(path))
    if volume.shape[0] < 2:
        raise VolumeError(f"{path} has a single slice; MedSAM2 needs a 3D volume.")
    return volume, geometry


def ijk_to_ras(geometry: Geometry) -> np.ndarray:
    """4x4 IJK-to-RAS of a volume with this SimpleITK (LPS) geometry, as Slicer's readers set it."""
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ np.array(geometry.direction).reshape(3, 3) @ np.diag(geometry.spacing)
    matrix[:3, 3] = LPS_TO_RAS @ np.array(geometry.origin)
    return matrix


def add_image(scene, path: Path, name: str, on_note=None):
    """The image at ``path`` as a new scalar volume node called ``name`` (nothing added if it cannot be read)."""
    from ..slicer_glue.scenario import add_volume

    volume, geometry = read_image(path, on_note)
    return add_volume(scene, volume, ijk_to_ras(geometry), name)


def check_image_in(data: Optional[DataFolder], image: Optional[Path]) -> Optional[Path]:
    """The image to open first: ``image`` (which must lie in the data folder when there is one), else the data
    folder's first image, else None (the caller's default). DataFolderError says why not."""
    if data is None:
        return image
    if image is not None:
        if not Path(image).resolve().is_relative_to(data.root):
            raise DataFolderError(f"{image} is not inside the data folder {data.root}: with --data, name one of its "
                                  "images (or leave IMAGE out to open its first).")
        return data.path_of(str(Path(image).resolve()))
    names, _ = data.images()
    if not names:
        raise DataFolderError(f"The data folder {data.root} holds no image medsam2 can read (NIfTI, NRRD, MHA, .npz, "
                              "or a folder of DICOM files).")
    return data.path_of(names[0])
