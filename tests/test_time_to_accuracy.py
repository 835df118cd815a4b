"""benchmarks.time_to_accuracy: which seeds of an earlier race --resume keeps, which files it refuses, and how the
race is decided over seeds (benchmarks.tta_section.race_summary)."""

from __future__ import annotations

import json

import pytest

from bccd_jax.errors import UserError
from benchmarks.time_to_accuracy import _SAME, finished_seeds
from benchmarks.tta_section import race_summary


def race(seeds, epochs=8):
    out = {k: f"same {k}" for k in _SAME}
    out.update(recipe={"train": {"epochs": epochs}}, targets=[0.8, 0.85], budgets=[120.0], stop_at_targets=True, seeds=seeds,
               command="python -m benchmarks.time_to_accuracy --seeds " + " ".join(map(str, seeds)))
    return out


def side(epochs, reached_085, wall_s=200.0):
    return {"epochs": epochs, "wall_s": wall_s,
            "reached": {"0.80": {"time_s": 1.0}, "0.85": {"time_s": 2.0} if reached_085 else None}}


def test_resume_keeps_finished_seeds_only(tmp_path):
    prev = race([0, 1, 2, 3])
    prev["by_seed"] = {
        "0": {"jax": side(8, True), "torch": side(8, True)},  # all epochs
        "1": {"jax": side(3, True), "torch": side(3, True)},  # stopped at the targets
        "2": {"jax": side(2, True), "torch": side(2, False)},  # killed before PyTorch reached 0.85
        "3": {"jax": side(1, False)},  # killed in its first epoch
        "5": {"jax": side(2, True, wall_s=90.0), "torch": side(2, True)},  # killed before the 120 s budget
    }
    path = tmp_path / "time_to_accuracy.json"
    path.write_text(json.dumps(prev))
    kept = finished_seeds(path, race([0, 1, 2, 3, 4, 5]), ["jax", "torch"])
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


def curve_side(points, epochs=8, wall_s=700.0):
    """A side whose TEST evaluations are (time_s, test_acc) pairs; `reached` as benchmarks.time_to_accuracy.summary."""
    curve = [{"time_s": t, "test_acc": a} for t, a in points]
    reached = {f"{x:.2f}": next(({"time_s": p["time_s"]} for p in curve if p["test_acc"] >= x), None) for x in (0.8, 0.83)}
    return {"epochs": epochs, "wall_s": wall_s, "curve": curve, "reached": reached}


def test_race_summary_medians_count_never_as_slowest():
    d = {"recipe": {"train": {"epochs": 8}}, "targets": [0.8, 0.83], "budgets": [120.0, 300.0], "by_seed": {
        "0": {"jax": curve_side([(100, 0.7), (200, 0.81), (400, 0.84)]), "torch": curve_side([(150, 0.75), (300, 0.82)])},
        "1": {"jax": curve_side([(100, 0.79), (250, 0.82)]), "torch": curve_side([(110, 0.81), (350, 0.83)])},
        "2": {"jax": curve_side([(90, 0.80), (260, 0.83)]), "torch": curve_side([(160, 0.7), (330, 0.79)])},
        # killed before 300 s without finishing: no accuracy at 300 s for this seed
        "3": {"jax": curve_side([(100, 0.81)], wall_s=200), "torch": curve_side([(100, 0.6)], epochs=2, wall_s=200)},
    }}
    s = race_summary(d)
    t80, t83 = s["targets"]["0.80"], s["targets"]["0.83"]
    assert t80["jax_median_s"] == 150  # 200, 250, 90, 100
    assert t80["torch_median_s"] is None  # 300, 110, never, never: the median is a seed that never got there
    assert t80["jax_first"] == 3 and t80["seeds"] == 4
    assert t83["jax_median_s"] is None and t83["torch_median_s"] is None and t83["jax_first"] == 2
    # 120 s: bccd_jax 0.7, 0.79, 0.80, 0.81; PyTorch none yet (lowest), 0.81, none yet, 0.6
    assert s["budgets"]["120"] == {"jax_median_acc": pytest.approx(0.795), "torch_median_acc": None, "jax_ahead": 3,
                                   "seeds": 4}
    # 300 s: seed 3's PyTorch side stopped at 200 s without finishing, so seed 3 drops out; bccd_jax's seed 3
    # finished its epochs at 200 s and would have counted with its final accuracy
    assert s["budgets"]["300"] == {"jax_median_acc": pytest.approx(0.82), "torch_median_acc": pytest.approx(0.81),
                                   "jax_ahead": 2, "seeds": 3}


