"""Any Python solver run on the host (scikit-learn, cvxpy, a C library), made differentiable
and jittable through the optimality condition of its problem: :class:`HostSolver`.

The host solve runs through ``jax.pure_callback`` (see :mod:`implicitdiff.solvers._host_call`
for what that means under ``jit``, ``vmap`` and ``grad``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff import _checks, _summary, tree
from implicitdiff._args import ArgsSplit
from implicitdiff._typing import PyTree
from implicitdiff.solvers._host_call import HostWrapper, all_finite, callback_args, check_callable

__all__ = ["HostSolver", "HostSolverState"]


class HostSolverState(NamedTuple):
    """The state of :class:`HostSolver` at the solution x.

    Attributes:
      iter_num: −1: a host solver reports no iteration count.
      error: ‖F(x)‖ (kind "root") or ‖T(x) − x‖ (kind "fixed_point"), computed in JAX.
      converged: a finite x and error, and error ≤ ``tol``.
    """

    iter_num: jax.Array
    error: jax.Array
    converged: jax.Array

    __repr__ = _summary.namedtuple_repr


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class HostSolver(HostWrapper):
    """Any Python solver run on the host, made differentiable through its optimality condition.

    ``run(init_params, *args, **kwargs)`` calls ``solve_fn(init_params, *args, **kwargs)``
    through ``jax.pure_callback``, with NumPy arrays in place of the arrays (and numbers) of
    ``init_params``, ``args`` and ``kwargs``; other arguments (strings, callables, None, ...) are
    passed as they are. ``solve_fn`` may run anything (a scikit-learn estimator's ``fit``, a
    cvxpy problem, a C library) and returns the solution x as a pytree of array-likes. The
    solution is differentiated through ``optimality_fun``: F(x, *args, **kwargs) = 0 for
    ``kind="root"`` (:func:`implicitdiff.custom_root`), or the fixed point x = T(x, *args,
    **kwargs) for ``kind="fixed_point"`` (:func:`implicitdiff.custom_fixed_point`); it must be
    written in JAX and take the same arguments as ``run`` after ``init_params``.

    The shape of the solution must be known before the host runs (XLA compiles the program
    around the callback). It is given by ``result_shape``:

    - None (the default): the solution has the structure, shapes and dtypes of ``init_params``;
    - a pytree of ``jax.ShapeDtypeStruct`` (or of arrays, whose shapes and dtypes are taken);
    - a callable ``result_shape(init_params, *args, **kwargs)`` returning such a pytree, for a
      solution shaped by the data (called at trace time, on abstract values).

    ``solve_fn``'s output is cast to those dtypes; a different structure or shape raises a
    ``ValueError`` naming ``solve_fn`` inside the callback, which JAX re-raises as a
    ``JaxRuntimeError`` whose message contains it. ``state.error`` = ‖F(x)‖ or ‖T(x) − x‖ in JAX;
    ``state.converged`` = a finite error ≤ ``tol``. Under ``jax.vmap``, ``solve_fn`` is called
    once per problem, sequentially.

    Attributes:
      solve_fn: ``solve_fn(init_params, *args, **kwargs) -> x``, on NumPy values.
      optimality_fun: F (``kind="root"``) or T (``kind="fixed_point"``), a JAX function of
        ``(x, *args, **kwargs)`` returning a pytree like x.
      result_shape: the solution's structure, shapes and dtypes, see above.
      kind: "root" (default) or "fixed_point".
      tol: the error below which ``state.converged`` (default 1e-6); the host solver's own
        tolerance is set in ``solve_fn`` (tight: the derivative's error is proportional to the
        solution's).
      implicit_diff, solve, jit, on_failure, backward_on_failure: see
        :class:`implicitdiff.solvers._base.DifferentiableRun` (keyword-only).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from implicitdiff import optimality
      >>> from implicitdiff.solvers.host import HostSolver
      >>> f = lambda w, lam, X, y: 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * lam * w @ w
      >>> def ridge(w0, lam, X, y):  # any NumPy code, e.g. sklearn's Ridge(alpha=lam).fit
      ...     return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ y)
      >>> solver = HostSolver(ridge, optimality.stationary(f))
      >>> X, y = jnp.eye(4, 3) + 1.0, jnp.arange(4.0)
      >>> dw_dlam = jax.jacobian(lambda lam: solver.run(jnp.zeros(3), lam, X, y).params)(1.0)
    """

    solve_fn: Callable | None = dataclasses.field(default=None, kw_only=False)
    _user_function = "optimality_fun"

    optimality_fun: Callable | None = dataclasses.field(default=None, kw_only=False)
    result_shape: Any = None
    kind: str = "root"
    tol: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        owner = type(self).__name__
        check_callable(self.solve_fn, "solve_fn", owner)
        check_callable(self.optimality_fun, "optimality_fun", owner)
        if self.kind not in ("root", "fixed_point"):
            raise ValueError(f"{owner}: kind must be 'root' or 'fixed_point', got {self.kind!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"{owner}: tol must be a number ≥ 0, got {self.tol!r}")

    def optimality(self) -> tuple[str, Callable]:
        """The condition that the solution is differentiated through, as given.

        Returns:
          ``(kind, optimality_fun)``: ``("root", F)`` or ``("fixed_point", T)``.
        """
        return self.kind, self.optimality_fun

    def _result_shape(self, init_params, args, kwargs) -> PyTree:
        shape = self.result_shape
        if shape is None:
            shape = init_params
        elif callable(shape):
            shape = shape(init_params, *args, **kwargs)
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), shape
        )

    def _solution(self, init_params, /, *args, **kwargs):
        expected = self._result_shape(init_params, args, kwargs)
        expected_leaves, expected_tree = jax.tree_util.tree_flatten(expected)
        init_leaves, init_tree = jax.tree_util.tree_flatten(init_params)
        key, arrays = callback_args(args, kwargs)
        solve_fn = self.solve_fn
        name = getattr(solve_fn, "__name__", type(solve_fn).__name__)

        def host(init_leaves, arrays):
            init = jax.tree_util.tree_unflatten(init_tree, [np.asarray(x) for x in init_leaves])
            a, k = ArgsSplit.merge(key, [np.asarray(x) for x in arrays])
            out = solve_fn(init, *a, **k)
            leaves, out_tree = jax.tree_util.tree_flatten(out)
            if out_tree != expected_tree:
                raise ValueError(
                    f"HostSolver: solve_fn {name} returned a pytree of structure {out_tree}, "
                    f"expected {expected_tree} (set result_shape if the solution is not shaped "
                    "like init_params)"
                )
            results = []
            for i, (leaf, spec) in enumerate(zip(leaves, expected_leaves, strict=True)):
                leaf = np.asarray(leaf)
                if leaf.shape != spec.shape:
                    raise ValueError(
                        f"HostSolver: solve_fn {name} returned leaf {i} of shape {leaf.shape}, "
                        f"expected {spec.shape} (set result_shape if the solution is not shaped "
                        "like init_params)"
                    )
                results.append(leaf.astype(spec.dtype))
            return results

        leaves = jax.pure_callback(
            host,
            expected_leaves,
            [jnp.asarray(x) for x in init_leaves],
            arrays,
            vmap_method="sequential",
        )
        params = jax.tree_util.tree_unflatten(expected_tree, leaves)
        value = self.optimality_fun(params, *args, **kwargs)
        residual = value if self.kind == "root" else tree.sub(value, params)
        dtype = tree.dtype(params)
        error = tree.norm(residual).astype(dtype)
        converged = all_finite(params) & jnp.isfinite(error) & (error <= self.tol)
        state = HostSolverState(
            iter_num=jnp.asarray(-1, jnp.int32), error=error, converged=converged
        )
        # A non-finite error (NaN data) makes x NaN: no finite point, nor a finite derivative at
        # it, for a problem that met NaN (as the library's own solvers).
        return _checks.nan_unless_tree(jnp.isfinite(error) & all_finite(params), params), state
