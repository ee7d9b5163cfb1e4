# `make run`: set up and run the main job; `make test`: set up, lint (ruff, import layers) and
# run every test.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup run test lint bench bench-gpu

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,torch,mpi,progress,plot,mnist]'
	touch $@

run: setup
	$(PY) -m symnet equations --layers 64,32,10 --activation sigmoid --loss cross-entropy --optimizer adam
	$(PY) -m symnet verify --layers 64,32,10 --activation sigmoid --loss cross-entropy
	$(PY) -m symnet train --dataset digits --layers 64,64,10 --activation relu --optimizer adam --epochs 30 --save digits.safetensors
	$(PY) -m symnet evaluate --checkpoint digits.safetensors --dataset digits

test: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/derive_speed.py
	$(PY) benchmarks/parallel_threshold.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/residual_step.py
	$(PY) benchmarks/mpi_scaling.py
	$(PY) benchmarks/gemm_share.py

# On a machine with an NVIDIA GPU (needs the cuda extra): the fused CUDA step vs PyTorch CUDA.
bench-gpu: setup
	$(PY) benchmarks/gpu_step.py --sanity
