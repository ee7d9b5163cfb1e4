"""Tests for symnet.io.serialization: safetensors files through the package, and save/load."""

import errno
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict

import numpy as np
import pytest
import safetensors.numpy

from symnet.io import serialization as ser
from symnet.io.serialization import load, load_file, save, save_file

SHAPES = [(), (0,), (3, 0, 2), (1,), (5,), (2, 3), (2, 3, 4)]


def _arrays(dtype, rng):
    out = OrderedDict()
    for i, shape in enumerate(SHAPES):
        if np.dtype(dtype) == np.bool_:
            a = rng.random(shape) > 0.5
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            a = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        else:
            a = (rng.standard_normal(shape) * 1e3).astype(dtype)
        out[f"t{i}"] = np.asarray(a, dtype=dtype)
    return out


def _assert_same(got, want):
    """Same names, dtypes, shapes and values; `load` keeps the order, `load_file` the file's."""
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k])


def _raw(path, header, data=b"", n=None):
    blob = json.dumps(header).encode() if isinstance(header, dict) else header
    path.write_bytes(struct.pack("<Q", len(blob) if n is None else n) + blob + data)
    return path


# --- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.float16, np.int8,
                                   np.int16, np.int32, np.uint8, np.uint16, np.uint32,
                                   np.uint64, np.bool_])
def test_round_trip_dtypes_and_shapes(tmp_path, dtype):
    want = _arrays(dtype, np.random.default_rng(0))
    p = tmp_path / "a.safetensors"
    save_file(want, p)
    got, meta = load_file(p)
    _assert_same(got, want)
    assert meta == {}
    raw = p.read_bytes()
    assert (8 + struct.unpack("<Q", raw[:8])[0]) % 8 == 0  # data starts 8-byte aligned
    for a in got.values():
        assert a.flags.writeable and a.flags.c_contiguous and not isinstance(a, np.memmap)
    got["t6"][...] = 0  # a fresh copy: writing to it leaves the file alone
    _assert_same(load_file(p)[0], want)


def test_non_contiguous_and_big_endian_inputs(tmp_path):
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    tensors = {"t": a.T, "be": np.arange(5, dtype=">i4"), "step": a[::2, 1::2],
               "back": a[::-1, ::-1], "be_t": a.astype(">f4").T}
    save_file(tensors, tmp_path / "x.safetensors")
    got, _ = load_file(tmp_path / "x.safetensors")
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype.newbyteorder("=")


def test_metadata_round_trip(tmp_path):
    meta = {"format": "pt", "note": "ünïcode ✓", "empty": "", "json": '{"a": [1, 2]}'}
    save_file({"x": np.ones(2, np.float32)}, tmp_path / "m.safetensors", meta)
    assert load_file(tmp_path / "m.safetensors")[1] == meta
    with pytest.raises(TypeError, match="metadata"):
        save_file({"x": np.ones(2)}, tmp_path / "bad.safetensors", {"n": 1})


def test_load_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "nope.safetensors")


# --- interoperability with the safetensors package -------------------------------------------
def test_ours_read_by_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors")
    st_np = pytest.importorskip("safetensors.numpy")
    want = OrderedDict()
    for i, dt in enumerate([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_]):
        for k, a in _arrays(dt, np.random.default_rng(i)).items():
            want[f"{np.dtype(dt).name}.{k}"] = a
    p = tmp_path / "ours.safetensors"
    save_file(want, p, {"who": "symnet", "v": "1"})
    got = st_np.load_file(str(p))
    assert set(got) == set(want)
    _assert_same({k: got[k] for k in want}, want)
    with st.safe_open(str(p), "np") as f:
        assert f.metadata() == {"who": "symnet", "v": "1"}


def test_ours_read_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    want = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.linspace(0, 1, 3),
            "n": np.arange(-2, 2, dtype=np.int64), "m": np.array([True, False]),
            "s": np.array(2.5, np.float16)}
    p = tmp_path / "for_torch.safetensors"
    save_file(want, p, {"format": "pt"})
    got = st_torch.load_file(str(p))
    assert set(got) == set(want)
    for k, a in want.items():
        assert isinstance(got[k], torch.Tensor) and tuple(got[k].shape) == a.shape, k
        np.testing.assert_array_equal(got[k].numpy(), a, err_msg=k)


