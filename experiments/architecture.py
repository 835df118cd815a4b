"""Architectures, all with Adam (lr 1e-3):

- depth:    base vs expanded (with and without feature centering) vs deep (the study's best, ~85 %)
- kernels:  kernel counts (16, 32, 64 filters) and kernel sizes (3, 5, 7) of the base CNN

    python -m experiments.architecture [--parts depth kernels]
"""

from __future__ import annotations

from experiments.common import Variant, main_for, preset_variant

NAME = "architecture"
DESCRIPTION = "base vs expanded (+/- centering) vs deep CNN; kernel count and kernel size sweeps"
PARTS = ("depth", "kernels")


def add_arguments(p) -> None:
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--kernel-counts", nargs="+", type=int, default=[16, 32, 64])
    p.add_argument("--kernel-sizes", nargs="+", type=int, default=[3, 5, 7])


def variants(args) -> list[Variant]:
    out: list[Variant] = []
    if "depth" in args.parts:
        out += [
            preset_variant("base", "base", group="depth"),
            preset_variant("expanded", "expanded", group="depth"),
            preset_variant("expanded_centered", "expanded", group="depth", feature_centering=True),
            preset_variant("deep", "deep", group="depth"),
        ]
    if "kernels" in args.parts:
        out += [preset_variant(f"filters_{n}", "base", group="kernel_count", conv_blocks=((n,),))
                for n in args.kernel_counts]
        out += [preset_variant(f"kernel_{k}x{k}", "base", group="kernel_size", kernel_size=k)
                for k in args.kernel_sizes]
    return out


if __name__ == "__main__":
    main_for(NAME, DESCRIPTION, variants, add_arguments)
