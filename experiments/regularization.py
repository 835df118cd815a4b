"""Overfitting and its remedies, on the base CNN with Adam (lr 1e-3):

- overfit:    200 epochs without dropout (train accuracy rises while test loss diverges)
- dropout:    rates 0, 0.1, 0.2, 0.3, 0.5 (the study found 20 % best)
- batchnorm:  batch norm off / on
- centering:  feature centering off / on, with more seeds (paired by seed: the same
              seed gives the same initial weights), to see whether its effect
              depends on the initialization

    python -m experiments.regularization [--parts overfit dropout batchnorm centering]
"""

from __future__ import annotations

import dataclasses

from experiments.common import Variant, main_for, preset_variant

NAME = "regularization"
DESCRIPTION = "base CNN + Adam: 200-epoch overfitting, dropout sweep, batch norm, feature centering"
PARTS = ("overfit", "dropout", "batchnorm", "centering")


def add_arguments(p) -> None:
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which comparisons to run")
    p.add_argument("--dropouts", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3, 0.5])
    p.add_argument("--overfit-epochs", type=int, default=200, help="epochs of the overfitting run (not --epochs)")
    p.add_argument("--centering-seeds", type=int, default=10,
                   help="seeds for the feature-centering comparison (default 10)")


def variants(args) -> list[Variant]:
    out: list[Variant] = []
    if "overfit" in args.parts:
        overfit = preset_variant(f"overfit_{args.overfit_epochs}ep", "base", group="overfit",
                                 epochs=args.overfit_epochs, dropout=0.0)
        out.append(dataclasses.replace(overfit, epochs_follow_flag=False))  # --epochs is for the other parts
    if "dropout" in args.parts:
        out += [preset_variant(f"dropout_{r:g}", "base", group="dropout", dropout=r) for r in args.dropouts]
    if "batchnorm" in args.parts:
        out += [preset_variant(f"batchnorm_{'on' if bn else 'off'}", "base", group="batchnorm", batch_norm=bn)
                for bn in (False, True)]
        # Keras' momentum 0.99 leaves the running variance dominated by its start value when an
        # epoch has few steps (the originals: 9); 0.9 shows what batch norm does once that is gone
        out.append(preset_variant("batchnorm_on_m0.9", "base", group="batchnorm", batch_norm=True,
                                  bn_momentum=0.9))
    if "centering" in args.parts:
        out += [preset_variant(f"centering_{'on' if c else 'off'}", "base", group="centering",
                               feature_centering=c, num_seeds=args.centering_seeds) for c in (False, True)]
    return out


if __name__ == "__main__":
    main_for(NAME, DESCRIPTION, variants, add_arguments)
