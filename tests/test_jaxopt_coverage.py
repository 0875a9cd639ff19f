"""JAXopt 0.8.5's public API, name by name and option by option, has its counterpart here.

Three sweeps over the installed ``jaxopt`` (0.8.5, the `bench` extra), so that the list cannot
drift from the reference:

- every public name of ``jaxopt`` and of its public modules appears in
  docs/migrating_from_jaxopt.md (the table says what it is here, or why it is absent);
- every solver class of ``jaxopt`` exists in ``implicitdiff.solvers`` under the same name;
- every option (dataclass field) of each of those classes is either an option of ours with the
  same name, or is refused at construction with a ``TypeError`` that names the option and says
  what to use instead (never Python's bare "unexpected keyword argument").
"""

import ast
import dataclasses
import importlib
import inspect
import pathlib
import re
import types
import typing

import numpy as np
import pytest

from implicitdiff import solvers

jaxopt = pytest.importorskip("jaxopt")

MIGRATION = (pathlib.Path(__file__).parents[1] / "docs" / "migrating_from_jaxopt.md").read_text()

MODULES = [
    "",
    "projection",
    "prox",
    "loss",
    "tree_util",
    "linear_solve",
    "objective",
    "isotonic",
    "perturbations",
    "implicit_diff",
    "base",
    "loop",
    "cond",
]


def _public(module_name: str) -> list[str]:
    module = importlib.import_module("jaxopt" + (f".{module_name}" if module_name else ""))
    return sorted(
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    )


@pytest.mark.parametrize("module_name", MODULES, ids=lambda m: m or "jaxopt")
def test_every_public_name_is_in_the_migration_page(module_name):
    absent = [name for name in _public(module_name) if name not in MIGRATION]
    assert not absent, f"jaxopt.{module_name}: not in docs/migrating_from_jaxopt.md: {absent}"


CLASSES = sorted(
    name
    for name in dir(jaxopt)
    if inspect.isclass(getattr(jaxopt, name)) and dataclasses.is_dataclass(getattr(jaxopt, name))
)


@pytest.mark.parametrize("name", CLASSES)
def test_every_jaxopt_class_exists(name):
    assert hasattr(solvers, name), f"jaxopt.{name} has no implicitdiff.solvers.{name}"


