"""The machinery shared by the host wrappers (:mod:`implicitdiff.solvers.scipy`,
:mod:`implicitdiff.solvers.scipy_root`, :mod:`implicitdiff.solvers.host`): a host solve run
through ``jax.pure_callback`` inside a jitted, differentiable ``run``.

Conventions (JAXopt's): ``solver.run(init_params, *args, **kwargs)`` returns
``OptStep(params, state)``; the solution is differentiable with respect to every array in
``args``/``kwargs`` (not ``init_params``). Unlike JAXopt's SciPy wrappers, ``run`` works under
``jax.jit``, ``jax.vmap`` and their compositions with ``jax.grad``:

- **jit**: the host solve is a ``pure_callback`` inside the compiled program; ``run`` itself is
  compiled once per shape (``jit=True``, as for the iterative solvers).
- **vmap**: the callback is batched with ``vmap_method="sequential"``: a batch of problems is
  solved one problem after the other on the host (no parallelism, no batched host solve), each
  with its own host call, and the results are stacked.
- **derivatives**: the host solver is never differentiated. The implicit derivative only
  evaluates the optimality condition (in JAX, on the accelerator if there is one) at the
  solution. With ``implicit_diff=False`` the result carries no derivative (there are no
  iterations in JAX to unroll): differentiating it raises a TypeError that names the solver and
  ``implicit_diff``, in every mode (``grad``, ``jvp``, ``jacfwd``), rather than JAX's error that
  pure callbacks have no JVP.

Nested JAX calls made from inside a callback run on the CPU backend, whatever the default
device, so that the host callback never waits on the device that is running the program that
called it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.flatten_util import ravel_pytree

from implicitdiff import _loop, tree
from implicitdiff._args import ArgsSplit
from implicitdiff._typing import PyTree
from implicitdiff.solvers._base import DifferentiableRun
from implicitdiff.solvers._compile_cache import COMPILE_CACHE_SIZE, LRU

__all__: list[str] = []


def _cpu() -> jax.Device:
    return jax.devices("cpu")[0]


def on_cpu(x: PyTree) -> PyTree:
    """Host values as JAX arrays committed to the CPU: nested calls from a callback run there."""
    return jax.device_put(x, _cpu())


def check_callable(value: Any, name: str, owner: str, method: Any = None) -> None:
    if value is None and callable(method):
        raise TypeError(
            f"{owner}: {name} is missing and method is a function: the first positional argument "
            f"is method (as in JAXopt); pass the function by keyword, {owner}({name}=...)"
        )
    if not callable(value):
        raise TypeError(f"{owner}: {name} must be callable, got {value!r}")


def flat_params(init_params: PyTree, owner: str) -> tuple[jax.Array, Callable]:
    flat, unravel = ravel_pytree(init_params)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise TypeError(
            f"{owner}: init_params must have real floating leaves (SciPy solves over ℝⁿ), got "
            f"dtype {flat.dtype}"
        )
    return flat, unravel


def shape_key(params: PyTree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return (treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves))


def all_finite(x: PyTree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(x)
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves] or [True]))


INFO_SHAPES = (
    jax.ShapeDtypeStruct((), np.int32),
    jax.ShapeDtypeStruct((), np.int32),
    jax.ShapeDtypeStruct((), np.bool_),
)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class HostWrapper(DifferentiableRun):
    """Base of the host wrappers: ``run`` = (jit ∘ custom_root/fixed_point)(``_solve``).

    The settings ``implicit_diff``, ``solve``, ``jit``, ``on_failure`` and
    ``backward_on_failure`` are those of :class:`DifferentiableRun` (keyword-only);
    ``implicit_diff=False`` returns a result that cannot be differentiated (a host solve has no
    derivative of its own).
    """

    def __post_init__(self):
        super().__post_init__()
        # One host callable per problem structure, bounded as the compiled programs are.
        object.__setattr__(self, "_host_functions", LRU(COMPILE_CACHE_SIZE))

    def _differentiable_solution(self) -> Callable:
        if self.implicit_diff:
            return super()._differentiable_solution()
        owner = type(self).__name__

        def solution(init_params, /, *args, **kwargs):
            inputs = (init_params, args, kwargs)
            cut_params, cut_args, cut_kwargs = tree.stop_gradient(inputs)
            out = self._solution(cut_params, *cut_args, **cut_kwargs)
            return _without_derivative(owner, out, _floating_leaves(inputs))

        return solution

    # Whether the host callback evaluates the user function (the SciPy wrappers; not HostSolver,
    # whose host side is the user's own NumPy solve).
    _evaluates_user_function_on_host = False

    def _run(self, init_params: PyTree, /, *args, **kwargs):
        converted = self._closure_as_arguments(init_params, args, kwargs)
        if converted is None:
            return super()._run(init_params, *args, **kwargs)
        solver, args, kwargs = converted
        return solver._run(init_params, *args, **kwargs)

    def _closure_as_arguments(self, init_params: PyTree, args: tuple, kwargs: dict):
        """(solver, args, kwargs) whose user function takes as trailing arguments the traced
        values it closed over (a hyperparameter closed over inside ``jax.grad``: evaluated in
        the host callback, it raised JAX's UnexpectedTracerError), or None if it closes over
        none. They then reach the host as arrays and get their derivative as any argument."""
        name = self._user_function
        fun = getattr(self, name, None) if name else None
        if not (self._evaluates_user_function_on_host and callable(fun)):
            return None
        args, kwargs = self._bind_keywords(args, kwargs)
        lead = len(self._run_arguments)
        split = ArgsSplit(args[lead:], kwargs)
        key = split.key()

        def flat(x, arrays):
            a, k = ArgsSplit.merge(key, arrays)
            return fun(x, *a, **k)

        try:
            closed, consts = jax.closure_convert(flat, init_params, split.arrays)
        except Exception:  # a function that cannot be traced: the solver reports it itself
            return None
        if not any(isinstance(c, jax.core.Tracer) for c in consts):
            return None
        count = len(consts)

        def explicit(x, *a, **k):
            return closed(x, ArgsSplit(a[:-count], k).arrays, *a[-count:])

        solver = dataclasses.replace(self, **{name: explicit})
        return solver, (*args, *consts), kwargs

    def _host_function(self, key: Any, build: Callable[[], Callable]) -> Callable:
        """The host callable for one problem structure, built (and its jits made) once."""
        try:
            function = self._host_functions.get(key)
        except TypeError:  # an unhashable static argument: build afresh (jit=False only)
            return build()
        if function is None:
            function = self._host_functions[key] = build()
        return function


def _floating_leaves(value: PyTree) -> list:
    return [
        leaf
        for leaf in jax.tree_util.tree_leaves(value)
        if isinstance(leaf, (jax.Array, np.ndarray, float, complex))
        and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _without_derivative(owner: str, out: PyTree, inputs: list) -> PyTree:
    """``out``; differentiating it with respect to ``inputs`` raises a TypeError naming
    ``owner`` and ``implicit_diff`` (a host solve run with ``implicit_diff=False``)."""
    del inputs
    return out


def _without_derivative_jvp(owner, primals, tangents):
    out, _ = primals
    if any(not isinstance(t, SymbolicZero) for t in tangents[1]):
        raise TypeError(
            f"{owner}(implicit_diff=False) returns a solution without derivative: its solve "
            "runs on the host, outside JAX, so there are no iterations to unroll. Keep "
            "implicit_diff=True (the default) to differentiate the solution implicitly through "
            "its optimality condition"
        )
    return out, tree.map(_zero_tangent, out)


def _zero_tangent(leaf: Any) -> Any:
    leaf = jnp.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.zeros_like(leaf)
    return np.zeros(leaf.shape, jax.dtypes.float0)


_without_derivative.defjvp(_without_derivative_jvp, symbolic_zeros=True)


def call_host(solver: Any, kind: str, init_params: PyTree, args: tuple, kwargs: dict):
    """Run ``solver._build_host``'s host function through ``jax.pure_callback`` (sequential
    under vmap); returns (params, iter_num, status, success) as traced values."""
    flat0, unravel = flat_params(init_params, type(solver).__name__)
    key, arrays = callback_args(args, kwargs)
    host = solver._host_function(
        (kind, key, shape_key(init_params)),
        lambda: solver._build_host(key, unravel, flat0.dtype),
    )
    x, iter_num, status, success = jax.pure_callback(
        host,
        (jax.ShapeDtypeStruct(flat0.shape, flat0.dtype), *INFO_SHAPES),
        flat0,
        arrays,
        vmap_method="sequential",
    )
    # JAX types a callback's output as invariant across devices (inside shard_map): x is marked
    # as varying as its inputs, or ∇f(x) in the error transposes into a psum, a collective in a
    # per-device solve.
    return unravel(_loop.vary_like(x, (flat0, arrays))), iter_num, status, success


def callback_args(args: tuple, kwargs: dict) -> tuple[tuple, list]:
    """The static key of (args, kwargs) and their arrays (numbers made arrays), for a callback."""
    split = ArgsSplit(args, kwargs)
    return split.key(), [jnp.asarray(a) for a in split.arrays]
