"""Proximal-type solvers: ProximalGradient, ProjectedGradient, MirrorDescent and
BlockCoordinateDescent.

Each minimizes a smooth ``fun(params, *args, **kwargs)`` plus a simple non-smooth term (a prox, a
constraint set, a Bregman geometry, or a block-separable prox) and is differentiated through the
fixed point of its own iteration, a builder of :mod:`implicitdiff.optimality` whose arguments are
those of ``run`` after ``init_params``, in the same order. The fixed point does not depend on the
step size of the map, so the condition uses a fixed one (each class says which); only the
conditioning of the linear system I − ∂₁T depends on it.

Step sizes found by a line search are computed on values cut from the graph (``stop_gradient``)
and enter the iteration as constants, as in :mod:`implicitdiff._linesearch`: unrolled
derivatives (``implicit_diff=False``) are then finite and correct almost everywhere. Errors are
computed on cut values too: they decide when to stop and are never differentiated.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _linesearch, _loop, optimality, tree
from implicitdiff import _projection_ops as projections
from implicitdiff import prox as prox_operators
from implicitdiff._typing import PyTree
from implicitdiff.solvers._base import IterativeSolver, OptStep

__all__ = [
    "BlockCoordinateDescent",
    "BlockCoordinateDescentState",
    "MirrorDescent",
    "MirrorDescentState",
    "ProjectedGradient",
    "ProximalGradient",
    "ProximalGradientState",
]


def _check_positive_number(value: Any, name: str, owner: str, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0) and value < float("inf")
    if not ok:
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# The backtracking line search of proximal gradient.


def _prox_backtracking(
    value_fun: Callable[[PyTree], jax.Array],
    grad_fun: Callable[[PyTree], PyTree],
    prox_step: Callable[[PyTree, jax.Array], PyTree],
    point: PyTree,
    value: jax.Array,
    grad: PyTree,
    stepsize: jax.Array,
    *,
    shrink: float = 0.5,
    maxiter: int = 30,
) -> jax.Array:
    """The accepted step η of proximal gradient from ``point`` y, a constant (cut from the graph).

    Starting at ``stepsize``, multiply η by ``shrink`` until x⁺ = prox_step(y − η∇f(y), η)
    satisfies the sufficient decrease of proximal gradient (Beck & Teboulle, 2009)

        f(x⁺) − f(y) − ⟨∇f(y), x⁺ − y⟩ ≤ ‖x⁺ − y‖² / (2η),

    or for ``maxiter`` trials. A non-finite f(x⁺) fails. Near a solution the right side falls
    below the rounding error of f (a few ulps of |f(y)|), and the left side, computed by
    cancellation, is noise: the test would then accept any η, or reject every one. There the left
    side is replaced by its gradient form ½⟨∇f(x⁺) − ∇f(y), x⁺ − y⟩ (equal for a quadratic f,
    and computed without that cancellation; the gradient is only evaluated in that case).
    Everything runs on values cut from the graph: η is piecewise constant in the problem's data,
    its derivative is zero almost everywhere.
    """
    point, value, grad, stepsize = jax.lax.stop_gradient((point, value, grad, stepsize))
    noise = 8 * jnp.finfo(jnp.result_type(value)).eps * jnp.abs(value)

    def accepted(eta):
        candidate = prox_step(tree.axpy(-eta, grad, point), eta)
        diff = tree.sub(candidate, point)
        new_value = value_fun(candidate)
        model = tree.vdot(diff, diff) / (2 * eta)
        by_value = new_value - value - tree.vdot(grad, diff) <= model

        def by_gradient(_):
            return 0.5 * tree.vdot(tree.sub(grad_fun(candidate), grad), diff) <= model

        resolved = model > noise
        ok = jax.lax.cond(resolved, lambda _: by_value, by_gradient, None)
        return ok & jnp.isfinite(new_value)

    eta, _, _, _ = _linesearch.shrink(
        lambda eta: (accepted(eta), ()), stepsize, factor=shrink, maxiter=maxiter + 1
    )
    return eta


# ---------------------------------------------------------------------------------------------
# Proximal and projected gradient.


class ProximalGradientState(NamedTuple):
    """iter_num, error = ‖x⁺ − y‖/η (the gradient mapping at y), converged, the extrapolated point
    y (``velocity``; y = x without acceleration), the momentum t, the last step size η."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    velocity: PyTree
    t: jax.Array
    stepsize: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class _ProximalGradientBase(IterativeSolver):
    """The proximal gradient loop, shared by ProximalGradient and ProjectedGradient."""

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    stepsize: float = 0.0
    acceleration: bool = True
    increase_factor: float = 1.5
    maxiter: int = 500
    tol: float = 1e-6

    @abc.abstractmethod
    def _prox(self) -> Callable:
        """The prox operator of the non-smooth part (ProximalGradient / ProjectedGradient)."""

    def _check_options(self, name: str) -> None:
        if not callable(self.fun):
            raise TypeError(f"{name}: fun must be callable, got {self.fun!r}")
        _check_positive_number(self.stepsize, "stepsize", name, allow_zero=True)
        if not isinstance(self.acceleration, bool):
            raise TypeError(f"{name}: acceleration must be a bool, got {self.acceleration!r}")
        if not (isinstance(self.increase_factor, (int, float)) and self.increase_factor >= 1):
            raise ValueError(f"{name}: increase_factor must be ≥ 1, got {self.increase_factor!r}")
        object.__setattr__(self, "_value_and_grad", jax.value_and_grad(self.fun))

    @property
    def _fixed_point_stepsize(self) -> float:
        """η of the fixed point that differentiates: the fixed step, or 1 with backtracking."""
        return float(self.stepsize) if self.stepsize > 0 else 1.0

    def _init_state(self, init_params) -> ProximalGradientState:
        dtype = tree.dtype(init_params)
        return ProximalGradientState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, dtype),
            converged=jnp.asarray(False),
            velocity=init_params,
            t=jnp.asarray(1.0, dtype),
            stepsize=jnp.asarray(self.stepsize if self.stepsize > 0 else 1.0, dtype),
        )

    def _update(self, params, state: ProximalGradientState, hyperparams, args, kwargs) -> OptStep:
        prox = self._prox()
        y = state.velocity
        value, grad = self._value_and_grad(y, *args, **kwargs)
        eta = state.stepsize
        if self.stepsize == 0:
            cut_hyperparams, cut_args, cut_kwargs = tree.stop_gradient((hyperparams, args, kwargs))
            eta = _prox_backtracking(
                lambda x: self.fun(x, *cut_args, **cut_kwargs),
                lambda x: jax.grad(self.fun)(x, *cut_args, **cut_kwargs),
                lambda z, s: prox(z, cut_hyperparams, s),
                y,
                value,
                grad,
                # At an exact solution (a zero residual) every step passes: keep η there, so
                # that a run continued past convergence (unrolling) does not overflow it.
                jnp.where(state.error > 0, eta * self.increase_factor, eta),
            )
        new_params = prox(tree.axpy(-eta, grad, y), hyperparams, eta)
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
      fun: the smooth part f(x, *args, **kwargs), a scalar.
      prox: the proximal operator of the non-smooth part (default :func:`implicitdiff.prox.none`).
      stepsize: η > 0 fixed (≤ 1/L for convergence), or 0 for backtracking (default).
      acceleration: FISTA (True, default) or ISTA (False).
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

    prox: Callable = dataclasses.field(default=prox_operators.none, kw_only=False)

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
        _checks.check_signature(
            self.fun, type(self).__name__, "fun", (init_params, *args), kwargs, "fun(params, *args)"
        )
        return self._init_state(init_params)

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
        return "fixed_point", optimality.proximal_gradient(
            self.fun, self.prox, stepsize=self._fixed_point_stepsize
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
      stepsize, acceleration, increase_factor, maxiter, tol: as in :class:`ProximalGradient`.
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

    projection: Callable | None = dataclasses.field(default=None, kw_only=False)

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

    def init_state(
        self, init_params, /, hyperparams_proj, *args, **kwargs
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
        _checks.check_signature(
            self.fun, type(self).__name__, "fun", (init_params, *args), kwargs, "fun(params, *args)"
        )
        return self._init_state(init_params)

    def update(self, params, state, /, hyperparams_proj, *args, **kwargs) -> OptStep:
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
        return "fixed_point", optimality.projected_gradient(
            self.fun, self.projection, stepsize=self._fixed_point_stepsize
        )


# ---------------------------------------------------------------------------------------------
# Mirror descent.


class MirrorDescentState(NamedTuple):
    """iter_num, error = ‖T(x) − x‖/η at the last iterate x, converged."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class MirrorDescent(IterativeSolver):
    """min_{x ∈ C} fun(x, *args) by mirror descent with a fixed step.

    ``run(init_params, hyperparams_proj, *args, **kwargs)``, as in JAXopt. With ``mapping`` = ∇φ
    the mirror map of a strictly convex φ and ``projection(z, hyperparams_proj)`` = P^φ the
    Bregman projection onto C of the point whose mirror image is z, each iteration is::

        x⁺ = T(x) = P^φ(∇φ(x) − η∇f(x), hyperparams_proj).

    The default (both None) is the negative entropy on simplices: every row of the last axis of
    each leaf of x is a simplex of total ``hyperparams_proj`` (1 if None), and
    x⁺ = x ⊙ exp(−η∇f(x)) / Σ(x ⊙ exp(−η∇f(x))) row by row, in the stable multiplicative form of
    :func:`implicitdiff.optimality.negative_entropy` (exponent shifted by its row maximum; no
    log x). Its iterates keep the support of ``init_params``: start from a point with positive
    entries (e.g. uniform rows). The loop stops when ‖x⁺ − x‖/η ≤ ``tol``, returning x⁺.

    η is fixed (no schedule): for f L-smooth with respect to the norm in which φ is 1-strongly
    convex (‖·‖₁ for the entropy, so L bounds |∂²f/∂xᵢ∂xⱼ|, row by row), η ≤ 1/L converges.
    The solution is differentiated through the same fixed point x = T(x)
    (:func:`implicitdiff.optimality.mirror_descent` with this ``projection``, ``mapping`` and η).
    With the entropy, I − ∂₁T has 1 − exp(−η δⱼ) on the coordinates j off the support (δⱼ the gap
    between their gradient and the row's minimum): too small an η makes it ill-conditioned.

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar.
      projection, mapping: P^φ and ∇φ, both or neither (None: the entropy on simplices).
      stepsize: η > 0 (default 1).
      maxiter, tol: at most ``maxiter`` (1000) iterations; stop when the error ≤ ``tol`` (1e-6).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.proximal import MirrorDescent
      >>> f = lambda p, c: 0.5 * jnp.sum(p**2) + c @ p  # a quadratic on the simplex
      >>> p, state = MirrorDescent(fun=f, stepsize=0.5).run(jnp.ones(3) / 3, None, jnp.arange(3.0))
    """

    _run_arguments = ("hyperparams_proj",)  # run(init_params, hyperparams_proj, *args, **kwargs)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    projection: Callable | None = None
    mapping: Callable | None = None
    stepsize: float = 1.0
    maxiter: int = 1000
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"MirrorDescent: fun must be callable, got {self.fun!r}")
        _check_positive_number(self.stepsize, "stepsize", "MirrorDescent", allow_zero=False)
        if (self.projection is None) != (self.mapping is None):
            raise TypeError(
                "MirrorDescent: give both projection and mapping, or neither (the negative "
                "entropy on simplices)"
            )
        for name in ("projection", "mapping"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"MirrorDescent: {name} must be callable, got {value!r}")
        object.__setattr__(self, "_grad", jax.grad(self.fun))

    def _step(self, params, hyperparams, grad):
        if self.projection is None:
            return optimality.negative_entropy(params, grad, self.stepsize, hyperparams)
        dual = tree.axpy(-self.stepsize, grad, self.mapping(params))
        return self.projection(dual, hyperparams)

    def init_state(self, init_params, /, hyperparams_proj, *args, **kwargs) -> MirrorDescentState:
        """The state before the first iteration (nothing is evaluated).

        Args:
          init_params: the starting point x₀, a pytree (positive entries for the entropy).
          hyperparams_proj: as in ``run`` (unused here).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``MirrorDescentState``: iter_num 0, error inf.
        """
        return MirrorDescentState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, tree.dtype(init_params)),
            converged=jnp.asarray(False),
        )

    def update(
        self, params, state: MirrorDescentState, /, hyperparams_proj, *args, **kwargs
    ) -> OptStep:
        """One step x⁺ = T(x) = P^φ(∇φ(x) − η∇f(x, *args), hyperparams_proj).

        By default the entropic step x ⊙ exp(−η∇f(x)), normalized row by row.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          hyperparams_proj: as in ``run``.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (error ‖x⁺ − x‖/η).
        """
        grad = self._grad(params, *args, **kwargs)
        new_params = self._step(params, hyperparams_proj, grad)
        diff = jax.lax.stop_gradient(tree.sub(new_params, params))
        error = (tree.norm(diff) / self.stepsize).astype(state.error.dtype)
        return OptStep(new_params, MirrorDescentState(state.iter_num + 1, error, state.converged))

    def optimality(self):
        """The condition that the solution is differentiated through:
        x = P^φ(∇φ(x) − η∇₁f(x, *args), hyperparams_proj).

        Returns:
          ``("fixed_point", optimality.mirror_descent(fun, projection, mapping, stepsize))``.
        """
        return "fixed_point", optimality.mirror_descent(
            self.fun, self.projection, self.mapping, stepsize=self.stepsize
        )


# ---------------------------------------------------------------------------------------------
# Block coordinate descent.


def _spectral_norms(hessians: jax.Array) -> jax.Array:
    """‖Hᵢ‖₂ of each symmetrized block Hᵢ (m × width × width), cut from the graph."""
    hessians = 0.5 * (hessians + jnp.swapaxes(hessians, -1, -2))
    return jax.lax.stop_gradient(jnp.max(jnp.abs(jnp.linalg.eigvalsh(hessians)), axis=-1))


def _block_lipschitz(fun: Callable, x: jax.Array, args: tuple, kwargs: dict) -> jax.Array:
    """Lᵢ = ‖∇²_{xᵢxᵢ} f(x)‖₂ for each row xᵢ of x: the curvature of f along each block, exact.

    The diagonal blocks of the Hessian are formed column by column with Hessian-vector products
    (as many as x has entries, the cost of one dense Hessian: one per block at a time, in a
    ``lax.map``), symmetrized, and their spectral norms taken by ``eigvalsh``. For a quadratic f
    (constant Hessian) Lᵢ is the Lipschitz constant of the block gradient; otherwise it is the
    curvature at x. Cut from the graph.
    """
    x, args, kwargs = tree.stop_gradient((x, args, kwargs))
    grad = jax.grad(fun)
    _, hvp = jax.linearize(lambda z: grad(z, *args, **kwargs), x)
    m, width = x.shape[0], x[0].size
    eye = jnp.eye(width, dtype=x.dtype).reshape((width, *x.shape[1:]))

    def block_hessian(i):
        basis = jnp.zeros((width, *x.shape), x.dtype).at[:, i].set(eye)
        basis = _loop.vary_like(basis, x)  # under shard_map: as varying as x
        return jax.vmap(hvp)(basis)[:, i].reshape(width, width)

    return _spectral_norms(jax.lax.map(block_hessian, jnp.arange(m)))


def _sum_of_blocks(block_fun: Callable, x: jax.Array, args: tuple, kwargs: dict) -> PyTree:
    """p = Σᵢ block_fun(xᵢ, i, *args, **kwargs): the m contributions (vmapped), summed."""
    contributions = jax.vmap(lambda xi, i: block_fun(xi, i, *args, **kwargs))(
        x, jnp.arange(x.shape[0])
    )
    return tree.map(lambda c: jnp.sum(c, axis=0), contributions)


def _composite_block_lipschitz(
    outer_fun: Callable, block_fun: Callable, x: jax.Array, args: tuple, kwargs: dict
) -> jax.Array:
    """Lᵢ = ‖∇²_{xᵢxᵢ} f(x)‖₂ for f(x) = outer_fun(Σⱼ block_fun(xⱼ, j)): the Hessian of
    z ↦ outer_fun(p − cᵢ(xᵢ) + cᵢ(z)) at z = xᵢ, one block at a time (``width`` Hessian-vector
    products of a function that costs one contribution and one outer_fun, not the whole f).
    Cut from the graph."""
    x, args, kwargs = tree.stop_gradient((x, args, kwargs))
    p = _sum_of_blocks(block_fun, x, args, kwargs)
    shape, width = x.shape[1:], x[0].size

    def block_hessian(i):
        rest = tree.sub(p, block_fun(x[i], i, *args, **kwargs))

        def restricted(z):
            contribution = block_fun(z.reshape(shape), i, *args, **kwargs)
            return outer_fun(tree.add(rest, contribution), *args, **kwargs)

        return jax.hessian(restricted)(x[i].reshape(width))

    return _spectral_norms(jax.lax.map(block_hessian, jnp.arange(x.shape[0])))


class BlockCoordinateDescentState(NamedTuple):
    """iter_num, error (the block gradient mapping, see the class), converged, the per-block
    step sizes ηᵢ, status; predictions: p = Σᵢ block_fun(xᵢ, i, *args) at the current x when
    f is given in composite form (kept up to date by the sweeps), else None."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    stepsize: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    predictions: Any = None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BlockCoordinateDescent(IterativeSolver):
    """min_x f(x, *args) + Σᵢ g(xᵢ, hyperparams_prox) by cyclic block coordinate descent.

    ``run(init_params, hyperparams_prox, *args, **kwargs)``, as in JAXopt. The blocks xᵢ are the
    rows (leading axis) of the array x, and ``block_prox(y, hyperparams_prox, scaling)`` is the
    prox of g on one row (e.g. ``prox.from_projection(projections.simplex)`` for one simplex per
    row). One iteration is one sweep, a ``lax.fori_loop`` over i = 1, …, m::

        xᵢ ← block_prox(xᵢ − ηᵢ[∇f(x)]ᵢ, hyperparams_prox, ηᵢ),   each with the latest x,

    with ηᵢ = 1/Lᵢ, Lᵢ = ‖∇²_{xᵢxᵢ}f‖₂ the Lipschitz constant of the block gradient, computed
    exactly at ``init_params`` from the diagonal blocks of the Hessian. This is exact for a
    quadratic f; for another f it is the curvature at ``init_params``, which may be too small
    elsewhere: give ``stepsize`` then. A block with Lᵢ = 0 gets the largest step of the others.

    With ``fun`` alone, f is a black box: each block step computes the whole gradient ∇f(x) (a
    sweep costs m gradients), and the Lᵢ cost one dense Hessian (as many Hessian-vector products
    as x has entries). Block coordinate descent pays off when f also comes in the form

        f(x, *args) = outer_fun(p, *args),   p = Σᵢ block_fun(xᵢ, i, *args)

    (p any pytree; the contributions cᵢ = block_fun(xᵢ, i, *args) may be any functions of xᵢ),
    given as ``outer_fun`` and ``block_fun``: JAXopt's composite objective made explicit. For a
    linear model p is the vector of predictions and cᵢ the part of one coordinate or one sample.
    The sweep then keeps p up to date, so that a block step costs one gradient of outer_fun and
    two contributions, not a gradient of f:

        [∇f(x)]ᵢ = ∂cᵢ(xᵢ)ᵀ ∇outer_fun(p),   p ← p − cᵢ(xᵢ) + cᵢ(xᵢ⁺),

    p carried in the state and recomputed from scratch every ``REFRESH`` sweeps (so that
    rounding cannot accumulate), and the Lᵢ cost ``width`` Hessian-vector products of
    z ↦ outer_fun(p − cᵢ(xᵢ) + cᵢ(z)) per block. For the lasso (blocks = coordinates),
    ``block_fun = lambda w_j, j, X, y: X[:, j] * w_j`` and ``outer_fun = lambda p, X, y: 0.5 *
    jnp.sum((p - y) ** 2)``. ``fun`` is still used where the whole gradient is needed (the error,
    the optimality condition), as written by the user (``X @ w`` is faster than a sum of m
    contributions); without it, f is assembled from the blocks. The two must agree (up to a
    constant): if they do not, the sweeps minimize another function, the error (measured with
    ``fun``) does not fall to ``tol``, and the run ends with ``converged`` False.

    The error is the block gradient mapping of the simultaneous map after the sweep,
    (Σᵢ ‖Tᵢ(x) − xᵢ‖²/ηᵢ²)^½ with Tᵢ(x) = block_prox(xᵢ − ηᵢ[∇f(x)]ᵢ, ·, ηᵢ) (one more
    gradient of f per sweep); it is 0 exactly at a solution, and the loop stops when it is
    ≤ ``tol``. The solution is differentiated through that fixed point x = T(x)
    (:func:`implicitdiff.optimality.block_proximal_gradient`) with these ηᵢ: ``stepsize`` when
    given, else 1/Lᵢ computed where the condition is evaluated (the solution; equal to the
    solver's for a quadratic f, and any ηᵢ > 0 has the same fixed points), as constants. A
    fixed η (JAXopt takes η = 1) would give the same derivatives for less work, but 1/Lᵢ scales
    each block of I − ∂₁T as a block-Jacobi preconditioner would: on an SVM dual whose rows'
    Lᵢ spread over a factor e⁴, the backward GMRES solve took 7 times longer with η = 1. The Lᵢ
    are recomputed where the condition is evaluated, once per derivative (cheap in composite form).

    Attributes:
      fun: the smooth part f(x, *args, **kwargs), a scalar; x a JAX array (not a pytree).
        Optional when ``outer_fun`` and ``block_fun`` are given.
      block_prox: the prox of g on one block, ``block_prox(xᵢ, hyperparams_prox, scaling)``.
      stepsize: 0 (default) for ηᵢ = 1/Lᵢ; a number > 0, or an array of one ηᵢ > 0 per block.
      outer_fun: ``outer_fun(p, *args, **kwargs)``, a scalar, with p as ``block_fun`` returns.
      block_fun: ``block_fun(x_i, i, *args, **kwargs)``, the contribution of block i to p (i a
        traced integer: index the data with it, e.g. ``X[i]``).
      maxiter, tol: at most ``maxiter`` (500) sweeps; stop when the error ≤ ``tol`` (1e-6).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import prox
      >>> from implicitdiff.solvers.proximal import BlockCoordinateDescent
      >>> X, y = jnp.array([[1.0, 0.5], [0.0, 2.0], [1.0, 1.0]]), jnp.array([1.0, 2.0, 0.5])
      >>> f = lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)  # coordinate descent for the lasso
      >>> w, state = BlockCoordinateDescent(fun=f, block_prox=prox.l1).run(jnp.zeros(2), 0.1, X, y)
      >>> w2, _ = BlockCoordinateDescent(  # the same, each step O(len(y)) instead of O(X.size)
      ...     fun=f,
      ...     block_prox=prox.l1,
      ...     outer_fun=lambda p, X, y: 0.5 * jnp.sum((p - y) ** 2),
      ...     block_fun=lambda w_j, j, X, y: X[:, j] * w_j,
      ... ).run(jnp.zeros(2), 0.1, X, y)
    """

    _run_arguments = ("hyperparams_prox",)  # run(init_params, hyperparams_prox, *args, **kwargs)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    block_prox: Callable | None = dataclasses.field(default=None, kw_only=False)
    stepsize: Any = 0.0
    maxiter: int = 500
    tol: float = 1e-6
    outer_fun: Callable | None = None
    block_fun: Callable | None = None

    #: In composite form, p is recomputed from scratch every this many sweeps.
    REFRESH: ClassVar[int] = 10

    def __post_init__(self):
        super().__post_init__()
        name = "BlockCoordinateDescent"
        object.__setattr__(
            self, "_composite", self.outer_fun is not None or self.block_fun is not None
        )
        labels = ("outer_fun", "block_fun") if self._composite else ()
        if self.fun is not None or not self._composite:
            labels = ("fun", *labels)
        for label in labels:
            if not callable(getattr(self, label)):
                raise TypeError(f"{name}: {label} must be callable, got {getattr(self, label)!r}")
        if not callable(self.block_prox):
            raise TypeError(f"{name}: block_prox must be callable, got {self.block_prox!r}")
        if isinstance(self.stepsize, (int, float)) and not isinstance(self.stepsize, bool):
            _check_positive_number(self.stepsize, "stepsize", name, allow_zero=True)
        else:
            try:
                steps = jnp.asarray(self.stepsize)
            except TypeError:
                steps = None
            if steps is None or steps.ndim != 1 or not bool(jnp.all(steps > 0)):
                raise ValueError(
                    f"{name}: stepsize must be a number ≥ 0 or a 1-d array of positive "
                    f"per-block steps, got {self.stepsize!r}"
                )
        object.__setattr__(
            self, "_smooth", self.fun if self.fun is not None else self._composite_fun
        )
        object.__setattr__(self, "_grad", jax.grad(self._smooth))

    def _composite_fun(self, x, /, *args, **kwargs):
        """f(x) = outer_fun(Σᵢ block_fun(xᵢ, i, *args), *args)."""
        return self.outer_fun(_sum_of_blocks(self.block_fun, x, args, kwargs), *args, **kwargs)

    def _stepsizes(self, x: jax.Array, args: tuple, kwargs: dict) -> jax.Array:
        """ηᵢ, one per row of x: the given ``stepsize``, or 1/Lᵢ at x (cut from the graph)."""
        x = jnp.asarray(x)
        if not (isinstance(self.stepsize, (int, float)) and self.stepsize == 0):
            steps = jnp.asarray(self.stepsize, x.dtype)
            if steps.ndim == 1 and steps.shape[0] != x.shape[0]:
                raise ValueError(
                    f"BlockCoordinateDescent: stepsize has {steps.shape[0]} entries for "
                    f"{x.shape[0]} blocks"
                )
            return jnp.broadcast_to(steps, x.shape[:1])
        if self._composite:
            lipschitz = _composite_block_lipschitz(self.outer_fun, self.block_fun, x, args, kwargs)
        else:
            lipschitz = _block_lipschitz(self.fun, x, args, kwargs)
        fallback = jnp.max(lipschitz)
        fallback = jnp.where(fallback > 0, fallback, 1.0)
        return 1.0 / jnp.where(lipschitz > 0, lipschitz, fallback)

    def _error(self, x, steps, hyperparams, args, kwargs) -> jax.Array:
        x, steps, hyperparams, args, kwargs = tree.stop_gradient(
            (x, steps, hyperparams, args, kwargs)
        )
        fixed_point = optimality.block_proximal_gradient(self._smooth, self.block_prox, steps)
        diff = (fixed_point(x, hyperparams, *args, **kwargs) - x) / steps.reshape(
            (-1,) + (1,) * (x.ndim - 1)
        )
        return tree.norm(diff)

    def init_state(
        self, init_params, /, hyperparams_prox, *args, **kwargs
    ) -> BlockCoordinateDescentState:
        """The state before the first sweep: the step sizes ηᵢ, and p in composite form.

        Args:
          init_params: the starting point x₀, an array with at least one axis (its rows are the
            blocks).
          hyperparams_prox: as in ``run`` (unused here).
          *args: the arguments of ``fun`` (and of ``outer_fun``, ``block_fun``) after x, as in
            ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``BlockCoordinateDescentState``: iter_num 0, error inf, ηᵢ (``stepsize``, or 1/Lᵢ
            computed at x₀), and p = Σᵢ block_fun(x₀ᵢ, i, *args) in composite form (else None).

        Raises:
          ValueError: x₀ has no axis, or ``stepsize`` has not one entry per block.
        """
        init_params = jnp.asarray(init_params)
        if init_params.ndim < 1:
            raise ValueError("BlockCoordinateDescent: params must be an array with ≥ 1 axis")
        dtype = tree.dtype(init_params)
        return BlockCoordinateDescentState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, dtype),
            converged=jnp.asarray(False),
            stepsize=self._stepsizes(init_params, args, kwargs).astype(dtype),
            predictions=self._predictions(init_params, args, kwargs),
        )

    def _predictions(self, x, args, kwargs) -> PyTree:
        """p = Σᵢ block_fun(xᵢ, i, *args) in composite form (None otherwise)."""
        return _sum_of_blocks(self.block_fun, x, args, kwargs) if self._composite else None

    def _sweep(self, x, p, steps, hyperparams_prox, args, kwargs):
        """One pass over the blocks, each updated with the latest x; returns x and p."""

        def prox_step(i, x, g):
            return self.block_prox(x[i] - steps[i] * g, hyperparams_prox, steps[i])

        if not self._composite:

            def block_step(i, x):
                return x.at[i].set(prox_step(i, x, self._grad(x, *args, **kwargs)[i]))

            return jax.lax.fori_loop(0, x.shape[0], block_step, x), p

        grad_outer = jax.grad(self.outer_fun)

        def composite_step(i, carry):
            x, p = carry
            old, vjp = jax.vjp(lambda z: self.block_fun(z, i, *args, **kwargs), x[i])
            (g,) = vjp(grad_outer(p, *args, **kwargs))
            new = prox_step(i, x, g)
            p = tree.add(tree.sub(p, old), self.block_fun(new, i, *args, **kwargs))
            return x.at[i].set(new), p

        return jax.lax.fori_loop(0, x.shape[0], composite_step, (x, p))

    def update(
        self, params, state: BlockCoordinateDescentState, /, hyperparams_prox, *args, **kwargs
    ) -> OptStep:
        """One sweep over the blocks i = 1, …, m.

        Each block is updated with the latest x, xᵢ ← block_prox(xᵢ − ηᵢ[∇f(x)]ᵢ, hyperparams_prox,
        ηᵢ) (in composite form with p kept up to date, and recomputed every ``REFRESH`` sweeps).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          hyperparams_prox: as in ``run``.
          *args: the arguments of ``fun`` (and of ``outer_fun``, ``block_fun``) after x, as in
            ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x after the sweep and its state (the error, the block gradient
            mapping at it; p).
        """
        params, steps, p = jnp.asarray(params), state.stepsize, state.predictions
        if self._composite and p is None:  # a state built by hand
            p = self._predictions(params, args, kwargs)
        elif self._composite:  # p from scratch every REFRESH sweeps: no accumulated rounding
            p = jax.lax.cond(
                (state.iter_num + 1) % self.REFRESH == 0,
                lambda: self._predictions(params, args, kwargs),
                lambda: p,
            )
        new_params, p = self._sweep(params, p, steps, hyperparams_prox, args, kwargs)
        error = self._error(new_params, steps, hyperparams_prox, args, kwargs)
        state = state._replace(
            iter_num=state.iter_num + 1, error=error.astype(state.error.dtype), predictions=p
        )
        return OptStep(new_params, state)

    def optimality(self):
        """The condition that the solution is differentiated through:
        xᵢ = block_prox(xᵢ − ηᵢ[∇₁f(x, *args)]ᵢ, hyperparams_prox, ηᵢ) for every block i.

        The ηᵢ are ``stepsize``, or 1/Lᵢ computed where the condition is evaluated, as constants.

        Returns:
          ``("fixed_point", T)`` with T(x, hyperparams_prox, *args, **kwargs)
            (:func:`implicitdiff.optimality.block_proximal_gradient`).
        """

        def fixed_point_fun(x, /, hyperparams_prox, *args, **kwargs):
            steps = self._stepsizes(jax.lax.stop_gradient(x), args, kwargs)
            condition = optimality.block_proximal_gradient(self._smooth, self.block_prox, steps)
            return condition(x, hyperparams_prox, *args, **kwargs)

        fixed_point_fun.symmetric = False
        fixed_point_fun.__name__ = "block_proximal_gradient_fixed_point"
        return "fixed_point", fixed_point_fun
