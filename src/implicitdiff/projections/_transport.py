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

from implicitdiff import _checks, _linesearch, _loop, linear_solve
from implicitdiff._projection_common import in_dtype_of_x
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
    return _checks.unpack_parts(name, "hyperparams", hyperparams, ("marginals_a", "marginals_b"))


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


def _active(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The rows and columns of non-zero mass (ā > 0, b̄ > 0); cut from the graph."""
    a_bar, b_bar, _ = jax.lax.stop_gradient(_projected_marginals(a, b))
    return a_bar > 0, b_bar > 0


def _primal(kind: str, x: jax.Array, alpha: jax.Array, beta: jax.Array, a=None, b=None):
    """P of the potentials: max(Y, 0) (Euclidean) or exp(Y) (KL), Y = X + α1ᵀ + 1βᵀ.

    With the marginals (a, b) given, rows and columns of no mass (ā_i = 0, b̄_j = 0) are written
    as the limit of the projection as their mass tends to 0⁺: their potentials (−∞ for KL, any
    low enough value for the Euclidean projection: a singular direction) are pinned at 0 and
    unused, and Pᵢⱼ = āᵢ qᵢⱼ with qᵢ the distribution the row's first bit of mass takes over the
    columns of mass, softmaxⱼ(Xᵢⱼ + βⱼ) (KL) or uniform over the largest Xᵢⱼ + βⱼ (Euclidean).
    That is exactly 0 at āᵢ = 0, and its derivative in āᵢ there is the one-sided one (as is
    its effect on the other rows, through the column sums). Columns alike.
    """
    y = x + alpha[:, None] + beta[None, :]
    if a is None:
        return _relu(y) if kind == "euclidean" else jnp.exp(y)
    rows, cols = _active(a, b)
    a_bar, b_bar, _ = _projected_marginals(a, b)
    cells = rows[:, None] & cols[None, :]
    if kind == "euclidean":
        inner = _relu(jnp.where(cells, y, -jnp.inf))
        first_bit = _uniform_over_largest
    else:
        inner = jnp.exp(jnp.where(cells, y, -jnp.inf))
        first_bit = jax.nn.softmax
    on_rows = a_bar[:, None] * first_bit(jnp.where(cols[None, :], x + beta[None, :], -jnp.inf), 1)
    on_cols = b_bar[None, :] * first_bit(jnp.where(rows[:, None], x + alpha[:, None], -jnp.inf), 0)
    edge = jnp.where(rows[:, None], on_cols, on_rows)
    return jnp.where(cells, inner, jnp.where(rows[:, None] | cols[None, :], edge, 0.0))


def _uniform_over_largest(y: jax.Array, axis: int) -> jax.Array:
    """1/k on the k largest entries of y along ``axis`` (ties), 0 elsewhere; no derivative."""
    y = jax.lax.stop_gradient(y)
    top = (y == jnp.max(y, axis=axis, keepdims=True)).astype(y.dtype)
    return top / jnp.sum(top, axis=axis, keepdims=True)


def _dual_gradient(kind: str, dual: tuple, x: jax.Array, a: jax.Array, b: jax.Array) -> tuple:
    """∇D(α, β) = (a − P1 − s1, b − Pᵀ1 + s1), s = (⟨α, 1⟩ − ⟨β, 1⟩) / (n + m).

    The potentials of rows and columns of no mass (see :func:`_primal`) are pinned, −α_i = 0,
    and left out of s (the Jacobian stays symmetric negative semi-definite)."""
    alpha, beta = dual
    n, m = x.shape
    rows, cols = _active(a, b)
    p = _primal(kind, x, alpha, beta, a, b)
    s = (jnp.sum(jnp.where(rows, alpha, 0.0)) - jnp.sum(jnp.where(cols, beta, 0.0))) / (n + m)
    return (
        jnp.where(rows, a - jnp.sum(p, axis=1) - s, -alpha),
        jnp.where(cols, b - jnp.sum(p, axis=0) + s, -beta),
    )


def _pinned(dual: tuple, a: jax.Array, b: jax.Array) -> jax.Array:
    """(α, β) flat with the potentials of rows and columns of no mass at 0, the others moved
    along (α − c, β + c) (P does not change) to the gauge of :func:`_dual_gradient`."""
    alpha, beta = dual
    n, m = alpha.shape[0], beta.shape[0]
    rows, cols = _active(a, b)
    _, _, s = _projected_marginals(a, b)
    alpha, beta = jnp.where(rows, alpha, 0.0), jnp.where(cols, beta, 0.0)
    c = (jnp.sum(alpha) - jnp.sum(beta) - (n + m) * s) / (jnp.sum(rows) + jnp.sum(cols))
    return jnp.concatenate([jnp.where(rows, alpha - c, 0.0), jnp.where(cols, beta + c, 0.0)])


def _euclidean_optimality(dual, x, a, b):
    return _dual_gradient("euclidean", dual, x, a, b)


def _kl_optimality(dual, x, a, b):
    return _dual_gradient("kl", dual, x, a, b)


def _balance(a: Any, b: Any, xp: Any = jnp) -> tuple[Any, Any]:
    """s = (⟨a, 1⟩ − ⟨b, 1⟩) / (n + m), and whether the totals are equal to rounding: within
    (n + m) eps (‖a‖₁ + ‖b‖₁), where s is taken as 0 (so that a zero entry stays 0: two
    histograms with empty bins, normalized apart, have totals 1e-16 apart, which made ā < 0
    and the set "empty"). ``xp``: jax.numpy, or NumPy for concrete marginals."""
    size = a.shape[0] + b.shape[0]
    difference = xp.sum(a) - xp.sum(b)
    eps = xp.finfo(xp.result_type(a, b)).eps
    rounding = size * eps * (xp.sum(xp.abs(a)) + xp.sum(xp.abs(b)))
    return difference / size, xp.abs(difference) <= rounding


def _projected_marginals(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(ā, b̄, s): the Euclidean projection of (a, b) onto {⟨ā, 1⟩ = ⟨b̄, 1⟩}, and its shift s
    (0 where the totals are equal to rounding; its derivative is always that of s)."""
    s, equal = _balance(a, b)
    s = s - jax.lax.stop_gradient(jnp.where(equal, s, 0.0))
    return a - s, b + s, s


# ---------------------------------------------------------------------------------------------
# L-BFGS on the shared kernel (implicitdiff._linesearch: the zoom line search, the two-loop).


def _lbfgs(value_and_grad: Callable, z0: jax.Array, h0: Any, gtol: jax.Array, maxiter: Any):
    """Minimize a smooth convex f from z0 until ‖∇f‖∞ ≤ gtol, at most maxiter iterations.

    Directions by the two-loop recursion (memory ``_LBFGS_MEMORY``, newest pair last, γ I the
    initial matrix, γ = ⟨s, y⟩ / ⟨y, y⟩ of the newest pair, ``h0`` before any pair), steps by the
    strong-Wolfe zoom line search (whose approximate-Wolfe fallback compares slopes where values
    of f drown in rounding, near the solution). Stops early when the line search finds no step
    at all (η = 0: tol below what rounding allows).
    """
    memory = _LBFGS_MEMORY
    dtype = z0.dtype
    order = jnp.arange(memory - 1, -1, -1)  # slots newest first

    def cond(state):
        _, _, g, _, _, _, k, stalled = state
        return (k < maxiter) & (jnp.max(jnp.abs(g)) > gtol) & jnp.logical_not(stalled)

    def body(state):
        z, f, g, s_hist, y_hist, rho, k, _ = state
        sy_last = jnp.vdot(s_hist[-1], y_hist[-1])
        yy_last = jnp.vdot(y_hist[-1], y_hist[-1])
        gamma = jnp.where(rho[-1] > 0, sy_last / jnp.where(yy_last > 0, yy_last, 1.0), h0)
        d = -_linesearch.two_loop(g, s_hist, y_hist, rho, gamma, order)
        steepest = jnp.logical_not(jnp.vdot(g, d) < 0)  # not a descent direction (or NaN)
        d = jnp.where(steepest, -h0 * g, d)
        search = _linesearch.zoom(value_and_grad, z, f, g, d, jnp.ones((), dtype))
        z_new = z + search.stepsize * d
        s, y = z_new - z, search.grad - g
        sy = jnp.vdot(s, y)
        update = sy > 0
        s_hist = jnp.where(update, jnp.roll(s_hist, -1, axis=0).at[-1].set(s), s_hist)
        y_hist = jnp.where(update, jnp.roll(y_hist, -1, axis=0).at[-1].set(y), y_hist)
        new_rho = 1.0 / jnp.where(update, sy, 1.0)
        rho = jnp.where(update, jnp.roll(rho, -1).at[-1].set(new_rho), rho)
        stalled = jnp.logical_not(search.stepsize > 0)
        return z_new, search.value, search.grad, s_hist, y_hist, rho, k + 1, stalled

    history = jnp.zeros((memory, z0.shape[0]), dtype)
    f0, g0 = value_and_grad(z0)
    init = (z0, f0, g0, history, history, jnp.zeros(memory, dtype), 0, False)
    return _loop.while_loop(cond, body, init)[0]


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

    def value_and_grad(z):  # −D and its gradient, flat
        alpha, beta = z[:n], z[n:]
        y = x + alpha[:, None] + beta[None, :]
        p = _relu(y)
        gauge = (jnp.sum(alpha) - jnp.sum(beta)) / (n + m)
        value = 0.5 * jnp.vdot(p, p) - jnp.vdot(alpha, a) - jnp.vdot(beta, b)
        value = value + 0.5 * (n + m) * gauge**2
        grad = jnp.concatenate([jnp.sum(p, axis=1) + gauge - a, jnp.sum(p, axis=0) - gauge - b])
        return value, grad

    # The Hessian of −D has row sums at most 2 max(n, m) + 1 (Gershgorin): a safe first step.
    h0 = 1.0 / (2.0 * max(n, m) + 1.0)
    z0 = jnp.concatenate([alpha0, beta0])
    z = _lbfgs(value_and_grad, z0, h0, _threshold(tol, a, b), maxiter)
    return z[:n], z[n:]


def _sinkhorn_solver(init, x, a, b, *, maxiter, tol):
    n, m = x.shape
    a_bar, b_bar, s = _projected_marginals(a, b)
    rows, cols = _active(a, b)
    # Rows and columns of no mass: left out (X there at −∞), their potentials pinned at 0.
    log_a = jnp.log(jnp.where(rows, a_bar, 1.0))
    log_b = jnp.log(jnp.where(cols, b_bar, 1.0))
    x = jnp.where(rows[:, None] & cols[None, :], x, -jnp.inf)
    gtol = _threshold(tol, a, b)
    f0, _ = init

    def column_step(f):
        return jnp.where(cols, log_b - logsumexp(x + f[:, None], axis=0), 0.0)

    g0 = column_step(f0)  # columns exact from the start

    def cond(state):
        _, _, error, k = state
        return (k < maxiter) & (error > gtol)

    def body(state):
        f, g, _, k = state
        lse_rows = logsumexp(x + g[None, :], axis=1)
        # Row violation of the current (f, g), whose columns are exact: the stopping criterion.
        error = jnp.max(jnp.where(rows, jnp.abs(jnp.exp(f + lse_rows) - a_bar), 0.0))
        f_next = jnp.where(rows, log_a - lse_rows, 0.0)
        g_next = column_step(f_next)
        done = error <= gtol  # keep the pair that was measured
        return jnp.where(done, f, f_next), jnp.where(done, g, g_next), error, k + 1

    init_state = (f0, g0, jnp.asarray(jnp.inf, x.dtype), 0)
    f, g, _, _ = _loop.while_loop(cond, body, init_state)
    # Move along (f − c, g + c) on the rows and columns of non-zero mass, which leaves P
    # unchanged, to the gauge ⟨f, 1⟩ − ⟨g, 1⟩ = (n + m) s where ∇D vanishes (module docstring).
    active = jnp.sum(rows) + jnp.sum(cols)
    c = (jnp.sum(f) - jnp.sum(g) - (n + m) * s) / active
    return jnp.where(rows, f - c, 0.0), jnp.where(cols, g + c, 0.0)


@functools.partial(jax.jit, static_argnames=("kind", "solve"))
def _project_jit(x, a, b, maxiter, tol, *, kind, solve):
    # maxiter and tol are traced: changing them does not recompile. Both projections are
    # homogeneous in the marginals: P(X; μa, μb) = μ P(X; a, b) for the KL one, and
    # P(μX; μa, μb) = μ P(X; a, b) for the Euclidean one. Solving at μ = 1 (μ a power of two:
    # the scaling is exact) keeps the dual's values and curvature O(1) at any magnitude (in
    # float32, ½‖P‖² at |P| ~ 1e30 would overflow).
    mu = _marginal_scale(a, b)
    x = x / mu if kind == "euclidean" else x
    a, b = a / mu, b / mu
    x = _without_shifts(x)
    level = _probe_level(x.dtype)
    threshold = 2.0 ** (level if kind == "euclidean" else level + 10)
    # Entries far below the largest finite one (−∞ included, a mask) are raised to a floor
    # ``threshold`` below it, so that the problem solved has a spread the ordinary path handles.
    # Where the floor's cells get P = 0 (exactly: the ReLU, or exp underflowing), the result is
    # the projection of X itself: lowering an entry outside the support changes neither P nor
    # the potentials that certify it (the dual gradient is the same). Otherwise mass is forced
    # onto cells far below the rest: the spread is wide throughout, and the limit path solves
    # the projection of X (NaN where X has −∞ there: no finite P is the limit then).
    floor = _finite_max(x) - threshold
    raised = x < floor
    lifted = jnp.where(raised, floor, x)
    # (The Euclidean solver starts as if the floor's cells were at the top, 0: from the floor,
    # its start would have potentials of the floor's size, too far to come back from exactly.)
    start = jnp.where(raised, 0.0, x)
    potentials = _potentials(
        *jax.lax.stop_gradient((lifted, a, b)), maxiter, tol, kind=kind, start=start
    )
    p = jax.lax.stop_gradient(_primal(kind, lifted, *potentials, a, b))
    # (The marginals must be met too: with the KL projection, cells that must carry mass but
    # sit 2^34 below the rest underflow to 0 while Sinkhorn fails to converge.)
    gradient = _dual_gradient(kind, potentials, jax.lax.stop_gradient(lifted), a, b)
    violation = jax.lax.stop_gradient(jnp.maximum(*(jnp.max(jnp.abs(g)) for g in gradient)))
    met = violation <= 2.0 * _threshold(tol, a, b)
    exact = jnp.all(jnp.where(raised, p == 0, True)) & (met | jnp.logical_not(jnp.any(raised)))

    def ordinary(operands):
        _, lifted, a, b = operands
        return _with_derivative(potentials, lifted, a, b, kind=kind, solve=solve)

    def limit(operands):
        x, _, a, b = operands
        finite = jnp.isfinite(x)
        spread = jax.lax.stop_gradient(
            jnp.max(jnp.where(finite, x, -jnp.inf)) - jnp.min(jnp.where(finite, x, jnp.inf))
        )
        p = _project_limit(
            jnp.where(finite, x, 0.0), a, b, spread, maxiter, tol, kind=kind, solve=solve
        )
        return _checks.nan_unless(jnp.all(x > -jnp.inf), p)

    p = jax.lax.cond(exact, ordinary, limit, (x, lifted, a, b))
    # +∞ in X: every finite P is beaten by moving mass onto it; no projection to return.
    return mu * _checks.nan_unless(jnp.all(x < jnp.inf), p)


def _finite_max(x: jax.Array, axis: Any = None) -> jax.Array:
    """The largest finite entry (along ``axis``), 0 where there is none; cut from the graph."""
    top = jnp.max(jnp.where(jnp.isfinite(x), x, -jnp.inf), axis=axis, keepdims=axis is not None)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))


