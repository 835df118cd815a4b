"""Find the white cell in an image of any kind, and crop around it at the cell's own scale.

A BCCD field shows one small white cell anywhere among red cells; the Kaggle augmented set shows
the same fields at 320x240 with black corners from its rotations; other labs' images (CellaVision)
show one large centred cell. A classifier sees these alike only if each is cropped around its
cell at a scale set by the cell. `locate_cell` finds the cell from its nucleus, the one part that
is dark in the hematoxylin stain direction in every such image:

1. fill: near-black pixels connected to the border (rotation or padding fill) are masked out,
   because they are dark in every channel and so "dark" in any stain channel too;
2. stain: Ruifrok-Johnston colour deconvolution gives the hematoxylin optical density per pixel;
3. threshold: Otsu's threshold of that density over the image's own unmasked pixels (no number
   fitted to any one lab's colours), never below a floor above the background's density;
4. blobs: connected components, with pieces near each other (the lobes of a neutrophil) grouped
   into one nucleus; the largest group is the nucleus, and other large groups make the status
   "several"; nothing large enough makes it "none" (the image centre is the fallback);
5. cell: a square around the nucleus box, grown by a fixed ratio of the nucleus' own size.

`crop_cell` / `crop_cells` turn a location into the model's (H, W) input with the originals'
crop rule (bccd_jax.data.pixels.crop_rect), centred on the cell.

Measured on the BCCD originals' WBC boxes (--bccd, default the embedded originals), the augmented
set (its dataset2-master folder) and a folder of centred single-cell images from another lab with

    python -m bccd_jax.localize --augmented DATASET2_DIR --foreign FOLDER [--examples DIR]

which printed, for the 364 BCCD originals, all 12,444 augmented TRAIN+TEST images and 400 CellaVision
images of the PBC data set (Acevedo et al. 2020; evaluation only, nothing here is fitted to them):

    BCCD, 358 with a WBC box: centre inside a WBC box 100.0% (358/358); centre error median 10.3 px,
      90th percentile 26.4 px; IoU with the best WBC box mean 0.787, median 0.799;
      one 350, several 8 (each of them an image with two WBC boxes), none 0
    BCCD, 6 without a WBC box: one 6 (each shows an unannotated white cell at the edge)
    augmented: one 12395 (99.6%), several 39 (0.3%), none 10 (0.1%); centre on black fill 0
    PBC: one 398, several 2, none 0; distance from the image centre over the shorter side median 0.019,
      90th percentile 0.060
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from bccd_jax.data.pixels import crop_rect, parallel_map
from bccd_jax.data.sources import DEFAULT_MARGIN, Box
from bccd_jax.errors import ArgumentParser, UserError, run_cli

STATUSES = ("one", "several", "none")
"""one: a single nucleus found; several: more than one, the largest chosen; none: the image centre as fallback."""

MIN_SIDE = 16
"""Smaller images hold no cell worth locating."""

WORK_SIDE = 320
"""Images are analysed block-averaged to a long side near this (a 640x480 field at 1/2)."""

FILL_LEVEL = 40
"""A pixel whose every channel is below this (0..255) and that connects to the border is fill."""
FILL_GROW = 3
"""Working pixels around the fill also masked (JPEG blurs the fill's edge into the image)."""

SMOOTH_SIGMA = 1.5
"""Gaussian sigma (working pixels) on the density before thresholding: speckle out, lobes closer."""

MIN_CONTRAST = 0.10
"""The threshold is at least the median density of the unmasked pixels plus this (optical density):
Otsu alone often cuts between background and red cells; the palest nuclei of the augmented set (its
min/max rescaling lowers contrast) stand about 0.14 above the median."""

MIN_AREA_FRACTION = 0.002
"""A nucleus (all its pieces) covers at least this fraction of the unmasked image (smaller: platelets, specks)."""

JOIN_RADII = 1.0
"""Blobs within this many equivalent radii (of the largest blob) of each other are pieces of one nucleus."""

JOIN_MIN_PIECE = 0.1
"""Only blobs at least this fraction of the largest one's area join it as pieces of one nucleus."""

SEVERAL_AREA_RATIO = 0.4
"""Another blob at least this fraction of the chosen nucleus' area makes the status "several"."""

CELL_PER_NUCLEUS = 1.26
"""Cell side over the nucleus box's longer side: the median over BCCD originals of sqrt(WBC box area) over it."""

# Ruifrok & Johnston (2001) stain vectors (hematoxylin, eosin, DAB), rows normalised; the inverse
# maps optical density (R, G, B) to stain amounts.
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAINS = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)
_HEMATOXYLIN = np.linalg.inv(_STAINS)[:, 0].astype(np.float32)


