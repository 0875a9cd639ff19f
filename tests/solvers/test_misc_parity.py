"""JAXopt parity (issue 13): MirrorDescent(projection_grad=..., stepsize schedule), optional
hyperparams_proj in ProjectedGradient / MirrorDescent, and pytree x for projections.hyperplane /
projections.halfspace. Compared with JAXopt 0.8.5 on the same inputs, derivatives with central
finite differences (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import projections, prox
from implicitdiff import solvers as S

jaxopt = pytest.importorskip("jaxopt")

Q = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.5, 0.3], [0.0, 0.3, 1.0]])
C = jnp.array([1.0, -0.5, 0.4])


def quadratic(x, c):
    return 0.5 * x @ Q @ x - c @ x


def euclidean_projection_grad(x, g, stepsize, hyperparams):
    """The projected gradient step onto x ≥ 0 (mirror map the identity)."""
    del hyperparams
    return jnp.maximum(x - stepsize * g, 0.0)


def entropic_projection_grad(x, g, stepsize, hyperparams):
    """The entropic step on the simplex of total 1 (the KL geometry)."""
    del hyperparams
    w = x * jnp.exp(-stepsize * (g - jnp.min(g)))
    return w / jnp.sum(w)


def schedule(iter_num):
    return 0.4 + 0.1 / (1.0 + iter_num)


def _central_jacobian(solve, v, h=1e-6):
    v = np.asarray(v, np.float64)
    cols = []
    for i in range(v.size):
        e = np.zeros_like(v)
        e.flat[i] = h
        cols.append((np.asarray(solve(v + e)) - np.asarray(solve(v - e))) / (2 * h))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize(
    ("projection_grad", "stepsize"),
    [(euclidean_projection_grad, 0.4), (entropic_projection_grad, schedule)],
)
def test_mirror_descent_projection_grad_matches_jaxopt(projection_grad, stepsize):
    ours = S.MirrorDescent(quadratic, projection_grad, stepsize, maxiter=3000, tol=1e-12)
    theirs = jaxopt.MirrorDescent(quadratic, projection_grad, stepsize, maxiter=3000, tol=1e-12)
    init = jnp.ones(3) / 3

    @jax.jit
    def solve_and_jacobian(c):
        def sol(c):
            return ours.run(init, None, c).params  # hyperparams_proj None, as JAXopt's

        return ours.run(init, None, c), jax.jacrev(sol)(c)

    (x, state), jac = solve_and_jacobian(C)
    x_ref, state_ref = theirs.run(init, None, C)
    np.testing.assert_allclose(x, x_ref, rtol=1e-9, atol=1e-12)
    assert int(state.iter_num) == int(state_ref.iter_num)
    assert bool(state.converged)
    jac_ref = jax.jacrev(lambda c: theirs.run(init, None, c).params)(C)
    np.testing.assert_allclose(jac, jac_ref, rtol=1e-6, atol=1e-9)
    fd = _central_jacobian(lambda c: ours.run(init, None, jnp.asarray(c)).params, C)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-7)
    assert np.any(np.abs(np.asarray(jac)) > 1e-3)


def test_mirror_descent_default_is_the_entropy_and_hyperparams_proj_is_optional():
    # hyperparams_proj omitted: run(init) (JAXopt's default None); the default step is the
    # entropic one, the same as the projection_grad above with a fixed step.
    default = S.MirrorDescent(quadratic, stepsize=0.5, maxiter=3000, tol=1e-12)
    explicit = S.MirrorDescent(quadratic, entropic_projection_grad, 0.5, maxiter=3000, tol=1e-12)
    init = jnp.ones(3) / 3
    x_default = default.run(init, c=C).params
    x_explicit = explicit.run(init, c=C).params
    np.testing.assert_allclose(x_default, x_explicit, rtol=1e-9, atol=1e-12)
    jac = jax.jacrev(lambda c: default.run(init, c=c).params)(C)
    jac_explicit = jax.jacrev(lambda c: explicit.run(init, c=c).params)(C)
    np.testing.assert_allclose(jac, jac_explicit, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: S.MirrorDescent(
                quadratic,
                euclidean_projection_grad,
                projection=projections.simplex,
                mapping=jnp.log,
            ),
            "projection_grad",
        ),
        (lambda: S.MirrorDescent(quadratic, projection_grad=3), "projection_grad"),
        (lambda: S.MirrorDescent(quadratic, stepsize=-1.0), "stepsize"),
    ],
)
def test_mirror_descent_bad_options_name_themselves(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_projected_gradient_hyperparams_proj_is_optional():
    def nonneg(x, hyperparams=None):
        del hyperparams
        return jnp.maximum(x, 0.0)

    ours = S.ProjectedGradient(quadratic, nonneg, tol=1e-12, maxiter=2000)
    theirs = jaxopt.ProjectedGradient(quadratic, nonneg, tol=1e-12, maxiter=2000)
    init = jnp.zeros(3)
    x = ours.run(init, c=C).params  # no hyperparams_proj, as JAXopt allows
    np.testing.assert_allclose(x, theirs.run(init, c=C).params, rtol=1e-9, atol=1e-12)
    state = ours.init_state(init, c=C)
    x1 = ours.update(init, state, c=C).params
    # (the first step differs from JAXopt's: the backtracking starts from another step size)
    assert np.all(np.asarray(x1) >= 0) and quadratic(x1, C) < quadratic(init, C)
    jac = jax.jit(jax.jacrev(lambda c: ours.run(init, c=c).params))(C)
    fd = _central_jacobian(lambda c: ours.run(init, c=jnp.asarray(c)).params, C)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-7)


def test_projected_gradient_projection_that_needs_its_second_argument():
    """A projection written projection(x, hyperparams) with no default for hyperparams (it
    ignores it), run with hyperparams_proj=None: JAXopt calls projection(x, None); here it was
    called projection(x) ("missing 1 required positional argument"). Both now agree, and the
    derivative is the closed form (Q⁻¹ on the free coordinates, 0 on the active bound)."""

    def nonneg(x, hyperparams):
        del hyperparams
        return jnp.maximum(x, 0.0)

    c = jnp.array([1.0, -2.0, 0.4])  # the second coordinate ends on its bound
    ours = S.ProjectedGradient(quadratic, nonneg, tol=1e-12, maxiter=5000)
    theirs = jaxopt.ProjectedGradient(quadratic, nonneg, tol=1e-12, maxiter=5000)
    init = jnp.zeros(3)
    x = ours.run(init, None, c).params
    np.testing.assert_allclose(x, theirs.run(init, None, c).params, rtol=1e-9, atol=1e-12)
    free = np.asarray(x) > 0
    assert free.tolist() == [True, False, True]
    jac = jax.jacrev(lambda c: ours.run(init, None, c).params)(c)
    expected = np.zeros((3, 3))
    expected[np.ix_(free, free)] = np.linalg.inv(np.asarray(Q)[np.ix_(free, free)])
    np.testing.assert_allclose(jac, expected, rtol=1e-9, atol=1e-12)
    p = prox.from_projection(nonneg)
    np.testing.assert_array_equal(p(-c), jnp.maximum(-c, 0.0))


# ---------------------------------------------------------------------------------------------
# Pytree x for hyperplane / halfspace.

X_TREE = {"u": jnp.array([1.0, -2.0]), "v": jnp.array([[0.5, 3.0, -1.0]])}
A_TREE = {"u": jnp.array([1.0, 0.5]), "v": jnp.array([[-1.0, 2.0, 0.25]])}


@pytest.mark.parametrize(
    ("ours", "theirs", "b"),
    [
        (projections.hyperplane, jaxopt.projection.projection_hyperplane, 1.5),
        (projections.halfspace, jaxopt.projection.projection_halfspace, 1.5),  # active
        (projections.halfspace, jaxopt.projection.projection_halfspace, 20.0),  # inactive
    ],
)
def test_affine_projections_of_pytrees_match_jaxopt_with_derivatives(ours, theirs, b):
    p = ours(X_TREE, (A_TREE, b))
    p_ref = theirs(X_TREE, (A_TREE, b))
    for key in X_TREE:
        np.testing.assert_allclose(p[key], p_ref[key], rtol=1e-12, atol=1e-14)

    def flat(fun):
        def f(x_flat, a_flat, b):
            x = {"u": x_flat[:2], "v": x_flat[2:].reshape(1, 3)}
            a = {"u": a_flat[:2], "v": a_flat[2:].reshape(1, 3)}
            out = fun(x, (a, b))
            return jnp.concatenate([out["u"], out["v"].ravel()])

        return f

    x0 = jnp.concatenate([X_TREE["u"], X_TREE["v"].ravel()])
    a0 = jnp.concatenate([A_TREE["u"], A_TREE["v"].ravel()])
    jac = jax.jit(jax.jacrev(flat(ours), argnums=(0, 1, 2)))(x0, a0, b)
    jac_ref = jax.jacrev(flat(theirs), argnums=(0, 1, 2))(x0, a0, b)
    for ours_part, theirs_part in zip(jac, jac_ref, strict=True):
        np.testing.assert_allclose(ours_part, theirs_part, rtol=1e-10, atol=1e-12)
    f = flat(ours)
    fd_x = _central_jacobian(lambda v: f(jnp.asarray(v), a0, b), x0)
    fd_a = _central_jacobian(lambda v: f(x0, jnp.asarray(v), b), a0)
    fd_b = (np.asarray(f(x0, a0, b + 1e-6)) - np.asarray(f(x0, a0, b - 1e-6))) / 2e-6
    np.testing.assert_allclose(jac[0], fd_x, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jac[1], fd_a, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jac[2], fd_b, rtol=1e-6, atol=1e-8)


def tree_objective(x, target):
    return 0.5 * jnp.sum((x["u"] - target[:2]) ** 2) + 0.5 * jnp.sum(
        (x["v"].ravel() - target[2:]) ** 2
    )


def test_projected_gradient_onto_a_pytree_hyperplane_derivative():
    """min ½‖x − t‖² on {aᵀx = b}, x a pytree: x* = t − ((aᵀt − b)/‖a‖²) a, differentiated
    with respect to the hyperplane (a, b) and t."""
    solver = S.ProjectedGradient(tree_objective, projections.hyperplane, tol=1e-12)
    theirs = jaxopt.ProjectedGradient(
        tree_objective, jaxopt.projection.projection_hyperplane, tol=1e-12
    )
    target = jnp.arange(5.0) - 2.0
    init = jax.tree_util.tree_map(jnp.zeros_like, X_TREE)

    def solution(b, target):
        x = solver.run(init, (A_TREE, b), target).params
        return jnp.concatenate([x["u"], x["v"].ravel()])

    value, (d_b, d_t) = jax.jit(
        lambda b, t: (solution(b, t), jax.jacrev(solution, argnums=(0, 1))(b, t))
    )(1.5, target)
    x_ref = theirs.run(init, (A_TREE, 1.5), target).params
    np.testing.assert_allclose(
        value, jnp.concatenate([x_ref["u"], x_ref["v"].ravel()]), rtol=1e-9, atol=1e-12
    )
    a = jnp.concatenate([A_TREE["u"], A_TREE["v"].ravel()])
    np.testing.assert_allclose(d_b, a / (a @ a), rtol=1e-8)  # closed form
    np.testing.assert_allclose(d_t, jnp.eye(5) - jnp.outer(a, a) / (a @ a), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# maxiter=0, side by side with JAXopt: the start, its state, and the derivative.


def _gradient_map(x, c):
    return x - 0.5 * (Q @ x - c)


def _residual(x, c):
    return Q @ x - c


_MAXITER_ZERO = {
    "GradientDescent": (dict(fun=quadratic), ()),
    "LBFGS": (dict(fun=quadratic), ()),
    "BFGS": (dict(fun=quadratic), ()),
    "NonlinearCG": (dict(fun=quadratic), ()),
    "ProximalGradient": (dict(fun=quadratic), (None,)),
    "FixedPointIteration": (dict(fixed_point_fun=_gradient_map), ()),
    "AndersonAcceleration": (dict(fixed_point_fun=_gradient_map), ()),
    "GaussNewton": (dict(residual_fun=_residual), ()),
    "LevenbergMarquardt": (dict(residual_fun=_residual), ()),
}


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "unrolled"])
@pytest.mark.parametrize("name", list(_MAXITER_ZERO))
def test_maxiter_zero_matches_jaxopt(name, implicit):
    """maxiter=0 (refused here before): the start, iter_num 0, and the derivative: implicitly
    JAXopt's, the implicit formula at the start (here Q⁻¹, F being linear in x); unrolled 0, the
    derivative of the start (JAXopt 0.8.5 fails to differentiate an unrolled run of maxiter=0:
    its loop of maxiter − 1 steps has length −1, an MLIRError)."""
    options, leading = _MAXITER_ZERO[name]
    ours = getattr(S, name)(maxiter=0, implicit_diff=implicit, on_failure="ignore", **options)
    theirs = getattr(jaxopt, name)(maxiter=0, **options)  # its implicit run
    x0 = jnp.array([0.2, -0.1, 0.4])

    def solution(solver):
        return lambda c: solver.run(x0, *leading, c)[0]

    x, state = ours.run(x0, *leading, C)
    x_jaxopt, state_jaxopt = theirs.run(x0, *leading, C)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(x_jaxopt, x0)
    assert int(state.iter_num) == int(state_jaxopt.iter_num) == 0
    assert not bool(state.converged)
    jacobian = jax.jacobian(solution(ours))(C)
    if implicit:
        jacobian_jaxopt = jax.jacobian(solution(theirs))(C)
        np.testing.assert_allclose(jacobian, jacobian_jaxopt, rtol=1e-12, atol=1e-15)
    expected = jnp.linalg.inv(Q) if implicit else jnp.zeros((3, 3))
    np.testing.assert_allclose(jacobian, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["PolyakSGD", "ArmijoSGD", "OptaxSolver"])
def test_maxiter_zero_run_iterator_matches_jaxopt(name):
    """run_iterator with maxiter=0 takes no batch and returns the start, as JAXopt's."""
    optax = pytest.importorskip("optax")

    def fun(x, data):
        return quadratic(x, data)

    def make(module):
        if name == "OptaxSolver":
            return module.OptaxSolver(fun, optax.sgd(0.5), maxiter=0)
        return getattr(module, name)(fun=fun, maxiter=0)

    x0 = jnp.array([0.2, -0.1, 0.4])
    x, state = make(S).run_iterator(x0, iter([C] * 3))
    x_jaxopt, state_jaxopt = make(jaxopt).run_iterator(x0, iter([C] * 3))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(x_jaxopt, x0)
    assert int(state.iter_num) == int(state_jaxopt.iter_num) == 0


