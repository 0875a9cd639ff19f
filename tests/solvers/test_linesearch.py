"""The line searches as objects (BacktrackingLineSearch, ZoomLineSearch, HagerZhangLineSearch)
against JAXopt 0.8.5's on the same functions and directions, on quadratics with known exact line
minimizers, under jit and vmap, and as the ``linesearch=`` option of the solvers."""

from __future__ import annotations

import functools

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


# Every search of a test runs in a jitted program of module-level functions, one per search (or
# per configuration) shared by the tests that use it: the objectives of PROBLEMS are one function
# of the problem's number k (traced), so one program serves the three problems.
_OBJECTIVES = tuple(f for f, _ in PROBLEMS.values())
PROBLEM_NUMBER = {name: k for k, name in enumerate(PROBLEMS)}


def objective(x, k):
    """The objective of PROBLEMS number k (k traced: one program for the three)."""
    return jax.lax.switch(k, _OBJECTIVES, x)


_OURS = {name: ours for name, (ours, _, _) in SEARCHES.items()}
_OURS["backtracking-default"] = lambda f: BacktrackingLineSearch(fun=f)
_TRACES = []  # the search of each trace of _ours


@functools.partial(jax.jit, static_argnames="search")
def _ours(search, k, x, sign, normalize, init_stepsize):
    """Our search on the objective of problem k from x along d = sign ∇f(x) (divided by ‖∇f(x)‖
    if normalize), f(x) and ∇f(x) given: (η, state, d, f(x))."""
    _TRACES.append(search)
    value, grad = jax.value_and_grad(objective)(x, k)
    d = sign * grad / jnp.where(normalize, jnp.linalg.norm(grad), 1.0)
    eta, state = _OURS[search](objective).run(init_stepsize, x, value, grad, d, k)
    return eta, state, d, value


@functools.partial(jax.jit, static_argnames="search")
def _theirs(search, k, x, d, init_stepsize):
    """JAXopt's search, with the same options, from x along d: (η, failed, f(x + η d))."""
    value, grad = jax.value_and_grad(objective)(x, k)
    search = SEARCHES[search][1](objective)
    eta, state = search.run(init_stepsize, x, value, grad, d, fun_args=[k])
    return eta, state.failed, state.value


@jax.jit
def _conditions(k, x, d, eta, c1, c2, approximate_wolfe_threshold):
    """Whether η satisfies each condition at x along d (in float64, exactly as stated), and
    x + η d, f and ∇f there."""
    phi = lambda t: objective(x + t * d, k)  # noqa: E731
    dphi = jax.grad(phi)
    f0, s0, ft, st = phi(0.0), dphi(0.0), phi(eta), dphi(eta)
    armijo = ft <= f0 + c1 * eta * s0
    # Hager-Zhang: Wolfe, or approximate Wolfe (slope form of sufficient decrease near f0).
    eps = approximate_wolfe_threshold * abs(f0)
    approx = (ft <= f0 + eps) & ((2 * c1 - 1) * s0 >= st)
    holds = {
        "armijo": armijo,
        "wolfe": armijo & (st >= c2 * s0),
        "strong-wolfe": armijo & (abs(st) <= c2 * abs(s0)),
        "goldstein": armijo & (ft >= f0 + (1 - c1) * eta * s0),
        "approximate-wolfe": (armijo | approx) & (st >= c2 * s0),
    }
    new = x + eta * d
    return holds, new, objective(new, k), jax.grad(objective)(new, k)


