"""Model registry: a `ModelConfig` (plus the training mean, for feature centering) -> a Flax module."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bccd_jax.config import ModelConfig
from bccd_jax.errors import UserError
from bccd_jax.models.cnn import CNN


def build_model(cfg: ModelConfig, train_mean: Sequence[float] | None = None, first_block: int = 1) -> nn.Module:
    """The Flax module for `cfg`. `train_mean` is required when cfg.feature_centering is on.
    `first_block` > 1 (vgg16 only): the top of the network above a cached frozen prefix."""
    cfg.validate()
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    mean = None
    if cfg.feature_centering:
        if train_mean is None:
            raise UserError("feature_centering needs the training-set mean; pass train_mean=dataset.train_mean()")
        mean = tuple(float(m) for m in train_mean)
    if cfg.arch == "vgg16":
        from bccd_jax.models.vgg import VGG16

        if cfg.input_norm != "scale" or cfg.grayscale or cfg.feature_centering:
            raise UserError("vgg16 applies ImageNet's own preprocessing (caffe mode): input_norm, grayscale and "
                            "feature_centering are for the CNN family")

        return VGG16(num_classes=cfg.num_classes, head_features=cfg.dense_features, dropout=cfg.dropout,
                     first_block=first_block, dtype=dtype)
    return CNN(conv_blocks=tuple(tuple(b) for b in cfg.conv_blocks), kernel_size=cfg.kernel_size,
               dense_features=cfg.dense_features, dropout=cfg.dropout, batch_norm=cfg.batch_norm,
               bn_momentum=cfg.bn_momentum, padding=cfg.padding, num_classes=cfg.num_classes, input_mean=mean,
               initializer=cfg.init, input_norm=cfg.input_norm, grayscale=cfg.grayscale, dtype=dtype)


__all__ = ["CNN", "build_model"]
