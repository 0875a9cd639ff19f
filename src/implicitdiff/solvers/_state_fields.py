"""The derivative of a state's fields in a differentiated run.

An implicitly differentiated run differentiates its solution x*(θ) through the optimality
condition (:func:`implicitdiff.custom_root`); the state comes out of the loop, whose iterations
are not differentiated, so every field of it would have a zero derivative (and an unrolled run
differentiates its state only up to the loop's stop, while its params' derivative is continued
past it: see ``UnrolledLoop._unrolled``). Some fields are functions of the solution and of the
problem's arguments alone: the objective's value f(x*(θ), θ) and the user's auxiliary output
aux(x*(θ), θ). Their derivative is that of the composition, by the chain rule through dx*/dθ
(the run's own, implicit or unrolled):

    d/dθ f(x*(θ), θ) = ∂₁f · dx*/dθ + ∂₂f,

which :func:`with_derivative` gives them without changing their values: the value returned is
the loop's (no evaluation in a run that is not differentiated), its tangent the JVP of the
field's function at the solution (one evaluation of the user's function, in differentiated runs
only). Reverse mode transposes that JVP, as it does any linear map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff._args import ArgsSplit
from implicitdiff._typing import PyTree

__all__ = ["with_derivative"]


def _tangent_like(kept: Any, tangent: Any) -> Any:
    """The tangent of a leaf ``kept``: ``tangent`` in kept's dtype and shape (float0 zeros for
    a leaf that is not inexact, which has no derivative)."""
    kept = jnp.asarray(kept)
    if not jnp.issubdtype(kept.dtype, jnp.inexact):
        return np.zeros(kept.shape, jax.dtypes.float0)
    tangent = jnp.asarray(tangent)
    if not jnp.issubdtype(kept.dtype, jnp.complexfloating):
        tangent = jnp.real(tangent)
    return jnp.broadcast_to(tangent.astype(kept.dtype), kept.shape)


def with_derivative(
    fields: Callable[[PyTree, tuple, dict], dict],
    kept: dict,
    params: PyTree,
    args: tuple,
    kwargs: dict,
) -> dict:
    """``kept`` (the loop's values of some state fields) with the derivative of
    ``fields(params, args, kwargs)`` (the same fields recomputed at the solution) in ``params``
    and in the dynamic leaves of ``args`` and ``kwargs`` (see :mod:`implicitdiff._args`).

    ``fields`` must return a dict with ``kept``'s keys and, for each, a pytree of its structure.
    """
    split = ArgsSplit(args, kwargs)
    key = split.key()

    def recomputed(params, arrays):
        args, kwargs = ArgsSplit.merge(key, arrays)
        return fields(params, args, kwargs)

    arrays = [jnp.asarray(a) for a in split.arrays]
    # Arrays that the user's function closes over (a hyperparameter captured in a closure
    # inside a differentiated function) become explicit inputs, so they get derivatives too.
    closed, consts = jax.closure_convert(recomputed, params, arrays)

    @jax.custom_jvp
    def carried(kept, params, arrays, consts):
        return kept

    @carried.defjvp
    def carried_jvp(primals, tangents):
        kept, params, arrays, consts = primals
        _, params_dot, arrays_dot, consts_dot = tangents
        _, out_dot = jax.jvp(
            lambda p, a, c: closed(p, a, *c),
            (params, arrays, consts),
            (params_dot, arrays_dot, consts_dot),
        )
        # The primal out is ``carried`` again, not ``kept``: differentiated once more (a
        # Hessian of a function of the field), it then has this derivative too, where ``kept``
        # (the loop's value, no derivative) would drop every term that differentiates it twice.
        primal = carried(kept, params, arrays, consts)
        return primal, jax.tree_util.tree_map(_tangent_like, kept, out_dot)

    return carried(kept, params, arrays, consts)
