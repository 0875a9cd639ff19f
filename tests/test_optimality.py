"""Tests of implicitdiff.optimality: each builder on a problem with a known solution.

Every builder is checked twice. First its value at an arbitrary point against the formula it
stands for: a wrong sign or a missing term in F or T that leaves the roots where they are (and so
the derivatives unchanged) shows up only there. Then the implicit derivative at a solution found
by a small solver written here (never the builder's own map), against a closed form or central
finite differences of a SciPy reference, in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import (
    assert_derivatives_match,
    assert_tree_allclose,
    finite_difference_grad,
    finite_difference_jvp,
    random_tangent,
)
from problems import ridge_objective
from problems import ridge_solution as ridge_closed_form

from implicitdiff import (
    custom_fixed_point,
    custom_root,
    optimality,
    projections,
    prox,
    root_jvp,
    root_vjp,
)

# ---------------------------------------------------------------------------------------------
# Shared pieces: data, a fixed-point loop, the least-squares loss.


def _regression(n, p, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = X @ rng.normal(size=p) + 0.5 * rng.normal(size=n)
    return jnp.asarray(X), jnp.asarray(y)


def _iterate(step, x0, tol=1e-15, maxiter=20_000):
    """x ← step(x) until ‖Δx‖ ≤ tol (1 + ‖x‖): a plain (proximal, projected, BCD…) loop."""

    def cond(state):
        _, delta, k = state
        return (delta > tol) & (k < maxiter)

    def body(state):
        x, _, k = state
        new = step(x)
        return new, jnp.linalg.norm(new - x) / (1 + jnp.linalg.norm(new)), k + 1

    init = (x0, jnp.asarray(jnp.inf, x0.dtype), jnp.asarray(0))
    return jax.lax.while_loop(cond, body, init)[0]


def least_squares_loss(w, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2)


def _soft_threshold(v, t):
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0)


@functools.partial(jax.jit, static_argnames=("F", "solve"))
def jit_root_jvp(F, z, args, tangents, solve=None):
    return root_jvp(F, z, args, tangents, solve=solve)


@functools.partial(jax.jit, static_argnames=("F", "solve"))
def jit_root_vjp(F, z, args, cotangent, solve=None):
    return root_vjp(F, z, args, cotangent, solve=solve)


def _inner(a, b):
    """⟨a, b⟩ summed over every leaf of two pytrees of the same structure."""
    return sum(
        float(jnp.vdot(jnp.asarray(u), jnp.asarray(v)))
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


# ---------------------------------------------------------------------------------------------
# 1. stationary: ridge regression.

RIDGE_X, RIDGE_Y = _regression(15, 4, seed=0)
RIDGE_LAM = 0.8


@jax.jit
def _ridge_cg(init, lam, X, y):
    w, _ = jax.scipy.sparse.linalg.cg(
        lambda v: X.T @ (X @ v) + lam * v, X.T @ y, x0=init, tol=1e-15, maxiter=200
    )
    return w


ridge = custom_root(optimality.stationary(ridge_objective))(_ridge_cg)


def test_stationary_value_and_symmetric_mark():
    F = optimality.stationary(ridge_objective)
    assert F.symmetric is True
    w = jnp.asarray(np.random.default_rng(3).normal(size=4))
    expected = RIDGE_X.T @ (RIDGE_X @ w - RIDGE_Y) + RIDGE_LAM * w
    np.testing.assert_allclose(F(w, RIDGE_LAM, RIDGE_X, RIDGE_Y), expected, rtol=1e-12)


@pytest.mark.parametrize("mode", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_stationary_ridge_derivatives(mode):
    init = jnp.zeros(4)
    sol = ridge(init, RIDGE_LAM, RIDGE_X, RIDGE_Y)
    np.testing.assert_allclose(sol, ridge_closed_form(RIDGE_LAM, RIDGE_X, RIDGE_Y), rtol=1e-10)
    jac = jax.jit(mode(ridge, argnums=(1, 2, 3)))(init, RIDGE_LAM, RIDGE_X, RIDGE_Y)
    expected = jax.jit(mode(ridge_closed_form, argnums=(0, 1, 2)))(RIDGE_LAM, RIDGE_X, RIDGE_Y)
    assert_tree_allclose(jac, expected, rtol=1e-8, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# 2. proximal_gradient + prox.l1: the lasso ½‖Xw − y‖² + λ‖w‖₁.

LASSO_X, LASSO_Y = _regression(40, 8, seed=1)
LASSO_LAM = 3.2  # 6 of 8 coefficients active, the 2 others with |X_jᵀr| ≤ 0.6 λ
LASSO_STEP = float(1.0 / np.linalg.norm(np.asarray(LASSO_X), 2) ** 2)


@jax.jit
def _lasso_ista(init, lam, X, y):
    """Proximal gradient (ISTA) with its own soft thresholding, to 1e-15."""
    eta = 1.0 / jnp.linalg.norm(X, 2) ** 2
    return _iterate(lambda w: _soft_threshold(w - eta * X.T @ (X @ w - y), eta * lam), init)


LASSO_T = optimality.proximal_gradient(least_squares_loss, prox.l1, stepsize=LASSO_STEP)
lasso = custom_fixed_point(LASSO_T)(_lasso_ista)


def lasso_on_support(lam, y, X, support, signs):
    """The lasso solution for a known support and signs: (X_SᵀX_S)⁻¹(X_Sᵀy − λ s), 0 elsewhere."""
    XS = X[:, support]
    wS = jnp.linalg.solve(XS.T @ XS, XS.T @ y - lam * signs)
    return jnp.zeros(X.shape[1], wS.dtype).at[support].set(wS)


def _lasso_support(w, lam, X, y):
    """The support and signs of a lasso solution, after checking its KKT conditions strictly."""
    w, X, y = np.asarray(w), np.asarray(X), np.asarray(y)
    support = np.flatnonzero(w)
    signs = np.sign(w[support])
    correlation = X.T @ (y - X @ w)
    np.testing.assert_allclose(correlation[support], lam * signs, rtol=1e-10)
    off = np.setdiff1d(np.arange(w.size), support)
    assert np.all(np.abs(correlation[off]) < 0.9 * lam)  # strict complementarity, with margin
    return support, signs


def test_proximal_gradient_value():
    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.normal(size=8))
    step = w - LASSO_STEP * LASSO_X.T @ (LASSO_X @ w - LASSO_Y)
    expected = jnp.sign(step) * jnp.maximum(jnp.abs(step) - LASSO_STEP * LASSO_LAM, 0)
    got = LASSO_T(w, LASSO_LAM, LASSO_X, LASSO_Y)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert LASSO_T.symmetric is False
    assert optimality.proximal_gradient(least_squares_loss, prox.none).symmetric is True


@pytest.mark.parametrize("mode", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_proximal_gradient_lasso(mode):
    init = jnp.zeros(8)
    w = lasso(init, LASSO_LAM, LASSO_X, LASSO_Y)
    support, signs = _lasso_support(w, LASSO_LAM, LASSO_X, LASSO_Y)
    assert 0 < support.size < 8
    closed = lasso_on_support(LASSO_LAM, LASSO_Y, LASSO_X, support, signs)
    np.testing.assert_allclose(w, closed, rtol=1e-10, atol=1e-12)

    jac = jax.jit(mode(lasso, argnums=(1, 3)))(init, LASSO_LAM, LASSO_X, LASSO_Y)
    expected = jax.jit(
        mode(lambda lam, y: lasso_on_support(lam, y, LASSO_X, support, signs), argnums=(0, 1))
    )(LASSO_LAM, LASSO_Y)
    assert_tree_allclose(jac, expected, rtol=1e-8, atol=1e-11)
    # Off the support the solution stays at 0.
    off = np.setdiff1d(np.arange(8), support)
    assert np.all(np.abs(np.asarray(jac[0])[off]) < 1e-12)


# ---------------------------------------------------------------------------------------------
# 3. projected_gradient + projections.non_negative: non-negative least squares.

NNLS_X, _y = _regression(30, 6, seed=2)
NNLS_Y = _y - 1.5 * NNLS_X[:, 0] + 1.5 * NNLS_X[:, 3]
NNLS_STEP = float(1.0 / np.linalg.norm(np.asarray(NNLS_X), 2) ** 2)
NNLS_T = optimality.projected_gradient(
    least_squares_loss, projections.non_negative, stepsize=NNLS_STEP
)


@jax.jit
def _nnls_projected_gradient(init, hyperparams, X, y):
    del hyperparams
    eta = 1.0 / jnp.linalg.norm(X, 2) ** 2
    return _iterate(lambda w: jnp.maximum(w - eta * X.T @ (X @ w - y), 0), init)


nnls = custom_fixed_point(NNLS_T)(_nnls_projected_gradient)


def _scipy_nnls(X, y):
    return scipy.optimize.nnls(np.asarray(X), np.asarray(y))[0]


def nnls_on_support(X, y, support):
    XS = X[:, support]
    return jnp.zeros(X.shape[1], X.dtype).at[support].set(jnp.linalg.solve(XS.T @ XS, XS.T @ y))


def test_projected_gradient_value():
    w = jnp.asarray(np.random.default_rng(5).normal(size=6))
    expected = np.maximum(w - NNLS_STEP * NNLS_X.T @ (NNLS_X @ w - NNLS_Y), 0)
    np.testing.assert_allclose(NNLS_T(w, None, NNLS_X, NNLS_Y), expected, rtol=1e-12)


def test_projected_gradient_nnls():
    init = jnp.zeros(6)
    w = nnls(init, None, NNLS_X, NNLS_Y)
    reference = _scipy_nnls(NNLS_X, NNLS_Y)
    np.testing.assert_allclose(w, reference, rtol=1e-10, atol=1e-12)
    support = np.flatnonzero(reference)
    assert 0 < support.size < 6
    gradient = np.asarray(NNLS_X.T @ (NNLS_X @ w - NNLS_Y))
    assert np.all(gradient[np.setdiff1d(np.arange(6), support)] > 1e-2)  # strictly active

    jac = jax.jit(jax.jacfwd(lambda X, y: nnls(init, None, X, y), argnums=(0, 1)))(NNLS_X, NNLS_Y)
    expected = jax.jit(jax.jacfwd(lambda X, y: nnls_on_support(X, y, support), argnums=(0, 1)))(
        NNLS_X, NNLS_Y
    )
    assert_tree_allclose(jac, expected, rtol=1e-8, atol=1e-11)

    # Reverse mode against central differences of SciPy's active-set NNLS, along a direction.
    # (SciPy's solution is exact to rounding: a step of 1e-6 leaves an error near 1e-9.)
    tangent = random_tangent((NNLS_X, NNLS_Y), seed=6)
    cotangent = jnp.asarray(np.random.default_rng(7).normal(size=6))
    vjp = jax.jit(lambda X, y, v: jax.vjp(lambda X, y: nnls(init, None, X, y), X, y)[1](v))
    directional = _inner(vjp(NNLS_X, NNLS_Y, cotangent), tangent)
    fd = finite_difference_jvp(lambda p: _scipy_nnls(*p), (NNLS_X, NNLS_Y), tangent)
    np.testing.assert_allclose(directional, float(cotangent @ fd), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 4. A quadratic on the simplex: mirror_descent and projected_gradient + projections.simplex.


def simplex_qp_objective(p, Q, c):
    return 0.5 * p @ Q @ p + c @ p


def _simplex_problem(support, n=5, seed=8):
    """(Q, c, p*) with p* the solution, supported on ``support``, strictly complementary."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    Q = M @ M.T / n + 0.5 * np.eye(n)
    p = np.zeros(n)
    p[support] = rng.uniform(0.5, 1.5, size=len(support))
    p /= p.sum()
    gap = np.zeros(n)  # the multipliers of p ≥ 0, positive off the support
    gap[np.setdiff1d(np.arange(n), support)] = rng.uniform(0.3, 0.8, size=n - len(support))
    c = -Q @ p - rng.normal() + gap  # ∇f(p*) = −μ 1 + gap
    return jnp.asarray(Q), jnp.asarray(c), jnp.asarray(p)


