"""JAXopt's ``linear_solve`` names (``solve_cg``, ..., ``solve_iterative_refinement``) side by
side with JAXopt 0.8.5 on the same systems, and the derivatives of ``qr``, ``inv`` and
``iterative_refinement`` against the closed forms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import pytest

from implicitdiff import linear_solve

_RNG = np.random.default_rng(5)
N = 5
_M = _RNG.normal(size=(N, N))
SPD = jnp.asarray(_M @ _M.T + N * np.eye(N))
NONSYM = jnp.asarray(_RNG.normal(size=(N, N)) + 3 * np.eye(N))
B = jnp.asarray(_RNG.normal(size=N))
INIT = jnp.asarray(_RNG.normal(size=N))
TIGHT = {"tol": 1e-13}

# name → (the matrix, keyword options for both, passes ridge and init positionally)
CASES = {
    "solve_cg": (SPD, TIGHT),
    "solve_normal_cg": (NONSYM, TIGHT),
    "solve_gmres": (NONSYM, TIGHT),
    "solve_bicgstab": (NONSYM, TIGHT),
    "solve_lu": (NONSYM, {}),
    "solve_cholesky": (SPD, {}),
    "solve_inv": (NONSYM, {}),
    "solve_qr": (NONSYM, {}),
}
_DENSE = {"solve_lu", "solve_cholesky", "solve_inv", "solve_qr"}


def _call(module, name, a, ridge, options):
    solve = getattr(module, name)
    matvec = functools.partial(jnp.dot, a)
    if name in _DENSE:  # JAXopt's dense solvers take (matvec, b, ridge)
        return solve(matvec, B, ridge)
    return solve(matvec, B, ridge, INIT, **options)


@jax.jit
def _all_cases(_):
    return {
        name: [
            (_call(linear_solve, name, a, r, o), _call(jaxopt.linear_solve, name, a, r, o))
            for r in (None, 0.7)
        ]
        for name, (a, o) in CASES.items()
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_jaxopt_names_equal_jaxopt(name):
    a = np.asarray(CASES[name][0])
    results = _all_cases(0)[name]
    for (ours, theirs), ridge in zip(results, (0.0, 0.7), strict=True):
        system = a.T @ a if name == "solve_normal_cg" else a
        rhs = a.T @ np.asarray(B) if name == "solve_normal_cg" else np.asarray(B)
        exact = np.linalg.solve(system + ridge * np.eye(N), rhs)
        np.testing.assert_allclose(ours, exact, rtol=1e-10)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_jaxopt_preconditioner_keyword_m():
    jacobi = 1.0 / jnp.diag(SPD)
    x = linear_solve.solve_cg(lambda v: SPD @ v, B, M=lambda v: jacobi * v)
    np.testing.assert_allclose(x, np.linalg.solve(SPD, B), rtol=1e-9)


def _inexact(matvec, b, **options):
    """An inner solve of A + 0.1 I instead of A: iterative refinement corrects it."""
    return linear_solve.lu(matvec, b, ridge=0.1)


def _jaxopt_inexact(matvec, b, init=None):
    return jaxopt.linear_solve.solve_gmres(matvec, b, ridge=0.1, init=init, tol=1e-14)


@jax.jit
def _refinement(a, b):
    matvec = functools.partial(jnp.dot, a)
    return {
        "ours": [
            linear_solve.solve_iterative_refinement(matvec, b, maxiter=k, tol=0.0, solve=_inexact)
            for k in (1, 3, 50)
        ],
        "theirs": [
            jaxopt.linear_solve.solve_iterative_refinement(
                matvec, b, maxiter=k, tol=0.0, solve=_jaxopt_inexact
            )
            for k in (1, 3, 50)
        ],
        "ours_warm": linear_solve.solve_iterative_refinement(
            matvec, b, init=INIT, maxiter=1, solve="lu"
        ),
        "theirs_warm": jaxopt.linear_solve.solve_iterative_refinement(
            matvec,
            b,
            init=INIT,
            maxiter=1,
            solve=functools.partial(jaxopt.linear_solve.solve_gmres, tol=1e-14),
        ),
    }


def test_iterative_refinement_equals_jaxopt():
    out = _refinement(NONSYM, B)
    a, b = np.asarray(NONSYM), np.asarray(B)
    # The iterates by hand: x₀ = 0, xₖ₊₁ = xₖ + (A + 0.1 I)⁻¹ (b − A xₖ).
    x, iterates = np.zeros(N), {}
    for k in range(1, 51):
        x = x + np.linalg.solve(a + 0.1 * np.eye(N), b - a @ x)
        iterates[k] = x
    for k, ours, theirs in zip((1, 3, 50), out["ours"], out["theirs"], strict=True):
        np.testing.assert_allclose(ours, iterates[k], rtol=1e-10)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    np.testing.assert_allclose(out["ours"][-1], np.linalg.solve(a, b), rtol=1e-10)
    # A warm start with an exact inner solve: one correction from x₀ is exact. JAXopt's first
    # step solves A x = b (not the residual of x₀) and adds x₀ to it: off by x₀.
    exact = np.linalg.solve(a, b)
    np.testing.assert_allclose(out["ours_warm"], exact, rtol=1e-10)
    np.testing.assert_allclose(out["theirs_warm"], exact + np.asarray(INIT), rtol=1e-10)


def _solution_sum(name, a, b):
    solve = linear_solve.resolve(name)
    return jnp.sum(solve(lambda v: a @ v, b))


@jax.jit
def _derivatives(a, b):
    return {
        name: jax.grad(functools.partial(_solution_sum, name), argnums=(0, 1))(a, b)
        for name in ("qr", "inv", "iterative_refinement")
    }


def test_derivatives_match_closed_forms():
    """∂Σx/∂b = A⁻ᵀ 1 and ∂Σx/∂A = −A⁻ᵀ 1 xᵀ for x = A⁻¹ b."""
    a, b = np.asarray(NONSYM), np.asarray(B)
    x = np.linalg.solve(a, b)
    grad_b = np.linalg.solve(a.T, np.ones(N))
    for name, (ga, gb) in _derivatives(NONSYM, B).items():
        np.testing.assert_allclose(gb, grad_b, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(ga, -np.outer(grad_b, x), rtol=1e-9, err_msg=name)
