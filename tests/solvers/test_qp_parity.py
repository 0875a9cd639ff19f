"""JAXopt 0.8.5 parity of the QP solvers (issue 13): BoxOSQP, EqualityConstrainedQP's refinement
options, CvxpyQP; side by side with jaxopt on the same inputs, derivatives against jaxopt and
central finite differences (float64)."""

import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff.solvers import (
    OSQP,
    BoxOSQP,
    CvxpyQP,
    EqualityConstrainedQP,
    KKTSolution,
    SolverWarning,
    Status,
)

jaxopt = pytest.importorskip("jaxopt")

RNG = np.random.default_rng(0)
N, M = 4, 3
_F = RNG.normal(size=(N, N))
Q = jnp.asarray(_F @ _F.T + np.eye(N))
C = jnp.asarray(RNG.normal(size=N))
A = jnp.asarray(RNG.normal(size=(M, N)))
# At the solution, rows 0 (two-sided) and 1 (one-sided) are active at u, with y > 0; row 2 is an
# equality l = u (y < 0).
LOWER = jnp.array([-0.1, -jnp.inf, 0.2])
UPPER = jnp.array([0.1, 0.3, 0.2])

OURS = BoxOSQP(tol=1e-10)


def _dense_matvec(M, x):
    return M @ x


THEIRS = jaxopt.BoxOSQP(tol=1e-10, eq_qp_solve="lu", maxiter=20000)


def _x(solver, Q, c, A, lower, upper):
    params, state = solver.run(None, (Q, c), A, (lower, upper))
    return params.primal[0], (params, state)


@jax.jit
def _box_case(Q, c, A, lower, upper):
    """Ours with its Jacobians (the solution as aux: one forward pass), and JAXopt's."""
    jacobians, (ours, state) = jax.jacobian(_x, argnums=(1, 2, 3, 4, 5), has_aux=True)(
        OURS, Q, c, A, lower, upper
    )
    theirs, their_state = THEIRS.run(None, (Q, c), A, (lower, upper))
    return ours, state, theirs, their_state, jacobians


def _central(f, value, eps=1e-6):
    """The Jacobian of f at value by central differences (columns: the entries of value)."""
    flat = np.asarray(value).ravel()
    columns = []
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = eps
        plus = f(jnp.asarray((flat + step).reshape(np.shape(value))))
        minus = f(jnp.asarray((flat - step).reshape(np.shape(value))))
        columns.append((plus - minus) / (2 * eps))
    return np.stack(columns, axis=-1).reshape(np.shape(plus) + np.shape(value))


def _solve_x(Q, c, A, lower, upper):
    """Our x, from the compiled case (no new program for the finite differences)."""
    return _box_case(Q, c, A, lower, upper)[0].primal[0]


def test_box_osqp_matches_jaxopt_and_finite_differences():
    ours, state, theirs, their_state, jacobians = _box_case(Q, C, A, LOWER, UPPER)
    assert int(state.status) == BoxOSQP.SOLVED and bool(state.converged)
    assert int(their_state.status) == jaxopt.BoxOSQP.SOLVED
    # JAXopt's layout: ((x, z), y, (μ, φ)), z = Ax, μ = max(y, 0), φ = max(−y, 0).
    (x, z), y, (mu, phi) = ours
    assert isinstance(ours, KKTSolution)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)
    np.testing.assert_allclose(z, A @ x, atol=1e-12)
    np.testing.assert_allclose(mu - phi, y, atol=0)
    assert float(jnp.min(mu)) >= 0 and float(jnp.min(phi)) >= 0
    # KKT of the original problem: Qx + c + Aᵀy = 0, every row active here.
    np.testing.assert_allclose(Q @ x + C + A.T @ y, 0, atol=1e-10)
    # Derivatives against central differences (Q, c, A, l, u).
    jac_Q, jac_c, jac_A, jac_l, jac_u = jacobians
    args = [Q, C, A, LOWER, UPPER]
    for name, value, jac, argnum in (("Q", Q, jac_Q, 0), ("c", C, jac_c, 1), ("A", A, jac_A, 2)):

        def f(v, argnum=argnum):
            return _solve_x(*args[:argnum], v, *args[argnum + 1 :])

        np.testing.assert_allclose(jac, _central(f, value), atol=1e-6, err_msg=name)
    # u₀, u₁: active upper bounds; the equality row moves l₂ = u₂ = b together; the inactive
    # lower bound l₀ and the infinite l₁ have no effect.
    fd_u = _central(lambda v: _solve_x(Q, C, A, LOWER, UPPER.at[:2].set(v)), UPPER[:2])
    np.testing.assert_allclose(jac_u[:, :2], fd_u, atol=1e-6)
    fd_b = _central(lambda b: _solve_x(Q, C, A, LOWER.at[2].set(b), UPPER.at[2].set(b)), UPPER[2])
    np.testing.assert_allclose(jac_l[:, 2] + jac_u[:, 2], fd_b, atol=1e-6)
    assert float(jnp.max(jnp.abs(fd_b))) > 1e-2  # the check has teeth
    np.testing.assert_allclose(jac_l[:, :2], 0, atol=1e-12)


