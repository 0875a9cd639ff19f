"""Line searches as objects, with JAXopt's API: BacktrackingLineSearch, ZoomLineSearch and
HagerZhangLineSearch.

Each is built once from the objective ``fun(params, *args, **kwargs)`` and its options, and
``run(init_stepsize, params, value=None, grad=None, descent_direction=None, *args, **kwargs)``
returns ``(stepsize, state)``: a step η along the descent direction d (−∇f if None) from params
x, and a :class:`LineSearchState` holding x + η d, f and ∇f there, and whether η satisfies the
search's condition (``done``) or not (``failed``). ``value`` and ``grad`` are f(x) and ∇f(x)
(computed when None). The arguments of ``fun`` follow, positionally and by keyword; JAXopt's
``fun_args=[...]`` and ``fun_kwargs={...}`` are accepted too (so those two names cannot be
keyword arguments of ``fun``).

The same objects (or their names) are the ``linesearch=`` option of :class:`LBFGS`,
:class:`BFGS`, :class:`NonlinearCG` and :class:`LBFGSB`; all run the kernels of
:mod:`implicitdiff._linesearch`. A line search is not differentiated: η and the state are
constants for JAX's autodiff (η is piecewise constant in the data; differentiate
``fun(state.params, ...)`` for the derivatives of the new point's value), except
``state.params = x + η d``, which is differentiable in x and d with η held constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from implicitdiff import _checks, _hager_zhang, _linesearch, _summary, tree
from implicitdiff._typing import PyTree
from implicitdiff.solvers import _run_options
from implicitdiff.solvers._jaxopt_options import refuse_jaxopt_options

__all__ = [
    "BacktrackingLineSearch",
    "HagerZhangLineSearch",
    "LineSearch",
    "LineSearchState",
    "ZoomLineSearch",
]


_ZOOM_FIXED = (
    "the zoom's trial steps are the safeguarded minimizer of a cubic through both ends "
    "(bisection where it has none), not JAXopt's cubic/quadratic tolerances"
)


class LineSearchState(NamedTuple):
    """What a line search's ``run`` returns beside the step η.

    Attributes:
      params: x + η d.
      value: f(params).
      grad: ∇f(params).
      aux: ``fun``'s auxiliary output at params with ``has_aux=True``, else None.
      done: whether η satisfies the search's condition.
      failed: whether it does not (η is then the search's fallback).
      iter_num: the number of trials.
      num_fun_eval: the number of evaluations of f.
      num_grad_eval: the number of evaluations of ∇f.
    """

    params: PyTree
    value: jax.Array
    grad: PyTree
    aux: Any
    done: jax.Array
    failed: jax.Array
    iter_num: jax.Array
    num_fun_eval: jax.Array
    num_grad_eval: jax.Array

    __repr__ = _summary.namedtuple_repr


def _check_number(owner, name, value, low, high, *, low_open=True, high_open=True):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(
            f"{owner}: {name} must be a number in {lo}{low}, {high}{hi}, got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class LineSearch:
    """The base of the line searches: ``run``, and ``search`` (what solvers call).

    A subclass names its kernel in ``_kernel``, its fields being the kernel's options (or
    overrides ``search``); an instance (of any subclass) is accepted as the ``linesearch=`` option
    of the solvers that have one.
    """

    fun: Callable

    # JAXopt's options that no line search here takes, with what to do instead.
    _jaxopt_refused: ClassVar[dict[str, str]] = {
        "unroll": (
            "a line search is not differentiated here: the unrolled derivative of a solver "
            "(implicit_diff=False) holds each step it found constant"
        ),
        "c3": _ZOOM_FIXED,
        "rel_tol_cubic": _ZOOM_FIXED,
        "rel_tol_quad": _ZOOM_FIXED,
        "interval_threshold": _ZOOM_FIXED,
    }

    def __new__(cls, *args, **kwargs):
        refuse_jaxopt_options(cls, kwargs)
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs):
        # As the solvers': the numeric options' types are checked before the range checks.
        super().__init_subclass__(**kwargs)
        post_init = cls.__dict__.get("__post_init__")
        if post_init is not None:
            cls.__post_init__ = _checks.checking_numeric_fields(post_init)

    def _check_common(self) -> None:
        owner = type(self).__name__
        if not callable(self.fun):
            raise TypeError(f"{owner}: fun must be callable, got {self.fun!r}")
        if not (self.value_and_grad in (True, False) or callable(self.value_and_grad)):
            raise TypeError(
                f"{owner}: value_and_grad must be a bool or a callable, got {self.value_and_grad!r}"
            )
        if not isinstance(self.has_aux, bool):
            raise TypeError(f"{owner}: has_aux must be a bool, got {self.has_aux!r}")
        _checks.check_positive_int(self.maxiter, "maxiter", owner)
        _check_number(owner, "c1", self.c1, 0.0, 1.0)
        _check_number(owner, "c2", self.c2, self.c1, 1.0)
        if self.max_stepsize is not None:
            _check_number(owner, "max_stepsize", self.max_stepsize, 0.0, float("inf"))
        if not (self.jit == "auto" or isinstance(self.jit, bool)):
            raise TypeError(f"{owner}: jit must be 'auto' or a bool, got {self.jit!r}")
        _run_options.check_verbose(owner, self.verbose)
        tol = getattr(self, "tol", 0.0)
        if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol >= 0):
            raise ValueError(f"{owner}: tol must be a number ≥ 0, got {tol!r}")

    def value_and_grad_fun(self, *args, **kwargs) -> Callable[[PyTree], tuple[Any, PyTree]]:
        """x ↦ (f(x), ∇f(x)) for these arguments of ``fun`` (auxiliary output dropped)."""
        if self.value_and_grad is True:
            fun = self.fun
        elif callable(self.value_and_grad):
            fun = self.value_and_grad
        else:
            fun = jax.value_and_grad(self.fun, has_aux=self.has_aux)

        def value_and_grad(x):
            value, grad = fun(x, *args, **kwargs)
            return (value[0] if self.has_aux else value), grad

        return value_and_grad

    def search(self, value_and_grad, params, value, grad, direction, stepsize):
        """The search on a given x ↦ (f(x), ∇f(x)).

        What the solvers call (``run`` is the user's form). Each line search (backtracking, zoom,
        Hager–Zhang) runs its kernel of :mod:`implicitdiff._linesearch` or
        :mod:`implicitdiff._hager_zhang`, named by ``_kernel``.

        Args:
          value_and_grad: x ↦ (f(x), ∇f(x)), f a real scalar.
          params: the current point x, a pytree.
          value: f(x).
          grad: ∇f(x), a pytree like x.
          direction: d, a pytree like x with ⟨∇f(x), d⟩ < 0.
          stepsize: the first trial η₀ > 0 (capped by ``max_stepsize``).

        Returns:
          An :class:`implicitdiff._linesearch.Result`: the step η, f and ∇f at x + ηd, ``done`` /
            ``failed`` and the counts of trials and evaluations (every entry cut from the graph).
        """
        options = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("fun", "value_and_grad", "has_aux", *self._not_kernel_options)
        }
        if not self.verbose:
            return self._kernel()(
                value_and_grad, params, value, grad, direction, stepsize, **options
            )
        name = "INFO: implicitdiff." + type(self).__name__ + ": "

        def reported(x):
            new_value, new_grad = value_and_grad(x)
            jax.debug.print(
                name + "trial value {value} slope {slope}",
                value=new_value,
                slope=jnp.real(tree.vdot(new_grad, direction)),
                ordered=True,
            )
            return new_value, new_grad

        result = self._kernel()(reported, params, value, grad, direction, stepsize, **options)
        jax.debug.print(
            name + "stepsize {stepsize} trials {trials} failed {failed}",
            stepsize=result.stepsize,
            trials=result.iter_num,
            failed=result.failed,
            ordered=True,
        )
        return result

    # Fields that are not options of the kernel (JAXopt's, accepted without effect on the step;
    # verbose, which search applies around the kernel).
    _not_kernel_options: ClassVar[tuple[str, ...]] = ("jit", "verbose")

    def _kernel(self) -> Callable:
        """The search's kernel ``kernel(value_and_grad, params, value, grad, direction, stepsize,
        **options)``; the options are this object's fields but ``fun``, ``value_and_grad`` and
        ``has_aux``."""
        raise NotImplementedError(f"{type(self).__name__} must define search or _kernel")

    def run(
        self,
        init_stepsize: Any,
        params: PyTree,
        value: Any = None,
        grad: PyTree = None,
        descent_direction: PyTree = None,
        *args,
        fun_args: Any = None,
        fun_kwargs: dict | None = None,
        **kwargs,
    ) -> tuple[jax.Array, LineSearchState]:
        """The step size from ``params`` along ``descent_direction``; returns (η, state).

        Args:
          init_stepsize: the first trial η₀ (> 0; capped by ``max_stepsize``).
          params: the current point x, a pytree of arrays.
          value: f(x); computed (with ∇f(x)) when it or ``grad`` is None.
          grad: ∇f(x), a pytree like x; computed (with f(x)) when it or ``value`` is None.
          descent_direction: d, a pytree like x with ⟨∇f(x), d⟩ < 0; −∇f(x) if None.
          *args: the arguments of ``fun`` after params.
          fun_args: JAXopt's spelling: arguments of ``fun`` placed before ``*args``.
          fun_kwargs: JAXopt's spelling: keyword arguments of ``fun`` (``**kwargs`` win).
          **kwargs: the keyword arguments of ``fun``.

        Returns:
          The pair ``(stepsize, state)``: η, and the :class:`LineSearchState` at x + η d.
        """
        if fun_args is not None:
            args = (*tuple(fun_args), *args)
        if fun_kwargs is not None:
            kwargs = {**dict(fun_kwargs), **kwargs}
        evaluate = self.value_and_grad_fun(*args, **kwargs)
        if value is None or grad is None:
            value, grad = evaluate(params)
            start_evals = 1
        else:
            start_evals = 0
        if descent_direction is None:
            descent_direction = tree.map(lambda g: -jnp.conj(g), grad)
        result = self.search(evaluate, params, value, grad, descent_direction, init_stepsize)
        eta = result.stepsize
        new_params = tree.axpy(eta.astype(tree.dtype(params)), descent_direction, params)
        new_grad = result.grad
        aux = None
        if self.has_aux:
            aux = jax.lax.stop_gradient(self.fun(new_params, *args, **kwargs)[1])
        state = LineSearchState(
            params=new_params,
            value=result.value,
            grad=new_grad,
            aux=aux,
            done=result.done,
            failed=result.failed,
            iter_num=result.iter_num,
            num_fun_eval=result.num_fun_eval + start_evals,
            num_grad_eval=result.num_grad_eval + start_evals,
        )
        return eta, state


@dataclasses.dataclass(frozen=True)
class BacktrackingLineSearch(LineSearch):
    """Backtracking: η ← ``decrease_factor`` · η from min(η₀, ``max_stepsize``) until the
    ``condition`` holds, with φ(η) = f(x + η d), φ'(η) = ⟨∇f(x + η d), d⟩:

    - ``"armijo"``: φ(η) ≤ φ(0) + c1 η φ'(0);
    - ``"wolfe"``: Armijo and φ'(η) ≥ c2 φ'(0);
    - ``"strong-wolfe"`` (default, as in JAXopt): Armijo and |φ'(η)| ≤ c2 |φ'(0)|;
    - ``"goldstein"``: φ(0) + (1 − c1) η φ'(0) ≤ φ(η) ≤ φ(0) + c1 η φ'(0).

    Each inequality holds up to ``tol``, and comparisons of values up to 8 ulps of |φ(0)| (the
    rounding of f). Where c1 η |φ'(0)| is below those 8 ulps, a difference of values is
    rounding, and the tests on values take their gradient forms (exact for a quadratic φ):
    φ'(η) ≤ (2c1 − 1) φ'(0), and φ'(η) ≥ (1 − 2c1) φ'(0) for Goldstein's lower side. At most
    ``maxiter`` trials; when none passes, η is the last one tried and ``state.failed`` is True.
    The Armijo and Goldstein tests evaluate f alone in the loop (and ∇f at the trials of the
    gradient forms), and ∇f once at the accepted step. ``run`` as in the module docstring.

    Attributes:
      fun: f(params, *args, **kwargs), a scalar (``(value, aux)`` with ``has_aux``; ``(value,
        grad)`` with ``value_and_grad=True``).
      value_and_grad: False (default), True, or a callable returning (f, ∇f).
      has_aux: whether ``fun`` returns (value, aux).
      maxiter: the most trials (30).
      tol: slack of the conditions (0).
      jit: JAXopt's option, accepted; no effect (see :class:`ZoomLineSearch`).
      condition: see above.
      c1, c2: the constants of the conditions, 0 < c1 < c2 < 1 (1e-4, 0.9).
      decrease_factor: the factor in (0, 1) of each backtracking step (0.8).
      max_stepsize: the largest step (1.0).
      verbose: print each trial's f(x + ηd) and slope ⟨∇f(x + ηd), d⟩, then the step, the
        number of trials and whether the search failed (``jax.debug.print``; a bool or an int
        as JAXopt's: any nonzero value prints). Default False.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import BacktrackingLineSearch
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> eta, state = BacktrackingLineSearch(fun=f, condition="armijo").run(1.0, jnp.zeros(2))
    """

    value_and_grad: Any = False
    has_aux: bool = False
    maxiter: int = 30
    tol: float = 0.0
    condition: str = "strong-wolfe"
    c1: float = 1e-4
    c2: float = 0.9
    decrease_factor: float = 0.8
    max_stepsize: float = 1.0
    jit: Any = dataclasses.field(default="auto", kw_only=True)  # JAXopt's; no effect here
    verbose: bool | int = dataclasses.field(default=False, kw_only=True)

    def __post_init__(self):
        self._check_common()
        if self.condition not in _linesearch.CONDITIONS:
            raise ValueError(
                f"BacktrackingLineSearch: condition must be one of {_linesearch.CONDITIONS}, "
                f"got {self.condition!r}"
            )
        _check_number("BacktrackingLineSearch", "decrease_factor", self.decrease_factor, 0, 1)

    def _kernel(self):
        return _linesearch.backtracking


@dataclasses.dataclass(frozen=True)
class ZoomLineSearch(LineSearch):
    """A step satisfying the strong Wolfe conditions, by bracketing and cubic interpolation
    (Nocedal & Wright, 2006, Algorithms 3.5 and 3.6):

        φ(η) ≤ φ(0) + c1 η φ'(0)  and  |φ'(η)| ≤ c2 |φ'(0)|.

    Trials from min(η₀, ``max_stepsize``) grow by ``increase_factor`` until an interval holding
    acceptable steps is found, then shrink it by safeguarded cubic interpolation. Near a minimum,
    where values of f differ by rounding only, sufficient decrease is also accepted in its slope
    form φ'(η) ≤ (2 c1 − 1) φ'(0) for values within 100 ulps of φ(0) (Hager & Zhang's
    approximate Wolfe condition, as JAXopt does). At most ``maxiter`` trials, one evaluation of f
    and ∇f each; when none passes, η is the best step satisfying sufficient decrease (possibly 0)
    and ``state.failed`` is True. ``run`` as in the module docstring.

    Attributes:
      fun, value_and_grad, has_aux: as in :class:`BacktrackingLineSearch`.
      c1, c2: 0 < c1 < c2 < 1 (1e-4, 0.9).
      increase_factor: the growth of the trials before a bracket is found (> 1, default 2).
      maxiter: the most trials (30).
      max_stepsize: the largest step (None: no bound).
      tol: a slack on both conditions, φ(η) ≤ φ(0) + c1 η φ'(0) + tol and
        |φ'(η)| ≤ c2 |φ'(0)| + tol (0, as JAXopt's ``tol``).
      jit: JAXopt's option, accepted; no effect (the search is traced into the caller's
        program: call ``run`` inside ``jax.jit`` to compile it).
      verbose: as in :class:`BacktrackingLineSearch`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import ZoomLineSearch
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> eta, state = ZoomLineSearch(fun=f).run(1.0, jnp.zeros(2))  # eta = 0.5, exact
    """

    value_and_grad: Any = False
    has_aux: bool = False
    c1: float = 1e-4
    c2: float = 0.9
    increase_factor: float = 2.0
    maxiter: int = 30
    max_stepsize: float | None = None
    tol: float = dataclasses.field(default=0.0, kw_only=True)
    jit: Any = dataclasses.field(default="auto", kw_only=True)  # JAXopt's; no effect here
    verbose: bool | int = dataclasses.field(default=False, kw_only=True)

    def __post_init__(self):
        self._check_common()
        _check_number("ZoomLineSearch", "increase_factor", self.increase_factor, 1, float("inf"))

    def _kernel(self):
        return _linesearch.zoom


@dataclasses.dataclass(frozen=True)
class HagerZhangLineSearch(LineSearch):
    """A step satisfying the Wolfe or the approximate Wolfe conditions (Hager & Zhang, 2005,
    2006), with ε = ``approximate_wolfe_threshold`` · |φ(0)|:

        φ(η) ≤ φ(0) + c1 η φ'(0)  and  φ'(η) ≥ c2 φ'(0),   or
        φ(η) ≤ φ(0) + ε  and  c2 φ'(0) ≤ φ'(η) ≤ (2 c1 − 1) φ'(0).

    Bracketing by expansion (× ``expansion_factor``) from min(η₀, ``max_stepsize``), then
    secant² steps on φ', with bisection when a secant² step shrinks the bracket by less than
    ``shrinkage_factor`` (see :func:`implicitdiff._hager_zhang.hager_zhang`). As in JAXopt, no
    step is accepted before a bracket is found, so the step lands near the line minimizer (on it
    for a quadratic), at the cost of a few more evaluations than stopping at the first Wolfe
    point. Unlike JAXopt's,
    which always starts at 1, the first trial is ``init_stepsize``. At most ``maxiter`` trials
    (one evaluation of f and ∇f each); when none passes, η is the trial of lowest value with
    sufficient decrease (possibly 0) and ``state.failed`` is True.

    Attributes:
      fun, value_and_grad, has_aux: as in :class:`BacktrackingLineSearch`.
      c1, c2: 0 < c1 < c2 < 1 (0.1, 0.9; c1 < 1/2 for the approximate conditions).
      expansion_factor: > 1 (5.0).
      shrinkage_factor: in (0, 1) (0.66).
      approximate_wolfe_threshold: ε relative to |f(x)| (1e-6).
      maxiter: the most trials (30).
      max_stepsize: the largest step (None: no bound).
      tol: a slack on each inequality of both conditions (0, as JAXopt's ``tol``).
      jit: JAXopt's option, accepted; no effect (see :class:`ZoomLineSearch`).
      verbose: as in :class:`BacktrackingLineSearch`.

    Example:
      >>> import jax.numpy as jnp
      >>> from implicitdiff.solvers import HagerZhangLineSearch
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> eta, state = HagerZhangLineSearch(fun=f).run(1.0, jnp.zeros(2))
    """

    value_and_grad: Any = False
    has_aux: bool = False
    maxiter: int = 30
    c1: float = 0.1
    c2: float = 0.9
    expansion_factor: float = 5.0
    shrinkage_factor: float = 0.66
    approximate_wolfe_threshold: float = 1e-6
    max_stepsize: float | None = None
    tol: float = dataclasses.field(default=0.0, kw_only=True)
    jit: Any = dataclasses.field(default="auto", kw_only=True)  # JAXopt's; no effect here
    verbose: bool | int = dataclasses.field(default=False, kw_only=True)

    def __post_init__(self):
        self._check_common()
        owner = "HagerZhangLineSearch"
        _check_number(owner, "expansion_factor", self.expansion_factor, 1, float("inf"))
        _check_number(owner, "shrinkage_factor", self.shrinkage_factor, 0, 1)
        _check_number(
            owner,
            "approximate_wolfe_threshold",
            self.approximate_wolfe_threshold,
            0,
            float("inf"),
            low_open=False,
        )

    def _kernel(self):
        return _hager_zhang.hager_zhang
