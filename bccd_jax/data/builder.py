"""TFDS builder for the BCCD white cells (configs `originals` and `augmented`), TensorFlow-free.

Only `tfds.features.Tensor`, `Text` and `ClassLabel` are used and the files are written as
`array_record`, so building and reading back (`as_data_source()`) never imports TensorFlow.
Shuffling is disabled: records are stored in the (sorted) generation order, so a build is the
same sequence of examples on every machine. TFDS keeps a split in memory while writing it and
needs TensorFlow to spill a split over its 1000 MiB buffer, so a size whose largest split would
exceed that is refused (the augmented training split reaches it near 180x240).
The build settings that are not part of a config (image size, source folder, trace table, crop
margin, crop kind) are constructor arguments; `bccd_jax.data.load_dataset` puts each distinct setting in its
own data_dir, so two settings never share a TFDS folder.

Standalone use::

    b = BccdWbc(config="augmented", data_dir=..., image_size=(120, 160))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=".../dataset2-master"))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from bccd_jax import CLASS_NAMES
from bccd_jax.data import pixels, sources
from bccd_jax.errors import UserError

from bccd_jax.data.sources import DEFAULT_IMAGE_SIZE, DEFAULT_MARGIN, resolve_trace


class BccdWbc(tfds.core.GeneratorBasedBuilder):
    """White-blood-cell images labelled with one of 4 subtypes (EOS/LYM/MON/NEU)."""

    VERSION = tfds.core.Version(sources.BUILDER_VERSION)
    RELEASE_NOTES = {"1.0.0": "First release: originals (WBC crops of BCCD) and augmented (Kaggle dataset2)."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name="originals",
            description="BCCD originals (embedded in data/), cropped around the single WBC box; published split.",
        ),
        tfds.core.BuilderConfig(
            name="augmented",
            description="Kaggle blood-cells dataset2-master images/{TRAIN,TEST,TEST_SIMPLE}/{CLASS}/*.jpeg, resized.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "originals"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "For `augmented`, point manual_dir (or source_dir=) at .../blood-cells/dataset2-master or its images/ folder "
        "(Kaggle paultimothymooney/blood-cells). `originals` needs nothing: it reads the repository's data/ folder."
    )

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> Any:
        """This module's path. TFDS's own lookup needs the `importlib_resources` backport; avoid that dependency."""
        from etils import epath

        return epath.Path(__file__)

    def __init__(
        self,
        *,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        source_dir: str | os.PathLike[str] | None = None,
        trace_csv: str | os.PathLike[str] | None = None,
        margin: float = DEFAULT_MARGIN,
        workers: int | None = None,
        crop: str = "frame",
        **kwargs: Any,
    ):
        self.image_size = sources.check_image_size(image_size)
        self.source_dir = source_dir
        self.trace_csv = trace_csv
        self.margin = float(margin)
        self.workers = workers
        if crop not in ("frame", "cell"):
            raise UserError(f"unknown crop {crop!r} (expected frame or cell)")
        self.crop = crop
        self.localiser_counts: dict[str, dict[str, int]] = {}
        """crop="cell": per split, how often the localiser found one nucleus, several, or none."""
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        h, w = self.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                # BYTES: one raw blob per image; the default encoding serializes 57,600 ints in Python (150x slower).
                "image": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                "original_id": tfds.features.Text(doc='Source BloodImage id, "" when unknown.'),
                "filename": tfds.features.Text(doc="Source file name (relative to its split/class folder)."),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://github.com/Shenggan/BCCD_Dataset",
            metadata=tfds.core.MetadataDict(),
            license="MIT (BCCD); see data/README.md for the Kaggle dataset2 provenance",
        )

    # ------------------------------------------------------------------ splits

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[str, dict]]]:
        if self.builder_config.name == "originals":
            paths = sources.find_originals(self.source_dir)
            items, skipped = sources.select_originals(paths)
            self.info.metadata["skipped"] = skipped
            by_split = {s: [it for it in items if it.split == s] for s in ("train", "test")}
            return {s: self._generate_examples(v, s) for s, v in by_split.items()}
        src = self.source_dir
        if src is None:
            try:
                src = dl_manager.manual_dir
            except AssertionError:
                src = None
            if src is None or not Path(src).exists():
                raise UserError("the augmented config needs a data dir: pass --data-dir .../blood-cells/dataset2-master")
        images_dir = sources.find_images_dir(src)
        trace_path = resolve_trace(images_dir, self.trace_csv)
        trace = sources.read_trace_csv(trace_path) if trace_path else None
        splits = sources.scan_augmented(images_dir, trace)
        self.info.metadata["skipped"] = {}
        self.info.metadata["trace_csv"] = str(trace_path) if trace_path else ""
        return {s: self._generate_examples(v, s) for s, v in splits.items()}

    def _generate_examples(self, items: list[Any], split: str) -> Iterator[tuple[str, dict]]:
        """Decode/crop in a thread pool (Pillow releases the GIL) and yield (unique key, example)."""
        from tensorflow_datasets.core import shuffle

        h, w = self.image_size
        if len(items) * h * w * 3 > shuffle.MAX_MEM_BUFFER_SIZE:
            raise UserError(f"image size {h}x{w} makes the {split} split {len(items) * h * w * 3 / 2**20:.0f} MiB; TFDS "
                            f"writes a split over {shuffle.MAX_MEM_BUFFER_SIZE / 2**20:.0f} MiB through TensorFlow, "
                            "which this project does not install: choose a smaller --image-size")
        if self.crop == "cell":
            yield from self._generate_cells(items, split)
        elif self.builder_config.name == "originals":
            yield from self._generate_originals(items)
        else:
            yield from self._generate_augmented(items)

    def _generate_originals(self, items: list[sources.OriginalItem]) -> Iterator[tuple[str, dict]]:
        def crop(it: sources.OriginalItem) -> np.ndarray:
            return pixels.load_crop(it.image, it.box, self.image_size, self.margin)

        for it, img in zip(items, pixels.parallel_map(crop, items, self.workers)):
            yield it.original_id, {"image": img, "label": it.label, "original_id": it.original_id,
                                   "filename": it.image.name}

    def _generate_augmented(self, items: list[sources.AugmentedItem]) -> Iterator[tuple[str, dict]]:
        def load(it: sources.AugmentedItem) -> np.ndarray:
            return pixels.load_resized(it.path, self.image_size)

        for it, img in zip(items, pixels.parallel_map(load, items, self.workers)):
            cls = CLASS_NAMES[it.label]
            yield f"{cls}/{it.path.name}", {"image": img, "label": it.label, "original_id": it.original_id,
                                            "filename": f"{cls}/{it.path.name}"}

    def _generate_cells(self, items: list[Any], split: str) -> Iterator[tuple[str, dict]]:
        """crop="cell": each image decoded whole (no WBC box) and cropped around the cell the localiser finds."""
        from bccd_jax.data import log
        from bccd_jax.data.localize import STATUSES, crop_cell, locate_cell

        def crop(path: Path) -> tuple[np.ndarray, str]:
            rgb = np.asarray(pixels.open_rgb(path, None), dtype=np.uint8)
            loc = locate_cell(rgb)
            return crop_cell(rgb, self.image_size, loc), loc.status

        originals = self.builder_config.name == "originals"
        counts = dict.fromkeys(STATUSES, 0)
        paths = [it.image if originals else it.path for it in items]
        for it, (img, status) in zip(items, pixels.parallel_map(crop, paths, self.workers)):
            counts[status] += 1
            if originals:
                yield it.original_id, {"image": img, "label": it.label, "original_id": it.original_id,
                                       "filename": it.image.name}
            else:
                name = f"{CLASS_NAMES[it.label]}/{it.path.name}"
                yield name, {"image": img, "label": it.label, "original_id": it.original_id, "filename": name}
        self.localiser_counts[split] = counts
        log(f"localiser on {split.upper()}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
