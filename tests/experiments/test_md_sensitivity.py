"""Smoke test of ``implicitdiff md-sensitivity`` and the pieces it is built from (float64)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff.experiments import cli
from implicitdiff.experiments import md_sensitivity as md


@pytest.fixture
def only_md(monkeypatch):
    """The command line with this experiment only: another experiment's module that fails to
    import must not fail this test."""
    monkeypatch.setattr(cli, "EXPERIMENTS", ("md_sensitivity",))


def test_sensitivity_matches_finite_differences(tmp_path, only_md, capsys):
    argv = ["md-sensitivity", "--particles", "24", "--quiet", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "normal_cg" in out
    results = json.loads((tmp_path / "results.json").read_text())
    # FIRE reached its force tolerance, at d_s and at d_s ± h.
    assert results["converged"] and results["fd_converged"]
    assert results["max_force"] <= results["force_tol"] == 1e-12
    # The Hessian is singular (at least the two translations) and the backward system, solved
    # by normal CG, has a small residual ‖Hu − b‖/‖b‖ all the same (1e-10 measured).
    assert results["hessian"]["zero_modes"] >= 2
    assert results["backward_residual"] < 1e-8
    # The minimum-norm solution carries no global translation.
    assert results["implicit_mean_translation"] < 1e-9
    # The derivative agrees with central differences (h = 1e-6) on the non-rattlers after
    # removing the mean translation: 2.9e-6 measured, ≈ the finite differences' own error.
    assert results["relative_error"] < 1e-4
    implicit = np.asarray(results["sensitivity"])
    assert implicit.shape == (24, 2) and np.linalg.norm(implicit) > 1.0
    assert (tmp_path / "sensitivity.png").stat().st_size > 0


def test_energy_matches_a_direct_sum_over_pairs():
    rng = np.random.default_rng(0)
    n, box, d_s = 7, 2.5, 0.7
    x = rng.uniform(0, box, size=(n, 2))
    is_small = np.arange(n) < 3
    d = np.where(is_small, d_s, 1.0)
    expected = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            delta = x[i] - x[j]
            delta -= box * np.round(delta / box)  # minimum image
            r, sigma = np.linalg.norm(delta), (d[i] + d[j]) / 2
            if r < sigma:
                expected += 0.5 * (1 - r / sigma) ** 2
    assert expected > 0
    value = md.soft_sphere_energy(jnp.asarray(x), d_s, jnp.asarray(is_small), box)
    np.testing.assert_allclose(float(value), expected, rtol=1e-13)


def test_fire_reaches_the_force_tolerance_on_a_quadratic():
    center = jnp.array([[1.0, -2.0], [0.5, 3.0], [0.0, 0.0]])
    scales = jnp.array([[1.0, 4.0], [0.3, 2.0], [10.0, 1.0]])

    def energy(x, c):
        return 0.5 * jnp.sum(scales * (x - c) ** 2)

    x, info = md.fire_descent(energy, jnp.zeros((3, 2)), center, force_tol=1e-10)
    assert bool(info.converged) and float(info.max_force) <= 1e-10
    np.testing.assert_allclose(np.asarray(x), np.asarray(center), atol=1e-9)


def test_rattlers_are_particles_with_fewer_than_three_contacts():
    # Three mutually overlapping discs (two contacts each) and one far away: all rattlers.
    x = np.array([[0.0, 0.0], [0.9, 0.0], [0.45, 0.8], [5.0, 5.0]])
    assert md.rattlers(x, 0.5, np.zeros(4, bool), 10.0).all()
    # A disc overlapping four neighbours has four contacts, but its neighbours one each:
    # removing them leaves it with none (iterative removal).
    x = np.array([[5.0, 5.0], [5.9, 5.0], [4.1, 5.0], [5.0, 5.9], [5.0, 4.1]])
    assert md.rattlers(x, 0.5, np.zeros(5, bool), 10.0).all()


def test_bad_options_are_refused_naming_the_option(tmp_path, only_md):
    with pytest.raises(ValueError, match="--particles"):
        cli.main(["md-sensitivity", "--particles", "2", "--quiet", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="--fd-step"):
        cli.main(["md-sensitivity", "--fd-step", "0", "--quiet", "--output", str(tmp_path)])


def test_a_bool_is_not_a_particle_count():
    import jax

    with pytest.raises(ValueError, match="num_particles must be an int ≥ 4, got True"):
        md.bidisperse_packing(True, 0.8, 1.0, jax.random.PRNGKey(0))
