"""A deep-equilibrium layer, solved by Anderson acceleration

A deep-equilibrium model (DEQ; Bai, Kolter & Koltun, 2019) replaces a stack of layers by the
fixed point of one layer, applied "infinitely often":

    z*(x, θ) = tanh(W z* + U x + b),        prediction = V z* + c.

Its forward pass is a fixed-point solve, here by `AndersonAcceleration`; its backward pass is
one linear solve with I − ∂T/∂z at z*, by the implicit function theorem: no iteration of the
solver is differentiated or stored, whatever the number of iterations it took. The parameters
θ = (W, U, b, V, c) live in an [Equinox](https://docs.kidger.site/equinox/) module, which is a
pytree: it is passed to the solver as an argument like any array, and its gradient is a module
of the same shape. The model is trained by Adam (Optax) on scikit-learn's handwritten digits;
the implicit gradient is checked once against finite differences and against the gradient of
the unrolled iterations.
"""

# %%
# Set up, in float64 (switched on before any array is made). `IMPLICITDIFF_TUTORIAL_SIZE=small`
# (the test suite) trains for fewer steps on fewer images.
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits

from implicitdiff.solvers import AndersonAcceleration, FixedPointIteration

jax.config.update("jax_enable_x64", True)

small = os.environ.get("IMPLICITDIFF_TUTORIAL_SIZE", "full") == "small"
num_steps = 30 if small else 250
num_train = 300 if small else 1200
hidden = 32

# %%
# The data: 8 × 8 images (pixels scaled to [0, 1]), a random split into training and test
# images.
X, y = load_digits(return_X_y=True)
X = X / 16.0
perm = np.random.default_rng(0).permutation(len(y))
train, test = perm[:num_train], perm[1200:]
X_tr, y_tr, X_te, y_te = (jnp.asarray(a) for a in (X[train], y[train], X[test], y[test]))
print(f"train {X_tr.shape}, test {X_te.shape}")

# %%
# ## The model
#
# The layer T(z) = tanh(W z + U x + b) is a contraction in z when ‖W‖₂ < 1 (tanh is
# 1-Lipschitz), and then z* exists, is unique and Anderson converges to it. The module keeps
# that true during training by rescaling W to spectral norm at most 0.95 (a close-to-1
# contraction factor: a deep, slowly converging layer, where acceleration pays). Every field of
# the module is an array, so the module can be handed to `jax.jit` and to the solver as it is.


class DEQ(eqx.Module):
    W: jax.Array
    U: jax.Array
    b: jax.Array
    V: jax.Array
    c: jax.Array

    def __init__(self, key, num_features, num_hidden, num_classes):
        kW, kU, kV = jax.random.split(key, 3)
        self.W = jax.random.normal(kW, (num_hidden, num_hidden)) / np.sqrt(num_hidden)
        self.U = jax.random.normal(kU, (num_hidden, num_features)) / np.sqrt(num_features)
        self.b = jnp.zeros(num_hidden)
        self.V = jax.random.normal(kV, (num_classes, num_hidden)) / np.sqrt(num_hidden)
        self.c = jnp.zeros(num_classes)

    def contraction(self):
        """W rescaled to spectral norm ≤ 0.95, so that the layer is a contraction."""
        return self.W * jnp.minimum(1.0, 0.95 / jnp.linalg.norm(self.W, 2))

    def layer(self, z, x):
        """T(z) = tanh(W z + U x + b), for a batch: z is (n, hidden), x is (n, features)."""
        return jnp.tanh(z @ self.contraction().T + x @ self.U.T + self.b)


def layer(z, model, x):
    """The solver's fixed_point_fun: T(z, *args), the arguments after z being (model, x)."""
    return model.layer(z, x)


anderson = AndersonAcceleration(layer, history_size=5, tol=1e-10, maxiter=100)


def logits(model, x, solver=anderson):
    z0 = jnp.zeros((x.shape[0], hidden))
    z_star, state = solver.run(z0, model, x)
    return z_star @ model.V.T + model.c, state


def loss(model, x, labels, solver=anderson):
    scores, state = logits(model, x, solver)
    log_probs = jax.nn.log_softmax(scores)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1)), state


model = DEQ(jax.random.PRNGKey(0), X.shape[1], hidden, 10)