def simplex_qp_on_support(Q, c, support):
    """KKT on the support: [Q_SS 1; 1ᵀ 0][p_S; μ] = [−c_S; 1], p = 0 elsewhere."""
    Q = 0.5 * (Q + Q.T)
    support = np.asarray(support)
    k = support.size
    K = jnp.zeros((k + 1, k + 1), Q.dtype).at[:k, :k].set(Q[np.ix_(support, support)])
    K = K.at[:k, k].set(1.0).at[k, :k].set(1.0)
    rhs = jnp.concatenate([-c[support], jnp.ones(1, c.dtype)])
    return jnp.zeros(c.shape, c.dtype).at[support].set(jnp.linalg.solve(K, rhs)[:k])


@jax.jit
def _simplex_projected_gradient(init, hyperparams, Q, c):
    del hyperparams
    eta = 1.0 / jnp.linalg.norm(Q, 2)
    return _iterate(lambda p: projections.simplex(p - eta * (Q @ p + c)), init)


@jax.jit
def _simplex_exponentiated_gradient(init, hyperparams, Q, c):
    """Mirror descent with the entropy, written here: p ← p exp(−η∇f) / Σ."""
    del hyperparams

    def step(p):
        q = p * jnp.exp(-(Q @ p + c))
        return q / jnp.sum(q)

    return _iterate(step, init, tol=1e-16, maxiter=5000)


SIMPLEX_PG_T = optimality.projected_gradient(simplex_qp_objective, projections.simplex, 0.5)
SIMPLEX_MD_T = optimality.mirror_descent(simplex_qp_objective, stepsize=0.7)


