"""What every experiment shares: options, output folder, JSON, figures, tables, progress, timing."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

EXTRA_HINT = 'install the experiments\' extras: pip install "implicitdiff[examples]"'


def require(module: str) -> Any:
    """Import an optional dependency of the experiments, with a clear error if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SystemExit(f"this experiment needs {module.split('.')[0]}: {EXTRA_HINT}") from error


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The options every subcommand has: --seed, --output, --quiet."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("results") / name,
        help=f"folder for the JSON and PNG files (default results/{name}/)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def positive_int(text: str) -> int:
    """argparse ``type=``: an int ≥ 1, else a usage error naming the value."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite float > 0, else a usage error naming the value."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def output_folder(options: argparse.Namespace) -> Path:
    """The run's output folder, created if needed."""
    folder = Path(options.output)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def progress(iterable: Iterable, options: argparse.Namespace, label: str, total: int | None = None):
    """``iterable`` with a progress bar (tqdm, when installed and not ``--quiet``)."""
    if getattr(options, "quiet", False):
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=label, total=total, leave=False)


def show_progress(options: argparse.Namespace, label: str) -> bool | str:
    """The ``progress=`` argument of :func:`implicitdiff.bilevel.minimize` for these options."""
    return False if getattr(options, "quiet", False) else label


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / Infinity
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, results: dict) -> Path:
    """Write ``results`` (arrays become lists) as indented JSON."""
    path.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    return path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def save_figure(figure: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG and close it."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns; floats in 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body])


def median_time(fun: Callable[[], Any], repeats: int = 5) -> float:
    """Median wall time in seconds of ``fun()`` (its outputs blocked on), after one warm-up
    call that also compiles."""
    jax.block_until_ready(fun())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fun())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_error(a: Any, b: Any) -> float:
    """‖a − b‖ / max(‖b‖, tiny) over flattened arrays."""
    a, b = np.ravel(np.asarray(a, dtype=float)), np.ravel(np.asarray(b, dtype=float))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(float).tiny))
