"""Roots G(x, *args) = 0: Broyden's method (systems) and bisection (scalars, defined in
:mod:`implicitdiff.solvers._bisection` and re-exported here).

Both are differentiated through the root condition G(x, *args) = 0
(:func:`implicitdiff.custom_root`): dx/dθ = −(∂₁G)⁻¹ ∂₂G at the root, which needs ∂₁G
non-singular there (a simple root).

The default ``tol`` (1e-6) is reachable in float32. The error of an implicit derivative is
proportional to the solution's: in float64, pass a smaller ``tol`` (1e-10, say) for derivatives
accurate to more digits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from implicitdiff import _linesearch, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._bisection import Bisection, BisectionState, abs_error
from implicitdiff.solvers._objective import WithAux

__all__ = ["Bisection", "BisectionState", "Broyden", "BroydenState"]


# ---------------------------------------------------------------------------------------------
# Broyden


class BroydenState(NamedTuple):
    """iter_num, error = ‖G(x)‖ at the current x, converged, value = G(x) (flattened),
    inverse_jacobian = H ≈ (∂₁G)⁻¹ on the flattened x (n × n), stepsize = the last accepted step
    size t (0 when the last line search failed and H was reset), status, direction = −H G(x),
    the next step (kept up to date with H: one product with H per iteration is saved)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    inverse_jacobian: jax.Array
    stepsize: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    direction: jax.Array | None = None
    aux: Any = None  # fun's aux at the current x (has_aux=True)