def _without_shifts(x: jax.Array) -> jax.Array:
    """X less its rows' and then its columns' largest finite entries.

    Both projections are invariant to X + r1ᵀ + 1cᵀ (⟨P, r1ᵀ + 1cᵀ⟩ = ⟨ā, r⟩ + ⟨b̄, c⟩ is the
    same for every P of the polytope), and so are their derivatives. A row of entries near 1e12
    becomes one of O(1) entries, exactly where they are within a factor 2 of its largest one (a
    difference of close numbers is exact), which the ordinary path solves; left as they were,
    such a row would have made the spread of X wide and the result that of its limit.
    """
    x = x - _finite_max(x, axis=1)
    return x - _finite_max(x, axis=0)


def _probe_level(dtype: Any) -> int:
    """log₂ of the spread of X at which the limit path probes the LP support (see
    :func:`_project_limit`): where rounding in X + α1ᵀ + 1βᵀ stays far below the marginals."""
    return 24 if jnp.finfo(dtype).bits >= 64 else 12


def _project_limit(x, a, b, spread, maxiter, tol, *, kind, solve):
    """The projection at a spread of X too wide for X + α1ᵀ + 1βᵀ in floating point.

    At a wide spread both projections reach their limit, the face F = {P ∈ U(a, b), Pᵢⱼ = 0
    off S} of the linear program max ⟨X, P⟩ over U(a, b) (S its optimal support): the Euclidean
    projection of tX is constant, equal to argmin_{P ∈ F} ½‖P‖², once t is past a threshold, and
    the KL one is argmin_{P ∈ F} KL(P ‖ 1_S) (the entries off S underflow to 0). Both are solved
    exactly as the ordinary projections of Z = 0 on S, −∞ (a huge finite value) off S, whose
    values and potentials are O(1). S is probed by the Euclidean projection of X scaled by a
    power of two (exact) to the spread 2^L of ``_probe_level`` and to 2^(L+1): both supports
    must agree and the projection of Z must keep all its mass on S; otherwise the result is
    NaN (flagged, never silently wrong). Derivatives: Z carries X's tangent, and the implicit
    derivative of the projection of Z is that of the limit (on S, the same active set).
    """
    level = _probe_level(x.dtype)
    scale = jnp.exp2(level - jnp.ceil(jnp.log2(spread)))
    xs = jax.lax.stop_gradient(x)
    xs = xs - jnp.max(xs)  # a common shift changes neither projection
    a0, b0 = jax.lax.stop_gradient(a), jax.lax.stop_gradient(b)

    # (The probes need the support only: without Newton's method, which would put a third and
    # fourth copy of it in the compiled program. As one vmapped batch, the program compiled
    # more slowly still.)
    def probe(z):
        potentials = _potentials(z, a0, b0, maxiter, tol, kind="euclidean", newton=False)
        return _primal("euclidean", z, *potentials, a0, b0) > 0

    support = probe(xs * scale)
    support2 = probe(xs * (2 * scale))
    n, m = x.shape
    if kind == "euclidean":
        off = -4.0 * (n + m) * jnp.maximum(jnp.max(a0), jnp.max(b0)) - 4.0
    else:
        off = -0.125 * jnp.finfo(x.dtype).max
    # Value 0 on S and ``off`` elsewhere, tangent that of X (x − stop_gradient(x) is exactly 0).
    z = jnp.where(support, 0.0, off).astype(x.dtype) + (x - jax.lax.stop_gradient(x))
    # On S alone the KL dual's Hessian is singular too when S is disconnected (a permutation):
    # CG, not LU, for the default.
    solve = "cg" if isinstance(solve, str) and solve == "auto" else solve
    p = _project_unit(z, a, b, maxiter, tol, kind=kind, solve=solve)
    ok = jnp.all(support == support2) & jnp.all(jnp.where(support, True, p == 0))
    return _checks.nan_unless(ok, p)


