"""Quadratic programs: min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h, differentiable in all their data.

Three solvers, with JAXopt's QP conventions (``run(init_params, params_obj=(Q, c),
params_eq=(A, b), params_ineq=(G, h))``):

- :class:`EqualityConstrainedQP`: equality constraints only, one KKT linear solve (plus
  iterative refinement steps if its residual is above ``tol``);
- :class:`BoxCDQP`: box constraints l ≤ x ≤ u, by cyclic coordinate descent;
- :class:`OSQP`: general constraints, by the ADMM of OSQP (Stellato et al., 2020), with adaptive
  ρ, infeasibility detection and solution polishing.

``EqualityConstrainedQP`` and ``OSQP`` return the solution as a :class:`KKTSolution`, the named
tuple ``(primal, dual_eq, dual_ineq)`` (a part whose constraints are absent is None), with the
signs of the Lagrangian L = ½xᵀQx + cᵀx + νᵀ(Ax − b) + λᵀ(Gx − h), λ ≥ 0; they are
differentiated through the KKT conditions (:func:`implicitdiff.optimality.kkt` with
f(x, (Q, c)) = ½xᵀQx + cᵀx, H(x, (A, b)) = Ax − b and G(x, (G, h)) = Gx − h). ``BoxCDQP``
returns the primal solution only and is differentiated through its projected-gradient fixed
point.

This module must not import :mod:`implicitdiff.projections` (which imports it back, for the
polyhedron projection): the box projection it needs is the clip written here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, linear_solve, optimality, tree
from implicitdiff.solvers._base import IterativeSolver, OptStep

PyTree = Any

__all__ = [
    "OSQP",
    "BoxCDQP",
    "BoxCDQPState",
    "EqualityConstrainedQP",
    "EqualityConstrainedQPState",
    "KKTSolution",
    "OSQPState",
    "qp_kkt",
]


class KKTSolution(NamedTuple):
    """A QP's primal-dual solution (as JAXopt's): a tuple ``(primal, dual_eq, dual_ineq)``."""

    primal: PyTree
    dual_eq: PyTree
    dual_ineq: PyTree


# OSQP's status codes.
SOLVED, MAX_ITERATIONS, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------
# Shared pieces.


def _apply(matvec: Callable | None, M: Any, x: PyTree) -> PyTree:
    """M x: ``matvec(M, x)`` if a matvec is given, else the matrix product (0 for M None)."""
    if matvec is not None:
        return matvec(M, x)
    if M is None:
        return tree.zeros_like(x)
    return M @ x


def _inf_norm(v: jax.Array) -> jax.Array:
    """‖v‖∞, 0 for an empty v."""
    return jnp.max(jnp.abs(v), initial=0.0)


def _transpose_products(C: jax.Array, u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Cᵀu, Cᵀv) from one pass over C (one matrix product with two columns)."""
    both = C.T @ jnp.stack([u, v], axis=1)
    return both[:, 0], both[:, 1]


def _check_pair(name: str, pair: Any) -> None:
    if pair is not None and not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(
            f"{name} must be a pair (matrix, vector) or None, got {type(pair).__name__}"
        )


