"""Projections onto transportation and Birkhoff polytopes: values against independent references
(scipy's SLSQP for the Euclidean projection, a plain numpy Sinkhorn for the KL one), feasibility,
invariances, and implicit derivatives against central finite differences."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose, finite_difference_jvp, random_tangent
from scipy.optimize import minimize

from implicitdiff import BackwardSolveWarning, projections
from implicitdiff.projections import (
    birkhoff_polytope,
    kl_birkhoff_polytope,
    kl_transport_polytope,
    transport_polytope,
)

# A derivative whose linear system was not solved is a failure here, not a warning.
pytestmark = pytest.mark.filterwarnings(
    f"error::{BackwardSolveWarning.__module__}.BackwardSolveWarning"
)

TIGHT = 1e-13  # solver tolerance for comparisons and finite differences (one compilation each)

TRANSPORT = {"euclidean": transport_polytope, "kl": kl_transport_polytope}
BIRKHOFF = {"euclidean": birkhoff_polytope, "kl": kl_birkhoff_polytope}


def problem(seed: int, n: int = 4, m: int = 5, spread: float = 1.0):
    """Random X (n × m) and positive marginals a, b with equal totals (not 1)."""
    rng = np.random.default_rng(seed)
    x = spread * rng.normal(size=(n, m))
    a = rng.uniform(0.5, 1.5, size=n)
    b = rng.uniform(0.5, 1.5, size=m)
    b *= a.sum() / b.sum()
    return jnp.asarray(x), jnp.asarray(a), jnp.asarray(b)


# ---------------------------------------------------------------------------------------------
# Independent references.


def scipy_euclidean(x, a, b, zero=None) -> np.ndarray:
    """argmin ½‖P − X‖² over U(a, b) by SLSQP (the last column constraint is implied); with
    ``zero`` (a boolean mask), also Pᵢⱼ = 0 there (X's values there are then not read)."""
    x, a, b = (np.asarray(v, dtype=np.float64) for v in (x, a, b))
    zero = np.zeros(x.shape, bool) if zero is None else np.asarray(zero)
    x = np.where(zero, 0.0, x)
    n, m = x.shape
    rows = np.kron(np.eye(n), np.ones(m))  # (n, nm): row sums of P.ravel()
    cols = np.kron(np.ones(n), np.eye(m))[:-1]  # (m − 1, nm): column sums but the last
    constraints = np.vstack([rows, cols])
    rhs = np.concatenate([a, b[:-1]])
    result = minimize(
        lambda p: 0.5 * np.sum((p - x.ravel()) ** 2),
        np.full(n * m, a.sum() / (n * m)),
        jac=lambda p: p - x.ravel(),
        method="SLSQP",
        bounds=[(0.0, 0.0) if z else (0.0, None) for z in zero.ravel()],
        constraints=[
            {"type": "eq", "fun": lambda p: constraints @ p - rhs, "jac": lambda p: constraints}
        ],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert result.success, result.message
    return result.x.reshape(n, m)


def numpy_sinkhorn(x, a, b, iterations: int = 100_000) -> np.ndarray:
    """diag(u) exp(X) diag(v) by plain multiplicative Sinkhorn, run to rounding level."""
    k = np.exp(np.asarray(x, dtype=np.float64))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    v = np.ones(k.shape[1])
    for _ in range(iterations):
        u = a / (k @ v)
        v = b / (k.T @ u)
        p = u[:, None] * k * v[None, :]
        if np.max(np.abs(p.sum(axis=1) - a)) < 1e-15:
            break
    return p


# ---------------------------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_euclidean_matches_scipy(seed):
    x, a, b = problem(seed)
    p = transport_polytope(x, (a, b), tol=TIGHT)
    expected = scipy_euclidean(x, a, b)
    # The case is not the trivial one where P ≥ 0 is inactive.
    assert np.sum(expected < 1e-9) >= 3
    np.testing.assert_allclose(p, expected, atol=1e-7)


def test_birkhoff_matches_scipy():
    x, _, _ = problem(3, n=5, m=5)
    ones = np.ones(5)
    expected = scipy_euclidean(x, ones, ones)
    assert np.sum(expected < 1e-9) >= 2
    np.testing.assert_allclose(birkhoff_polytope(x, tol=TIGHT), expected, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_matches_numpy_sinkhorn(seed):
    x, a, b = problem(seed, spread=2.0)
    p = kl_transport_polytope(x, (a, b), tol=TIGHT)
    np.testing.assert_allclose(p, numpy_sinkhorn(x, a, b), rtol=1e-9, atol=1e-12)
    x, _, _ = problem(seed + 10, n=5, m=5, spread=2.0)
    ones = np.ones(5)
    np.testing.assert_allclose(
        kl_birkhoff_polytope(x, tol=TIGHT), numpy_sinkhorn(x, ones, ones), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
@pytest.mark.parametrize("tol", [None, 1e-4])
def test_marginals_met_to_tolerance(kind, tol):
    x, a, b = problem(4, spread=3.0)
    bound = (1e-10 if tol is None else tol) * max(a.max(), b.max())
    p = TRANSPORT[kind](x, (a, b), tol=tol)
    assert np.all(p >= 0)
    assert np.max(np.abs(p.sum(axis=1) - a)) <= bound
    assert np.max(np.abs(p.sum(axis=0) - b)) <= bound
    x, _, _ = problem(5, n=5, m=5, spread=3.0)
    p = BIRKHOFF[kind](x, tol=tol)
    bound = 1e-10 if tol is None else tol
    assert np.all(p >= 0)
    assert np.max(np.abs(p.sum(axis=1) - 1)) <= bound
    assert np.max(np.abs(p.sum(axis=0) - 1)) <= bound
    if tol is not None and kind == "kl":  # Sinkhorn stops early: tol is what stops it
        assert np.max(np.abs(p.sum(axis=1) - 1)) > 1e-9


def test_projection_of_a_point_of_the_polytope_is_itself():
    rng = np.random.default_rng(6)
    # A doubly stochastic matrix with zeros: a mixture of two permutation matrices.
    p = 0.3 * np.eye(5) + 0.7 * np.eye(5)[rng.permutation(5)]
    np.testing.assert_allclose(birkhoff_polytope(p, tol=TIGHT), p, atol=1e-12)
    full = 0.5 * p + 0.1  # doubly stochastic with full support: the KL projection of its log
    np.testing.assert_allclose(kl_birkhoff_polytope(np.log(full), tol=TIGHT), full, atol=1e-12)
    x, a, b = problem(7)
    q = np.asarray(kl_transport_polytope(x, (a, b), tol=TIGHT))
    np.testing.assert_allclose(transport_polytope(q, (a, b), tol=TIGHT), q, atol=1e-12)
    np.testing.assert_allclose(kl_transport_polytope(np.log(q), (a, b), tol=TIGHT), q, atol=1e-12)


def test_kl_is_invariant_to_row_and_column_shifts():
    x, a, b = problem(8)
    shifted = x + jnp.arange(4.0)[:, None] - 2.0 * jnp.arange(5.0)[None, :]
    assert_tree_allclose(
        kl_transport_polytope(shifted, (a, b), tol=TIGHT),
        kl_transport_polytope(x, (a, b), tol=TIGHT),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_unequal_totals_project_the_marginals_first(kind):
    x, a, b = problem(9)
    b_off = b * 1.2
    s = (a.sum() - b_off.sum()) / 9
    p = TRANSPORT[kind](x, (a, b_off), tol=TIGHT)
    assert_tree_allclose(p, TRANSPORT[kind](x, (a - s, b_off + s), tol=TIGHT), atol=1e-11)
    np.testing.assert_allclose(p.sum(axis=1), a - s, atol=1e-11)


def test_float32():
    x64, a64, b64 = problem(10)
    x, a, b = (v.astype(jnp.float32) for v in (x64, a64, b64))
    for fun in (transport_polytope, kl_transport_polytope):
        p = fun(x, (a, b))
        assert p.dtype == jnp.float32
        np.testing.assert_allclose(p, fun(x64, (a64, b64)), atol=1e-4)
        np.testing.assert_allclose(p.sum(axis=1), a, atol=1e-4)
        np.testing.assert_allclose(p.sum(axis=0), b, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="square"):
        birkhoff_polytope(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="shapes"):
        transport_polytope(jnp.ones((2, 3)), (jnp.ones(3), jnp.ones(2)))
    with pytest.raises(TypeError, match="pair"):
        kl_transport_polytope(jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match="tol"):
        kl_birkhoff_polytope(jnp.ones((2, 2)), tol=-1.0)


# ---------------------------------------------------------------------------------------------
# Derivatives: jvp and vjp against central finite differences. Each function is differentiated
# as a function of (X, (a, b)) with tight solves, in one jitted program per kind and shape that
# gives P, J t and Jᵀ w from one linearization: every test of that shape shares it.


def tight(kind):
    return lambda x, ab: TRANSPORT[kind](x, ab, tol=TIGHT)


def tight_birkhoff(kind):
    return lambda x: BIRKHOFF[kind](x, tol=TIGHT)


def _linearized(fun, primals, tangents, cotangent):
    """fun(primals), J t (forward mode) and Jᵀ w (its transpose: reverse mode)."""
    out, jvp = jax.linearize(fun, *primals)
    return out, jvp(*tangents), jax.linear_transpose(jvp, *primals)(cotangent)


@functools.partial(jax.jit, static_argnames="kind")
def transport_derivatives(kind, primals, tangents, cotangent):
    """P(X, (a, b)), J t and Jᵀ w = (w̄_X, (w̄_a, w̄_b)) of the tight transport projection."""
    return _linearized(tight(kind), primals, tangents, cotangent)


@functools.partial(jax.jit, static_argnames="kind")
def birkhoff_derivatives(kind, primals, tangents, cotangent):
    """P(X), J t and Jᵀ w = (w̄_X,) of the tight Birkhoff projection."""
    return _linearized(tight_birkhoff(kind), primals, tangents, cotangent)


def check_jvp_and_vjp(fun, derivatives, primals, tangents, cotangent, rtol=1e-5, atol=1e-6):
    """J t (forward mode) and ⟨w, J t⟩ = ⟨Jᵀw, t⟩ (reverse mode), both by ``derivatives``,
    against J t by central differences of ``fun``."""
    expected = finite_difference_jvp(lambda p: fun(*p), primals, tangents)
    _, jvp_out, vjp_out = derivatives(primals, tangents, cotangent)
    assert_tree_allclose(jvp_out, expected, rtol=rtol, atol=atol)
    lhs = float(jnp.vdot(cotangent, expected))
    rhs = sum(
        float(jnp.vdot(u, v))
        for u, v in zip(
            jax.tree_util.tree_leaves(vjp_out), jax.tree_util.tree_leaves(tangents), strict=True
        )
    )
    np.testing.assert_allclose(rhs, lhs, rtol=rtol, atol=atol)
    assert float(jnp.max(jnp.abs(expected))) > 1e-2  # not a derivative that is trivially zero


def transport_tangents(x, a, b, which):
    dx = random_tangent(x, seed=1)
    da, db = random_tangent((a, b), seed=2)
    if which != "marginals, totals changed":  # stay on {⟨a, 1⟩ = ⟨b, 1⟩}
        db = db - (db.sum() - da.sum()) / b.shape[0]
    if which == "x":
        da, db = jnp.zeros_like(a), jnp.zeros_like(b)
    elif which.startswith("marginals"):
        dx = jnp.zeros_like(x)
    return dx, (da, db)


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
@pytest.mark.parametrize("which", ["x", "marginals", "all", "marginals, totals changed"])
def test_derivative(kind, which):
    x, a, b = problem(11)
    tangents = transport_tangents(x, a, b, which)
    derivatives = functools.partial(transport_derivatives, kind)
    check_jvp_and_vjp(tight(kind), derivatives, (x, (a, b)), tangents, random_tangent(x, seed=3))


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_derivative_birkhoff(kind):
    x, _, _ = problem(12, n=5, m=5)
    t, w = random_tangent(x, seed=4), random_tangent(x, seed=5)
    derivatives = functools.partial(birkhoff_derivatives, kind)
    check_jvp_and_vjp(tight_birkhoff(kind), derivatives, (x,), (t,), w)


def test_derivative_with_a_disconnected_support():
    # A wide spread splits the Birkhoff projection into blocks (here blocks of one entry, equal
    # to 1): the dual Hessian is singular beyond the direction that the gauge term fixes.
    x, _, _ = problem(2, n=5, m=5, spread=3.0)
    p = birkhoff_polytope(x, tol=TIGHT)
    assert np.sum(np.isclose(p, 1.0)) >= 1
    t, w = random_tangent(x, seed=6), random_tangent(x, seed=7)
    derivatives = functools.partial(birkhoff_derivatives, "euclidean")
    check_jvp_and_vjp(tight_birkhoff("euclidean"), derivatives, (x,), (t,), w)


# ---------------------------------------------------------------------------------------------
# Transformations.


@functools.partial(jax.jit, static_argnames="kind")
def _value_and_grad_under_jit(kind, x, a, b, w):
    def loss(x, a, b):
        p = tight(kind)(x, (a, b))
        return jnp.vdot(w, p), p

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, a, b)


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_jit(kind):
    x, a, b = problem(11)
    w = random_tangent(x, seed=3)
    (value, p), grads = _value_and_grad_under_jit(kind, x, a, b, w)
    out = tight(kind)(x, (a, b))  # outside jit: concrete marginals
    np.testing.assert_allclose(value, jnp.vdot(w, out), rtol=1e-12)
    tangents = transport_tangents(x, a, b, "all")
    _, _, (gx, (ga, gb)) = transport_derivatives(kind, (x, (a, b)), tangents, w)
    assert_tree_allclose(grads, (gx, ga, gb), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(p, out, rtol=1e-12, atol=1e-14)


@functools.partial(jax.jit, static_argnames="kind")
def _batched_jvp(kind, xs, ts):
    return jax.jvp(jax.vmap(tight_birkhoff(kind)), (xs,), (ts,))


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_vmap(kind):
    # Spreads 1, 2, 3: the last gives a disconnected support for the Euclidean projection.
    xs = jnp.stack([problem(seed, n=5, m=5, spread=1.0 + seed)[0] for seed in range(3)])
    ts = random_tangent(xs, seed=8)
    batched, batched_t = _batched_jvp(kind, xs, ts)
    for x, t, p, pt in zip(xs, ts, batched, batched_t, strict=True):
        single, single_t, _ = birkhoff_derivatives(kind, (x,), (t,), t)
        np.testing.assert_allclose(p, single, atol=1e-11)
        np.testing.assert_allclose(pt, single_t, atol=1e-9)


@pytest.mark.parametrize("projection", [transport_polytope, kl_transport_polytope])
def test_transport_family_empty_sets(projection):
    """Marginals with a negative entry, or whose balanced ā = a − s 1 has one (U(a, b) empty):
    ValueError naming the marginals when concrete; an all-NaN P, and NaN derivatives (forward
    and reverse mode), when traced (jit, vmap, derivatives)."""
    kind = "euclidean" if projection is transport_polytope else "kl"
    x, _, _ = problem(13)
    cases = [
        (jnp.asarray([-0.2, 1.2, 0.5, 0.5]), jnp.asarray([0.4, 0.4, 0.2, 0.5, 0.5])),  # a < 0
        (jnp.asarray([0.5, 0.5, 0.5, 0.5]), jnp.asarray([1.2, -0.4, 0.2, 0.5, 0.5])),  # b < 0
        # ā = a − 0.723 negative
        (jnp.asarray([0.01, 5.0, 1.0, 1.0]), jnp.asarray([0.1, 0.1, 0.1, 0.1, 0.1])),
    ]
    for a, b in cases:
        with pytest.raises(ValueError, match="marginals"):
            projection(x, (a, b))
        # Under jit: P, J t and Jᵀ w (finite t and w).
        tangents = transport_tangents(x, a, b, "all")
        p, jvp_out, vjp_out = transport_derivatives(kind, (x, (a, b)), tangents, x)
        assert np.all(np.isnan(p)) and np.all(np.isnan(jvp_out))
        assert all(np.all(np.isnan(g)) for g in jax.tree_util.tree_leaves(vjp_out))
        stacked = jax.vmap(projection, in_axes=(None, 0))(x, (jnp.stack([a, a]), jnp.stack([b, b])))
        assert np.all(np.isnan(stacked))


# Family: every transport projection at X of huge magnitude (issue 12, item 4). The shapes are
# those of the other tests (4 × 5, and 5 × 5 for the Birkhoff polytope), so the programs are
# shared.
_HUGE_X = np.array(
    [
        [0.5, -0.2, 0.9, 0.1, -0.4],
        [0.1, 0.3, -0.6, 0.7, 0.2],
        [0.8, 0.4, 0.2, -0.3, 0.6],
        [-0.1, 0.9, 0.3, 0.5, -0.7],
        [0.6, -0.5, 0.4, 0.2, 0.0],
    ]
)
_HUGE_A = np.array([0.2, 0.3, 0.5, 0.4])
_HUGE_B = np.array([0.15, 0.35, 0.3, 0.2, 0.4])


def _lp_vertex(x, a, b):
    """argmax ⟨X, P⟩ over U(a, b) (SciPy's HiGHS), the limit of both projections."""
    from scipy.optimize import linprog

    n, m = x.shape
    eq = np.zeros((n + m, n * m))
    for i in range(n):
        eq[i, i * m : (i + 1) * m] = 1.0
    for j in range(m):
        eq[n + j, j::m] = 1.0
    res = linprog(-x.ravel(), A_eq=eq, b_eq=np.concatenate([a, b]), bounds=(0, None))
    return res.x.reshape(n, m)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(jnp.float64, 2.0**100), (jnp.float32, 2.0**100), (jnp.float32, 2.0**23)],
)
@pytest.mark.parametrize(
    "name", ["transport_polytope", "kl_transport_polytope", "birkhoff_polytope", "kl_birkhoff"]
)
def test_transport_family_huge_inputs(name, dtype, scale):
    """Every transport projection at X of magnitude 1e30 (float64, float32) and 1e7 (float32):
    the vertex of the linear program max ⟨X, P⟩ over U(a, b) to rounding (both projections
    reach it exactly at such a spread), finite; derivative 0 in X (a vertex is locally
    constant) and, in a, the derivative of the vertex (central differences in float64). (The
    derivatives with tight solves, as the other derivative tests.)"""
    square = name.startswith("birkhoff") or name == "kl_birkhoff"
    fun = {
        "transport_polytope": projections.transport_polytope,
        "kl_transport_polytope": projections.kl_transport_polytope,
        "birkhoff_polytope": projections.birkhoff_polytope,
        "kl_birkhoff": projections.kl_birkhoff_polytope,
    }[name]
    kind = "kl" if name.startswith("kl") else "euclidean"
    x0 = _HUGE_X if square else _HUGE_X[:4]
    a = np.ones(5) if square else _HUGE_A
    b = np.ones(5) if square else _HUGE_B
    x = jnp.asarray(x0, dtype) * scale
    ref = _lp_vertex(np.asarray(x0, np.float64), a, b)
    got = fun(x) if square else fun(x, (jnp.asarray(a, dtype), jnp.asarray(b, dtype)))
    eps = np.finfo(dtype).eps
    assert got.dtype == dtype
    atol = 16 * eps if dtype == jnp.float64 else 1e-4  # float32: the solvers' default tol
    if name == "kl_birkhoff" and dtype == jnp.float64:
        # Here the top cells of X (those within 2^34 of each row's largest) hold more than the
        # vertex, and the KL projection onto them has no interior solution: its potentials
        # diverge as the extra cells' mass tends to 0. Newton's method follows them until the
        # marginals are met to tol (1e-10), leaving ~1e-10 on the extra cells.
        atol = 1e-9
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, atol=atol)
    if dtype != jnp.float64:
        return
    if square:
        _, _, (grad_x,) = birkhoff_derivatives(
            kind, (x,), (jnp.zeros_like(x),), jnp.asarray(ref + 1.0)
        )
        np.testing.assert_allclose(np.asarray(grad_x), 0.0, atol=1e-12)
        return
    # Along a direction keeping the totals equal, the vertex moves linearly (same support).
    da = np.array([1.0, -1.0, 0.0, 0.0])
    db = np.array([0.5, -0.5, 0.0, 0.0, 0.0])
    w = jnp.asarray(np.arange(20.0).reshape(4, 5))
    tangents = (jnp.zeros_like(x), (jnp.asarray(da), jnp.asarray(db)))
    _, jvp, (grad_x, _) = transport_derivatives(
        kind, (x, (jnp.asarray(a), jnp.asarray(b))), tangents, w
    )
    np.testing.assert_allclose(np.asarray(grad_x), 0.0, atol=1e-9)
    h = 1e-4
    fd = (_lp_vertex(x0, a + h * da, b + h * db) - _lp_vertex(x0, a - h * da, b - h * db)) / (2 * h)
    np.testing.assert_allclose(np.asarray(jvp), fd, atol=1e-7)


# A wide spread: the first-order solvers slow down (Sinkhorn's rate tends to 1; L-BFGS stalls on
# the piecewise-quadratic Euclidean dual) and Newton's method finishes.


def _clarabel(kind, x, a, b):
    """The projection by cvxpy's Clarabel (an interior-point method, exact to about 1e-8)."""
    cp = pytest.importorskip("cvxpy")
    x, a, b = (np.asarray(v, np.float64) for v in (x, a, b))
    p = cp.Variable(x.shape, nonneg=True)
    if kind == "euclidean":
        objective = cp.sum_squares(p) - 2 * cp.sum(cp.multiply(x, p))  # ‖P − X‖² − ‖X‖²
    else:  # KL(P ‖ exp X) = Σ P log P − P − ⟨X, P⟩ + const; −P sums to a constant on U(a, b)
        objective = -cp.sum(cp.entr(p)) - cp.sum(cp.multiply(x - x.max(), p))
    constraints = [cp.sum(p, axis=1) == a, cp.sum(p, axis=0) == b]
    tight_settings = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
    cp.Problem(cp.Minimize(objective), constraints).solve(solver="CLARABEL", **tight_settings)
    return p.value


@pytest.mark.parametrize("spread", [100.0, 1e3, 1e4])
@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_transport_family_wide_spread(kind, spread):
    """X = spread · N(0, 1), every transport projection: the marginals met to tol on 30 × 40
    (and 30 × 30 Birkhoff), where Sinkhorn's 1000 iterations left rows 2e-2 off at spread 100
    and L-BFGS's 0.1 off at 1e4, both silently; 8 × 10 against Clarabel; J t and Jᵀ w of the
    tight projection against central differences."""
    x, a, b = problem(21, n=30, m=40, spread=spread)
    for p, (row, col) in [
        (TRANSPORT[kind](x, (a, b)), (a, b)),
        (BIRKHOFF[kind](x[:, :30]), (jnp.ones(30), jnp.ones(30))),
    ]:
        assert bool(jnp.all(p >= 0))
        np.testing.assert_allclose(p.sum(axis=1), row, rtol=0, atol=4e-10)
        np.testing.assert_allclose(p.sum(axis=0), col, rtol=0, atol=4e-10)
    x, a, b = problem(22, n=8, m=10, spread=spread)
    np.testing.assert_allclose(TRANSPORT[kind](x, (a, b)), _clarabel(kind, x, a, b), atol=1e-6)
    tangents = transport_tangents(x, a, b, "all")
    derivatives = functools.partial(transport_derivatives, kind)
    check_jvp_and_vjp(tight(kind), derivatives, (x, (a, b)), tangents, random_tangent(x, seed=3))


# Marginals with zero entries (a histogram with empty bins): the KL potential of such a row is
# −∞ (log 0); the Euclidean one is free (a singular direction).


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_transport_family_zero_marginals(kind):
    """a and b with zero entries: P is 0 on those rows and columns and the projection of the
    rest (against SLSQP with those cells fixed at 0, NumPy Sinkhorn on the rest); J t in X
    against central differences; in (a, b) along a direction that raises the zero entries,
    against one-sided differences (Richardson: the projection stops at a ≥ 0), in forward and
    reverse mode. KL gave an all-NaN P; the Euclidean reverse-mode derivative in (a, b) was
    0.88 where it is 0.45 (the free potential of an empty row), its forward one NaN."""
    rng = np.random.default_rng(31)
    x = jnp.asarray(rng.normal(size=(5, 6)) * (0.05 if kind == "euclidean" else 1.0))
    a = jnp.array([0.3, 0.0, 0.4, 0.3, 0.2])
    b = jnp.array([0.25, 0.2, 0.0, 0.3, 0.25, 0.2])
    zero = (a == 0)[:, None] | (b == 0)[None, :]
    p = tight(kind)(x, (a, b))
    assert bool(jnp.all(p[zero] == 0))
    if kind == "euclidean":
        expected = scipy_euclidean(x, a, b, zero=zero)
    else:
        rows, cols = np.flatnonzero(a), np.flatnonzero(b)
        expected = np.zeros(x.shape)
        expected[np.ix_(rows, cols)] = numpy_sinkhorn(x[np.ix_(rows, cols)], a[rows], b[cols])
    np.testing.assert_allclose(p, expected, atol=1e-8 if kind == "euclidean" else 1e-12)
    dx = random_tangent(x, seed=8)
    expected_dx = finite_difference_jvp(lambda x: tight(kind)(x, (a, b)), x, dx)
    _, jvp_x = jax.jvp(lambda x: tight(kind)(x, (a, b)), (x,), (dx,))
    np.testing.assert_allclose(jvp_x, expected_dx, atol=1e-7)
    da = jnp.array([0.1, 0.2, -0.1, 0.0, 0.05])
    db = jnp.array([0.05, 0.0, 0.1, -0.05, 0.1, 0.05])  # equal totals
    h = 1e-6

    def moved(t):
        return tight(kind)(x, (a + t * da, b + t * db))

    one_sided = 2 * (moved(h) - p) / h - (moved(2 * h) - p) / (2 * h)
    assert float(jnp.max(jnp.abs(one_sided))) > 1e-2
    _, jvp_ab = jax.jvp(lambda a, b: tight(kind)(x, (a, b)), (a, b), (da, db))
    np.testing.assert_allclose(jvp_ab, one_sided, atol=1e-7)
    w = random_tangent(x, seed=9)
    grad_a, grad_b = jax.grad(lambda a, b: jnp.vdot(w, tight(kind)(x, (a, b))), (0, 1))(a, b)
    lhs = float(jnp.vdot(grad_a, da) + jnp.vdot(grad_b, db))
    np.testing.assert_allclose(lhs, float(jnp.vdot(w, one_sided)), atol=1e-7)


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_transport_family_zero_marginals_with_totals_apart_by_rounding(kind):
    """Histograms with empty bins normalized apart: ⟨a, 1⟩ − ⟨b, 1⟩ = 5.6e-17. Balancing moved
    the zero entry of a to −1.1e-17: "the marginals must be non-negative" (ValueError; NaN under
    jit). Totals equal to rounding are now taken as equal."""
    a, b = jnp.array([0.1, 0.2, 0.0]), jnp.array([0.3, 0.0])
    assert float(jnp.sum(a) - jnp.sum(b)) != 0.0
    x = jnp.asarray(np.random.default_rng(32).normal(size=(3, 2)))
    expected = np.array([[0.1, 0.0], [0.2, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(TRANSPORT[kind](x, (a, b)), expected, atol=1e-15)
    jitted = jax.jit(lambda x, a, b: TRANSPORT[kind](x, (a, b)))(x, a, b)
    np.testing.assert_allclose(jitted, expected, atol=1e-15)


# Masked cells and shifted rows: the projections are invariant to X + r1ᵀ + 1cᵀ, and a cell far
# below the rest carries no mass when the others can carry the marginals.
_MASK = np.zeros((4, 5), bool)
_MASK[0, 1] = _MASK[1, 1] = _MASK[2, 3] = _MASK[3, 0] = True


def _masked_reference(kind, x, a, b):
    if kind == "euclidean":
        return scipy_euclidean(x, a, b, zero=_MASK)
    return numpy_sinkhorn(np.where(_MASK, -np.inf, np.asarray(x)), a, b)


@pytest.mark.parametrize("mask_value", [-np.inf, -1e300, -1e12])
@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_transport_family_masked_cells(kind, mask_value):
    """Cells set to −∞ (a mask) or to a finite value far below the rest (−1e12, −1e300) carry
    no mass, and the others are the projection onto U(a, b) with those cells at 0 (SLSQP with
    them bounded to 0; Sinkhorn with exp(−∞) = 0). It was silently wrong: −∞ gave P = 0, every
    marginal missed; −1e12 made the spread of X wide and gave the limit of tX (t → ∞), 0.23
    off. Derivatives: in X on the free cells, against central differences, and 0 on the masked
    ones; the jacobian of the −∞ case is finite."""
    x, a, b = problem(5)
    masked = jnp.where(jnp.asarray(_MASK), mask_value, x)
    p = TRANSPORT[kind](masked, (a, b), tol=TIGHT)
    np.testing.assert_allclose(p, _masked_reference(kind, x, a, b), atol=1e-7)
    assert np.all(np.asarray(p)[_MASK] == 0)
    tangent = jnp.where(jnp.asarray(_MASK), 0.0, random_tangent(x, seed=3))
    expected = finite_difference_jvp(lambda v: tight(kind)(v, (a, b)), masked, tangent)
    _, jvp, (grad_x, _) = transport_derivatives(
        kind, (masked, (a, b)), (tangent, (jnp.zeros_like(a), jnp.zeros_like(b))), x
    )
    np.testing.assert_allclose(jvp, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(grad_x))
    np.testing.assert_array_equal(np.asarray(grad_x)[_MASK], 0.0)


@pytest.mark.parametrize("shift", [-1e12, 1e12])
@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_transport_family_shifted_rows_and_columns(kind, shift):
    """X + r1ᵀ + 1cᵀ with one row and one column shifted by ±1e12 projects as X does, to the
    rounding of the shifted input (1e12 · eps ≈ 1e-4 on its entries): it gave the limit of tX
    (t → ∞), 0.44 off. Birkhoff too, and a single entry 1e12 above the rest there (X₀₀: the
    rest of P is the projection of the other block) gives what 1e4 gives."""
    x, a, b = problem(6)
    shifted = x.at[1, :].add(shift).at[:, 2].add(shift)
    np.testing.assert_allclose(
        TRANSPORT[kind](shifted, (a, b)), TRANSPORT[kind](x, (a, b)), atol=1e-3
    )
    square, _, _ = problem(7, n=4, m=4)
    np.testing.assert_allclose(
        BIRKHOFF[kind](square.at[0, :].add(shift)), BIRKHOFF[kind](square), atol=1e-3
    )
    if kind == "euclidean":
        np.testing.assert_allclose(
            birkhoff_polytope(square.at[0, 0].set(abs(shift))),
            birkhoff_polytope(square.at[0, 0].set(1e4)),
            atol=1e-9,
        )


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_transport_family_mass_forced_onto_minus_infinity_or_plus_infinity_is_nan(kind):
    """A row of −∞ must still carry its marginal (no finite P is the limit) and a +∞ entry
    would take unbounded mass: both give NaN, flagged (−∞ gave P = 0, +∞ gave P = ∞)."""
    x, a, b = problem(8)
    assert np.all(np.isnan(TRANSPORT[kind](x.at[2, :].set(-jnp.inf), (a, b))))
    assert np.all(np.isnan(TRANSPORT[kind](x.at[2, 3].set(jnp.inf), (a, b))))
