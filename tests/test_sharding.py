"""Seed sharding over several devices (4 forced host devices in a subprocess) and the seed strategies.

The subprocess trains 8 seeds with the seed axis sharded over 4 CPU devices (2 seeds
per device, seed_strategy "auto") and the same 8 seeds on one device with plain vmap,
and prints the largest differences; the sharded state must really be split over the 4
devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from bccd_jax.config import TrainConfig
from bccd_jax.errors import UserError
from bccd_jax.models.pool import max_pool_2x2
from bccd_jax.runtime import seed_sharding
from bccd_jax.seeds import resolve_epoch_mode, resolve_seed_strategy

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json
    import jax, numpy as np
    from bccd_jax.config import ModelConfig, TrainConfig
    from bccd_jax.models import build_model
    from bccd_jax.optimizers import make_optimizer
    from bccd_jax.runtime import seed_sharding
    from bccd_jax.data.train_data import TrainData
    from bccd_jax.train import fit

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 16, 20, 3), dtype=np.uint8); y = rng.integers(0, 4, 16).astype(np.int32)
    data = TrainData(jax.numpy.asarray(x), jax.numpy.asarray(y), {})
    model = build_model(ModelConfig(conv_blocks=((4,),), dense_features=8, dropout=0.2))
    seeds = list(range(8))
    out = {"none_for_6": seed_sharding(6) is None}
    # sharded: 2 seeds per device, seed_strategy auto (unrolled per device on CPU: sequential needs one device); reference: plain vmap
    cfg = TrainConfig(epochs=2, batch_size=8, seed_strategy="auto", epoch_mode="loop")
    a = fit(model, make_optimizer(cfg), cfg, data, seeds, sharding=seed_sharding(len(seeds)))
    ref = TrainConfig(epochs=2, batch_size=8, seed_strategy="vmap", epoch_mode="loop")
    b = fit(model, make_optimizer(ref), ref, data, seeds)
    leaf = jax.tree.leaves(a.state.params)[0]
    diff = jax.tree.map(lambda u, v: float(np.abs(np.asarray(u) - np.asarray(v)).max()), a.state.params, b.state.params)
    out.update(devices=len(leaf.sharding.device_set), spec=str(leaf.sharding.spec),
               shard_shape=list(leaf.sharding.shard_shape(leaf.shape)), param_diff=max(jax.tree.leaves(diff)),
               loss_diff=float(np.abs(np.asarray(a.history["train_loss"]) - np.asarray(b.history["train_loss"])).max()),
               loss=a.history["train_loss"])
    print("RESULT " + json.dumps(out))
""")


def test_seeds_sharded_over_four_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    assert out["none_for_6"]
    assert out["devices"] == 4 and "seed" in out["spec"] and out["shard_shape"][0] == 2, out
    assert out["param_diff"] < 1e-5 and out["loss_diff"] < 1e-5, out
    assert len({round(v, 4) for v in out["loss"][0]}) == 8  # the seeds really differ


def test_seed_sharding_single_device_is_none():
    assert seed_sharding(8, devices=jax.devices()[:1]) is None


def test_auto_resolution():
    assert resolve_seed_strategy("auto", 8, "cpu") == "sequential"
    assert resolve_seed_strategy("auto", 1, "cpu") == "sequential"
    assert resolve_seed_strategy("auto", 1, "gpu") == "unroll"
    assert resolve_seed_strategy("auto", 8, "gpu") == "map"
    assert resolve_seed_strategy("vmap", 8, "cpu") == "vmap"
    assert resolve_epoch_mode("scan", "cpu") == "scan"
    assert resolve_epoch_mode("auto", "gpu") == "scan"
    TrainConfig(seed_strategy="auto").validate()
    with pytest.raises(UserError):
        TrainConfig(seed_strategy="fold").validate()
    TrainConfig(seed_strategy="sequential").validate()


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 8, 10, 2)])
def test_max_pool_2x2_matches_flax(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    ref = lambda v: nn.max_pool(jax.nn.relu(v), (2, 2), strides=(2, 2))
    new = lambda v: max_pool_2x2(jax.nn.relu(v))
    np.testing.assert_array_equal(new(x), ref(x))
    g_ref = jax.grad(lambda v: jnp.sum(ref(v) ** 2))(x)
    g_new = jax.grad(lambda v: jnp.sum(new(v) ** 2))(x)
    np.testing.assert_allclose(g_new, g_ref, rtol=1e-6, atol=1e-7)


def test_enable_compilation_cache_writes_entries(tmp_path):
    code = ("import sys, jax, jax.numpy as jnp\n"
            "from bccd_jax.runtime import enable_compilation_cache\n"
            "d = enable_compilation_cache(sys.argv[1])\n"
            "assert jax.config.jax_compilation_cache_dir == str(d)\n"
            "jax.jit(lambda a: jnp.sin(a) * 3)(jnp.ones(5)).block_until_ready()\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], check=True, cwd=ROOT, timeout=60,
                   env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert any(files for _, _, files in os.walk(tmp_path / "c"))
