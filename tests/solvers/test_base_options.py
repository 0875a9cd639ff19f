"""JAXopt's options of every solver (issue 13): ``l2_optimality_error``, ``verbose``, ``jit=False``
and ``has_aux``, side by side with JAXopt 0.8.5 where it applies."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import re

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import problems
import pytest
from test_matrix import SOLVERS

from implicitdiff import solvers as S

# ---------------------------------------------------------------------------------------------
# Module-level problem functions (one compilation each).

_X = np.random.RandomState(0).randn(6, 3)
_Y = np.random.RandomState(1).randn(6)


def ridge_fun(w, lam):
    return 0.5 * jnp.sum((_X @ w - _Y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def ridge_residual(w, lam):
    return jnp.concatenate([_X @ w - _Y, jnp.sqrt(lam) * w])


def cos_map(x, theta):
    return 0.5 * jnp.cos(x) + theta


def cos_root(x, theta):
    return 0.5 * jnp.cos(x) + theta - x


def cos_map_numpy(x, theta):
    """The same map, NumPy only (it cannot be traced)."""
    return 0.5 * np.cos(np.asarray(x)) + np.asarray(theta)


THETA = jnp.linspace(-0.4, 0.8, 3)
LAM = 0.7

# ---------------------------------------------------------------------------------------------
# 1. l2_optimality_error


class _Recorded(Exception):
    pass


def _run_arguments(name: str):
    """(solver, problem, init_params, args) of the registry's line ``name`` on its first problem:
    the solve map is called once with a ``run`` that records its arguments and stops."""
    make, problem_names = SOLVERS[name]
    p = problems.get(problem_names[0])
    solve = make(p)
    solver = inspect.getclosurevars(solve).nonlocals["solver"]
    seen = {}

    def record(init_params, *args, **kwargs):
        seen.update(init=init_params, args=args, kwargs=kwargs)
        raise _Recorded

    object.__setattr__(solver, "run", record)
    with pytest.raises(_Recorded):
        solve(jnp.asarray(p.theta))
    object.__delattr__(solver, "run")
    return solver, p, seen["init"], seen["args"], seen["kwargs"]


@pytest.mark.parametrize("name", list(SOLVERS))
def test_l2_optimality_error_on_every_solver(name):
    """≈ 0 at the solution (the closed form, or the solver's own run where params are a KKT
    triple), a positive finite value away from it, and the norm of the solver's condition
    (BoxCDQP: of JAXopt's unscaled residual, whose roots are the condition's)."""
    solver, p, init, args, kwargs = _run_arguments(name)
    kind, condition = solver.optimality()

    @jax.jit  # one program per solver: the errors at the solution and away, and F away
    def errors(solution, args, kwargs):
        away = jax.tree_util.tree_map(lambda v: v + 0.3, solution)
        residual = condition(away, *args, **kwargs)
        if kind == "fixed_point":
            residual = jax.tree_util.tree_map(jnp.subtract, residual, away)
        if isinstance(solver, S.BoxCDQP):  # JAXopt's residual clip(x − ∇f(x), l, u) − x
            (Q, c), (low, high) = args
            residual = jnp.clip(away - (0.5 * (Q + Q.T) @ away + c), low, high) - away
        at = solver.l2_optimality_error(solution, *args, **kwargs)
        return at, solver.l2_optimality_error(away, *args, **kwargs), residual

    try:
        at_solution, value, residual = errors(jnp.asarray(p.solution(p.theta)), args, kwargs)
    except (TypeError, ValueError, AttributeError):  # params are not x alone: solve
        solution = solver.run(init, *args, **kwargs).params
        at_solution, value, residual = errors(solution, args, kwargs)
    assert float(at_solution) < 1e-6, float(at_solution)
    leaves = jax.tree_util.tree_leaves(residual)
    by_hand = np.sqrt(sum(float(np.sum(np.abs(np.asarray(v)) ** 2)) for v in leaves))
    assert by_hand > 1e-3
    np.testing.assert_allclose(float(value), by_hand, rtol=1e-12)


def test_l2_optimality_error_by_hand_and_against_jaxopt():
    """Away from the solution: closed forms ‖∇f‖, ‖T(x) − x‖, ‖F(x)‖, ‖Jᵀr‖, and JAXopt's."""
    w = jnp.asarray([0.3, -0.2, 0.5])
    x = jnp.asarray([0.1, 0.2, -0.3])
    grad = _X.T @ (_X @ np.asarray(w) - _Y) + LAM * np.asarray(w)
    cases = [
        (S.GradientDescent(ridge_fun), jaxopt.GradientDescent(ridge_fun), w, LAM, grad),
        (
            S.FixedPointIteration(cos_map),
            jaxopt.FixedPointIteration(cos_map),
            x,
            THETA,
            0.5 * np.cos(x) + THETA - x,
        ),
        (S.Broyden(cos_root), jaxopt.Broyden(cos_root), x, THETA, 0.5 * np.cos(x) + THETA - x),
        (
            S.GaussNewton(ridge_residual),
            jaxopt.GaussNewton(ridge_residual),
            w,
            LAM,
            grad,  # Jᵀr of r = (Xw − y, √λ w) is the ridge gradient
        ),
    ]
    for ours, theirs, params, theta, residual in cases:
        value = float(ours.l2_optimality_error(params, theta))
        np.testing.assert_allclose(value, np.linalg.norm(residual), rtol=1e-12)
        np.testing.assert_allclose(
            value, float(theirs.l2_optimality_error(params, theta)), rtol=1e-12
        )


