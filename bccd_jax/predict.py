"""Classify white-cell images with a trained run folder.

    python -m bccd_jax.predict IMAGE [IMAGE...] --run RUN_DIR [--variant NAME] [--seed K]
                               [--xml PATH] [--checkpoint latest|EPOCH] [--json] [--debug]

The run's config.json rebuilds the model; the variant's latest (or chosen) Orbax
checkpoint supplies the weights of every seed. Images get the data layer's
preprocessing (`bccd_jax.data.sources`):

- a full 640x480 BCCD original with its VOC annotation (`--xml`): crop around the
  single WBC box exactly like the originals builder, then resize to the run's size;
- any other image (e.g. a 320x240 image of the augmented set): plain resize to
  the run's image size (a note on stderr when it is not 320x240; refused below 32 px).

By default the softmax probabilities are averaged over the run's seeds and the
number of seeds whose own argmax agrees with the averaged class is reported;
`--seed K` uses seed K only. Human output is one line per image on stdout;
`--json` prints exactly one JSON object. Notes go to stderr. Every user error is
one stderr line and exit code 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bccd_jax import CLASS_NAMES
from bccd_jax.errors import ArgumentParser, UserError, run_cli

ORIGINAL_SIZE = (640, 480)   # (W, H) of a BCCD original
AUGMENTED_SIZE = (320, 240)  # (W, H) of an image of the Kaggle augmented set
MIN_SIDE = 32


_NOTES: list[str] = []


def note(msg: str) -> None:
    """Queue a stderr note; notes are shown once the prediction succeeded, so an error stays one line."""
    _NOTES.append(msg)


def flush_notes() -> None:
    for msg in _NOTES:
        print(f"[bccd_jax.predict] {msg}", file=sys.stderr, flush=True)
    _NOTES.clear()


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bccd_jax.predict",
                       description="Classify white-cell images with a trained run folder (probabilities averaged over seeds).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG images: 640x480 originals (with --xml) "
                   "or cell images of any size >= 32 px (resized to the run's image size)")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run folder written by an experiment")
    p.add_argument("--variant", help="which variant of the run (default: best final mean test accuracy)")
    p.add_argument("--seed", type=int, metavar="K", help="use seed K only (default: average over all seeds)")
    p.add_argument("--xml", action="append", default=[], metavar="PATH",
                   help="VOC annotation of a 640x480 original (its single WBC box is cropped); give one per "
                        "image in order, one for a single image, or a folder holding <image stem>.xml")
    p.add_argument("--checkpoint", default="latest", metavar="latest|EPOCH", help="which checkpoint (default latest)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of one line per image")
    return p


# ----------------------------------------------------------------------------- the run


@dataclass
class RunChoice:
    run_dir: Path
    config: dict
    variant: str
    seeds: list[int]
    epoch: int
    ckpt_dir: Path


def _epochs_on_disk(ckpt_dir: Path) -> list[int]:
    """Finished Orbax step folders (plain integers; temporary folders of an interrupted save are skipped)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit())


def choose(run: str, variant: str | None, seed: int | None, checkpoint: str) -> RunChoice:
    """Read the run folder and settle variant, seeds and checkpoint epoch (no JAX needed)."""
    from bccd_jax import runs

    run_dir = Path(run).expanduser()
    config, metrics = runs.read_run(run_dir)
    variants = config.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise UserError(f"{run_dir / runs.CONFIG_FILE} lists no variants; is this a bccd_jax experiment run folder?")
    with_ckpt = {v: _epochs_on_disk(run_dir / "checkpoints" / v) for v in variants}
    with_ckpt = {v: e for v, e in with_ckpt.items() if e}
    if not with_ckpt:
        raise UserError(f"run folder {run_dir} has no checkpoints (nothing under {run_dir / 'checkpoints'}); "
                        "train it first or resume it with --resume")
    if variant is not None:
        if variant not in variants:
            raise UserError(f"unknown variant {variant!r}; run {run_dir} has {', '.join(variants)}")
        if variant not in with_ckpt:
            raise UserError(f"variant {variant!r} of {run_dir} has no checkpoint yet; "
                            f"variants with checkpoints: {', '.join(with_ckpt)}")
    else:
        scored = {v: m.get("test_acc_final_mean") for v, m in metrics.items()
                  if v in with_ckpt and isinstance(m, dict) and not m.get("incomplete")}
        scored = {v: float(s) for v, s in scored.items() if s is not None}
        if len(with_ckpt) == 1:
            variant = next(iter(with_ckpt))
            note(f"variant {variant!r} (the only one with checkpoints)")
        elif scored:
            variant = max(scored, key=lambda v: scored[v])
            note(f"variant {variant!r}: best final mean test accuracy {scored[variant]:.3f} of "
                 f"{len(scored)} finished variants ({', '.join(scored)}); choose another with --variant")
        else:
            variant = next(iter(with_ckpt))
            note(f"variant {variant!r}: no variant has finished metrics, taking the first with checkpoints "
                 f"({', '.join(with_ckpt)}); choose another with --variant")
    seeds = [int(s) for s in variants[variant].get("seeds", [])]
    if not seeds:
        raise UserError(f"config.json of {run_dir} lists no seeds for variant {variant!r}; the run folder is damaged")
    if seed is not None and seed not in seeds:
        raise UserError(f"unknown seed {seed} for variant {variant!r}; the run has seeds {seeds}")
    epochs = with_ckpt[variant]
    if checkpoint == "latest":
        epoch = epochs[-1]
    else:
        try:
            epoch = int(checkpoint)
        except ValueError:
            raise UserError(f"--checkpoint expects 'latest' or an epoch number, got {checkpoint!r}") from None
        if epoch not in epochs:
            raise UserError(f"no checkpoint at epoch {epoch} for variant {variant!r}; saved epochs: {epochs}")
    return RunChoice(run_dir, config, variant, seeds, epoch, run_dir / "checkpoints" / variant)


