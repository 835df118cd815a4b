"""Tests of the data layer: parsing, skip rules, the split, builds, the export round trip, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bccd_jax import CLASS_NAMES
from bccd_jax.data import load_dataset, load_export, pixels, sources
from bccd_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "data"


# --------------------------------------------------------------------------- helpers


def _write_layout(root: Path, per_class: int = 2, size: tuple[int, int] = (48, 64)) -> Path:
    """A tiny Kaggle-style dataset2-master/images layout with distinct solid-ish JPEGs."""
    rng = np.random.default_rng(0)
    for split in ("TRAIN", "TEST", "TEST_SIMPLE"):
        for ci, cls in enumerate(CLASS_NAMES):
            d = root / "images" / split / cls
            d.mkdir(parents=True)
            for k in range(per_class):
                a = np.full((*size, 3), 40 * ci + 10, np.uint8) + rng.integers(0, 5, (*size, 3), dtype=np.uint8)
                Image.fromarray(a).save(d / f"_{k}_{ci}{k}.jpeg", quality=95)
    return root


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bccd_jax.data", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=120)


def _assert_one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert r.stdout == ""


# --------------------------------------------------------------------------- parsing


def test_parse_real_xml() -> None:
    size, boxes = sources.parse_voc_xml(EMBEDDED / "BCCD" / "Annotations" / "BloodImage_00000.xml")
    assert size == (640, 480)
    wbc = [b for b in boxes if b.name == "WBC"]
    assert len(wbc) == 1 and (wbc[0].xmin, wbc[0].ymin, wbc[0].xmax, wbc[0].ymax) == (260, 177, 491, 376)
    assert sum(b.name == "RBC" for b in boxes) > 10


@pytest.mark.parametrize("text, what", [
    ("<annotation><object><name>WBC</name>", "malformed XML"),
    ("<notvoc/>", "expected <annotation>"),
    ("<annotation><object><name>WBC</name><bndbox><xmin>1</xmin></bndbox></object></annotation>", "lacks"),
    ("<annotation><object><name>WBC</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax>"
     "</bndbox></object></annotation>", "non-numeric"),
])
def test_parse_malformed_xml(tmp_path: Path, text: str, what: str) -> None:
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(UserError, match=what) as e:
        sources.parse_voc_xml(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_label_cells() -> None:
    assert sources.parse_label_cell("NEUTROPHIL, EOSINOPHIL") == ["NEUTROPHIL", "EOSINOPHIL"]
    assert sources.parse_label_cell("EOSINOPHIL,EOSINOPHIL") == ["EOSINOPHIL", "EOSINOPHIL"]
    assert sources.parse_label_cell(" ") == []


def test_labels_csv_columns(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("id,Cat\n0,NEUTROPHIL\n")
    with pytest.raises(UserError, match="lacks the columns Image and Category"):
        sources.read_labels_csv(p)
    p.write_text(",Image,Category\r\n,0,NEUTROPHIL\r\n,1,WEIRDCELL\r\n")
    with pytest.raises(UserError, match="unknown cell type"):
        sources.read_labels_csv(p)


def test_skip_rules_and_split_on_embedded_data() -> None:
    items, skipped = sources.select_originals(sources.find_originals())
    assert len(items) >= 320
    assert skipped["multi_label"] == 15 and skipped["basophil"] == 3 and skipped["empty_label"] == 1
    assert skipped["no_wbc_box"] > 0 and skipped["several_wbc_boxes"] > 0
    train = {it.original_id for it in items if it.split == "train"}
    test = {it.original_id for it in items if it.split == "test"}
    assert train and test and not (train & test)
    # the published split covers the 71 test originals (all usable)
    assert len(test) == 71
    ids = [it.original_id for it in items]
    assert len(ids) == len(set(ids))


def test_skip_rules_synthetic(tmp_path: Path) -> None:
    """Each rule on a hand-made root: one kept image and one of each skip reason."""
    ann, img = tmp_path / "BCCD" / "Annotations", tmp_path / "BCCD" / "JPEGImages"
    ann.mkdir(parents=True)
    img.mkdir(parents=True)
    box = "<object><name>{n}</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>"
    cases = {0: ("NEUTROPHIL", 1), 1: ("NEUTROPHIL, EOSINOPHIL", 1), 2: ("BASOPHIL", 1), 3: ("", 1),
             4: ("MONOCYTE", 0), 5: ("MONOCYTE", 2)}
    for i, (_, nwbc) in cases.items():
        oid = f"BloodImage_{i:05d}"
        objs = "".join(box.format(n="WBC") for _ in range(nwbc)) + box.format(n="RBC")
        (ann / f"{oid}.xml").write_text(f"<annotation>{objs}</annotation>")
        Image.new("RGB", (64, 48)).save(img / f"{oid}.jpg")
    Image.new("RGB", (64, 48)).save(img / "BloodImage_00006.jpg")  # no xml
    rows = [f',{i},"{lab}"' for i, (lab, _) in cases.items()] + [",6,LYMPHOCYTE", ",7,LYMPHOCYTE"]  # 7: no image
    (tmp_path / "labels.csv").write_text(",Image,Category\n" + "\n".join(rows) + "\n")
    (tmp_path / "original_split.csv").write_text("original_id,label,split\nBloodImage_00000,NEUTROPHIL,test\n")
    items, skipped = sources.select_originals(sources.find_originals(tmp_path))
    assert [it.original_id for it in items] == ["BloodImage_00000"] and items[0].split == "test"
    want = {"multi_label": 1, "basophil": 1, "empty_label": 1, "no_wbc_box": 1, "several_wbc_boxes": 1,
            "no_xml": 1, "no_image": 1}
    assert {k: v for k, v in skipped.items() if v} == want
    # a label that disagrees with the split table is an error, never a quiet relabel
    (tmp_path / "original_split.csv").write_text("original_id,label,split\nBloodImage_00000,MONOCYTE,test\n")
    with pytest.raises(UserError, match="BloodImage_00000"):
        sources.select_originals(sources.find_originals(tmp_path))


def test_crop_rect_keeps_aspect_and_handles_borders() -> None:
    b = sources.Box("WBC", 600, 440, 640, 480)  # in the corner
    x0, y0, x1, y1 = pixels.crop_rect(b, 640, 480, (120, 160), 0.25)
    assert x1 == 640 and y1 == 480 and abs((x1 - x0) / (y1 - y0) - 160 / 120) < 0.05
    big = sources.Box("WBC", 0, 0, 640, 480)  # larger than the image once widened: centred, padded
    x0, y0, x1, y1 = pixels.crop_rect(big, 640, 480, (120, 160), 0.25)
    assert x0 < 0 and y0 < 0 and x1 > 640 and y1 > 480


def test_crop_rect_centred_keeps_the_box_centre_at_the_border() -> None:
    b = sources.Box("WBC", 600, 440, 640, 480)
    x0, y0, x1, y1 = pixels.crop_rect(b, 640, 480, (120, 160), 0.25, centred=True)
    assert (x0 + x1) / 2 == pytest.approx(620, abs=1) and (y0 + y1) / 2 == pytest.approx(460, abs=1)
    assert x1 > 640 and y1 > 480  # padded, not shifted
    assert pixels.crop_rect(b, 640, 480, (120, 160), 0.25)[2:] == (640, 480)  # the originals' rule is unchanged


def test_split_file_disjoint() -> None:
    split = sources.read_split_csv(EMBEDDED / "original_split.csv")
    assert len(split) == 351
    assert {s for _, s in split.values()} == {"train", "test"}


# --------------------------------------------------------------------------- builds


def test_build_originals_small(tmp_path: Path) -> None:
    ds = load_dataset("originals", image_size=(24, 32), cache_dir=str(tmp_path))
    assert ds.image_shape == (24, 32, 3) and set(ds.splits) == {"train", "test"}
    n = sum(len(s.labels) for s in ds.splits.values())
    assert n >= 320
    tr, te = ds.splits["train"], ds.splits["test"]
    assert tr.images.dtype == np.uint8 and tr.images.shape[1:] == (24, 32, 3) and tr.labels.dtype == np.int32
    assert not set(tr.original_ids) & set(te.original_ids)
    assert all(ds.class_counts(s)[c] > 0 for s in ds.splits for c in CLASS_NAMES)
    assert ds.skipped["multi_label"] == 15
    m = ds.train_mean()
    assert m.shape == (3,) and m.dtype == np.float32 and 50 < m.mean() < 250
    np.testing.assert_allclose(m, tr.images.reshape(-1, 3).mean(0), atol=1e-3)
    again = load_dataset("originals", image_size=(24, 32), cache_dir=str(tmp_path))
    assert again.fingerprint == ds.fingerprint and again.build_dir == ds.build_dir
    other = load_dataset("originals", image_size=(16, 16), cache_dir=str(tmp_path))
    assert other.fingerprint != ds.fingerprint


def test_augmented_build_and_export_round_trip(tmp_path: Path) -> None:
    root = _write_layout(tmp_path / "dataset2-master")
    trace = tmp_path / "trace.csv"
    trace.write_text("path,split,class,original_id\nx/images/TEST/MONOCYTE/_1_21.jpeg,TEST,MONOCYTE,BloodImage_00042\n")
    ds = load_dataset("augmented", data_dir=str(root), image_size=(24, 32), cache_dir=str(tmp_path / "c"),
                      trace_csv=str(trace))
    assert set(ds.splits) == {"train", "test", "test_simple"}
    for s in ds.splits:
        assert ds.class_counts(s) == {c: 2 for c in CLASS_NAMES}
    te = ds.splits["test"]
    k = list(te.filenames).index("MONOCYTE/_1_21.jpeg")
    assert te.original_ids[k] == "BloodImage_00042" and te.labels[k] == CLASS_NAMES.index("MONOCYTE")
    assert (te.original_ids != "").sum() == 1
    # the images/ folder itself is accepted too, and gives the same build
    same = load_dataset("augmented", data_dir=str(root / "images"), image_size=(24, 32),
                        cache_dir=str(tmp_path / "c"), trace_csv=str(trace))
    assert same.fingerprint == ds.fingerprint

    out = tmp_path / "set.npz"
    r = _run_cli("export", "--dataset", "augmented", "--data-dir", str(root), "--image-size", "24", "32",
                 "--cache-dir", str(tmp_path / "c"), "--trace-csv", str(trace), "--out", str(out))
    assert r.returncode == 0, r.stderr
    back = load_export(out)
    assert back.fingerprint == ds.fingerprint and back.name == "augmented" and back.image_shape == (24, 32, 3)
    for s, sp in ds.splits.items():
        b = back.splits[s]
        np.testing.assert_array_equal(b.labels, sp.labels)
        np.testing.assert_array_equal(b.filenames, sp.filenames)
        np.testing.assert_array_equal(b.original_ids, sp.original_ids)
        assert np.abs(b.images.astype(int) - sp.images.astype(int)).mean() < 4  # lossy q90
    via = load_dataset("augmented", data_dir=str(out), image_size=(24, 32), cache_dir=str(tmp_path / "c2"))
    np.testing.assert_array_equal(via.splits["train"].images, back.splits["train"].images)
    r = _run_cli("info", "--dataset", "augmented", "--data-dir", str(out), "--image-size", "24", "32",
                 "--cache-dir", str(tmp_path / "c2"))
    info = json.loads(r.stdout)
    assert info["splits"]["test_simple"]["total"] == 8 and info["fingerprint"] == ds.fingerprint
    with pytest.raises(UserError, match="holds the 'augmented' data set"):
        load_dataset("originals", data_dir=str(out), image_size=(24, 32), cache_dir=str(tmp_path / "c2"))


def test_augmented_bad_inputs(tmp_path: Path) -> None:
    root = _write_layout(tmp_path / "d2")
    bad = root / "images" / "TRAIN" / "EOSINOPHIL" / "_0_00.jpeg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with pytest.raises(UserError, match="cannot decode image") as e:
        load_dataset("augmented", data_dir=str(root), image_size=(24, 32), cache_dir=str(tmp_path / "c"))
    assert str(bad) in str(e.value)

    root2 = _write_layout(tmp_path / "d3")
    (root2 / "images" / "TEST" / "BASOPHIL").mkdir()
    with pytest.raises(UserError, match="unknown class folder"):
        load_dataset("augmented", data_dir=str(root2), image_size=(24, 32), cache_dir=str(tmp_path / "c"))

    with pytest.raises(UserError, match="wrong layout"):
        load_dataset("augmented", data_dir=str(tmp_path), image_size=(24, 32), cache_dir=str(tmp_path / "c"))


# --------------------------------------------------------------------------- CLI errors


def test_cli_errors(tmp_path: Path) -> None:
    _assert_one_line_error(_run_cli("info", "--dataset", "augmented", "--data-dir", str(tmp_path / "nope"),
                                    "--cache-dir", str(tmp_path)), "does not exist", str(tmp_path / "nope"))
    root = _write_layout(tmp_path / "d")
    (root / "images" / "TRAIN" / "MONOCYTE" / "_9_9.jpeg").write_bytes(b"not a jpeg at all")
    _assert_one_line_error(_run_cli("info", "--dataset", "augmented", "--data-dir", str(root), "--image-size", "24", "32",
                                    "--cache-dir", str(tmp_path / "c")), "_9_9.jpeg")
    _assert_one_line_error(_run_cli("info", "--dataset", "nope"), "invalid choice")
    _assert_one_line_error(_run_cli("info", "--cache-dir", str(tmp_path), env={"BCCD_JAX_DATA": str(tmp_path / "x")}),
                           "BCCD_JAX_DATA")
    # a malformed XML in an originals root
    orig = tmp_path / "orig"
    (orig / "BCCD").mkdir(parents=True)
    import shutil

    shutil.copytree(EMBEDDED / "BCCD" / "JPEGImages", orig / "BCCD" / "JPEGImages")
    shutil.copytree(EMBEDDED / "BCCD" / "Annotations", orig / "BCCD" / "Annotations")
    shutil.copy(EMBEDDED / "labels.csv", orig / "labels.csv")
    shutil.copy(EMBEDDED / "original_split.csv", orig / "original_split.csv")
    (orig / "BCCD" / "Annotations" / "BloodImage_00001.xml").write_text("<annotation><object>")
    _assert_one_line_error(_run_cli("info", "--data-dir", str(orig), "--image-size", "16", "16",
                                    "--cache-dir", str(tmp_path / "c")), "malformed XML", "BloodImage_00001.xml")
    r = _run_cli("info", "--data-dir", str(orig), "--image-size", "16", "16", "--cache-dir", str(tmp_path / "c"), "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_no_tensorflow_after_build(tmp_path: Path) -> None:
    code = ("import sys; from bccd_jax.data import load_dataset; "
            f"d = load_dataset('originals', image_size=(16, 16), cache_dir={str(tmp_path)!r}); "
            "print('tensorflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.stdout.strip() == "False", r.stderr


# --------------------------------------------------------------------------- full data (cheap)


def test_full_augmented_layout_counts(full_data_dir: Path) -> None:
    """Only lists files (no decoding): the counts of the published set, and trace coverage."""
    images = sources.find_images_dir(full_data_dir)
    trace = sources.read_trace_csv(sources.resolve_trace(images, None))  # type: ignore[arg-type]
    splits = sources.scan_augmented(images, trace)
    counts = {s: [sum(it.label == i for it in v) for i in range(4)] for s, v in splits.items()}
    assert counts == {"train": [2497, 2483, 2478, 2499], "test": [623, 620, 620, 624], "test_simple": [13, 6, 4, 48]}
    assert all(it.original_id for v in splits.values() for it in v)
    # the embedded trace copy gives the same ids as the one beside the data
    emb = sources.read_trace_csv(EMBEDDED / "dataset2_source_trace.csv.gz")
    assert emb == trace
