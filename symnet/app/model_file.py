"""Networks from a user's own Python file: ``--model file.py:NAME``.

``NAME`` is a module-level name in the file bound to an `sn.Module` instance, a Module
subclass (instantiated with no arguments) or a function of no arguments that returns a
Module.  `load` runs the file under a module name of its own, with the file's folder on
``sys.path`` only meanwhile; afterwards neither the file nor what it imported from its folder
stays in ``sys.modules``.  The bytes that run are the bytes hashed (SHA-256), so the
`ModelFile` a checkpoint records names exactly the code its network came from: ``evaluate``
and ``--resume`` run that file again, and refuse to when it is gone or has changed.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "net.py"
    >>> _ = path.write_text("import symnet as sn\\n"
    ...     "model = sn.Sequential(sn.Linear(4, 8), sn.Tanh(), sn.Linear(8, 3))\\n")
    >>> loaded = load(f"{path}:model")
    >>> widths(loaded.module), len(loaded.sha256)
    ((4, 3), 64)
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import os
import re
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from symnet.app.architecture import LOSSES, loss_function
from symnet.nn import losses
from symnet.nn.module import Module
from symnet.symbolic import graph

__all__ = ["Loaded", "ModelFile", "ModelFileError", "load", "split", "widths"]

_names = itertools.count()  # each load runs under a module name of its own


class ModelFileError(ValueError):
    """A ``--model`` file that gives no network; the message is one line naming file and NAME."""


def widths(model: Module) -> tuple[int, int]:
    """``(inputs, outputs)``: the features ``model`` takes and the values it gives per sample,
    read off its traced forward graph (so every layer's width is checked on the way).

    Example:
        >>> import symnet as sn
        >>> widths(sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3), sn.LogSoftmax()))
        (4, 3)
    """
    traced = graph.build(model, losses.MSELoss())
    return int(traced.inputs.shape[0]), int(traced.target.shape[0])


def split(spec: str) -> tuple[Path, str]:
    """``"nets/mlp.py:model"`` → ``(Path("nets/mlp.py"), "model")``.

    Example:
        >>> split("nets/mlp.py:model")
        (PosixPath('nets/mlp.py'), 'model')
    """
    file, colon, name = spec.rpartition(":")
    if not colon or not file or not name.isidentifier():
        raise ModelFileError(f"--model {spec}: expected FILE.py:NAME, NAME being the model's "
                             f"name in the file")
    return Path(file), name


@dataclass(frozen=True, eq=False)
class Loaded:
    """The network `load` built, and the SHA-256 (hex) of the file's bytes that ran."""

    module: Module
    path: Path
    sha256: str


def load(spec: str, *, sha256: str | None = None, where: str | None = None) -> Loaded:
    """Run ``FILE.py`` and give the network its ``NAME`` stands for (see the module docstring).

    ``sha256``: refuse, before running anything, a file whose bytes hash otherwise.  Every
    problem raises `ModelFileError`, one line starting with ``where`` (``--model SPEC``).
    """
    path, name = split(spec)
    where = where or f"--model {spec}"
    source = _read(path, where)
    digest = hashlib.sha256(source).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ModelFileError(f"{where}: {path} has changed since (sha256 {sha256[:12]}… then, "
                             f"{digest[:12]}… now); restore it, or train again")
    return Loaded(_run(source, path, name, where), path, digest)


def _read(path: Path, where: str) -> bytes:
    if path.suffix != ".py":
        raise ModelFileError(f"{where}: {path} is not a Python file (.py)")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{where}: no such file {path}") from None
    except IsADirectoryError:
        raise ModelFileError(f"{where}: {path} is a directory, not a Python file") from None
    except OSError as error:
        raise ModelFileError(f"{where}: cannot read {path}: {error.strerror}") from None


def _run(source: bytes, path: Path, name: str, where: str) -> Module:
    """Execute ``source`` as the module at ``path`` and build ``name``; leave no trace behind."""
    module_name = f"_symnet_model_{next(_names)}"
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(module_name, path))
    folder = str(path.resolve().parent)
    before = set(sys.modules)
    sys.modules[module_name] = module  # as an import would: dataclasses and the like look here
    sys.path.insert(0, folder)  # the file may import its neighbours
    try:
        try:  # compiled from the bytes hashed, not read again
            exec(compile(source, str(path), "exec"), module.__dict__)
        except Exception as error:
            raise ModelFileError(f"{where}: importing {path} failed{_at(error, path, ' at')}: "
                                 f"{_said(error)}") from None
        return _build(module, name, path, where)
    finally:
        if folder in sys.path:  # unless the file took it off itself
            sys.path.remove(folder)
        for key in set(sys.modules) - before:  # the file, and neighbours it brought in
            if key == module_name or (key.partition(".")[0] not in before
                                      and _inside(sys.modules[key], folder)):
                del sys.modules[key]