@pytest.mark.parametrize("search", sorted(SEARCHES))
@pytest.mark.parametrize(
    "problem, init_stepsize", [("rosenbrock", 1.0), ("wavy", 0.05), ("logistic", 1.0)]
)
def test_linesearch_matches_jaxopt(problem, search, init_stepsize):
    _, x = PROBLEMS[problem]
    k = PROBLEM_NUMBER[problem]
    _, _, condition = SEARCHES[search]
    # d = −∇f(x); with η₀ = 1, −∇f(x)/‖∇f(x)‖ (steepest descent on Rosenbrock overshoots at η = 1;
    # a quasi-Newton-like direction too).
    eta, state, d, value = _ours(search, k, x, -1.0, init_stepsize == 1.0, init_stepsize)
    ref_eta, ref_failed, ref_value = _theirs(search, k, x, d, init_stepsize)
    ls = _OURS[search](objective)
    threshold = getattr(ls, "approximate_wolfe_threshold", 0.0)
    holds, new_params, new_value, new_grad = _conditions(k, x, d, eta, ls.c1, ls.c2, threshold)
    if search.startswith("backtracking"):
        # The same rule as JAXopt's: the same step, and the same verdict. (Backtracking cannot
        # lengthen a step too short for a curvature or Goldstein lower bound: both fail then.)
        np.testing.assert_allclose(eta, ref_eta, rtol=1e-12)
        assert bool(state.failed) == bool(ref_failed)
        assert bool(state.done) != bool(state.failed)
        if condition == "armijo":
            assert bool(state.done)
    else:
        assert bool(state.done) and not bool(state.failed)
    if bool(state.done):
        assert float(eta) > 0
        assert bool(holds[condition]), (float(eta), float(ref_eta))
    # The state: the new point, f and ∇f there.
    np.testing.assert_allclose(state.params, new_params, rtol=1e-15)
    np.testing.assert_allclose(state.value, new_value, rtol=1e-13)
    np.testing.assert_allclose(state.grad, new_grad, rtol=1e-12, atol=1e-14)
    if not search.startswith("backtracking") and (search == "zoom" or not ref_failed):
        # Same or better decrease than JAXopt's step (JAXopt's HZ starts at η = 1 whatever
        # init_stepsize, so its step is not always comparable; then it must at least hold).
        assert float(state.value) <= float(ref_value) + 1e-12 * abs(float(value))


QUADRATICS = [
    (jnp.diag(jnp.array([1.0, 10.0, 100.0])), jnp.array([1.0, 1.0, 1.0])),
    (jnp.array([[4.0, 1.0], [1.0, 3.0]]), jnp.array([-2.0, 5.0])),
]


def _quadratic(x, A, b):
    return 0.5 * x @ A @ x - b @ x


@functools.partial(jax.jit, static_argnames=("k", "cls"))
def _quadratic_case(k, cls, init_stepsize):
    """For both directions d (batched): η* = −⟨g, d⟩ / ⟨d, A d⟩, η, done, φ'(η), φ'(0)."""
    A, x = QUADRATICS[k]
    b = jnp.arange(1.0, 1.0 + x.shape[0])
    g = A @ x - b
    ls = cls(fun=_quadratic, c1=1e-3, c2=0.01, maxiter=40)

    def along(d):
        exact = -(g @ d) / (d @ A @ d)
        eta, state = ls.run(init_stepsize, x, None, None, d, A, b)
        slope = jax.grad(lambda t: _quadratic(x + t * d, A, b))(eta)
        return exact, eta, state.done, slope, g @ d

    return jax.vmap(along)(jnp.stack([-g, -jnp.linalg.solve(A + jnp.eye(x.shape[0]), g)]))


@pytest.mark.parametrize("k", range(len(QUADRATICS)))
@pytest.mark.parametrize("cls", [ZoomLineSearch, HagerZhangLineSearch])
@pytest.mark.parametrize("init_stepsize", [1.0, 1e-4, 30.0])
def test_linesearch_exact_on_quadratics(k, cls, init_stepsize):
    # φ(η) = f(x + ηd) is a parabola, minimized at η* = −⟨g, d⟩ / ⟨d, A d⟩: with a tight
    # curvature condition (c2 = 0.01) the only acceptable steps are near η*, and both the cubic
    # interpolation of the zoom and the secant of Hager-Zhang land on it exactly. Two directions:
    # −g and a preconditioned one.
    exact, eta, done, slope, slope0 = _quadratic_case(k, cls, init_stepsize)
    assert np.all(done)
    np.testing.assert_allclose(eta, exact, rtol=1e-2)
    assert np.all(np.abs(slope) <= 0.01 * np.abs(slope0))