def _project_unit(x, a, b, maxiter, tol, *, kind, solve):
    potentials = _potentials(*jax.lax.stop_gradient((x, a, b)), maxiter, tol, kind=kind)
    return _with_derivative(potentials, x, a, b, kind=kind, solve=solve)


def _potentials(x, a, b, maxiter, tol, *, kind, start=None, newton=True):
    """The dual solution (α, β) of the projection of X onto U(a, b) (not differentiated); the
    Euclidean solver starts from the dual solution of :func:`_euclidean_init` for ``start`` (a
    matrix like X, X itself by default). Where the first-order solver (L-BFGS, Sinkhorn) ends
    short of tol, Newton's method finishes (:func:`_newton_stages`), unless ``newton`` is False.
    """
    if kind == "euclidean":
        init = _euclidean_init(x if start is None else start, a, b)
        dual = _euclidean_solver(init, x, a, b, maxiter=maxiter, tol=tol)
    else:
        init = (jnp.zeros_like(a), jnp.zeros_like(b))
        dual = _sinkhorn_solver(init, x, a, b, maxiter=maxiter, tol=tol)
    if not newton:
        return dual
    z = _newton_stages(kind, _pinned(dual, a, b), x, a, b, maxiter=maxiter, tol=tol)
    n = x.shape[0]
    return z[:n], z[n:]


