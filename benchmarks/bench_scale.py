"""Scale in dimension: matrix-free ridge and logistic hypergradients on sparse data, from 10³ to
10⁶ features, time and peak memory.

The data matrix is a ``jax.experimental.sparse.BCOO`` with NNZ_PER_ROW random nonzeros per row
(values N(0, 1/NNZ_PER_ROW), so rows have unit norm on average) and n = p/10 samples (at least
1,000), as many validation samples as half that. Nothing dense of size p × p or n × p exists
anywhere: the inner solver is ``implicitdiff.solvers.Newton`` (Newton-CG on Hessian-vector
products) or ``LBFGS``, and the backward system is solved by CG (``solve="cg"``) on
Hessian-vector products.

- ridge: min ½‖Xw − y‖² + ½λ‖w‖², λ = 0.1; outer loss ½ mean validation squared error.
- logistic: min Σ log(1 + exp(−yᵢ⟨xᵢ, w⟩)) + ½λ‖w‖², λ = 0.1; outer loss mean validation
  logistic loss.

θ = log λ; the hypergradient is ``jax.jit(jax.value_and_grad(outer))(θ, X, y, X_val, y_val)``.
Each (problem, size) runs in a fresh Python process, which reports XLA's memory statistics of
the compiled hypergradient (temp + argument + output buffers), its own peak resident set size
(``VmHWM``, see ``_memory.py``) before compiling and at the end, the size of the data in bytes,
the times, and the hypergradient against central finite differences of the forward solve.

Run ``python benchmarks/bench_scale.py`` to rewrite the "Scale in dimension" section of
docs/benchmarks.md and its PNG in docs/images/; ``--quick`` for tiny sizes, measured in this
process (prints only, unless ``--output`` is given: the PNG then goes to an ``images`` folder
beside that file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import sparse  # noqa: E402

from implicitdiff.solvers import LBFGS, Newton  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _memory  # noqa: E402
import _plots  # noqa: E402
import _timing  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "Scale in dimension"
SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000,)
NNZ_PER_ROW, QUICK_NNZ_PER_ROW = 20, 5
LAM = 0.1
#: The solvers stop at ‖∇f‖ ≤ GTOL · ‖∇f(0)‖.
GTOL = 1e-10
#: The goal on memory: XLA's buffers within this multiple of the data.
GOAL_MULTIPLE = 10.0
MB = 1e6


def samples(p: int, quick: bool) -> int:
    return max(100 if quick else 1_000, p // 10)


def random_sparse(rng: np.random.Generator, rows: int, p: int, k: int) -> sparse.BCOO:
    """rows × p, k nonzeros per row at random columns (duplicates add up), values N(0, 1/k)."""
    cols = rng.integers(0, p, size=(rows, k), dtype=np.int32)
    values = rng.standard_normal((rows, k)) / np.sqrt(k)
    row_ids = np.repeat(np.arange(rows, dtype=np.int32), k)
    indices = np.stack([row_ids, cols.ravel()], axis=1)
    return sparse.BCOO((jnp.asarray(values.ravel()), jnp.asarray(indices)), shape=(rows, p))


def make_data(kind: str, p: int, quick: bool, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    n, k = samples(p, quick), QUICK_NNZ_PER_ROW if quick else NNZ_PER_ROW
    X, X_val = random_sparse(rng, n, p, k), random_sparse(rng, n // 2, p, k)
    w_true = jnp.asarray(rng.standard_normal(p))
    y = X @ w_true + 0.1 * jnp.asarray(rng.standard_normal(n))
    y_val = X_val @ w_true + 0.1 * jnp.asarray(rng.standard_normal(n // 2))
    if kind == "logistic":
        y, y_val = jnp.where(y > 0, 1.0, -1.0), jnp.where(y_val > 0, 1.0, -1.0)
    return X, y, X_val, y_val


def ridge_objective(w, lam, X, y):
    r = X @ w - y
    return 0.5 * (r @ r) + 0.5 * lam * (w @ w)


def ridge_loss(w, X_val, y_val):
    return 0.5 * jnp.mean((X_val @ w - y_val) ** 2)


def logistic_objective(w, lam, X, y):
    return jnp.sum(jnp.logaddexp(0.0, -y * (X @ w))) + 0.5 * lam * (w @ w)


def logistic_loss(w, X_val, y_val):
    return jnp.mean(jnp.logaddexp(0.0, -y_val * (X_val @ w)))


@dataclass
class Config:
    key: str
    label: str
    kind: str  # ridge or logistic
    solver: type
    objective: Callable
    loss: Callable


CONFIGS = (
    Config("ridge-newton", "ridge, Newton-CG", "ridge", Newton, ridge_objective, ridge_loss),
    Config(
        "logistic-newton", "logistic, Newton-CG", "logistic", Newton, logistic_objective,
        logistic_loss,
    ),
    Config(
        "logistic-lbfgs", "logistic, L-BFGS (10 pairs)", "logistic", LBFGS, logistic_objective,
        logistic_loss,
    ),
)  # fmt: skip


def nbytes(tree) -> int:
    return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree)))


def measure(key: str, p: int, quick: bool) -> dict:
    """One (problem, size): build, compile, run, time; the figures as a dict."""
    config = next(c for c in CONFIGS if c.key == key)
    data = make_data(config.kind, p, quick)
    lam = jnp.asarray(LAM)
    gnorm0 = float(jnp.linalg.norm(jax.grad(config.objective)(jnp.zeros(p), lam, *data[:2])))
    solver = config.solver(fun=config.objective, solve="cg", tol=GTOL * gnorm0, maxiter=500)

    def outer(theta, X, y, X_val, y_val):
        w, state = solver.run(jnp.zeros(p), jnp.exp(theta), X, y)
        return config.loss(w, X_val, y_val), state.iter_num

    theta = jnp.log(lam)
    args = (theta, *data)
    rss_data = _memory.peak_rss_bytes()
    start = time.perf_counter()
    # Run times through jax.jit (benchmarks/_timing.py says why), memory from the Compiled.
    hypergradient = jax.jit(jax.value_and_grad(outer, has_aux=True))
    stats = hypergradient.lower(*args).compile().memory_analysis()
    compile_s = time.perf_counter() - start
    (value, iterations), grad = jax.block_until_ready(hypergradient(*args))
    rss_peak = _memory.peak_rss_bytes()  # before anything else is compiled

    forward = _timing.jitted(outer, args)
    h = 1e-4
    up, down = (float(forward(theta + s, *data)[0]) for s in (h, -h))
    fd = (up - down) / (2 * h)
    budget, repeat_range = (0.05, (3, 3)) if quick else (10.0, (3, 11))
    times = _timing.run_times(
        {"hypergradient": hypergradient, "forward": forward},
        args,
        budget_seconds=budget,
        repeat_range=repeat_range,
    )
    # One sparse product X @ w on its own: the unit of work of every iteration.
    product = jax.jit(lambda X, w: X @ w)
    w = jnp.ones(p)
    product_s = _timing.run_times({"X @ w": product}, (data[0], w), budget_seconds=budget / 4)
    return {
        "key": key,
        "p": p,
        "n": int(data[0].shape[0]),
        "nnz": int(data[0].nse + data[2].nse),
        "data_bytes": nbytes(data),
        "xla_temp": int(stats.temp_size_in_bytes),
        "xla_argument": int(stats.argument_size_in_bytes),
        "xla_output": int(stats.output_size_in_bytes),
        "rss_data": rss_data,
        "rss_peak": rss_peak,
        "compile_s": compile_s,
        "hypergradient_s": _timing.median(times["hypergradient"]),
        "forward_s": _timing.median(times["forward"]),
        "ratio": _timing.paired_ratio(times["hypergradient"], times["forward"]),
        "product_s": _timing.median(product_s["X @ w"]),
        "iterations": int(iterations),
        "grad": float(grad),
        "fd": fd,
        "value": float(value),
    }


def baseline() -> dict:
    """The peak RSS of a process that imports the same modules and compiles a tiny program."""
    x = jnp.ones(10)
    jax.block_until_ready(jax.jit(lambda v: jnp.sum(jnp.sin(v)))(x))
    return {"rss_peak": _memory.peak_rss_bytes()}


def in_fresh_process(*child_args: str) -> dict:
    command = [sys.executable, __file__, "--child", *child_args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"bench_scale child {child_args} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Report.


def xla_total(r: dict) -> int:
    return r["xla_temp"] + r["xla_argument"] + r["xla_output"]


def table(results: list[dict], base: dict, fresh: bool) -> str:
    fmt = _timing.format_seconds
    rows = []
    for r in results:
        label = next(c.label for c in CONFIGS if c.key == r["key"])
        fd_diff = abs(r["grad"] - r["fd"]) / max(abs(r["fd"]), 1e-300)
        rss_extra = (r["rss_peak"] - base["rss_peak"]) / r["data_bytes"] if fresh else None
        rows.append(
            [
                label,
                f"{r['p']:,}",
                f"{r['n']:,}",
                f"{r['nnz']:,}",
                f"{r['data_bytes'] / MB:.2f}",
                f"{r['iterations']}",
                fmt(r["forward_s"], "ms" if r["forward_s"] < 1 else "s")
                + ("" if r["forward_s"] < 1 else " s"),
                fmt(r["hypergradient_s"], "ms" if r["hypergradient_s"] < 1 else "s")
                + ("" if r["hypergradient_s"] < 1 else " s"),
                f"{r['ratio']:.2f}",
                fmt(r["product_s"]),
                f"{r['compile_s']:.1f}",
                f"{xla_total(r) / MB:.2f}",
                f"{xla_total(r) / r['data_bytes']:.1f}",
                f"{r['rss_peak'] / MB:.0f}",
                "—" if rss_extra is None else f"{rss_extra:.1f}",
                f"{r['grad']:.6e}",
                f"{fd_diff:.1e}",
            ]
        )
    header = [
        "problem", "features p", "samples n", "nonzeros", "data MB", "inner its",
        "forward (ms)", "hypergradient (ms)", "hypergradient / forward", "one X @ w (ms)",
        "compile s", "XLA MB", "XLA / data",
        "peak RSS MB", "(peak RSS − baseline) / data", "dL/dθ", "vs finite differences",
    ]  # fmt: skip
    return _timing.markdown_table(header, rows)


def plot(results: list[dict], base: dict, path: Path, fresh: bool) -> Path:
    time_series, memory_series = [], []
    markers = {"ridge-newton": "o", "logistic-newton": "s", "logistic-lbfgs": "^"}
    for i, config in enumerate(CONFIGS):
        rs = [r for r in results if r["key"] == config.key]
        if not rs:
            continue
        ps, m, c = [r["p"] for r in rs], markers[config.key], f"C{i}"
        time_series.append(
            _plots.Series(f"{config.label}: hypergradient", ps,
                          [r["hypergradient_s"] for r in rs], f"{m}-", c)
        )  # fmt: skip
        time_series.append(
            _plots.Series(f"{config.label}: forward", ps, [r["forward_s"] for r in rs], f"{m}:", c)
        )
        memory_series.append(
            _plots.Series(f"{config.label}: XLA buffers", ps,
                          [xla_total(r) / MB for r in rs], f"{m}-", c)
        )  # fmt: skip
        if fresh:
            memory_series.append(
                _plots.Series(f"{config.label}: peak RSS − baseline", ps,
                              [(r["rss_peak"] - base["rss_peak"]) / MB for r in rs], f"{m}--",
                              c)
            )  # fmt: skip
    first = [r for r in results if r["key"] == results[0]["key"]]
    memory_series.append(
        _plots.Series("data (X, y, X_val, y_val)", [r["p"] for r in first],
                      [r["data_bytes"] / MB for r in first], "k:")
    )  # fmt: skip
    panels = [
        _plots.Panel("Time", "features p", "seconds", time_series),
        _plots.Panel("Memory", "features p", "MB", memory_series),
    ]
    title = (
        f"Sparse ridge and logistic hypergradients (goal: 10⁶ features, memory ≤ "
        f"{GOAL_MULTIPLE:g} × data)"
    )
    return _plots.loglog_panels(path, panels, title)


def growth_lines(results: list[dict]) -> list[str]:
    """How time grows between the two largest sizes, against the nonzeros and one product."""
    sizes = sorted({r["p"] for r in results})
    if len(sizes) < 2:
        return []
    small, large = sizes[-2], sizes[-1]
    parts = []
    for key in dict.fromkeys(r["key"] for r in results):
        a = next((r for r in results if r["key"] == key and r["p"] == small), None)
        b = next((r for r in results if r["key"] == key and r["p"] == large), None)
        if a and b:
            parts.append(
                f"{key} ×{b['hypergradient_s'] / a['hypergradient_s']:.0f} "
                f"(one product ×{b['product_s'] / a['product_s']:.0f}, inner iterations "
                f"{a['iterations']} → {b['iterations']})"
            )
    nnz = next(r["nnz"] for r in results if r["p"] == large) / next(
        r["nnz"] for r in results if r["p"] == small
    )
    return [
        f"- From p = {small:,} to {large:,} the nonzeros grow ×{nnz:.0f}, the hypergradient "
        "time " + "; ".join(parts) + ". Where the time grows faster than the nonzeros, so does a "
        "single sparse product X @ w, by as much or more: the gathers at random columns stop "
        "fitting in the CPU caches (a vector of 10⁶ float64 is 8 MB) and every nonzero "
        "waits on memory. That is the sparse product of XLA:CPU (`bcoo_dot_general`: a "
        "gather, a multiply and a scatter-add), not the implicit differentiation, whose "
        "share (hypergradient / forward) does not change with the size."
    ]


def reading(results: list[dict], base: dict, sizes: tuple[int, ...], fresh: bool) -> str:
    largest = max(sizes)
    at_largest = [r for r in results if r["p"] == largest]
    multiples = {r["key"]: xla_total(r) / r["data_bytes"] for r in at_largest}
    problems = len({r["key"] for r in results})
    works = len(at_largest) == problems and all(
        abs(r["grad"] - r["fd"]) <= 1e-4 * abs(r["fd"]) for r in at_largest
    )
    lines = [
        f"Goal: {largest:,} features work: "
        + ("met" if works else "missed")
        + f" ({len(at_largest)} of {problems} problems ran at p = {largest:,}; "
        "hypergradients against finite differences in the table).",
        f"Goal: memory within a small multiple (≤ {GOAL_MULTIPLE:g}×) of the data, XLA's "
        f"buffers at p = {largest:,}: "
        + ", ".join(
            f"{k} {v:.1f}× ({'met' if v <= GOAL_MULTIPLE else 'missed'})"
            for k, v in multiples.items()
        )
        + ".",
        "",
        "What the numbers say:",
        "",
        "- Everything is matrix-free: the inner Newton-CG and the backward CG apply X and Xᵀ "
        "as sparse products (`bcoo_dot_general`, a gather and a segment sum over the "
        "nonzeros), and the hypergradient's buffers are a few vectors of length p and of "
        "length nnz: its XLA memory grows linearly with p, a constant multiple of the data.",
        *(
            [
                "- L-BFGS keeps 10 pairs (s, y) of vectors of length p: 20 more p-vectors "
                "than Newton-CG, hence its larger multiple; Newton-CG keeps a handful."
            ]
            if any(r["key"] == "logistic-lbfgs" for r in results)
            else []
        ),
        "- Time: the hypergradient costs "
        f"{min(r['ratio'] for r in results):.2f}–{max(r['ratio'] for r in results):.2f}× the "
        "forward solve at every size (the backward CG adds a few dozen Hessian-vector "
        "products to the solve's).",
        *growth_lines(results),
    ]
    if fresh:
        lines.append(
            f"- Peak RSS: every process starts from about {base['rss_peak'] / MB:.0f} MB "
            "(interpreter, JAX, the compiler; the baseline, a process that imports the same "
            "modules and runs a tiny jitted function); the compiler adds about 100 MB while "
            "compiling, which dominates the small sizes. Numpy's copy of the generated data "
            "also counts (the data are generated on the host)."
        )
    return "\n".join(lines)


def report(
    results: list[dict], base: dict, quick: bool, loads: list, image: str, sizes: tuple[int, ...]
) -> str:
    command = "python benchmarks/bench_scale.py" + (" --quick" if quick else "")
    fresh = not quick
    k = QUICK_NNZ_PER_ROW if quick else NNZ_PER_ROW
    rss_text = (
        "the peak RSS (`VmHWM` of /proc/self/status; `ru_maxrss` would report the parent's "
        "peak) of a fresh process per problem and size, which imports "
        "JAX, generates the data, compiles and runs the hypergradient (read before anything "
        "else is compiled); baseline: the peak RSS of a process that imports the same modules "
        "and runs a tiny jitted function"
        if fresh
        else "the peak RSS of this one process (--quick measures everything in one process, "
        "so it only grows)"
    )
    method = f"""\
