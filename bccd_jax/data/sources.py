"""Raw sources of the BCCD white-cell data: where they lie, their CSV tables and VOC XML, which images count.

Everything here is plain Python and lxml (no TFDS, no TensorFlow) so it can be tested
and reused by the TFDS builder, the exporter and the loader alike. Every problem with the input
is raised as a one-line `UserError` that names the offending path, because a silently wrong
label or count would poison every experiment downstream.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bccd_jax import CLASS_NAMES
from bccd_jax.errors import UserError

DATA_ENV = "BCCD_JAX_DATA"
"""Environment variable that overrides where the embedded `data/` folder is."""

AUGMENTED_SPLITS = {"TRAIN": "train", "TEST": "test", "TEST_SIMPLE": "test_simple"}
"""Kaggle split folder -> lowercase split name used everywhere in the API."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""Image files read here and by `evaluate`: whatever Pillow decodes (bccd_jax.data.pixels) under the usual names."""
TRACE_NAME = "dataset2_source_trace.csv"
OTHER_LABELS = ("BASOPHIL",)
"""White-cell labels that occur in labels.csv but are not one of the 4 classes (skipped, counted)."""

BUILDER_VERSION = "1.0.0"
DEFAULT_IMAGE_SIZE = (120, 160)
DEFAULT_MARGIN = 0.25
"""Crop margin around the WBC box, as a fraction of the box size per side, for `originals`."""

def check_image_size(image_size) -> tuple[int, int]:
    """(H, W) as two ints in 8..2048, else a one-line UserError."""
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UserError(f"image size {image_size!r} must be two integers H W") from None
    if not (8 <= h <= 2048 and 8 <= w <= 2048):
        raise UserError(f"image size {h}x{w} is out of range (8..2048 per side)")
    return h, w


# --------------------------------------------------------------------------- paths


def repo_data_dir() -> Path:
    """The embedded `data/` folder: $BCCD_JAX_DATA, else `<repo>/data` next to the package (editable install)."""
    env = os.environ.get(DATA_ENV)
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "data"
    if not (path / "BCCD" / "Annotations").is_dir() or not (path / "labels.csv").is_file():
        how = f"${DATA_ENV}={env}" if env else "the repository's data/ folder"
        raise UserError(
            f"embedded BCCD data not found at {path} ({how}): expected BCCD/Annotations, BCCD/JPEGImages and "
            f"labels.csv there; use an editable install of the repository or set {DATA_ENV} to that folder"
        )
    return path


@dataclass(frozen=True)
class OriginalsPaths:
    """Where the files behind the `originals` config are (embedded layout or the shared-data layout)."""

    root: Path
    annotations: Path
    images: Path
    labels_csv: Path
    split_csv: Path


def find_originals(root: str | os.PathLike[str] | None = None) -> OriginalsPaths:
    """Locate annotations, images, labels.csv and original_split.csv under `root` (default: embedded data/).

    Accepts the embedded layout (`BCCD/`, `labels.csv`, `original_split.csv`) and the shared-data layout
    (`BCCD/`, `blood-cells/dataset-master/labels.csv`, `derived/original_split.csv`).
    """
    base = repo_data_dir() if root is None else Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"originals data dir {base} does not exist")

    def first(*cands: str) -> Path:
        for c in cands:
            if (base / c).exists():
                return base / c
        raise UserError(f"originals data dir {base} has no {cands[0]} (looked for: {', '.join(cands)})")

    return OriginalsPaths(
        root=base,
        annotations=first("BCCD/Annotations", "Annotations"),
        images=first("BCCD/JPEGImages", "JPEGImages"),
        labels_csv=first("labels.csv", "blood-cells/dataset-master/labels.csv"),
        split_csv=first("original_split.csv", "derived/original_split.csv"),
    )


