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


@jax.jit
def _side_by_side(args):
    """Every pair in one program: name → (ours, JAXopt's) values and gradients."""
    return {
        name: (
            _values_and_grads(ours, kind, args[kind]),
            _values_and_grads(theirs, kind, args[kind]),
        )
        for name, (ours, theirs, kind) in PAIRS.items()
    }


@pytest.fixture(scope="module")
def side_by_side():
    return _side_by_side({kind: _args(kind) for kind in ("unary", "huber", "binary", "multiclass")})


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_values_and_gradients_equal_jaxopt(side_by_side, name):
    ours, theirs = side_by_side[name]
    leaves = zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs), strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


INF = np.inf
_HUBER_POINTS = [(0.3, 1.1, 0.5), (0.3, 0.5, 0.5), (-2.0, 1.0, 1.2)]
_FY = losses.make_fenchel_young_loss(jax.nn.logsumexp)
_FY_JAXOPT = jaxopt.loss.make_fenchel_young_loss(jax.nn.logsumexp)
_FY_SCALED = losses.make_fenchel_young_loss(lambda z, t: t * jax.nn.logsumexp(z / t))


def _huber_of(a):
    return losses.huber_loss(*a)


@jax.jit
def _outputs(z, y, scores, classes):
    """Everything the closed-form tests below read, in one program."""
    grad_z = functools.partial(jax.grad, argnums=1)
    inf2, inf4 = jnp.array([INF, -INF]), jnp.array([INF, -INF, INF, -INF])
    one_hot = jax.nn.one_hot(classes, 5)
    masked = jnp.array([0.0, 0.0, -INF])
    return {
        "sparse_plus": (losses.sparse_plus(z), jax.vmap(jax.grad(losses.sparse_plus))(z)),
        "binary_sparsemax": (
            losses.binary_sparsemax_loss(y, z),
            jax.vmap(grad_z(losses.binary_sparsemax_loss))(y, z),
        ),
        "hinge": losses.binary_hinge_loss(y, z),
        "perceptron": losses.binary_perceptron_loss(y, z),
        "huber": losses.huber_loss(0.3, z, 1.5),
        "huber_grads": [jax.grad(_huber_of)(tuple(map(jnp.asarray, p))) for p in _HUBER_POINTS],
        "multiclass_perceptron": (
            jax.vmap(losses.multiclass_perceptron_loss)(classes, scores),
            jax.vmap(grad_z(losses.multiclass_perceptron_loss))(classes, scores),
        ),
        "multiclass_sparsemax": (
            losses.multiclass_sparsemax_loss(classes, scores),
            losses.sparsemax_loss(classes, scores),
        ),
        # At ±inf (JAXopt's derivatives of sparse_plus and huber_loss are NaN there).
        "inf_sparse_plus": (
            losses.sparse_plus(inf2),
            jax.vmap(jax.grad(losses.sparse_plus))(inf2),
            jax.vmap(jax.grad(jaxopt.loss.sparse_plus))(inf2),
        ),
        "inf_huber": (
            losses.huber_loss(0.0, inf2),
            jax.vmap(grad_z(losses.huber_loss), (None, 0))(0.0, inf2),
            jax.vmap(grad_z(jaxopt.loss.huber_loss), (None, 0))(0.0, inf2),
        ),
        "inf_binary_sparsemax": jax.vmap(jax.value_and_grad(losses.binary_sparsemax_loss, 1))(
            jnp.array([1, 1, 0, 0]), inf4
        ),
        "inf_hinge": jax.vmap(jax.value_and_grad(losses.binary_hinge_loss, 1))(
            jnp.array([1, 0, 0.5]), jnp.full(3, INF)
        ),
        # Fenchel–Young with F = logsumexp.
        "fy": (
            jax.vmap(_FY)(one_hot, scores),
            jax.vmap(_FY_JAXOPT)(one_hot, scores),
            jax.vmap(losses.multiclass_logistic_loss)(classes, scores),
            jax.vmap(grad_z(_FY))(one_hot, scores),
            jax.vmap(jax.grad(_FY))(one_hot, scores),
        ),
        "fy_scaled": _FY_SCALED(jnp.eye(2)[0], jnp.zeros(2), 2.0),
        "fy_masked": (
            jax.value_and_grad(_FY, 1)(jnp.eye(3)[0], masked),
            _FY_JAXOPT(jnp.eye(3)[0], masked),
        ),
    }


@pytest.fixture(scope="module")
def out():
    return _outputs(
        jnp.asarray(_SCALARS), jnp.asarray(_LABELS), jnp.asarray(_SCORES), jnp.asarray(_CLASSES)
    )


