"""The study's claims: each verdict follows from the measurement and its threshold, a claim whose premise the run
never reached says so instead of contradicting it, seeds that never left chance are judged by one rule, and two
variants are paired by seed id."""

from __future__ import annotations

import numpy as np

from bccd_jax.run import VariantResult
from experiments.claims import LATE, claims_over_sizes, study_claims
from experiments.claims.core import fmt_ci, learning_view, paired


def result(name, group, test_acc, train_acc=None, test_loss=None, train_loss=None, seeds=None):
    """A finished variant from [epochs, seeds] curves."""
    test_acc = np.asarray(test_acc, float)
    e, s = test_acc.shape
    curves = {"test_acc": test_acc,
              "train_acc": np.asarray(train_acc if train_acc is not None else test_acc + 0.05, float),
              "test_loss": np.asarray(test_loss if test_loss is not None else np.full((e, s), 1.0), float),
              "train_loss": np.asarray(train_loss if train_loss is not None else np.full((e, s), 1.0), float)}
    history = {"epoch": list(range(1, e + 1)), **{k: v.tolist() for k, v in curves.items()}}
    return VariantResult(name, {"group": group, "seeds": list(seeds if seeds is not None else range(s)),
                                "history": history})


def ramp(end, epochs, seeds=3, start=0.25, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(start, end, epochs)[:, None] + np.linspace(-0.01, 0.01, seeds)[None]
    return base + noise * rng.standard_normal((epochs, seeds))


def rows(experiment, res, size="60x80"):
    return {(r.quote, r.figure): r for r in study_claims({experiment: res}, "augmented", size)}


def verdicts(experiment, res):
    return [(r.quote, r.verdict) for r in study_claims({experiment: res}, "augmented", "60x80")]


def by_quote(experiment, res):
    return {q: v for q, v in verdicts(experiment, res)}


def test_optimizer_claims_need_the_study_budget():
    short = {n: result(n, "optimizers", ramp(end, 5)) for n, end in (("sgd", 0.4), ("rmsprop", 0.45), ("adam", 0.5))}
    adam_60 = 'Adam: "reaching 60 % accuracy after 50 epochs"'
    assert by_quote("optimizers", short)[adam_60] == "not reached at this budget"
    full = {n: result(n, "optimizers", ramp(end, 50)) for n, end in (("sgd", 0.4), ("rmsprop", 0.6), ("adam", 0.64))}
    got = by_quote("optimizers", full)
    assert got['Adam: "reaching 60 % accuracy after 50 epochs"'] == "supported"
    assert got['SGD: "consistent ... but slow and after 50 epochs has unimpressive accuracy"'] == "supported"
    assert got['RMSProp and Adam: "faster convergence"'] == "supported"
    assert got['Adam "appears to be the superior of the three"'] == "supported"
    low = {**full, "adam": result("adam", "optimizers", ramp(0.40, 50))}
    assert by_quote("optimizers", low)['Adam: "reaching 60 % accuracy after 50 epochs"'] == "contradicted"


def test_the_adaptive_optimizers_stability_is_their_late_spread_against_sgds():
    wobble = np.tile([[0.04], [-0.04]], (25, 3))
    res = {"sgd": result("sgd", "optimizers", ramp(0.5, 50) + wobble * np.array([1.0, 1.2, 0.8])),
           "rmsprop": result("rmsprop", "optimizers", ramp(0.6, 50)),
           "adam": result("adam", "optimizers", ramp(0.62, 50))}
    assert by_quote("optimizers", res)['RMSProp and Adam: "Another advantage of these is their stability"'] == \
        "supported"
    res["sgd"] = result("sgd", "optimizers", ramp(0.5, 50))
    assert by_quote("optimizers", res)['RMSProp and Adam: "Another advantage of these is their stability"'] != \
        "supported"


def test_batch_norm_is_judged_by_its_instability():
    epochs, wobble = 30, np.tile([[0.15], [-0.15]], (15, 3))
    off = result("dropout_0", "dropout", ramp(0.6, epochs))
    on = result("batchnorm_on", "batchnorm", ramp(0.6, epochs) + wobble * np.array([1.0, 0.8, 1.2]))
    (quote, verdict), = verdicts("regularization", {"dropout_0": off, "batchnorm_on": on})
    assert "instability" in quote and verdict == "supported"
    steady = result("batchnorm_on", "batchnorm", ramp(0.6, epochs) + 0.001)
    assert verdicts("regularization", {"dropout_0": off, "batchnorm_on": steady})[0][1] != "supported"
    short = {"dropout_0": result("dropout_0", "dropout", ramp(0.5, LATE)),
             "batchnorm_on": result("batchnorm_on", "batchnorm", ramp(0.4, LATE))}
    assert verdicts("regularization", short)[0][1] == "not reached at this budget"


def test_batch_norm_counts_seeds_that_learn_the_training_set_and_end_at_chance_on_test():
    epochs = 30
    off = result("dropout_0", "dropout", ramp(0.6, epochs))
    test = ramp(0.6, epochs)
    test[-1, :2] = 0.25  # two seeds collapse on TEST while their training accuracy is near 1
    on = result("batchnorm_on", "batchnorm", test, train_acc=ramp(0.99, epochs))
    (row,) = study_claims({"regularization": {"dropout_0": off, "batchnorm_on": on}}, "augmented", "60x80")
    assert "2 of 3 seeds end below 0.4 on TEST" in row.ours and row.stuck == ""


def test_vgg_overfitting_needs_a_learnt_training_set():
    def vgg(train_end, test_end):
        return {"frozen_blocks1-4": result("frozen_blocks1-4", "transfer", ramp(test_end, 20),
                                           train_acc=ramp(train_end, 20))}
    assert verdicts("vgg", vgg(0.80, 0.5))[0][1] == "not reached at this budget"
    assert verdicts("vgg", vgg(0.99, 0.6))[0][1] == "supported"
    assert verdicts("vgg", vgg(0.99, 0.92))[0][1] == "contradicted"


def test_a_seed_that_never_left_chance_is_judged_both_ways_and_counted():
    """One rule for every row: judged over all seeds and over those that left chance, both verdicts shown where
    they differ, the stuck seeds counted."""
    train, test = ramp(0.99, 20), ramp(0.65, 20)
    train[:, 0], test[:, 0] = 0.25, 0.25
    (row,) = study_claims({"vgg": {"frozen_blocks1-3": result("frozen_blocks1-3", "transfer", test, train)}},
                          "augmented", "60x80")
    assert row.stuck == "frozen_blocks1-3 1 of 3"
    assert row.verdict == "supported over the seeds that left chance; not reached at this budget over all seeds"
    assert row.ours.startswith("all seeds: train 0.747") and "over the seeds that left chance: train 0.995" in row.ours
    # no stuck seed: one verdict, nothing counted
    (row,) = study_claims({"vgg": {"x": result("x", "transfer", ramp(0.65, 20), ramp(0.99, 20))}}, "augmented", "60x80")
    assert row.stuck == "" and row.verdict == "supported" and not row.ours.startswith("all seeds")


def test_the_stuck_rule_reaches_paired_rows_through_the_seed_ids():
    """A seed stuck in one arm of a paired test leaves the pair over the learning seeds; the other arm's same seed
    goes with it (pairing by id)."""
    epochs = 30
    on_test, off_test = ramp(0.78, epochs), ramp(0.75, epochs)
    off_train = ramp(0.9, epochs)
    off_test[:, 2], off_train[:, 2] = 0.25, 0.25  # the uncentred seed 2 is a constant predictor
    res = {"expanded_centered": result("expanded_centered", "centering", on_test, train_acc=ramp(0.95, epochs)),
           "expanded": result("expanded", "centering", off_test, train_acc=off_train)}
    got = {r.quote: r for r in study_claims({"architecture": res}, "augmented", "60x80")}
    same = got['"and I achieve roughly the same accuracy"']
    assert same.stuck == "expanded 1 of 3"
    assert "higher in 3 of 3 seeds" in same.ours and "higher in 2 of 2 seeds" in same.ours
    assert learning_view({"architecture": res})["architecture"]["expanded"].seeds == [0, 1]


def test_paired_differences_pair_seed_ids_not_positions():
    a = result("a", "g", np.array([[0.5, 0.6, 0.7]]), seeds=[0, 1, 2])
    b = result("b", "g", np.array([[0.69, 0.49, 0.59]]), seeds=[2, 0, 1])  # the same seeds in another order
    d = paired(a, a.final_acc(), b, b.final_acc())
    assert d.n == 3 and d.higher == 3 and abs(d.diff - 0.01) < 1e-9
    c = result("c", "g", np.array([[0.4, 0.4]]), seeds=[1, 5])
    d = paired(a, a.final_acc(), c, c.final_acc())
    assert d.n == 1 and abs(d.diff - 0.2) < 1e-9  # only seed 1 is in both


def test_clipped_intervals_are_marked():
    assert fmt_ci([0.25, 0.95, 0.96]).endswith(", clipped)")
    assert "clipped" not in fmt_ci([0.80, 0.81, 0.82])


def test_centering_depends_on_the_initialization():
    epochs = 30
    off_train = np.full((epochs, 4), 0.9)
    off_train[:5] = 0.3  # every uncentred seed converges at epoch 6
    on_train = off_train.copy()
    on_train[:5, 0] = 0.9  # seed 0: centering converges at epoch 1
    on_train[:, 1] = 0.3  # seed 1: centering never converges
    res = {"dropout_0": result("dropout_0", "dropout", ramp(0.5, epochs, 4), train_acc=off_train),
           "centering_on": result("centering_on", "centering", ramp(0.5, epochs, 4), train_acc=on_train)}
    # the seed that centering kept at chance is the claim's subject: over the seeds that left chance it is gone
    assert verdicts("regularization", res)[0][1] == \
        "contradicted over the seeds that left chance; supported over all seeds"
    res["centering_on"] = result("centering_on", "centering", ramp(0.5, epochs, 4), train_acc=np.full((epochs, 4), 0.9))
    assert verdicts("regularization", res)[0][1] == "contradicted"  # faster in every seed: no dependence
    assert "95 % upper bound on the rate of prevention: 60%" in study_claims(
        {"regularization": res}, "augmented", "60x80")[0].ours  # 0 of 4: the exact interval reaches 60 %


def test_overfitting_run_needs_100_epochs_and_detects_divergence():
    loss = np.concatenate([np.linspace(1.2, 0.8, 10), np.linspace(0.8, 2.0, 190)])[:, None].repeat(3, 1)
    r = result("overfit_200ep", "overfit", ramp(0.6, 200, noise=0.01), train_acc=ramp(0.99, 200), test_loss=loss)
    got = by_quote("regularization", {"overfit_200ep": r})
    assert got['"our training accuracy continues to improve" while "The loss of our test data ... begins to diverge"'] \
        == "supported"
    short = result("overfit_15ep", "overfit", ramp(0.6, 15), test_loss=loss[:15])
    assert {v for _, v in verdicts("regularization", {"overfit_15ep": short})} == {"not reached at this budget"}


def test_test_accuracy_stops_improving_and_wobbles_after_the_test_loss_minimum():
    """The windows lie before and after the TEST-loss minimum: a curve that keeps rising after it contradicts
    "stops improving"; one that levels off and wobbles there supports the claim."""
    epochs = 100
    loss = np.concatenate([np.linspace(1.2, 0.8, 10), np.linspace(0.8, 2.0, 90)])[:, None].repeat(3, 1)
    flat = np.concatenate([np.linspace(0.3, 0.55, 10), np.full(90, 0.55)])[:, None].repeat(3, 1)
    flat[10:] += np.tile([[0.05], [-0.05]], (45, 3)) * np.array([1.0, 1.1, 0.9])
    quote = 'the test accuracy "stops improving and degrades in stability"'
    r = result("overfit", "overfit", flat, train_acc=ramp(0.99, epochs), test_loss=loss)
    assert by_quote("regularization", {"overfit": r})[quote] == "supported"
    rising = result("overfit", "overfit", ramp(0.9, epochs), train_acc=ramp(0.99, epochs), test_loss=loss)
    assert by_quote("regularization", {"overfit": rising})[quote] == "contradicted"


def test_an_adam_run_past_50_epochs_is_also_the_overfitting_run():
    """The cpu protocol's Adam runs 100 epochs: the optimizers are compared at epoch 50 (spreads too), and its
    whole curve answers the overfitting claims."""
    loss = np.concatenate([np.linspace(1.2, 0.8, 10), np.linspace(0.8, 2.0, 90)])[:, None].repeat(3, 1)
    adam_acc = np.concatenate([ramp(0.64, 50), np.full((50, 3), 0.2)])  # collapses after epoch 50: unseen at 50
    res = {n: result(n, "optimizers", ramp(end, 50)) for n, end in (("sgd", 0.4), ("rmsprop", 0.6))}
    res["adam"] = result("adam", "optimizers", adam_acc, train_acc=ramp(0.99, 100), test_loss=loss)
    got = {r.quote: r for r in study_claims({"optimizers": res}, "augmented", "60x80")}
    assert got['Adam: "reaching 60 % accuracy after 50 epochs"'].verdict == "supported"
    assert got['Adam "appears to be the superior of the three"'].verdict == "supported"
    assert "epochs 41-50" in got['SGD: "consistent ... but slow and after 50 epochs has unimpressive accuracy"'].ours
    overfit = next(r for q, r in got.items() if q.startswith('"our training accuracy continues to improve"'))
    assert overfit.verdict == "supported" and overfit.budget.startswith("100 epochs, 3 seeds")
    fifty = {**res, "adam": result("adam", "optimizers", ramp(0.64, 50))}
    assert not any("diverge" in r.quote for r in study_claims({"optimizers": fifty}, "augmented", "60x80"))


def architecture_study(deep_end=0.8, keras_stuck=True, epochs=30):
    base = result("adam", "optimizers", ramp(0.5, epochs))
    arch = {"expanded": result("expanded", "centering", ramp(0.7, epochs)),
            "deep": result("deep", "init", ramp(deep_end, epochs))}
    for name, end in (("filters_16", 0.49), ("filters_64", 0.51), ("kernel_5x5", 0.5), ("kernel_7x7", 0.505)):
        arch[name] = result(name, "kernels", ramp(end, epochs))
    if keras_stuck:
        arch["deep_init_keras"] = result("deep_init_keras", "init", np.full((epochs, 3), 0.25),
                                         train_acc=np.full((epochs, 3), 0.25))
    return {"optimizers": {"adam": base}, "architecture": arch}


def test_the_architecture_claims():
    got = {(r.quote, r.figure): r for r in study_claims(architecture_study(), "augmented", "60x80")}
    stark = next(r for (q, _), r in got.items() if "stark improvement" in q)
    assert stark.verdict == "supported" and stark.budget.startswith("30 epochs")
    kernels = next(r for (q, _), r in got.items() if "many models performed similarly" in q)
    assert "different" in kernels.ours
    deep = {f: r for (q, f), r in got.items() if "proved to be the most accurate" in q}
    he = next(r for f, r in deep.items() if "he_normal" in f)
    keras = next(r for f, r in deep.items() if "glorot_uniform" in f)
    assert "TEST 0.800" in he.ours
    assert keras.stuck == "deep_init_keras 3 of 3" and keras.verdict.startswith("contradicted over all seeds")
    headline = [r for (q, _), r in got.items() if "roughly 85%" in q]
    assert [r.verdict.split(" ")[0] for r in headline] == ["contradicted", "inconclusive"] or \
        [r.verdict.split(" ")[0] for r in headline][0] == "contradicted"
    short = {(r.quote, r.figure): r for r in study_claims(architecture_study(epochs=3), "augmented", "60x80")}
    assert all(r.verdict.startswith("not reached at this budget") for (q, _), r in short.items()
               if "stark" in q or "most accurate" in q or "performed similarly" in q)


def test_vgg_against_the_deep_cnn_and_against_a_constant_scratch():
    study = architecture_study()
    scratch = result("scratch", "transfer", np.full((2, 2), 0.25), train_acc=np.full((2, 2), 0.25))
    scratch.raw["final"] = {"test": {"confusion_matrix_summed_over_seeds": [[0, 5, 0, 0]] * 4}}
    study["vgg"] = {"frozen_blocks1-4": result("frozen_blocks1-4", "transfer", ramp(0.55, 9),
                                               train_acc=ramp(0.97, 9)), "scratch": scratch}
    got = {r.quote: r for r in study_claims(study, "augmented", "60x80")}
    overkill = got['"The capacity of VGG was overkill for this problem and hampered learning"']
    assert overkill.verdict == "supported"  # 0.55 against the deep CNN's 0.80
    faster = got['VGG16 (frozen_blocks1-4) "did accelerate and increase learning on the training set"']
    assert "a constant predictor" in faster.ours and faster.stuck == "scratch 2 of 2"


def test_a_claim_at_two_image_sizes_is_one_row_that_says_whether_the_size_decides_it():
    def optimizers(adam_end):
        return {"optimizers": {n: result(n, "optimizers", ramp(end, 50)) for n, end in
                               (("sgd", 0.4), ("rmsprop", 0.6), ("adam", adam_end))}}
    merged = claims_over_sizes({("augmented", "120x160"): optimizers(0.64), ("augmented", "60x80"): optimizers(0.45)})
    adam = next(r for r in merged if r.quote == 'Adam: "reaching 60 % accuracy after 50 epochs"')
    assert adam.verdict == "contradicted at 60x80; supported at 120x160: depends on the image size"
    assert adam.ours.startswith("60x80: ") and "; 120x160: " in adam.ours
    sgd_rows = [r for r in merged if r.quote.startswith("SGD")]
    assert len(sgd_rows) == 1 and sgd_rows[0].verdict == "supported at 60x80 and 120x160"


def test_the_conclusion_row_gives_the_wall_time_per_seed_and_epoch_of_a_resumed_run():
    from experiments.claims.architecture import wall_per_seed_epoch

    r = result("deep", "depth", ramp(0.8, 30))
    r.raw.update(wall_s=900.0, wall_s_over_resumes=True)  # 900 s summed over the run's resumed segments
    assert wall_per_seed_epoch(r) == 10.0
