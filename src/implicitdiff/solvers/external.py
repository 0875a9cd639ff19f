"""Host solvers (SciPy, scikit-learn, cvxpy, any Python code), made differentiable and jittable.

Each wrapper runs an existing solver on the host, outside XLA, through ``jax.pure_callback``,
and attaches the derivative of its solution by the implicit function theorem
(:func:`implicitdiff.custom_root` / :func:`implicitdiff.custom_fixed_point`) on the optimality
condition of the problem it solves, taken from :mod:`implicitdiff.optimality`:

========================  ====================================  ================================
wrapper                   host solver                           condition
========================  ====================================  ================================
``ScipyMinimize``         ``scipy.optimize.minimize``           ``stationary(fun)``
``ScipyBoundedMinimize``  ``scipy.optimize.minimize``, bounds   ``projected_gradient(fun, box)``
``ScipyRootFinding``      ``scipy.optimize.root``               ``("root", optimality_fun)``
``ScipyLeastSquares``     ``scipy.optimize.least_squares``      ``least_squares(residual_fun)``
``HostSolver``            any ``solve_fn(init_params, *args)``  the F or T you give
========================  ====================================  ================================

Conventions (JAXopt's): ``solver.run(init_params, *args, **kwargs)`` returns
``OptStep(params, state)``; the solution is differentiable with respect to every array in
``args``/``kwargs`` (not ``init_params``). Unlike JAXopt's SciPy wrappers, ``run`` works under
``jax.jit``, ``jax.vmap`` and their compositions with ``jax.grad``:

- **jit**: the host solve is a ``pure_callback`` inside the compiled program; ``run`` itself is
  compiled once per shape (``jit=True``, as for the iterative solvers).
- **vmap**: the callback is batched with ``vmap_method="sequential"``: a batch of problems is
  solved one problem after the other on the host (no parallelism, no batched host solve), each
  with its own SciPy call, and the results are stacked.
- **derivatives**: the host solver is never differentiated. The implicit derivative only
  evaluates the optimality condition (in JAX, on the accelerator if there is one) at the
  solution. With ``implicit_diff=False`` the result carries no derivative: differentiating it
  raises JAX's error that pure callbacks have no JVP.

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from implicitdiff import _checks, linear_solve, optimality, projections, tree
from implicitdiff.solvers._base import DifferentiableRun, _ArgsSplit, check_failure_policies

PyTree = Any

__all__ = [
    "HostSolver",
    "HostSolverState",
    "ScipyBoundedMinimize",
    "ScipyLeastSquares",
    "ScipyMinimize",
    "ScipyRootFinding",
    "ScipyState",
]

_MINIMIZE_METHODS = (
    "nelder-mead",
    "powell",
    "cg",
    "bfgs",
    "newton-cg",
    "l-bfgs-b",
    "tnc",
    "cobyla",
    "cobyqa",
    "slsqp",
    "trust-constr",
    "dogleg",
    "trust-ncg",
    "trust-exact",
    "trust-krylov",
)
_BOUNDED_METHODS = (
    "nelder-mead",
    "powell",
    "l-bfgs-b",
    "tnc",
    "cobyla",
    "cobyqa",
    "slsqp",
    "trust-constr",
)
_GRADIENT_FREE = ("nelder-mead", "powell", "cobyla", "cobyqa")
_USES_HESSP = ("newton-cg", "trust-ncg", "trust-krylov", "trust-constr")
_USES_HESS = ("dogleg", "trust-exact")
_ROOT_METHODS = (
    "hybr",
    "lm",
    "broyden1",
    "broyden2",
    "anderson",
    "linearmixing",
    "diagbroyden",
    "excitingmixing",
    "krylov",
    "df-sane",
)
_ROOT_USES_JAC = ("hybr", "lm")
_LEAST_SQUARES_METHODS = ("trf", "dogbox", "lm")


class ScipyState(NamedTuple):
    """The state of a SciPy wrapper at the solution x.

    Attributes:
      iter_num: SciPy's ``nit``; where the method reports none (``root``'s hybr and lm,
        ``least_squares``), its number of function evaluations ``nfev``; −1 if neither.
      error: the norm of the wrapper's optimality residual at x, computed in JAX.
      converged: SciPy's ``success``, a finite x and error, and error ≤ ``error_tol``.
      status: SciPy's ``status`` code (its meaning depends on the method).
      value: the objective at x: fun(x) (minimize), ½‖r(x)‖² (least squares) or ½‖F(x)‖²
        (root finding).
    """

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array
    value: jax.Array


class HostSolverState(NamedTuple):
    """The state of :class:`HostSolver` at the solution x.

    Attributes:
      iter_num: −1: a host solver reports no iteration count.
      error: ‖F(x)‖ (kind "root") or ‖T(x) − x‖ (kind "fixed_point"), computed in JAX.
      converged: a finite x and error, and error ≤ ``tol``.
    """

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array


# ---------------------------------------------------------------------------------------------
# Helpers.


def _scipy_optimize():
    try:
        import scipy.optimize
    except ImportError as err:  # scipy is an optional dependency of implicitdiff
        raise ImportError(
            "the SciPy wrappers of implicitdiff.solvers need SciPy: pip install scipy"
        ) from err
    return scipy.optimize


def _cpu() -> jax.Device:
    return jax.devices("cpu")[0]


def _on_cpu(x: PyTree) -> PyTree:
    """Host values as JAX arrays committed to the CPU: nested calls from a callback run there."""
    return jax.device_put(x, _cpu())


def _check_callable(value: Any, name: str, owner: str) -> None:
    if not callable(value):
        raise TypeError(f"{owner}: {name} must be callable, got {value!r}")


def _check_method(method: Any, known: tuple[str, ...], owner: str, allow_callable: bool) -> None:
    if allow_callable and callable(method):
        return
    if not (isinstance(method, str) and method.lower() in known):
        raise ValueError(
            f"{owner}: unknown method {method!r}; use one of {', '.join(known)}"
            + (" (or a callable, SciPy's custom method)" if allow_callable else "")
        )


def _check_common(solver: Any, owner: str) -> None:
    if not (isinstance(solver.tol, (int, float)) and not isinstance(solver.tol, bool)):
        raise TypeError(f"{owner}: tol must be a number, got {solver.tol!r}")
    if not solver.tol >= 0:
        raise ValueError(f"{owner}: tol must be ≥ 0, got {solver.tol!r}")
    if solver.options is not None and not isinstance(solver.options, Mapping):
        raise TypeError(f"{owner}: options must be a dict or None, got {solver.options!r}")
    if solver.dtype is not None and not np.issubdtype(np.dtype(solver.dtype), np.floating):
        raise TypeError(f"{owner}: dtype must be a floating dtype or None, got {solver.dtype!r}")
    if not solver.error_tol >= 0:
        raise ValueError(f"{owner}: error_tol must be ≥ 0, got {solver.error_tol!r}")


def _flat_params(init_params: PyTree, owner: str) -> tuple[jax.Array, Callable]:
    flat, unravel = ravel_pytree(init_params)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise TypeError(
            f"{owner}: init_params must have real floating leaves (SciPy solves over ℝⁿ), got "
            f"dtype {flat.dtype}"
        )
    return flat, unravel


def _flat_bound(bound: Any, params: PyTree, dtype: Any) -> jax.Array:
    """A bound (a pytree like params, or one scalar/array broadcast to every leaf), flattened."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if jax.tree_util.tree_structure(bound) == treedef:
        bound_leaves = jax.tree_util.tree_leaves(bound)
    else:
        bound_leaves = [bound] * len(leaves)
    parts = [
        jnp.broadcast_to(jnp.asarray(b, dtype), jnp.shape(p)).ravel()
        for b, p in zip(bound_leaves, leaves, strict=True)
    ]
    return jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype)


