"""Argument checks shared by the catalog and the solvers (internal).

The rule for a value that defines a problem (a radius, a scale, bounds, a regularization λ):

- concrete (a Python number, a NumPy array, a JAX array outside any transformation): it is
  checked when the function is called, and a violation raises ``ValueError`` naming it;
- traced (inside ``jax.jit``, ``jax.vmap``, a derivative, or a solver's compiled ``run``): its
  value is unknown while Python runs, so nothing can be raised. The result is then NaN where the
  value is invalid (:func:`nan_if_negative`, :func:`nan_unless`): a solver iterating on it
  stops with a non-finite iterate and ``state.converged = False``, and a derivative through it is
  NaN. Concrete values pay nothing for this (no extra operation is traced).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implicitdiff._args import is_traced
from implicitdiff._typing import PyTree

# The default λ of a prox and the default size (scale, radius) of a projection's set, one object:
# a ``hyperparams`` that ``is`` it was not given, so that JAXopt's keyword for the same value
# (``l1reg=`` / ``l2reg=``, ``value=`` / ``max_value=`` / ``unit=``) can be told apart from a
# positional one.
ONE = 1.0


def jaxopt_keyword(function: str, hyperparams: Any, name: str, value: Any) -> Any:
    """``hyperparams``, or ``value`` given by JAXopt's keyword ``name`` for it (None: not given).

    Raises:
      TypeError: both given, naming them.
    """
    if value is None:
        return hyperparams
    if hyperparams is not ONE:
        raise TypeError(
            f"{function}: hyperparams and {name}= (JAXopt's name for it) are both given; "
            "pass one of them"
        )
    return value


def real_float_array(x: Any, owner: str = "", name: str = "x") -> jax.Array:
    """x as a JAX array of a real floating dtype: integers and booleans become the default
    float (the losses' inputs: scores, predictions, labels); complex is refused, naming
    ``owner`` and ``name`` (its cast kept the real part, with only a DeprecationWarning)."""
    refuse_complex(x, owner, name)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def float_leaves(value: Any) -> Any:
    """``value`` (an array or a pytree) with its integer and boolean leaves as JAX arrays of the
    default float, the others unchanged: the data of a problem whose answer is real even when
    the data are whole numbers (a right-hand side, a group's entries); JAX's own functions
    promote them so, and an iteration carried in the integer dtype fails or truncates."""

    def up(leaf):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            return leaf
        return jnp.asarray(leaf, jnp.result_type(float))

    return jax.tree_util.tree_map(up, value)


def is_half(dtype: Any) -> bool:
    """Whether ``dtype`` is a half precision (bfloat16, float16: real floating, under 4 bytes)."""
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize < 4


def half_to_float32(value: Any) -> Any:
    """``value`` (an array or a pytree) with its half-precision leaves in float32, the others
    unchanged: for a LAPACK routine (a solve, a factorization, an SVD or eigendecomposition),
    which has no half-precision form (JAX raises "Unsupported dtype bfloat16"), or an iteration
    whose tolerance is below half-precision rounding; cast the result back if needed."""

    def up(leaf):
        dtype = getattr(leaf, "dtype", None)
        return leaf.astype(jnp.float32) if dtype is not None and is_half(dtype) else leaf

    return jax.tree_util.tree_map(up, value)


def for_lapack(a: jax.Array) -> jax.Array:
    """``a`` with its ±∞ entries replaced by NaN and its subnormal entries by 0, for an SVD.

    On the CPU, JAX's SVD with singular vectors (``jnp.linalg.svd``, and ``lstsq`` and ``pinv``
    through it) never returns on a small matrix that holds ±∞ (jax 0.10: a 5 × 3 or a 4 × 4
    matrix with one entry ∞ ran for minutes); with NaN it returns NaN at once. The result is
    NaN either way, as it would be for such a matrix; finite entries and their derivatives are
    unchanged. (The NaN is made only where there is an ∞, as ∞ · 0: no NaN operation for
    ``jax.debug_nans`` to report on a finite matrix.) A matrix of subnormal entries (1e-308)
    gave an all-NaN SVD; XLA's CPU operations read subnormals as 0 anyway, and so does the SVD
    now.
    """
    tiny = jnp.finfo(jnp.result_type(a)).tiny
    a = jnp.where(jnp.abs(a) < tiny, jnp.zeros_like(a), a)
    return jnp.where(jnp.isinf(a), a * 0, a)


def nan_unless(valid: Any, leaf: Any) -> jax.Array:
    """``leaf`` where ``valid``, NaN elsewhere (in the leaf's floating dtype).

    The NaN is made only where it is returned, as 0/0: a NaN constant that the select then drops
    is still an operation producing NaN, which ``jax.debug_nans`` reports as the error in an
    op-by-op run (``jax.disable_jit``, or the re-run by which debug_nans locates a NaN output):
    every flagged result would be blamed on this line, valid or not.
    """
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        leaf = leaf.astype(jnp.result_type(float))
    one_or_zero = jnp.asarray(valid, leaf.dtype)
    return jnp.where(valid, leaf, one_or_zero / one_or_zero)


@jax.custom_jvp
def poison_unless(valid: jax.Array, leaf: jax.Array, inputs: Any) -> jax.Array:
    """``leaf`` where ``valid``; elsewhere NaN, with NaN derivatives with respect to ``leaf``
    and to ``inputs`` (a pytree of floating arrays), even where ``leaf``'s own tangent is zero
    (a bare ``where`` gives the derivative of its NaN branch, a constant: 0)."""
    del inputs
    return nan_unless(valid, leaf)


@poison_unless.defjvp
def _poison_unless_jvp(primals, tangents):
    valid, leaf, inputs = primals
    _, leaf_dot, inputs_dot = tangents
    # Linear in the tangents (reverse mode transposes it). The NaN goes straight to the inputs;
    # what flows back into ``leaf`` (an implicit derivative's linear solve) stays finite: 0.
    zeros = nan_unless(valid, jnp.zeros((), leaf.dtype))
    floating = [
        t
        for t in jax.tree_util.tree_leaves(inputs_dot)
        if jnp.issubdtype(jnp.result_type(t), jnp.inexact)
    ]
    spill = sum((jnp.real(jnp.sum(t)) for t in floating), 0.0)
    return poison_unless(valid, leaf, inputs), jnp.where(valid, leaf_dot, 0.0) + zeros * spill


def nan_unless_tree(valid: Any, value: PyTree, inputs: Any = None) -> PyTree:
    """``value`` with its floating leaves NaN unless ``valid``, and their derivatives NaN there
    too (dtypes kept; other leaves as given). A product with 1 or NaN (:func:`nan_unless`), not a
    select: a select's derivative in the dropped branch is 0, a silent zero gradient through an
    unrolled run that met NaN. With ``inputs`` (floating arrays) the derivative in them is NaN
    there even where a leaf's own tangent is a symbolic zero (:func:`poison_unless`)."""

    def flag(leaf):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            return leaf
        if inputs is not None:
            return poison_unless(valid, leaf, inputs)
        return leaf * nan_unless(valid, jnp.ones((), dtype))

    return jax.tree_util.tree_map(flag, value)


def nan_if_negative(value: PyTree) -> PyTree:
    """``value`` with its traced leaves made NaN where negative; concrete leaves as given.

    (max(v, 0) would hide the error; NaN makes it visible in the result.)
    """

    def flag(leaf):
        if not is_traced(leaf):
            return leaf
        return nan_unless(leaf >= 0, leaf)

    return jax.tree_util.tree_map(flag, value)


def check_init_params(params: PyTree, owner: str, name: str = "init_params") -> None:
    """Raise if ``params`` has an integer or boolean leaf (TypeError), or no entries (ValueError).

    Solvers iterate in floating point, in the dtype of ``init_params``: an integer start would
    either fail deep inside (``jax.grad`` refuses integers) or silently round every iterate. The
    fix is the user's choice of precision, so no dtype is guessed: ``jnp.asarray(x, float)``.
    A problem over ℝ⁰ (every leaf empty) is almost surely a bug upstream (all features
    filtered out, say): it is refused rather than "solved". No leaves at all (None) is accepted:
    some solvers ignore ``init_params``.
    """
    leaves = jax.tree_util.tree_leaves(params)
    for i, leaf in enumerate(leaves):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{owner}: {name} must have floating-point leaves (the solver iterates in their "
                f"dtype), but leaf {i} has dtype {dtype}; pass e.g. jnp.asarray(x, jnp.float32) "
                "or jnp.zeros(n)"
            )
    if leaves and all(np.size(leaf) == 0 for leaf in leaves):
        shapes = [jnp.shape(leaf) for leaf in leaves]
        raise ValueError(
            f"{owner}: {name} has no entries (leaf shapes {shapes}): the problem has no unknowns"
        )


def check_signature(
    fun: Callable, owner: str, name: str, args: tuple, kwargs: dict, how: str, hint: str = ""
) -> None:
    """Raise TypeError, naming ``name``, if ``fun`` cannot be called with ``args``/``kwargs``.

    ``how`` is the expected call, e.g. ``"fun(params, *args, **kwargs)"``; ``hint`` is appended
    to the message. Callables without a signature (some builtins) are not checked.
    """
    try:
        signature = inspect.signature(fun)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        fun_name = getattr(fun, "__name__", type(fun).__name__)
        raise TypeError(
            f"{owner}: {name} {fun_name}{signature} cannot be called as {how} with the "
            f"{len(args)} positional and {len(kwargs)} keyword argument(s) it receives: {err}."
            + (f" {hint}" if hint else "")
        ) from None


def check_solution_signature(
    fun: Callable, name: str, params: Any, args: tuple, kwargs: dict
) -> None:
    """Raise TypeError, naming ``name``, unless ``fun(params, *args, **kwargs)`` binds (the
    engine's optimality or fixed-point function, called with the solution first)."""
    try:
        signature = inspect.signature(fun)
    except (TypeError, ValueError):  # builtins and some C callables have none: nothing to check
        return
    try:
        signature.bind(params, *args, **kwargs)
    except TypeError as err:
        fun_name = getattr(fun, "__name__", type(fun).__name__)
        passed = ", ".join(["params", *[f"arg{i}" for i in range(len(args))], *kwargs])
        raise TypeError(
            f"{name} {fun_name}{signature} cannot be called as {fun_name}({passed}), the "
            f"arguments the solver receives: {err}. {name} must take the solution first, then the "
            "solver's arguments after init_params, in the same order and with the same keywords."
        ) from None


def check_like(expected: PyTree, got: PyTree, owner: str, what: str, expected_name: str) -> None:
    """Raise TypeError naming ``what`` if ``got`` differs from ``expected`` in structure, leaf
    shapes or leaf dtypes."""
    e_tree, g_tree = jax.tree_util.tree_structure(expected), jax.tree_util.tree_structure(got)
    if e_tree != g_tree:
        raise TypeError(
            f"{owner}: {what} must return a pytree with the structure of {expected_name}: "
            f"expected {e_tree}, got {g_tree}"
        )
    pairs = zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got), strict=True)
    for i, (e, g) in enumerate(pairs):
        e_spec = (jnp.shape(e), jnp.result_type(e))
        g_spec = (jnp.shape(g), jnp.result_type(g))
        if e_spec != g_spec:
            raise TypeError(
                f"{owner}: {what} must return leaves shaped and typed like {expected_name}: "
                f"leaf {i} is {g_spec[0]} {g_spec[1]}, expected {e_spec[0]} {e_spec[1]}"
            )


