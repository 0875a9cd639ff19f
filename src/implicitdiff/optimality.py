"""The catalog of optimality conditions: builders of F (a root) or T (a fixed point).

Each builder takes the pieces of a problem and returns a function ready for
:func:`implicitdiff.custom_root` (the builders that return F) or
:func:`implicitdiff.custom_fixed_point` (those that return T). Its arguments after the
solution are those of the matching solver's ``run`` after ``init_params``, in the same order, so
that ``custom_root(stationary(f))(solver)`` differentiates ``solver(init, *args)``.

=============================  ========================================================  =====
builder                        condition, zero (F) or fixed point (T) at the solution    kind
=============================  ========================================================  =====
``stationary(f)``              F(x, θ) = ∇₁f(x, θ)                                       F
``kkt(f, H, G)``               F(z, θ_f, θ_H, θ_G) = (∇₁L, H, λ ∘ G), z = (x, ν, λ)      F
``proximal_gradient(f, p)``    T(x, θ_p, θ_f) = prox(x − η∇₁f(x, θ_f), θ_p, η)           T
``projected_gradient(f, P)``   T(x, θ_P, θ_f) = P(x − η∇₁f(x, θ_f), θ_P)                 T
``mirror_descent(f, …)``       T(x, θ_P, θ_f) = P^φ(∇φ(x) − η∇₁f(x, θ_f), θ_P)           T
``newton(G)``                  T(x, θ) = x − η[∂₁G(x, θ)]⁻¹G(x, θ)                       T
``block_proximal_gradient``    Tᵢ(x, θ_p, θ_f) = prox(xᵢ − ηᵢ[∇₁f(x, θ_f)]ᵢ, θ_p, ηᵢ)    T
``least_squares(r)``           F(x, θ) = ∂₁r(x, θ)ᵀ r(x, θ)                              F
``conic(cone)``                F(z, A, b, c) = ((Q(A, b, c) − I)Π + I)(z, 1), first rows  F
=============================  ========================================================  =====

Each builder returns a ``Condition``: a frozen callable that states whether the Jacobian ∂₁F (or
I − ∂₁T) is symmetric (its ``symmetric`` field). The engine reads it when its own ``symmetric``
option is None: then ``solve="auto"`` uses CG and reverse mode reuses the solver without a
transpose. ``proximal_gradient`` and ``projected_gradient`` also state the support of the
system (its ``support`` field) when their prox or projection declares one: the derivative's
linear system is then solved on the free coordinates only. A user's own condition may state the
same structure by returning a :class:`Condition` (exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _support, linear_solve, tree
from implicitdiff import _projection_ops as projections
from implicitdiff import prox as prox_operators
from implicitdiff._condition import Condition
from implicitdiff._typing import PyTree

__all__ = [
    "Condition",
    "block_proximal_gradient",
    "conic",
    "conic_embedding",
    "conic_solution",
    "kkt",
    "least_squares",
    "mirror_descent",
    "negative_entropy",
    "newton",
    "projected_gradient",
    "proximal_gradient",
    "stationary",
]


def _mark(
    fun: Callable, *, symmetric: bool, name: str, doc: str, support: Callable | None = None
) -> Condition:
    return Condition(
        fun,
        symmetric=symmetric,
        name=name,
        doc=doc,
        support=support,
        support_symmetric=support is not None,
    )


def _gradient_step_support(grad: Callable, operator: Callable, stepsize: Any, with_scaling: bool):
    """The support of T(x, θ_op, θ_f) = op(x − η∇₁f(x, θ_f), θ_op[, η]) if ``operator`` states
    one (:func:`implicitdiff._support.declared`): S = free(y, θ_op[, η]), y = x − η∇₁f(x, θ_f),
    the coordinates where ∂op(y) is the identity. Off S the rows of ∂₁T vanish, so those of
    I − ∂₁T are the identity's, and on S the block (I − ∂₁T)_SS = η∇²f_SS is symmetric."""
    declared = _support.declared(operator)
    if declared is None:
        return None
    op_args = (stepsize,) if with_scaling else ()

    def support(x, /, hyperparams, *args, **kwargs):
        y = tree.axpy(-stepsize, grad(x, *args, **kwargs), x)
        return declared.free(y, hyperparams, *op_args)

    return support


