"""Every solver × the problems it can solve × every JAX transform, against closed forms.

The registry ``SOLVERS`` holds one line per solver class of :mod:`implicitdiff.solvers`: how to
build its solve map θ ↦ x*(θ) from a problem of tests/problems.py (an adapter per form: a
minimizer takes ``fun``, a root finder ``root``, a QP solver ``qp``, ...) and the problems it
solves. Each cell (solver, problem, transform) runs that map under one transform and checks
values, not shapes, against the problem's closed form in float64:

- eager: x*(θ) and ∇(L∘x*)(θ) for the outer loss L(x) = ½‖x − target‖², without an outer jit
  (the user's default path); every other cell is under ``jax.jit``:
- grad: ``jax.value_and_grad(L∘x*)``;  jvp: the primal and J v;  jacfwd: J = ∂x*/∂θ;
- hessian: ∇²(L∘x*)(θ);  vmap: x* and ∇(L∘x*) over a batch of θ, plus a member with a NaN entry
  of θ, whose solution and gradient must be NaN (not the start x₀, nor a finite derivative at it);
- scan: the solver inside a ``lax.scan`` body over the batch, differentiated through the scan;
- checkpoint: ``jax.checkpoint`` around the solve, then ``grad``;
- shard_map: one problem per device on 8 devices (all axes manual), values and gradients;
- debug_nans: ∇(L∘x*)(θ) computed op by op under ``jax.disable_jit`` and ``jax.debug_nans``
  (how a user hunts a NaN, and how debug_nans re-runs a program to locate one): no operation of
  the library may make a NaN that it then discards (a sentinel selected away, 0/0 in an unused
  branch), or debug_nans reports it as the user's error.

The jitted cells of a solver but shard_map are outputs of ONE compiled program per solver, built
by the first of its cells to run and read by each cell, which checks its own part: XLA compiles
the solver's loops once for all of them instead of once per cell. shard_map (a program over 8
devices) and eager stay programs of their own, as does a cell marked in ``XFAIL`` (so that its
failure is its own).

A new solver gets all of this by adding one line to ``SOLVERS`` (and a known failure one line to
``XFAIL``, strict, so that the fix flips it).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import problems
import pytest
from helpers import PlainSGD
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from implicitdiff import solvers as S
from implicitdiff.solvers._base import DifferentiableRun

# Solutions to ~1e-10 (each solver's own tol below), so values and first derivatives agree
# with the closed forms to ~1e-8; the reference Hessian of logistic regression is a central
# difference (~1e-9).
TOL = {"rtol": 1e-7, "atol": 1e-8}
HESSIAN_TOL = {"rtol": 1e-6, "atol": 1e-7}

# The programs these tests build are compiled with LLVM's optimizations off (XLA's own HLO
# passes all run): about a quarter less compilation time, the same values to rounding (every
# check here is at ≥ 1e-10). The library's own programs (eager runs) keep the defaults.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# ---------------------------------------------------------------------------------------------
# Adapters: problem → solve map θ ↦ x*(θ), one per form a solver consumes.


def minimize(cls, **opts):
    """cls(fun=f).run(init, θ) for min_x f(x, θ)."""

    def make(p):
        solver = cls(fun=p.fun, **opts)
        return lambda t: solver.run(p.init, t).params

    return make


def wrapped(cls, inner, inner_opts, **opts):
    """cls(inner(fun=f)).run(init, θ) for min_x f(x, θ): a wrapper around a minimizer."""

    def make(p):
        solver = cls(inner(fun=p.fun, **inner_opts), **opts)
        return lambda t: solver.run(p.init, t).params

    return make


def proximal(cls, prox_field="prox", **opts):
    """cls(fun=f, prox=g).run(init, hyper(θ), θ) for min_x f(x, θ) + g(x, hyper(θ))."""

    def make(p):
        solver = cls(fun=p.fun, **{prox_field: p.prox}, **opts)
        return lambda t: solver.run(p.init, p.prox_hyper(t), t).params

    return make


def projected(cls, **opts):
    """cls(fun=f, projection=P).run(init, hyper(θ), θ) for min_{x ∈ C(hyper(θ))} f(x, θ)."""

    def make(p):
        solver = cls(fun=p.fun, projection=p.projection, **opts)
        return lambda t: solver.run(p.init, p.proj_hyper(t), t).params

    return make


def mirror(cls, **opts):
    """Mirror descent with the entropy on the simplex: cls(fun=f).run(init, None, θ)."""

    def make(p):
        solver = cls(fun=p.fun, **opts)
        return lambda t: solver.run(p.init, None, t).params

    return make


def bounded(cls, **opts):
    """cls(fun=f).run(init, (lower, upper), θ) for min_{l ≤ x ≤ u} f(x, θ)."""

    def make(p):
        solver = cls(fun=p.fun, **opts)
        return lambda t: solver.run(p.init, p.bounds, t).params

    return make


def least_squares(cls, **opts):
    """cls(residual_fun=r).run(init, θ) for min_x ½‖r(x, θ)‖²."""

    def make(p):
        solver = cls(residual_fun=p.residual, **opts)
        return lambda t: solver.run(p.init, t).params

    return make


def bounded_least_squares(cls, **opts):
    """cls(residual_fun=r).run(init, (−∞, ∞), θ): a least-squares problem in an unbounded box."""

    def make(p):
        solver = cls(residual_fun=p.residual, **opts)
        return lambda t: solver.run(p.init, (-jnp.inf, jnp.inf), t).params

    return make


def root(cls, field="optimality_fun", **opts):
    """cls(F).run(init, θ) for F(x, θ) = 0."""

    def make(p):
        solver = cls(**{field: p.root}, **opts)
        return lambda t: solver.run(p.init, t).params

    return make


def fixed_point(cls, **opts):
    """cls(fixed_point_fun=T).run(init, θ) for x = T(x, θ)."""

    def make(p):
        solver = cls(fixed_point_fun=p.fixed_point, **opts)
        return lambda t: solver.run(p.init, t).params

    return make


def qp(cls, *pairs, **opts):
    """cls().run(None, obj, *pairs) with the pairs ("eq", "ineq", "box") of the problem's QP;
    the primal x of a KKTSolution."""

    def make(p):
        solver = cls(**opts)

        def solve(t):
            data = p.qp(t)
            params = solver.run(None, data["obj"], *(data[k] for k in pairs)).params
            return params.primal if isinstance(params, S.KKTSolution) else params

        return solve

    return make


def linear(cls, **opts):
    """cls().run(None, Q, −c) for the linear system Q x = −c of the problem's unconstrained QP."""

    def make(p):
        solver = cls(**opts)

        def solve(t):
            Q, c = p.qp(t)["obj"]
            return solver.run(None, Q, -c).params

        return solve

    return make


