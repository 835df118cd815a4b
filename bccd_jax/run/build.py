"""A run's config made trainable (`build`), and a trained run made usable (`restore`, `export_model`).

`build` is the one place where a ModelConfig/TrainConfig pair becomes a Flax module, an optax
transformation and pretrained weights, for training and for restoring alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bccd_jax.config import ModelConfig, TrainConfig, to_dict
from bccd_jax.errors import UserError
from bccd_jax.run.folder import DataRecord, RunFolder, RunRecord, VariantRecord, VariantResult, finished_variant


# ----------------------------------------------------------------------------- config -> model


@dataclass
class Built:
    """A config made trainable: the Flax module, the optax transformation (frozen layers masked),
    pretrained parameters to merge at init (None for a model trained from scratch), and the shape
    of one input. With a cached frozen prefix (`cut` > 0, vgg16 only) the module is the top of the
    network, its input the prefix's output (bccd_jax.features), and `prefix` the prefix's weights."""

    model: Any
    tx: Any
    pretrained: Any = None
    input_shape: tuple[int, ...] = ()
    cut: int = 0
    prefix: Any = None


def cached_cut(model_cfg: ModelConfig, train_cfg: TrainConfig) -> int:
    """How many leading VGG16 blocks a variant trains above cached features (0: none, the whole network)."""
    from bccd_jax.transfer import frozen_prefix

    if model_cfg.arch != "vgg16" or not model_cfg.pretrained or not train_cfg.feature_cache:
        return 0
    if train_cfg.augment.active:
        return 0  # an augmented image changes every epoch: nothing to cache
    return frozen_prefix(model_cfg.freeze)


def build(model_cfg: ModelConfig, train_cfg: TrainConfig, data: DataRecord, *, optimizer=None,
          load_pretrained: bool = True) -> Built:
    """The model, optimizer and pretrained weights of one variant, for training or for restoring.

    `optimizer` (an optax chain) replaces train_cfg's named optimizer. `load_pretrained=False`
    skips reading the weights file (a restore overwrites them anyway).
    """
    import jax

    from bccd_jax.models import build_model
    from bccd_jax.optimizers import make_optimizer
    from bccd_jax.steps import steps_per_epoch

    spe = steps_per_epoch(int(data.splits.get("train", 1)), train_cfg.batch_size)
    tx = optimizer if optimizer is not None else make_optimizer(train_cfg, steps_per_epoch=spe)
    if model_cfg.arch != "vgg16":
        return Built(build_model(model_cfg, train_mean=data.train_mean), tx, input_shape=tuple(data.image_shape))
    from bccd_jax.features import split_weights
    from bccd_jax.models.vgg import VGG16_BLOCKS
    from bccd_jax.models.vgg_weights import load_vgg16_conv_weights
    from bccd_jax.transfer import freeze, freeze_vgg16, vgg16_trainable

    cut = cached_cut(model_cfg, train_cfg)
    model = build_model(model_cfg, first_block=cut + 1)
    h, w, _ = data.image_shape
    shape = (h >> cut, w >> cut, VGG16_BLOCKS[cut - 1][-1]) if cut else tuple(data.image_shape)
    conv = load_vgg16_conv_weights(model_cfg.pretrained)[1] if model_cfg.pretrained and (load_pretrained or cut) \
        else None
    prefix, pretrained = split_weights(conv, cut) if conv is not None else (None, None)
    sample = jax.ShapeDtypeStruct((1, *shape), np.float32 if cut else np.uint8)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), sample)
    # the top of a cached network has no frozen layer left; the whole network masks the frozen ones
    tx = freeze(tx, abstract["params"], vgg16_trainable(model_cfg.freeze)) if cut else \
        freeze_vgg16(tx, abstract["params"], model_cfg.freeze)
    return Built(model, tx, pretrained if load_pretrained else None, shape, cut, prefix)


# ----------------------------------------------------------------------------- restore


@dataclass
class Restored:
    """A trained variant ready for inference: model, state (leading seed axis), what it was trained on."""

    folder: RunFolder
    variant: VariantRecord
    data: DataRecord
    model: Any
    state: Any
    epoch: int
    seeds: list[int]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.data.image_size

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """[S, N, C] logits of every restored seed on uint8 images of the run's size (its TTA applied)."""
        return predict_logits(self.model, self.state, images, batch_size, self.variant.train.eval_tta)

    def with_tta(self, tta: str) -> "Restored":
        """The same model evaluated with another test-time averaging (TrainConfig.eval_tta)."""
        train = dataclasses.replace(self.variant.train, eval_tta=tta).validate()
        return dataclasses.replace(self, variant=dataclasses.replace(self.variant, train=train))

    def preprocessing(self) -> str:
        """What a foreign image goes through before the network, in words."""
        m = self.variant.model
        h, w = self.image_size
        norm = {"scale": "pixels / 255" + (" after subtracting the training mean" if m.feature_centering else ""),
                "image": "each image standardised per channel (its own mean and standard deviation)",
                "density": "each image's optical density standardised per channel",
                "stain": "each image's haematoxylin, eosin and residual stain amounts standardised per channel"
                }[m.input_norm]
        if m.arch == "vgg16":
            norm = "ImageNet caffe preprocessing (BGR, minus the ImageNet mean)"
        tta = "; mean probability over the 4 flips" if self.variant.train.eval_tta == "flips" else ""
        return f"{w}x{h} RGB{' -> grey' if m.grayscale else ''}, {norm}{tta}"


