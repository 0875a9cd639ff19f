"""A griffe extension: the few reStructuredText idioms of the docstrings, as Markdown.

The docstrings are Google style ("Args:", "Returns:") but cross-reference with Sphinx roles
(``:func:`x` ``) and draw a few catalogs as reST simple tables. mkdocstrings renders Markdown, so
at load time (the source files are never touched) a role becomes inline code and a simple table a
Markdown table.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")
_RULE = re.compile(r"^(\s*)(=+)(\s+=+)+\s*$")


def _columns(rule: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]


def _cells(line: str, cols: list[tuple[int, int]]) -> list[str]:
    cells = []
    for i, (start, _) in enumerate(cols):
        end = cols[i + 1][0] if i + 1 < len(cols) else len(line)
        cells.append(line[start:end].strip().replace("|", "\\|"))
    return cells


def _tables(text: str) -> str:
    """Rewrite reST simple tables (a rule, a header, a rule, rows, a rule) as Markdown."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _RULE.match(lines[i])
        rules = [j for j in range(i, min(len(lines), i + 400)) if _RULE.match(lines[j])]
        if m and len(rules) >= 3 and rules[1] == i + 2:
            indent = m.group(1)
            cols = _columns(lines[i])
            header = _cells(lines[i + 1], cols)
            end = rules[2]
            out.append("")
            out.append(indent + "| " + " | ".join(header) + " |")
            out.append(indent + "|" + "---|" * len(cols))
            for row in lines[i + 3 : end]:
                if row.strip():
                    out.append(indent + "| " + " | ".join(_cells(row, cols)) + " |")
            out.append("")
            i = end + 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def _doctests(text: str) -> str:
    """Fence doctest blocks (``>>>`` lines and their output, up to a blank line) as pycon."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith(">>>") and not (out and out[-1].lstrip().startswith("```")):
            indent = lines[i][: len(lines[i]) - len(stripped)]
            out += ["", indent + "```pycon"]
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out += [indent + "```", ""]
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def _literal_blocks(text: str) -> str:
    """A paragraph ending in ``::`` and the indented block after it: the block fenced."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        head = line.rstrip()[:-2].rstrip()
        out.append(head + ":" if head.strip() else "")
        j = i + 1
        block: list[str] = []
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        body = [b for b in block if b.strip()]
        if not body:
            i += 1
            continue
        pad = " " * min(len(b) - len(b.lstrip()) for b in body)
        first = next(k for k, b in enumerate(block) if b.strip())
        out += ["", pad + "```", *block[first:], pad + "```", ""]
        i = j
    return "\n".join(out)


_CODE_SPAN = re.compile(r"(`+).*?\1")
_STAR = re.compile(r"(?<=[\w)\]])\*(?!\*)")


def _escape_stars(text: str) -> str:
    """``x*`` (a solution, as in x*(θ)) is not Markdown emphasis: escape such a star outside
    code spans and fences."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or line.lstrip().startswith("```"):
            out.append(line)
            continue
        pieces, last = [], 0
        for m in _CODE_SPAN.finditer(line):
            pieces.append(_STAR.sub(r"\\*", line[last : m.start()]) + m.group(0))
            last = m.end()
        pieces.append(_STAR.sub(r"\\*", line[last:]))
        out.append("".join(pieces))
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """The docstring with Sphinx roles as inline code, simple tables as Markdown tables,
    doctests fenced, and the literal-block marker ``::`` ending a paragraph as ``:``."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return _escape_stars(_doctests(_literal_blocks(_tables(text))))


class RstToMarkdown(griffe.Extension):
    """Rewrite each docstring once, when griffe loads its object; and read a redundant alias
    (``from a import x as x``, the re-export idiom of ``implicitdiff.solvers``) as public."""

    def on_module_members(self, *, node: Any, mod: griffe.Module, **kwargs: Any) -> None:
        if not isinstance(node, ast.Module):
            return
        for stmt in node.body:
            if isinstance(stmt, ast.ImportFrom):
                for name in stmt.names:
                    if name.asname == name.name and name.name in mod.members:
                        mod.members[name.name].public = True

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
