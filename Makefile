# The README's two commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
CODE := $(wildcard src tests benchmarks examples docs/_tools docs/tutorials)

.PHONY: demo test lint format bench bench-quick clean docs docs-check

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

# `make docs` checks that every public docstring has its Args/Returns sections
# (docs/_tools/docstring_gaps.py --strict: it needs griffe, so it runs here and not in `make
# test`), then builds the site into site/ (mkdocs build --strict: a warning fails it), running the
# tutorials at full size; `make docs-check` opens it in headless Chromium (installed with apt if
# missing: root on Debian) and leaves screenshots in site-screenshots/. Their own venv, .venv-docs.
DOCS_VENV ?= .venv-docs
DOCS_PY := $(DOCS_VENV)/bin/python

$(DOCS_PY):
	$(PYTHON) -m venv $(DOCS_VENV)

$(DOCS_VENV)/.docs-deps: pyproject.toml | $(DOCS_PY)
	$(DOCS_PY) -m pip install --quiet --disable-pip-version-check -e ".[docs,examples]"
	touch $@

docs: $(DOCS_VENV)/.docs-deps
	$(DOCS_PY) docs/_tools/docstring_gaps.py --strict
	NO_MKDOCS_2_WARNING=1 $(DOCS_PY) -m mkdocs build --strict

docs-check: $(DOCS_VENV)/.docs-deps
	@test -f site/index.html || $(MAKE) docs
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		(echo "installing Debian's chromium (apt-get, needs root)" && \
		 apt-get update -qq && apt-get install -y -qq chromium) || \
		(echo "docs-check needs Chromium: apt-get install -y chromium" && exit 1)
	$(DOCS_PY) docs/_tools/docs_check.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
