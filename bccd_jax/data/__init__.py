"""Load the BCCD white-cell data sets as NumPy arrays, built once through TFDS and cached.

`load_dataset("originals")` crops the embedded BCCD originals around their WBC box;
`load_dataset("augmented", data_dir=".../dataset2-master")` reads the Kaggle augmented set;
`load_dataset(..., data_dir="set.npz")` reads a compact export (see `bccd_jax.data.export`).

The first call builds the TFDS `array_record` files (bccd_jax.data.builder, written in the
sorted generation order); every call reads them back through TFDS's own data source
(`builder.as_data_source()`), 1.5 s for the augmented training split at 60x80 on 2 cores. A
build is keyed by the sha256 fingerprint of the source files and the build settings, so changed
sources or settings give a new build. An index keyed by the files' (name, size, mtime) avoids
re-hashing 100 MB of JPEGs on every load.

`crop` chooses what each image shows: "frame" (the default) resizes an augmented image whole and
crops an original around its annotated WBC box; "cell" decodes each image whole and crops it
around the white cell that `bccd_jax.data.localize.locate_cell` finds, at the cell's own scale
(`crop_cell`), the same crop any other image gets at predict time. A cell build records per split
how often the localiser found one nucleus, several, or none (`Dataset.localiser`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bccd_jax import CLASS_NAMES
from bccd_jax.data import hashing, sources
from bccd_jax.errors import UserError
from bccd_jax.files import write_atomic

__all__ = ["Split", "Dataset", "load_dataset", "load_export", "default_cache_dir", "DATASET_NAMES", "SPLITS", "CROPS"]

DATASET_NAMES = ("originals", "augmented")
CROPS = ("frame", "cell")
"""frame: the whole augmented image / the original's WBC box; cell: around the located cell (bccd_jax.data.localize)."""
SPLITS = {"originals": ("train", "test"), "augmented": ("train", "test", "test_simple")}
CACHE_ENV = "BCCD_JAX_CACHE"
BUILD_FORMAT = 1
"""Bump when the builder's output (the examples, their order or preprocessing) changes: part of the fingerprint."""
CACHE_LAYOUT = 2
"""Bump when only the on-disk cache layout changes (2: TFDS files read back through TFDS): part of the folder name."""


@dataclass(frozen=True)
class Split:
    """One split as arrays (images may be a read-only memory map)."""

    images: np.ndarray        # uint8 (N, H, W, 3)
    labels: np.ndarray        # int32 (N,)
    original_ids: np.ndarray  # str array (N,), "" where unknown
    filenames: np.ndarray     # str array (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A built data set: its splits, shape, source fingerprint and the per-reason skip counts."""

    name: str                          # "originals" | "augmented"
    splits: dict[str, Split]
    image_shape: tuple[int, int, int]
    fingerprint: str                   # sha256 over the sorted source files' hashes (+ build settings)
    skipped: dict[str, int]
    build_dir: str
    _train_mean: np.ndarray | None = field(default=None, repr=False, compare=False)
    crop: str = "frame"                # "frame" | "cell" (see CROPS)
    localiser: dict[str, dict[str, int]] = field(default_factory=dict)  # cell crop: {split: {status: count}}

    def train_mean(self) -> np.ndarray:
        """float32 (3,): per-channel mean of the train images on the 0..255 scale (cached at build time)."""
        if self._train_mean is not None:
            return np.asarray(self._train_mean, dtype=np.float32)
        return _channel_mean(self.splits["train"].images)

    def class_counts(self, split: str) -> dict[str, int]:
        """{class name: count} for one split, all 4 classes present (0 when absent)."""
        if split not in self.splits:
            raise UserError(f"split {split!r} not in data set {self.name} (has: {', '.join(self.splits)})")
        counts = np.bincount(self.splits[split].labels, minlength=len(CLASS_NAMES))
        return {c: int(n) for c, n in zip(CLASS_NAMES, counts)}


