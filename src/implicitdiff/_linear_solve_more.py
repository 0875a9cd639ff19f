"""Parts of :mod:`implicitdiff.linear_solve`: the dense kernels of ``inv`` and ``qr``, the loop of
``iterative_refinement``, and the adapter behind JAXopt's ``solve_*`` names (re-exported,
documented and checked there)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import tree
from implicitdiff._typing import PyTree

__all__ = ["dense_inverse_solve", "dense_qr_solve", "jaxopt_named", "refined_solve"]


def dense_inverse_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """x = A⁻¹ b with the explicit inverse of the dense matrix A."""
    return jnp.linalg.inv(a) @ b


def dense_qr_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """x = R⁻¹ Qᴴ b for A = Q R (Q unitary, R upper triangular), by back substitution."""
    q, r = jnp.linalg.qr(a)
    return jax.scipy.linalg.solve_triangular(r, q.conj().T @ b, lower=False)


def _refine(matvec, b, x0, inner, maxiter, tol, atol):
    """Iterative refinement from x₀: rₖ = b − A xₖ, xₖ₊₁ = xₖ + inner(A, rₖ), while
    ‖rₖ‖ > max(tol · ‖b‖, atol) and k < maxiter."""
    threshold = jnp.maximum(tol * tree.norm(b), atol)

    def residual(x):
        return tree.sub(b, matvec(x))

    def keep_going(carry):
        k, _, _, error = carry
        return (k < maxiter) & (error > threshold)

    def step(carry):
        k, x, r, _ = carry
        x = tree.add(x, inner(matvec, r))
        r = residual(x)
        return k + 1, x, r, tree.norm(r)

    r0 = residual(x0)
    start = (jnp.asarray(0), x0, r0, tree.norm(r0))
    return jax.lax.while_loop(keep_going, step, start)[1]


def refined_solve(
    matvec: Callable, b: PyTree, init: PyTree | None, inner: Callable, maxiter, tol, atol
) -> PyTree:
    """x with A x = b by iterative refinement around ``inner(matvec, r) ≈ A⁻¹ r``, as a
    ``jax.lax.custom_linear_solve`` (differentiable in b and in what matvec closes over; the
    transposed system is refined the same way, from 0)."""
    x0 = tree.zeros_like(b) if init is None else init

    def solve(mv, rhs):
        return _refine(mv, rhs, x0, inner, maxiter, tol, atol)

    def transpose_solve(vecmat, rhs):
        return _refine(vecmat, rhs, tree.zeros_like(rhs), inner, maxiter, tol, atol)

    return jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)


def jaxopt_named(fun: Callable[..., PyTree], name: str) -> Callable:
    """``fun`` under JAXopt's name and call ``solve(matvec, b, ridge=None, init=None,
    **options)``: ``ridge`` and ``init`` also positional, None meaning none; ``M`` (the
    preconditioner, as ``jax.scipy``) renamed ``preconditioner``; ``solve_gmres`` accepts
    ``solve_method`` ("batched" or "incremental", jax.scipy's), which does not change the
    GMRES solution."""

    @functools.wraps(fun)
    def solve(matvec: Callable, b: PyTree, ridge: Any = None, init: Any = None, **options: Any):
        if "M" in options:
            options["preconditioner"] = options.pop("M")
        if name == "solve_gmres" and "solve_method" in options:
            # jax.scipy's gmres option (how the small least-squares problem in the Krylov
            # space is solved, "batched" or "incremental"): the same GMRES iterate either way.
            method = options.pop("solve_method")
            if method not in ("batched", "incremental"):
                raise ValueError(
                    f"solve_gmres: solve_method must be 'batched' or 'incremental' (JAXopt's "
                    f"values, the same solution here), got {method!r}"
                )
        ridge = 0.0 if ridge is None else ridge
        return fun(matvec, b, ridge=ridge, init=init, **options)

    solve.__name__ = solve.__qualname__ = name
    solve.__doc__ = (
        f"JAXopt's ``{name}(matvec, b, ridge=None, init=None, **options)``: "
        f":func:`{fun.__name__}` with ``ridge`` and ``init`` also positional.\n"
    )
    return solve
