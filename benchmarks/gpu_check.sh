#!/usr/bin/env bash
# One run on a GPU machine: versions, the GPU benchmark (with its CUDA-vs-CPU sanity check),
# a short `symnet train --device cuda`, then the CUDA test files on the real GPU.
# Logs and results go to $OUT (default /tmp/gpu-check).  Uses the machine's python3 and its
# packages (numba, numba-cuda, torch, sympy ...), with this checkout on PYTHONPATH.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh        # BENCH_S, TRAIN_S, TEST_S: time limits
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0
export SYMNET_CACHE_DIR=/tmp/symnet-gpu-cache
PY=${PYTHON:-python3}
start=$SECONDS
stamp() { echo "=== $1 (t=$((SECONDS - start)) s)"; }

stamp versions
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
$PY - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "sympy", "numba", "numba_cuda", "llvmlite", "scipy", "torch"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:  # noqa: BLE001
        print(name, "missing:", error)
import torch
print("torch cuda", torch.version.cuda, torch.cuda.is_available())
EOF

stamp "benchmark"
timeout "${BENCH_S:-200}" $PY benchmarks/gpu_step.py --sanity --json "$OUT/gpu.json" \
    2>&1 | tee "$OUT/bench.log"
echo "benchmark exit ${PIPESTATUS[0]}"

stamp "symnet train --device cuda"
timeout "${TRAIN_S:-90}" $PY -m symnet train --dataset digits --layers 64,64,10 \
    --activation relu --optimizer adam --epochs 10 --device cuda 2>&1 | tee "$OUT/train.log"
echo "train exit ${PIPESTATUS[0]}"

stamp "CUDA tests"
workers=()
$PY -c "import xdist" 2>/dev/null && workers=(-n "${WORKERS:-8}")
timeout "${TEST_S:-260}" $PY -m pytest tests/test_cuda_step.py tests/test_cuda_device.py \
    tests/codegen/test_cuda.py -q -p no:cacheprovider "${workers[@]}" -rfEs \
    --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log" | tail -60
echo "tests exit ${PIPESTATUS[0]}"
stamp done
