"""Family "complex parameters" (issue 12, item 13), swept over every solver class.

GradientDescent, LBFGS and NonlinearCG minimize a real objective of complex parameters z (JAXopt
0.8.5's LBFGS and NonlinearCG do; its GradientDescent steps along jax.grad unconjugated and
diverges). ``jax.grad`` of a real f returns ∂f/∂x − i ∂f/∂y at z = x + iy (the conjugate of the
ℝ²ⁿ gradient read as complex numbers), so the solvers step along −conj(jax.grad f), use the real
inner product Re⟨u, v⟩, and differentiate the solution implicitly on the real pairs (Re z, Im z).

One objective holds both problems of the family,

    f(z, θ, λ, μ) = ‖A z − θ b‖² + λ ‖z‖² + ½ μ Σ |zᵢ|⁴,

- μ = 0, a least-squares problem with a closed form: z* = θ (AᴴA + λI)⁻¹ Aᴴ b,
  dz*/dθ = z*/θ, dz*/dλ = −(AᴴA + λI)⁻¹ z*;
- μ = 1, not quadratic: its Hessian is ℝ-linear in dz but not ℂ-linear (a ℂ-linear solve of the
  derivative's system would be wrong). Its derivative is checked against the implicit function
  theorem on the equivalent real problem in (Re z, Im z), d(x, y)*/dp = −(∇²f)⁻¹ ∂ₚ∇f, and
  against central finite differences of the solution.

Each mode (implicit or unrolled) is one compiled program: every member run on every row
(θ, λ, μ) of the sweep (lax.map), its forward derivative (``jax.linearize``) and the reverse
one (the transpose of the linearization). Every other solver raises a TypeError naming
init_params and the dtype, before compiling anything.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compilations, run_together, unpack
from test_trust import CASES  # every solver class of implicitdiff.solvers, with its call

from implicitdiff import solvers

RNG = np.random.default_rng(0)
M, N = 3, 2
# NumPy data (no eager JAX operation, hence no compilation, outside the tests' programs).
A = RNG.normal(size=(M, N)) + 1j * RNG.normal(size=(M, N))
B = RNG.normal(size=M) + 1j * RNG.normal(size=M)
W = RNG.normal(size=N) + 1j * RNG.normal(size=N)  # the outer function Re⟨w, z⟩
Z0 = np.zeros(N, np.complex128)
EPS = 1e-5  # central finite differences
# Rows (θ, λ, μ): the quadratic, the quartic, then the quartic at θ ± ε and at λ ± ε.
P_QUAD, P_QUART = (1.3, 0.7), (0.9, 0.3)
ROWS = np.array(
    [
        (*P_QUAD, 0.0),
        (*P_QUART, 1.0),
        (P_QUART[0] + EPS, P_QUART[1], 1.0),
        (P_QUART[0] - EPS, P_QUART[1], 1.0),
        (P_QUART[0], P_QUART[1] + EPS, 1.0),
        (P_QUART[0], P_QUART[1] - EPS, 1.0),
    ]
)


def objective(z, theta, lam, mu):
    r = jnp.asarray(A) @ z - theta * B
    return (
        jnp.sum(jnp.abs(r) ** 2)
        + lam * jnp.sum(jnp.abs(z) ** 2)
        + 0.5 * mu * jnp.sum(jnp.abs(z) ** 4)
    )


def closed_form(theta, lam):
    gram = A.conj().T @ A + lam * np.eye(N)
    return theta * np.linalg.solve(gram, A.conj().T @ B)


def closed_form_dlam(theta, lam):
    gram = A.conj().T @ A + lam * np.eye(N)
    return -np.linalg.solve(gram, closed_form(theta, lam))


@jax.jit
def _real_pair_derivative(z, row):
    def real_objective(xy, p):
        return objective(xy[:N] + 1j * xy[N:], p[0], p[1], row[2])

    xy, p = jnp.concatenate([z.real, z.imag]), row[:2]
    hessian = jax.hessian(real_objective)(xy, p)
    mixed = jax.jacfwd(jax.grad(real_objective), argnums=1)(xy, p)
    d = -jnp.linalg.solve(hessian, mixed)
    return jnp.linalg.norm(jax.grad(objective)(z, *row)), d[:N] + 1j * d[N:]


def real_pair_derivative(z, row):
    """(‖∇f(z)‖, dz*/d(θ, λ)) with dz*/d(θ, λ) from the implicit function theorem on f as a
    function of (Re z, Im z) ∈ ℝ²ᴺ, −(∇²f)⁻¹ ∂₍θ,λ₎∇f, read back as complex numbers (columns θ
    and λ). One compiled program, shared by every member."""
    return jax.device_get(_real_pair_derivative(z, row))


SUPPORTED = {
    "GradientDescent": lambda **o: solvers.GradientDescent(fun=objective, **o),
    "LBFGS": lambda **o: solvers.LBFGS(fun=objective, **o),
    "LBFGS-hager-zhang": lambda **o: solvers.LBFGS(fun=objective, linesearch="hager-zhang", **o),
    "LBFGS-backtracking": lambda **o: solvers.LBFGS(fun=objective, linesearch="backtracking", **o),
    "NonlinearCG": lambda **o: solvers.NonlinearCG(fun=objective, **o),
    "NonlinearCG-fletcher-reeves": lambda **o: solvers.NonlinearCG(
        fun=objective, method="fletcher-reeves", **o
    ),
}


def _row(solver):
    """On a row (θ, λ, μ): z*, the state, dz*/d(θ, λ) forward (columns) and the reverse-mode
    gradient of Re⟨w, z*⟩ with respect to (θ, λ) (the transpose of the same linearization)."""

    def row(r):
        def solve(p):
            return solver.run(Z0, p[0], p[1], r[2])

        z, lin, state = jax.linearize(solve, r[:2], has_aux=True)
        forward = jax.vmap(lin, out_axes=1)(jnp.eye(2))
        (reverse,) = jax.linear_transpose(lambda dp: jnp.real(jnp.vdot(W, lin(dp))), r[:2])(1.0)
        return z, state, forward, reverse

    return lambda rows: jax.lax.map(row, rows)  # (one row at a time: cheaper to compile than vmap)


def _solver(name, implicit):
    # (gradient descent's Armijo test reaches rounding near ‖∇f‖ ≈ 1e-8 on these problems, the
    # same on the real pairs; the others' slope tests go further)
    plain = name == "GradientDescent"
    options = {"tol": 1e-8 if plain else 1e-12, "implicit_diff": implicit}
    options["maxiter"] = 300 if plain else 100  # (unrolled: the length of the unrolled loop)
    return SUPPORTED[name](**options)


# Unrolled complex runs with the Hager-Zhang search are refused (see _line_search_solver).
REFUSED = {("LBFGS-hager-zhang", False)}


@functools.cache
def _results(implicit):
    """Every supported member in one compiled program (one per mode): name -> _row's outputs on
    every row of ROWS (or the exception of that member)."""
    members = [n for n in SUPPORTED if (n, implicit) not in REFUSED]
    return run_together({n: (_row(_solver(n, implicit)), (ROWS,)) for n in members}, _strict)


@contextlib.contextmanager
def _strict():
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        yield


def test_complex_family_catalog_marks():
    """The solvers declared complex-capable are exactly those of the catalog's complex_ok."""
    marked = {name for name, case in CASES.items() if case.complex_ok}
    assert marked == {name.split("-")[0] for name in SUPPORTED}
    for name, case in CASES.items():
        cls = type(case.solver())
        assert cls._complex_params == case.complex_ok, name


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "unrolled"])
@pytest.mark.parametrize("name", list(SUPPORTED))
def test_complex_family_supported(name, implicit):
    if (name, implicit) in REFUSED:
        with pytest.raises(TypeError, match="init_params"):
            _solver(name, implicit).run(Z0, *ROWS[0])
        return
    z, state, forward, reverse = unpack(_results(implicit)[name])
    assert z.dtype == np.complex128
    assert state.error.dtype == np.float64  # real, as a norm is
    assert not np.iscomplexobj(state.stepsize)
    assert np.all(state.converged), (name, state.error)
    plain = name == "GradientDescent"
    # (unrolled derivatives lag their iterates: by about gradient descent's tol, 1e-8, for it)
    rtol = 1e-9 if implicit or not plain else 1e-7

    # μ = 0: the closed form, forward (both columns) and reverse.
    theta, lam = P_QUAD
    expected = np.stack([closed_form(theta, lam) / theta, closed_form_dlam(theta, lam)], axis=1)
    np.testing.assert_allclose(z[0], closed_form(theta, lam), rtol=1e-9, atol=1e-9)
    assert state.iter_num[0] > 1  # (from z = 0: not solved by the first step)
    np.testing.assert_allclose(forward[0], expected, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(reverse[0], np.real(W.conj() @ expected), rtol=rtol, atol=rtol)

    # μ = 1: stationary; the derivative of the real problem in (Re z, Im z); finite differences.
    grad_norm, expected = real_pair_derivative(z[1], ROWS[1])
    assert grad_norm < (1e-8 if plain else 1e-11)
    np.testing.assert_allclose(forward[1], expected, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(reverse[1], np.real(W.conj() @ expected), rtol=rtol, atol=rtol)
    fd = np.stack([(z[2] - z[3]) / (2 * EPS), (z[4] - z[5]) / (2 * EPS)], axis=1)
    # (error of the differences: solution error / ε, ~1e-9 / 1e-5 for gradient descent)
    np.testing.assert_allclose(forward[1], fd, rtol=1e-7, atol=1e-4 if plain else 1e-7)


def _complex_init(case):
    if case.init is None:  # a QP: a complex primal start
        return solvers.KKTSolution(jnp.zeros(3, jnp.complex128), None, None)
    return jnp.asarray(case.init, jnp.complex128)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.complex_ok])
def test_complex_family_unsupported_raise(name):
    """Every other solver: a TypeError naming init_params and the dtype, before compiling."""
    case = CASES[name]
    solver = case.solver()
    init = _complex_init(case)
    with compilations() as compiled:
        with pytest.raises(TypeError, match=r"init_params.*complex128"):
            with warnings.catch_warnings():
                warnings.simplefilter("error", np.exceptions.ComplexWarning)
                case.run(solver, init, case.theta)
    assert not [n for n in compiled if "run_arrays" in n], name  # (the solver's program)
