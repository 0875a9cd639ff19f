"""Shared test problems with closed-form solutions and closed-form derivatives, in float64.

Each :class:`Problem` is a family of inner problems x*(θ) indexed by one array hyperparameter θ,
with its exact solution and Jacobian ∂x*/∂θ computed without the library (linear algebra on a
known support or active set, or a numpy reference solve and the implicit formula with a dense
Hessian for logistic regression), and the same problem written in every form a solver consumes:

- ``fun(x, θ)``: the smooth objective to minimize (with ``prox``/``prox_hyper``, ``projection``/
  ``proj_hyper`` or ``bounds`` for the non-smooth or constrained part, when there is one);
- ``residual(x, θ)``: residuals r with the objective ½‖r‖² (least squares);
- ``root(x, θ)``: a function F with F(x*(θ), θ) = 0;
- ``fixed_point(x, θ)``: a map T with T(x*(θ), θ) = x*(θ);
- ``qp(θ)``: ``{"obj": (Q, c), "eq": (A, b) | None, "ineq": (G, h) | None, "box": (l, u) | None}``.

A form a problem does not have is None. The scalar outer loss used for hypergradients is
L(x) = ½‖x − target‖², so ∇(L∘x*)(θ) = Jᵀ(x* − target) with J = ∂x*/∂θ.

``theta`` is the hyperparameter at which single-problem checks run and ``thetas`` a batch of
``N_BATCH`` = 8 nearby values with the same support / active set (for vmap, scan, shard_map).
Every reference is itself checked in tests/solvers/test_matrix.py (optimality of the closed
form, Jacobian against central differences of the closed form).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import projections, prox

N_BATCH = 8


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One family x*(θ) with its closed form and the forms the solvers take (see module doc)."""

    name: str
    theta: np.ndarray
    thetas: np.ndarray
    init: Any
    solution: Callable[[Any], np.ndarray]
    jacobian: Callable[[Any], np.ndarray]
    target: np.ndarray
    # Closed form written in JAX (for the reference Hessian of the outer loss), if one exists.
    solution_jax: Callable | None = None
    # d²x*/dθ² for a problem without a JAX closed form, shape x.shape + θ.shape + θ.shape.
    second_derivative: Callable | None = None
    fun: Callable | None = None
    prox: Callable | None = None
    prox_hyper: Callable | None = None
    projection: Callable | None = None
    proj_hyper: Callable | None = None
    bounds: tuple | None = None
    residual: Callable | None = None
    root: Callable | None = None
    fixed_point: Callable | None = None
    qp: Callable | None = None
    host_solve: Callable | None = None  # numpy solve_fn(init, θ) -> x for HostSolver

    # -- the outer loss and its exact derivatives --------------------------------------------

    def outer_loss(self, x):
        """L(x) = ½‖x − target‖² (works on JAX and NumPy arrays)."""
        return 0.5 * jnp.sum((x - self.target) ** 2)

    def hypergradient(self, theta) -> np.ndarray:
        """∇(L∘x*)(θ) = Jᵀ(x*(θ) − target)."""
        x = np.asarray(self.solution(theta))
        jac = np.asarray(self.jacobian(theta))
        return np.tensordot(x - self.target, jac, axes=x.ndim)

    def outer_hessian(self, theta) -> np.ndarray:
        """∇²(L∘x*)(θ) = JᵀJ + Σᵢ (x* − target)ᵢ ∇²x*ᵢ."""
        theta = np.asarray(theta, np.float64)
        if self.solution_jax is not None:
            return np.asarray(_closed_form_outer_hessian(self)(theta))
        x = np.asarray(self.solution(theta)).reshape(-1)
        jac = np.asarray(self.jacobian(theta)).reshape(x.size, theta.size)
        second = np.asarray(self.second_derivative(theta)).reshape(x.size, theta.size, theta.size)
        hess = jac.T @ jac + np.einsum("i,ijk->jk", x - self.target.reshape(-1), second)
        return hess.reshape(theta.shape + theta.shape)


@functools.cache
def _closed_form_outer_hessian(problem: Problem) -> Callable:
    """θ ↦ ∇²(L∘x*)(θ) by ``jax.hessian`` of the JAX closed form, compiled once per problem."""
    return jax.jit(jax.hessian(lambda t: problem.outer_loss(problem.solution_jax(t))))


