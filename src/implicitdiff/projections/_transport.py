"""Projections onto transportation polytopes and the Birkhoff polytope.

The transportation polytope of two marginals a ∈ ℝⁿ₊ and b ∈ ℝᵐ₊ of equal total is

    U(a, b) = {P ∈ ℝⁿˣᵐ : P ≥ 0, P 1 = a, Pᵀ 1 = b},

and the Birkhoff polytope of doubly stochastic matrices is U(1, 1). Two projections are given:

- Euclidean: argmin_{P ∈ U(a, b)} ½ ‖P − X‖²_F (:func:`transport_polytope`,
  :func:`birkhoff_polytope`);
- KL (entropic, Sinkhorn): argmin_{P ∈ U(a, b)} KL(P ‖ exp(X)) (:func:`kl_transport_polytope`,
  :func:`kl_birkhoff_polytope`).

Both are solved in the dual, over potentials (α, β) ∈ ℝⁿ × ℝᵐ, where the primal solution is
P = φ(X + α 1ᵀ + 1 βᵀ), with φ(y) = max(y, 0) for the Euclidean projection and φ(y) = exp(y) for
the KL one. The dual is the concave function

    D(α, β) = ⟨α, a⟩ + ⟨β, b⟩ − Σᵢⱼ Φ(Xᵢⱼ + αᵢ + βⱼ) − (⟨α, 1⟩ − ⟨β, 1⟩)² / (2 (n + m)),

with Φ(y) = ½ max(y, 0)² (Euclidean) or exp(y) (KL), whose gradient is

    ∇D(α, β) = (a − P 1 − s 1, b − Pᵀ 1 + s 1),  s = (⟨α, 1⟩ − ⟨β, 1⟩) / (n + m).

The last term of D fixes the one direction (α + c 1, β − c 1) along which the dual without it is
constant (it leaves P unchanged). It does not change P: when ⟨a, 1⟩ = ⟨b, 1⟩, the maximizer of D
has s = 0 and is the maximizer of the dual without the term (the one with ⟨α, 1⟩ = ⟨β, 1⟩). When
the totals differ, summing the two halves of ∇D = 0 gives s = (⟨a, 1⟩ − ⟨b, 1⟩) / (n + m), so P is
the projection onto U(ā, b̄) with ā = a − s 1, b̄ = b + s 1: the marginals are first projected,
in the Euclidean sense, onto {⟨ā, 1⟩ = ⟨b̄, 1⟩}. (ā and b̄ must then be positive.)

Derivatives come from the implicit function theorem applied to ∇D(α, β; X, a, b) = 0
(:func:`implicitdiff.custom_root`); the solvers are never differentiated. The system matrix is
the Hessian of D, symmetric negative semi-definite. The extra term of D supplies the curvature
−1 along the direction (1, −1) that is otherwise null, so the Hessian is definite as soon as the
bipartite graph of the support {P > 0} (rows and columns as nodes) is connected: always for the
KL projection, and for the Euclidean one unless P splits into blocks each meeting its own
marginals (a permutation matrix in the Birkhoff polytope, say, which is common when X has a wide
spread). Each further block adds a null direction (1 on its rows, −1 on its columns), which
changes no entry of P. The derivative in X is then still defined (the system is consistent) and
CG, the default linear solver of the Euclidean projections, finds it; dense LU does not. (A
perturbation of a, b that changes the balance of a block has no derivative: P has a kink there.)
For perturbations of the marginals that change their totals, the derivative is that of the map
(a, b) ↦ (ā, b̄) ↦ P described above.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from implicitdiff import linear_solve
from implicitdiff.implicit import custom_root

__all__ = [
    "birkhoff_polytope",
    "kl_birkhoff_polytope",
    "kl_transport_polytope",
    "transport_polytope",
]

_LBFGS_MEMORY = 10


# ---------------------------------------------------------------------------------------------
# Arguments.


def _as_problem(x: Any, a: Any, b: Any, name: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """X, a, b as arrays of one floating dtype, with their shapes checked."""
    x, a, b = jnp.asarray(x), jnp.asarray(a), jnp.asarray(b)
    dtype = jnp.result_type(x, a, b)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    if x.ndim != 2:
        raise ValueError(f"{name}: x must be a matrix (2-D), got shape {x.shape}")
    n, m = x.shape
    if a.shape != (n,) or b.shape != (m,):
        raise ValueError(
            f"{name}: for x of shape {x.shape} the marginals must have shapes ({n},) and "
            f"({m},); got {a.shape} and {b.shape}"
        )
    return x.astype(dtype), a.astype(dtype), b.astype(dtype)


def _unpack_marginals(hyperparams: Any, name: str) -> tuple[Any, Any]:
    if isinstance(hyperparams, (jax.Array, np.ndarray)):  # an array would unpack along axis 0
        raise TypeError(
            f"{name}: hyperparams must be a pair (marginals_a, marginals_b), got an array of "
            f"shape {hyperparams.shape}"
        )
    try:
        a, b = hyperparams
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}: hyperparams must be a pair (marginals_a, marginals_b), got "
            f"{type(hyperparams).__name__}"
        ) from None
    return a, b


def _square(x: Any, name: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"{name}: x must be a square matrix, got shape {x.shape}")
    ones = jnp.ones(x.shape[0], dtype=x.dtype)
    return _as_problem(x, ones, ones, name)


def _resolve_tol(tol: float | None, dtype: Any) -> float:
    if tol is None:
        return linear_solve.default_tol(dtype)
    tol = float(tol)
    if not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    return tol


def _check_maxiter(maxiter: int) -> int:
    try:
        value = operator.index(maxiter)
    except TypeError:
        value = -1
    if isinstance(maxiter, bool) or value < 0:
        raise ValueError(f"maxiter must be a non-negative int, got {maxiter!r}")
    return value


def _threshold(tol: float, a: jax.Array, b: jax.Array) -> jax.Array:
    """The absolute stopping threshold tol · max(‖a‖∞, ‖b‖∞) on the marginal violation."""
    return tol * jnp.maximum(jnp.max(jnp.abs(a)), jnp.max(jnp.abs(b)))


# ---------------------------------------------------------------------------------------------
# The dual and its stationarity condition, shared by both projections.


def _relu(y: jax.Array) -> jax.Array:
    # where(y > 0, ...) rather than maximum: its derivative at y = 0 is 0, so the Jacobian is
    # that of the support {P > 0}.
    return jnp.where(y > 0, y, 0.0)


def _primal(kind: str, x: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    y = x + alpha[:, None] + beta[None, :]
    return _relu(y) if kind == "euclidean" else jnp.exp(y)


def _dual_gradient(kind: str, dual: tuple, x: jax.Array, a: jax.Array, b: jax.Array) -> tuple:
    """∇D(α, β) = (a − P1 − s1, b − Pᵀ1 + s1), s = (⟨α, 1⟩ − ⟨β, 1⟩) / (n + m)."""
    alpha, beta = dual
    p = _primal(kind, x, alpha, beta)
    s = (jnp.sum(alpha) - jnp.sum(beta)) / (x.shape[0] + x.shape[1])
    return a - jnp.sum(p, axis=1) - s, b - jnp.sum(p, axis=0) + s


def _euclidean_optimality(dual, x, a, b):
    return _dual_gradient("euclidean", dual, x, a, b)


def _kl_optimality(dual, x, a, b):
    return _dual_gradient("kl", dual, x, a, b)


def _projected_marginals(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(ā, b̄, s): the Euclidean projection of (a, b) onto {⟨ā, 1⟩ = ⟨b̄, 1⟩}, and its shift s."""
    s = (jnp.sum(a) - jnp.sum(b)) / (a.shape[0] + b.shape[0])
    return a - s, b + s, s


