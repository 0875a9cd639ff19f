"""implicitdiff.perturbations: the same numbers as JAXopt on the same key (values, JVPs,
gradients, Hessians), the Gumbel closed forms (softmax, σ·logsumexp + σγ and the softmax
Jacobian) within a few standard errors, and the pathwise identities checked by central finite
differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxopt import perturbations as jaxopt_perturbations

from implicitdiff import perturbations
from implicitdiff.perturbations import (
    Gumbel,
    Normal,
    make_perturbed_argmax,
    make_perturbed_fun,
    make_perturbed_max,
)

EULER_GAMMA = 0.5772156649015329
THETA = jnp.array([0.1, 0.5, -0.2, 0.3])
KEY = jax.random.PRNGKey(3)


def one_hot_argmax(x):
    return jax.nn.one_hot(jnp.argmax(x), x.shape[-1])


def ranks(x):
    """A ranking (piecewise-constant, not one-hot): 0 for the smallest entry."""
    return jnp.argsort(jnp.argsort(x)).astype(x.dtype)


@pytest.mark.parametrize("noise_name", ["Gumbel", "Normal"])
def test_same_key_same_numbers_as_jaxopt(noise_name):
    ours_noise = getattr(perturbations, noise_name)()
    theirs_noise = getattr(jaxopt_perturbations, noise_name)()
    tangent = jnp.array([1.0, -2.0, 0.5, 0.3])
    for fun in (one_hot_argmax, ranks):
        for cv in (False, True):
            ours = make_perturbed_argmax(fun, 300, 0.3, ours_noise, cv)
            theirs = jaxopt_perturbations.make_perturbed_argmax(fun, 300, 0.3, theirs_noise, cv)
            v1, t1 = jax.jvp(lambda x, f=ours: f(x, KEY), (THETA,), (tangent,))
            v2, t2 = jax.jvp(lambda x, f=theirs: f(x, KEY), (THETA,), (tangent,))
            np.testing.assert_allclose(v1, v2, rtol=1e-14, atol=1e-15)
            np.testing.assert_allclose(t1, t2, rtol=1e-12, atol=1e-13)
            j1 = jax.jacrev(ours)(THETA, KEY)  # reverse mode transposes the same estimator
            np.testing.assert_allclose(j1 @ tangent, t1, rtol=1e-12, atol=1e-13)

    ours = make_perturbed_max(one_hot_argmax, 300, 0.3, ours_noise)
    theirs = jaxopt_perturbations.make_perturbed_max(one_hot_argmax, 300, 0.3, theirs_noise)
    np.testing.assert_allclose(ours(THETA, KEY), theirs(THETA, KEY), rtol=1e-14)
    np.testing.assert_allclose(
        jax.grad(ours)(THETA, KEY), jax.grad(theirs)(THETA, KEY), rtol=1e-14, atol=1e-15
    )
    np.testing.assert_allclose(
        jax.hessian(ours)(THETA, KEY), jax.hessian(theirs)(THETA, KEY), rtol=1e-12, atol=1e-13
    )

    for fun in (lambda x: jnp.sum(jax.nn.relu(x)), jax.nn.relu):
        ours = make_perturbed_fun(fun, 300, 0.3, ours_noise)
        theirs = jaxopt_perturbations.make_perturbed_fun(fun, 300, 0.3, theirs_noise)
        np.testing.assert_allclose(ours(THETA, KEY), theirs(THETA, KEY), rtol=1e-14)
        np.testing.assert_allclose(
            jax.jacfwd(ours)(THETA, KEY), jax.jacfwd(theirs)(THETA, KEY), rtol=1e-12, atol=1e-13
        )


def test_noise_classes_match_jaxopt_and_their_formulas():
    z = jnp.linspace(-2.0, 3.0, 7)
    np.testing.assert_allclose(Gumbel().log_prob(z), -z - np.exp(-z), rtol=1e-15)
    np.testing.assert_allclose(Normal().log_prob(z), -0.5 * z**2, rtol=1e-15)
    for name in ("Gumbel", "Normal"):
        ours, theirs = getattr(perturbations, name)(), getattr(jaxopt_perturbations, name)()
        np.testing.assert_array_equal(ours.sample(KEY, (5, 2)), theirs.sample(KEY, (5, 2)))
        np.testing.assert_array_equal(ours.log_prob(z), theirs.log_prob(z))
    np.testing.assert_array_equal(Gumbel().sample(KEY, (3,)), jax.random.gumbel(KEY, (3,)))
    np.testing.assert_array_equal(Normal().sample(KEY, (3,)), jax.random.normal(KEY, (3,)))


def test_gumbel_perturbed_argmax_is_softmax_and_max_is_logsumexp():
    """E[one_hot argmax(θ + σG)] = softmax(θ/σ); E[max(θ + σG)] = σ logsumexp(θ/σ) + σγ."""
    sigma, n = 0.5, 200_000
    theta = jnp.array([0.0, 0.4, -0.3, 0.2])
    p = np.asarray(jax.nn.softmax(theta / sigma))
    y = jax.jit(make_perturbed_argmax(one_hot_argmax, n, sigma))(theta, KEY)
    np.testing.assert_array_less(np.abs(y - p), 5 * np.sqrt(p * (1 - p) / n))
    value = jax.jit(make_perturbed_max(one_hot_argmax, n, sigma))(theta, KEY)
    expected = sigma * (jax.nn.logsumexp(theta / sigma) + EULER_GAMMA)
    standard_error = sigma * np.pi / np.sqrt(6 * n)  # the Gumbel's standard deviation is π/√6
    assert abs(value - expected) < 5 * standard_error


def test_gumbel_jacobian_estimator_is_unbiased_for_the_softmax_jacobian():
    """The score-function Jacobian, averaged over independent keys, matches (diag p − ppᵀ)/σ."""
    sigma, n, keys = 0.5, 4000, 60
    theta = jnp.array([0.0, 0.4, -0.3])
    p = jax.nn.softmax(theta / sigma)
    expected = np.asarray((jnp.diag(p) - jnp.outer(p, p)) / sigma)
    rngs = jax.random.split(KEY, keys)
    for cv in (False, True):
        f = make_perturbed_argmax(one_hot_argmax, n, sigma, Gumbel(), cv)
        jacs = np.asarray(jax.jit(jax.vmap(jax.jacfwd(f), in_axes=(None, 0)))(theta, rngs))
        mean, se = jacs.mean(0), jacs.std(0, ddof=1) / np.sqrt(keys)
        np.testing.assert_array_less(np.abs(mean - expected), 5 * se + 1e-12)
        assert np.all(se < 0.1 * np.abs(expected).max())  # the check has power


def test_perturbed_max_gradient_is_the_perturbed_argmax_and_finite_differences():
    """On a fixed key the estimate of F_σ is piecewise linear in θ with gradient y_σ(θ)."""
    sigma, n = 0.3, 500
    f_max = make_perturbed_max(one_hot_argmax, n, sigma)
    f_argmax = make_perturbed_argmax(one_hot_argmax, n, sigma)
    grad = jax.grad(f_max)(THETA, KEY)
    np.testing.assert_array_equal(grad, f_argmax(THETA, KEY))
    h = 1e-7
    fd = [
        (f_max(THETA + h * e, KEY) - f_max(THETA - h * e, KEY)) / (2 * h)
        for e in np.eye(THETA.size)
    ]
    np.testing.assert_allclose(grad, fd, atol=1e-7)
    # Hessian of the max = Jacobian of the argmax estimator (the same draws).
    np.testing.assert_allclose(
        jax.hessian(f_max)(THETA, KEY), jax.jacfwd(f_argmax)(THETA, KEY), rtol=1e-13, atol=1e-14
    )


def test_perturbed_fun_normal_noise_closed_forms():
    """f(x) = ‖x‖²: E f(θ + σZ) = ‖θ‖² + σ²d and the gradient estimator's mean is 2θ."""
    sigma, n, keys = 0.2, 2000, 60
    theta = jnp.array([0.3, -0.7, 1.1])
    rngs = jax.random.split(KEY, keys)
    for cv in (False, True):
        f = make_perturbed_fun(lambda x: jnp.sum(x**2), n, sigma, Normal(), cv)
        values, grads = jax.jit(jax.vmap(jax.value_and_grad(f), in_axes=(None, 0)))(theta, rngs)
        values, grads = np.asarray(values), np.asarray(grads)
        expected = float(jnp.sum(theta**2)) + sigma**2 * theta.size
        assert abs(values.mean() - expected) < 5 * values.std(ddof=1) / np.sqrt(keys)
        se = grads.std(0, ddof=1) / np.sqrt(keys)
        np.testing.assert_array_less(np.abs(grads.mean(0) - 2 * theta), 5 * se)
        assert np.all(se < 0.2)


