"""Block coordinate descent: BlockCoordinateDescent, and the exact per-block Lipschitz
constants that give its step sizes.

It minimizes a smooth ``fun(params, *args, **kwargs)`` plus a block-separable prox and is
differentiated through the fixed point of the simultaneous block map
(:func:`implicitdiff.optimality.block_proximal_gradient`), whose arguments are those of ``run``
after ``init_params``, in the same order. Step sizes are computed on values cut from the graph
(``stop_gradient``) and enter the iteration as constants; errors are cut too: they decide when
to stop and are never differentiated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _loop, _summary, optimality, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers._base import IterativeSolver, OptStep
from implicitdiff.solvers._objective import scalar_value

__all__ = ["BlockCoordinateDescent", "BlockCoordinateDescentState"]


def _spectral_norms(hessians: jax.Array) -> jax.Array:
    """‖Hᵢ‖₂ of each symmetrized block Hᵢ (m × width × width), cut from the graph."""
    hessians = 0.5 * (hessians + jnp.swapaxes(hessians, -1, -2))
    eigenvalues = jnp.linalg.eigvalsh(_checks.half_to_float32(hessians)).astype(hessians.dtype)
    return jax.lax.stop_gradient(jnp.max(jnp.abs(eigenvalues), axis=-1))


def _block_lipschitz(fun: Callable, x: jax.Array, args: tuple, kwargs: dict) -> jax.Array:
    """Lᵢ = ‖∇²_{xᵢxᵢ} f(x)‖₂ for each row xᵢ of x: the curvature of f along each block, exact.

    The diagonal blocks of the Hessian are formed column by column with Hessian-vector products
    (as many as x has entries, the cost of one dense Hessian: one per block at a time, in a
    ``lax.map``), symmetrized, and their spectral norms taken by ``eigvalsh``. For a quadratic f
    (constant Hessian) Lᵢ is the Lipschitz constant of the block gradient; otherwise it is the
    curvature at x. Cut from the graph.
    """
    x, args, kwargs = tree.stop_gradient((x, args, kwargs))
    grad = jax.grad(fun)
    _, hvp = jax.linearize(lambda z: grad(z, *args, **kwargs), x)
    m, width = x.shape[0], x[0].size
    eye = jnp.eye(width, dtype=x.dtype).reshape((width, *x.shape[1:]))

    def block_hessian(i):
        basis = jnp.zeros((width, *x.shape), x.dtype).at[:, i].set(eye)
        basis = _loop.vary_like(basis, x)  # under shard_map: as varying as x
        return jax.vmap(hvp)(basis)[:, i].reshape(width, width)

    return _spectral_norms(jax.lax.map(block_hessian, jnp.arange(m)))


def _sum_of_blocks(block_fun: Callable, x: jax.Array, args: tuple, kwargs: dict) -> PyTree:
    """p = Σᵢ block_fun(xᵢ, i, *args, **kwargs): the m contributions (vmapped), summed."""
    contributions = jax.vmap(lambda xi, i: block_fun(xi, i, *args, **kwargs))(
        x, jnp.arange(x.shape[0])
    )
    return tree.map(lambda c: jnp.sum(c, axis=0), contributions)


def _composite_block_lipschitz(
    outer_fun: Callable, block_fun: Callable, x: jax.Array, args: tuple, kwargs: dict
) -> jax.Array:
    """Lᵢ = ‖∇²_{xᵢxᵢ} f(x)‖₂ for f(x) = outer_fun(Σⱼ block_fun(xⱼ, j)): the Hessian of
    z ↦ outer_fun(p − cᵢ(xᵢ) + cᵢ(z)) at z = xᵢ, one block at a time (``width`` Hessian-vector
    products of a function that costs one contribution and one outer_fun, not the whole f).
    Cut from the graph."""
    x, args, kwargs = tree.stop_gradient((x, args, kwargs))
    p = _sum_of_blocks(block_fun, x, args, kwargs)
    shape, width = x.shape[1:], x[0].size

    def block_hessian(i):
        rest = tree.sub(p, block_fun(x[i], i, *args, **kwargs))

        def restricted(z):
            contribution = block_fun(z.reshape(shape), i, *args, **kwargs)
            return outer_fun(tree.add(rest, contribution), *args, **kwargs)

        return jax.hessian(restricted)(x[i].reshape(width))

    return _spectral_norms(jax.lax.map(block_hessian, jnp.arange(x.shape[0])))


class BlockCoordinateDescentState(NamedTuple):
    """iter_num, error (the block gradient mapping, see the class), converged, the per-block
    step sizes ηᵢ, status; predictions: p = Σᵢ block_fun(xᵢ, i, *args) at the current x when
    f is given in composite form (kept up to date by the sweeps), else None."""

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array
    stepsize: jax.Array
    status: jax.Array = 1  # a solvers.Status code, set when run ends (1 until then)
    predictions: Any = None

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BlockCoordinateDescent(IterativeSolver):
    """min_x f(x, *args) + Σᵢ g(xᵢ, hyperparams_prox) by cyclic block coordinate descent.

    ``run(init_params, hyperparams_prox, *args, **kwargs)``, as in JAXopt. The blocks xᵢ are the
    rows (leading axis) of the array x, and ``block_prox(y, hyperparams_prox, scaling)`` is the
    prox of g on one row (e.g. ``prox.from_projection(projections.simplex)`` for one simplex per
    row). One iteration is one sweep, a ``lax.fori_loop`` over i = 1, …, m::

        xᵢ ← block_prox(xᵢ − ηᵢ[∇f(x)]ᵢ, hyperparams_prox, ηᵢ),   each with the latest x,

    with ηᵢ = 1/Lᵢ, Lᵢ = ‖∇²_{xᵢxᵢ}f‖₂ the Lipschitz constant of the block gradient, computed
    exactly at ``init_params`` from the diagonal blocks of the Hessian. This is exact for a
    quadratic f; for another f it is the curvature at ``init_params``, which may be too small
    elsewhere: give ``stepsize`` then. A block with Lᵢ = 0 gets the largest step of the others.

    With ``fun`` alone, f is a black box: each block step computes the whole gradient ∇f(x) (a
    sweep costs m gradients), and the Lᵢ cost one dense Hessian (as many Hessian-vector products
    as x has entries). Block coordinate descent pays off when f also comes in the form

        f(x, *args) = outer_fun(p, *args),   p = Σᵢ block_fun(xᵢ, i, *args)

    (p any pytree; the contributions cᵢ = block_fun(xᵢ, i, *args) may be any functions of xᵢ),
    given as ``outer_fun`` and ``block_fun``: JAXopt's composite objective made explicit. For a
    linear model p is the vector of predictions and cᵢ the part of one coordinate or one sample.
    The sweep then keeps p up to date, so that a block step costs one gradient of outer_fun and
    two contributions, not a gradient of f:

        [∇f(x)]ᵢ = ∂cᵢ(xᵢ)ᵀ ∇outer_fun(p),   p ← p − cᵢ(xᵢ) + cᵢ(xᵢ⁺),

    p carried in the state and recomputed from scratch every ``REFRESH`` sweeps (so that
    rounding cannot accumulate), and the Lᵢ cost ``width`` Hessian-vector products of
    z ↦ outer_fun(p − cᵢ(xᵢ) + cᵢ(z)) per block. For the lasso (blocks = coordinates),
    ``block_fun = lambda w_j, j, X, y: X[:, j] * w_j`` and ``outer_fun = lambda p, X, y: 0.5 *
    jnp.sum((p - y) ** 2)``. ``fun`` is still used where the whole gradient is needed (the error,
    the optimality condition), as written by the user (``X @ w`` is faster than a sum of m
    contributions); without it, f is assembled from the blocks. The two must agree (up to a
    constant): if they do not, the sweeps minimize another function, the error (measured with
    ``fun``) does not fall to ``tol``, and the run ends with ``converged`` False.

    The error is the block gradient mapping of the simultaneous map after the sweep,
    (Σᵢ ‖Tᵢ(x) − xᵢ‖²/ηᵢ²)^½ with Tᵢ(x) = block_prox(xᵢ − ηᵢ[∇f(x)]ᵢ, ·, ηᵢ) (one more
    gradient of f per sweep); it is 0 exactly at a solution, and the loop stops when it is
    ≤ ``tol``. The solution is differentiated through that fixed point x = T(x)
    (:func:`implicitdiff.optimality.block_proximal_gradient`) with these ηᵢ: ``stepsize`` when
    given, else 1/Lᵢ computed where the condition is evaluated (the solution; equal to the
    solver's for a quadratic f, and any ηᵢ > 0 has the same fixed points), as constants. A
    fixed η (JAXopt takes η = 1) would give the same derivatives for less work, but 1/Lᵢ scales
    each block of I − ∂₁T as a block-Jacobi preconditioner would: on an SVM dual whose rows'
    Lᵢ spread over a factor e⁴, the backward GMRES solve took 7 times longer with η = 1. The Lᵢ
    are recomputed where the condition is evaluated, once per derivative (cheap in composite form).

    Attributes:
      fun: the smooth part f(x, *args, **kwargs), a scalar; x a JAX array (not a pytree).
        Optional when ``outer_fun`` and ``block_fun`` are given.
      block_prox: the prox of g on one block, ``block_prox(xᵢ, hyperparams_prox, scaling)``.
      stepsize: 0 (default) for ηᵢ = 1/Lᵢ; a number > 0, or an array of one ηᵢ > 0 per block.
      outer_fun: ``outer_fun(p, *args, **kwargs)``, a scalar, with p as ``block_fun`` returns.
      block_fun: ``block_fun(x_i, i, *args, **kwargs)``, the contribution of block i to p (i a
        traced integer: index the data with it, e.g. ``X[i]``).
      maxiter, tol: at most ``maxiter`` (500) sweeps; stop when the error ≤ ``tol`` (1e-6).
      implicit_diff, solve, unroll_checkpoint, jit: see :class:`IterativeSolver`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff import prox
      >>> from implicitdiff.solvers.block_cd import BlockCoordinateDescent
      >>> X, y = jnp.array([[1.0, 0.5], [0.0, 2.0], [1.0, 1.0]]), jnp.array([1.0, 2.0, 0.5])
      >>> f = lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)  # coordinate descent for the lasso
      >>> w, state = BlockCoordinateDescent(fun=f, block_prox=prox.l1).run(jnp.zeros(2), 0.1, X, y)
      >>> w2, _ = BlockCoordinateDescent(  # the same, each step O(len(y)) instead of O(X.size)
      ...     fun=f,
      ...     block_prox=prox.l1,
      ...     outer_fun=lambda p, X, y: 0.5 * jnp.sum((p - y) ** 2),
      ...     block_fun=lambda w_j, j, X, y: X[:, j] * w_j,
      ... ).run(jnp.zeros(2), 0.1, X, y)
    """

    _run_arguments = ("hyperparams_prox",)  # run(init_params, hyperparams_prox, *args, **kwargs)

    fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    block_prox: Callable | None = dataclasses.field(default=None, kw_only=False)
    stepsize: Any = 0.0
    maxiter: int = 500
    tol: float = 1e-6
    outer_fun: Callable | None = None
    block_fun: Callable | None = None

    #: In composite form, p is recomputed from scratch every this many sweeps.
    REFRESH: ClassVar[int] = 10

    def __post_init__(self):
        super().__post_init__()
        name = "BlockCoordinateDescent"
        object.__setattr__(
            self, "_composite", self.outer_fun is not None or self.block_fun is not None
        )
        labels = ("outer_fun", "block_fun") if self._composite else ()
        if self.fun is not None or not self._composite:
            labels = ("fun", *labels)
        for label in labels:
            if not callable(getattr(self, label)):
                raise TypeError(f"{name}: {label} must be callable, got {getattr(self, label)!r}")
        if not callable(self.block_prox):
            raise TypeError(f"{name}: block_prox must be callable, got {self.block_prox!r}")
        how = "block_prox(x, hyperparams, scaling)"
        hint = "A projection(x, hyperparams)? Wrap it with prox.from_projection."
        _checks.check_signature(self.block_prox, name, "block_prox", (0, 0, 1), {}, how, hint)
        if isinstance(self.stepsize, (int, float)) and not isinstance(self.stepsize, bool):
            _checks.check_positive_number(self.stepsize, "stepsize", name, allow_zero=True)
        else:
            _checks.refuse_traced_option(name, "stepsize", self.stepsize)
            try:
                steps = jnp.asarray(self.stepsize)
            except (TypeError, ValueError):  # not an array (None: a ValueError)
                steps = None
            if steps is None or steps.ndim != 1 or not bool(jnp.all(steps > 0)):
                raise ValueError(
                    f"{name}: stepsize must be a number ≥ 0 or a 1-d array of positive "
                    f"per-block steps, got {self.stepsize!r}"
                )
        object.__setattr__(
            self, "_smooth", self._plain_fun if self.fun is not None else self._composite_fun
        )
        object.__setattr__(self, "_grad", jax.grad(self._smooth))

    def _plain_fun(self, x, /, *args, **kwargs):
        """f(x) = fun(x, *args), checked to be a scalar."""
        return scalar_value(self.fun(x, *args, **kwargs))

    def _composite_fun(self, x, /, *args, **kwargs):
        """f(x) = outer_fun(Σᵢ block_fun(xᵢ, i, *args), *args)."""
        return self.outer_fun(_sum_of_blocks(self.block_fun, x, args, kwargs), *args, **kwargs)

    def _stepsizes(self, x: jax.Array, args: tuple, kwargs: dict) -> jax.Array:
        """ηᵢ, one per row of x: the given ``stepsize``, or 1/Lᵢ at x (cut from the graph)."""
        x = jnp.asarray(x)
        if not (isinstance(self.stepsize, (int, float)) and self.stepsize == 0):
            steps = jnp.asarray(self.stepsize, x.dtype)
            if steps.ndim == 1 and steps.shape[0] != x.shape[0]:
                raise ValueError(
                    f"BlockCoordinateDescent: stepsize has {steps.shape[0]} entries for "
                    f"{x.shape[0]} blocks"
                )
            return jnp.broadcast_to(steps, x.shape[:1])
        if self._composite:
            lipschitz = _composite_block_lipschitz(self.outer_fun, self.block_fun, x, args, kwargs)
        else:
            lipschitz = _block_lipschitz(self._smooth, x, args, kwargs)
        fallback = jnp.max(lipschitz)
        fallback = jnp.where(fallback > 0, fallback, 1.0)
        return 1.0 / jnp.where(lipschitz > 0, lipschitz, fallback)

    def _error(self, x, steps, hyperparams, args, kwargs) -> jax.Array:
        x, steps, hyperparams, args, kwargs = tree.stop_gradient(
            (x, steps, hyperparams, args, kwargs)
        )
        fixed_point = optimality.block_proximal_gradient(self._smooth, self.block_prox, steps)
        diff = (fixed_point(x, hyperparams, *args, **kwargs) - x) / steps.reshape(
            (-1,) + (1,) * (x.ndim - 1)
        )
        return tree.norm(diff)

    def init_state(
        self, init_params, /, hyperparams_prox, *args, **kwargs
    ) -> BlockCoordinateDescentState:
        """The state before the first sweep: the step sizes ηᵢ, and p in composite form.

        Args:
          init_params: the starting point x₀, an array with at least one axis (its rows are the
            blocks).
          hyperparams_prox: as in ``run`` (unused here).
          *args: the arguments of ``fun`` (and of ``outer_fun``, ``block_fun``) after x, as in
            ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          A ``BlockCoordinateDescentState``: iter_num 0, error inf, ηᵢ (``stepsize``, or 1/Lᵢ
            computed at x₀), and p = Σᵢ block_fun(x₀ᵢ, i, *args) in composite form (else None).

        Raises:
          TypeError: x₀ is a pytree (a dict, list, tuple...), not one array.
          ValueError: x₀ has no axis, or ``stepsize`` has not one entry per block.
        """
        if not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(init_params)):
            raise TypeError(
                "BlockCoordinateDescent: init_params must be one array whose rows are the blocks, "
                f"not a pytree (got a {type(init_params).__name__}); ravel a pytree first "
                "(jax.flatten_util.ravel_pytree) and write fun and block_prox on the array"
            )
        init_params = jnp.asarray(init_params)
        if init_params.ndim < 1:
            raise ValueError("BlockCoordinateDescent: params must be an array with ≥ 1 axis")
        dtype = tree.dtype(init_params)
        return BlockCoordinateDescentState(
            iter_num=jnp.asarray(0),
            error=jnp.asarray(jnp.inf, dtype),
            converged=jnp.asarray(False),
            stepsize=self._stepsizes(init_params, args, kwargs).astype(dtype),
            predictions=self._predictions(init_params, args, kwargs),
        )

    def _predictions(self, x, args, kwargs) -> PyTree:
        """p = Σᵢ block_fun(xᵢ, i, *args) in composite form (None otherwise)."""
        return _sum_of_blocks(self.block_fun, x, args, kwargs) if self._composite else None

    def _sweep(self, x, p, steps, hyperparams_prox, args, kwargs):
        """One pass over the blocks, each updated with the latest x; returns x and p."""

        block_prox = _checks.output_like_input(self.block_prox, type(self).__name__, "block_prox")

        def prox_step(i, x, g):
            return block_prox(x[i] - steps[i] * g, hyperparams_prox, steps[i])

        if not self._composite:

            def block_step(i, x):
                return x.at[i].set(prox_step(i, x, self._grad(x, *args, **kwargs)[i]))

            return jax.lax.fori_loop(0, x.shape[0], block_step, x), p

        grad_outer = jax.grad(self.outer_fun)

        def composite_step(i, carry):
            x, p = carry
            old, vjp = jax.vjp(lambda z: self.block_fun(z, i, *args, **kwargs), x[i])
            (g,) = vjp(grad_outer(p, *args, **kwargs))
            new = prox_step(i, x, g)
            p = tree.add(tree.sub(p, old), self.block_fun(new, i, *args, **kwargs))
            return x.at[i].set(new), p

        return jax.lax.fori_loop(0, x.shape[0], composite_step, (x, p))

    def update(
        self, params, state: BlockCoordinateDescentState, /, hyperparams_prox, *args, **kwargs
    ) -> OptStep:
        """One sweep over the blocks i = 1, …, m.

        Each block is updated with the latest x, xᵢ ← block_prox(xᵢ − ηᵢ[∇f(x)]ᵢ, hyperparams_prox,
        ηᵢ) (in composite form with p kept up to date, and recomputed every ``REFRESH`` sweeps).

        Args:
          params: the current iterate x.
          state: the state at x (from ``init_state`` or the last ``update``).
          hyperparams_prox: as in ``run``.
          *args: the arguments of ``fun`` (and of ``outer_fun``, ``block_fun``) after x, as in
            ``run``.
          **kwargs: its keyword arguments, as in ``run``.

        Returns:
          ``OptStep(params, state)``: x after the sweep and its state (the error, the block gradient
            mapping at it; p).
        """
        params, steps, p = jnp.asarray(params), state.stepsize, state.predictions
        if self._composite and p is None:  # a state built by hand
            p = self._predictions(params, args, kwargs)
        elif self._composite:  # p from scratch every REFRESH sweeps: no accumulated rounding
            p = _loop.cond(
                (state.iter_num + 1) % self.REFRESH == 0,
                lambda: self._predictions(params, args, kwargs),
                lambda: p,
            )
        new_params, p = self._sweep(params, p, steps, hyperparams_prox, args, kwargs)
        error = self._error(new_params, steps, hyperparams_prox, args, kwargs)
        state = state._replace(
            iter_num=state.iter_num + 1, error=error.astype(state.error.dtype), predictions=p
        )
        return OptStep(new_params, state)

    def optimality(self):
        """The condition that the solution is differentiated through:
        xᵢ = block_prox(xᵢ − ηᵢ[∇₁f(x, *args)]ᵢ, hyperparams_prox, ηᵢ) for every block i.

        The ηᵢ are ``stepsize``, or 1/Lᵢ computed where the condition is evaluated, as constants.

        Returns:
          ``("fixed_point", T)`` with T(x, hyperparams_prox, *args, **kwargs)
            (:func:`implicitdiff.optimality.block_proximal_gradient`).
        """

        def fixed_point_fun(x, /, hyperparams_prox, *args, **kwargs):
            steps = self._stepsizes(jax.lax.stop_gradient(x), args, kwargs)
            condition = optimality.block_proximal_gradient(self._smooth, self.block_prox, steps)
            return condition(x, hyperparams_prox, *args, **kwargs)

        fixed_point_fun.__name__ = "block_proximal_gradient_fixed_point"
        return "fixed_point", fixed_point_fun
