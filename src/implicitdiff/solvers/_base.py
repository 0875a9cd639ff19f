"""The solver protocol and the one loop every solver runs.

A solver is configured once, then ``solver.run(init_params, *args, **kwargs)`` returns an
:class:`OptStep` ``(params, state)``. Users who drive the loop themselves call
``state = solver.init_state(init_params, *args)`` and ``params, state = solver.update(params,
state, *args)``.

Differentiation is added in one place, :meth:`IterativeSolver.run`: with ``implicit_diff=True``
(the default) the loop is wrapped by :func:`implicitdiff.custom_root` or
:func:`implicitdiff.custom_fixed_point` with the solver's own condition from
:mod:`implicitdiff.optimality`, and the iterations are never differentiated; with
``implicit_diff=False`` the loop runs a fixed ``maxiter`` masked steps in a ``lax.scan`` that
JAX differentiates step by step (unrolling), optionally checkpointed to bound its memory.

How a run ended is data, in the state: ``state.converged`` (False for every failure),
``state.error`` and ``state.status``, a :class:`Status` code saying which failure. The loop stops
early when the error stops being finite. What else happens on a failure is the
solver's ``on_failure`` policy (see :class:`IterativeSolver`), applied by ``run``.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import enum
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify, io_callback

from implicitdiff import _checks, _loop, linear_solve, tree
from implicitdiff._args import ArgsSplit, is_traced
from implicitdiff._backward_check import POLICIES as _BACKWARD_POLICIES
from implicitdiff._backward_check import user_site, warn_at_site
from implicitdiff._typing import PyTree
from implicitdiff.implicit import custom_fixed_point, custom_root

__all__ = [
    "DifferentiableRun",
    "IterativeSolver",
    "OptStep",
    "SolverError",
    "SolverWarning",
    "Status",
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
    #: bracket that floating point cannot split any more).
    STALLED = 5
    #: The problem was rejected at the start (a bisection bracket without a sign change).
    INVALID_INPUT = 6


_FAILURE_POLICIES = ("auto", "ignore", "warn", "raise")


class SolverWarning(RuntimeWarning):
    """A solver's run did not converge (``on_failure="warn"``, or ``"auto"`` outside a trace)."""


class SolverError(RuntimeError):
    """A solver's run did not converge (``on_failure="raise"`` outside a JAX trace)."""


class OptStep(NamedTuple):
    """What ``run`` and ``update`` return: unpacks as ``params, state``.

    Attributes:
      params: the iterate, or the solution (a pytree; a :class:`KKTSolution` for the QP solvers).
      state: the solver's state, a ``NamedTuple`` (``iter_num``, ``error``, ``converged``, ...).
    """

    params: PyTree
    state: Any


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


def _status_label(solver: Any, code: int) -> str:
    if isinstance(solver, IterativeSolver):
        try:
            return f"status {code} ({Status(code).name})"
        except ValueError:
            pass
    return f"status {code}"


def _failure_message(solver: Any, converged, error, iter_num, status) -> str | None:
    """The message for a failed run (batched values: one line for all), None if all converged."""
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
            message += _status_label(solver, int(codes[0])) + ", "
        message += f"error {error[0]:.3e}{tol_text} after {int(iter_num[0])} iterations."
    else:
        message = f"{name}.run did not converge on {int(failed.sum())} of {failed.size} problems"
        if codes:
            message += " (" + ", ".join(_status_label(solver, c) for c in sorted(set(codes))) + ")"
        worst = np.nan_to_num(error[failed], nan=np.inf).max()
        message += f"; largest error {worst:.3e}{tol_text}."
    if isinstance(solver, IterativeSolver):
        hints = [_HINTS[c] for c in sorted(set(codes)) if c in _HINTS]
        if hints:
            message += " Remedy: " + "; ".join(hints) + "."
    return message + " on_failure='ignore' leaves only the flag state.converged."


