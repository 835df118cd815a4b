"""REPORT.md's section on Keras, the study's framework: its TEST curves beside bccd_jax's runs of the same network.

Reads the result files that `python -m benchmarks.keras_peer` wrote to `<results>/keras_peer/` (one per model,
optimizer, initialiser and seed) and matches every Keras arm to the bccd_jax variant among the report's run folders
that trained the same thing: the same data (fingerprint and image size), the preset's ModelConfig with the same
initialiser, the same optimizer, learning rate and batch size, and nothing else (constant rate, no augmentation, no
weight decay, no class weights, no test-time flips, no warm start); of several, the one with the most epochs.
Keras runs still short of their planned epochs are left out (and counted). A table per model compares the two at
epoch E, the last both ran: TEST accuracy and loss, Keras minus bccd_jax with Welch's 95 % interval (the seeds of two
frameworks are not paired: each draws its own weights, batch order and dropout masks); a figure per model draws
both frameworks' curves (bccd_jax.plots.plot_curves) into `<results>/keras_peer/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from benchmarks.keras_peer import FIRST_STEPS, settings_of
from bccd_jax.config import INITS, OPTIMIZER_DEFAULT_LR, ModelConfig, left_chance
from bccd_jax.errors import UserError
from bccd_jax.metrics import mean_ci, welch_ci
from bccd_jax.run import read_json

SECTION_DIR = "keras_peer"
CURVES = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclass
class KerasArm:
    """The finished Keras seeds of one (model, optimizer, init) on one data set."""

    model: str
    optimizer: str
    init: str
    loss: str  # what Keras' cross-entropy is computed from: "probabilities" (clipped) or "logits"
    settings: dict[str, Any]  # of its first seed, less the seed
    seeds: list[int]
    histories: list[dict[str, list]]  # per seed
    in_progress: int  # seeds whose file has fewer epochs than planned

    @property
    def label(self) -> str:
        return f"{self.model}, {self.optimizer}, {self.init}, {self.loss}"

    def curve(self, key: str, epochs: int) -> np.ndarray:
        """[epochs, seeds] of `key` (the TEST loss as bccd_jax computes it: from the logits)."""
        source = "test_loss_logits" if key == "test_loss" else key
        return np.asarray([h[source][:epochs] for h in self.histories], float).T

    @property
    def epochs(self) -> int:
        return min(len(h["epoch"]) for h in self.histories)


def keras_arms(results_dir: str | Path) -> list[KerasArm]:
    """The Keras arms of `<results_dir>/keras_peer/*.json`, in model, optimizer, init order."""
    arms: dict[str, KerasArm] = {}
    for path in sorted((Path(results_dir) / SECTION_DIR).glob("*.json")):
        r = read_json(path)
        if not {"settings", "epochs", "history"} <= set(r):
            raise UserError(f"{path} is not a result file of benchmarks.keras_peer (no settings, epochs or history); "
                            f"move it out of {SECTION_DIR}/")
        s = settings_of(r["settings"])
        key = repr({k: v for k, v in s.items() if k != "seed"})
        arm = arms.setdefault(key, KerasArm(s["model"], s["optimizer"], s["init"], s["loss"],
                                            {k: v for k, v in s.items() if k != "seed"}, [], [], 0))
        if len(r["history"]["epoch"]) < r["epochs"]:
            arm.in_progress += 1
            continue
        arm.seeds.append(int(s["seed"]))
        arm.histories.append(r["history"])
    order = {m: i for i, m in enumerate(("base", "expanded", "deep"))}
    return sorted((a for a in arms.values() if a.seeds or a.in_progress),
                  key=lambda a: (order.get(a.model, 9), a.model, sorted(OPTIMIZER_DEFAULT_LR).index(a.optimizer)
                                 if a.optimizer in OPTIMIZER_DEFAULT_LR else 9, a.init, a.loss != "probabilities"))


def same_training(arm: KerasArm, record, variant) -> bool:
    """Whether bccd_jax variant `variant` (a VariantRecord) of run `record` trained what the Keras arm trained."""
    data, s, m, t = record.data, arm.settings, variant.model, variant.train
    return (data.dataset == s["data"]["dataset"] and list(data.image_size) == list(s["data"]["image_size"])
            and data.fingerprint == s["data"]["fingerprint"]
            and INITS[m.init] == arm.init and m == ModelConfig.preset(arm.model, init=m.init)
            and t.optimizer == arm.optimizer and variant.optimizer == arm.optimizer
            and t.resolved_learning_rate() == s["learning_rate"] and t.batch_size == s["batch_size"]
            and t.schedule == "constant" and not t.weight_decay and not t.augment.active and not t.balance_classes
            and t.eval_tta == "none" and t.init_from is None)


def bccd_match(arm: KerasArm, latest: Mapping) -> tuple[str, Any] | None:
    """("run folder/variant", VariantResult) of the bccd_jax variant that trained the arm's network, the one with
    the most epochs; None where the report's run folders hold none."""
    found = [(r.epochs, f"{folder.path.name}/{name}", r) for (_, _, _, name), (folder, record, r) in latest.items()
             if name in record.variants and same_training(arm, record, record.variants[name])]
    if not found:
        return None
    _, where, result = max(found, key=lambda f: f[0])
    return where, result


