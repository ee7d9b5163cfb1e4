"""Generated source on disk, named by its hash, imported so Numba's ``cache=True`` works.

``cache=True`` cannot cache ``exec``'d code, so each compiled unit is a real module file
in a cache folder (``$SYMNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/symnet``, else
``~/.cache/symnet``).  Its name is a hash of the source and every compile option, so a
second process finds the same file and Numba loads the machine code instead of compiling.
Files are written atomically (temporary file, fsync, rename): concurrent writers of one
entry each write the same bytes, and a torn file is never seen.

Example:
    >>> import tempfile, os
    >>> os.environ["SYMNET_CACHE_DIR"] = tempfile.mkdtemp()
    >>> load_module("def f():\\n    return 42\\n", {"dtype": "float32"}).f()
    42
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import numba

FORMAT = "1"


def cache_dir() -> Path:
    """The folder for generated modules (created if missing)."""
    root = os.environ.get("SYMNET_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        root = os.path.join(base, "symnet")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def entry_name(source: str, options: dict) -> str:
    """``symnet_<hash>``: the hash covers source, options and the toolchain's versions."""
    key = json.dumps({"source": source, "options": options, "format": FORMAT,
                      "numba": numba.__version__, "python": sys.version_info[:2]},
                     sort_keys=True, default=str)
    return "symnet_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_module(source: str, options: dict) -> ModuleType:
    """Write ``source`` into the cache (unless an intact copy is there) and import it."""
    name = entry_name(source, options)
    path = cache_dir() / f"{name}.py"
    stamp = f"# symnet cache entry {name}\n"
    text = stamp + source
    try:
        current = path.read_text(encoding="utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError):
        current = ""
    if current != text:
        if current is not None:
            warnings.warn(f"symnet: cache entry {path} was damaged; rebuilding it",
                          RuntimeWarning, stacklevel=2)
        _write_atomically(path, text)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module
