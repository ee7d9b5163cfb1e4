"""codegen.files: atomic writes with replace and first-writer-wins semantics, and the reader
that tells a missing file from a present one."""

from __future__ import annotations

import os
import stat
import sys
import threading

import pytest

from codegen.files import NEW_FILE_MODE, atomic_write, read_if_exists


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("data, expected", [
    ('{"a": "é"}', '{"a": "é"}'.encode()),  # text: UTF-8
    ("line\r\nnext\n", b"line\r\nnext\n"),  # no newline translation
    (b"\x00\xff", b"\x00\xff"),
    (bytearray(b"ab"), b"ab"),
    ([b"head", b"", b"tail"], b"headtail"),  # chunks, as a checkpoint streams its arrays
    (iter([b"x"] * 3), b"xxx"),
])
def test_writes_exactly_the_bytes(tmp_path, data, expected):
    path = tmp_path / "f"
    assert atomic_write(path, data) is True
    assert path.read_bytes() == expected
    assert read_if_exists(path, encoding=None) == expected
    assert os.listdir(tmp_path) == ["f"]  # no temporary file left behind


def test_replace_is_the_default_and_the_last_writer_wins(tmp_path):
    path = tmp_path / "index.json"
    assert atomic_write(str(path), "old") and atomic_write(path, "new")
    assert read_if_exists(path) == "new"


def test_exclusive_leaves_an_existing_file_alone(tmp_path):
    path = tmp_path / "entry.py"
    assert atomic_write(path, "first", exclusive=True) is True
    assert atomic_write(path, "second", exclusive=True) is False
    assert read_if_exists(path) == "first" and os.listdir(tmp_path) == ["entry.py"]


def test_exclusive_writers_racing_agree_on_one_winner(tmp_path):
    path = tmp_path / "entry"
    results: dict[int, bool] = {}
    start = threading.Barrier(8)

    def write(k: int) -> None:
        start.wait()
        results[k] = atomic_write(path, f"writer {k}" * 1000, exclusive=True)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (winner,) = [k for k, won in results.items() if won]
    assert read_if_exists(path) == f"writer {winner}" * 1000
    assert os.listdir(tmp_path) == ["entry"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_mode_explicit_kept_or_default(tmp_path):
    private = tmp_path / "private"
    atomic_write(private, "x", mode=0o600)
    assert _mode(private) == 0o600
    os.chmod(private, 0o640)
    atomic_write(private, "y")  # a replaced file keeps its mode
    assert _mode(private) == 0o640
    atomic_write(tmp_path / "new", "z")
    assert _mode(tmp_path / "new") == NEW_FILE_MODE


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint"
    atomic_write(path, b"intact")

    def chunks():
        yield b"half of it"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, chunks())
    assert path.read_bytes() == b"intact" and os.listdir(tmp_path) == ["checkpoint"]


def test_read_if_exists_says_none_only_for_a_missing_file(tmp_path):
    assert read_if_exists(tmp_path / "missing") is None
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        read_if_exists(tmp_path / "binary")
    with pytest.raises(IsADirectoryError if sys.platform != "win32" else PermissionError):
        read_if_exists(tmp_path)
