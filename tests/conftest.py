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
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
    ).strip()

# XLA compiles the test programs with LLVM's optimizations off (its own HLO passes all run).
# Compilation is most of the suite's time: this cuts the CPU time of a solver test file by about
# a fifth (tests/solvers/test_proximal.py: 55.6 -> 45.4 s user), and the values agree with the
# optimized build to rounding (every check is at >= 1e-12 relative). Subprocesses started by
# tests (tests/test_docs.py) inherit it. A level already in XLA_FLAGS is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
