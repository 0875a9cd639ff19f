"""What the QP solvers share: the problem min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≤ h in JAXopt's
conventions (``run(init_params, params_obj=(Q, c), params_eq=(A, b), params_ineq=(G, h))``),
its primal-dual solution :class:`KKTSolution`, and its KKT conditions :func:`qp_kkt`.

:class:`~implicitdiff.solvers.equality_qp.EqualityConstrainedQP` and
:class:`~implicitdiff.solvers.osqp.OSQP` return the solution as a :class:`KKTSolution`, the named
tuple ``(primal, dual_eq, dual_ineq)`` (a part whose constraints are absent is None), with the
signs of the Lagrangian L = ½xᵀQx + cᵀx + νᵀ(Ax − b) + λᵀ(Gx − h), λ ≥ 0; they are
differentiated through the KKT conditions (:func:`implicitdiff.optimality.kkt` with
f(x, (Q, c)) = ½xᵀQx + cᵀx, H(x, (A, b)) = Ax − b and G(x, (G, h)) = Gx − h).

JAXopt's ``fun=``: the objective given as a function f(x, params_obj), promised quadratic and
convex in x, with ``params_obj`` any pytree. Then c = ∇ₓf(0, params_obj) and Q v is the
derivative of ∇ₓf(·, params_obj) at 0 in the direction v (:func:`fun_matvec`, no matrix), and
the KKT conditions use ∇ₓf(x, params_obj) itself (:func:`qp_objective`), so that the solution is
differentiated with respect to ``params_obj`` through f. :func:`check_fun`,
:func:`fun_linear_term` and :func:`quadratic_parts` are the pieces each solver calls.

This module must not import :mod:`implicitdiff.projections` (which imports OSQP, for the
polyhedron projection).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _summary, optimality, tree
from implicitdiff._typing import PyTree

__all__ = ["KKTSolution", "qp_kkt", "qp_objective"]


class KKTSolution(NamedTuple):
    """A QP's primal-dual solution (as JAXopt's): a tuple ``(primal, dual_eq, dual_ineq)``.

    Attributes:
      primal: x, shape (n,) (a pytree with matvec operators).
      dual_eq: ν, the multipliers of Ax = b, shape (p,); None without equalities.
      dual_ineq: λ ≥ 0, the multipliers of Gx ≤ h, shape (m,); None without inequalities.
    """

    primal: PyTree
    dual_eq: PyTree
    dual_ineq: PyTree

    __repr__ = _summary.namedtuple_repr


def apply_operator(matvec: Callable | None, M: Any, x: PyTree) -> PyTree:
    """M x: ``matvec(M, x)`` if a matvec is given, else the matrix product (0 for M None)."""
    if matvec is not None:
        return matvec(M, x)
    if M is None:
        return tree.zeros_like(x)
    return M @ x


def inf_norm(v: jax.Array) -> jax.Array:
    """‖v‖∞, 0 for an empty v."""
    return jnp.max(jnp.abs(v), initial=0.0)


def transpose_products(C: jax.Array, u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Cᵀu, Cᵀv) from one pass over C (one matrix product with two columns)."""
    both = C.T @ jnp.stack([u, v], axis=1)
    return both[:, 0], both[:, 1]


def check_pair(name: str, pair: Any) -> None:
    if pair is not None and not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(
            f"{name} must be a pair (matrix, vector) or None, got {type(pair).__name__}"
        )


def kkt_start(owner: str, init_params: Any, parts: int = 3) -> tuple:
    """The parts of a warm start ``init_params``: None (all parts None), or a
    :class:`KKTSolution` or tuple/list of ``parts`` entries (primal, dual_eq, dual_ineq).

    Raises:
      TypeError: anything else (a bare array or dict would otherwise fail in tuple unpacking,
        with a message that names nothing).
    """
    if init_params is None:
        return (None,) * parts
    if isinstance(init_params, (tuple, list)) and len(init_params) == parts:
        return tuple(init_params)
    if isinstance(init_params, (tuple, list)):
        what = f"a {type(init_params).__name__} of length {len(init_params)}"
    elif hasattr(init_params, "shape"):
        what = f"an array of shape {tuple(init_params.shape)}"
    else:
        what = f"a {type(init_params).__name__}"
    raise TypeError(
        f"{owner}.run: init_params must be None or a warm start KKTSolution(primal, dual_eq, "
        f"dual_ineq) (or a tuple of those {parts}, a part None for zeros), got {what}"
    )


def check_constraint_shapes(owner: str, name: str, pair: Any, n: int) -> None:
    """Refuses a constraint pair (M, v) that is not a matrix (m, n) and a vector (m,)."""
    M, v = pair
    if jnp.ndim(M) != 2 or jnp.shape(M)[1] != n or jnp.shape(v) != jnp.shape(M)[:1]:
        raise ValueError(
            f"{owner}: {name} must be a matrix (m, {n}) and a vector (m,); got "
            f"{jnp.shape(M)} and {jnp.shape(v)}"
        )


