"""float32 paths: dtypes stay float32 end to end, and hypergradients reach the measured accuracy.

The suite runs with x64 enabled (tests/conftest.py), so every array here is made float32
explicitly, and Python numbers are left weakly typed. Each hypergradient is compared with an
independent float64 reference computed in NumPy (closed forms on the solution's support, a
Newton solve for logistic regression), with a tolerance about ten times the relative error
measured for it (docs/failure_modes.md, "float32").
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from implicitdiff import custom_root, linear_solve, losses, projections, prox, solvers

F32 = jnp.float32


def f32(*arrays):
    return tuple(jnp.asarray(a, F32) for a in arrays)


def relative_error(got, expected):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def no_warnings(fun, *args):
    """fun(*args), failing on any warning (a BackwardSolveWarning would flag a float32 path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fun(*args)


@functools.cache
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X, y = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
    return X[:300], y[:300], X[300:], y[300:]


@functools.cache
def breast_cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return X[:400], y[:400].astype(float), X[400:], y[400:].astype(float)


# ---------------------------------------------------------------------------------------------
# Ridge through custom_root with a CG solver: the README's example, in float32.


def ridge_condition(x, lam, X, y):
    return X.T @ (X @ x - y) + lam * x


@custom_root(ridge_condition, solve=functools.partial(linear_solve.cg, tol=1e-6))
def ridge_cg(init_x, lam, X, y):
    x, _ = jax.scipy.sparse.linalg.cg(
        lambda v: X.T @ (X @ v) + lam * v, X.T @ y, x0=init_x, tol=1e-6, maxiter=1000
    )
    return x


def ridge_validation(log_lam, X, y, X_val, y_val):
    x = ridge_cg(jnp.zeros(X.shape[1], X.dtype), jnp.exp(log_lam), X, y)
    return jnp.mean((X_val @ x - y_val) ** 2)


def ridge_reference(log_lam, X, y, X_val, y_val):
    """d/dlog λ of the validation loss in float64: dx/dλ = −H⁻¹x, H = XᵀX + λI."""
    lam = np.exp(log_lam)
    H = X.T @ X + lam * np.eye(X.shape[1])
    x = np.linalg.solve(H, X.T @ y)
    dx = -lam * np.linalg.solve(H, x)
    return 2 / len(y_val) * (X_val @ x - y_val) @ (X_val @ dx)


@pytest.mark.parametrize("log_lam", [0.0, 4.0])
def test_ridge_cg_float32(log_lam):
    data = diabetes()
    grad = jax.jit(jax.grad(ridge_validation))
    g = no_warnings(grad, F32(log_lam), *f32(*data))
    assert g.dtype == F32
    assert relative_error(g, ridge_reference(log_lam, *data)) < 2e-4  # measured ≤ 1.8e-5


# ---------------------------------------------------------------------------------------------
# The lasso by ProximalGradient.


def mean_squares(w, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2) / X.shape[0]


LASSO = solvers.ProximalGradient(fun=mean_squares, prox=prox.l1, tol=1e-6, maxiter=20000)


def lasso_validation(lam, X, y, X_val, y_val):
    w, state = LASSO.run(jnp.zeros(X.shape[1], X.dtype), lam, X, y)
    return jnp.mean((X_val @ w - y_val) ** 2), (w, state)


def lasso_reference(lam, X, y, X_val, y_val):
    """The float64 hypergradient from scikit-learn's lasso (the same objective, α = λ) and the
    closed form on its support S: dw_S/dλ = −(X_SᵀX_S/n)⁻¹ sign(w_S)."""
    from sklearn.linear_model import Lasso

    w = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y).coef_
    S = np.abs(w) > 0
    dw = np.zeros_like(w)
    dw[S] = -np.linalg.solve(X[:, S].T @ X[:, S] / len(y), np.sign(w[S]))
    return 2 / len(y_val) * (X_val @ w - y_val) @ (X_val @ dw)


@pytest.mark.parametrize("lam", [0.03, 0.1])
def test_lasso_float32(lam):
    data = diabetes()
    grad = jax.jit(jax.grad(lasso_validation, has_aux=True))
    g, (w, state) = no_warnings(grad, F32(lam), *f32(*data))
    assert bool(state.converged)
    assert g.dtype == w.dtype == state.error.dtype == F32
    assert relative_error(g, lasso_reference(lam, *data)) < 1e-4  # measured ≤ 6e-6


# ---------------------------------------------------------------------------------------------
# ℓ2-regularized logistic regression by LBFGS.


def logistic_objective(w, lam, X, y):
    return jnp.mean(losses.binary_logistic_loss(y, X @ w)) + 0.5 * lam * jnp.sum(w**2)


LOGISTIC = solvers.LBFGS(fun=logistic_objective, tol=1e-5, maxiter=1000)


def logistic_validation(log_lam, X, y, X_val, y_val):
    w, state = LOGISTIC.run(jnp.zeros(X.shape[1], X.dtype), jnp.exp(log_lam), X, y)
    return jnp.mean(losses.binary_logistic_loss(y_val, X_val @ w)), (w, state)


def logistic_reference(log_lam, X, y, X_val, y_val):
    """float64: w by Newton's method, then dw/dlog λ = −λ H⁻¹ w (H the Hessian at w)."""
    lam = np.exp(log_lam)
    n, d = X.shape
    w = np.zeros(d)
    for _ in range(50):
        s = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (s - y) / n + lam * w
        H = (X.T * (s * (1 - s))) @ X / n + lam * np.eye(d)
        w = w - np.linalg.solve(H, grad)
    s = 1 / (1 + np.exp(-X @ w))
    H = (X.T * (s * (1 - s))) @ X / n + lam * np.eye(d)
    dw = -lam * np.linalg.solve(H, w)
    s_val = 1 / (1 + np.exp(-X_val @ w))
    return (s_val - y_val) @ (X_val @ dw) / len(y_val)


