"""Crop "cell", the default preprocessing of images without an annotation, in predict and evaluate.

Synthetic images (a purple disc on a pink background, two discs, a blank image) and two embedded
BCCD originals go through bccd_jax.images.prepare; predict and evaluate are run on the shipped model
(results/model, 60x80) for the reported fields.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bccd_jax.data.sources import parse_voc_xml, single_wbc_box
from bccd_jax.errors import UserError
from bccd_jax.images import cell_fields, prepare
from bccd_jax.run import RunFolder

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "results" / "model"
JPEGS = ROOT / "data" / "BCCD" / "JPEGImages"
XMLS = ROOT / "data" / "BCCD" / "Annotations"
ORIGINALS = ("BloodImage_00000", "BloodImage_00001")  # one WBC box each
HW = (60, 80)  # the shipped model's input


def synthetic(discs, shape=(160, 200)) -> np.ndarray:
    """Pink background (with a little noise) and purple discs (cx, cy, r) where nuclei would be."""
    h, w = shape
    a = np.empty((h, w, 3), np.float32)
    a[:] = (235, 190, 205)
    a += np.random.default_rng(0).normal(0, 3, a.shape)
    yy, xx = np.mgrid[:h, :w]
    for cx, cy, r in discs:
        a[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (95, 45, 140)
    return np.clip(a, 0, 255).astype(np.uint8)


def wbc_center(stem: str) -> tuple[float, float]:
    box, _ = single_wbc_box(parse_voc_xml(XMLS / f"{stem}.xml")[1])
    return (box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cell_inputs")
    paths = {"disc": d / "disc.png", "two": d / "two_discs.png", "blank": d / "blank.png",
             "centred": d / "centred_cell.png"}
    Image.fromarray(synthetic([(120, 70, 18)])).save(paths["disc"])
    Image.fromarray(synthetic([(50, 50, 15), (150, 110, 15)])).save(paths["two"])
    Image.fromarray(np.full((120, 160, 3), 230, np.uint8)).save(paths["blank"])
    cx, cy = wbc_center(ORIGINALS[0])
    Image.open(JPEGS / f"{ORIGINALS[0]}.jpg").crop((round(cx) - 150, round(cy) - 150, round(cx) + 150,
                                                    round(cy) + 150)).save(paths["centred"])
    return paths


def test_one_disc_is_cropped_at_the_disc(inputs):
    p = prepare(inputs["disc"], None, HW)
    f = cell_fields(p)
    assert p.array.shape == (*HW, 3) and p.array.dtype == np.uint8
    assert f["cell_status"] == "one" and f["cell_note"] == "one nucleus: cropped at the cell"
    assert f["cell_center"] == pytest.approx([120.5, 70.5], abs=1.5)
    x0, y0, x1, y1 = f["cell_crop"]
    assert abs((x0 + x1) / 2 - 120.5) <= 1.5 and abs((y0 + y1) / 2 - 70.5) <= 1.5  # centred on the cell
    assert (x1 - x0) * HW[0] == pytest.approx((y1 - y0) * HW[1], rel=0.03)  # at the run's aspect
    assert x1 - x0 < 200  # at the cell's scale, not the image's
    assert "the located cell" in p.how


def test_two_discs_are_several_and_blank_falls_back(inputs):
    f = cell_fields(prepare(inputs["two"], None, HW))
    assert f["cell_status"] == "several" and "2 candidates" in f["cell_note"] and "largest" in f["cell_note"]
    blank = prepare(inputs["blank"], None, HW)
    f = cell_fields(blank)
    assert f["cell_status"] == "none" and "fell back to the image centre" in f["cell_note"]
    assert f["cell_center"] == [80.0, 60.0]
    assert "image centre" in blank.how


def test_other_crops_report_no_cell_and_bad_inputs_are_user_errors(inputs):
    assert set(cell_fields(prepare(inputs["disc"], None, HW, "none")).values()) == {None}
    assert prepare(inputs["disc"], None, HW, "center").cell is None
    with pytest.raises(UserError, match="unknown crop"):
        prepare(inputs["disc"], None, HW, "nucleus")
    with pytest.raises(UserError, match="--xml"):
        prepare(JPEGS / f"{ORIGINALS[0]}.jpg", None, HW, "none")


@pytest.mark.parametrize("stem", ORIGINALS)
def test_bccd_field_without_xml_is_cropped_at_its_wbc(stem):
    notes: list[str] = []
    p = prepare(JPEGS / f"{stem}.jpg", None, HW, notes=notes)
    f = cell_fields(p)
    cx, cy = wbc_center(stem)
    assert f["cell_status"] == "one"
    assert f["cell_center"] == pytest.approx([cx, cy], abs=20)
    x0, y0, x1, y1 = f["cell_crop"]
    assert x0 < cx < x1 and y0 < cy < y1 and x1 - x0 < 640
    assert len(notes) == 1 and "no --xml" in notes[0]
    with_xml = prepare(JPEGS / f"{stem}.jpg", XMLS / f"{stem}.xml", HW)  # the annotation path is unchanged
    assert with_xml.cell is None and "WBC box" in with_xml.how


def test_predict_and_evaluate_prepare_alike(inputs):
    """The arrays predict classifies are the arrays evaluate classifies (one function, bccd_jax.images.prepare)."""
    from bccd_jax import evaluate, predict

    paths = [inputs["disc"], inputs["two"], inputs["blank"], inputs["centred"], JPEGS / f"{ORIGINALS[1]}.jpg"]
    from_predict = predict.prepare_all([str(p) for p in paths], [None] * len(paths), HW, "cell")

    class Recorder:  # stands in for a restored run: records the batches evaluate classifies
        image_size = HW
        batches: list[np.ndarray] = []

        def logits(self, images):
            self.batches.append(np.asarray(images))
            return np.zeros((1, len(images), 4), np.float32)

    rec = Recorder()
    _, labels, kept, skipped, _ = evaluate.evaluate(rec, [(p, 0) for p in paths], "cell", strict=True)
    np.testing.assert_array_equal(np.concatenate(rec.batches), np.stack([p.array for p in from_predict]))
    assert [k["cell_status"] for k in kept] == [p.cell.status for p in from_predict]
    assert [k["cell_crop"] for k in kept] == [cell_fields(p)["cell_crop"] for p in from_predict]
    assert not skipped and labels.tolist() == [0] * len(paths)


def test_the_default_crop_is_the_runs_own():
    """A run trained on cell crops frames foreign images around their cell, one trained on whole images resizes
    them whole; --crop overrides either."""
    from bccd_jax.images import run_crop

    assert run_crop(None, "cell") == "cell" and run_crop(None, "frame") == "none"
    assert run_crop("center", "cell") == "center" and run_crop("cell", "frame") == "cell"


def test_predict_reports_the_localiser(inputs, env):
    """With crop "cell", --json carries each image's status, centre, box, crop and note; the shipped model,
    trained on cell crops, crops by default (its run's crop), and `--crop none` resizes whole and reports no cell."""
    orig = JPEGS / f"{ORIGINALS[0]}.jpg"

    def status(*flags):
        r = subprocess.run([sys.executable, "-m", "bccd_jax.predict", str(inputs["centred"]), "--run", str(MODEL),
                            "--json", *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["predictions"][0]["cell_status"]

    assert RunFolder(MODEL).record().data.crop == "cell"
    assert status() == "one" and status("--crop", "none") is None
    args = [inputs["centred"], orig, inputs["blank"], "--run", MODEL, "--crop", "cell"]
    r = subprocess.run([sys.executable, "-m", "bccd_jax.predict", *map(str, args), "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    centred, field, blank = json.loads(r.stdout)["predictions"]
    assert centred["cell_status"] == "one" and centred["cell_center"] == pytest.approx([150, 150], abs=20)
    cx, cy = wbc_center(ORIGINALS[0])
    assert field["cell_status"] == "one" and field["cell_center"] == pytest.approx([cx, cy], abs=20)
    assert field["cell_box"][0] < cx < field["cell_box"][2]
    assert blank["cell_status"] == "none" and "image centre" in blank["cell_note"]
    assert "no --xml" in r.stderr
    human = subprocess.run([sys.executable, "-m", "bccd_jax.predict", *map(str, args)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    lines = human.stdout.strip().splitlines()
    assert human.returncode == 0 and len(lines) == 3, human.stderr
    assert "cell one at" in lines[0] and "cell none at" in lines[2] and "fell back" in lines[2]


def test_evaluate_counts_the_statuses(inputs, env, tmp_path):
    root = tmp_path / "lab"
    classes = {"disc": "lymphocytes", "two": "monocyte", "blank": "NEUTROPHIL", "centred": "neutrophils"}
    for name, cls in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / inputs[name].name).write_bytes(inputs[name].read_bytes())
    r = subprocess.run([sys.executable, "-m", "bccd_jax.evaluate", str(root), "--run", str(MODEL), "--crop", "cell",
                        "--out", str(tmp_path / "ev")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "localiser: one 2, several 1, none 1; accuracy on status one (2 images): " in r.stdout
    out = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert out["localiser"] == {"one": 2, "several": 1, "none": 1} and out["n_status_one"] == 2
    assert Counter(i["cell_status"] for i in out["images"]) == Counter(out["localiser"])
    one = [i for i in out["images"] if i["cell_status"] == "one"]
    assert out["accuracy_status_one"] == pytest.approx(np.mean([i["class"] == i["predicted"] for i in one]))
    assert all({"path", "class", "predicted", "cell_center", "cell_box", "cell_crop", "cell_note"} <= set(i)
               for i in out["images"])
