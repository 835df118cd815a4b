"""The training runner: `fit` trains S seeds at once for a number of epochs, evaluating every epoch.

It owns what the pure functions cannot: the epoch loop, scoring the evaluation sets and their
subsets (bccd_jax.data.train_data), Orbax checkpoints every k epochs, resume, and a clean stop on
Ctrl-C / SIGTERM. The step functions are in `bccd_jax.steps` (one seed) and `bccd_jax.seeds`
(many seeds at once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import numpy as np
import optax
from scipy.special import log_softmax

from bccd_jax.config import TrainConfig
from bccd_jax.data.train_data import TrainData
from bccd_jax.errors import UserError
from bccd_jax.seeds import MultiSeedTrainer
from bccd_jax.steps import TrainState


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: dict[str, list]  # "epoch": [e...], "<split>_<loss|acc>": [[per-seed] per epoch]
    seeds: list[int]
    final_logits: dict[str, np.ndarray]  # evaluation set -> [S, N, C] after the last epoch
    interrupted: bool = False
    wall_s: float = 0.0  # over every process of a resumed run
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


def subset_scores(logits: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-seed mean cross-entropy and accuracy of logits [S, N, C] against labels [N]."""
    logp = log_softmax(np.asarray(logits, np.float64), axis=-1)
    labels = np.asarray(labels)
    ce = -np.take_along_axis(logp, labels[None, :, None], axis=-1)[..., 0]
    return ce.mean(axis=1).tolist(), (logp.argmax(-1) == labels[None]).mean(axis=1).tolist()


def evaluate_sets(trainer: MultiSeedTrainer, state: TrainState,
                  data: TrainData) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """Every evaluation set's logits [S, N, C], and the per-seed loss and accuracy of each set and subset."""
    logits, scores = {}, {}
    for name, (images, labels) in data.eval_sets.items():
        loss, acc, out = trainer.evaluate(state, images, labels)
        logits[name] = np.asarray(out)
        scores[f"{name}_loss"], scores[f"{name}_acc"] = np.asarray(loss).tolist(), np.asarray(acc).tolist()
    for name, (parent, idx) in data.eval_subsets.items():
        labels = np.asarray(data.eval_sets[parent][1])[idx]
        scores[f"{name}_loss"], scores[f"{name}_acc"] = subset_scores(logits[parent][:, idx], labels)
    return logits, scores


def record_epoch(history: dict[str, list], epoch: int, metrics, scores: Mapping[str, list[float]]) -> None:
    """Append one epoch's training metrics (summed over its steps) and evaluation scores to `history`."""
    count = np.asarray(metrics.count)
    history["epoch"].append(epoch)
    history["train_loss"].append((np.asarray(metrics.loss_sum) / count).tolist())
    history["train_acc"].append((np.asarray(metrics.correct) / count).tolist())
    for key, value in scores.items():
        history[key].append(value)


def resume_from(checkpoints, state: TrainState, expected_meta: Mapping[str, Any],
                force: bool) -> tuple[TrainState, dict[str, list], int, float]:
    """The newest checkpoint that reads: its state, history, epoch and the training time of the processes before
    it. A damaged newer one is skipped with one warning line (bccd_jax.checkpoints.restore_newest)."""
    state, meta, skipped = checkpoints.restore_newest(state, expected_meta=expected_meta, force=force)
    for s in skipped:
        print(f"[bccd_jax] warning: skipped checkpoint {checkpoints.directory}/{s.epoch}, it is damaged ({s.why}); "
              f"set aside as {s.moved_to.name}", file=sys.stderr)
    start_epoch = int(meta["epoch"])
    print(f"[bccd_jax] resumed from {checkpoints.directory} at epoch {start_epoch}", file=sys.stderr)
    return state, meta["history"], start_epoch, float(meta.get("wall_s", 0.0))


