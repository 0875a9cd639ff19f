"""JAXopt 0.8.5's options of the smooth minimizers (issue 13), side by side with jaxopt.

value_and_grad / has_aux (state.aux), fixed and scheduled ``stepsize``, ``linesearch_init``,
``use_gamma``, ``acceleration``, ``bounds=None``, the NonlinearCG methods, and the JAXopt options
that are refused with their alternative. Derivatives are checked against the closed form of
ridge regression, x*(λ) = (XᵀX + λI)⁻¹Xᵀy, for each objective form (implicit) and for a fixed
step (unrolled). Each case is one jitted program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose

from implicitdiff import projections, prox, solvers
from implicitdiff.solvers._objective import first_trial

jaxopt = pytest.importorskip("jaxopt")

X = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
Y = jax.random.normal(jax.random.PRNGKey(1), (8,))
LAM = 0.7
X0 = jnp.zeros(4)


def ridge(w, lam):
    return 0.5 * jnp.sum((X @ w - Y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def ridge_aux(w, lam):
    return ridge(w, lam), {"residual": X @ w - Y}


def ridge_vg(w, lam):
    return jax.value_and_grad(ridge)(w, lam)


def ridge_vg_aux(w, lam):
    return (ridge(w, lam), {"residual": X @ w - Y}), jax.grad(ridge)(w, lam)


def ridge_closed(lam):
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(4), X.T @ Y)


def loss_closed(lam):
    return jnp.sum(ridge_closed(lam) ** 2)


FORMS = {
    "aux": (ridge_aux, dict(has_aux=True)),
    "vg": (ridge_vg, dict(value_and_grad=True)),
    "vg+aux": (ridge_vg_aux, dict(value_and_grad=True, has_aux=True)),
}


def _run(solver, lam):
    """run with each solver's leading argument (hyperparams of the prox, bounds)."""
    if isinstance(solver, solvers.ProximalGradient):
        return solver.run(X0, None, lam)
    if isinstance(solver, solvers.LBFGSB):
        return solver.run(X0, None, lam)  # bounds=None: unbounded, as in JAXopt
    return solver.run(X0, lam)


# (solver class, form, options): every solver with the user's gradient and aux, and the
# forms one at a time on LBFGS.
CASES = [
    (solvers.LBFGS, "vg+aux", {}),
    (solvers.BFGS, "aux", {}),
    (solvers.NonlinearCG, "vg", {}),
    (solvers.GradientDescent, "vg+aux", {}),
    (solvers.ProximalGradient, "aux", {}),
    (solvers.LBFGSB, "vg+aux", {}),
]


@pytest.mark.parametrize(
    "cls, form, options", CASES, ids=[f"{c.__name__}-{f}" for c, f, _ in CASES]
)
def test_objective_forms_solve_keep_aux_and_differentiate(cls, form, options):
    fun, flags = FORMS[form]
    solver = cls(fun, **flags, **options, tol=1e-10, maxiter=2000)

    @jax.jit
    def case(lam):
        params, state = _run(solver, lam)
        hypergradient = jax.grad(lambda lam: jnp.sum(_run(solver, lam).params ** 2))(lam)
        return params, state, hypergradient

    params, state, hypergradient = case(LAM)
    assert bool(state.converged)
    assert_tree_allclose(params, ridge_closed(LAM), rtol=1e-8, atol=1e-9)
    assert_tree_allclose(hypergradient, jax.grad(loss_closed)(LAM), rtol=1e-7, atol=1e-9)
    if flags.get("has_aux"):
        # JAXopt keeps aux at the point of the last gradient: the solution for the smooth
        # minimizers, the extrapolated point y for proximal gradient (the solution at the end).
        assert_tree_allclose(state.aux, {"residual": X @ params - Y}, rtol=1e-6, atol=1e-7)
    else:
        assert state.aux is None


