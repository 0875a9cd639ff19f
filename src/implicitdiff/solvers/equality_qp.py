"""min ½xᵀQx + cᵀx s.t. Ax = b by one KKT linear solve (plus iterative refinement steps if its
residual is above ``tol``): :class:`EqualityConstrainedQP`, differentiated through the KKT
conditions (see :mod:`implicitdiff.solvers._qp_common`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _summary, linear_solve, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._qp_common import (
    KKTSolution,
    apply_operator,
    check_fun,
    check_fun_start,
    check_fun_value,
    check_pair,
    dtype_of,
    fun_matvec,
    inf_norm,
    kkt_start,
    qp_kkt,
    quadratic_parts,
)

__all__ = ["EqualityConstrainedQP", "EqualityConstrainedQPState"]


class EqualityConstrainedQPState(NamedTuple):
    """iter_num (solves done), error = ‖K z − r‖∞ / (1 + ‖r‖∞) for the KKT system K z = r,
    converged."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class EqualityConstrainedQP(IterativeSolver):
    """min ½xᵀQx + cᵀx s.t. Ax = b by one solve of the KKT system.

    ``run(init_params=None, params_obj=(Q, c), params_eq=(A, b))`` solves

        [[Q, Aᵀ], [A, 0]] [x; ν] = [−c; b]

    (K z = r; without ``params_eq``, Q x = −c) and returns ``KKTSolution(x, ν, None)``. Q must
    be positive definite on the null space of A, and A of full row rank. Each iteration is one
    step of iterative refinement, z ← z + K⁻¹(r − K z): from the default z = 0 the first is the
    direct solve, so one iteration suffices unless K is ill-conditioned. The solution is
    differentiated through the KKT conditions (:func:`qp_kkt`): with respect to Q, c, A and b.

    With ``fun`` (JAXopt's option), the objective is f(x, params_obj) = ``fun(x, params_obj)``,
    promised quadratic and convex in x, ``params_obj`` any pytree: c = ∇ₓf(0, params_obj) and
    Q v = d/dt ∇ₓf(t v, params_obj) at t = 0 (matrix-free, solved as with ``matvec_Q``); the KKT
    conditions are ∇ₓf(x, params_obj) + Aᵀν = 0, Ax = b, and the solution is differentiated
    with respect to ``params_obj`` through f. ``init_params`` must then give x (its shape).

    With dense arrays and ``kkt_solve=None``, K is formed and solved by LU
    (``jnp.linalg.solve``). With ``matvec_Q`` or ``matvec_A`` (products ``matvec_Q(Q, x)``,
    ``matvec_A(A, x)``: then Q, A are any pytrees of parameters, and x may be a pytree) or a given
    ``kkt_solve``, K is only applied, and solved by ``kkt_solve`` (a name or callable of
    :mod:`implicitdiff.linear_solve`; default ``"gmres"``; K is symmetric indefinite).

    Attributes:
      matvec_Q, matvec_A: optional matvecs, see above.
      fun: the objective as a function fun(x, params_obj), see above (with ``matvec_Q``:
        ValueError).
      kkt_solve: the linear solver of K z = r, see above.
      refine_regularization: δ ≥ 0 (default 0). With δ > 0, each iteration solves with the
        quasi-definite K̄ = [[Q + δI, Aᵀ], [A, −δI]], never singular (redundant constraints, Q
        singular), and corrects δ's error by iterative refinement z ← z + K̄⁻¹(r − K z), up to
        ``refine_maxiter`` steps (default 10) or until the residual is below ``tol``.
      maxiter, tol: stop when ‖K z − r‖∞ ≤ tol (1 + ‖r‖∞) (default tol 1e-6: the direct solve
        reaches about 1e-15 in float64, 1e-7 in float32), or after maxiter (10) refinement steps.
      implicit_diff, unroll_checkpoint, jit: see :class:`IterativeSolver`; the implicit
        derivative's linear solver is ``implicit_diff_solve`` (``solve=`` is refused: JAXopt's
        ``solve`` is ``kkt_solve`` here).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.equality_qp import EqualityConstrainedQP
      >>> Q, c = 2.0 * jnp.eye(2), jnp.array([1.0, 1.0])
      >>> A, b = jnp.array([[1.0, 1.0]]), jnp.array([1.0])
      >>> (x, nu, _), state = EqualityConstrainedQP().run(None, (Q, c), (A, b))
      >>> x
      Array([0.5, 0.5], dtype=float32)
    """

    _user_function = None  # run has its own signature
    _jaxopt_solve_is = ("kkt_solve", "KKT system's")  # JAXopt's solve=: refused (_base)

    matvec_Q: Callable | None = dataclasses.field(default=None, kw_only=False)
    matvec_A: Callable | None = dataclasses.field(default=None, kw_only=False)
    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    kkt_solve: str | Callable | None = None
    refine_regularization: float = 0.0
    refine_maxiter: int = 10
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
        check_fun("EqualityConstrainedQP", self.fun, self.matvec_Q)
        # The product with Q that the solve uses: the given matvec, or fun's.
        object.__setattr__(
            self, "_matvec_Q", fun_matvec(self.fun) if self.fun is not None else self.matvec_Q
        )
        if self.kkt_solve is not None:
            linear_solve.resolve(self.kkt_solve)  # raises on an unknown name
        delta = self.refine_regularization
        if not (isinstance(delta, (int, float)) and not isinstance(delta, bool) and delta >= 0):
            raise ValueError(
                f"EqualityConstrainedQP: refine_regularization must be a number ≥ 0, got {delta!r}"
            )
        if not (isinstance(self.refine_maxiter, int) and self.refine_maxiter >= 1):
            raise ValueError(
                "EqualityConstrainedQP: refine_maxiter must be a positive int, got "
                f"{self.refine_maxiter!r}"
            )
        object.__setattr__(self, "_kkt", qp_kkt(self.matvec_Q, self.matvec_A, fun=self.fun))

    def run(
        self,
        init_params: PyTree = None,
        params_obj: Any = None,
        params_eq: tuple | None = None,
    ) -> OptStep:
        """Solve from ``init_params``; see the class.

        Args:
          init_params: ``(x, ν, None)`` (a :class:`KKTSolution` or a triple; a None part is zeros),
            or None (default) for zeros; with ``fun``, x is required. With dense (Q, c) and
            (A, b) the start is cast to their dtype, in which the problem is solved (as OSQP).
          params_obj: ``(Q, c)``: Q of shape (n, n) and c of shape (n,) (with ``matvec_Q``, Q any
            pytree of parameters); with ``fun``, any pytree, fun's second argument; required.
          params_eq: ``(A, b)``: A of shape (p, n) and b of shape (p,) (with ``matvec_A``, A any
            pytree); None (default) for no constraint.

        Returns:
          ``OptStep(params, state)``: ``KKTSolution(x, ν, None)`` (ν None without ``params_eq``) and
            the ``EqualityConstrainedQPState``.

        Raises:
          TypeError: a missing or malformed pair; ``init_params`` not None or a triple; with
            ``fun``, fun(x, params_obj) not a scalar.
          ValueError: dense arrays of shapes that do not match; with ``fun``, no x in
            ``init_params``.
        """
        if params_obj is None:
            raise TypeError("EqualityConstrainedQP.run: params_obj=(Q, c) is required")
        # Half-precision data solve in float32 (its LU factorization has no half precision).
        init_params, params_obj, params_eq = _checks.half_to_float32(
            (init_params, params_obj, params_eq)
        )
        if self.fun is None:
            check_pair("params_obj", params_obj)
        check_pair("params_eq", params_eq)
        x0, nu0, _ = kkt_start("EqualityConstrainedQP", init_params)
        check_fun_start("EqualityConstrainedQP", self.fun, x0, "KKTSolution(x0, None, None)")
        if self.fun is not None:
            check_fun_value("EqualityConstrainedQP", self.fun, params_obj, x0)
        if self._matvec_Q is None and self.matvec_A is None:  # dense arrays: check their shapes
            Q, c = params_obj
            n = (jnp.shape(c) or (-1,))[0]
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
        if self._matvec_Q is None and self.matvec_A is None and self.fun is None:
            # Whole-number data: the solution is real (its zero start was an integer array).
            params_obj, params_eq = _checks.float_leaves((params_obj, params_eq))
        if params_eq is None:
            nu0 = None
        elif nu0 is None:
            nu0 = _checks.float_leaves(tree.zeros_like(params_eq[1]))
        if x0 is None:
            x0 = _checks.float_leaves(tree.zeros_like(params_obj[1]))
        if self._matvec_Q is None and self.matvec_A is None:
            # A warm start solves in the data's dtype, as OSQP's (a float32 start of float64 data
            # made the refinement's carry change type).
            dtype = jnp.result_type(*params_obj, *(params_eq or ()))

            def cast(v):  # a real start only (a complex one is refused by name below)
                v = jnp.asarray(v)
                return v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v

            x0, nu0 = tree.map(cast, (x0, nu0))
        init_params = KKTSolution(x0, nu0, None)
        return super().run(init_params, params_obj, params_eq)

    # -- the system K z = r ----------------------------------------------------------------

    def _dense(self) -> bool:
        return self._matvec_Q is None and self.matvec_A is None and self.kkt_solve is None

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
            return (lambda x: apply_operator(self._matvec_Q, Q, x)), tree.neg(c)
        A, b = params_eq
        _, transpose = jax.vjp(lambda x: apply_operator(self.matvec_A, A, x), x_like)

        def matvec(z):
            x, nu = z
            qx = apply_operator(self._matvec_Q, Q, x)
            return tree.add(qx, transpose(nu)[0]), apply_operator(self.matvec_A, A, x)

        return matvec, (tree.neg(c), b)

    def _refine(self, params, params_obj, params_eq):
        """z + K⁻¹(r − K z) (with ``refine_regularization`` δ > 0: up to ``refine_maxiter`` steps
        z ← z + K̄⁻¹(r − K z), K̄ = K + diag(δI, −δI)) and the scaled residual of the result."""
        x, nu, _ = params
        params_obj = quadratic_parts("EqualityConstrainedQP", self.fun, params_obj, x)
        delta = self.refine_regularization
        if self._dense():
            K, r = self._dense_system(params_obj, params_eq)
            z = x if nu is None else jnp.concatenate([x, nu])
            n = x.shape[0]
            if delta > 0:
                sign = jnp.concatenate([jnp.ones(n), -jnp.ones(K.shape[0] - n)]).astype(K.dtype)
                lu = jax.scipy.linalg.lu_factor(K + delta * jnp.diag(sign))
                z = self._refinement_loop(
                    lambda v: K @ v,
                    lambda v: jax.scipy.linalg.lu_solve(lu, v),
                    z,
                    r,
                )
            else:
                z = z + jnp.linalg.solve(K, r - K @ z)
            error = inf_norm(K @ z - r) / (1 + inf_norm(r))
            solution = KKTSolution(z[:n], None if nu is None else z[n:], None)
            return _dtypes.cast_like(solution, params), error
        matvec, r = self._matvec_system(params_obj, params_eq, x)
        z = x if nu is None else (x, nu)
        solver = linear_solve.resolve(self.kkt_solve if self.kkt_solve is not None else "gmres")
        if delta > 0:

            def regularized(v):  # K̄ v = K v + (δ v_x, −δ v_ν)
                if nu is None:
                    return tree.add(matvec(v), tree.scale(delta, v))
                top, bottom = matvec(v)
                return tree.add(top, tree.scale(delta, v[0])), tree.sub(
                    bottom, tree.scale(delta, v[1])
                )

            z = self._refinement_loop(matvec, lambda v: solver(regularized, v), z, r)
        else:
            z = tree.add(z, solver(matvec, tree.sub(r, matvec(z))))
        error = tree.norm(tree.sub(matvec(z), r), jnp.inf) / (1 + tree.norm(r, jnp.inf))
        solution = KKTSolution(z, None, None) if nu is None else KKTSolution(z[0], z[1], None)
        # In the start's dtype (operators may compute in a wider one).
        return _dtypes.cast_like(solution, params), error

    def _refinement_loop(self, matvec, solve_regularized, z, r):
        """Iterative refinement: z ← z + K̄⁻¹(r − K z), until ‖K z − r‖∞ ≤ tol (1 + ‖r‖∞) or
        ``refine_maxiter`` steps."""
        scale = 1 + tree.norm(r, jnp.inf)

        def residual(z):
            return tree.sub(r, matvec(z))

        def step(_, z):  # a fixed count of masked steps: reverse-differentiable when unrolled
            rest = residual(z)
            live = tree.norm(rest, jnp.inf) > self.tol * scale
            return tree.where(live, tree.add(z, solve_regularized(rest)), z)

        return jax.lax.fori_loop(0, self.refine_maxiter, step, z)

    # -- protocol --------------------------------------------------------------------------

    def init_state(self, init_params, params_obj, params_eq=None) -> EqualityConstrainedQPState:
        """The state before the first solve (nothing is evaluated).

        Args:
          init_params: ``KKTSolution(x, ν, None)``, as ``run`` builds it.
          params_obj: ``(Q, c)`` (with ``fun``, fun's parameters), as in ``run``.
          params_eq: ``(A, b)`` or None, as in ``run``.

        Returns:
          An ``EqualityConstrainedQPState``: iter_num 0, error inf.
        """
        dtype = dtype_of(params_obj[1] if self.fun is None else init_params[0])
        return EqualityConstrainedQPState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, dtype),
            converged=jnp.asarray(False),
        )

    def update(self, params, state, params_obj, params_eq=None) -> OptStep:
        """One step of iterative refinement of K z = r: z ← z + K⁻¹(r − K z).

        Args:
          params: the current ``KKTSolution(x, ν, None)`` (z = (x, ν)).
          state: the state at z (from ``init_state`` or the last ``update``).
          params_obj: ``(Q, c)`` (with ``fun``, fun's parameters), as in ``run``.
          params_eq: ``(A, b)`` or None, as in ``run``.

        Returns:
          ``OptStep(params, state)``: the refined ``KKTSolution`` and its state (error ‖K z − r‖∞ /
            (1 + ‖r‖∞)).
        """
        params, error = self._refine(params, params_obj, params_eq)
        state = EqualityConstrainedQPState(
            iter_num=state.iter_num + 1,
            error=error.astype(state.error.dtype),
            converged=state.converged,
        )
        return OptStep(params, state)

    def optimality(self):
        """The condition that the solution is differentiated through: the KKT conditions
        (Qx + c + Aᵀν, Ax − b) = 0 (with ``fun``, ∇ₓfun(x, params_obj) in place of Qx + c;
        :func:`qp_kkt`, with this solver's matvecs).

        Returns:
          ``("root", F)`` with F(z, params_obj, params_eq=None), z a :class:`KKTSolution`.
        """
        return "root", self._kkt