def box_osqp(cls, **opts):
    """cls().run(None, obj, C, (l, u)) on the problem's QP stacked as l ≤ Cx ≤ u (C = [A; G],
    l = [b; −∞], u = [b; h]); the x of KKTSolution((x, z), y, (μ, φ))."""

    def make(p):
        solver = cls(**opts)

        def solve(t):
            data = p.qp(t)
            c = data["obj"][1]
            rows, lower, upper = [jnp.zeros((0, c.shape[0]), c.dtype)], [], []
            if data.get("eq") is not None:
                A, b = data["eq"]
                rows, lower, upper = [*rows, A], [*lower, b], [*upper, b]
            if data.get("ineq") is not None:
                G, h = data["ineq"]
                rows, lower, upper = [*rows, G], [*lower, jnp.full_like(h, -jnp.inf)], [*upper, h]
            box = (jnp.concatenate(lower), jnp.concatenate(upper))
            return solver.run(None, data["obj"], jnp.concatenate(rows), box).params.primal[0]

        return solve

    return make


def host(kind="root", **opts):
    """HostSolver with the problem's numpy solve and its root or fixed-point condition."""

    def make(p):
        condition = p.root if kind == "root" else p.fixed_point
        solver = S.HostSolver(solve_fn=p.host_solve, optimality_fun=condition, kind=kind, **opts)
        return lambda t: solver.run(p.init, t).params

    return make


