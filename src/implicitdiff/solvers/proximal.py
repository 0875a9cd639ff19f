"""Proximal and projected gradient: ProximalGradient and ProjectedGradient.

Each minimizes a smooth ``fun(params, *args, **kwargs)`` plus a simple non-smooth term (a prox
or a constraint set) and is differentiated through the fixed point of its own iteration, a
builder of :mod:`implicitdiff.optimality` whose arguments are those of ``run`` after
``init_params``, in the same order. The fixed point does not depend on the step size of the map,
so the condition uses a fixed one (each class says which); only the conditioning of the linear
system I − ∂₁T depends on it. The other proximal-type solvers have their own modules:
:mod:`implicitdiff.solvers.mirror_descent` and :mod:`implicitdiff.solvers.block_cd`.

Step sizes found by a line search are computed on values cut from the graph (``stop_gradient``)
and enter the iteration as constants, as in :mod:`implicitdiff._linesearch`: unrolled
derivatives (``implicit_diff=False``) are then finite and correct almost everywhere. Errors are
computed on cut values too: they decide when to stop and are never differentiated.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _linesearch, _summary, optimality, tree
from implicitdiff import _projection_ops as projections
from implicitdiff import prox as prox_operators
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes, _fista
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._continuation import gradient_continuation
from implicitdiff.solvers._failures import Status
from implicitdiff.solvers._objective import (
    Objective,
    scheduled_stepsize,
)

__all__ = ["ProjectedGradient", "ProximalGradient", "ProximalGradientState"]


# ---------------------------------------------------------------------------------------------
# Proximal and projected gradient.


class ProximalGradientState(NamedTuple):
    """iter_num, error = ‖x⁺ − y‖/η (the gradient mapping at y), converged, the extrapolated point
    y (``velocity``; y = x without acceleration), the momentum t, the last step size η, and
    ``fun``'s auxiliary output at the point of the last gradient (y before the step, as in
    JAXopt; None without ``has_aux``)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    velocity: PyTree
    t: jax.Array
    stepsize: jax.Array
    aux: Any = None
    # A solvers.Status code, set when run ends; until then 1, or STALLED after an update whose
    # step search accepted no trial (its error, measured with the last η tried, is not trusted).
    status: jax.Array = 1

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class _ProximalGradientBase(IterativeSolver):
    """The proximal gradient loop, shared by ProximalGradient and ProjectedGradient.

    Each subclass declares its positional fields in JAXopt's order (fun, prox or projection,
    value_and_grad, has_aux, stepsize); the options here are keyword-only."""

    _leading_run_arguments = 1  # run's argument before fun's (see DifferentiableRun)

    _iterates_in_one_dtype = True  # (mixed float32/float64 params: see DifferentiableRun)

    acceleration: bool = True
    maxls: int = 15
    decrease_factor: float = 0.5
    increase_factor: float = 1.5
    maxiter: int = 500
    tol: float = 1e-6

    @abc.abstractmethod
    def _prox(self) -> Callable:
        """The prox operator of the non-smooth part (ProximalGradient / ProjectedGradient)."""

    def _iteration_prox(self) -> Callable:
        """The prox the iterations call: the user's operator, its output checked against its
        input (structure and leaf shapes, at trace time), named as the user gave it."""
        name = "prox" if isinstance(self, ProximalGradient) else "projection"
        return _checks.output_like_input(self._prox(), type(self).__name__, name)

    def _check_options(self, name: str) -> None:
        _fista.check_options(self, name)
        object.__setattr__(
            self, "_objective", Objective(self.fun, self.value_and_grad, self.has_aux)
        )

    def _value_and_grad(self, params, /, *args, **kwargs):
        """(f, ∇f) at params."""
        value, grad, _ = self._objective.evaluate(params, *args, **kwargs)
        return value, grad

    def _fixed_step(self) -> bool:
        return callable(self.stepsize) or self.stepsize > 0

    @property
    def _fixed_point_stepsize(self) -> float:
        """η of the fixed point that differentiates: the fixed step, or 1 with backtracking
        (and with a scheduled step, whose fixed points are the same)."""
        return float(self.stepsize) if not callable(self.stepsize) and self.stepsize > 0 else 1.0

    def _searches_its_step(self) -> bool:
        """Backtracking (``stepsize`` 0) searches; a fixed η does not."""
        return not self._fixed_step()

    def _continuation(self, hyperparams, /, *args, **kwargs):
        """With backtracking, unrolling continues the derivative past the stop with
        x ← prox(x − η∇f(x), hyperparams, η), η = 1/L̂
        (:mod:`implicitdiff.solvers._continuation`)."""
        if not self._searches_its_step():
            return None
        prox = self._iteration_prox()
        return gradient_continuation(
            self._objective.scalar(),
            args,
            kwargs,
            finish=lambda z, eta: prox(z, hyperparams, eta),
            grad=self._objective.grad if self.value_and_grad else None,
        )

    def _init_state(self, init_params, args, kwargs) -> ProximalGradientState:
        """The state before the first iteration, once ``fun`` is checked to take
        ``(params, *args)``."""
        _checks.check_signature(
            self.fun, type(self).__name__, "fun", (init_params, *args), kwargs, "fun(params, *args)"
        )
        dtype = tree.dtype(init_params)
        first = 1.0 if callable(self.stepsize) or self.stepsize <= 0 else self.stepsize
        return ProximalGradientState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, dtype),
            converged=jnp.asarray(False),
            velocity=init_params,
            t=jnp.asarray(1.0, dtype),
            stepsize=jnp.asarray(first, dtype),
            aux=self._objective.aux(init_params, *args, **kwargs),
            status=jnp.asarray(Status.MAX_ITERATIONS, jnp.int32),
        )

    def _update(self, params, state: ProximalGradientState, hyperparams, args, kwargs) -> OptStep:
        prox = self._iteration_prox()
        y = state.velocity
        value, grad, aux = self._objective.evaluate(y, *args, **kwargs)
        eta = state.stepsize
        searched = jnp.asarray(True)
        if self._fixed_step():
            eta = scheduled_stepsize(
                self.stepsize, state.iter_num, state.stepsize.dtype, type(self).__name__
            )
        else:
            cut_hyperparams, cut_args, cut_kwargs = tree.stop_gradient((hyperparams, args, kwargs))
            eta, searched = _linesearch.proximal_backtracking(
                lambda x: self._objective.value(x, *cut_args, **cut_kwargs),
                lambda x: self._objective.grad(x, *cut_args, **cut_kwargs),
                lambda z, s: _dtypes.cast_like(prox(z, cut_hyperparams, s), z),
                y,
                value,
                grad,
                # At an exact solution (a zero residual) every step passes: keep η there, so
                # that a run continued past convergence (unrolling) does not overflow it.
                jnp.where(state.error > 0, eta * self.increase_factor, eta),
                factor=self.decrease_factor,
                maxiter=self.maxls,
            )
        # (bounds or other data of another float dtype: the iterate keeps the params' dtype)
        new_params = _dtypes.cast_like(prox(tree.axpy(-eta, grad, y), hyperparams, eta), y)
        diff = jax.lax.stop_gradient(tree.sub(new_params, y))
        error = (tree.norm(diff) / jax.lax.stop_gradient(eta)).astype(state.error.dtype)
        if self.acceleration:
            t = state.t
            new_t = 0.5 * (1 + jnp.sqrt(1 + 4 * t**2))
            velocity = tree.axpy((t - 1) / new_t, tree.sub(new_params, params), new_params)
        else:
            new_t, velocity = state.t, new_params
        state = ProximalGradientState(
            iter_num=state.iter_num + 1,
            error=error,
            converged=state.converged,
            velocity=velocity,
            t=new_t.astype(state.t.dtype),
            stepsize=jnp.asarray(eta).astype(state.stepsize.dtype),
            aux=aux,
            # A step that no trial of the search accepted (f not finite or not decreasing at any
            # of them): ‖x⁺ − y‖/η with that η, down to 1e-26 on f = NaN at the solution, rounds
            # to 0 and would pass for convergence. Not converged: STALLED (see _base._finish).
            status=jnp.where(searched, Status.MAX_ITERATIONS, Status.STALLED).astype(jnp.int32),
        )
        return OptStep(new_params, state)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ProximalGradient(_ProximalGradientBase):
    """min_x fun(x, *args) + g(x, hyperparams_prox) by proximal gradient (ISTA), or its
    accelerated form FISTA (Beck & Teboulle, 2009).

    ``run(init_params, hyperparams_prox, *args, **kwargs)``, as in JAXopt. ``prox(y,
    hyperparams_prox, scaling)`` is the proximal operator of g (see :mod:`implicitdiff.prox`).
    Each iteration, from the point y (y = x without acceleration)::

        x⁺ = prox(y − η∇f(y), hyperparams_prox, η)
        t⁺ = (1 + √(1 + 4t²)) / 2,   y⁺ = x⁺ + ((t − 1)/t⁺)(x⁺ − x)       (FISTA; t₀ = 1)

    With ``stepsize`` = 0 (the default), η is found by backtracking from ``increase_factor`` × the
    last accepted η (1 at the start), halving it until the sufficient decrease
    f(x⁺) ≤ f(y) + ⟨∇f(y), x⁺ − y⟩ + ‖x⁺ − y‖²/(2η) holds (a constant in the derivative, see
    the module; once ‖x⁺ − y‖²/(2η) is below the rounding error of f, the left side is taken in
    its gradient form, f(y) + ⟨∇f(y), x⁺ − y⟩ + ½⟨∇f(x⁺) − ∇f(y), x⁺ − y⟩, exact for a
    quadratic f, so that rounding neither accepts every step nor rejects them all). The error
    is the norm of the gradient mapping at y, ‖x⁺ − y‖/η, which is 0 exactly at a solution; the
    loop stops when it is ≤ ``tol``, returning x⁺.

    The solution is differentiated through the fixed point
    x = prox(x − η∇₁f(x, *args), hyperparams_prox, η)
    (:func:`implicitdiff.optimality.proximal_gradient`) with η = ``stepsize`` when it is fixed,
    η = 1 with backtracking (any η > 0 has the same fixed points; η ≈ 1/L conditions the linear
    system best: pass a fixed ``stepsize`` when f is badly scaled and the system is large).

    Attributes:
      fun: the smooth part f(x, *args, **kwargs), a scalar; (f, aux) with ``has_aux``, (f, ∇f)
        with ``value_and_grad`` (((f, aux), ∇f) with both), as in JAXopt.
      prox: the proximal operator of the non-smooth part (default :func:`implicitdiff.prox.none`).
      value_and_grad: whether ``fun`` returns its gradient too (False).
      has_aux: whether ``fun`` returns an auxiliary output, kept in ``state.aux`` (False).
      stepsize: η > 0 fixed (≤ 1/L for convergence), a callable ``stepsize(iter_num)`` > 0, or
        0 for backtracking (default).
      acceleration: FISTA (True, default) or ISTA (False).
      maxls: the most halvings of a backtracking search (15, as JAXopt).
      decrease_factor: the factor in (0, 1) of each backtracking step (0.5, as JAXopt).
      increase_factor: with backtracking, each search starts at this × the last step (1.5).
      maxiter, tol: at most ``maxiter`` (500) iterations; stop when the error ≤ ``tol`` (1e-6).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import prox
      >>> from implicitdiff.solvers.proximal import ProximalGradient
      >>> X, y = jnp.array([[1.0, 0.5], [0.0, 2.0], [1.0, 1.0]]), jnp.array([1.0, 2.0, 0.5])
      >>> f = lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)
      >>> w, state = ProximalGradient(fun=f, prox=prox.l1).run(jnp.zeros(2), 0.1, X, y)  # lasso
    """

    _run_arguments = ("hyperparams_prox",)  # run(init_params, hyperparams_prox, *args, **kwargs)
    _solution_name = "sol"  # JAXopt's optimality_fun(sol, ...)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    prox: Callable = dataclasses.field(default=prox_operators.none, kw_only=False)
    value_and_grad: bool = dataclasses.field(default=False, kw_only=False)
    has_aux: bool = dataclasses.field(default=False, kw_only=False)
    stepsize: float | Callable = dataclasses.field(default=0.0, kw_only=False)

    def __post_init__(self):
        super().__post_init__()
        self._check_options("ProximalGradient")
        if not callable(self.prox):
            raise TypeError(f"ProximalGradient: prox must be callable, got {self.prox!r}")
        how = "prox(x, hyperparams, scaling)"
        hint = "A projection(x, hyperparams)? Use ProjectedGradient, or prox.from_projection."
        _checks.check_signature(self.prox, "ProximalGradient", "prox", (0, 0, 1), {}, how, hint)

    def _prox(self) -> Callable:
        return self.prox

    def init_state(
        self, init_params, /, hyperparams_prox, *args, **kwargs
    ) -> ProximalGradientState:
        """The state before the first iteration (nothing is evaluated).

        Checks that ``fun`` takes ``(params, *args)``.

        Args:
          init_params: the starting point x₀, a pytree.
          hyperparams_prox: as in ``run`` (unused here).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``ProximalGradientState``: iter_num 0, error inf, y = x₀, t = 1, and the step size
            (``stepsize``, or 1 with backtracking).
        """
        return self._init_state(init_params, args, kwargs)

    def update(self, params, state, /, hyperparams_prox, *args, **kwargs) -> OptStep:
        """One proximal gradient (FISTA or ISTA) step from the state's point y.

        x⁺ = prox(y − η∇f(y), hyperparams_prox, η), with η fixed or found by backtracking
        (see the class); with acceleration, t⁺ = (1 + √(1 + 4t²))/2 and
        y⁺ = x⁺ + ((t − 1)/t⁺)(x⁺ − x), without it y⁺ = x⁺.

        Args:
          params: the current iterate x (used by the extrapolation).
          state: the state at x (from ``init_state`` or the last ``update``).
          hyperparams_prox: as in ``run``.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (error ‖x⁺ − y‖/η, y⁺, t⁺, η).
        """
        return self._update(params, state, hyperparams_prox, args, kwargs)

    def optimality(self):
        """The condition that the solution is differentiated through:
        x = prox(x − η∇₁f(x, *args), hyperparams_prox, η).

        η is ``stepsize`` when fixed, 1 with backtracking.

        Returns:
          ``("fixed_point", optimality.proximal_gradient(fun, prox, η))``.
        """
        return "fixed_point", self._objective.proximal_gradient(
            self.prox, self._fixed_point_stepsize
        )


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ProjectedGradient(_ProximalGradientBase):
    """min_{x ∈ C(hyperparams_proj)} fun(x, *args) by projected gradient, accelerated or not.

    ``run(init_params, hyperparams_proj, *args, **kwargs)``, as in JAXopt. This is
    :class:`ProximalGradient` with the prox of the indicator of C,
    ``prox.from_projection(projection)``: each iteration is x⁺ = projection(y − η∇f(y),
    hyperparams_proj) from y (the FISTA extrapolation, or x), with the same step sizes (fixed or
    backtracking), error ‖x⁺ − y‖/η and stopping rule.

    The solution is differentiated through the fixed point x = projection(x − η∇₁f(x, *args),
    hyperparams_proj) (:func:`implicitdiff.optimality.projected_gradient`), η = ``stepsize`` when
    fixed, else 1.

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar.
      projection: ``projection(y, hyperparams_proj)``, the Euclidean projection onto C (see
        :mod:`implicitdiff.projections`).
      value_and_grad, has_aux, stepsize, acceleration: as in :class:`ProximalGradient`.
      maxls, decrease_factor, increase_factor, maxiter, tol: as in :class:`ProximalGradient`.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import projections
      >>> from implicitdiff.solvers.proximal import ProjectedGradient
      >>> A, b = jnp.array([[1.0, 0.5], [0.0, 2.0], [1.0, 1.0]]), jnp.array([1.0, -2.0, 0.5])
      >>> f = lambda x, A, b: 0.5 * jnp.sum((A @ x - b) ** 2)
      >>> solver = ProjectedGradient(fun=f, projection=projections.non_negative)  # NNLS
      >>> x, state = solver.run(jnp.zeros(2), None, A, b)
    """

    _run_arguments = ("hyperparams_proj",)  # run(init_params, hyperparams_proj, *args, **kwargs)
    _run_argument_optional = True  # hyperparams_proj=None, as JAXopt
    _solution_name = "sol"  # JAXopt's optimality_fun(sol, ...)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    projection: Callable | None = dataclasses.field(default=None, kw_only=False)
    value_and_grad: bool = dataclasses.field(default=False, kw_only=False)
    has_aux: bool = dataclasses.field(default=False, kw_only=False)
    stepsize: float | Callable = dataclasses.field(default=0.0, kw_only=False)

    def __post_init__(self):
        super().__post_init__()
        self._check_options("ProjectedGradient")
        if not callable(self.projection):
            raise TypeError(
                f"ProjectedGradient: projection must be callable, got {self.projection!r}"
            )
        how = "projection(x, hyperparams)"
        _checks.check_signature(self.projection, "ProjectedGradient", "projection", (0, 0), {}, how)
        object.__setattr__(
            self, "_projection_prox", prox_operators.from_projection(self.projection)
        )

    def _prox(self) -> Callable:
        return self._projection_prox

    def _check_arguments(self, init_params, args, kwargs) -> None:
        # The box projections' bounds, when concrete: an empty box raises, naming them (traced,
        # the projection is NaN and the run ends with converged False).
        if not args or not isinstance(args[0], (tuple, list)):
            return
        if self.projection is projections.box and len(args[0]) == 2:
            _checks.check_bounds("ProjectedGradient.run", *args[0], name="hyperparams_proj")
        elif self.projection is projections.box_section and len(args[0]) == 4:
            _checks.check_bounds(
                "ProjectedGradient.run", *args[0][:2], name="hyperparams_proj[:2] (alpha, beta)"
            )

    def run(self, init_params, hyperparams_proj=None, *args, **kwargs) -> OptStep:
        """Solve from ``init_params`` over C(hyperparams_proj).

        Args:
          init_params: the starting point x₀, a pytree.
          hyperparams_proj: the projection's hyperparameters (differentiable); optional, None
            by default, as in JAXopt (for a projection that takes none).
          *args: the arguments of ``fun`` after x (differentiable).
          **kwargs: its keyword arguments.

        Returns:
          ``OptStep(params, state)``: the solution and its ``ProximalGradientState``.
        """
        return super().run(init_params, hyperparams_proj, *args, **kwargs)

    def init_state(
        self, init_params, /, hyperparams_proj=None, *args, **kwargs
    ) -> ProximalGradientState:
        """The state before the first iteration (nothing is evaluated).

        Checks that ``fun`` takes ``(params, *args)``.

        Args:
          init_params: the starting point x₀, a pytree.
          hyperparams_proj: as in ``run`` (unused here).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``ProximalGradientState``: iter_num 0, error inf, y = x₀, t = 1, and the step size
            (``stepsize``, or 1 with backtracking).
        """
        return self._init_state(init_params, args, kwargs)

    def update(self, params, state, /, hyperparams_proj=None, *args, **kwargs) -> OptStep:
        """One projected gradient step from the state's point y.

        x⁺ = projection(y − η∇f(y), hyperparams_proj), with η fixed or found by backtracking
        (see the class); with acceleration, t⁺ = (1 + √(1 + 4t²))/2 and
        y⁺ = x⁺ + ((t − 1)/t⁺)(x⁺ − x), without it y⁺ = x⁺.

        Args:
          params: the current iterate x (used by the extrapolation).
          state: the state at x (from ``init_state`` or the last ``update``).
          hyperparams_proj: as in ``run``.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (error ‖x⁺ − y‖/η, y⁺, t⁺, η).
        """
        return self._update(params, state, hyperparams_proj, args, kwargs)

    def optimality(self):
        """The condition that the solution is differentiated through:
        x = projection(x − η∇₁f(x, *args), hyperparams_proj).

        η is ``stepsize`` when fixed, 1 with backtracking.

        Returns:
          ``("fixed_point", optimality.projected_gradient(fun, projection, η))``.
        """
        if self.value_and_grad:
            return "fixed_point", self._objective.proximal_gradient(
                self._projection_prox, self._fixed_point_stepsize
            )
        return "fixed_point", optimality.projected_gradient(
            self._objective.scalar(), self.projection, stepsize=self._fixed_point_stepsize
        )
