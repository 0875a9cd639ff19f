"""Linear solvers: each against numpy's dense solve, on arrays and pytrees."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose

from implicitdiff import linear_solve

RNG = np.random.default_rng(0)
N = 6
_B = RNG.normal(size=(N, N))
SPD = jnp.asarray(_B @ _B.T + N * np.eye(N))
NONSYM = jnp.asarray(RNG.normal(size=(N, N)) + 3 * np.eye(N))
RHS = jnp.asarray(RNG.normal(size=N))

ALL = ["cg", "gmres", "bicgstab", "normal_cg", "lu", "cholesky", "auto", "qr", "inv"]
ALL += ["iterative_refinement"]
GENERAL = ["gmres", "bicgstab", "normal_cg", "lu", "auto", "qr", "inv", "iterative_refinement"]


@pytest.mark.parametrize("name", ALL)
def test_spd_system(name):
    solve = linear_solve.resolve(name)
    x = solve(lambda v: SPD @ v, RHS)
    np.testing.assert_allclose(x, np.linalg.solve(SPD, RHS), rtol=1e-8, atol=1e-10)


# Powers of two, which scaling b by rounds nothing: 2^±600 (‖b‖² under- or overflows float64)
# and 2^±70 in float32 (‖b‖² beyond 1e±38); 2^±20 where nothing overflows.
SCALES = [(jnp.float64, 2.0**600), (jnp.float64, 2.0**-600), (jnp.float64, 2.0**20)]
SCALES += [(jnp.float32, 2.0**70), (jnp.float32, 2.0**-70)]


@pytest.mark.parametrize("name", ALL)
def test_huge_and_tiny_right_hand_sides_family(name):
    """Every solver on b · 2^k returns its solution for b, times 2^k (the Krylov solvers compare
    ‖r‖² with tol² ‖b‖², which under- or overflowed: they stopped at once with x = 0, silently),
    with a warm start and an absolute tolerance scaled alike; the derivative in b, through the
    solve, is unchanged by the scale."""
    solve = linear_solve.resolve(name)
    for dtype, scale in SCALES:
        A, b = SPD.astype(dtype), RHS.astype(dtype)

        def matvec(v, A=A):
            return A @ v

        reference = np.asarray(solve(matvec, b), np.float64)
        x = np.asarray(solve(matvec, b * dtype(scale)), np.float64)
        rtol = 1e-12 if dtype == jnp.float64 else 1e-6
        np.testing.assert_allclose(x / scale, reference, rtol=rtol, err_msg=f"{dtype} {scale}")
    if name in ("cg", "gmres", "bicgstab"):
        big = 2.0**600
        x = linear_solve.resolve(name)(lambda v: SPD @ v, RHS * big, init=RHS * big, atol=1e-300)
        np.testing.assert_allclose(x / big, np.linalg.solve(SPD, RHS), rtol=1e-8)
    if name in ("cg", "gmres", "bicgstab", "iterative_refinement"):
        # Under jit with b a constant (XLA folded the scale back out of vdot(b, b): x = 0) and a
        # traced atol (a truth test of it raised).
        traced = jax.jit(lambda atol: solve(lambda v: SPD @ v, RHS * 2.0**600, atol=atol))
        np.testing.assert_allclose(traced(1e-300) / 2.0**600, np.linalg.solve(SPD, RHS), 1e-8)
    tiny = 2.0**-600
    jac = jax.jacobian(lambda b: solve(lambda v: SPD @ v, b))(RHS * tiny)  # A⁻¹ at any b
    np.testing.assert_allclose(jac, np.linalg.inv(SPD), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", GENERAL)
def test_nonsymmetric_system(name):
    x = linear_solve.resolve(name)(lambda v: NONSYM @ v, RHS)
    np.testing.assert_allclose(x, np.linalg.solve(NONSYM, RHS), rtol=1e-8, atol=1e-10)


def test_cg_on_negative_definite_system():
    x = linear_solve.cg(lambda v: -SPD @ v, RHS)
    np.testing.assert_allclose(x, np.linalg.solve(-SPD, RHS), rtol=1e-8)


@pytest.mark.parametrize("name", ALL)
def test_pytree_right_hand_side(name):
    # A block-diagonal operator on {"a": (2,), "b": (2, 2)}, with the SPD matrix on the flat vector.
    mat = SPD[:6, :6]

    def matvec(t):
        flat = jnp.concatenate([t["a"], t["b"].ravel()])
        out = mat @ flat
        return {"a": out[:2], "b": out[2:].reshape(2, 2)}

    b = {"a": RHS[:2], "b": RHS[2:6].reshape(2, 2)}
    x = linear_solve.resolve(name)(matvec, b)
    want = np.linalg.solve(mat, RHS[:6])
    assert_tree_allclose(x, {"a": want[:2], "b": want[2:].reshape(2, 2)}, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in ALL if n != "normal_cg"])
def test_ridge(name):
    x = linear_solve.resolve(name)(lambda v: SPD @ v, RHS, ridge=0.5)
    np.testing.assert_allclose(x, np.linalg.solve(SPD + 0.5 * np.eye(N), RHS), rtol=1e-8)


def test_normal_cg_ridge_is_on_the_normal_equations():
    x = linear_solve.normal_cg(lambda v: NONSYM @ v, RHS, ridge=0.3)
    want = np.linalg.solve(NONSYM.T @ NONSYM + 0.3 * np.eye(N), NONSYM.T @ RHS)
    np.testing.assert_allclose(x, want, rtol=1e-8)


def test_normal_cg_gives_minimum_norm_least_squares_solution():
    low_rank = jnp.asarray(RNG.normal(size=(N, 2)) @ RNG.normal(size=(2, N)))
    x = linear_solve.normal_cg(lambda v: low_rank @ v, RHS)
    np.testing.assert_allclose(x, np.linalg.pinv(low_rank) @ RHS, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["cg", "gmres", "bicgstab"])
def test_warm_start_and_preconditioner(name):
    solve = linear_solve.resolve(name)
    exact = np.linalg.solve(SPD, RHS)
    jacobi = 1.0 / jnp.diag(SPD)
    x = solve(lambda v: SPD @ v, RHS, init=jnp.asarray(exact), maxiter=1)
    np.testing.assert_allclose(x, exact, rtol=1e-8)
    x = solve(lambda v: SPD @ v, RHS, preconditioner=lambda v: jacobi * v)
    np.testing.assert_allclose(x, exact, rtol=1e-8)


def test_tolerance_and_maxiter_are_honoured():
    big = jnp.asarray(np.diag(np.linspace(1, 1e4, 300)))
    b = jnp.ones(300)
    loose = linear_solve.cg(lambda v: big @ v, b, tol=1e-2)
    tight = linear_solve.cg(lambda v: big @ v, b, tol=1e-12)
    exact = b / jnp.diag(big)
    assert np.linalg.norm(big @ loose - b) <= 1e-2 * np.linalg.norm(b) * 1.01
    assert np.linalg.norm(big @ loose - b) > 1e-6 * np.linalg.norm(b)
    np.testing.assert_allclose(tight, exact, rtol=1e-9)
    one_step = linear_solve.cg(lambda v: big @ v, b, maxiter=1)
    assert np.linalg.norm(big @ one_step - b) > 0.1 * np.linalg.norm(b)


def test_default_tolerance_by_dtype():
    assert linear_solve.default_tol(jnp.float64) == 1e-10
    assert 1e-5 < linear_solve.default_tol(jnp.float32) < 1e-4
    with pytest.raises(ValueError, match="tol must be a non-negative number"):
        linear_solve.cg(lambda v: v, RHS, tol=-1.0)


def test_auto_is_dense_when_small_and_matrix_free_when_large(monkeypatch):
    calls = []
    original = linear_solve._materialize

    def spy(matvec, b):
        calls.append(1)
        return original(matvec, b)

    monkeypatch.setattr(linear_solve, "_materialize", spy)
    linear_solve.auto(lambda v: SPD @ v, RHS)
    assert calls == [1]
    n = linear_solve.DENSE_MAX_SIZE + 1
    diag = jnp.linspace(1.0, 2.0, n)
    for symmetric in (True, False):
        x = linear_solve.auto(lambda v: diag * v, jnp.ones(n), symmetric=symmetric)
        np.testing.assert_allclose(x, 1.0 / diag, rtol=1e-8)
    assert calls == [1], "auto built a dense matrix above DENSE_MAX_SIZE"


def test_resolve():
    assert linear_solve.resolve(None) is linear_solve.auto
    assert linear_solve.resolve("gmres") is linear_solve.gmres
    custom = functools.partial(linear_solve.cg, tol=1e-3)
    assert linear_solve.resolve(custom) is custom
    with pytest.raises(ValueError, match="not a known linear solver"):
        linear_solve.resolve("svd")
    with pytest.raises(TypeError, match="solve must be"):
        linear_solve.resolve(3)


def test_spec_states_what_the_engine_needs_explicitly():
    spec = linear_solve.spec
    assert spec(functools.partial(linear_solve.cg, tol=1e-3)).tol == 1e-3
    assert spec(linear_solve.cg).tol is None and spec("cg").fun is linear_solve.cg
    assert spec(functools.partial(linear_solve.normal_cg, tol=1e-3)).least_squares
    assert not spec(linear_solve.cg).least_squares and not spec("gmres").takes_symmetric
    assert spec(None).takes_symmetric and spec(None).fun is linear_solve.auto

    def own(matvec, b, tol=1e-3):  # a default in a signature is not read: declare it
        return linear_solve.cg(matvec, b, tol=tol)

    assert spec(own) == linear_solve.Spec(own)
    declared = linear_solve.Spec(own, tol=1e-3)
    assert spec(declared) is declared
    x = declared(lambda v: SPD @ v, RHS)
    np.testing.assert_allclose(SPD @ x, RHS, rtol=1e-2)


def test_solvers_under_jit_and_vmap():
    mats = jnp.stack([SPD, 2 * SPD, SPD + jnp.eye(N)])

    @jax.jit
    def solve_all(mats, b):
        return jax.vmap(lambda m: linear_solve.cg(lambda v: m @ v, b))(mats)

    np.testing.assert_allclose(
        solve_all(mats, RHS), np.linalg.solve(mats, RHS[None, :, None])[..., 0], rtol=1e-8
    )


# ---------------------------------------------------------------------------------------------
# Families (issue 12, items 9 and 18): every solver in half precision; every solver on a
# non-square operator.

ALL_SOLVERS = ["auto", "cg", "gmres", "bicgstab", "normal_cg", "lu", "cholesky", "qr", "inv"]
ALL_SOLVERS += ["iterative_refinement"]


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name", ALL_SOLVERS)
def test_linear_solver_family_half_precision(name, dtype):
    # Solved in float32 and rounded back: as accurate as the half-precision data allows.
    A, b = SPD / N, RHS
    x = linear_solve.resolve(name)(lambda v: jnp.asarray(A, dtype) @ v, jnp.asarray(b, dtype))
    assert x.dtype == dtype
    want = np.linalg.solve(np.asarray(A), np.asarray(b))
    rtol = 5e-3 if dtype == jnp.float16 else 4e-2
    np.testing.assert_allclose(
        np.asarray(x, float), want, rtol=rtol, atol=rtol * np.abs(want).max()
    )


INT_A = jnp.array([[4, 1, 0], [1, 3, 1], [0, 1, 2]])  # symmetric positive definite
INT_B = jnp.array([1, -2, 3])


@pytest.mark.parametrize("name", ALL_SOLVERS)
def test_linear_solver_family_integer_data(name):
    """A system with whole-number data (an int matrix, an int b, an int warm start): the real
    solution, in the default float. gmres, bicgstab, normal_cg and iterative_refinement raised
    "matvec cannot be applied to a vector shaped like b" (their loops carried b's int dtype; JAXopt
    0.8.5's solvers all fail on it)."""
    want = np.linalg.solve(np.asarray(INT_A, float), np.asarray(INT_B, float))
    solve = linear_solve.resolve(name)
    for options in ({}, {"init": jnp.array([1, 0, 0])}):
        x = solve(lambda v: INT_A @ v, INT_B, **options)
        assert x.dtype == jnp.float64, (options, x.dtype)
        np.testing.assert_allclose(x, want, rtol=1e-9, err_msg=str(options))
    x = jax.jit(lambda b: solve(lambda v: INT_A @ v, b))(jnp.array([True, False, True]))
    np.testing.assert_allclose(x, np.linalg.solve(np.asarray(INT_A, float), [1.0, 0.0, 1.0]))


@pytest.mark.parametrize("name", ALL_SOLVERS)
def test_linear_solver_family_mixed_precision_pytree(name):
    """b a pytree of a float32 and a float64 leaf (a block-diagonal system): the solution, each
    leaf in its own dtype, solved in float64; and its derivative in b. cg returned both leaves
    in float64; gmres, bicgstab and iterative_refinement raised "matvec cannot be applied to a
    vector shaped like b" (a Krylov loop carries one dtype)."""
    big = SPD if name in ("cg", "cholesky") else NONSYM  # (cg and cholesky need it symmetric)

    def matvec(v):
        return {"a": jnp.asarray(SPD[:3, :3] / N, jnp.float32) @ v["a"], "b": big @ v["b"]}

    b = {"a": jnp.asarray(RHS[:3], jnp.float32), "b": RHS}
    solve = linear_solve.resolve(name)
    x = solve(matvec, b)
    assert (x["a"].dtype, x["b"].dtype) == (jnp.float32, jnp.float64)
    np.testing.assert_allclose(x["a"], np.linalg.solve(SPD[:3, :3] / N, RHS[:3]), rtol=1e-5)
    np.testing.assert_allclose(x["b"], np.linalg.solve(big, RHS), rtol=1e-8)
    grad = jax.grad(lambda b: jnp.sum(solve(matvec, b)["b"]))(b)
    assert grad["a"].dtype == jnp.float32
    np.testing.assert_allclose(grad["b"], np.linalg.solve(big.T, np.ones(N)), rtol=1e-7)
    np.testing.assert_allclose(grad["a"], 0.0)


WIDE = jnp.asarray(RNG.normal(size=(7, 4)))  # 7 × 4: x ∈ ℝ⁴, b ∈ ℝ⁷
WIDE_B = jnp.asarray(RNG.normal(size=7))


@pytest.mark.parametrize("name", ALL_SOLVERS)
def test_linear_solver_family_non_square_operator(name):
    solve = linear_solve.resolve(name)
    matvec = lambda v: WIDE @ v  # noqa: E731
    if name == "normal_cg":  # a least-squares solver: x shaped like init
        x = solve(matvec, WIDE_B, init=jnp.zeros(4))
        want = np.linalg.lstsq(np.asarray(WIDE), np.asarray(WIDE_B), rcond=None)[0]
        np.testing.assert_allclose(x, want, rtol=1e-8)
        with pytest.raises(ValueError, match=r"normal_cg: .*\(7,\).*init"):
            solve(matvec, WIDE_B)  # without init, x's shape is unknown
        return
    with pytest.raises(ValueError, match=r"\(7,\).*square"):
        solve(matvec, WIDE_B)
    # an operator that applies to b's space but leaves it: ℝ⁷ → ℝ⁴
    with pytest.raises(ValueError, match=r"\(7,\) to \(4,\).*square"):
        solve(lambda v: WIDE.T @ v, WIDE_B)


# ---------------------------------------------------------------------------------------------
# GMRES: our own restarted kernel (_gmres.py), without LAPACK.


def _ridge_system():
    X = jax.random.normal(jax.random.key(0), (300, 250))
    return X.T @ X + jnp.eye(250), jax.random.normal(jax.random.key(3), (250,))


def _nonsymmetric_system(n=120):
    a = jax.random.normal(jax.random.key(4), (n, n)) / (2 * n**0.5) + jnp.eye(n)
    return a, jax.random.normal(jax.random.key(5), (n,))


@pytest.mark.parametrize("restart", [None, 200, 20, 3])
def test_gmres_meets_the_tolerance_with_long_and_short_cycles(restart):
    """The 250-unknown ridge system where jax.scipy's incremental GMRES (cycles of 200) stops at
    a relative residual of 5e-8 for 1e-10; and a non-symmetric system."""
    for a, b in (_ridge_system(), _nonsymmetric_system()):
        x = jax.jit(
            lambda b, a=a: linear_solve.gmres(lambda v: a @ v, b, tol=1e-10, restart=restart)
        )(b)
        assert jnp.linalg.norm(b - a @ x) <= 1e-10 * jnp.linalg.norm(b)
        np.testing.assert_allclose(x, jnp.linalg.solve(a, b), rtol=1e-7, atol=1e-9)


def test_gmres_compiles_to_no_lapack_call():
    """No custom call (LAPACK's batched kernels hang jaxlib 0.10 on several CPU devices)."""
    a, b = _nonsymmetric_system()
    fun = jax.jit(jax.vmap(lambda b: linear_solve.gmres(lambda v: a @ v, b, tol=1e-10)))
    text = fun.lower(jnp.stack([b, -b])).compile().as_text()
    assert "custom_call_target" not in text


def test_gmres_derivatives_match_the_closed_form():
    """d/db of ½‖A⁻¹b‖² is A⁻ᵀA⁻¹b (reverse mode: the transposed solve); forward mode A⁻¹v."""
    a, b = _nonsymmetric_system()

    def loss(b):
        return 0.5 * jnp.sum(linear_solve.gmres(lambda v: a @ v, b, tol=1e-12) ** 2)

    expected = jnp.linalg.solve(a.T, jnp.linalg.solve(a, b))
    np.testing.assert_allclose(jax.grad(loss)(b), expected, rtol=1e-9, atol=1e-12)
    v = jnp.cos(jnp.arange(b.shape[0]))
    _, tangent = jax.jvp(lambda b: linear_solve.gmres(lambda u: a @ u, b, tol=1e-12), (b,), (v,))
    np.testing.assert_allclose(tangent, jnp.linalg.solve(a, v), rtol=1e-9, atol=1e-12)


def test_gmres_options_warm_start_ridge_preconditioner_maxiter_and_pytrees():
    a, b = _ridge_system()
    exact = jnp.linalg.solve(a, b)
    diag = jnp.diag(a)
    x = linear_solve.gmres(lambda v: a @ v, b, tol=1e-10, preconditioner=lambda v: v / diag)
    np.testing.assert_allclose(x, exact, rtol=1e-7, atol=1e-9)
    x = linear_solve.gmres(lambda v: a @ v - 2.0 * v, b, tol=1e-10, ridge=2.0)
    np.testing.assert_allclose(x, exact, rtol=1e-7, atol=1e-9)
    # A warm start at the solution: no cycle runs, the start comes back.
    x = linear_solve.gmres(lambda v: a @ v, b, tol=1e-8, init=exact)
    np.testing.assert_array_equal(x, exact)
    # maxiter: 5 products are not enough; the iterate is returned (the engine checks it).
    x = linear_solve.gmres(lambda v: a @ v, b, tol=1e-10, maxiter=5, restart=5)
    residual = jnp.linalg.norm(b - a @ x) / jnp.linalg.norm(b)
    assert 1e-8 < residual < 1.0
    # A pytree system: two blocks of the same matrix.
    tree_b = {"u": b[:100], "w": b[100:]}

    def tree_matvec(t):
        y = a @ jnp.concatenate([t["u"], t["w"]])
        return {"u": y[:100], "w": y[100:]}

    x = linear_solve.gmres(tree_matvec, tree_b, tol=1e-10)
    np.testing.assert_allclose(jnp.concatenate([x["u"], x["w"]]), exact, rtol=1e-7, atol=1e-9)


# Every numeric option of every solver, given a value of the wrong kind or out of range: a
# ValueError naming the option (never a TypeError from a comparison deep inside, nor a bool read
# as 1, nor a NaN or negative tolerance taken as a setting).
NUMERIC_OPTIONS = [
    (name, option)
    for name in ALL
    for option in ("tol", "atol", "ridge", "maxiter", "restart", "dense_max_size")
    if option in inspect.signature(getattr(linear_solve, name)).parameters
]


def test_the_numeric_options_family_is_found():
    assert len(NUMERIC_OPTIONS) >= 20, NUMERIC_OPTIONS
    assert {option for _, option in NUMERIC_OPTIONS} == {
        "tol",
        "atol",
        "ridge",
        "maxiter",
        "restart",
        "dense_max_size",
    }


@pytest.mark.parametrize(("name", "option"), NUMERIC_OPTIONS)
@pytest.mark.parametrize("value", [True, "1", [1.0], float("nan"), -1, None], ids=repr)
def test_a_numeric_option_of_the_wrong_kind_is_refused_by_name(name, option, value):
    solve = getattr(linear_solve, name)
    matvec = lambda v: SPD @ v  # noqa: E731
    none_is_a_default = option == "tol" or (
        option in ("maxiter", "restart") and name != "iterative_refinement"
    )
    if value is None and none_is_a_default:
        np.testing.assert_allclose(solve(matvec, RHS, **{option: None}), np.linalg.solve(SPD, RHS))
        return
    with pytest.raises(ValueError, match=rf"{name}: {option} must be"):
        solve(matvec, RHS, **{option: value})


def test_a_ridge_given_as_an_array_is_taken_unchecked():
    # λ may be a (traced) array: (A + λI) x = b with λ = 0.5 as an array, jitted or not.
    expected = np.linalg.solve(SPD + 0.5 * np.eye(N), RHS)
    for name in ("cg", "lu"):
        solve = getattr(linear_solve, name)
        got = jax.jit(lambda lam, s=solve: s(lambda v: SPD @ v, RHS, ridge=lam))(jnp.asarray(0.5))
        np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_a_bound_option_of_the_wrong_kind_is_refused_when_the_engine_is_built():
    import implicitdiff

    for name, option, value in [("cg", "tol", "1e-8"), ("gmres", "maxiter", True)]:
        solve = functools.partial(getattr(linear_solve, name), **{option: value})
        with pytest.raises(ValueError, match=rf"{name}: {option} must be"):
            implicitdiff.custom_root(lambda x, t: x - t, solve=solve)


def test_tolerances_given_as_numpy_or_jax_scalars_are_taken():
    expected = np.linalg.solve(SPD, RHS)
    for tol in (np.float32(1e-6), np.float64(1e-10), jnp.asarray(1e-10)):
        got = linear_solve.cg(lambda v: SPD @ v, RHS, tol=tol, atol=np.float64(0.0))
        np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["auto", "cg", "gmres", "bicgstab", "iterative_refinement"])
