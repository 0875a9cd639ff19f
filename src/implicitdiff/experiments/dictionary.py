"""Task-driven dictionary learning (paper §4.3): a dictionary learned for a classifier.

Problem. Each sample x ∈ ℝᵖ is coded on a dictionary D ∈ ℝ^{p×k} of unit-norm atoms (D = V / ‖V‖
column by column, so that V is free) by the elastic net

    z*(D, x) = argmin_z ½‖x − Dz‖² + λ₁‖z‖₁ + (λ₂/2)‖z‖²,

solved for all samples at once (the rows of Z, a separable problem) by ProximalGradient (FISTA)
with prox.elastic_net, and differentiated implicitly through its proximal-gradient fixed point. A
logistic regression (w, b) reads the codes; (V, w, b) are learned jointly by Adam on the task loss

    L(V, w, b) = (1/n) Σᵢ log(1 + exp(−ỹᵢ (wᵀz*(D, xᵢ) + b))) + (μ/2)‖w‖²,   ỹᵢ = ±1,

through implicitdiff.bilevel.minimize (each coding warm-started from the previous codes). The
dictionary starts from the unsupervised one below, and (w, b) from its regression.

Baselines. An unsupervised dictionary (scikit-learn's DictionaryLearning, alpha = λ₁, same k),
codes by the same elastic net, then the same regularized logistic regression; and the logistic
regression on the raw features. Regressions are fitted by LBFGS.

Data. scikit-learn's breast-cancer set (569 samples, 30 features), and a synthetic set of the
same shape drawn from a sparse dictionary model: x = D₀z + 0.1·noise with 3 active atoms of 50
(overcomplete: z is not a linear function of x), the label 1[⟨u, z⟩ + 0.3·noise > 0] with u
nonzero on half of the atoms. Each set is split 70/30 (stratified) and standardized with the
training statistics. Defaults: k = 20 atoms, λ₁ = 0.5, λ₂ = 0.1, μ = 0.1.

Measures. Test AUC (roc_auc_score) of the three methods on both sets and their training task
loss L; figure: the training task loss over the outer steps against the baselines' (PNG). A
lower training loss need not give a higher held-out AUC (the dictionary adds p·k parameters
fitted on a few hundred samples): the run reports what it measures. Default: 200 outer steps
per set, about a minute on 2 CPU cores (float64), most of it compiling.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import bilevel, losses, prox
from implicitdiff.experiments import _common
from implicitdiff.solvers import LBFGS, ProximalGradient

NAME = "dictionary"
HELP = "§4.3: task-driven dictionary learning (elastic-net codes + logistic regression)"

DATASETS = ("breast-cancer", "synthetic")
METHODS = (
    "logistic regression (raw features)",
    "unsupervised dictionary",
    "task-driven dictionary",
)


# ---------------------------------------------------------------------------------------------
# The model.


def normalize_atoms(V: jax.Array) -> jax.Array:
    """D = V / ‖V‖ column by column: a dictionary of unit-norm atoms (the columns)."""
    return V / jnp.linalg.norm(V, axis=0, keepdims=True)


def coding_objective(Z: jax.Array, D: jax.Array, X: jax.Array) -> jax.Array:
    """½‖X − Z Dᵀ‖²_F = Σᵢ ½‖xᵢ − D zᵢ‖², the smooth part of the coding of the rows xᵢ of X."""
    return 0.5 * jnp.sum((X - Z @ D.T) ** 2)


def make_coder(*, tol: float, maxiter: int, implicit_diff: bool = True) -> ProximalGradient:
    """FISTA on :func:`coding_objective` + λ₁‖Z‖₁ + (λ₂/2)‖Z‖²_F (prox.elastic_net), to a
    gradient mapping ‖Z⁺ − Y‖/η ≤ tol; implicit differentiation through its fixed point."""
    return ProximalGradient(
        fun=coding_objective,
        prox=prox.elastic_net,
        tol=tol,
        maxiter=maxiter,
        implicit_diff=implicit_diff,
    )


def encode(
    coder: ProximalGradient,
    D: jax.Array,
    X: jax.Array,
    lam1: Any,
    lam2: Any,
    init: jax.Array | None = None,
):
    """The codes Z* (n, k), row i = argmin_z ½‖xᵢ − Dz‖² + λ₁‖z‖₁ + (λ₂/2)‖z‖², and the state.

    prox.elastic_net takes g = λ(‖z‖₁ + ½γ‖z‖²): λ = λ₁, γ = λ₂/λ₁ (λ₁ > 0).
    """
    if init is None:
        init = jnp.zeros((X.shape[0], D.shape[1]), X.dtype)
    return coder.run(init, (lam1, lam2 / lam1), D, X)


def classifier_loss(params: tuple[jax.Array, jax.Array], F: jax.Array, y: jax.Array, l2: Any):
    """(1/n) Σᵢ ℓ(yᵢ, wᵀfᵢ + b) + (μ/2)‖w‖², ℓ the binary logistic loss
    (:func:`implicitdiff.losses.binary_logistic_loss`, y ∈ {0, 1}); ``params`` = (w, b), the
    features F are (n, d)."""
    w, b = params
    return jnp.mean(losses.binary_logistic_loss(y, F @ w + b)) + 0.5 * l2 * jnp.sum(w**2)


def task_loss(
    Z: jax.Array, theta: tuple[jax.Array, jax.Array, jax.Array], y: jax.Array, l2: Any
) -> jax.Array:
    """The outer loss L = :func:`classifier_loss` of the codes Z, with θ = (V, w, b)."""
    _, w, b = theta
    return classifier_loss((w, b), Z, y, l2)


def task_loss_of_dictionary(
    theta: tuple[jax.Array, jax.Array, jax.Array],
    coder: ProximalGradient,
    X: jax.Array,
    y: jax.Array,
    lam1: Any,
    lam2: Any,
    l2: Any,
) -> jax.Array:
    """L(V, w, b) with the codes z*(V/‖V‖, xᵢ) solved by ``coder`` from zero: the bilevel
    objective as one function of θ (for checks; the outer loop warm-starts instead)."""
    Z = encode(coder, normalize_atoms(theta[0]), X, lam1, lam2).params
    return task_loss(Z, theta, y, l2)


def fit_classifier(F: jax.Array, y: jax.Array, l2: Any, tol: float = 1e-9):
    """(w, b) = argmin :func:`classifier_loss` by LBFGS (to ‖∇‖ ≤ tol), and the solver state."""
    solver = _classifier_solver(tol)
    init = (jnp.zeros(F.shape[1], F.dtype), jnp.zeros((), F.dtype))
    return solver.run(init, F, y, l2)


_CLASSIFIER_SOLVERS: dict[float, LBFGS] = {}


def _classifier_solver(tol: float) -> LBFGS:
    """One LBFGS per tolerance, so that its compiled runs are reused."""
    if tol not in _CLASSIFIER_SOLVERS:
        _CLASSIFIER_SOLVERS[tol] = LBFGS(fun=classifier_loss, tol=tol, maxiter=2000)
    return _CLASSIFIER_SOLVERS[tol]


# ---------------------------------------------------------------------------------------------
# Data.


def sparse_dictionary_data(
    num_samples: int,
    num_features: int,
    num_atoms: int = 50,
    active: int = 3,
    noise: float = 0.1,
    label_noise: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of a sparse dictionary model and labels that depend on the codes.

    D₀ (p, K) has unit-norm Gaussian atoms; each code z has ``active`` nonzero entries at random
    places, N(0, 1); x = D₀z + ``noise``·ε; the label is 1[⟨u, z⟩ + ``label_noise``·ε' > 0], u
    nonzero (±1) on half of the atoms only, so that only some atoms matter for the task.
    """
    rng = np.random.default_rng(seed)
    D0 = rng.standard_normal((num_features, num_atoms))
    D0 /= np.linalg.norm(D0, axis=0)
    Z = np.zeros((num_samples, num_atoms))
    for i in range(num_samples):  # data generation, once: not a hot loop
        support = rng.choice(num_atoms, active, replace=False)
        Z[i, support] = rng.standard_normal(active)
    u = np.zeros(num_atoms)
    relevant = rng.choice(num_atoms, max(1, num_atoms // 2), replace=False)
    u[relevant] = rng.choice([-1.0, 1.0], relevant.size)
    X = Z @ D0.T + noise * rng.standard_normal((num_samples, num_features))
    y = (Z @ u + label_noise * rng.standard_normal(num_samples) > 0).astype(float)
    return X, y


def load_dataset(name: str, test_size: float, seed: int) -> dict[str, np.ndarray]:
    """``"breast-cancer"`` (scikit-learn) or ``"synthetic"`` (:func:`sparse_dictionary_data`,
    shaped like breast-cancer), split stratified, standardized with the training statistics."""
    datasets = _common.require("sklearn.datasets")
    model_selection = _common.require("sklearn.model_selection")
    if name == "breast-cancer":
        X, y = datasets.load_breast_cancer(return_X_y=True)
        y = y.astype(float)
    elif name == "synthetic":
        X, y = sparse_dictionary_data(569, 30, seed=seed)
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    X_train, X_test, y_train, y_test = model_selection.train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=seed
    )
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return {
        "X_train": (X_train - mean) / std,
        "y_train": y_train,
        "X_test": (X_test - mean) / std,
        "y_test": y_test,
    }


# ---------------------------------------------------------------------------------------------
# The command.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``implicitdiff dictionary``."""
    positive_int, positive_float = _common.positive_int, _common.positive_float
    parser.add_argument(
        "--datasets",
        choices=DATASETS,
        nargs="+",
        default=list(DATASETS),
        help="data sets to run (default both)",
    )
    parser.add_argument("--atoms", type=positive_int, default=20, help="k atoms (default 20)")
    parser.add_argument(
        "--lambda1", type=positive_float, default=0.5, help="λ₁ of the codes' ℓ1 (default 0.5)"
    )
    parser.add_argument(
        "--lambda2", type=positive_float, default=0.1, help="λ₂ of the codes' ℓ2 (default 0.1)"
    )
    parser.add_argument(
        "--l2", type=positive_float, default=0.1, help="μ of the regression's ℓ2 (default 0.1)"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=200, help="outer (Adam) steps per set (200)"
    )
    parser.add_argument(
        "--learning-rate", type=positive_float, default=0.01, help="Adam's step (default 0.01)"
    )
    parser.add_argument(
        "--coding-tol",
        type=positive_float,
        default=1e-6,
        help="the codes' gradient-mapping tolerance (default 1e-6)",
    )
    parser.add_argument(
        "--coding-maxiter", type=positive_int, default=1000, help="most FISTA iterations (1000)"
    )
    parser.add_argument(
        "--dictionary-iterations",
        type=positive_int,
        default=100,
        help="iterations of scikit-learn's DictionaryLearning (default 100)",
    )
    parser.add_argument(
        "--test-size", type=float, default=0.3, help="test fraction of the data (default 0.3)"
    )


def _auc(scores: jax.Array, y: np.ndarray) -> float:
    metrics = _common.require("sklearn.metrics")
    return float(metrics.roc_auc_score(y, np.asarray(scores)))


def _run_dataset(name: str, options: argparse.Namespace, optax: Any) -> dict:
    """The three methods on one data set: AUCs, training losses, the task-driven history."""
    decomposition = _common.require("sklearn.decomposition")
    data = load_dataset(name, options.test_size, options.seed)
    X_train, X_test = jnp.asarray(data["X_train"]), jnp.asarray(data["X_test"])
    y_train, y_test = jnp.asarray(data["y_train"]), data["y_test"]
    lam1, lam2, l2 = options.lambda1, options.lambda2, options.l2
    coder = make_coder(tol=options.coding_tol, maxiter=options.coding_maxiter)
    out: dict[str, Any] = {"train_size": int(X_train.shape[0]), "test_size": len(y_test)}

    # Plain logistic regression on the raw features.
    (w, b), state = fit_classifier(X_train, y_train, l2)
    raw = {
        "train_loss": float(classifier_loss((w, b), X_train, y_train, l2)),
        "test_auc": _auc(X_test @ w + b, y_test),
        "converged": bool(state.converged),
    }

    # Unsupervised dictionary (scikit-learn), the same elastic-net codes, the same regression.
    learner = decomposition.DictionaryLearning(
        n_components=options.atoms,
        alpha=lam1,
        max_iter=options.dictionary_iterations,
        fit_algorithm="cd",
        random_state=options.seed,
    )
    learner.fit(data["X_train"])
    V0 = jnp.asarray(learner.components_.T, X_train.dtype)  # (p, k), atoms as columns
    D0 = normalize_atoms(V0)
    # The coding is separable: training and test samples are coded in one solve (one compiled
    # program), then split.
    X_all, n = jnp.concatenate([X_train, X_test]), X_train.shape[0]
    Z_all, coded = encode(coder, D0, X_all, lam1, lam2)
    Z0, Z0_test = Z_all[:n], Z_all[n:]
    (w0, b0), state = fit_classifier(Z0, y_train, l2)
    unsupervised = {
        "train_loss": float(classifier_loss((w0, b0), Z0, y_train, l2)),
        "test_auc": _auc(Z0_test @ w0 + b0, y_test),
        "converged": bool(state.converged & coded.converged),
        "code_density": float(jnp.mean(Z0 != 0)),
    }

    # Task-driven: Adam on (V, w, b), the codes differentiated implicitly.
    start = time.perf_counter()
    result = bilevel.minimize(
        lambda Z, theta: task_loss(Z, theta, y_train, l2),
        lambda Z, theta: encode(coder, normalize_atoms(theta[0]), X_train, lam1, lam2, Z),
        (V0, w0, b0),
        Z0,
        optax.adam(options.learning_rate),
        options.steps,
        progress=_common.show_progress(options, f"dictionary ({name})"),
    )
    seconds = time.perf_counter() - start
    V, w, b = result.hyperparams
    D = normalize_atoms(V)
    warm = jnp.concatenate([result.inner_params, Z_all[n:]])
    Z_all, coded = encode(coder, D, X_all, lam1, lam2, warm)
    Z, Z_test = Z_all[:n], Z_all[n:]
    history = result.history
    task_driven = {
        "train_loss": float(task_loss(Z, result.hyperparams, y_train, l2)),
        "test_auc": _auc(Z_test @ w + b, y_test),
        "converged": bool(np.all(history["inner_converged"]) & coded.converged),
        "code_density": float(jnp.mean(Z != 0)),
        "seconds": seconds,
        "median_step_seconds": float(np.median(np.diff(history["time"])))
        if options.steps > 1
        else None,
        "atom_change": float(jnp.linalg.norm(D - D0) / jnp.linalg.norm(D0)),
    }
    out["methods"] = dict(zip(METHODS, (raw, unsupervised, task_driven), strict=True))
    out["loss_history"] = history["outer_loss"]
    out["inner_iterations"] = history.get("inner_iterations")
    return out


def run(options: argparse.Namespace) -> dict:
    """Learn task-driven dictionaries on each data set, against the two baselines."""
    optax = _common.require("optax")
    if not 0 < options.test_size < 1:
        raise ValueError(f"--test-size must be in (0, 1), got {options.test_size}")
    folder = _common.output_folder(options)
    names = list(dict.fromkeys(options.datasets))
    results = {name: _run_dataset(name, options, optax) for name in names}

    plt = _common.pyplot()
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        entry = results[name]
        loss = entry["loss_history"]
        ax.plot(np.arange(len(loss)), loss, label="task-driven dictionary")
        for method, style in ((METHODS[1], "--"), (METHODS[0], ":")):
            ax.axhline(entry["methods"][method]["train_loss"], ls=style, c="gray", label=method)
        ax.set_xlabel("outer step")
        ax.set_ylabel("training task loss")
        ax.set_title(name)
        ax.legend(fontsize=8)
    png = _common.save_figure(figure, folder / "dictionary_loss.png")

    rows = [
        [name, method, values["train_loss"], values["test_auc"]]
        for name in names
        for method, values in results[name]["methods"].items()
    ]
    table = _common.format_table(["data", "method", "train loss", "test AUC"], rows)
    timing = ", ".join(
        f"{name}: {results[name]['methods'][METHODS[2]]['seconds']:.1f} s" for name in names
    )
    table += f"\n\n{options.steps} outer steps, k = {options.atoms} atoms ({timing})"
    summary = {
        "datasets": results,
        "options": {
            k: v for k, v in vars(options).items() if not k.startswith("_") and k != "output"
        },
    }
    json_path = _common.write_json(folder / "results.json", summary)
    summary["files"] = [json_path, png]
    summary["table"] = table
    return summary