def test_safetensors_package_file_read_by_ours(tmp_path):
    pytest.importorskip("safetensors")
    st_np = pytest.importorskip("safetensors.numpy")
    want = OrderedDict()
    for i, dt in enumerate([np.float32, np.float64, np.int64, np.float16, np.int8, np.bool_]):
        for k, a in _arrays(dt, np.random.default_rng(10 + i)).items():
            want[f"{np.dtype(dt).name}.{k}"] = a
    p = tmp_path / "theirs.safetensors"
    st_np.save_file(want, str(p), metadata={"format": "np"})
    got, meta = load_file(p)
    assert meta == {"format": "np"}
    _assert_same({k: got[k] for k in want}, want)
    sd = load(p)  # no symnet metadata: a plain state_dict
    assert isinstance(sd, OrderedDict) and set(sd) == set(want)


# --- save / load bundles ------------------------------------------------------------------------
def test_state_dict_round_trip_keeps_order(tmp_path):
    sd = OrderedDict([("z.weight", np.ones((3, 2), np.float32)), ("a.bias", np.zeros(3)),
                      ("m.count", np.arange(4, dtype=np.int64)), ("s", np.array(2.5))])
    save(sd, tmp_path / "sd.safetensors")
    got = load(tmp_path / "sd.safetensors")
    assert isinstance(got, OrderedDict) and list(got) == list(sd)
    _assert_same(got, sd)
    st_np = pytest.importorskip("safetensors.numpy")  # plain state_dicts keep their own names
    assert set(st_np.load_file(str(tmp_path / "sd.safetensors"))) == set(sd)


def test_bundle_round_trip(tmp_path):
    model = OrderedDict([("2.weight", np.full((2, 4), 3.0, np.float32)),
                         ("0.weight", np.arange(12, dtype=np.float32).reshape(4, 3)),
                         ("0.bias", np.zeros(4, np.float64))])
    tensors = OrderedDict([("state.1.v", np.full(4, 0.5)), ("state.0.m", np.ones((4, 3))),
                           ("state.0.count", np.array(7, np.int64))])
    opt = {"type": "Adam", "defaults": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                                        "nested": [(1, (2, "x")), {"t": ()}], "amsgrad": False,
                                        "weight_decay": 0},
           "step": 42, "tensors": tensors}
    meta = {"arch": [["Linear", 3, 4], ["ReLU"]], "epoch": 5, "shape": (3, 4), "name": "net"}
    save({"model": model, "optimizer": opt, "meta": meta}, tmp_path / "b.safetensors")
    got = load(tmp_path / "b.safetensors")
    assert list(got) == ["model", "optimizer", "meta"]
    assert isinstance(got["model"], OrderedDict) and list(got["model"]) == list(model)
    _assert_same(got["model"], model)
    o = got["optimizer"]
    assert list(o) == ["type", "defaults", "step", "tensors"]
    assert o["type"] == "Adam" and o["step"] == 42 and type(o["step"]) is int
    assert o["defaults"] == opt["defaults"]
    assert type(o["defaults"]["betas"]) is tuple and o["defaults"]["betas"] == (0.9, 0.999)
    assert type(o["defaults"]["nested"][0][1]) is tuple and o["defaults"]["nested"][1]["t"] == ()
    assert type(o["defaults"]["weight_decay"]) is int and o["defaults"]["amsgrad"] is False
    assert isinstance(o["tensors"], OrderedDict) and list(o["tensors"]) == list(tensors)
    _assert_same(o["tensors"], tensors)
    assert got["meta"] == meta and got["meta"]["shape"] == (3, 4)