_INITS = ("exact", "identity")
_SEARCH = "the step along the Broyden direction is halved until ||G|| decreases (max_backtracks=)"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Broyden(IterativeSolver):
    """G(x, *args) = 0 by Broyden's ("good") method with a dense inverse-Jacobian estimate.

    ``run(init_params, *args, **kwargs)``, with ``fun(x, *args, **kwargs)`` returning a pytree
    like x. On the flattened x (n unknowns), H ≈ (∂₁G)⁻¹ is an n × n matrix: the step is
    d = −H G(x), x⁺ = x + t d, and with s = x⁺ − x, y = G(x⁺) − G(x) the inverse is updated by
    Sherman–Morrison so that the secant equation H⁺ y = s holds:

        H⁺ = H + (s − H y) sᵀH / (sᵀH y)   (skipped when |sᵀHy| ≤ √eps ‖s‖ ‖Hy‖).

    H₀ is, with ``init_jacobian="exact"`` (the default), the inverse of the exact Jacobian at
    ``init_params`` (``jax.jacfwd``: n JVPs and an n × n inversion, right for small and medium
    n), or with ``"identity"``, ``gamma`` · I (no Jacobian ever: then G should be close to
    x/gamma + const, as x − T(x) for a contraction T with gamma = 1).

    Safeguard: t halves from 1 until ‖G(x + t d)‖² ≤ (1 − 2·10⁻⁴ t) ‖G(x)‖² (at most
    ``max_backtracks`` halvings). When no trial passes (d is not a descent direction for
    ‖G‖², which happens when H is a poor model), x is kept and H is reset (to the exact inverse
    Jacobian at x with ``"exact"``, whose Newton direction is one; to gamma · I otherwise). The
    search runs on values cut from the graph and t is a constant for the derivative, so that
    unrolled derivatives (``implicit_diff=False``) stay finite.

    Memory n² and time O(n²) per iteration (plus the initial O(n³)): use for systems of up to a
    few thousand unknowns. Each iteration evaluates G once when the full step is accepted (the
    search's accepted trial value is kept; with ``implicit_diff=False``, whose iterations are
    differentiated, G is evaluated again at the accepted point so that no derivative flows
    through a rejected trial) and multiplies by H twice: H G(x⁺) and Hᵀs; H y = H G(x⁺) − H G(x)
    and the next direction −H⁺G(x⁺) follow from them in O(n).

    Stops when ‖G(x)‖ ≤ tol (``state.error``) or after ``maxiter`` iterations. The solution is
    differentiated through G(x, *args) = 0 (:func:`implicitdiff.custom_root`).

    Attributes:
      fun: G(x, *args, **kwargs), a pytree like x; (G(x), aux) with ``has_aux``.
      has_aux: whether ``fun`` returns (G(x), aux); aux (at the returned x: one more evaluation
        of ``fun`` per iteration) is kept in ``state.aux`` and plays no part in the iteration or
        the derivative (False).
      init_jacobian: ``"exact"`` (default) or ``"identity"``, see above.
      gamma: H₀ = gamma · I with ``init_jacobian="identity"`` (≠ 0, default 1).
      max_backtracks: the most halvings of the step in the safeguard (≥ 0, default 20).
      maxiter, tol: stop when ‖G(x)‖ ≤ tol (default 1e-6) or after maxiter (100) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.root import Broyden
      >>> G = lambda x, theta: jnp.array([x[0] ** 2 - theta[0], x[0] * x[1] - theta[1]])
      >>> x, state = Broyden(fun=G).run(jnp.ones(2), jnp.array([4.0, 6.0]))  # x = (2, 3)
    """

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    has_aux: bool = dataclasses.field(default=False, kw_only=False)
    init_jacobian: str = "exact"
    gamma: float = 1.0
    max_backtracks: int = 20
    maxiter: int = 100
    tol: float = 1e-6

    # JAXopt's line-search options of Broyden, refused with what this Broyden does instead.
    _jaxopt_refused: ClassVar[dict[str, str]] = {
        **{
            name: f"no line search object here: {_SEARCH}"
            for name in (
                "stepsize",
                "linesearch",
                "condition",
                "maxls",
                "decrease_factor",
                "increase_factor",
                "max_stepsize",
                "min_stepsize",
            )
        },
        "stop_if_linesearch_fails": "a failed safeguard ends the run with converged=False",
        "history_size": (
            "the inverse-Jacobian estimate is dense (n x n); for large n use AndersonAcceleration "
            "on x + G(x), or ScipyRootFinding(method='broyden1')"
        ),
    }

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"Broyden: fun must be callable, got {self.fun!r}")
        with_aux = WithAux(self.fun, self.has_aux, "Broyden", "fun")
        object.__setattr__(self, "_with_aux", with_aux)
        object.__setattr__(self, "_root_fun", with_aux.value_fun())
        if self.init_jacobian not in _INITS:
            raise ValueError(
                f"Broyden: init_jacobian must be one of {_INITS}, got {self.init_jacobian!r}"
            )
        if not (isinstance(self.gamma, (int, float)) and self.gamma != 0):
            raise ValueError(f"Broyden: gamma must be a non-zero number, got {self.gamma!r}")
        if not (
            isinstance(self.max_backtracks, int)
            and not isinstance(self.max_backtracks, bool)
            and self.max_backtracks >= 0
        ):
            raise ValueError(
                f"Broyden: max_backtracks must be an int ≥ 0, got {self.max_backtracks!r}"
            )

    def _flat_fun(self, params: PyTree, args: tuple, kwargs: dict) -> Callable:
        _, unravel = ravel_pytree(params)

        def flat_fun(x):
            # G's value in the params' dtype, whatever dtype fun computes in (see _dtypes).
            value = self._root_fun(unravel(x), *args, **kwargs)
            return ravel_pytree(_dtypes.cast_like(value, unravel(x)))[0]

        return flat_fun

    def _initial_inverse(self, flat_fun: Callable, x: jax.Array) -> jax.Array:
        n = x.shape[0]
        if self.init_jacobian == "exact":
            return jnp.linalg.inv(jax.jacfwd(flat_fun)(x))
        return self.gamma * jnp.eye(n, dtype=x.dtype)

    def init_state(self, init_params, /, *args, **kwargs) -> BroydenState:
        """The state at ``init_params``: G evaluated there, and the first inverse-Jacobian estimate.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``BroydenState``: iter_num 0, error ‖G(x₀)‖, G(x₀) (flattened), H₀ (the exact inverse
            Jacobian at x₀, or gamma · I) and the direction −H₀G(x₀).

        Raises:
          TypeError: G(x₀) has not as many entries as x₀.
        """
        flat_fun = self._flat_fun(init_params, args, kwargs)
        x, _ = ravel_pytree(init_params)
        value = flat_fun(x)
        if value.shape != x.shape:
            raise TypeError(
                f"Broyden: fun must return a pytree of the size of x ({x.shape[0]} entries), "
                f"got {value.shape[0]}"
            )
        dtype = tree.dtype(init_params)
        h = self._initial_inverse(flat_fun, x).astype(x.dtype)
        return BroydenState(
            iter_num=jnp.asarray(0),
            error=abs_error(value, dtype),
            converged=jnp.asarray(False),
            value=value,
            inverse_jacobian=h,
            stepsize=jnp.asarray(1.0, dtype),
            direction=-h @ value,
            aux=self._with_aux.aux(init_params, *args, **kwargs),
        )

    def _line_search(self, flat_fun, x, value, direction):
        """The accepted step size t (a constant), whether the search succeeded, and G at the
        last trial x + t·direction (cut from the graph)."""
        sg = jax.lax.stop_gradient
        x, value, direction = sg(x), sg(value), sg(direction)
        norm2 = jnp.vdot(value, value)

        def accept(t):
            trial_value = flat_fun(x + t * direction)
            trial_norm2 = jnp.real(jnp.vdot(trial_value, trial_value))
            ok = jnp.isfinite(trial_norm2) & (trial_norm2 <= (1.0 - 2e-4 * t) * norm2)
            return ok, trial_value

        one = jnp.asarray(1.0, x.dtype)
        first_ok, first_value = accept(one)

        def backtrack():
            if self.max_backtracks == 0:  # no safeguard: only the full step is tried
                return one, first_ok, first_value
            t, ok, trial_value, _ = _linesearch.shrink(
                accept, 0.5 * one, factor=0.5, maxiter=self.max_backtracks
            )
            return t, ok, trial_value

        t, ok, trial_value = jax.lax.cond(first_ok, lambda: (one, first_ok, first_value), backtrack)
        # G at the full step is returned too: a rejected full step still updates the model.
        return sg(t), sg(ok), sg(trial_value), sg(first_value)

    def update(self, params, state: BroydenState, /, *args, **kwargs) -> OptStep:
        """One iteration: the safeguarded step x⁺ = x + td, then the Broyden update of H.

        d = −HG(x) is the state's direction; x is kept when the search fails, and then H is reset
        (see the class).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (G and the error ‖G‖ at x⁺, H, t (0 after a
            failed search), the next direction).
        """
        flat_fun = self._flat_fun(params, args, kwargs)
        x, unravel = ravel_pytree(params)
        h, value = state.inverse_jacobian, state.value
        direction = -h @ value if state.direction is None else state.direction
        t, ok, trial_value, full_value = self._line_search(flat_fun, x, value, direction)

        x_new = jnp.where(ok, x + t * direction, x)
        if self.implicit_diff:  # iterations never differentiated: keep the search's value
            value_new = jnp.where(ok, trial_value, value)
        else:  # differentiated at the accepted point only (never at a rejected trial)
            value_new = flat_fun(x_new)
        # The secant pair: the step taken; after a failed search, the rejected full step
        # (s = d, y = G(x + d) − G(x)), so that the model still learns where it was wrong
        # (resetting it to the same γI would repeat the same failed direction for ever).
        rejected = jax.lax.stop_gradient(jnp.logical_not(ok) & jnp.all(jnp.isfinite(full_value)))
        s = jnp.where(rejected, direction, x_new - x)
        secant_value = jnp.where(rejected, full_value, value_new)
        h_secant_value = h @ secant_value
        h_value_new = jnp.where(ok, h_secant_value, -direction)  # H G(x⁺); H G(x) = −direction
        hy = h_secant_value + direction  # H y = H G(x + s) − H G(x)
        sh = s @ h
        denominator = jnp.vdot(s, hy)
        eps = jnp.finfo(x.dtype).eps
        secant = (ok | rejected) & (
            jnp.abs(denominator) > jnp.sqrt(eps) * jnp.linalg.norm(s) * jnp.linalg.norm(hy)
        )
        # H⁺ = H + u shᵀ with u = (s − Hy)/(sᵀHy), and H⁺G(x⁺) = H G(x⁺) + u (shᵀG(x⁺)).
        u = jnp.where(secant, 1.0, 0.0) * (s - hy) / jnp.where(secant, denominator, 1.0)
        updated = (h + jnp.outer(u, sh), -(h_value_new + u * jnp.vdot(sh, value_new)))

        def reset():  # a failed search: a new model where x stands (x did not move)
            h0 = self._initial_inverse(flat_fun, x).astype(h.dtype)
            return h0, -h0 @ value

        # "exact": a failed search resets to the exact inverse Jacobian (a Newton direction,
        # which descends); "identity": the secant update from the rejected step, when it exists.
        keep = ok | (secant & (self.init_jacobian == "identity"))
        h_new, direction_new = jax.lax.cond(keep, lambda: updated, reset)
        state = state._replace(
            iter_num=state.iter_num + 1,
            error=abs_error(value_new, state.error.dtype),
            value=value_new,
            inverse_jacobian=h_new,
            stepsize=jnp.where(ok, t, 0.0).astype(state.stepsize.dtype),
            direction=direction_new,
            aux=self._with_aux.aux(unravel(x_new), *args, **kwargs),
        )
        return OptStep(unravel(x_new), state)

    def optimality(self):
        """The condition that the solution is differentiated through: G(x, *args) = 0.

        Returns:
          ``("root", G)``, G the value part of ``fun``.
        """
        return "root", self._root_fun
