"""Dataset distillation on scikit-learn's digits (paper §4.2): one learned image per class.

Problem. θ holds one synthetic 8×8 image per class (10 × 64 pixels). A multiclass logistic
regression (W, b) is trained on those ten images only, and θ is learned so that this regression
does well on the real digits:

    min_θ  L(θ) = (1/n) Σᵢ ℓ(yᵢ, W*(θ)ᵀxᵢ + b*(θ))                (n real training images)
    (W*, b*)(θ) = argmin_{W,b} (1/10) Σ_c ℓ(c, Wᵀθ_c + b) + (λ/2)‖W‖²_F,

ℓ the multiclass logistic loss, λ = --l2 (1e-2). The inner problem is solved by gradient descent
with Armijo backtracking (or LBFGS, --solver) to ‖∇f‖ ≤ --inner-tol (1e-6) and differentiated
implicitly through ∇_{W,b} f = 0 (the Hessian is singular along b ↦ b + c·1, which leaves the
softmax unchanged; the linear system is consistent and CG solves it); the outer loop is Adam
(--learning-rate 0.05) on L, each inner solve warm-started from the previous one
(implicitdiff.bilevel.minimize). The images start as N(0, 0.1²) noise. Pixels are scaled to
[0, 1]; the data are split 70/30 (stratified) into training and test sets.

Measures. Test accuracy of the regression trained on the 10 distilled images, against the same
regression trained on real training images drawn at random (1 per class and 10 per class, mean ±
std over --baseline-draws draws) and on the whole training set. The time of one outer step's
hypergradient at the initial and at the learned θ (from a cold start; medians of
--timing-repeats interleaved calls): implicit differentiation against unrolling the same solver
(implicit_diff=False) for a fixed number of iterations (--unroll-iterations 100 500), each
hypergradient's relative error measured against a reference (LBFGS to ‖∇f‖ ≤ 1e-10, implicit;
itself checked against central finite differences along a random direction).

Output: results.json, distilled_images.png (the 10 images) and outer_loss.png (L over the outer
steps). Default: 200 outer steps, about a minute on 2 CPU cores (float64), most of it compiling.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import bilevel, losses
from implicitdiff.experiments import _common
from implicitdiff.solvers import LBFGS, GradientDescent

NAME = "distillation"
HELP = "§4.2: dataset distillation on digits, one learned image per class"

NUM_CLASSES = 10
SOLVERS = ("lbfgs", "gradient-descent")
REFERENCE_TOL = 1e-10
"""‖∇f‖ at which the reference hypergradient's inner problem is solved (LBFGS)."""
FD_STEP = 1e-3
"""h of the central difference (L(θ + hd) − L(θ − hd)) / 2h that checks the reference."""


# ---------------------------------------------------------------------------------------------
# The model.


def logistic_objective(params: tuple[jax.Array, jax.Array], X: jax.Array, Y: jax.Array, l2: Any):
    """f(W, b) = Σᵢ ℓ(Yᵢ, Wᵀxᵢ + b) / Σᵢⱼ Yᵢⱼ + (λ/2)‖W‖²_F, the inner objective.

    ``params`` = (W (p, k), b (k,)); X is (n, p); Y (n, k) holds one-hot labels (then the first
    term is the mean loss over the n samples; a zero row drops a sample); ℓ is
    :func:`implicitdiff.losses.multiclass_logistic_loss`, ℓ(y, z) = logsumexp(z)·Σⱼyⱼ − ⟨y, z⟩.
    """
    W, b = params
    data = jnp.sum(losses.multiclass_logistic_loss(Y, X @ W + b)) / jnp.sum(Y)
    return data + 0.5 * l2 * jnp.sum(W**2)


def make_solver(
    name: str, *, tol: float, maxiter: int, implicit_diff: bool = True
) -> LBFGS | GradientDescent:
    """The inner solver of :func:`logistic_objective`: ``"lbfgs"`` or ``"gradient-descent"``
    (Armijo backtracking), stopping at ‖∇f‖ ≤ tol or after maxiter iterations."""
    if name == "lbfgs":
        return LBFGS(fun=logistic_objective, tol=tol, maxiter=maxiter, implicit_diff=implicit_diff)
    if name == "gradient-descent":
        return GradientDescent(
            fun=logistic_objective, tol=tol, maxiter=maxiter, implicit_diff=implicit_diff
        )
    raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}")


