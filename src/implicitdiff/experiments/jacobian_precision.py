"""Jacobian precision (paper §3, Theorem 1): implicit derivatives at an inexact solution.

Problem. Ridge regression on scikit-learn's diabetes data (442 × 10, columns and target
standardized): x*(λ) = argmin_x ½‖Xx − y‖² + ½λ‖x‖² = (XᵀX + λI)⁻¹Xᵀy, default λ = 10. Its
Jacobian in closed form: ∂x*/∂λ = −(XᵀX + λI)⁻¹x*.

Implicit estimate at an approximate solution x̂: with F(x, λ) = ∇ₓf = (XᵀX + λI)x − Xᵀy,
J(x̂) = A(x̂)⁻¹B(x̂) with A = −∂₁F = −(XᵀX + λI) and B = ∂₂F = x̂ (``implicitdiff.root_jvp`` at x̂,
or ``GradientDescent`` stopped after t iterations and differentiated implicitly). Theorem 1:
‖J(x̂) − ∂x*‖ ≤ (β/α + γR/α²)‖x̂ − x*‖, here in closed form: ‖Av‖ ≥ α‖v‖ with
α = λ_min(XᵀX) + λ; A does not depend on x, so γ = 0; B(x) = x is 1-Lipschitz, β = 1; and
R = ‖B(x*)‖ = ‖x*‖ (multiplied by γ = 0). So the bound is ‖x̂ − x*‖ / α.

Measured: x̂ = x* + δu (u a random unit vector, δ from 1e-6 to 1e2, as in the paper) and x̂ = the
t-th gradient-descent iterate (step 1/L from 0); for the iterates, also the unrolled estimate (the
derivative of the t-th iterate, the same solver with implicit_diff=False). Reported: the
log-log slope of the implicit error against ‖x̂ − x*‖ (linear: slope 1), the largest ratio
error / bound (≤ 1), and implicit against unrolled errors at the same iterate (t = 200 by default).

Output: results.json and precision.png. Default size: about 12 s on 2 idle CPU cores (50 s on a
loaded machine), mostly one compilation per iteration count.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import optimality, root_jvp
from implicitdiff.experiments import _common

NAME = "jacobian-precision"
HELP = "Theorem 1: Jacobian error of implicit differentiation vs unrolling, on ridge regression"

DEFAULT_ITERATIONS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def ridge_objective(x: jax.Array, lam: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
    """f(x, λ) = ½‖Xx − y‖² + ½λ‖x‖²."""
    return 0.5 * jnp.sum((X @ x - y) ** 2) + 0.5 * lam * jnp.sum(x**2)


ridge_optimality = optimality.stationary(ridge_objective)
"""F(x, λ, X, y) = ∇ₓf = (XᵀX + λI)x − Xᵀy."""


def diabetes_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's diabetes regression set, each column of X and y scaled to mean 0, std 1."""
    datasets = _common.require("sklearn.datasets")
    X, y = datasets.load_diabetes(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    y = (y - y.mean()) / y.std()
    return X, y


def ridge_closed_form(X: np.ndarray, y: np.ndarray, lam: float) -> dict[str, Any]:
    """x* = (XᵀX + λI)⁻¹Xᵀy, ∂x*/∂λ = −(XᵀX + λI)⁻¹x*, and Theorem 1's constants.

    α = λ_min(XᵀX) + λ, β = 1, γ = 0, R = ‖x*‖, and the bound factor β/α + γR/α².
    """
    A = X.T @ X + lam * np.eye(X.shape[1])
    x_star = np.linalg.solve(A, X.T @ y)
    jacobian = -np.linalg.solve(A, x_star)
    eigenvalues = np.linalg.eigvalsh(A)
    alpha, beta, gamma, R = float(eigenvalues[0]), 1.0, 0.0, float(np.linalg.norm(x_star))
    return {
        "x_star": x_star,
        "jacobian": jacobian,
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "R": R,
        "bound_factor": beta / alpha + gamma * R / alpha**2,
        "lipschitz": float(eigenvalues[-1]),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``implicitdiff jacobian-precision``."""
    parser.add_argument("--lam", type=float, default=10.0, help="ridge strength λ (default 10)")
    parser.add_argument(
        "--perturbations",
        type=int,
        default=41,
        help="number of perturbation sizes δ, log-spaced in [1e-6, 1e2] (default 41)",
    )
    parser.add_argument(
        "--directions",
        type=int,
        default=10,
        help="random unit directions u per perturbation size (default 10)",
    )
    parser.add_argument(
        "--iterations",
        type=str,
        default=",".join(map(str, DEFAULT_ITERATIONS)),
        help="gradient-descent iteration counts t, comma-separated (default "
        + ",".join(map(str, DEFAULT_ITERATIONS))
        + ")",
    )
    parser.add_argument(
        "--compare-at", type=int, default=200, help="iterate for implicit vs unrolled (200)"
    )


def _parse_iterations(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--iterations must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise ValueError(f"--iterations must be positive integers, got {text!r}")
    return values


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _gradient_descent_jacobians(X, y, lam, stepsize, t):
    """x_t and ∂x_t/∂λ of t gradient steps from 0: implicit (at x_t) and unrolled."""
    from implicitdiff.solvers import GradientDescent

    # Stopping after t iterations is the point here, not a failure to report.
    out = {}
    for mode, implicit in (("implicit", True), ("unrolled", False)):
        solver = GradientDescent(
            fun=ridge_objective,
            stepsize=stepsize,
            maxiter=t,
            tol=0.0,
            implicit_diff=implicit,
            solve="lu",
            on_failure="ignore",
        )

        def solution(lam, solver=solver):
            return solver.run(jnp.zeros(X.shape[1]), lam, X, y).params

        x_t, j_t = jax.jvp(solution, (lam,), (jnp.ones_like(lam),))
        out[mode] = np.asarray(j_t)
        out["x"] = np.asarray(x_t)
    return out


def _diagnostic_estimates(x_iterates, lam, X, y) -> dict[str, Any] | None:
    """:func:`implicitdiff.diagnostics.jacobian_error_bound` at each iterate, which estimates the
    constants from F alone and ‖x̂ − x*‖ from the residual ‖F(x̂)‖ (None if the module is absent).
    """
    try:
        from implicitdiff.diagnostics import jacobian_error_bound
    except ImportError:
        return None
    estimates = [
        jacobian_error_bound(ridge_optimality, jnp.asarray(x), lam, X, y, argnums=0)
        for x in x_iterates
    ]
    return {
        "alpha": float(estimates[0].alpha),
        "beta": float(estimates[0].beta),
        "gamma": float(estimates[0].gamma),
        "factor": float(estimates[0].factor),
        "solution_error_estimate": np.array([float(e.solution_error) for e in estimates]),
        "bound": np.array([float(e.bound) for e in estimates]),
    }


def _figure(path, pert, iters, bound_factor, compare_at, diagnostic):
    plt = _common.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    grid = np.geomspace(
        min(pert["solution_error"].min(), iters["solution_error"].min()),
        max(pert["solution_error"].max(), iters["solution_error"].max()),
        50,
    )
    left.loglog(
        grid,
        bound_factor * grid,
        "k--",
        zorder=5,
        label="Theorem 1 bound (β/α + γR/α²)‖x̂ − x*‖",
    )
    left.loglog(
        pert["solution_error"],
        pert["implicit_error"],
        "o",
        ms=3,
        alpha=0.35,
        label="implicit, x* + δu (random u)",
    )
    left.loglog(
        iters["solution_error"],
        iters["implicit_error"],
        "s-",
        color="C1",
        ms=4,
        label="implicit, GD iterate",
    )
    left.loglog(
        iters["solution_error"],
        iters["unrolled_error"],
        "^-",
        color="C2",
        ms=4,
        label="unrolled, GD iterate",
    )
    if diagnostic is not None:
        left.loglog(
            iters["solution_error"],
            diagnostic["bound"],
            ":",
            color="C3",
            lw=2,
            zorder=6,
            label="diagnostics.jacobian_error_bound (‖x̂ − x*‖ from ‖F(x̂)‖)",
        )
    left.set_xlabel("‖x̂ − x*‖")
    left.set_ylabel("‖J − ∂x*(λ)‖")
    left.set_title("Jacobian error against solution error (ridge, diabetes)")
    left.legend(fontsize=7, loc="lower right")
    t = iters["iterations"]
    right.loglog(t, iters["implicit_relative_error"], "s-", color="C1", ms=4, label="implicit")
    right.loglog(t, iters["unrolled_relative_error"], "^-", color="C2", ms=4, label="unrolled")
    right.loglog(t, iters["solution_relative_error"], ":", color="0.4", label="‖x_t − x*‖/‖x*‖")
    if compare_at in set(t.tolist()):
        right.axvline(compare_at, color="0.7", lw=0.8)
    right.set_xlabel("gradient-descent iterations t")
    right.set_ylabel("relative error")
    right.set_title("At the same iterate")
    right.legend(fontsize=8)
    return _common.save_figure(figure, path)


def run(options: argparse.Namespace) -> dict:
    """Measure implicit and unrolled Jacobian errors against the solution error."""
    if not options.lam > 0:
        raise ValueError(f"--lam must be > 0, got {options.lam}")
    if not options.perturbations >= 2:
        raise ValueError(f"--perturbations must be ≥ 2, got {options.perturbations}")
    if not options.directions >= 1:
        raise ValueError(f"--directions must be ≥ 1, got {options.directions}")
    iterations = _parse_iterations(options.iterations)
    if options.compare_at not in iterations:
        iterations = sorted({*iterations, options.compare_at})
    jax.config.update("jax_enable_x64", True)  # errors down to 1e-8 need float64
    folder = _common.output_folder(options)

    X_np, y_np = diabetes_data()
    exact = ridge_closed_form(X_np, y_np, options.lam)
    X, y, lam = jnp.asarray(X_np), jnp.asarray(y_np), jnp.asarray(options.lam)
    x_star, j_star = exact["x_star"], exact["jacobian"]
    j_norm = np.linalg.norm(j_star)

    # (a) Implicit estimates at x* + δu, for random unit vectors u.
    # on_failure="nan": a failed linear solve shows as NaN, with no host callback in the batch
    # (jax 0.10's XLA fails to compile a vmapped io_callback over ≥ 410 elements).
    @jax.jit
    @jax.vmap
    def implicit_at(x_hat):
        tangents = (jnp.ones_like(lam), None, None)
        return root_jvp(ridge_optimality, x_hat, (lam, X, y), tangents, on_failure="nan")

    deltas = np.repeat(np.logspace(-6, 2, options.perturbations), options.directions)
    rng = np.random.default_rng(options.seed)
    directions = rng.standard_normal((len(deltas), len(x_star)))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x_hats = x_star + deltas[:, None] * directions
    j_hats = np.asarray(implicit_at(jnp.asarray(x_hats)))
    if not np.all(np.isfinite(j_hats)):
        raise RuntimeError("the linear system of an implicit estimate was not solved")
    pert = {
        "delta": deltas,
        "solution_error": np.linalg.norm(x_hats - x_star, axis=1),
        "implicit_error": np.linalg.norm(j_hats - j_star, axis=1),
    }
    pert["bound"] = exact["bound_factor"] * pert["solution_error"]
    pert["ratio"] = pert["implicit_error"] / pert["bound"]
    at_solution = np.asarray(implicit_at(jnp.asarray(x_star)[None]))[0]
    error_at_solution = float(np.linalg.norm(at_solution - j_star) / j_norm)

    # (b) Gradient-descent iterates: implicit at x_t, and unrolled.
    stepsize = 1.0 / exact["lipschitz"]
    rows, x_iterates = [], []
    for t in _common.progress(iterations, options, "GD iterates"):
        out = _gradient_descent_jacobians(X, y, lam, stepsize, t)
        x_iterates.append(out["x"])
        rows.append(
            (
                t,
                np.linalg.norm(out["x"] - x_star),
                np.linalg.norm(out["implicit"] - j_star),
                np.linalg.norm(out["unrolled"] - j_star),
            )
        )
    table_array = np.asarray(rows, dtype=float)
    iters = {
        "iterations": table_array[:, 0].astype(int),
        "solution_error": table_array[:, 1],
        "implicit_error": table_array[:, 2],
        "unrolled_error": table_array[:, 3],
    }
    iters["bound"] = exact["bound_factor"] * iters["solution_error"]
    iters["ratio"] = iters["implicit_error"] / iters["bound"]
    iters["implicit_relative_error"] = iters["implicit_error"] / j_norm
    iters["unrolled_relative_error"] = iters["unrolled_error"] / j_norm
    iters["solution_relative_error"] = iters["solution_error"] / np.linalg.norm(x_star)

    # Fits: the implicit error is linear in the solution error (slope 1 in log-log). Iterates
    # whose error is at rounding level (J itself is computed to ~1e-14) are left out of the fit
    # and of the ratio to the bound.
    slope = _slope(pert["solution_error"], pert["implicit_error"])
    diagnostic = _diagnostic_estimates(x_iterates, lam, X, y)
    fit = iters["solution_error"] > 1e-10 * np.linalg.norm(x_star)
    iters["above_rounding"] = fit
    slope_iterates = _slope(iters["solution_error"][fit], iters["implicit_error"][fit])
    slope_unrolled = _slope(iters["solution_error"][fit], iters["unrolled_error"][fit])
    k = int(np.flatnonzero(iters["iterations"] == options.compare_at)[0])
    compare = {
        "iterations": options.compare_at,
        "solution_error": float(iters["solution_error"][k]),
        "implicit_error": float(iters["implicit_error"][k]),
        "unrolled_error": float(iters["unrolled_error"][k]),
        "implicit_relative_error": float(iters["implicit_relative_error"][k]),
        "unrolled_relative_error": float(iters["unrolled_relative_error"][k]),
    }

    figure_path = _figure(
        folder / "precision.png", pert, iters, exact["bound_factor"], options.compare_at, diagnostic
    )
    results = {
        "lam": options.lam,
        "samples": int(X_np.shape[0]),
        "features": int(X_np.shape[1]),
        "alpha": exact["alpha"],
        "beta": exact["beta"],
        "gamma": exact["gamma"],
        "R": exact["R"],
        "bound_factor": exact["bound_factor"],
        "stepsize": stepsize,
        "slope": slope,
        "slope_iterates": slope_iterates,
        "slope_unrolled": slope_unrolled,
        "max_ratio": float(pert["ratio"].max()),
        "max_ratio_iterates": float(iters["ratio"][fit].max()),
        "implicit_error_at_solution": error_at_solution,
        "compare": compare,
        "diagnostic": diagnostic,
        "perturbations": pert,
        "gradient_descent": iters,
    }
    json_path = _common.write_json(folder / "results.json", results)
    table = _common.format_table(
        ["x̂", "points", "slope", "max error/bound"],
        [
            ["x* + δu, δ ∈ [1e-6, 1e2]", len(deltas), slope, float(pert["ratio"].max())],
            [
                "GD iterates, implicit",
                int(fit.sum()),
                slope_iterates,
                results["max_ratio_iterates"],
            ],
            ["GD iterates, unrolled", int(fit.sum()), slope_unrolled, "-"],
        ],
    )
    table += "\n\n" + _common.format_table(
        ["t", "‖x_t − x*‖", "implicit rel. error", "unrolled rel. error"],
        [
            [
                compare["iterations"],
                compare["solution_error"],
                compare["implicit_relative_error"],
                compare["unrolled_relative_error"],
            ]
        ],
    )
    table += (
        f"\nλ = {options.lam:g}: α = λ_min(XᵀX) + λ = {exact['alpha']:.4g}, β = 1, γ = 0, "
        f"R = ‖x*‖ = {exact['R']:.4g}; bound = ‖x̂ − x*‖ / α. Implicit at x*: relative error "
        f"{error_at_solution:.1e}."
    )
    if diagnostic is not None:
        table += (
            f"\ndiagnostics.jacobian_error_bound: α = {diagnostic['alpha']:.4g}, "
            f"β = {diagnostic['beta']:.4g}, γ = {diagnostic['gamma']:.3g}, factor "
            f"{diagnostic['factor']:.4g} (closed form {exact['bound_factor']:.4g})."
        )
    summary_keys = (
        "lam",
        "alpha",
        "bound_factor",
        "slope",
        "slope_iterates",
        "slope_unrolled",
        "max_ratio",
        "max_ratio_iterates",
        "implicit_error_at_solution",
        "compare",
    )
    return {
        "table": table,
        "files": [json_path, figure_path],
        **{key: results[key] for key in summary_keys},
        "perturbations": pert,
        "gradient_descent": iters,
    }
