"""Overfitting and its remedies, on the base CNN with Adam (lr 1e-3):

- overfit:    the longest run, without dropout (train accuracy rises while test loss diverges)
- dropout:    rates 0, 0.1, 0.2, 0.3, 0.5 (the study found 20 % best)
- batchnorm:  batch norm off / on (Keras' momentum 0.99) / on with momentum 0.9
- centering:  feature centering off / on, with more seeds (paired by seed: the same seed gives
              the same initial weights), to see whether its effect depends on the initialization

The plain base CNN (`dropout_0`) is the "off" arm of all three comparisons: one variant, not three
identical ones. It carries the centering group's seed count, so every comparison is paired by seed.

    python -m experiments.regularization [--parts overfit dropout batchnorm centering]
"""

from __future__ import annotations

import dataclasses

from bccd_jax.experiment import Experiment, Variant, preset_variant
from bccd_jax.runner import main_for
from experiments.protocol import PROTOCOLS

NAME = "regularization"
PARTS = ("overfit", "dropout", "batchnorm", "centering")


def add_arguments(p) -> None:
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which comparisons to run")
    p.add_argument("--dropouts", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.5],
                   help="dropout rates besides 0 (the plain reference)")
    p.add_argument("--overfit-epochs", type=int, help="epochs of the overfitting run (not --epochs; default: protocol)")


def variants(args) -> list[Variant]:
    proto, out = args.proto, []

    def variant(name, group, seeds_of=None, **kw):
        return proto.variant(NAME, name, "base", group, seeds_of, **kw)

    if "overfit" in args.parts:
        n = args.overfit_epochs or proto.epochs_for(NAME, "overfit")
        overfit = preset_variant(f"overfit_{n}ep", "base", n, group="overfit", dropout=0.0,
                                 num_seeds=proto.seeds_for(NAME, "overfit"))
        out.append(dataclasses.replace(overfit, epochs_follow_flag=False))  # --epochs is for the other parts
    if {"dropout", "batchnorm", "centering"} & set(args.parts):
        out.append(variant("dropout_0", "dropout", seeds_of="centering", dropout=0.0))
    if "dropout" in args.parts:
        out += [variant(f"dropout_{r:g}", "dropout", dropout=r) for r in args.dropouts if r]
    if "batchnorm" in args.parts:
        out.append(variant("batchnorm_on", "batchnorm", batch_norm=True))
        # Keras' momentum 0.99 leaves the running variance dominated by its start value when an
        # epoch has few steps (the originals: 9); 0.9 shows what batch norm does once that is gone
        out.append(variant("batchnorm_on_m0.9", "batchnorm", batch_norm=True, bn_momentum=0.9))
    if "centering" in args.parts:
        out.append(variant("centering_on", "centering", feature_centering=True))
    return out


EXPERIMENT = Experiment(NAME, "base CNN + Adam: overfitting run, dropout sweep, batch norm, feature centering",
                        variants, PROTOCOLS, add_arguments)

if __name__ == "__main__":
    main_for(EXPERIMENT)
