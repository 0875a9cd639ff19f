"""QP solvers: EqualityConstrainedQP, BoxCDQP, OSQP.

Solutions against dense KKT solves, problems built around a known strictly complementary solution,
and SciPy; derivatives against closed forms and central finite differences of the solvers
themselves; OSQP's statuses on infeasible problems; jit, vmap, no recompilation; bad options.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import assert_tree_allclose, compilations, finite_difference_jvp, random_tangent

from implicitdiff.solvers import OSQP, BoxCDQP, BoxOSQP, EqualityConstrainedQP, KKTSolution


def spd(rng, n):
    M = rng.normal(size=(n, n))
    return M @ M.T / n + np.eye(n)


def kkt_closed_form(Q, c, A, b):
    """(x, ν) of min ½xᵀQx + cᵀx s.t. Ax = b by a dense solve: a closed form to differentiate."""
    p = A.shape[0]
    K = jnp.block([[0.5 * (Q + Q.T), A.T], [A, jnp.zeros((p, p))]])
    z = jnp.linalg.solve(K, jnp.concatenate([-c, b]))
    return z[: c.shape[0]], z[c.shape[0] :]


# ---------------------------------------------------------------------------------------------
# Problems.

RNG = np.random.default_rng(0)

# Equality-constrained: n = 6, two equalities.
EQ = {
    "Q": jnp.asarray(spd(RNG, 6)),
    "c": jnp.asarray(RNG.normal(size=6)),
    "A": jnp.asarray(RNG.normal(size=(2, 6))),
    "b": jnp.asarray(RNG.normal(size=2)),
}

# General, around a known solution: n = 5, one equality, four inequalities of which the first two
# are active with λ = (1, 0.7) and the others inactive with slacks (0.5, 0.8): strictly
# complementary by construction, and the active gradients (3 of them in ℝ⁵) are independent.
_Q, _A, _G = spd(RNG, 5), RNG.normal(size=(1, 5)), RNG.normal(size=(4, 5))
X_STAR, NU_STAR = RNG.normal(size=5), RNG.normal(size=1)
LAM_STAR, SLACK = np.array([1.0, 0.7, 0.0, 0.0]), np.array([0.0, 0.0, 0.5, 0.8])
GEN = {
    "Q": jnp.asarray(_Q),
    "c": jnp.asarray(-(_Q @ X_STAR + _A.T @ NU_STAR + _G.T @ LAM_STAR)),
    "A": jnp.asarray(_A),
    "b": jnp.asarray(_A @ X_STAR),
    "G": jnp.asarray(_G),
    "h": jnp.asarray(_G @ X_STAR + SLACK),
}
GEN_NAMES = tuple(GEN)

# Box, around a known solution: coordinates 0, 3 at the lower bound, 1, 4 at the upper one, 2 and
# 5 free; the gradient Qx + c is (0.7, −0.9, 0, 1.1, −0.5, 0): strictly complementary.
_QB = spd(RNG, 6)
LOWER, UPPER = RNG.uniform(-1.0, -0.2, size=6), RNG.uniform(0.2, 1.0, size=6)
BOX_STAR = np.array([LOWER[0], UPPER[1], 0.1, LOWER[3], UPPER[4], -0.15])
BOX_GRAD = np.array([0.7, -0.9, 0.0, 1.1, -0.5, 0.0])
BOX = {
    "Q": jnp.asarray(_QB),
    "c": jnp.asarray(BOX_GRAD - _QB @ BOX_STAR),
    "l": jnp.asarray(LOWER),
    "u": jnp.asarray(UPPER),
}
FREE, AT_LOWER, AT_UPPER = np.array([2, 5]), np.array([0, 3]), np.array([1, 4])


def box_closed_form(Q, c, l, u):
    """The box QP's solution for the known active set: x_F = −Q_FF⁻¹(c_F + Q_FA x_A)."""
    Q = 0.5 * (Q + Q.T)
    x = jnp.zeros(6).at[AT_LOWER].set(l[AT_LOWER]).at[AT_UPPER].set(u[AT_UPPER])
    active = np.r_[AT_LOWER, AT_UPPER]
    rhs = c[FREE] + Q[np.ix_(FREE, active)] @ x[active]
    return x.at[FREE].set(-jnp.linalg.solve(Q[np.ix_(FREE, FREE)], rhs))