def test_spec_direct_forms_solve_as_their_solver(name):
    """The form the engine calls (Spec.direct: no scaled transposition rule of its own, the
    engine transposes the system itself), for the names and for a partial with options."""
    for solve in (name, functools.partial(linear_solve.resolve(name), tol=1e-11)):
        spec = linear_solve.spec(solve)
        assert spec.direct is not None and spec.direct is not spec.fun
        options = {"symmetric": True} if name == "auto" else {}
        x = spec.direct(lambda v: SPD @ v, RHS, **options)
        np.testing.assert_allclose(x, spec.fun(lambda v: SPD @ v, RHS), rtol=1e-9)
        np.testing.assert_allclose(x, np.linalg.solve(SPD, RHS), rtol=1e-8)
    assert linear_solve.spec("lu").direct is None  # (no transposition rule of its own)


COUNT_OPTIONS = [
    (n, o) for n, o in NUMERIC_OPTIONS if o in ("maxiter", "restart", "dense_max_size")
]


@pytest.mark.parametrize(("name", "option"), COUNT_OPTIONS)
def test_counts_given_as_numpy_or_concrete_jax_integers_are_taken(name, option):
    """maxiter=jnp.asarray(50) (a concrete JAX int, as a jnp computation gives one) was refused
    as "must be None or a positive int"; a NumPy int was taken. Both now solve as the Python int,
    directly and bound into the engine's solve (functools.partial); a float or a traced count is
    still refused by name."""
    import implicitdiff

    solve = getattr(linear_solve, name)
    matvec = lambda v: SPD @ v  # noqa: E731
    value = 40 if option != "dense_max_size" else 0
    expected = solve(matvec, RHS, **{option: value})
    for given in (np.int64(value), jnp.asarray(value)):
        np.testing.assert_array_equal(solve(matvec, RHS, **{option: given}), expected)
    bound = functools.partial(solve, **{option: jnp.asarray(value)})
    root = implicitdiff.custom_root(lambda x, t: SPD @ x - t, solve=bound)(lambda x0, t: x0)
    t = jnp.asarray(RHS)
    exact = np.linalg.solve(SPD, np.ones(N))
    grad = jax.grad(lambda t: jnp.sum(root(jnp.linalg.solve(SPD, t), t)))(t)
    np.testing.assert_allclose(grad, exact, rtol=1e-6)
    with pytest.raises(ValueError, match=rf"{name}: {option} must be"):
        solve(matvec, RHS, **{option: float(value) + 0.5})
    with pytest.raises(ValueError, match=rf"{name}: {option} must be"):
        jax.jit(lambda k: solve(matvec, RHS, **{option: k}))(value)


