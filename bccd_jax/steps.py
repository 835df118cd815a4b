"""The pure single-seed training functions, and `make_train` (PureJaxRL style) built from them.

- `make_step_fns(model, tx, cfg, num_examples)`: init, batch plan, train step, epoch and
  evaluation of one seed. Datasets are always *arguments*, never closure constants (a
  captured 9957x120x160x3 array makes XLA compiles many times slower).
- `make_train(model, tx, cfg, num_examples)`: a pure `train(key, data...)` for all epochs;
  `jax.jit(jax.vmap(train, in_axes=(0, None, ...)))(keys, ...)` trains many seeds in one program.

RNG discipline (big_vision style): everything derives from a per-seed key by `fold_in`
on (purpose, epoch, step), so a resumed run replays the same shuffles, dropout masks and
augmentations as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bccd_jax import CLASS_NAMES
from bccd_jax.augment import augment_batch, draw_augment, tta_flips
from bccd_jax.config import TrainConfig
from bccd_jax.errors import UserError

# fold_in tags: one per purpose, so no two random streams ever coincide
_INIT, _SHUFFLE, _DROPOUT, _AUGMENT = 0, 1, 2, 3


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (a leading seed axis when multi-seed)."""

    step: jnp.ndarray  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any  # {} when the model has no batch norm
    opt_state: Any
    key: jnp.ndarray  # uint32[2]: this seed's root key; never split, only folded


class EpochMetrics(NamedTuple):
    """Sums over an epoch's real (unmasked) examples; divide by `count`."""

    loss_sum: jnp.ndarray
    correct: jnp.ndarray
    count: jnp.ndarray


class StepFns(NamedTuple):
    init: Callable  # (key, sample_images, pretrained_params) -> TrainState
    batch_plan: Callable  # (key, epoch) -> (indices [steps, B], mask [steps, B])
    train_step: Callable  # (state, images, labels, idx, mask, epoch, i) -> (state, EpochMetrics)
    step_grads: Callable  # (params, batch_stats, key, images, labels, idx, mask, epoch, i) -> (grads, batch_stats, EpochMetrics)
    apply_grads: Callable  # (state, grads, batch_stats) -> state: the optimizer half of train_step
    train_epoch: Callable  # (state, images, labels, epoch) -> (state, EpochMetrics), one lax.scan
    evaluate: Callable  # (state, images, labels) -> (mean loss, accuracy, logits)


def seed_key(seed: int) -> jnp.ndarray:
    """The raw uint32[2] root key of a seed (raw keys serialise with Orbax as plain arrays)."""
    return jax.random.PRNGKey(seed)


def step_keys(key: jnp.ndarray, epoch, i) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The augmentation key and the dropout key of step `i` of `epoch` for the seed whose root key is `key`."""
    def fold(tag):
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, tag), epoch), i)
    return fold(_AUGMENT), fold(_DROPOUT)


def step_draws(model: nn.Module, variables_: Mapping[str, Any], key: jnp.ndarray, images_shape: tuple[int, ...],
               cfg: TrainConfig, epoch, i) -> tuple[dict[str, jnp.ndarray], list[jnp.ndarray]]:
    """Every random draw of train step `i` of `epoch` on a batch of `images_shape`, so that another
    implementation can replay the step: the augmentation parameters (bccd_jax.augment.draw_augment;
    {} without augmentation) and each nn.Dropout layer's keep mask, in call order.

    The masks come from the layers themselves: each Dropout call is intercepted and handed ones,
    under the step's dropout key. Jitted, everything else in the forward pass is dead code.
    """
    augment_key, dropout_key = step_keys(key, epoch, i)
    draws = draw_augment(augment_key, images_shape, cfg.augment) if cfg.augment.active else {}
    keeps: list[jnp.ndarray] = []

    def keep_mask(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
            out = next_fun(jnp.ones_like(args[0]), *args[1:], **kwargs)
            keeps.append(out != 0)
            return out
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(keep_mask):
        model.apply(variables_, jnp.zeros(images_shape, jnp.uint8), train=True, rngs={"dropout": dropout_key},
                    mutable=["batch_stats"])
    return draws, keeps


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: the last batch is padded (by wrapping) and masked."""
    return max(1, math.ceil(num_examples / batch_size))


