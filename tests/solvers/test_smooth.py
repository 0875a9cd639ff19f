"""Smooth unconstrained solvers: LBFGS, BFGS (quasi_newton.py), NonlinearCG, Newton.

Problems: ridge regression on pytree params (closed form), L2-regularized logistic regression
(scikit-learn's Newton-CG as reference; finite differences of its solutions for derivatives) and
a parametrized Rosenbrock f(x, a, b) = (a − x₀)² + b(x₁ − x₀²)², whose minimum x* = (a, a²) has
∂x*/∂a = (1, 2a) and ∂x*/∂b = 0. Each differentiated function is jitted once and cached, so
that the tests that share it (solution, gradients, vmap, checkpointing) compile it once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose, random_tangent
from jax.flatten_util import ravel_pytree
from sklearn.linear_model import LogisticRegression

from implicitdiff.solvers.newton import Newton
from implicitdiff.solvers.nonlinear_cg import NonlinearCG
from implicitdiff.solvers.quasi_newton import BFGS, LBFGS

# ---------------------------------------------------------------------------------------------
# Solvers: every configuration under test, built from (fun, options).

SOLVERS = {
    "lbfgs": lambda **kw: LBFGS(**kw),
    "lbfgs-backtracking": lambda **kw: LBFGS(linesearch="backtracking", **kw),
    "bfgs": lambda **kw: BFGS(**kw),
    "bfgs-backtracking": lambda **kw: BFGS(linesearch="backtracking", **kw),
    "ncg-pr": lambda **kw: NonlinearCG(method="polak-ribiere", **kw),
    "ncg-fr": lambda **kw: NonlinearCG(method="fletcher-reeves", **kw),
    "ncg-hs": lambda **kw: NonlinearCG(method="hestenes-stiefel", **kw),
    "newton": lambda **kw: Newton(**kw),
}
UNROLLED = [name for name in SOLVERS if name != "bfgs-backtracking"]

# ---------------------------------------------------------------------------------------------
# Problems.

RNG = np.random.default_rng(0)

# Ridge on params {"w": (3,), "W": (2, 2)}: 7 features in all.
RIDGE_X = jnp.asarray(RNG.normal(size=(20, 7)))
RIDGE_Y = jnp.asarray(RNG.normal(size=20))
RIDGE_XV, RIDGE_YV = jnp.asarray(RNG.normal(size=(8, 7))), jnp.asarray(RNG.normal(size=8))
RIDGE_INIT = {"w": jnp.zeros(3), "W": jnp.zeros((2, 2))}
_, RIDGE_UNRAVEL = ravel_pytree(RIDGE_INIT)


def ridge(params, lam, X, y):
    w = ravel_pytree(params)[0]
    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def ridge_closed_form(lam, X, y):
    n, p = X.shape
    return RIDGE_UNRAVEL(jnp.linalg.solve(X.T @ X / n + lam * jnp.eye(p), X.T @ y / n))


def ridge_outer(params):
    return 0.5 * jnp.sum((RIDGE_XV @ ravel_pytree(params)[0] - RIDGE_YV) ** 2)


# Logistic regression, labels ±1: f(w) = Σᵢ log(1 + exp(−yᵢ xᵢᵀw)) + λ/2 ‖w‖², which is
# scikit-learn's objective with C = 1/λ.
_w_true = RNG.normal(size=5)
LOGREG_X = RNG.normal(size=(30, 5))
LOGREG_Y = np.where(LOGREG_X @ _w_true + 0.5 * RNG.normal(size=30) > 0, 1.0, -1.0)
LOGREG_XV = RNG.normal(size=(10, 5))
LOGREG_YV = np.where(LOGREG_XV @ _w_true > 0, 1.0, -1.0)
LOGREG_LAM = 0.5


def logreg(w, lam, X, y):
    return jnp.sum(jnp.logaddexp(0.0, -y * (X @ w))) + 0.5 * lam * jnp.sum(w**2)


def logreg_outer(w, Xv=LOGREG_XV, yv=LOGREG_YV):
    return jnp.sum(jnp.logaddexp(0.0, -yv * (Xv @ w)))


def sklearn_logreg(lam, X):
    model = LogisticRegression(
        C=1.0 / lam, fit_intercept=False, tol=1e-13, solver="newton-cg", max_iter=1000
    )
    return model.fit(np.asarray(X), LOGREG_Y).coef_.ravel()


@functools.cache
def logreg_reference():
    """sklearn's solution, and the outer loss's derivatives by central differences of
    sklearn's solutions: along λ, and along a random direction T of X."""
    w = sklearn_logreg(LOGREG_LAM, LOGREG_X)
    T = np.asarray(random_tangent(jnp.asarray(LOGREG_X), seed=3))
    eps = 1e-5

    def outer(lam, X):
        return float(logreg_outer(jnp.asarray(sklearn_logreg(lam, X))))

    d_lam = (outer(LOGREG_LAM + eps, LOGREG_X) - outer(LOGREG_LAM - eps, LOGREG_X)) / (2 * eps)
    d_X = (outer(LOGREG_LAM, LOGREG_X + eps * T) - outer(LOGREG_LAM, LOGREG_X - eps * T)) / (
        2 * eps
    )
    return w, d_lam, T, d_X


