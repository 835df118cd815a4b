"""What every claim row shares: the row itself, the thresholds, the measurements on a variant's curves, the one
rule for seeds that never left chance, pairing by seed id, and how a figure with its interval is written.

Verdicts:

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
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from bccd_jax.config import LEFT_CHANCE
from bccd_jax.config import left_chance as seeds_left_chance
from bccd_jax.metrics import clip_interval, mean_ci, welch_ci
from bccd_jax.run import VariantResult

Study = Mapping[str, Mapping[str, VariantResult]]
"""One data set and image size: experiment -> variant -> its latest finished result."""

STUDY_EPOCHS = 50
"""The study's budget for the optimizers and the regularisation experiments."""
OVERFIT_MIN_EPOCHS = 100
"""The overfitting claims need at least this many epochs (the study ran 200)."""
ARCH_EPOCHS = 30
"""The architecture claims need runs this long (the regularisation budget: past the base CNN's overfitting point)."""
ABOUT = 0.05
"""A study figure "about X %" is reached when our 95 % interval reaches X - ABOUT."""
SIXTY = 0.60
ABOUT_85 = 0.85
CONVERGED = 0.60
"""A seed has converged when its training accuracy reaches this (the training set is balanced: chance 0.25)."""
CHANCE = LEFT_CHANCE
"""A seed has left chance when its best training accuracy reaches this (the library's, which also stops runs)."""
LEVEL = 0.50
"""The TEST accuracy whose first epoch measures the speed of convergence."""
LATE = 10
"""Epochs at the end of a run over which each seed's spread (standard deviation) measures stability."""
STABILITY_MIN_EPOCHS = 3 * LATE
"""A stability claim needs runs this long: the last LATE epochs then lie past the base CNN's overfitting point."""
DIVERGES = 1.5
"""TEST loss diverges when its final value is at least this multiple of its minimum."""
OVERFITS = 1.2
"""A run has begun to overfit when its final mean TEST loss is at least this multiple of its minimum."""
STILL_IMPROVING = 0.02
"""TEST accuracy "stops improving" after the TEST-loss minimum when it gains less than this from there to the end."""
MIN_WINDOW = 4
"""Epochs a window before the TEST-loss minimum needs for a detrended spread."""
ROUGHLY_OPTIMAL = 0.02
"""A dropout rate is "roughly optimal" when the best rate's mean TEST accuracy is ahead of it by at most this."""
ROUGHLY_SAME = 0.05
"""Two accuracies are "roughly the same" when the 95 % interval of their difference lies within +-this."""
STARK = 0.10
"""An improvement of TEST accuracy is "stark" when it is at least this."""
DIFFERENT_SPEED = 2
"""Convergence behaviours differ when two models' median epochs to LEVEL differ by at least this."""
LEARNT = 0.95
"""VGG16's training set counts as learnt at this training accuracy."""
MASSIVE_GAP = 0.15
"""Train minus TEST accuracy of at least this is "massive overfitting"."""
STOP_EPOCHS = (50, 100)
"""The study's advice: stop "at around 50 to 100 epochs"."""

BEFORE = "before the runs"
"""When a row's test and threshold were fixed, for the rows fixed before any run they read."""


@dataclass(frozen=True)
class ClaimRow:
    """One claim of the study, tested."""

    experiment: str
    quote: str  # the study's words, verbatim between quotation marks
    figure: str  # the study's figure, as it gives it ("60 % after 50 epochs"), or its qualitative statement
    test: str  # what is measured and the threshold that decides it
    ours: str  # the measurement, with its 95 % interval where there is one
    budget: str  # epochs, seeds, image size, data set
    verdict: str
    fixed: str = BEFORE  # when the test and threshold were fixed (and why, when after the runs)
    stuck: str = ""  # the seeds among the row's variants that never left chance ("" when none)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.experiment, self.quote, self.figure


Row = Callable[..., ClaimRow]
"""row(quote=, figure=, test=, ours=, verdict=, rs=[the variants it read], fixed=, experiment=) -> ClaimRow"""


def budget_of(rs: Sequence[VariantResult], dataset: str, size: str) -> str:
    epochs = sorted({r.epochs for r in rs})
    seeds = sorted({len(r.seeds) for r in rs})
    join = lambda xs: "/".join(map(str, xs))  # noqa: E731
    return f"{join(epochs)} epochs, {join(seeds)} seeds, {size}, {dataset}"


def row_maker(experiment: str, dataset: str, size: str) -> Row:
    """The row factory of one experiment: budget and stuck seeds follow from the variants the row read."""
    def row(*, rs: Sequence[VariantResult], experiment: str = experiment, **kw) -> ClaimRow:
        return ClaimRow(experiment=experiment, budget=budget_of(rs, dataset, size), stuck=stuck_text(rs), **kw)
    return row