# ---------------------------------------------------------------------------------------------
# L-BFGS for a smooth convex function known only by its gradient.


def _line_search(grad_fn, z, g, d, slope, *, c2=0.9, target=0.05, max_steps=30):
    """A step t > 0 along the descent direction d with c2 · h(0) ≤ h(t) ≤ 0, h(t) = ∇f(z + td)·d.

    For convex f, h is non-decreasing: h(t) ≤ 0 means f decreased over [0, t], and h(t) ≥ c2 h(0)
    is the curvature condition that keeps L-BFGS's updates positive definite. Only gradients are
    used: near the solution, differences of function values drown in rounding, slopes do not.
    The bracket [lo, hi] (h(lo) < c2 h(0), h(hi) > 0) shrinks by safeguarded secant steps aimed at
    h = target · h(0); before a bracket exists, t grows. Returns (z + t d, its gradient, ok), where
    ok says that some t with h(t) ≤ 0 was found (the furthest one is returned if none qualified).
    """
    lower = c2 * slope
    aim = target * slope
    dtype = z.dtype
    inf = jnp.asarray(jnp.inf, dtype)

    def cond(state):
        _, _, _, _, _, _, _, _, accepted, step = state
        return jnp.logical_not(accepted) & (step < max_steps)

    def body(state):
        t, lo, h_lo, hi, h_hi, z_best, g_best, found, _, step = state
        z_t = z + t * d
        g_t = grad_fn(z_t)
        h = jnp.vdot(g_t, d)
        accepted = (h >= lower) & (h <= 0)
        early = h < lower
        descended = h <= 0
        z_best = jnp.where(descended, z_t, z_best)
        g_best = jnp.where(descended, g_t, g_best)
        found = found | descended
        lo, h_lo = jnp.where(early, t, lo), jnp.where(early, h, h_lo)
        hi, h_hi = jnp.where(h > 0, t, hi), jnp.where(h > 0, h, h_hi)
        # Inside a bracket: the secant root of h = aim, kept away from both ends.
        width = hi - lo
        denominator = jnp.where(h_hi > h_lo, h_hi - h_lo, 1.0)
        t_secant = lo + (aim - h_lo) * width / denominator
        t_inside = jnp.clip(t_secant, lo + 0.01 * width, hi - 0.01 * width)
        # No bracket yet (h < c2 h(0) so far): extrapolate the secant through (0, h(0)) and (t, h).
        growth = jnp.where(h > slope, (aim - slope) / jnp.where(h > slope, h - slope, 1.0), 20.0)
        t_outside = t * jnp.clip(growth, 2.0, 20.0)
        t_next = jnp.where(jnp.isfinite(hi), t_inside, t_outside)
        return t_next, lo, h_lo, hi, h_hi, z_best, g_best, found, accepted, step + 1

    zero = jnp.zeros((), dtype)
    init = (jnp.ones((), dtype), zero, slope, inf, inf, z, g, False, False, 0)
    state = jax.lax.while_loop(cond, body, init)
    return state[5], state[6], state[7]


