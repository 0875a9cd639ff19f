"""Options every solver shares with JAXopt: the optimality error, ``verbose`` and ``jit=False``.

- :func:`residual`: F(x, *args) for a solver whose condition is the root F(x, *args) = 0, and
  T(x, *args) − x for one whose condition is the fixed point x = T(x, *args) (JAXopt's
  ``optimality_fun``; its norm is ``l2_optimality_error``).
- :func:`bind_leading`: a method's leading arguments by JAXopt's keyword names
  (``init_state(init_params=...)``, ``update(params=..., state=...)``).
- :func:`report`: the line printed per iteration with ``verbose`` (``jax.debug.print``, so that
  it prints from a compiled loop too, in the order of the iterations).
- :func:`is_concrete` and :func:`eager_while_loop`: with ``jit=False`` and concrete arguments
  the loop runs in Python, one ``update`` after another on concrete arrays, so that a
  ``fun`` that only NumPy can evaluate (it cannot be traced) works, as JAXopt's ``jit=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from implicitdiff import tree
from implicitdiff._typing import PyTree

__all__ = [
    "bind_leading",
    "check_verbose",
    "eager_while_loop",
    "is_concrete",
    "report",
    "residual",
    "untraceable",
]

# What JAX raises when a function converts a traced value to NumPy or to Python.
_TRACER_ERRORS = (
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def check_verbose(owner: str, verbose: Any) -> None:
    """TypeError, naming the option, unless ``verbose`` is a bool or an int (JAXopt's types)."""
    if not isinstance(verbose, (bool, int)):
        raise TypeError(f"{owner}: verbose must be a bool or an int, got {verbose!r}")


def residual(kind: str, condition: Callable, params: PyTree, args, kwargs) -> PyTree:
    """F(x) for ``kind == "root"``, T(x) − x for ``kind == "fixed_point"``.

    Args:
      kind: ``"root"`` or ``"fixed_point"``, as a solver's ``optimality()`` returns it.
      condition: F or T, called as ``condition(params, *args, **kwargs)``.
      params: the point x.
      args, kwargs: the problem's arguments.

    Returns:
      The residual, a pytree like the condition's value.
    """
    value = condition(params, *args, **kwargs)
    return value if kind == "root" else tree.sub(value, params)


def bind_leading(owner: str, names: tuple, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """(args, kwargs) with the leading parameters ``names`` all positional, as Python binds
    ``def owner(<names>, *args, **kwargs)``: a name given by keyword fills its place when the
    positional arguments stop before it.

    Args:
      owner: ``"Solver.method"``, for the messages.
      names: the leading parameters' names, in order.
      args, kwargs: the call's arguments.

    Returns:
      ``(args, kwargs)`` with the leading parameters first in ``args``.

    Raises:
      TypeError: a name given both ways ("multiple values"), or missing, naming it.
    """
    count = len(args)
    if not any(name in kwargs for name in names):
        if count < len(names):
            missing = ", ".join(repr(n) for n in names[count:])
            raise TypeError(f"{owner}() missing required argument(s): {missing}")
        return args, kwargs
    kwargs = dict(kwargs)
    leading = list(args[: len(names)])
    for position, name in enumerate(names):
        if name in kwargs and position < count:
            raise TypeError(f"{owner}() got multiple values for argument {name!r}")
        if position >= count:
            if name not in kwargs:
                raise TypeError(f"{owner}() missing required argument: {name!r}")
            leading.append(kwargs.pop(name))
    return (*leading, *args[len(names) :]), kwargs


def report(owner: str, state: Any) -> None:
    """Print ``INFO: implicitdiff.<owner>: iter <iter_num> error <error>`` (one iteration)."""
    jax.debug.print(
        "INFO: implicitdiff." + owner + ": iter {iter_num} error {error}",
        iter_num=state.iter_num,
        error=state.error,
        ordered=True,
    )


def is_concrete(*trees: Any) -> bool:
    """Whether no leaf of the pytrees is a tracer (no transformation is tracing them)."""
    leaves = jax.tree_util.tree_leaves(trees)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def eager_while_loop(cond_fun: Callable, body_fun: Callable, init_val: Any) -> Any:
    """``lax.while_loop``'s meaning as a Python loop: ``body_fun`` on concrete values while
    ``bool(cond_fun(value))``."""
    value = init_val
    while bool(cond_fun(value)):
        value = body_fun(value)
    return value


def untraceable(solver: Any, init_params: PyTree, args: tuple, kwargs: dict) -> bool:
    """Whether, on concrete arguments, the solver's optimality condition cannot be traced (it
    converts its input to NumPy or to Python: a NumPy-only ``fun``).

    Such a run (``jit=False``) is returned without derivative: no transformation traces its
    arguments (they are concrete), and the implicit derivative would need to trace the
    condition. Any other error of the probe is left to the run itself, which reports it.
    """
    if not is_concrete(init_params, args, kwargs):
        return False
    _, condition = solver.optimality()
    try:
        jax.eval_shape(lambda x, a, k: condition(x, *a, **k), init_params, args, kwargs)
    except _TRACER_ERRORS:
        return True
    except Exception:  # a probe only
        return False
    return False
