"""Multiclass SVM hyperparameter optimization (paper §4.1): implicit differentiation of its dual.

Problem. The regularization strength θ = exp(λ) of a multiclass (Crammer–Singer) SVM is tuned by
gradient descent on the validation loss. The inner problem is the SVM's dual, one simplex per
training sample:

    x*(θ) = argmin_{x ∈ Δᵏ×…×Δᵏ} (θ/2)‖W(x, θ)‖²_F + ⟨x, Y_tr⟩,   W(x, θ) = X_trᵀ(Y_tr − x)/θ,

the dual of min_W (θ/2)‖W‖²_F + Σᵢ maxⱼ (1[j ≠ yᵢ] + (Wᵀxᵢ)ⱼ − (Wᵀxᵢ)_{yᵢ}) (up to the constant
m), W(x*, θ) being the primal solution. The outer loss is L(λ) = ½‖X_val W(x*(θ), θ) − Y_val‖²_F
/ n_val. The solvers minimize θ times the dual objective, ½‖X_trᵀ(Y_tr − x)‖²_F + θ⟨x, Y_tr⟩
(same minimizer; its curvature X_tr X_trᵀ ⊗ I does not depend on θ, so fixed step sizes serve
every θ): MirrorDescent (negative entropy on each row, η = 1/maxᵢ‖xᵢ‖²), ProximalGradient (FISTA,
prox = projection onto the simplices, η = 1/‖X_tr‖²₂) or BlockCoordinateDescent (one block per
sample, ηᵢ = 1/‖xᵢ‖²), each differentiated implicitly through its own fixed point. The outer loop
is plain gradient descent on λ (optax.sgd; implicitdiff.bilevel.minimize, each inner solve
warm-started from the last).

Data: scikit-learn's make_classification (--samples 700, --features 100, --classes 5), split in
halves (training / validation), features standardized (training statistics) and divided by √p.

Measures. (1) The validation loss over the outer steps, and the validation accuracy before and
after. (2) At the initial λ, the hypergradient dL/dλ of the three solvers, each differentiated
through its own fixed point: proximal gradient solved from the uniform point to a gradient
mapping ≤ 1e-12, mirror descent and BCD run from that solution until their own error ≤ 1e-10
(entropic mirror descent approaches the faces of the simplices too slowly to solve to that
accuracy from scratch), against central finite differences of L (converged solves at
λ ± 1e-4). (3) The time of one hypergradient (jitted value_and_grad from the uniform point,
compile excluded, median of --timing-repeats interleaved calls) of --timing-solver (default
mirror descent) against the number of inner iterations (at --features) and against the number of
features (at --timing-fixed-iterations): implicit differentiation against unrolling the same
solver (implicit_diff=False), both running exactly maxiter iterations (tol = 0), and the forward
solve alone (the backward pass is the difference).

Output: results.json, validation_loss.png, timing.png and svm_hyperopt.png (all three panels).
The default run takes about 1 minute on 2 loaded CPU cores (1.5 minutes under heavy load), most of
it compiling the 20-odd programs it times.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import bilevel, projections, prox
from implicitdiff.experiments import _common
from implicitdiff.solvers import BlockCoordinateDescent, MirrorDescent, ProximalGradient

NAME = "svm-hyperopt"
HELP = "§4.1: multiclass SVM regularization by hypergradient descent; implicit vs unrolled time"

SOLVERS = ("mirror-descent", "proximal-gradient", "bcd")
REFERENCE_TOL = 1e-12
"""Gradient-mapping tolerance of the reference solves (ProximalGradient) of the checks."""
CHECK_TOL = 1e-10
"""Each solver's own tolerance when it is run from the reference solution in the checks."""
FD_STEP = 1e-4
"""h of the central difference (L(λ + h) − L(λ − h)) / 2h."""


# ---------------------------------------------------------------------------------------------
# The problem.


