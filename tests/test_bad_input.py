"""The bad-input catalog: each case gives a clear error naming the argument, or a flagged result.

One test id per case (``test_bad_input[<case>]``); each case's docstring is its line of the
catalog in docs/failure_modes.md ("input → what the library does"). A flagged result is
asserted exactly: ``state.converged`` False (and OSQP's ``state.status``), NaN in the output, or
a warning of a named class.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import ridge_gradient as ridge_condition
from problems import ridge_objective
from problems import ridge_solution as ridge_closed_form

from implicitdiff import (
    custom_fixed_point,
    custom_root,
    linear_solve,
    losses,
    objective,
    optimality,
    projections,
    prox,
    root_jvp,
    root_vjp,
    solvers,
)
from implicitdiff.implicit import BackwardSolveWarning

CASES: dict[str, Callable[[], None]] = {}


def case(fun: Callable[[], None]) -> Callable[[], None]:
    CASES[fun.__name__] = fun
    return fun


_rng = np.random.RandomState(0)
X = jnp.asarray(_rng.randn(8, 3))
Y = jnp.asarray(_rng.randn(8))
X_NAN = X.at[2, 1].set(jnp.nan)
X_INF = X.at[0, 0].set(jnp.inf)


def least_squares(w, X, y):
    return 0.5 * jnp.sum((X @ w - y) ** 2)


@custom_root(ridge_condition)
def ridge(init_x, lam, X, y):
    return ridge_closed_form(lam, X, y)


GD = solvers.GradientDescent(fun=ridge_objective, tol=1e-8)
LBFGS = solvers.LBFGS(fun=ridge_objective, tol=1e-8)
LASSO = solvers.ProximalGradient(fun=least_squares, prox=prox.l1, tol=1e-8)


def run_quietly(solver, *args):
    """solver.run(*args), with the warnings it emits recorded rather than shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params, state = solver.run(*args)
    return params, state, caught


def assert_flagged(solver, good_args: tuple, bad_args: tuple):
    """The run on ``bad_args`` ends with converged False, while the same solver on the valid
    ``good_args`` (the control) converges: the flag comes from the bad input."""
    _, state, _ = run_quietly(solver, *good_args)
    assert bool(state.converged), "control: the valid problem must converge"
    _, state, _ = run_quietly(solver, *bad_args)
    assert not bool(state.converged)


