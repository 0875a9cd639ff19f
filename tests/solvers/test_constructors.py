"""Constructor conventions: a solver's own fields first positionally, in JAXopt 0.8.5's order;
the settings every solver shares (maxiter, tol, implicit_diff, ...) keyword-only."""

import dataclasses
import inspect
import types

import pytest

from implicitdiff import solvers
from implicitdiff.solvers import _base, linesearch

jaxopt = pytest.importorskip("jaxopt")

SHARED = {
    "maxiter",
    "tol",
    "implicit_diff",
    "solve",
    "unroll_checkpoint",
    "jit",
    "on_failure",
    "backward_on_failure",
    "verbose",
    "implicit_diff_solve",
    "unroll",
}

CONCRETE = sorted(
    name
    for name, value in vars(solvers).items()
    if inspect.isclass(value)
    and issubclass(value, _base.DifferentiableRun)
    and not inspect.isabstract(value)
)
IN_JAXOPT = [name for name in CONCRETE if hasattr(jaxopt, name)]


def _positional(cls) -> list[str]:
    return [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


METHODS = {
    "ScipyMinimize": "BFGS",
    "ScipyBoundedMinimize": "L-BFGS-B",
    "ScipyRootFinding": "hybr",
    "ScipyLeastSquares": "trf",
    "ScipyBoundedLeastSquares": "trf",
}


def f(x, *args):
    return x


# What some solvers need besides their first field to be valid.
EXTRA = {
    "Bisection": {"lower": 0.0, "upper": 1.0},
    "BlockCoordinateDescent": {"block_prox": f},
    "ProjectedGradient": {"projection": f},
    "OptaxSolver": {"opt": types.SimpleNamespace(init=f, update=f)},
}


@pytest.mark.parametrize("name", CONCRETE)
def test_shared_settings_are_keyword_only(name):
    parameters = inspect.signature(getattr(solvers, name)).parameters
    shared = SHARED & set(parameters)
    assert {"implicit_diff", "solve", "jit", "on_failure", "backward_on_failure"} <= shared
    for setting in shared:
        assert parameters[setting].kind is inspect.Parameter.KEYWORD_ONLY, setting


@pytest.mark.parametrize("name", IN_JAXOPT)
def test_positional_order_is_a_prefix_of_jaxopts(name):
    ours = _positional(getattr(solvers, name))
    theirs = _positional(getattr(jaxopt, name))
    assert ours == theirs[: len(ours)]
    # Where the order stops, JAXopt goes on with a shared setting or an option this class
    # does not have (so a JAXopt call passing more positionally fails loudly here).
    if len(ours) < len(theirs):
        parameters = inspect.signature(getattr(solvers, name)).parameters
        following = theirs[len(ours)]
        assert following in SHARED or following not in parameters


# What a solver takes first if not a function: a wrapper takes the solver it wraps.
FIRST = {"AndersonWrapper": solvers.GradientDescent(f)}


@pytest.mark.parametrize("name", IN_JAXOPT)
def test_first_positional_argument_sets_the_same_field_as_jaxopt(name):
    ours, theirs = getattr(solvers, name), getattr(jaxopt, name)
    value = FIRST.get(name, f)
    try:
        (first,) = inspect.signature(theirs).bind_partial(value).arguments
    except TypeError:  # JAXopt's class takes keywords only (OSQP)
        first = None
    if not _positional(ours):
        # JAXopt's first is a shared setting (BoxCDQP's maxiter), keyword-only here, or JAXopt
        # takes no positional argument either: a loud TypeError.
        assert first is None or first in SHARED
        with pytest.raises(TypeError):
            ours(f)
        return
    assert list(inspect.signature(ours).bind_partial(value).arguments) == [first]
    if first == "method":  # the SciPy wrappers: method first, the function by keyword
        parameters = inspect.signature(ours).parameters
        function = next(n for n in ("fun", "optimality_fun", "residual_fun") if n in parameters)
        solver = ours(METHODS[name], **{function: f})
        assert solver.method == METHODS[name]
        with pytest.raises(TypeError, match=rf"{function}=\.\.\.\)"):
            ours(f)  # the function passed where JAXopt too takes the method
    else:
        assert getattr(ours(value, **EXTRA.get(name, {})), first) is value


def test_solvers_outside_jaxopt_take_their_functions_first():
    assert solvers.Newton(f).fun is f
    solver = solvers.HostSolver(f, f)
    assert solver.solve_fn is f and solver.optimality_fun is f
    with pytest.raises(TypeError):
        solvers.OSQP(100)


# Integer options given a bool (True is an int to Python): refused by every solver that has
# them, with the option's name, not read as 1.
WITH_MAXLS = [
    name
    for name in CONCRETE
    if "maxls" in inspect.signature(getattr(solvers, name)).parameters and name not in METHODS
]


@pytest.mark.parametrize("name", WITH_MAXLS)
def test_maxls_true_is_refused_family(name):
    assert len(WITH_MAXLS) >= 8, WITH_MAXLS  # the family is found
    cls = getattr(solvers, name)
    first = FIRST.get(name, f)
    cls(first, **EXTRA.get(name, {}))  # valid without it
    with pytest.raises(ValueError, match="maxls"):
        cls(first, maxls=True, **EXTRA.get(name, {}))


# Every numeric option of every solver and line search (a field annotated int or float, maybe
# | None), given a value of the wrong kind: a ValueError naming the option, never a bare
# TypeError from a comparison, a bool read as 1, or a NaN taken as a setting.
def _numeric_options(cls) -> list[str]:
    return [
        field.name
        for field in dataclasses.fields(cls)
        if field.init and field.type in ("int", "float", "int | None", "float | None")
    ]


def _build(name, **options):
    cls = getattr(solvers, name) if hasattr(solvers, name) else getattr(linesearch, name)
    if name in ("OSQP", "BoxCDQP"):  # keyword-only
        return cls(**options)
    if name in METHODS:
        return cls(METHODS[name], fun=f, **options)
    return cls(FIRST.get(name, f), **{**EXTRA.get(name, {}), **options})


LINE_SEARCHES = ["BacktrackingLineSearch", "ZoomLineSearch", "HagerZhangLineSearch"]
NUMERIC_OPTIONS = [
    (name, option)
    for name in [n for n in CONCRETE if n not in METHODS] + LINE_SEARCHES
    for option in _numeric_options(
        getattr(solvers, name) if hasattr(solvers, name) else getattr(linesearch, name)
    )
]


def test_the_numeric_options_family_is_found():
    found = {option for _, option in NUMERIC_OPTIONS}
    assert len(NUMERIC_OPTIONS) >= 120, len(NUMERIC_OPTIONS)
    for option in ("maxiter", "tol", "history_size", "max_stepsize", "rho", "c1", "maxls"):
        assert option in found, option


@pytest.mark.parametrize(("name", "option"), NUMERIC_OPTIONS)
@pytest.mark.parametrize("value", [True, "1", [1.0], float("nan"), None], ids=repr)
def test_a_numeric_option_of_the_wrong_kind_is_refused_by_name(name, option, value):
    cls = getattr(solvers, name) if hasattr(solvers, name) else getattr(linesearch, name)
    field = next(field for field in dataclasses.fields(cls) if field.name == option)
    if value is None and "None" in field.type:
        _build(name, **{option: None})  # None is this option's default meaning
        return
    if isinstance(value, float) and field.type.startswith("int"):
        value = 1.5  # NaN is a float: an int option refuses any float
    with pytest.raises(ValueError, match=rf"{name}: {option} must be"):
        _build(name, **{option: value})


def test_numeric_options_take_numpy_and_jax_scalars():
    import jax.numpy as jnp
    import numpy as np

    solver = solvers.ProximalGradient(f, decrease_factor=np.float32(0.5), tol=np.float64(1e-4))
    assert solver.decrease_factor == 0.5
    assert solvers.LBFGSB(f, max_stepsize=jnp.asarray(2.0)).max_stepsize == 2.0
    with pytest.raises(ValueError, match="LBFGSB: max_stepsize must be a real number, got None"):
        solvers.LBFGSB(f, max_stepsize=None)
