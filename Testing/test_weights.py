"""Weights download and local checkpoints, against a Hugging Face style folder served through file:// URLs."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from MedSAM2Lib.model.checkpoint import CheckpointError
from MedSAM2Lib.weights import (
    CHECKPOINT_FILENAME,
    CHECKPOINT_URL,
    CHUNK_BYTES,
    DownloadCancelled,
    DownloadError,
    PublishedFile,
    WeightsSource,
    download_checkpoint,
    install_local_checkpoint,
    matches_published,
    parse_lfs_pointer,
)

from conftest import DATA

CONTENT = os.urandom(2 * CHUNK_BYTES + 12345)  # several chunks, so progress and cancel happen half way


def lfs_pointer(sha256: str, size: int) -> str:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


def publish(server: Path, content: bytes, pointer: str | bytes | None = None,
            filename: str = CHECKPOINT_FILENAME) -> WeightsSource:
    """Lay out ``server`` as Hugging Face does: raw/ holds the LFS pointer, resolve/ the file."""
    source = WeightsSource(base_url=server.as_uri(), filename=filename)
    pointer = pointer if pointer is not None else lfs_pointer(hashlib.sha256(content).hexdigest(), len(content))
    pointer_bytes = pointer.encode() if isinstance(pointer, str) else pointer
    for kind, data in (("raw", pointer_bytes), ("resolve", content)):
        path = server / source.repository / kind / source.revision / source.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return source


@pytest.fixture
def server(tmp_path) -> Path:
    return tmp_path / "server"


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def test_default_source_is_the_official_checkpoint():
    assert WeightsSource().file_url == CHECKPOINT_URL
    assert WeightsSource().pointer_url == "https://huggingface.co/wanglab/MedSAM2/raw/main/MedSAM2_latest.pt"


def test_download_verifies_and_reports_progress(server, cache):
    source = publish(server, CONTENT)
    reports = []
    path = download_checkpoint(cache / "MedSAM2_latest.pt", progress=lambda *report: reports.append(report),
                               source=source)
    assert path.read_bytes() == CONTENT
    assert reports[-1] == (len(CONTENT), len(CONTENT))
    assert [done for done, _ in reports] == sorted(done for done, _ in reports) and len(reports) == 3
    assert sorted(os.listdir(cache)) == ["MedSAM2_latest.pt"]


def test_file_already_present_is_kept_without_downloading(server, cache):
    source = publish(server, CONTENT)
    destination = cache / "MedSAM2_latest.pt"
    download_checkpoint(destination, source=source)
    before = destination.stat().st_mtime_ns
    (server / source.repository / "resolve" / source.revision / source.filename).unlink()  # a download would fail
    assert download_checkpoint(destination, source=source) == destination
    assert destination.stat().st_mtime_ns == before


def test_a_different_file_at_the_destination_is_replaced(server, cache):
    source = publish(server, CONTENT)
    destination = cache / "MedSAM2_latest.pt"
    cache.mkdir()
    destination.write_bytes(b"an older download")
    download_checkpoint(destination, source=source)
    assert destination.read_bytes() == CONTENT


def test_hash_mismatch_discards_the_file(server, cache):
    wrong_hash = hashlib.sha256(b"something else").hexdigest()
    source = publish(server, CONTENT, lfs_pointer(wrong_hash, len(CONTENT)))
    with pytest.raises(DownloadError, match=rf"SHA256 is {hashlib.sha256(CONTENT).hexdigest()}, expected "
                                            rf"{wrong_hash}\. The file was discarded"):
        download_checkpoint(cache / "MedSAM2_latest.pt", source=source)
    assert os.listdir(cache) == []


def test_hash_mismatch_keeps_the_previous_file(server, cache):
    source = publish(server, CONTENT, lfs_pointer("0" * 64, len(CONTENT)))
    destination = cache / "MedSAM2_latest.pt"
    cache.mkdir()
    destination.write_bytes(b"previous")
    with pytest.raises(DownloadError, match="not the published file"):
        download_checkpoint(destination, source=source)
    assert os.listdir(cache) == ["MedSAM2_latest.pt"] and destination.read_bytes() == b"previous"


def test_larger_file_than_published_is_stopped(server, cache):
    source = publish(server, CONTENT, lfs_pointer(hashlib.sha256(CONTENT).hexdigest(), CHUNK_BYTES + 1))
    with pytest.raises(DownloadError, match=f"sends more than the published {CHUNK_BYTES + 1:,} bytes"):
        download_checkpoint(cache / "MedSAM2_latest.pt", source=source)
    assert os.listdir(cache) == []


def test_truncated_download_is_discarded(server, cache):
    source = publish(server, CONTENT[:CHUNK_BYTES], lfs_pointer(hashlib.sha256(CONTENT).hexdigest(), len(CONTENT)))
    with pytest.raises(DownloadError, match=f"stopped after {CHUNK_BYTES:,} of {len(CONTENT):,} bytes. The partial "
                                            "file was discarded"):
        download_checkpoint(cache / "MedSAM2_latest.pt", source=source)
    assert os.listdir(cache) == []


def test_unreachable_server_says_how_to_install_manually(server, cache, monkeypatch):
    monkeypatch.setenv("MEDSAM2_CACHE_DIR", str(cache))
    with pytest.raises(DownloadError, match=r"cannot be reached .* the network or the server is unavailable\. "
                                            r"On a computer with internet access, download MedSAM2_latest\.pt from ") as error:
        download_checkpoint(cache / "MedSAM2_latest.pt", source=WeightsSource(base_url=server.as_uri()))
    assert f"copy it to {cache / 'MedSAM2_latest.pt'} on this computer" in str(error.value)
    assert " here " not in str(error.value) and "select that file as the checkpoint in the MedSAM2 module" in str(error.value)
    assert not cache.exists()


def test_missing_file_behind_a_valid_pointer(server, cache):
    source = publish(server, CONTENT)
    (server / source.repository / "resolve" / source.revision / source.filename).unlink()
    with pytest.raises(DownloadError, match="resolve/main/MedSAM2_latest.pt cannot be reached"):
        download_checkpoint(cache / "MedSAM2_latest.pt", source=source)
    assert os.listdir(cache) == []


def test_cancel_half_way_leaves_nothing(server, cache):
    source = publish(server, CONTENT)
    reports = []
    with pytest.raises(DownloadCancelled, match="cancelled; nothing was kept"):
        download_checkpoint(cache / "MedSAM2_latest.pt", progress=lambda *report: reports.append(report),
                            should_cancel=lambda: len(reports) == 1, source=source)
    assert reports == [(CHUNK_BYTES, len(CONTENT))]
    assert os.listdir(cache) == []


@pytest.mark.parametrize("pointer", [
    "",
    "<html>Repository not found</html>",
    "version https://git-lfs.github.com/spec/v1\nsize 12\n",  # no oid
    "version https://git-lfs.github.com/spec/v1\noid md5:0123456789abcdef0123456789abcdef\nsize 12\n",
    "version https://git-lfs.github.com/spec/v1\noid sha256:" + "g" * 64 + "\nsize 12\n",
    "version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 63 + "\nsize 12\n",
    "version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize twelve\n",
    "oid sha256:" + "a" * 64 + "\nsize 12\n",  # no version line
])
def test_malformed_pointer_is_refused(server, cache, pointer):
    source = publish(server, CONTENT, pointer)
    with pytest.raises(DownloadError, match="is not a Git LFS pointer with a SHA256 and a size"):
        download_checkpoint(cache / "MedSAM2_latest.pt", source=source)
    assert not cache.exists()


@pytest.mark.parametrize("served", [b"\x80\x02binary", CONTENT], ids=["not text", "the file itself"])
def test_pointer_url_serving_binary_is_refused(server, cache, served):
    source = publish(server, CONTENT, pointer=served)
    with pytest.raises(DownloadError, match="is not a Git LFS pointer"):
        download_checkpoint(cache / "MedSAM2_latest.pt", source=source)


def test_pointer_parsing():
    digest = hashlib.sha256(b"x").hexdigest()
    assert parse_lfs_pointer(lfs_pointer(digest, 1), "url") == PublishedFile(digest, 1)


def test_local_file_against_the_published_hash(server, tmp_path):
    source = publish(server, CONTENT)
    same, other = tmp_path / "same.pt", tmp_path / "other.pt"
    same.write_bytes(CONTENT)
    other.write_bytes(CONTENT[:-1] + b"\0")
    assert matches_published(same, source) is True
    assert matches_published(other, source) is False
    assert matches_published(same, WeightsSource(base_url=(tmp_path / "offline").as_uri())) is None


def test_local_checkpoint_is_checked_and_used_in_place(tmp_path):
    checkpoint = DATA / "medsam2_tiny_random_seed0.pt"
    assert install_local_checkpoint(checkpoint) == checkpoint


def test_local_checkpoint_copied_into_the_cache(tmp_path, cache):
    picked = tmp_path / "usb" / "MedSAM2_latest.pt"
    picked.parent.mkdir()
    shutil.copyfile(DATA / "medsam2_tiny_random_seed0.pt", picked)
    installed = install_local_checkpoint(picked, copy_to_cache=True, cache_folder=cache)
    assert installed == cache / "MedSAM2_latest.pt"
    assert installed.read_bytes() == picked.read_bytes() and os.listdir(cache) == ["MedSAM2_latest.pt"]
    assert install_local_checkpoint(installed, copy_to_cache=True, cache_folder=cache) == installed


def test_unusable_local_checkpoint_is_refused_and_not_copied(tmp_path, cache):
    picked = tmp_path / "notes.pt"
    picked.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch file"):
        install_local_checkpoint(picked, copy_to_cache=True, cache_folder=cache)
    assert not cache.exists()


def test_download_command(server, cache, capsys):
    from MedSAM2Lib.apps.cli import main

    publish(server, CONTENT)
    target = cache / "MedSAM2_latest.pt"
    assert main(["download", "-o", str(target), "--mirror", server.as_uri()]) == 0
    assert target.read_bytes() == CONTENT
    captured = capsys.readouterr()
    assert "Downloading MedSAM2 weights 3/3 (100%" in captured.err  # MiB; not a terminal, so a line per tenth
    assert f"Verified MedSAM2 weights 'latest' (MedSAM2_latest.pt, published SHA256) at {target}" in captured.out
    (server / "wanglab").rename(server / "moved")
    assert main(["download", "-o", str(cache / "other.pt"), "--mirror", server.as_uri()]) == 1
    assert "medsam2: error:" in capsys.readouterr().err and not (cache / "other.pt").exists()


def test_offline_download_command_advises_its_own_output_path(tmp_path, capsys):
    from MedSAM2Lib.apps.cli import main

    target = tmp_path / "models" / "x.pt"
    assert main(["download", "-o", str(target), "--mirror", (tmp_path / "offline").as_uri()]) == 1
    error = capsys.readouterr().err
    assert error.startswith("medsam2: error: Could not download the MedSAM2 weights: ") and "cannot be reached" in error
    assert f"copy it to {target} on this computer (or save it anywhere and give its path to medsam2 segment, batch " \
           "or demo with --checkpoint PATH)." in error
    assert "MedSAM2 module" not in error and not target.parent.exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_downloaded_file_honours_the_umask(server, cache, umask, mode):
    """Others on a shared computer read the weights when the umask lets them, as any file the user makes."""
    source = publish(server, CONTENT)
    previous = os.umask(umask)
    try:
        path = download_checkpoint(cache / "MedSAM2_latest.pt", source=source)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_a_download_to_a_folder_is_refused_before_downloading(server, cache, capsys, monkeypatch):
    from MedSAM2Lib import weights
    from MedSAM2Lib.apps.cli import main

    def no_network(*args, **kwargs):
        raise AssertionError("the download started before its destination was checked")

    monkeypatch.setattr(weights, "fetch_published_file", no_network)
    cache.mkdir()
    assert main(["download", "-o", str(cache), "--mirror", server.as_uri()]) == 1
    assert capsys.readouterr().err == f"medsam2: error: {cache} is a folder; name a file to write.\n"
