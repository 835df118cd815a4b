"""Bringing an image from anywhere to a model's input, the way its training data were made.

- a full 640x480 BCCD original with its VOC annotation: crop around the single WBC box exactly
  like the `originals` data set (bccd_jax.data.pixels.load_crop), then resize;
- any other image: `crop="cell"` (the default) finds the white cell with
  bccd_jax.data.localize.locate_cell and crops around it at the cell's own scale (localize.crop_cell);
  the localiser's status says how sure it is: "one" (cropped at the cell), "several" (cropped at
  the largest of several nuclei) or "none" (no nucleus: the image centre at the image's own
  scale). `crop="none"` resizes the whole image to the run's H x W (what the augmented set's
  320x240 cell images get); `crop="center"` first cuts the largest centred region with the run's
  aspect ratio, so an image of another shape is not squashed.

`prepare` returns a `Prepared`: the array, one line saying what was done to it, and the cell's
location (crop "cell" only); `cell_fields` turns that location into the fields predict and
evaluate report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from bccd_jax.data import pixels, sources
from bccd_jax.errors import UserError
from bccd_jax.data.localize import CellLocation, cell_crop_rect, crop_cell, locate_cell

ORIGINAL_SIZE = (640, 480)   # (W, H) of a BCCD original
AUGMENTED_SIZE = (320, 240)  # (W, H) of an image of the Kaggle augmented set
MIN_SIDE = 32
CROPS = ("cell", "none", "center")
DEFAULT_CROP = "cell"
CROP_HELP = ("cell: crop around the located white cell at its own scale; none: resize the whole image; center: the "
             "largest centred region of the run's aspect first (images without --xml). Default: the run's own, "
             "cell for a run trained on cell crops (--crop cell), none for one trained on whole images")


def run_crop(crop: str | None, training_crop: str) -> str:
    """The crop for images without --xml: the one asked for, else the one the run was trained with
    (DataRecord.crop): the network sees a foreign image framed as it saw its training images."""
    if crop is not None:
        return crop
    return "cell" if training_crop == "cell" else "none"


class Prepared(NamedTuple):
    """One image as the model's input: the uint8 (H, W, 3) array, how it got there, and (crop "cell") the cell."""

    array: np.ndarray
    how: str
    cell: CellLocation | None = None
    crop_rect: tuple[int, int, int, int] | None = None

_BOX_PROBLEMS = {
    "no_wbc_box": "has no WBC box (objects: {names}); the cell to classify must be annotated as WBC",
    "several_wbc_boxes": "has {n} WBC boxes; prediction needs exactly one (like the data set, which skips such "
                         "originals)",
    "tiny_wbc_box": "has a WBC box under {min} px per side, too small to crop",
}


def wbc_box(xml: Path, image_path: Path, image_size: tuple[int, int]) -> sources.Box:
    """The single WBC box of `xml`, which must describe `image_path` (of `image_size` (W, H))."""
    if not xml.exists():
        raise UserError(f"annotation {xml} not found")
    if not xml.is_file():
        raise UserError(f"annotation {xml} is not a file")
    size, boxes = sources.parse_voc_xml(xml)
    box, problem = sources.single_wbc_box(boxes)
    if box is None:
        names = ", ".join(sorted({b.name for b in boxes})) or "none"
        n = sum(b.name.upper() == "WBC" for b in boxes)
        raise UserError(f"{xml} " + _BOX_PROBLEMS[problem].format(names=names, n=n, min=sources.MIN_BOX_SIDE))
    if size is not None and size != image_size:
        raise UserError(f"{xml} describes a {size[0]}x{size[1]} image but {image_path} is "
                        f"{image_size[0]}x{image_size[1]}; is it the annotation of another image?")
    return box


def sibling_xml(path: Path) -> Path | None:
    """<root>/Annotations/<stem>.xml next to <root>/JPEGImages/<stem>.jpg (the BCCD layout), if it exists."""
    cand = path.parent.parent / "Annotations" / f"{path.stem}.xml"
    return cand if cand.is_file() else None


