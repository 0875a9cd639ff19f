"""implicitdiff.bilevel.minimize on ridge regression, whose hypergradient has a closed form.

Inner: x*(λ) = argmin_x ½‖X x − y‖² + (λ/2)‖x‖² = (XᵀX + λI)⁻¹Xᵀy, solved by gradient descent.
Outer: L(λ) = ½‖X_v x*(λ) − y_v‖², with dL/dλ = −(X_v x* − y_v)ᵀ X_v (XᵀX + λI)⁻¹ x*
(from dx*/dλ = −(XᵀX + λI)⁻¹ x*).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from implicitdiff import bilevel
from implicitdiff.solvers import GradientDescent

RNG = np.random.default_rng(0)
N, P = 20, 15
X = RNG.normal(size=(N, P))
W_TRUE = RNG.normal(size=P)
Y = X @ W_TRUE + 3.0 * RNG.normal(size=N)
X_VAL = RNG.normal(size=(N, P))
Y_VAL = X_VAL @ W_TRUE + 3.0 * RNG.normal(size=N)

# A fixed step 1/L valid for every λ ≤ 10 the tests visit.
SOLVER = GradientDescent(
    fun=lambda x, lam, X, y: 0.5 * jnp.sum((X @ x - y) ** 2) + 0.5 * lam * jnp.sum(x**2),
    stepsize=1.0 / (np.linalg.norm(X, 2) ** 2 + 10.0),
    tol=1e-11,
    maxiter=20_000,
)


def inner_solve(x0, lam):
    return SOLVER.run(x0, lam, X, Y)


def outer_loss(x, lam):
    return 0.5 * jnp.sum((X_VAL @ x - Y_VAL) ** 2)


def closed_form(lam):
    """(x*(λ), L(λ), dL/dλ) in NumPy."""
    a = X.T @ X + lam * np.eye(P)
    x = np.linalg.solve(a, X.T @ Y)
    residual = X_VAL @ x - Y_VAL
    return x, 0.5 * residual @ residual, -(residual @ X_VAL) @ np.linalg.solve(a, x)


def test_first_step_matches_the_closed_form():
    lam0, lr = 2.0, 0.05
    result = bilevel.minimize(outer_loss, inner_solve, lam0, jnp.zeros(P), optax.sgd(lr), 1)
    x, loss, grad = closed_form(lam0)
    assert set(result.history) == {
        "outer_loss",
        "grad_norm",
        "time",
        "inner_converged",
        "inner_iterations",
    }
    assert all(len(v) == 1 for v in result.history.values())
    np.testing.assert_allclose(result.history["outer_loss"][0], loss, rtol=1e-12)
    np.testing.assert_allclose(result.history["grad_norm"][0], abs(grad), rtol=1e-9)
    # One SGD step: λ₁ = λ₀ − lr · dL/dλ(λ₀), to the precision of the implicit derivative.
    np.testing.assert_allclose(result.hyperparams, lam0 - lr * grad, rtol=1e-11)
    assert abs(lr * grad) > 1e-2  # the step is not negligible: the check above has teeth
    np.testing.assert_allclose(result.inner_params, x, rtol=1e-9, atol=1e-10)
    assert bool(result.history["inner_converged"][0])


def test_a_batch_of_inner_problems_by_vmap():
    """A vmapped inner solve (one problem per task, as in meta-learning; the second task's
    data is the first's scaled by 2, which squares into a different x*): the history holds
    whether all converged and the most iterations (it crashed before, "can only convert an
    array of size 1": the per-task flags went to .item()), and the hypergradient of the summed
    loss is the sum of the tasks' closed forms."""
    Xs, Ys = jnp.stack([X, 2.0 * X]), jnp.stack([Y, Y])
    solver = GradientDescent(
        fun=SOLVER.fun, stepsize=1.0 / (4.0 * np.linalg.norm(X, 2) ** 2 + 10.0), tol=1e-11,
        maxiter=80_000,
    )  # fmt: skip

    def batched_solve(x0, lam):
        return jax.vmap(solver.run, in_axes=(0, None, 0, 0))(x0, lam, Xs, Ys)

    def batched_loss(x, lam):
        return outer_loss(x[0], lam) + outer_loss(x[1], lam)

    lam0, lr = 2.0, 0.01
    result = bilevel.minimize(
        batched_loss, batched_solve, lam0, jnp.zeros((2, P)), optax.sgd(lr), 1
    )
    _, state = batched_solve(jnp.zeros((2, P)), lam0)
    assert bool(result.history["inner_converged"][0])
    assert result.history["inner_iterations"][0] == int(jnp.max(state.iter_num))
    assert int(jnp.min(state.iter_num)) < int(jnp.max(state.iter_num))  # the max has teeth
    grads = []
    for scale in (1.0, 2.0):
        a = scale**2 * X.T @ X + lam0 * np.eye(P)
        x = np.linalg.solve(a, scale * X.T @ Y)
        residual = X_VAL @ x - Y_VAL
        grads.append(-(residual @ X_VAL) @ np.linalg.solve(a, x))
    np.testing.assert_allclose(result.hyperparams, lam0 - lr * sum(grads), rtol=1e-10)


def test_warm_start_reduces_inner_iterations():
    result = bilevel.minimize(outer_loss, inner_solve, 2.0, jnp.zeros(P), optax.sgd(1e-3), 4)
    iterations = result.history["inner_iterations"]
    assert np.all(result.history["inner_converged"])
    # From zeros the first solve runs longest; later solves start at the previous solution
    # (gradient descent converges linearly: the saving is the log of the starting distance).
    assert np.all(iterations[1:] < 0.85 * iterations[0]), iterations
    # A cold start at the last hyperparameters costs about what the first step did.
    _, cold = inner_solve(jnp.zeros(P), result.hyperparams)
    assert int(cold.iter_num) > 1.1 * iterations[-1]


def test_reaches_the_grid_optimum_in_log_space():
    grid = np.linspace(-3.0, 2.3, 5301)  # log λ, step 1e-3, λ ≤ 10 (the solver's step)
    losses = np.array([closed_form(np.exp(g))[1] for g in grid])
    best = grid[np.argmin(losses)]
    assert grid[0] + 0.5 < best < grid[-1] - 0.5  # an interior optimum
    result = bilevel.minimize(
        lambda x, log_lam: outer_loss(x, jnp.exp(log_lam)),
        lambda x0, log_lam: inner_solve(x0, jnp.exp(log_lam)),
        0.0,
        jnp.zeros(P),
        optax.adam(0.1),
        150,
    )
    np.testing.assert_allclose(result.hyperparams, best, atol=5e-3)
    losses_run = result.history["outer_loss"]
    assert losses_run[-1] < losses_run[0]
    np.testing.assert_allclose(losses_run[-1], losses.min(), rtol=1e-6)
    assert result.history["grad_norm"][-1] < 1e-2 * result.history["grad_norm"][0]


def test_optax_lbfgs_gets_the_line_search_arguments():
    """optax.lbfgs()'s update needs value, grad and value_fn (its zoom line search evaluates
    L(θ) at trial points, each an inner solve): it failed before with optax's "missing 3
    required keyword-only arguments". It now reaches the grid optimum in 12 outer steps (adam
    takes 150 above)."""
    grid = np.linspace(-3.0, 2.3, 5301)
    losses = np.array([closed_form(np.exp(g))[1] for g in grid])
    result = bilevel.minimize(
        lambda x, log_lam: outer_loss(x, jnp.exp(log_lam)),
        lambda x0, log_lam: inner_solve(x0, jnp.exp(log_lam)),
        0.0,
        jnp.zeros(P),
        optax.lbfgs(),
        12,
    )
    np.testing.assert_allclose(result.hyperparams, grid[np.argmin(losses)], atol=2e-3)
    np.testing.assert_allclose(result.history["outer_loss"][-1], losses.min(), rtol=1e-6)


def test_step_compiles_once_for_python_numbers_and_pytrees():
    traces = []

    def counting_loss(x, theta):
        traces.append(1)  # runs only while JAX traces the step
        return outer_loss(x, jnp.exp(theta["log_lam"]))

    result = bilevel.minimize(
        counting_loss,
        lambda x0, theta: inner_solve(x0, jnp.exp(theta["log_lam"])),
        {"log_lam": 0.5},  # a Python float: weakly typed, used to compile the step twice
        jnp.zeros(P),
        optax.adam(0.05),
        4,
    )
    assert len(traces) == 1
    assert set(result.hyperparams) == {"log_lam"}
    _, loss, grad = closed_form(np.exp(0.5))
    np.testing.assert_allclose(result.history["outer_loss"][0], loss, rtol=1e-12)
    np.testing.assert_allclose(result.history["grad_norm"][0], abs(grad * np.exp(0.5)), rtol=1e-9)


def test_callback_stop_iteration_ends_early():
    seen = []

    def callback(step, record):
        seen.append((step, record["outer_loss"]))
        if step == 2:
            raise StopIteration

    result = bilevel.minimize(
        outer_loss, inner_solve, 2.0, jnp.zeros(P), optax.sgd(0.01), 10, callback=callback
    )
    assert [s for s, _ in seen] == [0, 1, 2]
    assert len(result.history["outer_loss"]) == 3
    np.testing.assert_allclose(result.history["outer_loss"], [v for _, v in seen])
    assert isinstance(seen[0][1], float)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"num_steps": 2.0}, ValueError, "num_steps"),
        ({"num_steps": True}, ValueError, "num_steps"),
        ({"optimizer": object()}, TypeError, "optimizer"),
        ({"optimizer": optax.sgd}, TypeError, "optimizer"),
        ({"hyperparams": 1}, TypeError, "hyperparams"),
        ({"hyperparams": {"a": jnp.array([1, 2])}}, TypeError, "hyperparams"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, match):
    arguments = {
        "hyperparams": 2.0,
        "optimizer": optax.sgd(0.01),
        "num_steps": 1,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        bilevel.minimize(outer_loss, inner_solve, inner_init=jnp.zeros(P), **arguments)