def box_as_inequalities(l, u):
    """(G, h) for l ≤ x ≤ u written as Gx ≤ h."""
    n = l.shape[0]
    return jnp.concatenate([jnp.eye(n), -jnp.eye(n)]), jnp.concatenate([u, -l])


EQP = EqualityConstrainedQP()
BOXCD = BoxCDQP(tol=1e-12, maxiter=2000)
OSQP_TIGHT = OSQP(tol=1e-9)


def run_general(solver, Q, c, A, b, G, h, init_params=None):
    return solver.run(init_params, (Q, c), (A, b), (G, h))


# ---------------------------------------------------------------------------------------------
# Solutions.


@pytest.mark.parametrize("solver", [EQP, OSQP_TIGHT], ids=["EqualityConstrainedQP", "OSQP"])
def test_equality_qp_matches_the_kkt_solve(solver):
    params, state = solver.run(None, (EQ["Q"], EQ["c"]), (EQ["A"], EQ["b"]))
    assert isinstance(params, KKTSolution)  # a named tuple, as JAXopt's
    x, nu, lam = params.primal, params.dual_eq, params.dual_ineq
    want_x, want_nu = kkt_closed_form(EQ["Q"], EQ["c"], EQ["A"], EQ["b"])
    assert lam is None and bool(state.converged) and state.error <= solver.tol
    assert_tree_allclose((x, nu), (want_x, want_nu), rtol=1e-9, atol=1e-11)
    if isinstance(solver, EqualityConstrainedQP):
        assert int(state.iter_num) == 1  # one direct solve, no refinement needed
    else:
        assert int(state.status) == 0


def test_equality_qp_warm_start_as_a_plain_tuple_refines_from_it():
    # A rough start (x off by 0.1, no ν): the first refinement step lands on the solution.
    want_x, want_nu = kkt_closed_form(EQ["Q"], EQ["c"], EQ["A"], EQ["b"])
    (x, nu, _), state = EQP.run((want_x + 0.1, None, None), (EQ["Q"], EQ["c"]), (EQ["A"], EQ["b"]))
    assert int(state.iter_num) == 1 and bool(state.converged)
    assert_tree_allclose((x, nu), (want_x, want_nu), rtol=1e-9, atol=1e-11)


def test_equality_qp_without_constraints_solves_qx_equals_minus_c():
    (x, nu, lam), state = EQP.run(None, (EQ["Q"], EQ["c"]))
    assert nu is None and lam is None and bool(state.converged)
    np.testing.assert_allclose(x, np.linalg.solve(EQ["Q"], -EQ["c"]), rtol=1e-10)


def test_equality_qp_matrix_free_matches_dense_with_derivatives():
    # Q = diag(d) + UUᵀ given by its factors; A by a matvec: solved by GMRES on the KKT system.
    d, U = jnp.asarray(RNG.uniform(1.0, 2.0, size=6)), jnp.asarray(RNG.normal(size=(6, 2)))
    solver = EqualityConstrainedQP(
        matvec_Q=lambda QP, x: QP[0] * x + QP[1] @ (QP[1].T @ x),
        matvec_A=lambda A, x: A @ x,
    )
    w = jnp.asarray(RNG.normal(size=6))

    def loss(d, U, c, A, b):
        (x, nu, _), _ = solver.run(None, ((d, U), c), (A, b))
        return w @ x + jnp.sum(nu)

    def loss_dense(d, U, c, A, b):
        x, nu = kkt_closed_form(jnp.diag(d) + U @ U.T, c, A, b)
        return w @ x + jnp.sum(nu)

    args = (d, U, EQ["c"], EQ["A"], EQ["b"])
    np.testing.assert_allclose(loss(*args), loss_dense(*args), rtol=1e-9)
    got = jax.grad(loss, argnums=range(5))(*args)
    assert_tree_allclose(got, jax.grad(loss_dense, argnums=range(5))(*args), rtol=1e-7, atol=1e-9)


