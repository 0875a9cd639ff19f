"""implicitdiff.objective: values and gradients equal JAXopt's on random data (float64), and
each gradient equals its closed form and central finite differences."""

import jax
import numpy as np
import pytest
from jaxopt import objective as jaxopt_objective
from jaxopt._src import base as jaxopt_base

from implicitdiff import objective

N, D, K = 9, 4, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D))
Y_REAL = RNG.normal(size=N)
Y_BINARY = (RNG.random(N) > 0.5).astype(float)
Y_CLASS = RNG.integers(0, K, N)
Y_ONEHOT = np.eye(K)[Y_CLASS]
W_VEC = RNG.normal(size=D)
W_MAT = RNG.normal(size=(D, K))
B = RNG.normal(size=K)
BETA = RNG.random((N, K))
L2REG = 0.3


def softmax_rows(Z):
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


# name: (arguments, the closed-form gradient in the first argument)
CASES = {
    "least_squares": ((W_VEC, (X, Y_REAL)), X.T @ (X @ W_VEC - Y_REAL) / N),
    "ridge_regression": (
        (W_VEC, L2REG, (X, Y_REAL)),
        X.T @ (X @ W_VEC - Y_REAL) / N + L2REG * W_VEC,
    ),
    "binary_logreg": ((W_VEC, (X, Y_BINARY)), X.T @ (sigmoid(X @ W_VEC) - Y_BINARY) / N),
    "multiclass_logreg": (
        (W_MAT, (X, Y_CLASS)),
        X.T @ (softmax_rows(X @ W_MAT) - Y_ONEHOT) / N,
    ),
    "multiclass_logreg_with_intercept": (
        ((W_MAT, B), (X, Y_CLASS)),
        (
            X.T @ (softmax_rows(X @ W_MAT + B) - Y_ONEHOT) / N,
            (softmax_rows(X @ W_MAT + B) - Y_ONEHOT).mean(0),
        ),
    ),
    "l2_multiclass_logreg": (
        (W_MAT, L2REG, (X, Y_CLASS)),
        X.T @ (softmax_rows(X @ W_MAT) - Y_ONEHOT) / N + L2REG * W_MAT,
    ),
    "l2_multiclass_logreg_with_intercept": (
        ((W_MAT, B), L2REG, (X, Y_CLASS)),
        (
            X.T @ (softmax_rows(X @ W_MAT + B) - Y_ONEHOT) / N + L2REG * W_MAT,
            (softmax_rows(X @ W_MAT + B) - Y_ONEHOT).mean(0),
        ),
    ),
    "multiclass_linear_svm_dual": (
        (BETA, L2REG, (X, Y_ONEHOT)),
        -X @ X.T @ (Y_ONEHOT - BETA) / L2REG + Y_ONEHOT - 1,
    ),
}


def test_every_jaxopt_objective_is_here():
    public = {n for n in dir(jaxopt_objective) if not n.startswith("_")}
    functions = {n for n in public if n[0].islower()}
    assert functions <= set(CASES), functions - set(CASES)
    for name in public:
        assert hasattr(objective, name), name


