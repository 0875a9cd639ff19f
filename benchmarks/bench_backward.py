"""Backward against forward: the time of the implicit backward pass divided by the time of the
forward solve it differentiates.

For each (problem, solver) pair below, with the solver's own stopping rule (tol, defaults
otherwise):

- forward: ``jax.jit(solve)`` with solve(θ) the solver's ``run`` alone (x*(θ) and its state);
- backward: the VJP of the solution map alone, u ↦ uᵀ ∂x*(θ), for u = ∇ₓL(x*) the gradient of
  the validation loss: ``vjp_fun`` from ``jax.vjp(solve, θ)``, applied inside ``jax.jit`` (it is
  a pytree of the saved residuals). This is the implicit-differentiation work: the linear solve
  Aᵀv = u (matrix-free, or dense when small) and the product vᵀB;
- value+grad: ``jax.jit(jax.value_and_grad(outer))``, outer(θ) = L(x*(θ)), whose excess over
  the forward solve, (value+grad − forward) / forward, cross-checks the first ratio.

The three are timed in interleaved rounds (medians; ratios: the median over rounds of the
ratio within a round). Goal: backward / forward ≤ 0.3.

Where the backward time goes (:func:`anatomy`): the solver ``solve='auto'`` picks for the system
(:func:`implicitdiff.linear_solve.auto_choice`), on the support when the condition states one,
the products with Aᵀ it takes (n to build a dense matrix; for CG and GMRES, counted by SciPy's
solver of the same method on the same system, to the same relative tolerance 1e-10), and the
time of one product (50 chained products in one call, divided by 50).

Run ``python benchmarks/bench_backward.py`` to rewrite the "Backward vs forward" section of
docs/benchmarks.md and its PNG in docs/images/; ``--quick`` for tiny sizes (prints only, unless
``--output`` is given: the PNG then goes to an ``images`` folder beside that file).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse.linalg as scipy_sparse  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from implicitdiff import linear_solve, prox, tree  # noqa: E402
from implicitdiff.implicit import BackwardSolveWarning  # noqa: E402
from implicitdiff.solvers import (  # noqa: E402
    LBFGS,
    GradientDescent,
    MirrorDescent,
    ProjectedGradient,
    ProximalGradient,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _plots  # noqa: E402
import _timing  # noqa: E402
from bench_unroll import (  # noqa: E402
    least_squares,
    regression_data,
    rows_simplex,
    svm_data,
    svm_objective,
    validation_loss,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "Backward vs forward"
GOAL = 0.3


@dataclass
class Config:
    key: str
    problem: str
    solver_text: str
    solver: object  # an implicitdiff solver
    init: jax.Array
    to_args: Callable  # θ, *data -> the arguments of run after init_params
    loss: Callable  # L(x, θ, *data)
    theta: float
    data: tuple

    def solve(self, theta, *data):
        return self.solver.run(self.init, *self.to_args(theta, *data))

    @property
    def unknowns(self) -> int:
        return int(self.init.size)


def svm_configs(m: int, p: int, k: int) -> list[Config]:
    data = svm_data(m, p, k)
    X = data[0]
    eta_pg = 1.0 / float(jnp.linalg.norm(X, 2)) ** 2
    eta_md = 1.0 / float(jnp.max(jnp.abs(X @ X.T)))

    def to_args(log_theta, X, Y, X_val, Y_val):
        return None, jnp.exp(log_theta), X, Y

    def loss(x, log_theta, X, Y, X_val, Y_val):
        W = X.T @ (Y - x) / jnp.exp(log_theta)
        return 0.5 * jnp.mean((X_val @ W - Y_val) ** 2)

    problem = f"SVM dual, m = {m}, k = {k}, p = {p}"
    common = dict(problem=problem, init=jnp.full((m, k), 1.0 / k), to_args=to_args, loss=loss,
                  theta=0.0, data=data)  # fmt: skip
    return [
        Config(
            "svm-md", solver_text="MirrorDescent (entropy, step 1/L₁, tol 1e-6)",
            solver=MirrorDescent(fun=svm_objective, stepsize=eta_md, maxiter=20_000), **common,
        ),
        Config(
            "svm-pg", solver_text="ProjectedGradient (FISTA, step 1/L, tol 1e-6)",
            solver=ProjectedGradient(
                fun=svm_objective, projection=rows_simplex, stepsize=eta_pg, maxiter=20_000
            ),
            **common,
        ),
    ]  # fmt: skip


def lasso_config(n: int, p: int) -> Config:
    data = regression_data(n, p)
    eta = n / float(jnp.linalg.norm(data[0], 2)) ** 2

    def to_args(log_lam, X, y, X_val, y_val):
        return jnp.exp(log_lam), X, y

    def loss(w, log_lam, X, y, X_val, y_val):
        return validation_loss(w, X_val, y_val)

    return Config(
        f"lasso-{n}x{p}", problem=f"lasso {n:,} × {p:,}",
        solver_text="ProximalGradient (FISTA, step 1/L, prox.l1, tol 1e-6)",
        solver=ProximalGradient(fun=least_squares, prox=prox.l1, stepsize=eta, maxiter=20_000),
        init=jnp.zeros(p), to_args=to_args, loss=loss, theta=float(np.log(0.1)), data=data,
    )  # fmt: skip


def logistic_objective(w, lam, A, b):
    """Mean logistic loss of labels b ∈ {−1, 1} plus ½λ‖w‖²."""
    return jnp.mean(jnp.logaddexp(0.0, -b * (A @ w))) + 0.5 * lam * (w @ w)


def logistic_data(n: int, p: int, seed: int = 1) -> tuple:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((2 * n, p))
    b = np.where(A @ rng.standard_normal(p) / np.sqrt(p) + rng.standard_normal(2 * n) > 0, 1, -1)
    return tuple(jnp.asarray(a, float) for a in (A[:n], b[:n], A[n:], b[n:]))


def logistic_configs(n: int, p: int, with_gd: bool) -> list[Config]:
    data = logistic_data(n, p)
    lam = 0.05
    smooth = float(jnp.linalg.norm(data[0], 2)) ** 2 / (4 * n) + lam

    def to_args(log_lam, A, b, A_val, b_val):
        return jnp.exp(log_lam), A, b

    def loss(w, log_lam, A, b, A_val, b_val):
        return jnp.mean(jnp.logaddexp(0.0, -b_val * (A_val @ w)))

    common = dict(problem=f"logistic {n:,} × {p:,}", init=jnp.zeros(p), to_args=to_args,
                  loss=loss, theta=float(np.log(lam)), data=data)  # fmt: skip
    configs = [
        Config(
            f"logistic-{n}x{p}-lbfgs", solver_text="LBFGS (zoom line search, tol 1e-6)",
            solver=LBFGS(fun=logistic_objective), **common,
        )
    ]  # fmt: skip
    if with_gd:
        configs.append(
            Config(
                f"logistic-{n}x{p}-gd", solver_text="GradientDescent (step 1/L, tol 1e-6)",
                solver=GradientDescent(
                    fun=logistic_objective, stepsize=1.0 / smooth, maxiter=20_000
                ),
                **common,
            )
        )  # fmt: skip
    return configs


def configs(quick: bool) -> list[Config]:
    if quick:
        return [svm_configs(20, 40, 3)[0], lasso_config(40, 10)]
    return [
        *svm_configs(200, 400, 5),
        lasso_config(300, 100),
        lasso_config(2_000, 1_000),
        *logistic_configs(1_000, 100, True),
        *logistic_configs(10_000, 1_000, False),
    ]


# ---------------------------------------------------------------------------------------------
# Measurement.


@dataclass
class Anatomy:
    """What the backward solve does: ``auto``'s choice, the support, the products with Aᵀ."""

    choice: str  # "lu", "cg" or "gmres"
    unknowns: int
    support: int | None  # the size of the support, None when the condition states none
    products: int  # products with Aᵀ in the solve (the residual check's one not counted)
    product_seconds: float  # one product alone, jitted
    products_loose: int  # the same at the relative tolerance LOOSE_TOL (Krylov solves only)

    @property
    def label(self) -> str:
        name = {"lu": "LU (dense)", "cg": "CG", "gmres": "GMRES"}[self.choice]
        if self.support is None:
            return name
        return f"{name} on the support ({self.support:,} of {self.unknowns:,})"


