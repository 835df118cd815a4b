"""What a run is: its folder, its records, and how a config becomes a trainable (or restorable) model.

    <out>/<experiment>/<timestamp>/
        config.json    RunRecord: every setting, versions, hardware, git commit, data fingerprint, command
        metrics.json   per variant: per-seed per-epoch history and final evaluation statistics
        metrics.csv    the same history in long form (variant, seed, epoch, metric columns)
        figures/*.png  2x2 learning curves (mean and band over seeds), confusion matrices
        checkpoints/<variant>/<epoch>/   Orbax checkpoints (state + JSON meta)
        frozen/<variant>.npz   the frozen VGG16 prefix of a variant trained on cached features

Everything that reads or writes a run folder goes through `RunFolder`; everything that turns a
config into (model, optimizer, pretrained weights) goes through `build`; predict, evaluate
and the robustness benchmark restore a trained model with `restore`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bccd_jax.config import ModelConfig, TrainConfig, from_dict, resume_free_fields, to_dict
from bccd_jax.errors import UserError
from bccd_jax.files import write_atomic, write_json

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
METRICS_CSV = "metrics.csv"
FIGURES_DIR = "figures"
CHECKPOINTS_DIR = "checkpoints"
FROZEN_DIR = "frozen"
DATA_DIR_PLACEHOLDER = "$BCCD_DATA_DIR"
"""How a recorded command names the data folder it was given (a path of one machine is not recorded)."""


# ----------------------------------------------------------------------------- small shared helpers


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; is this a bccd_jax run folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the run folder is damaged") from e


def timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def cpu_model() -> str:
    """The host CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(names: Sequence[str] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")) -> list[str]:
    """Which of `names` the host CPU advertises in /proc/cpuinfo (empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [n for n in names if n in have]
    except OSError:
        pass
    return []


def hardware() -> dict[str, Any]:
    """The machine a number was measured on."""
    import jax

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()]}


def versions() -> dict[str, str]:
    """Versions of everything that can change a number."""
    import flax
    import jax
    import jaxlib
    import optax
    import orbax.checkpoint

    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "orbax_checkpoint": orbax.checkpoint.__version__,
            "numpy": np.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "platform": platform.platform(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def git_commit() -> str | None:
    """HEAD of the repository holding this package, with '-dirty' when it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed (`python -m pkg.mod ...` for modules), with the data folder as $BCCD_DATA_DIR."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--data-dir" and i + 1 < len(argv):
            argv[i + 1] = DATA_DIR_PLACEHOLDER
        elif a.startswith("--data-dir="):
            argv[i] = f"--data-dir={DATA_DIR_PLACEHOLDER}"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["-m", spec.name] if spec is not None and spec.name else [Path(sys.argv[0]).name]
    return " ".join([Path(sys.executable).name, *head, *(a if a == DATA_DIR_PLACEHOLDER else shlex.quote(a)
                                                         for a in argv)])


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class DataRecord:
    """The data a run was trained on: enough to refuse a resume on other data and to rebuild the model."""

    dataset: str
    image_shape: tuple[int, int, int]
    fingerprint: str
    train_mean: tuple[float, float, float]
    splits: dict[str, int]
    source: str = ""  # the data folder's name (dataset2-master, an export file), never its path

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.image_shape[0]), int(self.image_shape[1])


@dataclass(frozen=True)
class VariantRecord:
    """One trained arm of an experiment as config.json records it."""

    name: str
    model: ModelConfig
    train: TrainConfig
    seeds: tuple[int, ...]
    group: str = ""
    optimizer: str = ""  # the optimizer's name, or a description of the custom optax chain

    @property
    def custom_optimizer(self) -> bool:
        return self.optimizer != self.train.optimizer

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "model": to_dict(self.model), "train": to_dict(self.train),
                "seeds": list(self.seeds), "optimizer": self.optimizer}

    @staticmethod
    def from_json(name: str, d: Mapping[str, Any]) -> "VariantRecord":
        model = from_dict(ModelConfig, d["model"]).validate()
        train = from_dict(TrainConfig, d["train"]).validate()
        return VariantRecord(name, model, train, tuple(int(s) for s in d["seeds"]), d.get("group", ""),
                             d.get("optimizer", train.optimizer))


