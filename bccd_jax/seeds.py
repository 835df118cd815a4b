"""Many seeds in one compiled program: the seed axis is the leading axis of one `TrainState`.

`MultiSeedTrainer` lifts the pure single-seed functions of `bccd_jax.steps` over that axis by
`vmap` (batched), `lax.map` (one seed after another inside one program) or unrolling (the
single-seed passes side by side), behind one API, with the state donated to every compiled
call; with a seed sharding, each device runs its share of the seeds inside a `shard_map`.
Which lift is fastest depends on the backend (`resolve_seed_strategy`); the numbers do not.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bccd_jax.config import TrainConfig
from bccd_jax.steps import EpochMetrics, StepFns, TrainState, make_step_fns, seed_key, steps_per_epoch


def resolve_epoch_mode(mode: str, backend: str | None = None) -> str:
    """'auto' -> the faster formulation per backend, as measured (benchmarks/RESULTS.md):
    on XLA:CPU a Python loop of jitted steps beats a scanned epoch by far (XLA:CPU runs a
    convolution inside a loop body far slower than the same convolution at the top level);
    on GPU one scanned epoch avoids per-step dispatch."""
    if mode != "auto":
        return mode
    backend = backend or jax.default_backend()
    return "loop" if backend == "cpu" else "scan"


def resolve_seed_strategy(strategy: str, num_seeds: int | None = None, backend: str | None = None) -> str:
    """'auto' -> the fastest way to train several seeds, as measured (benchmarks/RESULTS.md).

    - "vmap": per-seed weights turn every convolution into a grouped convolution
      (feature_group_count = S forward, batch_group_count = S for the weight gradient),
      which XLA runs far below the speed of S plain convolutions, on CPU and on GPU.
    - "map" (`lax.map`): the seeds' steps run in a while loop; on GPU each convolution
      stays a plain cuDNN call, but XLA:CPU runs convolutions inside a loop body far
      slower than the same convolution at the top level (the same cause makes scanned
      epochs lose on CPU).
    - "unroll": the S single-seed forward/backward passes written one after another in
      one program (plain top-level convolutions), the optimizer update vmapped over the
      stacked state. Compile time grows with S. Each seed's parameters are sliced out of
      the stacked state and its gradients stacked back in every step: copies of the base
      CNN's large dense kernel that make a seed's step slower than one seed alone.
    - "sequential" (epoch loop only, one device): each seed's epoch runs by itself, through
      the single-seed gradient and update programs, and the seeds are stacked again after
      the epoch: no per-step copies, one compilation for all seeds.

    'auto' is "sequential" on CPU and "map" elsewhere; one seed always runs the plain program.
    Init, batch plans and evaluation run in one program for all seeds ("sequential" writes
    them unrolled).
    """
    if strategy != "auto":
        return strategy
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "sequential"
    return "unroll" if num_seeds == 1 else "map"


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
        self.tx = tx
        self.fns = make_step_fns(model, tx, cfg, num_examples)
        self.steps_per_epoch = steps_per_epoch(num_examples, cfg.batch_size)
        self.epoch_mode = resolve_epoch_mode(cfg.epoch_mode)
        self.sharding = sharding
        self._data_cache: dict[int, tuple[Any, Any]] = {}
        fns = self.fns
        per_seed = self._per_seed

        self.init = jax.jit(per_seed(fns.init, (0, None, None)))
        self.batch_plan = jax.jit(per_seed(fns.batch_plan, (0, None)))
        self.train_step = jax.jit(self._shard(_lift_train_step(fns, cfg.seed_strategy), _STEP_IN_AXES),
                                  donate_argnums=0)
        self._step_grads = jax.jit(self._shard(_lift_step_grads(fns, cfg.seed_strategy), _STEP_IN_AXES))
        self._apply_grads = jax.jit(self._shard(jax.vmap(fns.apply_grads), (0, 0, 0)), donate_argnums=0)
        self._seed_grads = jax.jit(_state_grads(fns))  # one seed, no seed axis ("sequential")
        self._seed_apply = jax.jit(fns.apply_grads, donate_argnums=0)
        self.train_epoch = jax.jit(per_seed(fns.train_epoch, (0, None, None, None)), donate_argnums=0)
        self.evaluate = jax.jit(per_seed(fns.evaluate, (0, None, None)))
        if sharding is not None:  # same signature; the data are replicated on the mesh first
            evaluate = self.evaluate
            self.evaluate = lambda state, images, labels: evaluate(state, self._data(images), self._data(labels))

    def _per_seed(self, fn: Callable, in_axes: tuple) -> Callable:
        """Lift a single-seed fn to the seed axis by vmap, lax.map or unrolling (same signature);
        with a seed sharding, each device lifts it over its own seeds inside a shard_map."""
        return self._shard(lift_seeds(fn, in_axes, self.cfg.seed_strategy), in_axes)

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

    def init_state(self, seeds: Sequence[int], sample_images, pretrained=None, start=None) -> TrainState:
        """The seeds' fresh state. `pretrained`: weights every seed shares (merged into the fresh ones);
        `start`: per-seed weights (`.params` and `.batch_stats` stacked over `seeds`, as a restored run
        has them) that replace the fresh ones, with a fresh optimizer state: fine-tuning starts there."""
        keys = jnp.stack([seed_key(int(s)) for s in seeds])
        if self.sharding is not None:
            keys = jax.device_put(keys, self.sharding)
            sample = self._data(jnp.asarray(sample_images[:1]))
            if pretrained is not None:  # a pytree of arrays, replicated like the data
                pretrained = jax.device_put(pretrained, jax.sharding.NamedSharding(
                    self.sharding.mesh, jax.sharding.PartitionSpec()))
            state = self.init(keys, sample, pretrained)
        else:
            state = self.init(keys, jnp.asarray(sample_images[:1]), pretrained)
        return state if start is None else self._start_from(state, start)

    def _start_from(self, state: TrainState, start) -> TrainState:
        def take(fresh, given):  # same tree and shapes as the fresh state, else the model differs
            given = jnp.asarray(given, fresh.dtype)
            if given.shape != fresh.shape:
                raise ValueError(f"start weights of shape {given.shape}, the model has {fresh.shape}")
            return given if self.sharding is None else jax.device_put(given, self.sharding)

        params = jax.tree.map(take, state.params, start.params)
        stats = jax.tree.map(take, state.batch_stats, start.batch_stats) if state.batch_stats else state.batch_stats
        return state.replace(params=params, batch_stats=stats, opt_state=jax.jit(jax.vmap(self.tx.init))(params))

    def run_epoch(self, state: TrainState, images, labels, epoch: int,
                  steps: int | None = None) -> tuple[TrainState, EpochMetrics]:
        """One epoch for every seed; returns summed metrics with shape [S]. `steps`: only the epoch's
        first steps (benchmarks; loop mode)."""
        images, labels = self._data(images), self._data(labels)
        if self.epoch_mode == "scan":
            return self.train_epoch(state, images, labels, jnp.int32(epoch))
        idx, mask = self.batch_plan(state.key, jnp.int32(epoch))
        mask = mask[0] if self.sharding is None else self._data(np.asarray(mask[0]))  # same for every seed
        steps = self.steps_per_epoch if steps is None else min(steps, self.steps_per_epoch)
        num_seeds = state.key.shape[0]
        if self.sharding is None and resolve_seed_strategy(self.cfg.seed_strategy, num_seeds) == "sequential":
            seeds = [self._seed_epoch(jax.tree.map(lambda v, s=s: v[s], state), images, labels, idx[s], mask,
                                      epoch, steps) for s in range(num_seeds)]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *seeds)
        total = None
        for i in range(steps):
            state, m = self.loop_step(state, images, labels, idx[:, i], mask[i], jnp.int32(epoch), jnp.int32(i))
            total = m if total is None else jax.tree.map(jnp.add, total, m)
        return state, total

    def _seed_epoch(self, state: TrainState, images, labels, idx, mask, epoch: int, steps: int):
        """One seed's (unstacked) state through `steps` steps of `epoch`: (state, summed metrics)."""
        total = None
        for i in range(steps):
            grads, stats, m = self._seed_grads(state, images, labels, idx[i], mask[i], jnp.int32(epoch),
                                               jnp.int32(i))
            state = self._seed_apply(state, grads, stats)
            total = m if total is None else jax.tree.map(jnp.add, total, m)
        return state, total

    def loop_step(self, state: TrainState, images, labels, idx, mask, epoch, i) -> tuple[TrainState, EpochMetrics]:
        """`train_step` as two compiled calls, the gradients and then the optimizer update (state and
        gradients donated): the same numbers. In one program XLA copies every donated parameter that
        the backward pass still reads before updating it in place (the base CNN's large dense
        kernel, each step); across two programs the update writes in place with no copy
        (benchmarks/RESULTS.md). The epoch loop on CPU calls this."""
        grads, stats, metrics = self._step_grads(state, images, labels, idx, mask, epoch, i)
        return self._apply_grads(state, grads, stats), metrics