# ---------------------------------------------------------------------------------------------
# The registry: one line per solver class.

CLARABEL_TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}

SOLVERS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "GradientDescent": (
        minimize(S.GradientDescent, tol=1e-9, maxiter=20000),
        ("ridge", "logistic"),
    ),
    "LBFGS": (minimize(S.LBFGS, tol=1e-11), ("ridge", "logistic")),
    "BFGS": (minimize(S.BFGS, tol=1e-11), ("ridge", "logistic")),
    "NonlinearCG": (minimize(S.NonlinearCG, tol=1e-11), ("ridge", "logistic")),
    "Newton": (minimize(S.Newton, tol=1e-11), ("ridge", "logistic")),
    "ProximalGradient": (
        proximal(S.ProximalGradient, tol=1e-11, maxiter=20000),
        ("lasso", "ridge"),
    ),
    "ProjectedGradient": (
        projected(S.ProjectedGradient, tol=1e-11, maxiter=20000),
        ("simplex_qp", "box_qp"),
    ),
    "MirrorDescent": (
        mirror(S.MirrorDescent, stepsize=0.2, tol=1e-11, maxiter=20000),
        ("simplex_qp",),
    ),
    "BlockCoordinateDescent": (
        proximal(S.BlockCoordinateDescent, "block_prox", tol=1e-11, maxiter=20000),
        ("lasso",),
    ),
    "LBFGSB": (bounded(S.LBFGSB, tol=1e-11), ("box_qp",)),
    "GaussNewton": (least_squares(S.GaussNewton, tol=1e-11), ("ridge",)),
    "LevenbergMarquardt": (least_squares(S.LevenbergMarquardt, tol=1e-11), ("ridge",)),
    "FixedPointIteration": (
        fixed_point(S.FixedPointIteration, tol=1e-12, maxiter=5000),
        ("affine_fp", "cos_fp"),
    ),
    "AndersonAcceleration": (
        fixed_point(S.AndersonAcceleration, tol=1e-12),
        ("affine_fp", "cos_fp"),
    ),
    "AndersonWrapper": (
        # a fixed step: Anderson mixing assumes one map (see AndersonWrapper)
        wrapped(S.AndersonWrapper, S.GradientDescent, {"stepsize": 0.05, "tol": 1e-11}),
        ("ridge", "logistic"),
    ),
    "Broyden": (root(S.Broyden, "fun", tol=1e-12), ("cos_fp", "ridge")),
    "Bisection": (
        root(S.Bisection, lower=-2.0, upper=3.0, tol=1e-13, maxiter=200),
        ("cos_scalar",),
    ),
    "EqualityConstrainedQP": (qp(S.EqualityConstrainedQP, "eq", tol=1e-12), ("eq_qp", "ridge")),
    "BoxCDQP": (qp(S.BoxCDQP, "box", tol=1e-12), ("box_qp",)),
    "OSQP": (qp(S.OSQP, "eq", "ineq", tol=1e-12), ("eq_qp", "simplex_qp")),
    "BoxOSQP": (box_osqp(S.BoxOSQP, tol=1e-12), ("eq_qp", "simplex_qp")),
    "CvxpyQP": (
        qp(S.CvxpyQP, "eq", "ineq", solver="CLARABEL", solver_options=CLARABEL_TIGHT),
        ("eq_qp", "simplex_qp"),
    ),
    "ScipyMinimize": (minimize(S.ScipyMinimize, tol=1e-14, error_tol=1e-8), ("ridge", "logistic")),
    "ScipyBoundedMinimize": (
        bounded(S.ScipyBoundedMinimize, tol=1e-14, error_tol=1e-8),
        ("box_qp",),
    ),
    "ScipyRootFinding": (
        root(S.ScipyRootFinding, tol=1e-14, error_tol=1e-8),
        ("cos_fp", "affine_fp"),
    ),
    "ScipyLeastSquares": (
        least_squares(S.ScipyLeastSquares, tol=1e-15, error_tol=1e-8),
        ("ridge",),
    ),
    "ScipyBoundedLeastSquares": (
        bounded_least_squares(S.ScipyBoundedLeastSquares, tol=1e-15, error_tol=1e-8),
        ("ridge",),
    ),
    # inner_solve="cg": jax.scipy gmres (the default inner solve) fails under shard_map (its
    # Arnoldi basis starts device-invariant while the operator varies: a while_loop type error)
    "IterativeRefinement": (
        linear(S.IterativeRefinement, inner_solve="cg", tol=1e-12, maxiter=50),
        ("ridge",),
    ),
    # The stochastic solvers on the full batch, with steps below 2/L (L ≈ 14.5 on ridge): near
    # the solution PolyakSGD's step is its cap (f* = 0 lies below the minimum) and ArmijoSGD
    # accepts its cap (the search's slack, the rounding of f, exceeds the decrease there).
    "OptaxSolver": (
        minimize(S.OptaxSolver, opt=PlainSGD(0.07), tol=1e-9, maxiter=5000),
        ("ridge",),
    ),
    "PolyakSGD": (minimize(S.PolyakSGD, max_stepsize=0.07, tol=1e-9, maxiter=5000), ("ridge",)),
    "ArmijoSGD": (minimize(S.ArmijoSGD, max_stepsize=0.1, tol=1e-9, maxiter=5000), ("ridge",)),
    "HostSolver": (host("root", tol=1e-9), ("ridge", "logistic")),
    "HostSolver[fixed_point]": (host("fixed_point", tol=1e-9), ("affine_fp",)),
}

