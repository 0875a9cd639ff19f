"""JAXopt's step options of Broyden (issue 13): ``stepsize`` (fixed or scheduled),
``linesearch`` / ``condition`` / ``maxls`` / ``decrease_factor`` / ``increase_factor`` /
``max_stepsize`` / ``min_stepsize`` (JAXopt's backtracking search on ‖G‖²),
``stop_if_linesearch_fails`` and ``history_size`` (limited memory).

With ``init_jacobian="identity"`` (JAXopt's H₀ = γI) the iterates are JAXopt 0.8.5's on the same
inputs (the same number of iterations to the same point, to rounding); the implicit derivative is
checked against the closed form dx/da = (∂ₓh)⁻¹ for G(x, a) = h(x) − a (float64).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import solvers as S
from implicitdiff.solvers import Status

jaxopt = pytest.importorskip("jaxopt")

A = jnp.array([0.3, -0.2, 0.5, 1.0])
FAR = jnp.array([4.0, -3.0, 2.0, 5.0])  # full Broyden steps fail from here: the search acts


def h(x):
    return 3.0 * jnp.arctan(x) + 0.2 * x + 0.1 * jnp.roll(x, 1) ** 3


def G(x, a):
    return h(x) - a


def constant_step(iter_num):
    return 0.9


CASES = {
    "scheduled_step_history_2": {"stepsize": constant_step, "history_size": 2},
    "jaxopt_search": {"linesearch": "backtracking"},
    "armijo_halving": {"condition": "armijo", "maxls": 20, "decrease_factor": 0.5},
    "strong_wolfe": {"condition": "strong-wolfe", "max_stepsize": 1.5, "increase_factor": 2.0},
}


@pytest.mark.parametrize("case", CASES)
def test_iterates_match_jaxopt_and_derivative_closed_form(case):
    options = CASES[case]
    start = jnp.zeros(4) if "stepsize" in options else FAR
    theirs = {k: v for k, v in options.items() if k != "linesearch"}

    def ours(maxiter, tol):
        return S.Broyden(
            G, init_jacobian="identity", maxiter=maxiter, tol=tol, on_failure="ignore", **options
        )

    @jax.jit
    def program(a):
        x, state = ours(100, 1e-10).run(start, a)
        jacobian = jax.jacobian(lambda b: ours(100, 1e-10).run(start, b).params)(a)
        return x, state, jacobian

    x, state, jacobian = program(A)
    x_ref, state_ref = jaxopt.Broyden(G, maxiter=100, tol=1e-10, **theirs).run(start, A)
    assert int(state.iter_num) == int(state_ref.iter_num)
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-12)
    assert bool(state.converged)
    np.testing.assert_allclose(jacobian, np.linalg.inv(jax.jacobian(h)(x)), rtol=1e-8, atol=1e-10)


def test_stop_if_linesearch_fails():
    """JAXopt's search with 3 trials fails at the first iteration: both stop there; the
    safeguard's failure (no backtracking allowed) stops the run too."""
    options = {"maxls": 3, "max_stepsize": 2.0, "increase_factor": 2.0}
    ours = S.Broyden(
        G, init_jacobian="identity", stop_if_linesearch_fails=True, on_failure="ignore", **options
    )
    safeguard = S.Broyden(
        G,
        init_jacobian="identity",
        max_backtracks=0,
        stop_if_linesearch_fails=True,
        on_failure="ignore",
    )

    @jax.jit
    def program(a):
        return ours.run(FAR, a), safeguard.run(FAR, a)

    (x, state), (x_safe, state_safe) = program(A)
    x_ref, state_ref = jaxopt.Broyden(G, stop_if_linesearch_fails=True, **options).run(FAR, A)
    assert int(state.iter_num) == int(state_ref.iter_num) == 1
    assert bool(state.failed_linesearch) and bool(state_ref.failed_linesearch)
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-12)
    assert int(state.status) == Status.STALLED and not bool(state.converged)
    assert int(state_safe.iter_num) == 1 and bool(state_safe.failed_linesearch)
    np.testing.assert_array_equal(x_safe, FAR)  # the safeguard keeps x
    assert int(state_safe.status) == Status.STALLED


def test_jaxopt_broyden_turns_nan_past_convergence():
    """JAXopt 0.8.5 defect: once the iterates stop moving (tol below the attainable accuracy),
    its update divides by vᵀΔg = 0 and the iterate becomes NaN; ours skips that update."""
    x_ref, _ = jaxopt.Broyden(G, maxiter=30, tol=0.0).run(FAR, A)
    assert np.isnan(np.asarray(x_ref)).any()
    solver = S.Broyden(
        G,
        init_jacobian="identity",
        linesearch="backtracking",
        maxiter=30,
        tol=0.0,
        on_failure="ignore",
    )
    x, _ = jax.jit(solver.run)(FAR, A)
    np.testing.assert_allclose(h(x), A, rtol=0, atol=1e-13)


def test_bad_options_name_themselves():
    with pytest.raises(ValueError, match="linesearch"):
        S.Broyden(G, linesearch="zoom")
    with pytest.raises(ValueError, match="history_size"):
        S.Broyden(G, history_size=0)
    with pytest.raises(ValueError, match="stepsize"):
        S.Broyden(G, stepsize=-1.0)
    with pytest.raises(ValueError, match="condition"):
        S.Broyden(G, condition="curvy")
    with pytest.raises(TypeError, match="stop_if_linesearch_fails"):
        S.Broyden(G, stop_if_linesearch_fails=1)
