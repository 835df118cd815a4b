"""Experiment plumbing without training: flag overrides, verdict statistics, the report on a small run folder."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bccd_jax.errors import UserError
from experiments import regularization
from experiments.common import apply_overrides, make_parser
from experiments.report import claims_for, diff_ci, write_report


def parse(*flags, module=regularization):
    p = make_parser(module.NAME, module.DESCRIPTION)
    module.add_arguments(p)
    return p.parse_args(list(flags))


def test_epochs_flag_leaves_the_overfitting_run_alone():
    args = parse("--epochs", "7", "--overfit-epochs", "120", "--set", "dropout=0.3", "batch_size=16")
    vs = {v.name: apply_overrides(v, args) for v in regularization.variants(args)}
    assert vs["overfit_120ep"].train.epochs == 120
    assert vs["dropout_0.5"].train.epochs == 7
    assert all(v.model.dropout == 0.3 for v in vs.values())  # --set wins over the variant's own value
    assert all(v.train.batch_size == 16 for v in vs.values())


@pytest.mark.parametrize("item, message", [("dropout", "FIELD=VALUE"), ("nosuchfield=1", "unknown field"),
                                           ("dropout=1.5", "dropout must be")])
def test_bad_set_items_are_user_errors(item, message):
    args = parse("--set", item)
    with pytest.raises(UserError, match=message):
        [apply_overrides(v, args) for v in regularization.variants(args)]


def test_diff_ci_is_a_welch_interval():
    d, (lo, hi) = diff_ci([0.8, 0.82, 0.84], [0.7, 0.71, 0.69])
    assert d == pytest.approx(0.12) and 0 < lo < d < hi
    d, (lo, hi) = diff_ci([0.8, 0.6, 0.7], [0.7, 0.8, 0.6])
    assert lo < 0 < hi


def _variant(test_acc_per_epoch, group="", test_loss=None, train_acc=None):
    acc = np.asarray(test_acc_per_epoch, float)  # [epochs, seeds]
    e, s = acc.shape
    hist = {"epoch": list(range(1, e + 1)), "test_acc": acc.tolist(),
            "test_loss": (np.ones_like(acc) if test_loss is None else np.asarray(test_loss)).tolist(),
            "train_acc": (acc if train_acc is None else np.asarray(train_acc)).tolist(),
            "train_loss": np.ones_like(acc).tolist()}
    return {"group": group, "seeds": list(range(s)), "epochs": e, "history": hist}


def test_claims_follow_the_numbers():
    res = {"sgd": _variant([[0.5, 0.52, 0.51]]), "adam": _variant([[0.8, 0.82, 0.81]]),
           "rmsprop": _variant([[0.3, 0.32, 0.31]])}
    verdicts = {c.split(" ")[0]: v for c, v, _ in claims_for("optimizers", res)}
    assert verdicts == {"adam": "supported", "rmsprop": "contradicted"}
    # overfitting: test loss falls then triples while train accuracy keeps rising
    loss = np.array([[1.0], [0.5], [1.5]])
    over = {"overfit_3ep": _variant([[0.5], [0.6], [0.55]], "overfit", test_loss=loss,
                                    train_acc=[[0.5], [0.8], [0.99]])}
    (claim, verdict, evidence), = claims_for("regularization", over)
    assert verdict == "supported" and "3.0x" in evidence
    # the 85 % claim: a wide interval that merely contains 0.85 does not support it
    def deep_verdict(accs, epochs):
        return claims_for("architecture", {"deep": _variant([accs] * epochs)})[0][1]
    assert deep_verdict([0.86, 0.87, 0.85], 50) == "supported"
    assert deep_verdict([0.70, 0.72, 0.71], 50) == "contradicted"
    assert deep_verdict([0.25, 0.65, 0.95], 50) == "inconclusive"
    assert deep_verdict([0.25, 0.65, 0.95], 5).startswith("not reached in 5 epochs")


def test_report_from_a_run_folder(tmp_path):
    run = tmp_path / "optimizers" / "20260101-000000"
    run.mkdir(parents=True)
    per_class = {c: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": n}
                 for c, n in zip(["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"], [26, 12, 8, 96])}
    metrics = {}
    for name, acc in (("sgd", [0.6, 0.62]), ("adam", [0.7, 0.72])):
        v = _variant([acc])
        v.update({"train_acc_final_mean": 0.9, "wall_s": 1.0, "test_acc_best_mean": max(acc),
                  "test_acc_best_ci95": [0.5, 0.9],
                  "final": {"test": {"acc_mean": float(np.mean(acc)), "acc_ci95": [0.5, 0.9], "per_class": per_class,
                                     "grouped_acc_mean": 0.65, "grouped_acc_ci95_over_seeds": [0.6, 0.7],
                                     "n_source_cells": 71}}})
        metrics[name] = v
    config = {"experiment": "optimizers", "description": "d", "command": "python -m experiments.optimizers",
              "git_commit": "abc", "versions": {"jax": "x", "flax": "y", "optax": "z", "backend": "cpu",
                                                "devices": ["cpu:0"]},
              "data": {"dataset": "originals", "image_shape": [32, 40, 3], "splits": {"train": 268, "test": 71},
                       "fingerprint": "f" * 64}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps(metrics))
    report, summary = write_report([run], tmp_path / "results")
    text = report.read_text()
    assert "majority-class baseline on TEST: 0.676 (always NEUTROPHIL)" in text
    s = json.loads(summary.read_text())
    assert s["optimizers"]["adam"]["test_acc_mean"] == pytest.approx(0.71)
    assert s["optimizers"]["adam"]["dataset"] == "originals" and s["optimizers"]["adam"]["test_simple_acc_mean"] is None
    with pytest.raises(UserError, match="not found|does not exist"):
        write_report([tmp_path / "missing"], tmp_path / "r2")

    # the same experiment on the same data at another image size: kept apart, nothing replaced
    run2 = tmp_path / "optimizers" / "20260101-000001"
    run2.mkdir(parents=True)
    (run2 / "config.json").write_text(json.dumps({**config, "data": {**config["data"], "image_shape": [60, 80, 3]}}))
    (run2 / "metrics.json").write_text(json.dumps({"adam": {**metrics["adam"], "test_acc_mean": 0.8}}))
    (run / "figures").mkdir()
    (run2 / "figures").mkdir()
    for r in (run, run2):
        (r / "figures" / "curves_optimizers.png").write_bytes(b"png")
    report, summary = write_report([run, run2], tmp_path / "r3")
    s = json.loads(summary.read_text())
    assert set(s["optimizers"]) == {"sgd", "adam", "adam@originals-60x80"}
    text = report.read_text()
    assert "figures/optimizers_originals/curves_optimizers.png" in text
    assert "figures/optimizers_originals_60x80/curves_optimizers.png" in text


def test_experiment_modules_expose_the_runner_interface():
    from experiments import architecture, optimizers, vgg

    for m in (optimizers, regularization, architecture, vgg):
        assert isinstance(m.NAME, str) and callable(m.variants)
    args = argparse.Namespace(parts=["depth", "kernels"], kernel_counts=[16], kernel_sizes=[5])
    names = [v.name for v in architecture.variants(args)]
    assert names == ["base", "expanded", "expanded_centered", "deep", "filters_16", "kernel_5x5"]
