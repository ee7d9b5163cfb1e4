"""Checkpoints: nothing unsafe is loaded, and a checkpoint that does not fit says why.

The file-format cases (truncated, garbled, non-safetensors, pickles, torch files, a writer
killed mid-save) are in tests/test_serialization.py; here: whole-model checkpoints that
belong to another architecture or optimizer, tampered symnet metadata, and a scan of the
package sources for any way to unpickle.
"""

from __future__ import annotations

import io
import json
import re
import struct
import tokenize
from pathlib import Path

import numpy as np
import pytest

import symnet as sn
from symnet.io.serialization import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]


def _trained(widths=(3, 4, 2), optimizer=sn.optim.Adam, seed=0):
    sn.manual_seed(seed)
    model = sn.Sequential(sn.Linear(widths[0], widths[1]), sn.Tanh(),
                          sn.Linear(widths[1], widths[2])).to(np.float64)
    opt = optimizer(model.parameters(), lr=0.01)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    rng = np.random.default_rng(seed)
    step(rng.standard_normal((6, widths[0])), rng.integers(0, widths[2], 6))
    return model, opt


def _bytes(model, opt):
    return ([v.tobytes() for v in model.state_dict().values()],
            [v.tobytes() for v in opt.state_dict()["tensors"].values()], opt.step_count)


@pytest.fixture
def checkpoint(tmp_path):
    model, opt = _trained()
    path = tmp_path / "ckpt.safetensors"
    sn.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
             "meta": {"epoch": 1}}, path)
    return path


@pytest.mark.parametrize(("widths", "problems"), [
    ((3, 5, 2), [r"'0\.weight' has shape \(4, 3\), expected \(5, 3\)",
                 r"'0\.bias' has shape \(4,\), expected \(5,\)"]),
    ((4, 4, 2), [r"'0\.weight' has shape \(4, 3\), expected \(4, 4\)"]),
    ((3, 4, 3), [r"'2\.bias' has shape \(2,\), expected \(3,\)"]),
])
def test_checkpoint_of_another_architecture_is_refused_and_changes_nothing(
        checkpoint, widths, problems):
    model, opt = _trained(widths, seed=1)
    before = _bytes(model, opt)
    loaded = sn.load(checkpoint)
    with pytest.raises(ValueError, match="load_state_dict for Sequential") as error:
        model.load_state_dict(loaded["model"])
    for problem in problems:
        assert re.search(problem, str(error.value)), (problem, str(error.value))
    with pytest.raises(ValueError, match=r"optimizer state 'state\.\d\.\w+' has shape"):
        opt.load_state_dict(loaded["optimizer"])
    assert _bytes(model, opt) == before


def test_deeper_model_lists_missing_keys(checkpoint):
    sn.manual_seed(0)
    deeper = sn.Sequential(sn.Linear(3, 4), sn.Tanh(), sn.Linear(4, 2), sn.Tanh(),
                           sn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"missing keys \['4\.weight', '4\.bias'\]"):
        deeper.load_state_dict(sn.load(checkpoint)["model"])


def test_optimizer_state_of_another_optimizer_is_refused(checkpoint):
    model, opt = _trained(optimizer=sn.optim.SGD)
    before = _bytes(model, opt)
    with pytest.raises(ValueError, match="optimizer state is for Adam, not SGD"):
        opt.load_state_dict(sn.load(checkpoint)["optimizer"])
    assert _bytes(model, opt) == before


def test_float16_and_float32_checkpoints_load_into_a_float64_model(tmp_path, checkpoint):
    model, _ = _trained(seed=2)
    state = sn.load(checkpoint)["model"]
    for dtype in (np.float16, np.float32):
        path = tmp_path / f"{np.dtype(dtype).name}.safetensors"
        sn.save({k: v.astype(dtype) for k, v in state.items()}, path)
        model.load_state_dict(sn.load(path))
        for key, value in model.state_dict().items():
            assert value.dtype == np.float64
            np.testing.assert_array_equal(value, state[key].astype(dtype), err_msg=key)


def _rewrite_metadata(path: Path, edit) -> None:
    """Change the JSON header in place, keeping the file a valid safetensors file."""
    tensors, metadata = load_file(path)
    edit(metadata)
    save_file(tensors, path, metadata)


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda m: m.update({"symnet.format": "99"}), r"unsupported symnet format '99'"),
    (lambda m: m.update({"symnet.keys": json.dumps(["model.0.weight"])}),
     r"corrupt symnet metadata.*symnet.keys does not match"),
    (lambda m: m.update({"symnet.optimizer": "{not json"}), r"corrupt symnet metadata"),
    (lambda m: m.pop("symnet.parts"), r"corrupt symnet metadata.*symnet.parts"),
])
def test_tampered_symnet_metadata_is_named(checkpoint, edit, pattern):
    _rewrite_metadata(checkpoint, edit)
    with pytest.raises(ValueError, match=pattern):
        sn.load(checkpoint)


def test_a_torn_write_of_a_bundle_names_the_file_and_the_problem(checkpoint):
    data = checkpoint.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    for cut in (4, 8 + header_length // 2, len(data) - 3):
        checkpoint.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"{checkpoint.name}: not a valid safetensors "
                           r"file: .*(truncated|larger than the file)"):
            sn.load(checkpoint)


# --- no pickle anywhere --------------------------------------------------------------------

UNSAFE_NAMES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal",
                "joblib", "allow_pickle"}


def _code_names(path: Path) -> set[str]:
    """NAME tokens (code, not comments or strings) in one source file."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return {t.string for t in tokens if t.type == tokenize.NAME}


def test_no_package_source_can_unpickle():
    sources = sorted((ROOT / "symnet").rglob("*.py")) + sorted((ROOT / "codegen").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        found = _code_names(path) & UNSAFE_NAMES
        assert not found, f"{path.relative_to(ROOT)} uses {sorted(found)}"
        text = path.read_text(encoding="utf-8")
        for call in ("np.load(", "numpy.load(", "torch.load("):
            assert call not in text, f"{path.relative_to(ROOT)} calls {call}"


def test_the_scan_would_see_a_pickle_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""pickle in a docstring is fine"""\nimport pickle  # but not this\n')
    assert _code_names(bad) & UNSAFE_NAMES == {"pickle"}
