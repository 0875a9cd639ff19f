"""Test configuration: float64 everywhere, one CPU device per test process."""

import jax

jax.config.update("jax_enable_x64", True)
