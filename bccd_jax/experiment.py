"""What an experiment declares: its variants (`Variant`: a model config, a train config, optionally a
composed optax chain) and the settings of each `Protocol`. Running one is bccd_jax.runner's job.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optax

from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.errors import UserError


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment."""

    name: str
    model: ModelConfig
    train: TrainConfig
    group: str = ""  # the part of the experiment it belongs to ("dropout", "overfit", ...)
    num_seeds: int | None = None  # None: the experiment's --seeds
    optimizer: optax.GradientTransformation | None = None  # a composed chain instead of train.optimizer
    epochs_follow_flag: bool = True  # False: --epochs leaves this variant's epochs alone (e.g. the overfitting run)


@dataclass(frozen=True)
class Protocol:
    """Image size, seeds, batch size and epochs of every experiment, for one kind of machine and data set."""

    name: str
    description: str
    dataset: str  # the data set it is meant for: "originals" (embedded) or "augmented"
    image_size: tuple[int, int]
    seeds: int
    batch_size: int
    epochs: Mapping[str, int]  # "<experiment>" or "<experiment>/<group>" -> epochs
    group_seeds: Mapping[str, int] = dataclasses.field(default_factory=dict)  # "<experiment>/<group>" -> seeds
    checkpoint_every: int = 10  # epochs between checkpoints: 1 where an epoch takes minutes, so a kill loses one
    crops: Mapping[str, str] = dataclasses.field(default_factory=dict)  # "<experiment>" -> crop (default "frame")
    settings: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """"<experiment>" -> FIELD=VALUE overrides of every variant, as `--set` writes them (which comes after)."""

    def epochs_for(self, experiment: str, group: str = "") -> int:
        key = f"{experiment}/{group}"
        if key in self.epochs:
            return self.epochs[key]
        if experiment in self.epochs:
            return self.epochs[experiment]
        raise UserError(f"protocol {self.name!r} gives no epochs for {key}")

    def crop_for(self, experiment: str) -> str:
        return self.crops.get(experiment, "frame")

    def seeds_for(self, experiment: str, group: str) -> int | None:
        """A group's own seed count (None: the experiment's --seeds)."""
        return self.group_seeds.get(f"{experiment}/{group}")

    def variant(self, experiment: str, name: str, arch: str, group: str, seeds_of: str | None = None,
                **kw) -> "Variant":
        """A preset variant with this protocol's epochs for the group and seeds for `seeds_of` (default: the group)."""
        return preset_variant(name, arch, self.epochs_for(experiment, group), group=group,
                              num_seeds=self.seeds_for(experiment, seeds_of or group), **kw)


@dataclass(frozen=True)
class Experiment:
    """What an experiment module declares."""

    name: str
    description: str
    variants: Callable[[argparse.Namespace], list[Variant]]
    protocols: Mapping[str, Protocol]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    expectation: str = ""  # what the study reported, printed under the summary table


def preset_variant(name: str, arch: str, epochs: int, group: str = "", optimizer: str = "adam",
                   num_seeds: int | None = None, train: Mapping[str, Any] | None = None,
                   **model_overrides) -> Variant:
    """A variant from an architecture preset and the study's optimizer settings (plus TrainConfig fields)."""
    return Variant(name=name, model=ModelConfig.preset(arch, **model_overrides),
                   train=TrainConfig(epochs=epochs, optimizer=optimizer, **(train or {})), group=group,
                   num_seeds=num_seeds)
