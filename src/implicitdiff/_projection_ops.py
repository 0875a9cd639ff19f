"""Euclidean projections onto simple sets and cones (internal; see implicitdiff.projections).

The projections here are pure ``jax.numpy`` (plus the engine, for ``box_section``'s multiplier):
they sit low in the layers, so that :mod:`implicitdiff.losses`, :mod:`implicitdiff.optimality`
and the solvers can use them. The projections that need a solver (``polyhedron``, the transport
polytopes) live above the solvers, in :mod:`implicitdiff.projections`. The catalog, the
conventions and the rule for invalid sets are documented there.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from implicitdiff import _checks, tree
from implicitdiff._typing import PyTree
from implicitdiff.implicit import custom_root

__all__ = [
    "affine_set",
    "box",
    "box_section",
    "halfspace",
    "hypercube",
    "hyperplane",
    "l1_ball",
    "l1_sphere",
    "l2_ball",
    "l2_sphere",
    "linf_ball",
    "non_negative",
    "psd_cone",
    "second_order_cone",
    "simplex",
    "sparse_simplex",
]


# ---------------------------------------------------------------------------------------------
# Helpers: dtypes and checks of concrete hyperparameters.


def _float_array(x: ArrayLike) -> jax.Array:
    """x as a JAX array of a floating dtype (integers and booleans become the default float)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def _as_dtype_of(value: ArrayLike, x: jax.Array) -> jax.Array:
    """value as an array; Python numbers take x's dtype, arrays keep their own."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return jnp.asarray(value, dtype=x.dtype)
    return _float_array(value)


def _concrete_leaves(value: Any) -> list[np.ndarray] | None:
    """The leaves of value as NumPy arrays, or None if any of them is traced."""
    leaves = jax.tree_util.tree_leaves(value)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return None
    return [np.asarray(leaf) for leaf in leaves]


def _check_non_negative(name: str, value: Any) -> None:
    leaves = _concrete_leaves(value)
    if leaves is not None and any(np.any(leaf < 0) for leaf in leaves):
        raise ValueError(f"{name} must be non-negative, got {name}={value!r}")


def _check_ordered(lower_name: str, lower: Any, upper_name: str, upper: Any) -> None:
    """Raise if some entry of lower exceeds the matching entry of upper (both concrete)."""
    lo, up = _concrete_leaves(lower), _concrete_leaves(upper)
    if lo is None or up is None:
        return
    if len(lo) == 1:
        lo = lo * len(up)
    if len(up) == 1:
        up = up * len(lo)
    for a, b in zip(lo, up, strict=False):
        if np.any(np.greater(a, b)):
            raise ValueError(
                f"{lower_name} must not exceed {upper_name}: {lower_name} > {upper_name} in "
                f"some entry ({lower_name}={lower!r}, {upper_name}={upper!r})"
            )


def _safe_sqrt(square: jax.Array, positive: jax.Array) -> jax.Array:
    """sqrt(square) where ``positive``, else 1: no infinite derivative of sqrt at 0."""
    return jnp.sqrt(jnp.where(positive, square, 1.0))


def _norm(x: PyTree) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(‖x‖₂, a safe divisor, ‖x‖₂ > 0) for a pytree x, without overflow or underflow.

    ‖x‖₂ = m · sqrt(Σ (xⱼ/m)²) with m = ‖x‖∞ held constant (its derivative is x/‖x‖₂ all the
    same): exact to rounding for entries of 1e±30 in float32, whose squares over- or underflow.
    The norm is 0 at x = 0 with derivative 0 there (not NaN); the divisor equals the norm where
    it is positive and is positive elsewhere, so that dividing by it is safe in both branches of
    a ``jnp.where``.
    """
    m = jax.lax.stop_gradient(tree.norm(x, jnp.inf))
    scale = jnp.where((m > 0) & jnp.isfinite(m), m, jnp.ones_like(m))
    scaled = tree.map(lambda leaf: leaf / scale.astype(leaf.dtype), x)
    square = jnp.real(tree.vdot(scaled, scaled))
    positive = square > 0
    divisor = (scale * _safe_sqrt(square, positive)).astype(square.dtype)
    return jnp.where(positive, divisor, 0).astype(square.dtype), divisor, positive


# ---------------------------------------------------------------------------------------------
# Orthant, boxes and the ∞-ball.


