"""Loss functions for one example, numerically stable; ``jax.vmap`` them over a batch.

Catalog (k classes; y a class index, eᵧ its one-hot vector; z a vector of k scores):

- :func:`multiclass_hinge_loss`: Crammer–Singer, maxⱼ (zⱼ + 1[j ≠ y]) − zᵧ.
- :func:`multiclass_logistic_loss`: logsumexp(z) − zᵧ (softmax cross-entropy).
- :func:`binary_logistic_loss`: softplus(z) − y z for a label y ∈ {0, 1} and a scalar logit z.
- :func:`sparsemax_loss`: the sparsemax loss of Martins & Astudillo (2016).
- :func:`multiclass_perceptron_loss`: maxⱼ zⱼ − zᵧ.
- :func:`multiclass_sparsemax_loss`: the same function as :func:`sparsemax_loss` (JAXopt's name).
- :func:`squared_loss`: ½‖target − prediction‖².
- :func:`sparsemax`: the Euclidean projection of z onto the probability simplex.
- :func:`make_fenchel_young_loss`: F(z) − ⟨y, z⟩ for a max function F.

Element-wise (label y ∈ {0, 1} and a scalar score z, or arrays of them):

- :func:`binary_hinge_loss`: max(0, 1 − (2y − 1) z); :func:`binary_perceptron_loss`:
  max(0, −(2y − 1) z).
- :func:`binary_sparsemax_loss`: sparse_plus(z) − y z, with the links :func:`sparse_plus` and
  :func:`sparse_sigmoid` (its derivative).
- :func:`huber_loss`: ½ r² for |r| ≤ δ, δ (|r| − δ/2) beyond, r = target − prediction.

The multiclass losses take the label either as an integer class index (an array with one
dimension fewer than the scores, normally a scalar) or as a vector of the scores' shape: a
one-hot vector, or more generally a vector of weights y, in which case eᵧ is replaced by y in
the formulas. A concrete integer label outside [0, k) raises ``ValueError``; under ``jax.jit``
it is not checked (and gives an all-zero one-hot vector).

>>> import jax
>>> import jax.numpy as jnp
>>> from implicitdiff import losses
>>> labels = jnp.array([0, 2])
>>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
>>> print(jax.vmap(losses.multiclass_logistic_loss)(labels, logits).round(4))
[0.2395 1.0986]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, _losses_scalar, tree
from implicitdiff import _projection_ops as projections
from implicitdiff._losses_scalar import binary_hinge_loss as binary_hinge_loss
from implicitdiff._losses_scalar import binary_perceptron_loss as binary_perceptron_loss
from implicitdiff._losses_scalar import binary_sparsemax_loss as binary_sparsemax_loss
from implicitdiff._losses_scalar import huber_loss as huber_loss
from implicitdiff._losses_scalar import sparse_plus as sparse_plus
from implicitdiff._losses_scalar import sparse_sigmoid as sparse_sigmoid
from implicitdiff._typing import PyTree

__all__ = [
    "binary_hinge_loss",
    "binary_logistic_loss",
    "binary_perceptron_loss",
    "binary_sparsemax_loss",
    "huber_loss",
    "make_fenchel_young_loss",
    "multiclass_hinge_loss",
    "multiclass_logistic_loss",
    "multiclass_perceptron_loss",
    "multiclass_sparsemax_loss",
    "sparse_plus",
    "sparse_sigmoid",
    "sparsemax",
    "sparsemax_loss",
    "squared_loss",
]


_float_array = _checks.real_float_array


def _label_vector_and_scores(label: Any, scores: Any, fn_name: str) -> tuple[jax.Array, jax.Array]:
    """(y, z): the scores z as a real float array, and the label y as a vector shaped like them
    (one-hot for a class index, else as given), for the multiclass loss ``fn_name``."""
    scores = _float_array(scores, fn_name, "scores")
    _checks.refuse_complex(label, fn_name, "label")
    label = jnp.asarray(label)
    if label.ndim == scores.ndim:
        return label.astype(scores.dtype), scores
    if label.ndim != scores.ndim - 1:
        raise ValueError(
            f"{fn_name}: label must be a class index (shape {scores.shape[:-1]}) or a vector "
            f"shaped like the scores {scores.shape}, got shape {label.shape}"
        )
    num_classes = scores.shape[-1]
    try:
        concrete = np.asarray(label)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        # Traced (jit, vmap, grad): an index outside [0, num_classes) would one-hot to zeros,
        # a finite and wrong loss; it gives NaN instead.
        valid = (label >= 0) & (label < num_classes) & (label % 1 == 0)
        one_hot = jax.nn.one_hot(label, num_classes, dtype=scores.dtype)
        return _checks.nan_unless(valid[..., None], one_hot), scores
    if concrete.size and (
        np.any(concrete < 0) or np.any(concrete >= num_classes) or np.any(concrete % 1 != 0)
    ):
        raise ValueError(
            f"{fn_name}: label must be an integer class index in [0, {num_classes}), "
            f"got {concrete.tolist()}"
        )
    return jax.nn.one_hot(label, num_classes, dtype=scores.dtype), scores


def _shift_by_max(z: jax.Array) -> jax.Array:
    """z − max(z) along the last axis, with the limits at infinite scores: where the largest
    score is +inf, 0 at the entries equal to it and −inf elsewhere (the limit of z − max z as
    those entries grow); where every score is −inf, 0 everywhere (all tied). The maximum is held
    constant for derivatives (every function of z − max z used here is shift-invariant)."""
    top = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    finite = jnp.isfinite(top)
    shifted = z - jnp.where(finite, top, 0)
    return jnp.where(finite, shifted, jnp.where(z == top, 0, -jnp.inf).astype(z.dtype))


def _is_zero(tangent: Any) -> bool:
    """Whether a tangent given to a custom JVP rule is a symbolic zero (not differentiated)."""
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


def _closed_form_loss(parts: Callable, grad_z: Callable, grad_y: Callable) -> Callable:
    """loss(y, z) = parts(y, z)[0] with the custom JVP Σⱼ grad_z ⊙ dz + Σⱼ grad_y ⊙ dy (along the
    last axis), each gradient ``grad(y, z, aux)`` with aux = parts(y, z)[1].

    Symbolic zeros: a term whose tangent is not differentiated (the label, usually) is left out,
    so that its gradient, possibly infinite (at a −inf score), cannot make the result NaN.
    """

    @jax.custom_jvp
    def loss(y: jax.Array, z: jax.Array) -> jax.Array:
        return parts(y, z)[0]

    def jvp(primals, tangents):
        y, z = primals
        dy, dz = tangents
        value, aux = parts(y, z)
        out = jnp.zeros_like(value)
        if not _is_zero(dz):
            out = out + jnp.sum(grad_z(y, z, aux) * dz, axis=-1)
        if not _is_zero(dy):
            out = out + jnp.sum(grad_y(y, z, aux) * dy, axis=-1)
        return value, out

    loss.defjvp(jvp, symbolic_zeros=True)
    return loss


def _weighted_sum(y: jax.Array, z: jax.Array) -> jax.Array:
    """Σⱼ yⱼ zⱼ along the last axis, where 0 · ±inf counts as 0 (−inf scores mask classes out).
    Finite terms are kept as they are, with their derivative."""
    return jnp.sum(y * jnp.where((y == 0) & jnp.isinf(z), 0, z), axis=-1)


def multiclass_hinge_loss(label: Any, scores: Any) -> jax.Array:
    """The multiclass hinge loss of Crammer & Singer.

    For a class index y and scores z (k,)::

        loss = maxⱼ (zⱼ + 1[j ≠ y]) − zᵧ  ≥ 0,

    zero when zᵧ beats every other score by a margin of at least 1. For a label vector y (one-hot
    or weights), maxⱼ (zⱼ − ⟨y, z⟩ + 1 − yⱼ). A (sub)gradient in z is e_{j*} − eᵧ, j* the
    maximizing index.

    Args:
      label: the class index y, an integer in [0, k) (an array of shape ``scores.shape[:-1]``,
        normally a scalar), or a label vector shaped like ``scores`` (one-hot or weights).
      scores: the scores z, shape (k,) (or (…, k)).

    Returns:
      The loss, a scalar (shape ``scores.shape[:-1]`` for leading batch dimensions).

    >>> import jax.numpy as jnp
    >>> print(multiclass_hinge_loss(1, jnp.array([0.5, 1.0, -1.0])))
    0.5
    """
    y, scores = _label_vector_and_scores(label, scores, "multiclass_hinge_loss")
    return jnp.max(_score_gaps(y, scores) + (1 - y), axis=-1)


def _score_gaps(y: jax.Array, scores: jax.Array) -> jax.Array:
    """zⱼ − ⟨y, z⟩ for every j, the label's score subtracted before any margin is added (no
    cancellation for large scores); 0 where both are the same infinity (the label's own score,
    for a one-hot y)."""
    true_score = _weighted_sum(y, scores)[..., None]
    same_infinity = jnp.isinf(scores) & (scores == true_score)
    return jnp.where(same_infinity, 0, scores - jnp.where(same_infinity, 0, true_score))


def multiclass_perceptron_loss(label: Any, scores: Any) -> jax.Array:
    """The multiclass perceptron loss (Collins, 2002).

    For a class index y and scores z (k,)::

        loss = maxⱼ zⱼ − zᵧ  ≥ 0,

    zero when zᵧ is a largest score (the hinge loss without its margin). For a label vector y,
    maxⱼ (zⱼ − ⟨y, z⟩). A (sub)gradient in z is e_{j*} − eᵧ, j* a maximizing index (ties share
    it equally, as ``jnp.max``).

    Args:
      label: the class index y, an integer in [0, k) (an array of shape ``scores.shape[:-1]``,
        normally a scalar), or a label vector shaped like ``scores`` (one-hot or weights).
      scores: the scores z, shape (k,) (or (…, k)).

    Returns:
      The loss, a scalar (shape ``scores.shape[:-1]`` for leading batch dimensions).

    >>> import jax.numpy as jnp
    >>> print(multiclass_perceptron_loss(1, jnp.array([0.5, 1.0, -1.0])))
    0.0
    """
    y, scores = _label_vector_and_scores(label, scores, "multiclass_perceptron_loss")
    return jnp.max(_score_gaps(y, scores), axis=-1)


def multiclass_logistic_loss(label: Any, logits: Any) -> jax.Array:
    """The multiclass logistic (softmax cross-entropy) loss.

    For a class index y and logits z (k,)::

        loss = logsumexp(z) − zᵧ = −log softmax(z)ᵧ,

    with gradient softmax(z) − eᵧ. For a label vector y, logsumexp(z) · Σⱼ yⱼ − ⟨y, z⟩ (the
    cross-entropy with the distribution y when y sums to 1).

    Computed on z − max(z) (the loss is invariant to adding a constant to every logit), so that
    large logits lose no digits (logits [1e9, 1e9] give log 2 in float32). Infinite logits are
    limits: −inf masks a class out (a −inf logit with yⱼ = 0 adds nothing; the loss is +inf if
    yⱼ ≠ 0), and +inf logits share the probability equally among themselves. The derivative is
    the closed form softmax(z) Σⱼyⱼ − y in z (finite also there) and logsumexp(z) − z in y.

    Args:
      label: the class index y, an integer in [0, k) (an array of shape ``logits.shape[:-1]``,
        normally a scalar), or a label vector shaped like ``logits`` (one-hot or weights).
      logits: the logits z, shape (k,) (or (…, k)).

    Returns:
      The loss, a scalar (shape ``logits.shape[:-1]`` for leading batch dimensions).

    >>> import jax.numpy as jnp
    >>> print(multiclass_logistic_loss(0, jnp.array([0.0, 0.0])).round(4))  # log 2
    0.6931
    """
    y, logits = _label_vector_and_scores(label, logits, "multiclass_logistic_loss")
    return _logistic(y, logits)


def _logistic_parts(y: jax.Array, z: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """(loss, (softmax(z), logsumexp(z) − z)) for a label vector y, with the limits above."""
    shifted = _shift_by_max(z)
    all_minus_inf = jnp.all(z == -jnp.inf, axis=-1)  # no distribution: NaN
    lse = jax.nn.logsumexp(shifted, axis=-1)
    loss = lse * jnp.sum(y, axis=-1) - _weighted_sum(y, shifted)
    loss = _checks.nan_unless(jnp.logical_not(all_minus_inf), loss)
    softmax = jnp.exp(shifted - lse[..., None])
    return loss, (softmax, lse[..., None] - shifted)


# ∂/∂z = softmax(z) Σ y − y, ∂/∂y = logsumexp(z) − z (+inf at a −inf logit).
_logistic = _closed_form_loss(
    _logistic_parts,
    lambda y, z, aux: aux[0] * jnp.sum(y, axis=-1, keepdims=True) - y,
    lambda y, z, aux: aux[1],
)


def binary_logistic_loss(label: Any, logit: Any) -> jax.Array:
    """The binary logistic loss of a scalar logit z for a label y ∈ {0, 1}.

    ::

        loss = softplus(z) − y z = log(1 + eᶻ) − y z = −log σ(z)  (y = 1)  or  −log σ(−z)  (y = 0),

    computed as (1 − y) softplus(z) + y softplus(−z) (equal for any y), which neither
    overflows nor cancels for large |z|; a term whose weight is 0 counts as 0 also at an
    infinite logit (so the loss of y = 1 at z = +inf, and of y = 0 at z = −inf, is 0, with
    gradient 0). A y in [0, 1] is a soft label (the cross-entropy with the
    Bernoulli distribution of parameter y). The gradient in z is σ(z) − y. Element-wise: arrays
    of labels and logits give one loss per entry.

    Args:
      label: y ∈ {0, 1} (or a soft label in [0, 1]), a scalar or an array broadcasting with
        ``logit``.
      logit: the logit z, a scalar or an array.

    Raises:
      ValueError: a concrete label that is a whole number outside {0, 1} (as −1 in the ±1
        convention: pass (label + 1) / 2); a traced one gives NaN there.

    Returns:
      The loss, shaped like the broadcast of ``label`` and ``logit`` (a scalar for scalars).

    >>> import jax.numpy as jnp
    >>> print(binary_logistic_loss(1, 0.0).round(4))  # log 2
    0.6931
    """
    label, logit = _losses_scalar.label_and_score(label, logit, "binary_logistic_loss")
    return _losses_scalar.binary_mixture(jax.nn.softplus, label, logit)


def sparsemax(scores: Any) -> jax.Array:
    """Sparsemax (Martins & Astudillo, 2016): the Euclidean projection onto the simplex.

    ::

        sparsemax(z) = argmin_{p ≥ 0, Σ p = 1} ‖p − z‖² = max(z − τ, 0),

    where τ solves Σⱼ max(zⱼ − τ, 0) = 1. With z₍₁₎ ≥ … ≥ z₍ₖ₎ sorted in decreasing order, the
    support size is K = max{j : 1 + j z₍ⱼ₎ > Σ_{i ≤ j} z₍ᵢ₎} and τ = (Σ_{i ≤ K} z₍ᵢ₎ − 1) / K. The
    Jacobian is diag(s) − s sᵀ / K, s the indicator of the support. Acts on the last axis.

    Args:
      scores: the scores z, shape (k,), or (…, k) for one projection per row.

    Returns:
      p = sparsemax(z), shaped like ``scores``: non-negative, each row summing to 1.

    >>> import jax.numpy as jnp
    >>> print(sparsemax(jnp.array([1.0, 0.5, -1.0])))
    [0.75 0.25 0.  ]
    """
    z = _float_array(scores, "sparsemax", "scores")
    # The projection commutes with adding a constant to every entry; shift the largest entry to
    # 0 so that the cumulative sums stay small (the shift has zero derivative: stop it). +inf
    # scores share the mass equally (the limit), −inf ones get none.
    z = _shift_by_max(z)
    rows = z.reshape(-1, z.shape[-1])
    return jax.vmap(projections.simplex)(rows).reshape(z.shape)


def sparsemax_loss(label: Any, scores: Any) -> jax.Array:
    """The sparsemax loss (Martins & Astudillo, 2016), a Fenchel–Young loss.

    With p = :func:`sparsemax` (z) and y the label (one-hot eᵧ for a class index)::

        loss = ⟨p − y, z⟩ + ½ (‖y‖² − ‖p‖²)
             = ½ Σ_{j ∈ S} (zⱼ² − τ²) − zᵧ + ½     (class index y; S the support of p, τ as in
                                                 sparsemax)

    For a label on the simplex (one-hot or a probability vector) it is ≥ 0, zero exactly when
    p = y, convex in z, invariant to adding a constant to every score, and its gradient in z is
    p − y (also for any other label vector y, with which the formula is evaluated as written).

    Args:
      label: the class index y, an integer in [0, k) (an array of shape ``scores.shape[:-1]``,
        normally a scalar), or a label vector shaped like ``scores`` (one-hot or weights).
      scores: the scores z, shape (k,) (or (…, k)).

    Returns:
      The loss, a scalar (shape ``scores.shape[:-1]`` for leading batch dimensions).

    >>> import jax.numpy as jnp
    >>> print(sparsemax_loss(0, jnp.array([0.0, 0.0])))
    0.25
    """
    y, scores = _label_vector_and_scores(label, scores, "sparsemax_loss")
    return _sparsemax_loss(y, scores)


def multiclass_sparsemax_loss(label: Any, scores: Any) -> jax.Array:
    """JAXopt's name of :func:`sparsemax_loss`: the same loss, values and derivatives.

    ::

        loss = ⟨p − y, z⟩ + ½ (‖y‖² − ‖p‖²),  p = sparsemax(z).

    Args:
      label: the class index y, or a label vector shaped like ``scores``.
      scores: the scores z, shape (k,) (or (…, k)).

    Returns:
      The loss, a scalar (shape ``scores.shape[:-1]`` for leading batch dimensions).

    >>> import jax.numpy as jnp
    >>> print(multiclass_sparsemax_loss(0, jnp.array([0.0, 0.0])))
    0.25
    """
    y, scores = _label_vector_and_scores(label, scores, "multiclass_sparsemax_loss")
    return _sparsemax_loss(y, scores)


def _sparsemax_loss_parts(y: jax.Array, scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(loss, sparsemax(scores)) for a label vector y."""
    # Shift the largest score to 0. The formula changes by shift · (1 − Σ y) (zero for a one-hot
    # or probability vector y), added back. Infinite scores are limits (see _shift_by_max), and
    # (p − y) z counts 0 · (−inf) as 0 (a masked class).
    shift = jnp.max(scores, axis=-1)
    z = _shift_by_max(scores)
    p = sparsemax(z)
    value = _weighted_sum(p - y, z) + 0.5 * jnp.sum(y * y - p * p, axis=-1)
    total = jnp.sum(y, axis=-1)
    correction = jnp.where(total == 1, 0, shift * (1 - total))
    return value + correction, p


