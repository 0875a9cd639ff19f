"""Issue 12 item 8, family "shard_map": every solver class inside ``jax.shard_map`` with all mesh
axes manual and one problem per device, where *everything* of the problem is per device: the
hyperparameter θ and the matrix M of the objective (so every product, transpose and line search
of the solver mixes device-varying data), from a start that is the same on every device.

Each cell checks, on 8 forced CPU devices, the per-device solution against the same solve run on
one device (1e-9), and the hypergradient ∂L/∂θ of L = Σ_devices ½‖x*(θ_d, M_d) − target‖²
against the one-device derivative (1e-8) and central finite differences of the one-device
solve (2e-5, their truncation and the solves' tolerance). The test matrix
(tests/solvers/test_matrix.py, transform "shard_map") checks the same solvers against closed
forms with per-device θ and data shared by all devices.

The defects this family caught: a constant start differentiated against a varying objective had
its gradient summed over the devices (JAX transposes the implicit broadcast of an invariant value
into a ``psum``): gradient descent made no progress, Newton returned rows of other devices;
a ``psum`` inside a loop whose trip count differs between devices also deadlocked (XLA then
aborts the whole process); loop carries, ``cond`` branches and the implicit derivative's
tangent had mismatched varying/invariant types (crashes); a host callback's solution was typed
invariant.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import PlainSGD
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from implicitdiff import projections, prox
from implicitdiff import solvers as S

N_DEVICES = 8
C = jnp.array([1.0, 2.0, -1.0])
Q = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.5]])
TARGET = jnp.array([0.3, -0.2, 0.1])
THETAS = np.linspace(0.3, 1.0, N_DEVICES)
# One SPD matrix per device: Q + 0.2 d I.
MS = np.stack([Q + 0.2 * d * np.eye(3) for d in range(N_DEVICES)])
START = jnp.array([0.1, -0.1, 0.2])

# The programs these tests build are compiled with LLVM's optimizations off (XLA's own HLO
# passes all run): about a quarter less compilation time, the same values to rounding (every
# check here is at ≥ 1e-10). The library's own programs (eager runs) keep the defaults.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def smooth(x, theta, M):
    return 0.5 * x @ M @ x - theta * C @ x + 0.05 * jnp.sum(x**4)


def equations(x, theta, M):
    return M @ x + x**3 - theta * C


def contraction(x, theta, M):  # Lipschitz ≤ 0.15 ‖M‖ < 1
    return 0.15 * jnp.cos(M @ x) + theta * C


def _host_linear(x0, theta, M):  # the root of M x − θ C, on the host
    return np.linalg.solve(M, theta * np.asarray(C))


def _host_fixed_point(x0, theta, M):
    c = np.asarray(C)
    return scipy.optimize.fixed_point(
        lambda x: 0.15 * np.cos(M @ x) + theta * c, np.asarray(x0), xtol=1e-14, maxiter=2000
    )


# name: (solver, run(solver, θ, M) -> params). θ a scalar, M a (3, 3) matrix, on one device.
_CLARABEL_TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}

CASES = {
    "GradientDescent": (S.GradientDescent(fun=smooth, tol=1e-11, maxiter=20000), None),
    "Newton": (S.Newton(fun=smooth, tol=1e-11), None),
    "LBFGS": (S.LBFGS(fun=smooth, tol=1e-11), None),
    "BFGS": (S.BFGS(fun=smooth, tol=1e-11), None),
    "NonlinearCG": (S.NonlinearCG(fun=smooth, tol=1e-11), None),
    "LBFGSB": (S.LBFGSB(fun=smooth, tol=1e-11), lambda s, t, M: s.run(START, (-0.5, 1.0), t, M)),
    # The stochastic solvers on the full batch, steps below 2/L (L ≈ 5.5); f* = −100 below min f.
    "OptaxSolver": (S.OptaxSolver(smooth, PlainSGD(0.2), tol=1e-11, maxiter=5000), None),
    "PolyakSGD": (
        S.PolyakSGD(smooth, fun_min=-100.0, max_stepsize=0.2, tol=1e-11, maxiter=5000),
        None,
    ),
    "ArmijoSGD": (S.ArmijoSGD(smooth, max_stepsize=0.3, tol=1e-11, maxiter=5000), None),
    "ProximalGradient": (
        S.ProximalGradient(fun=smooth, prox=prox.l1, tol=1e-11, maxiter=5000),
        lambda s, t, M: s.run(START, 0.1, t, M),
    ),
    "ProjectedGradient": (
        S.ProjectedGradient(fun=smooth, projection=projections.box, tol=1e-11, maxiter=5000),
        lambda s, t, M: s.run(START, (-0.5, 1.0), t, M),
    ),
    "MirrorDescent": (
        S.MirrorDescent(
            fun=lambda p, t, M: 0.5 * p @ M @ p + t * C @ p, stepsize=0.2, tol=1e-11, maxiter=5000
        ),
        lambda s, t, M: s.run(jnp.ones(3) / 3, None, t, M),
    ),
    "BlockCoordinateDescent": (
        S.BlockCoordinateDescent(fun=smooth, block_prox=prox.l1, tol=1e-11, maxiter=5000),
        lambda s, t, M: s.run(START, 0.1, t, M),
    ),
    "FixedPointIteration": (
        S.FixedPointIteration(fixed_point_fun=contraction, tol=1e-12, maxiter=1000),
        None,
    ),
    "AndersonAcceleration": (
        S.AndersonAcceleration(fixed_point_fun=contraction, tol=1e-12),
        None,
    ),
    "GaussNewton": (S.GaussNewton(residual_fun=equations, tol=1e-11), None),
    "LevenbergMarquardt": (S.LevenbergMarquardt(residual_fun=equations, tol=1e-11), None),
    "Broyden": (S.Broyden(fun=equations, tol=1e-12), None),
    "Bisection": (
        S.Bisection(
            optimality_fun=lambda x, t, M: x**3 + M[0, 0] * x - t,
            lower=-10.0,
            upper=10.0,
            tol=1e-13,
            maxiter=200,
        ),
        lambda s, t, M: s.run(None, t, M),
    ),
    "BoxCDQP": (
        S.BoxCDQP(tol=1e-12),
        lambda s, t, M: s.run(jnp.zeros(3), (M, -t * C), (-0.3 * jnp.ones(3), jnp.ones(3))),
    ),
    "EqualityConstrainedQP": (
        S.EqualityConstrainedQP(tol=1e-12),
        lambda s, t, M: s.run(None, (M, -t * C), (M[:1] - 1.0, t[None])).params.primal,
    ),
    "OSQP": (
        S.OSQP(tol=1e-11),
        lambda s, t, M: (
            s.run(None, (M, -t * C), None, (jnp.eye(3), 0.5 * jnp.ones(3))).params.primal
        ),
    ),
    "BoxOSQP": (
        S.BoxOSQP(tol=1e-12),
        lambda s, t, M: s.run(
            None, (M, -t * C), jnp.eye(3), (-0.3 * jnp.ones(3), jnp.ones(3))
        ).params.primal[0],
    ),
    "CvxpyQP": (
        S.CvxpyQP("CLARABEL", solver_options=_CLARABEL_TIGHT),
        lambda s, t, M: (
            s.run(None, (M, -t * C), None, (jnp.eye(3), 0.5 * jnp.ones(3))).params.primal
        ),
    ),
    # inner_solve="cg": jax.scipy gmres (the default inner solve) fails under shard_map
    "IterativeRefinement": (
        S.IterativeRefinement(inner_solve="cg", tol=1e-12, maxiter=50),
        lambda s, t, M: s.run(None, M, t * C).params,
    ),
    "AndersonWrapper": (
        S.AndersonWrapper(S.GradientDescent(fun=smooth, stepsize=0.2, tol=1e-11, maxiter=5000)),
        None,
    ),
    "ScipyMinimize": (S.ScipyMinimize(fun=smooth, tol=1e-14), None),
    "ScipyBoundedMinimize": (
        S.ScipyBoundedMinimize(fun=smooth, tol=1e-14),
        lambda s, t, M: s.run(START, (-0.5 * jnp.ones(3), jnp.ones(3)), t, M),
    ),
    "ScipyRootFinding": (S.ScipyRootFinding(optimality_fun=equations, tol=1e-14), None),
    "ScipyLeastSquares": (S.ScipyLeastSquares(residual_fun=equations, tol=1e-15), None),
    "ScipyBoundedLeastSquares": (
        S.ScipyBoundedLeastSquares(residual_fun=equations, tol=1e-15),
        lambda s, t, M: s.run(START, (-10.0 * jnp.ones(3), 10.0 * jnp.ones(3)), t, M),
    ),
    "HostSolver": (
        S.HostSolver(solve_fn=_host_linear, optimality_fun=lambda x, t, M: M @ x - t * C, tol=1e-9),
        None,
    ),
    "HostSolver[fixed_point]": (
        S.HostSolver(
            solve_fn=_host_fixed_point, optimality_fun=contraction, kind="fixed_point", tol=1e-9
        ),
        None,
    ),
}


def _solve_one(name):
    solver, run = CASES[name]
    if run is None:
        return lambda t, M: solver.run(START, t, M).params
    out = run

    def solve(t, M):
        params = out(solver, t, M)
        return params.params if isinstance(params, S.OptStep) else params

    return solve


@functools.cache
def _mesh():
    devices = jax.devices("cpu")
    if len(devices) < N_DEVICES:
        pytest.fail(f"needs {N_DEVICES} CPU devices (tests/conftest.py forces them)")
    return jax.make_mesh(
        (N_DEVICES,), ("d",), axis_types=(AxisType.Auto,), devices=devices[:N_DEVICES]
    )


def _outer(x):
    return 0.5 * jnp.sum((x - TARGET) ** 2)


FD_EPS = 1e-4


@functools.cache
def _one_device_reference(name):
    """For each device's (θ_d, M_d), the one-device solve (no shard_map) of the solver: the
    solution, ∂L/∂θ and the central difference (L(θ + ε) − L(θ − ε))/2ε, with L = ½‖x* − t‖².

    One compiled program for all: ``lax.map`` runs the unbatched one-device solve for each
    (θ_d, M_d) in turn (the same program as a call per device, without a compilation per
    quantity). Shared by the tests of this file that check the solver."""
    solve = _solve_one(name)

    def loss(t, M):
        return _outer(solve(t, M))

    def one(tM):
        t, M = tM
        fd = (loss(t + FD_EPS, M) - loss(t - FD_EPS, M)) / (2 * FD_EPS)
        return solve(t, M), jax.grad(loss)(t, M), fd

    return tuple(
        np.asarray(a)
        for a in _jit(lambda ts, Ms: jax.lax.map(one, (ts, Ms)))(
            jnp.asarray(THETAS), jnp.asarray(MS)
        )
    )


def test_shard_map_registry_covers_every_solver_class():
    """A solver class of implicitdiff.solvers without a line here fails (the matrix's rule)."""
    import inspect

    from implicitdiff.solvers._base import DifferentiableRun

    classes = {
        name
        for name, obj in vars(S).items()
        if isinstance(obj, type)
        and issubclass(obj, DifferentiableRun)
        and not inspect.isabstract(obj)
    }
    assert classes <= {name.split("[")[0] for name in CASES}, classes - set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_shard_map_family_every_solver_per_device_data(name):
    solve = _solve_one(name)
    thetas, Ms = jnp.asarray(THETAS), jnp.asarray(MS)

    # This device's (1,) and (1, 3, 3) slices, solved under vmap (a batch per device, as one
    # shards a batch over devices): a lax.cond inside the solver whose predicate vmap batches
    # failed in JAX when a branch used a value the same on every device (C here, closed over by
    # the objective): GradientDescent, Newton, ArmijoSGD, ProximalGradient, ProjectedGradient,
    # Broyden, OSQP and BoxOSQP raised "pvary is a invariant->variant collective". (Without
    # vmap, the per-device solve is in the test matrix's shard_map cells.)
    def per_device(theta, M):
        return jax.vmap(solve)(theta, M)

    sharded = jax.shard_map(per_device, mesh=_mesh(), in_specs=(P("d"), P("d")), out_specs=P("d"))

    def total(ts):
        xs = sharded(ts, Ms)
        return jnp.sum(jax.vmap(_outer)(xs)), xs

    # A per-device solve talks to no other device: a collective inside a loop whose trip count
    # differs between devices deadlocks, and XLA then aborts the process (seen with Newton).
    program = jax.jit(sharded).lower(thetas, Ms).as_text()
    assert "all_reduce" not in program and "all-reduce" not in program

    (_, xs), grads = _jit(jax.value_and_grad(total, has_aux=True))(thetas)

    reference, expected, fd = _one_device_reference(name)
    np.testing.assert_allclose(np.asarray(xs), reference, rtol=1e-9, atol=1e-10)

    # The derivative under shard_map is the one-device implicit derivative (itself checked
    # against closed forms in the test matrix) to rounding, and central differences of the
    # one-device solve to their truncation and the solves' tolerance.
    np.testing.assert_allclose(np.asarray(grads), expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(grads), fd, rtol=2e-5, atol=1e-7)


# Solvers whose user function may close over per-device data: the solver is built inside the
# shard_map body, its objective capturing this device's M, and the start is a constant.
CLOSURE = [
    "GradientDescent",
    "Newton",
    "LBFGS",
    "NonlinearCG",
    "LBFGSB",
    "ProximalGradient",
    "GaussNewton",
    "Broyden",
    "FixedPointIteration",
]


def _closed_solver(name, M):
    base, run = CASES[name]
    for field in ("fun", "residual_fun", "fixed_point_fun"):
        f = getattr(base, field, None)
        if callable(f):
            import dataclasses

            solver = dataclasses.replace(base, **{field: lambda x, t, f=f: f(x, t, M)})
            break
    if run is None:
        return lambda t: solver.run(START, t).params
    if name == "LBFGSB":
        return lambda t: solver.run(START, (-0.5, 1.0), t).params
    return lambda t: solver.run(START, 0.1, t).params  # ProximalGradient


@pytest.mark.parametrize("name", CLOSURE)
def test_shard_map_family_objective_closing_over_device_data(name):
    """The start and the arguments say nothing of the per-device M: the objective does."""
    thetas, Ms = jnp.asarray(THETAS), jnp.asarray(MS)

    def per_device(theta, M):
        return _closed_solver(name, M[0])(theta[0])[None]

    sharded = jax.shard_map(per_device, mesh=_mesh(), in_specs=(P("d"), P("d")), out_specs=P("d"))
    (_, xs), grads = _jit(
        jax.value_and_grad(
            lambda ts: (lambda xs: (jnp.sum(jax.vmap(_outer)(xs)), xs))(sharded(ts, Ms)),
            has_aux=True,
        )
    )(thetas)
    reference, expected, _ = _one_device_reference(name)
    np.testing.assert_allclose(np.asarray(xs), reference, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.asarray(grads), expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["LBFGS", "EqualityConstrainedQP", "ScipyMinimize"])
def test_shard_map_replicated_argument_gets_the_sum_of_device_gradients(name):
    """M passed replicated (in_specs P()), θ per device: ∂L/∂M of L = Σ_d ½‖x*(θ_d, M) − t‖²
    is the sum over devices of the one-device gradients (JAX's meaning of the derivative of an
    input every device shares)."""
    solve = _solve_one(name)
    thetas, M = jnp.asarray(THETAS), jnp.asarray(MS[2])
    sharded = jax.shard_map(
        lambda t, M: solve(t[0], M)[None], mesh=_mesh(), in_specs=(P("d"), P()), out_specs=P("d")
    )
    grad_M = _jit(jax.grad(lambda M: jnp.sum(jax.vmap(_outer)(sharded(thetas, M)))))(M)
    one = jax.grad(lambda M, t: _outer(solve(t, M)))  # one device, one θ at a time (lax.map)
    expected = np.sum(_jit(lambda M: jax.lax.map(lambda t: one(M, t), thetas))(M), axis=0)
    np.testing.assert_allclose(np.asarray(grad_M), expected, rtol=1e-7, atol=1e-9)
