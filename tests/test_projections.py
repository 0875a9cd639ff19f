"""Tests of implicitdiff.projections: values against independent references, derivatives against
finite differences, feasibility and optimality as properties, jit, vmap, float32 and errors."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
from helpers import (
    assert_tree_allclose,
    finite_difference_grad,
    finite_difference_jvp,
    random_tangent,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from implicitdiff import projections as P

N = 6


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# Independent references, in NumPy / SciPy.


def np_simplex(v: np.ndarray, scale: float) -> np.ndarray:
    """Simplex projection by bisection on the threshold τ of Σ max(v − τ, 0) = scale, then the
    exact τ on the support found (no sorting, unlike the implementation)."""
    v = np.asarray(v, dtype=np.float64)
    if scale == 0:
        return np.zeros_like(v)
    lo, hi = v.min() - scale, v.max()  # g(lo) ≥ scale ≥ g(hi) = 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(v - mid, 0).sum() > scale:
            lo = mid
        else:
            hi = mid
    support = v > 0.5 * (lo + hi)
    tau = (v[support].sum() - scale) / support.sum()
    return np.maximum(v - tau, 0)


def np_sparse_simplex(v: np.ndarray, scale: float, k: int) -> np.ndarray:
    """Brute force over every support of size k: the closest of the simplex projections."""
    best, best_dist = None, np.inf
    for subset in itertools.combinations(range(v.size), k):
        idx = list(subset)
        cand = np.zeros_like(v)
        cand[idx] = np_simplex(v[idx], scale)
        dist = np.sum((cand - v) ** 2)
        if dist < best_dist:
            best, best_dist = cand, dist
    return best


def np_l1_sphere(v: np.ndarray, radius: float) -> np.ndarray:
    """Brute force over the 2ⁿ orthants: the sphere's face in orthant σ is σ ⊙ (radius·simplex)."""
    best, best_dist = None, np.inf
    for signs in itertools.product([-1.0, 1.0], repeat=v.size):
        s = np.array(signs)
        cand = s * np_simplex(s * v, radius)
        dist = np.sum((cand - v) ** 2)
        if dist < best_dist:
            best, best_dist = cand, dist
    return best


