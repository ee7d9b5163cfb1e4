"""What the CUDA test files share: rerunning a file in Numba's CUDA simulator, and
compiling generated kernels for a real GPU (sm_90 PTX) where the CUDA compiler is present.

A CUDA test file enables the simulator itself when it is imported first; when Numba came
first without it (the whole suite), its ``test_in_simulator`` runs the file again in a
process that sets ``NUMBA_ENABLE_CUDASIM=1`` before importing Numba.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PTX_PROBE = "from numba.cuda.cudadrv import nvvm, libs; nvvm.NVVM(); libs.get_libdevice()"


def rerun_in_simulator(test_file: str) -> None:
    """Run ``test_file`` with pytest in a fresh process with the CUDA simulator on."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(Path(test_file).resolve().relative_to(ROOT))],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def pretend_sm90() -> None:
    """Without a GPU, device functions ask for a compute capability: answer sm_90."""
    import numba.cuda.dispatcher
    from numba import cuda

    if not cuda.is_available():
        numba.cuda.dispatcher.get_current_device = \
            lambda: types.SimpleNamespace(compute_capability=(9, 0))


def compile_to_ptx(program, batch, dtype, header: str) -> int:
    """Render ``program``, compile each of its kernels for sm_90 with the real NVVM (no
    simulator), check the PTX's target; returns how many kernels compiled."""
    import numpy as np
    from numba import cuda

    from codegen import cuda as render
    from codegen.cache import load_module

    pretend_sm90()
    source = render.render_module([program], batch, dtype, header=header)
    module = load_module(source, {"device": "cuda", "dtype": np.dtype(dtype).name,
                                  "tile": render.TILE, "test": True})
    count = 0
    for kernel in render.kernels(program, batch):
        ptx, _ = cuda.compile_ptx(getattr(module, kernel.name).py_func,
                                  render.signature(kernel, program, dtype), cc=(9, 0))
        assert ".target sm_90" in ptx, kernel.name
        count += 1
    return count


def compile_ptx_in_subprocess(test_file: str, function: str) -> str:
    """Call ``function`` of ``test_file`` in a process without the simulator (it compiles
    kernels with the real NVVM and returns a count); skip where NVVM is missing."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    probe = subprocess.run([sys.executable, "-c", PTX_PROBE], env=env, capture_output=True,
                           text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("the CUDA compiler (NVVM, libdevice) is not importable: "
                    "pip install 'numba-cuda[cu13]' to compile kernels to PTX without a GPU; "
                    + (probe.stderr.strip().splitlines() or ["?"])[-1])
    code = (f"import runpy, sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
            f"ns = runpy.run_path(sys.argv[1]); print('compiled', ns[{function!r}]())")
    run = subprocess.run([sys.executable, "-c", code, test_file], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "compiled" in run.stdout
    return run.stdout
