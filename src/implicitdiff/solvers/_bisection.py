"""Bisection, the root of a scalar function on a bracket: :class:`Bisection`, re-exported by
:mod:`implicitdiff.solvers.root` (whose docstring says how its solution is differentiated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._continuation import Continuation
from implicitdiff.solvers._failures import Status
from implicitdiff.solvers._objective import WithAux, describe_output

__all__ = ["Bisection", "BisectionState"]


def abs_error(value: PyTree, dtype: Any) -> jax.Array:
    # The stopping test needs no derivative, and sqrt has none at an exact zero.
    return tree.norm(jax.lax.stop_gradient(value)).astype(dtype)


class BisectionState(NamedTuple):
    """iter_num, error = |G(x)| at the current x, converged, value = G(x), the bracket
    [low, high] ∋ x, sign = ±1 (G increasing or decreasing across the bracket), and
    valid_bracket: whether G(lower) and G(upper) are finite and of opposite signs (or one is
    0). An invalid bracket stops the solver at once with x = NaN and converged = False."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    low: jax.Array
    high: jax.Array
    sign: jax.Array
    valid_bracket: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    aux: Any = None  # optimality_fun's aux at the current x (has_aux=True)

    __repr__ = _summary.namedtuple_repr


def _is_tracer(leaf: Any) -> bool:
    return isinstance(leaf, jax.core.Tracer)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Bisection(IterativeSolver):
    """The root of a scalar function G(x, *args) on [lower, upper] by bisection.

    ``run(init_params=None, *args, **kwargs)``: ``init_params`` is ignored (JAXopt's
    convention; the bracket is the start). G must change sign on the bracket (G(lower) and
    G(upper) of opposite signs; monotone G has a single root there). The iterate is the
    midpoint x = (low + high)/2 of the current bracket, from [lower, upper]; each iteration
    keeps the half on which G changes sign,

        low ← x if sign · G(x) < 0 else low,   high ← x if sign · G(x) ≥ 0 else high,

    (sign = +1 for G increasing across the bracket, −1 decreasing) and moves x to its midpoint:
    one evaluation of G per iteration, the bracket halved each time. Stops when |G(x)| ≤ tol
    (``state.error``), when the bracket cannot shrink any more in floating point (then
    ``converged`` is False unless |G(x)| ≤ tol), or after ``maxiter`` iterations.

    An invalid bracket (no sign change, or G not finite at an end) is never returned silently:
    the solver stops at once with x = NaN, ``state.valid_bracket = False`` and ``converged =
    False``; and with ``check_bracket=True`` (the default), when the arguments are concrete
    (not traced by ``jit``, ``vmap`` or ``grad``), ``run`` raises a ValueError naming lower and
    upper and the values of G there (this reads ``state.valid_bracket`` back to the host).

    The solution is differentiated through G(x, *args) = 0 (:func:`implicitdiff.custom_root`):
    dx/dθ = −∂₂G / ∂₁G. Unrolled (``implicit_diff=False``), the iterates are piecewise constant
    in θ (lower and upper are constants) and their derivative is 0; once the bisection has
    stopped, the derivative is carried on by one Newton step x − G(x)/∂₁G from the stopped
    iterate (values unchanged), which gives the same −∂₂G / ∂₁G (see ``_continuation``).

    Attributes:
      optimality_fun: G(x, *args, **kwargs), a scalar for a scalar x; (G(x), aux) with
        ``has_aux``.
      has_aux: whether ``optimality_fun`` returns (G(x), aux); aux (at the returned x) is kept
        in ``state.aux`` and plays no part in the iteration or the derivative (False).
      lower, upper: the bracket, lower < upper (finite numbers).
      check_bracket: raise on an invalid bracket when the arguments are concrete (default True).
      maxiter, tol: stop when |G(x)| ≤ tol (default 1e-6) or after maxiter (100) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.root import Bisection
      >>> G = lambda x, a: x**3 + x - a
      >>> x, state = Bisection(optimality_fun=G, lower=-5.0, upper=5.0).run(None, 2.0)  # x = 1
    """

    _user_function = "optimality_fun"

    optimality_fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    lower: float = dataclasses.field(default=0.0, kw_only=False)
    upper: float = dataclasses.field(default=0.0, kw_only=False)
    check_bracket: bool = True
    has_aux: bool = False
    maxiter: int = 100
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.optimality_fun):
            raise TypeError(
                f"Bisection: optimality_fun must be callable, got {self.optimality_fun!r}"
            )
        with_aux = WithAux(self.optimality_fun, self.has_aux, "Bisection", "optimality_fun")
        object.__setattr__(self, "_with_aux", with_aux)
        object.__setattr__(self, "_root_fun", with_aux.value_fun())
        for name in ("lower", "upper"):
            value = getattr(self, name)
            try:
                if isinstance(value, (bool, str, bytes)):
                    raise TypeError
                number = float(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"Bisection: {name} must be a real number (a Python, NumPy or concrete JAX "
                    f"scalar), got {value!r}"
                ) from None
            if not np.isfinite(number):
                raise ValueError(f"Bisection: {name} must be a finite number, got {value!r}")
        if not float(self.lower) < float(self.upper):
            raise ValueError(
                f"Bisection: lower must be < upper, got lower={self.lower!r}, upper={self.upper!r}"
            )

    def _value(self, x, args, kwargs) -> jax.Array:
        value = self._root_fun(x, *args, **kwargs)
        if isinstance(value, (tuple, list)):  # (value, aux) without has_aux
            raise TypeError(
                f"Bisection: optimality_fun must return a scalar, got {describe_output(value)}; "
                "pass has_aux=True for a function returning (value, aux)"
            )
        value = jnp.asarray(value)
        if value.shape != ():
            raise TypeError(
                f"Bisection: optimality_fun must return a scalar, got shape {value.shape}"
            )
        return value

    def init_state(self, init_params=None, /, *args, **kwargs) -> BisectionState:
        """The state at the start: G at lower, upper and their midpoint x₀, and the bracket.

        Args:
          init_params: ignored, as JAXopt's (the first iterate is the midpoint x₀ of [lower,
            upper]); None or a real scalar.
          *args: the arguments of ``optimality_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``BisectionState``: iter_num 0, error |G(x₀)|, G(x₀), the bracket [lower, upper], its
            sign (+1 for G increasing across it) and whether it is valid.

        Raises:
          TypeError: G does not return a scalar.
          ValueError: with ``check_bracket`` and concrete arguments, an invalid bracket (as
            JAXopt's ``init_state``), naming lower, upper and G there.
        """
        dtype = jnp.result_type(float)
        if init_params is not None:
            _dtypes.check_real_params(
                init_params, "Bisection.init_state", type(self)._COMPLEX_SOLVERS
            )
            if jnp.issubdtype(jnp.result_type(init_params), jnp.floating):
                dtype = jnp.result_type(init_params)
        low = jnp.asarray(self.lower, dtype)
        high = jnp.asarray(self.upper, dtype)
        value_low = self._value(low, args, kwargs)
        value_high = self._value(high, args, kwargs)
        valid = (
            jnp.isfinite(value_low)
            & jnp.isfinite(value_high)
            & (jnp.sign(value_low) * jnp.sign(value_high) <= 0)
        )
        if self.check_bracket and not _is_tracer(valid) and not bool(valid):
            self._bad_bracket(value_low, value_high)
        # Increasing across the bracket: G(upper) > 0 or G(lower) < 0.
        sign = jnp.where((value_high > 0) | (value_low < 0), 1.0, -1.0).astype(dtype)
        start = 0.5 * (low + high)
        value = self._value(start, args, kwargs)
        return BisectionState(
            iter_num=jnp.asarray(0),
            error=abs_error(value, dtype),
            converged=jnp.asarray(False),
            value=value,
            low=low,
            high=high,
            sign=sign,
            valid_bracket=valid,
            aux=self._with_aux.aux(start, *args, **kwargs),
        )

    def _bad_bracket(self, low_value, high_value):
        raise ValueError(
            f"Bisection: the bracket [lower={self.lower!r}, upper={self.upper!r}] is "
            f"invalid: G(lower) = {float(low_value):.6g} and G(upper) = "
            f"{float(high_value):.6g} must be finite and of opposite signs (or one "
            "zero). Widen or move lower/upper, or pass check_bracket=False to get "
            "state.valid_bracket = False instead."
        )

    def update(self, params, state: BisectionState, /, *args, **kwargs) -> OptStep:
        """One bisection step: the half of the bracket where G changes sign, x⁺ its midpoint.

        Args:
          params: ignored, as JAXopt's (None allowed): the current iterate x is the midpoint of
            the state's bracket.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``optimality_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (G and the error |G| at x⁺, the halved
            bracket).
        """
        # The iterate is the midpoint of [low, high] and state.value = G there: keep the half on
        # which G changes sign, then evaluate G at its midpoint.
        del params
        params = 0.5 * (state.low + state.high)
        below = state.sign * state.value < 0  # the root is above params
        low = jnp.where(below, params, state.low)
        high = jnp.where(below, state.high, params)
        x = 0.5 * (low + high)
        value = self._value(x, args, kwargs)
        state = state._replace(
            iter_num=state.iter_num + 1,
            error=abs_error(value, state.error.dtype),
            value=value,
            low=low,
            high=high,
            aux=self._with_aux.aux(x, *args, **kwargs),
        )
        return OptStep(x, state)

    def _continuation(self, /, *args, **kwargs) -> Continuation:
        """Unrolling's derivative continuation (see ``UnrolledLoop._unrolled``): Newton's step

            T(x) = x − s · η · G(x),    η = 1/|∂₁G(x_stop)|,  s = sign ∂₁G(x),

        η computed once at the stopped iterate, on values cut from the graph. The bisection
        iterates are piecewise constant in θ (their derivative is 0); one step of T from the
        stopped iterate carries the derivative to −∂₂G/∂₁G (exactly, for η from that iterate),
        the implicit derivative, while the values returned stay those of the bisection. A zero
        slope at the root (no derivative there) gives a NaN derivative, not a silent 0.
        """

        value = self._value

        def slope(x, args, kwargs):
            return jax.jvp(lambda y: value(y, args, kwargs), (x,), (jnp.ones_like(x),))[1]

        def stepsize(x):
            x, cut_args, cut_kwargs = jax.lax.stop_gradient((x, args, kwargs))
            return 1.0 / jnp.abs(slope(x, cut_args, cut_kwargs))

        def step(x, eta):
            sign = jnp.sign(jax.lax.stop_gradient(slope(x, args, kwargs)))
            return (x - sign * eta.astype(x.dtype) * value(x, args, kwargs)).astype(x.dtype)

        return Continuation(stepsize, step)

    def _done(self, state) -> jax.Array:
        midpoint = 0.5 * (state.low + state.high)
        collapsed = (midpoint <= state.low) | (midpoint >= state.high)
        return super()._done(state) | collapsed | jnp.logical_not(state.valid_bracket)

    def _finish(self, params, state):
        params = _checks.nan_unless(state.valid_bracket, params)
        params, state = super()._finish(params, state)
        return params, state._replace(
            converged=state.converged & state.valid_bracket,
            status=jnp.where(state.valid_bracket, state.status, Status.INVALID_INPUT),
        )

    def optimality(self):
        """The condition that the solution is differentiated through: G(x, *args) = 0.

        Returns:
          ``("root", G)``, G the value part of ``optimality_fun``.
        """
        return "root", self._root_fun

    def run(self, init_params: Any = None, *args, **kwargs) -> OptStep:
        """Solve on [lower, upper]; ``init_params`` is ignored (a complex one is refused).

        Args:
          init_params: ignored (JAXopt's convention; the start is the bracket's midpoint).
          *args: the arguments of ``optimality_fun`` after x (differentiable).
          **kwargs: its keyword arguments.

        Returns:
          ``OptStep(x, state)``: the root x, a scalar in the default float dtype (NaN for an invalid
            bracket), and the ``BisectionState``.

        Raises:
          ValueError: with ``check_bracket``, concrete arguments and an invalid bracket (naming
            lower, upper and G there).
        """
        _dtypes.check_real_params(init_params, "Bisection.run", type(self)._COMPLEX_SOLVERS)
        del init_params
        dtype = jnp.result_type(float)
        start = jnp.asarray(0.5 * (float(self.lower) + float(self.upper)), dtype)
        result = super().run(start, *args, **kwargs)
        if self.check_bracket:
            valid = result.state.valid_bracket
            if not _is_tracer(valid) and not bool(valid):
                low_value = self._root_fun(self.lower, *args, **kwargs)
                high_value = self._root_fun(self.upper, *args, **kwargs)
                self._bad_bracket(low_value, high_value)
        return result
