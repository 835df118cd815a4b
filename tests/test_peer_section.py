"""REPORT.md's Keras section (experiments.peer_section) matches each Keras arm to the bccd_jax run of the same network
and compares them at the last epoch both ran. The bccd_jax side is a real run folder (the base CNN with Adam on the
embedded originals); the Keras side is result files as benchmarks.keras_peer writes them, with made-up curves (this
test needs no Keras)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_run

from bccd_jax.errors import UserError
from bccd_jax.metrics import welch_ci
from bccd_jax.run import RunFolder
from experiments.peer_section import SECTION_DIR, peer_section
from experiments.report import latest_variants, load_runs

SIZE = (24, 32)


def keras_file(out: Path, settings: dict, seed: int, epochs: int, done: int, test_acc: list[float]) -> None:
    """A result file of benchmarks.keras_peer: `done` of `epochs` epochs, TEST accuracy `test_acc` per epoch."""
    n = range(done)
    history = {"epoch": [e + 1 for e in n], "train_loss": [1.3 - 0.1 * e for e in n],
               "train_acc": [0.3 + 0.1 * e for e in n], "test_loss": [1.2 - 0.1 * e for e in n],
               "test_acc": test_acc[:done], "test_loss_logits": [1.25 - 0.1 * e for e in n],
               "train_s": [30.0 + e for e in n], "test_s": [3.0] * done, "loadavg": [2.0] * done}
    loss = "-logits" if settings.get("loss") == "logits" else ""
    name = f"{settings['model']}-{settings['optimizer']}-{settings['init']}{loss}-seed{seed}.json"
    (out / name).write_text(json.dumps({"settings": {**settings, "seed": seed}, "epochs": epochs,
                                        "history": history}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env) -> Path:
    return small_run(tmp_path_factory.mktemp("peer_runs"), env, SIZE)


def test_keras_arms_beside_the_bccd_jax_run_of_the_same_network(run_dir, tmp_path):
    results = tmp_path / "results"
    latest = latest_variants(load_runs([run_dir]))
    assert peer_section(results, latest) == []  # no Keras result file: no section

    record = RunFolder(run_dir).record()
    data = {"dataset": record.data.dataset, "image_size": list(record.data.image_size),
            "fingerprint": record.data.fingerprint, "splits": {"train": 268, "test": 71}}
    adam = {"framework": "keras", "model": "base", "init": "glorot_uniform", "optimizer": "adam",
            "learning_rate": 0.001, "batch_size": 32, "data": data}
    (results / SECTION_DIR).mkdir(parents=True)
    keras_acc = {0: [0.40, 0.55, 0.60], 1: [0.45, 0.50, 0.70]}
    for seed, acc in keras_acc.items():
        keras_file(results / SECTION_DIR, adam, seed, 3, 3, acc)
    keras_file(results / SECTION_DIR, adam, 2, 3, 1, [0.3])  # still training: left out, counted
    keras_file(results / SECTION_DIR, {**adam, "optimizer": "sgd", "learning_rate": 0.01}, 0, 3, 3, [0.3] * 3)
    keras_file(results / SECTION_DIR, {**adam, "data": {**data, "fingerprint": "other"}, "model": "deep"}, 0, 3, 3,
               [0.3] * 3)
    keras_file(results / SECTION_DIR, {**adam, "loss": "logits"}, 0, 3, 3, [0.5, 0.6, 0.65])  # a file with the loss
    (results / SECTION_DIR / "first-steps").mkdir()
    (results / SECTION_DIR / "first-steps" / "base-adam-glorot_uniform-seed0.json").write_text(json.dumps(
        {"settings": {**adam, "seed": 0}, "probe_images": 71,
         "steps": {"step": [1, 2, 3, 4], "loss": [1.4, 9.6, 12.1, 12.0], "probe_margin": [6.3, 41.6, 41.6, 41.6],
                   "probe_clipped": [0.2, 1.0, 1.0, 1.0], "probe_acc": [0.25, 0.25, 0.25, 0.25]}}))

    lines = peer_section(results, latest)
    text = "\n".join(lines)
    row = next(ln for ln in lines if ln.startswith("| adam | glorot_uniform | probabilities |"))  # base comes first
    bccd = RunFolder(run_dir).results()["adam"]
    assert bccd.epochs == 2 and f"`{run_dir.name}/adam` (2 seeds) | 2 |" in row  # E: the 2 epochs both ran
    d, (lo, hi) = welch_ci([0.55, 0.50], bccd.curve("test_acc")[1])
    assert f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" in row
    assert "0.525 (epoch 2) /" in row  # Keras' mean TEST curve peaks at epoch 2 of the 2 compared
    assert "| 0 of 2 / " in row and row.endswith("| 31 |")  # no Keras seed stuck; its second epochs took 31 s
    assert "| sgd | glorot_uniform | probabilities | 1 | no bccd_jax run of this network" in text  # no SGD variant
    assert "### The deep CNN" in text and "| adam | glorot_uniform | probabilities | 1 | no bccd_jax run" in text
    # a file without a loss setting trained on probabilities; the logits arm is its own row, beside the same run
    logits_row = next(ln for ln in lines if ln.startswith("| adam | glorot_uniform | logits | 1 |"))
    assert f"`{run_dir.name}/adam` (2 seeds) | 2 | 0.600 |" in logits_row
    assert lines.index(logits_row) == lines.index(row) + 1
    assert "| base, adam, glorot_uniform | probabilities | 0 | 4 | 1.40 / 9.60 / 12.00 | 6.3 / 41.6 / 41.6 | " \
           "0.20 / 1.00 / 1.00 | 0.250 / 0.250 / 0.250 | 2 |" in text
    assert "Keras runs still training (not in the table): 1." in text
    assert (results / SECTION_DIR / "base-curves.png").is_file()
    assert not (results / SECTION_DIR / "deep-curves.png").exists()  # nothing to draw beside
    assert f"]({SECTION_DIR}/base-curves.png)" in text

    (results / SECTION_DIR / "notes.json").write_text("{}")
    with pytest.raises(UserError, match="notes.json is not a result file of benchmarks.keras_peer"):
        peer_section(results, latest)
