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
of the matvec). Dense: ``lu``, ``cholesky`` (A symmetric positive definite), ``qr`` and ``inv``
build the n × n matrix with n matvecs, right for small n. ``auto`` picks one of them from the
size of the system and the ``symmetric`` hint. ``iterative_refinement`` corrects any of them
with the residual. JAXopt's names (``solve_cg``, ..., ``solve_iterative_refinement``) are
aliases taking JAXopt's positional ``(matvec, b, ridge, init)``.

Every solver solves a half-precision system (float16, bfloat16: no LAPACK kernel, and too few
digits for CG's recurrences) in float32 and rounds the solution back; every solver but
``normal_cg`` needs a square operator and says so (a ValueError naming the shapes) when given
another.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as jsp_sparse
import numpy as np
from jax.flatten_util import ravel_pytree

from implicitdiff import _checks, _gmres, _real_pairs, tree
from implicitdiff import _linear_solve_more as _more
from implicitdiff._args import is_traced
from implicitdiff._typing import PyTree

Matvec = Callable[[PyTree], PyTree]

__all__ = [
    "DENSE_MAX_SIZE",
    "Spec",
    "auto",
    "auto_choice",
    "bicgstab",
    "cg",
    "cholesky",
    "default_tol",
    "gmres",
    "inv",
    "iterative_refinement",
    "lu",
    "normal_cg",
    "qr",
    "resolve",
    "solve_bicgstab",
    "solve_cg",
    "solve_cholesky",
    "solve_gmres",
    "solve_inv",
    "solve_iterative_refinement",
    "solve_lu",
    "solve_normal_cg",
    "solve_qr",
    "spec",
]

#: ``auto`` never solves densely above this many unknowns (below, it compares the costs).
DENSE_MAX_SIZE = 200

# GMRES's default cycle: up to 200 Krylov vectors, at most 2¹⁷ entries of basis, at least 20
# (a cycle costs `restart` products and restart · n orthogonalization work).
_GMRES_MAX_RESTART = 200
_GMRES_MIN_RESTART = 20
_GMRES_BASIS_ENTRIES = 2**17


def default_tol(dtype: Any) -> float:
    """The default relative tolerance for a system in ``dtype``: max(1e-10, 200 · eps).

    Args:
      dtype: a floating dtype (or anything ``jnp.finfo`` accepts).

    Returns:
      The tolerance, a Python float: 1e-10 in float64, about 2.4e-5 in float32.
    """
    return max(1e-10, 200.0 * float(jnp.finfo(dtype).eps))


def _tol(tol: float | None, b: PyTree) -> float:
    """``tol`` (checked by :func:`_check_options`), or the default for the dtype of b."""
    return default_tol(tree.dtype(b)) if tol is None else float(tol)


def _ridge_is_zero(ridge: Any) -> bool:
    """Whether ``ridge`` (checked by :func:`_check_options`) is a number equal to 0: nothing to
    add; an array (perhaps traced) is never taken as zero."""
    return isinstance(ridge, (int, float)) and ridge == 0


def _add_ridge(matvec: Matvec, ridge: float) -> Matvec:
    if _ridge_is_zero(ridge):
        return matvec
    return lambda x: tree.axpy(ridge, x, matvec(x))


def _krylov(method, matvec, rhs, tol_like, tol, atol, maxiter, ridge, init, preconditioner, /):
    """x from a ``jax.scipy.sparse.linalg`` method on (matvec + ridge · I) x = rhs, the options
    checked (``tol`` None: the default for the dtype of ``tol_like``)."""
    x, _ = method(
        _add_ridge(matvec, ridge),
        rhs,
        x0=init,
        tol=_tol(tol, tol_like),
        atol=atol,
        maxiter=maxiter,
        M=preconditioner,
    )
    return x


def _cast(value: PyTree, dtype: Any) -> PyTree:
    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return tree.map(cast, value)


def _cast_like(value: PyTree, like: PyTree) -> PyTree:
    """value with each floating leaf in the dtype of the matching leaf of ``like``."""

    def cast(leaf, reference):
        leaf, dtype = jnp.asarray(leaf), jnp.result_type(reference)
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return tree.map(cast, value, like)


def _working_dtype(b: PyTree) -> Any:
    """The dtype a system is solved in when it is not b's own, else None: float32 for half
    precision (LAPACK has none, and CG's recurrences lose all accuracy in it), and the common
    dtype of real leaves of several precisions (float32 and float64: a Krylov loop carries one
    dtype; the solution comes back in each leaf's). Complex systems are solved on their real pairs
    (:func:`_in_real_pairs`), before this."""
    dtypes = {jnp.result_type(leaf) for leaf in jax.tree_util.tree_leaves(b)}
    if not dtypes or not all(jnp.issubdtype(d, jnp.floating) for d in dtypes):
        return None
    common = jnp.result_type(*dtypes)
    if _checks.is_half(common):
        return jnp.dtype(jnp.float32)
    return common if len(dtypes) > 1 else None


def _shape_text(value: PyTree) -> str:
    shapes = [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(value)]
    return str(shapes[0] if len(shapes) == 1 else shapes)


def _same_shapes(out: PyTree, b: PyTree) -> bool:
    """Whether ``out`` (shape structs from ``jax.eval_shape``) has b's tree structure and shapes."""
    return jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(b) and [
        o.shape for o in jax.tree_util.tree_leaves(out)
    ] == [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(b)]


def _square_operator_error(name: str, matvec: Matvec, b: PyTree) -> ValueError | None:
    """A ValueError naming the operator's shape if ``matvec`` does not map b's space to itself."""
    try:
        out = jax.eval_shape(matvec, b)
    except (TypeError, ValueError) as err:
        return ValueError(
            f"{name}: matvec cannot be applied to a vector shaped like b {_shape_text(b)} ({err}): "
            f"{name} needs a square operator (x shaped like b); for a non-square operator use "
            "normal_cg with init shaped like x"
        )
    if _same_shapes(out, b):
        return None
    return ValueError(
        f"{name}: matvec maps vectors shaped like b {_shape_text(b)} to {_shape_text(out)}: "
        f"{name} needs a square operator; for a non-square one use normal_cg"
    )


def _check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse, naming it, an option of the wrong kind or out of range before any solver reads
    it (a bool is not a number here): ``tol`` None or a number ≥ 0, ``atol`` a number ≥ 0,
    ``ridge`` a scalar ≥ 0 (a traced λ: its kind only), ``maxiter`` and ``restart``
    None or an int ≥ 1, ``dense_max_size`` an int ≥ 0. Options a solver ignores are checked
    too: a wrong value is wrong wherever it goes. A count given as a NumPy integer or a concrete
    JAX one (``jnp.asarray(50)``) is replaced in ``options`` by the Python int it holds."""
    for option in ("maxiter", "restart", "dense_max_size"):
        if option in options:
            options[option] = _checks.as_python_number(options[option], int)
    for option in ("tol", "atol"):
        value = options.get(option)
        if option in options and not (
            (value is None and option == "tol")
            or (
                _checks.is_real_number(value)
                and (is_traced(value) or bool(np.all(np.asarray(value) >= 0)))
            )
        ):
            raise ValueError(f"{name}: {option} must be a non-negative number, got {value!r}")
    ridge = options.get("ridge", 0.0)
    if not _checks.is_real_number(ridge):  # a number or a 0-d array (traced: its kind only)
        raise ValueError(f"{name}: ridge must be a real scalar, got {ridge!r}")
    _checks.check_non_negative(ridge, "ridge", name)
    for option in ("maxiter", "restart"):
        value = options.get(option)
        if not (value is None or (_checks.is_int(value) and value >= 1)):
            raise ValueError(f"{name}: {option} must be None or a positive int, got {value!r}")
    value = options.get("dense_max_size", 0)
    if not (_checks.is_int(value) and value >= 0):
        raise ValueError(f"{name}: dense_max_size must be an int ≥ 0, got {value!r}")


#: The Krylov solvers of square systems (their iterations compare squared norms of residuals
#: with tol² ‖b‖²): given a scaled transposition rule of their own, and the map from each to
#: its form without it (:attr:`Spec.direct`). normal_cg solves its normal equations by cg.
_TRANSPOSABLE = frozenset({"cg", "gmres", "bicgstab", "iterative_refinement"})
_DIRECT: dict[Callable, Callable] = {}


def _power_of_two_scale(b: PyTree) -> tuple[jax.Array, jax.Array]:
    """(s, 1/s): s the power of two nearest ‖b‖∞ (1 for b = 0 or not finite), within the normal
    range of b's dtype, cut from the graph (a piecewise-constant function of b)."""
    largest = tree.norm(b, jnp.inf)
    info = jnp.finfo(largest.dtype)
    usable = jnp.isfinite(largest) & (largest > 0)
    exponent = jnp.round(jnp.log2(jnp.where(usable, largest, 1)))
    exponent = jnp.clip(exponent, info.minexp + 2, info.maxexp - 2).astype(jnp.int32)
    one = jnp.ones((), largest.dtype)
    scale, inverse = jnp.ldexp(one, exponent), jnp.ldexp(one, -exponent)
    return jax.lax.stop_gradient(scale), jax.lax.stop_gradient(inverse)


def _scaled_solve(wrapped: Callable, matvec: Matvec, b: PyTree, options: dict) -> PyTree:
    """x = s · solve(A, b / s), s a power of two near ‖b‖∞ (:func:`_power_of_two_scale`).

    Krylov iterations stop when ‖r‖² ≤ max(tol² ‖b‖², atol²): for b of 1e±160 in float64
    (1e±19 in float32) ‖b‖² under- or overflows and they stopped at once, returning x = 0 with
    no sign of failure. Scaling by a power of two rounds nothing: the iterates are those of the
    unscaled system wherever both are representable. A warm start and ``atol`` scale with b.
    """
    scale, inverse = _power_of_two_scale(b)
    options = dict(options)
    if options.get("init") is not None:
        options["init"] = tree.scale(inverse.astype(tree.dtype(options["init"])), options["init"])
    if options.get("atol") is not None:  # (possibly traced: no truth test)
        options["atol"] = options["atol"] * inverse
    # (Behind an optimization barrier: with b a constant, XLA's simplifier would fold the
    # scale out of the solver's vdot(b, b) again, which then overflowed.)
    scaled = jax.lax.optimization_barrier(tree.scale(inverse.astype(tree.dtype(b)), b))
    x = wrapped(matvec, scaled, **options)
    return tree.scale(scale.astype(tree.dtype(x)), x)


def _float_data(b: PyTree, options: dict) -> tuple[PyTree, dict]:
    """b and the warm start with their integer leaves in the default float: the solution of a
    system with whole-number data is real (carried in the integer dtype, the Krylov loops
    failed with a misleading error about the operator's shape)."""
    if options.get("init") is not None:
        options = dict(options, init=_checks.float_leaves(options["init"]))
    return _checks.float_leaves(b), options


def _in_another_form(
    solve: Callable,
    solver: Callable,
    matvec: Matvec,
    b: PyTree,
    options: dict,
    into: Callable[[PyTree], PyTree],
    back: Callable[[PyTree, PyTree], PyTree],
) -> PyTree:
    """``solve`` of the system carried into another form by ``into`` (b, the warm start, the
    outputs of the matvec and of the preconditioner), their inputs and the solution brought
    back by ``back(value, x_like)``. x is shaped like b, or (normal_cg, a non-square operator)
    like its warm start."""
    x_like = options.get("init") if solver.__name__ == "normal_cg" else None
    x_like = b if x_like is None else x_like
    options = dict(options)
    if options.get("init") is not None:
        options["init"] = into(options["init"])
    if options.get("preconditioner") is not None:
        pre = options["preconditioner"]
        options["preconditioner"] = lambda v: into(pre(back(v, x_like)))
    x = solve(lambda v: into(matvec(back(v, x_like))), into(b), **options)
    return back(x, x_like)


def _in_working_dtype(
    solve: Callable, solver: Callable, matvec: Matvec, b: PyTree, options: dict
) -> PyTree:
    """``solve`` of the system cast to :func:`_working_dtype`, the solution cast back."""
    work = _working_dtype(b)
    into = functools.partial(_cast, dtype=work)
    return _in_another_form(solve, solver, matvec, b, options, into, _cast_like)


def _in_real_pairs(
    solve: Callable, solver: Callable, matvec: Matvec, b: PyTree, options: dict
) -> PyTree:
    """``solve`` of a complex system on its real pairs (:mod:`implicitdiff._real_pairs`), the
    solution rebuilt as complex: exact for every ℝ-linear operator (a JVP of a non-holomorphic
    map), where over ℂ the dense matrix, the Krylov methods and ``normal_cg``'s transpose were
    wrong, and for a ℂ-linear one (its Hermitian part is the pairs' symmetric part, so
    ``cholesky`` and ``cg`` take a Hermitian positive definite A)."""
    into, back = _real_pairs.to_real, _real_pairs.from_real
    return _in_another_form(solve, solver, matvec, b, options, into, back)


def _in_promoted_dtype(
    solve: Callable, solver: Callable, matvec: Matvec, b: PyTree, options: dict
) -> PyTree | None:
    """``solve`` again in the dtype of b promoted with that of ``matvec``'s output, leaf by leaf,
    if they differ (a float64 matrix applied to a float32 b, or a matvec computing in float32
    for a float64 b): the Krylov loops, which carry one dtype, failed with JAX's "carry input
    and carry output must have equal types" or "cotangent type does not match". The dense
    solvers promote as ``A⁻¹ b`` does. None if the dtypes agree (the error is another one).
    Called only on failure: free otherwise."""
    x_like = options.get("init") if solver.__name__ == "normal_cg" else None
    try:
        out = jax.eval_shape(matvec, b if x_like is None else x_like)
    except (TypeError, ValueError):
        return None
    out_leaves, b_leaves = jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(b)
    if len(out_leaves) != len(b_leaves):
        return None
    dtypes = [jnp.result_type(o.dtype, leaf) for o, leaf in zip(out_leaves, b_leaves, strict=True)]
    if all(
        o.dtype == d and jnp.result_type(leaf) == d
        for o, leaf, d in zip(out_leaves, b_leaves, dtypes, strict=True)
    ):
        return None
    like = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(b), [jnp.zeros((), d) for d in dtypes]
    )
    options = dict(options)
    if options.get("init") is not None and solver.__name__ != "normal_cg":
        options["init"] = _cast_like(options["init"], like)
    return solve(lambda v: _cast_like(matvec(v), like), _cast_like(b, like), **options)


