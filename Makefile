# The README's two commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
CODE := $(wildcard src tests benchmarks examples)

.PHONY: demo test lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-deps: pyproject.toml | $(PY)
	$(PIP) -e ".[examples]"
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(PY)
	$(PIP) -e ".[test]"
	touch $@

$(VENV)/.bench-deps: pyproject.toml | $(PY)
	$(PIP) -e ".[test,bench,examples]"
	touch $@

demo: $(VENV)/.demo-deps
	$(PY) examples/ridge_hypergradient.py

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)

format: $(VENV)/.test-deps
	$(VENV)/bin/ruff format $(CODE)
	$(VENV)/bin/ruff check --fix $(CODE)

test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(VENV)/.bench-deps
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_solvers.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