def _options(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


@pytest.mark.parametrize("name", [n for n in CLASSES if hasattr(solvers, n)])
def test_every_jaxopt_option_is_taken_or_refused_by_name(name):
    ours = getattr(solvers, name)
    taken = _options(ours) if dataclasses.is_dataclass(ours) else set()
    unexplained = []
    for option in sorted(_options(getattr(jaxopt, name)) - taken):
        try:
            ours(**{option: None})
        except TypeError as error:
            message = str(error)
            if option in message and "unexpected keyword" not in message:
                continue  # refused, naming the option and the alternative
        except Exception:
            pass
        unexplained.append(option)
    assert not unexplained, f"{name}: JAXopt options neither taken nor refused: {unexplained}"


# --- Defaults, option names and state fields: the page's tables against both libraries. ---------

_CODE_WORDS = {
    word for span in re.findall(r"`([^`]+)`", MIGRATION) for word in re.findall(r"\w+", span)
}


def _section(title: str) -> str:
    """The text of the page's section ``## title`` (up to the next ``## ``)."""
    start = MIGRATION.index(f"\n## {title}\n")
    end = MIGRATION.find("\n## ", start + 1)
    return MIGRATION[start : end if end >= 0 else None]


def _table(title: str, columns: int) -> list[list[str]]:
    """The rows of the table of a section, each a list of its ``columns`` cells."""
    rows = []
    for line in _section(title).splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            assert len(cells) == columns, f"{title}: a row without {columns} cells: {line}"
            rows.append(cells)
    return rows[1:]  # without the header


def _code(cell: str) -> str:
    """The name in a cell written as `name`."""
    match = re.fullmatch(r"`(\w+)`", cell)
    assert match, f"expected one `name` in the cell {cell!r}"
    return match.group(1)


# JAXopt's OSQP is not a dataclass: it forwards its keyword arguments to a BoxOSQP, whose fields
# are therefore its options. Ours has its own names for some of them.
_OSQP_NAMES = {
    "rho_start": "rho",
    "momentum": "alpha",
    "stepsize_updates_frequency": "rho_update_frequency",
    "primal_infeasible_tol": "eps_primal_infeasible",
    "dual_infeasible_tol": "eps_dual_infeasible",
}
# Fields that JAXopt and this library both have under one name but for different things: their
# defaults are not comparable (the rows of the API table say what each is).
_OTHER_MEANING = {("EqualityConstrainedQP", "solve"), ("IterativeRefinement", "solve")}


def _jaxopt_defaults(name: str) -> dict:
    """{option: default} of JAXopt's class (required options left out)."""
    if name == "OSQP":  # BoxOSQP's defaults, then those of OSQP's own keywords
        box = {_OSQP_NAMES.get(k, k): v for k, v in _jaxopt_defaults("BoxOSQP").items()}
        own = inspect.signature(jaxopt.OSQP.__init__).parameters.values()
        return box | {p.name: p.default for p in own if p.default is not inspect.Parameter.empty}
    out = {}
    for f in dataclasses.fields(getattr(jaxopt, name)):
        if f.init and f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.init and f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _same_default(option: str, a, b) -> bool:
    if callable(a) and callable(b):  # prox_none and prox.none
        return getattr(a, "__name__", a).removeprefix("prox_") == getattr(b, "__name__", b)
    if option == "dtype" and a is np.float64 and b is None:
        return True  # the SciPy wrappers: None is float64
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _differing_defaults() -> dict[tuple[str, str], tuple]:
    out = {}
    for name in [*CLASSES, "OSQP"]:
        ours = {f.name: f.default for f in dataclasses.fields(getattr(solvers, name)) if f.init}
        for option, theirs in _jaxopt_defaults(name).items():
            if option in ours and (name, option) not in _OTHER_MEANING:
                if not _same_default(option, theirs, ours[option]):
                    out[name, option] = (theirs, ours[option])
    return out


def _value(cell: str):
    """A default as the table writes it: a Python literal in backticks, or free text."""
    try:
        return ast.literal_eval(cell.strip("`"))
    except (ValueError, SyntaxError):
        return cell


def test_every_differing_default_is_in_the_defaults_table():
    rows = {(_code(c), _code(o)): (j, h) for c, o, j, h, _ in _table("Defaults that differ", 5)}
    differing = _differing_defaults()
    missing = sorted(set(differing) - set(rows))
    assert not missing, f"defaults that differ from JAXopt's, not in the table: {missing}"
    stale = sorted(set(rows) - set(differing))
    assert not stale, f"rows of the defaults table whose defaults are the same: {stale}"
    for key, (theirs, ours) in differing.items():
        for cell, actual in zip(rows[key], (theirs, ours), strict=True):
            if isinstance(actual, (int, float, str, type(None))):  # not a function or type
                assert _same_default("", _value(cell), actual), (
                    f"{key}: the table says {cell}, the default is {actual!r}"
                )


@pytest.mark.parametrize("name", [*CLASSES, "OSQP"])
def test_every_jaxopt_option_name_is_in_the_page(name):
    if name == "OSQP":  # its keywords: its own and BoxOSQP's options
        options = set(_jaxopt_defaults(name)) | set(_OSQP_NAMES)
    else:
        options = _options(getattr(jaxopt, name))
    absent = sorted(o for o in options if o not in _CODE_WORDS)
    assert not absent, f"{name}: JAXopt options written nowhere in the page (in code): {absent}"


_JAXOPT_STATES = {  # where JAXopt's init_state has no annotation (or a wrong one)
    "BacktrackingLineSearch": "backtracking_linesearch.BacktrackingLineSearchState",
    "HagerZhangLineSearch": "hager_zhang_linesearch.HagerZhangLineSearchState",
    "ZoomLineSearch": "zoom_linesearch.ZoomLineSearchState",
    "BoxOSQP": "osqp.BoxOSQPState",
    "OSQP": "osqp.OSQPState",
    "IterativeRefinement": "iterative_refinement.IterativeRefinementState",
    "MirrorDescent": "mirror_descent.MirrorDescentState",
    "ScipyMinimize": "scipy_wrappers.ScipyMinimizeInfo",
    "ScipyBoundedMinimize": "scipy_wrappers.ScipyMinimizeInfo",
    "ScipyRootFinding": "scipy_wrappers.ScipyRootInfo",
    "ScipyLeastSquares": "scipy_wrappers.ScipyLeastSquaresInfo",
    "ScipyBoundedLeastSquares": "scipy_wrappers.ScipyLeastSquaresInfo",
}
_OUR_STATES = {  # where ours has no init_state
    "BacktrackingLineSearch": "linesearch.LineSearchState",
    "HagerZhangLineSearch": "linesearch.LineSearchState",
    "ZoomLineSearch": "linesearch.LineSearchState",
    "ScipyMinimize": "_scipy_common.ScipyState",
    "ScipyBoundedMinimize": "_scipy_common.ScipyState",
    "ScipyRootFinding": "_scipy_common.ScipyState",
    "ScipyLeastSquares": "_scipy_common.ScipyState",
    "ScipyBoundedLeastSquares": "_scipy_common.ScipyState",
}


def _state_type(package: str, table: dict, cls, name: str):
    if name in table:
        module, attr = table[name].rsplit(".", 1)
        return getattr(importlib.import_module(f"{package}.{module}"), attr)
    if not hasattr(cls, "init_state"):
        return None
    hint = typing.get_type_hints(cls.init_state).get("return")
    return hint if hint is not None and hasattr(hint, "_fields") else None


def test_state_types_are_found():
    # JAXopt's EqualityConstrainedQP and CvxpyQP return no state (None).
    names = [*CLASSES, "OSQP"]
    found = {n for n in names if _state_type("jaxopt._src", _JAXOPT_STATES, getattr(jaxopt, n), n)}
    assert found == set(names) - {"EqualityConstrainedQP", "CvxpyQP"}


@pytest.mark.parametrize("name", [*CLASSES, "OSQP"])
def test_every_jaxopt_state_field_we_lack_is_in_the_state_table(name):
    theirs = _state_type("jaxopt._src", _JAXOPT_STATES, getattr(jaxopt, name), name)
    if theirs is None:
        return  # JAXopt returns no state
    ours = _state_type("implicitdiff.solvers", _OUR_STATES, getattr(solvers, name), name)
    assert ours is not None, f"{name}: no state type found here"
    rows = {}
    for classes, fields, _ in _table("State fields", 3):
        for cls in re.findall(r"`(\w+)`", classes):
            rows.setdefault(cls, set()).update(re.findall(r"`(\w+)`", fields))
    lacking = [f for f in theirs._fields if f not in ours._fields]
    absent = [f for f in lacking if f not in rows.get(name, set())]
    assert not absent, f"{name}: JAXopt state fields missing here and not in the table: {absent}"


def test_osqp_takes_or_renames_every_option_jaxopt_passes_to_boxosqp():
    """JAXopt's OSQP is not a dataclass: it passes its keyword arguments to BoxOSQP. Each of
    BoxOSQP's options is taken by our OSQP, or refused naming our spelling."""
    unexplained = []
    for option in sorted(_options(jaxopt.BoxOSQP) - _options(solvers.OSQP)):
        try:
            solvers.OSQP(**{option: None})
        except TypeError as error:
            if option in str(error) and "pass " in str(error):
                continue
        except Exception:
            pass
        unexplained.append(option)
    assert not unexplained, f"OSQP: JAXopt options neither taken nor renamed: {unexplained}"
