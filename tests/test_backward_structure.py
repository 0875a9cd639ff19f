"""The backward solve restricted to the support, and ``linear_solve.auto``'s choice by cost.

Closed forms (f quadratic, S the support, N its complement):

- lasso, ½ mean ‖Xw − y‖² + λ‖w‖₁: dw_S/dλ = −(X_SᵀX_S/n)⁻¹ sign(w_S), dw_N/dλ = 0;
- non-negative lasso (+ ι(w ≥ 0)): dw_S/dλ = −(X_SᵀX_S/n)⁻¹ 1;
- non-negative least squares, ½‖Xw − y‖², w ≥ 0: dw_S/dy = (X_SᵀX_S)⁻¹X_Sᵀ, dw_N/dy = 0;
- box QP, ½xᵀQx + cᵀx on lo ≤ x ≤ up, F the free set, B the active bounds: x_B = bounds,
  x_F = −Q_FF⁻¹(c_F + Q_FB x_B), so dx_F/dc_F = −Q_FF⁻¹ and dx_F/dup_B = −Q_FF⁻¹Q_FB.

Each is checked to 1e-9 in float64 in forward (``jax.jacfwd``) and reverse (``jax.grad``) mode,
one jitted program per case, and through ``root_jvp`` / ``root_vjp``.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import (
    BackwardSolveWarning,
    custom_fixed_point,
    linear_solve,
    optimality,
    projections,
    prox,
    root_jvp,
    root_vjp,
    tree,
)
from implicitdiff.solvers import ProjectedGradient, ProximalGradient

TOL = 1e-9

_rng = np.random.default_rng(0)
N_SAMPLES, N_FEATURES = 40, 15
X = jnp.asarray(_rng.standard_normal((N_SAMPLES, N_FEATURES)))
Y = jnp.asarray(X @ _rng.standard_normal(N_FEATURES) + 0.5 * _rng.standard_normal(N_SAMPLES))
ETA = N_SAMPLES / float(np.linalg.norm(np.asarray(X), 2)) ** 2
C = jnp.asarray(_rng.standard_normal(N_FEATURES))  # the cotangent of reverse mode


def mean_squares(w, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2)


def sum_squares(w, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2)


def _modes(solution, theta):
    """(J, cᵀJ) of ``solution`` at θ, forward and reverse mode, in one jitted program."""

    def both(theta):
        jac = jax.jacfwd(solution)(theta)
        grad = jax.grad(lambda t: jnp.vdot(C, solution(t)))(theta)
        return solution(theta), jac, grad

    return jax.jit(both)(theta)


def _lasso_solver(prox_fun):
    return ProximalGradient(
        fun=mean_squares, prox=prox_fun, stepsize=ETA, tol=1e-13, maxiter=20_000
    )


@pytest.mark.parametrize("prox_name", ["l1", "non_negative_l1"])
def test_lasso_hypergradient_on_support(prox_name):
    solver = _lasso_solver(getattr(prox, prox_name))

    def solution(lam):
        return solver.run(jnp.zeros(N_FEATURES), lam, X, Y).params

    w, jac, grad = _modes(solution, 0.05)
    w = np.asarray(w)
    support = w != 0
    assert 0 < support.sum() < N_FEATURES  # a proper support: the restriction matters
    Xs = np.asarray(X)[:, support]
    sign = np.sign(w[support]) if prox_name == "l1" else np.ones(support.sum())
    expected = np.zeros(N_FEATURES)
    expected[support] = -np.linalg.solve(Xs.T @ Xs / N_SAMPLES, sign)
    np.testing.assert_allclose(jac, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad, np.asarray(C) @ expected, rtol=0, atol=TOL)


def _nnls_solver():
    eta = 1.0 / float(np.linalg.norm(np.asarray(X), 2)) ** 2
    return ProjectedGradient(
        fun=sum_squares, projection=projections.non_negative, stepsize=eta, tol=1e-13,
        maxiter=50_000,
    )  # fmt: skip


def test_nnls_jacobian_on_support():
    solver = _nnls_solver()

    def solution(y):
        return solver.run(jnp.zeros(N_FEATURES), None, X, y).params

    y = Y - 1.0  # some coefficients pushed onto the bound
    w, jac, grad = _modes(solution, y)
    support = np.asarray(w) > 0
    assert 0 < support.sum() < N_FEATURES
    Xs = np.asarray(X)[:, support]
    expected = np.zeros((N_FEATURES, N_SAMPLES))
    expected[support] = np.linalg.solve(Xs.T @ Xs, Xs.T)
    np.testing.assert_allclose(jac, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad, np.asarray(C) @ expected, rtol=0, atol=TOL)


_M = _rng.standard_normal((N_FEATURES, N_FEATURES))
Q = jnp.asarray(_M @ _M.T / N_FEATURES + 0.5 * np.eye(N_FEATURES))
Q_C = jnp.asarray(3.0 * _rng.standard_normal(N_FEATURES))
LOWER = -jnp.ones(N_FEATURES)


def quadratic(x, Q, c):
    return 0.5 * x @ Q @ x + c @ x


def test_box_qp_jacobian_in_bounds_and_linear_term():
    eta = 1.0 / float(np.linalg.eigvalsh(np.asarray(Q)).max())
    solver = ProjectedGradient(
        fun=quadratic, projection=projections.box, stepsize=eta, tol=1e-13, maxiter=50_000
    )

    def solution(theta):
        upper, c = theta
        return solver.run(jnp.zeros(N_FEATURES), (LOWER, upper), Q, c).params

    theta = (0.5 * jnp.ones(N_FEATURES), Q_C)
    x, (jac_up, jac_c), (grad_up, grad_c) = _modes(solution, theta)
    x, q = np.asarray(x), np.asarray(Q)
    at_upper, at_lower = np.isclose(x, 0.5, atol=0), np.isclose(x, -1.0, atol=0)
    free = ~(at_upper | at_lower)
    assert free.any() and at_upper.any() and at_lower.any()
    inv = np.linalg.inv(q[np.ix_(free, free)])
    expected_c = np.zeros((N_FEATURES, N_FEATURES))
    expected_c[np.ix_(free, free)] = -inv
    expected_up = np.zeros((N_FEATURES, N_FEATURES))
    expected_up[at_upper, at_upper] = 1.0
    expected_up[np.ix_(free, at_upper)] = -inv @ q[np.ix_(free, at_upper)]
    np.testing.assert_allclose(jac_c, expected_c, rtol=0, atol=TOL)
    np.testing.assert_allclose(jac_up, expected_up, rtol=0, atol=TOL)
    c = np.asarray(C)
    np.testing.assert_allclose(grad_c, c @ expected_c, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad_up, c @ expected_up, rtol=0, atol=TOL)


T_LASSO = optimality.proximal_gradient(mean_squares, prox.l1, stepsize=ETA)


def _root_of(T, support):
    """F(x, θ) = x − T(x, θ) as a condition that states ``support``."""
    return optimality.Condition(
        lambda x, *args: tree.sub(x, T(x, *args)), support=support, support_symmetric=True
    )


def test_root_jvp_and_root_vjp_on_support():
    assert T_LASSO.support is not None and T_LASSO.support_symmetric
    lam = 0.05
    w = _lasso_solver(prox.l1).run(jnp.zeros(N_FEATURES), lam, X, Y).params
    F = _root_of(T_LASSO, T_LASSO.support)

    @jax.jit
    def products(w, lam):
        args = (lam, X, Y)
        jvp = root_jvp(F, w, args, (jnp.ones_like(lam), None, None))
        vjp = root_vjp(F, w, args, C)[0]
        return jvp, vjp

    jvp, vjp = products(w, jnp.asarray(lam))
    support = np.asarray(w) != 0
    Xs = np.asarray(X)[:, support]
    expected = np.zeros(N_FEATURES)
    expected[support] = -np.linalg.solve(Xs.T @ Xs / N_SAMPLES, np.sign(np.asarray(w)[support]))
    np.testing.assert_allclose(jvp, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(vjp, np.asarray(C) @ expected, rtol=0, atol=TOL)


def _too_small_support(w, lam, X, y):
    """A wrong support: the first free coordinate declared fixed."""
    true = T_LASSO.support(w, lam, X, y)
    first = jnp.argmax(true)
    return true & (jnp.arange(true.shape[0]) != first)


@pytest.mark.parametrize("on_failure", ["nan", "warn"])
def test_wrong_support_is_caught_by_the_residual_check(on_failure):
    wrong = optimality.Condition(T_LASSO.fun, support=_too_small_support, support_symmetric=True)
    inner = _lasso_solver(prox.l1)

    @custom_fixed_point(wrong, on_failure=on_failure)
    def solve(init, lam, X, y):
        return inner.run(init, lam, X, y).params

    grad = jax.jit(jax.grad(lambda lam: jnp.vdot(C, solve(jnp.zeros(N_FEATURES), lam, X, Y))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = grad(0.05)
        jax.effects_barrier()
    failures = [w for w in caught if issubclass(w.category, BackwardSolveWarning)]
    if on_failure == "nan":
        assert np.isnan(value)
    else:
        assert failures and "relative residual" in str(failures[0].message)


def test_auto_choice_by_cost():
    rng = np.random.default_rng(1)
    small = jnp.asarray(rng.standard_normal((10, 10)))
    b_small = jnp.ones(10)
    assert linear_solve.auto_choice(lambda v: small @ v, b_small) == "lu"
    diagonal = jnp.asarray(1.0 + rng.random(150))
    b_large = jnp.ones(150)
    cheap = lambda v: diagonal * v  # noqa: E731
    assert linear_solve.auto_choice(cheap, b_large, symmetric=True) == "cg"
    # Not symmetric: GMRES is expected to take n iterations (no smaller bound), so with 150
    # unknowns the LU wins; with 5 expected iterations GMRES does.
    assert linear_solve.auto_choice(cheap, b_large) == "lu"
    assert linear_solve.auto_choice(cheap, b_large, iterations=5) == "gmres"
    # A product as costly as a dense one, 40 unknowns: 40 batched products and the LU cost less
    # than 30 Krylov iterations; told that a Krylov solve takes 5, it is cheaper.
    medium = jnp.asarray(rng.standard_normal((40, 40)))
    assert linear_solve.auto_choice(lambda v: medium @ v, jnp.ones(40)) == "lu"
    assert linear_solve.auto_choice(lambda v: medium @ v, jnp.ones(40), iterations=5) == "gmres"
    # Never dense above DENSE_MAX_SIZE, however cheap the LU would be estimated.
    b_huge = jnp.ones(linear_solve.DENSE_MAX_SIZE + 1)
    assert linear_solve.auto_choice(lambda v: v, b_huge, iterations=10**6) == "gmres"
    # And auto solves with its choice.
    x = jax.jit(lambda b: linear_solve.auto(cheap, b, symmetric=True))(b_large)
    np.testing.assert_allclose(x, 1.0 / diagonal, rtol=1e-9)


def test_support_declarations_are_a_registry_not_attributes():
    """The catalog's element-wise operators state their support as values in
    ``implicitdiff._support``'s registry; nothing is attached to the functions, and an
    undeclared operator (or an object that cannot be a key) has none."""
    import gc

    from implicitdiff import _support, projections

    for op in (prox.l1, prox.non_negative_l1, projections.non_negative, projections.box):
        assert isinstance(_support.declared(op), _support.OperatorSupport), op
        assert not [name for name in vars(op) if "support" in name], op
    assert _support.declared(prox.none) is None
    assert _support.declared(prox.elastic_net) is None
    assert _support.declared(3) is None and _support.declared([prox.l1]) is None
    boxed = prox.from_projection(projections.box)  # the projection's rule, carried over
    y = jnp.array([-2.0, 0.5, 3.0])
    np.testing.assert_array_equal(
        _support.declared(boxed).free(y, (0.0, 1.0)), [False, True, False]
    )
    count = len(_support._DECLARED)
    del boxed
    gc.collect()
    assert len(_support._DECLARED) == count - 1  # a declared closure goes with it