def qp_kkt(
    matvec_Q: Callable | None = None,
    matvec_A: Callable | None = None,
    matvec_G: Callable | None = None,
) -> Callable:
    """The KKT map of min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h, in the argument order of ``run``.

    Returns F(z, params_obj, params_eq=None, params_ineq=None), z = (x, ν, λ), equal to
    :func:`implicitdiff.optimality.kkt` with f(x, (Q, c)) = ½xᵀQx + cᵀx, H(x, (A, b)) = Ax − b and
    G(x, (G, h)) = Gx − h; a None ``params_eq`` (``params_ineq``) drops the equalities
    (inequalities), whose part of z and of F is then None. Products with Q, A, G are ``M @ x``, or
    ``matvec_M(M, x)`` when a matvec is given (then M is any pytree of parameters). The
    residuals come as a :class:`KKTSolution` when z is one.
    """

    def fun(x, params_obj):
        Q, c = params_obj
        return 0.5 * tree.vdot(x, _apply(matvec_Q, Q, x)) + tree.vdot(c, x)

    def eq_fun(x, params_eq):
        A, b = params_eq
        return tree.sub(_apply(matvec_A, A, x), b)

    def ineq_fun(x, params_ineq):
        G, h = params_ineq
        return tree.sub(_apply(matvec_G, G, x), h)

    variants = {
        (has_eq, has_ineq): optimality.kkt(
            fun, eq_fun if has_eq else None, ineq_fun if has_ineq else None
        )
        for has_eq in (False, True)
        for has_ineq in (False, True)
    }

    def qp_kkt_optimality(z, params_obj, params_eq=None, params_ineq=None):
        kkt = variants[(params_eq is not None, params_ineq is not None)]
        residuals = kkt(tuple(z), params_obj, params_eq, params_ineq)
        # Shaped like z: a KKTSolution gives a KKTSolution, as the engine requires.
        return type(z)(*residuals) if isinstance(z, KKTSolution) else residuals

    qp_kkt_optimality.symmetric = False
    return qp_kkt_optimality


def _dtype_of(*values: Any) -> Any:
    return tree.dtype([v for v in values if v is not None])


# ---------------------------------------------------------------------------------------------
# Equality-constrained QP: one KKT solve.