_CONTINUATION_SPREAD = 2.0**5  # the spread of tX at which the continuation starts


def _newton_stages(kind, z_found, x, a, b, *, maxiter, tol):
    """Newton's method (:func:`_newton`) from the first-order solver's potentials ``z_found``;
    where that ends short of tol too (spreads of X past ~1e4: its start is too far), along
    tX, t = 2⁻ᴷ, …, ½, 1, each stage started from twice the potentials of the last (they grow
    like t), the first from :func:`_euclidean_init` or 0 at the spread ``_CONTINUATION_SPREAD``
    of tX. One loop, whose stage −1 is the first attempt, so that Newton's method is compiled
    once. Returns the potentials with the smaller ‖∇D‖∞ of the two attempts (flat)."""
    gtol = _threshold(tol, a, b)
    finite = jnp.isfinite(x)
    spread = jnp.max(jnp.where(finite, x, -jnp.inf)) - jnp.min(jnp.where(finite, x, jnp.inf))
    stages = jnp.clip(jnp.ceil(jnp.log2(spread / _CONTINUATION_SPREAD)), 0, 60).astype(jnp.int32)
    if kind == "euclidean":
        z_first = _pinned(_euclidean_init(jnp.exp2(-stages.astype(x.dtype)) * x, a, b), a, b)
    else:
        z_first = jnp.zeros_like(z_found)

    def stage(carry):
        z, k, _, best, best_error = carry
        # tX at stage −1 and stage K: exact, a power of two.
        t = jnp.exp2(jnp.where(k < 0, 0, k - stages).astype(x.dtype))
        start = jnp.where(k < 0, z_found, jnp.where(k == 0, z_first, 2 * z))
        z, error = _newton(kind, start, t * x, a, b, maxiter=maxiter, tol=tol)
        # Stage −1 and the last stage solve X itself: the better of the two is kept.
        whole = (k < 0) | (k == stages)
        better = whole & (error < best_error)
        best, best_error = jnp.where(better, z, best), jnp.where(better, error, best_error)
        # Met at stage −1: done (k jumps past the stages).
        k = jnp.where((k < 0) & (error <= gtol), stages + 1, k + 1)
        return z, k, error, best, best_error

    def more(carry):
        _, k, error, _, _ = carry
        return (k <= stages) & jnp.isfinite(error)

    inf = jnp.asarray(jnp.inf, x.dtype)
    carry = (z_found, jnp.asarray(-1, jnp.int32), jnp.zeros((), x.dtype), z_found, inf)
    return _loop.while_loop(more, stage, carry)[3]


