"""Family "objective dtype" (issue 12, item 16): the user's function may compute in another float
dtype than the params (with x64 on: a float64 objective for float32 params, a float32 one for
float64 params; Python-float bounds traced as float64). Every solver with a user objective,
residual or root function casts what the function returns to the params' dtype where it
evaluates it: the run converges, the params keep their dtype, ``state.error`` has it, and the
derivative with respect to θ matches the closed form to the accuracy of the coarser dtype.

The problem: f(x, θ) = ½ xᵀHx − θᵀx (x* = H⁻¹θ, dx*/dθ = H⁻¹), as a residual/root Hx − θ for
the least-squares and root solvers; MirrorDescent minimizes ½‖p‖² + cᵀp on the simplex
(p* = 1/n − Pc, dp*/dc = −P, P the centering projection). The fixed-point solvers are not in the
family: a map T of another dtype than x is refused with a TypeError naming fixed_point_fun
(tests/test_bad_input.py).

Each case is the run and its Jacobian (reverse mode, as ``jax.jacrev``); all the cases of one
dtype pair are compiled as one program.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PlainSGD, run_together, unpack

from implicitdiff import projections, prox, solvers

H = np.array([[1.0, 0.2], [0.2, 0.8]])
THETA = np.array([0.3, -0.5])
BOX = (-10.0, 10.0)  # Python floats: traced as float64 under x64, whatever the params' dtype
C = np.array([0.05, -0.02, 0.01])
CENTER = np.eye(3) - np.ones((3, 3)) / 3


def _objective(out):
    def objective(x, theta):
        x, theta = x.astype(out), theta.astype(out)
        return 0.5 * x @ jnp.asarray(H, out) @ x - theta @ x

    return objective


def _root(out):
    def root(x, theta):
        return jnp.asarray(H, out) @ x.astype(out) - theta.astype(out)

    return root


def _simplex_objective(out):
    def objective(p, c):
        p, c = p.astype(out), c.astype(out)
        return 0.5 * jnp.sum(p**2) + c @ p

    return objective


# Module-level functions (one per dtype), so that equal solvers share their compiled programs.
FUNCTIONS = {
    dtype: (_objective(dtype), _root(dtype), _simplex_objective(dtype))
    for dtype in (jnp.float32, jnp.float64)
}


def _catalog(out, tol):
    """name -> (solver, arguments before θ, closed-form solution, closed-form Jacobian)."""
    f, g, s = FUNCTIONS[out]
    quadratic = (np.linalg.solve(H, THETA), np.linalg.inv(H), THETA)
    simplex = (np.ones(3) / 3 - CENTER @ C, -CENTER, C)
    return {
        "GradientDescent": (solvers.GradientDescent(fun=f, tol=tol, maxiter=2000), (), quadratic),
        "LBFGS": (solvers.LBFGS(fun=f, tol=tol), (), quadratic),
        "LBFGS-hager-zhang": (
            solvers.LBFGS(fun=f, tol=tol, linesearch="hager-zhang"),
            (),
            quadratic,
        ),
        "LBFGS-backtracking": (
            solvers.LBFGS(fun=f, tol=tol, linesearch="backtracking"),
            (),
            quadratic,
        ),
        "BFGS": (solvers.BFGS(fun=f, tol=tol), (), quadratic),
        "NonlinearCG": (solvers.NonlinearCG(fun=f, tol=tol), (), quadratic),
        "Newton": (solvers.Newton(fun=f, tol=tol), (), quadratic),
        "LBFGSB": (solvers.LBFGSB(fun=f, tol=tol), (BOX,), quadratic),
        "ProximalGradient": (
            solvers.ProximalGradient(fun=f, prox=prox.none, tol=tol),
            (None,),
            quadratic,
        ),
        "ProjectedGradient": (
            solvers.ProjectedGradient(fun=f, projection=projections.box, tol=tol),
            (BOX,),
            quadratic,
        ),
        "BlockCoordinateDescent": (
            solvers.BlockCoordinateDescent(fun=f, block_prox=prox.none, tol=tol),
            (None,),
            quadratic,
        ),
        "MirrorDescent": (
            solvers.MirrorDescent(fun=s, stepsize=0.5, tol=tol / 10),
            (None,),
            simplex,
        ),
        "OptaxSolver": (
            solvers.OptaxSolver(f, PlainSGD(0.7), tol=tol, maxiter=2000),
            (),
            quadratic,
        ),
        "PolyakSGD": (
            solvers.PolyakSGD(fun=f, fun_min=-10.0, max_stepsize=0.7, tol=tol, maxiter=2000),
            (),
            quadratic,
        ),
        "ArmijoSGD": (solvers.ArmijoSGD(fun=f, tol=tol, maxiter=2000), (), quadratic),
        "Broyden": (solvers.Broyden(fun=g, tol=tol), (), quadratic),
        "GaussNewton": (solvers.GaussNewton(residual_fun=g, tol=tol), (), quadratic),
        "LevenbergMarquardt": (solvers.LevenbergMarquardt(residual_fun=g, tol=tol), (), quadratic),
        # SciPy's own tolerances at the precision the float32 side allows.
        "ScipyMinimize": (solvers.ScipyMinimize(fun=f, tol=1e-7, error_tol=tol), (), quadratic),
        "ScipyBoundedMinimize": (
            solvers.ScipyBoundedMinimize(fun=f, tol=1e-7, error_tol=tol),
            (BOX,),
            quadratic,
        ),
        "ScipyRootFinding": (
            solvers.ScipyRootFinding(optimality_fun=g, tol=1e-6, error_tol=tol),
            (),
            quadratic,
        ),
        "ScipyLeastSquares": (
            solvers.ScipyLeastSquares(residual_fun=g, error_tol=tol),
            (),
            quadratic,
        ),
        "ScipyBoundedLeastSquares": (
            solvers.ScipyBoundedLeastSquares(residual_fun=g, error_tol=tol),
            (BOX,),
            quadratic,
        ),
    }


NAMES = list(_catalog(jnp.float64, 1e-6))
# (params' dtype, the function's dtype, tol, solution atol, Jacobian atol). The solution is as
# accurate as the stopping test makes it: tol / λ_min(H) ≈ 1.5e-5 (doubled); the Jacobian to the
# accuracy of float32 (ε ≈ 1.2e-7; observed ≤ 3e-6, for MirrorDescent's fixed point).
PAIRS = {
    "float64-fun-float32-params": (jnp.float32, jnp.float64, 1e-5, 3e-5, 5e-6),
    "float32-fun-float64-params": (jnp.float64, jnp.float32, 1e-5, 3e-5, 5e-6),
}


def test_objective_dtype_family_catalog_has_every_solver_with_a_user_function():
    """Every solver with a user objective, residual or root function is swept (the QPs have
    none; the fixed-point solvers refuse another dtype, see the module docstring)."""
    public = {
        name
        for name in dir(solvers)
        if isinstance(getattr(solvers, name), type)
        and issubclass(getattr(solvers, name), solvers._base.DifferentiableRun)
    }
    without = {
        "IterativeSolver",
        "EqualityConstrainedQP",
        "BoxCDQP",
        "OSQP",
        "BoxOSQP",
        "CvxpyQP",
        "FixedPointIteration",
        "AndersonAcceleration",
        "Bisection",  # scalar bracket solver in the default float dtype: init_params is ignored
        "HostSolver",  # the user's own host solve: its dtype is the user's
        "IterativeRefinement",  # a linear system (A, b), no user objective (as the QPs)
        "AndersonWrapper",  # the objective is the wrapped solver's, swept on its own
    }
    assert public - without == {name.split("-")[0] for name in NAMES}


def _case(solver, leading, init, theta):
    """(x*, state, dx*/dθ) of one solver, the Jacobian in reverse mode (as ``jax.jacrev``)."""
    x, vjp, state = jax.vjp(lambda t: solver.run(init, *leading, t), theta, has_aux=True)
    (jacobian,) = jax.vmap(vjp)(jnp.eye(x.size, dtype=x.dtype))
    return x, state, jacobian


@functools.cache
def _results(pair):
    """Every solver of the sweep for one dtype pair in one compiled program: name -> (x*, state,
    dx*/dθ), or the exception of that solver."""
    params_dtype, fun_dtype, tol, *_ = PAIRS[pair]
    cases = {}
    for name, (solver, leading, (_, _, theta)) in _catalog(fun_dtype, tol).items():
        init = np.full(3, 1 / 3) if name == "MirrorDescent" else np.zeros(2)
        args = (jnp.asarray(init, params_dtype), jnp.asarray(theta, params_dtype))
        cases[name] = (functools.partial(_case, solver, leading), args)
    return run_together(cases, _quiet)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        # A float32 function gives float32-accurate matrix-vector products: the float64 linear
        # system of the derivative is then solved to float32 accuracy only, and says so.
        warnings.filterwarnings("ignore", message=".*linear system of an implicit derivative")
        yield


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("name", NAMES)
def test_objective_dtype_family_every_solver(name, pair):
    params_dtype, _, _, x_atol, j_atol = PAIRS[pair]
    solution, jacobian = _catalog(jnp.float64, 1e-6)[name][2][:2]
    x, state, jac = unpack(_results(pair)[name])
    assert x.dtype == params_dtype
    assert jac.dtype == params_dtype
    if getattr(state, "error", None) is not None:
        assert np.result_type(state.error) == params_dtype, name
    if hasattr(state, "converged") and not name.startswith("Scipy"):
        # (SciPy's stopping tests are its own: on a float32-rounded function MINPACK's hybr and
        # minimize's line search report a loss of precision; the solution is checked below.)
        assert bool(state.converged), name
    np.testing.assert_allclose(x, solution, atol=x_atol)
    np.testing.assert_allclose(jac, jacobian, atol=j_atol)


# ---------------------------------------------------------------------------------------------
# Family "data dtype": the solvers whose problem is data (a QP's Q, c, A, b, G, h; a linear
# system's A, b) solve in the data's dtype, whatever the dtype of a warm start: float32 data
# gives a float32 solution, float64 data with a float32 warm start a float64 one. (A float32
# start of float64 data made EqualityConstrainedQP's and IterativeRefinement's loop carries
# change type: a TypeError from inside lax.)
#
# The problem: min ½ xᵀHx − θᵀx s.t. 1ᵀx = s (s = 1ᵀH⁻¹θ, inactive at the unconstrained
# solution x* = H⁻¹θ: ν = 0) and −10 ≤ x ≤ 10 (inactive), or the system H x = θ; dx*/dθ = H⁻¹
# (the equality constraint has a fixed s, so for the constrained QPs dx*/dθ is the projection
# of H⁻¹ onto 1ᵀu = 0 in H's metric: computed from the KKT matrix below).

H3 = np.array([[1.0, 0.2, 0.0], [0.2, 0.8, 0.1], [0.0, 0.1, 1.2]])
THETA3 = np.array([0.3, -0.5, 0.8])
_SUM = float(np.ones(3) @ np.linalg.solve(H3, THETA3))
_KKT = np.block([[H3, np.ones((3, 1))], [np.ones((1, 3)), np.zeros((1, 1))]])
_CONSTRAINED_JACOBIAN = np.linalg.inv(_KKT)[:3, :3]  # d x*/d θ with 1ᵀx = s fixed


def _data_solvers(dtype, tol):
    """name -> (θ ↦ x*(θ) of the data in ``dtype`` from a start given or not, constrained?)."""
    Q = jnp.asarray(H3, dtype)
    A, b = jnp.ones((1, 3), dtype), jnp.asarray([_SUM], dtype)
    G, h = jnp.concatenate([jnp.eye(3), -jnp.eye(3)]).astype(dtype), jnp.full(6, 10.0, dtype)
    box = (jnp.full(3, -10.0, dtype), jnp.full(3, 10.0, dtype))

    def qp(solver, start_parts):
        def solve(theta, start):
            init = None if start is None else (start, *start_parts(start))
            return solver.run(init, (Q, -theta.astype(dtype)), (A, b), (G, h)).params.primal

        return solve

    return {
        "EqualityConstrainedQP": (
            lambda t, start: (
                solvers.EqualityConstrainedQP(tol=tol)
                .run(
                    None if start is None else (start, jnp.zeros(1, start.dtype), None),
                    (Q, -t.astype(dtype)),
                    (A, b),
                )
                .params.primal
            ),
            True,
        ),
        "OSQP": (
            qp(
                solvers.OSQP(tol=tol, maxiter=20000),
                lambda s: (jnp.zeros(1, s.dtype), jnp.zeros(6, s.dtype)),
            ),
            True,
        ),
        "BoxOSQP": (
            lambda t, start: (
                solvers.BoxOSQP(tol=tol, maxiter=20000)
                .run(
                    None if start is None else (start, None, None),
                    (Q, -t.astype(dtype)),
                    jnp.concatenate([A, jnp.eye(3, dtype=dtype)]),
                    (jnp.concatenate([b, box[0]]), jnp.concatenate([b, box[1]])),
                )
                .params.primal[0]
            ),
            True,
        ),
        "BoxCDQP": (
            lambda t, start: (
                solvers.BoxCDQP(tol=tol)
                .run(jnp.zeros(3, dtype) if start is None else start, (Q, -t.astype(dtype)), box)
                .params
            ),
            False,
        ),
        "IterativeRefinement": (
            lambda t, start: (
                solvers.IterativeRefinement(tol=tol).run(start, A=Q, b=t.astype(dtype)).params
            ),
            False,
        ),
        "CvxpyQP": (
            lambda t, start: (
                solvers.CvxpyQP(
                    "CLARABEL", solver_options={"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12}
                )
                .run(None, (Q, -t.astype(dtype)), (A, b), (G, h))
                .params.primal
            ),
            True,
        ),
    }


# (data dtype, warm start dtype or None, tol, solution atol, Jacobian atol)
DATA_PAIRS = {
    "float32-data": (jnp.float32, None, 1e-5, 3e-5, 3e-5),
    "float64-data-float32-start": (jnp.float64, jnp.float32, 1e-10, 1e-8, 1e-7),
}


def test_data_dtype_family_catalog_has_every_data_solver():
    assert set(_data_solvers(jnp.float64, 1e-6)) == {
        "EqualityConstrainedQP",
        "OSQP",
        "BoxOSQP",
        "BoxCDQP",
        "IterativeRefinement",
        "CvxpyQP",
    }


@functools.cache
def _data_results(pair):
    dtype, start_dtype, tol, *_ = DATA_PAIRS[pair]
    cases = {}
    for name, (solve, _) in _data_solvers(dtype, tol).items():
        start = None if start_dtype is None else jnp.zeros(3, start_dtype)

        def case(theta, solve=solve, start=start):
            return solve(theta, start), jax.jacrev(solve)(theta, start)

        cases[name] = (case, (jnp.asarray(THETA3, dtype),))
    return run_together(cases, _quiet)


@pytest.mark.parametrize("pair", list(DATA_PAIRS))
@pytest.mark.parametrize("name", list(_data_solvers(jnp.float64, 1e-6)))
def test_data_dtype_family_every_data_solver(name, pair):
    if name == "CvxpyQP":
        pytest.importorskip("cvxpy")
    dtype, _, _, x_atol, j_atol = DATA_PAIRS[pair]
    constrained = _data_solvers(jnp.float64, 1e-6)[name][1]
    x, jacobian = unpack(_data_results(pair)[name])
    assert x.dtype == dtype, (name, x.dtype)
    np.testing.assert_allclose(x, np.linalg.solve(H3, THETA3), atol=x_atol)
    expected = _CONSTRAINED_JACOBIAN if constrained else np.linalg.inv(H3)
    np.testing.assert_allclose(jacobian, expected, atol=j_atol)