def test_perturbed_fun_vector_output_with_control_variate():
    """f(x) = Ax: the mean is Aθ and the Jacobian estimator's mean is A. (JAXopt's
    control-variate path fails on a vector output, and on any output with a size-1 axis.)"""
    sigma, n, keys = 0.5, 2000, 40
    A = jnp.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    theta = jnp.array([0.3, -0.7, 1.1])
    rngs = jax.random.split(KEY, keys)
    f = make_perturbed_fun(lambda x: A @ x, n, sigma, Normal(), control_variate=True)
    jacs = np.asarray(jax.jit(jax.vmap(jax.jacfwd(f), in_axes=(None, 0)))(theta, rngs))
    se = jacs.std(0, ddof=1) / np.sqrt(keys)
    np.testing.assert_array_less(np.abs(jacs.mean(0) - A), 5 * se + 1e-12)
    single = make_perturbed_fun(lambda x: jnp.sum(x)[None], n, sigma, Normal())
    assert single(theta, KEY).shape == (1,)
    assert jax.jacfwd(single)(theta, KEY).shape == (1, 3)


def test_jit_and_vmap_with_split_keys():
    f = jax.jit(make_perturbed_argmax(one_hot_argmax, 100, 0.2))
    batch = jnp.stack([THETA, -THETA, 2 * THETA])
    rngs = jax.random.split(KEY, 3)
    batched = jax.jit(jax.vmap(f))(batch, rngs)
    for i in range(3):
        np.testing.assert_allclose(batched[i], f(batch[i], rngs[i]), rtol=1e-15)
    jac = jax.jit(jax.vmap(jax.jacfwd(f)))(batch, rngs)
    single = jax.jit(jax.jacfwd(f))
    for i in range(3):
        np.testing.assert_allclose(jac[i], single(batch[i], rngs[i]), rtol=1e-13)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="num_samples"):
        make_perturbed_argmax(one_hot_argmax, num_samples=0)
    with pytest.raises(ValueError, match="sigma"):
        make_perturbed_max(one_hot_argmax, sigma=-1.0)
    # sigma = inf gave a finite, meaningless output (the noise's own argmax) and a 0 derivative
    for sigma in (float("inf"), np.inf, float("nan")):
        with pytest.raises(ValueError, match="sigma must be a finite positive number"):
            make_perturbed_argmax(one_hot_argmax, sigma=sigma)
    with pytest.raises(TypeError, match="noise must have a sample method"):
        make_perturbed_fun(jnp.sum, noise=object())

    class NoLogProb:
        sample = Gumbel.sample

    with pytest.raises(TypeError, match="noise must have a log_prob method"):
        make_perturbed_fun(jnp.sum, noise=NoLogProb())
    with pytest.raises(TypeError, match="callable"):
        make_perturbed_fun(3.0)