def grad_with_warnings(fun: Callable, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = jax.grad(fun)(*args)
    return value, [w.category for w in caught]


# ---------------------------------------------------------------------------------------------
# NaN and Inf in parameters and data.


@case
def nan_in_data_gradient_descent():
    """NaN in the data of a solver (GradientDescent) → state.converged False; jax.grad through it
    is NaN with a BackwardSolveWarning."""
    assert_flagged(GD, (jnp.zeros(3), 1.0, X, Y), (jnp.zeros(3), 1.0, X_NAN, Y))
    g, caught = grad_with_warnings(lambda lam: jnp.sum(GD.run(jnp.zeros(3), lam, X_NAN, Y)[0]), 1.0)
    assert np.isnan(g)
    assert BackwardSolveWarning in caught


@case
def inf_in_data_lbfgs():
    """Inf in the data of LBFGS → state.converged False."""
    assert_flagged(LBFGS, (jnp.zeros(3), 1.0, X, Y), (jnp.zeros(3), 1.0, X_INF, Y))


@case
def inf_hyperparameter_lbfgs():
    """An infinite hyperparameter (λ = inf) given to LBFGS → state.converged False."""
    assert_flagged(LBFGS, (jnp.ones(3), 1.0, X, Y), (jnp.ones(3), jnp.inf, X, Y))


@case
def nan_in_init_params_proximal_gradient():
    """NaN in init_params of ProximalGradient → state.converged False."""
    good, bad = jnp.zeros(3), jnp.array([0.0, jnp.nan, 0.0])
    assert_flagged(LASSO, (good, 0.1, X, Y), (bad, 0.1, X, Y))


@case
def nan_prox_hyperparameter():
    """λ = NaN for prox.l1 inside ProximalGradient → state.converged False."""
    assert_flagged(LASSO, (jnp.zeros(3), 0.1, X, Y), (jnp.zeros(3), jnp.nan, X, Y))


@case
def nan_in_data_fixed_point():
    """NaN in the argument of a fixed-point map (AndersonAcceleration) → state.converged False."""
    solver = solvers.AndersonAcceleration(fixed_point_fun=lambda x, t: 0.5 * jnp.cos(x) + t)
    assert_flagged(solver, (jnp.zeros(2), jnp.ones(2)), (jnp.zeros(2), jnp.array([jnp.nan, 1.0])))


@case
def nan_in_data_custom_root_derivative():
    """NaN in the data of a custom_root solver → jax.grad is NaN, with a BackwardSolveWarning."""
    g, caught = grad_with_warnings(lambda lam: jnp.sum(ridge(jnp.zeros(3), lam, X_NAN, Y)), 1.0)
    assert np.isnan(g)
    assert BackwardSolveWarning in caught


@case
def inf_hyperparameter_custom_root_derivative():
    """λ = inf given to a custom_root solver → jax.grad is NaN, with a BackwardSolveWarning."""
    g, caught = grad_with_warnings(lambda lam: jnp.sum(ridge(jnp.zeros(3), lam, X, Y)), jnp.inf)
    assert np.isnan(g)
    assert BackwardSolveWarning in caught


# ---------------------------------------------------------------------------------------------
# Shapes and pytrees: init_params, F's output, the solver's output.


@case
def optimality_fun_wrong_shape():
    """custom_root: F returns a leaf shaped unlike the solution → TypeError naming
    optimality_fun."""

    @custom_root(lambda x, lam, X, y: ridge_condition(x, lam, X, y)[:2])
    def solver(init_x, lam, X, y):
        return ridge_closed_form(lam, X, y)

    with pytest.raises(TypeError, match=r"optimality_fun must return leaves shaped like"):
        solver(jnp.zeros(3), 1.0, X, Y)


@case
def optimality_fun_wrong_structure():
    """custom_root: F returns a pytree of another structure than the solution → TypeError naming
    optimality_fun."""

    @custom_root(lambda x, lam, X, y: {"g": ridge_condition(x, lam, X, y)})
    def solver(init_x, lam, X, y):
        return ridge_closed_form(lam, X, y)

    with pytest.raises(TypeError, match=r"optimality_fun must return a pytree with the structure"):
        solver(jnp.zeros(3), 1.0, X, Y)


@case
def fixed_point_fun_wrong_shape():
    """FixedPointIteration: T(x) shaped unlike init_params → TypeError naming fixed_point_fun."""
    solver = solvers.FixedPointIteration(fixed_point_fun=lambda x, t: jnp.sum(x) + t)
    with pytest.raises(TypeError, match=r"fixed_point_fun must return leaves shaped and typed"):
        solver.run(jnp.zeros(2), jnp.ones(3))


@case
def fixed_point_fun_wrong_dtype():
    """AndersonAcceleration: T(x) of another dtype than init_params (float32 start, float64 map)
    → TypeError naming fixed_point_fun."""
    solver = solvers.AndersonAcceleration(fixed_point_fun=lambda x, t: 0.5 * jnp.cos(x) + t)
    with pytest.raises(TypeError, match=r"fixed_point_fun .*float64, expected .*float32"):
        solver.run(jnp.zeros(2, jnp.float32), jnp.ones(2, jnp.float64))


@case
def custom_solve_wrong_structure():
    """custom_root: a solve= callable returning a pytree unlike b → TypeError naming solve."""

    @custom_root(ridge_condition, solve=lambda matvec, b: {"x": b})
    def solver(init_x, lam, X, y):
        return ridge_closed_form(lam, X, y)

    with pytest.raises(TypeError, match=r"solve .* must return a pytree with the structure of"):
        jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(3), lam, X, Y)))(1.0)


@case
def custom_solve_returns_x_and_info():
    """solve=jax.scipy.sparse.linalg.cg itself (it returns (x, info)) → TypeError naming solve
    and the fix ([0])."""
    solver = custom_root(ridge_condition, solve=jax.scipy.sparse.linalg.cg)(
        lambda init_x, lam, X, y: ridge_closed_form(lam, X, y)
    )
    with pytest.raises(TypeError, match=r"solve \(cg\) must .* a pair \(x, info\).*\[0\]"):
        jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(3), lam, X, Y)))(1.0)


