"""Architectures, all with Adam (lr 1e-3):

- depth:    base vs deep (the study's best, ~85 %)
- centering: the expanded CNN with and without feature centering (the study: centering "sped up the
            training but at the cost of overfitting later"), long enough to overfit
- kernels:  kernel counts (16, 32, 64 filters) and kernel sizes (3, 5, 7) of the base CNN; the base
            CNN itself (32 filters of 3x3) is the reference of both sweeps
- init:     the deep CNN with Keras' glorot_uniform (the study's), Flax's lecun_normal and he_normal
            (its preset) kernels: how many seeds leave chance, and where they end (the study:
            results "dependent on the initialization")

    python -m experiments.architecture [--parts depth centering kernels init]
"""

from __future__ import annotations

from bccd_jax.config import INITS
from bccd_jax.experiment import Experiment, Variant
from bccd_jax.runner import main_for
from experiments.protocol import PROTOCOLS

NAME = "architecture"
PARTS = ("depth", "centering", "kernels", "init")


def add_arguments(p) -> None:
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--kernel-counts", nargs="+", type=int, default=[16, 64], help="besides the base CNN's 32")
    p.add_argument("--kernel-sizes", nargs="+", type=int, default=[5, 7], help="besides the base CNN's 3")


def variants(args) -> list[Variant]:
    out: list[Variant] = []

    def variant(name, arch, group, **kw):
        return args.proto.variant(NAME, name, arch, group, **kw)

    if {"depth", "kernels"} & set(args.parts):
        out.append(variant("base", "base", "depth"))
    if "centering" in args.parts:
        out += [variant("expanded", "expanded", "centering"),
                variant("expanded_centered", "expanded", "centering", feature_centering=True)]
    if {"depth", "init"} & set(args.parts):
        out.append(variant("deep", "deep", "init"))  # he_normal: the deep preset's init
    if "init" in args.parts:
        out += [variant(f"deep_init_{init}", "deep", "init", init=init) for init in INITS if init != "he"]
    if "kernels" in args.parts:
        out += [variant(f"filters_{n}", "base", "kernels", conv_blocks=((n,),)) for n in args.kernel_counts]
        out += [variant(f"kernel_{k}x{k}", "base", "kernels", kernel_size=k) for k in args.kernel_sizes]
    return out


EXPERIMENT = Experiment(NAME, "base vs deep CNN; the expanded CNN +/- centering; kernel sweeps; the deep CNN's init",
                        variants, PROTOCOLS, add_arguments)

if __name__ == "__main__":
    main_for(EXPERIMENT)
