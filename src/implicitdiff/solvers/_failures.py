"""How a solver's run ends and what happens when it fails: the :class:`Status` codes,
:class:`SolverWarning` and :class:`SolverError`, the ``on_failure`` policies and their messages.

:func:`apply_failure_policy` is applied by ``run`` (:mod:`implicitdiff.solvers._base`) to the
state of every finished run: it reads ``state.converged`` (and ``state.status``, ``error``,
``iter_num``), then warns, raises, or leaves only the flag, as the policy and the context (plain
Python, or inside a JAX transformation) say.
"""

from __future__ import annotations

import enum
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify, io_callback

from implicitdiff import tree
from implicitdiff._args import is_traced
from implicitdiff._backward_check import POLICIES as _BACKWARD_POLICIES
from implicitdiff._backward_check import user_site, warn_at_site

__all__ = [
    "SolverError",
    "SolverWarning",
    "Status",
    "apply_failure_policy",
    "check_failure_policies",
]


class Status(enum.IntEnum):
    """Why a solver stopped: the codes of ``state.status`` (a jnp.int32 scalar).

    ``state.converged`` is True exactly when the status is ``CONVERGED``. Compare with the
    members (``state.status == Status.NONFINITE``) or name a code: ``Status(int(code)).name``.
    OSQP's codes 0–3 are the first four, unchanged.
    """

    #: ``state.error`` ≤ tol at a finite iterate.
    CONVERGED = 0
    #: ``maxiter`` iterations without reaching tol (during a hand-driven loop: not yet done).
    MAX_ITERATIONS = 1
    #: OSQP: a certificate that the constraints cannot be satisfied.
    PRIMAL_INFEASIBLE = 2
    #: OSQP: a certificate that the objective is unbounded below (the dual is infeasible).
    DUAL_INFEASIBLE = 3
    #: The error became NaN or ±inf (the loop stops at once), or the iterate is not finite.
    NONFINITE = 4
    #: Stopped before maxiter without reaching tol: no further progress possible (a bisection
    #: bracket that floating point cannot split any more), or stopped after a step that the
    #: step-size search did not accept (proximal and projected gradient: f not finite or not
    #: decreasing at every trial, where the error measured with that step means nothing).
    STALLED = 5
    #: The problem was rejected at the start (a bisection bracket without a sign change).
    INVALID_INPUT = 6


_FAILURE_POLICIES = ("auto", "ignore", "warn", "raise")


class SolverWarning(RuntimeWarning):
    """A solver's run did not converge (``on_failure="warn"``, or ``"auto"`` outside a trace)."""


class SolverError(RuntimeError):
    """A solver's run did not converge (``on_failure="raise"`` outside a JAX trace)."""


# ---------------------------------------------------------------------------------------------
# What happens when a run does not converge.


def check_failure_policies(owner: str, on_failure: Any, backward_on_failure: Any) -> None:
    """Raise a ValueError naming the option if either policy is not a known one."""
    if on_failure not in _FAILURE_POLICIES:
        raise ValueError(
            f"{owner}: on_failure must be one of {_FAILURE_POLICIES}, got {on_failure!r}"
        )
    if backward_on_failure not in _BACKWARD_POLICIES:
        raise ValueError(
            f"{owner}: backward_on_failure must be one of {_BACKWARD_POLICIES}, got "
            f"{backward_on_failure!r}"
        )


def _tolerance(solver: Any) -> Any:
    for name in ("error_tol", "tol"):
        value = getattr(solver, name, None)
        if isinstance(value, (int, float)):
            return value
    return None


def _status_label(code: int, status_codes: bool) -> str:
    if status_codes:
        try:
            return f"status {code} ({Status(code).name})"
        except ValueError:
            pass
    return f"status {code}"


def _failure_message(
    solver: Any, converged, error, iter_num, status, status_codes: bool
) -> str | None:
    """The message for a failed run (batched values: one line for all), None if all converged.

    ``status_codes``: the solver's status codes are :class:`Status` codes (an iterative
    solver), named in the message with a remedy.
    """
    failed = np.logical_not(np.asarray(converged, dtype=bool)).reshape(-1)
    if not failed.any():
        return None
    error = np.broadcast_to(np.asarray(error, dtype=float), np.shape(converged)).reshape(-1)
    iter_num = np.broadcast_to(np.asarray(iter_num), np.shape(converged)).reshape(-1)
    codes = [] if status is None else np.asarray(status).reshape(-1)[failed].tolist()
    name = type(solver).__name__
    tol = _tolerance(solver)
    tol_text = "" if tol is None else f" (tol {tol:g})"
    if failed.size == 1:
        message = f"{name}.run did not converge: "
        if codes:
            message += _status_label(int(codes[0]), status_codes) + ", "
        message += f"error {error[0]:.3e}{tol_text}"
        # (−1: a host solver that reports no iteration count)
        message += f" after {int(iter_num[0])} iterations." if iter_num[0] >= 0 else "."
    else:
        message = f"{name}.run did not converge on {int(failed.sum())} of {failed.size} problems"
        if codes:
            message += (
                " (" + ", ".join(_status_label(c, status_codes) for c in sorted(set(codes))) + ")"
            )
        worst = np.nan_to_num(error[failed], nan=np.inf).max()
        message += f"; largest error {worst:.3e}{tol_text}."
    if status_codes:
        hints = [_HINTS[c] for c in sorted(set(codes)) if c in _HINTS]
        if hints:
            message += " Remedy: " + "; ".join(hints) + "."
    return message + " on_failure='ignore' leaves only the flag state.converged."


