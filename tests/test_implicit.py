"""The engine: custom_root, custom_fixed_point, root_jvp, root_vjp.

Every derivative is checked against a closed form (autodiff of an explicit formula for the
solution) or central finite differences, in float64.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_derivatives_match,
    assert_tree_allclose,
    finite_difference_jvp,
    random_tangent,
)
from problems import ridge_gradient as ridge_optimality
from problems import ridge_solution as ridge_closed_form

import implicitdiff
from implicitdiff import custom_fixed_point, custom_root, linear_solve, root_jvp, root_vjp

# ---------------------------------------------------------------------------------------------
# Problems with known solutions.


def _data(n=12, p=4, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, p))), jnp.asarray(rng.normal(size=n))


X, Y = _data()
LAM = 0.7


def ridge_by_cg(init, lam, X, y):
    """An iterative solver: what the engine wraps is never differentiated."""
    x, _ = jax.scipy.sparse.linalg.cg(
        lambda v: X.T @ (X @ v) + lam * v, X.T @ y, x0=init, tol=1e-14
    )
    return x


ridge = custom_root(ridge_optimality, symmetric=True)(ridge_by_cg)


# A contraction T(x, θ) = M x + tanh(x)/4 + θ, ‖M‖ ≤ 0.5: fixed point by iteration.
M = jnp.asarray(np.random.default_rng(1).normal(size=(4, 4)))
M = 0.5 * M / jnp.linalg.norm(M, 2)


def contraction(x, theta):
    return M @ x + 0.25 * jnp.tanh(x) + theta


def iterate_to_fixed_point(x, theta):
    return jax.lax.fori_loop(0, 200, lambda _, x: contraction(x, theta), x)


fixed_point = custom_fixed_point(contraction)(iterate_to_fixed_point)


def linear_contraction(x, theta):  # x* = (I − M)⁻¹ θ
    return M @ x + theta


# A non-symmetric root system G(x, θ) = A x + tanh(x)/10 − θ with A non-symmetric.
A_NONSYM = jnp.asarray(np.random.default_rng(2).normal(size=(4, 4))) + 4.0 * jnp.eye(4)


def nonsym_root(x, theta):
    return A_NONSYM @ x + 0.1 * jnp.tanh(x) - theta


def newton_solve(x, theta):
    def step(_, x):
        jac = A_NONSYM + 0.1 * jnp.diag(1 - jnp.tanh(x) ** 2)
        return x - jnp.linalg.solve(jac, nonsym_root(x, theta))

    return jax.lax.fori_loop(0, 30, step, x)


THETA = jnp.array([0.3, -1.0, 0.5, 2.0])

# ---------------------------------------------------------------------------------------------
# Values and first derivatives against closed forms, every argument, both modes.


def test_solution_is_the_solvers_output():
    assert_tree_allclose(ridge(jnp.zeros(4), LAM, X, Y), ridge_closed_form(LAM, X, Y), rtol=1e-10)


# Each test below computes what it compares in one jitted program (the engine's derivative and
# its reference together), rather than op by op.


@functools.partial(jax.jit, static_argnames=("argnum", "jac"))
def _ridge_jacobian(argnum, jac, lam, X, y):
    return jac(ridge, argnums=argnum)(jnp.zeros(4), lam, X, y)


@functools.partial(jax.jit, static_argnames="argnum")
def _closed_form_jacobian(argnum, lam, X, y):  # (one program for both modes of the engine)
    return jax.jacobian(ridge_closed_form, argnums=argnum)(lam, X, y)


@pytest.mark.parametrize("argnum", [1, 2, 3])
@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_ridge_jacobians_match_closed_form(argnum, jac):
    got = _ridge_jacobian(argnum, jac, LAM, X, Y)
    want = _closed_form_jacobian(argnum - 1, LAM, X, Y)
    assert_tree_allclose(got, want, rtol=1e-8, atol=1e-11)


def test_ridge_against_finite_differences():
    args = (LAM, X, Y)
    tangents = random_tangent((jnp.asarray(LAM), X, Y), seed=3)

    @jax.jit
    def compare(args, tangents):
        _, got = jax.jvp(lambda *a: ridge(jnp.zeros(4), *a), args, tangents)
        return got, finite_difference_jvp(lambda a: ridge_closed_form(*a), args, tangents)

    got, want = compare(args, tangents)
    assert_tree_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_linear_fixed_point_matches_closed_form():
    solver = custom_fixed_point(linear_contraction)(
        lambda x, theta: jax.lax.fori_loop(0, 200, lambda _, x: linear_contraction(x, theta), x)
    )
    got = jax.jacrev(solver, argnums=1)(jnp.zeros(4), THETA)
    assert_tree_allclose(got, jnp.linalg.inv(jnp.eye(4) - M), rtol=1e-10, atol=1e-12)


def test_nonlinear_fixed_point_matches_ift_and_finite_differences():
    x_star = fixed_point(jnp.zeros(4), THETA)
    assert_tree_allclose(contraction(x_star, THETA), x_star, atol=1e-12)
    jac_t = M + 0.25 * jnp.diag(1 - jnp.tanh(x_star) ** 2)
    want = jnp.linalg.inv(jnp.eye(4) - jac_t)
    assert_tree_allclose(jax.jacfwd(fixed_point, 1)(jnp.zeros(4), THETA), want, rtol=1e-10)
    assert_tree_allclose(jax.jacrev(fixed_point, 1)(jnp.zeros(4), THETA), want, rtol=1e-10)
    v = random_tangent(THETA, seed=4)
    fd = finite_difference_jvp(lambda t: iterate_to_fixed_point(jnp.zeros(4), t), THETA, v)
    assert_tree_allclose(
        jax.jvp(lambda t: fixed_point(jnp.zeros(4), t), (THETA,), (v,))[1], fd, rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize("solve", ["gmres", "bicgstab", "normal_cg", "lu", "auto"])
def test_nonsymmetric_root_all_suitable_solvers(solve):
    solver = custom_root(nonsym_root, solve=solve)(newton_solve)

    @jax.jit
    def compute(theta):
        x_star = newton_solve(jnp.zeros(4), theta)
        want = jnp.linalg.inv(A_NONSYM + 0.1 * jnp.diag(1 - jnp.tanh(x_star) ** 2))
        return want, [jac(solver, 1)(jnp.zeros(4), theta) for jac in (jax.jacfwd, jax.jacrev)]

    want, jacs = compute(THETA)
    for got in jacs:
        assert_tree_allclose(got, want, rtol=1e-8, atol=1e-10)


def _closed_form_loss(lam, X, y):
    return jnp.sum(ridge_closed_form(lam, X, y) ** 2)


# ∂/∂λ ‖x*(λ)‖² in closed form: one program for every test comparing with it.
_closed_form_grad = jax.jit(jax.grad(_closed_form_loss))


@pytest.mark.parametrize(
    "solve", ["cg", "gmres", "bicgstab", "normal_cg", "lu", "cholesky", "auto"]
)
def test_symmetric_system_every_solver(solve):
    solver = custom_root(ridge_optimality, solve=solve, symmetric=True)(ridge_by_cg)
    got = jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(4), lam, X, Y) ** 2))(LAM)
    want = jax.grad(lambda lam: jnp.sum(ridge_closed_form(lam, X, Y) ** 2))(LAM)
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_fixed_point_with_cholesky_is_positive_definite():
    # The engine solves (I − ∂T) u = ∂T v: positive definite for a gradient-step T, so Cholesky
    # (which fails on a negative definite matrix) must work.
    def step(x, lam):
        return x - 0.05 * ridge_optimality(x, lam, X, Y)

    solver = custom_fixed_point(step, solve="cholesky")(lambda x, lam: ridge_closed_form(lam, X, Y))
    got, want = jax.jit(
        lambda lam: (
            jax.jacrev(solver, 1)(jnp.zeros(4), lam),
            jax.jacrev(ridge_closed_form)(lam, X, Y),
        )
    )(LAM)
    assert_tree_allclose(got, want, rtol=1e-9)


def test_init_params_get_zero_derivative():
    g = jax.grad(lambda init: jnp.sum(ridge(init, LAM, X, Y)))(jnp.ones(4))
    assert_tree_allclose(g, jnp.zeros(4), atol=0)


# ---------------------------------------------------------------------------------------------
# Every transformation.


def outer_loss(lam):
    return jnp.sum((X @ ridge(jnp.zeros(4), lam, X, Y) - Y) ** 2)


def outer_loss_closed(lam):
    return jnp.sum((X @ ridge_closed_form(lam, X, Y) - Y) ** 2)


@pytest.mark.parametrize(
    "transform",
    [
        jax.grad,
        lambda f: lambda x: jax.value_and_grad(f)(x)[1],
        lambda f: lambda x: jax.jvp(f, (x,), (1.0,))[1],
        lambda f: lambda x: jax.vjp(f, x)[1](1.0)[0],
        jax.jacfwd,
        jax.jacrev,
        jax.hessian,
        lambda f: jax.grad(jax.grad(f)),  # reverse over reverse
        lambda f: jax.jacfwd(jax.jacfwd(f)),  # forward over forward
        lambda f: jax.jacrev(jax.jacfwd(f)),  # reverse over forward
        lambda f: jax.grad(jax.grad(jax.grad(f))),  # third order
    ],
    ids=[
        "grad",
        "value_and_grad",
        "jvp",
        "vjp",
        "jacfwd",
        "jacrev",
        "hessian",
        "rev_rev",
        "fwd_fwd",
        "rev_fwd",
        "third_order",
    ],
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_every_transform_matches_closed_form(transform, jit):
    # The engine's derivative eagerly (op by op) or jitted; the closed form's jitted (the same
    # program for both).
    got = jax.jit(transform(outer_loss)) if jit else transform(outer_loss)
    np.testing.assert_allclose(got(LAM), _jitted_closed_form(transform)(LAM), rtol=1e-7)


@functools.cache
def _jitted_closed_form(transform):
    return jax.jit(transform(outer_loss_closed))


def test_value_and_grad_value():
    value, _ = jax.value_and_grad(outer_loss)(LAM)
    np.testing.assert_allclose(value, outer_loss_closed(LAM), rtol=1e-10)


LAMS = jnp.array([0.1, 0.7, 3.0])


LAMS_2D = jnp.stack([LAMS, 2 * LAMS])


@pytest.mark.parametrize(
    ("compose", "lams"),
    [
        (lambda f: jax.vmap(jax.grad(f)), LAMS),
        (lambda f: jax.grad(lambda lams: jnp.sum(jax.vmap(f)(lams))), LAMS),
        (lambda f: jax.jit(jax.vmap(jax.grad(f))), LAMS),
        (lambda f: jax.vmap(jax.hessian(f)), LAMS),
        (lambda f: jax.jacfwd(jax.vmap(f)), LAMS),
        (lambda f: jax.vmap(jax.vmap(jax.grad(f))), LAMS_2D),
    ],
    ids=["vmap_grad", "grad_vmap", "jit_vmap_grad", "vmap_hessian", "jacfwd_vmap", "vmap_vmap"],
)
def test_vmap_compositions(compose, lams):
    # Both sides in one jitted program.
    got, want = jax.jit(lambda lams: (compose(outer_loss)(lams), compose(outer_loss_closed)(lams)))(
        lams
    )
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_vmap_over_data():
    Xs = jnp.stack([X, 2 * X, X + 1])

    def loss(X):
        return jnp.sum(ridge(jnp.zeros(4), LAM, X, Y))

    def loss_closed(X):
        return jnp.sum(ridge_closed_form(LAM, X, Y))

    got, want = jax.jit(
        lambda Xs: (jax.vmap(jax.grad(loss))(Xs), jax.vmap(jax.grad(loss_closed))(Xs))
    )(Xs)
    assert_tree_allclose(got, want, rtol=1e-8, atol=1e-11)


def test_jit_does_not_retrace_on_repeated_calls():
    traces = []

    def counting_solver(init, lam, X, y):
        traces.append(1)
        return ridge_by_cg(init, lam, X, y)

    solver = custom_root(ridge_optimality)(counting_solver)
    f = jax.jit(jax.grad(lambda lam, X: jnp.sum(solver(jnp.zeros(4), lam, X, Y))))
    for lam in (0.5, 0.6, 0.7):
        f(lam, X).block_until_ready()
    f(0.8, 2 * X).block_until_ready()
    assert len(traces) == 1


# ---------------------------------------------------------------------------------------------
# Pytrees, keywords, aux, static arguments, closures.


def test_pytree_params_and_args():
    def F(params, hyper, data):
        X, y = data["X"], data["y"]
        w, b = params["w"], params["b"]
        r = X @ w + b - y
        return {"w": X.T @ r + hyper[0] * w, "b": jnp.sum(r) + hyper[1] * b}

    def closed(hyper, data):
        X, y = data["X"], data["y"]
        Xa = jnp.concatenate([X, jnp.ones((X.shape[0], 1))], axis=1)
        reg = jnp.diag(jnp.concatenate([jnp.full(X.shape[1], hyper[0]), hyper[1][None]]))
        z = jnp.linalg.solve(Xa.T @ Xa + reg, Xa.T @ y)
        return {"w": z[:-1], "b": z[-1]}

    solver = custom_root(F)(lambda init, hyper, data: closed(hyper, data))
    init = {"w": jnp.zeros(4), "b": jnp.asarray(0.0)}
    hyper = (jnp.asarray(0.5), jnp.asarray(2.0))
    data = {"X": X, "y": Y}
    pairs = [(argnum, jac) for argnum in (1, 2) for jac in (jax.jacfwd, jax.jacrev)]

    @jax.jit
    def compute(init, hyper, data):  # every pair in one program
        return [
            (
                jac(solver, argnums=argnum)(init, hyper, data),
                jac(closed, argnums=argnum - 1)(hyper, data),
            )
            for argnum, jac in pairs
        ]

    for got, want in compute(init, hyper, data):
        assert_tree_allclose(got, want, rtol=1e-8, atol=1e-11)


def test_keyword_arguments_are_differentiated():
    solver = custom_root(ridge_optimality)(ridge_by_cg)

    def loss(lam, y):
        return jnp.sum(solver(jnp.zeros(4), lam, X=X, y=y) ** 2)

    def loss_closed(lam, y):
        return jnp.sum(ridge_closed_form(lam, X, y) ** 2)

    assert_tree_allclose(
        jax.grad(loss, (0, 1))(LAM, Y), jax.grad(loss_closed, (0, 1))(LAM, Y), rtol=1e-8
    )


def test_has_aux_returns_aux_without_derivative():
    def solver(init, lam, X, y):
        x = ridge_by_cg(init, lam, X, y)
        return x, {"residual": jnp.linalg.norm(ridge_optimality(x, lam, X, y)), "iters": 7}

    wrapped = custom_root(ridge_optimality, has_aux=True)(solver)
    _, aux = wrapped(jnp.zeros(4), LAM, X, Y)
    assert aux["iters"] == 7 and aux["residual"] < 1e-10

    def loss(lam):
        x, aux = wrapped(jnp.zeros(4), lam, X, Y)
        return jnp.sum(x**2) + aux["residual"]

    want = _closed_form_grad(LAM, X, Y)
    np.testing.assert_allclose(jax.grad(loss)(LAM), want, rtol=1e-8)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(LAM), want, rtol=1e-8)


def test_static_arguments_pass_through():
    def F(x, lam, X, y, n_iter, method, transform, nothing):
        assert isinstance(n_iter, int) and method == "cg" and nothing is None
        return ridge_optimality(x, transform(lam), X, y)

    def solver(init, lam, X, y, n_iter, method, transform, nothing):
        assert isinstance(n_iter, int) and method == "cg" and callable(transform)
        for _ in range(n_iter):  # a Python loop on a static int
            init = init
        return ridge_closed_form(transform(lam), X, y)

    wrapped = custom_root(F)(solver)

    def loss(log_lam):
        return jnp.sum(wrapped(jnp.zeros(4), log_lam, X, Y, 3, "cg", jnp.exp, None) ** 2)

    want = jax.grad(lambda t: jnp.sum(ridge_closed_form(jnp.exp(t), X, Y) ** 2))(0.1)
    np.testing.assert_allclose(jax.grad(loss)(0.1), want, rtol=1e-8)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(0.1), want, rtol=1e-8)


def test_integer_arguments_pass_through_as_data():
    def F(x, lam, X, y, idx):
        return ridge_optimality(x, lam, X[idx], y[idx])

    def solver(init, lam, X, y, idx):
        return ridge_closed_form(lam, X[idx], y[idx])

    wrapped = custom_root(F)(solver)
    idx = jnp.arange(8)
    got, want = jax.jit(
        lambda lam, idx: (
            jax.grad(lambda lam: jnp.sum(wrapped(jnp.zeros(4), lam, X, Y, idx)))(lam),
            jax.grad(lambda lam: jnp.sum(ridge_closed_form(lam, X[:8], Y[:8])))(lam),
        )
    )(LAM, idx)
    np.testing.assert_allclose(got, want, rtol=1e-8)


def closure_loss(lam, y):
    """The optimality function captures λ in a closure inside the differentiated function."""

    def F(x, X):
        return X.T @ (X @ x - y) + lam * x

    solver = custom_root(F)(lambda init, X: ridge_closed_form(lam, X, y))
    return jnp.sum(solver(jnp.zeros(4), X) ** 2)


def closure_loss_closed(lam, y):
    return jnp.sum(ridge_closed_form(lam, X, y) ** 2)


@pytest.mark.parametrize(
    ("transform", "lam"),
    [
        (lambda f: jax.grad(f, (0, 1)), LAM),
        (lambda f: jax.jit(jax.grad(f, (0, 1))), LAM),
        (lambda f: jax.jacfwd(f, (0, 1)), LAM),
        (lambda f: jax.hessian(f, (0, 1)), LAM),
        (lambda f: jax.vmap(jax.grad(f), (0, None)), LAMS),
    ],
    ids=["grad", "jit_grad", "jacfwd", "hessian", "vmap_grad"],
)
def test_closed_over_arrays_are_differentiated(transform, lam, request):
    if request.node.callspec.id in ("grad", "vmap_grad"):  # eagerly (op by op)
        got, want = transform(closure_loss)(lam, Y), transform(closure_loss_closed)(lam, Y)
    else:  # both sides in one jitted program
        got, want = jax.jit(
            lambda lam, y: (transform(closure_loss)(lam, y), transform(closure_loss_closed)(lam, y))
        )(lam, Y)
    assert_tree_allclose(got, want, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# root_jvp and root_vjp on their own.


def test_root_jvp_and_vjp_match_closed_form():
    sol = ridge_closed_form(LAM, X, Y)
    args = (LAM, X, Y)
    tangents = random_tangent((jnp.asarray(LAM), X, Y), seed=5)
    _, want = jax.jvp(ridge_closed_form, args, tangents)
    assert_tree_allclose(root_jvp(ridge_optimality, sol, args, tangents), want, rtol=1e-9)
    # None for an unperturbed argument
    _, want_lam = jax.jvp(lambda lam: ridge_closed_form(lam, X, Y), (LAM,), (1.0,))
    got = root_jvp(ridge_optimality, sol, args, (1.0, None, None), solve="cg")
    assert_tree_allclose(got, want_lam, rtol=1e-8)

    v = random_tangent(sol, seed=6)
    _, vjp = jax.vjp(ridge_closed_form, *args)
    got = root_vjp(ridge_optimality, sol, args, v)
    assert_tree_allclose(got, vjp(v), rtol=1e-9, atol=1e-12)


def test_root_vjp_marks_non_array_arguments_none():
    def F(x, lam, name):
        assert name == "ridge"
        return ridge_optimality(x, lam, X, Y)

    sol = ridge_closed_form(LAM, X, Y)
    ct_lam, ct_name = root_vjp(F, sol, (LAM, "ridge"), jnp.ones(4))
    assert ct_name is None
    want = jnp.sum(jax.jacfwd(ridge_closed_form)(LAM, X, Y))
    np.testing.assert_allclose(ct_lam, want, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error at trace time, naming the culprit.


def test_wrong_optimality_signature_is_named():
    solver = custom_root(lambda x, lam: x * lam)(ridge_by_cg)
    with pytest.raises(TypeError, match=r"optimality_fun .* cannot be called"):
        solver(jnp.zeros(4), LAM, X, Y)


def test_fixed_point_wrong_signature_is_named():
    solver = custom_fixed_point(lambda x: x)(iterate_to_fixed_point)
    with pytest.raises(TypeError, match="fixed_point_fun"):
        solver(jnp.zeros(4), THETA)


def test_optimality_output_of_wrong_structure():
    solver = custom_root(lambda x, lam, X, y: (x, x))(ridge_by_cg)
    with pytest.raises(TypeError, match="optimality_fun must return a pytree with the structure"):
        solver(jnp.zeros(4), LAM, X, Y)
    solver = custom_root(lambda x, lam, X, y: X @ x)(ridge_by_cg)
    with pytest.raises(TypeError, match="shaped like the solution"):
        solver(jnp.zeros(4), LAM, X, Y)


def test_solve_returning_wrong_structure_is_named():
    def bad_solve(matvec, b):
        return (b, b)

    solver = custom_root(ridge_optimality, solve=bad_solve)(ridge_by_cg)
    with pytest.raises(TypeError, match="solve \\(bad_solve\\) must return"):
        jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(4), lam, X, Y)))(LAM)


def test_unknown_solver_name_and_policy():
    with pytest.raises(ValueError, match="solve='svd' is not a known linear solver"):
        custom_root(ridge_optimality, solve="svd")
    with pytest.raises(ValueError, match="on_failure must be one of"):
        custom_root(ridge_optimality, on_failure="shout")


def test_has_aux_solver_must_return_a_pair():
    solver = custom_root(ridge_optimality, has_aux=True)(ridge_by_cg)
    with pytest.raises(TypeError, match="has_aux=True"):
        solver(jnp.zeros(4), LAM, X, Y)


def test_integer_tangent_is_rejected_by_root_jvp():
    sol = ridge_closed_form(LAM, X, Y)

    def F(x, lam, k):
        return ridge_optimality(x, lam, X, Y) + 0 * k

    with pytest.raises(TypeError, match="args\\[1\\] has the integer or boolean dtype"):
        root_jvp(F, sol, (LAM, jnp.arange(3)), (None, jnp.ones(3)))


def test_grad_wrt_integer_argument_is_refused():
    solver = custom_root(lambda x, lam, k: ridge_optimality(x, lam, X, Y))(
        lambda init, lam, k: ridge_closed_form(lam, X, Y)
    )
    with pytest.raises(TypeError, match="integer"):
        jax.grad(lambda k: jnp.sum(solver(jnp.zeros(4), LAM, k)))(jnp.arange(3))


# ---------------------------------------------------------------------------------------------
# A backward solve that fails is never silent.


def _badly_solved(policy):
    solve = functools.partial(linear_solve.cg, maxiter=1)
    solver = custom_root(ridge_optimality, solve=solve, on_failure=policy)(ridge_by_cg)
    return jax.jit(jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(4), lam, X, Y) ** 2)))


def test_failed_backward_solve_warns_by_default():
    with pytest.warns(implicitdiff.BackwardSolveWarning, match="relative residual"):
        _badly_solved("warn")(LAM).block_until_ready()


def test_failed_backward_solve_warning_calls_a_nan_residual_not_finite():
    """A batch member whose solution is NaN: its residual is NaN, which the warning names as
    not finite (it said "inf"); a finite failure still gets its number."""
    solver = custom_root(ridge_optimality)(ridge_by_cg)
    grads = jax.jit(jax.vmap(jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(4), lam, X, Y) ** 2))))
    with pytest.warns(implicitdiff.BackwardSolveWarning) as caught:
        out = grads(jnp.asarray([LAM, jnp.nan])).block_until_ready()
    (message,) = [str(w.message) for w in caught]
    assert "(1 of 2 in the batch)" in message and "relative residual nan (not finite" in message
    assert np.isfinite(out[0]) and np.isnan(out[1])
    with pytest.warns(implicitdiff.BackwardSolveWarning, match=r"relative residual \d\.\d{3}e"):
        _badly_solved("warn")(LAM).block_until_ready()


def test_backward_cg_with_a_tiny_cotangent_is_reported_and_fallback_solves_it():
    """A cotangent of 1e-200: ‖b‖² underflows, and CG as the engine calls it (unscaled, for
    compile time; linear_solve.cg itself rescales) stops at x = 0. The residual check reports
    it (relative residual 1), never a silent zero; on_failure="fallback" solves it again."""
    A = jnp.array([[3.0, 1.0], [1.0, 2.0]])

    def grad_of(policy):
        solver = custom_root(lambda x, t: A @ x - t, solve="cg", on_failure=policy)(
            lambda x0, t: jnp.linalg.solve(A, t)
        )
        return jax.grad(lambda t: 1e-200 * jnp.sum(solver(jnp.zeros(2), t)))(jnp.ones(2))

    with pytest.warns(implicitdiff.BackwardSolveWarning, match="relative residual 1.000e"):
        grad_of("warn")
    with pytest.warns(implicitdiff.BackwardSolveWarning, match="least-squares"):
        g = grad_of("fallback")
    np.testing.assert_allclose(np.asarray(g) / 1e-200, np.linalg.solve(A.T, np.ones(2)), 1e-10)


def test_failed_backward_solve_nan_policy():
    assert np.isnan(_badly_solved("nan")(LAM))


def test_failed_backward_solve_raise_policy():
    # Raised on the host while the compiled program runs: JAX wraps it in a JaxRuntimeError.
    with pytest.raises(jax.errors.JaxRuntimeError, match="BackwardSolveError: the linear system"):
        _badly_solved("raise")(LAM).block_until_ready()


# The check under every transformation. ORTHO has orthonormal columns: its system
# (XᵀX + λI) u = b = (1 + λ) u is solved exactly by one CG step, so a batch mixing ORTHO and X
# has one failing system and one solved one.
ORTHO = jnp.linalg.qr(X)[0]
MESH_AXIS = "devices"


def _exact_ridge(init, lam, X, y):
    return ridge_closed_form(lam, X, y)


def _starved(policy="warn"):
    solve = functools.partial(linear_solve.cg, maxiter=1)
    return custom_root(ridge_optimality, solve=solve, symmetric=True, on_failure=policy)(
        _exact_ridge
    )


def _gradient_of(solver):
    """λ, X ↦ ∂/∂λ of ‖x*(λ, X)‖²."""
    return jax.grad(lambda lam, X: jnp.sum(solver(jnp.zeros(4), lam, X, Y) ** 2))


def _mesh():
    devices = jax.devices("cpu")
    return jax.make_mesh(
        (len(devices),), (MESH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def _under(transform, solver):
    """The gradient of ``solver``'s solution under ``transform``, for one failing system (X) and,
    where batched, solved ones (ORTHO): (a function of no argument, the systems it solves)."""
    grad = _gradient_of(solver)
    P = jax.sharding.PartitionSpec
    n = len(jax.devices("cpu"))
    mixed = jnp.stack([X] + [ORTHO] * (n - 1))
    lams = jnp.full(n, LAM)
    if transform == "jit":
        return lambda: jax.jit(grad)(LAM, X), [X]
    if transform == "vmap":
        return lambda: jax.vmap(grad)(lams, mixed), list(mixed)
    if transform == "scan":
        body = lambda c, lx: (c, grad(*lx))  # noqa: E731
        return lambda: jax.lax.scan(body, 0.0, (lams, mixed))[1], list(mixed)
    if transform == "checkpoint":  # the rule inside jax.checkpoint, differentiated
        return lambda: jax.checkpoint(grad)(LAM, X), [X]
    if transform == "grad_of_checkpoint":
        ckpt = jax.checkpoint(lambda lam, X: jnp.sum(solver(jnp.zeros(4), lam, X, Y) ** 2))
        return lambda: jax.grad(ckpt)(LAM, X), [X]
    if transform == "shard_map":  # one system per device, one report per call
        per_device = jax.shard_map(
            lambda lam, X: grad(lam[0], X[0])[None],
            mesh=_mesh(),
            in_specs=(P(MESH_AXIS), P(MESH_AXIS)),
            out_specs=P(MESH_AXIS),
        )
        return lambda: jax.jit(per_device)(lams, mixed), list(mixed)
    raise AssertionError(transform)


TRANSFORMS_OF_THE_CHECK = ["jit", "vmap", "scan", "checkpoint", "grad_of_checkpoint", "shard_map"]


def _closed_form_gradient(X):
    return _closed_form_grad(LAM, X, Y)


@pytest.mark.parametrize("transform", TRANSFORMS_OF_THE_CHECK)
def test_backward_check_family_failure_warns_once_at_the_users_line(transform):
    fun, systems = _under(transform, _starved())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = jax.block_until_ready(fun())
    reports = [w for w in caught if issubclass(w.category, implicitdiff.BackwardSolveWarning)]
    assert len(reports) == 1, [str(w.message) for w in reports]
    assert reports[0].filename == __file__
    assert "relative residual" in str(reports[0].message)
    if transform in ("vmap", "shard_map"):  # (a scan reports each failing step on its own)
        assert f"(1 of {len(systems)} in the batch)" in str(reports[0].message)
    # The solved systems (ORTHO, after the first) still get their exact derivative.
    for i, system in enumerate(systems[1:], start=1):
        np.testing.assert_allclose(np.ravel(got)[i], _closed_form_gradient(system), rtol=1e-9)


@pytest.mark.parametrize("transform", TRANSFORMS_OF_THE_CHECK)
def test_backward_check_family_solved_is_quiet_and_exact(transform):
    solver = custom_root(ridge_optimality, solve="cg", symmetric=True)(_exact_ridge)
    fun, systems = _under(transform, solver)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.ravel(jax.block_until_ready(fun()))
    want = [_closed_form_gradient(system) for system in systems]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_backward_check_family_large_vmap_compiles_and_warns_once():
    # (An io_callback under vmap of 410 or more elements failed to compile in JAX 0.10.)
    grad = jax.jit(jax.vmap(_gradient_of(_starved()), in_axes=(0, None)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grad(jnp.linspace(0.5, 2.0, 1000), X).block_until_ready()
    reports = [w for w in caught if issubclass(w.category, implicitdiff.BackwardSolveWarning)]
    assert len(reports) == 1 and "(1000 of 1000 in the batch)" in str(reports[0].message)


@pytest.mark.parametrize("policy", ["nan", "raise", "fallback"])
def test_backward_check_family_other_policies_under_checkpoint_and_vmap(policy):
    grad = _gradient_of(_starved(policy))
    batch = jnp.stack([X, ORTHO])
    run = jax.jit(jax.vmap(jax.checkpoint(grad), in_axes=(None, 0)))
    if policy == "raise":
        with pytest.raises(jax.errors.JaxRuntimeError, match="BackwardSolveError"):
            run(LAM, batch).block_until_ready()
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run(LAM, batch)
    reports = [w for w in caught if issubclass(w.category, implicitdiff.BackwardSolveWarning)]
    np.testing.assert_allclose(got[1], _closed_form_gradient(ORTHO), rtol=1e-9)
    if policy == "nan":
        assert np.isnan(got[0]) and not reports
    else:  # the fallback solves X's regular system exactly: its true derivative
        np.testing.assert_allclose(got[0], _closed_form_gradient(X), rtol=1e-7)
        assert len(reports) == 1 and reports[0].filename == __file__


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_the_backward_check_measures_the_relative_residual_at_any_scale(dtype, scale):
    # ‖r‖ / ‖b‖ with r = δ·b (δ = 1e-3) in a tree of two leaves, one of them empty: δ at every
    # scale, where the plain ‖r‖² / ‖b‖² would overflow (1e60) or underflow (1e-60) in float32.
    from implicitdiff._backward_check import _relative_residual

    rng = np.random.default_rng(0)
    b = {"a": jnp.asarray(rng.standard_normal(50) * scale, dtype), "e": jnp.zeros(0, dtype)}
    r = jax.tree_util.tree_map(lambda v: 1e-3 * v, b)
    got = _relative_residual(r, b)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, 1e-3, rtol=1e-5)
    zero = {"a": jnp.zeros(50, dtype), "e": b["e"]}
    small = {"a": jnp.full(50, 1e-3, dtype), "e": b["e"]}
    np.testing.assert_allclose(_relative_residual(small, zero), 1e-3 * np.sqrt(50), rtol=1e-5)
    r_bad = {"a": r["a"].at[3].set(jnp.nan), "e": r["e"]}
    assert np.isnan(_relative_residual(r_bad, b))
    r_inf = {"a": r["a"].at[3].set(jnp.inf), "e": r["e"]}
    assert _relative_residual(r_inf, b) == np.inf


def test_failed_backward_solve_ignore_policy_is_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(_badly_solved("ignore")(LAM))


def test_converged_backward_solve_is_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grad = jax.jit(jax.grad(outer_loss))(LAM)
    np.testing.assert_allclose(grad, jax.grad(outer_loss_closed)(LAM), rtol=1e-8)


def test_singular_system_nonfinite_is_reported():
    # λ = 0 with more features than samples: XᵀX is singular; the dense LU solve returns inf/NaN
    # or garbage and the residual check reports it.
    Xw, yw = _data(n=3, p=6, seed=7)
    solver = custom_root(ridge_optimality, solve="lu", on_failure="nan")(
        lambda init, lam, X, y: jnp.linalg.lstsq(X, y)[0]
    )
    g = jax.jit(jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(6), lam, Xw, yw))))(0.0)
    assert np.isnan(g)
    # normal_cg copes: it solves the transposed system Aᵀu = v in the least-squares sense, which
    # gives −vᵀ(XᵀX)⁺x, the limit λ → 0⁺ of the ridge derivative −vᵀ(XᵀX + λI)⁻¹x.
    solver = custom_root(ridge_optimality, solve="normal_cg")(
        lambda init, lam, X, y: jnp.linalg.lstsq(X, y)[0]
    )
    v = jnp.arange(1.0, 7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = jax.jit(jax.grad(lambda lam: v @ solver(jnp.zeros(6), lam, Xw, yw)))(0.0)
        g.block_until_ready()
    x0 = np.linalg.lstsq(Xw, yw)[0]
    np.testing.assert_allclose(g, -v @ np.linalg.pinv(Xw.T @ Xw) @ x0, rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# float32.


def test_float32_gradients_are_accurate_to_float32():
    X32, Y32 = X.astype(jnp.float32), Y.astype(jnp.float32)

    def solver(init, lam, X, y):
        return jnp.linalg.solve(X.T @ X + lam * jnp.eye(4, dtype=X.dtype), X.T @ y)

    want = jax.jit(jax.jacrev(ridge_closed_form, (0, 1)))(LAM, X, Y)
    for solve in ("cg", "gmres", "lu", "auto"):
        wrapped = custom_root(ridge_optimality, solve=solve, symmetric=True)(solver)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            jac = jax.jit(jax.jacrev(wrapped, (1, 2)))
            g = jac(jnp.zeros(4, jnp.float32), jnp.float32(LAM), X32, Y32)
        assert g[0].dtype == jnp.float32
        assert_tree_allclose(g, want, rtol=2e-4, atol=2e-5)


def test_reverse_mode_when_one_leaf_of_the_solution_does_not_move():
    # The right-hand side of that leaf is a constant zero: custom_linear_solve's transpose needs
    # every leaf linear, so the engine passes a flat vector across it.
    def F(p, t):
        return {"a": 2 * (p["a"] - t), "b": 2 * (p["b"] - 3.0)}

    solver = custom_root(F)(lambda init, t: {"a": t, "b": jnp.asarray(3.0)})
    t = jnp.arange(3.0)
    jac = jax.jit(jax.jacrev(lambda t: solver(None, t)))(t)
    assert_tree_allclose(jac, {"a": jnp.eye(3), "b": jnp.zeros(3)}, atol=1e-12)
    hess = jax.jit(jax.hessian(lambda t: jnp.sum(solver(None, t)["a"] ** 3)))(t)
    assert_tree_allclose(hess, jnp.diag(6 * t), atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Singular backward systems: on_failure="fallback" re-solves them in the least-squares sense.


def _spring_network(n, degree=3, seed=0):
    """E(x, l) = ½ Σₑ kₑ (xᵢ − xⱼ − lₑ)² over the edges e = (i, j) of a random graph: invariant
    under x → x + c·1 (as a molecular energy under translations), so its Hessian, the weighted
    Laplacian DᵀKD, is singular. F = ∇ₓE = DᵀK(Dx − l); the minimum-norm minimizer is
    x*(l) = (DᵀKD)⁺DᵀK l, whose Jacobian in l is J = (DᵀKD)⁺DᵀK."""
    rng = np.random.default_rng(seed)
    edges = [(i, j) for i in range(n) for j in rng.choice(n, degree, replace=False) if i != j]
    D = np.zeros((len(edges), n))
    for row, (i, j) in enumerate(edges):
        D[row, i], D[row, j] = 1.0, -1.0
    D, k = jnp.asarray(D), jnp.asarray(rng.uniform(0.5, 2.0, len(edges)))
    lengths = jnp.asarray(rng.normal(size=len(edges)))

    def energy_gradient(x, lengths):
        return D.T @ (k * (D @ x - lengths))

    J = jnp.linalg.pinv(D.T @ (k[:, None] * D)) @ (D.T * k)
    return energy_gradient, J, lengths


@pytest.mark.parametrize("n, solve", [(30, None), (30, "cg"), (30, "gmres"), (250, "cg")], ids=str)
def test_fallback_gives_the_minimum_norm_derivative_of_a_translation_invariant_energy(n, solve):
    # n = 30: the dense fallback (A⁺ by SVD); n = 250 > DENSE_MAX_SIZE: CG on the ridge-
    # regularized normal equations. Reverse mode solves Aᵀu = v, inconsistent for a generic v:
    # every primary solver fails on it, and the fallback gives u = A⁺v, so vᵀJ = vᵀA⁺B.
    F, J, lengths = _spring_network(n)
    solver = custom_root(F, solve=solve, symmetric=True, on_failure="fallback")(
        lambda init, lengths: J @ lengths
    )
    v = jnp.asarray(np.random.default_rng(1).normal(size=n))
    with pytest.warns(implicitdiff.BackwardSolveWarning, match="solved again as a least-squares"):
        g = jax.jit(jax.grad(lambda lengths: v @ solver(None, lengths)))(lengths)
        g.block_until_ready()
    np.testing.assert_allclose(g, J.T @ v, rtol=1e-8, atol=1e-9 * float(jnp.max(jnp.abs(g))))


def test_other_policies_on_a_singular_system():
    F, J, lengths = _spring_network(30)
    v = jnp.asarray(np.random.default_rng(1).normal(size=30))

    def gradient(policy):
        solver = custom_root(F, solve="cg", symmetric=True, on_failure=policy)(
            lambda init, lengths: J @ lengths
        )
        return jax.jit(jax.grad(lambda lengths: v @ solver(None, lengths)))(lengths)

    assert np.all(np.isnan(gradient("nan")))
    with pytest.raises(
        jax.errors.JaxRuntimeError, match="linear system of an implicit derivative was not solved"
    ):
        gradient("raise").block_until_ready()
    with pytest.warns(implicitdiff.BackwardSolveWarning, match="on_failure='fallback'"):
        g = gradient("warn").block_until_ready()
    assert not np.allclose(g, J.T @ v, rtol=1e-3)  # CG on an inconsistent system: garbage
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradient("ignore").block_until_ready()


def test_fallback_of_a_rank_deficient_least_squares_in_every_mode():
    # F = Xᵀ(Xw − y), X of rank 2 in ℝ³; w* = X⁺y has Jacobian X⁺ in y. X's middle column is
    # exactly zero, so XᵀX has a zero row and column and its LU an exactly zero pivot: the solve
    # fails (inf/NaN) under any rounding. (A generic rank-2 product of Gaussians left the pivot
    # at rounding level: whether LU then "solved" the consistent singular system depended on
    # the compiler's rounding, and the test with it.)
    rng = np.random.default_rng(3)
    G = rng.normal(size=(7, 2))
    Xr = jnp.asarray(np.column_stack([G[:, 0], np.zeros(7), G[:, 1]]))
    solver = custom_root(
        lambda w, y: Xr.T @ (Xr @ w - y), solve="lu", symmetric=True, on_failure="fallback"
    )(lambda init, y: jnp.linalg.pinv(Xr) @ y)
    y = jnp.asarray(rng.normal(size=7))
    with pytest.warns(implicitdiff.BackwardSolveWarning, match="minimum-norm"):
        jac = jax.jit(jax.jacrev(lambda y: solver(None, y)))(y)
    np.testing.assert_allclose(jac, jnp.linalg.pinv(Xr), atol=1e-10)
    # Batched over two right-hand sides (vmap of the fallback: both branches run).
    with pytest.warns(implicitdiff.BackwardSolveWarning):
        grads = jax.jit(jax.vmap(jax.grad(lambda y: jnp.sum(solver(None, y) ** 2))))(
            jnp.stack([y, 2 * y])
        )
    want = 2 * jnp.linalg.pinv(Xr).T @ (jnp.linalg.pinv(Xr) @ y)
    np.testing.assert_allclose(grads, jnp.stack([want, 2 * want]), atol=1e-9)


def test_fallback_is_quiet_and_exact_on_a_regular_system():
    solver = custom_root(ridge_optimality, symmetric=True, on_failure="fallback")(ridge_by_cg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jac = jax.jit(jax.jacrev(solver, argnums=1))(jnp.zeros(4), LAM, X, Y)
    np.testing.assert_allclose(jac, jax.jacrev(ridge_closed_form)(LAM, X, Y), rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Dtypes (issue 12, items 9 and 10).


@pytest.mark.parametrize("solve", ["auto", "cg", "gmres", "lu"])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_family_grad_through_custom_root(dtype, solve):
    def solver(init, lam, X, y):  # (LAPACK has no half precision: the user's solver works in f32)
        f32 = [jnp.asarray(a, jnp.float32) for a in (lam, X, y)]
        return ridge_closed_form(*f32).astype(dtype)

    wrapped = custom_root(ridge_optimality, solve=solve)(solver)
    Xh, Yh = X.astype(dtype), Y.astype(dtype)

    def loss(lam):
        return jnp.sum(wrapped(jnp.zeros(4, dtype), lam, Xh, Yh).astype(jnp.float32) ** 2)

    got = jax.jit(jax.grad(loss))(jnp.asarray(LAM, dtype))
    assert got.dtype == dtype
    # against float64 on the same rounded data
    X64, Y64 = np.asarray(Xh, np.float64), np.asarray(Yh, np.float64)
    lam64 = float(jnp.asarray(LAM, dtype))
    want = _closed_form_grad(lam64, X64, Y64)
    np.testing.assert_allclose(float(got), want, rtol=1e-2 if dtype == jnp.float16 else 5e-2)


def test_optimality_output_dtype_must_match_the_solution():
    wrapped = custom_root(lambda x, lam, X, y: ridge_optimality(x, lam, X, y).astype(jnp.float32))(
        ridge_by_cg
    )
    with pytest.raises(TypeError, match=r"optimality_fun .* float32, the solution is float64"):
        jax.grad(lambda lam: jnp.sum(wrapped(jnp.zeros(4), lam, X, Y)))(LAM)


@pytest.mark.parametrize("solve", ["cg", "gmres", "bicgstab", "normal_cg", "lu", "auto"])
def test_solution_mixing_float32_and_float64_leaves(solve):
    """A solution pytree of a float32 and a float64 leaf (x*_a = A⁻¹θ_a, x*_b = B⁻¹θ_b): the
    gradient in θ, each leaf in its own dtype. With cg, bicgstab and normal_cg the backward
    solve raised JAX's "while_loop body function carry input and carry output must have equal
    types" (it now solves in the common dtype)."""
    A = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    B = jnp.diag(jnp.array([1.0, 2.0, 4.0]))

    def F(x, theta):
        return {"a": A.astype(jnp.float32) @ x["a"] - theta["a"], "b": B @ x["b"] - theta["b"]}

    @custom_root(F, solve=solve)
    def solver(init, theta):
        a = jnp.linalg.solve(A.astype(jnp.float32), theta["a"])
        return {"a": a, "b": jnp.linalg.solve(B, theta["b"])}

    theta = {"a": jnp.array([1.0, 2.0], jnp.float32), "b": jnp.array([1.0, 2.0, 3.0])}
    init = {"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(3)}
    grad = jax.grad(lambda t: sum(jnp.sum(v) for v in solver(init, t).values()))(theta)
    assert (grad["a"].dtype, grad["b"].dtype) == (jnp.float32, jnp.float64)
    np.testing.assert_allclose(grad["a"], np.linalg.solve(A.T, np.ones(2)), rtol=1e-6)
    np.testing.assert_allclose(grad["b"], [1.0, 0.5, 0.25], rtol=1e-9)


# Complex solutions. F holomorphic in z (z ↦ M z − θ, ∂₁F ℂ-linear), or not (the stationary
# condition of f(z) = ½ zᴴHz + (β/2) Re Σ zₖ² − Re θᴴz, i.e. Hz + β z̄ − θ = 0: ∂₁F is ℝ-linear).
# The explicit solvers below are differentiable: their JVP and gradient are the reference.
_CX_RNG = np.random.default_rng(5)
_CX_N = 3
_CX_M = jnp.asarray(_CX_RNG.normal(size=(3, 3)) + 1j * _CX_RNG.normal(size=(3, 3)) + 3 * np.eye(3))
_CX_H = _CX_M @ _CX_M.conj().T + 3 * jnp.eye(3)  # Hermitian positive definite, eigenvalues ≥ 3
_CX_BETA = 1.2
_CX_THETA = jnp.asarray(_CX_RNG.normal(size=3) + 1j * _CX_RNG.normal(size=3))
_CX_V = jnp.asarray(_CX_RNG.normal(size=3) + 1j * _CX_RNG.normal(size=3))


def _cx_holomorphic(matrix):
    def F(z, theta):
        return matrix @ z - theta

    def solution(init, theta):
        return jnp.linalg.solve(matrix, theta)

    return F, solution


def _cx_stationary_objective(z, theta):
    quadratic = 0.5 * jnp.real(jnp.vdot(z, _CX_H @ z))
    return quadratic + 0.5 * _CX_BETA * jnp.real(jnp.sum(z**2)) - jnp.real(jnp.vdot(theta, z))


def _cx_stationary_solution(init, theta):
    # Hz + βz̄ = θ on the pairs (x, y): [[Re H + βI, −Im H], [Im H, Re H − βI]]
    eye = jnp.eye(_CX_N)
    block = jnp.block(
        [[_CX_H.real + _CX_BETA * eye, -_CX_H.imag], [_CX_H.imag, _CX_H.real - _CX_BETA * eye]]
    )
    pairs = jnp.linalg.solve(block, jnp.concatenate([theta.real, theta.imag]))
    return jax.lax.complex(pairs[:_CX_N], pairs[_CX_N:])


def _cx_problem(kind):
    if kind == "holomorphic_general":
        return (*_cx_holomorphic(_CX_M), {})
    if kind == "holomorphic_hermitian":
        return (*_cx_holomorphic(_CX_H), {})
    stationary = implicitdiff.optimality.stationary(_cx_stationary_objective)
    return stationary, _cx_stationary_solution, {}


_CX_SOLVES = ["auto", "lu", "qr", "inv", "cholesky", "cg", "gmres", "bicgstab", "normal_cg"]
_CX_SOLVES += ["iterative_refinement"]


def _cx_cases():
    for solve in _CX_SOLVES:
        for kind in ("holomorphic_general", "holomorphic_hermitian", "non_holomorphic_stationary"):
            if solve in ("cg", "cholesky") and kind == "holomorphic_general":
                continue  # (not Hermitian: no symmetric positive definite pairs)
            yield solve, kind


@pytest.mark.parametrize(("solve", "kind"), list(_cx_cases()))
def test_complex_solution_family_every_backward_solve(solve, kind):
    """A complex solution z*(θ), complex θ: forward (jvp) and reverse (grad of a real loss)
    against the explicit solver's own derivatives. Before, for the non-holomorphic stationary
    condition (the usual one: a real objective of complex parameters), lu, qr, inv, cholesky,
    auto and bicgstab were 0.7 to 7 off and gmres 1e-4, silently (the dense matrix was read
    from the real unit vectors, the Krylov methods ran over ℂ on an ℝ-linear map); normal_cg
    was wrong for a holomorphic one (a transpose without conjugation)."""
    F, solution, _ = _cx_problem(kind)
    implicit = custom_root(F, solve=solve, on_failure="raise")(solution)
    zeros = jnp.zeros(_CX_N, jnp.complex128)
    assert_derivatives_match(
        lambda t: implicit(zeros, t), lambda t: solution(zeros, t), _CX_THETA, _CX_V, 1e-10
    )


def _cx_stationary_implicit(solve):
    F = implicitdiff.optimality.stationary(_cx_stationary_objective)
    return custom_root(F, solve=solve, on_failure="raise")(_cx_stationary_solution)


@pytest.mark.parametrize("solve", ["cg", "cholesky", "auto"])
def test_complex_solution_stationary_condition_is_symmetric_on_the_pairs(solve):
    """The stationary condition of a real objective of complex z is marked symmetric: true on
    the real pairs, where the engine solves (∇f as a vector of the space, ∂f/∂a + i ∂f/∂b, the
    conjugate of jax.grad's), so CG and Cholesky apply. A second derivative (the Hessian of a
    real loss in Re θ) matches the explicit solver's."""
    implicit = _cx_stationary_implicit(solve)
    zeros = jnp.zeros(_CX_N, jnp.complex128)

    def loss(fn):
        return lambda r: jnp.sum(jnp.abs(fn(zeros, r + 1j * _CX_THETA.imag)) ** 4)

    np.testing.assert_allclose(
        jax.hessian(loss(implicit))(_CX_THETA.real),
        jax.hessian(loss(_cx_stationary_solution))(_CX_THETA.real),
        rtol=1e-9,
    )


@pytest.mark.parametrize("kind", ["holomorphic_general", "non_holomorphic_stationary"])
def test_complex_solution_root_jvp_and_root_vjp(kind):
    """root_jvp and root_vjp at a complex solution, against the explicit solver's JVP and VJP
    (root_vjp solved (∂₁F)ᵀ w = v over ℂ with JAX's ℝ-linear VJP: wrong for the
    non-holomorphic condition)."""
    F, solution, _ = _cx_problem(kind)
    sol = solution(None, _CX_THETA)
    _, want = jax.jvp(lambda t: solution(None, t), (_CX_THETA,), (_CX_V,))
    np.testing.assert_allclose(root_jvp(F, sol, (_CX_THETA,), (_CX_V,)), want, atol=1e-10)
    cotangent = _CX_V[::-1]
    _, vjp = jax.vjp(lambda t: solution(None, t), _CX_THETA)
    (got,) = root_vjp(F, sol, (_CX_THETA,), cotangent)
    np.testing.assert_allclose(got, vjp(cotangent)[0], atol=1e-10)