@case
def user_prox_or_projection_output_unlike_x():
    """A user's prox (ProximalGradient), projection (ProjectedGradient, MirrorDescent) or
    block_prox (BlockCoordinateDescent) returning a pair, or another shape → TypeError naming
    it (it failed inside JAX: "sub got incompatible shapes for broadcasting")."""
    pair = lambda x, hyperparams=None, scaling=1.0: (x, None)  # noqa: E731
    short = lambda x, hyperparams=None, scaling=1.0: x[:2]  # noqa: E731
    for make, name in (
        (lambda op: solvers.ProximalGradient(fun=ridge_objective, prox=op), "prox"),
        (lambda op: solvers.ProjectedGradient(fun=ridge_objective, projection=op), "projection"),
    ):
        with pytest.raises(
            TypeError, match=rf"{name} must return a pytree shaped like its input x: got structure"
        ):
            make(pair).run(jnp.zeros(3), None, 1.0, X, Y)
        with pytest.raises(
            TypeError,
            match=rf"{name} must return a pytree shaped like its input x: got leaf 0 of shape",
        ):
            make(short).run(jnp.zeros(3), None, 1.0, X, Y)
    block = solvers.BlockCoordinateDescent(fun=ridge_objective, block_prox=pair)
    with pytest.raises(
        TypeError, match=r"block_prox must return a pytree shaped like its input x: got structure"
    ):
        block.run(jnp.zeros(3), None, 1.0, X, Y)
    mirror = solvers.MirrorDescent(
        fun=ridge_objective, projection=lambda z, h: z[:2], mapping=jnp.log, stepsize=0.1
    )
    with pytest.raises(
        TypeError, match=r"MirrorDescent: projection must return a pytree shaped like its input x"
    ):
        mirror.run(jnp.ones(3) / 3, None, 1.0, X, Y)


@case
def block_prox_without_scaling():
    """BlockCoordinateDescent: a block_prox that cannot take (x, hyperparams, scaling) →
    TypeError naming block_prox when the solver is built (it was Python's bare "takes 2
    positional arguments but 3 were given" from inside the loop), as ProximalGradient's prox."""
    with pytest.raises(TypeError, match=r"block_prox <lambda>\(x, h\) cannot be called as"):
        solvers.BlockCoordinateDescent(fun=ridge_objective, block_prox=lambda x, h: x)


@case
def root_vjp_cotangent_mismatch():
    """root_vjp: a cotangent shaped unlike the solution → TypeError naming cotangent."""
    sol = ridge_closed_form(1.0, X, Y)
    with pytest.raises(TypeError, match=r"cotangent must return leaves shaped like sol"):
        root_vjp(ridge_condition, sol, (1.0, X, Y), jnp.ones(4))


@case
def root_jvp_tangent_count():
    """root_jvp: a number of tangents other than of args → TypeError naming tangents."""
    sol = ridge_closed_form(1.0, X, Y)
    with pytest.raises(TypeError, match=r"tangents must have one entry per argument"):
        root_jvp(ridge_condition, sol, (1.0, X, Y), (1.0,))


@case
def equality_qp_constraint_shape():
    """EqualityConstrainedQP: A with the wrong number of columns → ValueError naming params_eq."""
    Q, c = jnp.eye(2), jnp.ones(2)
    with pytest.raises(ValueError, match=r"params_eq = \(A, b\) must be a matrix \(p, 2\)"):
        solvers.EqualityConstrainedQP().run(None, (Q, c), (jnp.ones((1, 3)), jnp.ones(1)))


@case
def equality_qp_objective_shape():
    """EqualityConstrainedQP: Q not (n, n) for c of shape (n,) → ValueError naming params_obj."""
    with pytest.raises(ValueError, match=r"params_obj = \(Q, c\) must be a matrix \(n, n\)"):
        solvers.EqualityConstrainedQP().run(None, (jnp.eye(3), jnp.ones(2)))


@case
def osqp_inequality_shape():
    """OSQP: G with the wrong number of columns → ValueError naming params_ineq."""
    with pytest.raises(ValueError, match=r"OSQP: params_ineq must be a matrix"):
        solvers.OSQP().run(None, (jnp.eye(2), jnp.ones(2)), None, (jnp.ones((1, 3)), jnp.ones(1)))