def _gradient(fun: Callable) -> Callable:
    """``(x, *args, **kwargs) ↦ ∇₁fun`` as a vector of x's space: ``jax.grad`` for real x; for a
    complex leaf z = a + ib, ∂f/∂a + i ∂f/∂b, the conjugate of what ``jax.grad`` returns. It is
    the direction a gradient step takes, and its real pairs are the gradient in ℝ²ⁿ, so that a
    stationary condition's Jacobian is symmetric there (where the engine solves)."""
    grad = jax.grad(fun)

    def gradient(x, /, *args, **kwargs):
        return tree.conj(grad(x, *args, **kwargs))

    return gradient


def _check_callable(value: Any, name: str, builder: str) -> None:
    if not callable(value):
        raise TypeError(f"{builder}: {name} must be callable, got {type(value).__name__}")


def stationary(fun: Callable) -> Callable:
    """F(x, *args) = ∇₁fun(x, *args): the stationarity of an unconstrained objective.

    At a local minimum of a smooth ``fun``, F = 0, and ∂₁F = ∇²₁fun is symmetric (marked). For
    complex x, ∇₁fun is the gradient as a vector of x's space, ∂f/∂a + i ∂f/∂b for z = a + ib
    (the conjugate of what ``jax.grad`` returns), as in every gradient step of this module.

    Args:
      fun: the objective ``fun(x, *args, **kwargs)``, a real scalar; x may be a pytree.

    Returns:
      The condition F(x, *args, **kwargs) = ∇₁fun(x, *args, **kwargs), a pytree like x (a
        ``Condition`` marked symmetric), for :func:`implicitdiff.custom_root`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import custom_root, optimality
      >>> f = lambda x, lam: 0.5 * jnp.sum((x - 1.0) ** 2) + 0.5 * lam * jnp.sum(x**2)
      >>> solver = custom_root(optimality.stationary(f))(lambda x0, lam: jnp.ones(3) / (1 + lam))
    """
    _check_callable(fun, "fun", "stationary")
    grad = _gradient(fun)

    def optimality_fun(x, /, *args, **kwargs):
        return grad(x, *args, **kwargs)

    return _mark(
        optimality_fun,
        symmetric=True,
        name="stationary_optimality",
        doc=f"∇₁f(x, *args) for f = {getattr(fun, '__name__', fun)!s}.",
    )


