"""Host solvers (SciPy, scikit-learn) wrapped by implicitdiff.solvers.scipy and .host.

Each wrapper is checked against a reference solution (closed form, or SciPy called directly), its
implicit derivative against a closed form or central finite differences of the host solution,
and under jit and vmap. Problems are tiny: the time goes to compiling, so shapes are reused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import assert_tree_allclose, finite_difference_jvp
from problems import ridge_objective
from problems import ridge_solution as ridge_closed_form
from sklearn.linear_model import Ridge

from implicitdiff import optimality
from implicitdiff.solvers import (
    CvxpyQP,
    HostSolver,
    ScipyBoundedMinimize,
    ScipyLeastSquares,
    ScipyMinimize,
    ScipyRootFinding,
)

# Checks are made in NumPy and derivatives under jax.jit: eager JAX compiles every primitive.
N, D = 12, 4
_rng = np.random.default_rng(0)
X_NP, Y_NP, C_NP = _rng.normal(size=(N, D)), _rng.normal(size=N), _rng.normal(size=D)
X, Y, C = jnp.asarray(X_NP), jnp.asarray(Y_NP), jnp.asarray(C_NP)


def outer_loss(w):
    """The outer loss L(w) = cᵀw + ½‖w‖² whose hypergradients are checked."""
    return C @ w + 0.5 * w @ w


# ∇(L ∘ w*) for the closed form w*(lam, X, y), compiled once for every test that uses it.
closed_form_grads = jax.jit(
    jax.grad(lambda lam, X, y: outer_loss(ridge_closed_form(lam, X, y)), argnums=(0, 1, 2))
)


def ridge_reference(lam, y=Y_NP):
    return np.linalg.solve(X_NP.T @ X_NP + lam * np.eye(D), X_NP.T @ y)


# ---------------------------------------------------------------------------------------------
# ScipyMinimize.


@pytest.mark.parametrize("method", ["L-BFGS-B", "BFGS", "Newton-CG", "trust-exact", "Powell"])
def test_minimize_ridge_solution_and_state(method):
    """Every kind of method: gradient-based, with a Hessian-vector product, with a Hessian, and
    gradient-free (the derivative does not depend on the method: see the next test)."""
    solver = ScipyMinimize(fun=ridge_objective, method=method)
    lam = jnp.asarray(0.7)
    w, state = solver.run(jnp.zeros(D), lam, X, Y)

    np.testing.assert_allclose(w, ridge_reference(0.7), rtol=1e-6, atol=1e-9)
    w = np.asarray(w)
    value = 0.5 * np.sum((X_NP @ w - Y_NP) ** 2) + 0.35 * w @ w
    np.testing.assert_allclose(state.value, value, rtol=1e-12)
    grad_norm = np.linalg.norm(X_NP.T @ (X_NP @ w - Y_NP) + 0.7 * w)
    np.testing.assert_allclose(state.error, grad_norm, rtol=1e-6, atol=1e-14)
    assert int(state.status) == 0 and int(state.iter_num) >= 1
    assert bool(state.converged) == (float(state.error) <= solver.error_tol)
    if method != "Powell":
        assert bool(state.converged)


def test_minimize_gradients_equal_the_ridge_closed_form():
    solver = ScipyMinimize(fun=ridge_objective)  # L-BFGS-B

    def through_solver(lam, X, y):
        return outer_loss(solver.run(jnp.zeros(D), lam, X, y).params)

    got = jax.jit(jax.grad(through_solver, argnums=(0, 1, 2)))(0.7, X, Y)
    assert_tree_allclose(got, closed_form_grads(0.7, X, Y), rtol=1e-6, atol=1e-9)

    # jit=False runs the same solve eagerly (numbers in args made arrays for the callback).
    eager = ScipyMinimize(fun=ridge_objective, jit=False).run(jnp.zeros(D), 0.7, X, Y)
    assert_tree_allclose(eager, solver.run(jnp.zeros(D), 0.7, X, Y), rtol=1e-12)


def test_minimize_pytree_params_and_keyword_args():
    """Params {"w", "b"} (an unpenalized intercept) and data passed by keyword."""

    def objective(params, lam, *, X, y):
        residual = X @ params["w"] + params["b"] - y
        return 0.5 * jnp.sum(residual**2) + 0.5 * lam * jnp.sum(params["w"] ** 2)

    def closed_form(lam, X, y):
        A = jnp.concatenate([X, jnp.ones((X.shape[0], 1))], axis=1)
        penalty = lam * jnp.diag(jnp.concatenate([jnp.ones(X.shape[1]), jnp.zeros(1)]))
        z = jnp.linalg.solve(A.T @ A + penalty, A.T @ y)
        return {"b": z[-1], "w": z[:-1]}

    solver = ScipyMinimize(fun=objective, method="BFGS")
    init = {"b": jnp.asarray(0.0), "w": jnp.zeros(D)}
    y = jnp.asarray(Y_NP + 2.0)
    params, state = solver.run(init, 0.3, X=X, y=y)
    assert bool(state.converged)

    def loss(solution):
        return outer_loss(solution["w"]) + solution["b"] ** 2

    def through_solver(lam, y):
        solution = solver.run(init, lam, X=X, y=y).params
        return loss(solution), solution

    def through_closed_form(lam, y):
        solution = closed_form(lam, X, y)
        return loss(solution), solution

    got = jax.jit(jax.grad(through_solver, (0, 1), has_aux=True))(0.3, y)
    expected = jax.jit(jax.grad(through_closed_form, (0, 1), has_aux=True))(0.3, y)
    assert_tree_allclose(got[1], params, rtol=1e-12)
    assert_tree_allclose(params, expected[1], rtol=1e-8, atol=1e-10)
    assert_tree_allclose(got[0], expected[0], rtol=1e-6, atol=1e-9)


def _sklearn_ridge(w0, alpha, X, y):
    """A host solver: scikit-learn's Ridge minimizes ‖Xw − y‖² + alpha‖w‖², as ridge_objective."""
    model = Ridge(alpha=float(alpha), fit_intercept=False, solver="cholesky")
    return model.fit(np.asarray(X), np.asarray(y)).coef_


