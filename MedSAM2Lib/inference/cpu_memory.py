"""Keep the C allocator from handing freed tensor memory back to the system between slices (Linux, glibc).

PyTorch allocates CPU tensors with ``malloc``. glibc serves large blocks with a fresh ``mmap`` and returns
them (and the top of the heap) to the system on ``free``, so the next slice touches brand-new pages: a tracked
t512 slice in bfloat16 page-faulted about 50,000 times here (some 200 MB of fresh pages), 15-25% of its time
(``benchmarks/propagation.py`` reports ``minor_page_faults_per_tracked_slice``). glibc raises its thresholds
on its own as blocks are freed, but not reliably that far (then again about 38,000 faults per slice); setting
them once to the most that its own adjustment reaches, 32 MiB for serving a block by ``mmap`` and twice that
for trimming the heap's top, keeps blocks of up to 32 MiB on the heap and lets about 1,300 faults a slice
remain (a trim threshold of 256 MiB faulted no less and kept more memory).

The price is memory: the heap keeps freed blocks, resident, for the next slice, and blocks that stay (each
slice's tracking state) lie between the large ones that come and go, so free pieces that fit no later block
pile up with the slices tracked (``benchmarks/memory_breakdown.py``, 300 x 512 x 512 in exact mode: 89 MiB
free at the first tracked slice, 223 MiB at the last; an earlier run of ``medsam2 segment`` peaked at
1.07 GiB against 0.89 GiB without the setting).

Once tracking is over, :func:`release_free_memory` hands what the heap keeps free back to the system, so that
the memory of the steps after it (the whole-volume mask, the file written and read back) does not come on
top of it.

Other C libraries (macOS, Windows, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import sys

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit systems
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory_for_reuse() -> bool:
    """Set glibc's mmap and trim thresholds for this process; True when they were set (glibc on Linux).

    Both are set together: setting either one turns off glibc's own adjustment of the other.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def release_free_memory() -> bool:
    """Return the pages of every free heap block to the system (glibc's ``malloc_trim(0)``); True when glibc did.

    For the end of a run: the next allocations that reuse these pages fault them in again.
    """
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return bool(malloc_trim(0))


def _glibc_function(name: str):
    """A function of glibc on Linux, None elsewhere (other systems and C libraries)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc
        return None