def kkt(
    fun: Callable, eq_fun: Callable | None = None, ineq_fun: Callable | None = None
) -> Callable:
    """The KKT conditions of min f(x, θ_f) s.t. H(x, θ_H) = 0, G(x, θ_G) ≤ 0.

    The condition, on z = (x, ν, λ) (primal, dual of the equalities, dual of the inequalities; a
    missing part is None), is

        F(z, θ) = (∇₁f(x, θ_f) + ∂₁H(x, θ_H)ᵀν + ∂₁G(x, θ_G)ᵀλ,  H(x, θ_H),  λ ∘ G(x, θ_G)),

    with None in place of the parts of a missing ``eq_fun`` or ``ineq_fun``. The feasibility
    inequalities (G ≤ 0, λ ≥ 0) are dropped: they hold on a neighbourhood of a strictly
    complementary solution, where the derivative is defined. A quadratic f with affine H, G gives
    the QP layer of OptNet. x, ν, λ and the outputs of H and G may be pytrees.

    Args:
      fun: the objective f(x, params_fun), a real scalar.
      eq_fun: H(x, params_eq), the equality constraints H = 0 (a pytree), or None (default).
      ineq_fun: G(x, params_ineq), the inequality constraints G ≤ 0 (a pytree), or None
        (default).

    Returns:
      The condition ``F(z, params_fun, params_eq=None, params_ineq=None)``, a triple shaped like
        z (a ``Condition``, not symmetric), for :func:`implicitdiff.custom_root`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import optimality
      >>> f = lambda x, theta: 0.5 * jnp.sum(x**2) - theta @ x
      >>> G = lambda x, h: x - h  # x ≤ h
      >>> F = optimality.kkt(f, ineq_fun=G)
      >>> z = (jnp.array([0.5, 1.0]), None, jnp.array([0.0, 1.0]))  # θ = (0.5, 2), h = (1, 1)
      >>> residuals = F(z, jnp.array([0.5, 2.0]), None, jnp.ones(2))
    """
    _check_callable(fun, "fun", "kkt")
    if eq_fun is not None:
        _check_callable(eq_fun, "eq_fun", "kkt")
    if ineq_fun is not None:
        _check_callable(ineq_fun, "ineq_fun", "kkt")
    grad = _gradient(fun)

    def optimality_fun(z, params_fun, params_eq=None, params_ineq=None):
        if not (isinstance(z, (tuple, list)) and len(z) == 3):
            raise TypeError("kkt: the solution z must be a tuple (primal, dual_eq, dual_ineq)")
        x, dual_eq, dual_ineq = z
        lagrangian_grad = grad(x, params_fun)
        eq_residual = ineq_residual = None
        if eq_fun is not None:
            eq_value, eq_vjp = jax.vjp(lambda x: eq_fun(x, params_eq), x)
            lagrangian_grad = tree.add(lagrangian_grad, eq_vjp(dual_eq)[0])
            eq_residual = eq_value
        if ineq_fun is not None:
            ineq_value, ineq_vjp = jax.vjp(lambda x: ineq_fun(x, params_ineq), x)
            lagrangian_grad = tree.add(lagrangian_grad, ineq_vjp(dual_ineq)[0])
            ineq_residual = tree.map(jnp.multiply, dual_ineq, ineq_value)
        return lagrangian_grad, eq_residual, ineq_residual

    return _mark(optimality_fun, symmetric=False, name="kkt_optimality", doc=kkt.__doc__)


def proximal_gradient(fun: Callable, prox: Callable, stepsize: float = 1.0) -> Callable:
    """T(x, hyperparams_prox, *args) = prox(x − η∇₁fun(x, *args), hyperparams_prox, η).

    The fixed point of proximal gradient for min_x fun(x, *args) + g(x, hyperparams_prox). Any
    η > 0 gives the same solutions; it changes the conditioning of I − ∂₁T (η ≈ 1/L, L the
    Lipschitz constant of ∇fun, is best).

    Args:
      fun: the smooth part ``fun(x, *args, **kwargs)``, a real scalar; x may be a pytree.
      prox: ``prox(y, hyperparams, scaling)``, the proximal operator of g (see
        :mod:`implicitdiff.prox`).
      stepsize: η > 0 (default 1).

    When ``prox`` states where its Jacobian is the identity (``prox.l1``,
    ``prox.non_negative_l1``: the tag of :mod:`implicitdiff._support`), the condition states
    the support S = {i : ∂prox(y)ᵢᵢ = 1}, y = x − η∇₁fun(x) (for ``l1``, |yᵢ| > λη, i.e.
    xᵢ ≠ 0 under strict complementarity): off S, I − ∂₁T is the identity and the tangent of
    x* is zero, and on S the system η∇²fun_SS is symmetric. The derivative's linear system is
    then solved on S alone.

    Returns:
      The fixed-point map T(x, hyperparams_prox, *args, **kwargs), a pytree like x (a
        ``Condition``, symmetric only for ``prox.Identity``: then I − ∂₁T = η∇²fun; with a
        ``support`` when ``prox`` declares one), for :func:`implicitdiff.custom_fixed_point`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import optimality, prox
      >>> f = lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)
      >>> T = optimality.proximal_gradient(f, prox.l1, stepsize=0.1)  # the lasso
    """
    _check_callable(fun, "fun", "proximal_gradient")
    _check_callable(prox, "prox", "proximal_gradient")
    grad = _gradient(fun)

    def fixed_point_fun(x, /, hyperparams_prox, *args, **kwargs):
        step = tree.axpy(-stepsize, grad(x, *args, **kwargs), x)
        return prox(step, hyperparams_prox, stepsize)

    # With no prox, T = x − η∇f and I − ∂₁T = η∇²f is symmetric.
    symmetric = isinstance(prox, prox_operators.Identity)
    return _mark(
        fixed_point_fun,
        symmetric=symmetric,
        name="proximal_gradient_fixed_point",
        doc=proximal_gradient.__doc__,
        support=_gradient_step_support(grad, prox, stepsize, with_scaling=True),
    )


