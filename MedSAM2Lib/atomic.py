"""Writing files so that a destination is either its old content or the complete new file, never half of one.

Every file the project writes goes through :func:`write_atomically`: the new content goes to a temporary file in
the destination's folder (same file system, so the final rename is atomic), is flushed to disk, checked (a
caller's ``check`` reads it back), and only then renamed over the destination with :func:`os.replace`. On any
error (a full disk, a writer's exception, a failed check, Ctrl+C) the temporary file is removed and the
destination is untouched, byte for byte. A process killed between the write and the rename leaves the
destination untouched and a hidden ``.medsam2-*`` temporary file beside it.

Before any work, a command adds every file it reads and writes to a :class:`FileUses`, which refuses a file
written that is one the command reads or another file it writes (same resolved path, or same inode).

No numpy, SimpleITK or torch here: the volume checks live with the writers (``apps/volume_io.py``).
"""

from __future__ import annotations

import csv
import errno
import io
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence

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


@dataclass(frozen=True)
class FileUse:
    """A file a command reads or writes, and what it is to the command (a noun phrase: "the prompt table")."""

    role: str
    path: Path
    written: bool


class FileUses:
    """The files one command reads and writes, checked as each is added, before any work: a file written must
    not be a file the command reads, nor another file it writes. "The same file" is the same resolved path
    (through ``..`` and symbolic links) or the same device and inode (a hard link, or one file under two
    spellings on a case-insensitive disk). Reading one file in two roles is fine."""

    def __init__(self) -> None:
        self._uses: Dict[object, FileUse] = {}

    def read(self, role: str, path: Path) -> None:
        self._add(FileUse(role, Path(path), written=False))

    def write(self, role: str, path: Path, fix: str = "choose another name") -> Path:
        """Add a file the command writes; :class:`WriteError` saying which file it would replace, and ``fix``,
        if it is one the command reads or writes otherwise (then it is not added). Returns ``path``."""
        self._add(FileUse(role, Path(path), written=True), fix)
        return Path(path)

    def _add(self, use: FileUse, fix: str = "choose another name") -> None:
        keys = _identities(use.path)
        for key in keys:
            other = self._uses.get(key)
            if other is not None and (use.written or other.written):
                written, replaced = (use, other) if use.written else (other, use)
                raise WriteError(_clash(written, replaced, same_path=key == keys[0], fix=fix))
        for key in keys:
            self._uses.setdefault(key, use)


def _identities(path: Path) -> list:
    """The resolved path, and the (device, inode) of an existing file."""
    resolved = path.resolve()
    keys: list = [("path", os.path.normcase(str(resolved)))]
    try:
        status = resolved.stat()
    except OSError:
        return keys  # not there yet: only its path can be compared
    return keys + [("inode", status.st_dev, status.st_ino)]


def _clash(written: FileUse, other: FileUse, same_path: bool, fix: str) -> str:
    what = other.role if same_path else f"the same file as {other.path}, {other.role}"
    if other.written:
        return (f"Cannot write {written.role} to {written.path}: that is {'also ' if same_path else ''}{what}, and "
                f"one would replace the other; {fix}.")
    return f"Cannot write {written.role} to {written.path}: that is {what}, which it would replace; {fix}."


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
