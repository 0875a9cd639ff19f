"""JAXopt 0.8.5's calling conventions, side by side with jaxopt on the same inputs (issue 13).

- ``init_state(init_params=...)`` and ``update(params=..., state=...)`` by keyword, on every
  iterative solver, equal to the positional calls (JAXopt's own examples call them so).
- ``solver.optimality_fun``: the residual F whose root is the solution (T(x) − x for the
  fixed-point solvers), equal to JAXopt's; ``l2_optimality_error`` its norm.
- ``Bisection``: the bad-bracket error from ``init_state``; ``init_params`` / ``params`` ignored.
- ``verbose``: one line per iteration on every iterative solver.
"""

import dataclasses
import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PlainSGD

from implicitdiff import custom_fixed_point as implicitdiff_custom_fixed_point
from implicitdiff import custom_root as implicitdiff_custom_root
from implicitdiff import linear_solve, projections, prox, solvers
from implicitdiff.solvers import KKTSolution, _base

jaxopt = pytest.importorskip("jaxopt")

A = jnp.array([0.2, 0.3, 0.5])
LOW, HIGH = jnp.full(3, -10.0), jnp.full(3, 10.0)
Q = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.5, 0.2], [0.0, 0.2, 1.0]])
C = jnp.array([-1.0, 0.4, 0.3])


def smooth(x, a):
    """f(x, a) = Σ ½(x − a)² + ¼(x − a)⁴, minimized at x = a."""
    return jnp.sum(0.5 * (x - a) ** 2 + 0.25 * (x - a) ** 4)


def root(x, a):
    """G(x, a) = (x − a) + 0.1 (x − a)³, zero at x = a."""
    return (x - a) + 0.1 * (x - a) ** 3


def contraction(x, a):
    """T(x, a) = ½ x + ½ a + 0.05 sin(x − a), fixed at x = a."""
    return 0.5 * x + 0.5 * a + 0.05 * jnp.sin(x - a)


def scalar_root(x, a):
    return x - a + 0.1 * (x - a) ** 3


def simplex_objective(p, a):
    return 0.5 * jnp.sum((p - a) ** 2)


def column_smooth(x, a):
    return smooth(x[:, 0], a)


def block_none(x, hyperparams, scaling=1.0):
    return x


def scaled_matvec(A_, x):
    return A_ * x


