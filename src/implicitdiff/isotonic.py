"""Isotonic regression by pool-adjacent-violators (PAV), with its exact Jacobian.

The problem, for y ∈ ℝⁿ (``increasing=True``)::

    v*(y) = argmin_{v₁ ≤ v₂ ≤ … ≤ vₙ} ½‖v − y‖²,

and with ``increasing=False`` the order is reversed (v₁ ≥ … ≥ vₙ), which is −v*(−y). The
solution is piecewise constant: the indices split into consecutive blocks B₁, …, Bₘ, and on
each block v* equals the mean of y over it,

    v*ᵢ = (1/|B|) Σ_{j∈B} yⱼ   for i ∈ B.

PAV finds the blocks in one left-to-right pass: push each entry as a block of its own, and
while the last two blocks violate the order (mean of the left one ≥ mean of the right one) pool
them into one. Here the pass is a ``lax.fori_loop`` over the entries with a ``lax.while_loop``
for the pooling, O(n) in all, so it runs under ``jax.jit`` and ``jax.vmap``. Equal adjacent
means are pooled (so a constant input is one block).

Jacobian. Away from ties between adjacent blocks the blocks are locally constant, and v* is
linear in y: ∂v*ᵢ/∂yⱼ = 1/|B| if i and j lie in the same block B, else 0. The JVP is therefore
"average the tangent over each block", computed from the blocks PAV itself found (no tolerance
on the values, so blocks whose values differ by 1e-30 are never mistaken for one). At a tie
the function has a kink and this is the element of the generalized Jacobian that pools the tie,
as JAXopt's does.

Bounds. With constant bounds y_min ≤ y_max the bounded problem (v also in [y_min, y_max]) is
solved by clipping v*: the output is min(max(v*, y_min), y_max), whose derivative is 0 on the
clipped entries (and flows to y_min or y_max there).

A 2-D (or n-D) ``y`` is a batch: each row (the last axis) is solved on its own.

>>> import jax.numpy as jnp
>>> from implicitdiff.isotonic import isotonic_l2_pav
>>> print(isotonic_l2_pav(jnp.array([1.0, 3.0, 2.0, 4.0])))
[1.  2.5 2.5 4. ]
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks

__all__ = ["isotonic_l2_pav"]


def _pooled_mean(m1: jax.Array, c1: jax.Array, m2: jax.Array, c2: jax.Array) -> jax.Array:
    """Mean of two blocks (means m1, m2 and sizes c1, c2), exact when m1 == m2."""
    w2 = c2 / (c1 + c2)
    diff = m2 - m1
    moved = m1 + diff * w2
    # m2 − m1 overflows only for opposite huge means (|m| near the largest float).
    weighted = m1 * (c1 / (c1 + c2)) + m2 * w2
    return jnp.where(jnp.isfinite(diff), moved, weighted)


def _pav_blocks(y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Increasing PAV on a vector: (solution, block index of each entry, size of each block)."""
    n = y.shape[0]
    means = jnp.zeros_like(y)
    counts = jnp.zeros(n, dtype=y.dtype)
    starts = jnp.zeros(n, dtype=jnp.int32)

    def pool(state):
        means, counts, starts, m = state
        merged = _pooled_mean(means[m - 2], counts[m - 2], means[m - 1], counts[m - 1])
        means = means.at[m - 2].set(merged)
        counts = counts.at[m - 2].add(counts[m - 1])
        return means, counts, starts, m - 1

    def violated(state):
        means, _, _, m = state
        return (m >= 2) & (means[jnp.maximum(m - 2, 0)] >= means[jnp.maximum(m - 1, 0)])

    def push(i, state):
        means, counts, starts, m = state
        means = means.at[m].set(y[i])
        counts = counts.at[m].set(1)
        starts = starts.at[m].set(i)
        return jax.lax.while_loop(violated, pool, (means, counts, starts, m + 1))

    means, counts, starts, m = jax.lax.fori_loop(
        0, n, push, (means, counts, starts, jnp.asarray(0, jnp.int32))
    )
    valid = jnp.arange(n) < m
    is_start = jnp.zeros(n, dtype=jnp.int32).at[jnp.where(valid, starts, n)].set(1, mode="drop")
    block = jnp.cumsum(is_start) - 1
    solution = means[block]
    # An undefined problem (a NaN entry) gives NaN everywhere rather than a partial answer.
    solution = _checks.nan_unless(jnp.logical_not(jnp.any(jnp.isnan(y))), solution)
    return solution, block, counts