def check_fun(owner: str, fun: Callable | None, matvec_Q: Callable | None) -> None:
    """The checks of ``fun=`` at construction (JAXopt's, with errors naming fun).

    Raises:
      ValueError: ``fun`` and ``matvec_Q`` both given (JAXopt refuses the pair too).
      TypeError: ``fun`` not callable, or not callable as fun(params, params_obj).
    """
    if fun is None:
        return
    if matvec_Q is not None:
        raise ValueError(
            f"{owner}: fun= and matvec_Q= are both given; give one of them (fun defines Q)"
        )
    if not callable(fun):
        raise TypeError(f"{owner}: fun must be callable fun(params, params_obj), got {fun!r}")
    try:
        signature = inspect.signature(fun)
    except (TypeError, ValueError):  # a builtin or an object without a signature: unchecked
        return
    try:
        signature.bind(None, None)
    except TypeError as error:
        raise TypeError(
            f"{owner}: fun must take (params, params_obj) positionally, as fun(x, params_obj); "
            f"its signature {signature} does not ({error})"
        ) from None


def check_fun_start(owner: str, fun: Callable | None, x0: PyTree, layout: str) -> None:
    """With ``fun``, the start's primal x is required (as in JAXopt): params_obj does not tell
    x's shape. ``layout`` is the ``init_params`` to suggest.

    Raises:
      ValueError: ``fun`` given and x0 None.
    """
    if fun is not None and x0 is None:
        raise ValueError(
            f"{owner}.run: with fun=, init_params must give the primal x (params_obj does not "
            f"tell its shape): pass init_params={layout}"
        )


def fun_matvec(fun: Callable) -> Callable:
    """Q v for the quadratic f = ``fun``: matvec(params_obj, v) = d/dt ∇ₓf(t v, params_obj) at
    t = 0 (a forward derivative of the gradient at 0: exact for a quadratic, and symmetric)."""
    gradient = jax.grad(fun)

    def matvec(params_obj, v):
        zeros = tree.zeros_like(v)
        return jax.jvp(lambda x: gradient(x, params_obj), (zeros,), (v,))[1]

    return matvec


def check_fun_value(owner: str, fun: Callable, params_obj: PyTree, x_like: PyTree) -> None:
    """That fun(x, params_obj) is a real scalar, on shapes only (nothing is computed).

    Raises:
      TypeError: the call fails with a TypeError, or its value is not a real scalar.
    """
    try:
        value = jax.eval_shape(fun, x_like, params_obj)
    except TypeError as error:
        raise TypeError(f"{owner}: fun(params, params_obj) failed: {error}") from None
    if not (
        isinstance(value, jax.ShapeDtypeStruct)
        and value.shape == ()
        and jnp.issubdtype(value.dtype, jnp.floating)
    ):
        raise TypeError(f"{owner}: fun(params, params_obj) must return a real scalar, got {value}")


def fun_linear_term(owner: str, fun: Callable, params_obj: PyTree, x_like: PyTree) -> PyTree:
    """c = ∇ₓf(0, params_obj) for f = ``fun``, shaped like ``x_like``.

    Raises:
      TypeError: f(x, params_obj) is not a real scalar (:func:`check_fun_value`).
    """
    check_fun_value(owner, fun, params_obj, x_like)
    return jax.grad(fun)(tree.zeros_like(x_like), params_obj)


def quadratic_parts(
    owner: str, fun: Callable | None, params_obj: Any, x_like: PyTree
) -> tuple[Any, PyTree]:
    """(Q's parameters, c) of ``params_obj``: the pair itself, or with ``fun``
    (params_obj, ∇ₓfun(0, params_obj)), Q then applied by :func:`fun_matvec`."""
    if fun is None:
        return params_obj
    return params_obj, fun_linear_term(owner, fun, params_obj, x_like)


def qp_objective(matvec_Q: Callable | None = None, fun: Callable | None = None) -> Callable:
    """The objective f(x, params_obj) of the QP solvers: ``fun`` itself when given, else
    ½xᵀQx + cᵀx with params_obj = (Q, c) (Q x = ``Q @ x`` or ``matvec_Q(Q, x)``, 0 for Q None)."""
    if fun is not None:
        return fun

    def quadratic(x, params_obj):
        Q, c = params_obj
        return 0.5 * tree.vdot(x, apply_operator(matvec_Q, Q, x)) + tree.vdot(c, x)

    return quadratic


