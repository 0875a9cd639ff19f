"""Euclidean projections onto the second-order cone and the cone of positive semidefinite
matrices (internal; re-exported by :mod:`implicitdiff._projection_ops`, see
:mod:`implicitdiff.projections` for the catalog and its conventions). Pure ``jax.numpy``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from implicitdiff import _checks
from implicitdiff._projection_common import (
    PROJECTIONS_TAKING_COMPLEX,
    as_dtype_of,
    float_array,
    in_dtype_of_x,
    in_float32_if_half,
    nan_throughout,
    stable_norm,
)

__all__ = ["psd_cone", "second_order_cone"]


@in_dtype_of_x
def second_order_cone(x: tuple[ArrayLike, ArrayLike], hyperparams: None = None) -> tuple:
    """Projection onto the second-order (Lorentz) cone {(t, z): ‖z‖₂ ≤ t}.

    For x = (t, z): (t, z) if ‖z‖ ≤ t; (0, 0) if ‖z‖ ≤ −t; else
    ((t + ‖z‖)/2) · (1, z/‖z‖).

    Args:
      x: a pair ``(t, z)``, t a scalar and z an array (its norm runs over all entries).
      hyperparams: unused (None).

    Returns:
      The pair ``(t, z)`` of the projection, t a scalar and z shaped like the given z.

    Example:
      >>> import jax.numpy as jnp
      >>> second_order_cone((jnp.array(0.0), jnp.array([2.0, 0.0])))
      (Array(1., dtype=float32), Array([1., 0.], dtype=float32))
    """
    _checks.refuse_complex(x, "second_order_cone", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    del hyperparams
    t, z = _checks.unpack_parts("second_order_cone", "x", x, ("t", "z"))
    z = float_array(z)
    t = as_dtype_of(t, z)
    if t.shape != ():
        raise ValueError(f"t must be a scalar, got shape {t.shape}")
    norm, divisor, _ = stable_norm(z)  # scaled: no overflow of ‖z‖² for large z in float32
    inside = (t >= 0) & (norm <= t)
    polar = (t < 0) & (norm <= -t)
    boundary = ~(inside | polar)  # then ‖z‖ > |t| ≥ 0
    half = 0.5 * (t + jnp.where(boundary, divisor, 0))
    t_out = jnp.where(inside, t, jnp.where(polar, 0, half))
    z_out = jnp.where(inside, z, jnp.where(polar, 0, (half / divisor) * z))
    return nan_throughout((t_out.astype(t.dtype), z_out.astype(z.dtype)))  # ±∞: ∞ − ∞


@jax.custom_jvp
def _psd_symmetric(s: jax.Array) -> jax.Array:
    eigenvalues, vectors = jnp.linalg.eigh(s)
    return (vectors * jnp.maximum(eigenvalues, 0)[..., None, :]) @ jnp.swapaxes(vectors, -1, -2)


@_psd_symmetric.defjvp
def _psd_symmetric_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    eigenvalues, vectors = jnp.linalg.eigh(s)
    clipped = jnp.maximum(eigenvalues, 0)
    vectors_t = jnp.swapaxes(vectors, -1, -2)
    out = (vectors * clipped[..., None, :]) @ vectors_t
    # Daleckii–Krein: dP = V (Γ ∘ (Vᵀ dS V)) Vᵀ with Γᵢⱼ the divided difference of max(·, 0) at
    # λᵢ, λⱼ: 1 if both are positive, 0 if neither is, λ₊/(λ₊ − λ₋) across zero. It stays
    # finite for repeated eigenvalues, where the derivative of eigh alone does not.
    positive = eigenvalues > 0
    pos_i, pos_j = positive[..., :, None], positive[..., None, :]
    mixed = pos_i != pos_j
    gap = eigenvalues[..., :, None] - eigenvalues[..., None, :]
    across = (clipped[..., :, None] - clipped[..., None, :]) / jnp.where(mixed, gap, 1)
    gamma = jnp.where(pos_i & pos_j, 1, jnp.where(mixed, across, 0)).astype(s.dtype)
    d_out = vectors @ (gamma * (vectors_t @ ds @ vectors)) @ vectors_t
    return out, d_out


@in_dtype_of_x
@in_float32_if_half  # an eigendecomposition: no half-precision LAPACK
def psd_cone(x: ArrayLike, hyperparams: None = None) -> jax.Array:
    """Projection onto the cone of symmetric positive semidefinite matrices {Y = Yᵀ ⪰ 0}.

    With S = (X + Xᵀ)/2 = V diag(λ) Vᵀ (``jnp.linalg.eigh``), p = V diag(max(λ, 0)) Vᵀ. The
    derivative is the Daleckii–Krein formula, finite also for repeated eigenvalues.

    Args:
      x: a square matrix (n × n), or a stack of them (…, n, n); it is symmetrized first.
      hyperparams: unused (None).

    Returns:
      P, a symmetric positive semidefinite matrix (or stack) shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> psd_cone(jnp.array([[1.0, 0.0], [0.0, -1.0]]))
      Array([[1., 0.],
             [0., 0.]], dtype=float32)
    """
    _checks.refuse_complex(x, "psd_cone", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    del hyperparams
    x = float_array(x)
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"psd_cone needs square matrices (..., n, n), got shape {x.shape}")
    # ±∞ in a matrix: its eigendecomposition is not finite; NaN throughout that matrix.
    return nan_throughout(_psd_symmetric(0.5 * (x + jnp.swapaxes(x, -1, -2))), axes=(-2, -1))