_NEWTON_MAXITER = 200  # at most this many Newton steps (and at most maxiter), each one CG solve


def _newton(kind, z0, x, a, b, *, maxiter, tol):
    """Maximize the dual D from z0 = (α, β) by Newton's method until ‖∇D‖∞ ≤ tol · max(‖a‖∞, ‖b‖∞).

    The first-order solvers slow down as the spread of X widens: Sinkhorn converges linearly at
    a rate that tends to 1 (rows 2e-2 off after 1000 iterations on a 100 × 120 X of spread ~100),
    and L-BFGS stalls on the piecewise-quadratic Euclidean dual (0.1 off at spread ~1e4). Newton
    does not: the Hessian of −D is, with W = P (KL) or W = 1[P > 0] (Euclidean, its generalized
    Hessian), v = (1, −1) and r = W1, c = Wᵀ1,

        H = [[diag(r), W], [Wᵀ, diag(c)]] + v vᵀ / (n + m),

    applied as a matvec (O(nm), no dense matrix). Each step solves (H + λI) d = −∇(−D) by
    Jacobi-preconditioned CG (jax.scipy), with λ = μ ‖∇D‖∞ (Levenberg–Marquardt: H is singular
    where the support of P is disconnected, and far from the solution the full Newton step
    overshoots). The step is taken when −D decreases by Armijo's rule, or, where values drown in
    rounding near the solution, when ‖∇D‖∞ does; then μ shrinks by 4, else it grows by 8 and the
    step is retried shorter (no line search: a second loop in the compiled program cost more
    compile time than the retries cost run time). It does nothing when z0 already meets tol,
    and stops when μ reaches 1/eps. Returns the potentials, flat, and their ‖∇D‖∞. Not
    differentiated: custom_root cuts it off.
    """
    n, m = x.shape
    dtype = x.dtype
    gtol = _threshold(tol, a, b)
    eps = jnp.finfo(dtype).eps

    # Rows and columns of no mass are pinned (their potentials stay at 0, see _primal):
    # gradient 0 there, the identity in the Hessian, and no part in the gauge.
    rows_on, cols_on = _active(a, b)
    on = jnp.concatenate([rows_on, cols_on])
    signs = jnp.concatenate([rows_on.astype(dtype), -cols_on.astype(dtype)])
    cells = rows_on[:, None] & cols_on[None, :]

    def value_grad_weights(z):
        alpha, beta = z[:n], z[n:]
        y = x + alpha[:, None] + beta[None, :]
        gauge = jnp.vdot(signs, z) / (n + m)
        y = jnp.where(cells, y, -jnp.inf)
        if kind == "euclidean":
            p = _relu(y)
            value, weights = 0.5 * jnp.vdot(p, p), (y > 0).astype(dtype)
        else:
            p = jnp.exp(y)
            value, weights = jnp.sum(p), p
        value = value - jnp.vdot(alpha, a) - jnp.vdot(beta, b) + 0.5 * (n + m) * gauge**2
        grad = jnp.concatenate([jnp.sum(p, axis=1) + gauge - a, jnp.sum(p, axis=0) - gauge - b])
        return value, jnp.where(on, grad, 0.0), weights

    def cond(state):
        _, _, grad, _, _, k, stalled = state
        error = jnp.max(jnp.abs(grad))
        limit = jnp.minimum(maxiter, _NEWTON_MAXITER)
        return (k < limit) & (error > gtol) & jnp.isfinite(error) & jnp.logical_not(stalled)

    def body(state):
        z, value, grad, weights, mu, k, _ = state
        error = jnp.max(jnp.abs(grad))
        damping = mu * error
        rows, cols = jnp.sum(weights, axis=1), jnp.sum(weights, axis=0)

        def hessian(d):
            u, v = d[:n], d[n:]
            inner = jnp.concatenate([rows * u + weights @ v, cols * v + weights.T @ u])
            gauge = jnp.vdot(signs, d) / (n + m) * signs
            return jnp.where(on, inner + gauge + damping * d, d)

        diagonal = jnp.where(on, jnp.concatenate([rows, cols]) + 1.0 / (n + m) + damping, 1.0)
        step, _ = jax.scipy.sparse.linalg.cg(
            hessian,
            -grad,
            tol=jnp.minimum(0.1, error),  # a forcing term: superlinear near the solution
            maxiter=10 * (n + m),
            M=lambda r: r / diagonal,
        )
        value_new, grad_new, weights_new = value_grad_weights(z + step)
        armijo = value_new <= value + 1e-4 * jnp.vdot(grad, step)
        noise = 8.0 * eps * (jnp.abs(value) + 1.0)
        flat = (value_new <= value + noise) & (jnp.max(jnp.abs(grad_new)) < error)
        ok = (armijo | flat) & jnp.isfinite(value_new)
        z = jnp.where(ok, z + step, z)
        value = jnp.where(ok, value_new, value)
        grad = jnp.where(ok, grad_new, grad)
        weights = jnp.where(ok, weights_new, weights)
        # Levenberg–Marquardt: less damping after a step taken, more after one refused (the
        # next step is shorter and closer to −∇); stalled when the damping is at its largest.
        mu = jnp.clip(jnp.where(ok, mu / 4, mu * 8), eps, 1 / eps)
        stalled = jnp.logical_not(ok) & (mu >= 1 / eps)
        return z, value, grad, weights, mu, k + 1, stalled

    value0, grad0, weights0 = value_grad_weights(z0)
    state = (z0, value0, grad0, weights0, jnp.ones((), dtype), 0, False)
    z, _, grad, *_ = _loop.while_loop(cond, body, state)
    return z, jnp.max(jnp.abs(grad))


