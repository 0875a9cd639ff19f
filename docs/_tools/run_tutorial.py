"""Run a tutorial script cell by cell and record what each cell printed and drew.

    python docs/_tools/run_tutorial.py docs/tutorials/lasso_hyperparams.py OUT_DIR

A tutorial is a plain Python script. Its module docstring is the page's introduction; ``# %%``
lines split it into cells; the comment lines that open a cell are Markdown prose, the rest is
code. The cells run in order in one namespace (as ``python script.py`` would run them); after
each cell its printed output is kept and every open matplotlib figure is saved as a PNG and
closed. OUT_DIR receives ``result.json`` (cells, figures, run time in seconds, the 1-minute
load average of the machine at the start and at the end) and the PNGs.
The size of the problem is the script's business: it reads ``IMPLICITDIFF_TUTORIAL_SIZE``
(``full``, the default, when the site is built; ``small`` in the test suite).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path


def split_cells(source: str) -> tuple[str, list[dict]]:
    """The docstring and the cells ``[{"markdown": str, "code": str}]`` of a tutorial script."""
    module = ast.parse(source)
    doc = ast.get_docstring(module) or ""
    lines = source.split("\n")
    if doc:
        first = module.body[0]
        lines = lines[first.end_lineno :]
    cells: list[dict] = []
    chunks: list[list[str]] = [[]]
    for line in lines:
        if line.strip().startswith("# %%"):
            chunks.append([])
        else:
            chunks[-1].append(line)
    for chunk in chunks:
        prose: list[str] = []
        i = 0
        while i < len(chunk) and (chunk[i].startswith("#") or not chunk[i].strip()):
            if chunk[i].startswith("#"):
                prose.append(chunk[i][2:] if chunk[i].startswith("# ") else chunk[i][1:])
            elif prose:
                prose.append("")
            i += 1
        code = "\n".join(chunk[i:]).strip("\n")
        if prose or code:
            cells.append({"markdown": "\n".join(prose).strip(), "code": code})
    return doc, cells


def run(script: Path, out_dir: Path) -> dict:
    """Execute ``script`` cell by cell; write figures and ``result.json`` into ``out_dir``."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    doc, cells = split_cells(script.read_text())
    namespace: dict = {"__name__": "__main__", "__file__": str(script)}
    figures = 0
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    for cell in cells:
        buffer = io.StringIO()
        cell["figures"] = []
        if cell["code"]:
            code = compile(cell["code"], str(script), "exec")
            with contextlib.redirect_stdout(buffer):
                exec(code, namespace)
        cell["output"] = buffer.getvalue()
        if "matplotlib.pyplot" in sys.modules:
            import matplotlib.pyplot as plt

            for num in plt.get_fignums():
                figures += 1
                name = f"{script.stem}_{figures}.png"
                plt.figure(num).savefig(out_dir / name, dpi=100, bbox_inches="tight")
                cell["figures"].append(name)
            plt.close("all")
    seconds = time.perf_counter() - start
    result = {
        "doc": doc,
        "cells": cells,
        "seconds": seconds,
        "script": script.name,
        "load": [load_start, os.getloadavg()[0]],
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    run(Path(sys.argv[1]), Path(sys.argv[2]))
