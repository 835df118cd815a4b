"""How a trained run does on a labelled folder of images from anywhere.

    python -m bccd_jax.evaluate --run RUN_DIR FOLDER [FOLDER...] [--variant NAME] [--seed K]
                                [--tta none|flips] [--crop cell|none|center] [--out DIR] [--json] [--strict]

Each FOLDER holds one sub-folder per class with images inside (`CLASS/*.{jpg,jpeg,png,bmp,tif}`).
Class folders are matched to the four classes case-insensitively, singular or plural
(NEUTROPHIL, neutrophils, Neutrophil); other classes (basophil, platelet, ...) are counted and
skipped. Images are prepared by the same function as predict's (bccd_jax.images.prepare), framed
as the run's training images were (`--crop` overrides): for a run trained on cell crops, cropped
around the white cell found by bccd_jax.data.localize, whose status
per image is "one" (cropped at the cell), "several" (cropped at the largest nucleus) or "none"
(no nucleus: the image centre at the image's own scale); `--crop none|center` as in predict.
The probabilities are averaged over the run's seeds (or `--seed K` alone). Printed: accuracy,
balanced accuracy, per-class precision/recall/F1 and the confusion matrix, with each seed's own
accuracy, and with crop "cell" a count per localiser status and the accuracy on the images of
status "one"; written to `--out`: evaluation.json (also per image: path, true and predicted
class, cell_status, cell_center, cell_box, cell_crop, cell_note) and confusion.png. An
unreadable image is skipped and counted, unless `--strict`. Errors are one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bccd_jax import CLASS_NAMES
from bccd_jax.config import EVAL_TTA
from bccd_jax.data.sources import IMAGE_SUFFIXES
from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.images import CROP_HELP, CROPS, Prepared, cell_fields, prepare, run_crop
from bccd_jax.data.localize import STATUSES
from bccd_jax.metrics import balanced_accuracy, confusion_matrix, per_class_report, softmax

CHUNK = 512  # images prepared and classified at a time


def class_of(folder_name: str) -> int | None:
    """Index in CLASS_NAMES of a class folder's name (any case, singular or plural), else None."""
    name = folder_name.strip().upper()
    for i, c in enumerate(CLASS_NAMES):
        if name in (c, c + "S"):
            return i
    return None


def scan(folders: Sequence[str]) -> tuple[list[tuple[Path, int]], Counter]:
    """(image path, label) of every image under the recognised class folders, and counts of what was skipped."""
    items: list[tuple[Path, int]] = []
    skipped: Counter = Counter()
    for f in folders:
        root = Path(f).expanduser()
        if not root.is_dir():
            raise UserError(f"{root} is not a folder; pass folders laid out as CLASS/*.jpg")
        found = 0
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = class_of(sub.name)
            files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if label is None:
                skipped[f"class {sub.name}"] += len(files)
                continue
            found += 1
            items += [(p, label) for p in files]
        if not found:
            raise UserError(f"{root} has no folder named after a class ({', '.join(CLASS_NAMES)}, any case, "
                            "singular or plural); expected FOLDER/CLASS/*.jpg")
    if not items:
        raise UserError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) in the class folders of {', '.join(folders)}")
    return items, skipped


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bccd_jax.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="folders laid out as CLASS/*.jpg")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder written by an experiment")
    p.add_argument("--variant", help="which variant of the run (default: best final mean test accuracy)")
    p.add_argument("--seed", type=int, metavar="K", help="use seed K only (default: average over all seeds)")
    p.add_argument("--checkpoint", default="latest", metavar="latest|EPOCH")
    p.add_argument("--tta", choices=EVAL_TTA, help="test-time averaging (default: the run's own, TrainConfig.eval_tta)")
    p.add_argument("--crop", choices=CROPS, help=CROP_HELP)
    p.add_argument("--out", default="evaluation", help="folder for evaluation.json and confusion.png")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the tables")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error instead of skipped")
    return p


def prepare_item(item: tuple[Path, int], hw: tuple[int, int], crop: str) -> Prepared:
    """One labelled image as the model's input: bccd_jax.images.prepare without an annotation, like predict's."""
    return prepare(item[0], None, hw, crop)


def prepare_items(items: Sequence[tuple[Path, int]], hw: tuple[int, int], crop: str, strict: bool
                  ) -> tuple[np.ndarray | None, np.ndarray, list[dict[str, Any]], Counter, list[str]]:
    """(the readable images of `items` as the model's uint8 input [N, H, W, 3], or None when none could be read,
    their labels [N], per image its path, preparation and cell fields, skip counts, notes): an unreadable image is
    skipped and counted, unless `strict`."""
    from bccd_jax.data.pixels import parallel_map

    kept: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    notes: list[str] = []
    arrays, labels = [], []

    def load(item):
        try:
            return prepare_item(item, hw, crop), item
        except UserError as e:
            if strict:
                raise
            notes.append(str(e))
            return None, item

    for got, (path, label) in parallel_map(load, items):
        if got is None:
            skipped["unreadable image"] += 1
            continue
        arrays.append(got.array)
        kept.append({"path": str(path), "preparation": got.how, **cell_fields(got)})
        labels.append(label)
    return (np.stack(arrays) if arrays else None), np.asarray(labels, dtype=np.int64), kept, skipped, notes


