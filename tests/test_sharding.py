"""The same programs on several devices: batches and data sharded with ``jax.sharding``.

These tests need several devices. On a CPU-only machine tests/conftest.py forces eight host
devices (``--xla_force_host_platform_device_count=8`` in ``XLA_FLAGS``, set before JAX creates
its backend; see the comment there for why in-process rather than in a subprocess). The meshes
are built from ``jax.devices("cpu")``, so the tests run the same where the default backend is a
GPU. Every check compares the sharded result with the same jitted function run on one device,
in float64, to ~1e-10 relative, and the derivatives themselves with a closed form or central
finite differences.

Two patterns, both plain ``jax.jit`` with automatic partitioning (no shard_map, nothing in the
library): a batch of independent inner problems under ``vmap`` with the batch axis sharded, and
one problem whose data matrix is sharded by rows, its matvecs (and those of the backward CG)
partitioned by the compiler with all-reduces.

Every backward solve here is matrix-free (CG / GMRES), never the dense LU that ``solve="auto"``
picks for small systems: on forced host devices, jaxlib 0.10's batched LAPACK kernels can
deadlock (each device's program blocks an intra-op thread waiting for batch chunks queued on
the same, then exhausted, pool; see docs/multi_device.md).

The meshes use ``AxisType.Auto``. ``jax.make_mesh`` defaults to ``AxisType.Explicit`` in JAX
0.10, and there ``jit(vmap(solver))`` fails while tracing, in JAX's own batching rule of
``while_loop`` (see ``test_explicit_mesh_axes_fail_in_jax_while_loop_batching``).
"""

from __future__ import annotations

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from problems import ridge_objective
from sklearn.datasets import make_classification

import implicitdiff
from implicitdiff import custom_root, linear_solve, optimality, projections
from implicitdiff.solvers import LBFGS, GradientDescent, ProjectedGradient, ScipyMinimize

N_DEVICES = 8
# Sharded against one device: the same program compiled for another layout, so sums run in
# another order and differ by rounding; a solver that stops on `tol` may then stop one iteration
# apart, which moves its output by up to its tolerance. Measured: hypergradients 2e-12 relative
# (SVM batch), 0 to 3e-16 (the others); the SVM solutions 9e-12 absolute.
TIGHT = {"rtol": 1e-10, "atol": 1e-13}


def cpu_devices() -> list:
    devices = jax.devices("cpu")
    if len(devices) < N_DEVICES:
        pytest.fail(
            f"test_sharding needs {N_DEVICES} CPU devices, JAX has {len(devices)}: the backend was "
            "created before tests/conftest.py set XLA_FLAGS=--xla_force_host_platform_device_count"
            "=8 (a plugin imported and used JAX first?), or XLA_FLAGS forces another count"
        )
    return devices[:N_DEVICES]


@functools.cache
def mesh(name: str) -> Mesh:
    """A one-axis mesh over the eight devices, with automatic (GSPMD / Shardy) partitioning."""
    return jax.make_mesh((N_DEVICES,), (name,), axis_types=(AxisType.Auto,), devices=cpu_devices())


def on_one_device(tree):
    """The same values committed to a single device: the unsharded reference run."""
    return jax.device_put(tree, cpu_devices()[0])


def assert_sharded(array: jax.Array, sharding: NamedSharding) -> None:
    """``array`` is laid out by ``sharding``: one distinct piece per device, none replicated."""
    assert array.sharding.is_equivalent_to(sharding, array.ndim), array.sharding
    shards = array.addressable_shards
    assert len({shard.device for shard in shards}) == N_DEVICES
    split = sharding.spec[0] is not None
    expected_rows = array.shape[0] // N_DEVICES if split else array.shape[0]
    assert all(shard.data.shape[0] == expected_rows for shard in shards)


def collectives(compiled) -> set[str]:
    """The cross-device operations in a compiled program's HLO."""
    ops = r"all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"
    return set(re.findall(ops, compiled.as_text()))