def test_new_losses_match_closed_forms_and_finite_differences(out):
    z = _SCALARS
    y = _LABELS
    s = 2 * y - 1
    sp = np.where(z <= -1, 0, np.where(z >= 1, z, (z + 1) ** 2 / 4))
    sig = np.clip((z + 1) / 2, 0, 1)
    np.testing.assert_allclose(out["sparse_plus"][0], sp, rtol=1e-15)
    np.testing.assert_allclose(out["sparse_plus"][1], sig, rtol=1e-15)
    spm = np.where(y == 1, np.where(-z <= -1, 0, np.where(-z >= 1, -z, (1 - z) ** 2 / 4)), sp)
    np.testing.assert_allclose(out["binary_sparsemax"][0], spm, rtol=1e-15)
    np.testing.assert_allclose(out["binary_sparsemax"][1], sig - y, rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(out["hinge"], np.maximum(0, 1 - s * z))
    np.testing.assert_allclose(out["perceptron"], np.maximum(0, -s * z))
    r = 0.3 - z
    huber = np.where(np.abs(r) <= 1.5, 0.5 * r**2, 1.5 * (np.abs(r) - 0.75))
    np.testing.assert_allclose(out["huber"], huber, rtol=1e-15)
    # Every gradient of Huber (target, prediction, δ) against central differences.
    for point, got in zip(_HUBER_POINTS, out["huber_grads"], strict=True):
        args = tuple(jnp.asarray(v) for v in point)
        expected = finite_difference_grad(_huber_of, args)
        np.testing.assert_allclose(got, expected, rtol=1e-7)
    # Perceptron: maxⱼ zⱼ − z_y, gradient e_{argmax} − e_y.
    values, grads = out["multiclass_perceptron"]
    rows = np.arange(len(_CLASSES))
    np.testing.assert_allclose(values, _SCORES.max(axis=1) - _SCORES[rows, _CLASSES], rtol=1e-15)
    expected = np.eye(5)[np.argmax(_SCORES, axis=1)] - np.eye(5)[_CLASSES]
    np.testing.assert_array_equal(grads, expected)
    np.testing.assert_array_equal(*out["multiclass_sparsemax"])


def test_at_infinity_where_jaxopt_is_nan(out):
    """JAXopt's Huber and sparse plus gradients are NaN at ±inf (a ``jnp.where`` whose unused
    branch has an infinite derivative); ours are the limits."""
    value, grad, theirs = out["inf_sparse_plus"]
    np.testing.assert_array_equal(value, [INF, 0.0])
    np.testing.assert_array_equal(grad, [1.0, 0.0])
    assert np.all(np.isnan(theirs))
    value, grad, theirs = out["inf_huber"]
    np.testing.assert_array_equal(value, [INF, INF])
    np.testing.assert_array_equal(grad, [1.0, -1.0])
    assert np.all(np.isnan(theirs))
    values, grads = out["inf_binary_sparsemax"]
    np.testing.assert_array_equal(values, [0.0, INF, INF, 0.0])
    np.testing.assert_array_equal(grads, [0.0, -1.0, 1.0, 0.0])
    values, grads = out["inf_hinge"]
    np.testing.assert_array_equal(values, [0.0, INF, 1.0])
    np.testing.assert_array_equal(grads, [0.0, 1.0, 0.0])


def test_fenchel_young_loss_equals_jaxopt_and_its_closed_forms(out):
    ours, theirs, logistic, grad_z, grad_y = out["fy"]
    one_hot = np.eye(5)[_CLASSES]
    softmax = np.exp(_SCORES) / np.exp(_SCORES).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-13)
    np.testing.assert_allclose(ours, logistic, rtol=1e-13)
    np.testing.assert_allclose(grad_z, softmax - one_hot, atol=1e-15)
    np.testing.assert_allclose(grad_y, -_SCORES, rtol=1e-15)
    # Extra arguments reach F; a −inf score with yⱼ = 0 masks the class (JAXopt's: NaN).
    np.testing.assert_allclose(out["fy_scaled"], 2 * np.log(2))
    (value, grad), theirs = out["fy_masked"]
    np.testing.assert_allclose(value, np.log(2), rtol=1e-15)
    np.testing.assert_allclose(grad, [-0.5, 0.5, 0.0], atol=1e-15)
    assert np.isnan(theirs)
    with pytest.raises(TypeError, match="max_fun"):
        losses.make_fenchel_young_loss(3.0)
    with pytest.raises(ValueError, match="y_true"):
        _FY(jnp.zeros(2), jnp.zeros(3))


def test_bad_input():
    with pytest.raises(ValueError, match="delta"):
        losses.huber_loss(0.0, 1.0, delta=0.0)
    with pytest.raises(ValueError, match=r"class index in \[0, 3\)"):
        losses.multiclass_perceptron_loss(3, jnp.zeros(3))
    with pytest.raises(ValueError, match="multiclass_sparsemax_loss"):
        losses.multiclass_sparsemax_loss(-1, jnp.zeros(3))
