"""codegen.cuda: every kernel kind against numpy or `codegen.cpu` on the same Program.

Runs under Numba's CUDA simulator (one Python thread per CUDA thread: tiny shapes), or on
a GPU when ``NUMBA_ENABLE_CUDASIM=0`` and one is present.  If ``numba.cuda`` was loaded
before this module could enable the simulator, the file re-runs itself in a subprocess.
``test_kernels_compile_to_ptx`` compiles the generated kernels for sm_90 with the real
CUDA compiler, which rejects code the simulator accepts.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before Numba is imported

import numba  # noqa: E402

if "numba.cuda" not in sys.modules:  # Numba came first (another test module), numba.cuda
    numba.config.reload_config()  # not yet: re-read, so the variable still takes effect

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import sympy as sp  # noqa: E402
from cuda_support import compile_ptx_in_subprocess, compile_to_ptx, rerun_in_simulator  # noqa: E402
from numba import config  # noqa: E402
from numba import cuda as numba_cuda  # noqa: E402

from codegen import cpu  # noqa: E402
from codegen import cuda as render  # noqa: E402
from codegen.cache import load_module  # noqa: E402
from codegen.expr import (  # noqa: E402
    Elementwise,
    LogSoftmax,
    LogSoftmaxVJP,
    Softmax,
    SoftmaxVJP,
    Total,
)
from codegen.ir import Buffer, CheckFinite, MatMul, OneHot, Program, Reduce  # noqa: E402
from codegen.lower import lower  # noqa: E402

SIMULATED = bool(config.ENABLE_CUDASIM)
RUNS_HERE = SIMULATED or numba_cuda.is_available()
needs_cuda = pytest.mark.skipif(not RUNS_HERE, reason="Numba was imported without the CUDA "
                                "simulator and there is no GPU: test_in_simulator reruns")
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.mark.skipif(RUNS_HERE, reason="CUDA (or its simulator) runs in this process")
def test_in_simulator():
    """This file again, in a process that enables the simulator before importing Numba."""
    rerun_in_simulator(__file__)


# --- running a program on both backends -----------------------------------------------------
N = sp.Symbol("N", integer=True, positive=True)
SCALARS = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "c": 0.25, "t": 3}


def _gpu_module(programs, dtype, tile=render.TILE):
    source = render.render_module(programs, N, dtype, tile, header="codegen.cuda test")
    return load_module(source, {"device": "cuda", "dtype": np.dtype(dtype).name,
                                "tile": tile, "test": True})


def _cpu_function(program, real):
    source = cpu.render_module([program], N, header="codegen.cpu reference", real=real)
    return getattr(load_module(source, {"device": "cpu", "test": True}), program.name).py_func


def _inputs(program, batch, dtype, rng) -> dict[str, np.ndarray]:
    """Every array of ``program``, random (labels are class indices, ``v…`` is ≥ 0)."""
    labels = {op.indices: op.out for op in program.ops if isinstance(op, OneHot)}
    arrays = {}
    for name in program.arguments:
        if name in labels:
            classes = program.buffers[labels[name]].shape[1]
            arrays[name] = rng.integers(0, classes, batch).astype(np.int64)
            continue
        shape = tuple(int(sp.sympify(d).subs(N, batch)) for d in program.buffers[name].shape)
        low = 0.0 if name.startswith("v") else -1.0
        arrays[name] = rng.uniform(low, 1.0, shape).astype(dtype)
    return arrays


def _run_gpu(program, arrays, dtype, tile=render.TILE, module=None):
    driver = getattr(module or _gpu_module([program], dtype, tile), program.name)
    device = {n: numba_cuda.to_device(a) for n, a in arrays.items()}
    totals = [numba_cuda.device_array(1, np.float64) for _ in render.accumulators(program)]
    value = driver(*(device[n] for n in program.arguments),
                   *(SCALARS[s] for s in program.scalars), *totals)
    return value, {n: d.copy_to_host() for n, d in device.items()}


def _run_cpu(program, arrays):
    copies = {n: a.copy() for n, a in arrays.items()}
    real = next(a.dtype.name for a in arrays.values() if a.dtype.kind == "f")
    value = _cpu_function(program, real)(*(copies[n] for n in program.arguments),
                                   *(SCALARS[s] for s in program.scalars))
    return value, copies


# --- the tiled product ------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("ta", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("tb", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("tile, sizes, dtype", [
    (16, (17, 19, 18), np.float64),  # 2×2 tiles of 16, a ragged edge on every side
    (4, (6, 9, 7), np.float32),
], ids=["tile16-f64", "tile4-f32"])
def test_matmul(ta, tb, tile, sizes, dtype, assert_close):
    rows, inner, cols = sizes
    rng = np.random.default_rng(rows + 2 * ta + tb)
    a = rng.standard_normal((inner, rows) if ta else (rows, inner)).astype(dtype)
    b = rng.standard_normal((cols, inner) if tb else (inner, cols)).astype(dtype)
    program = Program("product", (MatMul("C", ("A", ta), ("B", tb), "C = op(A)*op(B)"),),
                      ("A", "B", "C"), (), {"A": Buffer("A", a.shape), "B": Buffer("B", b.shape),
                                            "C": Buffer("C", (rows, cols))})
    c = np.full((rows, cols), np.nan, dtype)
    _, out = _run_gpu(program, {"A": a, "B": b, "C": c}, dtype, tile)
    expected = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    assert_close(out["C"], expected, TOLERANCE[dtype] * 10, "C")
    assert np.array_equal(out["A"], a) and np.array_equal(out["B"], b), "operands changed"


# --- entry-wise loops, sums, row ops, reductions: against codegen.cpu ------------------------
def _ew(fn, *operands):
    variables = sp.symbols(f"_e0:{len(operands)}", real=True)
    return Elementwise(sp.Lambda(variables, fn(*variables)), *operands)


def _eq(lhs, rhs):
    return sp.Eq(lhs, rhs, evaluate=False)


def _m(name, rows, cols=N):
    return sp.MatrixSymbol(name, rows, cols)


def _adam(rows, cols):
    """Adam's update of one parameter: hoisted invariants (1 − β₁ᵗ), locals m̂, v̂."""
    lr, b1, b2, eps = sp.symbols("lr beta1 beta2 eps", real=True)
    t = sp.Symbol("t", integer=True, positive=True)
    P, dP, m, v = (_m(n, rows, cols) for n in ("P", "dP", "mP", "vP"))
    mh, vh = _m("mhatP", rows, cols), _m("vhatP", rows, cols)
    eqs = [_eq(m, _ew(lambda a, g: b1 * a + (1 - b1) * g, m, dP)),
           _eq(v, _ew(lambda a, g: b2 * a + (1 - b2) * g**2, v, dP)),
           _eq(mh, _ew(lambda a: a / (1 - b1**t), m)), _eq(vh, _ew(lambda a: a / (1 - b2**t), v)),
           _eq(P, _ew(lambda p, a, b: p - lr * a / (sp.sqrt(b) + eps), P, mh, vh))]
    return eqs, ("dP",), {"P", "mP", "vP"}, None