ROSEN_A, ROSEN_B = 1.5, 100.0
ROSEN_INIT = jnp.array([-1.2, 1.0])


def rosenbrock(x, a, b):
    return (a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2


# ---------------------------------------------------------------------------------------------
# The differentiated runs, jitted once per (solver, problem, mode) and cached.

TOL = 1e-10


@functools.cache
def make_solver(name, fun, implicit_diff=True, unroll_checkpoint=False):
    if implicit_diff:
        return SOLVERS[name](fun=fun, tol=TOL)
    # Unrolled: a fixed 100 steps (tol=0), the last tens of them at the rounding noise of the
    # iterates, which must neither move the derivatives nor make them NaN.
    return SOLVERS[name](
        fun=fun, tol=0.0, maxiter=100, implicit_diff=False, unroll_checkpoint=unroll_checkpoint
    )


def check_state(state, implicit_diff):
    if implicit_diff:
        assert bool(state.converged) and float(state.error) <= TOL
    else:
        assert int(state.iter_num) == 100 and float(state.error) <= TOL


@functools.cache
def differentiated_run(name, problem, implicit_diff=True, unroll_checkpoint=False):
    """A jitted θ ↦ (outer loss or solution, its derivative w.r.t. θ, (params, state))."""
    if problem == "ridge":
        solver = make_solver(name, ridge, implicit_diff, unroll_checkpoint)

        def outer(lam, X):
            sol = solver.run(RIDGE_INIT, lam, X, RIDGE_Y)
            return ridge_outer(sol.params), sol

        return jax.jit(jax.value_and_grad(outer, argnums=(0, 1), has_aux=True))
    if problem == "logreg":
        solver = make_solver(name, logreg, implicit_diff, unroll_checkpoint)

        def outer(lam, X):
            sol = solver.run(jnp.zeros(5), lam, X, LOGREG_Y)
            return logreg_outer(sol.params), sol

        return jax.jit(jax.value_and_grad(outer, argnums=(0, 1), has_aux=True))
    solver = make_solver(name, rosenbrock, implicit_diff, unroll_checkpoint)

    def solution(a, b):
        sol = solver.run(ROSEN_INIT, a, b)
        return sol.params, sol

    return jax.jit(jax.jacrev(solution, argnums=(0, 1), has_aux=True))


def check_ridge(name, implicit_diff, rtol):
    lam, X = PROBLEM_ARGS["ridge"]
    (_, (params, state)), grads = differentiated_run(name, "ridge", implicit_diff)(lam, X)
    want = jax.grad(lambda lam, X: ridge_outer(ridge_closed_form(lam, X, RIDGE_Y)), (0, 1))(
        lam, RIDGE_X
    )
    check_state(state, implicit_diff)
    assert_tree_allclose(params, ridge_closed_form(lam, RIDGE_X, RIDGE_Y), rtol=1e-8, atol=1e-10)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    assert_tree_allclose(grads, want, rtol=rtol, atol=rtol * 1e-2)
    return grads


def check_logreg(name, implicit_diff, rtol):
    w_ref, d_lam, T, d_X = logreg_reference()
    (_, (w, state)), (g_lam, g_X) = differentiated_run(name, "logreg", implicit_diff)(
        *PROBLEM_ARGS["logreg"]
    )
    check_state(state, implicit_diff)
    np.testing.assert_allclose(w, w_ref, rtol=1e-8, atol=1e-10)
    assert np.isfinite(g_lam) and bool(jnp.all(jnp.isfinite(g_X)))
    np.testing.assert_allclose(g_lam, d_lam, rtol=rtol)
    np.testing.assert_allclose(jnp.vdot(g_X, T), d_X, rtol=rtol)
    return g_lam, g_X


def check_rosenbrock(name, implicit_diff, rtol, a=ROSEN_A):
    (d_a, d_b), (x, state) = differentiated_run(name, "rosenbrock", implicit_diff)(a, ROSEN_B)
    check_state(state, implicit_diff)
    np.testing.assert_allclose(x, [a, a**2], rtol=1e-8)
    assert bool(jnp.all(jnp.isfinite(d_a))) and bool(jnp.all(jnp.isfinite(d_b)))
    np.testing.assert_allclose(d_a, [1.0, 2 * a], rtol=rtol)
    np.testing.assert_allclose(d_b, [0.0, 0.0], atol=rtol)
    return d_a, d_b


CHECKS = {"ridge": check_ridge, "logreg": check_logreg, "rosenbrock": check_rosenbrock}
PROBLEM_ARGS = {
    "ridge": (0.1, RIDGE_X),
    "logreg": (LOGREG_LAM, jnp.asarray(LOGREG_X)),
    "rosenbrock": (ROSEN_A, ROSEN_B),
}


# ---------------------------------------------------------------------------------------------
# Solutions and implicit derivatives.


# Every configuration on Rosenbrock (nonconvex, closed-form derivatives); each class on the
# pytree ridge; the other variants on logistic regression (compilations are the cost here).
IMPLICIT_CASES = (
    [(name, "rosenbrock") for name in SOLVERS]
    + [(name, "ridge") for name in ("lbfgs", "bfgs", "ncg-pr", "newton")]
    + [(name, "logreg") for name in ("lbfgs-backtracking", "bfgs-backtracking", "ncg-fr", "ncg-hs")]
)


@pytest.mark.parametrize("name, problem", IMPLICIT_CASES, ids=["-".join(c) for c in IMPLICIT_CASES])
def test_solution_and_implicit_derivatives(name, problem):
    """The solution matches the reference (closed form, scikit-learn, (a, a²)); the implicit
    derivatives of an outer loss w.r.t. the regularization and the data (or of x* w.r.t. a,
    b) match the closed form or finite differences of the reference."""
    CHECKS[problem](name, implicit_diff=True, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Unrolled derivatives: finite, correct, and equal to the implicit ones at convergence.

UNROLLED_CASES = [(name, "rosenbrock") for name in UNROLLED] + [
    (name, "logreg") for name in ("lbfgs", "bfgs", "ncg-pr")
]


@pytest.mark.parametrize("name, problem", UNROLLED_CASES, ids=["-".join(c) for c in UNROLLED_CASES])
def test_unrolled_derivatives(name, problem):
    """Unrolling (implicit_diff=False) 100 steps through line searches and curvature updates
    gives finite derivatives, equal to the reference (closed form or finite differences) and to
    the implicit ones, also after tens of steps at the iterates' rounding noise (on Rosenbrock
    with a = 1.3, whose minimum is not representable exactly). Unrolled derivatives converge
    with the iterates but lag them: 1e-5."""
    # a = 1.3 for Rosenbrock: at a = 1.5 the iterates reach the minimum exactly and stop.
    kwargs = dict(a=1.3) if problem == "rosenbrock" else {}
    unrolled = CHECKS[problem](name, implicit_diff=False, rtol=1e-5, **kwargs)
    implicit = CHECKS[problem](name, implicit_diff=True, rtol=1e-6, **kwargs)
    assert_tree_allclose(unrolled, implicit, rtol=1e-5, atol=1e-5)


def test_unrolled_with_checkpoint_equals_unrolled():
    plain = check_rosenbrock("lbfgs", implicit_diff=False, rtol=1e-5, a=1.3)
    checkpointed, _ = differentiated_run(
        "lbfgs", "rosenbrock", implicit_diff=False, unroll_checkpoint=True
    )(1.3, ROSEN_B)
    assert_tree_allclose(checkpointed, plain, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# jit, vmap, no recompilation.


@pytest.mark.parametrize("name", ["lbfgs", "bfgs", "ncg-pr", "newton"])
def test_vmap_of_run_and_jacobian_equals_unbatched(name):
    """vmap of the jitted run and its Jacobian over Rosenbrock's a: the batched solutions and
    derivatives are the unbatched ones (and the closed form)."""
    a = jnp.array([0.5, 1.0, ROSEN_A])
    fun = differentiated_run(name, "rosenbrock")
    (d_a, d_b), (x, state) = jax.vmap(fun, in_axes=(0, None))(a, ROSEN_B)
    assert bool(jnp.all(state.converged))
    np.testing.assert_allclose(x, jnp.stack([a, a**2], axis=1), rtol=1e-8)
    np.testing.assert_allclose(d_a, jnp.stack([jnp.ones(3), 2 * a], axis=1), rtol=1e-6)
    for i in range(3):
        (d_a_i, d_b_i), (x_i, _) = fun(a[i], ROSEN_B)
        assert_tree_allclose((x[i], d_a[i], d_b[i]), (x_i, d_a_i, d_b_i), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["lbfgs", "bfgs", "ncg-pr", "newton"])
def test_run_compiles_once_per_shape(name):
    traces = []

    def quadratic(x, c):
        traces.append(None)  # runs only while JAX traces fun
        return 0.5 * jnp.sum((x - c) ** 2) + 0.25 * jnp.sum(x**4)

    solver = SOLVERS[name](fun=quadratic)
    solver.run(jnp.zeros(2), jnp.array([1.0, -2.0]))
    count = len(traces)
    x, _ = solver.run(jnp.zeros(2), jnp.array([0.5, 3.0]))
    assert len(traces) == count  # same shapes: the compiled run is reused
    # x + x³ = c, coordinate by coordinate.
    np.testing.assert_allclose(x + x**3, [0.5, 3.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Newton's safeguards, options (the line searches: tests/solvers/test_linesearch.py).


def test_newton_from_indefinite_start_reaches_a_minimum():
    # f = x⁴/4 − x²/2: ∇²f < 0 on |x| < 1/√3, a maximum at 0 and minima at ±1.
    def double_well(x, shift):
        return jnp.sum(0.25 * x**4 - 0.5 * x**2 + shift * x)

    x, state = Newton(fun=double_well, tol=1e-12).run(jnp.array([0.1, -0.2]), 0.0)
    assert bool(state.converged)
    np.testing.assert_allclose(x, [1.0, -1.0], rtol=1e-10)


BAD_OPTIONS = [
    (LBFGS, dict(fun=rosenbrock, maxiter=-1), "maxiter"),
    (LBFGS, dict(fun=rosenbrock, tol=-1.0), "tol"),
    (LBFGS, dict(fun="rosenbrock"), "fun"),
    (LBFGS, dict(fun=rosenbrock, history_size=0), "history_size"),
    (LBFGS, dict(fun=rosenbrock, linesearch="wolfe"), "linesearch"),
    (LBFGS, dict(fun=rosenbrock, maxls=0), "maxls"),
    (LBFGS, dict(fun=rosenbrock, c1=0.5, c2=0.1), "c1"),
    (BFGS, dict(fun=None), "fun"),
    (BFGS, dict(fun=rosenbrock, max_stepsize=0.0), "max_stepsize"),
    (NonlinearCG, dict(fun=rosenbrock, method="dai-yuan"), "method"),
    (NonlinearCG, dict(fun=rosenbrock, linesearch="more-thuente"), "linesearch"),
    (Newton, dict(fun=rosenbrock, maxiter=-1), "maxiter"),
    (Newton, dict(fun=1.0), "fun"),
    (Newton, dict(fun=rosenbrock, cg_tol=1.5), "cg_tol"),
    (Newton, dict(fun=rosenbrock, cg_maxiter=0), "cg_maxiter"),
    (Newton, dict(fun=rosenbrock, maxls=-1), "maxls"),
]


@pytest.mark.parametrize(
    "cls, options, option", BAD_OPTIONS, ids=[f"{c.__name__}-{o}" for c, _, o in BAD_OPTIONS]
)
def test_bad_options_raise_naming_the_option(cls, options, option):
    with pytest.raises((TypeError, ValueError), match=option):
        cls(**options)


@pytest.mark.parametrize("cls", [LBFGS, BFGS, NonlinearCG, Newton])
def test_objective_given_positionally_sets_fun(cls):
    # As in JAXopt: the objective is the first positional argument; the settings that follow
    # are keyword-only, so passing one positionally is a TypeError, not a silent other field.
    assert cls(rosenbrock) == cls(fun=rosenbrock)
    assert cls(rosenbrock).fun is rosenbrock
    # JAXopt's order: fun, value_and_grad, has_aux (the quasi-Newton methods and NonlinearCG).
    leading = () if cls is Newton else (False, False)
    with pytest.raises(TypeError, match="positional"):
        cls(rosenbrock, *leading, 100)