def non_negative(x: PyTree, hyperparams: None = None) -> PyTree:
    """Projection onto the non-negative orthant ℝ₊ⁿ: p = max(x, 0), entry by entry.

    Args:
      x: an array or a pytree of arrays.
      hyperparams: unused (None).

    Returns:
      p, a pytree like x (integer leaves become the default float).

    Example:
      >>> import jax.numpy as jnp
      >>> non_negative(jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    del hyperparams
    return tree.map(lambda leaf: jnp.maximum(_float_array(leaf), 0), x)


def _bounds_like(x: PyTree, bound: Any) -> PyTree:
    """A bound as a pytree matching x: a pytree like x is kept, anything else broadcast per leaf."""
    x_struct = jax.tree_util.tree_structure(x)
    if jax.tree_util.tree_structure(bound) == x_struct:
        return bound
    return jax.tree_util.tree_unflatten(x_struct, [bound] * x_struct.num_leaves)


def box(x: PyTree, hyperparams: tuple[Any, Any]) -> PyTree:
    """Projection onto the box {y: lower ≤ y ≤ upper}: p = min(max(x, lower), upper).

    Args:
      x: an array or a pytree of arrays.
      hyperparams: ``(lower, upper)``, each a scalar, an array broadcastable to every leaf of x,
        or a pytree like x; lower ≤ upper entry by entry.

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> box(jnp.array([-2.0, 0.5, 3.0]), (-1.0, 1.0))
      Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    lower, upper = hyperparams
    _check_ordered("lower", lower, "upper", upper)

    traced = _checks.is_traced((lower, upper))

    def clip(leaf, lo, up):
        leaf = _float_array(leaf)
        lo, up = _as_dtype_of(lo, leaf), _as_dtype_of(up, leaf)
        if traced:  # unchecked bounds: NaN where lower > upper
            up = _checks.nan_unless(lo <= up, up)
        return jnp.minimum(jnp.maximum(leaf, lo), up)

    return tree.map(clip, x, _bounds_like(x, lower), _bounds_like(x, upper))


def hypercube(x: PyTree, hyperparams: ArrayLike = 1.0) -> PyTree:
    """Projection onto the hypercube [0, scale]ⁿ: p = min(max(x, 0), scale).

    Args:
      x: an array or a pytree of arrays.
      hyperparams: ``scale`` ≥ 0, a scalar (or an array broadcastable to the leaves of x).

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> hypercube(jnp.array([-1.0, 0.5, 3.0]), 2.0)
      Array([0. , 0.5, 2. ], dtype=float32)
    """
    _check_non_negative("scale", hyperparams)
    return box(x, (0.0, _checks.nan_if_negative(hyperparams)))


def linf_ball(x: PyTree, hyperparams: ArrayLike = 1.0) -> PyTree:
    """Projection onto the ∞-norm ball {y: ‖y‖∞ ≤ radius}: p = min(max(x, −radius), radius).

    Args:
      x: an array or a pytree of arrays.
      hyperparams: ``radius`` ≥ 0, a scalar.

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> linf_ball(jnp.array([-3.0, 0.5]), 1.0)
      Array([-1. ,  0.5], dtype=float32)
    """
    _check_non_negative("radius", hyperparams)
    radius = _checks.nan_if_negative(hyperparams)
    return tree.map(lambda leaf: box(leaf, (-_as_dtype_of(radius, _float_array(leaf)), radius)), x)


# ---------------------------------------------------------------------------------------------
# Simplex and ℓ₁ sets.


def _simplex_threshold(v: jax.Array, scale: jax.Array) -> jax.Array:
    """The τ with Σᵢ max(vᵢ − τ, 0) = scale, for a vector v with max(v) = 0, by sorting.

    v is x shifted by its largest entry (see :func:`_simplex_vector`): then τ ∈ [−scale, 0] and
    the entries of the support lie within scale of 0, so the cumulative sums below involve
    numbers of the size of scale and are exact to rounding, whatever the magnitude of x (the
    unshifted sums lost every digit of scale beside entries of 1e8 in float32, 1e17 in float64).
    """
    u = jnp.sort(v)[::-1]
    excess = jnp.cumsum(u) - scale  # Σ_{j ≤ k} u_j − scale: k τ_k for the k largest entries
    k = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    # The support is the largest k with u_k > τ_k = excess_k / k; the condition holds on a prefix.
    count = jnp.sum(u * k > excess)
    count = jnp.maximum(count, 1)  # scale = 0 (or rounding): keep τ = max(v), p = 0
    return excess[count - 1] / count.astype(v.dtype)


@jax.custom_jvp
def _simplex_vector(x: jax.Array, scale: jax.Array) -> jax.Array:
    """Projection of the vector x onto {p ≥ 0, Σp = scale}: p = max(x − τ, 0).

    Computed as max((x − m) − τ′, 0) with m = max(x) and τ′ = τ − m the threshold of x − m.
    """
    v = x - jnp.max(x)
    return jnp.maximum(v - _simplex_threshold(v, scale), 0)


@_simplex_vector.defjvp
def _simplex_vector_jvp(primals, tangents):
    x, scale = primals
    dx, dscale = tangents
    p = _simplex_vector(x, scale)
    # On the support s = {p > 0}: p = x − τ with τ = (sᵀx − scale)/|s|, elsewhere p = 0. Hence
    # dp = s ⊙ dx − ((sᵀdx − dscale)/|s|) s.
    support = (p > 0).astype(p.dtype)
    size = jnp.maximum(jnp.sum(support), 1)
    dtau = (jnp.vdot(support, dx) - dscale) / size
    return p, support * (dx - dtau)