def probe(path: Path) -> tuple[tuple[int, int], str]:
    """(size (W, H), mode) of an image file without decoding it; unreadable files are UserErrors."""
    if not path.exists():
        raise UserError(f"image {path} not found")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except UnidentifiedImageError:
        raise UserError(f"{path} is not an image (expected a JPEG, PNG, BMP or TIFF)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def center_crop_resized(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """The largest centred region of the image with aspect W:H, resized to (H, W)."""
    h, w = hw
    im = pixels.open_rgb(path)
    scale = min(im.width / w, im.height / h)
    cw, ch = w * scale, h * scale
    x0, y0 = (im.width - cw) / 2, (im.height - ch) / 2
    im = im.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8)


def cell_note(location: CellLocation) -> str:
    """What crop "cell" did with a location, in a few words."""
    if location.status == "one":
        return "one nucleus: cropped at the cell"
    if location.status == "several":
        return f"several nuclei ({location.candidates} candidates): cropped at the largest nucleus"
    return f"no nucleus ({location.reason}): fell back to the image centre at the image's scale"


def cell_fields(prepared: Prepared) -> dict[str, Any]:
    """The localiser's report on one prepared image (all None unless it was prepared with crop "cell")."""
    loc = prepared.cell
    if loc is None:
        return {"cell_status": None, "cell_center": None, "cell_box": None, "cell_crop": None, "cell_note": None}
    return {"cell_status": loc.status, "cell_center": [round(v, 1) for v in loc.center],
            "cell_box": [round(v, 1) for v in loc.box], "cell_crop": list(prepared.crop_rect),
            "cell_note": cell_note(loc)}


def cell_crop(path: Path, hw: tuple[int, int]) -> Prepared:
    """Crop "cell": locate the white cell in the decoded image and crop around it (bccd_jax.data.localize)."""
    rgb = np.asarray(pixels.open_rgb(path), dtype=np.uint8)
    location = locate_cell(rgb)
    h, w = hw
    rect = cell_crop_rect(location, rgb.shape[:2], hw)
    where = {"one": "the located cell", "several": "the largest of several nuclei",
             "none": "the image centre (no nucleus found)"}[location.status]
    return Prepared(crop_cell(rgb, hw, location), f"crop around {where} at {w}:{h}, resized to {w}x{h}",
                    location, rect)


def prepare(path_text: str | Path, xml: Path | None, hw: tuple[int, int], crop: str = DEFAULT_CROP,
            notes: list[str] | None = None) -> Prepared:
    """One image as the model's uint8 (H, W, 3) input, how it got there and (crop "cell") where its cell is."""
    if crop not in CROPS:
        raise UserError(f"unknown crop {crop!r}; expected one of {', '.join(CROPS)}")
    path = Path(path_text).expanduser()
    size, mode = probe(path)
    if min(size) < MIN_SIDE:
        raise UserError(f"image {path} is {size[0]}x{size[1]} px; at least {MIN_SIDE} px per side is needed")
    if mode != "RGB" and notes is not None:
        notes.append(f"{path}: {mode} image converted to RGB")
    h, w = hw
    if xml is not None:
        box = wbc_box(xml, path, size)
        if size != ORIGINAL_SIZE and notes is not None:
            notes.append(f"{path}: {size[0]}x{size[1]}, not a 640x480 original; cropping the WBC box of {xml} anyway")
        return Prepared(pixels.load_crop(path, box, hw, sources.DEFAULT_MARGIN),
                        f"WBC box of {xml.name} widened by {sources.DEFAULT_MARGIN:g} per side, cropped at {w}:{h}, "
                        f"resized to {w}x{h}")
    if size == ORIGINAL_SIZE:
        hint = sibling_xml(path)
        if crop != "cell":
            raise UserError(f"{path} is a full 640x480 BCCD original: pass its VOC annotation with --xml "
                            f"{hint if hint else 'PATH'} so the WBC can be cropped like the training data")
        if notes is not None:
            notes.append(f"{path}: 640x480 like a BCCD original but no --xml; the cell is located (--xml "
                         f"{hint if hint else 'PATH'} crops its annotated WBC box like the training data)")
    if crop == "cell":
        return cell_crop(path, hw)
    if crop == "center":
        return Prepared(center_crop_resized(path, hw),
                        f"centre crop at {w}:{h} of {size[0]}x{size[1]}, resized to {w}x{h}")
    if size != AUGMENTED_SIZE and notes is not None:
        notes.append(f"{path}: {size[0]}x{size[1]} resized to {w}x{h} (the data set's cell images are "
                     f"{AUGMENTED_SIZE[0]}x{AUGMENTED_SIZE[1]}, 4:3; --crop center keeps the aspect)")
    return Prepared(pixels.load_resized(path, hw), f"whole {size[0]}x{size[1]} image resized to {w}x{h}")
