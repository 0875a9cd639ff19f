"""Family sweeps of the catalog (issue 12): every projection, prox and loss, enumerated from the
modules' ``__all__`` through the tables below, so that a new member must be added to them.

Families: degenerate and empty sets (items 1, 11, 12), huge and tiny inputs (item 4), losses at
infinity (item 5), prox.from_projection of every projection (item 17).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_difference_jvp

from implicitdiff import isotonic, losses, perturbations, prox
from implicitdiff import projections as P
from implicitdiff.solvers import ProjectedGradient, ProximalGradient

_SRC = Path(__file__).resolve().parents[1] / "src"
N = 5
_X = np.array([0.7, -1.3, 0.2, 1.1, -0.4])
_M = np.array([[0.5, -0.2, 0.9], [0.1, 0.3, -0.6], [0.8, 0.4, 0.2]])  # for the matrix sets
_A_DEP = np.array([[1.0, 1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0, 1.0]])
_B_DEP = np.array([0.5, 1.0, -0.2])  # consistent: row 2 = 2 · row 1


def _vec(dtype):
    return jnp.asarray(_X, dtype)


# name → (x, hyperparams) for a valid, O(1) problem, as functions of the dtype.
SAMPLES = {
    "non_negative": lambda d: (_vec(d), None),
    "box": lambda d: (_vec(d), (jnp.full(N, -0.5, d), jnp.full(N, 0.5, d))),
    "hypercube": lambda d: (_vec(d), jnp.asarray(0.6, d)),
    "simplex": lambda d: (_vec(d), jnp.asarray(1.0, d)),
    "sparse_simplex": lambda d: (_vec(d), (jnp.asarray(1.0, d), 2)),
    "l1_ball": lambda d: (_vec(d), jnp.asarray(1.0, d)),
    "l1_sphere": lambda d: (_vec(d), jnp.asarray(1.0, d)),
    "l2_ball": lambda d: (_vec(d), jnp.asarray(1.0, d)),
    "l2_sphere": lambda d: (_vec(d), jnp.asarray(1.0, d)),
    "linf_ball": lambda d: (_vec(d), jnp.asarray(0.5, d)),
    "hyperplane": lambda d: (
        _vec(d),
        (jnp.asarray([1.0, 2.0, 0.0, -1.0, 0.5], d), jnp.asarray(0.3, d)),
    ),
    "halfspace": lambda d: (
        _vec(d),
        (jnp.asarray([1.0, 2.0, 0.0, -1.0, 0.5], d), jnp.asarray(-0.3, d)),
    ),
    "affine_set": lambda d: (_vec(d), (jnp.asarray(_A_DEP, d), jnp.asarray(_B_DEP, d))),
    "box_section": lambda d: (
        _vec(d),
        (
            jnp.zeros(N, d),
            jnp.ones(N, d),
            jnp.asarray([1.0, 2.0, 1.0, 0.5, 1.0], d),
            jnp.asarray(1.5, d),
        ),
    ),
    "polyhedron": lambda d: (
        _vec(d),
        (
            jnp.asarray(_A_DEP[:1], d),
            jnp.asarray(_B_DEP[:1], d),
            jnp.asarray([[0.0, 0.0, 1.0, 1.0, 0.0]], d),
            jnp.asarray([0.1], d),
        ),
    ),
    "transport_polytope": lambda d: (
        jnp.asarray(_M, d),
        (jnp.asarray([0.2, 0.3, 0.5], d), jnp.asarray([0.4, 0.4, 0.2], d)),
    ),
    "kl_transport_polytope": lambda d: (
        jnp.asarray(_M, d),
        (jnp.asarray([0.2, 0.3, 0.5], d), jnp.asarray([0.4, 0.4, 0.2], d)),
    ),
    "birkhoff_polytope": lambda d: (jnp.asarray(_M, d), None),
    "kl_birkhoff_polytope": lambda d: (jnp.asarray(_M, d), None),
    "second_order_cone": lambda d: ((jnp.asarray(0.3, d), jnp.asarray(_X[:3], d)), None),
    "psd_cone": lambda d: (jnp.asarray(_M + _M.T, d), None),
}

# name → hyperparams of an empty set (x from SAMPLES); or the reason the set is never empty.
EMPTY = {
    "box": lambda d: (jnp.full(N, 0.5, d), jnp.full(N, -0.5, d)),
    "hypercube": lambda d: jnp.asarray(-1.0, d),
    "simplex": lambda d: jnp.asarray(-1.0, d),
    "sparse_simplex": lambda d: (jnp.asarray(-1.0, d), 2),
    "l1_ball": lambda d: jnp.asarray(-1.0, d),
    "l1_sphere": lambda d: jnp.asarray(-1.0, d),
    "l2_ball": lambda d: jnp.asarray(-1.0, d),
    "l2_sphere": lambda d: jnp.asarray(-1.0, d),
    "linf_ball": lambda d: jnp.asarray(-1.0, d),
    "hyperplane": lambda d: (jnp.zeros(N, d), jnp.asarray(1.0, d)),
    "halfspace": lambda d: (jnp.zeros(N, d), jnp.asarray(-1.0, d)),
    # Dependent rows with an inconsistent right-hand side; rows equal up to rounding.
    "affine_set": lambda d: (jnp.asarray(_A_DEP, d), jnp.asarray([0.5, 2.0, 0.0], d)),
    "box_section": lambda d: (jnp.zeros(N, d), jnp.ones(N, d), jnp.ones(N, d), jnp.asarray(7.0, d)),
    "polyhedron": lambda d: (
        jnp.asarray(_A_DEP[:2], d),
        jnp.asarray([0.5, 2.0], d),
        None,
        None,
    ),
    "transport_polytope": lambda d: (
        jnp.asarray([-0.2, 0.7, 0.5], d),
        jnp.asarray([0.4, 0.4, 0.2], d),
    ),
    "kl_transport_polytope": lambda d: (
        jnp.asarray([-0.2, 0.7, 0.5], d),
        jnp.asarray([0.4, 0.4, 0.2], d),
    ),
}
NEVER_EMPTY = {
    "non_negative": "ℝ₊ⁿ has no parameter",
    "birkhoff_polytope": "U(1, 1) has no parameter",
    "kl_birkhoff_polytope": "U(1, 1) has no parameter",
    "second_order_cone": "no parameter",
    "psd_cone": "no parameter",
}

PROXES = {
    "none": None,
    "l1": 0.3,
    "non_negative_l1": 0.3,
    "elastic_net": (0.3, 0.5),
    "group_lasso": 0.3,
    "ridge": 0.3,
    "non_negative_ridge": 0.3,
    "nuclear_norm": 0.3,
    "from_projection": None,  # item 17 sweeps it over every projection
}
LOSSES = {
    "multiclass_hinge_loss",
    "multiclass_logistic_loss",
    "multiclass_perceptron_loss",
    "multiclass_sparsemax_loss",
    "binary_logistic_loss",
    "sparsemax_loss",
    "squared_loss",
    "sparsemax",
    # element-wise, f(y, z) for y ∈ {0, 1} (huber_loss: target y, prediction z, δ = 1;
    # sparse_plus and sparse_sigmoid ignore y): swept by _check_elementwise
    "huber_loss",
    "sparse_plus",
    "sparse_sigmoid",
    "binary_sparsemax_loss",
    "binary_hinge_loss",
    "binary_perceptron_loss",
}
ELEMENTWISE = {
    "huber_loss",
    "sparse_plus",
    "sparse_sigmoid",
    "binary_sparsemax_loss",
    "binary_hinge_loss",
    "binary_perceptron_loss",
}
# Not a loss but a factory: make_fenchel_young_loss(F) computes F(z) − ⟨y, z⟩ as written, as
# accurate as the user's F (tested in tests/test_losses_parity.py).
LOSS_FACTORIES = {"make_fenchel_young_loss"}


def test_catalog_tables_cover_every_member():
    assert set(SAMPLES) == set(P.__all__)
    assert set(EMPTY) | set(NEVER_EMPTY) == set(P.__all__)
    assert not set(EMPTY) & set(NEVER_EMPTY)
    # (classes such as a tag type are not proxes; their instances, e.g. prox.none, are)
    members = {n for n in prox.__all__ if not isinstance(getattr(prox, n), type)}
    assert set(PROXES) == members
    assert set(LOSSES) | LOSS_FACTORIES == set(losses.__all__)


def _leaves(tree):
    return [np.asarray(leaf, np.float64) for leaf in jax.tree_util.tree_leaves(tree)]


# ---------------------------------------------------------------------------------------------
# Family "degenerate sets" (item 1) and empty sets (items 1, 11, 12).


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_projection_family_empty_sets(name):
    """Concrete parameters of an empty set: ValueError; traced (jit, vmap): NaN (the jitted and
    the vmapped call in one compiled program)."""
    projection = getattr(P, name)
    x, _ = SAMPLES[name](jnp.float64)
    hyper = EMPTY[name](jnp.float64)
    with pytest.raises(ValueError):
        projection(x, hyper)
    if name == "sparse_simplex":  # max_nz is static: close over it
        scale, k = hyper

        def traced(x, s):
            mapped = jax.vmap(lambda s: projection(x, (s, k)))(jnp.stack([s, s]))
            return projection(x, (s, k)), mapped

        jitted, mapped = jax.jit(traced)(x, scale)
    else:

        def traced(x, hyper):
            stacked = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf, leaf]), hyper)
            return projection(x, hyper), jax.vmap(projection, in_axes=(None, 0))(x, stacked)

        jitted, mapped = jax.jit(traced)(x, hyper)
    for out in (jitted, mapped):
        assert all(np.all(np.isnan(leaf)) for leaf in _leaves(out)), (name, out)


def test_projection_family_degenerate_sets_exact_projection():
    """Rank-deficient or degenerate parameters of a non-empty set: the exact projection."""
    x = jnp.asarray(_X)
    # affine_set: dependent rows (consistent b), more rows than columns, rows equal to rounding.
    pinv = np.linalg.pinv(_A_DEP)
    exact = _X - pinv @ (_A_DEP @ _X - _B_DEP)
    np.testing.assert_allclose(P.affine_set(x, (_A_DEP, _B_DEP)), exact, rtol=1e-13, atol=1e-14)
    tall = np.vstack([_A_DEP, _A_DEP[:1] - _A_DEP[2:]])  # 4 × 5, rank 2
    tall_b = np.append(_B_DEP, _B_DEP[0] - _B_DEP[2])
    np.testing.assert_allclose(P.affine_set(x, (tall, tall_b)), exact, rtol=1e-13, atol=1e-14)
    near = np.array([[1.0, 1.0], [1.0, 1.0 + 1e-15]])
    p = P.affine_set(jnp.array([0.3, -0.1]), (near, jnp.array([1.0, 1.0])))
    np.testing.assert_allclose(p, [0.7, 0.3], rtol=1e-13)  # the line y₁ + y₂ = 1
    with pytest.raises(ValueError, match="empty"):
        P.affine_set(jnp.zeros(2), (near, jnp.array([0.0, 1.0])))
    # polyhedron with the same dependent rows
    np.testing.assert_allclose(P.polyhedron(x, (_A_DEP, _B_DEP, None, None)), exact, atol=1e-8)
    # hyperplane and halfspace with a = 0: the whole space when feasible
    for f, b in [(P.hyperplane, 0.0), (P.halfspace, 0.0), (P.halfspace, 2.0)]:
        np.testing.assert_array_equal(f(x, (jnp.zeros(N), b)), _X)
        np.testing.assert_array_equal(jax.jit(f)(x, (jnp.zeros(N), b)), _X)
    # box_section with w = 0, c = 0: the box
    p = P.box_section(x, (0.0, 1.0, jnp.zeros(N), 0.0))
    np.testing.assert_allclose(p, np.clip(_X, 0, 1))
    # point-like sets: a box with lower = upper, simplex of scale 0, balls of radius 0
    np.testing.assert_array_equal(P.box(x, (0.25, 0.25)), np.full(N, 0.25))
    for f in (P.simplex, P.l1_ball, P.l2_ball, P.linf_ball, P.hypercube):
        np.testing.assert_array_equal(f(x, 0.0), np.zeros(N))


POINT_SETS = {  # a set that is one point, and the point
    "box(l = u)": (lambda x: P.box(x, (0.25, 0.25)), 0.25),
    "box(l = u, arrays)": (lambda x: P.box(x, (jnp.full(N, -0.5), jnp.full(N, -0.5))), -0.5),
    "hypercube(0)": (lambda x: P.hypercube(x, 0.0), 0.0),
    "linf_ball(0)": (lambda x: P.linf_ball(x, 0.0), 0.0),
    "l1_ball(0)": (lambda x: P.l1_ball(x, 0.0), 0.0),
    "l2_ball(0)": (lambda x: P.l2_ball(x, 0.0), 0.0),
    "simplex(0)": (lambda x: P.simplex(x, 0.0), 0.0),
    "isotonic(y_min = y_max)": (lambda x: isotonic.isotonic_l2_pav(x, 0.25, 0.25), 0.25),
}


@pytest.mark.parametrize("name", list(POINT_SETS))
def test_projection_family_point_sets_are_constant_in_x(name):
    """A set that is a single point: the projection is that point and its Jacobian in x is 0
    everywhere, on the point too (min(max(x, l), u) gave ¼ there for l = u; the balls of radius
    0 counted x = 0 as inside: 1)."""
    projection, point = POINT_SETS[name]
    for x in (jnp.asarray(_X), jnp.full(N, point)):
        np.testing.assert_array_equal(projection(x), np.full(N, point))
        np.testing.assert_array_equal(jax.jacobian(projection)(x), np.zeros((N, N)))
        np.testing.assert_array_equal(jax.jit(jax.jacobian(projection))(x), np.zeros((N, N)))


def test_projection_family_point_sets_keep_derivatives_in_their_bounds():
    """Cutting x where the set is a point leaves the derivative in the bounds: a box with
    l = u = b moves every entry with b."""
    x = jnp.asarray(_X)
    np.testing.assert_array_equal(jax.jacobian(lambda b: P.box(x, (b, b)))(0.25), np.ones(N))
    np.testing.assert_array_equal(
        jax.jacobian(lambda b: P.box(x, (b, b)), argnums=0)(jnp.full(N, 0.25)), np.eye(N)
    )


IDENTITY_PROXES = {  # the prox at λ = 0 (or λ s = 0): the identity, whose Jacobian is I
    "l1(0)": lambda x, lam: prox.l1(x, lam),
    "l1(λ, scaling 0)": lambda x, lam: prox.l1(x, 1.0 + lam, scaling=0.0),
    "elastic_net(0, 0)": lambda x, lam: prox.elastic_net(x, (lam, 0.0)),
    "group_lasso(0)": lambda x, lam: prox.group_lasso(x, lam),
    "ridge(0)": lambda x, lam: prox.ridge(x, lam),
}


@pytest.mark.parametrize("name", list(IDENTITY_PROXES))
def test_prox_family_zero_regularization_is_the_identity(name):
    """λ = 0: prox(x) = x with Jacobian I in x at every x, zeros and sign changes included
    (soft thresholding counted 0 as inside its dead zone [−0, 0]: Jacobian 0 there; so did the
    singular-value thresholding along zero singular values, next test). The derivative in λ is
    the right derivative, against a one-sided finite difference."""
    fun = IDENTITY_PROXES[name]
    for x in (jnp.asarray(_X), jnp.zeros(N), jnp.asarray(_X) * (np.arange(N) % 2)):
        np.testing.assert_array_equal(fun(x, 0.0), x)
        np.testing.assert_array_equal(jax.jacobian(fun)(x, 0.0), np.eye(N), err_msg=name)
    x = jnp.asarray(_X)
    h = 1e-7
    one_sided = (np.asarray(fun(x, h)) - np.asarray(fun(x, 0.0))) / h
    np.testing.assert_allclose(jax.jacobian(fun, argnums=1)(x, 0.0), one_sided, atol=1e-6)


def test_prox_family_zero_regularization_lasso_derivative_is_least_squares():
    """The lasso at λ = 0 is least squares: the implicit derivative of its solution in y is X⁺,
    also in a coordinate that is exactly 0 (the restricted solve counted it as fixed: that row
    of the Jacobian was 0, 0.5 off)."""
    X = jnp.asarray(np.vstack([np.diag([1.0, 2.0, 1.5]), np.zeros((3, 3))]))
    y = X @ jnp.array([0.5, 0.0, -0.3])

    def fun(w, y):
        return 0.5 * jnp.sum((X @ w - y) ** 2)

    solver = ProximalGradient(fun=fun, prox=prox.l1, tol=1e-12, maxiter=500)
    w = solver.run(jnp.zeros(3), 0.0, y).params
    np.testing.assert_allclose(w, [0.5, 0.0, -0.3], atol=1e-10)
    assert float(w[1]) == 0.0  # exactly: the coordinate on the kink of |·|
    jac = jax.jacobian(lambda y: solver.run(jnp.zeros(3), 0.0, y).params)(y)
    np.testing.assert_allclose(jac, np.linalg.pinv(np.asarray(X)), atol=1e-12)


def test_prox_family_zero_regularization_nuclear_norm_is_the_identity():
    """nuclear_norm at λ = 0 on a full-rank, a rank-one and the zero matrix: the identity, with
    Jacobian I (it was 0 along the zero singular values), and the right derivative in λ."""
    rng = np.random.default_rng(3)
    full = rng.normal(size=(4, 3))
    for m in (full, np.outer(full[:, 0], full[0]), np.zeros((4, 3))):
        m = jnp.asarray(m)
        np.testing.assert_allclose(prox.nuclear_norm(m, 0.0), m, atol=1e-14)
        jac = jax.jacobian(lambda m: prox.nuclear_norm(m, 0.0))(m)
        np.testing.assert_allclose(jac.reshape(12, 12), np.eye(12), atol=1e-12)
    # In λ (full rank: the rank-one matrix's SVD has singular values of 1e-16, not 0, which a
    # finite difference steps over): −U Vᵀ.
    h = 1e-7
    one_sided = (np.asarray(prox.nuclear_norm(jnp.asarray(full), h)) - full) / h
    dlam = jax.jacobian(lambda lam: prox.nuclear_norm(jnp.asarray(full), lam))(0.0)
    np.testing.assert_allclose(dlam, one_sided, atol=1e-6)


def test_projection_family_degenerate_sets_derivatives():
    """Derivatives of the exact projection onto a rank-deficient affine set, against central
    finite differences, in x, in b (within the range of A) and in A along directions that keep
    its rank (dA = C dB for A = C B); also the polyhedron's, in x."""
    B = _A_DEP[[0, 2]]
    C = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # A = C B
    rng = np.random.default_rng(0)
    dx, dB, dc = rng.normal(size=N), rng.normal(size=B.shape), rng.normal(size=2)
    c = _B_DEP[[0, 2]]

    def fun(x, B, c):
        return P.affine_set(x, (jnp.asarray(C) @ B, jnp.asarray(C) @ c))

    args = (jnp.asarray(_X), jnp.asarray(B), jnp.asarray(c))
    tangents = (jnp.asarray(dx), jnp.asarray(dB), jnp.asarray(dc))
    _, jvp = jax.jvp(fun, args, tangents)
    expected = finite_difference_jvp(lambda a: fun(*a), args, tangents)
    np.testing.assert_allclose(jvp, expected, rtol=1e-7, atol=1e-8)
    assert np.abs(np.asarray(jvp)).max() > 1e-2  # not trivially zero
    # polyhedron (dependent rows, compressed): J = I − A⁺A in x, away from inequalities
    jac = jax.jacobian(lambda x: P.polyhedron(x, (_A_DEP, _B_DEP, None, None)))(jnp.asarray(_X))
    np.testing.assert_allclose(jac, np.eye(N) - np.linalg.pinv(_A_DEP) @ _A_DEP, atol=1e-7)


