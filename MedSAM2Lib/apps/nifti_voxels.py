"""The NaN and infinite voxels of a float NIfTI file, found in the file's own voxel data.

SimpleITK's NIfTI reader (ITK's NiftiImageIO, built on niftilib) sets every NaN and infinite float voxel to 0 as
it reads, without a word (SimpleITK 2.5 with ITK 5.4; ``test_volume_io`` checks it on the SimpleITK it runs
with), so a scan with such voxels would be segmented as if they were 0. :func:`float_voxels` reads the header
itself (NIfTI-1 or NIfTI-2, either byte order, gzip-compressed or not, one ``.nii`` file or a ``.hdr``/``.img``
pair) and, for float voxels only, :func:`non_finite_voxels` streams the data block a chunk at a time, keeping
just the positions and values of the non-finite ones; ``read_volume`` puts them back. Other files cost one
header read; a float NIfTI costs one more pass over its voxels (decompressing it again), in the memory of one
chunk.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, List, Optional, Tuple

import numpy as np

FLOAT_DATATYPES = {16: "f4", 64: "f8"}  # NIFTI_TYPE_FLOAT32, NIFTI_TYPE_FLOAT64 (the float types ITK reads)
GZIP_MAGIC = b"\x1f\x8b"
CHUNK_VOXELS = 1 << 22  # 16 MB of float32 per read
# Where a .hdr's voxels are, as niftilib looks for them.
PAIR_DATA_ENDINGS = {".hdr": (".img", ".IMG"), ".hdr.gz": (".img.gz", ".IMG.gz"), ".HDR": (".IMG", ".img"),
                     ".HDR.gz": (".IMG.gz", ".img.gz")}


@dataclass(frozen=True)
class FloatVoxels:
    """Where a float NIfTI keeps its voxels: ``count`` values of ``dtype`` from byte ``offset`` of ``data``
    (gzip-compressed or not), x fastest, as SimpleITK's (D, H, W) arrays flatten."""

    data: Path
    offset: int
    dtype: np.dtype
    count: int


def _open(path: Path) -> BinaryIO:
    stream = open(path, "rb")
    if stream.read(2) != GZIP_MAGIC:
        stream.seek(0)
        return stream
    stream.close()
    return gzip.open(path, "rb")


def float_voxels(path: str | Path) -> Optional[FloatVoxels]:
    """Where the voxels of a NIfTI-1 or NIfTI-2 file with float32 or float64 voxels are; None for any other
    file (another format, integer voxels, a header whose voxel file is missing)."""
    path = Path(path)
    try:
        with _open(path) as stream:
            header = stream.read(540)
    except (OSError, EOFError):  # gzip.BadGzipFile is an OSError
        return None
    if len(header) < 348:
        return None
    for order in "<>":
        size = struct.unpack_from(order + "i", header, 0)[0]
        if size == 348 and header[344:347] in (b"n+1", b"ni1"):
            dims = struct.unpack_from(order + "8h", header, 40)
            datatype = struct.unpack_from(order + "h", header, 70)[0]
            offset = int(struct.unpack_from(order + "f", header, 108)[0])
            single_file = header[344:347] == b"n+1"
        elif size == 540 and header[4:7] in (b"n+2", b"ni2"):
            datatype = struct.unpack_from(order + "h", header, 12)[0]
            dims = struct.unpack_from(order + "8q", header, 16)
            offset = struct.unpack_from(order + "q", header, 168)[0]
            single_file = header[4:7] == b"n+2"
        else:
            continue
        if datatype not in FLOAT_DATATYPES or not 1 <= dims[0] <= 7:
            return None
        data = path if single_file else _pair_data(path)
        if data is None:
            return None
        dtype = np.dtype(FLOAT_DATATYPES[datatype]).newbyteorder(order)
        return FloatVoxels(data, offset, dtype, int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]])))
    return None


def _pair_data(header: Path) -> Optional[Path]:
    for ending, data_endings in PAIR_DATA_ENDINGS.items():
        if header.name.endswith(ending):
            stem = header.name[:-len(ending)]
            return next((header.with_name(stem + data) for data in data_endings
                         if header.with_name(stem + data).is_file()), None)
    return None


def non_finite_voxels(voxels: FloatVoxels) -> Tuple[np.ndarray, np.ndarray]:
    """(flat indices, values) of the NaN and infinite voxels of a float NIfTI, in file order (the indices of a
    SimpleITK (D, H, W) array's ``ravel()``). Values are as stored, before any scl_slope/scl_inter scaling
    (which keeps them NaN or infinite)."""
    indices: List[np.ndarray] = [np.empty(0, np.intp)]
    values: List[np.ndarray] = [np.empty(0, voxels.dtype)]
    done = 0
    with _open(voxels.data) as stream:
        stream.seek(voxels.offset)
        while done < voxels.count:
            wanted = min(CHUNK_VOXELS, voxels.count - done)
            chunk = np.frombuffer(stream.read(wanted * voxels.dtype.itemsize), voxels.dtype)
            bad = np.flatnonzero(~np.isfinite(chunk))
            indices.append(bad + done)
            values.append(chunk[bad])
            if len(chunk) < wanted:
                break  # a short file: SimpleITK refused it before this is called
            done += wanted
    return np.concatenate(indices), np.concatenate(values).astype(voxels.dtype.newbyteorder("="))
