"""Arithmetic on pytrees of arrays.

Every function here treats a pytree as one vector: the concatenation of its leaves. Two trees
given to a binary function must share their structure and leaf shapes.
"""

from __future__ import annotations

import builtins
import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff._typing import PyTree

__all__ = [
    "add",
    "add_scalar_mul",
    "average",
    "axpy",
    "broadcast",
    "conj",
    "div",
    "dot",
    "dtype",
    "full_like",
    "gram",
    "imag",
    "inf_norm",
    "l2_norm",
    "map",
    "mul",
    "neg",
    "negative",
    "norm",
    "ones_like",
    "real",
    "reciprocal",
    "reduce",
    "scalar_mul",
    "scale",
    "size",
    "stop_gradient",
    "sub",
    "sum",
    "vdot",
    "vdot_real",
    "where",
    "zeros_like",
]

map = jax.tree_util.tree_map
#: ``reduce(function, x, initializer)``: ``function`` folded over the leaves of x (JAXopt's
#: ``tree_reduce``, ``jax.tree_util.tree_reduce``).
reduce = jax.tree_util.tree_reduce


def add(x: PyTree, y: PyTree, *, is_leaf: Callable[[Any], bool] | None = None) -> PyTree:
    """x + y, leaf by leaf.

    Args:
      x: a pytree of arrays.
      y: a pytree of the structure and leaf shapes of x.
      is_leaf: JAXopt's option, as ``jax.tree_util.tree_map``'s: subtrees to treat as
        leaves (None: JAX's leaves).

    Returns:
      A pytree like x.
    """
    return map(operator.add, x, y, is_leaf=is_leaf)


def sub(x: PyTree, y: PyTree, *, is_leaf: Callable[[Any], bool] | None = None) -> PyTree:
    """x − y, leaf by leaf.

    Args:
      x: a pytree of arrays.
      y: a pytree of the structure and leaf shapes of x.
      is_leaf: JAXopt's option, as ``jax.tree_util.tree_map``'s: subtrees to treat as
        leaves (None: JAX's leaves).

    Returns:
      A pytree like x.
    """
    return map(operator.sub, x, y, is_leaf=is_leaf)


def neg(x: PyTree) -> PyTree:
    """−x, leaf by leaf.

    Args:
      x: a pytree of arrays.

    Returns:
      A pytree like x.
    """
    return map(operator.neg, x)


def mul(x: PyTree, y: PyTree, *, is_leaf: Callable[[Any], bool] | None = None) -> PyTree:
    """x ⊙ y, the entry-wise product, leaf by leaf (y of x's structure).

    Args:
      x: a pytree of arrays.
      y: a pytree of the structure and leaf shapes of x.
      is_leaf: JAXopt's option, as ``jax.tree_util.tree_map``'s: subtrees to treat as
        leaves (None: JAX's leaves).

    Returns:
      A pytree like x.
    """
    return map(operator.mul, x, y, is_leaf=is_leaf)


def div(x: PyTree, y: PyTree, *, is_leaf: Callable[[Any], bool] | None = None) -> PyTree:
    """x ⊘ y, the entry-wise quotient, leaf by leaf (y of x's structure).

    Args:
      x: a pytree of arrays, the dividend.
      y: a pytree of the structure and leaf shapes of x, the divisor.
      is_leaf: JAXopt's option, as ``jax.tree_util.tree_map``'s: subtrees to treat as
        leaves (None: JAX's leaves).

    Returns:
      A pytree like x.
    """
    return map(operator.truediv, x, y, is_leaf=is_leaf)


def reciprocal(x: PyTree) -> PyTree:
    """1 / x, entry by entry.

    Args:
      x: a pytree of arrays.

    Returns:
      A pytree like x.
    """
    return map(jnp.reciprocal, x)


def negative(x: PyTree) -> PyTree:
    """−x, leaf by leaf: JAXopt's name of :func:`neg`.

    Args:
      x: a pytree of arrays.

    Returns:
      A pytree like x.
    """
    return neg(x)


