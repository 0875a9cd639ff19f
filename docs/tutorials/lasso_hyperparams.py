"""Tuning the lasso and the elastic net by hypergradient descent

The regularization of a lasso or an elastic net is usually chosen by a grid search with
cross-validation: one fit per grid point. With implicit differentiation the validation loss has
a gradient with respect to the regularization strengths, so they can be tuned by any gradient
method, here Adam from Optax, through `implicitdiff.bilevel.minimize`. The inner problem is

    w*(λ, γ) = argmin_w  1/(2n) ‖X w − y‖² + λ (‖w‖₁ + ½ γ ‖w‖²),

solved by `ProximalGradient` with the elastic-net prox; the outer loss is the mean squared error
on held-out data. The data are scikit-learn's diabetes set (442 patients, 10 features), expanded
with all pairwise products so that there is something to regularize (65 features).
"""

# %%
# Set up. Exact derivatives at tight tolerances want float64, switched on before any array is made.
# `IMPLICITDIFF_TUTORIAL_SIZE=small` (the test suite) runs fewer outer steps and grid points.
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from implicitdiff import bilevel, prox
from implicitdiff.solvers import ProximalGradient

jax.config.update("jax_enable_x64", True)

small = os.environ.get("IMPLICITDIFF_TUTORIAL_SIZE", "full") == "small"
num_steps = 15 if small else 150
grid_size = 4 if small else 30

# %%
# The data: a random half for training, the other half for validation, features standardized
# on the training half, the target centred and scaled.
X_raw, y_raw = load_diabetes(return_X_y=True)
X_raw = PolynomialFeatures(degree=2, include_bias=False).fit_transform(X_raw)
perm = np.random.default_rng(0).permutation(len(y_raw))
train, val = perm[: len(perm) // 2], perm[len(perm) // 2 :]
scaler = StandardScaler().fit(X_raw[train])
X_tr, X_val = (jnp.asarray(scaler.transform(X_raw[i])) for i in (train, val))
y_mean, y_std = y_raw[train].mean(), y_raw[train].std()
y_tr, y_val = (jnp.asarray((y_raw[i] - y_mean) / y_std) for i in (train, val))
print(f"train {X_tr.shape}, validation {X_val.shape}")

# %%
# The inner solver. `ProximalGradient.run(init, hyperparams_prox, *args)` passes
# `hyperparams_prox = (λ, γ)` to the prox and `*args` to the smooth part; its output is
# differentiable with respect to both by the implicit function theorem (the fixed point of the
# proximal-gradient step), whatever the number of iterations it took.


def least_squares(w, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2)


solver = ProximalGradient(fun=least_squares, prox=prox.elastic_net, tol=1e-10, maxiter=20_000)


def inner_solve(w0, log_hyper):
    lam, gamma = jnp.exp(log_hyper[0]), jnp.exp(log_hyper[1])
    return solver.run(w0, (lam, gamma), X_tr, y_tr)


def validation_loss(w, log_hyper):
    return jnp.mean((X_val @ w - y_val) ** 2)


# %%
# Before trusting the hypergradient, compare it with central finite differences of the
# validation loss (each evaluation solves the inner problem again from scratch).
w0 = jnp.zeros(X_tr.shape[1])


def outer(log_hyper):
    return validation_loss(inner_solve(w0, log_hyper).params, log_hyper)


theta0 = jnp.array([np.log(0.5), np.log(1.0)])  # λ = 0.5: far too strong
grad = jax.jit(jax.grad(outer))(theta0)
eps = 1e-4
fd = np.array([(outer(theta0 + eps * e) - outer(theta0 - eps * e)) / (2 * eps) for e in jnp.eye(2)])
print("implicit hypergradient:", np.asarray(grad))
print("finite differences:    ", fd)
print(f"relative difference: {np.linalg.norm(grad - fd) / np.linalg.norm(fd):.1e}")

# %%
# The outer loop: Adam on θ = (log λ, log γ), warm-starting each inner solve from the last
# solution. The step (inner solve, hypergradient, Adam update) is compiled once.
start = time.perf_counter()
result = bilevel.minimize(
    validation_loss,
    inner_solve,
    hyperparams=theta0,
    inner_init=w0,
    optimizer=optax.adam(0.1),
    num_steps=num_steps,
)
lam, gamma = np.exp(np.asarray(result.hyperparams))
history = result.history
print(f"{num_steps} outer steps in {time.perf_counter() - start:.1f} s")
print(f"validation MSE {history['outer_loss'][0]:.4f} -> {history['outer_loss'][-1]:.4f}")
print(f"lambda = {lam:.4g}, gamma = {gamma:.4g}")
print(f"inner solves converged: {bool(np.all(history['inner_converged']))}")
w_star = inner_solve(result.inner_params, result.hyperparams).params
print(f"non-zero coefficients: {int(jnp.sum(w_star != 0))} of {w_star.size}")

# %%
# The same problem solved by scikit-learn's `ElasticNet`, whose objective is
# 1/(2n)‖Xw − y‖² + αρ‖w‖₁ + ½α(1 − ρ)‖w‖²: α = λ(1 + γ), ρ = 1/(1 + γ) give the same
# minimizer.
sk = ElasticNet(
    alpha=lam * (1 + gamma),
    l1_ratio=1 / (1 + gamma),
    fit_intercept=False,
    tol=1e-10,
    max_iter=200_000,
)
sk.fit(np.asarray(X_tr), np.asarray(y_tr))
print(f"max |w - w_sklearn| = {np.max(np.abs(np.asarray(w_star) - sk.coef_)):.1e}")

# %%
# A grid search over λ at the γ found, for comparison: the hypergradient path should end near
# the bottom of the validation curve (a local minimum: the problem is not convex in θ).
log_lams = np.linspace(np.log(1e-3), np.log(1.0), grid_size)
solve_at = jax.jit(lambda t: outer(t))
grid = [float(solve_at(jnp.array([t, np.log(gamma)]))) for t in log_lams]

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
ax0.plot(history["outer_loss"])
ax0.set(xlabel="outer step", ylabel="validation MSE", title="Adam on (log λ, log γ)")
ax1.semilogx(np.exp(log_lams), grid, "o-", ms=3, label=f"grid over λ (γ = {gamma:.3g})")
ax1.axvline(lam, color="C3", ls="--", label=f"hypergradient: λ = {lam:.3g}")
ax1.set(xlabel="λ", ylabel="validation MSE", title="validation curve")
ax1.legend()
fig.tight_layout()
print(f"grid minimum {min(grid):.4f} at λ = {np.exp(log_lams[int(np.argmin(grid))]):.3g}")
