"""The documentation runs: every ```python block of README.md and docs/, and the tutorials.

A page's blocks run in order in one namespace, in a fresh process, in float64; a page that states
``<!-- docs-test: float32 -->`` runs a second time without ``jax_enable_x64`` (its blocks that
switch float64 on are skipped there, as a float32 user would skip them). A warning of
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
runner that the site build uses. The API reference must cover every public name (``__all__``, or
the re-exports of a package): a name missing from it fails here.
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
import json, sys, warnings
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for name, code, raises in blocks:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exec(compile(code, name, "exec"), namespace)
        except Exception as e:
            if not raises or type(e).__name__ != raises:
                raise
        else:
            if raises:
                raise AssertionError(f"{name}: the block should raise {raises}")
    for w in caught:
        kind = w.category.__name__
        if w.category.__module__.startswith("implicitdiff") and kind not in code:
            raise RuntimeError(f"{name}: a {kind} that the block does not show: {w.message}")
import jax.numpy as jnp
print("DOCS-TEST-DTYPE", jnp.zeros(1).dtype)
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


def _run_page(page: Path, float32: bool) -> subprocess.CompletedProcess:
    blocks = []
    for kind, where, code in _blocks(page):
        if kind == "no-run" or (float32 and (kind == "float64-only" or "jax_enable_x64" in code)):
            continue
        blocks.append((where, code, kind[7:] if kind.startswith("raises ") else None))
    env = dict(os.environ, MPLBACKEND="Agg", JAX_ENABLE_X64="0" if float32 else "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    for m in re.finditer(r"<!--\s*docs-test:\s*env\s+(\w+)=(\S+)\s*-->", page.read_text()):
        env[m.group(1)] = m.group(2)
    return subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(blocks),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )


def _pages_with_code() -> list[Path]:
    return [p for p in DOC_PAGES if any(k not in ("setup", "no-run") for k, _, _ in _blocks(p))]


def _float32_pages() -> list[Path]:
    return [p for p in _pages_with_code() if "<!-- docs-test: float32 -->" in p.read_text()]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", _pages_with_code(), ids=_id)
def test_doc_code_blocks_run_float64(page):
    proc = _run_page(page, float32=False)
    assert proc.returncode == 0, f"{_id(page)}: a code block failed\n{proc.stderr[-6000:]}"
    assert "DOCS-TEST-DTYPE float64" in proc.stdout


@pytest.mark.parametrize("page", _float32_pages(), ids=_id)
def test_doc_code_blocks_run_float32(page):
    proc = _run_page(page, float32=True)
    assert proc.returncode == 0, f"{_id(page)}: a code block failed\n{proc.stderr[-6000:]}"
    assert "DOCS-TEST-DTYPE float32" in proc.stdout


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


@pytest.mark.parametrize("script", sorted((ROOT / "docs" / "tutorials").glob("*.py")), ids=str)
def test_tutorial_runs_small(script, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", IMPLICITDIFF_TUTORIAL_SIZE="small")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "_tools" / "run_tutorial.py"), str(script), tmp_path],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
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
