"""Fixed points x = T(x, *args): plain iteration and Anderson acceleration.

Both are differentiated through the fixed-point condition x = T(x, *args)
(:func:`implicitdiff.custom_fixed_point`), whose linear system (I − ∂₁T) u = ∂₂T v is solvable
when 1 is not an eigenvalue of ∂₁T at the solution (always so for a contraction).

The default ``tol`` (1e-6) is reachable in float32. The error of an implicit derivative is
proportional to the solution's: in float64, pass a smaller ``tol`` (1e-10, say) for derivatives
accurate to more digits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers._anderson import mixing_weights, slot_products
from implicitdiff.solvers._anderson import stack_slot as _stack_slot
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._objective import WithAux

__all__ = [
    "AndersonAcceleration",
    "AndersonState",
    "FixedPointIteration",
    "FixedPointState",
]


def _error(residual: PyTree, dtype: Any) -> jax.Array:
    # The stopping test needs no derivative, and sqrt has none at an exact zero.
    return tree.norm(jax.lax.stop_gradient(residual)).astype(dtype)


class _FixedPointFun:
    """Mixin of the solvers of x = T(x, *args), T their field ``fixed_point_fun`` (with the
    field ``has_aux``): its checks, its first evaluation, and their optimality condition."""

    _user_function = "fixed_point_fun"

    def _check_fixed_point_fun(self) -> None:
        """Check ``fixed_point_fun`` and ``has_aux``; set ``self._map``, T's value part."""
        name, fixed_point_fun = type(self).__name__, self.fixed_point_fun
        if not callable(fixed_point_fun):
            raise TypeError(f"{name}: fixed_point_fun must be callable, got {fixed_point_fun!r}")
        with_aux = WithAux(fixed_point_fun, self.has_aux, name, "fixed_point_fun")
        object.__setattr__(self, "_with_aux", with_aux)
        object.__setattr__(self, "_map", with_aux.value_fun())

    def _first_image(self, init_params, args, kwargs) -> PyTree:
        """T(x₀), checked to be shaped like x₀."""
        next_params = self._map(init_params, *args, **kwargs)
        _checks.check_like(
            init_params, next_params, type(self).__name__, "fixed_point_fun", "init_params"
        )
        return next_params

    def optimality(self):
        """The condition that the solution is differentiated through: x = T(x, *args).

        Returns:
          ``("fixed_point", T)``, T the value part of ``fixed_point_fun``.
        """
        return "fixed_point", self._map


