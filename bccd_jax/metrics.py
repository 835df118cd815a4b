"""Evaluation statistics that are honest on this data set.

TEST images are augmentations of only 71 original photos of 68 cells, so per-image accuracy
overstates the number of independent samples. `grouped_accuracy` weights every *cell*
equally and bootstraps cells (photos of one cell are merged, bccd_jax.data.cells);
`mean_ci` gives a Student-t interval over seeds; `welch_ci` and `paired_ci` the intervals of
a difference of two variants' means. Everything here is numpy/scipy on host arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from bccd_jax import CLASS_NAMES


def mean_ci(values: Sequence[float], bounds: tuple[float, float] | None = None) -> tuple[float, tuple[float, float]]:
    """Mean and 95 % t-interval over independent runs (seeds). One value, or no spread: interval (m, m).
    `bounds` clips the interval to the values' range (accuracies: ACC_BOUNDS)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    sem = float(stats.sem(v)) if v.size >= 2 else 0.0
    if sem == 0.0:
        return m, (m, m)
    lo, hi = stats.t.interval(0.95, v.size - 1, loc=m, scale=sem)
    return m, clip_interval((float(lo), float(hi)), bounds)


ACC_BOUNDS = (0.0, 1.0)
"""An accuracy's range: a t-interval over 3 seeds, one of them at chance, reaches past it."""


def clip_interval(ci: Sequence[float], bounds: tuple[float, float] | None = ACC_BOUNDS) -> tuple[float, float]:
    """`ci` clipped to `bounds` (None: unchanged)."""
    lo, hi = float(ci[0]), float(ci[1])
    return (lo, hi) if bounds is None else (max(lo, bounds[0]), min(hi, bounds[1]))


def welch_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """mean(a) - mean(b) with Welch's 95 % interval (unequal variances, Welch-Satterthwaite df)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2 or (a.var() == 0 and b.var() == 0):
        return d, (d, d)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return d, (float(ci.low), float(ci.high))


def paired_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """mean(a - b) over pairs (the same seed in both variants) with a 95 % t-interval."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = min(a.size, b.size)
    return mean_ci(a[:n] - b[:n])


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """counts[i, j] = examples of true class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def per_class_report(cm: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    out = {}
    for i, name in enumerate(class_names):
        tp = float(cm[i, i])
        pred = float(cm[:, i].sum())
        true = float(cm[i, :].sum())
        p = tp / pred if pred else 0.0
        r = tp / true if true else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[name] = {"precision": p, "recall": r, "f1": f, "support": int(true)}
    return out


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present."""
    true = cm.sum(axis=1)
    present = true > 0
    return float((np.diag(cm)[present] / true[present]).mean()) if present.any() else 0.0


@dataclass(frozen=True)
class GroupedAccuracy:
    mean: float  # mean over cells of the per-cell accuracy
    ci95: tuple[float, float]  # percentile bootstrap over cells
    n_groups: int


def grouped_accuracy(correct: np.ndarray, groups: Sequence[str], n_boot: int = 2000,
                     seed: int = 0) -> GroupedAccuracy:
    """Accuracy with each cell weighted equally, and a bootstrap 95 % CI over cells.

    `correct` is a boolean per image; `groups` the cell id per image (bccd_jax.data.cells).
    Images with an empty id are their own group (no trace available).
    """
    correct = np.asarray(correct, dtype=np.float64)
    groups = np.asarray([g if g else f"__image_{i}" for i, g in enumerate(groups)])
    uniq, inv = np.unique(groups, return_inverse=True)
    per_group = np.bincount(inv, weights=correct) / np.bincount(inv)
    mean = float(per_group.mean())
    rng = np.random.default_rng(seed)
    boots = per_group[rng.integers(0, uniq.size, size=(n_boot, uniq.size))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return GroupedAccuracy(mean, (float(lo), float(hi)), int(uniq.size))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def summarize_predictions(logits: np.ndarray, labels: np.ndarray, cells: Sequence[str] | None = None,
                          class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Per-seed, across-seed and seed-ensemble statistics for one split. `logits` is [S, N, C];
    `cells` the cell id per image (photos of one cell merged), when known."""
    from bccd_jax.data.cells import label_conflicts

    logits = np.asarray(logits)
    labels = np.asarray(labels)
    preds = logits.argmax(-1)
    per_seed_acc = (preds == labels[None]).mean(axis=1)
    acc_mean, acc_ci = mean_ci(per_seed_acc, ACC_BOUNDS)
    cm = sum(confusion_matrix(labels, p, len(class_names)) for p in preds)
    ensemble = softmax(logits).mean(axis=0).argmax(-1)  # probabilities averaged over seeds, as predict does
    out = {
        "n_images": int(labels.size),
        "acc_per_seed": per_seed_acc.tolist(),
        "acc_mean": acc_mean,
        "acc_ci95": list(acc_ci),
        "balanced_acc_per_seed": [balanced_accuracy(confusion_matrix(labels, p, len(class_names))) for p in preds],
        "ensemble_acc": float((ensemble == labels).mean()),
        "confusion_matrix_summed_over_seeds": cm.tolist(),
        "per_class": per_class_report(cm, class_names),
    }
    if cells is not None and any(cells):
        g = [grouped_accuracy(p == labels, cells, seed=k) for k, p in enumerate(preds)]
        gm, gci = mean_ci([x.mean for x in g], ACC_BOUNDS)
        out.update({
            "grouped_acc_per_seed": [x.mean for x in g],
            "grouped_acc_mean": gm,
            "grouped_acc_ci95_over_seeds": list(gci),
            "grouped_acc_bootstrap_ci95_per_seed": [list(x.ci95) for x in g],
            "grouped_ensemble_acc": grouped_accuracy(ensemble == labels, cells).mean,
            "n_cells": g[0].n_groups,
            "cells_with_two_labels": label_conflicts(cells, labels),
        })
    return out
