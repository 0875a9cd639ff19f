"""The svm-hyperopt experiment: its formulation, and a smoke run at a tiny size.

The formulation is checked on its own: the dual's gradient in closed form, its solution against
SciPy's SLSQP on the same QP, and strong duality with the Crammer–Singer primal (which holds
only if the signs of W = Xᵀ(Y − x)/θ and ⟨x, Y⟩ are right).
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from implicitdiff.experiments import EXPERIMENTS, cli
from implicitdiff.experiments import svm_hyperopt as svm

N, P, K, THETA = 8, 4, 3, 0.7
RNG = np.random.default_rng(3)
X = RNG.normal(size=(N, P)) / 2
LABELS = RNG.integers(0, K, size=N)
Y = np.eye(K)[LABELS]


def primal_objective(W, theta):
    """(θ/2)‖W‖² + Σᵢ maxⱼ (1[j ≠ yᵢ] + (XW)ᵢⱼ − (XW)_{i,yᵢ}): the Crammer–Singer SVM."""
    scores = X @ W
    margins = 1 - Y + scores - np.sum(Y * scores, axis=1, keepdims=True)
    return 0.5 * theta * np.sum(W**2) + margins.max(axis=1).sum()


def test_dual_gradient_closed_form_and_scaled_objective():
    x = jax.nn.softmax(jnp.asarray(RNG.normal(size=(N, K))), axis=1)
    grad = jax.grad(svm.dual_objective)(x, THETA, X, Y)
    W = svm.svm_weights(x, THETA, X, Y)
    np.testing.assert_allclose(grad, Y - X @ W, rtol=1e-12, atol=1e-12)
    scaled = jax.grad(svm.scaled_dual_objective)(x, THETA, X, Y)
    np.testing.assert_allclose(scaled, THETA * grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        svm.scaled_dual_objective(x, THETA, X, Y), THETA * svm.dual_objective(x, THETA, X, Y)
    )


@pytest.mark.parametrize("name", svm.SOLVERS)
def test_each_solver_solves_the_dual_qp_with_zero_duality_gap(name):
    solver = svm.make_solver(name, X, tol=1e-11, maxiter=20_000)
    x, state = solver.run(jnp.full((N, K), 1.0 / K), 1.0, THETA, X, Y)
    if name != "mirror-descent":  # entropic mirror descent approaches the faces slowly
        assert bool(state.converged)
    x = np.asarray(x)
    # A generic solver on the same QP: SLSQP with the simplex constraints.
    reference = scipy.optimize.minimize(
        lambda v: float(svm.dual_objective(v.reshape(N, K), THETA, X, Y)),
        np.full(N * K, 1.0 / K),
        jac=lambda v: np.asarray(
            jax.grad(svm.dual_objective)(v.reshape(N, K), THETA, X, Y)
        ).ravel(),
        bounds=[(0, 1)] * (N * K),
        constraints={"type": "eq", "fun": lambda v: v.reshape(N, K).sum(axis=1) - 1},
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert reference.success
    tol = 1e-4 if name == "mirror-descent" else 1e-6
    np.testing.assert_allclose(x, reference.x.reshape(N, K), atol=tol)
    # Strong duality: P(W(x*)) = m − f(x*), the dual's optimum (Σx(1 − Y) = m − ⟨x, Y⟩).
    W = np.asarray(svm.svm_weights(x, THETA, X, Y))
    dual_value = N - float(svm.dual_objective(x, THETA, X, Y))
    np.testing.assert_allclose(primal_objective(W, THETA), dual_value, rtol=10 * tol)
    assert 0 < np.sum(x.max(axis=1) < 1 - 1e-3) < N  # support vectors, not a trivial solution


TINY = [
    "svm-hyperopt",
    "--samples", "80",
    "--features", "6",
    "--classes", "3",
    "--outer-steps", "6",
    "--lambda-init", "-1.5",
    "--timing-iterations", "20",
    "--timing-features", "6",
    "--timing-fixed-iterations", "20",
    "--timing-repeats", "1",
    "--quiet",
]  # fmt: skip


def test_smoke_run(tmp_path, capsys):
    assert cli.main([*TINY, "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("validation_loss.png", "timing.png", "svm_hyperopt.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "finite differences" in printed and "unrolled" in printed

    # The three implicit hypergradients agree with each other and with finite differences.
    checks = results["checks"]
    assert set(checks["hypergradients"]) == set(svm.SOLVERS)
    assert all(checks["converged"].values())
    assert abs(checks["finite_difference"]) > 1e-3  # a real slope, not a flat spot
    assert checks["max_relative_difference"] < 1e-7
    for name in svm.SOLVERS:
        assert checks["relative_error_vs_fd"][name] < 1e-5, name

    # Gradient descent on λ lowers the validation loss.
    losses = np.append(results["history"]["outer_loss"], results["loss_end"])
    assert len(losses) == 7
    assert losses[-1] < 0.9 * losses[0]
    assert results["lambda_end"] != results["lambda_start"]

    # The timing exists and is positive; at 20 iterations both hypergradients are finite.
    timing = results["timing"]
    assert timing["iterations"] == [20] and timing["feature_counts"] == [6]
    for key in ("by_iterations", "by_features"):
        for method in ("forward", "implicit", "unrolled"):
            assert all(t > 0 for t in timing[key][method]), (key, method)
        assert np.all(np.isfinite(timing[key]["hypergradient_implicit"]))
        assert np.all(np.isfinite(timing[key]["hypergradient_unrolled"]))
    errors = timing["by_iterations"]
    assert np.isfinite(errors["relative_error_implicit"][0] + errors["relative_error_unrolled"][0])


def test_bad_sizes_are_rejected_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="--classes"):
        cli.main(["svm-hyperopt", "--classes", "1", "--output", str(tmp_path), "--quiet"])
    with pytest.raises(ValueError, match="--samples"):
        cli.main(["svm-hyperopt", "--samples", "10", "--output", str(tmp_path), "--quiet"])
    with pytest.raises(ValueError, match="--timing-features"):
        cli.main(
            [
                *("svm-hyperopt", "--classes", "5", "--timing-features", "2"),
                *("--output", str(tmp_path), "--quiet"),
            ]
        )


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["svm-hyperopt", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--timing-iterations" in out and "--solver" in out and "Crammer" in out


def test_python_m_implicitdiff_lists_every_experiment():
    completed = subprocess.run(
        [sys.executable, "-m", "implicitdiff", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for module in EXPERIMENTS:
        assert module.replace("_", "-") in completed.stdout
