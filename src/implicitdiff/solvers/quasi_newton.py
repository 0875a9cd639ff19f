"""Quasi-Newton methods: LBFGS and BFGS.

Both minimize a smooth ``fun(params, *args, **kwargs)`` along search directions with a line
search, and are differentiated through the stationarity condition ∇₁f(x, *args) = 0
(:func:`implicitdiff.optimality.stationary`); their shared options and line-search step are
:class:`implicitdiff.solvers._line_search_solver.LineSearchSolver` (nonlinear conjugate
gradient, on the same base, is :mod:`implicitdiff.solvers.nonlinear_cg`). They also unroll:
with ``implicit_diff=False`` the iterations are differentiated step by step, the line search
contributing a constant step size (see :mod:`implicitdiff.solvers.linesearch`), the curvature
estimates held constant, and every division guarded, so that unrolled derivatives are finite
and converge to the implicit ones, also through the masked steps after convergence (each class
documents how).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from implicitdiff import _linesearch, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import OptStep
from implicitdiff.solvers._line_search_solver import (
    LineSearchSolver,
    StopIfLinesearchFails,
    first_stepsize,
    safe_divide,
)

__all__ = ["BFGS", "LBFGS"]


# ---------------------------------------------------------------------------------------------
# L-BFGS


class LbfgsState(NamedTuple):
    """iter_num, error = ‖∇f(x)‖, converged, f(x), ∇f(x), the last step size, and the memory.

    The memory is a ring buffer of the last ``history_size`` pairs s = x₊ − x, y = ∇f(x₊) − ∇f(x)
    (pytrees like params whose leaves have a leading axis of length ``history_size``), with
    ρ = 1/sᵀy (0 marks an empty slot), the slot the next pair goes to, and the initial scaling γ.
    """

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    grad: PyTree
    stepsize: jax.Array
    s_history: PyTree
    y_history: PyTree
    rho_history: jax.Array
    gamma: jax.Array
    head: jax.Array
    aux: Any = None  # fun's auxiliary output at x with has_aux=True
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    failed_linesearch: jax.Array | bool = False  # the last search found no acceptable step

    __repr__ = _summary.namedtuple_repr


def _pair_ok(s, y, sy, x, dtype):
    """Whether the pair (s, y) at x enters the curvature estimate.

    sᵀy > ε‖s‖‖y‖ (ε the dtype's epsilon), finite: the pair keeps H positive definite; and
    ‖s‖ > 1000 ε ‖x‖: a step within a few hundred roundings of x gives a y made of the rounding
    noise of ∇f, whose curvature is garbage.
    """
    s, y, sy, x = jax.lax.stop_gradient((s, y, sy, x))
    eps = float(np.finfo(dtype).eps)
    s_norm = tree.norm(s)
    return (
        (sy > eps * s_norm * tree.norm(y)) & jnp.isfinite(sy) & (s_norm > 1e3 * eps * tree.norm(x))
    )


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LBFGS(StopIfLinesearchFails, LineSearchSolver):
    """min_x fun(x, *args) by limited-memory BFGS: x ← x − η H ∇f(x), H from the last m steps.

    ``run(init_params, *args, **kwargs)``; the solution is differentiated through the
    stationarity condition ∇₁f(x, *args) = 0 (:func:`implicitdiff.optimality.stationary`).

    H ∇f is computed by the two-loop recursion (Nocedal & Wright, 2006, Algorithm 7.4) from the
    last m = ``history_size`` pairs s = x₊ − x, y = ∇f(x₊) − ∇f(x), held in a fixed-size ring
    buffer, with the initial matrix γI, γ = sᵀy / yᵀy of the newest pair. A pair with
    sᵀy ≤ ε‖s‖‖y‖ (ε the dtype's epsilon) is skipped, which keeps H positive definite, and so
    is a pair with ‖s‖ ≤ 1000 ε ‖x‖, whose y is rounding noise. η comes
    from a line search: ``"zoom"`` (strong Wolfe, the default) or ``"backtracking"`` (Armijo),
    trying η = 1 first (min(1, 1/‖∇f‖) at the first iteration and after a reset). Should the
    direction not descend, or the line search make no progress, the memory is cleared and the
    next step is along −∇f. Params may be pytrees (the memory stacks each leaf).

    Unrolling (``implicit_diff=False``) differentiates x ← x − η H ∇f(x, θ) with η and the
    memory (s, y, γ) held constant: H is then a fixed preconditioner at each step, and the
    derivatives of the iterates follow the same linear recursion as their errors, converging to
    the implicit derivative as fast as the iterates converge (on a quadratic, exactly as fast).
    Differentiating the memory too, as plain unrolling would, divides by sᵀy and yᵀy that
    vanish at the solution: the derivatives then lag far behind the iterates, and overflow to
    NaN unless every division is guarded. For the same reason a step below the rounding of x
    (|η dᵢ| ≤ 4 ε |xᵢ| for every entry) is not taken, a pair with ‖s‖ ≤ 1000 ε ‖x‖ is skipped,
    and the backtracking search, where f's change is rounding, also asks for the slope form of
    sufficient decrease: once the iterates reach floating-point accuracy they stop, and so do
    their derivatives. Unrolled derivatives still lag the iterates somewhat: ask for a tighter
    ``tol`` than for the solution alone.

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar; smooth. (f, aux) with ``has_aux``,
        (f, ∇f) with ``value_and_grad`` (((f, aux), ∇f) with both), as in JAXopt.
      value_and_grad: whether ``fun`` returns its gradient too (False); that gradient is also
        the condition that differentiates the solution.
      has_aux: whether ``fun`` returns an auxiliary output, kept in ``state.aux`` (False).
      stepsize: 0 (default) for a line search; η > 0, or a callable ``stepsize(iter_num)``, for
        x ← x + η d without one (as JAXopt).
      history_size: m ≥ 1, the number of pairs kept (default 10).
      use_gamma: scale the initial matrix by γ (True); False: γ = 1.
      stop_if_linesearch_fails: end the run, x unchanged, after a search that found no step
        satisfying its condition (JAXopt's option; False: the search's fallback step is taken
        and the run goes on). ``state.failed_linesearch`` says whether the last search failed;
        such a stop has status STALLED.
      linesearch: ``"zoom"`` (strong Wolfe, default), ``"hager-zhang"`` (Wolfe or approximate
        Wolfe), ``"backtracking"`` (Armijo, halving) or a line-search object
        (:class:`implicitdiff.solvers.ZoomLineSearch`, :class:`~implicitdiff.solvers.
        HagerZhangLineSearch`, :class:`~implicitdiff.solvers.BacktrackingLineSearch`).
      linesearch_init: the first trial of each search: None (default) as above; JAXopt's
        ``"increase"`` (``increase_factor`` × the last step, ``max_stepsize`` once that is
        ≤ ``min_stepsize``), ``"max"`` (``max_stepsize``) or ``"current"`` (the last step).
      maxls: the most trials per line search (30).
      c1, c2: the sufficient-decrease and curvature constants, 0 < c1 < c2 < 1 (1e-4, 0.9;
        backtracking uses c1 only).
      increase_factor, min_stepsize: for ``linesearch_init="increase"`` (1.5, 1e-6).
      max_stepsize: the largest step a search tries (None: no bound with
        ``linesearch_init=None``, JAXopt's 1.0 with its strategies).
      maxiter, tol: stop when ‖∇f(x)‖ ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.quasi_newton import LBFGS
      >>> f = lambda w, X, y, lam: jnp.sum((X @ w - y) ** 2) + lam * jnp.sum(w**2)
      >>> X, y = jnp.eye(3), jnp.ones(3)
      >>> w, state = LBFGS(fun=f).run(jnp.zeros(3), X, y, 1.0)  # w = y / 2
    """

    stepsize: float | Callable = 0.0
    history_size: int = 10
    use_gamma: bool = True
    stop_if_linesearch_fails: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.use_gamma, bool):
            raise TypeError(f"LBFGS: use_gamma must be a bool, got {self.use_gamma!r}")
        self._check_stop_if_linesearch_fails("LBFGS")
        if not (isinstance(self.history_size, int) and self.history_size >= 1):
            raise ValueError(
                f"LBFGS: history_size must be a positive int, got {self.history_size!r}"
            )

    def init_state(self, init_params, /, *args, **kwargs) -> LbfgsState:
        """The state at ``init_params``: f and ∇f evaluated there.

        Checks first that ``fun`` takes ``(params, *args)``.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          An ``LbfgsState``: iter_num 0, error ‖∇f(x₀)‖, f(x₀), ∇f(x₀), and an empty memory
            (``history_size`` slots, γ = 1).
        """
        value, grad, aux = self._start(init_params, args, kwargs)
        dtype = _dtypes.real_dtype(init_params)
        m = self.history_size
        empty = tree.map(lambda leaf: jnp.zeros((m, *jnp.shape(leaf)), jnp.result_type(leaf)), grad)
        return LbfgsState(
            **self._initial_fields(value, grad, aux, 1.0, dtype),
            s_history=empty,
            y_history=empty,
            rho_history=jnp.zeros(m, dtype),
            gamma=jnp.asarray(1.0, dtype),
            head=jnp.asarray(0, jnp.int32),
            failed_linesearch=jnp.asarray(False),
        )

    def update(self, params, state: LbfgsState, /, *args, **kwargs) -> OptStep:
        """One iteration x⁺ = x + ηd.

        d = −H∇f(x) by the two-loop recursion (−∇f(x) if it does not descend), η by the line search
        (first trial 1, or min(1, 1/‖∇f‖) with an empty memory).

        The pair s = x⁺ − x, y = ∇f(x⁺) − ∇f(x) enters the memory if it passes the curvature test;
        the memory is cleared after a direction that did not descend or a search that made no
        progress (see the class).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (f, ∇f and the error ‖∇f‖ at x⁺, η, the
            memory).
        """
        dtype = state.rho_history.dtype
        direction = tree.neg(
            _linesearch.two_loop(
                state.grad,
                state.s_history,
                state.y_history,
                state.rho_history,
                state.gamma,
                (state.head - 1 - jnp.arange(self.history_size)) % self.history_size,
            )
        )
        slope = jax.lax.stop_gradient(_linesearch.inner(state.grad, direction))
        descent = (slope < 0) & jnp.isfinite(slope)
        direction = tree.where(descent, direction, tree.neg(state.grad))
        empty_memory = jnp.all(state.rho_history == 0)
        stepsize = jnp.where(
            descent & jnp.logical_not(empty_memory),
            jnp.asarray(1.0, dtype),
            first_stepsize(state.grad, dtype),
        )
        eta, value, grad, aux, failed = self._step_and_failure(
            params, state, direction, stepsize, args, kwargs
        )
        if self.stop_if_linesearch_fails:  # the run stops where it stands
            eta = jnp.where(failed, 0.0, eta)
            value, grad, aux = tree.map(
                lambda old, new: jnp.where(failed, old, new),
                (state.value, state.grad, state.aux),
                (value, grad, aux),
            )
        eta = eta.astype(dtype)
        # The memory holds constants (see the class docstring on unrolling).
        s, y = jax.lax.stop_gradient((tree.scale(eta, direction), tree.sub(grad, state.grad)))
        sy = _linesearch.inner(s, y)
        keep = _pair_ok(s, y, sy, params, dtype)
        # Clear the memory when the direction did not descend or the search made no progress.
        reset = jnp.logical_not(descent) | (eta <= 0)
        rho_history = jnp.where(reset, 0.0, state.rho_history).astype(dtype)
        head = state.head
        s_history = tree.map(
            lambda b, v: jnp.where(keep, b.at[head].set(v), b),
            state.s_history,
            s,
        )
        y_history = tree.map(
            lambda b, v: jnp.where(keep, b.at[head].set(v), b),
            state.y_history,
            y,
        )
        rho_history = jnp.where(
            keep, rho_history.at[head].set(safe_divide(1.0, sy, keep)), rho_history
        )
        gamma = jnp.where(
            keep,
            safe_divide(sy, _linesearch.inner(y, y), keep, 1.0),
            jnp.where(reset, 1.0, state.gamma),
        ).astype(dtype)
        if not self.use_gamma:
            gamma = jnp.ones_like(gamma)
        state = LbfgsState(
            **self._next_fields(state, value, grad, eta, aux),
            s_history=s_history,
            y_history=y_history,
            rho_history=rho_history,
            gamma=gamma,
            head=jnp.where(keep, (head + 1) % self.history_size, head).astype(jnp.int32),
            failed_linesearch=jnp.asarray(failed),
        )
        return OptStep(tree.axpy(eta, direction, params), state)


# ---------------------------------------------------------------------------------------------
# BFGS


class BfgsState(NamedTuple):
    """iter_num, error = ‖∇f(x)‖, converged, f(x), ∇f(x), the last step size, H ≈ ∇²f⁻¹ (an
    n × n array on the flattened params, n their number of entries), and whether H = I (at the
    start and after a reset: the next update scales it first)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    grad: PyTree
    stepsize: jax.Array
    inv_hessian: jax.Array
    identity: jax.Array
    aux: Any = None  # fun's auxiliary output at x with has_aux=True
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BFGS(LineSearchSolver):
    """min_x fun(x, *args) by BFGS: x ← x − η H ∇f(x), H a dense inverse-Hessian estimate.

    ``run(init_params, *args, **kwargs)``; the solution is differentiated through the
    stationarity condition ∇₁f(x, *args) = 0 (:func:`implicitdiff.optimality.stationary`).

    H acts on the params flattened to n entries (``jax.flatten_util.ravel_pytree``) and is
    updated after each step s = x₊ − x, y = ∇f(x₊) − ∇f(x) by (Nocedal & Wright, 2006, eq. 6.17)

        H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ,   ρ = 1 / sᵀy,

    from H = I scaled by γ = sᵀy / yᵀy before the first update (eq. 6.20). Pairs are skipped as
    in :class:`LBFGS` (sᵀy ≤ ε‖s‖‖y‖, or ‖s‖ ≤ 1000 ε ‖x‖). η comes
    from a line search, ``"zoom"`` (strong Wolfe, the default) or ``"backtracking"``, trying
    η = 1 first (min(1, 1/‖∇f‖) at the first iteration and after a reset). Should the direction
    not descend, or the line search make no progress, H is reset to I. O(n²) memory and work per
    iteration: for small and medium n; use :class:`LBFGS` beyond.

    Unrolling (``implicit_diff=False``) holds η and H constant, as :class:`LBFGS` holds its
    memory (see there).

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar; smooth.
      linesearch: ``"zoom"`` (strong Wolfe, default), ``"hager-zhang"`` (Wolfe or approximate
        Wolfe), ``"backtracking"`` (Armijo, halving) or a line-search object
        (:class:`implicitdiff.solvers.ZoomLineSearch`, :class:`~implicitdiff.solvers.
        HagerZhangLineSearch`, :class:`~implicitdiff.solvers.BacktrackingLineSearch`).
      fun, value_and_grad, has_aux, stepsize: as in :class:`LBFGS`.
      linesearch_init, maxls, c1, c2, increase_factor, min_stepsize, max_stepsize: the line
        search's options, as in :class:`LBFGS`.
      maxiter, tol: stop when ‖∇f(x)‖ ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.quasi_newton import BFGS
      >>> rosenbrock = lambda x, a: (a - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2
      >>> x, state = BFGS(fun=rosenbrock).run(jnp.array([-1.2, 1.0]), 1.0)  # x = (1, 1)
    """

    _complex_params = False  # H is a complex matrix: it cannot hold an ℝ-linear map of z

    stepsize: float | Callable = 0.0

    def init_state(self, init_params, /, *args, **kwargs) -> BfgsState:
        """The state at ``init_params``: f and ∇f evaluated there.

        Checks first that ``fun`` takes ``(params, *args)``.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``BfgsState``: iter_num 0, error ‖∇f(x₀)‖, f(x₀), ∇f(x₀), and H = I (n × n, n the number
            of entries of x₀), flagged as the identity.
        """
        value, grad, aux = self._start(init_params, args, kwargs)
        dtype = tree.dtype(init_params)
        n = tree.size(init_params)
        return BfgsState(
            **self._initial_fields(value, grad, aux, 1.0, dtype),
            inv_hessian=jnp.eye(n, dtype=dtype),
            identity=jnp.asarray(True),
        )

    def update(self, params, state: BfgsState, /, *args, **kwargs) -> OptStep:
        """One iteration x⁺ = x + ηd, and the BFGS update of H.

        d = −H∇f(x) (−∇f(x) if it does not descend), η by the line search (first trial 1, or
        min(1, 1/‖∇f‖) while H = I), and the BFGS update of H by the pair s = x⁺ − x,
        y = ∇f(x⁺) − ∇f(x) (H = I scaled by sᵀy / yᵀy first; the pair skipped, or H reset to I, as
        the class says).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (f, ∇f and the error ‖∇f‖ at x⁺, η, H).
        """
        H = state.inv_hessian
        dtype = H.dtype
        flat_grad, unravel = ravel_pytree(state.grad)
        direction = unravel(-(H @ flat_grad.astype(dtype)).astype(flat_grad.dtype))
        slope = jax.lax.stop_gradient(tree.vdot(state.grad, direction))
        descent = (slope < 0) & jnp.isfinite(slope)
        direction = tree.where(descent, direction, tree.neg(state.grad))
        fresh = state.identity | jnp.logical_not(descent)
        stepsize = jnp.where(fresh, first_stepsize(state.grad, dtype), jnp.asarray(1.0, dtype))
        eta, value, grad, aux = self._step(params, state, direction, stepsize, args, kwargs)
        eta = eta.astype(dtype)
        # H is a constant (see the class docstring on unrolling).
        s = ravel_pytree(tree.scale(eta, direction))[0].astype(dtype)
        y = (ravel_pytree(grad)[0] - flat_grad).astype(dtype)
        s, y, H = jax.lax.stop_gradient((s, y, H))
        sy = jnp.vdot(s, y)
        keep = _pair_ok(s, y, sy, params, dtype)
        reset = jnp.logical_not(descent) | (eta <= 0)
        eye = jnp.eye(H.shape[0], dtype=dtype)
        H = jnp.where(reset, eye, H)
        # Before the first update (or after a reset), scale H = I by γ = sᵀy / yᵀy.
        gamma = safe_divide(sy, jnp.vdot(y, y), keep, 1.0)
        H = jnp.where(fresh, gamma * eye, H)
        rho = safe_divide(1.0, sy, keep)
        Hy = H @ y
        updated = (
            H
            - rho * (jnp.outer(s, Hy) + jnp.outer(Hy, s))
            + (rho * rho * jnp.vdot(y, Hy) + rho) * jnp.outer(s, s)
        )
        H = jnp.where(keep, updated, jnp.where(fresh, eye, H))
        state = BfgsState(
            **self._next_fields(state, value, grad, eta, aux),
            inv_hessian=H,
            identity=jnp.logical_not(keep) & (fresh | reset),
        )
        return OptStep(tree.axpy(eta, direction, params), state)