_STEP_IN_AXES = (0, None, None, 0, None, None, None)


def _num_seeds(args: Sequence[Any], in_axes: tuple) -> int:
    """The length of the seed axis: the leading dimension of the first argument lifted over it."""
    return jax.tree.leaves([a for a, ax in zip(args, in_axes) if ax == 0])[0].shape[0]


def _auto(lift: Callable[[str], Callable], in_axes: tuple) -> Callable:
    """Resolve seed_strategy "auto" at trace time from the (per-device) seed count: `lift(strategy)(*args)`."""
    def auto(*args):
        return lift(resolve_seed_strategy("auto", _num_seeds(args, in_axes)))(*args)

    return auto


def _lift_train_step(fns: StepFns, strategy: str) -> Callable:
    """train_step over a leading seed axis. As `lift_seeds`, except that "unroll" unrolls only
    the forward/backward pass (plain convolutions per seed) and vmaps the optimizer update:
    updating the stacked state in place instead of slicing every seed's params and optimizer
    moments out and stacking them back saves several copies of the state per step, which the
    base CNN's large dense layer makes costly on CPU (benchmarks/RESULTS.md)."""
    if strategy == "auto":
        return _auto(lambda s: _lift_train_step(fns, s), _STEP_IN_AXES)
    if strategy not in ("unroll", "sequential"):
        return lift_seeds(fns.train_step, _STEP_IN_AXES, strategy)
    grads_per_seed = _lift_step_grads(fns, "unroll")
    apply_per_seed = jax.vmap(fns.apply_grads)

    def step(state, images, labels, idx, mask, epoch, i):
        grads, stats, metrics = grads_per_seed(state, images, labels, idx, mask, epoch, i)
        return apply_per_seed(state, grads, stats), metrics

    return step


def _state_grads(fns: StepFns) -> Callable:
    """One seed's (state, images, labels, idx, mask, epoch, i) -> (grads, batch_stats, metrics)."""
    def grads(state, images, labels, idx, mask, epoch, i):
        return fns.step_grads(state.params, state.batch_stats, state.key, images, labels, idx, mask, epoch, i)

    return grads


def _lift_step_grads(fns: StepFns, strategy: str) -> Callable:
    """The gradient half of `_lift_train_step`, over a leading seed axis."""
    return lift_seeds(_state_grads(fns), _STEP_IN_AXES, strategy)


def lift_seeds(fn: Callable, in_axes: tuple, strategy: str) -> Callable:
    """`fn` over a leading seed axis of the arguments whose in_axes entry is 0: vmap, lax.map or unrolled.
    "auto" picks one at trace time from the (per-device) seed count and the backend."""
    if strategy == "auto":
        return _auto(lambda s: lift_seeds(fn, in_axes, s), in_axes)
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if strategy in ("unroll", "sequential"):  # "sequential" runs the epoch loop seed by seed, the rest unrolled
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
