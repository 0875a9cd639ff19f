"""Dataset distillation: ten images that teach a classifier the digits

Dataset distillation (Wang et al., 2018; §4 of the paper) asks for a tiny synthetic training
set, here one 8 × 8 image per class, such that a model trained on it alone does well on the
real data. It is a bilevel problem: with θ the ten images,

    min_θ  L(θ) = (1/n) Σᵢ ℓ(yᵢ, W*(θ)ᵀxᵢ + b*(θ))            (n real training images)
    (W*, b*)(θ) = argmin_{W,b} (1/10) Σ_c ℓ(c, Wᵀθ_c + b) + (λ/2)‖W‖²,

ℓ the multiclass logistic loss. The inner problem, a regularized logistic regression on the
ten images, is solved by `LBFGS`; the gradient of L with respect to every pixel of θ comes from
the implicit function theorem at ∇_{W,b} f = 0, one linear solve per outer step, however many
iterations the inner solver took. The pieces (the objective, the data split, the evaluation)
are those of the paper's experiment, `implicitdiff.experiments.distillation`, imported here.
"""

# %%
# Set up, in float64. `IMPLICITDIFF_TUTORIAL_SIZE=small` (the test suite) takes fewer outer
# steps.
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from implicitdiff import bilevel
from implicitdiff.experiments import distillation

jax.config.update("jax_enable_x64", True)

small = os.environ.get("IMPLICITDIFF_TUTORIAL_SIZE", "full") == "small"
num_steps = 20 if small else 200
l2 = 1e-2

# %%
# The digits, pixels scaled to [0, 1], split 70/30 (stratified) into training and test sets;
# labels one-hot. The ten images start as small Gaussian noise.
data = distillation.load_data(test_size=0.3, seed=0)
X_train, X_test = jnp.asarray(data["X_train"]), jnp.asarray(data["X_test"])
y_train, y_test = data["y_train"], jnp.asarray(data["y_test"])
Y_train = jax.nn.one_hot(y_train, 10)
labels = jnp.eye(10)  # image c of θ has label c
init = distillation.zero_params(X_train.shape[1], 10)
images0 = 0.1 * jax.random.normal(jax.random.PRNGKey(0), (10, X_train.shape[1]))
print(f"train {X_train.shape}, test {X_test.shape}")

# %%
# ## The inner solver and the hypergradient
#
# `distillation.logistic_objective(params, X, Y, l2)` is the inner objective f; the solver is
# `LBFGS(fun=logistic_objective, tol=1e-8)`, differentiated implicitly (the default). Its Hessian
# is singular along b ↦ b + t·1 (adding a constant to every score changes no probability), but
# the implicit linear system is consistent and the default solver (CG) handles it. Before
# using the hypergradient, compare it with central finite differences along a random direction
# of image space.
solver = distillation.make_solver("lbfgs", tol=1e-8, maxiter=1000)


def outer_loss(images):
    return distillation.distillation_loss(images, solver, X_train, Y_train, l2)


value_and_grad = jax.jit(jax.value_and_grad(outer_loss))
loss0, grad0 = value_and_grad(images0)
direction = jax.random.normal(jax.random.PRNGKey(1), images0.shape)
direction = direction / jnp.linalg.norm(direction)
eps = 1e-4
value_at = jax.jit(outer_loss)
fd = (value_at(images0 + eps * direction) - value_at(images0 - eps * direction)) / (2 * eps)
print(f"L(θ₀) = {float(loss0):.4f}")
print(f"directional derivative, implicit:           {float(jnp.vdot(grad0, direction)):.10f}")
print(f"directional derivative, finite differences: {float(fd):.10f}")
print(f"relative difference: {abs(float(jnp.vdot(grad0, direction)) - fd) / abs(fd):.1e}")

# %%
# ## Distilling
#
# Adam on the pixels through `bilevel.minimize`: each outer step solves the inner regression
# (warm-started from the last solution), differentiates L implicitly and updates θ; the step is
# compiled once.
start = time.perf_counter()
result = bilevel.minimize(
    lambda params, images: distillation.logistic_objective(params, X_train, Y_train, 0.0),
    lambda params, images: solver.run(params, images, labels, l2),
    hyperparams=images0,
    inner_init=init,
    optimizer=optax.adam(0.05),
    num_steps=num_steps,
)
images = result.hyperparams
history = result.history
print(f"{num_steps} outer steps in {time.perf_counter() - start:.1f} s")
print(f"outer loss {history['outer_loss'][0]:.4f} -> {history['outer_loss'][-1]:.4f}")
print(
    f"inner solves converged: {bool(np.all(history['inner_converged']))}, "
    f"LBFGS iterations per solve: {int(np.min(history['inner_iterations']))} to "
    f"{int(np.max(history['inner_iterations']))}"
)

# %%
# ## How good are ten images?
#
# The regression trained on the ten distilled images, against the same regression trained on
# ten real training images (one per class, drawn at random, ten draws) and on the whole
# training set, all evaluated on the test set.
fit = jax.jit(lambda X, Y: solver.run(init, X, Y, l2).params)
distilled = float(distillation.accuracy(fit(images, labels), X_test, y_test))
draws = distillation.random_real_sets(y_train, per_class=1, draws=10, seed=1)
random_real = [
    float(distillation.accuracy(fit(X_train[d], Y_train[d]), X_test, y_test)) for d in draws
]
whole = float(distillation.accuracy(fit(X_train, Y_train), X_test, y_test))
print(f"test accuracy, 10 distilled images:           {distilled:.3f}")
print(
    f"test accuracy, 10 real images (1 per class):  {np.mean(random_real):.3f} "
    f"± {np.std(random_real):.3f} over 10 draws"
)
print(f"test accuracy, the whole training set ({len(y_train)}): {whole:.3f}")

fig = plt.figure(figsize=(11, 3.4))
grid = fig.add_gridspec(2, 8, width_ratios=[1] * 5 + [0.3, 1.6, 1.6])
for c in range(10):
    ax = fig.add_subplot(grid[c // 5, c % 5])
    ax.imshow(np.asarray(images[c]).reshape(8, 8), cmap="gray_r", interpolation="nearest")
    ax.set_title(str(c), fontsize=9)
    ax.set_axis_off()
ax = fig.add_subplot(grid[:, 6:])
ax.plot(history["outer_loss"])
ax.set(
    xlabel="outer step",
    ylabel="logistic loss on the real training set",
    title=f"distilled: test accuracy {distilled:.3f}",
)
fig.tight_layout()
