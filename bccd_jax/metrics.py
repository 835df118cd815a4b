"""Evaluation statistics that are honest on this data set.

TEST images are augmentations of only 71 original cells, so per-image accuracy
overstates the number of independent samples. `grouped_accuracy` averages per
source cell and bootstraps *cells*; `mean_ci` gives a Student-t interval over
seeds. Everything here is numpy: it runs after training, on host arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bccd_jax import CLASS_NAMES

# two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30 (standard table values)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (normal beyond 30)."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.959964 + 2.37 / df  # Cornish-Fisher style tail correction, < 1e-3 off for df > 30


def mean_ci(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Mean and 95 % t-interval over independent runs (seeds). One value: interval is (v, v)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size < 2:
        return m, (m, m)
    half = t975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return m, (m - half, m + half)


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


@dataclass(frozen=True)
class GroupedAccuracy:
    mean: float  # mean over source cells of the per-cell accuracy
    ci95: tuple[float, float]  # percentile bootstrap over source cells
    n_groups: int


def grouped_accuracy(correct: np.ndarray, groups: Sequence[str], n_boot: int = 2000,
                     seed: int = 0) -> GroupedAccuracy:
    """Accuracy with each source cell weighted equally, and a bootstrap 95 % CI over cells.

    `correct` is a boolean per image; `groups` the original-image id per image.
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


def summarize_predictions(logits: np.ndarray, labels: np.ndarray, original_ids: Sequence[str] | None = None,
                          class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Per-seed and across-seed statistics for one split. `logits` is [S, N, C]."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    preds = logits.argmax(-1)
    per_seed_acc = (preds == labels[None]).mean(axis=1)
    acc_mean, acc_ci = mean_ci(per_seed_acc)
    cm = sum(confusion_matrix(labels, p, len(class_names)) for p in preds)
    out = {
        "n_images": int(labels.size),
        "acc_per_seed": per_seed_acc.tolist(),
        "acc_mean": acc_mean,
        "acc_ci95": list(acc_ci),
        "confusion_matrix_summed_over_seeds": cm.tolist(),
        "per_class": per_class_report(cm, class_names),
    }
    if original_ids is not None and any(original_ids):
        g = [grouped_accuracy(p == labels, original_ids, seed=k) for k, p in enumerate(preds)]
        gm, gci = mean_ci([x.mean for x in g])
        out.update({
            "grouped_acc_per_seed": [x.mean for x in g],
            "grouped_acc_mean": gm,
            "grouped_acc_ci95_over_seeds": list(gci),
            "grouped_acc_bootstrap_ci95_per_seed": [list(x.ci95) for x in g],
            "n_source_cells": g[0].n_groups,
        })
    return out
