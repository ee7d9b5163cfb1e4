"""``symnet kernels`` (symnet.app.show): the fused step's source, commented with its formulas."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from symnet.app.architecture import Architecture
from symnet.app.show import kernel_source
from symnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
MNIST = Architecture((784, 128, 10), "relu", "cross-entropy")

#: the backward pass of 784-128-10 ReLU + cross-entropy (mean), written out by hand from
#: the textbook, in the comment syntax the kernels use (SymPy's ``str``)
BACKWARD = {
    "dZ2": "dZ2 = (-Y + Yhat)/N",
    "dW2": "dW2 = dZ2*A1.T",
    "db2": "db2 = dZ2*1",
    "dA1": "dA1 = W2.T*dZ2",
    "dZ1": "dZ1 = dA1*Heaviside(Z1)",
    "dW1": "dW1 = dZ1*X.T",
    "db1": "db1 = dZ1*1",
}
ADAM_W1 = ["mW1 = beta1*mW1 + dW1*(1 - beta1)", "vW1 = beta2*vW1 + dW1**2*(1 - beta2)",
           "W1 = W1 - lr*mhatW1/(eps + sqrt(vhatW1))"]
#: the statement that starts an op's work: a product, a top-level loop, a kernel launch
#: (``_clear``, which zeroes the accumulator of the reduction launched next, is not one)
WORK = {"cpu": re.compile(r"^(np\.dot\(|_gemm\(|_gemm_add\(|for )"),
        "cuda": re.compile(r"^\w+\[_(line|plane|tiles)\(")}


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def source(request) -> tuple[str, str]:
    return request.param, kernel_source(MNIST, "adam", request.param)


def _comments(src: str) -> set[str]:
    return {line.strip()[2:].split("  (")[0] for line in src.splitlines()
            if line.strip().startswith("# ")}


def test_source_is_python(source):
    device, src = source
    compile(src, f"<symnet kernels --device {device}>", "exec")


def test_backward_and_update_formulas_are_commented(source):
    _, src = source
    comments = _comments(src)
    for name, formula in BACKWARD.items():
        assert formula in comments, (name, sorted(comments))
    for formula in ADAM_W1:
        assert formula in comments, formula


def test_every_op_of_the_train_function_follows_its_formula(source):
    """``train_step``'s body alternates formula comments and code; each stretch of code
    starts at most one op (product, loop or launch), and every op has a comment above it."""
    device, src = source
    tree = ast.parse(src)
    (step,) = [f for f in tree.body
               if isinstance(f, ast.FunctionDef) and f.name == "train_step"]
    body = src.splitlines()[step.lineno:step.end_lineno]
    top = [line[4:] for line in body if line.startswith("    ") and line[4] != " "]
    runs: list[tuple[bool, list[str]]] = []  # (is comment, lines)
    for line in top:
        comment = line.startswith("# ")
        if runs and runs[-1][0] == comment:
            runs[-1][1].append(line)
        else:
            runs.append((comment, [line]))
    ops = 0
    for k, (comment, lines) in enumerate(runs):
        starts = [line for line in lines if not comment and WORK[device].match(line)]
        if starts:
            assert len(starts) == 1, f"{device}: two ops under one comment: {starts}"
            assert k > 0 and runs[k - 1][0], f"{device}: {starts[0]!r} has no formula above"
            assert any(" = " in c or " += " in c or c.startswith("# check_finite: no update")
                       for c in runs[k - 1][1]), runs[k - 1][1]
            ops += 1
    # one-hot, 5 products, 4 fused loops, 1 row op, 1 loss, 2 sums, 4 updates; on the CPU
    # dA1 = W2ᵀ·dZ2 (10 terms) is summed in dZ1's loop, each bias gradient in its dZ's loop,
    # and the finite check is calls; on the GPU the product and the sums stay ops of their
    # own and the check is a launch of its own
    assert ops == (15 if device == "cpu" else 19)


def test_every_cuda_kernel_says_what_it_computes():
    src = kernel_source(MNIST, "sgd", "cuda")
    tree = ast.parse(src)
    jitted = [f for f in tree.body if isinstance(f, ast.FunctionDef) and any(
        "cuda.jit(cache=True)" in ast.unparse(d) for d in f.decorator_list)]
    assert {f.name for f in jitted} >= {"matmul_nt", "matmul_tn", "matmul_nn", "loop_dZ1"}
    for f in jitted:
        assert ast.get_docstring(f), f.name
        if f.name in ("_clear", "check_finite"):  # chores (zero an accumulator, set a
            continue  # flag), not formulas
        text = ast.get_source_segment(src, f)
        assert " = " in ast.get_docstring(f) or re.search(r"# \w+ (\+)?= ", text), f.name


@pytest.mark.parametrize("optimizer, present, absent", [
    ("sgd", "W1 = W1 - dW1*lr", "mW1"),
    ("adam", "W1 = W1 - lr*mhatW1/(eps + sqrt(vhatW1))", "weight_decay"),
    ("adamw", "W1 = W1 - lr*(W1*weight_decay + mhatW1/(eps + sqrt(vhatW1)))",
     "W1 = W1 - lr*mhatW1/(eps + sqrt(vhatW1))"),
])
def test_optimizer_changes_the_update(optimizer, present, absent):
    src = kernel_source(Architecture((4, 3, 2), "tanh", "mse"), optimizer, "cpu")
    comments = _comments(src)
    assert present in comments, sorted(comments)
    assert not any(absent in c for c in comments)


def test_cuda_source_is_what_cuda_train_step_compiles():
    """Rendered without numba.cuda, it equals the source `CudaTrainStep` builds and imports
    (under Numba's CUDA simulator, in a fresh process so the simulator can be enabled)."""
    code = ("import symnet as sn, sys\n"
            "from symnet.app.architecture import Architecture\n"
            "from symnet.backends.cuda import CudaTrainStep\n"
            "from symnet.app.show import kernel_source\n"
            "arch = Architecture((5, 4, 3), 'sigmoid', 'cross-entropy')\n"
            "m = arch.model().to('cuda')\n"
            "opt = sn.optim.Adam(m.parameters())\n"
            "step = CudaTrainStep(m, arch.loss_function(), opt, tile=16)  # a GPU's tile\n"
            "sys.exit(0 if step.source() == kernel_source(arch, 'adam', 'cuda') else 3)\n")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_cli_prints_the_source(capsys):
    assert main(["kernels", "--layers", "784,128,10", "--activation", "relu", "--loss",
                 "cross-entropy", "--optimizer", "adam", "--device", "cuda"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "@cuda.jit(cache=True)" in out
    assert "# dW1 = dZ1*X.T" in out and "def train_step(" in out
    assert main(["kernels", "--layers", "4,3,2", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "real = np.float64" in out and "# dZ1 = dA1*Heaviside(Z1)" in out


@pytest.mark.parametrize("kwargs, mentions", [
    ({"optimizer": "rmsprop"}, "rmsprop"), ({"device": "tpu"}, "tpu"),
])
def test_bad_choices_name_the_argument(kwargs, mentions):
    with pytest.raises(ValueError, match=mentions):
        kernel_source(MNIST, **kwargs)
