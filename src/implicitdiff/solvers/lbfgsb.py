"""LBFGSB: limited-memory quasi-Newton minimization under box constraints.

A projected L-BFGS: the L-BFGS direction on the variables that are free, a scaled gradient step
on those held at a bound, and a backtracking search along the projection arc (the projected
quasi-Newton scheme of Bertsekas, 1982, with an L-BFGS matrix as in Kim, Sra & Dhillon, 2010).
It is not the generalized-Cauchy-point algorithm of Byrd, Lu, Nocedal & Zhu (1995) that SciPy's
L-BFGS-B implements; both converge to first-order (KKT) points of the box-constrained problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from implicitdiff import _checks, _summary, tree
from implicitdiff import _projection_ops as projections
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._continuation import gradient_continuation
from implicitdiff.solvers._jaxopt_options import warn_deprecated_search_options
from implicitdiff.solvers._lbfgsb_parts import (
    arc_backtracking,
    box_or_unbounded,
    first_scaling,
    flat_bounds,
    two_loop_free,
)
from implicitdiff.solvers._line_search_solver import StopIfLinesearchFails
from implicitdiff.solvers._objective import (
    LINESEARCH_INITS,
    Objective,
    check_objective_options,
    check_stepsize,
    first_trial,
    scheduled_stepsize,
)

__all__ = ["LBFGSB", "LBFGSBState"]


class LBFGSBState(NamedTuple):
    """iter_num; error = ‖x − P(x − ∇f(x))‖ (the projected gradient); converged; f(x) and ∇f(x)
    (flattened); the last step α; the circular history of the last pairs s = Δx, y = Δ∇f with
    ρ = 1/⟨s, y⟩ (zeros in empty slots), the slot of the newest pair, and the scaling γ of the
    initial inverse Hessian (⟨s, y⟩/⟨y, y⟩ of the newest pair; min(1, 1/‖∇f‖) without one)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    grad: jax.Array
    stepsize: jax.Array
    s_history: jax.Array
    y_history: jax.Array
    rho_history: jax.Array
    newest: jax.Array
    gamma: jax.Array
    aux: Any = None  # fun's auxiliary output at x with has_aux=True
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    failed_linesearch: jax.Array | bool = False  # the last search found no acceptable step

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LBFGSB(StopIfLinesearchFails, IterativeSolver):
    """min_x fun(x, *args) subject to lower ≤ x ≤ upper, by projected L-BFGS.

    ``run(init_params, bounds, *args, **kwargs)`` with ``bounds = (lower, upper)``, as in JAXopt;
    each bound is a scalar, an array broadcasting to every leaf of the params, or a pytree like
    them, and may hold ±inf (no bound). Each iteration, with g = ∇f(x), P the projection onto the
    box and γ = ⟨s, y⟩/⟨y, y⟩ of the newest pair in the history (min(1, 1/‖g‖) without one):

    1. the binding variables B are those that the scaled gradient step x − γg would carry onto
       or past their bound (x − lower ≤ γg with g > 0, or upper − x ≤ −γg with g < 0); the
       others are free (F);
    2. the direction is d = −H_F Π_F g − γ Π_B g: on the free variables, the L-BFGS inverse
       Hessian H_F of the last ``history_size`` pairs (s, y) restricted to those variables
       (two-loop recursion; a pair whose restriction has ⟨s_F, y_F⟩ ≤ 0 is skipped; initial
       matrix ⟨s_F, y_F⟩/⟨y_F, y_F⟩ I of the newest pair, else γI), and a scaled gradient step
       on the binding ones;
    3. x⁺ = P(x + α d) with α the first of 1, ½, ¼, … giving the Armijo decrease
       f(x⁺) ≤ f(x) + 10⁻⁴⟨g, x⁺ − x⟩ along the projection arc, up to the rounding of f
       (a constant in the derivative, as in :mod:`implicitdiff._linesearch`);
    4. the pair s = x⁺ − x, y = ∇f(x⁺) − g joins the history when ⟨s, y⟩ > 10⁻¹⁰‖y‖². When
       it does not (negative curvature of a non-convex f), when the search failed (30 halvings,
       a negligible move) or when d was not a descent direction (then replaced by −g), the
       memory is cleared instead and the next direction is the projected gradient step.

    This is the projected quasi-Newton method of Bertsekas (1982) with the L-BFGS matrix (Kim, Sra
    & Dhillon, 2010), not SciPy's generalized Cauchy point + subspace minimization; both reach the
    same first-order solutions. The loop stops when the projected gradient ‖x − P(x − ∇f(x))‖ ≤
    ``tol``. The solution is differentiated through the fixed point x = P(x − ∇₁f(x, *args),
    bounds) (:func:`implicitdiff.optimality.projected_gradient` with
    :func:`implicitdiff.projections.box` and η = 1), also with respect to the bounds.

    ``bounds=None`` means no bound (−inf, inf), as in JAXopt.

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar; x a pytree of arrays. (f, aux) with
        ``has_aux``, (f, ∇f) with ``value_and_grad`` (((f, aux), ∇f) with both), as in JAXopt.
      value_and_grad: whether ``fun`` returns its gradient too (False).
      has_aux: whether ``fun`` returns an auxiliary output, kept in ``state.aux`` (False).
      stepsize: 0 (default) for the search of step 3; α > 0 fixed, or a callable
        ``stepsize(iter_num)``, for x⁺ = P(x + αd) without a search.
      linesearch: ``"backtracking"`` (default), or JAXopt's ``"zoom"`` and ``"hager-zhang"``,
        which run the same search: along the projection arc, which has kinks where variables
        reach a bound, the Wolfe curvature conditions of those searches do not apply, and step 3
        is the search that converges here.
      linesearch_init: the first trial α of each search: None (default) for 1, the quasi-Newton
        step; JAXopt's ``"increase"`` (``increase_factor`` × the last α, or ``max_stepsize``
        once it is ≤ ``min_stepsize``), ``"max"`` (``max_stepsize``) or ``"current"`` (the last
        α); never more than ``max_stepsize``.
      maxls: the most halvings of a search (30).
      increase_factor, max_stepsize, min_stepsize: for ``linesearch_init`` (1.5, 1.0, 1e-6).
      history_size: the number of pairs kept (10).
      use_gamma: scale the initial inverse Hessian by γ = ⟨s, y⟩/⟨y, y⟩ of the newest pair
        (True); False: γ = 1 once a pair is kept.
      theta: JAXopt's θ > 0 (default 1): the initial Hessian model is (θ/γ)·I, i.e. every γ
        above (the binding test, the binding step and the two-loop's initial matrix) is γ/θ.
      stop_if_linesearch_fails: end the run, x unchanged, when a search finds no acceptable step
        (False: the last trial is taken, the memory is cleared and the run goes on);
        ``state.failed_linesearch`` says whether the last search failed, and such a stop has
        status STALLED.
      maxiter, tol: at most ``maxiter`` (500) iterations; stop when the error ≤ ``tol`` (1e-6).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.lbfgsb import LBFGSB
      >>> f = lambda x, c: jnp.sum((x - c) ** 2) + x[0] * x[1]
      >>> x, state = LBFGSB(fun=f).run(jnp.zeros(2), (0.0, 1.0), jnp.array([2.0, -1.0]))
    """

    _leading_run_arguments = 1  # run's argument before fun's (see DifferentiableRun)

    _run_arguments = ("bounds",)  # run(init_params, bounds, *args, **kwargs)
    _solution_name = "sol"  # JAXopt's optimality_fun(sol, ...)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    value_and_grad: bool = dataclasses.field(default=False, kw_only=False)
    has_aux: bool = dataclasses.field(default=False, kw_only=False)
    stepsize: float | Callable = 0.0
    linesearch: str = "backtracking"
    linesearch_init: str | None = None
    maxls: int = 30
    increase_factor: float = 1.5
    max_stepsize: float = 1.0
    min_stepsize: float = 1e-6
    history_size: int = 10
    use_gamma: bool = True
    maxiter: int = 500
    tol: float = 1e-6
    theta: float = 1.0
    stop_if_linesearch_fails: bool = False
    # JAXopt 0.8's deprecated options: accepted, ignored with a DeprecationWarning (as JAXopt).
    condition: Any = None
    decrease_factor: Any = None

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"LBFGSB: fun must be callable, got {self.fun!r}")
        check_objective_options("LBFGSB", self.value_and_grad, self.has_aux)
        warn_deprecated_search_options(
            self, "the search is Armijo's along the projection arc, halving the step (step 3)"
        )
        check_stepsize("LBFGSB", self.stepsize)
        if self.linesearch not in ("backtracking", "zoom", "hager-zhang"):
            raise ValueError(
                "LBFGSB: linesearch must be 'backtracking', 'zoom' or 'hager-zhang' (all run the "
                f"backtracking search along the projection arc), got {self.linesearch!r}"
            )
        if not (self.linesearch_init is None or self.linesearch_init in LINESEARCH_INITS):
            raise ValueError(
                f"LBFGSB: linesearch_init must be None (first trial 1) or one of "
                f"{LINESEARCH_INITS}, got {self.linesearch_init!r}"
            )
        _checks.check_positive_int(self.maxls, "maxls", "LBFGSB")
        if not self.max_stepsize > 0:
            raise ValueError(f"LBFGSB: max_stepsize must be > 0, got {self.max_stepsize!r}")
        if not self.min_stepsize >= 0:
            raise ValueError(f"LBFGSB: min_stepsize must be ≥ 0, got {self.min_stepsize!r}")
        if not self.increase_factor > 0:
            raise ValueError(f"LBFGSB: increase_factor must be > 0, got {self.increase_factor!r}")
        if not isinstance(self.use_gamma, bool):
            raise TypeError(f"LBFGSB: use_gamma must be a bool, got {self.use_gamma!r}")
        if not (isinstance(self.theta, (int, float)) and self.theta > 0):
            raise ValueError(f"LBFGSB: theta must be a number > 0, got {self.theta!r}")
        self._check_stop_if_linesearch_fails("LBFGSB")
        _checks.check_positive_int(self.history_size, "history_size", "LBFGSB")
        object.__setattr__(
            self, "_objective", Objective(self.fun, self.value_and_grad, self.has_aux)
        )

    def _fixed_step(self) -> bool:
        return callable(self.stepsize) or self.stepsize > 0

    def _searches_its_step(self) -> bool:
        """Every step comes from a search along the projected arc (or is a fixed step, which
        past convergence is continued as a searched one: the memory holds rounding noise)."""
        return True

    def _continuation(self, bounds, /, *args, **kwargs):
        """Unrolling continues the derivative past the stop with x ← P(x − η∇f(x)), P the
        projection onto the box, η = 1/L̂ (:mod:`implicitdiff.solvers._continuation`)."""

        def project(z, eta):
            del eta
            flat, unravel = ravel_pytree(z)
            lower, upper = flat_bounds(z, bounds)
            return unravel(jnp.clip(flat, lower, upper))

        return gradient_continuation(
            self._objective.scalar(),
            args,
            kwargs,
            finish=project,
            grad=self._objective.grad if self.value_and_grad else None,
        )

    def _check_arguments(self, init_params, args, kwargs) -> None:
        if args and isinstance(args[0], (tuple, list)) and len(args[0]) == 2:
            _checks.check_bounds("LBFGSB.run", *args[0])

    def _solution(self, init_params, /, bounds, *args, **kwargs):
        """The run, with a NaN solution when the (traced) box is empty: its derivative is then
        NaN too, never a finite derivative of a point that solves nothing."""
        params, state = super()._solution(init_params, bounds, *args, **kwargs)
        empty = jnp.any(jnp.isnan(flat_bounds(params, bounds)[1]))
        return tree.map(lambda p: _checks.nan_unless(jnp.logical_not(empty), p), params), state

    def _flat_value_and_grad(self, flat_x, unravel, args, kwargs):
        """(f, ∇f flattened, aux) at the flat point."""
        value, grad, aux = self._objective.evaluate(unravel(flat_x), *args, **kwargs)
        return _dtypes.cast_value(value, flat_x), ravel_pytree(grad)[0], aux

    def init_state(self, init_params, /, bounds, *args, **kwargs) -> LBFGSBState:
        """The state at ``init_params``: f and ∇f evaluated there, on the flattened params.

        Args:
          init_params: the starting point x₀, a pytree of arrays.
          bounds: ``(lower, upper)``, as in ``run``.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          An ``LBFGSBState``: iter_num 0, error ‖x₀ − P(x₀ − ∇f(x₀))‖, f(x₀), ∇f(x₀) (flattened), an
            empty history, and γ = min(1, 1/‖∇f(x₀)‖).
        """
        flat_x, unravel = ravel_pytree(init_params)
        lower, upper = flat_bounds(init_params, bounds)
        dtype = flat_x.dtype
        value, grad, aux = self._flat_value_and_grad(flat_x, unravel, args, kwargs)
        error = jnp.linalg.norm(
            jax.lax.stop_gradient(flat_x - jnp.clip(flat_x - grad, lower, upper))
        )
        m, n = self.history_size, flat_x.shape[0]
        return LBFGSBState(
            iter_num=jnp.asarray(0),
            error=error.astype(dtype),
            converged=jnp.asarray(False),
            value=jnp.asarray(value, dtype),
            grad=grad,
            stepsize=jnp.asarray(1.0 if self.linesearch_init is None else self.max_stepsize, dtype),
            s_history=jnp.zeros((m, n), dtype),
            y_history=jnp.zeros((m, n), dtype),
            rho_history=jnp.zeros(m, dtype),
            newest=jnp.asarray(m - 1),
            gamma=first_scaling(grad).astype(dtype),
            aux=aux,
            failed_linesearch=jnp.asarray(False),
        )

    def update(self, params, state: LBFGSBState, /, bounds, *args, **kwargs) -> OptStep:
        """One projected quasi-Newton step x⁺ = P(x + αd): steps 1–4 of the class docstring.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          bounds: ``(lower, upper)``, as in ``run``.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ (a pytree like x) and its state (f, ∇f and the projected
            gradient error at x⁺, the step α, the history).
        """
        x, unravel = ravel_pytree(params)
        lower, upper = flat_bounds(params, bounds)
        g, value = state.grad, state.value

        def project(z):
            return jnp.clip(z, lower, upper)

        # 1. Binding and free variables, on cut values: those that the scaled gradient step
        # x − γg would carry onto (or past) their bound.
        cx, cg, clower, cupper, gamma = jax.lax.stop_gradient((x, g, lower, upper, state.gamma))
        gamma = gamma / self.theta
        reach = gamma * jnp.abs(cg)
        binding = ((cx - clower <= reach) & (cg > 0)) | ((cupper - cx <= reach) & (cg < 0))

        # 2. The direction.
        free_grad = jnp.where(binding, 0.0, g)
        quasi_newton = two_loop_free(
            free_grad,
            jnp.logical_not(binding).astype(x.dtype),
            state.s_history,
            state.y_history,
            state.rho_history > 0,
            state.gamma,
            state.newest,
            self.use_gamma,
            self.theta,
        )
        direction = -jnp.where(binding, state.gamma / self.theta * g, quasi_newton)
        descent = jax.lax.stop_gradient(jnp.vdot(g, direction)) < 0
        direction = jnp.where(descent, direction, -g)

        # 3. The search along the projection arc.
        cut_args, cut_kwargs, cut_lower, cut_upper = tree.stop_gradient(
            (args, kwargs, lower, upper)
        )

        def cut_value(z):
            return _dtypes.cast_value(self._objective.value(unravel(z), *cut_args, **cut_kwargs), z)

        def cut_project(z):
            return jnp.clip(z, cut_lower, cut_upper)

        if self._fixed_step():
            alpha = scheduled_stepsize(self.stepsize, state.iter_num, x.dtype, "LBFGSB")
            ok = jnp.asarray(True)
        else:
            start = 1.0
            if self.linesearch_init is not None:
                start = first_trial(
                    self.linesearch_init,
                    state.stepsize,
                    max_stepsize=self.max_stepsize,
                    min_stepsize=self.min_stepsize,
                    increase_factor=self.increase_factor,
                )
                start = jnp.minimum(start, self.max_stepsize)
            alpha, ok = arc_backtracking(
                cut_value, cut_project, x, value, g, direction, start=start, maxiter=self.maxls
            )
        new_x = project(x + alpha * direction)
        if self.stop_if_linesearch_fails:  # the run stops where it stands, as JAXopt's
            new_x = jnp.where(ok, new_x, x)
        new_value, new_grad, aux = self._flat_value_and_grad(new_x, unravel, args, kwargs)

        # 4. The memory. The pair is kept if it has positive curvature; otherwise (or after a
        # failed search, 30 halvings that moved x negligibly), the memory is cleared and the
        # next direction is the projected gradient step.
        s, y = new_x - x, new_grad - g
        sy, yy = jnp.vdot(s, y), jnp.vdot(y, y)
        keep = jax.lax.stop_gradient((sy > 1e-10 * yy) & (yy > 0) & ok & descent)
        slot = (state.newest + 1) % self.history_size
        s_history = jnp.where(keep, state.s_history.at[slot].set(s), 0.0)
        y_history = jnp.where(keep, state.y_history.at[slot].set(y), 0.0)
        rho = jnp.where(keep, 1.0 / jnp.where(keep, sy, 1.0), 0.0)
        rho_history = jnp.where(keep, state.rho_history.at[slot].set(rho), 0.0)
        gamma = jnp.where(keep, sy / jnp.where(keep, yy, 1.0), first_scaling(new_grad))

        error = jnp.linalg.norm(jax.lax.stop_gradient(new_x - project(new_x - new_grad)))
        state = LBFGSBState(
            iter_num=state.iter_num + 1,
            error=error.astype(state.error.dtype),
            converged=state.converged,
            value=jnp.asarray(new_value, state.value.dtype),
            grad=new_grad,
            stepsize=jnp.asarray(alpha, state.stepsize.dtype),
            s_history=s_history,
            y_history=y_history,
            rho_history=rho_history,
            newest=jnp.where(keep, slot, self.history_size - 1),
            gamma=gamma.astype(state.gamma.dtype),
            aux=aux,
            failed_linesearch=jnp.logical_not(ok),
        )
        return OptStep(unravel(new_x), state)

    def optimality(self):
        """The condition that differentiates the solution: x = P(x − ∇₁f(x, *args), bounds).

        P is :func:`implicitdiff.projections.box` and the step η = 1
        (:func:`implicitdiff.optimality.projected_gradient`).

        Returns:
          ``("fixed_point", T)`` with T(x, bounds, *args, **kwargs), the arguments of ``run`` after
            ``init_params``.
        """
        condition = self._objective.proximal_gradient(
            lambda z, bounds, eta: projections.box(z, box_or_unbounded(z, bounds)), 1.0
        )

        def fixed_point_fun(x, /, bounds, *args, **kwargs):  # ``bounds`` named as in ``run``
            return condition(x, bounds, *args, **kwargs)

        fixed_point_fun.__name__ = "box_projected_gradient_fixed_point"
        return "fixed_point", fixed_point_fun
