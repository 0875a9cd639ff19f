"""One PyTree type: defined once, in implicitdiff._typing, and imported everywhere else."""

import pathlib
import re

import implicitdiff

SRC = pathlib.Path(implicitdiff.__file__).parent


def test_pytree_is_defined_once():
    definitions = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if re.search(r"^PyTree\s*[:=]", path.read_text(encoding="utf-8"), re.M)
    ]
    assert definitions == ["_typing.py"]


def test_every_solver_module_declares_its_public_names():
    for path in (SRC / "solvers").glob("*.py"):
        if path.name in ("__init__.py", "_linesearch.py"):
            continue
        assert re.search(r"^__all__", path.read_text(encoding="utf-8"), re.M), path.name
