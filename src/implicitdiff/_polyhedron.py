"""The Euclidean projection onto a polyhedron {y: Ay = b, Gy ≤ h}, by OSQP.

Re-exported as :func:`implicitdiff.projections.polyhedron`. The QP solver is imported when the
function is first called, not when this module is: :mod:`implicitdiff.projections` imports this
module, and the solvers' package imports modules that import :mod:`implicitdiff.projections`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["polyhedron"]

# One solver per dtype, kept so that its compilation cache serves every call.
_SOLVERS: dict[str, Any] = {}


def _solver(dtype: Any):
    key = jnp.dtype(dtype).name
    if key not in _SOLVERS:
        from implicitdiff.solvers.osqp import OSQP

        double = jnp.finfo(dtype).bits >= 64
        _SOLVERS[key] = OSQP(tol=1e-10 if double else 1e-5, maxiter=10000)
    return _SOLVERS[key]


def _as_float(value: ArrayLike, dtype: Any) -> jax.Array:
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.inexact):
        value = value.astype(dtype)
    return value


def polyhedron(x: ArrayLike, hyperparams: tuple[Any, Any, Any, Any]) -> jax.Array:
    """Projection onto the polyhedron {y: A y = b, G y ≤ h}.

    p = argmin_y ½‖y − x‖² s.t. A y = b, G y ≤ h: the QP with Q = I, c = −x, solved by
    :class:`implicitdiff.solvers.osqp.OSQP` (tol 1e-10 in float64, 1e-5 in float32, with solution
    polishing: exact to rounding when the active constraints are linearly independent). It is
    differentiated implicitly through the KKT conditions, with respect to x, A, b, G and h,
    wherever the active set is locally constant (strict complementarity); there the Jacobian in x
    is I − Bᵀ(BBᵀ)⁻¹B, B the rows of A and of the active rows of G. Runs under ``jit`` and
    ``vmap``. An empty (primal infeasible) polyhedron gives NaN.

    Args:
      x: a vector of length n.
      hyperparams: ``(A, b, G, h)``: A (p, n) and b (p,) for the equalities, G (m, n) and h (m,)
        for the inequalities; either pair may be ``(None, None)``.

    Example:
      >>> import jax.numpy as jnp
      >>> G, h = jnp.array([[1.0, 1.0]]), jnp.array([1.0])  # the half-plane x₁ + x₂ ≤ 1
      >>> jnp.round(polyhedron(jnp.array([2.0, 1.0]), (None, None, G, h)), 4)
      Array([1., 0.], dtype=float32)
    """
    if not (isinstance(hyperparams, (tuple, list)) and len(hyperparams) == 4):
        raise TypeError("polyhedron: hyperparams must be a tuple (A, b, G, h)")
    A, b, G, h = hyperparams
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    if x.ndim != 1:
        raise ValueError(f"polyhedron: x must be a vector, got shape {x.shape}")
    n = x.shape[0]
    pairs = []
    for (M_name, M), (v_name, v) in ((("A", A), ("b", b)), (("G", G), ("h", h))):
        if (M is None) != (v is None):
            raise ValueError(
                f"polyhedron: give both {M_name} and {v_name}, or neither "
                f"(got {M_name}={'None' if M is None else 'an array'}, "
                f"{v_name}={'None' if v is None else 'an array'})"
            )
        if M is None:
            pairs.append(None)
            continue
        M, v = _as_float(M, x.dtype), _as_float(v, x.dtype)
        if M.ndim != 2 or M.shape[1] != n or v.shape != M.shape[:1]:
            raise ValueError(
                f"polyhedron: {M_name} must have shape (k, {n}) and {v_name} shape (k,); got "
                f"{M_name} {M.shape}, {v_name} {v.shape}"
            )
        pairs.append((M, v))
    if pairs == [None, None]:
        return x
    dtype = jnp.result_type(x, *[leaf for pair in pairs if pair is not None for leaf in pair])
    x = x.astype(dtype)
    solver = _solver(dtype)
    (p, _, _), state = solver.run(None, (jnp.eye(n, dtype=dtype), -x), *pairs)
    return jnp.where(state.status == 2, jnp.nan, p)
