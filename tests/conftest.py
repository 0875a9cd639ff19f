"""Test configuration: float64 everywhere; tests/ on the path so sub-folders import helpers."""

import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
