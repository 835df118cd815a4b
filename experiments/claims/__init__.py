"""The study's claims in its own words, each with the test that decides it, split by the study's sections.

Every row quotes the study, names the measurement and its threshold (experiments/claims/core.py), the
budget it ran at (epochs, seeds, image size, data set), when its test was fixed (before the runs unless the
row says otherwise, with the date and why) and a verdict (core's docstring). Two rules hold for every row:

- seeds that never left chance (best training accuracy below bccd_jax.config.LEFT_CHANCE) are counted, and a
  row whose variants hold any is judged over all seeds and over the seeds that left chance
  (core.judged_both_ways); its verdict gives both where they differ;
- two variants are paired by seed id, never by position (core.paired), and each paired interval says in how
  many seeds the difference had its sign.

A claim tested at several image sizes gets one row that gives each size's figure and verdict, and says when the
verdict depends on the size (`claims_over_sizes`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from experiments.claims.architecture import architecture_claims
from experiments.claims.core import (LATE, OVERFIT_MIN_EPOCHS, STUDY_EPOCHS, ClaimRow, Study, judged_both_ways,
                                     learning_view, row_maker)
from experiments.claims.optimizers import optimizer_claims, overfit_claims
from experiments.claims.regularization import regularization_claims
from experiments.claims.transfer import vgg_claims

__all__ = ["ClaimRow", "LATE", "STUDY_EXPERIMENTS", "claims_over_sizes", "study_claims"]

STUDY_EXPERIMENTS = ("optimizers", "regularization", "architecture", "recipe", "vgg")
"""The experiments that carry the study's claims."""


def _rows(study: Study, dataset: str, size: str) -> list[ClaimRow]:
    """Every claim the study's variants can test, in the study's order of sections."""
    row = lambda experiment: row_maker(experiment, dataset, size)  # noqa: E731
    out = optimizer_claims(study, row("optimizers"))
    adam = study.get("optimizers", {}).get("adam")
    if adam is not None and adam.epochs > STUDY_EPOCHS:  # an Adam run past the study's 50 epochs: the overfitting run
        out += overfit_claims(adam, row("optimizers"), OVERFIT_MIN_EPOCHS)
    overfit = [r for r in study.get("regularization", {}).values() if r.group == "overfit"]
    if overfit:
        out += overfit_claims(overfit[0], row("regularization"), OVERFIT_MIN_EPOCHS)
    out += regularization_claims(study, row("regularization"))
    out += architecture_claims(study, row("architecture"))
    return out + vgg_claims(study, row("vgg"))


def study_claims(study: Study, dataset: str, size: str) -> list[ClaimRow]:
    """The tested claims of one data set and image size (experiment -> variant -> its latest finished result),
    each judged over all seeds and, where some never left chance, over those that did."""
    return judged_both_ways(_rows(study, dataset, size), _rows(learning_view(study), dataset, size))


def _area(size: str) -> int:
    h, w = (int(x) for x in size.split("x"))
    return h * w


def claims_over_sizes(studies: Mapping[tuple[str, str], Study]) -> list[ClaimRow]:
    """The claims of every (data set, image size), one row per claim and data set: a claim tested at several sizes
    gives each size's figure, budget and verdict, and says when its verdict depends on the size."""
    by_key: dict[tuple, list[tuple[str, ClaimRow]]] = {}
    for (dataset, size) in sorted(studies, key=lambda k: (k[0], _area(k[1]))):
        for r in study_claims(studies[(dataset, size)], dataset, size):
            by_key.setdefault((dataset, *r.key), []).append((size, r))
    return [rows[0][1] if len(rows) == 1 else _across_sizes(rows) for rows in by_key.values()]


def _across_sizes(rows: Sequence[tuple[str, ClaimRow]]) -> ClaimRow:
    first = rows[0][1]
    verdicts = [r.verdict for _, r in rows]
    sizes = [s for s, _ in rows]
    if len(set(verdicts)) == 1:
        verdict = f"{verdicts[0]} at {' and '.join(sizes)}"
    else:
        verdict = "; ".join(f"{v} at {s}" for s, v in zip(sizes, verdicts)) + ": depends on the image size"
    return ClaimRow(first.experiment, first.quote, first.figure, first.test,
                    ours="; ".join(f"{s}: {r.ours}" for s, r in rows), budget="; ".join(r.budget for _, r in rows),
                    verdict=verdict, fixed=first.fixed,
                    stuck="; ".join(f"{s}: {r.stuck}" for s, r in rows if r.stuck))