def test_projected_gradient_family_degenerate_sets():
    """ProjectedGradient over an affine set: exact over dependent rows, flagged when empty."""

    def fun(w, target):
        return 0.5 * jnp.sum((w - target) ** 2)

    solver = ProjectedGradient(fun=fun, projection=P.affine_set, maxiter=200, tol=1e-10)
    target = jnp.asarray(_X)
    w, state = solver.run(jnp.zeros(N), (jnp.asarray(_A_DEP), jnp.asarray(_B_DEP)), target)
    assert bool(state.converged)
    exact = _X - np.linalg.pinv(_A_DEP) @ (_A_DEP @ _X - _B_DEP)
    np.testing.assert_allclose(w, exact, atol=1e-8)
    empty = (jnp.asarray(_A_DEP), jnp.asarray([0.5, 2.0, 0.0]))
    _, state = solver.run(jnp.zeros(N), empty, target)
    assert not bool(state.converged)


# ---------------------------------------------------------------------------------------------
# Family "huge and tiny inputs" (item 4).

# Exact powers of two, so that scaling itself rounds nothing.
SCALES = {
    jnp.float64: [2.0**100, 2.0**-100],  # about 1e±30
    jnp.float32: [2.0**100, 2.0**-100, 2.0**23, 2.0**-23],  # about 1e±30 and 1e±7
}
CASES = [(d, s) for d, scales in SCALES.items() for s in scales]
_CASE_IDS = [f"{jnp.dtype(d).name}-2^{int(np.log2(s))}" for d, s in CASES]