def conj(x: PyTree) -> PyTree:
    """The complex conjugate x̄, leaf by leaf (x itself for real leaves).

    Args:
      x: a pytree of arrays.

    Returns:
      A pytree like x.
    """
    return map(jnp.conj, x)


def real(x: PyTree) -> PyTree:
    """Re x, leaf by leaf.

    Args:
      x: a pytree of arrays.

    Returns:
      A pytree of the structure and leaf shapes of x, with real leaves.
    """
    return map(jnp.real, x)


def imag(x: PyTree) -> PyTree:
    """Im x, leaf by leaf (zeros for real leaves).

    Args:
      x: a pytree of arrays.

    Returns:
      A pytree of the structure and leaf shapes of x, with real leaves.
    """
    return map(jnp.imag, x)


def scale(a: Any, x: PyTree) -> PyTree:
    """a · x for a scalar a.

    Args:
      a: a scalar (or an array broadcasting to every leaf).
      x: a pytree of arrays.

    Returns:
      A pytree like x.
    """
    return map(lambda leaf: a * leaf, x)


def axpy(a: Any, x: PyTree, y: PyTree) -> PyTree:
    """a · x + y for a scalar a.

    Args:
      a: a scalar (or an array broadcasting to every leaf).
      x: a pytree of arrays.
      y: a pytree of the structure and leaf shapes of x.

    Returns:
      A pytree like x.
    """
    return map(lambda xi, yi: a * xi + yi, x, y)


def scalar_mul(a: Any, x: PyTree) -> PyTree:
    """a · x for a scalar a: JAXopt's name of :func:`scale` (same argument order).

    Args:
      a: a scalar (or an array broadcasting to every leaf).
      x: a pytree of arrays.

    Returns:
      A pytree like x.
    """
    return scale(a, x)


def add_scalar_mul(x: PyTree, a: Any, y: PyTree) -> PyTree:
    """x + a · y for a scalar a (JAXopt's argument order; :func:`axpy` is a · y + x).

    Args:
      x: a pytree of arrays.
      a: a scalar (or an array broadcasting to every leaf).
      y: a pytree of the structure and leaf shapes of x.

    Returns:
      A pytree like x.
    """
    return map(lambda xi, yi: xi + a * yi, x, y)


def dot(x: PyTree, y: PyTree) -> PyTree:
    """``jnp.dot(xᵢ, yᵢ)`` for each pair of leaves: a tree, not a scalar (a block-diagonal
    operator stored as one block per leaf, applied to a vector of blocks).

    Args:
      x: a pytree of arrays (the blocks, e.g. matrices).
      y: a pytree of x's structure, each leaf of a shape ``jnp.dot`` accepts with x's leaf.

    Returns:
      A pytree of x's structure, the leaf ``jnp.dot(xᵢ, yᵢ)`` for each pair.
    """
    return map(jnp.dot, x, y)


def vdot_real(x: PyTree, y: PyTree) -> jax.Array:
    """Re⟨x, y⟩ = Σ Re(conj(xⱼ) yⱼ), a real scalar (the real inner product of the real pairs
    (Re, Im) of complex trees; ⟨x, y⟩ itself for real ones).

    Args:
      x: a pytree of arrays.
      y: a pytree of the structure and leaf shapes of x.

    Returns:
      A real scalar (the real dtype of :func:`vdot`'s result); 0 for an empty tree.
    """
    return jnp.real(vdot(x, y))


def vdot(x: PyTree, y: PyTree) -> jax.Array:
    """⟨x, y⟩ = Σᵢ Σⱼ conj(xᵢⱼ) yᵢⱼ over all leaves i and their entries j.

    Args:
      x: a pytree of arrays.
      y: a pytree of the structure and leaf shapes of x.

    Returns:
      A scalar, in the promoted dtype of the leaves (at least :func:`dtype` of x); 0 for an
        empty tree.
    """
    return _total(jax.tree_util.tree_leaves(map(lambda a, b: jnp.vdot(a, b), x, y)), x)