QUIET = BoxOSQP(on_failure="ignore")
CHECKING = jaxopt.BoxOSQP(check_primal_dual_infeasability=True)


@jax.jit
def _statuses(Q, c, A, lower, upper):
    ours = QUIET.run(None, (Q, c), A, (lower, upper)).state.status
    return ours, CHECKING.run(None, (Q, c), A, (lower, upper)).state.status


def test_box_osqp_reports_infeasibility():
    # x₁ ≥ 1 and x₁ ≤ 0: primal infeasible (JAXopt agrees when asked to check).
    args = (
        jnp.eye(2),
        jnp.ones(2),
        jnp.array([[1.0, 0.0], [1.0, 0.0]]),
        jnp.array([1.0, -jnp.inf]),
        jnp.array([jnp.inf, 0.0]),
    )
    ours, theirs = _statuses(*args)
    assert int(ours) == BoxOSQP.PRIMAL_INFEASIBLE == Status.PRIMAL_INFEASIBLE
    assert int(theirs) == jaxopt.BoxOSQP.PRIMAL_INFEASIBLE
    # min −x₁ s.t. x₁ ≥ 0, 0 ≤ x₂ ≤ 1: unbounded below, dual infeasible. JAXopt 0.8.5 says
    # "Primal infeasible" here (a defect: the problem is feasible).
    unbounded = (
        jnp.zeros((2, 2)),
        jnp.array([-1.0, 0.0]),
        jnp.eye(2),
        jnp.zeros(2),
        jnp.array([jnp.inf, 1.0]),
    )
    ours, theirs = _statuses(*unbounded)
    assert int(ours) == BoxOSQP.DUAL_INFEASIBLE
    assert int(theirs) == jaxopt.BoxOSQP.PRIMAL_INFEASIBLE  # JAXopt's defect


def test_box_osqp_rejects_bad_input():
    with pytest.raises(ValueError, match="momentum"):
        BoxOSQP(momentum=2.5)
    with pytest.raises(ValueError, match="eq_qp_solve"):
        BoxOSQP(eq_qp_solve="qr")
    with pytest.raises(TypeError, match="params_ineq"):
        OURS.run(None, (Q, C), A)
    with pytest.raises(ValueError, match=r"params_ineq \(l, u\)"):
        OURS.run(None, (Q, C), A, (LOWER[:2], UPPER))
    with pytest.raises(ValueError, match="params_eq A"):
        OURS.run(None, (Q, C), A[:, :2], (LOWER, UPPER))


# -- CvxpyQP ----------------------------------------------------------------------------------

G = jnp.asarray(RNG.normal(size=(3, N)))
H = jnp.array([-0.5, 5.0, 5.0])  # row 0 active, rows 1-2 not (checked below)
EQ_A, EQ_B = jnp.ones((1, N)), jnp.array([0.3])
CVX = {"solver": "CLARABEL", "solver_options": {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12}}


def _cvxpy_x(c, b, h):
    step = CvxpyQP(**CVX).run(None, (Q, c), (EQ_A, b), (G, h))
    return step.params.primal, step


@jax.jit
def _cvxpy_case(c, b, h):
    jacobians, (ours, state) = jax.jacobian(_cvxpy_x, argnums=(0, 1, 2), has_aux=True)(c, b, h)
    batch = jax.vmap(lambda c: _cvxpy_x(c, b, h)[0])(jnp.stack([c, 2 * c]))
    return ours, state, jacobians, batch


def _cvxpy_solve(c, b, h):
    return _cvxpy_case(c, b, h)[0].primal