# ---------------------------------------------------------------------------------------------
# A batch of independent problems, the batch axis sharded: one multiclass SVM dual (the paper's
# first experiment) per value of the regularization, each differentiated implicitly.
#   x*(θ) = argmin_{x ∈ Δ³×…×Δ³} (θ/2)‖W(x, θ)‖² + ⟨x, Y_tr⟩,  W = X_trᵀ(Y_tr − x)/θ,
#   outer(log θ) = ½‖X_val W(x*(θ), θ) − Y_val‖².

_X, _LABELS = make_classification(
    n_samples=60,
    n_features=5,
    n_informative=3,
    n_redundant=0,
    n_classes=3,
    n_clusters_per_class=1,
    random_state=0,
)
_Y = np.eye(3)[_LABELS]
X_TR, Y_TR, X_VAL, Y_VAL = _X[:30], _Y[:30], _X[30:], _Y[30:]
SVM_INIT = jnp.full((30, 3), 1.0 / 3)
LOG_THETAS = jnp.linspace(0.0, 0.8, 2 * N_DEVICES)  # two problems per device


def svm_weights(x, theta):
    return X_TR.T @ (Y_TR - x) / theta


def svm_dual(x, theta, X, Y):
    return 0.5 * theta * jnp.sum((X.T @ (Y - x) / theta) ** 2) + jnp.vdot(x, Y)


SVM_SOLVER = ProjectedGradient(
    fun=svm_dual,
    projection=jax.vmap(projections.simplex, in_axes=(0, None)),
    tol=1e-11,
    maxiter=3000,
    solve="gmres",  # I − ∂T is not symmetric; matrix-free, no LAPACK (see the module docstring)
)


def svm_outer(log_theta):
    theta = jnp.exp(log_theta)
    x, state = SVM_SOLVER.run(SVM_INIT, 1.0, theta, X_TR, Y_TR)
    loss = 0.5 * jnp.sum((X_VAL @ svm_weights(x, theta) - Y_VAL) ** 2)
    return loss, (x, state.converged)


@functools.cache
def svm_batch_results():
    """The batched (loss, hypergradient, solution, converged) at LOG_THETAS, sharded and on one
    device, and the sharded losses at LOG_THETAS ± ε (the same compiled program)."""
    batch = NamedSharding(mesh("batch"), P("batch"))
    fun = jax.jit(jax.vmap(jax.value_and_grad(svm_outer, has_aux=True)))
    sharded = fun.lower(jax.device_put(LOG_THETAS, batch)).compile()
    (loss, (x, converged)), grads = sharded(jax.device_put(LOG_THETAS, batch))
    (loss_1, (x_1, converged_1)), grads_1 = fun(on_one_device(LOG_THETAS))
    eps = 1e-4
    plus = sharded(jax.device_put(LOG_THETAS + eps, batch))[0][0]
    minus = sharded(jax.device_put(LOG_THETAS - eps, batch))[0][0]
    return {
        "sharded": (loss, grads, x, converged),
        "one_device": (loss_1, grads_1, x_1, converged_1),
        "finite_differences": (plus - minus) / (2 * eps),
        "custom_calls": set(re.findall(r'custom_call_target="([^"]+)"', sharded.as_text())),
    }


def test_svm_batch_program_calls_no_lapack():
    """The sharded program that hung with jax.scipy's GMRES (a batched LAPACK Cholesky per
    cycle on every device): with linear_solve.gmres only the failure check's callback is left."""
    calls = svm_batch_results()["custom_calls"]
    assert not [call for call in calls if "lapack" in call], calls


def test_svm_batch_sharded_equals_single_device():
    results = svm_batch_results()
    loss, grads, x, converged = results["sharded"]
    loss_1, grads_1, x_1, converged_1 = results["one_device"]
    assert bool(jnp.all(converged)) and bool(jnp.all(converged_1))
    np.testing.assert_allclose(loss, loss_1, **TIGHT)
    np.testing.assert_allclose(grads, grads_1, **TIGHT)
    np.testing.assert_allclose(x, x_1, rtol=0, atol=1e-10)
    # The hypergradients are not trivial: they vary along the batch and do not vanish.
    assert np.min(np.abs(grads)) > 1e-2 and np.ptp(np.asarray(grads)) > 1e-1


