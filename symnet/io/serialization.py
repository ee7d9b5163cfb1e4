"""The safetensors checkpoint format, read and written by the `safetensors` package (never pickle).

`save_file` / `load_file` handle flat ``{name: array}`` files; `save` / `load` bundle model and
optimizer state with JSON ``meta``, the non-tensor parts as JSON strings in ``__metadata__``.

The package (its parser is fuzzed) reads and writes the format. Around it symnet writes
atomically and deterministically, refuses what the package lets through (duplicate keys,
JSON nested too deeply, dtypes outside `_DTYPES`, BOOL bytes other than 0 and 1), and says
what is wrong with a file in a ``ValueError`` that names it.
"""

from __future__ import annotations

import errno
import json
import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import safetensors
import safetensors.numpy

from codegen.files import atomic_write

__all__ = ["load", "load_file", "save", "save_file"]

#: The safetensors dtypes symnet saves and loads: numpy's real numbers, integers and bools.
_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8,
           "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "U16": np.uint16,
           "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}
_CODES = {np.dtype(t): code for code, t in _DTYPES.items()}
_MAX_HEADER = 100_000_000  # the package's own limit
_FORMAT = "1"
_PARTS = ("model", "optimizer", "meta")

#: What the package's errors mean. Before 0.6 it names them by variant, from 0.6 in words.
#: Its JSON is checked before it parses, so its "invalid JSON" is an entry of the wrong shape.
_MEANINGS = (
    (("MetadataIncompleteBuffer", "not fully covered"), "the tensors do not cover the data "
     "exactly: the file is truncated, or has bytes after the last tensor"),
    (("InvalidOffset", "invalid offset"), "tensors overlap, leave a gap, or have data_offsets "
     "[begin, end] with end < begin"),
    (("TensorInvalidInfo", "invalid shape, data type, or offset"), "a tensor's data_offsets "
     "do not span the bytes its dtype and shape need"),
    (("ValidationOverflow", "overflow"), "a tensor's shape is too large to address"),
    (("InvalidHeaderDeserialization", "invalid JSON"), 'a header entry is not {"dtype": a '
     'safetensors dtype, "shape": [ints >= 0], "data_offsets": [begin, end]}'),
)