def test_mirror_descent_value():
    Q, c, _ = _simplex_problem([0, 1, 2, 3, 4])
    rng = np.random.default_rng(9)
    p = jnp.asarray(rng.dirichlet(np.ones(5)))
    unnormalized = p * np.exp(-0.7 * (Q @ p + c))
    np.testing.assert_allclose(
        SIMPLEX_MD_T(p, None, Q, c), unnormalized / unnormalized.sum(), rtol=1e-12
    )
    np.testing.assert_allclose(
        SIMPLEX_MD_T(p, 2.0, Q, c), 2 * unnormalized / unnormalized.sum(), rtol=1e-12
    )
    # Each row of a matrix is its own simplex.
    P = jnp.asarray(rng.dirichlet(np.ones(3), size=2))
    G = jnp.asarray(rng.normal(size=(2, 3)))
    rows = P * np.exp(-0.5 * G)
    np.testing.assert_allclose(
        optimality.negative_entropy(P, G, 0.5), rows / rows.sum(axis=1, keepdims=True), rtol=1e-12
    )
    np.testing.assert_allclose(
        SIMPLEX_PG_T(p, 1.0, Q, c), projections.simplex(p - 0.5 * (Q @ p + c)), rtol=1e-12
    )


def test_simplex_interior_mirror_and_projected_agree():
    support = [0, 1, 2, 3, 4]
    Q, c, p_star = _simplex_problem(support)
    init = jnp.ones(5) / 5
    by_projection = custom_fixed_point(SIMPLEX_PG_T)(_simplex_projected_gradient)
    by_mirror = custom_fixed_point(SIMPLEX_MD_T)(_simplex_exponentiated_gradient)
    # The general form with a mirror map and a Bregman projection: ∇φ = log, P^φ = softmax.
    by_mirror_general = custom_fixed_point(
        optimality.mirror_descent(
            simplex_qp_objective,
            projection=lambda y, hp: jax.nn.softmax(y),
            mapping=jnp.log,
            stepsize=0.7,
        )
    )(_simplex_exponentiated_gradient)
    expected_jac = jax.jit(
        jax.jacfwd(lambda Q, c: simplex_qp_on_support(Q, c, support), argnums=(0, 1))
    )(Q, c)
    for solver in (by_projection, by_mirror, by_mirror_general):
        p = solver(init, 1.0, Q, c)
        np.testing.assert_allclose(p, p_star, rtol=1e-10, atol=1e-12)
        jac = jax.jit(jax.jacfwd(lambda Q, c, s=solver: s(init, 1.0, Q, c), argnums=(0, 1)))(Q, c)
        assert_tree_allclose(jac, expected_jac, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("mode", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_simplex_sparse_solution_exact_zeros(mode):
    support = [0, 2, 3]
    Q, c, p_star = _simplex_problem(support)
    init = jnp.ones(5) / 5
    p = _simplex_projected_gradient(init, 1.0, Q, c)
    np.testing.assert_allclose(p, p_star, rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(p)[[1, 4]] == 0.0)  # exact zeros: the stable form must cope
    # A SciPy cross-check of the constructed solution.
    Qn, cn = np.asarray(Q), np.asarray(c)
    reference = scipy.optimize.minimize(
        lambda q: 0.5 * q @ Qn @ q + cn @ q,
        np.ones(5) / 5,
        jac=lambda q: Qn @ q + cn,
        method="SLSQP",
        bounds=[(0, None)] * 5,
        constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1}],
        options={"ftol": 1e-15, "maxiter": 500},
    )
    np.testing.assert_allclose(reference.x, p_star, atol=1e-7)

    expected = jax.jit(mode(lambda Q, c: simplex_qp_on_support(Q, c, support), argnums=(0, 1)))(
        Q, c
    )
    # Exponentiated gradient never reaches the zeros; it ends within rounding of them.
    np.testing.assert_allclose(
        _simplex_exponentiated_gradient(init, 1.0, Q, c), p_star, rtol=1e-10, atol=1e-14
    )
    pairs = [
        (SIMPLEX_MD_T, _simplex_projected_gradient),  # the mirror condition at exact zeros
        (SIMPLEX_MD_T, _simplex_exponentiated_gradient),
        (SIMPLEX_PG_T, _simplex_projected_gradient),
    ]
    for T, raw_solver in pairs:
        solver = custom_fixed_point(T)(raw_solver)
        jac = jax.jit(mode(lambda Q, c, s=solver: s(init, 1.0, Q, c), argnums=(0, 1)))(Q, c)
        assert all(np.all(np.isfinite(j)) for j in jac)
        assert_tree_allclose(jac, expected, rtol=1e-7, atol=1e-10)
        for j in jac:  # zero derivative off the support
            assert np.max(np.abs(np.asarray(j)[[1, 4]])) < 1e-12


# ---------------------------------------------------------------------------------------------
# 5. kkt: the QP min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h.


def qp_objective(x, params):
    Q, c = params
    return 0.5 * x @ Q @ x + c @ x


def qp_equality(x, params):
    A, b = params
    return A @ x - b


def qp_inequality(x, params):
    G, h = params
    return G @ x - h


