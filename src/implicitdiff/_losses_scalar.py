"""Element-wise losses and links of :mod:`implicitdiff.losses`: Huber, hinge, perceptron, sparse
plus / sparse sigmoid and the binary sparsemax loss (re-exported by ``losses``), and the two
helpers that ``losses.binary_logistic_loss`` shares with them, :func:`label_and_score` and
:func:`binary_mixture`.

Each acts entry by entry on broadcast arrays, is exact at huge and tiny inputs (no cancellation:
no term is formed as a difference of large numbers) and has a finite value and derivative at
±inf wherever the limit is finite.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks

__all__ = [
    "binary_hinge_loss",
    "binary_mixture",
    "binary_perceptron_loss",
    "binary_sparsemax_loss",
    "huber_loss",
    "label_and_score",
    "sparse_plus",
    "sparse_sigmoid",
]


_float_array = _checks.real_float_array


def label_and_score(label: Any, score: Any, fn_name: str) -> tuple[jax.Array, jax.Array]:
    """(y, z): the score z as a real float array and the label y in its dtype (element-wise).

    A binary label is y ∈ {0, 1}, or a soft label in [0, 1] (the losses extend to any real y;
    a finite difference may step outside). A whole number outside {0, 1} is a label of another
    convention (±1, where −1 would silently become the signed label −3; a class index): a
    concrete one raises a ValueError naming ``fn_name``, a traced one (jit, vmap, grad) gives
    NaN there.
    """
    score = _float_array(score, fn_name, "score")
    _checks.refuse_complex(label, fn_name, "label")
    if not _checks.is_traced(label):
        concrete = np.asarray(label, dtype=float)
        foreign = (concrete % 1 == 0) & ((concrete < 0) | (concrete > 1))
        if np.any(foreign):
            raise ValueError(
                f"{fn_name}: label must be in {{0, 1}} (or a soft label in [0, 1]), got "
                f"{np.ravel(concrete[foreign])[:5].tolist()}; for labels in {{−1, +1}} pass "
                "(label + 1) / 2"
            )
        return jnp.asarray(label, dtype=score.dtype), score
    label = jnp.asarray(label, dtype=score.dtype)
    foreign = (label % 1 == 0) & ((label < 0) | (label > 1))
    return _checks.nan_unless(jnp.logical_not(foreign), label), score


def huber_loss(target: Any, pred: Any, delta: Any = 1.0) -> jax.Array:
    """The Huber loss of a residual r = target − pred, entry by entry.

    ::

        loss = ½ r²               if |r| ≤ δ,
               δ (|r| − ½ δ)      if |r| > δ,

    computed as ½ m² + δ (|r| − m) with m = min(|r|, δ). The derivative is the closed form
    ∂/∂pred = −clip(r, −δ, δ) (finite also at an infinite residual, where the loss is +inf),
    ∂/∂δ = |r| − m.

    Args:
      target: the targets, an array (or scalar).
      pred: the predictions, broadcasting with ``target``.
      delta: δ > 0, the radius of the quadratic part (default 1).

    Returns:
      The loss per entry, shaped like the broadcast of ``target`` and ``pred``.

    Raises:
      ValueError: a concrete ``delta`` that is not positive.

    >>> print(huber_loss(0.0, 3.0))  # 1 · (3 − ½)
    2.5
    """
    _checks.check_real(delta, "delta", "huber_loss")
    if isinstance(delta, numbers.Real) and not delta > 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta!r}")
    pred = _float_array(pred, "huber_loss", "pred")
    _checks.refuse_complex(target, "huber_loss", "target")
    return _huber(jnp.asarray(target, pred.dtype), pred, jnp.asarray(delta, pred.dtype))


def _huber_parts(target, pred, delta):
    """(loss, r clipped to [−δ, δ], |r| − min(|r|, δ)) for r = target − pred."""
    residual = target - pred
    magnitude = jnp.abs(residual)
    m = jnp.minimum(magnitude, delta)
    excess = magnitude - m
    return 0.5 * m * m + delta * excess, jnp.clip(residual, -delta, delta), excess


@jax.custom_jvp
def _huber(target, pred, delta):
    return _huber_parts(target, pred, delta)[0]


@_huber.defjvp
def _huber_jvp(primals, tangents):
    # ∂/∂target = clip(r, −δ, δ) = −∂/∂pred, ∂/∂δ = |r| − min(|r|, δ).
    value, clipped, excess = _huber_parts(*primals)
    d_target, d_pred, d_delta = tangents
    return value, clipped * (d_target - d_pred) + excess * d_delta


def sparse_plus(x: Any) -> jax.Array:
    """The sparse plus function, entry by entry: a smooth, convex ReLU that is exactly 0 below
    −1 and exactly x above 1.

    ::

        sparse_plus(x) = 0             if x ≤ −1,
                         (x + 1)² / 4  if −1 < x < 1,
                         x             if x ≥ 1,

    computed as (c + 1)²/4 + max(x − 1, 0) with c = clip(x, −1, 1) (finite derivative also at
    ±inf). Its derivative is :func:`sparse_sigmoid`; it is the conjugate of the Gini entropy
    on [0, 1] (Blondel, Martins & Niculae, 2020).

    Args:
      x: an array (or scalar).

    Returns:
      sparse_plus(x), shaped like x.

    >>> print(sparse_plus(0.0))
    0.25
    """
    x = _float_array(x, "sparse_plus")
    c = jnp.clip(x, -1, 1)
    return 0.25 * jnp.square(c + 1) + jnp.maximum(x - 1, 0)


def sparse_sigmoid(x: Any) -> jax.Array:
    """The sparse sigmoid, entry by entry: the derivative of :func:`sparse_plus`.

    ::

        sparse_sigmoid(x) = clip((x + 1) / 2, 0, 1)
                          = 0 (x ≤ −1),  (x + 1)/2 (−1 < x < 1),  1 (x ≥ 1).

    Args:
      x: an array (or scalar).

    Returns:
      sparse_sigmoid(x), shaped like x, in [0, 1].

    >>> print(sparse_sigmoid(0.0))
    0.5
    """
    x = _float_array(x, "sparse_sigmoid")
    return jnp.clip(0.5 * x + 0.5, 0, 1)


def binary_mixture(link, label: jax.Array, score: jax.Array) -> jax.Array:
    """(1 − y) link(z) + y link(−z), a term whose weight is 0 counting 0 also where link is
    infinite (z = ±inf)."""

    def term(weight, z):
        absent = (weight == 0) & jnp.isinf(z)
        return jnp.where(absent, 0, weight * link(jnp.where(absent, 0, z)))

    return term(1 - label, score) + term(label, -score)


def binary_sparsemax_loss(label: Any, logit: Any) -> jax.Array:
    """The binary sparsemax loss (Blondel, Martins & Niculae, 2020, sec. 4.4), entry by entry.

    For a label y ∈ {0, 1} and a logit z::

        loss = sparse_plus(z) − y z = sparse_plus(−z)  (y = 1)  or  sparse_plus(z)  (y = 0),

    computed as (1 − y) sparse_plus(z) + y sparse_plus(−z) (equal for any y, since
    sparse_plus(z) − sparse_plus(−z) = z; a term of weight 0 is 0 also at an infinite logit).
    It is 0 once the logit is on the right side with a margin of 1. The gradient in z is
    sparse_sigmoid(z) − y.

    Args:
      label: y ∈ {0, 1} (or a soft label in [0, 1]), broadcasting with ``logit``.
      logit: the logit z, a scalar or an array.

    Raises:
      ValueError: a concrete label that is a whole number outside {0, 1} (as −1 in the ±1
        convention: pass (label + 1) / 2); a traced one gives NaN there.

    Returns:
      The loss, shaped like the broadcast of ``label`` and ``logit``.

    >>> print(binary_sparsemax_loss(1, 0.0))
    0.25
    """
    label, logit = label_and_score(label, logit, "binary_sparsemax_loss")
    return binary_mixture(sparse_plus, label, logit)


def _signed_margin(label: jax.Array, score: jax.Array) -> jax.Array:
    """s z with s = 2y − 1 (±1 for y ∈ {0, 1}); 0 where s = 0, also at an infinite score."""
    signed = 2 * label - 1
    return jnp.where(signed == 0, 0, signed * jnp.where(signed == 0, 0, score))


def binary_hinge_loss(label: Any, score: Any) -> jax.Array:
    """The binary hinge loss, entry by entry.

    For a label y ∈ {0, 1} (signed label s = 2y − 1) and a score z::

        loss = max(0, 1 − s z),

    with (sub)gradient −s where s z < 1, 0 where s z > 1 (and −s/2 at the kink, as
    ``jnp.maximum``).

    Args:
      label: y ∈ {0, 1}, broadcasting with ``score``.
      score: the score z, a scalar or an array.

    Raises:
      ValueError: a concrete label that is a whole number outside {0, 1} (as −1 in the ±1
        convention: pass (label + 1) / 2); a traced one gives NaN there.

    Returns:
      The loss, shaped like the broadcast of ``label`` and ``score``.

    >>> print(binary_hinge_loss(1, 0.25))
    0.75
    """
    label, score = label_and_score(label, score, "binary_hinge_loss")
    return jnp.maximum(0, 1 - _signed_margin(label, score))


def binary_perceptron_loss(label: Any, score: Any) -> jax.Array:
    """The binary perceptron loss, entry by entry.

    For a label y ∈ {0, 1} (signed label s = 2y − 1) and a score z::

        loss = max(0, −s z),

    zero when the score has the label's sign; (sub)gradient −s where s z < 0.

    Args:
      label: y ∈ {0, 1}, broadcasting with ``score``.
      score: the score z, a scalar or an array.

    Raises:
      ValueError: a concrete label that is a whole number outside {0, 1} (as −1 in the ±1
        convention: pass (label + 1) / 2); a traced one gives NaN there.

    Returns:
      The loss, shaped like the broadcast of ``label`` and ``score``.

    >>> print(binary_perceptron_loss(1, -0.5))
    0.5
    """
    label, score = label_and_score(label, score, "binary_perceptron_loss")
    return jnp.maximum(0, -_signed_margin(label, score))
