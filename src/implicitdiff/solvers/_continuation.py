"""The derivative continuation of the solvers that search their step (unrolling).

An unrolled run (``implicit_diff=False``) differentiates its iterations. Once the loop has
stopped, :meth:`implicitdiff.solvers._base.IterativeSolver._unrolled` keeps iterating a copy of
the iterate that carries the derivative, so that a run which stopped early (a start at the
solution) still converges to dx*/dθ. A solver whose step comes from a line search cannot be
continued with its own update (past convergence the search sees only rounding), so it supplies
instead a fixed-step map with the same fixed points, built here:

    T(x) = finish(x − η ∇₁f(x, *args), η),    η = 1/L̂,

with ``finish`` the solver's prox or projection (the identity for unconstrained solvers) and
L̂ ≈ ‖∇²f(x_stop)‖ estimated once, by power iterations of Hessian-vector products at the stopped
iterate, on values cut from the graph. At a minimum with ∇²f ≻ 0 the linearization
(I − η∇²f) has spectrum in [0, 1 − λ_min/λ_max] (power iterations converge to λ_max from below,
so η ≤ 2/λ_max as soon as L̂ ≥ λ_max/2), and a prox or projection is non-expansive: the
derivative iterates dxₖ₊₁ = ∂T dxₖ + ∂_θT converge to the implicit derivative at the rate
1 − λ_min/λ_max, from any starting derivative. The values of x stay at the fixed point to
rounding (η is fixed, not searched).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _loop, tree
from implicitdiff._typing import PyTree

__all__ = ["POWER_ITERATIONS", "Continuation", "gradient_continuation"]

POWER_ITERATIONS = 16


class Continuation(NamedTuple):
    """What a solver's ``_continuation`` returns.

    stepsize(x) -> η: the step of the map at the stopped iterate x (a constant: its inputs are
      cut from the graph), a positive real scalar;
    step(x, η) -> T(x): one step of the map, differentiable in x and in the problem's arguments.
    """

    stepsize: Callable[[PyTree], jax.Array]
    step: Callable[[PyTree, jax.Array], PyTree]


def _probe(params: PyTree) -> PyTree:
    """A fixed, generic start for power iterations: cos(2.4 k + 1 + i) over entry k of leaf i
    (plus i sin(...) for complex leaves), unit norm. Not orthogonal to any eigenvector that a
    structured problem would single out (as the all-ones vector is for a graph Laplacian)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = []
    for i, leaf in enumerate(leaves):
        phase = 2.399963 * jnp.arange(leaf.size, dtype=jnp.finfo(leaf.dtype).dtype) + 1.0 + i
        v = jnp.cos(phase)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            v = v + 1j * jnp.sin(1.7 * phase)
        out.append(v.astype(leaf.dtype).reshape(leaf.shape))
    v = jax.tree_util.tree_unflatten(treedef, out)
    return tree.scale(1.0 / tree.norm(v), v)


def gradient_continuation(
    fun: Callable,
    args: tuple,
    kwargs: dict,
    finish: Callable[[PyTree, jax.Array], PyTree] | None = None,
    iterations: int = POWER_ITERATIONS,
    grad: Callable | None = None,
) -> Continuation:
    """The continuation x ← finish(x − η ∇₁fun(x, *args, **kwargs), η), η = 1/L̂.

    Args:
      fun: the smooth objective f(x, *args, **kwargs), a real scalar.
      args, kwargs: the problem's arguments after x (as ``run`` got them: derivatives flow
        through them in ``step``, not in ``stepsize``).
      finish: ``finish(z, η)``, the prox of η g or the projection applied after the gradient
        step (None: the identity).
      iterations: the number of power iterations of v ← ∇²f v / ‖∇²f v‖ for
        L̂ = ‖∇²f v‖ (≤ λ_max, and ≥ λ_max/2 after a few iterations from a generic v).
      grad: ∇₁f(x, *args, **kwargs) when the user gives it (``value_and_grad=True``); None:
        ``jax.grad(fun)``.

    Returns:
      A :class:`Continuation`. Where L̂ is 0 or not finite (f flat, or broken), η = 1.
      For complex x the step uses conj(∇f) (``jax.grad``'s convention), the steepest descent.
    """
    grad = jax.grad(fun) if grad is None else grad

    def descent(x, /, *a, **k):
        return tree.map(jnp.conj, grad(x, *a, **k))

    def stepsize(params):
        x, cut_args, cut_kwargs = tree.stop_gradient((params, args, kwargs))
        real = jnp.finfo(tree.dtype(x)).dtype

        def power(carry, _):
            v, _ = carry
            hv = jax.jvp(lambda y: descent(y, *cut_args, **cut_kwargs), (x,), (v,))[1]
            size = tree.norm(hv).astype(real)
            ok = (size > 0) & jnp.isfinite(size)
            v = tree.scale(jnp.where(ok, 1.0 / jnp.where(ok, size, 1.0), 0.0), hv)
            return (v, size), None

        (_, curvature), _ = _loop.scan(
            power, (_probe(x), jnp.zeros((), real)), None, length=iterations
        )
        ok = (curvature > 0) & jnp.isfinite(curvature)
        return jnp.where(ok, 1.0 / jnp.where(ok, curvature, 1.0), 1.0).astype(real)

    def step(params, eta):
        moved = tree.map(
            lambda x, d: (x - eta.astype(x.dtype) * d).astype(x.dtype),
            params,
            descent(params, *args, **kwargs),
        )
        if finish is None:
            return moved
        out = finish(moved, eta)
        return tree.map(lambda o, x: jnp.asarray(o).astype(x.dtype), out, params)

    return Continuation(stepsize, step)