def compile_estimate(epoch_times: Sequence[float]) -> float:
    """Time of the first epoch beyond the median of the others: roughly what compiling took."""
    if len(epoch_times) < 2:
        return 0.0
    return max(0.0, epoch_times[0] - float(np.median(epoch_times[1:])))


def fit(model: nn.Module, tx: optax.GradientTransformation, cfg: TrainConfig, data: TrainData,
        seeds: Sequence[int], *, checkpoints=None, run_meta: Mapping[str, Any] | None = None,
        resume: bool = False, force: bool = False, pretrained=None, start=None,
        on_epoch: Callable[[int, dict[str, list]], None] | None = None,
        stop_after_epoch: int | None = None, sharding=None) -> FitResult:
    """Train `len(seeds)` seeds at once for cfg.epochs epochs (fewer when cfg.stop_at_train_acc is reached),
    evaluating every epoch.

    checkpoints: a bccd_jax.checkpoints.CheckpointStore or None. With it the full
    state and history are saved every cfg.checkpoint_every epochs, at the end, and
    on Ctrl-C/SIGTERM; `resume=True` continues from the newest checkpoint that reads after
    checking `run_meta` (config, data fingerprint, seeds) matches unless `force`.
    `stop_after_epoch` stops early as if interrupted (used by tests). `pretrained` (weights all seeds
    share) and `start` (per-seed weights to fine-tune) as in MultiSeedTrainer.init_state.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise UserError("no seeds given; pass at least one seed")
    n = int(data.train_images.shape[0])
    if n == 0:
        raise UserError("the training split is empty")
    trainer = MultiSeedTrainer(model, tx, cfg, n, sharding=sharding)
    history = empty_history(list(data.eval_sets) + list(data.eval_subsets))
    state = trainer.init_state(seeds, data.train_images, pretrained, start)
    start_epoch, wall_before = 0, 0.0  # wall_before: training time of the processes before a resume
    if checkpoints is not None and resume and checkpoints.latest_epoch() is not None:
        state, history, start_epoch, wall_before = resume_from(checkpoints, state, dict(run_meta or {}, seeds=seeds),
                                                               force)

    def save(epoch: int):
        if checkpoints is not None:
            checkpoints.save(epoch, state, dict(run_meta or {}, seeds=seeds, epoch=epoch, history=history,
                                                wall_s=wall_before + time.perf_counter() - t_start))

    epoch_times: list[float] = []
    interrupted = False
    final_logits: dict[str, np.ndarray] | None = None
    t_start = time.perf_counter()
    with _StopFlag() as stop:
        # a run resumed after its stopping epoch trains nothing more
        for epoch in range(start_epoch, start_epoch if cfg.reached_stop(history["train_acc"]) else cfg.epochs):
            t0 = time.perf_counter()
            state, m = trainer.run_epoch(state, data.train_images, data.train_labels, epoch)
            final_logits, scores = evaluate_sets(trainer, state, data)
            record_epoch(history, epoch + 1, m, scores)
            epoch_times.append(time.perf_counter() - t0)
            if on_epoch is not None:
                on_epoch(epoch + 1, history)
            last = epoch + 1 == cfg.epochs or cfg.reached_stop(history["train_acc"])
            if stop.requested or (stop_after_epoch is not None and epoch + 1 >= stop_after_epoch):
                save(epoch + 1)
                interrupted = not last
                break
            if last or (cfg.checkpoint_every > 0 and (epoch + 1) % cfg.checkpoint_every == 0):
                save(epoch + 1)
            if last:
                break
    if checkpoints is not None:
        checkpoints.wait()
    if final_logits is None:  # resumed at the end: nothing trained, evaluate the restored state once
        final_logits, _ = evaluate_sets(trainer, state, data)
    return FitResult(state=state, history=history, seeds=seeds, final_logits=final_logits, interrupted=interrupted,
                     wall_s=wall_before + time.perf_counter() - t_start, compile_s=compile_estimate(epoch_times))