class EqualityConstrainedQPState(NamedTuple):
    """iter_num (solves done), error = ‖K z − r‖∞ / (1 + ‖r‖∞) for the KKT system K z = r,
    converged."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)


@dataclasses.dataclass(eq=False)
class EqualityConstrainedQP(IterativeSolver):
    """min ½xᵀQx + cᵀx s.t. Ax = b by one solve of the KKT system.

    ``run(init_params=None, params_obj=(Q, c), params_eq=(A, b))`` solves

        [[Q, Aᵀ], [A, 0]] [x; ν] = [−c; b]

    (K z = r; without ``params_eq``, Q x = −c) and returns ``KKTSolution(x, ν, None)``. Q must
    be positive definite on the null space of A, and A of full row rank. Each iteration is one
    step of iterative refinement, z ← z + K⁻¹(r − K z): from the default z = 0 the first is the
    direct solve, so one iteration suffices unless K is ill-conditioned. The solution is
    differentiated through the KKT conditions (:func:`qp_kkt`): with respect to Q, c, A and b.

    With dense arrays and ``kkt_solve=None``, K is formed and solved by LU
    (``jnp.linalg.solve``). With ``matvec_Q`` or ``matvec_A`` (products ``matvec_Q(Q, x)``,
    ``matvec_A(A, x)``: then Q, A are any pytrees of parameters, and x may be a pytree) or a given
    ``kkt_solve``, K is only applied, and solved by ``kkt_solve`` (a name or callable of
    :mod:`implicitdiff.linear_solve`; default ``"gmres"``; K is symmetric indefinite).

    Attributes:
      matvec_Q, matvec_A: optional matvecs, see above.
      kkt_solve: the linear solver of K z = r, see above.
      maxiter, tol: stop when ‖K z − r‖∞ ≤ tol (1 + ‖r‖∞) (default tol 1e-6: the direct solve
        reaches about 1e-15 in float64, 1e-7 in float32), or after maxiter (10) refinement steps.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.qp import EqualityConstrainedQP
      >>> Q, c = 2.0 * jnp.eye(2), jnp.array([1.0, 1.0])
      >>> A, b = jnp.array([[1.0, 1.0]]), jnp.array([1.0])
      >>> (x, nu, _), state = EqualityConstrainedQP().run(None, (Q, c), (A, b))
      >>> x
      Array([0.5, 0.5], dtype=float32)
    """

    _user_function = None  # run has its own signature

    matvec_Q: Callable | None = None
    matvec_A: Callable | None = None
    kkt_solve: str | Callable | None = None
    maxiter: int = 10
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        for name in ("matvec_Q", "matvec_A"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(
                    f"EqualityConstrainedQP: {name} must be callable or None, got {value!r}"
                )
        if self.kkt_solve is not None:
            linear_solve.resolve(self.kkt_solve)  # raises on an unknown name
        self._kkt = qp_kkt(self.matvec_Q, self.matvec_A)

    def run(
        self,
        init_params: PyTree = None,
        params_obj: tuple | None = None,
        params_eq: tuple | None = None,
    ) -> OptStep:
        """Solve from ``init_params`` ((x, ν, None), or None for zeros); see the class."""
        if params_obj is None:
            raise TypeError("EqualityConstrainedQP.run: params_obj=(Q, c) is required")
        _check_pair("params_obj", params_obj)
        _check_pair("params_eq", params_eq)
        c = params_obj[1]
        if self.matvec_Q is None and self.matvec_A is None:  # dense arrays: check their shapes
            Q, n = params_obj[0], (jnp.shape(c) or (-1,))[0]
            if jnp.ndim(c) != 1 or jnp.shape(Q) != (n, n):
                raise ValueError(
                    "EqualityConstrainedQP: params_obj = (Q, c) must be a matrix (n, n) and a "
                    f"vector (n,); got Q {jnp.shape(Q)}, c {jnp.shape(c)}"
                )
            if params_eq is not None:
                A, b = params_eq
                if jnp.ndim(A) != 2 or jnp.shape(A)[1] != n or jnp.shape(b) != jnp.shape(A)[:1]:
                    raise ValueError(
                        f"EqualityConstrainedQP: params_eq = (A, b) must be a matrix (p, {n}) and "
                        f"a vector (p,); got A {jnp.shape(A)}, b {jnp.shape(b)}"
                    )
        x0, nu0, _ = (None, None, None) if init_params is None else init_params
        if params_eq is None:
            nu0 = None
        elif nu0 is None:
            nu0 = tree.zeros_like(params_eq[1])
        init_params = KKTSolution(tree.zeros_like(c) if x0 is None else x0, nu0, None)
        return super().run(init_params, params_obj, params_eq)

    # -- the system K z = r ----------------------------------------------------------------

    def _dense(self) -> bool:
        return self.matvec_Q is None and self.matvec_A is None and self.kkt_solve is None

    def _dense_system(self, params_obj, params_eq):
        Q, c = params_obj
        Q = 0.5 * (Q + Q.T)
        if params_eq is None:
            return Q, -c
        A, b = params_eq
        p = A.shape[0]
        K = jnp.block([[Q, A.T], [A, jnp.zeros((p, p), A.dtype)]])
        return K, jnp.concatenate([-c, b])

    def _matvec_system(self, params_obj, params_eq, x_like):
        Q, c = params_obj
        if params_eq is None:
            return (lambda x: _apply(self.matvec_Q, Q, x)), tree.neg(c)
        A, b = params_eq
        _, transpose = jax.vjp(lambda x: _apply(self.matvec_A, A, x), x_like)

        def matvec(z):
            x, nu = z
            qx = _apply(self.matvec_Q, Q, x)
            return tree.add(qx, transpose(nu)[0]), _apply(self.matvec_A, A, x)

        return matvec, (tree.neg(c), b)

    def _refine(self, params, params_obj, params_eq):
        """z + K⁻¹(r − K z) and the scaled residual of the result."""
        x, nu, _ = params
        if self._dense():
            K, r = self._dense_system(params_obj, params_eq)
            z = x if nu is None else jnp.concatenate([x, nu])
            z = z + jnp.linalg.solve(K, r - K @ z)
            error = _inf_norm(K @ z - r) / (1 + _inf_norm(r))
            n = x.shape[0]
            return KKTSolution(z[:n], None if nu is None else z[n:], None), error
        matvec, r = self._matvec_system(params_obj, params_eq, x)
        z = x if nu is None else (x, nu)
        solver = linear_solve.resolve(self.kkt_solve if self.kkt_solve is not None else "gmres")
        z = tree.add(z, solver(matvec, tree.sub(r, matvec(z))))
        error = tree.norm(tree.sub(matvec(z), r), jnp.inf) / (1 + tree.norm(r, jnp.inf))
        solution = KKTSolution(z, None, None) if nu is None else KKTSolution(z[0], z[1], None)
        return solution, error

    # -- protocol --------------------------------------------------------------------------

    def init_state(self, init_params, params_obj, params_eq=None) -> EqualityConstrainedQPState:
        dtype = _dtype_of(params_obj[1])
        return EqualityConstrainedQPState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, dtype),
            converged=jnp.asarray(False),
        )

    def update(self, params, state, params_obj, params_eq=None) -> OptStep:
        params, error = self._refine(params, params_obj, params_eq)
        state = EqualityConstrainedQPState(
            iter_num=state.iter_num + 1,
            error=error.astype(state.error.dtype),
            converged=state.converged,
        )
        return OptStep(params, state)

    def optimality(self):
        return "root", self._kkt


# ---------------------------------------------------------------------------------------------
# Box-constrained QP: cyclic coordinate descent.


def _clip(x: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """The projection onto the box [lower, upper] (as ``projections.box``)."""
    return jnp.minimum(jnp.maximum(x, lower), upper)


def _box_fixed_point(x, params_obj, params_ineq):
    """T(x) = clip(x − D⁻¹(Qx + c), l, u), D = diag(Q): fixed exactly at the solutions."""
    Q, c = params_obj
    lower, upper = params_ineq
    grad = 0.5 * (Q @ x + Q.T @ x) + c
    return _clip(x - grad / jnp.diag(Q), lower, upper)


_box_fixed_point.symmetric = False


class BoxCDQPState(NamedTuple):
    """iter_num (sweeps done), error = ‖x − clip(x − D⁻¹(Qx + c), l, u)‖₂, converged, status,
    quadratic = (Q + Qᵀ)/2, formed once by ``init_state`` (None: formed at each sweep)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    quadratic: Any = None