#: The looser backward tolerance the anatomy also counts products for: the forward solves' own
#: tolerance (and JAXopt's default order of magnitude), to size what a backward tolerance
#: matched to the forward's would save.
LOOSE_TOL = 1e-6


def _count_products(choice: str, rmatvec: Callable, b: jax.Array, rtol: float = 1e-10) -> int:
    """Products with Aᵀ that SciPy's CG or GMRES (restart 20, as JAX's) takes to the relative
    tolerance ``rtol`` on the system rmatvec(u) = b (flat vectors)."""
    count = [0]

    def apply(u):
        count[0] += 1
        return np.array(rmatvec(jnp.asarray(u)))  # a writable copy (SciPy updates it)

    n = b.shape[0]
    operator = scipy_sparse.LinearOperator((n, n), matvec=apply, dtype=np.float64)
    rhs = np.asarray(b)
    if choice == "cg":
        scipy_sparse.cg(operator, rhs, rtol=rtol, atol=0.0, maxiter=10 * n)
    else:
        scipy_sparse.gmres(operator, rhs, rtol=rtol, atol=0.0, restart=20, maxiter=10 * n)
    return count[0]


_CHAIN = 50


def anatomy(config: Config, x: jax.Array, cotangent: jax.Array) -> Anatomy:
    """The backward solve of ``config`` at its solution x for the cotangent u: Aᵀ w = u."""
    theta = jnp.asarray(config.theta)
    args = config.to_args(theta, *config.data)
    kind, fun = config.solver.optimality()

    def residual(v):
        value = fun(v, *args)
        return value if kind == "root" else tree.sub(v, value)

    _, vjp = jax.vjp(residual, x)
    free = fun.support(x, *args) if getattr(fun, "support", None) is not None else None
    symmetric = getattr(fun, "symmetric", False) or (
        free is not None and getattr(fun, "support_symmetric", False)
    )
    flat_u, unravel = ravel_pytree(cotangent)
    flat_free = None if free is None else ravel_pytree(free)[0]

    def rmatvec(w):  # Aᵀ, restricted to the support as the engine restricts it
        if flat_free is None:
            return ravel_pytree(vjp(unravel(w))[0])[0]
        inside = jnp.where(flat_free, w, 0.0)
        return jnp.where(flat_free, ravel_pytree(vjp(unravel(inside))[0])[0], w)

    choice = linear_solve.auto_choice(rmatvec, flat_u, symmetric=symmetric)
    rhs = flat_u if flat_free is None else jnp.where(flat_free, flat_u, 0.0)
    n = int(flat_u.size)
    jitted_rmatvec = jax.jit(rmatvec)
    products = n if choice == "lu" else _count_products(choice, jitted_rmatvec, rhs)
    loose = n if choice == "lu" else _count_products(choice, jitted_rmatvec, rhs, LOOSE_TOL)
    if free is not None:
        products += 2  # the right-hand side on the support, and the completion off it
        loose += 2
    # One product's time: 50 in a loop, each depending on the last, in one call (no dispatch).
    chain = jax.jit(lambda u: jax.lax.fori_loop(0, _CHAIN, lambda i, v: u + 1e-30 * rmatvec(v), u))
    samples = _timing.run_times({"chain": lambda: chain(flat_u)}, (), budget_seconds=0.5)
    return Anatomy(
        choice, n, None if free is None else int(np.sum(flat_free)), products,
        _timing.median(samples["chain"]) / _CHAIN, loose,
    )  # fmt: skip


