"""The study's protocols: image size, seeds, batch size and epochs of every experiment.

- `quick`: the embedded BCCD originals, minutes on a laptop CPU (the README's main command).
- `cpu`: the full augmented set on a 2-core CPU; each experiment fits in 90 minutes there and
  the whole study in 5 hours (wall times of every run in results/REPORT.md). Epochs are fewer
  than the study's because an epoch of the augmented set is ~36 passes over its 277 training
  originals; the overfitting run is the longest so that it can overfit.
- `gpu`: the study's own protocol (120x160, 50 epochs, the overfitting run 200).
"""

from __future__ import annotations

from bccd_jax.experiment import Protocol

PROTOCOLS = {
    "quick": Protocol(
        "quick", "embedded originals, 32x40, minutes on a CPU", dataset="originals", image_size=(32, 40), seeds=5,
        batch_size=32,
        epochs={"optimizers": 50, "regularization": 30, "regularization/overfit": 200, "architecture": 30,
                "architecture/init": 30, "recipe": 30, "vgg": 10},
        group_seeds={"regularization/centering": 10}),
    "cpu": Protocol(
        "cpu", "augmented set, 60x80, 2 CPU cores", dataset="augmented", image_size=(60, 80), seeds=5,
        batch_size=32,
        epochs={"optimizers": 10, "regularization": 5, "regularization/overfit": 30, "architecture": 8,
                "architecture/init": 4, "recipe": 8, "vgg": 10},
        group_seeds={"regularization/overfit": 3, "regularization/centering": 10}),
    "gpu": Protocol(
        "gpu", "the study's own: augmented set, 120x160, 50 epochs", dataset="augmented", image_size=(120, 160),
        seeds=5, batch_size=32,
        epochs={"optimizers": 50, "regularization": 50, "regularization/overfit": 200, "architecture": 50,
                "architecture/init": 50, "recipe": 50, "vgg": 20},
        group_seeds={"regularization/centering": 10}),
}
