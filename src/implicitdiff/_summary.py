"""Short text for result objects: ``print(solver.run(...))`` shows no dumped arrays.

A result (an ``OptStep``, a solver state, ``BilevelResult``, ...) is a ``NamedTuple`` whose
fields hold arrays that can have millions of entries. Its ``repr`` is built here: a scalar shows
its value (``iter_num=12``, ``error=3.1e-09``, ``converged=True``), an array only its dtype,
shape and Euclidean norm (``f64[10000] ‖·‖=3.162``), a traced value (under ``jit``, ``vmap``,
``grad``) its dtype and shape, and containers are summarized entry by entry. A result class gets
it with ``__repr__ = _summary.namedtuple_repr``.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

__all__ = ["namedtuple_repr", "summarize"]

_MAX_ITEMS = 8  # entries of a list, tuple or dict shown before "..."
_MAX_OTHER = 60  # characters of the repr of anything else


def _dtype_name(dtype: Any) -> str:
    """``float64`` → ``f64``, ``int32`` → ``i32``, ``complex64`` → ``c64``, ``bool`` → ``bool``."""
    name = np.dtype(dtype).name
    return re.sub(r"complex", "c", re.sub(r"u?int|float", lambda m: m.group(0)[0], name))


def _scalar(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, complex | np.complexfloating):
        return f"{complex(value):.4g}"
    text = f"{float(value):.4g}"
    return text if any(c in text for c in ".ein") else text + ".0"  # a float looks like one


def _array(x: Any) -> str:
    """dtype[shape], then the value of a concrete scalar or the norm of a concrete array."""
    head = f"{_dtype_name(x.dtype)}[{','.join(str(d) for d in x.shape)}]"
    if isinstance(x, jax.core.Tracer):
        return head + " (traced)"
    try:
        if not getattr(x, "is_fully_addressable", True):
            return head
        values = np.asarray(x)
        if values.ndim == 0:
            return _scalar(values[()])
        if values.size and np.issubdtype(values.dtype, np.inexact):
            return f"{head} ‖·‖={_scalar(np.linalg.norm(values.ravel()))}"
    except Exception:  # a deleted (donated) buffer, an exotic dtype: the head alone
        pass
    return head


def summarize(value: Any) -> str:
    """A one-line description of ``value`` that never prints an array's entries.

    Args:
      value: anything; arrays (NumPy, JAX, traced), Python scalars, ``NamedTuple``, tuple, list
        and dict are summarized (containers recursively), anything else is its ``repr`` cut to 60
        characters.

    Returns:
      The text: ``f64[3,4] ‖·‖=1.5`` for a concrete float array (dtype, shape, Euclidean norm),
      ``i32[5]`` for a concrete non-float array, ``f32[10] (traced)`` for a tracer, the value
      for a scalar (a 0-d array included), ``Name(field=..., ...)`` for a ``NamedTuple``.
    """
    if value is None or isinstance(value, str):
        return repr(value)
    if isinstance(value, bool | int | float | complex | np.generic):
        return _scalar(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return _array(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return _fields(value)
    if isinstance(value, tuple | list):
        items = [summarize(v) for v in value[:_MAX_ITEMS]]
        if len(value) > _MAX_ITEMS:
            items.append(f"... ({len(value)} items)")
        text = ", ".join(items)
        if isinstance(value, list):
            return f"[{text}]"
        return f"({text}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        items = [f"{k!r}: {summarize(v)}" for k, v in list(value.items())[:_MAX_ITEMS]]
        if len(value) > _MAX_ITEMS:
            items.append(f"... ({len(value)} items)")
        return "{" + ", ".join(items) + "}"
    text = repr(value)
    return text if len(text) <= _MAX_OTHER else text[: _MAX_OTHER - 3] + "..."


def _fields(result: Any) -> str:
    pairs = zip(result._fields, result, strict=True)
    body = ", ".join(f"{name}={summarize(v)}" for name, v in pairs)
    return f"{type(result).__name__}({body})"


def namedtuple_repr(self: Any) -> str:
    """The ``__repr__`` of a result ``NamedTuple``: each field by :func:`summarize`.

    Args:
      self: a ``NamedTuple`` instance.

    Returns:
      ``Name(field=summary, ...)``, e.g. ``OptStep(params=f64[10000] ‖·‖=3.162,
      state=LbfgsState(iter_num=12, error=3.1e-09, converged=True, ...))``.
    """
    return _fields(self)