def _stuck(train_acc: np.ndarray) -> int:
    """Seeds whose training accuracy never reached bccd_jax.config.LEFT_CHANCE ([epochs, seeds])."""
    return sum(not ok for ok in left_chance(train_acc.tolist()))


def _mean_ci(values: np.ndarray, digits: int) -> str:
    m, (lo, hi) = mean_ci(values)
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if values.size > 1 else f"{m:.{digits}f}"


def _difference(a: np.ndarray, b: np.ndarray, digits: int) -> str:
    d, (lo, hi) = welch_ci(a, b)
    covers = "covers 0" if lo <= 0 <= hi else "excludes 0"
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] ({covers})" if a.size > 1 and b.size > 1 \
        else f"{d:+.{digits}f} (no interval: one seed)"


def _peak(curve: np.ndarray) -> str:
    mean = curve.mean(axis=1)
    return f"{mean.max():.3f} (epoch {int(mean.argmax()) + 1})"


def arm_row(arm: KerasArm, match) -> str:
    """A table row: the arm against its bccd_jax variant at the last epoch both ran."""
    if match is None:
        return (f"| {arm.optimizer} | {arm.init} | {arm.loss} | {len(arm.seeds)} | no bccd_jax run of this network "
                "among the report's run folders | | | | | | | | |")
    where, r = match
    epochs = min(arm.epochs, r.epochs)
    k = {key: arm.curve(key, epochs) for key in CURVES}
    b = {key: r.curve(key)[:epochs] for key in CURVES}
    epoch_s = np.median([t for h in arm.histories for t in (h["train_s"][1:epochs] or h["train_s"][:1])])
    return (f"| {arm.optimizer} | {arm.init} | {arm.loss} | {len(arm.seeds)} | `{where}` ({len(r.seeds)} seeds) | "
            f"{epochs} | "
            f"{_mean_ci(k['test_acc'][-1], 3)} | {_mean_ci(b['test_acc'][-1], 3)} | "
            f"{_difference(k['test_acc'][-1], b['test_acc'][-1], 3)} | "
            f"{_mean_ci(k['test_loss'][-1], 2)} | {_mean_ci(b['test_loss'][-1], 2)} | "
            f"{_difference(k['test_loss'][-1], b['test_loss'][-1], 2)} | "
            f"{_peak(k['test_acc'])} / {_peak(b['test_acc'])} | "
            f"{_stuck(k['train_acc'])} of {len(arm.seeds)} / {_stuck(b['train_acc'])} of {len(r.seeds)} | "
            f"{epoch_s:.0f} |")


def curves_figure(model: str, arms: list[tuple[KerasArm, Any]], into: Path) -> Path | None:
    """Both frameworks' curves of one model's arms (the epochs both ran) as `<into>/<model>-curves.png`."""
    from bccd_jax.plots import plot_curves

    histories = {}
    vary_init = len({a.init for a, _ in arms}) > 1
    vary_loss = len({a.loss for a, _ in arms}) > 1
    for arm, match in arms:
        if match is None:
            continue
        where, r = match
        epochs = min(arm.epochs, r.epochs)
        name = ", ".join(part for part, varies in ((arm.optimizer, True), (arm.init, vary_init)) if varies)
        keras = f"Keras on {arm.loss}" if vary_loss else "Keras"
        histories[f"{name}: {keras}"] = {"epoch": list(range(1, epochs + 1)),
                                         **{key: arm.curve(key, epochs).tolist() for key in CURVES}}
        if f"{name}: bccd_jax" not in histories:  # one bccd_jax curve for the arms that differ in loss only
            histories[f"{name}: bccd_jax"] = {"epoch": list(range(1, epochs + 1)),
                                              **{key: r.curve(key)[:epochs].tolist() for key in CURVES}}
    if not histories:
        return None
    return plot_curves(histories, into / f"{model}-curves.png",
                       title=f"{model} CNN: Keras beside bccd_jax (TEST loss: cross-entropy of the logits)")


