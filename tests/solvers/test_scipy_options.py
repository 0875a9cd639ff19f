"""JAXopt's options of the SciPy wrappers (issue 13): ScipyMinimize / ScipyBoundedMinimize
``maxiter``, ``value_and_grad``, ``has_aux``; ScipyRootFinding / ScipyLeastSquares /
ScipyBoundedLeastSquares ``has_aux``, ``use_jacrev`` and ScipyLeastSquares' ``fun=``.

Solutions are compared with JAXopt 0.8.5 on the same inputs (same SciPy method and tolerances:
the same iterates); derivatives with closed forms in float64. JAXopt's ``has_aux`` on the root
and least-squares wrappers recurses forever (test_jaxopt_root_has_aux_recurses), so there the
reference is JAXopt without the option and the closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import solvers as S

jaxopt = pytest.importorskip("jaxopt")
pytest.importorskip("scipy")

A = jnp.array([1.0, 2.0, -3.0])
X = jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 3.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
Y = jnp.array([1.0, -2.0, 3.0, 0.5, -4.0])


def quartic(x, a):
    """Σ(x − a)² + Σx⁴: stationary where 2(x − a) + 4x³ = 0, so ∂x/∂a = 2 / (2 + 12x²)."""
    return jnp.sum((x - a) ** 2) + jnp.sum(x**4)


def quartic_aux(x, a):
    return quartic(x, a), {"sum": jnp.sum(x), "x": x}


def quartic_value_and_grad(x, a):
    return jax.value_and_grad(quartic)(x, a)


def quartic_both(x, a):
    (value, aux), grad = jax.value_and_grad(quartic_aux, has_aux=True)(x, a)
    return (value, aux), grad


def _quartic_jacobian(x):
    return np.diag(2.0 / (2.0 + 12.0 * np.asarray(x) ** 2))


FORMS = {
    "has_aux": (quartic_aux, {"has_aux": True}),
    "value_and_grad": (quartic_value_and_grad, {"value_and_grad": True}),
    "both": (quartic_both, {"has_aux": True, "value_and_grad": True}),
}


@pytest.mark.parametrize("form", FORMS)
def test_minimize_fun_forms_match_jaxopt_and_closed_form(form):
    fun, options = FORMS[form]
    ours = S.ScipyMinimize(fun=fun, method="BFGS", tol=1e-10, **options)
    theirs = jaxopt.ScipyMinimize(fun=fun, method="BFGS", tol=1e-10, **options)

    @jax.jit
    def program(a):
        x, state = ours.run(jnp.zeros(3), a)
        return x, state, jax.jacobian(lambda b: ours.run(jnp.zeros(3), b).params)(a)

    x, state, jacobian = program(A)
    x_ref = theirs.run(jnp.zeros(3), A).params
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-12)  # the same BFGS iterates
    np.testing.assert_allclose(jacobian, _quartic_jacobian(x), rtol=1e-8, atol=1e-10)
    jacobian_ref = jax.jacobian(lambda b: theirs.run(jnp.zeros(3), b).params)(A)
    np.testing.assert_allclose(jacobian, jacobian_ref, rtol=1e-8, atol=1e-10)
    assert float(state.error) < 1e-6
    if options.get("has_aux"):  # JAXopt drops aux; here it is aux at the solution
        np.testing.assert_allclose(state.aux["sum"], jnp.sum(x), rtol=1e-14)
        np.testing.assert_allclose(state.aux["x"], x, rtol=1e-14)
    else:
        assert state.aux is None


def test_bounded_minimize_value_and_grad_with_aux_matches_jaxopt():
    """An active bound (x₂ = −0.5 against a = −3): its derivative in a is 0, the free ones are
    the closed form; the same L-BFGS-B iterates as JAXopt's."""
    ours = S.ScipyBoundedMinimize(
        fun=quartic_both, value_and_grad=True, has_aux=True, options={"gtol": 1e-12}
    )
    theirs = jaxopt.ScipyBoundedMinimize(
        fun=quartic_both,
        value_and_grad=True,
        has_aux=True,
        tol=1e-10,
        options={"gtol": 1e-12, "ftol": 1e-12},
    )
    bounds = (-0.5, 2.0)

    @jax.jit
    def program(a):
        x, state = ours.run(jnp.zeros(3), bounds, a)
        jacobian = jax.jacobian(lambda b: ours.run(jnp.zeros(3), bounds, b).params)(a)
        return x, state, jacobian

    x, state, jacobian = program(A)
    x_ref = theirs.run(jnp.zeros(3), bounds, A).params
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-9)
    assert float(x[2]) == -0.5
    expected = _quartic_jacobian(x)
    expected[2, 2] = 0.0
    np.testing.assert_allclose(jacobian, expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(state.aux["x"], x, rtol=1e-14)


def test_maxiter_is_forwarded_as_jaxopt_does():
    ours = S.ScipyMinimize(fun=quartic, method="BFGS", maxiter=2, on_failure="ignore")
    theirs = jaxopt.ScipyMinimize(fun=quartic, method="BFGS", maxiter=2)
    x, state = jax.jit(ours.run)(jnp.zeros(3), A)
    x_ref, info = theirs.run(jnp.zeros(3), A)
    assert int(state.iter_num) == int(info.iter_num) == 2
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-14)
    assert not bool(state.converged)
    assert S.ScipyMinimize(fun=quartic).maxiter == 500  # JAXopt's default
    with pytest.raises(ValueError, match="maxiter"):
        S.ScipyMinimize(fun=quartic, maxiter=20, options={"maxiter": 10})
    # options' own maxiter (this library's spelling before JAXopt's field) still works.
    x_options, state = jax.jit(
        S.ScipyMinimize(fun=quartic, method="BFGS", options={"maxiter": 2}, on_failure="ignore").run
    )(jnp.zeros(3), A)
    assert int(state.iter_num) == 2
    np.testing.assert_array_equal(x_options, x)
    with pytest.raises(ValueError, match="maxiter"):
        S.ScipyBoundedMinimize(fun=quartic, maxiter=-1)
    with pytest.raises(TypeError, match="has_aux"):
        S.ScipyMinimize(fun=quartic, has_aux=1)


