"""Training checkpoints: the model, the optimizer and where the run stands.

`save_checkpoint` writes what `symnet.app.train.train` needs to continue a killed run and end
bit-identical to an uninterrupted one: model and optimizer state (with its step count),
the architecture (or, for ``--model FILE.py:NAME``, the file and its SHA-256), feature
scaling, feature columns and class labels (so ``evaluate`` rebuilds the model from the
checkpoint alone, or from it and the model file), the settings a resume must share
(`RESUME_FIELDS`) and the run's `Progress`.  `restore` loads it back, refusing a checkpoint
made with other settings; `load_model` gives the trained network with its scaling (`TrainedModel`).

Nothing in a checkpoint is used before it is checked: the metadata against
`symnet.app.schema`; the tensors' names, shapes, dtypes and values against the architecture the
metadata declares, before a model is allocated for it; and, on resume, the optimizer's type,
hyperparameters, step count and state against the optimizer the command builds.

Example:
    >>> Progress().epoch, Progress().batch
    (1, 0)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

import symnet as sn
from symnet.app.architecture import Architecture
from symnet.app.data import scale
from symnet.app.model_file import ModelFile, ModelFileError
from symnet.app.run import Blueprint, Progress, TrainConfig, TrainResult
from symnet.app.schema import RunConfig, TrainingMeta, describe, parse, task_of
from symnet.nn.module import generator

#: What a resumed run must share with its checkpoint; ``epochs`` may grow, the device change.
RESUME_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


#: the metadata field each kind of blueprint is written to (`TrainingMeta`)
_FIELD = {Architecture: "architecture", ModelFile: "model_file"}


def _metadata(result: TrainResult, config: TrainConfig) -> dict:
    blueprint = result.blueprint
    return {"architecture": None, "scaling": result.scaling,
            "dataset": config.dataset if config.csv is None else None, "csv": config.csv,
            "target": config.target, "seed": config.seed, "accuracy": result.accuracy,
            "config": {k: getattr(config, k) for k in RESUME_FIELDS},
            "task": task_of(blueprint.loss), "features": result.features,
            "labels": result.labels, _FIELD[type(blueprint)]: blueprint.to_dict()}


def save_checkpoint(result: TrainResult, config: TrainConfig, path: str,
                    progress: Progress | None = None) -> None:
    """Model, optimizer state (with its step count), metadata and, if given, `Progress`."""
    meta = _metadata(result, config)
    if progress is not None:  # with the generator the next dropout masks come from
        meta["progress"] = {**dataclasses.asdict(progress),
                            "masks": generator().bit_generator.state}
    sn.save({"model": result.model.state_dict(), "optimizer": result.optimizer.state_dict(),
             "meta": meta}, path)


class NotATrainingCheckpoint(ValueError):
    """A valid safetensors file that ``symnet train`` did not write (no training metadata)."""


def read(path: str | os.PathLike[str]) -> tuple[dict, TrainingMeta]:
    """A ``symnet train`` checkpoint's parts, and its metadata checked against the schema.

    Raises ``ValueError`` naming the file and the first field that is wrong, and
    `NotATrainingCheckpoint` for a file with no training metadata at all.
    """
    bundle = sn.load(path)
    meta = bundle.get("meta") if isinstance(bundle, dict) else None
    if meta is None or not isinstance(bundle.get("model"), Mapping):
        raise NotATrainingCheckpoint(f"{path}: not a symnet training checkpoint (no "
                                     f"architecture metadata)")
    try:
        return bundle, parse(TrainingMeta, meta, "meta")
    except ValueError as error:
        raise ValueError(f"{path}: damaged checkpoint metadata: {error}") from None


def check_tensors(tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                  dtype: str, what: str) -> None:
    """Refuse ``tensors`` unless they are exactly ``shapes``' names and shapes, of ``dtype``
    (or int64, a count), and finite.  ``what`` starts the error (``"ck.safetensors: the model"``).

    Example:
        >>> check_tensors({"w": np.ones(2)}, {"w": (3,)}, "float64", "x")
        Traceback (most recent call last):
        ...
        ValueError: x does not fit its declared architecture: 'w' has shape (2,), expected (3,)
    """
    problems = [f"{k!r} is missing" for k in shapes if k not in tensors]
    problems += [f"{k!r} is not part of it" for k in tensors if k not in shapes]
    for key, shape in shapes.items():
        tensor = tensors.get(key)
        if tensor is None:
            continue
        if tensor.shape != tuple(shape):
            problems.append(f"{key!r} has shape {tensor.shape}, expected {tuple(shape)}")
        elif tensor.dtype != np.dtype(dtype) and tensor.dtype != np.int64:
            # int64: a count kept beside the values (BatchNorm's num_batches_tracked)
            problems.append(f"{key!r} is {tensor.dtype}, expected {dtype}")
    if problems:
        more = f"; … {len(problems) - 4} more" if len(problems) > 4 else ""
        raise ValueError(f"{what} does not fit its declared architecture: "
                         f"{'; '.join(problems[:4])}{more}")
    for key, tensor in tensors.items():
        bad = tensor.size - int(np.count_nonzero(np.isfinite(tensor)))
        if bad:
            raise ValueError(f"{what}: {key!r} holds {bad} non-finite value{'s' * (bad > 1)} "
                             f"(NaN or Inf); the file is damaged, it is not used")


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A network from a ``symnet train`` checkpoint, with the feature scaling it trained with.

    Calling it scales raw features as training did, ``(X − mean) / std`` with the training
    split's statistics, then runs the network; `predict` turns the outputs into the file's
    class labels (classification) or values (regression).  ``network`` alone expects
    features already scaled; ``meta`` is the checkpoint's checked metadata.

    Example:
        >>> import os, tempfile
        >>> from symnet.app.data import load_digits
        >>> from symnet.app.train import TrainConfig, train
        >>> path = os.path.join(tempfile.mkdtemp(), "ck.safetensors")
        >>> _ = train(TrainConfig(layers=(64, 16, 10), epochs=1), log=lambda line: None,
        ...           save=path)
        >>> model = load_model(path)
        >>> digits = load_digits()
        >>> model(digits.X[:2]).shape, model.predict(digits.X[:2]).shape
        ((2, 10), (2,))
    """

    network: sn.Module
    meta: TrainingMeta

    @property
    def architecture(self) -> Architecture | None:
        """The ``--layers`` network's shape; None for a ``--model`` file's (see `blueprint`)."""
        return self.meta.architecture

    @property
    def blueprint(self) -> Blueprint:
        """What built ``network``: its `Architecture`, or the `ModelFile` it was loaded from."""
        return self.meta.blueprint

    def scale(self, X) -> np.ndarray:
        """``X`` (raw features, ``(n, features)``) standardized as the training split was."""
        X = np.asarray(X)
        width = self.blueprint.inputs
        if X.ndim != 2 or X.shape[1] != width:
            raise ValueError(f"the model expects {width} features per row, got an array of "
                             f"shape {X.shape}")
        return scale(X, self.meta.scaling, self.blueprint.dtype)

    def __call__(self, X) -> np.ndarray:
        return self.network(self.scale(X))

    def predict(self, X) -> np.ndarray:
        """Class labels (the CSV's values, or indices for bundled data) or regression values."""
        out = self(X)
        if self.meta.task == "regression":
            return out.reshape(len(out)) if out.shape[1] == 1 else out
        index = out.argmax(axis=1)
        return index if self.meta.labels is None else np.asarray(self.meta.labels)[index]