def _channel_mean(images: np.ndarray) -> np.ndarray:
    total = np.zeros(3, np.float64)
    n = 0
    for i in range(0, len(images), 1024):
        chunk = np.asarray(images[i:i + 1024])
        total += chunk.reshape(-1, 3).sum(axis=0, dtype=np.float64)
        n += chunk.shape[0] * chunk.shape[1] * chunk.shape[2]
    return (total / max(n, 1)).astype(np.float32)


def default_cache_dir() -> Path:
    """$BCCD_JAX_CACHE, else ~/.cache/bccd_jax."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bccd_jax"


def log(msg: str) -> None:
    """Progress goes to stderr so CLIs can keep stdout for their one JSON object."""
    print(f"[bccd_jax.data] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- public entry points


def load_dataset(
    name: str = "originals",
    data_dir: str | None = None,
    image_size: tuple[int, int] = (120, 160),
    cache_dir: str | None = None,
    trace_csv: str | None = None,
    crop: str = "frame",
) -> Dataset:
    """Build (once) and load a data set.

    name: "originals" or "augmented". data_dir: for originals an alternative root with the embedded
    (or shared-data) layout, default the embedded data/; for augmented the dataset2-master folder or
    its images/ folder (required); for either, a compact export file (.npz) loads that instead.
    image_size: (H, W). trace_csv: the dataset2 source-trace table (default: beside the data, else
    the embedded copy). crop: "frame" or "cell" (see the module docstring).
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown data set {name!r} (expected one of {', '.join(DATASET_NAMES)})")
    if crop not in CROPS:
        raise UserError(f"unknown crop {crop!r} (expected one of {', '.join(CROPS)})")
    size = sources.check_image_size(image_size)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if data_dir is not None and Path(data_dir).expanduser().is_file():
        from bccd_jax.data.export import load_export_as

        if crop != "frame":
            raise UserError(f"crop={crop!r} needs the source images; an export file holds frame-cropped images only")
        return load_export_as(Path(data_dir).expanduser(), name, size)
    if name == "augmented" and data_dir is None:
        raise UserError("the augmented data set needs --data-dir .../blood-cells/dataset2-master (or its images/ folder)")

    files, settings = _sources_and_settings(name, data_dir, size, trace_csv)
    if crop != "frame":  # frame builds keep the fingerprints they had before crops existed
        settings["crop"] = crop
    try:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "index").mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create cache dir {cache}: {e}") from None
    key = hashing.stat_key(files, settings)
    index_file = cache / "index" / f"{key}.json"
    fp = None
    if index_file.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            fp = json.loads(index_file.read_text())["fingerprint"]
    if fp is None:
        t = time.time()
        fp = hashing.fingerprint(files, settings)
        log(f"hashed {len(files)} source files in {time.time() - t:.1f}s")
    label = name if crop == "frame" else f"{name}-{crop}"
    build_dir = cache / f"{label}-{size[0]}x{size[1]}-{fp[:16]}-v{CACHE_LAYOUT}"
    if not (build_dir / "meta.json").is_file():
        _build(name, data_dir, size, trace_csv, fp, settings, build_dir, crop)
    write_atomic(index_file, json.dumps({"fingerprint": fp, "build_dir": build_dir.name}))
    return read_build(build_dir)


def load_export(path: str | os.PathLike[str]) -> Dataset:
    """Decode a compact export file (WebP images + labels + ids) into a Dataset, without TFDS."""
    from bccd_jax.data.export import load_export as _load

    return _load(Path(path).expanduser())


# --------------------------------------------------------------------------- build + cache


def _sources_and_settings(name: str, data_dir: str | None, size: tuple[int, int],
                          trace_csv: str | None) -> tuple[list[hashing.SourceFile], dict[str, Any]]:
    """The files a build depends on (named relative to their folder) and the settings that shape it."""
    settings: dict[str, Any] = {"name": name, "image_size": list(size), "format": BUILD_FORMAT,
                                "builder_version": sources.BUILDER_VERSION}
    if name == "originals":
        p = sources.find_originals(data_dir)
        settings["margin"] = sources.DEFAULT_MARGIN
        files = [hashing.source_file("labels.csv", p.labels_csv), hashing.source_file("original_split.csv", p.split_csv)]
        files += hashing.scan_files(p.annotations, "Annotations/", lambda n: n.lower().endswith(".xml"))
        files += hashing.scan_files(p.images, "JPEGImages/", lambda n: n.lower().endswith((".jpg", ".jpeg")))
    else:
        assert data_dir is not None
        images_dir = sources.find_images_dir(data_dir)
        files = hashing.scan_files(images_dir, "images/")
        trace = sources.resolve_trace(images_dir, trace_csv)
        if trace is not None:
            files.append(hashing.source_file("trace/" + trace.name, trace))
    return files, settings