def test_box_cd_matches_the_known_solution_and_lbfgsb():
    x, state = BOXCD.run(None, (BOX["Q"], BOX["c"]), (BOX["l"], BOX["u"]))
    assert bool(state.converged) and state.error <= 1e-12
    np.testing.assert_allclose(x, box_closed_form(**BOX), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x[np.r_[AT_LOWER, AT_UPPER]], BOX_STAR[np.r_[AT_LOWER, AT_UPPER]])
    Q, c = np.asarray(BOX["Q"]), np.asarray(BOX["c"])
    ref = scipy.optimize.minimize(
        lambda v: (0.5 * v @ Q @ v + c @ v, Q @ v + c),
        np.zeros(6),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(LOWER, UPPER, strict=True)),
        options=dict(ftol=1e-15, gtol=1e-12, maxiter=1000),
    )
    np.testing.assert_allclose(x, ref.x, atol=1e-6)


def test_box_cd_with_scalar_and_infinite_bounds_is_nnls_like():
    # l = 0, u = +∞ (scalars, broadcast): the non-negative QP; KKT checked directly.
    Q, c = BOX["Q"], BOX["c"]
    x, state = BOXCD.run(None, (Q, c), (0.0, jnp.inf))
    grad = np.asarray(Q @ x + c)
    assert bool(state.converged) and np.all(x >= 0)
    np.testing.assert_allclose(np.minimum(x, grad), 0.0, atol=1e-10)  # x ≥ 0, g ≥ 0, x ∘ g = 0
    assert np.any(x > 1e-3) and np.any(grad > 1e-3)  # both parts of the active set non-empty


def test_osqp_on_the_box_qp_gives_primal_and_duals():
    G, h = box_as_inequalities(BOX["l"], BOX["u"])
    (x, nu, lam), state = OSQP_TIGHT.run(None, (BOX["Q"], BOX["c"]), None, (G, h))
    assert nu is None and int(state.status) == 0 and bool(state.converged)
    np.testing.assert_allclose(x, BOX_STAR, rtol=1e-10, atol=1e-12)
    # λ on x ≤ u is −g where x is at u, on −x ≤ −l it is g where x is at l, 0 elsewhere.
    want = np.zeros(12)
    want[AT_UPPER], want[6 + AT_LOWER] = -BOX_GRAD[AT_UPPER], BOX_GRAD[AT_LOWER]
    np.testing.assert_allclose(lam, want, atol=1e-10)


def test_osqp_general_qp_matches_the_known_solution():
    (x, nu, lam), state = run_general(OSQP_TIGHT, **GEN)
    assert int(state.status) == 0 and bool(state.converged) and bool(state.polished)
    assert 0 < int(state.iter_num) < OSQP_TIGHT.maxiter
    assert_tree_allclose((x, nu, lam), (X_STAR, NU_STAR, LAM_STAR), rtol=1e-9, atol=1e-10)


def test_osqp_admm_alone_reaches_tol():
    solver = OSQP(tol=1e-9, polish=False)
    (x, nu, lam), state = run_general(solver, **GEN)
    assert int(state.status) == 0 and bool(state.converged) and not bool(state.polished)
    assert state.error <= 1e-9
    # The residuals in the state are OSQP's: ‖Cx − z‖∞ and ‖Qx + c + Cᵀy‖∞, y = (ν, λ).
    C = np.concatenate([GEN["A"], GEN["G"]])
    np.testing.assert_allclose(state.primal_residual, np.abs(C @ x - state.z).max(), rtol=1e-6)
    dual = GEN["Q"] @ x + GEN["c"] + GEN["A"].T @ nu + GEN["G"].T @ lam
    np.testing.assert_allclose(state.dual_residual, np.abs(dual).max(), rtol=1e-6, atol=1e-15)
    assert_tree_allclose((x, nu, lam), (X_STAR, NU_STAR, LAM_STAR), rtol=1e-6, atol=1e-7)