def sum(x: PyTree) -> jax.Array:
    """Σ of every entry of every leaf.

    Args:
      x: a pytree of arrays.

    Returns:
      A scalar, in the promoted dtype of the leaves (at least :func:`dtype` of x); 0 for an
        empty tree.
    """
    return _total([jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(x)], x)


def _total(parts: list, x: PyTree) -> jax.Array:
    """The sum of the per-leaf scalars ``parts`` of x, from a 0 in :func:`dtype` of x (so 0 for
    an empty tree, and at least x's floating dtype)."""
    return functools.reduce(operator.add, parts, jnp.asarray(0.0, dtype(x)))


def norm(x: PyTree, ord: int | float = 2) -> jax.Array:
    """‖x‖ of the flattened tree: ord 2 (Euclidean, the default), 1 or ``jnp.inf``.

    ‖x‖₂ = m · sqrt(Σ |xⱼ / m|²) with m = ‖x‖∞ (when m is positive and finite), so that it
    neither overflows nor underflows where ‖x‖₂ itself is representable (a float32 vector of
    entries 1e30 or 1e-30); its derivative is x / ‖x‖₂, exactly as for the plain formula (m is
    held constant). ‖x‖₁ = Σ |xⱼ|, ‖x‖∞ = maxⱼ |xⱼ|. Empty leaves contribute nothing, and the
    norm of a tree with no entries is 0. A NaN entry gives NaN; an infinite one (and no NaN)
    gives inf.

    Args:
      x: a pytree of arrays.
      ord: 1, 2 or ``jnp.inf``.

    Returns:
      a scalar in the tree's floating dtype (:func:`dtype`).
    """
    if ord not in (1, 2, jnp.inf):
        raise ValueError(f"norm: ord must be 1, 2 or inf, got {ord!r}")
    leaves = [jnp.asarray(leaf) for leaf in jax.tree_util.tree_leaves(x)]
    real = jnp.finfo(dtype(x)).dtype  # the real dtype of the result (complex leaves too)
    leaves = [leaf for leaf in leaves if leaf.size]  # static shapes: empty leaves drop out
    if not leaves:
        return jnp.zeros((), real)
    magnitudes = [jnp.abs(leaf) for leaf in leaves]
    if ord == 1:
        return functools.reduce(operator.add, [jnp.sum(m) for m in magnitudes]).astype(real)
    if ord == jnp.inf:
        return functools.reduce(jnp.maximum, [jnp.max(m) for m in magnitudes]).astype(real)
    return _two_norm(leaves).astype(real)


def l2_norm(x: PyTree, squared: bool = False) -> jax.Array:
    """‖x‖₂ (:func:`norm`, safe at 1e±30), or ‖x‖₂² = Σ |xⱼ|² if ``squared``; real.

    Args:
      x: a pytree of arrays.
      squared: whether to return ‖x‖₂² instead of ‖x‖₂ (default False).

    Returns:
      A real scalar in the tree's real floating dtype (of :func:`dtype`); 0 for an empty tree.
    """
    if not squared:
        return norm(x)
    real_dtype = jnp.finfo(dtype(x)).dtype
    squares = map(lambda leaf: jnp.sum(jnp.real(leaf) ** 2 + jnp.imag(leaf) ** 2), x)
    return sum(squares).astype(real_dtype)


def inf_norm(x: PyTree) -> jax.Array:
    """‖x‖∞ = maxⱼ |xⱼ| over every entry (0 for a tree with no entries): :func:`norm` with
    ``ord=jnp.inf``.

    Args:
      x: a pytree of arrays.

    Returns:
      A real scalar in the tree's real floating dtype (of :func:`dtype`).
    """
    return norm(x, jnp.inf)


