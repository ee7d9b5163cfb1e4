# `make run`: set up and run the main job; `make test`: set up and run every test.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup run test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,torch]'
	touch $@

run: setup
	$(PY) -m symnet equations --layers 64,32,10 --activation sigmoid --loss cross-entropy --optimizer adam
	$(PY) -m symnet verify --layers 64,32,10 --activation sigmoid --loss cross-entropy

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/derive_speed.py