def _frac_simplex(v, scale):
    """Exact simplex projection of the float vector v (sorted thresholds in rationals)."""
    q = [Fraction(float(t)) for t in v]
    s = Fraction(float(scale))
    u = sorted(q, reverse=True)
    tau = None
    for k in range(1, len(u) + 1):
        t = (sum(u[:k]) - s) / k
        if u[k - 1] > t:
            tau = t
    return np.array([float(max(t - tau, 0)) for t in q])


def _frac_reference(name, x, h):
    v = np.asarray(x, np.float64)
    if name == "simplex":
        return _frac_simplex(v, h)
    if name == "sparse_simplex":
        scale, k = h
        keep = np.argsort(-v, kind="stable")[:k]
        out = np.zeros_like(v)
        out[keep] = _frac_simplex(v[keep], scale)
        return out
    if name == "l1_sphere":
        sign = np.where(v >= 0, 1.0, -1.0)
        return sign * _frac_simplex(np.abs(v), h)
    if name == "l1_ball":
        if sum(Fraction(float(t)) for t in np.abs(v)) <= Fraction(float(h)):
            return v
        return np.sign(v) * _frac_simplex(np.abs(v), h)
    raise KeyError(name)


_FRACTION_MEMBERS = ["simplex", "sparse_simplex", "l1_sphere", "l1_ball"]


@pytest.mark.parametrize(("dtype", "magnitude"), CASES, ids=_CASE_IDS)
@pytest.mark.parametrize("name", _FRACTION_MEMBERS)
def test_projection_family_huge_and_tiny_inputs_fixed_set(name, dtype, magnitude):
    """The ℓ₁ / simplex sets of size 1 (the reported case) at points of every magnitude, against
    an exact rational reference: simplex([3e8, 1e8, 2e8]) is e₁, not 0."""
    x, h = SAMPLES[name](dtype)
    x = x * magnitude
    got = np.asarray(getattr(P, name)(x, h), np.float64)
    ref = _frac_reference(name, np.asarray(x), h if name != "sparse_simplex" else (h[0], h[1]))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, ref, rtol=8 * eps, atol=8 * eps * np.abs(ref).max())
    x3 = jnp.asarray([3.0, 1.0, 2.0], dtype) * magnitude
    np.testing.assert_allclose(
        np.asarray(P.simplex(x3), np.float64), _frac_simplex(np.asarray(x3), 1.0), atol=8 * eps
    )


_NOT_HOMOGENEOUS = object()


def _scale_hyper(name, h, s):
    """The hyperparameters of s · C for the set C of h (None: the set is not homogeneous)."""
    if name in ("birkhoff_polytope", "kl_birkhoff_polytope", "kl_transport_polytope"):
        return _NOT_HOMOGENEOUS
    if h is None:  # a cone
        return None
    if name == "sparse_simplex":
        return (h[0] * s, h[1])
    if name == "hyperplane" or name == "halfspace":
        return (h[0], h[1] * s)
    if name == "affine_set":
        return (h[0], h[1] * s)
    if name == "box_section":
        return (h[0] * s, h[1] * s, h[2], h[3] * s)
    if name == "polyhedron":
        return (h[0], h[1] * s, h[2], h[3] * s)
    return jax.tree_util.tree_map(lambda leaf: leaf * s, h)


@pytest.mark.parametrize(("dtype", "magnitude"), CASES, ids=_CASE_IDS)
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_projection_family_huge_and_tiny_inputs(name, dtype, magnitude):
    """Every projection at points of magnitude 1e±30 (and 1e±7 in float32): P_{sC}(s x) =
    s P_C(x) for the homogeneous sets (s a power of two, so the reference s P_C(x), P_C(x)
    computed in float64 at magnitude 1 and checked against NumPy/SciPy in
    tests/test_projections.py, carries no rounding of its own); the fixed polytopes at the limits
    (a huge X projects onto the vertex of the maximal assignment, a tiny one onto 1/n)."""
    projection = getattr(P, name)
    x64, h64 = SAMPLES[name](jnp.float64)
    x, h = SAMPLES[name](dtype)
    eps = np.finfo(dtype).eps
    scaled_h = _scale_hyper(name, h, magnitude)
    if scaled_h is not _NOT_HOMOGENEOUS:
        reference = [leaf * magnitude for leaf in _leaves(projection(x64, h64))]
        x_scaled = jax.tree_util.tree_map(lambda leaf: leaf * magnitude, x)
        got = _leaves(projection(x_scaled, scaled_h))
        rtol = 64 * eps if name in ("box_section", "polyhedron", "transport_polytope") else 8 * eps
        if name in ("polyhedron", "transport_polytope") and dtype == jnp.float32:
            rtol = 1e-4  # the iterative solvers' float32 tolerance
    else:  # U(1, 1) or U(a, b) with X scaled, the set fixed
        a = np.asarray(h[0]) if h is not None else np.ones(3)
        b = np.asarray(h[1]) if h is not None else np.ones(3)
        got = _leaves(projection(x * magnitude, h))
        if magnitude > 1:  # the vertex maximizing ⟨X, P⟩ (a permutation for U(1, 1))
            if h is not None:
                pytest.skip("U(a, b)'s maximizing vertex needs an LP; covered by the tiny case")
            best = max(
                itertools.permutations(range(3)), key=lambda p: sum(_M[i, p[i]] for i in range(3))
            )
            reference = [np.eye(3)[list(best)]]
        elif name.startswith("kl_"):  # exp(X) ≈ 1: the Sinkhorn scaling of ones, a bᵀ / Σa
            reference = [np.outer(a, b) / a.sum()]
        else:  # tiny X: the projection of 0 onto U(1, 1) (all entries positive), 1/n
            reference = [np.full((3, 3), 1 / 3)]
        rtol = 1e-4 if dtype == jnp.float32 else 1e-8
    for g, r in zip(got, reference, strict=True):
        assert np.all(np.isfinite(g)), (name, g)
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * np.abs(r).max())


def _np_prox(name, x, h):
    if name == "none" or name == "from_projection":
        return x
    if name == "l1":
        return np.sign(x) * np.maximum(np.abs(x) - h, 0)
    if name == "non_negative_l1":
        return np.maximum(x - h, 0)
    if name == "elastic_net":
        return np.sign(x) * np.maximum(np.abs(x) - h[0], 0) / (1 + h[0] * h[1])
    if name == "group_lasso":
        norm = np.linalg.norm(x)
        return max(1 - h / norm, 0) * x
    if name == "ridge":
        return x / (1 + h)
    if name == "non_negative_ridge":
        return np.maximum(x, 0) / (1 + h)
    if name == "nuclear_norm":
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        return (u * np.maximum(s - h, 0)) @ vt
    raise KeyError(name)


