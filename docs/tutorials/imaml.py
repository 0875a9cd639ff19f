"""Meta-learning with implicit gradients (iMAML) on sine regression

Model-agnostic meta-learning looks for an initialization θ from which a few examples of a new
task suffice to fit it. iMAML (Rajeswaran, Finn, Kakade & Levine, 2019) makes the adaptation
an optimization problem whose solution stays near θ,

    φ*(θ) = argmin_φ  L_support(φ) + (λ/2) ‖φ − θ‖²,

and learns θ by the meta-gradient of the query loss, ∇_θ L_query(φ*(θ)), which the implicit
function theorem gives from the stationarity condition ∇L_support(φ*) + λ(φ* − θ) = 0:
one linear solve with ∇²L_support(φ*) + λI, whatever the number of inner iterations, and
without storing them (MAML differentiates through every adaptation step). The tasks are the
classic sine waves y = a sin(x + p) with random amplitude and phase, ten examples each; the
model is a small MLP whose parameters are a pytree. The implicit meta-gradient is compared
once with the gradient of the unrolled inner iterations.
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
from jax.flatten_util import ravel_pytree

from implicitdiff.solvers import LBFGS, GradientDescent

jax.config.update("jax_enable_x64", True)

small = os.environ.get("IMPLICITDIFF_TUTORIAL_SIZE", "full") == "small"
num_steps = 20 if small else 500
meta_batch = 8
shots = 10  # support examples per task (and as many query examples)
lam = 2.0  # λ, the strength of the pull towards θ

# %%
# ## Tasks and model
#
# A task draws an amplitude a ∈ [0.1, 5] and a phase p ∈ [0, π]; its support and query sets
# are ten points each, x uniform in [−5, 5]. The model is an MLP 1 → 40 → 40 → 1 with tanh
# activations (smooth, so that the inner Hessian exists everywhere).


def sample_tasks(key, num_tasks):
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amplitude = jax.random.uniform(k_amp, (num_tasks, 1), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(k_phase, (num_tasks, 1), maxval=jnp.pi)
    x = jax.random.uniform(k_x, (num_tasks, 2 * shots), minval=-5.0, maxval=5.0)
    y = amplitude * jnp.sin(x + phase)
    support = (x[:, :shots], y[:, :shots])
    query = (x[:, shots:], y[:, shots:])
    return support, query, (amplitude, phase)


def init_mlp(key, sizes=(1, 40, 40, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros(n))
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def predict(params, x):
    h = x[:, None] / 5.0  # inputs scaled to [−1, 1]
    for W, b in params[:-1]:
        h = jnp.tanh(h @ W + b)
    W, b = params[-1]
    return (h @ W + b)[:, 0]


def mse(params, x, y):
    return jnp.mean((predict(params, x) - y) ** 2)


# %%
# ## The inner problem
#
# f(φ; θ, support) = MSE on the support + (λ/2)‖φ − θ‖², solved by `LBFGS` from φ = θ to
# ‖∇f‖ ≤ 1e-10, and differentiated
# implicitly with respect to θ (its second argument) through ∇_φ f = 0. The meta-loss of one
# task is the query MSE at φ*(θ); a meta-batch is `vmap`ped. The model's inputs are scaled to
# [−1, 1], which keeps the inner problem well conditioned (the eigenvalues of its Hessian
# stay within about [0.5, 25] here).


def inner_objective(phi, theta, x, y):
    pull = ravel_pytree(phi)[0] - ravel_pytree(theta)[0]
    return mse(phi, x, y) + 0.5 * lam * jnp.sum(pull**2)


inner_solver = LBFGS(fun=inner_objective, tol=1e-10, maxiter=1000)


def adapt(theta, x, y, solver=inner_solver):
    return solver.run(theta, theta, x, y)


def meta_loss(theta, support, query, solver=inner_solver):
    """The mean query MSE of a batch of tasks, and per task: the adapted φ*, its query MSE and
    the inner solver's iteration count (an auxiliary output, not differentiated)."""

    def one_task(xs, ys, xq, yq):
        phi, state = adapt(theta, xs, ys, solver)
        return mse(phi, xq, yq), (phi, state.iter_num)

    losses, (phis, iterations) = jax.vmap(one_task)(*support, *query)
    return jnp.mean(losses), {"adapted": phis, "query_mse": losses, "iterations": iterations}


theta = init_mlp(jax.random.PRNGKey(0))
print(f"{ravel_pytree(theta)[0].size} parameters")

# %%
# ## Implicit against unrolled meta-gradients
#
# The unrolled meta-gradient differentiates k steps of gradient descent on f (a fixed step of
# 0.05, below 2/L here; `implicit_diff=False`) by reverse mode: MAML's gradient, with the
# proximal term. As k grows and the iterate converges to φ*, it tends to the implicit one. We
# compare both on one meta-batch of eight tasks, and the implicit meta-gradient with central
# finite differences of the meta-loss along a random unit direction. The one compiled function
# `meta_value_and_grad` serves these checks and the training below.
meta_value_and_grad = jax.jit(jax.value_and_grad(meta_loss, has_aux=True))
support, query, _ = sample_tasks(jax.random.PRNGKey(1), meta_batch)
(_, aux), grads = meta_value_and_grad(theta, support, query)
g_implicit, unravel = ravel_pytree(grads)
print(f"LBFGS iterations per inner solve: {int(jnp.max(aux['iterations']))} at most")