def zero_params(num_features: int, num_classes: int, dtype: Any = None) -> tuple:
    """(W, b) = (0, 0): the cold start of the inner problem."""
    dtype = dtype or jnp.result_type(float)
    return jnp.zeros((num_features, num_classes), dtype), jnp.zeros(num_classes, dtype)


def distillation_loss(
    images: jax.Array,
    solver: Any,
    X_train: jax.Array,
    Y_train: jax.Array,
    l2: Any,
    init: tuple | None = None,
) -> jax.Array:
    """L(θ) = (1/n) Σᵢ ℓ(yᵢ, W*(θ)ᵀxᵢ + b*(θ)), with (W*, b*) the regression trained on the
    images θ (row c has label c) by ``solver``, from ``init`` (default zeros).

    Differentiable in θ as the solver is (implicitly, or by unrolling).
    """
    num_classes = Y_train.shape[1]
    if init is None:
        init = zero_params(images.shape[1], num_classes, images.dtype)
    labels = jnp.eye(num_classes, dtype=images.dtype)
    params = solver.run(init, images, labels, l2).params
    return logistic_objective(params, X_train, Y_train, 0.0)


def accuracy(params: tuple[jax.Array, jax.Array], X: jax.Array, y: jax.Array) -> jax.Array:
    """The fraction of samples whose predicted class argmax_c (Wᵀx + b)_c equals the label."""
    W, b = params
    return jnp.mean(jnp.argmax(X @ W + b, axis=-1) == y)


