"""Ready-made objectives of supervised learning, with JAXopt's names and signatures.

Data come as ``data = (X, y)``, X of shape (n, d) (n samples, d features); ℓ is a loss of
:mod:`implicitdiff.losses`; every objective averages over the n samples:

- :data:`least_squares`: (1/2n) ‖XW − y‖² (W a vector or a matrix of several targets).
- :func:`ridge_regression`: least squares + ½λ‖W‖².
- :data:`binary_logreg`: (1/n) Σᵢ ℓ_bin(yᵢ, xᵢᵀw), yᵢ ∈ {0, 1}, ℓ_bin(y, z) = softplus(z) − yz.
- :data:`multiclass_logreg`: (1/n) Σᵢ ℓ_mc(yᵢ, Wᵀxᵢ), yᵢ a class index (W is (d, k)),
  ℓ_mc(y, z) = logsumexp(z) − z_y.
- :func:`multiclass_logreg_with_intercept`: the same with scores Wᵀxᵢ + b.
- :func:`l2_multiclass_logreg`, :func:`l2_multiclass_logreg_with_intercept`: + ½λ‖W‖² (the
  intercept is not penalized).
- :data:`multiclass_linear_svm_dual`: the dual of the multiclass (Crammer–Singer) linear SVM
  with regularization λ, as a function of β (n, k) with Y (n, k) the one-hot labels:

      f(β) = (1/2λ) ‖Xᵀ(Y − β)‖²_F + ⟨β, Y − 1⟩,

  to be minimized over rows of β on the simplex (the primal weights are W = Xᵀ(Y − β)/λ).

The instances :data:`least_squares`, :data:`binary_logreg`, :data:`multiclass_logreg` and
:data:`multiclass_linear_svm_dual` are :class:`CompositeLinearFunction` objects: callable, and
also exposing the composite structure f(W) = subfun(A W) + ⟨W, b⟩ (``make_linop``,
``subfun``, ``b``, ``columnwise_lipschitz_const``) for coordinate-descent methods.

>>> import jax.numpy as jnp
>>> from implicitdiff import objective
>>> X, y = jnp.eye(2), jnp.array([1.0, 3.0])
>>> print(objective.least_squares(jnp.zeros(2), (X, y)))
2.5
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from implicitdiff import losses

__all__ = [
    "CompositeLinearFunction",
    "LinearOperator",
    "binary_logreg",
    "l2_multiclass_logreg",
    "l2_multiclass_logreg_with_intercept",
    "least_squares",
    "multiclass_linear_svm_dual",
    "multiclass_logreg",
    "multiclass_logreg_with_intercept",
    "ridge_regression",
]


class LinearOperator:
    """A dense matrix A seen as a linear operator, with the products coordinate methods use.

    Args:
      A: a matrix of shape (m, p).

    Example:
      >>> import jax.numpy as jnp
      >>> op = LinearOperator(jnp.array([[1.0, 2.0], [3.0, 4.0]]))
      >>> print(op.matvec(jnp.array([1.0, 1.0])))
      [3. 7.]
    """

    def __init__(self, A: Any):
        self.A = jnp.asarray(A)

    def shape(self) -> tuple[int, ...]:
        """The shape (m, p) of A.

        Returns:
          The tuple ``A.shape``.
        """
        return self.A.shape

    def matvec(self, x: jax.Array) -> jax.Array:
        """A x.

        Args:
          x: a vector of length p, or a matrix with p rows.

        Returns:
          A x, shape (m,) (or (m, t) for x of shape (p, t)).
        """
        return jnp.dot(self.A, x)

    def matvec_element(self, x: jax.Array, idx: Any) -> jax.Array:
        """(A x)[idx] = A[idx] x.

        Args:
          x: a vector of length p, or a matrix with p rows.
          idx: a row index of A (or anything that indexes the rows).

        Returns:
          A[idx] x: a scalar for an int idx and a vector x (a row of length t for x of shape
            (p, t)).
        """
        return jnp.dot(self.A[idx], x)

    def rmatvec(self, x: jax.Array) -> jax.Array:
        """Aᵀ x.

        Args:
          x: a vector of length m, or a matrix with m rows.

        Returns:
          Aᵀ x, shape (p,) (or (p, t) for x of shape (m, t)).
        """
        return jnp.dot(self.A.T, x)

    def rmatvec_element(self, x: jax.Array, idx: Any) -> jax.Array:
        """(Aᵀ x)[idx] = A[:, idx]ᵀ x.

        Args:
          x: a vector of length m, or a matrix with m rows.
          idx: a column index of A (or anything that indexes the columns).

        Returns:
          A[:, idx]ᵀ x: a scalar for an int idx and a vector x (a row of length t for x of shape
            (m, t)).
        """
        return jnp.dot(self.A[:, idx], x)

    def update_matvec(self, Ax: jax.Array, delta: jax.Array, idx: Any) -> jax.Array:
        """A (x + δ e_idx) from Ax: Ax + δ A[:, idx], without a full product.

        Args:
          Ax: the current product A x, shape (m,) or (m, t).
          delta: δ, the change of entry idx of x: a scalar, or a row of length t when x is a
            matrix.
          idx: the changed entry of x (a column index of A).

        Returns:
          A (x + δ e_idx), shaped like ``Ax``.

        Raises:
          ValueError: ``Ax`` is neither a vector nor a matrix.
        """
        if Ax.ndim == 1:
            return Ax + delta * self.A[:, idx]
        if Ax.ndim == 2:
            return Ax + jnp.outer(self.A[:, idx], delta)
        raise ValueError(f"update_matvec: Ax must be a vector or a matrix, got shape {Ax.shape}")

    def update_rmatvec(self, ATx: jax.Array, delta: jax.Array, idx: Any) -> jax.Array:
        """Aᵀ (x + δ e_idx) from Aᵀx: Aᵀx + δ A[idx], without a full product.

        Args:
          ATx: the current product Aᵀ x, shape (p,) or (p, t).
          delta: δ, the change of entry idx of x: a scalar, or a row of length t when x is a
            matrix.
          idx: the changed entry of x (a row index of A).

        Returns:
          Aᵀ (x + δ e_idx), shaped like ``ATx``.

        Raises:
          ValueError: ``ATx`` is neither a vector nor a matrix.
        """
        if ATx.ndim == 1:
            return ATx + delta * self.A[idx]
        if ATx.ndim == 2:
            return ATx + jnp.outer(self.A[idx], delta)
        raise ValueError(f"update_rmatvec: ATx must be a vector or a matrix, got {ATx.shape}")

    def column_l2_norms(self, squared: bool = False) -> jax.Array:
        """‖A[:, j]‖₂ for every column j (squared if ``squared``).

        Args:
          squared: return ‖A[:, j]‖₂² instead (default False).

        Returns:
          A vector of length p.
        """
        sq = jnp.sum(self.A**2, axis=0)
        return sq if squared else jnp.sqrt(sq)


class CompositeLinearFunction:
    """Base class of objectives f(W, *args) = subfun(A W, *args) + ⟨W, b(*args)⟩.

    A subclass defines ``make_linop(*args)`` (the operator A, a :class:`LinearOperator`),
    ``subfun(predictions, *args)`` and optionally ``b(*args)`` (None: no linear term) and
    ``columnwise_lipschitz_const(*args)`` (Lipschitz constants of the partial gradients in each
    column of W). Calling the object evaluates f.

    Example:
      >>> import jax.numpy as jnp
      >>> print(least_squares(jnp.array([1.0]), (jnp.ones((2, 1)), jnp.array([1.0, 3.0]))))
      1.0
    """

    def b(self, *args: Any, **kwargs: Any) -> Any:
        """The linear term b(*args) of f(W) = subfun(A W) + ⟨W, b⟩; this default has none.

        Args:
          *args: the objective's arguments after W.
          **kwargs: its keyword arguments.

        Returns:
          b, shaped like W, or None (no linear term: the default).
        """
        return None

    def lipschitz_const(self, hyperparams: Any) -> Any:
        """The Lipschitz constant of ∇subfun: not available for the objectives here.

        Kept for JAXopt's interface; coordinate methods use ``columnwise_lipschitz_const``.

        Args:
          hyperparams: the objective's arguments after W (unused).

        Returns:
          Nothing (it always raises).

        Raises:
          NotImplementedError: always.
        """
        raise NotImplementedError(f"{type(self).__name__} has no Lipschitz constant of ∇subfun")

    def make_linop(self, *args: Any, **kwargs: Any) -> LinearOperator:
        """The linear operator A(*args) of f(W) = subfun(A W) + ⟨W, b⟩.

        Each composite objective defines it.

        Args:
          *args: the objective's arguments after W.
          **kwargs: its keyword arguments.

        Returns:
          A :class:`LinearOperator`.

        Raises:
          NotImplementedError: called on the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must define make_linop")

    def subfun(self, predictions: Any, *args: Any, **kwargs: Any) -> jax.Array:
        """subfun(A W, *args), the part of f that sees W only through A W.

        Each composite objective defines it.

        Args:
          predictions: A W.
          *args: the objective's arguments after W.
          **kwargs: its keyword arguments.

        Returns:
          A scalar.

        Raises:
          NotImplementedError: called on the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must define subfun")

    def __call__(self, params: Any, *args: Any, **kwargs: Any) -> jax.Array:
        """f(params, *args) = subfun(A params, *args) + ⟨params, b(*args)⟩.

        Args:
          params: the variable W.
          *args: the data (and hyperparameters) of the objective.

        Returns:
          The scalar value.
        """
        linop = self.make_linop(*args, **kwargs)
        value = self.subfun(linop.matvec(params), *args, **kwargs)
        b = self.b(*args, **kwargs)
        if b is not None:
            value = value + jnp.vdot(params, b)
        return value


def _data(data: Any, owner: str) -> tuple[jax.Array, jax.Array]:
    try:
        X, y = data
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: data must be a pair (X, y), got {type(data).__name__}") from None
    X = jnp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{owner}: X in data = (X, y) must be a matrix, got shape {X.shape}")
    y = jnp.asarray(y)
    if y.shape[:1] != X.shape[:1]:
        raise ValueError(
            f"{owner}: y in data = (X, y) must have one entry per row of X ({X.shape[0]}), "
            f"got shape {y.shape}"
        )
    return X, y


class _DesignMatrixObjective(CompositeLinearFunction):
    """A composite objective of the predictions X W, for ``data = (X, y)``: A = X, the data
    checked under the name ``_owner`` (the instance's name)."""

    _owner: str

    def make_linop(self, data: Any) -> LinearOperator:
        """A = X."""
        return LinearOperator(_data(data, self._owner)[0])


class LeastSquares(_DesignMatrixObjective):
    """Least squares (1/2n) ‖XW − y‖² (see :data:`least_squares`)."""

    _owner = "least_squares"

    def subfun(self, predictions: jax.Array, data: Any) -> jax.Array:
        """(1/2n) ‖predictions − y‖² (mean over every entry, as JAXopt)."""
        return 0.5 * jnp.mean((predictions - jnp.asarray(data[1])) ** 2)

    def columnwise_lipschitz_const(self, data: Any) -> jax.Array:
        """‖X[:, j]‖² for each feature j."""
        return self.make_linop(data).column_l2_norms(squared=True)

    def __call__(self, W: Any, data: Any) -> jax.Array:
        r"""Least squares: (1/2n) ‖XW − y‖², the mean of ½(XW − y)² over every entry.

        Gradient Xᵀ(XW − y)/n for a vector y.

        Args:
          W: the weights, shape (d,) (or (d, t) with y of shape (n, t)).
          data: a pair ``(X, y)``, X of shape (n, d), y of shape (n,) (or (n, t)).

        Returns:
          The scalar objective.

        Example:
          >>> import jax.numpy as jnp
          >>> print(least_squares(jnp.zeros(2), (jnp.eye(2), jnp.array([1.0, 3.0]))))
          2.5
        """
        return super().__call__(W, data)


class BinaryLogreg(_DesignMatrixObjective):
    """Binary logistic regression (see :data:`binary_logreg`)."""

    _owner = "binary_logreg"

    def subfun(self, predictions: jax.Array, data: Any) -> jax.Array:
        """Mean binary logistic loss of the logits ``predictions`` for the labels y."""
        return jnp.mean(losses.binary_logistic_loss(data[1], predictions))

    def columnwise_lipschitz_const(self, data: Any) -> jax.Array:
        """‖X[:, j]‖²/4 for each feature j (σ' ≤ 1/4)."""
        return self.make_linop(data).column_l2_norms(squared=True) * 0.25

    def __call__(self, w: Any, data: Any) -> jax.Array:
        r"""Binary logistic regression: (1/n) Σᵢ softplus(xᵢᵀw) − yᵢ xᵢᵀw.

        Gradient Xᵀ(σ(Xw) − y)/n.

        Args:
          w: the weights, shape (d,).
          data: a pair ``(X, y)``, X of shape (n, d), y of shape (n,) with entries 0 or 1.

        Returns:
          The scalar objective.

        Example:
          >>> import jax.numpy as jnp
          >>> X, y = jnp.ones((2, 1)), jnp.array([0.0, 1.0])
          >>> print(binary_logreg(jnp.zeros(1), (X, y)).round(4))  # log 2
          0.6931
        """
        return super().__call__(w, data)


class MulticlassLogreg(_DesignMatrixObjective):
    """Multiclass logistic regression (see :data:`multiclass_logreg`)."""

    _owner = "multiclass_logreg"

    def subfun(self, predictions: jax.Array, data: Any) -> jax.Array:
        """Mean multiclass logistic loss of the scores ``predictions`` (n, k) for labels y."""
        return jnp.mean(losses.multiclass_logistic_loss(data[1], predictions))

    def columnwise_lipschitz_const(self, data: Any) -> jax.Array:
        """‖X[:, j]‖²/2 for each feature j."""
        return self.make_linop(data).column_l2_norms(squared=True) * 0.5

    def __call__(self, W: Any, data: Any) -> jax.Array:
        r"""Multiclass logistic regression: (1/n) Σᵢ logsumexp(Wᵀxᵢ) − (Wᵀxᵢ)_{yᵢ}.

        Gradient Xᵀ(softmax(XW) − Y)/n, Y the one-hot labels.

        Args:
          W: the weights, shape (d, k).
          data: a pair ``(X, y)``, X of shape (n, d), y of shape (n,) with class indices in
            [0, k).

        Returns:
          The scalar objective.

        Example:
          >>> import jax.numpy as jnp
          >>> X, y = jnp.ones((2, 1)), jnp.array([0, 1])
          >>> print(multiclass_logreg(jnp.zeros((1, 2)), (X, y)).round(4))  # log 2
          0.6931
        """
        return super().__call__(W, data)


def _one_hot_data(data: Any) -> tuple[jax.Array, jax.Array]:
    """(X, Y) of the multiclass SVM dual, Y one-hot labels (n, k): class indices (n,) are
    refused by name (they broadcast against Xᵀβ into JAX's "Incompatible shapes" error)."""
    X, Y = _data(data, "multiclass_linear_svm_dual")
    if Y.ndim != 2:
        raise ValueError(
            "multiclass_linear_svm_dual: Y in data = (X, Y) must be one-hot labels of shape "
            f"(n, k), got shape {Y.shape}; for class indices y pass jax.nn.one_hot(y, k)"
        )
    return X, Y


class MulticlassLinearSvmDual(CompositeLinearFunction):
    """Dual of the multiclass linear SVM (see :data:`multiclass_linear_svm_dual`)."""

    def make_linop(self, l2reg: Any, data: Any) -> LinearOperator:
        """A = Xᵀ (so A β = Xᵀβ)."""
        return LinearOperator(_one_hot_data(data)[0].T)

    def subfun(self, Xbeta: jax.Array, l2reg: Any, data: Any) -> jax.Array:
        """(1/2λ) ‖XᵀY − Xᵀβ‖²_F given Xᵀβ."""
        X, Y = _one_hot_data(data)
        V = jnp.dot(X.T, Y) - Xbeta
        return 0.5 / l2reg * jnp.vdot(V, V)

    def b(self, l2reg: Any, data: Any) -> jax.Array:
        """Y − 1."""
        return _one_hot_data(data)[1] - 1

    def columnwise_lipschitz_const(self, l2reg: Any, data: Any) -> jax.Array:
        """‖xᵢ‖² for each sample i (the columns of Xᵀ), as JAXopt (without the 1/λ)."""
        return self.make_linop(l2reg, data).column_l2_norms(squared=True)

    def __call__(self, beta: Any, l2reg: Any, data: Any) -> jax.Array:
        r"""Dual multiclass SVM objective f(β) = (1/2λ) ‖Xᵀ(Y − β)‖²_F + ⟨β, Y − 1⟩.

        Gradient −X Xᵀ(Y − β)/λ + Y − 1. Minimize it over β with each row in the simplex
        (e.g. ``BlockCoordinateDescent`` with the simplex projection as ``block_prox``); the
        primal weights are then W = Xᵀ(Y − β)/λ.

        Args:
          beta: the dual variables, shape (n, k).
          l2reg: the regularization λ > 0 of the primal problem.
          data: a pair ``(X, Y)``, X of shape (n, d), Y of shape (n, k) one-hot labels.

        Returns:
          The scalar objective.

        Example:
          >>> import jax.numpy as jnp
          >>> X, Y = jnp.eye(2), jnp.eye(2)
          >>> print(multiclass_linear_svm_dual(Y, 1.0, (X, Y)))  # β = Y: 0 + ⟨Y, Y − 1⟩
          0.0
        """
        return super().__call__(beta, l2reg, data)


least_squares = LeastSquares()
binary_logreg = BinaryLogreg()
multiclass_logreg = MulticlassLogreg()
multiclass_linear_svm_dual = MulticlassLinearSvmDual()


def _l2_penalty(l2reg: Any, W: jax.Array) -> jax.Array:
    """½λ‖W‖², the ridge penalty of the weights W."""
    return 0.5 * l2reg * jnp.sum(W**2)


def ridge_regression(params: Any, l2reg: Any, data: Any) -> jax.Array:
    r"""Ridge regression: (1/2n) ‖XW − y‖² + ½λ‖W‖².

    Gradient Xᵀ(XW − y)/n + λW; minimizer (XᵀX/n + λI)⁻¹ Xᵀy/n.

    Args:
      params: the weights W, shape (d,).
      l2reg: the regularization strength λ.
      data: a pair ``(X, y)``, X of shape (n, d), y of shape (n,).

    Returns:
      The scalar objective.

    Example:
      >>> import jax.numpy as jnp
      >>> print(ridge_regression(jnp.ones(2), 2.0, (jnp.eye(2), jnp.ones(2))))
      2.0
    """
    return least_squares(params, data) + _l2_penalty(l2reg, jnp.asarray(params))


def _intercept_params(params: Any, owner: str) -> tuple[jax.Array, jax.Array]:
    try:
        W, b = params
    except (TypeError, ValueError):
        raise TypeError(
            f"{owner}: params must be a pair (W, b), got {type(params).__name__}"
        ) from None
    return jnp.asarray(W), jnp.asarray(b)


def _logreg_with_intercept(params: Any, data: Any, owner: str) -> tuple[jax.Array, jax.Array]:
    """The mean multiclass logistic loss of the scores XW + b for ``params = (W, b)``, and W
    (for a penalty); data and params checked under the name ``owner``."""
    X, y = _data(data, owner)
    W, b = _intercept_params(params, owner)
    return jnp.mean(losses.multiclass_logistic_loss(y, jnp.dot(X, W) + b)), W


def multiclass_logreg_with_intercept(params: Any, data: Any) -> jax.Array:
    r"""Multiclass logistic regression with intercept: (1/n) Σᵢ ℓ_mc(yᵢ, Wᵀxᵢ + b).

    ℓ_mc(y, z) = logsumexp(z) − z_y; gradients Xᵀ(P − Y)/n in W and Σᵢ(Pᵢ − Yᵢ)/n in b, with
    P = softmax(XW + b) row-wise and Y the one-hot labels.

    Args:
      params: a pair ``(W, b)``, W of shape (d, k), b of shape (k,).
      data: a pair ``(X, y)``, X of shape (n, d), y of shape (n,) with class indices.

    Returns:
      The scalar objective.

    Example:
      >>> import jax.numpy as jnp
      >>> params = (jnp.zeros((1, 2)), jnp.zeros(2))
      >>> data = (jnp.ones((2, 1)), jnp.array([0, 1]))
      >>> print(multiclass_logreg_with_intercept(params, data).round(4))
      0.6931
    """
    return _logreg_with_intercept(params, data, "multiclass_logreg_with_intercept")[0]


def l2_multiclass_logreg(W: Any, l2reg: Any, data: Any) -> jax.Array:
    r"""L2-regularized multiclass logistic regression: (1/n) Σᵢ ℓ_mc(yᵢ, Wᵀxᵢ) + ½λ‖W‖².

    Gradient Xᵀ(softmax(XW) − Y)/n + λW.

    Args:
      W: the weights, shape (d, k).
      l2reg: the regularization strength λ.
      data: a pair ``(X, y)``, X of shape (n, d), y of shape (n,) with class indices.

    Returns:
      The scalar objective.

    Example:
      >>> import jax.numpy as jnp
      >>> X, y = jnp.ones((2, 1)), jnp.array([0, 1])
      >>> print(l2_multiclass_logreg(jnp.zeros((1, 2)), 1.0, (X, y)).round(4))
      0.6931
    """
    X, y = _data(data, "l2_multiclass_logreg")
    W = jnp.asarray(W)
    return jnp.mean(losses.multiclass_logistic_loss(y, jnp.dot(X, W))) + _l2_penalty(l2reg, W)


def l2_multiclass_logreg_with_intercept(params: Any, l2reg: Any, data: Any) -> jax.Array:
    r"""L2-regularized multiclass logistic regression with intercept.

    (1/n) Σᵢ ℓ_mc(yᵢ, Wᵀxᵢ + b) + ½λ‖W‖² (the intercept b is not penalized).

    Args:
      params: a pair ``(W, b)``, W of shape (d, k), b of shape (k,).
      l2reg: the regularization strength λ.
      data: a pair ``(X, y)``, X of shape (n, d), y of shape (n,) with class indices.

    Returns:
      The scalar objective.

    Example:
      >>> import jax.numpy as jnp
      >>> params = (jnp.ones((1, 2)), jnp.zeros(2))
      >>> X, y = jnp.ones((2, 1)), jnp.array([0, 1])
      >>> print(l2_multiclass_logreg_with_intercept(params, 1.0, (X, y)).round(4))
      1.6931
    """
    loss, W = _logreg_with_intercept(params, data, "l2_multiclass_logreg_with_intercept")
    return loss + _l2_penalty(l2reg, W)
