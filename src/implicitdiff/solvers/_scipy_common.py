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

from implicitdiff._args import ArgsSplit
from implicitdiff._typing import PyTree
from implicitdiff.solvers._host_call import check_callable

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


def result_fields(result: Any, count: str = "nit") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iter_num, status, success) from a SciPy OptimizeResult, as fixed NumPy dtypes."""
    iters = getattr(result, count, None)
    if iters is None:
        iters = getattr(result, "nfev", -1)
    status = getattr(result, "status", 0)
    return np.int32(iters), np.int32(status), np.bool_(result.success)


def flat_output_fun(fun: Callable, key: tuple, unravel: Callable) -> Callable:
    """(x_flat, arrays) -> fun(unravel(x), *args, **kwargs) flattened to a vector."""

    def flat_fun(x, arrays):
        a, k = ArgsSplit.merge(key, arrays)
        return ravel_pytree(fun(unravel(x), *a, **k))[0]

    return flat_fun
