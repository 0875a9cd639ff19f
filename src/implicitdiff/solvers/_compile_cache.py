"""The compiled ``run`` programs of every solver: one bounded cache, shared by all solvers.

A program is keyed by the solver's fields (frozen to hashable stand-ins by :func:`freeze`) and
the static part of the arguments, so equal solvers share a compilation and a program never
outlives the settings it was built from; :class:`CompiledView` is one solver's view of it.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

__all__ = ["COMPILE_CACHE_SIZE", "LRU", "CompiledView", "freeze"]


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


class CompiledView:
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


def freeze(value: Any) -> Any:
    """A hashable stand-in for a field value: the value if hashable, dicts and sequences by their
    frozen items, anything else (an array) by identity. A ``functools.partial`` is compared by
    its function and arguments (partial objects compare by identity: two equal ones, written
    twice or unpickled, would make two solvers unequal, and compile twice)."""
    if isinstance(value, functools.partial):
        return (functools.partial, freeze(value.func), freeze(value.args), freeze(value.keywords))
    try:
        hash(value)
    except TypeError:
        pass
    else:
        return value
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return (dict, tuple((k, freeze(v)) for k, v in items))
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(freeze(v) for v in value))
    return _Unhashable(value)
