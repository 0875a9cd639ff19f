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

from implicitdiff import _checks, optimality, tree
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._objective import Objective, check_objective_options

__all__ = ["MirrorDescent", "MirrorDescentState"]


class MirrorDescentState(NamedTuple):
    """iter_num, error = ‖T(x) − x‖/η at the last iterate x, converged."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    aux: Any = None  # fun's aux at the current x (has_aux=True)


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

    _run_arguments = ("hyperparams_proj",)  # run(init_params, hyperparams_proj, *args, **kwargs)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    projection: Callable | None = None
    mapping: Callable | None = None
    stepsize: float = 1.0
    maxiter: int = 1000
    has_aux: bool = False
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"MirrorDescent: fun must be callable, got {self.fun!r}")
        _checks.check_positive_number(self.stepsize, "stepsize", "MirrorDescent", allow_zero=False)
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
            aux=self._objective.aux(init_params, *args, **kwargs),
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
        aux = self._objective.aux(new_params, *args, **kwargs)
        state = MirrorDescentState(state.iter_num + 1, error, state.converged, aux=aux)
        return OptStep(new_params, state)

    def optimality(self):
        """The condition that the solution is differentiated through:
        x = P^φ(∇φ(x) − η∇₁f(x, *args), hyperparams_proj).

        Returns:
          ``("fixed_point", optimality.mirror_descent(fun, projection, mapping, stepsize))``.
        """
        return "fixed_point", optimality.mirror_descent(
            self._objective.scalar(), self.projection, self.mapping, stepsize=self.stepsize
        )
