"""Files written whole or not at all, and read back as "missing" or their contents.

`atomic_write` writes a temporary file beside the target, fsyncs it, then moves it into
place in one step: a reader, or a process killed halfway, sees the old file or the new
one, never a torn mix.  Two semantics, one helper:

- replace (the default): the new file takes the place of any old one (the last writer
  wins): an index entry rewritten as JSON, a checkpoint rewritten as bytes;
- ``exclusive=True``: the first writer wins (a hard link refuses an existing name), and a
  later one leaves that file alone: a cache entry named by a hash of its contents.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "entry.json")
    >>> read_if_exists(path) is None
    True
    >>> atomic_write(path, '{"step": 1}'), atomic_write(path, b'{"step": 2}')
    (True, True)
    >>> atomic_write(path, "{}", exclusive=True), read_if_exists(path)
    (False, '{"step": 2}')
    >>> atomic_write(path, [b"\\x00", b"\\x01"]), read_if_exists(path, encoding=None)
    (True, b'\\x00\\x01')
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

NEW_FILE_MODE = 0o644  # what a checkpoint gets when none is there to keep the mode of


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Iterable[bytes], *,
                 exclusive: bool = False, mode: int | None = None) -> bool:
    """Write ``data`` to ``path`` atomically; False only if ``exclusive`` and ``path`` exists.

    ``data`` is bytes, text (written as UTF-8, no newline translation) or an iterable of
    byte chunks (a large file need not be joined in memory first).  ``mode`` gives the
    file's permission bits; by default a replaced file keeps its own and a new one gets
    0o644.  The folder is fsynced too, best effort, so the new name survives a crash.

    With ``exclusive``, on a file system without hard links the rename replaces instead,
    so writers of one path must then write equal bytes (true of a content-named cache).
    """
    path = Path(path)
    if isinstance(data, str):
        data = (data.encode("utf-8"),)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = (data,)
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if not exclusive:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and refuses an existing name: first writer wins
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system: equal bytes, so replace
                os.replace(tmp, path)
        _sync_folder(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort (Windows cannot open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_if_exists(path: str | os.PathLike[str],
                   encoding: str | None = "utf-8") -> str | bytes | None:
    """The contents of ``path`` as text (bytes with ``encoding=None``); None if it does not
    exist.  Any other failure (unreadable, not valid text) raises: the caller decides
    whether that is damage to repair or an error to report."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return data if encoding is None else data.decode(encoding)
