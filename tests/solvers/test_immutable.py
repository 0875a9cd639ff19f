"""Solvers are frozen dataclasses: a setting cannot change behind a compiled ``run``.

Every solver class exported by ``implicitdiff.solvers`` is swept: setting a field raises,
``dataclasses.replace`` makes a new solver that runs with its own settings and functions (value
and derivative against closed forms) while the original keeps its own, equality and hash follow
the fields, and the cache of compiled programs stays bounded when each run brings a new function.
"""

import copy
import dataclasses
import functools
import gc
import inspect
import pickle
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PlainSGD

from implicitdiff import linear_solve, projections, prox, solvers
from implicitdiff.solvers import _base, _compile_cache

A = jnp.array([0.2, 0.3, 0.5])  # sums to 1 (mirror descent on the simplex)
BOUNDS = (-10.0, 10.0)

# The programs these tests build are compiled with LLVM's optimizations off (XLA's own HLO
# passes all run): about a quarter less compilation time, the same values to rounding.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _minimized(c):
    """f(x, a) = Σ ½(x − c a)² + ¼(x − c a)⁴: x* = c a, ∂x*/∂a = c I."""
    return lambda x, a: jnp.sum(0.5 * (x - c * a) ** 2 + 0.25 * (x - c * a) ** 4)


def _root(c):
    """G(x, a) = (x − c a) + 0.1 (x − c a)³: the root x* = c a."""
    return lambda x, a: (x - c * a) + 0.1 * (x - c * a) ** 3


def _fixed_point(c):
    """T(x, a) = ½ x + ½ c a: the fixed point x* = c a."""
    return lambda x, a: 0.5 * x + 0.5 * c * a


def _host_solve(c):
    return lambda x0, a: c * np.asarray(a)


def _identity_jacobian(c):
    return c * jnp.eye(3)


def _simplex_jacobian(c):
    """x* = c a − (c Σa − 1)/3 (all entries positive for c ∈ {1, 2}): ∂x*/∂a = c (I − 11ᵀ/3)."""
    return c * (jnp.eye(3) - jnp.ones((3, 3)) / 3)


def _simplex_solution(c, a):
    return c * a - (c * jnp.sum(a) - 1.0) / 3


@dataclasses.dataclass(frozen=True)
class Case:
    """A solver on a problem whose solution is x*(a) = c a (c = 1; c = 2 after ``swap``)."""

    make: object  # c -> solver
    solve: object  # (solver, a) -> (params, state)
    swap: tuple = ()  # the function fields that ``make(2)`` changes
    solution: object = staticmethod(lambda c, a: c * a)
    jacobian: object = staticmethod(_identity_jacobian)
    setting: tuple = ("maxiter", 2)  # a replacement that must show in state.iter_num


def _plain(solver, a):
    return solver.run(jnp.zeros(3), a)


def _quiet(**options):
    return {"on_failure": "ignore", **options}