def _shape_key(params: PyTree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return (treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves))


def _finite(x: PyTree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(x)
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves] or [True]))


def _result_fields(result: Any, count: str = "nit") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iter_num, status, success) from a SciPy OptimizeResult, as fixed NumPy dtypes."""
    iters = getattr(result, count, None)
    if iters is None:
        iters = getattr(result, "nfev", -1)
    status = getattr(result, "status", 0)
    return np.int32(iters), np.int32(status), np.bool_(result.success)


_INFO_SHAPES = (
    jax.ShapeDtypeStruct((), np.int32),
    jax.ShapeDtypeStruct((), np.int32),
    jax.ShapeDtypeStruct((), np.bool_),
)


# ---------------------------------------------------------------------------------------------
# The shared run: jit cache and implicit-diff wrapping (as IterativeSolver.run, minus the loop).


@dataclasses.dataclass(eq=False, kw_only=True)
class _HostWrapper(DifferentiableRun):
    """Base of the host wrappers: ``run`` = (jit ∘ custom_root/fixed_point)(``_solve``).

    Attributes:
      implicit_diff: attach the implicit derivative (True, the default). False returns a result
        that cannot be differentiated (a host solve has no derivative of its own).
      solve: the linear solver of the implicit derivative (see :func:`implicitdiff.custom_root`).
      jit: compile ``run`` once per shape and dtype of the arguments (default True). Arrays and
        numbers are traced; other arguments are compile-time constants and must be hashable.
      on_failure, backward_on_failure: what ``run`` does when ``state.converged`` is False, and
        when the linear system of the derivative fails: as for
        :class:`implicitdiff.solvers.IterativeSolver` (defaults "auto" and "warn").
    """

    implicit_diff: bool = True
    solve: str | Callable | None = None
    jit: bool = True
    on_failure: str = "auto"
    backward_on_failure: str = "warn"

    def __post_init__(self):
        owner = type(self).__name__
        if not isinstance(self.implicit_diff, bool):
            raise TypeError(f"{owner}: implicit_diff must be a bool, got {self.implicit_diff!r}")
        if not isinstance(self.jit, bool):
            raise TypeError(f"{owner}: jit must be a bool, got {self.jit!r}")
        linear_solve.resolve(self.solve)  # an unknown name raises here, naming solve
        check_failure_policies(owner, self.on_failure, self.backward_on_failure)
        self._compiled: dict = {}
        self._host_functions: dict = {}

    def _host_function(self, key: Any, build: Callable[[], Callable]) -> Callable:
        """The host callable for one problem structure, built (and its jits made) once."""
        try:
            function = self._host_functions.get(key)
        except TypeError:  # an unhashable static argument: build afresh (jit=False only)
            return build()
        if function is None:
            function = self._host_functions[key] = build()
        return function


def _call_host(solver: Any, kind: str, init_params: PyTree, args: tuple, kwargs: dict):
    """Run ``solver._build_host``'s host function through ``jax.pure_callback`` (sequential
    under vmap); returns (params, iter_num, status, success) as traced values."""
    flat0, unravel = _flat_params(init_params, type(solver).__name__)
    key, arrays = _callback_args(args, kwargs)
    host = solver._host_function(
        (kind, key, _shape_key(init_params)),
        lambda: solver._build_host(key, unravel, flat0.dtype),
    )
    x, iter_num, status, success = jax.pure_callback(
        host,
        (jax.ShapeDtypeStruct(flat0.shape, flat0.dtype), *_INFO_SHAPES),
        flat0,
        arrays,
        vmap_method="sequential",
    )
    return unravel(x), iter_num, status, success


def _callback_args(args: tuple, kwargs: dict) -> tuple[tuple, list]:
    """The static key of (args, kwargs) and their arrays (numbers made arrays), for a callback."""
    split = _ArgsSplit(args, kwargs)
    return split.key(), [jnp.asarray(a) for a in split.arrays]


# ---------------------------------------------------------------------------------------------
# scipy.optimize.minimize.


@dataclasses.dataclass(eq=False)
class ScipyMinimize(_HostWrapper):
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
      implicit_diff, solve, jit: see ``run``; ``implicit_diff=False`` gives a result that
        cannot be differentiated.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.external import ScipyMinimize
      >>> f = lambda w, lam: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
      >>> w, state = ScipyMinimize(f).run(jnp.zeros(3), 1.0)  # w = 1 / (1 + lam)
    """

    fun: Callable | None = None
    method: str | Callable = "L-BFGS-B"
    tol: float = 1e-10
    options: Mapping | None = None
    dtype: Any = None
    error_tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        owner = type(self).__name__
        _check_callable(self.fun, "fun", owner)
        _check_method(self.method, self._methods(), owner, allow_callable=True)
        _check_common(self, owner)
        _scipy_optimize()

    @staticmethod
    def _methods() -> tuple[str, ...]:
        return _MINIMIZE_METHODS

    def optimality(self) -> tuple[str, Callable]:
        return "root", optimality.stationary(self.fun)

    def _build_host(self, key: tuple, unravel: Callable, param_dtype: Any) -> Callable:
        fun = self.fun

        def flat_fun(x, arrays):
            a, k = _ArgsSplit.merge(key, arrays)
            return fun(unravel(x), *a, **k)

        method = self.method.lower() if isinstance(self.method, str) else None
        value_and_grad = jax.jit(jax.value_and_grad(flat_fun))
        value = jax.jit(flat_fun)
        hessp = jax.jit(
            lambda x, arrays, v: jax.jvp(lambda y: jax.grad(flat_fun)(y, arrays), (x,), (v,))[1]
        )
        hess = jax.jit(jax.hessian(flat_fun))
        host_dtype = np.dtype(self.dtype or np.float64)
        scipy_optimize = _scipy_optimize()
        scipy_method, tol = self.method, self.tol
        options = dict(self.options) if self.options is not None else {}
        if method == "l-bfgs-b":  # SciPy's ftol = tol stops with ‖∇f‖ ≈ √(tol·|f|)
            options.setdefault("ftol", 1e-2 * tol)

        def host(x0, arrays, lower, upper):
            arrays = _on_cpu(list(arrays))

            def to_jax(x):
                return _on_cpu(np.asarray(x, param_dtype))

            def host_value_and_grad(x):
                v, g = value_and_grad(to_jax(x), arrays)
                return float(v), np.asarray(g, host_dtype)

            extra: dict = {}
            if method in _GRADIENT_FREE:
                objective = lambda x: float(value(to_jax(x), arrays))  # noqa: E731
            else:
                objective, extra["jac"] = host_value_and_grad, True
            if method in _USES_HESSP:
                extra["hessp"] = lambda x, p: np.asarray(
                    hessp(to_jax(x), arrays, to_jax(p)), host_dtype
                )
            if method in _USES_HESS:
                extra["hess"] = lambda x: np.asarray(hess(to_jax(x), arrays), host_dtype)
            if lower is not None and np.any(~(np.asarray(lower) <= np.asarray(upper))):
                # An empty (or NaN) box reaching the host traced: no solve, a failed result.
                nan = np.full(np.shape(x0), np.nan, param_dtype)
                return nan, np.int32(0), np.int32(-1), np.bool_(False)
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
            return (x, *_result_fields(result))

        return host

    def _minimize(self, init_params, bounds, args, kwargs):
        """(params, iter_num, status, success): the host solve, as traced JAX values."""
        owner = type(self).__name__
        flat0, unravel = _flat_params(init_params, owner)
        key, arrays = _callback_args(args, kwargs)
        host = self._host_function(
            ("minimize", key, _shape_key(init_params)),
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
                _flat_bound(lower, init_params, flat0.dtype),
                _flat_bound(upper, init_params, flat0.dtype),
            )
            callback = host
        x, iter_num, status, success = jax.pure_callback(
            callback,
            (jax.ShapeDtypeStruct(flat0.shape, flat0.dtype), *_INFO_SHAPES),
            *operands,
            vmap_method="sequential",
        )
        return unravel(x), iter_num, status, success

    def _state(self, params, error, value, iter_num, status, success) -> ScipyState:
        dtype = tree.dtype(params)
        error = jnp.asarray(error, dtype)
        converged = success & _finite(params) & jnp.isfinite(error) & (error <= self.error_tol)
        return ScipyState(
            iter_num=iter_num, error=error, converged=converged, status=status, value=value
        )

    def _solution(self, init_params, /, *args, **kwargs):
        params, iter_num, status, success = self._minimize(init_params, None, args, kwargs)
        value, grad = jax.value_and_grad(self.fun)(params, *args, **kwargs)
        return params, self._state(params, tree.norm(grad), value, iter_num, status, success)


