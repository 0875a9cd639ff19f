"""What the stochastic solvers share: the objective's forms, its condition, and ``run_iterator``.

:class:`~implicitdiff.solvers.OptaxSolver`, :class:`~implicitdiff.solvers.PolyakSGD` and
:class:`~implicitdiff.solvers.ArmijoSGD` take the objective ``fun`` in one of four forms, set by
``value_and_grad`` and ``has_aux``:

- ``fun(x, *args) -> f``                                       (the default);
- ``fun(x, *args) -> (f, aux)``                                (``has_aux=True``);
- ``fun(x, *args) -> (f, ∇f)``                                 (``value_and_grad=True``);
- ``fun(x, *args) -> ((f, aux), ∇f)``                          (both).

Their ``update`` is one step on the batch of data the arguments hold; ``run`` repeats it on the
same arguments (full batch) and is differentiated through the stationarity of the full-batch
objective, ∇₁f(x*, *args) = 0; ``run_iterator`` repeats it over the batches of an iterator, in a
Python loop (no derivative of its own: JAX differentiates the steps if asked).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import _checks, optimality, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._continuation import gradient_continuation
from implicitdiff.solvers._objective import Objective

__all__ = ["AdaptiveSGD", "StochasticSolver"]


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class StochasticSolver(IterativeSolver):
    """Base of the stochastic solvers: the forms of ``fun`` (see the module docstring), their
    condition ∇₁f = 0, the ``pre_update`` hook and ``run_iterator``.

    A subclass has the fields ``fun``, ``value_and_grad``, ``has_aux`` and ``pre_update``.
    """

    _iterates_in_one_dtype = True  # (mixed float32/float64 params: see DifferentiableRun)

    def _check_objective_options(self) -> None:
        owner = type(self).__name__
        if not callable(self.fun):
            raise TypeError(f"{owner}: fun must be callable, got {self.fun!r}")
        if not isinstance(self.value_and_grad, bool):
            raise TypeError(f"{owner}: value_and_grad must be a bool, got {self.value_and_grad!r}")
        if not isinstance(self.has_aux, bool):
            raise TypeError(f"{owner}: has_aux must be a bool, got {self.has_aux!r}")
        if self.pre_update is not None and not callable(self.pre_update):
            raise TypeError(
                f"{owner}: pre_update must be callable or None, got {self.pre_update!r}"
            )

    def _check_fun(self, params, args, kwargs) -> None:
        _checks.check_signature(
            self.fun, type(self).__name__, "fun", (params, *args), kwargs, "fun(params, *args)"
        )

    def _initial_fields(self, init_params, args, kwargs) -> dict[str, Any]:
        """The fields every stochastic state starts with, once ``fun`` is checked to take
        ``(params, *args)`` and evaluated at ``init_params`` (for the structure of its auxiliary
        output): iter_num 0, error inf (in the real dtype of the params), value inf (in f's
        dtype), aux, converged False."""
        self._check_fun(init_params, args, kwargs)
        value, aux = self._value_aux(init_params, *args, **kwargs)
        return {
            "iter_num": jnp.asarray(0),
            "error": jnp.asarray(jnp.inf, _dtypes.real_dtype(init_params)),
            "value": jnp.asarray(jnp.inf, jnp.result_type(value)),
            "aux": aux,
            "converged": jnp.asarray(False),
        }

    def _state_fields(self):
        """``state.value`` and ``state.aux``: f and aux at x, functions of the solution (see
        ``DifferentiableRun``; the loop keeps them at the iterate before the last step, the
        same point at convergence)."""

        def fields(params, /, *args, **kwargs):
            value, aux = self._value_aux(params, *args, **kwargs)
            return {"value": value, "aux": aux}

        return ("value", "aux") if self.has_aux else ("value",), fields

    def _objective(self) -> Objective:
        """``fun`` read in its form (value_and_grad, has_aux), with the checks of its output."""
        return Objective(self.fun, self.value_and_grad, self.has_aux)

    def _value_aux(self, params, /, *args, **kwargs) -> tuple[Any, Any]:
        """(f(x), aux) at x; aux is None without ``has_aux``."""
        return self._objective().value_and_aux(params, *args, **kwargs)

    def _value(self, params, /, *args, **kwargs):
        """f(x), the scalar objective."""
        return self._value_aux(params, *args, **kwargs)[0]

    def _value_aux_grad(self, params, /, *args, **kwargs) -> tuple[Any, Any, PyTree]:
        """(f(x), aux, ∇f(x)): the user's gradient with ``value_and_grad``, else JAX's."""
        value, grad, aux = self._objective().evaluate(params, *args, **kwargs)
        return value, aux, grad

    def _gradient(self, params, /, *args, **kwargs) -> PyTree:
        """∇₁f(x, *args, **kwargs): the condition of ``run``'s implicit derivative."""
        return self._value_aux_grad(params, *args, **kwargs)[2]

    def _pre_update(self, params, state, args, kwargs):
        if self.pre_update is None:
            return params, state
        params, state = self.pre_update(params, state, *args, **kwargs)
        return params, state

    def optimality(self):
        """The condition that ``run``'s solution is differentiated through: ∇₁f(x, *args) = 0,
        the stationarity of the (full-batch) objective.

        Returns:
          ``("root", F)`` with F = ∇₁fun (``optimality.stationary`` of the value; with
            ``value_and_grad=True``, the gradient that ``fun`` returns).
        """
        if self.value_and_grad:
            return "root", self._gradient
        return "root", optimality.stationary(self._value)

    def run_iterator(self, init_params: PyTree, iterator: Iterator, *args, **kwargs) -> OptStep:
        """Iterate over the batches of ``iterator``: ``update`` on each, passed as ``data=``.

        The first batch initializes the state (``init_state(init_params, *args, data=batch)``);
        then each of the next ``maxiter`` batches makes one step
        x ← ``update``(x, state, *args, data=batch), stopping earlier when the iterator ends. The
        loop runs in Python (one call of the compiled ``update`` per batch with ``jit=True``);
        ``tol`` is not tested, and ``on_failure`` is not applied.

        Args:
          init_params: the starting point x₀, a pytree.
          iterator: an iterator of batches (any pytree of arrays; each the same shape), given to
            ``fun`` as its keyword argument ``data``.
          *args: the other arguments of ``fun`` after x.
          **kwargs: its other keyword arguments.

        Returns:
          ``OptStep(params, state)``: the last iterate and its state.
        """
        try:
            first = next(iterator)
        except TypeError:
            raise TypeError(
                f"{type(self).__name__}.run_iterator: iterator must be an iterator (next() works "
                f"on it), got {type(iterator).__name__}"
            ) from None
        except StopIteration:
            raise ValueError(
                f"{type(self).__name__}.run_iterator: iterator is empty (no batch to start from)"
            ) from None
        state = self.init_state(init_params, *args, **kwargs, data=first)
        update = self._jitted_update() if self.jit else self.update
        params = init_params
        for batch in itertools.islice(iterator, self.maxiter):
            params, state = update(params, state, *args, **kwargs, data=batch)
        return OptStep(params, state)

    def _searches_its_step(self) -> bool:
        """The step adapts to f and ∇f (Polyak's and Armijo's steps; Optax's adaptive
        optimizers and line searches): unrolling continues past the stop with a fixed step."""
        return True

    def _continuation(self, /, *args, **kwargs):
        """Unrolling past the stop continues with x ← x − η∇f(x), η = 1/L̂ (see
        :mod:`implicitdiff.solvers._continuation`): an adaptive step's own linearization at
        the solution need not contract (Adam's divides by √v → 0: its derivative drifted 1%
        off dx*/dθ in 5,000 steps past the stop; optax's L-BFGS, whose history pairs s, y → 0,
        gave NaN)."""
        return gradient_continuation(self._value, args, kwargs)

    def _jitted_update(self) -> Callable:
        """``update`` compiled once per solver (kept in the solver's entry of the shared cache)."""
        compiled = self._compiled.get("run_iterator.update")
        if compiled is None:
            compiled = self._compiled["run_iterator.update"] = jax.jit(self.update)
        return compiled


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class AdaptiveSGD(StochasticSolver):
    """Base of the SGDs whose step adapts to f and ∇f on each batch (PolyakSGD, ArmijoSGD):
    the checks of their cap ``max_stepsize`` and ``momentum`` (fields of theirs), the momentum's
    first velocity."""

    def _check_step_options(self) -> None:
        owner = type(self).__name__
        if not self.max_stepsize > 0:
            raise ValueError(f"{owner}: max_stepsize must be > 0, got {self.max_stepsize!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"{owner}: momentum must be in [0, 1), got {self.momentum!r}")

    def _initial_velocity(self, init_params) -> PyTree:
        """The velocity before the first step: zeros like the params (None without momentum)."""
        return None if self.momentum == 0 else tree.zeros_like(init_params)
