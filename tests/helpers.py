"""Shared checks for derivative tests: central finite differences and comparisons, in float64."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def finite_difference_jvp(fun: Callable, primal: Any, tangent: Any, eps: float = 1e-6) -> Any:
    """(fun(x + eps t) − fun(x − eps t)) / (2 eps): a central difference along a pytree tangent."""
    plus = jax.tree_util.tree_map(lambda x, t: x + eps * t, primal, tangent)
    minus = jax.tree_util.tree_map(lambda x, t: x - eps * t, primal, tangent)
    return jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * eps), fun(plus), fun(minus))


def finite_difference_grad(fun: Callable, primal: Any, eps: float = 1e-6) -> Any:
    """The gradient of a scalar fun by central differences along every coordinate of a pytree."""
    flat, unravel = ravel_pytree(primal)
    flat = np.asarray(flat, dtype=np.float64)
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        grad[i] = (float(fun(unravel(flat + e))) - float(fun(unravel(flat - e)))) / (2 * eps)
    return unravel(jnp.asarray(grad))


def random_tangent(primal: Any, seed: int = 0) -> Any:
    """A pytree of standard normal entries shaped like primal."""
    leaves, treedef = jax.tree_util.tree_flatten(primal)
    keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
            for k, x in zip(keys, leaves, strict=False)
        ],
    )


def assert_tree_allclose(actual: Any, expected: Any, rtol: float = 1e-7, atol: float = 1e-9):
    """Leaf-by-leaf np.testing.assert_allclose, with the same structure required."""
    a_leaves, a_tree = jax.tree_util.tree_flatten(actual)
    e_leaves, e_tree = jax.tree_util.tree_flatten(expected)
    assert a_tree == e_tree, f"structures differ: {a_tree} vs {e_tree}"
    for a, e in zip(a_leaves, e_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def assert_derivatives_match(implicit: Callable, explicit: Callable, point, direction, atol):
    """``implicit`` and ``explicit`` (functions of one array, complex allowed) have the same JVP
    along ``direction`` and the same gradient of the real loss Σ|f − 1|² at ``point``."""
    _, got = jax.jvp(implicit, (point,), (direction,))
    _, want = jax.jvp(explicit, (point,), (direction,))
    np.testing.assert_allclose(got, want, atol=atol)

    def loss(fn):
        return lambda p: jnp.sum(jnp.abs(fn(p) - 1.0) ** 2)

    got = jax.jit(jax.grad(loss(implicit)))(point)
    np.testing.assert_allclose(got, jax.grad(loss(explicit))(point), atol=atol)


@contextlib.contextmanager
def compilations():
    """The names of the programs XLA compiles inside the block (a list, filled as they come).

    Counts through jax.monitoring's backend-compile event, so it sees every compilation (a
    solver's cached ``run``, eager operations, ``jax.jit``), without reading any private cache.
    """
    names: list = []

    def listener(event, duration, **kwargs):
        if event == _BACKEND_COMPILE_EVENT:
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# For a test's own ``jax.jit`` programs on tiny problems: XLA's CPU backend without its LLVM
# optimizations compiles about a quarter faster (the arithmetic is the same IEEE operations;
# only code speed changes, which does not matter at n = 2).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def run_together(cases: dict, setup: Callable = contextlib.nullcontext) -> dict:
    """Run ``cases`` (name -> (fun, args)) as ONE compiled program (``jax.jit`` with
    :data:`FAST_COMPILE`), results fetched to NumPy: name -> fun(*args). Compiling the members of
    a sweep together costs about two thirds of compiling them apart. If the joint program fails
    (one member's bug), each case runs on its own, so that each test sees its own outcome: name
    -> its result, or the exception it raised (re-raise it with :func:`unpack`). ``setup()`` is
    a context manager entered around each run (warning filters, ...)."""

    def program(args):
        return {name: fun(*args[name]) for name, (fun, _) in cases.items()}

    try:
        with setup():
            jitted = jax.jit(program, compiler_options=FAST_COMPILE)
            return jax.device_get(jitted({n: a for n, (_, a) in cases.items()}))
    except Exception:  # one member's failure: each on its own, to tell which
        pass
    results = {}
    for name, (fun, args) in cases.items():
        try:
            with setup():
                jitted = jax.jit(fun, compiler_options=FAST_COMPILE)
                results[name] = jax.device_get(jitted(*args))
        except Exception as error:
            results[name] = error
    return results


def unpack(result: Any) -> Any:
    """A result of :func:`run_together`, or the exception its case raised, re-raised."""
    if isinstance(result, Exception):
        raise result
    return result


class PlainSGD(NamedTuple):
    """An optimizer in Optax's form (``init``, ``update``) without Optax: the increment −η g,
    as ``optax.sgd(η)``; hashable, so that equal solvers share their compiled programs."""

    learning_rate: float

    def init(self, params: Any) -> tuple:
        del params
        return ()

    def update(self, grads: Any, state: tuple, params: Any = None) -> tuple[Any, tuple]:
        del params
        return jax.tree_util.tree_map(lambda g: -self.learning_rate * g, grads), state
