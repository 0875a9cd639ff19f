"""One multiclass SVM per regularization value, the batch sharded over eight devices.

Each problem is the paper's SVM dual,

    x*(θ) = argmin_{x ∈ Δ³ × … × Δ³} (θ/2)‖W(x, θ)‖² + ⟨x, Y_tr⟩,   W = X_trᵀ(Y_tr − x)/θ,

solved by projected gradient, and differentiated implicitly through its fixed point; the outer
loss is ½‖X_val W(x*(θ), θ) − Y_val‖². `jax.jit(jax.vmap(jax.grad(...)))` runs the whole batch
as one program; placing the batch of log θ with `NamedSharding(mesh, PartitionSpec("batch"))`
splits it over the devices, two problems per device. Nothing in the code is specific to
several devices: JAX partitions the compiled program from the input's sharding.

No GPU needed: the script asks XLA for eight CPU devices before JAX starts. On a machine with
eight GPUs, delete the `XLA_FLAGS` lines and build the mesh from `jax.devices()`. The script checks
that the sharded hypergradients equal the single-device ones and a central difference.

Data: scikit-learn's `make_classification` (generated, nothing downloaded).
Run: `python examples/sharded_svm_batch.py` (about 10 s of CPU time, mostly compilation).
"""

import os

# Before JAX creates its CPU backend: eight host devices. Keep a device count already asked for.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn.datasets import make_classification

from implicitdiff import projections
from implicitdiff.solvers import ProjectedGradient

jax.config.update("jax_enable_x64", True)

X, labels = make_classification(
    n_samples=60,
    n_features=5,
    n_informative=3,
    n_redundant=0,
    n_classes=3,
    n_clusters_per_class=1,
    random_state=0,
)
Y = np.eye(3)[labels]
X_TR, Y_TR, X_VAL, Y_VAL = X[:30], Y[:30], X[30:], Y[30:]


def svm_dual(x, theta, X, Y):
    """(θ/2)‖Xᵀ(Y − x)/θ‖² + ⟨x, Y⟩, minimized over one simplex per row of x."""
    return 0.5 * theta * jnp.sum((X.T @ (Y - x) / theta) ** 2) + jnp.vdot(x, Y)


solver = ProjectedGradient(
    fun=svm_dual,
    projection=jax.vmap(projections.simplex, in_axes=(0, None)),  # one simplex per row
    tol=1e-11,
    maxiter=3000,
    # Matrix-free backward solve. The default, solve="auto", factors small systems densely
    # (LAPACK), which can deadlock on forced host devices with jaxlib 0.10: docs/multi_device.md.
    solve="gmres",
)


def validation_loss(log_theta):
    theta = jnp.exp(log_theta)
    x, _ = solver.run(jnp.full((30, 3), 1.0 / 3), 1.0, theta, X_TR, Y_TR)
    W = X_TR.T @ (Y_TR - x) / theta
    return 0.5 * jnp.sum((X_VAL @ W - Y_VAL) ** 2)


def main():
    devices = jax.devices("cpu")[:8]
    # AxisType.Auto: jit's automatic partitioning. (jax.make_mesh's default in JAX 0.10,
    # Explicit, fails to trace a vmapped solver loop; see docs/multi_device.md.)
    mesh = jax.make_mesh((len(devices),), ("batch",), axis_types=(AxisType.Auto,), devices=devices)
    batch = NamedSharding(mesh, P("batch"))
    log_thetas = jnp.linspace(0.0, 0.8, 2 * len(devices))

    hypergradients = jax.jit(jax.vmap(jax.value_and_grad(validation_loss)))
    start = time.perf_counter()
    compiled = hypergradients.lower(jax.device_put(log_thetas, batch)).compile()
    losses, grads = compiled(jax.device_put(log_thetas, batch))
    grads.block_until_ready()
    seconds = time.perf_counter() - start

    print(f"{len(devices)} devices; hypergradients of {log_thetas.size} SVMs in {seconds:.1f} s")
    print(f"output sharding: {grads.sharding.spec}, shards of shape", end=" ")
    print(sorted({s.data.shape for s in grads.addressable_shards}))
    found = sorted(set(re.findall(r"all-reduce|all-gather|collective-permute", compiled.as_text())))
    print(f"cross-device operations in the program: {', '.join(found) or 'none'}")

    _, grads_1 = hypergradients(jax.device_put(log_thetas, devices[0]))
    eps = 1e-4
    central = (
        compiled(jax.device_put(log_thetas + eps, batch))[0]
        - compiled(jax.device_put(log_thetas - eps, batch))[0]
    ) / (2 * eps)
    grads, grads_1, central = (np.asarray(a) for a in (grads, grads_1, central))
    print("\n log θ   validation loss   d loss / d log θ")
    for t, v, g in zip(np.asarray(log_thetas), np.asarray(losses), grads, strict=True):
        print(f"{t:6.3f}   {v:15.6f}   {g:16.8f}")
    sharded_vs_one = np.max(np.abs(grads - grads_1) / np.abs(grads_1))
    vs_central = np.max(np.abs(grads - central) / np.abs(grads))
    print(f"\nsharded vs one device: max relative difference {sharded_vs_one:.1e}")
    print(f"implicit vs central differences: max relative difference {vs_central:.1e}")
    assert sharded_vs_one < 1e-10 and vs_central < 1e-6


if __name__ == "__main__":
    main()
