"""Smoke test of ``implicitdiff dictionary`` and the gradient through the sparse codes (float64)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_tangent

from implicitdiff.experiments import cli, dictionary


@pytest.fixture
def only_dictionary(monkeypatch):
    """The command line with this experiment's subcommand only: a module of another experiment
    that fails to import must not fail this test."""
    monkeypatch.setattr(cli, "EXPERIMENTS", ("dictionary",))


def test_task_driven_dictionary_lowers_the_task_loss(tmp_path, only_dictionary):
    argv = ["dictionary", "--atoms", "4", "--steps", "15", "--learning-rate", "0.02"]
    argv += ["--dictionary-iterations", "5", "--quiet", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["datasets"]) == {"breast-cancer", "synthetic"}
    for entry in results["datasets"].values():
        methods = entry["methods"]
        task = methods["task-driven dictionary"]
        unsupervised = methods["unsupervised dictionary"]
        loss = np.asarray(entry["loss_history"])
        # The outer loop starts from the unsupervised dictionary and its fitted regression, so
        # its first loss is the baseline's training loss; Adam on (V, w, b) must lower it.
        np.testing.assert_allclose(loss[0], unsupervised["train_loss"], rtol=1e-6)
        assert loss[-1] < loss[0]
        assert task["train_loss"] < unsupervised["train_loss"]
        assert task["converged"] and unsupervised["converged"]
        assert task["atom_change"] > 0
        for values in methods.values():
            assert 0.5 < values["test_auc"] <= 1.0  # better than chance on both sets
    assert (tmp_path / "dictionary_loss.png").stat().st_size > 0


def test_gradient_through_codes_matches_finite_differences():
    """∇ of L(V, w, b) = task loss of the elastic-net codes z*(V/‖V‖, xᵢ), the codes solved by
    FISTA to a gradient mapping ≤ 1e-12 and differentiated implicitly, against central
    differences along one random direction in (V, w, b)."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((6, 5)))
    y = jnp.asarray([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    theta = (jnp.asarray(rng.standard_normal((5, 3))), jnp.asarray(rng.standard_normal(3)))
    theta = (*theta, jnp.asarray(0.1))  # (V, w, b)
    coder = dictionary.make_coder(tol=1e-12, maxiter=20000)
    lam1, lam2, l2 = 0.3, 0.1, 1e-2
    Z, state = dictionary.encode(coder, dictionary.normalize_atoms(theta[0]), X, lam1, lam2)
    assert bool(state.converged)
    # Sparse codes, neither all zero nor dense: the support is what the derivative must respect.
    assert 0.2 < float(jnp.mean(Z == 0)) < 0.8

    def loss(t):
        return dictionary.task_loss_of_dictionary(t, coder, X, y, lam1, lam2, l2)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(theta)
    direction = random_tangent(theta, seed=3)
    h = 1e-5
    plus = loss(jax.tree_util.tree_map(lambda a, d: a + h * d, theta, direction))
    minus = loss(jax.tree_util.tree_map(lambda a, d: a - h * d, theta, direction))
    fd = (plus - minus) / (2 * h)
    directional = sum(jnp.vdot(g, d) for g, d in zip(grad, direction, strict=True))
    np.testing.assert_allclose(directional, fd, rtol=1e-7)
    # The part through V alone (where implicit differentiation acts) is checked too.
    only_v = (direction[0], jnp.zeros(3), jnp.zeros(()))
    plus = loss(jax.tree_util.tree_map(lambda a, d: a + h * d, theta, only_v))
    minus = loss(jax.tree_util.tree_map(lambda a, d: a - h * d, theta, only_v))
    np.testing.assert_allclose(jnp.vdot(grad[0], direction[0]), (plus - minus) / (2 * h), rtol=1e-6)
