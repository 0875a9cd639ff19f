"""What the QP solvers share: the problem min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h in JAXopt's
conventions (``run(init_params, params_obj=(Q, c), params_eq=(A, b), params_ineq=(G, h))``),
its primal-dual solution :class:`KKTSolution`, and its KKT conditions :func:`qp_kkt`.

:class:`~implicitdiff.solvers.equality_qp.EqualityConstrainedQP` and
:class:`~implicitdiff.solvers.osqp.OSQP` return the solution as a :class:`KKTSolution`, the named
tuple ``(primal, dual_eq, dual_ineq)`` (a part whose constraints are absent is None), with the
signs of the Lagrangian L = ½xᵀQx + cᵀx + νᵀ(Ax − b) + λᵀ(Gx − h), λ ≥ 0; they are
differentiated through the KKT conditions (:func:`implicitdiff.optimality.kkt` with
f(x, (Q, c)) = ½xᵀQx + cᵀx, H(x, (A, b)) = Ax − b and G(x, (G, h)) = Gx − h).

This module must not import :mod:`implicitdiff.projections` (which imports OSQP, for the
polyhedron projection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _summary, optimality, tree
from implicitdiff._typing import PyTree

__all__ = ["KKTSolution", "qp_kkt"]


class KKTSolution(NamedTuple):
    """A QP's primal-dual solution (as JAXopt's): a tuple ``(primal, dual_eq, dual_ineq)``.

    Attributes:
      primal: x, shape (n,) (a pytree with matvec operators).
      dual_eq: ν, the multipliers of Ax = b, shape (p,); None without equalities.
      dual_ineq: λ ≥ 0, the multipliers of Gx ≤ h, shape (m,); None without inequalities.
    """

    primal: PyTree
    dual_eq: PyTree
    dual_ineq: PyTree

    __repr__ = _summary.namedtuple_repr


def apply_operator(matvec: Callable | None, M: Any, x: PyTree) -> PyTree:
    """M x: ``matvec(M, x)`` if a matvec is given, else the matrix product (0 for M None)."""
    if matvec is not None:
        return matvec(M, x)
    if M is None:
        return tree.zeros_like(x)
    return M @ x


def inf_norm(v: jax.Array) -> jax.Array:
    """‖v‖∞, 0 for an empty v."""
    return jnp.max(jnp.abs(v), initial=0.0)


def transpose_products(C: jax.Array, u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Cᵀu, Cᵀv) from one pass over C (one matrix product with two columns)."""
    both = C.T @ jnp.stack([u, v], axis=1)
    return both[:, 0], both[:, 1]


def check_pair(name: str, pair: Any) -> None:
    if pair is not None and not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(
            f"{name} must be a pair (matrix, vector) or None, got {type(pair).__name__}"
        )


def qp_kkt(
    matvec_Q: Callable | None = None,
    matvec_A: Callable | None = None,
    matvec_G: Callable | None = None,
) -> Callable:
    """The KKT map of min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h, in the argument order of ``run``.

    Returns F(z, params_obj, params_eq=None, params_ineq=None), z = (x, ν, λ), equal to
    :func:`implicitdiff.optimality.kkt` with f(x, (Q, c)) = ½xᵀQx + cᵀx, H(x, (A, b)) = Ax − b and
    G(x, (G, h)) = Gx − h; a None ``params_eq`` (``params_ineq``) drops the equalities
    (inequalities), whose part of z and of F is then None. Products with Q, A, G are ``M @ x``, or
    ``matvec_M(M, x)`` when a matvec is given (then M is any pytree of parameters). The
    residuals come as a :class:`KKTSolution` when z is one.
    """

    def fun(x, params_obj):
        Q, c = params_obj
        return 0.5 * tree.vdot(x, apply_operator(matvec_Q, Q, x)) + tree.vdot(c, x)

    def eq_fun(x, params_eq):
        A, b = params_eq
        return tree.sub(apply_operator(matvec_A, A, x), b)

    def ineq_fun(x, params_ineq):
        G, h = params_ineq
        return tree.sub(apply_operator(matvec_G, G, x), h)

    variants = {
        (has_eq, has_ineq): optimality.kkt(
            fun, eq_fun if has_eq else None, ineq_fun if has_ineq else None
        )
        for has_eq in (False, True)
        for has_ineq in (False, True)
    }

    def qp_kkt_optimality(z, params_obj, params_eq=None, params_ineq=None):
        kkt = variants[(params_eq is not None, params_ineq is not None)]
        residuals = kkt(tuple(z), params_obj, params_eq, params_ineq)
        # Shaped like z: a KKTSolution gives a KKTSolution, as the engine requires.
        return type(z)(*residuals) if isinstance(z, KKTSolution) else residuals

    qp_kkt_optimality.symmetric = False
    return qp_kkt_optimality


def clip_to_box(x: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """The projection onto the box [lower, upper] (as ``projections.box``)."""
    return jnp.minimum(jnp.maximum(x, lower), upper)


def dtype_of(*values: Any) -> Any:
    return tree.dtype([v for v in values if v is not None])