def _with_derivative(potentials, x, a, b, *, kind, solve):
    """P of the potentials found for (X, a, b), with the implicit derivative of ∇D = 0 at them."""
    optimality = _euclidean_optimality if kind == "euclidean" else _kl_optimality
    found = custom_root(optimality, solve=solve, symmetric=True)(_found)
    alpha, beta = found(jax.lax.stop_gradient(potentials), x, a, b)
    return _primal(kind, x, alpha, beta, a, b)


def _found(potentials, x, a, b):
    """The "solver" of :func:`_with_derivative`: the potentials it is given, already found."""
    return potentials


def _marginal_scale(a: jax.Array, b: jax.Array) -> jax.Array:
    """μ = max(‖a‖∞, ‖b‖∞) rounded to a power of two (1 if that is 0 or not finite)."""
    mu = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(a)), jnp.max(jnp.abs(b))))
    ok = jnp.isfinite(mu) & (mu > 0)
    return jnp.where(ok, jnp.exp2(jnp.round(jnp.log2(jnp.where(ok, mu, 1.0)))), 1.0)


def _check_marginals(a: jax.Array, b: jax.Array, name: str) -> jax.Array | None:
    """Whether U(a, b) is non-empty: a, b and the balanced ā, b̄ non-negative.

    Concrete marginals: raise ValueError if not, else return None (checked in NumPy, so that
    marginals closed over by an outer ``jit`` count as concrete); traced: the traced flag.
    """
    if _checks.is_traced((a, b)):
        a_bar, b_bar, _ = _projected_marginals(a, b)
        return jnp.all(a >= 0) & jnp.all(b >= 0) & jnp.all(a_bar >= 0) & jnp.all(b_bar >= 0)
    a, b = np.asarray(a), np.asarray(b)
    s, equal = _balance(a, b, np)
    s = 0.0 if equal else s
    a_bar, b_bar = a - s, b + s
    if not (np.all(a >= 0) and np.all(b >= 0) and np.all(a_bar >= 0) and np.all(b_bar >= 0)):
        raise ValueError(
            f"{name}: the marginals (hyperparams a, b) must be non-negative (U(a, b) is empty "
            f"otherwise); got min(a) = {a.min()}, min(b) = {b.min()}, and after balancing "
            f"their totals min(ā) = {a_bar.min()}, min(b̄) = {b_bar.min()}"
        )
    return None


def _project(kind, name, x, a, b, maxiter, tol, solve):
    valid = _check_marginals(a, b, name)
    inputs = (x, a, b)
    if valid is not None:  # traced: an empty set gives NaN (the rule of implicitdiff._checks),
        # after solving a valid stand-in U(1, n/m) (NaN marginals would trouble the solvers).
        n, m = x.shape
        a = jnp.where(valid, a, jnp.ones_like(a))
        b = jnp.where(valid, b, jnp.full_like(b, n / m))
    if solve is None:
        # The Euclidean dual's Hessian is singular when the support of P is disconnected (a
        # permutation matrix, say): CG still solves such consistent systems, LU does not.
        solve = "cg" if kind == "euclidean" else "auto"
    maxiter = jnp.asarray(_check_maxiter(maxiter))
    tol = jnp.asarray(_resolve_tol(tol, x.dtype), x.dtype)
    # Inside shard_map, X, a, b, maxiter and tol all varying alike over the manual axes (the
    # solvers' loops and conds mix them; X per device with marginals shared failed in JAX's
    # checks). The identity elsewhere.
    everything = (x, a, b, maxiter, tol)
    x, a, b, maxiter, tol = _loop.vary_like(everything, everything)
    p = _project_jit(x, a, b, maxiter, tol, kind=kind, solve=solve)
    return p if valid is None else _checks.poison_unless(valid, p, inputs)


# ---------------------------------------------------------------------------------------------
# Public functions.


def _transport(kind: str, name: str, x, hyperparams, maxiter, tol, solve) -> jax.Array:
    """The projection onto U(a, b), (a, b) = ``hyperparams``, for the public function ``name``."""
    _checks.refuse_complex(x, name)
    a, b = _unpack_marginals(hyperparams, name)
    x, a, b = _as_problem(x, a, b, name)
    return _in_float32_if_half(_project, kind, name, x, a, b, maxiter, tol, solve)


def _birkhoff(kind: str, name: str, x, maxiter, tol, solve) -> jax.Array:
    """The projection onto the Birkhoff polytope U(1, 1) of a square X, for the public function
    ``name``."""
    _checks.refuse_complex(x, name)
    x, a, b = _square(x, name)
    return _in_float32_if_half(_project, kind, name, x, a, b, maxiter, tol, solve)


def _in_float32_if_half(project, kind, name, x, a, b, maxiter, tol, solve) -> jax.Array:
    """The projection of X (a, b of its dtype) in float32 when X is in a half precision, returned
    in it: the solvers' tolerance is below half-precision rounding (bfloat16 was 0.42 off)."""
    dtype = x.dtype
    if not _checks.is_half(dtype):
        return project(kind, name, x, a, b, maxiter, tol, solve)
    x, a, b = _checks.half_to_float32((x, a, b))
    return project(kind, name, x, a, b, maxiter, tol, solve).astype(dtype)


def _jaxopt_options(function: str, hyperparams: Any, make_solver: Any, use_semi_dual: Any):
    """JAXopt's ``make_solver`` / ``use_semi_dual``: accepted at their defaults, else a
    ``TypeError`` naming the alternative; JAXopt's positional ``make_solver`` (a callable
    where ``hyperparams`` stands here) is refused too."""
    if make_solver is not None or callable(hyperparams):
        raise TypeError(
            f"{function}: JAXopt's make_solver is not an option here: set the inner solver by "
            "maxiter=, tol= and solve= (keywords), and pass hyperparams second"
        )
    if use_semi_dual is not True:
        raise TypeError(
            f"{function}: use_semi_dual={use_semi_dual!r} is not supported: the semi-dual "
            "(JAXopt's default, use_semi_dual=True) is always solved here"
        )


