"""The objective of the smooth minimizers in JAXopt's three forms, and their shared options.

A minimizer's ``fun(x, *args, **kwargs)`` returns, as in JAXopt,

- f (``value_and_grad=False, has_aux=False``, the default);
- (f, aux) with ``has_aux=True``: aux is any pytree, returned in ``state.aux``;
- (f, ∇₁f) with ``value_and_grad=True``, ∇₁f a pytree like x (``jax.grad``'s convention);
- ((f, aux), ∇₁f) with both.

:class:`Objective` reads every form the same way, for GradientDescent, ProximalGradient,
ProjectedGradient, LBFGS, BFGS, NonlinearCG and LBFGSB (one implementation). With
``value_and_grad=True`` the gradient is the user's: the optimality conditions that
differentiate the solution are built on it (∇₁f = 0, or x = prox(x − η∇₁f)), so it must be a
JAX function of x and of the arguments (its derivatives are those of the implicit function).

The step-size options shared by these solvers (a fixed or scheduled ``stepsize``, the first
trial of each line search) are checked and computed here too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _support, optimality, tree
from implicitdiff._condition import Condition
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes

__all__ = [
    "LINESEARCH_INITS",
    "Objective",
    "Stationary",
    "WithAux",
    "check_complex",
    "check_objective_options",
    "check_stepsize",
    "describe_output",
    "first_trial",
    "scheduled_stepsize",
]

LINESEARCH_INITS = ("increase", "max", "current")


def check_objective_options(owner: str, value_and_grad: Any, has_aux: Any) -> None:
    """TypeError, naming the option, unless both are bools (JAXopt's meaning)."""
    if not isinstance(value_and_grad, bool):
        raise TypeError(
            f"{owner}: value_and_grad must be a bool (True: fun returns (value, grad)), got "
            f"{value_and_grad!r}"
        )
    if not isinstance(has_aux, bool):
        raise TypeError(
            f"{owner}: has_aux must be a bool (True: fun returns (value, aux)), got {has_aux!r}"
        )


def check_stepsize(owner: str, stepsize: Any) -> None:
    """``stepsize``: a number ≥ 0 (0: a line search) or a callable ``stepsize(iter_num)``."""
    if callable(stepsize):
        return
    _checks.refuse_traced_option(owner, "stepsize", stepsize)
    ok = isinstance(stepsize, (int, float)) and not isinstance(stepsize, bool) and stepsize >= 0
    if not ok:
        raise ValueError(
            f"{owner}: stepsize must be ≥ 0 (0: a line search) or a callable stepsize(iter_num) "
            f"> 0, got {stepsize!r}"
        )


def check_complex(owner: str, objective: Objective, init_params: PyTree) -> None:
    """Complex params are refused with ``value_and_grad`` or ``has_aux`` (TypeError)."""
    if objective.plain or not _dtypes.complex_leaves(init_params):
        return
    raise TypeError(
        f"{owner}.run: complex init_params are supported only with value_and_grad=False and "
        "has_aux=False (a plain real-valued fun); split z into its real pairs (Re z, Im z)"
    )


def scheduled_stepsize(stepsize: Any, iter_num: jax.Array, dtype: Any, owner: str) -> jax.Array:
    """The fixed step: ``stepsize(iter_num)`` when callable, else ``stepsize``; a constant.

    A schedule must return a scalar (else a TypeError naming ``owner``'s stepsize); a negative
    value from it is NaN (a fixed negative stepsize is refused when the solver is built; from a
    schedule, a negative η made the error ‖x⁺ − y‖/η negative, which passed for convergence)."""
    if not callable(stepsize):
        return jax.lax.stop_gradient(jnp.asarray(stepsize, dtype))
    eta = jnp.asarray(stepsize(iter_num))
    if eta.shape != ():
        raise TypeError(
            f"{owner}: stepsize(iter_num) must return a scalar step, got shape {eta.shape}"
        )
    eta = eta.astype(dtype)
    return jax.lax.stop_gradient(_checks.nan_unless(jnp.logical_not(eta < 0), eta))


def first_trial(
    strategy: str,
    previous: jax.Array,
    *,
    max_stepsize: float,
    min_stepsize: float,
    increase_factor: float,
) -> jax.Array:
    """JAXopt's ``linesearch_init``: the first trial of a line search from the last step η₋.

    ``"max"``: ``max_stepsize``; ``"current"``: η₋; ``"increase"``: ``increase_factor`` · η₋,
    or ``max_stepsize`` once η₋ ≤ ``min_stepsize`` (a restart).
    """
    previous = jax.lax.stop_gradient(previous)
    top = jnp.asarray(max_stepsize, previous.dtype)
    if strategy == "max":
        return top
    if strategy == "current":
        return previous
    return jnp.where(previous <= min_stepsize, top, previous * increase_factor).astype(
        previous.dtype
    )


def describe_output(out: Any) -> str:
    """What a user's function returned, in words: "a tuple of 3 elements", "an array of shape
    ()" (a tracer's class name, as JAX calls it, means nothing to the user)."""
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} elements"
    if isinstance(out, jax.Array) or hasattr(out, "shape"):
        return f"an array of shape {tuple(jnp.shape(out))}"
    return type(out).__name__


