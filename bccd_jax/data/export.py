"""Compact single-file export of a built data set (WebP images + labels + ids + fingerprint).

The full augmented set is ~100 MB of JPEG at 320x240 and 690 MB as raw arrays at 120x160; as WebP
q90 at 120x160 it is ~47 MB in one file, easy to copy to another machine. The file is a plain,
uncompressed `.npz` (WebP is already compressed) that NumPy reads without pickle, so loading it
needs neither TFDS nor the original JPEGs; it is decoded on every load (a few seconds).

Layout: `meta` (a JSON string: format, name, image_shape, fingerprint, skipped, splits, quality)
and per split `<split>__webp` (uint8, all images concatenated), `<split>__offsets` (int64, N+1),
`<split>__labels` (int32), `<split>__original_ids` and `<split>__filenames` (unicode).
"""

from __future__ import annotations

import io
import os
import json
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from bccd_jax.data import Dataset, Split, log
from bccd_jax.data.pixels import parallel_map
from bccd_jax.errors import UserError
from bccd_jax.files import write_atomic

EXPORT_FORMAT = "bccd_jax-export-1"


def _encode(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img)).save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


def write_export(ds: Dataset, out: str | os.PathLike[str], quality: int = 90) -> int:
    """Write `ds` as one compact file; returns its size in bytes."""
    if not 1 <= quality <= 100:
        raise UserError(f"WebP quality {quality} is out of range 1..100")
    out_path = Path(out).expanduser()
    if out_path.suffix != ".npz":
        raise UserError(f"export file {out_path} must end in .npz")
    if not out_path.parent.is_dir():
        raise UserError(f"cannot write export {out_path}: folder {out_path.parent} does not exist")
    arrays: dict[str, np.ndarray] = {}
    for split, sp in ds.splits.items():
        t = time.time()
        blobs = list(parallel_map(lambda i: _encode(sp.images[i], quality), range(len(sp.labels))))
        offsets = np.zeros(len(blobs) + 1, np.int64)
        np.cumsum([len(b) for b in blobs], out=offsets[1:])
        arrays[f"{split}__webp"] = np.frombuffer(b"".join(blobs), np.uint8)
        arrays[f"{split}__offsets"] = offsets
        arrays[f"{split}__labels"] = np.asarray(sp.labels, np.int32)
        arrays[f"{split}__original_ids"] = np.asarray(sp.original_ids, dtype=str)
        arrays[f"{split}__filenames"] = np.asarray(sp.filenames, dtype=str)
        log(f"encoded {split}: {len(blobs)} images, {offsets[-1] / 2**20:.1f} MiB in {time.time() - t:.1f}s")
    meta = {"format": EXPORT_FORMAT, "name": ds.name, "image_shape": list(ds.image_shape),
            "fingerprint": ds.fingerprint, "skipped": ds.skipped, "splits": list(ds.splits),
            "quality": quality, "train_mean": ds.train_mean().tolist()}
    arrays["meta"] = np.array(json.dumps(meta))
    write_atomic(out_path, lambda f: np.savez(f, **arrays))
    return out_path.stat().st_size


def _read(path: Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Read and validate an export file -> (meta, {split: {field: array}})."""
    if not path.is_file():
        raise UserError(f"export file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != EXPORT_FORMAT:
                raise UserError(f"{path} is not a bccd_jax export (format {meta.get('format')!r})")
            parts = {s: {k: z[f"{s}__{k}"] for k in ("webp", "offsets", "labels", "original_ids", "filenames")}
                     for s in meta["splits"]}
    except UserError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable bccd_jax export: {e}") from None
    return meta, parts


def _decode_split(path: Path, split: str, p: dict[str, np.ndarray], shape: tuple[int, int, int]) -> Split:
    webp, off = p["webp"], p["offsets"]
    n = len(p["labels"])
    if len(off) != n + 1 or len(p["original_ids"]) != n or len(p["filenames"]) != n or off[-1] != len(webp):
        raise UserError(f"export file {path}: split {split} has inconsistent array lengths")
    images = np.empty((n, *shape), np.uint8)

    def dec(i: int) -> None:
        try:
            im = Image.open(io.BytesIO(webp[off[i]:off[i + 1]].tobytes())).convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError(f"export file {path}: image {i} of split {split} does not decode: {e}") from None
        a = np.asarray(im)
        if a.shape != shape:
            raise UserError(f"export file {path}: image {i} of split {split} has shape {a.shape}, expected {shape}")
        images[i] = a

    for _ in parallel_map(dec, range(n)):
        pass
    return Split(images=images, labels=p["labels"].astype(np.int32), original_ids=p["original_ids"],
                 filenames=p["filenames"])


def load_export(path: Path) -> Dataset:
    """Decode an export file fully into memory (no cache, no TFDS)."""
    meta, parts = _read(path)
    shape = tuple(meta["image_shape"])
    splits = {s: _decode_split(path, s, p, shape) for s, p in parts.items()}  # type: ignore[arg-type]
    return Dataset(name=meta["name"], splits=splits, image_shape=shape, fingerprint=meta["fingerprint"],  # type: ignore[arg-type]
                   skipped={k: int(v) for k, v in meta["skipped"].items()}, build_dir=str(path),
                   _train_mean=np.asarray(meta["train_mean"], np.float32) if "train_mean" in meta else None)


def load_export_as(path: Path, name: str, size: tuple[int, int]) -> Dataset:
    """`load_dataset(name, data_dir=<export file>)`: the export, checked to hold `name` at `size`."""
    t = time.time()
    ds = load_export(path)
    log(f"decoded export {path} in {time.time() - t:.1f}s")
    if ds.name != name:
        raise UserError(f"export file {path} holds the {ds.name!r} data set, not {name!r}; pass --dataset {ds.name}")
    if tuple(ds.image_shape[:2]) != tuple(size):
        h, w = ds.image_shape[:2]
        raise UserError(f"export file {path} has {h}x{w} images, not {size[0]}x{size[1]}; pass --image-size {h} {w}")
    return ds
