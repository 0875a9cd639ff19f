"""Family "warnings" (issue 12, noise and attribution): a failing call warns at most once, and
the warning points at the user's line (``w.filename`` is this file), for every kind of solver
and every transformation around it.

The rule (``on_failure``, see :class:`implicitdiff.solvers.IterativeSolver` and
docs/failure_modes.md):

- ``"auto"``: one :class:`SolverWarning` when the run's convergence flag is known while Python
  runs (a plain call, and eager ``grad`` / ``jacobian``, whose flag carries no derivative);
  none inside ``jit`` or ``vmap`` (the flag is traced: only ``state.converged``).
- ``"warn"``: one warning in every context (one per call, also for a batch under ``vmap``).
- The engine's :class:`BackwardSolveWarning` (a derivative's linear system not solved): one
  per failing derivative, under ``grad``, ``jit(grad)``, ``vmap(grad)``, ``jacobian``.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import BackwardSolveWarning, custom_root, linear_solve, prox, solvers

H = jnp.array([[1.0, 0.2, 0.0], [0.2, 0.8, 0.1], [0.0, 0.1, 1.2]])
THETA = jnp.array([0.3, -0.5, 0.8])
BATCH = jnp.stack([THETA, 1.5 * THETA, 2.0 * THETA])


def _quadratic(x, theta):
    return 0.5 * x @ H @ x + 0.05 * jnp.sum(x**4) - theta @ x


def _root(x, theta):
    return H @ x + 0.2 * x**3 - theta


def _map(x, theta):
    return x - 0.5 * _root(x, theta)


def _kind(make, lead=(), call=None):
    def solve(theta, **options):
        solver = make(**options)
        if call is not None:
            return call(solver, theta).params
        return solver.run(jnp.zeros(3), *lead, theta).params

    return solve


def _qp(solver, theta):
    return solver.run(jnp.zeros(3), params_obj=(H, -theta), params_ineq=(-10.0, 10.0))


# A failing run (maxiter too small for tol) of each kind of solver: (make, lead arguments).
KINDS = {
    "GradientDescent": _kind(lambda **o: solvers.GradientDescent(fun=_quadratic, **o)),
    "LBFGS": _kind(lambda **o: solvers.LBFGS(fun=_quadratic, **o)),
    "Newton": _kind(lambda **o: solvers.Newton(fun=_quadratic, **o)),
    "LBFGSB": _kind(lambda **o: solvers.LBFGSB(fun=_quadratic, **o), lead=((-10.0, 10.0),)),
    "ProximalGradient": _kind(
        lambda **o: solvers.ProximalGradient(fun=_quadratic, prox=prox.none, **o), lead=(None,)
    ),
    "AndersonAcceleration": _kind(
        lambda **o: solvers.AndersonAcceleration(fixed_point_fun=_map, **o)
    ),
    "Broyden": _kind(lambda **o: solvers.Broyden(fun=_root, **o)),
    "LevenbergMarquardt": _kind(lambda **o: solvers.LevenbergMarquardt(residual_fun=_root, **o)),
    "BoxCDQP": _kind(lambda **o: solvers.BoxCDQP(**o), call=_qp),
}
UNROLLED = ("GradientDescent", "LBFGS", "AndersonAcceleration")


def _transformations(solve):
    """name -> (function of θ, argument): the user's ways of calling a solver."""

    def total(theta):
        return jnp.sum(solve(theta))

    return {
        "plain": (solve, THETA),
        "jacobian": (jax.jacobian(solve), THETA),
        "grad": (jax.grad(total), THETA),
        "vmap": (jax.vmap(solve), BATCH),
        "jit(grad)": (jax.jit(jax.grad(total)), THETA),
        "vmap(grad)": (jax.vmap(jax.grad(total)), BATCH),
    }


def _solver_transformations(solve):
    """The transformations of the SolverWarning sweep (vmap(grad) only for the engine's)."""
    return {k: v for k, v in _transformations(solve).items() if k != "vmap(grad)"}


# on_failure -> the transformations in which a failing run warns (once); the others: no warning.
WARNS_IN = {
    "auto": {"plain", "jacobian", "grad"},
    "warn": {"plain", "jacobian", "grad", "vmap", "jit(grad)", "vmap(grad)"},
}


def _caught(fn, *args, category):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jax.block_until_ready(fn(*args))  # the user's line: every warning must point here
    return [w for w in caught if issubclass(w.category, category)]


def _check_once_at_user_line(caught, expected: int, context: str):
    assert len(caught) == expected, (context, [str(w.message)[:80] for w in caught])
    for w in caught:
        assert w.filename == __file__, (context, w.filename, w.lineno)