def test_osqp_random_qp_matches_slsqp_and_satisfies_kkt():
    rng = np.random.default_rng(1)
    Q, A, G = spd(rng, 5), rng.normal(size=(1, 5)), rng.normal(size=(4, 5))
    c, h = rng.normal(size=5) * 3, rng.uniform(0.0, 0.5, size=4)  # x = 0 feasible for Gx ≤ h
    b = np.zeros(1)
    (x, nu, lam), state = OSQP_TIGHT.run(
        None, *[tuple(map(jnp.asarray, pair)) for pair in ((Q, c), (A, b), (G, h))]
    )
    assert int(state.status) == 0
    ref = scipy.optimize.minimize(
        lambda v: 0.5 * v @ Q @ v + c @ v,
        np.zeros(5),
        jac=lambda v: Q @ v + c,
        method="SLSQP",
        constraints=[
            dict(type="eq", fun=lambda v: A @ v - b, jac=lambda v: A),
            dict(type="ineq", fun=lambda v: h - G @ v, jac=lambda v: -G),
        ],
        options=dict(ftol=1e-15, maxiter=500),
    )
    assert ref.success
    np.testing.assert_allclose(x, ref.x, atol=1e-6)
    x, nu, lam = map(np.asarray, (x, nu, lam))
    slack = G @ x - h
    assert np.any(lam > 1e-3)  # some constraint is active: not an unconstrained problem
    np.testing.assert_allclose(Q @ x + c + A.T @ nu + G.T @ lam, 0.0, atol=1e-10)
    np.testing.assert_allclose(A @ x, b, atol=1e-12)
    assert np.all(slack <= 1e-12) and np.all(lam >= 0)
    np.testing.assert_allclose(lam * slack, 0.0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Statuses.

# Both with n = 2 and two inequality rows (one compilation): x₁ ≤ −1 and −x₁ ≤ −1; and
# min −x₁ s.t. x₂ ≤ 1 (and 0 ≤ 1), unbounded below.
PRIMAL_INFEASIBLE = (
    (jnp.eye(2), jnp.zeros(2)),
    None,
    (jnp.array([[1.0, 0.0], [-1.0, 0.0]]), -jnp.ones(2)),
)
DUAL_INFEASIBLE = (
    (jnp.zeros((2, 2)), jnp.array([-1.0, 0.0])),
    None,
    (jnp.array([[0.0, 1.0], [0.0, 0.0]]), jnp.ones(2)),
)


@pytest.mark.parametrize(
    ("problem", "status"),
    [(PRIMAL_INFEASIBLE, 2), (DUAL_INFEASIBLE, 3)],
    ids=["x<=-1_and_x>=1", "unbounded_lp"],
)
def test_osqp_detects_infeasibility(problem, status):
    _, state = OSQP_TIGHT.run(None, *problem)
    assert int(state.status) == status and not bool(state.converged)
    assert int(state.iter_num) < 100  # stopped on the certificate, not at maxiter


def test_osqp_reports_max_iterations():
    solver = OSQP(maxiter=3, polish=False)
    problem = ((jnp.eye(2), jnp.array([-1.0, 0.0])), None, (jnp.array([[1.0, 1.0]]), jnp.ones(1)))
    _, state = solver.run(None, *problem)
    assert int(state.status) == 1 and int(state.iter_num) == 3 and not bool(state.converged)


def test_osqp_with_one_sided_constraints_makes_no_nan_under_debug_nans():
    # Gx ≤ h has lower bound −inf: the infeasibility tests multiplied that bound by 0 (inf · 0 is
    # NaN) before masking it, which jax.debug_nans reports as an error in a user's debugging run.
    solver = OSQP(maxiter=10, polish=False, on_failure="ignore")
    problem = ((jnp.eye(2), jnp.array([-1.0, 0.0])), None, (jnp.array([[1.0, 1.0]]), jnp.ones(1)))
    with jax.disable_jit(), jax.debug_nans(True):
        (x, _, lam), state = solver.run(None, *problem)
    assert int(state.iter_num) == 10 and np.all(np.isfinite(x)) and np.all(np.isfinite(lam))


def test_osqp_warm_started_at_the_solution_does_not_iterate():
    solution, _ = run_general(OSQP_TIGHT, **GEN)
    again, state = run_general(OSQP_TIGHT, **GEN, init_params=solution)
    assert int(state.iter_num) == 0 and int(state.status) == 0 and bool(state.converged)
    assert_tree_allclose(again, solution, rtol=1e-12, atol=1e-14)
    shifted = {**GEN, "c": GEN["c"] + 0.1}
    with compilations() as compiled:  # new values, same shapes: no recompilation
        moved, _ = run_general(OSQP_TIGHT, **shifted)
    assert compiled == []
    # The same active set (the first two inequalities): the KKT solve of the equalities and them.
    A_act = jnp.concatenate([GEN["A"], GEN["G"][:2]])
    b_act = jnp.concatenate([GEN["b"], GEN["h"][:2]])
    expected, _ = kkt_closed_form(GEN["Q"], shifted["c"], A_act, b_act)
    assert np.all(GEN["G"][2:] @ expected < GEN["h"][2:])
    np.testing.assert_allclose(moved.primal, expected, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Derivatives.

W_X, W_NU, W_LAM = (jnp.asarray(RNG.normal(size=k)) for k in (5, 1, 4))


def general_loss(solver):
    def loss(Q, c, A, b, G, h):
        x, nu, lam = run_general(solver, Q, c, A, b, G, h).params
        return W_X @ x + W_NU @ nu + W_LAM @ lam

    return loss


@pytest.fixture(scope="module")
def osqp_gradients():
    (x, _, lam), _ = run_general(OSQP_TIGHT, **GEN)
    slack = np.asarray(GEN["h"] - GEN["G"] @ x)
    # Strict complementarity at the solution: each constraint is active with λ > 0 or inactive.
    assert np.all((np.asarray(lam) > 0.5) ^ (slack > 0.4))
    return jax.grad(general_loss(OSQP_TIGHT), argnums=range(6))(*GEN.values())


@pytest.mark.parametrize("index", range(6), ids=GEN_NAMES)
def test_osqp_gradient_matches_finite_differences(osqp_gradients, index):
    loss = general_loss(OSQP_TIGHT)
    args = list(GEN.values())
    tangent = random_tangent(args[index], seed=index)

    def along(value):
        return loss(*args[:index], value, *args[index + 1 :])

    fd = finite_difference_jvp(along, args[index], tangent, eps=1e-6)
    np.testing.assert_allclose(jnp.vdot(osqp_gradients[index], tangent), fd, rtol=1e-6, atol=1e-8)


def test_osqp_forward_mode_matches_finite_differences():
    args = tuple(GEN.values())
    tangents = random_tangent(args, seed=7)

    def solution(args):
        return run_general(OSQP_TIGHT, *args).params

    _, got = jax.jvp(solution, (args,), (tangents,))
    assert_tree_allclose(
        got, finite_difference_jvp(solution, args, tangents, eps=1e-6), rtol=1e-6, atol=1e-8
    )


def test_osqp_unrolled_gradient_matches_implicit(osqp_gradients):
    solver = OSQP(tol=1e-9, maxiter=300, implicit_diff=False)
    got = jax.grad(general_loss(solver), argnums=range(6))(*GEN.values())
    assert all(np.all(np.isfinite(g)) for g in got)
    assert_tree_allclose(got, osqp_gradients, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "solver",
    [EQP, EqualityConstrainedQP(implicit_diff=False)],
    ids=["implicit", "unrolled"],
)
def test_equality_qp_gradient_matches_closed_form(solver):
    w = jnp.asarray(RNG.normal(size=6))

    def loss(Q, c, A, b):
        (x, nu, _), _ = solver.run(None, (Q, c), (A, b))
        return w @ x + jnp.sum(nu**2)

    def loss_closed(Q, c, A, b):
        x, nu = kkt_closed_form(Q, c, A, b)
        return w @ x + jnp.sum(nu**2)

    got = jax.grad(loss, argnums=range(4))(*EQ.values())
    want = jax.grad(loss_closed, argnums=range(4))(*EQ.values())
    assert_tree_allclose(got, want, rtol=1e-8, atol=1e-10)
    # And the full Jacobian of x in c: −[K⁻¹]ₓₓ.
    jac = jax.jacrev(lambda c: solver.run(None, (EQ["Q"], c), (EQ["A"], EQ["b"])).params[0])
    K = np.block([[EQ["Q"], EQ["A"].T], [EQ["A"], np.zeros((2, 2))]])
    np.testing.assert_allclose(jac(EQ["c"]), -np.linalg.inv(K)[:6, :6], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "solver",
    [
        BOXCD,
        BoxCDQP(tol=1e-12, maxiter=200, implicit_diff=False),
        BoxCDQP(tol=1e-12, maxiter=200, implicit_diff=False, unroll_checkpoint=True),
    ],
    ids=["implicit", "unrolled", "unrolled_checkpoint"],
)
def test_box_cd_gradient_matches_closed_form_and_finite_differences(solver):
    w = jnp.asarray(RNG.normal(size=6))

    def loss(Q, c, l, u):
        return w @ solver.run(None, (Q, c), (l, u)).params

    args = tuple(BOX.values())
    got = jax.grad(loss, argnums=range(4))(*args)
    want = jax.grad(lambda *a: w @ box_closed_form(*a), argnums=range(4))(*args)
    assert_tree_allclose(got, want, rtol=1e-8, atol=1e-10)
    if solver is BOXCD:  # and against finite differences of the solver, along a random direction
        tangents = random_tangent(args, seed=3)
        fd = finite_difference_jvp(lambda a: loss(*a), args, tangents, eps=1e-6)
        np.testing.assert_allclose(
            sum(jnp.vdot(g, t) for g, t in zip(got, tangents, strict=True)), fd, rtol=1e-7
        )


# ---------------------------------------------------------------------------------------------
# jit and vmap.


def _eq_loss(c):
    x, nu, _ = EQP.run(None, (EQ["Q"], c), (EQ["A"], EQ["b"])).params
    return jnp.sum(x**2) + jnp.sum(nu)


def _box_loss(c):
    return jnp.sum(BOXCD.run(None, (BOX["Q"], c), (BOX["l"], BOX["u"])).params ** 2)


def _osqp_loss(c):
    G, h = box_as_inequalities(BOX["l"], BOX["u"])
    x, _, lam = OSQP_TIGHT.run(None, (BOX["Q"], c), None, (G, h)).params
    return jnp.sum(x**2) + jnp.sum(lam)


@pytest.mark.parametrize(
    "loss", [_eq_loss, _box_loss, _osqp_loss], ids=["EqualityConstrainedQP", "BoxCDQP", "OSQP"]
)
def test_jit_vmap_of_run_and_gradient_over_c_equals_one_by_one(loss):
    # c near the box problem's, so that the active set stays the same (and strictly so).
    cs = BOX["c"] + 0.05 * jnp.asarray(np.random.default_rng(5).normal(size=(3, 6)))
    batched = jax.jit(jax.vmap(jax.value_and_grad(loss)))(cs)
    one_by_one = [jax.value_and_grad(loss)(c) for c in cs]
    want = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *one_by_one)
    assert_tree_allclose(batched, want, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# Options and inputs.


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (OSQP, dict(maxiter=-1), "maxiter must be an int ≥ 0"),
        (OSQP, dict(tol=-1.0), "tol must be a non-negative number"),
        (OSQP, dict(rho=0.0), "rho must be a positive number"),
        (OSQP, dict(sigma=-1.0), "sigma must be a positive number"),
        (OSQP, dict(alpha=2.0), "alpha must lie in"),
        (OSQP, dict(rho=10.0, rho_max=1.0), "rho must lie in"),
        (OSQP, dict(rho_update_frequency=0), "rho_update_frequency must be a positive int"),
        (OSQP, dict(eps_primal_infeasible=-1.0), "eps_primal_infeasible must be"),
        (BoxCDQP, dict(maxiter=-1), "maxiter must be an int ≥ 0"),
        (EqualityConstrainedQP, dict(matvec_Q=3), "matvec_Q must be callable"),
        (EqualityConstrainedQP, dict(kkt_solve="nope"), "not a known linear solver"),
    ],
)
def test_bad_options_are_named(cls, options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        cls(**options)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="params_ineq"):
        OSQP_TIGHT.run(None, (GEN["Q"], GEN["c"]), None, (GEN["G"][:, :3], GEN["h"]))
    with pytest.raises(TypeError, match="params_eq"):
        OSQP_TIGHT.run(None, (GEN["Q"], GEN["c"]), GEN["A"])
    with pytest.raises(TypeError, match="params_obj"):
        BOXCD.run(None, None, (0.0, 1.0))


