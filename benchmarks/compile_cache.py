"""Does the persistent compilation cache work: a small fit() twice, each in a fresh process sharing one new
cache directory (bccd_jax.runtime.enable_compilation_cache); `python -m benchmarks.bench --compile-cache-check`
records it in results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CACHE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import collections, jax.monitoring
events = collections.defaultdict(float)
jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: events.__setitem__(name, events[name] + secs))
from bccd_jax.runtime import enable_compilation_cache
enable_compilation_cache(sys.argv[1])
import numpy as np, jax
from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.models import build_model
from bccd_jax.optimizers import make_optimizer
from bccd_jax.data.train_data import TrainData
from bccd_jax.train import fit
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (64, 120, 160, 3), dtype=np.uint8); y = rng.integers(0, 4, 64).astype(np.int32)
data = TrainData(jax.device_put(x), jax.device_put(y), {"test": (jax.device_put(x[:32]), jax.device_put(y[:32]))})
cfg = TrainConfig(epochs=3, batch_size=32, epoch_mode=sys.argv[2], seed_strategy="auto")
res = fit(build_model(ModelConfig.preset("base", dropout=0.2)), make_optimizer(cfg), cfg, data, [0, 1])
jit_s = sum(v for k, v in events.items() if k.startswith("/jax/core/compile/") or k.startswith("/jax/compilation_cache/cache_retrieval"))
print("RESULT " + json.dumps({"compile_s": jit_s, "fit_compile_estimate_s": res.compile_s, "events": dict(events), "wall_s": res.wall_s,
      "process_s": time.perf_counter() - t0, "test_acc": res.history["test_acc"][-1]}))
"""


def compile_cache_check(epoch_mode: str = "auto") -> dict:
    """A small fit() twice, each in a fresh subprocess sharing one new cache directory."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="bccd_jax_cache_") as cache:
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", _CACHE_CHILD, cache, epoch_mode], capture_output=True,
                                 text=True, cwd=str(HERE.parent), check=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
            runs.append(json.loads(line[len("RESULT "):]))
        entries = sum(len(f) for _, _, f in os.walk(cache))
    first, second = runs
    return dict(epoch_mode=epoch_mode, first=first, second=second, cache_entries=entries,
                compile_fraction=second["compile_s"] / max(first["compile_s"], 1e-9),
                process_fraction=second["process_s"] / max(first["process_s"], 1e-9),
                same_numbers=first["test_acc"] == second["test_acc"])
