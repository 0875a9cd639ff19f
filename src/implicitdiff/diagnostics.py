"""An estimate of the error of an implicit derivative at an approximate solution.

Theorem 1 of Blondel et al. (2021): let x* be a root of F(·, θ), x̂ an approximation of it, and
J(x) = A(x)⁻¹B(x) the implicit Jacobian evaluated at x, with A(x) = −∂₁F(x, θ) and
B(x) = ∂₂F(x, θ) (J(x*) = ∂x*(θ) is the true Jacobian, J(x̂) is what the library returns at x̂).
If A is α-well-conditioned (‖A v‖ ≥ α‖v‖) and γ-Lipschitz in x, B is β-Lipschitz in x, and
‖B(x*)‖ ≤ R, then

    ‖J(x̂) − ∂x*(θ)‖ ≤ (β/α + γR/α²) ‖x̂ − x*‖:

the error of the derivative is linear in the error of the solution. :func:`jacobian_error_bound`
estimates every quantity on the right from F alone, matrix-free, at x̂.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from implicitdiff import _checks, _summary, linear_solve
from implicitdiff._typing import PyTree

__all__ = ["JacobianErrorBound", "jacobian_error_bound"]


class JacobianErrorBound(NamedTuple):
    """What :func:`jacobian_error_bound` returns (float scalars; norms are Euclidean/spectral).

    Attributes:
      residual: ‖F(x̂, θ)‖.
      solution_error: the estimate of ‖x̂ − x*‖ from the residual,
        2‖F‖ / (α + √(α² − 2γ‖F‖)) (= ‖F‖/α when γ = 0); inf when α² ≤ 2γ‖F‖ (x̂ is too far
        from a root for the estimate).
      alpha: α = σ_min(∂₁F(x̂, θ)), the smallest singular value of A at x̂.
      gamma: γ = ‖∂ₓA(x̂)‖, the norm of the bilinear map (d, v) ↦ ∂²₁F(x̂, θ)[d, v]: the
        Lipschitz constant of A near x̂.
      beta: β = ‖∂ₓB(x̂)‖, the norm of (d, t) ↦ ∂₁∂₂F(x̂, θ)[d, t]: the Lipschitz constant of B
        near x̂.
      b_norm: R = ‖B(x̂)‖ = ‖∂₂F(x̂, θ)‖.
      factor: β/α + γR/α², the paper's constant: ‖J(x̂) − ∂x*(θ)‖ ≲ factor · ‖x̂ − x*‖ (multiply
        it by a better estimate of ‖x̂ − x*‖ if you have one).
      bound: the estimate of ‖J(x̂) − ∂x*(θ)‖, with e = solution_error:
        β e / α + γ e (R + β e) / (α (α − γ e)) (the theorem with the constants moved from x̂
        to x*: α − γe, R + βe; equal to factor · e to first order); inf if α ≤ γ e.
    """

    residual: jax.Array
    solution_error: jax.Array
    alpha: jax.Array
    gamma: jax.Array
    beta: jax.Array
    b_norm: jax.Array
    factor: jax.Array
    bound: jax.Array

    __repr__ = _summary.namedtuple_repr


def jacobian_error_bound(
    optimality_fun: Callable,
    x_hat: PyTree,
    *args: Any,
    argnums: int | Sequence[int] | None = None,
    iterations: int = 50,
    dense_max_size: int = linear_solve.DENSE_MAX_SIZE,
    seed: int = 0,
) -> JacobianErrorBound:
    """An estimate of the error ‖J(x̂) − ∂x*(θ)‖ of the implicit Jacobian computed at x̂.

    ``optimality_fun(x, *args)`` is F, zero at the solution x*(θ) (for a fixed point x = T(x, θ)
    pass F = T(x, θ) − x), or a solver of :mod:`implicitdiff.solvers`, whose own condition is
    taken (its root condition, or T(x) − x for a fixed point) with x̂ its ``params`` and ``args``
    the arguments given to its ``run`` after ``init_params``; θ is the floating-point arrays (and
    Python floats) of the arguments listed in ``argnums`` (default: every argument), flattened
    into one vector, and the Jacobian J(x) = A(x)⁻¹B(x), A = −∂₁F, B = ∂₂F, is that of x with
    respect to θ. Norms are Euclidean on the flattened x and θ, spectral on matrices. The bound
    is that of Theorem 1 of the paper,

        ‖J(x̂) − ∂x*(θ)‖ ≤ (β/α + γR/α²) ‖x̂ − x*‖,    ‖x̂ − x*‖ ≲ ‖F(x̂, θ)‖ / α,

    and every quantity in it, estimated at x̂:

    - α = σ_min(A(x̂)): with at most ``dense_max_size`` unknowns, exactly from the dense A (n
      JVPs); above, by ``iterations`` steps of Lanczos (fully reorthogonalized) on AᵀA, whose
      smallest Ritz value approaches σ_min² from above.
    - R = ‖B(x̂)‖: from the dense B (n VJPs) at that size, else by Lanczos on BBᵀ.
    - γ and β: the norms of the derivatives of A and B with respect to x at x̂, the bilinear maps
      T(d, v) = ∂²₁F[d, v] and T(d, t) = ∂₁∂₂F[d, t], with exact second-order JVPs and VJPs. Up
      to ``dense_max_size`` unknowns: the spectral norm of the unfolding of T (the n × np matrix
      whose row i holds the bilinear form T(·, ·)ᵢ), an upper bound of ‖T‖, equal to it for
      separable or quadratic F, by Lanczos on its n × n Gram matrix (2n second-order products a
      step). Above: ``iterations`` steps of the higher-order power method (alternating
      maximization of wᵀT(d, v) over unit vectors), best of 4 random starts: a lower estimate.

    It is an *estimate*, not a guarantee: the constants are measured locally at x̂ (the theorem
    wants them over a neighborhood holding x* and x̂; for twice-differentiable F they agree as
    x̂ → x*); above ``dense_max_size`` unknowns the iterations approach γ, β, R from below and
    α from above; and ‖x̂ − x*‖ is estimated from the residual, assuming x* is the root nearest
    x̂. Where F has kinks (projections, prox operators), A is not Lipschitz across them and the
    theorem does not apply when x̂ and x* lie on different sides of one (a different active
    set). The cost is that of a few hundred to a few thousand JVPs of F (vectorized), and one
    compilation per function and argument structure: a diagnostic, not for every step of a loop.

    Args:
      optimality_fun: F(x, *args), a pytree shaped like x; or a solver (anything with the
        solvers' ``optimality()`` method returning ``("root", F)`` or ``("fixed_point", T)``).
      x_hat: the approximate solution x̂ (a pytree).
      *args: the arguments of F after x.
      argnums: which of ``args`` make θ (an int or a sequence of ints); default all. Integer
        and boolean arrays, and non-array arguments, are held constant.
      iterations: the steps of each power / Lanczos iteration (default 50; Lanczos is exact
        when the number of unknowns is at most this).
      dense_max_size: up to this many unknowns, α and R are computed from dense matrices.
      seed: the seed of the random starting vectors.

    Returns:
      A :class:`JacobianErrorBound` of float scalars: the bound and every quantity in it.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.diagnostics import jacobian_error_bound
      >>> X = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]]); y = jnp.array([1.0, 0.0, 2.0])
      >>> F = lambda w, lam: X.T @ (X @ w - y) + lam * w  # ridge regression
      >>> w_hat = jnp.array([0.1, 0.2])  # an approximate solution
      >>> est = jacobian_error_bound(F, w_hat, 1.0)
      >>> bool(est.bound >= 0)
      True
    """
    if _is_solver(optimality_fun):
        optimality_fun = _solver_residual(optimality_fun)
    if not callable(optimality_fun):
        raise TypeError(f"optimality_fun must be callable (F, or a solver), got {optimality_fun!r}")
    if not (_checks.is_int(iterations) and iterations >= 1):
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    if not (_checks.is_int(dense_max_size) and dense_max_size >= 0):
        raise ValueError(f"dense_max_size must be a non-negative int, got {dense_max_size!r}")
    if argnums is None:
        argnums = tuple(range(len(args)))
    elif isinstance(argnums, int):
        argnums = (argnums,)
    argnums = tuple(argnums)
    for i in argnums:
        if not (_checks.is_int(i) and 0 <= i < len(args)):
            raise ValueError(f"argnums: {i!r} is not the index of one of the {len(args)} args")

    x_leaves = jax.tree_util.tree_leaves(x_hat)
    if not x_leaves or not all(jnp.issubdtype(jnp.result_type(v), jnp.inexact) for v in x_leaves):
        raise TypeError("x_hat must be a non-empty pytree of floating-point arrays")

    leaves, treedef = jax.tree_util.tree_flatten(list(args))
    positions = _leaf_positions(args)
    is_theta = []
    for leaf, position in zip(leaves, positions, strict=True):
        if isinstance(leaf, float):
            leaf = jnp.asarray(leaf)
        is_theta.append(
            position in argnums
            and isinstance(leaf, (jax.Array, np.ndarray))
            and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
        )
    theta = [jnp.asarray(leaf) for leaf, t in zip(leaves, is_theta, strict=True) if t]
    if not theta:
        raise ValueError(
            "jacobian_error_bound: no floating-point argument to differentiate with respect to "
            f"(argnums={argnums})"
        )
    others = [leaf for leaf, t in zip(leaves, is_theta, strict=True) if not t]
    dynamic = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in others]
    constants = [leaf for leaf, d in zip(others, dynamic, strict=True) if d]
    static = tuple(None if d else leaf for leaf, d in zip(others, dynamic, strict=True))
    structure = (treedef, tuple(is_theta), tuple(dynamic), static)
    options = (iterations, dense_max_size, seed)
    try:
        hash(structure)
        estimate = _estimate_jit
    except TypeError:  # an unhashable constant argument: trace without the cache
        estimate = _estimate
    return estimate(optimality_fun, structure, options, x_hat, theta, constants)


def _is_solver(value: Any) -> bool:
    """A solver of :mod:`implicitdiff.solvers` (duck-typed: this module sits below them)."""
    return callable(getattr(value, "optimality", None)) and callable(getattr(value, "run", None))


@functools.lru_cache(maxsize=32)
def _solver_residual(solver: Any) -> Callable:
    """The solver's condition as a root F (T(x) − x for a fixed point), one function per solver
    (solvers are frozen and hashed on their fields), so repeated calls reuse one compilation."""
    kind, fun = solver.optimality()
    if kind == "root":
        return fun

    def residual(x, *args):
        return jax.tree_util.tree_map(jnp.subtract, fun(x, *args), x)

    return residual


def _leaf_positions(args: tuple) -> list[int]:
    """The index in ``args`` of each leaf of ``list(args)``, in flattening order."""
    return [i for i, a in enumerate(args) for _ in jax.tree_util.tree_leaves(a)]


def _estimate(fun, structure, options, x_hat, theta, constants) -> JacobianErrorBound:
    treedef, is_theta, dynamic, static = structure
    iterations, dense_max_size, seed = options
    x0, unravel_x = ravel_pytree(x_hat)
    t0, unravel_t = ravel_pytree(theta)
    dtype = x0.dtype
    t0 = t0.astype(dtype)
    n, p = x0.shape[0], t0.shape[0]

    def args_of(t):
        theta_leaves = iter(unravel_t(t))
        constant_leaves = iter(constants)
        others = iter(
            next(constant_leaves) if d else s for d, s in zip(dynamic, static, strict=True)
        )
        leaves = [next(theta_leaves) if is_t else next(others) for is_t in is_theta]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def F(x, t):
        out = ravel_pytree(fun(unravel_x(x), *args_of(t)))[0]
        if out.shape != (n,):
            raise ValueError(
                f"optimality_fun must return a pytree with as many entries as x_hat ({n}), got "
                f"{out.shape[0]}"
            )
        return out.astype(dtype)

    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    residual = jnp.linalg.norm(F(x0, t0))

    def a_mv(v):  # ∂₁F v (the sign of A = −∂₁F changes no norm)
        return jax.jvp(lambda x: F(x, t0), (x0,), (v,))[1]

    _, a_vjp = jax.vjp(lambda x: F(x, t0), x0)
    _, b_vjp = jax.vjp(lambda t: F(x0, t), t0)

    def b_mv(t):
        return jax.jvp(lambda s: F(x0, s), (t0,), (t,))[1]

    if n <= dense_max_size:
        a_dense = jax.jacfwd(lambda x: F(x, t0))(x0)
        up = _checks.half_to_float32  # no half-precision LAPACK
        alpha = jnp.linalg.svd(up(_checks.for_lapack(a_dense)), compute_uv=False)[-1]
        b_dense = jax.jacrev(lambda t: F(x0, t))(t0)  # n VJPs: (n, p)
        b_norm = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(up(b_dense @ b_dense.T))[-1], 0.0))
    else:
        k = min(n, iterations)
        smallest, _ = _lanczos(lambda v: a_vjp(a_mv(v))[0], n, k, keys[0], dtype)
        alpha = jnp.sqrt(jnp.maximum(smallest, 0.0))
        _, largest = _lanczos(lambda v: b_mv(b_vjp(v)[0]), n, k, keys[1], dtype)
        b_norm = jnp.sqrt(jnp.maximum(largest, 0.0))

    # γ: T(d, v) = ∂²₁F[d, v] (symmetric in d, v); β: T(d, t) = ∂₁∂₂F[d, t].
    def a_jvp_at(x, v):
        return jax.jvp(lambda y: F(y, t0), (x,), (v,))[1]

    def b_jvp_at(x, t):
        return jax.jvp(lambda s: F(x, s), (t0,), (t,))[1]

    def a_jvp_with(s, d):
        return jax.jvp(lambda x: F(x, s), (x0,), (d,))[1]

    def gamma_map(d, v):
        return jax.jvp(lambda x: a_jvp_at(x, v), (x0,), (d,))[1]

    def gamma_adjoint(v, w):  # T(·, v)ᵀ w, and T(d, ·)ᵀ w by symmetry
        return jax.vjp(lambda x: a_jvp_at(x, v), x0)[1](w)[0]

    def beta_map(d, t):
        return jax.jvp(lambda x: b_jvp_at(x, t), (x0,), (d,))[1]

    def beta_adjoint_d(t, w):  # T(·, t)ᵀ w
        return jax.vjp(lambda x: b_jvp_at(x, t), x0)[1](w)[0]

    def beta_adjoint_t(d, w):  # T(d, ·)ᵀ w
        return jax.vjp(lambda s: a_jvp_with(s, d), t0)[1](w)[0]

    if n <= dense_max_size:
        k = min(n, iterations)
        gamma = _unfolding_norm(gamma_map, gamma_adjoint, n, k, keys[2], dtype)
        beta = _unfolding_norm(beta_map, beta_adjoint_t, n, k, keys[3], dtype)
    else:
        gamma = _power_norm(
            gamma_map, gamma_adjoint, gamma_adjoint, n, n, iterations, keys[2], dtype
        )
        beta = _power_norm(
            beta_map, beta_adjoint_d, beta_adjoint_t, n, p, iterations, keys[3], dtype
        )

    inf = jnp.asarray(jnp.inf, dtype)
    discriminant = alpha**2 - 2.0 * gamma * residual
    solution_error = jnp.where(
        discriminant > 0, 2.0 * residual / (alpha + jnp.sqrt(jnp.maximum(discriminant, 0))), inf
    )
    e = solution_error
    alpha_star = alpha - gamma * e
    bound = jnp.where(
        (alpha_star > 0) & jnp.isfinite(e),
        beta * e / alpha + gamma * e * (b_norm + beta * e) / (alpha * alpha_star),
        inf,
    )
    factor = beta / alpha + gamma * b_norm / alpha**2
    return JacobianErrorBound(
        residual=residual,
        solution_error=solution_error,
        alpha=alpha,
        gamma=gamma,
        beta=beta,
        b_norm=b_norm,
        factor=factor,
        bound=bound,
    )


_estimate_jit = jax.jit(_estimate, static_argnums=(0, 1, 2))


def _normalize(v: jax.Array) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(v.dtype).tiny)


def _unfolding_norm(T, adjoint_second, n: int, k: int, key, dtype) -> jax.Array:
    """‖T₍₁₎‖₂ for a bilinear T: ℝⁿ × ℝᵖ → ℝⁿ, an upper bound of max ‖T(d, v)‖ over unit d, v.

    T₍₁₎ is the n × np unfolding of T (row i: the matrix Mᵢ of the bilinear form T(·, ·)ᵢ), so
    ‖T(d, v)‖ = ‖T₍₁₎(d ⊗ v)‖ ≤ ‖T₍₁₎‖. Its square is the top eigenvalue of the n × n Gram
    matrix G = T₍₁₎T₍₁₎ᵀ, Gᵢⱼ = ⟨Mᵢ, Mⱼ⟩, found by k Lanczos steps; a product with G is
    N = T₍₁₎ᵀw (row k: T(eₖ, ·)ᵀw) then (Σₖ T(eₖ, Nₖ))ᵢ, 2n second-order products. The bound
    is attained when T is "diagonal" (a separable F, a quadratic one, one θ).
    """
    basis = jnp.eye(n, dtype=dtype)

    def gram(w):
        rows = jax.vmap(lambda e: adjoint_second(e, w))(basis)
        return jnp.sum(jax.vmap(T)(basis, rows), axis=0)

    _, largest = _lanczos(gram, n, k, key, dtype)
    return jnp.sqrt(jnp.maximum(largest, 0.0))


_RESTARTS = 4


def _power_norm(T, adjoint_u, adjoint_v, n: int, p: int, iterations: int, key, dtype) -> jax.Array:
    """max ‖T(u, v)‖ over unit u, v, by alternating maximization (the higher-order power method).

    ``adjoint_u(v, w)`` = T(·, v)ᵀw and ``adjoint_v(u, w)`` = T(u, ·)ᵀw. Each step raises
    wᵀT(u, v) with w = T(u, v)/‖T(u, v)‖; the best of a few random starts is kept: a lower
    estimate of the norm (the problem is not convex).
    """

    def step(_, carry):
        u, v = carry
        w = _normalize(T(u, v))
        u = _normalize(adjoint_u(v, w))
        v = _normalize(adjoint_v(u, w))
        return u, v

    def run(key):
        key_u, key_v = jax.random.split(key)
        u = _normalize(jax.random.normal(key_u, (n,), dtype))
        v = _normalize(jax.random.normal(key_v, (p,), dtype))
        u, v = jax.lax.fori_loop(0, iterations, step, (u, v))
        return jnp.linalg.norm(T(u, v))

    return jnp.max(jax.lax.map(run, jax.random.split(key, _RESTARTS)))


def _lanczos(op, n: int, k: int, key, dtype) -> tuple[jax.Array, jax.Array]:
    """The smallest and largest Ritz values of the symmetric ``op`` after k Lanczos steps.

    Fully reorthogonalized (twice, against every previous vector), restarted with a random
    orthogonal vector on breakdown (an invariant subspace found): for k = n the Ritz values are
    the eigenvalues, up to rounding.
    """
    q = _normalize(jax.random.normal(key, (n,), dtype))
    Q = jnp.zeros((k, n), dtype)
    diag = jnp.zeros(k, dtype)
    off = jnp.zeros(k, dtype)

    def orthogonalize(Q, w):
        w = w - Q.T @ (Q @ w)
        return w - Q.T @ (Q @ w)

    def step(j, carry):
        Q, diag, off, q, q_prev, b_prev = carry
        Q = Q.at[j].set(q)
        w = op(q)
        a = jnp.vdot(q, w)
        w = orthogonalize(Q, w - a * q - b_prev * q_prev)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.max(jnp.abs(diag)), jnp.abs(a))
        breakdown = b <= 100 * jnp.finfo(dtype).eps * scale
        random = jax.random.normal(jax.random.fold_in(key, j), (n,), dtype)
        fresh = _normalize(orthogonalize(Q, random))
        b = jnp.where(breakdown, 0.0, b)
        q_next = jnp.where(breakdown, fresh, w / jnp.where(breakdown, 1.0, b))
        return Q, diag.at[j].set(a), off.at[j].set(b), q_next, q, b

    zeros = jnp.zeros(n, dtype)
    init = (Q, diag, off, q, zeros, jnp.zeros((), dtype))
    _, diag, off, *_ = jax.lax.fori_loop(0, k, step, init)
    tridiagonal = jnp.diag(diag) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
    ritz = jnp.linalg.eigvalsh(_checks.half_to_float32(tridiagonal))
    return ritz[0], ritz[-1]
