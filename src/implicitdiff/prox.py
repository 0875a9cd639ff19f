"""Proximal operators, differentiable in their input and in their hyperparameters.

Every operator here has the signature ``prox(x, hyperparams, scaling=1.0)`` and returns

    prox_{s·g}(x) = argmin_y ½‖y − x‖² + s · g(y, hyperparams),    s = scaling,

in closed form. Each is built from ``jax.numpy`` operations, so it is jit- and vmap-friendly and
differentiable in ``x``, ``hyperparams`` and ``scaling`` away from the kinks of the closed form
(exactly at a kink, the derivative is a one-sided or averaged one). They are the building
blocks of proximal-gradient fixed points ``x = prox(x − η ∇f(x), θ, η)`` that
:func:`implicitdiff.custom_fixed_point` differentiates.

Catalog (λ ≥ 0 and γ ≥ 0 are hyperparameters):

- :func:`none`: g = 0, the identity.
- :func:`l1`: g = λ‖y‖₁, soft thresholding.
- :func:`non_negative_l1`: g = λ‖y‖₁ + ι(y ≥ 0), one-sided soft thresholding.
- :func:`elastic_net`: g = λ(‖y‖₁ + ½γ‖y‖²).
- :func:`group_lasso`: g = λ‖y‖₂, block soft thresholding (the whole input is one group).
- :func:`ridge`: g = ½λ‖y‖², a shrinkage.
- :func:`non_negative_ridge`: g = ½λ‖y‖² + ι(y ≥ 0).
- :func:`nuclear_norm`: g = λ‖Y‖_* for a matrix Y, singular-value soft thresholding.
- :func:`from_projection`: the prox of an indicator ι_C(y, θ), i.e. a projection onto C(θ).

Inputs are real. The element-wise operators (``l1``, ``non_negative_l1``, ``elastic_net``,
``ridge``, ``non_negative_ridge``) take a pytree ``x`` and a hyperparameter that is either one
scalar (or array broadcasting to every leaf) or a pytree with the structure of ``x`` (one
hyperparameter per leaf). ``group_lasso`` treats a whole pytree as one group with a scalar λ.

A negative λ, γ or scaling raises ``ValueError`` when its value is concrete; under
``jax.jit`` (or while being differentiated, or inside a solver's compiled ``run``) the value is
not known and cannot raise: the output is then NaN, so that a solver using it ends with
``converged = False``.

>>> import jax.numpy as jnp
>>> from implicitdiff import prox
>>> print(prox.l1(jnp.array([3.0, -0.5, -2.0]), 1.0))
[ 2.  0. -1.]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _support, tree
from implicitdiff._projection_common import in_float32_if_half
from implicitdiff._typing import PyTree

ProxFn = Callable[..., PyTree]

__all__ = [
    "Identity",
    "elastic_net",
    "from_projection",
    "group_lasso",
    "l1",
    "non_negative_l1",
    "non_negative_ridge",
    "none",
    "nuclear_norm",
    "ridge",
]

# The operators of this family that take complex input (the others refuse it by name).
_TAKE_COMPLEX = "prox.none, ridge, l1, elastic_net and group_lasso"


# ---------------------------------------------------------------------------------------------
# Argument handling.


# The default λ (``_checks.ONE``, one object): a ``hyperparams`` that ``is`` it was not given,
# so that JAXopt's keyword for it, ``l1reg=`` / ``l2reg=``, can be told apart from a positional λ.
_ONE = _checks.ONE
_jaxopt_keyword = _checks.jaxopt_keyword


def _map_with_hyperparam(fn: Callable, x: PyTree, hyper: Any, name: str, fn_name: str) -> PyTree:
    """``fn(leaf, h)`` for every leaf of x, with h one per leaf or one shared by all leaves."""
    x_def = jax.tree_util.tree_structure(x)
    h_def = jax.tree_util.tree_structure(hyper)
    if h_def == x_def:
        return tree.map(fn, x, hyper)
    if jax.tree_util.treedef_is_leaf(h_def) and hyper is not None:
        return tree.map(lambda leaf: fn(leaf, hyper), x)
    raise ValueError(
        f"{fn_name}: {name} must be a scalar (or an array broadcasting to every leaf of x) or a "
        f"pytree with the structure of x; got structure {h_def} for x of structure {x_def}"
    )


def _soft_threshold(x: jax.Array, threshold: Any) -> jax.Array:
    """sign(x) · max(|x| − threshold, 0), written to give +0 (not −0) inside the threshold, NaN
    for NaN, and the derivative −sign(x) in the threshold also at threshold = 0 (where
    x − clip(x, −t, t) splits a tie of min and max and gave 0 for x < 0). At threshold 0 it is
    the identity, with derivative 1 in x also at x = 0 (no dead zone to be inside of).

    A complex x is shrunk in modulus, keeping its phase: x · max(1 − threshold/|x|, 0), the prox
    of the modulus (x − sign(x) · threshold had the right value but JAX's zero derivative of
    the sign, 0.3 off along a change of phase)."""
    if jnp.iscomplexobj(x):
        modulus = jnp.abs(x)
        inside = (modulus <= threshold) & (threshold > 0)
        safe = jnp.where(inside | (modulus == 0), 1, modulus)
        return jnp.where(inside, 0, x * (1 - threshold / safe))
    inside = (jnp.abs(x) <= threshold) & (threshold > 0)
    return jnp.where(inside, 0, x - jnp.sign(x) * threshold)


# ---------------------------------------------------------------------------------------------
# Element-wise operators.


class Identity:
    """The type of :data:`none`, the prox of g = 0: an explicit tag for "no non-smooth part".

    ``optimality.proximal_gradient`` recognises it by type (``isinstance(prox, Identity)``): the
    fixed point T(x) = x − η∇f(x) then has the symmetric Jacobian I − η∇²f, which lets the
    implicit derivative use CG.
    """

    __name__ = "none"

    def __call__(self, x: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
        """prox(x) = x. ``hyperparams`` and ``scaling`` are ignored."""
        del hyperparams, scaling
        return x

    def __repr__(self) -> str:
        return "implicitdiff.prox.none"


#: The prox of g = 0: the identity, prox(x) = x (``hyperparams`` and ``scaling`` are ignored).
#:
#: >>> import jax.numpy as jnp
#: >>> print(none(jnp.array([1.0, -2.0])))
#: [ 1. -2.]
none = Identity()


def _scaled_leafwise(
    name: str, leaf_prox: Callable, x: PyTree, hyperparams: Any, scaling: Any
) -> PyTree:
    """``leaf_prox(leaf, λ · s)`` on every leaf of x, λ = ``hyperparams`` (one per leaf, see
    ``_map_with_hyperparam``) and s = ``scaling``, both checked non-negative (NaN if traced and
    negative)."""
    _checks.check_non_negative(hyperparams, "hyperparams (λ)", name)
    _checks.check_non_negative(scaling, "scaling", name)
    hyperparams, scaling = _checks.nan_if_negative((hyperparams, scaling))
    return _map_with_hyperparam(
        lambda leaf, lam: leaf_prox(leaf, lam * scaling), x, hyperparams, "hyperparams", name
    )


def l1(x: PyTree, hyperparams: Any = _ONE, scaling: Any = 1.0, *, l1reg: Any = None) -> PyTree:
    """Soft thresholding, the prox of g(y) = λ‖y‖₁ with λ = ``hyperparams``.

    Closed form, entry by entry, with s = ``scaling``::

        prox(x)ᵢ = sign(xᵢ) · max(|xᵢ| − λ s, 0).

    Args:
      x: an array or a pytree of arrays (real, or complex: entries shrunk in modulus,
        keeping their phase).
      hyperparams: λ ≥ 0 (default 1): a scalar, an array broadcasting to every leaf of x,
        or a pytree like x (one λ per leaf).
      scaling: s ≥ 0 (default 1), a scalar.
      l1reg: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      prox(x), a pytree like x.

    >>> import jax.numpy as jnp
    >>> print(l1(jnp.array([3.0, -0.5, -2.0]), 1.0, scaling=0.5))
    [ 2.5  0.  -1.5]
    """
    hyperparams = _jaxopt_keyword("l1", hyperparams, "l1reg", l1reg)
    return _scaled_leafwise("l1", lambda leaf, t: _soft_threshold(leaf, t), x, hyperparams, scaling)


def non_negative_l1(
    x: PyTree, hyperparams: Any = _ONE, scaling: Any = 1.0, *, l1reg: Any = None
) -> PyTree:
    """The prox of g(y) = λ‖y‖₁ + ι(y ≥ 0), with λ = ``hyperparams``.

    Closed form, entry by entry, with s = ``scaling``::

        prox(x)ᵢ = max(xᵢ − λ s, 0).

    Args:
      x: an array or a pytree of arrays (real; complex is refused).
      hyperparams: λ ≥ 0 (default 1): a scalar, an array broadcasting to every leaf of x,
        or a pytree like x (one λ per leaf).
      scaling: s ≥ 0 (default 1), a scalar.
      l1reg: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      prox(x), a pytree like x.

    >>> import jax.numpy as jnp
    >>> print(non_negative_l1(jnp.array([3.0, 0.5, -2.0]), 1.0))
    [2. 0. 0.]
    """
    _checks.refuse_complex(x, "non_negative_l1", complex_ones=_TAKE_COMPLEX)
    hyperparams = _jaxopt_keyword("non_negative_l1", hyperparams, "l1reg", l1reg)
    return _scaled_leafwise(
        "non_negative_l1", lambda leaf, t: jnp.maximum(leaf - t, 0), x, hyperparams, scaling
    )


# The support tags (implicitdiff._support): where each prox's Jacobian is the identity, the
# other rows vanishing. A tie (|yᵢ| = λs) counts as fixed, the one-sided derivative (the
# Jacobian is not defined there; soft thresholding's own derivative is 0 there too).


def _l1_free(y: PyTree, hyperparams: Any = 1.0, scaling: Any = 1.0) -> PyTree:
    """|yᵢ| > λ s, or λ s = 0: where soft thresholding passes its input through."""

    def free(leaf, lam):
        threshold = lam * scaling
        return (jnp.abs(leaf) > threshold) | (threshold == 0)

    return _map_with_hyperparam(free, y, hyperparams, "hyperparams", "l1")


def _non_negative_l1_free(y: PyTree, hyperparams: Any = 1.0, scaling: Any = 1.0) -> PyTree:
    """yᵢ > λ s: where the one-sided soft thresholding passes its input through."""
    return _map_with_hyperparam(
        lambda leaf, lam: leaf > lam * scaling, y, hyperparams, "hyperparams", "non_negative_l1"
    )


_support.declare(l1, _l1_free)
_support.declare(non_negative_l1, _non_negative_l1_free)


def elastic_net(x: PyTree, hyperparams: Any = (1.0, 1.0), scaling: Any = 1.0) -> PyTree:
    """The prox of the elastic net g(y) = λ (‖y‖₁ + ½ γ ‖y‖²), with (λ, γ) = ``hyperparams``.

    Closed form, entry by entry, with s = ``scaling``::

        prox(x)ᵢ = sign(xᵢ) · max(|xᵢ| − λ s, 0) / (1 + λ γ s),

    soft thresholding followed by a shrinkage. γ = 0 gives :func:`l1`.

    Args:
      x: an array or a pytree of arrays (real, or complex: entries shrunk in modulus,
        keeping their phase).
      hyperparams: the pair (λ, γ), both ≥ 0 (default (1, 1)); each a scalar, an array
        broadcasting to every leaf of x, or a pytree like x.
      scaling: s ≥ 0 (default 1), a scalar.

    Returns:
      prox(x), a pytree like x.

    >>> import jax.numpy as jnp
    >>> print(elastic_net(jnp.array([3.0, -0.5, -2.0]), (1.0, 1.0)))
    [ 1.   0.  -0.5]
    """
    lam, gamma = _checks.unpack_parts("elastic_net", "hyperparams", hyperparams, ("λ", "γ"))
    _checks.check_non_negative(lam, "hyperparams[0] (λ)", "elastic_net")
    _checks.check_non_negative(gamma, "hyperparams[1] (γ)", "elastic_net")
    _checks.check_non_negative(scaling, "scaling", "elastic_net")
    lam, gamma, scaling = _checks.nan_if_negative((lam, gamma, scaling))
    x_def = jax.tree_util.tree_structure(x)

    def pair(h: Any) -> PyTree:
        # One value per leaf, so that λ and γ may be given per leaf independently.
        if jax.tree_util.tree_structure(h) == x_def:
            return h
        return _map_with_hyperparam(lambda leaf, v: v, x, h, "hyperparams", "elastic_net")

    def leaf_prox(leaf: jax.Array, lam_i: Any, gamma_i: Any) -> jax.Array:
        threshold = lam_i * scaling
        # γ = 0 is l1 whatever λ (λ = inf: 0, not 0 / (1 + inf · 0))
        shrink = jnp.where(gamma_i == 0, 0, threshold * gamma_i)
        return _soft_threshold(leaf, threshold) / (1 + shrink)

    return tree.map(leaf_prox, x, pair(lam), pair(gamma))


def ridge(x: PyTree, hyperparams: Any = _ONE, scaling: Any = 1.0, *, l2reg: Any = None) -> PyTree:
    """The prox of g(y) = ½ λ ‖y‖², with λ = ``hyperparams``: a shrinkage towards 0.

    Closed form, with s = ``scaling``::

        prox(x) = x / (1 + λ s).

    Args:
      x: an array or a pytree of arrays (real or complex).
      hyperparams: λ ≥ 0 (default 1): a scalar, an array broadcasting to every leaf of x,
        or a pytree like x (one λ per leaf).
      scaling: s ≥ 0 (default 1), a scalar.
      l2reg: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      prox(x), a pytree like x.

    >>> import jax.numpy as jnp
    >>> print(ridge(jnp.array([3.0, -1.0]), 1.0))
    [ 1.5 -0.5]
    """
    hyperparams = _jaxopt_keyword("ridge", hyperparams, "l2reg", l2reg)
    return _scaled_leafwise("ridge", lambda leaf, t: leaf / (1 + t), x, hyperparams, scaling)


def non_negative_ridge(
    x: PyTree, hyperparams: Any = _ONE, scaling: Any = 1.0, *, l2reg: Any = None
) -> PyTree:
    """The prox of g(y) = ½ λ ‖y‖² + ι(y ≥ 0), with λ = ``hyperparams``.

    Closed form, entry by entry, with s = ``scaling``::

        prox(x)ᵢ = max(xᵢ, 0) / (1 + λ s).

    Args:
      x: an array or a pytree of arrays (real; complex is refused).
      hyperparams: λ ≥ 0 (default 1): a scalar, an array broadcasting to every leaf of x,
        or a pytree like x (one λ per leaf).
      scaling: s ≥ 0 (default 1), a scalar.
      l2reg: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      prox(x), a pytree like x.

    >>> import jax.numpy as jnp
    >>> print(non_negative_ridge(jnp.array([3.0, -1.0]), 2.0))
    [1. 0.]
    """
    _checks.refuse_complex(x, "non_negative_ridge", complex_ones=_TAKE_COMPLEX)
    hyperparams = _jaxopt_keyword("non_negative_ridge", hyperparams, "l2reg", l2reg)
    return _scaled_leafwise(
        "non_negative_ridge",
        lambda leaf, t: jnp.maximum(leaf, 0) / (1 + t),
        x,
        hyperparams,
        scaling,
    )


# ---------------------------------------------------------------------------------------------
# Group lasso.


def group_lasso(
    x: PyTree, hyperparams: Any = _ONE, scaling: Any = 1.0, *, l2reg: Any = None
) -> PyTree:
    """Block soft thresholding, the prox of g(y) = λ‖y‖₂ with λ = ``hyperparams`` (a scalar).

    The whole input (every leaf of a pytree together) is one group. Closed form, with
    s = ``scaling``::

        prox(x) = max(1 − λ s / ‖x‖₂, 0) · x        (and 0 at x = 0).

    The derivative is finite everywhere, also at x = 0 (where it is 0 for λ s > 0). For several
    groups, apply it to each, e.g. ``jax.vmap(group_lasso, in_axes=(0, None))`` over equal-sized
    groups stacked along axis 0.

    Args:
      x: an array or a pytree of arrays (real or complex), the group.
      hyperparams: λ ≥ 0 (default 1), a scalar.
      scaling: s ≥ 0 (default 1), a scalar.
      l2reg: JAXopt's keyword name for ``hyperparams`` (give one of the two).

    Returns:
      prox(x), a pytree like x.

    >>> import jax.numpy as jnp
    >>> print(group_lasso(jnp.array([3.0, 4.0]), 2.5))
    [1.5 2. ]
    """
    hyperparams = _jaxopt_keyword("group_lasso", hyperparams, "l2reg", l2reg)
    _checks.check_non_negative(hyperparams, "hyperparams (λ)", "group_lasso")
    _checks.check_non_negative(scaling, "scaling", "group_lasso")
    hyperparams, scaling = _checks.nan_if_negative((hyperparams, scaling))
    if jnp.ndim(hyperparams) != 0:
        raise ValueError(
            f"group_lasso: hyperparams (λ) must be a scalar, got shape {jnp.shape(hyperparams)}"
        )
    threshold = hyperparams * scaling
    # Integer entries: the result is real (scaling them in their dtype truncated it).
    x = _checks.float_leaves(x)
    # ‖x‖ = m ‖x/m‖ with m = ‖x‖∞ held constant: no overflow or underflow of ‖x‖² (float32
    # entries of 1e±30); the derivative is the same.
    m = jax.lax.stop_gradient(tree.norm(x, jnp.inf))
    unit = jnp.where((m > 0) & jnp.isfinite(m), m, jnp.ones_like(m))
    # An entry at ±∞ (and a finite λ s): the limit, factor 1 (x itself). The norm is then taken
    # of zeros, so that its derivative, which the select drops, is not ∞/∞ = NaN either.
    infinite = jnp.isinf(m) & jnp.isfinite(threshold)
    scaled = tree.map(
        lambda leaf: jnp.where(infinite, 0, leaf / unit.astype(leaf.dtype)).astype(leaf.dtype), x
    )
    squared_norm = tree.vdot(scaled, scaled)
    positive = squared_norm > 0
    # sqrt has an infinite derivative at 0: take it of 1 there, a branch jnp.where then discards.
    safe_norm = unit * jnp.sqrt(jnp.where(positive, squared_norm, 1))
    norm = jnp.where(positive, safe_norm, 0)
    # (a NaN threshold, from a traced negative λ or scaling, gives NaN rather than 0)
    shrink = norm >= threshold
    # (the branch not taken sees threshold 0: an infinite λ would make its derivative NaN)
    factor = jnp.where(
        shrink,
        1 - jnp.where(shrink, threshold, 0) / safe_norm,
        _checks.nan_unless(threshold >= 0, jnp.zeros((), jnp.result_type(safe_norm))),
    )
    return tree.scale(jnp.where(infinite, 1, factor), x)


# ---------------------------------------------------------------------------------------------
# Projections.


def _binds_one_argument(function: Callable) -> bool:
    """Whether ``function(x)`` binds (True for a callable without a signature)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to read
        return True
    try:
        signature.bind(None)
    except TypeError:
        return False
    return True


