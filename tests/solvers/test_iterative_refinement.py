"""solvers.IterativeRefinement side by side with jaxopt.IterativeRefinement (same iterates), and
its implicit derivatives in A and b against the closed forms (float64)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import pytest

from implicitdiff import linear_solve
from implicitdiff.solvers import IterativeRefinement

_RNG = np.random.default_rng(21)
N = 5
A = jnp.asarray(_RNG.normal(size=(N, N)) + 3 * np.eye(N))
B = jnp.asarray(_RNG.normal(size=N))
A_BAR = A + 0.3 * jnp.eye(N)  # an approximation of A for the inner solve


def _inner(matvec, b, **options):
    """An inexact inner solve: A + 0.2 I instead of A."""
    return linear_solve.lu(matvec, b, ridge=0.2)


def _jaxopt_inner(matvec, b, init=None):
    return jaxopt.linear_solve.solve_gmres(matvec, b, ridge=0.2, init=init, tol=1e-14)


def _matvec(A, x):
    return A @ x


OURS = IterativeRefinement(inner_solve=_inner, maxiter=4, tol=0.0, on_failure="ignore")
THEIRS = jaxopt.IterativeRefinement(solve=_jaxopt_inner, maxiter=4, tol=0.0)
OURS_BAR = IterativeRefinement(_matvec, _matvec, inner_solve="lu", maxiter=60, tol=1e-13)
THEIRS_BAR = jaxopt.IterativeRefinement(
    _matvec, _matvec, solve=functools.partial(jaxopt.linear_solve.solve_gmres, tol=1e-14),
    maxiter=60, tol=1e-13,
)  # fmt: skip
CONVERGED = IterativeRefinement(inner_solve=_inner, maxiter=100, tol=1e-13)


def _sum_solution(a, b):
    return jnp.sum(CONVERGED.run(None, a, b).params)


def _sum_unrolled(a, b):
    solver = IterativeRefinement(inner_solve=_inner, maxiter=40, tol=0.0, implicit_diff=False)
    return jnp.sum(solver.run(None, a, b).params)


@jax.jit
def _program(a, b, a_bar):
    ours, state = OURS.run(None, a, b)
    ours_bar, state_bar = OURS_BAR.run(None, a, b, a_bar)
    return {
        "ours": ours,
        "iter_num": state.iter_num,
        "theirs": THEIRS.run(None, a, b).params,
        "ours_bar": ours_bar,
        "converged_bar": state_bar.converged,
        "theirs_bar": THEIRS_BAR.run(None, a, b, a_bar).params,
        "grad": jax.grad(_sum_solution, argnums=(0, 1))(a, b),
        "jvp": jax.jvp(_sum_solution, (a, b), (jnp.eye(N), jnp.ones(N)))[1],
        "unrolled": jax.grad(_sum_unrolled, argnums=(0, 1))(a, b),
    }


@pytest.fixture(scope="module")
def out():
    return _program(A, B, A_BAR)


def test_iterates_equal_jaxopt_and_the_hand_recursion(out):
    a, b = np.asarray(A), np.asarray(B)
    x = np.zeros(N)
    for _ in range(4):
        x = x + np.linalg.solve(a + 0.2 * np.eye(N), b - a @ x)
    np.testing.assert_allclose(out["ours"], x, rtol=1e-11)
    np.testing.assert_allclose(out["ours"], out["theirs"], rtol=1e-11)
    assert int(out["iter_num"]) == 4


def test_inner_solve_with_a_bar_converges_to_the_solution_of_a(out):
    exact = np.linalg.solve(np.asarray(A), np.asarray(B))
    np.testing.assert_allclose(out["ours_bar"], exact, rtol=1e-11)
    np.testing.assert_allclose(out["theirs_bar"], exact, rtol=1e-11)
    assert bool(out["converged_bar"])


def test_implicit_and_unrolled_derivatives_match_closed_forms(out):
    """x = A⁻¹ b: ∂Σx/∂b = A⁻ᵀ 1, ∂Σx/∂A = −A⁻ᵀ 1 xᵀ; the JVP along (dA, db) = (I, 1) is
    1ᵀ A⁻¹ (1 − x)."""
    a, b = np.asarray(A), np.asarray(B)
    x = np.linalg.solve(a, b)
    w = np.linalg.solve(a.T, np.ones(N))
    for key in ("grad", "unrolled"):
        grad_a, grad_b = out[key]
        np.testing.assert_allclose(grad_b, w, rtol=1e-9, err_msg=key)
        np.testing.assert_allclose(grad_a, -np.outer(w, x), rtol=1e-9, err_msg=key)
    np.testing.assert_allclose(out["jvp"], w @ (np.ones(N) - x), rtol=1e-9)


def test_warm_start_and_bad_input():
    exact = np.linalg.solve(np.asarray(A), np.asarray(B))
    # From the exact solution, no step is needed (JAXopt always takes one).
    x, state = CONVERGED.run(jnp.asarray(exact), A, B)
    assert int(state.iter_num) == 0 and bool(state.converged)
    np.testing.assert_allclose(x, exact, rtol=1e-12)
    with pytest.raises(TypeError, match="A and b are required"):
        CONVERGED.run(None, A)
    with pytest.raises(TypeError, match="matvec_A must be callable"):
        IterativeRefinement(3.0)
    with pytest.raises(ValueError, match="not a known linear solver"):
        IterativeRefinement(inner_solve="svd")
