"""The CUDA path without a GPU: what `auto` runs on a GPU must lower for the cuda platform.

`jax.export` traces and lowers for a platform that is not present, so every primitive of the
jitted train step, scanned epoch and evaluation (seed strategy `map` and epoch mode `scan`,
which `auto` picks off CPU, in float32 and bfloat16, with augmentation and batch norm) must
have a CUDA lowering. Nothing is executed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from bccd_jax.config import AugmentConfig, ModelConfig, TrainConfig
from bccd_jax.models import build_model
from bccd_jax.optimizers import make_optimizer
from bccd_jax.seeds import MultiSeedTrainer, resolve_epoch_mode, resolve_seed_strategy

SEEDS, N, H, W = 2, 40, 24, 32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_epoch_and_evaluation_lower_for_cuda(dtype):
    strategy, mode = resolve_seed_strategy("auto", SEEDS, "gpu"), resolve_epoch_mode("auto", "gpu")
    assert (strategy, mode) == ("map", "scan")
    model = build_model(ModelConfig.preset("deep", dtype=dtype, batch_norm=True, conv_blocks=((8, 8), (8,)),
                                           dense_features=16))
    cfg = TrainConfig(batch_size=16, seed_strategy=strategy, epoch_mode=mode, schedule="cosine",
                      augment=AugmentConfig(flip=True, rotate=10, shift=0.05, hue=5, stain=0.05), eval_tta="flips")
    tr = MultiSeedTrainer(model, make_optimizer(cfg, steps_per_epoch=3), cfg, N)
    images = jax.ShapeDtypeStruct((N, H, W, 3), jnp.uint8)
    labels = jax.ShapeDtypeStruct((N,), jnp.int32)
    state = jax.eval_shape(lambda: tr.init_state(list(range(SEEDS)), np.zeros((1, H, W, 3), np.uint8)))
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    idx = jax.ShapeDtypeStruct((SEEDS, cfg.batch_size), jnp.int32)
    mask = jax.ShapeDtypeStruct((cfg.batch_size,), jnp.bool_)
    lowered = {
        "train_epoch": export.export(tr.train_epoch, platforms=["cuda"])(state, images, labels, scalar),
        "train_step": export.export(tr.train_step, platforms=["cuda"])(state, images, labels, idx, mask, scalar,
                                                                      scalar),
        "evaluate": export.export(tr.evaluate, platforms=["cuda"])(state, images, labels),
    }
    for name, exp in lowered.items():
        assert exp.platforms == ("cuda",), name
        text = exp.mlir_module()
        assert "stablehlo.convolution" in text, name
        if name == "train_epoch":
            assert "stablehlo.while" in text  # the scanned epoch and the lax.map over seeds
