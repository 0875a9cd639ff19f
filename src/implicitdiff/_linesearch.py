"""Line-search kernels and the L-BFGS two-loop recursion: the one implementation of each.

Every solver with a line search, the public line-search objects of
:mod:`implicitdiff.solvers.linesearch`, and the transport projections use these functions. They
sit low in the layers (they import only :mod:`implicitdiff.tree` and :mod:`implicitdiff._loop`).

With φ(η) = f(x + η d) and φ'(η) = ⟨∇f(x + η d), d⟩ (φ'(0) < 0 for a descent direction d):

- :func:`shrink`: the backtracking loop, η ← ``factor`` · η until an acceptance test passes
  (each solver's own test: Armijo, proximal-gradient decrease, decrease along a projection arc,
  decrease of ‖G‖²);
- :func:`backtracking`: :func:`shrink` with the Armijo, Wolfe, strong-Wolfe or Goldstein test;
- :func:`proximal_backtracking`: :func:`shrink` with the sufficient decrease of proximal gradient
  (gradient descent's Armijo test with c1 = ½ when the prox is the identity), switching to its
  gradient form below the rounding error of f;
- :func:`zoom`: bracketing and cubic interpolation to a strong-Wolfe step (Nocedal & Wright, 2006,
  Algorithms 3.5 and 3.6);
- :func:`implicitdiff._hager_zhang.hager_zhang` (in its own module, on this module's
  :func:`search_start` and :func:`evaluator`): the bracketing, secant² and bisection steps of
  Hager & Zhang (2005, 2006) to a step satisfying the Wolfe or approximate Wolfe conditions;
- :func:`two_loop`: H g for the L-BFGS inverse-Hessian estimate H (Nocedal & Wright,
  Algorithm 7.4).

Each search runs on values cut from the graph (``stop_gradient``) and returns constants: a step
size is piecewise constant in the problem's data (its derivative is zero almost everywhere), a
solver that unrolls its iterations differentiates x + η d with η fixed, and a ``while_loop``
could not be reverse-differentiated anyway. All values are computed in the real dtype of the
params: an objective returning another float dtype is cast to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _loop, tree
from implicitdiff._typing import PyTree

__all__ = [
    "CONDITIONS",
    "Result",
    "backtracking",
    "evaluator",
    "inner",
    "proximal_backtracking",
    "real_dtype",
    "search_result",
    "search_start",
    "shrink",
    "slope",
    "two_loop",
    "zoom",
]

CONDITIONS = ("armijo", "wolfe", "strong-wolfe", "goldstein")


class Result(NamedTuple):
    """A line search's outcome: the step η, f and ∇f at x + η d (``grad`` None when the search
    was asked not to compute it), whether η satisfies the search's condition (``done``) or not
    (``failed``; η is then the search's best fallback), the number of trials and of evaluations
    of f and of ∇f. Every entry is cut from the graph."""

    stepsize: jax.Array
    value: jax.Array
    grad: PyTree
    done: jax.Array
    failed: jax.Array
    iter_num: jax.Array
    num_fun_eval: jax.Array
    num_grad_eval: jax.Array


def search_result(
    stepsize: jax.Array, value: jax.Array, grad: PyTree, accepted: jax.Array, trials: jax.Array
) -> Result:
    """The :class:`Result` of a search each of whose ``trials`` evaluated f and ∇f once:
    ``failed`` = not ``accepted``, and ``trials`` trials, f-evaluations and ∇f-evaluations, cut
    from the graph."""
    return jax.lax.stop_gradient(
        Result(stepsize, value, grad, accepted, jnp.logical_not(accepted), trials, trials, trials)
    )


def real_dtype(params: PyTree) -> Any:
    """The real floating dtype of the params (float32 for complex64 params, ...)."""
    return jnp.finfo(tree.dtype(params)).dtype


def inner(x: PyTree, y: PyTree) -> jax.Array:
    """Re ⟨x, y⟩ = Re Σ conj(x) y: the inner product of ℝⁿ, and of ℝ²ⁿ for complex leaves read
    as pairs (real part, imaginary part)."""
    return jnp.real(tree.vdot(x, y))


def slope(grad: PyTree, direction: PyTree) -> jax.Array:
    """φ'(η) = Re ⟨∇f, d⟩ (for complex params, ∇f as ``jax.grad`` returns it, conjugated)."""
    return inner(grad, direction)


def search_start(params, value, grad, direction, stepsize, max_stepsize):
    """The inputs of a search cut from the graph and cast to the real dtype of the params, the
    first trial step (finite, > 0, at most ``max_stepsize``), φ'(0) and that dtype."""
    params, value, grad, direction, stepsize = jax.lax.stop_gradient(
        (params, value, grad, direction, stepsize)
    )
    dtype = real_dtype(params)
    value = jnp.real(jnp.asarray(value)).astype(dtype)
    slope0 = slope(grad, direction).astype(dtype)
    stepsize = jnp.asarray(stepsize).astype(dtype)
    stepsize = jnp.where(jnp.isfinite(stepsize) & (stepsize > 0), stepsize, 1.0)
    if max_stepsize is not None:
        stepsize = jnp.minimum(stepsize, jnp.asarray(max_stepsize).astype(dtype))
    return params, value, grad, direction, stepsize, slope0, dtype


def _noise(value: jax.Array, rtol: float, computed_in: Any = None) -> jax.Array:
    """rtol · machine epsilon · |f|: differences of f below it are rounding. The epsilon is the
    coarser of the params' dtype and ``computed_in``, the dtype f was computed in (an objective
    computing in float32 for float64 params rounds at float32's epsilon)."""
    eps = jnp.finfo(value.dtype).eps
    if computed_in is not None and jnp.issubdtype(computed_in, jnp.floating):
        eps = max(eps, jnp.finfo(computed_in).eps)
    noise = rtol * eps * jnp.abs(value)
    return jnp.where(jnp.isfinite(noise), noise, 0.0)


def evaluator(value_and_grad_fun, params, direction, dtype):
    """η ↦ (φ(η), ∇f(x + η d), φ'(η)), values cast to ``dtype``."""

    def evaluate(eta):
        value, grad = value_and_grad_fun(tree.axpy(eta, direction, params))
        value = jnp.real(jnp.asarray(value)).astype(dtype)
        return value, grad, slope(grad, direction).astype(dtype)

    return evaluate


# ---------------------------------------------------------------------------------------------
# Backtracking.


def shrink(
    accept: Callable[[jax.Array], tuple[jax.Array, Any]],
    stepsize: jax.Array,
    *,
    factor: float,
    maxiter: int,
) -> tuple[jax.Array, jax.Array, Any, jax.Array]:
    """The backtracking loop: (η, ok, aux, trials) for the first η of stepsize · factorᵏ passing.

    ``accept(η)`` returns (ok, aux), aux any pytree of fixed structure (the trial's values, say).
    At most ``maxiter`` trials (≥ 1); when none passes, η is the last one tried and ok False.
    """

    def cond(carry):
        _, ok, _, k = carry
        return jnp.logical_not(ok) & (k < maxiter)

    def body(carry):
        eta, _, _, k = carry
        eta = eta * factor
        ok, aux = accept(eta)
        return eta, ok, aux, k + 1

    ok, aux = accept(stepsize)
    return _loop.while_loop(cond, body, (stepsize, ok, aux, jnp.asarray(1)))


def backtracking(
    value_and_grad_fun: Callable[[PyTree], tuple[jax.Array, PyTree]],
    params: PyTree,
    value: jax.Array,
    grad: PyTree,
    direction: PyTree,
    stepsize: jax.Array,
    *,
    value_fun: Callable[[PyTree], jax.Array] | None = None,
    condition: str = "armijo",
    c1: float = 1e-4,
    c2: float = 0.9,
    decrease_factor: float = 0.5,
    maxiter: int = 30,
    max_stepsize: Any = None,
    tol: float = 0.0,
    value_rtol: float = 8.0,
    final_grad: bool = True,
) -> Result:
    """Backtracking from η₀ = min(``stepsize``, ``max_stepsize``): η ← ``decrease_factor`` · η
    until the ``condition`` holds at η, at most ``maxiter`` trials:

    - ``"armijo"``: φ(η) ≤ φ(0) + c1 η φ'(0) (sufficient decrease);
    - ``"wolfe"``: sufficient decrease and φ'(η) ≥ c2 φ'(0);
    - ``"strong-wolfe"``: sufficient decrease and |φ'(η)| ≤ c2 |φ'(0)|;
    - ``"goldstein"``: φ(0) + (1 − c1) η φ'(0) ≤ φ(η) ≤ φ(0) + c1 η φ'(0).

    Each inequality is allowed a slack ``tol`` (default 0), and the comparisons of values a slack
    of ``value_rtol`` ulps of |φ(0)| (below that, f's change is rounding and the test would be a
    coin toss). Where the decrease asked for, c1 η |φ'(0)|, is itself below that slack, the tests
    on values take their gradient forms, exact for a quadratic φ: φ'(η) ≤ (2c1 − 1) φ'(0) for
    sufficient decrease, φ'(η) ≥ (1 − 2c1) φ'(0) for Goldstein's lower side. A non-finite trial
    fails. When no trial passes, η is the last one tried and ``failed`` is True. The Armijo and
    Goldstein tests evaluate only f (``value_fun`` if given) in the loop, and ∇f once at the end
    if ``final_grad`` (plus ∇f at each trial of the gradient forms, which the counts leave out).
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    computed_in = jnp.result_type(value)
    params, value, grad, direction, stepsize, slope0, dtype = search_start(
        params, value, grad, direction, stepsize, max_stepsize
    )
    evaluate = evaluator(value_and_grad_fun, params, direction, dtype)
    noise = _noise(value, value_rtol, computed_in)
    needs_grad = condition in ("wolfe", "strong-wolfe")

    def accept(eta):
        if needs_grad:
            new_value, new_grad, new_slope = evaluate(eta)
            aux = (new_value, new_grad)
        else:
            fun = value_fun if value_fun is not None else (lambda x: value_and_grad_fun(x)[0])
            new_value = jnp.real(jnp.asarray(fun(tree.axpy(eta, direction, params))))
            new_value = new_value.astype(dtype)
            aux = (new_value,)
        # Where the decrease c1 η |φ'(0)| is within the rounding of f (``noise``), a difference
        # of values is noise: the tests on values take their gradient forms there (exact for a
        # quadratic φ, as Hager and Zhang's approximate Wolfe conditions), φ'(η) ≤ (2c1 − 1)
        # φ'(0) for sufficient decrease and φ'(η) ≥ (1 − 2c1) φ'(0) for Goldstein's lower side,
        # at the price of one gradient per trial there when the condition needs none.
        resolved = -c1 * eta * slope0 > noise
        if not needs_grad:
            new_slope = _loop.cond(resolved, lambda e: slope0, lambda e: evaluate(e)[2], eta)
        decrease = jnp.where(
            resolved,
            new_value <= value + c1 * eta * slope0 + noise + tol,
            new_slope <= (2 * c1 - 1) * slope0 + tol,
        )
        ok = decrease & jnp.isfinite(new_value)
        if condition == "goldstein":
            ok = ok & jnp.where(
                resolved,
                new_value >= value + (1 - c1) * eta * slope0 - noise - tol,
                new_slope >= (1 - 2 * c1) * slope0 - tol,
            )
        elif condition == "wolfe":
            ok = ok & (new_slope >= c2 * slope0 - tol)
        elif condition == "strong-wolfe":
            ok = ok & (jnp.abs(new_slope) <= c2 * jnp.abs(slope0) + tol)
        return ok, aux

    eta, ok, aux, trials = shrink(accept, stepsize, factor=decrease_factor, maxiter=maxiter)
    if needs_grad:
        new_value, new_grad = aux
        grad_evals = trials
    elif final_grad:
        new_value, new_grad, _ = evaluate(eta)
        grad_evals = jnp.asarray(1)
    else:
        (new_value,), new_grad = aux, None
        grad_evals = jnp.asarray(0)
    extra = 1 if (final_grad and not needs_grad) else 0
    return jax.lax.stop_gradient(
        Result(
            eta, new_value, new_grad, ok, jnp.logical_not(ok), trials, trials + extra, grad_evals
        )
    )


# ---------------------------------------------------------------------------------------------
# Zoom (strong Wolfe).


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
    Where the cubic is undefined (a = b, or an end not finite: b = +inf while no bracket is
    known) it is evaluated on a harmless stand-in (a, b = 0, 1; φ = 0; φ' = −1, 1) and
    discarded, so that no 0/0 or inf − inf is computed (``jax.debug_nans`` reports those).
    """
    defined = (a != b) & jnp.all(jnp.isfinite(jnp.stack([a, fa, da, b, fb, db])), axis=0)
    a, fa, da, b, fb, db = (
        jnp.where(defined, v, stand_in)
        for v, stand_in in zip((a, fa, da, b, fb, db), (0.0, 0.0, -1.0, 1.0, 0.0, 1.0), strict=True)
    )
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    radicand = d1 * d1 - da * db
    d2 = jnp.sign(b - a) * jnp.sqrt(jnp.maximum(radicand, 0.0))
    den = db - da + 2.0 * d2
    t = b - (b - a) * (db + d2 - d1) / jnp.where(den != 0, den, 1.0)
    low, high = jnp.minimum(a, b), jnp.maximum(a, b)
    width = high - low
    ok = (
        defined
        & (den != 0)
        & (radicand >= 0)
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
    max_stepsize: Any = 1e10,
    value_rtol: float = 100.0,
    tol: float = 0.0,
) -> Result:
    """A step η along d from x satisfying the strong Wolfe conditions

        φ(η) ≤ φ(0) + c1 · η · φ'(0)   (sufficient decrease)  and  |φ'(η)| ≤ c2 · |φ'(0)|.

    The bracketing and zoom phases of Nocedal & Wright (2006), Algorithms 3.5 and 3.6, in one
    loop: trials η₀ = ``stepsize``, then × ``increase_factor`` (at most ``max_stepsize``) until
    an interval [lo, hi] is known to hold acceptable steps (sufficient decrease fails, or the
    value stops decreasing, or the slope turns non-negative); then trials at the safeguarded
    minimizer of the cubic interpolating φ and φ' at both ends, shrinking the interval, until one
    is accepted or ``maxiter`` trials were spent. A non-finite trial counts as a failure of
    sufficient decrease. Both conditions hold up to a slack ``tol`` (default 0).

    Near a minimum, f's decrease (about η|φ'(0)|/2) falls below the rounding of f itself, and
    comparisons of values stop meaning anything; there, as in Hager & Zhang's approximate Wolfe
    conditions (2005), a trial whose value is within ε = ``value_rtol`` · machine epsilon · |φ(0)|
    of φ(0) passes sufficient decrease when φ'(η) ≤ (2 c1 − 1) φ'(0) (the slope form of sufficient
    decrease, exact for quadratics), and values within ε of the best one do not count as an
    increase: the search then brackets by slopes alone.

    When no step is accepted (trials spent, the bracket collapsed, ``max_stepsize`` reached, or
    d not a descent direction), η is the best step found that satisfies sufficient decrease
    (possibly 0) and ``failed`` is True. One evaluation of f and ∇f per trial; f and ∇f at the
    returned step come back with it.
    """
    computed_in = jnp.result_type(value)
    params, value, grad, direction, stepsize, slope0, dtype = search_start(
        params, value, grad, direction, stepsize, max_stepsize
    )
    evaluate = evaluator(value_and_grad_fun, params, direction, dtype)
    noise = _noise(value, value_rtol, computed_in)
    cap = jnp.asarray(jnp.inf if max_stepsize is None else max_stepsize).astype(dtype)
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
        new_value, new_grad, new_slope = evaluate(eta)
        finite = jnp.isfinite(new_value) & jnp.isfinite(new_slope)
        # Sufficient decrease, or its approximate form where f's differences are rounding.
        decrease = (new_value <= value + c1 * eta * slope0 + tol) | (
            (new_value <= value + noise) & (new_slope <= (2 * c1 - 1) * slope0)
        )
        too_far = (
            jnp.logical_not(finite & decrease)
            | (new_value > carry.lo_value + noise)
            | ((noise == 0) & (new_value >= carry.lo_value))
        )
        accept = jnp.logical_not(too_far) & (jnp.abs(new_slope) <= -c2 * slope0 + tol)
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
        at_max = jnp.logical_not(jnp.isfinite(hi_stepsize)) & (lo_stepsize >= cap)
        width = jnp.abs(hi_stepsize - lo_stepsize)
        collapsed = jnp.isfinite(hi_stepsize) & (
            width <= 10 * jnp.finfo(dtype).eps * jnp.maximum(lo_stepsize, hi_stepsize)
        )
        return _ZoomCarry(
            k=carry.k + 1,
            done=accept | at_max | collapsed,
            accepted=accept,
            next_stepsize=jnp.minimum(eta * increase_factor, cap),
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
    carry = _loop.while_loop(cond, body, carry)
    # The accepted trial is lo (it passed sufficient decrease); otherwise lo is the best step.
    return search_result(carry.lo_stepsize, carry.lo_value, carry.lo_grad, carry.accepted, carry.k)


# ---------------------------------------------------------------------------------------------
# The L-BFGS two-loop recursion.


def two_loop(
    grad: PyTree,
    s_history: PyTree,
    y_history: PyTree,
    rho: jax.Array,
    gamma: jax.Array,
    order: jax.Array,
) -> PyTree:
    """H g by the two-loop recursion (Nocedal & Wright, 2006, Algorithm 7.4).

    H is the L-BFGS inverse-Hessian estimate of the pairs (sᵢ, yᵢ), ρᵢ = 1/⟨sᵢ, yᵢ⟩, from the
    initial matrix γ I: the memory holds m pairs (pytrees like g whose leaves have a leading axis
    of length m; ρᵢ = 0 marks a pair to skip), visited newest to oldest in ``order`` (m slot
    indices; a ring buffer gives its own order). Linear in g; O(m n) work. Inner products are
    real (:func:`inner`): complex leaves are pairs of reals, H a real operator on them.
    """

    def pair(i):
        return (tree.map(lambda b: b[i], s_history), tree.map(lambda b: b[i], y_history))

    def first(q, i):
        s, y = pair(i)
        alpha = rho[i] * inner(s, q)
        return tree.axpy(-alpha, y, q), alpha

    q, alphas = _loop.scan(first, grad, order)
    r = tree.scale(gamma, q)

    def second(r, item):
        i, alpha = item
        s, y = pair(i)
        beta = rho[i] * inner(y, r)
        return tree.axpy(alpha - beta, s, r), None

    r, _ = _loop.scan(second, r, (order[::-1], alphas[::-1]))
    return r


def proximal_backtracking(
    value_fun: Callable[[PyTree], jax.Array],
    grad_fun: Callable[[PyTree], PyTree],
    prox_step: Callable[[PyTree, jax.Array], PyTree],
    point: PyTree,
    value: jax.Array,
    grad: PyTree,
    stepsize: jax.Array,
    *,
    factor: float = 0.5,
    maxiter: int = 30,
) -> tuple[jax.Array, jax.Array]:
    """(η, ok): the accepted step η of proximal gradient from ``point`` y, a constant (cut from
    the graph), and whether it passed (False: no trial passed, η is the last one tried).

    Starting at ``stepsize``, multiply η by ``factor`` until x⁺ = prox_step(y − η∇f(y), η)
    satisfies the sufficient decrease of proximal gradient (Beck & Teboulle, 2009)

        f(x⁺) − f(y) − ⟨∇f(y), x⁺ − y⟩ ≤ ‖x⁺ − y‖² / (2η),

    or for ``maxiter`` trials. A non-finite f(x⁺) fails. Near a solution the right side falls
    below the rounding error of f (a few ulps of |f(y)|), and the left side, computed by
    cancellation, is noise: the test would then accept any η, or reject every one. There the left
    side is replaced by its gradient form ½⟨∇f(x⁺) − ∇f(y), x⁺ − y⟩ (equal for a quadratic f,
    and computed without that cancellation; the gradient is only evaluated in that case).
    Everything runs on values cut from the graph: η is piecewise constant in the problem's data,
    its derivative is zero almost everywhere.

    With ``prox_step`` the identity it is the Armijo test f(y − η∇f) ≤ f(y) − η‖∇f(y)‖²/2 of
    gradient descent (c1 = ½), with the same guard at the noise floor.
    """
    point, value, grad, stepsize = jax.lax.stop_gradient((point, value, grad, stepsize))
    # (f may compute in another dtype than the params: the coarser of the two rounds f)
    eps = max(jnp.finfo(jnp.result_type(value)).eps, jnp.finfo(tree.dtype(point)).eps)
    noise = 8 * eps * jnp.abs(value)

    def accepted(eta):
        candidate = prox_step(tree.axpy(-eta, grad, point), eta)
        diff = tree.sub(candidate, point)
        new_value = value_fun(candidate)
        model = tree.vdot_real(diff, diff) / (2 * eta)
        by_value = new_value - value - tree.vdot_real(grad, diff) <= model

        def by_gradient(_):
            return 0.5 * tree.vdot_real(tree.sub(grad_fun(candidate), grad), diff) <= model

        resolved = model > noise
        ok = _loop.cond(resolved, lambda _: by_value, by_gradient, None)
        return ok & jnp.isfinite(new_value)

    eta, ok, _, _ = shrink(
        lambda eta: (accepted(eta), ()), stepsize, factor=factor, maxiter=maxiter + 1
    )
    return eta, ok
