"""Shared test setup: a persistent XLA compilation cache so identical programs compile once per test run."""

from __future__ import annotations

import os
import tempfile

import bccd_jax  # noqa: F401  first: its XLA:CPU flags must be set before JAX starts a backend
import jax

_CACHE = os.environ.get("BCCD_JAX_TEST_COMPILE_CACHE") or tempfile.mkdtemp(prefix="bccd_jax_test_xla_")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402

DATA_ENV = "BCCD_DATA_DIR"
"""The full augmented set (the dataset2-master folder) for the tests that need it; they skip without it."""


@pytest.fixture(scope="session")
def full_data_dir():
    from pathlib import Path

    path = os.environ.get(DATA_ENV)
    if not path:
        pytest.skip(f"needs the full augmented data set: set {DATA_ENV} to its dataset2-master folder")
    if not Path(path, "images").is_dir() and not Path(path, "TRAIN").is_dir():
        pytest.fail(f"{DATA_ENV}={path} has no images/ (or TRAIN/) folder: not the dataset2-master folder")
    return Path(path)
