"""The parts of :class:`implicitdiff.solvers.lbfgsb.LBFGSB` that are plain functions: the bounds
as flat vectors, the L-BFGS two-loop recursion on the free variables, the first scaling and the
Armijo backtracking along the projection arc."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _linesearch, tree
from implicitdiff._typing import PyTree

__all__ = [
    "arc_backtracking",
    "box_or_unbounded",
    "first_scaling",
    "flat_bounds",
    "two_loop_free",
]


def flat_bounds(params: PyTree, bounds: tuple[Any, Any]) -> tuple[jax.Array, jax.Array]:
    """(lower, upper) as flat vectors matching ``ravel_pytree(params)``: each bound a scalar, an
    array broadcasting to every leaf of params, or a pytree like params; ``bounds=None`` is
    (−inf, inf), no bound (as in JAXopt)."""
    if bounds is None:
        bounds = (-jnp.inf, jnp.inf)
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise TypeError(
            f"LBFGSB: bounds must be a pair (lower, upper) or None (unbounded), got {bounds!r}"
        )
    structure = jax.tree_util.tree_structure(params)
    leaves = jax.tree_util.tree_leaves(params)

    def flat(bound):
        if jax.tree_util.tree_structure(bound) == structure:
            parts = jax.tree_util.tree_leaves(bound)
        else:
            parts = [bound] * len(leaves)
        return jnp.concatenate(
            [
                jnp.broadcast_to(jnp.asarray(b, leaf.dtype), leaf.shape).ravel()
                for b, leaf in zip(parts, leaves, strict=True)
            ]
        )

    lower, upper = flat(bounds[0]), flat(bounds[1])
    # Traced bounds cannot be checked while Python runs: an empty box (lower > upper) makes the
    # projection NaN, so that the run ends non-finite (converged False), never "converged".
    return lower, _checks.nan_unless(lower <= upper, upper)


def box_or_unbounded(params: PyTree, bounds: Any) -> tuple[Any, Any]:
    """``bounds``, with None read as (−inf, inf) (no bound)."""
    if bounds is None:
        return tree.map(lambda x: jnp.full_like(x, -jnp.inf), params), tree.map(
            lambda x: jnp.full_like(x, jnp.inf), params
        )
    return bounds


def two_loop_free(
    grad, free, s_history, y_history, valid, gamma, newest, use_gamma=True, theta=1.0
):
    """H_F g by the L-BFGS two-loop recursion on the free variables, over a circular history.

    The pairs are restricted to the free variables (``free``, 0/1) before use, and a pair whose
    restriction lacks positive curvature (or an empty slot, ``valid`` False) is skipped; γ is
    that of the newest pair when it is usable (and ``use_gamma``), else ``gamma``; the initial
    inverse Hessian is (γ/θ)·I. For a
    quadratic whose binding variables stayed put, the restricted pairs are exact pairs of the
    reduced Hessian.
    """
    size = s_history.shape[0]
    s_history, y_history = s_history * free, y_history * free
    sy = jnp.sum(s_history * y_history, axis=1)
    yy = jnp.sum(y_history * y_history, axis=1)
    usable = jax.lax.stop_gradient(valid & (sy > 1e-10 * yy) & (yy > 0))
    rho = jnp.where(usable, 1.0 / jnp.where(usable, sy, 1.0), 0.0)
    if use_gamma:
        gamma = jnp.where(
            usable[newest], sy[newest] / jnp.where(usable[newest], yy[newest], 1.0), gamma
        )
    gamma = gamma / theta  # JAXopt's theta: the initial Hessian (θ/γ)·I
    order = (newest - jnp.arange(size)) % size  # newest to oldest
    return _linesearch.two_loop(grad, s_history, y_history, rho, gamma, order) * free


def first_scaling(grad: jax.Array) -> jax.Array:
    """γ without a history: min(1, 1/‖g‖), a first step −γg of length at most 1 (cut)."""
    norm = jax.lax.stop_gradient(jnp.linalg.norm(grad))
    return 1.0 / jnp.maximum(norm, 1.0)


def arc_backtracking(
    value_fun: Callable[[jax.Array], jax.Array],
    project: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    value: jax.Array,
    grad: jax.Array,
    direction: jax.Array,
    *,
    start: Any = 1.0,
    decrease: float = 1e-4,
    shrink: float = 0.5,
    maxiter: int = 30,
) -> tuple[jax.Array, jax.Array]:
    """(α, ok): Armijo backtracking along the projection arc x(α) = P(x + α d), from α = start.

    Accepts f(x(α)) ≤ f(x) + decrease · ⟨∇f(x), x(α) − x⟩ up to a few ulps of |f(x)| (the
    rounding of f, which decides the test near a solution), with f(x(α)) finite; ``ok`` is False
    when ``maxiter`` halvings did not find such an α. Runs on values cut from the graph: α is a
    constant of the iteration.
    """
    x, value, grad, direction = jax.lax.stop_gradient((x, value, grad, direction))
    noise = 8 * jnp.finfo(value.dtype).eps * jnp.abs(value)

    def accepted(alpha):
        candidate = project(x + alpha * direction)
        new_value = value_fun(candidate)
        bound = value + decrease * jnp.vdot(grad, candidate - x) + noise
        return (new_value <= bound) & jnp.isfinite(new_value)

    first = jax.lax.stop_gradient(jnp.asarray(start, x.dtype))
    alpha, ok, _, _ = _linesearch.shrink(
        lambda alpha: (accepted(alpha), ()), first, factor=shrink, maxiter=maxiter + 1
    )
    return alpha, ok
