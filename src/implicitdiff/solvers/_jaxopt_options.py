"""JAXopt 0.8.5 options that the solvers do not take, each refused with what to use instead.

A JAXopt option that a solver has no field for would otherwise fail with Python's bare
"unexpected keyword argument"; :func:`refuse_jaxopt_options` (called by every solver's
constructor, :class:`implicitdiff.solvers._base.DifferentiableRun`) raises a TypeError naming
the option and the alternative instead. A solver lists its own further refusals in its class
attribute ``_jaxopt_refused`` (a dict name → alternative).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

__all__ = ["COMMON", "refuse_jaxopt_options", "warn_deprecated_search_options"]

# The JAXopt options of (nearly) every solver that no solver here takes.
COMMON = {
    "unroll": (
        "pass implicit_diff=False to differentiate the unrolled iterations (with "
        "unroll_checkpoint=True to bound their memory)"
    ),
    "has_aux": (
        "this solver takes a function without auxiliary output: return the value only, and "
        "evaluate the auxiliary output at the solution after the run"
    ),
    "verbose": (
        "verbose= is an option of the iterative solvers; read state.iter_num, state.error and "
        "state.status after the run"
    ),
}


def refuse_jaxopt_options(cls: type, kwargs: dict[str, Any]) -> None:
    """TypeError for a keyword that is one of JAXopt's options and not a field of ``cls``."""
    refused = {**COMMON, **getattr(cls, "_jaxopt_refused", {})}
    fields = getattr(cls, "__dataclass_fields__", {})
    for name in kwargs:
        if name in refused and name not in fields:
            raise TypeError(
                f"{cls.__name__}: JAXopt's option {name}= is not supported; {refused[name]}"
            )


def warn_deprecated_search_options(solver: Any, alternative: str) -> None:
    """JAXopt 0.8's deprecated ``condition`` / ``decrease_factor`` of LBFGS, BFGS, NonlinearCG and
    LBFGSB: accepted and ignored, with a DeprecationWarning naming ``alternative``, as JAXopt
    does (it warns and ignores them too)."""
    # Attribute the warning to the caller's line: the first frame outside implicitdiff (the
    # constructors' frames, the generated __init__ included, run in implicitdiff's modules).
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("implicitdiff"):
        frame, level = frame.f_back, level + 1
    for name in ("condition", "decrease_factor"):
        if getattr(solver, name, None) is not None:
            warnings.warn(
                f"{type(solver).__name__}: {name}= is deprecated and ignored, as in JAXopt 0.8; "
                f"{alternative}",
                DeprecationWarning,
                stacklevel=level,
            )