@dataclasses.dataclass(eq=False)
class ScipyBoundedMinimize(ScipyMinimize):
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
      >>> from implicitdiff.solvers.external import ScipyBoundedMinimize
      >>> f = lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)  # NNLS
      >>> X, y = jnp.eye(3), jnp.array([1.0, -1.0, 2.0])
      >>> w, state = ScipyBoundedMinimize(f).run(jnp.zeros(3), (0.0, jnp.inf), X, y)
    """

    _run_arguments = ("bounds",)  # run(init_params, bounds, *args, **kwargs)

    @staticmethod
    def _methods() -> tuple[str, ...]:
        return _BOUNDED_METHODS

    def optimality(self) -> tuple[str, Callable]:
        return "fixed_point", optimality.projected_gradient(self.fun, projections.box)

    def _check_arguments(self, init_params, args, kwargs) -> None:
        if args and isinstance(args[0], (tuple, list)) and len(args[0]) == 2:
            _checks.check_bounds(f"{type(self).__name__}.run", *args[0])

    def _solution(self, init_params, /, bounds, *args, **kwargs):
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise TypeError(
                f"{type(self).__name__}.run: bounds must be a pair (lower, upper), got {bounds!r}"
            )
        if any(b is None for b in bounds):
            raise TypeError(
                f"{type(self).__name__}.run: a bound is None; leave a side free with -jnp.inf or "
                "jnp.inf"
            )
        params, iter_num, status, success = self._minimize(init_params, bounds, args, kwargs)
        value, grad = jax.value_and_grad(self.fun)(params, *args, **kwargs)
        step = projections.box(tree.sub(params, grad), tuple(bounds))
        error = tree.norm(tree.sub(step, params))
        return params, self._state(params, error, value, iter_num, status, success)


# ---------------------------------------------------------------------------------------------
# scipy.optimize.root and scipy.optimize.least_squares.


def _flat_output_fun(fun: Callable, key: tuple, unravel: Callable) -> Callable:
    """(x_flat, arrays) -> fun(unravel(x), *args, **kwargs) flattened to a vector."""

    def flat_fun(x, arrays):
        a, k = _ArgsSplit.merge(key, arrays)
        return ravel_pytree(fun(unravel(x), *a, **k))[0]

    return flat_fun


@dataclasses.dataclass(eq=False)
class ScipyRootFinding(_HostWrapper):
    """A root of F(x, *args) = 0 by ``scipy.optimize.root``, differentiable, jittable, vmappable.

    ``run(init_params, *args, **kwargs)`` calls ``scipy.optimize.root(…, method, tol, options)``
    on the host on the flattened params, with a compiled F and, for hybr and lm, its compiled
    Jacobian (``jax.jacfwd``). The root is differentiated through F itself (``("root",
    optimality_fun)``): ∂x* = −[∂₁F]⁻¹∂₂F, which needs ∂₁F invertible at the root.
    ``state.error`` = ‖F(x, *args)‖, computed in JAX; ``state.value`` = ½‖F(x)‖².

    Attributes:
      optimality_fun: F(x, *args, **kwargs), a pytree with the structure of x.
      method: a method of ``scipy.optimize.root`` (default "hybr").
      tol, options, dtype, error_tol, implicit_diff, solve, jit: as for
        :class:`ScipyMinimize`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers.external import ScipyRootFinding
      >>> F = lambda x, a: x**3 - a  # the cube root of a
      >>> x, state = ScipyRootFinding(F).run(jnp.ones(2), jnp.array([8.0, 27.0]))
    """

    _user_function = "optimality_fun"

    optimality_fun: Callable | None = None
    method: str = "hybr"
    tol: float = 1e-10
    options: Mapping | None = None
    dtype: Any = None
    error_tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        owner = type(self).__name__
        _check_callable(self.optimality_fun, "optimality_fun", owner)
        _check_method(self.method, _ROOT_METHODS, owner, allow_callable=False)
        _check_common(self, owner)
        _scipy_optimize()

    def optimality(self) -> tuple[str, Callable]:
        return "root", self.optimality_fun

    def _build_host(self, key: tuple, unravel: Callable, param_dtype: Any) -> Callable:
        flat_fun = _flat_output_fun(self.optimality_fun, key, unravel)
        value, jacobian = jax.jit(flat_fun), jax.jit(jax.jacfwd(flat_fun))
        host_dtype = np.dtype(self.dtype or np.float64)
        scipy_optimize = _scipy_optimize()
        method = self.method
        uses_jac = method.lower() in _ROOT_USES_JAC
        tol = self.tol
        options = dict(self.options) if self.options is not None else None

        def host(x0, arrays):
            arrays = _on_cpu(list(arrays))

            def to_jax(x):
                return _on_cpu(np.asarray(x, param_dtype))

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
            return (x, *_result_fields(result))

        return host

    def _solution(self, init_params, /, *args, **kwargs):
        params, iter_num, status, success = _call_host(self, "root", init_params, args, kwargs)
        residual = self.optimality_fun(params, *args, **kwargs)
        error = tree.norm(residual).astype(tree.dtype(params))
        converged = success & _finite(params) & jnp.isfinite(error) & (error <= self.error_tol)
        state = ScipyState(
            iter_num=iter_num,
            error=error,
            converged=converged,
            status=status,
            value=0.5 * error**2,
        )
        return params, state


@dataclasses.dataclass(eq=False)
class ScipyLeastSquares(_HostWrapper):
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
      >>> from implicitdiff.solvers.external import ScipyLeastSquares
      >>> r = lambda p, t, y: p[0] * jnp.exp(p[1] * t) - y  # an exponential fit
      >>> t = jnp.linspace(0.0, 1.0, 5)
      >>> p, state = ScipyLeastSquares(r).run(jnp.ones(2), t, 2.0 * jnp.exp(-t))
    """

    _user_function = "residual_fun"

    residual_fun: Callable | None = None
    method: str = "trf"
    tol: float = 1e-12
    options: Mapping | None = None
    dtype: Any = None
    error_tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        owner = type(self).__name__
        _check_callable(self.residual_fun, "residual_fun", owner)
        _check_method(self.method, _LEAST_SQUARES_METHODS, owner, allow_callable=False)
        _check_common(self, owner)
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
        _scipy_optimize()

    def optimality(self) -> tuple[str, Callable]:
        return "root", optimality.least_squares(self.residual_fun)

    def _build_host(self, key: tuple, unravel: Callable, param_dtype: Any) -> Callable:
        flat_fun = _flat_output_fun(self.residual_fun, key, unravel)
        value, jacobian = jax.jit(flat_fun), jax.jit(jax.jacfwd(flat_fun))
        host_dtype = np.dtype(self.dtype or np.float64)
        scipy_optimize = _scipy_optimize()
        method, tol = self.method, self.tol
        options = dict(self.options) if self.options is not None else {}

        def host(x0, arrays):
            arrays = _on_cpu(list(arrays))

            def to_jax(x):
                return _on_cpu(np.asarray(x, param_dtype))

            result = scipy_optimize.least_squares(
                lambda x: np.asarray(value(to_jax(x), arrays), host_dtype),
                np.asarray(x0, host_dtype),
                jac=lambda x: np.atleast_2d(np.asarray(jacobian(to_jax(x), arrays), host_dtype)),
                method=method,
                **{"ftol": tol, "xtol": tol, "gtol": tol, **options},
            )
            x = np.asarray(result.x, param_dtype).reshape(np.shape(x0))
            return (x, *_result_fields(result, count="nfev"))

        return host

    def _solution(self, init_params, /, *args, **kwargs):
        params, iter_num, status, success = _call_host(
            self, "least_squares", init_params, args, kwargs
        )
        dtype = tree.dtype(params)
        residuals, vjp = jax.vjp(lambda p: self.residual_fun(p, *args, **kwargs), params)
        error = tree.norm(vjp(residuals)[0]).astype(dtype)
        converged = success & _finite(params) & jnp.isfinite(error) & (error <= self.error_tol)
        state = ScipyState(
            iter_num=iter_num,
            error=error,
            converged=converged,
            status=status,
            value=(0.5 * tree.vdot(residuals, residuals)).astype(dtype),
        )
        return params, state