@dataclasses.dataclass(eq=False)
class BoxCDQP(IterativeSolver):
    """min ½xᵀQx + cᵀx s.t. l ≤ x ≤ u by cyclic coordinate descent.

    ``run(init_params=None, params_obj=(Q, c), params_ineq=(l, u))``, Q symmetric positive
    semidefinite with a positive diagonal, l ≤ u (entries may be ±inf; scalars broadcast). One
    iteration is a sweep over the coordinates i = 1, …, n, each minimized exactly:

        xᵢ ← clip(xᵢ − (Qx + c)ᵢ / Qᵢᵢ, lᵢ, uᵢ),

    the gradient Qx + c being updated after each coordinate. Returns the primal solution x (not a
    tuple, as JAXopt's BoxCDQP). The default init_params is clip(0, l, u).

    Optimality condition (chosen over the KKT conditions on the bounds because it needs no dual
    variables): the fixed point of the diagonally scaled projected gradient step

        T(x, (Q, c), (l, u)) = clip(x − D⁻¹(Qx + c), l, u),   D = diag(Q),

    whose fixed points are exactly the solutions. At a strictly complementary solution, I − ∂ₓT
    is D_F⁻¹Q_FF on the free coordinates F and the identity on the active ones, invertible when
    Q_FF is positive definite. The solution is differentiable with respect to Q, c, l and u.

    Attributes:
      maxiter, tol: stop when ‖x − T(x)‖₂ ≤ tol (default 1e-8; in float32 use about 1e-5) or
        after maxiter (default 1000) sweeps.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.qp import BoxCDQP
      >>> Q, c = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([-4.0, 1.0])
      >>> x, state = BoxCDQP(tol=1e-5).run(None, (Q, c), (0.0, 1.0))
      >>> x
      Array([1., 0.], dtype=float32)
    """

    _user_function = None  # run has its own signature

    maxiter: int = 1000
    tol: float = 1e-8

    def run(
        self,
        init_params: jax.Array | None = None,
        params_obj: tuple | None = None,
        params_ineq: tuple | None = None,
    ) -> OptStep:
        """Solve from ``init_params`` (clipped into the box; None: clip(0, l, u)); see the class."""
        if params_obj is None or params_ineq is None:
            raise TypeError("BoxCDQP.run: params_obj=(Q, c) and params_ineq=(l, u) are required")
        _check_pair("params_obj", params_obj)
        _check_pair("params_ineq", params_ineq)
        Q, c = params_obj
        c = jnp.asarray(c)
        if c.ndim != 1 or jnp.shape(Q) != (c.shape[0], c.shape[0]):
            raise ValueError(
                f"BoxCDQP: Q must be (n, n) and c (n,); got Q {jnp.shape(Q)}, c {c.shape}"
            )
        bounds = _checks.concrete_leaves(params_ineq)
        if bounds is not None and len(bounds) == 2 and np.any(np.greater(*bounds)):
            raise ValueError(
                "BoxCDQP: params_ineq = (lower, upper) must have lower ≤ upper entry by entry "
                "(the box is empty otherwise)"
            )
        dtype = _dtype_of(Q, c)
        # Bounds broadcast to arrays like c (so that they can be differentiated entry by entry).
        lower, upper = (
            jnp.broadcast_to(jnp.asarray(bound, dtype), c.shape) for bound in params_ineq
        )
        if bounds is None:  # traced bounds: NaN where lower > upper (converged False)
            upper = _checks.nan_unless(lower <= upper, upper)
        x0 = jnp.zeros(c.shape, dtype) if init_params is None else jnp.asarray(init_params, dtype)
        return super().run(_clip(x0, lower, upper), (Q, c), (lower, upper))

    def init_state(self, init_params, params_obj, params_ineq) -> BoxCDQPState:
        dtype = _dtype_of(*params_obj)
        Q = params_obj[0]
        return BoxCDQPState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, dtype),
            converged=jnp.asarray(False),
            quadratic=0.5 * (Q + Q.T),
        )

    def update(self, params, state, params_obj, params_ineq) -> OptStep:
        Q, c = params_obj
        lower, upper = params_ineq
        P = 0.5 * (Q + Q.T) if state.quadratic is None else state.quadratic
        diag = jnp.diag(P)
        x = _clip(params, lower, upper)

        def coordinate(i, carry):  # P symmetric: its row i is its column i, and contiguous
            x, grad = carry
            xi = _clip(x[i] - grad[i] / diag[i], lower[i], upper[i])
            return x.at[i].set(xi), grad + (xi - x[i]) * P[i]

        # Px + c from scratch at each sweep; the sweep's own update of it is the gradient at
        # the new x (to rounding), which the error needs: no further product with P.
        x, grad = jax.lax.fori_loop(0, x.shape[0], coordinate, (x, P @ x + c))
        error = tree.norm(x - _clip(x - grad / diag, lower, upper))
        state = state._replace(
            iter_num=state.iter_num + 1, error=error.astype(state.error.dtype), quadratic=P
        )
        return OptStep(x, state)

    def optimality(self):
        return "fixed_point", _box_fixed_point


