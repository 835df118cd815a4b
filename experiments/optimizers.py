"""The study's first comparison: the base CNN trained with SGD (lr 0.01), RMSProp and Adam (lr 1e-3).

    python -m experiments.optimizers                                  # embedded originals (protocol quick)
    python -m experiments.optimizers --data-dir .../dataset2-master   # the full augmented set (protocol cpu)
"""

from __future__ import annotations

from bccd_jax.experiment import Experiment, Variant, main_for, preset_variant
from experiments.protocol import PROTOCOLS

NAME = "optimizers"


def variants(args) -> list[Variant]:
    epochs = args.proto.epochs_for(NAME)
    return [preset_variant(opt, "base", epochs, group="optimizers", optimizer=opt) for opt in ("sgd", "rmsprop", "adam")]


EXPERIMENT = Experiment(NAME, "base CNN: SGD 0.01 vs RMSProp 1e-3 vs Adam 1e-3, all seeds at once", variants, PROTOCOLS)

if __name__ == "__main__":
    main_for(EXPERIMENT)
