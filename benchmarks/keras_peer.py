"""The study's CNNs trained by Keras itself (`model.fit`) on bccd_jax's arrays: the framework the study used, beside
bccd_jax's runs.

    python -m benchmarks.keras_peer --models base --optimizers sgd rmsprop adam --seeds 0 1 --epochs 50 \\
        --data-dir DATA
    python -m benchmarks.keras_peer --models deep --optimizers adam --inits glorot_uniform he_normal \\
        --seeds 0 1 --epochs 30 --data-dir DATA
    (the same command with --resume continues every run from its last finished epoch)
    python -m benchmarks.keras_peer --optimizers rmsprop --loss probabilities logits --first-steps 40 --data-dir DATA
    (each run's first 40 steps, batch by batch, into <out>/first-steps/)

Each run is one (model, optimizer, initialiser, loss, seed): benchmarks.keras_cnn's Keras model of the bccd_jax
preset (plain Keras defaults, only the initialiser chosen), compiled with Keras' optimizer at the study's learning
rate and the cross-entropy from the clipped probabilities (Keras 3 on JAX; `--loss logits`: from the logits, as
tf.keras and Keras 3 on TensorFlow compute it for a softmax output, and bccd_jax does),
trained one epoch per `model.fit` call (batch 32) on the uint8 TRAIN images that bccd_jax.data.load_dataset gives
bccd_jax (the same resize, the same arrays), and evaluated on TEST after every epoch: Keras' `model.evaluate`
(its compiled loss: from probabilities clipped to [1e-7, 1 - 1e-7] by default) and the cross-entropy of the
logits as bccd_jax computes it (`test_loss_logits`). Keras' train loss and accuracy are its running means over
the epoch's batches, dropout on, as bccd_jax's are. Seed k: keras.utils.set_random_seed(k) before the weights
are drawn (Keras' generators, not bccd_jax's: the same seed numbers, not the same draws); each epoch's order of
the TRAIN images is a permutation drawn from (k, epoch) (`epoch_order`), handed to `fit` in that order.

Writes `<out>/<model>-<optimizer>-<init>[-logits]-seed<k>.json` after every epoch (atomically: the run's settings, data
fingerprint, per-epoch history with wall times and load average, versions, hardware, the command with the data
folder as $BCCD_DATA_DIR), and keeps its resume state in `<out>/checkpoints/<run>/` (git ignores it): the Keras
model with its optimizer state (`model.save`), and state.json with the history and the Dropout layers' seed
states (`keras.models.load_model` draws those afresh). A killed run continues from its last finished epoch with
`--resume` and computes what an uninterrupted run would have. results/keras_peer/ is the default output: these
are training results beside results/runs/, read by REPORT.md's section on Keras (experiments.peer_section),
not speed measurements (benchmarks/*.json).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.keras_cnn import LOSSES
from bccd_jax.config import INITS, OPTIMIZER_DEFAULT_LR, ModelConfig
from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.files import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "results" / "keras_peer"
MODELS = ("base", "expanded", "deep")
KERAS_INITS = {keras_name: name for name, keras_name in INITS.items()}
"""Keras' initialiser names -> bccd_jax's ModelConfig.init."""
STATE_FILE = "state.json"
FORMAT = 1
FIRST_STEPS = "first-steps"
"""`<out>/first-steps/`: the first training steps of a run (`--first-steps`)."""
PROBE = 256
"""TEST images on which `--first-steps` follows the logits: evenly spaced over bccd_jax's TEST order, which runs class
by class, so every class is there in its share (`probe_indices`)."""
CLIP = 1e-7
"""Keras' epsilon: its loss on probabilities clips them to [CLIP, 1 - CLIP]."""


@dataclass(frozen=True)
class PeerRun:
    """One Keras training run: which network, how it is trained, on which data."""

    model: str
    optimizer: str
    init: str  # Keras' name
    seed: int
    batch_size: int = 32
    loss: str = "probabilities"  # one of benchmarks.keras_cnn.LOSSES

    @property
    def name(self) -> str:
        loss = "" if self.loss == "probabilities" else f"-{self.loss}"
        return f"{self.model}-{self.optimizer}-{self.init}{loss}-seed{self.seed}"

    def model_config(self) -> ModelConfig:
        return ModelConfig.preset(self.model, init=KERAS_INITS[self.init])

    def settings(self, data: dict[str, Any]) -> dict[str, Any]:
        """What a resumed run must not change (the epochs may)."""
        return {"framework": "keras", "model": self.model, "init": self.init, "optimizer": self.optimizer,
                "learning_rate": OPTIMIZER_DEFAULT_LR[self.optimizer], "batch_size": self.batch_size,
                "loss": self.loss, "seed": self.seed, "data": data}