def _fixed_step_pair(name):
    """(ours, jaxopt's) with the same fixed or scheduled step, run for 12 iterations."""
    common = dict(maxiter=12, tol=0.0)

    def schedule(i):
        return 0.02 / (1.0 + 0.1 * i)

    if name == "LBFGS-fixed":
        return (
            solvers.LBFGS(ridge, stepsize=0.01, **common, on_failure="ignore"),
            jaxopt.LBFGS(ridge, stepsize=0.01, **common),
        )
    if name == "LBFGS-schedule-no-gamma":
        return (
            solvers.LBFGS(
                ridge_vg, True, stepsize=schedule, use_gamma=False, **common, on_failure="ignore"
            ),
            jaxopt.LBFGS(ridge_vg, True, stepsize=schedule, use_gamma=False, **common),
        )
    if name == "GradientDescent-accelerated":
        return (
            solvers.GradientDescent(
                ridge, stepsize=0.02, acceleration=True, **common, on_failure="ignore"
            ),
            jaxopt.GradientDescent(ridge, stepsize=0.02, acceleration=True, **common),
        )
    if name == "GradientDescent-schedule":
        return (
            solvers.GradientDescent(
                ridge_aux,
                has_aux=True,
                stepsize=schedule,
                acceleration=False,
                **common,
                on_failure="ignore",
            ),
            jaxopt.GradientDescent(
                ridge_aux, has_aux=True, stepsize=schedule, acceleration=False, **common
            ),
        )
    if name == "ProximalGradient-l1":
        return (
            solvers.ProximalGradient(
                ridge_vg, prox.l1, True, False, 0.02, **common, on_failure="ignore"
            ),
            jaxopt.ProximalGradient(ridge_vg, jaxopt.prox.prox_lasso, True, False, 0.02, **common),
        )
    assert name == "ProjectedGradient-schedule"
    # JAXopt with both value_and_grad and has_aux stores the gradient as the first state's aux
    # (its init_state unpacks ((value, aux), grad) as (_, aux)), and its run then fails on
    # a dict aux: the same problem with has_aux alone there.
    return (
        solvers.ProjectedGradient(
            ridge_vg_aux,
            projections.non_negative,
            True,
            True,
            schedule,
            **common,
            on_failure="ignore",
        ),
        jaxopt.ProjectedGradient(
            ridge_aux, jaxopt.projection.projection_non_negative, False, True, schedule, **common
        ),
    )


FIXED = [
    "LBFGS-fixed",
    "LBFGS-schedule-no-gamma",
    "GradientDescent-accelerated",
    "GradientDescent-schedule",
    "ProximalGradient-l1",
    "ProjectedGradient-schedule",
]


@pytest.mark.parametrize("name", FIXED)
def test_fixed_and_scheduled_steps_give_jaxopts_iterates(name):
    ours, theirs = _fixed_step_pair(name)
    hyper = (0.3,) if "Proximal" in name else (None,) if "Projected" in name else ()

    @jax.jit
    def case(lam):
        return ours.run(X0, *hyper, lam), theirs.run(X0, *hyper, lam)

    (params, state), (want, their_state) = case(LAM)
    assert int(state.iter_num) == 12
    assert_tree_allclose(params, want, rtol=1e-12, atol=1e-13)
    if name.startswith("GradientDescent"):
        # Ours: aux where the state's f and ∇f are, x itself without acceleration; JAXopt's
        # GradientDescent keeps aux of the iterate before the last step.
        if state.aux is not None:
            assert_tree_allclose(state.aux, {"residual": X @ params - Y}, rtol=1e-12, atol=1e-13)
    else:
        assert_tree_allclose(state.aux, their_state.aux, rtol=1e-12, atol=1e-13)


def test_linesearch_init_rules_are_jaxopts():
    # The first trial of each search from the last step, for each of JAXopt's strategies.
    from jaxopt._src.linesearch_util import _init_stepsize

    for strategy in ("increase", "max", "current"):
        for previous in (1e-7, 0.3, 0.9):
            ours = first_trial(
                strategy,
                jnp.asarray(previous),
                max_stepsize=1.0,
                min_stepsize=1e-6,
                increase_factor=1.5,
            )
            theirs = _init_stepsize(strategy, 1.0, 1e-6, 1.5, jnp.asarray(previous))
            np.testing.assert_allclose(ours, theirs, rtol=1e-15)


@pytest.mark.parametrize("strategy", ["increase"])
def test_linesearch_init_follows_jaxopt(strategy):
    ours = solvers.LBFGS(ridge, linesearch_init=strategy, tol=1e-8)
    theirs = jaxopt.LBFGS(ridge, linesearch_init=strategy, tol=1e-8)

    @jax.jit
    def case(lam):
        return ours.run(X0, lam), theirs.run(X0, lam)

    (params, state), (want, their_state) = case(LAM)
    # The same first trials from the same steps: the same iterations (the zoom searches agree
    # on this quadratic), and the same solution.
    assert int(state.iter_num) == int(their_state.iter_num)
    assert_tree_allclose(params, want, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(state.stepsize, their_state.stepsize, rtol=1e-6)


def rosenbrock(x, a):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2)


