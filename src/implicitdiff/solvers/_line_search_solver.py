"""The base of the solvers that search along a direction: LineSearchSolver, shared by LBFGS,
BFGS (:mod:`implicitdiff.solvers.quasi_newton`) and NonlinearCG
(:mod:`implicitdiff.solvers.nonlinear_cg`), the guarded arithmetic they share, and the mixin of
JAXopt's ``stop_if_linesearch_fails`` (LBFGS, LBFGSB, Broyden).

The base holds the options (``fun``, the line search and its constants), the evaluation of f and
∇f, the line-search step and the optimality condition ∇₁f(x, *args) = 0
(:func:`implicitdiff.optimality.stationary`). Step sizes are constants (cut from the graph), and
every division is guarded, so that unrolled derivatives stay finite.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, _linesearch, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver
from implicitdiff.solvers._continuation import gradient_continuation
from implicitdiff.solvers._jaxopt_options import warn_deprecated_search_options
from implicitdiff.solvers._objective import (
    LINESEARCH_INITS,
    Objective,
    Stationary,
    check_complex,
    check_objective_options,
    check_stepsize,
    first_trial,
    scheduled_stepsize,
)
from implicitdiff.solvers.linesearch import (
    BacktrackingLineSearch,
    HagerZhangLineSearch,
    LineSearch,
    ZoomLineSearch,
)

__all__ = [
    "LineSearchSolver",
    "StopIfLinesearchFails",
    "first_stepsize",
    "gradient_error",
    "safe_divide",
    "safe_min",
]

_LINESEARCHES = ("zoom", "backtracking", "hager-zhang")


def safe_min(dtype: Any) -> float:
    """√(smallest normal) of a dtype: a denominator above it has a finite square (derivatives)."""
    return math.sqrt(float(np.finfo(dtype).tiny))


def safe_divide(num: jax.Array, den: jax.Array, ok: jax.Array, default: Any = 0.0) -> jax.Array:
    """num / den where ok, default elsewhere, with finite derivatives in both branches."""
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), default)


def first_stepsize(grad: PyTree, dtype: Any) -> jax.Array:
    """min(1, 1/‖∇f‖): the first trial along −∇f, a step of length at most 1 (cut)."""
    gnorm = jax.lax.stop_gradient(tree.norm(grad)).astype(dtype)
    return jnp.where(gnorm > 1.0, 1.0 / jnp.where(gnorm > 1.0, gnorm, 1.0), 1.0).astype(dtype)


def gradient_error(grad: PyTree, dtype: Any) -> jax.Array:
    """‖∇f‖, cut: a diagnostic, never differentiated (√ at 0 would give NaN derivatives)."""
    return jax.lax.stop_gradient(tree.norm(grad)).astype(dtype)


class StopIfLinesearchFails:
    """Mixin of the solvers with JAXopt's option ``stop_if_linesearch_fails`` (LBFGS, LBFGSB,
    Broyden), a bool field of theirs: its check, and the end of the run after an iteration whose
    search failed (their states hold ``failed_linesearch``)."""

    def _check_stop_if_linesearch_fails(self, name: str) -> None:
        if not isinstance(self.stop_if_linesearch_fails, bool):
            raise TypeError(
                f"{name}: stop_if_linesearch_fails must be a bool, got "
                f"{self.stop_if_linesearch_fails!r}"
            )

    def _done(self, state) -> jax.Array:
        done = super()._done(state)
        if self.stop_if_linesearch_fails:
            done = done | state.failed_linesearch
        return done


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LineSearchSolver(Stationary, IterativeSolver):
    """Options and the line-search step shared by LBFGS, BFGS and NonlinearCG."""

    _iterates_in_one_dtype = True  # (mixed float32/float64 params: see DifferentiableRun)

    _complex_params = True

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    value_and_grad: bool = dataclasses.field(default=False, kw_only=False)
    has_aux: bool = dataclasses.field(default=False, kw_only=False)
    tol: float = 1e-6
    linesearch: str = "zoom"
    linesearch_init: str | None = None
    maxls: int = 30
    c1: float = 1e-4
    c2: float = 0.9
    increase_factor: float = 1.5
    max_stepsize: float | None = None
    min_stepsize: float = 1e-6

    # JAXopt 0.8's deprecated options: accepted, ignored with a DeprecationWarning (as JAXopt).
    condition: Any = None
    decrease_factor: Any = None

    # JAXopt's options refused here, with what to use instead.
    _jaxopt_refused: ClassVar[dict[str, str]] = {
        "stop_if_linesearch_fails": (
            "the run goes on after a failed search (the next direction is −∇f); read "
            "state.status and state.converged after the run"
        ),
    }

    def __post_init__(self):
        name = type(self).__name__
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"{name}: fun must be callable, got {self.fun!r}")
        check_objective_options(name, self.value_and_grad, self.has_aux)
        warn_deprecated_search_options(
            self,
            "pass linesearch=BacktrackingLineSearch(fun, condition=..., decrease_factor=...) "
            "(implicitdiff.solvers)",
        )
        if not (isinstance(self.linesearch, LineSearch) or self.linesearch in _LINESEARCHES):
            raise ValueError(
                f"{name}: linesearch must be one of {_LINESEARCHES} or a line-search object "
                f"(implicitdiff.solvers.ZoomLineSearch, ...), got {self.linesearch!r}"
            )
        if not (self.linesearch_init is None or self.linesearch_init in LINESEARCH_INITS):
            raise ValueError(
                f"{name}: linesearch_init must be None (this solver's own first trial) or one of "
                f"{LINESEARCH_INITS}, got {self.linesearch_init!r}"
            )
        _checks.check_positive_int(self.maxls, "maxls", name)
        if not 0 < self.c1 < self.c2 < 1:
            raise ValueError(
                f"{name}: the Wolfe constants must satisfy 0 < c1 < c2 < 1, got "
                f"c1={self.c1!r}, c2={self.c2!r}"
            )
        if not (self.max_stepsize is None or self.max_stepsize > 0):
            raise ValueError(f"{name}: max_stepsize must be > 0, got {self.max_stepsize!r}")
        if not self.min_stepsize >= 0:
            raise ValueError(f"{name}: min_stepsize must be ≥ 0, got {self.min_stepsize!r}")
        if not self.increase_factor > 0:
            raise ValueError(f"{name}: increase_factor must be > 0, got {self.increase_factor!r}")
        check_stepsize(name, getattr(self, "stepsize", 0.0))
        object.__setattr__(
            self, "_objective", Objective(self.fun, self.value_and_grad, self.has_aux)
        )

    @property
    def _max_stepsize(self) -> float:
        """``max_stepsize``, or its default: no bound (1e10) with this solver's own first trial,
        JAXopt's 1.0 with one of JAXopt's ``linesearch_init`` strategies."""
        if self.max_stepsize is not None:
            return float(self.max_stepsize)
        return 1e10 if self.linesearch_init is None else 1.0

    def _fixed_step(self) -> bool:
        """Whether ``stepsize`` (LBFGS, BFGS) replaces the line search: > 0, or a callable."""
        stepsize = getattr(self, "stepsize", 0.0)
        return callable(stepsize) or stepsize > 0

    def _initial_stepsize(self, own: Any, dtype: Any) -> jax.Array:
        """The state's step before the first iteration: the solver's own, or ``max_stepsize``
        (as JAXopt) with a ``linesearch_init`` strategy."""
        if self.linesearch_init is None:
            return jnp.asarray(own, dtype)
        return jnp.asarray(self._max_stepsize, dtype)

    def _step(self, params, state, direction, own_trial, args, kwargs):
        """(η, f, ∇f, aux) at x + η d: η the fixed ``stepsize`` (or ``stepsize(iter_num)``), else
        the line search's from the first trial (``own_trial`` or ``linesearch_init``'s)."""
        return self._step_and_failure(params, state, direction, own_trial, args, kwargs)[:4]

    def _step_and_failure(self, params, state, direction, own_trial, args, kwargs):
        """:meth:`_step`'s (η, f, ∇f, aux), and whether the line search failed (False for a
        fixed step)."""
        dtype = jnp.result_type(state.stepsize)
        if self._fixed_step():
            eta = scheduled_stepsize(self.stepsize, state.iter_num, dtype, type(self).__name__)
            value, grad, aux = self._evaluate_with_aux(
                tree.axpy(eta, direction, params), *args, **kwargs
            )
            return eta, value, grad, aux, jnp.asarray(False)
        if self.linesearch_init is None:
            trial = own_trial
        else:
            trial = first_trial(
                self.linesearch_init,
                state.stepsize,
                max_stepsize=self._max_stepsize,
                min_stepsize=self.min_stepsize,
                increase_factor=self.increase_factor,
            )
        eta, value, grad, failed = self._search(
            params, state.value, state.grad, direction, trial, args, kwargs
        )
        aux = None
        if self.has_aux:
            aux = self._objective.aux(tree.axpy(eta, direction, params), *args, **kwargs)
        return eta, value, grad, aux, failed

    def _searches_its_step(self) -> bool:
        """Every step comes from a line search."""
        return True

    def _check_arguments(self, init_params, args, kwargs) -> None:
        super()._check_arguments(init_params, args, kwargs)
        check_complex(type(self).__name__, self._objective, init_params)
        hager_zhang = self.linesearch == "hager-zhang" or isinstance(
            self.linesearch, HagerZhangLineSearch
        )
        if hager_zhang and not self.implicit_diff and _dtypes.complex_leaves(init_params):
            # Known defect: past convergence the unrolled derivative drifts (by up to 10% on a
            # least-squares test) on complex params, where the same run on the real pairs does
            # not. Refused rather than wrong.
            raise TypeError(
                f"{type(self).__name__}.run: complex init_params with implicit_diff=False and the "
                "Hager-Zhang line search are not supported; use implicit_diff=True, or "
                'linesearch="zoom" or "backtracking"'
            )

    def _continuation(self, /, *args, **kwargs):
        """Unrolling continues the derivative past the stop with x ← x − η∇f(x), η = 1/L̂
        (:mod:`implicitdiff.solvers._continuation`)."""
        return gradient_continuation(self._objective.scalar(), args, kwargs, grad=self._grad())

    def _grad(self):
        """The user's gradient with ``value_and_grad`` (else None: ``jax.grad`` of f)."""
        return self._objective.grad if self.value_and_grad else None

    def _evaluate(self, params, /, *args, **kwargs):
        """(f, ∇f) at params, f cast to the params' real dtype (whatever dtype ``fun`` returns).

        For complex params, ∇f is the gradient over the real pairs (Re z, Im z) read as complex
        numbers: conj of what ``jax.grad`` returns (see :mod:`implicitdiff.solvers._dtypes`).
        """
        value, grad, _ = self._evaluate_with_aux(params, *args, **kwargs)
        return value, grad

    def _evaluate_with_aux(self, params, /, *args, **kwargs):
        """(f, ∇f, aux) at params, as :meth:`_evaluate`; aux None without ``has_aux``."""
        value, grad, aux = self._objective.evaluate(params, *args, **kwargs)
        return _dtypes.cast_value(value, params), tree.map(jnp.conj, grad), aux

    def _start(self, init_params, args, kwargs):
        """f, ∇f and aux at ``init_params``, after checking that ``fun`` takes (params, *args)."""
        _checks.check_signature(
            self.fun, type(self).__name__, "fun", (init_params, *args), kwargs, "fun(params, *args)"
        )
        return self._evaluate_with_aux(init_params, *args, **kwargs)

    def _initial_fields(self, value, grad, aux, own_stepsize, dtype) -> dict[str, Any]:
        """The fields every state of these solvers starts with, from f, ∇f and aux at x₀:
        iter_num 0, error ‖∇f(x₀)‖, converged False, f, ∇f, aux, and the step before the first
        iteration (``own_stepsize``, or ``max_stepsize`` with a ``linesearch_init`` strategy)."""
        return {
            "iter_num": jnp.asarray(0),
            "error": gradient_error(grad, dtype),
            "converged": jnp.asarray(False),
            "value": jnp.asarray(value),
            "grad": grad,
            "stepsize": self._initial_stepsize(own_stepsize, dtype),
            "aux": aux,
        }

    def _next_fields(self, state, value, grad, stepsize, aux) -> dict[str, Any]:
        """The fields every state of these solvers has after an iteration from ``state``, with
        f, ∇f and aux at the new iterate: iter_num + 1, error ‖∇f‖, converged (as it was), f,
        ∇f, the step and aux."""
        return {
            "iter_num": state.iter_num + 1,
            "error": gradient_error(grad, state.error.dtype),
            "converged": state.converged,
            "value": value,
            "grad": grad,
            "stepsize": stepsize,
            "aux": aux,
        }

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
                max_stepsize=self._max_stepsize,
            )
        if self.linesearch == "hager-zhang":
            return HagerZhangLineSearch(
                fun=self.fun,
                c1=min(0.1, self.c2 / 2),
                c2=self.c2,
                maxiter=self.maxls,
                max_stepsize=self._max_stepsize,
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
            max_stepsize=self._max_stepsize,
        )

    def _search(self, params, value, grad, direction, stepsize, args, kwargs):
        """(η, f(x + η d), ∇f(x + η d), failed) with η a constant; f and ∇f differentiable when
        unrolling, reused from the line search otherwise; ``failed``: no trial passed the
        search's condition (η is then its fallback).

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
        eta, failed = found.stepsize, found.failed
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
                return eta, new_value, new_grad, failed
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
        return eta, new_value, new_grad, failed
