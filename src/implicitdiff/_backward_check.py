"""The engine's backward solve, checked: its residual, the failure policies, the fallback.

:func:`checked_solve` turns the user's choice of linear solver into ``solve(matvec, b) -> x``
that also measures the relative residual of the solution (one more matvec) and applies the
``on_failure`` policy of :func:`implicitdiff.custom_root` when it exceeds the threshold.

A failure is reported without a host effect in the compiled program: the solution goes through
``lax.cond(failed, report, identity)``, where ``report`` is a ``jax.pure_callback`` that returns
its input unchanged after warning (or raising) on the host. The callback has a result, so the
compiler keeps it, and no effect, so the program keeps JAX's C++ fast dispatch and works under
``jax.checkpoint``, ``shard_map``, ``vmap``, ``scan``; it is only called when the solve failed
(under ``vmap``, where ``cond`` becomes ``select``, on every call, and it warns only if some
element failed). A ``custom_jvp`` makes it the identity for differentiation.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, _support, linear_solve, tree
from implicitdiff._condition import is_symmetric, support_of
from implicitdiff._typing import PyTree

POLICIES = ("warn", "raise", "nan", "ignore", "fallback")


class BackwardSolveWarning(RuntimeWarning):
    """The linear system of an implicit derivative was not solved to its tolerance."""


class BackwardSolveError(RuntimeError):
    """Raised (with ``on_failure="raise"``) when the linear system of a derivative fails.

    Raised on the host while the compiled program runs, so JAX hands it to the caller wrapped in
    a ``jax.errors.JaxRuntimeError`` whose message contains ``BackwardSolveError: ...``.
    """


# ---------------------------------------------------------------------------------------------
# Where a warning points: the user's line.

_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.abspath(module.__file__)) + os.sep
    for module in (jax, sys.modules["jaxlib"], sys.modules["implicitdiff"])
)
_STDLIB = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep


def _is_internal(filename: str) -> bool:
    if filename.startswith("<") or filename.startswith(_INTERNAL_DIRS):
        return True
    packages = "site-packages" in filename or "dist-packages" in filename
    return filename.startswith(_STDLIB) and not packages  # threading, concurrent, ...


def _user_site() -> tuple[str, int, dict] | None:
    """(filename, line, module globals) of the innermost frame outside JAX, jaxlib, this package
    and the standard library; None if there is none (a callback on a runtime thread)."""
    frame = sys._getframe(1)
    while frame is not None:
        if not _is_internal(frame.f_code.co_filename):
            return frame.f_code.co_filename, frame.f_lineno, frame.f_globals
        frame = frame.f_back
    return None


def _warn(
    message: str,
    site: tuple[str, int, dict] | None,
    category: type[Warning] = BackwardSolveWarning,
) -> None:
    """Warn once, attributed to the user's frame on the stack if the callback runs in the
    user's thread, else to ``site``, the user's frame when the derivative was traced."""
    site = _user_site() or site
    if site is None:
        warnings.warn(message, category, stacklevel=2)
        return
    filename, lineno, module_globals = site
    warnings.warn_explicit(
        message,
        category,
        filename,
        lineno,
        module=module_globals.get("__name__", "__main__"),
        registry=module_globals.setdefault("__warningregistry__", {}),
    )


# ---------------------------------------------------------------------------------------------
# x, unchanged, with a host report when some element failed.


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _report_if(host: Callable, x: PyTree, failed: jax.Array, values: tuple) -> PyTree:
    """``x``; calls ``host(failed, *values)`` (NumPy arrays) on the host when ``failed.any()``."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    shapes = [jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves]

    def on_host(leaves, here, failed, values):
        # (Under vmap, cond runs both branches: ``here`` says whether to report.)
        if np.any(here):
            host(np.asarray(failed), *(np.asarray(v) for v in values))
        return [np.asarray(leaf) for leaf in leaves]

    # Under shard_map, the result varies over the mesh axes its input varies over.
    axes = [_varying_axes(leaf) for leaf in leaves]

    def report(leaves):
        out = jax.pure_callback(
            on_host, shapes, leaves, here, failed, values, vmap_method="broadcast_all"
        )
        return [
            jax.lax.pcast(o, a, to="varying") if a else o for o, a in zip(out, axes, strict=True)
        ]

    here = jnp.any(failed)
    devices = _varying_axes(failed)
    if devices:  # inside shard_map: one report for all devices, from the first one
        failed = _gather_over_devices(failed)
        values = tuple(_gather_over_devices(v) for v in values)
        here = jnp.any(failed) & (jax.lax.axis_index(devices) == 0)
    leaves = jax.lax.cond(here, report, lambda leaves: leaves, leaves)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _varying_axes(leaf: jax.Array) -> tuple:
    """The manual mesh axes over which ``leaf`` varies (inside ``shard_map``), else ()."""
    manual = getattr(jax.typeof(leaf), "manual_axis_type", None)
    return tuple(sorted(getattr(manual, "varying", ())))