# A complex system: ℂ-linear operators (Hermitian positive definite, general) and ℝ-linear ones
# (v ↦ A v + c·v̄: the JVP of a non-holomorphic map), the reference solved in NumPy on the
# real pairs (Re, Im), where each is an ordinary real matrix.
_C_RNG = np.random.default_rng(21)
_C_N = 4
_C_M = _C_RNG.normal(size=(_C_N, _C_N)) + 1j * _C_RNG.normal(size=(_C_N, _C_N))
C_HERMITIAN = jnp.asarray(_C_M @ _C_M.conj().T + _C_N * np.eye(_C_N))  # eigenvalues ≥ 4
C_GENERAL = jnp.asarray(_C_M + 3 * np.eye(_C_N))
C_RHS = jnp.asarray(_C_RNG.normal(size=_C_N) + 1j * _C_RNG.normal(size=_C_N))
C_DIRECTION = jnp.asarray(_C_RNG.normal(size=_C_N) + 1j * _C_RNG.normal(size=_C_N))
COMPLEX_OPERATORS = {
    "hermitian": lambda v: C_HERMITIAN @ v,
    "general": lambda v: C_GENERAL @ v,
    # self-adjoint positive definite on the pairs (|1.5| below H's least eigenvalue)
    "r_linear_hermitian_plus_conj": lambda v: C_HERMITIAN @ v + 1.5 * jnp.conj(v),
    "r_linear_general_plus_conj": lambda v: C_GENERAL @ v + (0.5 + 0.7j) * jnp.conj(v),
}
_NEEDS_HERMITIAN = ("cg", "cholesky")  # (on the pairs: a symmetric positive definite matrix)


