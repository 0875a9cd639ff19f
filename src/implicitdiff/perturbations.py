"""Differentiable perturbed optimizers (Berthet et al., 2020), with JAXopt's interface.

For a piecewise-constant map y(θ) (an argmax: one-hot of the best entry, a ranking, a
shortest path, …), random perturbations make a smooth one:

    y_σ(θ) = E_Z[ y(θ + σZ) ],    F_σ(θ) = E_Z[ max_y ⟨y, θ + σZ⟩ ] = E_Z[ ⟨y(θ + σZ), θ + σZ⟩ ],

for noise Z with density ∝ exp(−ν(z)) (``noise.log_prob(z) = −ν(z)`` up to a constant). Both
are estimated by Monte Carlo over ``num_samples`` draws Z₁, …, Z_N from an rng key. Their
derivatives, with the noise score ∇ν(z) = −∇ log p(z) (z for ``Normal``, 1 − e⁻ᶻ for
``Gumbel``):

    ∂y_σ(θ) = (1/σ) E[ y(θ + σZ) ∇ν(Z)ᵀ ]      (estimated on the same draws),
    ∇F_σ(θ) = y_σ(θ)                           (the perturbed argmax on the same draws).

With ``control_variate=True`` the Jacobian estimator uses y(θ + σZ) − y(θ) instead of
y(θ + σZ), which has the same expectation (E[∇ν(Z)] = 0) and often a lower variance. The same
estimator serves for any function (``make_perturbed_fun``), smooth or not.

For Gumbel noise and y = one-hot argmax, y_σ(θ) = softmax(θ/σ) and F_σ(θ) = σ logsumexp(θ/σ)
+ σγ (γ Euler's constant): these are the closed forms the tests check against.

The returned functions take ``(inputs, rng)``, are ``jax.jit``-able when the wrapped function
is, and are batched by ``jax.vmap`` with one key per row (``jax.random.split(rng, batch)``).
Given the same key they draw the same noise as JAXopt 0.8.5.

>>> import jax, jax.numpy as jnp
>>> from implicitdiff import perturbations
>>> argmax = lambda x: jax.nn.one_hot(jnp.argmax(x), x.shape[-1])
>>> soft = perturbations.make_perturbed_argmax(argmax, num_samples=20000, sigma=1.0)
>>> y = soft(jnp.array([0.0, 1.0, 2.0]), jax.random.PRNGKey(0))
>>> bool(jnp.allclose(y, jax.nn.softmax(jnp.array([0.0, 1.0, 2.0])), atol=0.02))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import _checks

__all__ = [
    "Gumbel",
    "Normal",
    "make_perturbed_argmax",
    "make_perturbed_fun",
    "make_perturbed_max",
]


class Normal:
    """Standard normal noise: density ∝ exp(−z²/2).

    ``log_prob(z) = −z²/2`` (up to the normalizing constant, which no estimator needs), so the
    score used by the Jacobian estimator is ∇ν(z) = z.

    Example:
      >>> import jax
      >>> z = Normal().sample(jax.random.PRNGKey(0), (3,))
      >>> z.shape
      (3,)
    """

    def sample(self, seed: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        """Draws standard normal noise.

        Args:
          seed: a ``jax.random`` key.
          sample_shape: the shape of the draw.

        Returns:
          An array of shape ``sample_shape``.
        """
        return jax.random.normal(seed, sample_shape)

    def log_prob(self, inputs: jax.Array) -> jax.Array:
        """Unnormalized log-density −z²/2, element-wise.

        Args:
          inputs: an array z.

        Returns:
          −z²/2, shaped like ``inputs``.
        """
        return -0.5 * inputs**2


class Gumbel:
    """Standard Gumbel noise: density exp(−z − e⁻ᶻ).

    ``log_prob(z) = −z − e⁻ᶻ``, so the score used by the Jacobian estimator is
    ∇ν(z) = 1 − e⁻ᶻ. The max of θᵢ + Gᵢ over i is Gumbel with location logsumexp(θ), and its
    argmax is distributed as softmax(θ) (the Gumbel-max trick).

    Example:
      >>> import jax
      >>> z = Gumbel().sample(jax.random.PRNGKey(0), (2, 3))
      >>> z.shape
      (2, 3)
    """

    def sample(self, seed: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        """Draws standard Gumbel noise.

        Args:
          seed: a ``jax.random`` key.
          sample_shape: the shape of the draw.

        Returns:
          An array of shape ``sample_shape``.
        """
        return jax.random.gumbel(seed, sample_shape)

    def log_prob(self, inputs: jax.Array) -> jax.Array:
        """Log-density −z − e⁻ᶻ, element-wise.

        Args:
          inputs: an array z.

        Returns:
          −z − exp(−z), shaped like ``inputs``.
        """
        return -inputs - jnp.exp(-inputs)


def _check_options(owner: str, fun: Any, num_samples: Any, sigma: Any, noise: Any) -> None:
    if not callable(fun):
        raise TypeError(f"{owner}: the function to perturb must be callable, got {fun!r}")
    _checks.check_positive_int(num_samples, "num_samples", owner)
    if not isinstance(sigma, jax.core.Tracer):
        sigma_ok = _checks.is_real_number(sigma) and 0 < float(sigma) < float("inf")
        if not sigma_ok:  # inf: every sample's argmax is the noise's, and the derivative 0
            raise ValueError(f"{owner}: sigma must be a finite positive number, got {sigma!r}")
    for method in ("sample", "log_prob"):
        if not callable(getattr(noise, method, None)):
            raise TypeError(f"{owner}: noise must have a {method} method (like Gumbel or Normal)")


def _perturbed_outputs(
    fun: Callable, noise: Any, num_samples: int, sigma: Any, inputs: jax.Array, rng: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The draws Z₁, …, Z_N from ``rng`` (in the dtype of floating inputs), the perturbed inputs
    θ + σZₙ and fun of each of them (each stacked along a leading axis of length N)."""
    samples = noise.sample(seed=rng, sample_shape=(num_samples, *inputs.shape))
    if jnp.issubdtype(inputs.dtype, jnp.floating):
        samples = samples.astype(inputs.dtype)
    perturbed = inputs + sigma * samples
    return samples, perturbed, jax.vmap(fun)(perturbed)


