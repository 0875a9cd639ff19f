"""List the public functions, classes and methods whose docstrings lack Args / Returns sections.

    .venv-docs/bin/python docs/_tools/docstring_gaps.py [--strict]

Reads the source with griffe as the API reference does (same public names: a module's
``__all__``, a package's ``from x import a as a`` re-exports, and the public methods of public
classes) and parses each docstring in Google style. A function with parameters needs an
``Args:`` section (a class with public attributes or ``__init__`` parameters: ``Args:`` or
``Attributes:``), one that returns a value a ``Returns:`` section (or ``Yields:``); a missing
docstring counts as missing both. Inherited methods are not checked, and not rendered either
(mkdocstrings shows a class's own members only): a subclass that overrides a method writes its
docstring out. Prints one
line per gap and the count; ``--strict`` exits non-zero when there is any. The warnings that
griffe gives while parsing (a documented parameter that is not in the signature, an entry it
cannot read as ``name: description``) are gaps too: ``mkdocs build --strict`` fails on them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from griffe_rst import RstToMarkdown  # noqa: E402

MODULES = [
    "implicitdiff",
    "implicitdiff.linear_solve",
    "implicitdiff.optimality",
    "implicitdiff.projections",
    "implicitdiff.prox",
    "implicitdiff.losses",
    "implicitdiff.solvers",
    "implicitdiff.tree",
    "implicitdiff.diagnostics",
    "implicitdiff.bilevel",
    "implicitdiff.isotonic",
    "implicitdiff.perturbations",
    "implicitdiff.objective",
]
TOP_LEVEL = ["custom_root", "custom_fixed_point", "root_jvp", "root_vjp"]


class _Collect(logging.Handler):
    """Keeps the warnings griffe logs while a docstring is parsed."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_PARSE_WARNINGS = _Collect()


def _sections(obj) -> set[str]:
    if obj.docstring is None:
        return set()
    before = len(_PARSE_WARNINGS.messages)
    # As the site parses them (mkdocs.yml: warn_missing_types off).
    parsed = obj.docstring.parse("google", warnings=True, warn_missing_types=False)
    for i in range(before, len(_PARSE_WARNINGS.messages)):
        _PARSE_WARNINGS.messages[i] = f"griffe: {_PARSE_WARNINGS.messages[i]}"
    return {s.kind.value for s in parsed}


def _params(fn) -> list[str]:
    return [p.name for p in fn.parameters if p.name not in ("self", "cls")]


def _returns_value(fn) -> bool:
    ann = fn.returns
    return fn.name != "__init__" and str(ann) not in ("None", "NoReturn")


def gaps_of(obj, qualname: str) -> list[str]:
    """The missing sections of one public object (and of its public methods, for a class)."""
    out = []
    if obj.is_function:
        sections = _sections(obj)
        missing = []
        if _params(obj) and "parameters" not in sections:
            missing.append("Args")
        if _returns_value(obj) and not sections & {"returns", "yields"}:
            missing.append("Returns")
        if obj.docstring is None:
            missing = ["docstring"]
        if missing:
            out.append(f"{qualname}: {', '.join(missing)}")
    elif obj.is_class:
        sections = _sections(obj)
        init = obj.members.get("__init__")
        # (private attributes, as a ``__name__`` set on the class, are not rendered: not fields)
        public = [name for name in obj.attributes if not name.startswith("_")]
        has_fields = bool(public) or (init is not None and _params(init))
        if obj.docstring is None:
            out.append(f"{qualname}: docstring")
        elif has_fields and not sections & {"parameters", "attributes", "other parameters"}:
            bases = " ".join(str(b) for b in obj.bases)
            if not any(word in bases for word in ("Error", "Warning", "Enum")):
                out.append(f"{qualname}: Args/Attributes")
        for name, member in obj.members.items():
            if name.startswith("_") or member.is_alias or not member.is_function:
                continue
            if "property" in member.labels:
                continue
            out += gaps_of(member, f"{qualname}.{name}")
    return out


def main() -> int:
    logging.getLogger("griffe").addHandler(_PARSE_WARNINGS)
    loader = griffe.GriffeLoader(
        search_paths=[str(ROOT / "src")],
        extensions=griffe.load_extensions(RstToMarkdown()),
    )
    package = loader.load("implicitdiff")
    loader.resolve_aliases(implicit=True, external=False)
    gaps: list[str] = []
    seen: set[str] = set()
    for module_name in MODULES:
        module = package if module_name == "implicitdiff" else package[module_name[13:]]
        names = TOP_LEVEL if module_name == "implicitdiff" else None
        for name, member in module.members.items():
            if names is not None and name not in names:
                continue
            if names is None and not member.is_public:
                continue
            if member.is_module:
                continue
            target = member.final_target if member.is_alias else member
            key = target.path
            if key in seen:
                continue
            seen.add(key)
            gaps += gaps_of(target, f"{module_name}.{name}")
    gaps += list(dict.fromkeys(_PARSE_WARNINGS.messages))  # a method seen twice warns twice
    for line in gaps:
        print(line)
    print(f"{len(gaps)} gaps (missing Args/Returns sections, or griffe's parse warnings)")
    return 1 if gaps and "--strict" in sys.argv else 0


if __name__ == "__main__":
    sys.exit(main())
