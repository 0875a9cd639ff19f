"""Nonlinear conjugate gradient: NonlinearCG (Polak-Ribière, Fletcher-Reeves or
Hestenes-Stiefel).

It minimizes a smooth ``fun(params, *args, **kwargs)`` along conjugate directions with a line
search (the shared base :class:`implicitdiff.solvers._line_search_solver.LineSearchSolver`), and
is differentiated through the stationarity condition ∇₁f(x, *args) = 0
(:func:`implicitdiff.optimality.stationary`). With ``implicit_diff=False`` the iterations are
differentiated step by step, with a constant step size and every division guarded (see the
class).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _linesearch, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import OptStep
from implicitdiff.solvers._line_search_solver import (
    LineSearchSolver,
    first_stepsize,
    safe_divide,
    safe_min,
)

__all__ = ["NonlinearCG"]


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
    aux: Any = None  # fun's auxiliary output at x with has_aux=True
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class NonlinearCG(LineSearchSolver):
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
      value_and_grad, has_aux: as in :class:`LBFGS` (aux in ``state.aux``).
      linesearch_init, maxls, c1, c2, increase_factor, min_stepsize, max_stepsize: the line
        search's options, as in :class:`LBFGS`, but c2 = 0.1 and increase_factor = 1.2 (as
        JAXopt) by default.
      maxiter, tol: stop when ‖∇f(x)‖ ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.nonlinear_cg import NonlinearCG
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = NonlinearCG(fun=f, method="fletcher-reeves").run(jnp.zeros(3), 1.0)
    """

    method: str = "polak-ribiere"
    c2: float = 0.1
    increase_factor: float = 1.2

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
        value, grad, aux = self._start(init_params, args, kwargs)
        dtype = _dtypes.real_dtype(init_params)
        return NonlinearCGState(
            **self._initial_fields(value, grad, aux, first_stepsize(grad, dtype), dtype),
            direction=tree.neg(grad),
            slope=jax.lax.stop_gradient(-_linesearch.inner(grad, grad)).astype(dtype),
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
        eta, value, new_g, aux = self._step(params, state, d, state.stepsize, args, kwargs)
        eta = eta.astype(dtype)
        cut_g, cut_d = jax.lax.stop_gradient((g, d))
        step = eta
        if not self.implicit_diff:
            # Unrolling: η moves as the exact line minimizer would, dη = −dφ'(η) / φ''(η), φ''
            # the secant (φ'(η) − φ'(0)) / η; its value stays η (see the class docstring).
            slope = _linesearch.inner(new_g, d)
            curvature = _linesearch.inner(tree.sub(jax.lax.stop_gradient(new_g), cut_g), cut_d)
            curvature = curvature / jnp.where(eta > 0, eta, 1.0)
            ok = (eta > 0) & (curvature > safe_min(dtype))
            step = eta - safe_divide(slope - jax.lax.stop_gradient(slope), curvature, ok)
            value, new_g, aux = self._evaluate_with_aux(tree.axpy(step, d, params), *args, **kwargs)
        cut_new_g = jax.lax.stop_gradient(new_g)
        gg, new_gg = _linesearch.inner(cut_g, cut_g), _linesearch.inner(cut_new_g, cut_new_g)
        y = tree.sub(new_g, g)
        safe = safe_min(dtype)
        if self.method == "fletcher-reeves":
            beta = safe_divide(_linesearch.inner(new_g, new_g), _linesearch.inner(g, g), gg > safe)
        elif self.method == "polak-ribiere":
            beta = safe_divide(_linesearch.inner(new_g, y), _linesearch.inner(g, g), gg > safe)
        else:
            dy = _linesearch.inner(d, y)
            cut_dy = jax.lax.stop_gradient(dy)
            beta = safe_divide(_linesearch.inner(new_g, y), dy, jnp.abs(cut_dy) > safe)
        if self.method != "fletcher-reeves":
            beta = jnp.maximum(beta, 0.0)
        beta = beta.astype(dtype)
        new_d = tree.axpy(beta, d, tree.neg(new_g))
        cut_beta = jax.lax.stop_gradient(beta)
        slope = _linesearch.inner(cut_new_g, tree.axpy(cut_beta, cut_d, tree.neg(cut_new_g)))
        restart = (
            ((state.iter_num + 1) % tree.size(params) == 0)
            | (jnp.abs(_linesearch.inner(cut_new_g, cut_g)) >= 0.1 * new_gg)
            | jnp.logical_not((slope < 0) & jnp.isfinite(slope))
            | (eta <= 0)
        )
        new_d = tree.where(restart, tree.neg(new_g), new_d)
        slope = jnp.where(restart, -new_gg, slope).astype(dtype)
        # The next first trial: the last step's change in f, to first order (N&W eq. 3.60).
        guess = safe_divide(eta * state.slope, slope, slope < 0, 1.0)
        ok = (eta > 0) & jnp.isfinite(guess) & (guess > 0)
        stepsize = jnp.where(ok, guess, first_stepsize(new_g, dtype))
        if self.linesearch_init is not None:  # JAXopt's strategies start from the last step
            stepsize = eta
        stepsize = jax.lax.stop_gradient(jnp.minimum(stepsize, self._max_stepsize)).astype(dtype)
        state = NonlinearCGState(
            **self._next_fields(state, value, new_g, stepsize, aux),
            direction=new_d,
            slope=jax.lax.stop_gradient(slope),
        )
        return OptStep(tree.axpy(step, d, params), state)
