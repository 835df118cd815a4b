"""The study's claims: each verdict follows from the measurement and its threshold, and a claim whose premise
the run never reached says so instead of contradicting it."""

from __future__ import annotations

import numpy as np

from bccd_jax.run import VariantResult
from experiments.claims import LATE, study_claims


def result(name, group, test_acc, train_acc=None, test_loss=None, train_loss=None):
    """A finished variant from [epochs, seeds] curves."""
    test_acc = np.asarray(test_acc, float)
    e, s = test_acc.shape
    curves = {"test_acc": test_acc,
              "train_acc": np.asarray(train_acc if train_acc is not None else test_acc + 0.05, float),
              "test_loss": np.asarray(test_loss if test_loss is not None else np.full((e, s), 1.0), float),
              "train_loss": np.asarray(train_loss if train_loss is not None else np.full((e, s), 1.0), float)}
    history = {"epoch": list(range(1, e + 1)), **{k: v.tolist() for k, v in curves.items()}}
    return VariantResult(name, {"group": group, "seeds": list(range(s)), "history": history})


def ramp(end, epochs, seeds=3, start=0.25, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(start, end, epochs)[:, None] + np.linspace(-0.01, 0.01, seeds)[None]
    return base + noise * rng.standard_normal((epochs, seeds))


def verdicts(experiment, res):
    return [(r.quote, r.verdict) for r in study_claims(experiment, res, "augmented", "60x80")]


def test_optimizer_claims_need_the_study_budget():
    short = {n: result(n, "optimizers", ramp(end, 5)) for n, end in (("sgd", 0.3), ("rmsprop", 0.45), ("adam", 0.5))}
    rows = dict(verdicts("optimizers", short))
    assert rows['Adam: "reaching 60 % accuracy after 50 epochs"'] == "not reached at this budget"
    full = {n: result(n, "optimizers", ramp(end, 50)) for n, end in (("sgd", 0.3), ("rmsprop", 0.6), ("adam", 0.64))}
    rows = dict(verdicts("optimizers", full))
    assert rows['Adam: "reaching 60 % accuracy after 50 epochs"'] == "supported"
    assert rows['SGD: "consistent ... but slow and after 50 epochs has unimpressive accuracy"'] == "supported"
    assert rows['RMSProp and Adam: "faster convergence"'] == "supported"
    low = {**full, "adam": result("adam", "optimizers", ramp(0.40, 50))}
    assert dict(verdicts("optimizers", low))['Adam: "reaching 60 % accuracy after 50 epochs"'] == "contradicted"


def test_batch_norm_is_judged_by_its_instability():
    epochs, wobble = 30, np.tile([[0.15], [-0.15]], (15, 3))
    off = result("dropout_0", "dropout", ramp(0.6, epochs))
    on = result("batchnorm_on", "batchnorm", ramp(0.6, epochs) + wobble * np.array([1.0, 0.8, 1.2]))
    (quote, verdict), = verdicts("regularization", {"dropout_0": off, "batchnorm_on": on})
    assert "instability" in quote and verdict == "supported"
    steady = result("batchnorm_on", "batchnorm", ramp(0.6, epochs) + 0.001)
    assert verdicts("regularization", {"dropout_0": off, "batchnorm_on": steady})[0][1] != "supported"
    short = {"dropout_0": result("dropout_0", "dropout", ramp(0.5, LATE)),
             "batchnorm_on": result("batchnorm_on", "batchnorm", ramp(0.3, LATE))}
    assert verdicts("regularization", short)[0][1] == "not reached at this budget"


def test_vgg_overfitting_needs_a_learnt_training_set():
    def vgg(train_end, test_end):
        return {"frozen_blocks1-4": result("frozen_blocks1-4", "transfer", ramp(test_end, 20),
                                           train_acc=ramp(train_end, 20))}
    assert verdicts("vgg", vgg(0.80, 0.5))[0][1] == "not reached at this budget"
    assert verdicts("vgg", vgg(0.99, 0.6))[0][1] == "supported"
    assert verdicts("vgg", vgg(0.99, 0.92))[0][1] == "contradicted"
    # a seed stuck at chance (train 0.25 throughout): the premise and the gap are those of the seeds that learnt
    train, test = ramp(0.99, 20), ramp(0.65, 20)
    train[:, 0], test[:, 0] = 0.25, 0.25
    (quote, verdict), = verdicts("vgg", {"frozen_blocks1-3": result("frozen_blocks1-3", "transfer", test, train)})
    assert verdict == "supported"
    (row,) = study_claims("vgg", {"frozen_blocks1-3": result("frozen_blocks1-3", "transfer", test, train)},
                          "augmented", "60x80")
    assert "1 of 3 never left chance" in row.ours and "all seeds: train 0.747" in row.ours
    train[:, 1:] = ramp(0.90, 20)[:, 1:]  # the learning seeds short of 0.95: not reached, whatever the stuck one
    assert verdicts("vgg", {"x": result("x", "transfer", test, train)})[0][1] == "not reached at this budget"


def test_centering_depends_on_the_initialization():
    epochs = 30
    off_train = np.full((epochs, 4), 0.9)
    off_train[:5] = 0.3  # every uncentred seed converges at epoch 6
    on_train = off_train.copy()
    on_train[:5, 0] = 0.9  # seed 0: centering converges at epoch 1
    on_train[:, 1] = 0.3  # seed 1: centering never converges
    res = {"dropout_0": result("dropout_0", "dropout", ramp(0.5, epochs, 4), train_acc=off_train),
           "centering_on": result("centering_on", "centering", ramp(0.5, epochs, 4), train_acc=on_train)}
    assert verdicts("regularization", res)[0][1] == "supported"
    res["centering_on"] = result("centering_on", "centering", ramp(0.5, epochs, 4), train_acc=np.full((epochs, 4), 0.9))
    assert verdicts("regularization", res)[0][1] == "contradicted"  # faster in every seed: no dependence


def test_overfitting_run_needs_100_epochs_and_detects_divergence():
    loss = np.concatenate([np.linspace(1.2, 0.8, 10), np.linspace(0.8, 2.0, 190)])[:, None].repeat(3, 1)
    r = result("overfit_200ep", "overfit", ramp(0.6, 200, noise=0.01), train_acc=ramp(0.99, 200), test_loss=loss)
    rows = dict(verdicts("regularization", {"overfit_200ep": r}))
    assert rows['"training accuracy keeps improving" while the "test loss diverges"'] == "supported"
    short = result("overfit_15ep", "overfit", ramp(0.6, 15), test_loss=loss[:15])
    assert {v for _, v in verdicts("regularization", {"overfit_15ep": short})} == {"not reached at this budget"}


def test_an_adam_run_past_50_epochs_is_also_the_overfitting_run():
    """The cpu protocol's Adam runs 100 epochs: the optimizers are compared at epoch 50 (spreads too), and its
    whole curve answers the overfitting claims."""
    loss = np.concatenate([np.linspace(1.2, 0.8, 10), np.linspace(0.8, 2.0, 90)])[:, None].repeat(3, 1)
    adam_acc = np.concatenate([ramp(0.64, 50), np.full((50, 3), 0.2)])  # after epoch 50 Adam collapses: nothing of it may reach the epoch-50 comparison
    res = {n: result(n, "optimizers", ramp(end, 50)) for n, end in (("sgd", 0.3), ("rmsprop", 0.6))}
    res["adam"] = result("adam", "optimizers", adam_acc, train_acc=ramp(0.99, 100), test_loss=loss)
    rows = {r.quote: r for r in study_claims("optimizers", res, "augmented", "60x80")}
    assert rows['Adam: "reaching 60 % accuracy after 50 epochs"'].verdict == "supported"
    assert rows['Adam: "the superior of the three", and stable'].verdict == "supported"
    assert "epochs 41-50" in rows['SGD: "consistent ... but slow and after 50 epochs has unimpressive accuracy"'].ours
    overfit = rows['"training accuracy keeps improving" while the "test loss diverges"']
    assert overfit.verdict == "supported" and overfit.budget.startswith("100 epochs, 3 seeds")
    assert not any("test loss diverges" in q for q in
                   (r.quote for r in study_claims("optimizers", {**res, "adam": result("adam", "optimizers",
                                                                                         ramp(0.64, 50))},
                                                  "augmented", "60x80")))