# ---------------------------------------------------------------------------------------------
# Any host solver.


@dataclasses.dataclass(eq=False)
class HostSolver(_HostWrapper):
    """Any Python solver run on the host, made differentiable through its optimality condition.

    ``run(init_params, *args, **kwargs)`` calls ``solve_fn(init_params, *args, **kwargs)``
    through ``jax.pure_callback``, with NumPy arrays in place of the arrays (and numbers) of
    ``init_params``, ``args`` and ``kwargs``; other arguments (strings, callables, None, ...) are
    passed as they are. ``solve_fn`` may run anything (a scikit-learn estimator's ``fit``, a
    cvxpy problem, a C library) and returns the solution x as a pytree of array-likes. The
    solution is differentiated through ``optimality_fun``: F(x, *args, **kwargs) = 0 for
    ``kind="root"`` (:func:`implicitdiff.custom_root`), or the fixed point x = T(x, *args,
    **kwargs) for ``kind="fixed_point"`` (:func:`implicitdiff.custom_fixed_point`); it must be
    written in JAX and take the same arguments as ``run`` after ``init_params``.

    The shape of the solution must be known before the host runs (XLA compiles the program
    around the callback). It is given by ``result_shape``:

    - None (the default): the solution has the structure, shapes and dtypes of ``init_params``;
    - a pytree of ``jax.ShapeDtypeStruct`` (or of arrays, whose shapes and dtypes are taken);
    - a callable ``result_shape(init_params, *args, **kwargs)`` returning such a pytree, for a
      solution shaped by the data (called at trace time, on abstract values).

    ``solve_fn``'s output is cast to those dtypes; a different structure or shape raises a
    ``ValueError`` naming ``solve_fn`` inside the callback, which JAX re-raises as a
    ``JaxRuntimeError`` whose message contains it. ``state.error`` = ‖F(x)‖ or ‖T(x) − x‖ in JAX;
    ``state.converged`` = a finite error ≤ ``tol``. Under ``jax.vmap``, ``solve_fn`` is called
    once per problem, sequentially.

    Attributes:
      solve_fn: ``solve_fn(init_params, *args, **kwargs) -> x``, on NumPy values.
      optimality_fun: F (``kind="root"``) or T (``kind="fixed_point"``), a JAX function of
        ``(x, *args, **kwargs)`` returning a pytree like x.
      result_shape: the solution's structure, shapes and dtypes, see above.
      kind: "root" (default) or "fixed_point".
      tol: the error below which ``state.converged`` (default 1e-6); the host solver's own
        tolerance is set in ``solve_fn`` (tight: the derivative's error is proportional to the
        solution's).
      implicit_diff, solve, jit: as for :class:`ScipyMinimize`.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from implicitdiff import optimality
      >>> from implicitdiff.solvers.external import HostSolver
      >>> f = lambda w, lam, X, y: 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * lam * w @ w
      >>> def ridge(w0, lam, X, y):  # any NumPy code, e.g. sklearn's Ridge(alpha=lam).fit
      ...     return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ y)
      >>> solver = HostSolver(ridge, optimality.stationary(f))
      >>> X, y = jnp.eye(4, 3) + 1.0, jnp.arange(4.0)
      >>> dw_dlam = jax.jacobian(lambda lam: solver.run(jnp.zeros(3), lam, X, y).params)(1.0)
    """

    _user_function = "optimality_fun"

    solve_fn: Callable | None = None
    optimality_fun: Callable | None = None
    result_shape: Any = None
    kind: str = "root"
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        owner = type(self).__name__
        _check_callable(self.solve_fn, "solve_fn", owner)
        _check_callable(self.optimality_fun, "optimality_fun", owner)
        if self.kind not in ("root", "fixed_point"):
            raise ValueError(f"{owner}: kind must be 'root' or 'fixed_point', got {self.kind!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"{owner}: tol must be a number ≥ 0, got {self.tol!r}")

    def optimality(self) -> tuple[str, Callable]:
        return self.kind, self.optimality_fun

    def _result_shape(self, init_params, args, kwargs) -> PyTree:
        shape = self.result_shape
        if shape is None:
            shape = init_params
        elif callable(shape):
            shape = shape(init_params, *args, **kwargs)
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), shape
        )

    def _solution(self, init_params, /, *args, **kwargs):
        expected = self._result_shape(init_params, args, kwargs)
        expected_leaves, expected_tree = jax.tree_util.tree_flatten(expected)
        init_leaves, init_tree = jax.tree_util.tree_flatten(init_params)
        key, arrays = _callback_args(args, kwargs)
        solve_fn = self.solve_fn
        name = getattr(solve_fn, "__name__", type(solve_fn).__name__)

        def host(init_leaves, arrays):
            init = jax.tree_util.tree_unflatten(init_tree, [np.asarray(x) for x in init_leaves])
            a, k = _ArgsSplit.merge(key, [np.asarray(x) for x in arrays])
            out = solve_fn(init, *a, **k)
            leaves, out_tree = jax.tree_util.tree_flatten(out)
            if out_tree != expected_tree:
                raise ValueError(
                    f"HostSolver: solve_fn {name} returned a pytree of structure {out_tree}, "
                    f"expected {expected_tree} (set result_shape if the solution is not shaped "
                    "like init_params)"
                )
            results = []
            for i, (leaf, spec) in enumerate(zip(leaves, expected_leaves, strict=True)):
                leaf = np.asarray(leaf)
                if leaf.shape != spec.shape:
                    raise ValueError(
                        f"HostSolver: solve_fn {name} returned leaf {i} of shape {leaf.shape}, "
                        f"expected {spec.shape} (set result_shape if the solution is not shaped "
                        "like init_params)"
                    )
                results.append(leaf.astype(spec.dtype))
            return results

        leaves = jax.pure_callback(
            host,
            expected_leaves,
            [jnp.asarray(x) for x in init_leaves],
            arrays,
            vmap_method="sequential",
        )
        params = jax.tree_util.tree_unflatten(expected_tree, leaves)
        value = self.optimality_fun(params, *args, **kwargs)
        residual = value if self.kind == "root" else tree.sub(value, params)
        dtype = tree.dtype(params)
        error = tree.norm(residual).astype(dtype)
        converged = _finite(params) & jnp.isfinite(error) & (error <= self.tol)
        state = HostSolverState(
            iter_num=jnp.asarray(-1, jnp.int32), error=error, converged=converged
        )
        return params, state
