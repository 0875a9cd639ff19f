"""Euclidean projections onto affine sets (hyperplane, halfspace, {y : Ay = b}) and the box
section {α ≤ y ≤ β, wᵀy = c} (internal; re-exported by :mod:`implicitdiff._projection_ops`, see
:mod:`implicitdiff.projections` for the catalog and its conventions).

Pure ``jax.numpy``, plus the engine for the box section: its multiplier is found by bisection
and differentiated implicitly (:func:`implicitdiff.implicit.custom_root`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from implicitdiff import _checks, tree
from implicitdiff._projection_common import (
    PROJECTIONS_TAKING_COMPLEX,
    as_dtype_of,
    check_feasible_flag,
    check_ordered,
    float_array,
    in_dtype_of_x,
    in_float32_if_half,
    nan_throughout,
    stable_norm,
)
from implicitdiff._typing import PyTree
from implicitdiff.implicit import custom_root

__all__ = ["affine_set", "box_section", "halfspace", "hyperplane"]


def _check_same_shape(name: str, a: jax.Array, x: jax.Array) -> None:
    if a.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x, {x.shape}; got {a.shape}")


def _normal_and_offset(
    x: PyTree, hyperparams: tuple[Any, Any], name: str
) -> tuple[PyTree, PyTree, jax.Array, jax.Array, Any]:
    """(x, â, b̂, a ≠ 0, the concrete (a, b) or None) for the set {y: aᵀy ⋈ b}.

    â = a / ‖a‖∞ and b̂ = b / ‖a‖∞ describe the same set (when a ≠ 0) and keep ‖â‖² of the
    order of 1, whatever the magnitude of a. a is a pytree with the structure and leaf shapes of
    x (an array for an array x); b a scalar.
    """
    a, b = _checks.unpack_parts(name, "hyperparams", hyperparams, ("a", "b"))
    x = tree.map(float_array, x)
    x_leaves, x_def = jax.tree_util.tree_flatten(x)
    if not x_leaves:
        raise ValueError(f"{name}: x has no leaves")
    a_leaves, a_def = jax.tree_util.tree_flatten(a)
    if a_def != x_def:
        raise ValueError(f"{name}: a must have the structure of x, {x_def}; got {a_def}")
    a_leaves = [as_dtype_of(leaf, xl) for leaf, xl in zip(a_leaves, x_leaves, strict=True)]
    for leaf, xl in zip(a_leaves, x_leaves, strict=True):
        _check_same_shape("a", leaf, xl)
    a = jax.tree_util.tree_unflatten(x_def, a_leaves)
    b = as_dtype_of(b, jnp.zeros((), tree.dtype(x)))
    if b.shape != ():
        raise ValueError(f"{name}: b must be a scalar, got shape {b.shape}")
    concrete = _checks.concrete_leaves((a, b))
    m = jax.lax.stop_gradient(tree.norm(a, jnp.inf))  # the set does not depend on it
    nonzero = m > 0
    safe = jnp.where(nonzero, m, 1)
    a_hat = tree.map(lambda leaf: leaf / safe.astype(leaf.dtype), a)
    return x, a_hat, b / safe, nonzero, concrete


def _empty_set_error(name: str, condition: str, b: np.ndarray) -> ValueError:
    return ValueError(
        f"{name}: a = 0 and b = {b.item()!r}: the set {{y: {condition}}} is empty (a must not "
        "be 0 unless the set is all of the space)"
    )


def _step_along(x: PyTree, a_hat: PyTree, excess: jax.Array, nonzero: jax.Array) -> PyTree:
    """x − (excess / ‖â‖²) â, with a finite (unused) value where a = 0."""
    square = jnp.real(tree.vdot(a_hat, a_hat))
    step = excess / jnp.where(nonzero, square, 1)
    return tree.map(lambda leaf, ai: (leaf - step * ai).astype(leaf.dtype), x, a_hat)


def _project_onto_constraint(
    x: PyTree, hyperparams: tuple[Any, Any], name: str, *, inequality: bool
) -> PyTree:
    """The projection of x onto {y: aᵀy ≤ b} (``inequality``) or {y: aᵀy = b}, (a, b) =
    ``hyperparams``, for the public function ``name``: x − (e / ‖â‖²) â with e = âᵀx − b̂,
    clipped at 0 for the inequality. For a = 0 the set is the whole space (p = x) or empty: a
    concrete (a, b) raises ``ValueError``, a traced one gives NaN."""
    x, a_hat, b_hat, nonzero, concrete = _normal_and_offset(x, hyperparams, name)
    if concrete is not None and not np.any([np.any(leaf != 0) for leaf in concrete[:-1]]):
        b = concrete[-1]
        if (b < 0) if inequality else (b != 0):
            raise _empty_set_error(name, "0ᵀy ≤ b" if inequality else "0ᵀy = b", b)
        return x
    excess = jnp.real(tree.vdot(a_hat, x)) - b_hat
    if inequality:
        excess = jnp.maximum(excess, 0)
    p = _step_along(x, a_hat, excess, nonzero)
    # a = 0: the whole space if b ≥ 0 (inequality) or b = 0, else the empty set (NaN).
    whole_space = (b_hat >= 0) if inequality else (b_hat == 0)
    valid = nonzero | whole_space
    p = tree.map(lambda leaf: _checks.nan_unless(valid, leaf), tree.where(nonzero, p, x))
    return nan_throughout(p)  # x with ±∞ across the set: ∞ − ∞


@in_dtype_of_x
def hyperplane(x: PyTree, hyperparams: tuple[Any, Any]) -> PyTree:
    """Projection onto the hyperplane {y: aᵀy = b}: p = x − ((aᵀx − b) / ‖a‖²) a.

    a is rescaled to ‖a‖∞ = 1 first (with b), so that ‖a‖² neither overflows nor underflows.
    For a = 0 the set is all of the space when b = 0 (p = x) and empty otherwise: a concrete
    (a, b) then raises ``ValueError``; a traced one gives NaN.

    Args:
      x: an array, or a pytree of arrays (aᵀy sums over all entries of all leaves).
      hyperparams: ``(a, b)``: a shaped like x (a pytree of the structure of x for a pytree x)
        and a scalar b.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> hyperplane(jnp.array([1.0, 1.0]), (jnp.array([1.0, 0.0]), 0.0))
      Array([0., 1.], dtype=float32)
    """
    _checks.refuse_complex(x, "hyperplane", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    return _project_onto_constraint(x, hyperparams, "hyperplane", inequality=False)


@in_dtype_of_x
def halfspace(x: PyTree, hyperparams: tuple[Any, Any]) -> PyTree:
    """Projection onto the halfspace {y: aᵀy ≤ b}: p = x − (max(aᵀx − b, 0) / ‖a‖²) a.

    a is rescaled to ‖a‖∞ = 1 first (with b), so that ‖a‖² neither overflows nor underflows.
    For a = 0 the set is all of the space when b ≥ 0 (p = x) and empty when b < 0: a concrete
    (a, b) then raises ``ValueError``; a traced one gives NaN.

    Args:
      x: an array, or a pytree of arrays (aᵀy sums over all entries of all leaves).
      hyperparams: ``(a, b)``: a shaped like x (a pytree of the structure of x for a pytree x)
        and a scalar b.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> halfspace(jnp.array([2.0, 1.0]), (jnp.array([1.0, 0.0]), 1.0))
      Array([1., 1.], dtype=float32)
    """
    _checks.refuse_complex(x, "halfspace", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    return _project_onto_constraint(x, hyperparams, "halfspace", inequality=True)


def _affine_factors(A: jax.Array, b: jax.Array):
    """The SVD A = U diag(σ) Vᵀ (thin), the mask of the singular values kept as nonzero, and
    whether b lies in the range of A (up to rounding).

    Singular values σ ≤ max(m, n) · eps · σ_max are treated as zero (NumPy's ``matrix_rank``
    rule). b is in the range when the least-norm solution y₀ = A⁺b satisfies A y₀ = b to
    rounding: ‖A y₀ − b‖ ≤ 8 max(m, n) eps (σ_max ‖y₀‖ + ‖b‖).
    """
    m, n = A.shape
    eps = jnp.finfo(A.dtype).eps
    U, sigma, Vt = jnp.linalg.svd(_checks.for_lapack(A), full_matrices=False)
    sigma_max = jnp.max(sigma, initial=0)
    kept = sigma > max(m, n) * eps * sigma_max
    inverse = jnp.where(kept, 1 / jnp.where(kept, sigma, 1), 0)
    y0 = Vt.T @ (inverse * (U.T @ b))
    residual = A @ y0 - b
    bound = 8 * max(m, n) * eps * (sigma_max * stable_norm(y0)[0] + stable_norm(b)[0])
    consistent = stable_norm(residual)[0] <= bound
    return U, inverse, Vt, kept, y0, consistent


@jax.custom_jvp
def _affine_projection(x: jax.Array, A: jax.Array, b: jax.Array) -> jax.Array:
    """p = x − A⁺(Ax − b) = (I − A⁺A) x + A⁺b, NaN if b is not in the range of A."""
    _, _, Vt, kept, y0, consistent = _affine_factors(A, b)
    row_part = Vt.T @ jnp.where(kept, Vt @ x, 0)  # A⁺A x, the component of x in the row space
    return _checks.nan_unless(consistent, x - row_part + y0)


@_affine_projection.defjvp
def _affine_projection_jvp(primals, tangents):
    # With P_N = I − A⁺A (the projector onto the null space of A) and λ = A⁺ᵀ(x − p) the
    # multiplier of A y = b, for perturbations that keep the rank of A (Golub and Pereyra, 1973):
    #   dp = P_N (dx − dAᵀ λ) − A⁺ (dA p − db).
    x, A, b = primals
    dx, dA, db = tangents
    U, inverse, Vt, kept, _, consistent = _affine_factors(A, b)
    p = _affine_projection(x, A, b)

    def pinv(v):  # A⁺ v
        return Vt.T @ (inverse * (U.T @ v))

    def null(v):  # P_N v
        return v - Vt.T @ jnp.where(kept, Vt @ v, 0)

    lam = U @ (inverse * (Vt @ (x - p)))  # A⁺ᵀ (x − p)
    dp = null(dx - dA.T @ lam) - pinv(dA @ p - db)
    return p, _checks.nan_unless(consistent, dp)


@in_dtype_of_x
@in_float32_if_half  # an SVD: no half-precision LAPACK
def affine_set(x: ArrayLike, hyperparams: tuple[ArrayLike, ArrayLike]) -> jax.Array:
    """Projection onto the affine set {y: A y = b}, for any m × n matrix A.

    p = x − A⁺(Ax − b) = (I − A⁺A) x + A⁺b, with the pseudo-inverse A⁺ of the thin SVD
    A = U diag(σ) Vᵀ: the exact projection also when the rows of A are linearly dependent (m may
    exceed n). Singular values σ ≤ max(m, n) · eps · σ_max count as zero, so rows equal up to
    rounding are one constraint. The set is empty when b is not in the range of A (up to
    rounding: ‖A A⁺b − b‖ ≤ 8 max(m, n) eps (σ_max ‖A⁺b‖ + ‖b‖)): a concrete (A, b) then raises
    ``ValueError``, a traced one gives NaN. The derivative, for perturbations that keep the rank
    of A, is dp = P_N (dx − dAᵀλ) − A⁺(dA p − db), with P_N = I − A⁺A and λ = A⁺ᵀ(x − p).

    Args:
      x: a vector of length n.
      hyperparams: ``(A, b)``: an m × n matrix and a vector of length m.

    Returns:
      p, a vector of length n.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
      >>> jnp.round(affine_set(jnp.array([1.0, 0.0, 0.0]), (A, jnp.array([0.0, 2.0]))), 4)
      Array([ 0.5, -0.5,  2. ], dtype=float32)
    """
    _checks.refuse_complex(x, "affine_set", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    A, b = _checks.unpack_parts("affine_set", "hyperparams", hyperparams, ("A", "b"))
    x = float_array(x)
    A = as_dtype_of(A, x)
    b = as_dtype_of(b, x)
    if x.ndim != 1 or A.ndim != 2 or A.shape[1] != x.shape[0] or b.shape != A.shape[:1]:
        raise ValueError(
            "affine_set needs x of shape (n,), A of shape (m, n) and b of shape (m,); got "
            f"x {x.shape}, A {A.shape}, b {b.shape}"
        )
    dtype = jnp.result_type(x, A, b)
    x, A, b = x.astype(dtype), A.astype(dtype), b.astype(dtype)
    if A.shape[0] == 0 or x.shape[0] == 0:  # no constraint, or ℝ⁰ (empty unless b = 0)
        if A.shape[0] and _checks.concrete_leaves(b) is not None and np.any(np.asarray(b) != 0):
            raise ValueError(f"affine_set: b must be 0 for A of shape {A.shape}, got b={b!r}")
        return x
    if not _checks.is_traced((A, b)):
        if not (np.all(np.isfinite(np.asarray(A))) and np.all(np.isfinite(np.asarray(b)))):
            raise ValueError("affine_set: A and b must be finite (traced ones give NaN)")
        # Evaluated now, also while an outer jit traces x (A and b closed over): the check is on
        # concrete values, and staged out it could not be read.
        with jax.ensure_compile_time_eval():
            *_, kept, _, consistent = _affine_factors(A, b)
        if not bool(consistent):
            raise ValueError(
                "affine_set: the set {y: A y = b} is empty: b is not in the range of A (up to "
                f"rounding; A has shape {A.shape} and numerical rank {int(np.sum(kept))})"
            )
    return nan_throughout(_affine_projection(x, A, b))  # x with ±∞: ∞ − ∞


# ---------------------------------------------------------------------------------------------
# Box section {α ≤ y ≤ β, wᵀy = c}: bisection on the multiplier, implicit differentiation.

_BISECTION_STEPS = 100


def _box_section_primal(mu, x, alpha, beta, w):
    """The minimizer y(μ) = clip(x − μ w, α, β) of the Lagrangian for the multiplier μ."""
    return jnp.clip(x - mu * w, alpha, beta)


def _box_section_residual(mu, x, alpha, beta, w, c):
    """The dual optimality condition φ(μ) = wᵀ y(μ) − c = 0 (φ is non-increasing in μ)."""
    return jnp.vdot(w, _box_section_primal(mu, x, alpha, beta, w)) - c


def _scalar_solve(matvec, b):
    """u = b / a for the 1 × 1 system a u = b, and u = 0 when a = 0 (the least-norm solution).

    a = −Σ_{free i} wᵢ² vanishes when no coordinate with wᵢ ≠ 0 is strictly inside its bounds.
    Then y does not depend on μ (μ only moves free coordinates with wᵢ ≠ 0), so any finite
    derivative of μ gives the exact derivative of y; 0 is chosen.
    """
    a = matvec(jnp.ones_like(b))
    nonzero = a != 0
    return jnp.where(nonzero, b / jnp.where(nonzero, a, 1), 0)


def _bisection_step(_, state):
    """Halve two brackets: [lo_a, hi_a] around the first μ with φ(μ) ≤ tol, [lo_b, hi_b] around
    the first μ with φ(μ) < −tol (φ is non-increasing)."""
    lo_a, hi_a, lo_b, hi_b, tol, x, alpha, beta, w, c = state
    mid_a, mid_b = 0.5 * (lo_a + hi_a), 0.5 * (lo_b + hi_b)
    right_a = _box_section_residual(mid_a, x, alpha, beta, w, c) > tol
    right_b = _box_section_residual(mid_b, x, alpha, beta, w, c) >= -tol
    return (
        jnp.where(right_a, mid_a, lo_a),
        jnp.where(right_a, hi_a, mid_a),
        jnp.where(right_b, mid_b, lo_b),
        jnp.where(right_b, hi_b, mid_b),
        tol,
        x,
        alpha,
        beta,
        w,
        c,
    )


def _box_section_bisection(mu0, x, alpha, beta, w, c):
    """The multiplier μ with φ(μ) = 0, by bisection between the breakpoints, then made exact.

    The roots of φ form an interval [μ_a, μ_b], a single point unless no coordinate is free.
    Both ends are bracketed (up to a rounding tolerance on φ) and the middle is taken, so that
    in the degenerate case μ sits strictly inside the interval, away from any breakpoint.
    """
    del mu0
    moving = w != 0
    safe_w = jnp.where(moving, w, 1)
    # y_i(μ) leaves its bounds at the breakpoints (x_i − α_i)/w_i and (x_i − β_i)/w_i: outside
    # [lo, hi] every moving coordinate sits on a bound, φ is constant, and the root lies inside.
    first = (x - alpha) / safe_w
    second = (x - beta) / safe_w
    lo = jnp.min(jnp.where(moving, jnp.minimum(first, second), jnp.inf))
    hi = jnp.max(jnp.where(moving, jnp.maximum(first, second), -jnp.inf))
    any_moving = jnp.any(moving)
    lo = jnp.where(any_moving, lo, 0)
    hi = jnp.where(any_moving, hi, 0)
    # φ is a sum of n terms: below this level its sign is rounding noise.
    magnitude = jnp.sum(jnp.abs(w) * jnp.maximum(jnp.abs(alpha), jnp.abs(beta))) + jnp.abs(c)
    tol = 16 * jnp.finfo(x.dtype).eps * magnitude

    state = (lo, hi, lo, hi, tol, x, alpha, beta, w, c)
    lo_a, hi_a, lo_b, hi_b, *_ = jax.lax.fori_loop(0, _BISECTION_STEPS, _bisection_step, state)
    mid = 0.25 * (lo_a + hi_a + lo_b + hi_b)
    # On the free set F at mid, φ is affine: μ = (Σ_F w x + Σ_{bounds} w y − c) / Σ_F w².
    y = x - mid * w
    free = (y > alpha) & (y < beta)
    at_bound = jnp.clip(y, alpha, beta)
    denominator = jnp.sum(jnp.where(free, w * w, 0))
    numerator = jnp.sum(jnp.where(free, w * x, w * at_bound)) - c
    exact = numerator / jnp.where(denominator > 0, denominator, 1)
    return jnp.where(denominator > 0, jnp.clip(exact, lo_a, hi_b), mid)


_box_section_multiplier = custom_root(
    _box_section_residual, solve=_scalar_solve, symmetric=True, on_failure="ignore"
)(_box_section_bisection)


@in_dtype_of_x
def box_section(
    x: ArrayLike, hyperparams: tuple[Any, Any, Any, Any], check_feasible: bool = False
) -> jax.Array:
    """Projection onto the section of a box by a hyperplane, {y: α ≤ y ≤ β, wᵀy = c}.

    p = clip(x − μ w, α, β), where the multiplier μ of the equality solves the one-dimensional
    dual condition φ(μ) = wᵀ clip(x − μ w, α, β) − c = 0 (φ is non-increasing). μ is found by
    bisection between the breakpoints, then made exact on the free set F = {α < p < β}:
    μ = (Σ_F wᵢxᵢ + Σ_{i∉F} wᵢpᵢ − c) / Σ_F wᵢ². Its derivative comes from the implicit function
    theorem on φ(μ, θ) = 0 (:func:`implicitdiff.implicit.custom_root`), that is
    dμ = ∂_θφ dθ / Σ_F wᵢ²; when Σ_F wᵢ² = 0, p does not depend on μ and dμ = 0 is used.

    Args:
      x: a vector (or an array of any shape; wᵀy sums over all entries).
      hyperparams: ``(alpha, beta, w, c)``: finite bounds α ≤ β (scalars or arrays
        broadcastable to x), weights w (broadcastable to x) and a scalar c. The set is
        non-empty iff Σ min(wα, wβ) ≤ c ≤ Σ max(wα, wβ) (up to rounding): otherwise a
        concrete set raises ``ValueError`` and a traced one gives NaN.
      check_feasible: JAXopt's option (a bool), accepted: the set is always checked here.

    Returns:
      p, shaped like x.

    Example:
      >>> import jax.numpy as jnp
      >>> box_section(jnp.array([1.0, 0.6, 0.0]), (0.0, 1.0, jnp.ones(3), 1.0))
      Array([0.7, 0.3, 0. ], dtype=float32)
    """
    _checks.refuse_complex(x, "box_section", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    check_feasible_flag("box_section", check_feasible)
    alpha, beta, w, c = _checks.unpack_parts(
        "box_section", "hyperparams", hyperparams, ("alpha", "beta", "w", "c")
    )
    check_ordered("alpha", alpha, "beta", beta)
    x = float_array(x)
    traced = _checks.is_traced((alpha, beta))
    traced_set = _checks.is_traced((alpha, beta, w, c))
    # A concrete set (closed over by an outer jit, say) is computed with now, to be checked.
    with contextlib.nullcontext() if traced_set else jax.ensure_compile_time_eval():
        alpha = jnp.broadcast_to(as_dtype_of(alpha, x), x.shape)
        beta = jnp.broadcast_to(as_dtype_of(beta, x), x.shape)
        if traced:  # unchecked bounds: NaN where alpha > beta
            beta = _checks.nan_unless(alpha <= beta, beta)
        w = jnp.broadcast_to(as_dtype_of(w, x), x.shape)
        c = as_dtype_of(c, x)
        if c.shape != ():
            raise ValueError(f"c must be a scalar, got shape {c.shape}")
        # The set is non-empty iff Σ min(wα, wβ) ≤ c ≤ Σ max(wα, wβ) (up to rounding).
        low = jnp.sum(jnp.minimum(w * alpha, w * beta))
        high = jnp.sum(jnp.maximum(w * alpha, w * beta))
        magnitude = jnp.sum(jnp.abs(w) * jnp.maximum(jnp.abs(alpha), jnp.abs(beta))) + jnp.abs(c)
        slack = 16 * x.size * jnp.finfo(x.dtype).eps * magnitude
        non_empty = (low - slack <= c) & (c <= high + slack)
    if not traced_set:
        if not bool(non_empty):
            raise ValueError(
                f"c must lie in [{float(low)}, {float(high)}] for the set "
                f"{{alpha ≤ y ≤ beta, wᵀy = c}} to be non-empty, got c={float(c)}"
            )
    mu = _box_section_multiplier(jnp.zeros((), x.dtype), x, alpha, beta, w, c)
    p = _box_section_primal(mu, x, alpha, beta, w)
    if traced_set:  # unchecked set: NaN where it is empty
        p = _checks.nan_unless(non_empty, p)
    return nan_throughout(p)  # x with ±∞: the multiplier's bracket is not finite