def shape_mismatch(expected: PyTree, got: PyTree) -> str | None:
    """How ``got`` differs from ``expected`` in pytree structure or leaf shapes (None if it
    does not; dtypes are not compared)."""
    e_tree, g_tree = jax.tree_util.tree_structure(expected), jax.tree_util.tree_structure(got)
    if e_tree != g_tree:
        return f"structure {g_tree}, expected {e_tree}"
    leaves = zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got), strict=True)
    for i, (e, g) in enumerate(leaves):
        if jnp.shape(e) != jnp.shape(g):
            return f"leaf {i} of shape {jnp.shape(g)}, expected {jnp.shape(e)}"
    return None


def output_like_input(operator: Callable, owner: str, name: str) -> Callable:
    """``operator(x, *rest)`` with its output checked against x by :func:`shape_mismatch`, else
    a TypeError naming ``name`` (a user's prox or projection returning a tuple or another shape
    failed inside JAX, "sub got incompatible shapes"). Static shapes: free under ``jit``; dtypes
    may differ (the solvers cast)."""

    def checked(x, *rest, **kwargs):
        out = operator(x, *rest, **kwargs)
        mismatch = shape_mismatch(x, out)
        if mismatch is not None:
            raise TypeError(
                f"{owner}: {name} must return a pytree shaped like its input x: got {mismatch}"
            )
        return out

    return checked


