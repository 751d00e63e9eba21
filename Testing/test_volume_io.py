"""Reading volumes: NaN and infinite voxels of float NIfTI files, which SimpleITK's reader turns into 0."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAM2Lib.apps.nifti_voxels import float_voxels, non_finite_voxels
from MedSAM2Lib.apps.volume_io import read_scan, read_volume
from MedSAM2Lib.inference.preprocessing import NonFiniteError


def nifti_bytes(volume: np.ndarray, version: int = 1, order: str = "<", slope: float = 0.0, inter: float = 0.0,
                magic: bytes = b"") -> bytes:
    """A single-file NIfTI (header, 4 extension bytes, voxels) laid out by hand from the NIfTI-1 and NIfTI-2
    specifications (nifti1.h, nifti2.h), independently of the code under test. ``volume`` is (D, H, W); the
    file's x runs fastest, as in SimpleITK's arrays."""
    depth, rows, columns = volume.shape
    datatype, bitpix = {np.dtype("float32"): (16, 32), np.dtype("float64"): (64, 64)}[volume.dtype]
    dims = (3, columns, rows, depth, 1, 1, 1, 1)
    pixdim = (1.0, 0.7, 0.8, 2.5, 0.0, 0.0, 0.0, 0.0)
    if version == 1:
        header = bytearray(348)
        struct.pack_into(order + "i", header, 0, 348)  # sizeof_hdr
        struct.pack_into(order + "8h", header, 40, *dims)  # dim
        struct.pack_into(order + "2h", header, 70, datatype, bitpix)
        struct.pack_into(order + "8f", header, 76, *pixdim)
        struct.pack_into(order + "3f", header, 108, 352.0, slope, inter)  # vox_offset, scl_slope, scl_inter
        header[344:348] = magic or b"n+1\0"
    else:
        header = bytearray(540)
        struct.pack_into(order + "i", header, 0, 540)
        header[4:12] = magic or b"n+2\0\r\n\032\n"
        struct.pack_into(order + "2h", header, 12, datatype, bitpix)
        struct.pack_into(order + "8q", header, 16, *dims)
        struct.pack_into(order + "8d", header, 104, *pixdim)
        struct.pack_into(order + "q2d", header, 168, 544, slope, inter)  # vox_offset, scl_slope, scl_inter
    return bytes(header) + b"\0" * 4 + volume.astype(volume.dtype.newbyteorder(order)).tobytes()


def volume_with_non_finite(dtype=np.float32) -> np.ndarray:
    volume = np.arange(4 * 5 * 6, dtype=dtype).reshape(4, 5, 6) - 50
    volume[0, 0, :3] = np.nan
    volume[2, 3, 4] = np.inf
    volume[3, 4, 5] = -np.inf
    return volume


def flat_index(volume: np.ndarray, *index: int) -> int:
    return int(np.ravel_multi_index(index, volume.shape))


def test_simpleitk_itself_reads_nan_and_infinite_nifti_voxels_as_0(tmp_path):
    """Why the voxels are read again: ITK's NIfTI reader zeroes them (niftilib's nifti_read_buffer)."""
    path = tmp_path / "scan.nii"
    sitk.WriteImage(sitk.GetImageFromArray(volume_with_non_finite()), str(path))
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.isfinite(read).all() and read[0, 0, 0] == 0 and read[2, 3, 4] == 0


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".NII.GZ"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_float_nifti_keeps_its_nan_and_infinite_voxels(tmp_path, suffix, dtype):
    volume = volume_with_non_finite(dtype)
    written, path = tmp_path / f"scan{suffix.lower()}", tmp_path / f"scan{suffix}"  # ITK writes lower case only
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.8, 2.5))
    sitk.WriteImage(image, str(written))
    written.rename(path)
    read, geometry = read_volume(path)
    assert read.dtype == dtype and geometry.spacing == pytest.approx((0.7, 0.8, 2.5))
    np.testing.assert_array_equal(read, volume)  # NaN where NaN, and the signs of the infinities


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("compressed", [False, True])
def test_the_voxel_data_is_found_in_either_version_byte_order_and_compression(tmp_path, version, order, compressed):
    volume = volume_with_non_finite(np.float64 if version == 2 else np.float32)
    data = nifti_bytes(volume, version, order)
    path = tmp_path / ("scan.nii.gz" if compressed else "scan.nii")
    path.write_bytes(gzip.compress(data) if compressed else data)
    indices, values = non_finite_voxels(float_voxels(path))
    expected = [flat_index(volume, 0, 0, 0), flat_index(volume, 0, 0, 1), flat_index(volume, 0, 0, 2),
                flat_index(volume, 2, 3, 4), flat_index(volume, 3, 4, 5)]
    assert indices.tolist() == expected
    np.testing.assert_array_equal(values, [np.nan, np.nan, np.nan, np.inf, -np.inf])
    if version == 1:  # this SimpleITK reads NIfTI-1 only
        np.testing.assert_array_equal(read_volume(path)[0], volume)


def test_a_scaled_float_nifti_keeps_its_non_finite_voxels_and_its_scaling(tmp_path):
    volume = volume_with_non_finite()
    path = tmp_path / "scaled.nii"
    path.write_bytes(nifti_bytes(volume, slope=2.0, inter=1.0))
    read, _ = read_volume(path)
    np.testing.assert_array_equal(read, volume * 2 + 1)


def test_a_header_and_image_pair_keeps_its_non_finite_voxels(tmp_path):
    volume = volume_with_non_finite()
    data = nifti_bytes(volume, magic=b"ni1\0")
    header = bytearray(data[:348])
    struct.pack_into("<f", header, 108, 0.0)  # vox_offset: the voxels start the .img file
    (tmp_path / "scan.hdr").write_bytes(bytes(header))
    (tmp_path / "scan.img").write_bytes(data[352:])
    np.testing.assert_array_equal(read_volume(tmp_path / "scan.hdr")[0], volume)


def test_files_without_float_nifti_voxels_are_not_read_again(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16)), str(tmp_path / "int.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(volume_with_non_finite()), str(tmp_path / "float.nrrd"))
    assert float_voxels(tmp_path / "int.nii.gz") is None and float_voxels(tmp_path / "float.nrrd") is None
    np.testing.assert_array_equal(read_volume(tmp_path / "float.nrrd")[0], volume_with_non_finite())


def test_a_nifti_with_nan_is_refused_with_the_npz_sentence_or_replaced(tmp_path):
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume_with_non_finite()), str(path))
    with pytest.raises(NonFiniteError) as refusal:
        read_scan(path)
    assert str(refusal.value) == (f"{path} has 3 NaN and 2 infinite voxels (of 120), which no window can map to an "
                                  "intensity; give --nan-as VALUE to replace them with VALUE (for example the "
                                  "background's intensity).")
    replaced, _ = read_scan(path, nan_as=-7.0)
    expected = volume_with_non_finite()
    expected[~np.isfinite(expected)] = -7.0
    np.testing.assert_array_equal(replaced, expected)
