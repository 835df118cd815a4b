"""experiments.other_labs: the selection rule on hand-made numbers, the command end to end on one tiny real run
(32x40, 2 epochs, 2 seeds: never eligible) against the embedded originals' TEST crops laid out as class
folders, its one-line errors, and the report's section rendered from what it wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bccd_jax.errors import run_cli
from bccd_jax.metrics import balanced_accuracy
from conftest import small_run, write_labelled_folder
from experiments import other_labs
from experiments.other_labs import MIN_CLEAN_TEST, MIN_SEEDS, Standing, choose, ineligible_because
from experiments.report import write_report

ROOT = Path(__file__).resolve().parents[1]
SIZE = (32, 40)  # images of at least 32 px per side, as evaluate needs
ALSO_CLASSES = ("eosinophils", "neutrophils")  # the second folder holds two classes only


# ----------------------------------------------------------------------------- the rule


def test_the_rule_needs_seeds_clean_test_and_the_lab_suite_then_takes_the_best_worse_of_dev_and_lab():
    few_seeds = Standing("few_seeds", MIN_SEEDS - 1, 0.95, 0.90, 0.9)  # best on dev, but too few seeds
    weak = Standing("weak", 8, MIN_CLEAN_TEST - 0.001, 0.89, 0.9)
    no_lab = Standing("no_lab", 8, 0.95, 0.95, None)  # the lab suite never ran on it
    edge = Standing("edge", MIN_SEEDS, MIN_CLEAN_TEST, 0.70, 0.7)  # exactly at both thresholds: eligible
    good = Standing("good", 5, 0.90, 0.80, 0.78)
    assert ineligible_because(few_seeds) == f"{MIN_SEEDS - 1} seeds (needs at least {MIN_SEEDS})"
    assert "clean TEST mean 0.849" in ineligible_because(weak)
    assert "no lab-suite mean" in ineligible_because(no_lab)
    assert ineligible_because(edge) is None
    label, why = choose([few_seeds, weak, no_lab, edge, good])
    assert label == "good"
    assert "edge" in why and "few_seeds" not in why and "weak" not in why and "no_lab" not in why
    assert choose([few_seeds, weak, edge])[0] == "edge"


def test_fitting_the_development_lab_alone_does_not_win():
    """The score is the worse of the development folder and the lab suite: a candidate best on the development
    folder but weak under the lab suite loses to one good on both."""
    fitted = Standing("fitted", 5, 0.90, 0.95, 0.60)
    both = Standing("both", 5, 0.88, 0.80, 0.79)
    assert fitted.score == 0.60 and both.score == 0.79
    assert choose([fitted, both])[0] == "both"


def test_a_tie_goes_to_the_higher_clean_test_then_to_the_earlier_candidate():
    a, b = Standing("a", 5, 0.88, 0.75, 0.8), Standing("b", 6, 0.91, 0.75, 0.8)
    assert choose([a, b])[0] == "b" and choose([b, a])[0] == "b"
    c = Standing("c", 5, 0.91, 0.75, 0.9)  # the same score: the worse of the two is 0.75 for each
    assert choose([b, c])[0] == "b" and choose([c, b])[0] == "c"


def test_no_model_is_named_when_none_is_eligible():
    both = Standing("both", 2, 0.60, 0.99, 0.9)
    label, why = choose([both, Standing("seeds", 3, 0.95, 0.5, 0.9)])
    assert label is None
    assert why.startswith("no candidate is eligible")
    assert "both: 2 seeds (needs at least 5); clean TEST mean 0.600 (needs at least 0.85)" in why
    assert "seeds: 3 seeds" in why
    assert choose([]) == (None, "no candidate is eligible: none was given")


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env) -> Path:
    return small_run(tmp_path_factory.mktemp("other_labs_runs"), env, SIZE)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, env) -> tuple[Path, Path]:
    """lab_a: every TEST crop of the originals (and a Basophil folder); lab_b: two of its classes."""
    root = tmp_path_factory.mktemp("labs")
    dev = write_labelled_folder(root / "lab_a", env, SIZE)
    also = root / "lab_b"
    for cls in ALSO_CLASSES:
        shutil.copytree(dev / cls, also / cls)
    return dev, also


@pytest.fixture(scope="module")
def command(tmp_path_factory, run_dir, folders, env) -> tuple[subprocess.CompletedProcess, Path]:
    """The command once, written where experiments.report looks: <results>/other_labs."""
    results = tmp_path_factory.mktemp("results")
    out = results / other_labs.SECTION_DIR
    r = subprocess.run([sys.executable, "-m", "experiments.other_labs", "--candidates", f"{run_dir}:adam",
                        "--dev", str(folders[0]), "--also", str(folders[1]), "--out", str(out),
                        "--source", "lab_b=the embedded originals again, as a second lab"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return r, out


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_the_command_evaluates_the_run_as_it_recorded_itself_and_names_no_model(command, run_dir, folders):
    r, out = command
    assert r.returncode == 0, r.stderr
    text = (out / other_labs.RESULTS_FILE).read_text()
    result = json.loads(text)
    assert set(result) == {"rule", "dev", "also", "candidates", "choice", "why", "examples_of", "examples",
                           "sources"}
    assert result["rule"] == {"text": other_labs.RULE, "min_seeds": 5, "min_clean_test_mean": 0.85,
                              "selects_on": "the worse of the balanced accuracy on the development folder and the "
                                            "lab-suite mean"}
    assert result["dev"] == "lab_a" and result["also"] == ["lab_b"]
    assert result["choice"] is None and result["why"].startswith("no candidate is eligible: optimizers/adam: 2 seeds")
    assert "no model chosen: no candidate is eligible" in r.stdout and "optimizers/adam" in r.stdout

    (c,) = result["candidates"]
    recorded = json.loads((run_dir / "metrics.json").read_text())["adam"]["final"]["test"]
    assert c["label"] == "optimizers/adam" and c["run"] == run_dir.name and c["variant"] == "adam"
    assert c["clean_test"]["acc_per_seed"] == recorded["acc_per_seed"] and c["clean_test"]["n_seeds"] == 2
    assert c["clean_test"]["mean"] == pytest.approx(sum(recorded["acc_per_seed"]) / 2)
    assert c["suite_mean"] is None and c["eligible"] is False and c["crop"] == "none"
    dev, also = c["folders"]["lab_a"], c["folders"]["lab_b"]
    # framed as the run was trained (whole image), seeds averaged: the run's own TEST numbers come back
    assert dev["n_images"] == 71 and dev["skipped"] == {"class Basophil": 1}
    assert dev["accuracy_per_seed"] == pytest.approx(recorded["acc_per_seed"], abs=1e-12)
    assert dev["accuracy"] == pytest.approx(recorded["ensemble_acc"], abs=1e-12)
    assert dev["balanced_accuracy"] == pytest.approx(balanced_accuracy(np.asarray(dev["confusion_matrix"])))
    assert dev["localiser"] is None
    n_also = sum(len(list((folders[1] / cls).iterdir())) for cls in ALSO_CLASSES)
    assert also["n_images"] == n_also == sum(map(sum, also["confusion_matrix"])) and also["skipped"] == {}

    assert not [s for s in _strings(result) if s.startswith("/") or str(folders[0].parent) in s
                or str(run_dir.parent) in s]
    assert str(out) not in text
    pngs = [dev["confusion_png"], also["confusion_png"], *result["examples"].values()]
    assert result["examples_of"] == "optimizers/adam" and set(result["examples"]) == {"lab_a", "lab_b"}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(pngs)
    assert all((out / p).stat().st_size > 1000 for p in pngs)


def _error(argv, capsys) -> str:
    assert run_cli(other_labs.main, list(map(str, argv))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_inputs_are_one_line_errors(run_dir, folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # run_cli silences it for the exiting process
    dev, also = folders
    out = tmp_path / "out"
    base = ["--dev", dev, "--out", out]
    assert "has no config.json" in _error(["--candidates", dev, *base], capsys)  # a folder, not a run
    assert "does not exist" in _error(["--candidates", tmp_path / "no_run", *base], capsys)
    assert "unknown variant 'lion'" in _error(["--candidates", f"{run_dir}:lion", *base], capsys)
    assert "given twice" in _error(["--candidates", run_dir, f"{run_dir}:adam", *base], capsys)
    (tmp_path / "empty" / "platelets").mkdir(parents=True)
    assert "no folder named after a class" in _error(["--candidates", run_dir, "--dev", tmp_path / "empty",
                                                      "--out", out], capsys)
    assert "two folders are named 'lab_a'" in _error(["--candidates", run_dir, *base, "--also", dev], capsys)
    (tmp_path / "a_file").write_text("")
    assert "is a file" in _error(["--candidates", run_dir, "--dev", dev, "--out", tmp_path / "a_file"], capsys)
    assert "not one of the evaluated folders" in _error(["--candidates", run_dir, *base, "--source", "lab_z=x"], capsys)
    assert "expects FOLDER=TEXT" in _error(["--candidates", run_dir, *base, "--source", "lab_a"], capsys)
    assert not out.exists()  # nothing written before the inputs are checked


def test_a_candidate_reads_its_suite_mean_from_the_runs_robustness_json(run_dir, tmp_path):
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "robustness.json").write_text(json.dumps({"stride": 3, "n_images": 24, "variants": {
        "adam": {"suite_mean": [0.5, 0.6]}}}))
    (c,) = other_labs.load_candidates([str(copy)])
    assert c.variant == "adam" and c.suite["mean"] == pytest.approx(0.55) and c.suite["per_seed"] == [0.5, 0.6]
    assert other_labs.load_candidates([str(run_dir)])[0].suite is None


# ----------------------------------------------------------------------------- the report


def test_the_report_renders_the_section_from_other_labs_json_and_omits_it_without(command, run_dir, tmp_path):
    _, out = command
    results = out.parent
    text = write_report([run_dir], results)[0].read_text()
    assert "## Other labs' images" in text and other_labs.RULE in text
    assert "Development folder: **lab_a**; also evaluated: lab_b." in text
    assert "- lab_b: the embedded originals again, as a second lab" in text
    assert "| candidate | seeds | epochs | clean TEST (95% CI) |" in text
    assert "| lab_a (dev): accuracy | lab_a: balanced | lab_b: accuracy | lab_b: balanced | eligible |" in text
    row = next(line for line in text.splitlines() if line.startswith("| optimizers/adam (run "))
    assert f"`{run_dir.name}`) | 2 | 2 | " in row and "| no: 2 seeds (needs at least 5)" in row  # seeds, epochs
    assert "No model chosen: no candidate is eligible" in text
    links = [line[line.index("](") + 2:-1] for line in text.splitlines() if line.startswith("![")]
    assert len([p for p in links if p.startswith("other_labs/")]) == 4  # 2 confusion matrices, 2 example grids
    assert all((results / p).is_file() for p in links)

    # a choice and the localiser's counts (a run trained on cell crops) are rendered as well
    written = json.loads((out / other_labs.RESULTS_FILE).read_text())
    written["candidates"][0]["folders"]["lab_a"].update(localiser={"one": 60, "several": 8, "none": 3},
                                                        accuracy_status_one=0.5)
    written["candidates"][0]["suite_mean"] = {"per_seed": [0.7], "mean": 0.7, "ci95": [0.7, 0.7]}
    chosen = tmp_path / "chosen"
    (chosen / other_labs.SECTION_DIR).mkdir(parents=True)
    (chosen / other_labs.SECTION_DIR / other_labs.RESULTS_FILE).write_text(
        json.dumps(dict(written, choice="optimizers/adam", why="eligible: optimizers/adam")))
    lines = other_labs.report_section(chosen)
    assert "Chosen: **optimizers/adam** (eligible: optimizers/adam)." in lines
    row = next(line for line in lines if line.startswith("| optimizers/adam (run "))
    assert " | 0.700 (one seed) | " in row  # a suite run on one seed has no interval to show
    # the rule and its history
    assert any(other_labs.RULE in line and other_labs.RULE_REVISED in line for line in lines)
    assert "- optimizers/adam on lab_a (71 images): localiser one 60, several 8, none 3; accuracy on status one " \
           "0.500" in lines

    without = write_report([run_dir], tmp_path / "plain")[0].read_text()
    assert "## Other labs' images" not in without and other_labs.report_section(tmp_path / "plain") == []


def test_the_printed_table_keeps_every_column_apart():
    from experiments.other_labs import format_table

    def candidate(label, suite, lab):
        return {"label": label, "clean_test": {"n_seeds": 5, "mean": 0.883, "ci95": [0.877, 0.889]},
                "suite_mean": suite and {"mean": suite}, "lab_mean": lab and {"mean": lab},
                "folders": {"dev": {"accuracy": 0.6, "balanced_accuracy": 0.55}}, "eligible": True}

    long = "cell_crops/saturation@20261207-194649"  # longer than the old fixed column
    table = format_table({"dev": "dev", "also": [], "choice": long, "why": "the only one", "candidates": [
        candidate(long, 0.819, 0.659), candidate("vgg/x", None, None)]})
    rows = table.splitlines()
    assert rows[2].split() == [long, "5", "0.883", "(0.877-0.889)", "0.819", "0.659", "0.600/0.550", "yes"]
    assert rows[3].split() == ["vgg/x", "5", "0.883", "(0.877-0.889)", "-", "-", "0.600/0.550", "yes"]
    assert rows[0].index("suite") < rows[2].index("0.819") + 5 and len({len(r) for r in rows[2:4]}) == 1