def _build(name: str, data_dir: str | None, size: tuple[int, int], trace_csv: str | None, fp: str,
           settings: dict[str, Any], build_dir: Path, crop: str = "frame") -> None:
    """Run the TFDS builder into a temporary folder, then rename it into place."""
    import tensorflow_datasets as tfds

    from bccd_jax.data.builder import BccdWbc

    tmp = build_dir.parent / f".tmp-{build_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    t0 = time.time()
    log(f"building {name} at {size[0]}x{size[1]} ({crop} crop) into {build_dir} ...")
    try:
        tfds.disable_progress_bar()
        builder = BccdWbc(config=name, data_dir=str(tmp / "tfds"), file_format="array_record",
                          image_size=size, source_dir=data_dir, trace_csv=trace_csv, crop=crop)
        dl_config = tfds.download.DownloadConfig(
            manual_dir=data_dir if name == "augmented" else None, try_download_gcs=False)
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare(download_config=dl_config)
        tfds_dir = Path(builder.data_dir).relative_to(tmp)
        train = _read_split(builder.as_data_source()["train"])
        meta: dict[str, Any] = {"name": name, "image_shape": [size[0], size[1], 3], "fingerprint": fp,
                                "settings": settings, "splits": {s: builder.info.splits[s].num_examples
                                                                 for s in SPLITS[name]},
                                "skipped": dict(builder.info.metadata.get("skipped", {})),
                                "trace_csv": Path(builder.info.metadata.get("trace_csv", "")).name,
                                "train_mean": _channel_mean(train.images).tolist(), "tfds_dir": str(tfds_dir)}
        if crop != "frame":
            meta["crop"] = crop
            meta["localiser"] = {s: dict(c) for s, c in builder.localiser_counts.items()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        log(f"built in {time.time() - t0:.1f}s")
        try:
            os.replace(tmp, build_dir)
        except OSError:
            if not (build_dir / "meta.json").is_file():  # a stale partial build: replace it
                shutil.rmtree(build_dir, ignore_errors=True)
                os.replace(tmp, build_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_split(source) -> Split:
    """All records of one TFDS data source as arrays, in the order they were written."""
    records = source.__getitems__(range(len(source)))
    return Split(images=np.stack([r["image"] for r in records]).astype(np.uint8, copy=False),
                 labels=np.asarray([r["label"] for r in records], np.int32),
                 original_ids=np.asarray([_text(r["original_id"]) for r in records], dtype=str),
                 filenames=np.asarray([_text(r["filename"]) for r in records], dtype=str))


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def read_build(build_dir: Path) -> Dataset:
    """A finished build read back through TFDS's data source (array_record; no TensorFlow)."""
    import tensorflow_datasets as tfds

    try:
        meta = json.loads((build_dir / "meta.json").read_text())
        source = tfds.builder_from_directory(str(build_dir / meta["tfds_dir"])).as_data_source()
        splits = {split: _read_split(source[split]) for split in meta["splits"]}
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cached build {build_dir} is unreadable ({e}); delete it to rebuild") from None
    return Dataset(name=meta["name"], splits=splits, image_shape=tuple(meta["image_shape"]),  # type: ignore[arg-type]
                   fingerprint=meta["fingerprint"], skipped={k: int(v) for k, v in meta["skipped"].items()},
                   build_dir=str(build_dir), _train_mean=np.asarray(meta["train_mean"], np.float32),
                   crop=meta.get("crop", "frame"),
                   localiser={s: {k: int(v) for k, v in c.items()} for s, c in meta.get("localiser", {}).items()})
