"""Make ``mni152_t1_demo.nii.gz`` (the ``medsam2 demo`` scan) from the MNI ICBM152 2009a T1 template.

The template comes with nilearn (``pip download nilearn --no-deps``, then unzip
``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` from the wheel). Steps:

1. reorient to LPS (axial slices along the array's first axis, anterior at the top of a slice, the patient's
   right on its left, as a CT is shown);
2. crop to the brain with a small margin (slices 0..155, rows 18..212, columns 20..176 of the 1 mm grid);
3. average pairs of axial slices: 2 mm slices, half the file and half the propagation time;
4. store as uint8 NIfTI with the matching geometry.

    python Resources/make_demo_scan.py path/to/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CROP = (slice(0, 156), slice(18, 213), slice(20, 177))  # (slices, rows, columns) of the LPS 1 mm grid
OUTPUT = Path(__file__).resolve().parent / "mni152_t1_demo.nii.gz"


def make_demo_scan(template: Path, output: Path = OUTPUT) -> None:
    image = sitk.DICOMOrient(sitk.ReadImage(str(template)), "LPS")
    cropped = sitk.GetArrayFromImage(image)[CROP].astype(np.float64)
    pairs = np.round((cropped[0::2] + cropped[1::2]) / 2).astype(np.uint8)
    scan = sitk.GetImageFromArray(pairs)
    start = [crop.start for crop in CROP[::-1]]  # x, y, z voxel offsets of the crop
    origin = image.TransformContinuousIndexToPhysicalPoint([start[0], start[1], start[2] + 0.5])
    scan.SetOrigin(origin)
    scan.SetSpacing((image.GetSpacing()[0], image.GetSpacing()[1], 2 * image.GetSpacing()[2]))
    scan.SetDirection(image.GetDirection())
    sitk.WriteImage(scan, str(output), useCompression=True)


if __name__ == "__main__":
    make_demo_scan(Path(sys.argv[1]))
    print(f"Wrote {OUTPUT}")
