"""The study's claims and the verdict of a set of runs on each.

Verdicts compare means over seeds with a 95 % interval of the difference (Welch's; paired by
seed where the seeds share their initial weights): "supported" needs the interval to exclude
zero in the claimed direction, "contradicted" in the other, otherwise "inconclusive".
"""

from __future__ import annotations

import numpy as np

from bccd_jax.metrics import ACC_BOUNDS, mean_ci, paired_ci, welch_ci
from bccd_jax.run import VariantResult

ABOUT_85 = 0.80
"""Lowest accuracy still read as the study's "about 85 %" for the deep CNN."""
CHANCE_TRAIN_ACC = 0.40
"""A seed has left chance when its final training accuracy is at least this (the training set is balanced: 0.25)."""


def verdict_greater(a, b, paired: bool = False) -> tuple[str, str]:
    d, (lo, hi) = paired_ci(a, b) if paired else welch_ci(a, b)
    text = f"difference {d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}{', paired by seed' if paired else ''})"
    if lo > 0:
        return "supported", text
    if hi < 0:
        return "contradicted", text
    return "inconclusive", text


def _acc(r: VariantResult, split: str = "test") -> list[float]:
    return r.final_acc(split).tolist()


STUDY_EXPERIMENTS = ("optimizers", "regularization", "architecture", "recipe", "vgg")
"""The experiments that carry the study's claims."""