@pytest.mark.parametrize(
    ("name", "method", "bounded"),
    [("ScipyMinimize", "BFGS", False), ("ScipyBoundedMinimize", "L-BFGS-B", True)],
)
def test_maxiter_zero_scipy_wrappers_pass_it_to_scipy_as_jaxopt(name, method, bounded):
    """The SciPy wrappers hand maxiter=0 to SciPy, as JAXopt's: BFGS returns the start,
    L-BFGS-B makes one iteration (SciPy's reading of it); not converged either way."""
    x0 = jnp.array([0.2, -0.1, 0.4])
    bounds = ((jnp.full(3, -9.0), jnp.full(3, 9.0)),) if bounded else ()
    ours = getattr(S, name)(fun=quadratic, method=method, maxiter=0, on_failure="ignore")
    theirs = getattr(jaxopt, name)(fun=quadratic, method=method, maxiter=0)
    x, state = ours.run(x0, *bounds, C)
    x_jaxopt, state_jaxopt = theirs.run(x0, *bounds, C)
    np.testing.assert_allclose(x, x_jaxopt, rtol=1e-12, atol=1e-15)
    assert int(state.iter_num) == int(state_jaxopt.iter_num) == (1 if bounded else 0)
    assert not bool(state.converged) and not bool(state_jaxopt.success)
    if not bounded:
        np.testing.assert_array_equal(x, x0)