def _simplex_any_shape(x: jax.Array, scale: jax.Array) -> jax.Array:
    if x.size == 0:
        raise ValueError(
            "x must have at least one entry (the simplex and the ℓ₁ sphere of ℝ⁰ are empty sets)"
        )
    return _simplex_vector(x.ravel(), jnp.broadcast_to(scale, ())).reshape(x.shape)


def simplex(x: ArrayLike, hyperparams: ArrayLike = 1.0) -> jax.Array:
    """Projection onto the simplex {p: p ≥ 0, Σp = scale}.

    p = max(x − τ, 0) with the threshold τ such that Σ max(x − τ, 0) = scale, found by sorting x
    (O(n log n)). The derivative is closed-form: with s the indicator of the support {p > 0},
    J v = s ⊙ v − (sᵀv / |s|) s, and ∂p/∂scale = s / |s|.

    Args:
      x: an array of any shape; the sum runs over all of its entries.
      hyperparams: ``scale`` ≥ 0, a scalar.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> simplex(jnp.array([1.0, 0.5, -1.0]))
      Array([0.75, 0.25, 0.  ], dtype=float32)
    """
    _check_non_negative("scale", hyperparams)
    x = _float_array(x)
    return _simplex_any_shape(x, _as_dtype_of(_checks.nan_if_negative(hyperparams), x))


def sparse_simplex(x: ArrayLike, hyperparams: tuple[ArrayLike, int]) -> jax.Array:
    """Projection onto the k-sparse simplex {p: p ≥ 0, Σp = scale, ‖p‖₀ ≤ max_nz}.

    The set is not convex; a closest point keeps the ``max_nz`` largest entries of x, projects
    them onto the simplex of size ``scale`` and sets the others to zero (Kyrillidis et al.,
    "Sparse projections onto the simplex", 2013). Ties between equal entries are broken by
    position. The derivative is that of the simplex projection on the kept entries.

    Args:
      x: an array of any shape; all its entries are considered together.
      hyperparams: ``(scale, max_nz)``: ``scale`` ≥ 0 a scalar, ``max_nz`` ≥ 1 a Python int
        (static: it fixes shapes; under ``jax.jit`` close over it rather than pass it traced).

    Returns:
      p, shaped like x, with at most ``max_nz`` nonzero entries.

    Example:
      >>> import jax.numpy as jnp
      >>> sparse_simplex(jnp.array([1.0, 0.25, 0.5]), (1.0, 2))
      Array([0.75, 0.  , 0.25], dtype=float32)
    """
    scale, max_nz = hyperparams
    _check_non_negative("scale", scale)
    try:
        max_nz = operator.index(max_nz)
    except TypeError:
        raise TypeError(
            f"max_nz must be a Python int (it fixes shapes), got {type(max_nz).__name__}"
        ) from None
    if max_nz < 1:
        raise ValueError(f"max_nz must be at least 1, got max_nz={max_nz}")
    x = _float_array(x)
    scale = _as_dtype_of(_checks.nan_if_negative(scale), x)
    flat = x.ravel()
    if max_nz >= flat.shape[0]:
        return _simplex_any_shape(x, scale)
    values, indices = jax.lax.top_k(flat, max_nz)
    kept = _simplex_vector(values, jnp.broadcast_to(scale, ()))
    # (a NaN scale, from a traced negative one, makes every entry NaN, not only the kept ones)
    rest = jnp.where(jnp.isnan(scale), jnp.nan, jnp.zeros_like(flat))
    return rest.at[indices].set(kept).reshape(x.shape)


def l1_sphere(x: ArrayLike, hyperparams: ArrayLike = 1.0) -> jax.Array:
    """Projection onto the ℓ₁ sphere {y: ‖y‖₁ = radius}.

    The set is not convex. A closest point has the signs of x, so p = σ ⊙ simplex(|x|, radius)
    with σᵢ = sign(xᵢ) (+1 where xᵢ = 0): the closest point of the face σ ⊙ simplex.

    Args:
      x: an array of any shape; the norm runs over all of its entries.
      hyperparams: ``radius`` ≥ 0, a scalar.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> l1_sphere(jnp.array([0.25, -0.25]))
      Array([ 0.5, -0.5], dtype=float32)
    """
    _check_non_negative("radius", hyperparams)
    hyperparams = _checks.nan_if_negative(hyperparams)
    x = _float_array(x)
    signs = jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
    return signs * _simplex_any_shape(jnp.abs(x), _as_dtype_of(hyperparams, x))


