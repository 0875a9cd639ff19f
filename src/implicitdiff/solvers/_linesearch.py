"""Line searches shared by the smooth solvers."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import tree
from implicitdiff._typing import PyTree


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


class ZoomResult(NamedTuple):
    """The step of :func:`zoom` and f, ∇f at x + η d (all cut from the graph).

    ``accepted`` is whether η satisfies the strong Wolfe conditions; when it does not (the trial
    budget ran out, or the bracket collapsed), η is the best step found that satisfies sufficient
    decrease, possibly 0.
    """

    stepsize: jax.Array
    value: jax.Array
    grad: PyTree
    accepted: jax.Array


class _ZoomCarry(NamedTuple):
    k: jax.Array
    done: jax.Array
    accepted: jax.Array
    next_stepsize: jax.Array  # the next extrapolation trial while no bracket is known
    lo_stepsize: jax.Array  # best step so far (sufficient decrease, lowest value)
    lo_value: jax.Array
    lo_slope: jax.Array
    lo_grad: PyTree
    hi_stepsize: jax.Array  # the other end of the bracket; +inf while there is none
    hi_value: jax.Array
    hi_slope: jax.Array


def _cubic_minimizer(a, fa, da, b, fb, db, margin):
    """The minimizer of the cubic through (a, fa, da) and (b, fb, db), safeguarded by bisection.

    Nocedal & Wright (2006), eq. 3.59. The result is kept at least ``margin`` × |b − a| inside
    the interval; bisection when the cubic has no minimizer there or a value is not finite.
    """
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    radicand = d1 * d1 - da * db
    d2 = jnp.sign(b - a) * jnp.sqrt(jnp.maximum(radicand, 0.0))
    t = b - (b - a) * (db + d2 - d1) / (db - da + 2.0 * d2)
    low, high = jnp.minimum(a, b), jnp.maximum(a, b)
    width = high - low
    ok = (
        (radicand >= 0)
        & jnp.isfinite(t)
        & (t >= low + margin * width)
        & (t <= high - margin * width)
    )
    return jnp.where(ok, t, 0.5 * (a + b))


def zoom(
    value_and_grad_fun: Callable[[PyTree], tuple[jax.Array, PyTree]],
    params: PyTree,
    value: jax.Array,
    grad: PyTree,
    direction: PyTree,
    stepsize: jax.Array,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    maxiter: int = 30,
    increase_factor: float = 2.0,
    max_stepsize: float = 1e10,
    value_rtol: float = 100.0,
) -> ZoomResult:
    """A step η along ``direction`` d from ``params`` x satisfying the strong Wolfe conditions.

    With φ(η) = f(x + η d) and φ'(η) = ⟨∇f(x + η d), d⟩ (φ'(0) < 0: a descent direction):

        φ(η) ≤ φ(0) + c1 · η · φ'(0)   (sufficient decrease)  and  |φ'(η)| ≤ c2 · |φ'(0)|.

    The bracketing and zoom phases of Nocedal & Wright (2006), Algorithms 3.5 and 3.6, in one
    loop: trials η₀ = ``stepsize``, then × ``increase_factor`` (at most ``max_stepsize``) until
    an interval [lo, hi] is known to hold acceptable steps (sufficient decrease fails, or the
    value stops decreasing, or the slope turns non-negative); then trials at the safeguarded
    minimizer of the cubic interpolating φ and φ' at both ends, shrinking the interval, until one
    is accepted or ``maxiter`` trials were spent. A non-finite trial counts as a failure of
    sufficient decrease.

    Near a minimum, f's decrease (about η|φ'(0)|/2) falls below the rounding of f itself, and
    comparisons of values stop meaning anything; there, as in Hager & Zhang's approximate Wolfe
    conditions (2005), a trial whose value is within ε = ``value_rtol`` · machine epsilon · |φ(0)|
    of φ(0) passes sufficient decrease when φ'(η) ≤ (2 c1 − 1) φ'(0) (the slope form of sufficient
    decrease, exact for quadratics), and values within ε of the best one do not count as an
    increase: the search then brackets by slopes alone.

    ``value_and_grad_fun(x)`` returns (f(x), ∇f(x)); each trial costs one call, and the value
    and gradient at the returned step come back with it (see :class:`ZoomResult`), so a solver
    that does not differentiate its iterations needs no re-evaluation.

    As :func:`backtracking`, the search runs on values cut from the graph (``stop_gradient``) and
    returns constants, so that unrolled differentiation goes through x + η d with η fixed (a
    ``while_loop`` could not be reverse-differentiated anyway). A first trial accepted as is (the
    unit step of quasi-Newton methods near a solution) is indeed constant; an interpolated step
    depends on the parameters, and a solver whose convergence rests on it (nonlinear conjugate
    gradient) must account for that itself. ``value_and_grad_fun`` should close over cut
    arguments too (or the loop carries their tangents for nothing in forward mode).
    """
    params, value, grad, direction, stepsize = jax.lax.stop_gradient(
        (params, value, grad, direction, stepsize)
    )
    dtype = jnp.result_type(value, float)
    value = jnp.asarray(value, dtype)
    slope0 = tree.vdot(grad, direction).astype(dtype)
    stepsize = jnp.asarray(stepsize, dtype)
    stepsize = jnp.where(jnp.isfinite(stepsize) & (stepsize > 0), stepsize, 1.0)
    stepsize = jnp.minimum(stepsize, max_stepsize)
    # Differences of f below this are rounding: there the search trusts slopes, not values.
    noise = value_rtol * jnp.finfo(dtype).eps * jnp.abs(value)
    noise = jnp.where(jnp.isfinite(noise), noise, 0.0)
    inf = jnp.asarray(jnp.inf, dtype)
    zero = jnp.asarray(0.0, dtype)

    def cond(carry: _ZoomCarry):
        return jnp.logical_not(carry.done) & (carry.k < maxiter)

    def body(carry: _ZoomCarry):
        bracketed = jnp.isfinite(carry.hi_stepsize)
        interpolated = _cubic_minimizer(
            carry.lo_stepsize,
            carry.lo_value,
            carry.lo_slope,
            carry.hi_stepsize,
            carry.hi_value,
            carry.hi_slope,
            0.1,
        )
        eta = jnp.where(bracketed, interpolated, carry.next_stepsize)
        new_value, new_grad = value_and_grad_fun(tree.axpy(eta, direction, params))
        new_value = jnp.asarray(new_value, dtype)
        new_slope = tree.vdot(new_grad, direction).astype(dtype)
        finite = jnp.isfinite(new_value) & jnp.isfinite(new_slope)
        # Sufficient decrease, or its approximate form where f's differences are rounding.
        decrease = (new_value <= value + c1 * eta * slope0) | (
            (new_value <= value + noise) & (new_slope <= (2 * c1 - 1) * slope0)
        )
        too_far = (
            jnp.logical_not(finite & decrease)
            | (new_value > carry.lo_value + noise)
            | ((noise == 0) & (new_value >= carry.lo_value))
        )
        accept = jnp.logical_not(too_far) & (jnp.abs(new_slope) <= -c2 * slope0)
        # Sufficient decrease and a lower value: the trial becomes lo; the old lo becomes hi if
        # the slope points back towards it (with no bracket, hi = +inf: slope ≥ 0 brackets).
        flip = jnp.logical_not(too_far) & (new_slope * (carry.hi_stepsize - carry.lo_stepsize) >= 0)
        to_lo = jnp.logical_not(too_far)
        hi_stepsize = jnp.where(too_far, eta, jnp.where(flip, carry.lo_stepsize, carry.hi_stepsize))
        hi_value = jnp.where(too_far, new_value, jnp.where(flip, carry.lo_value, carry.hi_value))
        hi_slope = jnp.where(too_far, new_slope, jnp.where(flip, carry.lo_slope, carry.hi_slope))
        lo_stepsize = jnp.where(to_lo, eta, carry.lo_stepsize)
        lo_value = jnp.where(to_lo, new_value, carry.lo_value)
        lo_slope = jnp.where(to_lo, new_slope, carry.lo_slope)
        lo_grad = tree.where(to_lo, new_grad, carry.lo_grad)
        # Stop when accepted, at the largest step allowed, or when the bracket has collapsed.
        at_max = jnp.logical_not(jnp.isfinite(hi_stepsize)) & (lo_stepsize >= max_stepsize)
        width = jnp.abs(hi_stepsize - lo_stepsize)
        collapsed = jnp.isfinite(hi_stepsize) & (
            width <= 10 * jnp.finfo(dtype).eps * jnp.maximum(lo_stepsize, hi_stepsize)
        )
        return _ZoomCarry(
            k=carry.k + 1,
            done=accept | at_max | collapsed,
            accepted=accept,
            next_stepsize=jnp.minimum(eta * increase_factor, max_stepsize),
            lo_stepsize=lo_stepsize,
            lo_value=lo_value,
            lo_slope=lo_slope,
            lo_grad=lo_grad,
            hi_stepsize=hi_stepsize,
            hi_value=hi_value,
            hi_slope=hi_slope,
        )

    carry = _ZoomCarry(
        k=jnp.asarray(0),
        done=jnp.logical_not(slope0 < 0),  # not a descent direction: no step
        accepted=jnp.asarray(False),
        next_stepsize=stepsize,
        lo_stepsize=zero,
        lo_value=value,
        lo_slope=slope0,
        lo_grad=grad,
        hi_stepsize=inf,
        hi_value=inf,
        hi_slope=inf,
    )
    carry = jax.lax.while_loop(cond, body, carry)
    # The accepted trial is lo (it passed sufficient decrease); otherwise lo is the best step.
    return jax.lax.stop_gradient(
        ZoomResult(carry.lo_stepsize, carry.lo_value, carry.lo_grad, carry.accepted)
    )
