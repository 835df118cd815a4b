"""Collect run folders into REPORT.md and summary.json, with a verdict for each claim of the study.

    python -m experiments.report runs/optimizers/2026... runs/regularization/2026... [--out results]

Verdicts compare means over seeds with a 95 % t-interval of the difference
(Welch); "supported" needs the interval to exclude zero in the claimed
direction, "contradicted" in the other, otherwise "inconclusive".
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bccd_jax import runs
from bccd_jax.errors import UserError, run_cli
from bccd_jax.metrics import mean_ci, t975


def diff_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """mean(a) - mean(b) with a Welch 95 % interval (Welch-Satterthwaite degrees of freedom)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return d, (d, d)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return d, (d, d)
    df = (va + vb) ** 2 / ((va ** 2) / (a.size - 1) + (vb ** 2) / (b.size - 1))
    half = t975(max(1, int(df))) * se
    return d, (d - half, d + half)


def verdict_greater(a, b) -> tuple[str, str]:
    d, (lo, hi) = diff_ci(a, b)
    text = f"difference {d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})"
    if lo > 0:
        return "supported", text
    if hi < 0:
        return "contradicted", text
    return "inconclusive", text


def final_acc(r: dict, split: str = "test") -> list[float]:
    return list(np.asarray(r["history"][f"{split}_acc"])[-1])


ABOUT_85 = 0.80
"""Lowest accuracy still read as the study's "about 85 %" for the deep CNN."""