def _dense():
    """Z = W·X + b·1ᵀ then a softplus-times-sigmoid (both device helpers), fused."""
    X, W, b, Z, A = _m("X", 5), _m("W", 4, 5), _m("b", 4, 1), _m("Z", 4), _m("A", 4)
    act = _ew(lambda z: sp.log(1 + sp.exp(z)) / (1 + sp.exp(-z)), Z)
    return [_eq(Z, W * X + b * sp.OneMatrix(1, N)), _eq(A, act)], ("X",), {"A"}, None


def _piecewise():
    c = sp.Symbol("c", real=True)
    Z, A = _m("Z", 4), _m("A", 4)
    body = _ew(lambda z: sp.Max(0, z) + sp.Min(z, c, 2 * z) + sp.Heaviside(z) * sp.tanh(z), Z)
    return [_eq(A, body)], ("Z",), {"A"}, None


def _row(kind):
    Z, S, G, out = _m("Z", 3), _m("S", 3), _m("G", 3), _m("R", 3)
    rhs = {"softmax": Softmax(Z), "log_softmax": LogSoftmax(Z),
           "softmax_vjp": SoftmaxVJP(S, G), "log_softmax_vjp": LogSoftmaxVJP(S, G)}[kind]
    return [_eq(out, rhs)], tuple(a.name for a in rhs.args), {"R"}, None