def _real_block(matvec):
    """The 2n × 2n real matrix of an ℝ-linear map of ℂⁿ on the pairs (Re, Im)."""
    columns = []
    for k in range(2 * _C_N):
        e = np.zeros(2 * _C_N)
        e[k] = 1.0
        w = np.asarray(matvec(jnp.asarray(e[:_C_N] + 1j * e[_C_N:])))
        columns.append(np.concatenate([w.real, w.imag]))
    return np.stack(columns, axis=1)


def _pairs(z):
    z = np.asarray(z)
    return np.concatenate([z.real, z.imag])


def _complex(pairs):
    return pairs[:_C_N] + 1j * pairs[_C_N:]


def _complex_cases():
    for name in ALL_SOLVERS:
        for operator in COMPLEX_OPERATORS:
            if name in _NEEDS_HERMITIAN and "hermitian" not in operator:
                continue
            yield name, operator


@pytest.mark.parametrize(("name", "operator"), list(_complex_cases()))
def test_linear_solver_family_complex_systems(name, operator):
    """A complex system: the solution, its derivative in b (forward and reverse), and the
    JAXopt-named form, against the real-pairs solve. Before: cholesky symmetrized with Aᵀ, not
    Aᴴ (0.04 off on a Hermitian A), normal_cg transposed without conjugating (0.03 and 129
    off), and for an ℝ-linear operator every dense solver (read from the real unit vectors),
    bicgstab and gmres (Krylov over ℂ) were wrong, silently."""
    matvec = COMPLEX_OPERATORS[operator]
    block = _real_block(matvec)
    solve = linear_solve.resolve(name)
    x = solve(matvec, C_RHS, tol=1e-12)
    assert x.dtype == jnp.complex128
    np.testing.assert_allclose(x, _complex(np.linalg.solve(block, _pairs(C_RHS))), atol=1e-10)
    # forward: x(b) is ℝ-linear, its JVP along v is A⁻¹ v
    _, tangent = jax.jvp(lambda b: solve(matvec, b, tol=1e-12), (C_RHS,), (C_DIRECTION,))
    want = _complex(np.linalg.solve(block, _pairs(C_DIRECTION)))
    np.testing.assert_allclose(tangent, want, atol=1e-10)
    # reverse: L(b) = Re⟨w, x(b)⟩ has pair gradient M⁻ᵀ w; jax.grad returns ∂L/∂Re − i ∂L/∂Im
    w = C_DIRECTION[::-1]
    grad = jax.grad(lambda b: jnp.real(jnp.vdot(w, solve(matvec, b, tol=1e-12))))(C_RHS)
    pair_grad = np.linalg.solve(block.T, _pairs(w))
    np.testing.assert_allclose(grad, np.conj(_complex(pair_grad)), atol=1e-10)