CASES = {
    "GradientDescent": Case(
        lambda c: solvers.GradientDescent(fun=_minimized(c), tol=1e-10, **_quiet()),
        _plain,
        ("fun",),
    ),
    "LBFGS": Case(
        lambda c: solvers.LBFGS(fun=_minimized(c), tol=1e-10, **_quiet()), _plain, ("fun",)
    ),
    "BFGS": Case(
        lambda c: solvers.BFGS(fun=_minimized(c), tol=1e-10, **_quiet()), _plain, ("fun",)
    ),
    "NonlinearCG": Case(
        lambda c: solvers.NonlinearCG(fun=_minimized(c), tol=1e-10, **_quiet()), _plain, ("fun",)
    ),
    "Newton": Case(
        lambda c: solvers.Newton(fun=_minimized(c), tol=1e-10, **_quiet()), _plain, ("fun",)
    ),
    "LBFGSB": Case(
        lambda c: solvers.LBFGSB(fun=_minimized(c), tol=1e-10, **_quiet()),
        lambda s, a: s.run(jnp.zeros(3), BOUNDS, a),
        ("fun",),
    ),
    "ProximalGradient": Case(
        lambda c: solvers.ProximalGradient(fun=_minimized(c), tol=1e-10, **_quiet()),
        lambda s, a: s.run(jnp.zeros(3), None, a),
        ("fun",),
    ),
    "ProjectedGradient": Case(
        lambda c: solvers.ProjectedGradient(
            fun=_minimized(c), projection=projections.box, tol=1e-10, **_quiet()
        ),
        lambda s, a: s.run(jnp.zeros(3), BOUNDS, a),
        ("fun",),
    ),
    "MirrorDescent": Case(
        lambda c: solvers.MirrorDescent(
            fun=lambda p, a, c=c: 0.5 * jnp.sum((p - c * a) ** 2), tol=1e-12, **_quiet()
        ),
        lambda s, a: s.run(jnp.ones(3) / 3, None, a),
        ("fun",),
        solution=_simplex_solution,
        jacobian=_simplex_jacobian,
    ),
    "BlockCoordinateDescent": Case(
        lambda c: solvers.BlockCoordinateDescent(
            fun=lambda x, a, c=c: _minimized(c)(x[:, 0], a),
            block_prox=_block_none,
            tol=1e-10,
            **_quiet(),
        ),
        lambda s, a: _column(s.run(jnp.zeros((3, 1)), None, a)),
        ("fun",),
    ),
    "FixedPointIteration": Case(
        lambda c: solvers.FixedPointIteration(
            fixed_point_fun=_fixed_point(c), tol=1e-12, **_quiet()
        ),
        _plain,
        ("fixed_point_fun",),
    ),
    "AndersonAcceleration": Case(
        lambda c: solvers.AndersonAcceleration(
            fixed_point_fun=lambda x, a, c=c: _fixed_point(c)(x, a) + 0.05 * jnp.sin(x - c * a),
            tol=1e-12,
            **_quiet(),
        ),
        _plain,
        ("fixed_point_fun",),
    ),
    "AndersonWrapper": Case(
        lambda c: solvers.AndersonWrapper(
            solvers.GradientDescent(fun=_minimized(c), stepsize=0.3, tol=1e-10), **_quiet()
        ),
        _plain,
        ("solver",),
    ),
    "Broyden": Case(
        lambda c: solvers.Broyden(fun=_root(c), tol=1e-12, **_quiet()), _plain, ("fun",)
    ),
    "Bisection": Case(
        lambda c: solvers.Bisection(
            optimality_fun=lambda x, a, c=c: jnp.sum(_root(c)(x, a)),
            lower=-10.0,
            upper=10.0,
            tol=1e-12,
            **_quiet(),
        ),
        lambda s, a: s.run(None, a[:1]),
        ("optimality_fun",),
        solution=lambda c, a: c * a[0],
        jacobian=lambda c: jnp.array([c, 0.0, 0.0]),
    ),
    "GaussNewton": Case(
        lambda c: solvers.GaussNewton(residual_fun=_root(c), tol=1e-12, **_quiet()),
        _plain,
        ("residual_fun",),
    ),
    "LevenbergMarquardt": Case(
        lambda c: solvers.LevenbergMarquardt(residual_fun=_root(c), tol=1e-12, **_quiet()),
        _plain,
        ("residual_fun",),
    ),
    "EqualityConstrainedQP": Case(
        # min ½ x·Q x − aᵀx with Q x = q x / c: x* = c a.
        lambda c: solvers.EqualityConstrainedQP(matvec_Q=lambda q, x, c=c: q * x / c),
        lambda s, a: _primal(s.run(None, (1.0, -a))),
        ("matvec_Q",),
        setting=("tol", 0.5),
    ),
    "BoxCDQP": Case(
        lambda c: solvers.BoxCDQP(tol=1e-12, **_quiet()),
        lambda s, a: s.run(None, (jnp.eye(3) + 0.5, -(jnp.eye(3) + 0.5) @ a), BOUNDS),
    ),
    "OSQP": Case(
        lambda c: solvers.OSQP(tol=1e-10, **_quiet()),
        lambda s, a: _primal(s.run(None, (jnp.eye(3) + 0.5, -(jnp.eye(3) + 0.5) @ a))),
    ),
    "BoxOSQP": Case(
        lambda c: solvers.BoxOSQP(tol=1e-10, **_quiet()),
        lambda s, a: _box_primal(
            s.run(None, (jnp.eye(3) + 0.5, -(jnp.eye(3) + 0.5) @ a), jnp.eye(3), BOX_ROWS)
        ),
    ),
    "CvxpyQP": Case(
        lambda c: solvers.CvxpyQP("CLARABEL", **_quiet()),
        lambda s, a: _primal(s.run(None, (jnp.eye(3) + 0.5, -(jnp.eye(3) + 0.5) @ a))),
        setting=None,
    ),
    "ScipyMinimize": Case(
        lambda c: solvers.ScipyMinimize(fun=_minimized(c), tol=1e-12, **_quiet()),
        _plain,
        ("fun",),
        setting=("options", {"maxiter": 2}),
    ),
    "ScipyBoundedMinimize": Case(
        lambda c: solvers.ScipyBoundedMinimize(fun=_minimized(c), tol=1e-12, **_quiet()),
        lambda s, a: s.run(jnp.zeros(3), BOUNDS, a),
        ("fun",),
        setting=("options", {"maxiter": 2}),
    ),
    "ScipyRootFinding": Case(
        lambda c: solvers.ScipyRootFinding(optimality_fun=_root(c), tol=1e-12, **_quiet()),
        _plain,
        ("optimality_fun",),
        setting=None,
    ),
    "ScipyLeastSquares": Case(
        lambda c: solvers.ScipyLeastSquares(residual_fun=_root(c), tol=1e-12, **_quiet()),
        _plain,
        ("residual_fun",),
        setting=("options", {"max_nfev": 2}),
    ),
    "ScipyBoundedLeastSquares": Case(
        lambda c: solvers.ScipyBoundedLeastSquares(residual_fun=_root(c), tol=1e-12, **_quiet()),
        lambda s, a: s.run(jnp.zeros(3), BOUNDS, a),
        ("residual_fun",),
        setting=("options", {"max_nfev": 2}),
    ),
    "IterativeRefinement": Case(
        # A x / c = a by refinement around an inner solve of A + ½ I: x* = c a.
        lambda c: solvers.IterativeRefinement(
            lambda A, x, c=c: A * x / c,
            inner_solve=functools.partial(linear_solve.lu, ridge=0.5),
            tol=1e-12,
            maxiter=100,
            **_quiet(),
        ),
        lambda s, a: s.run(None, jnp.ones(3), a),
        ("matvec_A",),
    ),
    "OptaxSolver": Case(
        lambda c: solvers.OptaxSolver(_minimized(c), PlainSGD(0.2), tol=1e-10, **_quiet()),
        _plain,
        ("fun",),
    ),
    "PolyakSGD": Case(
        lambda c: solvers.PolyakSGD(fun=_minimized(c), tol=1e-10, **_quiet()), _plain, ("fun",)
    ),
    "ArmijoSGD": Case(
        lambda c: solvers.ArmijoSGD(fun=_minimized(c), tol=1e-10, **_quiet()), _plain, ("fun",)
    ),
    "HostSolver": Case(
        lambda c: solvers.HostSolver(solve_fn=_host_solve(c), optimality_fun=_root(c)),
        _plain,
        ("solve_fn", "optimality_fun"),
        setting=None,
    ),
}