def _wrapped_solvers():
    return {
        "ScipyMinimize": ScipyMinimize(fun=ridge_objective, method="BFGS"),
        "HostSolver": HostSolver(_sklearn_ridge, optimality.stationary(ridge_objective)),
    }


@pytest.mark.parametrize("name", ["ScipyMinimize", "HostSolver"])
def test_jit_vmap_grad_equals_closed_form_per_example(name):
    solver = _wrapped_solvers()[name]
    lams = jnp.asarray([0.1, 0.5, 2.0])
    ys = jnp.stack([Y, 2.0 * Y, Y + 1.0])

    def through_solver(lam, y):
        return outer_loss(solver.run(jnp.zeros(D), lam, X, y).params)

    grads = jax.jit(jax.vmap(jax.grad(through_solver, argnums=(0, 1))))(lams, ys)
    grads = jax.tree_util.tree_map(np.asarray, grads)
    for i in range(3):
        expected = closed_form_grads(lams[i], X, ys[i])
        assert_tree_allclose((grads[0][i], grads[1][i]), (expected[0], expected[2]), rtol=1e-6)

    # vmap of run (a sequential host loop) equals run on each problem, states included.
    batched = jax.vmap(lambda lam, y: solver.run(jnp.zeros(D), lam, X, y))(lams, ys)
    batched = jax.tree_util.tree_map(np.asarray, batched)
    for i in range(3):
        single = solver.run(jnp.zeros(D), lams[i], X, ys[i])
        np.testing.assert_allclose(single.params, ridge_reference(float(lams[i]), ys[i]), 1e-6)
        assert_tree_allclose(
            jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], batched), single, rtol=1e-12
        )