unrolled_steps = [10, 100] if small else [10, 30, 100, 300, 1000]
unrolled_error = []
for k in unrolled_steps:
    unrolled = GradientDescent(
        fun=inner_objective, stepsize=0.05, maxiter=k, tol=0.0, implicit_diff=False
    )
    grad_k = jax.jit(jax.grad(lambda t, s, q, u=unrolled: meta_loss(t, s, q, u)[0]))
    g_unrolled = ravel_pytree(grad_k(theta, support, query))[0]
    unrolled_error.append(
        float(jnp.linalg.norm(g_unrolled - g_implicit) / jnp.linalg.norm(g_implicit))
    )
    print(
        f"unrolled, {k:4d} steps: ‖g_unrolled − g_implicit‖ / ‖g_implicit‖ = "
        f"{unrolled_error[-1]:.1e}"
    )

flat_theta = ravel_pytree(theta)[0]
direction = jax.random.normal(jax.random.PRNGKey(2), flat_theta.shape)
direction = direction / jnp.linalg.norm(direction)
eps = 1e-3
(plus, _), _ = meta_value_and_grad(unravel(flat_theta + eps * direction), support, query)
(minus, _), _ = meta_value_and_grad(unravel(flat_theta - eps * direction), support, query)
fd = float(plus - minus) / (2 * eps)
along = float(jnp.vdot(g_implicit, direction))
print(f"directional derivative, implicit:           {along:.10f}")
print(f"directional derivative, finite differences: {fd:.10f}")
print(f"relative difference: {abs(along - fd) / abs(fd):.1e}")

# %%
# ## Meta-training
#
# Adam on θ, a fresh meta-batch of eight tasks at each step (eight inner solves and their
# implicit backward passes, in `meta_value_and_grad`).
optimizer = optax.adam(1e-3)
opt_state = optimizer.init(theta)
update = jax.jit(optimizer.update)

theta0 = theta
start = time.perf_counter()
history, max_iterations = [], 0
for key in jax.random.split(jax.random.PRNGKey(3), num_steps):
    support, query, _ = sample_tasks(key, meta_batch)
    (value, aux), grads = meta_value_and_grad(theta, support, query)
    updates, opt_state = update(grads, opt_state, theta)
    theta = optax.apply_updates(theta, updates)
    history.append(float(value))
    max_iterations = max(max_iterations, int(jnp.max(aux["iterations"])))
print(f"{num_steps} meta-steps in {time.perf_counter() - start:.1f} s")
print(f"most LBFGS iterations of an inner solve: {max_iterations}")

# %%
# ## Adapting to new tasks
#
# On 96 new tasks, the query MSE after adaptation (the same inner problem, ten examples) from
# the meta-learned θ and from the random initialization it started at. The tasks go through
# `meta_value_and_grad` in batches of eight (its auxiliary output holds each task's adapted φ*
# and query MSE), so that nothing new is compiled.
new_tasks = [sample_tasks(key, meta_batch) for key in jax.random.split(jax.random.PRNGKey(4), 12)]
adapted, errors = {}, {}
for name, start_point in (("θ₀", theta0), ("meta-learned θ", theta)):
    results = [meta_value_and_grad(start_point, s, q)[0][1] for s, q, _ in new_tasks]
    errors[name] = np.concatenate([r["query_mse"] for r in results])
    adapted[name] = jax.tree.map(lambda a: a[0], results[0]["adapted"])  # the first new task
    print(f"query MSE after adaptation from {name}: {errors[name].mean():.3f}")
(xs, ys), _, (amplitude, phase) = new_tasks[0]

fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13, 3.6))
window = max(1, num_steps // 20)
ax0.plot(np.convolve(history, np.ones(window) / window, mode="valid"))
ax0.set(xlabel="meta-step", ylabel="query MSE (moving average)", title="meta-training")
ax1.loglog(unrolled_steps, unrolled_error, "o-")
ax1.set(
    xlabel="unrolled gradient-descent steps",
    ylabel="relative distance to implicit",
    title="unrolled → implicit meta-gradient",
)
grid = jnp.linspace(-5, 5, 200)
ax2.plot(grid, amplitude[0] * jnp.sin(grid + phase[0]), "k", lw=1, label="task")
ax2.plot(xs[0], ys[0], "ko", ms=4, label="10 examples")
for name, phi in adapted.items():
    ax2.plot(grid, predict(phi, grid), label=f"adapted from {name}")
ax2.plot(grid, predict(theta, grid), ":", label="meta-learned θ itself")
ax2.set(xlabel="x", title="a new task")
ax2.legend(fontsize=7)
fig.tight_layout()
