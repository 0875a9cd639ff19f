"""min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h by the ADMM of OSQP (Stellato et al., 2020), with
adaptive ρ, infeasibility detection and solution polishing: :class:`OSQP`, returning a
:class:`~implicitdiff.solvers._qp_common.KKTSolution` differentiated through the KKT conditions.

The stacked problem, its residuals, the infeasibility tests and the polishing solve live in
:mod:`implicitdiff.solvers._osqp_parts`. This module must not import
:mod:`implicitdiff.projections` (which imports OSQP, for the polyhedron projection): the box
projection it needs is a clip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _loop, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._osqp_parts import (
    DUAL_INFEASIBLE,
    MAX_ITERATIONS,
    PRIMAL_INFEASIBLE,
    SOLVED,
    Data,
    Operators,
    dense_operators,
    dual_infeasible,
    dual_vector,
    kkt_params,
    matrix_free_operators,
    polished_point,
    primal_infeasible,
    residuals,
    residuals_of,
    stack_matrix_free,
    stack_problem,
    x_step,
)
from implicitdiff.solvers._qp_common import (
    KKTSolution,
    check_constraint_shapes,
    check_fun,
    check_osqp_jaxopt_options,
    check_pair,
    clip_to_box,
    dtype_of,
    fun_matvec,
    fun_primal_start,
    kkt_start,
    qp_kkt,
    quadratic_parts,
)

__all__ = ["OSQP", "OSQPState"]


class OSQPState(NamedTuple):
    """The state of :class:`OSQP`.

    Fields: iter_num; error = max(r_prim / (1 + s_prim), r_dual / (1 + s_dual)) (see
    :class:`OSQP`); converged; status (0 solved, 1 not solved within maxiter, 2 primal
    infeasible, 3 dual infeasible); primal_residual r_prim = ‖Cx − z‖∞; dual_residual
    r_dual = ‖Qx + c + Cᵀy‖∞; rho (the current ρ); z (the ADMM's Cx, in [l, u]); factor (the
    Cholesky factor of Q + σI + CᵀRC); polished (whether the returned solution is the polished
    one); data = (P, q, C, l, u), the problem in the stacked form of :class:`OSQP`, built once by
    ``init_state``; products = (Cx, Px, Cᵀy, Cᵀ(Rz − y)) at the current iterate, which the next
    iteration needs (None in both: rebuilt from the arguments).
    """

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array
    primal_residual: jax.Array
    dual_residual: jax.Array
    rho: jax.Array
    z: jax.Array
    factor: jax.Array
    polished: jax.Array
    data: Any = None
    products: Any = None

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class OSQP(IterativeSolver):
    """min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h by the ADMM of OSQP (Stellato et al., 2020).

    ``run(init_params=None, params_obj=(Q, c), params_eq=(A, b), params_ineq=(G, h))``, Q
    symmetric positive semidefinite (None: an LP), either constraint pair None; returns
    ``KKTSolution(x, ν, λ)`` (None for an absent pair) such that Qx + c + Aᵀν + Gᵀλ = 0, λ ≥ 0.

    The constraints are stacked as l ≤ Cx ≤ u, C = [A; G], l = [b; −∞], u = [b; h], and the
    iteration on (x, z, y), z ≈ Cx and y the dual of l ≤ z ≤ u, is

        x̃ = (Q + σI + CᵀRC)⁻¹(σx − c + Cᵀ(Rz − y)),   z̃ = Cx̃,
        x ← αx̃ + (1 − α)x,   ẑ = αz̃ + (1 − α)z,
        z ← clip(ẑ + R⁻¹y, l, u),   y ← y + R(ẑ − z),

    with R = diag(ρᵢ), ρᵢ = 10³ρ on equality rows. The matrix Q + σI + CᵀRC is factored
    (Cholesky) once per value of ρ. With ``adaptive_rho``, every ``rho_update_frequency``
    iterations ρ is set to ρ √((r_prim / s_prim) / (r_dual / s_dual)) (clipped to
    [rho_min, rho_max]), and the matrix refactored, if that changes ρ by a factor above 5.
    The duals are ν = y on the rows of A and λ = y on the rows of G (y ≥ 0 there by
    construction).

    Stopping criterion, OSQP's with eps_abs = eps_rel = ``tol``: r_prim ≤ tol (1 + s_prim) and
    r_dual ≤ tol (1 + s_dual), with r_prim = ‖Cx − z‖∞, s_prim = max(‖Cx‖∞, ‖z‖∞),
    r_dual = ‖Qx + c + Cᵀy‖∞, s_dual = max(‖Qx‖∞, ‖Cᵀy‖∞, ‖c‖∞); ``state.error`` is
    max(r_prim / (1 + s_prim), r_dual / (1 + s_dual)). Infeasibility, from the last steps δy, δx
    (δy first projected onto the polar of the recession cone of [l, u]):

    - primal (status 2): ‖Cᵀδy‖∞ ≤ ε_p ‖δy‖∞ and uᵀ max(δy, 0) + lᵀ min(δy, 0) ≤ −ε_p ‖δy‖∞;
    - dual, the objective unbounded below (status 3): ‖Qδx‖∞ ≤ ε_d ‖δx‖∞, cᵀδx ≤ −ε_d ‖δx‖∞,
      and (Cδx)ᵢ ≤ ε_d ‖δx‖∞ where uᵢ < ∞, ≥ −ε_d ‖δx‖∞ where lᵢ > −∞.

    The run stops on either (``converged`` False); status 1 means maxiter was reached.

    Cost of an iteration: one product with each of C, P and Cᵀ (Cᵀ on two vectors at once), and
    two triangular solves. P = (Q + Qᵀ)/2 and C are built once, in ``init_state``; the products
    that the residuals and the infeasibility tests need are carried from one iteration to the
    next: Cx⁺ = α Cx̃ + (1 − α) Cx (rounding errors are damped by |1 − α| < 1 at each
    iteration), Cᵀδy = Cᵀy⁺ − Cᵀy, Cδx = Cx⁺ − Cx, Pδx = Px⁺ − Px, and Cᵀ(Rz − y) for the next
    right-hand side.

    Polishing (``polish=True``): after the loop, the active constraints are guessed from (z, y)
    (upper-active where uᵢ − zᵢ < yᵢ, lower-active where zᵢ − lᵢ < −yᵢ, equalities always) and
    the equality-constrained KKT system of that active set is solved (LU of the system
    regularized by ``polish_delta``, then 3 steps of iterative refinement on the exact one). The
    polished solution, duals of a wrong sign clipped to 0, replaces the ADMM's if its error is
    smaller; then the solution is exact to rounding, which makes the implicit derivatives
    accurate. It costs one dense LU of size n + m.

    The solution is differentiated through the KKT conditions (:func:`qp_kkt`): with respect to
    Q, c, A, b, G and h, at a strictly complementary solution (λᵢ > 0 on every active
    constraint) with linearly independent active constraints.

    With ``fun`` (JAXopt's option), the objective is f(x, params_obj) = ``fun(x, params_obj)``,
    promised quadratic and convex in x, ``params_obj`` any pytree: c = ∇ₓf(0, params_obj) and
    Q v = d/dt ∇ₓf(t v, params_obj) at t = 0 (so the ADMM runs matrix-free, as with
    ``matvec_Q``); the stationarity condition is ∇ₓf(x, params_obj) + Aᵀν + Gᵀλ = 0, and the
    solution is differentiated with respect to ``params_obj`` through f. ``init_params`` must
    then give x (a 1-D array: its shape).

    Attributes:
      matvec_Q, matvec_A, matvec_G: products ``matvec_Q(Q, x)``, ... (None: the matrix
        product); with any of them, Q, A, G are any pytrees of parameters (x, c, b, h stay 1-D
        arrays), Q must be symmetric, and no matrix is formed: the x-step is solved by CG from
        the current x, the polishing system by GMRES, Cᵀ applied by transposing the matvecs.
      fun: the objective as a function fun(x, params_obj), see above (with ``matvec_Q``:
        ValueError).
      rho: the initial ρ > 0 (default 0.1).
      sigma: σ > 0 (default 1e-6).
      alpha: the relaxation α ∈ (0, 2) (default 1.6).
      adaptive_rho, rho_update_frequency, rho_min, rho_max: see above (True, 25, 1e-6, 1e6).
      eps_primal_infeasible, eps_dual_infeasible: ε_p, ε_d (default 1e-4 each).
      polish, polish_delta: see above (True, 1e-6).
      maxiter, tol: see above (defaults 4000 and 1e-6).
      check_primal_dual_infeasability, eq_qp_solve, termination_check_frequency: JAXopt's
        options (which its OSQP passes to BoxOSQP), accepted without effect: the infeasibility
        tests always run, the x-step is a Cholesky solve with matrices (CG with matvecs), the
        stopping test runs at every iteration. JAXopt's ``rho_start``, ``momentum``,
        ``stepsize_updates_frequency``, ``primal_infeasible_tol`` and ``dual_infeasible_tol``
        are ``rho``, ``alpha``, ``rho_update_frequency``, ``eps_primal_infeasible`` and
        ``eps_dual_infeasible`` here (a TypeError naming the new spelling).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.osqp import OSQP
      >>> Q, c = jnp.eye(2), jnp.array([-1.0, -1.0])
      >>> G, h = jnp.array([[1.0, 1.0]]), jnp.array([1.0])  # x₁ + x₂ ≤ 1
      >>> (x, _, lam), state = OSQP().run(None, (Q, c), None, (G, h))
      >>> int(state.status), jnp.round(x, 4), jnp.round(lam, 4)
      (0, Array([0.5, 0.5], dtype=float32), Array([0.5], dtype=float32))
    """

    _user_function = None  # run has its own signature

    # JAXopt's OSQP passes these to its BoxOSQP: the same options under this solver's names.
    _jaxopt_refused: ClassVar[dict[str, str]] = {
        "rho_start": "pass rho= (the initial ρ)",
        "momentum": "pass alpha= (the relaxation α)",
        "stepsize_updates_frequency": "pass rho_update_frequency=",
        "primal_infeasible_tol": "pass eps_primal_infeasible=",
        "dual_infeasible_tol": "pass eps_dual_infeasible=",
    }

    matvec_Q: Callable | None = None
    matvec_A: Callable | None = None
    matvec_G: Callable | None = None
    fun: Callable | None = None
    rho: float = 0.1
    sigma: float = 1e-6
    alpha: float = 1.6
    adaptive_rho: bool = True
    rho_update_frequency: int = 25
    rho_min: float = 1e-6
    rho_max: float = 1e6
    eps_primal_infeasible: float = 1e-4
    eps_dual_infeasible: float = 1e-4
    polish: bool = True
    polish_delta: float = 1e-6
    maxiter: int = 4000
    tol: float = 1e-6
    check_primal_dual_infeasability: Any = dataclasses.field(default="auto", kw_only=True)
    eq_qp_solve: str = dataclasses.field(default="cg", kw_only=True)
    termination_check_frequency: int = dataclasses.field(default=5, kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        check_osqp_jaxopt_options("OSQP", self)
        for name in ("rho", "sigma", "rho_min", "rho_max", "polish_delta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"OSQP: {name} must be a positive number, got {value!r}")
        if not self.rho_min <= self.rho <= self.rho_max:
            raise ValueError(
                f"OSQP: rho must lie in [rho_min, rho_max] = [{self.rho_min}, {self.rho_max}], "
                f"got {self.rho}"
            )
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 2):
            raise ValueError(f"OSQP: alpha must lie in (0, 2), got {self.alpha!r}")
        if not (isinstance(self.rho_update_frequency, int) and self.rho_update_frequency >= 1):
            raise ValueError(
                "OSQP: rho_update_frequency must be a positive int, got "
                f"{self.rho_update_frequency!r}"
            )
        for name in ("eps_primal_infeasible", "eps_dual_infeasible"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"OSQP: {name} must be a non-negative number, got {value!r}")
        for name in ("matvec_Q", "matvec_A", "matvec_G"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"OSQP: {name} must be callable or None, got {value!r}")
        check_fun(type(self).__name__, self.fun, self.matvec_Q)
        # The product with Q that the ADMM uses: the given matvec, or fun's.
        object.__setattr__(
            self, "_matvec_Q", fun_matvec(self.fun) if self.fun is not None else self.matvec_Q
        )
        object.__setattr__(
            self, "_kkt", qp_kkt(self.matvec_Q, self.matvec_A, self.matvec_G, fun=self.fun)
        )

    def run(
        self,
        init_params: PyTree = None,
        params_obj: tuple | None = None,
        params_eq: tuple | None = None,
        params_ineq: tuple | None = None,
    ) -> OptStep:
        """Solve from ``init_params``; see the class.

        Args:
          init_params: ``(x, ν, λ)`` (a :class:`KKTSolution` or a triple; a None part is zeros), or
            None (default) for zeros; with ``fun``, x is required.
          params_obj: ``(Q, c)``: Q of shape (n, n), symmetric positive semidefinite, or None
            (an LP), and c of shape (n,); with ``fun``, any pytree, fun's second argument;
            required.
          params_eq: ``(A, b)``: A of shape (p, n), b of shape (p,); None (default) for none.
          params_ineq: ``(G, h)``: G of shape (m, n), h of shape (m,); None (default) for none.

        Returns:
          ``OptStep(params, state)``: ``KKTSolution(x, ν, λ)`` (None for an absent pair) and the
            ``OSQPState`` (``state.status``: 0 solved, 1 maxiter, 2 primal infeasible, 3 dual
            infeasible).

        Raises:
          TypeError: a missing or malformed pair; ``init_params`` not None or a triple; with
            ``fun``, fun(x, params_obj) not a scalar.
          ValueError: shapes that do not match; with ``fun``, no x in ``init_params``.
        """
        if params_obj is None:
            raise TypeError("OSQP.run: params_obj=(Q, c) is required")
        pairs = [("params_eq", params_eq), ("params_ineq", params_ineq)]
        for name, pair in pairs if self.fun is not None else [("params_obj", params_obj), *pairs]:
            check_pair(name, pair)
        x0, nu0, lam0 = kkt_start("OSQP", init_params)
        if self.fun is not None:
            x0, n, dtype = fun_primal_start(
                "OSQP", self.fun, x0, "KKTSolution(x0, None, None)", params_obj
            )
        else:
            Q, c = params_obj
            c = jnp.asarray(c)
            n = c.shape[0] if c.ndim == 1 else -1
            if c.ndim != 1 or (Q is not None and self.matvec_Q is None and jnp.shape(Q) != (n, n)):
                raise ValueError(
                    f"OSQP: Q must be (n, n) (or None) and c (n,); got Q {jnp.shape(Q)}, c "
                    f"{c.shape}"
                )
            dtype = dtype_of(c) if self._matrix_free() else dtype_of(Q, c)
            params_obj = (Q, c)
        for name, pair, matvec in (
            ("params_eq", params_eq, self.matvec_A),
            ("params_ineq", params_ineq, self.matvec_G),
        ):
            if pair is not None and matvec is not None:
                if jnp.ndim(pair[1]) != 1:
                    raise ValueError(
                        f"OSQP: the vector of {name} must be 1-D, got shape {jnp.shape(pair[1])}"
                    )
            elif pair is not None:
                check_constraint_shapes("OSQP", name, pair, n)
        _dtypes.check_real_params(init_params, "OSQP.run", type(self)._COMPLEX_SOLVERS)

        def part(value, pair, size):
            if pair is None:
                return None
            if value is None:
                return jnp.zeros(size, dtype)
            return jnp.asarray(value, dtype)

        init_params = KKTSolution(
            jnp.zeros(n, dtype) if x0 is None else jnp.asarray(x0, dtype),
            part(nu0, params_eq, None if params_eq is None else jnp.shape(params_eq[1])),
            part(lam0, params_ineq, None if params_ineq is None else jnp.shape(params_ineq[1])),
        )
        return super().run(init_params, params_obj, params_eq, params_ineq)

    # -- data and the pieces of an iteration -------------------------------------------------

    def _state_data(self, state: OSQPState, x, params_obj, params_eq, params_ineq) -> Data:
        """The stacked problem: from the state when ``init_state`` stored it, else rebuilt (x:
        the primal iterate, whose shape ``fun`` needs)."""
        if state.data is None:
            return self._stack(self._quadratic(params_obj, x), params_eq, params_ineq)
        return Data(*state.data, self._n_eq(params_eq))

    def _quadratic(self, params_obj, x):
        """(Q, c): ``params_obj``, or with ``fun`` (params_obj, ∇ₓfun(0, params_obj))."""
        return quadratic_parts(type(self).__name__, self.fun, params_obj, x)

    def _stack(self, params_obj, params_eq, params_ineq) -> Data:
        """The problem in the stacked form l ≤ Cx ≤ u (C = [A; G]; with matvecs, C holds the
        pair of parameters (A, G), P the parameters of Q)."""
        if self._matrix_free():
            return stack_matrix_free(params_obj, params_eq, params_ineq)
        return stack_problem(params_obj, params_eq, params_ineq)

    def _matrix_free(self) -> bool:
        return any(m is not None for m in (self._matvec_Q, self.matvec_A, self.matvec_G))

    def _operators(self, data: Data) -> Operators:
        """The products with P and C: the matrices', or, with matvecs, C = [A; G] applied as
        ``matvec_A(A, x)``, ``matvec_G(G, x)`` (Cᵀ by transposing that linear map) and
        P x = ∇(½xᵀQx) (the symmetric part of Q, as the matrices' (Q + Qᵀ)/2; with ``fun``,
        Q x itself, a Hessian-vector product)."""
        if not self._matrix_free():
            return dense_operators(data)
        return matrix_free_operators(
            self._matvec_Q, data, self._constraint_parts(data), symmetric=self.fun is not None
        )

    def _constraint_parts(self, data: Data) -> list:
        """The pairs (matvec, parameters) whose products, stacked, are C x (matrix-free)."""
        params_A, params_G = data.C
        return [(self.matvec_A, params_A), (self.matvec_G, params_G)]

    def _n_eq(self, params_eq) -> int:
        """The number of equality rows at the top of C."""
        return 0 if params_eq is None else jnp.shape(params_eq[1])[0]

    def _products(self, x, z, y, rho_vec, data: Data) -> tuple:
        """(Cx, Px, Cᵀy, Cᵀ(Rz − y)), computed from scratch."""
        ops = self._operators(data)
        Cty, w = ops.Ct2(y, rho_vec * z - y)
        return ops.C(x), ops.P(x), Cty, w

    def _rho_vector(self, rho, data: Data) -> jax.Array:
        equality = data.lower == data.upper
        free = jnp.isinf(data.lower) & jnp.isinf(data.upper)
        return jnp.where(equality, 1e3 * rho, jnp.where(free, self.rho_min, rho))

    def _factorize(self, rho, data: Data) -> jax.Array:
        """The Cholesky factor of P + σI + CᵀRC (a placeholder 0 with matvecs: no matrix)."""
        if not self._operators(data).dense:
            return jnp.zeros((), data.q.dtype)
        n = data.q.shape[0]
        rho_vec = self._rho_vector(rho, data)
        M = data.P + self.sigma * jnp.eye(n, dtype=data.q.dtype) + (data.C.T * rho_vec) @ data.C
        return jnp.linalg.cholesky(M)

    # -- protocol --------------------------------------------------------------------------

    def init_state(self, init_params, params_obj, params_eq=None, params_ineq=None) -> OSQPState:
        """The state at ``init_params``.

        It holds the stacked problem l ≤ Cx ≤ u, P = (Q + Qᵀ)/2, the Cholesky factor of
        P + σI + CᵀRC for the initial ρ, z = clip(Cx, l, u), and the residuals there.

        Args:
          init_params: ``KKTSolution(x, ν, λ)``, as ``run`` builds it.
          params_obj: ``(Q, c)`` (with ``fun``, fun's parameters), as in ``run``.
          params_eq: ``(A, b)`` or None, as in ``run``.
          params_ineq: ``(G, h)`` or None, as in ``run``.

        Returns:
          An ``OSQPState``: iter_num 0, the error and residuals at the start, ρ, z, the factor, the
            stacked data and the carried products.
        """
        x = init_params[0]
        data = self._stack(self._quadratic(params_obj, x), params_eq, params_ineq)
        y = dual_vector(init_params, data)
        z = clip_to_box(self._operators(data).C(x), data.lower, data.upper)
        rho = jnp.asarray(self.rho, data.q.dtype)
        products = self._products(x, z, y, self._rho_vector(rho, data), data)
        error, r_prim, r_dual, _, _ = residuals_of(*products[:3], z, data)
        return OSQPState(
            iter_num=jnp.asarray(0),
            error=error,
            converged=jnp.asarray(False),
            status=jnp.where(error <= self.tol, SOLVED, MAX_ITERATIONS).astype(jnp.int32),
            primal_residual=r_prim,
            dual_residual=r_dual,
            rho=rho,
            z=z,
            factor=self._factorize(rho, data),
            polished=jnp.asarray(False),
            data=tuple(data[:5]),
            products=products,
        )

    def update(self, params, state: OSQPState, params_obj, params_eq=None, params_ineq=None):
        """One ADMM iteration on (x, z, y), as in the class docstring.

        Then come the stopping and infeasibility tests and, with ``adaptive_rho``, a possible update
        of ρ (and refactoring).

        Args:
          params: the current ``KKTSolution(x, ν, λ)`` (y = (ν, λ)).
          state: the state at it (from ``init_state`` or the last ``update``).
          params_obj: ``(Q, c)`` (with ``fun``, fun's parameters), as in ``run``.
          params_eq: ``(A, b)`` or None, as in ``run``.
          params_ineq: ``(G, h)`` or None, as in ``run``.

        Returns:
          ``OptStep(params, state)``: the new ``KKTSolution`` and its state (error, residuals,
            status, ρ, z, the products for the next iteration).
        """
        data = self._state_data(state, params[0], params_obj, params_eq, params_ineq)
        x, z = params[0], state.z
        y = dual_vector(params, data)
        rho_vec = self._rho_vector(state.rho, data)
        products = state.products
        if products is None:
            products = self._products(x, z, y, rho_vec, data)
        Cx, _, _, w = products  # w = Cᵀ(Rz − y)

        rhs = self.sigma * x - data.q + w
        ops = self._operators(data)
        x_tilde = x_step(state.factor, rhs, x, self.sigma, rho_vec, ops)
        Cx_tilde = ops.C(x_tilde)
        z_hat = self.alpha * Cx_tilde + (1 - self.alpha) * z
        x_new = self.alpha * x_tilde + (1 - self.alpha) * x
        z_new = clip_to_box(z_hat + y / rho_vec, data.lower, data.upper)
        y_new = y + rho_vec * (z_hat - z_new)
        Cx_new = self.alpha * Cx_tilde + (1 - self.alpha) * Cx
        Px_new = ops.P(x_new)
        Cty_new, w_new = ops.Ct2(y_new, rho_vec * z_new - y_new)

        error, r_prim, r_dual, s_prim, s_dual = residuals_of(Cx_new, Px_new, Cty_new, z_new, data)
        solved = error <= self.tol
        status = jnp.where(
            solved,
            SOLVED,
            jnp.where(
                primal_infeasible(y_new - y, data, self.eps_primal_infeasible, ops),
                PRIMAL_INFEASIBLE,
                jnp.where(
                    dual_infeasible(x_new - x, data, self.eps_dual_infeasible, ops),
                    DUAL_INFEASIBLE,
                    MAX_ITERATIONS,
                ),
            ),
        ).astype(jnp.int32)

        rho, factor = state.rho, state.factor
        if self.adaptive_rho:
            tiny = jnp.finfo(data.q.dtype).tiny ** 0.5
            ratio = (r_prim / (s_prim + tiny) + tiny) / (r_dual / (s_dual + tiny) + tiny)
            new_rho = jnp.clip(rho * jnp.sqrt(ratio), self.rho_min, self.rho_max)
            change = (
                ((state.iter_num + 1) % self.rho_update_frequency == 0)
                & (status == MAX_ITERATIONS)
                & ((new_rho > 5 * rho) | (new_rho < rho / 5))
            )

            def refactor():  # R changes: the factor, and Cᵀ(Rz − y) for the next step
                new_rho_vec = self._rho_vector(new_rho, data)
                return self._factorize(new_rho, data), ops.Ct(new_rho_vec * z_new - y_new)

            factor, w_new = _loop.cond(change, refactor, lambda: (factor, w_new))
            rho = jnp.where(change, new_rho, rho)

        state = state._replace(
            iter_num=state.iter_num + 1,
            error=error.astype(state.error.dtype),
            status=status,
            primal_residual=r_prim,
            dual_residual=r_dual,
            rho=rho,
            z=z_new,
            factor=factor,
            data=tuple(data[:5]),
            products=(Cx_new, Px_new, Cty_new, w_new),
        )
        return OptStep(kkt_params(x_new, y_new, data, params), state)

    def _done(self, state: OSQPState) -> jax.Array:
        return super()._done(state) | (state.status >= PRIMAL_INFEASIBLE)

    def _polish(self, params, state: OSQPState, data: Data):
        """The solution of the KKT system of the guessed active set, where it is better."""
        z = state.z
        ops = self._operators(data)
        x_p, z_p, y_p = polished_point(
            params[0], z, dual_vector(params, data), data, self.polish_delta, ops
        )
        error_p, r_prim, r_dual, _, _ = residuals(x_p, z_p, y_p, data, ops)
        accept = jnp.isfinite(error_p) & (error_p < state.error) & (state.status <= 1)
        params = tree.where(accept, kkt_params(x_p, y_p, data, params), params)
        state = state._replace(
            error=jnp.where(accept, error_p.astype(state.error.dtype), state.error),
            status=jnp.where(accept & (error_p <= self.tol), SOLVED, state.status).astype(
                jnp.int32
            ),
            primal_residual=jnp.where(accept, r_prim, state.primal_residual),
            dual_residual=jnp.where(accept, r_dual, state.dual_residual),
            z=jnp.where(accept, z_p, z),
            polished=accept,
        )
        return params, state

    def _iterate(self, init_params, params_obj, params_eq=None, params_ineq=None):
        params, state = super()._iterate(init_params, params_obj, params_eq, params_ineq)
        if self.polish:
            data = self._state_data(state, params[0], params_obj, params_eq, params_ineq)
            params, state = self._finish(*self._polish(params, state, data))
        return params, state

    def optimality(self):
        """The condition that the solution is differentiated through: the KKT conditions
        (Qx + c + Aᵀν + Gᵀλ, Ax − b, λ ∘ (Gx − h)) = 0 (:func:`qp_kkt`).

        Returns:
          ``("root", F)`` with F(z, params_obj, params_eq=None, params_ineq=None), z a
            :class:`KKTSolution`.
        """
        return "root", self._kkt