# name: (solver, init_params, positional arguments after it, the same by keyword)
CASES = {
    "GradientDescent": (solvers.GradientDescent(smooth), jnp.zeros(3), (A,), {"a": A}),
    "LBFGS": (solvers.LBFGS(smooth), jnp.zeros(3), (A,), {"a": A}),
    "BFGS": (solvers.BFGS(smooth), jnp.zeros(3), (A,), {"a": A}),
    "NonlinearCG": (solvers.NonlinearCG(smooth), jnp.zeros(3), (A,), {"a": A}),
    "Newton": (solvers.Newton(smooth), jnp.zeros(3), (A,), {"a": A}),
    "PolyakSGD": (solvers.PolyakSGD(smooth), jnp.zeros(3), (A,), {"a": A}),
    "ArmijoSGD": (solvers.ArmijoSGD(smooth), jnp.zeros(3), (A,), {"a": A}),
    "OptaxSolver": (solvers.OptaxSolver(smooth, PlainSGD(0.2)), jnp.zeros(3), (A,), {"a": A}),
    "LBFGSB": (
        solvers.LBFGSB(smooth),
        jnp.zeros(3),
        ((LOW, HIGH), A),
        {"bounds": (LOW, HIGH), "a": A},
    ),
    "ProximalGradient": (
        solvers.ProximalGradient(smooth, prox.l1),
        jnp.zeros(3),
        (0.1, A),
        {"hyperparams_prox": 0.1, "a": A},
    ),
    "ProjectedGradient": (
        solvers.ProjectedGradient(smooth, projections.box),
        jnp.zeros(3),
        ((LOW, HIGH), A),
        {"hyperparams_proj": (LOW, HIGH), "a": A},
    ),
    "MirrorDescent": (
        solvers.MirrorDescent(simplex_objective),
        jnp.ones(3) / 3,
        (None, A),
        {"hyperparams_proj": None, "a": A},
    ),
    "BlockCoordinateDescent": (
        solvers.BlockCoordinateDescent(column_smooth, block_none),
        jnp.zeros((3, 1)),
        (None, A),
        {"hyperparams_prox": None, "a": A},
    ),
    "FixedPointIteration": (
        solvers.FixedPointIteration(contraction),
        jnp.zeros(3),
        (A,),
        {"a": A},
    ),
    "AndersonAcceleration": (
        solvers.AndersonAcceleration(contraction),
        jnp.zeros(3),
        (A,),
        {"a": A},
    ),
    "AndersonWrapper": (
        solvers.AndersonWrapper(solvers.GradientDescent(smooth, stepsize=0.3)),
        jnp.zeros(3),
        (A,),
        {"a": A},
    ),
    "Broyden": (solvers.Broyden(root), jnp.zeros(3), (A,), {"a": A}),
    "GaussNewton": (solvers.GaussNewton(root), jnp.zeros(3), (A,), {"a": A}),
    "LevenbergMarquardt": (solvers.LevenbergMarquardt(root), jnp.zeros(3), (A,), {"a": A}),
    "Bisection": (
        solvers.Bisection(scalar_root, -10.0, 10.0),
        None,
        (jnp.asarray(0.3),),
        {"a": jnp.asarray(0.3)},
    ),
    "EqualityConstrainedQP": (
        solvers.EqualityConstrainedQP(),
        KKTSolution(jnp.zeros(3), jnp.zeros(1), None),
        ((Q, C), (jnp.ones((1, 3)), jnp.ones(1))),
        {"params_obj": (Q, C), "params_eq": (jnp.ones((1, 3)), jnp.ones(1))},
    ),
    "BoxCDQP": (
        solvers.BoxCDQP(),
        jnp.zeros(3),
        ((Q, C), (LOW / 20, HIGH / 20)),
        {"params_obj": (Q, C), "params_ineq": (LOW / 20, HIGH / 20)},
    ),
    "OSQP": (
        solvers.OSQP(),
        KKTSolution(jnp.zeros(3), None, jnp.zeros(3)),
        ((Q, C), None, (jnp.eye(3), HIGH / 20)),
        {"params_obj": (Q, C), "params_ineq": (jnp.eye(3), HIGH / 20)},
    ),
    "BoxOSQP": (
        solvers.BoxOSQP(),
        KKTSolution((jnp.zeros(3), jnp.zeros(3)), jnp.zeros(3), (jnp.zeros(3), jnp.zeros(3))),
        ((Q, C), jnp.eye(3), (LOW / 20, HIGH / 20)),
        {"params_obj": (Q, C), "params_eq": jnp.eye(3), "params_ineq": (LOW / 20, HIGH / 20)},
    ),
    "IterativeRefinement": (
        solvers.IterativeRefinement(
            scaled_matvec, inner_solve=functools.partial(linear_solve.lu, ridge=0.5)
        ),
        jnp.zeros(3),
        (jnp.full(3, 2.0), A),
        {"A": jnp.full(3, 2.0), "b": A},
    ),
}

ITERATIVE = sorted(
    name
    for name, value in vars(solvers).items()
    if inspect.isclass(value)
    and issubclass(value, _base.IterativeSolver)
    and not inspect.isabstract(value)
)


def test_every_iterative_solver_is_swept():
    assert set(ITERATIVE) == set(CASES)


@pytest.mark.parametrize("name", ITERATIVE)
def test_init_state_and_update_by_keyword(name):
    """JAXopt's keyword names (init_params, params, state) give the positional result; one
    jitted program per solver; naming one twice is a TypeError naming it, as in JAXopt."""
    solver, x0, args, kwargs = CASES[name]

    @jax.jit
    def both(x0, args, kwargs):
        state = solver.init_state(x0, *args)
        positional = solver.update(x0 if name != "Bisection" else None, state, *args)
        state_k = solver.init_state(init_params=x0, **kwargs)
        keyword = solver.update(params=x0, state=state_k, **kwargs)
        mixed = solver.update(x0, state=state_k, **kwargs)
        return state, positional, state_k, keyword, mixed

    state, positional, state_k, keyword, mixed = both(x0, args, kwargs)
    for ours, theirs in [(state_k, state), (keyword, positional), (mixed, positional)]:
        jax.tree_util.tree_map(
            lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12, atol=0), ours, theirs
        )
    assert int(keyword.state.iter_num) == 1
    with pytest.raises(TypeError, match="multiple values for argument 'state'"):
        solver.update(x0, state, *args, state=state)
    with pytest.raises(TypeError, match="'state'"):
        solver.update(params=x0, **kwargs)  # missing: named
    # the signature shown is JAXopt's: no positional-only marker
    for method in (solver.init_state, solver.update):
        kinds = {p.kind for p in inspect.signature(method).parameters.values()}
        assert inspect.Parameter.POSITIONAL_ONLY not in kinds


