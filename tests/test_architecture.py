"""The layers of the package (docs/architecture.md): imports only go downward, with no cycle.

Every ``import`` of an ``implicitdiff`` module anywhere in a source file (top level or inside a
function) is read from the syntax tree. A module may import modules of its own layer or below;
importing a submodule also runs its package's ``__init__``, so that counts as an import of the
package too. No module imports another module's private names (``from m import _x``).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "implicitdiff"

# Layer of each module, by longest matching dotted prefix. Keep in step with docs/architecture.md.
LAYERS = {
    # 0. foundations: pytree arithmetic, argument checks, shared types
    "implicitdiff.tree": 0,
    "implicitdiff._checks": 0,
    "implicitdiff._args": 0,
    "implicitdiff._typing": 0,
    "implicitdiff._loop": 0,
    "implicitdiff._summary": 0,
    "implicitdiff._real_pairs": 0,
    "implicitdiff._optimizer": 0,
    # 1. numerical kernels: linear algebra, line searches
    "implicitdiff.linear_solve": 1,
    "implicitdiff._linesearch": 1,
    "implicitdiff._linear_solve_more": 1,
    "implicitdiff._gmres": 1,
    "implicitdiff._hager_zhang": 1,
    # 2. the engine
    "implicitdiff.implicit": 2,
    "implicitdiff._backward_check": 2,
    "implicitdiff._condition": 2,
    "implicitdiff._support": 2,
    # 3. operators of the catalog: projections onto simple sets, prox, losses
    "implicitdiff._projection_common": 3,
    "implicitdiff._projection_affine": 3,
    "implicitdiff._projection_cones": 3,
    "implicitdiff._projection_ops": 3,
    "implicitdiff.prox": 3,
    "implicitdiff.losses": 3,
    "implicitdiff._losses_scalar": 3,
    "implicitdiff.isotonic": 3,
    "implicitdiff.perturbations": 3,
    "implicitdiff.objective": 3,
    # 4. optimality conditions
    "implicitdiff.optimality": 4,
    # 5. solvers
    "implicitdiff.solvers": 5,
    # 6. operators that need a solver, diagnostics
    "implicitdiff.projections": 6,
    "implicitdiff.diagnostics": 6,
    # 7. applications
    "implicitdiff.bilevel": 7,
    "implicitdiff.experiments": 8,
    "implicitdiff": 9,  # the public face (__init__, __main__)
    "implicitdiff.__main__": 9,
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    candidates = [
        p for p in LAYERS if module == p or (p != "implicitdiff" and module.startswith(p + "."))
    ]
    if not candidates:
        raise AssertionError(f"{module} has no layer: add it to LAYERS and docs/architecture.md")
    return LAYERS[max(candidates, key=len)]


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for each implicitdiff import."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "implicitdiff":
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "implicitdiff":
                continue
            names = []
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:  # `from package import module`
                    found.append((sub, [], node.lineno))
                else:
                    names.append(alias.name)
            if names:
                found.append((node.module, names, node.lineno))
    return found


def _packages_run(target: str) -> list[str]:
    """The modules that importing ``target`` runs: the target and every package above it."""
    parts = target.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES]


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module):
    here = _layer(module)
    for target, _, line in _imports(module):
        for run in _packages_run(target):
            if run == "implicitdiff" or module.startswith(run + ".") or run == module:
                continue  # the root package, or this module's own package
            assert _layer(run) <= here, (
                f"{module} (layer {here}) imports {target} at line {line}, which runs {run} "
                f"(layer {_layer(run)}): an upward import"
            )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    for target, names, line in _imports(module):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{module} imports private names {private} of {target} (line {line})"


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = [*path[path.index(t) :], t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checks_catch_an_upward_import(tmp_path):
    """The rules above are live: a planted upward import and a planted cycle are reported."""
    global MODULES
    saved = MODULES
    low = tmp_path / "tree.py"
    low.write_text("from implicitdiff import solvers\n")
    MODULES = {**saved, "implicitdiff.tree": low}
    try:
        with pytest.raises(AssertionError, match="upward import"):
            test_imports_go_down("implicitdiff.tree")
        with pytest.raises(AssertionError, match="import cycle"):
            test_no_import_cycle()
    finally:
        MODULES = saved