_Q2, _C2 = 2.0 * jnp.eye(2), jnp.ones(2)
_EQ2 = (jnp.ones((1, 2)), jnp.ones(1))
_WARM_STARTED = {
    "EqualityConstrainedQP": lambda init: EqualityConstrainedQP().run(init, (_Q2, _C2), _EQ2),
    "OSQP": lambda init: OSQP().run(init, (_Q2, _C2), _EQ2, None),
    "BoxOSQP": lambda init: BoxOSQP().run(init, (_Q2, _C2), _EQ2[0], (_EQ2[1] * 0, _EQ2[1])),
}


@pytest.mark.parametrize("solver", sorted(_WARM_STARTED))
@pytest.mark.parametrize(
    ("init", "shown"),
    [
        ({"x": jnp.zeros(2)}, "got a dict"),
        (jnp.zeros((3, 2)), r"got an array of shape \(3, 2\)"),  # was unpacked into its rows
        ((jnp.zeros(2), None), "got a tuple of length 2"),
    ],
    ids=["dict", "array", "pair"],
)
def test_a_warm_start_that_is_not_a_kkt_triple_is_refused_by_name(solver, init, shown):
    with pytest.raises(
        TypeError, match=rf"{solver}\.run: init_params must be .*KKTSolution.*{shown}"
    ):
        _WARM_STARTED[solver](init)