def _build(module, name: str, path: Path, where: str) -> Module:
    """The Module ``name`` is, or the one calling it gives."""
    namespace = vars(module)
    if name not in namespace:
        found = _models(namespace, module.__name__)
        offer = (f"its models: {', '.join(found)}" if found else
                 "it defines no Module, Module subclass or function of no arguments")
        raise ModelFileError(f"{where}: {path.name} has no {name!r}; {offer}")
    value = namespace[name]
    if isinstance(value, Module):
        return value
    if isinstance(value, type) and not issubclass(value, Module):
        raise ModelFileError(f"{where}: {name!r} is a class that does not subclass sn.Module")
    if not callable(value):
        raise ModelFileError(f"{where}: {name!r} is {_kind(value, module.__name__)}, not a "
                             f"symnet Module, Module subclass or function returning one")
    try:
        inspect.signature(value).bind()
    except TypeError as error:
        raise ModelFileError(f"{where}: {name}() needs arguments ({error}); --model calls it "
                             f"with none: give them defaults, or name an instance") from None
    except ValueError:  # no signature to read (a builtin): calling it will tell
        pass
    try:
        built = value()
    except Exception as error:
        raise ModelFileError(f"{where}: {name}() failed{_at(error, path, f' in {path.name}')}: "
                             f"{_said(error)}") from None
    if not isinstance(built, Module):
        raise ModelFileError(f"{where}: {name}() returned {_kind(built, module.__name__)}, "
                             f"not a symnet Module")
    return built


def _models(namespace: dict, module_name: str) -> list[str]:
    """The names a ``--model`` could use: Modules, and Module subclasses and functions of no
    arguments that the file itself defines (not what it imported)."""
    found = []
    for key, value in namespace.items():
        if key.startswith("_"):
            continue
        own = getattr(value, "__module__", None) == module_name
        if isinstance(value, Module):
            found.append(key)
        elif own and isinstance(value, type) and issubclass(value, Module) and _takes_none(value):
            found.append(f"{key} (a Module subclass)")
        elif own and inspect.isfunction(value) and _takes_none(value):
            found.append(f"{key}()")
    return found


def _takes_none(function) -> bool:
    try:
        inspect.signature(function).bind()
    except TypeError:
        return False
    except ValueError:  # no signature to read
        pass
    return True


def _kind(value, module_name: str) -> str:
    """``an int``, ``a torch.nn.modules.container.Sequential``: what the user gave, in words."""
    kind = type(value)
    owner = kind.__module__
    name = kind.__qualname__
    if owner not in ("builtins", module_name):
        name = f"{owner}.{name}"
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _at(error: Exception, path: Path, prefix: str) -> str:
    """`` at line 3``: where in the user's file ``error`` arose ("" if not in it)."""
    line = error.lineno if isinstance(error, SyntaxError) and error.filename == str(path) else None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return "" if line is None else f"{prefix} line {line}"


def _said(error: Exception) -> str:
    text = error.msg if isinstance(error, SyntaxError) else str(error)
    return f"{type(error).__name__}: {' '.join(str(text).split())}".rstrip(": ")


def _inside(module, folder: str) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and Path(file).resolve().is_relative_to(folder)


_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelFile:
    """A ``--model file.py:NAME`` network as a checkpoint records it: the file (absolute path)
    and the SHA-256 of the bytes that ran, the widths and parameter shapes the network had, the
    loss and dtype it trained with.  It plays `Architecture`'s part for such a network: the same
    `model`, `parameter_shapes`, `loss_function`, ``inputs`` and ``outputs``, so a checkpoint's
    tensors are checked before the file runs again.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "net.py"
        >>> _ = path.write_text("import symnet as sn\\n"
        ...     "def model():\\n    return sn.Sequential(sn.Linear(4, 3))\\n")
        >>> record = ModelFile.record(f"{path}:model", load(f"{path}:model"))
        >>> record.inputs, record.outputs, record.parameter_shapes()
        (4, 3, {'0.weight': (3, 4), '0.bias': (3,)})
        >>> record.model()
        Sequential(
          (0): Linear(4, 3)
        )
    """

    # where the file was; two records of the same bytes building the same network are equal
    spec: str = field(compare=False)  # as given on the command line
    path: str = field(compare=False)
    sha256: str
    inputs: int
    outputs: int
    parameters: tuple[tuple[str, tuple[int, ...]], ...]
    loss: str = "cross-entropy"
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        split(self.spec)
        if not os.path.isabs(self.path) or not self.path.endswith(".py"):
            raise ValueError(f"path must be an absolute path to a .py file, got {self.path!r}")
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        for name in ("inputs", "outputs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for key, shape in self.parameters:
            if any(size < 1 for size in shape):
                raise ValueError(f"parameter {key!r} has shape {shape}, not positive sizes")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")

    @classmethod
    def record(cls, spec: str, loaded: Loaded, loss: str = "cross-entropy",
               dtype: str = "float32") -> ModelFile:
        """What to write in a checkpoint about ``loaded``, the network ``spec`` gave."""
        inputs, outputs = widths(loaded.module)
        shapes = tuple((key, tuple(value.shape))
                       for key, value in loaded.module.state_dict().items())
        return cls(spec, str(loaded.path.resolve()), loaded.sha256, inputs, outputs, shapes,
                   loss, dtype)

    @property
    def name(self) -> str:
        return split(self.spec)[1]

    def model(self) -> Module:
        """The network, freshly built by running the file again (refused if it changed)."""
        where = f"the model {self.spec} it was trained with"
        loaded = load(f"{self.path}:{self.name}", sha256=self.sha256, where=where)
        return loaded.module.to(np.dtype(self.dtype).type)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.parameters)

    def loss_function(self, reduction: str = "mean") -> losses.Loss:
        return loss_function(self.loss, reduction)

    def to_dict(self) -> dict:
        return asdict(self)