def concrete_leaves(value: Any) -> list[np.ndarray] | None:
    """The leaves of ``value`` as NumPy arrays, or None if any of them is traced."""
    if is_traced(value):
        return None
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(value)]


def concrete_leaf_pairs(lower: Any, upper: Any) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The leaves of ``lower`` and ``upper`` as NumPy arrays, paired in order (a single leaf on
    one side pairs with every leaf of the other), or None if either side is traced."""
    lo, up = concrete_leaves(lower), concrete_leaves(upper)
    if lo is None or up is None:
        return None
    if len(lo) == 1:
        lo = lo * len(up)
    if len(up) == 1:
        up = up * len(lo)
    return list(zip(lo, up, strict=False))


def check_bounds(owner: str, lower: Any, upper: Any, name: str = "bounds") -> None:
    """Raise ValueError naming ``name`` if concrete bounds have lower > upper in some entry.

    Each bound is a scalar, an array broadcasting to the parameters, or a pytree like them;
    ±inf are allowed (a free side), NaN is not. Traced bounds are not checked here (the solver
    then ends with ``converged=False``: see the module docstring).
    """
    pairs = concrete_leaf_pairs(lower, upper)
    if pairs is None:
        return
    for a, b in pairs:
        if np.any(np.isnan(a)) or np.any(np.isnan(b)):
            raise ValueError(f"{owner}: {name} = (lower, upper) must not hold NaN")
        if np.any(np.greater(a, b)):
            raise ValueError(
                f"{owner}: {name} = (lower, upper) must have lower ≤ upper entry by entry (the "
                f"box is empty otherwise), got lower={lower!r}, upper={upper!r}"
            )


# The annotations of the numeric options of solvers and line searches (their dataclass fields,
# read as the strings that ``from __future__ import annotations`` leaves): kind, None allowed.
_NUMERIC_FIELDS = {
    "int": (int, False),
    "int | None": (int, True),
    "float": (float, False),
    "float | None": (float, True),
}


def unpack_parts(owner: str, argument: str, value: Any, names: tuple[str, ...]) -> tuple:
    """``value`` as the tuple of its ``len(names)`` parts, or a TypeError naming ``argument``
    and the parts expected. An array is refused, whatever its length: it would unpack along its
    first axis."""
    if isinstance(value, (tuple, list)) and len(value) == len(names):
        return tuple(value)
    kind = {2: "a pair", 3: "a triple"}.get(len(names), f"a tuple of {len(names)}")
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        got = f"an array of shape {tuple(value.shape)}"
    elif isinstance(value, (tuple, list)):
        got = f"a {type(value).__name__} of length {len(value)}"
    else:
        got = f"{type(value).__name__} {value!r}"
    raise TypeError(f"{owner}: {argument} must be {kind} ({', '.join(names)}), got {got}")


def is_real_number(value: Any) -> bool:
    """A real number and not a bool: a Python or NumPy int or float (not NaN), or a 0-d array of
    an integer or floating dtype (a JAX array, traced or not: its value is not read)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return not np.isnan(value)
    dtype = getattr(value, "dtype", None)
    return (
        getattr(value, "shape", None) == ()
        and dtype is not None
        and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
    )


