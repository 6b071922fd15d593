# stepjax: `make demo` runs the default recipe on CPU; `make test` runs the tests. Both set up .venv first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# A working Python >= 3.12: on PATH if one runs, else the newest under `pyenv root`/versions.
FIND_PYTHON := for p in python3.12 python3.13 python3 python; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    command -v $$p; exit 0; fi; done; \
	root=$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv); \
	for d in $$(ls -d $$root/versions/3.1[2-9]* 2>/dev/null | sort -V); do \
	  if $$d/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    echo $$d/bin/python3; exit 0; fi; done; exit 1

.PHONY: demo test test-slow test-all bench lint format setup setup-test clean

$(VENV)/.core-stamp: setup.cfg pyproject.toml
	@base=$$($(FIND_PYTHON)) || { echo "error: no Python >= 3.12 found on PATH or under pyenv" >&2; exit 1; }; \
	  echo "using $$base ($$($$base --version))"; \
	  [ -x $(PY) ] || $$base -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-stamp: $(VENV)/.core-stamp
	$(PY) -m pip install -q -e '.[test,parity]'
	touch $@

setup: $(VENV)/.core-stamp
setup-test: $(VENV)/.test-stamp

demo: $(VENV)/.core-stamp
	$(PY) -m recipes.run --config configs/orz_ppo.py:tiny --workdir workdirs/orz_ppo_demo_$$(date +%Y%m%d_%H%M%S)

test: $(VENV)/.test-stamp
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: $(VENV)/.test-stamp
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: $(VENV)/.test-stamp
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

bench: $(VENV)/.test-stamp
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.decode
	$(PY) -m benchmarks.rl_throughput
	$(PY) -m benchmarks.fused_logprob

lint: $(VENV)/.test-stamp
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.test-stamp
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
