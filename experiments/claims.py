"""The study's claims in its own words, each with the test that decides it, fixed before any run.

Every row quotes the study, names the measurement and its threshold (the constants below), the
budget it ran at (epochs, seeds, image size, data set) and a verdict:

- "supported" / "contradicted": the measurement passes / fails the claim's threshold;
- "inconclusive": the 95 % interval straddles the threshold;
- "not reached at this budget": the claim's premise never held in the run (the training set was
  never learnt, the model never began to overfit, the run is shorter than the study's), so the
  run cannot test it; the row says what was reached.

Stability is measured as stability: the spread of each seed's TEST accuracy (or loss) over its
last epochs, the seeds that never leave chance, and the epochs a seed needs to reach a level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bccd_jax.config import LEFT_CHANCE, learning_train_acc
from bccd_jax.config import left_chance as seeds_left_chance
from bccd_jax.metrics import ACC_BOUNDS, mean_ci, paired_ci, welch_ci
from bccd_jax.run import VariantResult

STUDY_EXPERIMENTS = ("optimizers", "regularization", "architecture", "recipe", "vgg")
"""The experiments that carry the study's claims."""
STUDY_EPOCHS = 50
"""The study's budget for the optimizers and the regularisation experiments."""
OVERFIT_MIN_EPOCHS = 100
"""The overfitting claims need at least this many epochs (the study ran 200)."""
ABOUT = 0.05
"""A study figure "about X %" is reached when our 95 % interval reaches X - ABOUT."""
SIXTY = 0.60
ABOUT_85 = 0.85
CONVERGED = 0.60
"""A seed has converged when its training accuracy reaches this (the training set is balanced: chance 0.25)."""
CHANCE = LEFT_CHANCE
"""A seed has left chance when its best training accuracy reaches this (the library's, which also stops runs)."""
LEVEL = 0.50
"""The TEST accuracy whose first epoch measures the speed of convergence of the optimizers."""
LATE = 10
"""Epochs at the end of a run over which each seed's spread (standard deviation) measures stability."""
STABILITY_MIN_EPOCHS = 3 * LATE
"""A stability claim needs runs this long: the last LATE epochs then lie past the base CNN's overfitting point."""
DIVERGES = 1.5
"""TEST loss diverges when its final value is at least this multiple of its minimum."""
OVERFITS = 1.2
"""A run has begun to overfit when its final mean TEST loss is at least this multiple of its minimum."""
ROUGHLY_OPTIMAL = 0.02
"""A dropout rate is "roughly optimal" when the best rate's mean TEST accuracy is ahead of it by at most this."""
ROUGHLY_SAME = 0.05
"""Two accuracies are "roughly the same" when the 95 % interval of their difference lies within +-this."""
LEARNT = 0.95
"""VGG16's training set counts as learnt at this training accuracy."""
MASSIVE_GAP = 0.15
"""Train minus TEST accuracy of at least this is "massive overfitting"."""
STOP_EPOCHS = (50, 100)
"""The study's advice: stop "at around 50 to 100 epochs"."""


@dataclass(frozen=True)
class ClaimRow:
    """One claim of the study, tested."""

    experiment: str
    quote: str  # the study's words, brief
    figure: str  # the study's figure, as it gives it ("60 % after 50 epochs"), or its qualitative statement
    test: str  # what is measured and the threshold that decides it
    ours: str  # the measurement, with its 95 % interval where there is one
    budget: str  # epochs, seeds, image size, data set
    verdict: str


def budget_of(rs: Sequence[VariantResult], dataset: str, size: str) -> str:
    epochs = sorted({r.epochs for r in rs})
    seeds = sorted({len(r.seeds) for r in rs})
    join = lambda xs: "/".join(map(str, xs))  # noqa: E731
    return f"{join(epochs)} epochs, {join(seeds)} seeds, {size}, {dataset}"


# ----------------------------------------------------------------------------- measurements


