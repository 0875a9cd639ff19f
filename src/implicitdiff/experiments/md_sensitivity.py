"""Molecular-dynamics sensitivity (paper §4.4): how a jammed packing moves with a particle size.

Problem. N soft discs in a periodic square box, half of diameter 1 and half of the small diameter
d_s (default 1/1.4), at packing fraction φ (default 0.9, above jamming, φ_J ≈ 0.84 in 2-D), so
that neighbours overlap. Energy, with minimum-image distances r_ij and σ_ij = (d_i + d_j)/2:

    E(x, d_s) = Σ_{i<j, r_ij<σ_ij} ε/2 (1 − r_ij/σ_ij)²,   ε = 1.

FIRE (written in JAX, a lax.while_loop that stops when the largest particle force
max_i ‖∂E/∂x_i‖ ≤ --force-tol) or LBFGS (--solver lbfgs) minimizes E from random positions.

Derivative. dx*/dd_s by implicit differentiation of F(x, d_s) = ∇ₓE(x, d_s) = 0 (custom_root
around FIRE; LBFGS's own implicit run): one linear solve H u = −∂_{d_s}∇ₓE, H = ∇²ₓE. H is
singular: the two global translations, and two more zero modes per rattler (a particle caged
without contacts). The right-hand side lies in H's range (forces sum to zero; rattlers feel
none), so the system is consistent. --backward normal_cg (default) solves it by CG on the normal
equations: the minimum-norm solution, i.e. the derivative without translation and with rattlers
fixed. --backward cg gives the same solution (CG from zero stays in H's range); --backward ridge
solves (H + ρI) u = b, a derivative biased by about ρ / (smallest nonzero eigenvalue). The run
reports the solve used and its residual ‖Hu − b‖ / ‖b‖.

Check. Central finite differences (x*(d_s + h) − x*(d_s − h)) / 2h, each re-minimized from
x*(d_s) (the same local minimum: a new random start would land in another jammed state), compared
on the non-rattlers (≥ 3 contacts, removed iteratively; a rattler's position is not a
differentiable function of d_s) after removing their mean translation, as the paper does.

Output: results.json and sensitivity.png (discs coloured by ‖dx_i/dd_s‖; implicit vs finite
differences). Default N = 128: about 5 s on 2 idle CPU cores (25 s on a loaded machine),
most of it compilation.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import custom_root, linear_solve, optimality
from implicitdiff.experiments import _common

NAME = "md-sensitivity"
HELP = "§4.4: derivative of a jammed soft-sphere packing with respect to a particle diameter"

BACKWARDS = ("normal_cg", "cg", "ridge")
SOLVERS = ("fire", "lbfgs")


# ---------------------------------------------------------------------------------------------
# The model.


def soft_sphere_energy(
    positions: jax.Array, small_diameter: jax.Array, is_small: jax.Array, box_size: jax.Array
) -> jax.Array:
    """E = Σ_{i<j, r_ij<σ_ij} ½ (1 − r_ij/σ_ij)², the harmonic soft-sphere energy (ε = 1).

    ``positions`` is (N, 2); d_i = ``small_diameter`` where ``is_small`` else 1, σ_ij =
    (d_i + d_j)/2, and r_ij = ‖Δ_ij − L round(Δ_ij / L)‖ is the minimum-image distance in the
    periodic square box of side L = ``box_size``. All N(N−1)/2 pairs are evaluated (no neighbour
    list), which is right for the few hundred particles of this experiment.
    """
    diameters = jnp.where(is_small, small_diameter, 1.0)
    delta = positions[:, None, :] - positions[None, :, :]
    delta = delta - box_size * jnp.round(delta / box_size)
    n = positions.shape[0]
    upper = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)
    # Double where: the diagonal (r = 0) must not reach sqrt, or its gradient is NaN.
    r = jnp.sqrt(jnp.where(upper, jnp.sum(delta**2, axis=-1), 1.0))
    sigma = 0.5 * (diameters[:, None] + diameters[None, :])
    overlap = upper & (r < sigma)
    return jnp.sum(jnp.where(overlap, 0.5 * (1.0 - r / sigma) ** 2, 0.0))


def bidisperse_packing(
    num_particles: int, packing_fraction: float, small_diameter: float, key: jax.Array
) -> tuple[jax.Array, jax.Array, float]:
    """Random positions, species and box side of a 50:50 bidisperse packing.

    The box side is L = √(Σᵢ π dᵢ²/4 / φ) for packing fraction φ; positions are uniform in
    [0, L)². Returns ``(positions, is_small, L)``; the first ⌊N/2⌋ particles are the small ones.
    """
    if isinstance(num_particles, bool) or not (
        isinstance(num_particles, int) and num_particles >= 4
    ):
        raise ValueError(f"num_particles must be an int ≥ 4, got {num_particles!r}")
    if not 0 < packing_fraction < 2:
        raise ValueError(f"packing_fraction must be in (0, 2), got {packing_fraction!r}")
    if not 0 < small_diameter <= 1:
        raise ValueError(f"small_diameter must be in (0, 1], got {small_diameter!r}")
    is_small = jnp.arange(num_particles) < num_particles // 2
    n_small = num_particles // 2
    area = math.pi / 4 * (n_small * small_diameter**2 + (num_particles - n_small))
    box_size = math.sqrt(area / packing_fraction)
    positions = jax.random.uniform(key, (num_particles, 2), dtype=jnp.float64) * box_size
    return positions, is_small, box_size


def rattlers(
    positions: Any, small_diameter: float, is_small: Any, box_size: float, min_contacts: int = 3
) -> np.ndarray:
    """Boolean mask of the rattlers: particles left with fewer than ``min_contacts`` contacts
    (r_ij < σ_ij) among non-rattlers, removed iteratively (3 = d + 1 in two dimensions)."""
    x = np.asarray(positions, dtype=float)
    d = np.where(np.asarray(is_small), small_diameter, 1.0)
    delta = x[:, None, :] - x[None, :, :]
    delta -= box_size * np.round(delta / box_size)
    r = np.linalg.norm(delta, axis=-1)
    contact = (r < 0.5 * (d[:, None] + d[None, :])) & ~np.eye(len(x), dtype=bool)
    active = np.ones(len(x), dtype=bool)
    while True:
        count = (contact & active[None, :]).sum(axis=1)
        still = active & (count >= min_contacts)
        if np.array_equal(still, active):
            return ~active
        active = still


# ---------------------------------------------------------------------------------------------
# FIRE.


class FireInfo(NamedTuple):
    """How a minimization ended: iterations, max_i ‖∇ᵢE‖ at the end, and whether it reached
    the force tolerance."""

    iterations: jax.Array
    max_force: jax.Array
    converged: jax.Array


def _max_force(grad: jax.Array) -> jax.Array:
    return jnp.max(jnp.linalg.norm(grad, axis=-1))


def fire_descent(
    fun: Callable,
    x0: jax.Array,
    *args: Any,
    force_tol: float = 1e-12,
    maxiter: int = 100_000,
    dt_start: float = 0.1,
    dt_max: float = 0.4,
    n_min: int = 5,
    f_inc: float = 1.1,
    f_dec: float = 0.5,
    alpha_start: float = 0.1,
    f_alpha: float = 0.99,
) -> tuple[jax.Array, FireInfo]:
    """Minimize fun(x, *args) by FIRE (Bitzek et al., 2006), x of shape (N, d), unit masses.

    Each step, with force f = −∇ₓfun and power P = f·v: if P > 0 for more than ``n_min`` steps
    in a row, dt ← min(f_inc dt, dt_max) and α ← f_alpha α; if P ≤ 0, the last half step is
    undone (x ← x − dt v/2), v ← 0, dt ← f_dec dt, α ← alpha_start. Then a semi-implicit Euler
    step with FIRE's mixing: v ← v + dt f, v ← (1 − α) v + α ‖v‖ f/‖f‖, x ← x + dt v. Stops when
    max_i ‖fᵢ‖ ≤ ``force_tol`` or after ``maxiter`` steps (a ``lax.while_loop``: jit-compatible,
    not differentiable: wrap it in :func:`implicitdiff.custom_root` to differentiate x*).
    """
    grad = jax.grad(fun)
    dtype = x0.dtype

    def cond(state):
        _, _, g, _, _, _, it = state
        return (_max_force(g) > force_tol) & (it < maxiter)

    def body(state):
        x, v, g, dt, alpha, n_pos, it = state
        f = -g
        downhill = jnp.vdot(f, v) > 0
        n_pos = jnp.where(downhill, n_pos + 1, 0)
        accelerate = downhill & (n_pos > n_min)
        dt = jnp.where(accelerate, jnp.minimum(dt * f_inc, dt_max), dt)
        dt = jnp.where(downhill, dt, dt * f_dec)
        alpha = jnp.where(accelerate, alpha * f_alpha, alpha)
        alpha = jnp.where(downhill, alpha, alpha_start)
        x = jnp.where(downhill, x, x - 0.5 * dt * v)
        v = jnp.where(downhill, v, 0.0)
        v = v + dt * f
        f_norm = jnp.linalg.norm(f)
        v = (1 - alpha) * v + alpha * jnp.linalg.norm(v) * f / jnp.where(f_norm > 0, f_norm, 1.0)
        x = x + dt * v
        return x, v, grad(x, *args), dt, alpha, n_pos, it + 1

    state = (
        x0,
        jnp.zeros_like(x0),
        grad(x0, *args),
        jnp.asarray(dt_start, dtype),
        jnp.asarray(alpha_start, dtype),
        jnp.asarray(0),
        jnp.asarray(0),
    )
    x, _, g, _, _, _, it = jax.lax.while_loop(cond, body, state)
    max_force = _max_force(g)
    return x, FireInfo(it, max_force, max_force <= force_tol)


# ---------------------------------------------------------------------------------------------
# The differentiable minimizer.


def backward_solve(backward: str, tol: float = 1e-10, ridge: float = 1e-8) -> tuple[Callable, str]:
    """The linear solver of the implicit derivative for a singular Hessian, and its label.

    ``normal_cg``: CG on HᵀH u = Hᵀb, the minimum-norm least-squares solution H⁺b; ``cg``: CG on
    H u = b from u = 0 (the same H⁺b when b is in H's range and H ⪰ 0); ``ridge``: CG on
    (H + ρI) u = b.
    """
    if backward == "normal_cg":
        return functools.partial(linear_solve.normal_cg, tol=tol), f"normal_cg (tol {tol:g})"
    if backward == "cg":
        return functools.partial(linear_solve.cg, tol=tol), f"cg (tol {tol:g})"
    if backward == "ridge":
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0 with backward='ridge', got {ridge!r}")
        solve = functools.partial(linear_solve.cg, tol=tol, ridge=ridge)
        return solve, f"cg on H + {ridge:g} I (tol {tol:g})"
    raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")


def make_minimizer(
    solver: str, solve: Callable, force_tol: float, maxiter: int
) -> Callable[..., tuple[jax.Array, FireInfo]]:
    """``minimize(x0, small_diameter, is_small, box_size) -> (x*, FireInfo)``, x* differentiable
    with respect to ``small_diameter`` (and ``box_size``) through ∇ₓE(x*, ·) = 0.

    ``solver="fire"``: :func:`fire_descent` decorated with :func:`implicitdiff.custom_root`;
    ``"lbfgs"``: :class:`implicitdiff.solvers.LBFGS` (tol = ``force_tol`` on ‖∇E‖, a stricter
    test than the largest particle force), which differentiates itself the same way.
    """
    if solver == "fire":

        @custom_root(optimality.stationary(soft_sphere_energy), has_aux=True, solve=solve)
        def minimize(x0, small_diameter, is_small, box_size):
            return fire_descent(
                soft_sphere_energy,
                x0,
                small_diameter,
                is_small,
                box_size,
                force_tol=force_tol,
                maxiter=maxiter,
            )

        return minimize
    if solver == "lbfgs":
        from implicitdiff.solvers import LBFGS

        lbfgs = LBFGS(fun=soft_sphere_energy, tol=force_tol, maxiter=maxiter, solve=solve)

        def minimize(x0, small_diameter, is_small, box_size):
            x, state = lbfgs.run(x0, small_diameter, is_small, box_size)
            g = jax.grad(soft_sphere_energy)(x, small_diameter, is_small, box_size)
            max_force = jax.lax.stop_gradient(_max_force(g))
            return x, FireInfo(state.iter_num, max_force, max_force <= force_tol)

        return minimize
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


# ---------------------------------------------------------------------------------------------
# The command.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``implicitdiff md-sensitivity``."""
    parser.add_argument("--particles", type=int, default=128, help="N (default 128)")
    parser.add_argument(
        "--packing-fraction", type=float, default=0.9, help="φ (default 0.9, jammed)"
    )
    parser.add_argument(
        "--diameter-ratio", type=float, default=1.4, help="large/small diameter (default 1.4)"
    )
    parser.add_argument("--solver", choices=SOLVERS, default="fire", help="minimizer (fire)")
    parser.add_argument(
        "--backward",
        choices=BACKWARDS,
        default="normal_cg",
        help="linear solve of the derivative, H singular (default normal_cg)",
    )
    parser.add_argument("--ridge", type=float, default=1e-8, help="ρ of --backward ridge")
    parser.add_argument(
        "--force-tol", type=float, default=1e-12, help="stop at max force ≤ this (1e-12)"
    )
    parser.add_argument("--maxiter", type=int, default=100_000, help="most minimizer steps")
    parser.add_argument(
        "--fd-step", type=float, default=1e-6, help="h of the finite differences (1e-6)"
    )


def _check_options(options: argparse.Namespace) -> None:
    if not options.particles >= 4:
        raise ValueError(f"--particles must be ≥ 4, got {options.particles}")
    if not options.diameter_ratio >= 1:
        raise ValueError(f"--diameter-ratio must be ≥ 1, got {options.diameter_ratio}")
    if not options.force_tol > 0:
        raise ValueError(f"--force-tol must be > 0, got {options.force_tol}")
    if not options.maxiter >= 1:
        raise ValueError(f"--maxiter must be ≥ 1, got {options.maxiter}")
    if not options.fd_step > 0:
        raise ValueError(f"--fd-step must be > 0, got {options.fd_step}")


@jax.jit
def _backward_check(x, dx, small_diameter, is_small, box_size):
    """E(x*), and the relative residual ‖H u − b‖ / ‖b‖ of the backward system at x*, with
    H = ∇²ₓE and b = −∂_{d_s}∇ₓE (two JVPs of the gradient, no Hessian formed)."""
    grad = jax.grad(soft_sphere_energy)
    _, hu = jax.jvp(lambda y: grad(y, small_diameter, is_small, box_size), (x,), (dx,))
    _, db = jax.jvp(
        lambda d: grad(x, d, is_small, box_size),
        (small_diameter,),
        (jnp.ones_like(small_diameter),),
    )
    energy = soft_sphere_energy(x, small_diameter, is_small, box_size)
    return energy, jnp.linalg.norm(hu + db) / jnp.linalg.norm(db)


@jax.jit
def _hessian(x, small_diameter, is_small, box_size):
    n = x.size
    return jax.hessian(soft_sphere_energy)(x, small_diameter, is_small, box_size).reshape(n, n)


def _figure(path, x, speed, rattler, box_size, diameters, implicit, finite_diff):
    plt = _common.pyplot()
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    x = np.mod(x, box_size)
    discs, values, hatched = [], [], []
    for i in range(len(x)):
        for sx in (-1, 0, 1):
            for sy in (-1, 0, 1):
                center = x[i] + box_size * np.array([sx, sy])
                radius = diameters[i] / 2
                if np.all(center > -radius) and np.all(center < box_size + radius):
                    circle = Circle(center, radius)
                    (hatched if rattler[i] else discs).append(circle)
                    if not rattler[i]:
                        values.append(speed[i])
    collection = PatchCollection(discs, cmap="viridis", edgecolor="k", linewidth=0.4)
    collection.set_array(np.asarray(values))
    left.add_collection(collection)
    if hatched:
        left.add_collection(
            PatchCollection(hatched, facecolor="white", edgecolor="0.5", hatch="//", linewidth=0.4)
        )
    left.plot([0, box_size, box_size, 0, 0], [0, 0, box_size, box_size, 0], "k--", lw=0.8)
    left.set_xlim(-0.05 * box_size, 1.05 * box_size)
    left.set_ylim(-0.05 * box_size, 1.05 * box_size)
    left.set_aspect("equal")
    left.set_title(f"‖dxᵢ/dd_s‖ (N = {len(x)}; hatched: rattlers)")
    figure.colorbar(collection, ax=left, fraction=0.046)
    right.plot(finite_diff.ravel(), implicit.ravel(), ".", ms=4)
    low, high = float(np.min(finite_diff)), float(np.max(finite_diff))
    right.plot([low, high], [low, high], "k-", lw=0.6)
    right.set_xlabel("finite differences")
    right.set_ylabel("implicit differentiation")
    right.set_title("dx/dd_s, non-rattlers, mean translation removed")
    return _common.save_figure(figure, path)


def run(options: argparse.Namespace) -> dict:
    """Minimize the packing, differentiate it implicitly, check against finite differences."""
    _check_options(options)
    jax.config.update("jax_enable_x64", True)  # finite differences at h = 1e-6 need float64
    folder = _common.output_folder(options)
    small_diameter = 1.0 / options.diameter_ratio
    x0, is_small, box_size = bidisperse_packing(
        options.particles,
        options.packing_fraction,
        small_diameter,
        jax.random.PRNGKey(options.seed),
    )
    box = jnp.asarray(box_size)
    d_s = jnp.asarray(small_diameter)
    solve, solve_label = backward_solve(options.backward, ridge=options.ridge)
    minimize = make_minimizer(options.solver, solve, options.force_tol, options.maxiter)

    primal = jax.jit(minimize)

    @jax.jit
    def sensitivity(init, d_s):
        (x, info), (dx, _) = jax.jvp(
            lambda d: minimize(init, d, is_small, box), (d_s,), (jnp.ones_like(d_s),)
        )
        return x, info, dx

    start = time.perf_counter()
    x, info = jax.block_until_ready(primal(x0, d_s, is_small, box))
    minimize_time = time.perf_counter() - start  # includes compilation
    if not bool(info.converged):
        raise RuntimeError(
            f"{options.solver} did not reach max force ≤ {options.force_tol:g} in "
            f"{options.maxiter} steps (max force {float(info.max_force):.3g}): raise --maxiter"
        )
    # The derivative at x*: started from x*, the solver stops at once, so this is the backward.
    x_star, _, dx = jax.block_until_ready(sensitivity(x, d_s))
    backward_time = _common.median_time(lambda: sensitivity(x, d_s)[2], repeats=3)
    solve_time = _common.median_time(lambda: primal(x0, d_s, is_small, box)[0], repeats=3)

    energy, residual = (float(v) for v in _backward_check(x_star, dx, d_s, is_small, box))

    # Finite differences, re-minimized from x* (the same local minimum).
    h = options.fd_step
    x_plus, info_plus = primal(x_star, d_s + h, is_small, box)
    x_minus, info_minus = primal(x_star, d_s - h, is_small, box)
    fd_converged = bool(info_plus.converged) and bool(info_minus.converged)
    finite_diff = np.asarray(x_plus - x_minus) / (2 * h)
    implicit = np.asarray(dx)

    rattler = rattlers(x_star, small_diameter, is_small, box_size)
    keep = ~rattler
    centred_implicit = implicit[keep] - implicit[keep].mean(axis=0)
    centred_fd = finite_diff[keep] - finite_diff[keep].mean(axis=0)
    rel_error = _common.relative_error(centred_implicit, centred_fd)
    rel_error_all = _common.relative_error(
        implicit - implicit.mean(axis=0), finite_diff - finite_diff.mean(axis=0)
    )
    mean_translation = float(np.linalg.norm(implicit.mean(axis=0)))

    spectrum = None
    if x_star.size <= 1024:
        eigenvalues = np.linalg.eigvalsh(np.asarray(_hessian(x_star, d_s, is_small, box)))
        threshold = 1e-8 * float(np.max(np.abs(eigenvalues)))
        spectrum = {
            "zero_modes": int(np.sum(np.abs(eigenvalues) <= threshold)),
            "smallest_nonzero": float(np.min(eigenvalues[np.abs(eigenvalues) > threshold])),
            "largest": float(np.max(eigenvalues)),
            "most_negative": float(np.min(eigenvalues)),
        }

    x_np = np.asarray(x_star)
    diameters = np.where(np.asarray(is_small), small_diameter, 1.0)
    speed = np.linalg.norm(implicit - implicit[keep].mean(axis=0), axis=1)
    figure_path = _figure(
        folder / "sensitivity.png",
        x_np,
        speed,
        rattler,
        box_size,
        diameters,
        centred_implicit,
        centred_fd,
    )

    results = {
        "particles": options.particles,
        "packing_fraction": options.packing_fraction,
        "small_diameter": small_diameter,
        "box_size": box_size,
        "solver": options.solver,
        "iterations": int(info.iterations),
        "energy": energy,
        "max_force": float(info.max_force),
        "force_tol": options.force_tol,
        "converged": bool(info.converged),
        "backward_solve": solve_label,
        "backward_residual": residual,
        "rattlers": int(rattler.sum()),
        "hessian": spectrum,
        "implicit_mean_translation": mean_translation,
        "fd_step": h,
        "fd_converged": fd_converged,
        "relative_error": rel_error,
        "relative_error_all_particles": rel_error_all,
        "minimize_time_s": solve_time,
        "first_minimize_time_s": minimize_time,
        "derivative_time_s": backward_time,
        "positions": x_np,
        "sensitivity": implicit,
        "finite_differences": finite_diff,
        "is_rattler": rattler,
    }
    json_path = _common.write_json(folder / "results.json", results)
    zero_modes = "-" if spectrum is None else spectrum["zero_modes"]
    table = _common.format_table(
        [
            "N",
            "solver",
            "iters",
            "energy",
            "max force",
            "rattlers",
            "H zero modes",
            "backward solve",
            "residual",
            "rel. error vs FD",
        ],
        [
            [
                options.particles,
                options.solver,
                int(info.iterations),
                energy,
                float(info.max_force),
                int(rattler.sum()),
                zero_modes,
                solve_label,
                residual,
                rel_error,
            ]
        ],
    )
    table += (
        f"\nminimize {solve_time:.3f} s, derivative at x* {backward_time:.3f} s (medians); "
        f"finite differences h = {h:g}, compared on non-rattlers after removing the mean "
        "translation"
    )
    if not fd_converged:
        table += (
            "\nwarning: a finite-difference re-minimization did not reach the force tolerance; "
            "the comparison is not reliable (raise --maxiter)"
        )
    return {
        "table": table,
        "files": [json_path, figure_path],
        **{k: v for k, v in results.items() if not isinstance(v, np.ndarray)},
    }
