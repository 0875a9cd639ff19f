# The README's two commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
CODE := $(wildcard src tests benchmarks examples)

.PHONY: demo test lint format bench bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-deps: pyproject.toml | $(PY)
	$(PIP) -e ".[examples]"
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(PY)
	$(PIP) -e ".[test,examples,bench]"
	touch $@

$(VENV)/.bench-deps: pyproject.toml | $(PY)
	$(PIP) -e ".[test,bench,examples]"
	touch $@

demo: $(VENV)/.demo-deps
	$(VENV)/bin/implicitdiff svm-hyperopt

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)

format: $(VENV)/.test-deps
	$(VENV)/bin/ruff format $(CODE)
	$(VENV)/bin/ruff check --fix $(CODE)

test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

# `make bench` rewrites docs/benchmarks.md (one section per script) and its PNGs in docs/images/:
# tens of minutes. `make bench-quick` runs every script at a tiny size into BENCH_QUICK_DIR
# (benchmarks.md and images/ there), leaving docs/ alone.
BENCHMARKS := engine solvers unroll backward scale
BENCH_QUICK_DIR ?= $(or $(TMPDIR),/tmp)/implicitdiff-bench-quick

bench: $(VENV)/.bench-deps
	for name in $(BENCHMARKS); do $(PY) benchmarks/bench_$$name.py || exit 1; done

bench-quick: $(VENV)/.bench-deps
	mkdir -p $(BENCH_QUICK_DIR)
	for name in $(BENCHMARKS); do \
		$(PY) benchmarks/bench_$$name.py --quick --output $(BENCH_QUICK_DIR)/benchmarks.md \
			|| exit 1; \
	done
	@echo "wrote $(BENCH_QUICK_DIR)/benchmarks.md and $(BENCH_QUICK_DIR)/images/"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