def find_images_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Resolve the Kaggle `images/` folder from `.../dataset2-master` or the `images/` folder itself."""
    p = Path(data_dir).expanduser()
    if not p.exists():
        raise UserError(f"data dir {p} does not exist (expected .../dataset2-master or its images/ folder)")
    if not p.is_dir():
        raise UserError(f"data dir {p} is not a directory (expected .../dataset2-master or its images/ folder)")
    if (p / "images").is_dir():
        return p / "images"
    if any((p / s).is_dir() for s in AUGMENTED_SPLITS):
        return p
    raise UserError(
        f"data dir {p} has the wrong layout: expected images/{{TRAIN,TEST,TEST_SIMPLE}}/{{CLASS}}/*.jpeg "
        f"(or TRAIN/TEST/TEST_SIMPLE directly)"
    )


def find_trace_csv(images_dir: Path) -> Path | None:
    """A trace table beside the data: in images/.., or a `derived/` folder up to 3 levels above images/."""
    for parent in [images_dir, *list(images_dir.parents)[:4]]:
        for cand in (parent / TRACE_NAME, parent / "derived" / TRACE_NAME):
            if cand.is_file():
                return cand
    return None


# --------------------------------------------------------------------------- labels, splits, XML


def parse_label_cell(cell: str) -> list[str]:
    """Split a labels.csv Category cell ("NEUTROPHIL, EOSINOPHIL", "EOSINOPHIL,EOSINOPHIL", "") into upper-case tokens."""
    return [t for t in re.split(r"[\s,;/|+]+", cell.strip().upper()) if t]


def read_labels_csv(path: Path) -> dict[str, list[str]]:
    """labels.csv (columns `,Image,Category`) -> {"BloodImage_00012": [tokens]}; bad columns/ids are errors."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read labels file {path}: {e}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise UserError(f"labels file {path} is empty (expected columns ',Image,Category')")
    header = [h.strip() for h in rows[0]]
    if "Image" not in header or "Category" not in header:
        raise UserError(f"labels file {path} lacks the columns Image and Category (header: {','.join(header)!r})")
    ii, ci = header.index("Image"), header.index("Category")
    out: dict[str, list[str]] = {}
    known = set(CLASS_NAMES) | set(OTHER_LABELS)
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(ii, ci):
            raise UserError(f"labels file {path} line {n}: expected {len(header)} columns, got {len(row)}")
        raw_id = row[ii].strip()
        if not raw_id.isdigit():
            raise UserError(f"labels file {path} line {n}: image id {raw_id!r} is not a number")
        tokens = parse_label_cell(row[ci])
        unknown = [t for t in tokens if t not in known]
        if unknown:
            raise UserError(f"labels file {path} line {n}: unknown cell type {unknown[0]!r}")
        oid = f"BloodImage_{int(raw_id):05d}"
        if oid in out:
            raise UserError(f"labels file {path} line {n}: image id {raw_id} appears twice")
        out[oid] = tokens
    return out


def read_split_csv(path: Path) -> dict[str, tuple[str, str]]:
    """original_split.csv -> {original_id: (label, "train"|"test")}."""
    rows = read_dict_csv(path, ("original_id", "label", "split"))
    out: dict[str, tuple[str, str]] = {}
    for n, r in enumerate(rows, start=2):
        if r["split"] not in ("train", "test"):
            raise UserError(f"split file {path} line {n}: split {r['split']!r} is not train/test")
        out[r["original_id"]] = (r["label"].strip().upper(), r["split"])
    return out


def read_trace_csv(path: Path) -> dict[tuple[str, str, str], str]:
    """dataset2_source_trace.csv(.gz) -> {(SPLIT, CLASS, filename): original_id}."""
    rows = read_dict_csv(path, ("path", "split", "class", "original_id"))
    return {(r["split"].upper(), r["class"].upper(), r["path"].replace("\\", "/").rsplit("/", 1)[-1]): r["original_id"]
            for r in rows}


def read_dict_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)} (header: {','.join(reader.fieldnames or [])!r})")
    return list(reader)


@dataclass(frozen=True)
class Box:
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


