"""Gradient descent, with a fixed step or Armijo backtracking."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _linesearch, optimality, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep

__all__ = ["GradientDescent", "GradientDescentState"]


class GradientDescentState(NamedTuple):
    """iter_num, error = ‖∇f(x)‖ at the current x, converged, f(x), ∇f(x), the last step size."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    grad: PyTree
    stepsize: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class GradientDescent(IterativeSolver):
    """min_x fun(x, *args) by gradient descent: x ← x − η∇f(x, *args).

    ``run(init_params, *args, **kwargs)``; the solution is differentiated through the
    stationarity condition ∇₁f(x, *args) = 0 (:func:`implicitdiff.optimality.stationary`).

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar.
      stepsize: η > 0 for a fixed step; 0 (the default) for backtracking until
        f(x − η∇f) ≤ f(x) − η‖∇f‖²/2 (on an L-smooth f, accepted steps lie in [1/(2L), 1/L]),
        each search starting from ``increase_factor`` × the last accepted step.
      increase_factor: see ``stepsize``.
      maxiter, tol: stop when ‖∇f(x)‖ ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import GradientDescent
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = GradientDescent(fun=f).run(jnp.zeros(3), 0.5)
    """

    _complex_params = True

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    stepsize: float = 0.0
    increase_factor: float = 1.5
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"GradientDescent: fun must be callable, got {self.fun!r}")
        if not self.stepsize >= 0:
            raise ValueError(f"GradientDescent: stepsize must be ≥ 0, got {self.stepsize!r}")
        object.__setattr__(self, "_fun_value_and_grad", jax.value_and_grad(self.fun))

    def _value_and_grad(self, params, /, *args, **kwargs):
        """(f, ∇f) at params; for complex params ∇f is conj of ``jax.grad`` (the gradient over
        the real pairs, see :mod:`implicitdiff.solvers._dtypes`). f stays in the dtype ``fun``
        computes in: the line search casts it, knowing then how finely f is rounded."""
        value, grad = self._fun_value_and_grad(params, *args, **kwargs)
        return value, tree.map(jnp.conj, grad)

    def _searches_its_step(self) -> bool:
        """Backtracking (``stepsize`` 0) searches; a fixed η does not."""
        return self.stepsize <= 0

    def init_state(self, init_params, /, *args, **kwargs) -> GradientDescentState:
        """The state at ``init_params``: f and ∇f evaluated there.

        Checks first that ``fun`` takes ``(params, *args)``.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``GradientDescentState``: iter_num 0, error ‖∇f(x₀)‖, f(x₀), ∇f(x₀) and the step size
            (``stepsize``, or 1 with backtracking).
        """
        _checks.check_signature(
            self.fun, type(self).__name__, "fun", (init_params, *args), kwargs, "fun(params, *args)"
        )
        value, grad = self._value_and_grad(init_params, *args, **kwargs)
        dtype = _dtypes.real_dtype(init_params)
        return GradientDescentState(
            iter_num=jnp.asarray(0),
            error=tree.norm(grad).astype(dtype),
            converged=jnp.asarray(False),
            value=value,
            grad=grad,
            stepsize=jnp.asarray(self.stepsize if self.stepsize > 0 else 1.0, dtype),
        )

    def update(self, params, state: GradientDescentState, /, *args, **kwargs) -> OptStep:
        """One step x⁺ = x − η∇f(x, *args).

        η is ``stepsize``; with backtracking, the first of increase_factor · η₋, then halvings of it
        (at most 31 trials), with f(x − η∇f) ≤ f(x) − η‖∇f‖²/2, η₋ the state's last step (kept as is
        where ∇f = 0).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (f, ∇f and the error ‖∇f‖ at x⁺, the step η).
        """
        direction = tree.neg(state.grad)
        eta = state.stepsize
        if self.stepsize == 0:
            # At an exact stationary point every step is accepted: keep η (growing it there
            # would overflow it, and the derivative of a run continued past convergence).
            slope = -_linesearch.inner(state.grad, state.grad)
            trial = jnp.where(jax.lax.stop_gradient(slope) < 0, eta * self.increase_factor, eta)
            eta = _linesearch.backtracking(
                lambda x: self._value_and_grad(x, *args, **kwargs),
                params,
                state.value,
                state.grad,
                direction,
                trial,
                value_fun=lambda x: self.fun(x, *args, **kwargs),
                condition="armijo",
                c1=0.5,  # f(x − ηg) ≤ f(x) − η‖g‖²/2: η ≤ 1/L on a quadratic, not ≈ 2/L
                decrease_factor=0.5,
                maxiter=31,
                final_grad=False,
            ).stepsize
        params = tree.axpy(eta, direction, params)
        value, grad = self._value_and_grad(params, *args, **kwargs)
        state = GradientDescentState(
            iter_num=state.iter_num + 1,
            error=tree.norm(grad).astype(state.error.dtype),
            converged=state.converged,
            value=value,
            grad=grad,
            stepsize=eta.astype(state.stepsize.dtype),
        )
        return OptStep(params, state)

    def optimality(self):
        """The condition that the solution is differentiated through: ∇₁fun(x, *args) = 0.

        Returns:
          ``("root", optimality.stationary(fun))``.
        """
        return "root", optimality.stationary(self.fun)
