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

from implicitdiff import optimality, tree
from implicitdiff.solvers._host_call import (
    HostWrapper,
    all_finite,
    call_host,
    on_cpu,
)
from implicitdiff.solvers._scipy_common import (
    LEAST_SQUARES_METHODS,
    ROOT_METHODS,
    ROOT_USES_JAC,
    ScipyState,
    check_fields,
    flat_output_fun,
    import_scipy_optimize,
    result_fields,
)

__all__ = ["ScipyLeastSquares", "ScipyRootFinding"]

# ---------------------------------------------------------------------------------------------
# scipy.optimize.root and scipy.optimize.least_squares.


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
      tol, options, dtype, error_tol, implicit_diff, solve, jit: as for
        :class:`ScipyMinimize`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.scipy_root import ScipyRootFinding
      >>> F = lambda x, a: x**3 - a  # the cube root of a
      >>> x, state = ScipyRootFinding(optimality_fun=F).run(jnp.ones(2), jnp.array([8.0, 27.0]))
    """

    _user_function = "optimality_fun"

    optimality_fun: Callable | None = None
    method: str = dataclasses.field(default="hybr", kw_only=False)
    tol: float = 1e-10
    options: Mapping | None = None
    dtype: Any = dataclasses.field(default=None, kw_only=False)
    error_tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        check_fields(self, ROOT_METHODS, allow_callable=False)
        import_scipy_optimize()

    def optimality(self) -> tuple[str, Callable]:
        """The condition that the solution is differentiated through: optimality_fun(x, *args) = 0.

        Returns:
          ``("root", optimality_fun)``.
        """
        return "root", self.optimality_fun

    def _build_host(self, key: tuple, unravel: Callable, param_dtype: Any) -> Callable:
        flat_fun = flat_output_fun(self.optimality_fun, key, unravel)
        value, jacobian = jax.jit(flat_fun), jax.jit(jax.jacfwd(flat_fun))
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
        residual = self.optimality_fun(params, *args, **kwargs)
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
        )
        return params, state


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ScipyLeastSquares(HostWrapper):
    """min_x ½‖r(x, *args)‖² by ``scipy.optimize.least_squares``, differentiable and jittable.

    ``run(init_params, *args, **kwargs)`` calls ``scipy.optimize.least_squares(…, method,
    ftol=tol, xtol=tol, gtol=tol, **options)`` on the host on the flattened params, with the
    flattened residual r and its Jacobian (``jax.jacfwd``), both compiled. The solution is
    differentiated through the stationarity of ½‖r‖², ∂₁r(x)ᵀ r(x) = 0
    (:func:`implicitdiff.optimality.least_squares`), which needs JᵀJ + Σ rₖ∇²rₖ invertible.
    ``state.error`` = ‖∂₁r(x)ᵀ r(x)‖; ``state.value`` = ½‖r(x)‖²; ``state.iter_num`` is
    SciPy's ``nfev``.

    Attributes:
      residual_fun: r(x, *args, **kwargs), a pytree of residuals (at least as many entries as x
        for method "lm").
      method: "trf" (default), "dogbox" or "lm".
      tol: SciPy's ``ftol``, ``xtol`` and ``gtol`` (default 1e-12: SciPy scales its ``gtol``
        test, and 1e-10 can leave ‖Jᵀr‖ ≈ 1e-8).
      options: more keyword arguments of ``least_squares`` (e.g. ``{"max_nfev": 200,
        "x_scale": "jac"}``), or None. Robust losses and bounds change the problem, and its
        optimality condition: ``loss`` other than "linear", ``f_scale`` and ``bounds`` are
        rejected.
      dtype, error_tol, implicit_diff, solve, jit: as for :class:`ScipyMinimize`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.scipy_root import ScipyLeastSquares
      >>> r = lambda p, t, y: p[0] * jnp.exp(p[1] * t) - y  # an exponential fit
      >>> t = jnp.linspace(0.0, 1.0, 5)
      >>> p, state = ScipyLeastSquares(residual_fun=r).run(jnp.ones(2), t, 2.0 * jnp.exp(-t))
    """

    _user_function = "residual_fun"

    residual_fun: Callable | None = None
    method: str = dataclasses.field(default="trf", kw_only=False)
    tol: float = 1e-12
    options: Mapping | None = None
    dtype: Any = dataclasses.field(default=None, kw_only=False)
    error_tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        owner = check_fields(self, LEAST_SQUARES_METHODS, allow_callable=False)
        options = self.options or {}
        bad = [
            name for name in ("bounds", "f_scale", "fun", "x0", "jac", "method") if name in options
        ]
        if options.get("loss", "linear") != "linear":
            bad.append("loss")
        if bad:
            raise ValueError(
                f"{owner}: options {bad} are not supported: the solution is differentiated as "
                "the unconstrained minimum of ½‖r‖² (no bounds, loss='linear'); fun, x0, jac and "
                "method are set by the wrapper"
            )
        import_scipy_optimize()

    def optimality(self) -> tuple[str, Callable]:
        """The condition that differentiates the solution: ∂₁r(x, *args)ᵀ r(x, *args) = 0.

        Returns:
          ``("root", optimality.least_squares(residual_fun))``.
        """
        return "root", optimality.least_squares(self.residual_fun)

    def _build_host(self, key: tuple, unravel: Callable, param_dtype: Any) -> Callable:
        flat_fun = flat_output_fun(self.residual_fun, key, unravel)
        value, jacobian = jax.jit(flat_fun), jax.jit(jax.jacfwd(flat_fun))
        host_dtype = np.dtype(self.dtype or np.float64)
        scipy_optimize = import_scipy_optimize()
        method, tol = self.method, self.tol
        options = dict(self.options) if self.options is not None else {}

        def host(x0, arrays):
            arrays = on_cpu(list(arrays))

            def to_jax(x):
                return on_cpu(np.asarray(x, param_dtype))

            result = scipy_optimize.least_squares(
                lambda x: np.asarray(value(to_jax(x), arrays), host_dtype),
                np.asarray(x0, host_dtype),
                jac=lambda x: np.atleast_2d(np.asarray(jacobian(to_jax(x), arrays), host_dtype)),
                method=method,
                **{"ftol": tol, "xtol": tol, "gtol": tol, **options},
            )
            x = np.asarray(result.x, param_dtype).reshape(np.shape(x0))
            return (x, *result_fields(result, count="nfev"))

        return host

    def _solution(self, init_params, /, *args, **kwargs):
        params, iter_num, status, success = call_host(
            self, "least_squares", init_params, args, kwargs
        )
        dtype = tree.dtype(params)
        residuals, vjp = jax.vjp(lambda p: self.residual_fun(p, *args, **kwargs), params)
        error = tree.norm(vjp(residuals)[0]).astype(dtype)
        converged = success & all_finite(params) & jnp.isfinite(error) & (error <= self.error_tol)
        state = ScipyState(
            iter_num=iter_num,
            error=error,
            converged=converged,
            status=status,
            value=(0.5 * tree.vdot(residuals, residuals)).astype(dtype),
        )
        return params, state
