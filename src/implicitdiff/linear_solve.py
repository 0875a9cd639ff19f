"""Linear solvers for A x = b, with A given only as a matvec ``x ↦ A x`` on pytrees.

Each solver has the signature ``solve(matvec, b, **options) -> x`` and works on any pytree ``b``
(the unknown ``x`` has the structure of ``b``). They are what the implicit-differentiation engine
uses for its backward (or forward-mode) linear system, and can be used on their own:

>>> import jax.numpy as jnp
>>> from implicitdiff import linear_solve
>>> A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
>>> x = linear_solve.cg(lambda v: A @ v, jnp.array([1.0, 0.0]))

Common options (every solver takes them; a dense solver ignores ``tol``, ``maxiter``, ``init``
and ``preconditioner``):

- ``tol``: relative tolerance, stop when ‖b − A x‖ ≤ max(tol · ‖b‖, atol). ``None`` picks
  ``default_tol(dtype)``: 1e-10 in float64, about 2e-5 in float32.
- ``maxiter``: the most matvecs to spend (``None``: JAX's default for the method).
- ``ridge``: solve (A + ridge · I) x = b instead, a Tikhonov regularization for singular or
  ill-conditioned A (for ``normal_cg``: (AᵀA + ridge · I) x = Aᵀb).
- ``init``: a warm start x₀ (a pytree like ``b``).
- ``preconditioner``: a callable approximating ``v ↦ A⁻¹ v``.

Matrix-free: ``cg`` (A symmetric positive definite, or negative definite), ``gmres`` and
``bicgstab`` (general A), ``normal_cg`` (CG on the normal equations AᵀA x = Aᵀb: any A, also
singular or least-squares systems; it needs A's transpose, obtained by ``jax.linear_transpose``
of the matvec). Dense: ``lu`` and ``cholesky`` (A symmetric positive definite) build the n × n
matrix with n matvecs, right for small n. ``auto`` picks one of them from the size of the system
and the ``symmetric`` hint.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as jsp_sparse
from jax.flatten_util import ravel_pytree

from implicitdiff import tree
from implicitdiff._typing import PyTree

Matvec = Callable[[PyTree], PyTree]

__all__ = [
    "DENSE_MAX_SIZE",
    "auto",
    "bicgstab",
    "cg",
    "cholesky",
    "default_tol",
    "gmres",
    "lu",
    "normal_cg",
    "resolve",
]

#: ``auto`` solves densely (LU) up to this many unknowns, matrix-free above.
DENSE_MAX_SIZE = 200


def default_tol(dtype: Any) -> float:
    """The default relative tolerance for a system in ``dtype``: max(1e-10, 200 · eps)."""
    return max(1e-10, 200.0 * float(jnp.finfo(dtype).eps))


def _tol(tol: float | None, b: PyTree) -> float:
    if tol is None:
        return default_tol(tree.dtype(b))
    if not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    return float(tol)


def _maxiter(maxiter: int | None) -> int | None:
    if maxiter is not None and not (
        isinstance(maxiter, numbers.Integral) and not isinstance(maxiter, bool) and maxiter >= 1
    ):
        raise ValueError(f"maxiter must be None or a positive int, got {maxiter!r}")
    return maxiter


def _check_ridge(ridge: Any) -> None:
    if isinstance(ridge, (int, float)) and not ridge >= 0:
        raise ValueError(f"ridge must be a non-negative number, got {ridge!r}")


def _add_ridge(matvec: Matvec, ridge: float) -> Matvec:
    _check_ridge(ridge)
    if isinstance(ridge, (int, float)) and ridge == 0:
        return matvec
    return lambda x: tree.axpy(ridge, x, matvec(x))


def cg(
    matvec: Matvec,
    b: PyTree,
    *,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    init: PyTree | None = None,
    preconditioner: Callable | None = None,
) -> PyTree:
    """Conjugate gradient for (A + ridge · I) x = b, A symmetric and definite.

    Wraps ``jax.scipy.sparse.linalg.cg``. CG's iterates do not change if A and b are both negated,
    so a negative definite A (as in ``T(x) − x`` for a symmetric contraction T) works too.
    """
    x, _ = jsp_sparse.cg(
        _add_ridge(matvec, ridge),
        b,
        x0=init,
        tol=_tol(tol, b),
        atol=atol,
        maxiter=_maxiter(maxiter),
        M=preconditioner,
    )
    return x


def gmres(
    matvec: Matvec,
    b: PyTree,
    *,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    init: PyTree | None = None,
    preconditioner: Callable | None = None,
    restart: int = 20,
) -> PyTree:
    """Restarted GMRES for (A + ridge · I) x = b, any non-singular A.

    Wraps ``jax.scipy.sparse.linalg.gmres``; ``maxiter`` counts matvecs (rounded up to whole
    restart cycles of ``restart`` matvecs each).
    """
    restart = max(1, min(restart, tree.size(b)))
    maxiter = _maxiter(maxiter)
    cycles = None if maxiter is None else max(1, math.ceil(maxiter / restart))
    x, _ = jsp_sparse.gmres(
        _add_ridge(matvec, ridge),
        b,
        x0=init,
        tol=_tol(tol, b),
        atol=atol,
        restart=restart,
        maxiter=cycles,
        M=preconditioner,
        solve_method="batched",
    )
    return x


def bicgstab(
    matvec: Matvec,
    b: PyTree,
    *,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    init: PyTree | None = None,
    preconditioner: Callable | None = None,
) -> PyTree:
    """BiCGSTAB for (A + ridge · I) x = b, any non-singular A. Wraps ``jax.scipy`` 's bicgstab."""
    x, _ = jsp_sparse.bicgstab(
        _add_ridge(matvec, ridge),
        b,
        x0=init,
        tol=_tol(tol, b),
        atol=atol,
        maxiter=_maxiter(maxiter),
        M=preconditioner,
    )
    return x


