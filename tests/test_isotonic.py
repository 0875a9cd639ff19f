"""implicitdiff.isotonic: PAV values against scikit-learn and JAXopt, the exact Jacobian against
the block-averaging closed form and central finite differences (float64), and the edge cases."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from implicitdiff import isotonic
from implicitdiff.isotonic import isotonic_l2_pav

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from jaxopt import isotonic as jaxopt_isotonic


def jaxopt_pav(y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Numba could not be imported"
        return jaxopt_isotonic.isotonic_l2_pav(y, **kwargs)


def sklearn_pav(y, y_min=None, y_max=None, increasing=True):
    y = np.asarray(y)
    model = IsotonicRegression(y_min=y_min, y_max=y_max, increasing=increasing)
    return model.fit_transform(np.arange(y.size), y)


def block_average_jacobian(solution):
    """∂v*/∂y from the blocks of a solution without ties between blocks: 1/|B| within a block."""
    solution = np.asarray(solution)
    starts = np.flatnonzero(np.r_[True, solution[1:] != solution[:-1]])
    ends = np.r_[starts[1:], solution.size]
    jac = np.zeros((solution.size, solution.size))
    for s, e in zip(starts, ends, strict=True):
        jac[s:e, s:e] = 1.0 / (e - s)
    return jac


def central_fd_jacobian(f, y, h=1e-6):
    y = np.asarray(y, float)
    cols = []
    for j in range(y.size):
        e = np.zeros_like(y)
        e[j] = h
        cols.append((np.asarray(f(y + e)) - np.asarray(f(y - e))) / (2 * h))
    return np.stack(cols, axis=-1)


def random_inputs(seed, n):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n) + np.linspace(0.0, 2.0, n)


@pytest.mark.parametrize("n", [2, 7, 300])
@pytest.mark.parametrize("increasing", [True, False])
def test_values_match_sklearn_and_jaxopt(n, increasing):
    y = random_inputs(n, n)
    ours = np.asarray(isotonic_l2_pav(y, increasing=increasing))
    np.testing.assert_allclose(ours, sklearn_pav(y, increasing=increasing), rtol=1e-12, atol=1e-14)
    theirs = np.asarray(jaxopt_pav(jnp.asarray(y), increasing=increasing))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    assert np.all(np.diff(ours) >= 0) if increasing else np.all(np.diff(ours) <= 0)


@pytest.mark.parametrize("bounds", [(-0.5, 1.0), (0.2, 0.2), (-np.inf, 0.0), (0.3, np.inf)])
def test_bounded_values_match_sklearn_and_jaxopt(bounds):
    y_min, y_max = bounds
    y = random_inputs(11, 25)
    ours = np.asarray(isotonic_l2_pav(y, y_min=y_min, y_max=y_max))
    expected = sklearn_pav(
        y, y_min=None if np.isinf(y_min) else y_min, y_max=None if np.isinf(y_max) else y_max
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-14)
    theirs = jaxopt_pav(jnp.asarray(y), y_min=y_min, y_max=y_max)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", [4, 30])
@pytest.mark.parametrize("increasing", [True, False])
def test_jacobian_is_block_average_and_matches_finite_differences_and_jaxopt(n, increasing):
    y = random_inputs(100 + n, n)
    f = jax.jit(lambda v: isotonic_l2_pav(v, increasing=increasing))
    solution = f(y)
    closed = block_average_jacobian(solution)
    jac_fwd = np.asarray(jax.jacfwd(f)(y))
    jac_rev = np.asarray(jax.jacrev(f)(y))
    np.testing.assert_allclose(jac_fwd, closed, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(jac_rev, closed, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(jac_fwd, central_fd_jacobian(f, y), atol=1e-8)
    # JAXopt adds 1e-8 to each block size in its JVP: agree to that relative accuracy.
    theirs = jax.jacfwd(lambda v: jaxopt_pav(v, increasing=increasing))(jnp.asarray(y))
    np.testing.assert_allclose(jac_fwd, theirs, rtol=1e-7, atol=1e-12)


def test_gradient_through_bounds_matches_finite_differences():
    y = random_inputs(5, 12)

    def loss(y, y_min, y_max):
        out = isotonic_l2_pav(y, y_min=y_min, y_max=y_max)
        return jnp.sum(jnp.sin(out) * jnp.arange(1.0, 13.0))

    args = (jnp.asarray(y), 0.4, 1.5)
    grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
    clipped_low = np.asarray(isotonic_l2_pav(y)) < 0.4
    assert clipped_low.any() and (np.asarray(isotonic_l2_pav(y)) > 1.5).any()
    np.testing.assert_allclose(grads[0][clipped_low], 0.0, atol=0)
    h = 1e-6
    for i, arg in enumerate(args):
        flat = np.atleast_1d(np.asarray(arg, float))
        fd = []
        for j in range(flat.size):
            e = np.zeros_like(flat)
            e[j] = h
            plus = list(args)
            minus = list(args)
            plus[i] = (flat + e).reshape(np.shape(arg))
            minus[i] = (flat - e).reshape(np.shape(arg))
            fd.append((loss(*plus) - loss(*minus)) / (2 * h))
        np.testing.assert_allclose(np.ravel(grads[i]), fd, atol=1e-8)


def test_derivative_at_a_bound_is_the_unclipped_side():
    """An entry exactly at y_min has the derivative of the feasible side (1), equal to the
    one-sided finite difference from inside (JAXopt's jnp.clip halves it: 0.5)."""
    y = jnp.array([0.0, 1.0, 2.0])
    f = jax.jit(lambda v: isotonic_l2_pav(v, y_min=0.0, y_max=2.0))
    jac = np.asarray(jax.jacfwd(f)(y))
    np.testing.assert_array_equal(jac, np.eye(3))
    h = 1e-7
    inside = (np.asarray(f(y.at[0].add(h))) - np.asarray(f(y))) / h
    np.testing.assert_allclose(jac[:, 0], inside, atol=1e-8)
    np.testing.assert_allclose(jax.jacfwd(lambda v: jaxopt_pav(v, y_min=0.0))(y)[0, 0], 0.5)


def test_ties_and_constant_input_are_pooled_exactly():
    y = jnp.full(5, 0.1)
    assert np.array_equal(isotonic_l2_pav(y), y)  # bit-exact, no rounding from averaging
    np.testing.assert_allclose(jax.jacfwd(isotonic_l2_pav)(y), np.full((5, 5), 0.2), rtol=1e-15)
    # An exact tie between a pooled block and the next entry pools them (as JAXopt's JVP does).
    y = jnp.array([2.0, 0.0, 1.0, 3.0])
    np.testing.assert_array_equal(isotonic_l2_pav(y), [1.0, 1.0, 1.0, 3.0])
    expected = np.zeros((4, 4))
    expected[:3, :3] = 1 / 3
    expected[3, 3] = 1
    np.testing.assert_allclose(jax.jacfwd(isotonic_l2_pav)(y), expected, rtol=1e-15)
    np.testing.assert_allclose(jax.jacfwd(jaxopt_pav)(y), expected, rtol=1e-7)


def test_sorted_input_is_returned_exactly_with_identity_jacobian():
    # Entries 1e-9 apart are distinct blocks: the Jacobian is the identity. (JAXopt detects
    # blocks by |Δv| <= 1e-8 on the output and pools these two: its Jacobian is 0.5 everywhere.)
    for y in (jnp.array([0.0, 1e-9]), jnp.linspace(-3.0, 3.0, 9), jnp.array([-1e30, 1e30])):
        assert np.array_equal(isotonic_l2_pav(y), y)
        np.testing.assert_array_equal(jax.jacfwd(isotonic_l2_pav)(y), np.eye(y.size))
        np.testing.assert_array_equal(jax.jacrev(isotonic_l2_pav)(y), np.eye(y.size))


def test_length_one():
    y = jnp.array([3.5])
    assert np.array_equal(isotonic_l2_pav(y), y)
    np.testing.assert_array_equal(jax.jacfwd(isotonic_l2_pav)(y), [[1.0]])
    np.testing.assert_array_equal(isotonic_l2_pav(jnp.zeros(0)), jnp.zeros(0))


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_large_and_tiny_magnitudes(scale):
    y = random_inputs(9, 20)
    base = np.asarray(isotonic_l2_pav(y))
    scaled = np.asarray(isotonic_l2_pav(scale * y))
    np.testing.assert_allclose(scaled, scale * base, rtol=1e-13)
    np.testing.assert_allclose(scaled, sklearn_pav(scale * y), rtol=1e-12)
    # The Jacobian is scale invariant (homogeneous of degree 0).
    np.testing.assert_allclose(
        jax.jacfwd(isotonic_l2_pav)(scale * y), block_average_jacobian(base), rtol=1e-14
    )


def test_decreasing_input_pools_everything():
    y = jnp.arange(50.0, 0.0, -1.0)
    np.testing.assert_allclose(isotonic_l2_pav(y), np.full(50, 25.5), rtol=1e-15)
    np.testing.assert_allclose(
        jax.jacfwd(isotonic_l2_pav)(y), np.full((50, 50), 1 / 50), rtol=1e-14
    )


def test_batched_2d_jit_and_vmap_agree_with_jaxopt():
    Y = np.stack([random_inputs(s, 15) for s in range(4)])
    direct = isotonic_l2_pav(Y)
    vmapped = jax.vmap(isotonic_l2_pav)(Y)
    jitted = jax.jit(jax.vmap(isotonic_l2_pav))(Y)
    np.testing.assert_array_equal(direct, vmapped)
    np.testing.assert_array_equal(direct, jitted)
    np.testing.assert_allclose(direct, jax.vmap(jaxopt_pav)(jnp.asarray(Y)), rtol=1e-12)
    for row, expected in zip(Y, direct, strict=True):
        np.testing.assert_allclose(sklearn_pav(row), expected, rtol=1e-12)
    # The JVP of the batch is the row-wise one.
    T = np.random.default_rng(0).normal(size=Y.shape)
    _, tangent = jax.jvp(isotonic_l2_pav, (Y,), (T,))
    for i in range(4):
        np.testing.assert_allclose(tangent[i], block_average_jacobian(direct[i]) @ T[i], rtol=1e-13)


def test_pav_is_a_lax_loop_not_unrolled():
    """The traced program has the same size for n = 10 and n = 1000 (no Python loop)."""

    def size(n):
        return len(jax.make_jaxpr(isotonic_l2_pav)(jnp.zeros(n)).jaxpr.eqns)

    assert size(10) == size(1000)
    assert "while" in str(jax.make_jaxpr(isotonic_l2_pav)(jnp.zeros(10)))


def test_integer_input_is_converted_to_float():
    out = isotonic_l2_pav(jnp.array([3, 1, 2]))
    assert jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_array_equal(out, [2.0, 2.0, 2.0])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="y must have at least one dimension"):
        isotonic_l2_pav(1.0)
    with pytest.raises(ValueError, match="y_min must be <= y_max"):
        isotonic_l2_pav(jnp.ones(3), y_min=1.0, y_max=0.0)
    with pytest.raises(TypeError, match="increasing"):
        isotonic_l2_pav(jnp.ones(3), increasing="auto")
    with pytest.raises(TypeError, match="y must be real"):
        isotonic_l2_pav(jnp.ones(3, dtype=complex))
    # Traced invalid bounds cannot raise: the result is NaN.
    out = jax.jit(lambda lo: isotonic_l2_pav(jnp.ones(3), y_min=lo, y_max=0.0))(1.0)
    assert np.all(np.isnan(out))
    # An undefined problem (a NaN entry) gives NaN, not a partially sorted answer.
    assert np.all(np.isnan(isotonic_l2_pav(jnp.array([1.0, jnp.nan, 0.0]))))


def test_module_is_exported():
    import implicitdiff

    assert implicitdiff.isotonic is isotonic
    assert isotonic.isotonic_l2_pav is isotonic_l2_pav
