"""JAXopt's ``implicit_diff_solve``, ``unroll`` and line-search ``verbose`` (issue 13), side by
side with jaxopt 0.8.5.

``implicit_diff_solve`` is JAXopt's name for ``solve``: a JAXopt program that sets it runs
unchanged, with JAXopt's own linear solvers too (they are plain JAX functions). ``unroll`` is
accepted on every iterative solver; the derivative is chosen by ``implicit_diff`` alone, so
every combination gives the derivative of ridge regression's closed form
x*(λ) = (XᵀX + λI)⁻¹Xᵀy (JAXopt's ``unroll=False, implicit_diff=False`` differentiates in
forward mode only; ours in both). Each case is one jitted program.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import linear_solve, solvers

jaxopt = pytest.importorskip("jaxopt")

X = jax.random.normal(jax.random.PRNGKey(0), (12, 4))
Y = jax.random.normal(jax.random.PRNGKey(1), (12,))
LAM = 0.7
X0 = jnp.zeros(4)


def ridge(w, lam):
    return 0.5 * jnp.sum((X @ w - Y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def closed_form(lam):
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(4), X.T @ Y)


WANT = jax.jacfwd(closed_form)(LAM)


def _jacobian(solver, mode="rev"):
    jac = jax.jacrev if mode == "rev" else jax.jacfwd
    return jax.jit(jac(lambda lam: solver.run(X0, lam).params))(LAM)


SOLVE_ALIASES = {
    "ours-solve_cg": linear_solve.solve_cg,
    "jaxopt-solve_cg": jaxopt.linear_solve.solve_cg,
    "jaxopt-solve_normal_cg": jaxopt.linear_solve.solve_normal_cg,
    "name": "cg",
}


@pytest.mark.parametrize("solve", SOLVE_ALIASES.values(), ids=SOLVE_ALIASES.keys())
def test_implicit_diff_solve_is_solve(solve):
    """The same derivative as solve=, the closed form's; JAXopt's with the same option agrees
    to its own solver's tolerance."""
    ours = solvers.LBFGS(ridge, tol=1e-12, implicit_diff_solve=solve)
    got = _jacobian(ours)
    np.testing.assert_allclose(got, WANT, rtol=1e-7, atol=1e-9)
    if callable(solve):  # JAXopt takes callables only
        theirs = jaxopt.LBFGS(ridge, tol=1e-12, implicit_diff_solve=solve)
        np.testing.assert_allclose(_jacobian(theirs), got, rtol=1e-4, atol=1e-6)


def test_implicit_diff_solve_survives_replace_and_conflicts_are_named():
    solver = solvers.NonlinearCG(ridge, tol=1e-12, implicit_diff_solve="cg")
    again = dataclasses.replace(solver, maxiter=800)
    assert again.implicit_diff_solve == "cg" and again.solve is None
    np.testing.assert_allclose(_jacobian(again, "fwd"), WANT, rtol=1e-7, atol=1e-9)
    assert solvers.LBFGS(ridge, solve="cg", implicit_diff_solve="cg").solve == "cg"
    with pytest.raises(ValueError, match="solve= and implicit_diff_solve="):
        solvers.LBFGS(ridge, solve="lu", implicit_diff_solve="cg")
    with pytest.raises(ValueError, match="implicit_diff_solve"):
        solvers.LBFGS(ridge, implicit_diff_solve="not-a-solver")
    with pytest.raises(TypeError, match="implicit_diff_solve"):
        solvers.LBFGS(ridge, implicit_diff_solve=3)


UNROLL = [(u, i) for u in ("auto", True, False) for i in (True, False)]


@pytest.mark.parametrize("unroll, implicit_diff", UNROLL, ids=[f"{u}-{i}" for u, i in UNROLL])
def test_unroll_accepted_with_jaxopt_meaning(unroll, implicit_diff):
    """Gradient descent with a fixed step, 400 iterations (converged to rounding): the closed
    form's derivative in reverse and forward mode for every (unroll, implicit_diff); JAXopt's
    in the modes it differentiates."""
    options = dict(stepsize=0.02, maxiter=400, tol=0.0, implicit_diff=implicit_diff)
    ours = solvers.GradientDescent(ridge, unroll=unroll, **options)
    for mode in ("rev", "fwd"):
        np.testing.assert_allclose(_jacobian(ours, mode), WANT, rtol=1e-8, atol=1e-10)
    theirs = jaxopt.GradientDescent(ridge, unroll=unroll, **options)
    mode = "fwd" if (unroll is False and not implicit_diff) else "rev"
    np.testing.assert_allclose(_jacobian(theirs, mode), WANT, rtol=1e-7, atol=1e-9)


def test_unroll_bad_value_names_the_option():
    with pytest.raises(TypeError, match="unroll"):
        solvers.NonlinearCG(ridge, unroll="yes")


def test_line_search_unroll_is_refused_naming_why():
    with pytest.raises(TypeError, match=r"unroll=.*not differentiated"):
        solvers.ZoomLineSearch(ridge, unroll=True)


SEARCHES = [solvers.BacktrackingLineSearch, solvers.ZoomLineSearch, solvers.HagerZhangLineSearch]


@pytest.mark.parametrize("cls", SEARCHES, ids=lambda c: c.__name__)
def test_line_search_verbose_prints_each_trial(cls, capsys):
    """One line per trial (f and the slope there), then the step: the same step and state as
    without verbose, and the printed step and trial count are the returned ones."""
    run = jax.jit(lambda search, x: search.run(1.0, x, None, None, None, LAM), static_argnums=0)
    quiet_eta, quiet = run(cls(ridge), X0)
    eta, state = run(cls(ridge, verbose=True), X0)
    jax.effects_barrier()
    lines = capsys.readouterr().out.strip().splitlines()
    assert float(eta) == float(quiet_eta) and int(state.iter_num) == int(quiet.iter_num)
    name = f"INFO: implicitdiff.{cls.__name__}: "
    trials = [line for line in lines if line.startswith(name + "trial value")]
    assert len(trials) == int(state.num_fun_eval) - 1  # run's evaluation at x is not a trial
    assert lines[-1].startswith(name + "stepsize")
    printed = dict(zip(lines[-1].split()[2::2], lines[-1].split()[3::2], strict=True))
    assert float(printed["stepsize"]) == pytest.approx(float(eta), rel=1e-12)
    assert int(printed["trials"]) == int(state.iter_num)
    assert printed["failed"] == "False"
    last_value = float(trials[-1].split()[4])
    if cls is not solvers.ZoomLineSearch:  # zoom may return an earlier trial (the best)
        assert last_value == pytest.approx(float(state.value), rel=1e-12)
    with pytest.raises(TypeError, match="verbose"):
        cls(ridge, verbose="yes")