def from_projection(projection: Callable[[PyTree, Any], PyTree]) -> ProxFn:
    """The prox of the indicator of a set C(θ), given the projection onto it.

    For g(y, θ) = ι_{C(θ)}(y) (0 on C(θ), +∞ outside), s · g = g for every s > 0, so
    prox_{s·g}(x) = argmin_{y ∈ C(θ)} ‖y − x‖ = projection(x, θ) whatever the scaling. The
    returned function has the prox signature ``prox(x, hyperparams=None, scaling=1.0)``,
    calls ``projection(x, hyperparams)`` (``projection(x)`` when hyperparams is None and the
    projection can be called with x alone, so that its default applies, e.g. the unit simplex;
    ``projection(x, None)`` otherwise, as JAXopt) and ignores ``scaling``.

    Args:
      projection: a function ``projection(x, hyperparams) -> p``.

    Returns:
      the prox ``prox(x, hyperparams=None, scaling=1.0)``.

    >>> import jax.numpy as jnp
    >>> box = from_projection(lambda x, bounds: jnp.clip(x, bounds[0], bounds[1]))
    >>> print(box(jnp.array([-2.0, 0.5, 3.0]), (0.0, 1.0), scaling=10.0))
    [0.  0.5 1. ]
    """
    if not callable(projection):
        raise TypeError(f"from_projection: projection must be callable, got {projection!r}")

    # hyperparams None (not given): projection(x), so that the projection's own default
    # applies, when it can be called so; else projection(x, None), as JAXopt calls it (a
    # user's projection(x, hyperparams) that ignores its second argument).
    alone = _binds_one_argument(projection)

    def prox(x: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
        del scaling
        if hyperparams is None and alone:
            return projection(x)
        return projection(x, hyperparams)

    declared = _support.declared(projection)
    if declared is not None:  # the projection's support tag, carried over

        def free(y: PyTree, hyperparams: Any = None, scaling: Any = 1.0) -> PyTree:
            del scaling
            if hyperparams is None and alone:
                return declared.free(y)
            return declared.free(y, hyperparams)

        _support.declare(prox, free)
    name = getattr(projection, "__name__", "projection")
    prox.__name__ = prox.__qualname__ = f"prox_{name}"
    prox.__doc__ = (
        f"The prox of the indicator of the set that ``{name}`` projects onto: "
        f"``{name}(x, hyperparams)``; ``scaling`` is ignored."
    )
    return prox


# ---------------------------------------------------------------------------------------------
# Nuclear norm.


def _singular_value_threshold_primal(x: jax.Array, tau: jax.Array):
    u, s, vh = jnp.linalg.svd(_checks.for_lapack(x), full_matrices=False)
    f = jnp.maximum(s - tau[..., None], 0)
    return u, s, vh, f, (u * f[..., None, :]) @ vh


@jax.custom_jvp
def _singular_value_threshold(x: jax.Array, tau: jax.Array) -> jax.Array:
    """U diag(max(σ − τ, 0)) Vᵀ for the thin SVD x = U diag(σ) Vᵀ."""
    return _singular_value_threshold_primal(x, tau)[-1]


@_singular_value_threshold.defjvp
def _singular_value_threshold_jvp(primals, tangents):
    # The derivative of a spectral function X = U diag(σ) Vᵀ ↦ U diag(f(σ)) Vᵀ, with f(σ) =
    # max(σ − τ, 0), k = min(m, n) and thin factors U (m × k), V (n × k). With A = Uᵀ dX V,
    # Aₛ = (A + Aᵀ)/2 and Aₐ = (A − Aᵀ)/2:
    #
    #   dF = U [D₁ ∘ Aₛ + D₂ ∘ Aₐ − diag(f_τ dτ)] Vᵀ
    #        + (I − UUᵀ) dX V diag(f/σ) Vᵀ + U diag(f/σ) Uᵀ dX (I − VVᵀ),
    #
    # D₁ᵢⱼ = (fᵢ − fⱼ)/(σᵢ − σⱼ) (f′(σᵢ) when σᵢ = σⱼ), D₂ᵢⱼ = (fᵢ + fⱼ)/(σᵢ + σⱼ), f_τ = −1[σ > τ].
    # (One of the last two terms vanishes: U or V is square.) Unlike the generic JVP of the SVD,
    # which divides by σᵢ² − σⱼ² and by σᵢ, every ratio here is bounded, so the derivative is
    # finite with repeated or zero singular values, and exact wherever no σᵢ equals τ.
    x, tau = primals
    dx, dtau = tangents
    u, s, vh, f, out = _singular_value_threshold_primal(x, tau)
    ut = jnp.swapaxes(u, -1, -2)
    v = jnp.swapaxes(vh, -1, -2)
    active = s > tau[..., None]

    s_i, s_j = s[..., :, None], s[..., None, :]
    f_i, f_j = f[..., :, None], f[..., None, :]
    a_i, a_j = active[..., :, None], active[..., None, :]
    both, one = a_i & a_j, a_i ^ a_j
    # f is affine with slope 1 on the active set and 0 off it: D₁ is 1 or 0 unless exactly one of
    # σᵢ, σⱼ is active, and then σᵢ ≠ σⱼ.
    d1 = jnp.where(both, 1.0, jnp.where(one, (f_i - f_j) / jnp.where(one, s_i - s_j, 1), 0.0))
    either = (a_i | a_j) & (s_i + s_j > 0)
    d2 = jnp.where(either, (f_i + f_j) / jnp.where(either, s_i + s_j, 1), 0.0)

    ut_dx = ut @ dx
    a = ut_dx @ v
    a_t = jnp.swapaxes(a, -1, -2)
    core = d1 * (a + a_t) / 2 + d2 * (a - a_t) / 2
    k = s.shape[-1]
    core = core - jnp.eye(k, dtype=core.dtype) * (active * dtau[..., None])[..., None, :]

    ratio = jnp.where(active, f / jnp.where(active, s, 1), 0.0)
    dx_v = dx @ v
    left = dx_v - u @ (ut @ dx_v)  # (I − UUᵀ) dX V
    right = ut_dx - (ut_dx @ v) @ vh  # Uᵀ dX (I − VVᵀ)
    d_out = u @ core @ vh + (left * ratio[..., None, :]) @ vh + u @ (ratio[..., :, None] * right)
    # τ = 0: the identity, dX, also along zero singular values (which the formula above counts
    # as thresholded away), and −U diag(1[σ > 0] dτ) Vᵀ, the right derivative in τ.
    shrink = (u * (active * dtau[..., None])[..., None, :]) @ vh
    identity = (tau == 0)[..., None, None]
    return out, jnp.where(identity, dx - shrink, d_out)


@in_float32_if_half  # an SVD: no half-precision LAPACK
def nuclear_norm(x: jax.Array, hyperparams: Any = 1.0, scaling: Any = 1.0) -> jax.Array:
    """Singular-value soft thresholding, the prox of g(Y) = λ‖Y‖_* (the sum of singular values).

    For a real matrix ``x`` (m × n) with thin SVD x = U diag(σ) Vᵀ, λ = ``hyperparams`` and
    s = ``scaling``::

        prox(x) = U diag(max(σ − λ s, 0)) Vᵀ.

    Leading dimensions of ``x`` are batch dimensions (one matrix each); λ is a scalar or an
    array broadcasting to those batch dimensions. The SVD is thin (``full_matrices=False``) and
    the derivative has its own rule (the closed-form derivative of the spectral function), so it
    is exact wherever no singular value equals λ s and, unlike differentiating through
    ``jnp.linalg.svd``, finite with repeated or zero singular values.

    Args:
      x: a real matrix (m × n), or a stack of them (…, m, n); integer entries become the default
        float.
      hyperparams: λ ≥ 0 (default 1): a scalar or an array broadcasting to the batch dimensions.
      scaling: s ≥ 0 (default 1), a scalar.

    Returns:
      prox(x), shaped like x.

    >>> import jax.numpy as jnp
    >>> print(nuclear_norm(jnp.diag(jnp.array([3.0, 0.5])), 1.0).round(6))
    [[2. 0.]
     [0. 0.]]
    """
    _checks.refuse_complex(x, "nuclear_norm", complex_ones=_TAKE_COMPLEX)
    _checks.check_non_negative(hyperparams, "hyperparams (λ)", "nuclear_norm")
    _checks.check_non_negative(scaling, "scaling", "nuclear_norm")
    hyperparams, scaling = _checks.nan_if_negative((hyperparams, scaling))
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"nuclear_norm: x must be a matrix (ndim >= 2), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    tau = jnp.asarray(hyperparams * scaling, dtype=x.dtype)
    tau = jnp.broadcast_to(tau, x.shape[:-2])
    return _singular_value_threshold(x, tau)