def _host_solvers_without_derivative():
    """Every host wrapper with implicit_diff=False, on ridge (its solution at lam, as a run
    from a function of lam)."""
    box = (jnp.full(D, -10.0), jnp.full(D, 10.0))
    ridge_gradient = optimality.stationary(ridge_objective)
    return {
        "ScipyMinimize": (
            ScipyMinimize(fun=ridge_objective, method="BFGS", implicit_diff=False),
            lambda s, lam: s.run(jnp.zeros(D), lam, X, Y),
        ),
        "ScipyBoundedMinimize": (
            ScipyBoundedMinimize(fun=ridge_objective, implicit_diff=False),
            lambda s, lam: s.run(jnp.zeros(D), box, lam, X, Y),
        ),
        "ScipyRootFinding": (
            ScipyRootFinding(optimality_fun=ridge_gradient, implicit_diff=False),
            lambda s, lam: s.run(jnp.zeros(D), lam, X, Y),
        ),
        "ScipyLeastSquares": (
            ScipyLeastSquares(
                fun=lambda w, lam, X, y: jnp.concatenate([X @ w - y, jnp.sqrt(lam) * w]),
                implicit_diff=False,
            ),
            lambda s, lam: s.run(jnp.zeros(D), lam, X, Y),
        ),
        "HostSolver": (
            HostSolver(_sklearn_ridge, ridge_gradient, implicit_diff=False),
            lambda s, lam: s.run(jnp.zeros(D), lam, X, Y),
        ),
        "CvxpyQP": (  # ridge as the QP min ½ wᵀ(XᵀX + lam I)w − (Xᵀy)ᵀw
            CvxpyQP(solver="CLARABEL", implicit_diff=False),
            lambda s, lam: _primal(s.run(None, (X.T @ X + lam * jnp.eye(D), -X.T @ Y))),
        ),
    }


def _primal(step):
    return step._replace(params=step.params.primal)


