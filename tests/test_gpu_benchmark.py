"""benchmarks/gpu_step.py runs end to end, so a session lent a GPU can trust it at once.

Without a GPU the script runs in Numba's CUDA simulator (``--simulate``) on tiny shapes; its
timings are meaningless and are not checked.  What is checked: it exits 0, prints one table
row per model × optimizer × timing variant, its ``--sanity`` check (CUDA step vs CPU step)
passes, and the symnet CUDA step's first loss agrees with PyTorch's from the same weights.
Without ``--simulate`` and without a GPU it must stop at once with one line and exit 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_step.py"


def _run(*args: str, simulator: bool, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_simulated_quick_run_prints_every_row(tmp_path):
    out = tmp_path / "gpu_step.json"
    run = _run("--simulate", "--quick", "--sanity", "--json", str(out),
               simulator=False, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "SIMULATED" in run.stdout and "meaningless" in run.stdout
    rows = re.findall(r"^\| (8-4-3|8-4-4-3) \| (SGD|Adam) \| (\d+) \| (step \+ sync|step call "
                      r"only) \| ([\d.,]+ (?:ms|µs)) \|", run.stdout, re.MULTILINE)
    expected = {(m, o, "4", v) for m in ("8-4-3", "8-4-4-3") for o in ("SGD", "Adam")
                for v in ("step + sync", "step call only")}
    assert {r[:4] for r in rows} == expected and len(rows) == len(expected), run.stdout

    result = json.loads(out.read_text())
    assert result["simulated"] and len(result["rows"]) == 4
    assert [c["model"] for c in result["sanity"]] == ["8-4-3", "8-4-4-3"]
    assert all(c["difference"] <= 1e-4 for c in result["sanity"]), result["sanity"]
    if importlib.util.find_spec("torch") is None:
        return
    for row in result["rows"]:  # an independent reference: torch from the same weights
        first = row["first_loss"]
        assert abs(first["symnet"] - first["torch"]) <= 1e-5 * max(1.0, abs(first["torch"])), row
        assert row["torch_s"] > 0 and row["torch_item_s"] > 0


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU may be here: the "
                    "script would run the full benchmark")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2():
    run = _run("--quick", simulator=False, timeout=60)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no GPU" in lines[0] and "--simulate" in lines[0], run.stderr


def test_the_simulator_variable_without_simulate_is_refused():
    """NUMBA_ENABLE_CUDASIM=1 left in the environment would run 784-wide rows simulated."""
    run = _run("--quick", simulator=True, timeout=60)
    assert run.returncode == 2 and "--simulate" in run.stderr, run.stderr[-2000:]