@pytest.mark.parametrize(("dtype", "magnitude"), CASES, ids=_CASE_IDS)
@pytest.mark.parametrize("name", sorted(PROXES))
def test_prox_family_huge_and_tiny_inputs(name, dtype, magnitude):
    """Every prox at inputs of magnitude 1e±30 (1e±7 in float32), λ = 0.3, against the closed
    form in float64 (float64 inputs: NumPy in float64 has no overflow at 1e±60 either)."""
    fun = getattr(prox, name)
    if name == "from_projection":
        fun = prox.from_projection(P.l2_ball)
    h = PROXES[name]
    x = np.outer(_X, [1.0, -0.5, 0.25]) if name == "nuclear_norm" else _X
    x = np.asarray(np.asarray(x, dtype) * magnitude, np.float64)  # what the dtype can hold
    if name == "from_projection":
        got = fun(jnp.asarray(x, dtype), 1.0 * magnitude)
        ref = x * min(1.0, magnitude / np.linalg.norm(x))
    else:
        got = fun(jnp.asarray(x, dtype), h)
        ref = _np_prox(name, x, h)
    eps = np.finfo(dtype).eps
    assert got.dtype == dtype
    np.testing.assert_allclose(
        np.asarray(got, np.float64), ref, rtol=16 * eps, atol=16 * eps * np.abs(ref).max()
    )


def _np_loss(name, y, z):
    """Closed forms in extended precision (np.longdouble), shifted by the max."""
    z = np.asarray(z, np.longdouble)
    if name == "binary_logistic_loss":
        return (1 - y) * np.logaddexp(0, z) + y * np.logaddexp(0, -z)
    if name == "squared_loss":
        return 0.5 * np.sum((np.asarray(y, np.longdouble) - z) ** 2)
    zs = z - z.max()
    if name == "multiclass_logistic_loss":
        return np.log(np.sum(np.exp(zs))) - zs[y]
    if name in ("multiclass_hinge_loss", "multiclass_perceptron_loss"):
        margin = np.ones_like(zs) * (name == "multiclass_hinge_loss")
        margin[y] = 0
        return np.max(zs - zs[y] + margin)
    p = np.asarray(_frac_simplex(np.asarray(zs, np.float64), 1.0), np.longdouble)
    if name == "sparsemax":
        return p
    e = np.zeros_like(zs)
    e[y] = 1
    return np.sum((p - e) * zs) + 0.5 * (1 - np.sum(p * p))


def _call_loss(name, label, z):
    fun = getattr(losses, name)
    return fun(z) if name == "sparsemax" else fun(label, z)


@functools.cache
def _jitted_loss(name, label):
    """z ↦ the loss at an integer label, jitted (the label is a constant: its concrete check
    runs at trace time); compiled once per name, label and dtype."""
    return jax.jit(functools.partial(_call_loss, name, label))


def _loss_and_derivative(name, label, z):
    """(loss, its gradient in z), or (sparsemax, its Jacobian)."""
    fun = functools.partial(_call_loss, name, label)
    derivative = jax.jacobian(fun) if name == "sparsemax" else jax.grad(fun)
    return fun(z), derivative(z)


#: compiled once per name and dtype, the label traced
_jitted_loss_and_derivative = jax.jit(_loss_and_derivative, static_argnums=0)


def _binary_loss_and_grad(y, z):
    loss = losses.binary_logistic_loss
    return loss(y, z), jax.grad(loss, argnums=1)(y, z)


_jitted_binary_loss_and_grad = jax.jit(_binary_loss_and_grad)


