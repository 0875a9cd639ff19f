"""An optimality condition together with its structure, as the engine reads it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["Condition", "is_symmetric"]


@dataclasses.dataclass(frozen=True)
class Condition:
    """A condition F(x, *args) (or a fixed-point map T) and whether its Jacobian is symmetric.

    Calling it calls ``fun``. The builders of :mod:`implicitdiff.optimality` return one;
    :func:`implicitdiff.custom_root` reads ``symmetric`` (∂₁F, or I − ∂₁T, symmetric) when its
    own ``symmetric`` option is None, so that ``solve="auto"`` can use CG. ``name`` and ``doc``
    become ``__name__`` and ``__doc__``; ``inspect.signature`` sees ``fun``'s signature.
    """

    fun: Callable
    symmetric: bool = False
    name: str | None = None
    doc: str | None = None

    def __post_init__(self):
        name = self.name or getattr(self.fun, "__name__", type(self.fun).__name__)
        object.__setattr__(self, "__name__", name)
        object.__setattr__(self, "__qualname__", name)
        object.__setattr__(self, "__doc__", self.doc or getattr(self.fun, "__doc__", None))
        object.__setattr__(self, "__wrapped__", self.fun)  # for inspect.signature

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fun(*args, **kwargs)


def is_symmetric(fun: Callable, symmetric: bool | None) -> bool:
    """The ``symmetric`` option if given, else what a :class:`Condition` states, else False."""
    if symmetric is not None:
        return bool(symmetric)
    return isinstance(fun, Condition) and fun.symmetric