@pytest.mark.parametrize("method", ["fletcher-reeves", "polak-ribiere", "hestenes-stiefel"])
def test_nonlinear_cg_methods_reach_jaxopts_solution(method):
    # The iterates differ: our method restarts (every n steps, or when successive gradients
    # are far from orthogonal) and our zoom uses c2 = 0.1. JAXopt's reaches the same minimizer
    # but not tol: it divides β by max(gᵀg, 1e-6), so once ‖g‖ < 1e-3 its β is too small and it
    # crawls (‖g‖ ≈ 5e-5 after 2000 iterations with polak-ribiere). Side by side for the
    # default method (compiling JAXopt's is the cost of this file), the minimizer for all.
    ours = solvers.NonlinearCG(rosenbrock, method=method, tol=1e-9, maxiter=2000)
    start = jnp.array([-1.2, 1.0, 0.8])

    @jax.jit
    def case(a):
        if method != "polak-ribiere":
            return ours.run(start, a), jnp.ones(3)
        return ours.run(start, a), jaxopt.NonlinearCG(rosenbrock, tol=1e-9, maxiter=2000).run(
            start, a
        ).params

    (params, state), want = case(1.0)
    assert bool(state.converged)
    assert_tree_allclose(params, jnp.ones(3), rtol=1e-8, atol=1e-8)
    assert_tree_allclose(params, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("cls, stepsize", [(solvers.LBFGS, 0.5), (solvers.GradientDescent, 0.02)])
def test_unrolled_fixed_step_differentiates_to_the_closed_form(cls, stepsize):
    solver = cls(
        ridge_vg_aux,
        value_and_grad=True,
        has_aux=True,
        stepsize=stepsize,
        implicit_diff=False,
        maxiter=600,
        tol=1e-12,
    )

    @jax.jit
    def case(lam):
        return jax.grad(lambda lam: jnp.sum(solver.run(X0, lam).params ** 2))(lam)

    assert_tree_allclose(case(LAM), jax.grad(loss_closed)(LAM), rtol=1e-8, atol=1e-10)


def test_lbfgsb_has_aux_and_bounds_as_jaxopt():
    # Side by side with JAXopt's ProjectedGradient on the same box (compiling JAXopt's LBFGSB
    # takes 6-8 s; the box-constrained minimizer and aux there are the same).
    bounds = (jnp.zeros(4), jnp.full(4, 0.2))
    ours = solvers.LBFGSB(ridge_vg_aux, True, True, tol=1e-10)
    theirs = jaxopt.ProjectedGradient(
        ridge_aux, jaxopt.projection.projection_box, False, True, tol=1e-12, maxiter=5000
    )

    @jax.jit
    def case(lam):
        return ours.run(X0, bounds, lam), theirs.run(X0, bounds, lam)

    (params, state), (want, _) = case(LAM)
    assert bool(state.converged)
    assert_tree_allclose(params, want, rtol=1e-7, atol=1e-8)  # JAXopt's: ~2e-9 from converged
    assert_tree_allclose(state.aux, ridge_aux(want, LAM)[1], rtol=1e-7, atol=1e-8)


REFUSED = [
    (solvers.BFGS, "stop_if_linesearch_fails", "state.status"),  # JAXopt's BFGS lacks it too
    (solvers.GradientDescent, "prox", "ProximalGradient"),
]


@pytest.mark.parametrize(
    "cls, option, alternative", REFUSED, ids=[f"{c.__name__}-{o}" for c, o, _ in REFUSED]
)
def test_unsupported_jaxopt_options_name_the_alternative(cls, option, alternative):
    with pytest.raises(TypeError, match=rf"{option}=.*{alternative}"):
        cls(ridge, **{option: 1})


BAD = [
    (solvers.LBFGS, dict(value_and_grad="yes"), "value_and_grad"),
    (solvers.GradientDescent, dict(has_aux=1), "has_aux"),
    (solvers.BFGS, dict(linesearch_init="double"), "linesearch_init"),
    (solvers.LBFGS, dict(stepsize=-1.0), "stepsize"),
    (solvers.LBFGS, dict(use_gamma=1), "use_gamma"),
    (solvers.NonlinearCG, dict(min_stepsize=-1.0), "min_stepsize"),
    (solvers.GradientDescent, dict(decrease_factor=1.0), "decrease_factor"),
    (solvers.ProximalGradient, dict(maxls=0), "maxls"),
    (solvers.LBFGSB, dict(linesearch="more-thuente"), "linesearch"),
]


@pytest.mark.parametrize("cls, options, option", BAD, ids=[f"{c.__name__}-{o}" for c, _, o in BAD])
def test_bad_option_values_name_the_option(cls, options, option):
    with pytest.raises((TypeError, ValueError), match=option):
        cls(ridge, **options)


def test_jaxopt_positional_order():
    assert solvers.LBFGS(ridge, True, True).value_and_grad is True
    assert solvers.NonlinearCG(ridge, False, True).has_aux is True
    solver = solvers.ProximalGradient(ridge, prox.l1, True, True, 0.5)
    assert (solver.prox, solver.value_and_grad, solver.has_aux, solver.stepsize) == (
        prox.l1,
        True,
        True,
        0.5,
    )
    solver = solvers.ProjectedGradient(ridge, projections.box, False, True, 0.5)
    assert (solver.has_aux, solver.stepsize) == (True, 0.5)


def test_has_aux_with_a_bare_value_names_has_aux():
    with pytest.raises(TypeError, match="has_aux"):
        solvers.LBFGS(ridge, has_aux=True, jit=False).run(X0, LAM)