@pytest.mark.parametrize(("dtype", "magnitude"), CASES, ids=_CASE_IDS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_family_huge_and_tiny_inputs(name, dtype, magnitude):
    """Every loss at scores of magnitude 1e±30 (1e±7 in float32), against the closed form in
    extended precision: exact to rounding (relative to the loss, or to 1 for the
    shift-invariant losses, whose value is O(1) at tiny scores)."""
    eps = np.finfo(dtype).eps
    for scores in ([0.7, -1.3, 0.2], [0.7, 0.7, -0.2]):  # the second with a tie at the top
        _check_loss_at_magnitude(name, dtype, magnitude, scores, eps)


_jitted_squared_loss = jax.jit(losses.squared_loss)


def _check_loss_at_magnitude(name, dtype, magnitude, scores, eps):
    z = np.asarray(np.asarray(scores, dtype) * magnitude, np.float64)
    if name in ELEMENTWISE:
        for y, zi in itertools.product([0.0, 1.0], z):
            _check_elementwise(name, y, zi, dtype)
        return
    if name == "binary_logistic_loss":
        for y, zi in itertools.product([0.0, 1.0], z):
            got = float(_jitted_binary_loss_and_grad(y, jnp.asarray(zi, dtype))[0])
            ref = float(_np_loss(name, y, zi))
            np.testing.assert_allclose(got, ref, rtol=4 * eps, atol=4 * eps * (ref == 0))
        return
    label = 1
    if name == "squared_loss":
        label = np.asarray(np.asarray([0.1, 0.2, -0.3], dtype) * magnitude, np.float64)
        got = _jitted_squared_loss(jnp.asarray(label, dtype), jnp.asarray(z, dtype))
        ref = np.float64(_np_loss(name, label, z))
        if ref > np.finfo(dtype).max or ref < np.finfo(dtype).tiny:
            return  # the loss itself is not representable in this dtype
        np.testing.assert_allclose(float(got), ref, rtol=8 * eps)
        return
    got = np.asarray(_jitted_loss(name, label)(jnp.asarray(z, dtype)), np.float64)
    ref = np.asarray(_np_loss(name, label, z), np.float64)
    np.testing.assert_allclose(got, ref, rtol=8 * eps, atol=8 * eps * max(1.0, np.abs(ref).max()))


# ---------------------------------------------------------------------------------------------
# Family "losses at infinity" (item 5): value and gradient at ±inf and ±1e9 scores.

INF = np.inf
# (label, scores): value and gradient in the scores by the closed forms below.
_INF_CASES = [
    (0, [0.0, 0.0, -INF]),  # −inf masks the third class
    (0, [-INF, 0.0, 0.0]),  # the label's class masked: infinite loss
    (1, [INF, 0.0, 0.0]),  # +inf on another class: infinite loss
    (0, [INF, 0.0, -INF]),  # +inf on the label's class: zero loss
    (0, [INF, INF, 0.0]),  # two +inf tie
    (0, [1e9, 1e9, 0.0]),
    (2, [1e9, -1e9, 0.0]),
    (0, [-1e9, -1e9, -1e9]),
    (1, [1e-9, -1e-9, 0.0]),
]


def _limit_softmax(z):
    z = np.asarray(z)
    top = z.max()
    if np.isinf(top):
        e = (z == top).astype(float)
    else:
        e = np.exp(z - top)
    return e / e.sum()


def _limit_sparsemax(z):
    z = np.asarray(z)
    top = z.max()
    if np.isinf(top):
        e = (z == top).astype(float)
        return e / e.sum()
    return _frac_simplex(np.where(np.isinf(z), -1e300, z - top), 1.0)


def _closed_form(name, y, z):
    """(value, gradient in z) of the loss at the limit."""
    z = np.asarray(z, np.float64)
    e = np.eye(len(z))[y]
    if name == "multiclass_logistic_loss":
        s = _limit_softmax(z)
        top = z.max()
        if np.isinf(top):
            value = -np.log(s[y]) if s[y] > 0 else INF
        else:  # logsumexp(z) − z_y in the log domain
            value = np.log(np.sum(np.exp(z - top))) + (top - z[y])
        return value, s - e
    if name in ("sparsemax_loss", "multiclass_sparsemax_loss"):
        p = _limit_sparsemax(z)
        if np.isinf(z.max()):  # scores at +inf: the value only depends on which entries
            zs = np.where(z == z.max(), 0.0, -INF)
        else:
            zs = z - z.max()
        with np.errstate(invalid="ignore"):
            terms = np.where(p - e == 0, 0.0, (p - e) * zs)
        value = terms.sum() + 0.5 * (1 - np.sum(p * p))
        return value, p - e
    if name in ("multiclass_hinge_loss", "multiclass_perceptron_loss"):
        margin = (np.arange(len(z)) != y) * (name == "multiclass_hinge_loss")
        with np.errstate(invalid="ignore"):
            same_infinity = np.isinf(z) & (z == z[y])  # the limit of zⱼ − z_y along a tie
            d = np.where(same_infinity, 0.0, z - z[y]) + margin
        return np.max(d), None  # a subgradient; checked to be finite
    if name == "sparsemax":
        return _limit_sparsemax(z), None
    raise KeyError(name)


_INF_LOSSES = [
    "multiclass_logistic_loss",
    "sparsemax_loss",
    "multiclass_sparsemax_loss",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "sparsemax",
]


def test_loss_family_at_infinity_covers_losses():
    assert set(_INF_LOSSES) | {"binary_logistic_loss", "squared_loss"} | ELEMENTWISE == LOSSES


def _np_elementwise(name, y, z):
    """(value, derivative in z) of an element-wise loss, closed forms in extended precision
    (limits at z = ±inf)."""
    z = np.longdouble(z)
    s = 2 * y - 1
    if name == "huber_loss":
        r = y - z
        value = 0.5 * r * r if abs(r) <= 1 else abs(r) - 0.5
        return value, -np.clip(r, -1, 1)
    if name in ("sparse_plus", "binary_sparsemax_loss"):
        flip = name == "binary_sparsemax_loss" and y == 1  # sparse_plus(−z)
        x = -z if flip else z
        value = 0 if x <= -1 else (x if x >= 1 else (x + 1) ** 2 / 4)
        slope = np.clip((x + 1) / 2, 0, 1)
        return value, (-slope if flip else slope)
    if name == "sparse_sigmoid":
        return np.clip((z + 1) / 2, 0, 1), (0.5 if abs(z) < 1 else 0.0)
    margin = 1 if name == "binary_hinge_loss" else 0
    signed = 0 if s == 0 else s * z
    gap = margin - signed  # at the kink (gap 0), jnp.maximum's half of each side's slope
    return max(0, gap), (-s if gap > 0 else (-s / 2 if gap == 0 else 0.0))


def _elementwise_and_grad(name, y, z):
    fun = getattr(losses, name)
    if name in ("sparse_plus", "sparse_sigmoid"):
        return jax.value_and_grad(fun)(z)
    return jax.value_and_grad(fun, argnums=1)(y, z)


_jitted_elementwise_and_grad = jax.jit(_elementwise_and_grad, static_argnums=0)


def _check_elementwise(name, y, z, dtype):
    """Value and derivative at (y, z) equal the closed forms, exact to rounding (and finite
    where the limit is)."""
    value, grad = _jitted_elementwise_and_grad(name, jnp.asarray(y, dtype), jnp.asarray(z, dtype))
    ref_value, ref_grad = (np.float64(v) for v in _np_elementwise(name, y, z))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(float(value), ref_value, rtol=4 * eps, atol=4 * eps)
    assert np.isfinite(float(grad)), (name, y, z)
    np.testing.assert_allclose(float(grad), ref_grad, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_loss_family_at_infinity_elementwise(dtype):
    """Every element-wise loss at ±inf, ±1e9, ±1e-9 and 0, both labels: the limits, with a
    finite derivative (JAXopt's Huber, sparse plus and binary sparsemax derivatives are NaN at
    ±inf)."""
    for name in sorted(ELEMENTWISE):
        for y, z in itertools.product([0.0, 1.0], [INF, -INF, 1e9, -1e9, 1e-9, -1e-9, 0.0]):
            _check_elementwise(name, y, np.float64(np.asarray(z, dtype)), dtype)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("case", range(len(_INF_CASES)))
@pytest.mark.parametrize("name", _INF_LOSSES)
def test_loss_family_at_infinity(name, case, dtype):
    label, scores = _INF_CASES[case]
    z = jnp.asarray(scores, dtype)
    value, grad = _closed_form(name, label, np.asarray(z, np.float64))
    got, g = _jitted_loss_and_derivative(
        name, jnp.asarray(label), z
    )  # g: the Jacobian for sparsemax
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(np.asarray(got, np.float64), value, rtol=8 * eps, atol=8 * eps)
    if name == "sparsemax":
        assert np.all(np.isfinite(g))
        return
    assert np.all(np.isfinite(g)), (name, scores, g)
    if grad is not None:
        np.testing.assert_allclose(g, grad, rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_loss_family_at_infinity_binary(dtype):
    """binary_logistic_loss(y, z) = (1 − y) softplus(z) + y softplus(−z), gradient σ(z) − y."""
    for y, z in itertools.product([0.0, 1.0], [INF, -INF, 1e9, -1e9, 1e-9, -1e-9]):
        zz = jnp.asarray(z, dtype)
        value, grad = map(float, _jitted_binary_loss_and_grad(y, zz))
        with np.errstate(over="ignore", invalid="ignore"):
            ref = (1 - y) * np.logaddexp(0, z) if y == 0 else np.logaddexp(0, -z)
            sigma = 1 / (1 + np.exp(-z))
        np.testing.assert_allclose(value, ref, rtol=8 * np.finfo(dtype).eps)
        np.testing.assert_allclose(grad, sigma - y, rtol=8 * np.finfo(dtype).eps, atol=1e-30)


def test_loss_family_at_infinity_squared():
    """squared_loss: ½‖t − p‖² is +inf at an infinite prediction, gradient p − t (infinite)."""
    value = losses.squared_loss(jnp.zeros(2), jnp.array([INF, 1.0]))
    assert value == INF
    grad = jax.grad(losses.squared_loss, argnums=1)(jnp.zeros(2), jnp.array([1e9, -1e9]))
    np.testing.assert_allclose(grad, [1e9, -1e9])


# ---------------------------------------------------------------------------------------------
# prox.from_projection of every projection (item 17).


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_prox_family_from_projection(name):
    projection = getattr(P, name)
    x, h = SAMPLES[name](jnp.float64)
    p = prox.from_projection(projection)
    for out, ref in [
        (p(x, h), projection(x, h)),
        (p(x, h, scaling=3.0), projection(x, h)),
    ]:
        for a, b in zip(_leaves(out), _leaves(ref), strict=True):
            np.testing.assert_array_equal(a, b)
    try:  # without hyperparams: the projection's own default, if it has one
        expected = projection(x)
    except TypeError:
        with pytest.raises(TypeError, match="hyperparams"):
            p(x)
    else:
        for a, b in zip(_leaves(p(x)), _leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)


# The size and weight hyperparameters of the catalog (a prox's λ and scaling, a set's scale or
# radius), given a value of the wrong kind or NaN: a ValueError naming the function and the
# parameter, never a NumPy ufunc error, a bool read as 1, or a NaN result.
_SMALL_X = jnp.array([0.3, -0.2, 0.9])
_SIZED = [
    *[
        (f"prox.{name}", "hyperparams", functools.partial(getattr(prox, name), _SMALL_X))
        for name in ("l1", "non_negative_l1", "ridge", "non_negative_ridge", "group_lasso")
    ],
    *[
        (
            f"prox.{name}",
            "scaling",
            lambda v, name=name: getattr(prox, name)(_SMALL_X, 0.1, scaling=v),
        )
        for name in ("l1", "non_negative_l1", "ridge", "non_negative_ridge", "group_lasso")
    ],
    ("prox.nuclear_norm", "hyperparams", lambda v: prox.nuclear_norm(jnp.eye(3), v)),
    ("prox.elastic_net", "hyperparams[0]", lambda v: prox.elastic_net(_SMALL_X, (v, 1.0))),
    ("prox.elastic_net", "scaling", lambda v: prox.elastic_net(_SMALL_X, (0.1, 1.0), scaling=v)),
    *[
        (f"projections.{name}", "radius", functools.partial(getattr(P, name), _SMALL_X))
        for name in ("l1_ball", "l1_sphere", "l2_ball", "l2_sphere", "linf_ball")
    ],
    *[
        (f"projections.{name}", "scale", functools.partial(getattr(P, name), _SMALL_X))
        for name in ("simplex", "hypercube")
    ],
]


@pytest.mark.parametrize(
    ("function", "parameter", "call"), _SIZED, ids=[f"{f}-{p}" for f, p, _ in _SIZED]
)
@pytest.mark.parametrize("value", [True, "1", None, float("nan")], ids=repr)
def test_a_size_or_weight_of_the_wrong_kind_is_refused_by_name(function, parameter, call, value):
    owner = function.split(".")[1]
    expected = re.escape(f"{owner}: {parameter}")
    with pytest.raises(ValueError, match=rf"^{expected}.* must be (a real number|non-negative)"):
        call(value)


_SCALARS = [
    ("huber_loss", "delta", lambda v: losses.huber_loss(_SMALL_X, 2 * _SMALL_X, delta=v)),
    ("isotonic_l2_pav", "y_min", lambda v: isotonic.isotonic_l2_pav(_SMALL_X, y_min=v)),
    ("isotonic_l2_pav", "y_max", lambda v: isotonic.isotonic_l2_pav(_SMALL_X, y_max=v)),
    (
        "make_perturbed_argmax",
        "sigma",
        lambda v: perturbations.make_perturbed_argmax(jnp.argmax, sigma=v),
    ),
]


@pytest.mark.parametrize(
    ("function", "parameter", "call"), _SCALARS, ids=[p for _, p, _ in _SCALARS]
)
@pytest.mark.parametrize("value", [True, "1", None, float("nan")], ids=repr)
def test_a_scalar_parameter_of_the_wrong_kind_is_refused_by_name(function, parameter, call, value):
    with pytest.raises(ValueError, match=rf"^{function}: .*{parameter}"):  # (NaN y_max: the order)
        call(value)


# ---------------------------------------------------------------------------------------------
# Op by op under jax.debug_nans: no NaN made and then discarded (a sentinel selected away, 0/0
# in a branch that a select drops). jax.debug_nans raises on any operation that makes a NaN in
# an op-by-op run (jax.disable_jit, and the re-run by which it locates a NaN in a jitted output),
# so such a NaN would be reported as the user's error.


def _op_by_op(fn, *args):
    """fn(*args) op by op under jax.debug_nans (FloatingPointError on any NaN made), checked
    equal to the ordinary call."""
    with jax.disable_jit(), jax.debug_nans(True):
        out = fn(*args)
    for a, b in zip(_leaves(out), _leaves(fn(*args)), strict=True):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def _float_part(h):
    """The floating leaves of hyperparams (None elsewhere): what a hypergradient is taken of."""
    return jax.tree_util.tree_map(
        lambda v: v if jnp.issubdtype(jnp.result_type(v), jnp.floating) else None, h
    )


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_projection_family_makes_no_nan_op_by_op(name):
    projection = getattr(P, name)
    x, h = SAMPLES[name](jnp.float64)
    w = jax.tree_util.tree_map(lambda v: jnp.linspace(0.3, 1.1, v.size).reshape(v.shape), x)

    def loss(x, floats):
        full = jax.tree_util.tree_map(
            lambda f, v: v if f is None else f, floats, h, is_leaf=lambda v: v is None
        )
        out = projection(x, full)
        leaves = jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(w)
        return sum(jnp.vdot(a, b) for a, b in zip(*leaves, strict=True))

    _op_by_op(projection, x, h)
    _op_by_op(jax.grad(loss, argnums=(0, 1)), x, _float_part(h))


@pytest.mark.parametrize("name", sorted(set(PROXES) - {"from_projection"}))
def test_prox_family_makes_no_nan_op_by_op(name):
    fun = getattr(prox, name)
    x = jnp.asarray(_M if name == "nuclear_norm" else _X)
    h = PROXES[name]
    w = jnp.linspace(0.3, 1.1, x.size).reshape(x.shape)
    _op_by_op(fun, x, h, 0.7)
    _op_by_op(jax.grad(lambda x, h, s: jnp.vdot(fun(x, h, s), w), argnums=(0, 1, 2)), x, h, 0.7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_family_makes_no_nan_op_by_op(name):
    fun = getattr(losses, name)
    z = jnp.asarray(_X)
    if name in ("sparse_plus", "sparse_sigmoid"):
        call = lambda z: jnp.sum(jax.vmap(fun)(z))  # noqa: E731
    elif name in ELEMENTWISE:
        call = lambda z: jnp.sum(jax.vmap(fun)(jnp.ones_like(z), z))  # noqa: E731
    elif name == "binary_logistic_loss":
        call = lambda z: jnp.sum(jax.vmap(fun)(jnp.ones_like(z), z))  # noqa: E731
    elif name == "sparsemax":
        call = lambda z: jnp.vdot(fun(z), jnp.arange(z.size, dtype=z.dtype))  # noqa: E731
    elif name == "squared_loss":
        call = lambda z: fun(jnp.ones_like(z), z)  # noqa: E731
    else:  # multiclass: a one-hot label and an integer label
        onehot = jnp.eye(z.size)[1]
        call = lambda z: fun(onehot, z) + fun(3, z)  # noqa: E731
    _op_by_op(jax.value_and_grad(call), z)


def test_isotonic_makes_no_nan_op_by_op():
    w = jnp.linspace(0.3, 1.1, _X.size)
    _op_by_op(
        jax.value_and_grad(lambda y: jnp.vdot(isotonic.isotonic_l2_pav(y), w)), jnp.asarray(_X)
    )


# ---------------------------------------------------------------------------------------------
# Family "structured hyperparameters of the wrong kind": every operator whose hyperparams (or
# x) is a tuple of named parts refuses a scalar, an array, or a tuple of another length with a
# TypeError naming the operator, the argument and the parts (it was Python's "cannot unpack
# non-iterable float object" or "too many values to unpack").

_V = jnp.asarray(_X)
STRUCTURED = {  # name -> (call with the argument replaced, argument name, its parts)
    "box": (lambda h: P.box(_V, h), "hyperparams", "(lower, upper)"),
    "box_section": (lambda h: P.box_section(_V, h), "hyperparams", "(alpha, beta, w, c)"),
    "hyperplane": (lambda h: P.hyperplane(_V, h), "hyperparams", "(a, b)"),
    "halfspace": (lambda h: P.halfspace(_V, h), "hyperparams", "(a, b)"),
    "affine_set": (lambda h: P.affine_set(_V, h), "hyperparams", "(A, b)"),
    "polyhedron": (lambda h: P.polyhedron(_V, h), "hyperparams", "(A, b, G, h)"),
    "sparse_simplex": (lambda h: P.sparse_simplex(_V, h), "hyperparams", "(scale, max_nz)"),
    "transport_polytope": (
        lambda h: P.transport_polytope(jnp.ones((2, 2)), h),
        "hyperparams",
        "(marginals_a, marginals_b)",
    ),
    "second_order_cone": (lambda x: P.second_order_cone(x), "x", "(t, z)"),
    "elastic_net": (lambda h: prox.elastic_net(_V, h), "hyperparams", "(λ, γ)"),
}


@pytest.mark.parametrize("name", list(STRUCTURED))
def test_structured_hyperparams_family_wrong_kind_is_named(name):
    call, argument, parts = STRUCTURED[name]
    wrong = [(1.0, 2.0, 3.0, 4.0, 5.0)]
    if name == "sparse_simplex":  # anything else is its max_nz alone (JAXopt's form)
        with pytest.raises(TypeError, match="sparse_simplex: max_nz must be a Python int"):
            call(jnp.ones(5))
    else:
        wrong += [jnp.ones(5), 1.0]
    for value in wrong:
        with pytest.raises(TypeError, match=re.escape(f"{name}: {argument} must be")) as info:
            call(value)
        assert parts in str(info.value), (name, str(info.value))


# ---------------------------------------------------------------------------------------------
# Family "labels out of range": a binary label outside [0, 1] (the ±1 convention) and a class
# index outside [0, k) are refused by name when concrete and give NaN when traced (a class
# index out of range one-hot encoded to zeros, and −1 became the signed label −3: finite,
# silent, wrong losses).

BINARY_LOSSES = ("binary_logistic_loss", "binary_hinge_loss", "binary_perceptron_loss")
BINARY_LOSSES += ("binary_sparsemax_loss",)
MULTICLASS_LOSSES = (
    "multiclass_logistic_loss",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multiclass_sparsemax_loss",
    "sparsemax_loss",
)


@pytest.mark.parametrize("name", BINARY_LOSSES)
def test_labels_family_binary_label_outside_0_1(name):
    loss = getattr(losses, name)
    for label in (-1, 2, jnp.array([0.0, -1.0])):
        with pytest.raises(ValueError, match=f"{name}: label must be in .*pass \\(label \\+ 1\\)"):
            loss(label, 0.3)
    for label in (0, 1, 0.25, jnp.array([0.0, 1.0])):  # labels and soft labels pass
        assert np.all(np.isfinite(loss(label, 0.3)))
    traced = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=1), in_axes=(0, None)))
    values, grads = traced(jnp.array([1.0, -1.0, 0.0]), 0.3)
    values, grads = np.asarray(values), np.asarray(grads)
    assert np.all(np.isfinite(values[[0, 2]])) and np.isnan(values[1])
    assert np.isnan(grads[1]) and np.all(np.isfinite(grads[[0, 2]]))


@pytest.mark.parametrize("name", MULTICLASS_LOSSES)
def test_labels_family_class_index_out_of_range_under_jit_is_nan(name):
    loss = getattr(losses, name)
    scores = jnp.array([0.2, 1.0, -0.5])
    with pytest.raises(ValueError, match=f"{name}: label must be an integer class index"):
        loss(3, scores)
    traced = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=1), in_axes=(0, None)))
    values, grads = map(np.asarray, traced(jnp.array([1, 3, -1, 0]), scores))
    np.testing.assert_allclose(values[[0, 3]], [loss(1, scores), loss(0, scores)], rtol=1e-12)
    assert np.all(np.isnan(values[1:3])) and np.all(np.isnan(grads[1:3]))
    assert np.all(np.isfinite(grads[[0, 3]]))


