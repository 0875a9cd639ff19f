"""What the SciPy wrappers of :mod:`implicitdiff.solvers.scipy` and
:mod:`implicitdiff.solvers.scipy_root` share: SciPy's method names, their state, the option
checks, and the conversions between pytrees and SciPy's flat vectors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from implicitdiff import _checks, _summary, tree
from implicitdiff import _projection_ops as projections
from implicitdiff._args import ArgsSplit
from implicitdiff._typing import PyTree
from implicitdiff.solvers._host_call import all_finite, check_callable

__all__ = ["ScipyState"]

MINIMIZE_METHODS = (
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
BOUNDED_METHODS = (
    "nelder-mead",
    "powell",
    "l-bfgs-b",
    "tnc",
    "cobyla",
    "cobyqa",
    "slsqp",
    "trust-constr",
)
GRADIENT_FREE = ("nelder-mead", "powell", "cobyla", "cobyqa")
USES_HESSP = ("newton-cg", "trust-ncg", "trust-krylov", "trust-constr")
USES_HESS = ("dogleg", "trust-exact")
HESS_INV_METHODS = ("bfgs", "l-bfgs-b")
ROOT_METHODS = (
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
ROOT_USES_JAC = ("hybr", "lm")
LEAST_SQUARES_METHODS = ("trf", "dogbox", "lm")
BOUNDED_LEAST_SQUARES_METHODS = ("trf", "dogbox")


def _huber(z):
    return jnp.where(jnp.abs(z) <= 1.0, z**2, 2.0 * jnp.abs(z) - 1.0)


# SciPy's robust losses ρ(s) of s = z² (z = r / f_scale), written as functions of z:
# linear s, soft_l1 2(√(1+s) − 1), huber s if s ≤ 1 else 2√s − 1, cauchy log(1+s),
# arctan arctan(s).  In z, huber's |z| keeps its gradient finite at z = 0.
LOSSES: dict[str, Callable] = {
    "linear": lambda z: z**2,
    "soft_l1": lambda z: 2.0 * (jnp.sqrt(1.0 + z**2) - 1.0),
    "huber": _huber,
    "cauchy": lambda z: jnp.log1p(z**2),
    "arctan": lambda z: jnp.arctan(z**2),
}


def robust_cost(residual_fun: Callable, loss: str, f_scale: float) -> Callable:
    """C(x, *args) = ½·f_scale²·Σᵢ ρ(rᵢ(x, *args)² / f_scale²): ``least_squares``'s cost.

    ρ is SciPy's loss (see ``LOSSES``); for the linear loss C = ½‖r‖².
    """
    rho = LOSSES[loss]

    def cost(x, *args, **kwargs):
        residuals = ravel_pytree(residual_fun(x, *args, **kwargs))[0]
        scale = jnp.asarray(f_scale, residuals.dtype)
        return 0.5 * scale**2 * jnp.sum(rho(residuals / scale))

    return cost


def check_least_squares_options(solver: Any, owner: str) -> float:
    """Checks ``loss``, ``options`` (and its ``f_scale``) of a least-squares wrapper; returns
    f_scale."""
    if solver.loss not in LOSSES:
        raise ValueError(
            f"{owner}: unknown loss {solver.loss!r}; use one of {', '.join(LOSSES)} (a callable "
            "loss is not supported)"
        )
    options = solver.options or {}
    bad = [name for name in ("bounds", "fun", "x0", "jac", "method", "loss") if name in options]
    if bad:
        raise ValueError(
            f"{owner}: options {bad} are not supported: pass loss= and method= as the wrapper's "
            "fields (as in JAXopt), bounds to ScipyBoundedLeastSquares.run; fun, x0 and jac are "
            "set by the wrapper"
        )
    f_scale = options.get("f_scale", 1.0)
    if not (isinstance(f_scale, (int, float)) and not isinstance(f_scale, bool) and f_scale > 0):
        raise ValueError(f"{owner}: options['f_scale'] must be a number > 0, got {f_scale!r}")
    if solver.method.lower() == "lm" and solver.loss != "linear":
        raise ValueError(
            f"{owner}: method 'lm' supports only loss='linear' (SciPy's restriction); use "
            "method='trf' or 'dogbox'"
        )
    return float(f_scale)


class ScipyState(NamedTuple):
    """The state of a SciPy wrapper at the solution x.

    Attributes:
      iter_num: SciPy's ``nit``; where the method reports none (``root``'s hybr and lm,
        ``least_squares``), its number of function evaluations ``nfev``; −1 if neither.
      error: the norm of the wrapper's optimality residual at x, computed in JAX.
      converged: a finite x and error, error ≤ ``error_tol``, and (minimize, least squares)
        SciPy's ``success``; ``ScipyRootFinding`` ignores SciPy's flag (its class says why).
      status: SciPy's ``status`` code (its meaning depends on the method).
      value: the objective at x: fun(x) (minimize), ½·f_scale²·Σρ(rᵢ²/f_scale²) (least
        squares; ½‖r(x)‖² for the linear loss) or ½‖F(x)‖² (root finding).
      hess_inv: SciPy's inverse-Hessian approximation at x as a dense n × n matrix (n scalar
        parameters) for ``ScipyMinimize`` / ``ScipyBoundedMinimize`` with "BFGS" or
        "L-BFGS-B"; None otherwise. A constant (no derivative flows through it).
      aux: the auxiliary output of the user's function at x with ``has_aux=True``, else None
        (no derivative flows through it).
    """

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    status: jax.Array
    value: jax.Array
    hess_inv: Any = None
    aux: Any = None

    __repr__ = _summary.namedtuple_repr


def nan_unless_finite(params: PyTree, error: jax.Array) -> PyTree:
    """``params`` with its floating leaves NaN where the error is not finite: SciPy's x after a
    run that met NaN (NaN data: SciPy returns x₀ or its last finite trial) is no solution, and
    no finite derivative is computed at it (as the library's own solvers, see ``_base``)."""
    return _checks.nan_unless_tree(jnp.isfinite(error), params)


def solution_state(
    solver: Any, params: PyTree, error: Any, iter_num, status, success, value, aux, hess_inv=None
) -> ScipyState:
    """The :class:`ScipyState` of a minimizer's solution x (ScipyMinimize, ScipyLeastSquares and
    their bounded forms): the error in x's dtype, converged when SciPy succeeded, x and the
    error are finite and error ≤ ``solver.error_tol``."""
    error = jnp.asarray(error, tree.dtype(params))
    converged = success & all_finite(params) & jnp.isfinite(error) & (error <= solver.error_tol)
    return ScipyState(
        iter_num=iter_num,
        error=error,
        converged=converged,
        status=status,
        value=value,
        hess_inv=hess_inv,
        aux=aux,
    )


def import_scipy_optimize():
    try:
        import scipy.optimize
    except ImportError as err:  # scipy is an optional dependency of implicitdiff
        raise ImportError(
            "the SciPy wrappers of implicitdiff.solvers need SciPy: pip install scipy"
        ) from err
    return scipy.optimize


def check_method(method: Any, known: tuple[str, ...], owner: str, allow_callable: bool) -> None:
    if allow_callable and callable(method):
        return
    if not (isinstance(method, str) and method.lower() in known):
        raise ValueError(
            f"{owner}: unknown method {method!r}; use one of {', '.join(known)}"
            + (" (or a callable, SciPy's custom method)" if allow_callable else "")
        )


def check_common(solver: Any, owner: str) -> None:
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


DEFAULT_MAXITER = 500  # JAXopt's default of the minimize wrappers' maxiter


def check_maxiter(solver: Any, owner: str) -> None:
    """``maxiter`` an int ≥ 0 (0 is passed on to SciPy, as JAXopt does), not in conflict with
    an ``options["maxiter"]``: one given in ``options`` is used when ``maxiter`` is left at its
    default (JAXopt raises a ValueError for any ``options["maxiter"]``); a different non-default
    ``maxiter`` too is a ValueError."""
    maxiter = solver.maxiter
    if not (isinstance(maxiter, int) and not isinstance(maxiter, bool) and maxiter >= 0):
        raise ValueError(f"{owner}: maxiter must be an int ≥ 0, got {maxiter!r}")
    given = (solver.options or {}).get("maxiter", maxiter)
    if maxiter != DEFAULT_MAXITER and given != maxiter:
        raise ValueError(
            f"{owner}: maxiter={maxiter!r} and options['maxiter']={given!r} disagree; pass "
            "maxiter= only"
        )


def check_fields(solver: Any, known: tuple[str, ...], *, allow_callable: bool) -> str:
    """Checks a wrapper's user function (named by ``_user_function``), ``method`` among ``known``
    (or a callable if ``allow_callable``) and the common options; returns the owner's name."""
    owner = type(solver).__name__
    name = solver._user_function
    check_callable(getattr(solver, name), name, owner, solver.method)
    check_method(solver.method, known, owner, allow_callable=allow_callable)
    check_common(solver, owner)
    return owner


def flat_bound(bound: Any, params: PyTree, dtype: Any) -> jax.Array:
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


class BoxBounds:
    """Mixin of the wrappers whose ``run`` takes ``bounds = (lower, upper)`` after the params
    (ScipyBoundedMinimize, ScipyBoundedLeastSquares): the checks of ``bounds``, and the error of
    a solution in the box."""

    _leading_run_arguments = 1  # run's argument before fun's (see DifferentiableRun)

    def _check_arguments(self, init_params, args, kwargs) -> None:
        if args and isinstance(args[0], (tuple, list)) and len(args[0]) == 2:
            _checks.check_bounds(f"{type(self).__name__}.run", *args[0])

    def _check_bounds_pair(self, bounds: Any) -> None:
        """Refuses ``bounds`` that are not a pair (lower, upper), or hold None."""
        owner = type(self).__name__
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise TypeError(f"{owner}.run: bounds must be a pair (lower, upper), got {bounds!r}")
        if any(b is None for b in bounds):
            raise TypeError(
                f"{owner}.run: a bound is None; leave a side free with -jnp.inf or jnp.inf"
            )


def box_error(params: PyTree, grad: PyTree, bounds: Any) -> jax.Array:
    """‖box(x − ∇f(x), bounds) − x‖, the error of x as a minimizer of f in the box."""
    step = projections.box(tree.sub(params, grad), tuple(bounds))
    return tree.norm(tree.sub(step, params))


def result_fields(result: Any, count: str = "nit") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iter_num, status, success) from a SciPy OptimizeResult, as fixed NumPy dtypes."""
    iters = getattr(result, count, None)
    if iters is None:
        iters = getattr(result, "nfev", -1)
    status = getattr(result, "status", 0)
    return np.int32(iters), np.int32(status), np.bool_(result.success)


def dense_hess_inv(result: Any, n: int, wanted: bool, dtype: Any) -> np.ndarray:
    """SciPy's ``hess_inv`` as a dense (n, n) array (an operator is materialized), NaN if the
    result has none; a (0, 0) array where it is not ``wanted``."""
    if not wanted:
        return np.zeros((0, 0), dtype)
    hess_inv = getattr(result, "hess_inv", None)
    if hess_inv is None:
        return np.full((n, n), np.nan, dtype)
    if hasattr(hess_inv, "todense"):
        hess_inv = hess_inv.todense()
    return np.asarray(hess_inv, dtype).reshape(n, n)


def flat_output_fun(fun: Callable, key: tuple, unravel: Callable) -> Callable:
    """(x_flat, arrays) -> fun(unravel(x), *args, **kwargs) flattened to a vector."""

    def flat_fun(x, arrays):
        a, k = ArgsSplit.merge(key, arrays)
        return ravel_pytree(fun(unravel(x), *a, **k))[0]

    return flat_fun