def scalar_value(value: Any, owner: str = "", name: str = "fun") -> Any:
    """``value`` if it is a scalar (shape ()), else a TypeError naming ``name``: a one-element
    array (shape (1,) or (1, 1)) met JAX's "Gradient only defined for scalar-output
    functions", which names neither the function nor the fix."""
    prefix = f"{owner}: " if owner else ""
    if isinstance(value, (tuple, list)):  # (value, aux) from a function with auxiliary output
        raise TypeError(
            f"{prefix}{name} must return a scalar objective value, got {describe_output(value)}; "
            "pass has_aux=True for a function returning (value, aux)"
        )
    shape = jnp.shape(value)
    if shape != ():
        fix = "; return its entry (value[0], or jnp.sum)" if math.prod(shape) == 1 else ""
        raise TypeError(
            f"{prefix}{name} must return a scalar objective value (shape ()), got shape "
            f"{shape}{fix}"
        )
    return value


def scalar_valued(fun: Callable) -> Callable:
    """``fun`` with its value checked by :func:`scalar_value` (same signature)."""

    @functools.wraps(fun)
    def checked(x, /, *args, **kwargs):
        return scalar_value(fun(x, *args, **kwargs))

    return checked


@dataclasses.dataclass(frozen=True)
class Objective:
    """``fun`` read in any of JAXopt's forms (see the module): f, ∇₁f and aux at x.

    Attributes:
      fun: the user's function of (x, *args, **kwargs).
      value_and_grad: whether ``fun`` returns (value, grad).
      has_aux: whether its value part is (value, aux).
    """

    fun: Callable
    value_and_grad: bool = False
    has_aux: bool = False

    @property
    def plain(self) -> bool:
        """Whether ``fun`` returns f alone."""
        return not (self.value_and_grad or self.has_aux)

    def _split(self, out: Any) -> tuple[Any, Any]:
        if not self.has_aux:
            return out, None
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                f"fun must return (value, aux) with has_aux=True, got {describe_output(out)}; pass "
                "has_aux=False for a function returning f alone"
            )
        return out[0], out[1]

    def _pair(self, out: Any) -> tuple[Any, Any]:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                "fun must return (value, grad) with value_and_grad=True (((value, aux), grad) "
                f"with has_aux=True too), got {describe_output(out)}"
            )
        return out[0], out[1]

    def _user_grad(self, x: PyTree, out: Any) -> tuple[Any, PyTree]:
        """(value part, grad) of ``fun``'s output with ``value_and_grad``, the gradient checked
        against x (structure and leaf shapes: a wrong one failed deep inside a step)."""
        value, grad = self._pair(out)
        mismatch = _checks.shape_mismatch(x, grad)
        if mismatch is not None:
            raise TypeError(
                "fun's gradient (value_and_grad=True) must be shaped like x, the params: got "
                f"{mismatch}"
            )
        return value, grad

    def evaluate(self, x: PyTree, /, *args, **kwargs) -> tuple[jax.Array, PyTree, Any]:
        """(f(x), ∇₁f(x), aux(x)); aux None without ``has_aux``; ∇ as ``jax.grad`` gives it."""
        if self.value_and_grad:
            out, grad = self._user_grad(x, self.fun(x, *args, **kwargs))
            value, aux = self._split(out)
            value = scalar_value(value)
        elif self.has_aux:
            (value, aux), grad = jax.value_and_grad(self._value_aux, has_aux=True)(
                x, *args, **kwargs
            )
        else:
            (value, grad), aux = jax.value_and_grad(self._plain)(x, *args, **kwargs), None
        return value, grad, aux

    def _plain(self, x, /, *args, **kwargs):
        return scalar_value(self.fun(x, *args, **kwargs))

    def _value_aux(self, x, /, *args, **kwargs):
        value, aux = self._split(self.fun(x, *args, **kwargs))
        return scalar_value(value), aux

    def value(self, x: PyTree, /, *args, **kwargs) -> jax.Array:
        """f(x) alone (with ``value_and_grad``, JAX prunes the unused gradient under jit)."""
        out = self.fun(x, *args, **kwargs)
        if self.value_and_grad:
            out = self._pair(out)[0]
        return scalar_value(self._split(out)[0])

    def grad(self, x: PyTree, /, *args, **kwargs) -> PyTree:
        """∇₁f(x): the user's with ``value_and_grad``, else ``jax.grad`` of f."""
        if self.value_and_grad:
            return self._user_grad(x, self.fun(x, *args, **kwargs))[1]
        return jax.grad(self.value)(x, *args, **kwargs)

    def value_and_aux(self, x: PyTree, /, *args, **kwargs) -> tuple[jax.Array, Any]:
        """(f(x), aux(x)) from one evaluation of ``fun``; aux None without ``has_aux``."""
        out = self.fun(x, *args, **kwargs)
        if self.value_and_grad:
            out = self._pair(out)[0]
        value, aux = self._split(out)
        return scalar_value(value), aux

    def aux(self, x: PyTree, /, *args, **kwargs) -> Any:
        """aux(x) with ``has_aux`` (cut from nothing: differentiable as ``fun`` is), else None."""
        if not self.has_aux:
            return None
        out = self.fun(x, *args, **kwargs)
        if self.value_and_grad:
            out = self._pair(out)[0]
        return self._split(out)[1]

    def scalar(self) -> Callable:
        """x, *args ↦ f: ``fun`` itself when plain, else its value part."""
        return self._plain if self.plain else self.value

    def stationary(self) -> Callable:
        """The condition F(x, *args) = ∇₁f(x, *args) = 0 (marked symmetric: ∂₁F = ∇²f).

        :func:`implicitdiff.optimality.stationary` of f, or the user's gradient with
        ``value_and_grad``.
        """
        if not self.value_and_grad:
            return optimality.stationary(self.scalar())
        return Condition(
            self.grad,
            symmetric=True,
            name="stationary_optimality",
            doc="∇₁f(x, *args), the gradient that fun returns (value_and_grad=True).",
        )

    def proximal_gradient(self, prox: Callable, stepsize: float) -> Callable:
        """T(x, hyperparams, *args) = prox(x − η∇₁f(x, *args), hyperparams, η), a fixed point
        at the solution: :func:`implicitdiff.optimality.proximal_gradient` of f, or the same
        map on the user's gradient with ``value_and_grad``."""
        if not self.value_and_grad:
            return optimality.proximal_gradient(self.scalar(), prox, stepsize=stepsize)

        def fixed_point_fun(x, hyperparams, /, *args, **kwargs):
            step = tree.axpy(-stepsize, self.grad(x, *args, **kwargs), x)
            return prox(step, hyperparams, stepsize)

        declared, support = _support.declared(prox), None
        if declared is not None:  # the prox's support (optimality.proximal_gradient), this grad

            def support(x, hyperparams, /, *args, **kwargs):
                y = tree.axpy(-stepsize, self.grad(x, *args, **kwargs), x)
                return declared.free(y, hyperparams, stepsize)

        return Condition(
            fixed_point_fun,
            symmetric=False,
            name="proximal_gradient_fixed_point",
            doc="prox(x − η∇₁f(x, *args), hyperparams, η) with the gradient that fun returns.",
            support=support,
            support_symmetric=True,
        )