def _gather_over_devices(value: jax.Array) -> jax.Array:
    """``value`` from every device along the mesh axes it varies over (a leading axis)."""
    axes = _varying_axes(value)
    return jax.lax.all_gather(value, axes) if axes else value


@_report_if.defjvp
def _report_if_jvp(host, primals, tangents):
    x, failed, values = primals
    return _report_if(host, x, failed, values), tangents[0]


def _worst(failed: np.ndarray, residual: np.ndarray) -> str:
    """The largest residual of the failed systems, "nan" if one of them is NaN (not "inf": a NaN
    residual is a system or right-hand side that is not finite, not a large one)."""
    failed = np.asarray(failed, dtype=bool)
    failing = np.broadcast_to(np.asarray(residual, dtype=float), failed.shape)[failed]
    if failing.size and np.isnan(failing).any():
        return "nan (not finite: the solution, F or the incoming derivative holds NaN or inf)"
    return f"{float(np.max(failing, initial=-np.inf)):.3e}"


def _how_many(failed: np.ndarray) -> str:
    """For a batch (vmap, shard_map): how many of its systems failed."""
    return f" ({int(failed.sum())} of {failed.size} in the batch)" if failed.size > 1 else ""


def _failure_report(policy: str, site) -> Callable:
    def host(failed, residual):
        message = (
            f"the linear system of an implicit derivative{_how_many(failed)} was not solved: "
            f"relative residual {_worst(failed, residual)}. The derivative is inaccurate. "
            "Likely causes: the solution is not accurate, or A = -dF/dx is singular or "
            "ill-conditioned at it. "
            "Remedies: solve more tightly, pass solve=functools.partial(linear_solve.<name>, "
            "ridge=..., maxiter=...), solve='normal_cg' for singular systems, or "
            "on_failure='fallback'."
        )
        if policy == "raise":
            raise BackwardSolveError(message)
        _warn(message, site)

    return host


def _fallback_report(dense: bool, site) -> Callable:
    def host(failed, residual, fallback_residual, fallback_failed, ridge):
        if dense:
            how = (
                "the minimum-norm least-squares solution (dense, by SVD; singular values below "
                "n·eps·σ_max count as zero)"
            )
        else:
            how = (
                "CG on the ridge-regularized normal equations (AᵀA + ρI) u = Aᵀb, ρ = "
                f"{float(np.max(ridge)):.2e} ≈ 10 eps ‖A‖²"
            )
        message = (
            f"the linear system of an implicit derivative{_how_many(failed)} was not solved "
            "(relative residual "
            f"{_worst(failed, residual)}: A = -dF/dx is singular or ill-conditioned, or the "
            f"solver stopped early), so it was solved again as a least-squares problem: {how}. "
            "Where A is singular the derivative returned is the minimum-norm one, which ignores "
            "the directions in which the solution is not determined (a translation, a "
            "rank-deficient design)."
        )
        fallback_failed = fallback_failed & failed
        if fallback_failed.any():
            message += (
                " That solve failed too (relative residual of its normal equations "
                f"{_worst(fallback_failed, fallback_residual)}): the derivative is "
                "inaccurate (possibly not finite)."
            )
        _warn(message, site)

    return host


# The same reporting, for the solvers' own failure policy (solvers/_failures.py, on_failure="warn"
# inside a transformation): x unchanged, one warning per failing call, at the user's line.
user_site = _user_site
report_if = _report_if
warn_at_site = _warn


# ---------------------------------------------------------------------------------------------
# The least-squares fallback.

# The fallback's ridge, relative to ‖A‖² (estimated by power iteration): small enough to leave
# a well-determined derivative unchanged to about 10 eps κ(A)², large enough to keep CG's
# iterates bounded along a null space that rounding excites.
_FALLBACK_RELATIVE_RIDGE = 10.0
_POWER_ITERATIONS = 20


def _random_like(b: PyTree) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(b)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, jnp.shape(v), jnp.result_type(v))
            for k, v in zip(keys, leaves, strict=True)
        ],
    )