def qp_kkt(
    matvec_Q: Callable | None = None,
    matvec_A: Callable | None = None,
    matvec_G: Callable | None = None,
    fun: Callable | None = None,
) -> Callable:
    """The KKT map of min f(x) s.t. Ax = b, Gx ≤ h, in the argument order of ``run``.

    Returns F(z, params_obj, params_eq=None, params_ineq=None), z = (x, ν, λ), equal to
    :func:`implicitdiff.optimality.kkt` with f = :func:`qp_objective` (½xᵀQx + cᵀx with
    params_obj = (Q, c), or ``fun(x, params_obj)``: stationarity ∇ₓf(x, params_obj) + Aᵀν + Gᵀλ),
    H(x, (A, b)) = Ax − b and G(x, (G, h)) = Gx − h; a None ``params_eq`` (``params_ineq``) drops
    the equalities (inequalities), whose part of z and of F is then None. Products with Q, A, G
    are ``M @ x``, or ``matvec_M(M, x)`` when a matvec is given (then M is any pytree of
    parameters). The residuals come as a :class:`KKTSolution` when z is one.
    """
    objective = qp_objective(matvec_Q, fun)

    def eq_fun(x, params_eq):
        A, b = params_eq
        return tree.sub(apply_operator(matvec_A, A, x), b)

    def ineq_fun(x, params_ineq):
        G, h = params_ineq
        return tree.sub(apply_operator(matvec_G, G, x), h)

    variants = {
        (has_eq, has_ineq): optimality.kkt(
            objective, eq_fun if has_eq else None, ineq_fun if has_ineq else None
        )
        for has_eq in (False, True)
        for has_ineq in (False, True)
    }

    def qp_kkt_optimality(z, params_obj, params_eq=None, params_ineq=None):
        kkt = variants[(params_eq is not None, params_ineq is not None)]
        residuals = kkt(tuple(z), params_obj, params_eq, params_ineq)
        # Shaped like z: a KKTSolution gives a KKTSolution, as the engine requires.
        return type(z)(*residuals) if isinstance(z, KKTSolution) else residuals

    return qp_kkt_optimality


def clip_to_box(x: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """The projection onto the box [lower, upper] (as ``projections.box``), with derivative 0 in
    x where lower = upper (min(max(x, l), u) splits a tie x = l = u between its arguments: ¼ in
    x, which made BoxOSQP's derivative wrong on an equality row whose multiplier rounds to 0)."""
    x = jnp.where(lower == upper, jax.lax.stop_gradient(x), x)
    return jnp.minimum(jnp.maximum(x, lower), upper)


def dtype_of(*values: Any) -> Any:
    """The dtype a QP solves in: that of its data, float32 for half-precision data (bfloat16,
    float16), which LAPACK's factorizations do not take and whose rounding is above the QPs'
    tolerances."""
    dtype = tree.dtype([v for v in values if v is not None])
    return jnp.dtype(jnp.float32) if _checks.is_half(dtype) else dtype


def fun_primal_start(
    owner: str, fun: Callable, x0: Any, layout: str, params_obj: PyTree
) -> tuple[jax.Array, int, Any]:
    """With ``fun`` (OSQP, BoxOSQP): the start's primal x as a 1-D array, its size and dtype,
    after checking that x is given and that fun(x, params_obj) is a real scalar.

    Raises:
      ValueError: x0 None, or not 1-D.
      TypeError: fun's value is not a real scalar (see :func:`check_fun_value`).
    """
    check_fun_start(owner, fun, x0, layout)
    x0 = jnp.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"{owner}: with fun, x must be a 1-D array, got shape {x0.shape}")
    check_fun_value(owner, fun, params_obj, x0)
    return x0, x0.shape[0], dtype_of(x0)


def check_osqp_jaxopt_options(owner: str, solver: Any) -> None:
    """JAXopt's BoxOSQP options that OSQP and BoxOSQP accept without effect, checked as JAXopt
    types them: ``check_primal_dual_infeasability`` ("auto", True, False), ``eq_qp_solve``
    ("cg", "cg+jacobi", "lu"), ``termination_check_frequency`` (a positive int).

    Raises:
      ValueError: a value outside these.
    """
    if solver.check_primal_dual_infeasability not in ("auto", True, False):
        raise ValueError(
            f"{owner}: check_primal_dual_infeasability must be 'auto', True or False, got "
            f"{solver.check_primal_dual_infeasability!r}"
        )
    if solver.eq_qp_solve not in ("cg", "cg+jacobi", "lu"):
        raise ValueError(
            f"{owner}: eq_qp_solve must be 'cg', 'cg+jacobi' or 'lu', got {solver.eq_qp_solve!r}"
        )
    frequency = solver.termination_check_frequency
    _checks.check_positive_int(frequency, "termination_check_frequency", owner)
