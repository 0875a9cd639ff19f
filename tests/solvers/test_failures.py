"""Solver failures: state.converged / state.status for each failure, and the on_failure policies
(eagerly, under jit, vmap and grad), including "raise" through jax.experimental.checkify."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compilations
from jax.experimental import checkify
from problems import ridge_objective as ridge
from problems import ridge_solution

from implicitdiff import BackwardSolveWarning
from implicitdiff.solvers import (
    LBFGS,
    OSQP,
    AndersonAcceleration,
    Bisection,
    FixedPointIteration,
    GradientDescent,
    HostSolver,
    SolverError,
    SolverWarning,
    Status,
)

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(8, 3)))
Y = jnp.asarray(RNG.normal(size=8))


def contraction(x, theta):
    return 0.5 * jnp.cos(x) + theta


def _quiet():
    """A context in which any warning fails the test."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error")
    return context


# ---------------------------------------------------------------------------------------------
# The status of each failure.


SOLVERS = {
    "gradient-descent": lambda **kw: (GradientDescent(fun=ridge, **kw), jnp.zeros(3)),
    "lbfgs": lambda **kw: (LBFGS(fun=ridge, **kw), jnp.zeros(3)),
    "fixed-point": lambda **kw: (FixedPointIteration(fixed_point_fun=contraction, **kw), None),
    "anderson": lambda **kw: (AndersonAcceleration(fixed_point_fun=contraction, **kw), None),
}


def _run(name, **kw):
    solver, init = SOLVERS[name](**kw)
    if init is None:  # a fixed point of contraction(x, θ), θ = the first 3 entries of Y
        return solver.run(jnp.zeros(3), Y[:3])
    return solver.run(init, 0.3, X, Y)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_converged_and_maxiter_statuses(name):
    params, state = _run(name, tol=1e-9, maxiter=500, on_failure="ignore")
    assert bool(state.converged) and int(state.status) == Status.CONVERGED
    if name in ("fixed-point", "anderson"):
        np.testing.assert_allclose(params, contraction(params, Y[:3]), atol=1e-8)
    else:
        np.testing.assert_allclose(params, ridge_solution(0.3, X, Y), atol=1e-8)
    _, state = _run(name, tol=1e-14, maxiter=2, on_failure="ignore")
    assert not bool(state.converged)
    assert int(state.status) == Status.MAX_ITERATIONS and int(state.iter_num) == 2


def test_divergence_stops_early_as_nonfinite():
    # x ← 2x + 1: its error ‖T(x) − x‖ overflows after ~510 doublings; the loop stops there.
    for implicit_diff in (True, False):
        solver = FixedPointIteration(
            fixed_point_fun=lambda x, t: 2 * x + t,
            maxiter=5000,
            implicit_diff=implicit_diff,
            on_failure="ignore",
        )
        _, state = solver.run(jnp.ones(2), 1.0)
        assert int(state.status) == Status.NONFINITE and not bool(state.converged)
        assert 500 < int(state.iter_num) < 1100


def test_too_large_step_diverges_to_nonfinite():
    solver = GradientDescent(fun=ridge, stepsize=10.0, maxiter=10_000, on_failure="ignore")
    _, state = solver.run(jnp.zeros(3), 0.3, X, Y)
    assert int(state.status) == Status.NONFINITE
    assert int(state.iter_num) < 1000


def test_nan_in_the_data_stops_at_once():
    y = Y.at[0].set(jnp.nan)
    _, state = GradientDescent(fun=ridge, on_failure="ignore").run(jnp.zeros(3), 0.3, X, y)
    assert int(state.status) == Status.NONFINITE and int(state.iter_num) <= 1
    _, state = LBFGS(fun=ridge, on_failure="ignore").run(jnp.zeros(3), 0.3, X, y)
    assert int(state.status) == Status.NONFINITE and int(state.iter_num) <= 1


def test_qp_infeasibility_statuses():
    # One solver and one problem structure (2 variables, 2 inequalities): one compilation.
    solver = OSQP(on_failure="ignore")
    # x₁ + x₂ ≤ −1 and −x₁ − x₂ ≤ −1: no x satisfies both.
    G, h = jnp.array([[1.0, 1.0], [-1.0, -1.0]]), jnp.array([-1.0, -1.0])
    _, state = solver.run(None, (jnp.eye(2), jnp.array([-1.0, -1.0])), None, (G, h))
    assert int(state.status) == Status.PRIMAL_INFEASIBLE and not bool(state.converged)
    # The LP min −x₁ s.t. x₂ ≤ 1 (and 0 ≤ 1): unbounded below.
    lp = (
        (jnp.zeros((2, 2)), jnp.array([-1.0, 0.0])),
        None,
        (jnp.eye(2) * jnp.array([0.0, 1.0]), jnp.ones(2)),
    )
    _, state = solver.run(None, *lp)
    assert int(state.status) == Status.DUAL_INFEASIBLE and not bool(state.converged)
    # The policy acts outside the compiled program: the new solver reuses the compilation.
    solver = dataclasses.replace(solver, on_failure="auto")
    with compilations() as compiled, pytest.warns(SolverWarning, match="DUAL_INFEASIBLE"):
        solver.run(None, *lp)
    assert compiled == []


