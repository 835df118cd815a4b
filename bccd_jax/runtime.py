"""Process-level JAX setup shared by experiments: the persistent compilation cache and seed sharding.

    from bccd_jax.runtime import enable_compilation_cache, seed_sharding
    enable_compilation_cache()                    # before the first jit call
    fit(model, tx, cfg, data, seeds, sharding=seed_sharding(len(seeds)))

See docs/scaling.md for multi-GPU and multi-host use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger("bccd_jax.runtime")

SEED_AXIS = "seed"


def default_cache_dir() -> Path:
    """$BCCD_JAX_COMPILE_CACHE, else ~/.cache/bccd_jax/jax_cache."""
    env = os.environ.get("BCCD_JAX_COMPILE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bccd_jax" / "jax_cache"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in `path` (default: `default_cache_dir()`).

    Every compiled program is stored (no minimum compile time or entry size), so a
    second process running the same configuration loads its executables instead of
    compiling them. Call it at startup, before the first jit call; returns the directory.
    """
    directory = Path(path).expanduser() if path is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:  # a cache already initialised in this process (without a directory) must be re-read
        from jax.experimental.compilation_cache import compilation_cache as cc

        cc.reset_cache()
    except Exception:  # pragma: no cover - older/newer JAX without reset_cache
        pass
    return directory


def seed_sharding(num_seeds: int, devices: Sequence[jax.Device] | None = None) -> NamedSharding | None:
    """A NamedSharding that splits the leading seed axis over all (global) devices, or None.

    None when there is one device, or when `num_seeds` is not divisible by the device
    count (then the reason is logged and the run stays on one device).
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) <= 1:
        return None
    if num_seeds % len(devices):
        log.warning("not sharding %d seeds over %d devices: %d is not divisible by %d; running on one device",
                    num_seeds, len(devices), num_seeds, len(devices))
        return None
    return NamedSharding(Mesh(np.asarray(devices), (SEED_AXIS,)), P(SEED_AXIS))