def run_dataset(folder: RunFolder, data_dir: str | None, cache_dir: str | None = None):
    """The data a run was trained on (its data set, image size and crop) from `data_dir`; a UserError when that
    holds other data than the run's fingerprint."""
    from bccd_jax.data import load_dataset

    data = folder.record().data
    ds = load_dataset(data.dataset, data_dir=data_dir, image_size=tuple(data.image_size), cache_dir=cache_dir,
                      crop=data.crop)
    if ds.fingerprint != data.fingerprint:
        raise UserError(f"{data_dir or 'the embedded data'} holds other data (fingerprint {ds.fingerprint[:16]}) "
                        f"than {folder} was trained on ({data.fingerprint[:16]}); pass the run's own data set")
    return ds


def predict_logits(model: Any, state: Any, images, eval_batch_size: int = 256,
                   tta: str = "none") -> np.ndarray:
    """Logits [S, N, C] of every seed in `state` (leading seed axis) on `images` (0..255 NHWC)."""
    import jax

    from bccd_jax.seeds import lift_seeds
    from bccd_jax.steps import make_evaluate

    images = jax.numpy.asarray(images)
    labels = jax.numpy.zeros((images.shape[0],), jax.numpy.int32)
    evaluate = make_evaluate(model, max(1, min(eval_batch_size, images.shape[0])), tta)
    return np.asarray(jax.jit(lift_seeds(evaluate, (0, None, None), "auto"))(state, images, labels)[2])


def choose_variant(folder: RunFolder, record: RunRecord, variant: str | None) -> tuple[str, str | None]:
    """(variant, note) — the named one, checked, or the best finished one."""
    if variant is None:
        return folder.best_variant(record)
    if variant not in record.variants:
        raise UserError(f"unknown variant {variant!r}; run {folder} has {', '.join(record.variants)}")
    if not folder.checkpoint_epochs(variant):
        have = [v for v in record.variants if folder.checkpoint_epochs(v)]
        raise UserError(f"variant {variant!r} of {folder} has no checkpoint yet; "
                        f"variants with checkpoints: {', '.join(have) or 'none'}")
    return variant, None


