"""Property-based tests (hypothesis): derivatives of random problems, and random bad inputs.

Part 1: on random well-conditioned problems (ridge, an equality-constrained QP, the lasso, a
quadratic on the simplex, a contractive fixed point) the implicit derivative of the solution
matches central finite differences, in float64, to a tolerance that fits the solver's.

Part 2: random bad inputs (NaN or ±inf sprinkled into the data or the hyperparameter, data
scaled to 0 or to huge magnitudes) never crash or hang, and never return a derivative without
a flag: either the run says it failed (``state.converged`` False), or the derivative has a NaN,
or a warning was emitted, or else the derivative is the exact one.

Each property draws values (not shapes), so each compiles once; ``derandomize=True`` makes the
examples the same on every run.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from helpers import finite_difference_jvp
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from implicitdiff import custom_root, projections, prox, solvers

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
seeds = st.integers(0, 2**31 - 1)


def _rng(seed):
    return np.random.RandomState(seed)


def _relative_error(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


# ---------------------------------------------------------------------------------------------
# Part 1: implicit derivatives match finite differences.


def ridge_objective(w, lam, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def ridge_closed_form(lam, X, y):
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)


RIDGE = solvers.LBFGS(fun=ridge_objective, tol=1e-11, maxiter=200)


@jax.jit
def _ridge_directional(lam, X, y, v, t_lam, t_X):
    """vᵀ J (t_lam, t_X), J the derivative of the LBFGS solution, by reverse mode."""
    grads = jax.grad(lambda lam, X: v @ RIDGE.run(jnp.zeros(3), lam, X, y)[0], (0, 1))(lam, X)
    return grads[0] * t_lam + jnp.sum(grads[1] * t_X)


@PROPERTY
@given(seed=seeds, lam=st.floats(0.05, 20.0))
def test_ridge_reverse_mode_matches_finite_differences(seed, lam):
    rng = _rng(seed)
    X, y, v = rng.randn(8, 3), rng.randn(8), rng.randn(3)
    t_lam, t_X = rng.randn(), rng.randn(8, 3)
    got = _ridge_directional(lam, X, y, v, t_lam, t_X)
    expected = finite_difference_jvp(
        lambda p: v @ ridge_closed_form(p[0], p[1], y), (lam, X), (t_lam, t_X), eps=1e-6
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


EQ_QP = solvers.EqualityConstrainedQP()


def _eq_qp_solution(Q, c, A, b):
    return EQ_QP.run(None, (Q, c), (A, b)).params.primal


_eq_qp_jvp = jax.jit(lambda primals, tangents: jax.jvp(_eq_qp_solution, primals, tangents)[1])


@PROPERTY
@given(seed=seeds, scale=st.floats(0.1, 10.0))
def test_equality_qp_forward_mode_matches_finite_differences(seed, scale):
    rng = _rng(seed)
    M = rng.randn(4, 4)
    Q = scale * (M @ M.T + np.eye(4))
    c, A, b = rng.randn(4), rng.randn(2, 4), rng.randn(2)
    primals = (Q, c, A, b)
    tangents = tuple(rng.randn(*np.shape(p)) for p in primals)
    tangents = (tangents[0] + tangents[0].T, *tangents[1:])  # Q stays symmetric
    got = _eq_qp_jvp(primals, tangents)
    expected = finite_difference_jvp(lambda p: _eq_qp_solution(*p), primals, tangents, eps=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


def least_squares(w, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2)


LASSO = solvers.ProximalGradient(fun=least_squares, prox=prox.l1, tol=1e-12, maxiter=5000)
_lasso = jax.jit(lambda lam, X, y: LASSO.run(jnp.zeros(5), lam, X, y))
_lasso_grad = jax.jit(jax.grad(lambda lam, X, y, v: v @ LASSO.run(jnp.zeros(5), lam, X, y)[0]))


@PROPERTY
@given(seed=seeds, fraction=st.floats(0.05, 0.8))
def test_lasso_derivative_matches_finite_differences(seed, fraction):
    rng = _rng(seed)
    X, y, v = rng.randn(20, 5), rng.randn(20), rng.randn(5)
    lam = fraction * float(np.max(np.abs(X.T @ y)))  # below λ_max: a nonzero solution
    eps = 1e-4 * lam
    w, state = _lasso(lam, X, y)
    w_plus, _ = _lasso(lam + eps, X, y)
    w_minus, _ = _lasso(lam - eps, X, y)
    assert bool(state.converged)
    support = [np.abs(np.asarray(z)) > 1e-9 for z in (w, w_plus, w_minus)]
    # The solution is piecewise linear in λ: finite differences are exact on one piece.
    assume(np.array_equal(support[0], support[1]) and np.array_equal(support[0], support[2]))
    expected = v @ (np.asarray(w_plus) - np.asarray(w_minus)) / (2 * eps)
    np.testing.assert_allclose(_lasso_grad(lam, X, y, v), expected, rtol=1e-6, atol=1e-8)


def simplex_quadratic(p, Q, c):
    return 0.5 * p @ Q @ p + c @ p


SIMPLEX_QP = solvers.ProjectedGradient(
    fun=simplex_quadratic, projection=projections.simplex, tol=1e-12, maxiter=5000
)
_simplex_qp = jax.jit(lambda Q, c: SIMPLEX_QP.run(jnp.ones(5) / 5, 1.0, Q, c))
_simplex_qp_jvp = jax.jit(
    lambda Q, c, t_Q, t_c: jax.jvp(lambda Q, c: _simplex_qp(Q, c)[0], (Q, c), (t_Q, t_c))[1]
)


@PROPERTY
@given(seed=seeds, spread=st.floats(0.1, 3.0))
def test_simplex_quadratic_derivative_matches_finite_differences(seed, spread):
    rng = _rng(seed)
    M = rng.randn(5, 5)
    Q, c = M @ M.T / 5 + np.eye(5), spread * rng.randn(5)
    t_Q, t_c = rng.randn(5, 5), rng.randn(5)
    t_Q = t_Q + t_Q.T
    eps = 1e-5
    p, state = _simplex_qp(Q, c)
    p_plus, _ = _simplex_qp(Q + eps * t_Q, c + eps * t_c)
    p_minus, _ = _simplex_qp(Q - eps * t_Q, c - eps * t_c)
    assert bool(state.converged)
    support = [np.asarray(z) > 1e-9 for z in (p, p_plus, p_minus)]
    assume(np.array_equal(support[0], support[1]) and np.array_equal(support[0], support[2]))
    expected = (np.asarray(p_plus) - np.asarray(p_minus)) / (2 * eps)
    np.testing.assert_allclose(_simplex_qp_jvp(Q, c, t_Q, t_c), expected, rtol=1e-5, atol=1e-7)


def contraction(x, W, theta):
    """T(x) = ½ tanh(W x) + θ: a contraction (factor ≤ ½ for ‖W‖₂ ≤ 1)."""
    return 0.5 * jnp.tanh(W @ x) + theta


FIXED_POINT_SOLVERS = {
    "anderson": solvers.AndersonAcceleration(fixed_point_fun=contraction, tol=1e-13),
    "iteration": solvers.FixedPointIteration(fixed_point_fun=contraction, tol=1e-13),
}
_fixed_point = {
    name: jax.jit(lambda W, theta, s=s: s.run(jnp.zeros(4), W, theta))
    for name, s in FIXED_POINT_SOLVERS.items()
}
_fixed_point_jvp = {
    name: jax.jit(
        lambda W, theta, t_W, t_theta, f=f: jax.jvp(
            lambda W, theta: f(W, theta)[0], (W, theta), (t_W, t_theta)
        )[1]
    )
    for name, f in _fixed_point.items()
}


@PROPERTY
@given(seed=seeds, solver=st.sampled_from(sorted(FIXED_POINT_SOLVERS)), gain=st.floats(0.1, 1.0))
def test_fixed_point_derivative_matches_finite_differences(seed, solver, gain):
    rng = _rng(seed)
    W = rng.randn(4, 4)
    W = gain * W / np.linalg.norm(W, 2)
    theta, t_W, t_theta = rng.randn(4), rng.randn(4, 4), rng.randn(4)
    _, state = _fixed_point[solver](W, theta)
    assert bool(state.converged)
    expected = finite_difference_jvp(
        lambda p: _fixed_point[solver](*p)[0], (W, theta), (t_W, t_theta), eps=1e-5
    )
    got = _fixed_point_jvp[solver](W, theta, t_W, t_theta)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Part 2: random bad inputs are flagged (or harmless).

CORRUPTIONS = [np.nan, np.inf, -np.inf]
SCALES = [0.0, 1e-100, 1e100, 1e200]
LAMBDAS = [1.0, 0.0, np.nan, np.inf, -np.inf, 1e300, -1e3]


@st.composite
def corrupted_ridge(draw):
    """(lam, X, y, must_flag): random data, possibly with NaN/±inf entries and a scaled X, and λ.

    ``must_flag``: NaN or ±inf in the data, or λ NaN or −inf. (λ = +inf is a limit with an
    answer, w = 0 and derivative 0: it must be flagged or exact, like the scaled data.)"""
    rng = _rng(draw(seeds))
    X, y = rng.randn(8, 3), rng.randn(8)
    X = X * draw(st.sampled_from([1.0, *SCALES]))
    entries = draw(
        st.lists(st.tuples(st.integers(0, 32), st.sampled_from(CORRUPTIONS)), max_size=3)
    )
    for position, value in entries:
        if position < 24:
            X[position // 3, position % 3] = value
        else:
            y[position - 24] = value
    lam = draw(st.sampled_from(LAMBDAS))
    must_flag = bool(entries) or np.isnan(lam) or lam == -np.inf
    return lam, X, y, must_flag


RIDGE_BAD = solvers.LBFGS(fun=ridge_objective, tol=1e-8, maxiter=100)
_ridge_bad_grad = jax.jit(
    jax.grad(
        lambda lam, X, y: (lambda out: (jnp.sum(out[0]), out[1].converged))(
            RIDGE_BAD.run(jnp.zeros(3), lam, X, y)
        ),
        has_aux=True,
    )
)


def _flagged_or_exact(call, exact, must_flag, rtol):
    """Run ``call()`` -> (derivative, converged); assert it is flagged, or exact when not.

    ``exact()`` returns the true derivative and the absolute error that the solver's tolerance
    allows (Theorem 1: ‖J(x̂) − J(x*)‖ ≤ (β/α + γR/α²)‖x̂ − x*‖, with ‖x̂ − x*‖ ≤ tol/α for a
    gradient-norm tolerance on an α-strongly convex objective)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        derivative, converged = call()
        derivative = np.asarray(derivative)
    flagged = (not bool(converged)) or bool(np.any(np.isnan(derivative))) or bool(caught)
    event(f"must_flag={must_flag}, flagged={flagged}")
    if must_flag:
        assert flagged, "a non-finite input gave an unflagged derivative"
    if not flagged:
        with np.errstate(all="ignore"):
            expected, atol = exact()
        assert np.all(np.isfinite(expected)), "an unflagged derivative where none exists"
        np.testing.assert_allclose(derivative, expected, rtol=rtol, atol=atol)


