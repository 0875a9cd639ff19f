"""Timing helpers shared by the benchmarks: compile time, steady-state run time, markdown output.

- :func:`compile_times` times ``jax.jit(fn).lower(*args).compile()`` (tracing, lowering and XLA
  compilation) on a freshly built function each time, so that no JAX cache is hit, and returns
  the ``jax.jit``-ed functions, their programs compiled, for :func:`run_times`; :func:`jitted`
  compiles one function so.
- Run times are taken through ``jax.jit``, the path a user's code takes, not through the
  ahead-of-time ``Compiled`` object: that one dispatches from Python (about 0.1 ms more per call)
  when its program holds a host callback, as this library's default failure report does, where
  ``jax.jit`` keeps its C++ dispatch. ``jax.jit(fn).lower(*args).compile()`` fills the cache that
  the calls of the same ``jax.jit(fn)`` read, so nothing is compiled twice.
- :func:`run_times` times calls of (compiled) functions, ``block_until_ready`` included. Repeats
  of the contestants are interleaved (A B C, B C A, ...) so that a slow spell of a shared machine
  hits them all alike; report the median of the samples.
- :func:`markdown_table`, :func:`machine_lines` and :func:`write_section` write the results into
  ``docs/benchmarks.md``, one ``## `` section per benchmark; :func:`paired_ratio` compares two
  contestants round by round.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax


def _rotations(names: Sequence[str], repeat: int) -> list[str]:
    """The names in a different cyclic order at every repeat."""
    shift = repeat % len(names)
    return [*names[shift:], *names[:shift]]


def compile_once(fn: Callable, args: Sequence[Any]) -> tuple[float, Callable]:
    """Seconds taken by ``jax.jit(fn).lower(*args).compile()``, and that ``jax.jit(fn)``, whose
    calls with arguments like ``args`` reuse the compiled program (see the module's notes)."""
    jitted_fn = jax.jit(fn)
    start = time.perf_counter()
    jitted_fn.lower(*args).compile()
    return time.perf_counter() - start, jitted_fn


def jitted(fn: Callable, args: Sequence[Any]) -> Callable:
    """``jax.jit(fn)``, compiled for arguments like ``args`` (the time it took is not kept)."""
    return compile_once(fn, args)[1]


def compile_times(
    builders: dict[str, Callable[[], Callable]], args: Sequence[Any], repeats: int
) -> tuple[dict[str, list[float]], dict[str, Callable]]:
    """Compile times in seconds, ``repeats`` per contestant, interleaved, and the jitted
    functions, compiled (:func:`compile_once`).

    ``builders[name]()`` must return a new function object each call: JAX caches traces by
    function identity, and a cached trace would hide the tracing cost. The compiled functions
    returned are those of the last repeat.
    """
    times: dict[str, list[float]] = {name: [] for name in builders}
    compiled: dict[str, Callable] = {}
    for repeat in range(repeats):
        for name in _rotations(list(builders), repeat):
            seconds, compiled[name] = compile_once(builders[name](), args)
            times[name].append(seconds)
    return times, {name: compiled[name] for name in builders}


def _time_calls(fn: Callable, args: Sequence[Any], number: int) -> float:
    """Seconds per call, averaged over ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / number


def run_times(
    fns: dict[str, Callable],
    args: Sequence[Any],
    repeats: int | None = None,
    *,
    budget_seconds: float = 10.0,
    repeat_range: tuple[int, int] = (5, 31),
    min_sample_seconds: float = 0.02,
) -> dict[str, list[float]]:
    """Steady-state seconds per call: samples per contestant, interleaved.

    Each function is called once first (to warm it) and once more to calibrate. A sample
    averages enough back-to-back calls to last ``min_sample_seconds``, so that fast functions are
    not lost in timer noise. Without ``repeats``, as many rounds as fit in ``budget_seconds``
    are taken, within ``repeat_range``.
    """
    number, sample_seconds = {}, {}
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args))
        single = _time_calls(fn, args, 1)
        number[name] = max(1, math.ceil(min_sample_seconds / max(single, 1e-9)))
        sample_seconds[name] = single * number[name]
    if repeats is None:
        rounds = budget_seconds / max(sum(sample_seconds.values()), 1e-9)
        repeats = int(min(max(rounds, repeat_range[0]), repeat_range[1]))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for repeat in range(repeats):
        for name in _rotations(list(fns), repeat):
            times[name].append(_time_calls(fns[name], args, number[name]))
    return times


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over repeats of numerator[i] / denominator[i].

    Samples i of two contestants come from the same interleaved round, taken seconds apart, so
    their ratio cancels the slow changes of a shared machine's load that shift whole rounds.
    """
    return median([a / b for a, b in zip(numerator, denominator, strict=True)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * widths[0], *[("-" * (w - 1)) + ":" for w in widths[1:]]]
    return "\n".join([line(cells[0]), "| " + " | ".join(rule) + " |", *map(line, cells[1:])])


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where the OS does not say)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_lines(
    packages: Sequence[str] = ("jax", "jaxlib"), loads: Sequence[float | None] = ()
) -> list[str]:
    """Markdown bullet lines: the CPU, the package versions, and load averages seen (if any)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{p} {_version(p)}" for p in packages)
    lines = [
        f"- CPU: {_cpu_model()}, {cores} cores available to the process "
        f"(JAX backend: {jax.default_backend()})",
        f"- Python {platform.python_version()} on {platform.system()}; {versions}",
    ]
    seen = [f"{load:.1f}" for load in loads if load is not None]
    if seen:
        lines.append(
            f"- 1-minute load average during the run: {' → '.join(seen)} (for {cores} cores; "
            "above the core count, other work shared the CPU and timings are noisier)"
        )
    return lines


def format_seconds(seconds: float, unit: str = "ms") -> str:
    """``seconds`` in ms (3 significant digits) or in s (2 decimals)."""
    if unit == "ms":
        ms = seconds * 1e3
        return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"
    return f"{seconds:.2f}"


def write_section(path: Path, heading: str, body: str, title: str = "# Benchmarks") -> None:
    """Replace the ``## heading`` section of a markdown file with ``body``, or append it.

    The section runs up to the next ``## `` heading. A missing file is created with ``title``.
    """
    section = f"## {heading}\n\n{body.strip()}\n"
    text = path.read_text() if path.exists() else f"{title}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", flags=re.DOTALL | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
