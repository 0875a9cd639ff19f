"""The Hager-Zhang line search (internal): the bracketing, secant² and bisection steps of
Hager & Zhang (2005, 2006) to a step satisfying the Wolfe or approximate Wolfe conditions.

A kernel of the same layer as :mod:`implicitdiff._linesearch` (whose start, evaluation and
:class:`~implicitdiff._linesearch.Result` it shares), used by
:class:`implicitdiff.solvers.HagerZhangLineSearch`. It runs on values cut from the graph and
returns constants, as every search of :mod:`implicitdiff._linesearch`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _loop, tree
from implicitdiff._linesearch import Result, evaluator, search_result, search_start
from implicitdiff._typing import PyTree

__all__ = ["hager_zhang"]


_EXPAND, _BISECT, _SECANT1, _SECANT2, _MIDPOINT = range(5)
_RESUME_SECANT, _RESUME_SHRINK_CHECK = range(2)


class _HZCarry(NamedTuple):
    k: jax.Array
    done: jax.Array
    accepted: jax.Array
    mode: jax.Array
    resume: jax.Array  # where a bisection returns: a new secant², or the shrink check
    trial: jax.Array
    a: jax.Array  # the bracket [a, b]: φ'(a) < 0, φ(a) ≤ φ(0) + ε; φ'(b) ≥ 0 (b = inf: none yet)
    fa: jax.Array
    da: jax.Array
    b: jax.Array
    fb: jax.Array
    db: jax.Array
    a0: jax.Array  # the bracket when the current secant² began
    b0: jax.Array
    best_stepsize: jax.Array  # the lowest trial with sufficient decrease (possibly 0)
    best_value: jax.Array
    best_grad: PyTree
    ok_stepsize: jax.Array  # the lowest trial satisfying the conditions (``accepted``)
    ok_value: jax.Array
    ok_grad: PyTree


def _secant(a, da, b, db):
    """The zero of the line through (a, φ'(a)) and (b, φ'(b)); +inf where it has none (equal
    slopes, or an input not finite), which no bracket contains (:func:`_inside`). Those cases
    are computed on a stand-in line, through (0, −1) and (1, 1): no NaN is made on the way
    (``jax.debug_nans`` would report it as an error in an op-by-op run)."""
    defined = jnp.all(jnp.isfinite(jnp.stack([a, da, b, db])), axis=0)
    a, da, b, db = (
        jnp.where(defined, v, stand_in)
        for v, stand_in in zip((a, da, b, db), (0.0, -1.0, 1.0, 1.0), strict=True)
    )
    den = db - da
    defined = defined & (den != 0)
    return jnp.where(defined, (a * db - b * da) / jnp.where(defined, den, 1.0), jnp.inf)


def _inside(t, a, b):
    return jnp.isfinite(t) & (t > jnp.minimum(a, b)) & (t < jnp.maximum(a, b))


def hager_zhang(
    value_and_grad_fun: Callable[[PyTree], tuple[jax.Array, PyTree]],
    params: PyTree,
    value: jax.Array,
    grad: PyTree,
    direction: PyTree,
    stepsize: jax.Array,
    *,
    c1: float = 0.1,
    c2: float = 0.9,
    maxiter: int = 30,
    expansion_factor: float = 5.0,
    shrinkage_factor: float = 0.66,
    approximate_wolfe_threshold: float = 1e-6,
    max_stepsize: Any = None,
    tol: float = 0.0,
) -> Result:
    """A step η along d satisfying the Wolfe or the approximate Wolfe conditions (Hager & Zhang,
    2005, 2006: the line search of CG_DESCENT), with ε = ``approximate_wolfe_threshold`` · |φ(0)|:

        Wolfe:          φ(η) ≤ φ(0) + c1 η φ'(0)  and  φ'(η) ≥ c2 φ'(0);
        approx. Wolfe:  φ(η) ≤ φ(0) + ε  and  c2 φ'(0) ≤ φ'(η) ≤ (2 c1 − 1) φ'(0).

    The approximate conditions are the Wolfe conditions with sufficient decrease in its slope
    form, exact for a quadratic and computable to full accuracy near a minimum, where the values
    of f differ by rounding only. Steps: from η₀ = ``stepsize``, expand by ``expansion_factor``
    until a bracket [a, b] with φ'(a) < 0, φ(a) ≤ φ(0) + ε and φ'(b) ≥ 0 is found (bisecting
    back when a trial has φ' < 0 but a value above φ(0) + ε); then secant² steps (the zero of
    the secant of φ' through the ends, and a second secant through the end it replaced), with a
    bisection step whenever one secant² did not shrink the bracket by ``shrinkage_factor``. Every
    trial (one evaluation of f and ∇f each) is tested, but the search stops only at the end of
    a secant² iteration on a bracket (with its bisection step if any) once some trial satisfied
    the conditions, and returns the lowest such trial; ``maxiter`` bounds the trials. A
    non-finite trial counts as one above φ(0) + ε. Should none pass, η is the trial of lowest
    value that satisfies sufficient decrease in either form (possibly 0) and ``failed`` is True.
    """
    params, value, grad, direction, stepsize, slope0, dtype = search_start(
        params, value, grad, direction, stepsize, max_stepsize
    )
    evaluate = evaluator(value_and_grad_fun, params, direction, dtype)
    eps_k = approximate_wolfe_threshold * jnp.abs(value)
    eps_k = jnp.where(jnp.isfinite(eps_k), eps_k, 0.0)
    cap = jnp.asarray(jnp.inf if max_stepsize is None else max_stepsize).astype(dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    tiny = 10 * jnp.finfo(dtype).eps

    def begin_secant2(a, da, b, db):
        t = _secant(a, da, b, db)
        return jnp.where(_inside(t, a, b), t, 0.5 * (a + b)), a, b

    def shrink_check(a, da, b, db, a0, b0):
        """After a secant²: bisect if the bracket did not shrink enough, else a new secant²."""
        slow = (b - a) > shrinkage_factor * (b0 - a0)
        t, na0, nb0 = begin_secant2(a, da, b, db)
        mode = jnp.where(slow, _MIDPOINT, _SECANT1)
        return (
            mode,
            jnp.where(slow, 0.5 * (a + b), t),
            jnp.where(slow, a0, na0),
            jnp.where(slow, b0, nb0),
        )

    def cond(carry: _HZCarry):
        return jnp.logical_not(carry.done) & (carry.k < maxiter)

    def body(c: _HZCarry):
        t = c.trial
        f, g, s = evaluate(t)
        finite = jnp.isfinite(f) & jnp.isfinite(s)
        f = jnp.where(finite, f, inf)
        s = jnp.where(finite, s, inf)
        # Each inequality up to the slack ``tol`` (JAXopt's; 0 by default).
        decrease = f <= value + c1 * t * slope0 + tol
        near = f <= value + eps_k + tol
        curvature = s >= c2 * slope0 - tol
        ok = finite & curvature & (decrease | (near & (s <= (2 * c1 - 1) * slope0 + tol)))
        # The lowest trial satisfying the conditions, and the lowest with sufficient decrease
        # (the fallback should none satisfy them).
        take_ok = ok & (f < c.ok_value)
        ok_stepsize = jnp.where(take_ok, t, c.ok_stepsize)
        ok_value = jnp.where(take_ok, f, c.ok_value)
        ok_grad = tree.where(take_ok, g, c.ok_grad)
        better = finite & (decrease | near) & (f < c.best_value)
        best_stepsize = jnp.where(better, t, c.best_stepsize)
        best_value = jnp.where(better, f, c.best_value)
        best_grad = tree.where(better, g, c.best_grad)

        # The update of the bracket by the trial t (inside it by construction).
        up = s >= 0
        right = up
        left = jnp.logical_not(up) & near
        high = jnp.logical_not(up) & jnp.logical_not(near)  # φ' < 0 above φ(0) + ε: bisect
        mode = c.mode
        expanding = mode == _EXPAND
        a = jnp.where(left, t, c.a)
        fa = jnp.where(left, f, c.fa)
        da = jnp.where(left, s, c.da)
        b = jnp.where(right | high, t, c.b)
        fb = jnp.where(right | high, f, c.fb)
        db = jnp.where(right | high, s, c.db)

        # Next trial. A bisection continues on a high trial (any mode) and, in a bisection, on a
        # left one; it ends on a right one and resumes where it was entered from.
        bisect_on = high | ((mode == _BISECT) & left)
        resume = jnp.where(
            (mode == _BISECT),
            c.resume,
            jnp.where(
                (mode == _SECANT1) | (mode == _SECANT2), _RESUME_SHRINK_CHECK, _RESUME_SECANT
            ),
        )
        new_secant_t, new_a0, new_b0 = begin_secant2(a, da, b, db)
        check_mode, check_t, check_a0, check_b0 = shrink_check(a, da, b, db, c.a0, c.b0)
        # The second secant of secant²: through the end that the first one replaced.
        second = jnp.where(right, _secant(c.b, c.db, t, s), _secant(c.a, c.da, t, s))
        second_ok = _inside(second, a, b) & (right | left)

        # Defaults: after a finished update, per mode.
        go_secant = (
            (expanding & right)
            | (mode == _MIDPOINT)
            | ((mode == _BISECT) & right & (c.resume == _RESUME_SECANT))
        )
        go_check = (
            ((mode == _SECANT1) & jnp.logical_not(second_ok))
            | (mode == _SECANT2)
            | ((mode == _BISECT) & right & (c.resume == _RESUME_SHRINK_CHECK))
        )
        next_mode = jnp.where(go_secant, _SECANT1, jnp.where(go_check, check_mode, _SECANT2))
        next_t = jnp.where(go_secant, new_secant_t, jnp.where(go_check, check_t, second))
        a0 = jnp.where(go_secant, new_a0, jnp.where(go_check, check_a0, c.a0))
        b0 = jnp.where(go_secant, new_b0, jnp.where(go_check, check_b0, c.b0))
        # Expansion: a left trial while no bracket is known.
        expand = expanding & left
        next_mode = jnp.where(expand, _EXPAND, next_mode)
        next_t = jnp.where(expand, jnp.minimum(expansion_factor * t, cap), next_t)
        # Bisection.
        next_mode = jnp.where(bisect_on, _BISECT, next_mode)
        next_t = jnp.where(bisect_on, 0.5 * (a + b), next_t)
        at_max = expand & (t >= cap)
        collapsed = jnp.isfinite(b) & (b - a <= tiny * b)
        # Stop at a trial satisfying the conditions only at the end of a secant² iteration
        # (with its bisection step, if any) on a known bracket: as JAXopt, and unlike
        # CG_DESCENT, which stops at the first Wolfe point; the step then lands near the line
        # minimizer (on it for a quadratic). The lowest such trial is returned.
        stop = c.accepted | ok
        stop = stop & (mode != _EXPAND) & (next_mode == _SECANT1)
        return _HZCarry(
            k=c.k + 1,
            done=stop | at_max | collapsed,
            accepted=c.accepted | ok,
            mode=next_mode.astype(c.mode.dtype),
            resume=jnp.where(bisect_on, resume, c.resume).astype(c.resume.dtype),
            trial=next_t,
            a=a,
            fa=fa,
            da=da,
            b=b,
            fb=fb,
            db=db,
            a0=a0,
            b0=b0,
            best_stepsize=best_stepsize,
            best_value=best_value,
            best_grad=best_grad,
            ok_stepsize=ok_stepsize,
            ok_value=ok_value,
            ok_grad=ok_grad,
        )

    zero = jnp.asarray(0.0, dtype)
    carry = _HZCarry(
        k=jnp.asarray(0),
        done=jnp.logical_not(slope0 < 0),
        accepted=jnp.asarray(False),
        mode=jnp.asarray(_EXPAND),
        resume=jnp.asarray(_RESUME_SECANT),
        trial=stepsize,
        a=zero,
        fa=value,
        da=slope0,
        b=inf,
        fb=inf,
        db=inf,
        a0=zero,
        b0=inf,
        best_stepsize=zero,
        best_value=value,
        best_grad=grad,
        ok_stepsize=zero,
        ok_value=inf,
        ok_grad=grad,
    )
    carry = _loop.while_loop(cond, body, carry)
    found = carry.accepted
    return search_result(
        jnp.where(found, carry.ok_stepsize, carry.best_stepsize),
        jnp.where(found, carry.ok_value, carry.best_value),
        tree.where(found, carry.ok_grad, carry.best_grad),
        carry.accepted,
        carry.k,
    )
