"""VGG16 for transfer learning: the Keras conv stack in Flax with a new 4-way head.

The 13 conv layers carry the Keras names (`block1_conv1` ... `block5_conv3`) so
pretrained weights map by name (bccd_jax.models.vgg_weights reads them), and preprocessing
(Keras 'caffe' mode: RGB->BGR, minus the ImageNet BGR mean, no scaling) lives inside the
model so callers feed the same 0..255 images as to every other model of the project.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bccd_jax import CLASS_NAMES
from bccd_jax.errors import UserError

VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""Conv widths per block; a 2x2 max-pool follows each block."""

def _conv_table(blocks: Sequence[Sequence[int]]) -> tuple[tuple[str, int, int], ...]:
    """(Keras name, input channels, output channels) of each conv, chaining widths from RGB."""
    table, cin = [], 3
    for b, block in enumerate(blocks, start=1):
        for i, cout in enumerate(block, start=1):
            table.append((f"block{b}_conv{i}", cin, cout))
            cin = cout
    return tuple(table)


VGG16_CONV: tuple[tuple[str, int, int], ...] = _conv_table(VGG16_BLOCKS)
"""(Keras name, input channels, output channels) of the 13 conv layers, in order."""

CONV_NAMES: tuple[str, ...] = tuple(name for name, _, _ in VGG16_CONV)

CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
"""ImageNet per-channel mean (BGR) subtracted by keras.applications.vgg16.preprocess_input."""

MIN_SIZE = 32
"""Smallest height/width: five 2x2 VALID pools must leave at least one pixel."""

POOLINGS = ("gap", "flatten")

ConvWeights = dict[str, dict[str, np.ndarray]]
"""Keras layer name -> {"kernel": HWIO float32 array, "bias": (out,) float32 array}."""


def vgg16_conv_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """The expected kernel (HWIO) and bias shapes of each VGG16 conv layer, by Keras name."""
    return {name: {"kernel": (3, 3, cin, cout), "bias": (cout,)} for name, cin, cout in VGG16_CONV}


# --------------------------------------------------------------------------- model


def block_of(name: str) -> int:
    """1..5: the block of a Keras VGG16 conv layer name ('block3_conv2' -> 3)."""
    return int(name[len("block")])


class VGG16(nn.Module):
    """VGG16 conv stack (Keras names, caffe preprocessing inside) + a new head for the 4 classes.

    Head: global average pooling ('gap', size-independent) or 'flatten' -> Dense(head_features)
    -> ReLU -> Dropout(dropout, 'dropout' rng) -> Dense(num_classes) named `head_out`.
    `dtype` is the compute dtype (bf16 for mixed precision); params are always float32.

    `first_block` > 1 makes the *top* of the network: its input is the output of blocks
    1..first_block-1 (a frozen prefix whose features were computed once, bccd_jax.features),
    and it has only the layers from block `first_block` on, under the same names, so its params
    are a subtree of the full model's.
    """

    num_classes: int = len(CLASS_NAMES)
    head_features: int = 256
    dropout: float = 0.5
    pooling: str = "gap"
    first_block: int = 1
    dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.pooling not in POOLINGS:
            raise UserError(f"VGG16 pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"VGG16 dropout must be in [0, 1), got {self.dropout}")
        if not 1 <= self.first_block <= len(VGG16_BLOCKS) + 1:
            raise UserError(f"VGG16 first_block must be 1..{len(VGG16_BLOCKS) + 1}, got {self.first_block}")
        # Keras' default initialisers (glorot_uniform kernels, zero biases): the study's head was built in Keras.
        init = dict(kernel_init=nn.initializers.glorot_uniform(), bias_init=nn.initializers.zeros,
                    dtype=self.dtype, param_dtype=jnp.float32)
        for name, _, cout in VGG16_CONV:
            if block_of(name) >= self.first_block:
                # setattr in setup names each submodule after its attribute: the Keras name.
                setattr(self, name, nn.Conv(cout, (3, 3), padding="SAME", **init))
        self.head_dense = nn.Dense(self.head_features, **init)
        self.head_dropout = nn.Dropout(self.dropout)
        self.head_out = nn.Dense(self.num_classes, **init)

    def features(self, x: jnp.ndarray, last_block: int = len(VGG16_BLOCKS)) -> jnp.ndarray:
        """The output of blocks first_block..last_block after their pools, float32.

        With first_block 1, `x` is 0..255 RGB NHWC; otherwise the previous block's output.
        """
        if self.first_block == 1:
            if x.ndim != 4 or x.shape[-1] != 3:
                raise UserError(f"VGG16 expects NHWC RGB images, got shape {tuple(x.shape)}")
            if min(x.shape[1], x.shape[2]) < MIN_SIZE:
                raise UserError(f"VGG16 needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {x.shape[1]}x{x.shape[2]}")
            x = x.astype(jnp.float32)[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
        x = x.astype(self.dtype)
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            if not self.first_block <= b <= last_block:
                continue
            for i in range(1, len(block) + 1):
                x = nn.relu(getattr(self, f"block{b}_conv{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return x.astype(jnp.float32)

    def __call__(self, x: jnp.ndarray, train: bool = False, features_only: bool = False) -> jnp.ndarray:
        """Logits (N, num_classes) float32; `features_only` returns `features(x)` instead."""
        f = self.features(x)
        if features_only:
            return f
        h = f.mean(axis=(1, 2)) if self.pooling == "gap" else f.reshape((f.shape[0], -1))
        h = nn.relu(self.head_dense(h.astype(self.dtype)))
        h = self.head_dropout(h, deterministic=not train)
        return self.head_out(h).astype(jnp.float32)