def normal_cg(
    matvec: Matvec,
    b: PyTree,
    *,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    init: PyTree | None = None,
    preconditioner: Callable | None = None,
) -> PyTree:
    """CG on the normal equations (AᵀA + ridge · I) x = Aᵀb.

    Works for any A, square or not, singular or not: from ``init = 0`` and with ``ridge = 0`` it
    converges to the least-squares solution of least norm. Aᵀ comes from ``jax.linear_transpose``
    of ``matvec``, which must therefore be linear (as every matvec built by the engine is). The
    ``preconditioner`` approximates (AᵀA)⁻¹. Squares the condition number: prefer ``cg`` or
    ``gmres`` when A is well-conditioned and non-singular.
    """
    out = jax.eval_shape(matvec, b)
    if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(b) or [
        o.shape for o in jax.tree_util.tree_leaves(out)
    ] != [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(b)]:
        raise ValueError(
            "normal_cg: matvec(x) must be shaped like b (x is shaped like b too): got "
            f"{[o.shape for o in jax.tree_util.tree_leaves(out)]} for b "
            f"{[jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(b)]}"
        )
    transpose = jax.linear_transpose(matvec, b)

    def rmatvec(y):
        return transpose(y)[0]

    def normal_matvec(x):
        return rmatvec(matvec(x))

    rhs = rmatvec(b)
    x, _ = jsp_sparse.cg(
        _add_ridge(normal_matvec, ridge),
        rhs,
        x0=init,
        tol=_tol(tol, b),
        atol=atol,
        maxiter=_maxiter(maxiter),
        M=preconditioner,
    )
    return x


normal_cg.least_squares = True  # the engine checks its normal-equation residual Aᵀ(Ax − b)