@case
def squared_loss_shape_mismatch():
    """losses.squared_loss: target and prediction of different shapes → ValueError naming both
    (no silent broadcasting)."""
    with pytest.raises(ValueError, match=r"target and prediction must have the same structure"):
        losses.squared_loss(jnp.zeros(3), jnp.zeros(1))


# ---------------------------------------------------------------------------------------------
# Integer and boolean arrays where a derivative is asked for.


@case
def grad_wrt_integer_hyperparameter():
    """jax.grad with respect to an integer hyperparameter → JAX's TypeError (grad requires
    real- or complex-valued inputs): pass a float."""
    with pytest.raises(TypeError, match=r"grad requires real- or complex-valued inputs"):
        jax.grad(lambda lam: jnp.sum(ridge(jnp.zeros(3), lam, X, Y)))(1)


@case
def integer_init_params():
    """An integer init_params for a solver → TypeError naming init_params (no dtype is guessed:
    the solver iterates in the dtype of init_params)."""
    with pytest.raises(TypeError, match=r"GradientDescent.run: init_params must have floating"):
        GD.run(jnp.zeros(3, jnp.int32), 1.0, X, Y)


@case
def boolean_init_params():
    """A boolean init_params (LBFGS) → TypeError naming init_params."""
    with pytest.raises(TypeError, match=r"LBFGS.run: init_params must have floating-point"):
        LBFGS.run(jnp.zeros(3, bool), 1.0, X, Y)


@case
def integer_argument_not_differentiated():
    """An integer argument the derivative is not taken for (λ = 1 as an int array) → accepted:
    it gets no tangent, and jax.grad with respect to the float data is exact (closed form)."""

    def loss(X, lam):
        return jnp.sum(ridge(jnp.zeros(3), lam, X, Y))

    got = jax.grad(loss)(X, jnp.asarray(1, jnp.int32))
    expected = jax.grad(lambda X: jnp.sum(ridge_closed_form(1.0, X, Y)))(X)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@case
def root_jvp_tangent_for_integer_argument():
    """root_jvp: a float tangent for an integer argument → TypeError naming the argument."""
    sol = ridge_closed_form(1.0, X, Y)
    with pytest.raises(TypeError, match=r"args\[0\] has the integer or boolean dtype"):
        root_jvp(ridge_condition, sol, (jnp.asarray(1), X, Y), (jnp.asarray(1.0), None, None))


# ---------------------------------------------------------------------------------------------
# maxiter and tol.


@case
def solver_maxiter_negative():
    """maxiter < 0 (or a float, or a bool) for a solver → ValueError naming the solver and
    maxiter (0 is taken, as by JAXopt: the run returns its start)."""
    with pytest.raises(ValueError, match=r"^LBFGS: maxiter must be an int ≥ 0, got -5"):
        solvers.LBFGS(fun=ridge_objective, maxiter=-5)
    with pytest.raises(ValueError, match=r"^GradientDescent: maxiter must be an int, got True"):
        solvers.GradientDescent(fun=ridge_objective, maxiter=True)
    with pytest.raises(ValueError, match=r"LBFGS: maxiter must be an int, got 10.0"):
        solvers.LBFGS(fun=ridge_objective, maxiter=10.0)


@case
def solver_tol_negative():
    """tol < 0 for a solver → ValueError naming the solver and tol."""
    with pytest.raises(
        ValueError, match=r"^ProximalGradient: tol must be a non-negative number, got -1e-06"
    ):
        solvers.ProximalGradient(fun=least_squares, tol=-1e-6)


@case
def solver_tol_nan():
    """tol = NaN for a solver → ValueError naming tol."""
    with pytest.raises(ValueError, match=r"OSQP: tol must be a real number, got nan"):
        solvers.OSQP(tol=float("nan"))


@case
def objective_one_element_value():
    """A solver's fun returning shape (1,) → TypeError naming fun, the shape and the fix."""
    with pytest.raises(TypeError, match=r"fun must return a scalar objective value .* \(1,\)"):
        solvers.LBFGS(fun=lambda w, X, y: least_squares(w, X, y)[None]).run(jnp.zeros(3), X, Y)