def restore(run: str | Path | RunFolder, variant: str | None = None, seed: int | None = None,
            checkpoint: str | int = "latest", notes: list[str] | None = None) -> Restored:
    """Restore a trained variant (every seed, or one) from a run folder for inference.

    Works on full training checkpoints and on the reduced ones `export_model` writes.
    Problems with the folder, variant, seed or checkpoint are one-line UserErrors.
    """
    import jax

    from bccd_jax.checkpoints import CheckpointDamaged

    folder = run if isinstance(run, RunFolder) else RunFolder(run)
    record = folder.record()
    name, why = choose_variant(folder, record, variant)
    if why and notes is not None:
        notes.append(f"variant {name!r}: {why}; choose another with --variant")
    v = record.variants[name]
    if v.custom_optimizer:
        raise UserError(f"variant {name!r} was trained with a custom optax chain ({v.optimizer[:60]}); "
                        "restore it in Python with that chain")
    if seed is not None and seed not in v.seeds:
        raise UserError(f"unknown seed {seed} for variant {name!r}; the run has seeds {list(v.seeds)}")
    epochs = folder.checkpoint_epochs(name)
    if checkpoint == "latest":
        epoch = epochs[-1]
    else:
        try:
            epoch = int(checkpoint)
        except ValueError:
            raise UserError(f"--checkpoint expects 'latest' or an epoch number, got {checkpoint!r}") from None
        if epoch not in epochs:
            raise UserError(f"no checkpoint at epoch {epoch} for variant {name!r}; saved epochs: {epochs}")
    built = build(v.model, v.train, record.data, load_pretrained=False)
    store = folder.checkpoints(name)
    try:
        state, meta = store.restore_for_inference(built, list(v.seeds), epoch)
    except CheckpointDamaged as e:
        others = [e_ for e_ in epochs if e_ != epoch]
        raise CheckpointDamaged(e.path, e.why, f"the variant's other checkpoints are of epochs "
                                f"{', '.join(map(str, others))} (--checkpoint EPOCH of predict and evaluate)" if others
                                else "it is the variant's only one: resume the run (or ship it again) to write it "
                                     "anew") from e
    finally:
        store.close()
    model = built.model
    if built.cut:  # the top was trained on cached features: put the frozen prefix back under it
        from bccd_jax.checkpoints import InferenceState
        from bccd_jax.models import build_model

        n = jax.tree.leaves(state.params)[0].shape[0]
        prefix = jax.tree.map(lambda a: np.broadcast_to(a, (n, *a.shape)), folder.read_frozen(name))
        state = InferenceState({**prefix, **state.params}, state.batch_stats)
        model = build_model(v.model)
    saved_seeds = [int(s) for s in meta.get("seeds", v.seeds)]
    if seed is not None:
        if seed not in saved_seeds:
            raise UserError(f"checkpoint {folder.checkpoint_dir(name)}/{epoch} holds seeds {saved_seeds}, "
                            f"not seed {seed}")
        i = saved_seeds.index(seed)
        state = jax.tree.map(lambda x: x[i:i + 1], state)
        saved_seeds = [seed]
    return Restored(folder, v, record.data, model, state, epoch, saved_seeds)