def claims_for(experiment: str, res: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) rows for the experiments the study made claims about."""
    out: list[tuple[str, str, str]] = []
    if experiment == "optimizers" and {"sgd", "adam", "rmsprop"} <= set(res):
        for adaptive in ("adam", "rmsprop"):
            v, e = verdict_greater(final_acc(res[adaptive]), final_acc(res["sgd"]))
            out.append((f"{adaptive} (lr 1e-3) reaches a higher test accuracy than SGD (lr 0.01) at "
                        f"{res[adaptive]['epochs']} epochs", v, e))
    if experiment == "regularization":
        overfit = [k for k, r in res.items() if r.get("group") == "overfit"]
        if overfit:
            h = res[overfit[0]]["history"]
            tl = np.asarray(h["test_loss"]).mean(axis=1)
            ta = np.asarray(h["train_acc"]).mean(axis=1)
            best = int(tl.argmin())
            rises = ta[-1] >= ta[best]
            diverges = tl[-1] > 1.2 * tl[best]
            verdict = "supported" if (rises and diverges) else "contradicted"
            out.append((f"training {len(tl)} epochs overfits: train accuracy keeps rising while test loss diverges",
                        verdict, f"test loss min {tl[best]:.3f} at epoch {best + 1}, final {tl[-1]:.3f} "
                        f"({tl[-1] / max(tl[best], 1e-9):.1f}x); train acc {ta[best]:.3f} -> {ta[-1]:.3f}"))
        drops = {k: r for k, r in res.items() if r.get("group") == "dropout"}
        if "dropout_0.2" in drops and len(drops) > 1:
            means = {k: float(np.mean(final_acc(r))) for k, r in drops.items()}
            best = max(means, key=means.get)
            if best == "dropout_0.2":  # is 0.2 clearly ahead of the runner-up?
                rival = max((k for k in drops if k != best), key=means.get)
                v, e = verdict_greater(final_acc(drops[best]), final_acc(drops[rival]))
                v = "supported" if v == "supported" else "inconclusive"
                e = f"0.2 is best; vs runner-up {rival}: {e}"
            else:  # is the best rate clearly ahead of 0.2?
                v, e = verdict_greater(final_acc(drops[best]), final_acc(drops["dropout_0.2"]))
                v = "contradicted" if v == "supported" else "inconclusive"
                e = f"best rate is {best} ({means[best]:.3f}); {best} vs 0.2: {e}"
            out.append(("20 % dropout gives the best test accuracy", v, e))
        if {"batchnorm_on", "batchnorm_off"} <= set(res):
            v, e = verdict_greater(final_acc(res["batchnorm_on"]), final_acc(res["batchnorm_off"]))
            out.append(("batch normalization improves test accuracy", v, e))
        if {"batchnorm_on_m0.9", "batchnorm_off"} <= set(res):
            v, e = verdict_greater(final_acc(res["batchnorm_on_m0.9"]), final_acc(res["batchnorm_off"]))
            out.append(("batch normalization improves test accuracy (running-statistics momentum 0.9 instead "
                        "of Keras' 0.99)", v, e))
        if {"centering_on", "centering_off"} <= set(res):
            on, off = np.asarray(final_acc(res["centering_on"])), np.asarray(final_acc(res["centering_off"]))
            n = min(on.size, off.size)
            paired = on[:n] - off[:n]  # same seeds, same initial weights
            m, (lo, hi) = mean_ci(paired)
            frac = float((paired > 0).mean())
            depends = 0 < frac < 1 and lo <= 0 <= hi
            out.append(("the effect of feature centering depends on the initialization (seed)",
                        "supported" if depends else "contradicted",
                        f"centering helps in {int((paired > 0).sum())} of {n} seeds, hurts in "
                        f"{int((paired < 0).sum())}; paired difference {m:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}), "
                        f"per-seed range {paired.min():+.3f} to {paired.max():+.3f}"))
    if experiment == "architecture":
        if "deep" in res:
            m, (lo, hi) = mean_ci(final_acc(res["deep"]))
            epochs = res["deep"]["epochs"]
            # "about 85 %": supported when the whole interval is at or above 0.80, contradicted (only at the
            # study's 50 epochs) when the whole interval is below it, inconclusive when it straddles 0.80
            if lo >= ABOUT_85:
                v = "supported"
            elif epochs < 50:
                v = f"not reached in {epochs} epochs (fewer than the study's 50: not a test of the claim)"
            else:
                v = "contradicted" if hi < ABOUT_85 else "inconclusive"
            out.append(("the deep CNN reaches about 85 % test accuracy", v,
                        f"deep: {m:.3f} (95% CI {lo:.3f} to {hi:.3f}) over {len(res['deep']['seeds'])} seeds"))
            if "base" in res:
                v, e = verdict_greater(final_acc(res["deep"]), final_acc(res["base"]))
                out.append(("the deep CNN beats the base CNN", v, e))
        if {"expanded", "expanded_centered"} <= set(res):
            v, e = verdict_greater(final_acc(res["expanded_centered"]), final_acc(res["expanded"]))
            out.append(("feature centering improves the expanded CNN", v, e))
    if experiment == "vgg":
        for a, b, claim in (("frozen_blocks1-3", "scratch", "ImageNet-initialised VGG16 with frozen lower blocks "
                             "beats VGG16 from scratch"),
                            ("all_trainable", "scratch", "fine-tuning all VGG16 layers from pretrained weights "
                             "beats VGG16 from scratch")):
            if {a, b} <= set(res):
                v, e = verdict_greater(final_acc(res[a]), final_acc(res[b]))
                out.append((claim, v, e))
    return out


def variant_summary(r: dict, dataset: str) -> dict[str, Any]:
    test = r["final"]["test"]
    simple = r["final"].get("test_simple")
    return {"dataset": dataset, "seeds": r["seeds"], "epochs": r["epochs"],
            "test_acc_mean": test["acc_mean"], "test_acc_ci95": test["acc_ci95"],
            "test_simple_acc_mean": None if simple is None else simple["acc_mean"],
            "grouped_acc_mean": test.get("grouped_acc_mean")}


def _fmt_ci(m: float, ci: Sequence[float]) -> str:
    return f"{m:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def experiment_section(config: dict, metrics: dict, fig_rel: str, fig_names: list[str]) -> list[str]:
    exp = config["experiment"]
    data = config["data"]
    v = config["versions"]
    lines = [f"## {exp} ({data['dataset']} data)", "", f"{config.get('description', '')}", "",
             f"- data: **{data['dataset']}**, image {data['image_shape'][0]}x{data['image_shape'][1]}, "
             f"splits {data['splits']}, fingerprint `{data['fingerprint'][:16]}`",
             f"- command: `{config['command']}`",
             f"- code: git `{config.get('git_commit')}`; jax {v['jax']}, flax {v['flax']}, optax {v['optax']}; "
             f"backend {v['backend']} ({', '.join(v['devices'][:2])})",
             f"- wall time of the variants: {sum(r['wall_s'] for r in metrics.values() if 'wall_s' in r):.0f} s",
             ""]
    done = [r for r in metrics.values() if not r.get("incomplete")]
    if done:
        n_seeds = len(done[0]["seeds"])  # the confusion matrix is summed over seeds
        support = {c: v["support"] // n_seeds for c, v in done[0]["final"]["test"]["per_class"].items()}
        major = max(support, key=support.get)
        lines += [f"- majority-class baseline on TEST: {support[major] / max(1, sum(support.values())):.3f} "
                  f"(always {major}); class counts {support}", ""]
    has_simple = any("test_simple" in r.get("final", {}) for r in metrics.values())
    head = ("| variant | seeds | epochs | train acc | TEST final (95% CI) | TEST best epoch (optimistic) | "
            "grouped by cell (95% CI) | cells |" + (" TEST_SIMPLE (71 originals) |" if has_simple else ""))
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in metrics.items():
        if r.get("incomplete"):
            lines.append(f"| {name} | interrupted, not reported |")
            continue
        t = r["final"]["test"]
        g = t.get("grouped_acc_mean")
        row = (f"| {name} | {len(r['seeds'])} | {r['epochs']} | {r['train_acc_final_mean']:.3f} | "
               f"{_fmt_ci(t['acc_mean'], t['acc_ci95'])} | {_fmt_ci(r['test_acc_best_mean'], r['test_acc_best_ci95'])} | "
               f"{'-' if g is None else _fmt_ci(g, t['grouped_acc_ci95_over_seeds'])} | "
               f"{t.get('n_source_cells', '-')} |")
        if has_simple:
            s = r["final"].get("test_simple")
            row += f" {'-' if s is None else _fmt_ci(s['acc_mean'], s['acc_ci95'])} |"
        lines.append(row)
    complete = {k: r for k, r in metrics.items() if not r.get("incomplete")}
    claims = claims_for(exp, complete)
    if claims:
        lines += ["", "| claim of the study | verdict on this data | evidence |", "|---|---|---|"]
        lines += [f"| {c} | **{v}** | {e} |" for c, v, e in claims]
    lines += [""]
    for f in fig_names:
        lines.append(f"![{f}]({fig_rel}/{f})")
    lines.append("")
    return lines


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None,
                 notes: str | None = None) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, Any]] = {}
    sections: list[str] = []
    used_fig_keys: set[str] = set()
    for rd in run_dirs:
        rd = Path(rd)
        config, metrics = runs.read_run(rd)
        if not metrics:
            raise UserError(f"{rd} has no finished variant (metrics.json missing); finish or resume the run first")
        exp = config["experiment"]
        dataset = config["data"]["dataset"]
        size = "x".join(str(v) for v in config["data"].get("image_shape", [])[:2])
        entries = summary.setdefault(exp, {})
        for name, r in metrics.items():
            if r.get("incomplete"):
                continue
            # the same variant again gets a suffix: the data set when that differs, else data set and image size
            key = name
            if key in entries:
                key = f"{name}@{dataset}" if entries[name]["dataset"] != dataset else f"{name}@{dataset}-{size}"
            if key in entries:
                key = f"{name}@{dataset}-{size}"
            if key in entries:
                print(f"warning: {exp}/{key} appears twice; {rd} replaces the earlier run", file=sys.stderr)
            entries[key] = variant_summary(r, dataset)
        fig_key = f"{exp}_{dataset}"  # the same experiment may come from both data sets and several sizes
        if fig_key in used_fig_keys:
            fig_key = f"{fig_key}_{size}"
        used_fig_keys.add(fig_key)
        fig_dir = out / "figures" / fig_key
        fig_names = []
        if (rd / "figures").is_dir():
            fig_dir.mkdir(parents=True, exist_ok=True)
            for f in sorted((rd / "figures").glob("curves_*.png")) + sorted((rd / "figures").glob("confusion_*.png")):
                shutil.copy2(f, fig_dir / f.name)
                fig_names.append(f.name)
        sections += experiment_section(config, metrics, f"figures/{fig_key}", fig_names)
    lines = [f"# {title or 'bccd_jax: reproduction of the BCCD white-cell CNN study'}", ""]
    if notes:
        lines += [notes.strip(), ""]
    lines += ["Accuracies are means over seeds with a 95 % Student-t interval over seeds. "
              "TEST holds augmentations of only 71 original cells, so *grouped by cell* (each source cell "
              "weighted equally) is the honest per-cell figure; *TEST best epoch* picks the epoch on TEST "
              "itself and is optimistic. Verdicts use a Welch 95 % interval of the difference of means.", ""]
    lines += sections
    report = out / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    summary_path = out / "summary.json"
    runs.write_json(summary_path, summary)
    return report, summary_path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", help="run folders written by the experiments")
    p.add_argument("--out", default="results", help="folder for REPORT.md, summary.json, figures/")
    p.add_argument("--title")
    p.add_argument("--notes-file", help="markdown inserted at the top (hardware, reductions, wall time)")
    args = p.parse_args(argv)
    notes = Path(args.notes_file).read_text() if args.notes_file else None
    report, summary = write_report(args.run_dirs, args.out, args.title, notes)
    print(f"wrote {report} and {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
