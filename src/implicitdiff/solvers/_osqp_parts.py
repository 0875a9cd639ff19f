"""The pieces of :class:`~implicitdiff.solvers.osqp.OSQP` that need none of its options but
numbers: the stacked problem l ≤ Cx ≤ u, its residuals, the infeasibility certificates and the
polishing step's KKT solve.

Like :mod:`implicitdiff.solvers.osqp`, this module must not import
:mod:`implicitdiff.projections` (which imports OSQP, for the polyhedron projection).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _loop
from implicitdiff.solvers._qp_common import KKTSolution, clip_to_box, dtype_of, inf_norm

__all__ = [
    "DUAL_INFEASIBLE",
    "MAX_ITERATIONS",
    "PRIMAL_INFEASIBLE",
    "SOLVED",
    "Data",
    "dual_infeasible",
    "dual_vector",
    "kkt_params",
    "polished_point",
    "primal_infeasible",
    "residuals",
    "residuals_of",
    "stack_problem",
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


def residuals(x, z, y, data: Data):
    """(error, r_prim, r_dual, s_prim, s_dual) at (x, z, y)."""
    return residuals_of(data.C @ x, data.P @ x, data.C.T @ y, z, data)


def residuals_of(Cx, Px, Cty, z, data: Data):
    """(error, r_prim, r_dual, s_prim, s_dual) from the products Cx, Px and Cᵀy."""
    r_prim = inf_norm(Cx - z)
    r_dual = inf_norm(Px + data.q + Cty)
    s_prim = jnp.maximum(inf_norm(Cx), inf_norm(z))
    s_dual = jnp.maximum(jnp.maximum(inf_norm(Px), inf_norm(Cty)), inf_norm(data.q))
    error = jnp.maximum(r_prim / (1 + s_prim), r_dual / (1 + s_dual))
    return error, r_prim, r_dual, s_prim, s_dual


def primal_infeasible(dy, data: Data, eps_rel) -> jax.Array:
    """Whether δy certifies primal infeasibility, to the relative tolerance ``eps_rel``. The
    product Cᵀδy is computed only when the cheap part of the test (the support function) passes."""
    lower_inf, upper_inf = jnp.isinf(data.lower), jnp.isinf(data.upper)
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
        jnp.where(upper_inf, 0.0, data.upper * jnp.maximum(dy, 0.0))
        + jnp.where(lower_inf, 0.0, data.lower * jnp.minimum(dy, 0.0))
    )
    eps = eps_rel * norm
    candidate = (norm > 0) & (support <= -eps)
    return candidate & _loop.cond(
        candidate, lambda: inf_norm(data.C.T @ dy) <= eps, lambda: jnp.asarray(False)
    )


def dual_infeasible(dx, data: Data, eps_rel) -> jax.Array:
    """Whether δx certifies dual infeasibility, to the relative tolerance ``eps_rel``. The
    products Cδx and Pδx are computed only when the cheap part of the test (cᵀδx) passes."""
    norm = inf_norm(dx)
    eps = eps_rel * norm

    def products_pass():
        Cdx = data.C @ dx
        cone = jnp.all(
            (jnp.isinf(data.upper) | (Cdx <= eps)) & (jnp.isinf(data.lower) | (Cdx >= -eps))
        )
        return cone & (inf_norm(data.P @ dx) <= eps)

    candidate = (norm > 0) & (jnp.vdot(data.q, dx) <= -eps)
    return candidate & _loop.cond(candidate, products_pass, lambda: jnp.asarray(False))


def polished_point(x, z, y, data: Data, delta):
    """(x, z, y) from the KKT system of the active set guessed from (z, y), regularized by
    ``delta`` and refined three times (OSQP's polishing); the caller keeps it where better."""
    n = x.shape[0]
    dtype = x.dtype
    equality = data.lower == data.upper
    upper = equality | (jnp.isfinite(data.upper) & (data.upper - z < y))
    lower = ~upper & jnp.isfinite(data.lower) & (z - data.lower < -y)
    active = (upper | lower).astype(dtype)
    bound = jnp.where(upper, data.upper, jnp.where(lower, data.lower, 0.0))

    # Rows of C for the active constraints; y = 0 for the others.
    K = jnp.block([[data.P, data.C.T], [active[:, None] * data.C, -jnp.diag(1 - active)]])
    regularization = jnp.concatenate([jnp.full(n, delta, dtype), -delta * active])
    lu = jax.scipy.linalg.lu_factor(K + jnp.diag(regularization))
    rhs = jnp.concatenate([-data.q, active * bound])

    def refine(_, sol):
        return sol + jax.scipy.linalg.lu_solve(lu, rhs - K @ sol)

    sol = jax.lax.fori_loop(0, 3, refine, jax.scipy.linalg.lu_solve(lu, rhs), unroll=True)
    x_p, y_p = sol[:n], sol[n:]
    y_p = jnp.where(
        equality,
        y_p,
        jnp.where(upper, jnp.maximum(y_p, 0.0), jnp.where(lower, jnp.minimum(y_p, 0.0), 0.0)),
    )
    z_p = clip_to_box(data.C @ x_p, data.lower, data.upper)
    return x_p, z_p, y_p