def parse_voc_xml(path: Path) -> tuple[tuple[int, int] | None, list[Box]]:
    """Parse a VOC annotation -> ((width, height) or None, boxes). Malformed XML or boxes are UserErrors."""
    from lxml import etree

    try:
        root = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    except (OSError, etree.XMLSyntaxError) as e:
        raise UserError(f"malformed XML {path}: {e}") from None
    if root.tag != "annotation":
        raise UserError(f"malformed XML {path}: root element is <{root.tag}>, expected <annotation>")
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w and h:
        try:
            size = (int(float(w)), int(float(h)))
        except ValueError:
            raise UserError(f"malformed XML {path}: size {w!r}x{h!r} is not numeric") from None
    boxes: list[Box] = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        vals = [obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
        if not name or any(v is None for v in vals):
            raise UserError(f"malformed XML {path}: object {i} lacks a name or bndbox xmin/ymin/xmax/ymax")
        try:
            x0, y0, x1, y1 = (float(v) for v in vals)  # type: ignore[arg-type]
        except ValueError:
            raise UserError(f"malformed XML {path}: object {i} has a non-numeric bndbox {vals}") from None
        if x1 < x0 or y1 < y0:  # zero-size boxes occur in the real BCCD XML (RBCs); inverted ones do not
            raise UserError(f"malformed XML {path}: object {i} has an inverted bndbox {vals}")
        boxes.append(Box(name, x0, y0, x1, y1))
    return size, boxes


# --------------------------------------------------------------------------- originals selection


@dataclass(frozen=True)
class OriginalItem:
    """One usable original: its id, image path, WBC box, label index and side of the published split."""

    original_id: str
    image: Path
    box: Box
    label: int
    split: str


MIN_BOX_SIDE = 4
"""A WBC box narrower or lower than this many pixels is not a cell that can be cropped."""


def single_wbc_box(boxes: Sequence[Box]) -> tuple[Box | None, str | None]:
    """The one WBC box of an annotation, or (None, why not): "no_wbc_box", "several_wbc_boxes" or
    "tiny_wbc_box". The data set skips such originals; predict refuses them."""
    wbc = [b for b in boxes if b.name.upper() == "WBC"]
    if not wbc:
        return None, "no_wbc_box"
    if len(wbc) > 1:
        return None, "several_wbc_boxes"
    if wbc[0].xmax - wbc[0].xmin < MIN_BOX_SIDE or wbc[0].ymax - wbc[0].ymin < MIN_BOX_SIDE:
        return None, "tiny_wbc_box"
    return wbc[0], None


SKIP_REASONS = ("no_image", "no_xml", "no_label", "empty_label", "multi_label", "basophil",
                "no_wbc_box", "several_wbc_boxes", "tiny_wbc_box", "not_in_split")


def select_originals(paths: OriginalsPaths) -> tuple[list[OriginalItem], dict[str, int]]:
    """Apply the skip rules to every id seen in labels.csv, JPEGImages or Annotations.

    Kept: an image with an XML that has exactly one WBC box and exactly one of the 4 labels. The
    published split decides train/test, so no original is on both sides. A label that disagrees
    with original_split.csv is an error (never a silently wrong label).
    """
    labels = read_labels_csv(paths.labels_csv)
    split = read_split_csv(paths.split_csv)
    images = {p.stem: p for p in paths.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")}
    xmls = {p.stem: p for p in paths.annotations.iterdir() if p.suffix.lower() == ".xml"}
    skipped = {r: 0 for r in SKIP_REASONS}
    items: list[OriginalItem] = []
    for oid in sorted(set(labels) | set(images) | set(xmls)):
        tokens = labels.get(oid)
        if oid not in images:
            reason = "no_image"
        elif oid not in xmls:
            reason = "no_xml"
        elif tokens is None:
            reason = "no_label"
        elif not tokens:
            reason = "empty_label"
        elif len(tokens) > 1:
            reason = "multi_label"
        elif tokens[0] not in CLASS_NAMES:
            reason = "basophil"  # the only other label read_labels_csv lets through
        else:
            box, reason = single_wbc_box(parse_voc_xml(xmls[oid])[1])
            if box is not None and oid not in split:
                reason = "not_in_split"
            elif box is not None:
                if split[oid][0] != tokens[0]:
                    raise UserError(
                        f"label of {oid} is {tokens[0]} in {paths.labels_csv} but {split[oid][0]} in {paths.split_csv}")
                items.append(OriginalItem(oid, images[oid], box, CLASS_NAMES.index(tokens[0]), split[oid][1]))
                continue
        skipped[reason] = skipped.get(reason, 0) + 1
    return items, skipped


# --------------------------------------------------------------------------- augmented layout


@dataclass(frozen=True)
class AugmentedItem:
    path: Path
    split: str          # lowercase split name
    label: int
    original_id: str    # "" when unknown


def scan_augmented(images_dir: Path, trace: dict[tuple[str, str, str], str] | None) -> dict[str, list[AugmentedItem]]:
    """List images/{TRAIN,TEST,TEST_SIMPLE}/{CLASS}/*; any unexpected folder or file is an error."""
    out: dict[str, list[AugmentedItem]] = {}
    for entry in sorted(images_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.name not in AUGMENTED_SPLITS:
            raise UserError(f"unexpected entry {entry} in {images_dir}: expected only the folders TRAIN, TEST, TEST_SIMPLE")
    for folder, split in AUGMENTED_SPLITS.items():
        sdir = images_dir / folder
        if not sdir.is_dir():
            raise UserError(f"data dir {images_dir} has the wrong layout: missing split folder {folder}/")
        for entry in sorted(sdir.iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir() or entry.name not in CLASS_NAMES:
                raise UserError(f"unknown class folder {entry} (expected one of {', '.join(CLASS_NAMES)})")
        items: list[AugmentedItem] = []
        for label, cls in enumerate(CLASS_NAMES):
            cdir = sdir / cls
            if not cdir.is_dir():
                raise UserError(f"data dir {images_dir} has the wrong layout: missing class folder {folder}/{cls}/")
            for f in sorted(cdir.iterdir()):
                if f.name.startswith("."):
                    continue
                if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                    raise UserError(f"unexpected file {f}: expected only {'/'.join(IMAGE_SUFFIXES)} images")
                oid = trace.get((folder, cls, f.name), "") if trace else ""
                items.append(AugmentedItem(f, split, label, oid))
        if not items:
            raise UserError(f"split folder {sdir} has no images")
        out[split] = items
    return out


# --------------------------------------------------------------------------- trace table


def resolve_trace(images_dir: Path, trace_csv: str | os.PathLike[str] | None) -> Path | None:
    """The trace table to use: the one given, else one beside the data, else the embedded gzip copy."""
    if trace_csv is not None:
        p = Path(trace_csv).expanduser()
        if not p.is_file():
            raise UserError(f"trace table {p} does not exist")
        return p
    found = find_trace_csv(images_dir)
    if found is not None:
        return found
    try:
        embedded = repo_data_dir() / (TRACE_NAME + ".gz")
    except UserError:
        return None
    return embedded if embedded.is_file() else None
