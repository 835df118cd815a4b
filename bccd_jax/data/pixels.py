"""Pixels of the raw sources: decoding, the WBC crop rule of the originals, resizing, parallel decoding.

Pillow releases the GIL while it decodes and resizes, so a thread pool uses every core.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image

from bccd_jax.data.sources import Box
from bccd_jax.errors import UserError

_T = TypeVar("_T")
_R = TypeVar("_R")


def open_rgb(path: Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open and fully decode an image (JPEG draft mode shrinks by 1/2, 1/4, 1/8 while decoding)."""
    try:
        im = Image.open(path)
        if draft_size is not None and im.format == "JPEG":
            im.draft("RGB", draft_size)
        im.load()
        return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path}: {e}") from None


def load_resized(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """Decode and resize a whole image to (H, W) -> uint8 (H, W, 3)."""
    h, w = image_size
    im = open_rgb(path, (w, h))
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8)


def crop_rect(box: Box, img_w: int, img_h: int, out_hw: tuple[int, int], margin: float,
              centred: bool = False) -> tuple[int, int, int, int]:
    """Crop rectangle around a box, widened by `margin` per side, with the output aspect ratio.

    The rectangle is shifted to stay inside the image when it fits; when it is larger than the image
    it is centred and the outside is padded black by PIL's crop (like the Kaggle augmentation's fill).
    `centred=True` always centres it on the box (a located cell stays in the middle of its crop).
    """
    out_h, out_w = out_hw
    bw, bh = box.xmax - box.xmin, box.ymax - box.ymin
    w, h = bw * (1 + 2 * margin), bh * (1 + 2 * margin)
    aspect = out_w / out_h
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    cx, cy = (box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2

    def place(c: float, size: float, limit: int) -> float:
        if centred:
            return c - size / 2
        if size <= limit:
            return min(max(c - size / 2, 0.0), limit - size)
        return (limit - size) / 2

    x0, y0 = place(cx, w, img_w), place(cy, h, img_h)
    return round(x0), round(y0), round(x0 + w), round(y0 + h)


def load_crop(path: Path, box: Box, image_size: tuple[int, int], margin: float) -> np.ndarray:
    """Decode an original, crop around its WBC box (aspect-preserving, padded at borders), resize -> (H, W, 3)."""
    h, w = image_size
    im = open_rgb(path, None)
    rect = crop_rect(box, im.width, im.height, image_size, margin)
    crop = im.crop(rect)
    if crop.size != (w, h):
        crop = crop.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(crop, dtype=np.uint8)


def default_workers() -> int:
    """Decode threads: Pillow releases the GIL while decoding/resizing, so threads use the cores."""
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int | None = None) -> Iterator[_R]:
    """Ordered map over a thread pool; an exception in any item is re-raised in the caller."""
    workers = workers or default_workers()
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as ex:
        yield from ex.map(fn, items, chunksize=1)