def projected_gradient(fun: Callable, projection: Callable, stepsize: float = 1.0) -> Callable:
    """T(x, hyperparams_proj, *args) = projection(x − η∇₁fun(x, *args), hyperparams_proj).

    The fixed point of projected gradient for min_{x ∈ C(hyperparams_proj)} fun(x, *args).

    Args:
      fun: the objective ``fun(x, *args, **kwargs)``, a real scalar; x may be a pytree.
      projection: ``projection(y, hyperparams)``, the Euclidean projection onto C (see
        :mod:`implicitdiff.projections`).
      stepsize: η > 0 (default 1).

    When ``projection`` states where its Jacobian is the identity (``projections.non_negative``:
    yᵢ > 0; ``projections.box``: lowerᵢ < yᵢ < upperᵢ, with y = x − η∇₁fun(x)), the condition
    states that support S: off S, I − ∂₁T is the identity (the tangent of x* there is that of
    the active bound: zero, or the bound's own tangent), on S the system η∇²fun_SS is symmetric,
    and the derivative's linear system is solved on S alone.

    Returns:
      The fixed-point map T(x, hyperparams_proj, *args, **kwargs), a pytree like x (a
        ``Condition``, not symmetric; with a ``support`` when ``projection`` declares one), for
        :func:`implicitdiff.custom_fixed_point`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import optimality, projections
      >>> f = lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)
      >>> T = optimality.projected_gradient(f, projections.non_negative, stepsize=0.1)  # NNLS
    """
    _check_callable(fun, "fun", "projected_gradient")
    _check_callable(projection, "projection", "projected_gradient")
    grad = _gradient(fun)

    def fixed_point_fun(x, /, hyperparams_proj, *args, **kwargs):
        return projection(tree.axpy(-stepsize, grad(x, *args, **kwargs), x), hyperparams_proj)

    return _mark(
        fixed_point_fun,
        symmetric=False,
        name="projected_gradient_fixed_point",
        doc=projected_gradient.__doc__,
        support=_gradient_step_support(grad, projection, stepsize, with_scaling=False),
    )


def negative_entropy(x: PyTree, gradient: PyTree, stepsize: Any, hyperparams: Any = None) -> PyTree:
    """The entropic mirror step on simplices: x ⊙ exp(−η g), normalized along the last axis.

    This is P^φ(∇φ(x) − η g) for φ the negative entropy and P^φ the KL projection onto the
    simplex of total ``hyperparams`` (1 if None) along the last axis of each leaf (each row of a
    matrix is a simplex, as in the dual of a multiclass SVM). It is written multiplicatively, with
    the exponent shifted by its row maximum: exact zeros of x stay zeros and have finite
    derivatives, where the form softmax(log x − η g) would take log 0.

    Args:
      x: the current point, an array or a pytree of arrays, each leaf non-negative with a
        non-empty last axis.
      gradient: g, a pytree like x.
      stepsize: η, a scalar.
      hyperparams: the total s ≥ 0 of each simplex: a scalar, or an array broadcastable to
        each leaf (shape (…, 1) for one total per row); None (default): 1.

    Returns:
      s · x ⊙ exp(−η g) / Σ_last axis (x ⊙ exp(−η g)), a pytree like x.

    Raises:
      ValueError: a concrete negative total, or an empty last axis (the simplex of ℝ⁰ is
        empty). A traced negative total gives NaN.
    """
    scale = 1.0 if hyperparams is None else hyperparams
    leaves = _checks.concrete_leaves(scale)
    if leaves is not None and any((leaf < 0).any() for leaf in leaves):
        raise ValueError(
            f"negative_entropy: hyperparams (the simplex total) must be ≥ 0, got {scale}"
        )
    scale = _checks.nan_if_negative(scale)

    def step(x, g):
        if jnp.shape(x)[-1:] == (0,):
            raise ValueError(
                f"negative_entropy: x has an empty last axis, shape {jnp.shape(x)}: the simplex "
                "of ℝ⁰ is empty"
            )
        exponent = -stepsize * g
        exponent = exponent - jax.lax.stop_gradient(jnp.max(exponent, axis=-1, keepdims=True))
        unnormalized = x * jnp.exp(exponent)
        return scale * unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)

    return tree.map(step, x, gradient)