def _qp_problem(n, m_eq, m_in, active, seed):
    """A QP with a known primal-dual solution, the inequalities ``active`` strictly active."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    Q = M @ M.T / n + 0.5 * np.eye(n)
    A, G = rng.normal(size=(m_eq, n)), rng.normal(size=(m_in, n))
    x = rng.normal(size=n)
    nu = rng.normal(size=m_eq)
    lam = np.zeros(m_in)
    lam[active] = rng.uniform(0.5, 1.5, size=len(active))
    slack = rng.uniform(0.5, 1.5, size=m_in)
    slack[active] = 0.0
    c = -Q @ x - A.T @ nu - G.T @ lam
    b, h = A @ x, G @ x + slack
    j = jnp.asarray
    return (j(Q), j(c)), (j(A), j(b)), (j(G), j(h)), (j(x), j(nu), j(lam))


def qp_reference(theta_f, theta_eq, theta_in, active):
    """(x, ν, λ) by the KKT system on the active set, in NumPy; checks the active set holds.

    Used under finite differences: the assertions make sure that the active set is stable
    under the step (λ_active > 0, inactive constraints strictly satisfied).
    """
    Q, c = (np.asarray(a) for a in theta_f)
    n = c.size
    A, b = (np.zeros((0, n)), np.zeros(0)) if theta_eq is None else map(np.asarray, theta_eq)
    G, h = (np.zeros((0, n)), np.zeros(0)) if theta_in is None else map(np.asarray, theta_in)
    C = np.vstack([A, G[active]])
    K = np.block([[0.5 * (Q + Q.T), C.T], [C, np.zeros((C.shape[0], C.shape[0]))]])
    sol = np.linalg.solve(K, np.concatenate([-c, b, h[active]]))
    x, nu = sol[:n], sol[n : n + b.size]
    lam = np.zeros(h.size)
    lam[active] = sol[n + b.size :]
    inactive = np.setdiff1d(np.arange(h.size), active)
    assert np.all(lam[active] > 0) and np.all(G[inactive] @ x < h[inactive])
    return (
        jnp.asarray(x),
        None if theta_eq is None else jnp.asarray(nu),
        None if theta_in is None else jnp.asarray(lam),
    )


QP_ACTIVE = [1, 3]


def test_kkt_value():
    theta_f, theta_eq, theta_in, _ = _qp_problem(4, 1, 4, QP_ACTIVE, seed=10)
    (Q, c), (A, b), (G, h) = theta_f, theta_eq, theta_in
    F = optimality.kkt(qp_objective, qp_equality, qp_inequality)
    assert F.symmetric is False
    rng = np.random.default_rng(11)
    x, nu, lam = (jnp.asarray(rng.normal(size=k)) for k in (4, 1, 4))
    got = F((x, nu, lam), theta_f, theta_eq, theta_in)
    expected = (
        0.5 * (Q + Q.T) @ x + c + A.T @ nu + G.T @ lam,
        A @ x - b,
        lam * (G @ x - h),
    )
    assert_tree_allclose(got, expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="tuple"):
        F(x, theta_f, theta_eq, theta_in)


def test_kkt_qp_with_equalities_and_inequalities():
    n = 4
    theta_f, theta_eq, theta_in, z = _qp_problem(n, 1, 4, QP_ACTIVE, seed=10)
    (Q, c), (A, b), (G, h) = theta_f, theta_eq, theta_in
    # The constructed solution is the QP's solution: the KKT solve and SciPy agree with it.
    assert_tree_allclose(qp_reference(theta_f, theta_eq, theta_in, QP_ACTIVE), z, rtol=1e-10)
    Q, c, A, b, G, h = (np.asarray(a) for a in (Q, c, A, b, G, h))
    slsqp = scipy.optimize.minimize(
        lambda x: 0.5 * x @ Q @ x + c @ x,
        np.zeros(n),
        jac=lambda x: Q @ x + c,
        method="SLSQP",
        constraints=[
            {"type": "eq", "fun": lambda x: A @ x - b},
            {"type": "ineq", "fun": lambda x: h - G @ x},
        ],
        options={"ftol": 1e-15, "maxiter": 500},
    )
    np.testing.assert_allclose(slsqp.x, z[0], atol=1e-7)

    F = optimality.kkt(qp_objective, qp_equality, qp_inequality)
    args = (theta_f, theta_eq, theta_in)
    assert_tree_allclose(F(z, *args), jax.tree_util.tree_map(jnp.zeros_like, z), atol=1e-12)

    def reference(theta):
        return qp_reference(*theta, QP_ACTIVE)

    # Forward: J t for a direction moving Q, c, A, b, G and h at once. The reference is a
    # smooth (rational) function of θ on this active set, so central differences with a step of
    # 1e-6 are accurate to about 1e-9; the tolerance is 1e-6 relative.
    tangent = random_tangent(args, seed=12)
    jvp = jit_root_jvp(F, z, args, tangent)
    fd = finite_difference_jvp(reference, args, tangent)
    assert_tree_allclose(jvp, fd, rtol=1e-6, atol=1e-8)

    # Reverse: the cotangent of every argument, against the gradient of ⟨v, z*(θ)⟩.
    cotangent = random_tangent(z, seed=13)
    vjp = jit_root_vjp(F, z, args, cotangent)
    fd_grad = finite_difference_grad(lambda theta: _inner(cotangent, reference(theta)), args)
    assert_tree_allclose(vjp, fd_grad, rtol=1e-6, atol=1e-8)


def test_kkt_qp_with_equalities_only():
    theta_f, theta_eq, _, _ = _qp_problem(4, 2, 1, [], seed=14)
    F = optimality.kkt(qp_objective, eq_fun=qp_equality)

    def closed_form(theta_f, theta_eq):
        (Q, c), (A, b) = theta_f, theta_eq
        K = jnp.block([[0.5 * (Q + Q.T), A.T], [A, jnp.zeros((2, 2))]])
        sol = jnp.linalg.solve(K, jnp.concatenate([-c, b]))
        return sol[:4], sol[4:], None

    z = closed_form(theta_f, theta_eq)
    assert_tree_allclose(F(z, theta_f, theta_eq), (jnp.zeros(4), jnp.zeros(2), None), atol=1e-12)
    tangent = random_tangent((theta_f, theta_eq), seed=15)
    jvp = jit_root_jvp(F, z, (theta_f, theta_eq), tangent)
    _, expected = jax.jit(lambda p, t: jax.jvp(closed_form, p, t))((theta_f, theta_eq), tangent)
    assert_tree_allclose(jvp, expected, rtol=1e-8, atol=1e-11)

    # The same through custom_root, in reverse mode.
    solver = custom_root(F)(lambda init, theta_f, theta_eq: closed_form(theta_f, theta_eq))
    grads = jax.jit(jax.grad(lambda t: jnp.sum(jnp.sin(solver(None, *t)[0]))))((theta_f, theta_eq))
    expected = jax.jit(jax.grad(lambda t: jnp.sum(jnp.sin(closed_form(*t)[0]))))(
        (theta_f, theta_eq)
    )
    assert_tree_allclose(grads, expected, rtol=1e-8, atol=1e-11)


def test_kkt_qp_with_inequalities_only():
    active = [0, 2]
    theta_f, _, theta_in, z_full = _qp_problem(3, 0, 4, active, seed=16)
    z = (z_full[0], None, z_full[2])
    F = optimality.kkt(qp_objective, ineq_fun=qp_inequality)
    assert_tree_allclose(qp_reference(theta_f, None, theta_in, active), z, rtol=1e-10)
    assert_tree_allclose(
        F(z, theta_f, None, theta_in), (jnp.zeros(3), None, jnp.zeros(4)), atol=1e-12
    )
    args = (theta_f, None, theta_in)
    t_f, t_in = random_tangent((theta_f, theta_in), seed=17)
    jvp = jit_root_jvp(F, z, args, (t_f, None, t_in))  # tolerances as in the test above
    fd = finite_difference_jvp(
        lambda th: qp_reference(th[0], None, th[1], active), (theta_f, theta_in), (t_f, t_in)
    )
    assert_tree_allclose(jvp, fd, rtol=1e-6, atol=1e-8)

    cotangent = (jnp.asarray([0.3, -1.0, 0.7]), None, jnp.asarray([1.0, 0.5, -0.4, 2.0]))
    vjp = jit_root_vjp(F, z, args, cotangent)
    assert vjp[1] is None
    fd_grad = finite_difference_grad(
        lambda th: _inner(cotangent, qp_reference(th[0], None, th[1], active)),
        (theta_f, theta_in),
    )
    assert_tree_allclose((vjp[0], vjp[2]), fd_grad, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# 6. conic: an LP, an SOCP and an SDP.

LP_CONE = [("zero", 1), ("nonnegative", 5)]


def _lp_problem(seed=18):
    """min cᵀx s.t. A₀x = b₀, A₁x ≤ b₁ (rows 1–5): a nondegenerate vertex, rows 0–2 tight."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(6, 3))
    x = rng.normal(size=3)
    slack = np.concatenate([np.zeros(3), rng.uniform(0.5, 1.5, size=3)])
    y = np.concatenate([rng.normal(size=1), rng.uniform(0.5, 1.5, size=2), np.zeros(3)])
    return jnp.asarray(A), jnp.asarray(A @ x + slack), jnp.asarray(-A.T @ y)