def _materialize(matvec: Matvec, b: PyTree):
    """The dense matrix of ``matvec`` on the flattened space of ``b``, and the flat b."""
    b_flat, unravel = ravel_pytree(b)

    def flat_matvec(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    n = b_flat.shape[0]
    columns = jax.vmap(flat_matvec)(jnp.eye(n, dtype=b_flat.dtype))
    if columns.shape != (n, n):
        raise ValueError(
            f"matvec must map the space of b to itself (a square operator): b has {n} entries, "
            f"matvec(b) has {columns.shape[1]}"
        )
    return columns.T, b_flat, unravel


def lu(matvec: Matvec, b: PyTree, *, ridge: float = 0.0, **ignored: Any) -> PyTree:
    """Dense solve by LU factorization with partial pivoting (builds the n × n matrix)."""
    del ignored
    a, b_flat, unravel = _materialize(matvec, b)
    _check_ridge(ridge)
    if not (isinstance(ridge, (int, float)) and ridge == 0):
        a = a + ridge * jnp.eye(a.shape[0], dtype=a.dtype)
    return unravel(jax.scipy.linalg.lu_solve(jax.scipy.linalg.lu_factor(a), b_flat))


def cholesky(matvec: Matvec, b: PyTree, *, ridge: float = 0.0, **ignored: Any) -> PyTree:
    """Dense solve by Cholesky factorization; A + ridge · I must be symmetric positive definite.

    For a symmetric *negative* definite A (a fixed point's I − ∂T negated), use ``lu``.
    """
    del ignored
    a, b_flat, unravel = _materialize(matvec, b)
    _check_ridge(ridge)
    if not (isinstance(ridge, (int, float)) and ridge == 0):
        a = a + ridge * jnp.eye(a.shape[0], dtype=a.dtype)
    a = 0.5 * (a + a.T)
    return unravel(jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), b_flat))


def auto(
    matvec: Matvec,
    b: PyTree,
    *,
    symmetric: bool = False,
    dense_max_size: int = DENSE_MAX_SIZE,
    **options: Any,
) -> PyTree:
    """Choose a solver from the size of the system and the structure hint.

    Up to ``dense_max_size`` unknowns: ``lu`` (exact, and cheap at that size). Above: ``cg`` when
    ``symmetric`` (as for the Hessian of a stationary condition), else ``gmres``. It never builds a
    dense matrix above ``dense_max_size``. ``options`` are passed to the chosen solver.
    """
    if tree.size(b) <= dense_max_size:
        return lu(matvec, b, **options)
    if symmetric:
        return cg(matvec, b, **options)
    return gmres(matvec, b, **options)


_BY_NAME: dict[str, Callable[..., PyTree]] = {
    "auto": auto,
    "cg": cg,
    "gmres": gmres,
    "bicgstab": bicgstab,
    "normal_cg": normal_cg,
    "lu": lu,
    "cholesky": cholesky,
}


def resolve(solve: str | Callable | None) -> Callable[..., PyTree]:
    """The solver named by ``solve`` (a name in this module), ``auto`` for None, or the callable."""
    if solve is None:
        return auto
    if isinstance(solve, str):
        try:
            return _BY_NAME[solve]
        except KeyError:
            names = ", ".join(sorted(_BY_NAME))
            raise ValueError(
                f"solve={solve!r} is not a known linear solver; use one of {names}, "
                "or a callable solve(matvec, b) -> x"
            ) from None
    if callable(solve):
        return solve
    raise TypeError(
        f"solve must be a name, a callable solve(matvec, b) -> x, or None; "
        f"got {type(solve).__name__}"
    )


def accepts_keyword(fun: Callable, name: str) -> bool:
    """Whether ``fun`` can be called with the keyword argument ``name``."""
    try:
        params = inspect.signature(fun).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def is_least_squares(fun: Callable) -> bool:
    """Whether a solver returns least-squares solutions (so only Aᵀ(Ax − b) need vanish)."""
    while isinstance(fun, functools.partial):
        fun = fun.func
    return bool(getattr(fun, "least_squares", False))


def declared_tol(fun: Callable) -> float | None:
    """The ``tol`` a solver will use if it declares one (a default or a bound partial keyword)."""
    if isinstance(fun, functools.partial) and "tol" in fun.keywords:
        tol = fun.keywords["tol"]
        return float(tol) if isinstance(tol, (int, float)) else None
    try:
        param = inspect.signature(fun).parameters.get("tol")
    except (TypeError, ValueError):
        return None
    if param is not None and isinstance(param.default, (int, float)):
        return float(param.default)
    return None
