"""The solver protocol (OptStep, init_state/update, jit cache, unrolling) on GradientDescent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose, compilations
from problems import ridge_objective
from problems import ridge_solution as ridge_closed_form

from implicitdiff.solvers import GradientDescent, OptStep

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(30, 5)))
Y = jnp.asarray(RNG.normal(size=30))


STEP = 1.0 / (np.linalg.norm(np.asarray(X), 2) ** 2 + 3.0)
SOLVERS = {
    "fixed_step": dict(stepsize=STEP),
    "backtracking": dict(),
}


@pytest.mark.parametrize("options", SOLVERS.values(), ids=SOLVERS.keys())
def test_converges_to_closed_form(options):
    solver = GradientDescent(fun=ridge_objective, tol=1e-10, maxiter=5000, **options)
    result = solver.run(jnp.zeros(5), 1.0, X, Y)
    params, state = result  # unpacks, and has attributes
    assert isinstance(result, OptStep) and result.params is params and result.state is state
    assert bool(state.converged) and state.error <= 1e-10 and 0 < int(state.iter_num) < 5000
    assert_tree_allclose(params, ridge_closed_form(1.0, X, Y), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("implicit_diff", [True, False], ids=["implicit", "unrolled"])
@pytest.mark.parametrize("options", SOLVERS.values(), ids=SOLVERS.keys())
def test_hypergradients_match_closed_form(options, implicit_diff):
    solver = GradientDescent(
        fun=ridge_objective, tol=1e-10, maxiter=6000, implicit_diff=implicit_diff, **options
    )

    def loss(lam, X):
        return jnp.sum(solver.run(jnp.zeros(5), lam, X, Y).params ** 2)

    def loss_closed(lam, X):
        return jnp.sum(ridge_closed_form(lam, X, Y) ** 2)

    got = jax.jit(jax.grad(loss, (0, 1)))(1.0, X)
    want = jax.grad(loss_closed, (0, 1))(1.0, X)
    assert_tree_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_unrolled_with_checkpoint_equals_unrolled():
    kwargs = dict(fun=ridge_objective, stepsize=STEP, maxiter=50, implicit_diff=False)
    plain, checkpointed = (
        GradientDescent(**kwargs),
        GradientDescent(**kwargs, unroll_checkpoint=True),
    )
    grads = [
        jax.grad(lambda lam, s=s: jnp.sum(s.run(jnp.zeros(5), lam, X, Y).params))(1.0)
        for s in (plain, checkpointed)
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)


def test_unrolled_truncated_gradient_is_the_derivative_of_the_iterate():
    # 5 fixed steps from 0: x_5(λ) is a polynomial map; its derivative by finite differences.
    solver = GradientDescent(
        fun=ridge_objective, stepsize=STEP, maxiter=5, tol=0.0, implicit_diff=False
    )

    def x5(lam):
        return jnp.sum(solver.run(jnp.zeros(5), lam, X, Y).params)

    eps = 1e-6
    fd = (x5(1.0 + eps) - x5(1.0 - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(x5)(1.0), fd, rtol=1e-6)


def test_no_recompilation_on_repeated_calls():
    solver = GradientDescent(fun=ridge_objective, stepsize=STEP, tol=1e-10, maxiter=5000)
    init, X2 = jnp.zeros(5), 0.5 * X  # (STEP is stable for X and smaller data)
    solver.run(init, 0.5, X, Y)
    solver.run(init, 0.7, X, Y)  # any first-call eager work done
    cases = [(lam, data, ridge_closed_form(lam, data, Y)) for lam, data in ((1.0, X), (2.0, X2))]
    with compilations() as compiled:
        solutions = [solver.run(init, lam, data, Y).params for lam, data, _ in cases]
    assert compiled == []
    for w, (_, _, expected) in zip(solutions, cases, strict=True):
        np.testing.assert_allclose(w, expected, rtol=1e-8, atol=1e-10)


def test_vmap_and_jit_of_run_and_gradient():
    solver = GradientDescent(fun=ridge_objective, stepsize=STEP, tol=1e-10, maxiter=5000)
    lams = jnp.array([0.5, 1.0, 4.0])
    batched = jax.jit(jax.vmap(lambda lam: solver.run(jnp.zeros(5), lam, X, Y).params))(lams)
    assert_tree_allclose(
        batched, jax.vmap(lambda l: ridge_closed_form(l, X, Y))(lams), rtol=1e-9, atol=1e-11
    )
    grads = jax.vmap(jax.grad(lambda lam: jnp.sum(solver.run(jnp.zeros(5), lam, X, Y).params)))(
        lams
    )
    want = jax.vmap(jax.grad(lambda lam: jnp.sum(ridge_closed_form(lam, X, Y))))(lams)
    np.testing.assert_allclose(grads, want, rtol=1e-7)


def test_pytree_params_and_static_arguments():
    def objective(params, data, penalty):
        w, b = params["w"], params["b"]
        r = data["X"] @ w + b - data["y"]
        reg = jnp.sum(w**2) if penalty == "l2" else jnp.sum(jnp.abs(w))
        return 0.5 * jnp.sum(r**2) + 0.5 * reg

    solver = GradientDescent(fun=objective, tol=1e-9, maxiter=5000)
    params, _ = solver.run({"w": jnp.zeros(5), "b": 0.0}, {"X": X, "y": Y}, "l2")
    Xa = jnp.concatenate([X, jnp.ones((30, 1))], axis=1)
    z = jnp.linalg.solve(Xa.T @ Xa + jnp.diag(jnp.r_[jnp.ones(5), 0.0]), Xa.T @ Y)
    assert_tree_allclose(params, {"b": z[-1], "w": z[:5]}, rtol=1e-7, atol=1e-9)


def test_init_state_and_update_drive_the_loop():
    solver = GradientDescent(fun=ridge_objective, stepsize=STEP)
    params = jnp.zeros(5)
    state = solver.init_state(params, 1.0, X, Y)
    update = jax.jit(solver.update)
    for _ in range(3000):
        params, state = update(params, state, 1.0, X, Y)
    assert state.iter_num == 3000 and state.error < 1e-8
    assert_tree_allclose(params, ridge_closed_form(1.0, X, Y), rtol=1e-7)


def test_maxiter_exhausted_is_not_converged():
    solver = GradientDescent(fun=ridge_objective, stepsize=STEP, maxiter=3, tol=1e-12)
    _, state = solver.run(jnp.zeros(5), 1.0, X, Y)
    assert int(state.iter_num) == 3 and not bool(state.converged)


def test_nonfinite_iterates_are_not_converged():
    solver = GradientDescent(fun=ridge_objective, stepsize=10.0, maxiter=2000, tol=1e-6)
    _, state = solver.run(jnp.zeros(5), 1.0, X, Y)
    assert not bool(state.converged)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(fun=None), "fun must be callable"),
        (dict(fun=ridge_objective, maxiter=-1), "maxiter must be an int ≥ 0"),
        (dict(fun=ridge_objective, tol=-1.0), "tol must be a non-negative number"),
        (dict(fun=ridge_objective, stepsize=-0.1), "stepsize must be ≥ 0"),
        # The step search grows the last accepted step by increase_factor: below 1 (or not a
        # number) it is refused, as by ProximalGradient (it used to be accepted silently).
        (dict(fun=ridge_objective, increase_factor=0.5), "increase_factor must be ≥ 1"),
        (dict(fun=ridge_objective, increase_factor="2"), "increase_factor must be a real number"),
        (dict(fun=ridge_objective, maxls=True), "maxls must be an int, got True"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        GradientDescent(**options)