def settings_of(recorded: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings as this version writes them: files written before `loss` was a setting trained on the
    clipped probabilities."""
    return {"loss": "probabilities", **recorded}


def runs_of(a: argparse.Namespace) -> list[PeerRun]:
    """The runs asked for, seed by seed: every arm's first seed finishes before any arm's second."""
    return [PeerRun(m, o, i, s, a.batch_size, loss) for s in a.seeds for m in a.models for o in a.optimizers
            for i in a.inits for loss in a.loss]


# ----------------------------------------------------------------------------- state on disk


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the TRAIN images in `epoch` (0-based) of seed `seed`: one permutation per epoch, drawn from
    (seed, epoch) alone. Keras' own shuffle draws from NumPy's global generator, which Keras' first `fit` of a
    model also draws from for a look at the data (a loaded model's too): a resumed run would see other orders."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def read_state(ckpt: Path) -> dict[str, Any] | None:
    from bccd_jax.run import read_json

    path = ckpt / STATE_FILE
    if not path.is_file():
        return None
    state = read_json(path)
    if state.get("format") != FORMAT or not (ckpt / state.get("keras_file", "")).is_file():
        raise UserError(f"{path} is not a checkpoint this version can resume (or its model file is missing); "
                        f"remove {ckpt} to start the run afresh")
    return state


def save_state(ckpt: Path, model, state: dict[str, Any]) -> None:
    """The model (with optimizer state) as epoch-NNNN.keras, then state.json naming it, then older model files
    removed: a kill at any point leaves a state.json whose model file exists."""
    from benchmarks.keras_cnn import seed_generator_states

    ckpt.mkdir(parents=True, exist_ok=True)
    keras_file = f"epoch-{state['epoch']:04d}.keras"
    tmp = ckpt / f".{keras_file}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, ckpt / keras_file)
    write_json(ckpt / STATE_FILE, {**state, "format": FORMAT, "keras_file": keras_file,
                                   "seed_generator_states": seed_generator_states(model)})
    for old in ckpt.glob("epoch-*.keras"):
        if old.name != keras_file:
            old.unlink()


# ----------------------------------------------------------------------------- one run


def empty_history() -> dict[str, list]:
    return {k: [] for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_loss_logits",
                            "train_s", "test_s", "loadavg")}


def logits_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of `logits` (log-softmax, unclipped): bccd_jax's loss, by bccd_jax's evaluation."""
    from bccd_jax.train import subset_scores

    return subset_scores(np.asarray(logits)[None], labels)[0][0]


def provenance() -> dict[str, Any]:
    import jax
    import keras

    from bccd_jax.run import cpu_flags, cpu_model

    return {"versions": {"keras": keras.__version__, "keras_backend": keras.backend.backend(), "jax": jax.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags()},
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def fresh_model(run: PeerRun, hw: tuple[int, int]):
    """The run's Keras model with its initial weights, compiled with its optimizer and loss."""
    from benchmarks.keras_cnn import compile_study, keras_cnn

    model = keras_cnn(run.model_config(), hw, run.seed, softmax=run.loss == "probabilities")
    return compile_study(model, run.optimizer, loss=run.loss)


def train_run(run: PeerRun, data, epochs: int, out: Path, resume: bool, eval_batch_size: int, command: str,
              log) -> Path:
    """Train `run` to `epochs` epochs (continuing its checkpoint with `resume`); its result file."""
    from benchmarks.keras_cnn import import_keras, logits_model, set_seed_generator_states

    keras = import_keras()
    result, ckpt = out / f"{run.name}.json", out / "checkpoints" / run.name
    settings = run.settings(data.record)
    state = read_state(ckpt)
    if state is None and result.is_file():
        from bccd_jax.run import read_json

        done = read_json(result)
        if not resume:
            raise UserError(f"{result} exists; pass --resume to continue or keep it, or choose another --out")
        if settings_of(done.get("settings", {})) != settings:
            raise UserError(f"{result} was trained with other settings; choose another --out")
        if len(done["history"]["epoch"]) >= epochs:
            log(f"{run.name}: {len(done['history']['epoch'])} epochs done")
            return result
        raise UserError(f"{result} has {len(done['history']['epoch'])} epochs and no checkpoint to continue from "
                        f"(checkpoints/ is not committed); rerun it into another --out")
    if state is not None:
        if not resume:
            raise UserError(f"{ckpt} holds a checkpoint at epoch {state['epoch']}; pass --resume to continue it, or "
                            "remove it to start afresh")
        recorded = settings_of(state["settings"])
        if recorded != settings:
            changed = sorted(k for k in settings if settings[k] != recorded.get(k))
            raise UserError(f"{run.name}: the checkpoint was trained with other {', '.join(changed)}; "
                            f"choose another --out or remove {ckpt}")
        model = keras.models.load_model(ckpt / state["keras_file"])
        set_seed_generator_states(model, state["seed_generator_states"])
        history, wall = state["history"], state["wall_s"]
        log(f"{run.name}: resuming after epoch {state['epoch']}")
    else:
        model = fresh_model(run, data.hw)
        history, wall = empty_history(), 0.0
    logits = logits_model(model)
    start = len(history["epoch"])
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        order = epoch_order(run.seed, epoch, data.train_y.size)
        fit = model.fit(data.train_x[order], data.train_y[order], batch_size=run.batch_size, epochs=epoch + 1,
                        initial_epoch=epoch, shuffle=False, verbose=0).history
        t1 = time.perf_counter()
        ev = model.evaluate(data.test_x, data.test_y, batch_size=eval_batch_size, verbose=0, return_dict=True)
        z = np.asarray(logits.predict(data.test_x, batch_size=eval_batch_size, verbose=0))
        t2 = time.perf_counter()
        row = {"epoch": epoch + 1, "train_loss": fit["loss"][0], "train_acc": fit["accuracy"][0],
               "test_loss": ev["loss"], "test_acc": ev["accuracy"], "test_loss_logits": logits_loss(z, data.test_y),
               "train_s": t1 - t0, "test_s": t2 - t1, "loadavg": os.getloadavg()[0]}
        for k, v in row.items():
            history[k].append(float(v) if k != "epoch" else v)
        wall += t2 - t0
        save_state(ckpt, model, {"settings": settings, "epoch": epoch + 1, "history": history, "wall_s": wall})
        write_json(result, {"settings": settings, "epochs": epochs, "history": history, "wall_s": wall,
                            "command": command,
                            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                            **provenance()})
        log(f"{run.name} epoch {epoch + 1}/{epochs}: train {row['train_acc']:.3f} / {row['train_loss']:.3f}, "
            f"TEST {row['test_acc']:.3f} / {row['test_loss']:.3f} ({row['train_s']:.0f} + {row['test_s']:.0f} s, "
            f"load {row['loadavg']:.1f})")
    return result


def clipped_share(logits: np.ndarray, labels: np.ndarray) -> float:
    """The share of images whose true-class softmax probability lies outside [1e-7, 1 - 1e-7]: Keras' loss on
    probabilities clips it there, so these images give that loss a gradient of exactly 0."""
    from scipy.special import log_softmax

    p_true = np.exp(log_softmax(np.asarray(logits, np.float64), axis=1)[np.arange(labels.size), labels])
    return float(np.mean((p_true < CLIP) | (p_true > 1 - CLIP)))


def probe_indices(n: int) -> np.ndarray:
    """PROBE indices evenly spaced over n TEST images (all of them when n <= PROBE)."""
    return np.unique(np.linspace(0, n - 1, min(PROBE, n)).round().astype(int))


def first_steps(run: PeerRun, data, steps: int, out: Path, command: str, log) -> Path:
    """The run's first `steps` training steps, one batch at a time (`train_on_batch` on the batches `fit` takes in
    epoch 1): each batch's loss as the run computes it, and on PROBE TEST images (`probe_indices`) after each step
    the mean margin of the logits (largest minus second largest), the share with a clipped true-class probability
    (`clipped_share`) and the accuracy. Written to `<out>/first-steps/<run>.json`: what a run does before its first
    epoch ends, where the per-epoch history cannot see."""
    from benchmarks.keras_cnn import logits_model

    model = fresh_model(run, data.hw)
    logits = logits_model(model)
    order = epoch_order(run.seed, 0, data.train_y.size)[:steps * run.batch_size]
    x, y = data.train_x[order], data.train_y[order]
    probe = probe_indices(data.test_y.size)
    px, py = data.test_x[probe], data.test_y[probe]
    rows = {k: [] for k in ("step", "loss", "probe_margin", "probe_clipped", "probe_acc")}
    for step in range(1, min(steps, -(-y.size // run.batch_size)) + 1):
        batch = slice((step - 1) * run.batch_size, step * run.batch_size)
        loss = model.train_on_batch(x[batch], y[batch], return_dict=True)["loss"]
        z = np.asarray(logits.predict(px, batch_size=PROBE, verbose=0), np.float64)
        top2 = np.sort(z, axis=1)[:, -2:]
        for k, v in (("step", step), ("loss", float(loss)), ("probe_margin", float((top2[:, 1] - top2[:, 0]).mean())),
                     ("probe_clipped", clipped_share(z, py)), ("probe_acc", float((z.argmax(1) == py).mean()))):
            rows[k].append(v)
        log(f"{run.name} step {step}: loss {rows['loss'][-1]:.3f}, TEST probe margin {rows['probe_margin'][-1]:.1f}, "
            f"clipped {rows['probe_clipped'][-1]:.3f}, accuracy {rows['probe_acc'][-1]:.3f}")
    path = out / FIRST_STEPS / f"{run.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"settings": run.settings(data.record), "steps": rows, "probe_images": int(py.size),
                      "command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                      **provenance()})
    return path


# ----------------------------------------------------------------------------- data and CLI


@dataclass
class PeerData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    hw: tuple[int, int]
    record: dict[str, Any]


def load_data(dataset: str, data_dir: str | None, hw: tuple[int, int]) -> PeerData:
    """bccd_jax's TRAIN and TEST arrays (uint8 NHWC, int labels) of `dataset` at `hw`, and what identifies them."""
    from bccd_jax.data import load_dataset

    ds = load_dataset(dataset, data_dir=data_dir, image_size=hw)
    train, test = ds.splits["train"], ds.splits["test"]
    return PeerData(np.ascontiguousarray(train.images), np.asarray(train.labels, np.int32),
                    np.ascontiguousarray(test.images), np.asarray(test.labels, np.int32), hw,
                    {"dataset": ds.name, "image_size": list(hw), "fingerprint": ds.fingerprint,
                     "splits": {"train": len(train), "test": len(test)}})


def make_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.keras_peer", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["base"], choices=MODELS)
    p.add_argument("--optimizers", nargs="+", default=["adam"], choices=sorted(OPTIMIZER_DEFAULT_LR))
    p.add_argument("--inits", nargs="+", default=["glorot_uniform"], choices=sorted(KERAS_INITS),
                   help="Keras kernel initialiser (default glorot_uniform, Keras' own)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seed numbers (keras.utils.set_random_seed)")
    p.add_argument("--loss", nargs="+", default=["probabilities"], choices=LOSSES,
                   help="cross-entropy from the clipped softmax probabilities (Keras 3 on JAX, the default) or from "
                        "the logits (tf.keras, Keras 3 on TensorFlow, bccd_jax)")
    p.add_argument("--first-steps", type=int, metavar="K",
                   help="instead of training: record each run's first K steps (loss; margin, clipped share and "
                        "accuracy on 256 TEST images spread over the classes) in <out>/first-steps/")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=256, help="TEST batch (does not change the numbers)")
    p.add_argument("--dataset", default="augmented", choices=["augmented", "originals"],
                   help="bccd_jax data set (originals: the embedded one, for quick checks)")
    p.add_argument("--data-dir", help="the dataset2-master folder (augmented)")
    p.add_argument("--image-size", nargs=2, type=int, default=[60, 80], metavar=("H", "W"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result files (default results/keras_peer)")
    p.add_argument("--resume", action="store_true", help="continue runs from their checkpoints; skip finished ones")
    return p


def check_args(a: argparse.Namespace) -> tuple[int, int]:
    from benchmarks.keras_cnn import check_config
    from bccd_jax.data.sources import check_image_size

    if a.first_steps is not None and a.first_steps < 1:
        raise UserError(f"--first-steps must be >= 1, got {a.first_steps}")
    if a.epochs < 1 or a.batch_size < 1 or a.eval_batch_size < 1:
        raise UserError(f"--epochs, --batch-size and --eval-batch-size must be >= 1, got {a.epochs}, {a.batch_size}, "
                        f"{a.eval_batch_size}")
    if min(a.seeds) < 0 or len(set(a.seeds)) != len(a.seeds):
        raise UserError(f"--seeds must be distinct integers >= 0, got {a.seeds}")
    if a.data_dir is not None and not Path(a.data_dir).expanduser().exists():
        raise UserError(f"--data-dir {a.data_dir} does not exist")
    if a.out.exists() and not a.out.is_dir():
        raise UserError(f"--out {a.out} is a file; give a folder")
    hw = check_image_size(a.image_size)
    for run in runs_of(a):
        check_config(run.model_config(), hw)
    return hw


def main(argv=None) -> int:
    from bccd_jax.run import command_line

    a = make_parser().parse_args(argv)
    hw = check_args(a)
    from benchmarks.keras_cnn import import_keras

    import_keras()  # before anything imports Keras with another backend; a clear error when it is missing
    data = load_data(a.dataset, a.data_dir, hw)
    a.out.mkdir(parents=True, exist_ok=True)
    command = command_line(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    for run in runs_of(a):
        if a.first_steps is not None:
            print(first_steps(run, data, a.first_steps, a.out, command, log))
        else:
            print(train_run(run, data, a.epochs, a.out, a.resume, a.eval_batch_size, command, log))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