def test_invalid_bracket_status():
    solver = Bisection(
        optimality_fun=lambda x, a: x - a,
        lower=0.0,
        upper=1.0,
        check_bracket=False,
        on_failure="ignore",
    )
    x, state = solver.run(None, 3.0)
    assert int(state.status) == Status.INVALID_INPUT and not bool(state.converged)
    assert np.isnan(x)


def test_status_names():
    assert [s.name for s in Status][:5] == [
        "CONVERGED",
        "MAX_ITERATIONS",
        "PRIMAL_INFEASIBLE",
        "DUAL_INFEASIBLE",
        "NONFINITE",
    ]
    _, state = _run("gradient-descent", maxiter=2, tol=1e-14, on_failure="ignore")
    assert Status(int(state.status)) is Status.MAX_ITERATIONS


# ---------------------------------------------------------------------------------------------
# The policies outside any transformation.


def _gd(policy, maxiter=2, jit=True):
    """Two iterations do not reach tol; 1000 do."""
    return GradientDescent(fun=ridge, tol=1e-8, maxiter=maxiter, on_failure=policy, jit=jit)


def test_eager_policies(jit=True):
    # The policy acts on the returned state, outside the compiled program: switching it on one
    # solver reuses the compilation.
    short, long = _gd("auto", jit=jit), _gd("auto", maxiter=1000, jit=jit)
    with pytest.warns(SolverWarning, match=r"status 1 \(MAX_ITERATIONS\).*after 2 iterations"):
        short.run(jnp.zeros(3), 0.3, X, Y)
    short = dataclasses.replace(short, on_failure="warn")
    with pytest.warns(SolverWarning, match="did not converge"):
        short.run(jnp.zeros(3), 0.3, X, Y)
    short = dataclasses.replace(short, on_failure="raise")
    with pytest.raises(SolverError, match=r"GradientDescent\.run did not converge"):
        short.run(jnp.zeros(3), 0.3, X, Y)
    context = _quiet()
    try:
        short = dataclasses.replace(short, on_failure="ignore")
        _, state = short.run(jnp.zeros(3), 0.3, X, Y)
        assert not bool(state.converged)
        for policy in ("auto", "warn", "raise", "ignore"):  # converged runs are quiet
            long = dataclasses.replace(long, on_failure=policy)
            _, state = long.run(jnp.zeros(3), 0.3, X, Y)
            assert bool(state.converged)
    finally:
        context.__exit__(None, None, None)


def test_eager_policies_without_jit():
    solver = _gd("raise", jit=False)
    with pytest.raises(SolverError, match="MAX_ITERATIONS"):
        solver.run(jnp.zeros(3), 0.3, X, Y)
    solver = dataclasses.replace(solver, on_failure="auto")
    with pytest.warns(SolverWarning, match="MAX_ITERATIONS"):
        solver.run(jnp.zeros(3), 0.3, X, Y)


def test_warning_points_at_the_callers_line():
    with pytest.warns(SolverWarning) as record:
        _gd("warn").run(jnp.zeros(3), 0.3, X, Y)
    assert record[0].filename == __file__


def test_unknown_policies_are_named():
    with pytest.raises(ValueError, match="on_failure must be one of"):
        GradientDescent(fun=ridge, on_failure="shout")
    with pytest.raises(ValueError, match="backward_on_failure must be one of"):
        GradientDescent(fun=ridge, backward_on_failure="shout")
    with pytest.raises(ValueError, match="on_failure must be one of"):
        HostSolver(lambda x: x, lambda x: x, on_failure="shout")


def test_host_solver_policies():
    def bad_solve(init, lam, X, y):  # a host solver that returns a poor solution
        return np.zeros(3)

    def F(w, lam, X, y):
        return jax.grad(ridge)(w, lam, X, y)

    with pytest.warns(SolverWarning, match="HostSolver.run did not converge"):
        HostSolver(bad_solve, F).run(jnp.zeros(3), 0.3, X, Y)
    with pytest.raises(SolverError):
        HostSolver(bad_solve, F, on_failure="raise").run(jnp.zeros(3), 0.3, X, Y)


# ---------------------------------------------------------------------------------------------
# Inside transformations.


def _params_of(solver):
    return lambda lam: solver.run(jnp.zeros(3), lam, X, Y).params


