"""The public face: every solver is re-exported at top level, and the documented modules exist."""

import importlib

import implicitdiff
from implicitdiff import solvers

SOLVERS = (
    "GradientDescent LBFGS BFGS NonlinearCG Newton ProximalGradient ProjectedGradient "
    "MirrorDescent BlockCoordinateDescent LBFGSB GaussNewton LevenbergMarquardt "
    "FixedPointIteration AndersonAcceleration Broyden Bisection EqualityConstrainedQP BoxCDQP "
    "OSQP BoxOSQP CvxpyQP ScipyMinimize ScipyBoundedMinimize ScipyRootFinding ScipyLeastSquares "
    "HostSolver ScipyBoundedLeastSquares IterativeRefinement AndersonWrapper "
    "OptaxSolver PolyakSGD ArmijoSGD"
).split()


def test_solvers_are_re_exported_at_top_level():
    for name in SOLVERS:
        assert getattr(implicitdiff, name) is getattr(solvers, name), name


def test_documented_modules_are_attributes():
    for name in "linear_solve optimality projections prox losses solvers tree bilevel".split():
        module = importlib.import_module(f"implicitdiff.{name}")
        assert getattr(implicitdiff, name, None) is module, name
