"""The study's VGG16 section: transfer from pretrained weights against training from scratch, overfitting, and
VGG16 against the study's own CNNs."""

from __future__ import annotations

from bccd_jax.models.vgg_weights import describe_weights
import numpy as np

from bccd_jax.run import VariantResult
from experiments.claims.core import (ARCH_EPOCHS, LEARNT, MASSIVE_GAP, ClaimRow, Row, Study, acc_at, fmt_ci,
                                     left_chance, welch)

PREMISE_REVISED = ("premise revised 2026-12-06, after frozen_blocks1-3's seed 0 was seen stuck at chance (its mean "
                   "over all seeds could never reach the premise); that run was then trained on past its stop rule to "
                   "its 20 epochs. The premise is now judged over all seeds and over the seeds that left chance, as "
                   "every row is")
OVERKILL_FIXED = "2026-12-07, before the deep CNN's 30-epoch runs, after the VGG16 runs it reads"


def predicted_classes(r: VariantResult) -> int:
    """How many classes the seeds predicted on TEST at the end (summed confusion matrix; 1: a constant predictor)."""
    final = r.final("test") or {}
    cm = np.asarray(final.get("confusion_matrix_summed_over_seeds", []))
    return int((cm.sum(axis=0) > 0).sum()) if cm.ndim == 2 else 0


def scratch_note(scratch: VariantResult) -> str:
    """What the scratch arm is, when none of its seeds left chance."""
    if left_chance(scratch).any():
        return ""
    k = predicted_classes(scratch)
    what = "a constant predictor: every TEST image called one class" if k == 1 else \
        f"predicting {k} classes on TEST" if k else "its TEST predictions not recorded"
    return f"; scratch never left chance in any seed (TEST {fmt_ci(scratch.final_acc())}, {what})"


def vgg_claims(study: Study, row: Row) -> list[ClaimRow]:
    res = study.get("vgg", {})
    out, scratch = [], res.get("scratch")
    for name, r in res.items():
        if r.group != "transfer" or name == "scratch":
            continue
        weights = describe_weights(r.raw.get("model", {}).get("pretrained"))
        tr, te = r.curve("train_acc").mean(axis=1), r.curve("test_acc").mean(axis=1)
        if scratch is not None:
            s1 = scratch.curve("train_acc").mean(axis=1)
            at = min(len(s1), len(tr))
            d = welch(r.curve("train_acc")[:at].mean(axis=0), scratch.curve("train_acc")[:at].mean(axis=0))
            out.append(row(quote=f'VGG16 ({name}) "did accelerate and increase learning on the training set"',
                           figure="pretrained learns the training set faster than scratch",
                           test=f"mean training accuracy over the first {at} epochs, pretrained ({weights}) minus "
                                "scratch (Keras' initialisation, every layer trainable) (Welch): the 95 % interval "
                                "above 0",
                           ours=f"epoch 1: {tr[0]:.3f} against {s1[0]:.3f}; epoch {at}: {tr[at - 1]:.3f} against "
                                f"{s1[at - 1]:.3f}; {d.text()}{scratch_note(scratch)}", verdict=d.verdict(),
                           rs=[r, scratch]))
        gap = tr[-1] - te[-1]
        out.append(row(quote=f'VGG16 ({name}): "the test set suffered from massive overfitting"',
                       figure="massive overfitting",
                       test=f"premise: mean final train accuracy >= {LEARNT}; then train minus TEST accuracy >= "
                            f"{MASSIVE_GAP} (pretrained: {weights})",
                       ours=f"train {tr[-1]:.3f}, TEST {fmt_ci(r.final_acc())}, gap {gap:+.3f}",
                       verdict=("not reached at this budget" if tr[-1] < LEARNT else
                                "supported" if gap >= MASSIVE_GAP else "contradicted"),
                       rs=[r], fixed=PREMISE_REVISED))
    return out + overkill_claim(study, row)


def overkill_claim(study: Study, row: Row) -> list[ClaimRow]:
    """VGG16's best variant against the deep CNN (he_normal: with glorot_uniform the deep CNN never leaves chance)."""
    vggs, deep = study.get("vgg", {}), study.get("architecture", {}).get("deep")
    if not vggs or deep is None:
        return []
    quote = '"The capacity of VGG was overkill for this problem and hampered learning"'
    figure = "VGG16 below the study's deep CNN"
    test = (f"the best VGG16 variant's final TEST accuracy (picked on TEST) minus the deep CNN's (he_normal) after "
            f"epoch {ARCH_EPOCHS} (Welch): supported when the 95 % interval lies below 0, contradicted when above")
    best = max(vggs, key=lambda n: vggs[n].mean_final_acc())
    if deep.epochs < ARCH_EPOCHS:
        return [row(quote=quote, figure=figure, test=test,
                    ours=f"the deep CNN ran {deep.epochs} epochs, fewer than {ARCH_EPOCHS}",
                    verdict="not reached at this budget", rs=[vggs[best], deep], fixed=OVERKILL_FIXED)]
    d = welch(vggs[best].final_acc(), acc_at(deep, ARCH_EPOCHS))
    return [row(quote=quote, figure=figure, test=test,
                ours=f"VGG16 {best} ({vggs[best].epochs} epochs) {fmt_ci(vggs[best].final_acc())}; deep CNN "
                     f"{fmt_ci(acc_at(deep, ARCH_EPOCHS))}; {d.text()}",
                verdict=d.below(), rs=[vggs[best], deep], fixed=OVERKILL_FIXED)]
