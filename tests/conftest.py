"""Shared test setup: a persistent XLA compilation cache so identical programs compile once per session."""

from __future__ import annotations

import os
import tempfile

import bccd_jax  # noqa: F401  first: its XLA:CPU flags must be set before JAX starts a backend
import jax

_CACHE = os.environ.get("BCCD_JAX_TEST_COMPILE_CACHE") or tempfile.mkdtemp(prefix="bccd_jax_test_xla_")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
