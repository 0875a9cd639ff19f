"""Support restriction: the backward linear system solved only on the coordinates that move.

For a proximal-gradient fixed point T(x) = prox(x − η∇f(x)) whose prox is element-wise with
a Jacobian that is 0 or 1 entry by entry (soft thresholding, a projection onto the orthant or a
box), write y = x − η∇f(x) and S = {i : ∂prox(y)ᵢ = 1} (the *support*, the free coordinates),
N its complement. Rows N of ∂T vanish, so the residual G(x) = x − T(x) has

    A = ∂₁G = [[A_SS, A_SN],      A_SS = η ∇²f(x)_SS,
               [0,    I   ]],

and ∂₂G is zero on the rows N unless the hyperparameters move the bounds themselves (a box's
lower and upper). The system A u = b (forward mode) and its transpose Aᵀ w = v (reverse mode)
are block triangular with an identity block, so with K = A or Aᵀ:

    x_N⁰ = b_N,
    K_SS x_S = b_S − K_SN x_N⁰                      (a system of size |S|),
    x_N = b_N − K_NS x_S,

which is exact for both (for K = A, K_NS = 0 and x_N = b_N; for K = Aᵀ, K_SN = 0). The system of
size |S| is solved under ``jit`` (where |S| is not static) with the full-size masked operator

    M v = P_S K P_S v + P_N v,

whose spectrum is that of K_SS plus the eigenvalue 1: a Krylov solver converges in at most
|S| + 1 iterations, and CG applies when K_SS is symmetric (η∇²f_SS, the ``support_symmetric`` of
a :class:`implicitdiff._condition.Condition`) even though A is not. It costs two matvecs more than
the masked solve. The engine still checks the residual of the *whole* system K x = b, so a
support that is wrong (a free coordinate declared fixed) shows up as a failed solve.

An operator states its support with :func:`declare`: an :class:`OperatorSupport` value kept in
this module's registry, keyed by the operator (weakly: a registered closure, such as the prox
that ``prox.from_projection`` builds, is dropped with it), which :mod:`implicitdiff.optimality`
reads with :func:`declared` — as :mod:`implicitdiff.linear_solve` keeps the :class:`Spec` of its
solvers. Nothing is attached to the function itself.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable

import jax.numpy as jnp

from implicitdiff import tree
from implicitdiff._typing import PyTree

__all__ = ["OperatorSupport", "declare", "declared", "solve_on_support"]


@dataclasses.dataclass(frozen=True)
class OperatorSupport:
    """Where the Jacobian of an element-wise operator p = op(y, *op_args) is the identity.

    Attributes:
      free: ``free(y, *op_args) -> mask``, a pytree of booleans like y: True where
        ∂pᵢ/∂yᵢ = 1 (and ∂pᵢ/∂y = eᵢ), False where row i of ∂p vanishes. ``op_args`` are the
        operator's own arguments after y (``hyperparams, scaling`` for a prox,
        ``hyperparams`` for a projection).
    """

    free: Callable[..., PyTree]


#: The declared operators: operator -> its OperatorSupport (weak keys).
_DECLARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def declare(operator: Callable, free: Callable[..., PyTree]) -> Callable:
    """Register ``operator``'s support rule ``free`` (see :class:`OperatorSupport`).

    Args:
      operator: an element-wise operator ``op(y, *op_args)`` whose Jacobian is diagonal with
        entries 0 or 1.
      free: ``free(y, *op_args)``, the mask of the entries equal to 1.

    Returns:
      ``operator`` itself, unchanged.
    """
    _DECLARED[operator] = OperatorSupport(free)
    return operator


def declared(operator: Callable) -> OperatorSupport | None:
    """The :class:`OperatorSupport` registered for ``operator``, else None (also for an object
    that cannot be a weak or hashable key: not one of the declared operators)."""
    try:
        return _DECLARED.get(operator)
    except TypeError:
        return None


def _where(mask: PyTree, on: PyTree, off: PyTree | None = None) -> PyTree:
    if off is None:
        return tree.map(lambda m, v: jnp.where(m, v, jnp.zeros_like(v)), mask, on)
    return tree.map(lambda m, v, w: jnp.where(m, v, w), mask, on, off)


def solve_on_support(solve: Callable, matvec: Callable, b: PyTree, free: PyTree) -> PyTree:
    """x with K x = b, K = ``matvec`` block triangular with K_NN = I, solved on S = ``free``.

    x_S solves K_SS x_S = b_S − K_SN b_N by ``solve(M, rhs)`` on the masked operator
    M v = P_S K P_S v + P_N v (rhs zero off S); then x_N = b_N − K_NS x_S. Exact for
    K = [[K_SS, K_SN], [0, I]] and for K = [[K_SS, 0], [K_NS, I]] (the systems A u = b and
    Aᵀ w = v of a fixed point whose map has zero rows off the support).

    Args:
      solve: ``solve(matvec, rhs) -> x``, a linear solver.
      matvec: v ↦ K v on pytrees like b.
      b: the right-hand side.
      free: a pytree of booleans like b, True on S.

    Returns:
      x, a pytree like b.
    """
    fixed_part = _where(free, tree.zeros_like(b), b)  # P_N b
    rhs = _where(free, tree.sub(b, matvec(fixed_part)))  # b_S − K_SN b_N

    def masked(v):
        return _where(free, matvec(_where(free, v)), v)

    x_free = _where(free, solve(masked, rhs))
    return _where(free, x_free, tree.sub(b, matvec(x_free)))  # x_N = b_N − K_NS x_S