# Closed forms: ∂/∂z = p − y, ∂/∂y = y − z (+inf at a −inf score).
_sparsemax_loss = _closed_form_loss(
    _sparsemax_loss_parts, lambda y, z, p: p - y, lambda y, z, p: y - z
)


def squared_loss(target: PyTree, prediction: PyTree) -> jax.Array:
    """½‖target − prediction‖², summed over every entry (of every leaf, for pytrees).

    The gradient in ``prediction`` is prediction − target. Complex leaves count by modulus,
    ½Σ|rⱼ|², and the loss is real (``jax.grad`` returns conj(prediction − target) for them, in
    JAX's convention). ``target`` and ``prediction`` must
    have the same structure and leaf shapes (no broadcasting): ValueError otherwise.

    Args:
      target: an array or a pytree of arrays.
      prediction: a pytree of the structure and leaf shapes of ``target``.

    Returns:
      The loss, a scalar.

    >>> import jax.numpy as jnp
    >>> print(squared_loss(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])))
    2.5
    """
    t_leaves, t_tree = jax.tree_util.tree_flatten(target)
    p_leaves, p_tree = jax.tree_util.tree_flatten(prediction)
    if t_tree != p_tree or [jnp.shape(t) for t in t_leaves] != [jnp.shape(p) for p in p_leaves]:
        raise ValueError(
            "squared_loss: target and prediction must have the same structure and shapes, got "
            f"{t_tree} {[jnp.shape(t) for t in t_leaves]} and "
            f"{p_tree} {[jnp.shape(p) for p in p_leaves]}"
        )
    residual = tree.sub(target, prediction)
    return 0.5 * tree.vdot_real(residual, residual)  # real also for complex leaves: ½Σ|rⱼ|²