def _two_loop(g, s_hist, y_hist, rho, h0):
    """−H g for the L-BFGS inverse-Hessian approximation H (newest pair last; rho = 0: unused)."""

    def newest_first(q, pair):
        s, y, r = pair
        c = r * jnp.vdot(s, q)
        return q - c * y, c

    q, coefficients = jax.lax.scan(newest_first, g, (s_hist, y_hist, rho), reverse=True)
    yy = jnp.vdot(y_hist[-1], y_hist[-1])
    sy = jnp.vdot(s_hist[-1], y_hist[-1])
    gamma = jnp.where(rho[-1] > 0, sy / jnp.where(yy > 0, yy, 1.0), h0)

    def oldest_first(r, pair):
        s, y, rh, c = pair
        return r + (c - rh * jnp.vdot(y, r)) * s, None

    r, _ = jax.lax.scan(oldest_first, gamma * q, (s_hist, y_hist, rho, coefficients))
    return -r


def _lbfgs(grad_fn: Callable, z0: jax.Array, h0: Any, gtol: jax.Array, maxiter: int):
    """Minimize a smooth convex f from z0 until ‖∇f‖∞ ≤ gtol, at most maxiter iterations.

    ``h0`` scales the first step (an estimate of 1 / the largest curvature).
    """
    memory = _LBFGS_MEMORY
    dtype = z0.dtype
    size = z0.shape[0]

    def cond(state):
        _, g, _, _, _, k, stalled = state
        return (k < maxiter) & (jnp.max(jnp.abs(g)) > gtol) & jnp.logical_not(stalled)

    def body(state):
        z, g, s_hist, y_hist, rho, k, _ = state
        d = _two_loop(g, s_hist, y_hist, rho, h0)
        slope = jnp.vdot(g, d)
        steepest = jnp.logical_not(slope < 0)  # not a descent direction (or NaN): restart
        d = jnp.where(steepest, -h0 * g, d)
        slope = jnp.where(steepest, -h0 * jnp.vdot(g, g), slope)
        z_new, g_new, ok = _line_search(grad_fn, z, g, d, slope)
        s, y = z_new - z, g_new - g
        sy = jnp.vdot(s, y)
        update = ok & (sy > 0)
        s_hist = jnp.where(update, jnp.roll(s_hist, -1, axis=0).at[-1].set(s), s_hist)
        y_hist = jnp.where(update, jnp.roll(y_hist, -1, axis=0).at[-1].set(y), y_hist)
        new_rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        rho = jnp.where(update, jnp.roll(rho, -1).at[-1].set(new_rho), rho)
        return z_new, g_new, s_hist, y_hist, rho, k + 1, jnp.logical_not(ok)

    history = jnp.zeros((memory, size), dtype)
    init = (z0, grad_fn(z0), history, history, jnp.zeros(memory, dtype), 0, False)
    z, *_ = jax.lax.while_loop(cond, body, init)
    return z


