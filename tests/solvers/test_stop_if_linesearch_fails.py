"""JAXopt's ``stop_if_linesearch_fails`` (LBFGS, LBFGSB) and LBFGSB's ``theta`` (issue 13).

Compared with JAXopt 0.8.5 on the same inputs: the iteration and the iterate where the run
stops, and LBFGSB's solution for θ ≠ 1 (θ changes the iterates, not the solution nor its
derivative, which tests/solvers/test_smooth_options.py checks for LBFGSB).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import solvers as S
from implicitdiff.solvers import Status

jaxopt = pytest.importorskip("jaxopt")

C = jnp.array([-5.0, 2.0])
START = jnp.array([-0.9, 0.0])  # the first steps leave the domain x > −1 of log: searches fail


def log_barrier(x, c):
    return jnp.sum((x - c) ** 2) + jnp.sum(jnp.log(x + 1.0))


def test_lbfgs_and_lbfgsb_stop_where_the_search_fails():
    options = {"maxls": 1, "stop_if_linesearch_fails": True}
    zoom = S.LBFGS(log_barrier, linesearch="zoom", on_failure="ignore", **options)
    backtracking = S.LBFGS(log_barrier, linesearch="backtracking", on_failure="ignore", **options)
    lbfgsb = S.LBFGSB(log_barrier, on_failure="ignore", **options)

    @jax.jit
    def program(c):
        return (
            zoom.run(START, c),
            backtracking.run(START, c),
            lbfgsb.run(START, None, c),
        )

    stopped = program(C)
    for point, state in stopped:
        assert int(state.iter_num) == 1 and bool(state.failed_linesearch)
        assert int(state.status) == Status.STALLED
        np.testing.assert_array_equal(point, START)  # stopped where it stood

    x_ref, state_ref = jaxopt.LBFGS(log_barrier, linesearch="zoom", **options).run(START, C)
    assert int(state_ref.iter_num) == 1 and bool(state_ref.failed_linesearch)
    np.testing.assert_array_equal(x_ref, START)
    # JAXopt 0.8.5 defect: its failed backtracking takes the last trial, out of log's domain.
    x_ref, state_ref = jaxopt.LBFGS(log_barrier, linesearch="backtracking", **options).run(START, C)
    assert int(state_ref.iter_num) == 1 and bool(state_ref.failed_linesearch)
    assert np.isnan(log_barrier(x_ref, C))
    xb_ref, state_b_ref = jaxopt.LBFGSB(log_barrier, **options).run(START, None, C)
    assert int(state_b_ref.iter_num) == 1 and bool(state_b_ref.failed_linesearch)
    np.testing.assert_array_equal(xb_ref, START)


WEIGHTS = jnp.arange(1.0, 5.0)
TARGET = jnp.array([2.0, -1.0, 0.5, 3.0])
BOUNDS = (jnp.full(4, -0.5), jnp.full(4, 1.0))


def box_objective(x, c):
    return jnp.sum(WEIGHTS * (x - c) ** 2) + 0.3 * x[0] * x[1] + 0.1 * jnp.sum(x**4)


def test_lbfgsb_theta():
    theta = 2.0
    solver = S.LBFGSB(box_objective, theta=theta, tol=1e-10)
    first = S.LBFGSB(box_objective, theta=theta, stepsize=1.0, maxiter=1, on_failure="ignore")

    @jax.jit
    def program(c):
        return solver.run(jnp.zeros(4), BOUNDS, c), first.run(jnp.zeros(4), None, c).params

    (x, state), x1 = program(TARGET)
    # The first step, without a pair: −γg/θ with γ = min(1, 1/‖g‖).
    g = np.asarray(jax.grad(box_objective)(jnp.zeros(4), TARGET))
    np.testing.assert_allclose(x1, -g / max(1.0, np.linalg.norm(g)) / theta, rtol=1e-14)
    x_ref = jaxopt.LBFGSB(box_objective, theta=theta, tol=1e-10).run(jnp.zeros(4), BOUNDS, TARGET)
    np.testing.assert_allclose(x, x_ref.params, rtol=0, atol=1e-9)
    assert bool(state.converged)
    with pytest.raises(ValueError, match="theta"):
        S.LBFGSB(box_objective, theta=0.0)


@pytest.mark.parametrize("name", ["LBFGS", "BFGS", "NonlinearCG", "LBFGSB"])
def test_deprecated_condition_and_decrease_factor_are_ignored_with_a_warning(name):
    """JAXopt 0.8 accepts them, warns that they are deprecated and ignores them: so here."""
    cls = getattr(S, name)
    with pytest.warns(DeprecationWarning, match="condition= is deprecated and ignored"):
        solver = cls(box_objective, condition="armijo")
    with pytest.warns(DeprecationWarning, match="decrease_factor= is deprecated and ignored"):
        cls(box_objective, decrease_factor=0.5)
    plain = cls(box_objective)
    assert solver.linesearch == plain.linesearch and solver.maxls == plain.maxls
    with pytest.warns(DeprecationWarning):
        jaxopt_solver = getattr(jaxopt, name)(box_objective, condition="armijo")
    assert jaxopt_solver.condition == "armijo"