def test_cvxpy_qp_matches_jaxopt_and_finite_differences():
    pytest.importorskip("cvxpy")
    ours, state, (jac_c, jac_b, jac_h), batch = _cvxpy_case(C, EQ_B, H)
    assert bool(state.converged) and int(state.status) == Status.CONVERGED
    theirs = jaxopt.CvxpyQP("CLARABEL").run(None, (Q, C), (EQ_A, EQ_B), (G, H)).params
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    x, nu, lam = ours
    np.testing.assert_allclose(Q @ x + C + EQ_A.T @ nu + G.T @ lam, 0, atol=1e-8)
    assert float(lam[0]) > 1e-3 and np.all(np.asarray(G @ x - H)[1:] < -1e-3)
    np.testing.assert_allclose(batch[0], x, atol=1e-12)
    np.testing.assert_allclose(batch[1], _cvxpy_solve(2 * C, EQ_B, H), atol=1e-8)
    their_jac_c = jax.jacobian(
        lambda c: jaxopt.CvxpyQP("CLARABEL").run(None, (Q, c), (EQ_A, EQ_B), (G, H)).params.primal
    )(C)
    np.testing.assert_allclose(jac_c, their_jac_c, atol=1e-6)
    solve = _cvxpy_solve
    np.testing.assert_allclose(jac_b, _central(lambda b: solve(C, b, H), EQ_B), atol=1e-5)
    np.testing.assert_allclose(jac_h, _central(lambda h: solve(C, EQ_B, h), H), atol=1e-5)
    assert float(jnp.max(jnp.abs(jac_h[:, 0]))) > 1e-2  # the active row moves x


def test_cvxpy_qp_statuses_and_missing_cvxpy(monkeypatch):
    pytest.importorskip("cvxpy")
    quiet = CvxpyQP(**CVX, on_failure="ignore", jit=False)
    infeasible = (jnp.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]), jnp.array([-1.0, -1.0]))
    (x, _, _), state = quiet.run(None, (Q, C), None, infeasible)
    assert int(state.status) == Status.PRIMAL_INFEASIBLE and not bool(state.converged)
    assert bool(jnp.all(jnp.isnan(x)))
    # min −x₁ s.t. −x₁ ≤ 0 (Q = 0): unbounded below.
    unbounded = quiet.run(
        None, (jnp.zeros((2, 2)), jnp.array([-1.0, 0.0])), None, (-jnp.eye(2), jnp.zeros(2))
    )
    assert int(unbounded.state.status) == Status.DUAL_INFEASIBLE
    with pytest.raises(ValueError, match="params_ineq"):
        quiet.run(None, (Q, C), None, (G[:, :2], H))
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # as if not installed
    with pytest.raises(ImportError, match=r"implicitdiff\[cvxpy\]"):
        CvxpyQP(jit=False).run(None, (Q, C), None, (G, H))


def test_cvxpy_qp_default_osqp_reaches_its_tol_without_inequalities():
    """With solver_options None, OSQP (the default solver, as JAXopt's) runs to 1e-9: with
    cvxpy's own 1e-5 it stopped short of tol = 1e-6 on every QP without inequalities (its polish
    step needs an active set) and warned; the derivative then is as good as the closed form's."""
    pytest.importorskip("cvxpy")
    solver = CvxpyQP(jit=False)

    def primal(c, b):
        return solver.run(None, (Q, c), (EQ_A, b)).params.primal

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (x, _, _), state = solver.run(None, (Q, C))
        assert bool(state.converged) and int(state.status) == Status.CONVERGED
        np.testing.assert_allclose(x, np.linalg.solve(Q, -C), rtol=1e-7)
        # With Ax = b: the closed form of the KKT system, and its derivative in b.
        kkt = np.block([[Q, EQ_A.T], [EQ_A, np.zeros((1, 1))]])
        expected = np.linalg.solve(kkt, np.concatenate([-C, EQ_B]))
        np.testing.assert_allclose(primal(C, EQ_B), expected[:N], rtol=1e-7, atol=1e-9)
        jac_b = jax.jacobian(primal, argnums=1)(C, EQ_B)
    np.testing.assert_allclose(jac_b, np.linalg.inv(kkt)[:N, N:], rtol=1e-6, atol=1e-8)