@dataclass
class RunRecord:
    """config.json: what was run, on what data, with which code, on which machine."""

    experiment: str
    data: DataRecord
    variants: dict[str, VariantRecord]
    description: str = ""
    protocol: str = ""
    eval_splits: tuple[str, ...] = ("test",)
    command: str = ""
    created: str = ""
    git_commit: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    previous_commands: list[str] = field(default_factory=list)
    resumed_from: list[str] = field(default_factory=list)  # when each resumption started

    def to_json(self) -> dict[str, Any]:
        from bccd_jax import CLASS_NAMES

        d = dataclasses.asdict(self)
        d["data"] = dataclasses.asdict(self.data)
        d["variants"] = {n: v.to_json() for n, v in self.variants.items()}
        d["class_names"] = list(CLASS_NAMES)
        return d

    @staticmethod
    def from_json(d: Mapping[str, Any], where: str = CONFIG_FILE) -> "RunRecord":
        try:
            data = dict(d["data"])
            data.pop("data_dir", None)  # older records named the folder
            rec = DataRecord(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(DataRecord)}})
            rec = dataclasses.replace(rec, image_shape=tuple(rec.image_shape), train_mean=tuple(rec.train_mean))
            variants = {n: VariantRecord.from_json(n, v) for n, v in d["variants"].items()}
            names = {f.name for f in dataclasses.fields(RunRecord)} - {"data", "variants"}
            rest = {k: v for k, v in d.items() if k in names}
            if "eval_splits" in rest:
                rest["eval_splits"] = tuple(rest["eval_splits"])
            return RunRecord(data=rec, variants=variants, **rest)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where} is incomplete or damaged ({type(e).__name__}: {e})") from None


@dataclass
class VariantResult:
    """One variant's entry of metrics.json, with typed access to what the report and predict need."""

    name: str
    raw: dict[str, Any]

    @property
    def incomplete(self) -> bool:
        return bool(self.raw.get("incomplete"))

    @property
    def group(self) -> str:
        return self.raw.get("group", "")

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.raw["seeds"]]

    @property
    def history(self) -> dict[str, list]:
        return self.raw["history"]

    @property
    def epochs(self) -> int:
        return len(self.history["epoch"])

    @property
    def wall_s(self) -> float:
        return float(self.raw.get("wall_s", 0.0))

    def final(self, split: str = "test") -> dict[str, Any] | None:
        """The final evaluation statistics of a split (bccd_jax.metrics.summarize_predictions), if any."""
        return self.raw.get("final", {}).get(split)

    def curve(self, key: str) -> np.ndarray:
        """[epochs, seeds] of a history entry, e.g. 'test_acc'."""
        return np.asarray(self.history[key], dtype=float)

    def final_acc(self, split: str = "test") -> np.ndarray:
        """Per-seed accuracy after the last epoch."""
        return self.curve(f"{split}_acc")[-1]

    def mean_final_acc(self, split: str = "test") -> float:
        return float(self.final_acc(split).mean())


# ----------------------------------------------------------------------------- the folder


