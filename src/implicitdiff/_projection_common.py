"""Helpers of the projections in :mod:`implicitdiff._projection_ops` and its sibling modules
(internal): dtypes, checks of concrete hyperparameters, and a norm safe to differentiate at 0.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from implicitdiff import _checks, tree
from implicitdiff._checks import ONE, jaxopt_keyword
from implicitdiff._typing import PyTree

__all__ = [
    "ONE",
    "PROJECTIONS_TAKING_COMPLEX",
    "as_dtype_of",
    "check_feasible_flag",
    "check_ordered",
    "float_array",
    "in_dtype_of_x",
    "jaxopt_keyword",
    "safe_sqrt",
    "stable_norm",
]

# ONE (the default size of the sets, scale or radius, one object) and jaxopt_keyword live in
# _checks, shared with prox (its default λ and JAXopt's l1reg= / l2reg=).


#: The projections that take complex x (defined by norms, with closed forms on ℂⁿ); every other
#: one refuses it by name, naming these (``_checks.refuse_complex``).
PROJECTIONS_TAKING_COMPLEX = "l2_ball and l2_sphere"


def check_feasible_flag(function: str, check_feasible: Any) -> None:
    """JAXopt's ``check_feasible`` (a bool): accepted; the set is always checked here (an empty
    set raises ``ValueError`` on concrete input and gives NaN when traced)."""
    if not isinstance(check_feasible, bool):
        raise TypeError(f"{function}: check_feasible must be a bool, got {check_feasible!r}")


def float_array(x: ArrayLike) -> jax.Array:
    """x as a JAX array of a floating dtype (integers and booleans become the default float)."""
    return _checks.float_leaves(jnp.asarray(x))


def as_dtype_of(value: ArrayLike, x: jax.Array) -> jax.Array:
    """value as an array; Python numbers take x's dtype, arrays keep their own."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return jnp.asarray(value, dtype=x.dtype)
    return float_array(value)


def check_ordered(lower_name: str, lower: Any, upper_name: str, upper: Any) -> None:
    """Raise if some entry of lower exceeds the matching entry of upper (both concrete)."""
    pairs = _checks.concrete_leaf_pairs(lower, upper)
    if pairs is None:
        return
    for a, b in pairs:
        if np.any(np.greater(a, b)):
            raise ValueError(
                f"{lower_name} must not exceed {upper_name}: {lower_name} > {upper_name} in "
                f"some entry ({lower_name}={lower!r}, {upper_name}={upper!r})"
            )


def safe_sqrt(square: jax.Array, positive: jax.Array) -> jax.Array:
    """sqrt(square) where ``positive``, else 1: no infinite derivative of sqrt at 0."""
    return jnp.sqrt(jnp.where(positive, square, 1.0))


def stable_norm(x: PyTree) -> tuple[jax.Array, jax.Array, jax.Array]:
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
    divisor = (scale * safe_sqrt(square, positive)).astype(square.dtype)
    return jnp.where(positive, divisor, 0).astype(square.dtype), divisor, positive


def limit_at_infinity(x: PyTree, length: jax.Array) -> PyTree:
    """x, or where an entry of x is ±∞, the direction x takes in the limit: ``length`` · sign on
    its infinite entries and 0 on the others (x/‖x‖₂ as the infinite entries grow alike, times
    ``length``√k for k of them). A projection onto a bounded set that depends on x only through
    that direction when ‖x‖ → ∞ (the ℓ₂ ball and sphere) is then its limit, finite, where x
    itself would make ∞ · 0 = NaN. Constant in x where it applies; NaN entries stay NaN.
    """
    infinite = jnp.isinf(jax.lax.stop_gradient(tree.norm(x, jnp.inf)))

    def leaf_limit(leaf):
        if jnp.iscomplexobj(leaf):
            return leaf
        direction = jnp.where(jnp.isinf(leaf), jnp.sign(leaf), 0).astype(leaf.dtype)
        return jnp.where(infinite, jax.lax.stop_gradient(length * direction), leaf)

    return tree.map(leaf_limit, x)


def nan_throughout(p: PyTree, axes: tuple[int, ...] | None = None) -> PyTree:
    """p, or NaN throughout where some entry of p is NaN (over the whole tree, or per slice of
    each leaf over ``axes``, a batch of matrices say). For the projections whose formula meets
    ∞ − ∞ when x has an infinite entry (an affine set, a cone): their other entries are then
    not the limit either, and a result NaN in part would read as right where it is finite."""
    leaves = jax.tree_util.tree_leaves(p)
    if axes is not None:
        return tree.map(
            lambda leaf: _checks.nan_unless(
                jnp.logical_not(jnp.any(jnp.isnan(leaf), axis=axes, keepdims=True)), leaf
            ),
            p,
        )
    if not leaves:
        return p
    clean = jnp.logical_not(
        functools.reduce(jnp.logical_or, [jnp.any(jnp.isnan(v)) for v in leaves])
    )
    return tree.map(lambda leaf: _checks.nan_unless(clean, leaf), p)


def in_float32_if_half(projection: Any) -> Any:
    """``projection(x, *rest, **options)`` computed in float32 when x or its hyperparameters are
    in a half precision (bfloat16, float16), and returned in that precision.

    For the projections whose method has no half-precision form (an SVD or an eigen-
    decomposition: LAPACK has none, JAX raised "Unsupported dtype bfloat16") or iterates to a
    tolerance below the half precision's rounding (the transport projections were 0.1 to 0.4 off
    in bfloat16). Casts are differentiable, so derivatives are those of the float32 projection,
    rounded.
    """

    @functools.wraps(projection)
    def wrapped(x, *rest, **options):
        half = [
            leaf.dtype
            for leaf in jax.tree_util.tree_leaves((x, rest))
            if hasattr(leaf, "dtype") and _checks.is_half(leaf.dtype)
        ]
        if not half:
            return projection(x, *rest, **options)
        out_dtype = jnp.result_type(*half)
        x, rest = _checks.half_to_float32((x, rest))
        out = projection(x, *rest, **options)
        return jax.tree_util.tree_map(lambda leaf: leaf.astype(out_dtype), out)

    return wrapped


def in_dtype_of_x(projection: Any) -> Any:
    """``projection(x, *rest, **options)`` returned in the dtype of x, leaf by leaf (x floating;
    an integer x gives the default float): a projection maps x's space to itself, whatever the
    dtype of its hyperparameters. Before, a float32 x with float64 hyperparameters came back
    in float64 from half of the projections (by JAX's promotion) and in float32 from the other
    half. The computation keeps the promoted dtype; only the result is rounded, and a cast is
    differentiable (the hyperparameters' derivatives keep their dtype)."""

    @functools.wraps(projection)
    def wrapped(x, *rest, **options):
        out = projection(x, *rest, **options)
        # Leaf by leaf (a list x may come back a tuple, as second_order_cone's).
        out_leaves, out_def = jax.tree_util.tree_flatten(out)
        x_leaves = jax.tree_util.tree_leaves(x)
        if len(out_leaves) != len(x_leaves):
            return out

        def cast(leaf, like):
            dtype = getattr(like, "dtype", None)
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or leaf.dtype == dtype:
                return leaf
            return leaf.astype(dtype)

        return out_def.unflatten([cast(o, v) for o, v in zip(out_leaves, x_leaves, strict=True)])

    return wrapped
