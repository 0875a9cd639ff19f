"""Pytree arithmetic against numpy on the flattened vector."""

import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import tree

X = {"a": jnp.array([1.0, -2.0]), "b": (jnp.array([[3.0]]), jnp.array(4.0))}
Y = {"a": jnp.array([0.5, 1.0]), "b": (jnp.array([[-1.0]]), jnp.array(2.0))}
XF = np.array([1.0, -2.0, 3.0, 4.0])
YF = np.array([0.5, 1.0, -1.0, 2.0])


def flat(t):
    return np.concatenate([np.ravel(leaf) for leaf in __import__("jax").tree_util.tree_leaves(t)])


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