# ---------------------------------------------------------------------------------------------
# 2. verbose

_LINE = re.compile(r"INFO: implicitdiff\.(\w+): iter (\d+) error (\S+)")


def _printed(capsys, name):
    jax.effects_barrier()
    lines = [m.groups() for m in _LINE.finditer(capsys.readouterr().out)]
    assert all(n == name for n, _, _ in lines)
    return [(int(i), float(e)) for _, i, e in lines]


@pytest.mark.parametrize("implicit_diff", [True, False])
def test_verbose_prints_each_iteration_under_jit(capsys, implicit_diff):
    """One line per iteration, iter 1..iter_num, the last error that of the state; JAXopt's
    FixedPointIteration prints one line per iteration too."""
    solver = S.FixedPointIteration(
        cos_map, tol=1e-8, maxiter=100, verbose=True, implicit_diff=implicit_diff
    )
    _, state = jax.jit(solver.run)(jnp.zeros(3), THETA)
    lines = _printed(capsys, "FixedPointIteration")
    n = int(state.iter_num)
    assert [i for i, _ in lines] == list(range(1, n + 1))
    np.testing.assert_allclose(lines[-1][1], float(state.error), rtol=1e-12)
    errors = [e for _, e in lines]
    assert errors[-2] > 1e-8 >= errors[-1]
    # each printed error is ‖T(x) − x‖ at that iterate: contraction by about ½ sin
    assert all(b < a for a, b in itertools.pairwise(errors))
    theirs = jaxopt.FixedPointIteration(cos_map, tol=1e-8, maxiter=100, verbose=True)
    _, their_state = theirs.run(jnp.zeros(3), THETA)
    jax.effects_barrier()
    their_lines = [ln for ln in capsys.readouterr().out.splitlines() if "jaxopt." in ln]
    assert len(their_lines) == int(their_state.iter_num)
    # JAXopt's error is ‖T(x) − x‖ at the previous iterate: one iteration more to stop
    assert int(their_state.iter_num) == n + 1


def test_verbose_is_checked_and_silent_by_default(capsys):
    with pytest.raises(TypeError, match="verbose"):
        S.GradientDescent(ridge_fun, verbose="yes")
    S.GradientDescent(ridge_fun, maxiter=5).run(jnp.zeros(3), LAM)
    assert _printed(capsys, "GradientDescent") == []
    assert S.GradientDescent(ridge_fun, verbose=2).verbose == 2  # an int, as JAXopt's
    # the host solvers have no loop of their own to report: refused, naming the alternative
    with pytest.raises(TypeError, match=r"verbose=.*iterative solvers"):
        S.ScipyMinimize(fun=ridge_fun, verbose=True)