def _ridge_exact(lam, X, y, tol, minimum=True):
    """d/dλ Σ w*(λ) = −1ᵀH⁻²Xᵀy, and its allowed error √3 · 10 tol/α² (α = λ_min(H)).

    ``minimum``: the solver minimizes, so H must be positive definite; else (custom_root, which
    differentiates a root of ∇f, a saddle point too) H must only be non-singular."""
    if lam == np.inf:
        return 0.0, 1e-12
    H = X.T @ X + lam * np.eye(3)
    eigenvalues = np.linalg.eigvalsh(H)
    alpha = eigenvalues[0] if minimum else np.min(np.abs(eigenvalues))
    assert alpha > 0, "an unflagged derivative where the problem has no (unique) solution"
    expected = -np.sum(np.linalg.solve(H, np.linalg.solve(H, X.T @ y)))
    return expected, 10 * np.sqrt(3) * tol / alpha**2


@PROPERTY
@given(problem=corrupted_ridge())
def test_bad_ridge_data_is_flagged(problem):
    lam, X, y, must_flag = problem

    exact = lambda: _ridge_exact(lam, X, y, RIDGE_BAD.tol)  # noqa: E731
    _flagged_or_exact(lambda: _ridge_bad_grad(lam, X, y), exact, must_flag, rtol=1e-5)