Ridge and L2-regularized logistic hypergradients on sparse data, matrix-free, in float64, from
{min(sizes):,} to {max(sizes):,} features p. X is a `jax.experimental.sparse.BCOO` matrix with
{k} random nonzeros per row (values N(0, 1/{k})), n = p/10 training samples (at least
{samples(min(sizes), quick):,}) and n/2 validation samples; float64 values and int32 indices,
16 bytes per nonzero. θ = log λ, λ = {LAM:g}.

- ridge: min ½‖Xw − y‖² + ½λ‖w‖², y = Xw₀ + noise; outer loss ½ mean validation squared error.
- logistic: min Σᵢ log(1 + exp(−yᵢ⟨xᵢ, w⟩)) + ½λ‖w‖², labels ±1 from the same model; outer loss
  mean validation logistic loss.
- inner solvers: `Newton` (Newton-CG on Hessian-vector products) and `LBFGS`, both from
  `implicitdiff.solvers`, stopping at ‖∇f‖ ≤ {GTOL:g} · ‖∇f(0)‖; backward: `solve="cg"` on
  Hessian-vector products (implicit differentiation through ∇f = 0).
- time: `jax.jit(jax.value_and_grad(outer))` (hypergradient) and `jax.jit(outer)` (forward:
  the solve and the loss), compile excluded, interleaved repeats, medians.