def l1_ball(x: ArrayLike, hyperparams: ArrayLike = 1.0) -> jax.Array:
    """Projection onto the ℓ₁ ball {y: ‖y‖₁ ≤ radius}.

    p = x if ‖x‖₁ ≤ radius, else sign(x) ⊙ simplex(|x|, radius) = sign(x) ⊙ max(|x| − τ, 0),
    a soft thresholding at the level τ that brings the norm down to the radius.

    Args:
      x: an array of any shape; the norm runs over all of its entries.
      hyperparams: ``radius`` ≥ 0, a scalar.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> l1_ball(jnp.array([2.0, -1.0]))
      Array([ 1., -0.], dtype=float32)
    """
    _check_non_negative("radius", hyperparams)
    x = _float_array(x)
    if x.size == 0:  # ℝ⁰ is the ball
        return x
    radius = _as_dtype_of(_checks.nan_if_negative(hyperparams), x)
    inside = jnp.sum(jnp.abs(x)) <= radius
    return jnp.where(inside, x, l1_sphere(x, radius))


# ---------------------------------------------------------------------------------------------
# ℓ₂ sets.


def l2_ball(x: PyTree, hyperparams: ArrayLike = 1.0) -> PyTree:
    """Projection onto the Euclidean ball {y: ‖y‖₂ ≤ radius}: p = x · min(1, radius / ‖x‖₂).

    Args:
      x: an array or a pytree of arrays (the norm is that of all entries together).
      hyperparams: ``radius`` ≥ 0, a scalar.

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> l2_ball(jnp.array([3.0, 4.0]), 1.0)
      Array([0.6, 0.8], dtype=float32)
    """
    _check_non_negative("radius", hyperparams)
    x = tree.map(_float_array, x)
    radius = _as_dtype_of(hyperparams, jnp.zeros((), tree.dtype(x)))
    norm, divisor, _ = _norm(x)
    outside = norm > radius
    factor = jnp.where(outside, radius / divisor, 1.0)
    if _checks.is_traced(hyperparams):  # unchecked radius: NaN if negative
        factor = _checks.nan_unless(radius >= 0, factor)
    return tree.map(lambda leaf: (factor * leaf).astype(leaf.dtype), x)


def l2_sphere(x: PyTree, hyperparams: ArrayLike = 1.0) -> PyTree:
    """Projection onto the Euclidean sphere {y: ‖y‖₂ = radius}: p = radius · x / ‖x‖₂.

    The set is not convex. At x = 0 every point of the sphere is closest; this returns
    radius · e₁, the first entry of the first leaf set to the radius.

    Args:
      x: an array or a pytree of arrays (the norm is that of all entries together).
      hyperparams: ``radius`` ≥ 0, a scalar.

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> l2_sphere(jnp.array([0.3, 0.4]), 1.0)
      Array([0.6, 0.8], dtype=float32)
    """
    _check_non_negative("radius", hyperparams)
    x = tree.map(_float_array, x)
    radius = _as_dtype_of(_checks.nan_if_negative(hyperparams), jnp.zeros((), tree.dtype(x)))
    _, divisor, nonzero = _norm(x)
    factor = radius / divisor
    leaves, treedef = jax.tree_util.tree_flatten(x)
    first = [jnp.zeros_like(leaf) for leaf in leaves]
    if first:
        first[0] = first[0].ravel().at[0].set(1).reshape(leaves[0].shape)
    e1 = jax.tree_util.tree_unflatten(treedef, first)
    return tree.map(
        lambda leaf, e: jnp.where(nonzero, factor * leaf, radius * e).astype(leaf.dtype), x, e1
    )


# ---------------------------------------------------------------------------------------------
# Affine sets.


def _check_same_shape(name: str, a: jax.Array, x: jax.Array) -> None:
    if a.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x, {x.shape}; got {a.shape}")


def _normal_and_offset(
    x: PyTree, hyperparams: tuple[Any, Any], name: str
) -> tuple[PyTree, PyTree, jax.Array, jax.Array, Any]:
    """(x, â, b̂, a ≠ 0, the concrete (a, b) or None) for the set {y: aᵀy ⋈ b}.

    â = a / ‖a‖∞ and b̂ = b / ‖a‖∞ describe the same set (when a ≠ 0) and keep ‖â‖² of the
    order of 1, whatever the magnitude of a. a is a pytree with the structure and leaf shapes of
    x (an array for an array x); b a scalar.
    """
    a, b = hyperparams
    x = tree.map(_float_array, x)
    x_leaves, x_def = jax.tree_util.tree_flatten(x)
    if not x_leaves:
        raise ValueError(f"{name}: x has no leaves")
    a_leaves, a_def = jax.tree_util.tree_flatten(a)
    if a_def != x_def:
        raise ValueError(f"{name}: a must have the structure of x, {x_def}; got {a_def}")
    a_leaves = [_as_dtype_of(leaf, xl) for leaf, xl in zip(a_leaves, x_leaves, strict=True)]
    for leaf, xl in zip(a_leaves, x_leaves, strict=True):
        _check_same_shape("a", leaf, xl)
    a = jax.tree_util.tree_unflatten(x_def, a_leaves)
    b = _as_dtype_of(b, jnp.zeros((), tree.dtype(x)))
    if b.shape != ():
        raise ValueError(f"{name}: b must be a scalar, got shape {b.shape}")
    concrete = _concrete_leaves((a, b))
    m = jax.lax.stop_gradient(tree.norm(a, jnp.inf))  # the set does not depend on it
    nonzero = m > 0
    safe = jnp.where(nonzero, m, 1)
    a_hat = tree.map(lambda leaf: leaf / safe.astype(leaf.dtype), a)
    return x, a_hat, b / safe, nonzero, concrete


