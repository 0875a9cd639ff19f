"""The benchmarks run at a tiny size (``--quick``) and write their report and plots.

Benchmarks are not tests: their figures are not checked here, only that each script runs to the
end, rewrites its own ``## `` section of the markdown file it is given, fills its tables with
numbers (no NaN), and writes its PNGs beside that file. The five scripts run concurrently in
subprocesses (each imports JAX and compiles its own programs); ``bench_solvers.py`` runs two of
its solvers only (``--only``): its whole ``--quick`` run takes over a minute.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
NEEDED = ("jaxopt", "optimistix", "matplotlib", "sklearn")
MISSING = [name for name in NEEDED if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"the benchmarks need {', '.join(MISSING)} (pip install -e '.[bench,examples]')",
)

#: script -> (its section heading, extra arguments, the PNGs it writes)
SCRIPTS = {
    "bench_engine.py": ("Engine", [], []),
    "bench_solvers.py": ("Solvers", ["--only", "GradientDescent", "ProximalGradient"], []),
    "bench_unroll.py": ("Implicit vs unrolled", [], ["unroll_time.png", "unroll_memory.png"]),
    "bench_backward.py": ("Backward vs forward", [], ["backward_forward.png"]),
    "bench_scale.py": ("Scale in dimension", [], ["scale.png"]),
}
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every script with ``--quick --output <its own folder>/b.md``, all at once."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = {}
    for script, (_, extra, _) in SCRIPTS.items():
        output = tmp_path_factory.mktemp(script.removesuffix(".py")) / "b.md"
        command = [sys.executable, str(BENCHMARKS / script), "--quick", "--output", str(output)]
        process = subprocess.Popen(
            [*command, *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started[script] = (process, output)
    done = {}
    for script, (process, output) in started.items():
        try:
            out, _ = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        done[script] = (subprocess.CompletedProcess(process.args, process.returncode, out), output)
    return done


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def table_cells(text: str) -> list[str]:
    """The cells of the data rows of every markdown table (no header, no rule)."""
    cells, in_rows = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_rows = False
        elif set(line.strip()) <= set("|-: "):  # the rule under a header: data rows follow
            in_rows = True
        elif in_rows:
            cells += [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
    return cells


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_quick_run_writes_report_and_plots(runs, script):
    heading, _, pngs = SCRIPTS[script]
    completed, output = runs[script]
    assert completed.returncode == 0, completed.stdout[-4000:]
    body = section(output.read_text(), heading)
    cells = table_cells(body)
    numbers = [c for c in cells if re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?", c)]
    assert len(numbers) >= 5, f"too few numbers in the tables of {script}: {cells[:40]}"
    bad = [c for c in cells if re.fullmatch(r"[-+]?(nan|inf)", c, re.I)]
    assert not bad, f"{script}: non-finite entries {bad}"
    for name in pngs:
        png = output.parent / "images" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
        assert f"images/{name}" in body, f"{name} is not shown in the report"


def test_solver_benchmark_runs_every_public_solver_it_names():
    """Every case of bench_solvers.py builds our class from ``implicitdiff.solvers`` (a case
    that cannot find its class fails here, instead of being skipped in the report: after a file
    split, six cases had silently stopped running), and the cases cover each solver that has a
    JAXopt counterpart in the benchmark's reach."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_solvers
    finally:
        sys.path.remove(str(BENCHMARKS))
    import implicitdiff.solvers

    cases = bench_solvers.cases(quick=True)
    assert [c.solver for c in cases if c.skipped] == []
    names = {c.solver for c in cases}
    for name in names:
        assert isinstance(getattr(implicitdiff.solvers, name), type), name
    expected = {
        "GradientDescent", "LBFGS", "BFGS", "NonlinearCG", "LBFGSB", "ProximalGradient",
        "ProjectedGradient", "MirrorDescent", "BlockCoordinateDescent", "GaussNewton",
        "LevenbergMarquardt", "FixedPointIteration", "AndersonAcceleration", "Broyden",
        "Bisection", "EqualityConstrainedQP", "BoxCDQP", "OSQP", "BoxOSQP", "OptaxSolver",
        "PolyakSGD", "ArmijoSGD", "AndersonWrapper",
    }  # fmt: skip
    assert expected <= names, sorted(expected - names)
    for c in cases:
        assert {"ours", "JAXopt"} <= set(c.builders), c.solver
