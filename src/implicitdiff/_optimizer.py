"""Calling an Optax-style optimizer: ``opt.update(grads, state, params)``, and for one whose
``update`` takes keyword arguments (Optax's ``GradientTransformationExtraArgs``) also ``value``,
``grad`` and ``value_fn``, which its line searches need (``optax.lbfgs()``,
``optax.scale_by_zoom_linesearch``) and its other members ignore. Optax is not a dependency:
an optimizer is only read as an object with ``init`` and ``update``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from implicitdiff._typing import PyTree

__all__ = ["update"]


def _takes_extra_args(update_fn: Callable) -> bool:
    """Whether ``update_fn`` takes Optax's extra keyword arguments (False for a callable
    without a signature: the plain call)."""
    try:
        parameters = inspect.signature(update_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is p.VAR_KEYWORD or p.name in ("value", "grad", "value_fn") for p in parameters
    )


def update(
    optimizer: Any, grads: PyTree, state: Any, params: PyTree, value: Any, value_fn: Callable
) -> tuple[PyTree, Any]:
    """``optimizer.update(grads, state, params)`` → (updates, state), with ``value`` (f at
    params), ``grad`` (= grads) and ``value_fn`` (params ↦ f) when the optimizer takes them."""
    if _takes_extra_args(optimizer.update):
        return optimizer.update(grads, state, params, value=value, grad=grads, value_fn=value_fn)
    return optimizer.update(grads, state, params)