# ---------------------------------------------------------------------------------------------
# Family "infinite hyperparameters": a ball of infinite radius is the whole space (identity,
# Jacobian I) and an infinite penalty maps everything to 0 (Jacobian 0). The branch a select
# does not take must not see the inf: its derivative, inf · 0, was NaN (l2_ball, group_lasso),
# and elastic_net(x, (inf, 0)) divided 0 by 1 + inf · 0.

INFINITE = {  # name -> (the operator at an infinite hyperparameter, identity?)
    "l2_ball(inf)": (lambda x: P.l2_ball(x, jnp.inf), True),
    "l1_ball(inf)": (lambda x: P.l1_ball(x, jnp.inf), True),
    "linf_ball(inf)": (lambda x: P.linf_ball(x, jnp.inf), True),
    "box(-inf, inf)": (lambda x: P.box(x, (-jnp.inf, jnp.inf)), True),
    "halfspace(b = inf)": (lambda x: P.halfspace(x, (jnp.ones(N), jnp.inf)), True),
    "prox.l1(inf)": (lambda x: prox.l1(x, jnp.inf), False),
    "prox.ridge(inf)": (lambda x: prox.ridge(x, jnp.inf), False),
    "prox.group_lasso(inf)": (lambda x: prox.group_lasso(x, jnp.inf), False),
    "prox.elastic_net(inf, 0)": (lambda x: prox.elastic_net(x, (jnp.inf, 0.0)), False),
    "prox.elastic_net(inf, 1)": (lambda x: prox.elastic_net(x, (jnp.inf, 1.0)), False),
}


@pytest.mark.parametrize("name", list(INFINITE))
def test_infinite_hyperparams_family(name):
    operator, identity = INFINITE[name]
    x = jnp.asarray(_X)
    expected_value = _X if identity else np.zeros(N)
    expected_jacobian = np.eye(N) if identity else np.zeros((N, N))
    for f in (operator, jax.jit(operator)):
        np.testing.assert_array_equal(f(x), expected_value)
        np.testing.assert_array_equal(jax.jacobian(f)(x), expected_jacobian)


# name → why an input with a ±∞ entry projects to NaN (flagged) rather than to its limit.
NAN_AT_INFINITY = {
    "hyperplane": "the limit has ±∞ entries along the plane; ∞ − ∞ loses the finite rest",
    "halfspace": "as the hyperplane, where the entry's direction leaves the half-space",
    "affine_set": "as the hyperplane: ∞ − ∞ in x − Aᵀ(AAᵀ)⁻¹(Ax − b)",
    "polyhedron": "its QP solver's iterates are not finite",
    "box_section": "the bisection's bracket of the multiplier comes from x",
    "second_order_cone": "the limit has ±∞ entries; ∞ − ∞ in its formula",
    "psd_cone": "an eigendecomposition of a matrix with ±∞ entries",
}
# +∞ only: the transport sets (a +∞ entry would take unbounded mass; −∞ is a mask, exact).
_PLUS_INFINITY_NAN = ("transport_polytope", "kl_transport_polytope")
_PLUS_INFINITY_NAN += ("birkhoff_polytope", "kl_birkhoff_polytope")


