"""Mirror descent: MirrorDescent, minimization over a set with a Bregman geometry.

Differentiated through the fixed point of its own iteration
(:func:`implicitdiff.optimality.mirror_descent`), whose arguments are those of ``run`` after
``init_params``, in the same order. Errors are computed on values cut from the graph: they
decide when to stop and are never differentiated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, _summary, optimality, tree
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._objective import (
    Objective,
    check_objective_options,
    scheduled_stepsize,
)

__all__ = ["MirrorDescent", "MirrorDescentState"]


class MirrorDescentState(NamedTuple):
    """iter_num, error = ‖T(x) − x‖/η at the last iterate x, converged."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    aux: Any = None  # fun's aux at the current x (has_aux=True)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class MirrorDescent(IterativeSolver):
    """min_{x ∈ C} fun(x, *args) by mirror descent with a fixed step.

    ``run(init_params, hyperparams_proj, *args, **kwargs)``, as in JAXopt. With ``mapping`` = ∇φ
    the mirror map of a strictly convex φ and ``projection(z, hyperparams_proj)`` = P^φ the
    Bregman projection onto C of the point whose mirror image is z, each iteration is::

        x⁺ = T(x) = P^φ(∇φ(x) − η∇f(x), hyperparams_proj).

    As in JAXopt, the step may instead be given whole as ``projection_grad(x, g, η,
    hyperparams_proj)`` (e.g. ``projection(mapping(x) − η g, hyperparams_proj)``), with
    g = ∇f(x): then x⁺ = projection_grad(x, ∇f(x), η, hyperparams_proj).

    The default (``projection``, ``mapping`` and ``projection_grad`` None) is the negative
    entropy on simplices: every row of the last axis of
    each leaf of x is a simplex of total ``hyperparams_proj`` (1 if None), and
    x⁺ = x ⊙ exp(−η∇f(x)) / Σ(x ⊙ exp(−η∇f(x))) row by row, in the stable multiplicative form of
    :func:`implicitdiff.optimality.negative_entropy` (exponent shifted by its row maximum; no
    log x). Its iterates keep the support of ``init_params``: start from a point with positive
    entries (e.g. uniform rows). The loop stops when ‖x⁺ − x‖/η ≤ ``tol``, returning x⁺.

    η is ``stepsize``, or ``stepsize(iter_num)`` when it is a callable (JAXopt's schedule; the
    implicit derivative then uses η = 1 in the fixed point, which has the same solutions). For f
    L-smooth with respect to the norm in which φ is 1-strongly convex (‖·‖₁ for the entropy, so
    L bounds |∂²f/∂xᵢ∂xⱼ|, row by row), η ≤ 1/L converges.
    The solution is differentiated through the same fixed point x = T(x)
    (:func:`implicitdiff.optimality.mirror_descent` with this ``projection``, ``mapping`` and η).
    With the entropy, I − ∂₁T has 1 − exp(−η δⱼ) on the coordinates j off the support (δⱼ the gap
    between their gradient and the row's minimum): too small an η makes it ill-conditioned.

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar.
      projection_grad: JAXopt's whole step ``projection_grad(x, g, η, hyperparams_proj)``, or
        None (default): then ``projection`` and ``mapping`` (or the entropy) define it.
      stepsize: η > 0 (default 1), or a callable ``stepsize(iter_num)`` returning η > 0.
      projection, mapping: P^φ and ∇φ, both or neither (None: the entropy on simplices); not
        with ``projection_grad``.
      has_aux: whether ``fun`` returns (f, aux); aux (at the returned x: one more evaluation of
        ``fun`` per iteration) is kept in ``state.aux`` and plays no part in the iteration or
        the derivative (False).
      maxiter, tol: at most ``maxiter`` (1000) iterations; stop when the error ≤ ``tol`` (1e-6).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.mirror_descent import MirrorDescent
      >>> f = lambda p, c: 0.5 * jnp.sum(p**2) + c @ p  # a quadratic on the simplex
      >>> p, state = MirrorDescent(fun=f, stepsize=0.5).run(jnp.ones(3) / 3, None, jnp.arange(3.0))
    """

    _leading_run_arguments = 1  # run's argument before fun's (see DifferentiableRun)

    _run_arguments = ("hyperparams_proj",)  # run(init_params, hyperparams_proj, *args, **kwargs)
    _run_argument_optional = True  # hyperparams_proj=None, as JAXopt
    _solution_name = "sol"  # JAXopt's optimality_fun(sol, ...)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    projection_grad: Callable | None = dataclasses.field(default=None, kw_only=False)
    stepsize: float | Callable = dataclasses.field(default=1.0, kw_only=False)
    projection: Callable | None = None
    mapping: Callable | None = None
    maxiter: int = 1000
    has_aux: bool = False
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"MirrorDescent: fun must be callable, got {self.fun!r}")
        if not callable(self.stepsize):
            _checks.check_positive_number(
                self.stepsize, "stepsize", "MirrorDescent", allow_zero=False
            )
        if self.projection_grad is not None:
            if not callable(self.projection_grad):
                raise TypeError(
                    f"MirrorDescent: projection_grad must be callable, got {self.projection_grad!r}"
                )
            if self.projection is not None or self.mapping is not None:
                raise TypeError(
                    "MirrorDescent: give projection_grad (JAXopt's whole step) or projection and "
                    "mapping, not both"
                )
        if (self.projection is None) != (self.mapping is None):
            raise TypeError(
                "MirrorDescent: give both projection and mapping, or neither (the negative "
                "entropy on simplices)"
            )
        for name in ("projection", "mapping"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"MirrorDescent: {name} must be callable, got {value!r}")
        check_objective_options("MirrorDescent", False, self.has_aux)
        object.__setattr__(self, "_objective", Objective(self.fun, has_aux=self.has_aux))
        object.__setattr__(self, "_grad", self._objective.grad)

    def _entropy(self) -> bool:
        """Whether the step is the default entropic one (x ⊙ exp(−η∇f), normalized)."""
        return self.projection_grad is None and self.projection is None

    def _check_arguments(self, init_params, args, kwargs) -> None:
        """With the entropy, a concrete start with a negative entry is refused: the
        multiplicative step keeps its signs and support, and stops at a fixed point that is not
        the minimizer, reported converged (a start [0.5, −0.2, 0.1] ended at [0, 1, 0]). A NaN
        start is flagged, as with every solver (NaN result, converged False)."""
        super()._check_arguments(init_params, args, kwargs)
        if not self._entropy():
            return
        leaves = _checks.concrete_leaves(init_params)
        if leaves is not None and any(np.any(leaf < 0) for leaf in leaves):
            raise ValueError(
                "MirrorDescent.run: init_params must have non-negative entries with the entropy "
                "(the default mirror map), whose steps keep the signs and the support of the "
                "start: start from positive rows (e.g. uniform ones)"
            )

    def _fixed_stepsize(self) -> float:
        """η in the fixed point that differentiates the solution: 1 for a schedule."""
        return 1.0 if callable(self.stepsize) else self.stepsize

    def _stepsize_at(self, iter_num, dtype):
        return scheduled_stepsize(self.stepsize, iter_num, dtype, "MirrorDescent")

    def _step(self, params, hyperparams, grad, stepsize):
        def checked(name):  # the user's operator, its output checked against its input
            return _checks.output_like_input(getattr(self, name), "MirrorDescent", name)

        if self.projection_grad is not None:
            return checked("projection_grad")(params, grad, stepsize, hyperparams)
        if self.projection is None:
            return optimality.negative_entropy(params, grad, stepsize, hyperparams)
        dual = tree.axpy(-stepsize, grad, checked("mapping")(params))
        return checked("projection")(dual, hyperparams)

    def run(self, init_params, hyperparams_proj=None, *args, **kwargs) -> OptStep:
        """Solve from ``init_params``.

        Args:
          init_params: the starting point x₀, a pytree (positive entries for the entropy).
          hyperparams_proj: the projection's hyperparameters (differentiable); optional, None
            by default, as in JAXopt (the entropy's simplices then have total 1).
          *args: the arguments of ``fun`` after x (differentiable).
          **kwargs: its keyword arguments.

        Returns:
          ``OptStep(params, state)``: the solution and its ``MirrorDescentState``.
        """
        return super().run(init_params, hyperparams_proj, *args, **kwargs)

    def init_state(
        self, init_params, /, hyperparams_proj=None, *args, **kwargs
    ) -> MirrorDescentState:
        """The state before the first iteration (nothing is evaluated).

        Args:
          init_params: the starting point x₀, a pytree (positive entries for the entropy).
          hyperparams_proj: as in ``run`` (unused here).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``MirrorDescentState``: iter_num 0, error inf.
        """
        error = jnp.asarray(jnp.inf, tree.dtype(init_params))
        if self._entropy():  # a start with a negative entry (traced): NaN, flagged at once
            leaves = jax.tree_util.tree_leaves(init_params)
            if leaves:
                bad = jnp.any(jnp.stack([jnp.any(~(jnp.asarray(v) >= 0)) for v in leaves]))
                # inf · 0 = NaN only where the start is bad (no NaN sentinel selected away,
                # which jax.debug_nans would report as the user's).
                error = error * jnp.where(bad, 0, 1).astype(error.dtype)
        return MirrorDescentState(
            iter_num=jnp.asarray(0),
            error=error,
            converged=jnp.asarray(False),
            aux=self._objective.aux(init_params, *args, **kwargs),
        )

    def update(
        self, params, state: MirrorDescentState, /, hyperparams_proj=None, *args, **kwargs
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
        stepsize = self._stepsize_at(state.iter_num, state.error.dtype)
        new_params = self._step(params, hyperparams_proj, grad, stepsize)
        diff = jax.lax.stop_gradient(tree.sub(new_params, params))
        error = (tree.norm(diff) / stepsize).astype(state.error.dtype)
        aux = self._objective.aux(new_params, *args, **kwargs)
        state = MirrorDescentState(state.iter_num + 1, error, state.converged, aux=aux)
        return OptStep(new_params, state)

    def optimality(self):
        """The condition that the solution is differentiated through:
        x = P^φ(∇φ(x) − η∇₁f(x, *args), hyperparams_proj).

        With ``projection_grad``: x = projection_grad(x, ∇₁f(x, *args), η, hyperparams_proj).
        η is ``stepsize``, or 1 when it is a schedule.

        Returns:
          ``("fixed_point", optimality.mirror_descent(fun, projection, mapping, stepsize))``,
            or the ``projection_grad`` map above.
        """
        if self.projection_grad is not None:
            return "fixed_point", _projection_grad_map(
                self._grad, self.projection_grad, self._fixed_stepsize()
            )
        return "fixed_point", optimality.mirror_descent(
            self._objective.scalar(), self.projection, self.mapping, stepsize=self._fixed_stepsize()
        )


def _projection_grad_map(grad: Callable, projection_grad: Callable, stepsize: float) -> Callable:
    """T(x, hyperparams_proj, *args) = projection_grad(x, ∇₁f(x, *args), η, hyperparams_proj)."""

    def fixed_point_map(x, hyperparams_proj, *args, **kwargs):
        return projection_grad(x, grad(x, *args, **kwargs), stepsize, hyperparams_proj)

    return fixed_point_map
