"""``print`` of a result object is short: scalars by value, arrays by dtype, shape and norm.

A solver's ``OptStep`` and state, ``bilevel.minimize``'s result and the other result tuples get
their ``repr`` from ``implicitdiff._summary``; a 10,000-entry solution must not be dumped, under
``jit`` (concrete results) or while tracing (abstract values).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicitdiff import _summary, bilevel, diagnostics, solvers

N = 10_000
TARGET = jnp.linspace(-1.0, 1.0, N)


def separable(x, lam):
    """½‖x − c‖² + (λ/2)‖x‖², whose minimizer is c/(1 + λ)."""
    return 0.5 * jnp.sum((x - TARGET) ** 2) + 0.5 * lam * jnp.sum(x**2)


SOLVER = solvers.LBFGS(separable, tol=1e-10)


@pytest.fixture(scope="module")
def lbfgs_result():
    return jax.jit(SOLVER.run)(jnp.zeros(N), 1.0)


def _norm_text(x):
    return f"‖·‖={float(np.linalg.norm(np.asarray(x))):.4g}"


def test_solver_result_is_short_and_names_its_fields(lbfgs_result):
    params, state = lbfgs_result
    np.testing.assert_allclose(params, TARGET / 2.0, rtol=1e-10)
    text = repr(lbfgs_result)
    assert str(lbfgs_result) == text
    assert len(text) < 600, text
    assert text.startswith(f"OptStep(params=f64[{N}] {_norm_text(params)}, state=LbfgsState(")
    for name in state._fields:
        assert f"{name}=" in text
    assert f"iter_num={int(state.iter_num)}," in text
    assert f"converged={bool(state.converged)}," in text
    assert f"error={float(state.error):.4g}," in text
    assert f"s_history=f64[10,{N}] {_norm_text(state.s_history)}" in text
    assert "aux=None" in text
    # No entry of an array is printed: the only numbers are the scalars and the norms.
    assert str(float(params[1])) not in text and "[-" not in text
    # The state alone prints the same way.
    assert repr(state) == text[len(f"OptStep(params=f64[{N}] {_norm_text(params)}, state=") : -1]


def test_result_while_tracing_shows_shapes():
    seen = []

    def run(x0):
        result = SOLVER.run(x0, 1.0)
        seen.append(repr(result))
        return result

    jax.eval_shape(run, jax.ShapeDtypeStruct((N,), jnp.float64))  # traced, never compiled
    (text,) = seen
    assert len(text) < 600, text
    assert text.startswith(f"OptStep(params=f64[{N}] (traced), state=LbfgsState(iter_num=")
    assert "converged=bool[] (traced)" in text
    assert f"grad=f64[{N}] (traced)" in text


def test_bilevel_result_is_short():
    def outer_loss(x, log_lam):
        return 0.5 * jnp.mean((x - 0.25 * TARGET) ** 2)

    class Sgd:  # an Optax-like optimizer: θ ← θ − 0.1 g
        def init(self, params):
            return ()

        def update(self, grads, state, params=None):
            return -0.1 * grads, state

    theta0 = jnp.array(0.0)
    result = bilevel.minimize(
        outer_loss, lambda x0, t: SOLVER.run(x0, jnp.exp(t)), theta0, jnp.zeros(N), Sgd(), 3
    )
    # The result is a real one: x*(λ) = c/(1 + λ), L(θ) = ½ m (1/(1 + e^θ) − 1/4)² with
    # m = mean(c²), dL/dθ = −m (1/(1 + e^θ) − 1/4) e^θ/(1 + e^θ)².
    m, theta = float(jnp.mean(TARGET**2)), 0.0
    for _ in range(2):
        theta -= (
            0.1 * -m * (1 / (1 + np.exp(theta)) - 0.25) * np.exp(theta) / (1 + np.exp(theta)) ** 2
        )
    np.testing.assert_allclose(result.inner_params, TARGET / (1 + np.exp(theta)), rtol=1e-8)
    text = repr(result)
    assert len(text) < 600, text
    assert text.startswith(
        f"BilevelResult(hyperparams={float(result.hyperparams):.4g}, "
        f"inner_params=f64[{N}] {_norm_text(result.inner_params)}, history={{"
    )
    assert f"'outer_loss': f64[3] {_norm_text(result.history['outer_loss'])}" in text
    for key in result.history:
        assert f"'{key}': " in text
    assert "'inner_converged': bool[3]" in text


def test_summaries_of_values():
    s = _summary.summarize
    assert s(None) == "None"
    assert s(True) == "True" and s(np.bool_(False)) == "False"
    assert s(3) == "3" and s(jnp.int32(7)) == "7"
    assert s(2.0) == "2.0" and s(1e-12) == "1e-12" and s(jnp.array(0.5)) == "0.5"
    assert s(float("nan")) == "nan" and s(-np.inf) == "-inf"
    assert s(1 + 2j) == "1+2j"
    assert s(np.zeros((3, 0))) == "f64[3,0]"
    assert s(np.arange(4, dtype=np.int32)) == "i32[4]"
    assert s(np.array([3.0, 4.0], dtype=np.float32)) == "f32[2] ‖·‖=5.0"
    assert s(np.array([3j, 4.0])) == "c128[2] ‖·‖=5.0"
    assert s(jnp.ones(4, dtype=jnp.bfloat16)).startswith("bf16[4]")
    assert s({"w": np.ones(4), "b": 0.0}) == "{'w': f64[4] ‖·‖=2.0, 'b': 0.0}"
    assert s((np.ones(1),)) == "(f64[1] ‖·‖=1.0,)"
    assert s(list(range(20))) == "[0, 1, 2, 3, 4, 5, 6, 7, ... (20 items)]"
    assert s("x" * 100) == repr("x" * 100)
    long = s(object.__new__(type("Thing", (), {"__repr__": lambda self: "y" * 200})))
    assert long == "y" * 57 + "..."


def test_other_result_tuples_are_summarized():
    kkt = solvers.KKTSolution(np.ones(N), None, np.zeros(3))
    assert (
        repr(kkt)
        == f"KKTSolution(primal=f64[{N}] ‖·‖=100.0, dual_eq=None, dual_ineq=f64[3] ‖·‖=0.0)"
    )
    bound = diagnostics.JacobianErrorBound(*([np.float64(1.0)] * 8))
    assert repr(bound).startswith("JacobianErrorBound(residual=1.0, solution_error=1.0,")
