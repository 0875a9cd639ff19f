"""Gradient descent, with a fixed (or scheduled) step or Armijo backtracking, and optionally
Nesterov's acceleration (JAXopt's GradientDescent is FISTA with no prox)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _linesearch, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes, _fista
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._continuation import gradient_continuation
from implicitdiff.solvers._objective import (
    Objective,
    Stationary,
    check_complex,
    scheduled_stepsize,
)

__all__ = ["GradientDescent", "GradientDescentState"]


class GradientDescentState(NamedTuple):
    """iter_num, error = ‖∇f(y)‖, converged, f(y), ∇f(y), the last step size, the point y of
    the next step (``velocity``: y = x without acceleration), the momentum t, and ``fun``'s
    auxiliary output at y (with ``has_aux``)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    grad: PyTree
    stepsize: jax.Array
    velocity: PyTree = None
    t: jax.Array = 1.0
    aux: Any = None
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class GradientDescent(Stationary, IterativeSolver):
    """min_x fun(x, *args) by gradient descent: x ← x − η∇f(x, *args).

    ``run(init_params, *args, **kwargs)``; the solution is differentiated through the
    stationarity condition ∇₁f(x, *args) = 0 (:func:`implicitdiff.optimality.stationary`).

    With ``acceleration=True`` each step is taken from the extrapolated point y (Nesterov;
    FISTA with no prox, as JAXopt's GradientDescent): x⁺ = y − η∇f(y),
    t⁺ = (1 + √(1 + 4t²))/2, y⁺ = x⁺ + ((t − 1)/t⁺)(x⁺ − x), t₀ = 1, y₀ = x₀; without it y = x.
    The error is ‖∇f(y)‖ at the point of the next step (‖∇f(x)‖ without acceleration).

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar; (f, aux) with ``has_aux``, (f, ∇f)
        with ``value_and_grad`` (((f, aux), ∇f) with both).
      value_and_grad: whether ``fun`` returns its gradient too (False).
      has_aux: whether ``fun`` returns an auxiliary output, kept in ``state.aux`` (False).
      stepsize: η > 0 for a fixed step, or a callable ``stepsize(iter_num)`` > 0; 0 (the
        default) for backtracking until f(y − η∇f) ≤ f(y) − η‖∇f‖²/2 (on an L-smooth f,
        accepted steps lie in [decrease_factor/L, 1/L]), each search starting from
        ``increase_factor`` × the last accepted step. Where η‖∇f‖²/2 is below the rounding
        error of f, the test takes its gradient form (exact for a quadratic), as
        ProximalGradient's does: a tol far below √(ε|f|) is still reached.
      acceleration: Nesterov's extrapolation (False; JAXopt's default is True, see
        docs/migrating_from_jaxopt.md).
      maxls: the most trials of a backtracking search (15, as JAXopt).
      decrease_factor: the factor in (0, 1) of each backtracking step (0.5, as JAXopt).
      increase_factor: see ``stepsize``.
      maxiter, tol: stop when the error ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import GradientDescent
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = GradientDescent(fun=f).run(jnp.zeros(3), 0.5)
    """

    _iterates_in_one_dtype = True  # (mixed float32/float64 params: see DifferentiableRun)

    _complex_params = True

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    value_and_grad: bool = False
    has_aux: bool = False
    stepsize: float | Callable = 0.0
    acceleration: bool = False
    maxls: int = 15
    decrease_factor: float = 0.5
    increase_factor: float = 1.5
    tol: float = 1e-6

    # JAXopt's GradientDescent inherits ProximalGradient's prox field.
    _jaxopt_refused: ClassVar[dict[str, str]] = {
        "prox": "use ProximalGradient(fun, prox) for a composite objective"
    }

    def __post_init__(self):
        super().__post_init__()
        _fista.check_options(self, "GradientDescent")
        object.__setattr__(
            self, "_objective", Objective(self.fun, self.value_and_grad, self.has_aux)
        )

    def _value_and_grad(self, params, /, *args, **kwargs):
        """(f, ∇f, aux) at params; for complex params ∇f is conj of ``jax.grad`` (the gradient
        over the real pairs, see :mod:`implicitdiff.solvers._dtypes`). f stays in the dtype
        ``fun`` computes in: the line search casts it, knowing then how finely f is rounded."""
        value, grad, aux = self._objective.evaluate(params, *args, **kwargs)
        return value, tree.map(jnp.conj, grad), aux

    def _fixed_step(self) -> bool:
        return callable(self.stepsize) or self.stepsize > 0

    def _check_arguments(self, init_params, args, kwargs) -> None:
        super()._check_arguments(init_params, args, kwargs)
        check_complex("GradientDescent", self._objective, init_params)

    def _searches_its_step(self) -> bool:
        """Backtracking (``stepsize`` 0) searches; a fixed η does not."""
        return not self._fixed_step()

    def _continuation(self, /, *args, **kwargs):
        """With backtracking or acceleration, unrolling continues the derivative past the stop
        with x ← x − η∇f(x), η = 1/L̂ (:mod:`implicitdiff.solvers._continuation`)."""
        if not (self._searches_its_step() or self.acceleration):
            return None
        grad = self._objective.grad if self.value_and_grad else None
        return gradient_continuation(self._objective.scalar(), args, kwargs, grad=grad)

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
        value, grad, aux = self._value_and_grad(init_params, *args, **kwargs)
        dtype = _dtypes.real_dtype(init_params)
        first = 1.0 if callable(self.stepsize) or self.stepsize <= 0 else self.stepsize
        return GradientDescentState(
            iter_num=jnp.asarray(0),
            error=tree.norm(grad).astype(dtype),
            converged=jnp.asarray(False),
            value=value,
            grad=grad,
            stepsize=jnp.asarray(first, dtype),
            velocity=init_params,
            t=jnp.asarray(1.0, dtype),
            aux=aux,
        )

    def update(self, params, state: GradientDescentState, /, *args, **kwargs) -> OptStep:
        """One step x⁺ = y − η∇f(y, *args) from the state's point y (y = x without acceleration).

        η is ``stepsize`` (or ``stepsize(iter_num)``); with backtracking, the first of
        increase_factor · η₋, then η₋ · decrease_factorᵏ (at most ``maxls`` + 1 trials), with
        f(y − η∇f) ≤ f(y) − η‖∇f‖²/2 (below f's rounding error, its gradient form
        ⟨∇f(y − η∇f) − ∇f(y), ∇f(y)⟩ ≥ −‖∇f(y)‖²), η₋ the state's last step (kept as is where
        ∇f = 0). With
        acceleration, then t⁺ and y⁺ as the class says; f, ∇f (and aux) are evaluated at y⁺.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (f, ∇f and the error ‖∇f‖ at x⁺, the step η).
        """
        direction = tree.neg(state.grad)
        point = state.velocity  # y (= x without acceleration)
        eta = state.stepsize
        if self._fixed_step():
            eta = scheduled_stepsize(
                self.stepsize, state.iter_num, state.stepsize.dtype, type(self).__name__
            )
        else:
            # At an exact stationary point every step is accepted: keep η (growing it there
            # would overflow it, and the derivative of a run continued past convergence).
            slope = -_linesearch.inner(state.grad, state.grad)
            trial = jnp.where(jax.lax.stop_gradient(slope) < 0, eta * self.increase_factor, eta)
            # f(y − ηg) ≤ f(y) − η‖g‖²/2 (Armijo with c1 = ½: η ≤ 1/L on a quadratic, not
            # ≈ 2/L), proximal gradient's test with the identity prox, which switches to its
            # gradient form where that decrease is below f's rounding error. (On values alone,
            # rounding decided the test there and the iterates stalled at ‖∇f‖ far above tol:
            # 11 of 12 ridge problems at tol 1e-10.)
            cut_args, cut_kwargs = tree.stop_gradient((args, kwargs))
            eta, _ = _linesearch.proximal_backtracking(
                lambda x: self._objective.value(x, *cut_args, **cut_kwargs),
                lambda x: self._value_and_grad(x, *cut_args, **cut_kwargs)[1],
                lambda z, _: z,
                point,
                state.value,
                state.grad,
                trial,
                factor=self.decrease_factor,
                maxiter=self.maxls,
            )
        new_params = tree.axpy(eta, direction, point)
        t = state.t
        if self.acceleration:
            new_t = (0.5 * (1 + jnp.sqrt(1 + 4 * t**2))).astype(t.dtype)
            velocity = tree.axpy((t - 1) / new_t, tree.sub(new_params, params), new_params)
        else:
            new_t, velocity = t, new_params
        value, grad, aux = self._value_and_grad(velocity, *args, **kwargs)
        state = GradientDescentState(
            iter_num=state.iter_num + 1,
            error=tree.norm(grad).astype(state.error.dtype),
            converged=state.converged,
            value=value,
            grad=grad,
            stepsize=eta.astype(state.stepsize.dtype),
            velocity=velocity,
            t=new_t,
            aux=aux,
        )
        return OptStep(new_params, state)
