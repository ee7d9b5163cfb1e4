"""Data-parallel training on MPI (symnet.backends.mpi), run as real 2-rank jobs.

The reference is independent of the code under test: the one-process fused step
(``sn.compile``: forward, backward and update in one generated kernel), trained on the same
global batches from the same initial weights.  The distributed path runs a different kernel
(gradients only) per shard, sums shards with ``Allreduce`` and updates with the separate
optimizer kernels, so agreement to 1e-10 checks sharding, weighting and the reduction.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symnet as sn
from symnet.app.train import TrainConfig, train
from symnet.backends.mpi import DistributedStep, SingleProcess

HERE = Path(__file__).parent / "mpi"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launch, dp_step = _load("launch"), _load("dp_step")
SCRIPT = HERE / "dp_step.py"
mpirun, needs_mpi = launch.mpirun, launch.needs_mpi


def reference(case: str) -> tuple[dict, list[float]]:
    """One process, the fused compiled step, rank 0's initial weights, the same batches."""
    loss, optimizer = dp_step.CASES[case]
    net = dp_step.model(dp_step.SEED, case)
    step = sn.compile(net, loss(), optimizer(net.parameters()))
    losses = [step(X, y) for X, y in dp_step.global_batches(case)]
    return net.state_dict(), losses


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    run = mpirun(2, str(SCRIPT), str(out))
    assert run.returncode == 0, run.stderr
    return out


@needs_mpi
@pytest.mark.parametrize("case", list(dp_step.CASES))
def test_two_ranks_match_one_process_fused_step(two_rank_run, case, assert_close):
    params, losses = reference(case)
    for r in range(2):
        result = np.load(two_rank_run / f"{case}.rank{r}.npz")
        assert_close(result["losses"], losses, 1e-10, f"{case} rank {r} losses")
        for key, expected in params.items():
            assert_close(result[key], expected, 1e-10, f"{case} rank {r} {key}")
    # the run really trained: the weights moved away from the initial ones
    initial = dp_step.model(dp_step.SEED, case).state_dict()
    assert not np.allclose(params["0.weight"], initial["0.weight"], atol=1e-3)


@needs_mpi
def test_rank_that_raises_aborts_the_job_with_its_rank(tmp_path):
    run = mpirun(2, str(SCRIPT), str(tmp_path), "--bad-rank", "1", timeout=60)
    assert run.returncode != 0
    assert "rank 1: ValueError: Linear(6, 16) (layer 0) got input with 5 features" in run.stderr
    assert "rank 0:" not in run.stderr


def test_without_mpi4py_one_process_is_the_fused_step(tmp_path, assert_close):
    """No mpi4py and no mpiexec: the world is one rank and training still matches."""
    code = (f"import sys; sys.modules['mpi4py'] = None; "
            f"sys.path.insert(0, {str(SCRIPT.parent)!r}); "
            f"import dp_step; dp_step.main({str(tmp_path)!r}, None, ('sgd_momentum',))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    params, losses = reference("sgd_momentum")
    result = np.load(tmp_path / "sgd_momentum.rank0.npz")
    assert_close(result["losses"], losses, 1e-10, "losses")
    for key, expected in params.items():
        assert_close(result[key], expected, 1e-10, key)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "PMI_RANK": "0"}, timeout=120)
    assert run.returncode != 0 and "pip install 'symnet[mpi]'" in run.stderr


def test_check_finite_refuses_the_update_and_says_so():
    net = dp_step.model(dp_step.SEED)
    net[2].bias.data[0] = np.inf  # every logit of class 0 is inf: the loss is NaN
    before = {k: v.copy() for k, v in net.state_dict().items()}
    optimizer = sn.optim.Adam(net.parameters(), lr=0.01)
    step = DistributedStep(net, sn.CrossEntropyLoss(), optimizer, SingleProcess(),
                           check_finite=True)
    X, y = next(dp_step.global_batches("adam"))
    with pytest.raises(FloatingPointError, match="train step 1: the loss became nan"):
        step(X, y)
    assert optimizer.step_count == 0
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert not optimizer.state[0]["m"].any()


EPOCH = re.compile(r"epoch +(\d+) +loss ([\d.]+) +test accuracy ([\d.]+)")


@needs_mpi
def test_symnet_train_distributed_prints_once_and_matches_one_process(tmp_path, assert_close):
    ck = tmp_path / "ck.safetensors"
    run = mpirun(2, "-m", "mpi4py", "-m", "symnet", "train", "--dataset", "digits",
                 "--layers", "64,16,10", "--epochs", "2", "--distributed", "--save", str(ck),
                 timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert [m.group(1) for m in map(EPOCH.match, lines) if m] == ["1", "2"], run.stdout
    assert lines[2:] == [f"saved {ck}"], run.stdout  # once: rank 1 prints nothing

    logged: list[str] = []
    single = train(TrainConfig((64, 16, 10), epochs=2), log=logged.append)
    for distributed, one in zip(lines[:2], logged):
        (_, loss, acc), (_, loss1, acc1) = (EPOCH.match(distributed).groups(),
                                            EPOCH.match(one).groups())
        assert abs(float(loss) - float(loss1)) <= 2e-4 and abs(float(acc) - float(acc1)) <= 0.01
    saved = sn.load(str(ck))["model"]  # written by rank 0 after the same float32 steps
    for key, expected in single.model.state_dict().items():
        assert_close(saved[key], expected, 1e-4, key)
