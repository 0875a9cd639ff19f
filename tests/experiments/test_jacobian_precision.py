"""Smoke test of ``implicitdiff jacobian-precision`` (Theorem 1 on ridge regression, float64)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff.experiments import cli
from implicitdiff.experiments import jacobian_precision as jp


@pytest.fixture
def only_precision(monkeypatch):
    """The command line with this experiment only: another experiment's module that fails to
    import must not fail this test."""
    monkeypatch.setattr(cli, "EXPERIMENTS", ("jacobian_precision",))


def test_implicit_error_is_linear_and_under_the_bound(tmp_path, only_precision):
    argv = ["jacobian-precision", "--perturbations", "9", "--directions", "4"]
    argv += ["--iterations", "10,200", "--quiet", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    # Theorem 1's constants for ridge: α = λ_min(XᵀX) + λ, β = 1, γ = 0.
    assert results["beta"] == 1.0 and results["gamma"] == 0.0
    # At x* itself the implicit Jacobian is the closed form.
    assert results["implicit_error_at_solution"] < 1e-10
    # The implicit error is linear in the solution error: log-log slope ≈ 1 (1.00 measured).
    assert 0.9 < results["slope"] < 1.1
    # Every implicit error is under the bound. Along gradient-descent iterates the error
    # aligns with A's slowest eigenvector, where the bound is attained (ratio 1 − 1e-10), so
    # allow for rounding.
    pert, gd = results["perturbations"], results["gradient_descent"]
    assert np.all(np.asarray(pert["implicit_error"]) <= np.asarray(pert["bound"]))
    assert np.all(np.asarray(gd["implicit_error"]) <= np.asarray(gd["bound"]) * (1 + 1e-9))
    assert results["max_ratio"] <= 1.0
    # At the same iterate, implicit differentiation is more accurate than unrolling
    # (0.21 vs 0.54 measured at t = 200).
    compare = results["compare"]
    assert compare["iterations"] == 200
    assert compare["implicit_relative_error"] < compare["unrolled_relative_error"]
    assert (tmp_path / "precision.png").stat().st_size > 0


def test_gradient_descent_jacobians_match_the_recursions():
    X_np, y_np = jp.diabetes_data()
    lam, t = 10.0, 3
    exact = jp.ridge_closed_form(X_np, y_np, lam)
    eta = 1.0 / exact["lipschitz"]
    out = jp._gradient_descent_jacobians(
        jnp.asarray(X_np), jnp.asarray(y_np), jnp.asarray(lam), eta, t
    )
    # x_{k+1} = x_k − η(A x_k − Xᵀy); its derivative d_{k+1} = d_k − η(A d_k + x_k).
    A = X_np.T @ X_np + lam * np.eye(X_np.shape[1])
    x, d = np.zeros(X_np.shape[1]), np.zeros(X_np.shape[1])
    for _ in range(t):
        x, d = x - eta * (A @ x - X_np.T @ y_np), d - eta * (A @ d + x)
    np.testing.assert_allclose(out["x"], x, rtol=1e-12)
    np.testing.assert_allclose(out["unrolled"], d, rtol=1e-10)
    # Implicit at x_t: J(x_t) = −A⁻¹ x_t.
    np.testing.assert_allclose(out["implicit"], -np.linalg.solve(A, x), rtol=1e-10)
    # The closed form: ∂x*/∂λ = −A⁻¹x*, and α = λ_min(A).
    np.testing.assert_allclose(exact["alpha"], np.linalg.eigvalsh(A)[0], rtol=1e-12)
    np.testing.assert_allclose(exact["bound_factor"], 1.0 / exact["alpha"], rtol=1e-12)


def test_bad_options_are_refused_naming_the_option(tmp_path, only_precision):
    with pytest.raises(ValueError, match="--lam"):
        cli.main(["jacobian-precision", "--lam", "0", "--quiet", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="--iterations"):
        cli.main(["jacobian-precision", "--iterations", "a,b", "--output", str(tmp_path)])