def mirror_descent(
    fun: Callable,
    projection: Callable | None = None,
    mapping: Callable | None = None,
    stepsize: float = 1.0,
) -> Callable:
    """T(x, hyperparams_proj, *args) = P^φ(∇φ(x) − η∇₁fun(x, *args), hyperparams_proj).

    The fixed point of mirror descent for min_{x ∈ C} fun(x, *args), with ∇φ the mirror map of a
    strictly convex φ and P^φ the Bregman projection onto C of the point whose mirror image is y,
    argmin_{x ∈ C} D_φ(x, ∇φ*(y)).

    The default (``projection`` and ``mapping`` both None) is the negative entropy on the
    simplex (each row of the last axis a simplex of total ``hyperparams_proj``, 1 if None), in
    the stable multiplicative form x ⊙ exp(−η∇f) / Σ(x ⊙ exp(−η∇f)) of :func:`negative_entropy`,
    which keeps exact zeros safe.

    Args:
      fun: the objective ``fun(x, *args, **kwargs)``, a real scalar; x may be a pytree.
      projection: ``projection(y, hyperparams)`` = P^φ, or None (default) with ``mapping``.
      mapping: ``mapping(x)`` = ∇φ(x), a pytree like x, or None (default) with ``projection``;
        give both or neither.
      stepsize: η > 0 (default 1).

    Returns:
      The fixed-point map T(x, hyperparams_proj, *args, **kwargs), a pytree like x (a
        ``Condition``, not symmetric), for :func:`implicitdiff.custom_fixed_point`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import optimality
      >>> f = lambda p, Q, c: 0.5 * p @ Q @ p + c @ p  # a quadratic on the simplex
      >>> T = optimality.mirror_descent(f, stepsize=0.5)
    """
    _check_callable(fun, "fun", "mirror_descent")
    if (projection is None) != (mapping is None):
        raise TypeError(
            "mirror_descent: give both projection and mapping, or neither (the "
            "default negative entropy on the simplex)"
        )
    grad = _gradient(fun)

    if projection is None:

        def fixed_point_fun(x, /, hyperparams_proj, *args, **kwargs):
            return negative_entropy(x, grad(x, *args, **kwargs), stepsize, hyperparams_proj)

    else:
        _check_callable(projection, "projection", "mirror_descent")
        _check_callable(mapping, "mapping", "mirror_descent")

        def fixed_point_fun(x, /, hyperparams_proj, *args, **kwargs):
            dual = tree.axpy(-stepsize, grad(x, *args, **kwargs), mapping(x))
            return projection(dual, hyperparams_proj)

    return _mark(
        fixed_point_fun,
        symmetric=False,
        name="mirror_descent_fixed_point",
        doc=mirror_descent.__doc__,
    )


