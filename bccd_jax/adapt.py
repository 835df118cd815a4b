"""Adapt a trained run to another lab from a few labelled cells of that lab.

    python -m bccd_jax.adapt --run RUN --labelled FOLDER --shots K [--draw SEED] --out DIR
                             [--variant NAME] [--seed S] [--json]

FOLDER is laid out and read as `bccd_jax.evaluate` reads it (`CLASS/*.jpg`, class folders matched by name,
images framed as the run's training images were). From each class's sorted file list K images are drawn with
numpy's `default_rng(SEED)` (classes in CLASS_NAMES order), so a draw is reproducible and listed. Every layer
of each seed of the run (or seed S alone) is fine-tuned in float32 on them by the fixed `RECIPE`: Adam at a
constant learning rate, batches half of drawn images and half of the embedded BCCD originals' TRAIN crops
(both halves class-balanced) so that the network does not forget BCCD, each image flipped at random
vertically and horizontally (the symmetries a cell has that keep the H x W frame: the two flips and the
half turn), and the adapted run predicts the mean probability over those four views of an image. The recipe
is fixed in code and never chosen on the held-out images.

DIR becomes a run folder that `predict` and `evaluate` use like any other (bccd_jax.run.export_model), with
adaptation.json recording the source run, the drawn files, K, the draw, the recipe and the evaluation. The
rest of FOLDER is the held-out set: printed are its accuracy, balanced accuracy and per-class recall after
adaptation and zero-shot (the source run), and the accuracy on the BCCD originals' TEST crops before and after
(never mixed in: what adapting cost on BCCD). `--json` prints the same as one JSON object. Errors are one line
with exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bccd_jax import CLASS_NAMES
from bccd_jax.config import AugmentConfig, TrainConfig, to_dict
from bccd_jax.errors import ArgumentParser, UserError, run_cli


@dataclass(frozen=True)
class Recipe:
    """How a run is fine-tuned on drawn images. The values are fixed in code, not chosen per lab or per draw:
    150 steps of Adam at 3e-4 (the order of a fine-tuning rate, a tenth of Keras's Adam default), batches of 32,
    half from the drawn images; the adapted run predicts the mean probability over the 4 flips of an image, the
    symmetries it was fine-tuned on (a few dozen drawn cells teach them less exactly than BCCD's thousands)."""

    steps: int = 150
    learning_rate: float = 3e-4
    batch_size: int = 32
    bccd_share: float = 0.5  # of every batch: embedded BCCD originals, so that the network does not forget them
    augment: AugmentConfig = AugmentConfig(flip=True)  # exact flips: identity, two flips, half turn
    eval_tta: str = "flips"  # how the adapted run predicts (TrainConfig.eval_tta)

    @property
    def bccd_per_batch(self) -> int:
        return int(round(self.batch_size * self.bccd_share))

    def train_config(self, eval_tta: str) -> TrainConfig:
        """The TrainConfig of bccd_jax.steps' train step for this recipe (constant Adam, flips)."""
        return TrainConfig(epochs=1, batch_size=self.batch_size, optimizer="adam", learning_rate=self.learning_rate,
                           schedule="constant", augment=self.augment, eval_tta=eval_tta).validate()

    def describe(self) -> dict[str, Any]:
        return {"steps": self.steps, "learning_rate": self.learning_rate, "optimizer": "adam (constant rate)",
                "batch_size": self.batch_size, "drawn_per_batch": self.batch_size - self.bccd_per_batch,
                "bccd_per_batch": self.bccd_per_batch, "augment": to_dict(self.augment),
                "layers": "all, float32", "eval_tta": self.eval_tta}


RECIPE = Recipe()


# ----------------------------------------------------------------------------- the draw


@dataclass(frozen=True)
class Draw:
    """The images drawn to adapt on and the rest of the folder, held out to test on (labelled (path, class))."""

    drawn: list[tuple[Path, int]]
    held_out: list[tuple[Path, int]]


def draw_shots(items: Sequence[tuple[Path, int]], shots: int, seed: int, folder: str = "the folder") -> Draw:
    """`shots` images of each class drawn without replacement by numpy default_rng(`seed`) from the class's
    sorted paths (classes in CLASS_NAMES order); every class needs at least shots + 1 images (one to test)."""
    if shots < 1:
        raise UserError(f"--shots {shots}: draw at least 1 image per class")
    if seed < 0:
        raise UserError(f"--draw {seed}: the draw's seed is a number >= 0")
    by_class = [sorted(p for p, label in items if label == c) for c in range(len(CLASS_NAMES))]
    short = [f"{name} has {len(files)}" for name, files in zip(CLASS_NAMES, by_class) if len(files) < shots + 1]
    if short:
        raise UserError(f"{folder}: --shots {shots} needs at least {shots + 1} images in every class ({shots} to "
                        f"adapt on, at least one to test on), but {', '.join(short)}; draw fewer shots")
    rng = np.random.default_rng(seed)
    drawn, held_out = [], []
    for c, files in enumerate(by_class):
        picked = set(rng.choice(len(files), shots, replace=False).tolist())
        drawn += [(files[i], c) for i in sorted(picked)]
        held_out += [(p, c) for i, p in enumerate(files) if i not in picked]
    return Draw(drawn, held_out)


def balanced_batches(rng: np.random.Generator, labels: np.ndarray, steps: int, per_batch: int) -> np.ndarray:
    """[steps, per_batch] indices into `labels`, each row drawn with replacement so that every class present is
    equally likely (each image with probability 1 / (classes present x its class's count))."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    weights = 1.0 / (np.count_nonzero(counts) * counts[labels])
    return rng.choice(labels.size, (steps, per_batch), p=weights / weights.sum())


# ----------------------------------------------------------------------------- fine-tuning


def fine_tune(restored, images: np.ndarray, labels: np.ndarray, bccd_images: np.ndarray, bccd_labels: np.ndarray,
              draw: int, recipe: Recipe = RECIPE):
    """Each restored seed fine-tuned (every layer, float32) on `images` mixed with the BCCD images, by `recipe`,
    through bccd_jax.steps' jitted train step: an InferenceState with the seeds stacked as `restored.state` has
    them. Batches, flips and dropout follow from (`draw`, seed) alone."""
    import jax
    import jax.numpy as jnp

    from bccd_jax.checkpoints import InferenceState
    from bccd_jax.optimizers import make_optimizer
    from bccd_jax.steps import TrainState, make_step_fns, seed_key

    cfg = recipe.train_config(restored.variant.train.eval_tta)
    tx = make_optimizer(cfg)
    fns = make_step_fns(restored.model, tx, cfg, num_examples=len(images) + len(bccd_images))
    step = jax.jit(fns.train_step, donate_argnums=0)
    pool = jnp.asarray(np.concatenate([images, bccd_images]))
    pool_labels = jnp.asarray(np.concatenate([labels, bccd_labels]).astype(np.int32))
    mask = jnp.ones((recipe.batch_size,), bool)
    n_bccd = recipe.bccd_per_batch
    params, stats = [], []
    for i, seed in enumerate(restored.seeds):
        plan = np.concatenate(
            [balanced_batches(np.random.default_rng([draw, seed, 0]), labels, recipe.steps,
                              recipe.batch_size - n_bccd),
             len(images) + balanced_batches(np.random.default_rng([draw, seed, 1]), bccd_labels, recipe.steps, n_bccd)],
            axis=1)
        start = jax.tree.map(lambda a: jnp.asarray(a[i], jnp.float32), restored.state)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=start.params, batch_stats=start.batch_stats,
                           opt_state=tx.init(start.params), key=jax.random.fold_in(seed_key(seed), draw))
        for s in range(recipe.steps):
            state, _ = step(state, pool, pool_labels, jnp.asarray(plan[s], jnp.int32), mask, 0, s)
        params.append(jax.tree.map(np.asarray, state.params))
        stats.append(jax.tree.map(np.asarray, state.batch_stats))

    def stacked(trees):
        return jax.tree.map(lambda *a: np.stack(a), *trees)

    return InferenceState(stacked(params), stacked(stats))


# ----------------------------------------------------------------------------- evaluation


def scores(restored, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and n, and the confusion matrix of the seeds' mean
    probability on labelled images."""
    from bccd_jax.evaluate import report
    from bccd_jax.metrics import softmax

    r = report(softmax(restored.logits(images)), labels)
    return {"accuracy": r["accuracy"], "balanced_accuracy": r["balanced_accuracy"], "n_images": r["n_images"],
            "recall": {c: m["recall"] for c, m in r["per_class"].items()}, "class_counts": r["class_counts"],
            "accuracy_per_seed": r["accuracy_per_seed"], "confusion_matrix": r["confusion_matrix"]}


def named(path: str | Path, root: str | Path | None = None) -> str:
    """`path` under `root` (CLASS/file.jpg), else under the current folder, else by its name alone: a record names
    no folder of the machine it ran on."""
    path = Path(path).expanduser().absolute()
    for base in ([Path(root).expanduser().absolute()] if root is not None else []) + [Path.cwd()]:
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return path.name


# ----------------------------------------------------------------------------- the command


def make_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m bccd_jax.adapt", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the trained run folder to adapt")
    p.add_argument("--labelled", required=True, metavar="FOLDER", help="the lab's labelled images as CLASS/*.jpg")
    p.add_argument("--shots", required=True, type=int, metavar="K", help="images drawn per class to adapt on")
    p.add_argument("--draw", type=int, default=0, metavar="SEED", help="seed of the draw (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="the adapted run folder to write (new or empty)")
    p.add_argument("--variant", help="which variant of the run (default: best final mean test accuracy)")
    p.add_argument("--seed", type=int, metavar="S", help="adapt seed S only (default: every seed of the run)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    return p


def adapt(args, started: float, notes: list[str]) -> dict[str, Any]:
    """The whole adaptation: draw, fine-tune, write DIR, evaluate; the record that adaptation.json holds."""
    from bccd_jax.data import load_dataset
    from bccd_jax.evaluate import prepare_items, scan
    from bccd_jax.images import run_crop
    from bccd_jax.run import command_line, export_model, git_commit, hardware, restore, timestamp, versions

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose another folder or remove it")
    labelled = Path(args.labelled).expanduser()
    items, skipped = scan([args.labelled])
    draw = draw_shots(items, args.shots, args.draw, str(labelled))
    source = restore(args.run, args.variant, args.seed, notes=notes)
    hw, crop = source.image_size, run_crop(None, source.data.crop)
    images, labels, _, _, _ = prepare_items(draw.drawn, hw, crop, strict=True)
    held_images, held_labels, _, unread, load_notes = prepare_items(draw.held_out, hw, crop, strict=False)
    notes += load_notes
    skipped.update(unread)
    if held_images is None:
        raise UserError(f"no held-out image of {labelled} could be read; nothing to test the adapted run on")
    bccd = load_dataset("originals", image_size=hw, crop=source.data.crop)
    train, test = bccd.splits["train"], bccd.splits["test"]

    state = fine_tune(source, images, labels, np.asarray(train.images), np.asarray(train.labels), args.draw)
    adapted = dataclasses.replace(source, state=state).with_tta(RECIPE.eval_tta)
    folder = export_model(adapted, out, "float32", metrics=False)
    record = folder.record()
    folder.write_record(dataclasses.replace(record, description=(
        f"{record.description}; adapted to {labelled.name} from {args.shots} images per class "
        f"(bccd_jax.adapt, draw {args.draw}; see adaptation.json)").lstrip("; ")))

    test_images, test_labels = np.asarray(test.images), np.asarray(test.labels)
    result = {
        "run": named(folder.path), "source": {"run": named(source.folder.path), "variant": source.variant.name,
                                              "seeds": source.seeds, "checkpoint_epoch": source.epoch},
        "labelled": named(labelled), "shots": args.shots, "draw": args.draw, "crop": crop,
        "recipe": RECIPE.describe(), "bccd_mixed_in": f"originals TRAIN, {len(train)} crops at {hw[0]}x{hw[1]} "
                                                      f"(crop {source.data.crop})",
        "held_out": scores(adapted, held_images, held_labels),
        "zero_shot": scores(source, held_images, held_labels),
        "bccd_test": {"n_images": len(test), "source_accuracy": scores(source, test_images, test_labels)["accuracy"],
                      "adapted_accuracy": scores(adapted, test_images, test_labels)["accuracy"]},
        "skipped": dict(skipped),
        "drawn": {c: [named(p, labelled) for p, label in draw.drawn if label == i]
                  for i, c in enumerate(CLASS_NAMES)},
        "command": command_line(), "created": timestamp(), "git_commit": git_commit(), "versions": versions(),
        "hardware": hardware(),
    }
    result["wall_s"] = round(time.time() - started, 1)
    folder.write_adaptation(result)
    return result


def describe_recipe(recipe: dict[str, Any]) -> str:
    """A recorded recipe (Recipe.describe, as adaptation.json holds it) in words."""
    flips = {"flips": "the mean probability over the 4 flips of an image"}.get(recipe.get("eval_tta", "none"),
                                                                               "one pass per image")
    return (f"{recipe['steps']} steps of {recipe['optimizer']} at {recipe['learning_rate']:g}, batches of "
            f"{recipe['batch_size']} ({recipe['drawn_per_batch']} drawn images, {recipe['bccd_per_batch']} BCCD), "
            f"layers: {recipe['layers']}; the adapted run predicts {flips}")


def format_result(r: dict[str, Any], out: str) -> str:
    held, zero = r["held_out"], r["zero_shot"]
    lines = [f"adapted {r['source']['run']} (variant {r['source']['variant']}, seeds {r['source']['seeds']}) to "
             f"{r['labelled']}: {r['shots']} images per class, draw {r['draw']}; {describe_recipe(r['recipe'])}",
             f"held-out images {held['n_images']}: accuracy {held['accuracy']:.4f}, balanced accuracy "
             f"{held['balanced_accuracy']:.4f} (zero-shot: {zero['accuracy']:.4f}, {zero['balanced_accuracy']:.4f})",
             "", f"{'class':<12}{'recall':>10}{'zero-shot':>11}{'n':>6}"]
    for c in CLASS_NAMES:
        lines.append(f"{c:<12}{held['recall'][c]:>10.3f}{zero['recall'][c]:>11.3f}{held['class_counts'][c]:>6d}")
    b = r["bccd_test"]
    lines += ["", f"BCCD originals TEST ({b['n_images']} images, never mixed in): accuracy {b['source_accuracy']:.4f} "
                  f"before, {b['adapted_accuracy']:.4f} after",
              f"wrote {out} in {r['wall_s']:.1f} s: a run folder for python -m bccd_jax.predict and evaluate"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from bccd_jax.runtime import enable_compilation_cache

    started = time.time()
    args = make_parser().parse_args(argv)
    notes: list[str] = []
    enable_compilation_cache()
    result = adapt(args, started, notes)
    for msg in notes[:5] + ([f"... and {len(notes) - 5} more"] if len(notes) > 5 else []):
        print(f"[bccd_jax.adapt] {msg}", file=sys.stderr)
    for what, n in Counter(result["skipped"]).items():
        print(f"[bccd_jax.adapt] skipped {n} images: {what}", file=sys.stderr)
    print(json.dumps(result) if args.json else format_result(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