def scipy_projection(x, constraints=(), bounds=None, extra=0, x0=None):
    """argmin ½‖y − x‖² subject to the constraints, by SLSQP; ``extra`` auxiliary variables
    (not in the objective) are appended to y."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size

    def objective(v):
        return 0.5 * np.sum((v[:n] - x) ** 2)

    def gradient(v):
        g = np.zeros_like(v)
        g[:n] = v[:n] - x
        return g

    start = np.concatenate([x, np.zeros(extra)]) if x0 is None else x0
    result = scipy.optimize.minimize(
        objective,
        start,
        jac=gradient,
        method="SLSQP",
        bounds=bounds,
        constraints=list(constraints),
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    # Status 8 ("positive directional derivative for linesearch"): SLSQP stalled at its precision
    # floor, about 1e-9 from the solution here; the comparison with 1e-6 tolerance still decides.
    assert result.success or result.status == 8, result.message
    return result.x[:n]


def _ineq(fun, jac=None):
    out = {"type": "ineq", "fun": fun}
    if jac is not None:
        out["jac"] = jac
    return out


def _eq(fun, jac=None):
    out = {"type": "eq", "fun": fun}
    if jac is not None:
        out["jac"] = jac
    return out


# ---------------------------------------------------------------------------------------------
# Values against SciPy (SLSQP on ½‖y − x‖² with the set's constraints).


def _scipy_case(name: str, seed: int):
    """(our projection, SciPy's) for one random input."""
    rng = _rng(seed)
    x = 2.0 * rng.normal(size=N)
    if name == "non_negative":
        return P.non_negative(jnp.asarray(x)), scipy_projection(x, bounds=[(0, None)] * N)
    if name == "box":
        lower = rng.uniform(-1.5, 0.0, N)
        upper = lower + rng.uniform(0.1, 2.0, N)
        ours = P.box(jnp.asarray(x), (jnp.asarray(lower), jnp.asarray(upper)))
        return ours, scipy_projection(x, bounds=list(zip(lower, upper, strict=True)))
    if name == "hypercube":
        s = 1.3
        return P.hypercube(jnp.asarray(x), s), scipy_projection(x, bounds=[(0, s)] * N)
    if name == "linf_ball":
        r = 0.8
        return P.linf_ball(jnp.asarray(x), r), scipy_projection(x, bounds=[(-r, r)] * N)
    if name == "simplex":
        s = 1.7
        cons = [_eq(lambda y: y.sum() - s, lambda y: np.ones_like(y))]
        return P.simplex(jnp.asarray(x), s), scipy_projection(x, cons, [(0, None)] * N)
    if name == "l1_ball":  # lifted: −t ≤ y ≤ t, Σt ≤ r, variables (y, t)
        r = 1.5
        eye = np.eye(N)
        cons = [
            _ineq(lambda v: v[N:] - v[:N], lambda v: np.hstack([-eye, eye])),
            _ineq(lambda v: v[N:] + v[:N], lambda v: np.hstack([eye, eye])),
            _ineq(lambda v: r - v[N:].sum(), lambda v: np.r_[np.zeros(N), -np.ones(N)]),
        ]
        x0 = np.concatenate([np.zeros(N), np.full(N, r / N)])
        return P.l1_ball(jnp.asarray(x), r), scipy_projection(x, cons, extra=N, x0=x0)
    if name == "l2_ball":
        r = 1.2
        cons = [_ineq(lambda y: r**2 - y @ y, lambda y: -2 * y)]
        return P.l2_ball(jnp.asarray(x), r), scipy_projection(x, cons, x0=np.zeros(N))
    if name == "l2_sphere":
        r = 0.7 if seed % 2 else 9.0  # from outside and from inside
        cons = [_eq(lambda y: y @ y - r**2, lambda y: 2 * y)]
        return P.l2_sphere(jnp.asarray(x), r), scipy_projection(x, cons)
    if name == "hyperplane":
        a, b = rng.normal(size=N), rng.normal()
        cons = [_eq(lambda y: a @ y - b, lambda y: a)]
        return P.hyperplane(jnp.asarray(x), (jnp.asarray(a), b)), scipy_projection(x, cons)
    if name == "halfspace":
        a, b = rng.normal(size=N), rng.normal()
        b = b if seed % 2 else a @ x + 1.0  # violated, or satisfied
        cons = [_ineq(lambda y: b - a @ y, lambda y: -a)]
        return P.halfspace(jnp.asarray(x), (jnp.asarray(a), b)), scipy_projection(x, cons)
    if name == "affine_set":
        A, b = rng.normal(size=(3, N)), rng.normal(size=3)
        cons = [_eq(lambda y: A @ y - b, lambda y: A)]
        ours = P.affine_set(jnp.asarray(x), (jnp.asarray(A), jnp.asarray(b)))
        return ours, scipy_projection(x, cons)
    if name == "box_section":
        alpha = rng.uniform(-1.0, 0.0, N)
        beta = alpha + rng.uniform(0.2, 1.5, N)
        w = rng.normal(size=N)
        c = w @ (alpha + rng.uniform(0, 1, N) * (beta - alpha))  # a feasible level
        cons = [_eq(lambda y: w @ y - c, lambda y: w)]
        ours = P.box_section(jnp.asarray(x), (jnp.asarray(alpha), jnp.asarray(beta), w, c))
        return ours, scipy_projection(x, cons, list(zip(alpha, beta, strict=True)))
    if name == "second_order_cone":  # boundary case: SciPy's ‖z‖ is smooth away from z = 0
        t, z = rng.normal(), 3.0 * rng.normal(size=N - 1)
        cons = [_ineq(lambda v: v[0] - np.linalg.norm(v[1:]))]
        ref = scipy_projection(np.r_[t, z], cons)
        ours = P.second_order_cone((jnp.asarray(t), jnp.asarray(z)))
        return np.r_[ours[0], ours[1]], ref
    raise AssertionError(name)


SCIPY_NAMES = [
    "non_negative",
    "box",
    "hypercube",
    "linf_ball",
    "simplex",
    "l1_ball",
    "l2_ball",
    "l2_sphere",
    "hyperplane",
    "halfspace",
    "affine_set",
    "box_section",
    "second_order_cone",
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", SCIPY_NAMES)
def test_matches_scipy(name, seed):
    ours, ref = _scipy_case(name, seed)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Values against exact references: bisection, brute force, Moreau's decomposition.


@pytest.mark.parametrize("seed", range(3))
def test_simplex_matches_bisection(seed):
    rng = _rng(seed)
    x = rng.normal(size=N) * 2
    for scale in [0.0, 0.3, 1.0, 25.0]:
        np.testing.assert_allclose(
            P.simplex(jnp.asarray(x), scale), np_simplex(x, scale), atol=1e-10
        )
    # Any shape: the constraint sums over all entries.
    X = rng.normal(size=(2, 3))
    np.testing.assert_allclose(P.simplex(X, 2.0).ravel(), np_simplex(X.ravel(), 2.0), atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_sparse_simplex_matches_brute_force(seed):
    x = _rng(seed).normal(size=N)
    for scale, k in [(1.0, 1), (1.0, 2), (3.0, 3), (0.5, N)]:
        np.testing.assert_allclose(
            P.sparse_simplex(jnp.asarray(x), (scale, k)), np_sparse_simplex(x, scale, k), atol=1e-10
        )


@pytest.mark.parametrize("seed", range(3))
def test_l1_sets_match_brute_force(seed):
    x = _rng(seed).normal(size=N)
    norm = np.abs(x).sum()
    for radius in [0.2 * norm, 0.9 * norm, 1.5 * norm]:  # outside, outside, inside
        sphere = np_l1_sphere(x, radius)
        np.testing.assert_allclose(P.l1_sphere(jnp.asarray(x), radius), sphere, atol=1e-10)
        ball = x if norm <= radius else sphere
        np.testing.assert_allclose(P.l1_ball(jnp.asarray(x), radius), ball, atol=1e-10)


def test_closed_forms_on_pytrees_and_special_points():
    rng = _rng(3)
    tree = {"a": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(rng.normal(size=(2, 2)))}
    flat, unravel = ravel_pytree(tree)
    flat = np.asarray(flat)
    norm = np.linalg.norm(flat)
    # Pytrees behave as the vector of all their entries.
    assert_tree_allclose(P.non_negative(tree), unravel(np.maximum(flat, 0)))
    assert_tree_allclose(P.l2_ball(tree, 0.5), unravel(flat * 0.5 / norm))
    assert_tree_allclose(P.l2_ball(tree, 2 * norm), tree)
    assert_tree_allclose(P.l2_sphere(tree, 3.0), unravel(flat * 3.0 / norm))
    assert_tree_allclose(P.linf_ball(tree, 0.4), unravel(np.clip(flat, -0.4, 0.4)))
    lower = {"a": -0.1 * jnp.ones(3), "b": -0.2}
    expected = {"a": np.clip(tree["a"], -0.1, 0.3), "b": np.clip(tree["b"], -0.2, 0.3)}
    assert_tree_allclose(P.box(tree, (lower, 0.3)), expected)
    # The sphere at the origin: radius · e₁; the cones' trivial cases.
    assert_tree_allclose(P.l2_sphere(jnp.zeros(3), 2.0), jnp.array([2.0, 0.0, 0.0]))
    assert_tree_allclose(P.l2_ball(jnp.zeros(3), 0.0), jnp.zeros(3))
    z = jnp.array([0.3, -0.4])
    assert_tree_allclose(P.second_order_cone((jnp.asarray(1.0), z)), (1.0, z))
    assert_tree_allclose(P.second_order_cone((jnp.asarray(-1.0), z)), (0.0, jnp.zeros(2)))


def _check_moreau_soc(x, p, tol=1e-10):
    """p is the projection of x onto the self-dual cone K iff p ∈ K, p − x ∈ K, ⟨p, p − x⟩ = 0."""
    (t, z), (pt, pz) = x, p
    qt, qz = pt - t, pz - z
    assert np.linalg.norm(pz) <= pt + tol
    assert np.linalg.norm(qz) <= qt + tol
    assert abs(pt * qt + np.dot(pz, qz)) <= tol


@pytest.mark.parametrize("seed", range(3))
def test_second_order_cone_moreau(seed):
    rng = _rng(seed)
    z = rng.normal(size=4)
    norm = np.linalg.norm(z)
    for t in [2 * norm, -2 * norm, 0.3 * norm, -0.3 * norm, 0.0]:  # inside, polar, boundary
        p = P.second_order_cone((jnp.asarray(t), jnp.asarray(z)))
        _check_moreau_soc((t, z), (float(p[0]), np.asarray(p[1])))


@pytest.mark.parametrize("seed", range(3))
def test_psd_cone_moreau(seed):
    """P is the projection of S onto the PSD cone iff P ⪰ 0, P − S ⪰ 0 and P(P − S) = 0."""
    rng = _rng(seed)
    X = rng.normal(size=(5, 5))
    S = 0.5 * (X + X.T)
    p = np.asarray(P.psd_cone(jnp.asarray(X)))  # X is not symmetric: the cone sees S
    np.testing.assert_allclose(p, p.T, atol=1e-12)
    assert np.linalg.eigvalsh(p).min() >= -1e-10
    assert np.linalg.eigvalsh(p - S).min() >= -1e-10
    np.testing.assert_allclose(p @ (p - S), 0.0, atol=1e-10)
    assert np.linalg.eigvalsh(S).min() < 0 < np.linalg.eigvalsh(S).max()  # a non-trivial case


# ---------------------------------------------------------------------------------------------
# Derivatives against central finite differences (float64), forward and reverse mode.


def _derivative_cases():
    """name -> (f, params): f maps a pytree of differentiable inputs to the projection, at a
    random point away from kinks (the margins are checked where it matters)."""
    rng = _rng(7)
    x = jnp.asarray(2.0 * rng.normal(size=N))
    cases = {}
    cases["non_negative"] = (P.non_negative, x)
    lower = jnp.asarray(rng.uniform(-1.5, -0.3, N))
    upper = lower + jnp.asarray(rng.uniform(0.5, 2.0, N))
    cases["box"] = (lambda p: P.box(p[0], (p[1], p[2])), (x, lower, upper))
    cases["hypercube"] = (lambda p: P.hypercube(p[0], p[1]), (x, jnp.asarray(1.1)))
    cases["linf_ball"] = (lambda p: P.linf_ball(p[0], p[1]), (x, jnp.asarray(0.9)))
    cases["simplex"] = (lambda p: P.simplex(p[0], p[1]), (x, jnp.asarray(2.5)))
    cases["sparse_simplex"] = (
        lambda p: P.sparse_simplex(p[0], (p[1], 3)),
        (x, jnp.asarray(1.5)),
    )
    cases["l1_ball"] = (lambda p: P.l1_ball(p[0], p[1]), (x, jnp.asarray(2.0)))
    cases["l1_ball_inside"] = (lambda p: P.l1_ball(p[0], p[1]), (x, jnp.asarray(50.0)))
    cases["l1_sphere_inside"] = (lambda p: P.l1_sphere(p[0], p[1]), (x, jnp.asarray(30.0)))
    cases["l2_ball"] = (lambda p: P.l2_ball(p[0], p[1]), (x, jnp.asarray(1.3)))
    cases["l2_ball_origin"] = (lambda p: P.l2_ball(p[0], p[1]), (jnp.zeros(N), jnp.asarray(1.3)))
    cases["l2_sphere"] = (lambda p: P.l2_sphere(p[0], p[1]), (x, jnp.asarray(9.0)))
    a, b = jnp.asarray(rng.normal(size=N)), jnp.asarray(0.4)
    cases["hyperplane"] = (lambda p: P.hyperplane(p[0], (p[1], p[2])), (x, a, b))
    cases["halfspace"] = (lambda p: P.halfspace(p[0], (p[1], p[2])), (x, a, a @ x - 1.0))
    cases["halfspace_inside"] = (lambda p: P.halfspace(p[0], (p[1], p[2])), (x, a, a @ x + 1.0))
    A, bb = jnp.asarray(rng.normal(size=(2, N))), jnp.asarray(rng.normal(size=2))
    cases["affine_set"] = (lambda p: P.affine_set(p[0], (p[1], p[2])), (x, A, bb))
    alpha = jnp.asarray(rng.uniform(-1.0, -0.2, N))
    beta = alpha + jnp.asarray(rng.uniform(0.6, 1.5, N))
    w = jnp.asarray(rng.normal(size=N)).at[1].set(0.0)  # a coordinate outside the constraint
    c = w @ (0.3 * alpha + 0.7 * beta)
    cases["box_section"] = (lambda p: P.box_section(p[0], tuple(p[1:])), (x, alpha, beta, w, c))
    t, z = jnp.asarray(0.3), jnp.asarray(rng.normal(size=N - 1))
    cases["second_order_cone"] = (P.second_order_cone, (t, z))
    cases["second_order_cone_inside"] = (P.second_order_cone, (t + 10.0, z))
    X = jnp.asarray(rng.normal(size=(4, 4)))
    cases["psd_cone"] = (P.psd_cone, X)
    # Repeated eigenvalues: eigh's own derivative is undefined, the projection's is not.
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    cases["psd_cone_repeated"] = (
        P.psd_cone,
        jnp.asarray(Q @ np.diag([2.0, 2.0, -1.0, -1.0]) @ Q.T),
    )
    return cases


DERIVATIVE_CASES = _derivative_cases()


@pytest.mark.parametrize("name", sorted(DERIVATIVE_CASES))
def test_derivatives_match_finite_differences(name):
    fun, params = DERIVATIVE_CASES[name]
    fun = jax.jit(fun)
    out = fun(params)
    tangent = random_tangent(params, seed=1)
    cotangent = random_tangent(out, seed=2)

    @jax.jit
    def derivatives(params, tangent, cotangent):
        _, jvp = jax.jvp(fun, (params,), (tangent,))
        _, vjp_fun = jax.vjp(fun, params)
        return jvp, vjp_fun(cotangent)[0]

    jvp, vjp = derivatives(params, tangent, cotangent)
    assert_tree_allclose(jvp, finite_difference_jvp(fun, params, tangent), rtol=1e-6, atol=1e-6)

    u_leaves = [np.asarray(u) for u in jax.tree_util.tree_leaves(cotangent)]

    def pairing(p):  # ⟨u, f(p)⟩, whose gradient is the VJP with u
        leaves = jax.tree_util.tree_leaves(fun(p))
        return sum(np.vdot(u, np.asarray(v)) for u, v in zip(u_leaves, leaves, strict=True))

    assert_tree_allclose(vjp, finite_difference_grad(pairing, params), rtol=1e-6, atol=1e-6)
    # A non-trivial derivative: not the zero map (which a broken rule could return).
    assert np.abs(ravel_pytree(jvp)[0]).max() > 1e-3


def test_simplex_closed_form_jacobian():
    """J = diag(s) − s sᵀ/|s| and ∂p/∂scale = s/|s|, s the support."""
    x = jnp.asarray(_rng(4).normal(size=N))
    p = P.simplex(x, 1.2)
    s = np.asarray(p > 0, dtype=float)
    assert 1 < s.sum() < N
    J, J_scale = jax.jit(jax.jacrev(P.simplex, argnums=(0, 1)))(x, 1.2)
    np.testing.assert_allclose(J, np.diag(s) - np.outer(s, s) / s.sum(), atol=1e-12)
    np.testing.assert_allclose(J_scale, s / s.sum(), atol=1e-12)


def test_box_section_without_free_coordinate():
    """Every coordinate on a bound: the dual's derivative is 0, the projection locally constant
    in x and w; its derivative must be that, zero (not NaN, not a ridge-perturbed value)."""
    x, w = jnp.array([5.0, 4.0, -5.0]), jnp.ones(3)
    project = jax.jit(lambda x, w: P.box_section(x, (0.0, 1.0, w, 2.0)))
    np.testing.assert_array_equal(project(x, w), [1.0, 1.0, 0.0])
    Jx, Jw = jax.jit(jax.jacrev(project, argnums=(0, 1)))(x, w)
    np.testing.assert_array_equal(Jx, 0.0)
    np.testing.assert_array_equal(Jw, 0.0)
    _, jvp = jax.jvp(project, (x, w), (jnp.array([0.3, -0.2, 0.1]), jnp.array([1.0, 2.0, 3.0])))
    np.testing.assert_array_equal(jvp, 0.0)
    fd = finite_difference_jvp(lambda v: project(v, w), x, jnp.array([0.3, -0.2, 0.1]))
    np.testing.assert_allclose(fd, 0.0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Feasibility and optimality, as properties: p is in C, and ⟨x − p, y − p⟩ ≤ 0 for y in C (for
# the non-convex sets: ‖x − p‖ ≤ ‖x − y‖).


def _unit(v):
    return v / np.linalg.norm(v)


def _property_setup(name, rng):
    """(projection of a flat x, feasibility check, feasible points generator, convex, x size)."""
    n = 5
    if name == "non_negative":
        return (P.non_negative, lambda p: p.min() >= -1e-12, lambda: np.abs(rng.normal(size=n)) * 3)
    if name == "box":
        lo = rng.uniform(-2, 0, n)
        up = lo + rng.uniform(0, 2, n)
        return (
            lambda x: P.box(x, (lo, up)),
            lambda p: np.all(p >= lo - 1e-12) and np.all(p <= up + 1e-12),
            lambda: lo + rng.uniform(0, 1, n) * (up - lo),
        )
    if name == "simplex":
        s = rng.uniform(0.1, 3)
        return (
            lambda x: P.simplex(x, s),
            lambda p: p.min() >= 0 and abs(p.sum() - s) < 1e-10,
            lambda: s * rng.dirichlet(np.ones(n)),
        )
    if name == "l1_ball":
        r = rng.uniform(0.1, 3)
        return (
            lambda x: P.l1_ball(x, r),
            lambda p: np.abs(p).sum() <= r + 1e-10,
            lambda: r * rng.uniform() ** 0.2 * rng.dirichlet(np.ones(n)) * rng.choice([-1, 1], n),
        )
    if name == "l2_ball":
        r = rng.uniform(0.1, 3)
        return (
            lambda x: P.l2_ball(x, r),
            lambda p: np.linalg.norm(p) <= r + 1e-10,
            lambda: r * rng.uniform() ** 0.2 * _unit(rng.normal(size=n)),
        )
    if name == "linf_ball":
        r = rng.uniform(0.1, 3)
        return (
            lambda x: P.linf_ball(x, r),
            lambda p: np.abs(p).max() <= r + 1e-12,
            lambda: rng.uniform(-r, r, n),
        )
    if name in ("hyperplane", "halfspace"):
        a, b = rng.normal(size=n), rng.normal()
        fn = getattr(P, name)

        def sample():
            z = 3 * rng.normal(size=n)
            y = z + (b - a @ z) / (a @ a) * a
            return y - rng.exponential() * a if name == "halfspace" else y

        ok = (
            (lambda p: abs(a @ p - b) < 1e-10)
            if name == "hyperplane"
            else (lambda p: a @ p <= b + 1e-10)
        )
        return lambda x: fn(x, (a, b)), ok, sample
    if name == "affine_set":
        A, b = rng.normal(size=(2, n)), rng.normal(size=2)
        y0, null = np.linalg.lstsq(A, b, rcond=None)[0], scipy.linalg.null_space(A)
        return (
            lambda x: P.affine_set(x, (A, b)),
            lambda p: np.abs(A @ p - b).max() < 1e-10,
            lambda: y0 + null @ (3 * rng.normal(size=null.shape[1])),
        )
    if name == "box_section":
        lo = rng.uniform(-2, 0, n)
        up = lo + rng.uniform(0.1, 2, n)
        w = rng.normal(size=n)
        y0 = lo + rng.uniform(0, 1, n) * (up - lo)
        c = w @ y0

        def sample():  # y0 + t d, d ⊥ w, t up to the box's boundary
            d = rng.normal(size=n)
            d -= (w @ d) / (w @ w) * w
            steps = np.where(
                d > 0, (up - y0) / np.where(d > 0, d, 1), (lo - y0) / np.where(d < 0, d, 1)
            )
            return y0 + rng.uniform() * steps.min() * d

        return (
            lambda x: P.box_section(x, (lo, up, w, c)),
            lambda p: np.all(p >= lo - 1e-12) and np.all(p <= up + 1e-12) and abs(w @ p - c) < 1e-9,
            sample,
        )
    if name == "second_order_cone":

        def sample():
            z = rng.normal(size=n - 1)
            return np.r_[np.linalg.norm(z) + rng.exponential(), z]

        def fn(v):
            t, z = P.second_order_cone((v[0], v[1:]))
            return jnp.concatenate([t[None], z])

        return fn, lambda p: np.linalg.norm(p[1:]) <= p[0] + 1e-10, sample
    if name == "psd_cone":

        def sample():
            B = rng.normal(size=(3, rng.integers(1, 4)))
            return (B @ B.T).ravel()

        def fn(v):
            return P.psd_cone(v[:9].reshape(3, 3)).ravel()

        return fn, lambda p: np.linalg.eigvalsh(p.reshape(3, 3)).min() >= -1e-10, sample
    # Non-convex sets: compare distances.
    if name == "l2_sphere":
        r = rng.uniform(0.1, 3)
        return (
            lambda x: P.l2_sphere(x, r),
            lambda p: abs(np.linalg.norm(p) - r) < 1e-10,
            lambda: r * _unit(rng.normal(size=n)),
        )
    if name == "l1_sphere":
        r = rng.uniform(0.1, 3)
        return (
            lambda x: P.l1_sphere(x, r),
            lambda p: abs(np.abs(p).sum() - r) < 1e-10,
            lambda: r * rng.dirichlet(np.ones(n)) * rng.choice([-1, 1], n),
        )
    if name == "sparse_simplex":
        s = rng.uniform(0.1, 3)

        def sample():
            y = np.zeros(n)
            idx = rng.choice(n, 2, replace=False)
            y[idx] = s * rng.dirichlet(np.ones(2))
            return y

        return (
            lambda x: P.sparse_simplex(x, (s, 2)),
            lambda p: p.min() >= 0 and abs(p.sum() - s) < 1e-10 and np.count_nonzero(p) <= 2,
            sample,
        )
    raise AssertionError(name)


CONVEX = [
    "non_negative",
    "box",
    "simplex",
    "l1_ball",
    "l2_ball",
    "linf_ball",
    "hyperplane",
    "halfspace",
    "affine_set",
    "box_section",
    "second_order_cone",
    "psd_cone",
]
NONCONVEX = ["l2_sphere", "l1_sphere", "sparse_simplex"]


@pytest.mark.parametrize("name", CONVEX + NONCONVEX)
@settings(max_examples=12, deadline=None)
@given(
    values=st.lists(
        st.floats(-5, 5, allow_nan=False, allow_infinity=False), min_size=9, max_size=9
    ),
    seed=st.integers(0, 2**16),
)
def test_feasible_and_optimal(name, values, seed):
    rng = _rng(seed)
    fn, feasible, sample = _property_setup(name, rng)
    x = np.asarray(values[:9] if name == "psd_cone" else values[:5], dtype=np.float64)
    if name == "psd_cone":
        x = 0.5 * (x.reshape(3, 3) + x.reshape(3, 3).T).ravel()  # the cone sees the symmetric part
    p = np.asarray(fn(jnp.asarray(x)))
    assert feasible(p), p
    scale = 1.0 + np.linalg.norm(x)
    for _ in range(20):
        y = sample()
        assert feasible(y)  # the generator itself
        if name in NONCONVEX:
            assert np.linalg.norm(x - p) <= np.linalg.norm(x - y) + 1e-9 * scale
        else:
            assert np.dot(x - p, y - p) <= 1e-9 * scale**2


# ---------------------------------------------------------------------------------------------
# jit, vmap, float32, errors.


def _batch_cases():
    """name -> (projection, batched x, batched hyperparams or None (unbatched None))."""
    rng = _rng(11)
    B = 3

    def arr(*shape):
        return jnp.asarray(rng.normal(size=(B, *shape)))

    def positive(low, high):
        return jnp.asarray(rng.uniform(low, high, B))

    lo = -jnp.abs(arr(N))
    return {
        "non_negative": (P.non_negative, arr(N), None),
        "box": (P.box, arr(N), (lo, lo + 1.0)),
        "hypercube": (P.hypercube, arr(N), positive(0.5, 1.5)),
        "linf_ball": (P.linf_ball, arr(N), positive(0.5, 1.5)),
        "simplex": (P.simplex, arr(N), positive(0.5, 3.0)),
        "sparse_simplex": (lambda x, s: P.sparse_simplex(x, (s, 2)), arr(N), positive(0.5, 3.0)),
        "l1_ball": (P.l1_ball, arr(N), positive(0.5, 3.0)),
        "l1_sphere": (P.l1_sphere, arr(N), positive(0.5, 3.0)),
        "l2_ball": (P.l2_ball, arr(N), positive(0.5, 3.0)),
        "l2_sphere": (P.l2_sphere, arr(N), positive(0.5, 3.0)),
        "hyperplane": (P.hyperplane, arr(N), (arr(N), arr())),
        "halfspace": (P.halfspace, arr(N), (arr(N), arr())),
        "affine_set": (P.affine_set, arr(N), (arr(2, N), arr(2))),
        "box_section": (
            P.box_section,
            arr(N),
            (-1.0 + 0 * arr(N), 1.0 + 0 * arr(N), arr(N), 0.1 * arr()),
        ),
        "second_order_cone": (P.second_order_cone, (arr(), arr(N - 1)), None),
        "psd_cone": (P.psd_cone, arr(4, 4), None),
    }


BATCH_CASES = _batch_cases()


def _example(tree, i):
    return jax.tree_util.tree_map(lambda leaf: leaf[i], tree)


@pytest.mark.parametrize("name", sorted(BATCH_CASES))
def test_vmap_equals_per_example(name):
    fn, xs, hps = BATCH_CASES[name]
    args = (xs,) if hps is None else (xs, hps)
    batched = jax.jit(jax.vmap(fn))(*args)
    single = jax.jit(fn)
    stacked = jax.tree_util.tree_map(
        lambda *leaves: jnp.stack(leaves), *[single(*_example(args, i)) for i in range(3)]
    )
    assert_tree_allclose(batched, stacked, rtol=1e-12, atol=1e-12)
    # The examples differ, so a vmap that broadcast one example to all would fail.
    first, second = (ravel_pytree(_example(stacked, i))[0] for i in (0, 1))
    assert np.abs(first - second).max() > 1e-3


@pytest.mark.parametrize("name", sorted(BATCH_CASES))
def test_jit_equals_eager(name):
    fn, xs, hps = BATCH_CASES[name]
    args = _example((xs,) if hps is None else (xs, hps), 0)
    assert_tree_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(BATCH_CASES))
def test_float32(name):
    """float32 in, float32 out (values and derivatives), close to the float64 result."""
    fn, xs, hps = BATCH_CASES[name]
    args = _example((xs,) if hps is None else (xs, hps), 0)
    args32 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32), args)
    tangents = random_tangent(args, seed=3)
    tangents32 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32), tangents)
    out32, jvp32 = jax.jit(lambda a, t: jax.jvp(fn, a, t))(args32, tangents32)
    out64 = jax.jit(fn)(*args)
    for leaf in jax.tree_util.tree_leaves((out32, jvp32)):
        assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))
    assert_tree_allclose(out32, out64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: P.simplex(x, -1.0), r"^simplex: scale must be non-negative"),
        (lambda x: P.hypercube(x, -0.5), r"^hypercube: scale must be non-negative"),
        (lambda x: P.sparse_simplex(x, (-1.0, 2)), r"^sparse_simplex: scale must be non-negative"),
        (lambda x: P.sparse_simplex(x, (1.0, 0)), "^sparse_simplex: max_nz must be at least 1"),
        (lambda x: P.l1_ball(x, -1.0), r"^l1_ball: radius must be non-negative"),
        (lambda x: P.l1_sphere(x, jnp.asarray(-2.0)), r"^l1_sphere: radius must be non-negative"),
        (lambda x: P.l2_ball(x, -1.0), r"^l2_ball: radius must be non-negative"),
        (lambda x: P.l2_sphere(x, -1.0), r"^l2_sphere: radius must be non-negative"),
        (lambda x: P.linf_ball(x, -1.0), r"^linf_ball: radius must be non-negative"),
        (lambda x: P.box(x, (1.0, 0.0)), "^lower must not exceed upper"),
        (lambda x: P.box(x, (jnp.zeros(3), jnp.array([1.0, -1.0, 1.0]))), "^lower must not"),
        (lambda x: P.box_section(x, (1.0, 0.0, jnp.ones(3), 0.5)), "^alpha must not exceed beta"),
        (lambda x: P.box_section(x, (0.0, 1.0, jnp.ones(3), 5.0)), "^c must lie in"),
        (lambda x: P.affine_set(x, (jnp.ones((2, 4)), jnp.ones(2))), "A of shape"),
        (lambda x: P.psd_cone(x), "square matrices"),
    ],
)
def test_bad_hyperparams_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call(jnp.array([0.5, -1.0, 2.0]))


def test_no_check_under_jit():
    """Traced invalid hyperparameters cannot raise: the result is NaN (the rule of _checks.py)."""
    x = jnp.array([0.5, -1.0, 2.0])
    assert np.all(np.isnan(jax.jit(P.l2_ball)(x, -1.0)))
    assert np.all(np.isnan(jax.jit(P.simplex)(x, -1.0)))
    assert np.all(np.isnan(jax.jit(P.box)(x, (1.0, 0.0))))
