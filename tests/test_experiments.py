"""Experiment plumbing without training: flag overrides, protocols, verdict statistics, the report on a small run folder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.errors import UserError
from bccd_jax.metrics import ACC_BOUNDS, mean_ci, summarize_predictions, welch_ci
from bccd_jax.run import DataRecord, RunFolder, RunRecord, VariantRecord, VariantResult
from bccd_jax.runner import apply_overrides, parse_args, select_variants
from experiments import regularization
from experiments.claims import study_claims
from experiments.report import latest_variants, load_runs, write_report


def parse(*flags, module=regularization):
    return parse_args(module.EXPERIMENT, list(flags))


def test_epochs_flag_leaves_the_overfitting_run_alone():
    args = parse("--epochs", "7", "--overfit-epochs", "120", "--set", "dropout=0.3", "batch_size=16")
    vs = {v.name: apply_overrides(v, args) for v in regularization.variants(args)}
    assert vs["overfit_120ep"].train.epochs == 120
    assert vs["dropout_0.5"].train.epochs == 7
    assert all(v.model.dropout == 0.3 for v in vs.values())  # --set wins over the variant's own value
    assert all(v.train.batch_size == 16 for v in vs.values())


def test_protocols_fill_the_defaults_and_flags_win():
    quick = parse()
    assert quick.protocol == "quick" and quick.image_size == (32, 40) and quick.dataset == "originals"
    cpu = parse("--data-dir", "somewhere")
    assert cpu.protocol == "cpu" and cpu.image_size == (60, 80) and cpu.dataset == "augmented"
    vs = {v.name: v for v in regularization.variants(cpu)}
    assert vs["dropout_0.2"].train.epochs == cpu.proto.epochs_for("regularization")
    assert vs["dropout_0"].num_seeds == cpu.proto.seeds_for("regularization", "centering")  # paired with centering
    assert parse("--protocol", "gpu", "--data-dir", "x", "--image-size", "30", "40").image_size == (30, 40)
    assert apply_overrides(vs["dropout_0.2"], cpu).train.checkpoint_every == 1  # epochs of minutes: lose at most one
    assert quick.checkpoint_every == 10 and parse("--checkpoint-every", "3").checkpoint_every == 3
    args = parse("--set", "augment.hue=10", "schedule=cosine")
    v = apply_overrides(regularization.variants(args)[0], args)
    assert v.train.augment.hue == 10 and v.train.schedule == "cosine"


def test_the_quick_optimizers_see_cell_crops_and_set_wins_over_the_protocol():
    from bccd_jax.runner import parse_args
    from experiments import optimizers

    args = parse_args(optimizers.EXPERIMENT, [])
    assert args.crop == "cell"
    v = apply_overrides(optimizers.variants(args)[0], args)
    assert v.model.input_norm == "image" and v.train.augment.flip and v.train.augment.rot90
    args = parse_args(optimizers.EXPERIMENT, ["--crop", "frame", "--set", "input_norm=scale"])
    assert args.crop == "frame" and apply_overrides(optimizers.variants(args)[0], args).model.input_norm == "scale"
    cpu = parse_args(optimizers.EXPERIMENT, ["--data-dir", "x"])
    assert cpu.crop == "frame" and apply_overrides(optimizers.variants(cpu)[0], cpu).model.input_norm == "scale"
    assert parse().crop == "frame"  # regularization: the study's own input


def test_resume_reads_a_config_saved_before_a_field_existed():
    from bccd_jax.config import AugmentConfig, resume_problems, to_dict

    now = {"variants": {"v": {"train": to_dict(TrainConfig(augment=AugmentConfig(flip=True)))}}}
    saved = json.loads(json.dumps(now))
    del saved["variants"]["v"]["train"]["augment"]["heavy_p"]  # a run made before heavy_p existed
    assert resume_problems(saved, now) == []
    saved["variants"]["v"]["train"]["augment"]["flip"] = False  # a real change is still refused
    (problem,) = resume_problems(saved, now)
    assert problem.startswith("v train: augment ") and '"flip": false' in problem


@pytest.mark.parametrize("item, message", [("dropout", "FIELD=VALUE"), ("nosuchfield=1", "unknown field"),
                                           ("dropout=1.5", "dropout must be")])
def test_bad_set_items_are_user_errors(item, message):
    args = parse("--set", item)
    with pytest.raises(UserError, match=message):
        [apply_overrides(v, args) for v in regularization.variants(args)]


def test_diff_ci_is_a_welch_interval():
    d, (lo, hi) = welch_ci([0.8, 0.82, 0.84], [0.7, 0.71, 0.69])
    assert d == pytest.approx(0.12) and 0 < lo < d < hi
    d, (lo, hi) = welch_ci([0.8, 0.6, 0.7], [0.7, 0.8, 0.6])
    assert lo < 0 < hi


def test_accuracy_intervals_stay_within_0_and_1():
    # three seeds, one at chance: the t-interval of the accuracies reaches below 0; a difference's may
    acc = [0.25, 0.8, 0.85]
    assert mean_ci(acc)[1][0] < 0
    m, (lo, hi) = mean_ci(acc, ACC_BOUNDS)
    assert m == pytest.approx(0.6333, abs=1e-4) and (lo, hi) == (0.0, 1.0)
    labels = np.arange(8) % 4
    logits = np.stack([np.eye(4)[(labels + k) % 4] if k else np.eye(4)[labels] for k in (0, 1, 0)])
    assert summarize_predictions(logits, labels)["acc_ci95"][0] == 0.0  # seed 1 always wrong


def _variant(name, test_acc_per_epoch, group="", test_loss=None, train_acc=None):
    acc = np.asarray(test_acc_per_epoch, float)  # [epochs, seeds]
    e, s = acc.shape
    hist = {"epoch": list(range(1, e + 1)), "test_acc": acc.tolist(),
            "test_loss": (np.ones_like(acc) if test_loss is None else np.asarray(test_loss)).tolist(),
            "train_acc": (acc if train_acc is None else np.asarray(train_acc)).tolist(),
            "train_loss": np.ones_like(acc).tolist()}
    return VariantResult(name, {"group": group, "seeds": list(range(s)), "epochs": e, "history": hist})


def test_the_85_percent_claim_needs_its_interval_to_reach_it_and_a_stable_model():
    """A wide interval that merely contains 0.85 does not support "roughly 85%", nor do seeds far apart."""
    def deep_verdict(accs, epochs):
        study = {"recipe": {"best": _variant("best", [accs] * epochs)}}
        return study_claims(study, "augmented", "60x80")[0].verdict
    assert deep_verdict([0.86, 0.87, 0.85], 10) == "supported"
    assert deep_verdict([0.70, 0.72, 0.71], 10) == "contradicted"
    assert deep_verdict([0.78, 0.80, 0.82], 10) == "inconclusive"
    assert deep_verdict([0.80, 0.86, 0.92], 10) == "contradicted"  # reaches 0.80, but its seeds lie 0.12 apart


def _summary(acc, cells=68):
    per_class = {c: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": n}
                 for c, n in zip(["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"], [26, 12, 8, 96])}
    return {"acc_mean": float(np.mean(acc)), "acc_ci95": [0.5, 0.9], "per_class": per_class, "ensemble_acc": 0.7,
            "balanced_acc_per_seed": [0.5] * len(acc),
            "grouped_acc_mean": 0.65, "grouped_acc_ci95_over_seeds": [0.6, 0.7], "n_cells": cells}


def _run_folder(root, stamp, image_shape=(32, 40, 3), names=("sgd", "adam"), protocol="quick"):
    folder = RunFolder(root / "optimizers" / stamp)
    folder.path.mkdir(parents=True)
    data = DataRecord("originals", image_shape, "f" * 64, (1.0, 2.0, 3.0), {"train": 268, "test": 71}, "embedded")
    variants = {n: VariantRecord(n, ModelConfig.preset("base"), TrainConfig(epochs=1), (0, 1), "optimizers", "adam")
                for n in names}
    folder.write_record(RunRecord("optimizers", data, variants, description="d", protocol=protocol,
                                  command="python -m experiments.optimizers", created=stamp, git_commit="abc",
                                  versions={"jax": "x", "flax": "y", "optax": "z", "backend": "cpu"},
                                  hardware={"cpu": "a CPU", "cores": 2}))
    results = {}
    for name, acc in (("sgd", [0.6, 0.62]), ("adam", [0.7, 0.72])):
        if name not in names:
            continue
        v = _variant(name, [acc], "optimizers")
        v.raw.update({"train_acc_final_mean": 0.9, "wall_s": 1.0, "test_acc_best_mean": max(acc),
                      "test_acc_best_ci95": [0.5, 0.9],
                      "final": {"test": _summary(acc), "test_leakfree": _summary([a - 0.01 for a in acc], 65)}})
        results[name] = v
    folder.write_results(results)
    folder.figures.mkdir()
    (folder.figures / "curves_optimizers.png").write_bytes(b"png")
    return folder


def test_report_from_a_run_folder(tmp_path):
    run = _run_folder(tmp_path, "20260101-000000")
    report, summary = write_report([run.path], tmp_path / "results")
    text = report.read_text()
    assert "majority-class baseline on TEST: 0.676 (always NEUTROPHIL)" in text
    assert "| `20260101-000000` | optimizers | quick | originals | 32x40 |" in text  # the generated header
    assert "a CPU (2 cores" in text
    s = json.loads(summary.read_text())
    assert s["optimizers"]["adam"]["test_acc_mean"] == pytest.approx(0.71)
    assert s["optimizers"]["adam"]["test_leakfree_acc_mean"] == pytest.approx(0.70)
    assert s["optimizers"]["adam"]["dataset"] == "originals" and s["optimizers"]["adam"]["test_simple_acc_mean"] is None
    assert s["optimizers"]["adam"]["grouped_acc_ci95"] == [0.6, 0.7]  # the by-cell interval beside its mean
    assert "| 68 / 65 |" in text  # cells of TEST / of the leak-free TEST
    assert ('| optimizers | Adam: "reaching 60 % accuracy after 50 epochs" | 60 % after 50 epochs | 0.710 '
            in text and "| 1 epochs, 2 seeds, 32x40, originals | none | **not reached at this budget** |" in text)
    assert ("No run of the augmented set among these folders for: optimizers, regularization, architecture, "
            "recipe, vgg.") in text
    with pytest.raises(UserError, match="not found|does not exist"):
        write_report([tmp_path / "missing"], tmp_path / "r2")

    # the same experiment on the same data at another image size: kept apart, nothing replaced
    run2 = _run_folder(tmp_path, "20260101-000001", image_shape=(60, 80, 3))
    report, summary = write_report([run.path, run2.path], tmp_path / "r3")
    s = json.loads(summary.read_text())
    assert set(s["optimizers"]) == {"sgd", "adam", "sgd@originals-60x80", "adam@originals-60x80"}
    assert s["optimizers"]["adam@originals-60x80"]["run"] == "20260101-000001"
    # the same variant on the same data and size again: the later run replaces it (as in the claims), in whatever
    # order the folders are given
    run3 = _run_folder(tmp_path / "later", "20260101-000002", names=("adam",))
    s = json.loads(write_report([run3.path, run.path, run2.path], tmp_path / "r4")[1].read_text())
    assert set(s["optimizers"]) == {"sgd", "adam", "sgd@originals-60x80", "adam@originals-60x80"}
    assert (s["optimizers"]["adam"]["run"], s["optimizers"]["sgd"]["run"]) == ("20260101-000002", "20260101-000000")
    # the train accuracy over the seeds that left chance (history's last epoch), none stuck here
    assert s["optimizers"]["adam"]["seeds_never_left_chance"] == []
    assert s["optimizers"]["adam"]["train_acc_mean_left_chance"] == pytest.approx((0.7 + 0.72) / 2)
    # the claims take the same runs as summary.json: one place picks each variant's latest run
    latest = latest_variants(load_runs([run3.path, run.path, run2.path]))
    assert {k: f.path.name for k, (f, _, _) in latest.items()} == {
        ("optimizers", "originals", "32x40", "sgd"): "20260101-000000",
        ("optimizers", "originals", "32x40", "adam"): "20260101-000002",
        ("optimizers", "originals", "60x80", "sgd"): "20260101-000001",
        ("optimizers", "originals", "60x80", "adam"): "20260101-000001"}
    text = report.read_text()
    assert "figures/optimizers_originals_32x40_20260101-000000/curves_optimizers.png" in text
    assert "figures/optimizers_originals_60x80_20260101-000001/curves_optimizers.png" in text
    # a report rewritten from fewer runs leaves no figure of the dropped run behind
    write_report([run2.path], tmp_path / "r3")
    assert sorted(p.parent.name for p in (tmp_path / "r3" / "figures").glob("*/*.png")) == \
        ["optimizers_originals_60x80_20260101-000001"]


def test_claims_compare_variants_across_run_folders(tmp_path):
    # one study step per variant: the adam-vs-sgd claim still gets its verdict
    sgd = _run_folder(tmp_path / "a", "20260101-000000", names=("sgd",))
    adam = _run_folder(tmp_path / "b", "20260101-000001", names=("adam",))
    text = write_report([sgd.path, adam.path], tmp_path / "results")[0].read_text()
    assert ('| optimizers | Adam: "reaching 60 % accuracy after 50 epochs" | 60 % after 50 epochs | 0.710 '
            in text and "| 1 epochs, 2 seeds, 32x40, originals | none | **not reached at this budget** |" in text)
    alone = write_report([adam.path], tmp_path / "alone")[0].read_text()
    assert "adam (lr 1e-3) reaches" not in alone


def test_header_splits_wall_time_by_study_part(tmp_path):
    # the study's layout is --out/<step>/<experiment>/<stamp>; a run elsewhere is not a study step
    step = _run_folder(tmp_path / "study" / "optimizers", "20260101-000000", protocol="cpu")
    screen = _run_folder(tmp_path / "screen", "20260101-000001", protocol="cpu")
    line = write_report([step.path, screen.path], tmp_path / "results")[0].read_text().splitlines()[2]
    assert "Training wall time of all runs: 4 s" in line
    assert "the study's experiments and its headline (the best recipe): 2 s" in line
    assert "runs outside `python -m experiments.study` (screens, single experiments): 2 s" in line


def test_experiment_modules_expose_the_runner_interface():
    from experiments import architecture, cell_crops, optimizers, recipe, vgg

    for m in (optimizers, regularization, architecture, vgg, recipe, cell_crops):
        assert isinstance(m.NAME, str) and m.EXPERIMENT.name == m.NAME and callable(m.variants)
    args = parse("--parts", "depth", "centering", "kernels", "init", "--kernel-counts", "16", "--kernel-sizes",
                 "5", module=architecture)
    names = [v.name for v in architecture.variants(args)]
    assert names == ["base", "expanded", "expanded_centered", "deep", "deep_init_keras", "deep_init_lecun",
                     "filters_16", "kernel_5x5"]


def test_cpu_protocol_gives_the_study_its_own_budgets():
    """The study's claims are about training length: the cpu protocol trains them as long as the study did."""
    from experiments import architecture, optimizers

    def plan(module, *flags):
        args = parse("--protocol", "cpu", *flags, module=module)
        return {v.name: (v.train.epochs, v.num_seeds)
                for v in module.variants(args)}

    assert plan(optimizers) == {"sgd": (50, 3), "rmsprop": (50, 3), "adam": (100, 3)}  # Adam: the overfitting run too
    reg = plan(regularization)
    assert reg.pop("overfit_200ep") == (200, 3)
    assert reg.pop("dropout_0") == (30, 8) and reg.pop("centering_on") == (30, 8)
    assert all(epochs == 30 and seeds == 3 for epochs, seeds in reg.values()), reg
    assert plan(architecture, "--parts", "centering") == {"expanded": (30, 3), "expanded_centered": (30, 3)}
    arch = plan(architecture, "--parts", "depth", "init", "kernels")
    assert all(v == (30, 3) for v in arch.values()), arch  # the architecture section at the study's budget


