"""The documentation runs: every ```python block of README.md and docs/, and the tutorials.

A page's blocks run in order in one fresh namespace, in float64; a page that states
``<!-- docs-test: float32 -->`` runs a second time without ``jax_enable_x64`` (its blocks that
switch float64 on are skipped there, as a float32 user would skip them). One process per mode
runs its pages in turn (x64 is process-wide), restoring after each page what a page may change
of the interpreter (environment, JAX configuration, warning filters, print options, figures), so
that a page sees nothing of the pages before it; a page whose ``env`` marker changes the
environment gets a process of its own. A failing block is reported with its page, its index and
its traceback. A warning of
implicitdiff (``SolverWarning``, ``BackwardSolveWarning``) fails the block unless the block names
it (as a page that shows a warning on purpose does). Markers, in HTML
comments that neither GitHub nor the site shows, on the line before a block:

- ``<!-- no-run: why -->``: the block is not run (a reason is required);
- ``<!-- docs-test: float64-only: why -->``: the block is skipped in the float32 run;
- ``<!-- docs-test: raises NAME -->``: the block must end by raising the exception NAME (a page
  that shows an error on purpose);
- ``<!-- docs-test: setup`` ... ``-->``: code run before the next block, for the names a
  fragment takes from its context (data, a loss) without showing them;

and anywhere in a page, ``<!-- docs-test: env NAME=VALUE -->`` sets an environment variable of
its process (say, a number of simulated devices).

The tutorials (docs/tutorials/*.py) run at ``IMPLICITDIFF_TUTORIAL_SIZE=small`` through the
runner that the site build uses (its ``run``, in the float64 process after the pages: each
tutorial switches float64 on itself). The API reference must cover every public name
(``__all__``, or the re-exports of a package): a name missing from it fails here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)

_DRIVER = r"""
import contextlib, copy, json, os, sys, traceback, warnings
import jax
import jax.numpy as jnp
import numpy as np

spec = json.load(sys.stdin)
results = {}


def save():
    with open(spec["results"], "w") as f:
        json.dump(results, f)


def run_page(blocks):
    namespace = {"__name__": "__main__"}
    for index, (name, code, raises) in enumerate(blocks):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                exec(compile(code, name, "exec"), namespace)
            except Exception as e:
                if not raises or type(e).__name__ != raises:
                    return index, name, traceback.format_exc()
            else:
                if raises:
                    return index, name, f"{name}: the block should raise {raises}"
        for w in caught:
            kind = w.category.__name__
            if w.category.__module__.startswith("implicitdiff") and kind not in code:
                return index, name, f"{name}: a {kind} that the block does not show: {w.message}"
    return None


@contextlib.contextmanager
def isolated(env):
    # What a page may change of the interpreter's state, restored after it: the environment,
    # JAX's configuration, warning filters, NumPy's print options, sys.path, the working
    # directory, matplotlib's figures. (The namespace is new for each page.)
    saved_env, saved_path, cwd = dict(os.environ), list(sys.path), os.getcwd()
    saved_config = dict(jax.config.values)
    saved_filters, saved_print = copy.copy(warnings.filters), np.get_printoptions()
    os.environ.update(env)
    try:
        yield
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:], warnings.filters[:] = saved_path, saved_filters
        os.chdir(cwd)
        np.set_printoptions(**saved_print)
        for name, value in saved_config.items():
            if jax.config.values.get(name) != value:
                jax.config.update(name, value)


for page, blocks in spec["pages"]:
    with isolated({}):
        failure = run_page(blocks)
        results[page] = {"failure": failure, "dtype": str(jnp.zeros(1).dtype)}
    save()
if spec["tutorials"]:
    sys.path.insert(0, spec["tools"])
    import run_tutorial

    for script, out_dir in spec["tutorials"]:
        with isolated({"IMPLICITDIFF_TUTORIAL_SIZE": "small"}):
            try:
                run_tutorial.run(run_tutorial.Path(script), run_tutorial.Path(out_dir))
                results[script] = {"failure": None}
            except Exception:
                results[script] = {"failure": (0, script, traceback.format_exc())}
        save()