_BACKTRACKING_A = jnp.diag(jnp.array([1.0, 4.0]))
_BACKTRACKING_C1, _BACKTRACKING_C2 = 0.25, 0.5


def _backtracking_quadratic(x):
    return 0.5 * x @ _BACKTRACKING_A @ x


@functools.partial(jax.jit, static_argnames="condition")
def _backtracking_case(condition, x):
    ls = BacktrackingLineSearch(
        fun=_backtracking_quadratic,
        condition=condition,
        c1=_BACKTRACKING_C1,
        c2=_BACKTRACKING_C2,
        decrease_factor=0.5,
        max_stepsize=8.0,
    )
    eta, state = ls.run(8.0, x, descent_direction=-(_BACKTRACKING_A @ x))
    return eta, state.done


@pytest.mark.parametrize("condition", ["armijo", "wolfe", "strong-wolfe", "goldstein"])
def test_backtracking_on_quadratic_accepts_the_first_step_that_holds(condition):
    # On φ(η) = φ(0) + η s + η² κ / 2 each condition is an interval of η in closed form; the
    # search returns the first of max_stepsize · 0.5ᵏ inside it.
    A = np.diag([1.0, 4.0])
    x = np.array([1.0, 1.0])
    d = -(A @ x)
    s, kappa = float(np.vdot(A @ x, d)), float(d @ A @ d)
    c1, c2 = _BACKTRACKING_C1, _BACKTRACKING_C2
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

    eta, done = _backtracking_case(condition, jnp.asarray(x))
    expected = next(8.0 * 0.5**k for k in range(30) if holds(8.0 * 0.5**k))
    assert bool(done)
    np.testing.assert_allclose(eta, expected, rtol=1e-15)


@pytest.mark.parametrize("condition", ["armijo", "wolfe", "strong-wolfe", "goldstein"])
def test_backtracking_at_the_noise_floor_of_f_keeps_the_quadratics_interval(condition):
    """φ(η) = 1e12 + ½ (x + ηd)ᵀA(x + ηd) at x = 1e-4 · (1, 1): the decrease any step can make
    (about 1e-7) is far below the rounding of f (ulps of 1e12 are 1.2e-4), so φ's values say
    nothing there. The search then tests the gradient forms of its conditions, exact for a
    quadratic, and returns the step it returns without the offset at x = (1, 1) (the intervals,
    in units of −φ'(0)/φ''(0), do not depend on the scale of x). On values alone, the first
    trial η = 8, 32 times the step returned here, was accepted with the Armijo, Wolfe and
    Goldstein conditions (f grew, within rounding)."""
    ls = BacktrackingLineSearch(
        fun=lambda x: 1e12 + _backtracking_quadratic(x),
        condition=condition,
        c1=_BACKTRACKING_C1,
        c2=_BACKTRACKING_C2,
        decrease_factor=0.5,
        max_stepsize=8.0,
    )
    x = 1e-4 * jnp.ones(2)
    eta, state = jax.jit(ls.run)(8.0, x, descent_direction=-(_BACKTRACKING_A @ x))
    want, _ = _backtracking_case(condition, jnp.ones(2))
    assert bool(state.done)
    np.testing.assert_allclose(eta, want, rtol=1e-15)


@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_linesearch_under_jit_and_vmap(search):
    k = PROBLEM_NUMBER["wavy"]
    starts = jnp.array([[0.3, -0.2, 1.1], [1.0, 2.0, -0.5], [-0.7, 0.1, 0.4]])

    def step(x):  # d = −∇f(x), η₀ = 0.5
        eta, state, _, _ = _ours(search, k, x, -1.0, False, 0.5)
        return eta, state.value, state.done

    # One start at a time, jitted: the repeated calls do not retrace.
    single = [step(x) for x in starts]
    assert _TRACES.count(search) == 1
    batched = jax.jit(jax.vmap(step))(starts)
    for i, (eta, value, done) in enumerate(single):
        np.testing.assert_allclose(batched[0][i], eta, rtol=1e-13)
        np.testing.assert_allclose(batched[1][i], value, rtol=1e-13)
        assert bool(batched[2][i]) == bool(done)


