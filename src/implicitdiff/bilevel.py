"""Outer loops over hyperparameters: gradient-based bilevel optimization.

A bilevel problem is

    min_θ  L(x*(θ), θ)   where   x*(θ) = argmin_x f(x, θ)   (or any x with F(x*, θ) = 0),

and its hypergradient is ∇θ L = ∂₂L + (∂x*/∂θ)ᵀ ∂₁L, which implicit differentiation computes
through the inner solver's optimality condition. :func:`minimize` runs the outer loop with any
Optax optimizer: each step solves the inner problem warm-started from the previous inner
solution, takes the hypergradient with ``jax.value_and_grad`` and applies the optimizer's update.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _optimizer, _summary, tree
from implicitdiff._typing import PyTree

__all__ = ["BilevelResult", "minimize"]


class BilevelResult(NamedTuple):
    """What :func:`minimize` returns.

    Attributes:
      hyperparams: the hyperparameters after the last step.
      inner_params: the inner solution at those hyperparameters' last evaluation (the warm start
        of a next call).
      history: a dict of NumPy arrays, one entry per outer step: ``"outer_loss"`` (the loss at the
        step's hyperparameters, before the update), ``"grad_norm"`` (‖∇θ L‖), ``"time"`` (seconds
        since the start, after the step), and, when the inner solver returns a state,
        ``"inner_converged"`` and ``"inner_iterations"`` (for a batch of inner problems, a
        vmapped solve: whether all converged, and the most iterations one took).
    """

    hyperparams: PyTree
    inner_params: PyTree
    history: dict[str, np.ndarray]

    __repr__ = _summary.namedtuple_repr


def _split_inner(result: Any) -> tuple[PyTree, Any]:
    """An inner result is a solution pytree, or a ``(params, state)`` OptStep."""
    if hasattr(result, "params") and hasattr(result, "state"):
        return result.params, result.state
    return result, None


def minimize(
    outer_loss: Callable[[PyTree, PyTree], jax.Array],
    inner_solve: Callable[[PyTree, PyTree], Any],
    hyperparams: PyTree,
    inner_init: PyTree,
    optimizer: Any,
    num_steps: int,
    *,
    progress: bool | str = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> BilevelResult:
    """Minimize ``outer_loss(inner_solve(inner_init, θ), θ)`` over θ with an Optax optimizer.

    Each outer step k computes x_k = inner_solve(x_{k−1}, θ_k) (warm start from the previous
    inner solution, which carries no derivative), the loss L_k = outer_loss(x_k, θ_k) and its
    hypergradient g_k = ∇θ L_k by ``jax.value_and_grad`` (through the inner solver's implicit
    derivative), then (u, s) = optimizer.update(g_k, s, θ_k) and θ_{k+1} = θ_k + u. The step is
    compiled once and reused.

    Args:
      outer_loss: ``outer_loss(inner_params, hyperparams) -> scalar``.
      inner_solve: ``inner_solve(inner_init, hyperparams)``, differentiable with respect to
        ``hyperparams`` (for example ``lambda x0, θ: solver.run(x0, θ, X, y)`` with a solver of
        :mod:`implicitdiff.solvers`); returns the inner solution or an OptStep ``(params,
        state)``, whose ``state.converged`` and ``state.iter_num`` go into the history.
      hyperparams: the initial θ (a pytree of float arrays).
      inner_init: the first inner warm start.
      optimizer: an Optax ``GradientTransformation`` (anything with ``init(params)`` and
        ``update(grads, state, params) -> (updates, state)``), e.g. ``optax.adam(1e-2)``; one
        whose ``update`` takes keyword arguments (Optax's ``GradientTransformationExtraArgs``)
        also gets ``value`` (L_k), ``grad`` (g_k) and ``value_fn`` (θ ↦ L at the same warm
        start), which the line search of ``optax.lbfgs()`` needs.
      num_steps: the number of outer steps (≥ 1).
      progress: show a progress bar (tqdm, if installed); a string is used as its label.
      callback: called after each step as ``callback(step, record)`` with that step's history
        record (Python floats), e.g. to log or to stop early by raising ``StopIteration``.

    Returns:
      A :class:`BilevelResult`.

    Example::

        solver = ProximalGradient(fun=loss, prox=prox.l1, tol=1e-8)
        result = bilevel.minimize(
            lambda w, log_lam: validation_loss(w),
            lambda w0, log_lam: solver.run(w0, jnp.exp(log_lam), X, y),
            jnp.array(0.0), jnp.zeros(p), optax.adam(0.1), 50)
    """
    if not (isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= 1):
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    for name, method in (("init", "init"), ("update", "update")):
        if not callable(getattr(optimizer, method, None)):
            raise TypeError(
                f"optimizer must be an Optax GradientTransformation (with init and update); "
                f"{type(optimizer).__name__} has no callable {name!r}"
            )
    for leaf in jax.tree_util.tree_leaves(hyperparams):
        if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
            raise TypeError(
                f"hyperparams must be floating-point arrays (they are optimized by gradient), "
                f"got a leaf of dtype {jnp.asarray(leaf).dtype}"
            )

    def objective(theta, x0):
        x, state = _split_inner(inner_solve(x0, theta))
        return outer_loss(x, theta), (tree.stop_gradient(x), state)

    @jax.jit
    def step(theta, opt_state, x0):
        (loss, (x, state)), grads = jax.value_and_grad(objective, has_aux=True)(theta, x0)
        # (an optimizer with a line search, optax.lbfgs, also gets L and θ ↦ L at this x0)
        updates, opt_state = _optimizer.update(
            optimizer, grads, opt_state, theta, loss, lambda t: objective(t, x0)[0]
        )
        theta = tree.map(lambda t, u: (t + u).astype(t.dtype), theta, updates)
        info = {"outer_loss": loss, "grad_norm": tree.norm(grads)}
        # A batch of inner problems (a vmapped solve): whether all converged, the most
        # iterations one took.
        if state is not None and hasattr(state, "converged"):
            info["inner_converged"] = jnp.all(state.converged)
        if state is not None and hasattr(state, "iter_num"):
            info["inner_iterations"] = jnp.max(state.iter_num)
        return theta, opt_state, x, info

    # Strongly typed arrays from the start: a Python number (weakly typed) comes back from the
    # first step as a strongly typed array, and the jitted step would compile a second time.
    hyperparams, inner_init = _strongly_typed((hyperparams, inner_init))
    opt_state = _strongly_typed(optimizer.init(hyperparams))
    theta, x = hyperparams, inner_init
    records: list[dict[str, float]] = []
    bar = _progress_bar(num_steps, progress)
    start = time.perf_counter()
    try:
        for k in range(num_steps):
            theta, opt_state, x, info = step(theta, opt_state, x)
            record = {name: np.asarray(value).item() for name, value in info.items()}
            record["time"] = time.perf_counter() - start
            records.append(record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['outer_loss']:.4g}", refresh=False)
                bar.update(1)
            if callback is not None:
                try:
                    callback(k, record)
                except StopIteration:
                    break
    finally:
        if bar is not None:
            bar.close()
    history = {name: np.asarray([r[name] for r in records]) for name in records[0]}
    return BilevelResult(theta, x, history)


def _strongly_typed(values: PyTree) -> PyTree:
    """Every array or number leaf as an array of its own (canonical) dtype, not weakly typed."""

    def convert(leaf):
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, complex)):
            return jnp.asarray(leaf, dtype=jnp.result_type(leaf))
        return leaf

    return jax.tree_util.tree_map(convert, values)


def _progress_bar(total: int, progress: bool | str):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety: run without it
        return None
    label = progress if isinstance(progress, str) else "outer steps"
    return tqdm(total=total, desc=label, leave=False)