@case
def solver_option_traced():
    """A solver built inside jit from a traced tol or stepsize → ValueError naming the solver,
    the option and that it is traced (options are static)."""
    with pytest.raises(ValueError, match=r"LBFGS: tol must be a concrete number, got a traced"):
        jax.jit(lambda tol: solvers.LBFGS(fun=least_squares, tol=tol))(1e-6)
    with pytest.raises(ValueError, match=r"GradientDescent: stepsize must be a concrete number"):
        jax.jit(lambda s: solvers.GradientDescent(fun=least_squares, stepsize=s))(0.1)


@case
def svm_dual_class_indices():
    """objective.multiclass_linear_svm_dual given class indices for Y → ValueError naming Y and
    the one-hot shape (it broadcast into JAX's "Incompatible shapes", as in JAXopt)."""
    beta = jnp.full((8, 3), 1 / 3)
    y = jnp.asarray(_rng.randint(0, 3, 8))
    with pytest.raises(ValueError, match=r"Y in data = \(X, Y\) must be one-hot labels"):
        objective.multiclass_linear_svm_dual(beta, 1.0, (X, y))
    value = objective.multiclass_linear_svm_dual(beta, 1.0, (X, jax.nn.one_hot(y, 3)))
    assert np.isfinite(value)


@case
def linear_solve_bad_options():
    """A linear solve given maxiter ≤ 0, tol < 0 or NaN, or ridge < 0 → ValueError naming it."""
    identity = lambda v: v  # noqa: E731
    b = jnp.ones(2)
    with pytest.raises(ValueError, match=r"maxiter must be None or a positive int, got 0"):
        linear_solve.cg(identity, b, maxiter=0)
    with pytest.raises(ValueError, match=r"maxiter must be None or a positive int, got -1"):
        linear_solve.gmres(identity, b, maxiter=-1)
    with pytest.raises(ValueError, match=r"tol must be a non-negative number, got nan"):
        linear_solve.bicgstab(identity, b, tol=float("nan"))
    with pytest.raises(ValueError, match=r"lu: ridge must be non-negative, got -1.0"):
        linear_solve.lu(identity, b, ridge=-1.0)


# ---------------------------------------------------------------------------------------------
# Empty arrays.


@case
def empty_init_params():
    """init_params with no entries (a problem over ℝ⁰) → ValueError naming init_params."""
    with pytest.raises(ValueError, match=r"LBFGS.run: init_params has no entries"):
        LBFGS.run(jnp.zeros(0), 1.0, X[:, :0], Y)
    with pytest.raises(ValueError, match=r"OSQP.run: init_params has no entries"):
        solvers.OSQP().run(None, (jnp.zeros((0, 0)), jnp.zeros(0)))


@case
def empty_data():
    """Data with no samples (X of shape (0, 3)) → a valid problem (only the ridge term): the
    exact solution w = 0, converged, and its exact derivative 0."""
    w, state, _ = run_quietly(GD, jnp.ones(3), 1.0, X[:0], Y[:0])
    assert bool(state.converged)
    np.testing.assert_allclose(w, 0.0, atol=1e-8)
    g = jax.grad(lambda lam: jnp.sum(GD.run(jnp.ones(3), lam, X[:0], Y[:0])[0]))(1.0)
    np.testing.assert_allclose(g, -jnp.sum(w), rtol=1e-10)  # F = λw: dw/dλ = −w/λ
    assert abs(float(g)) < 1e-7


@case
def empty_point_projection():
    """Projecting an empty x: onto the simplex (an empty set in ℝ⁰) → ValueError naming x; onto
    a ball (ℝ⁰ itself) → the empty point."""
    with pytest.raises(ValueError, match=r"x must have at least one entry"):
        projections.simplex(jnp.zeros(0))
    assert projections.l1_ball(jnp.zeros(0)).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Infeasible and unbounded QPs.

QP_Q, QP_C = jnp.eye(2), jnp.array([1.0, 1.0])
QP_G, QP_H = jnp.array([[1.0, 0.0], [-1.0, 0.0]]), jnp.array([-1.0, -1.0])  # x₀ ≤ −1, x₀ ≥ 1
OSQP = solvers.OSQP(tol=1e-8)


@case
def osqp_primal_infeasible():
    """An infeasible QP (OSQP) → state.status 2 (primal infeasible), state.converged False."""
    _, state, _ = run_quietly(OSQP, None, (QP_Q, QP_C), None, (QP_G, QP_H))
    assert int(state.status) == 2
    assert not bool(state.converged)


