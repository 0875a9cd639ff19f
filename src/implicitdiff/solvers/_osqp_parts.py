"""The pieces of :class:`~implicitdiff.solvers.osqp.OSQP` that need none of its options but
numbers: the stacked problem l ≤ Cx ≤ u, its residuals, the infeasibility certificates and the
polishing step's KKT solve.

Like :mod:`implicitdiff.solvers.osqp`, this module must not import
:mod:`implicitdiff.projections` (which imports OSQP, for the polyhedron projection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _loop
from implicitdiff.solvers._qp_common import (
    KKTSolution,
    clip_to_box,
    dtype_of,
    inf_norm,
    transpose_products,
)

__all__ = [
    "DUAL_INFEASIBLE",
    "MAX_ITERATIONS",
    "PRIMAL_INFEASIBLE",
    "SOLVED",
    "Data",
    "Operators",
    "dense_operators",
    "dual_infeasible",
    "dual_vector",
    "kkt_params",
    "matrix_free_operators",
    "polished_point",
    "primal_infeasible",
    "residuals",
    "residuals_of",
    "stack_matrix_free",
    "stack_problem",
    "x_step",
]

# OSQP's status codes.
SOLVED, MAX_ITERATIONS, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE = 0, 1, 2, 3


class Data(NamedTuple):
    """The QP in OSQP's stacked form min ½xᵀPx + qᵀx s.t. lower ≤ Cx ≤ upper, with the first
    ``n_eq`` rows of C the equality constraints (lower = upper)."""

    P: jax.Array
    q: jax.Array
    C: jax.Array
    lower: jax.Array
    upper: jax.Array
    n_eq: int


class Operators(NamedTuple):
    """The products with P and C that the iteration needs, on flat vectors: ``P(x)``, ``C(x)``,
    ``Ct(y)`` = Cᵀy, and ``Ct2(u, v)`` = (Cᵀu, Cᵀv) (one pass over C where C is a matrix);
    ``dense`` whether P and C are matrices (then the x-step is factored)."""

    P: Callable
    C: Callable
    Ct: Callable
    Ct2: Callable
    dense: bool


def dense_operators(data: Data) -> Operators:
    """The products with the matrices ``data.P`` and ``data.C``."""
    return Operators(
        lambda x: data.P @ x,
        lambda x: data.C @ x,
        lambda y: data.C.T @ y,
        lambda u, v: transpose_products(data.C, u, v),
        True,
    )


def matrix_free_operators(matvec_Q, data: Data, parts, symmetric: bool = False) -> Operators:
    """The products of a problem given by matvecs: P x = ∇(½xᵀQx) with Q x = ``matvec_Q(Q, x)``
    (``Q @ x`` without a matvec, 0 for Q None), Q's parameters in ``data.P`` (P x = Q x itself
    when ``symmetric``: a Hessian-vector product, as ``fun``'s); C x the concatenation of
    ``matvec(M, x)`` (``M @ x`` without a matvec) over the pairs ``(matvec, M)`` of ``parts``
    whose M is not None; Cᵀ the transpose of that linear map."""
    Q = data.P
    x_like = jax.ShapeDtypeStruct(data.q.shape, data.q.dtype)

    def product(matvec, M, x):
        return M @ x if matvec is None else matvec(M, x)

    def P(x):
        if Q is None:
            return jnp.zeros_like(x)
        if symmetric:
            return product(matvec_Q, Q, x)
        return jax.grad(lambda v: 0.5 * jnp.vdot(v, product(matvec_Q, Q, v)))(x)

    def C(x):
        rows = [jnp.ravel(product(mv, M, x)) for mv, M in parts if M is not None]
        return jnp.concatenate([jnp.zeros((0,), data.q.dtype), *rows]).astype(data.q.dtype)

    transpose = jax.linear_transpose(C, x_like)

    def Ct(y):
        return transpose(y)[0]

    return Operators(P, C, Ct, lambda u, v: (Ct(u), Ct(v)), False)


def x_step(factor, rhs, x, sigma, rho_vec, ops: Operators) -> jax.Array:
    """x̃ = (P + σI + CᵀRC)⁻¹ rhs: by the Cholesky factor, or, with matvecs, by CG from x."""
    if ops.dense:
        return jax.scipy.linalg.cho_solve((factor, True), rhs)

    def matvec(v):
        return ops.P(v) + sigma * v + ops.Ct(rho_vec * ops.C(v))

    tol = float(jnp.finfo(rhs.dtype).eps ** 0.9)
    return jax.scipy.sparse.linalg.cg(matvec, rhs, x, tol=tol, maxiter=10 * rhs.shape[0])[0]


def stack_matrix_free(params_obj, params_eq, params_ineq) -> Data:
    """The stacked form of min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h with Q, A, G any parameters of
    matvecs: P = Q's parameters, C = (A's, G's) (None for an absent pair), l = [b; −∞],
    u = [b; h]."""
    Q, c = params_obj
    dtype = dtype_of(c)
    lower, upper = [jnp.zeros((0,), dtype)], [jnp.zeros((0,), dtype)]
    A = G = None
    n_eq = 0
    if params_eq is not None:
        A, b = params_eq
        b = jnp.asarray(b, dtype)
        lower.append(b)
        upper.append(b)
        n_eq = b.shape[0]
    if params_ineq is not None:
        G, h = params_ineq
        h = jnp.asarray(h, dtype)
        lower.append(jnp.full(h.shape, -jnp.inf, dtype))
        upper.append(h)
    return Data(
        Q, jnp.asarray(c, dtype), (A, G), jnp.concatenate(lower), jnp.concatenate(upper), n_eq
    )


def stack_problem(params_obj, params_eq, params_ineq) -> Data:
    """The stacked form of min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h: P = (Q + Qᵀ)/2 (0 for Q None),
    C = [A; G], l = [b; −∞], u = [b; h]."""
    Q, c = params_obj
    dtype = dtype_of(Q, c)
    n = c.shape[0]
    P = jnp.zeros((n, n), dtype) if Q is None else 0.5 * (Q + Q.T)
    rows, lower, upper = [jnp.zeros((0, n), dtype)], [], []
    n_eq = 0
    if params_eq is not None:
        A, b = params_eq
        rows.append(A)
        lower.append(b)
        upper.append(b)
        n_eq = A.shape[0]
    if params_ineq is not None:
        G, h = params_ineq
        rows.append(G)
        lower.append(jnp.full(h.shape, -jnp.inf, dtype))
        upper.append(h)
    C = jnp.concatenate(rows).astype(dtype)
    empty = jnp.zeros((0,), dtype)
    lower = jnp.concatenate([empty, *lower]).astype(dtype)
    upper = jnp.concatenate([empty, *upper]).astype(dtype)
    return Data(P, c.astype(dtype), C, lower, upper, n_eq)


def dual_vector(params: KKTSolution, data: Data) -> jax.Array:
    """y = (ν, λ), the stacked multipliers of a ``KKTSolution``."""
    _, nu, lam = params
    parts = [jnp.zeros((0,), data.q.dtype)] + [v for v in (nu, lam) if v is not None]
    return jnp.concatenate(parts)


def kkt_params(x, y, data: Data, params: KKTSolution) -> KKTSolution:
    """The ``KKTSolution(x, ν, λ)`` of x and the stacked y, with the fields of ``params`` that
    are None kept None."""
    _, nu, lam = params
    return KKTSolution(
        x,
        None if nu is None else y[: data.n_eq],
        None if lam is None else y[data.n_eq :],
    )


def residuals(x, z, y, data: Data, ops: Operators):
    """(error, r_prim, r_dual, s_prim, s_dual) at (x, z, y)."""
    return residuals_of(ops.C(x), ops.P(x), ops.Ct(y), z, data)


def residuals_of(Cx, Px, Cty, z, data: Data):
    """(error, r_prim, r_dual, s_prim, s_dual) from the products Cx, Px and Cᵀy."""
    r_prim = inf_norm(Cx - z)
    r_dual = inf_norm(Px + data.q + Cty)
    s_prim = jnp.maximum(inf_norm(Cx), inf_norm(z))
    s_dual = jnp.maximum(jnp.maximum(inf_norm(Px), inf_norm(Cty)), inf_norm(data.q))
    error = jnp.maximum(r_prim / (1 + s_prim), r_dual / (1 + s_dual))
    return error, r_prim, r_dual, s_prim, s_dual


def primal_infeasible(dy, data: Data, eps_rel, ops: Operators) -> jax.Array:
    """Whether δy certifies primal infeasibility, to the relative tolerance ``eps_rel``. The
    product Cᵀδy is computed only when the cheap part of the test (the support function) passes.

    A decision, not differentiated: its inputs are cut from the graph, and the infinite bounds are
    zeroed before any product (inf · 0 is NaN: in an unrolled run's reverse pass that NaN reached
    the gradient wherever the compiler did not drop the dead cotangents)."""
    dy, lower, upper = jax.lax.stop_gradient((dy, data.lower, data.upper))
    lower_inf, upper_inf = jnp.isinf(lower), jnp.isinf(upper)
    lower, upper = jnp.where(lower_inf, 0.0, lower), jnp.where(upper_inf, 0.0, upper)
    # Project δy onto the polar of the recession cone of [l, u].
    dy = jnp.where(
        lower_inf & upper_inf,
        0.0,
        jnp.where(
            upper_inf,
            jnp.minimum(dy, 0.0),
            jnp.where(lower_inf, jnp.maximum(dy, 0.0), dy),
        ),
    )
    norm = inf_norm(dy)
    support = jnp.sum(
        jnp.where(upper_inf, 0.0, upper * jnp.maximum(dy, 0.0))
        + jnp.where(lower_inf, 0.0, lower * jnp.minimum(dy, 0.0))
    )
    eps = eps_rel * norm
    candidate = (norm > 0) & (support <= -eps)
    return candidate & _loop.cond(
        candidate, lambda: inf_norm(ops.Ct(dy)) <= eps, lambda: jnp.asarray(False)
    )


def dual_infeasible(dx, data: Data, eps_rel, ops: Operators) -> jax.Array:
    """Whether δx certifies dual infeasibility, to the relative tolerance ``eps_rel``. The
    products Cδx and Pδx are computed only when the cheap part of the test (cᵀδx) passes. A
    decision, not differentiated: its inputs are cut from the graph."""
    dx = jax.lax.stop_gradient(dx)
    norm = inf_norm(dx)
    eps = eps_rel * norm

    def products_pass():
        Cdx = ops.C(dx)
        cone = jnp.all(
            (jnp.isinf(data.upper) | (Cdx <= eps)) & (jnp.isinf(data.lower) | (Cdx >= -eps))
        )
        return cone & (inf_norm(ops.P(dx)) <= eps)

    candidate = (norm > 0) & (jnp.vdot(jax.lax.stop_gradient(data.q), dx) <= -eps)
    return candidate & _loop.cond(candidate, products_pass, lambda: jnp.asarray(False))


def polished_point(x, z, y, data: Data, delta, ops: Operators):
    """(x, z, y) from the KKT system of the active set guessed from (z, y), regularized by
    ``delta`` and refined three times (OSQP's polishing); the caller keeps it where better.

    With matrices, the system K is formed and LU-factored; with matvecs (``ops.dense`` False) it
    is only applied, and each solve is GMRES's."""
    n = x.shape[0]
    dtype = x.dtype
    equality = data.lower == data.upper
    upper = equality | (jnp.isfinite(data.upper) & (data.upper - z < y))
    lower = ~upper & jnp.isfinite(data.lower) & (z - data.lower < -y)
    active = (upper | lower).astype(dtype)
    bound = jnp.where(upper, data.upper, jnp.where(lower, data.lower, 0.0))
    rhs = jnp.concatenate([-data.q, active * bound])
    regularization = jnp.concatenate([jnp.full(n, delta, dtype), -delta * active])

    # K = [[P, Cᵀ], [diag(a) C, −diag(1 − a)]]: rows of C for the active constraints (a = 1),
    # y = 0 for the others.
    if ops.dense:
        K = jnp.block([[data.P, data.C.T], [active[:, None] * data.C, -jnp.diag(1 - active)]])
        lu = jax.scipy.linalg.lu_factor(K + jnp.diag(regularization))

        def apply(sol):
            return K @ sol

        def solve(b):
            return jax.scipy.linalg.lu_solve(lu, b)
    else:

        def apply(sol):
            u, v = sol[:n], sol[n:]
            return jnp.concatenate([ops.P(u) + ops.Ct(v), active * ops.C(u) - (1 - active) * v])

        def solve(b):
            tol = jnp.finfo(dtype).eps ** 0.75
            return jax.scipy.sparse.linalg.gmres(
                lambda sol: apply(sol) + regularization * sol, b, tol=float(tol), maxiter=10
            )[0]

    def refine(_, sol):
        return sol + solve(rhs - apply(sol))

    sol = jax.lax.fori_loop(0, 3, refine, solve(rhs), unroll=True)
    x_p, y_p = sol[:n], sol[n:]
    y_p = jnp.where(
        equality,
        y_p,
        jnp.where(upper, jnp.maximum(y_p, 0.0), jnp.where(lower, jnp.minimum(y_p, 0.0), 0.0)),
    )
    z_p = clip_to_box(ops.C(x_p), data.lower, data.upper)
    return x_p, z_p, y_p