@pytest.mark.parametrize("protocol", ["quick", "cpu", "gpu"])
def test_cell_crops_train_on_cells_and_widen_only_the_colour_or_what_labs_differ_in(protocol):
    """cell_crops' variants see cell crops under every protocol (the crop is the experiment's point, not a flag to
    remember), and each differs from best in its colour augmentation (or, density, its input normalisation) alone."""
    from experiments import cell_crops

    args = parse("--protocol", protocol, module=cell_crops)
    assert args.crop == "cell"
    chosen = {v.name: v for v in select_variants(cell_crops.EXPERIMENT, args)}
    best = chosen.pop("best")
    assert best.model.input_norm == "image" and best.train.augment.rot90
    colour = ("hue", "saturation", "stain", "gamma", "contrast", "brightness")
    # what labs differ in: colour, framing, camera
    labs = colour + ("cast", "scale", "lowres", "blur", "heavy_p", "colour_p")
    for name, v in chosen.items():
        assert dataclasses.replace(v.model, input_norm=best.model.input_norm, grayscale=False) == best.model, name
        same = {f.name: getattr(best.train.augment, f.name) for f in dataclasses.fields(best.train.augment)
                if f.name not in (labs if name.startswith("labs") else colour)}
        assert dataclasses.replace(v.train.augment, **same) == v.train.augment, name
        assert dataclasses.replace(v.train, augment=best.train.augment) == best.train, name
        assert all(getattr(v.train.augment, f) >= getattr(best.train.augment, f) for f in colour), name
    assert chosen["saturation"].train.augment.saturation == 0.8 > best.train.augment.saturation
    assert chosen["density"].model.input_norm == "density"