def least_squares_fallback(matvec: Callable, b: PyTree, dense: bool):
    """(x, relative normal residual, ridge ρ): x the least-squares solution of A x = b.

    Dense (few unknowns): x = A⁺b, the minimum-norm least-squares solution, by SVD. Else CG on
    (AᵀA + ρI) x = Aᵀb with ρ = 10 eps λ_max(AᵀA). The residual returned is
    ‖Aᵀ(A x − b) + ρ x‖ / ‖Aᵀb‖.
    """
    dtype = tree.dtype(b)
    transpose = jax.linear_transpose(matvec, b)

    def rmatvec(y):
        return transpose(y)[0]

    def normal(v):
        return rmatvec(matvec(v))

    rhs = rmatvec(b)
    if dense:
        a, b_flat, unravel = linear_solve._materialize(matvec, b)
        x = unravel(jnp.linalg.lstsq(_checks.for_lapack(a), b_flat)[0])
        ridge = jnp.zeros((), dtype)
    else:

        def power(_, v):
            w = normal(v)
            return tree.scale(1.0 / jnp.maximum(tree.norm(w), jnp.finfo(dtype).tiny), w)

        v = jax.lax.fori_loop(0, _POWER_ITERATIONS, power, _random_like(b))
        largest = tree.vdot(v, normal(v)) / tree.vdot(v, v)
        eps = float(jnp.finfo(dtype).eps)
        ridge = (_FALLBACK_RELATIVE_RIDGE * eps * largest).astype(dtype)
        x = linear_solve.normal_cg(matvec, b, ridge=ridge)
    r = tree.axpy(ridge, x, rmatvec(tree.sub(matvec(x), b)))
    rhs_norm = tree.norm(rhs)
    residual = tree.norm(r) / jnp.where(rhs_norm > 0, rhs_norm, 1.0)
    return x, residual.astype(dtype), ridge


# ---------------------------------------------------------------------------------------------
# The checked solve.


def check_same_structure(
    expected: PyTree, got: PyTree, what: str, expected_name: str, dtypes: bool = False
) -> None:
    """Raise a TypeError naming ``what`` if ``got`` does not match ``expected`` leaf for leaf
    (structure and shapes; and dtypes if ``dtypes``)."""
    e_tree, g_tree = jax.tree_util.tree_structure(expected), jax.tree_util.tree_structure(got)
    if e_tree != g_tree:
        # jax.scipy.sparse.linalg's solvers return (x, info): the commonest mismatch.
        pair = (
            isinstance(got, tuple)
            and len(got) == 2
            and (jax.tree_util.tree_structure(got[0]) == e_tree)
        )
        hint = (
            " (it returned a pair (x, info), as jax.scipy.sparse.linalg's solvers do: pass "
            "lambda matvec, b: cg(matvec, b)[0])"
            if pair
            else ""
        )
        raise TypeError(
            f"{what} must return a pytree with the structure of {expected_name}: "
            f"expected {e_tree}, got {g_tree}{hint}"
        )
    for i, (e, g) in enumerate(
        zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got), strict=True)
    ):
        if jnp.shape(e) != jnp.shape(g):
            raise TypeError(
                f"{what} must return leaves shaped like {expected_name}: leaf {i} is "
                f"{jnp.shape(g)}, expected {jnp.shape(e)}"
            )
        if dtypes and jnp.result_type(e) != jnp.result_type(g):
            raise TypeError(
                f"{what} must return leaves of the dtype of {expected_name}: leaf {i} is "
                f"{jnp.result_type(g)}, {expected_name} is {jnp.result_type(e)} (the derivative's "
                "linear system lives in the solution's dtype: cast the output, or the solution)"
            )


def _relative_residual(r: PyTree, b: PyTree) -> jax.Array:
    """‖r‖₂ / ‖b‖₂ (‖r‖₂ when b = 0), by :func:`implicitdiff.tree.norm`, which neither overflows
    nor underflows where the norms are representable; a NaN or infinite entry of r gives NaN or
    inf. (Measured on bench_engine's ridge 200 × 100: plain sums of squares compile no faster,
    and scaling the entries by ‖b‖∞ first compiles slower, though it has fewer operations.)"""
    b_norm = tree.norm(b)
    return tree.norm(r) / jnp.where(b_norm > 0, b_norm, 1.0)