def test_module_is_exported():
    import implicitdiff

    assert implicitdiff.perturbations is perturbations


@pytest.mark.parametrize("noise", [Normal(), Gumbel()], ids=["Normal", "Gumbel"])
def test_perturbed_max_with_masked_entries(noise):
    """An entry masked with −∞ (never chosen) adds nothing to ⟨y, θ + σZ⟩: the perturbed max
    equals that of the entry at −1e6 (never chosen either, with the same key), and its
    gradient is the perturbed argmax, 0 on the mask. It was NaN (0 · −∞)."""
    perturbed_max = make_perturbed_max(one_hot_argmax, 1000, 0.5, noise)
    theta = THETA.at[1].set(-jnp.inf)
    value, grad = jax.value_and_grad(perturbed_max)(theta, KEY)
    np.testing.assert_allclose(value, perturbed_max(THETA.at[1].set(-1e6), KEY), rtol=1e-12)
    expected = make_perturbed_argmax(one_hot_argmax, 1000, 0.5, noise)(theta, KEY)
    np.testing.assert_allclose(grad, expected, rtol=1e-12)
    assert grad[1] == 0
    # The Gumbel closed form over the unmasked entries.
    if isinstance(noise, Gumbel):
        finite = np.delete(np.asarray(THETA), 1)
        exact = 0.5 * (jax.nn.logsumexp(finite / 0.5) + EULER_GAMMA)
        assert abs(value - exact) < 5 * 0.5 * np.pi / np.sqrt(6 * 1000)
