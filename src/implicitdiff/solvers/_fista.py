"""The options of the accelerated (FISTA) gradient loop, checked in one place for
:class:`~implicitdiff.solvers.GradientDescent` and the proximal gradient solvers (internal)."""

from __future__ import annotations

from typing import Any

from implicitdiff import _checks
from implicitdiff.solvers._objective import check_objective_options, check_stepsize

__all__ = ["check_options"]


def check_options(solver: Any, name: str) -> None:
    """Raise, naming the solver ``name``, if an option of ``solver`` is invalid.

    In this order: ``fun`` callable (TypeError), ``value_and_grad`` / ``has_aux`` and
    ``stepsize`` (see :mod:`implicitdiff.solvers._objective`), ``acceleration`` a bool
    (TypeError), ``increase_factor`` ≥ 1, ``maxls`` a
    positive int (not a bool) and 0 < ``decrease_factor`` < 1 (ValueError).

    Args:
      solver: the solver instance, with the fields fun, value_and_grad, has_aux, stepsize,
        acceleration, increase_factor, maxls and decrease_factor.
      name: the solver's name, for the messages.

    Returns:
      None.
    """
    if not callable(solver.fun):
        raise TypeError(f"{name}: fun must be callable, got {solver.fun!r}")
    check_objective_options(name, solver.value_and_grad, solver.has_aux)
    check_stepsize(name, solver.stepsize)
    if not isinstance(solver.acceleration, bool):
        raise TypeError(f"{name}: acceleration must be a bool, got {solver.acceleration!r}")
    if not (isinstance(solver.increase_factor, (int, float)) and solver.increase_factor >= 1):
        raise ValueError(f"{name}: increase_factor must be ≥ 1, got {solver.increase_factor!r}")
    _checks.check_positive_int(solver.maxls, "maxls", name)
    if not 0 < solver.decrease_factor < 1:
        raise ValueError(
            f"{name}: decrease_factor must be in (0, 1), got {solver.decrease_factor!r}"
        )
