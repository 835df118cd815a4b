"""The study's first comparison: the base CNN trained with SGD (lr 0.01), RMSProp and Adam (lr 1e-3).

    python -m experiments.optimizers                      # embedded originals, 5 seeds, 50 epochs
    python -m experiments.optimizers --data-dir PATH      # the full augmented set
"""

from __future__ import annotations

from experiments.common import Variant, main_for, preset_variant

NAME = "optimizers"
DESCRIPTION = "base CNN: SGD 0.01 vs RMSProp 1e-3 vs Adam 1e-3, 50 epochs, all seeds at once"


def variants(args) -> list[Variant]:
    return [preset_variant(opt, "base", group="optimizers", optimizer=opt, epochs=50)
            for opt in ("sgd", "rmsprop", "adam")]


if __name__ == "__main__":
    main_for(NAME, DESCRIPTION, variants)