def newton(fun: Callable, stepsize: float = 1.0, solve: str | Callable | None = None) -> Callable:
    """T(x, *args) = x − η[∂₁G(x, *args)]⁻¹G(x, *args): the Newton fixed point of G = 0.

    At a root, ∂₁T = I − η I, so I − ∂₁T = ηI and ∂₂T = −η[∂₁G]⁻¹∂₂G: the same derivative as the
    root itself. The inner system is solved matrix-free through a transposable
    ``jax.lax.custom_linear_solve``, so T can be differentiated.

    Args:
      fun: the root function G(x, *args, **kwargs), its output shaped like x.
      stepsize: η > 0 (default 1).
      solve: the inner linear solver, a name or callable of :mod:`implicitdiff.linear_solve`
        (default None: ``"auto"``).

    Returns:
      The fixed-point map T(x, *args, **kwargs), a pytree like x (a ``Condition``, not
        symmetric), for :func:`implicitdiff.custom_fixed_point`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import optimality
      >>> G = lambda x, a: x**3 - a  # the cube root of a
      >>> T = optimality.newton(G)
    """
    _check_callable(fun, "fun", "newton")
    inner = linear_solve.resolve(solve)

    def fixed_point_fun(x, /, *args, **kwargs):
        value, matvec = jax.linearize(lambda x: fun(x, *args, **kwargs), x)
        direction = jax.lax.custom_linear_solve(matvec, value, solve=inner, transpose_solve=inner)
        return tree.axpy(-stepsize, direction, x)

    return _mark(fixed_point_fun, symmetric=False, name="newton_fixed_point", doc=newton.__doc__)


def block_proximal_gradient(fun: Callable, block_prox: Callable, stepsize: Any = 1.0) -> Callable:
    """Tᵢ(x, hyperparams_prox, *args) = block_prox(xᵢ − ηᵢ[∇₁fun(x, *args)]ᵢ, hyperparams_prox, ηᵢ).

    The fixed point of block coordinate descent for min_x fun(x, *args) + Σᵢ g(xᵢ,
    hyperparams_prox), the blocks xᵢ being the rows (leading axis) of the array x. BCD updates
    one block at a time, but its fixed points are those of this simultaneous map, which is what
    the derivative needs.

    Args:
      fun: the smooth part ``fun(x, *args, **kwargs)``, a real scalar of the array x.
      block_prox: ``block_prox(y, hyperparams, scaling)``, the prox of g on one block (a row).
      stepsize: η, a scalar or one ηᵢ > 0 per block (1/Lᵢ, Lᵢ the Lipschitz constant of
        [∇f]ᵢ, is best); default 1.

    Returns:
      The fixed-point map T(x, hyperparams_prox, *args, **kwargs), an array shaped like x (a
        ``Condition``, not symmetric), for :func:`implicitdiff.custom_fixed_point`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import optimality, projections
      >>> f = lambda B, Q: 0.5 * jnp.sum(B * (B @ Q))  # each row of B on a simplex
      >>> T = optimality.block_proximal_gradient(
      ...     f, lambda y, hp, s: projections.simplex(y, hp), stepsize=0.5)
    """
    _check_callable(fun, "fun", "block_proximal_gradient")
    _check_callable(block_prox, "block_prox", "block_proximal_gradient")
    grad = _gradient(fun)

    def fixed_point_fun(x, /, hyperparams_prox, *args, **kwargs):
        x = jnp.asarray(x)
        steps = jnp.broadcast_to(jnp.asarray(stepsize, x.dtype), x.shape[:1])
        g = grad(x, *args, **kwargs)
        shape = (-1,) + (1,) * (x.ndim - 1)
        moved = x - steps.reshape(shape) * g
        return jax.vmap(block_prox, in_axes=(0, None, 0))(moved, hyperparams_prox, steps)

    return _mark(
        fixed_point_fun,
        symmetric=False,
        name="block_proximal_gradient_fixed_point",
        doc=block_proximal_gradient.__doc__,
    )


