"""Type names shared by the modules of implicitdiff (private: import them from here)."""

from typing import Any

__all__ = ["PyTree"]

#: A JAX pytree: an array, a scalar, None, or a (nested) tuple, list, dict or registered node of
#: them. An alias of ``Any`` for the type checker (pytrees have no static type).
PyTree = Any