def test_svm_batch_outputs_stay_sharded():
    results = svm_batch_results()
    _, grads, x, _ = results["sharded"]
    batch = NamedSharding(mesh("batch"), P("batch"))
    assert_sharded(grads, batch)
    assert_sharded(x, batch)  # the solutions (16, 30, 3): two problems per device
    assert results["one_device"][1].sharding.device_set == {cpu_devices()[0]}


def test_svm_batch_hypergradient_matches_finite_differences():
    results = svm_batch_results()
    np.testing.assert_allclose(results["sharded"][1], results["finite_differences"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# A meta-learning batch: one logistic regression per task, each task's data on its device, one
# shared ridge strength λ = exp(log λ); the meta-gradient averages over the tasks (a reduction
# across devices), outer(log λ) = mean_t ℓ_val,t(w*_t(λ)).

N_TASKS, N_TRAIN, N_VAL, N_FEATURES = N_DEVICES, 12, 12, 4


def _tasks():
    key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
    n = N_TRAIN + N_VAL
    X = jax.random.normal(key_x, (N_TASKS, n, N_FEATURES))
    w_true = jax.random.normal(key_w, (N_TASKS, N_FEATURES))
    logits = jnp.einsum("tnp,tp->tn", X, w_true)
    y = (logits + 0.5 * jnp.sin(7.0 * logits) > 0).astype(X.dtype)  # not separable
    return X[:, :N_TRAIN], y[:, :N_TRAIN], X[:, N_TRAIN:], y[:, N_TRAIN:]


TASKS = _tasks()


def logistic_objective(w, lam, X, y):
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * jnp.sum(w**2)


def logistic_loss(w, X, y):
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z)


# ∇² of the mean logistic loss ≼ XᵀX/(4n) ≼ ‖X‖²/(4n) I: a fixed step 1/L for every task.
_L_TASKS = max(np.linalg.norm(np.asarray(X), 2) ** 2 for X in TASKS[0]) / (4 * N_TRAIN) + 0.05
TASK_SOLVER = GradientDescent(
    fun=logistic_objective, stepsize=1.0 / _L_TASKS, tol=1e-12, maxiter=5000, solve="cg"
)


def meta_loss(log_lam, X_tr, y_tr, X_val, y_val):
    lam = jnp.exp(log_lam)

    def task_loss(X_tr, y_tr, X_val, y_val):
        w = TASK_SOLVER.run(jnp.zeros(N_FEATURES), lam, X_tr, y_tr).params
        return logistic_loss(w, X_val, y_val)

    return jnp.mean(jax.vmap(task_loss)(X_tr, y_tr, X_val, y_val))


def test_meta_learning_batch_sharded_equals_single_device_and_finite_differences():
    by_task = NamedSharding(mesh("batch"), P("batch", None, None))
    by_task_y = NamedSharding(mesh("batch"), P("batch", None))
    X_tr, y_tr, X_val, y_val = TASKS
    sharded = (
        jax.device_put(X_tr, by_task),
        jax.device_put(y_tr, by_task_y),
        jax.device_put(X_val, by_task),
        jax.device_put(y_val, by_task_y),
    )
    log_lam = jnp.log(0.05)
    meta_grad = jax.jit(jax.value_and_grad(meta_loss))
    compiled = meta_grad.lower(log_lam, *sharded).compile()
    value, grad = compiled(log_lam, *sharded)
    value_1, grad_1 = meta_grad(*on_one_device((log_lam, *TASKS)))
    np.testing.assert_allclose(value, value_1, **TIGHT)
    np.testing.assert_allclose(grad, grad_1, **TIGHT)
    # The tasks stay where they are: the compiled program takes them sharded by task, and the
    # mean over tasks is a reduction across devices.
    assert compiled.input_shardings[0][1].is_equivalent_to(by_task, 3)
    assert "all-reduce" in collectives(compiled)
    eps = 1e-4
    fd = (compiled(log_lam + eps, *sharded)[0] - compiled(log_lam - eps, *sharded)[0]) / (2 * eps)
    assert abs(float(grad)) > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# One problem, its data matrix sharded by rows: each device holds n/8 samples. Products X v and
# Xᵀ u are partitioned by the compiler (Xᵀ u ends with an all-reduce), both in the solver and in
# the CG of the backward pass.

N_ROWS, N_COLS = 8 * N_DEVICES, 6


def _regression_data():
    key_x, key_w, key_n = jax.random.split(jax.random.PRNGKey(1), 3)
    X = jax.random.normal(key_x, (2 * N_ROWS, N_COLS))
    w = jax.random.normal(key_w, (N_COLS,))
    y = X @ w + 0.3 * jax.random.normal(key_n, (2 * N_ROWS,))
    return X[:N_ROWS], y[:N_ROWS], X[N_ROWS:], y[N_ROWS:]


X_ROWS, Y_ROWS, X_HELD, Y_HELD = _regression_data()


RIDGE_LBFGS = LBFGS(fun=ridge_objective, tol=1e-11, maxiter=200, solve="cg")


def ridge_validation(log_lam, X, y, X_val, y_val):
    w = RIDGE_LBFGS.run(jnp.zeros(N_COLS), jnp.exp(log_lam), X, y).params
    return 0.5 * jnp.sum((X_val @ w - y_val) ** 2)


def ridge_validation_closed_form(log_lam, X, y, X_val, y_val):
    """d/d log λ of ½‖X_val w − y_val‖², w = (XᵀX + λI)⁻¹Xᵀy, dw/dλ = −(XᵀX + λI)⁻¹w."""
    X, y, X_val, y_val = (np.asarray(a) for a in (X, y, X_val, y_val))
    lam = float(np.exp(log_lam))
    H = X.T @ X + lam * np.eye(X.shape[1])
    w = np.linalg.solve(H, X.T @ y)
    return lam * (X_val @ w - y_val) @ (X_val @ -np.linalg.solve(H, w))


ROWS = P("rows", None)


def row_sharded(X, y):
    m = mesh("rows")
    return jax.device_put(X, NamedSharding(m, ROWS)), jax.device_put(y, NamedSharding(m, P("rows")))


def test_row_sharded_ridge_lbfgs_cg_equals_single_device_and_closed_form():
    m = mesh("rows")
    rows = NamedSharding(m, ROWS)
    X, y = row_sharded(X_ROWS, Y_ROWS)
    hypergradient = jax.jit(
        jax.value_and_grad(ridge_validation),
        in_shardings=(NamedSharding(m, P()), rows, NamedSharding(m, P("rows")), None, None),
    )
    log_lam = jnp.log(3.0)
    compiled = hypergradient.lower(log_lam, X, y, X_HELD, Y_HELD).compile()
    value, grad = compiled(log_lam, X, y, X_HELD, Y_HELD)
    value_1, grad_1 = jax.jit(jax.value_and_grad(ridge_validation))(
        *on_one_device((log_lam, X_ROWS, Y_ROWS, X_HELD, Y_HELD))
    )
    np.testing.assert_allclose(value, value_1, **TIGHT)
    np.testing.assert_allclose(grad, grad_1, **TIGHT)
    want = ridge_validation_closed_form(log_lam, X_ROWS, Y_ROWS, X_HELD, Y_HELD)
    np.testing.assert_allclose(grad, want, rtol=1e-8)
    # The matvecs ran distributed: the program takes X by rows and reduces across devices.
    assert compiled.input_shardings[0][1].is_equivalent_to(rows, 2)
    assert "all-reduce" in collectives(compiled)
    assert_sharded(X, rows)  # each device holds its 8 rows


def ridge_by_cg(init_w, lam, X, y):
    """Any solver: CG on the normal equations (XᵀX + λI) w = Xᵀy (the README's example)."""
    matvec = lambda v: X.T @ (X @ v) + lam * v  # noqa: E731
    return jax.scipy.sparse.linalg.cg(matvec, X.T @ y, x0=init_w, tol=1e-14)[0]


ridge_cg = custom_root(optimality.stationary(ridge_objective), solve=linear_solve.cg)(ridge_by_cg)


def test_row_sharded_custom_root_cg_equals_single_device():
    def validation(log_lam, X, y, X_val, y_val):
        w = ridge_cg(jnp.zeros(N_COLS), jnp.exp(log_lam), X, y)
        return 0.5 * jnp.sum((X_val @ w - y_val) ** 2)

    fun = jax.jit(jax.grad(validation))
    log_lam = jnp.log(3.0)
    grad = fun(log_lam, *row_sharded(X_ROWS, Y_ROWS), X_HELD, Y_HELD)
    grad_1 = fun(*on_one_device((log_lam, X_ROWS, Y_ROWS, X_HELD, Y_HELD)))
    np.testing.assert_allclose(grad, grad_1, **TIGHT)
    want = ridge_validation_closed_form(log_lam, X_ROWS, Y_ROWS, X_HELD, Y_HELD)
    np.testing.assert_allclose(grad, want, rtol=1e-8)


def test_row_sharded_logistic_gradient_descent_cg_equals_single_device():
    labels = (Y_ROWS > jnp.median(Y_ROWS)).astype(Y_ROWS.dtype)
    held = (Y_HELD > jnp.median(Y_ROWS)).astype(Y_HELD.dtype)
    L = np.linalg.norm(np.asarray(X_ROWS), 2) ** 2 / (4 * N_ROWS) + 0.02
    solver = GradientDescent(
        fun=logistic_objective, stepsize=1.0 / L, tol=1e-12, maxiter=5000, solve="cg"
    )

    def validation(log_lam, X, y, X_val, y_val):
        w, state = solver.run(jnp.zeros(N_COLS), jnp.exp(log_lam), X, y)
        return logistic_loss(w, X_val, y_val), state.converged

    fun = jax.jit(jax.value_and_grad(validation, has_aux=True))
    log_lam = jnp.log(0.02)
    X, y = row_sharded(X_ROWS, labels)
    compiled = fun.lower(log_lam, X, y, X_HELD, held).compile()
    (value, converged), grad = compiled(log_lam, X, y, X_HELD, held)
    (value_1, _), grad_1 = fun(*on_one_device((log_lam, X_ROWS, labels, X_HELD, held)))
    assert bool(converged)
    np.testing.assert_allclose(value, value_1, **TIGHT)
    np.testing.assert_allclose(grad, grad_1, **TIGHT)
    assert "all-reduce" in collectives(compiled)
    eps = 1e-4
    plus = compiled(log_lam + eps, X, y, X_HELD, held)[0][0]
    minus = compiled(log_lam - eps, X, y, X_HELD, held)[0][0]
    np.testing.assert_allclose(grad, (plus - minus) / (2 * eps), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The host callback of on_failure="warn" under a sharded batch. Under jit's automatic
# partitioning a callback runs on the host of the computation's first device, its arguments
# gathered there; under vmap, the callback is called once with the whole batch. So a sharded
# batch warns exactly as the same batch on one device: once per call, with the worst residual.


def _residuals(caught) -> list[str]:
    messages = [str(w.message) for w in caught if w.category is implicitdiff.BackwardSolveWarning]
    return sorted(re.search(r"relative residual ([-+.e0-9]*[0-9])", m).group(1) for m in messages)


def test_failed_backward_solve_warns_under_sharded_batch_as_on_one_device():
    starved = custom_root(
        optimality.stationary(ridge_objective),
        solve=functools.partial(linear_solve.cg, maxiter=1),
    )(ridge_by_cg)  # the same solver; its backward CG stops after one step and fails the check
    X = jax.random.normal(jax.random.PRNGKey(2), (N_DEVICES, 10, N_COLS))
    y = jnp.ones((N_DEVICES, 10))

    def loss(lam, X, y):
        return jnp.sum(starved(jnp.zeros(N_COLS), lam, X, y))

    fun = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
    X_sharded = jax.device_put(X, NamedSharding(mesh("batch"), P("batch", None, None)))
    y_sharded = jax.device_put(y, NamedSharding(mesh("batch"), P("batch", None)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fun(0.1, X_sharded, y_sharded).block_until_ready()
    with warnings.catch_warnings(record=True) as caught_1:
        warnings.simplefilter("always")
        fun(*on_one_device((0.1, X, y))).block_until_ready()
    residuals = _residuals(caught)
    assert len(residuals) == 1, [str(w.message) for w in caught]
    assert residuals == _residuals(caught_1)
    assert float(residuals[0]) > 1e-3
    assert f"({N_DEVICES} of {N_DEVICES} in the batch)" in str(caught[0].message)


def test_scipy_solver_under_sharded_batch_runs_on_the_host_as_on_one_device():
    """A pure_callback solver (SciPy's BFGS) in a sharded batch: the problems are gathered to
    one host and solved there; the result is sharded like the input, and exact."""
    solver = ScipyMinimize(fun=ridge_objective, method="BFGS", tol=1e-12, solve="cg")

    def validation(log_lam):
        w = solver.run(jnp.zeros(N_COLS), jnp.exp(log_lam), X_ROWS, Y_ROWS).params
        return 0.5 * jnp.sum((X_HELD @ w - Y_HELD) ** 2)

    log_lams = jnp.linspace(-1.0, 2.0, N_DEVICES)
    batch = NamedSharding(mesh("batch"), P("batch"))
    fun = jax.jit(jax.vmap(jax.grad(validation)))
    grads = fun(jax.device_put(log_lams, batch))
    grads_1 = fun(on_one_device(log_lams))
    assert_sharded(grads, batch)
    np.testing.assert_allclose(grads, grads_1, **TIGHT)
    want = [ridge_validation_closed_form(t, X_ROWS, Y_ROWS, X_HELD, Y_HELD) for t in log_lams]
    np.testing.assert_allclose(grads, want, rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# What does not work, and is JAX's: axes of type Explicit (jax.make_mesh's default in JAX 0.10).


def halve_until_small(x):
    """A while loop whose predicate depends on the batched value, and whose carry also holds a
    counter created as a constant: the shape of every solver's loop (iterate, iter_num)."""
    v, k = jax.lax.while_loop(
        lambda c: c[0] > 1.0, lambda c: (c[0] / 2, c[1] + 1), (x, jnp.asarray(0))
    )
    return v + k


@pytest.mark.parametrize(
    "axis_type",
    [
        AxisType.Auto,
        pytest.param(
            AxisType.Explicit,
            marks=pytest.mark.xfail(
                raises=ValueError,
                strict=True,
                reason="JAX 0.10: vmap of while_loop with a batched predicate over Explicit axes",
            ),
        ),
    ],
)
def test_explicit_mesh_axes_fail_in_jax_while_loop_batching(axis_type):
    """Pure JAX, no implicitdiff: the limitation docs/multi_device.md states (a strict xfail
    while JAX has it: when JAX fixes it the XPASS fails, and the docs must be updated)."""
    explicit_mesh = jax.make_mesh(
        (N_DEVICES,), ("batch",), axis_types=(axis_type,), devices=cpu_devices()
    )
    x = jax.device_put(jnp.arange(1.0, 9.0) * 10, NamedSharding(explicit_mesh, P("batch")))
    fun = jax.jit(jax.vmap(halve_until_small))
    want = jnp.array([4.625, 5.625, 5.9375, 6.625, 6.78125, 6.9375, 7.546875, 7.625])
    with jax.set_mesh(explicit_mesh):
        np.testing.assert_array_equal(fun(x), want)
