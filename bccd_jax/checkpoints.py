"""Orbax checkpoints of the full multi-seed training state plus JSON metadata, and reduced
inference checkpoints (weights only) for shipping a trained model.

A training checkpoint = `state` (params, optimizer state, batch stats, rng keys, step;
leading seed axis) saved with `ocp.args.StandardSave`, and `meta` (epoch, history,
configs, data fingerprint, seeds) with `ocp.args.JsonSave`, composed with
`ocp.args.Composite`. An inference checkpoint holds `weights` ({params, batch_stats},
optionally float16) and `meta` with "kind": "weights". Saves are synchronous so that a
killed process never leaves a half-written latest checkpoint behind (Orbax writes to a
temporary folder and renames it on completion).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bccd_jax.config import resume_problems
from bccd_jax.errors import UserError
from bccd_jax.files import plain

WEIGHTS_KIND = "weights"


@flax.struct.dataclass
class InferenceState:
    """What inference needs of a TrainState (leading seed axis)."""

    params: Any
    batch_stats: Any


class CheckpointStore:
    """A folder of numbered checkpoints (the number is the epoch count completed)."""

    def __init__(self, directory: str | Path, max_to_keep: int | None = 3):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "weights": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
        )

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, state: Any, meta: Mapping[str, Any]) -> None:
        self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(plain(meta))),
                          force=True)

    def save_weights(self, epoch: int, weights: InferenceState, meta: Mapping[str, Any]) -> None:
        """An inference checkpoint: params and batch statistics only."""
        self.manager.save(epoch, args=ocp.args.Composite(
            weights=ocp.args.StandardSave({"params": weights.params, "batch_stats": weights.batch_stats}),
            meta=ocp.args.JsonSave(plain({**meta, "kind": WEIGHTS_KIND}))), force=True)
        self.manager.wait_until_finished()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def read_meta(self, epoch: int | None = None) -> dict[str, Any]:
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise UserError(f"no checkpoint in {self.directory}; train first (or check the run folder)")
        restored = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, template_state: Any, epoch: int | None = None,
                expected_meta: Mapping[str, Any] | None = None, force: bool = False) -> tuple[Any, dict]:
        """Restore a training state into the structure/shapes/shardings of `template_state`.

        With `expected_meta`, refuse (UserError) when the saved run differs in config,
        data fingerprint or seeds (bccd_jax.config.resume_problems), unless `force`.
        """
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise UserError(f"no checkpoint in {self.directory} to resume from")
        meta = self.read_meta(epoch)
        if meta.get("kind") == WEIGHTS_KIND:
            raise UserError(f"checkpoint {self.directory}/{epoch} holds weights for inference only; "
                            "it cannot be resumed")
        if expected_meta is not None and not force:
            problems = resume_problems(meta, expected_meta)
            if problems:
                raise UserError(f"cannot resume from {self.directory}: {'; '.join(problems)} "
                                "(start a new run folder, or pass --force to resume anyway)")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        return self._restore_item("state", epoch, abstract), meta

    def restore_for_inference(self, built, seeds: list[int], epoch: int) -> tuple[Any, dict]:
        """(state with .params and .batch_stats, meta) from a training or a weights-only checkpoint.

        `built` is bccd_jax.run.build's result for the variant (its model and input shape).
        """
        meta = self.read_meta(epoch)
        seeds = meta.get("seeds", seeds)
        sample = jax.ShapeDtypeStruct((1, *built.input_shape), np.float32 if built.cut else np.uint8)
        if meta.get("kind") == WEIGHTS_KIND:
            variables = jax.eval_shape(lambda x: built.model.init(jax.random.PRNGKey(0), x, train=False), sample)
            dtype = jnp.dtype(meta.get("dtype", "float32"))
            stacked = jax.tree.map(lambda a: jax.ShapeDtypeStruct((len(seeds), *a.shape), dtype), variables)
            got = self._restore_item("weights", epoch, {"params": stacked["params"],
                                                        "batch_stats": stacked.get("batch_stats", {})})
            to32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
            return InferenceState(jax.tree.map(to32, got["params"]), jax.tree.map(to32, got["batch_stats"])), meta
        from bccd_jax.seeds import MultiSeedTrainer

        trainer = MultiSeedTrainer(built.model, built.tx, _train_cfg(meta), num_examples=1)
        template = jax.eval_shape(lambda: trainer.init_state(seeds, jnp.zeros(sample.shape, sample.dtype)))
        state = self._restore_item("state", epoch, jax.tree.map(ocp.utils.to_shape_dtype_struct, template))
        return InferenceState(state.params, state.batch_stats), meta

    def _restore_item(self, item: str, epoch: int, abstract: Any) -> Any:
        self._check_shapes(item, epoch, abstract)
        try:
            with _quiet_logs():  # Orbax logs a full traceback before raising on a shape mismatch
                restored = self.manager.restore(epoch, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)}))
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
            raise UserError(f"checkpoint {self.directory}/{epoch} does not fit this model: "
                            f"{str(e).splitlines()[0][:200]}") from e
        return restored[item]

    def _check_shapes(self, item: str, epoch: int, abstract: Any) -> None:
        """Refuse a checkpoint whose saved array shapes differ from the model's, before Orbax reads it
        (a mismatch inside Orbax's async reads leaves tracebacks on stderr from worker threads)."""
        try:
            saved = self.manager.item_metadata(epoch)[item]
        except (KeyError, ValueError, FileNotFoundError):
            saved = None
        if saved is None:
            raise UserError(f"checkpoint {self.directory}/{epoch} has no {item!r}; the run folder is damaged")
        shapes = {_key_path(p): tuple(getattr(m, "shape", ()))
                  for p, m in jax.tree_util.tree_leaves_with_path(saved.tree)}
        for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
            keys = _key_path(leaf_path)
            want, have = tuple(getattr(leaf, "shape", ())), shapes.get(keys)
            if have is not None and have != want:
                raise UserError(f"checkpoint {self.directory}/{epoch} does not fit this model: "
                                f"{'/'.join(keys)} has shape {have} there, the model expects {want}")

    def close(self) -> None:
        self.manager.close()


def _key_path(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _train_cfg(meta: Mapping[str, Any]):
    from bccd_jax.config import TrainConfig, from_dict

    return from_dict(TrainConfig, meta["train"]) if isinstance(meta.get("train"), Mapping) else TrainConfig()


@contextlib.contextmanager
def _quiet_logs():
    """Silence Orbax's side channels for a block; its errors are re-raised as one-line UserErrors.

    On a shape mismatch Orbax logs tracebacks (absl/asyncio loggers) and leaves failed read
    coroutines whose garbage collection prints "Exception ignored in ..." tracebacks through
    sys.unraisablehook; both are muted here, and the coroutines are collected before unmuting.
    """
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "asyncio")]
    levels = [lg.level for lg in loggers]
    hook = sys.unraisablehook
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = hook
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
