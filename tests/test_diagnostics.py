"""jacobian_error_bound: the constants of Theorem 1 against closed forms, and the bound against
the true error of the implicit Jacobian at perturbed solutions."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose, compilations
from sklearn.datasets import load_diabetes

from implicitdiff.diagnostics import JacobianErrorBound, jacobian_error_bound
from implicitdiff.solvers import FixedPointIteration, GradientDescent

# Ridge regression on scikit-learn's diabetes data (442 × 10, the paper's example):
# F(w, λ, y) = Xᵀ(Xw − y) + λw, A = XᵀX + λI (constant in w: γ = 0), B = ∂(λ, y)F = [w, −Xᵀ]
# (∂ₓB = [I, 0]: β = 1), α = λ_min(XᵀX) + λ, and J(w) = A⁻¹[w, −Xᵀ] up to sign, so the
# Jacobian error at ŵ is ‖A⁻¹[ŵ − w*, 0]‖ = ‖A⁻¹(ŵ − w*)‖.
_X, _Y = load_diabetes(return_X_y=True)
X, Y = jnp.asarray(_X), jnp.asarray(_Y / 100.0)
LAM = 0.5
A = X.T @ X + LAM * jnp.eye(10)
W_STAR = jnp.linalg.solve(A, X.T @ Y)
ALPHA = float(jnp.linalg.eigvalsh(A)[0])


def ridge_condition(w, lam, y):
    return X.T @ (X @ w - y) + lam * w


def _perturbations(count=4, seed=0):
    rng = np.random.default_rng(seed)
    for scale in (1e-7, 1e-4, 1e-2, 1.0):
        for _ in range(count):
            d = rng.normal(size=10)
            yield jnp.asarray(scale * d / np.linalg.norm(d))


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "matrix-free"])
def test_ridge_constants_match_the_closed_form(dense):
    options = {} if dense else {"dense_max_size": 0, "iterations": 10}
    w_hat = W_STAR + 1e-3 * jnp.ones(10)
    est = jacobian_error_bound(ridge_condition, w_hat, LAM, Y, argnums=0, **options)
    assert isinstance(est, JacobianErrorBound)
    np.testing.assert_allclose(est.residual, jnp.linalg.norm(ridge_condition(w_hat, LAM, Y)))
    np.testing.assert_allclose(est.alpha, ALPHA, rtol=1e-8)
    np.testing.assert_allclose(est.b_norm, jnp.linalg.norm(w_hat), rtol=1e-8)  # B = w: R = ‖ŵ‖
    np.testing.assert_allclose(est.beta, 1.0, rtol=1e-8)
    assert abs(float(est.gamma)) < 1e-8
    np.testing.assert_allclose(est.solution_error, est.residual / ALPHA, rtol=1e-6)
    np.testing.assert_allclose(est.factor, 1 / ALPHA, rtol=1e-6)
    # θ = (λ, y): B = [w, −Xᵀ], R = its spectral norm.
    est = jacobian_error_bound(ridge_condition, w_hat, LAM, Y, **options)
    B = jnp.concatenate([w_hat[:, None], -X.T], axis=1)
    np.testing.assert_allclose(est.b_norm, jnp.linalg.norm(B, 2), rtol=1e-8)
    np.testing.assert_allclose(est.beta, 1.0, rtol=1e-8)


def test_ridge_bound_holds_and_is_not_loose():
    ratios = []
    for d in _perturbations():
        est = jacobian_error_bound(ridge_condition, W_STAR + d, LAM, Y)
        true_error = float(jnp.linalg.norm(jnp.linalg.solve(A, d)))
        assert float(est.bound) >= true_error * (1 - 1e-6)
        assert float(est.factor) * float(jnp.linalg.norm(d)) >= true_error * (1 - 1e-6)
        ratios.append(true_error / float(est.bound))
    assert min(ratios) > 1e-2, ratios  # within 100× everywhere
    assert max(ratios) <= 1.0


# A nonlinear root with every constant in closed form: F(x, θ) = Mx + x³ − θ ⊙ x − c, so
# ∂ₓF = M + 3 diag(x²) − diag(θ), ∂θF = −diag(x) (R = ‖x‖∞, β = 1) and ∂²ₓF[d, v] = 6 x⊙d⊙v
# (γ = 6 ‖x‖∞).
_rng = np.random.default_rng(1)
N = 12
_G = _rng.normal(size=(N, N))
M = jnp.asarray(_G @ _G.T / N + 2 * np.eye(N))
C = jnp.asarray(2 * _rng.normal(size=N))
THETA = jnp.asarray(_rng.uniform(0.0, 0.5, size=N))


def cubic(x, theta):
    return M @ x + x**3 - theta * x - C


def cubic_jacobian(x):  # J(x) = (∂ₓF)⁻¹ diag(x), up to sign
    return jnp.linalg.solve(M + jnp.diag(3 * x**2 - THETA), jnp.diag(x))


def _cubic_root():
    x = jnp.zeros(N)
    for _ in range(60):
        x = x - jnp.linalg.solve(M + jnp.diag(3 * x**2 - THETA), cubic(x, THETA))
    assert float(jnp.linalg.norm(cubic(x, THETA))) < 1e-12
    return x


X_CUBIC = _cubic_root()


def test_cubic_constants_and_bound():
    ratios = []
    for i, scale in enumerate((1e-6, 1e-3, 1e-1)):
        d = jnp.asarray(np.random.default_rng(i).normal(size=N))
        x_hat = X_CUBIC + scale * d / jnp.linalg.norm(d)
        est = jacobian_error_bound(cubic, x_hat, THETA)
        a = M + jnp.diag(3 * x_hat**2 - THETA)
        np.testing.assert_allclose(est.alpha, jnp.linalg.svd(a, compute_uv=False)[-1], rtol=1e-8)
        np.testing.assert_allclose(est.gamma, 6 * jnp.max(jnp.abs(x_hat)), rtol=1e-8)
        np.testing.assert_allclose(est.beta, 1.0, rtol=1e-8)
        np.testing.assert_allclose(est.b_norm, jnp.max(jnp.abs(x_hat)), rtol=1e-8)
        true_error = float(jnp.linalg.norm(cubic_jacobian(x_hat) - cubic_jacobian(X_CUBIC), 2))
        assert float(est.solution_error) >= scale * (1 - 1e-6)
        assert float(est.bound) >= true_error
        ratios.append(true_error / float(est.bound))
    assert min(ratios) > 1e-3, ratios


def test_cubic_matrix_free_estimates_are_close():
    # Above dense_max_size: Lanczos for α and R, the power method for γ and β (lower estimates).
    x_hat = X_CUBIC + 1e-4
    exact = jacobian_error_bound(cubic, x_hat, THETA)
    est = jacobian_error_bound(cubic, x_hat, THETA, dense_max_size=0, iterations=N)
    np.testing.assert_allclose(est.alpha, exact.alpha, rtol=1e-6)
    np.testing.assert_allclose(est.b_norm, exact.b_norm, rtol=1e-6)
    np.testing.assert_allclose(est.beta, exact.beta, rtol=1e-6)
    assert 0.5 * float(exact.gamma) <= float(est.gamma) <= float(exact.gamma) * (1 + 1e-8)


def test_far_from_a_root_the_estimate_gives_up():
    est = jacobian_error_bound(cubic, X_CUBIC + 10.0, THETA)
    assert np.isinf(est.solution_error) and np.isinf(est.bound)


def test_pytrees_argnums_and_solver():
    # The same ridge problem with w split into a dict, given the solver instead of F.
    def objective(w, lam, y):
        full = jnp.concatenate([w["a"], w["b"]])
        return 0.5 * jnp.sum((X @ full - y) ** 2) + 0.5 * lam * jnp.sum(full**2)

    solver = GradientDescent(fun=objective, tol=1e-3, maxiter=20_000)
    w, state = solver.run({"a": jnp.zeros(4), "b": jnp.zeros(6)}, LAM, Y)
    est = jacobian_error_bound(solver, w, LAM, Y, argnums=0)
    np.testing.assert_allclose(est.alpha, ALPHA, rtol=1e-8)
    np.testing.assert_allclose(est.residual, state.error, rtol=1e-6)
    w_flat = jnp.concatenate([w["a"], w["b"]])
    true_error = float(jnp.linalg.norm(jnp.linalg.solve(A, w_flat - W_STAR)))
    assert true_error <= float(est.bound) <= 100 * true_error


def test_fixed_point_solver_gives_the_residual_of_its_map():
    # x = T(x, λ, y) = x − η F(x, λ, y): the residual T(x) − x = −η F, so α is η α_F and the
    # bound (a ratio of constants times ‖F‖/α) is that of F.
    eta = 1.0 / float(jnp.linalg.eigvalsh(A)[-1])

    def T(w, lam, y):
        return w - eta * ridge_condition(w, lam, y)

    solver = FixedPointIteration(T, tol=1e-8, maxiter=10)
    w_hat = W_STAR + 1e-3
    est = jacobian_error_bound(solver, w_hat, LAM, Y, argnums=0)
    ref = jacobian_error_bound(ridge_condition, w_hat, LAM, Y, argnums=0)
    np.testing.assert_allclose(est.alpha, eta * ALPHA, rtol=1e-8)
    np.testing.assert_allclose(est.residual, eta * ref.residual, rtol=1e-8)
    np.testing.assert_allclose(est.bound, ref.bound, rtol=1e-6)
    # The same solver (or an equal one) reuses one residual function, hence one compilation.
    equal = FixedPointIteration(T, tol=1e-8, maxiter=10)
    assert equal == solver
    again = jacobian_error_bound(equal, w_hat, LAM, Y, argnums=0)
    np.testing.assert_allclose(again.bound, est.bound, rtol=1e-12)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="optimality_fun must be callable"):
        jacobian_error_bound(None, W_STAR, LAM)
    with pytest.raises(ValueError, match="argnums"):
        jacobian_error_bound(ridge_condition, W_STAR, LAM, Y, argnums=2)
    with pytest.raises(ValueError, match="no floating-point argument"):
        jacobian_error_bound(lambda w, k: w * k, W_STAR, jnp.arange(10))
    with pytest.raises(ValueError, match="as many entries as x_hat"):
        jacobian_error_bound(lambda w, lam: jnp.sum(w) * lam, W_STAR, LAM)
    with pytest.raises(TypeError, match="x_hat"):
        jacobian_error_bound(ridge_condition, jnp.arange(10), LAM, Y)
    with pytest.raises(ValueError, match="iterations"):
        jacobian_error_bound(ridge_condition, W_STAR, LAM, Y, iterations=0)


def test_repeated_calls_reuse_the_compilation():
    first = jacobian_error_bound(ridge_condition, W_STAR, LAM, Y, argnums=0)
    w_hat, lam = W_STAR + 1.0, 2.0 * LAM
    jacobian_error_bound(ridge_condition, w_hat, lam, Y, argnums=0)  # any first-call eager work
    with compilations() as compiled:
        again = jacobian_error_bound(ridge_condition, W_STAR, LAM, Y, argnums=0)
    assert compiled == []
    assert_tree_allclose(again, first, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("iterations", "iterations must be a positive int, got True"),
        ("dense_max_size", "dense_max_size must be a non-negative int, got True"),
        ("argnums", "argnums: True is not the index"),
    ],
)
def test_a_bool_is_not_a_count_or_an_index(option, message):
    x = jnp.ones(2)
    with pytest.raises(ValueError, match=message):
        jacobian_error_bound(lambda z, t: z - t, x, x, **{option: True})


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_estimate(dtype):
    """x̂ and θ in bfloat16 or float16 (F(x, θ) = x³ + x − θ near its root): α and γ as in
    float32 to 1%, and a finite bound within a factor 2 of float32's (F itself is evaluated in
    the half precision). Its SVD and eigenvalues raised "Unsupported dtype bfloat16"."""

    def F(x, theta):
        return x**3 + x - theta

    half = jacobian_error_bound(F, jnp.full(3, 0.68, dtype), jnp.ones(3, dtype))
    single = jacobian_error_bound(F, jnp.full(3, 0.68, jnp.float32), jnp.ones(3, jnp.float32))
    np.testing.assert_allclose([half.alpha, half.gamma], [single.alpha, single.gamma], rtol=0.01)
    assert 0.5 * single.bound <= half.bound <= 2.0 * single.bound
