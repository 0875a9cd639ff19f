"""Plotting helpers shared by the benchmarks: log-log panels written to a PNG with matplotlib's
Agg backend (no display needed), and where the PNGs of a markdown report go.

- :func:`image_dir` is ``<folder of the markdown file>/images``: docs/images/ for
  docs/benchmarks.md, and a temporary folder's own images/ for a quick run into it.
- :func:`loglog_panels` draws one log-log panel per :class:`Panel`, side by side or in a grid.
- :func:`markdown_image` is the ``![alt](relative/path.png)`` line for the report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Series:
    """One line of a panel: y against x, drawn with a matplotlib format string and, if given,
    a colour (e.g. "C0"; by default the next one of matplotlib's cycle)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "o-"
    color: str | None = None


@dataclass
class Panel:
    """One set of axes: a title, axis labels, lines, and optional horizontal reference lines."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label)


def image_dir(markdown: Path) -> Path:
    """Where the PNGs of the markdown report ``markdown`` go: an ``images`` folder beside it."""
    return markdown.resolve().parent / "images"


def markdown_image(png: Path, markdown: Path, alt: str) -> str:
    """A markdown image line for ``png``, its path relative to the folder of ``markdown``."""
    relative = os.path.relpath(png.resolve(), markdown.resolve().parent)
    return f"![{alt}]({Path(relative).as_posix()})"


def _finite_positive(values: Sequence[float]) -> list[bool]:
    return [v is not None and math.isfinite(v) and v > 0 for v in values]


def loglog_panels(path: Path, panels: Sequence[Panel], title: str = "", columns: int = 2) -> Path:
    """Draw ``panels`` on log-log axes (``columns`` per row) and save them to the PNG ``path``.

    Points that are missing, non-finite or non-positive are left out of their line (they have no
    place on a log scale). Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for s in panel.series:
            keep = _finite_positive(s.y)
            xs = [x for x, k in zip(s.x, keep, strict=True) if k]
            ys = [y for y, k in zip(s.y, keep, strict=True) if k]
            if xs:
                colour = {} if s.color is None else {"color": s.color}
                ax.plot(xs, ys, s.style, label=s.label, markersize=4, **colour)
        for y, label in panel.hlines:
            ax.axhline(y, color="grey", linestyle=":", linewidth=1, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="both", linewidth=0.3, alpha=0.6)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