def least_squares(residual_fun: Callable) -> Callable:
    """F(x, *args) = ∂₁r(x, *args)ᵀ r(x, *args): stationarity of ½‖r(x, *args)‖².

    The condition at a (local) solution of a nonlinear least-squares problem, as Gauss–Newton
    and Levenberg–Marquardt find it. ∂₁F = JᵀJ + Σ rₖ∇²rₖ is symmetric (marked). Computed with
    one VJP, never forming J. For complex x or residuals, F is the gradient of ½Σ|rₖ|² as a
    vector of x's space (∂/∂a + i ∂/∂b for z = a + ib: the conjugate of ``jax.grad``'s), which is
    Jᴴr for a holomorphic r.

    Args:
      residual_fun: r(x, *args, **kwargs), the residuals (a pytree); x may be a pytree.

    Returns:
      The condition F(x, *args, **kwargs), a pytree like x (a ``Condition`` marked symmetric),
        for :func:`implicitdiff.custom_root`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import optimality
      >>> r = lambda p, t, y: p[0] * jnp.exp(p[1] * t) - y  # an exponential fit
      >>> F = optimality.least_squares(r)
    """
    _check_callable(residual_fun, "residual_fun", "least_squares")

    def optimality_fun(x, /, *args, **kwargs):
        r, vjp = jax.vjp(lambda x: residual_fun(x, *args, **kwargs), x)
        return tree.conj(vjp(tree.conj(r))[0])  # ∇ of ½Σ|rₖ|² (as _gradient, for complex x)

    return _mark(
        optimality_fun, symmetric=True, name="least_squares_optimality", doc=least_squares.__doc__
    )


# ---------------------------------------------------------------------------------------------
# Conic programs.

_CONES = ("zero", "nonnegative", "soc", "psd")