- memory: XLA's statistics of the compiled hypergradient (`compiled.memory_analysis()`:
  temp + argument + output buffers), against the bytes of the data (X, y, X_val, y_val), and
  {rss_text}.
- check: the hypergradient against central finite differences (step 1e-4 in θ) of the forward.
"""
    machine = "\n".join(_timing.machine_lines(("jax", "jaxlib"), loads))
    baseline_line = (
        f"Baseline peak RSS (a process importing the same modules, one tiny jitted function): "
        f"{base['rss_peak'] / MB:.0f} MB."
        if fresh
        else "Peak RSS: this process (--quick), no baseline."
    )
    return "\n\n".join(
        [
            method.strip(),
            f"Machine:\n\n{machine}",
            'Reproduce (from the repository root, after `pip install -e ".[bench,examples]"`; '
            f"`make bench` runs it):\n\n```\n{command}\n```",
            f"Goals beside the figure: {max(sizes):,} features work, and memory stays within a "
            f"small multiple (≤ {GOAL_MULTIPLE:g}×) of the data.\n\n" + image,
            table(results, base, fresh),
            baseline_line,
            "### Reading\n\n" + reading(results, base, sizes, fresh),
        ]
    )


def configs(quick: bool) -> tuple[Config, ...]:
    """All three; --quick leaves L-BFGS out (its program is the slowest to compile)."""
    return tuple(c for c in CONFIGS if not (quick and c.solver is LBFGS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one process")
    parser.add_argument("--output", type=Path, default=None, help=f"markdown file (default {DOC})")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        if options.child[0] == "baseline":
            print(json.dumps(baseline()))
        else:
            key, p = options.child
            print(json.dumps(measure(key, int(p), options.quick)))
        return
    output = options.output or (None if options.quick else DOC)
    sizes = QUICK_SIZES if options.quick else SIZES
    fresh = not options.quick

    loads = [_timing.load_average()]
    base = in_fresh_process("baseline") if fresh else {"rss_peak": float("nan")}
    results = []
    for config in configs(options.quick):
        for p in sizes:
            start = time.perf_counter()
            r = in_fresh_process(config.key, str(p)) if fresh else measure(config.key, p, True)
            results.append(r)
            loads.append(_timing.load_average())
            print(
                f"{config.key} p={p:,}: hypergradient {r['hypergradient_s']:.3g} s, XLA "
                f"{xla_total(r) / MB:.1f} MB ({xla_total(r) / r['data_bytes']:.1f}× data), "
                f"peak RSS {r['rss_peak'] / MB:.0f} MB ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    print(table(results, base, fresh))
    print(reading(results, base, sizes, fresh))
    if output is not None:
        png = plot(results, base, _plots.image_dir(output) / "scale.png", fresh)
        image = _plots.markdown_image(png, output, "time and memory against the dimension")
        body = report(results, base, options.quick, loads, image, sizes)
        _timing.write_section(output, SECTION, body)
        print(f"wrote {output}, {png}")


if __name__ == "__main__":
    main()
