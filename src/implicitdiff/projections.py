"""Euclidean projections onto common sets, differentiable with respect to the point and the set.

Each function has the signature ``projection(x, hyperparams) -> p`` and returns

    p = argmin_{y ∈ C(hyperparams)} ½‖y − x‖²,

the closest point to ``x`` in a set ``C`` described by ``hyperparams``. Every projection runs
under ``jax.jit`` and ``jax.vmap`` (no Python branching on values), in float32 and float64, and
is differentiable with respect to ``x`` and to its array hyperparameters (almost everywhere: a
projection is piecewise smooth, with kinks where the set of active constraints changes). Such
projections are the building blocks of projected-gradient fixed points
T(x, θ) = proj(x − η∇f(x, θ), θ), whose derivatives :mod:`implicitdiff.implicit` computes.

Catalog (n = the number of entries of ``x``; sums and norms run over all of them):

=======================  ===============================================  ======================
function                 set C                                            hyperparams
=======================  ===============================================  ======================
``non_negative``         ℝ₊ⁿ (x may be a pytree)                          None
``box``                  {lower ≤ y ≤ upper} (x may be a pytree)          (lower, upper)
``hypercube``            [0, scale]ⁿ                                      scale = 1
``simplex``              {y ≥ 0, Σ y = scale}                             scale = 1
``sparse_simplex``       {y ≥ 0, Σ y = scale, at most max_nz nonzeros}    (scale, max_nz)
``l1_ball``              {‖y‖₁ ≤ radius}                                  radius = 1
``l1_sphere``            {‖y‖₁ = radius}                                  radius = 1
``l2_ball``              {‖y‖₂ ≤ radius} (x may be a pytree)              radius = 1
``l2_sphere``            {‖y‖₂ = radius} (x may be a pytree)              radius = 1
``linf_ball``            {‖y‖∞ ≤ radius} (x may be a pytree)              radius = 1
``hyperplane``           {aᵀy = b}                                        (a, b)
``halfspace``            {aᵀy ≤ b}                                        (a, b)
``affine_set``           {A y = b}, A of full row rank                    (A, b)
``box_section``          {α ≤ y ≤ β, wᵀy = c}                             (alpha, beta, w, c)
``second_order_cone``    {(t, z): ‖z‖₂ ≤ t}                               None
``psd_cone``             {Y = Yᵀ ⪰ 0}                                     None
``polyhedron``           {Ay = b, Gy ≤ h}, through the OSQP solver          (A, b, G, h)
``transport_polytope``   {P ≥ 0, P1 = a, Pᵀ1 = b}                         (a, b)
``birkhoff_polytope``    doubly stochastic matrices, U(1, 1)              None
=======================  ===============================================  ======================

The transport and Birkhoff polytopes also have KL (entropic) projections,
``kl_transport_polytope`` and ``kl_birkhoff_polytope``: argmin_{P ∈ U(a, b)} KL(P ‖ exp X), by
Sinkhorn in log space. The four are solved in the dual and differentiated implicitly (the dual's
stationarity through :func:`implicitdiff.custom_root`); see :mod:`implicitdiff._transport`.

``sparse_simplex`` and the two spheres are not convex: their projection is one of the closest
points (unique for almost every x). Hyperparameters that must be non-negative, or ordered
(lower ≤ upper), are checked when their values are concrete: a violation raises a ``ValueError``
that names the argument. Under ``jit``, ``vmap`` or a derivative (and inside a solver's compiled
``run``) values are traced and cannot raise: the projection then returns NaN where the set is
invalid, so that a solver using it ends with ``converged = False``. An empty ``x`` is a valid
point of ℝ⁰ for the balls, boxes and cones; the simplex and the ℓ₁ sphere of ℝ⁰ are empty sets,
and projecting onto them raises ``ValueError``.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from implicitdiff import _checks, tree
from implicitdiff._polyhedron import polyhedron
from implicitdiff._transport import (
    birkhoff_polytope,
    kl_birkhoff_polytope,
    kl_transport_polytope,
    transport_polytope,
)
from implicitdiff._typing import PyTree
from implicitdiff.implicit import custom_root

__all__ = [
    "affine_set",
    "birkhoff_polytope",
    "box",
    "box_section",
    "halfspace",
    "hypercube",
    "hyperplane",
    "kl_birkhoff_polytope",
    "kl_transport_polytope",
    "l1_ball",
    "l1_sphere",
    "l2_ball",
    "l2_sphere",
    "linf_ball",
    "non_negative",
    "polyhedron",
    "psd_cone",
    "second_order_cone",
    "simplex",
    "sparse_simplex",
    "transport_polytope",
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


def _squared_norm(x: PyTree) -> jax.Array:
    return jnp.real(tree.vdot(x, x))


# ---------------------------------------------------------------------------------------------
# Orthant, boxes and the ∞-ball.


def non_negative(x: PyTree, hyperparams: None = None) -> PyTree:
    """Projection onto the non-negative orthant ℝ₊ⁿ: p = max(x, 0), entry by entry.

    Args:
      x: an array or a pytree of arrays.
      hyperparams: unused (None).

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