def _linear_solver(solver: Callable[..., PyTree]) -> Callable[..., PyTree]:
    """Common behaviour of this module's solvers.

    - Integer or boolean leaves of b and of ``init``: the default float (:func:`_float_data`).

    - Options of the wrong kind or out of range: a ValueError naming them (:func:`_check_options`).

    - Half precision (float16, bfloat16), which LAPACK lacks and in which CG's recurrences lose
      all accuracy: the system is solved in float32 (the matvec still applies the operator as
      given, on inputs rounded to the half type) and the solution rounded back. A pytree whose
      real leaves mix precisions (float32 and float64) is solved likewise in their common dtype
      (:func:`_working_dtype`), each leaf of the solution in its own dtype.
    - A non-square operator given to a solver that needs a square one: a ValueError naming the
      shapes, instead of an error from deep inside (the check runs only on failure: free).
    - The Krylov solvers of square systems are custom linear solves that solve for b, and
      for the cotangents of their transposed systems, scaled to ‖·‖∞ ≈ 1 (:func:`_scaled_solve`);
      their form without it (:attr:`Spec.direct`) is for a caller that transposes the system
      itself and checks the residual, as the engine does (which then reports a right-hand side
      so small or so large that ‖b‖² under- or overflows as a failed solve).
    """

    @functools.wraps(solver)
    def wrapped(matvec: Matvec, b: PyTree, **options: Any) -> PyTree:
        _check_options(solver.__name__, options)
        b, options = _float_data(b, options)
        if _real_pairs.complex_leaves((b, options.get("init"))):
            return _in_real_pairs(wrapped, solver, matvec, b, options)
        if _working_dtype(b) is not None:
            return _in_working_dtype(wrapped, solver, matvec, b, options)
        try:
            return solver(matvec, b, **options)
        except (TypeError, ValueError) as err:
            promoted = _in_promoted_dtype(wrapped, solver, matvec, b, options)
            if promoted is not None:
                return promoted
            if solver.__name__ == "normal_cg":  # it diagnoses its own shapes
                raise
            square = _square_operator_error(solver.__name__, matvec, b)
            if square is not None:
                raise square from err
            raise

    if solver.__name__ not in _TRANSPOSABLE:
        return wrapped

    @functools.wraps(solver)
    def transposable(matvec: Matvec, b: PyTree, **options: Any) -> PyTree:
        # Differentiated, the solve transposes into another solve of this solver, which scales
        # its own right-hand side: the inner solver's own rule would solve the cotangent
        # multiplied by this one's scale (an underflow where b is tiny).
        _check_options(solver.__name__, options)
        b, options = _float_data(b, options)
        if _real_pairs.complex_leaves((b, options.get("init"))):
            return _in_real_pairs(transposable, solver, matvec, b, options)
        if _working_dtype(b) is not None:
            return _in_working_dtype(transposable, solver, matvec, b, options)
        init = options.pop("init", None)

        def forward(matvec, rhs):
            return _scaled_solve(wrapped, matvec, rhs, dict(options, init=init))

        def transposed(vecmat, rhs):
            return _scaled_solve(wrapped, vecmat, rhs, options)

        symmetric = solver.__name__ == "cg"
        try:
            return jax.lax.custom_linear_solve(
                matvec, b, solve=forward, transpose_solve=transposed, symmetric=symmetric
            )
        except (TypeError, ValueError) as err:  # (the checks run only on failure: free)
            options = dict(options, init=init)
            promoted = _in_promoted_dtype(transposable, solver, matvec, b, options)
            if promoted is not None:
                return promoted
            square = _square_operator_error(solver.__name__, matvec, b)
            if square is not None:
                raise square from err
            raise

    _DIRECT[transposable] = wrapped
    return transposable