@pytest.mark.parametrize("protocol", ["cpu", "gpu"])
def test_study_steps_name_variants_their_experiments_have(protocol, tmp_path):
    import importlib

    from experiments.protocol import ROBUSTNESS_OF, STEPS

    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"")  # the vgg variants only check that the file exists
    names = [s.name for s in STEPS[protocol]]
    for i, step in enumerate(STEPS[protocol]):
        module = importlib.import_module(f"experiments.{step.experiment}")
        flags = ["--protocol", protocol, *step.flags] + (["--weights", str(weights)] if step.needs_weights else [])
        chosen = select_variants(module.EXPERIMENT, parse(*flags, module=module))
        assert chosen, step.name
        if step.init_from is not None:  # fine-tunes a step that runs before it, and every variant needs that
            assert step.init_from in names[:i], step.name
            assert all(v.train.init_variant for v in chosen), step.name
        else:
            assert not any(v.train.init_variant for v in chosen), step.name
    assert set(ROBUSTNESS_OF) & set(names)


def test_init_from_flag_reaches_only_fine_tuning_variants():
    from experiments import recipe

    args = parse("--protocol", "cpu", "--init-from", "runs/x", "--variants", "best", "best_tuned", module=recipe)
    best, tuned = select_variants(recipe.EXPERIMENT, args)
    assert best.train.init_from is None and best.train.init_variant is None
    assert tuned.train.init_from == "runs/x" and tuned.train.init_variant == "best"
    assert tuned.train.epochs == 3 and best.train.epochs == 8  # the cpu protocol's recipe/tuned epochs
    with pytest.raises(UserError, match="needs init_variant"):
        TrainConfig(init_from="runs/x").validate()


