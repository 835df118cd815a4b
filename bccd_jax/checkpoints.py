"""Orbax checkpoints of the full multi-seed training state plus JSON metadata.

One checkpoint = `state` (params, optimizer state, batch stats, rng keys, step;
leading seed axis) saved with `ocp.args.StandardSave`, and `meta` (epoch,
history, configs, data fingerprint, seeds) with `ocp.args.JsonSave`, composed
with `ocp.args.Composite`. Saves are synchronous so that a killed process never
leaves a half-written latest checkpoint behind (Orbax writes to a temporary
folder and renames it on completion).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from bccd_jax.errors import UserError

# meta keys that must match for a resume to be allowed (others, e.g. epochs, may change)
_IGNORED_ON_RESUME = {"epoch", "history", "command", "created", "versions", "git_commit", "timestamp"}
_TRAIN_FIELDS_FREE_ON_RESUME = {"epochs", "checkpoint_every", "epoch_mode", "eval_batch_size"}


class CheckpointStore:
    """A folder of numbered checkpoints (the number is the epoch count completed)."""

    def __init__(self, directory: str | Path, max_to_keep: int | None = 3):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False),
        )

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def all_epochs(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, epoch: int, state: Any, meta: Mapping[str, Any]) -> None:
        self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(_jsonable(meta))),
                          force=True)

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
        """Restore into the structure/shapes/shardings of `template_state`.

        With `expected_meta`, refuse (UserError) when the saved run differs in config,
        data fingerprint or seeds, unless `force`.
        """
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise UserError(f"no checkpoint in {self.directory} to resume from")
        meta = self.read_meta(epoch)
        if expected_meta is not None and not force:
            diff = meta_differences(meta, expected_meta)
            if diff:
                raise UserError(f"cannot resume from {self.directory}: {'; '.join(diff)} "
                                "(start a new run folder, or pass --force to resume anyway)")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        self._check_shapes(epoch, abstract)
        try:
            with _quiet_logs():  # Orbax logs a full traceback before raising on a shape mismatch
                restored = self.manager.restore(
                    epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                   meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"checkpoint {self.directory}/{epoch} does not fit this model: "
                            f"{str(e).splitlines()[0][:200]}") from e
        return restored["state"], dict(restored["meta"])

    def _check_shapes(self, epoch: int, abstract: Any) -> None:
        """Refuse a checkpoint whose saved array shapes differ from the model's, before Orbax reads it
        (a mismatch inside Orbax's async reads leaves tracebacks on stderr from worker threads)."""
        path = self.directory / str(epoch) / "state" / "_METADATA"
        try:
            saved = json.loads(path.read_text())["tree_metadata"]
        except (OSError, ValueError, KeyError):
            return  # no readable metadata: let Orbax decide
        shapes = {}
        for entry in saved.values():
            keys = tuple(str(k["key"]) for k in entry.get("key_metadata", []))
            shape = entry.get("value_metadata", {}).get("write_shape")
            if shape is not None:
                shapes[keys] = tuple(shape)
        for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
            keys = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in leaf_path)
            want = tuple(getattr(leaf, "shape", ()))
            have = shapes.get(keys)
            if have is not None and have != want:
                raise UserError(f"checkpoint {self.directory}/{epoch} does not fit this model: "
                                f"{'/'.join(keys)} has shape {have} there, the model expects {want}")

    def close(self) -> None:
        self.manager.close()


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


def meta_differences(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a saved run's metadata and the current one."""
    out = []
    for key, want in expected.items():
        if key in _IGNORED_ON_RESUME:
            continue
        have = saved.get(key)
        if key == "train" and isinstance(have, dict) and isinstance(want, dict):
            have = {k: v for k, v in have.items() if k not in _TRAIN_FIELDS_FREE_ON_RESUME}
            want = {k: v for k, v in want.items() if k not in _TRAIN_FIELDS_FREE_ON_RESUME}
        if _jsonable(have) != _jsonable(want):
            out.append(f"{key} differs (saved {_short(have)}, now {_short(want)})")
    return out


def _short(value: Any) -> str:
    s = json.dumps(_jsonable(value), sort_keys=True)
    return s if len(s) <= 120 else s[:117] + "..."


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so tuples/lists and numpy scalars compare equal."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
