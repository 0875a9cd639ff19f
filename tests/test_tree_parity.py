"""The ``jaxopt.tree_util`` functions under their implicitdiff names (``tree_`` prefix dropped),
side by side with JAXopt 0.8.5 on the same trees: values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jaxopt._src.tree_util as jtu  # also the functions jaxopt.tree_util does not export
import numpy as np
import pytest
from helpers import finite_difference_grad

from implicitdiff import tree

_RNG = np.random.default_rng(0)


def _tree(seed, complex_=False):
    rng = np.random.default_rng(seed)

    def leaf(*shape):
        x = rng.normal(size=shape)
        return jnp.asarray(x + 1j * rng.normal(size=shape) if complex_ else x)

    return {"a": leaf(3), "b": (leaf(2, 2), leaf())}


X, Y = _tree(1), _tree(2)
XC, YC = _tree(3, True), _tree(4, True)
STACKED = {"a": jnp.asarray(_RNG.normal(size=(4, 3))), "b": jnp.asarray(_RNG.normal(size=(4, 2)))}
WEIGHTS = jnp.asarray(_RNG.normal(size=4))

# our name → (ours, JAXopt's, arguments)
PAIRS = {
    "add": (tree.add, jtu.tree_add, (X, Y)),
    "sub": (tree.sub, jtu.tree_sub, (X, Y)),
    "mul": (tree.mul, jtu.tree_mul, (X, Y)),
    "div": (tree.div, jtu.tree_div, (X, Y)),
    "negative": (tree.negative, jtu.tree_negative, (X,)),
    "scalar_mul": (tree.scalar_mul, jtu.tree_scalar_mul, (2.5, X)),
    "add_scalar_mul": (tree.add_scalar_mul, jtu.tree_add_scalar_mul, (X, -1.5, Y)),
    "dot": (tree.dot, jtu.tree_dot, (X, Y)),
    "vdot": (tree.vdot, jtu.tree_vdot, (XC, YC)),
    "vdot_real": (tree.vdot_real, jtu.tree_vdot_real, (XC, YC)),
    "sum": (tree.sum, jtu.tree_sum, (X,)),
    "l2_norm": (tree.l2_norm, jtu.tree_l2_norm, (XC,)),
    "l2_norm_squared": (
        lambda x: tree.l2_norm(x, squared=True),
        lambda x: jtu.tree_l2_norm(x, squared=True),
        (XC,),
    ),
    "inf_norm": (tree.inf_norm, jtu.tree_inf_norm, (X,)),
    "conj": (tree.conj, jtu.tree_conj, (XC,)),
    "real": (tree.real, jtu.tree_real, (XC,)),
    "imag": (tree.imag, jtu.tree_imag, (XC,)),
    "reciprocal": (tree.reciprocal, jtu.tree_reciproqual, (X,)),
    "zeros_like": (tree.zeros_like, jtu.tree_zeros_like, (X,)),
    "ones_like": (tree.ones_like, jtu.tree_ones_like, (X,)),
    "average": (tree.average, jtu.tree_average, (STACKED, WEIGHTS)),
    "gram": (tree.gram, jtu.tree_gram, (STACKED,)),
    "where_tree_condition": (
        tree.where,
        jtu.tree_where,
        (jax.tree_util.tree_map(lambda v: v > 0, X), X, Y),
    ),
    "where_array_and_scalar": (tree.where, jtu.tree_where, (True, X, 0.0)),
    "reduce": (
        lambda x: tree.reduce(lambda a, b: jnp.maximum(a, jnp.max(b)), x, -jnp.inf),
        lambda x: jtu.tree_reduce(lambda a, b: jnp.maximum(a, jnp.max(b)), x, -jnp.inf),
        (X,),
    ),
}


@jax.jit
def _all_pairs(_):
    return {name: (ours(*args), theirs(*args)) for name, (ours, theirs, args) in PAIRS.items()}


@pytest.fixture(scope="module")
def all_pairs():
    return _all_pairs(0)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_values_equal_jaxopt(all_pairs, name):
    ours, theirs = all_pairs[name]
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    for a, b in zip(
        jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs), strict=True
    ):
        assert jnp.result_type(a) == jnp.result_type(b), name
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


def test_broadcast():
    x, y, z = tree.broadcast(1.0, X, jnp.zeros(3))
    jx, jy, jz = jtu.broadcast_pytrees(1.0, X, jnp.zeros(3))
    for ours, theirs in [(x, jx), (y, jy), (z, jz)]:
        assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    with pytest.raises(ValueError, match="different structures"):
        tree.where(True, X, (1.0, 2.0))
    assert tree.broadcast(1.0, 2.0) == (1.0, 2.0)


def _scalar_functions(x, y):
    """Every scalar-valued function of two trees, summed with distinct weights."""
    return (
        tree.vdot_real(x, y)
        + 2 * tree.l2_norm(x)
        + 3 * tree.l2_norm(y, squared=True)
        + 5 * tree.inf_norm(x)
        + 7 * tree.sum(tree.mul(x, tree.div(y, tree.add_scalar_mul(x, 0.1, y))))
        + 11 * tree.sum(tree.dot(x, y)["b"][0])
    )


def _jaxopt_scalar_functions(x, y):
    return (
        jtu.tree_vdot_real(x, y)
        + 2 * jtu.tree_l2_norm(x)
        + 3 * jtu.tree_l2_norm(y, squared=True)
        + 5 * jtu.tree_inf_norm(x)
        + 7 * jtu.tree_sum(jtu.tree_mul(x, jtu.tree_div(y, jtu.tree_add_scalar_mul(x, 0.1, y))))
        + 11 * jtu.tree_sum(jtu.tree_dot(x, y)["b"][0])
    )


@jax.jit
def _gradients(x, y):
    return (
        jax.grad(_scalar_functions, argnums=(0, 1))(x, y),
        jax.grad(_jaxopt_scalar_functions, argnums=(0, 1))(x, y),
        jax.grad(lambda s: jnp.sum(tree.gram(s) ** 2))(STACKED),
        jax.grad(lambda s: jnp.sum(jtu.tree_gram(s) ** 2))(STACKED),
        jax.grad(lambda w: tree.sum(tree.average(STACKED, w)))(WEIGHTS),
        jax.grad(lambda w: jtu.tree_sum(jtu.tree_average(STACKED, w)))(WEIGHTS),
    )


def test_gradients_equal_jaxopt_and_finite_differences():
    ours, theirs, gram, jgram, avg, javg = _gradients(X, Y)
    for a, b in [(ours, theirs), (gram, jgram), (avg, javg)]:
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)
    expected = finite_difference_grad(lambda p: _scalar_functions(*p), (X, Y))
    for u, v in zip(
        jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(expected), strict=True
    ):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)
    # Closed forms: ∂ Σ G² / ∂x[k] = 4 Σ_l G[k, l] x[l]; ∂ Σ average / ∂w = Σ of each tree.
    flat = np.concatenate([np.asarray(STACKED["a"]), np.asarray(STACKED["b"])], axis=1)
    g = flat @ flat.T
    np.testing.assert_allclose(gram["a"], (4 * g @ flat)[:, :3], rtol=1e-12)
    np.testing.assert_allclose(avg, flat.sum(axis=1), rtol=1e-12)


def test_l2_norm_is_safe_at_huge_and_tiny_scales():
    """JAXopt's tree_l2_norm squares the entries: 0 at 1e-200 and inf at 1e200 in float64."""
    for scale in (1e-200, 1e200):
        x = tree.scale(scale, X)
        expected = scale * float(tree.l2_norm(X))
        np.testing.assert_allclose(tree.l2_norm(x), expected, rtol=1e-14)
        assert float(jtu.tree_l2_norm(x)) in (0.0, np.inf)
