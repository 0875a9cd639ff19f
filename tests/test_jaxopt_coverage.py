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

import dataclasses
import importlib
import inspect
import pathlib
import types

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
