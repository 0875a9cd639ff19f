"""The engine: implicit differentiation of the output of any solver.

A solver maps ``(init_params, *args)`` to a solution x*(θ), θ = args, that satisfies optimality
conditions F(x*(θ), θ) = 0. By the implicit function theorem, with A = −∂₁F(x*, θ) and
B = ∂₂F(x*, θ), the Jacobian J = ∂x*(θ) solves A J = B. So

- forward mode, J v: solve A u = B v;
- reverse mode, vᵀJ: solve Aᵀ u = v, then vᵀJ = uᵀB.

Neither A nor B is formed: their products are JVPs and VJPs of F, and the system is solved by a
matrix-free (or, when small, dense) solver from :mod:`implicitdiff.linear_solve`. The solver
itself is never differentiated, so the backward pass costs a few dozen products with A whatever
the number of iterations the solver ran, and keeps none of them in memory.

The forward rule is a ``jax.custom_jvp`` whose tangent is a ``jax.lax.custom_linear_solve``:
that solve is transposable, so reverse mode comes by transposition, and higher orders (Hessians,
reverse over reverse) by differentiating the rule again.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.experimental import io_callback
from jax.flatten_util import ravel_pytree

from implicitdiff import linear_solve, tree

PyTree = Any

__all__ = [
    "BackwardSolveError",
    "BackwardSolveWarning",
    "custom_fixed_point",
    "custom_root",
    "root_jvp",
    "root_vjp",
]

_POLICIES = ("warn", "raise", "nan", "ignore", "fallback")


class BackwardSolveWarning(RuntimeWarning):
    """The linear system of an implicit derivative was not solved to its tolerance."""


class BackwardSolveError(RuntimeError):
    """Raised (with ``on_failure="raise"``) when the linear system of a derivative fails."""


# ---------------------------------------------------------------------------------------------
# Arguments: which leaves are arrays (differentiable), which pass through untouched.


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


def _is_inexact(leaf: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


class _SplitArgs:
    """(args, kwargs) split into array leaves, passed through transformations, and the rest."""

    def __init__(self, args: tuple, kwargs: dict):
        leaves, self.treedef = jax.tree_util.tree_flatten((args, kwargs))
        self.mask = [_is_array(leaf) for leaf in leaves]
        self.static = [None if m else leaf for leaf, m in zip(leaves, self.mask, strict=True)]
        self.arrays = [leaf for leaf, m in zip(leaves, self.mask, strict=True) if m]

    def merge(self, arrays: list) -> tuple[tuple, dict]:
        it = iter(arrays)
        leaves = [next(it) if m else s for m, s in zip(self.mask, self.static, strict=True)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _number_to_array(leaf: Any) -> Any:
    if isinstance(leaf, (int, float, complex)) and not isinstance(leaf, bool):
        return jnp.asarray(leaf)
    return leaf


def _describe(leaf: Any) -> str:
    return f"{jnp.shape(leaf)} {jnp.result_type(leaf)}"


def _check_same_structure(expected: PyTree, got: PyTree, what: str, expected_name: str) -> None:
    """Raise a TypeError naming ``what`` if ``got`` does not match ``expected`` leaf for leaf."""
    e_tree, g_tree = jax.tree_util.tree_structure(expected), jax.tree_util.tree_structure(got)
    if e_tree != g_tree:
        raise TypeError(
            f"{what} must return a pytree with the structure of {expected_name}: "
            f"expected {e_tree}, got {g_tree}"
        )
    for i, (e, g) in enumerate(
        zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got), strict=True)
    ):
        if jnp.shape(e) != jnp.shape(g):
            raise TypeError(
                f"{what} must return leaves shaped like {expected_name}: leaf {i} is "
                f"{jnp.shape(g)}, expected {jnp.shape(e)}"
            )


def _check_signature(fun: Callable, name: str, params: Any, args: tuple, kwargs: dict) -> None:
    try:
        signature = inspect.signature(fun)
    except (TypeError, ValueError):  # builtins and some C callables have none: nothing to check
        return
    try:
        signature.bind(params, *args, **kwargs)
    except TypeError as err:
        fun_name = getattr(fun, "__name__", type(fun).__name__)
        passed = ", ".join(["params", *[f"arg{i}" for i in range(len(args))], *kwargs])
        raise TypeError(
            f"{name} {fun_name}{signature} cannot be called as {fun_name}({passed}), the "
            f"arguments the solver receives: {err}. {name} must take the solution first, then the "
            "solver's arguments after init_params, in the same order and with the same keywords."
        ) from None


# ---------------------------------------------------------------------------------------------
# The linear solve of the implicit function theorem, with its residual checked.


def _failure_callback(policy: str):
    def report(failed, residual):
        failed = np.asarray(failed)
        if not failed.any():
            return
        residual = np.nan_to_num(np.asarray(residual, dtype=float), nan=np.inf)
        worst = float(np.max(np.where(failed, residual, -np.inf)))
        message = (
            "the linear system of an implicit derivative was not solved: relative residual "
            f"{worst:.3e}. The derivative is inaccurate. Likely causes: the solution is not "
            "accurate, or A = -dF/dx is singular or ill-conditioned at it. Remedies: solve more "
            "tightly, pass solve=functools.partial(linear_solve.<name>, ridge=..., maxiter=...), "
            "solve='normal_cg' for singular systems, or on_failure='fallback'."
        )
        if policy == "raise":
            raise BackwardSolveError(message)
        warnings.warn(message, BackwardSolveWarning, stacklevel=2)

    return report


def _fallback_callback(dense: bool):
    def report(failed, residual, fallback_residual, fallback_failed, ridge):
        failed = np.asarray(failed)
        if not failed.any():
            return
        residual = np.nan_to_num(np.asarray(residual, dtype=float), nan=np.inf)
        worst = float(np.max(np.where(failed, residual, -np.inf)))
        if dense:
            how = (
                "the minimum-norm least-squares solution (dense, by SVD; singular values below "
                "n·eps·σ_max count as zero)"
            )
        else:
            how = (
                "CG on the ridge-regularized normal equations (AᵀA + ρI) u = Aᵀb, ρ = "
                f"{float(np.max(np.asarray(ridge))):.2e} ≈ 10 eps ‖A‖²"
            )
        message = (
            "the linear system of an implicit derivative was not solved (relative residual "
            f"{worst:.3e}: A = -dF/dx is singular or ill-conditioned, or the solver stopped "
            f"early), so it was solved again as a least-squares problem: {how}. Where A is "
            "singular the derivative returned is the minimum-norm one, which ignores the "
            "directions in which the solution is not determined (a translation, a "
            "rank-deficient design)."
        )
        fallback_failed = np.asarray(fallback_failed) & failed
        if fallback_failed.any():
            fallback_residual = np.nan_to_num(
                np.asarray(fallback_residual, dtype=float), nan=np.inf
            )
            worst = float(np.max(np.where(fallback_failed, fallback_residual, -np.inf)))
            message += (
                f" That solve failed too (relative residual of its normal equations {worst:.3e}):"
                " the derivative is inaccurate (possibly not finite)."
            )
        warnings.warn(message, BackwardSolveWarning, stacklevel=2)

    return report


# The fallback's ridge, relative to ‖A‖² (estimated by power iteration): small enough to leave
# a well-determined derivative unchanged to about 10 eps κ(A)², large enough to keep CG's
# iterates bounded along a null space that rounding excites.
_FALLBACK_RELATIVE_RIDGE = 10.0
_POWER_ITERATIONS = 20


def _random_like(b: PyTree) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(b)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, jnp.shape(v), jnp.result_type(v))
            for k, v in zip(keys, leaves, strict=True)
        ],
    )


def _least_squares_fallback(matvec: Callable, b: PyTree, dense: bool):
    """(x, relative normal residual, ridge ρ): x the least-squares solution of A x = b.

    Dense (few unknowns): x = A⁺b, the minimum-norm least-squares solution, by SVD. Else CG on
    (AᵀA + ρI) x = Aᵀb with ρ = 10 eps λ_max(AᵀA). The residual returned is
    ‖Aᵀ(A x − b) + ρ x‖ / ‖Aᵀb‖.
    """
    dtype = tree.dtype(b)
    transpose = jax.linear_transpose(matvec, b)

    def rmatvec(y):
        return transpose(y)[0]

    def normal(v):
        return rmatvec(matvec(v))

    rhs = rmatvec(b)
    if dense:
        a, b_flat, unravel = linear_solve._materialize(matvec, b)
        x = unravel(jnp.linalg.lstsq(a, b_flat)[0])
        ridge = jnp.zeros((), dtype)
    else:

        def power(_, v):
            w = normal(v)
            return tree.scale(1.0 / jnp.maximum(tree.norm(w), jnp.finfo(dtype).tiny), w)

        v = jax.lax.fori_loop(0, _POWER_ITERATIONS, power, _random_like(b))
        largest = tree.vdot(v, normal(v)) / tree.vdot(v, v)
        eps = float(jnp.finfo(dtype).eps)
        ridge = (_FALLBACK_RELATIVE_RIDGE * eps * largest).astype(dtype)
        x = linear_solve.normal_cg(matvec, b, ridge=ridge)
    r = tree.axpy(ridge, x, rmatvec(tree.sub(matvec(x), b)))
    rhs_norm = tree.norm(rhs)
    residual = tree.norm(r) / jnp.where(rhs_norm > 0, rhs_norm, 1.0)
    return x, residual.astype(dtype), ridge


def _checked_solve(solve: Any, symmetric: bool, on_failure: str) -> Callable:
    """``solve(matvec, b) -> x`` from a user's choice, with structure and residual checks.

    After solving, one more matvec gives the relative residual ‖A x − b‖ / ‖b‖ (for a
    least-squares solver such as ``normal_cg``, ‖Aᵀ(A x − b)‖ / ‖Aᵀb‖). It fails when it
    is not finite or exceeds 100 × the solver's tolerance (its ``tol`` if it declares one, else
    ``linear_solve.default_tol``). Then ``on_failure`` decides: "warn" (the default) warns with
    the residual at run time, "raise" raises :class:`BackwardSolveError`, "nan" returns NaN,
    "ignore" skips the check, and "fallback" solves the system again in the least-squares sense
    (:func:`_least_squares_fallback`) and warns that it did.
    """
    if on_failure not in _POLICIES:
        raise ValueError(f"on_failure must be one of {_POLICIES}, got {on_failure!r}")
    base = linear_solve.resolve(solve)
    if symmetric and linear_solve.accepts_keyword(base, "symmetric"):
        base = functools.partial(base, symmetric=True)
    declared = linear_solve.declared_tol(base)
    least_squares = linear_solve.is_least_squares(base)
    solve_name = getattr(base, "__name__", None) or getattr(
        getattr(base, "func", None), "__name__", repr(base)
    )

    def checked(matvec, b):
        x = base(matvec, b)
        _check_same_structure(b, x, f"solve ({solve_name})", "its right-hand side b")
        if on_failure == "ignore":
            return x
        dtype = tree.dtype(b)
        tol = declared if declared is not None else linear_solve.default_tol(dtype)
        threshold = max(100.0 * tol, 1000.0 * float(jnp.finfo(dtype).eps))
        r = tree.sub(matvec(x), b)
        if least_squares:  # a least-squares solver only makes the normal residual Aᵀr vanish
            transpose = jax.linear_transpose(matvec, b)
            r, b = transpose(r)[0], transpose(b)[0]
        b_norm = tree.norm(b)
        residual = tree.norm(r) / jnp.where(b_norm > 0, b_norm, 1.0)
        failed = jnp.logical_not(residual <= threshold)  # True for NaN too
        if on_failure == "nan":
            return tree.map(lambda leaf: jnp.where(failed, jnp.nan, leaf), x)
        if on_failure == "fallback":
            dense = tree.size(b) <= linear_solve.DENSE_MAX_SIZE
            zero = jnp.zeros((), residual.dtype)
            x, fallback_residual, ridge = jax.lax.cond(
                failed,
                lambda: _least_squares_fallback(matvec, b, dense),
                lambda: (x, zero, zero),
            )
            fallback_failed = failed & jnp.logical_not(fallback_residual <= threshold)
            io_callback(
                _fallback_callback(dense),
                None,
                failed,
                residual,
                fallback_residual,
                fallback_failed,
                ridge,
                ordered=False,
            )
            return x
        # An unordered io_callback: kept by the compiler, and batched by a rolled loop under
        # vmap (jax.debug.callback unrolls one call per batch element, slow to compile).
        io_callback(_failure_callback(on_failure), None, failed, residual, ordered=False)
        return x

    return checked


def _linear_solve(matvec: Callable, b: PyTree, solve: Callable, symmetric: bool) -> PyTree:
    """x = A⁻¹ b as a transposable ``custom_linear_solve``, A given by ``matvec``.

    A right-hand side of several leaves crosses ``custom_linear_solve`` as one flat vector: its
    transpose rule needs every leaf of b to be linear in the tangents, which fails when one leaf
    of the solution does not move with the perturbed arguments (its b leaf is a constant zero).
    ``solve`` and ``matvec`` still see pytrees.
    """
    if len(jax.tree_util.tree_leaves(b)) <= 1:
        return jax.lax.custom_linear_solve(
            matvec, b, solve=solve, transpose_solve=solve, symmetric=symmetric
        )
    b_flat, unravel = ravel_pytree(b)

    def flat(fun):
        return lambda v: ravel_pytree(fun(unravel(v)))[0]

    def flat_solve(flat_matvec, rhs):
        tree_matvec = lambda x: unravel(flat_matvec(ravel_pytree(x)[0]))  # noqa: E731
        return ravel_pytree(solve(tree_matvec, unravel(rhs)))[0]

    x_flat = jax.lax.custom_linear_solve(
        flat(matvec), b_flat, solve=flat_solve, transpose_solve=flat_solve, symmetric=symmetric
    )
    return unravel(x_flat)


def _tangent(residual: Callable, sol: PyTree, theta: list, t_theta: list, solve, symmetric):
    """J t for J = −(∂₁G)⁻¹ ∂₂G at (sol, θ); θ and t given as flat lists (None: no tangent)."""
    moving = [i for i, t in enumerate(t_theta) if t is not None]
    if not moving:
        return tree.zeros_like(sol)

    def residual_of_moving(values):
        full = list(theta)
        for i, v in zip(moving, values, strict=True):
            full[i] = v
        return residual(sol, full)

    _, rhs = jax.jvp(
        residual_of_moving, ([theta[i] for i in moving],), ([t_theta[i] for i in moving],)
    )
    _, matvec = jax.linearize(lambda x: residual(x, theta), sol)
    return _linear_solve(matvec, tree.neg(rhs), solve, symmetric)


def _keep_tangent(primal: Any, tangent: Any) -> Any:
    """The tangent if it can carry a derivative, else None (symbolic zeros, integer inputs)."""
    if isinstance(tangent, SymbolicZero) or not _is_inexact(primal):
        return None
    if getattr(tangent, "dtype", None) == jax.dtypes.float0:
        return None
    return tangent


# ---------------------------------------------------------------------------------------------
# The decorators.


def _symmetric_hint(fun: Callable, symmetric: bool | None) -> bool:
    if symmetric is not None:
        return bool(symmetric)
    return bool(getattr(fun, "symmetric", False))


def _implicit_solver(
    residual_fun: Callable,
    user_fun: Callable,
    fun_name: str,
    solver: Callable,
    has_aux: bool,
    checked: Callable,
    symmetric: bool,
) -> Callable:
    """Wrap ``solver`` so that its output is differentiated through residual_fun(x, ...) = 0."""

    @functools.wraps(solver)
    def wrapped(init_params, *args, **kwargs):
        _check_signature(user_fun, fun_name, init_params, args, kwargs)
        split = _SplitArgs(args, kwargs)

        # The solver runs on values cut from the graph: it is never differentiated.
        out = solver(
            tree.stop_gradient(init_params), *tree.stop_gradient(args), **tree.stop_gradient(kwargs)
        )
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "with has_aux=True the solver must return a pair (solution, aux); got "
                    f"{type(out).__name__}"
                )
            sol, aux = out
        else:
            sol, aux = out, None
        sol = tree.stop_gradient(sol)

        output_shape = []

        def residual(x, arrays):
            a, k = split.merge(arrays)
            value = residual_fun(x, *a, **k)
            output_shape.append(
                tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), v.dtype), value)
            )
            return value

        # Arrays that the optimality function closes over (hyperparameters captured in a closure
        # inside a differentiated function) become explicit inputs, so they get derivatives too.
        closed_residual, consts = jax.closure_convert(residual, sol, split.arrays)
        _check_same_structure(sol, output_shape[0], fun_name, "the solution")

        @jax.custom_jvp
        def attach_derivative(sol, arrays, consts):
            return sol

        def attach_derivative_jvp(primals, tangents):
            sol, arrays, consts = primals
            _, t_arrays, t_consts = tangents
            # The solution seen by the rule goes through this same rule again, so that the
            # rule's own derivative (second order) sees how the solution moves with θ.
            sol = attach_derivative(sol, arrays, consts)
            theta = [*arrays, *consts]
            t_theta = [
                _keep_tangent(p, t) for p, t in zip(theta, [*t_arrays, *t_consts], strict=True)
            ]
            n = len(arrays)

            def g(x, flat):
                return closed_residual(x, flat[:n], *flat[n:])

            return sol, _tangent(g, sol, theta, t_theta, checked, symmetric)

        attach_derivative.defjvp(attach_derivative_jvp, symbolic_zeros=True)
        sol = attach_derivative(sol, split.arrays, consts)
        return (sol, tree.stop_gradient(aux)) if has_aux else sol

    return wrapped


def custom_root(
    optimality_fun: Callable,
    has_aux: bool = False,
    solve: str | Callable | None = None,
    *,
    symmetric: bool | None = None,
    on_failure: str = "warn",
) -> Callable[[Callable], Callable]:
    """Make a solver's output differentiable through its optimality conditions F(x, θ) = 0.

    Decorates ``solver(init_params, *args, **kwargs) -> x`` (or ``-> (x, aux)`` with
    ``has_aux``). ``optimality_fun(x, *args, **kwargs)`` returns a pytree with the structure of x
    that vanishes at the solution. By the implicit function theorem, with A = −∂₁F(x*, θ) and
    B = ∂₂F(x*, θ), the Jacobian of x*(θ) solves A J = B: forward mode solves A u = B v, reverse
    mode Aᵀ u = v and returns uᵀB. A and B are only applied, by JVPs and VJPs of F.

    The decorated solver is differentiable, in every mode and order JAX has (``grad``, ``jvp``,
    ``jacfwd``, ``jacrev``, ``hessian``, reverse over reverse) and under ``jit`` and ``vmap``,
    with respect to every array (or pytree of arrays) passed after ``init_params``, positionally or
    by keyword, and to arrays that ``optimality_fun`` closes over. Other arguments (ints, strings,
    callables, None) pass through untouched. The solver itself is never differentiated: the
    derivative with respect to ``init_params`` is zero, and so is the derivative through ``aux``.

    Args:
      optimality_fun: F(x, *args, **kwargs), zero at the solution.
      has_aux: whether the solver returns ``(solution, aux)``.
      solve: the linear solver for the system in A: a name from :mod:`implicitdiff.linear_solve`
        (``"cg"``, ``"gmres"``, ``"bicgstab"``, ``"normal_cg"``, ``"lu"``, ``"cholesky"``,
        ``"auto"``), or a callable ``solve(matvec, b) -> x``. Default ``"auto"``: dense LU for at
        most 200 unknowns, else CG when the system is symmetric and GMRES otherwise.
      symmetric: whether ∂₁F is symmetric (as the Hessian of a stationary condition), which lets
        ``auto`` use CG and reverse mode reuse ``solve`` without transposing. ``None`` reads the
        ``symmetric`` attribute of ``optimality_fun`` (set by the builders in
        :mod:`implicitdiff.optimality`), else False.
      on_failure: what to do when the linear system is not solved to tolerance (the residual is
        checked with one extra matvec): ``"warn"`` (default, a :class:`BackwardSolveWarning` at run
        time), ``"raise"`` (a :class:`BackwardSolveError`), ``"nan"`` (the derivative is NaN),
        ``"ignore"``, or ``"fallback"``: solve the failed system again in the least-squares
        sense and warn (a :class:`BackwardSolveWarning`) — with at most
        ``linear_solve.DENSE_MAX_SIZE`` unknowns the minimum-norm solution A⁺b by SVD, above it
        CG on (AᵀA + ρI) u = Aᵀb with ρ = 10 eps ‖A‖². For a singular A (a translation-invariant
        energy, a rank-deficient least squares) that is the minimum-norm derivative, which ignores
        the directions in which the solution is not determined. Under ``vmap`` the fallback is
        computed for every element (a batched ``lax.cond``). "warn", "raise" and "fallback"
        report through a host callback (about 0.1–0.5 ms per call of a compiled function: it
        disables JAX's C++ fast dispatch); "nan" and "ignore" add none. A singular system whose
        right-hand side lies in the range of A (forward mode on a translation-invariant energy)
        is solvable: any solution passes the check, and solvers differ in the null-space part
        they return; ``solve="normal_cg"`` gives the minimum-norm one.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from implicitdiff import custom_root
      >>> def F(x, lam, X, y):  # gradient of ½‖Xx − y‖² + ½ lam ‖x‖²
      ...     return X.T @ (X @ x - y) + lam * x
      >>> @custom_root(F)
      ... def ridge(init_x, lam, X, y):
      ...     return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)
      >>> X, y = jnp.ones((5, 3)) + jnp.eye(5, 3), jnp.arange(5.0)
      >>> dx_dlam = jax.jacobian(ridge, argnums=1)(jnp.zeros(3), 1.0, X, y)
    """
    hint = _symmetric_hint(optimality_fun, symmetric)
    checked = _checked_solve(solve, hint, on_failure)

    def decorator(solver: Callable) -> Callable:
        return _implicit_solver(
            optimality_fun, optimality_fun, "optimality_fun", solver, has_aux, checked, hint
        )

    return decorator


def custom_fixed_point(
    fixed_point_fun: Callable,
    has_aux: bool = False,
    solve: str | Callable | None = None,
    *,
    symmetric: bool | None = None,
    on_failure: str = "warn",
) -> Callable[[Callable], Callable]:
    """Make a solver's output differentiable through its fixed-point condition x = T(x, θ).

    The same as :func:`custom_root` with F(x, θ) = T(x, θ) − x. The system solved is
    (I − ∂₁T) u = ∂₂T v, positive definite when T is a contraction with a symmetric Jacobian (as
    the gradient step T(x) = x − η∇f(x) for convex f). ``symmetric`` states whether ∂₁T is
    symmetric; the derivative with respect to ``init_params`` is zero.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import custom_fixed_point
      >>> T = lambda x, theta: 0.5 * jnp.cos(x) + theta  # a contraction in x
      >>> @custom_fixed_point(T)
      ... def iterate(x, theta):
      ...     for _ in range(100):
      ...         x = T(x, theta)
      ...     return x
    """
    hint = _symmetric_hint(fixed_point_fun, symmetric)
    checked = _checked_solve(solve, hint, on_failure)

    def residual(x, /, *args, **kwargs):  # x − T(x): the root's sign that makes I − ∂T appear
        return tree.sub(x, fixed_point_fun(x, *args, **kwargs))

    def decorator(solver: Callable) -> Callable:
        return _implicit_solver(
            residual, fixed_point_fun, "fixed_point_fun", solver, has_aux, checked, hint
        )

    return decorator


# ---------------------------------------------------------------------------------------------
# The two products on their own.


def root_jvp(
    optimality_fun: Callable,
    sol: PyTree,
    args: tuple,
    tangents: tuple,
    solve: str | Callable | None = None,
    *,
    symmetric: bool | None = None,
    on_failure: str = "warn",
) -> PyTree:
    """J v: the directional derivative of the root x*(θ) of F(x, θ) = 0 at ``sol``.

    Solves A u = B v with A = −∂₁F(sol, θ), B = ∂₂F(sol, θ), θ = ``args``, v = ``tangents`` (a
    tuple like ``args``; None, or the entry of a non-array argument, means no perturbation).
    Returns u, a pytree like ``sol``. Differentiable itself.
    """
    args = tuple(tree.map(_number_to_array, a) for a in args)
    tangents = tuple(tangents)
    if len(tangents) != len(args):
        raise TypeError(
            f"tangents must have one entry per argument: {len(args)} args, {len(tangents)} tangents"
        )
    split = _SplitArgs(args, {})
    t_arrays = []
    for i, (a, t) in enumerate(zip(args, tangents, strict=True)):
        a_leaves, a_tree = jax.tree_util.tree_flatten(a)
        if t is None:
            t_arrays += [None] * builtins.sum(_is_array(leaf) for leaf in a_leaves)
            continue
        t_leaves, t_tree = jax.tree_util.tree_flatten(t)
        if t_tree != a_tree:
            raise TypeError(
                f"tangents[{i}] must have the structure of args[{i}]: expected {a_tree}, "
                f"got {t_tree}"
            )
        for leaf, t_leaf in zip(a_leaves, t_leaves, strict=True):
            if not _is_array(leaf):
                continue
            if not _is_inexact(leaf) and jnp.result_type(t_leaf) != jax.dtypes.float0:
                raise TypeError(
                    f"args[{i}] has the integer or boolean dtype {jnp.result_type(leaf)} and "
                    "cannot be differentiated: give None as its tangent"
                )
            if _is_inexact(leaf) and jnp.shape(t_leaf) != jnp.shape(leaf):
                raise TypeError(
                    f"tangents[{i}] has a leaf of shape {jnp.shape(t_leaf)} for an argument "
                    f"leaf {_describe(leaf)}"
                )
            t_arrays.append(_keep_tangent(leaf, t_leaf))

    def residual(x, arrays):
        return optimality_fun(x, *split.merge(arrays)[0])

    hint = _symmetric_hint(optimality_fun, symmetric)
    checked = _checked_solve(solve, hint, on_failure)
    return _tangent(residual, sol, split.arrays, t_arrays, checked, hint)


def root_vjp(
    optimality_fun: Callable,
    sol: PyTree,
    args: tuple,
    cotangent: PyTree,
    solve: str | Callable | None = None,
    *,
    symmetric: bool | None = None,
    on_failure: str = "warn",
) -> tuple:
    """vᵀJ: the cotangents of ``args`` for the cotangent v of the root x*(θ) of F(x, θ) = 0.

    Solves Aᵀ u = v with A = −∂₁F(sol, θ), then returns uᵀB with B = ∂₂F(sol, θ), as a tuple with
    one entry per argument (None for a non-array argument; float0 zeros for an integer one).
    """
    args = tuple(tree.map(_number_to_array, a) for a in args)
    split = _SplitArgs(args, {})
    _check_same_structure(sol, cotangent, "cotangent", "sol")

    def residual_of(x, arrays):
        a, _ = split.merge(arrays)
        return optimality_fun(x, *a)

    _, vjp_x = jax.vjp(lambda x: residual_of(x, split.arrays), sol)
    hint = _symmetric_hint(optimality_fun, symmetric)
    checked = _checked_solve(solve, hint, on_failure)
    # (∂₁F)ᵀ w = v, then vᵀJ = −wᵀ∂₂F: the sign of A = −∂₁F moves onto the last product.
    w = checked(lambda u: vjp_x(u)[0], cotangent)
    _, vjp_args = jax.vjp(lambda arrays: residual_of(sol, arrays), split.arrays)
    (array_cts,) = vjp_args(tree.neg(w))
    merged, _ = split.merge(array_cts)
    leaves_by_arg = []
    for a, ct in zip(args, merged, strict=True):
        has_arrays = any(_is_array(leaf) for leaf in jax.tree_util.tree_leaves(a))
        leaves_by_arg.append(ct if has_arrays else None)
    return tuple(leaves_by_arg)