def test_the_study_starts_a_new_run_where_the_latest_has_other_settings(tmp_path):
    """A committed run of an earlier protocol (other epochs) is not "finished" for today's step: the study starts a
    new run; a run recorded from today's plan resumes."""
    from experiments import optimizers
    from experiments.study import finished, planned, stale

    old = _run_folder(tmp_path, "20260101-000000")  # 1 epoch, seeds (0, 1): finished, but not the cpu plan
    plan = planned(optimizers, ["--protocol", "cpu", "--data-dir", "x"])
    assert plan["adam"].train.epochs == 100 and plan["sgd"].seeds == (0, 1, 2)
    problems = stale(old, plan)
    assert finished(old) and "sgd epochs 1 -> 50" in problems and "adam epochs 1 -> 100" in problems, problems
    now = RunFolder(tmp_path / "optimizers" / "20260101-000002")
    now.path.mkdir(parents=True)
    now.write_record(dataclasses.replace(old.record(), variants={"sgd": plan["sgd"]}))
    assert stale(now, plan) == []  # rmsprop and adam are missing: resuming adds them
    assert not finished(now, plan)


def test_a_run_records_its_command_without_the_machines_folders(tmp_path, monkeypatch):
    from bccd_jax.run import command_line

    monkeypatch.chdir(tmp_path)
    line = command_line(["--out", str(tmp_path / "runs" / "study"), "--data-dir", "/data/set", "--seeds", "3",
                         "--resume", "/elsewhere/run"], "experiments.optimizers")
    assert line.endswith("-m experiments.optimizers --out runs/study --data-dir $BCCD_DATA_DIR --seeds 3 "
                         "--resume /elsewhere/run")