def _empty_set_error(name: str, condition: str, b: np.ndarray) -> ValueError:
    return ValueError(
        f"{name}: a = 0 and b = {b.item()!r}: the set {{y: {condition}}} is empty (a must not "
        "be 0 unless the set is all of the space)"
    )


def _step_along(x: PyTree, a_hat: PyTree, excess: jax.Array, nonzero: jax.Array) -> PyTree:
    """x − (excess / ‖â‖²) â, with a finite (unused) value where a = 0."""
    square = jnp.real(tree.vdot(a_hat, a_hat))
    step = excess / jnp.where(nonzero, square, 1)
    return tree.map(lambda leaf, ai: (leaf - step * ai).astype(leaf.dtype), x, a_hat)


def hyperplane(x: PyTree, hyperparams: tuple[Any, Any]) -> PyTree:
    """Projection onto the hyperplane {y: aᵀy = b}: p = x − ((aᵀx − b) / ‖a‖²) a.

    a is rescaled to ‖a‖∞ = 1 first (with b), so that ‖a‖² neither overflows nor underflows.
    For a = 0 the set is all of the space when b = 0 (p = x) and empty otherwise: a concrete
    (a, b) then raises ``ValueError``; a traced one gives NaN.

    Args:
      x: an array, or a pytree of arrays (aᵀy sums over all entries of all leaves).
      hyperparams: ``(a, b)``: a shaped like x (a pytree of the structure of x for a pytree x)
        and a scalar b.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> hyperplane(jnp.array([1.0, 1.0]), (jnp.array([1.0, 0.0]), 0.0))
      Array([0., 1.], dtype=float32)
    """
    x, a_hat, b_hat, nonzero, concrete = _normal_and_offset(x, hyperparams, "hyperplane")
    if concrete is not None and not np.any([np.any(leaf != 0) for leaf in concrete[:-1]]):
        if concrete[-1] != 0:
            raise _empty_set_error("hyperplane", "0ᵀy = b", concrete[-1])
        return x
    p = _step_along(x, a_hat, jnp.real(tree.vdot(a_hat, x)) - b_hat, nonzero)
    # a = 0: the whole space if b = 0, else the empty set (NaN).
    fallback = tree.map(lambda leaf: _checks.nan_unless(b_hat == 0, leaf), x)
    return tree.where(nonzero, p, fallback)


def halfspace(x: PyTree, hyperparams: tuple[Any, Any]) -> PyTree:
    """Projection onto the halfspace {y: aᵀy ≤ b}: p = x − (max(aᵀx − b, 0) / ‖a‖²) a.

    a is rescaled to ‖a‖∞ = 1 first (with b), so that ‖a‖² neither overflows nor underflows.
    For a = 0 the set is all of the space when b ≥ 0 (p = x) and empty when b < 0: a concrete
    (a, b) then raises ``ValueError``; a traced one gives NaN.

    Args:
      x: an array, or a pytree of arrays (aᵀy sums over all entries of all leaves).
      hyperparams: ``(a, b)``: a shaped like x (a pytree of the structure of x for a pytree x)
        and a scalar b.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> halfspace(jnp.array([2.0, 1.0]), (jnp.array([1.0, 0.0]), 1.0))
      Array([1., 1.], dtype=float32)
    """
    x, a_hat, b_hat, nonzero, concrete = _normal_and_offset(x, hyperparams, "halfspace")
    if concrete is not None and not np.any([np.any(leaf != 0) for leaf in concrete[:-1]]):
        if concrete[-1] < 0:
            raise _empty_set_error("halfspace", "0ᵀy ≤ b", concrete[-1])
        return x
    excess = jnp.maximum(jnp.real(tree.vdot(a_hat, x)) - b_hat, 0)
    p = _step_along(x, a_hat, excess, nonzero)
    fallback = tree.map(lambda leaf: _checks.nan_unless(b_hat >= 0, leaf), x)
    return tree.where(nonzero, p, fallback)