def keyword_state(x, a, *, state):
    """A user function with a keyword-only argument named like update's own: run binds it to
    the function (no collision); update(..., state=) collides, as in JAXopt."""
    return smooth(x, a * state)


def test_user_keyword_named_state_goes_to_the_function_in_run():
    solver = solvers.LBFGS(keyword_state, tol=1e-10)
    x, _ = jax.jit(solver.run)(jnp.zeros(3), A, state=2.0)
    np.testing.assert_allclose(x, 2.0 * A, rtol=1e-8)
    theirs = jaxopt.LBFGS(keyword_state, tol=1e-10)
    with pytest.raises(TypeError, match="multiple values for argument 'state'"):
        theirs.update(jnp.zeros(3), theirs.init_state(jnp.zeros(3), A, state=2.0), A, state=2.0)
    with pytest.raises(TypeError, match="multiple values for argument 'state'"):
        solver.update(jnp.zeros(3), solver.init_state(jnp.zeros(3), A, state=2.0), A, state=2.0)


# -- optimality_fun and l2_optimality_error against JAXopt's --------------------------------

X = jnp.array([0.7, -0.4, 1.3])


def quadratic(x, Q, c):
    return 0.5 * x @ Q @ x + c @ x


def nonlinear_residual(x, Q, c):
    return Q @ x + c - jnp.sin(x)


def tanh_map(x, Q, c):
    return 0.5 * jnp.tanh(Q @ x) + c


BOX = (-0.5 * jnp.ones(3), 0.5 * jnp.ones(3))