def average(x: PyTree, weights: Any) -> PyTree:
    """Σₖ wₖ x[k], a weighted combination of the m trees stacked along the leading axis of each
    leaf of x (weights of shape (m,)).

    Args:
      x: a pytree of arrays, each leaf of shape (m, ...): the m trees x[0], ..., x[m − 1].
      weights: the m weights w, an array of shape (m,).

    Returns:
      A pytree of x's structure, each leaf without the leading axis: Σₖ wₖ x[k].
    """
    return map(lambda leaf: jnp.tensordot(weights, leaf, axes=1), x)


def gram(x: PyTree) -> jax.Array:
    """The m × m matrix G[k, l] = ⟨x[l], x[k]⟩ = Σ conj(x[l]ⱼ) x[k]ⱼ of the m trees stacked along
    the leading axis of each leaf of x (JAXopt's order; symmetric for real trees).

    Args:
      x: a pytree of arrays, each leaf of shape (m, ...): the m trees x[0], ..., x[m − 1].

    Returns:
      G, an array of shape (m, m), in the promoted dtype of the leaves (as :func:`vdot`).
    """
    rows = jax.vmap(jax.vmap(vdot, in_axes=(0, None)), in_axes=(None, 0))
    return rows(x, x)


def _scaled_squares(leaf: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(s, q) with s = max |xⱼ| and Σ |xⱼ|² = s² q, in one pass over the leaf.

    One variadic reduction (the scaled sum of squares of the reference BLAS nrm2): pairs
    (s₁, q₁), (s₂, q₂) combine into (s, q₁ (s₁/s)² + q₂ (s₂/s)²) with s = max(s₁, s₂). It neither
    overflows nor underflows, and it compiles to a single loop where the two passes (the max,
    then the sum of the rescaled squares) would be two: a reduction is among the costliest
    kernels for XLA:CPU to compile, and every solver's stopping test takes a norm.
    """
    magnitude = jnp.abs(leaf).ravel()
    real = magnitude.dtype
    zero = jnp.zeros((), real)
    # The ones, written as a function of the magnitudes (min(|x|, 0) + 1 = 1, NaN stays NaN):
    # JAX cannot differentiate a variadic reduction with an operand that has no tangent
    # ("Error interpreting argument to reshape ... ad_util.Zero"). _two_norm has its own
    # derivative rule, but where its input has no tangent JAX runs it inline, and a second
    # derivative through a loop (an unrolled run's Hessian) then differentiates this reduction.
    ones = jnp.minimum(magnitude, zero) + 1
    return jax.lax.reduce((magnitude, ones), (zero, zero), _combine_scaled_squares, (0,))


def _combine_scaled_squares(a, b):
    (s1, q1), (s2, q2) = a, b
    s = jnp.maximum(s1, s2)
    safe = jnp.where(s > 0, s, jnp.ones_like(s))
    return s, q1 * jnp.square(s1 / safe) + q2 * jnp.square(s2 / safe)


@jax.custom_jvp
def _two_norm(leaves: list) -> jax.Array:
    """‖x‖₂ of the concatenated (non-empty) leaves; inf if one is infinite, NaN if one is NaN."""
    parts = [_scaled_squares(leaf) for leaf in leaves]
    s, q = functools.reduce(_combine_scaled_squares, parts)
    # An infinite entry makes q NaN (inf / inf): the norm is inf then, NaN still wins.
    return jnp.where(jnp.isinf(s), s, s * jnp.sqrt(q))


@_two_norm.defjvp
def _two_norm_jvp(primals, tangents):
    (leaves,), (dleaves,) = primals, tangents
    value = _two_norm(leaves)
    # d‖x‖ = Re⟨x, dx⟩ / ‖x‖ (NaN at x = 0, as for the plain formula).
    inner = functools.reduce(
        operator.add,
        [jnp.sum(jnp.real(jnp.conj(x) * dx)) for x, dx in zip(leaves, dleaves, strict=True)],
    )
    return value, (inner / value).astype(value.dtype)


def zeros_like(x: PyTree) -> PyTree:
    """A tree of zeros shaped like x.

    Args:
      x: a pytree of arrays.

    Returns:
      A pytree like x (same leaf shapes and dtypes).
    """
    return map(jnp.zeros_like, x)


def ones_like(x: PyTree) -> PyTree:
    """A tree of ones shaped like x.

    Args:
      x: a pytree of arrays.

    Returns:
      A pytree like x (same leaf shapes and dtypes).
    """
    return map(jnp.ones_like, x)


def full_like(x: PyTree, value: Any) -> PyTree:
    """A tree shaped like x, every entry equal to value.

    Args:
      x: a pytree of arrays.
      value: a scalar.

    Returns:
      A pytree like x (same leaf shapes and dtypes).
    """
    return map(lambda leaf: jnp.full_like(leaf, value), x)


def where(condition: Any, x: PyTree, y: PyTree) -> PyTree:
    """x where condition holds, y elsewhere, leaf by leaf: ``jnp.where(cᵢ, xᵢ, yᵢ)``.

    Each of the three is a pytree or a single array; single arrays are used for every leaf of
    the others (:func:`broadcast`), and the arrays of a leaf broadcast as in ``jnp.where``.

    Args:
      condition: a boolean array (a scalar, or broadcasting to every leaf), or a pytree of
        boolean arrays of the structure of x.
      x: a pytree of arrays, or one array.
      y: a pytree of the structure of x, or one array.

    Returns:
      A pytree of the common structure.

    Raises:
      ValueError: two of them are pytrees of different structures.
    """
    condition, x, y = broadcast(condition, x, y)
    return map(jnp.where, condition, x, y)


def broadcast(*trees: PyTree) -> tuple:
    """The trees with each single array (a leaf) repeated into the structure that the others
    share, for leaf-by-leaf operations mixing trees and arrays (JAXopt's
    ``broadcast_pytrees``).

    Args:
      *trees: pytrees, all those that are not single leaves of one structure.

    Returns:
      A tuple of trees of that structure (the inputs as given if every one is a leaf).

    Raises:
      ValueError: two non-leaf trees of different structures.
    """
    flat = [jax.tree_util.tree_flatten(t) for t in trees]
    structures = {d for _, d in flat if not jax.tree_util.treedef_is_leaf(d)}
    if not structures:
        return tuple(trees)
    if len(structures) > 1:
        raise ValueError(
            f"broadcast: the trees have different structures {sorted(map(str, structures))}"
        )
    (structure,) = structures
    return tuple(
        jax.tree_util.tree_unflatten(structure, leaves * structure.num_leaves)
        if jax.tree_util.treedef_is_leaf(d)
        else t
        for t, (leaves, d) in zip(trees, flat, strict=True)
    )


def size(x: PyTree) -> int:
    """The number of entries in the whole tree.

    Args:
      x: a pytree of arrays.

    Returns:
      A Python int (shapes are static).
    """
    return int(builtins.sum(leaf.size for leaf in jax.tree_util.tree_leaves(x)))


def stop_gradient(x: PyTree) -> PyTree:
    """``jax.lax.stop_gradient`` on the floating (and complex) array leaves of x.

    Args:
      x: any pytree; its other leaves (ints, strings, callables, integer arrays) are
        returned as they are.

    Returns:
      A pytree like x, carrying no derivative.
    """

    def cut(leaf):
        if isinstance(leaf, jax.Array) or hasattr(leaf, "__array__"):
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
                return jax.lax.stop_gradient(leaf)
        return leaf

    return map(cut, x)


def dtype(x: PyTree) -> Any:
    """The common floating dtype of the leaves, promoted with the default float.

    Args:
      x: a pytree (of arrays, or of anything ``jnp.result_type`` accepts).

    Returns:
      The dtype: float32 or float64 (per JAX's x64 flag) for integer leaves or an empty
        tree, else the leaves' own floating or complex dtype, promoted together.
    """
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        return jnp.result_type(float)
    return jnp.result_type(*[jnp.result_type(leaf) for leaf in leaves], float)
