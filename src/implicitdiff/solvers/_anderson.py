"""The parts of Anderson acceleration shared by ``AndersonAcceleration`` (fixed_point.py) and
``AndersonWrapper`` (anderson_wrapper.py): ring buffers of iterates and residuals, their Gram
matrix, and the mixing weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from implicitdiff import _checks, tree
from implicitdiff._typing import PyTree

__all__ = ["mixing_weights", "slot_products", "stack_slot"]


def stack_slot(history: PyTree, position: jax.Array, value: PyTree) -> PyTree:
    """The history (leaves with a leading slot axis) with slot ``position`` set to value."""
    return tree.map(lambda h, v: h.at[position].set(v), history, value)


def slot_products(history: PyTree, value: PyTree) -> jax.Array:
    """⟨hᵢ, value⟩ for every slot i of the history (a vector of length history_size)."""
    parts = [
        jnp.tensordot(h.reshape(h.shape[0], -1), v.reshape(-1), axes=1)
        for h, v in zip(
            jax.tree_util.tree_leaves(history), jax.tree_util.tree_leaves(value), strict=True
        )
    ]
    return sum(parts[1:], parts[0])


def mixing_weights(gram: jax.Array, filled: jax.Array, newest: jax.Array, ridge: float):
    """α = argmin_{Σα = 1} ‖Σᵢαᵢgᵢ‖² + ridge Σᵢ αᵢ²‖gᵢ‖² over the first ``filled`` slots,
    from the Gram matrix G = [⟨gᵢ, gⱼ⟩].

    With D = diag(G): (D^-½ G D^-½ + ridge I) u = D^-½ 1, w = D^-½ u, α = w / Σw. The scaled
    matrix has a unit diagonal whatever the residuals' sizes; the empty slots get an identity
    block and a zero right-hand side (weight 0). A degenerate system (possible only with
    ridge = 0) gives the slot ``newest`` alone.
    """
    m = gram.shape[0]
    valid = jnp.arange(m) < filled
    both = valid[:, None] & valid[None, :]
    squares = jnp.diag(gram)
    # A residual that vanished (square below √tiny) gets a unit scale, free of overflow.
    squares = jnp.where(valid & (squares > jnp.sqrt(jnp.finfo(gram.dtype).tiny)), squares, 1.0)
    inv_norms = jnp.where(valid, 1.0 / jnp.sqrt(squares), 0.0)
    scaled = jnp.where(both, gram * inv_norms[:, None] * inv_norms[None, :], 0.0)
    regularized = scaled + jnp.diag(jnp.where(valid, ridge, 1.0))
    up = _checks.half_to_float32  # no half-precision LAPACK solve
    w = inv_norms * jnp.linalg.solve(up(regularized), up(inv_norms)).astype(gram.dtype)
    total = jnp.sum(w)
    ok = jnp.isfinite(total) & (total != 0)
    fallback = jax.nn.one_hot(newest, m, dtype=gram.dtype)
    return jnp.where(ok, w / jnp.where(ok, total, 1.0), fallback)