@pytest.mark.parametrize("name", ["cg", "gmres", "bicgstab", "normal_cg"])
def test_linear_solver_family_complex_warm_start_and_preconditioner(name):
    """A complex warm start and a complex preconditioner (here A⁻¹ itself, applied to complex
    vectors) go through the pairs with the system."""
    matvec = COMPLEX_OPERATORS["r_linear_hermitian_plus_conj"]
    block = _real_block(matvec)
    inverse = jnp.asarray(np.linalg.inv(block))

    def pre(v):
        pairs = inverse @ jnp.concatenate([jnp.real(v), jnp.imag(v)])
        return jax.lax.complex(pairs[:_C_N], pairs[_C_N:])

    want = _complex(np.linalg.solve(block, _pairs(C_RHS)))
    solve = linear_solve.resolve(name)
    options = {"init": jnp.asarray(want) + 1e-3}
    if name != "normal_cg":  # (its preconditioner approximates (AᵀA)⁻¹)
        options["preconditioner"] = pre
    x = solve(matvec, C_RHS, tol=1e-12, **options)
    np.testing.assert_allclose(x, want, atol=1e-10)


_DT_A = jnp.asarray(SPD / N + np.eye(N))  # symmetric positive definite, float64
_DT_B = RHS


@pytest.mark.parametrize("name", ALL_SOLVERS)
def test_linear_solver_family_matvec_of_another_dtype(name):
    """A matvec whose output dtype is not b's: a float64 matrix applied to a float32 b, or a
    matvec computing in float32 for a float64 b. The solution in the promoted dtype (float64,
    as A⁻¹b and the dense solvers give it), to the accuracy of the matvec, and its JVP in b.
    Before, cg (float32 b), gmres, bicgstab, normal_cg and iterative_refinement raised JAX's
    "carry input and carry output must have equal types" or "cotangent type does not match"
    (JAXopt 0.8.5's gmres, bicgstab and normal_cg the same)."""
    solve = linear_solve.resolve(name)
    want = np.linalg.solve(np.asarray(_DT_A), np.asarray(_DT_B))
    a32 = _DT_A.astype(jnp.float32)
    cases = [
        (lambda v: _DT_A @ v, _DT_B.astype(jnp.float32), 1e-7),  # (b rounded to float32)
        (lambda v: a32 @ v.astype(jnp.float32), _DT_B, 1e-6),
    ]
    for matvec, b, rtol in cases:
        x = solve(matvec, b)
        assert x.dtype == jnp.float64, (name, b.dtype, x.dtype)
        np.testing.assert_allclose(x, want, rtol=rtol, atol=rtol)
        _, tangent = jax.jvp(functools.partial(solve, matvec), (b,), (jnp.ones_like(b),))
        np.testing.assert_allclose(
            tangent, np.linalg.solve(np.asarray(_DT_A), np.ones(6)), rtol=rtol, atol=rtol
        )


