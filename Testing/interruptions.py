"""Test helpers that really interrupt a write: a small full file system, a full-disk error injected into a writer,
and a process killed between the write and the rename.

``small_filesystem`` mounts a tmpfs of a few hundred kilobytes where the test runs as root with mount permission
(this machine, CI's containers); elsewhere it skips, and the injected ``OSError(ENOSPC)`` tests still run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def small_filesystem(folder: Path, kilobytes: int) -> Iterator[Path]:
    """``folder`` as the mount point of a tmpfs of ``kilobytes``; skips the test when mounting is not permitted."""
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected ENOSPC tests cover this case)")
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte with a ballast file."""
    with open(folder / "ballast", "wb", buffering=0) as stream:
        for chunk in (b"\0" * 4096, b"\0"):
            try:
                while True:
                    stream.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC


def run_killed_at_rename(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (Python) in a subprocess whose ``os.replace`` kills the process with SIGKILL: the writes
    before the rename happen, the rename never does. Returns the finished process (killed by signal 9)."""
    prelude = (
        "import os, signal\n"
        "def _killed(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.replace = _killed\n"
    )
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "Testing"),
                                                                os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", prelude + script], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=300)