@dataclass
class Result:
    config: Config
    samples: dict[str, list[float]]  # forward, backward, value+grad
    iterations: int
    converged: bool
    backward_failed: bool
    anatomy: Anatomy

    def time(self, name: str) -> float:
        return _timing.median(self.samples[name])

    @property
    def ratio(self) -> float:
        return _timing.paired_ratio(self.samples["backward"], self.samples["forward"])

    @property
    def excess(self) -> float:
        return _timing.median(
            [
                (vg - f) / f
                for vg, f in zip(self.samples["value+grad"], self.samples["forward"], strict=True)
            ]
        )


def measure(config: Config, budget: float, repeat_range: tuple[int, int]) -> Result:
    theta = jnp.asarray(config.theta)
    data = config.data

    def solution(theta, *data):
        return config.solve(theta, *data).params

    def outer(theta, *data):
        return config.loss(solution(theta, *data), theta, *data)

    # Timed through jax.jit (see benchmarks/_timing.py: an ahead-of-time Compiled object
    # dispatches from Python when its program holds the failure report's host callback).
    forward = _timing.jitted(config.solve, (theta, *data))  # (params, state)
    value_and_grad = _timing.jitted(jax.value_and_grad(outer), (theta, *data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BackwardSolveWarning)
        x, vjp_fun = jax.vjp(lambda t: solution(t, *data), theta)
        cotangent = jax.grad(config.loss)(x, theta, *data)
        backward = _timing.jitted(lambda f, u: f(u), (vjp_fun, cotangent))
        jax.block_until_ready(backward(vjp_fun, cotangent))
        jax.block_until_ready(value_and_grad(theta, *data))
        jax.effects_barrier()
    failed = any(issubclass(w.category, BackwardSolveWarning) for w in caught)
    state = forward(theta, *data).state
    parts = anatomy(config, x, cotangent)

    # One signature for the three: forward(θ), value_and_grad(θ), backward(vjp_fun, u).
    fns = {
        "forward": lambda: forward(theta, *data),
        "backward": lambda: backward(vjp_fun, cotangent),
        "value+grad": lambda: value_and_grad(theta, *data),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackwardSolveWarning)
        samples = _timing.run_times(fns, (), budget_seconds=budget, repeat_range=repeat_range)
    return Result(config, samples, int(state.iter_num), bool(state.converged), failed, parts)


# ---------------------------------------------------------------------------------------------
# Report.


def loose_ratio(r: Result) -> float:
    """backward / forward with the products that LOOSE_TOL saves taken off the backward time."""
    saved = (r.anatomy.products - r.anatomy.products_loose) * r.anatomy.product_seconds
    return (r.time("backward") - saved) / r.time("forward")


def table(results: list[Result]) -> str:
    fmt = _timing.format_seconds
    rows = [
        [
            r.config.problem,
            r.config.solver_text.split(" (")[0],
            f"{r.iterations:,}" + ("" if r.converged else " (not converged)"),
            f"{r.config.unknowns:,}",
            r.anatomy.label + (" (failed)" if r.backward_failed else ""),
            f"{r.anatomy.products:,}",
            fmt(r.anatomy.product_seconds),
            fmt(r.time("forward")),
            fmt(r.time("backward")),
            fmt(r.time("value+grad")),
            f"**{r.ratio:.2f}**" if r.ratio > GOAL else f"{r.ratio:.2f}",
            f"{r.excess:.2f}",
        ]
        for r in results
    ]
    header = [
        "problem", "solver", "iterations", "unknowns", "backward solve", "products",
        "ms per product", "forward ms", "backward ms", "value+grad ms", "backward / forward",
        "(value+grad − forward) / forward",
    ]  # fmt: skip
    return _timing.markdown_table(header, rows)


def plot(results: list[Result], path: Path) -> Path:
    """Backward and forward time of each problem: one point per problem, log-log."""
    panel = _plots.Panel(
        "Implicit backward pass against the forward solve",
        "forward solve time (s)",
        "backward time (s)",
        [
            _plots.Series(
                f"{r.config.problem}, {r.config.solver_text.split(' (')[0]}",
                [r.time("forward")],
                [r.time("backward")],
                marker,
            )
            for r, marker in zip(
                results, ["o", "s", "^", "v", "D", "P", "X", "*"] * 4, strict=False
            )
        ],
    )
    forwards = [r.time("forward") for r in results]
    lo, hi = min(forwards) / 2, max(forwards) * 2
    panel.series.append(_plots.Series(f"goal: backward = {GOAL} × forward", [lo, hi],
                                      [GOAL * lo, GOAL * hi], "k--"))  # fmt: skip
    panel.series.append(_plots.Series("backward = forward", [lo, hi], [lo, hi], "k:"))
    return _plots.loglog_panels(path, [panel], columns=1)


def reading(results: list[Result]) -> str:
    met = [r for r in results if r.ratio <= GOAL]
    missed = [r for r in results if r.ratio > GOAL]

    def name(r: Result) -> str:
        return f"{r.config.problem} ({r.config.solver_text.split(' (')[0]}, {r.ratio:.2f})"

    lines = [
        f"Goal: backward / forward ≤ {GOAL}. Met on {len(met)} of {len(results)}"
        + (": " + ", ".join(name(r) for r in met) if met else "")
        + ".",
    ]
    if missed:
        lines.append("Missed on " + ", ".join(name(r) for r in missed) + ".")
    fmt = _timing.format_seconds

    def where(r: Result) -> str:
        a = r.anatomy
        spent = a.products * a.product_seconds
        text = (
            f"{name(r)}, {r.iterations:,} forward iterations: {a.label}, {a.products:,} "
            f"products with Aᵀ at {fmt(a.product_seconds)} ms each (≈ {fmt(spent)} ms if made "
            f"one by one) of {fmt(r.time('backward'))} ms"
        )
        if a.choice == "lu":
            return text + (
                "; the n products are made at once (a batched product, cheaper than n lone "
                "ones), then the LU factorization (⅔n³)"
            )
        rest = r.time("backward") - spent
        return text + (
            f"; the rest, {fmt(max(rest, 0.0))} ms, is the solver's vector work, the product "
            "with B, the residual check and the call's fixed cost"
            if rest > 0
            else ""
        )

    krylov = [r for r in results if r.anatomy.choice != "lu"]
    loose_lines = (
        [
            "- What a looser backward tolerance would save: at the relative residual "
            f"{LOOSE_TOL:g} (the forward solves' own tolerance, JAXopt's order of magnitude) the "
            "same solves take "
            + "; ".join(
                f"{r.config.problem} ({r.config.solver_text.split(' (')[0]}): "
                f"{r.anatomy.products_loose:,} products instead of {r.anatomy.products:,}, "
                f"backward / forward ≈ {loose_ratio(r):.2f}"
                for r in krylov
            )
            + " (the products saved, at their measured cost, taken off the backward time). The "
            "hypergradient's error would then be of the order of the one the forward tolerance "
            "already leaves, about twice today's on a converged solve; the library keeps 1e-10.",
        ]
        if krylov
        else []
    )
    lines += [
        "",
        "What the numbers say (where the backward time goes):",
        "",
        "- The backward pass is one linear solve with Aᵀ (A = ∂ₓG, G the residual of the "
        "condition: ∇f for a stationary point, x − T(x) for a fixed point) plus one product "
        "with B and a residual check; its cost is a number of products with Aᵀ (each about "
        "the cost of one gradient of the objective) that does not depend on how many "
        "iterations the forward solve took. The ratio is therefore about (products of the "
        "backward solve × cost of a product) / (forward iterations × cost of an iteration). "
        "Problem by problem:",
        *[f"  - {where(r)}." for r in results],
        "- Dense or Krylov, by cost (`linear_solve.auto_choice`): a dense LU costs n products "
        "(made at once by `vmap`, about half a lone product each) plus ⅔n³; CG costs about 30 "
        "products and GMRES n (the expected counts: GMRES has no smaller bound on a "
        "non-symmetric system; each product's cost is counted on the matvec's jaxpr). `auto` "
        "picks LU only when it is estimated cheaper, and never above 200 unknowns. A fixed "
        "threshold of 200 unknowns used to pick LU for the logistic "
        "regression with 100 features and the lasso 300 × 100, where 100 batched Hessian-vector "
        "products cost more than the 20 to 40 of CG.",
        "- Support restriction: for proximal gradient with `prox.l1` and projected gradient "
        "onto the orthant or a box, the condition states its support (the coordinates where "
        "the prox's Jacobian is the identity) and the engine solves on it alone, with CG since "
        "the block η∇²f_SS is symmetric although I − ∂T is not: at most |S| + 1 products, "
        "plus two, instead of GMRES on all n. The residual is still checked on the whole "
        "system. The SVM dual's projection (rows onto simplices) states no support, so its "
        "GMRES runs on all unknowns.",
        "- Tolerance: the backward solve stops at the relative residual 1e-10 (float64), the "
        "accuracy the tests hold the derivatives to; JAXopt's default of 1e-5 would take "
        "fewer Krylov iterations at the price of the derivative's accuracy.",
        *loose_lines,
        "- Fixed costs: the default failure check (`backward_on_failure='warn'`) adds one "
        "product (the residual of the whole system), two norms and a host callback guarded by "
        "a `cond`, which runs only when the solve failed: about 0.01 ms per call through "
        "`jax.jit`. (An ahead-of-time `Compiled` object holding a host callback dispatches "
        "from Python instead of C++, about 0.1 ms more per call: earlier versions of this "
        "page timed those, which inflated the small problems' ratios by up to 0.2; it now "
        "times `jax.jit`-ed functions, as a user calls them.)",
        "- Few forward iterations: "
        + "; ".join(
            f"{r.config.problem} ({r.config.solver_text.split(' (')[0]}): {r.iterations:,} "
            f"iterations, {r.anatomy.products:,} backward products"
            for r in results
            if r.iterations <= 2 * r.anatomy.products
        )
        + ". A solver that converges in about as many iterations as CG needs products for the "
        "same Hessian (L-BFGS on the logistic regressions: an iteration costs a gradient and a "
        "line search, about one or two products) leaves backward / forward near or above 1 "
        "whatever the backward solver; on logistic 10,000 × 1,000 the products are memory-bound "
        "passes over the 10,000 × 1,000 design. Tried and not kept: the L-BFGS memory's "
        "inverse-Hessian estimate as CG's preconditioner took the backward pass from 99 to "
        "94 ms there and made it no faster at 1,000 × 100 (ten pairs say little more than the "
        "ridge term about this well-conditioned Hessian).",
        "- Cross-check: (value+grad − forward) / forward against backward / forward, problem "
        "by problem: "
        + "; ".join(f"{r.excess:.2f} vs {r.ratio:.2f}" for r in results)
        + ". The two agree to within the fixed costs of a call; value+grad also saves, in "
        "its forward pass, what the backward pass needs (the solution and the linearization "
        "point of F), which the forward solve alone does not.",
        "- Timing noise: the machine was shared with other work during the run (see the load "
        "average above); ratios within a round are more stable than the times themselves.",
    ]
    return "\n".join(lines)


def report(results: list[Result], quick: bool, loads: list, image: str) -> str:
    command = "python benchmarks/bench_backward.py" + (" --quick" if quick else "")
    method = """\
The cost of the implicit backward pass relative to the forward solve, in float64, with each
solver's own stopping rule (tol = 1e-6 on its error, the default; enough iterations to reach
it) and its default backward linear solve (`solve='auto'`: dense LU when estimated cheaper than a
Krylov solve and at most 200 unknowns, else CG for a symmetric system, GMRES otherwise; on the
support when the condition states one; failure check on):

- forward: `jax.jit(solve)`, solve(θ) = x*(θ), the solver's `run` alone;
- backward: the VJP of the solution map alone, u ↦ uᵀ∂x*(θ) at u = ∇ₓL(x*) (L the validation
  loss): the `vjp_fun` of `jax.vjp(solve, θ)`, applied in a jitted function that takes it as an
  argument (it is a pytree of the residuals saved by the forward pass). This is exactly the
  implicit-differentiation work: the linear solve with Aᵀ, then the product with B;
- value+grad: `jax.jit(jax.value_and_grad(outer))`, outer(θ) = L(x*(θ)), as a cross-check:
  (value+grad − forward) / forward should be close to backward / forward.

The problems (θ = log λ, log θ for the SVM): the SVM dual of the paper's §4.1 (as in the
"Implicit vs unrolled" section, θ = 1), the lasso (½ mean squared error + λ‖w‖₁, λ = 0.1) and
L2-regularized logistic regression (mean logistic loss + ½λ‖w‖², λ = 0.05, Gaussian features,
labels from a noisy linear model). Compile time excluded; the three functions are timed in
interleaved rounds, rotating order; medians; a ratio is the median over rounds of the ratio
within a round.
"""
    machine = "\n".join(_timing.machine_lines(("jax", "jaxlib"), loads))
    return "\n\n".join(
        [
            method.strip(),
            f"Machine:\n\n{machine}",
            'Reproduce (from the repository root, after `pip install -e ".[bench,examples]"`; '
            f"`make bench` runs it):\n\n```\n{command}\n```",
            f"Goal beside the figure: backward / forward ≤ {GOAL} (points below the dashed "
            "line).\n\n" + image,
            table(results),
            "### Reading\n\n" + reading(results),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--output", type=Path, default=None, help=f"markdown file (default {DOC})")
    options = parser.parse_args()
    output = options.output or (None if options.quick else DOC)
    budget, repeat_range = (0.05, (3, 3)) if options.quick else (6.0, (7, 31))

    results, loads = [], [_timing.load_average()]
    for config in configs(options.quick):
        start = time.perf_counter()
        results.append(measure(config, budget, repeat_range))
        loads.append(_timing.load_average())
        print(
            f"{config.key}: backward / forward {results[-1].ratio:.2f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    print(table(results))
    print(reading(results))
    if output is not None:
        png = plot(results, _plots.image_dir(output) / "backward_forward.png")
        image = _plots.markdown_image(png, output, "backward time against forward time")
        _timing.write_section(output, SECTION, report(results, options.quick, loads, image))
        print(f"wrote {output}, {png}")


if __name__ == "__main__":
    main()
