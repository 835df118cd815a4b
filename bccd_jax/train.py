"""Pure-functional training: jit-compiled steps over explicit state, many seeds at once.

Layers, from the bottom:
- `make_step_fns(model, tx, cfg)`: the pure per-seed functions (init, train step,
  epoch, evaluate). Datasets are always *arguments*, never closure constants
  (a captured 9957x120x160x3 array makes XLA compiles many times slower).
- `make_train(model, tx, cfg)`: PureJaxRL-style pure `train(key, data...)`
  for all epochs; `jax.jit(jax.vmap(train, in_axes=(0, None, ...)))(keys, ...)`
  trains many seeds in one program.
- `MultiSeedTrainer`: the seed axis is the leading axis of one `TrainState`;
  `vmap` (batched) or `lax.map` (one seed after another inside one program)
  behind the same API, with the state donated to each compiled call.
- `fit(...)`: the runner used by experiments and the CLI: epochs, evaluation,
  Orbax checkpoints every k epochs, resume, clean stop on Ctrl-C / SIGTERM.

RNG discipline (big_vision style): everything derives from a per-seed key by
`fold_in` on (purpose, epoch, step), so a resumed run replays the same
shuffles and dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.errors import UserError

# fold_in tags: one per purpose, so no two random streams ever coincide
_INIT, _SHUFFLE, _DROPOUT = 0, 1, 2


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


def _variables(params, batch_stats):
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


def make_step_fns(model: nn.Module, tx: optax.GradientTransformation, num_examples: int,
                  batch_size: int, eval_batch_size: int = 256) -> StepFns:
    """The pure single-seed functions for `model` trained by `tx` on `num_examples` examples."""
    steps_per_epoch = max(1, math.ceil(num_examples / batch_size))
    padded = steps_per_epoch * batch_size

    def init(key, sample_images, pretrained=None):
        variables = model.init({"params": jax.random.fold_in(key, _INIT),
                                "dropout": jax.random.fold_in(key, _DROPOUT)},
                               sample_images[:1], train=False)
        params = _merge_pretrained(variables["params"], pretrained)
        batch_stats = variables.get("batch_stats", {})
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                          opt_state=tx.init(params), key=key)

    def batch_plan(key, epoch):
        # one permutation per epoch; the last batch is filled by wrapping and masked out of the loss
        perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, _SHUFFLE), epoch),
                                      num_examples)
        idx = jnp.concatenate([perm, perm[: padded - num_examples]]) if padded > num_examples else perm
        mask = jnp.arange(padded) < num_examples
        return idx.reshape(steps_per_epoch, batch_size), mask.reshape(steps_per_epoch, batch_size)

    def loss_and_logits(params, batch_stats, images, labels, mask, dropout_key):
        if batch_stats:
            logits, updates = model.apply(_variables(params, batch_stats), images, train=True,
                                          rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            new_stats = updates["batch_stats"]
        else:
            logits = model.apply(_variables(params, batch_stats), images, train=True,
                                 rngs={"dropout": dropout_key})
            new_stats = batch_stats
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        weights = mask.astype(jnp.float32)
        loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        return loss, (logits, new_stats, ce)

    def step_grads(params, batch_stats, key, images, labels, idx, mask, epoch, i):
        batch_images, batch_labels = images[idx], labels[idx]
        dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, _DROPOUT), epoch), i)
        grad_fn = jax.value_and_grad(loss_and_logits, has_aux=True)
        (_, (logits, new_stats, ce)), grads = grad_fn(params, batch_stats, batch_images, batch_labels, mask,
                                                      dropout_key)
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

        state, per_step = jax.lax.scan(body, state, (jnp.arange(steps_per_epoch), idx, mask))
        return state, jax.tree.map(lambda x: jnp.sum(x, axis=0), per_step)

    def evaluate(state: TrainState, images, labels):
        n = images.shape[0]
        chunk = min(eval_batch_size, n)  # a small test set is not padded up to a whole eval batch
        chunks = max(1, math.ceil(n / chunk))
        pad = chunks * chunk - n
        idx = jnp.concatenate([jnp.arange(n), jnp.zeros((pad,), jnp.int32)]).reshape(chunks, chunk)
        variables = _variables(state.params, state.batch_stats)
        # chunks unrolled at trace time, not lax.map: XLA:CPU runs a convolution inside a loop
        # body ~10x slower than at the top level (benchmarks/RESULTS.md)
        logits = jnp.concatenate([model.apply(variables, images[idx[c]], train=False) for c in range(chunks)])[:n]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return jnp.mean(ce), acc, logits

    return StepFns(init, batch_plan, train_step, step_grads, apply_grads, train_epoch, evaluate)


def make_train(model: nn.Module, tx: optax.GradientTransformation, cfg: TrainConfig,
               num_examples: int) -> Callable:
    """PureJaxRL-style: a pure `train(key, train_images, train_labels, test_images, test_labels)`.

    Runs cfg.epochs epochs in one program and returns (final TrainState, history)
    where history maps train_loss/train_acc/test_loss/test_acc to [epochs] arrays.
    Vmap it over keys to train many seeds at once:
        jax.jit(jax.vmap(train, in_axes=(0, None, None, None, None)))(keys, ...)
    """
    fns = make_step_fns(model, tx, num_examples, cfg.batch_size, cfg.eval_batch_size)

    def train(key, train_images, train_labels, test_images, test_labels):
        state = fns.init(key, train_images)

        def one_epoch(state, epoch):
            state, m = fns.train_epoch(state, train_images, train_labels, epoch)
            test_loss, test_acc, _ = fns.evaluate(state, test_images, test_labels)
            return state, {"train_loss": m.loss_sum / m.count, "train_acc": m.correct / m.count,
                           "test_loss": test_loss, "test_acc": test_acc}

        return jax.lax.scan(one_epoch, state, jnp.arange(cfg.epochs))

    return train


# ----------------------------------------------------------------------------- multi-seed


def resolve_epoch_mode(mode: str, backend: str | None = None) -> str:
    """'auto' -> the faster formulation per backend, as measured (benchmarks/RESULTS.md):
    on XLA:CPU a Python loop of jitted steps beats a scanned epoch by far (XLA:CPU runs a
    convolution inside a loop body about 10x slower than the same convolution at the top
    level); on GPU one scanned epoch avoids per-step dispatch."""
    if mode != "auto":
        return mode
    backend = backend or jax.default_backend()
    return "loop" if backend == "cpu" else "scan"


def resolve_seed_strategy(strategy: str, num_seeds: int | None = None, backend: str | None = None) -> str:
    """'auto' -> the fastest way to run several seeds in one program, as measured (benchmarks/RESULTS.md).

    - "vmap": per-seed weights turn every convolution into a grouped convolution
      (feature_group_count = S forward, batch_group_count = S for the weight gradient),
      which XLA runs far below the speed of S plain convolutions: on this project's
      2-core CPU 8 vmapped seeds ran at 0.60x (base) / 0.47x (deep) the per-seed speed of
      one seed; on an H100 2.6x (base) / 5.2x (deep) slower than one seed alone.
    - "map" (`lax.map`): the seeds' steps run in a while loop; on GPU each convolution
      stays a plain cuDNN call, but XLA:CPU runs convolutions inside a loop body about
      10x slower than the same convolution at the top level (the same cause makes
      scanned epochs lose on CPU).
    - "unroll": the S single-seed forward/backward passes written one after another in
      one program (plain top-level convolutions), the optimizer update vmapped over the
      stacked state: 8 seeds at 1.14x (base) / 1.02x (deep) the per-seed speed of one
      seed on the 2-core CPU. Compile time grows with S.

    'auto' is "unroll" on CPU and "map" elsewhere; one seed always runs the plain program.
    """
    if strategy != "auto":
        return strategy
    if num_seeds == 1:
        return "unroll"
    backend = backend or jax.default_backend()
    return "unroll" if backend == "cpu" else "map"


class MultiSeedTrainer:
    """S seeds as one TrainState with a leading seed axis; every call is one compiled program.

    `seed_strategy="vmap"` batches the seeds (per-seed weights become grouped
    convolutions); `"map"` runs them one after another with `lax.map` inside the same
    program; `"unroll"` writes the S single-seed forward/backward passes one after another
    (no loop, no grouped convolutions; compile time grows with S) and updates the stacked
    state with one vmapped optimizer step; `"auto"` picks per backend and
    seed count (`resolve_seed_strategy`). The numbers are the same either way.

    With `sharding` (a NamedSharding over a 1-D mesh whose axis splits the seeds, see
    `bccd_jax.runtime.seed_sharding`) every function is a `shard_map` over that axis:
    each device runs its S/D seeds with the chosen strategy, the state lives sharded
    on the seed axis and the data are replicated once per array.
    """

    def __init__(self, model: nn.Module, tx: optax.GradientTransformation, cfg: TrainConfig,
                 num_examples: int, sharding: jax.sharding.Sharding | None = None):
        cfg.validate()
        self.cfg = cfg
        self.num_examples = num_examples
        self.fns = make_step_fns(model, tx, num_examples, cfg.batch_size, cfg.eval_batch_size)
        self.steps_per_epoch = max(1, math.ceil(num_examples / cfg.batch_size))
        self.epoch_mode = resolve_epoch_mode(cfg.epoch_mode)
        self.seed_strategy = resolve_seed_strategy(cfg.seed_strategy)  # "auto" is re-resolved per seed count
        self.sharding = sharding
        self._data_cache: dict[int, tuple[Any, Any]] = {}
        fns = self.fns
        per_seed = self._per_seed

        self.init = jax.jit(per_seed(fns.init, (0, None, None)))
        self.batch_plan = jax.jit(per_seed(fns.batch_plan, (0, None)))
        self.train_step = jax.jit(self._shard(_lift_train_step(fns, cfg.seed_strategy), _STEP_IN_AXES),
                                  donate_argnums=0)
        self.train_epoch = jax.jit(per_seed(fns.train_epoch, (0, None, None, None)), donate_argnums=0)
        self.evaluate = jax.jit(per_seed(fns.evaluate, (0, None, None)))
        if sharding is not None:  # same signature; the data are replicated on the mesh first
            evaluate = self.evaluate
            self.evaluate = lambda state, images, labels: evaluate(state, self._data(images), self._data(labels))

    def _per_seed(self, fn: Callable, in_axes: tuple) -> Callable:
        """Lift a single-seed fn to the seed axis by vmap, lax.map or unrolling (same signature);
        with a seed sharding, each device lifts it over its own seeds inside a shard_map."""
        return self._shard(_lift_seeds(fn, in_axes, self.cfg.seed_strategy), in_axes)

    def _shard(self, local: Callable, in_axes: tuple) -> Callable:
        """`local` (already over the seed axis) as a shard_map over the seed sharding; unchanged without one."""
        if self.sharding is None:
            return local
        from jax.sharding import PartitionSpec as P

        spec = self.sharding.spec
        axis = spec[0] if len(spec) else None
        if axis is None:
            raise ValueError(f"the seed sharding must split the leading axis, got spec {spec}")
        in_specs = tuple(P(axis) if ax == 0 else P() for ax in in_axes)
        return jax.shard_map(local, mesh=self.sharding.mesh, in_specs=in_specs, out_specs=P(axis),
                             check_vma=False)

    def _data(self, array):
        """`array` replicated on the seed mesh (once per array object); unchanged without sharding."""
        if self.sharding is None:
            return array
        hit = self._data_cache.get(id(array))
        if hit is not None and hit[0] is array:
            return hit[1]
        from jax.sharding import NamedSharding, PartitionSpec as P

        placed = jax.device_put(array, NamedSharding(self.sharding.mesh, P()))
        if len(self._data_cache) > 16:
            self._data_cache.clear()
        self._data_cache[id(array)] = (array, placed)  # holding `array` keeps its id unique
        return placed

    def init_state(self, seeds: Sequence[int], sample_images, pretrained=None) -> TrainState:
        keys = jnp.stack([seed_key(int(s)) for s in seeds])
        if self.sharding is not None:
            keys = jax.device_put(keys, self.sharding)
            sample = self._data(jnp.asarray(sample_images[:1]))
            if pretrained is not None:  # a pytree of arrays, replicated like the data
                pretrained = jax.device_put(pretrained, jax.sharding.NamedSharding(
                    self.sharding.mesh, jax.sharding.PartitionSpec()))
            return self.init(keys, sample, pretrained)
        return self.init(keys, jnp.asarray(sample_images[:1]), pretrained)

    def run_epoch(self, state: TrainState, images, labels, epoch: int) -> tuple[TrainState, EpochMetrics]:
        """One epoch for every seed; returns summed metrics with shape [S]."""
        images, labels = self._data(images), self._data(labels)
        if self.epoch_mode == "scan":
            return self.train_epoch(state, images, labels, jnp.int32(epoch))
        idx, mask = self.batch_plan(state.key, jnp.int32(epoch))
        mask = mask[0] if self.sharding is None else self._data(np.asarray(mask[0]))  # same for every seed
        total = None
        for i in range(self.steps_per_epoch):
            state, m = self.train_step(state, images, labels, idx[:, i], mask[i], jnp.int32(epoch), jnp.int32(i))
            total = m if total is None else jax.tree.map(jnp.add, total, m)
        return state, total


_STEP_IN_AXES = (0, None, None, 0, None, None, None)
_GRADS_IN_AXES = (0, 0, 0, None, None, 0, None, None, None)


def _num_seeds(args: Sequence[Any], in_axes: tuple) -> int:
    """The length of the seed axis: the leading dimension of the first argument lifted over it."""
    return jax.tree.leaves([a for a, ax in zip(args, in_axes) if ax == 0])[0].shape[0]


def _auto(lift: Callable[[str], Callable], in_axes: tuple) -> Callable:
    """Resolve seed_strategy "auto" at trace time from the (per-device) seed count: `lift(strategy)(*args)`."""
    def auto(*args):
        return lift(resolve_seed_strategy("auto", _num_seeds(args, in_axes)))(*args)

    return auto


def _lift_train_step(fns: StepFns, strategy: str) -> Callable:
    """train_step over a leading seed axis. As `_lift_seeds`, except that "unroll" unrolls only
    the forward/backward pass (plain convolutions per seed) and vmaps the optimizer update:
    updating the stacked state in place instead of slicing every seed's params and optimizer
    moments out and stacking them back saves several copies of the state per step (the base
    CNN's 19M-parameter dense layer made those copies cost ~10 % of an 8-seed step on CPU)."""
    if strategy == "auto":
        return _auto(lambda s: _lift_train_step(fns, s), _STEP_IN_AXES)
    if strategy != "unroll":
        return _lift_seeds(fns.train_step, _STEP_IN_AXES, strategy)
    grads_per_seed = _lift_seeds(fns.step_grads, _GRADS_IN_AXES, "unroll")
    apply_per_seed = jax.vmap(fns.apply_grads)

    def step(state, images, labels, idx, mask, epoch, i):
        grads, stats, metrics = grads_per_seed(state.params, state.batch_stats, state.key, images, labels,
                                               idx, mask, epoch, i)
        return apply_per_seed(state, grads, stats), metrics

    return step


def _lift_seeds(fn: Callable, in_axes: tuple, strategy: str) -> Callable:
    """`fn` over a leading seed axis of the arguments whose in_axes entry is 0: vmap, lax.map or unrolled.
    "auto" picks one at trace time from the (per-device) seed count and the backend."""
    if strategy == "auto":
        return _auto(lambda s: _lift_seeds(fn, in_axes, s), in_axes)
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if strategy == "unroll":
        def unrolled(*args):
            batched = [a for a, ax in zip(args, in_axes) if ax == 0]
            outs = []
            for s in range(_num_seeds(args, in_axes)):
                it = iter([jax.tree.map(lambda v: v[s], b) for b in batched])
                outs.append(fn(*[next(it) if ax == 0 else a for a, ax in zip(args, in_axes)]))
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

        return unrolled
    if strategy != "map":
        raise ValueError(f"unknown seed strategy {strategy!r}")

    def mapped(*args):
        batched = [a for a, ax in zip(args, in_axes) if ax == 0]

        def one(xs):
            it = iter(xs)
            return fn(*[next(it) if ax == 0 else a for a, ax in zip(args, in_axes)])

        return jax.lax.map(one, tuple(batched))

    return mapped


# ----------------------------------------------------------------------------- the runner


@dataclasses.dataclass
class TrainData:
    """Arrays for one run: the training set and named evaluation sets (all on device once put)."""

    train_images: Any
    train_labels: Any
    eval_sets: dict[str, tuple[Any, Any]]
    eval_original_ids: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @staticmethod
    def from_dataset(ds, eval_splits: Sequence[str] | None = None) -> "TrainData":
        """From a bccd_jax.data.Dataset: 'train' for training, every other split for evaluation."""
        names = [s for s in ds.splits if s != "train"] if eval_splits is None else list(eval_splits)
        tr = ds.splits["train"]
        return TrainData(
            train_images=jax.device_put(tr.images), train_labels=jax.device_put(tr.labels.astype(np.int32)),
            eval_sets={n: (jax.device_put(ds.splits[n].images),
                           jax.device_put(ds.splits[n].labels.astype(np.int32))) for n in names},
            eval_original_ids={n: np.asarray(ds.splits[n].original_ids) for n in names},
        )


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: dict[str, list]  # "epoch": [e...], "<split>_<loss|acc>": [[per-seed] per epoch]
    seeds: list[int]
    final_logits: dict[str, np.ndarray]  # split -> [S, N, C]
    interrupted: bool = False
    wall_s: float = 0.0
    compile_s: float = 0.0  # time of the first epoch beyond the median epoch time (compile estimate)


class _StopFlag:
    """Turns SIGINT/SIGTERM into 'stop after this epoch'; a second signal aborts at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n[bccd_jax] {signal.Signals(signum).name}: saving a checkpoint after this epoch "
              "(send again to abort without saving)", file=sys.stderr)

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def empty_history(eval_names: Sequence[str]) -> dict[str, list]:
    keys = ["epoch", "train_loss", "train_acc"] + [f"{n}_{m}" for n in eval_names for m in ("loss", "acc")]
    return {k: [] for k in keys}


def fit(model: nn.Module, tx: optax.GradientTransformation, cfg: TrainConfig, data: TrainData,
        seeds: Sequence[int], *, checkpoints=None, run_meta: Mapping[str, Any] | None = None,
        resume: bool = False, force: bool = False, pretrained=None,
        on_epoch: Callable[[int, dict[str, list]], None] | None = None,
        stop_after_epoch: int | None = None, sharding=None) -> FitResult:
    """Train `len(seeds)` seeds at once for cfg.epochs epochs, evaluating every epoch.

    checkpoints: a bccd_jax.checkpoints.CheckpointStore or None. With it the full
    state and history are saved every cfg.checkpoint_every epochs, at the end, and
    on Ctrl-C/SIGTERM; `resume=True` continues from the latest checkpoint after
    checking `run_meta` (config, data fingerprint, seeds) matches unless `force`.
    `stop_after_epoch` stops early as if interrupted (used by tests).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise UserError("no seeds given; pass at least one seed")
    n = int(data.train_images.shape[0])
    if n == 0:
        raise UserError("the training split is empty")
    trainer = MultiSeedTrainer(model, tx, cfg, n, sharding=sharding)
    eval_names = list(data.eval_sets)
    history = empty_history(eval_names)
    state = trainer.init_state(seeds, data.train_images, pretrained)
    start_epoch = 0
    if checkpoints is not None and resume and checkpoints.latest_epoch() is not None:
        state, meta = checkpoints.restore(state, expected_meta=dict(run_meta or {}, seeds=seeds), force=force)
        history = meta["history"]
        start_epoch = int(meta["epoch"])
        print(f"[bccd_jax] resumed from {checkpoints.directory} at epoch {start_epoch}", file=sys.stderr)

    def save(epoch: int):
        if checkpoints is not None:
            checkpoints.save(epoch, state, dict(run_meta or {}, seeds=seeds, epoch=epoch, history=history))

    epoch_times: list[float] = []
    interrupted = False
    t_start = time.perf_counter()
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            state, m = trainer.run_epoch(state, data.train_images, data.train_labels, epoch)
            count = np.asarray(m.count)
            history["epoch"].append(epoch + 1)
            history["train_loss"].append((np.asarray(m.loss_sum) / count).tolist())
            history["train_acc"].append((np.asarray(m.correct) / count).tolist())
            for name, (images, labels) in data.eval_sets.items():
                loss, acc, _ = trainer.evaluate(state, images, labels)
                history[f"{name}_loss"].append(np.asarray(loss).tolist())
                history[f"{name}_acc"].append(np.asarray(acc).tolist())
            epoch_times.append(time.perf_counter() - t0)
            if on_epoch is not None:
                on_epoch(epoch + 1, history)
            last = epoch + 1 == cfg.epochs
            if stop.requested or (stop_after_epoch is not None and epoch + 1 >= stop_after_epoch):
                save(epoch + 1)
                interrupted = not last
                break
            if last or (cfg.checkpoint_every > 0 and (epoch + 1) % cfg.checkpoint_every == 0):
                save(epoch + 1)
    if checkpoints is not None:
        checkpoints.wait()

    final_logits = {}
    for name, (images, labels) in data.eval_sets.items():
        final_logits[name] = np.asarray(trainer.evaluate(state, images, labels)[2])
    compile_s = 0.0
    if len(epoch_times) >= 2:
        compile_s = max(0.0, epoch_times[0] - float(np.median(epoch_times[1:])))
    return FitResult(state=state, history=history, seeds=seeds, final_logits=final_logits,
                     interrupted=interrupted, wall_s=time.perf_counter() - t_start, compile_s=compile_s)


def predict_logits(model: nn.Module, state: TrainState, images, eval_batch_size: int = 256) -> np.ndarray:
    """Logits [S, N, C] of every seed in `state` (leading seed axis) on `images` (0..255 NHWC)."""
    fns = make_step_fns(model, optax.identity(), 1, 1, eval_batch_size)
    images = jnp.asarray(images)
    labels = jnp.zeros((images.shape[0],), jnp.int32)
    ev = jax.jit(jax.vmap(fns.evaluate, in_axes=(0, None, None)))
    return np.asarray(ev(state, images, labels)[2])