@dataclass(frozen=True)
class CellLocation:
    """Where the white cell is in an image (pixels of the input image, x right, y down).

    `box` is the cell's square (x0, y0, x1, y1), which may reach past the image edge; `nucleus_box`
    is None when nothing was found. `reason` says in one line what was chosen and why.
    """

    status: str
    center: tuple[float, float]
    size: float
    box: tuple[float, float, float, float]
    nucleus_box: tuple[float, float, float, float] | None
    candidates: int
    reason: str


def hematoxylin_density(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density per pixel of an RGB uint8 image (float32; black is 2.9, white about 0)."""
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)
    return od @ _HEMATOXYLIN


def block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Average factor x factor blocks (the remainder rows/columns are dropped) -> float32."""
    h, w = rgb.shape[0] // factor * factor, rgb.shape[1] // factor * factor
    total = np.zeros((h // factor, w // factor, rgb.shape[2]), np.float32)
    for dy in range(factor):
        for dx in range(factor):
            total += rgb[dy:h:factor, dx:w:factor]
    return total / (factor * factor)


def fill_mask(rgb: np.ndarray) -> np.ndarray:
    """Near-black pixels connected to the image border, grown by FILL_GROW: rotation and padding fill."""
    dark = (rgb < FILL_LEVEL).all(axis=-1)
    if not dark.any():
        return dark
    labels, n = ndimage.label(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = np.isin(labels, border[border > 0])
    if fill.any() and FILL_GROW:
        fill = ndimage.binary_dilation(fill, iterations=FILL_GROW)
    return fill


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of a 1-D sample."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


def fallback_location(height: int, width: int, reason: str) -> CellLocation:
    """No nucleus: the image centre, with a cell size that makes the crop as tall as the image's shorter side
    (a square output gets the largest centred square), so nothing is zoomed in on a guess."""
    side = min(height, width) / (1 + 2 * DEFAULT_MARGIN)
    cx, cy = width / 2, height / 2
    return CellLocation("none", (cx, cy), side, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2),
                        None, 0, reason)


def locate_cell(rgb: np.ndarray) -> CellLocation:
    """Find the white cell in an RGB uint8 (H, W, 3) image from its nucleus; see the module docstring."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} of shape {rgb.shape}")
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image of {rgb.shape[1]}x{rgb.shape[0]} px is too small to locate a cell in "
                         f"(at least {MIN_SIDE} px per side)")
    height, width = rgb.shape[:2]
    factor = max(1, round(max(height, width) / WORK_SIDE))
    small = block_mean(rgb, factor)
    valid = ~fill_mask(small)
    n_valid = int(valid.sum())
    if n_valid < 0.1 * valid.size:
        return fallback_location(height, width, "the image is mostly black fill")
    density = ndimage.gaussian_filter(hematoxylin_density(small), SMOOTH_SIGMA)
    inside = density[valid]
    floor = float(np.median(inside)) + MIN_CONTRAST
    threshold = max(otsu_threshold(inside), floor)
    labels, n = ndimage.label((density > threshold) & valid)
    if n == 0:
        return fallback_location(height, width, f"no pixel is darker than the background by {MIN_CONTRAST} in "
                                                 f"hematoxylin density")
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[0] = 0
    groups = nucleus_groups(labels, areas)
    min_area = MIN_AREA_FRACTION * n_valid
    plausible = [g for g in groups if areas[g].sum() >= min_area]
    if not plausible:
        return fallback_location(height, width, f"{n} dark blobs, none with {MIN_AREA_FRACTION:.1%} of the image "
                                                 f"(largest {areas.max() * factor * factor} px)")
    chosen = plausible[0]
    nucleus_area = int(areas[chosen].sum())
    others = [g for g in plausible[1:] if areas[g].sum() >= SEVERAL_AREA_RATIO * nucleus_area]
    ys, xs = np.nonzero(np.isin(labels, chosen))
    nx0, ny0, nx1, ny1 = xs.min() * factor, ys.min() * factor, (xs.max() + 1) * factor, (ys.max() + 1) * factor
    cx, cy = float(nx0 + nx1) / 2, float(ny0 + ny1) / 2
    side = float(CELL_PER_NUCLEUS * max(nx1 - nx0, ny1 - ny0))
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    nucleus_box = (float(nx0), float(ny0), float(nx1), float(ny1))
    if others:
        return CellLocation("several", (cx, cy), side, box, nucleus_box, 1 + len(others),
                            f"chose the largest of {1 + len(others)} nucleus-like blobs "
                            f"({nucleus_area * factor ** 2} px; next {int(areas[others[0]].sum()) * factor ** 2} px)")
    return CellLocation("one", (cx, cy), side, box, nucleus_box, 1,
                        f"one nucleus-like blob ({nucleus_area * factor ** 2} px in {len(chosen)} pieces)")


def nucleus_groups(labels: np.ndarray, areas: np.ndarray) -> list[np.ndarray]:
    """Dark blobs grouped into nuclei, largest total area first (arrays of labels).

    Pieces at least JOIN_MIN_PIECE of the largest blob's area that lie within JOIN_RADII of its
    equivalent radius of each other, directly or through other pieces, are one nucleus (the lobes of a
    neutrophil or an eosinophil); smaller specks (platelets, granules) stay apart.
    """
    largest = areas.max()
    pieces = np.flatnonzero(areas >= JOIN_MIN_PIECE * largest)
    reach = JOIN_RADII * np.sqrt(largest / np.pi)
    near = ndimage.distance_transform_edt(~np.isin(labels, pieces)) <= reach / 2
    clusters, _ = ndimage.label(near)
    groups: dict[int, list[int]] = {}
    slices = ndimage.find_objects(labels)
    for lab in pieces:
        where = slices[lab - 1]
        groups.setdefault(int(clusters[where][labels[where] == lab][0]), []).append(int(lab))
    specks = [np.array([lab]) for lab in np.setdiff1d(np.flatnonzero(areas), pieces)]
    return sorted([np.array(g) for g in groups.values()] + specks, key=lambda g: -int(areas[g].sum()))


# --------------------------------------------------------------------------- crop


def cell_crop_rect(location: CellLocation, image_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop rectangle: the cell box widened like the originals' WBC box, at the output aspect, centred."""
    x0, y0, x1, y1 = location.box
    return crop_rect(Box("WBC", x0, y0, x1, y1), image_hw[1], image_hw[0], out_hw, DEFAULT_MARGIN, centred=True)


def crop_cell(rgb: np.ndarray, out_hw: tuple[int, int], location: CellLocation | None = None) -> np.ndarray:
    """The cell of an RGB uint8 image cropped (outside the image: black) and resized to uint8 (H, W, 3)."""
    from PIL import Image

    location = locate_cell(rgb) if location is None else location
    rect = cell_crop_rect(location, rgb.shape[:2], out_hw)
    crop = Image.fromarray(np.ascontiguousarray(rgb)).crop(rect)
    h, w = out_hw
    if crop.size != (w, h):
        crop = crop.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(crop, dtype=np.uint8)


def crop_cells(images: np.ndarray | Sequence[np.ndarray], out_hw: tuple[int, int],
               workers: int | None = 1) -> tuple[np.ndarray, list[CellLocation]]:
    """`crop_cell` over a batch (an (N, H, W, 3) uint8 array, or a list of images of any sizes).

    Returns the crops as uint8 (N, H, W, 3) and each image's location, in order; `workers` > 1 (or None:
    one per core) spreads the images over threads, with the same result.
    """
    def one(im: np.ndarray) -> tuple[np.ndarray, CellLocation]:
        im = np.asarray(im)
        loc = locate_cell(im)
        return crop_cell(im, out_hw, loc), loc

    done = list(parallel_map(one, images, workers))
    h, w = out_hw
    crops = np.stack([c for c, _ in done]) if done else np.zeros((0, h, w, 3), np.uint8)
    return crops, [loc for _, loc in done]


# --------------------------------------------------------------------------- measurement


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
    p = ArgumentParser(prog="python -m bccd_jax.localize",
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
