"""Render the generated CPU and CUDA sources of many train steps in two trees and compare them.

A refactor of `codegen` must not change a byte of what it generates.  This script renders a
table of variants (activations × losses × optimizers, float32/float64, ``check_finite`` on
and off, ``parallel`` on and off, a module used twice, both BLAS choices) through symnet's
public API only, once in this working tree and once in a git revision checked out beside
it, each in its own process with a private, empty kernel cache, and compares the two.

- CPU: ``sn.compile(model, loss, opt, check_finite=…, parallel=…).source()``.
- CUDA: ``python -m symnet kernels --device cuda …`` (run in-process with ``runpy``, so a
  process renders the whole table), and, for what that command cannot express (a module
  used twice, ``check_finite=False``), ``sn.compile(model.to("cuda"), …).source()`` under
  Numba's CUDA simulator.  Neither needs a GPU.

It prints one line per variant (``same`` or ``DIFFERENT``), a diff of the first few
differences, and exits 1 on any difference (or a variant that fails in one tree only).

Usage:
    python tools/compare_sources.py [REV]        # REV defaults to main

Environment variables pass through to both trees: ``SYMNET_GEMM=openblas`` compares the
float32 sources of a tree that has symnet's GEMM (codegen/gemm.py) with a revision from
before it.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revision import ROOT, checked_out, resolve  # noqa: E402

# Each worker: (name, extra environment).  The simulator must be on before Numba is imported,
# and the BLAS choice is read from the environment, so each is a process of its own.
WORKERS = {
    "cpu": {},
    "cpu-scipy-blas": {"SYMNET_BLAS": "scipy"},
    "cuda": {"NUMBA_ENABLE_CUDASIM": "1"},
}


# --- the table of variants (runs inside a worker, in the tree under test) -----------------
def _tables():
    import sympy as sp

    import symnet as sn

    x = sp.Symbol("x")
    activations = {
        "relu": sn.ReLU, "sigmoid": sn.Sigmoid, "tanh": sn.Tanh,
        "leaky-relu": lambda: sn.LeakyReLU(0.1), "softplus": sn.Softplus, "silu": sn.SiLU,
        "gelu": sn.GELU,
        "mish": lambda: sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x),
    }
    # loss name → (loss, module the model ends with so the loss gets what it expects)
    losses = {
        "cross-entropy": (sn.CrossEntropyLoss, None), "nll": (sn.NLLLoss, sn.LogSoftmax),
        "mse": (sn.MSELoss, None), "bce": (sn.BCELoss, sn.Sigmoid),
        "bce-with-logits": (sn.BCEWithLogitsLoss, None),
    }
    optimizers = {
        "sgd": lambda p: sn.optim.SGD(p, lr=0.1),
        "adam": lambda p: sn.optim.Adam(p, lr=0.01),
        "adamw": lambda p: sn.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        "sgd-momentum": lambda p: sn.optim.SGD(p, lr=0.1, momentum=0.9),
        "sgd-nesterov-decay": lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                     weight_decay=0.01),
        "sgd-dampening": lambda p: sn.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1),
        "adam-betas": lambda p: sn.optim.Adam(p, lr=0.05, betas=(0.8, 0.9)),
    }
    return sn, x, activations, losses, optimizers


def _mlp(sn, activation, final, bias=True):
    modules = [sn.Linear(4, 3, bias=bias), activation(), sn.Linear(3, 2, bias=bias)]
    return sn.Sequential(*modules, *([final()] if final else []))


def _shared(sn, final):
    """A module used twice: its gradient is the sum of two paths."""
    twice = sn.Linear(4, 4)
    return sn.Sequential(sn.Linear(3, 4), sn.Tanh(), twice, sn.Tanh(), twice, sn.Linear(4, 2),
                         *([final()] if final else []))


def _compiled(sn, model, loss, optimizer, dtype, device="cpu", **options) -> str:
    import numpy as np

    model = model.to(getattr(np, dtype))
    if device == "cuda":
        model = model.to("cuda")
    return sn.compile(model, loss, optimizer(model.parameters()), **options).source()


def _cli(*argv: str) -> str:
    """``python -m symnet kernels …``, in this process: its standard output."""
    out = io.StringIO()
    saved = sys.argv
    sys.argv = ["symnet", "kernels", *argv]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module("symnet", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise RuntimeError(f"symnet kernels {' '.join(argv)} exited {exit.code}") from None
    finally:
        sys.argv = saved
    return out.getvalue()


def variants(worker: str) -> dict[str, callable]:
    """Variant name → a function rendering its source, for one worker."""
    sn, x, activations, losses, optimizers = _tables()
    table: dict[str, callable] = {}
    basic = ("sgd", "adam", "adamw")
    if worker == "cuda":
        for act in activations:
            if act == "mish":
                continue  # not a CLI activation
            for loss in losses:
                for opt in basic:
                    table[f"cuda cli {act} {loss} {opt} float32"] = (
                        lambda a=act, lo=loss, o=opt: _cli("--device", "cuda", "--layers", "4,3,2",
                                                           "--activation", a, "--loss", lo,
                                                           "--optimizer", o, "--dtype", "float32"))
        for k, (loss, opt) in enumerate((lo, o) for lo in losses for o in basic):
            act = list(activations)[k % 7]
            table[f"cuda cli {act} {loss} {opt} float64"] = (
                lambda a=act, lo=loss, o=opt: _cli("--device", "cuda", "--layers", "5,4,3,2",
                                                   "--activation", a, "--loss", lo,
                                                   "--optimizer", o, "--dtype", "float64"))
        for loss in ("cross-entropy", "mse", "nll"):
            cls, final = losses[loss]
            for opt in ("sgd", "adam", "sgd-momentum"):
                for finite in (True, False):
                    table[f"cuda compile shared-module {loss} {opt} check_finite={finite}"] = (
                        lambda c=cls, f=final, o=opt, fi=finite: _compiled(
                            sn, _shared(sn, f), c(), optimizers[o], "float32", "cuda",
                            check_finite=fi))
        for k, opt in enumerate(optimizers):
            act = list(activations)[k % len(activations)]
            loss = list(losses)[k % len(losses)]
            cls, final = losses[loss]
            for dtype in ("float32", "float64"):
                table[f"cuda compile {act} {loss} {opt} {dtype} check_finite=False"] = (
                    lambda a=act, c=cls, f=final, o=opt, d=dtype: _compiled(
                        sn, _mlp(sn, activations[a], f), c(), optimizers[o], d, "cuda",
                        check_finite=False))
        table["cuda compile mish mse-sum adam float64"] = lambda: _compiled(
            sn, _mlp(sn, activations["mish"], None), sn.MSELoss(reduction="sum"),
            optimizers["adam"], "float64", "cuda")
        return table
    if worker == "cpu-scipy-blas":  # np.dot and the one-GEMM SGD update (_gemm_add)
        for opt in ("sgd", "adam", "sgd-momentum"):
            for finite in (True, False):
                for parallel in (False, True):
                    for dtype in ("float32", "float64"):
                        name = f"cpu scipy-blas tanh mse {opt} {dtype} " \
                               f"check_finite={finite} parallel={parallel}"
                        table[name] = (lambda o=opt, fi=finite, p=parallel, d=dtype: _compiled(
                            sn, _mlp(sn, sn.Tanh, None), sn.MSELoss(), optimizers[o], d,
                            check_finite=fi, parallel=p))
        return table
    for act, make in activations.items():
        for loss, (cls, final) in losses.items():
            for opt in basic:
                table[f"cpu {act} {loss} {opt} float32"] = (
                    lambda m=make, c=cls, f=final, o=opt: _compiled(
                        sn, _mlp(sn, m, f), c(), optimizers[o], "float32"))
    for opt in optimizers:
        for loss in ("cross-entropy", "mse"):
            cls, final = losses[loss]
            table[f"cpu tanh {loss} {opt} float64"] = (
                lambda c=cls, f=final, o=opt: _compiled(
                    sn, _mlp(sn, sn.Tanh, f), c(), optimizers[o], "float64"))
    names = list(activations)
    for k, loss in enumerate(losses):
        cls, final = losses[loss]
        for opt in ("sgd", "adam"):
            for dtype in ("float32", "float64"):
                for finite in (True, False):
                    for parallel in (False, True):
                        act = names[(k + len(table)) % len(names)]
                        name = f"cpu {act} {loss} {opt} {dtype} check_finite={finite} " \
                               f"parallel={parallel}"
                        table[name] = (lambda a=act, c=cls, f=final, o=opt, d=dtype, fi=finite,
                                       p=parallel: _compiled(
                            sn, _mlp(sn, activations[a], f), c(), optimizers[o], d,
                            check_finite=fi, parallel=p))
    for loss in ("cross-entropy", "mse", "nll", "bce"):
        cls, final = losses[loss]
        for opt in ("sgd", "adam", "sgd-momentum"):
            for finite in (True, False):
                for parallel in (False, True):
                    name = f"cpu shared-module {loss} {opt} check_finite={finite} " \
                           f"parallel={parallel}"
                    table[name] = (lambda c=cls, f=final, o=opt, fi=finite, p=parallel: _compiled(
                        sn, _shared(sn, f), c(), optimizers[o], "float64", check_finite=fi,
                        parallel=p))
    for loss in losses:
        cls, final = losses[loss]
        table[f"cpu relu {loss}-sum sgd-momentum float64"] = (
            lambda c=cls, f=final: _compiled(sn, _mlp(sn, sn.ReLU, f), c(reduction="sum"),
                                             optimizers["sgd-momentum"], "float64"))
    table["cpu no-bias tanh mse adam float64"] = lambda: _compiled(
        sn, _mlp(sn, sn.Tanh, None, bias=False), sn.MSELoss(), optimizers["adam"], "float64")
    table["cpu quoted-label cross-entropy adam float32"] = lambda: _compiled(
        sn, _mlp(sn, lambda: sn.Activation("square", x**2, x, label='say "hi"'), None),
        sn.CrossEntropyLoss(), optimizers["adam"], "float32")
    table["cpu softmax-layer mse sgd float64"] = lambda: _compiled(
        sn, _mlp(sn, sn.Tanh, sn.Softmax), sn.MSELoss(), optimizers["sgd"], "float64")
    return table


def work(worker: str, tree: Path, out: Path) -> None:
    """Render every variant of ``worker`` in this process and write them to ``out`` (JSON)."""
    import symnet

    if Path(symnet.__file__).resolve().parent.parent != tree.resolve():
        raise SystemExit(f"symnet imported from {symnet.__file__}, not from {tree}")
    results = {}
    for name, render in variants(worker).items():
        try:
            results[name] = render()
        except Exception as error:  # noqa: BLE001 - a failure is compared like a source
            results[name] = f"ERROR {type(error).__name__}: {error}"
    out.write_text(json.dumps(results), encoding="utf-8")


# --- the two trees ------------------------------------------------------------------------
def render_tree(tree: Path, scratch: Path) -> dict[str, str]:
    """Every variant's source as ``tree`` renders it, each worker in a fresh process."""
    sources: dict[str, str] = {}
    for worker, extra in WORKERS.items():
        cache = Path(tempfile.mkdtemp(prefix="symnet-cache-", dir=scratch))  # mode 0o700
        out = scratch / f"{tree.name}-{worker}.json"
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM",
                                                                 "SYMNET_BLAS")}
        env.update(extra, PYTHONPATH=str(tree), SYMNET_CACHE_DIR=str(cache))
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", worker,
                        str(tree), str(out)], env=env, cwd=tree, check=True)
        sources.update(json.loads(out.read_text(encoding="utf-8")))
    return sources


