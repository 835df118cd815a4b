"""How well the white-cell localiser (bccd_jax.data.localize) finds the cell: on the BCCD originals against
their WBC boxes (hit rate, centre error, IoU), on the augmented set (how often it finds none or several, and
whether a centre ever lands on the black rotation fill), and on a folder of centred single-cell images from
another lab (status counts, distance from the image centre). Evaluation only: nothing is fitted to them.

    python -m experiments.localiser --augmented DATASET2_DIR --foreign FOLDER [--examples DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from bccd_jax.data.sources import Box
from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.data.localize import FILL_LEVEL, STATUSES, CellLocation, crop_cell, locate_cell

def _iou(a: tuple[float, float, float, float], b: Box) -> float:
    ix = max(0.0, min(a[2], b.xmax) - max(a[0], b.xmin))
    iy = max(0.0, min(a[3], b.ymax) - max(a[1], b.ymin))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b.xmax - b.xmin) * (b.ymax - b.ymin) - inter
    return inter / union if union > 0 else 0.0


def _clip(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    return max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])


def _counts(locations: Sequence[CellLocation]) -> str:
    n = max(1, len(locations))
    return ", ".join(f"{s} {c} ({c / n:.1%})" for s in STATUSES for c in [sum(loc.status == s for loc in locations)])


def _read(path: Path) -> np.ndarray:
    from bccd_jax.data.pixels import open_rgb

    return np.asarray(open_rgb(path), dtype=np.uint8)


def _image_files(folder: Path) -> list[Path]:
    from bccd_jax.images import IMAGE_SUFFIXES

    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class _Examples:
    """Montages of located boxes and crops, for looking at: one PNG per source, and one of its unusual cases
    (a miss, status several or none, a centre in the fill or far from a centred cell's)."""

    def __init__(self, folder: Path | None, per_source: int = 24):
        self.folder, self.per_source = folder, per_source
        self.tiles: dict[str, list[tuple[np.ndarray, np.ndarray, str]]] = {}

    def add(self, source: str, rgb: np.ndarray, loc: CellLocation, truth: Sequence[Box] = ()) -> None:
        if self.folder is None or len(self.tiles.setdefault(source, [])) >= self.per_source:
            return
        from PIL import Image, ImageDraw

        im = Image.fromarray(rgb)
        draw = ImageDraw.Draw(im)
        for b in truth:
            draw.rectangle((b.xmin, b.ymin, b.xmax, b.ymax), outline=(0, 160, 255), width=2)
        if loc.nucleus_box is not None:
            draw.rectangle(loc.nucleus_box, outline=(255, 255, 0), width=1)
        colour = {"one": (0, 200, 0), "several": (255, 160, 0), "none": (255, 0, 0)}[loc.status]
        draw.rectangle(loc.box, outline=colour, width=3)
        whole = np.asarray(im.resize((240, round(240 * im.height / im.width))))
        self.tiles[source].append((whole, crop_cell(rgb, (120, 160), loc), loc.status))

    def save(self) -> None:
        if self.folder is None:
            return
        from PIL import Image

        self.folder.mkdir(parents=True, exist_ok=True)
        for source, tiles in self.tiles.items():
            cols = 4
            rows = -(-len(tiles) // cols)
            th = max(t[0].shape[0] for t in tiles)
            sheet = Image.new("RGB", (cols * 410, rows * (th + 10)), (255, 255, 255))
            for k, (whole, crop, _) in enumerate(tiles):
                x, y = (k % cols) * 410, (k // cols) * (th + 10)
                sheet.paste(Image.fromarray(whole), (x, y))
                sheet.paste(Image.fromarray(crop), (x + 245, y))
            sheet.save(self.folder / f"{source}.png")


def measure_bccd(root: Path | None, examples: _Examples) -> None:
    """Hit rate, centre error and IoU against the WBC boxes of every BCCD original."""
    from bccd_jax.data import sources

    paths = sources.find_originals(root)
    xmls = sorted(paths.annotations.glob("*.xml"))
    hits, errors, ious, located, no_box = [], [], [], [], []
    for xml in xmls:
        image = paths.images / f"{xml.stem}.jpg"
        if not image.is_file():
            continue
        rgb = _read(image)
        loc = locate_cell(rgb)
        wbc = [b for b in sources.parse_voc_xml(xml)[1] if b.name.upper() == "WBC"]
        if not wbc:
            no_box.append(loc)
            examples.add("bccd_no_wbc_box", rgb, loc)
            continue
        located.append(loc)
        cx, cy = loc.center
        hits.append(any(b.xmin <= cx <= b.xmax and b.ymin <= cy <= b.ymax for b in wbc))
        errors.append(min(np.hypot(cx - (b.xmin + b.xmax) / 2, cy - (b.ymin + b.ymax) / 2) for b in wbc))
        ious.append(max(_iou(_clip(loc.box, rgb.shape[1], rgb.shape[0]), b) for b in wbc))
        examples.add("bccd" if hits[-1] and loc.status == "one" else "bccd_unusual", rgb, loc, wbc)
    if not located:
        raise UserError(f"no BCCD image with a WBC box under {paths.root}; give --bccd the folder holding "
                        f"BCCD/Annotations and BCCD/JPEGImages")
    print(f"BCCD originals with a WBC box: {len(located)} images")
    print(f"  hit rate (centre inside a WBC box): {np.mean(hits):.1%} ({sum(hits)}/{len(hits)})")
    print(f"  centre error to the nearest WBC box centre: median {np.median(errors):.1f} px, "
          f"90th percentile {np.percentile(errors, 90):.1f} px")
    print(f"  IoU of the cell box with the best WBC box: mean {np.mean(ious):.3f}, median {np.median(ious):.3f}")
    print(f"  status: {_counts(located)}")
    print(f"BCCD originals without a WBC box: {len(no_box)} images; status: {_counts(no_box)}")


def measure_augmented(images_dir: Path, sample: int, seed: int, examples: _Examples) -> None:
    """How often the localiser finds none / several on the augmented set, and lands in its black fill."""
    from bccd_jax.data import sources

    root = sources.find_images_dir(images_dir)
    files = [p for split in ("TRAIN", "TEST") for p in _image_files(root / split)]
    if not files:
        raise UserError(f"no images under {root}/TRAIN or {root}/TEST")
    if 0 < sample < len(files):
        pick = np.random.default_rng(seed).choice(len(files), sample, replace=False)
        files = [files[i] for i in sorted(pick)]
    located, in_fill = [], 0
    for k, path in enumerate(files):
        rgb = _read(path)
        loc = locate_cell(rgb)
        located.append(loc)
        x = min(max(int(loc.center[0]), 0), rgb.shape[1] - 1)
        y = min(max(int(loc.center[1]), 0), rgb.shape[0] - 1)
        landed_in_fill = bool(rgb[y, x].max() < FILL_LEVEL)
        in_fill += landed_in_fill
        if landed_in_fill or loc.status != "one":
            examples.add("augmented_unusual", rgb, loc)
        elif k % 97 == 0:
            examples.add("augmented", rgb, loc)
    n = len(located)
    print(f"augmented set, TRAIN+TEST: {n} images" + (f" (seeded sample, seed {seed})" if 0 < sample < n + 1 else ""))
    print(f"  status: {_counts(located)}")
    print(f"  centre on a black fill pixel: {in_fill} ({in_fill / n:.2%})")


def measure_foreign(folder: Path, examples: _Examples) -> None:
    """Status counts on images of centred single cells, and how far the found centre is from the image centre."""
    files = _image_files(folder)
    if not files:
        raise UserError(f"no images under {folder}")
    located, dist = [], []
    for k, path in enumerate(files):
        rgb = _read(path)
        loc = locate_cell(rgb)
        located.append(loc)
        h, w = rgb.shape[:2]
        dist.append(np.hypot(loc.center[0] - w / 2, loc.center[1] - h / 2) / min(h, w))
        if loc.status != "one" or dist[-1] > 0.2:
            examples.add("foreign_unusual", rgb, loc)
        elif k % 17 == 0:
            examples.add("foreign", rgb, loc)
    d = np.array(dist)
    print(f"foreign images (centred cells): {len(files)} images")
    print(f"  status: {_counts(located)}")
    print(f"  distance of the centre from the image centre, over the shorter side: median {np.median(d):.3f}, "
          f"90th percentile {np.percentile(d, 90):.3f}, over 0.2: {(d > 0.2).sum()}")


def make_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.localiser",
                       description="Measure the white-cell localiser: BCCD originals against their WBC boxes, the "
                                   "augmented set's fill, and centred single-cell images from elsewhere.")
    p.add_argument("--bccd", metavar="DIR", help="folder holding BCCD/Annotations and BCCD/JPEGImages "
                   "(default: the embedded originals)")
    p.add_argument("--augmented", metavar="DIR", help="the augmented set's dataset2-master (or its images/) folder")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="a seeded sample of N augmented TRAIN+TEST images (default 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmented sample (default 0)")
    p.add_argument("--foreign", metavar="DIR", help="a folder of centred single-cell images (searched recursively)")
    p.add_argument("--examples", metavar="DIR", help="write montages (whole image with boxes, and the crop) here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.sample < 0:
        raise UserError(f"--sample {args.sample} is negative; give a number of images, or 0 for all")
    for name in ("bccd", "augmented", "foreign"):
        value = getattr(args, name)
        if value is not None and not Path(value).expanduser().is_dir():
            raise UserError(f"--{name} {value} is not a folder")
    examples = _Examples(Path(args.examples).expanduser() if args.examples else None)
    measure_bccd(Path(args.bccd).expanduser() if args.bccd else None, examples)
    if args.augmented:
        measure_augmented(Path(args.augmented).expanduser(), args.sample, args.seed, examples)
    if args.foreign:
        measure_foreign(Path(args.foreign).expanduser(), examples)
    examples.save()
    if args.examples:
        print(f"montages written to {args.examples}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
