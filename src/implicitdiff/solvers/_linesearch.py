"""Line searches shared by the smooth solvers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import tree

PyTree = Any


def backtracking(
    value_fun: Callable[[PyTree], jax.Array],
    params: PyTree,
    value: jax.Array,
    slope: jax.Array,
    direction: PyTree,
    stepsize: jax.Array,
    *,
    decrease: float = 1e-4,
    shrink: float = 0.5,
    maxiter: int = 30,
) -> jax.Array:
    """Armijo backtracking along ``direction`` from ``params``: the accepted step size η.

    Starting at ``stepsize``, multiply it by ``shrink`` until
    f(x + η d) ≤ f(x) + decrease · η · slope, with slope = ⟨∇f(x), d⟩ < 0 (a descent direction),
    or ``maxiter`` trials; a change of f within 8 ulps of |f(x)| is accepted too (below rounding,
    the test is meaningless). A non-finite trial value counts as a failure of the condition, so
    the search steps back from overflow.

    The search runs on values cut from the graph (``stop_gradient``), and η is returned as a
    constant: η is piecewise constant in the problem's parameters, so its derivative is zero almost
    everywhere, and unrolled differentiation of a solver goes through x + η d with η fixed (a
    ``while_loop`` could not be reverse-differentiated anyway).
    """
    params, value, slope, direction, stepsize = jax.lax.stop_gradient(
        (params, value, slope, direction, stepsize)
    )

    def trial(eta):
        candidate = tree.axpy(eta, direction, params)
        return candidate, value_fun(candidate)

    # Near a minimum the decrease falls below the rounding of f: accept changes of f that are
    # within a few ulps of |f| rather than shrink the step to nothing.
    noise = 8 * jnp.finfo(jnp.result_type(value)).eps * jnp.abs(value)

    def not_accepted(carry):
        eta, _, new_value, k = carry
        ok = new_value <= value + decrease * eta * slope + noise
        return jnp.logical_not(ok & jnp.isfinite(new_value)) & (k < maxiter)

    def shrink_step(carry):
        eta, _, _, k = carry
        eta = eta * shrink
        candidate, new_value = trial(eta)
        return eta, candidate, new_value, k + 1

    candidate, new_value = trial(stepsize)
    eta, _, _, _ = jax.lax.while_loop(
        not_accepted, shrink_step, (stepsize, candidate, new_value, 0)
    )
    return eta
