"""min ½xᵀQx + cᵀx s.t. l ≤ x ≤ u by cyclic coordinate descent: :class:`BoxCDQP`, returning the
primal solution (as JAXopt's) and differentiated through its projected-gradient fixed point."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, _summary, tree
from implicitdiff.solvers import _dtypes
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._qp_common import check_pair, clip_to_box, dtype_of

__all__ = ["BoxCDQP", "BoxCDQPState"]


def _box_fixed_point(x, params_obj, params_ineq):
    """T(x) = clip(x − D⁻¹(Qx + c), l, u), D = diag(Q): fixed exactly at the solutions."""
    Q, c = params_obj
    lower, upper = params_ineq
    grad = 0.5 * (Q @ x + Q.T @ x) + c
    return clip_to_box(x - grad / jnp.diag(Q), lower, upper)


def _box_residual(x, params_obj, params_ineq):
    """clip(x − (Qx + c), l, u) − x (Q symmetrized): JAXopt's BoxCDQP residual."""
    Q, c = params_obj
    lower, upper = params_ineq
    grad = 0.5 * (Q @ x + Q.T @ x) + c
    return clip_to_box(x - grad, lower, upper) - x


class BoxCDQPState(NamedTuple):
    """iter_num (sweeps done), error = ‖x − clip(x − D⁻¹(Qx + c), l, u)‖₂, converged, status,
    quadratic = (Q + Qᵀ)/2, formed once by ``init_state`` (None: formed at each sweep)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    quadratic: Any = None

    __repr__ = _summary.namedtuple_repr


def _start(init_params: Any, c: jax.Array, dtype: Any) -> jax.Array:
    """init_params as an array like c (a scalar broadcasts); TypeError or ValueError naming it."""
    try:
        x0 = jnp.asarray(init_params, dtype)
    except (TypeError, ValueError):
        raise TypeError(
            f"BoxCDQP.run: init_params must be None or an array of shape {c.shape}, got a "
            f"{type(init_params).__name__}"
        ) from None
    if x0.shape not in ((), c.shape):
        raise ValueError(
            f"BoxCDQP.run: init_params must have the shape of c, {c.shape}; got {x0.shape}"
        )
    return x0


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
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
      >>> from implicitdiff.solvers.box_cdqp import BoxCDQP
      >>> Q, c = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([-4.0, 1.0])
      >>> x, state = BoxCDQP(tol=1e-5).run(None, (Q, c), (0.0, 1.0))
      >>> x
      Array([1., 0.], dtype=float32)
    """

    _user_function = None  # run has its own signature
    _solution_name = "sol"  # JAXopt's optimality_fun(sol, ...)

    maxiter: int = 1000
    tol: float = 1e-8

    def run(
        self,
        init_params: jax.Array | None = None,
        params_obj: tuple | None = None,
        params_ineq: tuple | None = None,
    ) -> OptStep:
        """Solve from ``init_params``; see the class.

        Args:
          init_params: the starting point, shape (n,), clipped into the box; None (default):
            clip(0, l, u).
          params_obj: ``(Q, c)``, Q of shape (n, n) and c of shape (n,); required.
          params_ineq: ``(l, u)``, each a scalar or an array broadcasting to (n,), l ≤ u
            (±inf allowed); required.

        Returns:
          ``OptStep(x, state)``: the primal solution x, shape (n,), and the ``BoxCDQPState``.

        Raises:
          TypeError: a missing or malformed pair; ``init_params`` not an array.
          ValueError: shapes that do not match (``init_params`` too), or concrete bounds with
            l > u somewhere.
        """
        if params_obj is None or params_ineq is None:
            raise TypeError("BoxCDQP.run: params_obj=(Q, c) and params_ineq=(l, u) are required")
        _dtypes.check_real_params(init_params, "BoxCDQP.run", type(self)._COMPLEX_SOLVERS)
        check_pair("params_obj", params_obj)
        check_pair("params_ineq", params_ineq)
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
        dtype = dtype_of(Q, c)
        # Bounds broadcast to arrays like c (so that they can be differentiated entry by entry).
        lower, upper = (
            jnp.broadcast_to(jnp.asarray(bound, dtype), c.shape) for bound in params_ineq
        )
        if bounds is None:  # traced bounds: NaN where lower > upper (converged False)
            upper = _checks.nan_unless(lower <= upper, upper)
        x0 = jnp.zeros(c.shape, dtype) if init_params is None else _start(init_params, c, dtype)
        return super().run(clip_to_box(x0, lower, upper), (Q, c), (lower, upper))

    def init_state(self, init_params, params_obj, params_ineq) -> BoxCDQPState:
        """The state before the first sweep: (Q + Qᵀ)/2 formed once.

        Args:
          init_params: the starting point x₀, shape (n,).
          params_obj: ``(Q, c)``, as in ``run``.
          params_ineq: ``(l, u)``, arrays of shape (n,) (``run`` broadcasts scalars).

        Returns:
          A ``BoxCDQPState``: iter_num 0, error inf, quadratic = (Q + Qᵀ)/2.
        """
        dtype = dtype_of(*params_obj)
        Q = params_obj[0]
        return BoxCDQPState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, dtype),
            converged=jnp.asarray(False),
            quadratic=0.5 * (Q + Q.T),
        )

    def update(self, params, state, params_obj, params_ineq) -> OptStep:
        """One sweep over the coordinates i = 1, …, n.

        xᵢ ← clip(xᵢ − (Qx + c)ᵢ / Qᵢᵢ, lᵢ, uᵢ), the gradient updated after each.

        Args:
          params: the current iterate x, shape (n,) (clipped into the box first).
          state: the state at x (from ``init_state`` or the last ``update``).
          params_obj: ``(Q, c)``, as in ``run``.
          params_ineq: ``(l, u)``, arrays of shape (n,).

        Returns:
          ``OptStep(params, state)``: x after the sweep and its state (error
            ‖x − clip(x − D⁻¹(Qx + c), l, u)‖₂).
        """
        Q, c = params_obj
        lower, upper = params_ineq
        P = 0.5 * (Q + Q.T) if state.quadratic is None else state.quadratic
        diag = jnp.diag(P)
        x = clip_to_box(params, lower, upper)

        def coordinate(i, carry):  # P symmetric: its row i is its column i, and contiguous
            x, grad = carry
            xi = clip_to_box(x[i] - grad[i] / diag[i], lower[i], upper[i])
            return x.at[i].set(xi), grad + (xi - x[i]) * P[i]

        # Px + c from scratch at each sweep; the sweep's own update of it is the gradient at
        # the new x (to rounding), which the error needs: no further product with P.
        x, grad = jax.lax.fori_loop(0, x.shape[0], coordinate, (x, P @ x + c))
        error = tree.norm(x - clip_to_box(x - grad / diag, lower, upper))
        state = state._replace(
            iter_num=state.iter_num + 1, error=error.astype(state.error.dtype), quadratic=P
        )
        return OptStep(x, state)

    def _optimality_residual(self, params, args, kwargs):
        """JAXopt's ``optimality_fun``: clip(x − (Qx + c), l, u) − x (the projected-gradient
        residual, unit step; Q symmetrized), zero exactly at the solutions as the D⁻¹-scaled
        fixed point of :meth:`optimality` is; ``l2_optimality_error`` is its norm, as JAXopt's."""
        return _box_residual(params, *args, **kwargs)

    def optimality(self):
        """The condition that the solution is differentiated through: x = T(x, (Q, c), (l, u)), with
        T(x) = clip(x − D⁻¹(Qx + c), l, u) and D = diag(Q) (Q symmetrized).

        Returns:
          ``("fixed_point", T)``.
        """
        return "fixed_point", _box_fixed_point
