"""``--model FILE.py:NAME``: a network from the user's own Python file, in every command.

The printed equations and kernels of a file's network are compared with those of the same
network given as ``--layers``; scores with a numpy forward pass over the checkpoint's tensors;
a resumed run with an uninterrupted one, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import symnet as sn
from symnet.app.architecture import Architecture
from symnet.app.data import load_digits
from symnet.app.model_file import ModelFile, load
from symnet.app.train import TrainConfig, train
from symnet.cli import main
from symnet.io.serialization import load_file, save_file

NETS = """\
import symnet as sn

model = sn.Sequential(sn.Linear(4, 8), sn.Tanh(), sn.Linear(8, 3))


class Net(sn.Sequential):
    def __init__(self):
        super().__init__(sn.Linear(64, 16), sn.ReLU(), sn.Linear(16, 10))


def make_model():
    return sn.Sequential(sn.Linear(64, 16), sn.Tanh(), sn.Linear(16, 10))


class NeedsWidth(sn.Sequential):
    def __init__(self, width):
        super().__init__(sn.Linear(64, width), sn.ReLU(), sn.Linear(width, 10))


def with_width(width):
    return NeedsWidth(width)


def listed():
    return [sn.Linear(4, 3)]


def bad_width():
    return sn.Sequential(sn.Linear(0, 3))


class Plain:
    pass