def _block_none(x, hyperparams, scaling=1.0):
    return x


def _column(step):
    params, state = step
    return params[:, 0], state


BOX_ROWS = (jnp.full(3, -10.0), jnp.full(3, 10.0))


def _box_primal(step):
    params, state = step
    return params.primal[0], state


def _primal(step):
    params, state = step
    return params.primal, state


SOLVER_CLASSES = sorted(
    name
    for name, value in vars(solvers).items()
    if inspect.isclass(value) and issubclass(value, _base.DifferentiableRun)
)
CONCRETE = [name for name in SOLVER_CLASSES if not inspect.isabstract(getattr(solvers, name))]


def test_every_exported_solver_is_swept():
    assert set(CONCRETE) == set(CASES)
    assert "IterativeSolver" in SOLVER_CLASSES


@pytest.mark.parametrize("name", SOLVER_CLASSES)
def test_solver_classes_are_frozen_dataclasses(name):
    cls = getattr(solvers, name)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


@pytest.mark.parametrize("name", CONCRETE)
def test_setting_any_field_raises(name):
    solver = CASES[name].make(1)
    for field in dataclasses.fields(solver):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(solver, field.name, getattr(solver, field.name))
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(solver, field.name)


@pytest.mark.parametrize("name", CONCRETE)
def test_equality_and_hash_follow_the_fields(name):
    solver = CASES[name].make(1)
    same = dataclasses.replace(solver)
    assert same is not solver and same == solver and hash(same) == hash(solver)
    assert len({solver, same}) == 1
    other = dataclasses.replace(solver, jit=not solver.jit)
    assert other != solver
    if CASES[name].swap:
        assert CASES[name].make(2) != solver


