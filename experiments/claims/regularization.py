"""The study's regularisation section: dropout rates, batch normalisation and feature centering on the base
CNN (the overfitting run, when the regularization experiment holds one, is the optimizers' claim)."""

from __future__ import annotations

import numpy as np

from experiments.claims.core import (CHANCE, CONVERGED, LATE, OVERFITS, ROUGHLY_OPTIMAL, ClaimRow, Row, Study,
                                     at_most_rate, epochs_to, fmt_ci, fmt_epochs, late_spread, loss_rise,
                                     overfit_point, paired, too_short, welch)

AFTER_REGULARIZATION = ("2026-12-07, after the 30-epoch runs it reads: the sentence had no row (a reviewer's "
                        "audit)")


def dropout_claims(study: Study, row: Row) -> list[ClaimRow]:
    drops = {k: r for k, r in study.get("regularization", {}).items() if r.group == "dropout"}
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
    two = drops["dropout_0.2"]
    means = {k: float(r.final_acc().mean()) for k, r in drops.items()}
    best = max(means, key=means.get)
    d = welch(drops[best].final_acc(), two.final_acc())
    ahead = means[best] - means["dropout_0.2"]
    optimal = ("supported" if ahead <= ROUGHLY_OPTIMAL and d.verdict() != "supported" else
               "contradicted" if ahead > ROUGHLY_OPTIMAL and d.verdict() == "supported" else "inconclusive")
    rises = {k: float(loss_rise(r).mean()) for k, r in drops.items()}
    inc = paired(two, two.final_acc(), off, off.final_acc())
    less_overfit = paired(two, loss_rise(two), off, loss_rise(off))
    highest = max(drops, key=lambda k: float(k.split("_")[1]))
    top = drops[highest]
    learns = paired(top, top.final_acc("train"), two, two.final_acc("train"))
    return [
        row(quote=quote, figure="20 % roughly optimal",
            test=f"final TEST accuracy per rate: supported when 0.2 is best, or the best rate is ahead of it by at "
                 f"most {ROUGHLY_OPTIMAL} and not beyond the 95 % interval (Welch), contradicted when a rate is "
                 "ahead by more and beyond it; overfitting shown as final TEST loss over its minimum",
            ours="; ".join(f"{k[8:]}: {fmt_ci(r.final_acc())}, loss x{rises[k]:.2f}" for k, r in drops.items())
                 + f"; best {best[8:]}" + (f", best - 0.2 {d.text()}" if best != "dropout_0.2" else ""),
            verdict=optimal, rs=list(drops.values())),
        row(quote='dropout "increase[d] the test accuracy"', figure="dropout raises TEST accuracy",
            test="final TEST accuracy, 20 % dropout minus none, paired by seed: the 95 % interval above 0",
            ours=inc.text(), verdict=inc.verdict(), rs=[two, off]),
        row(quote='dropout "has not only reduced the error of overfitting"', figure="less overfitting with dropout",
            test="per seed, final TEST loss over its minimum, 20 % dropout minus none, paired by seed: the 95 % "
                 "interval below 0",
            ours=f"x{rises['dropout_0.2']:.2f} against x{rises['dropout_0']:.2f}: {less_overfit.text()}",
            verdict=less_overfit.below(), rs=[two, off], fixed=AFTER_REGULARIZATION),
        row(quote='a dropout rate too high and "the model won\'t be able to learn properly"',
            figure="the highest rate learns the training set worse",
            test="final train accuracy, the highest rate minus 20 %, paired by seed: the 95 % interval below 0",
            ours=f"{highest[8:]}: train {fmt_ci(top.final_acc('train'))}; 0.2: train "
                 f"{fmt_ci(two.final_acc('train'))}; {highest[8:]} - 0.2 {learns.text()}",
            verdict=learns.below(), rs=[top, two], fixed=AFTER_REGULARIZATION),
    ]


def batchnorm_claims(study: Study, row: Row) -> list[ClaimRow]:
    res = study.get("regularization", {})
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
        d = paired(on, late_spread(on), off, late_spread(off))
        # a seed can leave chance on its training set and still end at chance on TEST (its batch statistics)
        test_chance = int((on.final_acc() < CHANCE).sum())
        train = ", ".join(f"{x:.3f}" for x in on.final_acc("train"))
        out.append(row(
            quote=quote, figure=f"unstable learning ({label})", test=test,
            ours=f"spread {late_spread(on).mean():.3f} against {late_spread(off).mean():.3f}: {d.text()}; TEST "
                 f"{fmt_ci(on.final_acc())} against {fmt_ci(off.final_acc())}; {test_chance} of {len(on.seeds)} "
                 f"seeds end below {CHANCE} on TEST (final train {train})",
            verdict=d.verdict(), rs=[on, off]))
    return out


def centering_claims(study: Study, row: Row) -> list[ClaimRow]:
    res = study.get("regularization", {})
    off, on = res.get("dropout_0"), res.get("centering_on")
    if off is None or on is None:
        return []
    common = [s for s in on.seeds if s in off.seeds]
    e_on = np.array([epochs_to(on, CONVERGED, "train_acc")[on.seeds.index(s)] for s in common])
    e_off = np.array([epochs_to(off, CONVERGED, "train_acc")[off.seeds.index(s)] for s in common])
    n = len(common)
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
             f"{helped}, slower in {slowed}, prevented in {prevented} of {n} seeds (95 % upper bound on the rate of "
             f"prevention: {at_most_rate(prevented, n):.0%}); TEST {fmt_ci(on.final_acc())} against "
             f"{fmt_ci(off.final_acc())}",
        verdict=verdict, rs=[on, off])]


def regularization_claims(study: Study, row: Row) -> list[ClaimRow]:
    return dropout_claims(study, row) + batchnorm_claims(study, row) + centering_claims(study, row)