width = 3
"""
BAD_WIDTH = NETS.splitlines().index("    return sn.Sequential(sn.Linear(0, 3))") + 1
#: each usable NAME in NETS, and the --layers/--activation that give the same network
SAME_AS = {"model": ("4,8,3", "tanh"), "Net": ("64,16,10", "relu"),
           "make_model": ("64,16,10", "tanh")}
QUICK = ["--dataset", "digits", "--batch-size", "128", "--seed", "3"]  # 12 steps an epoch


def run(argv: list) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("symnet: error: "), err
    assert "Traceback" not in err
    return lines[0]


def refused(argv: list, capsys, *needles: str) -> str:
    """``argv`` must exit 2 with one ``symnet: error:`` line holding every needle."""
    code = run(argv)
    out, err = capsys.readouterr()
    message = one_line_error(err)
    assert code == 2 and out == "", (code, out, err)
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def output(argv: list, capsys) -> str:
    assert run(argv) == 0
    out, err = capsys.readouterr()
    assert err == "", err
    return out


@pytest.fixture
def nets(tmp_path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


# --- equations, verify, kernels -------------------------------------------------------------

@pytest.mark.parametrize("name", SAME_AS)
@pytest.mark.parametrize("extra", [["--loss", "mse"], ["--optimizer", "adam"],
                                   ["--loss", "cross-entropy", "--format", "latex"]])
def test_equations_of_a_file_are_those_of_the_same_layers(nets, capsys, name, extra):
    layers, activation = SAME_AS[name]
    mine = output(["equations", "--model", f"{nets}:{name}", *extra], capsys)
    theirs = output(["equations", "--layers", layers, "--activation", activation, *extra], capsys)
    assert mine == theirs and "Forward" in mine


@pytest.mark.parametrize("name", SAME_AS)
def test_verify_proves_a_files_network(nets, capsys, name):
    out = output(["verify", "--model", f"{nets}:{name}", "--loss", "mse"], capsys)
    assert out.startswith("symbolic verification: all hold") and "ok   dW1" in out


def test_verify_numeric_on_a_file(nets, capsys):
    out = output(["verify", "--model", f"{nets}:model", "--numeric"], capsys)
    assert "all hold" in out and "FAILED" not in out


@pytest.mark.parametrize("argv", [
    ["--loss", "mse", "--optimizer", "sgd"],
    ["--optimizer", "adam", "--dtype", "float64", "--device", "cuda"],
])
def test_kernels_of_a_file_are_those_of_the_same_layers(nets, capsys, argv):
    mine = output(["kernels", "--model", f"{nets}:model", *argv], capsys)
    theirs = output(["kernels", "--layers", "4,8,3", "--activation", "tanh", *argv], capsys)
    assert mine == theirs and "# dW1 = dZ1*X.T" in mine


def test_kernels_dtype_converts_the_files_network(nets, capsys):
    out = output(["kernels", "--model", f"{nets}:model", "--dtype", "float64", "--device",
                  "cuda"], capsys)
    assert "float64" in out and "float32" not in out


# --- what the file may hold, and each way it can be wrong ------------------------------------

def test_the_file_leaves_no_module_and_no_path_behind(tmp_path):
    (tmp_path / "helper.py").write_text("WIDTH = 5\n")
    path = tmp_path / "uses_helper.py"
    path.write_text("import symnet as sn\nimport helper\n"
                    "model = sn.Sequential(sn.Linear(helper.WIDTH, 2))\n")
    modules, folders = set(sys.modules), list(sys.path)
    assert load(f"{path}:model").module.layers()[0].in_features == 5
    assert set(sys.modules) == modules and sys.path == folders
    (tmp_path / "helper.py").write_text("WIDTH = 7\n")  # its neighbour is imported afresh
    assert load(f"{path}:model").module.layers()[0].in_features == 7


def test_each_load_runs_the_file_again(nets):
    first, second = load(f"{nets}:model"), load(f"{nets}:model")
    assert first.module is not second.module
    assert first.sha256 == second.sha256 == hashlib.sha256(nets.read_bytes()).hexdigest()


FILES = {  # a file's text → what the error says about it
    "syntax.py": ("import symnet as sn\nmodel = sn.Sequential(\n", "SyntaxError"),
    "imports.py": ("import symnet as sn\nimport no_such_package_xyz\n",
                   "importing {path} failed at line 2: ModuleNotFoundError: No module named "
                   "'no_such_package_xyz'"),
    "raises.py": ("import symnet as sn\n\nmodel = sn.Linear(4, -1)\n",
                  "importing {path} failed at line 3: ValueError: Linear: out_features must "
                  "be a positive integer, got -1"),
}


@pytest.mark.parametrize("file", FILES)
def test_a_file_that_does_not_run_is_named_with_its_error(tmp_path, capsys, file):
    text, needle = FILES[file]
    path = tmp_path / file
    path.write_text(text)
    for command in ("equations", "verify", "kernels"):
        refused([command, "--model", f"{path}:model"], capsys, str(path),
                needle.format(path=path))


def test_a_syntax_error_says_where(tmp_path, capsys):
    path = tmp_path / "syntax.py"
    path.write_text(FILES["syntax.py"][0])
    message = refused(["equations", "--model", f"{path}:model"], capsys)
    assert f"importing {path} failed at line 2: SyntaxError: " in message


@pytest.mark.parametrize("spec, needles", [
    ("{dir}/missing.py:model", ["--model {dir}/missing.py:model: no such file "
                                "{dir}/missing.py"]),
    ("{dir}/nets.txt:model", ["{dir}/nets.txt is not a Python file (.py)"]),
    ("{dir}:model", ["is not a Python file (.py)"]),
    ("{dir}/nets.py", ["expected FILE.py:NAME"]),
    ("{dir}/nets.py:", ["expected FILE.py:NAME"]),
    ("{dir}/nets.py:nope", ["nets.py has no 'nope'; its models: model, Net (a Module subclass), "
                            "make_model(), listed(), bad_width()"]),
    ("{dir}/nets.py:width", ["'width' is an int, not a symnet Module, Module subclass or "
                             "function returning one"]),
    ("{dir}/nets.py:Plain", ["'Plain' is a class that does not subclass sn.Module"]),
    ("{dir}/nets.py:listed", ["listed() returned a list, not a symnet Module"]),
    ("{dir}/nets.py:NeedsWidth", ["NeedsWidth() needs arguments (missing a required argument: "
                                  "'width')", "or name an instance"]),
    ("{dir}/nets.py:with_width", ["with_width() needs arguments"]),
    ("{dir}/nets.py:bad_width", [f"bad_width() failed in nets.py line {BAD_WIDTH}: ValueError: "
                                 "Linear: in_features must be a positive integer, got 0"]),
])
@pytest.mark.parametrize("command", ["equations", "verify", "kernels", "train"])
def test_every_bad_model_is_one_line_in_every_command(nets, capsys, command, spec, needles):
    (nets.parent / "nets.txt").write_text(NETS)
    folder = str(nets.parent)
    refused([command, "--model", spec.format(dir=folder)], capsys,
            *(needle.format(dir=folder) for needle in needles))


def test_a_file_with_no_models_says_so(tmp_path, capsys):
    path = tmp_path / "empty.py"
    path.write_text("from symnet import Sequential, Linear\nimport numpy as np\n")
    refused(["equations", "--model", f"{path}:model"], capsys, "empty.py has no 'model'; it "
            "defines no Module, Module subclass or function of no arguments")


@pytest.mark.parametrize("command", ["equations", "verify", "kernels", "train"])
def test_model_replaces_layers_and_activation(nets, capsys, command):
    spec = f"{nets}:model"
    refused([command, "--model", spec, "--layers", "4,8,3"], capsys,
            "argument --layers: not allowed with argument --model")
    refused([command, "--model", spec, "--activation", "tanh"], capsys,
            f"--activation shapes a --layers network; --model {spec} has its own activations")
    refused([command], capsys, "one of the arguments --layers --model is required")


def test_a_bad_loss_is_refused_before_the_file_runs(tmp_path, capsys):
    path = tmp_path / "loud.py"
    path.write_text("raise SystemExit('the file ran')\n")
    refused(["equations", "--model", f"{path}:model", "--loss", "hinge"], capsys,
            "unknown loss 'hinge'")


def test_train_refuses_a_model_that_does_not_fit_the_data(nets, capsys):
    refused(["train", "--dataset", "digits", "--model", f"{nets}:model"], capsys,
            f"--model {nets}:model does not fit digits: it takes 4 features and gives 3 "
            "outputs; digits has 64 features and 10 outputs")


def test_train_refuses_a_model_whose_layers_do_not_chain(tmp_path, capsys):
    path = tmp_path / "gap.py"
    path.write_text("import symnet as sn\n"
                    "model = sn.Sequential(sn.Linear(64, 16), sn.ReLU(), sn.Linear(15, 10))\n")
    refused(["train", "--dataset", "digits", "--model", f"{path}:model"], capsys,
            "Linear(15, 10) (layer 2) receives 16 features from the layer before it, expected 15")


def test_train_config_needs_layers_or_a_model(nets):
    for config in (TrainConfig(), TrainConfig(layers=(64, 10), model=f"{nets}:Net")):
        with pytest.raises(ValueError, match="--layers.*or as a model file .--model., one of"):
            train(config, log=lambda line: None)


# --- train, evaluate, load_model, resume ------------------------------------------------------

def relu_network(bundle: dict, X: np.ndarray) -> np.ndarray:
    """``nets.py:Net``'s outputs for raw features ``X``, by numpy from the checkpoint alone."""
    scaling = bundle["meta"]["scaling"]
    h = (X.astype(np.float64) - np.asarray(scaling["mean"])) / np.asarray(scaling["std"])
    w = {k: v.astype(np.float64) for k, v in bundle["model"].items()}
    return np.maximum(h @ w["0.weight"].T + w["0.bias"], 0) @ w["2.weight"].T + w["2.bias"]


