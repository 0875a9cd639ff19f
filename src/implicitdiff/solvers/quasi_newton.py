"""Quasi-Newton and nonlinear conjugate gradient methods: LBFGS, BFGS and NonlinearCG.

All three minimize a smooth ``fun(params, *args, **kwargs)`` along search directions with a line
search, and are differentiated through the stationarity condition ∇₁f(x, *args) = 0
(:func:`implicitdiff.optimality.stationary`). They also unroll: with ``implicit_diff=False`` the
iterations are differentiated step by step, the line search contributing a constant step size
(see :mod:`implicitdiff.solvers.linesearch`), the curvature estimates of LBFGS and BFGS held
constant, and every division guarded, so that unrolled derivatives are finite and converge to
the implicit ones, also through the masked steps after convergence (each class documents how).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from implicitdiff import _checks, _linesearch, optimality, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers.linesearch import (
    BacktrackingLineSearch,
    HagerZhangLineSearch,
    LineSearch,
    ZoomLineSearch,
)

__all__ = ["BFGS", "LBFGS", "NonlinearCG"]

_LINESEARCHES = ("zoom", "backtracking", "hager-zhang")


def _safe_min(dtype: Any) -> float:
    """√(smallest normal) of a dtype: a denominator above it has a finite square (derivatives)."""
    return math.sqrt(float(np.finfo(dtype).tiny))


def _safe_divide(num: jax.Array, den: jax.Array, ok: jax.Array, default: Any = 0.0) -> jax.Array:
    """num / den where ok, default elsewhere, with finite derivatives in both branches."""
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), default)


def _first_stepsize(grad: PyTree, dtype: Any) -> jax.Array:
    """min(1, 1/‖∇f‖): the first trial along −∇f, a step of length at most 1 (cut)."""
    gnorm = jax.lax.stop_gradient(tree.norm(grad)).astype(dtype)
    return jnp.where(gnorm > 1.0, 1.0 / jnp.where(gnorm > 1.0, gnorm, 1.0), 1.0).astype(dtype)


def _error(grad: PyTree, dtype: Any) -> jax.Array:
    """‖∇f‖, cut: a diagnostic, never differentiated (√ at 0 would give NaN derivatives)."""
    return jax.lax.stop_gradient(tree.norm(grad)).astype(dtype)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class _LineSearchSolver(IterativeSolver):
    """Options and the line-search step shared by LBFGS, BFGS and NonlinearCG."""

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    tol: float = 1e-6
    linesearch: str = "zoom"
    maxls: int = 30
    c1: float = 1e-4
    c2: float = 0.9
    max_stepsize: float = 1e10

    def __post_init__(self):
        name = type(self).__name__
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"{name}: fun must be callable, got {self.fun!r}")
        if not (isinstance(self.linesearch, LineSearch) or self.linesearch in _LINESEARCHES):
            raise ValueError(
                f"{name}: linesearch must be one of {_LINESEARCHES} or a line-search object "
                f"(implicitdiff.solvers.ZoomLineSearch, ...), got {self.linesearch!r}"
            )
        if not (isinstance(self.maxls, int) and self.maxls >= 1):
            raise ValueError(f"{name}: maxls must be a positive int, got {self.maxls!r}")
        if not 0 < self.c1 < self.c2 < 1:
            raise ValueError(
                f"{name}: the Wolfe constants must satisfy 0 < c1 < c2 < 1, got "
                f"c1={self.c1!r}, c2={self.c2!r}"
            )
        if not self.max_stepsize > 0:
            raise ValueError(f"{name}: max_stepsize must be > 0, got {self.max_stepsize!r}")
        object.__setattr__(self, "_value_and_grad", jax.value_and_grad(self.fun))

    def _evaluate(self, params, /, *args, **kwargs):
        """(f, ∇f) at params, f cast to the params' real dtype (whatever dtype ``fun`` returns)."""
        value, grad = self._value_and_grad(params, *args, **kwargs)
        return jnp.real(jnp.asarray(value)).astype(_linesearch.real_dtype(params)), grad

    def _start(self, init_params, args, kwargs):
        """f and ∇f at ``init_params``, after checking that ``fun`` takes (params, *args)."""
        _checks.check_signature(
            self.fun, type(self).__name__, "fun", (init_params, *args), kwargs, "fun(params, *args)"
        )
        return self._evaluate(init_params, *args, **kwargs)

    def _linesearch_object(self) -> LineSearch:
        """The line search: the ``linesearch`` object, or the one its name stands for."""
        if isinstance(self.linesearch, LineSearch):
            return self.linesearch
        if self.linesearch == "zoom":
            return ZoomLineSearch(
                fun=self.fun,
                c1=self.c1,
                c2=self.c2,
                maxiter=self.maxls,
                max_stepsize=self.max_stepsize,
            )
        if self.linesearch == "hager-zhang":
            return HagerZhangLineSearch(
                fun=self.fun,
                c1=min(0.1, self.c2 / 2),
                c2=self.c2,
                maxiter=self.maxls,
                max_stepsize=self.max_stepsize,
            )
        # Armijo backtracking, halving: a search that cannot lengthen the step should not ask
        # for the curvature condition (JAXopt's strong-Wolfe backtracking is the object's).
        return BacktrackingLineSearch(
            fun=self.fun,
            condition="armijo",
            c1=self.c1,
            c2=self.c2,
            decrease_factor=0.5,
            maxiter=self.maxls,
            max_stepsize=self.max_stepsize,
        )

    def _search(self, params, value, grad, direction, stepsize, args, kwargs):
        """(η, f(x + η d), ∇f(x + η d)) with η a constant; f and ∇f differentiable when
        unrolling, reused from the line search otherwise.

        A step below the rounding of x (|η dᵢ| ≤ 4 ε |xᵢ| for every entry) is not taken
        (η = 0): the iterates have reached the accuracy of floating point, and their noise
        (steps, curvature pairs) must not drive unrolled derivatives on.
        """
        cut_args, cut_kwargs = tree.stop_gradient((args, kwargs))
        search = self._linesearch_object()
        found = search.search(
            lambda x: self._evaluate(x, *cut_args, **cut_kwargs),
            params,
            value,
            grad,
            direction,
            stepsize,
        )
        eta = found.stepsize
        cut_params, cut_direction = tree.stop_gradient((params, direction))
        eps = float(np.finfo(_linesearch.real_dtype(params)).eps)
        below_rounding = tree.map(
            lambda x, d: jnp.all(jnp.abs(eta * d) <= 4 * eps * jnp.abs(x)),
            cut_params,
            cut_direction,
        )
        negligible = jnp.all(jnp.asarray(jax.tree_util.tree_leaves(below_rounding)))
        eta = jnp.where(negligible, 0.0, eta).astype(eta.dtype)
        value_only = getattr(search, "condition", None) in ("armijo", "goldstein")
        if self.implicit_diff:
            # The iterations are not differentiated: reuse f and ∇f of the search.
            keep = lambda old, new: jnp.where(negligible, old, new).astype(new.dtype)  # noqa: E731
            new_value, new_grad = keep(value, found.value), tree.map(keep, grad, found.grad)
            if not value_only:
                return eta, new_value, new_grad
        else:
            new_value, new_grad = self._evaluate(tree.axpy(eta, direction, params), *args, **kwargs)
        if value_only:
            # Where f's change is rounding, Armijo's test is a coin toss: there, ask for the
            # slope form of sufficient decrease too, φ'(η) ≤ (2 c1 − 1) φ'(0), as the zoom does.
            cut_value, cut_new_value, cut_grad, cut_new_grad = tree.stop_gradient(
                (value, new_value, grad, new_grad)
            )
            noise = 100 * eps * jnp.abs(cut_value)
            slope0 = _linesearch.slope(cut_grad, cut_direction)
            slope = _linesearch.slope(cut_new_grad, cut_direction)
            rejected = (jnp.abs(cut_new_value - cut_value) <= noise) & (
                slope > (2 * self.c1 - 1) * slope0
            )
            eta = jnp.where(rejected, 0.0, eta).astype(eta.dtype)
            keep = lambda old, new: jnp.where(rejected, old, new).astype(new.dtype)  # noqa: E731
            new_value, new_grad = keep(value, new_value), tree.map(keep, grad, new_grad)
        return eta, new_value, new_grad

    def optimality(self):
        """The condition that the solution is differentiated through: ∇₁fun(x, *args) = 0.

        Returns:
          ``("root", optimality.stationary(fun))``.
        """
        return "root", optimality.stationary(self.fun)


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
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)


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
class LBFGS(_LineSearchSolver):
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
      fun: the objective f(x, *args, **kwargs), a scalar; smooth.
      history_size: m ≥ 1, the number of pairs kept (default 10).
      linesearch: ``"zoom"`` (strong Wolfe, default), ``"hager-zhang"`` (Wolfe or approximate
        Wolfe), ``"backtracking"`` (Armijo, halving) or a line-search object
        (:class:`implicitdiff.solvers.ZoomLineSearch`, :class:`~implicitdiff.solvers.
        HagerZhangLineSearch`, :class:`~implicitdiff.solvers.BacktrackingLineSearch`).
      maxls: the most trials per line search (30).
      c1, c2: the sufficient-decrease and curvature constants, 0 < c1 < c2 < 1 (1e-4, 0.9;
        backtracking uses c1 only).
      max_stepsize: the largest step the zoom search tries (1e10).
      maxiter, tol: stop when ‖∇f(x)‖ ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.quasi_newton import LBFGS
      >>> f = lambda w, X, y, lam: jnp.sum((X @ w - y) ** 2) + lam * jnp.sum(w**2)
      >>> X, y = jnp.eye(3), jnp.ones(3)
      >>> w, state = LBFGS(fun=f).run(jnp.zeros(3), X, y, 1.0)  # w = y / 2
    """

    history_size: int = 10

    def __post_init__(self):
        super().__post_init__()
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
        value, grad = self._start(init_params, args, kwargs)
        dtype = tree.dtype(init_params)
        m = self.history_size
        empty = tree.map(lambda leaf: jnp.zeros((m, *jnp.shape(leaf)), jnp.result_type(leaf)), grad)
        return LbfgsState(
            iter_num=jnp.asarray(0),
            error=_error(grad, dtype),
            converged=jnp.asarray(False),
            value=jnp.asarray(value),
            grad=grad,
            stepsize=jnp.asarray(1.0, dtype),
            s_history=empty,
            y_history=empty,
            rho_history=jnp.zeros(m, dtype),
            gamma=jnp.asarray(1.0, dtype),
            head=jnp.asarray(0, jnp.int32),
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
        slope = jax.lax.stop_gradient(tree.vdot(state.grad, direction))
        descent = (slope < 0) & jnp.isfinite(slope)
        direction = tree.where(descent, direction, tree.neg(state.grad))
        empty_memory = jnp.all(state.rho_history == 0)
        stepsize = jnp.where(
            descent & jnp.logical_not(empty_memory),
            jnp.asarray(1.0, dtype),
            _first_stepsize(state.grad, dtype),
        )
        eta, value, grad = self._search(
            params, state.value, state.grad, direction, stepsize, args, kwargs
        )
        eta = eta.astype(dtype)
        # The memory holds constants (see the class docstring on unrolling).
        s, y = jax.lax.stop_gradient((tree.scale(eta, direction), tree.sub(grad, state.grad)))
        sy = tree.vdot(s, y)
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
            keep, rho_history.at[head].set(_safe_divide(1.0, sy, keep)), rho_history
        )
        gamma = jnp.where(
            keep,
            _safe_divide(sy, tree.vdot(y, y), keep, 1.0),
            jnp.where(reset, 1.0, state.gamma),
        ).astype(dtype)
        state = LbfgsState(
            iter_num=state.iter_num + 1,
            error=_error(grad, state.error.dtype),
            converged=state.converged,
            value=value,
            grad=grad,
            stepsize=eta,
            s_history=s_history,
            y_history=y_history,
            rho_history=rho_history,
            gamma=gamma,
            head=jnp.where(keep, (head + 1) % self.history_size, head).astype(jnp.int32),
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
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BFGS(_LineSearchSolver):
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
      maxls, c1, c2, max_stepsize: the line search's options, as in :class:`LBFGS`.
      maxiter, tol: stop when ‖∇f(x)‖ ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.quasi_newton import BFGS
      >>> rosenbrock = lambda x, a: (a - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2
      >>> x, state = BFGS(fun=rosenbrock).run(jnp.array([-1.2, 1.0]), 1.0)  # x = (1, 1)
    """

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
        value, grad = self._start(init_params, args, kwargs)
        dtype = tree.dtype(init_params)
        n = tree.size(init_params)
        return BfgsState(
            iter_num=jnp.asarray(0),
            error=_error(grad, dtype),
            converged=jnp.asarray(False),
            value=jnp.asarray(value),
            grad=grad,
            stepsize=jnp.asarray(1.0, dtype),
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
        stepsize = jnp.where(fresh, _first_stepsize(state.grad, dtype), jnp.asarray(1.0, dtype))
        eta, value, grad = self._search(
            params, state.value, state.grad, direction, stepsize, args, kwargs
        )
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
        gamma = _safe_divide(sy, jnp.vdot(y, y), keep, 1.0)
        H = jnp.where(fresh, gamma * eye, H)
        rho = _safe_divide(1.0, sy, keep)
        Hy = H @ y
        updated = (
            H
            - rho * (jnp.outer(s, Hy) + jnp.outer(Hy, s))
            + (rho * rho * jnp.vdot(y, Hy) + rho) * jnp.outer(s, s)
        )
        H = jnp.where(keep, updated, jnp.where(fresh, eye, H))
        state = BfgsState(
            iter_num=state.iter_num + 1,
            error=_error(grad, state.error.dtype),
            converged=state.converged,
            value=value,
            grad=grad,
            stepsize=eta,
            inv_hessian=H,
            identity=jnp.logical_not(keep) & (fresh | reset),
        )
        return OptStep(tree.axpy(eta, direction, params), state)


# ---------------------------------------------------------------------------------------------
# Nonlinear conjugate gradient

_CG_METHODS = ("polak-ribiere", "fletcher-reeves", "hestenes-stiefel")


class NonlinearCGState(NamedTuple):
    """iter_num, error = ‖∇f(x)‖, converged, f(x), ∇f(x), the first trial step of the next
    line search, the search direction d at x and its slope ⟨∇f(x), d⟩."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    grad: PyTree
    stepsize: jax.Array
    direction: PyTree
    slope: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class NonlinearCG(_LineSearchSolver):
    """min_x fun(x, *args) by nonlinear conjugate gradient: x ← x + η d, d ← −∇f(x₊) + β d.

    ``run(init_params, *args, **kwargs)``; the solution is differentiated through the
    stationarity condition ∇₁f(x, *args) = 0 (:func:`implicitdiff.optimality.stationary`).

    With g = ∇f(x), g₊ = ∇f(x₊) and y = g₊ − g, β is (Nocedal & Wright, 2006, §5.2)

    - ``"polak-ribiere"`` (default, PR+): β = max(0, g₊ᵀy / gᵀg);
    - ``"fletcher-reeves"``: β = g₊ᵀg₊ / gᵀg;
    - ``"hestenes-stiefel"`` (HS+): β = max(0, g₊ᵀy / dᵀy).

    The method restarts (β = 0, d = −g₊) every n iterations (n the number of entries of x), when
    successive gradients are far from orthogonal (|g₊ᵀg| ≥ 0.1 ‖g₊‖², eq. 5.52), and whenever d
    is not a descent direction or the line search made no progress. η comes from a line search,
    the zoom search (strong Wolfe with c2 = 0.1: c2 < 1/2 makes Fletcher–Reeves directions
    descend; Armijo backtracking alone does not keep conjugate directions descending); its first
    trial is η₋ ⟨g, d⟩ / ⟨g₊, d₊⟩ (eq. 3.60), min(1, 1/‖g‖) at the first iteration.

    Unrolling (``implicit_diff=False``) differentiates β and takes the step size's derivative
    to be that of the exact line minimizer, dη = −dφ'(η) / φ''(η) with φ(t) = f(x + t d) and
    φ'' its secant (φ'(η) − φ'(0)) / η, as a zero-valued correction: conjugate gradient relies
    on η fitting the current point, and with η held constant the derivatives of the iterates
    diverge (on Rosenbrock's valley, for instance). A step below the rounding of x is not taken
    (see :class:`LBFGS`). Unrolled derivatives converge with the iterates, lagging them: ask
    for a tighter ``tol`` than for the solution alone.

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar; smooth.
      method: ``"polak-ribiere"`` (default), ``"fletcher-reeves"`` or ``"hestenes-stiefel"``.
      linesearch: ``"zoom"`` (default), ``"hager-zhang"``, ``"backtracking"`` (Armijo alone:
        directions may then fail to descend, and the method restarts more often) or a
        line-search object (:class:`implicitdiff.solvers.ZoomLineSearch`, ...).
      maxls, c1, c2, max_stepsize: the line search's options, as in :class:`LBFGS`, but
        c2 = 0.1 by default.
      maxiter, tol: stop when ‖∇f(x)‖ ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.quasi_newton import NonlinearCG
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = NonlinearCG(fun=f, method="fletcher-reeves").run(jnp.zeros(3), 1.0)
    """

    method: str = "polak-ribiere"
    c2: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.method not in _CG_METHODS:
            raise ValueError(
                f"NonlinearCG: method must be one of {_CG_METHODS}, got {self.method!r}"
            )

    def init_state(self, init_params, /, *args, **kwargs) -> NonlinearCGState:
        """The state at ``init_params``: f and ∇f evaluated there.

        Checks first that ``fun`` takes ``(params, *args)``.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``NonlinearCGState``: iter_num 0, error ‖∇f(x₀)‖, f(x₀), ∇f(x₀), the direction
            d = −∇f(x₀), its slope −‖∇f(x₀)‖², and the first trial step min(1, 1/‖∇f(x₀)‖).
        """
        value, grad = self._start(init_params, args, kwargs)
        dtype = tree.dtype(init_params)
        return NonlinearCGState(
            iter_num=jnp.asarray(0),
            error=_error(grad, dtype),
            converged=jnp.asarray(False),
            value=jnp.asarray(value),
            grad=grad,
            stepsize=_first_stepsize(grad, dtype),
            direction=tree.neg(grad),
            slope=jax.lax.stop_gradient(-tree.vdot(grad, grad)).astype(dtype),
        )

    def update(self, params, state: NonlinearCGState, /, *args, **kwargs) -> OptStep:
        """One iteration x⁺ = x + ηd, then the next direction.

        η comes from the line search along the state's direction d; the next direction is
        d⁺ = −∇f(x⁺) + βd (with the ``method``'s β, or a restart d⁺ = −∇f(x⁺), as the class says)
        and the first trial step of the next search.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (f, ∇f and the error ‖∇f‖ at x⁺, d⁺, its
            slope, the next first trial).
        """
        dtype = state.slope.dtype
        g, d = state.grad, state.direction
        eta, value, new_g = self._search(params, state.value, g, d, state.stepsize, args, kwargs)
        eta = eta.astype(dtype)
        cut_g, cut_d = jax.lax.stop_gradient((g, d))
        step = eta
        if not self.implicit_diff:
            # Unrolling: η moves as the exact line minimizer would, dη = −dφ'(η) / φ''(η), φ''
            # the secant (φ'(η) − φ'(0)) / η; its value stays η (see the class docstring).
            slope = tree.vdot(new_g, d)
            curvature = tree.vdot(tree.sub(jax.lax.stop_gradient(new_g), cut_g), cut_d)
            curvature = curvature / jnp.where(eta > 0, eta, 1.0)
            ok = (eta > 0) & (curvature > _safe_min(dtype))
            step = eta - _safe_divide(slope - jax.lax.stop_gradient(slope), curvature, ok)
            value, new_g = self._evaluate(tree.axpy(step, d, params), *args, **kwargs)
        cut_new_g = jax.lax.stop_gradient(new_g)
        gg, new_gg = tree.vdot(cut_g, cut_g), tree.vdot(cut_new_g, cut_new_g)
        y = tree.sub(new_g, g)
        safe = _safe_min(dtype)
        if self.method == "fletcher-reeves":
            beta = _safe_divide(tree.vdot(new_g, new_g), tree.vdot(g, g), gg > safe)
        elif self.method == "polak-ribiere":
            beta = _safe_divide(tree.vdot(new_g, y), tree.vdot(g, g), gg > safe)
        else:
            dy = tree.vdot(d, y)
            cut_dy = jax.lax.stop_gradient(dy)
            beta = _safe_divide(tree.vdot(new_g, y), dy, jnp.abs(cut_dy) > safe)
        if self.method != "fletcher-reeves":
            beta = jnp.maximum(beta, 0.0)
        beta = beta.astype(dtype)
        new_d = tree.axpy(beta, d, tree.neg(new_g))
        cut_beta = jax.lax.stop_gradient(beta)
        slope = tree.vdot(cut_new_g, tree.axpy(cut_beta, cut_d, tree.neg(cut_new_g)))
        restart = (
            ((state.iter_num + 1) % tree.size(params) == 0)
            | (jnp.abs(tree.vdot(cut_new_g, cut_g)) >= 0.1 * new_gg)
            | jnp.logical_not((slope < 0) & jnp.isfinite(slope))
            | (eta <= 0)
        )
        new_d = tree.where(restart, tree.neg(new_g), new_d)
        slope = jnp.where(restart, -new_gg, slope).astype(dtype)
        # The next first trial: the last step's change in f, to first order (N&W eq. 3.60).
        guess = _safe_divide(eta * state.slope, slope, slope < 0, 1.0)
        ok = (eta > 0) & jnp.isfinite(guess) & (guess > 0)
        stepsize = jnp.where(ok, guess, _first_stepsize(new_g, dtype))
        state = NonlinearCGState(
            iter_num=state.iter_num + 1,
            error=_error(new_g, state.error.dtype),
            converged=state.converged,
            value=value,
            grad=new_g,
            stepsize=jax.lax.stop_gradient(jnp.minimum(stepsize, self.max_stepsize)).astype(dtype),
            direction=new_d,
            slope=jax.lax.stop_gradient(slope),
        )
        return OptStep(tree.axpy(step, d, params), state)
