"""The C allocator's settings and hand-back of freed memory (MedSAM2Lib/inference/cpu_memory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from MedSAM2Lib.inference.cpu_memory import release_free_memory


def test_free_heap_pages_kept_for_reuse_go_back_to_the_system_when_released():
    """With the predictor's setting, freed blocks of up to 32 MiB stay on the heap, resident (a slice's
    activations); releasing returns their pages, even below a block still in use (the tracking state), without
    touching what is in use. In a new process, since the setting lasts for the process."""
    script = textwrap.dedent("""
        import ctypes
        from MedSAM2Lib.inference.cpu_memory import keep_freed_memory_for_reuse, release_free_memory

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
        libc.free.argtypes = (ctypes.c_void_p,)
        SIZE = 20 << 20

        def rss_mib():
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * 4096 / 2**20

        keep_freed_memory_for_reuse()
        blocks = [libc.malloc(SIZE) for _ in range(3)]
        kept = libc.malloc(SIZE)  # allocated after them: it lies above them on the heap
        for block in blocks + [kept]:
            ctypes.memset(block, 1, SIZE)
        for block in blocks:
            libc.free(block)
        freed = rss_mib()
        released = release_free_memory()
        after = rss_mib()
        value = ctypes.string_at(kept + SIZE - 1, 1)
        print(freed - after, released, value == b"\\x01")
    """)
    if not sys.platform.startswith("linux"):
        assert not release_free_memory()
        return
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    returned_mib, released, intact = run.stdout.split()
    assert released == "True" and intact == "True"
    assert float(returned_mib) > 55  # the three freed 20 MiB blocks, all but page fragments at their edges