# "auto" is swept over every kind; "warn" (the same host report for every solver) and the
# unrolled mode over a few, to keep the compilations down.
SWEEP = [(name, True, "auto") for name in KINDS] + [
    ("GradientDescent", False, "auto"),
    ("AndersonAcceleration", False, "auto"),
    ("GradientDescent", True, "warn"),
    ("GradientDescent", False, "warn"),
    ("Broyden", True, "warn"),
]


@pytest.mark.parametrize(("name", "implicit", "policy"), SWEEP)
def test_warnings_family_solver_warning_once_at_user_line(name, implicit, policy):
    """A run stopped by maxiter: SolverWarning once (or never, per the policy) in every
    transformation, attributed to the caller's line."""
    solve = functools.partial(
        KINDS[name], maxiter=2, tol=1e-14, implicit_diff=implicit, on_failure=policy
    )
    for how, (fn, arg) in _solver_transformations(solve).items():
        caught = _caught(fn, arg, category=solvers.SolverWarning)
        context = f"{name} implicit={implicit} on_failure={policy} under {how}"
        _check_once_at_user_line(caught, int(how in WARNS_IN[policy]), context)
        if caught:
            assert "did not converge" in str(caught[0].message), context


def test_warnings_family_converged_run_is_silent():
    """The same calls with the same solver as the sweep above (maxiter = 2, tol = 1e-14: its
    compiled runs are reused), on problems that Newton solves in exactly those 2 iterations (θ
    scaled by 1e-4, where the quartic term is negligible): no SolverWarning anywhere."""
    solver = solvers.Newton(fun=_quadratic, maxiter=2, tol=1e-14, on_failure="ignore")
    state = jax.vmap(lambda t: solver.run(jnp.zeros(3), t).state)(_SMALL * BATCH)
    assert bool(jnp.all(state.converged)) and bool(jnp.all(state.iter_num == 2)), state
    for policy in WARNS_IN:
        solve = functools.partial(KINDS["Newton"], maxiter=2, tol=1e-14, on_failure=policy)
        for how, (fn, arg) in _solver_transformations(solve).items():
            caught = _caught(fn, _SMALL * arg, category=solvers.SolverWarning)
            assert not caught, (policy, how)


_SMALL = 1e-4  # Newton's error: above tol after one iteration, at most 2e-20 after two


# ---------------------------------------------------------------------------------------------
# The engine's BackwardSolveWarning: a derivative whose linear system CG cannot solve in one
# iteration (the solution itself converged).

_ONE_CG_STEP = functools.partial(linear_solve.cg, maxiter=1)


def _backward_solvers(policy):
    """name -> solve(θ): a converged solution whose derivative's linear system fails."""

    def gd(theta):
        solver = solvers.GradientDescent(
            fun=_quadratic, tol=1e-12, maxiter=2000, solve=_ONE_CG_STEP, backward_on_failure=policy
        )
        return solver.run(jnp.zeros(3), theta).params

    def inner(x0, theta):
        del x0
        return jnp.linalg.solve(H, theta)

    decorated = custom_root(_root_linear, solve=_ONE_CG_STEP, on_failure=policy)(inner)

    def engine(theta):
        return decorated(jnp.zeros(3), theta)

    return {"GradientDescent": gd, "custom_root": engine}


def _root_linear(x, theta):
    return H @ x - theta


@pytest.mark.parametrize("policy", ["warn", "fallback"])
def test_warnings_family_backward_solve_warning_once_at_user_line(policy):
    for name, solve in _backward_solvers(policy).items():
        transformations = _transformations(solve)
        for how in ("jacobian", "grad", "jit(grad)", "vmap(grad)"):
            fn, arg = transformations[how]
            caught = _caught(fn, arg, category=BackwardSolveWarning)
            _check_once_at_user_line(caught, 1, f"{name} backward_on_failure={policy} {how}")


def test_warnings_family_backward_solve_warning_derivative_still_flagged():
    """The warned derivative is the inaccurate one (the check is not a false alarm), and the
    fallback's is right: dx/dθ = H⁻¹ for F = Hx − θ."""
    solve_warn = _backward_solvers("warn")["custom_root"]
    solve_fallback = _backward_solvers("fallback")["custom_root"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = jax.jacobian(solve_warn)(THETA)
        good = jax.jacobian(solve_fallback)(THETA)
    assert not np.allclose(bad, jnp.linalg.inv(H), atol=1e-6)
    np.testing.assert_allclose(good, jnp.linalg.inv(H), rtol=1e-8, atol=1e-10)