def refuse_traced_option(owner: str, name: str, value: Any) -> None:
    """Raise a ValueError naming ``owner`` and the option ``name`` if ``value`` is traced: a
    solver's options are static (they key its compiled run), so it is built from concrete
    values (a traced value was refused as "not a number", which it looked like)."""
    if any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(value)):
        raise ValueError(
            f"{owner}: {name} must be a concrete number, got a traced value: a solver's "
            "options are static (they key its compiled run), so the solver is built outside "
            "jit, grad and vmap; what varies goes to run() as an argument"
        )


def check_numeric_fields(options: Any) -> None:
    """Raise a ValueError naming the option unless each field of the dataclass ``options``
    annotated ``int`` holds a Python int and each annotated ``float`` a real number (either
    also None when annotated ``| None``): a bool, a string, a container, NaN or a misplaced
    None is refused by name here, before any range check compares it."""
    owner = type(options).__name__
    for field in dataclasses.fields(options):
        rule = _NUMERIC_FIELDS.get(field.type)
        if rule is None:
            continue
        kind, optional = rule
        value = getattr(options, field.name)
        if value is None and optional:
            continue
        refuse_traced_option(owner, field.name, value)
        value = as_python_number(value, kind)
        if kind is int:
            ok = is_int(value)
        else:
            ok = is_real_number(value)
        if not ok:
            expected = "an int" if kind is int else "a real number"
            expected += " or None" if optional else ""
            raise ValueError(f"{owner}: {field.name} must be {expected}, got {value!r}")
        object.__setattr__(options, field.name, value)