def claims_for(experiment: str, res: dict[str, VariantResult]) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) rows for the experiments the study made claims about."""
    out: list[tuple[str, str, str]] = []
    if experiment == "optimizers" and "sgd" in res:
        for adaptive in [a for a in ("adam", "rmsprop") if a in res]:
            v, e = verdict_greater(_acc(res[adaptive]), _acc(res["sgd"]), paired=True)
            out.append((f"{adaptive} (lr 1e-3) reaches a higher test accuracy than SGD (lr 0.01) at "
                        f"{res[adaptive].epochs} epochs", v, e))
    if experiment == "regularization":
        out += _regularization_claims(res)
    if experiment == "architecture":
        out += _architecture_claims(res)
    if experiment == "recipe" and "best" in res:
        out.append(_about_85("the deep CNN (best recipe) reaches about 85 % test accuracy", res["best"]))
        if "best_noaug" in res:
            v, e = verdict_greater(_acc(res["best"]), _acc(res["best_noaug"]), paired=True)
            out.append(("on-the-fly augmentation improves the deep CNN's test accuracy", v, e))
    if experiment == "vgg":
        for a, b, claim in (("frozen_blocks1-3", "scratch", "VGG16 with pretrained, frozen lower blocks beats VGG16 "
                             "from scratch"),
                            ("all_trainable", "scratch", "fine-tuning all VGG16 layers from pretrained weights "
                             "beats VGG16 from scratch")):
            if {a, b} <= set(res):
                v, e = verdict_greater(_acc(res[a]), _acc(res[b]))
                out.append((claim, v, e))
        for name, r in res.items():
            if r.group == "transfer" and name != "scratch":
                tr, te = r.curve("train_acc").mean(axis=1), r.curve("test_acc").mean(axis=1)
                gap = tr[-1] - te[-1]
                verdict = "supported" if tr[-1] >= 0.95 and gap >= 0.15 else "contradicted"
                out.append((f"VGG16 ({name}) learns the training set fast while the test set suffers from "
                            "massive overfitting", verdict,
                            f"train accuracy {tr[0]:.3f} after epoch 1, {tr[-1]:.3f} at the end; test {te[-1]:.3f} "
                            f"(gap {gap:+.3f}; supported when train >= 0.95 and the gap >= 0.15)"))
    return out


def _about_85(claim: str, r: VariantResult) -> tuple[str, str, str]:
    m, (lo, hi) = mean_ci(_acc(r), ACC_BOUNDS)
    # "about 85 %": supported when the whole interval is at or above 0.80, contradicted when it is below
    if lo >= ABOUT_85:
        v = "supported"
    else:
        v = "contradicted" if hi < ABOUT_85 else "inconclusive"
    return claim, v, f"{r.name}: {m:.3f} (95% CI {lo:.3f} to {hi:.3f}) over {len(r.seeds)} seeds, {r.epochs} epochs"


def _regularization_claims(res: dict[str, VariantResult]) -> list[tuple[str, str, str]]:
    out = []
    overfit = [k for k, r in res.items() if r.group == "overfit"]
    if overfit:
        r = res[overfit[0]]
        tl, ta = r.curve("test_loss").mean(axis=1), r.curve("train_acc").mean(axis=1)
        best = int(tl.argmin())
        rises, diverges = ta[-1] >= ta[best], tl[-1] > 1.2 * tl[best]
        out.append((f"training {len(tl)} epochs overfits: train accuracy keeps rising while test loss diverges",
                    "supported" if (rises and diverges) else "contradicted",
                    f"test loss min {tl[best]:.3f} at epoch {best + 1}, final {tl[-1]:.3f} "
                    f"({tl[-1] / max(tl[best], 1e-9):.1f}x); train acc {ta[best]:.3f} -> {ta[-1]:.3f}"))
    drops = {k: r for k, r in res.items() if r.group == "dropout"}
    if "dropout_0.2" in drops and len(drops) > 1:
        means = {k: float(np.mean(_acc(r))) for k, r in drops.items()}
        best = max(means, key=means.get)
        if best == "dropout_0.2":  # is 0.2 clearly ahead of the runner-up?
            rival = max((k for k in drops if k != best), key=means.get)
            v, e = verdict_greater(_acc(drops[best]), _acc(drops[rival]))
            v, e = ("supported" if v == "supported" else "inconclusive"), f"0.2 is best; vs runner-up {rival}: {e}"
        else:  # is the best rate clearly ahead of 0.2?
            v, e = verdict_greater(_acc(drops[best]), _acc(drops["dropout_0.2"]))
            v = "contradicted" if v == "supported" else "inconclusive"
            e = f"best rate is {best} ({means[best]:.3f}); {best} vs 0.2: {e}"
        out.append(("20 % dropout gives the best test accuracy", v, e))
    off = res.get("dropout_0")
    if off is not None and "batchnorm_on" in res:
        v, e = verdict_greater(_acc(res["batchnorm_on"]), _acc(off), paired=True)
        out.append(("batch normalization improves test accuracy", v, e))
    if off is not None and "batchnorm_on_m0.9" in res:
        v, e = verdict_greater(_acc(res["batchnorm_on_m0.9"]), _acc(off), paired=True)
        out.append(("batch normalization improves test accuracy (running-statistics momentum 0.9 instead "
                    "of Keras' 0.99)", v, e))
    if off is not None and "centering_on" in res:
        on, base = np.asarray(_acc(res["centering_on"])), np.asarray(_acc(off))
        n = min(on.size, base.size)
        paired = on[:n] - base[:n]  # same seeds, same initial weights
        m, (lo, hi) = mean_ci(paired)
        depends = 0 < (paired > 0).mean() < 1 and lo <= 0 <= hi
        out.append(("the effect of feature centering depends on the initialization (seed)",
                    "supported" if depends else "contradicted",
                    f"centering helps in {int((paired > 0).sum())} of {n} seeds, hurts in {int((paired < 0).sum())}; "
                    f"paired difference {m:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}), per-seed range "
                    f"{paired.min():+.3f} to {paired.max():+.3f}"))
    return out


def _architecture_claims(res: dict[str, VariantResult]) -> list[tuple[str, str, str]]:
    out = []
    if "deep" in res and "base" in res:
        v, e = verdict_greater(_acc(res["deep"]), _acc(res["base"]), paired=True)
        out.append(("the deep CNN beats the base CNN", v, e))
    if {"expanded", "expanded_centered"} <= set(res):
        v, e = verdict_greater(_acc(res["expanded_centered"]), _acc(res["expanded"]), paired=True)
        out.append(("feature centering improves the expanded CNN", v, e))
    inits = {k: r for k, r in res.items() if r.group == "init"}
    if len(inits) > 1:
        left = {k: int((r.final_acc("train") >= CHANCE_TRAIN_ACC).sum()) for k, r in inits.items()}
        spread = any(0 < left[k] < len(inits[k].seeds) for k in inits) or len(set(left.values())) > 1
        out.append(("the deep CNN's result depends on the initialization",
                    "supported" if spread else "contradicted",
                    "; ".join(f"{k}: {left[k]} of {len(r.seeds)} seeds leave chance (train acc >= "
                              f"{CHANCE_TRAIN_ACC}), TEST {np.mean(_acc(r)):.3f}" for k, r in inits.items())))
    return out
