"""The losses JAXopt 0.8.5 has and implicitdiff added for issue 13, side by side with
``jaxopt.loss`` on the same inputs (values and gradients), and against closed forms where JAXopt's
derivative is NaN (at infinite inputs)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import pytest
from helpers import finite_difference_grad

from implicitdiff import losses

_RNG = np.random.default_rng(13)
# Scores on both sides of every kink (±1 for the sparse links and the hinge, 0, ±δ for Huber),
# the kinks themselves left out (subgradients there are a choice).
_SCALARS = np.concatenate([_RNG.normal(size=12) * 2, [-3.0, -0.5, 0.25, 0.75, 2.5]])
_LABELS = np.arange(_SCALARS.size) % 2
_SCORES = _RNG.normal(size=(6, 5)) * 2
_CLASSES = np.array([0, 1, 2, 3, 4, 2])

# name → (ours, JAXopt's, kind): "binary" f(label, score), "unary" f(x), "huber" f(t, p, δ),
# "multiclass" f(class index, scores).
PAIRS = {
    "huber_loss": (losses.huber_loss, jaxopt.loss.huber_loss, "huber"),
    "sparse_plus": (losses.sparse_plus, jaxopt.loss.sparse_plus, "unary"),
    "sparse_sigmoid": (losses.sparse_sigmoid, jaxopt.loss.sparse_sigmoid, "unary"),
    "binary_sparsemax_loss": (
        losses.binary_sparsemax_loss,
        jaxopt.loss.binary_sparsemax_loss,
        "binary",
    ),
    "binary_hinge_loss": (losses.binary_hinge_loss, jaxopt.loss.binary_hinge_loss, "binary"),
    "binary_perceptron_loss": (
        losses.binary_perceptron_loss,
        jaxopt.loss.binary_perceptron_loss,
        "binary",
    ),
    "multiclass_perceptron_loss": (
        losses.multiclass_perceptron_loss,
        jaxopt.loss.multiclass_perceptron_loss,
        "multiclass",
    ),
    "multiclass_sparsemax_loss": (
        losses.multiclass_sparsemax_loss,
        jaxopt.loss.multiclass_sparsemax_loss,
        "multiclass",
    ),
}


def _values_and_grads(fun, kind, args):
    """(values, gradients in every float argument), over the batch of ``args``."""
    if kind == "unary":
        return jax.vmap(jax.value_and_grad(fun))(*args)
    if kind == "huber":
        return jax.vmap(jax.value_and_grad(fun, argnums=(0, 1, 2)))(*args)
    return jax.vmap(jax.value_and_grad(fun, argnums=1))(*args)


def _args(kind):
    if kind == "unary":
        return (jnp.asarray(_SCALARS),)
    if kind == "huber":
        target = _RNG.normal(size=_SCALARS.size)
        delta = np.abs(_RNG.normal(size=_SCALARS.size)) + 0.3
        return tuple(map(jnp.asarray, (target, _SCALARS, delta)))
    if kind == "binary":
        return jnp.asarray(_LABELS), jnp.asarray(_SCALARS)
    return jnp.asarray(_CLASSES), jnp.asarray(_SCORES)


@functools.partial(jax.jit, static_argnums=(0,))
def _side_by_side(name, args):
    ours, theirs, kind = PAIRS[name]
    return _values_and_grads(ours, kind, args), _values_and_grads(theirs, kind, args)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_values_and_gradients_equal_jaxopt(name):
    kind = PAIRS[name][2]
    ours, theirs = _side_by_side(name, _args(kind))
    leaves = zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs), strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_new_losses_match_closed_forms_and_finite_differences():
    z = _SCALARS
    y = _LABELS
    s = 2 * y - 1
    sp = np.where(z <= -1, 0, np.where(z >= 1, z, (z + 1) ** 2 / 4))
    sig = np.clip((z + 1) / 2, 0, 1)
    np.testing.assert_allclose(losses.sparse_plus(z), sp, rtol=1e-15)
    np.testing.assert_allclose(jax.vmap(jax.grad(losses.sparse_plus))(z), sig, rtol=1e-15)
    spm = np.where(y == 1, np.where(-z <= -1, 0, np.where(-z >= 1, -z, (1 - z) ** 2 / 4)), sp)
    np.testing.assert_allclose(losses.binary_sparsemax_loss(y, z), spm, rtol=1e-15)
    grad = jax.vmap(jax.grad(losses.binary_sparsemax_loss, argnums=1))(y, z)
    np.testing.assert_allclose(grad, sig - y, rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(losses.binary_hinge_loss(y, z), np.maximum(0, 1 - s * z))
    np.testing.assert_allclose(losses.binary_perceptron_loss(y, z), np.maximum(0, -s * z))
    r = 0.3 - z
    huber = np.where(np.abs(r) <= 1.5, 0.5 * r**2, 1.5 * (np.abs(r) - 0.75))
    np.testing.assert_allclose(losses.huber_loss(0.3, z, 1.5), huber, rtol=1e-15)
    # Every gradient of Huber (target, prediction, δ) against central differences.
    for t, p, d in [(0.3, 1.1, 0.5), (0.3, 0.5, 0.5), (-2.0, 1.0, 1.2)]:
        args = tuple(jnp.asarray(v) for v in (t, p, d))
        expected = finite_difference_grad(lambda a: losses.huber_loss(*a), args)
        got = jax.grad(lambda a: losses.huber_loss(*a))(args)
        np.testing.assert_allclose(got, expected, rtol=1e-7)
    # Perceptron: maxⱼ zⱼ − z_y, gradient e_{argmax} − e_y.
    for c, scores in zip(_CLASSES, _SCORES, strict=True):
        np.testing.assert_allclose(
            losses.multiclass_perceptron_loss(c, scores), scores.max() - scores[c], rtol=1e-15
        )
        g = jax.grad(losses.multiclass_perceptron_loss, argnums=1)(c, jnp.asarray(scores))
        np.testing.assert_array_equal(g, np.eye(5)[np.argmax(scores)] - np.eye(5)[c])
    np.testing.assert_array_equal(
        losses.multiclass_sparsemax_loss(_CLASSES, _SCORES),
        losses.sparsemax_loss(_CLASSES, _SCORES),
    )


INF = np.inf


def test_at_infinity_where_jaxopt_is_nan():
    """JAXopt's Huber, sparse plus and binary sparsemax gradients are NaN at ±inf (a
    ``jnp.where`` whose unused branch has an infinite derivative); ours are the limits."""
    x = jnp.array([INF, -INF])
    assert np.all(np.isnan(jax.vmap(jax.grad(jaxopt.loss.sparse_plus))(x)))
    np.testing.assert_array_equal(jax.vmap(jax.grad(losses.sparse_plus))(x), [1.0, 0.0])
    np.testing.assert_array_equal(losses.sparse_plus(x), [INF, 0.0])
    assert np.all(np.isnan(jax.vmap(jax.grad(jaxopt.loss.huber_loss, 1), (None, 0))(0.0, x)))
    np.testing.assert_array_equal(
        jax.vmap(jax.grad(losses.huber_loss, 1), (None, 0))(0.0, x), [1.0, -1.0]
    )
    np.testing.assert_array_equal(losses.huber_loss(0.0, x), [INF, INF])
    value_and_grad = jax.vmap(jax.value_and_grad(losses.binary_sparsemax_loss, 1))
    values, grads = value_and_grad(jnp.array([1, 1, 0, 0]), jnp.array([INF, -INF, INF, -INF]))
    np.testing.assert_array_equal(values, [0.0, INF, INF, 0.0])
    np.testing.assert_array_equal(grads, [0.0, -1.0, 1.0, 0.0])
    values, grads = jax.vmap(jax.value_and_grad(losses.binary_hinge_loss, 1))(
        jnp.array([1, 0, 0.5]), jnp.array([INF, INF, INF])
    )
    np.testing.assert_array_equal(values, [0.0, INF, 1.0])
    np.testing.assert_array_equal(grads, [0.0, 1.0, 0.0])


def test_fenchel_young_loss_equals_jaxopt_and_its_closed_forms():
    ours = losses.make_fenchel_young_loss(jax.nn.logsumexp)
    theirs = jaxopt.loss.make_fenchel_young_loss(jax.nn.logsumexp)
    for c, scores in zip(_CLASSES, _SCORES, strict=True):
        y = jnp.eye(5)[c]
        z = jnp.asarray(scores)
        np.testing.assert_allclose(ours(y, z), theirs(y, z), rtol=1e-13)
        np.testing.assert_allclose(ours(y, z), losses.multiclass_logistic_loss(c, z), rtol=1e-13)
        np.testing.assert_allclose(jax.grad(ours, 1)(y, z), jax.nn.softmax(z) - y, atol=1e-15)
        np.testing.assert_allclose(jax.grad(ours, 0)(y, z), -z, rtol=1e-15)
    # Extra arguments reach F; a −inf score with yⱼ = 0 masks the class (JAXopt's: NaN).
    scaled = losses.make_fenchel_young_loss(lambda z, t: t * jax.nn.logsumexp(z / t))
    np.testing.assert_allclose(scaled(jnp.eye(2)[0], jnp.zeros(2), 2.0), 2 * np.log(2))
    masked = jnp.array([0.0, 0.0, -INF])
    value, grad = jax.value_and_grad(ours, 1)(jnp.eye(3)[0], masked)
    np.testing.assert_allclose(value, np.log(2), rtol=1e-15)
    np.testing.assert_allclose(grad, [-0.5, 0.5, 0.0], atol=1e-15)
    assert np.isnan(theirs(jnp.eye(3)[0], masked))
    with pytest.raises(TypeError, match="max_fun"):
        losses.make_fenchel_young_loss(3.0)
    with pytest.raises(ValueError, match="y_true"):
        ours(jnp.zeros(2), jnp.zeros(3))


def test_bad_input():
    with pytest.raises(ValueError, match="delta"):
        losses.huber_loss(0.0, 1.0, delta=0.0)
    with pytest.raises(ValueError, match=r"class index in \[0, 3\)"):
        losses.multiclass_perceptron_loss(3, jnp.zeros(3))
    with pytest.raises(ValueError, match="multiclass_sparsemax_loss"):
        losses.multiclass_sparsemax_loss(-1, jnp.zeros(3))