def acc_at(r: VariantResult, epoch: int, split: str = "test") -> np.ndarray:
    """Per-seed accuracy after `epoch` (1-based)."""
    return r.curve(f"{split}_acc")[epoch - 1]


def late_spread(r: VariantResult, key: str = "test_acc", window: int = LATE, end: int | None = None) -> np.ndarray:
    """Per seed: the standard deviation of `key` over the `window` epochs up to epoch `end` (default: the last)."""
    end = r.epochs if end is None else end
    return r.curve(key)[max(end - window, 0):end].std(axis=0)


def epochs_to(r: VariantResult, level: float, key: str = "test_acc") -> np.ndarray:
    """Per seed: the first epoch (1-based) at which `key` reaches `level`; inf where it never does."""
    c = r.curve(key) >= level
    return np.where(c.any(axis=0), c.argmax(axis=0) + 1.0, np.inf)


def left_chance(r: VariantResult) -> np.ndarray:
    """Per seed: whether its training accuracy ever reached CHANCE (bccd_jax.config.left_chance)."""
    return np.asarray(seeds_left_chance(r.history["train_acc"]), bool)


def loss_rise(r: VariantResult) -> np.ndarray:
    """Per seed: final TEST loss over its minimum (1: never rose)."""
    tl = r.curve("test_loss")
    return tl[-1] / np.maximum(tl.min(axis=0), 1e-9)


def overfit_point(r: VariantResult) -> tuple[int, float]:
    """(epoch of the mean TEST-loss minimum, final mean TEST loss over that minimum)."""
    tl = r.curve("test_loss").mean(axis=1)
    return int(tl.argmin()) + 1, float(tl[-1] / max(tl.min(), 1e-9))


def fmt_ci(values) -> str:
    m, (lo, hi) = mean_ci(np.asarray(values, float), ACC_BOUNDS)
    return f"{m:.3f} ({lo:.3f}-{hi:.3f})"


def fmt_epochs(e: np.ndarray) -> str:
    return ", ".join("never" if not np.isfinite(x) else str(int(x)) for x in e)


def greater(a, b, paired: bool) -> tuple[str, float, float, float]:
    """(verdict that a > b, difference, 95 % interval) by Welch's t or paired by seed."""
    d, (lo, hi) = paired_ci(a, b) if paired else welch_ci(a, b)
    return ("supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"), d, lo, hi


def diff_text(d: float, lo: float, hi: float, paired: bool) -> str:
    return f"{d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}{', paired by seed' if paired else ''})"


def reaches(values, figure: float) -> str:
    """Does the mean with its interval reach "about `figure`"?"""
    _, (lo, hi) = mean_ci(np.asarray(values, float), ACC_BOUNDS)
    return "supported" if lo >= figure - ABOUT else "contradicted" if hi < figure - ABOUT else "inconclusive"


def combine(verdicts: Sequence[str]) -> str:
    """All parts of a claim must hold: any contradicted part contradicts it, any open part leaves it open."""
    if "not reached at this budget" in verdicts:
        return "not reached at this budget"
    if "contradicted" in verdicts:
        return "contradicted"
    return "supported" if all(v == "supported" for v in verdicts) else "inconclusive"


# ----------------------------------------------------------------------------- the claims per experiment


Row = Callable[..., ClaimRow]