def compare(ours: dict[str, str], theirs: dict[str, str], label: str, shown: int) -> int:
    """Print one line per variant; return how many differ or fail (in either tree)."""
    bad = 0
    for name in sorted(set(ours) | set(theirs)):
        a, b = theirs.get(name), ours.get(name)
        failed = [t for t, s in ((label, a), ("working tree", b)) if s is None or
                  s.startswith("ERROR")]
        same = a == b and not failed
        print(f"{'same     ' if same else 'DIFFERENT'}  {name}")
        if same:
            continue
        bad += 1
        for tree, text in ((label, a), ("working tree", b)):
            if tree in failed:
                print(f"           {tree}: {(text or 'missing').splitlines()[0]}")
        if bad <= shown and a != b:
            diff = difflib.unified_diff((a or "").splitlines(), (b or "").splitlines(),
                                        label, "working tree", lineterm="", n=2)
            print("\n".join(f"           {line}" for line in list(diff)[:60]))
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", nargs="?", default="main", help="the revision to compare with")
    parser.add_argument("--show", type=int, default=3, help="diffs to print (default 3)")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "TREE", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, tree, out = args.worker
        work(kind, Path(tree), Path(out))
        return 0
    rev = resolve(args.rev)
    with checked_out(rev) as (other, scratch):
        theirs = render_tree(other, scratch)
        ours = render_tree(ROOT, scratch)
        different = compare(ours, theirs, f"{args.rev} ({rev[:10]})", args.show)
    total = len(set(ours) | set(theirs))
    print(f"{total - different} of {total} variants byte-identical to {args.rev} ({rev[:10]})"
          + (f"; {different} DIFFERENT" if different else ""))
    return 1 if different else 0


if __name__ == "__main__":
    raise SystemExit(main())
