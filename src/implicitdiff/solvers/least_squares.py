"""Nonlinear least squares: Gauss–Newton and Levenberg–Marquardt.

Both minimize ½‖r(x, *args)‖² for a residual function r (a pytree of arrays) and are
differentiated through the stationarity condition ∂₁r(x, *args)ᵀ r(x, *args) = 0
(:func:`implicitdiff.optimality.least_squares`). The Jacobian J = ∂₁r is never formed: the
normal-equation matrix JᵀJ is applied as a JVP followed by a VJP, and the linear system of each
step is solved by a solver of :mod:`implicitdiff.linear_solve` (``"auto"``: dense LU when
estimated cheaper, at most 200 unknowns, else CG).

The default ``tol`` (1e-6) is reachable in float32. The error of an implicit derivative is
proportional to the solution's: in float64, pass a smaller ``tol`` (1e-10, say) for derivatives
accurate to more digits.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from implicitdiff import _loop, _summary, linear_solve, optimality, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._failures import Status
from implicitdiff.solvers._least_squares_options import (
    check_lm_options,
    geodesic_step,
    linearize_with_jacobian,
)
from implicitdiff.solvers._objective import WithAux

__all__ = [
    "GaussNewton",
    "GaussNewtonState",
    "LevenbergMarquardt",
    "LevenbergMarquardtState",
]


def _linearize(residual_fun: Callable, params: PyTree, args: tuple, kwargs: dict):
    """r(x), v ↦ J v and u ↦ Jᵀ u at x = params (J = ∂₁r, never formed)."""
    r, linear = jax.linearize(lambda x: residual_fun(x, *args, **kwargs), params)
    transpose = jax.linear_transpose(linear, params)

    def jvp(v):  # under shard_map, v may be a constant (a basis vector) where params vary
        return linear(_loop.vary_like(v, params))

    return r, jvp, lambda u: transpose(_loop.vary_like(u, r))[0]


def _value_and_gradient(residual_fun: Callable, params: PyTree, args: tuple, kwargs: dict):
    """½‖r(x)‖² and Jᵀr(x) (one VJP)."""
    r, vjp = jax.vjp(lambda x: residual_fun(x, *args, **kwargs), params)
    return 0.5 * tree.vdot(r, r), vjp(r)[0]


def _error(gradient: PyTree, dtype: Any) -> jax.Array:
    # The stopping test needs no derivative, and sqrt has none at an exact zero.
    return tree.norm(jax.lax.stop_gradient(gradient)).astype(dtype)


def _step_solver(solver: str | Callable) -> Callable:
    base = linear_solve.resolve(solver)
    if linear_solve.accepts_keyword(base, "symmetric"):  # JᵀJ (+ μI) is symmetric
        base = functools.partial(base, symmetric=True)
    return base


def _check_common(least_squares: Any) -> Callable:
    """Check ``residual_fun``, ``has_aux`` and ``solver``; set ``_residual`` (r's value part)
    and ``_with_aux``; return the step's linear solver."""
    name = type(least_squares).__name__
    residual_fun, solver = least_squares.residual_fun, least_squares.solver
    if not callable(residual_fun):
        raise TypeError(f"{name}: residual_fun must be callable, got {residual_fun!r}")
    with_aux = WithAux(residual_fun, least_squares.has_aux, name, "residual_fun")
    object.__setattr__(least_squares, "_with_aux", with_aux)
    object.__setattr__(least_squares, "_residual", with_aux.value_fun())
    try:
        return _step_solver(solver)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: solver: {err}") from None


class _LeastSquaresFields:
    """Mixin of GaussNewton and LevenbergMarquardt: ``state.value`` = ½‖r(x)‖² and
    ``state.aux`` (with ``has_aux``), functions of the solution (see ``DifferentiableRun``)."""

    def _state_fields(self):
        with_aux = self._with_aux

        def fields(params, /, *args, **kwargs):
            r = self._residual(params, *args, **kwargs)
            return {"value": 0.5 * tree.vdot(r, r), "aux": with_aux.aux(params, *args, **kwargs)}

        return ("value", "aux") if with_aux.has_aux else ("value",), fields


class GaussNewtonState(NamedTuple):
    """iter_num, error = ‖Jᵀr‖ at the current x, converged, value = ½‖r(x)‖², gradient = Jᵀr."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    gradient: PyTree
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    aux: Any = None  # residual_fun's aux at the current x (has_aux=True)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class GaussNewton(_LeastSquaresFields, IterativeSolver):
    """min_x ½‖r(x, *args)‖² by Gauss–Newton: x ← x + d, (JᵀJ) d = −Jᵀr, J = ∂₁r(x, *args).

    ``run(init_params, *args, **kwargs)``, with ``residual_fun(x, *args, **kwargs)`` returning
    the residual r (any pytree; x may be a pytree too). Each step solves the normal equations
    (JᵀJ) d = −Jᵀr without forming J: v ↦ JᵀJ v is a JVP then a VJP of r, given to ``solver``.
    Full steps, no damping and no line search: fast (quadratic convergence for zero-residual
    problems, linear otherwise) from a good start, but JᵀJ must be non-singular along the way
    and the iteration may diverge from a poor start; use :class:`LevenbergMarquardt` then.

    Each iteration evaluates r twice: its linearization at x (for the step; the gradient Jᵀr at x
    is the state's) and one VJP at x + d (the value and gradient there, for the stopping test).
    Carrying the next step in the state would save one evaluation of r but trace the step's
    linear solve twice (in ``init_state`` too): a bigger program to compile for a few
    microseconds per iteration, so it is not done.

    Stops when ‖Jᵀr(x)‖ ≤ tol (``state.error``) or after ``maxiter`` iterations. The solution is
    differentiated through ∂₁r(x, *args)ᵀ r(x, *args) = 0
    (:func:`implicitdiff.optimality.least_squares`), whose Jacobian is the full Hessian
    JᵀJ + Σₖ rₖ∇²rₖ: derivatives are exact for non-zero residuals too.

    Attributes:
      residual_fun: r(x, *args, **kwargs), a pytree of arrays; (r, aux) with ``has_aux``.
      has_aux: whether ``residual_fun`` returns (r, aux); aux (at the returned x) is kept in
        ``state.aux`` and plays no part in the iteration or the derivative (False).
      solver: the linear solver of each step, a name or callable of
        :mod:`implicitdiff.linear_solve` (``solve(matvec, b) -> x``); default ``"auto"``
        (dense LU when estimated cheaper, at most 200 unknowns, else CG). Not to be confused
        with ``solve``, the solver of the implicit derivative's system.
      maxiter, tol: stop when ‖Jᵀr‖ ≤ tol (default 1e-6) or after maxiter (100) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.least_squares import GaussNewton
      >>> r = lambda p, t, y: p[0] * jnp.exp(p[1] * t) - y  # fit y ≈ a exp(b t)
      >>> t = jnp.linspace(0.0, 1.0, 10)
      >>> p, state = GaussNewton(residual_fun=r).run(jnp.array([1.0, 0.0]), t, 2 * jnp.exp(-t))
    """

    _user_function = "residual_fun"

    residual_fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    solver: str | Callable = "auto"
    has_aux: bool = False
    maxiter: int = 100
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "_solve_step", _check_common(self))

    def init_state(self, init_params, /, *args, **kwargs) -> GaussNewtonState:
        """The state at ``init_params``: ½‖r‖² and Jᵀr evaluated there (one VJP of r).

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``residual_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``GaussNewtonState``: iter_num 0, error ‖Jᵀr(x₀)‖, value ½‖r(x₀)‖², gradient Jᵀr(x₀).
        """
        value, gradient = _value_and_gradient(self._residual, init_params, args, kwargs)
        dtype = tree.dtype(init_params)
        return GaussNewtonState(
            iter_num=jnp.asarray(0),
            error=_error(gradient, dtype),
            converged=jnp.asarray(False),
            value=value,
            gradient=gradient,
            aux=self._with_aux.aux(init_params, *args, **kwargs),
        )

    def update(self, params, state: GaussNewtonState, /, *args, **kwargs) -> OptStep:
        """One full Gauss–Newton step x⁺ = x + d, (JᵀJ) d = −Jᵀr solved by ``solver`` (matrix-free).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``residual_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (½‖r‖², Jᵀr and the error ‖Jᵀr‖ at x⁺).
        """
        _, jvp, vjp = _linearize(self._residual, params, args, kwargs)
        direction = self._solve_step(lambda v: vjp(jvp(v)), tree.neg(state.gradient))
        params = tree.add(params, direction)
        value, gradient = _value_and_gradient(self._residual, params, args, kwargs)
        state = state._replace(
            iter_num=state.iter_num + 1,
            error=_error(gradient, state.error.dtype),
            value=value,
            gradient=gradient,
            aux=self._with_aux.aux(params, *args, **kwargs),
        )
        return OptStep(params, state)

    def optimality(self):
        """The condition that differentiates the solution: ∂₁r(x, *args)ᵀ r(x, *args) = 0.

        Returns:
          ``("root", optimality.least_squares(residual_fun))``.
        """
        return "root", optimality.least_squares(self._residual)


class LevenbergMarquardtState(NamedTuple):
    """iter_num, error = ‖Jᵀr‖ at the current x, converged, value = ½‖r(x)‖², gradient = Jᵀr,
    damping = μ, damping_increase = ν (Nielsen's factor), gain_ratio = ρ of the last trial step,
    accepted = whether the last trial step was taken, step_norm = ‖d‖₂ of the last trial step."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    gradient: PyTree
    damping: jax.Array
    damping_increase: jax.Array
    gain_ratio: jax.Array
    accepted: jax.Array
    step_norm: jax.Array = jnp.inf  # ‖d‖ of the last trial step (inf before the first)
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    aux: Any = None  # residual_fun's aux at the current x (has_aux=True)

    __repr__ = _summary.namedtuple_repr


def _max_normal_diagonal(jvp: Callable, params: PyTree) -> jax.Array:
    """max_i (JᵀJ)_ii = max_i ‖J eᵢ‖², one JVP per unknown (in batches of 64)."""
    flat, unravel = ravel_pytree(params)
    n = flat.shape[0]

    def column_norm(i):
        e = jnp.zeros(n, flat.dtype).at[i].set(1.0)
        column = jvp(unravel(e))
        return tree.vdot(column, column)

    norms = jax.lax.map(column_norm, jnp.arange(n), batch_size=min(n, 64))
    return jnp.max(norms)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LevenbergMarquardt(_LeastSquaresFields, IterativeSolver):
    """min_x ½‖r(x, *args)‖² by Levenberg–Marquardt: (JᵀJ + μI) d = −Jᵀr, J = ∂₁r(x, *args).

    ``run(init_params, *args, **kwargs)``, with ``residual_fun(x, *args, **kwargs)`` returning
    the residual r (any pytree; x may be a pytree too). The damped normal equations are solved
    without forming J (JᵀJ v is a JVP then a VJP of r) by ``solver``. A trial step x + d is
    accepted when the gain ratio

        ρ = (F(x) − F(x + d)) / (L(0) − L(d)),   L(0) − L(d) = ½ dᵀ(μd − Jᵀr),   F = ½‖r‖²,

    (actual over predicted decrease) is positive and F(x + d) finite, and the damping follows
    Nielsen's rule (Madsen, Nielsen & Tingleff, 2004): on acceptance μ ← μ · max(1/3,
    1 − (2ρ − 1)³) and ν ← 2, on rejection μ ← μν and ν ← 2ν (x unchanged). Near the
    solution, where both decreases fall below the rounding of F (16 eps F), ρ is noise: the
    step is taken and μ kept. The first damping is μ₀ = ``damping_parameter`` · maxᵢ (JᵀJ)ᵢᵢ
    at ``init_params`` (n JVPs, once). μ is kept below √(largest float) so that a long run of
    rejections cannot overflow.

    Each iteration linearizes r at x and evaluates r and its VJP at the trial point, whose value
    and gradient become the new ones if it is accepted; with ``implicit_diff=False`` (the
    iterations differentiated) r is evaluated once more, at the accepted point, so that no
    derivative flows through a rejected trial.

    The damping update runs on values cut from the graph (ρ, μ, ν are constants for the
    derivative, as a line search's step size), and the residual is differentiated only at
    accepted points, so unrolled derivatives (``implicit_diff=False``) stay finite even when a
    rejected trial overflows.

    Stops when ‖Jᵀr(x)‖ ≤ tol (``state.error``) or after ``maxiter`` iterations; with
    ``stop_criterion="madsen-nielsen"`` instead when the last trial step is small,
    ‖d‖₂ ≤ xtol·(‖x‖₂ + xtol), or the gradient is, ‖Jᵀr(x)‖∞ ≤ gtol (then ``converged`` means
    that test passed, whatever ``tol``). The solution is differentiated through
    ∂₁r(x, *args)ᵀ r(x, *args) = 0 (:func:`implicitdiff.optimality.least_squares`).

    Attributes:
      residual_fun: r(x, *args, **kwargs), a pytree of arrays; (r, aux) with ``has_aux``.
      has_aux: whether ``residual_fun`` returns (r, aux); aux (at the returned x) is kept in
        ``state.aux`` and plays no part in the iteration or the derivative (False).
      damping_parameter: τ > 0 in μ₀ = τ · maxᵢ (JᵀJ)ᵢᵢ (default 1e-6: start close to
        Gauss–Newton; use 1e-3 to 1 from a poor start).
      solver: the linear solver of each step, a name or callable of
        :mod:`implicitdiff.linear_solve` (JAXopt's ``"cholesky"``, ``"lu"``, ``"qr"``,
        ``"inv"`` and callables among them; the named dense ones build the matrix JᵀJ + μI);
        default ``"auto"`` (dense LU when estimated cheaper, at most 200 unknowns, else CG).
        Not to be confused with ``solve``, the solver of the implicit derivative.
      maxiter, tol: stop when ‖Jᵀr‖ ≤ tol (default 1e-6) or after maxiter (100) iterations.
      stop_criterion: ``"grad-l2-norm"`` (default: the test above) or ``"madsen-nielsen"``
        (JAXopt's names), with ``xtol`` and ``gtol`` (default 1e-3 each, as JAXopt).
      jac_fun: J(x, *args, **kwargs), the Jacobian of r as a matrix (m, n), for a 1-D x and a
        1-D residual, used for the steps instead of JVPs/VJPs of r (as JAXopt's). None
        (default): J is never formed.
      materialize_jac: accepted for JAXopt's signature; it changes no result (the steps are
        matrix-free unless ``jac_fun`` is given or a dense ``solver`` is named).
      geodesic: add the geodesic acceleration (Transtrum & Sethna, as JAXopt): with v the
        step above and a = −(JᵀJ + μI)⁻¹ Jᵀ r''(x)[v, v] (a second directional derivative of
        r), the trial step is d = v + a/2, rejected (μ raised) when ‖a‖/‖v‖ exceeds
        ``contribution_ratio_threshold`` (default 0.75, JAXopt's). Default False.
      contribution_ratio_threshold: see ``geodesic`` (a class attribute in JAXopt, a field
        here).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.least_squares import LevenbergMarquardt
      >>> r = lambda p, s, y: p[0] * s / (p[1] + s) - y  # Michaelis–Menten
      >>> s = jnp.array([0.5, 1.0, 2.0, 4.0, 8.0])
      >>> y = jnp.array([0.9, 1.3, 1.6, 1.8, 1.9])
      >>> p, state = LevenbergMarquardt(residual_fun=r).run(jnp.array([1.0, 1.0]), s, y)
    """

    _user_function = "residual_fun"

    residual_fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    damping_parameter: float = 1e-6
    solver: str | Callable = "auto"
    has_aux: bool = False
    maxiter: int = 100
    tol: float = 1e-6
    stop_criterion: str = "grad-l2-norm"
    xtol: float = 1e-3
    gtol: float = 1e-3
    geodesic: bool = False
    contribution_ratio_threshold: float = 0.75
    jac_fun: Callable | None = None
    materialize_jac: bool = False

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "_solve_step", _check_common(self))
        check_lm_options(self)
        if not (isinstance(self.damping_parameter, (int, float)) and self.damping_parameter > 0):
            raise ValueError(
                "LevenbergMarquardt: damping_parameter must be a positive number, got "
                f"{self.damping_parameter!r}"
            )

    def init_state(self, init_params, /, *args, **kwargs) -> LevenbergMarquardtState:
        """The state at ``init_params``: r, Jᵀr and the first damping there.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``residual_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``LevenbergMarquardtState``: iter_num 0, error ‖Jᵀr(x₀)‖, value ½‖r(x₀)‖², gradient
            Jᵀr(x₀), damping μ₀ = ``damping_parameter`` · maxᵢ (JᵀJ)ᵢᵢ at x₀ (n JVPs; the maximum
            taken as 1 when J = 0), ν = 2.
        """
        dtype = tree.dtype(init_params)
        r, jvp, vjp = self._linearize(init_params, args, kwargs)
        gradient = vjp(r)
        scale = jax.lax.stop_gradient(_max_normal_diagonal(jvp, init_params))
        # An all-zero Jacobian at the start: fall back to an absolute damping.
        scale = jnp.where(scale > 0, scale, 1.0)
        return LevenbergMarquardtState(
            iter_num=jnp.asarray(0),
            error=_error(gradient, dtype),
            converged=jnp.asarray(False),
            value=0.5 * tree.vdot(r, r),
            gradient=gradient,
            damping=(self.damping_parameter * scale).astype(dtype),
            damping_increase=jnp.asarray(2.0, dtype),
            gain_ratio=jnp.asarray(0.0, dtype),
            accepted=jnp.asarray(True),
            aux=self._with_aux.aux(init_params, *args, **kwargs),
        )

    def update(self, params, state: LevenbergMarquardtState, /, *args, **kwargs) -> OptStep:
        """One trial step x + d, taken or not by its gain ratio ρ.

        (JᵀJ + μI) d = −Jᵀr is solved by ``solver`` (matrix-free), and μ, ν are updated by Nielsen's
        rule (see the class).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``residual_fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ (x + d if accepted, else x) and its state (½‖r‖², Jᵀr and
            the error ‖Jᵀr‖ at x⁺, μ, ν, ρ, whether the step was accepted).
        """
        dtype = state.damping.dtype
        mu, nu = state.damping, state.damping_increase
        _, jvp, vjp = self._linearize(params, args, kwargs)

        def damped(v):
            return tree.axpy(mu, v, vjp(jvp(v)))

        direction = self._solve_step(damped, tree.neg(state.gradient))
        geodesic_ok = jnp.asarray(True)
        if self.geodesic:
            direction, geodesic_ok = geodesic_step(
                self._residual,
                params,
                args,
                kwargs,
                direction,
                damped,
                vjp,
                self._solve_step,
                self.contribution_ratio_threshold,
            )
        trial = tree.add(params, direction)

        # The gain ratio, cut from the graph: a constant for the derivative (its inputs at a
        # rejected trial may be infinite; nothing flows back through them). When the iterations
        # are not differentiated (implicit_diff), the trial's gradient is taken along, and is
        # the new one if the trial is accepted: one evaluation of r fewer per iteration.
        if self.implicit_diff:
            value_trial, gradient_trial = _value_and_gradient(self._residual, trial, args, kwargs)
        else:
            r_trial = self._residual(trial, *args, **kwargs)
            value_trial = 0.5 * tree.vdot(r_trial, r_trial)
        predicted = 0.5 * (
            mu * tree.vdot(direction, direction) - tree.vdot(direction, state.gradient)
        )
        actual = state.value - value_trial
        ok = (predicted > 0) & jnp.isfinite(value_trial)
        ratio = jax.lax.stop_gradient(jnp.where(ok, actual / jnp.where(ok, predicted, 1.0), -1.0))
        # A predicted decrease below the rounding of F: ρ is noise. Such a step changes F by
        # nothing measurable; take it (x and the unrolled tangents keep converging to the
        # stationary point) and keep μ.
        negligible = jax.lax.stop_gradient(
            jnp.isfinite(value_trial)
            & (jnp.abs(predicted) <= 16 * jnp.finfo(dtype).eps * jnp.abs(state.value))
            & (jnp.abs(actual) <= 16 * jnp.finfo(dtype).eps * jnp.abs(state.value))
        )
        accept = ((ratio > 0) | negligible) & geodesic_ok

        # Nielsen's rule, bounded so that a run of rejections cannot overflow.
        mu_max = jnp.sqrt(jnp.finfo(dtype).max).astype(dtype)
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
        mu = jnp.where(accept, jnp.where(ratio > 0, mu * shrink, mu), mu * nu)
        mu = jnp.minimum(mu, mu_max).astype(dtype)
        nu = jnp.where(accept, 2.0, jnp.minimum(2.0 * nu, 2.0**30)).astype(dtype)

        # The residual is differentiated at the accepted point only (never at a rejected trial,
        # whose values may be infinite and would turn a zero cotangent into NaN).
        params = tree.where(accept, trial, params)
        if self.implicit_diff:
            new_value = jnp.where(accept, value_trial, state.value)
            new_gradient = tree.where(accept, gradient_trial, state.gradient)
        else:
            new_value, new_gradient = _value_and_gradient(self._residual, params, args, kwargs)
        state = LevenbergMarquardtState(
            iter_num=state.iter_num + 1,
            error=_error(new_gradient, state.error.dtype),
            converged=state.converged,
            value=new_value,
            gradient=new_gradient,
            damping=mu,
            damping_increase=nu,
            gain_ratio=ratio.astype(dtype),
            accepted=accept,
            step_norm=jax.lax.stop_gradient(tree.norm(direction)).astype(dtype),
            aux=self._with_aux.aux(params, *args, **kwargs),
        )
        return OptStep(params, state)

    def _linearize(self, params, args, kwargs):
        if self.jac_fun is None:
            return _linearize(self._residual, params, args, kwargs)
        return linearize_with_jacobian(self._residual, self.jac_fun, params, args, kwargs)

    def _madsen_nielsen(self, params, state) -> jax.Array:
        """‖d‖₂ ≤ xtol·(‖x‖₂ + xtol) or ‖Jᵀr‖∞ ≤ gtol."""
        small_step = state.step_norm <= self.xtol * (tree.norm(params) + self.xtol)
        small_gradient = tree.norm(jax.lax.stop_gradient(state.gradient), jnp.inf) <= self.gtol
        return small_step | small_gradient

    def _stop(self, params, state) -> jax.Array:
        if self.stop_criterion == "grad-l2-norm":
            return super()._stop(params, state)
        return (
            (state.iter_num >= self.maxiter)
            | jnp.isnan(state.error)
            | self._madsen_nielsen(params, state)
        )

    def _finish(self, params, state):
        params, state = super()._finish(params, state)
        if self.stop_criterion == "grad-l2-norm":
            return params, state
        finite = jnp.isfinite(state.error) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)])
        )
        converged = self._madsen_nielsen(params, state) & finite
        status = jnp.where(
            converged,
            Status.CONVERGED,
            jnp.where(
                state.status == Status.CONVERGED,
                jnp.where(state.iter_num >= self.maxiter, Status.MAX_ITERATIONS, Status.STALLED),
                state.status,
            ),
        ).astype(jnp.int32)
        return params, state._replace(converged=converged, status=status)

    def optimality(self):
        """The condition that differentiates the solution: ∂₁r(x, *args)ᵀ r(x, *args) = 0.

        Returns:
          ``("root", optimality.least_squares(residual_fun))``.
        """
        return "root", optimality.least_squares(self._residual)