def as_python_number(value: Any, kind: type) -> Any:
    """A NumPy scalar or a concrete 0-d array (NumPy or JAX) of an integer dtype (for ``int``)
    or a real one (for ``float``) as the Python number it holds, so that the option compares,
    hashes and prints as that number (``maxiter=np.int64(100)`` from ``np.arange``,
    ``tol=np.float32(1e-6)``, ``tol=jnp.asarray(1e-6)``: JAXopt takes them); anything else
    unchanged, for the checks to judge (a traced value stays traced)."""
    if isinstance(value, (bool, np.bool_)) or getattr(value, "shape", None) != ():
        return value
    dtype = getattr(value, "dtype", None)
    if dtype is None or is_traced(value):
        return value
    if jnp.issubdtype(dtype, jnp.integer):
        return int(value)
    if kind is float and jnp.issubdtype(dtype, jnp.floating):
        return float(value)
    return value


def checking_numeric_fields(post_init: Callable) -> Callable:
    """``post_init`` preceded by :func:`check_numeric_fields`: a class's ``__post_init__``
    wrapped by its base's ``__init_subclass__``, so the types are checked before the class's
    own range checks run (the most derived ``__post_init__`` runs first)."""
    if getattr(post_init, "_checks_numeric_fields", False):
        return post_init

    @functools.wraps(post_init)
    def checked(self):
        check_numeric_fields(self)
        post_init(self)

    checked._checks_numeric_fields = True
    return checked


def check_real(value: Any, name: str, owner: str | None = None) -> None:
    """Raise a ValueError naming ``name`` (after ``owner:``, if given) unless ``value`` is a
    real number, a real array or a pytree of them (integers count; a bool, a string, None, a
    complex or non-numeric array do not), traced or not."""

    def real(leaf):
        if isinstance(leaf, (bool, np.bool_, str, bytes)):
            return False
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        return jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)

    leaves = jax.tree_util.tree_leaves(value)
    if not (leaves and all(real(leaf) for leaf in leaves)):
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{name} must be a real number or array, got {value!r}")


def refuse_complex(value: Any, owner: str, name: str = "x", complex_ones: str = "") -> None:
    """Raise a TypeError naming ``owner``, ``name`` and the dtype if a leaf of ``value`` is
    complex: for operators defined over real vectors (an order, a sign, a real set), which
    read a complex input's real part or compared it by its real part, silently.
    ``complex_ones`` names the operators of the same family that do take complex input."""
    leaves = jax.tree_util.tree_leaves(value)
    for i, leaf in enumerate(leaves):
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if jnp.issubdtype(dtype, jnp.complexfloating):
            where = "" if len(leaves) == 1 else f" (leaf {i})"
            also = f"; {complex_ones} take complex input" if complex_ones else ""
            prefix = f"{owner}: " if owner else ""
            raise TypeError(
                f"{prefix}{name} must be real, got dtype {dtype}{where}: it is defined over "
                f"real vectors (apply it to the real pairs (z.real, z.imag) if that is what is "
                f"meant){also}"
            )


def check_non_negative(value: Any, name: str, owner: str | None = None) -> None:
    """Raise a ValueError naming ``name`` (after ``owner:``, if given) unless ``value`` (a
    number, an array or a pytree of them: a λ, a scale, a radius) is real (:func:`check_real`)
    and, where concrete, has no negative or NaN entry; a traced value's entries are not read
    (see the module docstring)."""
    check_real(value, name, owner)
    for leaf in jax.tree_util.tree_leaves(value):
        if is_traced(leaf):
            continue
        arr = np.asarray(leaf)
        if np.any(arr < 0) or np.any(np.isnan(arr)):
            shown = arr.item() if arr.size == 1 else f"an array with minimum {np.nanmin(arr)}"
            prefix = f"{owner}: " if owner else ""
            raise ValueError(f"{prefix}{name} must be non-negative, got {shown}")


def is_int(value: Any) -> bool:
    """A Python or NumPy integer that is not a bool (True is an int to Python, never a count
    here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_positive_int(value: Any, name: str, owner: str) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a Python int ≥ 1 (a bool is not an
    int here)."""
    if not (is_int(value) and value >= 1):
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


def check_positive_number(value: Any, name: str, owner: str, *, allow_zero: bool) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite Python number > 0
    (≥ 0 with ``allow_zero``); a bool is not a number here."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0) and value < float("inf")
    if not ok:
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
