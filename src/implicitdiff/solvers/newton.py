"""Newton's method for smooth minimization, matrix-free: Newton-CG with a line search."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, _linesearch, _loop, _summary, optimality, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._objective import scalar_valued

__all__ = ["Newton"]


class NewtonState(NamedTuple):
    """iter_num, error = ‖∇f(x)‖, converged, f(x), ∇f(x), the last step size, the damping μ of
    the next iteration, and whether the last step was along the Newton-CG direction (False: it
    fell back to −∇f)."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    value: jax.Array
    grad: PyTree
    stepsize: jax.Array
    damping: jax.Array
    newton_step: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)

    __repr__ = _summary.namedtuple_repr


def _truncated_cg(matvec: Callable, b: PyTree, rtol: jax.Array, maxiter: int):
    """An approximate solution of A d = b by CG from 0, stopped at negative curvature.

    Nocedal & Wright (2006), Algorithm 7.1: stop when ‖b − A d‖ ≤ rtol ‖b‖ or after ``maxiter``
    iterations; should a search direction p have pᵀAp ≤ 0 (A not positive definite along p),
    return the current iterate, or b itself if that happens at the first iteration (for
    b = −∇f, the gradient direction). Returns d and, as auxiliary data, the Rayleigh quotient
    pᵀAp / pᵀp of that direction (+inf if none was met). For a fixed exit, d is linear in b: it
    is the ``solve`` of a ``custom_linear_solve``. Zero b gives zero.
    """
    dtype = tree.dtype(b)
    tiny = math.sqrt(float(np.finfo(dtype).tiny))
    rr = tree.vdot(b, b)
    tol = jnp.asarray(rtol, dtype) * jnp.sqrt(rr)

    def cond(carry):
        k, _, _, _, rr, rayleigh = carry
        return jnp.isinf(rayleigh) & (k < maxiter) & (jnp.sqrt(rr) > tol)

    def body(carry):
        k, d, r, p, rr, _ = carry
        Ap = matvec(p)
        curvature = tree.vdot(p, Ap)
        pp = tree.vdot(p, p)
        negative = jnp.logical_not(curvature > tiny * pp)
        alpha = rr / jnp.where(negative, 1.0, curvature)
        new_d = tree.axpy(alpha, p, d)
        new_r = tree.axpy(-alpha, Ap, r)
        new_rr = tree.vdot(new_r, new_r)
        beta = new_rr / jnp.where(rr > 0, rr, 1.0)
        new_p = tree.axpy(beta, p, new_r)
        # At negative curvature keep d (b itself at the first iteration) and stop.
        d_out = tree.where(negative, tree.where(k == 0, b, d), new_d)
        rayleigh = jnp.where(negative, curvature / jnp.where(pp > 0, pp, 1.0), jnp.inf)
        return (
            k + 1,
            d_out,
            tree.where(negative, r, new_r),
            tree.where(negative, p, new_p),
            jnp.where(negative, rr, new_rr),
            rayleigh.astype(dtype),
        )

    init = (jnp.asarray(0), tree.zeros_like(b), b, b, rr, jnp.asarray(jnp.inf, dtype))
    _, d, _, _, _, rayleigh = _loop.while_loop(cond, body, init)
    return d, rayleigh


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Newton(IterativeSolver):
    """min_x fun(x, *args) by damped Newton, matrix-free: x ← x + η d, (∇²f(x) + μI) d ≈ −∇f(x).

    ``run(init_params, *args, **kwargs)``; the solution is differentiated through the
    stationarity condition ∇₁f(x, *args) = 0 (:func:`implicitdiff.optimality.stationary`).

    The direction d solves (∇²f(x) + μI) d = −∇f(x) by conjugate gradient on Hessian-vector
    products (``jax.jvp`` of ``jax.grad``, linearized once per iteration), never forming ∇²f:
    the line-search Newton-CG of Nocedal & Wright (2006, Algorithm 7.1). CG stops at the
    relative residual ``cg_tol`` (by default the forcing term min(0.5, √‖∇f‖), which gives
    superlinear convergence), after ``cg_maxiter`` products, or at the first direction p of
    non-positive curvature, returning its iterate so far (−∇f if it had none). If d is still
    not a descent direction (⟨∇f, d⟩ ≥ 0, or not finite), the step is along −∇f. η comes from
    Armijo backtracking from η = 1.

    The damping μ ≥ 0 (Levenberg's) starts at 0 and adapts: where CG met curvature κ = pᵀ(∇²f
    + μI)p / pᵀp ≤ 0, the next μ is 2(μ − κ) + ‖∇f‖ (enough to make the system positive definite
    along p); after a full step (η = 1) it shrinks to min(μ/4, ‖∇f‖); after a shortened one it
    doubles. Away from a minimum it turns Newton's steps towards gradient steps where the
    Hessian is indefinite; near one μ = O(‖∇f‖), and convergence is quadratic.

    The direction is a ``jax.lax.custom_linear_solve``, so unrolling (``implicit_diff=False``)
    differentiates it as the solution of its linear system, through Hessian-vector products of
    the objective, with η and μ constants: unrolled derivatives converge with the iterates.

    Attributes:
      fun: the objective f(x, *args, **kwargs), a scalar; twice differentiable.
      cg_tol: relative residual of the inner CG, ‖(∇²f + μI) d + ∇f‖ ≤ cg_tol ‖∇f‖; None
        (default) for the forcing term min(0.5, √‖∇f‖).
      cg_maxiter: the most Hessian-vector products per iteration; None (default) for
        max(n, 10), n the number of entries of x.
      maxls: the most backtracking trials per iteration (30).
      maxiter, tol: stop when ‖∇f(x)‖ ≤ tol (default 1e-6) or after maxiter (50) iterations.
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.newton import Newton
      >>> f = lambda w, X, y, lam: jnp.sum(jnp.logaddexp(0, -y * (X @ w))) + lam * w @ w
      >>> X, y = jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -1.0]]), jnp.array([1.0, -1.0, 1.0])
      >>> w, state = Newton(fun=f).run(jnp.zeros(2), X, y, 0.1)
    """

    _iterates_in_one_dtype = True  # (mixed float32/float64 params: see DifferentiableRun)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    maxiter: int = 50
    tol: float = 1e-6
    cg_tol: float | None = None
    cg_maxiter: int | None = None
    maxls: int = 30

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.fun):
            raise TypeError(f"Newton: fun must be callable, got {self.fun!r}")
        if self.cg_tol is not None and not (
            isinstance(self.cg_tol, (int, float)) and 0 < self.cg_tol < 1
        ):
            raise ValueError(f"Newton: cg_tol must be None or in (0, 1), got {self.cg_tol!r}")
        if self.cg_maxiter is not None and not (
            isinstance(self.cg_maxiter, int) and self.cg_maxiter >= 1
        ):
            raise ValueError(
                f"Newton: cg_maxiter must be None or a positive int, got {self.cg_maxiter!r}"
            )
        _checks.check_positive_int(self.maxls, "maxls", "Newton")
        object.__setattr__(self, "_scalar_fun", scalar_valued(self.fun))
        object.__setattr__(self, "_value_and_grad", jax.value_and_grad(self._scalar_fun))
        object.__setattr__(self, "_grad", jax.grad(self._scalar_fun))

    def _state_fields(self):
        """``state.value`` = f(x), a function of the solution (see ``DifferentiableRun``)."""
        return ("value",), lambda x, /, *a, **k: {
            "value": jnp.asarray(self._scalar_fun(x, *a, **k))
        }

    def init_state(self, init_params, /, *args, **kwargs) -> NewtonState:
        """The state at ``init_params``: f and ∇f evaluated there.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``NewtonState``: iter_num 0, error ‖∇f(x₀)‖, f(x₀), ∇f(x₀), step size 1, damping μ = 0.
        """
        value, grad = self._value_and_grad(init_params, *args, **kwargs)
        dtype = tree.dtype(init_params)
        return NewtonState(
            iter_num=jnp.asarray(0),
            error=jax.lax.stop_gradient(tree.norm(grad)).astype(dtype),
            converged=jnp.asarray(False),
            value=jnp.asarray(value),
            grad=grad,
            stepsize=jnp.asarray(1.0, dtype),
            damping=jnp.asarray(0.0, dtype),
            newton_step=jnp.asarray(True),
        )

    def update(self, params, state: NewtonState, /, *args, **kwargs) -> OptStep:
        """One damped Newton step x⁺ = x + ηd.

        d solves (∇²f(x) + μI) d = −∇f(x) by truncated CG on Hessian-vector products (−∇f(x) if it
        does not descend), η by Armijo backtracking from 1 (at most ``maxls`` halvings), and μ is
        updated as the class says.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the arguments of ``fun`` after x, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x⁺ and its state (f, ∇f and the error ‖∇f‖ at x⁺, η, the new
            μ, whether d was CG's direction).
        """
        dtype = state.stepsize.dtype
        grad = state.grad
        mu = state.damping
        cut_args, cut_kwargs = tree.stop_gradient((args, kwargs))

        def hessian_matvec(params, args, kwargs):
            _, hvp = jax.linearize(lambda x: self._grad(x, *args, **kwargs), params)
            return lambda v: tree.axpy(mu, v, hvp(v))

        gnorm = jax.lax.stop_gradient(tree.norm(grad)).astype(dtype)
        relative = (
            jnp.minimum(0.5, jnp.sqrt(gnorm)) if self.cg_tol is None else jnp.asarray(self.cg_tol)
        )
        relative = jax.lax.stop_gradient(relative)
        maxiter = self.cg_maxiter or max(tree.size(params), 10)

        def solve(matvec, b):
            return _truncated_cg(matvec, b, relative, maxiter)

        # CG runs on cut values; unrolling differentiates d as the solution of its linear
        # system (a custom_linear_solve that repeats the solve, with the same result).
        cut_params, cut_grad = tree.stop_gradient((params, grad))
        direction, rayleigh = solve(
            hessian_matvec(cut_params, cut_args, cut_kwargs), tree.neg(cut_grad)
        )
        if not self.implicit_diff:
            direction = jax.lax.custom_linear_solve(
                hessian_matvec(params, args, kwargs),
                tree.neg(grad),
                solve=lambda matvec, b: solve(matvec, b)[0],
                symmetric=True,
            )
        slope = jax.lax.stop_gradient(tree.vdot(grad, direction))
        descent = (slope < 0) & jnp.isfinite(slope)
        direction = tree.where(descent, direction, tree.neg(grad))
        eta = _linesearch.backtracking(
            lambda x: self._value_and_grad(x, *cut_args, **cut_kwargs),
            params,
            state.value,
            grad,
            direction,
            jnp.asarray(1.0, dtype),
            value_fun=lambda x: self._scalar_fun(x, *cut_args, **cut_kwargs),
            condition="armijo",
            decrease_factor=0.5,
            maxiter=self.maxls + 1,
            final_grad=False,
        ).stepsize.astype(dtype)
        params = tree.axpy(eta, direction, params)
        value, grad = self._value_and_grad(params, *args, **kwargs)
        new_gnorm = jax.lax.stop_gradient(tree.norm(grad)).astype(dtype)
        mu = jnp.where(
            jnp.isfinite(rayleigh),
            2 * (mu - rayleigh) + gnorm,
            jnp.where(eta >= 1, jnp.minimum(mu / 4, new_gnorm), 2 * mu),
        )
        mu = jnp.where(jnp.isfinite(mu), mu, state.damping)
        state = NewtonState(
            iter_num=state.iter_num + 1,
            error=new_gnorm.astype(state.error.dtype),
            converged=state.converged,
            value=value,
            grad=grad,
            stepsize=eta,
            damping=jax.lax.stop_gradient(mu).astype(dtype),
            newton_step=descent,
        )
        return OptStep(params, state)

    def optimality(self):
        """The condition that the solution is differentiated through: ∇₁fun(x, *args) = 0.

        Returns:
          ``("root", optimality.stationary(fun))``.
        """
        return "root", optimality.stationary(self._scalar_fun)