@jax.custom_jvp
def _pav(y: jax.Array) -> jax.Array:
    return _pav_blocks(y)[0]


@_pav.defjvp
def _pav_jvp(primals, tangents):
    (y,), (dy,) = primals, tangents
    solution, block, counts = _pav_blocks(y)
    n = y.shape[0]
    block_sums = jax.ops.segment_sum(dy, block, num_segments=n, indices_are_sorted=True)
    return solution, block_sums[block] / counts[block]


def _pav_batched(y: jax.Array) -> jax.Array:
    if y.ndim == 1:
        return _pav(y)
    flat = y.reshape(-1, y.shape[-1])
    return jax.vmap(_pav)(flat).reshape(y.shape)


def isotonic_l2_pav(
    y: Any, y_min: Any = -jnp.inf, y_max: Any = jnp.inf, increasing: bool = True
) -> jax.Array:
    r"""Isotonic regression: the closest (in ℓ₂) monotone sequence to ``y``, by PAV.

    Solves, for ``increasing=True``, ``argmin_{v₁ ≤ … ≤ vₙ} ½‖v − y‖²`` (for ``False``,
    ``v₁ ≥ … ≥ vₙ``), then clips to ``[y_min, y_max]``, which solves the bounded problem. Each
    entry of the solution is the mean of ``y`` over its block (see the module docstring); the
    derivative averages the tangent over each block and is exact, including under ``jax.jit``,
    ``jax.vmap`` and reverse mode.

    Args:
      y: the sequence, a float array of shape ``(n,)``; an array with more dimensions is a
        batch, solved along the last axis. Integer input is converted to float.
      y_min: lower bound on the values (scalar or broadcastable to ``y``), default −∞.
      y_max: upper bound on the values, default +∞. ``y_min > y_max`` raises ``ValueError``
        (under ``jax.jit``, gives NaN).
      increasing: ``True`` for a non-decreasing solution, ``False`` for a non-increasing one.

    Returns:
      The solution, an array of the shape of ``y``. If ``y`` has a NaN entry, its row is NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> print(isotonic_l2_pav(jnp.array([3.0, 1.0, 2.0])))
      [2. 2. 2.]
      >>> print(isotonic_l2_pav(jnp.array([1.0, 3.0, 2.0]), increasing=False))
      [2. 2. 2.]
      >>> print(isotonic_l2_pav(jnp.array([-2.0, 0.5, 3.0]), y_min=-1.0, y_max=1.0))
      [-1.   0.5  1. ]
    """
    if not isinstance(increasing, (bool, np.bool_)):
        raise TypeError(f"isotonic_l2_pav: increasing must be True or False, got {increasing!r}")
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.complexfloating):
        raise TypeError(f"isotonic_l2_pav: y must be real, got dtype {y.dtype}")
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.result_type(float))
    if y.ndim == 0:
        raise ValueError("isotonic_l2_pav: y must have at least one dimension, got a scalar")
    _checks.check_real(y_min, "y_min", "isotonic_l2_pav")
    _checks.check_real(y_max, "y_max", "isotonic_l2_pav")
    y_min = jnp.asarray(y_min, dtype=y.dtype)
    y_max = jnp.asarray(y_max, dtype=y.dtype)
    bounds_valid = y_min <= y_max
    traced_bounds = _checks.is_traced((y_min, y_max))
    if not traced_bounds and not bool(jnp.all(bounds_valid)):
        raise ValueError(
            f"isotonic_l2_pav: y_min must be <= y_max, got y_min={y_min} and y_max={y_max}"
        )
    if y.shape[-1] == 0:
        return y
    return _solve(y, y_min, y_max, bool(increasing), traced_bounds)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _solve(
    y: jax.Array, y_min: jax.Array, y_max: jax.Array, increasing: bool, flag_bounds: bool
) -> jax.Array:
    """Compiled once per shape: the checks above run in Python, the rest in one program."""
    solution = _pav_batched(y) if increasing else -_pav_batched(-y)
    # Clip with the unclipped side's derivative at the bound (jnp.clip would halve it there).
    solution = jnp.where(solution < y_min, y_min, solution)
    solution = jnp.where(solution > y_max, y_max, solution)
    # y_min = y_max: the output is that point, constant in y (the clips above keep the
    # unclipped side's derivative at a tie, which is wrong when the box is a point); a NaN stays.
    point = (y_min == y_max) & jnp.logical_not(jnp.isnan(solution))
    solution = jnp.where(point, y_min, solution)
    if flag_bounds:
        solution = _checks.nan_unless(y_min <= y_max, solution)
    return solution
