"""Writing files so that a destination is either its old content or the complete new file, never half of one.

Every file the project writes goes through :func:`write_atomically`: the new content goes to a temporary file in
the destination's folder (same file system, so the final rename is atomic), is flushed to disk, checked (a
caller's ``check`` reads it back), and only then renamed over the destination with :func:`os.replace`. On any
error (a full disk, a writer's exception, a failed check, Ctrl+C) the temporary file is removed and the
destination is untouched, byte for byte. A process killed between the write and the rename leaves the
destination untouched and a hidden ``.medsam2-*`` temporary file beside it.

No numpy, SimpleITK or torch here: the volume checks live with the writers (``apps/volume_io.py``).
"""

from __future__ import annotations

import csv
import errno
import io
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

TEMPORARY_PREFIX = ".medsam2-"

Writer = Callable[[Path], None]  # writes the whole file at the path it is given
Check = Callable[[Path], None]  # raises (any exception, with a sentence) when the file at the path is not right


class WriteError(OSError):
    """A file could not be written; the message is one sentence and says the destination was left as it was."""


def temporary_path(destination: Path, suffix: Optional[str] = None) -> Path:
    """A hidden, unused name beside ``destination`` that ends with the destination's whole name (or ``suffix``),
    so writers that choose the format by the extension (SimpleITK: ``.nii.gz``, ``.nrrd``) see it."""
    ending = suffix if suffix is not None else f"-{destination.name}"
    return destination.with_name(f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}{ending}")


def check_writable(path: Path) -> Path:
    """Refuse, before any work, a destination that cannot be written: a folder, or a path whose nearest existing
    folder is a file or not writable (folders still missing are created by :func:`write_atomically`)."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path} is a folder; name a file to write.")
    existing = next(folder for folder in (path.parent.resolve(), *path.parent.resolve().parents) if folder.exists())
    if not existing.is_dir():
        raise WriteError(f"Cannot write {path}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"Cannot write {path}: the folder {existing} is not writable.")
    return path


def write_atomically(path: Path, write: Writer, check: Optional[Check] = None, suffix: Optional[str] = None) -> Path:
    """Write ``path`` through ``write(temporary path)``, flush it to disk, ``check(temporary path)`` it, and rename
    it over ``path``; returns ``path``. ``suffix``: how the temporary name ends, when the writer needs another
    spelling of the extension than the destination's (ITK accepts ``.nii.gz`` but not ``.NII.GZ``).

    The folder is created when missing. An existing destination keeps its permission bits. Raises
    :class:`WriteError` (an OSError) with one sentence when anything fails; ``path`` is then exactly what it was
    before (absent if it was absent) and no temporary file is left. KeyboardInterrupt cleans up the same way and
    propagates as it is."""
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(_failure(path, error, existed)) from error
    temporary = temporary_path(path, suffix)
    try:
        write(temporary)
        if not temporary.is_file():
            raise FileNotFoundError(errno.ENOENT, "the writer made no file", str(temporary))
        flush_to_disk(temporary)
        if check is not None:
            check(temporary)
        if existed:
            shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except Exception as error:
        _remove(temporary)
        raise WriteError(_failure(path, error, existed)) from error
    except BaseException:  # KeyboardInterrupt, SystemExit: clean up and let it go on
        _remove(temporary)
        raise
    _flush_folder(path.parent)
    return path


def write_text_atomically(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """``text`` as the whole content of ``path``, written atomically (checked: it reads back identical)."""
    data = text.encode(encoding)

    def write(temporary: Path) -> None:
        temporary.write_bytes(data)

    def check(temporary: Path) -> None:
        if temporary.read_bytes() != data:
            raise WriteError(f"{temporary} does not read back as written")

    return write_atomically(path, write, check)


def write_csv_atomically(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """A CSV file (``header`` then ``rows``, UTF-8, the csv module's default dialect), written atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomically(path, buffer.getvalue())


def flush_to_disk(path: Path) -> None:
    """fsync the file's data (the writer may have closed it without syncing)."""
    descriptor = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _flush_folder(folder: Path) -> None:
    """fsync the folder so the rename itself is on disk (POSIX; Windows cannot open folders and needs nothing)."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse fsync on folders; the file itself is already on disk
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # absent already, or nothing more can be done: the destination is intact either way


def _failure(path: Path, error: BaseException, existed: bool) -> str:
    kept = "the existing file was left unchanged" if existed else "nothing was written"
    return f"Could not write {path}: {reason(error)}; {kept}."


def reason(error: BaseException) -> str:
    """One line saying why ``error`` happened: the OS's words for an errno (no space left on device, permission
    denied), else the last line of the message (SimpleITK's and ITK's messages end with the cause)."""
    if isinstance(error, OSError) and error.errno is not None:
        return (error.strerror or os.strerror(error.errno)).rstrip(".").lower()
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].rstrip(".") if lines else type(error).__name__