def _simplex_threshold(x: jax.Array, scale: jax.Array) -> jax.Array:
    """The τ with Σᵢ max(xᵢ − τ, 0) = scale, for a vector x, by sorting (O(n log n))."""
    u = jnp.sort(x)[::-1]
    excess = jnp.cumsum(u) - scale  # Σ_{j ≤ k} u_j − scale: k τ_k for the k largest entries
    k = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    # The support is the largest k with u_k > τ_k = excess_k / k; the condition holds on a prefix.
    count = jnp.sum(u * k > excess)
    count = jnp.maximum(count, 1)  # scale = 0 (or rounding): keep τ = max(x), p = 0
    return excess[count - 1] / count.astype(x.dtype)


@jax.custom_jvp
def _simplex_vector(x: jax.Array, scale: jax.Array) -> jax.Array:
    """Projection of the vector x onto {p ≥ 0, Σp = scale}: p = max(x − τ, 0)."""
    return jnp.maximum(x - _simplex_threshold(x, scale), 0)


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
    return jnp.zeros_like(flat).at[indices].set(kept).reshape(x.shape)


def l1_sphere(x: ArrayLike, hyperparams: ArrayLike = 1.0) -> jax.Array:
    """Projection onto the ℓ₁ sphere {y: ‖y‖₁ = radius}.

    The set is not convex. A closest point has the signs of x, so p = σ ⊙ simplex(|x|, radius)
    with σᵢ = sign(xᵢ) (+1 where xᵢ = 0): the closest point of the face σ ⊙ simplex.

    Args:
      x: an array of any shape; the norm runs over all of its entries.
      hyperparams: ``radius`` ≥ 0, a scalar.

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

    Example:
      >>> import jax.numpy as jnp
      >>> l2_ball(jnp.array([3.0, 4.0]), 1.0)
      Array([0.6, 0.8], dtype=float32)
    """
    _check_non_negative("radius", hyperparams)
    x = tree.map(_float_array, x)
    radius = _as_dtype_of(hyperparams, jnp.zeros((), tree.dtype(x)))
    square = _squared_norm(x)
    outside = square > radius**2
    factor = jnp.where(outside, radius / _safe_sqrt(square, outside), 1.0)
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

    Example:
      >>> import jax.numpy as jnp
      >>> l2_sphere(jnp.array([0.3, 0.4]), 1.0)
      Array([0.6, 0.8], dtype=float32)
    """
    _check_non_negative("radius", hyperparams)
    x = tree.map(_float_array, x)
    radius = _as_dtype_of(_checks.nan_if_negative(hyperparams), jnp.zeros((), tree.dtype(x)))
    square = _squared_norm(x)
    nonzero = square > 0
    factor = radius / _safe_sqrt(square, nonzero)
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


def hyperplane(x: ArrayLike, hyperparams: tuple[ArrayLike, ArrayLike]) -> jax.Array:
    """Projection onto the hyperplane {y: aᵀy = b}: p = x − ((aᵀx − b) / ‖a‖²) a.

    Args:
      x: an array of any shape.
      hyperparams: ``(a, b)``: a nonzero array shaped like x (aᵀy sums over all entries) and a
        scalar b.

    Example:
      >>> import jax.numpy as jnp
      >>> hyperplane(jnp.array([1.0, 1.0]), (jnp.array([1.0, 0.0]), 0.0))
      Array([0., 1.], dtype=float32)
    """
    a, b = hyperparams
    x = _float_array(x)
    a = _as_dtype_of(a, x)
    _check_same_shape("a", a, x)
    step = (jnp.vdot(a, x) - b) / jnp.vdot(a, a)
    return x - step * a


def halfspace(x: ArrayLike, hyperparams: tuple[ArrayLike, ArrayLike]) -> jax.Array:
    """Projection onto the halfspace {y: aᵀy ≤ b}: p = x − (max(aᵀx − b, 0) / ‖a‖²) a.

    Args:
      x: an array of any shape.
      hyperparams: ``(a, b)``: a nonzero array shaped like x and a scalar b.

    Example:
      >>> import jax.numpy as jnp
      >>> halfspace(jnp.array([2.0, 1.0]), (jnp.array([1.0, 0.0]), 1.0))
      Array([1., 1.], dtype=float32)
    """
    a, b = hyperparams
    x = _float_array(x)
    a = _as_dtype_of(a, x)
    _check_same_shape("a", a, x)
    step = jnp.maximum(jnp.vdot(a, x) - b, 0) / jnp.vdot(a, a)
    return x - step * a


def affine_set(x: ArrayLike, hyperparams: tuple[ArrayLike, ArrayLike]) -> jax.Array:
    """Projection onto the affine set {y: A y = b}, A an m × n matrix of full row rank m ≤ n.

    p = x − Aᵀ(AAᵀ)⁻¹(Ax − b), computed without forming (AAᵀ)⁻¹: with the thin QR factorization
    Aᵀ = QR, p = x − Q(Qᵀx − R⁻ᵀb), one triangular solve.

    Args:
      x: a vector of length n.
      hyperparams: ``(A, b)``: an m × n matrix of rank m and a vector of length m.

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
    if A.shape[0] > A.shape[1]:
        raise ValueError(f"A must have full row rank: at most n rows, got shape {A.shape}")
    Q, R = jnp.linalg.qr(A.T, mode="reduced")
    # A = RᵀQᵀ, so A p = b for p = x − Q(Qᵀx − c) where Rᵀc = b.
    c = jax.scipy.linalg.solve_triangular(R, b, trans="T", lower=False)
    return x - Q @ (Q.T @ x - c)


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
        broadcastable to x), weights w (broadcastable to x) and a scalar c. The set must be
        non-empty: Σ min(wα, wβ) ≤ c ≤ Σ max(wα, wβ), else the result is not a projection.

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
    leaves = _concrete_leaves((alpha, beta, w, c))
    if leaves is not None:
        a, b, w_np, c_np = leaves
        low = np.sum(np.minimum(w_np * a, w_np * b))
        high = np.sum(np.maximum(w_np * a, w_np * b))
        slack = 1e-6 * max(1.0, float(np.abs(low)), float(np.abs(high)))
        if not low - slack <= c_np <= high + slack:
            raise ValueError(
                f"c must lie in [{low}, {high}] for the set {{alpha ≤ y ≤ beta, wᵀy = c}} to be "
                f"non-empty, got c={float(c_np)}"
            )
    mu = _box_section_multiplier(jnp.zeros((), x.dtype), x, alpha, beta, w, c)
    return _box_section_primal(mu, x, alpha, beta, w)


# ---------------------------------------------------------------------------------------------
# Cones.


def second_order_cone(x: tuple[ArrayLike, ArrayLike], hyperparams: None = None) -> tuple:
    """Projection onto the second-order (Lorentz) cone {(t, z): ‖z‖₂ ≤ t}.

    For x = (t, z): (t, z) if ‖z‖ ≤ t; (0, 0) if ‖z‖ ≤ −t; else
    ((t + ‖z‖)/2) · (1, z/‖z‖).

    Args:
      x: a pair ``(t, z)``, t a scalar and z an array (its norm runs over all entries).
      hyperparams: unused (None).

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
    square = jnp.sum(z * z)
    inside = (t >= 0) & (square <= t * t)  # ‖z‖ ≤ t
    polar = (t < 0) & (square <= t * t)  # ‖z‖ ≤ −t
    boundary = ~(inside | polar)  # then ‖z‖ > |t| ≥ 0
    norm = _safe_sqrt(square, boundary)
    half = 0.5 * (t + norm)
    t_out = jnp.where(inside, t, jnp.where(polar, 0, half))
    z_out = jnp.where(inside, z, jnp.where(polar, 0, (half / norm) * z))
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
