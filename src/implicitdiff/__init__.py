"""implicitdiff: automatic implicit differentiation of optimization problems, on JAX.

Write the optimality conditions F(x, θ) = 0 of a problem; decorate any solver with
``custom_root(F)`` (or ``custom_fixed_point(T)``); its output x*(θ) becomes differentiable by the
implicit function theorem. The solvers of :mod:`implicitdiff.solvers` are re-exported here
(``implicitdiff.LBFGS`` is ``implicitdiff.solvers.LBFGS``).
"""

from implicitdiff import bilevel as bilevel
from implicitdiff import diagnostics as diagnostics
from implicitdiff import isotonic as isotonic
from implicitdiff import linear_solve as linear_solve
from implicitdiff import losses as losses
from implicitdiff import objective as objective
from implicitdiff import optimality as optimality
from implicitdiff import perturbations as perturbations
from implicitdiff import projections as projections
from implicitdiff import prox as prox
from implicitdiff import solvers as solvers
from implicitdiff import tree as tree
from implicitdiff.implicit import BackwardSolveError as BackwardSolveError
from implicitdiff.implicit import BackwardSolveWarning as BackwardSolveWarning
from implicitdiff.implicit import custom_fixed_point as custom_fixed_point
from implicitdiff.implicit import custom_root as custom_root
from implicitdiff.implicit import root_jvp as root_jvp
from implicitdiff.implicit import root_vjp as root_vjp
from implicitdiff.solvers import BFGS as BFGS
from implicitdiff.solvers import LBFGS as LBFGS
from implicitdiff.solvers import LBFGSB as LBFGSB
from implicitdiff.solvers import OSQP as OSQP
from implicitdiff.solvers import AndersonAcceleration as AndersonAcceleration
from implicitdiff.solvers import AndersonWrapper as AndersonWrapper
from implicitdiff.solvers import ArmijoSGD as ArmijoSGD
from implicitdiff.solvers import BacktrackingLineSearch as BacktrackingLineSearch
from implicitdiff.solvers import Bisection as Bisection
from implicitdiff.solvers import BlockCoordinateDescent as BlockCoordinateDescent
from implicitdiff.solvers import BoxCDQP as BoxCDQP
from implicitdiff.solvers import BoxOSQP as BoxOSQP
from implicitdiff.solvers import Broyden as Broyden
from implicitdiff.solvers import CvxpyQP as CvxpyQP
from implicitdiff.solvers import EqualityConstrainedQP as EqualityConstrainedQP
from implicitdiff.solvers import FixedPointIteration as FixedPointIteration
from implicitdiff.solvers import GaussNewton as GaussNewton
from implicitdiff.solvers import GradientDescent as GradientDescent
from implicitdiff.solvers import HagerZhangLineSearch as HagerZhangLineSearch
from implicitdiff.solvers import HostSolver as HostSolver
from implicitdiff.solvers import IterativeRefinement as IterativeRefinement
from implicitdiff.solvers import LevenbergMarquardt as LevenbergMarquardt
from implicitdiff.solvers import MirrorDescent as MirrorDescent
from implicitdiff.solvers import Newton as Newton
from implicitdiff.solvers import NonlinearCG as NonlinearCG
from implicitdiff.solvers import OptaxSolver as OptaxSolver
from implicitdiff.solvers import PolyakSGD as PolyakSGD
from implicitdiff.solvers import ProjectedGradient as ProjectedGradient
from implicitdiff.solvers import ProximalGradient as ProximalGradient
from implicitdiff.solvers import ScipyBoundedLeastSquares as ScipyBoundedLeastSquares
from implicitdiff.solvers import ScipyBoundedMinimize as ScipyBoundedMinimize
from implicitdiff.solvers import ScipyLeastSquares as ScipyLeastSquares
from implicitdiff.solvers import ScipyMinimize as ScipyMinimize
from implicitdiff.solvers import ScipyRootFinding as ScipyRootFinding
from implicitdiff.solvers import ZoomLineSearch as ZoomLineSearch

__version__ = "0.1.0"
