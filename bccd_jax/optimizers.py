"""The study's optimizers by name, with a learning-rate schedule and decoupled weight decay,
and a single entry point that also takes any optax chain.

Users compose optimizers in Python, e.g.
    optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-4), optax.adam(schedule))
and hand the result to `bccd_jax.train.fit` / `make_train` unchanged.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from bccd_jax.config import OPTIMIZER_DEFAULT_LR, TrainConfig
from bccd_jax.errors import UserError

DIRECTIONS: dict[str, Callable[[], optax.GradientTransformation]] = {
    # Keras defaults of the study: SGD without momentum, RMSProp rho=0.9 eps=1e-7, Adam eps=1e-7;
    # each is the optax optimizer without its final learning-rate scaling
    "sgd": optax.identity,
    "rmsprop": lambda: optax.scale_by_rms(decay=0.9, eps=1e-7),
    "adam": lambda: optax.scale_by_adam(eps=1e-7),
}
assert set(DIRECTIONS) == set(OPTIMIZER_DEFAULT_LR)


def learning_rate(cfg: TrainConfig, steps_per_epoch: int) -> float | optax.Schedule:
    """The peak learning rate, or the cosine schedule (with linear warmup) over all of cfg.epochs."""
    lr = cfg.resolved_learning_rate()
    if cfg.schedule == "constant":
        return lr
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warmup:
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), end_value=0.0)
    return optax.cosine_decay_schedule(lr, total)


def decays(params) -> object:
    """Weight-decay mask: kernels (rank >= 2) decay, biases and batch-norm scales do not."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(spec: str | optax.GradientTransformation | TrainConfig, learning_rate_: float | None = None,
                   *, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """An optax transformation from a name ("sgd", "rmsprop", "adam"), a TrainConfig, or a ready one.

    A TrainConfig also brings its schedule (which needs `steps_per_epoch`) and weight decay:
    direction (Adam moments, RMS scaling, or the gradient) -> + weight_decay * kernel -> x -lr,
    i.e. AdamW for adam; with neither it is exactly optax.adam / rmsprop / sgd.
    """
    if isinstance(spec, TrainConfig):
        spec.validate()
        parts = [DIRECTIONS[spec.optimizer]()]
        if spec.weight_decay:
            parts.append(optax.add_decayed_weights(spec.weight_decay, mask=decays))
        parts.append(optax.scale_by_learning_rate(learning_rate(spec, steps_per_epoch)))
        return optax.chain(*parts)
    if isinstance(spec, optax.GradientTransformation):
        return spec
    if isinstance(spec, str):
        if spec not in DIRECTIONS:
            raise UserError(f"unknown optimizer {spec!r}; choose one of {sorted(DIRECTIONS)} "
                            "or pass an optax.GradientTransformation")
        return make_optimizer(TrainConfig(optimizer=spec, learning_rate=learning_rate_))
    raise UserError(f"optimizer must be a name or an optax.GradientTransformation, got {type(spec).__name__}")