def svm_weights(x: jax.Array, theta: Any, X: jax.Array, Y: jax.Array) -> jax.Array:
    """W(x, θ) = Xᵀ(Y − x)/θ, the primal weights (p, k) of the dual variables x (n, k)."""
    return X.T @ (Y - x) / theta


def dual_objective(x: jax.Array, theta: Any, X: jax.Array, Y: jax.Array) -> jax.Array:
    """f(x, θ) = (θ/2)‖W(x, θ)‖²_F + ⟨x, Y⟩, the SVM dual of the paper, to minimize over the
    simplices (each row of x in Δᵏ). Its gradient is ∇₁f = Y − X W(x, θ)."""
    return 0.5 * theta * jnp.sum(svm_weights(x, theta, X, Y) ** 2) + jnp.vdot(x, Y)


def scaled_dual_objective(x: jax.Array, theta: Any, X: jax.Array, Y: jax.Array) -> jax.Array:
    """θ·f(x, θ) = ½‖Xᵀ(Y − x)‖²_F + θ⟨x, Y⟩, what the solvers minimize (same minimizer as f).

    Its gradient θ(Y − X W(x, θ)) has the Lipschitz constant ‖X‖²₂ whatever θ (Hessian
    X Xᵀ ⊗ I), so a fixed step suits every θ the outer loop visits.
    """
    return 0.5 * jnp.sum((X.T @ (Y - x)) ** 2) + theta * jnp.vdot(x, Y)


def validation_loss(
    x: jax.Array, theta: Any, X_train: jax.Array, Y_train: jax.Array, X_val, Y_val
) -> jax.Array:
    """L = ½‖X_val W(x, θ) − Y_val‖²_F / n_val."""
    residual = X_val @ svm_weights(x, theta, X_train, Y_train) - Y_val
    return 0.5 * jnp.sum(residual**2) / X_val.shape[0]


def validation_accuracy(x, theta, X_train, Y_train, X_val, Y_val) -> float:
    """The fraction of validation samples whose largest score (X_val W)ᵢ is the true class."""
    scores = X_val @ svm_weights(x, theta, X_train, Y_train)
    return float(jnp.mean(jnp.argmax(scores, axis=1) == jnp.argmax(Y_val, axis=1)))


def simplex_rows(x: jax.Array, scale: Any = 1.0) -> jax.Array:
    """The projection of each row of x onto the simplex {p ≥ 0, Σp = scale}."""
    return jax.vmap(projections.simplex, in_axes=(0, None))(x, scale)


def make_data(samples: int, features: int, classes: int, seed: int) -> dict[str, jax.Array]:
    """make_classification(samples, features, classes), split in halves (training, validation);
    features standardized by the training statistics and divided by √p (rows of norm ≈ 1);
    one-hot labels. Returns X_train, Y_train, X_val, Y_val."""
    datasets = _common.require("sklearn.datasets")
    informative = min(features, 20)
    if classes > 2**informative:
        raise ValueError(f"--classes {classes} needs more --features (2^features ≥ classes)")
    X, labels = datasets.make_classification(
        n_samples=samples,
        n_features=features,
        n_informative=informative,
        n_redundant=0,
        n_classes=classes,
        n_clusters_per_class=1,
        random_state=seed,
    )
    n_train = samples // 2
    mean, std = X[:n_train].mean(axis=0), X[:n_train].std(axis=0)
    X = (X - mean) / np.where(std > 0, std, 1.0) / math.sqrt(features)
    Y = np.eye(classes)[labels]
    return {
        "X_train": jnp.asarray(X[:n_train]),
        "Y_train": jnp.asarray(Y[:n_train]),
        "X_val": jnp.asarray(X[n_train:]),
        "Y_val": jnp.asarray(Y[n_train:]),
    }