def save_file(tensors: Mapping[str, np.ndarray], path,
              metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` and str->str ``metadata`` to ``path`` as safetensors, atomically.

    The bytes go to a temporary file in the same directory, which is fsynced and then renamed
    over ``path``: a crash leaves the old file or the new one, never a mix. The same tensors
    and metadata always give the same bytes.

    Example:
        >>> import os, tempfile, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_file({"w": np.eye(2, dtype=np.float32)}, p, {"note": "hi"})
        >>> tensors, meta = load_file(p); tensors["w"].tolist(), meta
        ([[1.0, 0.0], [0.0, 1.0]], {'note': 'hi'})
    """
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError(f"metadata must map str to str, got {dict(metadata)!r}")
    arrays = {name: _stored(name, array) for name, array in tensors.items()}
    data = safetensors.numpy.save(arrays, dict(metadata) if metadata else None)
    atomic_write(path, _canonical(data))  # a replaced file keeps its mode


def _stored(name, array) -> np.ndarray:
    """``array`` as the package needs it: C-contiguous and little-endian (it copies raw memory)."""
    if not isinstance(name, str) or name == "__metadata__":
        raise ValueError(f"invalid tensor name {name!r}")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"tensor {name!r} is a {type(array).__name__}, not a numpy array")
    if array.dtype.newbyteorder("=") not in _CODES:
        raise TypeError(f"tensor {name!r} has unsupported dtype {array.dtype}")
    return array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)


def _canonical(data: bytes) -> tuple[bytes, memoryview]:
    """The package's ``data`` with its ``__metadata__`` keys sorted, as (header, tensor bytes).

    The package writes metadata in a Rust HashMap's random order
    (https://github.com/safetensors/safetensors/issues/584): two saves of one state would differ
    byte for byte. Sorted, a file is a function of what it holds.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    blob = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the tensor data starts 8-byte aligned, as the package has it
    return len(blob).to_bytes(8, "little") + blob, memoryview(data)[8 + n:]


def load_file(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file; returns ``(tensors, metadata)`` with fresh writable arrays.

    The header is checked before the data is read, and the whole file before any array is
    made; a malformed file raises ``ValueError`` naming the file and the problem. Nothing in
    the file is ever executed.

    Example:
        >>> import os, tempfile, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "a.safetensors")
        >>> save_file({"a": np.arange(3)}, p)
        >>> load_file(p)
        ({'a': array([0, 1, 2])}, {})
    """
    name = os.fspath(path)

    def fail(problem: str) -> ValueError:
        return ValueError(f"{name!s}: not a valid safetensors file: {problem}")

    if os.path.isdir(name):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a safetensors file", name)
    with open(name, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        head += f.read(_header_length(head, size, fail))
        header = _header(head[8:], fail)
        f.seek(0)
        data = f.read(size)  # one bytes object for the package; sized, it is one read, not many
    if not data.startswith(head):  # the checks above must hold for the bytes the package reads
        raise fail("the file changed while it was being read")
    try:
        stored = dict(safetensors.deserialize(data))
    except safetensors.SafetensorError as error:
        raise fail(_explain(error)) from None
    tensors = {key: _array(key, stored.pop(key), fail) for key in header if key != "__metadata__"}
    return tensors, dict(header.get("__metadata__") or {})


def _header_length(head: bytes, size: int, fail) -> int:
    if size < 8:
        raise fail(f"file is truncated: {size} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(head, "little")
    if n > _MAX_HEADER:
        raise fail(f"header length {n} is too large (limit {_MAX_HEADER} bytes)")
    if n > size - 8:
        raise fail(f"header length {n} is larger than the file ({size} bytes); truncated?")
    return n


def _header(blob: bytes, fail) -> dict:
    """The JSON header, refused where the package would take it: duplicate keys (it keeps the
    last one, another reader the first), nesting too deep for Python, bad ``__metadata__``, a
    dtype outside `_DTYPES`."""
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_unique)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise fail(f"header is not valid UTF-8 JSON ({e})") from None
    except RecursionError:
        raise fail("header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise fail(f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise fail("__metadata__ must be an object whose values are all strings")
    for key, entry in header.items():
        code = entry.get("dtype") if isinstance(entry, dict) and key != "__metadata__" else None
        if isinstance(code, str) and code not in _DTYPES:  # other types: the package says
            raise fail(f"tensor {key!r} has unsupported dtype {code!r}; symnet loads "
                       f"{', '.join(_DTYPES)}")
    return header


def _explain(error: Exception) -> str:
    detail = str(error).removeprefix("Error while deserializing: ")
    meaning = next((m for names, m in _MEANINGS if any(n in detail for n in names)), None)
    return f"{meaning} (safetensors: {detail})" if meaning else f"safetensors: {detail}"


def _array(key: str, stored: dict, fail) -> np.ndarray:
    code = stored["dtype"]
    dtype = np.dtype(_DTYPES[code]).newbyteorder("<")
    array = np.frombuffer(stored["data"], dtype).reshape(stored["shape"])
    if code == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise fail(f"BOOL tensor {key!r} holds bytes other than 0 and 1")
    # the package hands each tensor over in a bytearray of its own; a copy if it ever does not
    return array if array.flags.writeable else array.copy()


def _unique(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _encode(x):
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, Mapping):
        if not all(isinstance(k, str) for k in x):
            raise TypeError(f"JSON object keys must be str, got {list(x)!r}")
        return {k: _encode(v) for k, v in x.items()}
    return x.item() if isinstance(x, np.generic) else x


def _json(s: str, hook=_unique):
    try:
        return json.loads(s, object_pairs_hook=hook)
    except RecursionError:  # json recurses once per level: damaged metadata, not a crash
        raise ValueError("JSON nested too deeply") from None


def _loads(s: str):
    return _json(s, _decoded)


def _decoded(pairs: list):
    obj = _unique(pairs)
    return tuple(obj["__tuple__"]) if obj.keys() == {"__tuple__"} else obj


def save(obj: Mapping, path) -> None:
    """Save a state_dict, or a ``{"model", "optimizer", "meta"}`` bundle, to ``path``.

    Example:
        >>> import os, tempfile, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
        >>> opt = {"type": "Adam", "defaults": {"betas": (0.9, 0.999)}, "step": 3,
        ...        "tensors": {"state.0.m": np.zeros(2)}}
        >>> save({"model": {"0.weight": np.ones((2, 2))}, "optimizer": opt}, p)
        >>> load(p)["optimizer"]["defaults"]["betas"]
        (0.9, 0.999)
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"save expects a dict, got {type(obj).__name__}")
    extra: dict[str, str] = {}
    if all(isinstance(v, np.ndarray) for v in obj.values()):
        kind, tensors = "state_dict", dict(obj)
    else:
        unknown = [k for k in obj if k not in _PARTS]
        if unknown:
            raise ValueError(f"save: unknown keys {unknown}; expected a state_dict (str -> "
                             f"ndarray) or a dict with keys from {_PARTS}")
        kind, tensors, extra["symnet.parts"] = "bundle", {}, json.dumps(list(obj))
        if "model" in obj:
            tensors.update((f"model.{k}", v) for k, v in obj["model"].items())
        if "optimizer" in obj:
            opt = obj["optimizer"]
            tensors.update((f"optimizer.{k}", v) for k, v in (opt.get("tensors") or {}).items())
            state = {k: None if k == "tensors" else v for k, v in opt.items()}
            extra["symnet.optimizer"] = json.dumps(_encode(state))
        if "meta" in obj:
            extra["symnet.meta"] = json.dumps(_encode(obj["meta"]))
    save_file(tensors, path, {"symnet.format": _FORMAT, "symnet.kind": kind,
                              "symnet.keys": json.dumps(list(tensors)), **extra})


def load(path) -> dict:
    """Load what `save` wrote; any other safetensors file loads as a plain state_dict.

    Example:
        >>> import os, tempfile, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "sd.safetensors")
        >>> save(OrderedDict([("b", np.zeros(1)), ("a", np.ones(1))]), p)
        >>> list(load(p))
        ['b', 'a']
    """
    tensors, meta = load_file(path)
    if "symnet.format" not in meta:
        return OrderedDict(tensors)
    if meta["symnet.format"] != _FORMAT:
        raise ValueError(f"{path}: unsupported symnet format {meta['symnet.format']!r}")
    try:
        keys = _json(meta["symnet.keys"])
        if not isinstance(keys, list) or len(keys) != len(tensors) or set(keys) != set(tensors):
            raise ValueError("symnet.keys does not match the stored tensors")
        ordered = OrderedDict((k, tensors[k]) for k in keys)
        if meta["symnet.kind"] == "state_dict":
            return ordered
        out = {}
        for part in _json(meta["symnet.parts"]):
            sub = OrderedDict((k.split(".", 1)[1], v) for k, v in ordered.items()
                              if k.startswith(f"{part}."))
            out[part] = sub if part == "model" else _loads(meta[f"symnet.{part}"])
            if part == "optimizer" and "tensors" in out[part]:
                out[part]["tensors"] = sub
        return out
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: corrupt symnet metadata ({e!r})") from None
