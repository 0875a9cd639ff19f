"""LevenbergMarquardt's JAXopt options: the checks of stop_criterion, xtol, gtol, geodesic,
jac_fun and materialize_jac, and the linearization by a user Jacobian ``jac_fun``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import tree
from implicitdiff._typing import PyTree

__all__: list[str] = []


def linearize_with_jacobian(
    residual_fun: Callable, jac_fun: Callable, params: PyTree, args: tuple, kwargs: dict
):
    """r(x), v ↦ J v and u ↦ Jᵀ u with J = jac_fun(x, *args, **kwargs), a matrix (m, n)."""
    r = residual_fun(params, *args, **kwargs)
    jacobian = jac_fun(params, *args, **kwargs)
    x_shape = getattr(params, "shape", None)
    r_shape = getattr(r, "shape", None)
    expected = None if x_shape is None or r_shape is None else (r.size, params.size)
    if len(x_shape or ()) != 1 or len(r_shape or ()) != 1 or jnp.shape(jacobian) != expected:
        raise ValueError(
            "LevenbergMarquardt: jac_fun needs a 1-D array x and a 1-D residual and must return "
            f"their Jacobian, shape (residual size, x size); got x shape {x_shape}, residual "
            f"shape {r_shape}, jac_fun shape {jnp.shape(jacobian)}. Use jac_fun=None "
            "(matrix-free) for pytrees"
        )
    return r, lambda v: jacobian @ v, lambda u: jacobian.T @ u


_STOP_CRITERIA = ("grad-l2-norm", "madsen-nielsen")


def check_lm_options(solver: Any) -> None:
    owner = "LevenbergMarquardt"
    if solver.stop_criterion not in _STOP_CRITERIA:
        raise ValueError(
            f"{owner}: stop_criterion must be one of {_STOP_CRITERIA}, got "
            f"{solver.stop_criterion!r}"
        )
    for name in ("xtol", "gtol"):
        value = getattr(solver, name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"{owner}: {name} must be a number ≥ 0, got {value!r}")
    if not isinstance(solver.geodesic, bool):
        raise TypeError(f"{owner}: geodesic must be a bool, got {solver.geodesic!r}")
    threshold = solver.contribution_ratio_threshold
    if not (
        isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold > 0
    ):
        raise ValueError(
            f"{owner}: contribution_ratio_threshold must be a number > 0, got {threshold!r}"
        )
    if solver.jac_fun is not None and not callable(solver.jac_fun):
        raise TypeError(f"{owner}: jac_fun must be callable or None, got {solver.jac_fun!r}")
    if not isinstance(solver.materialize_jac, bool):
        raise TypeError(f"{owner}: materialize_jac must be a bool, got {solver.materialize_jac!r}")


def geodesic_step(
    residual_fun: Callable,
    params: PyTree,
    args: tuple,
    kwargs: dict,
    velocity: PyTree,
    damped: Callable,
    vjp: Callable,
    solve_step: Callable,
    threshold: float,
):
    """(v + a/2, ‖a‖ ≤ threshold·‖v‖): the geodesic-accelerated step, with
    a = −(JᵀJ + μI)⁻¹ Jᵀ r''(x)[v, v] (``damped`` applies JᵀJ + μI, ``vjp`` u ↦ Jᵀu)."""

    def along(y):
        return jax.jvp(lambda z: residual_fun(z, *args, **kwargs), (y,), (velocity,))[1]

    second = jax.jvp(along, (params,), (velocity,))[1]  # r''(x)[v, v]
    acceleration = solve_step(damped, tree.neg(vjp(second)))
    ratio = jax.lax.stop_gradient(tree.norm(acceleration) / tree.norm(velocity))
    ok = jnp.isfinite(ratio) & (ratio <= threshold)
    # Where v = 0 (at a solution) the ratio is 0/0: take the plain step.
    ok = ok | (tree.norm(jax.lax.stop_gradient(velocity)) == 0)
    return tree.axpy(0.5, acceleration, velocity), ok
