"""SGD with the stochastic Polyak step size (SPS_max, SPS+)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _summary, tree
from implicitdiff.solvers._base import OptStep
from implicitdiff.solvers._stochastic import AdaptiveSGD

__all__ = ["PolyakSGD", "PolyakSGDState"]

_VARIANTS = ("SPS_max", "SPS+")


class PolyakSGDState(NamedTuple):
    """The state of :class:`PolyakSGD`: the measures at the iterate before the last step.

    Attributes:
      iter_num: the number of steps taken.
      error: ‖∇f‖ at the iterate before the last step (inf before the first).
      value: f at the iterate before the last step (inf before the first).
      aux: ``fun``'s auxiliary output at that iterate (None without ``has_aux``).
      stepsize: the last step size γ (1 before the first step).
      velocity: the velocity v of the momentum (None without momentum).
      num_fun_eval: the number of evaluations of f.
      num_grad_eval: the number of evaluations of ∇f.
      converged: whether the run ended with ‖∇f‖ ≤ tol at a finite iterate (set when ``run``
        ends; False until then).
      status: a :class:`~implicitdiff.solvers.Status` code, set when ``run`` ends (1 until
        then).
    """

    iter_num: jax.Array
    error: jax.Array
    value: jax.Array
    aux: Any
    stepsize: jax.Array
    velocity: Any
    num_fun_eval: jax.Array = 0
    num_grad_eval: jax.Array = 0
    converged: jax.Array = False
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class PolyakSGD(AdaptiveSGD):
    """min_x fun(x, *args) by SGD with the Polyak step: v ← μ v − γ ∇f(x), x ← x + v.

    The step γ is computed at each ``update`` from f and ∇f on the current batch, with f* the
    lower bound ``fun_min``:

    - ``"SPS_max"`` (default): γ = min((f(x) − f*) / (‖∇f(x)‖² + δ), γ_max);
    - ``"SPS+"``: γ = max(0, (f(x) − f*) / ‖∇f(x)‖²), and γ = 0 where ∇f(x) = 0.

    Without momentum (μ = 0) the step is x ← x − γ∇f(x). ``run(init_params, *args)`` repeats
    ``update`` on the same arguments until ‖∇f‖ ≤ tol (‖∇f‖ at the iterate before the last
    step, as JAXopt) or ``maxiter`` steps; ``run_iterator(init_params, iterator, *args)`` makes
    one step per batch. The solution of ``run`` is differentiated through ∇₁f(x*, *args) = 0.

    With f* below the minimum, γ tends to γ_max near a minimizer (SPS_max): the run is then
    gradient descent with step γ_max, which converges if γ_max < 2/L (L the Lipschitz constant
    of ∇f); SPS+ needs f* to be the minimum value (the interpolation setting).

    Attributes:
      fun: the objective, f(x, *args, **kwargs) a scalar (``(f, aux)`` with ``has_aux``,
        ``(f, ∇f)`` with ``value_and_grad``, ``((f, aux), ∇f)`` with both).
      value_and_grad: whether ``fun`` returns its gradient too (default False).
      has_aux: whether ``fun`` returns auxiliary output, kept in ``state.aux``.
      fun_min: f*, a lower bound of f (default 0, right for over-parametrized models).
      variant: ``"SPS_max"`` (default) or ``"SPS+"``.
      max_stepsize: γ_max, SPS_max's cap on γ (default 1).
      delta: δ ≥ 0 added to ‖∇f‖² in SPS_max (default 0).
      momentum: μ ∈ [0, 1) (default 0).
      pre_update: None, or ``(x, state) = pre_update(x, state, *args, **kwargs)`` run at the
        start of each ``update``.
      maxiter, tol: 500 steps, ‖∇f‖ ≤ 1e-3 (JAXopt's defaults).
      implicit_diff, solve, unroll_checkpoint, jit, on_failure, backward_on_failure: see
        :class:`~implicitdiff.solvers.IterativeSolver` (``implicit_diff`` is True here; it is
        False in JAXopt).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import PolyakSGD
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = PolyakSGD(f, max_stepsize=0.3, tol=1e-8).run(jnp.zeros(3), 0.5)
    """

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    value_and_grad: bool = dataclasses.field(default=False, kw_only=False)
    has_aux: bool = dataclasses.field(default=False, kw_only=False)
    fun_min: float = dataclasses.field(default=0.0, kw_only=False)
    variant: str = dataclasses.field(default="SPS_max", kw_only=False)
    max_stepsize: float = dataclasses.field(default=1.0, kw_only=False)
    delta: float = dataclasses.field(default=0.0, kw_only=False)
    momentum: float = dataclasses.field(default=0.0, kw_only=False)
    pre_update: Callable | None = dataclasses.field(default=None, kw_only=False)

    def __post_init__(self):
        super().__post_init__()
        self._check_objective_options()
        if self.variant not in _VARIANTS:
            raise ValueError(f"PolyakSGD: variant must be one of {_VARIANTS}, got {self.variant!r}")
        self._check_step_options()
        if not self.delta >= 0:
            raise ValueError(f"PolyakSGD: delta must be ≥ 0, got {self.delta!r}")

    def init_state(self, init_params, /, *args, **kwargs) -> PolyakSGDState:
        """The state at ``init_params``: value and error inf, γ = 1, v = 0 (with momentum).

        Checks first that ``fun`` takes ``(params, *args)``; evaluates ``fun`` once there (for
        the structure of its auxiliary output).

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A :class:`PolyakSGDState`.
        """
        fields = self._initial_fields(init_params, args, kwargs)
        return PolyakSGDState(
            **fields,
            stepsize=jnp.asarray(1.0, fields["error"].dtype),
            velocity=self._initial_velocity(init_params),
            num_fun_eval=jnp.asarray(1, jnp.int32),
            num_grad_eval=jnp.asarray(0, jnp.int32),
        )

    def _polyak_step(self, value, grad_sqnorm):
        """γ of the variant (see the class docstring), from f(x) and ‖∇f(x)‖²."""
        gap = value - self.fun_min
        if self.variant == "SPS_max":
            denominator = grad_sqnorm + self.delta
            # 0/0 (f = f* at a stationary point): no step is needed; take γ_max, not NaN.
            safe = jnp.where(denominator > 0, denominator, 1.0)
            ratio = jnp.where(denominator > 0, gap / safe, jnp.inf)
            return jnp.minimum(ratio, self.max_stepsize)
        positive = grad_sqnorm > 0
        ratio = gap / jnp.where(positive, grad_sqnorm, 1.0)
        return jnp.where(positive & jnp.isfinite(ratio), jnp.maximum(ratio, 0.0), 0.0)

    def update(self, params, state: PolyakSGDState, /, *args, **kwargs) -> OptStep:
        """One step x⁺ = x + v⁺, v⁺ = μ v − γ ∇f(x) (x⁺ = x − γ∇f(x) without momentum).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x (the batch).
          **kwargs: its keyword arguments (``data=`` under ``run_iterator``).

        Returns:
          ``OptStep(x⁺, state)``, the state holding f(x), ‖∇f(x)‖, γ and aux at x.
        """
        params, state = self._pre_update(params, state, args, kwargs)
        value, aux, grad = self._value_aux_grad(params, *args, **kwargs)
        grad_sqnorm = tree.vdot(grad, grad).real
        dtype = state.stepsize.dtype
        stepsize = self._polyak_step(jnp.asarray(value, dtype), grad_sqnorm.astype(dtype))
        if self.momentum == 0:
            velocity = None
            new_params = tree.axpy(-stepsize, grad, params)
        else:
            velocity = tree.sub(
                tree.scale(self.momentum, state.velocity), tree.scale(stepsize, grad)
            )
            new_params = tree.add(params, velocity)
        new_state = PolyakSGDState(
            iter_num=state.iter_num + 1,
            error=jnp.sqrt(grad_sqnorm).astype(state.error.dtype),
            value=jnp.asarray(value).astype(state.value.dtype),
            aux=aux,
            stepsize=stepsize.astype(dtype),
            velocity=velocity,
            num_fun_eval=state.num_fun_eval + 1,
            num_grad_eval=state.num_grad_eval + 1,
            converged=state.converged,
            status=state.status,
        )
        return OptStep(new_params, new_state)