# ----------------------------------------------------------------------------- seeds that never left chance


def left_chance(r: VariantResult) -> np.ndarray:
    """Per seed: whether its training accuracy ever reached CHANCE (bccd_jax.config.left_chance)."""
    return np.asarray(seeds_left_chance(r.history["train_acc"]), bool)


def stuck_text(rs: Sequence[VariantResult]) -> str:
    """The seeds that never left chance among `rs`, e.g. "expanded 1 of 3" ("" when none)."""
    seen, parts = set(), []
    for r in rs:
        if r.name in seen:
            continue
        seen.add(r.name)
        k = int((~left_chance(r)).sum())
        if k:
            parts.append(f"{r.name} {k} of {len(r.seeds)}")
    return ", ".join(parts)


def restrict(r: VariantResult, seeds: Sequence[int]) -> VariantResult:
    """`r` with only `seeds` (ids): the history's columns of those seeds, its group and wall time."""
    cols = [r.seeds.index(s) for s in seeds]
    history = {k: (v if k == "epoch" else [[epoch[c] for c in cols] for epoch in v]) for k, v in r.history.items()}
    raw = {k: r.raw[k] for k in ("group", "wall_s", "model", "train") if k in r.raw}
    return VariantResult(r.name, {**raw, "seeds": list(seeds), "history": history})


def learning_view(study: Study) -> Study:
    """The study with every variant cut to its seeds that left chance; a variant with none is left out."""
    out: dict[str, dict[str, VariantResult]] = {}
    for exp, variants in study.items():
        for name, r in variants.items():
            alive = [s for s, ok in zip(r.seeds, left_chance(r)) if ok]
            if alive:
                out.setdefault(exp, {})[name] = r if len(alive) == len(r.seeds) else restrict(r, alive)
    return out


def judged_both_ways(rows_all: Sequence[ClaimRow], rows_learning: Sequence[ClaimRow]) -> list[ClaimRow]:
    """The one rule for seeds that never left chance: a row whose variants hold such seeds is judged over all seeds
    and over the seeds that left chance; its figure gives both, and its verdict both where they differ."""
    learning = {r.key: r for r in rows_learning}
    out = []
    for r in rows_all:
        if not r.stuck:
            out.append(r)
            continue
        other = learning.get(r.key)
        if other is None:
            ours = f"all seeds: {r.ours}; over the seeds that left chance: not testable (a variant has none)"
            verdict = f"{r.verdict} over all seeds; not testable over the seeds that left chance"
        else:
            ours = f"all seeds: {r.ours}; over the seeds that left chance: {other.ours}"
            verdict = r.verdict if other.verdict == r.verdict else \
                f"{other.verdict} over the seeds that left chance; {r.verdict} over all seeds"
        out.append(ClaimRow(r.experiment, r.quote, r.figure, r.test, ours, r.budget, verdict, r.fixed, r.stuck))
    return out


# ----------------------------------------------------------------------------- measurements


def acc_at(r: VariantResult, epoch: int, split: str = "test") -> np.ndarray:
    """Per-seed accuracy after `epoch` (1-based)."""
    return r.curve(f"{split}_acc")[epoch - 1]


def late_spread(r: VariantResult, key: str = "test_acc", window: int = LATE, end: int | None = None) -> np.ndarray:
    """Per seed: the standard deviation of `key` over the `window` epochs up to epoch `end` (default: the last)."""
    end = r.epochs if end is None else end
    return r.curve(key)[max(end - window, 0):end].std(axis=0)


def detrended_spread(r: VariantResult, start: int, end: int, key: str = "test_acc") -> np.ndarray:
    """Per seed: the standard deviation of `key` about its least-squares line over epochs start..end (1-based,
    inclusive): how much it wobbles, whatever its trend (a rising curve is not an unstable one)."""
    y = r.curve(key)[start - 1:end]
    x = np.arange(y.shape[0], dtype=float)
    coef = np.polyfit(x, y, 1)
    return (y - (coef[0][None] * x[:, None] + coef[1][None])).std(axis=0)


def epochs_to(r: VariantResult, level: float, key: str = "test_acc", end: int | None = None) -> np.ndarray:
    """Per seed: the first epoch (1-based, up to `end`) at which `key` reaches `level`; inf where it never does."""
    c = r.curve(key)[:end] >= level
    return np.where(c.any(axis=0), c.argmax(axis=0) + 1.0, np.inf)


def loss_rise(r: VariantResult, end: int | None = None) -> np.ndarray:
    """Per seed: TEST loss after epoch `end` (default: the last) over its minimum up to there (1: never rose)."""
    tl = r.curve("test_loss")[:end]
    return tl[-1] / np.maximum(tl.min(axis=0), 1e-9)


