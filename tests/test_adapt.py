"""`python -m bccd_jax.adapt`: the draw (reproducible, per class, disjoint from the held-out images), the
class-balanced batches, and the command end to end on one tiny real run (32x40, 2 epochs, 2 seeds) adapted to
the embedded originals' TEST crops laid out as a lab's class folders: a run folder comes out that predict and
evaluate read, evaluated on exactly the rest of the folder; every bad input is one line, exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bccd_jax import CLASS_NAMES, adapt
from bccd_jax.adapt import RECIPE, balanced_batches, draw_shots
from bccd_jax.errors import UserError, run_cli
from conftest import small_run, write_labelled_folder

ROOT = Path(__file__).resolve().parents[1]
SIZE = (32, 40)  # images of at least 32 px per side, as evaluate needs
SHOTS = 2  # the originals' TEST split has 4 monocytes: at most 3 shots


# ----------------------------------------------------------------------------- the draw


def _items(counts=(5, 7, 4, 9)) -> list[tuple[Path, int]]:
    return [(Path(f"lab/{CLASS_NAMES[c]}/{i:02d}.jpg"), c) for c, n in enumerate(counts) for i in range(n)]


def test_a_draw_is_k_per_class_reproducible_and_disjoint_from_the_held_out_images():
    items = _items()
    d = draw_shots(items, 3, seed=5)
    assert [sum(label == c for _, label in d.drawn) for c in range(4)] == [3, 3, 3, 3]
    assert not set(d.drawn) & set(d.held_out) and sorted(d.drawn + d.held_out) == sorted(items)
    shuffled = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    assert draw_shots(shuffled, 3, seed=5) == d  # from each class's sorted list, whatever order the files came in
    assert draw_shots(items, 3, seed=6).drawn != d.drawn
    # numpy default_rng(seed) picks each class in CLASS_NAMES order from the sorted paths
    rng = np.random.default_rng(5)
    expected = []
    for c, n in enumerate((5, 7, 4, 9)):
        files = sorted(p for p, label in items if label == c)
        expected += [(files[i], c) for i in sorted(rng.choice(n, 3, replace=False).tolist())]
    assert d.drawn == expected


def test_a_draw_needs_one_image_more_than_the_shots_in_every_class():
    assert len(draw_shots(_items(), 3, 0).held_out) == 25 - 12  # the monocytes' 4 images: 3 drawn, 1 held out
    with pytest.raises(UserError, match=r"--shots 4 needs at least 5 images in every class .* MONOCYTE has 4"):
        draw_shots(_items(), 4, 0, "lab")
    with pytest.raises(UserError, match="LYMPHOCYTE has 0"):
        draw_shots(_items((5, 0, 4, 9)), 1, 0)
    with pytest.raises(UserError, match="at least 1 image per class"):
        draw_shots(_items(), 0, 0)
    with pytest.raises(UserError, match=">= 0"):
        draw_shots(_items(), 1, -1)


def test_batches_draw_every_class_equally_often_however_unbalanced_the_images():
    labels = np.array([0] * 70 + [1] * 27 + [2] * 3 + [3] * 150)
    plan = balanced_batches(np.random.default_rng(0), labels, 500, 16)
    assert plan.shape == (500, 16) and plan.min() >= 0 and plan.max() < labels.size
    share = np.bincount(labels[plan.ravel()], minlength=4) / plan.size
    assert np.allclose(share, 0.25, atol=0.02), share
    assert len(np.unique(plan[:, :][labels[plan] == 2])) == 3  # every monocyte drawn
    assert (balanced_batches(np.random.default_rng(0), labels, 500, 16) == plan).all()


def test_the_recipe_is_half_bccd_with_flips_only():
    assert RECIPE.bccd_per_batch * 2 == RECIPE.batch_size
    cfg = RECIPE.train_config("none")
    assert cfg.augment.flip and not (cfg.augment.rot90 or cfg.augment.rotate or cfg.augment.colour)
    assert cfg.schedule == "constant" and cfg.learning_rate == RECIPE.learning_rate and cfg.optimizer == "adam"


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env) -> Path:
    return small_run(tmp_path_factory.mktemp("adapt_runs"), env, SIZE)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, env) -> Path:
    """The originals' TEST crops at the run's size as a lab's class folders (plural, lower case), plus Basophil."""
    return write_labelled_folder(tmp_path_factory.mktemp("adapt_lab") / "lab", env, SIZE)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, run_dir, lab, env) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("adapted") / "lab_run"
    r = subprocess.run([sys.executable, "-m", "bccd_jax.adapt", "--run", str(run_dir), "--labelled", str(lab),
                        "--shots", str(SHOTS), "--draw", "3", "--out", str(out), "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return r, out


def _held_out_folder(lab: Path, drawn: dict[str, list[str]], dst: Path) -> Path:
    """`lab` without the drawn images."""
    shutil.copytree(lab, dst)
    for files in drawn.values():
        for f in files:
            (dst / f).unlink()
    return dst


def _run(module: str, *args, env) -> dict:
    r = subprocess.run([sys.executable, "-m", module, *map(str, args), "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_adapt_writes_a_run_that_evaluate_and_predict_read_tested_on_the_images_not_drawn(adapted, run_dir, lab,
                                                                                           env, tmp_path):
    r, out = adapted
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert {"held_out", "zero_shot", "shots", "draw", "wall_s", "drawn", "recipe", "source", "bccd_test"} <= set(result)
    assert result["shots"] == SHOTS and result["draw"] == 3 and result["wall_s"] > 0
    assert result["recipe"]["steps"] == RECIPE.steps and result["recipe"]["learning_rate"] == RECIPE.learning_rate
    assert result["source"]["run"] == run_dir.name and result["source"]["seeds"] == [0, 1]
    # the draw: SHOTS per class, listed under the lab folder, as draw_shots makes it
    drawn = result["drawn"]
    assert set(drawn) == set(CLASS_NAMES) and all(len(v) == SHOTS for v in drawn.values())
    from bccd_jax.evaluate import scan

    expected = draw_shots(scan([str(lab)])[0], SHOTS, 3).drawn
    assert sorted(str(p.relative_to(lab)) for p, _ in expected) == sorted(f for v in drawn.values() for f in v)
    held = result["held_out"]
    assert held["n_images"] == 71 - 4 * SHOTS and result["skipped"] == {"class Basophil": 1}
    assert {"accuracy", "balanced_accuracy", "recall"} <= set(held)
    record = json.loads((out / "adaptation.json").read_text())
    assert record["held_out"] == held and record["drawn"] == drawn and record["shots"] == SHOTS

    # evaluate reads the adapted run, and on the rest of the folder it gives the held-out numbers; the source run
    # gives the zero-shot ones
    rest = _held_out_folder(lab, drawn, tmp_path / "held_out")
    ev = _run("bccd_jax.evaluate", rest, "--run", out, "--out", tmp_path / "ev", env=env)
    assert ev["n_images"] == held["n_images"] and ev["seeds"] == [0, 1]
    assert ev["accuracy"] == pytest.approx(held["accuracy"]) and ev["balanced_accuracy"] == pytest.approx(
        held["balanced_accuracy"])
    zero = _run("bccd_jax.evaluate", rest, "--run", run_dir, "--out", tmp_path / "ev0", env=env)
    assert zero["accuracy"] == pytest.approx(result["zero_shot"]["accuracy"])
    image = next((lab / "monocytes").iterdir())
    pred = _run("bccd_jax.predict", image, "--run", out, env=env)
    assert pred["seeds"] == 2 and pred["predictions"][0]["class"] in CLASS_NAMES


def test_the_adapted_weights_moved_and_the_record_keeps_the_source(adapted, run_dir):
    import jax

    from bccd_jax.run import RunFolder, restore

    r, out = adapted
    assert r.returncode == 0, r.stderr
    source, tuned = restore(run_dir), restore(out)
    assert tuned.variant.name == source.variant.name and tuned.seeds == source.seeds
    # the adapted run predicts over the flips it was fine-tuned on; the source keeps its own test-time averaging
    assert tuned.variant.train.eval_tta == RECIPE.eval_tta == "flips"
    assert source.variant.train.eval_tta == "none"
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                         source.state.params, tuned.state.params))
    assert min(moved) > 0  # every layer is fine-tuned
    folder = RunFolder(out)
    assert folder.read_adaptation()["source"]["variant"] == "adam"
    assert "adapted to lab from 2 images per class" in folder.record().description
    assert not folder.metrics_path.exists()  # the source's training history does not describe these weights
    assert RunFolder(run_dir).read_adaptation() is None


def _error(argv, capsys) -> str:
    assert run_cli(adapt.main, list(map(str, argv))) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert captured.out == ""
    return lines[0]


def test_bad_inputs_are_one_line_errors(run_dir, lab, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # run_cli silences it for the exiting process
    out = tmp_path / "out"

    def args(**kw):
        a = {"run": run_dir, "labelled": lab, "shots": 1, "out": out, **kw}
        return [x for k, v in a.items() for x in (f"--{k}", v)]

    assert "is not a folder" in _error(args(labelled=tmp_path / "missing"), capsys)
    (tmp_path / "a_file.jpg").write_text("")
    assert "is not a folder" in _error(args(labelled=tmp_path / "a_file.jpg"), capsys)
    (tmp_path / "no_classes" / "platelets").mkdir(parents=True)
    assert "no folder named after a class" in _error(args(labelled=tmp_path / "no_classes"), capsys)
    assert "MONOCYTE has 4" in _error(args(shots=4), capsys)
    assert "at least 1 image per class" in _error(args(shots=0), capsys)
    assert "invalid int value" in _error(args(shots="ten"), capsys)
    assert "does not exist" in _error(args(run=tmp_path / "no_run"), capsys)
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    (damaged / "config.json").write_text("{")
    assert "not valid JSON" in _error(args(run=damaged), capsys)
    shutil.rmtree(damaged)
    shutil.copytree(run_dir, damaged)
    shutil.rmtree(next((damaged / "checkpoints" / "adam").iterdir()) / "state")
    assert "damaged" in _error(args(run=damaged), capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert "not an empty folder" in _error(args(out=tmp_path / "full"), capsys)
    assert not out.exists()  # nothing written when an input is wrong


def test_the_few_shot_curve_gathers_every_k_and_draw_and_finishes_a_stopped_curve(run_dir, lab, tmp_path, capsys):
    """experiments.few_shot: one adaptation per (K, draw) into few_shot.json, a second call adds only what is
    missing, and the report section gives per K the mean and range over draws beside zero-shot."""
    from experiments import few_shot

    out, runs = tmp_path / "results" / few_shot.SECTION_DIR, tmp_path / "runs"
    flags = ["--run", str(run_dir), "--labelled", str(lab), "--draws", "2", "--out", str(out), "--runs-dir", str(runs)]
    assert run_cli(lambda a: few_shot.main(a), flags + ["--shots", "1"]) == 0
    first = json.loads((out / few_shot.RESULTS_FILE).read_text())
    assert sorted(first["adaptations"]) == ["K1-draw0", "K1-draw1"]
    assert (runs / "K1-draw1" / "adaptation.json").is_file()
    assert run_cli(lambda a: few_shot.main(a), flags + ["--shots", "1", "2"]) == 0
    second = json.loads((out / few_shot.RESULTS_FILE).read_text())
    assert sorted(second["adaptations"]) == ["K1-draw0", "K1-draw1", "K2-draw0", "K2-draw1"]
    assert second["adaptations"]["K1-draw0"] == first["adaptations"]["K1-draw0"]  # kept, not adapted again
    rows = few_shot.curve(second["adaptations"])
    assert [r["shots"] for r in rows] == [1, 2] and all(r["draws"] == 2 for r in rows)
    bal = [second["adaptations"][f"K2-draw{d}"]["held_out"]["balanced_accuracy"] for d in (0, 1)]
    assert rows[1]["balanced_min"] == min(bal) and rows[1]["balanced_max"] == max(bal)
    section = "\n".join(few_shot.report_section(tmp_path / "results"))
    assert "## Adapting to another lab from a few labelled cells" in section and "| 2 | 2 |" in section
    assert str(tmp_path) not in section  # no path of the machine
    assert f"{RECIPE.steps} steps of adam" in section and "mean probability over the 4 flips" in section
    capsys.readouterr()
    other = tmp_path / "other_lab"
    shutil.copytree(lab, other)
    assert run_cli(lambda a: few_shot.main(a), flags[:2] + ["--labelled", str(other)] + flags[4:]) == 2
    assert "holds the curve of" in capsys.readouterr().err