def _cross_entropy():
    Z, S, Y = _m("Z", 3), _m("S", 3), _m("Y", 3)
    loss = Total(_ew(lambda y, s: -y * sp.log(s), Y, S)) / N
    return ([_eq(S, Softmax(Z)), _eq(sp.Symbol("L"), loss)], ("Z", "labels"), {"S"},
            {"Y": "labels"})


def _mse():
    c = sp.Symbol("c", real=True)
    A, B = _m("A", 3), _m("B", 3)
    return [_eq(sp.Symbol("L"), c * Total(_ew(lambda a, b: (a - b)**2, A, B)) / N)], \
        ("A", "B"), set(), None


def _vector_sum():
    P = _m("P", 7, 1)
    return [_eq(sp.Symbol("L"), Total(_ew(lambda p: p**2 + p, P)))], ("P",), set(), None


def _rowsum():
    dZ, db = _m("dZ", 3), _m("db", 3, 1)
    return [_eq(db, dZ * sp.OneMatrix(N, 1))], ("dZ",), {"db"}, None


def _rowreduce():
    """Each sample's mean square over its 4 features (RMSNorm's statistic): one pass per
    stored row, the squares never stored."""
    Z, ms = _m("Z", 4), _m("ms", 1)
    rhs = sp.MatMul(sp.Rational(1, 4), sp.OneMatrix(1, 4), _ew(lambda z: z**2, Z),
                    evaluate=False)
    return [_eq(ms, rhs)], ("Z",), {"ms"}, None


CASES = {
    "dense": (_dense, (6, 70)), "piecewise": (_piecewise, (6,)),
    "adam_matrix": (lambda: _adam(3, 4), (6,)), "adam_vector": (lambda: _adam(5, 1), (6,)),
    "softmax": (lambda: _row("softmax"), (6, 300)),
    "log_softmax": (lambda: _row("log_softmax"), (6,)),
    "softmax_vjp": (lambda: _row("softmax_vjp"), (6,)),
    "log_softmax_vjp": (lambda: _row("log_softmax_vjp"), (6,)),
    "rowsum": (_rowsum, (6, 300)), "rowreduce": (_rowreduce, (6, 70)),
    "cross_entropy": (_cross_entropy, (6, 300)),
    "mse": (_mse, (6,)), "vector_sum": (_vector_sum, (6,)),
}


def _program(case: str) -> Program:
    eqs, leading, keep, one_hot = CASES[case][0]()
    return lower(case, eqs, N, leading, frozenset(keep), one_hot)


@needs_cuda
@pytest.mark.parametrize("case, batch", [(c, n) for c, (_, sizes) in CASES.items()
                                         for n in sizes])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_kernels_match_cpu(case, batch, dtype, assert_close):
    program = _program(case)
    arrays = _inputs(program, batch, dtype, np.random.default_rng(batch))
    gpu_value, gpu = _run_gpu(program, arrays, dtype)
    cpu_value, ref = _run_cpu(program, arrays)
    written = [n for n in program.arguments if not np.array_equal(ref[n], arrays[n])]
    assert written or cpu_value != 0, f"{case}: the reference computed nothing"
    for name in program.arguments:
        assert_close(gpu[name], ref[name], TOLERANCE[dtype], f"{case}: {name}")
    assert_close(gpu_value, cpu_value, TOLERANCE[dtype], f"{case}: return value")


