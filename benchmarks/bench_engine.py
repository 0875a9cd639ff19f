"""Engine benchmark: hypergradients through ridge and logistic regression, against JAXopt and
Optimistix.

The outer loss is the validation loss of the inner solution x*(λ), λ = exp(θ), and each
contestant computes ``jax.jit(jax.value_and_grad(outer))(θ, data)``. Every contestant runs the
same inner solver (written once below) and solves its backward system by conjugate gradient to
the same tolerance; only the implicit-differentiation engine differs:

- ours: ``implicitdiff.custom_root(F, solve=partial(linear_solve.cg, tol=...), symmetric=True)``;
- JAXopt: ``jaxopt.implicit_diff.custom_root(F, solve=partial(solve_cg, tol=...))``;
- Optimistix: ``optimistix.internal.implicit_jvp`` around the same solver, backward solve
  ``lineax.CG``.

Run ``python benchmarks/bench_engine.py`` to rewrite the "Engine" section of docs/benchmarks.md,
``--quick`` for a smoke test on tiny problems (prints only, unless ``--output`` is given).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.sparse.linalg as jsp_sparse  # noqa: E402
import jaxopt  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
from optimistix.internal import implicit_jvp  # noqa: E402

import implicitdiff  # noqa: E402
from implicitdiff import linear_solve  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

#: Relative tolerance of the backward CG for every contestant: ‖A u − b‖₂ ≤ TOL · ‖b‖₂.
BACKWARD_TOL = 1e-10
#: Relative tolerance of the inner (forward) CG solves, shared by all contestants.
INNER_TOL = 1e-12
#: The largest relative difference between the contestants' gradients the script accepts.
GRADIENT_RTOL = 1e-6
#: Newton iterations of the logistic-regression solver stop at ‖∇f‖₂ ≤ NEWTON_GTOL · ‖∇f(0)‖₂.
NEWTON_GTOL = 1e-11
NEWTON_MAXITER = 30

#: The engines compared; "ours (nan)" is ours with on_failure="nan" (see build_ours).
CONTESTANTS = ("ours", "ours (nan)", "JAXopt", "Optimistix")
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


# ---------------------------------------------------------------------------------------------
# The problems: optimality function F(x, lam, A, b) = ∇ₓ f, inner solver, validation loss.


# Products with Xᵀ are written u @ X, not X.T @ u: inside a loop, XLA:CPU turns X.T @ u into a
# slow fused transpose-and-dot (3-4x slower at 2,000 × 10,000), while u @ X is a plain dot.


def ridge_optimality(x, lam, X, y):
    """∇ of ½‖Xx − y‖² + ½λ‖x‖², written out: Xᵀ(Xx − y) + λx."""
    return (X @ x - y) @ X + lam * x


def ridge_solver(init, lam, X, y):
    """CG on (XᵀX + λI) x = Xᵀy, by matvecs (XᵀX is never formed)."""
    x, _ = jsp_sparse.cg(lambda v: (X @ v) @ X + lam * v, y @ X, x0=init, tol=INNER_TOL)
    return x


def ridge_validation_loss(x, X_val, y_val):
    return 0.5 * jnp.mean((X_val @ x - y_val) ** 2)


def logistic_objective(w, lam, A, b):
    """Mean logistic loss of labels b ∈ {−1, 1} plus ½λ‖w‖²."""
    return jnp.mean(jnp.logaddexp(0.0, -b * (A @ w))) + 0.5 * lam * (w @ w)


#: F = ∇f by autodiff: the engines' matvecs differentiate through jax.grad (second order).
logistic_optimality = jax.grad(logistic_objective)


def logistic_solver(init, lam, A, b):
    """Newton's method, each step solved by CG with the Hessian written out as a matvec."""
    n = A.shape[0]

    def newton_step(state):
        w, grad, k = state
        margins = b * (A @ w)
        curvature = jax.nn.sigmoid(margins) * jax.nn.sigmoid(-margins) / n

        def hessian_matvec(v):
            return (curvature * (A @ v)) @ A + lam * v

        step, _ = jsp_sparse.cg(hessian_matvec, -grad, tol=INNER_TOL)
        w = w + step
        return w, logistic_optimality(w, lam, A, b), k + 1

    grad0 = logistic_optimality(init, lam, A, b)
    threshold = NEWTON_GTOL * jnp.linalg.norm(logistic_optimality(jnp.zeros_like(init), lam, A, b))

    def not_converged(state):
        _, grad, k = state
        return (jnp.linalg.norm(grad) > threshold) & (k < NEWTON_MAXITER)

    w, _, _ = jax.lax.while_loop(not_converged, newton_step, (init, grad0, 0))
    return w