def test_equality_compares_dict_fields_by_value():
    one = solvers.ScipyMinimize(fun=_minimized(1), options={"maxiter": 5, "disp": False})
    two = solvers.ScipyMinimize(fun=one.fun, options={"disp": False, "maxiter": 5})
    assert one == two and hash(one) == hash(two)
    assert one != dataclasses.replace(two, options={"maxiter": 6, "disp": False})


@pytest.mark.parametrize("name", CONCRETE)
def test_replace_runs_with_its_own_settings(name):
    case = CASES[name]
    if case.setting is None:
        pytest.skip(f"{name} has no setting that shows in its state")
    solver = case.make(1)
    field, value = case.setting
    changed = dataclasses.replace(solver, **{field: value})

    # The three runs (the original, the replacement, the original again) are traced in this
    # order into one program: each ``run`` looks its compiled program up in the library's cache
    # by the solver's settings, so a replacement that reused the original's program (or the
    # reverse) shows in the iteration counts.
    @_jit
    def iterations(a):
        return tuple(case.solve(s, a)[1].iter_num for s in (solver, changed, solver))

    before, state, after = (int(n) for n in iterations(A))
    if field == "tol":  # one refinement is enough at a loose tol
        assert state <= before
    else:
        assert before > 2, "the problem must need more than 2 iterations"
        assert 0 < state <= 2
        if field == "maxiter":
            assert state == value
    assert after == before  # the original keeps its own settings
    assert getattr(solver, field) != value