def _with_entry(x, index, value):
    if isinstance(x, tuple):  # the second-order cone's (t, x)
        return (x[0], x[1].at[index].set(value))
    return x.reshape(-1).at[index].set(value).reshape(x.shape)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_projection_family_infinite_entries(name):
    """Every projection with its first or second entry at +∞ or −∞: the limit of that entry at
    ±1e150 (entries of the limit beyond 1e100 read as ±∞), or NaN throughout for the sets of
    ``NAN_AT_INFINITY`` (flagged) — never NaN in part, never finite and wrong. Where the limit
    is finite, the Jacobian is finite too. The simplex, ℓ₁ and ℓ₂ sets gave NaN (∞ − ∞, ∞ · 0):
    now simplex([∞, 1, ∞, 0]) = (½, 0, ½, 0) and l2_ball([∞, 1], r) = (r, 0)."""
    function = getattr(P, name)
    x, h = SAMPLES[name](jnp.float64)
    call = function if h is None else lambda v: function(v, h)
    for index, sign in itertools.product((0, 1), (1.0, -1.0)):
        where = f"{name}: entry {index} at {sign * np.inf}"
        leaves = jax.tree_util.tree_leaves(call(_with_entry(x, index, sign * jnp.inf)))
        expect_nan = name in NAN_AT_INFINITY or (name in _PLUS_INFINITY_NAN and sign > 0)
        if expect_nan:
            if all(np.all(np.isnan(leaf)) for leaf in leaves):
                continue
        limit = jax.tree_util.tree_leaves(call(_with_entry(x, index, sign * 1e150)))
        for got, ref in zip(leaves, limit, strict=True):
            got, ref = np.asarray(got), np.asarray(ref)
            assert not np.any(np.isnan(got)), where
            big = np.abs(ref) > 1e100
            np.testing.assert_array_equal(got[big], np.sign(ref[big]) * np.inf, err_msg=where)
            np.testing.assert_allclose(got[~big], ref[~big], atol=1e-9, err_msg=where)
        if all(np.all(np.isfinite(leaf)) for leaf in leaves) and not isinstance(x, tuple):
            jac = jax.jacobian(call)(_with_entry(x, index, sign * jnp.inf))
            assert all(np.all(np.isfinite(j)) for j in jax.tree_util.tree_leaves(jac)), where


_SVD_AT_INFINITY = r"""
import warnings
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import implicitdiff
from implicitdiff import diagnostics, projections, prox
warnings.simplefilter("ignore")
m = jnp.asarray(np.outer([0.7, -1.3, 0.2, 1.1, -0.4], [1.0, -0.5, 0.25])).at[0, 0].set(jnp.inf)
out = {"nuclear_norm": prox.nuclear_norm(m, 0.3)}
a = jnp.eye(3).at[0, 1].set(jnp.inf)
out["affine_set"] = jax.jit(projections.affine_set)(jnp.ones(3), (a, jnp.ones(3)))
try:
    projections.affine_set(jnp.ones(3), (a, jnp.ones(3)))
except ValueError as e:
    assert "A and b must be finite" in str(e), e
else:
    raise AssertionError("a concrete A with ∞ was accepted")
def F(x, theta):
    return a @ x - theta
@implicitdiff.custom_root(F, solve="cg", on_failure="fallback")
def solver(init, theta):
    return init
out["fallback"] = jax.grad(lambda t: jnp.sum(solver(jnp.ones(3), t)))(jnp.ones(3))
out["jacobian_error_bound"] = diagnostics.jacobian_error_bound(F, jnp.ones(3), jnp.ones(3)).bound
for name, value in out.items():  # the bound: inf or NaN, no finite claim
    assert not np.any(np.isfinite(np.asarray(value))), (name, value)
print("ok")
"""


def test_svd_family_infinite_entries_give_nan_not_a_hang():
    """Every SVD of the package (prox.nuclear_norm, affine_set's factors of a traced A (a concrete
    one with ∞ is refused by name: it read as an empty set of rank 0), the engine's dense
    least-squares fallback, diagnostics.jacobian_error_bound) on a matrix with an entry at +∞:
    NaN (the bound: not finite). JAX's SVD with singular vectors (and lstsq, pinv) never
    returned on such small matrices (jax 0.10, CPU): nuclear_norm ran for ten minutes before it
    was stopped. Run in a
    subprocess with a time limit, so that a regression fails here instead of stopping the
    suite."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(_SRC), env.get("PYTHONPATH", "")])
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SVD_AT_INFINITY],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("an SVD of a matrix with an infinite entry did not return in 180 s")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _in_dtype(value, dtype):
    return jax.tree_util.tree_map(
        lambda leaf: (
            leaf.astype(dtype)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
            else leaf
        ),
        value,
    )


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_svd_family_subnormal_entries(dtype):
    """Matrices of subnormal entries (below finfo.tiny) reach LAPACK's SVD as zeros, as XLA's
    CPU operations read them: prox.nuclear_norm of a 1 × 5 matrix of 1.1e-308 was all NaN (a
    falsifying example that hypothesis found in test_prox::test_firm_nonexpansiveness), with
    its Jacobian; affine_set with such an A is the set of A = 0, and a subnormal entry beside
    normal ones changes nothing."""
    tiny = float(jnp.finfo(dtype).tiny) / 2
    z = jnp.full((1, 5), tiny, dtype)
    for lam in (0.0, 0.3):
        assert bool(jnp.all(prox.nuclear_norm(z, lam) == 0)), lam
        jacobian = jax.jacobian(lambda v, lam=lam: prox.nuclear_norm(v, lam))(z)
        assert bool(jnp.all(jnp.isfinite(jacobian))), lam
    x = jnp.arange(5.0, dtype=dtype)
    np.testing.assert_array_equal(
        P.affine_set(x, (jnp.full((2, 5), tiny, dtype), jnp.zeros(2, dtype))), x
    )
    m = jnp.asarray([[1.0, tiny], [tiny, 3.0]], dtype)
    np.testing.assert_allclose(prox.nuclear_norm(m, 0.1), [[0.9, 0.0], [0.0, 2.9]], rtol=1e-6)


def _catalog_members(dtype) -> list:
    """(name, function, x, hyperparams) of every projection (its sample) and every prox (λ of
    PROXES; from_projection of l2_ball with radius 1), x in ``dtype``."""
    members = [(name, getattr(P, name), *SAMPLES[name](dtype)) for name in sorted(SAMPLES)]
    for name, h in PROXES.items():
        fun = prox.from_projection(P.l2_ball) if name == "from_projection" else getattr(prox, name)
        h = 1.0 if name == "from_projection" else h
        x = np.outer(_X, [1.0, -0.5, 0.25]) if name == "nuclear_norm" else _X
        members.append((f"prox.{name}", fun, jnp.asarray(x, dtype), h))
    return members


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_family(dtype):
    """Every projection and prox with x and its hyperparameters in bfloat16 or float16: the
    result in that dtype, within its rounding (0.03) of the float32 result, and a finite
    derivative. Before, a bfloat16 hyperparameter was refused as "not a real number" (NumPy
    does not count bfloat16 as floating), affine_set, polyhedron, psd_cone and nuclear_norm
    raised "Unsupported dtype" (no half-precision LAPACK), and the transport projections were
    0.1 to 0.4 off in bfloat16 (their tolerance is below its rounding): these now compute in
    float32 and round the result."""
    failures = []
    members = _catalog_members(jnp.float32)
    for name, fun, x, h in members:
        call = fun if h is None else lambda v, fun=fun, h=h: fun(v, _in_dtype(h, dtype))
        reference = fun(x) if h is None else fun(x, h)
        got, tangent = jax.jvp(call, (_in_dtype(x, dtype),), (_in_dtype(x, dtype),))
        leaves = map(jax.tree_util.tree_leaves, (got, reference, tangent))
        for leaf, ref, dx in zip(*leaves, strict=True):
            error = float(jnp.max(jnp.abs(leaf.astype(jnp.float32) - ref)))
            if leaf.dtype != dtype or not error <= 0.03 or not jnp.all(jnp.isfinite(dx)):
                failures.append(f"{name}: {leaf.dtype}, error {error:.3g}")
    assert not failures, failures


def _whole(value):
    """value's floating leaves times 10, rounded, as int32 (its int leaves kept)."""
    return jax.tree_util.tree_map(
        lambda leaf: (
            jnp.round(leaf * 10).astype(jnp.int32)
            if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
            else leaf
        ),
        value,
    )


def _as_float(value):
    return jax.tree_util.tree_map(
        lambda leaf: (
            leaf.astype(jnp.float64)
            if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.integer)
            else leaf
        ),
        value,
    )


def test_catalog_family_integer_inputs():
    """Every projection and prox given whole numbers (x, and its hyperparameters, as int32):
    the result on the same values as floats, in a floating dtype. prox.group_lasso scaled the
    int entries by 1/‖x‖∞ in their own dtype (truncating): 0.094 off, or 0.94 with an int λ
    (JAXopt 0.8.5 is right)."""
    failures = []
    members = _catalog_members(jnp.float64)
    for name, fun, x, h in members:
        for h_int in (h, _whole(h)):
            x_int = _whole(x)
            got = fun(x_int) if h is None else fun(x_int, h_int)
            want = fun(_as_float(x_int)) if h is None else fun(_as_float(x_int), _as_float(h_int))
            for leaf, ref in zip(*map(jax.tree_util.tree_leaves, (got, want)), strict=True):
                error = float(jnp.max(jnp.abs(leaf - ref)))
                exact = name in ("prox.none", "non_negative") and leaf.dtype == jnp.int32
                if not (jnp.issubdtype(leaf.dtype, jnp.floating) or exact) or not error <= 1e-12:
                    failures.append(f"{name} (λ {h_int}): {leaf.dtype}, error {error:.3g}")
    assert not failures, failures


