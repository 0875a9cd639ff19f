"""An optimality condition together with its structure, as the engine reads it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["Condition", "is_symmetric", "support_of"]


@dataclasses.dataclass(frozen=True)
class Condition:
    """A condition F(x, *args) (or a fixed-point map T) and the structure of its Jacobian.

    Calling it calls ``fun``. The builders of :mod:`implicitdiff.optimality` return one;
    :func:`implicitdiff.custom_root` reads ``symmetric`` (∂₁F, or I − ∂₁T, symmetric) when its
    own ``symmetric`` option is None, so that ``solve="auto"`` can use CG. ``name`` and ``doc``
    become ``__name__`` and ``__doc__``; ``inspect.signature`` sees ``fun``'s signature.

    ``support`` states where the system moves. Write G for the residual the engine linearizes
    (G = F for :func:`implicitdiff.custom_root`, :func:`implicitdiff.root_jvp` and
    :func:`implicitdiff.root_vjp`; G(x) = x − T(x) for :func:`implicitdiff.custom_fixed_point`)
    and S = ``support(x, *args, **kwargs)`` (True entries), N its complement. The statement is
    that rows N of ∂₁G are those of the identity (∂₁G = [[A_SS, A_SN], [0, I]]): for a
    proximal-gradient fixed point T(x) = prox(x − η∇f(x)) with soft thresholding, S = {i :
    |yᵢ| > λη}, y = x − η∇f(x). The engine then solves the derivative's system on S only
    (:mod:`implicitdiff._support`), and still checks the residual of the whole system, so a
    wrong support is reported as a failed solve (``on_failure``). ``support_symmetric``: A_SS
    is symmetric (η∇²f_SS), so that ``solve="auto"`` uses CG on S although ∂₁G is not
    symmetric.

    Attributes:
      fun: F(x, *args, **kwargs) or T(x, *args, **kwargs).
      symmetric: whether ∂₁F (or I − ∂₁T) is symmetric.
      name: the ``__name__`` (default: ``fun``'s).
      doc: the ``__doc__`` (default: ``fun``'s).
      support: None (no statement), or ``support(x, *args, **kwargs) -> mask``, a pytree of
        booleans like x with the arguments of ``fun``: True on the free coordinates S.
      support_symmetric: whether the block A_SS of the system on the support is symmetric.
    """

    fun: Callable
    symmetric: bool = False
    name: str | None = None
    doc: str | None = None
    support: Callable | None = None
    support_symmetric: bool = False

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


def support_of(fun: Callable) -> tuple[Callable | None, bool]:
    """(support, support_symmetric) that ``fun`` states if it is a :class:`Condition`, else
    (None, False)."""
    if isinstance(fun, Condition) and fun.support is not None:
        return fun.support, bool(fun.support_symmetric)
    return None, False
