"""Anderson acceleration around any iterative solver's ``update`` (JAXopt's ``AndersonWrapper``)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _loop, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers._anderson import mixing_weights, slot_products, stack_slot
from implicitdiff.solvers._base import IterativeSolver, OptStep, positional_method
from implicitdiff.solvers._continuation import Continuation

__all__ = ["AndersonWrapper", "AndersonWrapperState"]


class AndersonWrapperState(NamedTuple):
    """iter_num, error (the wrapped solver's), converged; the wrapped solver's state; the ring
    buffers of the last ``history_size`` points xᵢ given to the solver's ``update``
    (``params_history``) and of its steps gᵢ = update(xᵢ) − xᵢ (``residuals_history``); and
    ``residual_gram``, the matrix of ⟨gᵢ, gⱼ⟩."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    solver_state: Any
    params_history: PyTree
    residuals_history: PyTree
    residual_gram: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class AndersonWrapper(IterativeSolver):
    """Anderson acceleration of another iterative solver (JAXopt's ``AndersonWrapper``).

    ``run(init_params, *args, **kwargs)`` with the wrapped solver's arguments. The solver's
    ``update`` is a map x ↦ U(x) whose fixed points are its solutions; with the last m =
    ``history_size`` points xᵢ given to U and their steps gᵢ = U(xᵢ) − xᵢ, every
    ``mixing_frequency``-th iteration (once the m slots are filled) restarts the solver at the
    mixed point

        x̄ = Σᵢ αᵢ (xᵢ + β gᵢ),   α = argmin_{Σα = 1} ‖Σᵢ αᵢ gᵢ‖² + λ Σᵢ αᵢ² ‖gᵢ‖²

    (its state from ``init_state`` at x̄, λ = ``ridge`` relative to each step's size, as
    :class:`AndersonAcceleration`), then takes one step of U from there; the other iterations
    are plain steps of the solver. Stops on the wrapped solver's own error (its
    ``state.error`` ≤ tol) or after ``maxiter`` iterations. The solution is differentiated
    through the wrapped solver's optimality condition.

    The mixing assumes that U is one fixed map: wrap a solver with a fixed step and no
    momentum (``GradientDescent(stepsize=η)``, ``ProximalGradient(stepsize=η,
    acceleration=False)``). Steps of varying length (a line search) bias the mixed point
    (Σαᵢgᵢ ≈ 0 no longer puts it near the fixed point) and the iteration can stall short of
    ``tol``; momentum (FISTA), which the restarts at the mixed points reset, can make it
    diverge. JAXopt's wrapper behaves the same.

    Attributes:
      solver: the iterative solver to accelerate (any of :mod:`implicitdiff.solvers` with
        ``init_state`` and ``update``).
      history_size: m ≥ 2, the number of points mixed (default 5).
      mixing_frequency: mix every this many iterations (≥ 1; None, the default: m).
      beta: β > 0, the weight of the steps in the mixed point (default 1).
      ridge: λ ≥ 0, the relative Tikhonov regularization of the weights (default 1e-5).
      maxiter, tol: None (the defaults): the wrapped solver's.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import AndersonWrapper, GradientDescent
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> inner = GradientDescent(fun=f, stepsize=0.1, tol=1e-8)
      >>> w, state = AndersonWrapper(inner, history_size=3).run(jnp.zeros(3), 0.5)
    """

    _iterates_in_one_dtype = True  # (mixed float32/float64 params: see DifferentiableRun)

    _user_function = None  # the wrapped solver's signature: see _run_signature

    solver: IterativeSolver | None = dataclasses.field(default=None, kw_only=False)
    history_size: int = dataclasses.field(default=5, kw_only=False)
    mixing_frequency: int | None = dataclasses.field(default=None, kw_only=False)
    beta: float = dataclasses.field(default=1.0, kw_only=False)
    ridge: float = dataclasses.field(default=1e-5, kw_only=False)
    maxiter: int | None = None
    tol: float | None = None

    def __post_init__(self):
        if not isinstance(self.solver, IterativeSolver):
            raise TypeError(
                f"AndersonWrapper: solver must be an iterative solver, got {self.solver!r}"
            )
        if self.maxiter is None:
            object.__setattr__(self, "maxiter", self.solver.maxiter)
        if self.tol is None:
            object.__setattr__(self, "tol", self.solver.tol)
        super().__post_init__()
        if not (isinstance(self.history_size, int) and self.history_size >= 2):
            raise ValueError(
                f"AndersonWrapper: history_size must be an int ≥ 2, got {self.history_size!r}"
            )
        frequency = self.history_size if self.mixing_frequency is None else self.mixing_frequency
        _checks.check_positive_int(frequency, "mixing_frequency", "AndersonWrapper")
        if not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise ValueError(f"AndersonWrapper: beta must be > 0, got {self.beta!r}")
        if not (isinstance(self.ridge, (int, float)) and self.ridge >= 0):
            raise ValueError(f"AndersonWrapper: ridge must be ≥ 0, got {self.ridge!r}")
        object.__setattr__(self, "_frequency", frequency)

    # run's arguments are the wrapped solver's.
    def _run_signature(self):
        return self.solver._run_signature()

    def _check_arguments(self, init_params, args, kwargs) -> None:
        self.solver._check_arguments(init_params, args, kwargs)

    def init_state(self, init_params, /, *args, **kwargs) -> AndersonWrapperState:
        """The wrapped solver's state at x₀ and empty histories.

        Args:
          init_params: x₀, a pytree.
          *args: the wrapped solver's positional arguments, as in ``run``.
          **kwargs: the wrapped solver's keyword arguments, as in ``run``.

        Returns:
          An ``AndersonWrapperState`` with iter_num 0 and the solver's error at x₀.
        """
        m = self.history_size
        solver_state = positional_method(self.solver, "init_state")(init_params, *args, **kwargs)
        empty = tree.map(lambda leaf: jnp.zeros((m, *jnp.shape(leaf)), leaf.dtype), init_params)
        return AndersonWrapperState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(solver_state.error),
            converged=jnp.asarray(False),
            solver_state=solver_state,
            params_history=empty,
            residuals_history=empty,
            residual_gram=jnp.zeros((m, m), tree.dtype(init_params)),
        )

    def update(self, params, state: AndersonWrapperState, /, *args, **kwargs) -> OptStep:
        """One iteration: the mixed point x̄ (or x itself), then one step of the wrapped solver
        from it, recorded in the histories.

        Args:
          params: the current iterate x.
          state: the state at x.
          *args: the wrapped solver's positional arguments, as in ``run``.
          **kwargs: the wrapped solver's keyword arguments, as in ``run``.

        Returns:
          ``OptStep(U(x̄), state)``.
        """
        m = self.history_size
        k = state.iter_num
        mix = (jnp.mod(k, self._frequency) == 0) & (k >= m)

        def mixed(params, solver_state):
            alpha = mixing_weights(state.residual_gram, m, jnp.mod(k - 1, m), self.ridge)

            # Σαᵢ(xᵢ + βgᵢ) = x + Σαᵢ(xᵢ + βgᵢ − x) (Σα = 1): the weights multiply differences
            # that vanish at convergence (no loss of precision, also in unrolled derivatives).
            def combine(xs, gs, current):
                differences = xs + self.beta * gs - current
                return current + jnp.tensordot(alpha.astype(xs.dtype), differences, axes=1)

            point = tree.map(combine, state.params_history, state.residuals_history, params)
            return point, positional_method(self.solver, "init_state")(point, *args, **kwargs)

        def plain(params, solver_state):
            return params, solver_state

        start, solver_state = _loop.cond(mix, mixed, plain, params, state.solver_state)
        next_params, solver_state = positional_method(self.solver, "update")(
            start, solver_state, *args, **kwargs
        )
        step = tree.sub(next_params, start)
        position = jnp.mod(k, m)
        params_history = stack_slot(state.params_history, position, start)
        residuals_history = stack_slot(state.residuals_history, position, step)
        row = slot_products(residuals_history, step).astype(state.residual_gram.dtype)
        gram = state.residual_gram.at[position, :].set(row).at[:, position].set(row)
        state = AndersonWrapperState(
            iter_num=k + 1,
            error=jnp.asarray(solver_state.error).astype(state.error.dtype),
            converged=state.converged,
            solver_state=solver_state,
            params_history=params_history,
            residuals_history=residuals_history,
            residual_gram=gram,
        )
        return OptStep(next_params, state)

    def _searches_its_step(self) -> bool:
        """The mixed step depends on the history: unrolling continues past the stop with the
        wrapped solver's own step instead (see :meth:`_continuation`)."""
        return True

    def _continuation(self, /, *args, **kwargs) -> Continuation:
        """Unrolling's derivative continuation past the stop: the wrapped solver's own one if
        it has one, else its plain step from x (a fresh state, no mixing), a contraction where
        the wrapped solver converges alone. Continued with Anderson's mixing, the derivative is
        right at first order but its second derivative was 3e2 off on a logistic regression
        (the weights are fitted to residual differences that vanish at convergence)."""
        inner = self.solver._continuation(*args, **kwargs)
        if inner is not None:
            return inner
        init_state = positional_method(self.solver, "init_state")
        update = positional_method(self.solver, "update")

        def stepsize(x):
            return jnp.ones((), jnp.finfo(tree.dtype(x)).dtype)  # (unused by the step)

        def step(x, eta):
            del eta
            return update(x, init_state(x, *args, **kwargs), *args, **kwargs)[0]

        return Continuation(stepsize, step)

    def _state_with_derivatives(self, params, state, args, kwargs):
        """The wrapped solver's state gets the derivatives its own run would give it (its value
        and aux, functions of the solution: see ``DifferentiableRun``)."""
        inner = self.solver._state_with_derivatives(params, state.solver_state, args, kwargs)
        return state._replace(solver_state=inner)

    def optimality(self):
        """The wrapped solver's condition (acceleration changes the path, not the solution).

        Returns:
          ``self.solver.optimality()``.
        """
        return self.solver.optimality()
