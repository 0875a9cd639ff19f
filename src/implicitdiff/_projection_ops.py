"""Euclidean projections onto simple sets and cones (internal; see implicitdiff.projections).

The projections here are pure ``jax.numpy`` (plus the engine, for ``box_section``'s multiplier):
they sit low in the layers, so that :mod:`implicitdiff.losses`, :mod:`implicitdiff.optimality`
and the solvers can use them. The projections that need a solver (``polyhedron``, the transport
polytopes) live above the solvers, in :mod:`implicitdiff.projections`. The catalog, the
conventions and the rule for invalid sets are documented there.

This module defines the orthant, boxes, balls, spheres and simplices, and is the one name the
package imports for every projection of the layer: the affine sets and the box section
(:mod:`implicitdiff._projection_affine`) and the cones (:mod:`implicitdiff._projection_cones`)
are re-exported here. Their shared helpers are in :mod:`implicitdiff._projection_common`.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from implicitdiff import _checks, _support, tree
from implicitdiff._projection_affine import affine_set as affine_set
from implicitdiff._projection_affine import box_section as box_section
from implicitdiff._projection_affine import halfspace as halfspace
from implicitdiff._projection_affine import hyperplane as hyperplane
from implicitdiff._projection_common import (
    ONE,
    PROJECTIONS_TAKING_COMPLEX,
    as_dtype_of,
    check_ordered,
    float_array,
    in_dtype_of_x,
    jaxopt_keyword,
    limit_at_infinity,
    stable_norm,
)
from implicitdiff._projection_cones import psd_cone as psd_cone
from implicitdiff._projection_cones import second_order_cone as second_order_cone
from implicitdiff._typing import PyTree

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
# Orthant, boxes and the ∞-ball.


@in_dtype_of_x
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
    _checks.refuse_complex(x, "non_negative", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    del hyperparams
    return tree.map(lambda leaf: jnp.maximum(float_array(leaf), 0), x)


def _bounds_like(x: PyTree, bound: Any) -> PyTree:
    """A bound as a pytree matching x: a pytree like x is kept, anything else broadcast per leaf."""
    x_struct = jax.tree_util.tree_structure(x)
    if jax.tree_util.tree_structure(bound) == x_struct:
        return bound
    return jax.tree_util.tree_unflatten(x_struct, [bound] * x_struct.num_leaves)


@in_dtype_of_x
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
    _checks.refuse_complex(x, "box", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    lower, upper = _checks.unpack_parts("box", "hyperparams", hyperparams, ("lower", "upper"))
    check_ordered("lower", lower, "upper", upper)

    traced = _checks.is_traced((lower, upper))

    def clip(leaf, lo, up):
        leaf = float_array(leaf)
        lo, up = as_dtype_of(lo, leaf), as_dtype_of(up, leaf)
        if traced:  # unchecked bounds: NaN where lower > upper
            up = _checks.nan_unless(lo <= up, up)
        # Where lower = upper the set is a point, constant in x: min(max(x, l), u) would split
        # the tie x = l = u between its arguments (a derivative ¼ in x instead of 0). x is cut
        # there; the value, and the derivatives in the bounds, are the clip's.
        leaf = jnp.where(lo == up, jax.lax.stop_gradient(leaf), leaf)
        return jnp.minimum(jnp.maximum(leaf, lo), up)

    return tree.map(clip, x, _bounds_like(x, lower), _bounds_like(x, upper))


# The support tags (implicitdiff._support): where the projection's Jacobian is the identity, the
# other rows vanishing. A tie (yᵢ on a bound, where jnp.maximum's derivative is ½) counts as
# fixed: the Jacobian is not defined there and the restricted solve takes the one-sided 0.


def _non_negative_free(y: PyTree, hyperparams: None = None) -> PyTree:
    """yᵢ > 0: the interior of the orthant."""
    del hyperparams
    return tree.map(lambda leaf: float_array(leaf) > 0, y)


def _box_free(y: PyTree, hyperparams: tuple[Any, Any]) -> PyTree:
    """lowerᵢ < yᵢ < upperᵢ: the interior of the box."""
    lower, upper = hyperparams

    def inside(leaf, lo, up):
        leaf = float_array(leaf)
        return (leaf > as_dtype_of(lo, leaf)) & (leaf < as_dtype_of(up, leaf))

    return tree.map(inside, y, _bounds_like(y, lower), _bounds_like(y, upper))


_support.declare(non_negative, _non_negative_free)
_support.declare(box, _box_free)


def _set_size(function: str, hyperparams: Any, keyword: str, given: Any, name: str) -> Any:
    """The size of the set (``name``: its scale or radius): ``hyperparams``, or ``given`` by
    JAXopt's keyword ``keyword`` for it, checked non-negative when concrete (as it is given)."""
    size = jaxopt_keyword(function, hyperparams, keyword, given)
    _checks.check_non_negative(size, name, function)
    return size