@pytest.mark.parametrize("name", list(_host_solvers_without_derivative()))
def test_implicit_diff_false_solves_and_refuses_derivatives_by_name(name):
    """A host solve has no iterations in JAX to unroll: with implicit_diff=False it solves (under
    jit and vmap too), and differentiating it, in any mode, raises a TypeError naming the solver
    and implicit_diff (not JAX's 'Pure callbacks do not support JVP')."""
    solver, run = _host_solvers_without_derivative()[name]
    np.testing.assert_allclose(run(solver, 0.7).params, ridge_reference(0.7), rtol=1e-6)
    batch = jax.jit(jax.vmap(lambda lam: run(solver, lam).params))(jnp.asarray([0.7, 1.3]))
    np.testing.assert_allclose(batch[1], ridge_reference(1.3), rtol=1e-6)

    def loss(lam):
        return jnp.sum(run(solver, lam).params)

    message = rf"{name}\(implicit_diff=False\) returns a solution without derivative"
    for differentiate in (
        jax.grad(loss),
        jax.jit(jax.grad(loss)),
        jax.jacfwd(loss),
        lambda lam: jax.jvp(loss, (lam,), (1.0,)),
    ):
        with pytest.raises(TypeError, match=message):
            differentiate(0.7)
    # Differentiating something else leaves the solve alone: its output is a constant there.
    value, grad = jax.value_and_grad(lambda t: t**2 + loss(0.7))(3.0)
    np.testing.assert_allclose(grad, 6.0)
    np.testing.assert_allclose(value, 9.0 + ridge_reference(0.7).sum(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# ScipyBoundedMinimize.


def _box_least_squares_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(15, D))
    y = X @ np.asarray([2.0, -1.0, 0.4, 1.8]) + 0.1 * rng.normal(size=15)
    return X, y, np.full(D, 1.0)


def _least_squares_objective(w, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2)


def test_bounded_minimize_active_bounds_solution_and_derivatives():
    X_np, y_np, upper_np = _box_least_squares_data()
    X, y, upper = jnp.asarray(X_np), jnp.asarray(y_np), jnp.asarray(upper_np)
    solver = ScipyBoundedMinimize(fun=_least_squares_objective)
    w, state = solver.run(jnp.zeros(D), (0.0, upper), X, y)

    reference = scipy.optimize.lsq_linear(X_np, y_np, bounds=(0.0, upper_np), tol=1e-14).x
    np.testing.assert_allclose(w, reference, rtol=1e-6, atol=1e-8)
    assert bool(state.converged)

    # Both bounds are active, each strictly (the gradient pushes out of the box).
    w = np.asarray(w)
    grad = X_np.T @ (X_np @ w - y_np)
    np.testing.assert_allclose(
        state.error, np.linalg.norm(np.clip(w - grad, 0.0, upper_np) - w), rtol=1e-6, atol=1e-14
    )
    at_lower = w <= 1e-10
    at_upper = w >= upper_np - 1e-10
    free = ~(at_lower | at_upper)
    assert at_lower.any() and at_upper.any() and free.any()
    assert np.all(grad[at_lower] > 1e-3) and np.all(grad[at_upper] < -1e-3)

    # Closed form on the free set F (active coordinates fixed at their bounds):
    # w_F = (X_Fᵀ X_F)⁻¹ X_Fᵀ (y − X_U u_U), w_L = 0, w_U = u_U.
    def closed_form(upper, X, y):
        fixed = jnp.where(at_upper, upper, 0.0)
        XF = X[:, free]
        wF = jnp.linalg.solve(XF.T @ XF, XF.T @ (y - X @ fixed))
        return fixed.at[np.flatnonzero(free)].set(wF)

    def through_solver(upper, X, y):
        solution = solver.run(jnp.zeros(D), (0.0, upper), X, y).params
        return outer_loss(solution), solution

    def through_closed_form(upper, X, y):
        solution = closed_form(upper, X, y)
        return outer_loss(solution), solution

    got, _ = jax.jit(jax.grad(through_solver, (0, 1, 2), has_aux=True))(upper, X, y)
    expected, solution = jax.jit(jax.grad(through_closed_form, (0, 1, 2), has_aux=True))(
        upper, X, y
    )
    np.testing.assert_allclose(solution, w, rtol=1e-6, atol=1e-8)
    assert_tree_allclose(got, expected, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# ScipyRootFinding.


def _system(x, theta):
    """G(x, θ) = 0: a small nonlinear system with an invertible ∂₁G at its root."""
    return jnp.stack(
        [
            x[0] + 0.5 * jnp.sin(x[1]) - theta[0],
            x[1] + 0.2 * x[0] ** 3 + theta[1] * x[1] ** 2 - theta[2],
        ]
    )


def _system_np(x, theta):
    return np.asarray(
        [
            x[0] + 0.5 * np.sin(x[1]) - theta[0],
            x[1] + 0.2 * x[0] ** 3 + theta[1] * x[1] ** 2 - theta[2],
        ]
    )


@pytest.mark.parametrize("method", ["hybr", "lm"])
def test_root_finding_solution_and_derivative(method):
    theta_np = np.asarray([0.7, 0.3, 0.5])
    theta = jnp.asarray(theta_np)
    solver = ScipyRootFinding(optimality_fun=_system, method=method)
    x, state = solver.run(jnp.zeros(2), theta)

    reference = scipy.optimize.fsolve(lambda x: _system_np(x, theta_np), np.zeros(2), xtol=1e-13)
    np.testing.assert_allclose(x, reference, rtol=1e-10)
    assert bool(state.converged) and float(state.error) < 1e-10
    np.testing.assert_allclose(state.error, np.linalg.norm(_system_np(np.asarray(x), theta_np)))

    @jax.jit
    def closed_form(x, theta):  # −[∂₁G]⁻¹∂₂G at the root
        return -jnp.linalg.solve(jax.jacfwd(_system)(x, theta), jax.jacfwd(_system, 1)(x, theta))

    expected = np.asarray(closed_form(x, theta))
    run = jax.jit(lambda theta: solver.run(jnp.zeros(2), theta).params)
    np.testing.assert_allclose(jax.jit(jax.jacrev(run))(theta), expected, rtol=1e-8, atol=1e-12)
    # ... and the root itself moves as the closed form says (central differences).
    tangent = np.asarray([0.3, -1.1, 0.8])
    np.testing.assert_allclose(
        finite_difference_jvp(run, theta, tangent, eps=1e-5), expected @ tangent, rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# ScipyLeastSquares.


def _exponential_residual(p, t, y):
    return p[0] * jnp.exp(p[1] * t) - y


@pytest.mark.parametrize("method", ["trf", "lm"])
def test_least_squares_exponential_fit_derivative_vs_finite_differences(method):
    rng = np.random.default_rng(3)
    t_np = np.linspace(0.0, 2.0, 8)
    y_np = 2.0 * np.exp(-0.7 * t_np) + 0.05 * rng.normal(size=8)
    t, y = jnp.asarray(t_np), jnp.asarray(y_np)
    solver = ScipyLeastSquares(residual_fun=_exponential_residual, method=method, tol=1e-14)
    p, state = solver.run(jnp.asarray([1.0, 0.0]), t, y)

    def residual_np(p):
        return p[0] * np.exp(p[1] * t_np) - y_np

    # SciPy alone, with its own finite-difference Jacobian.
    reference = scipy.optimize.least_squares(residual_np, [1.0, 0.0], xtol=1e-15, gtol=1e-15).x
    np.testing.assert_allclose(p, reference, rtol=1e-7)
    assert bool(state.converged)
    residual = residual_np(np.asarray(p))
    np.testing.assert_allclose(state.value, 0.5 * residual @ residual, rtol=1e-12)

    # The reference: SciPy's fit polished by Newton's method on ∂₁r(p)ᵀr(p) = 0 (exact to
    # rounding, so that central differences of it are accurate to ~1e-10).
    def polished_fit(y_np):
        p = scipy.optimize.least_squares(
            lambda p: p[0] * np.exp(p[1] * t_np) - y_np, [1.0, 0.0], xtol=1e-15, gtol=1e-15
        ).x
        for _ in range(3):
            e = np.exp(p[1] * t_np)
            r, J = p[0] * e - y_np, np.stack([e, p[0] * t_np * e], axis=1)
            hessian = J.T @ J + np.asarray([[0.0, r @ (t_np * e)], [r @ (t_np * e), 0.0]])
            hessian[1, 1] += r @ (p[0] * t_np**2 * e)
            p = p - np.linalg.solve(hessian, J.T @ r)
        return p

    np.testing.assert_allclose(p, polished_fit(y_np), rtol=1e-8)
    run = jax.jit(lambda y: solver.run(jnp.asarray([1.0, 0.0]), t, y).params)
    tangent = rng.normal(size=8)
    implicit = jax.jit(lambda y, t: jax.jvp(run, (y,), (t,))[1])(y, tangent)
    fd = finite_difference_jvp(polished_fit, y_np, tangent, eps=1e-4)
    np.testing.assert_allclose(implicit, fd, rtol=1e-6, atol=1e-9)
    # Reverse mode agrees with forward mode: ⟨vᵀJ, t⟩ = ⟨v, J t⟩.
    v = np.asarray([0.3, -1.2])
    vjp = jax.jit(jax.grad(lambda y: jnp.asarray(v) @ run(y)))(y)
    np.testing.assert_allclose(np.asarray(vjp) @ tangent, v @ implicit, rtol=1e-8)


# ---------------------------------------------------------------------------------------------
# HostSolver.


def _gradient_step(w, alpha, X, y):
    return w - 0.05 * jax.grad(ridge_objective)(w, alpha, X, y)


@pytest.mark.parametrize(
    ("kind", "condition"),
    [("root", optimality.stationary(ridge_objective)), ("fixed_point", _gradient_step)],
)
def test_host_solver_sklearn_ridge_hypergradient_under_jit(kind, condition):
    solver = HostSolver(_sklearn_ridge, condition, kind=kind)
    alpha = jnp.asarray(0.8)
    w, state = solver.run(jnp.zeros(D), alpha, X, Y)
    np.testing.assert_allclose(w, ridge_reference(0.8), rtol=1e-10)
    assert bool(state.converged) and float(state.error) < 1e-10 and int(state.iter_num) == -1

    def through_solver(alpha, X, y):
        return outer_loss(solver.run(jnp.zeros(D), alpha, X, y).params)

    got = jax.jit(jax.grad(through_solver, argnums=(0, 1, 2)))(alpha, X, Y)
    assert_tree_allclose(got, closed_form_grads(alpha, X, Y), rtol=1e-8, atol=1e-10)


def test_host_solver_result_shape_from_the_data():
    """No init_params: the output shape comes from result_shape(init, alpha, X, y)."""

    def solve_fn(init, alpha, X, y):
        assert init is None and isinstance(X, np.ndarray)
        return _sklearn_ridge(None, alpha, X, y)

    solver = HostSolver(
        solve_fn,
        optimality.stationary(ridge_objective),
        result_shape=lambda init, alpha, X, y: jax.ShapeDtypeStruct(X.shape[1:], X.dtype),
    )
    w = solver.run(None, 0.8, X, Y).params
    np.testing.assert_allclose(w, ridge_reference(0.8), rtol=1e-10)
    got = jax.jit(jax.grad(lambda y: outer_loss(solver.run(None, 0.8, X, y).params)))(Y)
    np.testing.assert_allclose(got, closed_form_grads(0.8, X, Y)[2], rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ScipyMinimize(fun=3.0), TypeError, "fun must be callable"),
        (lambda: ScipyBoundedMinimize(fun=None), TypeError, "fun must be callable"),
        (lambda: ScipyRootFinding(optimality_fun="F"), TypeError, "optimality_fun"),
        (lambda: ScipyLeastSquares(residual_fun=1), TypeError, "residual_fun"),
        (lambda: HostSolver(solve_fn=None, optimality_fun=abs), TypeError, "solve_fn"),
        (lambda: ScipyMinimize(fun=ridge_objective, method="L-BFGS"), ValueError, "'L-BFGS'"),
        (lambda: ScipyBoundedMinimize(fun=ridge_objective, method="BFGS"), ValueError, "'BFGS'"),
        (lambda: ScipyRootFinding(optimality_fun=_system, method="newton"), ValueError, "'newton'"),
        (lambda: ScipyLeastSquares(residual_fun=_system, method="cg"), ValueError, "'cg'"),
        (lambda: ScipyMinimize(fun=ridge_objective, tol=-1.0), ValueError, "tol"),
        (lambda: ScipyMinimize(fun=ridge_objective, options=[1]), TypeError, "options"),
        (lambda: ScipyMinimize(fun=ridge_objective, dtype=np.int32), TypeError, "dtype"),
        (lambda: ScipyMinimize(fun=ridge_objective, solve="svd"), ValueError, "solve"),
        (
            lambda: ScipyLeastSquares(residual_fun=_system, options={"loss": "huber"}),
            ValueError,
            "loss",
        ),
        (lambda: HostSolver(abs, abs, kind="newton"), ValueError, "kind"),
    ],
)
def test_bad_options_raise_naming_the_option(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_host_solver_wrong_output_shape_is_a_clear_error():
    solver = HostSolver(
        lambda w0, alpha, X, y: np.zeros(D + 1), optimality.stationary(ridge_objective)
    )
    with pytest.raises(
        jax.errors.JaxRuntimeError,
        match=r"solve_fn <lambda> returned leaf 0 of shape \(5,\), expected \(4,\)",
    ):
        jax.block_until_ready(solver.run(jnp.zeros(D), 0.8, X, Y))


def test_bounds_must_be_a_pair():
    solver = ScipyBoundedMinimize(fun=_least_squares_objective, jit=False)
    with pytest.raises(TypeError, match="bounds must be a pair"):
        solver.run(jnp.zeros(D), 0.0, X, Y)
    with pytest.raises(TypeError, match="a bound is None"):
        solver.run(jnp.zeros(D), (None, 1.0), X, Y)


# ---------------------------------------------------------------------------------------------
# Every argument of every host wrapper may be passed by keyword (issue 12, item 15).

_Y_KW = jnp.array([1.0, -1.0, 2.0])
_X_KW = 2.0 * jnp.eye(3)


def _kw_objective(w, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2)


def _kw_cube_root(x, theta):
    return x**3 - theta


def _kw_residual(p, y):
    return p - y


def _kw_host_solve(w0, X, y):
    return np.linalg.solve(np.asarray(X), np.asarray(y))


_KEYWORD_CASES = {
    # name: (solver, positional args, keyword args, solution(y), ∂solution/∂y) with y = _Y_KW
    "ScipyMinimize": (
        ScipyMinimize(fun=_kw_objective, tol=1e-12),
        lambda y: ((_X_KW, y), {"X": _X_KW, "y": y}),
        lambda y: y / 2,
        lambda y: 0.5 * jnp.eye(3),
    ),
    "ScipyBoundedMinimize": (
        ScipyBoundedMinimize(fun=_kw_objective, tol=1e-12),
        lambda y: (((0.0, jnp.inf), _X_KW, y), {"bounds": (0.0, jnp.inf), "X": _X_KW, "y": y}),
        lambda y: jnp.maximum(y, 0.0) / 2,
        lambda y: jnp.diag(jnp.where(y > 0, 0.5, 0.0)),
    ),
    "ScipyRootFinding": (
        ScipyRootFinding(optimality_fun=_kw_cube_root, tol=1e-12),
        lambda y: ((y + 2.0,), {"theta": y + 2.0}),
        lambda y: jnp.cbrt(y + 2.0),
        lambda y: jnp.diag(1.0 / (3.0 * jnp.cbrt(y + 2.0) ** 2)),
    ),
    "ScipyLeastSquares": (
        ScipyLeastSquares(residual_fun=_kw_residual, tol=1e-12),
        lambda y: ((y,), {"y": y}),
        lambda y: y,
        lambda y: jnp.eye(3),
    ),
    "HostSolver": (
        HostSolver(_kw_host_solve, optimality.stationary(_kw_objective)),
        lambda y: ((_X_KW, y), {"X": _X_KW, "y": y}),
        lambda y: y / 2,
        lambda y: 0.5 * jnp.eye(3),
    ),
}


@pytest.mark.parametrize("name", sorted(_KEYWORD_CASES))
def test_host_wrapper_family_arguments_by_keyword(name):
    """Each wrapper called with its arguments positionally, all by keyword (init_params too),
    and mixed: the same solution and the same derivative, both against closed forms."""
    solver, arguments, solution, jacobian = _KEYWORD_CASES[name]
    init = jnp.ones(3)

    def positional(y):
        args, _ = arguments(y)
        return solver.run(init, *args).params

    def keyword(y):
        _, kwargs = arguments(y)
        return solver.run(init_params=init, **kwargs).params

    def mixed(y):  # the first argument positionally, the rest by keyword
        args, kwargs = arguments(y)
        rest = dict(list(kwargs.items())[1:])
        return solver.run(init, args[0], **rest).params

    for call in (positional, keyword, mixed):
        np.testing.assert_allclose(call(_Y_KW), solution(_Y_KW), rtol=1e-7, atol=1e-8)
        jac = jax.jit(jax.jacobian(call))(_Y_KW)
        np.testing.assert_allclose(jac, jacobian(_Y_KW), rtol=1e-6, atol=1e-8)
