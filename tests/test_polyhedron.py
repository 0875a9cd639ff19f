"""The projection onto a polyhedron {y: Ay = b, Gy ≤ h} (through OSQP, implicit derivatives)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import assert_tree_allclose, finite_difference_jvp, random_tangent
from hypothesis import given, settings
from hypothesis import strategies as st

from implicitdiff import projections
from implicitdiff.projections import polyhedron

N, P, M = 4, 1, 5  # every random problem has these shapes: one compilation serves them all


def random_polyhedron(seed):
    """(x, (A, b, G, h), y0): a nonempty polyhedron around y0 (G y0 < h) and a point x."""
    rng = np.random.default_rng(seed)
    y0 = rng.normal(size=N)
    A, G = rng.normal(size=(P, N)), rng.normal(size=(M, N))
    b, h = A @ y0, G @ y0 + rng.uniform(0.1, 1.0, size=M)
    x = y0 + 2.0 * rng.normal(size=N)
    return jnp.asarray(x), tuple(map(jnp.asarray, (A, b, G, h))), y0


def slsqp_projection(x, A, b, G, h):
    x, A, b, G, h = map(np.asarray, (x, A, b, G, h))
    result = scipy.optimize.minimize(
        lambda y: 0.5 * np.sum((y - x) ** 2),
        x,
        jac=lambda y: y - x,
        method="SLSQP",
        constraints=[
            dict(type="eq", fun=lambda y: A @ y - b, jac=lambda y: A),
            dict(type="ineq", fun=lambda y: h - G @ y, jac=lambda y: -G),
        ],
        options=dict(ftol=1e-15, maxiter=500),
    )
    assert result.success
    return result.x


# Around a known projection: the first two rows of G active with multipliers (0.8, 1.3), the
# others inactive with slacks ≥ 0.3, and x = p + Aᵀν + Gᵀλ. Strictly complementary.
_RNG = np.random.default_rng(42)
_A, _G = _RNG.normal(size=(P, N)), _RNG.normal(size=(M, N))
P_STAR, NU, LAM = _RNG.normal(size=N), np.array([0.5]), np.array([0.8, 1.3, 0.0, 0.0, 0.0])
KNOWN = {
    "A": jnp.asarray(_A),
    "b": jnp.asarray(_A @ P_STAR),
    "G": jnp.asarray(_G),
    "h": jnp.asarray(_G @ P_STAR + np.array([0.0, 0.0, 0.3, 0.6, 0.9])),
}
X_KNOWN = jnp.asarray(P_STAR + _A.T @ NU + _G.T @ LAM)


def test_known_projection_and_slsqp():
    hyper = tuple(KNOWN.values())
    np.testing.assert_allclose(polyhedron(X_KNOWN, hyper), P_STAR, rtol=1e-10, atol=1e-12)
    for seed in range(3):
        x, hyper, _ = random_polyhedron(seed)
        p = polyhedron(x, hyper)
        np.testing.assert_allclose(p, slsqp_projection(x, *hyper), atol=1e-7)


def test_equalities_only_is_the_affine_projection():
    x, (A, b, _, _), _ = random_polyhedron(3)
    A2, b2 = jnp.concatenate([A, A + 1.0]), jnp.concatenate([b, b - 0.5])
    got = polyhedron(x, (A2, b2, None, None))
    np.testing.assert_allclose(got, projections.affine_set(x, (A2, b2)), rtol=1e-10, atol=1e-12)


def test_inequalities_only_is_the_box_projection():
    x = jnp.array([-2.0, 0.3, 1.7, 0.9])
    lower, upper = jnp.array([-1.0, -1.0, 0.0, 0.0]), jnp.array([1.0, 0.5, 1.0, 2.0])
    G, h = jnp.concatenate([jnp.eye(N), -jnp.eye(N)]), jnp.concatenate([upper, -lower])
    np.testing.assert_allclose(
        polyhedron(x, (None, None, G, h)), projections.box(x, (lower, upper)), atol=1e-12
    )
    # The Jacobian: 1 on the free coordinates (x₂, x₄), 0 on the clipped ones.
    jac = jax.jacfwd(polyhedron)(x, (None, None, G, h))
    np.testing.assert_allclose(jac, np.diag([0.0, 1.0, 0.0, 1.0]), atol=1e-10)


def test_no_constraints_is_the_identity_and_empty_is_an_error_or_nan():
    x, (A, b, G, h), _ = random_polyhedron(4)
    np.testing.assert_array_equal(polyhedron(x, (None, None, None, None)), x)
    # Gy ≤ h with rows g and −g and h₁ + h₂ < 0: empty. Concrete: ValueError; traced: NaN.
    G_empty = G.at[1].set(-G[0])
    h_empty = h.at[0].set(-1.0).at[1].set(-1.0)
    with pytest.raises(ValueError, match="empty"):
        polyhedron(x, (A, b, G_empty, h_empty))
    assert np.all(np.isnan(jax.jit(polyhedron)(x, (A, b, G_empty, h_empty))))


@pytest.mark.parametrize("mode", [jax.jacrev, jax.jacfwd], ids=["jacrev", "jacfwd"])
def test_jacobian_in_x_is_the_projection_onto_the_active_null_space(mode):
    hyper = tuple(KNOWN.values())
    jac = mode(polyhedron)(X_KNOWN, hyper)
    B = np.concatenate([_A, _G[:2]])  # equalities and the two active inequalities
    want = np.eye(N) - B.T @ np.linalg.solve(B @ B.T, B)
    np.testing.assert_allclose(jac, want, rtol=1e-8, atol=1e-10)
    tangent = random_tangent(X_KNOWN, seed=1)
    fd = finite_difference_jvp(lambda x: polyhedron(x, hyper), X_KNOWN, tangent, eps=1e-6)
    np.testing.assert_allclose(jac @ tangent, fd, rtol=1e-7, atol=1e-9)


def test_gradient_in_the_hyperparameters_matches_finite_differences():
    w = jnp.asarray(np.random.default_rng(7).normal(size=N))
    names = tuple(KNOWN)

    def loss(x, *hyper):
        return w @ polyhedron(x, hyper)

    args = (X_KNOWN, *KNOWN.values())
    grads = jax.grad(loss, argnums=range(5))(*args)
    for i, name in enumerate(("x", *names)):
        tangent = random_tangent(args[i], seed=10 + i)

        def along(value, i=i):
            return loss(*args[:i], value, *args[i + 1 :])

        fd = finite_difference_jvp(along, args[i], tangent, eps=1e-6)
        np.testing.assert_allclose(
            jnp.vdot(grads[i], tangent), fd, rtol=1e-7, atol=1e-9, err_msg=name
        )


def test_jit_and_vmap_over_points():
    hyper = tuple(KNOWN.values())
    xs = X_KNOWN + 0.5 * jnp.asarray(np.random.default_rng(8).normal(size=(3, N)))
    batched = jax.jit(jax.vmap(polyhedron, in_axes=(0, None)))(xs, hyper)
    assert_tree_allclose(batched, jnp.stack([polyhedron(x, hyper) for x in xs]), rtol=1e-10)


def test_bad_inputs_are_named():
    x, (A, b, G, h), _ = random_polyhedron(0)
    with pytest.raises(ValueError, match="give both A and b"):
        polyhedron(x, (A, None, G, h))
    with pytest.raises(ValueError, match="G must have shape"):
        polyhedron(x, (A, b, G[:, :2], h))
    with pytest.raises(TypeError, match="hyperparams must be a tuple"):
        polyhedron(x, (A, b))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_property_feasible_and_obtuse_angle(seed, scale):
    """p is feasible and ⟨x − p, y − p⟩ ≤ 0 for every feasible y (the projection's variational
    inequality), checked on random feasible points y."""
    x, (A, b, G, h), y0 = random_polyhedron(seed)
    x = y0 + scale * (x - y0)
    p = np.asarray(polyhedron(x, (A, b, G, h)))
    A, b, G, h, x = map(np.asarray, (A, b, G, h, x))
    tol = 1e-9 * (1.0 + np.abs(x).max())
    np.testing.assert_allclose(A @ p, b, atol=tol)
    assert np.all(G @ p <= h + tol)
    rng = np.random.default_rng(seed % 1000)
    null = np.linalg.svd(A)[2][P:].T  # directions that keep A y = b
    candidates = y0 + rng.normal(size=(200, N - P)) @ null.T * rng.uniform(0, 3, size=(200, 1))
    feasible = [y0, p, *[y for y in candidates if np.all(G @ y <= h)]]
    assert len(feasible) > 2
    for y in feasible:
        assert np.dot(x - p, y - p) <= 1e-8 * (1.0 + np.sum((x - p) ** 2) + np.sum((y - p) ** 2))


def test_infinite_data_is_refused_by_name_and_h_plus_infinity_is_no_bound():
    """A, b or G with ∞, concrete: a ValueError naming it (A with ∞ read as an empty set of rank
    0 before); traced: NaN. h = +∞ is a row without bound: the projection without that row."""
    x = jnp.array([2.0, 0.0, 3.0])
    A, b = jnp.array([[1.0, 1.0, 0.0]]), jnp.array([1.0])
    G, h = jnp.array([[1.0, 0.0, 0.0]]), jnp.array([0.25])
    cases = {"A": (A.at[0, 2].set(jnp.inf), b, G, h), "b": (A, b.at[0].set(jnp.inf), G, h)}
    cases["G"] = (A, b, G.at[0, 1].set(-jnp.inf), h)
    for name, data in cases.items():
        with pytest.raises(ValueError, match=f"polyhedron: {name} must be finite"):
            polyhedron(x, data)
        assert np.all(np.isnan(np.asarray(jax.jit(polyhedron)(x, data)))), name
    free = (A, b, jnp.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), jnp.array([jnp.inf, 0.25]))
    np.testing.assert_allclose(polyhedron(x, free), polyhedron(x, (A, b, G, h)), atol=1e-9)
    np.testing.assert_allclose(polyhedron(x, (A, b, G, h)), [0.25, 0.75, 3.0], atol=1e-6)
