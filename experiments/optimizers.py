"""The study's first comparison: the base CNN trained with SGD (lr 0.01), RMSProp and Adam (lr 1e-3).

    python -m experiments.optimizers                                  # embedded originals (protocol quick)
    python -m experiments.optimizers --data-dir .../dataset2-master   # the full augmented set (protocol cpu)
"""

from __future__ import annotations

from bccd_jax.experiment import Experiment, Variant, preset_variant
from bccd_jax.runner import main_for
from experiments.protocol import PROTOCOLS

NAME = "optimizers"


def variants(args) -> list[Variant]:
    """SGD, RMSProp, Adam; a protocol may give one of them its own epochs ("optimizers/adam": the cpu protocol's
    Adam runs on past 50 epochs and is also the study's overfitting run)."""
    proto = args.proto
    return [preset_variant(opt, "base", proto.epochs_for(NAME, opt), group="optimizers", optimizer=opt,
                           num_seeds=proto.seeds_for(NAME, "optimizers")) for opt in ("sgd", "rmsprop", "adam")]


EXPECT = ("The study: ~60 % TEST after 50 epochs with RMSProp and Adam, less with SGD, on the augmented set, whose "
          "TEST is balanced (chance 0.25). On the embedded originals TEST is 68 % neutrophils, so learning shows in "
          "the balanced accuracy (chance 0.25), not in the accuracy; results/REPORT.md has the augmented-set runs.")
EXPERIMENT = Experiment(NAME, "base CNN: SGD 0.01 vs RMSProp 1e-3 vs Adam 1e-3, all seeds at once", variants, PROTOCOLS,
                        expectation=EXPECT)

if __name__ == "__main__":
    main_for(EXPERIMENT)