def _scaled_cos(x, theta, scale=1.0):
    return scale * jnp.sum(jnp.cos(theta * x) + 0.1 * x**2)


@functools.partial(jax.jit, static_argnames="search")
def _arguments_case(search, x, d):
    ls = SEARCHES[search][0](_scaled_cos)
    # θ positionally and scale by keyword; the reverse-mode derivative of η in θ.
    a, vjp = jax.vjp(lambda t: ls.run(0.5, x, None, None, None, t, scale=3.0)[0], 2.0)
    b = ls.run(0.5, x, fun_args=[2.0], fun_kwargs={"scale": 3.0})[0]

    def new_params(x0, dd):
        eta, state = ls.run(0.5, x0, None, None, dd, 2.0)
        return state.params, eta

    (jac, jac_d), eta = jax.jacrev(new_params, argnums=(0, 1), has_aux=True)(x, d)
    return a, b, vjp(1.0)[0], eta, jac, jac_d


@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_linesearch_arguments_and_derivatives(search):
    # fun's arguments positionally, by keyword, and as JAXopt's fun_args / fun_kwargs; η is a
    # constant for differentiation (zero derivative), state.params = x + η d is differentiable.
    x = jnp.array([0.3, -0.2])
    d = jnp.array([1.0, 0.5])
    a, b, d_eta_d_theta, eta, jac, jac_d = _arguments_case(search, x, d)
    np.testing.assert_allclose(a, b, rtol=1e-15)
    assert float(d_eta_d_theta) == 0.0
    np.testing.assert_allclose(jac, np.eye(2), rtol=1e-15)
    np.testing.assert_allclose(jac_d, float(eta) * np.eye(2), rtol=1e-15)


@pytest.mark.parametrize("cls", [ZoomLineSearch, HagerZhangLineSearch, BacktrackingLineSearch])
def test_linesearch_flags_an_ascent_direction_as_failed(cls):
    _, x = PROBLEMS["wavy"]
    search = {
        ZoomLineSearch: "zoom",
        HagerZhangLineSearch: "hager-zhang",
        BacktrackingLineSearch: "backtracking-default",
    }[cls]
    assert _OURS[search](wavy) == cls(fun=wavy)  # the class's defaults
    # d = +∇f(x), η₀ = 1.
    eta, state, _, value = _ours(search, PROBLEM_NUMBER["wavy"], x, 1.0, False, 1.0)
    assert bool(state.failed) and not bool(state.done)
    # No step increases f: zoom and Hager-Zhang stay put, backtracking's last trial is tiny.
    assert float(state.value) <= float(value) + 1e-12 or float(eta) < 1e-2


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


def _logistic_with_aux(w):
    return logistic(w), {"norm": w @ w}


@jax.jit
def _value_and_grad_and_aux_case(x):
    both = ZoomLineSearch(fun=jax.value_and_grad(logistic), value_and_grad=True).run(1.0, x)
    aux = ZoomLineSearch(fun=_logistic_with_aux, has_aux=True).run(1.0, x)
    return both, aux


def test_linesearch_value_and_grad_and_has_aux():
    _, x = PROBLEMS["logistic"]
    # Plain: d = −∇f(x), η₀ = 1.
    plain = _ours("zoom", PROBLEM_NUMBER["logistic"], x, -1.0, False, 1.0)
    both, aux = _value_and_grad_and_aux_case(x)
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


def _tight_loss(theta):
    """‖x*(θ)‖² by a tight L-BFGS, and x*(θ)."""
    x = LBFGS(fun=ridge_logistic, tol=1e-12).run(jnp.zeros(3), theta).params
    return jnp.sum(x**2), x


