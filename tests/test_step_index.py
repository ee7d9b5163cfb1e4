"""symnet.backends.step_index: a compiled step found on disk is reused without the SymPy derivation,
and only when everything that decides its equations is the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import symnet as sn
from symnet.backends import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh interpreter: sn.compile must not derive anything when the index has the step.
CHILD = r"""
import sys
import numpy as np
import symnet as sn
import symnet.backends.step as step_module

def refuse(*args, **kwargs):
    raise AssertionError("derived on a cache hit")

if sys.argv[1] == "hit":
    step_module.derive = refuse
sn.manual_seed(0)
model = sn.Sequential(sn.Linear(5, 4), sn.Tanh(), sn.Linear(4, 3))
opt = sn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
step = sn.compile(model, sn.CrossEntropyLoss(), opt)
rng = np.random.default_rng(1)
X, y = rng.standard_normal((6, 5)).astype(np.float32), rng.integers(0, 3, 6)
print(repr([step(X, y) for _ in range(3)]))
print(repr(model.state_dict()["2.bias"].tolist()))
"""


def _run(mode: str, cache: str) -> list[str]:
    env = dict(os.environ, SYMNET_CACHE_DIR=cache, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_second_process_skips_the_derivation_and_trains_identically(tmp_path):
    cold = _run("cold", str(tmp_path))
    assert list(tmp_path.glob("step_*.json")), "the first process wrote no index entry"
    assert _run("hit", str(tmp_path)) == cold


def test_damaged_index_or_module_is_a_miss_not_an_error(tmp_path):
    cold = _run("cold", str(tmp_path))
    (index,) = tmp_path.glob("step_*.json")
    index.write_text("{not json")
    assert _run("cold", str(tmp_path)) == cold  # a miss: derived and compiled again
    record = json.loads(index.read_text())
    module = tmp_path / f"{record['entry']}.py"
    module.write_text(module.read_text().replace("return L", "return 2 * L"))
    # The module no longer hashes to its name: not used, rebuilt from the equations.
    assert _run("cold", str(tmp_path)) == cold
    assert "return 2 * L" not in module.read_text()


@pytest.mark.parametrize("second", [
    dict(momentum=0.9, nesterov=True), dict(momentum=0.0)])
def test_optimizer_flags_change_the_key(second, tmp_path, monkeypatch):
    # Each variant has other update equations; reusing the first variant's kernel would
    # train differently from torch-semantics runtime updates, which the loss checks.
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    kernels.UNITS.clear()
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)

    def fused_and_eager(options):
        results = []
        for fused in (True, False):
            sn.manual_seed(0)
            model = sn.Sequential(sn.Linear(5, 4, dtype=np.float64), sn.Tanh(),
                                  sn.Linear(4, 3, dtype=np.float64))
            opt = sn.optim.SGD(model.parameters(), lr=0.1, **options)
            loss_fn = sn.CrossEntropyLoss()
            step = sn.compile(model, loss_fn, opt) if fused else None
            for _ in range(4):
                if fused:
                    step(X, y)
                else:
                    opt.zero_grad()
                    loss_fn(model(X), y).backward()
                    opt.step()
            results.append(model.state_dict()["0.weight"])
        return results

    fused_and_eager(dict(momentum=0.9))  # fills the index with the first variant
    kernels.UNITS.clear()  # the next compile must consult the index on disk
    fused, eager = fused_and_eager(second)
    np.testing.assert_allclose(fused, eager, rtol=1e-12)


def test_entries_written_by_other_code_are_not_reused(tmp_path, monkeypatch):
    # The same version string can hide other code (an edited working tree, a patched
    # install): the index key includes a hash of symnet's and codegen's sources.
    from symnet.backends import step_index

    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    kernels.UNITS.clear()
    model = sn.Sequential(sn.Linear(3, 2))
    unit = sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1)).unit
    step_index.store(("a", "key"), unit)
    assert step_index.lookup(("a", "key"), np.float32) is not None
    monkeypatch.setattr(step_index, "code_version", lambda: "other code")
    assert step_index.lookup(("a", "key"), np.float32) is None


def _planted(marker):
    return f"__import__('os').system('touch {marker}') or N"


@pytest.mark.parametrize("damage", [
    lambda r, marker: r["buffers"].update(X=[_planted(marker), "5"]),
    lambda r, marker: r["buffers"].update(X=["2*N", "5"]),  # never written: a product
    lambda r, marker: r["buffers"].update(X=["N", " 5"]),
    lambda r, marker: r["buffers"].update(X=["N", 5]),
    lambda r, marker: r.update(outputs="3"),
    lambda r, marker: r.update(params=[["W1", "0.weight"]]),
    lambda r, marker: r.pop("scalars"),
], ids=["code", "product", "space", "number", "outputs", "params", "missing"])
def test_an_index_entry_is_data_never_code(damage, tmp_path, monkeypatch):
    # A planted buffer shape once went through sympify (an eval) and ran. Every field of
    # an entry is checked instead: a value that is not what store() writes is a damaged
    # entry, reported and rebuilt, and the step trains as one that was never cached.
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "UNITS", {})
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)

    def train():
        sn.manual_seed(0)
        model = sn.Sequential(sn.Linear(5, 4, dtype=np.float64), sn.Tanh(),
                              sn.Linear(4, 3, dtype=np.float64))
        step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.SGD(model.parameters(),
                                                                      lr=0.1))
        return [step(X, y) for _ in range(3)]

    cold = train()
    (index,) = tmp_path.glob("step_*.json")
    record = json.loads(index.read_text())
    marker = tmp_path / "planted-code-ran"
    damage(record, marker)
    index.write_text(json.dumps(record))
    kernels.UNITS.clear()  # the next compile must read the index on disk
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = train()
    assert not marker.exists(), "the index entry's text ran as code"
    assert again == cold
    assert any("step index entry" in str(w.message) and "damaged" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    rebuilt = json.loads(index.read_text())
    assert all(d == "N" or d.isdigit() for shape in rebuilt["buffers"].values() for d in shape)