def _affine_factors(A: jax.Array, b: jax.Array):
    """The SVD A = U diag(σ) Vᵀ (thin), the mask of the singular values kept as nonzero, and
    whether b lies in the range of A (up to rounding).

    Singular values σ ≤ max(m, n) · eps · σ_max are treated as zero (NumPy's ``matrix_rank``
    rule). b is in the range when the least-norm solution y₀ = A⁺b satisfies A y₀ = b to
    rounding: ‖A y₀ − b‖ ≤ 8 max(m, n) eps (σ_max ‖y₀‖ + ‖b‖).
    """
    m, n = A.shape
    eps = jnp.finfo(A.dtype).eps
    U, sigma, Vt = jnp.linalg.svd(A, full_matrices=False)
    sigma_max = jnp.max(sigma, initial=0)
    kept = sigma > max(m, n) * eps * sigma_max
    inverse = jnp.where(kept, 1 / jnp.where(kept, sigma, 1), 0)
    y0 = Vt.T @ (inverse * (U.T @ b))
    residual = A @ y0 - b
    bound = 8 * max(m, n) * eps * (sigma_max * _norm(y0)[0] + _norm(b)[0])
    consistent = _norm(residual)[0] <= bound
    return U, inverse, Vt, kept, y0, consistent


@jax.custom_jvp
def _affine_projection(x: jax.Array, A: jax.Array, b: jax.Array) -> jax.Array:
    """p = x − A⁺(Ax − b) = (I − A⁺A) x + A⁺b, NaN if b is not in the range of A."""
    _, _, Vt, kept, y0, consistent = _affine_factors(A, b)
    row_part = Vt.T @ jnp.where(kept, Vt @ x, 0)  # A⁺A x, the component of x in the row space
    return _checks.nan_unless(consistent, x - row_part + y0)


@_affine_projection.defjvp
def _affine_projection_jvp(primals, tangents):
    # With P_N = I − A⁺A (the projector onto the null space of A) and λ = A⁺ᵀ(x − p) the
    # multiplier of A y = b, for perturbations that keep the rank of A (Golub and Pereyra, 1973):
    #   dp = P_N (dx − dAᵀ λ) − A⁺ (dA p − db).
    x, A, b = primals
    dx, dA, db = tangents
    U, inverse, Vt, kept, _, consistent = _affine_factors(A, b)
    p = _affine_projection(x, A, b)

    def pinv(v):  # A⁺ v
        return Vt.T @ (inverse * (U.T @ v))

    def null(v):  # P_N v
        return v - Vt.T @ jnp.where(kept, Vt @ v, 0)

    lam = U @ (inverse * (Vt @ (x - p)))  # A⁺ᵀ (x − p)
    dp = null(dx - dA.T @ lam) - pinv(dA @ p - db)
    return p, _checks.nan_unless(consistent, dp)


def affine_set(x: ArrayLike, hyperparams: tuple[ArrayLike, ArrayLike]) -> jax.Array:
    """Projection onto the affine set {y: A y = b}, for any m × n matrix A.

    p = x − A⁺(Ax − b) = (I − A⁺A) x + A⁺b, with the pseudo-inverse A⁺ of the thin SVD
    A = U diag(σ) Vᵀ: the exact projection also when the rows of A are linearly dependent (m may
    exceed n). Singular values σ ≤ max(m, n) · eps · σ_max count as zero, so rows equal up to
    rounding are one constraint. The set is empty when b is not in the range of A (up to
    rounding: ‖A A⁺b − b‖ ≤ 8 max(m, n) eps (σ_max ‖A⁺b‖ + ‖b‖)): a concrete (A, b) then raises
    ``ValueError``, a traced one gives NaN. The derivative, for perturbations that keep the rank
    of A, is dp = P_N (dx − dAᵀλ) − A⁺(dA p − db), with P_N = I − A⁺A and λ = A⁺ᵀ(x − p).

    Args:
      x: a vector of length n.
      hyperparams: ``(A, b)``: an m × n matrix and a vector of length m.

    Returns:
      p, a vector of length n.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
      >>> jnp.round(affine_set(jnp.array([1.0, 0.0, 0.0]), (A, jnp.array([0.0, 2.0]))), 4)
      Array([ 0.5, -0.5,  2. ], dtype=float32)
    """
    A, b = hyperparams
    x = _float_array(x)
    A = _as_dtype_of(A, x)
    b = _as_dtype_of(b, x)
    if x.ndim != 1 or A.ndim != 2 or A.shape[1] != x.shape[0] or b.shape != A.shape[:1]:
        raise ValueError(
            "affine_set needs x of shape (n,), A of shape (m, n) and b of shape (m,); got "
            f"x {x.shape}, A {A.shape}, b {b.shape}"
        )
    dtype = jnp.result_type(x, A, b)
    x, A, b = x.astype(dtype), A.astype(dtype), b.astype(dtype)
    if A.shape[0] == 0 or x.shape[0] == 0:  # no constraint, or ℝ⁰ (empty unless b = 0)
        if A.shape[0] and _concrete_leaves(b) is not None and np.any(np.asarray(b) != 0):
            raise ValueError(f"affine_set: b must be 0 for A of shape {A.shape}, got b={b!r}")
        return x
    if not _checks.is_traced((A, b)):
        *_, kept, _, consistent = _affine_factors(A, b)
        if not bool(consistent):
            raise ValueError(
                "affine_set: the set {y: A y = b} is empty: b is not in the range of A (up to "
                f"rounding; A has shape {A.shape} and numerical rank {int(np.sum(kept))})"
            )
    return _affine_projection(x, A, b)


