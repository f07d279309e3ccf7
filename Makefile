# Two entry points for a fresh Debian 12 machine (root, Python 3.11, no GPU):
#   make demo   set everything up, then roll out the shipped PushCube policy (video in outputs/)
#   make test   set everything up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: setup system venv demo test test-all bench clean

setup: system venv

system:
	bash scripts/setup_system.sh

$(VENV)/.stamp-install: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0          # CPU wheel from local disk; must come before the rest
	$(PIP) install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp-install

demo: setup
	$(PY) examples/rollout_pushcube.py --episodes 3 --out outputs/demo

test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
