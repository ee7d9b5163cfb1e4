"""The safetensors checkpoint format, written and read with numpy alone (never pickle).

`save_file` / `load_file` handle flat ``{name: array}`` files; `save` / `load` bundle model and
optimizer state with JSON ``meta``, the non-tensor parts as JSON strings in ``__metadata__``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

__all__ = ["load", "load_file", "save", "save_file"]

_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8,
           "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "U16": np.uint16,
           "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}
_CODES = {np.dtype(t): code for code, t in _DTYPES.items()}
_MAX_HEADER = 100_000_000
_FORMAT = "1"
_PARTS = ("model", "optimizer", "meta")


def save_file(tensors: Mapping[str, np.ndarray], path,
              metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` and str->str ``metadata`` to ``path`` as safetensors, atomically.

    The bytes go to a temporary file in the same directory, which is fsynced and then renamed
    over ``path``: a crash leaves the old file or the new one, never a mix.

    Example:
        >>> import os, tempfile, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_file({"w": np.eye(2, dtype=np.float32)}, p, {"note": "hi"})
        >>> tensors, meta = load_file(p); tensors["w"].tolist(), meta
        ([[1.0, 0.0], [0.0, 1.0]], {'note': 'hi'})
    """
    header, arrays, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError(f"metadata must map str to str, got {dict(metadata)!r}")
        header["__metadata__"] = dict(metadata)
    for name, arr in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"tensor {name!r} is a {type(arr).__name__}, not a numpy array")
        if arr.dtype.newbyteorder("=") not in _CODES:
            raise TypeError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
        arr = arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)
        header[name] = {"dtype": _CODES[arr.dtype.newbyteorder("=")], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        arrays.append(arr)
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o777 if os.path.isfile(path) else 0o644
    tmp = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{os.path.basename(path)}.",
                                      suffix=".tmp", delete=False)
    try:
        with tmp:
            tmp.write(len(blob).to_bytes(8, "little"))
            tmp.write(blob)
            for arr in arrays:
                tmp.write(arr.tobytes())
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; best-effort
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unique(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _is_nat(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def load_file(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file; returns ``(tensors, metadata)`` with fresh writable arrays.

    Every header field is checked before any data is read; a malformed file raises
    ``ValueError`` naming the file and the problem. Nothing in the file is ever executed.

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
        if size < 8:
            raise fail(f"file is truncated: {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(f.read(8), "little")
        if n > _MAX_HEADER:
            raise fail(f"header length {n} is too large (limit {_MAX_HEADER} bytes)")
        if n > size - 8:
            raise fail(f"header length {n} is larger than the file ({size} bytes); truncated?")
        try:
            header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_unique)
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise fail(f"header is not valid UTF-8 JSON ({e})") from None
        except RecursionError:
            raise fail("header JSON is nested too deeply") from None
        if not isinstance(header, dict):
            raise fail(f"header is a JSON {type(header).__name__}, not an object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise fail("__metadata__ must be an object whose values are all strings")
        buffer, specs = size - 8 - n, []
        for key, spec in header.items():
            if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
                raise fail(f"entry {key!r} needs 'dtype', 'shape' and 'data_offsets'")
            code, shape, offs = spec["dtype"], spec["shape"], spec["data_offsets"]
            if not isinstance(code, str) or code not in _DTYPES:
                raise fail(f"tensor {key!r} has unknown dtype {code!r}")
            if not isinstance(shape, list) or not all(_is_nat(d) for d in shape):
                raise fail(f"tensor {key!r} shape {shape!r} is not a list of non-negative ints")
            if not (isinstance(offs, list) and len(offs) == 2 and all(_is_nat(o) for o in offs)
                    and offs[0] <= offs[1]):
                raise fail(f"tensor {key!r} data_offsets {offs!r} is not [begin, end], begin<=end")
            dtype = np.dtype(_DTYPES[code]).newbyteorder("<")
            if offs[1] - offs[0] != dtype.itemsize * math.prod(shape):
                raise fail(f"tensor {key!r} data_offsets {offs} span {offs[1] - offs[0]} bytes, "
                           f"but {code} {shape} needs {dtype.itemsize * math.prod(shape)}")
            if offs[1] > buffer:
                raise fail(f"tensor {key!r} data_offsets {offs} out of range: the data buffer "
                           f"has {buffer} bytes (file truncated?)")
            specs.append((key, dtype, tuple(shape), offs[0], offs[1]))
        end = 0
        for key, _, _, begin, stop in sorted(specs, key=lambda s: (s[3], s[4])):
            if begin != end:
                raise fail(f"tensor {key!r} starts at byte {begin}, expected {end} "
                           f"({'overlapping' if begin < end else 'gap between'} tensors)")
            end = stop
        if end != buffer:
            raise fail(f"{buffer - end} unused bytes after the last tensor")
        tensors = {}
        for key, dtype, shape, begin, stop in specs:
            raw = np.empty(stop - begin, np.uint8)
            f.seek(8 + n + begin)
            if f.readinto(raw) != raw.size:
                raise fail(f"file ended inside tensor {key!r}")
            if dtype == np.bool_ and raw.size and raw.max() > 1:
                raise fail(f"BOOL tensor {key!r} holds bytes other than 0 and 1")
            tensors[key] = raw.view(dtype).reshape(shape)
    return tensors, dict(metadata)


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
