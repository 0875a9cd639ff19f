"""JAXopt parity of LevenbergMarquardt's options (issue 13): stop_criterion with xtol/gtol,
jac_fun, materialize_jac, JAXopt's solver names, geodesic acceleration. Solutions compared with
JAXopt 0.8.5 on the same inputs; derivatives with central finite differences (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import solvers as S

jaxopt = pytest.importorskip("jaxopt")

SUBSTRATE = jnp.array([0.5, 1.0, 2.0, 4.0, 8.0])
RATE = jnp.array([0.9, 1.3, 1.6, 1.8, 1.9])
X0 = jnp.array([1.0, 1.0])


def michaelis_menten(p, s, y):
    return p[0] * s / (p[1] + s) - y


jacobian = jax.jacfwd(michaelis_menten)


def _central_jacobian(solve, v, h=1e-4):
    v = np.asarray(v, np.float64)
    cols = []
    for i in range(v.size):
        e = np.zeros_like(v)
        e[i] = h
        cols.append((np.asarray(solve(v + e)) - np.asarray(solve(v - e))) / (2 * h))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize(
    "options",
    [
        {"stop_criterion": "madsen-nielsen", "xtol": 1e-12, "gtol": 1e-12},
        {"jac_fun": jacobian, "solver": "cholesky", "tol": 1e-10},
        {"solver": "qr", "materialize_jac": True, "tol": 1e-10},
    ],
    ids=["madsen-nielsen", "jac_fun-cholesky", "qr"],
)
def test_levenberg_marquardt_options_match_jaxopt_and_finite_differences(options):
    ours = S.LevenbergMarquardt(michaelis_menten, maxiter=200, **options)
    # (JAXopt's jac_fun fails with materialize_jac=True, an AttributeError, and its "qr" needs
    # materialize_jac=True: so no jac_fun with "qr" here.)
    theirs = jaxopt.LevenbergMarquardt(michaelis_menten, maxiter=200, **options)

    @jax.jit
    def solve_and_jacobian(y):
        return ours.run(X0, SUBSTRATE, y), jax.jacrev(lambda v: ours.run(X0, SUBSTRATE, v).params)(
            y
        )

    (p, state), jac = solve_and_jacobian(RATE)
    p_ref = theirs.run(X0, SUBSTRATE, RATE).params
    np.testing.assert_allclose(p, p_ref, rtol=1e-8)
    assert bool(state.converged) and int(state.status) == int(S.Status.CONVERGED)
    if options.get("stop_criterion") == "madsen-nielsen":
        # Stopped by its own test: the last step or the gradient is small, not ‖Jᵀr‖ ≤ tol.
        small_step = state.step_norm <= 1e-12 * (jnp.linalg.norm(p) + 1e-12)
        assert bool(small_step | (jnp.max(jnp.abs(state.gradient)) <= 1e-12))
    # Finite differences of the exact solution map (solved to ‖Jᵀr‖ ≤ 1e-10).
    exact = S.LevenbergMarquardt(michaelis_menten, maxiter=200, tol=1e-10)
    fd = _central_jacobian(lambda v: exact.run(X0, SUBSTRATE, jnp.asarray(v)).params, RATE)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-7)


def test_madsen_nielsen_stops_earlier_with_a_loose_xtol():
    loose = S.LevenbergMarquardt(
        michaelis_menten, stop_criterion="madsen-nielsen", xtol=1e-2, gtol=0.0
    )
    tight = S.LevenbergMarquardt(
        michaelis_menten, stop_criterion="madsen-nielsen", xtol=1e-12, gtol=0.0
    )
    loose_state = loose.run(X0, SUBSTRATE, RATE).state
    tight_state = tight.run(X0, SUBSTRATE, RATE).state
    assert bool(loose_state.converged) and bool(tight_state.converged)
    assert int(loose_state.iter_num) < int(tight_state.iter_num)
    assert float(loose_state.error) > float(tight_state.error)


def test_geodesic_acceleration_matches_jaxopt_iterations():
    """From a poor start, JAXopt's and our LM, plain and geodesic, reach the same point in the
    same number of iterations to within one (JAXopt's step solver is CG, ours LU); the geodesic
    path differs from the plain one. The derivative is checked against finite differences."""
    start = jnp.array([5.0, 10.0])
    options = {"damping_parameter": 1e-2, "tol": 1e-10, "maxiter": 300}
    iterations = []
    for geodesic in (False, True):
        ours = S.LevenbergMarquardt(michaelis_menten, geodesic=geodesic, **options)
        theirs = jaxopt.LevenbergMarquardt(michaelis_menten, geodesic=geodesic, **options)
        p, state = ours.run(start, SUBSTRATE, RATE)
        p_ref, state_ref = theirs.run(start, SUBSTRATE, RATE)
        np.testing.assert_allclose(p, p_ref, rtol=1e-8)
        assert bool(state.converged)
        assert abs(int(state.iter_num) - int(state_ref.iter_num)) <= 1
        iterations.append(int(state.iter_num))
    assert iterations[0] != iterations[1]
    jac = jax.jit(jax.jacrev(lambda v: ours.run(start, SUBSTRATE, v).params))(RATE)
    exact = S.LevenbergMarquardt(michaelis_menten, maxiter=200, tol=1e-10)
    fd = _central_jacobian(lambda v: exact.run(X0, SUBSTRATE, jnp.asarray(v)).params, RATE)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-7)


def pytree_residual(p, s, y):
    return p["vmax"] * s / (p["km"] + s) - y


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: S.LevenbergMarquardt(michaelis_menten, geodesic=1), TypeError, "geodesic"),
        (
            lambda: S.LevenbergMarquardt(michaelis_menten, contribution_ratio_threshold=0.0),
            ValueError,
            "contribution_ratio_threshold",
        ),
        (
            lambda: S.LevenbergMarquardt(michaelis_menten, stop_criterion="grad-l2"),
            ValueError,
            "stop_criterion",
        ),
        (lambda: S.LevenbergMarquardt(michaelis_menten, xtol=-1.0), ValueError, "xtol"),
        (lambda: S.LevenbergMarquardt(michaelis_menten, jac_fun=3), TypeError, "jac_fun"),
        (
            lambda: S.LevenbergMarquardt(michaelis_menten, materialize_jac=1),
            TypeError,
            "materialize_jac",
        ),
        (lambda: S.LevenbergMarquardt(michaelis_menten, solver="svd"), ValueError, "solver"),
    ],
)
def test_bad_options_name_themselves(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_jac_fun_with_pytree_params_names_jac_fun():
    solver = S.LevenbergMarquardt(pytree_residual, jac_fun=lambda p, s, y: jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="jac_fun"):
        solver.run({"vmax": 1.0, "km": 1.0}, SUBSTRATE, RATE)