@in_dtype_of_x
def transport_polytope(
    x: Any,
    hyperparams: tuple[Any, Any],
    *,
    maxiter: int = 1000,
    tol: float | None = None,
    solve: str | Callable | None = None,
    make_solver: Callable | None = None,
    use_semi_dual: bool = True,
) -> jax.Array:
    """Euclidean projection onto the transportation polytope U(a, b).

    Solves

        P* = argmin_{P ≥ 0, P 1 = a, Pᵀ 1 = b} ½ ‖P − X‖²_F

    through its dual: P* = max(X + α 1ᵀ + 1 βᵀ, 0), where (α, β) maximize the concave,
    piecewise-quadratic D(α, β) = ⟨α, a⟩ + ⟨β, b⟩ − ½ ‖max(X + α 1ᵀ + 1 βᵀ, 0)‖² −
    (⟨α, 1⟩ − ⟨β, 1⟩)² / (2 (n + m)) (the last term fixes the dual's one free direction and does
    not change P*; see the module docstring). D is maximized by L-BFGS, started from the exact
    solution of the problem without P ≥ 0, with a line search on slopes; where it ends short of
    tol (it stalls as the spread of X widens), Newton's method on D finishes, and past that,
    Newton's method continued along tX, t = 2⁻ᴷ … 1. Derivatives with respect to X, a and b come
    from the implicit function theorem on ∇D = 0.

    ``a`` and ``b`` must be non-negative with equal sums. If the sums differ, the marginals used
    are ā = a − s 1, b̄ = b + s 1 with s = (⟨a, 1⟩ − ⟨b, 1⟩) / (n + m) (and derivatives follow that
    map). A negative entry of a, b, ā or b̄ makes U(a, b) empty: concrete marginals raise
    ``ValueError``; traced ones (under ``jit``, ``vmap``, a derivative) give an all-NaN P. A
    zero entry (an empty bin) gives a row or column of zeros; the derivative in that entry is
    the one-sided one (the limit as it rises from 0).

    X may mask cells with −∞ (or any value far below the rest, −1e12 say): they get no mass,
    and their derivative is 0, as long as the other cells can carry the marginals (otherwise,
    for −∞, P is NaN). A +∞ entry gives NaN. Rows and columns of X are shifted by their largest
    entries first (P does not change), so a row of entries near 1e12 is solved at O(1).

    Stopping criterion: ‖∇D(α, β)‖∞ ≤ tol · max(‖a‖∞, ‖b‖∞), that is, every row and column sum of
    P is within that distance of its marginal. L-BFGS stops there, after ``maxiter`` iterations,
    or when its line search finds no step; then Newton's method (each step a CG solve with the
    Hessian as a matvec, Levenberg–Marquardt damping) runs until the criterion holds, for at most
    min(maxiter, 200) steps per stage, or until no step decreases −D (tol below what rounding
    allows). The best iterate is then returned, without warning: in float32 at spreads of X past
    about 1e3 rounding in X + α1ᵀ + 1βᵀ can keep the marginals from tol.

    Args:
      x: the matrix X to project, shape (n, m).
      hyperparams: the pair (a, b) of marginals, shapes (n,) and (m,).
      maxiter: the most L-BFGS iterations, and caps the Newton steps (default 1000).
      tol: relative tolerance of the marginals, see above; ``None`` (default) means 1e-10 in
        float64 and about 2e-5 in float32 (``linear_solve.default_tol``).
      solve: the linear solver of the implicit derivative, as in :func:`implicitdiff.custom_root`
        (default ``"cg"``, which also solves the singular but consistent system of a solution
        whose support is disconnected, as a permutation matrix; dense ``"lu"`` fails there).
      make_solver: JAXopt's option, accepted at its default (None); the inner solver is set by
        ``maxiter``, ``tol``, ``solve`` here (another value: ``TypeError`` naming it).
      use_semi_dual: JAXopt's option, accepted at its default (True): the semi-dual is always
        solved (False: ``TypeError`` naming it).

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
    _jaxopt_options("transport_polytope", hyperparams, make_solver, use_semi_dual)
    return _transport("euclidean", "transport_polytope", x, hyperparams, maxiter, tol, solve)


@in_dtype_of_x
def kl_transport_polytope(
    x: Any,
    hyperparams: tuple[Any, Any],
    *,
    maxiter: int = 1000,
    tol: float | None = None,
    solve: str | Callable | None = None,
    make_solver: Callable | None = None,
    use_semi_dual: bool = True,
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

    ``a`` and ``b`` must be non-negative with equal sums. If the sums differ, the marginals used
    are ā = a − s 1, b̄ = b + s 1 with s = (⟨a, 1⟩ − ⟨b, 1⟩) / (n + m) (and derivatives follow that
    map). A negative entry of a, b, ā or b̄ makes U(a, b) empty: concrete marginals raise
    ``ValueError``; traced ones (under ``jit``, ``vmap``, a derivative) give an all-NaN P. A
    zero entry (an empty bin) gives a row or column of zeros; the derivative in that entry is
    the one-sided one (the limit as it rises from 0).

    X may mask cells with −∞ (or any value far below the rest, −1e12 say): they get no mass as
    long as the other cells can carry the marginals (otherwise, for −∞, P is NaN). A +∞ entry
    gives NaN. Rows and columns of X are shifted by their largest entries first (P does not
    change), so a row of entries near 1e12 is solved at O(1).

    Stopping criterion: after each β update the column sums are exact; the iterations stop when
    every row sum is within tol · max(‖a‖∞, ‖b‖∞) of its marginal, and that (α, β) is returned;
    or after ``maxiter`` iterations. Sinkhorn converges linearly, more slowly as the spread of X
    grows (rows 2e-2 off after 1000 iterations at a spread of ~500 on 100 × 120): where it ends
    short of tol, Newton's method on the dual finishes (each step a CG solve with the Hessian
    as a matvec, Levenberg–Marquardt damping; at most min(maxiter, 200) steps), continued along
    tX, t = 2⁻ᴷ … 1, where that fails too. The best iterate is then returned, without warning:
    in float32, rounding in X + α1ᵀ + 1βᵀ (about spread · 6e-8 in each exponent) keeps the
    marginals from tol at spreads past about 1e3 (5e-3 off at 1e5).

    Args:
      x: the matrix X (log of the kernel K), shape (n, m).
      hyperparams: the pair (a, b) of marginals, shapes (n,) and (m,).
      maxiter: the most Sinkhorn iterations (one row and one column update each), and caps the
        Newton steps (default 1000).
      tol: relative tolerance of the marginals, see above; ``None`` (default) means 1e-10 in
        float64 and about 2e-5 in float32 (``linear_solve.default_tol``).
      solve: the linear solver of the implicit derivative, as in :func:`implicitdiff.custom_root`
        (default ``"auto"``).
      make_solver: JAXopt's option, accepted at its default (None); the inner solver is set by
        ``maxiter``, ``tol``, ``solve`` here (another value: ``TypeError`` naming it).
      use_semi_dual: JAXopt's option, accepted at its default (True): the semi-dual is always
        solved (False: ``TypeError`` naming it).

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
    _jaxopt_options("kl_transport_polytope", hyperparams, make_solver, use_semi_dual)
    return _transport("kl", "kl_transport_polytope", x, hyperparams, maxiter, tol, solve)


@in_dtype_of_x
def birkhoff_polytope(
    x: Any,
    hyperparams: None = None,
    *,
    maxiter: int = 1000,
    tol: float | None = None,
    solve: str | Callable | None = None,
    make_solver: Callable | None = None,
    use_semi_dual: bool = True,
) -> jax.Array:
    """Euclidean projection onto the Birkhoff polytope of doubly stochastic matrices.

    P* = argmin_{P ≥ 0, P 1 = 1, Pᵀ 1 = 1} ½ ‖P − X‖²_F for a square X:
    :func:`transport_polytope` with a = b = 1 (see it for the method, the stopping criterion,
    ‖P 1 − 1‖∞, ‖Pᵀ 1 − 1‖∞ ≤ tol, and the options). ``hyperparams`` is ignored.

    Args:
      x: the square matrix X to project, shape (n, n).
      hyperparams: ignored (None).
      maxiter: the most L-BFGS iterations, and caps the Newton steps (default 1000).
      tol: relative tolerance of the row and column sums; ``None`` (default) means 1e-10 in
        float64 and about 2e-5 in float32 (``linear_solve.default_tol``).
      solve: the linear solver of the implicit derivative, as in :func:`implicitdiff.custom_root`
        (default ``"cg"``).
      make_solver: JAXopt's option, accepted at its default (None); the inner solver is set by
        ``maxiter``, ``tol``, ``solve`` here (another value: ``TypeError`` naming it).
      use_semi_dual: JAXopt's option, accepted at its default (True): the semi-dual is always
        solved (False: ``TypeError`` naming it).

    Returns:
      P*, shape (n, n), doubly stochastic, in the floating dtype of X (integers: the default
        float).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.projections import birkhoff_polytope
      >>> p = birkhoff_polytope(jnp.array([[2.0, 0.0], [1.0, 0.5]]))
      >>> print(p.round(6))
      [[0.875 0.125]
       [0.125 0.875]]
    """
    _jaxopt_options("birkhoff_polytope", hyperparams, make_solver, use_semi_dual)
    return _birkhoff("euclidean", "birkhoff_polytope", x, maxiter, tol, solve)


@in_dtype_of_x
def kl_birkhoff_polytope(
    x: Any,
    hyperparams: None = None,
    *,
    maxiter: int = 1000,
    tol: float | None = None,
    solve: str | Callable | None = None,
    make_solver: Callable | None = None,
    use_semi_dual: bool = True,
) -> jax.Array:
    """KL projection onto the Birkhoff polytope: Sinkhorn scaling of exp(X) to doubly stochastic.

    P* = argmin_{P ≥ 0, P 1 = 1, Pᵀ 1 = 1} KL(P ‖ exp(X)) = diag(u) exp(X) diag(v) for a square X:
    :func:`kl_transport_polytope` with a = b = 1 (see it for the method, the stopping criterion,
    ‖P 1 − 1‖∞ ≤ tol with exact column sums, and the options). ``hyperparams`` is ignored.

    Args:
      x: the square matrix X to project, shape (n, n).
      hyperparams: ignored (None).
      maxiter: the most Sinkhorn iterations, and caps the Newton steps (default 1000).
      tol: relative tolerance of the row and column sums; ``None`` (default) means 1e-10 in
        float64 and about 2e-5 in float32 (``linear_solve.default_tol``).
      solve: the linear solver of the implicit derivative, as in :func:`implicitdiff.custom_root`
        (default ``"auto"``).
      make_solver: JAXopt's option, accepted at its default (None); the inner solver is set by
        ``maxiter``, ``tol``, ``solve`` here (another value: ``TypeError`` naming it).
      use_semi_dual: JAXopt's option, accepted at its default (True): the semi-dual is always
        solved (False: ``TypeError`` naming it).

    Returns:
      P*, shape (n, n), doubly stochastic, in the floating dtype of X (integers: the default
        float).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.projections import kl_birkhoff_polytope
      >>> p = kl_birkhoff_polytope(jnp.log(jnp.array([[3.0, 1.0], [1.0, 3.0]])))
      >>> print(p.round(6))
      [[0.75 0.25]
       [0.25 0.75]]
    """
    _jaxopt_options("kl_birkhoff_polytope", hyperparams, make_solver, use_semi_dual)
    return _birkhoff("kl", "kl_birkhoff_polytope", x, maxiter, tol, solve)