def optimizer_claims(res: dict[str, VariantResult], row: Row) -> list[ClaimRow]:
    adaptive = [(n, res[n]) for n in ("rmsprop", "adam") if n in res]
    if "sgd" not in res or not adaptive:
        return []
    sgd = res["sgd"]
    short = min(r.epochs for r in res.values()) < STUDY_EPOCHS
    at = min(STUDY_EPOCHS, min(r.epochs for r in res.values()))
    out = []
    parts = [greater(acc_at(r, at), acc_at(sgd, at), paired=True) for _, r in adaptive]
    out.append(row(
        quote='SGD: "consistent ... but slow and after 50 epochs has unimpressive accuracy"',
        figure="SGD below RMSProp and Adam after 50 epochs",
        test=f"TEST accuracy after epoch {at}, each adaptive optimizer minus SGD, paired by seed: the 95 % interval "
             "above 0 for each; SGD's spread over its last epochs shows its consistency",
        ours=f"SGD {fmt_ci(acc_at(sgd, at))}; " + "; ".join(
            f"{n} - SGD {diff_text(d, lo, hi, True)}" for (n, _), (_, d, lo, hi) in zip(adaptive, parts))
             + f"; late spread (sd over epochs {at - LATE + 1}-{at}) SGD {late_spread(sgd, end=at).mean():.3f}, "
             + ", ".join(f"{n} {late_spread(r, end=at).mean():.3f}" for n, r in adaptive),
        verdict="not reached at this budget" if short else combine([p[0] for p in parts]), rs=list(res.values())))
    for name, r in adaptive:
        out.append(row(
            quote=f'{"RMSProp" if name == "rmsprop" else "Adam"}: "reaching 60 % accuracy after 50 epochs"',
            figure="60 % after 50 epochs",
            test=f"mean TEST accuracy after epoch {at}: supported when its 95 % interval reaches "
                 f"{SIXTY - ABOUT:.2f} or more, contradicted when it lies below",
            ours=fmt_ci(acc_at(r, at)), verdict="not reached at this budget" if short else reaches(acc_at(r, at), SIXTY),
            rs=[r]))
    speed = {n: epochs_to(r, LEVEL) for n, r in [("sgd", sgd), *adaptive]}
    med = {n: float(np.median(e)) for n, e in speed.items()}
    faster = [med[n] < med["sgd"] for n, _ in adaptive]
    out.append(row(
        quote='RMSProp and Adam: "faster convergence"',
        figure="faster than SGD",
        test=f"epochs to TEST accuracy {LEVEL:.2f} (median over seeds; a seed that never gets there counts as "
             "slowest): supported when every adaptive optimizer needs fewer than SGD",
        ours="; ".join(f"{n}: {fmt_epochs(e)}" for n, e in speed.items()),
        verdict="supported" if all(faster) else "contradicted" if not any(faster) else "inconclusive",
        rs=list(res.values())))
    if "adam" not in res or "rmsprop" not in res:
        return out
    adam, rival_name = res["adam"], max(("rmsprop", "sgd"), key=lambda n: acc_at(res[n], at).mean())
    v, d, lo, hi = greater(acc_at(adam, at), acc_at(res[rival_name], at), paired=True)
    out.append(row(
        quote='Adam: "the superior of the three", and stable',
        figure="Adam best of the three",
        test=f"TEST accuracy after epoch {at}, Adam minus the better of the other two, paired by seed: the 95 % "
             "interval above 0",
        ours=f"Adam {fmt_ci(acc_at(adam, at))}; Adam - {rival_name} {diff_text(d, lo, hi, True)}; late spread "
             f"Adam {late_spread(adam, end=at).mean():.3f}, RMSProp {late_spread(res['rmsprop'], end=at).mean():.3f}",
        verdict="not reached at this budget" if short else v, rs=[adam, res[rival_name]]))
    return out