def central_fd_gradient(f, params, h=1e-6):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    grads = []
    for i, leaf in enumerate(leaves):
        leaf = np.asarray(leaf, float)
        g = np.zeros_like(leaf)
        for j in np.ndindex(leaf.shape):
            e = np.zeros_like(leaf)
            e[j] = h
            plus = [*leaves[:i], leaf + e, *leaves[i + 1 :]]
            minus = [*leaves[:i], leaf - e, *leaves[i + 1 :]]
            g[j] = (
                f(jax.tree_util.tree_unflatten(treedef, plus))
                - f(jax.tree_util.tree_unflatten(treedef, minus))
            ) / (2 * h)
        grads.append(g)
    return jax.tree_util.tree_unflatten(treedef, grads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradient_match_jaxopt_closed_form_and_finite_differences(name):
    args, closed_form = CASES[name]
    ours = getattr(objective, name)
    theirs = getattr(jaxopt_objective, name)
    value, grad = jax.jit(jax.value_and_grad(ours))(*args)
    their_value, their_grad = jax.value_and_grad(theirs)(*args)
    np.testing.assert_allclose(value, their_value, rtol=1e-12)
    for a, b in zip(
        jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(their_grad), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(
        jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(closed_form), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    f = jax.jit(lambda p: ours(p, *args[1:]))
    fd = central_fd_gradient(f, args[0])
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(fd), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-8)


def test_closed_form_values():
    np.testing.assert_allclose(
        objective.least_squares(W_VEC, (X, Y_REAL)),
        0.5 * np.mean((X @ W_VEC - Y_REAL) ** 2),
        rtol=1e-14,
    )
    Z = X @ W_MAT
    lse = np.log(np.exp(Z).sum(1))
    np.testing.assert_allclose(
        objective.multiclass_logreg(W_MAT, (X, Y_CLASS)),
        np.mean(lse - Z[np.arange(N), Y_CLASS]),
        rtol=1e-13,
    )
    z = X @ W_VEC
    np.testing.assert_allclose(
        objective.binary_logreg(W_VEC, (X, Y_BINARY)),
        np.mean(np.log1p(np.exp(z)) - Y_BINARY * z),
        rtol=1e-13,
    )
    V = X.T @ (Y_ONEHOT - BETA)
    np.testing.assert_allclose(
        objective.multiclass_linear_svm_dual(BETA, L2REG, (X, Y_ONEHOT)),
        0.5 / L2REG * np.sum(V**2) + np.sum(BETA * (Y_ONEHOT - 1)),
        rtol=1e-13,
    )
    # Ridge: zero gradient at (XᵀX/n + λI)⁻¹ Xᵀy/n.
    w_star = np.linalg.solve(X.T @ X / N + L2REG * np.eye(D), X.T @ Y_REAL / N)
    grad = jax.grad(objective.ridge_regression)(w_star, L2REG, (X, Y_REAL))
    np.testing.assert_allclose(grad, 0.0, atol=1e-14)


def test_composite_structure_matches_jaxopt():
    pairs = [
        ("least_squares", ((X, Y_REAL),)),
        ("binary_logreg", ((X, Y_BINARY),)),
        ("multiclass_logreg", ((X, Y_CLASS),)),
        ("multiclass_linear_svm_dual", (L2REG, (X, Y_ONEHOT))),
    ]
    for name, args in pairs:
        ours, theirs = getattr(objective, name), getattr(jaxopt_objective, name)
        assert isinstance(ours, objective.CompositeLinearFunction)
        np.testing.assert_allclose(
            ours.columnwise_lipschitz_const(*args),
            theirs.columnwise_lipschitz_const(*args),
            rtol=1e-14,
        )
        np.testing.assert_array_equal(ours.make_linop(*args).A, theirs.make_linop(*args).A)
        b_ours, b_theirs = ours.b(*args), theirs.b(*args)
        assert (b_ours is None) == (b_theirs is None)
        if b_ours is not None:
            np.testing.assert_array_equal(b_ours, b_theirs)


def test_linear_operator_matches_jaxopt():
    ours, theirs = objective.LinearOperator(X), jaxopt_base.LinearOperator(X)
    v, u, M = W_VEC, Y_REAL, W_MAT
    assert ours.shape() == theirs.shape()
    np.testing.assert_allclose(ours.matvec(v), theirs.matvec(v), rtol=1e-14)
    np.testing.assert_allclose(ours.matvec(M), theirs.matvec(M), rtol=1e-14)
    np.testing.assert_allclose(ours.rmatvec(u), theirs.rmatvec(u), rtol=1e-14)
    np.testing.assert_allclose(ours.matvec_element(v, 2), theirs.matvec_element(v, 2), rtol=1e-14)
    np.testing.assert_allclose(ours.rmatvec_element(u, 1), theirs.rmatvec_element(u, 1), rtol=1e-14)
    Xv = ours.matvec(v)
    np.testing.assert_allclose(
        ours.update_matvec(Xv, 0.7, 1), theirs.update_matvec(Xv, 0.7, 1), rtol=1e-14
    )
    np.testing.assert_allclose(ours.update_matvec(Xv, 0.7, 1), X @ (v + 0.7 * np.eye(D)[1]))
    XM = ours.matvec(M)
    np.testing.assert_allclose(
        ours.update_matvec(XM, B, 3), theirs.update_matvec(XM, B, 3), rtol=1e-14
    )
    XTu = ours.rmatvec(u)
    np.testing.assert_allclose(
        ours.update_rmatvec(XTu, 0.5, 2), theirs.update_rmatvec(XTu, 0.5, 2), rtol=1e-14
    )
    np.testing.assert_allclose(ours.column_l2_norms(), theirs.column_l2_norms(), rtol=1e-14)
    np.testing.assert_allclose(ours.column_l2_norms(squared=True), (X**2).sum(0), rtol=1e-14)


def test_bad_data_is_named():
    with pytest.raises(TypeError, match="data must be a pair"):
        objective.least_squares(W_VEC, X)
    with pytest.raises(ValueError, match="X in data"):
        objective.binary_logreg(W_VEC, (X[0], Y_BINARY))
    with pytest.raises(ValueError, match="y in data"):
        objective.multiclass_logreg(W_MAT, (X, Y_CLASS[:-1]))
    with pytest.raises(ValueError, match="class index"):
        objective.multiclass_logreg(W_MAT, (X, Y_CLASS + K))
    with pytest.raises(TypeError, match=r"params must be a pair \(W, b\)"):
        objective.multiclass_logreg_with_intercept(W_MAT, (X, Y_CLASS))


def test_module_is_exported():
    import implicitdiff

    assert implicitdiff.objective is objective
