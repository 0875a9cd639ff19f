"""SGD with a stochastic Armijo line search (Vaswani et al., 2019)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _loop, _summary, tree
from implicitdiff.solvers._base import OptStep
from implicitdiff.solvers._stochastic import AdaptiveSGD

__all__ = ["ArmijoSGD", "ArmijoState"]

_RESETS = ("increase", "goldstein", "conservative")


class ArmijoState(NamedTuple):
    """The state of :class:`ArmijoSGD` after a step from x.

    Attributes:
      iter_num: the number of steps taken.
      error: ‖∇f(x)‖ at the iterate x before the last step (inf before the first).
      value: f at the accepted trial point x − η∇f(x) (inf before the first step).
      aux: ``fun``'s auxiliary output at x (None without ``has_aux``).
      stepsize: the accepted step η (``max_stepsize`` before the first step).
      velocity: the last step x⁺ − x, the momentum's memory (None without momentum).
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
    converged: jax.Array = False
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ArmijoSGD(AdaptiveSGD):
    """min_x fun(x, *args) by SGD with an Armijo line search on each batch.

    Each ``update`` starts from η₀ (the last step η₋, times ``increase_factor`` and capped at
    ``max_stepsize`` with ``reset_option="increase"``; η₋ itself with ``"conservative"`` and
    ``"goldstein"``) and, with c = 1 − ``aggressiveness``, g = ∇f(x) and ε the machine epsilon
    of f, makes at most ``maxls`` trials of:

    - the Armijo test f(x − ηg) ≤ f(x) − c η‖g‖² + ε max(1, |f(x)|); if it fails,
      η ← min(``decrease_factor`` · η, ``max_stepsize``);
    - with ``"goldstein"``, then the curvature test f(x − ηg) ≥ f(x) − (1 − c) η‖g‖²; if it
      fails, η ← min(``increase_factor`` · η, ``max_stepsize``);

    (where η‖g‖² ≤ 8ε max(1, |f(x)|), a difference of values is rounding: the tests then take
    their gradient forms, exact for a quadratic f, ⟨∇f(x − ηg), g⟩ ≥ (2c − 1)‖g‖² and
    ⟨∇f(x − ηg), g⟩ ≤ (1 − 2c)‖g‖², at the price of a gradient per trial there),

    stopping at the first trial where they pass (after ``maxls`` failed trials, the last η is
    kept). Then x⁺ = x − ηg, plus μ(x − x₋) with momentum μ (the heavy ball on the previous
    step). The step η is a constant of differentiation (an unrolled run differentiates x − ηg
    with η fixed).

    ``run(init_params, *args)`` repeats ``update`` on the same arguments until ‖∇f‖ ≤ tol
    (‖∇f‖ at the iterate before the last step, as JAXopt) or ``maxiter`` steps;
    ``run_iterator(init_params, iterator, *args)`` makes one step per batch. The solution of
    ``run`` is differentiated through ∇₁f(x*, *args) = 0.

    Attributes:
      fun: the objective, f(x, *args, **kwargs) a scalar (``(f, aux)`` with ``has_aux``,
        ``(f, ∇f)`` with ``value_and_grad``, ``((f, aux), ∇f)`` with both).
      value_and_grad: whether ``fun`` returns its gradient too (default False).
      has_aux: whether ``fun`` returns auxiliary output, kept in ``state.aux``.
      aggressiveness: 1 − c, in (0, 1) (default 0.9): larger accepts larger steps.
      decrease_factor: the shrinking of η, in (0, 1) (default 0.8).
      increase_factor: the growth of η, > 1 (default 1.5).
      reset_option: ``"increase"`` (default), ``"conservative"`` or ``"goldstein"``.
      momentum: μ ∈ [0, 1) (default 0).
      max_stepsize: the cap on η and the first step (default 1).
      pre_update: None, or ``(x, state) = pre_update(x, state, *args, **kwargs)`` run at the
        start of each ``update``.
      maxls: the most trials per line search (15; keyword-only).
      maxiter, tol: 500 steps, ‖∇f‖ ≤ 1e-3 (JAXopt's defaults).
      implicit_diff, solve, unroll_checkpoint, jit, on_failure, backward_on_failure: see
        :class:`~implicitdiff.solvers.IterativeSolver` (``implicit_diff`` is True here; it is
        False in JAXopt).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import ArmijoSGD
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = ArmijoSGD(f, tol=1e-8).run(jnp.zeros(3), 0.5)
    """

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    value_and_grad: bool = dataclasses.field(default=False, kw_only=False)
    has_aux: bool = dataclasses.field(default=False, kw_only=False)
    aggressiveness: float = dataclasses.field(default=0.9, kw_only=False)
    decrease_factor: float = dataclasses.field(default=0.8, kw_only=False)
    increase_factor: float = dataclasses.field(default=1.5, kw_only=False)
    reset_option: str = dataclasses.field(default="increase", kw_only=False)
    momentum: float = dataclasses.field(default=0.0, kw_only=False)
    max_stepsize: float = dataclasses.field(default=1.0, kw_only=False)
    pre_update: Callable | None = dataclasses.field(default=None, kw_only=False)
    maxls: int = 15

    def __post_init__(self):
        super().__post_init__()
        self._check_objective_options()
        if self.reset_option not in _RESETS:
            raise ValueError(
                f"ArmijoSGD: reset_option must be one of {_RESETS}, got {self.reset_option!r}"
            )
        if not 0 < self.aggressiveness < 1:
            raise ValueError(
                f"ArmijoSGD: aggressiveness must be in (0, 1), got {self.aggressiveness!r}"
            )
        if not 0 < self.decrease_factor < 1:
            raise ValueError(
                f"ArmijoSGD: decrease_factor must be in (0, 1), got {self.decrease_factor!r}"
            )
        if not self.increase_factor >= 1:
            raise ValueError(
                f"ArmijoSGD: increase_factor must be ≥ 1, got {self.increase_factor!r}"
            )
        self._check_step_options()
        _checks.check_positive_int(self.maxls, "maxls", "ArmijoSGD")

    def init_state(self, init_params, /, *args, **kwargs) -> ArmijoState:
        """The state at ``init_params``: error and value inf, η = ``max_stepsize``, v = 0.

        Checks first that ``fun`` takes ``(params, *args)``; evaluates ``fun`` once there (for
        the structure of its auxiliary output).

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          An :class:`ArmijoState`.
        """
        fields = self._initial_fields(init_params, args, kwargs)
        return ArmijoState(
            **fields,
            stepsize=jnp.asarray(self.max_stepsize, fields["error"].dtype),
            velocity=self._initial_velocity(init_params),
        )

    def _first_trial(self, stepsize):
        if self.reset_option == "increase":
            return jnp.minimum(stepsize * self.increase_factor, self.max_stepsize)
        return stepsize

    def _line_search(self, params, value, grad, stepsize, args, kwargs):
        """(η, f(x − ηg)) by the trials of the class docstring, on values cut from the graph."""
        params, value, grad, args, kwargs = tree.stop_gradient((params, value, grad, args, kwargs))
        grad_sqnorm = tree.vdot(grad, grad).real
        c = 1.0 - self.aggressiveness
        # The rounding of f: ε max(1, |f(x)|) (JAXopt: ε alone, which stalls where |f| > 1).
        slack = jnp.finfo(value.dtype).eps * jnp.maximum(1.0, jnp.abs(value))

        def trial(eta):
            return self._value(tree.axpy(-eta, grad, params), *args, **kwargs)

        def slope_ratio(eta):  # ⟨∇f(x − ηg), g⟩ / ‖g‖² = −φ'(η) / ‖g‖², φ(η) = f(x − ηg)
            new_grad = self._gradient(tree.axpy(-eta, grad, params), *args, **kwargs)
            return tree.vdot_real(new_grad, grad) / grad_sqnorm

        def test(eta, by_value, bound):
            # Where the decrease η‖g‖² is within the rounding of f, f's difference is noise:
            # the test's gradient form instead, φ'(η) against a multiple of φ'(0) (exact for a
            # quadratic f; ProximalGradient's and GradientDescent's searches do the same).
            resolved = eta * grad_sqnorm > 8 * slack
            return _loop.cond(resolved, lambda _: by_value, lambda e: bound(slope_ratio(e)), eta)

        def scaled(eta, factor):
            eta = jnp.minimum(eta * factor, self.max_stepsize).astype(stepsize.dtype)
            return eta, jnp.asarray(trial(eta)).astype(value.dtype)

        def body(carry):
            count, eta, next_value, _ = carry
            # f(x − ηg) ≤ f(x) − cη‖g‖², or ⟨∇f(x − ηg), g⟩ ≥ (2c − 1)‖g‖²
            too_long = test(
                eta,
                eta * c * grad_sqnorm > value - next_value + slack,
                lambda ratio: ratio < 2 * c - 1,
            )
            eta, next_value = _loop.cond(
                too_long, scaled, lambda e, _: (e, next_value), eta, self.decrease_factor
            )
            failed = too_long
            if self.reset_option == "goldstein":
                # f(x − ηg) ≥ f(x) − (1 − c)η‖g‖², or ⟨∇f(x − ηg), g⟩ ≤ (1 − 2c)‖g‖²
                too_short = test(
                    eta,
                    next_value < value - eta * (1.0 - c) * grad_sqnorm,
                    lambda ratio: ratio > 1 - 2 * c,
                )
                eta, next_value = _loop.cond(
                    too_short, scaled, lambda e, _: (e, next_value), eta, self.increase_factor
                )
                failed = failed | too_short
            return count + 1, eta, next_value, failed

        start = (
            jnp.asarray(0),
            stepsize,
            jnp.asarray(trial(stepsize)).astype(value.dtype),
            jnp.asarray(True),
        )
        _, eta, next_value, _ = _loop.while_loop(
            lambda carry: carry[3] & (carry[0] < self.maxls), body, start
        )
        return eta, next_value

    def update(self, params, state: ArmijoState, /, *args, **kwargs) -> OptStep:
        """One step: η by the line search from the state's last step, x⁺ = x − η∇f(x) (+ μ v).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x (the batch).
          **kwargs: its keyword arguments (``data=`` under ``run_iterator``).

        Returns:
          ``OptStep(x⁺, state)``, the state holding ‖∇f(x)‖, aux at x, η and f(x − η∇f(x)).
        """
        params, state = self._pre_update(params, state, args, kwargs)
        value, aux, grad = self._value_aux_grad(params, *args, **kwargs)
        value = jnp.asarray(value)
        eta, next_value = self._line_search(
            params, value, grad, self._first_trial(state.stepsize), args, kwargs
        )
        new_params = tree.axpy(-eta, grad, params)
        velocity = None
        if self.momentum != 0:
            new_params = tree.add(new_params, tree.scale(self.momentum, state.velocity))
            velocity = tree.sub(new_params, params)
        new_state = ArmijoState(
            iter_num=state.iter_num + 1,
            error=tree.norm(grad).astype(state.error.dtype),
            value=next_value.astype(state.value.dtype),
            aux=aux,
            stepsize=eta.astype(state.stepsize.dtype),
            velocity=velocity,
            converged=state.converged,
            status=state.status,
        )
        return OptStep(new_params, new_state)
