"""The Euclidean projection onto a polyhedron {y: Ay = b, Gy ≤ h}, by OSQP.

Re-exported as :func:`implicitdiff.projections.polyhedron`. This projection needs a solver, so it
sits above the solvers in the layers (see docs/architecture.md); no solver imports
:mod:`implicitdiff.projections`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from implicitdiff import _checks
from implicitdiff._projection_common import (
    PROJECTIONS_TAKING_COMPLEX,
    in_dtype_of_x,
    in_float32_if_half,
    nan_throughout,
)
from implicitdiff.solvers import OSQP

__all__ = ["polyhedron"]

# One solver per dtype, kept so that its compilation cache serves every call.
_SOLVERS: dict[str, Any] = {}


def _solver(dtype: Any):
    key = jnp.dtype(dtype).name
    if key not in _SOLVERS:
        double = jnp.finfo(dtype).bits >= 64
        _SOLVERS[key] = OSQP(tol=1e-10 if double else 1e-5, maxiter=10000)
    return _SOLVERS[key]


def _as_float(value: ArrayLike, dtype: Any) -> jax.Array:
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.inexact):
        value = value.astype(dtype)
    return value


def _independent_rows(A: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For a concrete A: (A′, b′) with linearly independent rows and {A′y = b′} = {Ay = b}.

    With the SVD A = U diag(σ) Vᵀ and the r singular values above max(p, n) · eps · σ_max,
    A′ = diag(σ_r) V_rᵀ and b′ = U_rᵀ b (b may be traced: b′ is linear in it). Dependent rows
    would make the KKT system of the derivative singular (a NaN derivative).
    """
    A_np = np.asarray(A)
    U, sigma, Vt = np.linalg.svd(A_np, full_matrices=False)
    tol = max(A_np.shape) * np.finfo(A_np.dtype).eps * (sigma[0] if sigma.size else 0.0)
    rank = int(np.sum(sigma > tol))
    if rank == A_np.shape[0]:
        return A, b
    A_new = jnp.asarray(sigma[:rank, None] * Vt[:rank], A.dtype)
    U_r = jnp.asarray(U[:, :rank], b.dtype)
    b_new = U_r.T @ b
    # b must lie in the range of A (else the set is empty): A y₀ = b to rounding for y₀ = A⁺b.
    eps = np.finfo(A_np.dtype).eps
    y0_norm = jnp.linalg.norm(b_new / jnp.asarray(sigma[:rank], b.dtype))
    bound = 8 * max(A_np.shape) * eps * (sigma[0] * y0_norm + jnp.linalg.norm(b))
    consistent = jnp.linalg.norm(b - U_r @ b_new) <= bound
    if not _is_traced(b):
        if not bool(consistent):
            raise ValueError(
                "polyhedron: the set {y: A y = b, G y ≤ h} is empty: b is not in the range of A "
                f"(A has shape {A_np.shape} and numerical rank {rank})"
            )
        return A_new, b_new
    return A_new, _checks.nan_unless(consistent, b_new)