def test_box_cd_start_of_the_wrong_kind_or_shape_is_refused_by_name():
    box = (jnp.zeros(2), jnp.ones(2))
    with pytest.raises(TypeError, match=r"BoxCDQP\.run: init_params must be None or an array"):
        BoxCDQP().run({"x": jnp.zeros(2)}, (_Q2, _C2), box)
    with pytest.raises(
        ValueError, match=r"init_params must have the shape of c, \(2,\); got \(3,\)"
    ):
        BoxCDQP().run(jnp.zeros(3), (_Q2, _C2), box)
    # A list and a scalar are arrays: the scalar broadcasts, as clip(x₀, l, u) does.
    for start in ([0.0, 0.0], 0.5):
        x, state = BoxCDQP(tol=1e-12).run(start, (_Q2, _C2), box)
        assert bool(state.converged)
        np.testing.assert_allclose(x, np.zeros(2), atol=1e-12)  # min x² + x on [0, 1]²


_HALF_Q = np.array([[1.0, 0.2, 0.0], [0.2, 0.8, 0.1], [0.0, 0.1, 1.2]])
_HALF_C = np.array([-0.3, 0.5, -0.8])
_HALF_A, _HALF_B = np.array([[1.0, 1.0, 1.0]]), np.array([0.5])


def _half_qp_solution(name, dtype, c):
    Q, A, b = (jnp.asarray(v, dtype) for v in (_HALF_Q, _HALF_A, _HALF_B))
    if name == "EqualityConstrainedQP":
        return EqualityConstrainedQP().run(params_obj=(Q, c), params_eq=(A, b)).params.primal
    if name == "OSQP":
        return OSQP().run(params_obj=(Q, c), params_eq=(A, b)).params.primal
    if name == "BoxOSQP":
        return BoxOSQP().run(params_obj=(Q, c), params_eq=A, params_ineq=(b, b)).params.primal[0]
    box = (jnp.full(3, -1.0, dtype), jnp.full(3, 1.0, dtype))
    return BoxCDQP().run(jnp.zeros(3, dtype), params_obj=(Q, c), params_ineq=box).params


