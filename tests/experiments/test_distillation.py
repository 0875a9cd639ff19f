"""Smoke test of ``implicitdiff distillation`` and the hypergradient it relies on (float64)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_tangent
from sklearn.datasets import load_digits

from implicitdiff.experiments import cli, distillation
from implicitdiff.solvers import GradientDescent


@pytest.fixture
def only_distillation(monkeypatch):
    """The command line with this experiment's subcommand only: a module of another experiment
    that fails to import must not fail this test."""
    monkeypatch.setattr(cli, "EXPERIMENTS", ("distillation",))


def test_distilled_images_beat_chance(tmp_path, only_distillation, capsys):
    argv = ["distillation", "--steps", "12", "--baseline-draws", "2", "--unroll-iterations", "20"]
    argv += ["--timing-repeats", "1", "--quiet", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    assert "distilled (learned)" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    loss = np.asarray(results["outer_loss"])
    # Ten random-noise images give a regression at about chance (0.1) on the 10 digit classes;
    # after 12 Adam steps the distilled images reach 0.84 on the test set (0.5 leaves a margin),
    # more than ten real images drawn at random (one per class), 0.70 here.
    assert results["test_accuracy"] > 0.5
    assert results["test_accuracy"] > np.mean(results["accuracies"]["random_1_per_class"])
    assert loss[-1] < 0.5 * loss[0]
    assert all(results["inner_converged"])
    assert np.asarray(results["images"]).shape == (10, 64)
    # The reference hypergradient of the timing table agrees with central differences.
    assert all(results["reference_converged"].values())
    assert max(results["reference_fd_relative_error"].values()) < 1e-4
    for name in ("distilled_images.png", "outer_loss.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_bad_option_is_refused(only_distillation, capsys):
    with pytest.raises(SystemExit):
        cli.main(["distillation", "--steps", "0"])
    assert "--steps: must be a positive integer" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_problem():
    X, y = load_digits(return_X_y=True)
    X_train = jnp.asarray(X[:60] / 16.0)
    Y_train = jax.nn.one_hot(y[:60], 10, dtype=X_train.dtype)
    images = 0.3 * jax.random.uniform(jax.random.PRNGKey(0), (10, 64), X_train.dtype)
    return images, X_train, Y_train


L2 = 0.5


def _loss(solver, X_train, Y_train):
    return lambda images: distillation.distillation_loss(images, solver, X_train, Y_train, L2)


def test_implicit_hypergradient_matches_unrolled(small_problem):
    """Gradient descent with a fixed step 1/L, run to ‖∇f‖ ≤ 1e-11: implicit = unrolled.

    L = ½ σ_max([θ 1])² / 10 + λ bounds the Hessian of the inner objective (the softmax Hessian
    is ≤ ½ I). A fixed step, because near ‖∇f‖ = 1e-11 the changes of f are rounding noise, which
    an Armijo search cannot judge.
    """
    images, X_train, Y_train = small_problem
    augmented = jnp.concatenate([images, jnp.ones((10, 1))], axis=1)
    lipschitz = 0.5 * jnp.linalg.norm(augmented, 2) ** 2 / 10 + L2
    options = dict(fun=distillation.logistic_objective, stepsize=float(1 / lipschitz), tol=1e-11)
    implicit = GradientDescent(maxiter=5000, **options)
    unrolled = GradientDescent(maxiter=5000, implicit_diff=False, **options)
    init = distillation.zero_params(64, 10)

    def loss_and_iterations(solver):
        def loss(theta):
            params, state = solver.run(init, theta, jnp.eye(10), L2)
            return distillation.logistic_objective(params, X_train, Y_train, 0.0), state

        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    (_, state_i), g_implicit = loss_and_iterations(implicit)(images)
    (_, state_u), g_unrolled = loss_and_iterations(unrolled)(images)
    for state in (state_i, state_u):  # both converged, well before maxiter
        assert bool(state.converged) and int(state.iter_num) < 5000
    np.testing.assert_allclose(g_implicit, g_unrolled, rtol=1e-7, atol=1e-9)


def test_implicit_hypergradient_matches_finite_differences(small_problem):
    """LBFGS (the experiment's default solver) to ‖∇f‖ ≤ 1e-12; central differences along one
    random direction d: (L(θ + hd) − L(θ − hd)) / 2h against ⟨∇L(θ), d⟩."""
    images, X_train, Y_train = small_problem
    solver = distillation.make_solver("lbfgs", tol=1e-12, maxiter=1000)
    loss = jax.jit(jax.value_and_grad(_loss(solver, X_train, Y_train)))
    direction = random_tangent(images, seed=1)
    h = 1e-4
    (plus, _), (minus, _) = loss(images + h * direction), loss(images - h * direction)
    _, grad = loss(images)
    fd = (plus - minus) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=1e-7)