def test_bundle_with_real_model_and_optimizer(tmp_path):
    import symnet as sn

    def make():
        m = sn.Sequential(sn.Linear(3, 4), sn.ReLU(), sn.Linear(4, 2))
        return m, sn.optim.Adam(m.parameters(), lr=0.01, betas=(0.8, 0.99))

    m1, o1 = make()
    osd = o1.state_dict()
    for i, a in enumerate(osd["tensors"].values()):
        a[...] = i + 0.25
    osd["step"] = 9
    save({"model": m1.state_dict(), "optimizer": osd}, tmp_path / "c.safetensors")
    m2, o2 = make()
    got = load(tmp_path / "c.safetensors")
    m2.load_state_dict(got["model"])
    o2.load_state_dict(got["optimizer"])
    _assert_same(m2.state_dict(), m1.state_dict())
    _assert_same(o2.state_dict()["tensors"], osd["tensors"])
    assert o2.step_count == 9 and o2.defaults["betas"] == (0.8, 0.99)


def test_save_rejects_unknown_bundle_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        save({"model": {}, "extra": 1}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


# --- corrupt inputs ----------------------------------------------------------------------------
@pytest.fixture
def good_bytes(tmp_path):
    p = tmp_path / "good.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 2))}, p, {"k": "v"})
    return p.read_bytes()


def _expect(path, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        load_file(path)
    assert str(path) in str(e.value)
    return e


def test_truncated_files(tmp_path, good_bytes):
    n = 8 + struct.unpack("<Q", good_bytes[:8])[0]
    p = tmp_path / "cut.safetensors"
    for cut in [0, 1, 7, 8, 9, n // 2, n - 1, n, n + 1, n + 24, len(good_bytes) - 1]:
        p.write_bytes(good_bytes[:cut])
        want = "shorter than the 8-byte" if cut < 8 else "larger than the file" if cut < n \
            else "the file is truncated"
        _expect(p, want)


def test_garbage_bytes(tmp_path):
    rng = np.random.default_rng(1)
    for size in [8, 100, 5000]:
        _expect(_raw(tmp_path / "g.bin", rng.bytes(size), n=2**63 + size), "too large")
    p = tmp_path / "g.bin"
    p.write_bytes(rng.bytes(10_000))
    _expect(p, "header length")
    _expect(_raw(p, b"\xff\xfe\x00garbage"), "not valid UTF-8 JSON")
    _expect(_raw(p, b"{not json"), "not valid UTF-8 JSON")
    _expect(_raw(p, b"[1, 2, 3]"), "not an object")
    _expect(_raw(p, b'{"a": 1, "a": 2}'), "duplicate key")
    _expect(_raw(p, b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nested too deeply")


def test_a_file_replaced_while_it_is_read_is_refused(tmp_path, monkeypatch):
    """The header checks must hold for the bytes the package parses."""
    p, other = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"a": np.ones(2)}, p)
    save_file({"b": np.zeros(3, np.float32)}, other)
    real_open = open

    class Replaced:  # after the header is read, the path holds another file
        def __init__(self, *args):
            self.file = real_open(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def fileno(self):
            return self.file.fileno()

        def read(self, n=-1):
            return self.file.read(n)

        def seek(self, offset):
            self.file.close()
            self.file = real_open(other, "rb")
            return self.file.seek(offset)

    monkeypatch.setattr(ser, "open", Replaced, raising=False)
    _expect(p, "changed while it was being read")


def test_header_claiming_huge_length(tmp_path):
    _expect(_raw(tmp_path / "h.bin", b"{}", n=10**12), "too large")
    _expect(_raw(tmp_path / "h.bin", b"{}", n=1000), "larger than the file")


def _entry(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


@pytest.mark.parametrize("header,data,pattern", [
    ({"a": _entry(offs=(0, 4))}, b"\0" * 4, "data_offsets do not span the bytes"),
    ({"a": _entry(offs=(0, 12))}, b"\0" * 12, "data_offsets do not span the bytes"),
    ({"a": _entry(offs=(4, 0))}, b"\0" * 8, "data_offsets"),
    ({"a": _entry(offs=(0, 8))}, b"\0" * 4, "the file is truncated"),
    ({"a": _entry(offs=(0, 8)), "b": _entry(offs=(4, 12))}, b"\0" * 12, "overlap"),
    ({"a": _entry(offs=(0, 8)), "b": _entry(offs=(0, 8))}, b"\0" * 8, "overlap"),
    ({"a": _entry(offs=(8, 16))}, b"\0" * 16, "gap"),
    ({"a": _entry()}, b"\0" * 12, "bytes after the last tensor"),
    ({"a": _entry(offs=("0", 8))}, b"\0" * 8, "data_offsets"),
    ({"a": _entry(dtype="Q99")}, b"\0" * 8, "'a' has unsupported dtype 'Q99'"),
    ({"a": _entry(dtype=5)}, b"\0" * 8, "header entry is not"),
    ({"a": _entry(shape=(-1, -2))}, b"\0" * 8, "header entry is not"),
    ({"a": _entry(shape=(2.0,))}, b"\0" * 8, "header entry is not"),
    ({"a": {"dtype": "F32", "shape": True, "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "data_offsets"),
    ({"a": [1, 2]}, b"", "header entry is not"),
    ({"a": _entry(shape=(2**62, 2**62))}, b"\0" * 8, "too large to address"),
    ({"__metadata__": {"k": 1}, "a": _entry()}, b"\0" * 8, "__metadata__"),
    ({"__metadata__": ["x"]}, b"", "__metadata__"),
    ({"a": _entry("BOOL", (2,), (0, 2))}, b"\x01\x07", "BOOL"),
])
def test_bad_headers(tmp_path, header, data, pattern):
    _expect(_raw(tmp_path / "bad.safetensors", header, data), pattern)


@pytest.mark.parametrize("code,itemsize", [("BF16", 2), ("F8_E4M3", 1), ("F8_E5M2", 1),
                                           ("C64", 8)])
def test_dtypes_symnet_does_not_load_are_refused_by_name(tmp_path, code, itemsize):
    p = _raw(tmp_path / "d.safetensors", {"w": _entry(code, (2,), (0, 2 * itemsize))},
             b"\0" * 2 * itemsize)
    _expect(p, rf"tensor 'w' has unsupported dtype '{code}'; symnet loads F16, F32, F64")


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.longdouble, "U3", "M8[s]"])
def test_save_refuses_dtypes_it_does_not_load(tmp_path, dtype):
    with pytest.raises(TypeError, match=r"tensor 'w' has unsupported dtype"):
        save_file({"w": np.zeros(2, dtype)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_keys_are_refused_though_the_package_takes_them(tmp_path):
    entry = json.dumps(_entry()).encode()
    p = _raw(tmp_path / "dup.safetensors", b'{"a": ' + entry + b', "a": ' + entry + b"}",
             b"\0" * 8)
    # The package keeps the last "a"; a reader keeping the first would see other values. If
    # this line fails, the package refuses duplicates itself.
    assert list(safetensors.numpy.load(p.read_bytes())) == ["a"]
    _expect(p, "duplicate key")
    _expect(_raw(p, b'{"__metadata__": {"k": "1", "k": "2"}}'), "duplicate key")


def test_the_same_contents_always_give_the_same_bytes(tmp_path):
    """The package writes metadata in a random order (safetensors issue 584); symnet sorts it."""
    tensors = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3), "n": np.arange(4)}
    meta = {f"key{i}": str(i) for i in range(20)}
    p, seen = tmp_path / "d.safetensors", set()
    for i in range(6):
        keys = sorted(meta, key=lambda k: random.Random(f"{i}{k}").random())
        save_file(dict(reversed(tensors.items())) if i % 2 else tensors, p,
                  {k: meta[k] for k in keys})
        seen.add(p.read_bytes())
    assert len(seen) == 1
    got, got_meta = load_file(p)
    _assert_same(got, tensors)
    assert got_meta == meta


class _Evil:
    def __reduce__(self):
        return (open, (str(_Evil.marker), "w"))


def test_pickle_files_are_rejected_without_running_code(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    for i, obj in enumerate([{"a": 1}, _Evil(), [_Evil()] * 3, np.arange(3)]):
        for proto in [2, pickle.HIGHEST_PROTOCOL]:
            p = tmp_path / f"p{i}_{proto}.pkl"
            p.write_bytes(pickle.dumps(obj, protocol=proto))
            with pytest.raises(ValueError, match="header"):
                load_file(p)
            with pytest.raises(ValueError):
                load(p)
    assert not _Evil.marker.exists()


def test_torch_checkpoint_is_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, p)
    with pytest.raises(ValueError, match="header"):
        load(p)


# --- atomic writes -----------------------------------------------------------------------------
def _snapshot(tmp_path):
    p = tmp_path / "ckpt.safetensors"
    old = {"w": np.arange(10, dtype=np.float32), "b": np.ones(3)}
    save_file(old, p, {"v": "old"})
    return p, old, p.read_bytes()


def _assert_old_intact(p, old, old_bytes):
    assert p.read_bytes() == old_bytes
    got, meta = load_file(p)
    _assert_same(got, old)
    assert meta == {"v": "old"}
    assert sorted(x.name for x in p.parent.iterdir()) == [p.name]  # no temp files left


def test_failed_save_mid_write_keeps_old_file(tmp_path, monkeypatch):
    p, old, old_bytes = _snapshot(tmp_path)
    real = os.fdopen

    class DiskFillsUp:
        """The temporary file, taking half of the first write and then running out."""

        def __init__(self, *args, **kwargs):
            self.file = real(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", DiskFillsUp)
    with pytest.raises(OSError, match="No space left"):
        save_file({"first": np.ones(10_000), "second": np.zeros(1000, np.float32)}, p)
    monkeypatch.undo()
    _assert_old_intact(p, old, old_bytes)


@pytest.mark.parametrize("target", ["fsync", "replace", "chmod"])
def test_failed_os_call_keeps_old_file(tmp_path, monkeypatch, target):
    p, old, old_bytes = _snapshot(tmp_path)

    def fail(*args, **kwargs):
        raise OSError(f"simulated {target} failure")

    monkeypatch.setattr(ser.os, target, fail)
    with pytest.raises(OSError, match="simulated"):
        save_file({"w": np.zeros(5)}, p)
    monkeypatch.undo()
    _assert_old_intact(p, old, old_bytes)


def test_keyboard_interrupt_during_save_keeps_old_file(tmp_path, monkeypatch):
    p, old, old_bytes = _snapshot(tmp_path)

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(ser.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save({"model": {"w": np.zeros(5)}}, p)
    monkeypatch.undo()
    _assert_old_intact(p, old, old_bytes)


def test_invalid_input_creates_no_file(tmp_path):
    p, old, old_bytes = _snapshot(tmp_path)
    with pytest.raises(TypeError, match="unsupported dtype"):
        save_file({"o": np.array([object()])}, p)
    with pytest.raises(TypeError, match="not a numpy array"):
        save_file({"l": [1, 2]}, p)
    _assert_old_intact(p, old, old_bytes)


_CHILD = textwrap.dedent("""
    import importlib.util, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("ser", sys.argv[1])
    ser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ser)
    a = np.empty(int(sys.argv[3]), np.float32)
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        a.fill(i)
        ser.save_file({"w": a, "step": np.array(i)}, sys.argv[2], {"version": str(i)})
        print("saved", i, flush=True)
""")


def test_sigkill_during_save_never_corrupts(tmp_path):
    n = 50 * 2**20 // 4  # 50 MB of float32
    p = tmp_path / "ckpt.safetensors"
    save_file({"w": np.zeros(n, np.float32), "step": np.array(0)}, p, {"version": "0"})
    rng = random.Random(1234)
    seen = []
    for it in range(8):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, ser.__file__, str(p), str(n)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            if it % 2:  # let at least one save complete before killing
                assert child.stdout.readline().startswith("saved")
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        tensors, meta = load_file(p)
        v = int(meta["version"])
        assert tensors["w"].shape == (n,) and tensors["w"].dtype == np.float32
        assert tensors["step"] == v and np.all(tensors["w"] == v), "mixed or partial version"
        seen.append(v)
        for leftover in tmp_path.iterdir():  # SIGKILL can strand a temp file; nothing else
            if leftover != p:
                assert leftover.name.startswith(".ckpt.safetensors.")
                assert leftover.name.endswith(".tmp")
                leftover.unlink()
    assert max(seen) > 0, seen
    p.unlink()  # 50 MB; pytest keeps recent tmp dirs around