def make_solver(
    name: str, X_train: Any, *, tol: float, maxiter: int, implicit_diff: bool = True
) -> MirrorDescent | ProximalGradient | BlockCoordinateDescent:
    """The solver ``name`` of :func:`scaled_dual_objective` on the simplices, with fixed steps
    from the training data: mirror descent η = 1/maxᵢ‖xᵢ‖² (the curvature bound maxₐᵦ|Hₐᵦ| of
    its ℓ1 geometry), proximal gradient (FISTA) η = 1/‖X‖²₂, BCD ηᵢ = 1/‖xᵢ‖² (exact block
    Lipschitz constants). Called as ``solver.run(x0, 1.0, θ, X_train, Y_train)``. The linear
    system of the implicit derivative (I − ∂₁T, not symmetric) is solved by BiCGSTAB: on
    these problems it needs far fewer matvecs than restarted GMRES (mirror descent: 10× faster
    backward pass than the default GMRES(20)). Unrolled BCD
    (a sweep is a loop over the samples) is checkpointed, to keep its memory in bounds."""
    X = np.asarray(X_train)
    row_norms = np.sum(X**2, axis=1)
    common = {"tol": tol, "maxiter": maxiter, "implicit_diff": implicit_diff, "solve": "bicgstab"}
    if name == "mirror-descent":
        return MirrorDescent(fun=scaled_dual_objective, stepsize=1.0 / row_norms.max(), **common)
    if name == "proximal-gradient":
        return ProximalGradient(
            fun=scaled_dual_objective,
            prox=prox.from_projection(simplex_rows),
            stepsize=1.0 / np.linalg.norm(X, 2) ** 2,
            **common,
        )
    if name == "bcd":
        return BlockCoordinateDescent(
            fun=scaled_dual_objective,
            block_prox=prox.from_projection(projections.simplex),
            stepsize=1.0 / row_norms,
            unroll_checkpoint=not implicit_diff,
            **common,
        )
    raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}")


def uniform_init(data: dict[str, jax.Array]) -> jax.Array:
    """The dual starting point: every row uniform on its simplex."""
    n, k = data["Y_train"].shape
    return jnp.full((n, k), 1.0 / k, data["Y_train"].dtype)


def hypergradient_function(solver: Any) -> Callable:
    """jit((λ, x0, data) ↦ ((L(λ), (x*, state)), dL/dλ)) through ``solver`` run from x0."""

    def loss(lam, x0, data):
        theta = jnp.exp(lam)
        x, state = solver.run(x0, 1.0, theta, data["X_train"], data["Y_train"])
        value = validation_loss(
            x, theta, data["X_train"], data["Y_train"], data["X_val"], data["Y_val"]
        )
        return value, (x, state)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


# ---------------------------------------------------------------------------------------------
# The measurements.


def reference_function(data: dict, maxiter: int) -> Callable:
    """:func:`hypergradient_function` of ProximalGradient run to a gradient mapping ≤
    REFERENCE_TOL (at most ``maxiter`` iterations)."""
    solver = make_solver("proximal-gradient", data["X_train"], tol=REFERENCE_TOL, maxiter=maxiter)
    return hypergradient_function(solver)