# The reference solution and the gradient of ‖x*(θ)‖² through it: one program for every test.
_reference = jax.jit(jax.value_and_grad(_tight_loss, has_aux=True))


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
    # (The solver's own compiled run serves x*(0.3) and the finite differences: the cheapest
    # here, as one program holding the run and its derivative compiles more slowly than the run
    # and the derivative's programs apart.)
    linesearch = _objects(ridge_logistic)[search] if search.endswith("object") else search
    # Nonlinear CG without the zoom's strong Wolfe steps stalls near 1e-8 here: a looser tol.
    weak = cls is NonlinearCG and "zoom" not in search
    tol, rtol = (1e-7, 1e-4) if weak else (1e-10, 1e-6)
    solver = cls(fun=ridge_logistic, linesearch=linesearch, tol=tol, maxiter=2000)
    x0 = jnp.zeros(3)
    x, state = solver.run(x0, 0.3)
    assert bool(state.converged)
    (_, reference), tight_grad = _reference(0.3)
    np.testing.assert_allclose(x, reference, rtol=100 * tol, atol=100 * tol)

    def loss(theta):
        return jnp.sum(solver.run(x0, theta).params ** 2)

    if weak:  # finite differences of solutions to 1e-7 are noise: the tight solver's gradient
        expected = tight_grad
    else:
        h = 1e-5
        expected = (loss(0.3 + h) - loss(0.3 - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(loss)(0.3), expected, rtol=rtol)


@pytest.mark.parametrize("cls", [LBFGS, BFGS, NonlinearCG])
@pytest.mark.parametrize("search", ["zoom", "backtracking", "hager-zhang"])
def test_solvers_with_each_linesearch_make_no_nan_op_by_op(cls, search):
    # Under jax.disable_jit and jax.debug_nans every operation that makes a NaN raises: the zoom's
    # cubic on a bracket with an infinite end (no bracket yet) and Hager-Zhang's secant with
    # equal slopes made a 0/0 or inf − inf that a select then dropped.
    solver = cls(fun=ridge_logistic, linesearch=search, tol=1e-9, maxiter=2000)

    def loss(theta):
        return jnp.sum(solver.run(jnp.zeros(3), theta).params ** 2)

    with jax.disable_jit(), jax.debug_nans(True):
        value, grad = jax.value_and_grad(loss)(0.3)
    (_, reference), tight_grad = _reference(0.3)
    np.testing.assert_allclose(value, jnp.sum(reference**2), rtol=1e-7)
    np.testing.assert_allclose(grad, tight_grad, rtol=1e-6)


def _two_ones(x):
    return jnp.sum((x - 1.0) ** 2)


def test_zoom_and_hager_zhang_tol_and_jit_as_jaxopt():
    """JAXopt's ``tol`` (a slack on the conditions) and ``jit`` (accepted; no effect here).

    From x = 0 along −∇f = (2, 2): η = 1 passes the strong Wolfe conditions only with a slack
    ≥ 0.8 (|φ'(1)| = 8 against 0.9·8), so the zoom stops there with tol = 1, and at the exact
    minimizer η = ½ with tol = 0 or 0.5, as JAXopt's. Hager–Zhang's step satisfies its Wolfe
    conditions up to tol."""
    S = implicitdiff.solvers
    x0 = jnp.zeros(2)
    for tol, expected in ((0.0, 0.5), (0.5, 0.5), (1.0, 1.0)):
        eta, state = S.ZoomLineSearch(_two_ones, tol=tol, jit=False).run(1.0, x0)
        eta_ref, _ = jaxopt.ZoomLineSearch(_two_ones, tol=tol).run(1.0, x0)
        assert float(eta) == float(eta_ref) == expected and not bool(state.failed)
    for tol in (0.0, 1.0):
        eta, state = S.HagerZhangLineSearch(_two_ones, tol=tol, jit=True).run(1.0, x0)
        new_grad = jax.grad(_two_ones)(2.0 * eta * jnp.ones(2))
        slope0, slope = -8.0, float(new_grad @ jnp.full(2, 2.0))
        assert float(state.value) <= 2.0 + 0.1 * float(eta) * slope0 + tol
        assert slope >= 0.9 * slope0 - tol and not bool(state.failed)
    assert S.BacktrackingLineSearch(_two_ones, jit=False).run(1.0, x0)[0] == 0.8
    with pytest.raises(ValueError, match="tol"):
        S.ZoomLineSearch(_two_ones, tol=-1.0)
    with pytest.raises(TypeError, match="jit"):
        S.HagerZhangLineSearch(_two_ones, jit="sometimes")