def test_cvxpy_qp_failure_warning_names_the_status():
    pytest.importorskip("cvxpy")
    infeasible = (jnp.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]), jnp.array([-1.0, -1.0]))
    with pytest.warns(SolverWarning) as caught:
        CvxpyQP(**CVX, jit=False).run(None, (Q, C), None, infeasible)
    (message,) = [str(w.message) for w in caught if w.category is SolverWarning]
    assert "status 2 (PRIMAL_INFEASIBLE)" in message and "Remedy: the constraints" in message
    assert "iterations" not in message  # cvxpy gives no iteration count (iter_num is −1)


def test_importing_implicitdiff_does_not_import_cvxpy():
    code = "import sys, implicitdiff; assert 'cvxpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- EqualityConstrainedQP: refine_regularization, refine_maxiter -----------------------------

_LOW = RNG.normal(size=(N, 2))
Q_SINGULAR = jnp.asarray(_LOW @ _LOW.T)  # rank 2: the KKT matrix is still invertible
EQ2_A, EQ2_B = jnp.asarray(RNG.normal(size=(2, N))), jnp.array([0.3, -0.2])
REGULARIZED = EqualityConstrainedQP(refine_regularization=1e-3, tol=1e-12)
REGULARIZED_MATVEC = EqualityConstrainedQP(
    _dense_matvec, refine_regularization=1e-3, refine_maxiter=20, tol=1e-12
)
REGULARIZED_UNROLLED = EqualityConstrainedQP(
    refine_regularization=1e-3, tol=1e-12, implicit_diff=False, maxiter=2
)


def _eq_x(solver, b):
    step = solver.run(None, (Q_SINGULAR, C), (EQ2_A, b))
    return step.params.primal, step


@jax.jit
def _eq_case(b):
    jacobian, dense = jax.jacobian(_eq_x, argnums=1, has_aux=True)(REGULARIZED, b)
    matvec = REGULARIZED_MATVEC.run(None, (Q_SINGULAR, C), (EQ2_A, b))
    unrolled, _ = jax.jacobian(_eq_x, argnums=1, has_aux=True)(REGULARIZED_UNROLLED, b)
    # Redundant constraints (row 0 twice): singular K, solvable with δ > 0.
    redundant = REGULARIZED.run(
        None,
        (Q_SINGULAR + jnp.eye(N), C),
        (jnp.concatenate([EQ2_A, EQ2_A[:1]]), jnp.concatenate([b, b[:1]])),
    )
    return dense, matvec, jacobian, unrolled, redundant


def test_equality_qp_refine_regularization_matches_jaxopt():
    dense, matvec, jacobian, unrolled, redundant = _eq_case(EQ2_B)
    theirs = jaxopt.EqualityConstrainedQP(refine_regularization=1e-3, tol=1e-12)
    expected = theirs.run(None, (Q_SINGULAR, C), (EQ2_A, EQ2_B)).params
    for ours in (dense, matvec):
        assert bool(ours.state.converged)
        np.testing.assert_allclose(ours.params.primal, expected.primal, rtol=1e-9)
        np.testing.assert_allclose(ours.params.dual_eq, expected.dual_eq, rtol=1e-9)
    exact = jnp.linalg.solve(
        jnp.block([[Q_SINGULAR, EQ2_A.T], [EQ2_A, jnp.zeros((2, 2))]]),
        jnp.concatenate([-C, EQ2_B]),
    )
    np.testing.assert_allclose(dense.params.primal, exact[:N], rtol=1e-10)
    fd = _central(lambda b: _eq_case(b)[0].params.primal, EQ2_B)
    np.testing.assert_allclose(jacobian, fd, rtol=1e-6)
    np.testing.assert_allclose(unrolled, jacobian, rtol=1e-8)
    # The redundant problem has the feasible set, so the solution, of the non-redundant one.
    assert bool(redundant.state.converged)
    exact = jnp.linalg.solve(
        jnp.block([[Q_SINGULAR + jnp.eye(N), EQ2_A.T], [EQ2_A, jnp.zeros((2, 2))]]),
        jnp.concatenate([-C, EQ2_B]),
    )
    np.testing.assert_allclose(redundant.params.primal, exact[:N], rtol=1e-8)
    with pytest.raises(ValueError, match="refine_regularization"):
        EqualityConstrainedQP(refine_regularization=-1.0)
    with pytest.raises(ValueError, match="refine_maxiter"):
        EqualityConstrainedQP(refine_maxiter=0)


