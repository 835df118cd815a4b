"""The deep recipe on each image's white cell, cropped at the cell's own scale, for other labs' images.

A model trained on BCCD's whole fields learns BCCD's picture (a small cell among red cells, black
rotation corners, pale lavender nuclei) and calls nearly every centred single cell from another lab
MONOCYTE (results/REPORT.md, "Other labs' images"). Here every image, in training and in
`predict`/`evaluate` alike, is cropped around the cell the localiser finds (bccd_jax.data.localize),
which removes the framing, and the colour augmentation is widened until the stain's hue, saturation
and strength no longer tell the classes apart, which removes BCCD's colours:

- best:          the recipe's `best` (experiments.recipe) on cell crops, plus 90-degree turns
- stain_jitter:  best + hue +-40 degrees, saturation x[0.2, 1.8], HED stain amounts x[0.6, 1.4] +-0.4,
                 gamma exp(+-0.4), contrast x[0.6, 1.4], brightness +-0.2

The choice between them, and against the frame-crop models, is made by a rule fixed in code
(experiments.other_labs): clean TEST first, then an external development folder's balanced accuracy.

    python -m experiments.cell_crops --data-dir DATA --variants stain_jitter
"""

from __future__ import annotations

import dataclasses

from bccd_jax.experiment import Experiment, Variant, preset_variant
from bccd_jax.runner import main_for
from experiments.protocol import PROTOCOLS
from experiments.recipe import BEST, BEST_MODEL

NAME = "cell_crops"

TURNS = dict(BEST, augment=dataclasses.replace(BEST["augment"], rot90=True))  # a cell has no up
STAIN_JITTER = dict(TURNS, augment=dataclasses.replace(TURNS["augment"], hue=40.0, saturation=0.8, stain=0.4,
                                                       gamma=0.4, contrast=0.4, brightness=0.2))


def variants(args) -> list[Variant]:
    epochs = args.proto.epochs_for(NAME)
    return [preset_variant(name, "deep", epochs, group="cell", train=train, **BEST_MODEL)
            for name, train in (("best", TURNS), ("stain_jitter", STAIN_JITTER))]


EXPERIMENT = Experiment(NAME, "deep CNN on cell crops: the recipe, and with its colour augmentation widened",
                        variants, PROTOCOLS)

if __name__ == "__main__":
    main_for(EXPERIMENT)
