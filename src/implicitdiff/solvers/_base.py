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
solver's ``on_failure`` policy (see :class:`IterativeSolver`), applied by ``run``
(:mod:`implicitdiff.solvers._failures`). Compiled programs are kept in one cache shared by all
solvers (:mod:`implicitdiff.solvers._compile_cache`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _loop, _summary, linear_solve, optimality, tree
from implicitdiff._args import ArgsSplit
from implicitdiff._typing import PyTree
from implicitdiff.implicit import custom_fixed_point, custom_root
from implicitdiff.solvers import _dtypes, _run_options, _state_fields
from implicitdiff.solvers._compile_cache import CompiledView, freeze
from implicitdiff.solvers._failures import Status, apply_failure_policy, check_failure_policies
from implicitdiff.solvers._jaxopt_options import refuse_jaxopt_options
from implicitdiff.solvers._run_options import bind_leading
from implicitdiff.solvers._unroll import UnrolledLoop

__all__ = ["DifferentiableRun", "IterativeSolver", "OptStep", "positional_method"]


class OptStep(NamedTuple):
    """What ``run`` and ``update`` return: unpacks as ``params, state``.

    Attributes:
      params: the iterate, or the solution (a pytree; a :class:`KKTSolution` for the QP solvers).
      state: the solver's state, a ``NamedTuple`` (``iter_num``, ``error``, ``converged``, ...).
    """

    params: PyTree
    state: Any

    __repr__ = _summary.namedtuple_repr


def _rebuild(cls: type, fields: dict) -> Any:
    """A solver from its constructor's fields (unpickling; see DifferentiableRun.__reduce__)."""
    return cls(**fields)


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
        ``jit=False`` runs eagerly: an iterative solver's loop (with ``implicit_diff=True``) is
        then a Python loop on concrete arrays when no transformation traces the arguments, so
        that a ``fun`` written with NumPy alone works (as JAXopt's ``jit=False``). Its
        derivatives still need the optimality condition to be a JAX function (traceable).
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
      implicit_diff_solve: JAXopt's name for ``solve`` (a callable ``solve(matvec, b) -> x``,
        such as :func:`implicitdiff.linear_solve.solve_cg`, or a name), so that JAXopt code
        runs unchanged; give one of the two (both, unless the same object: ValueError).
    """

    implicit_diff: bool = True
    solve: str | Callable | None = None
    jit: bool = True
    on_failure: str = "auto"
    backward_on_failure: str = "warn"
    implicit_diff_solve: str | Callable | None = None

    # (name, what) of the option that JAXopt calls ``solve`` in a solver where JAXopt's solve
    # is not the implicit derivative's (EqualityConstrainedQP, IterativeRefinement): solve=
    # is then refused, naming both options (None: solve= is the derivative's, as JAXopt's
    # implicit_diff_solve).
    _jaxopt_solve_is = None

    def __new__(cls, *args, **kwargs):
        # JAXopt's options that no field takes: a TypeError naming the alternative.
        refuse_jaxopt_options(cls, kwargs)
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs):
        # Each subclass's own __post_init__ first checks the types of the numeric options
        # (fields annotated int / float), so that its range checks meet numbers only.
        super().__init_subclass__(**kwargs)
        post_init = cls.__dict__.get("__post_init__")
        if post_init is not None:
            cls.__post_init__ = _checks.checking_numeric_fields(post_init)

    def __post_init__(self):
        _checks.check_numeric_fields(self)
        owner = type(self).__name__
        if not isinstance(self.implicit_diff, bool):
            raise TypeError(f"{owner}: implicit_diff must be a bool, got {self.implicit_diff!r}")
        if not isinstance(self.jit, bool):
            raise TypeError(f"{owner}: jit must be a bool, got {self.jit!r}")
        if self.implicit_diff_solve is not None:
            if self.solve is not None and self.solve is not self.implicit_diff_solve:
                raise ValueError(
                    f"{owner}: solve= and implicit_diff_solve= (JAXopt's name for solve=) are "
                    "both given; pass one of them"
                )
            try:
                linear_solve.resolve(self.implicit_diff_solve)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{owner}: implicit_diff_solve: {error}") from None
        inner = type(self)._jaxopt_solve_is
        if inner is not None and self.solve is not None:
            raise TypeError(
                f"{owner}: solve= is refused here, as its meaning differs from JAXopt's: in "
                f"JAXopt, {owner}'s solve is the {inner[1]} linear solver, {inner[0]}= here; "
                "solve= is the implicit derivative's linear solver in every solver here. Pass "
                f"{inner[0]}= for JAXopt's solve=, or implicit_diff_solve= for the implicit "
                "derivative's"
            )
        linear_solve.resolve(self.solve)  # an unknown name raises here, naming solve
        check_failure_policies(owner, self.on_failure, self.backward_on_failure)
        object.__setattr__(self, "_compiled", CompiledView(self))

    def _field_key(self) -> tuple:
        """(type, every field frozen): what equality and the hash compare (computed once)."""
        key = self.__dict__.get("_fields_frozen")
        if key is None:
            fields = dataclasses.fields(self)
            key = (type(self), tuple((f.name, freeze(getattr(self, f.name))) for f in fields))
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

    # A solver is immutable: a copy is itself (a deep copy rebuilt the private caches, which
    # failed for the host wrappers' LRU and made some copies unequal: a recompilation), and it
    # pickles as its constructor call, so that the caches and conditions built in
    # __post_init__ (local functions, which pickle cannot take) are rebuilt.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo: dict):
        return self

    def __reduce__(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return (_rebuild, (type(self), fields))

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

    # JAXopt's name of the first argument of ``optimality_fun`` ("sol" on some of its solvers).
    _solution_name = "params"

    def optimality_fun(self, *args, **kwargs) -> PyTree:
        """F(params, *args, **kwargs): the residual whose root is the solution (JAXopt's method).

        With the condition F = 0 of :meth:`optimality`, F; with the fixed point x = T(x),
        F(x) = T(x) − x (as JAXopt's fixed-point solvers). The arguments are those of ``run``
        with the solution first (``params``, or by JAXopt's keyword name of it).

        Args:
          *args: ``params`` (a solution candidate), then the arguments of ``run`` after
            ``init_params``.
          **kwargs: their keyword arguments.

        Returns:
          F(params, *args, **kwargs), a pytree (zero at a solution).
        """
        owner = f"{type(self).__name__}.optimality_fun"
        args, kwargs = bind_leading(owner, (self._solution_name,), args, kwargs)
        params, *args = args
        args, kwargs = self._bind_keywords(*self._fill_optional(tuple(args), kwargs))
        return self._optimality_residual(params, args, kwargs)

    def _optimality_residual(self, params: PyTree, args: tuple, kwargs: dict) -> PyTree:
        """F(params, *args, **kwargs) from :meth:`optimality` (arguments already bound)."""
        kind, condition = self.optimality()
        return _run_options.residual(kind, condition, params, args, kwargs)

    def l2_optimality_error(self, params: PyTree, *args, **kwargs) -> jax.Array:
        """‖F(params, *args, **kwargs)‖₂, the norm of :meth:`optimality_fun` (JAXopt's method).

        With the condition F = 0 of :meth:`optimality`, ‖F‖₂; with the fixed point x = T(x),
        ‖T(x) − x‖₂. Zero at a solution.

        Args:
          params: the point (a solution candidate).
          *args: the arguments of ``run`` after ``init_params``.
          **kwargs: their keyword arguments.

        Returns:
          The scalar ‖F(params, *args, **kwargs)‖₂.
        """
        args, kwargs = self._bind_keywords(*self._fill_optional(args, kwargs))
        return tree.norm(self._optimality_residual(params, args, kwargs))

    # Whether the first of ``_run_arguments`` is optional, None by default (JAXopt's
    # hyperparams_proj of ProjectedGradient and MirrorDescent).
    _run_argument_optional = False

    def _fill_optional(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """(args, kwargs) with the optional first run argument set to None if not given."""
        if not self._run_argument_optional or args or self._run_arguments[0] in kwargs:
            return args, kwargs
        return (None,), kwargs

    def _backward_solve(self) -> str | Callable | None:
        """The linear solver of the implicit derivative: ``solve``, or JAXopt's spelling."""
        return self.solve if self.solve is not None else self.implicit_diff_solve

    # Whether ``init_params`` may be complex: True for the minimizers of a real objective
    # ``fun`` whose optimality condition is ∇fun = 0 (see :mod:`implicitdiff.solvers._dtypes`).
    _complex_params = False
    _COMPLEX_SOLVERS = "GradientDescent, LBFGS and NonlinearCG"

    def _differentiable_solution(self) -> Callable:
        if not self.implicit_diff:
            # Unrolled: the params carry the derivative of the iterations (continued past the
            # stop, see UnrolledLoop); the state's value and aux get that of their function at
            # the returned params (the loop's own state stops being differentiated at the stop).

            def unrolled(init_params, /, *args, **kwargs):
                params, state = self._solution(init_params, *args, **kwargs)
                return params, self._state_with_derivatives(params, state, args, kwargs)

            return unrolled
        kind, fun = self.optimality()
        # The user's functions may compute in another float dtype: the condition's value in the
        # solution's dtype, where the derivative's linear system lives.
        fun = _dtypes.cast_output(fun)
        decorator = custom_root if kind == "root" else custom_fixed_point
        backward = getattr(self, "backward_on_failure", "warn")
        real = decorator(fun, has_aux=True, solve=self._backward_solve(), on_failure=backward)(
            self._solution
        )

        def solution(init_params, /, *args, **kwargs):
            if self._complex_params and _dtypes.complex_leaves(init_params):  # (static dtypes)
                params, state = self._complex_solution(init_params, args, kwargs, backward)
            else:
                params, state = real(init_params, *args, **kwargs)
            return params, self._state_with_derivatives(params, state, args, kwargs)

        return solution

    # How many of ``run``'s arguments after ``init_params`` come before those of the user's
    # function (ProximalGradient's hyperparams_prox, LBFGSB's bounds, ...).
    _leading_run_arguments = 0

    def _state_fields(self) -> tuple[tuple[str, ...], Callable]:
        """The state's fields that are functions of the solution and the problem's arguments
        alone: the objective's value (a solver with an ``Objective``) and the user function's
        aux (with ``has_aux``). Returns their names and ``fields(params, *args, **kwargs)``, a
        dict of them recomputed at ``params`` (``args`` those of the user's function, after
        ``_leading_run_arguments``). A solver that keeps them otherwise overrides this.
        """
        objective = getattr(self, "_objective", None)
        with_aux = getattr(self, "_with_aux", None)
        if objective is not None:

            def fields(params, /, *args, **kwargs):
                value, aux = objective.value_and_aux(params, *args, **kwargs)
                return {"value": value, "aux": aux}

            return ("value", "aux") if objective.has_aux else ("value",), fields
        if with_aux is not None and with_aux.has_aux:
            return ("aux",), lambda params, /, *a, **k: {"aux": with_aux.aux(params, *a, **k)}
        return (), lambda params, /, *args, **kwargs: {}

    def _state_with_derivatives(self, params: PyTree, state: Any, args: tuple, kwargs: dict):
        """The state of a differentiated run (implicit or unrolled): its fields that are
        functions of the solution (:meth:`_state_fields`) get the derivative of that composition
        at the returned params (:mod:`implicitdiff.solvers._state_fields`); the others have
        none."""
        names, fields = self._state_fields()
        present = getattr(state, "_fields", ())
        names = [n for n in names if n in present and getattr(state, n) is not None]
        if not names:
            return state
        kept = {name: getattr(state, name) for name in names}

        leading = self._leading_run_arguments

        def chosen(params, args, kwargs):
            out = fields(params, *args[leading:], **kwargs)
            return {name: out[name] for name in names}

        return state._replace(**_state_fields.with_derivative(chosen, kept, params, args, kwargs))

    def _complex_solution(self, init_params, args, kwargs, backward):
        """The implicitly differentiated run on complex params, on their real pairs (x, y):
        the condition ∇_(x,y) f = 0 there (symmetric Jacobian, ℝ-linear as the Hessian of a
        real function of z is), the solver itself on the complex params."""
        like, fun = init_params, self.fun

        def real_objective(pairs, /, *a, **k):
            return fun(_dtypes.from_real(pairs, like), *a, **k)

        def real_solution(pairs, /, *a, **k):
            params, state = self._solution(_dtypes.from_real(pairs, like), *a, **k)
            return _dtypes.to_real(params), state

        decorated = custom_root(
            optimality.stationary(real_objective),
            has_aux=True,
            solve=self._backward_solve(),
            on_failure=backward,
        )(real_solution)
        pairs, state = decorated(_dtypes.to_real(init_params), *args, **kwargs)
        return _dtypes.from_real(pairs, like), state

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
        step = self._run(init_params, *args, **kwargs)
        return apply_failure_policy(self, step, status_codes=self._status_codes)

    # Whether the solver's loops carry its iterate in one dtype: then params whose leaves mix
    # real precisions (float32 and float64) are solved in their common dtype and each leaf of
    # the solution is returned in its own (the others handle such pytrees as they are).
    _iterates_in_one_dtype = False

    # Whether ``state.status`` holds :class:`~implicitdiff.solvers.Status` codes (named in a
    # failure's message, with a remedy), rather than the codes of a host library (SciPy's).
    _status_codes = False

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
        if not self._complex_params:
            _dtypes.check_real_params(
                init_params, f"{type(self).__name__}.run", self._COMPLEX_SOLVERS
            )
        common = _dtypes.mixed_precision(init_params) if self._iterates_in_one_dtype else None
        if common is not None:  # solved in the common dtype, each leaf returned in its own
            step = self._run(tree.map(lambda v: v.astype(common), init_params), *args, **kwargs)
            return step._replace(params=_dtypes.cast_like(step.params, init_params))
        args, kwargs = self._bind_keywords(args, kwargs)
        self._check_arguments(init_params, args, kwargs)
        init_params = self._vary_start(init_params, args, kwargs)
        solution = self._differentiable_solution()
        if not self.jit:
            if self.implicit_diff and _run_options.untraceable(self, init_params, args, kwargs):
                solution = self._solution  # a NumPy-only condition: the run, no derivative
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
class IterativeSolver(UnrolledLoop, DifferentiableRun):
    """Base of every iterative solver.

    Subclasses are frozen dataclasses that define ``init_state``, ``update`` and ``optimality``;
    this class provides ``run``. Its options, and those of :class:`DifferentiableRun`, are
    keyword-only, so that a solver's own fields (``fun``, ...) come first positionally, in
    JAXopt's order (each solver documents its defaults):

    Attributes:
      maxiter: the most iterations (≥ 0; 0 returns the start, not converged, as JAXopt).
      tol: stop when ``state.error`` ≤ tol (≥ 0).
      unroll_checkpoint: with ``implicit_diff=False``, recompute each iteration in the backward
        pass instead of storing it (``jax.checkpoint``): memory of one iteration's intermediates
        instead of ``maxiter`` of them, for about one more forward pass of time.
      verbose: print ``state.iter_num`` and ``state.error`` after each iteration (a bool, or an
        int as JAXopt's: any nonzero value prints), with ``jax.debug.print``: it prints from the
        compiled loop too, in order (``jax.effects_barrier()`` waits for the lines).
      implicit_diff: differentiate the solution implicitly through the solver's optimality
        condition (True, the default), or unroll the iterations (False).
      unroll: JAXopt's option (``"auto"``, the default, True or False), accepted so that JAXopt
        code runs unchanged; the derivative is chosen by ``implicit_diff`` alone, as JAXopt's
        is whenever ``implicit_diff=True``. With ``implicit_diff=False`` the iterations are
        always unrolled in a ``lax.scan`` (forward and reverse mode), also with
        ``unroll=False``, where JAXopt's ``while_loop`` allows forward mode only.
      solve, jit, on_failure, backward_on_failure, implicit_diff_solve: see
        :class:`DifferentiableRun`.
    """

    maxiter: int = 500
    tol: float = 1e-3
    unroll_checkpoint: bool = False
    verbose: bool | int = False
    unroll: bool | str = "auto"

    # The name that ``verbose`` prints (None: the class's; an engine prints its owner's).
    _report_name = None
    _status_codes = True

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

    def __init_subclass__(cls, **kwargs):
        # JAXopt's init_state(init_params, ...) and update(params, state, ...) take their
        # leading arguments by keyword too: each subclass's own positional-only ones are made
        # keyword-able by a wrapper (its signature without the "/"). The loop calls the
        # positional-only originals, so that a keyword argument of the user's function named
        # like them never meets them (:func:`positional_method`).
        super().__init_subclass__(**kwargs)
        for name in ("init_state", "update"):
            function = cls.__dict__.get(name)
            if function is None or hasattr(function, "_positional"):
                continue
            parameters = list(inspect.signature(function).parameters.values())[1:]
            leading = tuple(p.name for p in parameters if p.kind is p.POSITIONAL_ONLY)
            if leading:
                setattr(cls, name, _keyword_leading(function, name, leading))

    def __post_init__(self):
        owner = type(self).__name__
        maxiter = self.maxiter
        if not (isinstance(maxiter, int) and not isinstance(maxiter, bool) and maxiter >= 0):
            raise ValueError(f"{owner}: maxiter must be an int ≥ 0, got {maxiter!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"{owner}: tol must be a non-negative number, got {self.tol!r}")
        if not isinstance(self.unroll_checkpoint, bool):
            raise TypeError(
                f"{owner}: unroll_checkpoint must be a bool, got {self.unroll_checkpoint!r}"
            )
        _run_options.check_verbose(type(self).__name__, self.verbose)
        if not (self.unroll == "auto" or isinstance(self.unroll, bool)):
            raise TypeError(
                f"{type(self).__name__}: unroll must be 'auto' or a bool (JAXopt's option), "
                f"got {self.unroll!r}"
            )
        super().__post_init__()

    # -- the loop ---------------------------------------------------------------------------

    def _done(self, state) -> jax.Array:
        return (state.iter_num >= self.maxiter) | (state.error <= self.tol)

    def _searches_its_step(self) -> bool:
        """Whether ``update`` chooses its step by a line search (see ``UnrolledLoop._unrolled``)."""
        return False

    def _continuation(self, /, *args, **kwargs) -> Any:
        """The map that unrolling continues the derivative with once the loop has stopped.

        None (the default): the solver's own ``update`` (see ``UnrolledLoop._unrolled``). A
        solver that searches its step returns a pair ``(stepsize, step)`` instead, for the problem's
        arguments ``*args, **kwargs`` (those of ``run`` after ``init_params``): ``stepsize(x)``,
        a positive constant η computed once at the stopped iterate x, and ``step(x, η)``, one
        step of a map T whose fixed points are the solver's solutions and whose linearization
        at the solution is a contraction (:mod:`implicitdiff.solvers._continuation`).
        """
        del args, kwargs
        return None

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
        ``converged``. A non-finite error or iterate makes the whole returned iterate NaN.
        """
        has_status = "status" in getattr(state, "_fields", ())
        own = jnp.asarray(state.status if has_status else Status.MAX_ITERATIONS, jnp.int32)
        own_failure = own >= Status.PRIMAL_INFEASIBLE
        # error = +inf before the first iteration is "not measured yet" (see _stop): a run of
        # maxiter=0 returns its start, not converged (MAX_ITERATIONS), as JAXopt's does.
        unmeasured = (state.error == jnp.inf) & (state.iter_num == 0)
        finite = (jnp.isfinite(state.error) | unmeasured) & _finite(params)
        converged = (state.error <= self.tol) & finite & jnp.logical_not(own_failure)
        state = state._replace(converged=converged)
        # A non-finite error with a finite iterate (NaN data: the error is NaN from the start and
        # the loop stops at x₀) returns NaN, not x₀: no finite point, and no finite derivative
        # computed at it, stands for a run that met NaN (under jit nothing else would show it).
        params = _checks.nan_unless_tree(finite, params)
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
        state = positional_method(self, "init_state")(init_params, *args, **kwargs)
        update = positional_method(self, "update")

        def step(carry):
            params, state = carry
            return tuple(update(params, state, *args, **kwargs))

        if self.implicit_diff:

            def reported_step(carry):
                carry = step(carry)
                if self.verbose:
                    _run_options.report(self._report_name or type(self).__name__, carry[1])
                return carry

            # jit=False on concrete arguments: a Python loop (a NumPy-only fun works).
            eager = not self.jit and _run_options.is_concrete(init_params, args, kwargs)
            loop = _run_options.eager_while_loop if eager else _loop.while_loop
            carry = loop(
                lambda carry: jnp.logical_not(self._stop(*carry)),
                reported_step,
                (init_params, state),
            )
        else:
            continuation = self._continuation(*args, **kwargs)
            carry = self._unrolled(step, (init_params, state), continuation)
            params, state = self._finish(*carry)
            # NaN data from the start: the derivative copy never moved, its tangent is a
            # symbolic zero, and NaN · 0 stays 0. The derivative in the inputs is NaN instead.
            inputs = [
                leaf
                for leaf in jax.tree_util.tree_leaves((init_params, args, kwargs))
                if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.inexact)
            ]
            return _checks.nan_unless_tree(_finite(params), params, inputs), state
        return self._finish(*carry)

    def _broken(self, params, state) -> jax.Array:
        """No use iterating on: a non-finite error, or a failure the solver itself detected."""
        del params
        error = state.error
        broken = jnp.isnan(error) | (jnp.isinf(error) & (state.iter_num > 0))
        if "status" in getattr(state, "_fields", ()):
            broken = broken | (jnp.asarray(state.status) >= Status.PRIMAL_INFEASIBLE)
        return broken


def positional_method(solver: Any, name: str) -> Callable:
    """``solver.init_state`` or ``solver.update`` (``name``) with its leading arguments taken by
    position only, as the solver defines it (what the loops call; a solver without the keyword
    wrapper: its method itself).

    Args:
      solver: an iterative solver.
      name: ``"init_state"`` or ``"update"``.

    Returns:
      The bound method, taking ``(init_params, *args, **kwargs)`` or ``(params, state, *args,
        **kwargs)`` with every keyword passed on to the problem's functions.
    """
    method = getattr(type(solver), name)
    return functools.partial(getattr(method, "_positional", method), solver)


def _keyword_leading(function: Callable, name: str, leading: tuple) -> Callable:
    """``function`` (a method whose parameters ``leading`` are positional-only) taking them by
    keyword too, with the signature and docstring of ``function`` without the ``/``."""

    @functools.wraps(function)
    def method(self, *args, **kwargs):
        owner = f"{type(self).__name__}.{name}"
        args, kwargs = bind_leading(owner, leading, args, kwargs)
        if self._iterates_in_one_dtype and args:
            _check_one_dtype(owner, leading[0], args[0])
        return function(self, *args, **kwargs)

    signature = inspect.signature(function)
    parameters = [
        p.replace(kind=p.POSITIONAL_OR_KEYWORD) if p.kind is p.POSITIONAL_ONLY else p
        for p in signature.parameters.values()
    ]
    method.__signature__ = signature.replace(parameters=parameters)
    method._positional = function
    return method


def _check_one_dtype(owner: str, name: str, params: PyTree) -> None:
    """Refuse, naming it, a pytree mixing real precisions given to ``init_state`` or ``update``
    of a solver whose loops carry one dtype (``run`` casts it; a loop by hand cannot)."""
    common = _dtypes.mixed_precision(params)
    if common is not None:
        kinds = sorted({str(jnp.result_type(leaf)) for leaf in jax.tree_util.tree_leaves(params)})
        raise TypeError(
            f"{owner}: {name} mixes floating dtypes ({', '.join(kinds)}), and this solver's "
            f"iterations carry one: cast it first, e.g. jax.tree_util.tree_map(lambda v: "
            f"v.astype(jnp.{common}), {name}) (run() does so itself, and returns each leaf of "
            "the solution in its own dtype)"
        )


def _finite(params: PyTree) -> jax.Array:
    """Whether every entry of a pytree is finite (True for an empty one)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params)]
    return jnp.all(jnp.asarray(leaves)) if leaves else jnp.asarray(True)