def load_model(path: str | os.PathLike[str]) -> TrainedModel:
    """The model a ``symnet train`` checkpoint holds, with its scaling: see `TrainedModel`.

    The tensors are checked against the declared architecture (names, shapes, dtype, finite)
    before the model is allocated; problems raise ``ValueError`` naming the file.  A network
    trained with ``--model FILE.py:NAME`` is built by running that file again, which must be
    where it was and hash as it did (else a ``ValueError`` names both files).
    """
    bundle, meta = read(path)
    blueprint = meta.blueprint
    check_tensors(bundle["model"], blueprint.parameter_shapes(), blueprint.dtype,
                  f"{path}: the model")
    try:
        network = blueprint.model()
    except ModelFileError as error:
        raise ValueError(f"{path}: {error}") from None
    network.load_state_dict(bundle["model"])
    return TrainedModel(network.eval(), meta)


def _flags(config: dict) -> dict[str, str]:
    return {k: ",".join(map(str, v)) if k == "layers" else str(v) for k, v in config.items()}


def restore(path: str, config: TrainConfig, blueprint: Blueprint, model: sn.Module,
            optimizer: sn.optim.Optimizer, per_epoch: int) -> Progress:
    """Load a checkpoint written by `train` into ``model``/``optimizer``; returns its Progress.

    A checkpoint from a run with other settings (`RESUME_FIELDS`, the task, a ``--model``
    file that has changed since) is refused, naming them; so is one whose optimizer state is
    not what this run's optimizer would have written (another type or hyperparameters, a step
    count that does not match the progress through epochs of ``per_epoch`` steps, missing,
    misshapen or non-finite state).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    not_resumable = (f"--resume: {path} is not a resumable symnet training checkpoint (no "
                     f"training progress in its metadata)")
    try:
        bundle, meta = read(path)
    except NotATrainingCheckpoint:
        raise ValueError(not_resumable) from None
    if meta.progress is None or meta.config is None:
        raise ValueError(not_resumable)
    _check_network(path, meta, config, blueprint)
    saved = _flags(dataclasses.asdict(meta.config))
    wanted = _flags({k: getattr(config, k) for k in RESUME_FIELDS})
    differ = [k for k in RESUME_FIELDS if saved[k] != wanted[k]]
    if differ:
        change = "; ".join(f"--{k.replace('_', '-')} {saved[k]} there, {wanted[k]} here"
                           for k in differ)
        raise ValueError(f"--resume: {path} was trained with other settings ({change}); "
                         f"use the same ones or a new --save path")
    if task_of(meta.blueprint.loss) != task_of(blueprint.loss):
        raise ValueError(f"--resume: {path} was trained for {meta.task}, this run is "
                         f"{task_of(blueprint.loss)} (--task); use the same task or a new "
                         f"--save path")
    if meta.blueprint != blueprint:
        differ = [f.name for f in dataclasses.fields(blueprint) if f.compare
                  and getattr(meta.blueprint, f.name) != getattr(blueprint, f.name)]
        raise ValueError(f"--resume: {path} holds another network than this run builds "
                         f"(its {', '.join(differ)} differ); use a new --save path")
    check_tensors(bundle["model"], blueprint.parameter_shapes(), blueprint.dtype,
                  f"{path}: the model")
    progress = meta.progress
    if progress.batch > per_epoch:
        raise ValueError(f"{path}: damaged checkpoint metadata: meta.progress.batch "
                         f"{progress.batch} is past the epoch's {per_epoch} batches")
    _check_optimizer(bundle.get("optimizer"), optimizer, blueprint.dtype,
                     (progress.epoch - 1) * per_epoch + progress.batch, path)
    model.load_state_dict(bundle["model"])
    optimizer.load_state_dict(bundle["optimizer"])
    if progress.masks is not None:  # the masks go on as they would have
        generator().bit_generator.state = progress.masks.to_numpy()
    return Progress(progress.epoch, progress.batch, progress.rng.to_numpy(), progress.loss_sum,
                    [tuple(row) for row in progress.history])


def _check_network(path: str, meta: TrainingMeta, config: TrainConfig,
                   blueprint: Blueprint) -> None:
    """The same kind of network (``--layers`` or ``--model``), and the same model file."""
    if (meta.config.model is None) != (config.model is None):
        raise ValueError(f"--resume: {path} was trained with {_network_flag(meta.config)}, "
                         f"this run has {_network_flag(config)}; use the same or a new --save "
                         f"path")
    then, now = meta.model_file, blueprint
    if then is not None and then.sha256 != now.sha256:
        raise ValueError(f"--resume: {path} was trained with {then.path} as it was then (sha256 "
                         f"{then.sha256[:12]}…); {now.path} has changed since (sha256 "
                         f"{now.sha256[:12]}… now); restore it or use a new --save path")


def _network_flag(config: RunConfig | TrainConfig) -> str:
    if config.model:
        return f"--model {config.model}"
    return f"--layers {','.join(map(str, config.layers))}"


def _check_optimizer(saved, optimizer: sn.optim.Optimizer, dtype: str, step: int,
                     path: str) -> None:
    """``saved`` must be the state ``optimizer`` itself would write after ``step`` steps.

    The CLI builds its optimizer from ``--optimizer`` and ``--lr`` alone, so any other type
    or hyperparameter means the file was changed; loading it anyway would compile the update
    for state buffers (``mW1``) that the optimizer does not hold.
    """
    damaged = f"{path}: damaged optimizer metadata"
    if not isinstance(saved, dict) or set(saved) != {"type", "defaults", "step", "tensors"}:
        raise ValueError(f"{damaged}: expected an object with type, defaults, step, tensors")
    name = type(optimizer).__name__
    if saved["type"] != name:
        raise ValueError(f"--resume: {path} holds {describe(saved['type'])} optimizer state, "
                         f"this run's optimizer is {name}")
    differ = _differences(saved["defaults"], optimizer.defaults)
    if differ:
        raise ValueError(f"{damaged}: its {name} hyperparameters are not the ones this command "
                         f"builds ({'; '.join(differ)})")
    if type(saved["step"]) is not int or saved["step"] != step:
        raise ValueError(f"{damaged}: step {describe(saved['step'])} does not match the "
                         f"progress in the checkpoint, which is {step} steps in")
    if not isinstance(saved["tensors"], Mapping):
        raise ValueError(f"{damaged}: no state tensors")
    shapes = {f"state.{i}.{prefix}": buffer.shape for i, state in enumerate(optimizer.state)
              for prefix, buffer in state.items()}
    check_tensors(saved["tensors"], shapes, dtype, f"{path}: the {name} state")


def _differences(saved, fresh: dict) -> list[str]:
    """Hyperparameters that differ between a file's ``saved`` and an optimizer's ``fresh``."""
    if not isinstance(saved, dict):
        return [f"defaults must be an object, got {describe(saved)}"]
    keys = [*fresh, *(k for k in saved if k not in fresh)]
    return [f"{k} {_short(saved, k)} there, {_short(fresh, k)} here"
            for k in keys if k not in saved or k not in fresh or not _same(saved[k], fresh[k])]


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(b, (int, float)):  # 0 == 0.0; int and float compare exactly, any size
        return isinstance(a, (int, float)) and a == b
    if isinstance(b, tuple):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _short(values: dict, key: str) -> str:
    return describe(values[key]) if key in values else "absent"
