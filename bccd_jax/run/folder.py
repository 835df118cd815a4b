"""What a run is: its folder, its records, and how a config becomes a trainable (or restorable) model.

    <out>/<experiment>/<timestamp>/
        config.json    RunRecord: every setting, versions, hardware, git commit, data fingerprint, command
        metrics.json   per variant: per-seed per-epoch history and final evaluation statistics
        metrics.csv    the same history in long form (variant, seed, epoch, metric columns)
        figures/*.png  2x2 learning curves (mean and band over seeds), confusion matrices, robustness
        robustness.json  accuracy under the shift suite (experiments.robustness), where it ran
        adaptation.json  a run adapted to another lab (bccd_jax.adapt): its source run, the drawn images, the recipe
                         and the held-out evaluation
        checkpoints/<variant>/<epoch>/   Orbax checkpoints (state + JSON meta); <epoch>.damaged: one a resume skipped
        frozen/<variant>.npz   the frozen VGG16 prefix of a variant trained on cached features
        writer.lock    while a process writes the folder: its pid, host and command (bccd_jax.run.lock)

Every JSON and CSV file is written whole or not at all (bccd_jax.files.write_atomic).

Everything that reads or writes a run folder goes through `RunFolder`; everything that turns a
config into (model, optimizer, pretrained weights) goes through `build`; predict, evaluate
and the robustness benchmark restore a trained model with `restore`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from bccd_jax.config import ModelConfig, TrainConfig, from_dict, to_dict
from bccd_jax.errors import UserError
from bccd_jax.files import partial_files, write_atomic, write_json
from bccd_jax.run.provenance import timestamp

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
METRICS_CSV = "metrics.csv"
FIGURES_DIR = "figures"
CHECKPOINTS_DIR = "checkpoints"
FROZEN_DIR = "frozen"
ROBUSTNESS_FILE = "robustness.json"
ROBUSTNESS_FIGURE = "robustness.png"  # under figures/
ADAPTATION_FILE = "adaptation.json"


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; is this a bccd_jax run folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the run folder is damaged") from e


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
    crop: str = "frame"  # how images were cropped (bccd_jax.data.CROPS); records without it are "frame"

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.image_shape[0]), int(self.image_shape[1])

    @property
    def size(self) -> str:
        """The image size as reports and summary keys write it: height x width, e.g. "60x80"."""
        return "x".join(map(str, self.image_size))


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
    seeds_flag: int | None = None  # --seeds as given: every variant's seed count; None: the variants' and protocol's

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


def finished_variant(result: VariantResult | None, vr: VariantRecord) -> bool:
    """Whether a run already holds variant `vr` trained to its epochs (or its stopping accuracy) with its seeds.
    Such a variant is kept, not retrained: a run folder committed without its checkpoints resumes with the
    variants it had not finished."""
    return (result is not None and not result.incomplete and result.seeds == list(vr.seeds)
            and (result.epochs >= vr.train.epochs or vr.train.reached_stop(result.history["train_acc"])))


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

    def curves_figure(self, group: str) -> Path:
        return self.figures / f"curves_{group}.png"

    def confusion_figure(self, variant: str) -> Path:
        return self.figures / f"confusion_{variant}.png"

    @property
    def robustness_figure(self) -> Path:
        return self.figures / ROBUSTNESS_FIGURE

    def figure_files(self) -> list[Path]:
        """The run's figures in the report's order: learning curves, confusion matrices, robustness."""
        if not self.figures.is_dir():
            return []
        return (sorted(self.figures.glob(self.curves_figure("*").name))
                + sorted(self.figures.glob(self.confusion_figure("*").name))
                + [f for f in (self.robustness_figure,) if f.is_file()])

    def checkpoint_dir(self, variant: str) -> Path:
        return self.path / CHECKPOINTS_DIR / variant

    def exists(self) -> bool:
        return self.config_path.is_file()

    def writer(self, command: str, note: Callable[[str], None] | None = None):
        """A context that holds the folder's writer lock (bccd_jax.run.lock): one writing process at a time."""
        from bccd_jax.run.lock import writer_lock

        return writer_lock(self.path, command, note)

    def partial_files(self) -> list[Path]:
        """Temporary files of writes a killed process left (bccd_jax.files.write_atomic), here, in figures/ and in
        frozen/; only the folder's writer may remove them."""
        return [p for d in (self.path, self.figures, self.path / FROZEN_DIR) for p in partial_files(d)]

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

    @property
    def robustness_path(self) -> Path:
        return self.path / ROBUSTNESS_FILE

    def write_robustness(self, obj: Mapping[str, Any]) -> Path:
        """robustness.json: the shift suite's accuracies of the variants evaluated so far."""
        write_json(self.robustness_path, obj)
        return self.robustness_path

    def read_robustness(self) -> dict[str, Any] | None:
        """robustness.json, or None where the suite has not run."""
        return read_json(self.robustness_path) if self.robustness_path.exists() else None

    def robustness_of(self, variant: str, seeds: Sequence[int]) -> dict[str, Any] | None:
        """robustness.json of `variant` cut to `seeds` (as a shipped model of those seeds carries it), or None
        where the suite did not run on the variant or on one of the seeds."""
        rob = self.read_robustness()
        entry = (rob or {}).get("variants", {}).get(variant)
        if entry is None or not set(seeds) <= set(entry["seeds"]):
            return None
        at = [entry["seeds"].index(s) for s in seeds]

        def pick(values):
            return [values[i] for i in at]

        cut = dict(entry, seeds=list(seeds), clean=pick(entry["clean"]), suite_mean=pick(entry["suite_mean"]),
                   shifts={k: dict(v, acc=[pick(a) for a in v["acc"]]) for k, v in entry["shifts"].items()})
        if "lab_mean" in entry:
            cut["lab_mean"] = pick(entry["lab_mean"])
        return dict(rob, variants={variant: cut})

    @property
    def adaptation_path(self) -> Path:
        return self.path / ADAPTATION_FILE

    def write_adaptation(self, obj: Mapping[str, Any]) -> Path:
        """adaptation.json: where an adapted run came from and how it was adapted (bccd_jax.adapt)."""
        write_json(self.adaptation_path, obj)
        return self.adaptation_path

    def read_adaptation(self) -> dict[str, Any] | None:
        """adaptation.json, or None for a run that was not adapted."""
        return read_json(self.adaptation_path) if self.adaptation_path.exists() else None

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
