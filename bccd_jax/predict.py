"""Classify white-cell images with a trained run folder.

    python -m bccd_jax.predict IMAGE [IMAGE...] --run RUN_DIR [--variant NAME] [--seed K]
                               [--xml PATH] [--crop cell|none|center] [--checkpoint latest|EPOCH] [--json] [--debug]

The run folder's config rebuilds the model and the variant's latest (or chosen) Orbax
checkpoint supplies the weights of every seed (bccd_jax.run.restore). Images get the
training data's preprocessing (bccd_jax.images.prepare): a 640x480 BCCD original with its
VOC annotation (`--xml`) is cropped around its single WBC box like the originals data set.
Any other image is framed as the run's training images were (`--crop` overrides): a run trained
on cell crops (`--crop cell` of the experiments) gets each image cropped around its white cell,
found by bccd_jax.data.localize, at the cell's own scale, and the localiser's status is reported per image:
"one" (cropped at the cell), "several" (cropped at the largest nucleus, with the number of
candidates) or "none" (no nucleus found: the image centre at the image's own scale).
A run trained on whole images gets `--crop none`: the whole image resized to the run's size;
`--crop center` first cuts the largest centred region of the run's aspect ratio.

By default the softmax probabilities are averaged over the run's seeds and the number of
seeds whose own argmax agrees with the averaged class is reported; `--seed K` uses seed K
only. Human output is one line per image on stdout, ending with the localiser's status;
`--json` prints exactly one JSON object whose predictions carry cell_status, cell_center
(x, y), cell_box (the cell's square x0, y0, x1, y1), cell_crop (the crop rectangle in the
image) and cell_note (all null when the crop was not "cell"). Notes (the variant chosen, the
preprocessing) go to stderr. Every user error is one stderr line and exit code 2 (`--debug`
shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bccd_jax import CLASS_NAMES
from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.images import CROP_HELP, CROPS, Prepared, cell_fields, prepare, run_crop
from bccd_jax.metrics import softmax


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bccd_jax.predict",
                       description="Classify white-cell images with a trained run folder (probabilities averaged over seeds).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images: 640x480 originals (with --xml) "
                   "or cell images of any size >= 32 px (framed as the run's training images: see --crop)")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder written by an experiment")
    p.add_argument("--variant", help="which variant of the run (default: best final mean test accuracy)")
    p.add_argument("--seed", type=int, metavar="K", help="use seed K only (default: average over all seeds)")
    p.add_argument("--xml", action="append", default=[], metavar="PATH",
                   help="VOC annotation of a 640x480 original (its single WBC box is cropped); give one per "
                        "image in order, one for a single image, or a folder holding <image stem>.xml")
    p.add_argument("--crop", choices=CROPS, help=CROP_HELP)
    p.add_argument("--checkpoint", default="latest", metavar="latest|EPOCH", help="which checkpoint (default latest)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of one line per image")
    return p


def pair_xmls(images: Sequence[str], xmls: Sequence[str]) -> list[Path | None]:
    if not xmls:
        return [None] * len(images)
    if len(xmls) == 1 and Path(xmls[0]).expanduser().is_dir():
        folder = Path(xmls[0]).expanduser()
        return [folder / f"{Path(p).stem}.xml" if (folder / f"{Path(p).stem}.xml").exists() else None
                for p in images]
    if len(xmls) != len(images):
        raise UserError(f"got {len(xmls)} --xml for {len(images)} images; give one --xml per image (in order), "
                        "or one folder holding <image stem>.xml")
    return [Path(x).expanduser() for x in xmls]


def prepare_all(images: Sequence[str], xmls: Sequence[Path | None], hw: tuple[int, int], crop: str,
                notes: list[str] | None = None) -> list[Prepared]:
    """Every image as the model's input (bccd_jax.images.prepare, as evaluate does), in order."""
    return [prepare(p, x, hw, crop, notes) for p, x in zip(images, xmls)]


def cell_text(fields: dict[str, Any]) -> str:
    """The localiser's part of a human output line ("" when the crop was not "cell")."""
    if fields["cell_status"] is None:
        return ""
    x, y = fields["cell_center"]
    return f"  cell {fields['cell_status']} at ({x:.0f}, {y:.0f}): {fields['cell_note']}"


def classify(restored, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C] averaged over the restored seeds, per-seed argmax [S, N])."""
    probs = softmax(restored.logits(images))  # [S, N, C]
    return probs.mean(axis=0), probs.argmax(axis=-1)


def main(argv: Sequence[str] | None = None) -> int:
    from bccd_jax.run import restore
    from bccd_jax.runtime import enable_compilation_cache

    args = make_parser().parse_args(argv)
    notes: list[str] = []  # shown once the prediction succeeded, so an error stays one line
    enable_compilation_cache()
    restored = restore(args.run, args.variant, args.seed, args.checkpoint, notes=notes)
    hw = restored.image_size
    prepared = prepare_all(args.images, pair_xmls(args.images, args.xml), hw, run_crop(args.crop, restored.data.crop), notes)
    mean_probs, seed_classes = classify(restored, np.stack([p.array for p in prepared]))
    used = restored.seeds
    preds: list[dict[str, Any]] = []
    for i, path in enumerate(args.images):
        k = int(mean_probs[i].argmax())
        preds.append({"path": path, "class": CLASS_NAMES[k],
                      "probabilities": {c: float(p) for c, p in zip(CLASS_NAMES, mean_probs[i])},
                      "seeds_agreeing": int((seed_classes[:, i] == k).sum()), **cell_fields(prepared[i])})
    notes.append(f"{restored.folder} variant {restored.variant.name!r}, checkpoint epoch {restored.epoch}, "
                 + (f"probabilities averaged over {len(used)} seeds" if len(used) > 1 else f"seed {used[0]}"))
    notes.append(f"model input: {restored.preprocessing()}")
    for msg in notes:
        print(f"[bccd_jax.predict] {msg}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"run": str(restored.folder), "variant": restored.variant.name,
                          "checkpoint_epoch": restored.epoch, "seeds": len(used), "seed_values": used,
                          "preprocessing": [p.how for p in prepared], "predictions": preds}))
        return 0
    width = max(len(p) for p in args.images)
    for p in preds:
        probs = "  ".join(f"{c[:3]} {v:.3f}" for c, v in p["probabilities"].items())
        print(f"{p['path']:<{width}}  {p['class']:<10}  {probs}  seeds agreeing {p['seeds_agreeing']}/{len(used)}"
              + cell_text(p))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