@case
def osqp_unbounded():
    """An unbounded QP (OSQP, Q = 0, c pushing along a free direction) → state.status 3 (dual
    infeasible), state.converged False."""
    G, h = jnp.array([[1.0, 0.0]]), jnp.array([1.0])
    _, state, _ = run_quietly(OSQP, None, (jnp.zeros((2, 2)), QP_C), None, (G, h))
    assert int(state.status) == 3
    assert not bool(state.converged)


@case
def equality_qp_inconsistent():
    """EqualityConstrainedQP with an inconsistent equality system (x₀ + x₁ = 1 and = 2) →
    state.converged False; jax.grad through it is NaN with a BackwardSolveWarning."""
    A, b = jnp.array([[1.0, 1.0], [1.0, 1.0]]), jnp.array([1.0, 2.0])
    solver = solvers.EqualityConstrainedQP()
    consistent = (jnp.array([[1.0, 1.0], [1.0, -1.0]]), b)
    assert_flagged(solver, (None, (QP_Q, QP_C), consistent), (None, (QP_Q, QP_C), (A, b)))

    def total(c):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return jnp.sum(solver.run(None, (QP_Q, c), (A, b)).params.primal)

    g, caught = grad_with_warnings(total, QP_C)
    assert np.all(np.isnan(g))
    assert BackwardSolveWarning in caught


@case
def box_qp_lower_above_upper():
    """BoxCDQP with lower > upper: concrete → ValueError naming params_ineq; traced (under jit)
    → state.converged False."""
    solver = solvers.BoxCDQP()
    with pytest.raises(ValueError, match=r"params_ineq = \(lower, upper\) must have lower ≤ upper"):
        solver.run(None, (QP_Q, QP_C), (1.0, 0.0))
    converged = jax.jit(lambda lo: solver.run(None, (QP_Q, QP_C), (lo, 0.0)).state.converged)
    assert bool(converged(-1.0))  # control: a valid box
    assert not bool(converged(1.0))


# ---------------------------------------------------------------------------------------------
# Projections and proxes given an invalid set.

INVALID_SETS = [
    (projections.l2_ball, -1.0, "radius must be non-negative"),
    (projections.l1_ball, -1.0, "radius must be non-negative"),
    (projections.linf_ball, -1.0, "radius must be non-negative"),
    (projections.l2_sphere, -1.0, "radius must be non-negative"),
    (projections.l1_sphere, -1.0, "radius must be non-negative"),
    (projections.simplex, -1.0, "scale must be non-negative"),
    (projections.hypercube, -1.0, "scale must be non-negative"),
    (projections.box, (1.0, 0.0), "lower must not exceed upper"),
]
POINT = jnp.array([2.0, -1.0, 0.5])


@case
def projection_invalid_set_concrete():
    """A projection given an invalid set with concrete values (negative radius for l2/l1/linf
    balls and spheres, negative scale for simplex/hypercube, lower > upper for box) →
    ValueError naming the hyperparameter."""
    for projection, hyperparams, message in INVALID_SETS:
        with pytest.raises(ValueError, match=message):
            projection(POINT, hyperparams)


@case
def projection_invalid_set_traced():
    """The same invalid sets with traced values (under jit) → NaN output (cannot raise on a
    traced value)."""
    for projection, hyperparams, _ in INVALID_SETS:
        out = jax.jit(projection)(POINT, hyperparams)
        assert np.all(np.isnan(out)), projection.__name__


@case
def box_partly_invalid_traced():
    """box with lower > upper in one entry only, traced → NaN in that entry only."""
    lower, upper = jnp.array([0.0, 1.0, 0.0]), jnp.array([1.0, 0.0, 1.0])
    out = np.asarray(jax.jit(projections.box)(POINT, (lower, upper)))
    assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]]))


@case
def projected_gradient_invalid_radius():
    """ProjectedGradient onto l2_ball with radius < 0 (traced in the compiled run) →
    state.converged False."""
    solver = solvers.ProjectedGradient(fun=least_squares, projection=projections.l2_ball)
    assert_flagged(solver, (jnp.zeros(3), 0.1, X, Y), (jnp.zeros(3), -1.0, X, Y))


