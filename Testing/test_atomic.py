"""MedSAM2Lib.atomic: the destination is the old file or the complete new one, whatever interrupts the write."""

from __future__ import annotations

import errno
import os

import pytest

from MedSAM2Lib.atomic import TEMPORARY_PREFIX, WriteError, write_atomically, write_csv_atomically

from interruptions import fill, run_killed_at_rename, small_filesystem

OLD = b"the finished output of an earlier run\n"


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(TEMPORARY_PREFIX))


def test_a_write_replaces_the_destination_and_leaves_no_temporary_file(tmp_path):
    destination = tmp_path / "sub" / "out.nii.gz"
    seen = []

    def write(temporary):
        seen.append(temporary)
        temporary.write_bytes(b"new")

    assert write_atomically(destination, write, check=lambda temporary: seen.append(temporary.read_bytes())) == destination
    assert destination.read_bytes() == b"new"
    assert seen[0].parent == destination.parent and seen[0].name.endswith("-out.nii.gz")  # the writer sees the extension
    assert seen[1] == b"new" and leftovers(destination.parent) == []


def test_an_existing_file_keeps_its_permissions(tmp_path):
    destination = tmp_path / "out.csv"
    destination.write_bytes(OLD)
    destination.chmod(0o640)
    write_atomically(destination, lambda temporary: temporary.write_bytes(b"new"))
    assert destination.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("failure", ["writer", "check", "no file"])
def test_a_failure_leaves_the_existing_file_byte_for_byte(tmp_path, failure):
    destination = tmp_path / "out.npz"
    destination.write_bytes(OLD)

    def write(temporary):
        if failure != "no file":
            temporary.write_bytes(b"half a fi")
        if failure == "writer":
            raise RuntimeError("ITK ERROR: ImageFileWriter(0x1): Could not create IO object\n  for writing file x")

    def check(temporary):
        if failure == "check":
            raise ValueError(f"{temporary} does not decompress.")

    with pytest.raises(WriteError) as raised:
        write_atomically(destination, write, check)
    assert destination.read_bytes() == OLD and leftovers(tmp_path) == []
    message = str(raised.value)
    assert message.startswith(f"Could not write {destination}: ") and message.endswith("the existing file was left unchanged.")
    assert "\n" not in message
    if failure == "writer":
        assert "for writing file x" in message  # the last line of ITK's message: its cause


def test_an_injected_full_disk_is_one_sentence_and_loses_nothing(tmp_path):
    destination = tmp_path / "summary.csv"
    destination.write_bytes(OLD)

    def write(temporary):
        with open(temporary, "wb") as stream:
            stream.write(b"image,slice\n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temporary))

    with pytest.raises(WriteError, match=r"^Could not write .*summary.csv: no space left on device; the existing "
                                         r"file was left unchanged\.$"):
        write_atomically(destination, write)
    assert destination.read_bytes() == OLD and leftovers(tmp_path) == []


def test_a_new_file_that_fails_is_not_created(tmp_path):
    with pytest.raises(WriteError, match="nothing was written"):
        write_atomically(tmp_path / "new.csv", lambda temporary: 1 / 0)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_the_write_cleans_up_and_propagates(tmp_path):
    destination = tmp_path / "out.csv"
    destination.write_bytes(OLD)

    def write(temporary):
        temporary.write_bytes(b"part")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(destination, write)
    assert destination.read_bytes() == OLD and leftovers(tmp_path) == []


def test_a_real_full_file_system_keeps_the_existing_file(tmp_path):
    with small_filesystem(tmp_path / "disk", kilobytes=64) as disk:
        destination = disk / "out.csv"
        destination.write_bytes(OLD)
        with pytest.raises(WriteError, match="no space left on device; the existing file was left unchanged"):
            write_csv_atomically(destination, ["a"], [[os.urandom(200).hex()] for _ in range(1000)])
        assert destination.read_bytes() == OLD and leftovers(disk) == []
        fill(disk)
        with pytest.raises(WriteError, match="no space left on device"):
            write_csv_atomically(destination, ["a"], [["1"]])
        assert destination.read_bytes() == OLD and leftovers(disk) == []


def test_a_process_killed_between_write_and_rename_leaves_the_destination_intact(tmp_path):
    destination = tmp_path / "out.csv"
    destination.write_bytes(OLD)
    result = run_killed_at_rename(
        "from MedSAM2Lib.atomic import write_csv_atomically\n"
        "write_csv_atomically('out.csv', ['a', 'b'], [[1, 2]])\n",
        tmp_path,
    )
    assert result.returncode == -9, result.stderr
    assert destination.read_bytes() == OLD
    (temporary,) = leftovers(tmp_path)  # the new file was complete, only the rename was missing
    assert (tmp_path / temporary).read_bytes() == b"a,b\r\n1,2\r\n"


def test_csv_rows_are_written_as_the_csv_module_writes_them(tmp_path):
    path = write_csv_atomically(tmp_path / "t.csv", ["case", "note"], [["a", "x, y"], ["b", 'say "hi"']])
    assert path.read_bytes() == b'case,note\r\na,"x, y"\r\nb,"say ""hi"""\r\n'
