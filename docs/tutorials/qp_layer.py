"""A quadratic program as a layer: learning the cost from decisions

A QP layer (OptNet; Amos & Kolter, 2017) outputs the solution of a quadratic program whose
data are computed by the layers before it. Here a linear model predicts, from features f, the
expected returns μ = Θ f of six assets, and the layer turns them into a portfolio:

    x*(μ) = argmin_x  ½ γ xᵀ Σ x − μᵀ x   s.t.  1ᵀx = 1,  0 ≤ x ≤ 0.4.

We observe only decisions: the portfolios x̂ᵢ that an investor with an unknown Θ̂ chose, and
learn Θ so that x*(Θ fᵢ) reproduces them ("inverse optimization", or decision-focused
learning). The solution x* is differentiated implicitly through the QP's KKT conditions
(`OSQP` returns the primal and dual solution, and its derivative needs only them, not the ADMM
iterations); the gradient is checked once against finite differences. Only the decisions are
fitted, never the returns: μ is identified up to what changes the decisions.
"""

# %%
# Set up, in float64. `IMPLICITDIFF_TUTORIAL_SIZE=small` (the test suite) fits fewer samples
# for fewer steps.
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from implicitdiff.solvers import OSQP

jax.config.update("jax_enable_x64", True)

small = os.environ.get("IMPLICITDIFF_TUTORIAL_SIZE", "full") == "small"
num_train = 40 if small else 200
num_steps = 30 if small else 300

# %%
# ## The problem
#
# Six assets with a fixed covariance Σ (two correlated groups), risk aversion γ = 2, three
# features per sample. The investor's Θ̂ (6 × 3) is drawn at random; the decisions x̂ᵢ are
# the QP's solutions at μᵢ = Θ̂ fᵢ. In `OSQP`'s form, min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h:
# Q = γΣ, c = −μ, A = 1ᵀ, b = 1, and G = [I; −I], h = [0.4·1; 0] for the bounds.
n_assets, n_features, gamma = 6, 3, 2.0
rng = np.random.default_rng(0)
loadings = rng.normal(size=(n_assets, 2)) * np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
Sigma = jnp.asarray(0.1 * loadings @ loadings.T + 0.05 * np.eye(n_assets))
Q = gamma * Sigma
A, b = jnp.ones((1, n_assets)), jnp.ones(1)
G = jnp.concatenate([jnp.eye(n_assets), -jnp.eye(n_assets)])
h = jnp.concatenate([0.4 * jnp.ones(n_assets), jnp.zeros(n_assets)])

qp = OSQP(tol=1e-10, maxiter=10_000)


def portfolio(mu):
    """The QP layer: x*(μ), differentiable in μ through the KKT conditions."""
    solution, state = qp.run(None, (Q, -mu), (A, b), (G, h))
    return solution.primal, state.converged


theta_true = jnp.asarray(rng.normal(scale=0.5, size=(n_assets, n_features)))
F_train = jnp.asarray(rng.normal(size=(num_train, n_features)))
F_test = jnp.asarray(rng.normal(size=(100, n_features)))
decide = jax.jit(jax.vmap(portfolio, in_axes=0))
X_train, ok_train = decide(F_train @ theta_true.T)
X_test, ok_test = decide(F_test @ theta_true.T)
print(
    f"{num_train} training and {len(F_test)} test decisions; all solved: "
    f"{bool(jnp.all(ok_train) & jnp.all(ok_test))}"
)
print(
    f"assets at a bound (0 or 0.4), on average: "
    f"{float(jnp.mean(jnp.sum((X_train < 1e-8) | (X_train > 0.4 - 1e-8), axis=1))):.2f} of 6"
)

# %%
# ## The loss and its gradient
#
# The loss is the mean squared distance between the layer's decisions and the observed ones,
# L(Θ) = (1/n) Σᵢ ‖x*(Θ fᵢ) − x̂ᵢ‖². `jax.grad` goes through `vmap` and the QP's implicit
# derivative. We compare it with central finite differences along a random direction of Θ, at
# a random Θ (each side solves every QP again).


def loss(theta, F, X_target):
    X, _ = jax.vmap(portfolio)(F @ theta.T)
    return jnp.mean(jnp.sum((X - X_target) ** 2, axis=1))


value_and_grad = jax.jit(jax.value_and_grad(loss))
value_at = jax.jit(loss)
theta0 = jnp.asarray(rng.normal(scale=0.5, size=(n_assets, n_features)))
direction = jnp.asarray(rng.normal(size=theta0.shape))
_, grad0 = value_and_grad(theta0, F_train, X_train)
eps = 1e-6
fd = (
    value_at(theta0 + eps * direction, F_train, X_train)
    - value_at(theta0 - eps * direction, F_train, X_train)
) / (2 * eps)
print(f"directional derivative, implicit:           {float(jnp.vdot(grad0, direction)):.10f}")
print(f"directional derivative, finite differences: {float(fd):.10f}")
print(f"relative difference: {abs(float(jnp.vdot(grad0, direction)) - fd) / abs(fd):.1e}")

# %%
# ## Learning Θ
#
# Adam from Θ = 0 (every asset equally attractive: the minimum-risk portfolio). The step
# (a batch of QP solves, the implicit backward through each, the update) is compiled once.
optimizer = optax.adam(0.05)
theta = jnp.zeros((n_assets, n_features))
opt_state = optimizer.init(theta)


@jax.jit
def step(theta, opt_state):
    value, grads = jax.value_and_grad(loss)(theta, F_train, X_train)
    updates, opt_state = optimizer.update(grads, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, value


start = time.perf_counter()
history = []
for _ in range(num_steps):
    theta, opt_state, value = step(theta, opt_state)
    history.append(float(value))
print(f"{num_steps} Adam steps in {time.perf_counter() - start:.1f} s")
print(f"training loss {history[0]:.2e} -> {history[-1]:.2e}")
X_pred, _ = decide(F_test @ theta.T)
test_error = jnp.sqrt(jnp.sum((X_pred - X_test) ** 2, axis=1))
X_start, _ = decide(jnp.zeros((len(F_test), n_assets)))  # Θ = 0: μ = 0
start_error = jnp.sqrt(jnp.sum((X_start - X_test) ** 2, axis=1))
print(
    f"test decisions: mean ‖x*(Θ f) − x̂‖ = {float(jnp.mean(test_error)):.2e} "
    f"(at Θ = 0: {float(jnp.mean(start_error)):.2e})"
)

fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1.4, 1, 1, 1]})
axes[0].semilogy(history)
axes[0].set(xlabel="Adam step", ylabel="training loss", title="fitting the decisions")
for k, ax in enumerate(axes[1:]):
    ax.bar(np.arange(n_assets) - 0.2, np.asarray(X_test[k]), 0.4, label="observed x̂")
    ax.bar(np.arange(n_assets) + 0.2, np.asarray(X_pred[k]), 0.4, label="layer x*(Θ f)")
    ax.set(xlabel="asset", title=f"test sample {k}", ylim=(0, 0.45), xticks=range(n_assets))
axes[1].legend(fontsize=8)
fig.tight_layout()