def _expected_type(name, program, real):
    """A kernel parameter's Numba type from the program alone: what the driver passes."""
    from numba import types

    indices = {op.indices for op in program.ops if isinstance(op, OneHot)}
    if name in indices:
        return types.Array(types.int64, 1, "C")
    if name == "total" or name == render.FLAG or name.startswith("total_"):
        return types.Array(types.float64, 1, "C")
    if name in program.buffers or name in ("A", "B", "C"):  # C = A·B names its operands
        ndim = len(program.buffers[name].shape) if name in program.buffers else 2
        return types.Array(real, ndim, "C")
    symbols = {s.name: s for op in program.ops for s in op.symbols}
    if name in program.scalars:
        return types.int64 if symbols[name].is_integer else real
    sizes = {x.name for b in program.buffers.values() for x in b.shape if isinstance(x, sp.Symbol)}
    return types.int64 if name in sizes else real  # a size, else a host invariant (k0)


@pytest.mark.parametrize("case", [*CASES, "guard"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_signature_gives_each_parameter_the_type_the_driver_passes(case, dtype):
    from numba import types

    program = _check_program() if case == "guard" else _program(case)
    real = types.float32 if dtype == np.float32 else types.float64
    for kernel in render.kernels(program, N):
        expected = tuple(_expected_type(n, program, real) for n in kernel.params)
        assert render.signature(kernel, program, dtype) == expected, kernel.name


def test_source_names_formulas():
    """No simulator needed: rendering is text."""
    source = render.render_module([_program("cross_entropy"), _program("adam_matrix")], N,
                                  np.float32)
    assert "DTYPE = numba.float32" in source
    assert "# L = sum(-Y*log(S))/N" in source
    assert "cuda.atomic.add(total_L, 0, block[0])" in source
    assert "def loop_P(dP, mP, vP, P, beta1, beta2, eps, k0, k1, k2, k3, lr):" in source
    assert "k2 = DTYPE(1/(1 - beta1**t))  # loop invariant, once per step" in source
    assert " max(" not in source and "_max(" in source  # the CUDA target lacks builtin max


# --- the finite check: against numpy's isfinite -----------------------------------------------
def _check_program() -> Program:
    """``L = Σ Y`` then a finite check of L, a (3, 5) matrix and a 4-vector."""
    from codegen.ir import I, J

    y = sp.IndexedBase("Y")[I, J]
    ops = (Reduce("L", (N, 2), y, sp.Integer(1), "L = sum(Y)"),
           CheckFinite("L", (("A", 2), ("b", 1))))
    buffers = {"Y": Buffer("Y", (N, 2)), "A": Buffer("A", (3, 5)), "b": Buffer("b", (4,))}
    return Program("guard", ops, ("Y", "A", "b"), (), buffers, "L")


SPOILS = {  # (array, entry, value): each entry kind, the last entry of the widest array
    "finite": None, "Y nan": ("Y", (1, 0), np.nan), "A inf last": ("A", (2, 4), np.inf),
    "A -inf first": ("A", (0, 0), -np.inf), "A nan middle": ("A", (1, 3), np.nan),
    "b inf last": ("b", (3,), np.inf), "b max finite": ("b", (0,), "max"),
}


@needs_cuda
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # simulator threads: inf · 0
@pytest.mark.parametrize("spoil", list(SPOILS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_check_finite_flags_exactly_the_non_finite(spoil, dtype, assert_close):
    program = _check_program()
    rng = np.random.default_rng(3)
    arrays = {"Y": rng.standard_normal((3, 2)), "A": rng.standard_normal((3, 5)),
              "b": rng.standard_normal(4)}
    arrays = {n: a.astype(dtype) for n, a in arrays.items()}
    if SPOILS[spoil]:
        name, at, value = SPOILS[spoil]
        arrays[name][at] = np.finfo(dtype).max if value == "max" else value
    (loss, finite), out = _run_gpu(program, arrays, dtype)
    expected = all(np.isfinite(a).all() for a in arrays.values())
    assert finite is expected
    total = arrays["Y"].astype(np.float64).sum()
    if np.isnan(total):
        assert np.isnan(loss)
    else:
        assert_close(loss, total, TOLERANCE[dtype], "the loss returned beside the flag")
    assert all(np.array_equal(out[n], a, equal_nan=True) for n, a in arrays.items())


def test_check_finite_off_renders_no_check():
    """No simulator needed: without a CheckFinite op there is no flag, kernel or tuple."""
    plain = _check_program()
    plain = Program("plain", plain.ops[:1], ("Y",), (), plain.buffers, "L")
    source = render.render_module([plain], N, np.float64)
    assert "nonfinite" not in source and "check_finite" not in source
    assert render.accumulators(plain) == ("total_L",)
    assert render.accumulators(_check_program()) == ("total_L", "nonfinite")


@needs_cuda
def test_rendered_module_restores_numpy_row_stack(monkeypatch, assert_close):
    """numba-cuda 0.30.4 overloads np.row_stack at its first compile; NumPy 2.5 removed the
    alias, and every launch raised AttributeError (seen on an H200 with NumPy 2.5.2).  Here
    NumPy lacks it, a fresh rendered module is loaded, and its kernels run."""
    monkeypatch.delattr(np, "row_stack", raising=False)
    program = _program("cross_entropy")
    source = render.render_module([program], N, np.float64, header="NumPy 2.5 compat test")
    module = load_module(source, {"device": "cuda", "dtype": "float64", "test": "row_stack"})
    assert np.row_stack is np.vstack
    arrays = _inputs(program, 6, np.float64, np.random.default_rng(0))
    gpu_value, _ = _run_gpu(program, arrays, np.float64, module=module)
    cpu_value, _ = _run_cpu(program, arrays)
    assert_close(gpu_value, cpu_value, 1e-12, "cross_entropy loss")


# --- the real compiler -----------------------------------------------------------------------


def _ptx_programs():
    """Single-op programs, every matmul variant, and three whole train steps (with the
    finite check, so its kernel compiles in float32 and float64 too), the last through a
    BatchNorm1d (batch statistics, running-statistic updates), a residual LayerNorm block
    (row statistics: `RowReduce`) and a Dropout (a mask input)."""
    import symnet as sn
    from symnet.backends import kernels
    from symnet.symbolic.backprop import derive

    class Block(sn.Module):  # x + fc(gelu(norm(x)))
        def __init__(self, d):
            super().__init__()
            self.norm, self.fc = sn.LayerNorm(d), sn.Linear(d, d)

        def forward(self, x):
            return x + self.fc(sn.gelu(self.norm(x)))

    programs = [(_program(case), np.float32) for case in CASES]
    shapes = {"A": Buffer("A", (3, 3)), "B": Buffer("B", (3, 3)), "C": Buffer("C", (3, 3))}
    for ta in (False, True):
        for tb in (False, True):
            op = MatMul("C", ("A", ta), ("B", tb))
            programs.append((Program(f"p{ta:d}{tb:d}", (op,), ("A", "B", "C"), (), shapes),
                             np.float64))
    steps = (
        ((sn.Linear(5, 4), sn.ReLU(), sn.Linear(4, 3)), sn.CrossEntropyLoss, sn.optim.Adam,
         np.float32),
        ((sn.Linear(5, 4), sn.Tanh(), sn.Linear(4, 3)), sn.MSELoss, sn.optim.SGD, np.float64),
        ((sn.Linear(5, 4), sn.BatchNorm1d(4), sn.Tanh(), Block(4), sn.Dropout(0.25),
          sn.Linear(4, 3)), sn.CrossEntropyLoss, sn.optim.AdamW, np.float32),
    )
    for layers, loss, opt, dtype in steps:
        model = sn.Sequential(*layers).to(dtype)
        d = derive(model, loss(), opt(model.parameters(), lr=0.1))
        programs.append((kernels.step_program(d, loss(), check_finite=True), dtype))
    return programs


def compile_all_ptx() -> int:
    """Compile every generated kernel for sm_90 (run without the simulator); returns a count."""
    return sum(compile_to_ptx(program, N, dtype, "codegen.cuda test")
               for program, dtype in _ptx_programs())


@needs_cuda  # else the rerun in the simulator's process compiles them
def test_kernels_compile_to_ptx():
    compile_ptx_in_subprocess(__file__, "compile_all_ptx")
