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

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as jsp_sparse
from jax.flatten_util import ravel_pytree

from implicitdiff import tree

PyTree = Any
Matvec = Callable[[PyTree], PyTree]

__all__ = [
    "DENSE_MAX_SIZE",
    "Spec",
    "auto",
    "bicgstab",
    "cg",
    "cholesky",
    "default_tol",
    "gmres",
    "lu",
    "normal_cg",
    "resolve",
    "spec",
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


@dataclasses.dataclass(frozen=True)
class Spec:
    """A linear solver with what the engine must know about it, stated explicitly.

    Calling the spec calls ``fun``. The engine checks the solution it returns against
    ``tol``: its residual must be at most max(100 · tol, 1000 · eps).

    Attributes:
      fun: ``fun(matvec, b, **options) -> x``.
      tol: the relative tolerance ``fun`` solves to; None: ``default_tol(dtype)``.
      least_squares: ``fun`` returns least-squares solutions, so only the normal residual
        Aᵀ(A x − b) need vanish (as for ``normal_cg``).
      takes_symmetric: ``fun`` accepts the keyword ``symmetric`` (a structure hint, as
        ``auto``), which the engine then passes when the system is symmetric.

    Example: a solver of one's own with a loose tolerance,
    ``custom_root(F, solve=linear_solve.Spec(my_solve, tol=1e-6))``.
    """

    fun: Callable[..., PyTree]
    tol: float | None = None
    least_squares: bool = False
    takes_symmetric: bool = False

    def __call__(self, matvec: Matvec, b: PyTree, **options: Any) -> PyTree:
        return self.fun(matvec, b, **options)

    @property
    def name(self) -> str:
        fun = self.fun.func if isinstance(self.fun, functools.partial) else self.fun
        return getattr(fun, "__name__", repr(fun))


# This module's solvers: what each one declares (its tol defaults to default_tol).
_SPECS: dict[Callable, Spec] = {
    auto: Spec(auto, takes_symmetric=True),
    cg: Spec(cg),
    gmres: Spec(gmres),
    bicgstab: Spec(bicgstab),
    normal_cg: Spec(normal_cg, least_squares=True),
    lu: Spec(lu),
    cholesky: Spec(cholesky),
}


def spec(solve: str | Callable | None) -> Spec:
    """The :class:`Spec` of a choice of linear solver.

    A name or None (``auto``): that solver's spec. A :class:`Spec`: itself. One of this module's
    solvers, or a ``functools.partial`` of one with keyword options: its spec, with the ``tol``
    option if one is bound. Any other callable: ``Spec(solve)`` (default tolerance, not least
    squares, no ``symmetric`` keyword); wrap it in a :class:`Spec` to declare otherwise.
    """
    solve = resolve(solve)
    if isinstance(solve, Spec):
        return solve
    func, keywords = solve, {}
    if isinstance(solve, functools.partial) and not solve.args:
        func, keywords = solve.func, solve.keywords
    try:
        known = _SPECS.get(func)
    except TypeError:  # an unhashable callable object: not one of ours
        known = None
    if known is None:
        return Spec(solve)
    tol = keywords.get("tol")
    tol = float(tol) if isinstance(tol, (int, float)) else None
    return dataclasses.replace(known, fun=solve, tol=tol)


def accepts_keyword(fun: Callable, name: str) -> bool:
    """Whether the linear solver ``fun`` declares the keyword ``name`` (only ``symmetric`` is
    declared, see :class:`Spec`)."""
    return name == "symmetric" and spec(fun).takes_symmetric
