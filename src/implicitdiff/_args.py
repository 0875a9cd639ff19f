"""Arguments of a solver: which leaves are data (traced, differentiable) and which are static.

One rule for the engine (:func:`implicitdiff.custom_root`: the leaves that get derivatives) and
for a solver's compiled ``run`` (the leaves that ``jax.jit`` traces; the rest are compile-time
constants):

- dynamic: JAX arrays (tracers included), NumPy arrays and NumPy scalars, Python ``float`` and
  ``complex``. A Python float is data, as a hyperparameter λ = 0.5 usually is: the engine
  differentiates with respect to it (it is converted to a weakly typed 0-d array where traced,
  so it does not promote float32 computations), and a new value does not recompile ``run``.
- static: everything else, Python ``int`` and ``bool`` included (sizes, counts, flags, used in
  Python control flow and shapes), strings, callables, None. They pass through untouched; under
  a solver's ``jit`` they must be hashable, and a new value compiles again.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["ArgsSplit", "is_dynamic", "is_traced"]


def is_traced(value: Any) -> bool:
    """Whether some leaf of ``value`` is a tracer (its value unknown while Python runs)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value))


def is_dynamic(leaf: Any) -> bool:
    """Whether a leaf is data (see the module docstring for the rule)."""
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        return True
    return isinstance(leaf, (float, complex))  # bool and int are static


class ArgsSplit:
    """``(args, kwargs)`` split into dynamic leaves (``arrays``) and the static rest.

    ``key()`` (the tree structure, the mask and the static leaves) identifies a compilation;
    ``ArgsSplit.merge(key, arrays)`` puts (new) dynamic leaves back into ``(args, kwargs)``.
    """

    def __init__(self, args: tuple, kwargs: dict):
        leaves, self.treedef = jax.tree_util.tree_flatten((args, kwargs))
        self.mask = tuple(is_dynamic(leaf) for leaf in leaves)
        self.arrays = [leaf for leaf, m in zip(leaves, self.mask, strict=True) if m]
        self.static = tuple(None if m else leaf for leaf, m in zip(leaves, self.mask, strict=True))

    def key(self) -> tuple:
        return (self.treedef, self.mask, self.static)

    @staticmethod
    def merge(key: tuple, arrays: list) -> tuple[tuple, dict]:
        treedef, mask, static = key
        it = iter(arrays)
        leaves = [next(it) if m else s for m, s in zip(mask, static, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, leaves)
