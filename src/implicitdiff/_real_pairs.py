"""Complex leaves as pairs of reals (internal): z = x + iy as the real array stack((x, y), -1).

A complex linear system met in differentiation is ℝ-linear but often not ℂ-linear: the JVP of a
non-holomorphic function (the gradient of a real objective of complex parameters, ``z + c·z̄``)
satisfies A(iv) ≠ i·A(v). Its dense matrix read from the real unit vectors, Krylov methods over
ℂ, and a transpose taken as JAX's (which pairs vectors by Re Σ uv, not Re Σ ūv) are then wrong.
On the pairs (x, y) ∈ ℝ²ⁿ every such map is an ordinary real linear map, and a ℂ-linear one is
the real block matrix [[Re A, −Im A], [Im A, Re A]] (symmetric positive definite when A is
Hermitian positive definite), so every real method applies exactly. The engine and
:mod:`implicitdiff.linear_solve` solve complex systems there; the solvers take the implicit
derivative of complex parameters there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import tree
from implicitdiff._typing import PyTree

__all__ = [
    "complex_leaves",
    "from_real",
    "mask_to_real",
    "residual_on_pairs",
    "to_real",
]


def _is_complex(leaf: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating)


def complex_leaves(value: PyTree) -> bool:
    """Whether any leaf of ``value`` is complex."""
    return any(_is_complex(leaf) for leaf in jax.tree_util.tree_leaves(value))


def to_real(value: PyTree) -> PyTree:
    """Each complex leaf z as the real array stack((Re z, Im z), axis=-1); real leaves as given."""

    def split(leaf):
        if _is_complex(leaf):
            return jnp.stack([jnp.real(leaf), jnp.imag(leaf)], axis=-1)
        return leaf

    return tree.map(split, value)


def from_real(pairs: PyTree, like: PyTree) -> PyTree:
    """The inverse of :func:`to_real`: leaves complex in ``like`` rebuilt from their pairs."""

    def merge(pair, leaf):
        if _is_complex(leaf):
            return jax.lax.complex(pair[..., 0], pair[..., 1]).astype(jnp.result_type(leaf))
        return pair

    return tree.map(merge, pairs, like)


def mask_to_real(mask: PyTree | None, like: PyTree) -> PyTree | None:
    """A pytree of booleans shaped like ``like`` (or None) on the pairs of :func:`to_real`: each
    entry of a complex leaf marks both its real and its imaginary part."""
    if mask is None:
        return None

    def split(m, leaf):
        return jnp.stack([m, m], axis=-1) if _is_complex(leaf) else m

    return tree.map(split, mask, like)


def residual_on_pairs(residual: Callable, like: PyTree) -> Callable:
    """``(pairs, *rest) ↦ to_real(F(from_real(pairs, like), *rest))``: F on the pairs of
    ``like``'s space. A gradient written as a vector of the space (∂f/∂a + i ∂f/∂b, what the
    conditions of :mod:`implicitdiff.optimality` return) has a symmetric Jacobian there, as
    has a holomorphic F with a Hermitian Jacobian."""

    def on_pairs(pairs, *rest):
        return to_real(residual(from_real(pairs, like), *rest))

    return on_pairs
