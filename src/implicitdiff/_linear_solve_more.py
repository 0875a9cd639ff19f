"""Parts of :mod:`implicitdiff.linear_solve`: the dense kernels of ``lu``, ``cholesky``, ``inv``
and ``qr``, the loop of ``iterative_refinement``, the adapter behind JAXopt's ``solve_*`` names
(re-exported, documented and checked there), and the cost model of ``auto``
(:func:`dense_is_cheaper`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp

from implicitdiff import tree
from implicitdiff._typing import PyTree

__all__ = [
    "EXPECTED_ITERATIONS",
    "dense_cholesky_solve",
    "dense_inverse_solve",
    "dense_is_cheaper",
    "dense_lu_solve",
    "dense_qr_solve",
    "jaxopt_named",
    "matvec_flops",
    "refined_solve",
]


def dense_lu_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """x = A⁻¹ b by LU factorization of the dense matrix A with partial pivoting."""
    return jax.scipy.linalg.lu_solve(jax.scipy.linalg.lu_factor(a), b)


def dense_cholesky_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """x = A⁻¹ b by Cholesky factorization of the symmetrized dense matrix, (A + Aᵀ)/2."""
    a = 0.5 * (a + a.T)
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), b)


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


# ---------------------------------------------------------------------------------------------
# The cost model of ``auto``: dense LU against a Krylov solve, in floating-point operations.

#: The Krylov iterations ``auto`` expects when it is told nothing else: a well-conditioned
#: system solved to 1e-10 (a Hessian of a regularized loss, a support of a few dozen) takes
#: 15 to 40 (the logistic regression of benchmarks/bench_backward.py: about 20).
EXPECTED_ITERATIONS = 30

# One product of the n that build a dense matrix (``jax.vmap`` over the identity's columns:
# matrix-matrix products) costs about half a lone product (matrix-vector, memory-bound),
# measured on CPU for n = 100 to 200.
_BATCHED_PRODUCT_SHARE = 0.5

# A Krylov iteration's own work besides its product: loop overhead, about a microsecond and a
# half on CPU, in floating-point operations of a lone product; and its vector operations (CG:
# three updates and two inner products; GMRES: Gram-Schmidt against a basis of up to 20).
_ITERATION_OVERHEAD = 1e4
_VECTOR_WORK = {"cg": 10, "gmres": 50}


def _jaxpr_flops(jaxpr: Any) -> int:
    """Floating-point operations of one evaluation of ``jaxpr``: 2·m·k·n for a dot_general
    (output size times contracted size, times 2), the sum over sub-programs (a loop counted
    once), and one per output entry for any other operation."""
    total = 0
    for eqn in jaxpr.eqns:
        subs = list(jax_core.jaxprs_in_params(eqn.params))
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            size = math.prod(getattr(eqn.outvars[0].aval, "shape", ()))
            total += 2 * size * math.prod(lhs[d] for d in contract)
        elif subs:
            total += sum(_jaxpr_flops(getattr(sub, "jaxpr", sub)) for sub in subs)
        else:
            total += sum(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars)
    return total


def matvec_flops(matvec: Callable, b: PyTree) -> int:
    """The floating-point operations of one product v ↦ A v, counted on its jaxpr.

    The matvec is traced once more (``jax.make_jaxpr``; it may close over traced values) and
    its operations counted by :func:`_jaxpr_flops`. Nothing is compiled or run.
    """
    return _jaxpr_flops(jax.make_jaxpr(matvec)(b).jaxpr)


def dense_is_cheaper(
    n: int, flops: float, *, symmetric: bool, iterations: int | None = None
) -> bool:
    """Whether a dense LU of the n × n system costs less than a Krylov solve, by the estimate

        dense  = ½ · n · c + ⅔ n³ + 2 n²          (n batched products, LU, two triangular solves)
        krylov = k · (c + w · n + o)              (k products, each with its vector work)

    where c = ``flops`` is the cost of one product, k = min(n, ``iterations``) or, when
    ``iterations`` is None, min(n, :data:`EXPECTED_ITERATIONS`) for CG and n for GMRES (GMRES
    has no bound below n on a non-symmetric system, and the KKT systems of constrained problems
    need about that many: OSQP's 150 unknowns took 230 ms with GMRES against 6 ms with LU), w
    the vector operations per iteration (10 for CG, 50 for GMRES) and o a fixed overhead per
    iteration (10⁴).

    Args:
      n: the number of unknowns.
      flops: the floating-point operations of one product (:func:`matvec_flops`).
      symmetric: whether the Krylov solver would be CG (else GMRES).
      iterations: the Krylov iterations expected; None: :data:`EXPECTED_ITERATIONS` for CG, n
        for GMRES.

    Returns:
      True when the dense estimate is at most the Krylov one.
    """
    if iterations is None:
        iterations = EXPECTED_ITERATIONS if symmetric else n
    k = min(n, iterations)
    dense = _BATCHED_PRODUCT_SHARE * n * flops + 2.0 * n**3 / 3.0 + 2.0 * n**2
    work = _VECTOR_WORK["cg" if symmetric else "gmres"]
    krylov = k * (flops + work * n + _ITERATION_OVERHEAD)
    return dense <= krylov