def checked_solve(
    solve: Any, symmetric: bool, on_failure: str, support_symmetric: bool = False
) -> Callable:
    """``solve(matvec, b, support=None) -> x`` from a user's choice, with structure and residual
    checks.

    With ``support`` (a pytree of booleans like b, True on the free coordinates S), the system
    is solved on S only (:func:`implicitdiff._support.solve_on_support`; a solver that takes the
    ``symmetric`` hint gets ``support_symmetric or symmetric``), and checked on the whole.

    After solving, one more matvec gives the relative residual ‖A x − b‖ / ‖b‖ (for a
    least-squares solver such as ``normal_cg``, ‖Aᵀ(A x − b)‖ / ‖Aᵀb‖). It fails when it
    is not finite or exceeds max(100 tol, 1000 eps), tol the solver's declared tolerance
    (:func:`implicitdiff.linear_solve.spec`, default ``linear_solve.default_tol``). Then
    ``on_failure`` decides: "warn" (the default) warns with the residual at run time, "raise"
    raises :class:`BackwardSolveError` (wrapped by JAX in a ``JaxRuntimeError``), "nan" returns
    NaN, "ignore" skips the check, and "fallback" solves the system again in the least-squares
    sense (:func:`least_squares_fallback`) and warns that it did.
    """
    if on_failure not in POLICIES:
        raise ValueError(f"on_failure must be one of {POLICIES}, got {on_failure!r}")
    spec = linear_solve.spec(solve)
    # The engine transposes the system itself (its own custom_linear_solve).
    fun = spec.direct if spec.direct is not None else spec.fun
    base = fun
    if symmetric and spec.takes_symmetric:
        base = functools.partial(base, symmetric=True)
    support_base = fun
    if (symmetric or support_symmetric) and spec.takes_symmetric:
        support_base = functools.partial(support_base, symmetric=True)
    name = spec.name

    def checked(matvec, b, support=None):
        if support is None:
            x = base(matvec, b)
        else:
            x = _support.solve_on_support(support_base, matvec, b, support)
        check_same_structure(b, x, f"solve ({name})", "its right-hand side b")
        if on_failure == "ignore":
            return x
        dtype = tree.dtype(b)
        tol = spec.tol if spec.tol is not None else linear_solve.default_tol(dtype)
        threshold = max(100.0 * tol, 1000.0 * float(jnp.finfo(dtype).eps))
        r = tree.sub(matvec(x), b)
        if spec.least_squares:  # a least-squares solver only makes the normal residual vanish
            transpose = jax.linear_transpose(matvec, b)
            r, b = transpose(r)[0], transpose(b)[0]
        residual = _relative_residual(r, b)
        failed = jnp.logical_not(residual <= threshold)  # True for NaN too
        if on_failure == "nan":
            return tree.map(lambda leaf: _checks.nan_unless(jnp.logical_not(failed), leaf), x)
        site = _user_site()  # the user's line, for a callback that runs on another thread
        if on_failure == "fallback":
            # The fallback is dense (exact minimum-norm SVD) whenever a dense matrix is allowed,
            # whatever auto's cost estimate chose for the failed solve: it runs only on failure.
            dense = tree.size(b) <= linear_solve.DENSE_MAX_SIZE
            zero = jnp.zeros((), residual.dtype)
            x, fallback_residual, ridge = jax.lax.cond(
                failed,
                lambda: least_squares_fallback(matvec, b, dense),
                lambda: (x, zero, zero),
            )
            fallback_failed = failed & jnp.logical_not(fallback_residual <= threshold)
            values = (residual, fallback_residual, fallback_failed, ridge)
            return _report_if(_fallback_report(dense, site), x, failed, values)
        return _report_if(_failure_report(on_failure, site), x, failed, (residual,))

    return checked


def engine_solve(
    fun: Callable, solve: Any, symmetric: bool | None, on_failure: str
) -> tuple[bool, Callable, Callable]:
    """What the engine needs of a condition ``fun`` and the user's options: (the symmetric hint,
    the checked solve ``solve(matvec, b, support=None)``, ``mask_at``).

    The hint is the ``symmetric`` option if given, else what a
    :class:`~implicitdiff._condition.Condition` states. ``mask_at(x, *args, **kwargs)`` is the
    support S that the condition states at (x, θ) (a pytree of booleans, cut from the graph), or
    None when it states none (:func:`~implicitdiff._condition.support_of`)."""
    hint = is_symmetric(fun, symmetric)
    support, support_symmetric = support_of(fun)

    def mask_at(x, *args, **kwargs):
        return None if support is None else tree.stop_gradient(support(x, *args, **kwargs))

    return hint, checked_solve(solve, hint, on_failure, support_symmetric), mask_at