_HINTS = {
    Status.MAX_ITERATIONS: "a larger maxiter, or a looser tol",
    Status.PRIMAL_INFEASIBLE: "the constraints cannot be satisfied: check the data",
    Status.DUAL_INFEASIBLE: "the objective is unbounded below: check the data",
    Status.NONFINITE: "finite data and starting point, or a smaller step",
    Status.STALLED: "a looser tol (the solver could not make further progress)",
    Status.INVALID_INPUT: "see the solver's documentation for what it requires",
}


def _warn_from_user_code(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first caller outside this package."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _apply_failure_policy(solver: Any, step: OptStep) -> OptStep:
    """Apply ``solver.on_failure`` to the state of a finished run, then return the run as is.

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
        message = _failure_message(solver, converged, error, iter_num, status)
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
                solver, np.logical_not(failed), error, iter_num, status[0] if status else None
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


COMPILE_CACHE_SIZE = 32
"""The most compiled ``run`` programs kept (all solvers together); the least recently used goes.

Keys are (the solver's fields but ``on_failure``, the static part of the arguments), so equal
solvers share a compilation and a program can never outlive the settings it was built from."""


class LRU(collections.OrderedDict):
    """A dict holding at most ``maxsize`` items: reading an item renews it, writing one past the
    bound drops the least recently used."""

    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = maxsize

    def get(self, key, default=None):
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


#: The compiled ``run`` programs of every solver (see :data:`COMPILE_CACHE_SIZE`).
_COMPILED = LRU(COMPILE_CACHE_SIZE)


class _CompiledView:
    """``solver._compiled``: the solver's entries of the shared cache :data:`_COMPILED`, read and
    written by the static key of the arguments alone."""

    def __init__(self, solver: Any):
        self._prefix = solver._compile_key()

    def get(self, key, default=None):
        return _COMPILED.get((self._prefix, key), default)

    def __setitem__(self, key, value):
        _COMPILED[(self._prefix, key)] = value

    def __len__(self) -> int:
        return sum(1 for prefix, _ in _COMPILED if prefix == self._prefix)


class _Unhashable:
    """Stands for a field value that cannot be hashed (an array, ...): equal only to itself."""

    __slots__ = ("ident",)

    def __init__(self, value: Any):
        self.ident = id(value)

    def __eq__(self, other):
        return isinstance(other, _Unhashable) and other.ident == self.ident

    def __hash__(self):
        return hash(self.ident)


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a field value: the value if hashable, dicts and sequences by their
    frozen items, anything else (an array) by identity."""
    try:
        hash(value)
    except TypeError:
        pass
    else:
        return value
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return (dict, tuple((k, _freeze(v)) for k, v in items))
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_freeze(v) for v in value))
    return _Unhashable(value)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class DifferentiableRun(abc.ABC):
    """``run`` for every solver: ``self._solution`` wrapped for implicit differentiation, jitted.

    Solvers are frozen dataclasses: set once at construction, changed by
    ``dataclasses.replace(solver, maxiter=...)`` (a new solver), compared and hashed on their
    fields. A subclass provides ``_solution(init_params, *args, **kwargs) -> (params, state)``
    and ``optimality() -> ("root", F) | ("fixed_point", T)``, and sets any derived attribute of
    its own in ``__post_init__`` with ``object.__setattr__``.

    The differentiation settings below are shared by every solver (one definition, JAXopt's
    names where JAXopt has them) and keyword-only:

    Attributes:
      implicit_diff: differentiate the solution implicitly through the solver's optimality
        condition (True, the default); what False means is the solver's (an iterative solver
        unrolls its iterations, a host solver returns a result without derivative).
      solve: the linear solver of the implicit derivative (see :func:`implicitdiff.custom_root`).
      jit: compile ``run`` (the default), once per shape and dtype of the arguments. Arrays and
        numbers are traced as ``jax.jit`` traces them; other arguments (strings, callables,
        ...) are compile-time constants: they must be hashable, and a new value recompiles.
      on_failure: what ``run`` does when the run did not converge (``state.converged`` False,
        whatever the cause: see :class:`Status`).

        - ``"auto"`` (the default): one :class:`SolverWarning`, at the caller's line, when the
          flag is known while Python runs: a call outside any transformation, or under eager
          ``grad`` / ``jacobian`` / ``jvp`` (a boolean carries no derivative). The check reads
          one boolean back from the device after the compiled solve: no host callback in the
          compiled program. Inside ``jit`` or ``vmap`` (the flag is traced) only the flag in
          the state, so that the user's compiled program keeps JAX's fast dispatch.
        - ``"ignore"``: only the flag in the state.
        - ``"warn"``: one :class:`SolverWarning` per failing call in every context (one per
          batch under ``vmap``), at the line that called (or traced) ``run``; inside ``jit`` it
          comes from a host callback (``io_callback``), which costs about 0.1–0.2 ms per call of
          the compiled program (it disables JAX's C++ fast dispatch).
        - ``"raise"``: outside a transformation, a :class:`SolverError`. Inside one, a
          ``jax.experimental.checkify.check``: under ``checkify.checkify`` the error is returned
          as data and ``err.throw()`` raises it; eagerly under ``vmap`` or ``grad`` it raises at
          once (checkify's ``JaxRuntimeError``); inside a ``jit`` that ``checkify`` does not
          wrap, JAX refuses to compile the program, with an error saying to use
          ``checkify.checkify``.
      backward_on_failure: the policy for the linear system of the implicit derivative, passed
        to :func:`implicitdiff.custom_root` as its ``on_failure`` (default ``"warn"``; also
        ``"raise"``, ``"nan"``, ``"ignore"``, ``"fallback"``).
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
        object.__setattr__(self, "_compiled", _CompiledView(self))

    def _field_key(self) -> tuple:
        """(type, every field frozen): what equality and the hash compare (computed once)."""
        key = self.__dict__.get("_fields_frozen")
        if key is None:
            fields = dataclasses.fields(self)
            key = (type(self), tuple((f.name, _freeze(getattr(self, f.name))) for f in fields))
            object.__setattr__(self, "_fields_frozen", key)
        return key

    def _compile_key(self) -> tuple:
        """The fields that the compiled ``run`` depends on: all but ``on_failure``, which acts
        on the returned state outside the compiled program."""
        kind, fields = self._field_key()
        return kind, tuple(item for item in fields if item[0] != "on_failure")

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, DifferentiableRun):
            return NotImplemented
        return self._field_key() == other._field_key()

    def __hash__(self) -> int:
        return hash(self._field_key())

    @abc.abstractmethod
    def _solution(self, init_params: PyTree, /, *args, **kwargs) -> tuple[PyTree, Any]:
        """Subclasses define it (see the class docstring)."""

    @abc.abstractmethod
    def optimality(self) -> tuple[str, Callable]:
        """The condition that the solution is differentiated through; each solver defines it.

        Returns:
          ``("root", F)`` for F(x, *args, **kwargs) = 0 at the solution
            (:func:`implicitdiff.custom_root`) or ``("fixed_point", T)`` for
            x = T(x, *args, **kwargs) (:func:`implicitdiff.custom_fixed_point`), with the arguments
            of ``run`` after ``init_params``.
        """

    def _differentiable_solution(self) -> Callable:
        if not self.implicit_diff:
            return self._solution
        kind, fun = self.optimality()
        decorator = custom_root if kind == "root" else custom_fixed_point
        backward = getattr(self, "backward_on_failure", "warn")
        return decorator(fun, has_aux=True, solve=self.solve, on_failure=backward)(self._solution)

    def run(self, init_params: PyTree, *args, **kwargs) -> OptStep:
        """Solve from ``init_params``.

        The solution is differentiable with respect to each argument after ``init_params`` (not with
        respect to ``init_params``). A run that did not converge is handled by the solver's
        ``on_failure`` policy (see :class:`IterativeSolver`).

        Args:
          init_params: the starting point, a pytree (each solver documents what it accepts).
          *args: the arguments of the solver's objective (or of its operators) after x, as each
            solver documents.
          **kwargs: their keyword arguments.

        Returns:
          ``OptStep(params, state)``: the solution and the solver's final state
            (``state.converged``, ``state.error``, ``state.iter_num``, and for the iterative solvers
            ``state.status``).
        """
        return _apply_failure_policy(self, self._run(init_params, *args, **kwargs))

    def _check_arguments(self, init_params: PyTree, args: tuple, kwargs: dict) -> None:
        """Checks of concrete arguments before the compiled run (subclasses; none here)."""
        del init_params, args, kwargs

    # run(init_params, *args, **kwargs): the names of run's own arguments after init_params, then
    # the parameters after the first of the user function named by ``_user_function``.
    _run_arguments = ()
    _user_function = "fun"

    def _run_signature(self) -> inspect.Signature | None:
        """The signature of ``run``'s arguments after ``init_params``, None if unknown."""
        fun = getattr(self, self._user_function, None) if self._user_function else None
        try:
            parameters = list(inspect.signature(fun).parameters.values()) if fun else []
        except (TypeError, ValueError):
            return None
        if fun is not None:
            if not parameters or parameters[0].kind is inspect.Parameter.VAR_POSITIONAL:
                return None
            parameters = parameters[1:]
        leading = [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for name in self._run_arguments
        ]
        if fun is None and not leading:
            return None
        try:
            return inspect.Signature([*leading, *parameters])
        except ValueError:  # a name used twice, or defaults out of order
            return None

    def _bind_keywords(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """(args, kwargs) with every keyword argument that the user function can take by
        position made positional, in the order of its signature (as JAXopt binds them).

        The solver's internals then receive the user's arguments positionally, so that no name
        of the user's (``x``, ``params``, ``state``, ...) can meet a name of theirs; only the
        user function's keyword-only and ``**kwargs`` arguments stay keywords, and the internal
        functions take their own arguments positionally only (``/``).
        """
        if not kwargs:
            return args, kwargs
        signature = self._run_signature()
        if signature is None:
            return args, kwargs
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:  # left to the solver's own check, which names the function
            return args, kwargs
        positional = {
            name
            for name, p in signature.parameters.items()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        }
        if positional & set(bound.kwargs):  # a default before a keyword argument: fill it in
            bound.apply_defaults()
        return tuple(bound.args), dict(bound.kwargs)

    def _vary_start(self, init_params: PyTree, args: tuple, kwargs: dict) -> PyTree:
        """Inside ``shard_map``: the start marked varying over every manual axis that the
        arguments, or the values of the user function (which may close over per-device data),
        vary over; the identity elsewhere.

        A start that is the same on every device (invariant) while the problem differs
        (varying) must be marked: differentiating an invariant value that feeds a varying
        output sums the derivative over the devices (JAX transposes the implicit broadcast into
        a ``psum``), so ∇f(x) would silently be the sum of every device's gradient.
        """
        if not _loop.manual_axes():
            return init_params
        reference = [args, kwargs]
        fun = getattr(self, self._user_function, None) if self._user_function else None
        if callable(fun):
            fun_args = args[len(self._run_arguments) :]
            try:
                reference.append(jax.eval_shape(fun, init_params, *fun_args, **kwargs))
            except Exception:  # a probe only: the solver reports bad input itself
                pass
        return _loop.vary_like(init_params, reference)

    def _run(self, init_params: PyTree, /, *args, **kwargs) -> OptStep:
        """``run`` without the failure policy."""
        _checks.check_init_params(init_params, f"{type(self).__name__}.run")
        args, kwargs = self._bind_keywords(args, kwargs)
        self._check_arguments(init_params, args, kwargs)
        init_params = self._vary_start(init_params, args, kwargs)
        solution = self._differentiable_solution()
        if not self.jit:
            return OptStep(*solution(init_params, *args, **kwargs))
        split = ArgsSplit(args, kwargs)
        key = split.key()
        try:
            compiled = self._compiled.get(key)
        except TypeError:
            raise TypeError(
                f"{type(self).__name__}.run: with jit=True, arguments that are not arrays must be "
                "hashable (they are compile-time constants); pass arrays, or jit=False"
            ) from None
        if compiled is None:

            def run_arrays(init_params, arrays):
                a, k = ArgsSplit.merge(key, arrays)
                return solution(init_params, *a, **k)

            compiled = self._compiled[key] = jax.jit(run_arrays)
        return OptStep(*compiled(init_params, split.arrays))


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class IterativeSolver(DifferentiableRun):
    """Base of every iterative solver.

    Subclasses are frozen dataclasses that define ``init_state``, ``update`` and ``optimality``;
    this class provides ``run``. Its options, and those of :class:`DifferentiableRun`, are
    keyword-only, so that a solver's own fields (``fun``, ...) come first positionally, in
    JAXopt's order (each solver documents its defaults):

    Attributes:
      maxiter: the most iterations (≥ 1).
      tol: stop when ``state.error`` ≤ tol (≥ 0).
      unroll_checkpoint: with ``implicit_diff=False``, recompute each iteration in the backward
        pass instead of storing it (``jax.checkpoint``): memory of one iteration's intermediates
        instead of ``maxiter`` of them, for about one more forward pass of time.
      implicit_diff: differentiate the solution implicitly through the solver's optimality
        condition (True, the default), or unroll the iterations (False).
      solve, jit, on_failure, backward_on_failure: see :class:`DifferentiableRun`.
    """

    maxiter: int = 500
    tol: float = 1e-3
    unroll_checkpoint: bool = False

    # Subclasses: state = init_state(params, *args); OptStep = update(params, state, *args);
    # optimality() -> ("root", F) or ("fixed_point", T), F and T taking (params, *args).

    @abc.abstractmethod
    def init_state(self, init_params: PyTree, /, *args, **kwargs) -> Any:
        """The state before the first iteration; each solver defines it.

        Args:
          init_params: the starting point x₀, a pytree.
          *args: the problem's arguments, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          The solver's state, a ``NamedTuple`` with at least ``iter_num`` (0), ``error``
            (the stopping measure) and ``converged`` (False), and ``status`` (a :class:`Status`
            code).
        """

    @abc.abstractmethod
    def update(self, params: PyTree, state: Any, /, *args, **kwargs) -> OptStep:
        """One iteration; each solver defines it.

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          *args: the problem's arguments, as in ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: the next iterate and its state (``iter_num`` + 1).
        """

    def __post_init__(self):
        if not (isinstance(self.maxiter, int) and self.maxiter >= 1):
            raise ValueError(f"maxiter must be a positive int, got {self.maxiter!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}")
        if not isinstance(self.unroll_checkpoint, bool):
            raise TypeError(f"unroll_checkpoint must be a bool, got {self.unroll_checkpoint!r}")
        super().__post_init__()

    # -- the loop ---------------------------------------------------------------------------

    def _done(self, state) -> jax.Array:
        return (state.iter_num >= self.maxiter) | (state.error <= self.tol)

    def _stop(self, params, state) -> jax.Array:
        """Leave the loop: ``_done``, or a non-finite error (no use going on).

        Only the scalar error is tested in the loop: every solver's error is a norm computed from
        its current iterate, so a NaN or inf there shows in it, and testing the whole iterate at
        every step costs up to 60% of a cheap iteration on 10⁴ unknowns (measured); the iterate
        itself is tested once, at exit (:meth:`_finish`). An infinite error before the first
        iteration is the "not measured yet" of the solvers that start from error = inf.
        """
        del params
        error = state.error
        broken = jnp.isnan(error) | (jnp.isinf(error) & (state.iter_num > 0))
        return self._done(state) | broken

    def _finish(self, params, state):
        """The state at exit: ``converged`` and ``status`` (see :class:`Status`).

        converged = error ≤ tol, a finite error and iterate, and no failure the solver itself
        detected (a status ≥ 2 set by its ``update``, as OSQP's infeasibility). Otherwise the
        status is the solver's own failure if any, else NONFINITE, else MAX_ITERATIONS if the
        iterations are spent, else STALLED. A state without a ``status`` field only gets
        ``converged``.
        """
        has_status = "status" in getattr(state, "_fields", ())
        own = jnp.asarray(state.status if has_status else Status.MAX_ITERATIONS, jnp.int32)
        own_failure = own >= Status.PRIMAL_INFEASIBLE
        finite = jnp.isfinite(state.error) & _finite(params)
        converged = (state.error <= self.tol) & finite & jnp.logical_not(own_failure)
        state = state._replace(converged=converged)
        if not has_status:
            return params, state
        status = jnp.where(
            converged,
            Status.CONVERGED,
            jnp.where(
                own_failure,
                own,
                jnp.where(
                    jnp.logical_not(finite),
                    Status.NONFINITE,
                    jnp.where(
                        state.iter_num >= self.maxiter, Status.MAX_ITERATIONS, Status.STALLED
                    ),
                ),
            ),
        ).astype(jnp.int32)
        return params, state._replace(status=status)

    def _solution(self, init_params, /, *args, **kwargs):
        return self._iterate(init_params, *args, **kwargs)

    def _iterate(self, init_params, /, *args, **kwargs):
        state = self.init_state(init_params, *args, **kwargs)

        def step(carry):
            params, state = carry
            return tuple(self.update(params, state, *args, **kwargs))

        if self.implicit_diff:
            carry = _loop.while_loop(
                lambda carry: jnp.logical_not(self._stop(*carry)), step, (init_params, state)
            )
        else:
            carry = self._unrolled(step, (init_params, state))
        return self._finish(*carry)

    def _broken(self, params, state) -> jax.Array:
        """No use iterating on: a non-finite error, or a failure the solver itself detected."""
        del params
        error = state.error
        broken = jnp.isnan(error) | (jnp.isinf(error) & (state.iter_num > 0))
        if "status" in getattr(state, "_fields", ()):
            broken = broken | (jnp.asarray(state.status) >= Status.PRIMAL_INFEASIBLE)
        return broken

    def _unrolled(self, step: Callable, start: tuple) -> tuple:
        """Unrolling: ``maxiter`` steps in a ``lax.scan`` that JAX differentiates step by step.

        Two copies of the iteration are carried. ``kept`` stops at the usual test (``_stop``)
        and gives every value returned (the iterate, ``iter_num``, the status), exactly as a
        stopped loop would; it carries no derivative. ``live`` does not stop at the tolerance
        (only on a non-finite error or a failure the solver detected) and carries the
        derivative: the stop test must not cut it. A loop that stops at once (a start at the
        solution with ``tol = 0``, or a coordinate already at its solution while the others
        converge) would otherwise return the derivative of the start (0) or of a few steps:
        continued, the derivative iterates of the linearized update converge to the implicit
        derivative, at the update's own rate. The returned iterate is ``kept``'s value with
        ``live``'s derivative (they coincide until ``kept`` stops). Same work per step as a
        single masked loop (one ``update``).
        """

        def masked_step(carry, _):
            live, kept = carry
            params, state = step(live)
            # The error is a stopping measure: no derivative (a norm has none at an exact 0).
            moved = (params, state._replace(error=jax.lax.stop_gradient(state.error)))
            live = tree.where(jax.lax.stop_gradient(self._broken(*live)), live, moved)
            stopped = self._stop(*kept)
            kept = tree.where(stopped, kept, jax.lax.stop_gradient(moved))
            return (live, kept), None

        if self.unroll_checkpoint:
            masked_step = jax.checkpoint(masked_step)
        (live, kept), _ = _loop.scan(
            masked_step, (start, jax.lax.stop_gradient(start)), None, length=self.maxiter
        )

        def merge(live_leaf, kept_leaf):
            if not jnp.issubdtype(jnp.result_type(kept_leaf), jnp.inexact):
                return kept_leaf
            return _value_with_derivative_of(kept_leaf, live_leaf)

        return jax.tree_util.tree_map(merge, live, kept)


@jax.custom_jvp
def _value_with_derivative_of(value: jax.Array, carrier: jax.Array) -> jax.Array:
    """``value`` exactly, with the derivative of ``carrier`` (same shape and dtype)."""
    del carrier
    return value


@_value_with_derivative_of.defjvp
def _value_with_derivative_of_jvp(primals, tangents):
    value, _ = primals
    _, carrier_tangent = tangents
    return value, carrier_tangent


def _finite(params: PyTree) -> jax.Array:
    """Whether every entry of a pytree is finite (True for an empty one)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params)]
    return jnp.all(jnp.asarray(leaves)) if leaves else jnp.asarray(True)
