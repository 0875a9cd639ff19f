"""SciPy's solvers, made differentiable, jittable and vmappable.

Each wrapper runs a ``scipy.optimize`` solver on the host, outside XLA, through
``jax.pure_callback``, and attaches the derivative of its solution by the implicit function theorem
(:func:`implicitdiff.custom_root` / :func:`implicitdiff.custom_fixed_point`) on the optimality
condition of the problem it solves, taken from :mod:`implicitdiff.optimality`:

========================  ====================================  ================================
wrapper                   host solver                           condition
========================  ====================================  ================================
``ScipyMinimize``         ``scipy.optimize.minimize``           ``stationary(fun)``
``ScipyBoundedMinimize``  ``scipy.optimize.minimize``, bounds   ``projected_gradient(fun, box)``
``ScipyRootFinding``      ``scipy.optimize.root``               ``("root", optimality_fun)``
``ScipyLeastSquares``     ``scipy.optimize.least_squares``      ``least_squares(residual_fun)``
                                                                or ``stationary(cost)``
``ScipyBoundedLeas…``     ``scipy.optimize.least_squares``,     ``projected_gradient(cost, box)``
                          bounds
========================  ====================================  ================================

The first two are defined here, the last three (``ScipyBoundedLeastSquares`` in full) in
:mod:`implicitdiff.solvers.scipy_root`; ``cost`` is SciPy's least-squares cost
½·f_scale²·Σρ(rᵢ²/f_scale²) for its robust loss ρ.

``run`` works under ``jax.jit``, ``jax.vmap`` and ``jax.grad`` (see
:mod:`implicitdiff.solvers._host_call`); :class:`implicitdiff.solvers.host.HostSolver` wraps any
other host solver given its optimality condition.

Inside the callback, SciPy receives float vectors (the pytree ``params`` flattened by
``jax.flatten_util.ravel_pytree``, cast to ``dtype``, float64 by default) and calls back
functions compiled once per problem shape: ``jax.value_and_grad(fun)`` (and a Hessian-vector
product, a Hessian or a Jacobian where the method uses one). These nested JAX calls run on the CPU
backend, whatever the default device, so that the host callback never waits on the device that
is running the program that called it.

The state is computed in JAX at the returned solution: ``error`` is the norm of the optimality
residual of the wrapper's condition, ``converged`` is SciPy's ``success`` and a finite error
below ``error_tol``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from implicitdiff import _loop, optimality, tree
from implicitdiff import _projection_ops as projections
from implicitdiff._args import ArgsSplit
from implicitdiff._typing import PyTree
from implicitdiff.solvers._host_call import (
    INFO_SHAPES,
    HostWrapper,
    callback_args,
    flat_params,
    on_cpu,
    shape_key,
)
from implicitdiff.solvers._objective import Objective, Stationary, check_objective_options
from implicitdiff.solvers._scipy_common import (
    BOUNDED_METHODS,
    GRADIENT_FREE,
    HESS_INV_METHODS,
    MINIMIZE_METHODS,
    USES_HESS,
    USES_HESSP,
    BoxBounds,
    ScipyState,
    box_error,
    check_fields,
    check_maxiter,
    dense_hess_inv,
    flat_bound,
    import_scipy_optimize,
    nan_unless_finite,
    result_fields,
    solution_state,
)

__all__ = [
    "ScipyBoundedMinimize",
    "ScipyMinimize",
    "ScipyState",
]

# ---------------------------------------------------------------------------------------------
# scipy.optimize.minimize.


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ScipyMinimize(Stationary, HostWrapper):
    """min_x fun(x, *args) by ``scipy.optimize.minimize``, differentiable, jittable, vmappable.

    ``run(init_params, *args, **kwargs)`` calls ``scipy.optimize.minimize(…, method, tol,
    options)`` on the host (through ``jax.pure_callback``) on the flattened params, with
    ``jac=True`` and a compiled ``jax.value_and_grad(fun)`` (gradient-free methods get the value
    only; newton-cg, trust-ncg, trust-krylov and trust-constr also get a compiled Hessian-vector
    product ``hessp``, dogleg and trust-exact a compiled Hessian ``hess``). The solution is
    differentiated through the stationarity condition ∇₁fun(x, *args) = 0
    (:func:`implicitdiff.optimality.stationary`), so it must be a (local) minimum with an
    invertible Hessian. SciPy stops by its own method-specific criteria (``tol`` sets them);
    ``state.error`` = ‖∇₁fun(x, *args)‖ is then computed in JAX.

    Under ``jax.vmap`` the batch is solved sequentially (``vmap_method="sequential"``).

    Attributes:
      fun: the objective fun(x, *args, **kwargs), a scalar; x a pytree of floating arrays.
      method: a method of ``scipy.optimize.minimize`` (default "L-BFGS-B"), or a callable.
        As in JAXopt, ``method`` and ``dtype`` are the only positional arguments of the SciPy
        wrappers: their function (``fun``, ``optimality_fun``, ``residual_fun``) and every
        other option are passed by keyword.
      tol: SciPy's ``tol`` (default 1e-10: the derivative's error is proportional to the
        solution's, so solve tightly). For L-BFGS-B, SciPy makes it both ``gtol`` and ``ftol``;
        as ``ftol`` (stop when f decreases by less than ftol·max(|f|, 1) in a step) it leaves
        ‖∇f‖ ≈ √(tol·|f|), so the wrapper passes ``ftol = tol / 100`` unless ``options``
        sets it. On badly scaled problems L-BFGS-B still stops early (``state.converged``
        False with ``success``): tighten ``options`` or use "BFGS" or a second-order method.
      options: SciPy's ``options`` dict (e.g. ``{"maxiter": 1000}``), or None.
      dtype: the floating dtype of the vectors SciPy works on (default float64, which SciPy's
        Fortran methods such as L-BFGS-B need); the solution is cast back to the params' dtype.
      error_tol: ``state.converged`` requires ``state.error`` ≤ error_tol (default 1e-6), as well
        as SciPy's ``success``.
      callback: called on the host after each SciPy iteration as ``callback(xk)``, with xk the
        current iterate as a pytree like the params (JAX arrays on the CPU), as in JAXopt; its
        return value is ignored. Under ``jax.vmap`` it is called for each problem in turn.
      maxiter: SciPy's ``options["maxiter"]`` (default 500, JAXopt's), the most iterations of
        the method. An ``options["maxiter"]`` is used when ``maxiter`` is left at 500 (JAXopt
        raises a ValueError); a different ``maxiter`` too is a ValueError.
      value_and_grad: True if ``fun`` returns ``(value, grad)`` (JAXopt's option): SciPy and the
        optimality condition ∇₁f = 0 use that gradient (a JAX function of x and the arguments,
        differentiated for Hessian products and for the implicit derivative).
      has_aux: True if ``fun`` returns ``(value, aux)`` (``((value, aux), grad)`` with
        ``value_and_grad``); ``state.aux`` is aux at the solution (JAXopt drops it). It carries
        no derivative, as every state.
      implicit_diff, solve, jit: see ``run``; ``implicit_diff=False`` gives a result that
        cannot be differentiated.

    ``state.hess_inv`` is SciPy's approximation of the inverse Hessian at the solution, for
    "BFGS" (SciPy's ``hess_inv`` matrix) and "L-BFGS-B" (SciPy's ``LbfgsInvHessProduct``,
    materialized as a dense n × n matrix, n the number of scalar parameters), and None for the
    other methods.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.scipy import ScipyMinimize
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = ScipyMinimize(fun=f).run(jnp.zeros(3), 1.0)  # w = 1 / (1 + lam)
    """

    _evaluates_user_function_on_host = True  # (closures: HostWrapper._run)

    _solution_name = "sol"  # JAXopt's optimality_fun(sol, ...)

    fun: Callable | None = None
    method: str | Callable = dataclasses.field(default="L-BFGS-B", kw_only=False)
    tol: float = 1e-10
    options: Mapping | None = None
    dtype: Any = dataclasses.field(default=None, kw_only=False)
    error_tol: float = 1e-6
    callback: Callable | None = None
    maxiter: int = 500
    value_and_grad: bool = False
    has_aux: bool = False

    def __post_init__(self):
        super().__post_init__()
        owner = check_fields(self, self._methods(), allow_callable=True)
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"{owner}: callback must be callable or None, got {self.callback!r}")
        check_objective_options(owner, self.value_and_grad, self.has_aux)
        check_maxiter(self, owner)
        object.__setattr__(
            self, "_objective", Objective(self.fun, self.value_and_grad, self.has_aux)
        )
        import_scipy_optimize()

    def _returns_hess_inv(self) -> bool:
        """Whether SciPy's method returns an inverse Hessian (BFGS and L-BFGS-B do)."""
        return isinstance(self.method, str) and self.method.lower() in HESS_INV_METHODS

    @staticmethod
    def _methods() -> tuple[str, ...]:
        return MINIMIZE_METHODS

    def _build_host(self, key: tuple, unravel: Callable, param_dtype: Any) -> Callable:
        objective = self._objective

        def flat_fun(x, arrays):
            a, k = ArgsSplit.merge(key, arrays)
            return objective.value(unravel(x), *a, **k)

        def flat_value_and_grad(x, arrays):
            a, k = ArgsSplit.merge(key, arrays)
            value, grad, _ = objective.evaluate(unravel(x), *a, **k)
            return value, ravel_pytree(grad)[0]

        def flat_grad(x, arrays):
            return flat_value_and_grad(x, arrays)[1]

        method = self.method.lower() if isinstance(self.method, str) else None
        value_and_grad = jax.jit(flat_value_and_grad)
        value = jax.jit(flat_fun)
        hessp = jax.jit(lambda x, arrays, v: jax.jvp(lambda y: flat_grad(y, arrays), (x,), (v,))[1])
        hess = jax.jit(jax.jacfwd(flat_grad))
        host_dtype = np.dtype(self.dtype or np.float64)
        scipy_optimize = import_scipy_optimize()
        scipy_method, tol = self.method, self.tol
        options = dict(self.options) if self.options is not None else {}
        options.setdefault("maxiter", self.maxiter)
        if method == "l-bfgs-b":  # SciPy's ftol = tol stops with ‖∇f‖ ≈ √(tol·|f|)
            options.setdefault("ftol", 1e-2 * tol)
        user_callback = self.callback
        wants_hess_inv = self._returns_hess_inv()

        def host(x0, arrays, lower, upper):
            arrays = on_cpu(list(arrays))

            def to_jax(x):
                return on_cpu(np.asarray(x, param_dtype))

            def host_value_and_grad(x):
                v, g = value_and_grad(to_jax(x), arrays)
                return float(v), np.asarray(g, host_dtype)

            extra: dict = {}
            if method in GRADIENT_FREE:
                objective = lambda x: float(value(to_jax(x), arrays))  # noqa: E731
            else:
                objective, extra["jac"] = host_value_and_grad, True
            if method in USES_HESSP:
                extra["hessp"] = lambda x, p: np.asarray(
                    hessp(to_jax(x), arrays, to_jax(p)), host_dtype
                )
            if method in USES_HESS:
                extra["hess"] = lambda x: np.asarray(hess(to_jax(x), arrays), host_dtype)
            if user_callback is not None:

                def scipy_callback(xk, *_):
                    user_callback(unravel(to_jax(xk)))

                extra["callback"] = scipy_callback
            n = np.size(x0)
            if lower is not None and np.any(~(np.asarray(lower) <= np.asarray(upper))):
                # An empty (or NaN) box reaching the host traced: no solve, a failed result.
                nan = np.full(np.shape(x0), np.nan, param_dtype)
                hess_nan = np.full((n, n) if wants_hess_inv else (0, 0), np.nan, param_dtype)
                return nan, np.int32(0), np.int32(-1), np.bool_(False), hess_nan
            if lower is not None:
                extra["bounds"] = scipy_optimize.Bounds(
                    np.asarray(lower, host_dtype), np.asarray(upper, host_dtype)
                )
            result = scipy_optimize.minimize(
                objective,
                np.asarray(x0, host_dtype),
                method=scipy_method,
                tol=tol,
                options=dict(options),
                **extra,
            )
            x = np.asarray(result.x, param_dtype).reshape(np.shape(x0))
            return (
                x,
                *result_fields(result),
                dense_hess_inv(result, n, wants_hess_inv, param_dtype),
            )

        return host

    def _minimize(self, init_params, bounds, args, kwargs):
        """(params, iter_num, status, success): the host solve, as traced JAX values."""
        owner = type(self).__name__
        flat0, unravel = flat_params(init_params, owner)
        key, arrays = callback_args(args, kwargs)
        host = self._host_function(
            ("minimize", key, shape_key(init_params)),
            lambda: self._build_host(key, unravel, flat0.dtype),
        )
        if bounds is None:
            operands = (flat0, arrays)

            def callback(x0, arrays):
                return host(x0, arrays, None, None)

        else:
            lower, upper = bounds
            operands = (
                flat0,
                arrays,
                flat_bound(lower, init_params, flat0.dtype),
                flat_bound(upper, init_params, flat0.dtype),
            )
            callback = host
        n = flat0.size
        hess_shape = (n, n) if self._returns_hess_inv() else (0, 0)
        x, iter_num, status, success, hess_inv = jax.pure_callback(
            callback,
            (
                jax.ShapeDtypeStruct(flat0.shape, flat0.dtype),
                *INFO_SHAPES,
                jax.ShapeDtypeStruct(hess_shape, flat0.dtype),
            ),
            *operands,
            vmap_method="sequential",
        )
        # The host solve is not differentiated: SciPy's inverse Hessian is a constant.
        hess_inv = jax.lax.stop_gradient(hess_inv) if self._returns_hess_inv() else None
        x = _loop.vary_like(x, operands)  # (as in _host_call.call_host)
        return unravel(x), iter_num, status, success, hess_inv

    def _state(
        self, params, error, value, aux, iter_num, status, success, hess_inv=None
    ) -> ScipyState:
        return solution_state(self, params, error, iter_num, status, success, value, aux, hess_inv)

    def _solution(self, init_params, /, *args, **kwargs):
        params, *info = self._minimize(init_params, None, args, kwargs)
        value, grad, aux = self._objective.evaluate(params, *args, **kwargs)
        error = tree.norm(grad)
        return nan_unless_finite(params, error), self._state(params, error, value, aux, *info)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ScipyBoundedMinimize(BoxBounds, ScipyMinimize):
    """min_x fun(x, *args) s.t. lower ≤ x ≤ upper, by ``scipy.optimize.minimize`` with bounds.

    ``run(init_params, bounds, *args, **kwargs)`` with ``bounds = (lower, upper)``, each a pytree
    like ``init_params`` or a scalar (or array) broadcast to every leaf; ±inf leaves a side
    free. SciPy runs as in :class:`ScipyMinimize`, with ``scipy.optimize.Bounds(lower, upper)``.
    The solution is differentiated (with respect to ``bounds`` and ``args``) through the
    projected-gradient fixed point x = box(x − ∇₁fun(x, *args), bounds)
    (:func:`implicitdiff.optimality.projected_gradient` with :func:`implicitdiff.projections.box`),
    which needs strict complementarity (∇f ≠ 0 on the active bounds) and a Hessian invertible on
    the free coordinates. ``state.error`` = ‖box(x − ∇₁fun(x), bounds) − x‖, the norm of the
    projected gradient.

    Attributes:
      fun, method, tol, options, dtype, error_tol, implicit_diff, solve, jit: as for
        :class:`ScipyMinimize`; ``method`` must accept bounds (default "L-BFGS-B"; also
        Nelder-Mead, Powell, TNC, COBYLA, COBYQA, SLSQP, trust-constr).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.scipy import ScipyBoundedMinimize
      >>> f = lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)  # NNLS
      >>> X, y = jnp.eye(3), jnp.array([1.0, -1.0, 2.0])
      >>> w, state = ScipyBoundedMinimize(fun=f).run(jnp.zeros(3), (0.0, jnp.inf), X, y)
    """

    @staticmethod
    def _methods() -> tuple[str, ...]:
        return BOUNDED_METHODS

    _run_arguments = ("bounds",)  # run(init_params, bounds, *args, **kwargs)

    def optimality(self) -> tuple[str, Callable]:
        """The condition that differentiates the solution: x = P(x − ∇₁fun(x, *args), bounds).

        P is the projection onto the box (:func:`implicitdiff.projections.box`).

        Returns:
          ``("fixed_point", optimality.projected_gradient(fun, projections.box))`` (with
            ``value_and_grad``, the same map on the gradient that ``fun`` returns).
        """
        if self.value_and_grad:
            return "fixed_point", self._objective.proximal_gradient(_box_prox, 1.0)
        return "fixed_point", optimality.projected_gradient(
            self._objective.scalar(), projections.box
        )

    def run(self, init_params: PyTree, bounds: Any, *args, **kwargs):
        """Solve from ``init_params`` within ``bounds = (lower, upper)``.

        ``bounds`` may be given by keyword (it is passed on positionally, where the optimality
        condition expects it).

        Args:
          init_params: the starting point, a pytree of floating arrays.
          bounds: ``(lower, upper)``: each a scalar, an array broadcasting to the params, or a
            pytree like them; ±inf for a free side (not None).
          *args: the arguments of ``fun`` after x (differentiable, as ``bounds``).
          **kwargs: its keyword arguments.

        Returns:
          ``OptStep(params, state)``: the solution and its ``ScipyState`` (error
            ‖P(x − ∇f(x)) − x‖).
        """
        return super().run(init_params, bounds, *args, **kwargs)

    def _solution(self, init_params, /, bounds, *args, **kwargs):
        self._check_bounds_pair(bounds)
        params, *info = self._minimize(init_params, bounds, args, kwargs)
        value, grad, aux = self._objective.evaluate(params, *args, **kwargs)
        error = box_error(params, grad, bounds)
        return nan_unless_finite(params, error), self._state(params, error, value, aux, *info)


def _box_prox(y, bounds, scaling):
    """The box projection read as a prox(y, hyperparams, scaling) (the scaling is unused)."""
    del scaling
    return projections.box(y, bounds)