def split_test_rows(n: int, seed: int) -> np.ndarray:
    """The seeded 80/20 split's test rows: the last ⌈0.2 n⌉ of one permutation."""
    return np.random.default_rng(seed).permutation(n)[n - math.ceil(n * 0.2):]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A digits run of ``nets.py:Net`` stopped after 20 steps: the model file and checkpoint."""
    folder = tmp_path_factory.mktemp("trained")
    nets, ck = folder / "nets.py", folder / "ck.safetensors"
    nets.write_text(NETS)
    assert run(["train", *QUICK, "--model", f"{nets}:Net", "--epochs", "3", "--max-steps", "20",
                "--save", ck]) == 0
    return nets, ck


def test_the_checkpoint_records_where_the_model_came_from(trained):
    nets, ck = trained
    meta = sn.load(ck)["meta"]
    assert meta["architecture"] is None and meta["config"]["model"] == f"{nets}:Net"
    record = meta["model_file"]
    assert record["spec"] == f"{nets}:Net" and record["path"] == str(nets.resolve())
    assert record["sha256"] == hashlib.sha256(nets.read_bytes()).hexdigest()
    assert (record["inputs"], record["outputs"], record["loss"]) == (64, 10, "cross-entropy")
    assert [list(p) for p in record["parameters"]] == [
        ["0.weight", (16, 64)], ["0.bias", (16,)], ["2.weight", (10, 16)], ["2.bias", (10,)]]


def test_evaluate_and_load_model_rebuild_the_network_from_the_file(trained, capsys):
    nets, ck = trained
    bundle, digits = sn.load(ck), load_digits()
    rows = split_test_rows(len(digits), bundle["meta"]["seed"])
    out = relu_network(bundle, digits.X[rows])
    expected = float(np.mean(out.argmax(axis=1) == digits.y[rows]))
    assert 0.3 < expected < 1  # trained a little: better than chance, not done
    assert output(["evaluate", "--checkpoint", ck], capsys) == f"test accuracy {expected:.4f}\n"
    model = sn.load_model(ck)
    assert isinstance(model.blueprint, ModelFile) and model.architecture is None
    np.testing.assert_allclose(model(digits.X[rows]), out, rtol=1e-4, atol=1e-4)


def test_an_old_checkpoint_is_still_an_architecture():
    old = sn.load_model(Path(__file__).parent / "data" / "old-digits.safetensors")
    assert isinstance(old.blueprint, Architecture) and old.architecture.layers == (64, 4, 10)


def _copy(trained, tmp_path) -> tuple[Path, Path]:
    nets, ck = tmp_path / "nets.py", tmp_path / "ck.safetensors"
    nets.write_bytes(trained[0].read_bytes())
    ck.write_bytes(trained[1].read_bytes())
    edit_meta(ck, lambda meta: meta["model_file"].update(path=str(nets.resolve())))
    return nets, ck


def edit_meta(path: Path, edit) -> None:
    """Change a checkpoint's decoded metadata in place; the file stays valid safetensors."""
    tensors, header = load_file(path)
    meta = json.loads(header["symnet.meta"])
    edit(meta)
    header["symnet.meta"] = json.dumps(meta)
    save_file(tensors, path, header)