_HINTS = {
    Status.MAX_ITERATIONS: "a larger maxiter, or a looser tol",
    Status.PRIMAL_INFEASIBLE: "the constraints cannot be satisfied: check the data",
    Status.DUAL_INFEASIBLE: "the objective is unbounded below: check the data",
    Status.NONFINITE: "finite data and starting point, or a smaller step",
    Status.STALLED: (
        "a looser tol (the solver could not make further progress); where a step-size search "
        "found no acceptable step, check that f is finite at the iterate"
    ),
    Status.INVALID_INPUT: "see the solver's documentation for what it requires",
}


def _warn_from_user_code(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first caller outside this package."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def apply_failure_policy(solver: Any, step: Any, *, status_codes: bool) -> Any:
    """Apply ``solver.on_failure`` to the state of a finished run (``step``, its ``OptStep``),
    then return the run as is. ``status_codes``: the state's status codes are :class:`Status`
    codes (an iterative solver), named in the messages.

    The flag is *known* when ``converged`` is not a tracer once derivatives are stopped: a plain
    call, and eager ``grad`` / ``jacobian`` / ``jvp`` (a boolean carries no derivative). Then one
    boolean is read back to the host (no callback in the compiled program) and "auto" and "warn"
    warn once, at the user's line. Inside ``jit`` or ``vmap`` the flag is traced: "auto" leaves
    only the flag, "warn" routes ``params`` through a ``pure_callback`` behind a ``lax.cond``
    that warns once per call (once per batch under ``vmap``) at the line that traced the run,
    and "raise" adds a ``checkify.check``.
    """
    policy = getattr(solver, "on_failure", "ignore")
    state = step.state
    converged = getattr(state, "converged", None)
    if policy == "ignore" or converged is None:
        return step
    status = getattr(state, "status", None)
    # (Unrolled runs carry derivatives in the error: stopped, it is concrete under eager grad.)
    values = (converged, state.error, state.iter_num, status)
    if is_traced(values):
        values = tree.stop_gradient(values)
    converged, error, iter_num, status = values
    if not is_traced(values):
        message = _failure_message(solver, converged, error, iter_num, status, status_codes)
        if message is None:
            return step
        if policy == "raise":
            raise SolverError(message)
        _warn_from_user_code(message, SolverWarning)
        return step
    if policy == "auto":
        return step
    if policy == "warn":
        site = user_site()  # the user's line that traced the run

        def report(failed, error, iter_num, *status):
            message = _failure_message(
                solver,
                np.logical_not(failed),
                error,
                iter_num,
                status[0] if status else None,
                status_codes,
            )
            if message is not None:
                warn_at_site(message, site, SolverWarning)

        extra = () if status is None else (status,)
        failed = jnp.logical_not(jnp.asarray(converged, bool))
        _report_once(report)(failed, error, iter_num, *extra)
        return step
    # "raise" inside a trace: JAX's own checking machinery. Under checkify.checkify the error is
    # functionalized (err.throw() raises it); eagerly under vmap or grad it raises at once; under
    # a jit without checkify, JAX refuses to compile and says to use checkify.
    tol = _tolerance(solver)
    text = f"{type(solver).__name__}.run did not converge: "
    fmt = {"error": jnp.asarray(error), "iter_num": jnp.asarray(iter_num)}
    if status is not None:
        text += "status {status}, "
        fmt["status"] = jnp.asarray(status)
    text += "error {error}" + ("" if tol is None else f" (tol {tol:g})")
    text += " after {iter_num} iterations (see implicitdiff.solvers.Status for the codes)."
    checkify.check(jnp.asarray(converged, bool), text, **fmt)
    return step


def _report_once(host: Callable) -> Callable:
    """``report(*values)``: calls ``host(*values)`` on the host through an unordered
    ``io_callback`` (an effect, so the compiler keeps it even when no result of the run is used,
    as under ``jit(grad)``); under ``vmap``, once for the whole batch, not once per element."""

    @jax.custom_batching.custom_vmap
    def report(*values):
        io_callback(host, None, *values, ordered=False)
        return values[0]

    @report.def_vmap
    def report_batched(axis_size, in_batched, *values):
        values = [
            v if batched else jnp.broadcast_to(v, (axis_size, *jnp.shape(v)))
            for v, batched in zip(values, in_batched, strict=True)
        ]
        return report(*values), True

    return report
