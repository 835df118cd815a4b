"""What a finished variant amounts to: its summary for the run folder, the printed table, its figures."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from bccd_jax.metrics import ACC_BOUNDS, clip_interval, mean_ci, summarize_predictions
from bccd_jax.run import RunFolder, VariantRecord, VariantResult

def summarize_variant(record: VariantRecord, result, ds, data) -> dict[str, Any]:
    """Everything the report needs about one variant, from its history and final logits."""
    from bccd_jax.data.cells import split_cells

    hist = result.history
    out: dict[str, Any] = {
        "group": record.group, "model": dataclasses.asdict(record.model), "train": dataclasses.asdict(record.train),
        "optimizer": record.optimizer, "seeds": result.seeds, "epochs": len(hist["epoch"]),
        "wall_s": result.wall_s, "wall_s_over_resumes": True, "compile_s_estimate": result.compile_s, "history": hist, "final": {},
    }
    for name in data.eval_sets:
        split = ds.splits[name]
        out["final"][name] = summarize_predictions(result.final_logits[name], split.labels, split_cells(ds, name))
    for name, (parent, idx) in data.eval_subsets.items():
        split = ds.splits[parent]
        out["final"][name] = summarize_predictions(result.final_logits[parent][:, idx], split.labels[idx],
                                                   split_cells(ds, parent)[idx])
    for name in out["final"]:
        acc = np.asarray(hist[f"{name}_acc"])  # [epochs, seeds]
        out[f"{name}_acc_final_mean"], ci = mean_ci(acc[-1], ACC_BOUNDS)
        out[f"{name}_acc_final_ci95"] = list(ci)
        out[f"{name}_acc_best_mean"], ci = mean_ci(acc.max(axis=0), ACC_BOUNDS)
        out[f"{name}_acc_best_ci95"] = list(ci)
        out[f"{name}_acc_best_epoch_per_seed"] = (acc.argmax(axis=0) + 1).tolist()
    out["train_acc_final_mean"] = float(np.asarray(hist["train_acc"])[-1].mean())
    return out


def majority_baseline(ds, split: str = "test") -> tuple[float, str]:
    """Accuracy of always predicting the most frequent class of `split`, and that class."""
    counts = ds.class_counts(split)
    major = max(counts, key=counts.get)
    return counts[major] / max(1, sum(counts.values())), major


def format_table(results: Mapping[str, VariantResult]) -> str:
    """A fixed-width summary: final test accuracy with 95 % CI over seeds, leak-free, by cell, ensemble."""
    def cell(r: VariantResult, split: str, key: str = "acc_mean") -> str:
        f = r.final(split)
        return "-" if f is None or f.get(key) is None else f"{f[key]:.3f}"

    def balanced(r: VariantResult) -> str:
        return f"{np.mean(r.final('test')['balanced_acc_per_seed']):.3f}"

    has_simple = any(r.final("test_simple") for r in results.values())
    head = ["variant", "seeds", "epochs", "train", "TEST (95% CI)", "balanced", "leak-free", "by cell", "ensemble"]
    head += ["TEST_SIMPLE"] if has_simple else []
    rows = [head + ["time"]]
    for name, r in results.items():
        if r.incomplete:
            continue
        t = r.final("test")
        lo, hi = clip_interval(t["acc_ci95"])  # runs made before intervals were clipped
        row = [name, str(len(r.seeds)), str(r.epochs), f"{r.raw['train_acc_final_mean']:.3f}",
               f"{t['acc_mean']:.3f} ({lo:.3f}-{hi:.3f})", balanced(r), cell(r, "test_leakfree"),
               cell(r, "test", "grouped_acc_mean"), cell(r, "test", "ensemble_acc")]
        row += [cell(r, "test_simple")] if has_simple else []
        rows.append(row + [f"{r.wall_s:.0f}s"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_figures(name: str, folder: RunFolder, results: Mapping[str, VariantResult]) -> None:
    """One 2x2 curve figure per group of variants, one confusion matrix per variant."""
    from bccd_jax.plots import plot_confusion, plot_curves

    groups: dict[str, dict[str, dict]] = {}
    for vname, r in results.items():
        if not r.incomplete:
            groups.setdefault(r.group or name, {})[vname] = r.history
    for group, hists in groups.items():
        plot_curves(hists, folder.curves_figure(group), title=f"{name}: {group}")
    for vname, r in results.items():
        if not r.incomplete:
            cm = np.asarray(r.final("test")["confusion_matrix_summed_over_seeds"])
            plot_confusion(cm, folder.confusion_figure(vname),
                           title=f"{vname}: TEST, summed over {len(r.seeds)} seeds")
