"""The solver protocol and the one loop every solver runs.

A solver is configured once, then ``solver.run(init_params, *args, **kwargs)`` returns an
:class:`OptStep` ``(params, state)``. Users who drive the loop themselves call
``state = solver.init_state(init_params, *args)`` and ``params, state = solver.update(params,
state, *args)``.

Differentiation is added in one place, :meth:`IterativeSolver.run`: with ``implicit_diff=True``
(the default) the loop is wrapped by :func:`implicitdiff.custom_root` or
:func:`implicitdiff.custom_fixed_point` with the solver's own condition from
:mod:`implicitdiff.optimality`, and the iterations are never differentiated; with
``implicit_diff=False`` the loop runs a fixed ``maxiter`` masked steps in a ``lax.scan`` that
JAX differentiates step by step (unrolling), optionally checkpointed to bound its memory.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import tree
from implicitdiff.implicit import custom_fixed_point, custom_root

PyTree = Any

__all__ = ["DifferentiableRun", "IterativeSolver", "OptStep"]


class OptStep(NamedTuple):
    """What ``run`` and ``update`` return: unpacks as ``params, state``."""

    params: PyTree
    state: Any


def _is_traced(leaf: Any) -> bool:
    """What ``jax.jit`` would trace: arrays and numbers (Python's and NumPy's)."""
    return isinstance(leaf, (jax.Array, int, float, complex)) or hasattr(leaf, "__array__")


class _ArgsSplit:
    """(args, kwargs) split into leaves that jit traces (arrays, numbers) and the rest (static:
    None, strings, callables, ...), which must be hashable."""

    def __init__(self, args: tuple, kwargs: dict):
        leaves, self.treedef = jax.tree_util.tree_flatten((args, kwargs))
        self.mask = tuple(_is_traced(leaf) for leaf in leaves)
        self.arrays = [leaf for leaf, m in zip(leaves, self.mask, strict=True) if m]
        self.static = tuple(None if m else leaf for leaf, m in zip(leaves, self.mask, strict=True))

    def key(self) -> tuple:
        return (self.treedef, self.mask, self.static)

    @staticmethod
    def merge(key: tuple, arrays: list) -> tuple[tuple, dict]:
        treedef, mask, static = key
        it = iter(arrays)
        leaves = [next(it) if m else s for m, s in zip(mask, static, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, leaves)


class DifferentiableRun(abc.ABC):
    """``run`` for every solver: ``self._solution`` wrapped for implicit differentiation, jitted.

    A subclass provides ``_solution(init_params, *args, **kwargs) -> (params, state)`` and
    ``optimality() -> ("root", F) | ("fixed_point", T)``, and has the attributes
    ``implicit_diff``, ``solve`` and ``jit``; ``__post_init__`` must set ``self._compiled = {}``.
    """

    @abc.abstractmethod
    def _solution(self, init_params: PyTree, *args, **kwargs) -> tuple[PyTree, Any]:
        """Subclasses define it (see the class docstring)."""

    @abc.abstractmethod
    def optimality(self) -> tuple[str, Callable]:
        """Subclasses define it (see the class docstring)."""

    def _differentiable_solution(self) -> Callable:
        if not self.implicit_diff:
            return self._solution
        kind, fun = self.optimality()
        decorator = custom_root if kind == "root" else custom_fixed_point
        return decorator(fun, has_aux=True, solve=self.solve)(self._solution)

    def run(self, init_params: PyTree, *args, **kwargs) -> OptStep:
        """Solve from ``init_params``; returns ``OptStep(params, state)``.

        The arguments after ``init_params`` are those of the solver's objective (or of its
        operators), as each solver documents; the solution is differentiable with respect to
        each of them (not with respect to ``init_params``).
        """
        solution = self._differentiable_solution()
        if not self.jit:
            return OptStep(*solution(init_params, *args, **kwargs))
        split = _ArgsSplit(args, kwargs)
        key = split.key()
        try:
            compiled = self._compiled.get(key)
        except TypeError:
            raise TypeError(
                f"{type(self).__name__}.run: with jit=True, arguments that are not arrays must be "
                "hashable (they are compile-time constants); pass arrays, or jit=False"
            ) from None
        if compiled is None:

            def run_arrays(init_params, arrays):
                a, k = _ArgsSplit.merge(key, arrays)
                return solution(init_params, *a, **k)

            compiled = self._compiled[key] = jax.jit(run_arrays)
        return OptStep(*compiled(init_params, split.arrays))


@dataclasses.dataclass(eq=False)
class IterativeSolver(DifferentiableRun):
    """Base of every iterative solver.

    Subclasses are dataclasses that define ``init_state``, ``update`` and ``optimality``; this
    class provides ``run``. Common options (each solver documents its defaults):

    Attributes:
      maxiter: the most iterations (≥ 1).
      tol: stop when ``state.error`` ≤ tol (≥ 0).
      implicit_diff: differentiate the solution implicitly through the solver's optimality
        condition (True, the default), or unroll the iterations (False).
      solve: the linear solver of the implicit derivative (see :func:`implicitdiff.custom_root`).
      unroll_checkpoint: with ``implicit_diff=False``, recompute each iteration in the backward
        pass instead of storing it (``jax.checkpoint``): memory of one iteration's intermediates
        instead of ``maxiter`` of them, for about one more forward pass of time.
      jit: compile ``run`` (the default), once per shape and dtype of the arguments. Arrays and
        numbers are traced as ``jax.jit`` traces them; other arguments (strings, callables,
        ...) are compile-time constants: they must be hashable, and a new value recompiles.
    """

    maxiter: int = 500
    tol: float = 1e-3
    implicit_diff: bool = True
    solve: str | Callable | None = None
    unroll_checkpoint: bool = False
    jit: bool = True

    # Subclasses: state = init_state(params, *args); OptStep = update(params, state, *args);
    # optimality() -> ("root", F) or ("fixed_point", T), F and T taking (params, *args).

    @abc.abstractmethod
    def init_state(self, init_params: PyTree, *args, **kwargs) -> Any:
        """Subclasses define it (see the class docstring)."""

    @abc.abstractmethod
    def update(self, params: PyTree, state: Any, *args, **kwargs) -> OptStep:
        """Subclasses define it (see the class docstring)."""

    def __post_init__(self):
        if not (isinstance(self.maxiter, int) and self.maxiter >= 1):
            raise ValueError(f"maxiter must be a positive int, got {self.maxiter!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}")
        self._compiled: dict = {}

    # -- the loop ---------------------------------------------------------------------------

    def _done(self, state) -> jax.Array:
        return (state.iter_num >= self.maxiter) | (state.error <= self.tol)

    def _finish(self, params, state):
        """The state at exit: ``converged`` set from the error (and finite params)."""
        finite = jnp.all(
            jnp.asarray(
                [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params)]
                or [True]
            )
        )
        converged = (state.error <= self.tol) & finite & jnp.isfinite(state.error)
        return params, state._replace(converged=converged)

    def _solution(self, init_params, *args, **kwargs):
        return self._iterate(init_params, *args, **kwargs)

    def _iterate(self, init_params, *args, **kwargs):
        state = self.init_state(init_params, *args, **kwargs)

        def step(carry):
            params, state = carry
            return tuple(self.update(params, state, *args, **kwargs))

        if self.implicit_diff:
            carry = jax.lax.while_loop(
                lambda carry: jnp.logical_not(self._done(carry[1])), step, (init_params, state)
            )
        else:
            # Unrolling: a fixed number of steps, frozen once done, that reverse mode can follow.
            def masked_step(carry, _):
                moved = step(carry)
                return tree.where(self._done(carry[1]), carry, moved), None

            if self.unroll_checkpoint:
                masked_step = jax.checkpoint(masked_step)
            carry, _ = jax.lax.scan(masked_step, (init_params, state), None, length=self.maxiter)
        return self._finish(*carry)
