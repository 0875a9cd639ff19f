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

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.flatten_util import ravel_pytree

from implicitdiff import _checks, _loop, _real_pairs, tree
from implicitdiff._args import ArgsSplit, is_dynamic
from implicitdiff._backward_check import (
    BackwardSolveError,
    BackwardSolveWarning,
    check_same_structure,
    engine_solve,
)
from implicitdiff._typing import PyTree

__all__ = [
    "BackwardSolveError",
    "BackwardSolveWarning",
    "custom_fixed_point",
    "custom_root",
    "root_jvp",
    "root_vjp",
]


def _is_inexact(leaf: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


# ---------------------------------------------------------------------------------------------
# The linear solve of the implicit function theorem.


def _linear_solve(matvec: Callable, b: PyTree, solve: Callable, symmetric: bool) -> PyTree:
    """x = A⁻¹ b as a transposable ``custom_linear_solve``, A given by ``matvec``.

    A right-hand side of several leaves crosses ``custom_linear_solve`` as one flat vector: its
    transpose rule needs every leaf of b to be linear in the tangents, which fails when one leaf
    of the solution does not move with the perturbed arguments (its b leaf is a constant zero).
    ``solve`` and ``matvec`` still see pytrees.

    Inside ``shard_map`` the right-hand side varies across devices; a solver that applies the
    matrix to a constant (the identity's columns of a dense factorization) gets that constant
    marked varying as b, the type the linearized matvec expects (a no-op elsewhere).
    """
    base_solve = solve

    def solve(matvec, rhs):
        return base_solve(lambda v: matvec(_loop.vary_like(v, rhs)), rhs)

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
    """J t for J = −(∂₁G)⁻¹ ∂₂G at (sol, θ); θ and t given as flat lists (None: no tangent).

    A complex solution is solved for on its real pairs (:mod:`implicitdiff._real_pairs`): ∂₁G
    is ℝ-linear, not ℂ-linear, whenever G is not holomorphic in x (the gradient of a real
    objective of complex parameters), and there a dense matrix, a Krylov method over ℂ and
    JAX's transpose were silently wrong. The symmetric hint still picks the solver, but the
    transposed system is JAX's transpose of the pairs' matvec: a hint that does not hold on the
    pairs costs a flagged solve, never a wrong transpose.
    """
    moving = [i for i, t in enumerate(t_theta) if t is not None]
    if not moving:
        return tree.zeros_like(sol)
    if _real_pairs.complex_leaves(sol):
        on_pairs = _real_pairs.residual_on_pairs(residual, sol)
        pairs = _tangent(on_pairs, _real_pairs.to_real(sol), theta, t_theta, solve, False)
        return _real_pairs.from_real(pairs, sol)

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


def _bound_to(fun: Callable, reference: Any) -> Callable:
    """``fun``, or (JAXopt's ``reference_signature``) ``fun`` called with the arguments bound to
    ``reference``, ``(init_params, *args, **kwargs)``'s signature, positionally in its order."""
    if reference is None:
        return fun
    if not isinstance(reference, inspect.Signature):
        if not callable(reference):
            raise TypeError(
                f"reference_signature must be an inspect.Signature or a function, got {reference!r}"
            )
        reference = inspect.signature(getattr(reference, "subfun", reference))

    def bound(x, /, *args, **kwargs):
        arguments = reference.bind(x, *args, **kwargs)
        return fun(x, *arguments.args[1:], **arguments.kwargs)

    bound.__signature__ = reference
    return bound


def _implicit_solver(
    residual_fun: Callable,
    user_fun: Callable,
    fun_name: str,
    solver: Callable,
    has_aux: bool,
    checked: Callable,
    symmetric: bool,
    masks: Callable,
) -> Callable:
    """Wrap ``solver``: its output differentiated through residual_fun(x, ...) = 0 (on masks)."""

    @functools.wraps(solver)
    def wrapped(init_params, *args, **kwargs):
        _checks.check_solution_signature(user_fun, fun_name, init_params, args, kwargs)
        split = ArgsSplit(args, kwargs)
        key = split.key()

        # The solver runs on values cut from the graph: it is never differentiated.
        cut_args, cut_kwargs = tree.stop_gradient((args, kwargs))
        out = solver(tree.stop_gradient(init_params), *cut_args, **cut_kwargs)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "with has_aux=True the solver must return a pair (solution, aux); got "
                    f"{type(out).__name__}"
                )
            sol, aux = out
        else:
            sol, aux = out, None
        # Under shard_map, a solution as varying across devices as its inputs (a host
        # callback's output is not): its tangent, computed from them, is.
        sol = _loop.vary_like(tree.stop_gradient(sol), (init_params, args, kwargs))
        mask = masks(sol, *cut_args, **cut_kwargs)  # the support S, or None

        output_shape = []

        def residual(x, arrays):
            a, k = ArgsSplit.merge(key, arrays)
            value = residual_fun(x, *a, **k)
            output_shape.append(
                tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), v.dtype), value)
            )
            return value

        # Arrays that the optimality function closes over (hyperparameters captured in a closure
        # inside a differentiated function) become explicit inputs, so they get derivatives too.
        closed_residual, consts = jax.closure_convert(residual, sol, split.arrays)
        check_same_structure(sol, output_shape[0], fun_name, "the solution", dtypes=True)

        @jax.custom_jvp
        def attach_derivative(sol, arrays, consts, mask):
            return sol

        def attach_derivative_jvp(primals, tangents):
            sol, arrays, consts, mask = primals
            _, t_arrays, t_consts, _ = tangents
            # The solution seen by the rule goes through this same rule again, so that the
            # rule's own derivative (second order) sees how the solution moves with θ.
            sol = attach_derivative(sol, arrays, consts, mask)
            # A solution that is not finite (a failed or flagged run) has no derivative: NaN,
            # never a silent finite one. The scaling is applied to the tangents going in and to
            # the one coming out, so that it survives transposition (reverse mode), where a
            # masking operation inside F (a projection's select) would drop it at one end.
            # The factor is 1 + Σ 0·xⱼ: 1 if every entry of the solution is finite, else NaN
            # (0·±inf and 0·NaN are NaN). One fused multiply-and-sum, which XLA compiles faster
            # than a test of finiteness and a select (-6% of a ridge hypergradient's compile
            # time in benchmarks/bench_engine.py); it makes a NaN only where it returns one.
            zero_or_nan = sum(
                (jnp.real(jnp.sum(v * 0)) for v in jax.tree_util.tree_leaves(sol)),
                start=jnp.zeros((), jnp.finfo(tree.dtype(sol)).dtype),
            )

            def factor(dtype):
                return (1 + zero_or_nan).astype(dtype)

            def flag(t):
                if t is None:
                    return None
                scale = factor(jnp.result_type(t))
                # Under shard_map a replicated input's tangent must stay replicated: a flag that
                # varies per device is applied to the outgoing tangent only.
                return t * scale if _loop.varies_within(scale, t) else t

            theta = [*arrays, *consts]
            t_theta = [
                flag(_keep_tangent(p, t))
                for p, t in zip(theta, [*t_arrays, *t_consts], strict=True)
            ]
            n = len(arrays)

            def g(x, flat):
                return closed_residual(x, flat[:n], *flat[n:])

            # (A complex solution is solved for on its real pairs, its support with it.)
            solve = functools.partial(checked, support=_real_pairs.mask_to_real(mask, sol))
            tangent = _tangent(g, sol, theta, t_theta, solve, symmetric)
            return sol, jax.tree_util.tree_map(lambda t: t * factor(t.dtype), tangent)

        attach_derivative.defjvp(attach_derivative_jvp, symbolic_zeros=True)
        sol = attach_derivative(sol, split.arrays, consts, mask)
        return (sol, tree.stop_gradient(aux)) if has_aux else sol

    return wrapped