@in_dtype_of_x
def hypercube(x: PyTree, hyperparams: ArrayLike = ONE, *, unit: ArrayLike | None = None) -> PyTree:
    """Projection onto the hypercube [0, scale]ⁿ: p = min(max(x, 0), scale).

    Args:
      x: an array or a pytree of arrays.
      hyperparams: ``scale`` ≥ 0, a scalar (or an array broadcastable to the leaves of x).
      unit: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> hypercube(jnp.array([-1.0, 0.5, 3.0]), 2.0)
      Array([0. , 0.5, 2. ], dtype=float32)
    """
    _checks.refuse_complex(x, "hypercube", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    hyperparams = _set_size("hypercube", hyperparams, "unit", unit, "scale")
    return box(x, (0.0, _checks.nan_if_negative(hyperparams)))


@in_dtype_of_x
def linf_ball(
    x: PyTree, hyperparams: ArrayLike = ONE, *, max_value: ArrayLike | None = None
) -> PyTree:
    """Projection onto the ∞-norm ball {y: ‖y‖∞ ≤ radius}: p = min(max(x, −radius), radius).

    Args:
      x: an array or a pytree of arrays.
      hyperparams: ``radius`` ≥ 0, a scalar.
      max_value: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> linf_ball(jnp.array([-3.0, 0.5]), 1.0)
      Array([-1. ,  0.5], dtype=float32)
    """
    _checks.refuse_complex(x, "linf_ball", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    hyperparams = _set_size("linf_ball", hyperparams, "max_value", max_value, "radius")
    radius = _checks.nan_if_negative(hyperparams)
    return tree.map(lambda leaf: box(leaf, (-as_dtype_of(radius, float_array(leaf)), radius)), x)


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
    With +∞ entries, the limit: they share the mass equally, the others get none.
    """
    m = jnp.max(x)
    # An entry equal to the largest one shifts to 0 exactly: +∞ entries too (∞ − ∞ would be
    # NaN), which then share the mass as the limit of equal large entries does.
    v = jnp.where(x == m, 0, x - m)
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


@in_dtype_of_x
def simplex(
    x: ArrayLike, hyperparams: ArrayLike = ONE, *, value: ArrayLike | None = None
) -> jax.Array:
    """Projection onto the simplex {p: p ≥ 0, Σp = scale}.

    p = max(x − τ, 0) with the threshold τ such that Σ max(x − τ, 0) = scale, found by sorting x
    (O(n log n)). The derivative is closed-form: with s the indicator of the support {p > 0},
    J v = s ⊙ v − (sᵀv / |s|) s, and ∂p/∂scale = s / |s|.

    Args:
      x: an array of any shape; the sum runs over all of its entries.
      hyperparams: ``scale`` ≥ 0, a scalar.
      value: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> simplex(jnp.array([1.0, 0.5, -1.0]))
      Array([0.75, 0.25, 0.  ], dtype=float32)
    """
    _checks.refuse_complex(x, "simplex", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    hyperparams = _set_size("simplex", hyperparams, "value", value, "scale")
    x = float_array(x)
    return _simplex_any_shape(x, as_dtype_of(_checks.nan_if_negative(hyperparams), x))


@in_dtype_of_x
def sparse_simplex(
    x: ArrayLike,
    hyperparams: tuple[ArrayLike, int] | int | None = None,
    use_approx_max_nz: bool = False,
    value: ArrayLike | None = None,
    *,
    max_nz: int | None = None,
) -> jax.Array:
    """Projection onto the k-sparse simplex {p: p ≥ 0, Σp = scale, ‖p‖₀ ≤ max_nz}.

    The set is not convex; a closest point keeps the ``max_nz`` largest entries of x, projects
    them onto the simplex of size ``scale`` and sets the others to zero (Kyrillidis et al.,
    "Sparse projections onto the simplex", 2013). Ties between equal entries are broken by
    position. The derivative is that of the simplex projection on the kept entries.

    Args:
      x: an array of any shape; all its entries are considered together.
      hyperparams: ``(scale, max_nz)``: ``scale`` ≥ 0 a scalar, ``max_nz`` ≥ 1 a Python int
        (static: it fixes shapes; under ``jax.jit`` close over it rather than pass it traced).
        Or, as JAXopt's ``projection_sparse_simplex(x, max_nz, use_approx_max_nz, value)``,
        ``max_nz`` alone (an int), with ``scale`` given as ``value`` (default 1).
      use_approx_max_nz: JAXopt's option (a bool): accepted; the ``max_nz`` largest entries
        are always found exactly (``lax.top_k``), which an approximate top-k may return too.
      value: JAXopt's name for ``scale``, with ``max_nz`` given alone (default 1).
      max_nz: JAXopt's keyword for ``max_nz``, with ``hyperparams`` not given.

    Returns:
      p, shaped like x, with at most ``max_nz`` nonzero entries.

    Example:
      >>> import jax.numpy as jnp
      >>> sparse_simplex(jnp.array([1.0, 0.25, 0.5]), (1.0, 2))
      Array([0.75, 0.  , 0.25], dtype=float32)
    """
    _checks.refuse_complex(x, "sparse_simplex", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    scale, max_nz = _sparse_simplex_arguments(hyperparams, use_approx_max_nz, value, max_nz)
    _checks.check_non_negative(scale, "scale", "sparse_simplex")
    try:
        max_nz = operator.index(max_nz)
    except TypeError:
        raise TypeError(
            f"sparse_simplex: max_nz must be a Python int (it fixes shapes), got "
            f"{type(max_nz).__name__} {max_nz!r} (hyperparams is (scale, max_nz), or max_nz alone)"
        ) from None
    if max_nz < 1:
        raise ValueError(f"sparse_simplex: max_nz must be at least 1, got max_nz={max_nz}")
    x = float_array(x)
    scale = as_dtype_of(_checks.nan_if_negative(scale), x)
    flat = x.ravel()
    if max_nz >= flat.shape[0]:
        return _simplex_any_shape(x, scale)
    values, indices = jax.lax.top_k(flat, max_nz)
    kept = _simplex_vector(values, jnp.broadcast_to(scale, ()))
    # (a NaN scale, from a traced negative one, makes every entry NaN, not only the kept ones)
    rest = _checks.nan_unless(jnp.logical_not(jnp.isnan(scale)), jnp.zeros_like(flat, kept.dtype))
    return rest.at[indices].set(kept).reshape(x.shape)


def _sparse_simplex_arguments(hyperparams, use_approx_max_nz, value, max_nz) -> tuple:
    """(scale, max_nz) from this library's ``(scale, max_nz)`` or JAXopt's arguments."""
    if not isinstance(use_approx_max_nz, bool):
        raise TypeError(
            f"sparse_simplex: use_approx_max_nz must be a bool, got {use_approx_max_nz!r}"
        )
    if isinstance(hyperparams, (tuple, list)):
        if value is not None or max_nz is not None:
            raise TypeError(
                "sparse_simplex: hyperparams=(scale, max_nz) and JAXopt's value= / max_nz= are "
                "both given; pass one form"
            )
        return _checks.unpack_parts(
            "sparse_simplex", "hyperparams", hyperparams, ("scale", "max_nz")
        )
    if hyperparams is not None:
        if max_nz is not None:
            raise TypeError("sparse_simplex: max_nz given twice (positionally and as max_nz=)")
        max_nz = hyperparams
    if max_nz is None:
        raise TypeError(
            "sparse_simplex: missing max_nz: pass hyperparams=(scale, max_nz), or max_nz (as "
            "JAXopt's projection_sparse_simplex(x, max_nz, use_approx_max_nz, value))"
        )
    return (1.0 if value is None else value), max_nz


@in_dtype_of_x
def l1_sphere(
    x: ArrayLike, hyperparams: ArrayLike = ONE, *, value: ArrayLike | None = None
) -> jax.Array:
    """Projection onto the ℓ₁ sphere {y: ‖y‖₁ = radius}.

    The set is not convex. A closest point has the signs of x, so p = σ ⊙ simplex(|x|, radius)
    with σᵢ = sign(xᵢ) (+1 where xᵢ = 0): the closest point of the face σ ⊙ simplex.

    Args:
      x: an array of any shape; the norm runs over all of its entries.
      hyperparams: ``radius`` ≥ 0, a scalar.
      value: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> l1_sphere(jnp.array([0.25, -0.25]))
      Array([ 0.5, -0.5], dtype=float32)
    """
    _checks.refuse_complex(x, "l1_sphere", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    hyperparams = _set_size("l1_sphere", hyperparams, "value", value, "radius")
    hyperparams = _checks.nan_if_negative(hyperparams)
    x = float_array(x)
    signs = jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
    return signs * _simplex_any_shape(jnp.abs(x), as_dtype_of(hyperparams, x))


@in_dtype_of_x
def l1_ball(
    x: ArrayLike, hyperparams: ArrayLike = ONE, *, max_value: ArrayLike | None = None
) -> jax.Array:
    """Projection onto the ℓ₁ ball {y: ‖y‖₁ ≤ radius}.

    p = x if ‖x‖₁ ≤ radius, else sign(x) ⊙ simplex(|x|, radius) = sign(x) ⊙ max(|x| − τ, 0),
    a soft thresholding at the level τ that brings the norm down to the radius.

    Args:
      x: an array of any shape; the norm runs over all of its entries.
      hyperparams: ``radius`` ≥ 0, a scalar.
      max_value: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> l1_ball(jnp.array([2.0, -1.0]))
      Array([ 1., -0.], dtype=float32)
    """
    _checks.refuse_complex(x, "l1_ball", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    hyperparams = _set_size("l1_ball", hyperparams, "max_value", max_value, "radius")
    x = float_array(x)
    if x.size == 0:  # ℝ⁰ is the ball
        return x
    radius = as_dtype_of(_checks.nan_if_negative(hyperparams), x)
    # Radius 0: the ball is {0}, which x = 0 is on but not inside (no derivative 1 there).
    inside = (jnp.sum(jnp.abs(x)) <= radius) & (radius > 0)
    return jnp.where(inside, x, l1_sphere(x, radius))


# ---------------------------------------------------------------------------------------------
# ℓ₂ sets.


@in_dtype_of_x
def l2_ball(
    x: PyTree, hyperparams: ArrayLike = ONE, *, max_value: ArrayLike | None = None
) -> PyTree:
    """Projection onto the Euclidean ball {y: ‖y‖₂ ≤ radius}: p = x · min(1, radius / ‖x‖₂).

    Args:
      x: an array or a pytree of arrays (the norm is that of all entries together; complex
        entries too, as pairs of reals).
      hyperparams: ``radius`` ≥ 0, a scalar.
      max_value: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> l2_ball(jnp.array([3.0, 4.0]), 1.0)
      Array([0.6, 0.8], dtype=float32)
    """
    hyperparams = _set_size("l2_ball", hyperparams, "max_value", max_value, "radius")
    x = tree.map(float_array, x)
    radius = as_dtype_of(hyperparams, jnp.zeros((), tree.dtype(x)))
    # x with an infinite entry: its limit direction, outside the ball (radius + 1 ≥ its norm
    # / √k), so that p = radius · direction / ‖direction‖; an infinite radius keeps x.
    x = limit_at_infinity(x, jnp.where(radius < jnp.inf, radius + 1, jnp.inf))
    norm, divisor, _ = stable_norm(x)
    outside = (norm > radius) | (radius == 0)  # radius 0: the ball is {0}, constant in x
    # (radius 0 in the branch not taken: an infinite radius would make its derivative NaN)
    factor = jnp.where(outside, jnp.where(outside, radius, 0) / divisor, 1.0)
    if _checks.is_traced(hyperparams):  # unchecked radius: NaN if negative
        factor = _checks.nan_unless(radius >= 0, factor)
    return tree.map(lambda leaf: (factor * leaf).astype(leaf.dtype), x)


@in_dtype_of_x
def l2_sphere(x: PyTree, hyperparams: ArrayLike = ONE, *, value: ArrayLike | None = None) -> PyTree:
    """Projection onto the Euclidean sphere {y: ‖y‖₂ = radius}: p = radius · x / ‖x‖₂.

    The set is not convex. At x = 0 every point of the sphere is closest; this returns
    radius · e₁, the first entry of the first leaf set to the radius.

    Args:
      x: an array or a pytree of arrays (the norm is that of all entries together; complex
        entries too, as pairs of reals).
      hyperparams: ``radius`` ≥ 0, a scalar.
      value: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      p, a pytree like x.

    Example:
      >>> import jax.numpy as jnp
      >>> l2_sphere(jnp.array([0.3, 0.4]), 1.0)
      Array([0.6, 0.8], dtype=float32)
    """
    hyperparams = _set_size("l2_sphere", hyperparams, "value", value, "radius")
    x = tree.map(float_array, x)
    radius = as_dtype_of(_checks.nan_if_negative(hyperparams), jnp.zeros((), tree.dtype(x)))
    x = limit_at_infinity(x, jnp.ones_like(radius))  # an infinite entry: its limit direction
    _, divisor, nonzero = stable_norm(x)
    factor = radius / divisor
    leaves, treedef = jax.tree_util.tree_flatten(x)
    first = [jnp.zeros_like(leaf) for leaf in leaves]
    if first:
        first[0] = first[0].ravel().at[0].set(1).reshape(leaves[0].shape)
    e1 = jax.tree_util.tree_unflatten(treedef, first)
    return tree.map(
        lambda leaf, e: jnp.where(nonzero, factor * leaf, radius * e).astype(leaf.dtype), x, e1
    )