@in_dtype_of_x
@in_float32_if_half  # OSQP's factorizations: no half-precision LAPACK
def polyhedron(
    x: ArrayLike, hyperparams: tuple[Any, Any, Any, Any], check_feasible: bool = True
) -> jax.Array:
    """Projection onto the polyhedron {y: A y = b, G y ≤ h}.

    p = argmin_y ½‖y − x‖² s.t. A y = b, G y ≤ h: the QP with Q = I, c = −x, solved by
    :class:`implicitdiff.solvers.osqp.OSQP` (tol 1e-10 in float64, 1e-5 in float32, with solution
    polishing: exact to rounding when the active constraints are linearly independent). It is
    differentiated implicitly through the KKT conditions, with respect to x, A, b, G and h,
    wherever the active set is locally constant (strict complementarity); there the Jacobian in x
    is I − Bᵀ(BBᵀ)⁻¹B, B the rows of A and of the active rows of G. Runs under ``jit`` and
    ``vmap``. Linearly dependent rows of a concrete A are reduced to independent ones first (the
    same set; the derivative would otherwise be NaN). An empty (primal infeasible) polyhedron
    raises ``ValueError`` when A, b, G, h are concrete, and gives NaN when they are traced.

    Args:
      x: a vector of length n.
      hyperparams: ``(A, b, G, h)``: A (p, n) and b (p,) for the equalities, G (m, n) and h (m,)
        for the inequalities; either pair may be ``(None, None)``.
      check_feasible: JAXopt's option (a bool), accepted: an empty polyhedron is always
        reported here (``ValueError`` on concrete input, NaN when traced).

    Returns:
      p, a vector of length n in the dtype that x, A, b, G and h promote to.

    Example:
      >>> import jax.numpy as jnp
      >>> G, h = jnp.array([[1.0, 1.0]]), jnp.array([1.0])  # the half-plane x₁ + x₂ ≤ 1
      >>> jnp.round(polyhedron(jnp.array([2.0, 1.0]), (None, None, G, h)), 4)
      Array([1., 0.], dtype=float32)
    """
    _checks.refuse_complex(x, "polyhedron", complex_ones=PROJECTIONS_TAKING_COMPLEX)
    if not isinstance(check_feasible, bool):
        raise TypeError(f"polyhedron: check_feasible must be a bool, got {check_feasible!r}")
    A, b, G, h = _checks.unpack_parts(
        "polyhedron", "hyperparams", hyperparams, ("A", "b", "G", "h")
    )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    if x.ndim != 1:
        raise ValueError(f"polyhedron: x must be a vector, got shape {x.shape}")
    n = x.shape[0]
    pairs = []
    for (M_name, M), (v_name, v) in ((("A", A), ("b", b)), (("G", G), ("h", h))):
        if (M is None) != (v is None):
            raise ValueError(
                f"polyhedron: give both {M_name} and {v_name}, or neither "
                f"(got {M_name}={'None' if M is None else 'an array'}, "
                f"{v_name}={'None' if v is None else 'an array'})"
            )
        if M is None:
            pairs.append(None)
            continue
        M, v = _as_float(M, x.dtype), _as_float(v, x.dtype)
        if M.ndim != 2 or M.shape[1] != n or v.shape != M.shape[:1]:
            raise ValueError(
                f"polyhedron: {M_name} must have shape (k, {n}) and {v_name} shape (k,); got "
                f"{M_name} {M.shape}, {v_name} {v.shape}"
            )
        # (h may be +∞: a row with no bound.)
        for name, value in ((M_name, M), (v_name, v)) if M_name == "A" else ((M_name, M),):
            if not _is_traced(value) and not np.all(np.isfinite(np.asarray(value))):
                raise ValueError(f"polyhedron: {name} must be finite (a traced one gives NaN)")
        if M_name == "A" and not _is_traced(M) and M.shape[0]:
            M, v = _independent_rows(M, v)
        pairs.append((M, v))
    if pairs == [None, None]:
        return x
    dtype = jnp.result_type(x, *[leaf for pair in pairs if pair is not None for leaf in pair])
    x = x.astype(dtype)
    # The projection is homogeneous: P_{C(b, h)}(x) = s P_{C(b/s, h/s)}(x/s). OSQP's tolerance is
    # absolute; solving at s = max(‖x‖∞, ‖b‖∞, ‖h‖∞) makes it relative (x of 1e-30 or 1e30).
    vectors = [x] + [pair[1] for pair in pairs if pair is not None]
    s = jax.lax.stop_gradient(jnp.max(jnp.stack([jnp.max(jnp.abs(v), initial=0) for v in vectors])))
    s = jnp.where((s > 0) & jnp.isfinite(s), s, 1).astype(dtype)
    pairs = [None if pair is None else (pair[0], pair[1] / s) for pair in pairs]
    solver = _solver(dtype)
    (p, _, _), state = solver.run(None, (jnp.eye(n, dtype=dtype), -x / s), *pairs)
    p = p * s
    if not _is_traced((A, b, G, h)) and not _is_traced(state.status) and int(state.status) == 2:
        raise ValueError(
            "polyhedron: the set {y: A y = b, G y ≤ h} is empty (OSQP found it primal "
            "infeasible): check A, b, G, h"
        )
    return nan_throughout(_checks.nan_unless(state.status != 2, p))  # x with ±∞: not finite


def _is_traced(value: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value))