def custom_root(
    optimality_fun: Callable,
    has_aux: bool = False,
    solve: str | Callable | None = None,
    reference_signature: Callable | inspect.Signature | None = None,
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
        ``"auto"``), a callable ``solve(matvec, b) -> x`` (checked against the default
        tolerance), or a :class:`implicitdiff.linear_solve.Spec` declaring its tolerance. Default
        ``"auto"``: LU if cheaper (≤ 200 unknowns), else CG if symmetric, else GMRES.
      reference_signature: JAXopt's option: a signature (or a function whose signature it is)
        of the solver's arguments ``(init_params, *args, **kwargs)``; the arguments of a call
        are bound to it and passed to F positionally in its order (keywords that it does not
        name stay keywords). None (the default): passed to F as given.
      symmetric: whether ∂₁F is symmetric (as the Hessian of a stationary condition), which lets
        ``auto`` use CG and reverse mode reuse ``solve`` without transposing. ``None``: what
        ``optimality_fun`` states if it is a condition built by :mod:`implicitdiff.optimality`
        (its ``symmetric`` field), else False.
      on_failure: what to do when the linear system is not solved to tolerance (its residual is
        checked with one more matvec): ``"warn"`` (default, a :class:`BackwardSolveWarning`),
        ``"raise"`` (a :class:`BackwardSolveError`, reaching the caller inside a
        ``jax.errors.JaxRuntimeError``), ``"nan"`` (the derivative is NaN), ``"ignore"``, or
        ``"fallback"`` (solve again in the least-squares sense, the minimum-norm derivative for
        a singular A, and warn). The report costs nothing unless the solve failed and works
        under every transformation; see ``docs/failure_modes.md`` ("When the backward linear
        system fails") and :mod:`implicitdiff._backward_check`.

    Returns:
      A decorator: ``custom_root(F)(solver)`` is a function with the signature of ``solver``,
        returning its value (``x``, or ``(x, aux)``) with the implicit derivative attached.

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
    hint, checked, masks = engine_solve(optimality_fun, solve, symmetric, on_failure)
    user_fun = _bound_to(optimality_fun, reference_signature)
    masks = _bound_to(masks, reference_signature)

    def decorator(solver: Callable) -> Callable:
        return _implicit_solver(
            user_fun, user_fun, "optimality_fun", solver, has_aux, checked, hint, masks
        )

    return decorator


def custom_fixed_point(
    fixed_point_fun: Callable,
    has_aux: bool = False,
    solve: str | Callable | None = None,
    reference_signature: Callable | inspect.Signature | None = None,
    *,
    symmetric: bool | None = None,
    on_failure: str = "warn",
) -> Callable[[Callable], Callable]:
    """Make a solver's output differentiable through its fixed-point condition x = T(x, θ).

    The same as :func:`custom_root` with F(x, θ) = T(x, θ) − x. The system solved is
    (I − ∂₁T) u = ∂₂T v, positive definite when T is a contraction with a symmetric Jacobian (as
    the gradient step T(x) = x − η∇f(x) for convex f). ``symmetric`` states whether ∂₁T is
    symmetric; the derivative with respect to ``init_params`` is zero.

    Args:
      fixed_point_fun: T(x, *args, **kwargs), a pytree with the structure of x, equal to x at
        the solution.
      has_aux: whether the solver returns ``(solution, aux)``.
      solve: the linear solver for the system in I − ∂₁T, as in :func:`custom_root` (default
        ``"auto"``).
      reference_signature: JAXopt's option, as in :func:`custom_root` (for T).
      symmetric: whether ∂₁T is symmetric; ``None``: what ``fixed_point_fun`` states if it is a
        condition built by :mod:`implicitdiff.optimality`, else False.
      on_failure: the policy when the linear system is not solved to tolerance, as in
        :func:`custom_root` (default ``"warn"``).

    Returns:
      A decorator: ``custom_fixed_point(T)(solver)`` is a function with the signature of
        ``solver``, returning its value (``x``, or ``(x, aux)``) with the implicit derivative
        attached.

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
    hint, checked, masks = engine_solve(fixed_point_fun, solve, symmetric, on_failure)
    user_fun = _bound_to(fixed_point_fun, reference_signature)
    masks = _bound_to(masks, reference_signature)

    def residual(x, /, *args, **kwargs):  # x − T(x): the root's sign that makes I − ∂T appear
        return tree.sub(x, user_fun(x, *args, **kwargs))

    def decorator(solver: Callable) -> Callable:
        return _implicit_solver(
            residual, user_fun, "fixed_point_fun", solver, has_aux, checked, hint, masks
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

    Solves A u = B v with A = −∂₁F(sol, θ), B = ∂₂F(sol, θ), θ = ``args``, v = ``tangents``.
    Differentiable itself.

    Args:
      optimality_fun: F(x, *args), zero at the solution (positional arguments only).
      sol: the root x*(θ), a pytree (F is linearized there; it is not re-solved).
      args: the tuple θ of F's arguments after x; Python numbers are treated as 0-d arrays.
      tangents: a tuple with one entry per argument, each None (no perturbation; also the only
        valid entry for an integer or boolean argument) or a pytree with the structure and
        shapes of that argument.
      solve: the linear solver for the system in A, as in :func:`custom_root` (default
        ``"auto"``).
      symmetric: whether ∂₁F is symmetric; ``None``: what ``optimality_fun`` states if it is a
        condition built by :mod:`implicitdiff.optimality`, else False.
      on_failure: the policy when the linear system is not solved to tolerance, as in
        :func:`custom_root` (default ``"warn"``).

    Returns:
      u = J v, a pytree like ``sol`` (zeros when no tangent is given).
    """
    args = _numbers_to_arrays(args)
    tangents = tuple(tangents)
    if len(tangents) != len(args):
        raise TypeError(
            f"tangents must have one entry per argument: {len(args)} args, {len(tangents)} tangents"
        )
    split = ArgsSplit(args, {})
    t_arrays = []
    for i, (a, t) in enumerate(zip(args, tangents, strict=True)):
        a_leaves, a_tree = jax.tree_util.tree_flatten(a)
        t_leaves, t_tree = jax.tree_util.tree_flatten(t, is_leaf=lambda v: v is None)
        if t is None:
            t_leaves = [None] * len(a_leaves)
        elif t_tree != a_tree:
            raise TypeError(
                f"tangents[{i}] must have the structure of args[{i}]: expected {a_tree}, "
                f"got {t_tree}"
            )
        for leaf, t_leaf in zip(a_leaves, t_leaves, strict=True):
            if not is_dynamic(leaf):
                continue
            if t_leaf is not None and not _is_inexact(leaf):
                if jnp.result_type(t_leaf) != jax.dtypes.float0:
                    raise TypeError(
                        f"args[{i}] has the integer or boolean dtype {jnp.result_type(leaf)} "
                        "and cannot be differentiated: give None as its tangent"
                    )
            elif t_leaf is not None and jnp.shape(t_leaf) != jnp.shape(leaf):
                raise TypeError(
                    f"tangents[{i}] has a leaf of shape {jnp.shape(t_leaf)} for an argument "
                    f"leaf {jnp.shape(leaf)} {jnp.result_type(leaf)}"
                )
            t_arrays.append(None if t_leaf is None else _keep_tangent(leaf, t_leaf))
    key = split.key()

    def residual(x, arrays):
        return optimality_fun(x, *ArgsSplit.merge(key, arrays)[0])

    hint, checked, masks = engine_solve(optimality_fun, solve, symmetric, on_failure)
    solve = functools.partial(checked, support=_real_pairs.mask_to_real(masks(sol, *args), sol))
    return _tangent(residual, sol, split.arrays, t_arrays, solve, hint)


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

    Solves Aᵀ u = v with A = −∂₁F(sol, θ), then returns uᵀB with B = ∂₂F(sol, θ).

    Args:
      optimality_fun: F(x, *args), zero at the solution (positional arguments only).
      sol: the root x*(θ), a pytree (F is linearized there; it is not re-solved).
      args: the tuple θ of F's arguments after x; Python numbers are treated as 0-d arrays.
      cotangent: v, a pytree with the structure of ``sol``.
      solve: the linear solver for the system in Aᵀ, as in :func:`custom_root` (default
        ``"auto"``).
      symmetric: whether ∂₁F is symmetric; ``None``: what ``optimality_fun`` states if it is a
        condition built by :mod:`implicitdiff.optimality`, else False.
      on_failure: the policy when the linear system is not solved to tolerance, as in
        :func:`custom_root` (default ``"warn"``).

    Returns:
      A tuple with one entry per argument: the cotangent vᵀ∂x*/∂θᵢ, a pytree like ``args[i]``
        (None for an argument without arrays; float0 zeros for an integer array).
    """
    args = _numbers_to_arrays(args)
    split = ArgsSplit(args, {})
    key = split.key()
    check_same_structure(sol, cotangent, "cotangent", "sol")

    def residual_of(x, arrays):
        return optimality_fun(x, *ArgsSplit.merge(key, arrays)[0])

    _, checked, masks = engine_solve(optimality_fun, solve, symmetric, on_failure)
    support = masks(sol, *args)
    if _real_pairs.complex_leaves(sol):  # solved on the real pairs, as in _tangent
        like, support = sol, _real_pairs.mask_to_real(support, sol)
        residual_of = _real_pairs.residual_on_pairs(residual_of, like)
        sol = _real_pairs.to_real(sol)
        _, to_complex = jax.vjp(lambda p: _real_pairs.from_real(p, like), sol)
        (cotangent,) = to_complex(cotangent)
    _, vjp_x = jax.vjp(lambda x: residual_of(x, split.arrays), sol)
    # (∂₁F)ᵀ w = v, then vᵀJ = −wᵀ∂₂F: the sign of A = −∂₁F moves onto the last product.
    w = checked(lambda u: vjp_x(u)[0], cotangent, support=support)
    _, vjp_args = jax.vjp(lambda arrays: residual_of(sol, arrays), split.arrays)
    (array_cts,) = vjp_args(tree.neg(w))
    merged, _ = ArgsSplit.merge(key, array_cts)
    has_arrays = [any(map(is_dynamic, jax.tree_util.tree_leaves(a))) for a in args]
    return tuple(ct if keep else None for ct, keep in zip(merged, has_arrays, strict=True))


def _numbers_to_arrays(args: tuple) -> tuple:
    """Every number in ``args`` becomes a 0-d array: an argument one may perturb."""

    def convert(leaf):
        if isinstance(leaf, (int, float, complex)) and not isinstance(leaf, bool):
            return jnp.asarray(leaf)
        return leaf

    return tuple(tree.map(convert, a) for a in args)