def logistic_validation_loss(w, A_val, b_val):
    return jnp.mean(jnp.logaddexp(0.0, -b_val * (A_val @ w)))


@dataclass
class Problem:
    name: str
    n: int  # training samples
    p: int  # features
    optimality: Callable  # F(x, lam, A, b)
    solver: Callable  # solver(init, lam, A, b) -> x
    validation_loss: Callable  # loss(x, A_val, b_val)
    theta: jax.Array  # log λ, the point where the hypergradient is taken
    data: tuple  # (A, b, A_val, b_val)

    @property
    def size(self) -> str:
        return f"{self.n:,} × {self.p:,}"


def ridge_problem(n: int, p: int, lam: float = 0.5, seed: int = 0) -> Problem:
    """Gaussian design scaled by 1/√n (so XᵀX is O(1)), noisy linear targets."""
    rng = np.random.default_rng(seed)
    n_val = max(n // 2, 10)
    X = rng.standard_normal((n + n_val, p)) / np.sqrt(n)
    w_true = rng.standard_normal(p)
    y = X @ w_true + 0.1 * rng.standard_normal(n + n_val)
    data = tuple(jnp.asarray(a) for a in (X[:n], y[:n], X[n:], y[n:]))
    return Problem(
        "ridge", n, p, ridge_optimality, ridge_solver, ridge_validation_loss,
        jnp.log(lam), data,
    )  # fmt: skip


def logistic_problem(n: int, p: int, lam: float = 1e-2, seed: int = 1) -> Problem:
    """Gaussian features, labels from a noisy linear model."""
    rng = np.random.default_rng(seed)
    n_val = max(n // 2, 10)
    A = rng.standard_normal((n + n_val, p))
    w_true = rng.standard_normal(p) / np.sqrt(p)
    b = np.where(A @ w_true + 0.5 * rng.standard_normal(n + n_val) > 0, 1.0, -1.0)
    data = tuple(jnp.asarray(a) for a in (A[:n], b[:n], A[n:], b[n:]))
    return Problem(
        "logistic", n, p, logistic_optimality, logistic_solver, logistic_validation_loss,
        jnp.log(lam), data,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The contestants. Each builder returns a fresh outer(θ, A, b, A_val, b_val) (fresh, so that
# compile-time measurements hit no trace cache).


def _outer(problem: Problem, solver: Callable) -> Callable:
    def outer(theta, A, b, A_val, b_val):
        x = solver(jnp.zeros(A.shape[1], A.dtype), jnp.exp(theta), A, b)
        return problem.validation_loss(x, A_val, b_val)

    return outer


def build_forward(problem: Problem) -> Callable:
    """The inner solve and the validation loss, no gradient."""
    return _outer(problem, lambda *args: problem.solver(*args))


def build_ours(problem: Problem, on_failure: str = "warn") -> Callable:
    """``on_failure="warn"`` is the default; "nan" checks the same residual without a callback."""
    solve = functools.partial(linear_solve.cg, tol=BACKWARD_TOL)
    solver = implicitdiff.custom_root(
        problem.optimality, solve=solve, symmetric=True, on_failure=on_failure
    )(lambda init, lam, A, b: problem.solver(init, lam, A, b))
    return jax.value_and_grad(_outer(problem, solver))


def build_jaxopt(problem: Problem) -> Callable:
    solve = functools.partial(jaxopt.linear_solve.solve_cg, tol=BACKWARD_TOL)
    solver = jaxopt.implicit_diff.custom_root(problem.optimality, solve=solve)(
        lambda init, lam, A, b: problem.solver(init, lam, A, b)
    )
    return jax.value_and_grad(_outer(problem, solver))


# Optimistix wants module-level functions without closures; the solver and F travel in inputs.
def _optx_primal(inputs):
    solver, _, init, lam, A, b = inputs
    return solver(init, lam, A, b), None


def _optx_rewrite(root, residual, inputs):
    _, optimality, _, lam, A, b = inputs
    return optimality(root, lam, A, b)


def optimistix_cg(rhs: jax.Array) -> lx.CG:
    """lineax.CG with the stopping rule of jax.scipy's CG on the backward system A u = rhs.

    Lineax stops when ‖r / (atol + rtol |b|)‖ ≤ 1 (elementwise scaling) and the last step is
    as small in the same norm. With rtol = 0, the 2-norm and atol = BACKWARD_TOL · ‖rhs‖₂ its
    residual test is the ‖r‖₂ ≤ BACKWARD_TOL · ‖b‖₂ of jax.scipy's CG, b = rhs.
    """
    atol = BACKWARD_TOL * float(jnp.linalg.norm(rhs))
    return lx.CG(rtol=0.0, atol=atol, norm=optx.two_norm)


def build_optimistix(problem: Problem, linear_solver: lx.CG) -> Callable:
    tags = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})

    def solver(init, lam, A, b):
        inputs = (problem.solver, problem.optimality, init, lam, A, b)
        root, _ = implicit_jvp(_optx_primal, _optx_rewrite, inputs, tags, linear_solver)
        return root

    return jax.value_and_grad(_outer(problem, solver))


# ---------------------------------------------------------------------------------------------
# Diagnostics: gradients agree, and how many CG iterations each backward solve takes.


def backward_system(problem: Problem) -> tuple[Callable, jax.Array]:
    """v ↦ ∂ₓF(x*) v and the backward right-hand side ∇ₓ(validation loss) at x*.

    The reverse pass solves (∂ₓF)ᵀ u = ±rhs, the same system (∂ₓF is symmetric) for every
    engine. Also checks that the inner solver converged. (x*, its stationarity and the
    right-hand side come from one compiled program; the matvec is traced where it is used.)
    """
    lam = jnp.exp(problem.theta)
    A, b, A_val, b_val = problem.data

    @jax.jit
    def solution(lam, A, b, A_val, b_val):
        x = problem.solver(jnp.zeros(problem.p, A.dtype), lam, A, b)
        stationarity = jnp.linalg.norm(problem.optimality(x, lam, A, b)) / jnp.linalg.norm(
            problem.optimality(jnp.zeros_like(x), lam, A, b)
        )
        return x, stationarity, jax.grad(problem.validation_loss)(x, A_val, b_val)

    x, stationarity, rhs = solution(lam, A, b, A_val, b_val)
    assert stationarity < 1e-9, f"{problem.name}: inner solver not converged ({stationarity:.1e})"

    def matvec(v):
        return jax.jvp(lambda u: problem.optimality(u, lam, A, b), (x,), (v,))[1]

    return matvec, rhs


def cg_iterations(matvec: Callable, rhs: jax.Array, linear_solver: lx.CG) -> tuple[int, int]:
    """Iterations of jax.scipy's CG (ours, JAXopt) and of lineax.CG on the backward system
    (each solve one compiled program)."""
    calls = []

    def counted_matvec(v):
        jax.debug.callback(lambda: calls.append(1))
        return matvec(v)

    scipy_cg = jax.jit(lambda rhs: jsp_sparse.cg(counted_matvec, rhs, tol=BACKWARD_TOL)[0])
    jax.block_until_ready(scipy_cg(rhs))
    jax.effects_barrier()

    @jax.jit
    def lineax_steps(rhs):
        operator = lx.FunctionLinearOperator(
            matvec,
            jax.eval_shape(lambda: rhs),
            tags=(lx.symmetric_tag, lx.positive_semidefinite_tag),
        )
        return lx.linear_solve(operator, rhs, linear_solver).stats["num_steps"]

    return len(calls) - 1, int(lineax_steps(rhs))  # jax.scipy: one matvec for r₀


# ---------------------------------------------------------------------------------------------
# The benchmark.


@dataclass
class Result:
    problem: Problem
    compile_samples: dict[str, list[float]]  # seconds per repeat, by contestant and "forward"
    run_samples: dict[str, list[float]]
    grads: dict[str, float]
    iterations: tuple[int, int]  # backward CG iterations: jax.scipy, lineax

    def run(self, name: str) -> float:
        return _timing.median(self.run_samples[name])

    def compile(self, name: str) -> float:
        return _timing.median(self.compile_samples[name])

    def ratio(self, kind: str, name: str, peer: str) -> float:
        samples = self.run_samples if kind == "run" else self.compile_samples
        return _timing.paired_ratio(samples[name], samples[peer])


def benchmark(problem: Problem, compile_repeats: int, run_budget_s: float) -> Result:
    matvec, rhs = backward_system(problem)
    linear_solver = optimistix_cg(rhs)
    builders = {
        "forward": lambda: build_forward(problem),
        "ours": lambda: build_ours(problem),
        "ours (nan)": lambda: build_ours(problem, on_failure="nan"),
        "JAXopt": lambda: build_jaxopt(problem),
        "Optimistix": lambda: build_optimistix(problem, linear_solver),
    }
    args = (problem.theta, *problem.data)
    compile_samples, _ = _timing.compile_times(builders, args, compile_repeats)
    # Run times are taken through jax.jit, the path a user's code takes. (An ahead-of-time
    # ``Compiled`` object dispatches from Python when its program holds a host callback, as the
    # default failure report does: about 0.1 ms more per call; jax.jit keeps the C++ dispatch.)
    compiled = {name: jax.jit(build()) for name, build in builders.items()}

    outputs = {name: compiled[name](*args) for name in CONTESTANTS}
    values = [float(value) for value, _ in outputs.values()]
    assert max(values) - min(values) <= 1e-12 * abs(values[0]), values
    run_samples = _timing.run_times(
        compiled, args, budget_seconds=run_budget_s, repeat_range=(7, 41)
    )
    return Result(
        problem,
        compile_samples,
        run_samples,
        {name: float(grad) for name, (_, grad) in outputs.items()},
        cg_iterations(matvec, rhs, linear_solver),
    )


def problems(quick: bool) -> list[Problem]:
    if quick:
        return [ridge_problem(40, 20), logistic_problem(100, 10)]
    return [
        ridge_problem(200, 100),
        ridge_problem(2_000, 1_000),
        ridge_problem(2_000, 10_000),
        logistic_problem(1_000, 100),
        logistic_problem(10_000, 1_000),
    ]


# ---------------------------------------------------------------------------------------------
# Report.


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def tables(results: list[Result]) -> str:
    fmt = _timing.format_seconds
    peers = ("JAXopt", "Optimistix")
    run_rows, compile_rows, grad_rows = [], [], []
    for r in results:
        label = [r.problem.name, r.problem.size]
        run_rows.append(
            [
                *label,
                *(fmt(r.run(name)) for name in ("forward", *CONTESTANTS)),
                *(f"{r.ratio('run', 'ours', peer):.2f}" for peer in peers),
                f"{r.ratio('run', 'ours', 'ours (nan)'):.2f}",
                f"{r.iterations[0]} / {r.iterations[1]}",
            ]
        )
        compile_rows.append(
            [
                *label,
                *(fmt(r.compile(name), "s") for name in ("forward", *CONTESTANTS)),
                *(f"{r.ratio('compile', 'ours', peer):.2f}" for peer in peers),
            ]
        )
        g = r.grads
        grad_rows.append(
            [
                *label,
                f"{g['ours']:.12e}",
                *(f"{_relative(g[name], g['ours']):.1e}" for name in CONTESTANTS[1:]),
            ]
        )
    columns = ["problem", "n × p", "forward only", *CONTESTANTS]
    ratios = [f"ours/{peer}" for peer in peers]
    grad_header = ["problem", "n × p", "dL/dθ (ours)", *(f"vs {n}" for n in CONTESTANTS[1:])]
    return "\n\n".join(
        [
            "**Run time** (ms per call of the jax.jit-ed function, back-to-back calls, median of "
            "interleaved repeats; ratios: median of the ratios within each round; ours/ours "
            "(nan): the cost of the default failure report, goal ≤ 1.05; last column: iterations "
            "of the backward CG, jax.scipy (ours, JAXopt) / lineax):",
            _timing.markdown_table([*columns, *ratios, "ours/ours (nan)", "CG its"], run_rows),
            "**Compile time** (s: trace + lower + XLA compile, median of interleaved repeats; "
            "ratios as above):",
            _timing.markdown_table([*columns, *ratios], compile_rows),
            "**Gradient agreement** (relative difference from ours):",
            _timing.markdown_table(grad_header, grad_rows),
        ]
    )


def max_gradient_difference(results: list[Result]) -> float:
    return max(_relative(r.grads[n], r.grads["ours"]) for r in results for n in CONTESTANTS[1:])


def _goal_line(results: list[Result], kind: str, peer: str) -> str:
    above = []
    for r in results:
        value = r.ratio(kind, "ours", peer)
        if value > 1.0:
            above.append(f"{r.problem.name} {r.problem.size} ({value:.2f})")
    met = len(results) - len(above)
    line = f"- {kind} time, ours/{peer} ≤ 1.0: {met} of {len(results)} problems"
    return line + (f"; above 1.0: {', '.join(above)}." if above else ".")


def reading(results: list[Result]) -> str:
    goals = [
        _goal_line(results, kind, peer)
        for kind in ("run", "compile")
        for peer in ("JAXopt", "Optimistix")
    ]
    over = [r for r in results if r.ratio("run", "ours", "ours (nan)") > 1.05]
    goals.append(
        f"- run time, ours/ours (nan) ≤ 1.05 (the default failure report): "
        f"{len(results) - len(over)} of {len(results)} problems"
        + (
            f"; above: {', '.join(r.problem.name + ' ' + r.problem.size for r in over)}."
            if over
            else "."
        )
    )
    backward = [r.run("ours (nan)") / r.run("forward") - 1 for r in results]
    large = max(results, key=lambda r: r.run("forward"))
    report_cost = [r.ratio("run", "ours", "ours (nan)") for r in results]
    largest_problem = []
    if large.run("ours") > 0.05:  # fixed per-call costs are then negligible
        largest_problem.append(
            f"- On the largest problem ({large.problem.name} {large.problem.size}, "
            f"{large.run('ours') * 1e3:.0f} ms a call) the fixed costs vanish: ours/JAXopt "
            f"{large.ratio('run', 'ours', 'JAXopt'):.2f}, ours/Optimistix "
            f"{large.ratio('run', 'ours', 'Optimistix'):.2f}, ours (nan)/JAXopt "
            f"{large.ratio('run', 'ours (nan)', 'JAXopt'):.2f}. Ratios within a few percent of "
            "1 are within the noise of a shared machine (see the load average above)."
        )
    return "\n".join(
        [
            "The goal: run-time and compile-time ratios ≤ 1.0 against both peers. In this run:",
            "",
            *goals,
            "",
            "What the numbers say:",
            "",
            f"- The backward pass makes a call {min(backward):.0%} to {max(backward):.0%} longer "
            "than the forward solve alone (ours (nan) against forward only): the backward CG "
            "takes about as many products with A as one CG solve of the forward pass.",
            '- ours vs ours (nan): the default `on_failure="warn"` reports a failed backward '
            "solve through `lax.cond(failed, pure_callback, identity)`: no effect in the "
            "program, so JAX's C++ fast dispatch is kept and the callback runs only when the "
            f"solve failed. ours/ours (nan) from {min(report_cost):.2f} to "
            f"{max(report_cost):.2f} (goal ≤ 1.05; the former `io_callback` cost 1.6x on "
            'ridge 200 × 100). `on_failure="nan"` checks the same residual without a report; '
            '`"ignore"` skips the check.',
            "- The residual check itself is one more product with A after the backward CG "
            "(ours (nan) keeps it, JAXopt and Optimistix have none): about one part in the "
            "number of CG iterations of the backward solve.",
            "- The products with A differ: ours linearizes F (a JVP; for the logistic "
            "F = jax.grad(f) that is forward-over-reverse), JAXopt applies Aᵀ by a VJP of F "
            "(reverse-over-reverse), Optimistix linearises F (`JacobianLinearOperator`) and "
            "transposes it. For ridge, F is linear and all three cost the same two products "
            "with X.",
            "- lineax's CG recomputes the residual from scratch every 10 iterations (one more "
            "matvec) and also requires the last step to be small, hence as many or a few more "
            "iterations (last column of the run table): a linear-solver difference, not an "
            "engine one.",
            *largest_problem,
        ]
    )


def report(results: list[Result], quick: bool, loads: list[float | None]) -> str:
    command = "python benchmarks/bench_engine.py" + (" --quick" if quick else "")
    method = f"""\
Hypergradient of a validation loss through an inner solution x*(λ), λ = exp(θ), taken as
`jax.jit(jax.value_and_grad(outer))(θ, data)`, in float64. Every contestant wraps the same inner
solver (`benchmarks/bench_engine.py`) and solves its backward system by conjugate gradient; only
the implicit-differentiation engine differs.

- ridge: x*(λ) = argmin ½‖Xx − y‖² + ½λ‖x‖², λ = 0.5, X Gaussian scaled by 1/√n; inner solver:
  `jax.scipy.sparse.linalg.cg` on (XᵀX + λI)x = Xᵀy by matvecs (XᵀX never formed), relative
  tolerance {INNER_TOL:g}; F(x, λ) = Xᵀ(Xx − y) + λx written out; validation loss ½ mean
  squared error on n/2 held-out samples.
- logistic: L2-regularized binary logistic regression (mean loss + ½λ‖w‖², λ = 0.01); inner
  solver: Newton's method, each step a CG solve with the Hessian written as a matvec, until
  ‖∇f‖ ≤ {NEWTON_GTOL:g} ‖∇f(0)‖; F = `jax.grad(f)`; validation loss: mean logistic loss.
- in the shared code, products with Xᵀ are written `u @ X`: XLA:CPU compiles `X.T @ u` inside a
  loop into a fused transpose-and-dot, 3-4x slower at 2,000 × 10,000.
- ours: `implicitdiff.custom_root(F, solve=partial(linear_solve.cg, tol={BACKWARD_TOL:g}),
  symmetric=True)`, default `on_failure="warn"`; ours (nan): the same with
  `on_failure="nan"`.
- JAXopt: `jaxopt.implicit_diff.custom_root(F, solve=partial(jaxopt.linear_solve.solve_cg,
  tol={BACKWARD_TOL:g}))`.
- Optimistix: `optimistix.internal.implicit_jvp` (the function behind `ImplicitAdjoint`)
  around the same inner solver, tags symmetric + positive semidefinite, backward solve
  `lineax.CG`.

Comparable tolerances: ours and JAXopt both call `jax.scipy.sparse.linalg.cg`, which stops at
‖r‖₂ ≤ tol · ‖b‖₂ with tol = {BACKWARD_TOL:g}. `lineax.CG` scales the residual elementwise
(‖r / (atol + rtol·|b|)‖ ≤ 1, max norm by default), so it gets `rtol=0`,
`norm=optimistix.two_norm` and `atol = {BACKWARD_TOL:g} · ‖b‖₂`, b the backward right-hand side
(∇ₓ of the validation loss at x*, computed once per problem): the same residual test. lineax
also requires the last step to be as small, and recomputes the residual every 10 iterations.

Compile time: `jax.jit(f).lower(*args).compile()` on a freshly built function (so no trace is
cached). Run time: calls of that `jax.jit(f)` (its program already compiled) with
`block_until_ready`; the contestants'
repeats are interleaved, in rotating order, and the median is reported; a ratio is the median
over rounds of the ratio of two samples of the same round. "forward only" is the inner solve
and the validation loss, without a gradient. The script exits with an error if the gradients
differ by more than {GRADIENT_RTOL:g} (relative).
"""
    packages = ("jax", "jaxlib", "jaxopt", "optimistix", "lineax", "equinox")
    machine = "\n".join(_timing.machine_lines(packages, loads))
    return "\n\n".join(
        [
            method.strip(),
            f"Machine:\n\n{machine}",
            'Reproduce (from the repository root, after `pip install -e ".[bench]"`; '
            "`make bench` does both):\n\n"
            f"```\n{command}\n```",
            tables(results),
            f"Largest relative difference between the gradients: "
            f"{max_gradient_difference(results):.1e}.",
            "### Reading\n\n" + reading(results),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--output", type=Path, default=None, help=f"markdown file (default {DOC})")
    options = parser.parse_args()
    output = options.output or (None if options.quick else DOC)
    compile_repeats, run_budget_s = (1, 0.2) if options.quick else (3, 20.0)

    results, loads = [], [_timing.load_average()]
    for problem in problems(options.quick):
        start = time.perf_counter()
        results.append(benchmark(problem, compile_repeats, run_budget_s))
        loads.append(_timing.load_average())
        print(f"{problem.name} {problem.size}: {time.perf_counter() - start:.0f} s", flush=True)
    print(tables(results))
    worst = max_gradient_difference(results)
    print(f"max relative gradient difference: {worst:.1e}")
    if output is not None:
        _timing.write_section(output, "Engine", report(results, options.quick, loads))
        print(f"wrote {output}")
    if not worst <= GRADIENT_RTOL:
        sys.exit(f"the gradients disagree: relative difference {worst:.1e} > {GRADIENT_RTOL:g}")


if __name__ == "__main__":
    main()