def test_verbose_with_jit_false_prints_from_the_python_loop(capsys):
    solver = S.FixedPointIteration(cos_map, tol=1e-6, verbose=True, jit=False)
    _, state = solver.run(jnp.zeros(3), THETA)
    lines = _printed(capsys, "FixedPointIteration")
    assert [i for i, _ in lines] == list(range(1, int(state.iter_num) + 1))
    np.testing.assert_allclose(lines[-1][1], float(state.error), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# 3. jit=False


def test_jit_false_runs_a_numpy_only_function():
    """A fixed_point_fun that only NumPy can evaluate runs with jit=False (a Python loop)."""
    solver = S.FixedPointIteration(cos_map_numpy, tol=1e-11, jit=False)
    params, state = solver.run(jnp.zeros(3), np.asarray(THETA))
    expected = problems.get("cos_fp").solution(np.asarray(THETA))
    np.testing.assert_allclose(np.asarray(params), expected, atol=1e-10)
    assert bool(state.converged)
    theirs = jaxopt.FixedPointIteration(cos_map_numpy, tol=1e-11, jit=False, implicit_diff=False)
    their_params, their_state = theirs.run(jnp.zeros(3), np.asarray(THETA))
    np.testing.assert_allclose(np.asarray(params), np.asarray(their_params), atol=1e-10)
    assert int(state.iter_num) + 1 == int(their_state.iter_num)  # (its error lags one step)


def test_jit_false_matches_jit_true_value_and_gradient():
    """A jnp function: same solution, iterations and implicit gradient with jit=False, and
    the gradient that of the closed form x' = 1 / (1 + ½ sin x*)."""
    compiled = S.FixedPointIteration(cos_map, tol=1e-12)
    eager = dataclasses.replace(compiled, jit=False)

    def loss(solver, theta):
        return jnp.sum(solver.run(jnp.zeros(3), theta).params ** 2)

    x_jit, state_jit = compiled.run(jnp.zeros(3), THETA)
    x_eager, state_eager = eager.run(jnp.zeros(3), THETA)
    np.testing.assert_allclose(np.asarray(x_eager), np.asarray(x_jit), rtol=1e-14, atol=1e-14)
    assert int(state_eager.iter_num) == int(state_jit.iter_num)
    g_jit = jax.grad(lambda t: loss(compiled, t))(THETA)
    g_eager = jax.grad(lambda t: loss(eager, t))(THETA)
    np.testing.assert_allclose(np.asarray(g_eager), np.asarray(g_jit), rtol=1e-12)
    x = np.asarray(x_jit)
    np.testing.assert_allclose(np.asarray(g_jit), 2 * x / (1 + 0.5 * np.sin(x)), rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# 4. has_aux


def cos_map_aux(x, theta):
    return cos_map(x, theta), {"total": jnp.sum(x), "count": jnp.asarray(3)}


def cos_root_aux(x, theta):
    return cos_root(x, theta), jnp.max(x)


def ridge_residual_aux(w, lam):
    r = ridge_residual(w, lam)
    return r, {"loss": 0.5 * jnp.sum(r**2)}


def cubic(x, t):
    return x**3 - t


def cubic_aux(x, t):
    return cubic(x, t), 2 * x


def simplex_quadratic(p, c):
    return 0.5 * jnp.sum(p**2) + c @ p


def simplex_quadratic_aux(p, c):
    return simplex_quadratic(p, c), {"mass": jnp.sum(p), "value": simplex_quadratic(p, c)}


C = jnp.asarray([0.1, -0.2, 0.3])


# d/dθ Σ sin x*(θ) in closed form, from x* (float64):
def cos_fp_derivative(x, theta):
    """x = ½cos x + θ entrywise: x' = 1 / (1 + ½ sin x)."""
    return np.cos(x) / (1 + 0.5 * np.sin(x))


def ridge_derivative(x, lam):
    """x = (XᵀX + λI)⁻¹Xᵀy: dx/dλ = −(XᵀX + λI)⁻¹ x."""
    return np.cos(x) @ -np.linalg.solve(_X.T @ _X + lam * np.eye(3), x)


def cubic_derivative(x, t):
    """x = t^⅓: x' = 1 / (3x²)."""
    return np.cos(x) / (3 * x**2)


def simplex_derivative(x, c):
    """p = argmin ½‖p‖² + c·p on the simplex, with full support: p = −c + (1 + Σc)/3,
    dp/dc = −(I − 11ᵀ/3)."""
    assert np.all(x > 1e-3)  # the support is full (p = [0.3, 0.6, 0.1])
    return -(np.eye(3) - np.ones((3, 3)) / 3) @ np.cos(x)


# name: (build(has_aux), fun with aux, run's leading arguments, θ, d/dθ Σ sin x*, JAXopt's)
AUX_CASES = {
    "FixedPointIteration": (
        lambda: S.FixedPointIteration(cos_map_aux, tol=1e-12, has_aux=True),
        cos_map_aux,
        (jnp.zeros(3),),
        THETA,
        cos_fp_derivative,
        lambda: jaxopt.FixedPointIteration(cos_map_aux, tol=1e-12, has_aux=True),
    ),
    "AndersonAcceleration": (
        lambda: S.AndersonAcceleration(cos_map_aux, tol=1e-12, has_aux=True),
        cos_map_aux,
        (jnp.zeros(3),),
        THETA,
        cos_fp_derivative,
        lambda: jaxopt.AndersonAcceleration(cos_map_aux, tol=1e-12, has_aux=True),
    ),
    "Broyden": (
        lambda: S.Broyden(cos_root_aux, True, tol=1e-12),  # has_aux second, as in JAXopt
        cos_root_aux,
        (jnp.zeros(3),),
        THETA,
        cos_fp_derivative,
        lambda: jaxopt.Broyden(cos_root_aux, True, tol=1e-12),
    ),
    "GaussNewton": (
        lambda: S.GaussNewton(ridge_residual_aux, tol=1e-12, has_aux=True),
        ridge_residual_aux,
        (jnp.zeros(3),),
        LAM,
        ridge_derivative,
        lambda: jaxopt.GaussNewton(ridge_residual_aux, tol=1e-12, has_aux=True),
    ),
    "LevenbergMarquardt": (
        lambda: S.LevenbergMarquardt(ridge_residual_aux, tol=1e-12, has_aux=True),
        ridge_residual_aux,
        (jnp.zeros(3),),
        LAM,
        ridge_derivative,
        lambda: jaxopt.LevenbergMarquardt(ridge_residual_aux, tol=1e-12, has_aux=True),
    ),
    "Bisection": (
        lambda: S.Bisection(cubic_aux, -2.0, 3.0, tol=1e-12, maxiter=200, has_aux=True),
        cubic_aux,
        (None,),
        2.0,
        cubic_derivative,
        lambda: jaxopt.Bisection(cubic_aux, -2.0, 3.0, tol=1e-12, maxiter=200, has_aux=True),
    ),
    "MirrorDescent": (
        lambda: S.MirrorDescent(
            simplex_quadratic_aux, stepsize=0.5, tol=1e-12, maxiter=2000, has_aux=True
        ),
        simplex_quadratic_aux,
        (jnp.ones(3) / 3, None),
        C,
        simplex_derivative,
        None,
    ),
}


@pytest.mark.parametrize("name", list(AUX_CASES))
def test_has_aux(name):
    """fun returns (value, aux): aux in state.aux at the returned x, and the derivative that of
    the closed form (aux plays no part in it); JAXopt's solution and aux."""
    build, aux_fun, leading, theta, derivative, theirs = AUX_CASES[name]
    solver = build()

    def loss(t):
        x, state = solver.run(*leading, t)
        return jnp.sum(jnp.sin(x)), (x, state)

    (_, (x, state)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(theta)
    assert bool(state.converged)
    assert_close = np.testing.assert_allclose
    x64 = np.asarray(x)
    assert_close(np.asarray(grad), derivative(x64, np.asarray(theta)), rtol=1e-8, atol=1e-10)
    expected_aux = aux_fun(x, theta)[1]
    jax.tree_util.tree_map(
        lambda a, b: assert_close(np.asarray(a), np.asarray(b), rtol=1e-12), state.aux, expected_aux
    )
    if name == "Bisection":  # JAXopt's defect: init_state compares the (value, aux) pair
        with pytest.raises(TypeError, match="not supported between instances of 'tuple'"):
            theirs().run(*leading, theta)
    elif theirs is not None:
        their_x, their_state = theirs().run(*leading, theta)
        assert_close(np.asarray(their_x), x64, rtol=1e-7, atol=1e-9)
        jax.tree_util.tree_map(
            lambda a, b: assert_close(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9),
            their_state.aux,
            state.aux,
        )


def test_has_aux_errors_name_the_option():
    with pytest.raises(TypeError, match="has_aux must be a bool"):
        S.FixedPointIteration(cos_map, has_aux=1)
    with pytest.raises(TypeError, match=r"fixed_point_fun must return \(value, aux\)"):
        S.FixedPointIteration(cos_map, has_aux=True).run(jnp.zeros(3), THETA)
    with pytest.raises(TypeError, match=r"residual_fun must return \(value, aux\)"):
        S.GaussNewton(ridge_residual, has_aux=True).run(jnp.zeros(3), LAM)
