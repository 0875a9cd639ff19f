"""Tests of implicitdiff.losses: values, gradients, float32 stability, batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose, finite_difference_grad

from implicitdiff import losses

# ---------------------------------------------------------------------------------------------
# NumPy references, written from the formulas.


def _np_softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _np_sparsemax(z, iterations=200):
    """The projection onto the simplex by bisection on τ in Σ max(z − τ, 0) = 1 (no sorting)."""
    z = np.asarray(z, dtype=np.float64)
    lo, hi = z.max() - 1.0, z.max()  # Σ max(z − lo, 0) ≥ 1 ≥ Σ max(z − hi, 0) = 0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if np.maximum(z - mid, 0).sum() >= 1:
            lo = mid
        else:
            hi = mid
    return np.maximum(z - 0.5 * (lo + hi), 0)


def _np_hinge(y, z):
    margins = z + (np.arange(z.size) != y)
    return margins.max() - z[y]


def _np_logistic(y, z):
    return np.log(np.sum(np.exp(z))) - z[y]


def _np_sparsemax_loss(y, z):
    # Martins & Astudillo (2016), eq. (20): ½ Σ_{j ∈ S} (zⱼ² − τ²) − zᵧ + ½.
    p = _np_sparsemax(z)
    support = p > 0
    tau = (z[support].sum() - 1) / support.sum()
    return 0.5 * np.sum(z[support] ** 2 - tau**2) - z[y] + 0.5


def _random_scores(seed, k=5, batch=8):
    return np.random.default_rng(seed).normal(size=(batch, k)) * 2


# ---------------------------------------------------------------------------------------------
# Values.


def test_multiclass_hinge_loss_values():
    # Hand-checked: max(0.5 + 1, 1.0 + 0, −1 + 1) − 1.0 = 0.5.
    np.testing.assert_allclose(losses.multiclass_hinge_loss(1, jnp.array([0.5, 1.0, -1.0])), 0.5)
    # Correct with a margin ≥ 1: zero. Wrong class ahead by 2: 2 + 1 = 3.
    np.testing.assert_allclose(losses.multiclass_hinge_loss(0, jnp.array([3.0, 1.5, 2.0])), 0.0)
    np.testing.assert_allclose(losses.multiclass_hinge_loss(2, jnp.array([3.0, 1.5, 1.0])), 3.0)
    scores = _random_scores(0)
    labels = np.arange(8) % 5
    for y, z in zip(labels, scores, strict=True):
        np.testing.assert_allclose(losses.multiclass_hinge_loss(y, z), _np_hinge(y, z), rtol=1e-12)
        one_hot = np.eye(5)[y]
        np.testing.assert_allclose(
            losses.multiclass_hinge_loss(one_hot, z), _np_hinge(y, z), rtol=1e-12
        )


def test_multiclass_logistic_loss_values():
    np.testing.assert_allclose(losses.multiclass_logistic_loss(0, jnp.zeros(2)), np.log(2))
    np.testing.assert_allclose(
        losses.multiclass_logistic_loss(1, jnp.array([0.0, np.log(3.0)])), np.log(4 / 3)
    )
    scores = _random_scores(1)
    for y, z in zip(np.arange(8) % 5, scores, strict=True):
        expected = _np_logistic(y, z)
        np.testing.assert_allclose(losses.multiclass_logistic_loss(y, z), expected, rtol=1e-12)
        np.testing.assert_allclose(
            losses.multiclass_logistic_loss(np.eye(5)[y], z), expected, rtol=1e-12
        )
    # A distribution as the label: the cross-entropy −Σ yⱼ log softmax(z)ⱼ.
    y = np.array([0.2, 0.0, 0.5, 0.3, 0.0])
    z = scores[0]
    np.testing.assert_allclose(
        losses.multiclass_logistic_loss(y, z), -np.sum(y * np.log(_np_softmax(z))), rtol=1e-12
    )


def test_binary_logistic_loss_values():
    np.testing.assert_allclose(losses.binary_logistic_loss(1, 0.0), np.log(2))
    np.testing.assert_allclose(losses.binary_logistic_loss(0, np.log(3.0)), np.log(4.0))
    np.testing.assert_allclose(losses.binary_logistic_loss(1, np.log(3.0)), np.log(4 / 3))
    z = np.random.default_rng(2).normal(size=10) * 3
    for y in (0, 1, 0.3):
        expected = np.log1p(np.exp(z)) - y * z
        np.testing.assert_allclose(losses.binary_logistic_loss(y, z), expected, rtol=1e-12)
    # Tiny losses keep their relative precision: −log σ(40) = log(1 + e⁻⁴⁰) ≈ e⁻⁴⁰.
    np.testing.assert_allclose(losses.binary_logistic_loss(1, 40.0), np.exp(-40.0), rtol=1e-12)
    np.testing.assert_allclose(losses.binary_logistic_loss(0, -40.0), np.exp(-40.0), rtol=1e-12)


def test_sparsemax_values():
    # Hand-checked: τ = (1 + 0.5 − 1)/2 = 0.25.
    assert_tree_allclose(losses.sparsemax(jnp.array([1.0, 0.5, -1.0])), jnp.array([0.75, 0.25, 0]))
    assert_tree_allclose(losses.sparsemax(jnp.zeros(4)), jnp.full(4, 0.25))
    assert_tree_allclose(losses.sparsemax(jnp.array([0.0, 2.0, 0.5])), jnp.array([0, 1.0, 0]))
    for z in _random_scores(3, k=7):
        p = losses.sparsemax(z)
        np.testing.assert_allclose(p, _np_sparsemax(z), atol=1e-12)
        np.testing.assert_allclose(np.sum(p), 1.0, rtol=1e-12)
        assert np.all(np.asarray(p) >= 0)
    # Ties and a single class.
    assert_tree_allclose(losses.sparsemax(jnp.array([1.0, 1.0, -5.0])), jnp.array([0.5, 0.5, 0]))
    assert_tree_allclose(losses.sparsemax(jnp.array([3.0])), jnp.array([1.0]))


def test_sparsemax_loss_values():
    # Hand-checked: p = (½, ½), ⟨p − e₀, 0⟩ + ½(1 − ½) = ¼.
    np.testing.assert_allclose(losses.sparsemax_loss(0, jnp.zeros(2)), 0.25)
    # The right class ahead by ≥ 1: p = e₀, zero loss. The wrong one far ahead: about z₁ − z₀.
    np.testing.assert_allclose(losses.sparsemax_loss(0, jnp.array([2.0, 0.5, 1.0])), 0.0)
    np.testing.assert_allclose(losses.sparsemax_loss(0, jnp.array([0.0, 5.0])), 5.0)
    scores = _random_scores(4, k=6)
    for y, z in zip(np.arange(8) % 6, scores, strict=True):
        expected = _np_sparsemax_loss(y, z)
        np.testing.assert_allclose(losses.sparsemax_loss(y, z), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            losses.sparsemax_loss(np.eye(6)[y], z), expected, rtol=1e-10, atol=1e-12
        )
        assert losses.sparsemax_loss(y, z) >= 0
        np.testing.assert_allclose(losses.sparsemax_loss(y, z + 100.0), expected, rtol=1e-10)


def test_sparsemax_loss_with_a_general_label_vector_follows_the_formula():
    # For y off the simplex the loss is ⟨p − y, z⟩ + ½(‖y‖² − ‖p‖²) evaluated as written (the
    # internal shift of the scores must not change it).
    z = np.array([3.0, 1.0, 2.5, -1.0])
    y = np.array([0.5, 0.0, 1.0, 0.2])
    p = _np_sparsemax(z)
    expected = (p - y) @ z + 0.5 * (y @ y - p @ p)
    np.testing.assert_allclose(losses.sparsemax_loss(y, z), expected, rtol=1e-12)


def test_squared_loss_values():
    np.testing.assert_allclose(losses.squared_loss(jnp.array([1.0, 2.0]), jnp.array([0, 4.0])), 2.5)
    rng = np.random.default_rng(5)
    t, p = rng.normal(size=(2, 3, 4))
    np.testing.assert_allclose(losses.squared_loss(t, p), 0.5 * np.sum((t - p) ** 2), rtol=1e-12)
    tree_t = {"a": jnp.asarray(t), "b": jnp.array([1.0])}
    tree_p = {"a": jnp.asarray(p), "b": jnp.array([-1.0])}
    np.testing.assert_allclose(
        losses.squared_loss(tree_t, tree_p), 0.5 * np.sum((t - p) ** 2) + 2.0, rtol=1e-12
    )


# ---------------------------------------------------------------------------------------------
# Gradients: closed forms and finite differences.

MULTICLASS = [
    losses.multiclass_hinge_loss,
    losses.multiclass_logistic_loss,
    losses.multiclass_perceptron_loss,
    losses.sparsemax_loss,
]


@pytest.mark.parametrize("loss", MULTICLASS, ids=lambda f: f.__name__)
def test_multiclass_gradients_match_finite_differences(loss):
    # Random scores have distinct margins (no ties in the hinge's max), and the hinge and the
    # sparsemax loss are piecewise smooth: away from the pieces' boundaries w.p. 1.
    grad = jax.jit(jax.grad(loss, argnums=1))
    value = jax.jit(loss)
    for y, z in zip([0, 3, 4], _random_scores(6, k=5, batch=3), strict=True):
        z = jnp.asarray(z)
        expected = finite_difference_grad(lambda s, y=y: value(y, s), z)
        assert_tree_allclose(grad(y, z), expected, rtol=1e-6, atol=1e-7)


def test_closed_form_gradients():
    rng = np.random.default_rng(7)
    for y in range(5):
        z = jnp.asarray(rng.normal(size=5) * 2)
        e = jnp.eye(5)[y]
        assert_tree_allclose(
            jax.grad(losses.multiclass_logistic_loss, 1)(y, z), jax.nn.softmax(z) - e
        )
        assert_tree_allclose(
            jax.grad(losses.sparsemax_loss, 1)(y, z), _np_sparsemax(z) - e, atol=1e-12
        )
        j_star = np.argmax(np.asarray(z) + 1 - np.asarray(e))
        assert_tree_allclose(
            jax.grad(losses.multiclass_hinge_loss, 1)(y, z), jnp.eye(5)[j_star] - e
        )
        logit = z[0]
        expected = 1 / (1 + np.exp(-float(logit))) - (y % 2)
        np.testing.assert_allclose(
            jax.grad(losses.binary_logistic_loss, 1)(y % 2, logit), expected, rtol=1e-12
        )
        assert_tree_allclose(
            jax.grad(losses.squared_loss, 1)(z, 2 * z),
            z,  # prediction − target
        )


def test_binary_logistic_gradient_matches_finite_differences():
    grad = jax.jit(jax.grad(losses.binary_logistic_loss, argnums=(0, 1)))
    for y, z in [(0.0, 1.3), (1.0, -2.2), (0.3, 0.4)]:
        expected = finite_difference_grad(
            lambda p: losses.binary_logistic_loss(*p), (jnp.asarray(y), jnp.asarray(z))
        )
        assert_tree_allclose(grad(jnp.asarray(y), jnp.asarray(z)), expected, rtol=1e-6)


def test_sparsemax_jacobian():
    z = jnp.array([1.2, 0.9, -0.4, 0.7, -2.0])
    p = np.asarray(losses.sparsemax(z))
    s = (p > 0).astype(float)
    assert 1 < s.sum() < 5  # a support that is neither one entry nor everything
    expected = np.diag(s) - np.outer(s, s) / s.sum()
    jac = jax.jacobian(losses.sparsemax)(z)
    np.testing.assert_allclose(jac, expected, atol=1e-12)
    columns = [
        finite_difference_grad(lambda v, i=i: losses.sparsemax(v)[i], z) for i in range(z.size)
    ]
    np.testing.assert_allclose(jac, np.stack(columns), atol=1e-7)


def test_gradients_with_respect_to_one_hot_labels():
    # A one-hot (or probability) label is differentiable too: ∂/∂y of the logistic loss is
    # logsumexp(z) − z, of the sparsemax loss y − z.
    z = jnp.array([0.3, -1.0, 2.0])
    y = jnp.array([0.0, 1.0, 0.0])
    assert_tree_allclose(jax.grad(losses.multiclass_logistic_loss)(y, z), jax.nn.logsumexp(z) - z)
    assert_tree_allclose(jax.grad(losses.sparsemax_loss)(y, z), y - z, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# float32 at extreme scores.

EXTREME = [
    np.array([1e4, -1e4, 0.0], dtype=np.float32),
    np.array([-1e4, 1e4, 1e4 - 0.5], dtype=np.float32),
    np.array([-1e4, -1e4, -1e4], dtype=np.float32),
]


@pytest.mark.parametrize("loss", MULTICLASS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", range(len(EXTREME)))
def test_multiclass_float32_extreme_scores(loss, case):
    z32 = jnp.asarray(EXTREME[case])
    z64 = np.asarray(EXTREME[case], dtype=np.float64)
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1))
    for y in range(3):
        value, grad = value_and_grad(y, z32)
        assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        expected_value, expected_grad = value_and_grad(y, jnp.asarray(z64))
        np.testing.assert_allclose(value, expected_value, rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(grad, expected_grad, atol=1e-6)
    # Spot values: at ±1e4, the logistic loss of the wrong class is the gap, the right one 0.
    if case == 0 and loss is not losses.multiclass_hinge_loss:
        np.testing.assert_allclose(value_and_grad(1, z32)[0], 2e4, rtol=1e-6)
        np.testing.assert_allclose(value_and_grad(0, z32)[0], 0.0, atol=1e-6)
        np.testing.assert_allclose(value_and_grad(0, z32)[1], 0.0, atol=1e-6)


def test_binary_logistic_float32_extreme_logits():
    value_and_grad = jax.jit(jax.value_and_grad(losses.binary_logistic_loss, argnums=1))
    for logit, y, expected_value, expected_grad in [
        (1e4, 1, 0.0, 0.0),
        (1e4, 0, 1e4, 1.0),
        (-1e4, 1, 1e4, -1.0),
        (-1e4, 0, 0.0, 0.0),
    ]:
        value, grad = value_and_grad(jnp.float32(y), jnp.float32(logit))
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(value, expected_value, rtol=1e-6)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)


def test_sparsemax_float32_extreme_scores():
    p = losses.sparsemax(jnp.array([1e4, 1e4 - 0.5, -1e4], dtype=jnp.float32))
    assert p.dtype == jnp.float32
    np.testing.assert_allclose(p, [0.75, 0.25, 0.0], atol=1e-6)
    jac = jax.jacobian(losses.sparsemax)(jnp.array([1e4, 1e4 - 0.5, -1e4], dtype=jnp.float32))
    np.testing.assert_allclose(jac, [[0.5, -0.5, 0], [-0.5, 0.5, 0], [0, 0, 0]], atol=1e-6)
    # Scores near 1e4 that are not round numbers: float32 sums of them are off by ~1e-3, so the
    # scores must be shifted (by their maximum) before they are summed.
    rng = np.random.default_rng(0)
    for _ in range(3):
        z32 = (1e4 + rng.normal(size=6)).astype(np.float32)
        p = losses.sparsemax(jnp.asarray(z32))
        np.testing.assert_allclose(p, _np_sparsemax(z32.astype(np.float64)), atol=1e-6)
        value = losses.sparsemax_loss(2, jnp.asarray(z32))
        expected = _np_sparsemax_loss(2, z32.astype(np.float64))
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Batches, jit, bad labels.


@pytest.mark.parametrize("loss", MULTICLASS, ids=lambda f: f.__name__)
def test_vmap_over_a_batch(loss):
    scores = jnp.asarray(_random_scores(8, k=4, batch=6))
    labels = jnp.array([0, 1, 2, 3, 0, 2])
    batched = jax.jit(jax.vmap(loss))(labels, scores)
    looped = np.array([float(loss(int(y), z)) for y, z in zip(labels, scores, strict=True)])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
    one_hot = jax.vmap(loss)(jax.nn.one_hot(labels, 4), scores)
    np.testing.assert_allclose(one_hot, looped, rtol=1e-12)
    grads = jax.vmap(jax.grad(loss, argnums=1))(labels, scores)
    looped_grads = np.stack(
        [jax.grad(loss, argnums=1)(int(y), z) for y, z in zip(labels, scores, strict=True)]
    )
    np.testing.assert_allclose(grads, looped_grads, rtol=1e-12, atol=1e-15)


def test_vmap_binary_and_squared():
    rng = np.random.default_rng(9)
    logits = jnp.asarray(rng.normal(size=7))
    labels = jnp.asarray(rng.integers(0, 2, size=7))
    np.testing.assert_allclose(
        jax.vmap(losses.binary_logistic_loss)(labels, logits),
        np.log1p(np.exp(logits)) - labels * logits,
        rtol=1e-12,
    )
    t, p = jnp.asarray(rng.normal(size=(2, 7, 3)))
    np.testing.assert_allclose(
        jax.vmap(losses.squared_loss)(t, p), 0.5 * np.sum((t - p) ** 2, axis=1), rtol=1e-12
    )


def test_bad_labels():
    z = jnp.zeros(3)
    for loss in MULTICLASS:
        with pytest.raises(ValueError, match=r"class index in \[0, 3\)"):
            loss(3, z)
        with pytest.raises(ValueError, match="class index"):
            loss(-1, z)
        with pytest.raises(ValueError, match="shape"):
            loss(jnp.zeros((3, 3)), z)
        jax.jit(loss)(3, z)  # traced: not checked


# ---------------------------------------------------------------------------------------------
# Complex inputs: refused by name, except squared_loss (by modulus).

_CZ = jnp.asarray([0.3 + 0.4j, -1.2 + 0.1j, 0.5 - 2.0j])
_REAL_SCORES = jnp.asarray([0.3, -1.2, 0.5])
_FENCHEL_YOUNG = losses.make_fenchel_young_loss(jax.nn.logsumexp)
# (name, loss(label, scores) or f(scores), argument named for complex scores, a real label)
COMPLEX_REFUSED = [
    *((f.__name__, f, "scores", 1) for f in MULTICLASS),
    ("multiclass_sparsemax_loss", losses.multiclass_sparsemax_loss, "scores", 1),
    *(
        (name, getattr(losses, name), "score", 1.0)
        for name in (
            "binary_logistic_loss",
            "binary_hinge_loss",
            "binary_perceptron_loss",
            "binary_sparsemax_loss",
        )
    ),
    ("huber_loss", losses.huber_loss, "pred", 1.0),
    ("fenchel_young_loss", _FENCHEL_YOUNG, "scores", jnp.asarray([0.0, 1.0, 0.0])),
    ("sparsemax", lambda label, z: losses.sparsemax(z), "scores", None),
    ("sparse_plus", lambda label, z: losses.sparse_plus(z), "x", None),
    ("sparse_sigmoid", lambda label, z: losses.sparse_sigmoid(z), "x", None),
]


@pytest.mark.parametrize(
    ("name", "loss", "argument", "label"),
    COMPLEX_REFUSED,
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_losses_family_complex_input_is_refused_by_name(name, loss, argument, label):
    """Complex scores (or a complex label) to a loss defined on real numbers: a TypeError naming
    the loss and the argument. Before, each cast the complex value to real (keeping the real
    part) with only JAX's DeprecationWarning, and returned a loss of the real part."""
    with pytest.raises(TypeError, match=f"{name}: {argument} must be real, got dtype complex128"):
        loss(label, _CZ)
    if label is None:
        return
    label_name = {"huber_loss": "target", "fenchel_young_loss": "y_true"}.get(name, "label")
    complex_label = jnp.asarray(label) + 0.5j
    with pytest.raises(TypeError, match=f"{name}: {label_name} must be real"):
        loss(complex_label, _REAL_SCORES)


def test_squared_loss_complex_leaves_count_by_modulus():
    """squared_loss of complex leaves: the real ½Σ|target − prediction|² (it returned a complex
    number, which jax.grad refuses), and jax.grad in the prediction conj(prediction − target)
    (JAX's convention for a real function of complex inputs)."""
    target = jnp.asarray([1.0 - 1.0j, 0.5j, 2.0])
    loss = losses.squared_loss(target, _CZ)
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(loss, 0.5 * np.sum(np.abs(np.asarray(target - _CZ)) ** 2))
    grad = jax.grad(lambda p: losses.squared_loss(target, p))(_CZ)
    np.testing.assert_allclose(grad, np.conj(np.asarray(_CZ - target)), rtol=1e-15)