def start_weights(model_cfg: ModelConfig, train_cfg: TrainConfig, seeds) -> Any:
    """The per-seed weights a fine-tuning variant starts from: the final checkpoint of variant
    `train_cfg.init_variant` in run folder `train_cfg.init_from`, stacked in the order of `seeds` (each
    seed starts from the same seed there); None for a variant that starts from a fresh initialisation."""
    import jax

    if not train_cfg.init_variant:
        return None
    name = train_cfg.init_variant
    if cached_cut(model_cfg, train_cfg):
        raise UserError(f"fine-tuning variant {name!r} of a run is not available above a cached VGG16 prefix; "
                        "set feature_cache=false")
    if train_cfg.init_from is None:
        raise UserError(f"this variant fine-tunes the weights of variant {name!r}: pass --init-from RUN_DIR, "
                        f"a run folder in which {name!r} finished")
    folder = RunFolder(train_cfg.init_from)
    try:  # restore's own checks: the folder, the variant, its checkpoints
        restored = restore(folder, name)
    except UserError as e:
        raise UserError(f"--init-from: {e}") from None
    v = restored.variant
    result = folder.results().get(name)
    # all its epochs, or stopped at its stopping accuracy (as a resume sees it) at the checkpoint restored
    if restored.epoch != v.train.epochs and not (finished_variant(result, v) and result.epochs == restored.epoch):
        raise UserError(f"--init-from {folder}: variant {name!r} has trained {restored.epoch} of {v.train.epochs} "
                        f"epochs; finish it first (python -m experiments.{folder.record().experiment} --resume "
                        f"{folder} --variants {name})")
    if v.model != model_cfg:
        diff = [f.name for f in dataclasses.fields(ModelConfig) if getattr(v.model, f.name) != getattr(model_cfg, f.name)]
        raise UserError(f"--init-from {folder}: variant {name!r} is another model (it differs in {', '.join(diff)})")
    missing = [int(s) for s in seeds if int(s) not in restored.seeds]
    if missing:
        raise UserError(f"--init-from {folder}: variant {name!r} has seeds {restored.seeds}, not {missing}")
    idx = np.asarray([restored.seeds.index(int(s)) for s in seeds])
    return jax.tree.map(lambda a: np.asarray(a)[idx], restored.state)


def export_model(restored: Restored, dst: str | Path, dtype: str = "float32", *, metrics: bool = True) -> RunFolder:
    """A run folder reduced to what inference needs: config.json with one variant and the restored
    seeds, and one weights-only checkpoint (params and batch statistics, optionally float16). `metrics=False`
    leaves out the source's training history, which does not describe weights changed since (bccd_jax.adapt)."""
    import jax.numpy as jnp

    from bccd_jax.checkpoints import InferenceState

    out = RunFolder(dst)
    if out.path.exists() and any(out.path.iterdir()):
        raise UserError(f"{out.path} exists and is not empty; choose another folder or remove it")
    out.path.mkdir(parents=True, exist_ok=True)
    record = restored.folder.record()
    v = dataclasses.replace(restored.variant, seeds=tuple(restored.seeds))
    if cached_cut(v.model, v.train):  # the exported weights are the whole network, prefix included
        v = dataclasses.replace(v, train=dataclasses.replace(v.train, feature_cache=False))
    out.write_record(dataclasses.replace(record, variants={v.name: v}, previous_commands=[], resumed_from=[]))
    results = restored.folder.results()
    if metrics and v.name in results:  # the exported seeds' share of the metrics, for best_variant and the record
        raw = dict(results[v.name].raw)
        keep = [raw["seeds"].index(s) for s in restored.seeds]
        raw["history"] = {k: (h if k == "epoch" else [[e[i] for i in keep] for e in h]) for k, h in raw["history"].items()}
        raw["seeds"] = list(restored.seeds)
        raw["exported_from"] = {"run": restored.folder.path.name, "seeds": results[v.name].seeds}
        out.write_results({v.name: VariantResult(v.name, raw)})
    cast = (lambda a: jnp.asarray(a, jnp.float16)) if dtype == "float16" else (lambda a: jnp.asarray(a, jnp.float32))
    import jax

    weights = InferenceState(jax.tree.map(cast, restored.state.params), jax.tree.map(cast, restored.state.batch_stats))
    store = out.checkpoints(v.name, max_to_keep=None)
    try:
        store.save_weights(restored.epoch, weights, {"seeds": list(restored.seeds), "epoch": restored.epoch,
                                                     "dtype": dtype, "train": to_dict(v.train)})
    finally:
        store.close()
    # Orbax's commit markers record the absolute path they were written to; a shipped folder is moved and
    # committed, and Orbax does not need them to restore from a local file system
    for marker in out.path.rglob("commit_success.txt"):
        marker.unlink()
    return out