# %%
# ## Anderson against plain iteration
#
# One forward pass on the training images with each solver, stopping at ‖T(z) − z‖ ≤ 1e-10.
# The whole batch is one fixed-point problem (an (n, hidden) array). Plain (Picard) iteration
# converges at the rate of the contraction factor; Anderson extrapolates from the last five
# iterates and needs fewer evaluations of the layer (the gain grows as the contraction factor
# approaches 1; here tanh's saturation keeps the effective factor well below ‖W‖₂).
picard = FixedPointIteration(layer, tol=1e-10, maxiter=2000)
z0 = jnp.zeros((num_train, hidden))
for name, solver in (("Anderson", anderson), ("fixed-point iteration", picard)):
    z_star, state = solver.run(z0, model, X_tr)
    print(f"{name:22s}: {int(state.iter_num):4d} iterations, ‖T(z) − z‖ = {state.error:.1e}")

# %%
# ## The gradient, checked once
#
# The implicit gradient with respect to the whole module, compared with (1) central finite
# differences of the loss along a random direction of parameter space and (2) the gradient of
# 300 unrolled plain iterations (`implicit_diff=False`: reverse mode through every iteration).
# The directional derivatives are taken on a small batch.
batch_x, batch_y = X_tr[:64], y_tr[:64]
grad_implicit = jax.jit(jax.grad(lambda m: loss(m, batch_x, batch_y)[0]))(model)

unrolled = FixedPointIteration(layer, tol=0.0, maxiter=300, implicit_diff=False)
grad_unrolled = jax.jit(jax.grad(lambda m: loss(m, batch_x, batch_y, unrolled)[0]))(model)

leaves, treedef = jax.tree_util.tree_flatten(model)
keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
direction = jax.tree_util.tree_unflatten(
    treedef, [jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
)


def along(grad):
    return jnp.vdot(ravel_pytree(grad)[0], ravel_pytree(direction)[0])


eps = 1e-5
value_at = jax.jit(lambda m: loss(m, batch_x, batch_y)[0])
plus = value_at(jax.tree.map(lambda p, d: p + eps * d, model, direction))
minus = value_at(jax.tree.map(lambda p, d: p - eps * d, model, direction))
fd = (plus - minus) / (2 * eps)
flat_implicit, flat_unrolled = ravel_pytree(grad_implicit)[0], ravel_pytree(grad_unrolled)[0]
difference = jnp.linalg.norm(flat_implicit - flat_unrolled) / jnp.linalg.norm(flat_unrolled)
print(f"directional derivative, implicit:           {along(grad_implicit):.10f}")
print(f"directional derivative, finite differences: {fd:.10f}")
print(f"relative difference: {abs(along(grad_implicit) - fd) / abs(fd):.1e}")
print(f"‖∇ implicit − ∇ unrolled‖ / ‖∇ unrolled‖ = {difference:.1e}")

# %%
# ## Training
#
# Full-batch Adam on the cross-entropy. The step (forward solve, implicit backward, update) is
# compiled once; each forward solve starts from z = 0. The number of Anderson iterations of each
# forward pass is recorded: it stays bounded because W stays a contraction.
optimizer = optax.adam(1e-2)
opt_state = optimizer.init(model)


@jax.jit
def step(model, opt_state):
    (value, state), grads = jax.value_and_grad(loss, has_aux=True)(model, X_tr, y_tr)
    updates, opt_state = optimizer.update(grads, opt_state, model)
    return eqx.apply_updates(model, updates), opt_state, value, state.iter_num


start = time.perf_counter()
history, iterations = [], []
for _ in range(num_steps):
    model, opt_state, value, iters = step(model, opt_state)
    history.append(float(value))
    iterations.append(int(iters))
print(f"{num_steps} steps in {time.perf_counter() - start:.1f} s")
print(f"training loss {history[0]:.4f} -> {history[-1]:.4f}")
test_scores, _ = jax.jit(logits)(model, X_te)
print(f"test accuracy {float(jnp.mean(jnp.argmax(test_scores, axis=1) == y_te)):.3f}")
print(f"Anderson iterations per forward pass: {min(iterations)} to {max(iterations)}")
print(f"‖W‖₂ after training: {float(jnp.linalg.norm(model.contraction(), 2)):.3f}")

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
ax0.plot(history)
ax0.set(xlabel="Adam step", ylabel="training cross-entropy", yscale="log", title="training")
ax1.plot(iterations)
ax1.set(xlabel="Adam step", ylabel="iterations", title="Anderson iterations per forward pass")
fig.tight_layout()
