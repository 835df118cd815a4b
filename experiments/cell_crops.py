"""The deep recipe on each image's white cell, cropped at the cell's own scale, for other labs' images.

A model trained on BCCD's whole fields learns BCCD's picture (a small cell among red cells, black
rotation corners, pale lavender nuclei) and calls nearly every centred single cell from another lab
MONOCYTE (results/REPORT.md, "Other labs' images"). Here every image, in training and in
`predict`/`evaluate` alike, is cropped around the cell the localiser finds (bccd_jax.data.localize),
which removes the framing; the variants then widen one part of the recipe's colour augmentation at a
time, to find what keeps BCCD's colours from deciding the class:

- best:               the recipe's `best` (experiments.recipe) on cell crops, plus 90-degree turns
- density:            best, each image's optical density standardised instead of its pixels
- saturation:         best + saturation x[0.2, 1.8] (the recipe's: x[0.8, 1.2])
- stain:              best + HED stain amounts x[0.6, 1.4] +-0.4 (the recipe's: 0.05)
- colour_half:        best + hue +-20 degrees, saturation x[0.5, 1.5], stain 0.2, gamma exp(+-0.3), contrast
                      x[0.7, 1.3], brightness +-0.15
- stain_jitter_hue10: best + saturation x[0.2, 1.8], stain 0.4, gamma exp(+-0.4), contrast x[0.6, 1.4],
                      brightness +-0.2 (hue as the recipe's, +-10 degrees)
- stain_jitter:       stain_jitter_hue10 with hue +-40 degrees
- labs:               best + what labs differ in: any hue (+-180 degrees), saturation x[0.2, 1.8], stain 0.3,
                      colour cast x[0.7, 1.3] per channel, gamma exp(+-0.4), contrast x[0.6, 1.4], brightness
                      +-0.15, and on half of the images zoom x[1/1.3, 1.3], resolution down to 1/2, blur sigma
                      up to 1 px
- labs_stain:         labs on each image's H, E and residual stain amounts standardised (input_norm=stain)
- labs_grey:          labs on grey images (the colour channels averaged)
- labs_half:          labs with its colour transforms on half of the images (the others keep BCCD's colours)
- saturation_grey:    saturation on grey images: no colour to learn, and none of labs' framing, blur or contrast
                      changes: what grey input alone costs clean TEST and gives other labs (one seed, 8 epochs,
                      results/screens/saturation-grey: TEST 0.743 against saturation's 0.883 over 5 seeds, and the
                      development folder's balanced accuracy 0.583 against 0.655; colour carries BCCD's eosinophils)

A one-seed, 3-epoch screen of six of them (cpu protocol, 60x80; each run as `python -m experiments.recipe
--data-dir DATA --variants best --crop cell --seeds 1 --epochs 3 --set input_norm=... augment.rot90=true
augment.FIELD=...` with the variant's settings, which `python -m experiments.cell_crops --seeds 1 --epochs 3
--variants NAME` declares; then `python -m bccd_jax.evaluate --run RUN FOLDER` on an external development
folder of another lab's 400 images) gave TEST accuracy / the folder's balanced accuracy: density 0.795 / 0.370,
stain 0.803 / 0.483, colour_half 0.824 / 0.488, stain_jitter 0.749 / 0.663, stain_jitter_hue10 0.803 / 0.653,
saturation 0.838 / 0.618. The saturation range carries the other lab's images; hue and stain jitter cost
BCCD's TEST and add little there. So the study's cpu step trains `saturation` at the protocol's seeds and
epochs; the model to use elsewhere is then chosen by the rule fixed in experiments.other_labs (clean TEST
first, then the development folder).

    python -m experiments.cell_crops --data-dir DATA --variants saturation
"""

from __future__ import annotations

import dataclasses

from bccd_jax.experiment import Experiment, Variant, preset_variant
from bccd_jax.runner import main_for
from experiments.protocol import PROTOCOLS
from experiments.recipe import BEST, BEST_MODEL

NAME = "cell_crops"


def widened(**colour) -> dict:
    """The recipe's best with 90-degree turns (a cell has no up) and the colour augmentation's `colour` fields."""
    return dict(BEST, augment=dataclasses.replace(BEST["augment"], rot90=True, **colour))


STRONG = dict(saturation=0.8, stain=0.4, gamma=0.4, contrast=0.4, brightness=0.2)
# what labs differ in: any hue (a full turn), yellow and blue casts, washed-out and over-stained slides, low
# contrast, defocus and low resolution (on half of the images, as the zoom that varies the framing)
LABS = dict(hue=180.0, saturation=0.8, stain=0.3, cast=0.3, gamma=0.4, contrast=0.4, brightness=0.15, blur=1.0,
            lowres=1.0, scale=0.3, heavy_p=0.5)
TRAIN = {
    "best": widened(),
    "density": widened(),
    "saturation": widened(saturation=STRONG["saturation"]),
    "stain": widened(stain=STRONG["stain"]),
    "colour_half": widened(hue=20.0, saturation=0.5, stain=0.2, gamma=0.3, contrast=0.3, brightness=0.15),
    "stain_jitter_hue10": widened(**STRONG),
    "stain_jitter": widened(hue=40.0, **STRONG),
    "labs": widened(**LABS),
    "labs_stain": widened(**LABS),
    "labs_grey": widened(**LABS),
    "labs_half": widened(**dict(LABS, colour_p=0.5)),
    "saturation_grey": widened(saturation=STRONG["saturation"]),
}
MODEL = {"density": dict(BEST_MODEL, input_norm="density"), "labs_stain": dict(BEST_MODEL, input_norm="stain"),
         "labs_grey": dict(BEST_MODEL, grayscale=True), "saturation_grey": dict(BEST_MODEL, grayscale=True)}


def variants(args) -> list[Variant]:
    epochs = args.proto.epochs_for(NAME)
    return [preset_variant(name, "deep", epochs, group="cell", train=train, **MODEL.get(name, BEST_MODEL))
            for name, train in TRAIN.items()]


EXPERIMENT = Experiment(NAME, "deep CNN on cell crops: the recipe, and its colour augmentation widened part by part",
                        variants, PROTOCOLS)

if __name__ == "__main__":
    main_for(EXPERIMENT)
