"""Reliability: a diverging step is refused (``check_finite``), bad input gets a clear error
and changes nothing, and no name reaches generated source as code.

The "changes nothing" checks compare byte copies of parameters, optimizer state and the
step count taken before the failing call; the finite-check results are compared with a
twin model that never saw the bad batch (two execution modes, not the code with itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import symnet as sn
from codegen.ir import CheckFinite, Loop
from codegen.lower import lower
from symnet.symbolic.graph import N

IN, HIDDEN, OUT, BATCH = 3, 5, 2, 8

OPTIMIZERS = {
    "SGD-momentum": lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    "Adam": lambda p: sn.optim.Adam(p, lr=0.01),
}


def _model(seed: int = 0, dtype=np.float64) -> sn.Sequential:
    sn.manual_seed(seed)
    return sn.Sequential(sn.Linear(IN, HIDDEN), sn.Tanh(), sn.Linear(HIDDEN, OUT)).to(dtype)


def _data(seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, IN)), rng.standard_normal((BATCH, OUT))


def _snapshot(model, opt) -> tuple:
    """Bytes of every parameter and optimizer buffer, and the step count."""
    tensors = opt.state_dict()["tensors"]
    return ({k: v.tobytes() for k, v in model.state_dict().items()},
            {k: np.asarray(v).tobytes() for k, v in tensors.items()}, opt.step_count)


# --- check_finite: a step whose loss or gradients are not finite is not applied ----------

@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_non_finite_loss_is_refused_and_training_continues(name):
    model, twin = _model(), _model()
    opt, twin_opt = OPTIMIZERS[name](model.parameters()), OPTIMIZERS[name](twin.parameters())
    step = sn.compile(model, sn.MSELoss(), opt, check_finite=True)
    twin_step = sn.compile(twin, sn.MSELoss(), twin_opt, check_finite=False)  # unguarded
    X, Y = _data()
    for _ in range(3):
        assert step(X, Y) == twin_step(X, Y)
    before = _snapshot(model, opt)
    with pytest.raises(FloatingPointError, match=r"^train step 4: the loss became inf; "
                       r"parameters and optimizer state were left unchanged"):
        step(X, np.full_like(Y, 1e200))  # (ŷ − y)² overflows: the loss is inf
    assert _snapshot(model, opt) == before
    for _ in range(3):  # the refused step left no trace: still in lockstep with the twin
        assert step(X, Y) == twin_step(X, Y)
    assert _snapshot(model, opt) == _snapshot(twin, twin_opt)


def test_without_check_finite_the_same_step_corrupts_the_parameters():
    """What the guard prevents: the unguarded step applies an infinite update."""
    model = _model()
    step = sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1),
                      check_finite=False)
    X, Y = _data()
    with np.errstate(all="ignore"):
        assert not np.isfinite(step(X, np.full_like(Y, 1e200)))
    assert max(np.abs(p.data).max() for p in model.parameters()) > 1e100


def test_non_finite_gradient_with_a_finite_loss_is_refused():
    """∛x has an infinite slope at 0: the loss is finite, dW1 is not."""
    x = sp.Symbol("x", real=True)
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(2, 3), sn.Activation("cbrt", sp.cbrt(x), x),
                          sn.Linear(3, 1)).to(np.float64)
    model.load_state_dict({**model.state_dict(), "0.bias": np.zeros(3)})
    opt = sn.optim.Adam(model.parameters(), lr=0.01)
    step = sn.compile(model, sn.MSELoss(), opt, check_finite=True)
    before = _snapshot(model, opt)
    with pytest.raises(FloatingPointError, match=r"train step 1: a gradient became NaN or Inf "
                       r"\(loss [0-9.e+-]+\); parameters and optimizer state were left"):
        step(np.zeros((4, 2)), np.ones((4, 1)))
    assert _snapshot(model, opt) == before


def test_a_diverging_float32_run_stops_with_the_last_finite_parameters():
    model = _model(dtype=np.float32)
    opt = sn.optim.SGD(model.parameters(), lr=1e4)
    step = sn.compile(model, sn.MSELoss(), opt, check_finite=True)
    X, Y = (a.astype(np.float32) for a in _data())
    last = None
    with pytest.raises(FloatingPointError, match="train step") as error:
        for _ in range(200):
            last = _snapshot(model, opt)
            step(X, Y * 1e3)
    assert f"train step {opt.step_count + 1}:" in str(error.value)
    assert _snapshot(model, opt) == last
    assert all(np.isfinite(p.data).all() for p in model.parameters())


def test_the_check_sits_between_the_gradients_and_the_updates():
    model = _model()
    step = sn.compile(model, sn.CrossEntropyLoss(),
                      sn.optim.Adam(model.parameters(), lr=0.01), check_finite=True)
    ops = step.program.ops
    (at,) = [k for k, op in enumerate(ops) if isinstance(op, CheckFinite)]
    state = step.derivation.state_symbols()

    gradients = {"d" + name for name in step.derivation.graph.params}
    assert all(not op.writes & state for op in ops[:at])
    assert all(op.writes <= state for op in ops[at + 1:])
    assert gradients <= set().union(*(op.writes for op in ops[:at]))
    assert {name for name, _ in ops[at].arrays} == gradients and ops[at].value == "L"


def test_lower_refuses_a_check_placed_after_an_update():
    model = _model()
    d = sn.derive(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    eqs = d.forward + d.backward + d.updates
    with pytest.raises(ValueError, match=r"updated before the finite check"):
        lower("train_step", eqs, N, ("X", "Y"), frozenset(d.state_symbols()),
              guard_at=len(eqs) - 1)


def test_check_finite_off_emits_nothing_and_is_its_own_kernel():
    model = _model()
    opt = sn.optim.SGD(model.parameters(), lr=0.1)
    plain = sn.compile(model, sn.MSELoss(), opt, check_finite=False)
    guarded = sn.compile(model, sn.MSELoss(), opt)  # the default
    assert "nonfinite" not in plain.source() and "nonfinite" in guarded.source()
    assert not any(isinstance(op, CheckFinite) for op in plain.program.ops)
    assert plain.unit is not guarded.unit
    assert isinstance(plain.function(*_call_args(plain)), float)


def _call_args(step):
    X, Y = _data()
    step(X, Y)  # fills the argument cache
    hyper = {**step.optimizer.hyperparameters(), "t": 1}
    return (X, Y, *step._cache[2], *[hyper[s] for s in step.program.scalars])


# --- bad input: a clear error naming the layer or loss, and nothing changes ------------

L0 = r"Linear\(3, 5\) \(layer 0\)"
MSE = r"MSELoss\(reduction='mean'\)"
RAGGED = [[1.0, 2.0, 3.0], [1.0, 2.0]] * 4
BAD_INPUTS = {
    "complex": (np.ones((BATCH, IN), complex), TypeError, L0 + r" got input of dtype complex"),
    "object": (np.ones((BATCH, IN), object), TypeError, L0 + r" got input of dtype object"),
    "strings": (np.full((BATCH, IN), "1.0"), TypeError, L0 + r" got input of dtype <U3"),
    "bytes": (np.full((BATCH, IN), b"1"), TypeError, L0 + r" got input of dtype \|S1"),
    "None": (None, TypeError, L0 + r" got input of dtype object"),
    "ragged": (RAGGED, ValueError, L0 + r" got input that is not a rectangular array"),
    "too wide": (np.ones((BATCH, IN + 1)), ValueError, L0 + r" got input with 4 features, "
                 r"expected 3"),
    "3-D": (np.ones((BATCH, IN, 1)), ValueError, L0 + r" expects input of shape \(N, 3\), "
            r"got shape \(8, 3, 1\)"),
    "empty": (np.ones((0, IN)), ValueError, L0 + r" got an empty batch"),
    "Inf": (np.full((BATCH, IN), -np.inf), ValueError, L0 + r" got input containing NaN or Inf"),
}
BAD_TARGETS = {
    "complex": (np.ones((BATCH, OUT), complex), TypeError, MSE + r" got targets of dtype complex"),
    "strings": (np.full((BATCH, OUT), "0"), TypeError, MSE + r" got targets of dtype <U1"),
    "ragged": ([[1.0, 2.0], [1.0]] * 4, ValueError, MSE + r" got targets that is not a "
               r"rectangular array"),
    "transposed": (np.ones((OUT, BATCH)), ValueError, MSE + r" expects targets of shape "
                   r"\(8, 2\), got \(2, 8\)"),
    "NaN": (np.full((BATCH, OUT), np.nan), ValueError, MSE + r" got targets containing NaN"),
}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([np.float32, np.float64]), st.integers(1, 40), st.integers(1, 40),
       st.data())
def test_one_non_finite_entry_anywhere_is_found(dtype, rows, cols, data):
    """The allocation-free scan behind the input check agrees with np.isfinite: one NaN or
    ±Inf anywhere (any size, so the vectorised body and its remainder are both hit), and
    the largest finite values pass."""
    from symnet.backends.checks import _nonfinite_sum

    info = np.finfo(dtype)
    a = np.random.default_rng(rows * 41 + cols).uniform(-1, 1, (rows, cols)).astype(dtype)
    a.flat[data.draw(st.integers(0, a.size - 1))] = data.draw(st.sampled_from(
        [np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny, 0.0]))
    assert (_nonfinite_sum(a.reshape(-1)) != 0) == (not np.isfinite(a).all())


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_to_a_step_and_to_the_model(case):
    inputs, error, pattern = BAD_INPUTS[case]
    model = _model()
    opt = sn.optim.Adam(model.parameters(), lr=0.01)
    step = sn.compile(model, sn.MSELoss(), opt, check_finite=True)
    X, Y = _data()
    step(X, Y)
    before = _snapshot(model, opt)
    with pytest.raises(error, match=pattern):
        step(inputs, Y[: len(inputs)] if isinstance(inputs, np.ndarray) else Y)
    with pytest.raises(error, match=pattern):
        model(inputs)
    assert _snapshot(model, opt) == before


@pytest.mark.parametrize("case", list(BAD_TARGETS))
def test_bad_targets_to_a_step_and_to_the_loss(case):
    target, error, pattern = BAD_TARGETS[case]
    model = _model()
    opt = sn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = sn.compile(model, sn.MSELoss(), opt)
    X, Y = _data()
    step(X, Y)
    before = _snapshot(model, opt)
    with pytest.raises(error, match=pattern):
        step(X, target)
    with pytest.raises(error, match=pattern):
        sn.MSELoss()(model(X), target)
    assert _snapshot(model, opt) == before and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint32,
                                   np.uint64])
@pytest.mark.parametrize("position", [0, BATCH - 1])
def test_a_label_outside_the_classes_is_named_for_every_integer_dtype(dtype, position):
    """Labels of any integer dtype: the first one outside [0, classes) is named, the
    largest class is accepted, and nothing changes."""
    from symnet.backends.checks import check_targets

    loss = sn.CrossEntropyLoss()
    labels = np.ones(BATCH, dtype)
    np.testing.assert_array_equal(check_targets(loss, labels, BATCH, 2, np.float32), 1)
    labels[position] = 2
    with pytest.raises(ValueError, match=r"label 2 is outside \[0, 2\)"):
        check_targets(loss, labels, BATCH, 2, np.float32)
    if np.issubdtype(dtype, np.signedinteger):
        labels[position] = -1
        with pytest.raises(ValueError, match=r"label -1 is outside \[0, 2\)"):
            check_targets(loss, labels, BATCH, 2, np.float32)


@pytest.mark.parametrize("labels", [np.full(BATCH, 2**63, np.uint64), np.array(["0"] * BATCH),
                                    np.zeros(BATCH, complex), np.zeros(BATCH, bool)])
def test_class_labels_of_the_wrong_kind(labels):
    model = _model()
    opt = sn.optim.Adam(model.parameters(), lr=0.01)
    step = sn.compile(model, sn.CrossEntropyLoss(), opt)
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss\(reduction='mean'\)(: label "
                       r"9223372036854775808 is outside \[0, 2\)| expects integer class)"):
        step(_data()[0], labels)
    assert _snapshot(model, opt) == before


def test_float32_overflow_of_finite_float64_input_is_named():
    model = _model(dtype=np.float32)
    with pytest.raises(ValueError, match=L0 + r" got input containing NaN or Inf \(or values "
                       r"beyond the range of float32\)"):
        model(np.full((2, IN), 1e300))


def test_read_only_and_strided_arrays_train_like_fresh_contiguous_copies():
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((2 * BATCH, 2 * IN))
    X = wide[::2, ::2]  # strided view, not contiguous
    labels = rng.integers(0, OUT, 2 * BATCH)[::2]
    X_ro, labels_ro = X.copy(), labels.copy()
    X_ro.flags.writeable = labels_ro.flags.writeable = False
    results = []
    for inputs, targets in ((np.ascontiguousarray(X), labels.copy()), (X, labels),
                            (X_ro, labels_ro)):
        model = _model()
        opt = sn.optim.Adam(model.parameters(), lr=0.01)
        step = sn.compile(model, sn.CrossEntropyLoss(), opt)
        losses = [step(inputs, targets) for _ in range(3)]
        results.append((losses, _snapshot(model, opt), model(inputs).tobytes()))
    assert results[1] == results[0] and results[2] == results[0]
    assert not X_ro.flags.writeable and np.array_equal(X_ro, X)  # read, never written


# --- names never reach generated source as code ------------------------------------------

HOSTILE = "x); import os; os.system('touch PWNED')#"


def _run_isolated(tmp_path, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh process inside ``tmp_path`` with its own kernel cache."""
    script = "import numpy as np, sympy as sp, symnet as sn\n" + textwrap.dedent(body)
    env = {**os.environ, "SYMNET_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300, check=False)


def test_hostile_names_never_run(tmp_path):
    run = _run_isolated(tmp_path, f"""
        x = sp.Symbol("x")
        try:
            sn.Activation({HOSTILE!r}, sp.tanh(x), x)
        except ValueError as e:
            print("activation:", e)
        try:
            sn.Loss({HOSTILE!r}, (x - sp.Symbol("t"))**2, x, sp.Symbol("t"))
        except ValueError as e:
            print("loss:", e)
        # A class name is not checked at declaration; it reaches the generated module's
        # docstring through repr(model), so it must be escaped there.
        Evil = type('Evil\"\"\"\\nimport os; os.system("touch PWNED")\\n\"\"\"\\\\',
                    (sn.Activation,),
                    {{"__init__": lambda s: sn.Activation.__init__(s, "evil", sp.tanh(x), x)}})
        model = sn.Sequential(sn.Linear(2, 2), Evil(), sn.Linear(2, 1))
        step = sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1))
        print("step:", step(np.ones((3, 2)), np.zeros((3, 1))))
        print("header:", repr(step.source().split("import math")[0]))
    """)
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "PWNED").exists()
    out = run.stdout
    assert f"activation: activation name {HOSTILE!r} is not a valid Python identifier" in out
    assert f"loss: loss name {HOSTILE!r} is not a valid Python identifier" in out
    assert "step: " in out and 'Evil\\\\"\\\\"\\\\"' in out  # the quotes stayed escaped


def test_a_bound_symbol_with_a_hostile_name_is_rejected():
    x = sp.Symbol("x")
    k = sp.Symbol("k in range(1)) or __import__('os').system('touch PWNED') or (k")
    with pytest.raises(ValueError, match="binds .* closed-form function of x"):
        sn.Activation("summed", sp.Sum(x * k, (k, 1, 2)), x)


def test_codegen_refuses_to_print_a_name_that_is_not_an_identifier():
    """The last line of defence, below the declarations: the renderer itself."""
    from codegen.cpu import render_module
    from codegen.ir import Buffer, Program

    i, j = sp.symbols("i j", integer=True)
    hostile = sp.Symbol("0); __import__('os').system('touch PWNED'); (0")
    loop = Loop((2, 2), (("A", sp.IndexedBase("Z")[i, j] * hostile),))
    program = Program("f", (loop,), ("Z", "A"), (hostile.name,),
                      {"Z": Buffer("Z", (2, 2)), "A": Buffer("A", (2, 2))})
    with pytest.raises(ValueError, match="not a Python identifier"):
        render_module([program], N)