def make_fenchel_young_loss(max_fun: Callable[..., Any]) -> Callable[..., jax.Array]:
    """The Fenchel–Young loss (Blondel, Martins & Niculae, 2020) of a max function F.

    ::

        loss(y, z, *args, **kwargs) = F(z, *args, **kwargs) − ⟨y, z⟩,

    whose gradient in z is ∇F(z) − y (∇F the regularized argmax: softmax for F = logsumexp,
    sparsemax for the sparsemax's conjugate). In ⟨y, z⟩ an entry with yⱼ = 0 counts 0 also at
    an infinite score (a −inf score masks a class out, with a finite gradient).

    Args:
      max_fun: F(z, *args, **kwargs), a scalar function of the scores (``jax.nn.logsumexp``,
        say).

    Returns:
      ``loss(y_true, scores, *args, **kwargs)``, y_true shaped like scores (one-hot or weights).

    Raises:
      TypeError: ``max_fun`` is not callable.

    >>> import jax
    >>> import jax.numpy as jnp
    >>> loss = make_fenchel_young_loss(jax.nn.logsumexp)
    >>> print(loss(jnp.array([1.0, 0.0]), jnp.zeros(2)).round(4))  # log 2
    0.6931
    """
    if not callable(max_fun):
        raise TypeError(f"make_fenchel_young_loss: max_fun must be callable, got {max_fun!r}")

    def fenchel_young_loss(y_true: Any, scores: Any, *args: Any, **kwargs: Any) -> jax.Array:
        scores = _float_array(scores, "fenchel_young_loss", "scores")
        _checks.refuse_complex(y_true, "fenchel_young_loss", "y_true")
        y_true = jnp.asarray(y_true, scores.dtype)
        if y_true.shape != scores.shape:
            raise ValueError(
                "fenchel_young_loss: y_true must be shaped like scores "
                f"{scores.shape}, got {y_true.shape}"
            )
        inner = jnp.sum(_weighted_sum(y_true.ravel(), scores.ravel()))
        return max_fun(scores, *args, **kwargs) - inner

    return fenchel_young_loss
