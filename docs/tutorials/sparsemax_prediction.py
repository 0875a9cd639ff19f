"""Sparse structured prediction with projections onto the simplex

Softmax turns scores z into probabilities that are all positive. Sparsemax, the Euclidean
projection of z onto the probability simplex,

    sparsemax(z) = argmin_{p ≥ 0, Σ p = 1} ‖p − z‖²,

returns probabilities with exact zeros: a prediction that names a few plausible classes and
rules out the rest. This tutorial (1) differentiates the projection *implicitly*, as the output
of a generic projected-gradient solver, and checks the result against sparsemax's closed-form
Jacobian; (2) trains a linear classifier on scikit-learn's handwritten digits with the sparsemax
loss, against the logistic (softmax) loss, and looks at how sparse its predictions are.
"""

# %%
# Set up, in float64. `IMPLICITDIFF_TUTORIAL_SIZE=small` (the test suite) trains for fewer steps.
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

from implicitdiff import losses, projections
from implicitdiff.solvers import ProjectedGradient

jax.config.update("jax_enable_x64", True)

small = os.environ.get("IMPLICITDIFF_TUTORIAL_SIZE", "full") == "small"
num_steps = 40 if small else 500

# %%
# ## 1. The projection as the output of a solver
#
# Any solver of min ½‖p − z‖² over the simplex gives sparsemax(z). `ProjectedGradient` solves it
# and is differentiated through its fixed point p = proj(p − η∇f(p, z)): the iterations are
# never differentiated. On the support S of p the Jacobian is diag(s) − ssᵀ/|S|, s the indicator
# of S; we compare.


def half_squared_distance(p, z):
    return 0.5 * jnp.sum((p - z) ** 2)


projector = ProjectedGradient(
    fun=half_squared_distance, projection=projections.simplex, tol=1e-12, maxiter=1000
)


def sparsemax_by_solver(z):
    return projector.run(jnp.ones_like(z) / z.size, 1.0, z).params  # 1.0: the simplex's scale


z = jnp.array([1.2, 0.9, 0.1, -0.4, 1.0])
p = sparsemax_by_solver(z)
print("sparsemax by the solver:", np.round(np.asarray(p), 6))
print("closed form:            ", np.round(np.asarray(losses.sparsemax(z)), 6))

J = jax.jacobian(sparsemax_by_solver)(z)
s = (p > 0).astype(z.dtype)
J_closed = jnp.diag(s) - jnp.outer(s, s) / jnp.sum(s)
print(
    f"support size {int(jnp.sum(s))}; max |J_implicit - J_closed| = "
    f"{float(jnp.max(jnp.abs(J - J_closed))):.1e}"
)

# %%
# ## 2. A sparse classifier on the digits
#
# 1,797 images of 8 × 8 pixels, 10 classes; a linear model z = W x + b trained by Adam on the
# mean sparsemax loss (a Fenchel–Young loss whose gradient in z is sparsemax(z) − y), and the same
# model with the logistic loss, from the same start.
X, y = load_digits(return_X_y=True)
X = X / 16.0
perm = np.random.default_rng(0).permutation(len(y))
train, test = perm[:1200], perm[1200:]
X_tr, y_tr, X_te, y_te = (jnp.asarray(a) for a in (X[train], y[train], X[test], y[test]))


def scores(params, X):
    W, b = params
    return X @ W + b


def make_objective(loss):
    def objective(params):
        per_sample = jax.vmap(loss)(y_tr, scores(params, X_tr))
        return jnp.mean(per_sample) + 1e-4 * jnp.sum(params[0] ** 2)

    return objective


def train_model(loss):
    objective = make_objective(loss)
    optimizer = optax.adam(0.05)
    params = (jnp.zeros((64, 10)), jnp.zeros(10))
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(objective)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    for _ in range(num_steps):
        params, state, value = step(params, state)
    return params, float(value)


models = {
    "sparsemax": train_model(losses.sparsemax_loss),
    "logistic": train_model(losses.multiclass_logistic_loss),
}
for name, (params, value) in models.items():
    z_te = scores(params, X_te)
    accuracy = float(jnp.mean(jnp.argmax(z_te, axis=1) == y_te))
    probs = losses.sparsemax(z_te) if name == "sparsemax" else jax.nn.softmax(z_te)
    support = float(jnp.mean(jnp.sum(probs > 0, axis=1)))
    print(
        f"{name:9s}: training loss {value:.4f}, test accuracy {accuracy:.3f}, "
        f"classes with probability > 0 per image: {support:.2f}"
    )

# %%
# Sparsemax's predictions give most test images a single class with probability 1, and the
# ambiguous ones a short list. The images where the sparse model hesitates most (largest
# support), with both models' probabilities:
p_sparse = losses.sparsemax(scores(models["sparsemax"][0], X_te))
p_soft = jax.nn.softmax(scores(models["logistic"][0], X_te))
hesitant = np.argsort(-np.asarray(jnp.sum(p_sparse > 0, axis=1)), kind="stable")[:4]
sizes, counts = np.unique(np.asarray(jnp.sum(p_sparse > 0, axis=1)), return_counts=True)
print(
    "test images by number of classes with probability > 0:",
    {int(k): int(c) for k, c in zip(sizes, counts, strict=True)},
)

fig, axes = plt.subplots(2, 4, figsize=(11, 4.4), gridspec_kw={"height_ratios": [1, 1.2]})
for k, i in enumerate(hesitant):
    axes[0, k].imshow(np.asarray(X_te[i]).reshape(8, 8), cmap="gray_r")
    axes[0, k].set(title=f"label {int(y_te[i])}", xticks=[], yticks=[])
    axes[1, k].bar(np.arange(10) - 0.2, np.asarray(p_soft[i]), 0.4, label="softmax")
    axes[1, k].bar(np.arange(10) + 0.2, np.asarray(p_sparse[i]), 0.4, label="sparsemax")
    axes[1, k].set(xticks=range(10), ylim=(0, 1))
axes[1, 0].legend(fontsize=8)
fig.tight_layout()
