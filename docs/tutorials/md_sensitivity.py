"""Molecular-dynamics sensitivity: how a jammed packing moves when a particle grows

A packing of soft discs, squeezed into a periodic box above the jamming density, relaxes to a
local minimum x* of its energy. How do the equilibrium positions move when the small particles'
diameter d_s changes? Differentiating the minimizer's iterations (thousands of FIRE steps) would
be slow and memory-hungry; the implicit function theorem needs only the minimum itself, through
the stationarity condition F(x, d_s) = ∇ₓE(x, d_s) = 0:

    ∇²ₓE(x*) · dx*/dd_s = −∂_{d_s}∇ₓE(x*),

one linear solve with the Hessian, matrix-free. This is the paper's §4 experiment (after
JAX-MD): a 50:50 bidisperse packing (diameters 1 and 1/1.4) at packing fraction 0.9, with the
harmonic soft-sphere energy

    E(x, d_s) = Σ_{i<j, r_ij<σ_ij} ½ (1 − r_ij/σ_ij)²,   σ_ij = (d_i + d_j)/2.

The energy, the random packing and the FIRE minimizer (Bitzek et al., 2006) come from
`implicitdiff.experiments.md_sensitivity`; here we make the minimizer differentiable with
`custom_root`, and check the derivative against finite differences.
"""

# %%
# Set up, in float64 (finite differences of a minimization need it). `IMPLICITDIFF_TUTORIAL_SIZE
# =small` (the test suite) uses fewer particles.
import functools
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.patches import Circle

from implicitdiff import custom_root, linear_solve, optimality
from implicitdiff.experiments import md_sensitivity as md

jax.config.update("jax_enable_x64", True)

small = os.environ.get("IMPLICITDIFF_TUTORIAL_SIZE", "full") == "small"
num_particles = 32 if small else 128

# %%
# ## The packing
#
# Random positions in the box (uniform, hence heavily overlapping); the first half of the
# particles are the small ones. `md.soft_sphere_energy(x, d_s, is_small, box_size)` is E.
d_s = jnp.asarray(1 / 1.4)
x_random, is_small, box_size = md.bidisperse_packing(
    num_particles, packing_fraction=0.9, small_diameter=float(d_s), key=jax.random.PRNGKey(0)
)
box_size = jnp.asarray(box_size)
print(f"{num_particles} particles in a periodic box of side {float(box_size):.3f}")
energy0 = md.soft_sphere_energy(x_random, d_s, is_small, box_size)
print(f"energy of the random start: {float(energy0):.3f}")

# %%
# ## A differentiable minimizer
#
# `md.fire_descent` is a plain JAX loop (a `lax.while_loop`, which reverse-mode autodiff could
# not go through anyway). `custom_root` makes its output differentiable through ∇ₓE = 0;
# `has_aux` because FIRE also returns how it ended. The Hessian is singular: the two global
# translations of the periodic box, and two more zero modes for each "rattler" (a particle
# caged without contacts). The right-hand side is orthogonal to those modes, so the system is
# consistent, and CG on the normal equations (`linear_solve.normal_cg`) returns its
# minimum-norm solution: the derivative without rigid translation, rattlers held still.
backward = functools.partial(linear_solve.normal_cg, tol=1e-10)


@custom_root(optimality.stationary(md.soft_sphere_energy), has_aux=True, solve=backward)
def minimize(x0, d_s, is_small, box_size):
    return md.fire_descent(
        md.soft_sphere_energy, x0, d_s, is_small, box_size, force_tol=1e-12, maxiter=100_000
    )


minimize_jit = jax.jit(minimize)
start = time.perf_counter()
x_star, info = minimize_jit(x_random, d_s, is_small, box_size)
print(
    f"FIRE: {int(info.iterations)} steps, largest force {float(info.max_force):.1e}, "
    f"{time.perf_counter() - start:.1f} s (with compilation)"
)
print(f"energy at the minimum: {float(md.soft_sphere_energy(x_star, d_s, is_small, box_size)):.4e}")

# %%
# ## The sensitivity dx*/dd_s
#
# Forward mode: one `jax.jvp` with tangent 1 on d_s gives the whole (N, 2) derivative in one
# linear solve. Started from x*, FIRE stops at once, so the time is that of the backward solve.


@jax.jit
def sensitivity(x0, d_s):
    def positions(d):
        return minimize(x0, d, is_small, box_size)[0]

    return jax.jvp(positions, (d_s,), (jnp.ones_like(d_s),))


_, dx = sensitivity(x_star, d_s)
start = time.perf_counter()
_, dx = jax.block_until_ready(sensitivity(x_star, d_s))
print(f"dx*/dd_s computed in {1000 * (time.perf_counter() - start):.1f} ms (compiled)")

H = jax.hessian(md.soft_sphere_energy)(x_star, d_s, is_small, box_size).reshape(
    2 * num_particles, 2 * num_particles
)
eigenvalues = np.linalg.eigvalsh(np.asarray(H))
zero_modes = int(np.sum(np.abs(eigenvalues) <= 1e-8 * eigenvalues.max()))
rattler = md.rattlers(x_star, float(d_s), is_small, float(box_size))
print(f"Hessian: {zero_modes} zero eigenvalues; {int(rattler.sum())} rattlers")

# %%
# ## The check
#
# Central finite differences (x*(d_s + h) − x*(d_s − h)) / 2h, each side minimized again from
# x* so that it stays in the same local minimum (a new random start would find another jammed
# state). As in the paper, compared on the non-rattlers, after removing their mean
# translation (to which the minimum is indifferent).
h = 1e-6
x_plus, info_plus = minimize_jit(x_star, d_s + h, is_small, box_size)
x_minus, info_minus = minimize_jit(x_star, d_s - h, is_small, box_size)
finite_diff = np.asarray(x_plus - x_minus) / (2 * h)
implicit = np.asarray(dx)
keep = ~rattler
centred_implicit = implicit[keep] - implicit[keep].mean(axis=0)
centred_fd = finite_diff[keep] - finite_diff[keep].mean(axis=0)
error = np.linalg.norm(centred_implicit - centred_fd) / np.linalg.norm(centred_fd)
print(f"re-minimizations converged: {bool(info_plus.converged and info_minus.converged)}")
print(f"relative difference, implicit vs finite differences: {error:.1e}")

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
x = np.mod(np.asarray(x_star), float(box_size))
diameters = np.where(np.asarray(is_small), float(d_s), 1.0)
speed = np.linalg.norm(implicit - implicit[keep].mean(axis=0), axis=1)
discs = PatchCollection(
    [Circle(x[i], diameters[i] / 2) for i in range(num_particles)],
    cmap="viridis",
    edgecolor="k",
    linewidth=0.5,
)
discs.set_array(np.where(rattler, np.nan, speed))
left.add_collection(discs)
left.set(xlim=(-0.5, float(box_size) + 0.5), ylim=(-0.5, float(box_size) + 0.5), aspect="equal")
left.plot([0, box_size, box_size, 0, 0], [0, 0, box_size, box_size, 0], "k--", lw=0.8)
left.set_title("‖dxᵢ*/dd_s‖ (rattlers blank)")
fig.colorbar(discs, ax=left, fraction=0.046)
right.plot(centred_fd.ravel(), centred_implicit.ravel(), ".", ms=5)
low, high = centred_fd.min(), centred_fd.max()
right.plot([low, high], [low, high], "k-", lw=0.6)
right.set(
    xlabel="finite differences",
    ylabel="implicit differentiation",
    title="dx*/dd_s, each coordinate of the non-rattlers",
)
fig.tight_layout()
