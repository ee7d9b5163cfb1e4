"""The ``symnet`` command: print, verify, train and evaluate networks.

Example:
    $ symnet equations --layers 784,128,10 --activation relu --loss cross-entropy
    $ symnet verify --layers 4,3,2 --activation tanh --loss mse
"""

from __future__ import annotations

import argparse
import sys

from symnet.architecture import ACTIVATIONS, LOSSES, Architecture, parse_layers

OPTIMIZERS = ("sgd", "adam", "adamw")

EXAMPLES = """examples:
  symnet equations --layers 784,128,10 --activation relu --loss cross-entropy
  symnet equations --layers 4,8,3 --activation sigmoid --optimizer adam --format latex
  symnet verify --layers 4,3,2 --activation tanh --loss mse
  symnet train --dataset digits --layers 64,64,10 --activation relu --optimizer adam \\
      --epochs 30 --save ck.safetensors
  symnet evaluate --checkpoint ck.safetensors --dataset digits
  symnet train --csv data.csv --target label --layers 4,16,3
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"symnet: error: {message}\n")


def _architecture_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", required=True, help="widths, input first: 784,128,10")
    p.add_argument("--activation", default="relu", help=f"one of {', '.join(ACTIVATIONS)}")
    p.add_argument("--loss", default="cross-entropy", help=f"one of {', '.join(LOSSES)}")
    p.add_argument("--reduction", default="mean", choices=("mean", "sum"))


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="symnet", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    eq = commands.add_parser("equations", help="print the forward, backward and update equations",
                             epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _architecture_arguments(eq)
    eq.add_argument("--optimizer", choices=OPTIMIZERS, help="add its update equations")
    eq.add_argument("--format", default="text", choices=("text", "latex", "mermaid"))
    ver = commands.add_parser("verify", help="prove the derived gradients symbolically",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _architecture_arguments(ver)
    ver.add_argument("--numeric", action="store_true", help="also run central differences")
    tr = commands.add_parser("train", help="train an MLP with the compiled fused step",
                             epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--layers", required=True, help="widths, input first: 64,64,10")
    tr.add_argument("--activation", default="relu", help=f"one of {', '.join(ACTIVATIONS)}")
    tr.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    tr.add_argument("--lr", type=float, help="learning rate (default 1e-3; 0.05 for sgd)")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    _data_arguments(tr)
    tr.add_argument("--save", help="write a checkpoint (safetensors) here at the end")
    ev = commands.add_parser("evaluate", help="score a checkpoint on its seeded test split",
                             epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--checkpoint", required=True)
    _data_arguments(ev)
    return top


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="a bundled data set: digits")
    p.add_argument("--csv", help="a CSV file with a header row instead of --dataset")
    p.add_argument("--target", help="the CSV column holding the label")


def _derivation(args):
    import symnet as sn

    arch = Architecture(parse_layers(args.layers), args.activation, args.loss)
    model = arch.model()
    optimizer = None
    if getattr(args, "optimizer", None):
        cls = {"sgd": sn.optim.SGD, "adam": sn.optim.Adam, "adamw": sn.optim.AdamW}
        optimizer = cls[args.optimizer](model.parameters(), lr=0.01 if
                                        args.optimizer == "sgd" else 1e-3)
    return sn.derive(model, arch.loss_function(args.reduction), optimizer)


def _equations(args) -> int:
    d = _derivation(args)
    print({"text": str, "latex": lambda x: x.latex(), "mermaid": lambda x: x.mermaid()}[
        args.format](d))
    return 0


def _verify(args) -> int:
    d = _derivation(args)
    reports = [d.verify()]
    if args.numeric:
        reports.append(d.gradcheck())
    for report in reports:
        print(report)
    return 0 if all(reports) else 1


def _train(args) -> int:
    from symnet.train import TrainConfig, save_checkpoint, train

    config = TrainConfig(parse_layers(args.layers), args.activation, args.optimizer, args.lr,
                         args.epochs, args.batch_size, args.seed, args.dataset, args.csv,
                         args.target, args.dtype)
    result = train(config)
    if args.save:
        save_checkpoint(result, config, args.save)
        print(f"saved {args.save}")
    return 0


def _evaluate(args) -> int:
    from symnet.train import evaluate_checkpoint

    score = evaluate_checkpoint(args.checkpoint, args.dataset, args.csv, args.target)
    print(f"test accuracy {score:.4f}" if score >= 0 else f"test MSE {-score:.6g}")
    return 0


COMMANDS = {"equations": _equations, "verify": _verify, "train": _train,
            "evaluate": _evaluate}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 a check failed, 2 bad arguments)."""
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as error:
        print(f"symnet: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
