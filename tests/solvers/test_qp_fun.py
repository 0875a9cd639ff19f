"""JAXopt's ``fun=`` on the QP solvers: the objective given as fun(x, params_obj), params_obj any
pytree, c = ∇ₓfun(0, params_obj), Q v the derivative of ∇ₓfun(·, params_obj) at 0 along v.

For EqualityConstrainedQP, OSQP and BoxOSQP, one jitted program per case: the solution from
``fun`` against the same QP given as (Q, c); its derivative with respect to params_obj (a dict)
by ``jax.grad`` of a scalar loss and by ``jax.jacfwd``, against the closed form (the KKT linear
system, solved directly and differentiated: EqualityConstrainedQP) or central finite
differences of the solver itself (OSQP, BoxOSQP: at a strictly complementary solution, so the
active set does not change under the perturbation); and, side by side, JAXopt's solver with the
same ``fun``. Then the errors: ``fun`` with ``matvec_Q``, a ``fun`` of the wrong signature or
value, and no start x.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from implicitdiff import solvers
from implicitdiff.solvers import KKTSolution

# min ½‖Mx‖² + cᵀx + 3 (Q = MᵀM positive definite) s.t. x₁ + x₂ + x₃ = 1, x₁ ≤ 0.2,
# x₂ − x₃ ≤ −0.1: at the solution x = (0.2, 0.171, 0.629) the first inequality is active with
# λ₁ = 0.65 > 0 and the second strictly inactive (x₂ − x₃ = −0.457).
M = np.array([[2.0, 1.0, 0.0], [0.5, 3.0, 1.0], [0.0, 1.0, 1.5]])
C = np.array([1.0, -2.0, 0.5])
A, B = np.array([[1.0, 1.0, 1.0]]), np.array([1.0])
G, H = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]]), np.array([0.2, -0.1])
# BoxOSQP's form l ≤ [A; G] x ≤ u of the same constraints.
A_BOX = np.concatenate([A, G])
LOWER, UPPER = np.array([1.0, -np.inf, -np.inf]), np.array([1.0, 0.2, -0.1])
W = np.array([0.3, -1.2, 0.7])
X0 = np.zeros(3)


def objective(x, p):
    """½‖Mx‖² + cᵀx + 3, with params_obj = {"M": M, "c": c}."""
    return 0.5 * jnp.sum((p["M"] @ x) ** 2) + p["c"] @ x + 3.0


def loss(x):
    return jnp.dot(W, x) + 0.5 * jnp.sum(x**2)


def params():
    return {"M": jnp.asarray(M), "c": jnp.asarray(C)}


def as_pair(p):
    """(Q, c) of ``objective``: Q = MᵀM."""
    return p["M"].T @ p["M"], p["c"]


# -- the three solvers, each with fun and with (Q, c) ---------------------------------------


def eq_fun(p):
    solver = solvers.EqualityConstrainedQP(fun=objective)
    return solver.run(KKTSolution(jnp.asarray(X0), None, None), p, (A, B)).params.primal


def eq_pair(p):
    return solvers.EqualityConstrainedQP().run(None, as_pair(p), (A, B)).params.primal


def osqp_fun(p):
    solver = solvers.OSQP(fun=objective, tol=1e-10)
    return solver.run(KKTSolution(jnp.asarray(X0), None, None), p, (A, B), (G, H)).params.primal


def osqp_pair(p):
    return solvers.OSQP(tol=1e-10).run(None, as_pair(p), (A, B), (G, H)).params.primal


def box_fun(p):
    solver = solvers.BoxOSQP(fun=objective, tol=1e-10)
    start = KKTSolution((jnp.asarray(X0), None), None, None)
    return solver.run(start, p, A_BOX, (LOWER, UPPER)).params.primal[0]


def box_pair(p):
    solver = solvers.BoxOSQP(tol=1e-10)
    return solver.run(None, as_pair(p), A_BOX, (LOWER, UPPER)).params.primal[0]


def eq_closed_form(p):
    """The KKT system [[Q, Aᵀ], [A, 0]] [x; ν] = [−c; b] solved directly (differentiated by JAX
    through the dense solve: the closed-form derivative)."""
    Q, c = as_pair(p)
    K = jnp.block([[Q, A.T], [A, jnp.zeros((1, 1))]])
    return jnp.linalg.solve(K, jnp.concatenate([-c, B]))[:3]


def central_differences(f, p, eps=1e-6):
    """The Jacobian (n, k) of f at p (k the entries of p, in ravel_pytree's order)."""
    flat, unravel = ravel_pytree(p)
    steps = eps * jnp.eye(flat.size)
    plus = jax.vmap(lambda e: f(unravel(flat + e)))(steps)
    minus = jax.vmap(lambda e: f(unravel(flat - e)))(steps)
    return ((plus - minus) / (2 * eps)).T


def flat_jacobian(jac, n):
    """The dict-of-arrays Jacobian of jax.jacfwd as an (n, k) matrix, in ravel_pytree's order."""
    return jnp.concatenate([leaf.reshape(n, -1) for leaf in jax.tree.leaves(jac)], axis=1)


CASES = {
    "EqualityConstrainedQP": (eq_fun, eq_pair, eq_closed_form),
    "OSQP": (osqp_fun, osqp_pair, None),
    "BoxOSQP": (box_fun, box_pair, None),
}


@functools.partial(jax.jit, static_argnums=0)
def _case(name, p):
    with_fun, with_pair, closed_form = CASES[name]
    x_fun, x_pair = with_fun(p), with_pair(p)
    grad = ravel_pytree(jax.grad(lambda q: loss(with_fun(q)))(p))[0]
    jac = flat_jacobian(jax.jacfwd(with_fun)(p), 3)
    if closed_form is not None:
        reference = flat_jacobian(jax.jacobian(closed_form)(p), 3)
        x_reference = closed_form(p)
    else:
        reference = central_differences(with_fun, p)
        x_reference = x_pair
    # The loss's gradient from the reference Jacobian: ∂L/∂p = Jᵀ ∇L(x).
    grad_reference = reference.T @ jax.grad(loss)(x_fun)
    return x_fun, x_pair, x_reference, grad, grad_reference, jac, reference


@pytest.mark.parametrize("name", list(CASES))
def test_fun_gives_the_pair_solution_and_its_derivatives(name):
    x_fun, x_pair, x_reference, grad, grad_reference, jac, reference = _case(name, params())
    np.testing.assert_allclose(x_fun, x_pair, rtol=0, atol=1e-8)
    np.testing.assert_allclose(x_fun, x_reference, rtol=0, atol=1e-8)
    assert float(jnp.max(jnp.abs(jac))) > 0.1  # the derivative is not trivially zero
    tol = 1e-10 if name == "EqualityConstrainedQP" else 1e-8  # closed form vs differences
    np.testing.assert_allclose(jac, reference, rtol=0, atol=tol)
    np.testing.assert_allclose(grad, grad_reference, rtol=0, atol=tol)


def doubled_linear_term(x, p):
    """``objective`` with c doubled: another QP on the same parameters."""
    return objective(x, p) + p["c"] @ x


@jax.jit
def _replaced(p):
    solver = solvers.EqualityConstrainedQP(fun=objective)
    other = dataclasses.replace(solver, fun=doubled_linear_term)
    start = KKTSolution(jnp.asarray(X0), None, None)
    order = (solver, other, solver)  # the original keeps its fun after the replacement
    solutions = [s.run(start, p, (A, B)).params for s in order]
    errors = [s.l2_optimality_error(z, p, (A, B)) for s, z in zip(order, solutions, strict=True)]
    references = [eq_closed_form(p), eq_closed_form({"M": p["M"], "c": 2 * p["c"]})]
    return [z.primal for z in solutions], errors, references


def test_replacing_fun_and_the_optimality_error():
    (x1, x2, x1_again), errors, (ref1, ref2) = _replaced(params())
    np.testing.assert_allclose(x1, ref1, rtol=0, atol=1e-8)
    np.testing.assert_allclose(x2, ref2, rtol=0, atol=1e-8)
    np.testing.assert_allclose(x1_again, ref1, rtol=0, atol=1e-8)
    assert float(jnp.max(jnp.abs(ref1 - ref2))) > 0.01
    assert max(float(e) for e in errors) < 1e-10  # the KKT residual with ∇ₓfun, at each solution


# -- side by side with JAXopt ---------------------------------------------------------------


def _jaxopt_solution(jaxopt, name, p):
    x0 = jnp.asarray(X0)
    if name == "EqualityConstrainedQP":
        solver = jaxopt.EqualityConstrainedQP(fun=objective, tol=1e-12)
        start = jaxopt.base.KKTSolution(x0, jnp.zeros(1), None)
        return solver.run(start, params_obj=p, params_eq=(A, B)).params.primal
    if name == "OSQP":
        solver = jaxopt.OSQP(fun=objective, tol=1e-10)
        start = jaxopt.base.KKTSolution(x0, jnp.zeros(1), jnp.zeros(2))
        return solver.run(start, params_obj=p, params_eq=(A, B), params_ineq=(G, H)).params.primal
    solver = jaxopt.BoxOSQP(fun=objective, tol=1e-10)
    start = solver.init_params(x0, p, A_BOX, (LOWER, UPPER))
    return solver.run(start, params_obj=p, params_eq=A_BOX, params_ineq=(LOWER, UPPER))[0].primal[0]


@pytest.mark.parametrize("name", list(CASES))
def test_fun_matches_jaxopt(name):
    jaxopt = pytest.importorskip("jaxopt")
    pytest.importorskip("jaxopt.base")  # (KKTSolution)

    ours = CASES[name][0]
    theirs = functools.partial(_jaxopt_solution, jaxopt, name)

    def gradients(p):
        return [ravel_pytree(jax.grad(lambda q, f=f: loss(f(q)))(p))[0] for f in (ours, theirs)]

    if name == "EqualityConstrainedQP":

        @jax.jit
        def both(p):
            return ours(p), theirs(p), *gradients(p)

        x, x_jaxopt, grad, grad_jaxopt = both(params())
        np.testing.assert_allclose(grad, grad_jaxopt, rtol=0, atol=1e-8)
    else:
        x, x_jaxopt = jax.jit(lambda p: (ours(p), theirs(p)))(params())
        # JAXopt 0.8.5's OSQP and BoxOSQP cannot differentiate a run with fun: their KKT
        # conditions call fun on the pair (x, z) of the box form (the derivatives above are
        # checked against finite differences instead).
        with pytest.raises(TypeError, match="tuple"):
            jax.eval_shape(gradients, params())
    np.testing.assert_allclose(x, x_jaxopt, rtol=0, atol=1e-8)


# -- errors ----------------------------------------------------------------------------------


def _runs(name, fun, p=None):
    """Run the solver ``name`` with ``fun`` on the test problem (with params_obj p)."""
    p = params() if p is None else p
    start = jnp.asarray(X0)
    if name == "EqualityConstrainedQP":
        return solvers.EqualityConstrainedQP(fun=fun).run(KKTSolution(start, None, None), p, (A, B))
    if name == "OSQP":
        return solvers.OSQP(fun=fun).run(KKTSolution(start, None, None), p, (A, B), (G, H))
    box = solvers.BoxOSQP(fun=fun)
    return box.run(KKTSolution((start, None), None, None), p, A_BOX, (LOWER, UPPER))


@pytest.mark.parametrize("name", list(CASES))
def test_fun_with_matvec_q_is_refused_naming_both(name):
    with pytest.raises(ValueError, match=r"fun=.*matvec_Q="):
        getattr(solvers, name)(fun=objective, matvec_Q=lambda q, x: q @ x)


@pytest.mark.parametrize("name", list(CASES))
def test_fun_of_the_wrong_signature_is_a_type_error_naming_fun(name):
    with pytest.raises(TypeError, match=r"fun must take \(params, params_obj\)"):
        getattr(solvers, name)(fun=lambda x: jnp.sum(x**2))
    with pytest.raises(TypeError, match=r"fun must be callable"):
        getattr(solvers, name)(fun="x'Qx")


@pytest.mark.parametrize("name", list(CASES))
def test_fun_of_a_non_scalar_value_is_a_type_error_naming_fun(name):
    with pytest.raises(TypeError, match=r"fun\(params, params_obj\) must return a real scalar"):
        _runs(name, lambda x, p: p["M"] @ x)


@pytest.mark.parametrize("name", list(CASES))
def test_fun_needs_the_start_x(name):
    solver = getattr(solvers, name)(fun=objective)
    args = {
        "EqualityConstrainedQP": ((A, B),),
        "OSQP": ((A, B), (G, H)),
        "BoxOSQP": (A_BOX, (LOWER, UPPER)),
    }[name]
    with pytest.raises(ValueError, match=r"with fun=, init_params must give the primal x"):
        solver.run(None, params(), *args)