def _cone_blocks(cone: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(kind, dimension, number of rows) for each block of the cone description."""
    blocks = []
    for item in cone:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(
                f"conic: cone must be a sequence of (kind, dimension) pairs, got {item!r}"
            )
        kind, dim = item
        if kind not in _CONES:
            raise ValueError(f"conic: unknown cone {kind!r}; use one of {_CONES}")
        if not (_checks.is_int(dim) and dim >= 1):
            raise ValueError(
                f"conic: the dimension of a {kind} cone must be a positive int, got {dim!r}"
            )
        rows = dim * (dim + 1) // 2 if kind == "psd" else dim
        if kind == "soc" and dim < 2:
            raise ValueError("conic: a second-order cone needs dimension ≥ 2 (t and z)")
        blocks.append((kind, dim, rows))
    return blocks


def _svec_to_matrix(v: jax.Array, n: int) -> jax.Array:
    """The symmetric n × n matrix of its scaled lower-triangle vector (off-diagonals × √2)."""
    rows, cols = jnp.tril_indices(n)
    scale = jnp.where(rows == cols, 1.0, 1.0 / jnp.sqrt(2.0)).astype(v.dtype)
    m = jnp.zeros((n, n), v.dtype).at[rows, cols].set(v * scale)
    return m + jnp.tril(m, -1).T


def _matrix_to_svec(m: jax.Array) -> jax.Array:
    n = m.shape[0]
    rows, cols = jnp.tril_indices(n)
    scale = jnp.where(rows == cols, 1.0, jnp.sqrt(2.0)).astype(m.dtype)
    return m[rows, cols] * scale


def _project_dual_cone(v: jax.Array, blocks) -> jax.Array:
    """Π_{K*}(v): the projection onto the dual cone, block by block (self-dual but the zero)."""
    parts, start = [], 0
    for kind, dim, rows in blocks:
        piece = v[start : start + rows]
        start += rows
        if kind == "zero":  # the dual of {0} is the whole space
            parts.append(piece)
        elif kind == "nonnegative":
            parts.append(jnp.maximum(piece, 0))
        elif kind == "soc":
            t, z = projections.second_order_cone((piece[0], piece[1:]))
            parts.append(jnp.concatenate([t[None], z]))
        else:
            parts.append(_matrix_to_svec(projections.psd_cone(_svec_to_matrix(piece, dim))))
    return jnp.concatenate(parts)


def conic(cone: Sequence[tuple[str, int]]) -> Callable:
    """The residual map of a cone program (Busseti, Moursi & Boyd, 2019), normalized.

    For the primal-dual pair  min cᵀx s.t. Ax + s = b, s ∈ K  /  max −bᵀy s.t. Aᵀy + c = 0,
    y ∈ K*, with A of shape (m, n), the homogeneous self-dual embedding uses
    Q(θ) = [[0, Aᵀ, c], [−A, 0, b], [−cᵀ, −bᵀ, 0]], θ = (A, b, c), and the residual map

        R(z, θ) = ((Q(θ) − I) Π + I) z,   Π the projection onto ℝⁿ × K* × ℝ₊.

    A solution (x, y, s) gives the root z = (x, y − s, 1) of R. R is positively homogeneous, so
    its Jacobian is singular along z; the returned F fixes the last entry at 1 and drops the last
    row (the duality gap, implied by the others at a solution):

        F((u, v), A, b, c) = first n + m rows of R((u, v, 1), θ)
                           = (Aᵀ Π_{K*}(v) + c,  b − A u − (Π_{K*}(v) − v)),

    whose Jacobian is invertible at a regular solution. Map solutions to and from z with
    :func:`conic_embedding` and :func:`conic_solution`. Use with :func:`implicitdiff.custom_root`
    (or ``root_jvp`` / ``root_vjp`` around an external cone solver); the system is not symmetric
    (``solve="gmres"`` or ``"lu"``).

    Args:
      cone: K's blocks in order, as (kind, dimension) pairs: ``("zero", k)`` (equalities),
        ``("nonnegative", k)``, ``("soc", k)`` ((t, z) with ‖z‖ ≤ t, k = 1 + dim z ≥ 2) and
        ``("psd", k)`` (k × k matrices, as the k(k+1)/2 entries of the lower triangle in the
        (row-major) order of ``jnp.tril_indices``, off-diagonals scaled by √2). m is the total
        number of rows.

    Returns:
      The condition ``F(z, A, b, c)`` on z = (u, v), u of shape (n,) and v of shape (m,), with A
        of shape (m, n), b of shape (m,) and c of shape (n,); its value is a pair shaped like z (a
        ``Condition``, not symmetric).

    Raises:
      TypeError, ValueError: a malformed ``cone`` (unknown kind, non-positive dimension, a
        second-order cone of dimension 1).

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import optimality
      >>> F = optimality.conic([("zero", 1), ("nonnegative", 2)])  # m = 3 rows of A
    """
    blocks = _cone_blocks(cone)
    m = sum(rows for _, _, rows in blocks)

    def optimality_fun(z, A, b, c):
        u, v = z
        if v.shape != (m,) or A.shape != (m, u.shape[0]):
            raise ValueError(
                f"conic: expected v of shape ({m},) and A of shape ({m}, "
                f"{u.shape[0]}) for this cone; got v {v.shape}, A {A.shape}"
            )
        y = _project_dual_cone(v, blocks)
        return A.T @ y + c, b - A @ u - (y - v)

    return _mark(optimality_fun, symmetric=False, name="conic_optimality", doc=conic.__doc__)


def conic_embedding(x: jax.Array, y: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z = (x, y − s): the root of :func:`conic` 's F for a primal-dual solution (x, y, s).

    Args:
      x: the primal solution, shape (n,).
      y: the dual solution, shape (m,), in K*.
      s: the primal slack b − Ax, shape (m,), in K.

    Returns:
      The pair ``(x, y − s)``.
    """
    return x, y - s


def conic_solution(
    z: tuple[jax.Array, jax.Array], cone: Sequence[tuple[str, int]]
) -> tuple[jax.Array, ...]:
    """(x, y, s) = (u, Π_{K*}(v), Π_{K*}(v) − v) from z = (u, v): the inverse of the embedding.

    Differentiable: compose it with a solver wrapped by ``custom_root(conic(cone))`` to get the
    derivatives of the primal and dual solutions and of the slacks.

    Args:
      z: the pair (u, v), u of shape (n,) and v of shape (m,).
      cone: the blocks of K, as for :func:`conic`.

    Returns:
      The triple ``(x, y, s)``: shapes (n,), (m,) and (m,).
    """
    u, v = z
    y = _project_dual_cone(v, _cone_blocks(cone))
    return u, y, y - v
