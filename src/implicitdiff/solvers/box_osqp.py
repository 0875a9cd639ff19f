"""min ½xᵀQx + cᵀx s.t. l ≤ Ax ≤ u, OSQP's own form, by the ADMM of :class:`OSQP` (shared, not
repeated): :class:`BoxOSQP`, with JAXopt's ``BoxOSQP`` arguments and solution layout.

The ADMM iteration, its adaptive ρ, infeasibility tests and polishing are those of
:class:`~implicitdiff.solvers.osqp.OSQP`, which already works on the stacked form l ≤ Cx ≤ u:
here C = A, and l, u are given as they are. Like :mod:`implicitdiff.solvers.osqp`, this module
must not import :mod:`implicitdiff.projections`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _summary
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._failures import Status
from implicitdiff.solvers._osqp_parts import Data
from implicitdiff.solvers._qp_common import (
    KKTSolution,
    check_fun,
    check_osqp_jaxopt_options,
    check_pair,
    clip_to_box,
    dtype_of,
    fun_primal_start,
    kkt_start,
    qp_objective,
)
from implicitdiff.solvers.osqp import OSQP, OSQPState

__all__ = ["BoxOSQP", "BoxOSQPState", "box_qp_optimality"]


class BoxOSQPState(NamedTuple):
    """The state of :class:`BoxOSQP` (JAXopt's fields, plus ``converged`` and ``polished``).

    Fields: iter_num; error (as :class:`OSQP`'s: max(r_prim / (1 + s_prim), r_dual / (1 + s_dual)));
    converged; status (a :class:`~implicitdiff.solvers.Status` code: compare it with
    ``BoxOSQP.SOLVED``, ``BoxOSQP.PRIMAL_INFEASIBLE``, ... rather than with JAXopt's numbers);
    primal_residuals r_prim = ‖Ax − z‖∞ and dual_residuals r_dual = ‖Qx + c + Aᵀy‖∞ (norms, where
    JAXopt keeps the vectors); rho_bar (the current ρ); polished (whether the returned solution is
    the polished one); solver_state (the ADMM's :class:`OSQPState`).
    """

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array
    primal_residuals: jax.Array
    dual_residuals: jax.Array
    rho_bar: jax.Array
    polished: jax.Array
    solver_state: Any = None

    __repr__ = _summary.namedtuple_repr


def box_qp_optimality(
    matvec_Q: Callable | None = None,
    matvec_A: Callable | None = None,
    fun: Callable | None = None,
) -> Callable:
    """The optimality condition of min ½xᵀQx + cᵀx s.t. Ax = z, l ≤ z ≤ u, on JAXopt's layout
    ``KKTSolution((x, z), y, (μ, φ))`` (y the multiplier of Ax = z, μ = max(y, 0) of z ≤ u,
    φ = max(−y, 0) of l ≤ z):

        F = ((½(Q + Qᵀ)x + c + Aᵀy,  z − clip(z + y, l, u)),  Ax − z,
             (μ − max(y, 0), φ − max(−y, 0))).

    With ``fun``, the objective is fun(x, params_obj) and ∇ₓfun(x, params_obj) replaces
    ½(Q + Qᵀ)x + c (the gradient of :func:`~implicitdiff.solvers._qp_common.qp_objective`).

    F = 0 is equivalent to the KKT conditions (the second part says y ∈ N_[l,u](z): y ≥ 0 where
    z = u, y ≤ 0 where z = l, y = 0 strictly inside). Its Jacobian stays invertible on rows with
    l = u, where the complementarity form λ ∘ (z − u) = 0, φ ∘ (l − z) = 0 is singular. Products are
    ``Q @ x``, ``A @ x`` or ``matvec_Q(Q, x)``, ``matvec_A(A, x)``; Aᵀy is the VJP of x ↦ Ax.
    Returns F(params, params_obj, params_eq, params_ineq), ``params_obj = (Q, c)`` (with
    ``fun``, fun's parameters), ``params_eq = A``, ``params_ineq = (l, u)``.
    """
    # ∇ of ½xᵀQx + cᵀx: ½(Q + Qᵀ)x + c, as the solver symmetrizes Q.
    gradient = jax.grad(qp_objective(matvec_Q, fun))

    def box_qp_kkt(params, params_obj, params_eq, params_ineq):
        (x, z), y, _ = params
        lower, upper = params_ineq
        A = params_eq
        Ax, transpose = jax.vjp(lambda v: A @ v if matvec_A is None else matvec_A(A, v), x)
        stationarity = gradient(x, params_obj) + transpose(y)[0]
        in_box = z - clip_to_box(z + y, lower, upper)
        mu, phi = params[2]
        duals = (mu - jnp.maximum(y, 0.0), phi - jnp.maximum(-y, 0.0))
        return KKTSolution((stationarity, in_box), Ax - z, duals)

    return box_qp_kkt


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class _BoxEngine(OSQP):
    """:class:`OSQP` on the problem given in the stacked form: (Q, c), A, (l, u)."""

    _report_name = "BoxOSQP"  # verbose prints its owner's name

    def _stack(self, params_obj, params_eq, params_ineq) -> Data:
        if self._matrix_free():
            Q, c = params_obj
            lower, upper = params_ineq
            return Data(Q, c, params_eq, lower, upper, 0)
        Q, c = params_obj
        dtype = dtype_of(Q, c)
        n = jnp.shape(c)[0]
        P = jnp.zeros((n, n), dtype) if Q is None else 0.5 * (Q + Q.T).astype(dtype)
        lower, upper = params_ineq
        return Data(
            P,
            jnp.asarray(c, dtype),
            jnp.asarray(params_eq, dtype),
            jnp.asarray(lower, dtype),
            jnp.asarray(upper, dtype),
            0,
        )

    def _n_eq(self, params_eq) -> int:
        return 0

    def _constraint_parts(self, data: Data) -> list:
        return [(self.matvec_A, data.C)]


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BoxOSQP(IterativeSolver):
    """min ½xᵀQx + cᵀx s.t. l ≤ Ax ≤ u, OSQP's form, by OSQP's ADMM (see :class:`OSQP`).

    ``run(init_params=None, params_obj=(Q, c), params_eq=A, params_ineq=(l, u))`` (as JAXopt's
    ``BoxOSQP``): Q (n, n) symmetric positive semidefinite (None: an LP), A (m, n), l ≤ u of shape
    (m,) with ±inf for a missing bound and l = u for an equality. It returns JAXopt's layout,
    ``KKTSolution(primal=(x, z), dual_eq=y, dual_ineq=(μ, φ))``, for the Lagrangian
    ½xᵀQx + cᵀx + yᵀ(Ax − z) + μᵀ(z − u) + φᵀ(l − z): z = Ax at the solution, y the multiplier of
    Ax = z (y > 0 where the upper bound is active, y < 0 where the lower one is), μ = max(y, 0),
    φ = max(−y, 0).

    The iteration (x̃ = (Q + σI + AᵀRA)⁻¹(σx − c + Aᵀ(Rz − y)), then the relaxed z and y steps with
    α = ``momentum``), the adaptive ρ (every ``stepsize_updates_frequency`` iterations), the
    infeasibility certificates and the stopping test are :class:`OSQP`'s; after the loop the
    solution is polished (OSQP's active-set KKT solve, kept where it is better), which makes it,
    and its implicit derivative, exact to rounding for a well-posed problem even at the loose
    default ``tol``.

    ``state.status`` is a :class:`~implicitdiff.solvers.Status` code; the class constants
    ``SOLVED``, ``UNSOLVED``, ``PRIMAL_INFEASIBLE`` and ``DUAL_INFEASIBLE`` name them (their
    numbers differ from JAXopt's: compare with the constants). A problem whose objective is
    unbounded below on the feasible set is ``DUAL_INFEASIBLE``.

    The solution is differentiated through :func:`box_qp_optimality` (the KKT conditions, written
    so that rows with l = u stay regular): with respect to Q, c, A, l and u, at a solution where
    every active bound has y ≠ 0 and the active rows of A are linearly independent.

    With ``fun`` (JAXopt's option), the objective is f(x, params_obj) = ``fun(x, params_obj)``,
    promised quadratic and convex in x, ``params_obj`` any pytree: c = ∇ₓf(0, params_obj) and
    Q v = d/dt ∇ₓf(t v, params_obj) at t = 0 (the ADMM runs matrix-free, as with ``matvec_Q``);
    the stationarity condition is ∇ₓf(x, params_obj) + Aᵀy = 0, and the solution is
    differentiated with respect to ``params_obj`` through f. ``init_params`` must then give x
    (a 1-D array: its shape).

    Attributes:
      matvec_Q, matvec_A: products ``matvec_Q(Q, x)``, ``matvec_A(A, x)`` (None: ``Q @ x``,
        ``A @ x``); Q and A are then any pytrees of parameters (x, c, l, u stay 1-D arrays), Q
        must be symmetric, and the x-step is solved by CG (the polishing by GMRES), never forming
        a matrix.
      fun: the objective as a function fun(x, params_obj), see above (with ``matvec_Q``:
        ValueError).
      check_primal_dual_infeasability: accepted for JAXopt's signature ("auto", True or False);
        the infeasibility tests always run (they cost a product only when a cheap test passes).
      sigma: σ > 0 (default 1e-6).
      momentum: the relaxation α ∈ (0, 2) (default 1.6).
      eq_qp_solve: "cg", "cg+jacobi" or "lu" (JAXopt's choice of inner solver); accepted: the
        x-step is a Cholesky solve with matrices, CG with matvecs, for every value.
      rho_start, rho_min, rho_max: the initial ρ and its bounds (0.1, 1e-6, 1e6).
      stepsize_updates_frequency: iterations between ρ updates (default 10).
      primal_infeasible_tol, dual_infeasible_tol: the relative tolerances of the infeasibility
        certificates (default 1e-3 each).
      termination_check_frequency: accepted for JAXopt's signature; the stopping test runs at
        every iteration.
      maxiter, tol: at most ``maxiter`` iterations (default 4000); stop when ``state.error`` ≤
        ``tol`` (default 1e-3).
      implicit_diff, solve, unroll_checkpoint, jit, verbose: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.box_osqp import BoxOSQP
      >>> Q, c = jnp.eye(2), jnp.array([-1.0, -1.0])
      >>> A, l, u = jnp.array([[1.0, 1.0]]), jnp.array([-jnp.inf]), jnp.array([1.0])
      >>> sol, state = BoxOSQP().run(None, (Q, c), A, (l, u))
      >>> jnp.round(sol.primal[0], 4), jnp.round(sol.dual_eq, 4)
      (Array([0.5, 0.5], dtype=float32), Array([0.5], dtype=float32))
    """

    _user_function = None  # run has its own signature

    matvec_Q: Callable | None = dataclasses.field(default=None, kw_only=False)
    matvec_A: Callable | None = dataclasses.field(default=None, kw_only=False)
    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    check_primal_dual_infeasability: Any = dataclasses.field(default="auto", kw_only=False)
    sigma: float = dataclasses.field(default=1e-6, kw_only=False)
    momentum: float = dataclasses.field(default=1.6, kw_only=False)
    eq_qp_solve: str = dataclasses.field(default="cg", kw_only=False)
    rho_start: float = dataclasses.field(default=0.1, kw_only=False)
    rho_min: float = dataclasses.field(default=1e-6, kw_only=False)
    rho_max: float = dataclasses.field(default=1e6, kw_only=False)
    stepsize_updates_frequency: int = dataclasses.field(default=10, kw_only=False)
    primal_infeasible_tol: float = dataclasses.field(default=1e-3, kw_only=False)
    dual_infeasible_tol: float = dataclasses.field(default=1e-3, kw_only=False)
    maxiter: int = 4000
    tol: float = 1e-3
    termination_check_frequency: int = 5

    UNSOLVED = Status.MAX_ITERATIONS
    SOLVED = Status.CONVERGED
    PRIMAL_INFEASIBLE = Status.PRIMAL_INFEASIBLE
    DUAL_INFEASIBLE = Status.DUAL_INFEASIBLE

    def __post_init__(self):
        super().__post_init__()
        for name in ("matvec_Q", "matvec_A"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"BoxOSQP: {name} must be callable or None, got {value!r}")
        check_fun("BoxOSQP", self.fun, self.matvec_Q)
        check_osqp_jaxopt_options("BoxOSQP", self)
        try:
            engine = _BoxEngine(
                matvec_Q=self.matvec_Q,
                matvec_A=self.matvec_A,
                fun=self.fun,
                rho=self.rho_start,
                sigma=self.sigma,
                alpha=self.momentum,
                rho_update_frequency=self.stepsize_updates_frequency,
                rho_min=self.rho_min,
                rho_max=self.rho_max,
                eps_primal_infeasible=self.primal_infeasible_tol,
                eps_dual_infeasible=self.dual_infeasible_tol,
                maxiter=self.maxiter,
                tol=self.tol,
                implicit_diff=self.implicit_diff,
                unroll_checkpoint=self.unroll_checkpoint,
                jit=False,
                verbose=self.verbose,
            )
        except ValueError as error:  # name JAXopt's fields, not the engine's
            message = str(error)
            for ours, theirs in (
                ("rho_update_frequency", "stepsize_updates_frequency"),
                ("rho must", "rho_start must"),
                ("alpha", "momentum"),
                ("eps_primal_infeasible", "primal_infeasible_tol"),
                ("eps_dual_infeasible", "dual_infeasible_tol"),
                ("OSQP", "BoxOSQP"),
            ):
                message = message.replace(ours, theirs)
            raise ValueError(message) from None
        object.__setattr__(self, "_engine", engine)
        object.__setattr__(
            self, "_kkt", box_qp_optimality(self.matvec_Q, self.matvec_A, fun=self.fun)
        )

    def run(
        self,
        init_params: PyTree = None,
        params_obj: tuple | None = None,
        params_eq: Any = None,
        params_ineq: tuple | None = None,
    ) -> OptStep:
        """Solve from ``init_params``; see the class.

        Args:
          init_params: a ``KKTSolution((x, z), y, (μ, φ))`` (μ, φ ignored; a None part is zeros,
            z defaults to clip(Ax, l, u); x alone in place of (x, z) is accepted), or None
            (default) for zeros; with ``fun``, x is required.
          params_obj: ``(Q, c)``: Q of shape (n, n) (or None, an LP) and c of shape (n,); with
            ``fun``, any pytree, fun's second argument.
          params_eq: A, of shape (m, n).
          params_ineq: ``(l, u)``, each of shape (m,).

        Returns:
          ``OptStep(params, state)``: ``KKTSolution((x, z), y, (μ, φ))`` and the
            :class:`BoxOSQPState`.

        Raises:
          TypeError: a missing or malformed argument (``init_params`` not None or a triple);
            with ``fun``, fun(x, params_obj) not a scalar.
          ValueError: shapes that do not match; with ``fun``, no x in ``init_params``.
        """
        if params_obj is None:
            raise TypeError("BoxOSQP.run: params_obj=(Q, c) is required")
        if params_eq is None:
            raise TypeError("BoxOSQP.run: params_eq=A is required")
        if params_ineq is None:
            raise TypeError("BoxOSQP.run: params_ineq=(l, u) is required")
        check_pair("params_ineq", params_ineq)
        primal, y0, _ = kkt_start("BoxOSQP", init_params)
        primal = (None, None) if primal is None else primal
        x0, z0 = primal if isinstance(primal, (tuple, list)) else (primal, None)
        if self.fun is not None:
            x0, n, dtype = fun_primal_start(
                "BoxOSQP", self.fun, x0, "KKTSolution((x0, None), None, None)", params_obj
            )
        else:
            check_pair("params_obj", params_obj)
            Q, c = params_obj
            n = jnp.shape(c)[0] if jnp.ndim(c) == 1 else -1
            if jnp.ndim(c) != 1 or (
                Q is not None and self.matvec_Q is None and jnp.shape(Q) != (n, n)
            ):
                raise ValueError(
                    f"BoxOSQP: Q must be (n, n) (or None) and c (n,); got Q {jnp.shape(Q)}, c "
                    f"{jnp.shape(c)}"
                )
            dense = self.matvec_Q is None and self.matvec_A is None
            dtype = dtype_of(Q, c, params_eq) if dense else dtype_of(c)
            params_obj = (Q, jnp.asarray(c, dtype))
        A = params_eq
        lower, upper = params_ineq
        if self.matvec_A is None:
            m = jnp.shape(A)[0] if jnp.ndim(A) == 2 else -1
            if jnp.ndim(A) != 2 or jnp.shape(A)[1] != n:
                raise ValueError(
                    f"BoxOSQP: params_eq A must be a matrix (m, {n}), got {jnp.shape(A)}"
                )
        else:
            m = jnp.shape(lower)[0] if jnp.ndim(lower) == 1 else -1
        if jnp.shape(lower) != (m,) or jnp.shape(upper) != (m,):
            raise ValueError(
                f"BoxOSQP: params_ineq (l, u) must be two vectors ({m},); got {jnp.shape(lower)} "
                f"and {jnp.shape(upper)}"
            )
        _dtypes.check_real_params(init_params, "BoxOSQP.run", type(self)._COMPLEX_SOLVERS)
        lower, upper = jnp.asarray(lower, dtype), jnp.asarray(upper, dtype)
        if self.matvec_A is None:
            A = jnp.asarray(A, dtype)
        x0 = jnp.zeros(n, dtype) if x0 is None else jnp.asarray(x0, dtype)
        if z0 is None:
            z0 = clip_to_box(
                A @ x0 if self.matvec_A is None else self.matvec_A(A, x0), lower, upper
            )
        z0 = jnp.asarray(z0, dtype)
        y0 = jnp.zeros(m, dtype) if y0 is None else jnp.asarray(y0, dtype)
        init_params = _full_solution((x0, z0), y0)
        return super().run(init_params, params_obj, A, (lower, upper))

    # -- the engine's layout <-> JAXopt's ----------------------------------------------------

    def _wrap(self, params: KKTSolution, state: OSQPState) -> OptStep:
        x, _, y = params
        wrapped = BoxOSQPState(
            iter_num=state.iter_num,
            error=state.error,
            converged=state.converged,
            status=state.status,
            primal_residuals=state.primal_residual,
            dual_residuals=state.dual_residual,
            rho_bar=state.rho,
            polished=state.polished,
            solver_state=state,
        )
        return OptStep(_full_solution((x, state.z), y), wrapped)

    @staticmethod
    def _engine_params(params: KKTSolution) -> KKTSolution:
        (x, _), y, _ = params
        return KKTSolution(x, None, y)

    # -- protocol --------------------------------------------------------------------------

    def init_state(self, init_params, params_obj, params_eq, params_ineq) -> BoxOSQPState:
        """The state at ``init_params`` (that of :meth:`OSQP.init_state`, on l ≤ Ax ≤ u).

        Args:
          init_params: ``KKTSolution((x, z), y, (μ, φ))``, as ``run`` builds it.
          params_obj: ``(Q, c)``, as in ``run``.
          params_eq: A, as in ``run``.
          params_ineq: ``(l, u)``, as in ``run``.

        Returns:
          A :class:`BoxOSQPState` at iteration 0.
        """
        state = self._engine.init_state(
            self._engine_params(init_params), params_obj, params_eq, params_ineq
        )
        return self._wrap(self._engine_params(init_params), state).state

    def update(self, params, state: BoxOSQPState, params_obj, params_eq, params_ineq) -> OptStep:
        """One ADMM iteration of :class:`OSQP` (see there).

        Args:
          params: the current ``KKTSolution((x, z), y, (μ, φ))``.
          state: the state at it.
          params_obj: ``(Q, c)``, as in ``run``.
          params_eq: A, as in ``run``.
          params_ineq: ``(l, u)``, as in ``run``.

        Returns:
          ``OptStep(params, state)``: the next iterate and its :class:`BoxOSQPState`.
        """
        inner = state.solver_state._replace(z=params.primal[1])
        params, inner = self._engine.update(
            self._engine_params(params), inner, params_obj, params_eq, params_ineq
        )
        return self._wrap(params, inner)

    def _solution(self, init_params, params_obj, params_eq, params_ineq):
        params, state = self._engine._iterate(
            self._engine_params(init_params), params_obj, params_eq, params_ineq
        )
        return tuple(self._wrap(params, state))

    def optimality(self):
        """The condition that the solution is differentiated through (:func:`box_qp_optimality`).

        Returns:
          ``("root", F)`` with F(params, params_obj, params_eq, params_ineq).
        """
        return "root", self._kkt


def _full_solution(primal: tuple, y: jax.Array) -> KKTSolution:
    """JAXopt's layout: ``KKTSolution((x, z), y, (μ, φ))``, μ = max(y, 0), φ = max(−y, 0)."""
    return KKTSolution(primal, y, (jnp.maximum(y, 0.0), jnp.maximum(-y, 0.0)))
