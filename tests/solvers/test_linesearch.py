"""The line searches as objects (BacktrackingLineSearch, ZoomLineSearch, HagerZhangLineSearch)
against JAXopt 0.8.5's on the same functions and directions, on quadratics with known exact line
minimizers, under jit and vmap, and as the ``linesearch=`` option of the solvers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import implicitdiff
from implicitdiff.solvers import (
    BFGS,
    LBFGS,
    BacktrackingLineSearch,
    HagerZhangLineSearch,
    NonlinearCG,
    ZoomLineSearch,
)

jaxopt = pytest.importorskip("jaxopt")


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def wavy(x):
    return jnp.sum(jnp.cos(2.0 * x) + 0.1 * x**2) + 0.05 * jnp.sum(x) ** 2


def logistic(w):
    X = jnp.array([[1.0, 2.0, -1.0], [-1.0, 0.5, 2.0], [0.3, -1.0, 0.2], [2.0, 1.0, 1.0]])
    y = jnp.array([1.0, -1.0, 1.0, -1.0])
    return jnp.sum(jnp.logaddexp(0.0, -y * (X @ w))) + 0.05 * w @ w


PROBLEMS = {
    "rosenbrock": (rosenbrock, jnp.array([-1.2, 1.0, 0.5])),
    "wavy": (wavy, jnp.array([0.3, -0.2, 1.1])),
    "logistic": (logistic, jnp.array([0.5, -2.0, 1.0])),
}

# (ours, JAXopt's, the condition the search claims): same options on both sides.
SEARCHES = {
    "backtracking-armijo": (
        lambda f: BacktrackingLineSearch(fun=f, condition="armijo"),
        lambda f: jaxopt.BacktrackingLineSearch(fun=f, condition="armijo"),
        "armijo",
    ),
    "backtracking-strong-wolfe": (
        lambda f: BacktrackingLineSearch(fun=f, maxiter=60),
        lambda f: jaxopt.BacktrackingLineSearch(fun=f, maxiter=60),
        "strong-wolfe",
    ),
    "backtracking-wolfe": (
        lambda f: BacktrackingLineSearch(fun=f, condition="wolfe", maxiter=60),
        lambda f: jaxopt.BacktrackingLineSearch(fun=f, condition="wolfe", maxiter=60),
        "wolfe",
    ),
    "backtracking-goldstein": (
        lambda f: BacktrackingLineSearch(fun=f, condition="goldstein", c1=0.25),
        lambda f: jaxopt.BacktrackingLineSearch(fun=f, condition="goldstein", c1=0.25),
        "goldstein",
    ),
    "zoom": (
        lambda f: ZoomLineSearch(fun=f),
        lambda f: jaxopt.ZoomLineSearch(fun=f),
        "strong-wolfe",
    ),
    "hager-zhang": (
        lambda f: HagerZhangLineSearch(fun=f),
        lambda f: jaxopt.HagerZhangLineSearch(fun=f),
        "approximate-wolfe",
    ),
}


def condition_holds(name, f, x, d, eta, search):
    """Whether η satisfies the named condition at x along d (in float64, exactly as stated)."""
    phi = lambda t: f(x + t * d)  # noqa: E731
    dphi = jax.grad(phi)
    f0, s0, ft, st = phi(0.0), dphi(0.0), phi(eta), dphi(eta)
    c1, c2 = search.c1, search.c2
    armijo = ft <= f0 + c1 * eta * s0
    if name == "armijo":
        return armijo
    if name == "wolfe":
        return armijo & (st >= c2 * s0)
    if name == "strong-wolfe":
        return armijo & (abs(st) <= c2 * abs(s0))
    if name == "goldstein":
        return armijo & (ft >= f0 + (1 - c1) * eta * s0)
    # Hager-Zhang: Wolfe, or approximate Wolfe (slope form of sufficient decrease near f0).
    eps = search.approximate_wolfe_threshold * abs(f0)
    approx = (ft <= f0 + eps) & ((2 * c1 - 1) * s0 >= st)
    return (armijo | approx) & (st >= c2 * s0)


@pytest.mark.parametrize("search", sorted(SEARCHES))
@pytest.mark.parametrize(
    "problem, init_stepsize", [("rosenbrock", 1.0), ("wavy", 0.05), ("logistic", 1.0)]
)
def test_linesearch_matches_jaxopt(problem, search, init_stepsize):
    f, x = PROBLEMS[problem]
    ours, theirs, condition = SEARCHES[search]
    value, grad = jax.value_and_grad(f)(x)
    d = -grad
    if init_stepsize == 1.0:
        # Steepest descent on Rosenbrock overshoots at η = 1; a quasi-Newton-like direction too.
        d = -grad / jnp.linalg.norm(grad)
    ls = ours(f)
    eta, state = ls.run(init_stepsize, x, value, grad, d)
    ref_eta, ref_state = theirs(f).run(init_stepsize, x, value, grad, d)
    if search.startswith("backtracking"):
        # The same rule as JAXopt's: the same step, and the same verdict. (Backtracking cannot
        # lengthen a step too short for a curvature or Goldstein lower bound: both fail then.)
        np.testing.assert_allclose(eta, ref_eta, rtol=1e-12)
        assert bool(state.failed) == bool(ref_state.failed)
        assert bool(state.done) != bool(state.failed)
        if condition == "armijo":
            assert bool(state.done)
    else:
        assert bool(state.done) and not bool(state.failed)
    if bool(state.done):
        assert float(eta) > 0
        assert bool(condition_holds(condition, f, x, d, eta, ls)), (float(eta), float(ref_eta))
    # The state: the new point, f and ∇f there.
    np.testing.assert_allclose(state.params, x + eta * d, rtol=1e-15)
    np.testing.assert_allclose(state.value, f(x + eta * d), rtol=1e-13)
    np.testing.assert_allclose(state.grad, jax.grad(f)(x + eta * d), rtol=1e-12, atol=1e-14)
    if not search.startswith("backtracking") and (search == "zoom" or not ref_state.failed):
        # Same or better decrease than JAXopt's step (JAXopt's HZ starts at η = 1 whatever
        # init_stepsize, so its step is not always comparable; then it must at least hold).
        assert float(state.value) <= float(ref_state.value) + 1e-12 * abs(float(value))


QUADRATICS = [
    (jnp.diag(jnp.array([1.0, 10.0, 100.0])), jnp.array([1.0, 1.0, 1.0])),
    (jnp.array([[4.0, 1.0], [1.0, 3.0]]), jnp.array([-2.0, 5.0])),
]


@pytest.mark.parametrize("k", range(len(QUADRATICS)))
@pytest.mark.parametrize("cls", [ZoomLineSearch, HagerZhangLineSearch])
@pytest.mark.parametrize("init_stepsize", [1.0, 1e-4, 30.0])
def test_linesearch_exact_on_quadratics(k, cls, init_stepsize):
    # φ(η) = f(x + ηd) is a parabola, minimized at η* = −⟨g, d⟩ / ⟨d, A d⟩: with a tight
    # curvature condition (c2 = 0.01) the only acceptable steps are near η*, and both the cubic
    # interpolation of the zoom and the secant of Hager-Zhang land on it exactly.
    A, x = QUADRATICS[k]
    b = jnp.arange(1.0, 1.0 + x.shape[0])

    def f(x):
        return 0.5 * x @ A @ x - b @ x

    g = A @ x - b
    for d in (-g, -jnp.linalg.solve(A + jnp.eye(x.shape[0]), g)):
        exact = -(g @ d) / (d @ A @ d)
        ls = cls(fun=f, c1=1e-3, c2=0.01, maxiter=40)
        eta, state = ls.run(init_stepsize, x, descent_direction=d)
        assert bool(state.done)
        np.testing.assert_allclose(eta, exact, rtol=1e-2)
        slope = jax.grad(lambda t, d=d: f(x + t * d))(eta)
        assert abs(float(slope)) <= 0.01 * abs(float(g @ d))


@pytest.mark.parametrize("condition", ["armijo", "wolfe", "strong-wolfe", "goldstein"])
def test_backtracking_on_quadratic_accepts_the_first_step_that_holds(condition):
    # On φ(η) = φ(0) + η s + η² κ / 2 each condition is an interval of η in closed form; the
    # search returns the first of max_stepsize · 0.5ᵏ inside it.
    A = jnp.diag(jnp.array([1.0, 4.0]))
    x = jnp.array([1.0, 1.0])
    f = lambda x: 0.5 * x @ A @ x  # noqa: E731
    d = -(A @ x)
    s, kappa = float(jnp.vdot(A @ x, d)), float(d @ A @ d)
    c1, c2 = 0.25, 0.5
    eta_star = -s / kappa

    def holds(eta):
        armijo = eta <= 2 * (1 - c1) * eta_star
        if condition == "armijo":
            return armijo
        if condition == "wolfe":
            return armijo and eta >= (1 - c2) * eta_star
        if condition == "strong-wolfe":
            return armijo and (1 - c2) * eta_star <= eta <= (1 + c2) * eta_star
        return armijo and eta >= 2 * c1 * eta_star

    ls = BacktrackingLineSearch(
        fun=f, condition=condition, c1=c1, c2=c2, decrease_factor=0.5, max_stepsize=8.0
    )
    eta, state = ls.run(8.0, x, descent_direction=d)
    expected = next(8.0 * 0.5**k for k in range(30) if holds(8.0 * 0.5**k))
    assert bool(state.done)
    np.testing.assert_allclose(eta, expected, rtol=1e-15)


@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_linesearch_under_jit_and_vmap(search):
    ours, _, _ = SEARCHES[search]
    ls = ours(wavy)
    starts = jnp.array([[0.3, -0.2, 1.1], [1.0, 2.0, -0.5], [-0.7, 0.1, 0.4]])

    def step(x):
        eta, state = ls.run(0.5, x)
        return eta, state.value, state.done

    eager = [step(x) for x in starts]
    batched = jax.jit(jax.vmap(step))(starts)
    for i, (eta, value, done) in enumerate(eager):
        np.testing.assert_allclose(batched[0][i], eta, rtol=1e-13)
        np.testing.assert_allclose(batched[1][i], value, rtol=1e-13)
        assert bool(batched[2][i]) == bool(done)
    # Repeated jitted calls do not retrace.
    traces = []

    @jax.jit
    def traced(x):
        traces.append(1)
        return ls.run(0.5, x)[0]

    traced(starts[0])
    traced(starts[1])
    assert len(traces) == 1


@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_linesearch_arguments_and_derivatives(search):
    # fun's arguments positionally, by keyword, and as JAXopt's fun_args / fun_kwargs; η is a
    # constant for differentiation (zero derivative), state.params = x + η d is differentiable.
    ours, _, _ = SEARCHES[search]

    def f(x, theta, scale=1.0):
        return scale * jnp.sum(jnp.cos(theta * x) + 0.1 * x**2)

    ls = ours(f)
    x = jnp.array([0.3, -0.2])
    a = ls.run(0.5, x, None, None, None, 2.0, scale=3.0)
    b = ls.run(0.5, x, fun_args=[2.0], fun_kwargs={"scale": 3.0})
    np.testing.assert_allclose(a[0], b[0], rtol=1e-15)
    assert float(jax.grad(lambda t: ls.run(0.5, x, None, None, None, t)[0])(2.0)) == 0.0
    d = jnp.array([1.0, 0.5])
    eta = ls.run(0.5, x, None, None, d, 2.0)[0]
    jac = jax.jacobian(lambda x0: ls.run(0.5, x0, None, None, d, 2.0)[1].params)(x)
    np.testing.assert_allclose(jac, np.eye(2), rtol=1e-15)
    jac_d = jax.jacobian(lambda dd: ls.run(0.5, x, None, None, dd, 2.0)[1].params)(d)
    np.testing.assert_allclose(jac_d, float(eta) * np.eye(2), rtol=1e-15)


@pytest.mark.parametrize("cls", [ZoomLineSearch, HagerZhangLineSearch, BacktrackingLineSearch])
def test_linesearch_flags_an_ascent_direction_as_failed(cls):
    f, x = PROBLEMS["wavy"]
    grad = jax.grad(f)(x)
    eta, state = cls(fun=f).run(1.0, x, descent_direction=grad)
    assert bool(state.failed) and not bool(state.done)
    # No step increases f: zoom and Hager-Zhang stay put, backtracking's last trial is tiny.
    assert float(state.value) <= float(f(x)) + 1e-12 or float(eta) < 1e-2


@pytest.mark.parametrize(
    "cls, options, name",
    [
        (BacktrackingLineSearch, dict(condition="curvature"), "condition"),
        (BacktrackingLineSearch, dict(decrease_factor=1.0), "decrease_factor"),
        (BacktrackingLineSearch, dict(c1=0.5, c2=0.1), "c2"),
        (BacktrackingLineSearch, dict(maxiter=0), "maxiter"),
        (ZoomLineSearch, dict(increase_factor=0.5), "increase_factor"),
        (ZoomLineSearch, dict(max_stepsize=-1.0), "max_stepsize"),
        (HagerZhangLineSearch, dict(shrinkage_factor=1.5), "shrinkage_factor"),
        (HagerZhangLineSearch, dict(value_and_grad="yes"), "value_and_grad"),
    ],
)
def test_linesearch_bad_options_raise_naming_the_option(cls, options, name):
    with pytest.raises((TypeError, ValueError), match=name):
        cls(fun=rosenbrock, **options)
    with pytest.raises(TypeError, match="fun"):
        cls(fun=None)


def test_linesearch_value_and_grad_and_has_aux():
    f, x = PROBLEMS["logistic"]
    plain = ZoomLineSearch(fun=f).run(1.0, x)
    both = ZoomLineSearch(fun=jax.value_and_grad(f), value_and_grad=True).run(1.0, x)
    aux = ZoomLineSearch(fun=lambda w: (f(w), {"norm": w @ w}), has_aux=True).run(1.0, x)
    np.testing.assert_allclose(both[0], plain[0], rtol=1e-15)
    np.testing.assert_allclose(aux[0], plain[0], rtol=1e-15)
    np.testing.assert_allclose(aux[1].aux["norm"], aux[1].params @ aux[1].params, rtol=1e-14)


def test_linesearches_are_exported():
    for name in ("BacktrackingLineSearch", "ZoomLineSearch", "HagerZhangLineSearch"):
        assert getattr(implicitdiff, name) is getattr(implicitdiff.solvers, name)


# ---------------------------------------------------------------------------------------------
# As the solvers' option.


def _objects(f):
    return {
        "zoom-object": ZoomLineSearch(fun=f, c2=0.1),
        "hager-zhang-object": HagerZhangLineSearch(fun=f, c1=0.05, c2=0.1),
        "backtracking-object": BacktrackingLineSearch(
            fun=f, condition="armijo", decrease_factor=0.5, max_stepsize=1e10
        ),
    }


def ridge_logistic(w, theta):
    X = jnp.array([[1.0, 2.0, -1.0], [-1.0, 0.5, 2.0], [0.3, -1.0, 0.2], [2.0, 1.0, 1.0]])
    y = jnp.array([1.0, -1.0, 1.0, -1.0])
    return jnp.sum(jnp.logaddexp(0.0, -y * (X @ w))) + theta * w @ w


@pytest.mark.parametrize("cls", [LBFGS, BFGS, NonlinearCG])
@pytest.mark.parametrize(
    "search",
    [
        "zoom",
        "backtracking",
        "hager-zhang",
        "zoom-object",
        "hager-zhang-object",
        "backtracking-object",
    ],
)
def test_solvers_with_each_linesearch_converge_and_differentiate(cls, search):
    linesearch = _objects(ridge_logistic)[search] if search.endswith("object") else search
    # Nonlinear CG without the zoom's strong Wolfe steps stalls near 1e-8 here: a looser tol.
    weak = cls is NonlinearCG and "zoom" not in search
    tol, rtol = (1e-7, 1e-4) if weak else (1e-10, 1e-6)
    solver = cls(fun=ridge_logistic, linesearch=linesearch, tol=tol, maxiter=2000)
    x0 = jnp.zeros(3)
    x, state = solver.run(x0, 0.3)
    assert bool(state.converged)
    reference, _ = LBFGS(fun=ridge_logistic, tol=1e-12).run(x0, 0.3)
    np.testing.assert_allclose(x, reference, rtol=100 * tol, atol=100 * tol)

    def loss(theta):
        return jnp.sum(solver.run(x0, theta).params ** 2)

    if weak:  # finite differences of solutions to 1e-7 are noise: the tight solver's gradient
        tight = LBFGS(fun=ridge_logistic, tol=1e-12)
        expected = jax.grad(lambda t: jnp.sum(tight.run(x0, t).params ** 2))(0.3)
    else:
        h = 1e-5
        expected = (loss(0.3 + h) - loss(0.3 - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(loss)(0.3), expected, rtol=rtol)