def load_data(test_size: float, seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's digits, pixels / 16 in [0, 1], split stratified into train and test."""
    datasets = _common.require("sklearn.datasets")
    model_selection = _common.require("sklearn.model_selection")
    X, y = datasets.load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = model_selection.train_test_split(
        X / 16.0, y, test_size=test_size, stratify=y, random_state=seed
    )
    return {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test}


def random_real_sets(y: np.ndarray, per_class: int, draws: int, seed: int) -> np.ndarray:
    """Indices (draws, per_class · k) of ``per_class`` random samples of each class, per draw."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    return np.stack(
        [
            np.concatenate(
                [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in classes]
            )
            for _ in range(draws)
        ]
    )


# ---------------------------------------------------------------------------------------------
# The command.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``implicitdiff distillation``."""
    positive_int, positive_float = _common.positive_int, _common.positive_float
    parser.add_argument(
        "--steps", type=positive_int, default=200, help="outer (Adam) steps (default 200)"
    )
    parser.add_argument(
        "--learning-rate", type=positive_float, default=0.05, help="Adam's step (default 0.05)"
    )
    parser.add_argument(
        "--l2", type=positive_float, default=1e-2, help="λ of the inner (λ/2)‖W‖² (default 1e-2)"
    )
    parser.add_argument(
        "--solver",
        choices=SOLVERS,
        default="gradient-descent",
        help="inner solver (default gradient-descent)",
    )
    parser.add_argument(
        "--inner-tol", type=positive_float, default=1e-6, help="inner ‖∇f‖ tolerance (1e-6)"
    )
    parser.add_argument(
        "--inner-maxiter", type=positive_int, default=500, help="most inner iterations (500)"
    )
    parser.add_argument(
        "--unroll-iterations",
        type=positive_int,
        nargs="+",
        default=[100, 500],
        help="iteration counts of the unrolled hypergradients timed (default 100 500)",
    )
    parser.add_argument(
        "--timing-repeats", type=positive_int, default=5, help="timed calls per method (5)"
    )
    parser.add_argument(
        "--baseline-draws",
        type=positive_int,
        default=10,
        help="random draws of real images per baseline (default 10)",
    )
    parser.add_argument(
        "--test-size", type=float, default=0.3, help="test fraction of the data (default 0.3)"
    )


def _fit_many(solver: Any, init: tuple, l2: float, X_test, y_test) -> Callable:
    """jit(vmap): (image sets (m, s, p), one-hot labels (m, s, k)) ↦ (test accuracies,
    converged flags) of the regressions trained on each set."""

    def fit_one(X, Y):
        params, state = solver.run(init, X, Y, l2)
        return accuracy(params, X_test, y_test), state.converged

    return jax.jit(jax.vmap(fit_one))


def _interleaved_medians(functions: dict[str, Callable], repeats: int, options) -> dict:
    """Median wall time of each ``functions[name](),`` the calls interleaved (one round calls
    each once), after one compiling call each."""
    for fun in functions.values():
        jax.block_until_ready(fun())
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in _common.progress(range(repeats), options, "timing"):
        for name, fun in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(fun())
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def run(options: argparse.Namespace) -> dict:
    """Distill the digits, evaluate against real images, time implicit against unrolled."""
    optax = _common.require("optax")
    if not 0 < options.test_size < 1:
        raise ValueError(f"--test-size must be in (0, 1), got {options.test_size}")
    folder = _common.output_folder(options)
    data = load_data(options.test_size, options.seed)
    X_train, X_test = jnp.asarray(data["X_train"]), jnp.asarray(data["X_test"])
    y_train, y_test = data["y_train"], jnp.asarray(data["y_test"])
    Y_train = jax.nn.one_hot(y_train, NUM_CLASSES, dtype=X_train.dtype)
    num_features = X_train.shape[1]
    l2 = options.l2
    init = zero_params(num_features, NUM_CLASSES, X_train.dtype)
    labels = jnp.eye(NUM_CLASSES, dtype=X_train.dtype)

    # -- distillation: Adam on θ, the inner regression solved and differentiated implicitly.
    solver = make_solver(options.solver, tol=options.inner_tol, maxiter=options.inner_maxiter)
    key = jax.random.PRNGKey(options.seed)
    images0 = 0.1 * jax.random.normal(key, (NUM_CLASSES, num_features), X_train.dtype)
    start = time.perf_counter()
    result = bilevel.minimize(
        lambda params, images: logistic_objective(params, X_train, Y_train, 0.0),
        lambda params, images: solver.run(params, images, labels, l2),
        images0,
        init,
        optax.adam(options.learning_rate),
        options.steps,
        progress=_common.show_progress(options, "distillation"),
    )
    distill_seconds = time.perf_counter() - start
    images = result.hyperparams
    history = result.history
    step_times = np.diff(history["time"])  # the first step (compilation) left out

    # -- test accuracy: distilled vs random real images vs the whole training set.
    fit = _fit_many(solver, init, l2, X_test, y_test)
    one = random_real_sets(y_train, 1, options.baseline_draws, options.seed + 1)
    ten = random_real_sets(y_train, 10, options.baseline_draws, options.seed + 2)
    # One batch, one compilation: every set of 10 images is padded to 100 rows with rows of
    # zero labels, which the objective's weighted mean leaves out.
    pad = 10 * NUM_CLASSES - NUM_CLASSES
    small_X = jnp.concatenate([images[None], X_train[one]])
    small_Y = jnp.concatenate([labels[None], Y_train[one]])
    small_X, small_Y = (jnp.pad(a, ((0, 0), (0, pad), (0, 0))) for a in (small_X, small_Y))
    acc, conv = fit(
        jnp.concatenate([small_X, X_train[ten]]), jnp.concatenate([small_Y, Y_train[ten]])
    )
    acc_full, conv_full = fit(X_train[None], Y_train[None])
    acc = np.asarray(acc)
    acc_small, acc_ten = acc[: 1 + len(one)], acc[1 + len(one) :]
    all_converged = bool(np.all(conv) & np.all(conv_full))
    accuracies = {
        "distilled": float(acc_small[0]),
        "random_1_per_class": acc_small[1:],
        "random_10_per_class": acc_ten,
        "whole_training_set": float(acc_full[0]),
    }

    # -- hypergradients from a cold start, at the initial and at the learned θ: the time of one
    # outer step and the error, implicit against unrolled, against a tight reference.
    def hypergradient(inner_solver):
        def loss(theta):
            params, state = inner_solver.run(init, theta, labels, l2)
            return logistic_objective(params, X_train, Y_train, 0.0), state

        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    reference_solver = make_solver("lbfgs", tol=REFERENCE_TOL, maxiter=10 * options.inner_maxiter)
    reference_fun = hypergradient(reference_solver)
    methods = {"implicit": solver}
    for count in options.unroll_iterations:
        methods[f"unrolled ({count} it.)"] = make_solver(
            options.solver, tol=0.0, maxiter=count, implicit_diff=False
        )
    functions = {name: hypergradient(s) for name, s in methods.items()}
    direction = jax.random.normal(jax.random.fold_in(key, 1), images.shape, images.dtype)
    direction = direction / jnp.linalg.norm(direction)
    timing: dict[str, dict] = {}
    reference_fd_error, reference_losses, reference_converged = {}, {}, {}
    for point, theta in (("initial", images0), ("learned", images)):
        (reference_loss, reference_state), reference = reference_fun(theta)
        reference_converged[point] = bool(reference_state.converged)
        # The reference against central differences of L along a random unit direction.
        (plus, _), _ = reference_fun(theta + FD_STEP * direction)
        (minus, _), _ = reference_fun(theta - FD_STEP * direction)
        fd = float(plus - minus) / (2 * FD_STEP)
        reference_fd_error[point] = abs(float(jnp.vdot(reference, direction)) - fd) / abs(fd)
        seconds = _interleaved_medians(
            {name: (lambda f=f, theta=theta: f(theta)) for name, f in functions.items()},
            options.timing_repeats,
            options,
        )
        reference_losses[point] = float(reference_loss)
        timing[point] = {}
        for name, fun in functions.items():
            (_, state), grad = fun(theta)
            timing[point][name] = {
                "iterations": int(state.iter_num),
                "seconds": seconds[name],
                "ratio_to_implicit": seconds[name] / seconds["implicit"],
                "relative_error": _common.relative_error(grad, reference),
            }

    # -- figures, JSON, table.
    plt = _common.pyplot()
    figure, axes = plt.subplots(2, NUM_CLASSES // 2, figsize=(7.5, 3.4))
    for c, ax in enumerate(axes.ravel()):
        ax.imshow(np.asarray(images[c]).reshape(8, 8), cmap="gray_r", interpolation="nearest")
        ax.set_title(str(c))
        ax.set_axis_off()
    figure.suptitle(f"Distilled digits: test accuracy {accuracies['distilled']:.3f}")
    images_png = _common.save_figure(figure, folder / "distilled_images.png")

    figure, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(np.arange(1, len(history["outer_loss"]) + 1), history["outer_loss"])
    ax.set_xlabel("outer step")
    ax.set_ylabel("training loss L(θ)")
    ax.set_yscale("log")
    ax.set_title("Logistic loss on the real training set")
    loss_png = _common.save_figure(figure, folder / "outer_loss.png")

    def mean_std(values):
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    n_train = int(X_train.shape[0])
    accuracy_table = _common.format_table(
        ["training set", "images", "test accuracy"],
        [
            ["distilled (learned)", NUM_CLASSES, f"{accuracies['distilled']:.3f}"],
            ["random real, 1 per class", NUM_CLASSES, mean_std(accuracies["random_1_per_class"])],
            [
                "random real, 10 per class",
                10 * NUM_CLASSES,
                mean_std(accuracies["random_10_per_class"]),
            ],
            ["whole training set", n_train, f"{accuracies['whole_training_set']:.3f}"],
        ],
    )
    timing_rows = [
        [
            point,
            name,
            t["iterations"],
            t["seconds"],
            f"{t['ratio_to_implicit']:.2f}",
            f"{t['relative_error']:.1e}",
        ]
        for point, entries in timing.items()
        for name, t in entries.items()
    ]
    timing_table = _common.format_table(
        ["θ", "hypergradient", "inner iterations", "time (s)", "× implicit", "rel. error"],
        timing_rows,
    )
    final_loss = reference_losses["learned"]
    fd_text = ", ".join(f"{e:.1e} at the {p} θ" for p, e in reference_fd_error.items())
    median_step = float(np.median(step_times)) if step_times.size else float("nan")
    table = "\n".join(
        [
            accuracy_table,
            "",
            f"one outer step's hypergradient from a cold start ({options.solver}, median of "
            f"{options.timing_repeats}); rel. error against a reference (LBFGS to ‖∇f‖ ≤ "
            f"{REFERENCE_TOL:g}, implicit; it matches central differences to {fd_text})",
            timing_table,
            "",
            f"distillation: {options.steps} outer steps in {distill_seconds:.1f} s (median "
            f"{median_step:.3g} s per warm-started step); training loss "
            f"{history['outer_loss'][0]:.3f} → {final_loss:.3f}",
        ]
    )
    summary = {
        "test_accuracy": accuracies["distilled"],
        "accuracies": accuracies,
        "baselines_converged": all_converged,
        "outer_loss": history["outer_loss"],
        "final_outer_loss": final_loss,
        "inner_converged": history.get("inner_converged"),
        "inner_iterations": history.get("inner_iterations"),
        "distill_seconds": distill_seconds,
        "median_step_seconds": median_step,
        "timing": timing,
        "reference_fd_relative_error": reference_fd_error,
        "reference_converged": reference_converged,
        "images": images,
        "options": {
            k: v for k, v in vars(options).items() if not k.startswith("_") and k != "output"
        },
    }
    json_path = _common.write_json(folder / "results.json", summary)
    summary["files"] = [json_path, images_png, loss_png]
    summary["table"] = table
    return summary
