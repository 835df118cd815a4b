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

`python -m experiments.localiser` measures it against the BCCD originals' WBC boxes, on the
augmented set and on a folder of centred single-cell images from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from bccd_jax.data.pixels import crop_rect, parallel_map
from bccd_jax.data.sources import DEFAULT_MARGIN, Box

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
"""Blobs within this many radii of the largest blob (the radius of a disc of its area) of each other are pieces of one
nucleus."""

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

    Pieces at least JOIN_MIN_PIECE of the largest blob's area that lie within JOIN_RADII times its
    radius (that of a disc of its area) of each other, directly or through other pieces, are one nucleus (the lobes of a
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