def test_summary_notes_flag_budgets_past_both_recipes_and_the_drift_at_equal_steps():
    from benchmarks.tta_section import summary_notes

    def side(accs, wall_s):
        return {"epochs": 8, "wall_s": wall_s, "curve": [{"step": 78 * (i + 1), "time_s": 10.0 * (i + 1), "test_acc": a}
                                                          for i, a in enumerate(accs)]}

    d = {"recipe": {"train": {"epochs": 8}}, "by_seed": {
        "0": {"jax": side([0.50, 0.80], 300), "torch": side([0.52, 0.76], 410)},
        "1": {"jax": side([0.60, 0.81], 290), "torch": side([0.60, 0.83], 420)}}}
    s = {"budgets": {"120": {}, "300": {}, "600": {}}}
    notes = summary_notes(d, s)
    # only 600 s lies past every seed's slower side (420 s); 300 s does not
    assert notes[0].startswith("After 600 s every seed's two sides had finished the 8-epoch recipe")
    assert "median wall bccd_jax 295 s, PyTorch 415 s" in notes[0] and "that row compares" in notes[0]
    # |differences| at equal steps: 0.02, 0.04, 0.00, 0.02 -> median 0.02, largest 0.04
    assert "median of 0.020 (largest 0.040) over 4 evaluations" in notes[1]
    d["by_seed"]["1"]["torch"]["epochs"] = 5  # a seed stopped early: no budget row is called final
    assert not summary_notes(d, s)[0].startswith("After")


def test_budget_notes_give_the_step_lead_the_per_seed_differences_and_flag_a_change_of_sign():
    from benchmarks.tta_section import budget_notes

    def side(points, wall_s, epochs=8):
        return {"epochs": epochs, "wall_s": wall_s,
                "curve": [{"step": st, "time_s": t, "test_acc": a} for st, t, a in points]}

    d = {"recipe": {"train": {"epochs": 8}}, "budgets": [100.0, 1000.0]}
    seeds = {  # after 100 s: bccd_jax at step 40 and 30, PyTorch at 20 and 20
        "0": {"jax": side([(20, 50, 0.5), (30, 80, 0.80), (40, 95, 0.84)], 400),
              "torch": side([(20, 90, 0.82), (30, 130, 0.83)], 500)},
        "1": {"jax": side([(20, 60, 0.6), (30, 90, 0.85)], 300), "torch": side([(20, 95, 0.80)], 600)}}
    notes = budget_notes(d, seeds)
    assert notes[0] == ("After 100 s bccd_jax had taken 1.75x PyTorch's steps (median over 2 seeds); its TEST accuracy "
                        "minus PyTorch's: +0.020 to +0.050, median +0.035.")
    # after 1000 s every side has finished: its final evaluation
    assert notes[1].startswith("After 1000 s bccd_jax had taken 1.42x PyTorch's steps (median over 2 seeds)")
    # both rows' differences are positive: nothing is said about drift
    assert len(notes) == 2
    seeds["1"]["torch"]["curve"][0]["test_acc"] = 0.90  # seed 1 now behind after 100 s, and after 1000 s
    assert budget_notes(d, seeds)[-1] == ("After 100, 1000 s the per-seed differences change sign: those rows' "
                                          "medians compare the two sides' drift at the same step, not their speed.")
