"""Dtypes at the solvers' evaluation points: user outputs cast to the params' dtype, and complex
parameters (refused, or viewed as real pairs for the implicit derivative).

- A user function may compute in another float dtype than the params (a float64 objective for
  float32 params with x64 on, a float32 one for float64 params, Python-float bounds traced as
  float64): every value it returns is cast to the params' dtype where the solver evaluates it
  (:func:`cast_value`, :func:`cast_like`), so that the iteration's carry, the line searches and
  the derivative's linear system all stay in the params' dtype.
- A real objective f of complex parameters z = x + iy is a function of (x, y) ∈ ℝ²ⁿ. ``jax.grad``
  returns ∂f/∂x − i ∂f/∂y (the conjugate of the ℝ²ⁿ gradient read as complex numbers), so the
  steepest-descent direction is −conj(jax.grad f), and the real inner product of ℝ²ⁿ is
  Re⟨u, v⟩ = Re Σ conj(u) v. The Hessian of f is ℝ-linear but not ℂ-linear in general, so the
  implicit derivative is taken on the real pairs (:mod:`implicitdiff._real_pairs`), where the
  stationarity condition ∇f = 0 has a symmetric Jacobian.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import tree
from implicitdiff._condition import Condition
from implicitdiff._real_pairs import complex_leaves, from_real, to_real
from implicitdiff._typing import PyTree

__all__ = [
    "cast_like",
    "cast_output",
    "cast_value",
    "check_real_params",
    "complex_leaves",
    "from_real",
    "mixed_precision",
    "real_dtype",
    "to_real",
]


def real_dtype(params: PyTree) -> Any:
    """The real floating dtype of the params (float32 for complex64 params, ...)."""
    return jnp.finfo(tree.dtype(params)).dtype


def mixed_precision(params: PyTree) -> Any:
    """The common dtype of params whose real floating leaves mix precisions (float32 and
    float64, say), else None (one dtype, or some leaf not real floating)."""
    dtypes = {jnp.result_type(leaf) for leaf in jax.tree_util.tree_leaves(params)}
    if len(dtypes) < 2 or not all(jnp.issubdtype(d, jnp.floating) for d in dtypes):
        return None
    return jnp.result_type(*dtypes)


def _cast_leaf(value: Any, dtype: Any) -> Any:
    """``value`` in ``dtype`` when both are real floating (or both complex); else unchanged."""
    value = jnp.asarray(value)
    same_kind = jnp.issubdtype(value.dtype, jnp.complexfloating) == jnp.issubdtype(
        dtype, jnp.complexfloating
    )
    if jnp.issubdtype(value.dtype, jnp.inexact) and same_kind and value.dtype != dtype:
        return value.astype(dtype)
    return value


def cast_value(value: Any, params: PyTree) -> Any:
    """An objective's value f(x) in the real dtype of the params x (a complex value is left
    alone, for ``jax.grad`` to refuse with its own message)."""
    return _cast_leaf(value, real_dtype(params))


def cast_like(value: PyTree, params: PyTree) -> PyTree:
    """A user function's pytree output (a residual, a root function's value, a fixed-point map's
    image) in the params' dtype: leaf by leaf when it has the params' structure, otherwise every
    floating leaf in their common dtype. Integer leaves are left as they are."""
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)
    v_leaves, v_tree = jax.tree_util.tree_flatten(value)
    if p_tree == v_tree:
        leaves = [
            _cast_leaf(v, jnp.result_type(p)) for v, p in zip(v_leaves, p_leaves, strict=True)
        ]
        return jax.tree_util.tree_unflatten(v_tree, leaves)
    dtype = tree.dtype(params)
    return jax.tree_util.tree_unflatten(v_tree, [_cast_leaf(v, dtype) for v in v_leaves])


def check_real_params(params: PyTree, owner: str, supported: str) -> None:
    """Raise a TypeError naming ``init_params`` and the dtype if a leaf is complex."""
    for i, leaf in enumerate(jax.tree_util.tree_leaves(params)):
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{owner}: init_params must be real, but leaf {i} has dtype {dtype}; this solver "
                f"iterates over real parameters only ({supported} minimize a real objective of "
                "complex parameters). Split z into (z.real, z.imag), or use one of those."
            )


def cast_output(fun: Callable) -> Callable:
    """``fun(x, *args, **kwargs)`` with its output cast to the dtype of x (:func:`cast_like`); a
    :class:`~implicitdiff._condition.Condition` stays one, with its structure (``symmetric``,
    ``support``)."""

    @functools.wraps(fun)
    def cast(x, /, *args, **kwargs):
        return cast_like(fun(x, *args, **kwargs), x)

    if isinstance(fun, Condition):
        return dataclasses.replace(fun, fun=cast)
    return cast
