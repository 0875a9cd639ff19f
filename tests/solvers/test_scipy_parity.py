"""JAXopt parity of the SciPy wrappers (issue 13): ScipyLeastSquares' robust losses and
f_scale, ScipyBoundedLeastSquares, ScipyMinimize's callback and state.hess_inv.

Solutions are compared with JAXopt 0.8.5 on the same inputs; derivatives with central finite
differences of the host solve (float64), since JAXopt's derivative is wrong for the huber loss
(see test_jaxopt_huber_derivative_is_wrong_for_large_negative_residuals)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import solvers as S

jaxopt = pytest.importorskip("jaxopt")
pytest.importorskip("scipy")

X = jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 3.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
Y = jnp.array([1.0, -2.0, 3.0, 0.5, -4.0])
LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")
TOL = {"ftol": 1e-14, "xtol": 1e-14, "gtol": 1e-14}


def residual(w, X, y):
    return X @ w - y


def objective(w, X, y):
    return 0.5 * jnp.sum(residual(w, X, y) ** 2) + 0.1 * jnp.sum(w**4)


def _central_jacobian(solve, y, h=1e-5):
    """∂ solve(y) / ∂y by central differences, column by column."""
    y = np.asarray(y)
    cols = []
    for i in range(y.size):
        e = np.zeros_like(y)
        e[i] = h
        cols.append((np.asarray(solve(y + e)) - np.asarray(solve(y - e))) / (2 * h))
    return np.stack(cols, axis=-1)


def _polished(solver, loss, f_scale=0.7, bounds=None):
    """y -> the host solution refined by Newton steps on SciPy's cost (SciPy stops at a
    gradient of ~1e-9 on the nonconvex losses, too coarse for finite differences)."""
    rho = {
        "linear": lambda z: z**2,
        "soft_l1": lambda z: 2.0 * (jnp.sqrt(1.0 + z**2) - 1.0),
        "huber": lambda z: jnp.where(jnp.abs(z) <= 1.0, z**2, 2.0 * jnp.abs(z) - 1.0),
        "cauchy": lambda z: jnp.log1p(z**2),
        "arctan": lambda z: jnp.arctan(z**2),
    }[loss]

    def cost(w, y):  # SciPy's definition: ½·f²·Σ ρ(r²/f²)
        return 0.5 * f_scale**2 * jnp.sum(rho(residual(w, X, y) / f_scale))

    @jax.jit
    def newton(w, y, free):  # on the free coordinates; the active ones stay on their bound
        for _ in range(3):
            hessian = jnp.where(free[:, None] & free[None, :], jax.hessian(cost)(w, y), 0.0)
            hessian = hessian + jnp.diag(jnp.where(free, 0.0, 1.0))
            w = w - jnp.linalg.solve(hessian, jnp.where(free, jax.grad(cost)(w, y), 0.0))
        return w

    def solve(y, lower=None, upper=None):
        y = jnp.asarray(y)
        if bounds is None:
            w = solver.run(jnp.zeros(3), X, y).params
            return newton(w, y, jnp.ones(3, bool))
        lower = bounds[0] if lower is None else jnp.asarray(lower)
        upper = bounds[1] if upper is None else jnp.asarray(upper)
        w = solver.run(jnp.zeros(3), (lower, upper), X, y).params
        return newton(w, y, ~(jnp.isclose(w, lower) | jnp.isclose(w, upper)))

    return solve


# ---------------------------------------------------------------------------------------------
# ScipyLeastSquares(loss=..., options={"f_scale": ...}).


@pytest.mark.parametrize("loss", LOSSES)
def test_robust_loss_matches_jaxopt_and_finite_differences(loss):
    options = {"f_scale": 0.7}
    solver = S.ScipyLeastSquares(residual_fun=residual, loss=loss, tol=1e-14, options=options)
    reference = jaxopt.ScipyLeastSquares(
        method="trf", fun=residual, loss=loss, options={**options, **TOL}
    )

    @jax.jit
    def solve_and_jacobian(y):
        w, state = solver.run(jnp.zeros(3), X, y)
        return w, state, jax.jacrev(lambda v: solver.run(jnp.zeros(3), X, v).params)(y)

    w, state, jac = solve_and_jacobian(Y)
    w_ref, info_ref = reference.run(jnp.zeros(3), X, Y)
    np.testing.assert_allclose(w, w_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(state.value, info_ref.cost_val, rtol=1e-10)  # SciPy's cost
    assert bool(state.converged) and float(state.error) < 1e-7
    fd = _central_jacobian(_polished(solver, loss), Y)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-8)


def test_jaxopt_huber_derivative_is_wrong_for_large_negative_residuals():
    """JAXopt's huber is z² for every z ≤ 1, negative z included: with a residual below
    −f_scale its optimality condition is not the gradient of SciPy's cost, and its derivative
    is off. Ours matches finite differences (the previous test); here JAXopt does not."""
    options = {"f_scale": 0.7}
    reference = jaxopt.ScipyLeastSquares(
        method="trf", fun=residual, loss="huber", options={**options, **TOL}
    )
    w_ref = reference.run(jnp.zeros(3), X, Y).params
    assert float(jnp.min(residual(w_ref, X, Y))) < -0.7  # a large negative residual
    jac_ref = jax.jacrev(lambda v: reference.run(jnp.zeros(3), X, v).params)(Y)
    solver = S.ScipyLeastSquares(residual_fun=residual, loss="huber", tol=1e-14, options=options)
    fd = _central_jacobian(_polished(solver, "huber"), Y)
    assert np.max(np.abs(np.asarray(jac_ref) - fd)) > 1e-2


# ---------------------------------------------------------------------------------------------
# ScipyBoundedLeastSquares.

LOWER = jnp.array([-0.5, -0.2, 0.0])
UPPER = jnp.array([0.5, 1.0, 0.6])


@pytest.mark.parametrize("loss", ["linear", "soft_l1"])
def test_bounded_least_squares_matches_jaxopt_and_finite_differences(loss):
    solver = S.ScipyBoundedLeastSquares(residual_fun=residual, loss=loss, tol=1e-14)
    reference = jaxopt.ScipyBoundedLeastSquares(
        method="trf", fun=residual, loss=loss, options=dict(TOL)
    )

    @jax.jit
    def solve_and_jacobians(y, lower, upper):
        def sol(y, lower, upper):
            return solver.run(jnp.zeros(3), (lower, upper), X, y).params

        return solver.run(jnp.zeros(3), (lower, upper), X, y), jax.jacrev(sol, (0, 1, 2))(
            y, lower, upper
        )

    (w, state), (d_y, d_lower, d_upper) = solve_and_jacobians(Y, LOWER, UPPER)
    w_ref, _ = reference.run(jnp.zeros(3), (LOWER, UPPER), X, Y)
    np.testing.assert_allclose(w, w_ref, rtol=1e-8, atol=1e-10)
    assert bool(state.converged)
    active = np.isclose(w, LOWER) | np.isclose(w, UPPER)
    assert active.any() and not active.all()  # some bounds active, some coordinates free
    np.testing.assert_array_equal(np.asarray(d_y)[active], 0.0)  # fixed on an active bound
    solve = _polished(solver, loss, 1.0, (LOWER, UPPER))
    fd_y = _central_jacobian(solve, Y)
    np.testing.assert_allclose(d_y, fd_y, rtol=1e-5, atol=1e-7)
    fd_lower = _central_jacobian(lambda lo: solve(Y, lower=lo), LOWER)
    fd_upper = _central_jacobian(lambda up: solve(Y, upper=up), UPPER)
    np.testing.assert_allclose(d_lower, fd_lower, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_upper, fd_upper, rtol=1e-5, atol=1e-7)


def test_bounded_least_squares_vmap_and_infeasible_start():
    solver = S.ScipyBoundedLeastSquares(residual_fun=residual, tol=1e-14)
    ys = jnp.stack([Y, 2.0 * Y])
    run = jax.jit(jax.vmap(lambda y: solver.run(jnp.full(3, 5.0), (LOWER, UPPER), X, y).params))
    for w, y in zip(run(ys), ys, strict=True):
        w_ref = solver.run(jnp.zeros(3), (LOWER, UPPER), X, y).params
        np.testing.assert_allclose(w, w_ref, rtol=1e-8, atol=1e-10)
        assert np.all((w >= LOWER) & (w <= UPPER))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: S.ScipyLeastSquares(residual_fun=residual, loss="l1"), ValueError, "loss"),
        (
            lambda: S.ScipyLeastSquares(residual_fun=residual, method="lm", loss="huber"),
            ValueError,
            "'lm'",
        ),
        (
            lambda: S.ScipyLeastSquares(residual_fun=residual, options={"f_scale": -1.0}),
            ValueError,
            "f_scale",
        ),
        (lambda: S.ScipyBoundedLeastSquares(residual_fun=residual, method="lm"), ValueError, "lm"),
        (lambda: S.ScipyMinimize(fun=objective, callback=3), TypeError, "callback"),
    ],
)
def test_bad_options_raise_naming_the_option(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bounded_least_squares_bad_bounds_name_bounds():
    solver = S.ScipyBoundedLeastSquares(residual_fun=residual)
    with pytest.raises(ValueError, match="bounds"):
        solver.run(jnp.zeros(3), (UPPER, LOWER), X, Y)
    with pytest.raises(TypeError, match="bound"):
        solver.run(jnp.zeros(3), (None, UPPER), X, Y)


# ---------------------------------------------------------------------------------------------
# ScipyMinimize(callback=...) and state.hess_inv.


def pytree_objective(p, X, y):
    return objective(p["w"], X, y)


@pytest.mark.parametrize("method", ["BFGS", "L-BFGS-B"])
def test_callback_and_hess_inv_match_jaxopt(method):
    """The same iterates reach the callback (as a pytree like the params) and the same inverse
    Hessian comes back as JAXopt's (a dense matrix for L-BFGS-B's operator)."""
    ours, theirs = [], []
    options = {"gtol": 1e-10, "ftol": 1e-10} if method == "L-BFGS-B" else {"gtol": 1e-10}
    solver = S.ScipyMinimize(
        fun=pytree_objective,
        method=method,
        tol=1e-10,
        options=dict(options),  # maxiter: 500 by default, as JAXopt's
        callback=lambda p: ours.append(np.asarray(p["w"])),
    )
    reference = jaxopt.ScipyMinimize(
        fun=pytree_objective,
        method=method,
        tol=1e-10,
        options=dict(options),
        callback=lambda p: theirs.append(np.asarray(p["w"])),
    )
    params = {"w": jnp.zeros(3)}
    w, state = jax.jit(solver.run)(params, X, Y)
    w_ref, info = reference.run(params, X, Y)
    np.testing.assert_allclose(w["w"], w_ref["w"], rtol=1e-8, atol=1e-10)
    assert len(ours) == len(theirs) > 2
    np.testing.assert_allclose(np.stack(ours), np.stack(theirs), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours[-1], w["w"], rtol=1e-12)
    expected = info.hess_inv if method == "BFGS" else info.hess_inv.todense()
    np.testing.assert_allclose(state.hess_inv, expected, rtol=1e-8, atol=1e-10)
    if method == "BFGS":  # close to the true inverse Hessian at the minimum
        hessian = jax.hessian(objective)(w["w"], X, Y)
        np.testing.assert_allclose(state.hess_inv, jnp.linalg.inv(hessian), rtol=5e-2, atol=5e-3)


def test_hess_inv_is_none_for_other_methods():
    state = S.ScipyMinimize(fun=objective, method="Newton-CG").run(jnp.zeros(3), X, Y).state
    assert state.hess_inv is None