def _score(noise: Any, samples: jax.Array) -> jax.Array:
    """∇ν(z) = −∇ log p(z), element-wise, shaped like ``samples``."""
    flat = samples.reshape(-1)
    return -jax.vmap(jax.grad(noise.log_prob))(flat).reshape(samples.shape)


def _score_jvp(
    outputs: jax.Array, score: jax.Array, tangent: jax.Array, num_samples: int, sigma: Any
) -> jax.Array:
    """(1/(Nσ)) Σₙ outputsₙ ⟨scoreₙ, tangent⟩, for outputs of any shape per sample."""
    weights = score.reshape(num_samples, -1) @ tangent.reshape(-1)
    return jnp.tensordot(weights, outputs, axes=1) / (num_samples * sigma)


def make_perturbed_fun(
    fun: Callable[[jax.Array], Any],
    num_samples: int = 1000,
    sigma: float = 0.1,
    noise: Any = Gumbel(),  # noqa: B008 (stateless, as in JAXopt)
    control_variate: bool = False,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Smooths any function by averaging it over random perturbations of its input.

    Returns f_σ(θ, rng) ≈ E_Z[f(θ + σZ)] (mean over ``num_samples`` draws), with the Jacobian
    (1/σ) E[f(θ + σZ) ∇ν(Z)ᵀ] estimated on the same draws (with f(θ + σZ) − f(θ) when
    ``control_variate``). ``fun`` need not be differentiable.

    Args:
      fun: a function from an array of shape ``(D₁, …, D_k)`` to an array of any shape.
      num_samples: the number N of perturbations to average over.
      sigma: the scale σ > 0 of the perturbation.
      noise: the noise distribution: an object with ``sample(seed, sample_shape)`` and an
        element-wise ``log_prob`` (``Gumbel()`` or ``Normal()``).
      control_variate: subtract f(θ) in the Jacobian estimator (same expectation, usually less
        variance).

    Returns:
      A function ``(inputs, rng) -> output`` shaped like ``fun``'s output, differentiable in
        ``inputs``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> smooth_relu = make_perturbed_fun(jax.nn.relu, num_samples=1000, noise=Normal())
      >>> smooth_relu(jnp.array([-1.0, 1.0]), jax.random.PRNGKey(0)).shape
      (2,)
    """
    _check_options("make_perturbed_fun", fun, num_samples, sigma, noise)

    @jax.custom_jvp
    def perturbed_fun(inputs, rng):
        _, _, outputs = _perturbed_outputs(fun, noise, num_samples, sigma, inputs, rng)
        return jnp.mean(outputs, axis=0)

    @perturbed_fun.defjvp
    def perturbed_fun_jvp(primals, tangents):
        inputs, rng = primals
        tangent = tangents[0]
        samples, _, outputs = _perturbed_outputs(fun, noise, num_samples, sigma, inputs, rng)
        value = jnp.mean(outputs, axis=0)
        centered = outputs - fun(inputs) if control_variate else outputs
        return value, _score_jvp(
            centered, _score(noise, samples), tangent, num_samples, sigma
        ).astype(value.dtype)

    return perturbed_fun


def make_perturbed_argmax(
    argmax_fun: Callable[[jax.Array], jax.Array],
    num_samples: int = 1000,
    sigma: float = 0.1,
    noise: Any = Gumbel(),  # noqa: B008 (stateless, as in JAXopt)
    control_variate: bool = False,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The perturbed argmax y_σ(θ) = E_Z[y(θ + σZ)], differentiable.

    Averages ``argmax_fun(θ + σZₙ)`` over ``num_samples`` draws; its Jacobian is estimated by
    (1/(Nσ)) Σₙ y(θ + σZₙ) ∇ν(Zₙ)ᵀ on the same draws (an unbiased estimate of the Jacobian of
    y_σ; for Gumbel noise and a one-hot argmax, of (diag(p) − ppᵀ)/σ with p = softmax(θ/σ)).

    Args:
      argmax_fun: a function from an array of shape ``(D₁, …, D_k)`` to an array of the same
        shape (a one-hot argmax, a ranking, a sorting permutation, …).
      num_samples: the number N of perturbations to average over.
      sigma: the scale σ > 0 of the perturbation.
      noise: the noise distribution (``Gumbel()``, the default, or ``Normal()``, or any object
        with ``sample(seed, sample_shape)`` and an element-wise ``log_prob``).
      control_variate: use y(θ + σZ) − y(θ) in the Jacobian estimator.

    Returns:
      A function ``(inputs, rng) -> y_σ(inputs)``, differentiable in ``inputs``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> argmax = lambda x: jax.nn.one_hot(jnp.argmax(x), x.shape[0])
      >>> soft_argmax = make_perturbed_argmax(argmax, num_samples=200, sigma=0.5)
      >>> y = soft_argmax(jnp.array([1.0, 2.0, 0.5]), jax.random.PRNGKey(0))
      >>> float(y.sum())
      1.0
    """
    _check_options("make_perturbed_argmax", argmax_fun, num_samples, sigma, noise)
    return make_perturbed_fun(argmax_fun, num_samples, sigma, noise, control_variate)


def make_perturbed_max(
    argmax_fun: Callable[[jax.Array], jax.Array],
    num_samples: int = 1000,
    sigma: float = 0.1,
    noise: Any = Gumbel(),  # noqa: B008 (stateless, as in JAXopt)
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The perturbed max F_σ(θ) = E_Z[⟨y(θ + σZ), θ + σZ⟩], differentiable.

    Averages ⟨y(θ + σZₙ), θ + σZₙ⟩ over ``num_samples`` draws, where y = ``argmax_fun`` (so the
    value is the max of the linear objective when y is the argmax over a set). Its gradient is
    the perturbed argmax y_σ(θ) on the same draws (exactly the gradient of the Monte Carlo
    estimate, which is piecewise linear in θ), and its Hessian is the perturbed argmax's
    Jacobian estimator.

    Args:
      argmax_fun: a function from an array of shape ``(D₁, …, D_k)`` to an array of the same
        shape.
      num_samples: the number N of perturbations to average over.
      sigma: the scale σ > 0 of the perturbation.
      noise: the noise distribution (``Gumbel()`` by default, or ``Normal()``).

    Returns:
      A function ``(inputs, rng) -> F_σ(inputs)`` (a scalar), differentiable in ``inputs``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> argmax = lambda x: jax.nn.one_hot(jnp.argmax(x), x.shape[0])
      >>> soft_max = make_perturbed_max(argmax, num_samples=200, sigma=0.5)
      >>> g = jax.grad(soft_max)(jnp.array([1.0, 2.0, 0.5]), jax.random.PRNGKey(0))
      >>> float(g.sum())
      1.0
    """
    _check_options("make_perturbed_max", argmax_fun, num_samples, sigma, noise)
    perturbed_argmax = make_perturbed_argmax(argmax_fun, num_samples, sigma, noise)

    @jax.custom_jvp
    def perturbed_max(inputs, rng):
        _, perturbed, outputs = _perturbed_outputs(
            argmax_fun, noise, num_samples, sigma, inputs, rng
        )
        # ⟨y, x + σZ⟩ with 0 · (±∞) = 0: an entry masked with −∞ and not chosen adds nothing.
        products = jnp.where(outputs == 0, 0, perturbed * outputs)
        values = jnp.sum(products.reshape(num_samples, -1), axis=1, dtype=perturbed.dtype)
        return jnp.mean(values)

    @perturbed_max.defjvp
    def perturbed_max_jvp(primals, tangents):
        inputs, rng = primals
        tangent = tangents[0]
        value = perturbed_max(inputs, rng)
        return value, jnp.sum(perturbed_argmax(inputs, rng) * tangent).astype(value.dtype)

    return perturbed_max