@case
def sparse_simplex_nonpositive_size():
    """sparse_simplex with max_nz < 1 → ValueError naming max_nz."""
    with pytest.raises(ValueError, match=r"max_nz must be at least 1, got max_nz=0"):
        projections.sparse_simplex(POINT, (1.0, 0))


@case
def prox_negative_hyperparameter():
    """A prox with λ < 0: concrete → ValueError naming λ; traced (jit) → NaN; inside
    ProximalGradient (traced) → state.converged False."""
    with pytest.raises(ValueError, match=r"l1: hyperparams \(λ\) must be non-negative"):
        prox.l1(POINT, -0.1)
    for operator in (prox.l1, prox.ridge, prox.group_lasso, prox.non_negative_l1):
        assert np.all(np.isnan(jax.jit(operator)(POINT, -0.1))), operator.__name__
    assert_flagged(LASSO, (jnp.zeros(3), 0.1, X, Y), (jnp.zeros(3), -0.1, X, Y))


@case
def mirror_descent_negative_scale():
    """MirrorDescent on a simplex of negative total: concrete (optimality.negative_entropy) →
    ValueError; traced (the compiled run) → state.converged False."""
    with pytest.raises(ValueError, match=r"hyperparams \(the simplex total\) must be ≥ 0"):
        optimality.negative_entropy(jnp.ones(3) / 3, jnp.zeros(3), 1.0, -1.0)
    solver = solvers.MirrorDescent(fun=lambda p, c: jnp.sum(p * c) + 0.5 * jnp.sum(p**2))
    p0, c = jnp.ones(3) / 3, jnp.arange(3.0)
    assert_flagged(solver, (p0, 1.0, c), (p0, -1.0, c))


@case
def mirror_descent_negative_start():
    """MirrorDescent's entropic step from a start with a negative entry converged, silently, to
    a point that is not the minimizer ([0.5, −0.2, 0.1] ended at [0, 1, 0], reported converged):
    concrete → ValueError naming init_params; traced (jit, vmap) → NaN, converged False."""
    solver = solvers.MirrorDescent(fun=lambda p, c: jnp.sum(p * c) + 0.5 * jnp.sum(p**2))
    c, bad = jnp.array([0.05, -0.02, 0.01]), jnp.array([0.5, -0.2, 0.1])
    with pytest.raises(ValueError, match=r"MirrorDescent.run: init_params must have non-negative"):
        solver.run(bad, None, c)
    x, state = jax.jit(lambda p0: run_quietly(solver, p0, None, c)[:2])(bad)
    assert not bool(state.converged) and bool(jnp.all(jnp.isnan(x)))
    starts = jnp.stack([jnp.ones(3) / 3, bad])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xs, states = jax.vmap(lambda p0: solver.run(p0, None, c))(starts)
    np.testing.assert_array_equal(states.converged, [True, False])
    np.testing.assert_allclose(xs[0], 1 / 3 - (c - jnp.mean(c)), rtol=1e-5)
    assert bool(jnp.all(jnp.isnan(xs[1])))


# ---------------------------------------------------------------------------------------------
# Callables of the wrong signature, unknown names.


@case
def objective_too_few_arguments():
    """A solver's fun taking fewer arguments than run passes → TypeError naming fun."""
    solver = solvers.GradientDescent(fun=lambda w: jnp.sum(w**2))
    with pytest.raises(TypeError, match=r"GradientDescent: fun <lambda>\(w\) cannot be called"):
        solver.run(jnp.zeros(3), 1.0, X, Y)


@case
def prox_wrong_signature():
    """ProximalGradient given a prox that is not prox(x, hyperparams, scaling) → TypeError
    naming prox."""
    with pytest.raises(TypeError, match=r"ProximalGradient: prox <lambda>\(x\) cannot be called"):
        solvers.ProximalGradient(fun=least_squares, prox=lambda x: x)


@case
def projection_passed_as_prox():
    """ProximalGradient given a projection (l2_ball) as prox → TypeError naming prox, pointing to
    ProjectedGradient / prox.from_projection."""
    with pytest.raises(TypeError, match=r"prox l2_ball.*Use ProjectedGradient"):
        solvers.ProximalGradient(fun=least_squares, prox=projections.l2_ball)