@pytest.mark.parametrize("name", ALL)
def test_linear_solver_family_derivatives_in_the_matrix_and_b(name):
    """Every solver differentiated through, with respect to the matrix the matvec closes over
    and to b: reverse mode (G = −A⁻ᵀw xᵀ for wᵀA⁻¹b), forward mode along a symmetric change of
    A, and reverse mode under vmap over A, against ``jnp.linalg.solve``'s. Cholesky solves the
    symmetrized matrix (its documented precondition), so its gradient in A is ½(G + Gᵀ); on a
    general matrix only the solvers of GENERAL run."""
    solve = linear_solve.resolve(name)
    w = jnp.cos(jnp.arange(N) + 0.5)
    matrices = {"spd": SPD, **({"general": NONSYM} if name in GENERAL else {})}
    for kind, a in matrices.items():

        def ours(m, b):
            return w @ solve(lambda v: m @ v, b)

        def reference(m, b):
            return w @ jnp.linalg.solve(m, b)

        grad_a, grad_b = jax.grad(ours, argnums=(0, 1))(a, RHS)
        want_a, want_b = jax.grad(reference, argnums=(0, 1))(a, RHS)
        if name == "cholesky":
            want_a = 0.5 * (want_a + want_a.T)
        np.testing.assert_allclose(grad_a, want_a, rtol=1e-8, atol=1e-10, err_msg=kind)
        np.testing.assert_allclose(grad_b, want_b, rtol=1e-8, atol=1e-10, err_msg=kind)
        da = jnp.outer(w, w) + jnp.eye(N)  # symmetric
        tangent = jax.jvp(ours, (a, RHS), (da, w))[1]
        want = jax.jvp(reference, (a, RHS), (da, w))[1]
        np.testing.assert_allclose(tangent, want, rtol=1e-8, atol=1e-10, err_msg=kind)
        stack = jnp.stack([a, a + 0.5 * jnp.eye(N)])
        batched = jax.vmap(lambda m: jax.grad(ours)(m, RHS))(stack)
        want = jax.vmap(lambda m: jax.grad(reference)(m, RHS))(stack)
        if name == "cholesky":
            want = 0.5 * (want + jnp.swapaxes(want, 1, 2))
        np.testing.assert_allclose(batched, want, rtol=1e-8, atol=1e-10, err_msg=kind)