# ---------------------------------------------------------------------------------------------
# Box section {α ≤ y ≤ β, wᵀy = c}: bisection on the multiplier, implicit differentiation.

_BISECTION_STEPS = 100


def _box_section_primal(mu, x, alpha, beta, w):
    """The minimizer y(μ) = clip(x − μ w, α, β) of the Lagrangian for the multiplier μ."""
    return jnp.clip(x - mu * w, alpha, beta)


def _box_section_residual(mu, x, alpha, beta, w, c):
    """The dual optimality condition φ(μ) = wᵀ y(μ) − c = 0 (φ is non-increasing in μ)."""
    return jnp.vdot(w, _box_section_primal(mu, x, alpha, beta, w)) - c


def _scalar_solve(matvec, b):
    """u = b / a for the 1 × 1 system a u = b, and u = 0 when a = 0 (the least-norm solution).

    a = −Σ_{free i} wᵢ² vanishes when no coordinate with wᵢ ≠ 0 is strictly inside its bounds.
    Then y does not depend on μ (μ only moves free coordinates with wᵢ ≠ 0), so any finite
    derivative of μ gives the exact derivative of y; 0 is chosen.
    """
    a = matvec(jnp.ones_like(b))
    nonzero = a != 0
    return jnp.where(nonzero, b / jnp.where(nonzero, a, 1), 0)


def _bisection_step(_, state):
    """Halve two brackets: [lo_a, hi_a] around the first μ with φ(μ) ≤ tol, [lo_b, hi_b] around
    the first μ with φ(μ) < −tol (φ is non-increasing)."""
    lo_a, hi_a, lo_b, hi_b, tol, x, alpha, beta, w, c = state
    mid_a, mid_b = 0.5 * (lo_a + hi_a), 0.5 * (lo_b + hi_b)
    right_a = _box_section_residual(mid_a, x, alpha, beta, w, c) > tol
    right_b = _box_section_residual(mid_b, x, alpha, beta, w, c) >= -tol
    return (
        jnp.where(right_a, mid_a, lo_a),
        jnp.where(right_a, hi_a, mid_a),
        jnp.where(right_b, mid_b, lo_b),
        jnp.where(right_b, hi_b, mid_b),
        tol,
        x,
        alpha,
        beta,
        w,
        c,
    )


def _box_section_bisection(mu0, x, alpha, beta, w, c):
    """The multiplier μ with φ(μ) = 0, by bisection between the breakpoints, then made exact.

    The roots of φ form an interval [μ_a, μ_b], a single point unless no coordinate is free.
    Both ends are bracketed (up to a rounding tolerance on φ) and the middle is taken, so that
    in the degenerate case μ sits strictly inside the interval, away from any breakpoint.
    """
    del mu0
    moving = w != 0
    safe_w = jnp.where(moving, w, 1)
    # y_i(μ) leaves its bounds at the breakpoints (x_i − α_i)/w_i and (x_i − β_i)/w_i: outside
    # [lo, hi] every moving coordinate sits on a bound, φ is constant, and the root lies inside.
    first = (x - alpha) / safe_w
    second = (x - beta) / safe_w
    lo = jnp.min(jnp.where(moving, jnp.minimum(first, second), jnp.inf))
    hi = jnp.max(jnp.where(moving, jnp.maximum(first, second), -jnp.inf))
    any_moving = jnp.any(moving)
    lo = jnp.where(any_moving, lo, 0)
    hi = jnp.where(any_moving, hi, 0)
    # φ is a sum of n terms: below this level its sign is rounding noise.
    magnitude = jnp.sum(jnp.abs(w) * jnp.maximum(jnp.abs(alpha), jnp.abs(beta))) + jnp.abs(c)
    tol = 16 * jnp.finfo(x.dtype).eps * magnitude

    state = (lo, hi, lo, hi, tol, x, alpha, beta, w, c)
    lo_a, hi_a, lo_b, hi_b, *_ = jax.lax.fori_loop(0, _BISECTION_STEPS, _bisection_step, state)
    mid = 0.25 * (lo_a + hi_a + lo_b + hi_b)
    # On the free set F at mid, φ is affine: μ = (Σ_F w x + Σ_{bounds} w y − c) / Σ_F w².
    y = x - mid * w
    free = (y > alpha) & (y < beta)
    at_bound = jnp.clip(y, alpha, beta)
    denominator = jnp.sum(jnp.where(free, w * w, 0))
    numerator = jnp.sum(jnp.where(free, w * x, w * at_bound)) - c
    exact = numerator / jnp.where(denominator > 0, denominator, 1)
    return jnp.where(denominator > 0, jnp.clip(exact, lo_a, hi_b), mid)


