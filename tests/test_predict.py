"""`python -m bccd_jax.predict` end to end on one tiny real run (24x32, 2 epochs, 2 seeds, adam).

The run is trained once per module in a subprocess; every error case is a subprocess
that must exit 2 with exactly one stderr line and no traceback. Subprocesses share
the test run's XLA compile cache (BCCD_JAX_COMPILE_CACHE) and a data cache (BCCD_JAX_CACHE).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bccd_jax import CLASS_NAMES
from conftest import small_run, write_labelled_folder

ROOT = Path(__file__).resolve().parents[1]
JPEGS = ROOT / "data" / "BCCD" / "JPEGImages"
XMLS = ROOT / "data" / "BCCD" / "Annotations"
ORIG = JPEGS / "BloodImage_00000.jpg"  # one WBC box, NEUTROPHIL, train split
ORIG_XML = XMLS / "BloodImage_00000.xml"
ORIG2 = JPEGS / "BloodImage_00001.jpg"  # test split
ORIG2_XML = XMLS / "BloodImage_00001.xml"
SIZE = (24, 32)


def predict_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "bccd_jax.predict", *map(str, args)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env) -> Path:
    return small_run(tmp_path_factory.mktemp("predict_runs"), env, SIZE)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Inputs written once: a 320x240 cell image, RGBA/grayscale/odd-size variants, bad files, bad XML."""
    d = tmp_path_factory.mktemp("predict_inputs")
    full = Image.open(ORIG).convert("RGB")
    cell = full.crop((215, 130, 535, 370))  # 320x240 around the WBC, like the augmented set's images
    paths = {"cell": d / "cell_320x240.jpg", "rgba": d / "cell_rgba.png", "gray": d / "cell_gray.png",
             "odd": d / "cell_odd.png", "tiny": d / "tiny.png", "text": d / "notes.jpg",
             "truncated": d / "truncated.jpg"}
    cell.save(paths["cell"], quality=95)
    cell.convert("RGBA").save(paths["rgba"])
    cell.convert("L").save(paths["gray"])
    cell.resize((101, 77)).save(paths["odd"])
    cell.resize((16, 12)).save(paths["tiny"])
    paths["text"].write_text("not an image\n")
    paths["truncated"].write_bytes(ORIG.read_bytes()[:2000])
    xml = ORIG_XML.read_text()
    paths["xml_no_wbc"] = d / "no_wbc.xml"
    paths["xml_no_wbc"].write_text(xml.replace("<name>WBC</name>", "<name>RBC</name>"))
    start = xml.index("<object>")
    end = xml.index("</object>", start) + len("</object>")
    paths["xml_two_wbc"] = d / "two_wbc.xml"
    paths["xml_two_wbc"].write_text(xml[:end] + xml[start:end] + xml[end:])
    paths["xml_bad"] = d / "malformed.xml"
    paths["xml_bad"].write_text(xml[: len(xml) // 2])
    return paths


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory, run_dir) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("broken_runs")
    no_ckpt = d / "no_checkpoints"
    no_ckpt.mkdir()
    shutil.copy(run_dir / "config.json", no_ckpt / "config.json")
    wrong = d / "wrong_shape"
    shutil.copytree(run_dir, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["variants"]["adam"]["model"]["dense_features"] = 64  # the checkpoint has 128
    (wrong / "config.json").write_text(json.dumps(cfg))
    return {"no_ckpt": no_ckpt, "wrong": wrong, "missing": d / "does_not_exist"}


ERROR_CASES = {
    # name: (argv builder, words the message must contain)
    "missing_run": (lambda r, i, b: [i["cell"], "--run", b["missing"]], ["does not exist"]),
    "no_checkpoints": (lambda r, i, b: [i["cell"], "--run", b["no_ckpt"]], ["no checkpoints"]),
    "unknown_variant": (lambda r, i, b: [i["cell"], "--run", r, "--variant", "lion"], ["unknown variant", "adam"]),
    "unknown_seed": (lambda r, i, b: [i["cell"], "--run", r, "--seed", "7"], ["unknown seed 7", "[0, 1]"]),
    "unknown_epoch": (lambda r, i, b: [i["cell"], "--run", r, "--checkpoint", "99"], ["epoch 99", "[2]"]),
    "missing_image": (lambda r, i, b: [i["cell"].parent / "nope.jpg", "--run", r], ["not found"]),
    "directory_image": (lambda r, i, b: [i["cell"].parent, "--run", r], ["not a file"]),
    "non_image": (lambda r, i, b: [i["text"], "--run", r], ["not an image"]),
    "truncated_jpeg": (lambda r, i, b: [i["truncated"], "--run", r, "--xml", ORIG_XML], ["cannot decode"]),
    "tiny_image": (lambda r, i, b: [i["tiny"], "--run", r], ["16x12", "32 px"]),
    "original_without_xml": (lambda r, i, b: [ORIG, "--run", r, "--crop", "none"], ["640x480", "--xml", str(ORIG_XML)]),
    "xml_without_wbc": (lambda r, i, b: [ORIG, "--run", r, "--xml", i["xml_no_wbc"]], ["no WBC box"]),
    "xml_two_wbc": (lambda r, i, b: [ORIG, "--run", r, "--xml", i["xml_two_wbc"]], ["2 WBC boxes"]),
    "xml_malformed": (lambda r, i, b: [ORIG, "--run", r, "--xml", i["xml_bad"]], ["malformed XML"]),
    "xml_missing": (lambda r, i, b: [ORIG, "--run", r, "--xml", i["cell"].parent / "nope.xml"], ["not found"]),
    "xml_count": (lambda r, i, b: [ORIG, ORIG2, "--run", r, "--xml", ORIG_XML], ["2 images"]),
    "wrong_shape_weights": (lambda r, i, b: [i["cell"], "--run", b["wrong"]], ["does not fit", "64", "128"]),
    "no_run_flag": (lambda r, i, b: [i["cell"]], ["--run"]),
}


@pytest.fixture(scope="module")
def error_results(run_dir, images, broken_runs, env) -> dict[str, subprocess.CompletedProcess]:
    """Every error case as its own subprocess, all started at once (they are independent)."""
    procs = {name: subprocess.Popen(predict_cmd(*build(run_dir, images, broken_runs)), cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (build, _) in ERROR_CASES.items()}
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_is_one_line_exit_2(case, error_results):
    r = error_results[case]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    for word in ERROR_CASES[case][1]:
        assert word in lines[0], (word, lines[0])
    assert r.stdout == ""


def test_debug_shows_traceback(run_dir, images, env):
    r = subprocess.run(predict_cmd(images["text"], "--run", run_dir, "--debug"), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" in r.stderr


def _check_prediction(p: dict, num_seeds: int) -> None:
    assert set(p) == {"path", "class", "probabilities", "seeds_agreeing", "cell_status", "cell_center", "cell_box",
                      "cell_crop", "cell_note"}
    assert list(p["probabilities"]) == list(CLASS_NAMES)
    probs = np.array(list(p["probabilities"].values()))
    assert np.all(probs >= 0) and abs(probs.sum() - 1.0) < 1e-6
    assert p["class"] == CLASS_NAMES[int(probs.argmax())]
    assert 1 <= p["seeds_agreeing"] <= num_seeds


def test_json_prediction_on_real_images(run_dir, images, env):
    inputs = [ORIG, ORIG2, images["cell"], images["rgba"], images["gray"], images["odd"]]
    xml_dir = XMLS  # a folder: <stem>.xml is looked up for each image (none for the tmp images)
    r = subprocess.run(predict_cmd(*inputs, "--run", run_dir, "--xml", xml_dir, "--json", "--crop", "none"), cwd=ROOT,
                       env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout)  # exactly one JSON object on stdout
    assert out["variant"] == "adam" and out["seeds"] == 2 and Path(out["run"]) == run_dir
    assert [p["path"] for p in out["predictions"]] == [str(p) for p in inputs]
    for p in out["predictions"]:
        _check_prediction(p, 2)
    assert "variant 'adam'" in r.stderr
    assert f"{images['rgba']}: RGBA image converted to RGB" in r.stderr
    assert f"{images['gray']}: L image converted to RGB" in r.stderr
    assert f"{images['odd']}: 101x77 resized" in r.stderr
    assert f"{images['cell']}:" not in r.stderr  # 320x240: the augmented set's size, no note


def test_single_seed_and_human_output(run_dir, images, env):
    r = subprocess.run(predict_cmd(ORIG, images["cell"], "--run", run_dir, "--xml", ORIG_XML, "--xml", "-",
                                   "--seed", "1", "--variant", "adam", "--checkpoint", "2"),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # "-" is not an XML for the second image: a per-image list must name real files
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run(predict_cmd(images["cell"], images["odd"], "--run", run_dir, "--seed", "1",
                                   "--variant", "adam", "--checkpoint", "2"),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, [images["cell"], images["odd"]]):
        assert line.startswith(str(path)) and "seeds agreeing 1/1" in line
        assert any(c in line for c in CLASS_NAMES)
    assert "seed 1" in r.stderr


def test_preprocessing_matches_data_layer(run_dir, env, monkeypatch):
    """The original's crop is bit-identical to the cached training example; classify() equals the logits path."""
    from bccd_jax.data import load_dataset
    from bccd_jax.images import prepare
    from bccd_jax.metrics import softmax
    from bccd_jax.predict import classify
    from bccd_jax.run import restore
    from bccd_jax.run.build import predict_logits

    monkeypatch.setenv("BCCD_JAX_CACHE", env["BCCD_JAX_CACHE"])
    ds = load_dataset("originals", image_size=SIZE)
    for split, path, xml in (("train", ORIG, ORIG_XML), ("test", ORIG2, ORIG2_XML)):
        ids = list(ds.splits[split].original_ids)
        expected = ds.splits[split].images[ids.index(path.stem)]
        np.testing.assert_array_equal(prepare(str(path), xml, SIZE)[0], expected)

    restored = restore(run_dir)
    assert restored.variant.name == "adam" and restored.seeds == [0, 1] and restored.epoch == 2
    batch = np.asarray(ds.splits["test"].images[:5])
    mean_probs, per_seed = classify(restored, batch)
    assert mean_probs.shape == (5, 4) and per_seed.shape == (2, 5)
    np.testing.assert_allclose(mean_probs.sum(-1), 1.0, atol=1e-9)
    one, _ = classify(restore(run_dir, seed=1), batch)
    logits = predict_logits(restored.model, restored.state, batch)
    np.testing.assert_allclose(one, softmax(logits)[1], atol=1e-6)
    np.testing.assert_allclose(mean_probs, softmax(logits).mean(0), atol=1e-6)


# ----------------------------------------------------------------------------- evaluate


EVAL_SIZE = (32, 40)  # images of at least 32 px per side, like any user's


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, env) -> Path:
    return small_run(tmp_path_factory.mktemp("evaluate_runs"), env, EVAL_SIZE)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory, env) -> Path:
    """The originals' TEST crops at the run's size in CLASS folders, plus a class the model does not know."""
    return write_labelled_folder(tmp_path_factory.mktemp("labelled") / "lab", env, EVAL_SIZE)


def evaluate_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "bccd_jax.evaluate", *map(str, args)]


def test_evaluate_reproduces_the_runs_own_test_accuracy(eval_run, labelled_folder, env, tmp_path):
    """evaluate on the TEST images laid out as class folders gives each seed's accuracy as the run recorded it."""
    recorded = json.loads((eval_run / "metrics.json").read_text())["adam"]["final"]["test"]
    r = subprocess.run(evaluate_cmd(labelled_folder, "--run", eval_run, "--json", "--crop", "none", "--out",
                                    tmp_path / "ev"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_images"] == 71 and out["skipped"] == {"class Basophil": 1}
    assert out["accuracy_per_seed"] == pytest.approx(recorded["acc_per_seed"], abs=1e-12)
    assert out["accuracy"] == pytest.approx(recorded["ensemble_acc"], abs=1e-12)  # seeds averaged like the run's ensemble
    assert sum(map(sum, out["confusion_matrix"])) == 71
    assert out["preparation"] == {"whole 40x32 image resized to 40x32": 71}
    assert (tmp_path / "ev" / "evaluation.json").is_file() and (tmp_path / "ev" / "confusion.png").is_file()
    one = subprocess.run(evaluate_cmd(labelled_folder, "--run", eval_run, "--seed", "1", "--json", "--crop", "none",
                                      "--out", tmp_path / "ev1"), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert json.loads(one.stdout)["accuracy"] == pytest.approx(recorded["acc_per_seed"][1], abs=1e-12)
    human = subprocess.run(evaluate_cmd(labelled_folder, "--run", eval_run, "--crop", "none", "--out",
                                        tmp_path / "ev2"), cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert "balanced accuracy" in human.stdout and "confusion matrix" in human.stdout
    assert "model input: 40x32 RGB, pixels / 255" in human.stderr


def test_evaluate_errors_are_one_line(eval_run, labelled_folder, env, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(labelled_folder, bad)
    (bad / "neutrophils" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    skipped = subprocess.run(evaluate_cmd(bad, "--run", eval_run, "--json", "--out", tmp_path / "e"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["skipped"]["unreadable image"] == 1
    nothing = tmp_path / "nothing" / "platelets"
    nothing.mkdir(parents=True)
    cases = [((bad, "--run", eval_run, "--strict"), "broken.jpg"),
             ((nothing.parent, "--run", eval_run), "no folder named after a class"),
             ((bad, "--run", tmp_path / "no_run"), "does not exist")]
    for argv, needle in cases:
        r = subprocess.run(evaluate_cmd(*argv, "--out", tmp_path / "e2"), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert needle in lines[0]


def test_ship_keeps_one_seed_that_predicts_like_the_run(eval_run, labelled_folder, env, tmp_path):
    """experiments.ship reduces a run to the seed closest to the mean; evaluate on the shipped folder gives
    that seed's recorded TEST accuracy, and nothing in it names the folder it was written to."""
    recorded = json.loads((eval_run / "metrics.json").read_text())["adam"]["final"]["test"]["acc_per_seed"]
    shipped = tmp_path / "model"
    r = subprocess.run([sys.executable, "-m", "experiments.ship", "--run", str(eval_run), "--out", str(shipped)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    seed = json.loads((shipped / "metrics.json").read_text())["adam"]["seeds"]
    assert len(seed) == 1
    assert not [f for f in shipped.rglob("*") if f.is_file() and str(tmp_path).encode() in f.read_bytes()]
    r = subprocess.run(evaluate_cmd(labelled_folder, "--run", shipped, "--json", "--crop", "none", "--out",
                                    tmp_path / "ev"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # float32 storage (no --data-dir to check float16): the same weights, the same predictions
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(recorded[0 if seed == [0] else 1], abs=1e-9)
