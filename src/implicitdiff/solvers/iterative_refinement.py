"""Iterative refinement of an inexact linear solver, as a solver class (JAXopt's
``IterativeRefinement``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _summary, linear_solve, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep

__all__ = ["IterativeRefinement", "IterativeRefinementState"]

#: JAXopt's default inner solver: GMRES on the slightly regularized A + 10⁻⁶ I.
DEFAULT_INNER_SOLVE = functools.partial(linear_solve.gmres, ridge=1e-6)


class IterativeRefinementState(NamedTuple):
    """iter_num, error = ‖b − A x‖ at the current x, converged, and the residual b − A x."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    target_residuals: PyTree
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


def _dense_matvec(A: Any, x: PyTree) -> PyTree:
    """A x for a matrix A (``jnp.dot``)."""
    return jnp.dot(A, x)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class IterativeRefinement(IterativeSolver):
    """A x = b by iterative refinement (Wilkinson, 1963) around an inexact solve with Ā ≈ A.

    ``run(init_params, A, b, A_bar=None)``. From x₀ (``init_params``; None: 0)::

        rₖ = b − A xₖ,   xₖ₊₁ = xₖ + inner_solve(Ā, rₖ),

    where Ā is A itself unless ``matvec_A_bar`` is given (a better conditioned or cheaper
    approximation, applied to ``A_bar``). While the inner solve errs by a relative ε < 1, each
    step shrinks the error by ε: the refinement converges to the exact solution of A x = b from
    a regularized, low-precision or loose inner solver. Stops when ‖rₖ‖ ≤ tol (absolute, as
    JAXopt) or after ``maxiter`` steps.

    The solution is differentiated through b − A x = 0 (in A and b; it does not depend on
    A_bar).

    Attributes:
      matvec_A: ``matvec_A(A, x)`` = A x; None (default): A is a matrix and A x = ``A @ x``.
      matvec_A_bar: ``matvec_A_bar(A_bar, x)`` = Ā x for the inner solve; None (default): Ā = A
        (``A_bar`` ignored).
      inner_solve: the inner solver ``inner_solve(matvec, r) -> x`` ≈ Ā⁻¹ r, or a name of
        :mod:`implicitdiff.linear_solve`; default GMRES on Ā + 10⁻⁶ I (JAXopt's default, which
        it calls ``solve``: here ``solve`` is the solver of the implicit derivative, as for
        every solver).
      maxiter, tol: stop when ‖b − A x‖ ≤ tol (default 1e-7) or after maxiter (10) steps.
      implicit_diff, unroll_checkpoint, jit: see :class:`IterativeSolver`; the implicit
        derivative's linear solver is ``implicit_diff_solve`` (``solve=`` is refused: JAXopt's
        ``solve`` is ``inner_solve`` here).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import IterativeRefinement
      >>> A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
      >>> x, state = IterativeRefinement().run(None, A, jnp.array([1.0, 0.0]))
    """

    _user_function = None  # run has its own signature
    _jaxopt_solve_is = ("inner_solve", "inner")  # JAXopt's solve=: refused (_base)

    matvec_A: Callable | None = dataclasses.field(default=None, kw_only=False)
    matvec_A_bar: Callable | None = dataclasses.field(default=None, kw_only=False)
    inner_solve: str | Callable = DEFAULT_INNER_SOLVE
    maxiter: int = 10
    tol: float = 1e-7

    def __post_init__(self):
        super().__post_init__()
        for name in ("matvec_A", "matvec_A_bar"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(
                    f"IterativeRefinement: {name} must be callable or None, got {value!r}"
                )
        object.__setattr__(self, "_inner", linear_solve.resolve(self.inner_solve))

    def _operator(self, A: Any) -> Callable:
        matvec = _dense_matvec if self.matvec_A is None else self.matvec_A
        return functools.partial(matvec, A)

    def _inner_operator(self, A: Any, A_bar: Any) -> Callable:
        if self.matvec_A_bar is None:
            return self._operator(A)
        return functools.partial(self.matvec_A_bar, A_bar)

    def run(self, init_params: PyTree = None, A: Any = None, b: PyTree = None, A_bar: Any = None):
        """Solve A x = b from ``init_params``; see the class.

        Args:
          init_params: x₀, a pytree like b, cast to b's dtype (the system is solved in it);
            None (default): zeros.
          A: the operator's data: a matrix, or what ``matvec_A`` takes; required.
          b: the right-hand side, a pytree; required.
          A_bar: the data of ``matvec_A_bar`` (ignored without it).

        Returns:
          ``OptStep(x, state)``: the solution and the ``IterativeRefinementState``.

        Raises:
          TypeError: A or b missing.
        """
        if A is None or b is None:
            raise TypeError("IterativeRefinement.run: A and b are required: run(init, A, b)")
        b = _checks.float_leaves(b)  # whole numbers: the solution is real
        if init_params is None:
            init_params = tree.zeros_like(b)
        elif jax.tree_util.tree_structure(init_params) == jax.tree_util.tree_structure(b):
            # A warm start solves in b's dtype, as the QP solvers solve in their data's.
            init_params = _dtypes.cast_like(init_params, b)
        return super().run(init_params, A, b, A_bar)

    def init_state(self, init_params, A, b, A_bar=None) -> IterativeRefinementState:
        """The state at x₀: its residual b − A x₀ and error ‖b − A x₀‖.

        Args:
          init_params: x₀, a pytree like b.
          A: the data of ``matvec_A`` (the matrix A by default), as in ``run``.
          b: the right-hand side, as in ``run``.
          A_bar: the data of ``matvec_A_bar`` (ignored without it), as in ``run``.

        Returns:
          An ``IterativeRefinementState`` with iter_num 0.
        """
        residual = tree.sub(b, self._operator(A)(init_params))
        return IterativeRefinementState(
            iter_num=jnp.asarray(0),
            error=tree.norm(jax.lax.stop_gradient(residual)),
            converged=jnp.asarray(False),
            target_residuals=residual,
        )

    def update(self, params, state: IterativeRefinementState, A, b, A_bar=None) -> OptStep:
        """One refinement x⁺ = x + inner_solve(Ā, b − A x), and the residual of x⁺.

        Args:
          params: the current x.
          state: the state at x.
          A: the data of ``matvec_A`` (the matrix A by default), as in ``run``.
          b: the right-hand side, as in ``run``.
          A_bar: the data of ``matvec_A_bar`` (ignored without it), as in ``run``.

        Returns:
          ``OptStep(x⁺, state)``.
        """
        correction = self._inner(self._inner_operator(A, A_bar), state.target_residuals)
        # In the iterate's dtype (A may be of a wider one than b).
        params = tree.add(params, _dtypes.cast_like(correction, params))
        residual = tree.sub(b, self._operator(A)(params))
        state = IterativeRefinementState(
            iter_num=state.iter_num + 1,
            error=tree.norm(jax.lax.stop_gradient(residual)).astype(state.error.dtype),
            converged=state.converged,
            target_residuals=residual,
        )
        return OptStep(params, state)

    def optimality_fun(self, params, A, b, A_bar=None) -> PyTree:
        """F(x, A, b) = b − A x, zero at the solution (A_bar plays no part).

        Args:
          params: x, a pytree like b.
          A: the data of ``matvec_A`` (the matrix A by default), as in ``run``.
          b: the right-hand side, as in ``run``.
          A_bar: the data of ``matvec_A_bar`` (ignored without it), as in ``run``.

        Returns:
          The residual b − A x, a pytree like b.
        """
        del A_bar
        return tree.sub(b, self._operator(A)(params))

    def optimality(self):
        """The condition that the solution is differentiated through: b − A x = 0.

        Returns:
          ``("root", F)`` with F(x, A, b, A_bar) = b − A x.
        """
        return "root", self.optimality_fun