TRANSFORMS = (
    "eager",
    "grad",
    "jvp",
    "jacfwd",
    "hessian",
    "vmap",
    "scan",
    "checkpoint",
    "shard_map",
    "debug_nans",
)

# A run that does not converge is a failed cell, not a warning.
pytestmark = pytest.mark.filterwarnings("error::implicitdiff.solvers.SolverWarning")

# Known failures, each strict: (solver or "*", problem or "*", transform) → reason.
XFAIL: dict[tuple[str, str, str], str] = {}

SLOW: set[tuple[str, str, str]] = set()


def _marks(solver: str, problem: str, transform: str) -> list:
    marks = []
    for key in ((solver, problem, transform), (solver, "*", transform), ("*", "*", transform)):
        if key in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[key]))
            break
    if (solver, problem, transform) in SLOW:
        marks.append(pytest.mark.slow)
    return marks


# Every transform on a solver's first problem; its other problems run eagerly (value and
# gradient): a compilation costs ~1 s of CPU per cell, and the transforms exercise the solver's
# loop and the engine, which do not depend on the problem.
CELLS = [
    pytest.param(solver, problem, transform, marks=_marks(solver, problem, transform))
    for solver, (_, names) in SOLVERS.items()
    for i, problem in enumerate(names)
    for transform in (TRANSFORMS if i == 0 else TRANSFORMS[:1])
]

# The transforms computed in the solver's one program (the others each compile their own).
MERGED = ("grad", "jvp", "jacfwd", "hessian", "vmap", "scan", "checkpoint")


def test_every_solver_class_is_in_the_matrix():
    """A solver class exported by implicitdiff.solvers without a registry line fails here."""
    classes = {
        name
        for name, obj in vars(S).items()
        if isinstance(obj, type)
        and issubclass(obj, DifferentiableRun)
        and not inspect.isabstract(obj)
    }
    assert len(classes) >= 24, sorted(classes)
    missing = classes - {name.split("[")[0] for name in SOLVERS}
    assert not missing, f"solvers without a line in SOLVERS: {sorted(missing)}"


# ---------------------------------------------------------------------------------------------
# The references themselves.