@pytest.mark.parametrize("name", CONCRETE)
def test_replace_function_changes_value_and_derivative(name):
    case = CASES[name]
    if not case.swap:
        pytest.skip(f"{name} has no function field (its problem is all in run's arguments)")
    solver = case.make(1)
    swapped = dataclasses.replace(solver, **{f: getattr(case.make(2), f) for f in case.swap})
    runs = ((1, solver), (2, swapped), (1, solver))  # the original is unchanged after

    # One program for the three runs and their Jacobians, traced in this order (see above).
    @_jit
    def jacobians(a):
        return [
            jax.jacobian(lambda a, s=s: (case.solve(s, a)[0],) * 2, has_aux=True)(a)
            for _, s in runs
        ]

    for (c, _), (jac, params) in zip(runs, jacobians(A), strict=True):
        np.testing.assert_allclose(params, case.solution(c, A), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(jac, case.jacobian(c), rtol=1e-6, atol=1e-7)


def _alive_after_jax_caches_cleared(refs):
    """How many of the weakly referenced objects this package still holds: JAX's own caches
    (bounded by JAX) are emptied first."""
    gc.collect()
    jax.clear_caches()
    gc.collect()
    return sum(ref() is not None for ref in refs)


# The bound is exceeded by EXTRA runs. The first COMPILED runs are compiled and executed (their
# values checked); the others only fill the cache, traced under ``jax.eval_shape`` (the library
# caches a program for them all the same, and compiling each would prove nothing more). Being
# the least recently used, the compiled programs are the ones that must be released.
EXTRA = 4
COMPILED = 2


def _run_filling_the_cache(run, i):
    """``run()`` executed for the first COMPILED runs, traced only for the others."""
    if i < COMPILED:
        x, _ = run()
        np.testing.assert_allclose(x, 0.75 * A, atol=1e-12)  # two steps of x ↦ ½x + ½a from 0
    else:
        jax.eval_shape(run)


def test_compiled_programs_stay_bounded_with_a_new_function_per_run():
    """More solvers than the bound, each with a new lambda: the compiled programs (and the
    lambdas they hold) beyond the documented bound are released."""
    base = solvers.FixedPointIteration(
        fixed_point_fun=_fixed_point(1), maxiter=2, on_failure="ignore"
    )
    alive = []
    for i in range(_compile_cache.COMPILE_CACHE_SIZE + EXTRA):
        fun = lambda x, a, i=i: 0.5 * x + 0.5 * a + 0.0 * i  # noqa: E731
        alive.append(weakref.ref(fun))
        solver = dataclasses.replace(base, fixed_point_fun=fun)
        _run_filling_the_cache(lambda solver=solver: solver.run(jnp.zeros(3), A), i)
        del fun, solver
    assert len(_compile_cache._COMPILED) <= _compile_cache.COMPILE_CACHE_SIZE
    assert _alive_after_jax_caches_cleared(alive) <= _compile_cache.COMPILE_CACHE_SIZE
    assert _alive_after_jax_caches_cleared(alive[:COMPILED]) == 0  # the oldest went first


def test_compiled_programs_stay_bounded_with_a_new_static_argument_per_run():
    """One solver, more runs than the bound, each with a new function passed as an argument (a
    compile-time constant): the same bound holds."""

    def fixed_point_fun(x, a, shift):
        return 0.5 * x + 0.5 * shift(a)

    solver = solvers.FixedPointIteration(
        fixed_point_fun=fixed_point_fun, maxiter=2, on_failure="ignore"
    )
    alive = []
    for i in range(_compile_cache.COMPILE_CACHE_SIZE + EXTRA):
        shift = lambda a, i=i: a + 0.0 * i  # noqa: E731
        alive.append(weakref.ref(shift))
        _run_filling_the_cache(lambda shift=shift: solver.run(jnp.zeros(3), A, shift), i)
        del shift
    assert len(solver._compiled) <= _compile_cache.COMPILE_CACHE_SIZE
    assert _alive_after_jax_caches_cleared(alive) <= _compile_cache.COMPILE_CACHE_SIZE
    assert _alive_after_jax_caches_cleared(alive[:COMPILED]) == 0  # the oldest went first


def test_equal_solvers_share_one_compilation():
    """A solver built anew for each call (same fields) does not recompile."""
    traces = []

    def fixed_point_fun(x, a):
        traces.append(None)
        return 0.5 * x + 0.5 * a

    for _ in range(3):
        solvers.FixedPointIteration(fixed_point_fun=fixed_point_fun, tol=1e-8).run(jnp.zeros(3), A)
    n = len(traces)
    solvers.FixedPointIteration(fixed_point_fun=fixed_point_fun, tol=1e-8).run(jnp.zeros(3), A)
    assert len(traces) == n  # no new trace
    solvers.FixedPointIteration(fixed_point_fun=fixed_point_fun, tol=1e-9).run(jnp.zeros(3), A)
    assert len(traces) > n  # another tol: another program


# ---------------------------------------------------------------------------------------------
# Copies and pickles. A solver is immutable: copy.copy and copy.deepcopy return it (a deep copy
# rebuilt its private caches: a TypeError from the host wrappers' LRU, and ProximalGradient,
# BlockCoordinateDescent and IterativeRefinement copies unequal to the original), and it pickles
# as its constructor call (OSQP, BoxOSQP, EqualityConstrainedQP and CvxpyQP held a local
# function, which pickle refused).


@pytest.mark.parametrize("name", list(CASES))
def test_copies_of_a_solver_are_the_solver(name):
    solver = CASES[name].make(1)
    assert copy.copy(solver) is solver and copy.deepcopy(solver) is solver
    assert copy.deepcopy({"solver": [solver]})["solver"][0] is solver


def _pickled_quadratic(x, a):
    return jnp.sum(0.5 * (x - a) ** 2)


def _pickled_root(x, a):
    return x - a


PICKLED = {
    "LBFGS": solvers.LBFGS(fun=_pickled_quadratic, tol=1e-10),
    "ProximalGradient": solvers.ProximalGradient(fun=_pickled_quadratic, prox=prox.l1),
    "BlockCoordinateDescent": solvers.BlockCoordinateDescent(
        fun=_pickled_quadratic, block_prox=prox.l1
    ),
    "Broyden": solvers.Broyden(fun=_pickled_root),
    "OSQP": solvers.OSQP(tol=1e-8),
    "BoxOSQP": solvers.BoxOSQP(),
    "EqualityConstrainedQP": solvers.EqualityConstrainedQP(),
    "IterativeRefinement": solvers.IterativeRefinement(),
    "CvxpyQP": solvers.CvxpyQP("CLARABEL"),
    "ScipyMinimize": solvers.ScipyMinimize(fun=_pickled_quadratic),
    "with a partial": solvers.LBFGS(
        fun=_pickled_quadratic, solve=functools.partial(linear_solve.cg, tol=1e-9)
    ),
}


@pytest.mark.parametrize("name", list(PICKLED))
def test_solvers_pickle_as_their_constructor_call(name):
    solver = PICKLED[name]
    restored = pickle.loads(pickle.dumps(solver))
    assert restored is not solver and restored == solver and hash(restored) == hash(solver)


def test_a_pickled_solver_runs_and_shares_the_compiled_program():
    solver = PICKLED["OSQP"]
    Q, c = jnp.array([[1.0, 0.2], [0.2, 0.8]]), jnp.array([-0.3, 0.5])
    box = (jnp.eye(2), jnp.full(2, 10.0))
    expected = solver.run(None, (Q, c), None, box).params.primal
    restored = pickle.loads(pickle.dumps(solver))
    np.testing.assert_array_equal(restored.run(None, (Q, c), None, box).params.primal, expected)
    np.testing.assert_allclose(expected, np.linalg.solve(Q, -c), rtol=1e-7)


def test_equal_partials_make_equal_solvers():
    """functools.partial compares by identity; a solver compares the partial's function and
    arguments, so that LBFGS(..., solve=partial(cg, tol=...)) written twice is one solver."""
    one, two = (
        solvers.LBFGS(fun=_pickled_quadratic, solve=functools.partial(linear_solve.cg, tol=t))
        for t in (1e-9, 1e-9)
    )
    assert one == two and hash(one) == hash(two)
    other = solvers.LBFGS(
        fun=_pickled_quadratic, solve=functools.partial(linear_solve.cg, tol=1e-8)
    )
    assert other != one
