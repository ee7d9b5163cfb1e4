"""Real MPI jobs for the tests: ``mpiexec -n R python …``, importing this checkout's symnet."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import symnet

MPIEXEC = Path(sys.executable).with_name("mpiexec")
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not MPIEXEC.exists(),
    reason=f"needs mpi4py and mpiexec next to {sys.executable} (pip install 'symnet[mpi]')")
#: the checkout the tests import symnet from: a script under tests/mpi/ run by path would
#: otherwise import whichever symnet is installed
CHECKOUT = Path(symnet.__file__).resolve().parents[1]


def mpirun(ranks: int, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python args…``; on a timeout the whole process group is killed."""
    command = [str(MPIEXEC), "-n", str(ranks), sys.executable, *args]
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH")) if p)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": path})
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{' '.join(command)} hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)