def overfit_claims(r: VariantResult, row: Row) -> list[ClaimRow]:
    if r.epochs < OVERFIT_MIN_EPOCHS:
        reached = f"{r.epochs} epochs, fewer than the claim's {OVERFIT_MIN_EPOCHS}"
        return [row(quote='Adam for 200 epochs: "the test accuracy stops improving" and the test loss diverges',
                    figure="overfitting within 200 epochs", test="needs >= 100 epochs", ours=reached,
                    verdict="not reached at this budget", rs=[r])]
    n, (best, rise) = r.epochs, overfit_point(r)
    ta, te = r.curve("train_acc").mean(axis=1), r.curve("test_acc").mean(axis=1)
    keeps = ta[-1] > ta[best - 1]
    early = np.abs(np.diff(r.curve("test_acc")[n // 4:n // 2], axis=0)).mean(axis=0)
    late = np.abs(np.diff(r.curve("test_acc")[3 * n // 4:], axis=0)).mean(axis=0)
    v_stab, d, lo, hi = greater(late, early, paired=True)
    smooth = np.convolve(te, np.ones(5) / 5, mode="valid")
    peak = int(smooth.argmax()) + 3  # the centre epoch (1-based) of the best 5-epoch window
    return [
        row(quote='"training accuracy keeps improving" while the "test loss diverges"',
            figure="train accuracy up, TEST loss diverging",
            test=f"mean train accuracy at the end above its value at the TEST-loss minimum, and final TEST loss >= "
                 f"{DIVERGES}x its minimum",
            ours=f"train accuracy {ta[best - 1]:.3f} at epoch {best} -> {ta[-1]:.3f}; TEST loss {rise:.1f}x its "
                 f"minimum (epoch {best})",
            verdict="supported" if keeps and rise >= DIVERGES else "contradicted", rs=[r]),
        row(quote='the test accuracy "stops improving and degrades in stability"',
            figure="TEST accuracy less stable late in training",
            test=f"per seed, the mean epoch-to-epoch change of TEST accuracy over the last quarter of the run minus "
                 f"over its second quarter (epochs {n // 4 + 1}-{n // 2}), paired by seed: the 95 % interval above 0",
            ours=f"{late.mean():.4f} against {early.mean():.4f}: {diff_text(d, lo, hi, True)}",
            verdict=v_stab, rs=[r]),
        row(quote='"stop the learning at around 50 to 100 epochs"',
            figure="best stopping point 50-100 epochs",
            test=f"the epoch of the best 5-epoch mean TEST accuracy within {STOP_EPOCHS[0]}-{STOP_EPOCHS[1]} epochs",
            ours=f"best TEST accuracy {smooth.max():.3f} around epoch {peak}; TEST loss minimum at epoch {best}",
            verdict="supported" if STOP_EPOCHS[0] <= peak <= STOP_EPOCHS[1] else "contradicted", rs=[r]),
    ]


def dropout_claims(res: dict[str, VariantResult], row: Row) -> list[ClaimRow]:
    drops = {k: r for k, r in res.items() if r.group == "dropout"}
    off = drops.get("dropout_0")
    if off is None or "dropout_0.2" not in drops or len(drops) < 3:
        return []
    best_epoch, rise = overfit_point(off)
    quote = '20 % dropout "roughly optimal in reducing overfitting but still allowing decent learning speed"'
    if rise < OVERFITS:
        return [row(quote=quote, figure="20 % roughly optimal",
                    test=f"needs the run without dropout to overfit (final TEST loss >= {OVERFITS}x its minimum)",
                    ours=f"without dropout the TEST loss ends at {rise:.2f}x its minimum (epoch {best_epoch}) after "
                         f"{off.epochs} epochs", verdict="not reached at this budget", rs=list(drops.values()))]
    means = {k: float(r.final_acc().mean()) for k, r in drops.items()}
    best = max(means, key=means.get)
    v, d, lo, hi = greater(drops[best].final_acc(), drops["dropout_0.2"].final_acc(), paired=False)
    ahead = means[best] - means["dropout_0.2"]
    optimal = ("supported" if ahead <= ROUGHLY_OPTIMAL and v != "supported" else
               "contradicted" if ahead > ROUGHLY_OPTIMAL and v == "supported" else "inconclusive")
    rises = {k: float(loss_rise(r).mean()) for k, r in drops.items()}
    v_inc, d2, lo2, hi2 = greater(drops["dropout_0.2"].final_acc(), off.final_acc(), paired=True)
    return [
        row(quote=quote, figure="20 % roughly optimal",
            test=f"final TEST accuracy per rate: supported when 0.2 is best, or the best rate is ahead of it by at "
                 f"most {ROUGHLY_OPTIMAL} and not beyond the 95 % interval (Welch), contradicted when a rate is "
                 "ahead by more and beyond it; overfitting shown as final TEST loss over its minimum",
            ours="; ".join(f"{k[8:]}: {fmt_ci(r.final_acc())}, loss x{rises[k]:.2f}" for k, r in drops.items())
                 + f"; best {best[8:]}"
                 + (f", best - 0.2 {diff_text(d, lo, hi, False)}" if best != "dropout_0.2" else ""),
            verdict=optimal, rs=list(drops.values())),
        row(quote='dropout "increase[d] the test accuracy"', figure="dropout raises TEST accuracy",
            test="final TEST accuracy, 20 % dropout minus none, paired by seed: the 95 % interval above 0",
            ours=diff_text(d2, lo2, hi2, True), verdict=v_inc, rs=[drops["dropout_0.2"], off]),
    ]


def too_short(rs: Sequence[VariantResult]) -> str | None:
    """What a stability claim reached, when its runs are shorter than STABILITY_MIN_EPOCHS; else None."""
    epochs = min(r.epochs for r in rs)
    return None if epochs >= STABILITY_MIN_EPOCHS else \
        f"{epochs} epochs, fewer than the {STABILITY_MIN_EPOCHS} a stability measure over the last {LATE} needs"


def batchnorm_claims(res: dict[str, VariantResult], row: Row) -> list[ClaimRow]:
    off, out = res.get("dropout_0"), []
    for name, label in (("batchnorm_on", "Keras' momentum 0.99"), ("batchnorm_on_m0.9", "momentum 0.9")):
        if off is None or name not in res:
            continue
        on = res[name]
        quote = 'batch normalisation "introduced significant instability in the learning"'
        test = (f"({label}) per seed, the standard deviation of TEST accuracy over the last {LATE} epochs, with "
                "batch norm minus without, paired by seed: the 95 % interval above 0")
        short = too_short([on, off])
        if short:
            out.append(row(quote=quote, figure=f"unstable learning ({label})", test=test, ours=short,
                           verdict="not reached at this budget", rs=[on, off]))
            continue
        n = min(len(on.seeds), len(off.seeds))
        v, d, lo, hi = greater(late_spread(on)[:n], late_spread(off)[:n], paired=True)
        stuck = int((~left_chance(on)).sum())
        out.append(row(
            quote=quote, figure=f"unstable learning ({label})", test=test,
            ours=f"spread {late_spread(on).mean():.3f} against {late_spread(off).mean():.3f}: "
                 f"{diff_text(d, lo, hi, True)}; TEST {fmt_ci(on.final_acc())} against {fmt_ci(off.final_acc())}; "
                 f"{stuck} of {len(on.seeds)} seeds never left chance",
            verdict=v, rs=[on, off]))
    return out


def centering_claims(res: dict[str, VariantResult], row: Row) -> list[ClaimRow]:
    off, on = res.get("dropout_0"), res.get("centering_on")
    if off is None or on is None:
        return []
    n = min(len(on.seeds), len(off.seeds))
    e_on, e_off = epochs_to(on, CONVERGED, "train_acc")[:n], epochs_to(off, CONVERGED, "train_acc")[:n]
    short = too_short([on, off])  # "prevented it entirely" needs a run long enough for the others to converge
    helped = int((e_on < e_off).sum())
    prevented = int((~np.isfinite(e_on) & np.isfinite(e_off)).sum())
    slowed = int((e_on > e_off).sum())
    verdict = ("not reached at this budget" if short else "supported" if helped and prevented
               else "inconclusive" if helped and slowed else "contradicted")
    return [row(
        quote='feature centering "heavily dependent on the initialization ... in some it helped accelerate '
              'convergence while in others it prevented it entirely"',
        figure="faster in some seeds, no convergence in others",
        test=f"per seed (same initial weights with and without), the epochs to training accuracy {CONVERGED}: "
             "supported when centering is faster in some seeds and never gets there in others where the uncentred "
             "run does; inconclusive when it is only faster in some and slower in others",
        ours=(f"{short}; " if short else "") + f"with: {fmt_epochs(e_on)}; without: {fmt_epochs(e_off)}; faster in "
             f"{helped}, slower in {slowed}, prevented in {prevented} of {n} seeds; TEST {fmt_ci(on.final_acc())} "
             f"against {fmt_ci(off.final_acc())}",
        verdict=verdict, rs=[on, off])]


def expanded_centering_claims(res: dict[str, VariantResult], row: Row) -> list[ClaimRow]:
    if not {"expanded", "expanded_centered"} <= set(res):
        return []
    on, off = res["expanded_centered"], res["expanded"]
    n = min(len(on.seeds), len(off.seeds))
    e_on, e_off = epochs_to(on, CONVERGED, "train_acc")[:n], epochs_to(off, CONVERGED, "train_acc")[:n]
    cap = float(max(on.epochs, off.epochs) + 1)  # "never" counts as one epoch past the budget
    v_fast, d1, lo1, hi1 = greater(np.minimum(e_off, cap), np.minimum(e_on, cap), paired=True)
    v_over, d2, lo2, hi2 = greater(loss_rise(on)[:n], loss_rise(off)[:n], paired=True)
    v_stab, d3, lo3, hi3 = greater(late_spread(on, "test_loss")[:n], late_spread(off, "test_loss")[:n], paired=True)
    short = too_short([on, off])
    if short:  # the overfitting and stability parts need the long run; speed and accuracy do not
        v_over = v_stab = "not reached at this budget"
    d4, (lo4, hi4) = paired_ci(on.final_acc()[:n], off.final_acc()[:n])
    same = "supported" if -ROUGHLY_SAME <= lo4 and hi4 <= ROUGHLY_SAME else \
        "contradicted" if lo4 > ROUGHLY_SAME or hi4 < -ROUGHLY_SAME else "inconclusive"
    stuck = {k: int((~left_chance(r)).sum()) for k, r in (("with", on), ("without", off))}
    rs = [on, off]
    return [
        row(quote='expanded CNN: centering "sped up the training"', figure="faster with centering",
            test=f"epochs to training accuracy {CONVERGED}, without minus with centering, paired by seed: the 95 % "
                 "interval above 0",
            ours=f"with: {fmt_epochs(e_on)}; without: {fmt_epochs(e_off)}; {diff_text(d1, lo1, hi1, True)}",
            verdict=v_fast, rs=rs),
        row(quote='"but at the cost of overfitting later"', figure="more overfitting with centering",
            test="final TEST loss over its minimum, with minus without centering, paired by seed: the 95 % interval "
                 "above 0",
            ours=f"x{loss_rise(on).mean():.2f} against x{loss_rise(off).mean():.2f}: {diff_text(d2, lo2, hi2, True)}",
            verdict=v_over, rs=rs),
        row(quote='without centering "the loss is more stable"', figure="steadier TEST loss without centering",
            test=f"per seed, the standard deviation of TEST loss over the last {LATE} epochs, with minus without, "
                 "paired by seed: the 95 % interval above 0",
            ours=f"{late_spread(on, 'test_loss').mean():.3f} against {late_spread(off, 'test_loss').mean():.3f}: "
                 f"{diff_text(d3, lo3, hi3, True)}; seeds that never left chance: {stuck['with']} with, "
                 f"{stuck['without']} without",
            verdict=v_stab, rs=rs),
        row(quote='"and I achieve roughly the same accuracy"', figure="the same accuracy",
            test=f"final TEST accuracy, with minus without, paired by seed: the 95 % interval within "
                 f"+-{ROUGHLY_SAME}",
            ours=f"{fmt_ci(on.final_acc())} against {fmt_ci(off.final_acc())}: {diff_text(d4, lo4, hi4, True)}",
            verdict=same, rs=rs),
    ]


def deep_claim(r: VariantResult, row: Row) -> ClaimRow:
    return row(quote='deeper CNNs: "roughly 85 %" test accuracy', figure="about 85 %",
               test=f"mean TEST accuracy: supported when its 95 % interval reaches {ABOUT_85 - ABOUT:.2f} or more",
               ours=fmt_ci(r.final_acc()), verdict=reaches(r.final_acc(), ABOUT_85), rs=[r])


def vgg_claims(res: dict[str, VariantResult], row: Row) -> list[ClaimRow]:
    out, scratch = [], res.get("scratch")
    for name, r in res.items():
        if r.group != "transfer" or name == "scratch":
            continue
        tr, te = r.curve("train_acc").mean(axis=1), r.curve("test_acc").mean(axis=1)
        if scratch is not None:
            s1 = scratch.curve("train_acc").mean(axis=1)
            at = min(len(s1), len(tr))
            v = greater(r.curve("train_acc")[:at].mean(axis=0), scratch.curve("train_acc")[:at].mean(axis=0),
                        paired=False)[0]
            out.append(row(quote=f'VGG16 ({name}) "did accelerate and increase learning on the training set"',
                           figure="pretrained learns the training set faster than scratch",
                           test=f"mean training accuracy over the first {at} epochs, pretrained minus scratch "
                                "(Welch): the 95 % interval above 0",
                           ours=f"epoch 1: {tr[0]:.3f} against {s1[0]:.3f}; epoch {at}: {tr[at - 1]:.3f} against "
                                f"{s1[at - 1]:.3f}", verdict=v, rs=[r, scratch]))
        # a seed stuck at chance never learns the training set: the premise and the gap are the other seeds'
        # (the train accuracy as the stop rule reads it: bccd_jax.config.learning_train_acc)
        alive = left_chance(r)
        stuck = int((~alive).sum())
        learning = learning_train_acc(r.history["train_acc"])
        tr_a = np.nan if learning is None else learning
        te_a = r.curve("test_acc")[-1][alive].mean() if alive.any() else np.nan
        gap = tr_a - te_a
        learnt = learning is not None and learning >= LEARNT
        ours = f"train {tr_a:.3f}, TEST {fmt_ci(r.final_acc())}, gap {gap:+.3f}"
        if stuck:
            ours = (f"over the {int(alive.sum())} seeds that left chance: train {tr_a:.3f}, TEST {te_a:.3f}, gap "
                    f"{gap:+.3f}; {stuck} of {len(alive)} never left chance; all seeds: train {tr[-1]:.3f}, TEST "
                    f"{fmt_ci(r.final_acc())}")
        out.append(row(quote=f'VGG16 ({name}): "the test set suffered from massive overfitting"',
                       figure="massive overfitting",
                       test=f"premise: train accuracy >= {LEARNT} (mean over the seeds that left chance, best train "
                            f">= {CHANCE}); then their train minus TEST accuracy >= {MASSIVE_GAP}",
                       ours=ours, verdict=("not reached at this budget" if not learnt else
                                           "supported" if gap >= MASSIVE_GAP else "contradicted"), rs=[r]))
    return out


def study_claims(experiment: str, res: dict[str, VariantResult], dataset: str, size: str) -> list[ClaimRow]:
    """The tested claims of one experiment's finished variants (one data set and image size)."""
    def row(*, rs, **kw) -> ClaimRow:
        return ClaimRow(experiment=experiment, budget=budget_of(rs, dataset, size), **kw)

    if experiment == "optimizers":  # an Adam run past the study's 50 epochs is also its overfitting run
        adam = res.get("adam")
        longer = adam is not None and adam.epochs > STUDY_EPOCHS
        return optimizer_claims(res, row) + (overfit_claims(adam, row) if longer else [])
    if experiment == "regularization":
        overfit = [r for r in res.values() if r.group == "overfit"]
        return ((overfit_claims(overfit[0], row) if overfit else []) + dropout_claims(res, row)
                + batchnorm_claims(res, row) + centering_claims(res, row))
    if experiment == "architecture":
        return expanded_centering_claims(res, row)
    if experiment == "recipe" and "best" in res:
        return [deep_claim(res["best"], row)]
    if experiment == "vgg":
        return vgg_claims(res, row)
    return []
