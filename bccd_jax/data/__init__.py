"""Load the BCCD white-cell data sets as NumPy arrays, built once through TFDS and cached.

`load_dataset("originals")` crops the embedded BCCD originals around their WBC box;
`load_dataset("augmented", data_dir=".../dataset2-master")` reads the Kaggle augmented set;
`load_dataset(..., data_dir="set.npz")` reads a compact export (see `bccd_jax.data.export`).

The first call builds the TFDS `array_record` files and, next to them, one flat `.npy` per split
array; later calls memory-map those `.npy` files (reading 9957 records one by one from the TFDS
data source would be far slower). A build is keyed by the sha256 fingerprint of the source files
and the build settings, so changed sources or settings give a new build. An index keyed by the
files' (name, size, mtime) avoids re-hashing 100 MB of JPEGs on every load.
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
from typing import Any, Iterator

import numpy as np

from bccd_jax import CLASS_NAMES
from bccd_jax.data import sources
from bccd_jax.errors import UserError

__all__ = ["Split", "Dataset", "load_dataset", "load_export", "default_cache_dir", "DATASET_NAMES", "SPLITS"]

DATASET_NAMES = ("originals", "augmented")
SPLITS = {"originals": ("train", "test"), "augmented": ("train", "test", "test_simple")}
CACHE_ENV = "BCCD_JAX_CACHE"
BUILD_FORMAT = 1
"""Bump when the on-disk cache layout or the builder's output changes, to force rebuilds."""


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
) -> Dataset:
    """Build (once) and load a data set.

    name: "originals" or "augmented". data_dir: for originals an alternative root with the embedded
    (or shared-data) layout, default the embedded data/; for augmented the dataset2-master folder or
    its images/ folder (required); for either, a compact export file (.npz) loads that instead.
    image_size: (H, W). trace_csv: the dataset2 source-trace table (default: beside the data, else
    the embedded copy).
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown data set {name!r} (expected one of {', '.join(DATASET_NAMES)})")
    size = _check_size(image_size)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if data_dir is not None and Path(data_dir).expanduser().is_file():
        from bccd_jax.data.export import load_export_cached

        return load_export_cached(Path(data_dir).expanduser(), name, size, cache)
    if name == "augmented" and data_dir is None:
        raise UserError("the augmented data set needs --data-dir .../blood-cells/dataset2-master (or its images/ folder)")

    files, settings = _sources_and_settings(name, data_dir, size, trace_csv)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "index").mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create cache dir {cache}: {e}") from None
    key = sources.stat_key(files, settings)
    index_file = cache / "index" / f"{key}.json"
    fp = None
    if index_file.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            fp = json.loads(index_file.read_text())["fingerprint"]
    if fp is None:
        t = time.time()
        fp = sources.fingerprint(files, settings)
        log(f"hashed {len(files)} source files in {time.time() - t:.1f}s")
    build_dir = cache / f"{name}-{size[0]}x{size[1]}-{fp[:16]}"
    if not (build_dir / "meta.json").is_file():
        _build(name, data_dir, size, trace_csv, fp, settings, build_dir)
    _atomic_write(index_file, json.dumps({"fingerprint": fp, "build_dir": build_dir.name}))
    return read_build(build_dir)


def load_export(path: str | os.PathLike[str]) -> Dataset:
    """Decode a compact export file (WebP images + labels + ids) into a Dataset, without TFDS."""
    from bccd_jax.data.export import load_export as _load

    return _load(Path(path).expanduser())


# --------------------------------------------------------------------------- build + cache


def _check_size(image_size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UserError(f"image size {image_size!r} must be two integers H W") from None
    if not (8 <= h <= 2048 and 8 <= w <= 2048):
        raise UserError(f"image size {h}x{w} is out of range (8..2048 per side)")
    return h, w


def _sources_and_settings(name: str, data_dir: str | None, size: tuple[int, int],
                          trace_csv: str | None) -> tuple[list[sources.SourceFile], dict[str, Any]]:
    """The files a build depends on (named relative to their folder) and the settings that shape it.

    Deliberately TFDS-free: a cached load must not pay for importing TFDS.
    """
    settings: dict[str, Any] = {"name": name, "image_size": list(size), "format": BUILD_FORMAT,
                                "builder_version": sources.BUILDER_VERSION}
    if name == "originals":
        p = sources.find_originals(data_dir)
        settings["margin"] = sources.DEFAULT_MARGIN
        files = [sources.source_file("labels.csv", p.labels_csv), sources.source_file("original_split.csv", p.split_csv)]
        files += sources.scan_files(p.annotations, "Annotations/", lambda n: n.lower().endswith(".xml"))
        files += sources.scan_files(p.images, "JPEGImages/", lambda n: n.lower().endswith((".jpg", ".jpeg")))
    else:
        assert data_dir is not None
        images_dir = sources.find_images_dir(data_dir)
        files = sources.scan_files(images_dir, "images/")
        trace = sources.resolve_trace(images_dir, trace_csv)
        if trace is not None:
            files.append(sources.source_file("trace/" + trace.name, trace))
    return files, settings


def _build(name: str, data_dir: str | None, size: tuple[int, int], trace_csv: str | None, fp: str,
           settings: dict[str, Any], build_dir: Path) -> None:
    """Run the TFDS builder into a temporary folder (writing flat .npy arrays alongside), then rename it into place."""
    import tensorflow_datasets as tfds

    from bccd_jax.data.builder import BccdWbc

    tmp = build_dir.parent / f".tmp-{build_dir.name}-{uuid.uuid4().hex[:8]}"
    (tmp / "arrays").mkdir(parents=True)
    t0 = time.time()
    log(f"building {name} at {size[0]}x{size[1]} into {build_dir} ...")
    try:
        tfds.disable_progress_bar()
        sink = _NpySink(tmp / "arrays")
        builder = BccdWbc(config=name, data_dir=str(tmp / "tfds"), file_format="array_record",
                          image_size=size, source_dir=data_dir, trace_csv=trace_csv, array_sink=sink)
        dl_config = tfds.download.DownloadConfig(
            manual_dir=data_dir if name == "augmented" else None, try_download_gcs=False)
        with contextlib.redirect_stdout(sys.stderr), _no_shuffler_spill():
            builder.download_and_prepare(download_config=dl_config)
        missing = [s for s in SPLITS[name] if s not in sink.counts]
        if missing:
            raise UserError(f"build of {name} produced no split(s) {', '.join(missing)}")
        imgs = np.load(tmp / "arrays" / "train_images.npy", mmap_mode="r")
        meta: dict[str, Any] = {"name": name, "image_shape": [size[0], size[1], 3], "fingerprint": fp,
                                "settings": settings, "splits": {s: sink.counts[s] for s in SPLITS[name]},
                                "skipped": dict(builder.info.metadata.get("skipped", {})),
                                "trace_csv": builder.info.metadata.get("trace_csv", ""),
                                "train_mean": _channel_mean(imgs).tolist(),
                                "tfds_dir": str(build_dir / "tfds")}
        del imgs
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


@contextlib.contextmanager
def _no_shuffler_spill() -> Iterator[None]:
    """Keep TFDS's example shuffler in memory: past 1 GB it spills to temp files through tf.io.gfile,
    i.e. it would import TensorFlow. A split is then held in RAM once (573 MB for augmented train at 120x160)."""
    from tensorflow_datasets.core import shuffle

    old = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = 1 << 62
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = old


class _NpySink:
    """Writes each split's examples to flat .npy files (images through a memory-mapped writer)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.counts: dict[str, int] = {}
        self._open: dict[str, tuple[np.memmap, np.ndarray, list[str], list[str]]] = {}

    def open(self, split: str, n: int, image_size: tuple[int, int]) -> None:
        images = np.lib.format.open_memmap(self.folder / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, image_size[0], image_size[1], 3))
        self._open[split] = (images, np.empty(n, np.int32), [], [])

    def put(self, split: str, index: int, example: dict[str, Any]) -> None:
        images, labels, ids, names = self._open[split]
        images[index] = example["image"]
        labels[index] = example["label"]
        ids.append(example["original_id"])
        names.append(example["filename"])

    def close(self, split: str) -> None:
        images, labels, ids, names = self._open.pop(split)
        if len(ids) != len(labels):
            raise UserError(f"internal: split {split} expected {len(labels)} examples, generated {len(ids)}")
        images.flush()
        del images
        np.save(self.folder / f"{split}_labels.npy", labels)
        np.save(self.folder / f"{split}_original_ids.npy", np.array(ids, dtype=str))
        np.save(self.folder / f"{split}_filenames.npy", np.array(names, dtype=str))
        self.counts[split] = len(labels)


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_build(build_dir: Path) -> Dataset:
    """Memory-map a finished build (meta.json + arrays/*.npy); fast, no TFDS."""
    try:
        meta = json.loads((build_dir / "meta.json").read_text())
        splits = {}
        for split in meta["splits"]:
            a = build_dir / "arrays"
            splits[split] = Split(
                images=np.load(a / f"{split}_images.npy", mmap_mode="r"),
                labels=np.load(a / f"{split}_labels.npy"),
                original_ids=np.load(a / f"{split}_original_ids.npy"),
                filenames=np.load(a / f"{split}_filenames.npy"),
            )
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cached build {build_dir} is unreadable ({e}); delete it to rebuild") from None
    return Dataset(name=meta["name"], splits=splits, image_shape=tuple(meta["image_shape"]),  # type: ignore[arg-type]
                   fingerprint=meta["fingerprint"], skipped={k: int(v) for k, v in meta["skipped"].items()},
                   build_dir=str(build_dir),
                   _train_mean=np.asarray(meta["train_mean"], np.float32) if "train_mean" in meta else None)
