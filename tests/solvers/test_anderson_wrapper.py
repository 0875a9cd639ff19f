"""solvers.AndersonWrapper around GradientDescent on a ridge problem, side by side with
jaxopt.AndersonWrapper, and its implicit and unrolled derivatives against the closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import problems
import pytest

from implicitdiff import solvers

_RNG = np.random.default_rng(8)
X = jnp.asarray(_RNG.normal(size=(10, 4)))
Y = jnp.asarray(_RNG.normal(size=10))
STEP = 1.0 / (float(np.linalg.eigvalsh(np.asarray(X.T @ X)).max()) + 1.0)
LAM = 0.7


def ridge(w, lam):
    return 0.5 * jnp.sum((X @ w - Y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def _exact(lam):
    a = np.asarray(X.T @ X) + lam * np.eye(4)
    return np.linalg.solve(a, np.asarray(X.T @ Y)), a


GD = solvers.GradientDescent(ridge, stepsize=STEP, tol=1e-11, maxiter=3000)
OURS = solvers.AndersonWrapper(GD, history_size=4)
THEIRS = jaxopt.AndersonWrapper(
    jaxopt.GradientDescent(ridge, stepsize=STEP, tol=1e-11, maxiter=3000, acceleration=False),
    history_size=4,
)
FIRST = solvers.AndersonWrapper(GD, 4, maxiter=4, tol=0.0, on_failure="ignore")
FIRST_THEIRS = jaxopt.AndersonWrapper(
    jaxopt.GradientDescent(ridge, stepsize=STEP, maxiter=4, tol=0.0, acceleration=False), 4
)
UNROLLED = solvers.AndersonWrapper(
    GD, history_size=4, maxiter=60, tol=0.0, implicit_diff=False, on_failure="ignore"
)


def _sum(solver, lam):
    return jnp.sum(solver.run(jnp.zeros(4), lam).params)


@jax.jit
def _program(lam):
    w0 = jnp.zeros(4)
    ours, state = OURS.run(w0, lam)
    theirs, their_state = THEIRS.run(w0, lam)
    plain_state = GD.run(w0, lam).state
    return {
        "ours": ours,
        "converged": state.converged,
        "iterations": (state.iter_num, their_state.iter_num, plain_state.iter_num),
        "theirs": theirs,
        "first": (FIRST.run(w0, lam).params, FIRST_THEIRS.run(w0, lam).params),
        "grad": jax.grad(lambda t: _sum(OURS, t))(lam),
        "unrolled": jax.grad(lambda t: _sum(UNROLLED, t))(lam),
        "jvp": jax.jvp(lambda t: OURS.run(w0, t).params, (lam,), (1.0,))[1],
    }


@pytest.fixture(scope="module")
def out():
    return _program(LAM)


def test_solution_equals_jaxopt_and_the_closed_form(out):
    exact, _ = _exact(LAM)
    assert bool(out["converged"])
    np.testing.assert_allclose(out["ours"], exact, rtol=1e-9)
    np.testing.assert_allclose(out["theirs"], exact, rtol=1e-9)
    # Before the history is full, the wrapper takes the solver's own steps, as JAXopt's.
    np.testing.assert_allclose(*out["first"], rtol=1e-13)


def test_acceleration_takes_fewer_iterations(out):
    ours, theirs, plain = (int(n) for n in out["iterations"])
    # JAXopt mixes with an absolute ridge (1e-5 against Gram entries that shrink to ~1e-20):
    # near convergence its weights tend to the plain average and it slows down.
    assert ours < plain / 2, (ours, theirs, plain)
    assert ours < theirs, (ours, theirs, plain)


def test_implicit_and_unrolled_derivatives_match_the_closed_form(out):
    """w(λ) = (XᵀX + λI)⁻¹Xᵀy: dw/dλ = −(XᵀX + λI)⁻¹ w."""
    exact, a = _exact(LAM)
    dw = -np.linalg.solve(a, exact)
    np.testing.assert_allclose(out["jvp"], dw, rtol=1e-8)
    np.testing.assert_allclose(out["grad"], dw.sum(), rtol=1e-8)
    np.testing.assert_allclose(out["unrolled"], dw.sum(), rtol=1e-7)


def test_settings_and_bad_input():
    assert OURS.maxiter == GD.maxiter and OURS.tol == GD.tol  # the wrapped solver's
    with pytest.raises(TypeError, match="solver must be an iterative solver"):
        solvers.AndersonWrapper(ridge)
    with pytest.raises(ValueError, match="history_size"):
        solvers.AndersonWrapper(GD, history_size=1)
    with pytest.raises(ValueError, match="mixing_frequency"):
        solvers.AndersonWrapper(GD, mixing_frequency=0)
    with pytest.raises(ValueError, match="beta"):
        solvers.AndersonWrapper(GD, beta=0.0)


def test_unrolled_second_derivative_on_a_logistic_regression():
    """Unrolled (implicit_diff=False), the derivative copy past the stop followed Anderson's
    mixed step: the Jacobian was 4e-10 off and the Hessian of the outer loss 3e2 off (relative)
    on a logistic regression (the mixing weights are fitted to residual differences that vanish
    at convergence, and a second derivative differentiates them). It now follows the wrapped
    solver's plain step: both equal the closed forms of tests/problems.py."""
    p = problems.get("logistic")
    inner = solvers.GradientDescent(fun=p.fun, stepsize=0.05, tol=1e-11)
    solver = solvers.AndersonWrapper(inner, implicit_diff=False)

    def solve(theta):
        return solver.run(p.init, theta)[0]

    jacobian = jax.jacobian(solve)(p.theta)
    np.testing.assert_allclose(jacobian, p.jacobian(p.theta), rtol=1e-9, atol=1e-12)
    hessian = jax.hessian(lambda t: p.outer_loss(solve(t)))(p.theta)
    np.testing.assert_allclose(hessian, p.outer_hessian(p.theta), rtol=1e-8, atol=1e-10)
