"""XLA:CPU settings applied when bccd_jax is imported, before JAX starts a backend.

jaxlib 0.10 routes CPU convolutions (and the weight-gradient convolutions of the
backward pass) through YNNPACK fusions by default. On a 2-core Xeon these convolutions
ran 4-7x slower than XLA's Eigen ones (deep CNN step at batch 32, 120x160: 5.6 s with
YNNPACK, 1.45 s without); on a 2-core AMD EPYC the deep step at batch 32, 60x80 took
375 ms with them and 178 ms without (benchmarks/RESULTS.md, `python -m benchmarks.xla_cpu_ab`),
so bccd_jax turns the YNNPACK fusions off. The flag only concerns the CPU backend.

It is added to XLA_FLAGS only when all of these hold:
- BCCD_JAX_XLA_CPU_DEFAULTS is not "1" (set it to keep XLA's own defaults);
- XLA_FLAGS does not already mention the flag (the user's choice wins);
- the installed jaxlib knows the flag (XLA aborts the process on an unknown flag),
  which is checked by looking for its name in jaxlib's shared libraries;
- no JAX backend is running yet (XLA reads XLA_FLAGS once, when the backend starts).
"""

from __future__ import annotations

import importlib.util
import logging
import mmap
import os
import sys
from pathlib import Path

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
"""Empty list of YNNPACK fusion kinds: XLA:CPU falls back to its Eigen convolutions and dots."""
OPT_OUT_ENV = "BCCD_JAX_XLA_CPU_DEFAULTS"

log = logging.getLogger("bccd_jax")


def _jaxlib_knows(flag_name: bytes) -> bool:
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        # the XLA flag table lives in the largest library; look there first
        libs = sorted(Path(folder).glob("*.so"), key=lambda p: p.stat().st_size, reverse=True)
        for lib in libs:
            try:
                with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    if m.find(flag_name) >= 0:
                        return True
            except (OSError, ValueError):
                continue
    return False


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def configure_xla_cpu() -> str | None:
    """Add YNN_FLAG to XLA_FLAGS when the conditions above hold; return the flag added, or None."""
    if os.environ.get(OPT_OUT_ENV) == "1":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return None
    if not _jaxlib_knows(b"xla_cpu_experimental_ynn_fusion_type"):
        return None
    if _backend_started():
        if sys.modules["jax"].default_backend() == "cpu":
            log.warning("bccd_jax was imported after JAX started its backend: XLA:CPU keeps its YNNPACK "
                        "convolutions (4-7x slower here); import bccd_jax first or set XLA_FLAGS=%s", YNN_FLAG)
        return None
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return YNN_FLAG
