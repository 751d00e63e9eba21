"""Synthetic DICOM series written with SimpleITK, for tests that give a folder of DICOM files as the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

STUDY_UID = "1.2.826.0.1.3680043.2.1125.7"
SPACING = (0.7, 0.8, 2.5)  # x, y, z in mm
ORIGIN = (-10.0, 5.0, 20.0)


def write_dicom_series(folder: Path, volume: np.ndarray, series_uid: str, prefix: str = "slice") -> None:
    """One CT file per slice of a (D, H, W) int16 volume in ``folder``, axial, slice k at z = ORIGIN z + k * 2.5,
    files named ``<prefix><k>.dcm``; several series may share the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep the UIDs set below, so the series are told apart by them
    for k, pixels in enumerate(np.asarray(volume, np.int16)):
        image = sitk.GetImageFromArray(pixels)
        image.SetSpacing(SPACING[:2])
        tags = {
            "0008|0060": "CT",
            "0020|000d": STUDY_UID,
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(str(value) for value in (ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[2])),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{SPACING[1]}\\{SPACING[0]}",  # row spacing (y), then column spacing (x)
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(image)
