"""Generated source on disk, named by its hash, imported so Numba's ``cache=True`` works.

``cache=True`` cannot cache ``exec``'d code, so each compiled unit is a real module file
in a cache folder (``$SYMNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/symnet``, else
``~/.cache/symnet``).  Its name is a hash of the source and every compile option, so a
second process finds the same file and Numba loads the machine code instead of compiling.
Files are written atomically (`codegen.files.atomic_write`: temporary file, fsync, then a
hard link that fails if the entry exists): of several processes compiling one module at
once the first writer wins, the others find its intact file, and a torn file is never seen.
A damaged entry (ours or Numba's index and machine code beside it) is detected, rebuilt and
reported with a warning.
The folder is a code path: its modules are imported, and Python's bytecode and Numba's index
files (pickles) in its ``__pycache__`` are loaded.  So it is created mode 0o700, and a folder
that another user owns or can write to is refused (`UnsafeCacheDir`), never used as is.

Example:
    >>> import tempfile, os
    >>> os.environ["SYMNET_CACHE_DIR"] = tempfile.mkdtemp()
    >>> load_module("def f():\\n    return 42\\n", {"dtype": "float32"}).f()
    42
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import stat
import sys
import warnings
from pathlib import Path
from types import ModuleType

import llvmlite
import numba
import numpy as np

from codegen.files import atomic_write, read_if_exists

FORMAT = "1"


class UnsafeCacheDir(PermissionError):
    """The cache folder, or its ``__pycache__``, is another user's or writable by others."""


def cache_dir() -> Path:
    """The folder for generated modules: created private if missing, refused if not private."""
    root = os.environ.get("SYMNET_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        root = os.path.join(base, "symnet")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_private(path, path)
    # Made here, not by Python or Numba under the umask, the __pycache__ is private too. An
    # older one made under umask 002 is harmless inside a folder no one else can enter.
    (path / "__pycache__").mkdir(exist_ok=True, mode=0o700)
    if path.stat().st_mode & (stat.S_IXGRP | stat.S_IXOTH):
        _check_private(path / "__pycache__", path)
    return path


def _check_private(folder: Path, root: Path) -> None:
    """Refuse a folder that another user owns or can write to: what they put there would run
    in this process (a planted module, bytecode or Numba pickle)."""
    if not hasattr(os, "geteuid"):  # Windows: no POSIX owner and mode bits to check
        return
    info = folder.stat()
    if info.st_uid != os.geteuid():
        problem = f"is owned by another user (uid {info.st_uid}, not {os.geteuid()})"
        fix = "use a folder of your own"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
        fix = f"run `chmod -R go-w {root}` (or delete it, if others may have written there)"
    else:
        return
    raise UnsafeCacheDir(f"symnet: the kernel cache folder {folder} {problem}, and its files "
                         f"run as code in this process; {fix}, or set SYMNET_CACHE_DIR to "
                         f"a private folder")


#: codegen's modules that generated code imports and calls while Numba compiles it: their
#: text is part of every entry's name, since Numba's cache does not follow a change to what
#: a cached kernel called (a kernel cached when ``load_gemm`` returned a Numba function kept
#: that old product inside it, 1.15× slower, after ``load_gemm`` had moved on)
RUNTIME_FILES = ("blas.py", "fpenv.py", "gemm.py")


@functools.lru_cache(maxsize=1)
def runtime_fingerprint() -> str:
    """A hash of `RUNTIME_FILES`' text."""
    digest = hashlib.sha256()
    for name in RUNTIME_FILES:
        digest.update(name.encode() + b"\0" + (Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def toolchain() -> dict[str, str]:
    """The versions machine code depends on: a change to any of them means new entries."""
    return {"numba": numba.__version__, "numpy": np.__version__, "llvmlite": llvmlite.__version__,
            "python": sys.version, "machine": platform.machine(),
            "runtime": runtime_fingerprint()}


def entry_name(source: str, options: dict) -> str:
    """``symnet_<hash>``: the hash covers source, options and the toolchain's versions."""
    key = json.dumps({"source": source, "options": options, "format": FORMAT,
                      "toolchain": toolchain()}, sort_keys=True, default=str)
    return "symnet_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _read(path: Path) -> str | None:
    """The entry's text; None if missing, "" if unreadable (damaged)."""
    try:
        return read_if_exists(path)
    except (OSError, UnicodeDecodeError):
        return ""


def stored_source(name: str, options: dict) -> str | None:
    """The source of cache entry ``name`` if it is there and intact (its stamp, and a hash of
    its source and ``options`` that is ``name``), else None: what an index that names
    entries (the step index) reads back.

    Example:
        >>> import tempfile, os
        >>> os.environ["SYMNET_CACHE_DIR"] = tempfile.mkdtemp()
        >>> name = entry_name("x = 1", {}); _ = load_module("x = 1", {})
        >>> stored_source(name, {}), stored_source(name, {"other": 1})
        ('x = 1', None)
    """
    stamp, _, source = (_read(cache_dir() / f"{name}.py") or "").partition("\n")
    if stamp != f"# symnet cache entry {name}" or entry_name(source, options) != name:
        return None
    return source


def _check_numba_files(module: ModuleType) -> None:
    """Numba's index and machine-code files for each kernel must load; a damaged one
    (truncated, garbled) is dropped, with a warning, so the kernel is compiled again."""
    for name, kernel in vars(module).items():
        files = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
        if files is None:
            continue
        try:
            for data_name in files._load_index().values():
                files._load_data(data_name)
        except FileNotFoundError:
            pass  # a concurrent writer's data file is not there yet: numba compiles
        except Exception as error:  # noqa: BLE001 - any unpickling failure means damage
            warnings.warn(f"symnet: numba's cache for {module.__name__}.{name} was damaged "
                          f"({type(error).__name__}); recompiling it", RuntimeWarning,
                          stacklevel=3)
            kernel._cache.flush()


def load_module(source: str, options: dict) -> ModuleType:
    """Write ``source`` into the cache (unless an intact copy is there) and import it."""
    name = entry_name(source, options)
    path = cache_dir() / f"{name}.py"
    stamp = f"# symnet cache entry {name}\n"
    text = stamp + source
    current = _read(path)
    # Mode 0o600 as ever: the folder is private, and so is each entry in it.
    if current is None and not atomic_write(path, text, exclusive=True, mode=0o600):
        current = _read(path)  # another process wrote it first: check theirs
    if current is not None and current != text:
        warnings.warn(f"symnet: cache entry {path} was damaged; rebuilding it",
                      RuntimeWarning, stacklevel=2)
        atomic_write(path, text, mode=0o600)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module  # before the check: numba's pickles name this module
    _check_numba_files(module)
    return module
