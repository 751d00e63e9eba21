"""Getting the MedSAM2 weights onto this computer: download verified against the published SHA256, or a
checkpoint file the user already has (offline sites).

Hugging Face stores ``MedSAM2_latest.pt`` with Git LFS. The repository's ``raw`` URL serves the LFS pointer, a
few lines giving the file's SHA256 (``oid sha256:...``) and size; the ``resolve`` URL serves the file itself.
The download goes to a ``.part`` file beside the destination and is renamed into place only once its size and
hash match the pointer, so the destination is never a partial or unverified file. No Qt here: callers pass a
progress callback and a cancel check.

This module names the weights (file name, URL, cache folder) and must import without torch: the Slicer module
uses it before PyTorch is installed. Loading the weights is ``model/checkpoint.py``'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

from .atomic import flush_to_disk, temporary_path

CHECKPOINT_FILENAME = "MedSAM2_latest.pt"
CHECKPOINT_REPOSITORY = "wanglab/MedSAM2"  # Hugging Face model repository
CHECKPOINT_URL = f"https://huggingface.co/{CHECKPOINT_REPOSITORY}/resolve/main/{CHECKPOINT_FILENAME}"

CHUNK_BYTES = 1 << 20
LFS_POINTER_MAX_BYTES = 1024  # the Git LFS specification caps pointer files at 1024 bytes
LFS_SPEC_PREFIX = "https://git-lfs.github.com/spec/"
DEFAULT_TIMEOUT_SECONDS = 30.0  # for connecting and for each read, not for the whole download

# What a user with the file on another path can do instead, for the advice of a failed download: in Slicer (the
# default) and on the command line (CLI_ALTERNATIVE).
SLICER_ALTERNATIVE = "or save it anywhere and select that file as the checkpoint in the MedSAM2 module"
CLI_ALTERNATIVE = "or save it anywhere and give its path to medsam2 segment, batch or demo with --checkpoint PATH"

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes in all)
CancelCheck = Callable[[], bool]


def cache_directory() -> Path:
    """Per-user folder for downloaded weights (``MEDSAM2_CACHE_DIR`` overrides it)."""
    if os.environ.get("MEDSAM2_CACHE_DIR"):
        return Path(os.environ["MEDSAM2_CACHE_DIR"])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medsam2"


def default_checkpoint_path() -> Path:
    return cache_directory() / CHECKPOINT_FILENAME


def missing_checkpoint_message(path: Path) -> str:
    from .model_catalogue import DEFAULT_MODEL, model_of_file  # the catalogue is built on this module

    model = model_of_file(path)
    if model is not None and model != DEFAULT_MODEL:
        return (
            f"No checkpoint of the MedSAM2 model '{model.name}' at {path}. Get it with `medsam2 download --model "
            f"{model.name}` (or download {model.filename} from {model.source().file_url} and save it there), or pass "
            "the path of a checkpoint you already have (--checkpoint PATH)."
        )
    return (
        f"No MedSAM2 checkpoint at {path}. Get it with `medsam2 download -o \"{path}\"` (or download "
        f"{CHECKPOINT_FILENAME} from {CHECKPOINT_URL} and save it there), or pass the path of a checkpoint you "
        "already have (--checkpoint PATH)."
    )


class DownloadError(RuntimeError):
    """The weights could not be downloaded or verified; the message says why and what to do instead."""


class DownloadCancelled(DownloadError):
    """The user stopped the download; nothing was kept."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a checkpoint is published: a Hugging Face style server (tests use a ``file://`` folder)."""

    base_url: str = "https://huggingface.co"
    repository: str = CHECKPOINT_REPOSITORY
    filename: str = CHECKPOINT_FILENAME
    revision: str = "main"

    def _url(self, kind: str) -> str:
        return f"{self.base_url.rstrip('/')}/{self.repository}/{kind}/{self.revision}/{self.filename}"

    @property
    def pointer_url(self) -> str:
        return self._url("raw")

    @property
    def file_url(self) -> str:
        return self._url("resolve")