class RunFolder:
    """A run folder on disk: the one place that knows its layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @staticmethod
    def create(root: str | Path, experiment: str) -> "RunFolder":
        """A fresh <root>/<experiment>/<timestamp>[-k]/ folder."""
        base = Path(root) / experiment
        base.mkdir(parents=True, exist_ok=True)
        stamp = timestamp()
        path, k = base / stamp, 1
        while path.exists():
            k += 1
            path = base / f"{stamp}-{k}"
        path.mkdir()
        return RunFolder(path)

    @staticmethod
    def latest(root: str | Path, experiment: str) -> "RunFolder":
        base = Path(root) / experiment
        found = sorted(p for p in base.glob("*") if (p / CONFIG_FILE).exists()) if base.exists() else []
        if not found:
            raise UserError(f"no run of {experiment!r} under {base} to resume; run without --resume first")
        return RunFolder(found[-1])

    # files
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def figures(self) -> Path:
        return self.path / FIGURES_DIR

    def checkpoint_dir(self, variant: str) -> Path:
        return self.path / CHECKPOINTS_DIR / variant

    def exists(self) -> bool:
        return self.config_path.is_file()

    def check(self) -> "RunFolder":
        if not self.path.is_dir():
            raise UserError(f"run folder {self.path} does not exist; pass a folder written by an experiment")
        if not self.config_path.is_file():
            raise UserError(f"{self.path} has no {CONFIG_FILE}: not a run folder written by an experiment")
        return self

    # records
    def record(self) -> RunRecord:
        return RunRecord.from_json(read_json(self.check().config_path), str(self.config_path))

    def write_record(self, record: RunRecord) -> None:
        write_json(self.config_path, record.to_json())

    def results(self) -> dict[str, VariantResult]:
        """metrics.json as {variant: VariantResult}; {} while nothing has finished."""
        if not self.metrics_path.exists():
            return {}
        return {k: VariantResult(k, v) for k, v in read_json(self.metrics_path).items()}

    def write_results(self, results: Mapping[str, VariantResult]) -> None:
        raw = {k: r.raw for k, r in results.items()}
        write_json(self.metrics_path, raw)
        _write_metrics_csv(self.path / METRICS_CSV, raw)

    def write_extra(self, name: str, obj: Any) -> Path:
        """Another JSON document of this run (e.g. robustness.json)."""
        path = self.path / name
        write_json(path, obj)
        return path

    def read_extra(self, name: str) -> Any | None:
        path = self.path / name
        return read_json(path) if path.exists() else None

    # the frozen prefix of a variant trained on cached features (bccd_jax.features)
    def frozen_path(self, variant: str) -> Path:
        return self.path / FROZEN_DIR / f"{variant}.npz"

    def write_frozen(self, variant: str, weights: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        self.frozen_path(variant).parent.mkdir(exist_ok=True)
        flat = {f"{layer}/{part}": np.asarray(a) for layer, w in weights.items() for part, a in w.items()}
        write_atomic(self.frozen_path(variant), lambda f: np.savez(f, **flat))

    def read_frozen(self, variant: str) -> dict[str, dict[str, np.ndarray]]:
        path = self.frozen_path(variant)
        if not path.is_file():
            raise UserError(f"{path} is missing: variant {variant!r} was trained above a frozen prefix whose weights "
                            "the run folder should hold; the run folder is incomplete")
        out: dict[str, dict[str, np.ndarray]] = {}
        with np.load(path) as z:
            for key in z.files:
                layer, part = key.split("/")
                out.setdefault(layer, {})[part] = z[key]
        return out

    # checkpoints
    def checkpoint_epochs(self, variant: str) -> list[int]:
        """Finished Orbax step folders (plain integers; temporary folders of an interrupted save are skipped)."""
        d = self.checkpoint_dir(variant)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())

    def checkpoints(self, variant: str, max_to_keep: int | None = 3):
        from bccd_jax.checkpoints import CheckpointStore

        return CheckpointStore(self.checkpoint_dir(variant), max_to_keep=max_to_keep)

    def best_variant(self, record: RunRecord | None = None) -> tuple[str, str]:
        """(variant, why) to use when none is named: the finished one with the best final mean TEST accuracy."""
        record = record or self.record()
        with_ckpt = [v for v in record.variants if self.checkpoint_epochs(v)]
        if not with_ckpt:
            raise UserError(f"run folder {self.path} has no checkpoints (nothing under "
                            f"{self.path / CHECKPOINTS_DIR}); train it first or resume it with --resume")
        if len(with_ckpt) == 1:
            return with_ckpt[0], "the only one with checkpoints"
        results = self.results()
        scored = {v: results[v].mean_final_acc() for v in with_ckpt
                  if v in results and not results[v].incomplete and "test_acc" in results[v].history}
        if not scored:
            return with_ckpt[0], f"no variant has finished metrics, taking the first with checkpoints " \
                                 f"({', '.join(with_ckpt)})"
        best = max(scored, key=lambda v: scored[v])
        return best, (f"best final mean test accuracy {scored[best]:.3f} of {len(scored)} finished variants "
                      f"({', '.join(scored)})")


def _write_metrics_csv(path: Path, metrics: Mapping[str, Mapping[str, Any]]) -> None:
    """Long-form history: one row per (variant, seed, epoch)."""
    import io

    rows, columns = [], ["variant", "seed", "epoch"]
    for variant, m in metrics.items():
        hist, seeds = m["history"], m["seeds"]
        names = [k for k in hist if k != "epoch"]
        columns += [c for c in names if c not in columns]
        for e, epoch in enumerate(hist["epoch"]):
            for s, seed in enumerate(seeds):
                rows.append({"variant": variant, "seed": seed, "epoch": epoch, **{c: hist[c][e][s] for c in names}})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue())


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
    from bccd_jax.models.vgg import VGG16_BLOCKS, load_vgg16_conv_weights
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


def resume_problems(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between a saved and a current description of a variant or run (plain dicts as in
    config.json / checkpoint meta) that a resume must not change. Empty: resuming is safe.

    Compared: data (dataset, image shape, fingerprint), and model, train, seeds and optimizer of
    each variant in `now`; TrainConfig fields in `config.resume_free_fields` may change.
    """
    saved, now = _plain(saved), _plain(now)
    out = []
    sd, nd = saved.get("data", {}), now.get("data", {})
    for key in ("dataset", "image_shape", "fingerprint"):
        if key in nd and sd.get(key) != nd.get(key):
            out.append(f"data {key} {_show(sd.get(key))} -> {_show(nd.get(key))}")
    for key in ("data_fingerprint", "image_shape"):  # checkpoint meta keys
        if key in now and key in saved and saved[key] != now[key]:
            out.append(f"{key} differs (saved {_show(saved[key])}, now {_show(now[key])})")
    variants = now.get("variants", {"": now})
    for vname, nv in variants.items():
        ov = saved.get("variants", {}).get(vname) if vname else saved
        if ov is None:
            continue  # a variant the saved run never trained
        label = f"{vname} " if vname else ""
        for key in ("model", "train", "seeds", "optimizer"):
            a, b = ov.get(key), nv.get(key)
            if key not in nv:
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                free = resume_free_fields(b) if key == "train" else ()
                changed = [f"{k} {_show(a.get(k))} -> {_show(b.get(k))}" for k in sorted(set(a) | set(b))
                           if k not in free and a.get(k) != b.get(k)]
                if changed:
                    out.append(f"{label}{key}: {', '.join(changed)}")
            elif a != b:
                out.append(f"{label}{key} {_show(a)} -> {_show(b)}")
    return out


def _plain(value: Any) -> Any:
    """Round-trip through JSON so tuples/lists and numpy scalars compare equal."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _show(value: Any) -> str:
    s = json.dumps(value, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."


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
        from bccd_jax.train import predict_logits

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
                "image": "each image standardised per channel (its own mean and standard deviation)"}[m.input_norm]
        if m.arch == "vgg16":
            norm = "ImageNet caffe preprocessing (BGR, minus the ImageNet mean)"
        tta = "; mean probability over the 4 flips" if self.variant.train.eval_tta == "flips" else ""
        return f"{w}x{h} RGB{' -> grey' if m.grayscale else ''}, {norm}{tta}"


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


def export_model(restored: Restored, dst: str | Path, dtype: str = "float32") -> RunFolder:
    """A run folder reduced to what inference needs: config.json with one variant and the restored
    seeds, and one weights-only checkpoint (params and batch statistics, optionally float16)."""
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
    if v.name in results:  # the exported seeds' share of the metrics, for best_variant and the record
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
    return out
