"""ProximalGradient, ProjectedGradient, MirrorDescent, BlockCoordinateDescent and LBFGSB.

References: scikit-learn's Lasso, SciPy's nnls and L-BFGS-B for the solutions; closed forms on
the active set (or finite differences) for the derivatives. Solvers are built once per
configuration and reused, so that each compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import assert_tree_allclose
from sklearn.datasets import make_classification
from sklearn.linear_model import Lasso

from implicitdiff import projections, prox
from implicitdiff.solvers.block_cd import BlockCoordinateDescent
from implicitdiff.solvers.lbfgsb import LBFGSB
from implicitdiff.solvers.mirror_descent import MirrorDescent
from implicitdiff.solvers.proximal import ProjectedGradient, ProximalGradient

RNG = np.random.default_rng(0)


def least_squares(x, A, b):
    return 0.5 * jnp.sum((A @ x - b) ** 2)


# ---------------------------------------------------------------------------------------------
# The lasso: min ½‖Xw − y‖² + λ‖w‖₁ (scikit-learn's alpha = λ / n).

N, P = 30, 10
LASSO_X = RNG.standard_normal((N, P))
_W_TRUE = np.concatenate([RNG.standard_normal(4) * 2, np.zeros(P - 4)])
LASSO_Y = LASSO_X @ _W_TRUE + 0.5 * RNG.standard_normal(N)
LAM = 5.0
LASSO_STEP = 1.0 / np.linalg.norm(LASSO_X, 2) ** 2

LASSO_CONFIGS = {
    "fixed-fista": dict(stepsize=LASSO_STEP, acceleration=True),
    "fixed-ista": dict(stepsize=LASSO_STEP, acceleration=False),
    "backtracking-fista": dict(acceleration=True),
    "backtracking-ista": dict(acceleration=False),
}


@functools.cache
def lasso_solver(config: str, implicit_diff: bool = True, checkpoint: bool = False):
    return ProximalGradient(
        fun=least_squares,
        prox=prox.l1,
        tol=1e-11,
        maxiter=3000,
        implicit_diff=implicit_diff,
        unroll_checkpoint=checkpoint,
        **LASSO_CONFIGS[config],
    )


@functools.cache
def lasso_jacobian(config: str, implicit_diff: bool = True, checkpoint: bool = False):
    """jit(λ, y ↦ ((∂w/∂λ, ∂w/∂y), (w, state))) by reverse mode: one compilation."""
    solver = lasso_solver(config, implicit_diff, checkpoint)

    def solve(lam, y):
        w, state = solver.run(jnp.zeros(P), lam, LASSO_X, y)
        return w, (w, state)

    return jax.jit(jax.jacrev(solve, argnums=(0, 1), has_aux=True))


def lasso_closed_form(lam, X, y, support, signs):
    """w on a given support with given signs: w_S = (X_SᵀX_S)⁻¹(X_Sᵀy − λ sign_S), 0 elsewhere."""
    XS = X[:, support]
    wS = jnp.linalg.solve(XS.T @ XS, XS.T @ y - lam * signs)
    return jnp.zeros(X.shape[1], wS.dtype).at[support].set(wS)


@functools.cache
def lasso_reference():
    model = Lasso(alpha=LAM / N, fit_intercept=False, tol=1e-14, max_iter=100_000)
    w = model.fit(LASSO_X, LASSO_Y).coef_
    support = np.flatnonzero(np.abs(w) > 1e-8)
    return w, support, np.sign(w[support])


@pytest.mark.parametrize("config", LASSO_CONFIGS)
def test_lasso_solution_and_jacobians(config):
    w_ref, support, signs = lasso_reference()
    assert 2 <= support.size < P
    jacobians, (w, state) = lasso_jacobian(config)(LAM, jnp.asarray(LASSO_Y))
    assert bool(state.converged) and float(state.error) <= 1e-11
    # The solution: scikit-learn's, and the closed form on its support; exact zeros off it.
    np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-8)
    exact = lasso_closed_form(LAM, LASSO_X, LASSO_Y, support, signs)
    np.testing.assert_allclose(w, exact, rtol=1e-9, atol=1e-11)
    assert np.all(np.asarray(w)[np.setdiff1d(np.arange(P), support)] == 0)
    # ∂w/∂λ = −(X_SᵀX_S)⁻¹ sign_S and ∂w/∂y = (X_SᵀX_S)⁻¹X_Sᵀ on S, 0 elsewhere.
    want = jax.jacrev(lasso_closed_form, argnums=(0, 2))(LAM, LASSO_X, LASSO_Y, support, signs)
    assert np.all(np.abs(np.asarray(want[0])[support]) > 1e-3)
    assert_tree_allclose(jacobians, want, rtol=1e-8, atol=1e-10)


def test_block_coordinate_descent_is_coordinate_descent_on_the_lasso():
    w_ref, support, signs = lasso_reference()
    solver = BlockCoordinateDescent(fun=least_squares, block_prox=prox.l1, tol=1e-11)

    def total(lam):
        w, state = solver.run(jnp.zeros(P), lam, LASSO_X, LASSO_Y)
        return jnp.sum(w), (w, state)

    dlam, (w, state) = jax.jit(jax.grad(total, has_aux=True))(LAM)
    assert bool(state.converged)
    # 1-d blocks: the exact curvature of each coordinate, ‖X_j‖².
    np.testing.assert_allclose(state.stepsize, 1.0 / np.sum(LASSO_X**2, axis=0), rtol=1e-12)
    np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-8)
    want = jax.grad(lambda lam: jnp.sum(lasso_closed_form(lam, LASSO_X, LASSO_Y, support, signs)))
    np.testing.assert_allclose(dlam, want(LAM), rtol=1e-8)


@pytest.mark.parametrize(
    "start",
    [{"w": jnp.zeros(P)}, [jnp.zeros(P - 1), jnp.zeros(1)], (jnp.zeros(P),)],
    ids=["dict", "list", "tuple"],
)
def test_block_coordinate_descent_refuses_a_pytree_start_by_name(start):
    # Its blocks are the rows of one array: a pytree failed inside jnp.asarray ("entry not a 2-
    # or 3- tuple") or in the user's fun.
    solver = BlockCoordinateDescent(fun=least_squares, block_prox=prox.l1)
    with pytest.raises(TypeError, match="init_params must be one array whose rows are the blocks"):
        solver.run(start, LAM, LASSO_X, LASSO_Y)


# ---------------------------------------------------------------------------------------------
# Non-negative least squares and a box: ProjectedGradient and LBFGSB.

M, D = 20, 8
NNLS_A = RNG.standard_normal((M, D))
NNLS_B = RNG.standard_normal(M)
BOX_A = RNG.standard_normal((M, D))
BOX_B = BOX_A @ (1.5 * RNG.standard_normal(D)) + 0.1 * RNG.standard_normal(M)
BOX_LOWER, BOX_UPPER = -0.6 * np.ones(D), 0.8 * np.ones(D)


@functools.cache
def box_solver(name: str, implicit_diff: bool = True):
    if name == "lbfgsb":
        return LBFGSB(fun=least_squares, tol=1e-11, maxiter=300, implicit_diff=implicit_diff)
    projection = projections.non_negative if name == "pg-nonneg" else projections.box
    return ProjectedGradient(
        fun=least_squares,
        projection=projection,
        tol=1e-11,
        maxiter=3000,
        implicit_diff=implicit_diff,
    )


@functools.cache
def box_jacobian(name: str, implicit_diff: bool = True):
    """jit((A, b, lower, upper) ↦ (Jacobians of x*, (x*, state))) by reverse mode."""
    solver = box_solver(name, implicit_diff)

    def solve(A, b, lower, upper):
        bounds = None if name == "pg-nonneg" else (lower, upper)
        x, state = solver.run(jnp.zeros(D), bounds, A, b)
        return x, (x, state)

    return jax.jit(jax.jacrev(solve, argnums=(0, 1, 2, 3), has_aux=True))


def box_closed_form(A, b, lower, upper, at_lower, at_upper):
    """The box-constrained least-squares solution with given active sets, in closed form."""
    free = ~(at_lower | at_upper)
    fixed = jnp.where(at_lower, lower, jnp.where(at_upper, upper, 0.0))
    AF = A[:, free]
    x_free = jnp.linalg.solve(AF.T @ AF, AF.T @ (b - A @ fixed))
    return fixed.at[np.flatnonzero(free)].set(x_free)


@pytest.mark.parametrize("name", ["pg-nonneg", "lbfgsb"])
def test_nnls_matches_scipy_and_derivatives(name):
    ref, _ = scipy.optimize.nnls(NNLS_A, NNLS_B)
    at_lower = ref == 0
    assert 0 < at_lower.sum() < D
    no_upper = np.zeros(D, bool)
    lower, upper = jnp.zeros(D), jnp.full(D, jnp.inf)
    jacobians, (x, state) = box_jacobian(name)(NNLS_A, NNLS_B, lower, upper)
    assert bool(state.converged)
    np.testing.assert_allclose(x, ref, rtol=1e-9, atol=1e-11)
    want = jax.jacrev(box_closed_form, argnums=(0, 1, 2))(
        NNLS_A, NNLS_B, lower, jnp.zeros(D), at_lower, no_upper
    )
    if name == "pg-nonneg":  # the bounds are not arguments there
        want = (*want[:2], jnp.zeros((D, D)))
    assert_tree_allclose(jacobians[:3], want, rtol=1e-8, atol=1e-10)
    assert_tree_allclose(jacobians[3], jnp.zeros((D, D)))  # an infinite bound does not move


def box_reference():
    return scipy.optimize.minimize(
        lambda x: 0.5 * np.sum((BOX_A @ x - BOX_B) ** 2),
        np.zeros(D),
        jac=lambda x: BOX_A.T @ (BOX_A @ x - BOX_B),
        method="L-BFGS-B",
        bounds=list(zip(BOX_LOWER, BOX_UPPER, strict=True)),
        options=dict(ftol=0.0, gtol=1e-14, maxiter=10_000),
    ).x


@pytest.mark.parametrize("name", ["pg-box", "lbfgsb"])
def test_box_matches_scipy_and_derivatives(name):
    jacobians, (x, state) = box_jacobian(name)(BOX_A, BOX_B, BOX_LOWER, BOX_UPPER)
    assert bool(state.converged)
    np.testing.assert_allclose(x, box_reference(), rtol=1e-7, atol=1e-9)
    at_lower = np.isclose(np.asarray(x), BOX_LOWER, rtol=0, atol=1e-12)
    at_upper = np.isclose(np.asarray(x), BOX_UPPER, rtol=0, atol=1e-12)
    assert at_lower.any() and at_upper.any() and (~(at_lower | at_upper)).sum() >= 2
    want = jax.jacrev(box_closed_form, argnums=(0, 1, 2, 3))(
        BOX_A, BOX_B, BOX_LOWER, BOX_UPPER, at_lower, at_upper
    )
    assert_tree_allclose(jacobians, want, rtol=1e-8, atol=1e-10)


def test_pytree_params():
    # ProximalGradient: the lasso with an unpenalized intercept, λ given per leaf.
    def f(params, X, y):
        return least_squares(params["w"], X, y - params["b"])

    init = {"w": jnp.zeros(P), "b": jnp.zeros(())}
    params, state = ProximalGradient(fun=f, prox=prox.l1, tol=1e-11, maxiter=3000).run(
        init, {"w": LAM, "b": 0.0}, LASSO_X, LASSO_Y
    )
    model = Lasso(alpha=LAM / N, tol=1e-14, max_iter=100_000).fit(LASSO_X, LASSO_Y)
    assert bool(state.converged)
    np.testing.assert_allclose(params["w"], model.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(params["b"], model.intercept_, rtol=1e-6)

    # LBFGSB: two leaves with their own bounds; the same problem as the flat box problem.
    def g(params, A, b):
        return least_squares(jnp.concatenate([params["u"], params["v"]]), A, b)

    init = {"u": jnp.zeros(3), "v": jnp.zeros(D - 3)}
    lower = {"u": BOX_LOWER[:3], "v": BOX_LOWER[3]}  # an array, and a scalar for a leaf
    upper = {"u": BOX_UPPER[0], "v": BOX_UPPER[3:]}
    params, state = LBFGSB(fun=g, tol=1e-11).run(init, (lower, upper), BOX_A, BOX_B)
    assert bool(state.converged)
    flat = jnp.concatenate([params["u"], params["v"]])
    np.testing.assert_allclose(flat, box_reference(), rtol=1e-7, atol=1e-9)


def test_mirror_descent_with_a_euclidean_mirror_map_is_projected_gradient():
    ref, _ = scipy.optimize.nnls(NNLS_A, NNLS_B)
    step = 1.0 / np.linalg.norm(NNLS_A, 2) ** 2
    solver = MirrorDescent(
        fun=least_squares,
        projection=projections.non_negative,
        mapping=lambda x: x,
        stepsize=step,
        tol=1e-10,
        maxiter=5000,
    )
    x, state = solver.run(jnp.zeros(D), None, NNLS_A, NNLS_B)
    assert bool(state.converged)
    np.testing.assert_allclose(x, ref, rtol=1e-8, atol=1e-10)
    got = jax.jacrev(lambda b: solver.run(jnp.zeros(D), None, NNLS_A, b)[0])(NNLS_B)
    want = jax.jacrev(box_closed_form, argnums=1)(
        NNLS_A, NNLS_B, np.zeros(D), np.zeros(D), ref == 0, np.zeros(D, bool)
    )
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# The multiclass SVM dual of the paper (Crammer & Singer):
#   x*(θ) = argmin_{x ∈ Δᵏ × … × Δᵏ} (θ/2)‖W(x, θ)‖² + ⟨x, Y_tr⟩,  W = X_trᵀ(Y_tr − x)/θ,
# the dual of min_W (θ/2)‖W‖² + Σᵢ maxⱼ (1[j ≠ yᵢ] + (x_iᵀW)ⱼ − (x_iᵀW)_{yᵢ}) (up to the
# constant m), with W the primal solution. Outer loss: ½‖X_val W(x*(θ), θ) − Y_val‖².

_SVM_X, _SVM_LABELS = make_classification(
    n_samples=80,
    n_features=5,
    n_informative=3,
    n_redundant=0,
    n_classes=3,
    n_clusters_per_class=1,
    random_state=0,
)
_SVM_Y = np.eye(3)[_SVM_LABELS]
X_TR, Y_TR, X_VAL, Y_VAL = _SVM_X[:40], _SVM_Y[:40], _SVM_X[40:], _SVM_Y[40:]
THETA = 1.0
SVM_INIT = jnp.full((40, 3), 1.0 / 3)


def svm_weights(x, theta, X, Y):
    return X.T @ (Y - x) / theta


def svm_dual(x, theta, X, Y):
    return 0.5 * theta * jnp.sum(svm_weights(x, theta, X, Y) ** 2) + jnp.vdot(x, Y)


def svm_outer(x, theta):
    return 0.5 * jnp.sum((X_VAL @ svm_weights(x, theta, X_TR, Y_TR) - Y_VAL) ** 2)


# Mirror descent's step: 1/L in the ℓ1 geometry is 1/max|XXᵀ|/θ; 8× that still converges.
SVM_MD_STEP = 8.0 * THETA / np.abs(X_TR @ X_TR.T).max()


@functools.cache
def svm_solver(name: str, implicit_diff: bool = True):
    if name == "mirror-descent":
        return MirrorDescent(
            fun=svm_dual, stepsize=SVM_MD_STEP, tol=1e-10, maxiter=5000, implicit_diff=implicit_diff
        )
    if name == "projected-gradient":
        rows = jax.vmap(projections.simplex, in_axes=(0, None))
        return ProjectedGradient(
            fun=svm_dual, projection=rows, tol=1e-11, maxiter=3000, implicit_diff=implicit_diff
        )
    return BlockCoordinateDescent(
        fun=svm_dual,
        block_prox=prox.from_projection(projections.simplex),
        tol=1e-12,
        maxiter=1000,
        implicit_diff=implicit_diff,
    )


SVM_SOLVERS = ["mirror-descent", "projected-gradient", "block-coordinate-descent"]


@functools.cache
def svm_hypergradient(name: str, implicit_diff: bool = True):
    """jit(θ ↦ (∂ outer loss/∂θ, (x*(θ), state))): one compilation."""
    solver = svm_solver(name, implicit_diff)

    def hyperloss(theta):
        x, state = solver.run(SVM_INIT, 1.0, theta, X_TR, Y_TR)
        return svm_outer(x, theta), (x, state)

    return jax.jit(jax.grad(hyperloss, has_aux=True))


@functools.cache
def svm_reference():
    """The BCD solution (tol 1e-12), and the hypergradient by central differences."""
    solver = svm_solver("block-coordinate-descent")

    def loss(theta):
        return svm_outer(solver.run(SVM_INIT, 1.0, theta, X_TR, Y_TR).params, theta)

    eps = 1e-4
    fd = (loss(THETA + eps) - loss(THETA - eps)) / (2 * eps)
    return solver.run(SVM_INIT, 1.0, THETA, X_TR, Y_TR).params, float(fd)


def test_svm_dual_reference_satisfies_kkt():
    x, _ = svm_reference()
    x = np.asarray(x)
    W = np.asarray(svm_weights(x, THETA, X_TR, Y_TR))
    scores = X_TR @ W
    margins = 1 - Y_TR + scores - np.sum(Y_TR * scores, axis=1, keepdims=True)
    # Feasibility, then complementarity: x puts mass only on the maximal loss-augmented scores.
    np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=1e-12)
    assert x.min() >= 0
    gaps = margins.max(axis=1, keepdims=True) - margins
    assert np.all(x[gaps > 1e-6] < 1e-9)
    # Zero duality gap: primal value = dual value (the primal of the comment above).
    primal = 0.5 * THETA * np.sum(W**2) + margins.max(axis=1).sum()
    dual = np.sum(x * (1 - Y_TR)) - 0.5 * THETA * np.sum(W**2)
    np.testing.assert_allclose(primal, dual, rtol=1e-10)
    # Not a trivial solution: some samples have fractional dual rows (support vectors).
    assert 0 < np.sum(np.max(x, axis=1) < 1 - 1e-6) < 40


@pytest.mark.parametrize("name", SVM_SOLVERS)
def test_svm_solvers_agree_with_each_other_and_finite_differences(name):
    x_ref, fd = svm_reference()
    hypergradient, (x, state) = svm_hypergradient(name)(THETA)
    assert bool(state.converged)
    np.testing.assert_allclose(x, x_ref, atol=1e-8)
    np.testing.assert_allclose(hypergradient, fd, rtol=1e-6)
    # The three implicit hypergradients agree with each other far below the FD error.
    other, _ = svm_hypergradient("block-coordinate-descent")(THETA)
    np.testing.assert_allclose(hypergradient, other, rtol=1e-8)


# ---------------------------------------------------------------------------------------------
# Unrolling: finite, and equal to the implicit derivative at convergence.


def _derivatives(case: str, implicit_diff: bool):
    """The derivatives of one problem (jitted, cached), implicit or unrolled."""
    if case == "lasso-fista":
        return lasso_jacobian("fixed-fista", implicit_diff)(LAM, jnp.asarray(LASSO_Y))[0]
    if case == "lasso-backtracking-checkpointed":
        jacobian = lasso_jacobian("backtracking-ista", implicit_diff, not implicit_diff)
        return jacobian(LAM, jnp.asarray(LASSO_Y))[0]
    if case == "lbfgsb":
        return box_jacobian("lbfgsb", implicit_diff)(BOX_A, BOX_B, BOX_LOWER, BOX_UPPER)[0]
    return svm_hypergradient(case, implicit_diff)(THETA)[0]


@pytest.mark.parametrize(
    "case",
    [
        "lasso-fista",
        "lasso-backtracking-checkpointed",
        "lbfgsb",
        "mirror-descent",
        "block-coordinate-descent",
    ],
)
def test_unrolled_matches_implicit_at_convergence(case):
    want = _derivatives(case, True)
    got = _derivatives(case, False)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(got))
    assert_tree_allclose(got, want, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# jit and vmap.


@pytest.mark.parametrize("case", ["proximal-gradient", "lbfgsb"])
def test_vmap_and_jit_of_run_and_gradient(case):
    if case == "proximal-gradient":
        solver = lasso_solver("backtracking-fista")
        thetas = jnp.array([2.0, 5.0, 9.0])

        def solve(lam):
            return solver.run(jnp.zeros(P), lam, LASSO_X, LASSO_Y).params

    else:
        solver = box_solver("lbfgsb")
        thetas = jnp.array([0.5, 0.8, 1.2])

        def solve(upper):
            return solver.run(jnp.zeros(D), (BOX_LOWER, upper), BOX_A, BOX_B).params

    def loss(t):
        x = solve(t)
        return jnp.sum(jnp.sin(x)), x

    value_and_grad = jax.value_and_grad(loss, has_aux=True)
    (_, batched), grads = jax.jit(jax.vmap(value_and_grad))(thetas)
    one = jax.jit(value_and_grad)
    for i, t in enumerate(thetas):
        (_, x), grad = one(t)
        np.testing.assert_allclose(batched[i], x, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(grads[i], grad, rtol=1e-8, atol=1e-10)
    assert np.ptp(np.asarray(grads)) > 1e-3  # the batch is not one problem repeated


# ---------------------------------------------------------------------------------------------
# Options.


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (ProximalGradient, dict(fun=least_squares, maxiter=-1), "maxiter"),
        (ProximalGradient, dict(fun=least_squares, tol=-1.0), "tol"),
        (ProximalGradient, dict(fun=None), "fun"),
        (ProximalGradient, dict(fun=least_squares, prox=3), "prox"),
        (ProximalGradient, dict(fun=least_squares, stepsize=-0.1), "stepsize"),
        (ProximalGradient, dict(fun=least_squares, increase_factor=0.5), "increase_factor"),
        (ProximalGradient, dict(fun=least_squares, acceleration="yes"), "acceleration"),
        (ProjectedGradient, dict(fun=least_squares), "projection"),
        (MirrorDescent, dict(fun=least_squares, stepsize=0.0), "stepsize"),
        (MirrorDescent, dict(fun=least_squares, mapping=lambda x: x), "projection"),
        (MirrorDescent, dict(fun="f"), "fun"),
        (BlockCoordinateDescent, dict(fun=least_squares), "block_prox"),
        (
            BlockCoordinateDescent,
            dict(fun=least_squares, block_prox=prox.l1, stepsize=-1.0),
            "stepsize",
        ),
        (LBFGSB, dict(fun=least_squares, history_size=0), "history_size"),
        (LBFGSB, dict(fun=None), "fun"),
        (LBFGSB, dict(fun=least_squares, maxiter=1.5), "maxiter"),
    ],
)
def test_bad_options_name_the_option(cls, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        cls(**kwargs)


def test_lbfgsb_bounds_must_be_a_pair():
    with pytest.raises(TypeError, match="bounds"):
        LBFGSB(fun=least_squares).run(jnp.zeros(D), 0.0, BOX_A, BOX_B)


# ---------------------------------------------------------------------------------------------
# BlockCoordinateDescent in composite form: f(x) = outer_fun(Σᵢ block_fun(xᵢ, i)), p kept up to
# date by the sweeps (refreshed every BlockCoordinateDescent.REFRESH sweeps).


def lasso_block(w_j, j, X, y):
    return X[:, j] * w_j


def lasso_outer(p, X, y):
    return 0.5 * jnp.sum((p - y) ** 2)


@pytest.mark.parametrize("with_fun", [True, False])
def test_composite_block_coordinate_descent_on_the_lasso(with_fun):
    w_ref, support, signs = lasso_reference()
    solver = BlockCoordinateDescent(
        fun=least_squares if with_fun else None,
        block_prox=prox.l1,
        outer_fun=lasso_outer,
        block_fun=lasso_block,
        tol=1e-11,
    )

    def solve(lam, y):
        w, state = solver.run(jnp.zeros(P), lam, LASSO_X, y)
        return w, (w, state)

    jacobians, (w, state) = jax.jit(jax.jacrev(solve, argnums=(0, 1), has_aux=True))(
        LAM, jnp.asarray(LASSO_Y)
    )
    assert bool(state.converged) and int(state.iter_num) > BlockCoordinateDescent.REFRESH
    np.testing.assert_allclose(state.stepsize, 1.0 / np.sum(LASSO_X**2, axis=0), rtol=1e-12)
    # p in the state: the predictions Xw at the solution.
    np.testing.assert_allclose(state.predictions, LASSO_X @ np.asarray(w), rtol=1e-12, atol=1e-12)
    exact = lasso_closed_form(LAM, LASSO_X, LASSO_Y, support, signs)
    np.testing.assert_allclose(w, exact, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-8)
    want = jax.jacrev(lasso_closed_form, argnums=(0, 2))(LAM, LASSO_X, LASSO_Y, support, signs)
    assert_tree_allclose(jacobians, want, rtol=1e-8, atol=1e-10)


def svm_block(x_i, i, theta, X, Y):
    """Sample i's part of θW = Xᵀ(Y − x), and of ⟨x, Y⟩."""
    return jnp.outer(X[i], Y[i] - x_i), jnp.vdot(x_i, Y[i])