@_linear_solver
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

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      tol: relative tolerance: stop when ‖b − (A + ridge · I) x‖ ≤ max(tol · ‖b‖, atol);
        None (default): ``default_tol(dtype of b)``.
      atol: absolute tolerance (default 0).
      maxiter: the most iterations; None (default): JAX's default for the method.
      ridge: the Tikhonov term added to A (default 0, ≥ 0).
      init: a warm start x₀, a pytree like b; None (default): zeros.
      preconditioner: a callable approximating ``v ↦ A⁻¹ v``; None (default): none.

    Returns:
      x, a pytree like b (not flagged if the tolerance was not reached: the engine checks the
        residual itself).
    """
    return _krylov(jsp_sparse.cg, matvec, b, b, tol, atol, maxiter, ridge, init, preconditioner)


@_linear_solver
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
    restart: int | None = None,
) -> PyTree:
    """Restarted GMRES for (A + ridge · I) x = b, any non-singular A.

    Each cycle builds an orthonormal Krylov basis (Gram-Schmidt applied twice), reduces the
    Hessenberg matrix by Givens rotations as it grows and stops as soon as the small
    least-squares problem meets the tolerance; between cycles the true residual is recomputed
    and a cycle restarts from it. Only matvecs and array operations, no LAPACK (unlike
    ``jax.scipy.sparse.linalg.gmres``, whose ``"batched"`` method factorizes with LAPACK — which
    hangs jaxlib 0.10 on several CPU devices, see docs/multi_device.md — and whose
    ``"incremental"`` method stagnated at a relative residual of 5e-8 for a requested 1e-10 on a
    250-unknown ridge system with cycles of 200; complex systems still use the former). The
    default cycle is long for small systems (up to 200 Krylov vectors) and short for large ones
    (at most 2¹⁷ entries of basis, at least 20 vectors): a short cycle can stagnate on the
    non-normal systems of KKT conditions (a box-constrained QP's, 450 unknowns, took 1 s with
    cycles of 20 and 16 ms with 200), while each cycle costs up to ``restart`` products and
    restart · n orthogonalization work, which dominates for a large n.

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      tol: relative tolerance: stop when ‖b − (A + ridge · I) x‖ ≤ max(tol · ‖b‖, atol);
        None (default): ``default_tol(dtype of b)``.
      atol: absolute tolerance (default 0).
      maxiter: the most matvecs, rounded up to whole restart cycles; None (default): 10 · n
        (SciPy's default).
      ridge: the Tikhonov term added to A (default 0, ≥ 0).
      init: a warm start x₀, a pytree like b; None (default): zeros.
      preconditioner: a callable approximating ``v ↦ A⁻¹ v``; None (default): none.
      restart: the Krylov subspace size of one cycle; None (default): min(n, 200,
        2¹⁷ // n) but at least 20 (n the number of unknowns); always capped at n.

    Returns:
      x, a pytree like b (not flagged if the tolerance was not reached: the engine checks the
        residual itself).
    """
    n = tree.size(b)
    if restart is None:
        restart = max(
            _GMRES_MIN_RESTART, min(_GMRES_MAX_RESTART, _GMRES_BASIS_ENTRIES // max(n, 1))
        )
    restart = max(1, min(restart, n))
    cycles = max(1, math.ceil((10 * n if maxiter is None else maxiter) / restart))
    return _gmres.gmres(
        _add_ridge(matvec, ridge),
        b,
        x0=init,
        tol=_tol(tol, b),
        atol=atol,
        restart=restart,
        cycles=cycles,
        preconditioner=preconditioner,
    )


@_linear_solver
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
    """BiCGSTAB for (A + ridge · I) x = b, any non-singular A.

    Wraps ``jax.scipy.sparse.linalg.bicgstab``.

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      tol: relative tolerance: stop when ‖b − (A + ridge · I) x‖ ≤ max(tol · ‖b‖, atol);
        None (default): ``default_tol(dtype of b)``.
      atol: absolute tolerance (default 0).
      maxiter: the most iterations; None (default): JAX's default for the method.
      ridge: the Tikhonov term added to A (default 0, ≥ 0).
      init: a warm start x₀, a pytree like b; None (default): zeros.
      preconditioner: a callable approximating ``v ↦ A⁻¹ v``; None (default): none.

    Returns:
      x, a pytree like b (not flagged if the tolerance was not reached: the engine checks the
        residual itself).
    """
    return _krylov(
        jsp_sparse.bicgstab, matvec, b, b, tol, atol, maxiter, ridge, init, preconditioner
    )


@_linear_solver
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
    of ``matvec``, which must therefore be linear (as every matvec built by the engine is).
    Squares the condition number: prefer ``cg`` or ``gmres`` when A is well-conditioned and
    non-singular.

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like x to pytrees like b.
      b: the right-hand side, a pytree of arrays (b ∈ ℝᵐ).
      tol: relative tolerance on the normal equations: stop when
        ‖Aᵀb − (AᵀA + ridge · I) x‖ ≤ max(tol · ‖Aᵀb‖, atol); None (default):
        ``default_tol(dtype of b)``.
      atol: absolute tolerance (default 0).
      maxiter: the most CG iterations (each one matvec and one transposed matvec); None
        (default): JAX's default.
      ridge: the Tikhonov term added to AᵀA (default 0, ≥ 0).
      init: a warm start x₀, which also gives the shape of x: for a non-square A (``matvec``
        maps x ∈ ℝⁿ to ℝᵐ), pass it shaped like x (zeros for the least-norm solution). None
        (default): zeros shaped like b (A square).
      preconditioner: a callable approximating ``v ↦ (AᵀA)⁻¹ v``; None (default): none.

    Returns:
      x, a pytree like ``init`` (like b when ``init`` is None).
    """
    x_like = b if init is None else init  # a non-square A needs init to give x's shape
    try:
        out = jax.eval_shape(matvec, x_like)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"normal_cg: matvec cannot be applied to a vector shaped like "
            f"{'b' if init is None else 'init'} {_shape_text(x_like)} ({err}); for a non-square "
            "operator pass init shaped like x (the columns)"
        ) from None
    if not _same_shapes(out, b):
        raise ValueError(
            f"normal_cg: matvec maps x shaped like {_shape_text(x_like)} to {_shape_text(out)}, "
            f"not to the shape of b {_shape_text(b)}"
        )
    transpose = jax.linear_transpose(matvec, x_like)

    def rmatvec(y):
        return transpose(y)[0]

    def normal_matvec(x):
        return rmatvec(matvec(x))

    # cg scales the right-hand side Aᵀb (and its transposed solves) to ‖·‖∞ ≈ 1.
    options = {"atol": atol, "maxiter": maxiter, "ridge": ridge, "init": init}
    return cg(normal_matvec, rmatvec(b), tol=_tol(tol, b), preconditioner=preconditioner, **options)


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


def _dense_solve(
    matvec: Matvec, b: PyTree, ridge: float, solve_flat: Callable[[jax.Array, jax.Array], jax.Array]
) -> PyTree:
    """x solving (A + ridge · I) x = b densely: ``solve_flat(M, b_flat)`` on the matrix M of
    A + ridge · I over the flattened space of ``b`` and the flat b, unraveled like b."""
    a, b_flat, unravel = _materialize(matvec, b)
    if not _ridge_is_zero(ridge):
        a = a + ridge * jnp.eye(a.shape[0], dtype=a.dtype)
    return unravel(solve_flat(a, b_flat))


@_linear_solver
def lu(matvec: Matvec, b: PyTree, *, ridge: float = 0.0, **ignored: Any) -> PyTree:
    """Dense solve of (A + ridge · I) x = b by LU factorization with partial pivoting.

    Builds the n × n matrix of A with n matvecs (n = the number of entries of b): for small n.

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      ridge: the Tikhonov term added to A (default 0, ≥ 0).
      **ignored: the iterative solvers' options (``tol``, ``maxiter``, ``init``,
        ``preconditioner``, ...), accepted and ignored.

    Returns:
      x, a pytree like b.
    """
    del ignored
    return _dense_solve(matvec, b, ridge, _more.dense_lu_solve)


@_linear_solver
def cholesky(matvec: Matvec, b: PyTree, *, ridge: float = 0.0, **ignored: Any) -> PyTree:
    """Dense solve of (A + ridge · I) x = b by Cholesky factorization.

    A + ridge · I must be symmetric positive definite (it is symmetrized, (M + Mᵀ)/2, before
    factorizing; so the gradient with respect to entries of the matrix is symmetric, ½(G + Gᵀ)
    where ``lu`` gives G: the same derivative along every symmetric change of A). For a
    symmetric *negative* definite A (a fixed point's I − ∂T negated), use ``lu``. Builds the
    n × n matrix of A with n matvecs.

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      ridge: the Tikhonov term added to A (default 0, ≥ 0).
      **ignored: the iterative solvers' options (``tol``, ``maxiter``, ``init``,
        ``preconditioner``, ...), accepted and ignored.

    Returns:
      x, a pytree like b.
    """
    del ignored
    return _dense_solve(matvec, b, ridge, _more.dense_cholesky_solve)


@_linear_solver
def inv(matvec: Matvec, b: PyTree, *, ridge: float = 0.0, **ignored: Any) -> PyTree:
    """Dense solve x = (A + ridge · I)⁻¹ b with the explicit inverse (``jnp.linalg.inv``).

    Builds the n × n matrix of A with n matvecs; ``lu`` is cheaper and more accurate for one
    right-hand side (kept for JAXopt's ``solve_inv``).

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      ridge: the Tikhonov term added to A (default 0, ≥ 0).
      **ignored: the iterative solvers' options (``tol``, ``maxiter``, ``init``,
        ``preconditioner``, ...), accepted and ignored.

    Returns:
      x, a pytree like b.
    """
    del ignored
    return _dense_solve(matvec, b, ridge, _more.dense_inverse_solve)


@_linear_solver
def qr(matvec: Matvec, b: PyTree, *, ridge: float = 0.0, **ignored: Any) -> PyTree:
    """Dense solve of (A + ridge · I) x = b by QR factorization: A + ridge · I = Q R,
    x = R⁻¹ Qᴴ b (back substitution). Builds the n × n matrix with n matvecs.

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      ridge: the Tikhonov term added to A (default 0, ≥ 0).
      **ignored: the iterative solvers' options (``tol``, ``maxiter``, ``init``,
        ``preconditioner``, ...), accepted and ignored.

    Returns:
      x, a pytree like b.
    """
    del ignored
    return _dense_solve(matvec, b, ridge, _more.dense_qr_solve)


@_linear_solver
def iterative_refinement(
    matvec: Matvec,
    b: PyTree,
    *,
    solve: str | Callable | None = "gmres",
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int = 10,
    ridge: float = 0.0,
    init: PyTree | None = None,
) -> PyTree:
    """Iterative refinement (Wilkinson, 1963) of an inner solver for (A + ridge · I) x = b.

    From x₀ (``init``, default 0)::

        rₖ = b − A xₖ,   xₖ₊₁ = xₖ + solve(A, rₖ),

    until ‖rₖ‖ ≤ max(tol · ‖b‖, atol) or ``maxiter`` corrections. Each step removes most of the
    error left by an inaccurate (low precision, loose tolerance, regularized) inner solve.
    Differentiable in b and in what ``matvec`` closes over (``jax.lax.custom_linear_solve``; the
    transposed system is refined the same way).

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      solve: the inner solver, a name of this module's solvers or ``solve(matvec, r) -> x``
        (default ``"gmres"``).
      tol: relative tolerance; None (default): ``default_tol(dtype of b)``.
      atol: absolute tolerance (default 0).
      maxiter: the most corrections (default 10).
      ridge: the Tikhonov term added to A (default 0, ≥ 0).
      init: x₀, a pytree like b; None (default): zeros.

    Returns:
      x, a pytree like b.
    """
    if maxiter is None:  # a count of corrections here, with no open-ended default
        raise ValueError("iterative_refinement: maxiter must be a positive int, got None")
    inner = resolve(solve)
    return _more.refined_solve(
        _add_ridge(matvec, ridge), b, init, inner, maxiter, _tol(tol, b), atol
    )


#: JAXopt's names, with its call ``(matvec, b, ridge=None, init=None, **options)``.
solve_cg = _more.jaxopt_named(cg, "solve_cg")
solve_normal_cg = _more.jaxopt_named(normal_cg, "solve_normal_cg")
solve_gmres = _more.jaxopt_named(gmres, "solve_gmres")
solve_bicgstab = _more.jaxopt_named(bicgstab, "solve_bicgstab")
solve_lu = _more.jaxopt_named(lu, "solve_lu")
solve_cholesky = _more.jaxopt_named(cholesky, "solve_cholesky")
solve_inv = _more.jaxopt_named(inv, "solve_inv")
solve_qr = _more.jaxopt_named(qr, "solve_qr")


def solve_iterative_refinement(
    matvec: Matvec,
    b: PyTree,
    init: PyTree | None = None,
    maxiter: int = 10,
    tol: float = 1e-7,
    solve: str | Callable = "gmres",
    **options: Any,
) -> PyTree:
    """JAXopt's ``solve_iterative_refinement``: :func:`iterative_refinement` with JAXopt's
    positional order and its *absolute* tolerance, ‖b − A x‖ ≤ tol (default 1e-7).

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      init: x₀, a pytree like b; None (default): zeros.
      maxiter: the most corrections (default 10).
      tol: the absolute tolerance on the residual, ‖b − A x‖ ≤ tol (default 1e-7).
      solve: the inner solver, a name of this module's solvers or ``solve(matvec, r) -> x``
        (default ``"gmres"``).
      **options: passed to :func:`iterative_refinement` (``ridge``).

    Returns:
      x, a pytree like b.
    """
    return iterative_refinement(
        matvec, b, init=init, maxiter=maxiter, tol=0.0, atol=tol, solve=solve, **options
    )


def auto_choice(
    matvec: Matvec,
    b: PyTree,
    *,
    symmetric: bool = False,
    dense_max_size: int = DENSE_MAX_SIZE,
    iterations: int | None = None,
) -> str:
    """The solver that :func:`auto` picks for this system: ``"lu"``, ``"cg"`` or ``"gmres"``.

    Above ``dense_max_size`` unknowns, never dense: ``"cg"`` when ``symmetric``, else
    ``"gmres"``. At or below it, ``"lu"`` when its estimated cost, n products with A (batched)
    to build the matrix plus ⅔n³ for the factorization, is at most that of k Krylov iterations,
    k = min(n, ``iterations``; default 30 for CG, n for GMRES, which has no smaller bound on a
    non-symmetric system), each product's cost counted on the matvec's jaxpr (traced once, not
    run; see ``_linear_solve_more.dense_is_cheaper`` for the formula).

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      symmetric: whether A is symmetric (default False).
      dense_max_size: the most unknowns solved densely (default :data:`DENSE_MAX_SIZE`).
      iterations: the Krylov iterations expected; None: 30 for CG, n for GMRES.

    Returns:
      ``"lu"``, ``"cg"`` or ``"gmres"``.
    """
    n = tree.size(b)
    krylov = "cg" if symmetric else "gmres"
    if n > dense_max_size:
        return krylov
    flops = _more.matvec_flops(matvec, b)
    cheaper = _more.dense_is_cheaper(n, flops, symmetric=symmetric, iterations=iterations)
    return "lu" if cheaper else krylov


@_linear_solver
def auto(
    matvec: Matvec,
    b: PyTree,
    *,
    symmetric: bool = False,
    dense_max_size: int = DENSE_MAX_SIZE,
    **options: Any,
) -> PyTree:
    """Choose a solver from an estimate of its cost and the structure hint.

    Dense LU (exact) when it is estimated cheaper than a Krylov solve, which it is for few
    unknowns or a cheap product: it costs n products with A (n = the number of entries of b;
    batched, about half a product each) and ⅔n³ operations; a Krylov solve costs about 30
    products (:func:`auto_choice` gives the choice and the formula). Else ``cg`` when
    ``symmetric`` (as for the Hessian of a stationary condition), else ``gmres``. Never dense
    above ``dense_max_size`` unknowns.

    Args:
      matvec: the linear map ``x ↦ A x``, from pytrees like b to pytrees like b.
      b: the right-hand side, a pytree of arrays.
      symmetric: whether A is symmetric (default False).
      dense_max_size: the most unknowns (entries of b) solved densely (default
        :data:`DENSE_MAX_SIZE`, 200).
      **options: passed to the chosen solver (``tol``, ``maxiter``, ``ridge``, ...).

    Returns:
      x, a pytree like b.
    """
    choice = auto_choice(matvec, b, symmetric=symmetric, dense_max_size=dense_max_size)
    solvers = {"lu": lu, "cg": cg, "gmres": gmres}
    if options.pop("_direct", False):  # (Spec.direct of auto: the Krylov solvers' direct forms)
        solvers = {"lu": lu, "cg": _DIRECT[cg], "gmres": _DIRECT[gmres]}
    return solvers[choice](matvec, b, **options)


_BY_NAME: dict[str, Callable[..., PyTree]] = {
    "auto": auto,
    "cg": cg,
    "gmres": gmres,
    "bicgstab": bicgstab,
    "normal_cg": normal_cg,
    "lu": lu,
    "cholesky": cholesky,
    "inv": inv,
    "qr": qr,
    "iterative_refinement": iterative_refinement,
}


def resolve(solve: str | Callable | None) -> Callable[..., PyTree]:
    """The linear solver that a ``solve`` option names.

    Args:
      solve: a name of this module's solvers (``"auto"``, ``"cg"``, ``"gmres"``, ``"bicgstab"``,
        ``"normal_cg"``, ``"lu"``, ``"cholesky"``, ``"qr"``, ``"inv"``,
        ``"iterative_refinement"``), None (``auto``), or a callable
        ``solve(matvec, b) -> x``.

    Returns:
      The solver function (the callable itself when one is given).

    Raises:
      ValueError: an unknown name.
      TypeError: neither a name, a callable nor None.
    """
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
      direct: ``fun`` without a transposition rule of its own (this module's Krylov solvers
        are custom linear solves, whose transposed solve rescales the cotangent), for a
        caller that transposes the system itself, as the engine does; None: ``fun``.

    Example: a solver of one's own with a loose tolerance,
    ``custom_root(F, solve=linear_solve.Spec(my_solve, tol=1e-6))``.
    """

    fun: Callable[..., PyTree]
    tol: float | None = None
    least_squares: bool = False
    takes_symmetric: bool = False
    direct: Callable[..., PyTree] | None = None

    def __call__(self, matvec: Matvec, b: PyTree, **options: Any) -> PyTree:
        return self.fun(matvec, b, **options)

    @property
    def name(self) -> str:
        fun = self.fun.func if isinstance(self.fun, functools.partial) else self.fun
        return getattr(fun, "__name__", repr(fun))


# This module's solvers: what each one declares (its tol defaults to default_tol).
_SPECS: dict[Callable, Spec] = {
    auto: Spec(auto, takes_symmetric=True, direct=functools.partial(auto, _direct=True)),
    cg: Spec(cg, direct=_DIRECT[cg]),
    gmres: Spec(gmres, direct=_DIRECT[gmres]),
    bicgstab: Spec(bicgstab, direct=_DIRECT[bicgstab]),
    normal_cg: Spec(normal_cg, least_squares=True),
    lu: Spec(lu),
    cholesky: Spec(cholesky),
    inv: Spec(inv),
    qr: Spec(qr),
    iterative_refinement: Spec(iterative_refinement, direct=_DIRECT[iterative_refinement]),
}


def spec(solve: str | Callable | None) -> Spec:
    """The :class:`Spec` of a choice of linear solver.

    Args:
      solve: what a ``solve`` option accepts. A name or None (``auto``): that solver's spec. A
        :class:`Spec`: itself. One of this module's solvers, or a ``functools.partial`` of one with
        keyword options: its spec, with the ``tol`` option if one is bound. Any other callable:
        ``Spec(solve)`` (default tolerance, not least squares, no ``symmetric`` keyword); wrap it
        in a :class:`Spec` to declare otherwise.

    Returns:
      A :class:`Spec` whose ``fun`` is the solver.
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
    _check_options(func.__name__, dict(keywords))  # at once: a bound option is wrong on every call
    tol = keywords.get("tol")
    tol = float(tol) if isinstance(tol, (int, float)) else None
    direct = known.direct
    if direct is not None and keywords:
        direct = functools.partial(direct, **keywords)
    return dataclasses.replace(known, fun=solve, tol=tol, direct=direct)


def accepts_keyword(fun: Callable, name: str) -> bool:
    """Whether the linear solver ``fun`` declares the keyword ``name`` (only ``symmetric`` is
    declared, see :class:`Spec`)."""
    return name == "symmetric" and spec(fun).takes_symmetric
