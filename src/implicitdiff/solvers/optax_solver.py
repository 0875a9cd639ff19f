"""Any Optax optimizer as a solver: ``OptaxSolver(fun, optax.adam(1e-2))``.

Optax is not a dependency: an optimizer is only read as a pair of functions
``opt.init(params) -> opt_state`` and ``opt.update(grads, opt_state, params) -> (updates,
opt_state)`` (an ``optax.GradientTransformation``, or any object with these two methods).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _optimizer, _summary, tree
from implicitdiff.solvers._base import OptStep
from implicitdiff.solvers._stochastic import StochasticSolver

__all__ = ["OptaxSolver", "OptaxState"]


class OptaxState(NamedTuple):
    """The state of :class:`OptaxSolver`: the measures at the iterate before the last step.

    Attributes:
      iter_num: the number of steps taken.
      value: f at the iterate before the last step (inf before the first).
      error: ‖∇f‖ at the iterate before the last step (inf before the first).
      internal_state: the optimizer's own state (``opt.init(x₀)``, then ``opt.update``'s).
      aux: ``fun``'s auxiliary output at that iterate (None without ``has_aux``).
      converged: whether the run ended with ‖∇f‖ ≤ tol at a finite iterate (set when ``run``
        ends; False until then).
      status: a :class:`~implicitdiff.solvers.Status` code, set when ``run`` ends (1 until
        then).
    """

    iter_num: jax.Array
    value: jax.Array
    error: jax.Array
    internal_state: Any
    aux: Any
    converged: jax.Array = False
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class OptaxSolver(StochasticSolver):
    """min_x fun(x, *args) with an Optax optimizer: x ← x + u, (u, s) = opt.update(∇f(x), s, x).

    Each ``update`` evaluates f and ∇f at x (on the batch its arguments hold), asks the optimizer
    for the increment u and adds it (cast to each leaf's dtype). ``run(init_params, *args)``
    repeats it on the same arguments until ‖∇f‖ ≤ tol, ‖∇f‖ being measured at the iterate before
    the last step (so no gradient is computed twice; as JAXopt) or after ``maxiter`` steps;
    ``run_iterator(init_params, iterator, *args)`` runs one step per batch of an iterator.
    The solution of ``run`` is differentiated through ∇₁f(x*, *args) = 0.

    Attributes:
      fun: the objective, f(x, *args, **kwargs) a scalar; with ``has_aux`` it returns
        ``(f, aux)``, with ``value_and_grad`` ``(f, ∇f)`` (``((f, aux), ∇f)`` with both).
      opt: the optimizer: an ``optax.GradientTransformation`` (any object with ``init(params)``
        and ``update(grads, state, params)``). Its learning rate and schedule are its own. One
        whose ``update`` takes keyword arguments (Optax's ``GradientTransformationExtraArgs``)
        also gets ``value`` = f(x), ``grad`` = ∇f(x) and ``value_fn`` = f on the same
        arguments, which a line search (``optax.lbfgs()``) needs; differentiating such a run
        unrolled works in forward mode only (the search is a ``while_loop``, which JAX cannot
        reverse): the default implicit derivative works in both.
      value_and_grad: whether ``fun`` returns its gradient too (default False).
      pre_update: None, or ``(x, state) = pre_update(x, state, *args, **kwargs)`` run at the
        start of each ``update``.
      has_aux: whether ``fun`` returns auxiliary output, kept in ``state.aux`` (keyword-only).
      maxiter, tol: 500 steps, ‖∇f‖ ≤ 1e-3 (JAXopt's defaults).
      implicit_diff, solve, unroll_checkpoint, jit, on_failure, backward_on_failure: see
        :class:`~implicitdiff.solvers.IterativeSolver` (``implicit_diff`` is True here; it is
        False in JAXopt).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from implicitdiff.solvers import OptaxSolver
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = OptaxSolver(f, optax.sgd(0.1), tol=1e-8).run(jnp.zeros(3), 0.5)
    """

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    opt: Any = dataclasses.field(default=None, kw_only=False)
    value_and_grad: bool = dataclasses.field(default=False, kw_only=False)
    pre_update: Callable | None = dataclasses.field(default=None, kw_only=False)
    has_aux: bool = False

    def __post_init__(self):
        super().__post_init__()
        self._check_objective_options()
        if not (
            callable(getattr(self.opt, "init", None))
            and callable(getattr(self.opt, "update", None))
        ):
            raise TypeError(
                "OptaxSolver: opt must be an Optax optimizer (an object with init(params) and "
                f"update(grads, state, params), e.g. optax.adam(1e-3)), got {self.opt!r}"
            )

    def init_state(self, init_params, /, *args, **kwargs) -> OptaxState:
        """The state at ``init_params``: the optimizer's initial state, value and error inf.

        Checks first that ``fun`` takes ``(params, *args)``; evaluates ``fun`` once there (for
        the structure of its auxiliary output).

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          An :class:`OptaxState` with iter_num 0, value and error inf, ``opt.init(x₀)``.
        """
        fields = self._initial_fields(init_params, args, kwargs)
        return OptaxState(**fields, internal_state=self.opt.init(init_params))

    def update(self, params, state: OptaxState, /, *args, **kwargs) -> OptStep:
        """One step: ``pre_update``, then (u, s) = opt.update(∇f(x), s, x) and x⁺ = x + u.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x (the batch).
          **kwargs: its keyword arguments (``data=`` under ``run_iterator``).

        Returns:
          ``OptStep(x⁺, state)``, the state holding f(x), ‖∇f(x)‖ and aux at x.
        """
        params, state = self._pre_update(params, state, args, kwargs)
        value, aux, grad = self._value_aux_grad(params, *args, **kwargs)
        updates, internal_state = _optimizer.update(
            self.opt,
            grad,
            state.internal_state,
            params,
            value,
            lambda x: self._value(x, *args, **kwargs),
        )
        new_params = jax.tree_util.tree_map(
            lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)), params, updates
        )
        new_state = OptaxState(
            iter_num=state.iter_num + 1,
            value=jnp.asarray(value).astype(state.value.dtype),
            error=tree.norm(grad).astype(state.error.dtype),
            internal_state=internal_state,
            aux=aux,
            converged=state.converged,
            status=state.status,
        )
        return OptStep(new_params, new_state)