PAIRS = {
    "GradientDescent": (solvers.GradientDescent(quadratic), jaxopt.GradientDescent(quadratic)),
    "LBFGS": (solvers.LBFGS(quadratic), jaxopt.LBFGS(quadratic)),
    "ProximalGradient": (
        solvers.ProximalGradient(quadratic, prox.l1),
        jaxopt.ProximalGradient(quadratic, jaxopt.prox.prox_lasso),
    ),
    "FixedPointIteration": (
        solvers.FixedPointIteration(tanh_map),
        jaxopt.FixedPointIteration(tanh_map),
    ),
    "GaussNewton": (
        solvers.GaussNewton(nonlinear_residual),
        jaxopt.GaussNewton(nonlinear_residual),
    ),
    "BoxCDQP": (solvers.BoxCDQP(), jaxopt.BoxCDQP()),
}
PAIR_ARGS = {"ProximalGradient": (0.3, Q, C), "BoxCDQP": ((Q, C), BOX)}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_optimality_fun_is_jaxopts(name):
    ours, theirs = PAIRS[name]
    args = PAIR_ARGS.get(name, (Q, C))

    @jax.jit
    def values(x):
        return (
            ours.optimality_fun(x, *args),
            theirs.optimality_fun(x, *args),
            ours.l2_optimality_error(x, *args),
            theirs.l2_optimality_error(x, *args),
        )

    mine, their, my_error, their_error = values(X)
    assert float(jnp.linalg.norm(their)) > 0.1  # away from the solution
    np.testing.assert_allclose(mine, their, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(my_error, their_error, rtol=1e-12)
    np.testing.assert_allclose(my_error, jnp.linalg.norm(mine), rtol=1e-12)
    # ... and zero at the solver's solution
    solution, _ = ours.run(X, *args)
    assert float(ours.l2_optimality_error(solution, *args)) < 1e-2


def test_optimality_fun_by_jaxopts_keyword_names():
    """JAXopt names the candidate ``params`` (GD, LBFGS, ...) or ``sol`` (ProximalGradient,
    BoxCDQP, ...); the fixed-point residual is T(x) − x."""
    gd, fp = PAIRS["GradientDescent"][0], PAIRS["FixedPointIteration"][0]
    np.testing.assert_allclose(gd.optimality_fun(params=X, Q=Q, c=C), Q @ X + C, rtol=1e-14)
    np.testing.assert_allclose(fp.optimality_fun(X, Q, C), tanh_map(X, Q, C) - X, rtol=1e-14)
    pg = PAIRS["ProximalGradient"][0]
    np.testing.assert_allclose(
        pg.optimality_fun(sol=X, hyperparams_prox=0.3, Q=Q, c=C),
        pg.optimality_fun(X, 0.3, Q, C),
        rtol=1e-14,
    )
    assert gd.l2_optimality_error(params=X, Q=Q, c=C) == gd.l2_optimality_error(X, Q, C)


def test_box_cdqp_error_is_jaxopts_residual_not_the_scaled_one():
    """BoxCDQP: optimality_fun is JAXopt's clip(x − (Qx + c), l, u) − x; the condition that
    the derivative goes through stays the D⁻¹-scaled fixed point (same roots)."""
    solver, x = solvers.BoxCDQP(), jnp.array([0.1, -0.2, 0.05])
    expected = jnp.clip(x - (Q @ x + C), *BOX) - x
    np.testing.assert_allclose(solver.optimality_fun(x, (Q, C), BOX), expected, rtol=1e-14)
    kind, T = solver.optimality()
    scaled = T(x, (Q, C), BOX) - x
    assert kind == "fixed_point" and float(jnp.max(jnp.abs(scaled - expected))) > 1e-2


def test_osqp_error_measures_equality_feasibility_jaxopts_does_not():
    """OSQP: ours is ‖(Qx + c + Aᵀν + Gᵀλ, Ax − b, λ ∘ (Gx − h))‖; JAXopt's (computed on its
    box form) weighs Ax − b by |ν|, so it is 0 at the unconstrained minimizer with ν = λ = 0,
    which violates Ax = b (documented in docs/migrating_from_jaxopt.md)."""
    E, b = jnp.ones((1, 3)), jnp.ones(1)
    G, h = jnp.eye(3), jnp.full(3, 10.0)
    x = -jnp.linalg.solve(Q, C)
    kkt = KKTSolution(x, jnp.zeros(1), jnp.zeros(3))
    theirs = jaxopt.OSQP().l2_optimality_error(kkt, (Q, C), (E, b), (G, h))
    ours = solvers.OSQP().l2_optimality_error(kkt, (Q, C), (E, b), (G, h))
    assert float(theirs) < 1e-12
    np.testing.assert_allclose(ours, jnp.abs(E @ x - b)[0], rtol=1e-12)
    assert float(ours) > 0.1


# -- Bisection -------------------------------------------------------------------------------


def cube_root(x, a):
    return x**3 - a


def test_bisection_init_state_and_update_ignore_params_as_jaxopt():
    ours = solvers.Bisection(cube_root, 0.0, 3.0)
    theirs = jaxopt.Bisection(cube_root, 0.0, 3.0)
    for solver in (ours, theirs):
        state = solver.init_state(None, 2.0)
        for _ in range(3):
            _, state = solver.update(None, state, 2.0)
        np.testing.assert_allclose([state.low, state.high], [1.125, 1.5], rtol=1e-15)
    # ours: the iterate is the bracket's midpoint whatever params says
    state = ours.init_state(None, 2.0)
    np.testing.assert_allclose(
        ours.update(123.0, state, 2.0).params, ours.update(None, state, 2.0).params
    )
    x, _ = ours.run(None, 2.0)
    np.testing.assert_allclose(x, 2.0 ** (1 / 3), rtol=1e-6)


def test_bisection_bad_bracket_raises_in_init_state_as_jaxopt():
    with pytest.raises(ValueError, match="not contained"):
        jaxopt.Bisection(cube_root, 0.0, 3.0).init_state(None, -1.0)
    solver = solvers.Bisection(cube_root, 0.0, 3.0, on_failure="ignore")
    with pytest.raises(ValueError, match=r"bracket \[lower=0.0, upper=3.0\] is invalid"):
        solver.init_state(None, -1.0)
    with pytest.raises(ValueError, match="invalid"):
        solver.run(None, -1.0)
    # traced: the flag in the state instead
    state = jax.jit(solver.init_state)(None, -1.0)
    assert not bool(state.valid_bracket)
    quiet = solvers.Bisection(cube_root, 0.0, 3.0, check_bracket=False)
    assert not bool(quiet.init_state(None, -1.0).valid_bracket)


# -- JAXopt's keyword names of the functions ------------------------------------------------

V = jnp.array([0.9, -0.3, 0.5, 1.7, -1.2])
PJ = jaxopt.projection

# (our function, its JAXopt keyword, JAXopt's function): the same value by JAXopt's keyword
KEYWORD_PROJECTIONS = [
    (projections.simplex, "value", PJ.projection_simplex),
    (projections.l1_sphere, "value", PJ.projection_l1_sphere),
    (projections.l2_sphere, "value", PJ.projection_l2_sphere),
    (projections.l1_ball, "max_value", PJ.projection_l1_ball),
    (projections.l2_ball, "max_value", PJ.projection_l2_ball),
    (projections.linf_ball, "max_value", PJ.projection_linf_ball),
    (projections.hypercube, "unit", PJ.projection_hypercube),
]


def test_projections_take_jaxopts_keywords():
    @jax.jit
    def values(v):
        ours = [f(v, **{kw: 0.7}) for f, kw, _ in KEYWORD_PROJECTIONS]
        theirs = [g(v, **{kw: 0.7}) for _, kw, g in KEYWORD_PROJECTIONS]
        positional = [f(v, 0.7) for f, _, _ in KEYWORD_PROJECTIONS]
        return ours, theirs, positional

    ours, theirs, positional = values(V)
    for mine, their, pos in zip(ours, theirs, positional, strict=True):
        np.testing.assert_allclose(mine, their, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(mine, pos, rtol=0, atol=0)
    assert float(jnp.sum(ours[0])) == pytest.approx(0.7)  # value= set the simplex's size
    with pytest.raises(TypeError, match=r"value= \(JAXopt's name for it\)"):
        projections.simplex(V, 0.5, value=0.7)


def test_sparse_simplex_in_jaxopts_call():
    theirs = PJ.projection_sparse_simplex(V, 2)
    np.testing.assert_allclose(projections.sparse_simplex(V, 2), theirs, rtol=1e-12)
    np.testing.assert_allclose(projections.sparse_simplex(V, (1.0, 2)), theirs, rtol=1e-12)
    for call in [
        lambda f: f(V, 3, False, 2.0),
        lambda f: f(V, max_nz=3, value=2.0),
        lambda f: f(V, 3, use_approx_max_nz=True, value=2.0),
    ]:
        np.testing.assert_allclose(
            call(projections.sparse_simplex), call(PJ.projection_sparse_simplex), rtol=1e-12
        )
    np.testing.assert_allclose(jnp.sum(projections.sparse_simplex(V, 3, value=2.0)), 2.0)
    with pytest.raises(TypeError, match="missing max_nz"):
        projections.sparse_simplex(V)
    with pytest.raises(TypeError, match="both given"):
        projections.sparse_simplex(V, (1.0, 2), value=2.0)


def test_check_feasible_and_transport_options():
    section = (jnp.zeros(5), jnp.ones(5), jnp.ones(5), 1.5)
    for check in (True, False):
        np.testing.assert_allclose(
            projections.box_section(V, section, check_feasible=check),
            PJ.projection_box_section(V, section, check_feasible=check),
            atol=1e-6,  # JAXopt's multiplier is found by a bisection to about 2e-7
        )
    np.testing.assert_allclose(projections.box_section(V, section), [0.45, 0, 0.05, 1, 0])
    E, G = jnp.array([[1.0, 1.0, 0.0, 0.0, 0.0]]), jnp.ones((1, 5))
    poly = (E, jnp.array([0.5]), G, jnp.ones(1))
    np.testing.assert_allclose(
        projections.polyhedron(V, poly, check_feasible=True),
        PJ.projection_polyhedron(V, poly, check_feasible=True),
        atol=1e-3,  # JAXopt's OSQP stops at tol 1e-3
    )
    np.testing.assert_allclose(
        projections.polyhedron(V, poly, False), projections.polyhedron(V, poly)
    )
    X = jnp.array([[2.0, 0.0], [1.0, 0.5]])
    np.testing.assert_allclose(
        projections.birkhoff_polytope(X, use_semi_dual=True, make_solver=None),
        PJ.projection_birkhoff(X, use_semi_dual=True),
        atol=1e-6,
    )
    with pytest.raises(TypeError, match="use_semi_dual=False is not supported"):
        projections.transport_polytope(X, (jnp.ones(2), jnp.ones(2)), use_semi_dual=False)
    with pytest.raises(TypeError, match=r"make_solver is not an option here.*maxiter="):
        projections.birkhoff_polytope(X, make_solver=lambda: None)
    with pytest.raises(TypeError, match="make_solver"):  # JAXopt's positional make_solver
        projections.kl_birkhoff_polytope(X, lambda: None)
    with pytest.raises(TypeError, match="check_feasible must be a bool"):
        projections.box_section(V, section, check_feasible="yes")


PROX_KEYWORDS = [
    (prox.l1, "l1reg", jaxopt.prox.prox_lasso),
    (prox.non_negative_l1, "l1reg", jaxopt.prox.prox_non_negative_lasso),
    (prox.ridge, "l2reg", jaxopt.prox.prox_ridge),
    (prox.non_negative_ridge, "l2reg", jaxopt.prox.prox_non_negative_ridge),
    (prox.group_lasso, "l2reg", jaxopt.prox.prox_group_lasso),
]


def test_prox_takes_jaxopts_keywords():
    @jax.jit
    def values(v):
        ours = [f(v, scaling=0.8, **{kw: 0.6}) for f, kw, _ in PROX_KEYWORDS]
        theirs = [g(v, scaling=0.8, **{kw: 0.6}) for _, kw, g in PROX_KEYWORDS]
        return ours, theirs

    ours, theirs = values(V)
    for mine, their in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, their, rtol=1e-12, atol=1e-15)
    assert float(jnp.max(jnp.abs(ours[0] - prox.l1(V, 1.0, 0.8)))) > 1e-3  # l1reg was used
    with pytest.raises(TypeError, match=r"l2reg= \(JAXopt's name for it\)"):
        prox.ridge(V, 0.5, l2reg=0.6)


def ridge_condition(x, lam, X, y):
    return X.T @ (X @ x - y) + lam * x


XR = jnp.array([[1.0, 0.5], [0.2, 1.0], [0.3, -0.4]])
YR = jnp.array([1.0, 2.0, -1.0])


def test_custom_root_reference_signature_as_jaxopt():
    """Keywords of the solver bound to the reference signature and passed to F by position:
    F's own names (lam, X, y) differ from the solver's (l2, data, target)."""

    def F(x, a, b, c):  # positional names unrelated to the call's keywords
        return ridge_condition(x, a, b, c)

    def reference(init, l2, data, target):
        del init, l2, data, target

    def solver(init, l2, data, target):
        K = data.T @ data + l2 * jnp.eye(2)
        return jnp.linalg.solve(K, data.T @ target)

    ours = implicitdiff_custom_root(F, reference_signature=reference)(solver)
    theirs = jaxopt.implicit_diff.custom_root(F, reference_signature=reference)(solver)
    sig = inspect.signature(reference)

    def grads(decorated):
        return jax.grad(lambda l2: jnp.sum(decorated(None, l2=l2, data=XR, target=YR)))(0.3)

    np.testing.assert_allclose(grads(ours), grads(theirs), rtol=1e-10)
    closed = jax.grad(lambda l2: jnp.sum(solver(None, l2, XR, YR)))(0.3)
    np.testing.assert_allclose(grads(ours), closed, rtol=1e-10)
    # a Signature object works too
    ours_sig = implicitdiff_custom_root(F, reference_signature=sig)(solver)
    np.testing.assert_allclose(grads(ours_sig), closed, rtol=1e-10)


def test_custom_fixed_point_reference_signature_as_jaxopt():
    """T(x, u, v) = ½ x + u v, x* = 2 u v: the call's keywords (scale, shift) bound by the
    reference signature; d x*/d scale = 2 shift."""

    def T(x, u, v):
        return 0.5 * x + u * v

    def reference(init, scale, shift):
        del init, scale, shift

    def solver(init, scale, shift):
        return 2.0 * scale * shift + 0.0 * init

    def grad(decorator):
        decorated = decorator(T, reference_signature=reference)(solver)
        return jax.grad(lambda s: decorated(jnp.zeros(()), scale=s, shift=1.5))(0.7)

    ours = grad(implicitdiff_custom_fixed_point)
    np.testing.assert_allclose(ours, 3.0, rtol=1e-12)
    np.testing.assert_allclose(ours, grad(jaxopt.implicit_diff.custom_fixed_point), rtol=1e-12)


def test_tree_is_leaf_and_gmres_solve_method_as_jaxopt():
    from implicitdiff import tree

    x = {"a": (1.0, 2.0), "b": 3.0}
    y = {"a": (4.0, 5.0), "b": 6.0}

    def pair(node):
        return isinstance(node, tuple)

    for op in ("add", "sub", "mul", "div"):
        theirs = getattr(jaxopt.tree_util, f"tree_{op}")(x, y, is_leaf=lambda n: n is None)
        assert getattr(tree, op)(x, y, is_leaf=lambda n: n is None) == theirs
    # a tuple taken as a leaf: + concatenates it (JAX's tree_map semantics, as JAXopt's)
    expected = {"a": (1.0, 2.0, 4.0, 5.0), "b": 9.0}
    assert tree.add(x, y, is_leaf=pair) == jaxopt.tree_util.tree_add(x, y, is_leaf=pair) == expected
    with pytest.raises(TypeError):
        tree.mul(x, y, is_leaf=pair)
    M = jnp.array([[3.0, 1.0], [0.5, 2.0]])
    b = jnp.array([1.0, -1.0])
    for method in ("batched", "incremental"):
        mine = linear_solve.solve_gmres(lambda v: M @ v, b, solve_method=method, tol=1e-12)
        their = jaxopt.linear_solve.solve_gmres(lambda v: M @ v, b, solve_method=method, tol=1e-12)
        np.testing.assert_allclose(mine, their, rtol=1e-9)
    with pytest.raises(ValueError, match="solve_method"):
        linear_solve.solve_gmres(lambda v: M @ v, b, solve_method="qr")


# -- solve= where JAXopt's solve is the inner solver -----------------------------------------


@pytest.mark.parametrize(
    ("cls", "inner"),
    [("EqualityConstrainedQP", "kkt_solve"), ("IterativeRefinement", "inner_solve")],
)
def test_solve_where_jaxopt_means_the_inner_solver_is_refused(cls, inner):
    """JAXopt's solve= is the KKT / inner solver of these two; here solve= is the implicit
    derivative's in every solver: refused, naming both alternatives."""
    assert "solve" in inspect.signature(getattr(jaxopt, cls)).parameters
    with pytest.raises(TypeError, match=rf"{inner}= for JAXopt's solve=.*implicit_diff_solve="):
        getattr(solvers, cls)(solve=linear_solve.lu)
    solver = getattr(solvers, cls)(**{inner: linear_solve.lu, "implicit_diff_solve": "lu"})
    assert getattr(solver, inner) is linear_solve.lu and solver.solve is None


# -- MirrorDescent's optional hyperparams_proj; verbose on every iterative solver -------------


def test_mirror_descent_error_without_hyperparams_proj():
    solver = solvers.MirrorDescent(simplex_objective, stepsize=0.5)
    x = jnp.array([0.5, 0.3, 0.2])
    expected = solver.l2_optimality_error(x, None, A)
    assert float(expected) > 1e-3
    for value in (
        solver.l2_optimality_error(x, a=A),
        solver.l2_optimality_error(x, hyperparams_proj=None, a=A),
        jnp.linalg.norm(solver.optimality_fun(x, a=A)),
    ):
        np.testing.assert_allclose(value, expected, rtol=1e-14)
    projected = solvers.ProjectedGradient(smooth, projections.non_negative)
    np.testing.assert_allclose(
        projected.l2_optimality_error(X, a=A), projected.l2_optimality_error(X, None, A)
    )


_LINE = re.compile(r"INFO: implicitdiff\.(\w+): iter (\d+) error (\S+)")


@pytest.mark.parametrize("name", ITERATIVE)
def test_verbose_prints_each_iteration_on_every_solver(capsys, name):
    """One line per iteration, numbered 1..state.iter_num, the last with state.error."""
    solver, x0, args, _ = CASES[name]
    solver = dataclasses.replace(solver, verbose=True, maxiter=25, on_failure="ignore")
    _, state = jax.jit(solver.run)(x0, *args)
    jax.effects_barrier()
    lines = [m.groups() for m in map(_LINE.search, capsys.readouterr().out.splitlines()) if m]
    assert {n for n, _, _ in lines} <= {name}
    n = int(state.iter_num)
    assert n >= 1
    assert [int(i) for _, i, _ in lines] == list(range(1, n + 1))
    if not bool(getattr(state, "polished", False)):  # (polishing, after the loop, sets error)
        np.testing.assert_allclose(float(lines[-1][2]), float(state.error), rtol=1e-6)