def test_evaluate_refuses_a_model_file_that_is_gone_or_changed(trained, tmp_path, capsys):
    nets, ck = _copy(trained, tmp_path)
    assert run(["evaluate", "--checkpoint", ck]) == 0
    capsys.readouterr()
    nets.write_text(NETS + "# edited\n")
    refused(["evaluate", "--checkpoint", ck], capsys, f"{ck}: the model ", str(nets),
            "has changed since (sha256 ")
    with pytest.raises(ValueError, match="has changed since"):
        sn.load_model(ck)
    nets.unlink()
    refused(["evaluate", "--checkpoint", ck], capsys, f"{ck}: the model ",
            f"no such file {nets}")


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m["model_file"].update(sha256="abc"), "sha256 must be 64 lowercase hex digits"),
    (lambda m: m.update(model_file=None), "exactly one of architecture and model_file"),
    (lambda m: m["model_file"].update(inputs=63), "scaling has 64 features, the architecture "
                                                  "63 inputs"),
    (lambda m: m["model_file"].update(path="nets.py"), "path must be an absolute path"),
    (lambda m: m["config"].update(model=None), "layers must be two or more positive widths"),
    (lambda m: m["model_file"].update(parameters=[["0.weight", [16, 0]]]), "not positive"),
])
def test_a_tampered_model_file_record_is_named(trained, tmp_path, capsys, edit, problem):
    _, ck = _copy(trained, tmp_path)
    edit_meta(ck, edit)
    refused(["evaluate", "--checkpoint", ck], capsys, f"{ck}: damaged checkpoint metadata: ",
            problem)


def test_tensors_that_do_not_fit_the_record_are_refused_before_the_file_runs(
        trained, tmp_path, capsys):
    nets, ck = _copy(trained, tmp_path)
    nets.write_text("raise SystemExit('the file ran')\n")  # the hash check would fail too
    edit_meta(ck, lambda m: m["model_file"].update(
        parameters=[["0.weight", [17, 64]], ["0.bias", [16]], ["2.weight", [10, 16]],
                    ["2.bias", [10]]]))
    refused(["evaluate", "--checkpoint", ck], capsys,
            "'0.weight' has shape (16, 64), expected (17, 64)")