# ----------------------------------------------------------------------------- images


def _pair_xmls(images: Sequence[str], xmls: Sequence[str]) -> list[Path | None]:
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


def _sibling_xml(path: Path) -> Path | None:
    """<root>/Annotations/<stem>.xml next to <root>/JPEGImages/<stem>.jpg (the BCCD layout), if it exists."""
    cand = path.parent.parent / "Annotations" / f"{path.stem}.xml"
    return cand if cand.is_file() else None


def _wbc_box(xml: Path, image_path: Path, image_size: tuple[int, int]):
    from bccd_jax.data import sources

    if not xml.exists():
        raise UserError(f"annotation {xml} not found")
    if not xml.is_file():
        raise UserError(f"annotation {xml} is not a file")
    size, boxes = sources.parse_voc_xml(xml)
    wbc = [b for b in boxes if b.name.upper() == "WBC"]
    if not wbc:
        raise UserError(f"{xml} has no WBC box (objects: {', '.join(sorted({b.name for b in boxes})) or 'none'}); "
                        "the cell to classify must be annotated as WBC")
    if len(wbc) > 1:
        raise UserError(f"{xml} has {len(wbc)} WBC boxes; prediction needs exactly one (like the data set, "
                        "which skips such originals)")
    box = wbc[0]
    if box.xmax - box.xmin < 4 or box.ymax - box.ymin < 4:
        raise UserError(f"{xml}: the WBC box {box.xmax - box.xmin:g}x{box.ymax - box.ymin:g} px is too small to crop")
    if size is not None and size != image_size:
        raise UserError(f"{xml} describes a {size[0]}x{size[1]} image but {image_path} is "
                        f"{image_size[0]}x{image_size[1]}; is it the annotation of another image?")
    return box


