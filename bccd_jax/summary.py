"""What a finished variant amounts to: its summary for the run folder, its row of the results table (one set
of columns, printed fixed width after a run and as markdown in the report), the baselines beside it, its figures."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from bccd_jax import CLASS_NAMES
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


CHANCE_BALANCED = 1 / len(CLASS_NAMES)
"""Balanced accuracy (mean recall over the classes) of any constant prediction."""


def majority_baseline(counts: Mapping[str, int]) -> tuple[float, str]:
    """Accuracy of always predicting the most frequent class of a split's class counts, and that class."""
    major = max(counts, key=counts.get)
    return counts[major] / max(1, sum(counts.values())), major


# ----------------------------------------------------------------------------- the results table


@dataclass(frozen=True)
class Column:
    """One column of the results table: its heading (`short` in the printed table), and its cell."""

    head: str
    cell: Callable[[VariantResult], str]
    short: str | None = None


def format_ci(m: float, ci: Sequence[float]) -> str:
    """An accuracy and its interval, clipped to [0, 1] (runs made before intervals were clipped)."""
    lo, hi = clip_interval(ci)
    return f"{m:.3f} ({lo:.3f}-{hi:.3f})"


def _mean(split: str, key: str = "acc_mean") -> Callable[[VariantResult], str]:
    def cell(r: VariantResult) -> str:
        f = r.final(split)
        return "-" if f is None or f.get(key) is None else f"{f[key]:.3f}"
    return cell


def _with_ci(split: str, key: str = "acc_mean", ci: str = "acc_ci95") -> Callable[[VariantResult], str]:
    def cell(r: VariantResult) -> str:
        f = r.final(split)
        return "-" if f is None or f.get(key) is None else format_ci(f[key], f[ci])
    return cell


def _cells(r: VariantResult) -> str:
    t, lf = r.final("test"), r.final("test_leakfree")
    return f"{t.get('n_cells', '-')}{'' if lf is None else ' / ' + str(lf.get('n_cells', '-'))}"


VARIANT = Column("variant", lambda r: r.name)
SEEDS = Column("seeds", lambda r: str(len(r.seeds)))
EPOCHS = Column("epochs", lambda r: str(r.epochs))
TRAIN = Column("train acc", lambda r: f"{r.raw['train_acc_final_mean']:.3f}", short="train")
TEST = Column("TEST (95% CI)", _with_ci("test"))
BALANCED = Column("balanced", lambda r: f"{np.mean(r.final('test')['balanced_acc_per_seed']):.3f}")
LEAKFREE = Column("leak-free", _mean("test_leakfree"))
LEAKFREE_CI = Column("TEST leak-free (95% CI)", _with_ci("test_leakfree"))
BY_CELL = Column("by cell", _mean("test", "grouped_acc_mean"))
BY_CELL_CI = Column("by cell (95% CI)", _with_ci("test", "grouped_acc_mean", "grouped_acc_ci95_over_seeds"))
CELLS = Column("cells", _cells)
ENSEMBLE = Column("seed ensemble", _mean("test", "ensemble_acc"), short="ensemble")
BEST_EPOCH = Column("TEST best epoch (optimistic)",
                    lambda r: format_ci(r.raw["test_acc_best_mean"], r.raw["test_acc_best_ci95"]))
TEST_SIMPLE = Column("TEST_SIMPLE", _mean("test_simple"))
TEST_SIMPLE_CI = Column("TEST_SIMPLE", _with_ci("test_simple"))
TIME = Column("time", lambda r: f"{r.wall_s:.0f}s")


def table_columns(results: Mapping[str, VariantResult], report: bool = False) -> list[Column]:
    """The report's columns (intervals, cells, the optimistic best epoch) or the printed summary's (time)."""
    simple = any(r.final("test_simple") for r in results.values() if not r.incomplete)
    if report:
        return [VARIANT, SEEDS, EPOCHS, TRAIN, TEST, BALANCED, LEAKFREE_CI, BY_CELL_CI, CELLS, ENSEMBLE, BEST_EPOCH,
                *([TEST_SIMPLE_CI] if simple else [])]
    return [VARIANT, SEEDS, EPOCHS, TRAIN, TEST, BALANCED, LEAKFREE, BY_CELL, ENSEMBLE,
            *([TEST_SIMPLE] if simple else []), TIME]


def fixed_width(columns: Sequence[Column], results: Mapping[str, VariantResult]) -> str:
    """The table for a terminal; unfinished variants are left out."""
    rows = [[c.short or c.head for c in columns]]
    rows += [[c.cell(r) for c in columns] for r in results.values() if not r.incomplete]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(columns: Sequence[Column], results: Mapping[str, VariantResult]) -> list[str]:
    """The table for a report; an unfinished variant is named as such."""
    lines = ["| " + " | ".join(c.head for c in columns) + " |", "|" + "---|" * len(columns)]
    for name, r in results.items():
        lines.append(f"| {name} | interrupted, not reported |" if r.incomplete
                     else "| " + " | ".join(c.cell(r) for c in columns) + " |")
    return lines


def format_table(results: Mapping[str, VariantResult]) -> str:
    """The printed summary: final test accuracy with 95 % CI over seeds, leak-free, by cell, ensemble, time."""
    return fixed_width(table_columns(results), results)


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
