"""The study's protocols: image size, seeds, batch size and epochs of every experiment.

- `quick`: the embedded BCCD originals, minutes on a laptop CPU (the README's main command).
- `cpu`: the full augmented set at 60x80 on a 2-core CPU, at the study's own budgets where its claims
  are about training length: the optimizers 50 epochs, the overfitting run 200, dropout, batch norm
  and centering (base and expanded CNN) 30, past the base CNN's overfitting point; centering, a claim
  about initialisations, with 8 seeds; VGG16's frozen variants 20 epochs, all-trainable and scratch
  what two cores allow. The deep recipe and the architecture screens keep their short budgets (the
  wall time of every committed run is in results/REPORT.md).
- `gpu`: the study's own protocol (120x160, 50 epochs, the overfitting run 200).

`cpu` checkpoints after every epoch (an epoch of the augmented set takes minutes there), so a killed
run resumes losing at most one epoch; `gpu` every 5, `quick` every 10.
"""

from __future__ import annotations

from bccd_jax.experiment import Protocol

PROTOCOLS = {
    "quick": Protocol(
        "quick", "embedded originals, 32x40, minutes on a CPU", dataset="originals", image_size=(32, 40), seeds=5,
        batch_size=32,
        epochs={"optimizers": 50, "regularization": 30, "regularization/overfit": 200, "architecture": 30,
                "recipe": 30, "recipe/tuned": 10, "vgg": 10},
        group_seeds={"regularization/centering": 10}),
    "cpu": Protocol(
        "cpu", "augmented set, 60x80, 2 CPU cores", dataset="augmented", image_size=(60, 80), seeds=5,
        batch_size=32,
        epochs={"optimizers": 50, "regularization": 30, "regularization/overfit": 200, "architecture": 3,
                "architecture/centering": 30, "recipe": 8, "recipe/tuned": 3, "vgg/frozen_blocks1-4": 20,
                "vgg/frozen_blocks1-3": 20, "vgg": 2},
        group_seeds={"optimizers/optimizers": 3, "regularization/overfit": 3, "regularization/dropout": 3,
                     "regularization/batchnorm": 3, "regularization/centering": 8, "architecture/depth": 3,
                     "architecture/centering": 3, "architecture/kernels": 3, "vgg/frozen_blocks1-4": 3,
                     "vgg/frozen_blocks1-3": 3, "vgg/all_trainable": 2, "vgg/scratch": 2},
        checkpoint_every=1),
    "gpu": Protocol(
        "gpu", "the study's own: augmented set, 120x160, 50 epochs", dataset="augmented", image_size=(120, 160),
        seeds=5, batch_size=32,
        epochs={"optimizers": 50, "regularization": 50, "regularization/overfit": 200, "architecture": 50,
                "recipe": 50, "recipe/tuned": 15, "vgg": 20},
        group_seeds={"regularization/centering": 10}, checkpoint_every=5),
}