def check_hypergradients(
    data: dict, lam: float, maxiter: int, reference: Callable | None = None
) -> dict[str, Any]:
    """The three solvers' hypergradients dL/dλ at λ, and central finite differences.

    A reference solution x_ref is computed by ProximalGradient to a gradient mapping ≤
    REFERENCE_TOL from the uniform point (``reference``, from :func:`reference_function`); each
    solver then runs from x_ref until its own error ≤ CHECK_TOL (at most ``maxiter``
    iterations) and is differentiated implicitly through its own fixed point (the reference
    run itself is the proximal-gradient entry). The finite difference uses reference solves at
    λ ± FD_STEP, warm-started from x_ref. Returns the numbers and x_ref.
    """
    reference = reference or reference_function(data, 50 * maxiter)
    lam = jnp.asarray(lam, data["X_train"].dtype)
    (_, (x_ref, state)), grad = reference(lam, uniform_init(data), data)
    if not bool(state.converged):
        raise RuntimeError(
            f"the reference solve did not converge in {int(state.iter_num)} iterations "
            f"(gradient mapping {float(state.error):.1e}): raise --inner-iterations"
        )
    (plus, _), _ = reference(lam + FD_STEP, x_ref, data)
    (minus, _), _ = reference(lam - FD_STEP, x_ref, data)
    finite_difference = float((plus - minus) / (2 * FD_STEP))
    gradients = {"proximal-gradient": float(grad)}
    iterations = {"proximal-gradient": int(state.iter_num)}
    converged = {"proximal-gradient": True}
    for name in ("mirror-descent", "bcd"):
        solver = make_solver(name, data["X_train"], tol=CHECK_TOL, maxiter=maxiter)
        (_, (_, state)), grad = hypergradient_function(solver)(lam, x_ref, data)
        gradients[name] = float(grad)
        iterations[name] = int(state.iter_num)
        converged[name] = bool(state.converged)
    values = np.array(list(gradients.values()))
    tiny = np.finfo(float).tiny
    scale = max(abs(finite_difference), tiny)
    pairwise = np.ptp(values) / max(np.max(np.abs(values)), tiny)
    return {
        "lambda": float(lam),
        "hypergradients": gradients,
        "finite_difference": finite_difference,
        "relative_error_vs_fd": {
            n: abs(g - finite_difference) / scale for n, g in gradients.items()
        },
        "max_relative_difference": float(pairwise),
        "iterations": iterations,
        "converged": converged,
        "x_ref": x_ref,
    }


def forward_function(solver: Any) -> Callable:
    """jit((λ, x0, data) ↦ L(λ)): the forward pass of :func:`hypergradient_function` alone."""

    def loss(lam, x0, data):
        theta = jnp.exp(lam)
        x, _ = solver.run(x0, 1.0, theta, data["X_train"], data["Y_train"])
        return validation_loss(
            x, theta, data["X_train"], data["Y_train"], data["X_val"], data["Y_val"]
        )

    return jax.jit(loss)


def _interleaved_medians(functions: dict[str, Callable], repeats: int) -> dict[str, float]:
    """Median wall time (s) of each function's call, after one compiling call each; the timed
    calls are interleaved (one round calls each once), so that a machine whose load changes
    slows all of them alike."""
    for fun in functions.values():
        jax.block_until_ready(fun())
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fun in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(fun())
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def _time_point(name: str, data: dict, iterations: int, lam: float, repeats: int) -> dict:
    """At one size: the median times (s) of the forward solve alone and of the implicit and
    the unrolled hypergradients (forward and backward), ``iterations`` inner iterations each
    from the uniform point; their difference, the backward passes; both hypergradients."""
    implicit = make_solver(name, data["X_train"], tol=0.0, maxiter=iterations)
    unrolled = make_solver(name, data["X_train"], tol=0.0, maxiter=iterations, implicit_diff=False)
    x0 = uniform_init(data)
    lam = jnp.asarray(lam, x0.dtype)
    forward = forward_function(implicit)
    grad_implicit = hypergradient_function(implicit)
    grad_unrolled = hypergradient_function(unrolled)
    times = _interleaved_medians(
        {
            "forward": lambda: forward(lam, x0, data),
            "implicit": lambda: grad_implicit(lam, x0, data),
            "unrolled": lambda: grad_unrolled(lam, x0, data),
        },
        repeats,
    )
    times["implicit_backward"] = times["implicit"] - times["forward"]
    times["unrolled_backward"] = times["unrolled"] - times["forward"]
    times["hypergradient_implicit"] = float(grad_implicit(lam, x0, data)[1])
    times["hypergradient_unrolled"] = float(grad_unrolled(lam, x0, data)[1])
    return times


