"""Pytree arithmetic against numpy on the flattened vector."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import tree

X = {"a": jnp.array([1.0, -2.0]), "b": (jnp.array([[3.0]]), jnp.array(4.0))}
Y = {"a": jnp.array([0.5, 1.0]), "b": (jnp.array([[-1.0]]), jnp.array(2.0))}
XF = np.array([1.0, -2.0, 3.0, 4.0])
YF = np.array([0.5, 1.0, -1.0, 2.0])


def flat(t):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(t)])


def test_elementwise():
    np.testing.assert_allclose(flat(tree.add(X, Y)), XF + YF)
    np.testing.assert_allclose(flat(tree.sub(X, Y)), XF - YF)
    np.testing.assert_allclose(flat(tree.neg(X)), -XF)
    np.testing.assert_allclose(flat(tree.scale(3.0, X)), 3 * XF)
    np.testing.assert_allclose(flat(tree.axpy(2.0, X, Y)), 2 * XF + YF)
    np.testing.assert_allclose(flat(tree.where(False, X, Y)), YF)
    np.testing.assert_allclose(flat(tree.zeros_like(X)), 0 * XF)
    np.testing.assert_allclose(flat(tree.ones_like(X)), 1 + 0 * XF)
    np.testing.assert_allclose(flat(tree.full_like(X, 7.0)), 7 + 0 * XF)


def test_reductions():
    np.testing.assert_allclose(tree.vdot(X, Y), XF @ YF)
    np.testing.assert_allclose(tree.sum(X), XF.sum())
    np.testing.assert_allclose(tree.norm(X), np.linalg.norm(XF))
    np.testing.assert_allclose(tree.norm(X, 1), np.abs(XF).sum())
    np.testing.assert_allclose(tree.norm(X, jnp.inf), np.abs(XF).max())
    assert tree.size(X) == 4
    with pytest.raises(ValueError, match="ord must be"):
        tree.norm(X, 3)


def test_dtype_promotion():
    assert tree.dtype({"a": jnp.zeros(2, jnp.float32)}) == jnp.float32
    assert tree.dtype((jnp.zeros(2, jnp.float32), jnp.zeros(2))) == jnp.float64
    assert tree.dtype(jnp.arange(3)) == jnp.float64


# ---------------------------------------------------------------------------------------------
# Family "reductions on empty and non-finite trees" (issue 12, item 19). Every function of
# tree.__all__ is classified below, so that a new reduction must be added to the sweep.

_REDUCTIONS = {
    "norm1": (lambda t: tree.norm(t, 1), lambda v: np.sum(np.abs(v))),
    "norm2": (lambda t: tree.norm(t, 2), lambda v: np.sqrt(np.sum(np.abs(v) ** 2))),
    "norm_inf": (lambda t: tree.norm(t, jnp.inf), lambda v: np.max(np.abs(v), initial=0.0)),
    "vdot": (lambda t: tree.vdot(t, t), lambda v: np.sum(v * v)),
    "sum": (tree.sum, np.sum),
    "size": (tree.size, np.size),
    "vdot_real": (lambda t: tree.vdot_real(t, t), lambda v: np.sum(v * v)),
    "l2_norm": (tree.l2_norm, lambda v: np.sqrt(np.sum(np.abs(v) ** 2))),
    "inf_norm": (tree.inf_norm, lambda v: np.max(np.abs(v), initial=0.0)),
}
_NOT_REDUCTIONS = {
    "add", "axpy", "dtype", "full_like", "map", "neg", "ones_like", "scale",
    "stop_gradient", "sub", "where", "zeros_like",
    # JAXopt's tree_util names (issue 13): element-wise, or reductions along a batch axis
    "add_scalar_mul", "average", "broadcast", "conj", "div", "dot", "gram", "imag", "mul",
    "negative", "real", "reciprocal", "reduce", "scalar_mul",
}  # fmt: skip

_TREES = {
    "empty_leaf_only": {"a": jnp.zeros(0)},
    "empty_and_full_leaves": {"a": jnp.zeros((0, 3)), "b": jnp.array([1.0, -3.0]), "c": ()},
    "no_leaves": {},
    "none": None,
    "inf_leaf": [jnp.array([1.0, -jnp.inf]), jnp.zeros(0)],
    "nan_leaf": [jnp.array([1.0, jnp.nan]), jnp.zeros(0)],
    "inf_and_nan": [jnp.array([jnp.inf]), jnp.array([jnp.nan, 2.0])],
}


def test_tree_family_reductions_cover_tree_module():
    assert {name.rstrip("12_inf") for name in _REDUCTIONS} | _NOT_REDUCTIONS == set(tree.__all__)


@pytest.mark.parametrize("tree_name", sorted(_TREES))
@pytest.mark.parametrize("reduction", sorted(_REDUCTIONS))
def test_tree_family_reductions_empty_and_nonfinite(reduction, tree_name):
    fun, reference = _REDUCTIONS[reduction]
    t = _TREES[tree_name]
    leaves = jax.tree_util.tree_leaves(t)
    flat_t = np.concatenate([np.ravel(leaf) for leaf in leaves]) if leaves else np.zeros(0)
    expected = reference(flat_t)
    got = fun(t)
    np.testing.assert_array_equal(np.asarray(got), expected)  # NaN == NaN here
    if reduction != "size":  # the same under jit
        np.testing.assert_array_equal(np.asarray(jax.jit(fun)(t)), expected)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("magnitude", [1e30, 1e-30])
def test_tree_family_norm_huge_and_tiny(dtype, magnitude):
    """‖x‖₂ of entries 1e±30 is representable in float32 though its square is not."""
    values = np.array([3.0, -4.0, 12.0])
    t = {
        "a": jnp.asarray(values[:2] * magnitude, dtype),
        "b": jnp.asarray(values[2:] * magnitude, dtype),
    }
    got = tree.norm(t)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, 13.0 * magnitude, rtol=4 * np.finfo(dtype).eps)
    grad = jax.grad(tree.norm)(t)  # x / ‖x‖, exactly
    np.testing.assert_allclose(grad["a"], values[:2] / 13.0, rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(grad["b"], values[2:] / 13.0, rtol=4 * np.finfo(dtype).eps)