def load_image(path_text: str, xml: Path | None, hw: tuple[int, int]) -> np.ndarray:
    """One image preprocessed like the data layer -> uint8 (H, W, 3); notes and errors name the file."""
    from PIL import Image, UnidentifiedImageError

    from bccd_jax.data import sources

    path = Path(path_text).expanduser()
    if not path.exists():
        raise UserError(f"image {path} not found")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
    except UnidentifiedImageError:
        raise UserError(f"{path} is not an image (expected a JPEG or PNG)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    if min(size) < MIN_SIDE:
        raise UserError(f"image {path} is {size[0]}x{size[1]} px; at least {MIN_SIDE} px per side is needed")
    if mode != "RGB":
        note(f"{path}: {mode} image converted to RGB")
    if xml is not None:
        box = _wbc_box(xml, path, size)
        if size != ORIGINAL_SIZE:
            note(f"{path}: {size[0]}x{size[1]}, not a 640x480 original; cropping the WBC box of {xml} anyway")
        return sources.load_crop(path, box, hw, sources.DEFAULT_MARGIN)
    if size == ORIGINAL_SIZE:
        hint = _sibling_xml(path)
        raise UserError(f"{path} is a full 640x480 BCCD original: pass its VOC annotation with --xml "
                        f"{hint if hint else 'PATH'} so the WBC can be cropped like the training data")
    if size != AUGMENTED_SIZE:
        note(f"{path}: {size[0]}x{size[1]} resized to {hw[1]}x{hw[0]} (the data set's cell images are "
             f"{AUGMENTED_SIZE[0]}x{AUGMENTED_SIZE[1]}, 4:3)")
    return sources.load_resized(path, hw)


# ----------------------------------------------------------------------------- model + weights


def load_state(choice: RunChoice):
    """(model, TrainState with a leading seed axis) restored from the chosen checkpoint."""
    import jax

    from bccd_jax.checkpoints import CheckpointStore
    from bccd_jax.config import ModelConfig, TrainConfig, from_dict
    from bccd_jax.models import build_model
    from bccd_jax.optimizers import make_optimizer
    from bccd_jax.train import MultiSeedTrainer

    vcfg = choice.config["variants"][choice.variant]
    data = choice.config.get("data", {})
    try:
        model_cfg = from_dict(ModelConfig, vcfg["model"]).validate()
        train_cfg = from_dict(TrainConfig, vcfg["train"]).validate()
        h, w, c = (int(v) for v in data["image_shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"config.json of {choice.run_dir} is incomplete or damaged ({type(e).__name__}: {e})") from None
    if vcfg.get("optimizer", train_cfg.optimizer) != train_cfg.optimizer:
        raise UserError(f"variant {choice.variant!r} was trained with a custom optax chain "
                        f"({str(vcfg.get('optimizer'))[:60]}); its optimizer state cannot be rebuilt from "
                        "config.json, restore it in Python with that chain")
    model = build_model(model_cfg, train_mean=data.get("train_mean"))
    tx = make_optimizer(train_cfg)
    sample = np.zeros((1, h, w, c), np.uint8)
    if model_cfg.arch == "vgg16":
        from bccd_jax.transfer import freeze_vgg16

        abstract = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), sample)
        tx = freeze_vgg16(tx, abstract["params"], model_cfg.freeze)
    trainer = MultiSeedTrainer(model, tx, train_cfg, num_examples=1)
    template = jax.eval_shape(lambda: trainer.init_state(choice.seeds, sample))  # shapes only, nothing computed
    store = CheckpointStore(choice.ckpt_dir)
    try:
        state, meta = store.restore(template, epoch=choice.epoch)
    finally:
        store.close()
    saved_seeds = [int(s) for s in meta.get("seeds", choice.seeds)]
    if saved_seeds != choice.seeds:
        raise UserError(f"checkpoint {choice.ckpt_dir}/{choice.epoch} holds seeds {saved_seeds} but config.json "
                        f"says {choice.seeds}; the run folder is inconsistent")
    return model, state, train_cfg


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predict(images: np.ndarray, choice: RunChoice, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C] averaged over the used seeds, per-seed argmax [S_used, N])."""
    import jax

    from bccd_jax.train import predict_logits

    model, state, train_cfg = load_state(choice)
    if seed is not None:
        i = choice.seeds.index(seed)
        state = jax.tree.map(lambda x: x[i:i + 1], state)
    n = images.shape[0]
    logits = predict_logits(model, state, images, eval_batch_size=max(1, min(train_cfg.eval_batch_size, n)))
    probs = softmax(logits)  # [S, N, C]
    return probs.mean(axis=0), probs.argmax(axis=-1)


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    _NOTES.clear()
    args = make_parser().parse_args(argv)
    choice = choose(args.run, args.variant, args.seed, args.checkpoint)
    hw = tuple(int(v) for v in choice.config["data"]["image_shape"][:2])
    xmls = _pair_xmls(args.images, args.xml)
    batch = np.stack([load_image(p, x, hw) for p, x in zip(args.images, xmls)])

    from bccd_jax.runtime import enable_compilation_cache

    enable_compilation_cache()
    mean_probs, seed_classes = predict(batch, choice, args.seed)
    used = [args.seed] if args.seed is not None else choice.seeds
    preds: list[dict[str, Any]] = []
    for i, path in enumerate(args.images):
        k = int(mean_probs[i].argmax())
        preds.append({"path": path, "class": CLASS_NAMES[k],
                      "probabilities": {c: float(p) for c, p in zip(CLASS_NAMES, mean_probs[i])},
                      "seeds_agreeing": int((seed_classes[:, i] == k).sum())})
    flush_notes()
    if args.json:
        print(json.dumps({"run": str(choice.run_dir), "variant": choice.variant, "checkpoint_epoch": choice.epoch,
                          "seeds": len(used), "seed_values": used, "predictions": preds}))
        return 0
    note(f"{choice.run_dir} variant {choice.variant!r}, checkpoint epoch {choice.epoch}, "
         + (f"seed {args.seed}" if args.seed is not None else f"probabilities averaged over {len(used)} seeds"))
    flush_notes()
    width = max(len(p) for p in args.images)
    for p in preds:
        probs = "  ".join(f"{c[:3]} {v:.3f}" for c, v in p["probabilities"].items())
        print(f"{p['path']:<{width}}  {p['class']:<10}  {probs}  seeds agreeing {p['seeds_agreeing']}/{len(used)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
