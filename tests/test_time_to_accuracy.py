"""benchmarks.time_to_accuracy --resume: which seeds of an earlier race are kept, and which files it refuses."""

from __future__ import annotations

import json

import pytest

from bccd_jax.errors import UserError
from benchmarks.time_to_accuracy import _SAME, finished_seeds


def race(seeds, epochs=8):
    out = {k: f"same {k}" for k in _SAME}
    out.update(recipe={"train": {"epochs": epochs}}, targets=[0.8, 0.85], stop_at_targets=True, seeds=seeds,
               command="python -m benchmarks.time_to_accuracy --seeds " + " ".join(map(str, seeds)))
    return out


def side(epochs, reached_085):
    return {"epochs": epochs, "reached": {"0.80": {"time_s": 1.0}, "0.85": {"time_s": 2.0} if reached_085 else None}}


def test_resume_keeps_finished_seeds_only(tmp_path):
    prev = race([0, 1, 2, 3])
    prev["by_seed"] = {
        "0": {"jax": side(8, True), "torch": side(8, True)},  # all epochs
        "1": {"jax": side(3, True), "torch": side(3, True)},  # stopped at the targets
        "2": {"jax": side(2, True), "torch": side(2, False)},  # killed before PyTorch reached 0.85
        "3": {"jax": side(1, False)},  # killed in its first epoch
    }
    path = tmp_path / "time_to_accuracy.json"
    path.write_text(json.dumps(prev))
    kept = finished_seeds(path, race([0, 1, 2, 3, 4]), ["jax", "torch"])
    assert sorted(kept["by_seed"]) == ["0", "1"]
    # the first seed is kept only when it ran every epoch: it gives the final accuracies
    prev["by_seed"]["0"] = {"jax": side(3, True), "torch": side(3, True)}
    path.write_text(json.dumps(prev))
    assert sorted(finished_seeds(path, race([0, 1]), ["jax", "torch"])["by_seed"]) == ["1"]


def test_resume_refuses_another_race(tmp_path):
    path = tmp_path / "time_to_accuracy.json"
    with pytest.raises(UserError, match="no time_to_accuracy.json"):
        finished_seeds(path, race([0]), ["jax", "torch"])
    path.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        finished_seeds(path, race([0]), ["jax", "torch"])
    path.write_text(json.dumps(dict(race([0]), machine="another CPU", by_seed={})))
    with pytest.raises(UserError, match="other machine"):
        finished_seeds(path, race([0, 1]), ["jax", "torch"])
    path.write_text(json.dumps(dict(race([1]), by_seed={})))
    with pytest.raises(UserError, match="first seed"):
        finished_seeds(path, race([0, 1]), ["jax", "torch"])