# ---------------------------------------------------------------------------------------------
# scipy.optimize.root and least_squares.


def cube(x, a):
    """F(x) = x³ − a: the root ∛a, ∂x/∂a = 1 / (3x²)."""
    return x**3 - a


def cube_aux(x, a):
    return cube(x, a), {"x": x}


def linear_residual(w, X, y):
    return X @ w - y


def linear_residual_aux(w, X, y):
    return linear_residual(w, X, y), jnp.sum(w)


@pytest.mark.parametrize("use_jacrev", [True, False])
def test_root_has_aux_and_use_jacrev(use_jacrev):
    ours = S.ScipyRootFinding(optimality_fun=cube_aux, has_aux=True, use_jacrev=use_jacrev)
    theirs = jaxopt.ScipyRootFinding(
        optimality_fun=cube, method="hybr", use_jacrev=use_jacrev, tol=1e-10
    )
    a = jnp.array([8.0, 27.0, 2.0])

    @jax.jit
    def program(a):
        x, state = ours.run(jnp.ones(3), a)
        return x, state, jax.jacobian(lambda b: ours.run(jnp.ones(3), b).params)(a)

    x, state, jacobian = program(a)
    np.testing.assert_allclose(x, theirs.run(jnp.ones(3), a).params, rtol=0, atol=1e-12)
    np.testing.assert_allclose(x, np.cbrt(a), rtol=1e-12)
    np.testing.assert_allclose(jacobian, np.diag(1.0 / (3.0 * np.cbrt(a) ** 2)), rtol=1e-10)
    np.testing.assert_allclose(state.aux["x"], x, rtol=1e-14)


@pytest.mark.parametrize("bounded", [False, True])
def test_least_squares_fun_has_aux_and_use_jacrev(bounded):
    """JAXopt's fun= spelling, aux in the state, forward-mode Jacobian: the solution of JAXopt
    (without has_aux) and the closed form ∂w/∂y = (XᵀX)⁻¹Xᵀ."""
    cls, reference = (
        (S.ScipyBoundedLeastSquares, jaxopt.ScipyBoundedLeastSquares)
        if bounded
        else (S.ScipyLeastSquares, jaxopt.ScipyLeastSquares)
    )
    ours = cls(fun=linear_residual_aux, has_aux=True, use_jacrev=False)
    assert ours.residual_fun is linear_residual_aux and ours.fun is None
    theirs = reference(
        fun=linear_residual, method="trf", use_jacrev=False, options=dict(ftol=1e-12, xtol=1e-12)
    )
    bounds = ((-10.0, -10.0, -10.0), (10.0, 10.0, 10.0))  # inactive: the closed form holds
    extra = (bounds,) if bounded else ()

    @jax.jit
    def program(y):
        w, state = ours.run(jnp.zeros(3), *extra, X, y)
        return w, state, jax.jacobian(lambda v: ours.run(jnp.zeros(3), *extra, X, v).params)(y)

    w, state, jacobian = program(Y)
    extra_ref = ((jnp.full(3, -10.0), jnp.full(3, 10.0)),) if bounded else ()
    np.testing.assert_allclose(w, theirs.run(jnp.zeros(3), *extra_ref, X, Y).params, atol=1e-10)
    expected = np.linalg.solve(X.T @ X, X.T)
    np.testing.assert_allclose(jacobian, expected, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(state.aux, jnp.sum(w), rtol=1e-14)
    with pytest.raises(TypeError, match="residual_fun"):
        cls(fun=linear_residual, residual_fun=linear_residual)
    with pytest.raises(TypeError, match="use_jacrev"):
        cls(residual_fun=linear_residual, use_jacrev="yes")


def test_jaxopt_root_has_aux_recurses():
    """JAXopt 0.8.5 defect: ScipyRootFinding(has_aux=True) and ScipyLeastSquares(has_aux=True)
    replace the function by a wrapper that calls itself (RecursionError on any run)."""
    a = jnp.array([8.0, 27.0, 2.0])
    with pytest.raises(RecursionError):
        jaxopt.ScipyRootFinding(optimality_fun=cube_aux, method="hybr", has_aux=True).run(
            jnp.ones(3), a
        )
    with pytest.raises(RecursionError):
        jaxopt.ScipyLeastSquares(fun=linear_residual_aux, method="trf", has_aux=True).run(
            jnp.zeros(3), X, Y
        )