@case
def optimality_fun_wrong_signature():
    """custom_root: F taking other arguments than the solver's → TypeError naming
    optimality_fun."""

    @custom_root(lambda x, lam: x)
    def solver(init_x, lam, X, y):
        return ridge_closed_form(lam, X, y)

    with pytest.raises(TypeError, match=r"optimality_fun <lambda>\(x, lam\) cannot be called"):
        solver(jnp.zeros(3), 1.0, X, Y)


@case
def fixed_point_fun_wrong_signature():
    """custom_fixed_point / FixedPointIteration: T taking too few arguments → TypeError naming
    fixed_point_fun."""
    solver = solvers.FixedPointIteration(fixed_point_fun=lambda x: 0.5 * x)
    with pytest.raises(TypeError, match=r"fixed_point_fun <lambda>\(x\) cannot be called"):
        solver.run(jnp.zeros(2), jnp.ones(2))


@case
def not_callable():
    """A non-callable where a function is expected → TypeError naming it."""
    with pytest.raises(TypeError, match=r"GradientDescent: fun must be callable"):
        solvers.GradientDescent(fun=3.0)
    with pytest.raises(TypeError, match=r"ProjectedGradient: projection must be callable"):
        solvers.ProjectedGradient(fun=least_squares, projection="simplex")


@case
def unknown_solve_name():
    """solve= a name that is not a linear solver (custom_root, custom_fixed_point) → ValueError
    naming solve and listing the names."""
    with pytest.raises(ValueError, match=r"solve='svd' is not a known linear solver; use one of"):
        custom_root(ridge_condition, solve="svd")
    with pytest.raises(ValueError, match=r"solve='chol' is not a known linear solver"):
        custom_fixed_point(lambda x: x, solve="chol")


@case
def unknown_failure_policy():
    """on_failure= an unknown policy → ValueError naming on_failure."""
    with pytest.raises(ValueError, match=r"on_failure must be one of"):
        custom_root(ridge_condition, on_failure="explode")


# ---------------------------------------------------------------------------------------------
# Linear solves given a non-square operator.


@case
def linear_solve_non_square():
    """A linear solve whose matvec maps b's space elsewhere (a 3 × 2 operator) → ValueError naming
    both shapes and that the solver needs a square operator (normal_cg: the shapes of x and b)."""
    A = jnp.ones((3, 2))
    b = jnp.ones(2)
    for name in ("lu", "cholesky", "auto", "cg", "gmres", "bicgstab"):
        with pytest.raises(
            ValueError, match=r"maps vectors shaped like b \(2,\) to \(3,\).*square"
        ):
            getattr(linear_solve, name)(lambda v: A @ v, b)
    with pytest.raises(ValueError, match=r"normal_cg: matvec maps x shaped like \(2,\) to \(3,\)"):
        linear_solve.normal_cg(lambda v: A @ v, b)


# ---------------------------------------------------------------------------------------------
# Differentiating a run that did not converge.


@case
def grad_through_unconverged_solver():
    """jax.grad through a solver (implicit_diff=True) stopped by maxiter → state.converged False
    (the flag; eagerly also a SolverWarning from the failure policy). The derivative returned
    is the implicit derivative at the returned iterate x̂, −(∂₁F(x̂))⁻¹∂₂F(x̂): finite, exact for
    x̂, not for the true solution (Theorem 1 bounds the gap by ‖x̂ − x*‖)."""
    solver = solvers.GradientDescent(fun=ridge_objective, maxiter=2, stepsize=1e-3)
    x_hat, state, _ = run_quietly(solver, jnp.zeros(3), 1.0, X, Y)
    assert not bool(state.converged)

    def total(lam):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return jnp.sum(solver.run(jnp.zeros(3), lam, X, Y)[0])

    g = jax.grad(total)(1.0)
    hessian = X.T @ X + jnp.eye(3)
    at_x_hat = -jnp.sum(jnp.linalg.solve(hessian, x_hat))  # ∂₂F = x̂, A = −hessian
    true = -jnp.sum(jnp.linalg.solve(hessian, ridge_closed_form(1.0, X, Y)))
    np.testing.assert_allclose(g, at_x_hat, rtol=1e-8)
    assert abs(float(g) - float(true)) > 0.1 * abs(float(true))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name):
    CASES[name]()


def test_catalog_is_large_enough():
    assert len(CASES) >= 18