def evaluate(restored, items: Sequence[tuple[Path, int]], crop: str, strict: bool
             ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], Counter, list[str]]:
    """(probabilities [S, N, C] per seed, labels [N], per kept image its path, preparation and cell fields,
    skip counts, notes)."""
    kept: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    notes: list[str] = []
    probs, labels = [], []
    for start in range(0, len(items), CHUNK):
        arrays, chunk_labels, chunk_kept, chunk_skipped, chunk_notes = prepare_items(
            items[start:start + CHUNK], restored.image_size, crop, strict)
        kept += chunk_kept
        skipped.update(chunk_skipped)
        notes += chunk_notes
        if arrays is not None:
            probs.append(softmax(restored.logits(arrays)))
            labels.append(chunk_labels)
    if not probs:
        raise UserError("no image could be read; see --strict for the first error")
    return np.concatenate(probs, axis=1), np.concatenate(labels), kept, skipped, notes


def report(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    mean = probs.mean(axis=0)
    pred = mean.argmax(-1)
    cm = confusion_matrix(labels, pred)
    return {"n_images": int(labels.size), "accuracy": float((pred == labels).mean()),
            "balanced_accuracy": balanced_accuracy(cm),
            "accuracy_per_seed": [float((p.argmax(-1) == labels).mean()) for p in probs],
            "per_class": per_class_report(cm), "confusion_matrix": cm.tolist(),
            "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(CLASS_NAMES)}}


def evaluation(restored, items: Sequence[tuple[Path, int]], crop: str, strict: bool = False
               ) -> tuple[dict[str, Any], Counter, list[str]]:
    """(how the images were prepared with `report` and `localiser_report`, skip counts, notes) of one set of
    labelled images: the whole evaluation in one call, for this command and for comparisons of several runs."""
    probs, labels, kept, skipped, notes = evaluate(restored, items, crop, strict)
    result = {"preparation": dict(Counter(k["preparation"] for k in kept)), **report(probs, labels),
              **localiser_report(probs, labels, kept)}
    return result, skipped, notes


def localiser_report(probs: np.ndarray, labels: np.ndarray, kept: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per image its true and predicted class with the cell fields; with crop "cell", a count per localiser status
    and the accuracy on the images of status "one" (None when there are none)."""
    pred = probs.mean(axis=0).argmax(-1)
    images = [{**k, "class": CLASS_NAMES[int(t)], "predicted": CLASS_NAMES[int(p)]}
              for k, t, p in zip(kept, labels, pred)]
    status = np.array([k["cell_status"] for k in kept], dtype=object)
    if not any(s is not None for s in status):
        return {"localiser": None, "accuracy_status_one": None, "n_status_one": 0, "images": images}
    one = status == "one"
    return {"localiser": {s: int((status == s).sum()) for s in STATUSES},
            "accuracy_status_one": float((pred[one] == labels[one]).mean()) if one.any() else None,
            "n_status_one": int(one.sum()), "images": images}


def format_report(r: dict[str, Any], seeds: Sequence[int]) -> str:
    lines = [f"images {r['n_images']}: accuracy {r['accuracy']:.4f}, balanced accuracy {r['balanced_accuracy']:.4f}"]
    if r.get("localiser"):
        one = r["accuracy_status_one"]
        lines.append("localiser: " + ", ".join(f"{s} {n}" for s, n in r["localiser"].items())
                     + f"; accuracy on status one ({r['n_status_one']} images): "
                     + (f"{one:.4f}" if one is not None else "n/a"))
    if len(seeds) > 1:
        lines.append("per seed: " + ", ".join(f"{s}: {a:.4f}" for s, a in zip(seeds, r["accuracy_per_seed"])))
    lines += ["", f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, m in r["per_class"].items():
        lines.append(f"{c:<12}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)", " " * 12 + "".join(f"{c[:3]:>7}" for c in CLASS_NAMES)]
    for c, row in zip(CLASS_NAMES, r["confusion_matrix"]):
        lines.append(f"{c:<12}" + "".join(f"{v:>7d}" for v in row))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from bccd_jax.plots import plot_confusion
    from bccd_jax.run import restore, write_json
    from bccd_jax.runtime import enable_compilation_cache

    args = make_parser().parse_args(argv)
    items, skipped = scan(args.folders)
    notes: list[str] = []
    enable_compilation_cache()
    restored = restore(args.run, args.variant, args.seed, args.checkpoint, notes=notes)
    if args.tta:
        restored = restored.with_tta(args.tta)
    evaluated, unread, load_notes = evaluation(restored, items, run_crop(args.crop, restored.data.crop), args.strict)
    skipped.update(unread)
    how = evaluated["preparation"]
    result = {"run": str(restored.folder), "variant": restored.variant.name, "checkpoint_epoch": restored.epoch,
              "seeds": restored.seeds, "folders": [str(f) for f in args.folders],
              "model_input": restored.preprocessing(), "preparation": how, "skipped": dict(skipped), **evaluated}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "evaluation.json", result)
    plot_confusion(np.asarray(result["confusion_matrix"]), out / "confusion.png",
                   title=f"{restored.variant.name}: {result['n_images']} images, accuracy {result['accuracy']:.3f}")
    for msg in notes + load_notes[:5] + ([f"... and {len(load_notes) - 5} more"] if len(load_notes) > 5 else []):
        print(f"[bccd_jax.evaluate] {msg}", file=sys.stderr)
    print(f"[bccd_jax.evaluate] {restored.folder} variant {restored.variant.name!r}, epoch {restored.epoch}, "
          f"seeds {restored.seeds}; model input: {restored.preprocessing()}", file=sys.stderr)
    for what, n in how.items():
        print(f"[bccd_jax.evaluate] {n} images: {what}", file=sys.stderr)
    for what, n in skipped.items():
        print(f"[bccd_jax.evaluate] skipped {n} images: {what}", file=sys.stderr)
    print(f"[bccd_jax.evaluate] wrote {out / 'evaluation.json'} and {out / 'confusion.png'}", file=sys.stderr)
    print(json.dumps(result) if args.json else format_report(result, restored.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
