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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from implicitdiff import _checks, _linesearch, _loop, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._bisection import Bisection, BisectionState, abs_error
from implicitdiff.solvers._line_search_solver import StopIfLinesearchFails
from implicitdiff.solvers._objective import WithAux, check_stepsize, scheduled_stepsize
from implicitdiff.solvers.linesearch import BacktrackingLineSearch

__all__ = ["Bisection", "BisectionState", "Broyden", "BroydenState"]


# ---------------------------------------------------------------------------------------------
# Broyden


def _no_fun(x, /, *args, **kwargs):
    """The ``fun`` of Broyden's search object, never called (its ``search`` gets φ itself)."""
    raise NotImplementedError


class BroydenState(NamedTuple):
    """iter_num, error = ‖G(x)‖ at the current x, converged, value = G(x) (flattened),
    inverse_jacobian = H ≈ (∂₁G)⁻¹ on the flattened x (n × n), stepsize = the last accepted step
    size t (0 when the last line search failed and H was reset), status, direction = −H G(x),
    the next step (kept up to date with H: one product with H per iteration is saved), aux,
    failed_linesearch (the last search failed), and with ``history_size`` = m the last m
    update terms c dᵀ of H (``c_history``, ``d_history``, m × n; None otherwise)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    inverse_jacobian: jax.Array
    stepsize: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    direction: jax.Array | None = None
    aux: Any = None  # fun's aux at the current x (has_aux=True)
    failed_linesearch: jax.Array | bool = False  # the last search found no acceptable step
    c_history: jax.Array | None = None  # with history_size: the last updates H += c dᵀ, (m, n)
    d_history: jax.Array | None = None

    __repr__ = _summary.namedtuple_repr


_INITS = ("exact", "identity")
# JAXopt's defaults of its line-search options, used once one of them is given.
_JAXOPT_SEARCH = {
    "linesearch": "backtracking",
    "condition": "wolfe",
    "maxls": 15,
    "decrease_factor": 0.8,
    "increase_factor": 1.5,
    "max_stepsize": 1.0,
    "min_stepsize": 1e-6,
}
# JAXopt runs its search with this slack on the conditions (a constant, not an option).
_JAXOPT_SEARCH_TOL = 1e-2


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Broyden(StopIfLinesearchFails, IterativeSolver):
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

    JAXopt's step options (their meaning is JAXopt's): ``stepsize`` > 0, or a callable
    ``stepsize(iter_num)``, takes x⁺ = x + t d with that t and no search. Giving any of
    ``linesearch`` ("backtracking"), ``condition``, ``maxls``, ``decrease_factor``,
    ``increase_factor``, ``max_stepsize``, ``min_stepsize`` replaces the safeguard by JAXopt's
    search: :class:`BacktrackingLineSearch` on φ(x) = ‖G(x)‖² (its gradient 2 ∂₁Gᵀ G by a VJP
    per trial) under ``condition`` ("armijo", "goldstein", "wolfe" (its default) or
    "strong-wolfe", with JAXopt's slack 10⁻² on each inequality), at most ``maxls`` trials
    shrinking by ``decrease_factor``, the first trial ``increase_factor`` × the last t (or
    ``max_stepsize`` once t ≤ ``min_stepsize``), never above ``max_stepsize``; the unset ones
    take JAXopt's defaults (wolfe, 15, 0.8, 1.5, 1.0, 1e-6). As in JAXopt, a failed search
    still moves x by its last trial and updates H. ``stop_if_linesearch_fails`` ends the run
    at a failed search (the safeguard's or JAXopt's; ``state.failed_linesearch``, status
    STALLED). ``history_size`` = m keeps only the last m updates of H (JAXopt's limited
    memory): H = H₀ + Σ of the last m terms c dᵀ, each computed when it was made; here H stays
    a dense matrix (the oldest term is subtracted), so the iterates are JAXopt's but the memory
    is still n² (m n more for the terms).

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
      stepsize: 0 (default): a search; t > 0 or a callable ``stepsize(iter_num)``: that step.
      linesearch, condition, maxls, decrease_factor: JAXopt's search, see above (None: not
        given; all of these and the next three None: the safeguard).
      increase_factor, max_stepsize, min_stepsize: JAXopt's search too, see above (None).
      stop_if_linesearch_fails: end the run at a failed search (False).
      history_size: keep the last m updates of H (None, the default: all of them).
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
    stepsize: float | Callable = 0.0
    linesearch: str | None = None
    stop_if_linesearch_fails: bool = False
    condition: str | None = None
    maxls: int | None = None
    decrease_factor: float | None = None
    increase_factor: float | None = None
    max_stepsize: float | None = None
    min_stepsize: float | None = None
    history_size: int | None = None

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
        check_stepsize("Broyden", self.stepsize)
        self._check_stop_if_linesearch_fails("Broyden")
        if self.history_size is not None and not (
            isinstance(self.history_size, int)
            and not isinstance(self.history_size, bool)
            and self.history_size >= 1
        ):
            raise ValueError(
                f"Broyden: history_size must be None or an int ≥ 1, got {self.history_size!r}"
            )
        object.__setattr__(self, "_search", self._jaxopt_search())

    def _jaxopt_search(self) -> dict | None:
        """JAXopt's search options (the given ones, JAXopt's defaults for the rest), or None for
        the safeguard (none given)."""
        given = {name: getattr(self, name) for name in _JAXOPT_SEARCH}
        if all(value is None for value in given.values()):
            return None
        options = {
            name: _JAXOPT_SEARCH[name] if value is None else value for name, value in given.items()
        }
        if options["linesearch"] != "backtracking":
            raise ValueError(
                "Broyden: linesearch must be 'backtracking' (JAXopt's only search for Broyden) "
                f"or None (the safeguard), got {options['linesearch']!r}"
            )
        if options["max_stepsize"] <= 0 or options["min_stepsize"] < 0:
            raise ValueError(
                "Broyden: max_stepsize must be > 0 and min_stepsize ≥ 0, got "
                f"{options['max_stepsize']!r}, {options['min_stepsize']!r}"
            )
        if not options["increase_factor"] > 0:
            raise ValueError(
                f"Broyden: increase_factor must be > 0, got {options['increase_factor']!r}"
            )
        maxls = options["maxls"]
        _checks.check_positive_int(maxls, "maxls", "Broyden")
        # The search object checks condition and decrease_factor (naming them).
        options["search"] = BacktrackingLineSearch(
            fun=_no_fun,
            condition=options["condition"],
            maxiter=options["maxls"],
            decrease_factor=options["decrease_factor"],
            max_stepsize=options["max_stepsize"],
            tol=_JAXOPT_SEARCH_TOL,
        )
        return options

    def _fixed_step(self) -> bool:
        return callable(self.stepsize) or self.stepsize > 0

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
            jacobian = _checks.half_to_float32(jax.jacfwd(flat_fun)(x))
            return jnp.linalg.inv(jacobian).astype(x.dtype)
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
        history = None
        if self.history_size is not None:
            history = jnp.zeros((self.history_size, x.shape[0]), x.dtype)
        first = 1.0 if self._search is None else self._search["max_stepsize"]
        return BroydenState(
            iter_num=jnp.asarray(0),
            error=abs_error(value, dtype),
            converged=jnp.asarray(False),
            value=value,
            inverse_jacobian=h,
            stepsize=jnp.asarray(first, dtype),
            direction=-h @ value,
            aux=self._with_aux.aux(init_params, *args, **kwargs),
            failed_linesearch=jnp.asarray(False),
            c_history=history,
            d_history=history,
        )

    def _step(self, flat_fun, x, value, direction, state):
        """(t, ok, G at the last trial, G at the full step): the fixed step, JAXopt's search or
        the safeguard. ``ok`` False means a failed search (x is kept only by the safeguard)."""
        if self._fixed_step():
            t = scheduled_stepsize(self.stepsize, state.iter_num, x.dtype, "Broyden")
            trial_value = jax.lax.stop_gradient(flat_fun(jax.lax.stop_gradient(x + t * direction)))
            return t, jnp.asarray(True), trial_value, trial_value
        if self._search is None:
            return self._line_search(flat_fun, x, value, direction)
        return self._jaxopt_line_search(flat_fun, x, value, direction, state.stepsize)

    def _jaxopt_line_search(self, flat_fun, x, value, direction, previous):
        """JAXopt's backtracking search on φ = ‖G‖² (see the class), on values cut from the
        graph: (t, ok, G at x + t d, G there again)."""
        options, sg = self._search, jax.lax.stop_gradient
        x, value, direction, previous = sg((x, value, direction, previous))

        def phi_with_value(z):
            g = flat_fun(z)
            return jnp.real(jnp.vdot(g, g)), g

        def phi_value_and_grad(z):
            (phi, _), grad = jax.value_and_grad(phi_with_value, has_aux=True)(z)
            return phi, grad

        phi0, grad0 = phi_value_and_grad(x)
        restart = previous <= options["min_stepsize"]
        first = jnp.where(
            restart, options["max_stepsize"], previous * options["increase_factor"]
        ).astype(x.dtype)
        found = options["search"].search(phi_value_and_grad, x, phi0, grad0, direction, first)
        t = found.stepsize.astype(x.dtype)
        trial_value = sg(flat_fun(x + t * direction))
        return t, sg(jnp.logical_not(found.failed)), trial_value, trial_value

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

        t, ok, trial_value = _loop.cond(first_ok, lambda: (one, first_ok, first_value), backtrack)
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
        t, ok, trial_value, full_value = self._step(flat_fun, x, value, direction, state)
        search_ok = ok
        moves = ok | (self._search is not None)  # JAXopt's search moves even when it failed
        ok = moves  # (and then updates H as after a success)

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
        c_history, d_history = state.c_history, state.d_history
        if self.history_size is not None:
            # Limited memory: the new term u shᵀ replaces the oldest of the last m.
            slot = state.iter_num % self.history_size
            c_new = jnp.where(secant, u, 0.0)
            h_dropped = h - jnp.outer(c_history[slot], d_history[slot])
            c_kept = c_history.at[slot].set(c_new)
            d_kept = d_history.at[slot].set(jnp.where(secant, sh, 0.0))
            h_limited = h_dropped + jnp.outer(c_new, sh)
            updated = (h_limited, -(h_limited @ value_new))
            c_history, d_history = _loop.cond(
                keep, lambda: (c_kept, d_kept), lambda: (0.0 * c_history, 0.0 * d_history)
            )
        h_new, direction_new = _loop.cond(keep, lambda: updated, reset)
        state = state._replace(
            iter_num=state.iter_num + 1,
            error=abs_error(value_new, state.error.dtype),
            value=value_new,
            inverse_jacobian=h_new,
            stepsize=jnp.where(ok, t, 0.0).astype(state.stepsize.dtype),
            direction=direction_new,
            aux=self._with_aux.aux(unravel(x_new), *args, **kwargs),
            failed_linesearch=jnp.logical_not(search_ok),
            c_history=c_history,
            d_history=d_history,
        )
        return OptStep(unravel(x_new), state)

    def optimality(self):
        """The condition that the solution is differentiated through: G(x, *args) = 0.

        Returns:
          ``("root", G)``, G the value part of ``fun``.
        """
        return "root", self._root_fun