_box_section_multiplier = custom_root(
    _box_section_residual, solve=_scalar_solve, symmetric=True, on_failure="ignore"
)(_box_section_bisection)


def box_section(x: ArrayLike, hyperparams: tuple[Any, Any, Any, Any]) -> jax.Array:
    """Projection onto the section of a box by a hyperplane, {y: α ≤ y ≤ β, wᵀy = c}.

    p = clip(x − μ w, α, β), where the multiplier μ of the equality solves the one-dimensional
    dual condition φ(μ) = wᵀ clip(x − μ w, α, β) − c = 0 (φ is non-increasing). μ is found by
    bisection between the breakpoints, then made exact on the free set F = {α < p < β}:
    μ = (Σ_F wᵢxᵢ + Σ_{i∉F} wᵢpᵢ − c) / Σ_F wᵢ². Its derivative comes from the implicit function
    theorem on φ(μ, θ) = 0 (:func:`implicitdiff.implicit.custom_root`), that is
    dμ = ∂_θφ dθ / Σ_F wᵢ²; when Σ_F wᵢ² = 0, p does not depend on μ and dμ = 0 is used.

    Args:
      x: a vector (or an array of any shape; wᵀy sums over all entries).
      hyperparams: ``(alpha, beta, w, c)``: finite bounds α ≤ β (scalars or arrays
        broadcastable to x), weights w (broadcastable to x) and a scalar c. The set is
        non-empty iff Σ min(wα, wβ) ≤ c ≤ Σ max(wα, wβ) (up to rounding): otherwise a
        concrete set raises ``ValueError`` and a traced one gives NaN.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> box_section(jnp.array([1.0, 0.6, 0.0]), (0.0, 1.0, jnp.ones(3), 1.0))
      Array([0.7, 0.3, 0. ], dtype=float32)
    """
    alpha, beta, w, c = hyperparams
    _check_ordered("alpha", alpha, "beta", beta)
    x = _float_array(x)
    traced = _checks.is_traced((alpha, beta))
    alpha = jnp.broadcast_to(_as_dtype_of(alpha, x), x.shape)
    beta = jnp.broadcast_to(_as_dtype_of(beta, x), x.shape)
    if traced:  # unchecked bounds: NaN where alpha > beta
        beta = _checks.nan_unless(alpha <= beta, beta)
    w = jnp.broadcast_to(_as_dtype_of(w, x), x.shape)
    c = _as_dtype_of(c, x)
    if c.shape != ():
        raise ValueError(f"c must be a scalar, got shape {c.shape}")
    # The set is non-empty iff Σ min(wα, wβ) ≤ c ≤ Σ max(wα, wβ) (up to rounding).
    low = jnp.sum(jnp.minimum(w * alpha, w * beta))
    high = jnp.sum(jnp.maximum(w * alpha, w * beta))
    magnitude = jnp.sum(jnp.abs(w) * jnp.maximum(jnp.abs(alpha), jnp.abs(beta))) + jnp.abs(c)
    slack = 16 * x.size * jnp.finfo(x.dtype).eps * magnitude
    non_empty = (low - slack <= c) & (c <= high + slack)
    if not _checks.is_traced((alpha, beta, w, c)):
        if not bool(non_empty):
            raise ValueError(
                f"c must lie in [{float(low)}, {float(high)}] for the set "
                f"{{alpha ≤ y ≤ beta, wᵀy = c}} to be non-empty, got c={float(c)}"
            )
    mu = _box_section_multiplier(jnp.zeros((), x.dtype), x, alpha, beta, w, c)
    p = _box_section_primal(mu, x, alpha, beta, w)
    if _checks.is_traced((alpha, beta, w, c)):  # unchecked set: NaN where it is empty
        p = _checks.nan_unless(non_empty, p)
    return p


# ---------------------------------------------------------------------------------------------
# Cones.


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
    del hyperparams
    t, z = x
    z = _float_array(z)
    t = _as_dtype_of(t, z)
    if t.shape != ():
        raise ValueError(f"t must be a scalar, got shape {t.shape}")
    norm, divisor, _ = _norm(z)  # scaled: no overflow of ‖z‖² for large z in float32
    inside = (t >= 0) & (norm <= t)
    polar = (t < 0) & (norm <= -t)
    boundary = ~(inside | polar)  # then ‖z‖ > |t| ≥ 0
    half = 0.5 * (t + jnp.where(boundary, divisor, 0))
    t_out = jnp.where(inside, t, jnp.where(polar, 0, half))
    z_out = jnp.where(inside, z, jnp.where(polar, 0, (half / divisor) * z))
    return t_out.astype(t.dtype), z_out.astype(z.dtype)


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
    del hyperparams
    x = _float_array(x)
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"psd_cone needs square matrices (..., n, n), got shape {x.shape}")
    return _psd_symmetric(0.5 * (x + jnp.swapaxes(x, -1, -2)))