@dataclass(frozen=True)
class PublishedFile:
    """What the LFS pointer says the file is."""

    sha256: str
    size: int


def parse_lfs_pointer(text: str, url: str) -> PublishedFile:
    """The SHA256 and size in a Git LFS pointer file; DownloadError if ``text`` is not one."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value
    algorithm, _, digest = fields.get("oid", "").partition(":")
    size = fields.get("size", "")
    if not (
        fields.get("version", "").startswith(LFS_SPEC_PREFIX)
        and algorithm == "sha256"
        and len(digest) == 64
        and all(ch in "0123456789abcdef" for ch in digest)
        and size.isdigit()
    ):
        raise DownloadError(
            f"{url} is not a Git LFS pointer with a SHA256 and a size, so the download cannot be verified. "
            "The repository may have changed: download the checkpoint manually and select that file instead."
        )
    return PublishedFile(sha256=digest, size=int(size))


@dataclass(frozen=True)
class ManualAdvice:
    """Where the weights go when the user fetches them by hand, and what else they can do with the file."""

    destination: Path = field(default_factory=default_checkpoint_path)
    alternative: str = SLICER_ALTERNATIVE


def fetch_published_file(
    source: WeightsSource = WeightsSource(), timeout: float = DEFAULT_TIMEOUT_SECONDS,
    advice: Optional[ManualAdvice] = None,
) -> PublishedFile:
    """The SHA256 and size published with the checkpoint, read from its LFS pointer."""
    try:
        with urllib.request.urlopen(source.pointer_url, timeout=timeout) as response:
            content = response.read(LFS_POINTER_MAX_BYTES + 1)
    except (OSError, http.client.HTTPException) as error:
        advice = advice or ManualAdvice()
        raise DownloadError(_unreachable_message(source, source.pointer_url, error, advice)) from error
    # Anything longer, or not text, is not a pointer (a server serving the file itself, an error page).
    try:
        text = content.decode("utf-8") if len(content) <= LFS_POINTER_MAX_BYTES else ""
    except UnicodeDecodeError:
        text = ""
    return parse_lfs_pointer(text, source.pointer_url)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_published_file(path: Path, published: PublishedFile) -> bool:
    """Whether ``path`` holds exactly the published file (the size is compared first: it costs nothing)."""
    path = Path(path)
    return path.is_file() and path.stat().st_size == published.size and file_sha256(path) == published.sha256


def download_checkpoint(
    destination: Optional[Path] = None,
    progress: Optional[ProgressCallback] = None,
    should_cancel: Optional[CancelCheck] = None,
    source: WeightsSource = WeightsSource(),
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    alternative: str = SLICER_ALTERNATIVE,
) -> Path:
    """Download the published checkpoint to ``destination`` (default: the user cache) and return its path.

    A destination that already holds the published file is kept as it is. Otherwise the file is streamed to a
    ``.part`` file, checked against the published size and SHA256, and renamed into place; on failure or
    cancellation the partial file is deleted and DownloadError (DownloadCancelled) is raised. Offline, the
    error says how to put the file at ``destination`` by hand, or ``alternative``. The file gets the permissions
    the umask gives a new file.
    """
    destination = Path(destination) if destination is not None else default_checkpoint_path()
    advice = ManualAdvice(destination, alternative)
    published = fetch_published_file(source, timeout, advice)
    if is_published_file(destination, published):
        return destination
    with _written_atomically(destination) as partial:
        with open(partial, "wb") as file:
            digest = _download_to(file, source, published, progress, should_cancel, timeout, advice)
        if digest != published.sha256:
            raise DownloadError(
                f"The downloaded {source.filename} is not the published file: its SHA256 is {digest}, expected "
                f"{published.sha256}. The file was discarded; try again, or download it manually from "
                f"{source.file_url} and select it."
            )
    return destination


@contextlib.contextmanager
def _written_atomically(target: Path) -> Iterator[Path]:
    """A temporary ``.part`` path beside ``target`` that replaces ``target`` if the block succeeds and is deleted
    otherwise, so ``target`` is never half written (a rename within one folder is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name only: the caller creates the file, with the permissions the umask gives (mkstemp's are 0600).
    partial = temporary_path(target, f"-{target.name}.part")
    try:
        yield partial
        flush_to_disk(partial)  # on disk before it takes the destination's name
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _download_to(
    file: BinaryIO,
    source: WeightsSource,
    published: PublishedFile,
    progress: Optional[ProgressCallback],
    should_cancel: Optional[CancelCheck],
    timeout: float,
    advice: ManualAdvice,
) -> str:
    """Stream the file into ``file``, checking the size as it comes; returns the SHA256 of what was written."""
    digest = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(source.file_url, timeout=timeout) as response:
            while True:
                if should_cancel is not None and should_cancel():
                    raise DownloadCancelled(f"The download of {source.filename} was cancelled; nothing was kept.")
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                done += len(chunk)
                if done > published.size:
                    raise DownloadError(
                        f"{source.file_url} sends more than the published {published.size:,} bytes, so it is not "
                        "the published file; the download was stopped and discarded."
                    )
                file.write(chunk)
                digest.update(chunk)
                if progress is not None:
                    progress(done, published.size)
    except (OSError, http.client.HTTPException) as error:
        if done == 0:
            raise DownloadError(_unreachable_message(source, source.file_url, error, advice)) from error
        raise DownloadError(_interrupted_message(source, done, published.size, error)) from error
    if done < published.size:
        raise DownloadError(_interrupted_message(source, done, published.size, None))
    return digest.hexdigest()


def _unreachable_message(source: WeightsSource, url: str, error: BaseException, advice: ManualAdvice) -> str:
    if isinstance(error, urllib.error.HTTPError):
        problem = f"{url} answered {error.code} {error.reason}"
    else:
        reason = str(getattr(error, "reason", error)) or error.__class__.__name__
        problem = f"{url} cannot be reached ({reason}); the network or the server is unavailable"
    return (
        f"Could not download the MedSAM2 weights: {problem}. On a computer with internet access, download "
        f"{source.filename} from {source.file_url} and copy it to {advice.destination} on this computer "
        f"({advice.alternative})."
    )


def _interrupted_message(source: WeightsSource, done: int, size: int, error: Optional[BaseException]) -> str:
    cause = f" ({error.__class__.__name__}: {error})" if error is not None else ""
    return (
        f"The download of {source.file_url} stopped after {done:,} of {size:,} bytes{cause}. The partial file was "
        f"discarded; try again, or download {source.filename} manually and select it."
    )


def matches_published(
    path: Path, source: WeightsSource = WeightsSource(), timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> Optional[bool]:
    """Whether a local checkpoint is the published file: None when the published hash cannot be fetched
    (offline), False for another file (an older release or a fine-tuned model may be intended)."""
    try:
        published = fetch_published_file(source, timeout)
    except DownloadError:
        return None
    return is_published_file(Path(path), published)


def install_local_checkpoint(path: Path, copy_to_cache: bool = False, cache_folder: Optional[Path] = None) -> Path:
    """Check that a checkpoint the user picked loads (CheckpointError if not) and return the path to use:
    the file itself, or its copy in the cache folder (same name) with ``copy_to_cache``."""
    from .model.checkpoint import read_state_dict  # torch: only here

    path = Path(path)
    read_state_dict(path)
    if not copy_to_cache:
        return path
    target = Path(cache_folder if cache_folder is not None else cache_directory()) / path.name
    if target.exists() and target.samefile(path):
        return target
    with _written_atomically(target) as partial:
        shutil.copyfile(path, partial)
    return target
