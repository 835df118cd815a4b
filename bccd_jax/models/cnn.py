"""The study's CNN family as one configurable Flax linen module.

`base`, `expanded` and `deep` differ only in `conv_blocks` (see
bccd_jax.config.ARCH_PRESETS); dropout, batch norm, kernel counts and sizes, the
initialiser and the input normalisation are parameters, so every variant of the
study is a config, not a new class.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bccd_jax.config import INITS, ModelConfig
from bccd_jax.errors import UserError
from bccd_jax.models.conv import Conv
from bccd_jax.augment import stain_amounts
from bccd_jax.models.pool import max_pool_relu

KERNEL_INITS = {name: getattr(nn.initializers, initializer)() for name, initializer in INITS.items()}
_DEFAULT = ModelConfig()  # the fields' defaults are the config's


def normalize_inputs(x: jnp.ndarray, input_mean: Sequence[float] | None, input_norm: str, grayscale: bool,
                     dtype) -> jnp.ndarray:
    """0..255 pixels -> what the first layer sees.

    "scale": x/255 (after subtracting `input_mean`, the training set's per-channel mean, when
    feature centering is on). "image": each image minus its own per-channel mean, divided by
    its own per-channel standard deviation, so a global colour cast or brightness change of a
    foreign microscope does not reach the network. "density": the same on each channel's optical
    density -ln((x + 1) / 256), which by Beer-Lambert is proportional to the amount of stain: a
    lab's stronger or weaker staining (density scaled per channel) does not reach the network.
    "stain": the same on the amounts of haematoxylin, eosin and the residual (Ruifrok & Johnston's
    deconvolution of the optical density, bccd_jax.augment.stain_amounts): each stain's strength in
    this image, whatever the lab's staining time, is taken out stain by stain, estimated from the image
    alone. `grayscale` averages the channels first.
    """
    x = x.astype(jnp.float32)
    if grayscale:
        x = jnp.broadcast_to(x.mean(axis=-1, keepdims=True), x.shape)
    if input_norm in ("image", "density", "stain"):
        floor = 1.0  # pixel levels: a flat image is not blown up
        if input_norm == "density":
            x, floor = -jnp.log((x + 1.0) / 256.0), 1e-2
        elif input_norm == "stain":
            x, floor = stain_amounts((x + 1.0) / 256.0), 1e-2
        mean = x.mean(axis=(-3, -2), keepdims=True)
        std = x.std(axis=(-3, -2), keepdims=True)
        return ((x - mean) / jnp.maximum(std, floor)).astype(dtype)
    if input_mean is not None:
        x = x - jnp.asarray(input_mean, jnp.float32)
    return (x / 255.0).astype(dtype)


def feature_map_size(cfg, hw: tuple[int, int]) -> tuple[int, int]:
    """The last conv block's output (H, W) for input `hw` of the CNN of ModelConfig `cfg`; a UserError when an
    image that small vanishes."""
    h, w = hw
    for block in cfg.conv_blocks:
        for _ in block:
            if cfg.padding == "VALID":
                h, w = h - cfg.kernel_size + 1, w - cfg.kernel_size + 1
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise UserError(f"{hw[0]}x{hw[1]} images are too small for the {cfg.arch} CNN (nothing is left after its "
                        f"{len(cfg.conv_blocks)} conv blocks); use larger ones")
    return h, w


class CNN(nn.Module):
    """conv blocks (conv[-BN]-ReLU ..., 2x2 max-pool) -> dense -> dropout -> logits (each block's last ReLU
    is applied after its pool: the same function)."""

    conv_blocks: Sequence[Sequence[int]] = _DEFAULT.conv_blocks
    kernel_size: int = _DEFAULT.kernel_size
    dense_features: int = _DEFAULT.dense_features
    dropout: float = _DEFAULT.dropout
    batch_norm: bool = _DEFAULT.batch_norm
    bn_momentum: float = _DEFAULT.bn_momentum
    padding: str = _DEFAULT.padding
    num_classes: int = _DEFAULT.num_classes
    input_mean: Sequence[float] | None = None  # feature centering when set
    initializer: str = _DEFAULT.init  # a KERNEL_INITS name (not `init`: that is nn.Module.init)
    input_norm: str = _DEFAULT.input_norm
    grayscale: bool = _DEFAULT.grayscale
    dtype: jnp.dtype = jnp.dtype(_DEFAULT.dtype)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        """Logits (N, num_classes) float32. `mask` (N,) marks the real rows of a padded training
        batch: batch norm computes its batch statistics (and running averages) over those only."""
        x = normalize_inputs(x, self.input_mean, self.input_norm, self.grayscale, self.dtype)
        kernel_init = KERNEL_INITS[self.initializer]

        def batch_norm(h):
            m = None if mask is None else jnp.broadcast_to(mask.reshape((-1,) + (1,) * (h.ndim - 1)), h.shape)
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3,
                                dtype=self.dtype)(h, mask=m)

        conv = functools.partial(Conv, kernel_size=(self.kernel_size, self.kernel_size), padding=self.padding,
                                 use_bias=not self.batch_norm, kernel_init=kernel_init, dtype=self.dtype)
        for block in self.conv_blocks:
            for i, features in enumerate(block):
                last = i == len(block) - 1  # pool, then ReLU: the same values (ReLU is monotone), a quarter of the work
                if self.batch_norm:
                    x = batch_norm(conv(features)(x))
                    x = max_pool_relu(x) if last else nn.relu(x)
                else:
                    x = conv(features)(x, pool_relu=last) if last else nn.relu(conv(features)(x))
        x = x.reshape((x.shape[0], math.prod(x.shape[1:])))  # not -1: an empty batch has no size to divide
        x = nn.Dense(self.dense_features, kernel_init=kernel_init, dtype=self.dtype)(x)
        if self.batch_norm:
            x = batch_norm(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype)(x)
        return x.astype(jnp.float32)