TIMING_DEFAULTS = {
    "mirror-descent": ([100, 400, 1600], [50, 100, 300, 1000], 400),
    "proximal-gradient": ([100, 400, 1600], [50, 100, 300, 1000], 400),
    "bcd": ([5, 20, 80], [50, 100, 300], 20),
}
"""(iteration counts, feature counts, fixed iterations) of the timing when the options leave
them out, per solver: a BCD sweep costs one full gradient per training sample."""


def timing_grid(options: argparse.Namespace) -> tuple[list[int], list[int], int]:
    """(--timing-iterations, --timing-features, --timing-fixed-iterations), each defaulting to
    :data:`TIMING_DEFAULTS` for --timing-solver."""
    iterations, features, fixed = TIMING_DEFAULTS[options.timing_solver]
    return (
        list(options.timing_iterations or iterations),
        list(options.timing_features or features),
        options.timing_fixed_iterations or fixed,
    )


def time_hypergradients(options: argparse.Namespace, data: dict) -> dict[str, Any]:
    """Hypergradient times of --timing-solver at λ = --lambda-init against the inner iterations (at
    --features) and against the number of features (at --timing-fixed-iterations)."""
    iterations, feature_counts, fixed = timing_grid(options)
    points = [(options.features, n) for n in iterations]
    points += [(p, fixed) for p in feature_counts]
    measured: dict[tuple[int, int], dict] = {}
    label = f"timing ({options.timing_solver})"
    for p, n in _common.progress(list(dict.fromkeys(points)), options, label):
        data_p = data if p == options.features else _data(options, features=p)
        measured[p, n] = _time_point(
            options.timing_solver, data_p, n, options.lambda_init, options.timing_repeats
        )

    def columns(keys: list[tuple[int, int]]) -> dict[str, list[float]]:
        names = measured[keys[0]].keys()
        return {name: [measured[key][name] for key in keys] for name in names}

    return {
        "solver": options.timing_solver,
        "lambda": options.lambda_init,
        "features": options.features,
        "iterations": iterations,
        "by_iterations": columns(points[: len(iterations)]),
        "fixed_iterations": fixed,
        "feature_counts": feature_counts,
        "by_features": columns(points[len(iterations) :]),
        "repeats": options.timing_repeats,
    }


def _data(options: argparse.Namespace, features: int | None = None) -> dict[str, jax.Array]:
    return make_data(
        options.samples,
        options.features if features is None else features,
        options.classes,
        options.seed,
    )


# ---------------------------------------------------------------------------------------------
# The command.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``implicitdiff svm-hyperopt``."""
    positive_int, positive_float = _common.positive_int, _common.positive_float
    parser.add_argument(
        "--solver",
        choices=SOLVERS,
        default="proximal-gradient",
        help="inner solver of the outer loop (default proximal-gradient)",
    )
    parser.add_argument(
        "--timing-solver",
        choices=SOLVERS,
        default="mirror-descent",
        help="inner solver of the timing (default mirror-descent: its iterations are cheap, "
        "which leaves the cost of the backward pass in view)",
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=700,
        help="samples, split in halves: training / validation (default 700)",
    )
    parser.add_argument("--features", type=positive_int, default=100, help="features (100)")
    parser.add_argument("--classes", type=positive_int, default=5, help="classes (default 5)")
    parser.add_argument(
        "--outer-steps", type=positive_int, default=20, help="gradient steps on λ (default 20)"
    )
    parser.add_argument(
        "--learning-rate",
        type=positive_float,
        default=1.0,
        help="step of the gradient descent on λ (default 1)",
    )
    parser.add_argument(
        "--lambda-init", type=float, default=-1.0, help="initial λ = log θ (default -1)"
    )
    parser.add_argument(
        "--inner-iterations",
        type=positive_int,
        default=5000,
        help="most inner iterations per outer step (default 5000)",
    )
    parser.add_argument(
        "--tol", type=positive_float, default=1e-8, help="inner tolerance (default 1e-8)"
    )
    parser.add_argument(
        "--timing-iterations",
        type=positive_int,
        nargs="+",
        default=None,
        help="inner iteration counts of the timing, at --features (default 100 400 1600; "
        "with --timing-solver bcd, whose sweep costs one gradient per sample, 5 20 80; the "
        "paper's grid: 100 200 400 800 1600)",
    )
    parser.add_argument(
        "--timing-features",
        type=positive_int,
        nargs="+",
        default=None,
        help="feature counts of the timing, at --timing-fixed-iterations (default 50 100 300 "
        "1000; bcd: 50 100 300; larger: 50 100 200 500 1000 2000)",
    )
    parser.add_argument(
        "--timing-fixed-iterations",
        type=positive_int,
        default=None,
        help="inner iterations of the timing against features (default 400; bcd: 20)",
    )
    parser.add_argument(
        "--timing-repeats", type=positive_int, default=5, help="timed calls per point (5)"
    )
    parser.add_argument("--no-timing", action="store_true", help="skip the timing")