@pytest.mark.parametrize("name", problems.NAMES)
def test_problem_references(name):
    """Each closed form solves its problem and its Jacobian matches central differences."""
    p = problems.get(name)
    theta = np.asarray(p.theta, np.float64)
    x = p.solution(theta)
    for form in (p.root, p.fixed_point):
        if form is not None:
            residual = np.asarray(form(jnp.asarray(x), theta))
            expected = 0 * residual if form is p.root else x
            np.testing.assert_allclose(residual, expected, atol=1e-10)
    if p.fun is not None and p.prox is None and p.projection is None:
        np.testing.assert_allclose(jax.grad(p.fun)(jnp.asarray(x), theta), 0 * x, atol=1e-10)
    eps = 1e-6
    columns = []
    for e in np.eye(theta.size):
        e = e.reshape(theta.shape) * eps
        columns.append((p.solution(theta + e) - p.solution(theta - e)) / (2 * eps))
    fd = np.stack(columns, axis=-1).reshape(np.shape(x) + theta.shape)
    np.testing.assert_allclose(p.jacobian(theta), fd, rtol=1e-7, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# The cells.


@functools.cache
def _solve_map(solver: str, problem: str) -> Callable:
    make, _ = SOLVERS[solver]
    return make(problems.get(problem))


def _mesh() -> Mesh:
    devices = jax.devices("cpu")
    assert len(devices) >= problems.N_BATCH, "tests/conftest.py forces 8 CPU devices"
    return Mesh(np.asarray(devices[: problems.N_BATCH]), ("batch",))


def _close(actual, expected, tol=TOL):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), **tol)


def _direction(p) -> np.ndarray:
    """The tangent v of the jvp cell."""
    return np.linspace(1.0, -0.5, p.theta.size).reshape(p.theta.shape)


# Solvers whose vmap cell does not append a member with NaN data (none: SciPy's least_squares
# and cvxpy, which raise on NaN data, are not called on it).
NO_NAN_MEMBER: dict[str, str] = {}


def _with_a_nan_member(solver: str) -> bool:
    """Whether the vmap cell appends a member with a NaN hyperparameter to the batch."""
    return solver not in NO_NAN_MEMBER


def _transform(transform: str, p, solve: Callable, nan_member: bool = False) -> Callable:
    """The function of (θ, v, θs) that a jitted cell compiles (``transform`` not eager). With
    ``nan_member`` the vmap batch gets one more member, θs[0] with its first entry NaN: it must
    come out NaN (solution and gradient) without changing the others."""

    def loss(t):
        return p.outer_loss(solve(t))

    if transform == "grad":
        return lambda t, v, ts: (solve(t), jax.value_and_grad(loss)(t))
    if transform == "jvp":
        return lambda t, v, ts: jax.jvp(solve, (t,), (v,))
    if transform == "jacfwd":
        return lambda t, v, ts: jax.jacfwd(solve)(t)
    if transform == "hessian":
        return lambda t, v, ts: jax.hessian(loss)(t)
    if transform == "vmap":

        def batched(t, v, ts):
            if nan_member:
                bad = ts[:1].reshape(1, -1).at[0, 0].set(jnp.nan).reshape(ts[:1].shape)
                ts = jnp.concatenate([ts, bad])
            return jax.vmap(lambda t: (solve(t), jax.grad(loss)(t)))(ts)

        return batched
    if transform == "scan":

        def total(ts):
            def body(carry, t):
                x = solve(t)
                return carry + p.outer_loss(x), x

            return lax.scan(body, jnp.zeros(()), ts)

        return lambda t, v, ts: jax.value_and_grad(total, has_aux=True)(ts)
    if transform == "checkpoint":
        checkpointed = jax.checkpoint(solve)
        return lambda t, v, ts: jax.value_and_grad(lambda t: p.outer_loss(checkpointed(t)))(t)
    if transform == "shard_map":
        sharded = jax.shard_map(
            lambda ts: solve(ts[0])[None],
            mesh=_mesh(),
            in_specs=P("batch"),
            out_specs=P("batch"),
        )

        def total_sharded(ts):
            xs = sharded(ts)
            return jnp.sum(jax.vmap(p.outer_loss)(xs)), xs

        return lambda t, v, ts: jax.value_and_grad(total_sharded, has_aux=True)(ts)
    raise AssertionError(transform)  # pragma: no cover


def _inputs(p) -> tuple:
    return jnp.asarray(p.theta), jnp.asarray(_direction(p)), jnp.asarray(p.thetas)