# -- matvecs and pytree parameters (OSQP, BoxOSQP) ---------------------------------------------


def _low_rank_matvec(params, x):
    """Q x for Q = a I + B Bᵀ, given as the pytree {"a": a, "B": B} (no matrix to multiply)."""
    return params["a"] * x + params["B"] @ (params["B"].T @ x)


Q_PARAMS = {"a": 1.0, "B": jnp.asarray(_F)}  # Q = I + F Fᵀ, the Q above
MATVEC_OSQP = OSQP(
    matvec_Q=_low_rank_matvec, matvec_A=_dense_matvec, matvec_G=_dense_matvec, tol=1e-10
)
MATVEC_BOX = BoxOSQP(_low_rank_matvec, _dense_matvec, tol=1e-10)


def _osqp_x(a, h):
    params = {"a": a, "B": Q_PARAMS["B"]}
    solution = MATVEC_OSQP.run(None, (params, C), (EQ_A, EQ_B), (G, h)).params
    return solution.primal, solution


def _box_x(a):
    params = {"a": a, "B": Q_PARAMS["B"]}
    solution = MATVEC_BOX.run(None, (params, C), A, (LOWER, UPPER)).params
    return solution.primal[0], solution


@jax.jit
def _matvec_case(a, h):
    """The solutions with their derivatives (OSQP: Jacobians wrt a, h; BoxOSQP: a JVP in a)."""
    (d_a, d_h), osqp = jax.jacobian(_osqp_x, argnums=(0, 1), has_aux=True)(a, h)
    box, d_box = jax.jvp(lambda a: _box_x(a)[1], (a,), (jnp.ones_like(a),))
    return osqp, box, (d_a, d_h, d_box.primal[0])


def test_matvecs_and_pytree_parameters():
    (x, nu, lam), ((x_box, z), y, _), (d_a, d_h, d_box) = _matvec_case(1.0, H)
    np.testing.assert_allclose(Q, _low_rank_matvec(Q_PARAMS, jnp.eye(N)), atol=1e-12)
    # KKT certificates of both solutions (Q = I + F Fᵀ).
    np.testing.assert_allclose(Q @ x + C + EQ_A.T @ nu + G.T @ lam, 0, atol=1e-9)
    np.testing.assert_allclose(EQ_A @ x, EQ_B, atol=1e-9)
    np.testing.assert_allclose(lam * (G @ x - H), 0, atol=1e-9)
    assert float(jnp.max(G @ x - H)) < 1e-9 and float(jnp.min(lam)) >= 0
    np.testing.assert_allclose(Q @ x_box + C + A.T @ y, 0, atol=1e-9)
    np.testing.assert_allclose(A @ x_box, z, atol=1e-9)
    np.testing.assert_allclose(z, UPPER, atol=1e-9)  # every row active at u (y₂ < 0: l₂ = u₂)
    # Side by side with JAXopt's matrix-free BoxOSQP (its CG x-step).
    theirs = jaxopt.BoxOSQP(_low_rank_matvec, _dense_matvec, tol=1e-9, maxiter=20000)
    expected = theirs.run(None, (Q_PARAMS, C), A, (LOWER, UPPER)).params
    np.testing.assert_allclose(x_box, expected.primal[0], atol=1e-7)
    np.testing.assert_allclose(y, expected.dual_eq, atol=1e-7)
    # Derivatives against central differences (the same compiled program).
    eps = 1e-6

    def at(a, h):
        return _matvec_case(a, h)

    fd_a = (at(1.0 + eps, H)[0].primal - at(1.0 - eps, H)[0].primal) / (2 * eps)
    np.testing.assert_allclose(d_a, fd_a, atol=1e-6)
    fd_box = (at(1.0 + eps, H)[1].primal[0] - at(1.0 - eps, H)[1].primal[0]) / (2 * eps)
    np.testing.assert_allclose(d_box, fd_box, atol=1e-6)
    assert float(jnp.max(jnp.abs(d_box))) > 1e-3
    for i in range(3):
        step = jnp.zeros(3).at[i].set(eps)
        fd_h = (at(1.0, H + step)[0].primal - at(1.0, H - step)[0].primal) / (2 * eps)
        np.testing.assert_allclose(d_h[:, i], fd_h, atol=1e-6)
    assert float(jnp.max(jnp.abs(d_a))) > 1e-3