def svm_block_outer(p, theta, X, Y):
    return 0.5 * jnp.sum(p[0] ** 2) / theta + p[1]


@pytest.mark.parametrize("implicit_diff", [True, False])
def test_composite_block_coordinate_descent_on_the_svm_dual(implicit_diff):
    solver = BlockCoordinateDescent(
        fun=svm_dual,
        block_prox=prox.from_projection(projections.simplex),
        outer_fun=svm_block_outer,
        block_fun=svm_block,
        tol=1e-12,
        maxiter=1000,
        implicit_diff=implicit_diff,
    )

    def hyperloss(theta):
        x, state = solver.run(SVM_INIT, 1.0, theta, X_TR, Y_TR)
        return svm_outer(x, theta), (x, state)

    hypergradient, (x, state) = jax.jit(jax.grad(hyperloss, has_aux=True))(THETA)
    assert bool(state.converged)
    x_ref, fd = svm_reference()
    np.testing.assert_allclose(x, x_ref, atol=1e-10)
    np.testing.assert_allclose(hypergradient, fd, rtol=1e-6)
    # The black-box BCD's implicit hypergradient, to far below the finite-difference error.
    other, _ = svm_hypergradient("block-coordinate-descent")(THETA)
    np.testing.assert_allclose(hypergradient, other, rtol=1e-8)


def test_composite_form_that_disagrees_with_fun_fails_the_run():
    # The sweeps minimize ½‖Xw − 2y‖² + λ‖w‖₁; the error, measured with fun, stays far from 0.
    solver = BlockCoordinateDescent(
        fun=least_squares,
        block_prox=prox.l1,
        outer_fun=lambda p, X, y: 0.5 * jnp.sum((p - 2.0 * y) ** 2),  # not least_squares
        block_fun=lasso_block,
        maxiter=200,
        on_failure="ignore",
    )
    _, state = solver.run(jnp.zeros(P), LAM, LASSO_X, LASSO_Y)
    assert not bool(state.converged) and float(state.error) > 1.0
    assert int(state.iter_num) == 200


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(outer_fun=lasso_outer), "block_fun"),
        (dict(block_fun=lasso_block), "outer_fun"),
        (dict(fun=least_squares, outer_fun=lasso_outer, block_fun=3), "block_fun"),
    ],
)
def test_composite_form_needs_both_functions(kwargs, match):
    with pytest.raises(TypeError, match=match):
        BlockCoordinateDescent(block_prox=prox.l1, **kwargs)
