"""The study's optimizers by name, and a single entry point that also takes any optax chain.

Users compose optimizers in Python, e.g.
    optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-4), optax.adam(schedule))
and hand the result to `bccd_jax.train.fit` / `make_train` unchanged.
"""

from __future__ import annotations

from typing import Callable

import optax

from bccd_jax.config import OPTIMIZER_DEFAULT_LR, TrainConfig
from bccd_jax.errors import UserError

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    # Keras defaults of the study: SGD without momentum, RMSProp rho=0.9 eps=1e-7, Adam eps=1e-7
    "sgd": lambda lr: optax.sgd(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-7),
    "adam": lambda lr: optax.adam(lr, eps=1e-7),
}
assert set(OPTIMIZERS) == set(OPTIMIZER_DEFAULT_LR)


def make_optimizer(spec: str | optax.GradientTransformation | TrainConfig,
                   learning_rate: float | None = None) -> optax.GradientTransformation:
    """An optax transformation from a name ("sgd", "rmsprop", "adam"), a TrainConfig, or a ready one."""
    if isinstance(spec, TrainConfig):
        return make_optimizer(spec.optimizer, spec.resolved_learning_rate())
    if isinstance(spec, optax.GradientTransformation):
        return spec
    if isinstance(spec, str):
        if spec not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {spec!r}; choose one of {sorted(OPTIMIZERS)} "
                            "or pass an optax.GradientTransformation")
        lr = OPTIMIZER_DEFAULT_LR[spec] if learning_rate is None else learning_rate
        return OPTIMIZERS[spec](lr)
    raise UserError(f"optimizer must be a name or an optax.GradientTransformation, got {type(spec).__name__}")
