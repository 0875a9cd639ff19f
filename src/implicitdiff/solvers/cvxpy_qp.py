"""min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h solved by cvxpy on the host, differentiated through the
KKT conditions: :class:`CvxpyQP` (JAXopt's ``CvxpyQP``), runnable under ``jit`` and ``vmap``.

cvxpy is an optional dependency (``pip install implicitdiff[cvxpy]``): it is imported when a
problem is solved, never when this module is.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _loop, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._failures import Status
from implicitdiff.solvers._host_call import HostWrapper, all_finite
from implicitdiff.solvers._qp_common import (
    KKTSolution,
    check_constraint_shapes,
    check_pair,
    dtype_of,
    qp_kkt,
)

__all__ = ["CvxpyQP", "CvxpyQPState"]


class CvxpyQPState(NamedTuple):
    """The state of :class:`CvxpyQP` at its solution (JAXopt returns None).

    Attributes:
      iter_num: −1 (cvxpy reports no iteration count common to its solvers).
      error: ‖F(x, ν, λ)‖₂ of the KKT conditions F (:func:`qp_kkt`), computed in JAX.
      converged: cvxpy's status "optimal", a finite solution, and error ≤ ``tol``.
      status: a :class:`~implicitdiff.solvers.Status` code: CONVERGED, PRIMAL_INFEASIBLE
        (cvxpy's "infeasible"), DUAL_INFEASIBLE ("unbounded"), MAX_ITERATIONS (any other status,
        "optimal_inaccurate" included) or NONFINITE.
    """

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array

    __repr__ = _summary.namedtuple_repr


def _cvxpy() -> Any:
    try:
        return importlib.import_module("cvxpy")
    except ImportError as error:
        raise ImportError(
            "CvxpyQP needs cvxpy, an optional dependency: pip install 'implicitdiff[cvxpy]' "
            "(or pip install cvxpy)"
        ) from error


# OSQP's options when solver_options is None (see the class docstring).
_OSQP_DEFAULTS = {"eps_abs": 1e-9, "eps_rel": 1e-9}

# cvxpy's status names -> Status codes.
_STATUS = {
    "optimal": Status.CONVERGED,
    "infeasible": Status.PRIMAL_INFEASIBLE,
    "infeasible_inaccurate": Status.PRIMAL_INFEASIBLE,
    "unbounded": Status.DUAL_INFEASIBLE,
    "unbounded_inaccurate": Status.DUAL_INFEASIBLE,
}


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class CvxpyQP(HostWrapper):
    """min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h, solved by cvxpy on the host.

    ``run(init_params=None, params_obj=(Q, c), params_eq=(A, b), params_ineq=(G, h))`` (as
    JAXopt's ``CvxpyQP``; ``init_params`` is ignored: no warm start), Q symmetric positive
    semidefinite, either constraint pair None; returns ``KKTSolution(x, ν, λ)`` (None for an absent
    pair) with Qx + c + Aᵀν + Gᵀλ = 0, λ ≥ 0 (cvxpy's duals of ``A @ x == b`` and ``G @ x <= h``).

    cvxpy runs through ``jax.pure_callback`` (see :mod:`implicitdiff.solvers._host_call`): unlike
    JAXopt's, ``run`` works under ``jax.jit`` and ``jax.vmap`` (one cvxpy solve per problem of a
    batch, one after the other). The solution is differentiated through the KKT conditions
    (:func:`qp_kkt`, computed in JAX): with respect to Q, c, A, b, G and h, at a strictly
    complementary solution with linearly independent active constraints. The derivative is as
    accurate as the solution: choose a solver and ``solver_options`` accordingly.

    An infeasible or unbounded problem does not raise (JAXopt raises a ``ValueError``): the
    solution is NaN and ``state.status`` says which (``PRIMAL_INFEASIBLE``, ``DUAL_INFEASIBLE``);
    ``on_failure`` then applies (a :class:`SolverWarning` by default outside ``jit``).

    Attributes:
      solver: the name of cvxpy's solver (default "OSQP", as JAXopt; "CLARABEL", "SCS", ... any
        that cvxpy has installed for QPs).
      solver_options: keyword arguments of cvxpy's ``Problem.solve`` (e.g. ``{"eps_abs": 1e-9}``
        for OSQP), or None (default): cvxpy's defaults, except for OSQP, which gets
        ``eps_abs = eps_rel = 1e-9``. (With cvxpy's 1e-5, OSQP stops short of ``tol`` on
        problems without inequality constraints, where its polishing step does not apply:
        0 of 10 random unconstrained ridge QPs converged, all 10 with 1e-9.)
      tol: ``state.converged`` needs the KKT residual ≤ tol (default 1e-6).
      implicit_diff, solve, jit, on_failure, backward_on_failure: see
        :class:`~implicitdiff.solvers._base.DifferentiableRun` (keyword-only).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.cvxpy_qp import CvxpyQP
      >>> Q, c = jnp.eye(2), jnp.array([-1.0, -1.0])
      >>> G, h = jnp.array([[1.0, 1.0]]), jnp.array([1.0])  # x₁ + x₂ ≤ 1
      >>> (x, _, lam), state = CvxpyQP(solver="CLARABEL").run(None, (Q, c), None, (G, h))
      >>> jnp.round(x, 4), jnp.round(lam, 4)  # doctest: +SKIP
      (Array([0.5, 0.5], dtype=float32), Array([0.5], dtype=float32))
    """

    _user_function = None  # run has its own signature
    _status_codes = True  # state.status holds Status codes (see _STATUS)

    solver: str = dataclasses.field(default="OSQP", kw_only=False)
    solver_options: dict | None = None
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if self.solver_options is not None and not isinstance(self.solver_options, dict):
            raise TypeError(
                f"CvxpyQP: solver_options must be a dict or None, got {self.solver_options!r}"
            )
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"CvxpyQP: tol must be a number ≥ 0, got {self.tol!r}")
        object.__setattr__(self, "_kkt", qp_kkt())

    def run(
        self,
        init_params: PyTree = None,
        params_obj: tuple | None = None,
        params_eq: tuple | None = None,
        params_ineq: tuple | None = None,
    ) -> Any:
        """Solve with cvxpy; see the class.

        Args:
          init_params: ignored (cvxpy is not warm-started).
          params_obj: ``(Q, c)``: Q of shape (n, n), c of shape (n,); required.
          params_eq: ``(A, b)``: A of shape (p, n), b of shape (p,); None (default) for none.
          params_ineq: ``(G, h)``: G of shape (m, n), h of shape (m,); None (default) for none.

        Returns:
          ``OptStep(params, state)``: ``KKTSolution(x, ν, λ)`` and the :class:`CvxpyQPState`.

        Raises:
          TypeError: a missing or malformed pair, or a ``solver`` that is not a name.
          ValueError: shapes that do not match.
          ImportError: cvxpy is not installed (when the problem is solved).
        """
        if not isinstance(self.solver, str):
            raise TypeError(f"CvxpyQP: solver must be a solver's name (str), got {self.solver!r}")
        # (ignored, but a complex start says the problem is complex: refused as by every QP)
        _dtypes.check_real_params(init_params, "CvxpyQP.run", type(self)._COMPLEX_SOLVERS)
        if params_obj is None:
            raise TypeError("CvxpyQP.run: params_obj=(Q, c) is required")
        for name, pair in (
            ("params_obj", params_obj),
            ("params_eq", params_eq),
            ("params_ineq", params_ineq),
        ):
            check_pair(name, pair)
        Q, c = params_obj
        n = jnp.shape(c)[0] if jnp.ndim(c) == 1 else -1
        if jnp.ndim(c) != 1 or jnp.shape(Q) != (n, n):
            raise ValueError(
                f"CvxpyQP: Q must be (n, n) and c (n,); got Q {jnp.shape(Q)}, c {jnp.shape(c)}"
            )
        for name, pair in (("params_eq", params_eq), ("params_ineq", params_ineq)):
            if pair is not None:
                check_constraint_shapes("CvxpyQP", name, pair, n)
        return super().run(None, params_obj, params_eq, params_ineq)

    def optimality(self) -> tuple[str, Callable]:
        """The condition that the solution is differentiated through: the KKT conditions
        (Qx + c + Aᵀν + Gᵀλ, Ax − b, λ ∘ (Gx − h)) = 0 (:func:`qp_kkt`).

        Returns:
          ``("root", F)`` with F(z, params_obj, params_eq=None, params_ineq=None).
        """
        return "root", self._kkt

    def _host_solve(self, has_eq: bool, has_ineq: bool) -> Callable:
        """The host function: arrays (Q, c[, A, b][, G, h]) -> (x, ν, λ, status code)."""
        solver = self.solver
        if self.solver_options is None and solver.upper() == "OSQP":
            options = dict(_OSQP_DEFAULTS)
        else:
            options = dict(self.solver_options or {})

        def solve(arrays):
            cp = _cvxpy()
            Q, c, *rest = (np.asarray(a, np.float64) for a in arrays)
            nan = float("nan")
            if not all(np.all(np.isfinite(a)) for a in (Q, c, *rest)):
                # NaN or inf data: cvxpy raises, which would end a whole vmap batch. No solve, a
                # failed result (NaN, status NONFINITE), as the other solvers.
                rows = iter(np.shape(v)[0] for v in rest[1::2])  # len(b), then len(h)
                sizes = (c.shape[0], next(rows) if has_eq else 0, next(rows) if has_ineq else 0)
                return (*(np.full(n, nan) for n in sizes), np.int32(Status.NONFINITE))
            x = cp.Variable(c.shape[0])
            Q = 0.5 * (Q + Q.T)
            objective = 0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + c @ x
            constraints = []
            if has_eq:
                A, b, *rest = rest
                constraints.append(A @ x == b)
            if has_ineq:
                G, h = rest
                constraints.append(G @ x <= h)
            problem = cp.Problem(cp.Minimize(objective), constraints)
            problem.solve(solver=solver, **options)
            code = _STATUS.get(problem.status, Status.MAX_ITERATIONS)

            def value(v, size):
                return np.full(size, nan) if v is None else np.asarray(v, np.float64)

            size_eq = constraints[0].shape[0] if has_eq else 0
            size_ineq = constraints[-1].shape[0] if has_ineq else 0
            return (
                value(x.value, c.shape[0]),
                value(constraints[0].dual_value if has_eq else None, size_eq),
                value(constraints[-1].dual_value if has_ineq else None, size_ineq),
                np.int32(code),
            )

        return solve

    def _solution(self, init_params, params_obj, params_eq=None, params_ineq=None):
        del init_params
        _cvxpy()  # a missing cvxpy: its ImportError here, not wrapped by JAX inside the callback
        Q, c = params_obj
        dtype = dtype_of(Q, c)
        has_eq, has_ineq = params_eq is not None, params_ineq is not None
        arrays = [Q, c]
        for pair in (params_eq, params_ineq):
            if pair is not None:
                arrays.extend(pair)
        arrays = [jnp.asarray(a, dtype) for a in arrays]
        n = c.shape[0]
        p = params_eq[1].shape[0] if has_eq else 0
        m = params_ineq[1].shape[0] if has_ineq else 0
        host = self._host_function(
            ("cvxpy", has_eq, has_ineq), lambda: self._host_solve(has_eq, has_ineq)
        )
        shapes = (
            jax.ShapeDtypeStruct((n,), np.float64),
            jax.ShapeDtypeStruct((p,), np.float64),
            jax.ShapeDtypeStruct((m,), np.float64),
            jax.ShapeDtypeStruct((), np.int32),
        )
        if not jax.config.read("jax_enable_x64"):
            shapes = tuple(
                jax.ShapeDtypeStruct(s.shape, np.float32) if s.dtype == np.float64 else s
                for s in shapes
            )
        x, nu, lam, code = jax.pure_callback(
            lambda arrays: tuple(
                np.asarray(v, s.dtype) for v, s in zip(host(arrays), shapes, strict=True)
            ),
            shapes,
            arrays,
            vmap_method="sequential",
        )
        params = KKTSolution(
            x.astype(dtype),
            nu.astype(dtype) if has_eq else None,
            lam.astype(dtype) if has_ineq else None,
        )
        # Under shard_map, as varying across devices as the data (a callback's output is not).
        params = _loop.vary_like(params, (params_obj, params_eq, params_ineq))
        code = _loop.vary_like(code, (params_obj, params_eq, params_ineq))
        residual = self._kkt(params, params_obj, params_eq, params_ineq)
        error = tree.norm(residual).astype(dtype)
        finite = all_finite(params) & jnp.isfinite(error)
        solved = code == Status.CONVERGED
        converged = solved & finite & (error <= self.tol)
        status = jnp.where(
            converged | ~solved,
            code,
            jnp.where(finite, Status.MAX_ITERATIONS, Status.NONFINITE),
        ).astype(jnp.int32)
        state = CvxpyQPState(
            iter_num=jnp.asarray(-1, jnp.int32), error=error, converged=converged, status=status
        )
        return params, state