def variables(params, batch_stats) -> dict:
    """The Flax variables dict of a state's params and (possibly empty) batch statistics."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _merge_pretrained(params, pretrained):
    """Replace the entries of `params` found in `pretrained` (a nested dict of arrays)."""
    if not pretrained:
        return params
    params = flax.core.unfreeze(params)

    def merge(dst, src, path):
        for k, v in src.items():
            if k not in dst:
                raise UserError(f"pretrained weights have {'/'.join(path + (k,))}, which the model lacks")
            if isinstance(v, Mapping):
                merge(dst[k], v, path + (k,))
            else:
                if tuple(dst[k].shape) != tuple(v.shape):
                    raise UserError(f"pretrained {'/'.join(path + (k,))} has shape {tuple(v.shape)}, "
                                    f"the model expects {tuple(dst[k].shape)}")
                dst[k] = jnp.asarray(v, dst[k].dtype)

    merge(params, pretrained, ())
    return params


def make_evaluate(model: nn.Module, eval_batch_size: int = 256, tta: str = "none") -> Callable:
    """(state, images, labels) -> (mean loss, accuracy, logits) of one seed, in chunks of `eval_batch_size`.

    tta="flips": the logits are log of the mean softmax over the four flips of each image.
    """

    def logits_of(v, x):
        if tta == "none":
            return model.apply(v, x, train=False)
        probs = jnp.mean(jnp.stack([jax.nn.softmax(model.apply(v, f, train=False)) for f in tta_flips(x)]), 0)
        return jnp.log(jnp.maximum(probs, 1e-12))

    def evaluate(state: TrainState, images, labels):
        n = images.shape[0]
        chunk = min(eval_batch_size, n)  # a small test set is not padded up to a whole eval batch
        chunks = max(1, math.ceil(n / chunk))
        pad = chunks * chunk - n
        idx = jnp.concatenate([jnp.arange(n), jnp.zeros((pad,), jnp.int32)]).reshape(chunks, chunk)
        v = variables(state.params, state.batch_stats)
        # chunks unrolled at trace time, not lax.map: XLA:CPU runs a convolution inside a loop
        # body ~10x slower than at the top level (benchmarks/RESULTS.md)
        logits = jnp.concatenate([logits_of(v, images[idx[c]]) for c in range(chunks)])[:n]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return jnp.mean(ce), acc, logits

    return evaluate


def shuffled_batches(key, epoch, num_examples: int, batch_size: int):
    """The epoch's batches as indices [steps, batch_size] and a mask of the real rows: one permutation
    per epoch; the last batch is filled by wrapping and masked out of the loss and out of batch norm's
    statistics."""
    n_steps = steps_per_epoch(num_examples, batch_size)
    padded = n_steps * batch_size
    perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, _SHUFFLE), epoch), num_examples)
    idx = jnp.concatenate([perm, perm[: padded - num_examples]]) if padded > num_examples else perm
    mask = jnp.arange(padded) < num_examples
    return idx.reshape(n_steps, batch_size), mask.reshape(n_steps, batch_size)


def balanced_class_weights(labels: jnp.ndarray) -> jnp.ndarray:
    """Per class, N / (K n_class) over all training labels `labels`: with these weights every class counts
    equally in the loss, as the augmented set's per-class oversampling made it (TrainConfig.balance_classes)."""
    counts = jnp.bincount(labels, length=len(CLASS_NAMES))
    return labels.shape[0] / (len(CLASS_NAMES) * jnp.maximum(counts, 1).astype(jnp.float32))


def masked_loss(model: nn.Module, params, batch_stats, images, labels, mask, dropout_key, class_weights=None):
    """Mean cross-entropy over the real rows of a padded training batch, each row weighted by its class's
    entry of `class_weights` when given; (logits, updated batch statistics, per-row cross-entropy) as aux."""
    if batch_stats:
        logits, updates = model.apply(variables(params, batch_stats), images, train=True, mask=mask,
                                      rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        new_stats = updates["batch_stats"]
    else:
        logits = model.apply(variables(params, batch_stats), images, train=True,
                             rngs={"dropout": dropout_key})
        new_stats = batch_stats
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights = mask.astype(jnp.float32)
    if class_weights is not None:
        weights = weights * class_weights[labels]
    loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1e-6)
    return loss, (logits, new_stats, ce)


