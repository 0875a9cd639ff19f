"""Test configuration: float64 everywhere; tests/ on the path so sub-folders import helpers."""

import os
import pathlib
import sys

# Eight host (CPU) devices for tests/test_sharding.py. XLA reads the flag when JAX creates its
# CPU backend, so it is set here, before any test touches a device. In-process rather than a
# subprocess per sharded test: pytest then reports each check with its own assertion, and no
# test pays a second interpreter start and JAX import. Other tests are unaffected: their arrays
# live on device 0 as before, and the test suite's CPU time is the same with or without the flag
# (measured on tests/test_implicit.py). A value already in XLA_FLAGS is kept.
#
# XLA's CPU compiler without its newer fusion emitters (``--xla_cpu_use_fusion_emitters=false``):
# the suite is mostly compilation (each test traces and compiles its own programs), and the
# older emitters compile the same programs about twice as fast (an L-BFGS hypergradient: 2.4 s
# against 5.5 s for six programs), and the whole suite passes either way: 1,951 test-seconds
# instead of 2,940 (16.8 min instead of 25 on two workers). The flag changes how fused
# element-wise loops are generated, not what they compute; benchmarks and users keep XLA's
# defaults. (``--xla_backend_optimization_level=0`` would save a further quarter but changes
# the rounding: seven tests whose outcome hangs on the last bits fail with it, among them an
# Armijo test at the noise floor of f and an unrolled Rosenbrock run's iteration count.)
# Tests spawned as subprocesses (docs pages, tutorials, the CLI) inherit the flags.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + [
        f"--{flag}"
        for flag in ("xla_force_host_platform_device_count=8", "xla_cpu_use_fusion_emitters=false")
        if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", "")
    ]
).strip()

import jax
import pytest

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).parent))


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs_after_each_module():
    """Drop JAX's caches of traced and compiled programs once a test module is done.

    A pytest-xdist worker runs hundreds of modules, each compiling its own programs, which no
    other module reuses; kept, they grew each worker to over 5 GB by the end of the suite. (A CI
    run also ended in a segmentation fault inside XLA's compiler late in the suite; whether the
    two are linked is not known.)
    """
    yield
    jax.clear_caches()
