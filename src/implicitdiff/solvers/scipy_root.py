"""SciPy's root finding and nonlinear least squares, made differentiable, jittable and
vmappable: ScipyRootFinding (``scipy.optimize.root``) and ScipyLeastSquares
(``scipy.optimize.least_squares``).

Each runs on the host through ``jax.pure_callback`` and is differentiated by the implicit
function theorem on its optimality condition, as the minimization wrappers of
:mod:`implicitdiff.solvers.scipy` (whose docstring describes the shared machinery: flattened
float vectors, functions compiled once per problem shape on the CPU backend, the state computed
in JAX at the returned solution).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _loop, optimality, tree
from implicitdiff import _projection_ops as projections
from implicitdiff._typing import PyTree
from implicitdiff.solvers._host_call import (
    INFO_SHAPES,
    HostWrapper,
    all_finite,
    call_host,
    callback_args,
    flat_params,
    on_cpu,
    shape_key,
)
from implicitdiff.solvers._objective import WithAux
from implicitdiff.solvers._scipy_common import (
    BOUNDED_LEAST_SQUARES_METHODS,
    LEAST_SQUARES_METHODS,
    ROOT_METHODS,
    ROOT_USES_JAC,
    BoxBounds,
    ScipyState,
    box_error,
    check_fields,
    check_least_squares_options,
    flat_bound,
    flat_output_fun,
    import_scipy_optimize,
    nan_unless_finite,
    result_fields,
    robust_cost,
    solution_state,
)

__all__ = ["ScipyBoundedLeastSquares", "ScipyLeastSquares", "ScipyRootFinding"]

# ---------------------------------------------------------------------------------------------
# scipy.optimize.root and scipy.optimize.least_squares.


def _jacobian(fun: Callable, use_jacrev: bool) -> Callable:
    """The Jacobian of the flattened function handed to SciPy: reverse mode (``jax.jacrev``,
    one pass per output) if ``use_jacrev``, forward mode (``jax.jacfwd``, one per input) else;
    the same matrix up to rounding."""
    return jax.jacrev(fun) if use_jacrev else jax.jacfwd(fun)


def _setup_user_function(solver: Any, owner: str) -> None:
    """Checks ``has_aux`` / ``use_jacrev`` and keeps the function's value part as ``_value_fun``
    (what SciPy solves and the condition uses) and its aux reader as ``_with_aux``."""
    if not isinstance(solver.use_jacrev, bool):
        raise TypeError(
            f"{owner}: use_jacrev must be a bool (True: jax.jacrev, False: jax.jacfwd), got "
            f"{solver.use_jacrev!r}"
        )
    name = solver._user_function
    with_aux = WithAux(getattr(solver, name), solver.has_aux, owner, name)
    object.__setattr__(solver, "_with_aux", with_aux)
    object.__setattr__(solver, "_value_fun", with_aux.value_fun())


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ScipyRootFinding(HostWrapper):
    """A root of F(x, *args) = 0 by ``scipy.optimize.root``, differentiable, jittable, vmappable.

    ``run(init_params, *args, **kwargs)`` calls ``scipy.optimize.root(…, method, tol, options)``
    on the host on the flattened params, with a compiled F and, for hybr and lm, its compiled
    Jacobian (``jax.jacfwd``). The root is differentiated through F itself (``("root",
    optimality_fun)``): ∂x* = −[∂₁F]⁻¹∂₂F, which needs ∂₁F invertible at the root.
    ``state.error`` = ‖F(x, *args)‖, computed in JAX; ``state.value`` = ½‖F(x)‖².
    ``state.converged`` is ``error ≤ error_tol`` at a finite x, whatever SciPy's own success flag
    (which can be False at a residual of 1e-16, "no further improvement"); ``state.status`` keeps
    SciPy's code.

    Attributes:
      optimality_fun: F(x, *args, **kwargs), a pytree with the structure of x.
      method: a method of ``scipy.optimize.root`` (default "hybr").
      has_aux: True if ``optimality_fun`` returns ``(F, aux)``: SciPy and the condition use F,
        ``state.aux`` is aux at the root (JAXopt 0.8.5 recurses forever on this option).
      use_jacrev: the Jacobian given to hybr and lm by ``jax.jacrev`` (True, JAXopt's default)
        or ``jax.jacfwd`` (False).
      tol, options, dtype, error_tol, implicit_diff, solve, jit: as for
        :class:`ScipyMinimize`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.scipy_root import ScipyRootFinding
      >>> F = lambda x, a: x**3 - a  # the cube root of a
      >>> x, state = ScipyRootFinding(optimality_fun=F).run(jnp.ones(2), jnp.array([8.0, 27.0]))
    """

    _evaluates_user_function_on_host = True  # (closures: HostWrapper._run)

    _user_function = "optimality_fun"

    optimality_fun: Callable | None = None
    method: str = dataclasses.field(default="hybr", kw_only=False)
    tol: float = 1e-10
    options: Mapping | None = None
    dtype: Any = dataclasses.field(default=None, kw_only=False)
    error_tol: float = 1e-6
    has_aux: bool = False
    use_jacrev: bool = True

    def __post_init__(self):
        super().__post_init__()
        owner = check_fields(self, ROOT_METHODS, allow_callable=False)
        _setup_user_function(self, owner)
        import_scipy_optimize()

    def optimality(self) -> tuple[str, Callable]:
        """The condition that the solution is differentiated through: optimality_fun(x, *args) = 0.

        Returns:
          ``("root", optimality_fun)`` (its value part with ``has_aux``).
        """
        return "root", self._value_fun

    def _build_host(self, key: tuple, unravel: Callable, param_dtype: Any) -> Callable:
        flat_fun = flat_output_fun(self._value_fun, key, unravel)
        value = jax.jit(flat_fun)
        jacobian = jax.jit(_jacobian(flat_fun, self.use_jacrev))
        host_dtype = np.dtype(self.dtype or np.float64)
        scipy_optimize = import_scipy_optimize()
        method = self.method
        uses_jac = method.lower() in ROOT_USES_JAC
        tol = self.tol
        options = dict(self.options) if self.options is not None else None

        def host(x0, arrays):
            arrays = on_cpu(list(arrays))

            def to_jax(x):
                return on_cpu(np.asarray(x, param_dtype))

            extra: dict = {}
            if uses_jac:
                extra["jac"] = lambda x: np.asarray(jacobian(to_jax(x), arrays), host_dtype)
            result = scipy_optimize.root(
                lambda x: np.asarray(value(to_jax(x), arrays), host_dtype),
                np.asarray(x0, host_dtype),
                method=method,
                tol=tol,
                options=None if options is None else dict(options),
                **extra,
            )
            x = np.asarray(result.x, param_dtype).reshape(np.shape(x0))
            return (x, *result_fields(result))

        return host

    def _solution(self, init_params, /, *args, **kwargs):
        params, iter_num, status, success = call_host(self, "root", init_params, args, kwargs)
        residual = self._value_fun(params, *args, **kwargs)
        error = tree.norm(residual).astype(tree.dtype(params))
        # A root is a root: ‖F(x)‖ ≤ error_tol decides, whatever SciPy's own flag (hybr says
        # "no further improvement", success False, at a residual of 1e-16).
        del success
        converged = all_finite(params) & jnp.isfinite(error) & (error <= self.error_tol)
        state = ScipyState(
            iter_num=iter_num,
            error=error,
            converged=converged,
            status=status,
            value=0.5 * error**2,
            aux=self._with_aux.aux(params, *args, **kwargs),
        )
        return nan_unless_finite(params, error), state


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ScipyLeastSquares(HostWrapper):
    """min_x C(x) = ½·f_scale²·Σᵢ ρ(rᵢ(x, *args)²/f_scale²) by ``scipy.optimize.least_squares``.

    ``run(init_params, *args, **kwargs)`` calls ``scipy.optimize.least_squares(…, method, loss,
    ftol=tol, xtol=tol, gtol=tol, **options)`` on the host on the flattened params, with the
    flattened residual r and its Jacobian (``jax.jacfwd``), both compiled. ρ is SciPy's loss:
    linear ρ(s) = s (C = ½‖r‖²), soft_l1 2(√(1+s) − 1), huber s if s ≤ 1 else 2√s − 1,
    cauchy log(1 + s), arctan arctan(s). The solution is differentiated through the
    stationarity of C: ∂₁r(x)ᵀ r(x) = 0 for the linear loss
    (:func:`implicitdiff.optimality.least_squares`), ∇₁C(x) = Σᵢ ρ'(rᵢ²/f_scale²) rᵢ ∇rᵢ = 0
    otherwise (:func:`implicitdiff.optimality.stationary` of C); it needs ∇²₁C invertible.
    ``state.error`` = ‖∇₁C(x)‖; ``state.value`` = C(x) (SciPy's ``cost``);
    ``state.iter_num`` is SciPy's ``nfev``.

    Attributes:
      residual_fun: r(x, *args, **kwargs), a pytree of residuals (at least as many entries as x
        for method "lm").
      method: "trf" (default), "dogbox" or "lm" (linear loss only).
      tol: SciPy's ``ftol``, ``xtol`` and ``gtol`` (default 1e-12: SciPy scales its ``gtol``
        test, and 1e-10 can leave ‖Jᵀr‖ ≈ 1e-8).
      options: more keyword arguments of ``least_squares`` (e.g. ``{"max_nfev": 200,
        "x_scale": "jac", "f_scale": 0.5}``), or None. ``f_scale`` (default 1), the soft
        margin between inlier and outlier residuals, enters the cost C and so the derivative.
        ``bounds``: use :class:`ScipyBoundedLeastSquares`.
      loss: "linear" (default), "soft_l1", "huber", "cauchy" or "arctan", SciPy's names.
      fun: JAXopt's name of ``residual_fun``, accepted for it (giving both is a TypeError);
        after construction the function is ``residual_fun`` and ``fun`` is None.
      has_aux: True if the residual function returns ``(r, aux)``: SciPy and the condition use
        r, ``state.aux`` is aux at the solution (JAXopt 0.8.5 recurses forever on this option).
      use_jacrev: the Jacobian given to SciPy by ``jax.jacrev`` (True, JAXopt's default) or
        ``jax.jacfwd`` (False).
      dtype, error_tol, implicit_diff, solve, jit: as for :class:`ScipyMinimize`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.scipy_root import ScipyLeastSquares
      >>> r = lambda p, t, y: p[0] * jnp.exp(p[1] * t) - y  # an exponential fit
      >>> t = jnp.linspace(0.0, 1.0, 5)
      >>> p, state = ScipyLeastSquares(residual_fun=r).run(jnp.ones(2), t, 2.0 * jnp.exp(-t))
    """

    _evaluates_user_function_on_host = True  # (closures: HostWrapper._run)

    _user_function = "residual_fun"
    _solution_name = "sol"  # JAXopt's optimality_fun(sol, ...)

    residual_fun: Callable | None = None
    method: str = dataclasses.field(default="trf", kw_only=False)
    tol: float = 1e-12
    options: Mapping | None = None
    dtype: Any = dataclasses.field(default=None, kw_only=False)
    error_tol: float = 1e-6
    loss: str = "linear"
    fun: Callable | None = None
    has_aux: bool = False
    use_jacrev: bool = True

    def _state_fields(self):
        """``state.value`` = C(x) (SciPy's cost) and ``state.aux`` (with ``has_aux``),
        functions of the solution (see ``DifferentiableRun``)."""
        with_aux = self._with_aux

        def fields(params, /, *args, **kwargs):
            return {
                "value": self._cost(params, *args, **kwargs),
                "aux": with_aux.aux(params, *args, **kwargs),
            }

        return ("value", "aux") if with_aux.has_aux else ("value",), fields

    def __post_init__(self):
        if self.fun is not None:  # JAXopt's name for the residual function
            if self.residual_fun is not None:
                raise TypeError(
                    f"{type(self).__name__}: pass the residual function once, as residual_fun= "
                    "or as JAXopt's fun=, not both"
                )
            object.__setattr__(self, "residual_fun", self.fun)
            object.__setattr__(self, "fun", None)
        super().__post_init__()
        owner = check_fields(self, self._methods(), allow_callable=False)
        f_scale = check_least_squares_options(self, owner)
        _setup_user_function(self, owner)
        object.__setattr__(self, "_cost", robust_cost(self._value_fun, self.loss, f_scale))
        import_scipy_optimize()

    @staticmethod
    def _methods() -> tuple[str, ...]:
        return LEAST_SQUARES_METHODS

    def optimality(self) -> tuple[str, Callable]:
        """The condition that differentiates the solution: ∇₁C(x, *args) = 0.

        Returns:
          ``("root", optimality.least_squares(residual_fun))`` (∂₁rᵀr = 0) for the linear
            loss, ``("root", optimality.stationary(C))`` for a robust one.
        """
        if self.loss == "linear":
            return "root", optimality.least_squares(self._value_fun)
        return "root", optimality.stationary(self._cost)

    def _build_host(self, key: tuple, unravel: Callable, param_dtype: Any) -> Callable:
        flat_fun = flat_output_fun(self._value_fun, key, unravel)
        value = jax.jit(flat_fun)
        jacobian = jax.jit(_jacobian(flat_fun, self.use_jacrev))
        host_dtype = np.dtype(self.dtype or np.float64)
        scipy_optimize = import_scipy_optimize()
        method, tol, loss = self.method, self.tol, self.loss
        options = dict(self.options) if self.options is not None else {}

        def host(x0, arrays, lower=None, upper=None):
            arrays = on_cpu(list(arrays))

            def to_jax(x):
                return on_cpu(np.asarray(x, param_dtype))

            extra: dict = {}
            if lower is not None:
                lower = np.asarray(lower, host_dtype)
                upper = np.asarray(upper, host_dtype)
                if np.any(~(lower < upper)):
                    # An empty or degenerate (or NaN) box reaching the host traced: SciPy needs
                    # lower < upper; no solve, a failed result.
                    nan = np.full(np.shape(x0), np.nan, param_dtype)
                    return nan, np.int32(0), np.int32(-1), np.bool_(False)
                extra["bounds"] = (lower, upper)
                # SciPy refuses an infeasible start; the wrapper starts from its projection.
                x0 = np.clip(np.asarray(x0, host_dtype), lower, upper)

            def residual(x):
                return np.asarray(value(to_jax(x), arrays), host_dtype)

            if not np.all(np.isfinite(residual(np.asarray(x0, host_dtype)))):
                # NaN data (or a start outside f's domain): SciPy raises, which would end a whole
                # vmap batch. No solve, a failed result (NaN x, status −1), as the other solvers.
                nan = np.full(np.shape(x0), np.nan, param_dtype)
                return nan, np.int32(0), np.int32(-1), np.bool_(False)
            result = scipy_optimize.least_squares(
                residual,
                np.asarray(x0, host_dtype),
                jac=lambda x: np.atleast_2d(np.asarray(jacobian(to_jax(x), arrays), host_dtype)),
                method=method,
                loss=loss,
                **{"ftol": tol, "xtol": tol, "gtol": tol, **options},
                **extra,
            )
            x = np.asarray(result.x, param_dtype).reshape(np.shape(x0))
            return (x, *result_fields(result, count="nfev"))

        return host

    def _state(self, params, error, iter_num, status, success, args, kwargs) -> ScipyState:
        value = jnp.asarray(self._cost(params, *args, **kwargs), tree.dtype(params))
        aux = self._with_aux.aux(params, *args, **kwargs)
        return solution_state(self, params, error, iter_num, status, success, value, aux)

    def _solution(self, init_params, /, *args, **kwargs):
        params, *info = call_host(self, "least_squares", init_params, args, kwargs)
        if self.loss == "linear":
            residuals, vjp = jax.vjp(lambda p: self._value_fun(p, *args, **kwargs), params)
            error = tree.norm(vjp(residuals)[0])
        else:
            error = tree.norm(jax.grad(self._cost)(params, *args, **kwargs))
        return nan_unless_finite(params, error), self._state(params, error, *info, args, kwargs)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ScipyBoundedLeastSquares(BoxBounds, ScipyLeastSquares):
    """min_x C(x, *args) s.t. lower ≤ x ≤ upper, by ``scipy.optimize.least_squares`` with bounds.

    C is :class:`ScipyLeastSquares`'s cost ½·f_scale²·Σᵢ ρ(rᵢ²/f_scale²).
    ``run(init_params, bounds, *args, **kwargs)`` with ``bounds = (lower, upper)``, each a
    pytree like ``init_params`` or a scalar (or array) broadcast to every leaf; ±inf leaves a
    side free; SciPy needs lower < upper everywhere. SciPy starts from ``init_params`` clipped
    into the box (JAXopt passes it as is, and SciPy refuses an infeasible start). The solution
    is differentiated (with respect to ``bounds`` and ``args``) through the projected-gradient
    fixed point x = box(x − ∇₁C(x, *args), bounds)
    (:func:`implicitdiff.optimality.projected_gradient` with :func:`implicitdiff.projections.box`):
    on an active bound the derivative with respect to ``args`` is 0 (and 1 with respect to that
    bound); it needs strict complementarity (∇C ≠ 0 on the active bounds) and ∇²C invertible on
    the free coordinates. ``state.error`` = ‖box(x − ∇₁C(x), bounds) − x‖.

    Attributes:
      residual_fun, tol, options, loss, dtype, error_tol, implicit_diff, solve, jit: as for
        :class:`ScipyLeastSquares`.
      method: "trf" (default) or "dogbox" (SciPy's "lm" takes no bounds).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.scipy_root import ScipyBoundedLeastSquares
      >>> r = lambda w, X, y: X @ w - y  # nonnegative least squares
      >>> X, y = jnp.eye(3), jnp.array([1.0, -1.0, 2.0])
      >>> w, state = ScipyBoundedLeastSquares(residual_fun=r).run(jnp.ones(3), (0.0, jnp.inf), X, y)
    """

    _run_arguments = ("bounds",)  # run(init_params, bounds, *args, **kwargs)

    @staticmethod
    def _methods() -> tuple[str, ...]:
        return BOUNDED_LEAST_SQUARES_METHODS

    def optimality(self) -> tuple[str, Callable]:
        """The condition that differentiates the solution: x = box(x − ∇₁C(x, *args), bounds).

        Returns:
          ``("fixed_point", optimality.projected_gradient(C, projections.box))``.
        """
        return "fixed_point", optimality.projected_gradient(self._cost, projections.box)

    def run(self, init_params: PyTree, bounds: Any, *args, **kwargs):
        """Solve from ``init_params`` (clipped into the box) within ``bounds = (lower, upper)``.

        Args:
          init_params: the starting point, a pytree of floating arrays.
          bounds: ``(lower, upper)``: each a scalar, an array broadcasting to the params, or a
            pytree like them; ±inf for a free side (not None).
          *args: the arguments of ``residual_fun`` after x (differentiable, as ``bounds``).
          **kwargs: its keyword arguments.

        Returns:
          ``OptStep(params, state)``: the solution and its ``ScipyState`` (error
            ‖box(x − ∇C(x)) − x‖).
        """
        return super().run(init_params, bounds, *args, **kwargs)

    def _solution(self, init_params, /, bounds, *args, **kwargs):
        owner = type(self).__name__
        self._check_bounds_pair(bounds)
        flat0, unravel = flat_params(init_params, owner)
        key, arrays = callback_args(args, kwargs)
        host = self._host_function(
            ("bounded_least_squares", key, shape_key(init_params)),
            lambda: self._build_host(key, unravel, flat0.dtype),
        )
        lower, upper = bounds
        x, *info = jax.pure_callback(
            host,
            (jax.ShapeDtypeStruct(flat0.shape, flat0.dtype), *INFO_SHAPES),
            flat0,
            arrays,
            flat_bound(lower, init_params, flat0.dtype),
            flat_bound(upper, init_params, flat0.dtype),
            vmap_method="sequential",
        )
        params = unravel(_loop.vary_like(x, (flat0, arrays, bounds)))  # as in call_host
        grad = jax.grad(self._cost)(params, *args, **kwargs)
        error = box_error(params, grad, bounds)
        return nan_unless_finite(params, error), self._state(params, error, *info, args, kwargs)