@pytest.mark.parametrize("name", ["EqualityConstrainedQP", "OSQP", "BoxOSQP", "BoxCDQP"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_data_solve_in_float32(name, dtype):
    """Q, c (A, b, bounds) in bfloat16 or float16: the QP solves in float32 (its factorizations
    have no half precision: EqualityConstrainedQP, OSQP and BoxOSQP raised "Unsupported dtype
    bfloat16"), within the data's rounding of the float64 solution, and its gradient in c is
    that of float64 to the same accuracy."""
    weights = jnp.asarray([1.0, 2.0, 3.0])

    def loss(c, dtype):
        return jnp.vdot(weights, _half_qp_solution(name, dtype, c).astype(jnp.float64))

    c_half = jnp.asarray(_HALF_C, dtype)
    x = _half_qp_solution(name, dtype, c_half)
    assert x.dtype == jnp.float32
    exact = _half_qp_solution(name, jnp.float64, jnp.asarray(_HALF_C))
    np.testing.assert_allclose(x, exact, atol=0.02)
    grad = jax.grad(loss)(c_half, dtype)
    assert grad.dtype == dtype
    expected = jax.grad(loss)(jnp.asarray(_HALF_C), jnp.float64)
    np.testing.assert_allclose(np.asarray(grad, np.float64), expected, atol=0.05)
