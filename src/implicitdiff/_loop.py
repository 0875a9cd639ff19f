"""``while_loop``, ``scan`` and ``cond`` whose carries (and branches) take the device-varying
type the body gives them.

Inside ``jax.shard_map`` a value is *varying* over a manual mesh axis when it may differ from
device to device (anything computed from a sharded input), and JAX requires a loop carry to keep
its type: a carry initialised with a constant (``jnp.asarray(0.0)``, invariant) whose body output
depends on the data (varying) is rejected ("while_loop body function carry input and carry output
must have equal types"). These wrappers trace the body once more to learn its output types and
mark the matching initial carries varying (``jax.lax.pcast(..., to="varying")``), which changes
no value. ``cond`` evaluates both branches there and selects (``jnp.where``), which also settles
branches that disagree (one returns a constant, the other a value computed from the data): a
``lax.cond`` batched by a ``vmap`` inside ``shard_map`` fails in JAX (see :func:`cond`). Outside
a manual-axis context (no ``shard_map``) they are the plain ``lax`` primitives, with no extra
tracing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["cond", "manual_axes", "scan", "varies_within", "vary_like", "while_loop"]


def manual_axes() -> tuple:
    """The manual mesh axes of the current trace (inside ``shard_map``), () elsewhere."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    if get is None:  # pragma: no cover - older JAX
        return ()
    return tuple(getattr(get(), "manual_axes", ()) or ())


def _varying(x: Any) -> frozenset:
    """The manual axes over which ``x`` (an array, tracer or ShapeDtypeStruct) varies."""
    aval = x if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(getattr(manual, "varying", ()) or ())
    return frozenset(getattr(aval, "vma", ()) or ())


def _pcast(x: Any, axes: frozenset) -> Any:
    missing = tuple(sorted(axes - _varying(x)))
    if not missing:
        return x
    return jax.lax.pcast(x, missing, to="varying")


def varies_within(value: Any, reference: Any) -> bool:
    """Whether ``value`` (an array) varies over no manual axis that ``reference`` does not: an
    elementwise product of the two keeps ``reference``'s type. True outside ``shard_map``."""
    if not manual_axes():
        return True
    return _varying(value) <= _varying(reference)


def vary_like(value: Any, reference: Any) -> Any:
    """``value`` (a pytree) marked varying over every manual axis some leaf of ``reference``
    varies over: the identity outside ``shard_map``."""
    if not manual_axes():
        return value
    axes = frozenset().union(*(_varying(leaf) for leaf in jax.tree_util.tree_leaves(reference)))
    return jax.tree_util.tree_map(lambda x: _pcast(x, axes), value)


def _match(body_types: Callable[[Any], Any], init: Any) -> Any:
    """``init`` with each leaf made as varying as the body's output for it (a fixed point: a
    more varying carry can make other outputs more varying; at most one pass per leaf)."""
    leaves, treedef = jax.tree_util.tree_flatten(init)
    for _ in range(len(leaves) + 1):
        out = jax.tree_util.tree_leaves(body_types(jax.tree_util.tree_unflatten(treedef, leaves)))
        if len(out) != len(leaves):  # a malformed body: let JAX report it
            break
        new = [_pcast(i, _varying(o)) for i, o in zip(leaves, out, strict=True)]
        if all(n is i for n, i in zip(new, leaves, strict=True)):
            break
        leaves = new
    return jax.tree_util.tree_unflatten(treedef, leaves)


def while_loop(cond_fun: Callable, body_fun: Callable, init_val: Any) -> Any:
    """``jax.lax.while_loop``, also when a constant initial carry becomes varying in the body."""
    if manual_axes():
        init_val = _match(lambda c: jax.eval_shape(body_fun, c), init_val)
    return jax.lax.while_loop(cond_fun, body_fun, init_val)


def scan(f: Callable, init: Any, xs: Any = None, length: int | None = None, **kwargs) -> Any:
    """``jax.lax.scan``, also when a constant initial carry becomes varying in the body."""
    if manual_axes():

        def carry_types(carry):
            x = jax.tree_util.tree_map(lambda a: a[0], xs) if xs is not None else None
            return jax.eval_shape(f, carry, x)[0]

        init = _match(carry_types, init)
    return jax.lax.scan(f, init, xs, length=length, **kwargs)


def cond(pred: Any, true_fun: Callable, false_fun: Callable, *operands: Any) -> Any:
    """``jax.lax.cond`` outside ``shard_map``; inside it, both branches evaluated and their
    outputs selected by ``pred`` (``jnp.where``, leaf by leaf), as ``vmap`` does anyway with a
    per-example predicate.

    Inside ``shard_map`` with ``vmap`` (a batch per device), a ``lax.cond`` whose predicate is
    batched fails in JAX (0.10) whenever a branch uses a value that is the same on every device
    (a constant the user's function closes over, say): JAX's batching rule broadcasts every
    operand and selects it by the (device-varying) predicate, which makes it varying, then
    replays the branch, which marks that value varying again (``pvary``) and is refused ("pvary
    is a invariant->variant collective"). A select has no branch to replay. Only for branches
    without side effects (a cond that saves work); both are computed, so a branch must give
    finite values (or values that the select discards without harm) at either outcome.
    """
    if not manual_axes():
        return jax.lax.cond(pred, true_fun, false_fun, *operands)
    on_true, on_false = true_fun(*operands), false_fun(*operands)
    return jax.tree_util.tree_map(lambda t, f: jnp.where(pred, t, f), on_true, on_false)