# ---------------------------------------------------------------------------------------------
# OSQP: ADMM on l ≤ Cx ≤ u.


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


class _Data(NamedTuple):
    P: jax.Array
    q: jax.Array
    C: jax.Array
    lower: jax.Array
    upper: jax.Array
    n_eq: int


@dataclasses.dataclass(eq=False)
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

    Attributes:
      rho: the initial ρ > 0 (default 0.1).
      sigma: σ > 0 (default 1e-6).
      alpha: the relaxation α ∈ (0, 2) (default 1.6).
      adaptive_rho, rho_update_frequency, rho_min, rho_max: see above (True, 25, 1e-6, 1e6).
      eps_primal_infeasible, eps_dual_infeasible: ε_p, ε_d (default 1e-4 each).
      polish, polish_delta: see above (True, 1e-6).
      maxiter, tol: see above (defaults 4000 and 1e-6).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.qp import OSQP
      >>> Q, c = jnp.eye(2), jnp.array([-1.0, -1.0])
      >>> G, h = jnp.array([[1.0, 1.0]]), jnp.array([1.0])  # x₁ + x₂ ≤ 1
      >>> (x, _, lam), state = OSQP().run(None, (Q, c), None, (G, h))
      >>> int(state.status), jnp.round(x, 4), jnp.round(lam, 4)
      (0, Array([0.5, 0.5], dtype=float32), Array([0.5], dtype=float32))
    """

    _user_function = None  # run has its own signature

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

    def __post_init__(self):
        super().__post_init__()
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
        self._kkt = qp_kkt()

    def run(
        self,
        init_params: PyTree = None,
        params_obj: tuple | None = None,
        params_eq: tuple | None = None,
        params_ineq: tuple | None = None,
    ) -> OptStep:
        """Solve from ``init_params`` ((x, ν, λ) or None for zeros); see the class."""
        if params_obj is None:
            raise TypeError("OSQP.run: params_obj=(Q, c) is required")
        for name, pair in (
            ("params_obj", params_obj),
            ("params_eq", params_eq),
            ("params_ineq", params_ineq),
        ):
            _check_pair(name, pair)
        Q, c = params_obj
        c = jnp.asarray(c)
        n = c.shape[0] if c.ndim == 1 else -1
        if c.ndim != 1 or (Q is not None and jnp.shape(Q) != (n, n)):
            raise ValueError(
                f"OSQP: Q must be (n, n) (or None) and c (n,); got Q {jnp.shape(Q)}, c {c.shape}"
            )
        for name, pair in (("params_eq", params_eq), ("params_ineq", params_ineq)):
            if pair is not None:
                M, v = pair
                if jnp.ndim(M) != 2 or jnp.shape(M)[1] != n or jnp.shape(v) != jnp.shape(M)[:1]:
                    raise ValueError(
                        f"OSQP: {name} must be a matrix (m, {n}) and a vector (m,); got "
                        f"{jnp.shape(M)} and {jnp.shape(v)}"
                    )
        dtype = _dtype_of(Q, c)
        if init_params is None:
            init_params = (None, None, None)
        x0, nu0, lam0 = init_params

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
        return super().run(init_params, (Q, c), params_eq, params_ineq)

    # -- data and the pieces of an iteration -------------------------------------------------

    @staticmethod
    def _data(params_obj, params_eq, params_ineq) -> _Data:
        Q, c = params_obj
        dtype = _dtype_of(Q, c)
        n = c.shape[0]
        P = jnp.zeros((n, n), dtype) if Q is None else 0.5 * (Q + Q.T)
        rows, lower, upper = [jnp.zeros((0, n), dtype)], [], []
        n_eq = 0
        if params_eq is not None:
            A, b = params_eq
            rows.append(A)
            lower.append(b)
            upper.append(b)
            n_eq = A.shape[0]
        if params_ineq is not None:
            G, h = params_ineq
            rows.append(G)
            lower.append(jnp.full(h.shape, -jnp.inf, dtype))
            upper.append(h)
        C = jnp.concatenate(rows).astype(dtype)
        empty = jnp.zeros((0,), dtype)
        lower = jnp.concatenate([empty, *lower]).astype(dtype)
        upper = jnp.concatenate([empty, *upper]).astype(dtype)
        return _Data(P, c.astype(dtype), C, lower, upper, n_eq)

    def _state_data(self, state: OSQPState, params_obj, params_eq, params_ineq) -> _Data:
        """The stacked problem: from the state when ``init_state`` stored it, else rebuilt."""
        if state.data is None:
            return self._data(params_obj, params_eq, params_ineq)
        n_eq = 0 if params_eq is None else jnp.shape(params_eq[1])[0]
        return _Data(*state.data, n_eq)

    def _products(self, x, z, y, rho_vec, data: _Data) -> tuple:
        """(Cx, Px, Cᵀy, Cᵀ(Rz − y)), computed from scratch."""
        Cty, w = _transpose_products(data.C, y, rho_vec * z - y)
        return data.C @ x, data.P @ x, Cty, w

    @staticmethod
    def _dual_vector(params, data: _Data) -> jax.Array:
        _, nu, lam = params
        parts = [jnp.zeros((0,), data.q.dtype)] + [v for v in (nu, lam) if v is not None]
        return jnp.concatenate(parts)

    @staticmethod
    def _params(x, y, data: _Data, params) -> KKTSolution:
        _, nu, lam = params
        return KKTSolution(
            x,
            None if nu is None else y[: data.n_eq],
            None if lam is None else y[data.n_eq :],
        )

    def _rho_vector(self, rho, data: _Data) -> jax.Array:
        equality = data.lower == data.upper
        free = jnp.isinf(data.lower) & jnp.isinf(data.upper)
        return jnp.where(equality, 1e3 * rho, jnp.where(free, self.rho_min, rho))

    def _factorize(self, rho, data: _Data) -> jax.Array:
        n = data.q.shape[0]
        rho_vec = self._rho_vector(rho, data)
        M = data.P + self.sigma * jnp.eye(n, dtype=data.q.dtype) + (data.C.T * rho_vec) @ data.C
        return jnp.linalg.cholesky(M)

    @classmethod
    def _residuals(cls, x, z, y, data: _Data):
        """(error, r_prim, r_dual, s_prim, s_dual)."""
        return cls._residuals_of(data.C @ x, data.P @ x, data.C.T @ y, z, data)

    @staticmethod
    def _residuals_of(Cx, Px, Cty, z, data: _Data):
        """(error, r_prim, r_dual, s_prim, s_dual) from the products Cx, Px and Cᵀy."""
        r_prim = _inf_norm(Cx - z)
        r_dual = _inf_norm(Px + data.q + Cty)
        s_prim = jnp.maximum(_inf_norm(Cx), _inf_norm(z))
        s_dual = jnp.maximum(jnp.maximum(_inf_norm(Px), _inf_norm(Cty)), _inf_norm(data.q))
        error = jnp.maximum(r_prim / (1 + s_prim), r_dual / (1 + s_dual))
        return error, r_prim, r_dual, s_prim, s_dual

    def _primal_infeasible(self, dy, data: _Data) -> jax.Array:
        """Whether δy certifies primal infeasibility. The product Cᵀδy is computed only when the
        cheap part of the test (the support function) passes."""
        lower_inf, upper_inf = jnp.isinf(data.lower), jnp.isinf(data.upper)
        # Project δy onto the polar of the recession cone of [l, u].
        dy = jnp.where(
            lower_inf & upper_inf,
            0.0,
            jnp.where(
                upper_inf,
                jnp.minimum(dy, 0.0),
                jnp.where(lower_inf, jnp.maximum(dy, 0.0), dy),
            ),
        )
        norm = _inf_norm(dy)
        support = jnp.sum(
            jnp.where(upper_inf, 0.0, data.upper * jnp.maximum(dy, 0.0))
            + jnp.where(lower_inf, 0.0, data.lower * jnp.minimum(dy, 0.0))
        )
        eps = self.eps_primal_infeasible * norm
        candidate = (norm > 0) & (support <= -eps)
        return candidate & jax.lax.cond(
            candidate, lambda: _inf_norm(data.C.T @ dy) <= eps, lambda: jnp.asarray(False)
        )

    def _dual_infeasible(self, dx, data: _Data) -> jax.Array:
        """Whether δx certifies dual infeasibility. The products Cδx and Pδx are computed only
        when the cheap part of the test (cᵀδx) passes."""
        norm = _inf_norm(dx)
        eps = self.eps_dual_infeasible * norm

        def products_pass():
            Cdx = data.C @ dx
            cone = jnp.all(
                (jnp.isinf(data.upper) | (Cdx <= eps)) & (jnp.isinf(data.lower) | (Cdx >= -eps))
            )
            return cone & (_inf_norm(data.P @ dx) <= eps)

        candidate = (norm > 0) & (jnp.vdot(data.q, dx) <= -eps)
        return candidate & jax.lax.cond(candidate, products_pass, lambda: jnp.asarray(False))

    # -- protocol --------------------------------------------------------------------------

    def init_state(self, init_params, params_obj, params_eq=None, params_ineq=None) -> OSQPState:
        data = self._data(params_obj, params_eq, params_ineq)
        x = init_params[0]
        y = self._dual_vector(init_params, data)
        z = _clip(data.C @ x, data.lower, data.upper)
        rho = jnp.asarray(self.rho, data.q.dtype)
        products = self._products(x, z, y, self._rho_vector(rho, data), data)
        error, r_prim, r_dual, _, _ = self._residuals_of(*products[:3], z, data)
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
        data = self._state_data(state, params_obj, params_eq, params_ineq)
        x, z = params[0], state.z
        y = self._dual_vector(params, data)
        rho_vec = self._rho_vector(state.rho, data)
        products = state.products
        if products is None:
            products = self._products(x, z, y, rho_vec, data)
        Cx, _, _, w = products  # w = Cᵀ(Rz − y)

        rhs = self.sigma * x - data.q + w
        x_tilde = jax.scipy.linalg.cho_solve((state.factor, True), rhs)
        Cx_tilde = data.C @ x_tilde
        z_hat = self.alpha * Cx_tilde + (1 - self.alpha) * z
        x_new = self.alpha * x_tilde + (1 - self.alpha) * x
        z_new = _clip(z_hat + y / rho_vec, data.lower, data.upper)
        y_new = y + rho_vec * (z_hat - z_new)
        Cx_new = self.alpha * Cx_tilde + (1 - self.alpha) * Cx
        Px_new = data.P @ x_new
        Cty_new, w_new = _transpose_products(data.C, y_new, rho_vec * z_new - y_new)

        error, r_prim, r_dual, s_prim, s_dual = self._residuals_of(
            Cx_new, Px_new, Cty_new, z_new, data
        )
        solved = error <= self.tol
        status = jnp.where(
            solved,
            SOLVED,
            jnp.where(
                self._primal_infeasible(y_new - y, data),
                PRIMAL_INFEASIBLE,
                jnp.where(self._dual_infeasible(x_new - x, data), DUAL_INFEASIBLE, MAX_ITERATIONS),
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
                return self._factorize(new_rho, data), data.C.T @ (new_rho_vec * z_new - y_new)

            factor, w_new = jax.lax.cond(change, refactor, lambda: (factor, w_new))
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
        return OptStep(self._params(x_new, y_new, data, params), state)

    def _done(self, state: OSQPState) -> jax.Array:
        return super()._done(state) | (state.status >= PRIMAL_INFEASIBLE)

    def _polish(self, params, state: OSQPState, data: _Data):
        """The solution of the KKT system of the guessed active set, where it is better."""
        x, z = params[0], state.z
        y = self._dual_vector(params, data)
        n = x.shape[0]
        dtype = x.dtype
        equality = data.lower == data.upper
        upper = equality | (jnp.isfinite(data.upper) & (data.upper - z < y))
        lower = ~upper & jnp.isfinite(data.lower) & (z - data.lower < -y)
        active = (upper | lower).astype(dtype)
        bound = jnp.where(upper, data.upper, jnp.where(lower, data.lower, 0.0))

        # Rows of C for the active constraints; y = 0 for the others.
        K = jnp.block([[data.P, data.C.T], [active[:, None] * data.C, -jnp.diag(1 - active)]])
        regularization = jnp.concatenate(
            [jnp.full(n, self.polish_delta, dtype), -self.polish_delta * active]
        )
        lu = jax.scipy.linalg.lu_factor(K + jnp.diag(regularization))
        rhs = jnp.concatenate([-data.q, active * bound])

        def refine(_, sol):
            return sol + jax.scipy.linalg.lu_solve(lu, rhs - K @ sol)

        sol = jax.lax.fori_loop(0, 3, refine, jax.scipy.linalg.lu_solve(lu, rhs), unroll=True)
        x_p, y_p = sol[:n], sol[n:]
        y_p = jnp.where(
            equality,
            y_p,
            jnp.where(upper, jnp.maximum(y_p, 0.0), jnp.where(lower, jnp.minimum(y_p, 0.0), 0.0)),
        )
        z_p = _clip(data.C @ x_p, data.lower, data.upper)
        error_p, r_prim, r_dual, _, _ = self._residuals(x_p, z_p, y_p, data)
        accept = jnp.isfinite(error_p) & (error_p < state.error) & (state.status <= 1)
        params = tree.where(accept, self._params(x_p, y_p, data, params), params)
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
            data = self._state_data(state, params_obj, params_eq, params_ineq)
            params, state = self._finish(*self._polish(params, state, data))
        return params, state

    def optimality(self):
        return "root", self._kkt