def test_auto_and_ignore_are_quiet_under_jit():
    """No warning under jit, and the policy does not touch the values: the two-iteration iterate
    is returned as is (equal to the same unconverged run's eager result)."""
    eager, state = _gd("ignore").run(jnp.zeros(3), 0.3, X, Y)
    assert not bool(state.converged)
    context = _quiet()
    try:
        for policy in ("auto", "ignore"):
            params = jax.jit(_params_of(_gd(policy)))(0.3)
            np.testing.assert_allclose(params, eager, rtol=1e-14)
    finally:
        context.__exit__(None, None, None)


def test_warn_under_jit_and_vmap():
    with pytest.warns(SolverWarning, match="after 2 iterations"):
        jax.jit(_params_of(_gd("warn")))(0.3).block_until_ready()
    # Under vmap one warning for the whole call, counting the problems that failed (y = 0 is
    # solved by the starting point 0 at once).
    solver = GradientDescent(fun=ridge, tol=1e-6, maxiter=3, on_failure="warn")
    batch = jnp.stack([Y, jnp.zeros_like(Y)])
    with pytest.warns(SolverWarning, match="did not converge on 1 of 2 problems") as record:
        jax.jit(jax.vmap(lambda y: solver.run(jnp.zeros(3), 0.3, X, y).params))(batch)
    assert len([r for r in record if r.category is SolverWarning]) == 1


def test_raise_under_jit_goes_through_checkify():
    f = _params_of(_gd("raise"))
    err, out = checkify.checkify(jax.jit(f))(0.3)
    assert out.shape == (3,)
    with pytest.raises(checkify.JaxRuntimeError, match=r"GradientDescent\.run did not converge"):
        err.throw()
    err, _ = jax.jit(checkify.checkify(f))(0.3)  # either order
    assert err.get() is not None and "status 1" in err.get()
    # A converged run gives no error.
    err, out = checkify.checkify(jax.jit(_params_of(_gd("raise", maxiter=1000))))(0.3)
    assert err.get() is None
    np.testing.assert_allclose(out, ridge_solution(0.3, X, Y), atol=1e-9)
    # Without checkify, JAX refuses to compile the check and says what to do.
    with pytest.raises(ValueError, match="checkify"):
        jax.jit(f)(0.3)


def test_raise_under_vmap_and_grad():
    solver = GradientDescent(fun=ridge, tol=1e-6, maxiter=3, on_failure="raise")

    def solve(y):
        return solver.run(jnp.zeros(3), 0.3, X, y).params

    # Eagerly under vmap the check raises at once. (Under jit, checkify of a vmapped solver
    # fails in JAX 0.10: checkify supports no while loop with a batched predicate, in either
    # order; use "warn" or state.converged there, as documented.)
    with pytest.raises(checkify.JaxRuntimeError, match="did not converge"):
        jax.vmap(solve)(jnp.stack([jnp.zeros_like(Y), Y]))
    params = jax.vmap(solve)(jnp.zeros((2, 8)))  # converged: no error
    np.testing.assert_allclose(params, 0.0, atol=1e-12)

    def loss(solver):
        return jax.jit(jax.grad(lambda lam: jnp.sum(_params_of(solver)(lam))))

    err, _ = checkify.checkify(loss(_gd("raise")))(0.3)
    with pytest.raises(checkify.JaxRuntimeError, match="did not converge"):
        err.throw()
    err, g = checkify.checkify(loss(_gd("raise", maxiter=1000)))(0.3)
    assert err.get() is None
    want = jax.grad(lambda lam: jnp.sum(ridge_solution(lam, X, Y)))(0.3)
    np.testing.assert_allclose(g, want, rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# The backward policy of a solver.


def test_backward_on_failure_fallback_gives_the_minimum_norm_derivative():
    # Rank-deficient least squares: X has rank 2 in ℝ³. Gradient descent from 0 stays in the row
    # space and converges to the minimum-norm solution w = X⁺y, whose Jacobian in y is X⁺. The
    # backward system (XᵀX)ᵀu = v is singular: the default warns; "fallback" solves it in the
    # least-squares sense and gives vᵀX⁺ exactly.
    Xr = X[:, :2] @ jnp.asarray(RNG.normal(size=(2, 3)))

    def least_squares(w, y):
        return 0.5 * jnp.sum((Xr @ w - y) ** 2)

    v = jnp.array([1.0, -2.0, 0.5])

    def grad_of(policy):
        solver = GradientDescent(
            fun=least_squares, tol=1e-11, maxiter=20_000, backward_on_failure=policy
        )
        return jax.jit(jax.grad(lambda y: v @ solver.run(jnp.zeros(3), y).params))(Y)

    with pytest.warns(BackwardSolveWarning, match="minimum-norm"):
        g = grad_of("fallback").block_until_ready()
    np.testing.assert_allclose(g, jnp.linalg.pinv(Xr).T @ v, rtol=1e-7, atol=1e-9)
    assert np.all(np.isnan(grad_of("nan")))
    with pytest.warns(BackwardSolveWarning, match="not solved"):
        grad_of("warn").block_until_ready()
