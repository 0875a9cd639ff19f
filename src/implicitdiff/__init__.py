"""implicitdiff: automatic implicit differentiation of optimization problems, on JAX.

Write the optimality conditions F(x, θ) = 0 of a problem; decorate any solver with
``custom_root(F)`` (or ``custom_fixed_point(T)``); its output x*(θ) becomes differentiable by the
implicit function theorem.
"""

from implicitdiff import linear_solve as linear_solve
from implicitdiff import losses as losses
from implicitdiff import optimality as optimality
from implicitdiff import projections as projections
from implicitdiff import prox as prox
from implicitdiff import tree as tree
from implicitdiff.implicit import BackwardSolveError as BackwardSolveError
from implicitdiff.implicit import BackwardSolveWarning as BackwardSolveWarning
from implicitdiff.implicit import custom_fixed_point as custom_fixed_point
from implicitdiff.implicit import custom_root as custom_root
from implicitdiff.implicit import root_jvp as root_jvp
from implicitdiff.implicit import root_vjp as root_vjp

__version__ = "0.1.0.dev0"