class Stationary:
    """Mixin of the minimizers differentiated through ∇₁f = 0, f their ``_objective`` (an
    :class:`Objective`): GradientDescent, ScipyMinimize and the line-search solvers."""

    def optimality(self):
        """The condition that the solution is differentiated through: ∇₁fun(x, *args) = 0.

        Returns:
          ``("root", optimality.stationary(fun))`` (the value part of ``fun`` with ``has_aux``;
            the gradient that ``fun`` returns with ``value_and_grad``).
        """
        return "root", self._objective.stationary()


@dataclasses.dataclass(frozen=True)
class WithAux:
    """A user function that returns ``(value, aux)`` with ``has_aux=True`` (JAXopt's option of
    FixedPointIteration, AndersonAcceleration, Broyden, GaussNewton, LevenbergMarquardt,
    Bisection and MirrorDescent), its value alone otherwise.

    :meth:`value` is the function the solver iterates on and differentiates through (its
    optimality condition never sees aux); :meth:`aux` is what the solver keeps in
    ``state.aux`` (None without ``has_aux``), at the state's iterate.

    Attributes:
      fun: the user's function of (x, *args, **kwargs).
      has_aux: whether it returns (value, aux).
      owner: the solver's name, for errors.
      name: the function's field name (``fun``, ``fixed_point_fun``, ...), for errors.
    """

    fun: Callable
    has_aux: bool = False
    owner: str = ""
    name: str = "fun"

    def __post_init__(self):
        if not isinstance(self.has_aux, bool):
            raise TypeError(
                f"{self.owner}: has_aux must be a bool (True: {self.name} returns (value, aux)), "
                f"got {self.has_aux!r}"
            )

    def _split(self, out: Any) -> tuple[Any, Any]:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                f"{self.owner}: {self.name} must return (value, aux) with has_aux=True, got "
                f"{describe_output(out)}; pass has_aux=False for a function returning its value"
            )
        return out[0], out[1]

    def value_fun(self) -> Callable:
        """x, *args ↦ the value part: ``fun`` itself without ``has_aux`` (same signature)."""
        if not self.has_aux:
            return self.fun
        split, fun = self._split, self.fun

        @functools.wraps(fun)
        def value(x, /, *args, **kwargs):
            return split(fun(x, *args, **kwargs))[0]

        return value

    def aux(self, x: PyTree, /, *args, **kwargs) -> Any:
        """aux(x) with ``has_aux``, else None (an implicitly differentiated run gives
        ``state.aux`` the derivative of aux(x*(θ), θ): see ``solvers._state_fields``)."""
        if not self.has_aux:
            return None
        return self._split(self.fun(x, *args, **kwargs))[1]