def make_step_fns(model: nn.Module, tx: optax.GradientTransformation, cfg: TrainConfig,
                  num_examples: int) -> StepFns:
    """The pure single-seed functions for `model` trained by `tx` as `cfg` says on `num_examples` examples."""
    n_steps = steps_per_epoch(num_examples, cfg.batch_size)
    augment = cfg.augment

    def init(key, sample_images, pretrained=None):
        variables_ = model.init({"params": jax.random.fold_in(key, _INIT),
                                 "dropout": jax.random.fold_in(key, _DROPOUT)},
                                sample_images[:1], train=False)
        params = _merge_pretrained(variables_["params"], pretrained)
        batch_stats = variables_.get("batch_stats", {})
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                          opt_state=tx.init(params), key=key)

    batch_plan = functools.partial(shuffled_batches, num_examples=num_examples, batch_size=cfg.batch_size)
    loss_and_logits = functools.partial(masked_loss, model)


    def step_grads(params, batch_stats, key, images, labels, idx, mask, epoch, i):
        batch_images, batch_labels = images[idx], labels[idx]
        augment_key, dropout_key = step_keys(key, epoch, i)
        if augment.active:
            batch_images = augment_batch(augment_key, batch_images, augment)
        class_weights = balanced_class_weights(labels) if cfg.balance_classes else None
        grad_fn = jax.value_and_grad(loss_and_logits, has_aux=True)
        (_, (logits, new_stats, ce)), grads = grad_fn(params, batch_stats, batch_images, batch_labels, mask,
                                                      dropout_key, class_weights)
        w = mask.astype(jnp.float32)
        metrics = EpochMetrics(loss_sum=jnp.sum(ce * w),
                               correct=jnp.sum((jnp.argmax(logits, -1) == batch_labels) * w),
                               count=jnp.sum(w))
        return grads, new_stats, metrics

    def apply_grads(state: TrainState, grads, new_stats):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)

    def train_step(state: TrainState, images, labels, idx, mask, epoch, i):
        grads, new_stats, metrics = step_grads(state.params, state.batch_stats, state.key, images, labels,
                                               idx, mask, epoch, i)
        return apply_grads(state, grads, new_stats), metrics

    def train_epoch(state: TrainState, images, labels, epoch):
        idx, mask = batch_plan(state.key, epoch)

        def body(carry, xs):
            i, b_idx, b_mask = xs
            carry, m = train_step(carry, images, labels, b_idx, b_mask, epoch, i)
            return carry, m

        state, per_step = jax.lax.scan(body, state, (jnp.arange(n_steps), idx, mask))
        return state, jax.tree.map(lambda x: jnp.sum(x, axis=0), per_step)

    evaluate = make_evaluate(model, cfg.eval_batch_size, cfg.eval_tta)
    return StepFns(init, batch_plan, train_step, step_grads, apply_grads, train_epoch, evaluate)


def make_train(model: nn.Module, tx: optax.GradientTransformation, cfg: TrainConfig,
               num_examples: int) -> Callable:
    """PureJaxRL-style: a pure `train(key, train_images, train_labels, test_images, test_labels)`.

    Runs cfg.epochs epochs in one program and returns (final TrainState, history)
    where history maps train_loss/train_acc/test_loss/test_acc to [epochs] arrays.
    Vmap it over keys to train many seeds at once:
        jax.jit(jax.vmap(train, in_axes=(0, None, None, None, None)))(keys, ...)
    """
    fns = make_step_fns(model, tx, cfg, num_examples)

    def train(key, train_images, train_labels, test_images, test_labels):
        state = fns.init(key, train_images)

        def one_epoch(state, epoch):
            state, m = fns.train_epoch(state, train_images, train_labels, epoch)
            test_loss, test_acc, _ = fns.evaluate(state, test_images, test_labels)
            return state, {"train_loss": m.loss_sum / m.count, "train_acc": m.correct / m.count,
                           "test_loss": test_loss, "test_acc": test_acc}

        return jax.lax.scan(one_epoch, state, jnp.arange(cfg.epochs))

    return train
