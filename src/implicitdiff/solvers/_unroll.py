"""Unrolling: the loop of :class:`implicitdiff.solvers.IterativeSolver` with
``implicit_diff=False``, a ``lax.scan`` of ``maxiter`` masked steps that JAX differentiates step
by step.

:class:`UnrolledLoop` is a mixin of ``IterativeSolver``: its methods use the solver's ``_stop``,
``_broken``, ``_searches_its_step``, ``maxiter``, ``unroll_checkpoint`` and ``verbose``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import _loop, tree
from implicitdiff.solvers import _run_options

__all__ = ["UnrolledLoop"]


class UnrolledLoop:
    """The unrolled loop and its derivative continuation (see :meth:`_unrolled`)."""

    def _unrolled(self, step: Callable, start: tuple, continuation: Any = None) -> tuple:
        """Unrolling: ``maxiter`` steps in a ``lax.scan`` that JAX differentiates step by step.

        Two copies of the iteration are carried. ``kept`` stops at the usual test (``_stop``)
        and gives every value returned (the iterate, ``iter_num``, the status), exactly as a
        stopped loop would; it carries no derivative. ``live`` does not stop at the tolerance
        (only on a non-finite error or a failure the solver detected) and carries the
        derivative: the stop test must not cut it. A loop that stops at once (a start at the
        solution with ``tol = 0``, or a coordinate already at its solution while the others
        converge) would otherwise return the derivative of the start (0) or of a few steps:
        continued, the derivative iterates of the linearized update converge to the implicit
        derivative, at the update's own rate. The returned iterate is ``kept``'s value with
        ``live``'s derivative (they coincide until ``kept`` stops). Same work per step as a
        single masked loop (one ``update``).

        A solver that searches its step (:meth:`_searches_its_step`) cannot be continued with
        its own update: past convergence its line search sees only rounding noise (a zero
        gradient accepts any step, and the step grows), the linearized update is not a
        contraction and the derivative diverges. It supplies a ``continuation``
        (:meth:`_continuation`): until ``kept`` stops, ``live`` runs the solver's ``update``
        exactly as above; from the step where ``kept`` has stopped, ``live``'s iterate follows
        the fixed-step map T(x) = ``step(x, η)`` instead (its state is left as it was), with
        η = ``stepsize(x_stop)`` computed once, at the stopped iterate, and carried. T has the
        solution as fixed point (values stay there to rounding) and contracts, so the
        derivative converges to dx*/dθ within the iterations left (``maxiter`` − those made);
        when too few are left it is the derivative of the iterations made, finite. The two
        branches are a ``lax.cond`` (one of them runs per step; both under ``vmap``, where the
        once-only η is also recomputed at each step). A searching solver without a
        continuation (None) stops ``live`` with ``kept``: the derivative of the steps taken.

        The continuation also starts when ``kept`` stalls: for ``_STALL_STEPS`` steps in a row
        its error has not reached a new minimum and its iterate has moved by less than
        √eps·(1 + ‖x‖∞) (a solver still travelling, as L-BFGS along Rosenbrock's valley, does
        not count). With ``tol = 0`` (or a tol below the rounding of the
        error) the loop never stops, and at rounding level the line searches see only noise
        (a start at the solution to rounding gave derivatives 0.4 to 5e4 off). A stall that is
        not at the solution only hands the derivative to the contraction earlier: T converges
        to the same point, so the derivative is still dx*/dθ, at T's rate.
        """
        searches = self._searches_its_step()

        def masked_step(carry, _):
            live, kept = carry
            stopped = self._stop(*kept)
            params, state = step(live)
            # The error is a stopping measure: no derivative (a norm has none at an exact 0).
            moved = (params, state._replace(error=jax.lax.stop_gradient(state.error)))
            halt = self._broken(*live) | stopped if searches else self._broken(*live)
            live = tree.where(jax.lax.stop_gradient(halt), live, moved)
            kept = tree.where(stopped, kept, jax.lax.stop_gradient(moved))
            self._report_unless(stopped, kept[1])
            return (live, kept), None

        if continuation is not None:
            masked_step = self._continued_step(step, continuation)
            real = jnp.finfo(tree.dtype(start[0])).dtype
            # η (0 until kept stops or stalls), kept's smallest error, steps since it fell.
            watch = (jnp.zeros((), real), jnp.asarray(jnp.inf, real), jnp.zeros((), jnp.int32))
            start = (start, watch)
        if self.unroll_checkpoint:
            masked_step = jax.checkpoint(masked_step)
        (live, kept), _ = _loop.scan(
            masked_step, (start, jax.lax.stop_gradient(start)), None, length=self.maxiter
        )
        if continuation is not None:
            live, kept = live[0], kept[0]

        def merge(live_leaf, kept_leaf):
            if not jnp.issubdtype(jnp.result_type(kept_leaf), jnp.inexact):
                return kept_leaf
            return _value_with_derivative_of(kept_leaf, live_leaf)

        return jax.tree_util.tree_map(merge, live, kept)

    def _report_unless(self, stopped: jax.Array, state: Any) -> None:
        """With ``verbose``: the iteration's line, unless the loop had stopped before it."""
        if self.verbose:
            name = type(self).__name__
            # A side effect: a real cond (``_loop.cond`` would run both branches in shard_map).
            jax.lax.cond(stopped, lambda: None, lambda: _run_options.report(name, state))

    def _continued_step(self, step: Callable, continuation: Any) -> Callable:
        """The scan body of :meth:`_unrolled` with a continuation: ``(live, η), (kept, _)``."""
        stepsize, contract = continuation

        def solver_step(live):
            params, state = step(live)
            # The error is a stopping measure: no derivative (a norm has none at an exact 0).
            return params, state._replace(error=jax.lax.stop_gradient(state.error))

        def masked_step(carry, _):
            (live, (eta, best, since)), (kept, _) = carry
            before = kept[0]
            stopped = self._stop(*kept)
            switched = stopped | (since >= _STALL_STEPS)
            eta = _loop.cond(
                switched & (eta <= 0),
                lambda: jax.lax.stop_gradient(stepsize(kept[0])).astype(eta.dtype),
                lambda: eta,
            )

            def own_steps(live, kept):
                moved = solver_step(live)  # live and kept agree in value until the switch
                return moved, jax.lax.stop_gradient(moved)

            def continued(live, kept):
                # A stall without a stop: kept goes on with the solver's own steps (the values
                # returned are those of the solver's iteration), live with the contraction.
                kept_moved = _loop.cond(
                    stopped, lambda k: k, lambda k: jax.lax.stop_gradient(solver_step(k)), kept
                )
                return (contract(live[0], eta), live[1]), kept_moved

            moved, kept_moved = _loop.cond(switched, continued, own_steps, live, kept)
            halt = jax.lax.stop_gradient(self._broken(*live))
            live = tree.where(halt, live, moved)
            kept = tree.where(stopped, kept, kept_moved)
            self._report_unless(stopped, kept[1])
            # A stall: no new smallest error while the iterate moves by rounding only. Once
            # counted to _STALL_STEPS it stays (the switch is for good).
            error = jnp.asarray(kept[1].error, best.dtype)
            rounding = jnp.sqrt(jnp.finfo(best.dtype).eps) * (1 + tree.norm(kept[0], jnp.inf))
            tiny = tree.norm(tree.sub(kept[0], before), jnp.inf) <= rounding
            counting = (error >= best) & tiny
            since = jnp.where(since >= _STALL_STEPS, since, jnp.where(counting, since + 1, 0))
            best = jnp.minimum(best, error)
            watch = (eta, best, since)
            return ((live, watch), (kept, watch)), None

        return masked_step


# Steps without a new smallest error after which unrolling's derivative copy leaves a searching
# solver's own update for its continuation (see UnrolledLoop._unrolled).
_STALL_STEPS = 10


@jax.custom_jvp
def _value_with_derivative_of(value: jax.Array, carrier: jax.Array) -> jax.Array:
    """``value`` exactly, with the derivative of ``carrier`` (same shape and dtype)."""
    del carrier
    return value


@_value_with_derivative_of.defjvp
def _value_with_derivative_of_jvp(primals, tangents):
    value, carrier = primals
    _, carrier_tangent = tangents
    # The primal out is this function again, not ``value``: differentiated once more (a
    # Hessian), the rule's own output then has the carrier's derivative too, where ``value``
    # (cut from the graph) would give 0 and drop every term that differentiates x twice.
    return _value_with_derivative_of(value, carrier), carrier_tangent