def lp_by_highs(A, b, c):
    """(x, y, s) by HiGHS; the duals are minus its marginals (∂ optimum / ∂ right-hand side)."""
    A, b, c = np.asarray(A), np.asarray(b), np.asarray(c)
    res = scipy.optimize.linprog(
        c, A_ub=A[1:], b_ub=b[1:], A_eq=A[:1], b_eq=b[:1], bounds=(None, None), method="highs"
    )
    assert res.status == 0
    y = -np.concatenate([res.eqlin.marginals, res.ineqlin.marginals])
    s = b - A @ res.x
    s[0] = 0.0
    return jnp.asarray(res.x), jnp.asarray(y), jnp.asarray(s)


def test_conic_value():
    A, b, c = _lp_problem()
    rng = np.random.default_rng(19)
    u, v = jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=6))
    F = optimality.conic(LP_CONE)
    assert F.symmetric is False
    y = v.at[1:].set(jnp.maximum(v[1:], 0))  # Π onto K* = ℝ × ℝ₊⁵
    assert_tree_allclose(F((u, v), A, b, c), (A.T @ y + c, b - A @ u - (y - v)), rtol=1e-12)
    x, y_sol, s = optimality.conic_solution((u, v), LP_CONE)
    assert_tree_allclose((x, y_sol, s), (u, y, y - v), rtol=1e-12)
    assert_tree_allclose(optimality.conic_embedding(u, y, s), (u, v), atol=1e-15)
    with pytest.raises(ValueError, match="shape"):
        F((u, v[:5]), A[:5], b[:5], c)


@pytest.mark.parametrize("solve", ["lu", "gmres"])
def test_conic_lp(solve):
    A, b, c = _lp_problem()
    x, y, s = lp_by_highs(A, b, c)
    assert np.all(np.asarray(y)[1:3] > 0.1) and np.all(np.asarray(s)[3:] > 0.1)  # nondegenerate
    F = optimality.conic(LP_CONE)
    z = optimality.conic_embedding(x, y, s)
    assert_tree_allclose(F(z, A, b, c), (jnp.zeros(3), jnp.zeros(6)), atol=1e-12)
    assert_tree_allclose(optimality.conic_solution(z, LP_CONE), (x, y, s), atol=1e-12)

    def solution(z):
        return optimality.conic_solution(z, LP_CONE)

    # HiGHS returns the vertex to rounding; the LP's solution is a rational function of (A, b, c)
    # near a nondegenerate vertex, so central differences with a step of 1e-6 are good to ~1e-9.
    tangent = random_tangent((A, b, c), seed=20)
    dz = jit_root_jvp(F, z, (A, b, c), tangent, solve=solve)
    _, d_solution = jax.jit(lambda z, dz: jax.jvp(solution, (z,), (dz,)))(z, dz)
    fd = finite_difference_jvp(lambda p: lp_by_highs(*p), (A, b, c), tangent)
    assert_tree_allclose(d_solution, fd, rtol=1e-6, atol=1e-8)
    assert np.max(np.abs(fd[0])) > 0.1 and np.max(np.abs(fd[1])) > 0.1  # not trivially zero

    # Reverse mode, by the adjoint identity ⟨w, J t⟩ = ⟨Jᵀw, t⟩ for the map θ ↦ (x, y, s).
    w = random_tangent((x, y, s), seed=21)
    (w_z,) = jax.jit(lambda z, w: jax.vjp(solution, z)[1](w))(z, w)
    cotangents = jit_root_vjp(F, z, (A, b, c), w_z, solve=solve)
    np.testing.assert_allclose(_inner(cotangents, tangent), _inner(w, fd), rtol=1e-6)


def _socp(c, b):
    """min cᵀx s.t. ‖x − x₀‖ ≤ r as Ax + s = b, s ∈ SOC: b = (r, −x₀), A = [0; −I]."""
    n = c.shape[0]
    A = jnp.concatenate([jnp.zeros((1, n)), -jnp.eye(n)])
    x = -b[1:] - b[0] * c / jnp.linalg.norm(c)  # x₀ − r c/‖c‖
    y = jnp.concatenate([jnp.linalg.norm(c)[None], c])
    return A, x, y, b - A @ x


def test_conic_socp_closed_form():
    rng = np.random.default_rng(22)
    n = 3
    c = jnp.asarray(rng.normal(size=n))
    b = jnp.asarray(np.concatenate([[0.7], rng.normal(size=n)]))
    cone = [("soc", n + 1)]
    F = optimality.conic(cone)
    A, x, y, s = _socp(c, b)
    z = optimality.conic_embedding(x, y, s)
    assert_tree_allclose(F(z, A, b, c), (jnp.zeros(n), jnp.zeros(n + 1)), atol=1e-12)
    assert_tree_allclose(optimality.conic_solution(z, cone), (x, y, s), atol=1e-12)

    tangent = (None, *random_tangent((b, c), seed=23))
    dz = jit_root_jvp(F, z, (A, b, c), tangent, solve="lu")
    _, got = jax.jit(
        lambda z, dz: jax.jvp(lambda z: optimality.conic_solution(z, cone), (z,), (dz,))
    )(z, dz)
    _, expected = jax.jit(lambda p, t: jax.jvp(lambda b, c: _socp(c, b)[1:], p, t))(
        (b, c), tangent[1:]
    )
    assert_tree_allclose(got, expected, rtol=1e-8, atol=1e-11)


def _svec(M):
    """The library's convention: lower triangle, row-major, off-diagonals × √2."""
    rows, cols = np.tril_indices(M.shape[0])
    return M[rows, cols] * jnp.where(rows == cols, 1.0, np.sqrt(2.0))


def _sdp(C, trace):
    """min ⟨C, X⟩ s.t. tr X = trace, X ⪰ 0: X = trace · vvᵀ, v the bottom eigenvector of C.

    In cone form over x = svec(X): A = [svec(I)ᵀ; −I], b = (trace, 0), s = (0, svec(X)), with
    the dual y = (−λ_min, svec(C − λ_min I)).
    """
    eigenvalues, vectors = jnp.linalg.eigh(C)
    v = vectors[:, 0]
    X = trace * jnp.outer(v, v)
    Y = C - eigenvalues[0] * jnp.eye(C.shape[0])
    return _svec(X), jnp.concatenate([-eigenvalues[:1], _svec(Y)])