def _resumed_and_straight(tmp_path, capsys, source: str, name: str) -> tuple[Path, dict]:
    """Train ``file:name`` 7 steps, resume it to the end, and train it straight through;
    the two checkpoints must be the same bytes.  Returns the resumed one and its tensors."""
    nets = tmp_path / "nets.py"
    nets.write_text(source)
    argv = ["train", *QUICK, "--model", f"{nets}:{name}", "--epochs", "2"]
    resumed, straight = tmp_path / "resumed.safetensors", tmp_path / "straight.safetensors"
    assert run([*argv, "--max-steps", "7", "--save", resumed]) == 0
    assert run([*argv, "--save", resumed, "--resume"]) == 0
    assert run([*argv, "--save", straight]) == 0
    capsys.readouterr()
    (a, meta_a), (b, meta_b) = load_file(resumed), load_file(straight)
    assert list(a) == list(b) and meta_a == meta_b
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    return resumed, a


def test_resume_of_a_model_run_is_bit_identical(tmp_path, capsys):
    resumed, _ = _resumed_and_straight(tmp_path, capsys, NETS, "make_model")
    assert sn.load(resumed)["optimizer"]["step"] == 24


def test_resume_refuses_a_changed_file_and_another_kind_of_network(trained, tmp_path, capsys):
    nets, ck = _copy(trained, tmp_path)
    argv = ["train", *QUICK, "--epochs", "3", "--save", ck, "--resume"]
    refused([*argv, "--layers", "64,16,10"], capsys, f"--resume: {ck} was trained with "
            f"--model {trained[0]}:Net, this run has --layers 64,16,10")
    refused([*argv, "--model", f"{nets}:Net"], capsys,
            f"--model {trained[0]}:Net there, {nets}:Net here")
    edit_meta(ck, lambda m: m["config"].update(model=f"{nets}:Net"))
    nets.write_text(NETS.replace("16", "17"))
    refused([*argv, "--model", f"{nets}:Net"], capsys, f"--resume: {ck} was trained with "
            f"{nets.resolve()} as it was then (sha256 ", "has changed since")
    ck_bytes = ck.read_bytes()  # as edited: the refusals wrote nothing
    nets.write_text(NETS)
    refused([*argv, "--model", f"{nets}:Net", "--dtype", "float64"], capsys,
            "--dtype float32 there, float64 here")
    assert ck.read_bytes() == ck_bytes


def test_dtype_converts_a_files_network_for_training(tmp_path, capsys):
    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    ck = tmp_path / "ck.safetensors"
    assert run(["train", *QUICK, "--model", f"{nets}:Net", "--dtype", "float64",
                "--max-steps", "2", "--save", ck]) == 0
    capsys.readouterr()
    bundle = sn.load(ck)
    assert bundle["meta"]["model_file"]["dtype"] == "float64"
    assert all(v.dtype == np.float64 for v in bundle["model"].values())
    assert sn.load_model(ck).network.dtype is np.float64


@pytest.mark.parametrize("name", ["model", "make_model"])  # drawn as the file runs, or later
def test_the_seed_fixes_a_files_initial_weights(tmp_path, name):
    path = tmp_path / "nets.py"
    path.write_text(NETS.replace("Linear(4, 8)", "Linear(64, 8)").replace("Linear(8, 3)",
                                                                          "Linear(8, 10)"))
    weights = []
    for seed in (3, 3, 4):
        result = train(TrainConfig(model=f"{path}:{name}", epochs=1, batch_size=128,
                                   seed=seed, max_steps=1), log=lambda line: None)
        assert isinstance(result.blueprint, ModelFile) and result.optimizer.step_count == 1
        weights.append(result.model.state_dict()["0.weight"])
    assert np.array_equal(weights[0], weights[1]) and not np.array_equal(weights[0], weights[2])


NORM_NETS = """
import symnet as sn


class Net(sn.Module):
    def __init__(self):
        super().__init__()
        self.fc = sn.Linear(64, 16)
        self.norm = sn.BatchNorm1d(16)
        self.drop = sn.Dropout(0.3)
        self.out = sn.Linear(16, 10)

    def forward(self, x):
        return self.out(self.drop(sn.relu(self.norm(self.fc(x)))))
"""


def test_resume_with_dropout_and_batchnorm_is_bit_identical(tmp_path, capsys):
    """The checkpoint carries the running statistics (and num_batches_tracked) and the
    generator the dropout masks come from, so a resumed run draws the same masks."""
    _, a = _resumed_and_straight(tmp_path, capsys, NORM_NETS, "Net")
    assert "model.norm.running_var" in a and int(a["model.norm.num_batches_tracked"]) == 24
