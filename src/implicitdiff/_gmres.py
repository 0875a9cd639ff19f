"""Restarted GMRES without LAPACK: the kernel behind :func:`implicitdiff.linear_solve.gmres`.

Why not ``jax.scipy.sparse.linalg.gmres``: its ``"batched"`` method solves each cycle's small
least-squares problem by a Cholesky factorization of the normal equations, a LAPACK call that
jaxlib 0.10 splits into chunks on XLA's CPU thread pool while the calling thread waits; with
several (forced) CPU devices running the program together, every pool thread can end up waiting
and the process hangs (seen in this project's sharding tests, see docs/multi_device.md). Its
``"incremental"`` method stagnates with long cycles: on a 250-unknown ridge system with cycles
of 200 vectors it stops at a relative residual of 5e-8 for a requested 1e-10.

This one builds each cycle's Krylov basis by Gram-Schmidt applied twice ("twice is enough":
the basis stays orthogonal to rounding with long cycles), reduces the Hessenberg matrix by
Givens rotations as it grows (the residual norm of the small problem is then known at every
step, and the cycle stops as soon as it meets the tolerance), and solves the triangular system
by back substitution in a loop of plain array operations. Between cycles the true residual is
recomputed, and a cycle restarts from it; the solve stops when the true residual meets the
tolerance. Only array operations and matvecs: no LAPACK, so it runs under any number of CPU
devices, ``vmap``, ``shard_map`` and ``jit`` alike.

Left preconditioning, as jax.scipy: with M ≈ A⁻¹ the cycles run on M A x = M b and stop when
‖M (b − A x)‖ ≤ ‖M b‖ · min(1, max(tol · ‖b‖, atol) / ‖b‖) (without M: ‖b − A x‖ ≤ max(tol ·
‖b‖, atol)).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from implicitdiff._typing import PyTree

__all__ = ["gmres"]


def _cycle(apply, x, r, beta, ptol, restart):
    """One cycle from x with preconditioned residual r (norm beta): x + V y, y the minimizer of
    ‖beta e₁ − H y‖ over the Krylov space of at most ``restart`` vectors."""
    dtype = r.dtype
    size = restart + 1
    basis = jnp.zeros((size, r.shape[0]), dtype).at[0].set(jnp.where(beta > 0, r / beta, 0))
    triangle = jnp.zeros((size, restart), dtype)  # the rotated Hessenberg matrix, column by column
    rhs = jnp.zeros(size, dtype).at[0].set(beta)  # beta e₁, rotated
    cosines = jnp.zeros(restart, dtype)
    sines = jnp.zeros(restart, dtype)
    rows = jnp.arange(size)

    def rotate(i, h, c, s):
        a, b = h[i], h[i + 1]
        return h.at[i].set(c * a + s * b).at[i + 1].set(c * b - s * a)

    def step(carry):
        k, _, basis, triangle, rhs, cosines, sines = carry
        w = apply(basis[k])
        h = jnp.zeros(size, dtype)
        for _ in range(2):  # Gram-Schmidt, twice
            coefficients = jnp.where(rows <= k, basis @ w, 0)
            w = w - coefficients @ basis
            h = h + coefficients
        norm = jnp.linalg.norm(w)
        basis = basis.at[k + 1].set(jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1), 0))
        h = h.at[k + 1].set(norm)
        h = lax.fori_loop(0, k, lambda i, h: rotate(i, h, cosines[i], sines[i]), h)
        radius = jnp.hypot(h[k], h[k + 1])
        safe = jnp.where(radius > 0, radius, 1)
        c = jnp.where(radius > 0, h[k] / safe, 1)
        s = jnp.where(radius > 0, h[k + 1] / safe, 0)
        h = rotate(k, h, c, s)
        rhs = rotate(k, rhs, c, s)
        triangle = triangle.at[:, k].set(h)
        cosines, sines = cosines.at[k].set(c), sines.at[k].set(s)
        # A zero norm means the space is invariant: the small problem is solved exactly.
        estimate = jnp.where(norm > 0, jnp.abs(rhs[k + 1]), 0)
        return k + 1, estimate, basis, triangle, rhs, cosines, sines

    def not_done(carry):
        k, estimate = carry[0], carry[1]
        return (k < restart) & (estimate > ptol)

    start = (0, beta, basis, triangle, rhs, cosines, sines)
    k, _, basis, triangle, rhs, _, _ = lax.while_loop(not_done, step, start)

    def back_substitute(j, y):
        i = restart - 1 - j
        diagonal = triangle[i, i]
        value = (rhs[i] - triangle[i] @ y) / jnp.where(diagonal != 0, diagonal, 1)
        return y.at[i].set(jnp.where((i < k) & (diagonal != 0), value, 0))

    y = lax.fori_loop(0, restart, back_substitute, jnp.zeros(restart, dtype))
    return x + y @ basis[:restart]


def _solve(matvec, b, x0, precondition, tol, atol, restart, cycles):
    b_norm = jnp.linalg.norm(b)
    target = jnp.maximum(tol * b_norm, atol)
    ptol = jnp.linalg.norm(precondition(b)) * jnp.minimum(
        1.0, target / jnp.where(b_norm > 0, b_norm, 1)
    )

    def apply(v):
        return precondition(matvec(v))

    def residual(x):
        r = precondition(b - matvec(x))
        return r, jnp.linalg.norm(r)

    def not_done(carry):
        cycle, _, _, beta = carry
        return (cycle < cycles) & (beta > ptol)

    def run_cycle(carry):
        cycle, x, r, beta = carry
        x = _cycle(apply, x, r, beta, ptol, restart)
        return (cycle + 1, x, *residual(x))

    _, x, _, _ = lax.while_loop(not_done, run_cycle, (0, x0, *residual(x0)))
    return x


def gmres(
    matvec: Callable[[PyTree], PyTree],
    b: PyTree,
    *,
    x0: PyTree | None,
    tol: float,
    atol: float,
    restart: int,
    cycles: int,
    preconditioner: Callable[[PyTree], PyTree] | None,
) -> PyTree:
    """x with ‖b − A x‖ ≤ max(tol · ‖b‖, atol) (preconditioned: see the module docstring), or
    the iterate after ``cycles`` cycles of at most ``restart`` products each.

    Differentiable as a linear solve (``lax.custom_linear_solve``: the derivative solves the
    transposed system with the same method), real floating dtypes.
    """
    b_flat, unravel = ravel_pytree(b)
    x0_flat = jnp.zeros_like(b_flat) if x0 is None else ravel_pytree(x0)[0].astype(b_flat.dtype)

    def flat(function):
        return lambda v: ravel_pytree(function(unravel(v)))[0].astype(b_flat.dtype)

    precondition = (lambda v: v) if preconditioner is None else flat(preconditioner)

    def solve(operator, rhs):
        return _solve(operator, rhs, x0_flat, precondition, tol, atol, restart, cycles)

    def transpose_solve(operator, rhs):  # the warm start belongs to the forward system
        return _solve(operator, rhs, jnp.zeros_like(rhs), precondition, tol, atol, restart, cycles)

    x = lax.custom_linear_solve(flat(matvec), b_flat, solve=solve, transpose_solve=transpose_solve)
    return unravel(x)