def test_conic_sdp_closed_form():
    rng = np.random.default_rng(24)
    k = 3
    M = rng.normal(size=(k, k))
    C = jnp.asarray(M + M.T)
    trace = jnp.asarray(1.5)
    d = k * (k + 1) // 2
    cone = [("zero", 1), ("psd", k)]
    A = jnp.concatenate([_svec(jnp.eye(k))[None], -jnp.eye(d)])
    b = jnp.concatenate([trace[None], jnp.zeros(d)])
    x, y = _sdp(C, trace)
    s = b - A @ x
    F = optimality.conic(cone)
    z = optimality.conic_embedding(x, y, s)
    assert_tree_allclose(F(z, A, b, _svec(C)), (jnp.zeros(d), jnp.zeros(d + 1)), atol=1e-12)

    R = rng.normal(size=(k, k))
    dC = jnp.asarray(R + R.T)
    d_trace = jnp.asarray(0.4)
    tangents = (None, jnp.concatenate([d_trace[None], jnp.zeros(d)]), _svec(dC))
    dz = jit_root_jvp(F, z, (A, b, _svec(C)), tangents, solve="lu")
    _, (dx, dy, _) = jax.jit(
        lambda z, dz: jax.jvp(lambda z: optimality.conic_solution(z, cone), (z,), (dz,))
    )(z, dz)
    _, expected = jax.jit(lambda p, t: jax.jvp(_sdp, p, t))((C, trace), (dC, d_trace))
    assert_tree_allclose((dx, dy), expected, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# 7. least_squares: an exponential fit.

FIT_T = jnp.linspace(0.0, 1.0, 12)
FIT_Y = jnp.asarray(
    2.0 * np.exp(-1.3 * np.asarray(FIT_T)) + 0.05 * np.random.default_rng(25).normal(size=12)
)


def exponential_residual(p, t, y):
    return p[0] * jnp.exp(p[1] * t) - y


@jax.jit
def _gauss_newton(init, t, y):
    def step(p):
        r, J = exponential_residual(p, t, y), jax.jacfwd(exponential_residual)(p, t, y)
        return p - jnp.linalg.solve(J.T @ J, J.T @ r)

    return _iterate(step, init, tol=1e-16, maxiter=200)


FIT_F = optimality.least_squares(exponential_residual)
exponential_fit = custom_root(FIT_F)(_gauss_newton)


def _scipy_fit(y):
    """SciPy's Levenberg–Marquardt, then two exact Newton steps on the gradient in NumPy.

    MINPACK stops about 1e-12 from the minimum, erratically enough to spoil differences at a
    1e-6 step; the Newton polish (the Hessian JᵀJ + Σ rₖ∇²rₖ written out) brings it to rounding.
    """
    t, y = np.asarray(FIT_T), np.asarray(y)

    def parts(p):
        e = np.exp(p[1] * t)
        return p[0] * e - y, np.stack([e, p[0] * t * e], axis=1), e

    res = scipy.optimize.least_squares(
        lambda p: parts(p)[0],
        [1.0, 0.0],
        jac=lambda p: parts(p)[1],
        method="lm",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    p = res.x
    for _ in range(2):
        r, J, e = parts(p)
        cross = np.sum(r * t * e)
        H = J.T @ J + np.array([[0.0, cross], [cross, np.sum(r * p[0] * t**2 * e)]])
        p = p - np.linalg.solve(H, J.T @ r)
    return p


def test_least_squares_value_and_mark():
    assert FIT_F.symmetric is True
    p = jnp.asarray([1.3, -0.4])
    e = jnp.exp(p[1] * FIT_T)
    r = p[0] * e - FIT_Y
    expected = jnp.stack([e @ r, (p[0] * FIT_T * e) @ r])
    np.testing.assert_allclose(FIT_F(p, FIT_T, FIT_Y), expected, rtol=1e-12)


@pytest.mark.parametrize("mode", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_least_squares_exponential_fit(mode):
    init = jnp.asarray([1.0, 0.0])
    p = exponential_fit(init, FIT_T, FIT_Y)
    np.testing.assert_allclose(p, _scipy_fit(FIT_Y), rtol=1e-12)
    jac = jax.jit(mode(exponential_fit, argnums=2))(init, FIT_T, FIT_Y)
    eps, fd = 1e-6, np.zeros((2, 12))  # the polished reference is exact to ~1e-16: error ~1e-10
    for i in range(12):
        e = np.zeros(12)
        e[i] = eps
        fd[:, i] = (_scipy_fit(FIT_Y + e) - _scipy_fit(FIT_Y - e)) / (2 * eps)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-9)
    # Gauss–Newton's JᵀJ alone (no Σ rₖ∇²rₖ) would be off by far more than the tolerance.
    J = jax.jacfwd(exponential_residual)(p, FIT_T, FIT_Y)
    gauss_newton_only = jnp.linalg.solve(J.T @ J, J.T)
    assert np.max(np.abs(gauss_newton_only - fd)) > 1e-4


_CLS_RNG = np.random.default_rng(12)
CLS_A = jnp.asarray(_CLS_RNG.normal(size=(6, 3)) + 1j * _CLS_RNG.normal(size=(6, 3)))
CLS_B = jnp.asarray(_CLS_RNG.normal(size=6) + 1j * _CLS_RNG.normal(size=6))
CLS_V = jnp.asarray(_CLS_RNG.normal(size=6) + 1j * _CLS_RNG.normal(size=6))


def _complex_residual(x, b):
    return CLS_A @ x - b


def _complex_residual_as_reals(x, b):
    r = CLS_A @ x - b
    return jnp.concatenate([r.real, r.imag])


@pytest.mark.parametrize("residual", [_complex_residual, _complex_residual_as_reals])
def test_least_squares_complex_parameters(residual):
    """Complex x, with complex residuals (F was ∂₁rᵀ r, not ∂₁rᵀ r̄: 4.8 at the least-squares
    solution, and the derivative 1.7 off) or the same residuals as reals: F vanishes at
    NumPy's lstsq solution, and the implicit JVP and gradient match lstsq's own."""
    F = optimality.least_squares(residual)

    def lstsq(init, b):
        return jnp.linalg.lstsq(CLS_A, b)[0]

    x = lstsq(None, CLS_B)
    np.testing.assert_allclose(F(x, CLS_B), 0.0, atol=1e-12)
    implicit = custom_root(F, on_failure="raise")(lstsq)
    assert_derivatives_match(lambda b: implicit(x, b), lambda b: lstsq(x, b), CLS_B, CLS_V, 1e-12)


def _complex_lasso_objective(z, b):
    return 0.5 * jnp.sum(jnp.abs(CLS_A @ z - b) ** 2)


_CLS_STEP = 1.0 / float(np.linalg.norm(np.asarray(CLS_A), 2) ** 2)


def _complex_gradient_loop(operator):
    """The reference solver: z ← operator(z − η conj(jax.grad f)(z), h) over complex z (ISTA with
    prox.l1, projected gradient with a projection), to a step of 1e-14, written without the
    library's gradient steps."""

    def solve(init, h, b):
        def step(z):
            g = jnp.conj(jax.grad(_complex_lasso_objective)(z, b))
            return operator(z - _CLS_STEP * g, h)

        def keep_going(carry):
            z, previous, k = carry
            return (jnp.max(jnp.abs(z - previous)) > 1e-14) & (k < 100_000)

        def body(carry):
            z, _, k = carry
            return step(z), z, k + 1

        return jax.lax.while_loop(keep_going, body, (step(init), init, 0))[0]

    return solve


@pytest.mark.parametrize("condition", ["proximal_gradient", "projected_gradient"])
def test_gradient_step_conditions_complex_parameters(condition):
    """A complex lasso, ½‖Az − b‖² + λΣ|zₖ| (prox.l1 shrinks moduli), and complex least squares
    in an l2 ball: the fixed point of the condition is the solution (the gradient step went
    along jax.grad, whose imaginary part has the wrong sign for a step), and the implicit
    derivatives in λ (or the radius) and in b match central differences of the reference."""
    zeros = jnp.zeros(3, jnp.complex128)
    if condition == "proximal_gradient":
        T = optimality.proximal_gradient(_complex_lasso_objective, prox.l1, stepsize=_CLS_STEP)
        reference = _complex_gradient_loop(lambda y, lam: prox.l1(y, lam, _CLS_STEP))
        h = 1.5
    else:
        T = optimality.projected_gradient(
            _complex_lasso_objective, projections.l2_ball, stepsize=_CLS_STEP
        )
        reference, h = _complex_gradient_loop(projections.l2_ball), 0.2
    x = reference(zeros, h, CLS_B)
    assert 0 < np.count_nonzero(np.abs(np.asarray(x)) > 1e-12) <= 3
    np.testing.assert_allclose(T(x, h, CLS_B), x, atol=1e-13)
    implicit = custom_fixed_point(T, on_failure="raise")(reference)
    eps = 1e-6

    def loss(fn, h, b):
        return jnp.sum(jnp.abs(fn(zeros, h, b) - 0.1) ** 2)

    fd = (loss(reference, h + eps, CLS_B) - loss(reference, h - eps, CLS_B)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(lambda h: loss(implicit, h, CLS_B))(h), fd, rtol=1e-6)
    _, tangent = jax.jvp(lambda b: implicit(zeros, h, b), (CLS_B,), (CLS_V,))
    forward, backward = (reference(zeros, h, CLS_B + s * eps * CLS_V) for s in (1, -1))
    np.testing.assert_allclose(tangent, (forward - backward) / (2 * eps), atol=1e-8)


# ---------------------------------------------------------------------------------------------
# 8. newton: the root of G(x, M, a) = Mx + x³ − a, a coupled nonlinear system.

NEWTON_M = jnp.asarray([[2.0, 0.5, -0.3], [0.4, 1.5, 0.2], [-0.1, 0.3, 1.8]])
NEWTON_A = jnp.asarray([1.0, -2.0, 0.5])


def cubic_system(x, M, a):
    return M @ x + x**3 - a


@jax.jit
def _newton_solver(init, M, a):
    def step(x):
        return x - jnp.linalg.solve(M + 3 * jnp.diag(x**2), cubic_system(x, M, a))

    return _iterate(step, init, tol=1e-16, maxiter=100)


def _newton_closed_form(x):
    """∂x*/∂a = [∂₁G]⁻¹ and ∂x*/∂M = −[∂₁G]⁻¹ (· x): −[∂₁G]⁻¹∂₂G at the root x."""
    K_inv = jnp.linalg.inv(NEWTON_M + 3 * jnp.diag(x**2))
    return -K_inv[:, :, None] * x[None, None, :], K_inv


@pytest.mark.parametrize("inner", [None, "gmres"])
def test_newton_value(inner):
    T = optimality.newton(cubic_system, stepsize=0.5, solve=inner)
    x = jnp.asarray([0.3, -0.2, 1.1])
    K = NEWTON_M + 3 * jnp.diag(x**2)
    expected = x - 0.5 * jnp.linalg.solve(K, cubic_system(x, NEWTON_M, NEWTON_A))
    np.testing.assert_allclose(T(x, NEWTON_M, NEWTON_A), expected, rtol=1e-10)
    # At the root, ∂₁T = I − ηI and ∂₂T = −η[∂₁G]⁻¹∂₂G: T differentiates through its inner solve.
    root = _newton_solver(jnp.zeros(3), NEWTON_M, NEWTON_A)
    jac_x, jac_M, jac_a = jax.jit(jax.jacfwd(T, argnums=(0, 1, 2)))(root, NEWTON_M, NEWTON_A)
    expected_M, expected_a = _newton_closed_form(root)
    np.testing.assert_allclose(jac_x, 0.5 * jnp.eye(3), atol=1e-9)
    np.testing.assert_allclose(jac_M, 0.5 * expected_M, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(jac_a, 0.5 * expected_a, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("mode", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_newton_cubic_system(mode):
    T = optimality.newton(cubic_system, stepsize=0.5)
    solver = custom_fixed_point(T)(_newton_solver)
    init = jnp.zeros(3)
    x = solver(init, NEWTON_M, NEWTON_A)
    np.testing.assert_allclose(cubic_system(x, NEWTON_M, NEWTON_A), 0, atol=1e-13)
    np.testing.assert_allclose(T(x, NEWTON_M, NEWTON_A), x, atol=1e-13)  # the root is fixed
    jac = jax.jit(mode(solver, argnums=(1, 2)))(init, NEWTON_M, NEWTON_A)
    assert_tree_allclose(jac, _newton_closed_form(x), rtol=1e-8, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# 9. block_proximal_gradient: ½ tr(BᵀQB) + ⟨C, B⟩, each row of B on a simplex of total `scale`.


def block_objective(B, Q, C):
    return 0.5 * jnp.sum(B * (Q @ B)) + jnp.sum(C * B)


def _block_problem(seed=26):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(4, 4))
    Q = M @ M.T / 4 + np.diag([0.5, 1.0, 1.5, 2.0])
    C = 2.0 * rng.normal(size=(4, 3))
    return jnp.asarray(Q), jnp.asarray(C), jnp.asarray(1.3)


@jax.jit
def _block_coordinate_descent(init, scale, Q, C):
    """Exact minimization over one row at a time (Q symmetric), sweeping the rows in order."""

    def sweep(B):
        def row(i, B):
            gradient = Q[i] @ B + C[i]
            return B.at[i].set(projections.simplex(B[i] - gradient / Q[i, i], scale))

        return jax.lax.fori_loop(0, B.shape[0], row, B)

    return _iterate(sweep, init)


def _block_T(Q):
    return optimality.block_proximal_gradient(
        block_objective,
        lambda y, scale, step: projections.simplex(y, scale),
        stepsize=1.0 / jnp.diag(Q),  # one step per row
    )


def test_block_proximal_gradient_value():
    Q, C, scale = _block_problem()
    T = _block_T(Q)
    B = jnp.asarray(np.random.default_rng(27).normal(size=(4, 3)))
    moved = B - (Q @ B + C) / jnp.diag(Q)[:, None]
    expected = jnp.stack([projections.simplex(row, scale) for row in moved])
    np.testing.assert_allclose(T(B, scale, Q, C), expected, rtol=1e-12, atol=1e-14)
    # A prox that uses its per-block scaling: the l1 prox, row i thresholded at ηᵢ λ.
    T_l1 = optimality.block_proximal_gradient(block_objective, prox.l1, stepsize=jnp.diag(Q))
    moved = B - (Q @ B + C) * jnp.diag(Q)[:, None]
    expected = jnp.sign(moved) * jnp.maximum(jnp.abs(moved) - 0.2 * jnp.diag(Q)[:, None], 0)
    np.testing.assert_allclose(T_l1(B, 0.2, Q, C), expected, rtol=1e-12, atol=1e-14)


def test_block_proximal_gradient_simplex_rows():
    Q, C, scale = _block_problem()
    init = jnp.full((4, 3), 1.3 / 3)
    B = _block_coordinate_descent(init, scale, Q, C)
    T = _block_T(Q)
    np.testing.assert_allclose(T(B, scale, Q, C), B, atol=1e-13)
    zeros = np.asarray(B) == 0
    assert zeros.any()  # some exact zeros in the rows
    # Strict complementarity: in each row the zeros have a gradient well above the row's level.
    G = np.asarray(Q @ B + C)
    for i in range(4):
        level = G[i][~zeros[i]].mean()
        np.testing.assert_allclose(G[i][~zeros[i]], level, atol=1e-10)
        assert np.all(G[i][zeros[i]] > level + 1e-2)

    solver = custom_fixed_point(T)(_block_coordinate_descent)

    def reference(theta):
        scale, Q, C = theta
        return _block_coordinate_descent(init, scale, Q, C)

    # Q moves along a symmetric direction (the sweep assumes Q symmetric). Central differences of
    # the BCD solution (exact to ~1e-15, piecewise smooth with a stable support) at a 1e-6 step.
    t_scale, R, t_C = random_tangent((scale, Q, C), seed=28)
    tangent = (t_scale, 0.5 * (R + R.T), t_C)
    _, jvp = jax.jit(lambda p, t: jax.jvp(lambda s, Q, C: solver(init, s, Q, C), p, t))(
        (scale, Q, C), tangent
    )
    fd = finite_difference_jvp(reference, (scale, Q, C), tangent)
    np.testing.assert_allclose(jvp, fd, rtol=1e-6, atol=1e-8)

    cotangent = jnp.asarray(np.random.default_rng(29).normal(size=(4, 3)))
    vjp = jax.jit(lambda p, v: jax.vjp(lambda s, Q, C: solver(init, s, Q, C), *p)[1](v))(
        (scale, Q, C), cotangent
    )
    np.testing.assert_allclose(_inner(vjp, tangent), _inner(cotangent, fd), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 10. Argument checks.


def test_builders_reject_non_callables():
    f = least_squares_loss
    cases = [
        (lambda: optimality.stationary(3), "fun"),
        (lambda: optimality.kkt("f"), "fun"),
        (lambda: optimality.kkt(f, eq_fun=3), "eq_fun"),
        (lambda: optimality.kkt(f, qp_equality, ineq_fun="G"), "ineq_fun"),
        (lambda: optimality.proximal_gradient(None, prox.l1), "fun"),
        (lambda: optimality.proximal_gradient(f, 1.0), "prox"),
        (lambda: optimality.projected_gradient(f, "simplex"), "projection"),
        (lambda: optimality.mirror_descent(0), "fun"),
        (lambda: optimality.mirror_descent(f, projection=1, mapping=jnp.log), "projection"),
        (lambda: optimality.mirror_descent(f, projection=jnp.exp, mapping=2), "mapping"),
        (lambda: optimality.newton([1]), "fun"),
        (lambda: optimality.block_proximal_gradient(f, 0), "block_prox"),
        (lambda: optimality.least_squares(None), "residual_fun"),
    ]
    for build, name in cases:
        with pytest.raises(TypeError, match=rf"\b{name} must be callable"):
            build()


def test_mirror_descent_needs_both_projection_and_mapping():
    with pytest.raises(TypeError, match="both projection and mapping"):
        optimality.mirror_descent(least_squares_loss, projection=projections.simplex)
    with pytest.raises(TypeError, match="both projection and mapping"):
        optimality.mirror_descent(least_squares_loss, mapping=jnp.log)


def test_conic_rejects_bad_cones():
    with pytest.raises(ValueError, match="unknown cone 'exp'"):
        optimality.conic([("zero", 1), ("exp", 3)])
    with pytest.raises(ValueError, match="positive int"):
        optimality.conic([("nonnegative", 0)])
    with pytest.raises(ValueError, match="second-order cone"):
        optimality.conic([("soc", 1)])
    with pytest.raises(TypeError, match="pairs"):
        optimality.conic(["zero"])


# ---------------------------------------------------------------------------------------------
# 11. jit and vmap of a wrapped solver: the lasso's validation hypergradient over λ.

VAL_X, VAL_Y = _regression(20, 8, seed=30)


def validation_loss(lam):
    w = lasso(jnp.zeros(8), lam, LASSO_X, LASSO_Y)
    return 0.5 * jnp.sum((VAL_X @ w - VAL_Y) ** 2), w


def test_lasso_hypergradient_jit_and_vmap():
    lams = jnp.asarray([2.0, 3.2, 4.5])
    hypergradient = jax.grad(validation_loss, has_aux=True)
    jitted = jax.jit(hypergradient)
    unbatched = [jitted(lam) for lam in lams]
    # Each against the closed form on its own support.
    for lam, (value, w) in zip(lams, unbatched, strict=True):
        support, signs = _lasso_support(w, lam, LASSO_X, LASSO_Y)

        def closed_form_loss(lam, support=support, signs=signs):
            w = lasso_on_support(lam, LASSO_Y, LASSO_X, support, signs)
            return 0.5 * jnp.sum((VAL_X @ w - VAL_Y) ** 2)

        np.testing.assert_allclose(value, jax.grad(closed_form_loss)(lam), rtol=1e-8)
    values = np.asarray([u[0] for u in unbatched])
    solutions = np.stack([u[1] for u in unbatched])
    assert len({tuple(np.flatnonzero(w)) for w in solutions}) > 1  # the supports differ
    # Without jit, at one λ.
    eager_value, eager_w = hypergradient(lams[1])
    np.testing.assert_allclose(eager_value, values[1], rtol=1e-10)
    np.testing.assert_allclose(eager_w, solutions[1], atol=1e-13)
    # Batched over λ, under jit.
    batched_values, batched_w = jax.jit(jax.vmap(hypergradient))(lams)
    np.testing.assert_allclose(batched_values, values, rtol=1e-10)
    np.testing.assert_allclose(batched_w, solutions, atol=1e-13)


def test_conic_refuses_a_bool_as_a_cone_dimension():
    with pytest.raises(ValueError, match="dimension of a nonnegative cone must be a positive int"):
        optimality.conic([("nonnegative", True)])