def peer_section(results_dir: str | Path, latest: Mapping) -> list[str]:
    """The section's markdown lines ([] where `<results_dir>/keras_peer/` holds no result file); writes its figures.
    `latest` is experiments.report.latest_variants of the report's run folders."""
    arms = keras_arms(results_dir)
    if not arms:
        return []
    into = Path(results_dir) / SECTION_DIR
    lines = ["## Keras, the study's framework, beside bccd_jax", "",
             "The study's CNNs written in plain Keras 3 on its JAX backend (Keras' layers, initialisers and "
             "optimizers with their defaults, the study's learning rates, `model.fit` at batch 32; "
             "benchmarks/keras_cnn.py) and trained on the same uint8 arrays as bccd_jax by "
             "`python -m benchmarks.keras_peer`. One set of weights gives both frameworks the same logits, loss, "
             "TEST evaluation and SGD and RMSProp steps (tests/test_keras_peer.py); Keras' Adam adds its epsilon "
             "1e-7 to the square root of the uncorrected second moment, which is bccd_jax's (optax's) Adam with "
             "epsilon 1e-7 / sqrt(1 - 0.999^t) at step t: 32 times larger at the first step, 1.9 times after the "
             "first epoch (312 steps), 1.3 times at step 1000. The same seed numbers, not the same draws: each "
             "framework draws its own initial weights, batch order and dropout masks, so the two are compared as "
             "independent samples. TEST loss: the cross-entropy of the logits, as bccd_jax computes it (Keras' own "
             "clips probabilities at 1e-7, capping an image's loss at 16.1; the result files keep both).", "",
             "Keras loss: what Keras trains on. \"probabilities\": Keras 3 on its JAX backend computes the "
             "cross-entropy of a softmax output from its probabilities clipped to [1e-7, 1 - 1e-7], whose gradient "
             "is exactly 0 for an image whose true-class probability lies outside that range; \"logits\" "
             "(`--loss logits`): from the logits, as tf.keras and Keras 3 on its TensorFlow backend compute it for a "
             "softmax output, and as bccd_jax does (tests/test_keras_peer.py: on a saturated network Keras' step on "
             "probabilities moves no weight, its step on logits is bccd_jax's). Standalone Keras 2.2 on TensorFlow "
             "clipped probabilities too; the study does not name its Keras version.", "",
             "Each table compares the two at epoch E, the last both ran: means over seeds with a 95 % t-interval, "
             "Keras minus bccd_jax with Welch's 95 % interval; the peak of the mean TEST accuracy curve over "
             "epochs 1..E; the seeds whose training accuracy had not reached 0.40 by epoch E (stuck at chance); "
             "Keras' median seconds per training epoch (its first, compiling, left out)."]
    for model in dict.fromkeys(a.model for a in arms):
        rows = [(a, bccd_match(a, latest)) for a in arms if a.model == model]
        waiting = sum(a.in_progress for a, _ in rows)
        lines += ["", f"### The {model} CNN", "",
                  "| optimizer | init | Keras loss | Keras seeds | bccd_jax run | E | TEST acc Keras | "
                  "TEST acc bccd_jax | Keras - bccd_jax | TEST loss Keras | TEST loss bccd_jax | Keras - bccd_jax | "
                  "peak mean TEST acc Keras / bccd_jax | stuck seeds Keras / bccd_jax | Keras s/epoch |",
                  "|---|---|---|---:|---|---:|---|---|---|---|---|---|---|---|---:|"]
        lines += [arm_row(a, m) for a, m in rows if a.seeds]
        if waiting:
            lines += ["", f"Keras runs still training (not in the table): {waiting}."]
        figure = curves_figure(model, [(a, m) for a, m in rows if a.seeds], into)
        if figure is not None:
            lines += ["", f"![{model}: Keras beside bccd_jax]({SECTION_DIR}/{figure.name})"]
    return lines + first_steps_lines(results_dir) + [""]


def first_steps_lines(results_dir: str | Path) -> list[str]:
    """A table of the `--first-steps` files (`<results_dir>/keras_peer/first-steps/*.json`): what each run did in its
    first training steps, before the per-epoch history sees it."""
    paths = sorted((Path(results_dir) / SECTION_DIR / FIRST_STEPS).glob("*.json"))
    if not paths:
        return []
    lines = ["", "### The first training steps", "",
             "`python -m benchmarks.keras_peer --first-steps K` trains a run's first K batches one at a time (the "
             "batches of its first epoch) and follows the logits on 256 TEST images evenly spaced over the classes "
             "after each: their mean margin (largest logit minus the second), the share whose true-class "
             "probability Keras' loss on probabilities clips (and so gives no gradient), and the accuracy. "
             "Columns: at steps 1, 2 and K. On a batch whose every image is clipped that loss's gradient is exactly "
             "0: SGD and RMSProp (no momentum) "
             "then take a step of exactly 0, and once no batch has an unclipped image the network never moves again; "
             "Adam's first moment keeps moving the weights after the gradient stops.", "",
             "| model, optimizer, init | Keras loss | seed | K | batch loss | TEST margin | TEST clipped share | "
             "TEST accuracy | first step with every TEST image clipped |", "|---|---|---:|---:|---|---|---|---|---:|"]
    for path in paths:
        r = read_json(path)
        s, st = settings_of(r["settings"]), r["steps"]
        at = [0, 1, len(st["step"]) - 1] if len(st["step"]) > 2 else list(range(len(st["step"])))
        cells = [" / ".join(f"{st[key][i]:.{d}f}" for i in at)
                 for key, d in (("loss", 2), ("probe_margin", 1), ("probe_clipped", 2), ("probe_acc", 3))]
        full = next((step for step, c in zip(st["step"], st["probe_clipped"]) if c == 1.0), None)
        lines.append(f"| {s['model']}, {s['optimizer']}, {s['init']} | {s['loss']} | {s['seed']} | {len(st['step'])} | "
                     + " | ".join(cells) + f" | {full if full is not None else 'none'} |")
    return lines