def test_a_shipped_seed_carries_its_part_of_the_shift_suite(tmp_path):
    """RunFolder.robustness_of cuts robustness.json to the seeds a shipped model keeps (experiments.ship), and
    says None where the suite never saw the variant or one of the seeds."""
    folder = RunFolder(tmp_path)
    entry = {"seeds": [0, 1, 2], "clean": [0.8, 0.9, 0.7], "suite_mean": [0.6, 0.65, 0.5], "epoch": 3,
             "shifts": {"hue": {"unit": "degrees", "strengths": [10.0, 20.0],
                                "acc": [[0.7, 0.8, 0.6], [0.5, 0.6, 0.4]]}}}
    folder.write_robustness({"stride": 3, "n_images": 10, "fingerprint": "f", "variants": {"best": entry}})
    cut = folder.robustness_of("best", [1])
    assert cut["stride"] == 3 and list(cut["variants"]) == ["best"]
    one = cut["variants"]["best"]
    assert one["seeds"] == [1] and one["clean"] == [0.9] and one["suite_mean"] == [0.65]
    assert one["shifts"]["hue"]["acc"] == [[0.8], [0.6]] and one["shifts"]["hue"]["strengths"] == [10.0, 20.0]
    assert folder.robustness_of("best", [3]) is None and folder.robustness_of("other", [0]) is None
    assert RunFolder(tmp_path / "none").robustness_of("best", [0]) is None