@pytest.mark.parametrize("name", sorted(PROXES))
def test_prox_family_infinite_entries(name):
    """Every prox with its first or second entry at ±∞: the limit of that entry at ±1e150
    (entries beyond 1e100 read as ±∞), with a finite gradient of the sum of its finite outputs
    (group_lasso's was NaN: ∞/∞ in the norm's derivative); nuclear_norm gives NaN throughout
    (its SVD of a matrix with ∞ never returned, see test_svd_family_*)."""
    fun = prox.from_projection(P.l2_ball) if name == "from_projection" else getattr(prox, name)
    h = 1.0 if name == "from_projection" else PROXES[name]
    x = jnp.asarray(np.outer(_X, [1.0, -0.5, 0.25]) if name == "nuclear_norm" else _X)
    for index, sign in itertools.product((0, 1), (1.0, -1.0)):
        where = f"{name}: entry {index} at {sign * np.inf}"
        with_inf = x.reshape(-1).at[index].set(sign * jnp.inf).reshape(x.shape)
        got = np.asarray(fun(with_inf, h))
        if name == "nuclear_norm":
            assert np.all(np.isnan(got)), where
            continue
        limit = np.asarray(fun(x.reshape(-1).at[index].set(sign * 1e150).reshape(x.shape), h))
        big = np.abs(limit) > 1e100
        np.testing.assert_array_equal(got[big], np.sign(limit[big]) * np.inf, err_msg=where)
        np.testing.assert_allclose(got[~big], limit[~big], atol=1e-9, err_msg=where)

        def finite_sum(v):
            out = fun(v, h)
            return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0))

        assert np.all(np.isfinite(jax.grad(finite_sum)(with_inf))), where


# ---------------------------------------------------------------------------------------------
# Hyperparameters closed over by an outer transform: concrete while x is traced.


def _leaves_close(got, expected, atol):
    for g, e in zip(
        jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected), strict=True
    ):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=0, atol=atol)


def _catalog_calls():
    """(name, f(x) with the hyperparameters closed over, x) for every projection and prox."""
    calls = []
    for name in sorted(SAMPLES):
        x, h = SAMPLES[name](jnp.float64)
        calls.append((f"projections.{name}", functools.partial(getattr(P, name), hyperparams=h), x))
    for name in sorted(set(PROXES) - {"from_projection"}):
        x = jnp.asarray(_M if name == "nuclear_norm" else _X)
        fun = getattr(prox, name)
        calls.append((f"prox.{name}", lambda x, fun=fun, h=PROXES[name]: fun(x, h, 0.7), x))
    calls.append(("isotonic.isotonic_l2_pav", isotonic.isotonic_l2_pav, jnp.asarray(_X)))
    return calls


_CALLS = {name: (fun, x) for name, fun, x in _catalog_calls()}


def _weighted_sum(fun):
    """x ↦ Σ ⟨w, f(x)⟩ over the output's leaves, w fixed and distinct per entry."""

    def loss(x):
        leaves = jax.tree_util.tree_leaves(fun(x))
        return sum(jnp.vdot(v, jnp.linspace(0.3, 1.1, v.size).reshape(v.shape)) for v in leaves)

    return loss


@pytest.mark.parametrize("name", sorted(_CALLS))
def test_catalog_family_hyperparams_closed_over_under_jit(name):
    """jit, jax.checkpoint and eval_shape of x ↦ f(x, θ) with θ a concrete constant of the
    closure: the value of the eager call. affine_set and box_section checked their set with jnp
    operations on θ, which the outer jit stages out: TracerBoolConversionError."""
    fun, x = _CALLS[name]
    expected = fun(x)
    _leaves_close(jax.jit(fun)(x), expected, 1e-12)
    _leaves_close(jax.checkpoint(fun)(x), expected, 1e-12)
    shapes = jax.eval_shape(fun, x)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(expected)


@pytest.mark.parametrize("name", sorted(_CALLS))
def test_catalog_family_vmap_inside_shard_map(name):
    """A batch per device (vmap inside shard_map over 4 devices, θ closed over, the same on
    every device): the values and gradients of the one-device vmap. The transport projections
    (loop carries and marginals that were not marked device-varying) and polyhedron (OSQP's
    lax.cond, batched by vmap, replayed a pvary JAX then refused) raised."""
    from jax.sharding import AxisType
    from jax.sharding import PartitionSpec as PS

    fun, x = _CALLS[name]
    xs = jax.tree_util.tree_map(lambda v: jnp.stack([v + 0.05 * d for d in range(8)]), x)
    value_and_grad = jax.vmap(jax.value_and_grad(_weighted_sum(fun)))
    mesh = jax.make_mesh((4,), ("d",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
    sharded = jax.shard_map(value_and_grad, mesh=mesh, in_specs=PS("d"), out_specs=PS("d"))
    _leaves_close(jax.jit(sharded)(xs), jax.jit(value_and_grad)(xs), 1e-10)


def _modulus_shrink(z, threshold):
    """z · max(1 − threshold/|z|, 0), entry by entry (the prox of threshold · |·| on ℂ)."""
    return z * np.maximum(1 - threshold / np.abs(z), 0)


RNG_COMPLEX = np.random.default_rng(17)

# The members that take complex x, with their closed forms on ℂⁿ (= ℝ²ⁿ, norms by modulus).
COMPLEX_CLOSED_FORMS = {
    "l2_ball": lambda z, r: z * min(1.0, r / np.linalg.norm(z)),
    "l2_sphere": lambda z, r: z * r / np.linalg.norm(z),
    "prox.none": lambda z, h: z,
    "prox.l1": _modulus_shrink,
    "prox.ridge": lambda z, lam: z / (1 + lam),
    "prox.elastic_net": lambda z, h: _modulus_shrink(z, h[0]) / (1 + h[0] * h[1]),
    "prox.group_lasso": lambda z, lam: z * max(0.0, 1 - lam / np.linalg.norm(z)),
    "prox.from_projection": lambda z, r: z * min(1.0, r / np.linalg.norm(z)),
}


def _complex_sample(x):
    """x as complex, its imaginary part x reversed and halved (nonzero: phases vary)."""
    return jax.tree_util.tree_map(lambda leaf: jax.lax.complex(leaf, 0.5 * jnp.flip(leaf)), x)


def test_catalog_family_complex_input():
    """Every projection and prox given complex x. Those defined by moduli and norms (l2_ball,
    l2_sphere, prox.none, l1, ridge, elastic_net, group_lasso, from_projection of l2_ball) give
    their closed form on ℂⁿ, and a JVP equal to central differences along a complex direction
    (l1 and elastic_net had JAX's zero derivative of sign(z): 0.3 off along a change of phase).
    Every other one refuses it by name: non_negative, the boxes and simplices compared the real
    part and kept the imaginary one, l1_sphere returned a real vector, nuclear_norm dropped the
    imaginary part, all silently."""
    failures = []
    for name, fun, x, h in _catalog_members(jnp.float64):
        z = _complex_sample(x)
        call = (lambda v, fun=fun: fun(v)) if h is None else (lambda v, fun=fun, h=h: fun(v, h))
        if name not in COMPLEX_CLOSED_FORMS:
            short = name.removeprefix("prox.")
            with pytest.raises(TypeError, match=f"{short}: x must be real, got dtype complex128"):
                call(z)
            continue
        got = call(z)
        want = COMPLEX_CLOSED_FORMS[name](np.asarray(z), h)
        if got.dtype != jnp.complex128 or not np.allclose(got, want, rtol=1e-12, atol=1e-14):
            failures.append(f"{name}: value {got} for {want}")
        direction = jnp.asarray(
            RNG_COMPLEX.normal(size=z.shape) + 1j * RNG_COMPLEX.normal(size=z.shape)
        )
        _, tangent = jax.jvp(call, (z,), (direction,))
        eps = 1e-6
        fd = (call(z + eps * direction) - call(z - eps * direction)) / (2 * eps)
        if not np.allclose(tangent, fd, rtol=1e-6, atol=1e-8):
            failures.append(f"{name}: jvp {tangent} for {fd}")
    assert not failures, failures


def test_catalog_family_result_in_the_dtype_of_x():
    """Every projection and prox with a float32 x and float64 hyperparameters: the result in
    float32, leaf by leaf, within float32 rounding of the float64 result. Before, affine_set, box,
    box_section, hypercube, the l1, l2 and l∞ balls and spheres, polyhedron, simplex and the
    transport polytopes returned float64 (JAX's promotion) while the others returned float32."""
    failures = []
    for name, fun, x, h in _catalog_members(jnp.float64):
        x32 = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), x)
        got = fun(x32) if h is None else fun(x32, h)
        want = fun(x) if h is None else fun(x, h)
        for leaf, ref in zip(*map(jax.tree_util.tree_leaves, (got, want)), strict=True):
            error = float(jnp.max(jnp.abs(leaf.astype(jnp.float64) - ref)))
            if leaf.dtype != jnp.float32 or not error <= 2e-5:
                failures.append(f"{name}: {leaf.dtype}, error {error:.2g}")
    assert not failures, failures