@custom_root(lambda x, lam, X, y: X.T @ (X @ x - y) + lam * x)
def _ridge_root(init_x, lam, X, y):
    return ridge_closed_form(lam, X, y)


_ridge_root_grad = jax.jit(
    jax.grad(lambda lam, X, y: (jnp.sum(_ridge_root(jnp.zeros(3), lam, X, y)), True), has_aux=True)
)


@PROPERTY
@given(problem=corrupted_ridge())
def test_bad_custom_root_data_is_flagged(problem):
    lam, X, y, must_flag = problem

    exact = lambda: _ridge_exact(lam, X, y, tol=1e-15, minimum=False)  # noqa: E731
    # custom_root has no convergence flag of its own: NaN or a BackwardSolveWarning, or exact.
    _flagged_or_exact(lambda: _ridge_root_grad(lam, X, y), exact, must_flag, rtol=1e-6)


LASSO_BAD = solvers.ProximalGradient(fun=least_squares, prox=prox.l1, tol=1e-8, maxiter=200)
_lasso_bad_grad = jax.jit(
    jax.grad(
        lambda lam, X, y: (lambda out: (jnp.sum(out[0]), out[1].converged))(
            LASSO_BAD.run(jnp.zeros(3), lam, X, y)
        ),
        has_aux=True,
    )
)


@PROPERTY
@given(problem=corrupted_ridge())
def test_bad_lasso_data_is_flagged(problem):
    lam, X, y, must_flag = problem

    def exact():
        w = np.asarray(LASSO.run(jnp.zeros(3), lam, X, y)[0])
        support = np.abs(w) > 1e-9
        if not support.any():  # ‖Xᵀy‖∞ < λ, an open condition: w = 0 near λ
            return 0.0, 1e-12
        eigenvalues = np.linalg.eigvalsh(X.T @ X)
        mu, L = eigenvalues[0], eigenvalues[-1]
        assert mu > 0, "an unflagged derivative of a lasso without a unique solution"
        # the gradient-mapping tolerance bounds ‖ŵ − w*‖ by about tol (1 + L/μ)/μ
        atol = 10 * np.sqrt(3) * LASSO_BAD.tol * (1 + L / mu) / mu**2
        XS = X[:, support]
        # on the support, w_S = (X_Sᵀ X_S)⁻¹ (X_Sᵀ y − λ sign(w_S))
        return -np.sum(np.linalg.solve(XS.T @ XS, np.sign(w[support]))), atol

    _flagged_or_exact(lambda: _lasso_bad_grad(lam, X, y), exact, must_flag, rtol=1e-5)