@pytest.mark.parametrize("log_lam", [-4.0, 0.0])
def test_logistic_lbfgs_float32(log_lam):
    data = breast_cancer()
    grad = jax.jit(jax.grad(logistic_validation, has_aux=True))
    g, (w, state) = no_warnings(grad, F32(log_lam), *f32(*data))
    assert bool(state.converged)
    assert g.dtype == w.dtype == state.error.dtype == F32
    assert relative_error(g, logistic_reference(log_lam, *data)) < 3e-4  # measured ≤ 1.9e-5


# ---------------------------------------------------------------------------------------------
# A quadratic on the simplex, by ProjectedGradient and MirrorDescent.


def simplex_quadratic(p, Q, c):
    return 0.5 * p @ Q @ p + c @ p


def simplex_problem(seed, n=20):
    rng = np.random.RandomState(seed)
    M = rng.randn(n, n)
    return M @ M.T / n + 0.1 * np.eye(n), rng.randn(n), rng.randn(n)


def simplex_reference(Q, c, v):
    """vᵀ dp/dc in float64: p by projected gradient in NumPy, then on its support S (from the
    KKT system Q_SS p_S + c_S = μ1, 1ᵀp_S = 1) dp_S/dc_S = −(Q⁻¹ − Q⁻¹11ᵀQ⁻¹ / 1ᵀQ⁻¹1)."""
    n = len(c)
    step = 1 / np.linalg.eigvalsh(Q)[-1]
    p = np.ones(n) / n
    for _ in range(20000):
        z = p - step * (Q @ p + c)
        u = np.sort(z)[::-1]
        k = np.arange(1, n + 1)
        count = np.sum(u * k > np.cumsum(u) - 1)
        p = np.maximum(z - (np.cumsum(u)[count - 1] - 1) / count, 0)
    S = p > 1e-12
    inv = np.linalg.inv(Q[np.ix_(S, S)])
    one = np.ones(S.sum())
    J = -(inv - np.outer(inv @ one, one @ inv) / (one @ inv @ one))
    grad = np.zeros(n)
    grad[S] = J.T @ v[S]
    return grad


SIMPLEX_SOLVERS = {
    "projected_gradient": (
        solvers.ProjectedGradient(
            fun=simplex_quadratic, projection=projections.simplex, tol=1e-5, maxiter=20000
        ),
        1.0,
        1e-5,  # tolerance; measured ≤ 2.4e-7 on 5 problems
    ),
    "mirror_descent": (
        solvers.MirrorDescent(fun=simplex_quadratic, stepsize=0.5, tol=1e-6, maxiter=20000),
        None,
        5e-4,  # measured 2.1e-5 on this problem (see docs: near-active constraints are worse)
    ),
}


@pytest.mark.parametrize("name", sorted(SIMPLEX_SOLVERS))
def test_simplex_quadratic_float32(name):
    solver, hyperparams, tolerance = SIMPLEX_SOLVERS[name]
    Q, c, v = simplex_problem(seed=0)
    hyper = None if hyperparams is None else F32(hyperparams)

    def loss(c, Q, v):
        p, state = solver.run(jnp.ones(len(c), F32) / len(c), hyper, Q, c)
        return v @ p, (p, state)

    g, (p, state) = no_warnings(jax.jit(jax.grad(loss, has_aux=True)), *f32(c, Q, v))
    assert bool(state.converged)
    assert g.dtype == p.dtype == F32
    assert relative_error(g, simplex_reference(Q, c, v)) < tolerance


# ---------------------------------------------------------------------------------------------
# dtypes of the catalog and of the flagged paths.


@pytest.mark.parametrize(
    "projection, hyperparams",
    [
        (projections.simplex, 1.0),
        (projections.l2_ball, 1.0),
        (projections.l1_ball, 1.0),
        (projections.linf_ball, 0.5),
        (projections.box, (-0.5, 0.5)),
        (prox.l1, 0.3),
        (prox.group_lasso, 0.3),
    ],
)
def test_catalog_keeps_float32(projection, hyperparams):
    x = jnp.asarray([1.5, -0.25, 0.75], F32)
    assert projection(x, hyperparams).dtype == F32
    # traced float32 hyperparameters, valid and invalid (the invalid gives NaN, still float32)
    traced = jax.jit(projection)
    assert traced(x, jax.tree_util.tree_map(F32, hyperparams)).dtype == F32
    invalid = (F32(0.5), F32(-0.5)) if isinstance(hyperparams, tuple) else F32(-1.0)
    out = traced(x, invalid)
    assert out.dtype == F32 and bool(jnp.all(jnp.isnan(out)))
    jacobian = jax.jacobian(projection)(x, hyperparams)
    assert jacobian.dtype == F32


def test_linear_solve_float32_default_tolerance():
    """Backward solves in float32 use default_tol(float32) ≈ 2.4e-5 and return float32."""
    rng = np.random.RandomState(0)
    M = rng.randn(30, 30)
    A = jnp.asarray(M @ M.T / 30 + np.eye(30), F32)
    b = jnp.asarray(rng.randn(30), F32)
    exact = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    for name in ("cg", "gmres", "lu"):
        solve = getattr(linear_solve, name)
        x = jax.jit(lambda A, b, solve=solve: solve(lambda v: A @ v, b))(A, b)
        assert x.dtype == F32
        assert relative_error(x, exact) < 1e-4, name
    assert linear_solve.default_tol(F32) == pytest.approx(200 * np.finfo(np.float32).eps)
