"""Orbax checkpoints of the full multi-seed training state plus JSON metadata, and reduced
inference checkpoints (weights only) for shipping a trained model.

A training checkpoint = `state` (params, optimizer state, batch stats, rng keys, step;
leading seed axis) saved with `ocp.args.StandardSave`, and `meta` (epoch, history,
configs, data fingerprint, seeds) with `ocp.args.JsonSave`, composed with
`ocp.args.Composite`. An inference checkpoint holds `weights` ({params, batch_stats},
optionally float16) and `meta` with "kind": "weights". Saves are synchronous so that a
killed process never leaves a half-written latest checkpoint behind (Orbax writes to a
temporary folder `<epoch>.orbax-checkpoint-tmp` and renames it on completion).

Faults: a save that fails (a full disk) removes its temporary folder and is a one-line
`WriteFailed`; a checkpoint that does not read back is a one-line `CheckpointDamaged`, and a
resume (`restore_newest`) skips damaged ones for the newest that reads, setting the skipped
ones aside as `<epoch>.damaged` (Orbax and the run folder see only plain numbers as epochs).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bccd_jax.config import resume_problems
from bccd_jax.errors import UserError, WriteFailed, remedy
from bccd_jax.files import free_space, plain, reason, size_text

WEIGHTS_KIND = "weights"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's temporary folder of a save in progress: <epoch>.orbax-checkpoint-tmp
DAMAGED_SUFFIX = ".damaged"  # a checkpoint a resume skipped: <epoch>.damaged


class CheckpointDamaged(UserError):
    """A checkpoint whose files do not read back (truncated, missing, garbage): names it and why."""

    def __init__(self, path: Path, why: str, advice: str = ""):
        self.path, self.why = path, why
        super().__init__(f"checkpoint {path} is damaged: {why}" + (f"; {advice}" if advice else ""))


@dataclass(frozen=True)
class Skipped:
    """A damaged checkpoint a resume passed over, and where it was set aside."""

    epoch: int
    why: str
    moved_to: Path


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
        with _quiet_logs():  # Orbax logs an error per unreadable _CHECKPOINT_METADATA, which restoring does not need
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                     enable_async_checkpointing=False),
                item_handlers={"state": ocp.StandardCheckpointHandler(), "weights": ocp.StandardCheckpointHandler(),
                               "meta": ocp.JsonCheckpointHandler()},
            )

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def epochs(self) -> list[int]:
        """The epochs of the finished checkpoints, oldest first."""
        return sorted(int(e) for e in self.manager.all_steps())

    def save(self, epoch: int, state: Any, meta: Mapping[str, Any]) -> None:
        self._save(epoch, ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(plain(meta))),
                   _nbytes(state))

    def save_weights(self, epoch: int, weights: InferenceState, meta: Mapping[str, Any]) -> None:
        """An inference checkpoint: params and batch statistics only."""
        tree = {"params": weights.params, "batch_stats": weights.batch_stats}
        self._save(epoch, ocp.args.Composite(weights=ocp.args.StandardSave(tree),
                                             meta=ocp.args.JsonSave(plain({**meta, "kind": WEIGHTS_KIND}))),
                   _nbytes(tree))

    def _save(self, epoch: int, args: Any, nbytes: int) -> None:
        """One synchronous save; a failure removes its temporary folder and is one WriteFailed line (Orbax's own
        logs of it, tracebacks from its threads included, are muted)."""
        try:
            with _quiet_logs():
                self.manager.save(epoch, args=args, force=True)
                self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001  whatever Orbax or TensorStore raise: the save did not happen
            self.remove_temporaries(epoch)
            kept = self.epochs()
            raise WriteFailed(self.directory / str(epoch),
                              f"{reason(e)} ({free_space(self.directory)} free there, a checkpoint takes about "
                              f"{size_text(nbytes)})",
                              f"the checkpoints of epochs {', '.join(map(str, kept))} are kept" if kept else
                              "no checkpoint of it is kept", f"{remedy(e)}, then run the command again") from e

    def remove_temporaries(self, epoch: int | None = None) -> list[Path]:
        """Remove the temporary folders of saves that did not finish (of `epoch`, or all); the folders removed.
        Only the run's one writer may call this: a temporary folder is also a save in progress."""
        removed = []
        for p in sorted(self.directory.glob(f"{'*' if epoch is None else epoch}{TMP_SUFFIX}*")):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        return removed

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def read_meta(self, epoch: int | None = None) -> dict[str, Any]:
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise UserError(f"no checkpoint in {self.directory}; train first (or check the run folder)")
        try:
            with _quiet_logs():
                restored = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = restored["meta"]
        except Exception as e:  # noqa: BLE001  a missing or garbage meta file: the checkpoint is damaged
            raise CheckpointDamaged(self.directory / str(epoch), f"its meta does not read ({self._why(e)})") from e
        if not isinstance(meta, Mapping):
            raise CheckpointDamaged(self.directory / str(epoch), f"its meta is a {type(meta).__name__}, not a mapping")
        return dict(meta)

    def restore_newest(self, template_state: Any, expected_meta: Mapping[str, Any] | None = None,
                       force: bool = False) -> tuple[Any, dict, list[Skipped]]:
        """`restore` of the newest checkpoint that reads. Damaged newer ones are skipped and set aside as
        `<epoch>.damaged` once an older one restored (so the next save of their epoch can happen); when none reads,
        nothing is moved and the error names every one. Only the run's one writer may call this."""
        damaged: list[tuple[int, str]] = []
        for epoch in reversed(self.epochs()):
            try:
                state, meta = self.restore(template_state, epoch, expected_meta, force)
            except CheckpointDamaged as e:
                damaged.append((epoch, e.why))
                continue
            return state, meta, [Skipped(e, why, self._set_aside(e)) for e, why in damaged]
        if not damaged:
            raise UserError(f"no checkpoint in {self.directory} to resume from")
        whys = {why for _, why in damaged}
        told = f"epochs {', '.join(str(e) for e, _ in damaged)}: {whys.pop()}" if len(whys) == 1 else \
            "; ".join(f"epoch {e}: {why}" for e, why in damaged)
        raise UserError(f"no checkpoint in {self.directory} reads ({told}); they are left as they are: start a new "
                        "run (the same command without --resume)")

    def _set_aside(self, epoch: int) -> Path:
        """Rename checkpoint `epoch` to `<epoch>.damaged[-k]`, out of Orbax's and the run folder's sight."""
        dst, k = self.directory / f"{epoch}{DAMAGED_SUFFIX}", 1
        while dst.exists():
            k += 1
            dst = self.directory / f"{epoch}{DAMAGED_SUFFIX}-{k}"
        (self.directory / str(epoch)).rename(dst)
        self.manager.reload()
        return dst

    def _why(self, err: BaseException) -> str:
        """An Orbax or TensorStore read error in a few words (TensorStore's own, where Orbax wraps one), without
        the run folder's path."""
        inner = next((e for e in (err, err.__cause__, err.__context__)
                      if e is not None and _TENSORSTORE_STATUS.match(str(e))), err)
        return reason(inner, drop=rf' in OCDBT database at local file "[^"]*"|{re.escape(str(self.directory))}/')

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
        if meta.get("kind") != WEIGHTS_KIND and not (isinstance(meta.get("history"), Mapping) and "epoch" in meta):
            raise CheckpointDamaged(self.directory / str(epoch), "its meta lacks the epoch or the history")
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
        except Exception as e:  # noqa: BLE001  sorted below: a file that does not read, or another model
            if _read_error(e):
                raise CheckpointDamaged(self.directory / str(epoch),
                                        f"its {item} does not read ({self._why(e)})") from e
            raise UserError(f"checkpoint {self.directory}/{epoch} does not fit this model: "
                            f"{str(e).splitlines()[0][:200]}") from e
        return restored[item]

    def _check_shapes(self, item: str, epoch: int, abstract: Any) -> None:
        """Refuse a checkpoint whose saved array shapes differ from the model's, before Orbax reads it
        (a mismatch inside Orbax's async reads leaves tracebacks on stderr from worker threads)."""
        try:
            with _quiet_logs():
                saved = self.manager.item_metadata(epoch)[item]
        except Exception:  # noqa: BLE001  a missing or garbage metadata file
            saved = None
        if saved is None or not hasattr(saved, "tree"):
            raise CheckpointDamaged(self.directory / str(epoch), f"the metadata of its {item} does not read")
        shapes = {_key_path(p): tuple(getattr(m, "shape", ()))
                  for p, m in jax.tree_util.tree_leaves_with_path(saved.tree)}
        for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
            keys = _key_path(leaf_path)
            want, have = tuple(getattr(leaf, "shape", ())), shapes.get(keys)
            if have is not None and have != want:
                raise UserError(f"checkpoint {self.directory}/{epoch} does not fit this model: "
                                f"{'/'.join(keys)} has shape {have} there, the model expects {want}")

    def close(self) -> None:
        """Close Orbax's manager; after a failed save it may raise that failure again, which was reported."""
        with contextlib.suppress(Exception), _quiet_logs():
            self.manager.close()


_TENSORSTORE_STATUS = re.compile(r"^(OUT_OF_RANGE|DATA_LOSS|NOT_FOUND|FAILED_PRECONDITION|INVALID_ARGUMENT|"
                                 r"UNKNOWN|INTERNAL|UNAVAILABLE|ABORTED):")


def _read_error(err: BaseException) -> bool:
    """Whether a restore failed on the files (missing, truncated, garbage) rather than on the model."""
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, (FileNotFoundError, EOFError, json.JSONDecodeError, UnicodeDecodeError)):
            return True
        if e is not None and _TENSORSTORE_STATUS.match(str(e)):
            return True
    return False


def _nbytes(tree: Any) -> int:
    return int(sum(getattr(a, "nbytes", 0) for a in jax.tree.leaves(tree)))


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