def overfit_point(r: VariantResult) -> tuple[int, float]:
    """(epoch of the mean TEST-loss minimum, final mean TEST loss over that minimum)."""
    tl = r.curve("test_loss").mean(axis=1)
    return int(tl.argmin()) + 1, float(tl[-1] / max(tl.min(), 1e-9))


def too_short(rs: Sequence[VariantResult]) -> str | None:
    """What a stability claim reached, when its runs are shorter than STABILITY_MIN_EPOCHS; else None."""
    epochs = min(r.epochs for r in rs)
    return None if epochs >= STABILITY_MIN_EPOCHS else \
        f"{epochs} epochs, fewer than the {STABILITY_MIN_EPOCHS} a stability measure over the last {LATE} needs"


def at_most_rate(k: int, n: int) -> float:
    """The upper end of the exact (Clopper-Pearson) 95 % interval of a rate seen k times in n."""
    return float(stats.binomtest(k, n).proportion_ci(0.95, method="exact").high)


# ----------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Difference:
    """a - b with its 95 % interval: paired by seed id, or by Welch's t between independent groups of seeds."""

    diff: float
    lo: float
    hi: float
    paired: bool
    n: int  # seeds in both (paired) or in the smaller group
    higher: int = 0  # paired: seeds in which a > b

    def verdict(self, margin: float = 0.0) -> str:
        """a > b + margin: "supported" when the interval lies above, "contradicted" below, else "inconclusive"."""
        return "supported" if self.lo > margin else "contradicted" if self.hi < margin else "inconclusive"

    def below(self, margin: float = 0.0) -> str:
        """a < b + margin, the same way."""
        return "supported" if self.hi < margin else "contradicted" if self.lo > margin else "inconclusive"

    def within(self, margin: float) -> str:
        """|a - b| <= margin: "supported" when the interval lies within +-margin, "contradicted" when it lies
        wholly outside, else "inconclusive"."""
        if -margin <= self.lo and self.hi <= margin:
            return "supported"
        return "contradicted" if self.lo > margin or self.hi < -margin else "inconclusive"

    def text(self) -> str:
        how = f"paired by seed; higher in {self.higher} of {self.n} seeds" if self.paired else "Welch"
        return f"{self.diff:+.3f} (95% CI {self.lo:+.3f} to {self.hi:+.3f}, {how})"


def per_seed(r: VariantResult, values) -> dict[int, float]:
    """Seed id -> value, for per-seed `values` in the order of r.seeds."""
    return dict(zip(r.seeds, np.asarray(values, float).tolist()))


def paired(ra: VariantResult, a, rb: VariantResult, b) -> Difference:
    """mean(a - b) over the seed ids both variants ran (per-seed values in the order of each one's seeds)."""
    va, vb = per_seed(ra, a), per_seed(rb, b)
    common = [s for s in va if s in vb]
    d = np.array([va[s] - vb[s] for s in common])
    if d.size == 0:
        return Difference(float("nan"), float("nan"), float("nan"), True, 0)
    m, (lo, hi) = mean_ci(d)
    return Difference(m, lo, hi, True, int(d.size), int((d > 0).sum()))


def welch(a, b) -> Difference:
    a, b = np.asarray(a, float), np.asarray(b, float)
    d, (lo, hi) = welch_ci(a, b)
    return Difference(d, lo, hi, False, int(min(a.size, b.size)))


def reaches(values, figure: float) -> str:
    """Does the mean with its interval reach "about `figure`"?"""
    _, (lo, hi) = mean_ci(np.asarray(values, float))
    return "supported" if lo >= figure - ABOUT else "contradicted" if hi < figure - ABOUT else "inconclusive"


def combine(verdicts: Sequence[str]) -> str:
    """All parts of a claim must hold: any contradicted part contradicts it, any open part leaves it open."""
    if "not reached at this budget" in verdicts:
        return "not reached at this budget"
    if "contradicted" in verdicts:
        return "contradicted"
    return "supported" if all(v == "supported" for v in verdicts) else "inconclusive"


# ----------------------------------------------------------------------------- how figures are written


def fmt_ci(values) -> str:
    """Mean accuracy with its 95 % t-interval over seeds, cut to [0, 1] and marked *clipped* where it was."""
    m, raw = mean_ci(np.asarray(values, float))
    lo, hi = clip_interval(raw)
    return f"{m:.3f} ({lo:.3f}-{hi:.3f}{', clipped' if (lo, hi) != raw else ''})"


def fmt_epochs(e: np.ndarray) -> str:
    return ", ".join("never" if not np.isfinite(x) else str(int(x)) for x in e)


def median_epochs(e: np.ndarray) -> float:
    """The median of epochs-to-a-level over seeds, a seed that never got there counting as the slowest."""
    return float(np.median(e))
