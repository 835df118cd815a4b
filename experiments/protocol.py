"""The study's protocols: image size, seeds, batch size and epochs of every experiment.

- `quick`: the embedded BCCD originals, minutes on a laptop CPU (the README's main command).
- `cpu`: the full augmented set on a 2-core CPU, sized so that each experiment fits in 90 minutes
  there (the wall time of every committed run is in results/REPORT.md). Epochs are fewer
  than the study's because an epoch of the augmented set is ~36 passes over its 277 training
  originals; the overfitting run is the longest so that it can overfit.
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
        epochs={"optimizers": 5, "regularization": 3, "regularization/overfit": 15, "architecture": 3,
                "recipe": 8, "recipe/tuned": 3, "vgg/frozen_blocks1-4": 4, "vgg/frozen_blocks1-3": 2, "vgg": 1},
        group_seeds={"regularization/overfit": 3, "regularization/dropout": 3, "regularization/batchnorm": 3,
                     "regularization/centering": 5, "architecture/depth": 3, "architecture/kernels": 3,
                     "vgg/frozen_blocks1-4": 3, "vgg/frozen_blocks1-3": 3, "vgg/all_trainable": 1,
                     "vgg/scratch": 1},
        checkpoint_every=1),
    "gpu": Protocol(
        "gpu", "the study's own: augmented set, 120x160, 50 epochs", dataset="augmented", image_size=(120, 160),
        seeds=5, batch_size=32,
        epochs={"optimizers": 50, "regularization": 50, "regularization/overfit": 200, "architecture": 50,
                "recipe": 50, "recipe/tuned": 15, "vgg": 20},
        group_seeds={"regularization/centering": 10}, checkpoint_every=5),
}
