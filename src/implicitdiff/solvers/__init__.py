"""Solvers that are differentiable by default.

Each is configured once and called as ``solver.run(init_params, *args, **kwargs)``, which
returns ``(params, state)``; see :mod:`implicitdiff.solvers._base` for the protocol.
"""

from implicitdiff.solvers._base import IterativeSolver as IterativeSolver
from implicitdiff.solvers._base import OptStep as OptStep
from implicitdiff.solvers._failures import SolverError as SolverError
from implicitdiff.solvers._failures import SolverWarning as SolverWarning
from implicitdiff.solvers._failures import Status as Status
from implicitdiff.solvers._qp_common import KKTSolution as KKTSolution
from implicitdiff.solvers.anderson_wrapper import AndersonWrapper as AndersonWrapper
from implicitdiff.solvers.armijo_sgd import ArmijoSGD as ArmijoSGD
from implicitdiff.solvers.armijo_sgd import ArmijoState as ArmijoState
from implicitdiff.solvers.block_cd import BlockCoordinateDescent as BlockCoordinateDescent
from implicitdiff.solvers.box_cdqp import BoxCDQP as BoxCDQP
from implicitdiff.solvers.box_osqp import BoxOSQP as BoxOSQP
from implicitdiff.solvers.cvxpy_qp import CvxpyQP as CvxpyQP
from implicitdiff.solvers.equality_qp import EqualityConstrainedQP as EqualityConstrainedQP
from implicitdiff.solvers.fixed_point import AndersonAcceleration as AndersonAcceleration
from implicitdiff.solvers.fixed_point import FixedPointIteration as FixedPointIteration
from implicitdiff.solvers.gradient_descent import GradientDescent as GradientDescent
from implicitdiff.solvers.host import HostSolver as HostSolver
from implicitdiff.solvers.iterative_refinement import (
    IterativeRefinement as IterativeRefinement,
)
from implicitdiff.solvers.lbfgsb import LBFGSB as LBFGSB
from implicitdiff.solvers.least_squares import GaussNewton as GaussNewton
from implicitdiff.solvers.least_squares import LevenbergMarquardt as LevenbergMarquardt
from implicitdiff.solvers.linesearch import BacktrackingLineSearch as BacktrackingLineSearch
from implicitdiff.solvers.linesearch import HagerZhangLineSearch as HagerZhangLineSearch
from implicitdiff.solvers.linesearch import LineSearchState as LineSearchState
from implicitdiff.solvers.linesearch import ZoomLineSearch as ZoomLineSearch
from implicitdiff.solvers.mirror_descent import MirrorDescent as MirrorDescent
from implicitdiff.solvers.newton import Newton as Newton
from implicitdiff.solvers.nonlinear_cg import NonlinearCG as NonlinearCG
from implicitdiff.solvers.optax_solver import OptaxSolver as OptaxSolver
from implicitdiff.solvers.optax_solver import OptaxState as OptaxState
from implicitdiff.solvers.osqp import OSQP as OSQP
from implicitdiff.solvers.polyak_sgd import PolyakSGD as PolyakSGD
from implicitdiff.solvers.polyak_sgd import PolyakSGDState as PolyakSGDState
from implicitdiff.solvers.proximal import ProjectedGradient as ProjectedGradient
from implicitdiff.solvers.proximal import ProximalGradient as ProximalGradient
from implicitdiff.solvers.quasi_newton import BFGS as BFGS
from implicitdiff.solvers.quasi_newton import LBFGS as LBFGS
from implicitdiff.solvers.root import Bisection as Bisection
from implicitdiff.solvers.root import Broyden as Broyden
from implicitdiff.solvers.scipy import ScipyBoundedMinimize as ScipyBoundedMinimize
from implicitdiff.solvers.scipy import ScipyMinimize as ScipyMinimize
from implicitdiff.solvers.scipy_root import ScipyBoundedLeastSquares as ScipyBoundedLeastSquares
from implicitdiff.solvers.scipy_root import ScipyLeastSquares as ScipyLeastSquares
from implicitdiff.solvers.scipy_root import ScipyRootFinding as ScipyRootFinding