# ---------------------------------------------------------------------------------------------
# The two forward solvers (never differentiated: custom_root cuts them from the graph).


def _euclidean_init(x: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The dual solution if P ≥ 0 were dropped: P = X + α1ᵀ + 1βᵀ with marginals ā, b̄.

    Row and column sums give mα + ⟨β, 1⟩ 1 = ā − X1 and nβ + ⟨α, 1⟩ 1 = b̄ − Xᵀ1; the totals
    Sα = ⟨α, 1⟩ and Sβ are fixed by m Sα + n Sβ = ⟨ā, 1⟩ − ⟨X, 1⟩ and Sα − Sβ = (n + m) s, the
    value of the gauge at the maximizer of D. Exact when that P is non-negative.
    """
    n, m = x.shape
    a_bar, b_bar, s = _projected_marginals(a, b)
    gauge = (n + m) * s
    rhs = jnp.sum(a_bar) - jnp.sum(x)
    sum_beta = (rhs - m * gauge) / (n + m)
    sum_alpha = sum_beta + gauge
    alpha = (a_bar - jnp.sum(x, axis=1) - sum_beta) / m
    beta = (b_bar - jnp.sum(x, axis=0) - sum_alpha) / n
    return alpha, beta


def _euclidean_solver(init, x, a, b, *, maxiter, tol):
    n, m = x.shape
    alpha0, beta0 = init

    def grad_fn(z):  # the gradient of −D, flat
        g_alpha, g_beta = _euclidean_optimality((z[:n], z[n:]), x, a, b)
        return -jnp.concatenate([g_alpha, g_beta])

    # The Hessian of −D has row sums at most 2 max(n, m) + 1 (Gershgorin): a safe first step.
    h0 = 1.0 / (2.0 * max(n, m) + 1.0)
    z = _lbfgs(grad_fn, jnp.concatenate([alpha0, beta0]), h0, _threshold(tol, a, b), maxiter)
    return z[:n], z[n:]


def _sinkhorn_solver(init, x, a, b, *, maxiter, tol):
    n, m = x.shape
    a_bar, b_bar, s = _projected_marginals(a, b)
    log_a, log_b = jnp.log(a_bar), jnp.log(b_bar)
    gtol = _threshold(tol, a, b)
    f0, _ = init
    g0 = log_b - logsumexp(x + f0[:, None], axis=0)  # columns exact from the start

    def cond(state):
        _, _, error, k = state
        return (k < maxiter) & (error > gtol)

    def body(state):
        f, g, _, k = state
        lse_rows = logsumexp(x + g[None, :], axis=1)
        # Row violation of the current (f, g), whose columns are exact: the stopping criterion.
        error = jnp.max(jnp.abs(jnp.exp(f + lse_rows) - a_bar))
        f_next = log_a - lse_rows
        g_next = log_b - logsumexp(x + f_next[:, None], axis=0)
        done = error <= gtol  # keep the pair that was measured
        return jnp.where(done, f, f_next), jnp.where(done, g, g_next), error, k + 1

    init_state = (f0, g0, jnp.asarray(jnp.inf, x.dtype), 0)
    f, g, _, _ = jax.lax.while_loop(cond, body, init_state)
    # Move along (f − c, g + c), which leaves P unchanged, to the gauge ⟨f, 1⟩ − ⟨g, 1⟩ = (n + m) s
    # where ∇D vanishes (see the module docstring).
    c = (jnp.sum(f) - jnp.sum(g) - (n + m) * s) / (n + m)
    return f - c, g + c


@functools.partial(jax.jit, static_argnames=("kind", "solve"))
def _project_jit(x, a, b, maxiter, tol, *, kind, solve):
    # maxiter and tol are traced: changing them does not recompile.
    if kind == "euclidean":
        solver = functools.partial(_euclidean_solver, maxiter=maxiter, tol=tol)
        optimality = _euclidean_optimality
        init = _euclidean_init(x, a, b)
    else:
        solver = functools.partial(_sinkhorn_solver, maxiter=maxiter, tol=tol)
        optimality = _kl_optimality
        init = (jnp.zeros_like(a), jnp.zeros_like(b))
    solver = custom_root(optimality, solve=solve, symmetric=True)(solver)
    alpha, beta = solver(init, x, a, b)
    return _primal(kind, x, alpha, beta)


def _project(kind, x, a, b, maxiter, tol, solve):
    if solve is None:
        # The Euclidean dual's Hessian is singular when the support of P is disconnected (a
        # permutation matrix, say): CG still solves such consistent systems, LU does not.
        solve = "cg" if kind == "euclidean" else "auto"
    maxiter = jnp.asarray(_check_maxiter(maxiter))
    tol = jnp.asarray(_resolve_tol(tol, x.dtype), x.dtype)
    return _project_jit(x, a, b, maxiter, tol, kind=kind, solve=solve)


# ---------------------------------------------------------------------------------------------
# Public functions.


def transport_polytope(
    x: Any,
    hyperparams: tuple[Any, Any],
    *,
    maxiter: int = 1000,
    tol: float | None = None,
    solve: str | Callable | None = None,
) -> jax.Array:
    """Euclidean projection onto the transportation polytope U(a, b).

    Solves

        P* = argmin_{P ≥ 0, P 1 = a, Pᵀ 1 = b} ½ ‖P − X‖²_F

    through its dual: P* = max(X + α 1ᵀ + 1 βᵀ, 0), where (α, β) maximize the concave,
    piecewise-quadratic D(α, β) = ⟨α, a⟩ + ⟨β, b⟩ − ½ ‖max(X + α 1ᵀ + 1 βᵀ, 0)‖² −
    (⟨α, 1⟩ − ⟨β, 1⟩)² / (2 (n + m)) (the last term fixes the dual's one free direction and does
    not change P*; see the module docstring). D is maximized by L-BFGS, started from the exact
    solution of the problem without P ≥ 0, with a line search on slopes. Derivatives with
    respect to X, a and b come from the implicit function theorem on ∇D = 0.

    ``a`` and ``b`` must be positive with equal sums. If the sums differ, the marginals used are
    ā = a − s 1, b̄ = b + s 1 with s = (⟨a, 1⟩ − ⟨b, 1⟩) / (n + m) (and derivatives follow that
    map).

    Stopping criterion: ‖∇D(α, β)‖∞ ≤ tol · max(‖a‖∞, ‖b‖∞), that is, every row and column sum of
    P is within that distance of its marginal; or after ``maxiter`` iterations, or when the line
    search finds no step that decreases the dual objective (tol below what rounding allows); the
    last iterate is then returned, without warning.

    Args:
      x: the matrix X to project, shape (n, m).
      hyperparams: the pair (a, b) of marginals, shapes (n,) and (m,).
      maxiter: the most L-BFGS iterations.
      tol: relative tolerance of the marginals, see above; ``None`` means 1e-10 in float64 and
        about 2e-5 in float32 (``linear_solve.default_tol``).
      solve: the linear solver of the implicit derivative, as in :func:`implicitdiff.custom_root`
        (default ``"cg"``, which also solves the singular but consistent system of a solution
        whose support is disconnected, as a permutation matrix; dense ``"lu"`` fails there).

    Returns:
      P*, shape (n, m), in the floating dtype that X, a and b promote to.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.projections import transport_polytope
      >>> x = jnp.array([[1.0, 0.0, 2.0], [0.5, 1.0, -1.0]])
      >>> a, b = jnp.array([0.5, 0.5]), jnp.array([0.25, 0.25, 0.5])
      >>> p = transport_polytope(x, (a, b))
      >>> print(p.sum(axis=1).round(6), p.sum(axis=0).round(6))
      [0.5 0.5] [0.25 0.25 0.5 ]
    """
    name = "transport_polytope"
    a, b = _unpack_marginals(hyperparams, name)
    x, a, b = _as_problem(x, a, b, name)
    return _project("euclidean", x, a, b, maxiter, tol, solve)


def kl_transport_polytope(
    x: Any,
    hyperparams: tuple[Any, Any],
    *,
    maxiter: int = 1000,
    tol: float | None = None,
    solve: str | Callable | None = None,
) -> jax.Array:
    """KL (entropic) projection onto the transportation polytope U(a, b): Sinkhorn.

    Solves

        P* = argmin_{P ∈ U(a, b)} KL(P ‖ exp(X)),  KL(P ‖ K) = Σᵢⱼ Pᵢⱼ log(Pᵢⱼ / Kᵢⱼ) − Pᵢⱼ + Kᵢⱼ,

    whose solution is P* = diag(u) K diag(v) = exp(X + α 1ᵀ + 1 βᵀ), K = exp(X). (With
    X = −C/ε, P* is the entropy-regularized optimal transport plan argmin_{P ∈ U(a, b)} ⟨C, P⟩ +
    ε Σᵢⱼ Pᵢⱼ (log Pᵢⱼ − 1).) The potentials come from Sinkhorn's
    iterations in log space, α = log a − LSE_row(X + 1βᵀ), β = log b − LSE_col(X + α1ᵀ), with
    log-sum-exp for stability. Derivatives with respect to X, a and b come from the implicit
    function theorem on the stationarity of the dual D(α, β) = ⟨α, a⟩ + ⟨β, b⟩ −
    Σ exp(X + α 1ᵀ + 1 βᵀ) − (⟨α, 1⟩ − ⟨β, 1⟩)² / (2 (n + m)) (see the module docstring).

    ``a`` and ``b`` must be positive with equal sums. If the sums differ, the marginals used are
    ā = a − s 1, b̄ = b + s 1 with s = (⟨a, 1⟩ − ⟨b, 1⟩) / (n + m) (and derivatives follow that
    map).

    Stopping criterion: after each β update the column sums are exact; the iterations stop when
    every row sum is within tol · max(‖a‖∞, ‖b‖∞) of its marginal, and that (α, β) is returned;
    or after ``maxiter`` iterations (the last iterate is then returned, without warning). Sinkhorn
    converges linearly, more slowly as the spread of X grows.

    Args:
      x: the matrix X (log of the kernel K), shape (n, m).
      hyperparams: the pair (a, b) of marginals, shapes (n,) and (m,).
      maxiter: the most Sinkhorn iterations (one row and one column update each).
      tol: relative tolerance of the marginals, see above; ``None`` means 1e-10 in float64 and
        about 2e-5 in float32.
      solve: the linear solver of the implicit derivative, as in :func:`implicitdiff.custom_root`
        (default ``"auto"``).

    Returns:
      P*, shape (n, m), in the floating dtype that X, a and b promote to.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.projections import kl_transport_polytope
      >>> x = jnp.array([[1.0, 0.0, 2.0], [0.5, 1.0, -1.0]])
      >>> a, b = jnp.array([0.5, 0.5]), jnp.array([0.25, 0.25, 0.5])
      >>> p = kl_transport_polytope(x, (a, b))
      >>> print(p.sum(axis=1).round(4), p.sum(axis=0).round(4))
      [0.5 0.5] [0.25 0.25 0.5 ]
    """
    name = "kl_transport_polytope"
    a, b = _unpack_marginals(hyperparams, name)
    x, a, b = _as_problem(x, a, b, name)
    return _project("kl", x, a, b, maxiter, tol, solve)


def birkhoff_polytope(
    x: Any,
    hyperparams: None = None,
    *,
    maxiter: int = 1000,
    tol: float | None = None,
    solve: str | Callable | None = None,
) -> jax.Array:
    """Euclidean projection onto the Birkhoff polytope of doubly stochastic matrices.

    P* = argmin_{P ≥ 0, P 1 = 1, Pᵀ 1 = 1} ½ ‖P − X‖²_F for a square X:
    :func:`transport_polytope` with a = b = 1 (see it for the method, the stopping criterion,
    ‖P 1 − 1‖∞, ‖Pᵀ 1 − 1‖∞ ≤ tol, and the options). ``hyperparams`` is ignored.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.projections import birkhoff_polytope
      >>> p = birkhoff_polytope(jnp.array([[2.0, 0.0], [1.0, 0.5]]))
      >>> print(p.round(6))
      [[0.875 0.125]
       [0.125 0.875]]
    """
    del hyperparams
    x, a, b = _square(x, "birkhoff_polytope")
    return _project("euclidean", x, a, b, maxiter, tol, solve)


def kl_birkhoff_polytope(
    x: Any,
    hyperparams: None = None,
    *,
    maxiter: int = 1000,
    tol: float | None = None,
    solve: str | Callable | None = None,
) -> jax.Array:
    """KL projection onto the Birkhoff polytope: Sinkhorn scaling of exp(X) to doubly stochastic.

    P* = argmin_{P ≥ 0, P 1 = 1, Pᵀ 1 = 1} KL(P ‖ exp(X)) = diag(u) exp(X) diag(v) for a square X:
    :func:`kl_transport_polytope` with a = b = 1 (see it for the method, the stopping criterion,
    ‖P 1 − 1‖∞ ≤ tol with exact column sums, and the options). ``hyperparams`` is ignored.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.projections import kl_birkhoff_polytope
      >>> p = kl_birkhoff_polytope(jnp.log(jnp.array([[3.0, 1.0], [1.0, 3.0]])))
      >>> print(p.round(6))
      [[0.75 0.25]
       [0.25 0.75]]
    """
    del hyperparams
    x, a, b = _square(x, "kl_birkhoff_polytope")
    return _project("kl", x, a, b, maxiter, tol, solve)