def _check_options(options: argparse.Namespace) -> None:
    if options.classes < 2:
        raise ValueError(f"--classes must be ≥ 2, got {options.classes}")
    if options.samples < 4 * options.classes:
        raise ValueError(
            f"--samples must be ≥ 4 × --classes ({4 * options.classes}), got {options.samples}"
        )
    for flag, counts in (
        ("--features", [options.features]),
        ("--timing-features", timing_grid(options)[1]),
    ):
        for p in counts:
            if options.classes > 2 ** min(p, 20):
                raise ValueError(f"{flag} {p} is too few for {options.classes} classes")


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment (see the module docstring); returns the summary."""
    _check_options(options)
    optax = _common.require("optax")
    folder = _common.output_folder(options)
    data = _data(options)
    X_tr, Y_tr, X_val, Y_val = data["X_train"], data["Y_train"], data["X_val"], data["Y_val"]
    x0 = uniform_init(data)

    seconds = {}
    clock = time.perf_counter()
    # The checks at the initial λ; their reference solve also gives the starting accuracy.
    reference = reference_function(data, 50 * options.inner_iterations)
    checks = check_hypergradients(data, options.lambda_init, options.inner_iterations, reference)
    x_start = checks.pop("x_ref")
    accuracy_start = validation_accuracy(
        x_start, math.exp(options.lambda_init), X_tr, Y_tr, X_val, Y_val
    )

    # The outer loop.
    solver = make_solver(options.solver, X_tr, tol=options.tol, maxiter=options.inner_iterations)

    def outer_loss(x, lam):
        return validation_loss(x, jnp.exp(lam), X_tr, Y_tr, X_val, Y_val)

    def inner_solve(x_init, lam):
        return solver.run(x_init, 1.0, jnp.exp(lam), X_tr, Y_tr)

    seconds["checks"] = time.perf_counter() - clock
    clock = time.perf_counter()
    result = bilevel.minimize(
        outer_loss,
        inner_solve,
        jnp.asarray(options.lambda_init, X_tr.dtype),
        x0,
        optax.sgd(options.learning_rate),
        options.outer_steps,
        progress=_common.show_progress(options, "outer steps"),
    )
    seconds["outer_loop"] = time.perf_counter() - clock
    history = dict(result.history)
    # The loss at the final λ (the history holds the losses before each update).
    (loss_end, (x_end, _)), grad_end = reference(result.hyperparams, result.inner_params, data)
    lam_end = float(result.hyperparams)
    accuracy_end = validation_accuracy(x_end, math.exp(lam_end), X_tr, Y_tr, X_val, Y_val)

    clock = time.perf_counter()
    timing = None if options.no_timing else time_hypergradients(options, data)
    if timing is not None:
        # Same data and λ as the checks: the error of each hypergradient after n iterations.
        exact = checks["finite_difference"]
        for method in ("implicit", "unrolled"):
            values = np.asarray(timing["by_iterations"][f"hypergradient_{method}"])
            timing["by_iterations"][f"relative_error_{method}"] = list(
                np.abs(values - exact) / abs(exact)
            )
    seconds["timing"] = time.perf_counter() - clock

    files = [folder / "results.json", _plot_validation_loss(folder, history, float(loss_end))]
    if timing is not None:
        files.append(_plot_timing(folder, timing))
    files.append(_plot_summary(folder, history, float(loss_end), timing))
    summary = {
        "solver": options.solver,
        "samples": options.samples,
        "features": options.features,
        "classes": options.classes,
        "n_train": int(X_tr.shape[0]),
        "n_val": int(X_val.shape[0]),
        "outer_steps": len(history["outer_loss"]),
        "lambda_start": float(options.lambda_init),
        "lambda_end": lam_end,
        "loss_start": float(history["outer_loss"][0]),
        "loss_end": float(loss_end),
        "grad_end": float(grad_end),
        "tol": options.tol,
        "accuracy_start": accuracy_start,
        "accuracy_end": accuracy_end,
        "history": history,
        "seconds": seconds,
        "checks": checks,
        "timing": timing,
        "files": files,
    }
    summary["table"] = _table(summary)
    settings = {k: v for k, v in vars(options).items() if not k.startswith("_")}
    _common.write_json(folder / "results.json", {**summary, "options": settings})
    return summary


# ---------------------------------------------------------------------------------------------
# Table and figures.


def _table(summary: dict) -> str:
    checks, timing = summary["checks"], summary["timing"]
    outer = _common.format_table(
        ["outer loop", "start", "end"],
        [
            ["λ = log θ", summary["lambda_start"], summary["lambda_end"]],
            ["validation loss", summary["loss_start"], summary["loss_end"]],
            ["validation accuracy", summary["accuracy_start"], summary["accuracy_end"]],
        ],
    )
    history = summary["history"]
    outer += (
        f"\ninner solves: {int(np.sum(history['inner_converged']))} of "
        f"{len(history['inner_converged'])} converged (tol {summary['tol']:g}), "
        f"{np.mean(history['inner_iterations']):.0f} iterations on average; outer loop "
        f"{summary['seconds']['outer_loop']:.1f} s"
    )
    head = (
        f"svm-hyperopt: {summary['solver']}, {summary['outer_steps']} gradient steps on λ, "
        f"{summary['n_train']} training / {summary['n_val']} validation samples, "
        f"{summary['features']} features, {summary['classes']} classes"
    )
    rows = [
        [
            name,
            f"{g:.10g}",
            f"{checks['relative_error_vs_fd'][name]:.1e}",
            f"{checks['iterations'][name]} ({'' if checks['converged'][name] else 'not '}"
            "converged)",
        ]
        for name, g in checks["hypergradients"].items()
    ]
    rows.append(["finite differences", f"{checks['finite_difference']:.10g}", "-", "-"])
    agreement = _common.format_table(
        [f"dL/dλ at λ = {checks['lambda']:g}", "value", "rel. vs FD", "iterations"], rows
    )
    agreement += (
        "\n(proximal gradient from the uniform point; the others from its solution, each to its "
        "own tolerance, through its own fixed point)"
    )
    agreement += (
        f"\nlargest relative difference between solvers: {checks['max_relative_difference']:.1e}"
    )
    parts = [head, outer, agreement]
    if timing is not None:
        rows = []
        for label, key, grid in (
            ("iterations", "by_iterations", timing["iterations"]),
            ("features", "by_features", timing["feature_counts"]),
        ):
            t = timing[key]
            for i, value in enumerate(grid):
                errors = [
                    f"{t[f'relative_error_{method}'][i]:.1e}"
                    if f"relative_error_{method}" in t
                    else "-"
                    for method in ("implicit", "unrolled")
                ]
                rows.append(
                    [
                        f"{label} = {value}",
                        f"{t['forward'][i]:.3f}",
                        f"{t['implicit'][i]:.3f}",
                        f"{t['unrolled'][i]:.3f}",
                        f"{t['unrolled'][i] / t['implicit'][i]:.2f}",
                        f"{t['implicit_backward'][i]:.3f}",
                        f"{t['unrolled_backward'][i]:.3f}",
                        *errors,
                    ]
                )
        headers = [
            *("", "forward", "implicit", "unrolled", "speed-up", "bwd impl.", "bwd unr."),
            *("err impl.", "err unr."),
        ]
        parts.append(
            f"hypergradient time (s), {timing['solver']} at λ = {timing['lambda']:g}: by "
            f"iterations at {timing['features']} features, by features at "
            f"{timing['fixed_iterations']} iterations (speed-up = unrolled / implicit; "
            "bwd = hypergradient − forward; err = relative error of dL/dλ against the finite "
            "difference)\n" + _common.format_table(headers, rows)
        )
    return "\n\n".join(parts)


def _draw_loss(axis: Any, history: dict, loss_end: float) -> None:
    losses = np.append(history["outer_loss"], loss_end)
    axis.plot(np.arange(len(losses)), losses, marker="o", markersize=3)
    axis.set_xlabel("outer step")
    axis.xaxis.set_major_locator(_common.require("matplotlib.ticker").MaxNLocator(integer=True))
    axis.set_ylabel("validation loss")
    axis.set_title("Validation loss, gradient descent on λ = log θ")
    axis.grid(alpha=0.3)


def _draw_timing(axis: Any, grid: list, times: dict, xlabel: str, title: str) -> None:
    floor = 1e-4  # a backward time (a difference of medians) can be ≤ 0 at tiny sizes
    for method, marker, color in (("implicit", "o", "C0"), ("unrolled", "s", "C1")):
        axis.plot(grid, times[method], marker=marker, color=color, label=f"{method}")
        backward = np.maximum(np.asarray(times[f"{method}_backward"]), floor)
        axis.plot(
            grid, backward, marker=marker, color=color, linestyle="--", label=f"{method}, backward"
        )
    axis.set_xlabel(xlabel)
    axis.set_ylabel("hypergradient time (s)")
    axis.set_title(title)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize="small")


def _plot_validation_loss(folder, history: dict, loss_end: float):
    plt = _common.pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    _draw_loss(axis, history, loss_end)
    return _common.save_figure(figure, folder / "validation_loss.png")


def _plot_timing(folder, timing: dict):
    plt = _common.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    _draw_timing(
        axes[0],
        timing["iterations"],
        timing["by_iterations"],
        "inner iterations",
        f"{timing['solver']}, {timing['features']} features",
    )
    _draw_timing(
        axes[1],
        timing["feature_counts"],
        timing["by_features"],
        "features",
        f"{timing['solver']}, {timing['fixed_iterations']} iterations",
    )
    return _common.save_figure(figure, folder / "timing.png")


def _plot_summary(folder, history: dict, loss_end: float, timing: dict | None):
    plt = _common.pyplot()
    panels = 1 if timing is None else 3
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), squeeze=False)
    _draw_loss(axes[0, 0], history, loss_end)
    if timing is not None:
        _draw_timing(
            axes[0, 1],
            timing["iterations"],
            timing["by_iterations"],
            "inner iterations",
            f"Hypergradient ({timing['solver']}), {timing['features']} features",
        )
        _draw_timing(
            axes[0, 2],
            timing["feature_counts"],
            timing["by_features"],
            "features",
            f"Hypergradient ({timing['solver']}), {timing['fixed_iterations']} iterations",
        )
    return _common.save_figure(figure, folder / "svm_hyperopt.png")
