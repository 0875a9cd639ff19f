"""GaussNewton and LevenbergMarquardt: solutions against SciPy and closed forms, derivatives
(implicit and unrolled) against finite differences of SciPy's solution and the closed form,
jit/vmap, options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import assert_tree_allclose
from jax.flatten_util import ravel_pytree

from implicitdiff import optimality, tree
from implicitdiff.solvers.least_squares import GaussNewton, LevenbergMarquardt

RNG = np.random.default_rng(0)

# -- problems: residual r(x, data, y); the derivative is taken with respect to the data y ------

SUBSTRATE = jnp.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
TIMES = jnp.linspace(0.0, 2.0, 9)
DESIGN = jnp.asarray(RNG.normal(size=(8, 3)))


def michaelis_menten(p, s, y):
    return p[0] * s / (p[1] + s) - y


def exponential(p, t, y):  # a pytree of parameters
    return p["scale"] * jnp.exp(p["rate"] * t) - y


def linear(x, A, y):
    return A @ x - y


PROBLEMS = {
    "michaelis_menten": dict(
        residual=michaelis_menten,
        data=SUBSTRATE,
        y=2.0 * SUBSTRATE / (1.5 + SUBSTRATE) + 0.05 * jnp.asarray(RNG.normal(size=7)),
        init=jnp.array([1.0, 1.0]),
    ),
    "exponential": dict(
        residual=exponential,
        data=TIMES,
        y=1.5 * jnp.exp(-0.8 * TIMES) + 0.02 * jnp.asarray(RNG.normal(size=9)),
        init={"scale": jnp.asarray(1.0), "rate": jnp.asarray(0.0)},
    ),
    "linear": dict(
        residual=linear,
        data=DESIGN,
        y=jnp.asarray(RNG.normal(size=8)),
        init=jnp.zeros(3),
    ),
}
SOLVERS = {"gauss_newton": GaussNewton, "levenberg_marquardt": LevenbergMarquardt}
TOL = 1e-10


@functools.cache
def make_solver(solver_name, problem_name, **options):
    """One instance per configuration, so that its compiled run is reused across tests."""
    options = {"tol": TOL, **options}
    return SOLVERS[solver_name](residual_fun=PROBLEMS[problem_name]["residual"], **options)


@functools.cache
def scipy_problem(problem_name):
    """The flat residual and its Jacobian, compiled once, for SciPy."""
    problem = PROBLEMS[problem_name]
    flat_init, unravel = ravel_pytree(problem["init"])
    residual = jax.jit(lambda x, y: problem["residual"](unravel(x), problem["data"], y))
    return flat_init, residual, jax.jit(jax.jacfwd(residual))


def scipy_solution(problem_name, y):
    """SciPy's MINPACK Levenberg–Marquardt with the exact Jacobian and tolerances at 1e-15."""
    flat_init, residual, jacobian = scipy_problem(problem_name)
    result = scipy.optimize.least_squares(
        lambda x: np.asarray(residual(x, y)),
        np.asarray(flat_init),
        jac=lambda x: np.asarray(jacobian(x, y)),
        method="lm",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert result.success
    return result.x


@functools.cache
def reference(problem_name):
    """The solution (flat, by SciPy or in closed form for the linear problem)."""
    problem = PROBLEMS[problem_name]
    if problem_name == "linear":
        return np.linalg.lstsq(np.asarray(problem["data"]), np.asarray(problem["y"]), rcond=None)[0]
    return scipy_solution(problem_name, np.asarray(problem["y"]))


def closed_form_jacobian(problem_name, x):
    """dx*/dy = H⁻¹Jᵀ (implicit function theorem on Jᵀr = 0, ∂(Jᵀr)/∂y = −Jᵀ), with
    H = JᵀJ + Σₖ rₖ∇²rₖ, every derivative of r written out by hand (no autodiff)."""
    problem = PROBLEMS[problem_name]
    data, y = np.asarray(problem["data"]), np.asarray(problem["y"])
    if problem_name == "linear":
        return np.linalg.solve(data.T @ data, data.T)
    if problem_name == "michaelis_menten":  # r = V s / (K + s) − y
        v, k = x
        q = data / (k + data)
        r = v * q - y
        jac = np.stack([q, -v * q / (k + data)], axis=1)
        second = [[0 * q, -q / (k + data)], [-q / (k + data), 2 * v * q / (k + data) ** 2]]
    else:  # r = a exp(b t) − y, x = (rate, scale) in the flattened (sorted-key) order
        b, a = x
        e = np.exp(b * data)
        r = a * e - y
        jac = np.stack([a * data * e, e], axis=1)
        second = [[a * data**2 * e, data * e], [data * e, 0 * e]]
    hessian = jac.T @ jac + np.array([[r @ second[i][j] for j in range(2)] for i in range(2)])
    return np.linalg.solve(hessian, jac.T)


@functools.cache
def finite_difference_jacobian(problem_name, eps=1e-3):
    """Central differences of SciPy's solution in each y_j. SciPy stops when the relative
    decrease of ‖r‖² falls below its ftol ≥ machine epsilon, which leaves its solutions ~1e-9
    from the minimum: hence a large eps, and a tolerance of 1e-4 for this comparison."""
    y = np.asarray(PROBLEMS[problem_name]["y"])
    columns = []
    for j in range(y.size):
        e = np.zeros_like(y)
        e[j] = eps
        plus, minus = scipy_solution(problem_name, y + e), scipy_solution(problem_name, y - e)
        columns.append((plus - minus) / (2 * eps))
    return np.stack(columns, axis=1)


def flat(x):
    return ravel_pytree(x)[0]


def solve(solver, problem_name, y=None):
    problem = PROBLEMS[problem_name]
    y = problem["y"] if y is None else y
    return solver.run(problem["init"], problem["data"], y)


def loss(solver, problem_name, y):
    """A scalar of the solution, to differentiate with respect to y."""
    x = flat(solve(solver, problem_name, y).params)
    return jnp.sum(jnp.arange(1.0, x.size + 1) * x) + jnp.sum(x**2)


# -- solutions ------------------------------------------------------------------------------


@pytest.mark.parametrize("problem_name", PROBLEMS)
@pytest.mark.parametrize("solver_name", SOLVERS)
def test_converges_to_reference(solver_name, problem_name):
    problem = PROBLEMS[problem_name]
    params, state = solve(make_solver(solver_name, problem_name), problem_name)
    expected = reference(problem_name)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(problem["init"])
    np.testing.assert_allclose(flat(params), expected, rtol=1e-9, atol=1e-11)
    assert bool(state.converged) and float(state.error) <= TOL
    # state.error is ‖Jᵀr‖ at the returned parameters
    gradient = optimality.least_squares(problem["residual"])(params, problem["data"], problem["y"])
    np.testing.assert_allclose(float(state.error), float(tree.norm(gradient)), rtol=1e-3)
    r = problem["residual"](params, problem["data"], problem["y"])
    np.testing.assert_allclose(float(state.value), 0.5 * float(jnp.sum(r**2)), rtol=1e-12)


def test_gauss_newton_is_one_step_on_linear_problems():
    params, state = solve(make_solver("gauss_newton", "linear"), "linear")
    assert int(state.iter_num) == 1  # the normal equations, solved exactly in one step
    np.testing.assert_allclose(params, reference("linear"), rtol=1e-12)


def test_levenberg_marquardt_from_a_poor_start():
    """From (0.1, 10) Gauss–Newton runs off to infinity (Km → ∞); LM's damping brings it in."""
    solver = make_solver("levenberg_marquardt", "michaelis_menten")
    problem = PROBLEMS["michaelis_menten"]
    params, state = solver.run(jnp.array([0.1, 10.0]), problem["data"], problem["y"])
    assert bool(state.converged)
    np.testing.assert_allclose(params, reference("michaelis_menten"), rtol=1e-9)


# -- derivatives ----------------------------------------------------------------------------


@pytest.mark.parametrize("problem_name", PROBLEMS)
@pytest.mark.parametrize("solver_name", SOLVERS)
def test_jacobian_wrt_data(solver_name, problem_name):
    """Implicit Jacobian of the fitted parameters with respect to y, against the closed form
    H⁻¹Jᵀ at SciPy's solution (pinv A for the linear problem) and, for the nonlinear problems,
    central differences of SciPy's solution."""
    solver = make_solver(solver_name, problem_name)
    got = jax.jacobian(lambda y: flat(solve(solver, problem_name, y).params))(
        PROBLEMS[problem_name]["y"]
    )
    expected = closed_form_jacobian(problem_name, reference(problem_name))
    rtol = 1e-10 if problem_name == "linear" else 1e-7
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    if problem_name != "linear":
        fd = finite_difference_jacobian(problem_name)
        np.testing.assert_allclose(got, fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())


def test_gauss_newton_and_levenberg_marquardt_agree():
    problem_name = "michaelis_menten"
    gn, lm = (make_solver(name, problem_name) for name in SOLVERS)
    y = PROBLEMS[problem_name]["y"]
    assert_tree_allclose(solve(gn, problem_name).params, solve(lm, problem_name).params, rtol=1e-10)
    grads = [jax.grad(lambda y, s=s: loss(s, problem_name, y))(y) for s in (gn, lm)]
    assert_tree_allclose(grads[0], grads[1], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("problem_name", PROBLEMS)
@pytest.mark.parametrize("solver_name", SOLVERS)
def test_unrolled_matches_implicit(solver_name, problem_name):
    implicit = make_solver(solver_name, problem_name)
    checkpoint = (solver_name, problem_name) == ("levenberg_marquardt", "michaelis_menten")
    # tol=0: all maxiter steps, the tangents converging with the iterates
    unrolled = make_solver(
        solver_name,
        problem_name,
        implicit_diff=False,
        maxiter=30,
        tol=0.0,
        unroll_checkpoint=checkpoint,
    )
    y = PROBLEMS[problem_name]["y"]
    want = jax.grad(lambda y: loss(implicit, problem_name, y))(y)
    got = jax.grad(lambda y: loss(unrolled, problem_name, y))(y)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())


def test_unrolled_levenberg_marquardt_is_finite_through_overflowing_trials():
    """From (0.1, −1) on an exponential growth, several trial steps overflow (exp of a huge
    rate) and are rejected; the unrolled derivative must not pick up their inf (0 · inf)."""
    t = jnp.linspace(0.0, 10.0, 12)
    y = 2.0 * jnp.exp(0.3 * t)
    init = jnp.array([0.1, -1.0])

    def growth(p, t, y):
        return p[0] * jnp.exp(p[1] * t) - y

    solver = LevenbergMarquardt(residual_fun=growth, tol=TOL)
    update = jax.jit(solver.update)
    params, state = init, solver.init_state(init, t, y)
    overflowed = 0
    while not state.error <= TOL:
        params, state = update(params, state, t, y)
        overflowed += int(not state.accepted and state.gain_ratio == -1.0)  # −1: not finite
    assert overflowed >= 1
    np.testing.assert_allclose(params, [2.0, 0.3], rtol=1e-12)
    unrolled = LevenbergMarquardt(residual_fun=growth, tol=TOL, implicit_diff=False, maxiter=30)
    got = jax.grad(lambda y: jnp.sum(unrolled.run(init, t, y).params))(y)
    assert np.all(np.isfinite(got))
    # zero residual at (2, 0.3): dx*/dy = (JᵀJ)⁻¹Jᵀ = pinv(J), J = [e^{bt}, a t e^{bt}]
    e = np.exp(0.3 * np.asarray(t))
    jac = np.stack([e, 2.0 * np.asarray(t) * e], axis=1)
    np.testing.assert_allclose(got, np.linalg.pinv(jac).sum(axis=0), rtol=1e-7, atol=1e-12)


# -- transformations ------------------------------------------------------------------------


@pytest.mark.parametrize("solver_name", SOLVERS)
def test_jit_and_vmap(solver_name):
    problem_name = "michaelis_menten"
    solver = make_solver(solver_name, problem_name)
    ys = PROBLEMS[problem_name]["y"] + 0.01 * jnp.asarray(RNG.normal(size=(3, 7)))

    batched = jax.vmap(lambda y: solve(solver, problem_name, y))(ys)
    grad = jax.jit(jax.grad(lambda y: loss(solver, problem_name, y)))  # jit of the gradient
    batched_grads = jax.jit(jax.vmap(grad))(ys)
    for i, y in enumerate(ys):
        np.testing.assert_allclose(batched.params[i], solve(solver, problem_name, y).params)
        assert bool(batched.state.converged[i])
        np.testing.assert_allclose(batched_grads[i], grad(y), rtol=1e-8, atol=1e-12)
    # the reference of each batch element: SciPy on its own data
    for i in range(len(ys)):
        np.testing.assert_allclose(
            batched.params[i], scipy_solution(problem_name, np.asarray(ys[i])), rtol=1e-9
        )


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: GaussNewton(residual_fun="r"), TypeError, "residual_fun"),
        (lambda: LevenbergMarquardt(residual_fun=None), TypeError, "residual_fun"),
        (lambda: GaussNewton(residual_fun=linear, maxiter=-1), ValueError, "maxiter"),
        (lambda: LevenbergMarquardt(residual_fun=linear, tol=-1.0), ValueError, "tol"),
        (lambda: GaussNewton(residual_fun=linear, solver="svd"), ValueError, "solver"),
        (lambda: LevenbergMarquardt(residual_fun=linear, solver=3), TypeError, "solver"),
        (
            lambda: LevenbergMarquardt(residual_fun=linear, damping_parameter=0.0),
            ValueError,
            "damping_parameter",
        ),
        (
            lambda: LevenbergMarquardt(residual_fun=linear, damping_parameter=-1e-3),
            ValueError,
            "damping_parameter",
        ),
    ],
)
def test_bad_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("solver_name", SOLVERS)
def test_matrix_free_step_solver(solver_name):
    """solver="cg": the step's normal equations by CG on JVP/VJP products (the matrix-free path
    ``auto`` takes above 200 unknowns) gives the same fit."""
    solver = SOLVERS[solver_name](residual_fun=linear, solver="cg", tol=TOL)
    params, state = solve(solver, "linear")
    assert bool(state.converged)
    np.testing.assert_allclose(params, reference("linear"), rtol=1e-9)
