"""How long symbolic verification (``Derivation.verify``) takes, model by model.

Each row derives a model once (untimed) and times ``d.verify()`` in this process: the
first call, then the median of ``--runs`` more when the first took under ``--cheap``
seconds (a slow proof is timed once).  The rows are the CLI's MLPs (``symnet verify
--layers …``) under three activation/loss pairs, the models README, the Makefile and
examples/custom_activation.py verify, then every model ``tests/test_verify.py`` proves,
read from that file so the table follows the tests.

Run:
    .venv/bin/python benchmarks/verify_speed.py
    .venv/bin/python benchmarks/verify_speed.py --only gelu --runs 5
    .venv/bin/python benchmarks/verify_speed.py --limit 600     # stop any verify after 10 min
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (activation, loss) pairs of the CLI rows, as ``symnet verify`` spells them
CLI_PAIRS = [("gelu", "cross-entropy"), ("tanh", "mse"), ("sigmoid", "bce-with-logits")]
CLI_LAYERS = [(4, 3, 2), (4, 3, 3, 2)]
#: the other ``symnet verify`` runs README and the Makefile show
DOCUMENTED = [((4, 3, 2), "sigmoid", "cross-entropy"), ((64, 32, 10), "sigmoid", "cross-entropy")]


def _cli(layers, activation, loss):
    import symnet as sn
    from symnet.app.architecture import Architecture

    arch = Architecture(layers, activation, loss)
    label = f"--layers {','.join(map(str, layers))} --activation {activation} --loss {loss}"
    return label, lambda: sn.derive(arch.model(), arch.loss_function("mean")), {}


def cli_models():
    """``symnet verify --layers … --activation … --loss …``, as the CLI builds them."""
    for layers in CLI_LAYERS:
        for activation, loss in CLI_PAIRS:
            yield _cli(layers, activation, loss)
    for layers, activation, loss in DOCUMENTED:
        yield _cli(layers, activation, loss)


def readme_models():
    """README's first example and examples/custom_activation.py's mish + log-cosh net."""
    import sympy as sp

    import symnet as sn

    yield "README: 4,8,3 sigmoid + cross-entropy (sum)", lambda: sn.derive(
        sn.Sequential(sn.Linear(4, 8), sn.Sigmoid(), sn.Linear(8, 3)),
        sn.CrossEntropyLoss(reduction="sum")), {}
    x, p, t = sp.symbols("x p t")
    mish = sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x)
    log_cosh = sn.Loss("log_cosh", sp.log(sp.cosh(p - t)), p, t)
    yield "example: 2,8,1 mish + log-cosh (mean)", lambda: sn.derive(
        sn.Sequential(sn.Linear(2, 8), mish, sn.Linear(8, 1)), log_cosh), {}


def test_models():
    """The models tests/test_verify.py proves: its table, the deeper nets, the square tanh
    net of the planted-transpose tests (without the plant) and the normalisation blocks."""
    import symnet as sn

    spec = importlib.util.spec_from_file_location("test_verify", ROOT / "tests" /
                                                  "test_verify.py")
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    for activation, loss, reduction in tests.TABLE:
        yield (f"test: {activation} + {loss} ({reduction})",
               lambda a=activation, f=loss, r=reduction: tests._derive(a, f, r), {})
    yield "test: 2,3,3,3,2 relu + cross_entropy (mean)", lambda: sn.derive(
        sn.Sequential(sn.Linear(2, 3), sn.ReLU(), sn.Linear(3, 3), sn.ReLU(),
                      sn.Linear(3, 3), sn.ReLU(), sn.Linear(3, 2)), sn.CrossEntropyLoss()), {}
    for name in ("gelu", "sigmoid"):
        yield f"test: 4,3,3,2 {name} + cross_entropy (mean)", lambda a=name: sn.derive(
            sn.Sequential(sn.Linear(4, 3), tests.ACTIVATIONS[a](), sn.Linear(3, 3),
                          tests.ACTIVATIONS[a](), sn.Linear(3, 2)), sn.CrossEntropyLoss()), {}
    yield "test: 3,3,3 tanh + cross_entropy (sum)", lambda: sn.derive(
        sn.Sequential(sn.Linear(3, 3), sn.Tanh(), sn.Linear(3, 3)),
        sn.CrossEntropyLoss(reduction="sum")), {}
    for over, name in (("features", "LayerNorm"), ("samples", "BatchNorm")):
        yield (f"test: {name} + residual, hand-written backward (size=3)",
               lambda o=over: tests.norm_block(o), {"size": 3})


def layer_models():
    """Models with their own forward: README's residual LayerNorm block + GLU
    (examples/custom_layer.py) and each normalisation layer, in training and eval mode."""
    import symnet as sn

    spec = importlib.util.spec_from_file_location("custom_layer", ROOT / "examples" /
                                                  "custom_layer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    yield "README: 3-[LayerNorm residual block]-GLU-2 + cross-entropy", lambda: sn.derive(
        sn.Sequential(sn.Linear(3, 4), example.Block(4, 6), example.GLU(4, 4),
                      sn.Linear(4, 2)), sn.CrossEntropyLoss()), {}
    layers = {"LayerNorm": lambda: sn.LayerNorm(3), "RMSNorm": lambda: sn.RMSNorm(3),
              "BatchNorm1d": lambda: sn.BatchNorm1d(3), "Dropout": lambda: sn.Dropout(0.2)}
    for name, make in layers.items():
        for mode in ("train", "eval"):
            def derive(make=make, mode=mode):
                model = sn.Sequential(sn.Linear(3, 3), make(), sn.Tanh(), sn.Linear(3, 2))
                return sn.derive(model.train(mode == "train"), sn.CrossEntropyLoss())
            yield f"layer: 3-{name}-tanh-2 ({mode})", derive, {"size": 3}


def _give_up(signum, frame):
    raise TimeoutError


def time_verify(make, options: dict, runs: int, cheap: float,
                limit: int = 0) -> tuple[float, float, bool | None]:
    """(seconds of the first verify, median seconds of the later ones, whether all held);
    with ``limit``, a first verify still running after that many seconds is stopped
    (held None)."""
    d = make()
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _give_up)
    signal.alarm(limit)
    try:
        held = bool(d.verify(**options))
    except TimeoutError:
        return time.perf_counter() - start, float("nan"), None
    finally:
        signal.alarm(0)
    first = time.perf_counter() - start
    if first >= cheap or runs < 1:
        return first, first, held
    again = []
    for _ in range(runs):
        start = time.perf_counter()
        held = bool(d.verify(**options)) and held
        again.append(time.perf_counter() - start)
    return first, statistics.median(again), held


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repeats after the first call")
    parser.add_argument("--cheap", type=float, default=5.0,
                        help="repeat only models whose first verify took fewer seconds")
    parser.add_argument("--only", default="", help="rows whose label contains this text")
    parser.add_argument("--no-tests", action="store_true", help="the CLI rows alone")
    parser.add_argument("--limit", type=int, default=0,
                        help="stop a verify after this many seconds (0: never)")
    args = parser.parse_args(argv)

    rows = [*cli_models(), *readme_models(), *layer_models(),
            *([] if args.no_tests else test_models())]
    rows = [row for row in rows if args.only in row[0]]
    print(f"d.verify() seconds: first call, then the median of {args.runs} more "
          f"(when the first took under {args.cheap:g} s)")
    print()
    print("| model | first | median | holds |")
    print("|---|---:|---:|:---:|")
    total = 0.0
    for label, make, options in rows:
        first, median, held = time_verify(make, options, args.runs, args.cheap, args.limit)
        total += first
        if held is None:
            print(f"| {label} | > {args.limit} | | stopped |", flush=True)
            continue
        print(f"| {label} | {first:.2f} | {median:.2f} | {'yes' if held else 'NO'} |",
              flush=True)
    print()
    print(f"total of first calls: {total:.1f} s")


if __name__ == "__main__":
    main()
