"""The compiled train step's index on disk: a cache hit skips the SymPy derivation.

A generated module is named by a hash of its source (`codegen.cache`), and the source
needs the derivation, which costs SymPy time (0.4 s for a two-layer MLP).  The index maps
what *decides* the step — layers with their formulas, loss, the optimizer's update
equations, dtype, options and versions — to the module's cache entry and the little a
step needs to call it: argument order, scalar names, buffer shapes, which state-dict key
each parameter symbol stands for, and the number of outputs.

Entries are JSON written atomically; an entry that is unreadable, from another version,
or points at a missing or damaged module is a miss, and the step is derived again.  An entry
is data, never code: its fields are checked for type, and a buffer dimension is a whole
number or the batch symbol ``N``, parsed, never given to ``sympify`` (an ``eval``).  Anything
else marks a damaged entry, reported with a warning and rewritten by the next compile.

Example:
    >>> import tempfile, os
    >>> os.environ["SYMNET_CACHE_DIR"] = tempfile.mkdtemp()
    >>> lookup(("no", "such", "step"), float) is None
    True
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numba
import sympy as sp

import codegen
from codegen import blas
from codegen.cache import cache_dir, entry_name, load_module, stored_source
from codegen.files import atomic_write
from codegen.ir import Buffer, Program
from symnet.backends.kernels import Unit
from symnet.symbolic.graph import N
from symnet.version import __version__

FORMAT = "2"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of symnet's and codegen's own source: an entry written by other code (a new
    release, or a working tree being edited) is never reused, even under one version."""
    digest = hashlib.sha256()
    for root in (Path(__file__).parents[1], Path(codegen.__file__).parent):  # symnet/, codegen/
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _path(key: tuple):
    text = json.dumps([key, FORMAT, __version__, code_version(), numba.__version__,
                       sys.version_info[:2], blas.choice(), blas.gemm_choice()], default=str)
    return cache_dir() / f"step_{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"


def store(key: tuple, unit: Unit) -> None:
    """Remember that ``key`` compiles to ``unit`` (a one-program train step, any backend)."""
    (program,) = unit.programs.values()
    record = {"entry": entry_name(unit.source, unit.options), "options": unit.options,
              "name": program.name, "arguments": list(program.arguments),
              "scalars": list(program.scalars), "returns": program.returns,
              "buffers": {n: [_dimension_text(d) for d in b.shape]
                          for n, b in program.buffers.items()},
              "params": unit.params, "outputs": unit.outputs,
              "accumulators": list(unit.accumulators), "threads_from": unit.threads_from}
    atomic_write(_path(key), json.dumps(record), mode=0o600)


def _dimension_text(d) -> str:
    """How a buffer dimension is stored: ``"N"`` or digits, the only forms `_dimension`
    reads back; a shape of any other form is a bug here, not an entry to write."""
    text = str(d)
    _dimension(text)
    return text


def _dimension(text) -> sp.Expr:
    """A stored dimension, parsed: the batch symbol or a whole number, nothing else."""
    if text == "N":
        return N
    if isinstance(text, str) and text.isascii() and text.isdigit():
        return sp.Integer(text)
    raise ValueError(f"buffer dimension {text!r} is neither a whole number nor N")


def _names(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# What each field of an entry must hold: a value of any other kind marks a damaged entry.
FIELDS = {
    "entry": lambda v: isinstance(v, str), "options": lambda v: isinstance(v, dict),
    "name": lambda v: isinstance(v, str) and v.isidentifier(),
    "arguments": _names, "scalars": _names, "returns": lambda v: v is None or isinstance(v, str),
    "buffers": lambda v: isinstance(v, dict) and all(isinstance(s, list) for s in v.values()),
    "params": lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values()),
    "outputs": lambda v: type(v) is int, "accumulators": _names,
    "threads_from": lambda v: v is None or type(v) is int,
}


def _read_entry(path: Path) -> tuple[dict, Program] | None:
    """The entry at ``path`` and the program signature it describes; None if there is no
    entry or it is damaged (then with a warning)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        wrong = [k for k, valid in FIELDS.items() if not valid(record[k])]
        if wrong:
            raise ValueError(f"fields {', '.join(wrong)} of the wrong kind")
        buffers = {n: Buffer(n, tuple(_dimension(d) for d in shape))
                   for n, shape in record["buffers"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"symnet: step index entry {path} was damaged "
                      f"({type(error).__name__}: {error}); deriving the step again",
                      RuntimeWarning, stacklevel=3)
        return None
    # The signature only: the ops stay in the source, which is all a hit needs.
    return record, Program(record["name"], (), tuple(record["arguments"]),
                           tuple(record["scalars"]), buffers, record["returns"])


def lookup(key: tuple, dtype) -> Unit | None:
    """The compiled step stored under ``key``, imported; None on any kind of miss."""
    found = _read_entry(_path(key))
    if found is None:
        return None
    record, program = found
    name, options = record["entry"], record["options"]
    source = stored_source(name, options)
    if source is None:
        return None  # compiling it again rewrites the module, with a warning
    try:
        module = load_module(source, options)
        return Unit({program.name: program}, {program.name: getattr(module, program.name)},
                    source, dtype, options.get("parallel", False), options=options,
                    params=dict(record["params"]), outputs=record["outputs"],
                    accumulators=tuple(record["accumulators"]),
                    threads_from=record["threads_from"])
    except (OSError, ValueError, AttributeError):
        return None
