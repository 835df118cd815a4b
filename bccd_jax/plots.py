"""Figures of the study: 2x2 learning-curve panels with a band over seeds, confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bccd_jax import CLASS_NAMES  # noqa: E402
from bccd_jax.files import write_atomic, write_failed  # noqa: E402

PANELS = (("train_acc", "train accuracy"), ("test_acc", "test accuracy"),
          ("train_loss", "train loss"), ("test_loss", "test loss"))


def _save(fig, path: str | Path) -> Path:
    """A figure as PNG, whole or not at all (bccd_jax.files.write_atomic)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    except OSError as e:
        raise write_failed(path, e, path.exists()) from e
    finally:
        plt.close(fig)


def plot_curves(histories: Mapping[str, Mapping[str, list]], path: str | Path, title: str = "") -> Path:
    """The study's 2x2 panels (train/test accuracy and loss per epoch) for several variants.

    Each variant is a mean line over seeds with a band from the per-epoch min to max seed.
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for ax, (key, label) in zip(axes.flat, PANELS):
        for name, hist in histories.items():
            if key not in hist or not hist[key]:
                continue
            epochs = np.asarray(hist["epoch"])
            values = np.asarray(hist[key], dtype=float)  # [epochs, seeds]
            line, = ax.plot(epochs, values.mean(axis=1), label=name, lw=1.5)
            if values.shape[1] > 1:
                ax.fill_between(epochs, values.min(axis=1), values.max(axis=1), color=line.get_color(),
                                alpha=0.2, lw=0)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle(f"{title} (line: mean over seeds, band: min..max)" if title else
                 "mean over seeds, band: min..max")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, path: str | Path, title: str = "",
                   class_names: Sequence[str] = CLASS_NAMES) -> Path:
    """Row-normalised confusion matrix with the raw counts written in each cell."""
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(class_names)), [c[:3] for c in class_names])
    ax.set_yticks(range(len(class_names)), [c[:3] for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_robustness(results: Mapping[str, Mapping], path: str | Path, title: str = "") -> Path:
    """Accuracy (mean over seeds) against the strength level of each shift, one panel per variant.

    `results` maps a variant to bccd_jax.robustness.evaluate_suite's output; the dashed line is clean TEST.
    """
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False, sharey=True)
    for ax, (name, res) in zip(axes[0], results.items()):
        for shift, r in res["shifts"].items():
            acc = np.asarray(r["acc"], dtype=float).mean(axis=1)
            ax.plot(np.arange(1, len(acc) + 1), acc, marker="o", lw=1.5,
                    label=f"{shift} ({', '.join(f'{s:g}' for s in r['strengths'])})")
        ax.axhline(float(np.mean(res["clean"])), color="k", ls="--", lw=1, label="clean TEST")
        ax.set_title(f"{name}: suite mean {np.mean(res['suite_mean']):.3f}", fontsize=10)
        ax.set_xlabel("strength level (see legend for the values)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("TEST accuracy (mean over seeds)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_examples(rows: Sequence[Sequence[tuple[np.ndarray, str, bool]]], path: str | Path, title: str = "") -> Path:
    """A grid of images, one row per group (e.g. a class), each under its caption; a caption marked False (a wrong
    prediction) is red, so the misses stand out when looking at what a model saw."""
    rows = [r for r in rows if r]
    n_cols = max([len(r) for r in rows] + [1])
    fig, axes = plt.subplots(max(len(rows), 1), n_cols, figsize=(1.9 * n_cols, 1.9 * max(len(rows), 1) + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (image, caption, right) in enumerate(row):
            axes[r][c].imshow(image)
            axes[r][c].set_title(caption, fontsize=7, color="black" if right else "red")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