def _rng(seed: int) -> np.random.RandomState:
    return np.random.RandomState(seed)


def _batch(theta: np.ndarray, spread: float, seed: int, positive: bool = False) -> np.ndarray:
    """N_BATCH hyperparameters near θ (multiplicative when positive, else additive)."""
    noise = _rng(seed).randn(N_BATCH, *np.shape(theta))
    if positive:
        return np.asarray(theta * np.exp(spread * noise))
    return np.asarray(theta + spread * noise)


# ---------------------------------------------------------------------------------------------
# Ridge regression: θ = λ ∈ ℝᵈ₊, one penalty per coordinate.


def ridge_data(n: int = 6, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small regression design X (n, d) and targets y (n,), float64."""
    rng = _rng(seed)
    return rng.randn(n, d), rng.randn(n)


def ridge_objective(w, lam, X, y):
    """½‖Xw − y‖² + ½ Σⱼ λⱼ wⱼ² (λ a scalar or one penalty per coordinate)."""
    return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * jnp.sum(lam * w**2)


def ridge_gradient(w, lam, X, y):
    """∇_w of :func:`ridge_objective`: Xᵀ(Xw − y) + λ w, the stationarity condition."""
    return X.T @ (X @ w - y) + lam * w


def ridge_solution(lam, X, y):
    """(XᵀX + diag λ)⁻¹ Xᵀy, in JAX (differentiable: the reference for Hessians)."""
    d = X.shape[1]
    return jnp.linalg.solve(X.T @ X + jnp.broadcast_to(lam, (d,)) * jnp.eye(d), X.T @ y)


def ridge_jacobian(lam, X, y):
    """∂w*/∂λ = −(XᵀX + diag λ)⁻¹ diag(w*) for a vector λ; −(XᵀX + λI)⁻¹ w* for a scalar λ."""
    d = X.shape[1]
    lam = np.asarray(lam, np.float64)
    A = X.T @ X + np.broadcast_to(lam, (d,)) * np.eye(d)
    w = np.linalg.solve(A, X.T @ y)
    return -np.linalg.solve(A, w) if lam.ndim == 0 else -np.linalg.solve(A, np.diag(w))


def ridge(n: int = 6, d: int = 3, seed: int = 0) -> Problem:
    """min_w ½‖Xw − y‖² + ½ Σⱼ λⱼ wⱼ², θ = λ."""
    X, y = ridge_data(n, d, seed)
    theta = np.linspace(0.5, 2.0, d)

    def fun(w, lam):
        return ridge_objective(w, lam, X, y)

    return Problem(
        name="ridge",
        theta=theta,
        thetas=_batch(theta, 0.3, seed + 1, positive=True),
        init=jnp.zeros(d),
        solution=lambda lam: np.asarray(ridge_solution(jnp.asarray(lam), X, y)),
        jacobian=lambda lam: ridge_jacobian(lam, X, y),
        target=np.linspace(-1.0, 1.0, d),
        solution_jax=lambda lam: ridge_solution(lam, X, y),
        fun=fun,
        prox=prox.none,
        prox_hyper=lambda lam: None,
        residual=lambda w, lam: jnp.concatenate([X @ w - y, jnp.sqrt(lam) * w]),
        root=jax.grad(fun),
        qp=lambda lam: {"obj": (X.T @ X + jnp.diag(lam), -X.T @ y), "eq": None, "ineq": None},
        host_solve=lambda w0, lam: np.linalg.solve(X.T @ X + np.diag(lam), X.T @ y),
    )


# ---------------------------------------------------------------------------------------------
# Lasso: θ = λ > 0 (a scalar), closed form on the support with its signs.


def _lasso_reference(X, y, lam, iters: int = 20000):
    """Cyclic coordinate descent in numpy, to rounding (used only to find the support)."""
    w = np.zeros(X.shape[1])
    col = (X**2).sum(0)
    for _ in range(iters):
        for j in range(X.shape[1]):
            r = y - X @ w + X[:, j] * w[j]
            rho = X[:, j] @ r
            w[j] = np.sign(rho) * max(abs(rho) - lam, 0.0) / col[j]
    return w


def lasso(n: int = 8, d: int = 5, seed: int = 3) -> Problem:
    """min_w ½‖Xw − y‖² + λ‖w‖₁, θ = λ: on the support S with signs s,
    w_S = (X_SᵀX_S)⁻¹(X_Sᵀy − λ s), ∂w_S/∂λ = −(X_SᵀX_S)⁻¹ s, and 0 off S."""
    rng = _rng(seed)
    X = rng.randn(n, d)
    w_true = np.zeros(d)
    w_true[:2] = [1.5, -2.0]
    y = X @ w_true + 0.3 * rng.randn(n)
    theta = np.asarray(2.0)
    w_ref = _lasso_reference(X, y, float(theta), iters=3000)
    support = np.flatnonzero(np.abs(w_ref) > 1e-8)
    signs = np.sign(w_ref[support])
    XS = X[:, support]

    def solution_jax(lam):
        wS = jnp.linalg.solve(XS.T @ XS, XS.T @ y - lam * signs)
        return jnp.zeros(d, wS.dtype).at[support].set(wS)

    def jacobian(lam):
        jac = np.zeros(d)
        jac[support] = -np.linalg.solve(XS.T @ XS, signs)
        return jac

    thetas = np.asarray(theta * (1 + 0.1 * np.linspace(-1, 1, N_BATCH)))
    for lam in [theta, *thetas]:  # the support and signs hold, strictly, over the batch
        w = np.asarray(solution_jax(lam))
        corr = X.T @ (y - X @ w)
        off = np.setdiff1d(np.arange(d), support)
        assert np.all(np.sign(w[support]) == signs) and np.all(np.abs(w[support]) > 1e-2)
        assert np.all(np.abs(corr[off]) < lam - 0.05), "lasso: not strictly complementary"

    return Problem(
        name="lasso",
        theta=theta,
        thetas=thetas,
        init=jnp.zeros(d),
        solution=lambda lam: np.asarray(solution_jax(jnp.asarray(lam))),
        jacobian=jacobian,
        target=np.linspace(-1.0, 1.0, d),
        solution_jax=solution_jax,
        fun=lambda w, lam: 0.5 * jnp.sum((X @ w - y) ** 2),
        prox=prox.l1,
        prox_hyper=lambda lam: lam,
    )


# ---------------------------------------------------------------------------------------------
# Quadratic programs: θ = c (and b), closed form from the KKT system of the known active set.


def _spd(n: int, seed: int, shift: float = 0.5) -> np.ndarray:
    B = _rng(seed).randn(n, n)
    return B.T @ B / n + shift * np.eye(n)


def _simplex_support(Q, c):
    """The support S of argmin_{x ∈ Δ} ½xᵀQx + cᵀx, by enumerating the supports (small n)."""
    n = len(c)
    for size in range(n, 0, -1):
        for S in itertools.combinations(range(n), size):
            S = list(S)
            K = np.block([[Q[np.ix_(S, S)], np.ones((size, 1))], [np.ones((1, size)), 0.0]])
            z = np.linalg.solve(K, np.concatenate([-c[S], [1.0]]))
            x = np.zeros(n)
            x[S] = z[:-1]
            grad = Q @ x + c + z[-1]
            if np.all(z[:-1] > 0) and np.all(grad >= -1e-12):
                return np.asarray(S)
    raise AssertionError("no support found")


def simplex_qp(n: int = 4, seed: int = 5) -> Problem:
    """min_{x ∈ Δ} ½xᵀQx + θᵀx (Δ the probability simplex), θ = c. On the support S:
    [Q_SS 1; 1ᵀ 0][x_S; ν] = [−c_S; 1], so ∂x_S/∂c_S = −(K⁻¹)_SS and x is constant in c off S."""
    Q = _spd(n, seed)
    theta = np.array([0.0, 0.1, 1.5, 0.2])[:n]
    support = _simplex_support(Q, theta)
    off = np.setdiff1d(np.arange(n), support)
    m = len(support)
    K = np.block([[Q[np.ix_(support, support)], np.ones((m, 1))], [np.ones((1, m)), 0.0]])

    def solution_jax(c):
        z = jnp.linalg.solve(K, jnp.concatenate([-c[support], jnp.ones(1, c.dtype)]))
        return jnp.zeros(n, z.dtype).at[support].set(z[:-1])

    def jacobian(c):
        jac = np.zeros((n, n))
        jac[np.ix_(support, support)] = -np.linalg.inv(K)[:m, :m]
        return jac

    thetas = _batch(theta, 0.05, seed + 1)
    for c in [theta, *thetas]:  # the support holds, strictly complementary, over the batch
        z = np.linalg.solve(K, np.concatenate([-c[support], [1.0]]))
        x = np.asarray(solution_jax(jnp.asarray(c)))
        assert np.all(z[:-1] > 1e-2)
        assert np.all((Q @ x + c + z[-1])[off] > 0.1), "simplex QP: not strictly complementary"
    assert len(off) >= 1, "simplex QP: choose c so that one coordinate is inactive"

    return Problem(
        name="simplex_qp",
        theta=theta,
        thetas=thetas,
        init=jnp.full(n, 1.0 / n),
        solution=lambda c: np.asarray(solution_jax(jnp.asarray(c))),
        jacobian=jacobian,
        target=np.linspace(0.0, 0.5, n),
        solution_jax=solution_jax,
        fun=lambda x, c: 0.5 * x @ Q @ x + c @ x,
        projection=projections.simplex,
        proj_hyper=lambda c: 1.0,
        qp=lambda c: {
            "obj": (jnp.asarray(Q), c),
            "eq": (jnp.ones((1, n)), jnp.ones(1)),
            "ineq": (-jnp.eye(n), jnp.zeros(n)),
        },
    )


def box_qp(n: int = 4, seed: int = 7) -> Problem:
    """min_{0 ≤ x ≤ 1} ½xᵀQx + θᵀx, θ = c. With F the free coordinates and U those at 1,
    x_F = −Q_FF⁻¹(c_F + Q_FU 1), ∂x_F/∂c_F = −Q_FF⁻¹, and the bound coordinates constant."""
    Q = _spd(n, seed)
    theta = np.array([-0.5, 2.0, -3.0, 0.3])[:n]
    lower, upper = 0.0, 1.0
    # The active set, found by enumeration: each coordinate free, at 0 or at 1.
    for pattern in itertools.product((0, 1, 2), repeat=n):
        pattern = np.asarray(pattern)
        F, U = np.flatnonzero(pattern == 0), np.flatnonzero(pattern == 2)
        x = np.where(pattern == 2, upper, lower).astype(float)
        x[F] = -np.linalg.solve(Q[np.ix_(F, F)], theta[F] + Q[np.ix_(F, U)] @ x[U])
        g = Q @ x + theta
        if (
            np.all((x[F] > lower) & (x[F] < upper))
            and np.all(g[pattern == 1] >= 0)
            and np.all(g[pattern == 2] <= 0)
        ):
            break
    else:
        raise AssertionError("no active set found")
    free, at_upper, at_lower = F, U, np.flatnonzero(pattern == 1)
    assert len(free) and len(at_upper) and len(at_lower), "box QP: want every kind of coordinate"

    def solution_jax(c):
        x = jnp.where(jnp.asarray(pattern) == 2, upper, lower).astype(c.dtype)
        xF = -jnp.linalg.solve(
            Q[np.ix_(free, free)], c[free] + Q[np.ix_(free, at_upper)] @ x[at_upper]
        )
        return x.at[free].set(xF)

    def jacobian(c):
        jac = np.zeros((n, n))
        jac[np.ix_(free, free)] = -np.linalg.inv(Q[np.ix_(free, free)])
        return jac

    thetas = _batch(theta, 0.05, seed + 1)
    for c in [theta, *thetas]:
        x = np.asarray(solution_jax(jnp.asarray(c)))
        g = Q @ x + c
        assert np.all((x[free] > 0.05) & (x[free] < 0.95))
        assert np.all(g[at_lower] > 0.1) and np.all(g[at_upper] < -0.1), "box QP: not strict"

    return Problem(
        name="box_qp",
        theta=theta,
        thetas=thetas,
        init=jnp.full(n, 0.5),
        solution=lambda c: np.asarray(solution_jax(jnp.asarray(c))),
        jacobian=jacobian,
        target=np.linspace(0.0, 1.0, n),
        solution_jax=solution_jax,
        fun=lambda x, c: 0.5 * x @ Q @ x + c @ x,
        projection=projections.box,
        proj_hyper=lambda c: (lower, upper),
        bounds=(lower, upper),
        qp=lambda c: {
            "obj": (jnp.asarray(Q), c),
            "eq": None,
            "ineq": (
                jnp.concatenate([jnp.eye(n), -jnp.eye(n)]),
                jnp.concatenate([jnp.full(n, upper), jnp.full(n, -lower)]),
            ),
            "box": (lower, upper),
        },
    )


def eq_qp(n: int = 4, p: int = 2, seed: int = 9) -> Problem:
    """min ½xᵀQx + cᵀx s.t. Ax = b, θ = (c, b) concatenated. With K = [Q Aᵀ; A 0],
    [x; ν] = K⁻¹[−c; b], so ∂x/∂θ = (K⁻¹)[:n] diag(−1ₙ, 1ₚ)."""
    Q = _spd(n, seed)
    A = _rng(seed + 1).randn(p, n)
    K = np.block([[Q, A.T], [A, np.zeros((p, p))]])
    theta = np.concatenate([_rng(seed + 2).randn(n), _rng(seed + 3).randn(p)])

    def solution_jax(t):
        return jnp.linalg.solve(K, jnp.concatenate([-t[:n], t[n:]]))[:n]

    def jacobian(t):
        return np.linalg.inv(K)[:n] * np.concatenate([-np.ones(n), np.ones(p)])

    return Problem(
        name="eq_qp",
        theta=theta,
        thetas=_batch(theta, 0.3, seed + 4),
        init=jnp.zeros(n),
        solution=lambda t: np.asarray(solution_jax(jnp.asarray(t))),
        jacobian=jacobian,
        target=np.linspace(-1.0, 1.0, n),
        solution_jax=solution_jax,
        qp=lambda t: {"obj": (jnp.asarray(Q), t[:n]), "eq": (jnp.asarray(A), t[n:]), "ineq": None},
    )


# ---------------------------------------------------------------------------------------------
# Logistic regression: no closed form; a numpy Newton solve to rounding and the implicit formula.


def logistic(n: int = 10, d: int = 3, seed: int = 11) -> Problem:
    """min_w Σᵢ log(1 + exp(−yᵢ xᵢᵀw)) + ½ Σⱼ λⱼ wⱼ², θ = λ. Reference: Newton's method in
    numpy to rounding; ∂w/∂λ = −H⁻¹ diag(w) with H = Xᵀ diag(σ(1 − σ)) X + diag λ (dense);
    the outer Hessian by central differences of that exact hypergradient."""
    rng = _rng(seed)
    X = rng.randn(n, d)
    labels = np.where(X @ rng.randn(d) + 0.5 * rng.randn(n) > 0, 1.0, -1.0)
    theta = np.linspace(0.5, 1.5, d)

    def fun(w, lam):
        return jnp.sum(jax.nn.softplus(-labels * (X @ w))) + 0.5 * jnp.sum(lam * w**2)

    def hessian(w, lam):
        s = 1.0 / (1.0 + np.exp(-labels * (X @ w)))
        return X.T @ (X * (s * (1 - s))[:, None]) + np.diag(lam)

    @functools.lru_cache(maxsize=64)
    def _solve(key: bytes) -> np.ndarray:
        lam = np.frombuffer(key)
        w = np.zeros(d)
        for _ in range(100):
            s = 1.0 / (1.0 + np.exp(-labels * (X @ w)))
            grad = -X.T @ (labels * (1 - s)) + lam * w
            step = np.linalg.solve(hessian(w, lam), grad)
            w = w - step
            if np.max(np.abs(step)) < 1e-15:
                break
        return w

    def solution(lam):
        return _solve(np.asarray(lam, np.float64).tobytes()).copy()

    def jacobian(lam):
        lam = np.asarray(lam, np.float64)
        w = solution(lam)
        return -np.linalg.solve(hessian(w, lam), np.diag(w))

    problem = Problem(
        name="logistic",
        theta=theta,
        thetas=_batch(theta, 0.3, seed + 1, positive=True),
        init=jnp.zeros(d),
        solution=solution,
        jacobian=jacobian,
        target=np.linspace(-1.0, 1.0, d),
        fun=fun,
        root=jax.grad(fun),
        host_solve=lambda w0, lam: solution(lam),
    )

    def second_derivative(lam, eps=1e-5):  # central differences of the exact Jacobian
        lam = np.asarray(lam, np.float64)
        cols = []
        for j in range(d):
            e = np.zeros(d)
            e[j] = eps
            cols.append((jacobian(lam + e) - jacobian(lam - e)) / (2 * eps))
        return np.stack(cols, axis=-1)

    return dataclasses.replace(problem, second_derivative=second_derivative)


# ---------------------------------------------------------------------------------------------
# Fixed points.


def affine_fixed_point(n: int = 3, seed: int = 13) -> Problem:
    """x = T(x, θ) = Mx + θ with ‖M‖₂ = ½: x* = (I − M)⁻¹θ, ∂x*/∂θ = (I − M)⁻¹."""
    B = _rng(seed).randn(n, n)
    M = 0.5 * B / np.linalg.norm(B, 2)
    inv = np.linalg.inv(np.eye(n) - M)
    theta = np.linspace(-1.0, 1.0, n)
    return Problem(
        name="affine_fp",
        theta=theta,
        thetas=_batch(theta, 0.5, seed + 1),
        init=jnp.zeros(n),
        solution=lambda t: inv @ np.asarray(t),
        jacobian=lambda t: inv,
        target=np.linspace(0.5, -0.5, n),
        solution_jax=lambda t: jnp.asarray(inv) @ t,
        fixed_point=lambda x, t: M @ x + t,
        root=lambda x, t: M @ x + t - x,
        host_solve=lambda x0, t: inv @ t,
    )


def cos_fixed_point(n: int | None = 3) -> Problem:
    """x = T(x, θ) = ½cos(x) + θ entry by entry (n None: a scalar). With x' = ∂x*/∂θ:
    x' = 1/(1 + ½ sin x*), x'' = −½ cos(x*) x'³ (a diagonal Jacobian)."""
    theta = np.asarray(0.3) if n is None else np.linspace(-0.4, 0.8, n)

    def solution(t):
        t = np.asarray(t, np.float64)
        x = np.array(t, copy=True)
        for _ in range(60):
            x = x - (x - 0.5 * np.cos(x) - t) / (1 + 0.5 * np.sin(x))
        return x

    def first(t):
        return 1.0 / (1.0 + 0.5 * np.sin(solution(t)))

    def jacobian(t):
        return first(t) if np.ndim(t) == 0 else np.diag(first(t))

    def second_derivative(t):
        x, d1 = solution(t), first(t)
        d2 = -0.5 * np.cos(x) * d1**3
        if np.ndim(t) == 0:
            return d2
        out = np.zeros((n, n, n))
        out[np.arange(n), np.arange(n), np.arange(n)] = d2
        return out

    return Problem(
        name="cos_fp" if n is not None else "cos_scalar",
        theta=theta,
        thetas=_batch(theta, 0.1, 17),
        init=jnp.zeros(np.shape(theta)),
        solution=solution,
        jacobian=jacobian,
        target=np.asarray(0.2) if n is None else np.linspace(0.0, 0.4, n),
        second_derivative=second_derivative,
        fixed_point=lambda x, t: 0.5 * jnp.cos(x) + t,
        root=lambda x, t: 0.5 * jnp.cos(x) + t - x,
        host_solve=lambda x0, t: solution(t),
    )


@functools.cache
def get(name: str) -> Problem:
    """The problem of that name, built once per session."""
    return {
        "ridge": ridge,
        "lasso": lasso,
        "simplex_qp": simplex_qp,
        "box_qp": box_qp,
        "eq_qp": eq_qp,
        "logistic": logistic,
        "affine_fp": affine_fixed_point,
        "cos_fp": cos_fixed_point,
        "cos_scalar": lambda: cos_fixed_point(None),
    }[name]()


NAMES = (
    "ridge",
    "lasso",
    "simplex_qp",
    "box_qp",
    "eq_qp",
    "logistic",
    "affine_fp",
    "cos_fp",
    "cos_scalar",
)
