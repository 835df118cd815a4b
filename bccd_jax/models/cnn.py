"""The study's CNN family as one configurable Flax linen module.

`base`, `expanded` and `deep` differ only in `conv_blocks` (see
bccd_jax.config.ARCH_PRESETS); dropout, batch norm, kernel counts and sizes are
parameters so every variant of the study is a config, not a new class.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def scale_inputs(x: jnp.ndarray, input_mean: Sequence[float] | None, dtype) -> jnp.ndarray:
    """0..255 pixels -> roughly unit scale; with `input_mean`, feature centering first."""
    x = x.astype(jnp.float32)
    if input_mean is not None:
        x = x - jnp.asarray(input_mean, jnp.float32)
    return (x / 255.0).astype(dtype)


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool, stride 2, VALID (odd trailing rows/columns dropped), as `nn.max_pool(x, (2, 2), (2, 2))`.

    Written as the maximum of four strided slices: the same values, and on XLA:CPU a
    3-5x cheaper backward pass than reduce_window's select_and_scatter (benchmarks/RESULTS.md).
    Gradients match nn.max_pool except at exact ties inside a window (split instead of
    sent to the first), which after a ReLU only happen at zeros, where the ReLU stops them.
    """
    h, w = (x.shape[-3] // 2) * 2, (x.shape[-2] // 2) * 2
    x = x[..., :h, :w, :]
    return jnp.maximum(jnp.maximum(x[..., 0::2, 0::2, :], x[..., 0::2, 1::2, :]),
                       jnp.maximum(x[..., 1::2, 0::2, :], x[..., 1::2, 1::2, :]))


class CNN(nn.Module):
    """conv blocks (conv[-BN]-ReLU ..., 2x2 max-pool) -> dense -> dropout -> logits."""

    conv_blocks: Sequence[Sequence[int]] = ((32,),)
    kernel_size: int = 3
    dense_features: int = 128
    dropout: float = 0.0
    batch_norm: bool = False
    bn_momentum: float = 0.99  # Keras' default; see ModelConfig.bn_momentum
    padding: str = "VALID"
    num_classes: int = 4
    input_mean: Sequence[float] | None = None  # feature centering when set
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = scale_inputs(x, self.input_mean, self.dtype)
        batch_norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                       epsilon=1e-3, dtype=self.dtype)
        for block in self.conv_blocks:
            for features in block:
                x = nn.Conv(features, (self.kernel_size, self.kernel_size), padding=self.padding,
                            use_bias=not self.batch_norm, dtype=self.dtype)(x)
                if self.batch_norm:
                    x = batch_norm()(x)
                x = nn.relu(x)
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.dense_features, dtype=self.dtype)(x)
        if self.batch_norm:
            x = batch_norm()(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return x.astype(jnp.float32)