"""


def _markers(before: str) -> list[str]:
    """The HTML comments right before a block (only blank lines between them), innermost last."""
    found = []
    before = before.rstrip()
    while before.endswith("-->"):
        start = before.rfind("<!--")
        if start < 0:
            break
        found.insert(0, before[start + 4 : -3])
        before = before[:start].rstrip()
    return found


def _blocks(page: Path) -> list[tuple[str, str, str]]:
    """(kind, location, code) for each block of a page: kind is "run", "float64-only", "setup",
    "no-run" (code is then the reason) or "raises NAME"."""
    text = page.read_text()
    found = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        where = f"{page.relative_to(ROOT)}:{line}"
        kind, code = "run", m.group(1)
        for marker in _markers(text[: m.start()]):
            head, _, rest = marker.strip().partition("\n")
            if head.strip() == "docs-test: setup":
                found.append(("setup", where + " (setup)", rest))
            elif head.startswith("no-run:"):
                kind, code = "no-run", head[len("no-run:") :].strip()
            elif head.startswith("docs-test: float64-only:"):
                kind = "float64-only"
            elif head.startswith("docs-test: raises "):
                kind = "raises " + head.split()[-1]
        found.append((kind, where, code))
    return found


def _page_blocks(page: Path, float32: bool) -> list[tuple[str, str, str | None]]:
    """(location, code, exception it must raise) of each block a mode runs, in order."""
    blocks = []
    for kind, where, code in _blocks(page):
        if kind == "no-run" or (float32 and (kind == "float64-only" or "jax_enable_x64" in code)):
            continue
        blocks.append((where, code, kind[7:] if kind.startswith("raises ") else None))
    return blocks


def _page_env(page: Path) -> dict[str, str]:
    return dict(re.findall(r"<!--\s*docs-test:\s*env\s+(\w+)=(\S+)\s*-->", page.read_text()))


def _run_mode(float32: bool, tutorials: list[tuple[Path, Path]], work: Path) -> dict:
    """Run every page of a mode, and the given tutorials: one process per distinct environment.

    JAX's x64 flag and XLA_FLAGS are read once per process, so each mode, and each page whose
    ``env`` marker changes the environment, gets its own interpreter; the other pages share
    one, each in a fresh namespace with the interpreter's state restored after it (see the
    driver). Returns {page or script: {"failure": (block index, location, traceback) | None,
    "dtype": ...}}; a page missing from it crashed the process ("stderr" holds its end).
    """
    base = dict(os.environ, MPLBACKEND="Agg", JAX_ENABLE_X64="0" if float32 else "1")
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), base.get("PYTHONPATH", "")])
    pages = _float32_pages() if float32 else _pages_with_code()
    groups: dict[tuple, list[Path]] = {}
    for page in pages:
        changes = {k: v for k, v in _page_env(page).items() if base.get(k) != v}
        groups.setdefault(tuple(sorted(changes.items())), []).append(page)
    results = {}
    for i, (changes, group) in enumerate(sorted(groups.items(), key=lambda kv: len(kv[0]))):
        spec = {
            "pages": [(_id(page), _page_blocks(page, float32)) for page in group],
            "tutorials": [(str(s), str(out)) for s, out in tutorials] if i == 0 else [],
            "tools": str(ROOT / "docs" / "_tools"),
            "results": str(work / f"results{i}.json"),
        }
        proc = subprocess.run(
            [sys.executable, "-c", _DRIVER],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            env={**base, **dict(changes)},
            cwd=ROOT,
            timeout=1800,
        )
        path = Path(spec["results"])
        done = json.loads(path.read_text()) if path.exists() else {}
        for name in [p for p, _ in spec["pages"]] + [s for s, _ in spec["tutorials"]]:
            results[name] = done.get(name, {"failure": None, "crashed": True})
            results[name]["stderr"] = proc.stderr[-6000:]
    return results


@pytest.fixture(scope="module")
def float64_run(tmp_path_factory) -> dict:
    """Every page in float64, and the tutorials (which switch float64 on themselves)."""
    tutorials = [(s, tmp_path_factory.mktemp(s.stem)) for s in TUTORIALS]
    results = _run_mode(False, tutorials, tmp_path_factory.mktemp("float64"))
    for script, out in tutorials:
        results[str(script)]["out"] = out
    return results


@pytest.fixture(scope="module")
def float32_run(tmp_path_factory) -> dict:
    return _run_mode(True, [], tmp_path_factory.mktemp("float32"))


def _check(results: dict, name: str) -> dict:
    result = results[name]
    assert not result.get("crashed"), f"{name}: the process ended early\n{result['stderr']}"
    if result["failure"] is not None:
        index, where, trace = result["failure"]
        pytest.fail(f"{name}: code block {index} ({where}) failed\n{trace[-6000:]}")
    return result


def _pages_with_code() -> list[Path]:
    return [p for p in DOC_PAGES if any(k not in ("setup", "no-run") for k, _, _ in _blocks(p))]


def _float32_pages() -> list[Path]:
    return [p for p in _pages_with_code() if "<!-- docs-test: float32 -->" in p.read_text()]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", _pages_with_code(), ids=_id)
def test_doc_code_blocks_run_float64(page, float64_run):
    assert _check(float64_run, _id(page))["dtype"] == "float64"


@pytest.mark.parametrize("page", _float32_pages(), ids=_id)
def test_doc_code_blocks_run_float32(page, float32_run):
    assert _check(float32_run, _id(page))["dtype"] == "float32"


def test_doc_markers_are_well_formed():
    """Every no-run block says why; README and the getting-started page claim float32."""
    for page in DOC_PAGES:
        for kind, where, reason in _blocks(page):
            if kind == "no-run":
                assert len(reason) >= 10, f"{where}: a no-run block needs a reason"
    pages = {_id(p) for p in _float32_pages()}
    assert {"README.md", "docs/getting_started.md"} <= pages


def test_block_parser_finds_markers(tmp_path):
    """The parser sees run, setup and no-run blocks where they are (a check of the checker)."""
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\na = 1\n```\n\n<!-- docs-test: setup\nb = 2\n-->\n```python\n"
        "c = a + b\n```\n\n<!-- no-run: needs eight real devices -->\n```python\nboom\n```\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        kinds = [(k, c.strip()) for k, _, c in _blocks(page)]
    finally:
        ROOT = saved
    assert kinds == [
        ("run", "a = 1"),
        ("setup", "b = 2"),
        ("run", "c = a + b"),
        ("no-run", "needs eight real devices"),
    ]


TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))


@pytest.mark.parametrize("script", TUTORIALS, ids=str)
def test_tutorial_runs_small(script, float64_run):
    result = _check(float64_run, str(script))
    tmp_path = result["out"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["doc"].strip(), "a tutorial opens with a docstring: its title and introduction"
    assert any(c["output"].strip() for c in result["cells"])
    assert any(c["figures"] for c in result["cells"]), "each tutorial draws at least one figure"
    for cell in result["cells"]:
        for name in cell["figures"]:
            assert (tmp_path / name).stat().st_size > 1000


def _public_names(module_path: Path) -> list[str]:
    """``__all__`` of a module, or the ``from x import a as a`` re-exports of a package."""
    tree = ast.parse(module_path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return [
        a.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for a in node.names
        if a.asname == a.name and not a.name.startswith("_")
    ]


API_MODULES = [
    "linear_solve",
    "optimality",
    "projections",
    "prox",
    "losses",
    "solvers",
    "tree",
    "diagnostics",
    "bilevel",
    "isotonic",
    "perturbations",
    "objective",
]


@pytest.mark.parametrize("module", API_MODULES)
def test_api_reference_page_per_public_module(module):
    """Each public module has a page whose ``:::`` directive renders it whole (all of its
    public names, read from the source by mkdocstrings when the site is built)."""
    page = ROOT / "docs" / "api" / f"{module}.md"
    assert page.exists(), f"docs/api/{module}.md is missing"
    assert f"::: implicitdiff.{module}\n" in page.read_text()
    assert "members:" not in page.read_text(), "a module page renders every public member"
    src = ROOT / "src" / "implicitdiff" / module
    path = src / "__init__.py" if src.is_dir() else src.with_suffix(".py")
    assert _public_names(path), f"implicitdiff.{module} declares no public names"


def test_api_reference_top_level_lists_the_engine():
    """The top-level page lists each public name of implicitdiff that is not a module or a
    solver (the solvers have their page)."""
    text = (ROOT / "docs" / "api" / "implicitdiff.md").read_text()
    listed = set(re.findall(r"^\s+- (\w+)$", text, re.M))
    solvers = set(_public_names(ROOT / "src" / "implicitdiff" / "solvers" / "__init__.py"))
    top = set(_public_names(ROOT / "src" / "implicitdiff" / "__init__.py"))
    expected = {n for n in top - solvers - set(API_MODULES)}
    assert expected == listed, f"missing {expected - listed}, extra {listed - expected}"