def _xfailed(solver: str, problem: str, transform: str) -> bool:
    keys = ((solver, problem, transform), (solver, "*", transform), ("*", "*", transform))
    return any(key in XFAIL for key in keys)


def _merged_cells(solver: str) -> list[tuple[str, str]]:
    """The (problem, transform) cells of the solver computed by its one program."""
    first = SOLVERS[solver][1][0]
    return [(first, t) for t in MERGED if not _xfailed(solver, first, t)]


@functools.cache
def _merged_outputs(solver: str) -> dict:
    """{(problem, transform): outputs} of every merged cell of the solver, from one ``jax.jit``
    (compiled and run once per session)."""
    cells = _merged_cells(solver)
    nan_member = _with_a_nan_member(solver)
    fns = [
        _transform(t, problems.get(name), _solve_map(solver, name), nan_member) for name, t in cells
    ]
    inputs = [_inputs(problems.get(name)) for name, _ in cells]
    program = _jit(lambda inputs: [f(*i) for f, i in zip(fns, inputs, strict=True)])
    return dict(zip(cells, program(inputs), strict=True))


def _outputs(solver: str, problem: str, transform: str):
    """The outputs of a jitted cell: read from the solver's one program, or compiled alone."""
    if (problem, transform) in _merged_cells(solver):
        return _merged_outputs(solver)[problem, transform]
    p = problems.get(problem)
    nan_member = _with_a_nan_member(solver)
    return _jit(_transform(transform, p, _solve_map(solver, problem), nan_member))(*_inputs(p))


@pytest.mark.parametrize(("solver", "problem", "transform"), CELLS)
def test_matrix(solver, problem, transform):
    p = problems.get(problem)
    solve = _solve_map(solver, problem)

    if transform == "eager":  # the user's default path: no outer jit
        theta = jnp.asarray(p.theta)
        _close(solve(theta), p.solution(p.theta))
        _close(jax.grad(lambda t: p.outer_loss(solve(t)))(theta), p.hypergradient(p.theta))
        return
    if transform == "debug_nans":
        theta = jnp.asarray(p.theta)
        with jax.disable_jit(), jax.debug_nans(True):
            grad = jax.grad(lambda t: p.outer_loss(solve(t)))(theta)
        _close(grad, p.hypergradient(p.theta))
        return
    out = _outputs(solver, problem, transform)
    if transform == "grad":
        x, (value, grad) = out
        _close(x, p.solution(p.theta))
        _close(value, p.outer_loss(p.solution(p.theta)))
        _close(grad, p.hypergradient(p.theta))
    elif transform == "jvp":
        x, tangent = out
        _close(x, p.solution(p.theta))
        expected = np.tensordot(p.jacobian(p.theta), _direction(p), axes=p.theta.ndim)
        _close(tangent, expected)
    elif transform == "jacfwd":
        _close(out, p.jacobian(p.theta))
    elif transform == "hessian":
        _close(out, p.outer_hessian(p.theta), HESSIAN_TOL)
    elif transform == "vmap":
        xs, grads = out
        if _with_a_nan_member(solver):  # NaN data gives NaN, never a finite point or derivative
            assert np.all(np.isnan(xs[-1])) and np.all(np.isnan(grads[-1]))
            xs, grads = xs[:-1], grads[:-1]
        _close(xs, np.stack([p.solution(t) for t in p.thetas]))
        _close(grads, np.stack([p.hypergradient(t) for t in p.thetas]))
    elif transform in ("scan", "shard_map"):
        (_, xs), grads = out
        _close(xs, np.stack([p.solution(t) for t in p.thetas]))
        _close(grads, np.stack([p.hypergradient(t) for t in p.thetas]))
    elif transform == "checkpoint":
        value, grad = out
        _close(value, p.outer_loss(p.solution(p.theta)))
        _close(grad, p.hypergradient(p.theta))
    else:  # pragma: no cover
        raise AssertionError(transform)


def test_registry_covers_every_form_it_uses():
    """Each registered problem has the form its adapter reads (a typo fails here, not later)."""
    for solver, (make, names) in SOLVERS.items():
        for name in names:
            assert callable(make(problems.get(name))), (solver, name)