class FixedPointState(NamedTuple):
    """iter_num, error = ‖T(x) − x‖ at the current x, converged, and T(x) (the next iterate)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    next_params: PyTree
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    aux: Any = None  # fixed_point_fun's aux at the current x (has_aux=True)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class FixedPointIteration(_FixedPointFun, IterativeSolver):
    """x = T(x, *args) by plain (Picard) iteration: x ← T(x, *args).

    ``run(init_params, *args, **kwargs)``, with ``fixed_point_fun(x, *args, **kwargs)`` returning
    a pytree like x. Converges (linearly, at the rate of the contraction factor) when T is a
    contraction in x; :class:`AndersonAcceleration` is usually much faster.

    Stops when ‖T(x) − x‖ ≤ tol (``state.error``, measured at the returned x: T(x) is computed
    once per iteration and kept in the state as the next iterate) or after ``maxiter``
    iterations. The solution is differentiated through x = T(x, *args)
    (:func:`implicitdiff.custom_fixed_point`).

    Attributes:
      fixed_point_fun: T(x, *args, **kwargs), a pytree like x; (T(x), aux) with ``has_aux``.
      has_aux: whether ``fixed_point_fun`` returns (T(x), aux); aux (at the returned x) is kept
        in ``state.aux`` and plays no part in the iteration or the derivative (False).
      maxiter, tol: stop when ‖T(x) − x‖ ≤ tol (default 1e-6) or after maxiter (1000) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.fixed_point import FixedPointIteration
      >>> T = lambda x, theta: 0.5 * jnp.cos(x) + theta
      >>> x, state = FixedPointIteration(fixed_point_fun=T).run(jnp.zeros(3), jnp.arange(3.0))
    """

    fixed_point_fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    maxiter: int = 1000
    has_aux: bool = False
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        self._check_fixed_point_fun()

    def init_state(self, init_params, /, *args, **kwargs) -> FixedPointState:
        """The state at ``init_params``: T evaluated there once.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fixed_point_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``FixedPointState``: iter_num 0, error ‖T(x₀) − x₀‖ and next_params = T(x₀).

        Raises:
          TypeError: T(x₀) is not shaped like x₀.
        """
        next_params = self._first_image(init_params, args, kwargs)
        return FixedPointState(
            iter_num=jnp.asarray(0),
            error=_error(tree.sub(next_params, init_params), tree.dtype(init_params)),
            converged=jnp.asarray(False),
            next_params=next_params,
            aux=self._with_aux.aux(init_params, *args, **kwargs),
        )

    def update(self, params, state: FixedPointState, /, *args, **kwargs) -> OptStep:
        """One iteration x⁺ = T(x), the state's next_params.

        T(x⁺) is evaluated for the error and the next step.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fixed_point_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (error ‖T(x⁺) − x⁺‖, next_params = T(x⁺)).
        """
        params = state.next_params
        next_params = self._map(params, *args, **kwargs)
        state = FixedPointState(
            iter_num=state.iter_num + 1,
            error=_error(tree.sub(next_params, params), state.error.dtype),
            converged=state.converged,
            next_params=next_params,
            aux=self._with_aux.aux(params, *args, **kwargs),
        )
        return OptStep(params, state)


class AndersonState(NamedTuple):
    """iter_num, error = ‖T(x) − x‖ at the current x, converged; the ring buffers of the last
    ``history_size`` iterates xᵢ (``params_history``) and residuals gᵢ = T(xᵢ) − xᵢ
    (``residuals_history``), pytrees whose leaves have a leading axis of length history_size,
    the current x and g being at index iter_num mod history_size; ``gram``, the matrix of
    ⟨gᵢ, gⱼ⟩ (entries of slots not yet filled are meaningless)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    params_history: PyTree
    residuals_history: PyTree
    gram: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    aux: Any = None  # fixed_point_fun's aux at the current x (has_aux=True)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class AndersonAcceleration(_FixedPointFun, IterativeSolver):
    """x = T(x, *args) by Anderson acceleration (type II, Walker & Ni 2011).

    ``run(init_params, *args, **kwargs)``, with ``fixed_point_fun(x, *args, **kwargs)`` returning
    a pytree like x. With the last m = min(k + 1, ``history_size``) iterates xᵢ and residuals
    gᵢ = T(xᵢ) − xᵢ kept in ring buffers, an extrapolation step is

        α = argmin_{Σαᵢ = 1} ‖Σᵢ αᵢ gᵢ‖² + λ Σᵢ αᵢ² ‖gᵢ‖²,   x ← Σᵢ αᵢ (xᵢ + β gᵢ),

    λ = ``ridge``: a Tikhonov term relative to each residual's size, so that it neither
    vanishes nor swamps the system as the residuals shrink by orders of magnitude. The weights
    solve the m × m system (G + λD) w = 1, α = w / Σw, G = [⟨gᵢ, gⱼ⟩], D = diag(G), in its
    Jacobi-scaled form D^-½ G D^-½ (unit diagonal, well-conditioned for a positive ridge). The
    Gram matrix is updated by one row per iteration. Every ``mixing_frequency``-th iteration
    extrapolates; the others take the damped step x ← x + β g. One evaluation of T per
    iteration; memory 2m copies of x.

    The mixed point is computed as x + βg + Σᵢ αᵢ((xᵢ + βgᵢ) − (x + βg)), x the newest iterate:
    the weights multiply differences that vanish at convergence, so that unrolled derivatives
    (``implicit_diff=False``, which differentiate α too) do not lose precision as the residuals
    shrink. ``ridge = 0`` can make the weights' system singular: keep it positive when unrolling.

    Stops when ‖T(x) − x‖ ≤ tol (``state.error``, at the returned x) or after ``maxiter``
    iterations. The solution is differentiated through x = T(x, *args)
    (:func:`implicitdiff.custom_fixed_point`).

    Attributes:
      fixed_point_fun: T(x, *args, **kwargs), a pytree like x; (T(x), aux) with ``has_aux``.
      has_aux: whether ``fixed_point_fun`` returns (T(x), aux); aux (at the returned x) is kept
        in ``state.aux`` and plays no part in the iteration or the derivative (False).
      history_size: m ≥ 1, the number of past iterates mixed (default 5).
      mixing_frequency: extrapolate every this many iterations (≥ 1, default 1: always).
      beta: β > 0, the damping of the residuals in the mixed step (default 1: undamped).
      ridge: λ ≥ 0, the relative Tikhonov regularization of the weights (default 1e-5).
      maxiter, tol: stop when ‖T(x) − x‖ ≤ tol (default 1e-6) or after maxiter (500) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.fixed_point import AndersonAcceleration
      >>> T = lambda x, theta: 0.5 * jnp.cos(x) + theta
      >>> solver = AndersonAcceleration(fixed_point_fun=T, history_size=3)
      >>> x, state = solver.run(jnp.zeros(3), jnp.arange(3.0))
    """

    fixed_point_fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    history_size: int = dataclasses.field(default=5, kw_only=False)
    mixing_frequency: int = dataclasses.field(default=1, kw_only=False)
    beta: float = dataclasses.field(default=1.0, kw_only=False)
    ridge: float = 1e-5
    maxiter: int = 500
    has_aux: bool = False
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        self._check_fixed_point_fun()
        for name in ("history_size", "mixing_frequency"):
            _checks.check_positive_int(getattr(self, name), name, "AndersonAcceleration")
        if not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise ValueError(f"AndersonAcceleration: beta must be > 0, got {self.beta!r}")
        if not (isinstance(self.ridge, (int, float)) and self.ridge >= 0):
            raise ValueError(f"AndersonAcceleration: ridge must be ≥ 0, got {self.ridge!r}")

    def _record(self, state_parts, position, params, residual):
        params_history, residuals_history, gram = state_parts
        params_history = _stack_slot(params_history, position, params)
        residuals_history = _stack_slot(residuals_history, position, residual)
        row = slot_products(residuals_history, residual).astype(gram.dtype)
        gram = gram.at[position, :].set(row).at[:, position].set(row)
        return params_history, residuals_history, gram

    def init_state(self, init_params, /, *args, **kwargs) -> AndersonState:
        """The state at ``init_params``: T evaluated there once, and the histories started.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fixed_point_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          An ``AndersonState``: iter_num 0, error ‖g₀‖ with g₀ = T(x₀) − x₀, the ring buffers
            (``history_size`` copies of x) holding x₀ and g₀ in slot 0, and their Gram matrix.

        Raises:
          TypeError: T(x₀) is not shaped like x₀.
        """
        m = self.history_size
        dtype = tree.dtype(init_params)
        next_params = self._first_image(init_params, args, kwargs)
        residual = tree.sub(next_params, init_params)
        empty = tree.map(lambda leaf: jnp.zeros((m, *jnp.shape(leaf)), leaf.dtype), init_params)
        params_history, residuals_history, gram = self._record(
            (empty, empty, jnp.zeros((m, m), dtype)), 0, init_params, residual
        )
        return AndersonState(
            iter_num=jnp.asarray(0),
            error=_error(residual, dtype),
            converged=jnp.asarray(False),
            params_history=params_history,
            residuals_history=residuals_history,
            gram=gram,
            aux=self._with_aux.aux(init_params, *args, **kwargs),
        )

    def _weights(self, gram: jax.Array, filled: jax.Array, newest: jax.Array) -> jax.Array:
        """α = argmin_{Σα = 1} ‖Σᵢαᵢgᵢ‖² + ridge Σᵢ αᵢ²‖gᵢ‖² over the filled slots."""
        return mixing_weights(gram, filled, newest, self.ridge)

    def update(self, params, state: AndersonState, /, *args, **kwargs) -> OptStep:
        """One iteration: the mixed point x⁺, then g⁺ = T(x⁺) − x⁺ recorded in the histories.

        x⁺ = Σᵢ αᵢ (xᵢ + β gᵢ) over the filled slots of the histories every ``mixing_frequency``-th
        iteration; the damped step x⁺ = x + β g otherwise, and always with ``history_size`` 1.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fixed_point_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (error ‖T(x⁺) − x⁺‖, the updated histories
            and Gram matrix).
        """
        m = self.history_size
        k = state.iter_num
        position = jnp.mod(k, m)
        residual = tree.map(lambda h: h[position], state.residuals_history)
        plain = tree.axpy(self.beta, residual, params)
        if m == 1:
            params = plain
        else:
            alpha = self._weights(state.gram, jnp.minimum(k + 1, m), position)

            # Σαᵢ(xᵢ + βgᵢ) written as x + βg + Σαᵢ((xᵢ + βgᵢ) − (x + βg)) (Σα = 1): the
            # weights multiply differences that vanish with the residuals, so that neither the
            # value nor its derivative (dα grows as the residuals shrink) loses precision.
            def mix(xs, gs, current):
                differences = xs + self.beta * gs - current
                return current + jnp.tensordot(alpha.astype(xs.dtype), differences, axes=1)

            mixed = tree.map(mix, state.params_history, state.residuals_history, plain)
            extrapolate = jnp.mod(k, self.mixing_frequency) == 0
            params = tree.where(extrapolate, mixed, plain)
        residual = tree.sub(self._map(params, *args, **kwargs), params)
        params_history, residuals_history, gram = self._record(
            (state.params_history, state.residuals_history, state.gram),
            jnp.mod(k + 1, m),
            params,
            residual,
        )
        state = AndersonState(
            iter_num=k + 1,
            error=_error(residual, state.error.dtype),
            converged=state.converged,
            params_history=params_history,
            residuals_history=residuals_history,
            gram=gram,
            aux=self._with_aux.aux(params, *args, **kwargs),
        )
        return OptStep(params, state)
