"""Collect run folders into REPORT.md and summary.json, with a verdict for each claim of the study.

    python -m experiments.report results/runs/*/* --out results

Everything in the report comes from the run folders: the header (hardware, protocol, wall
times, commits) from their config.json, the tables and verdicts from their metrics.json (and
robustness.json where the robustness benchmark ran), the verdicts on the study's claims from
experiments.claims; the section on other labs' images from `<--out>/other_labs/other_labs.json` where
experiments.other_labs wrote one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bccd_jax.config import LEFT_CHANCE, learning_train_acc, left_chance
from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.files import write_atomic
from bccd_jax.metrics import ACC_BOUNDS, clip_interval, mean_ci
from bccd_jax.run import RunFolder, RunRecord, VariantResult, write_json
from bccd_jax.summary import format_ci, majority_baseline, markdown, table_columns
from experiments.claims import STUDY_EXPERIMENTS, ClaimRow, claims_over_sizes
from experiments.few_shot import report_section as few_shot_section
from experiments.other_labs import report_section as other_labs_section
from experiments.peer_section import peer_section
from experiments.protocol import PARTS, step_of


# ----------------------------------------------------------------------------- tables


def _acc_ci(ci: Sequence[float] | None) -> list[float] | None:
    return None if ci is None else list(clip_interval(ci))


def variant_summary(r: VariantResult, record: RunRecord) -> dict[str, Any]:
    """One variant's line of summary.json; the train accuracy also over the seeds that left chance (a seed stuck
    at chance, bccd_jax.config.left_chance, is counted apart: learning_train_acc, as the stop rule reads it)."""
    test, leak, simple = r.final("test"), r.final("test_leakfree"), r.final("test_simple")
    train = r.history["train_acc"]
    alive = left_chance(train)
    return {"dataset": record.data.dataset, "image_size": list(record.data.image_size), "protocol": record.protocol,
            "seeds": r.seeds, "epochs": r.epochs, "wall_s": r.wall_s,
            "train_acc_mean": r.raw["train_acc_final_mean"],
            "seeds_never_left_chance": [s for s, ok in zip(r.seeds, alive) if not ok],
            "train_acc_mean_left_chance": learning_train_acc(train),
            "test_acc_mean": test["acc_mean"], "test_acc_ci95": _acc_ci(test["acc_ci95"]),
            "test_leakfree_acc_mean": None if leak is None else leak["acc_mean"],
            "test_leakfree_acc_ci95": None if leak is None else _acc_ci(leak["acc_ci95"]),
            "balanced_acc_mean": float(np.mean(test["balanced_acc_per_seed"])),
            "grouped_acc_mean": test.get("grouped_acc_mean"),
            "grouped_acc_ci95": _acc_ci(test.get("grouped_acc_ci95_over_seeds")), "n_cells": test.get("n_cells"),
            "ensemble_acc": test.get("ensemble_acc"),
            "test_simple_acc_mean": None if simple is None else simple["acc_mean"],
            "test_simple_acc_ci95": None if simple is None else _acc_ci(simple["acc_ci95"])}


def experiment_section(folder: RunFolder, record: RunRecord, results: dict[str, VariantResult], fig_rel: str,
                       fig_names: list[str]) -> list[str]:
    data = record.data
    v = record.versions
    done = [r for r in results.values() if not r.incomplete]
    lines = [f"## {record.experiment} ({data.dataset}, {data.size}, "
             f"protocol {record.protocol or '-'})", "", record.description, "",
             f"- run folder: `{folder.path.name}`; data **{data.dataset}** ({data.source}), splits {data.splits}, "
             f"fingerprint `{data.fingerprint[:16]}`",
             f"- command: `{record.command}`" + "".join(f"; before: `{c}`" for c in record.previous_commands),
             f"- code: git `{record.git_commit}`; jax {v.get('jax')}, flax {v.get('flax')}, optax {v.get('optax')}; "
             f"{record.hardware.get('cpu', '?')} ({record.hardware.get('cores', '?')} cores), backend "
             f"{v.get('backend')}",
             f"- wall time of the variants: {sum(r.wall_s for r in done):.0f} s", ""]
    if done:
        n_seeds = len(done[0].seeds)  # the confusion matrix is summed over seeds
        support = {c: m["support"] // n_seeds for c, m in done[0].final("test")["per_class"].items()}
        base, major = majority_baseline(support)
        lines += [f"- majority-class baseline on TEST: {base:.3f} (always {major}); class counts {support}"]
        conflicts = done[0].final("test").get("cells_with_two_labels") or {}
        if conflicts:
            lines.append(f"- TEST cells carrying two labels (each image scored against its own): {conflicts}")
        lines.append("")
    if any(v.model.arch == "vgg16" for v in record.variants.values()):
        from bccd_jax.models.vgg_weights import describe_weights
        from bccd_jax.run import cached_cut

        for name, v in record.variants.items():
            if name in results:
                cut = cached_cut(v.model, v.train)
                lines.append(f"- `{name}`: weights {describe_weights(v.model.pretrained)}; freeze {v.model.freeze}"
                             + (f"; blocks 1-{cut} computed once per image and cached" if cut else ""))
        missing = [n for n in ("all_trainable", "scratch") if n not in results]
        if missing:
            lines.append(f"- not in this run: {', '.join(missing)} (the whole VGG16 trains every step, no cache "
                         f"applies; `python -m experiments.vgg --variants {' '.join(missing)}` runs them, the "
                         "gpu protocol includes them)")
        lines.append("")
    lines += markdown(table_columns(results, report=True), results)
    lines.append("")
    lines += [f"![{f}]({fig_rel}/{f})" for f in fig_names]
    lines.append("")
    return lines


def robustness_rows(runs) -> list[tuple[str, dict, VariantResult]]:
    """(label, robustness result, variant result) of every variant the robustness suite evaluated."""
    out = []
    for folder, record, results in runs:
        rob = folder.read_robustness()
        for name, res in (rob or {}).get("variants", {}).items():
            if name in results:
                out.append((f"{record.experiment}/{name}", dict(res, stride=rob["stride"], n_images=rob["n_images"]),
                            results[name]))
    return out


def robust_choice(rows) -> tuple[str, str] | None:
    """The suite's choice: the best suite mean among the variants whose clean TEST mean lies inside the 95 %
    interval of the variant with the best clean TEST mean (clean TEST = the run's own final TEST accuracy)."""
    if not rows:
        return None
    clean = {label: mean_ci(r.final_acc(), ACC_BOUNDS) for label, _, r in rows}
    best = max(clean, key=lambda k: clean[k][0])
    lo = clean[best][1][0]
    inside = [(label, float(np.mean(rob["suite_mean"]))) for label, rob, _ in rows if clean[label][0] >= lo]
    label, suite = max(inside, key=lambda x: x[1])
    return label, (f"best clean TEST: {best} {clean[best][0]:.3f} (95% CI {lo:.3f}-{clean[best][1][1]:.3f}); within it: "
                   + ", ".join(f"{k} (suite {v:.3f})" for k, v in inside) + f"; the best suite mean is {label}")


def robustness_section(rows, fig_paths: list[str]) -> list[str]:
    from bccd_jax.robustness import SUITE

    lines = ["## Robustness to simulated shifts of BCCD's images", "",
             "TEST images under a fixed, seeded suite of shifts (`python -m experiments.robustness`, "
             "bccd_jax/robustness.py): hue, saturation, brightness, gamma, blur, JPEG, rescale and stain (H&E "
             "optical density) at several strengths; the suite mean averages every shift and strength. Means over "
             "seeds with a 95 % t-interval; the suite runs on every k-th TEST image (k and the count below).", "",
             "| variant | seeds | images (every k-th) | clean TEST (95% CI) | suite mean (95% CI) | worst shift |",
             "|---|---|---|---|---|---|"]
    for label, rob, _ in rows:
        worst = min(((n, k, float(np.mean(a))) for n, r in rob["shifts"].items() for k, a in zip(r["strengths"], r["acc"])),
                    key=lambda x: x[2])
        lines.append(f"| {label} | {len(rob['seeds'])} | {rob['n_images']} (k={rob['stride']}) | "
                     f"{format_ci(*mean_ci(rob['clean']))} | {format_ci(*mean_ci(rob['suite_mean']))} | "
                     f"{worst[0]} {worst[1]:g}: {worst[2]:.3f} |")
    head = "| shift | strength | " + " | ".join(label for label, _, _ in rows) + " |"
    lines += ["", head, "|---|---|" + "---|" * len(rows)]
    for shift in SUITE:
        for k, strength in enumerate(shift.strengths):
            cells = [f"{np.mean(rob['shifts'][shift.name]['acc'][k]):.3f}" for _, rob, _ in rows]
            lines.append(f"| {shift.name} ({shift.unit}) | {strength:g} | " + " | ".join(cells) + " |")
    choice = robust_choice(rows)
    if choice:
        lines += ["", f"The suite's choice: **{choice[0]}**: {choice[1]}. The shipped model (`results/model`) is chosen "
                  "on other labs' images instead (section \"Other labs' images\"): the suite shifts BCCD's own "
                  "pictures, which did not foresee them."]
    lines.append("")
    lines += [f"![robustness]({p})" for p in fig_paths]
    return lines + [""]


def header(runs: list[tuple[RunFolder, RunRecord, dict[str, VariantResult]]], command: str) -> list[str]:
    """Generated from the run records: hardware, protocol, wall time and commit of every run."""
    hw = sorted({f"{r.hardware.get('cpu', '?')} ({r.hardware.get('cores', '?')} cores"
                 f"{', ' + ' '.join(r.hardware.get('cpu_flags', [])) if r.hardware.get('cpu_flags') else ''}; "
                 f"backend {r.hardware.get('backend', r.versions.get('backend', '?'))})" for _, r, _ in runs})
    walls = [sum(x.wall_s for x in res.values() if not x.incomplete) for _, _, res in runs]
    total = sum(walls)
    by_part: dict[str, float] = {}
    for (folder, rec, _), wall in zip(runs, walls):
        step = step_of(folder.path, rec.protocol)
        key = PARTS[step.part] if step else "runs outside `python -m experiments.study` (screens, single experiments)"
        by_part[key] = by_part.get(key, 0.0) + wall
    parts = "; ".join(f"{k}: {v:.0f} s ({v / 3600:.1f} h)" for k, v in by_part.items())
    lines = [f"Generated by `{command}` from {len(runs)} run folder(s). Hardware: {'; '.join(hw)}. "
             f"Training wall time of all runs: {total:.0f} s ({total / 3600:.1f} h). By part: {parts}.", "",
             "| run | experiment | protocol | data | image | variants | wall time | commit |", "|---|---|---|---|---|---|---|---|"]
    for folder, rec, res in runs:
        wall = sum(x.wall_s for x in res.values() if not x.incomplete)
        # runs resumed before wall times were kept over processes record only the last process
        last_only = rec.resumed_from and not all(x.raw.get("wall_s_over_resumes") for x in res.values())
        lines.append(f"| `{folder.path.name}` | {rec.experiment} | {rec.protocol or '-'} | {rec.data.dataset} | "
                     f"{rec.data.size} | {variant_list(rec, res)} | {wall:.0f} s "
                     f"({wall / 60:.1f} min{', the last of its resumed processes only' if last_only else ''}) | "
                     f"`{(rec.git_commit or '?')[:10]}` |")
    return lines + [""]


def variant_list(record: RunRecord, results: Mapping[str, VariantResult]) -> str:
    """A run's variants for the header, an unfinished one marked with the epoch it reached of those planned."""
    def planned(name):
        v = record.variants.get(name)
        return v.train.epochs if v is not None else "?"

    return ", ".join(f"{n} (stopped at epoch {r.epochs} of {planned(n)})" if r.incomplete else n
                     for n, r in results.items())


def load_runs(run_dirs: Sequence[str | Path]) -> list[tuple[RunFolder, RunRecord, dict[str, VariantResult]]]:
    """(folder, record, results) of every run folder, oldest first whatever the order given (a variant run again
    is replaced by its later run); one without a finished variant is refused."""
    runs = []
    for rd in run_dirs:
        folder = RunFolder(rd).check()
        results = folder.results()
        if not results:
            raise UserError(f"{folder} has no finished variant (metrics.json missing); finish or resume the run first")
        runs.append((folder, folder.record(), results))
    return sorted(runs, key=lambda run: run[1].created)


Placed = dict[tuple[str, str, str, str], tuple[RunFolder, RunRecord, VariantResult]]


def latest_variants(runs) -> Placed:
    """(experiment, data set, size, variant) -> (folder, record, result) of its latest finished run, in the order
    each first appeared: a variant run again on the same data set and image size is replaced by the later folder
    (runs come oldest first from load_runs); one unfinished is left out."""
    placed: Placed = {}
    for folder, record, results in runs:
        for name, r in results.items():
            if r.incomplete:
                continue
            key = (record.experiment, record.data.dataset, record.data.size, name)
            if key in placed:
                print(f"{record.experiment}/{name}: {folder.path.name} replaces {placed[key][0].path.name}",
                      file=sys.stderr)
            placed[key] = (folder, record, r)
    return placed


def summarize_runs(latest: Placed) -> dict[str, dict[str, Any]]:
    """summary.json: experiment -> variant -> its line (variant_summary) and the run folder it came from.

    Each variant's latest run (`latest`, from latest_variants); one on another data set or size than the
    variant's first is kept apart under `name@dataset` (or `name@dataset-size`)."""
    summary: dict[str, dict[str, Any]] = {}
    for (exp, dataset, size, name), (folder, record, r) in latest.items():
        entries = summary.setdefault(exp, {})
        if name not in entries:
            key = name
        else:
            key = f"{name}@{dataset}" if entries[name]["dataset"] != dataset else f"{name}@{dataset}-{size}"
        entries[key] = {**variant_summary(r, record), "run": folder.path.name}
    return summary


def figure_keys(runs) -> list[str]:
    """The folder under figures/ of each run: experiment, data set, size and the run's stamp (stable when runs
    are added)."""
    used: set[str] = set()
    keys = []
    for folder, record, _ in runs:
        exp, dataset, size = record.experiment, record.data.dataset, record.data.size
        key = f"{exp}_{dataset}_{size}_{folder.path.name}"
        k = 1
        while key in used:
            k += 1
            key = f"{exp}_{dataset}_{size}_{k}"
        used.add(key)
        keys.append(key)
    return keys


def copy_figures(folder: RunFolder, into: Path) -> list[Path]:
    """The run's figures copied into `into`; the copies."""
    if not folder.figures.is_dir():
        return []
    into.mkdir(parents=True, exist_ok=True)
    copies = []
    for f in folder.figure_files():
        copies.append(write_atomic(into / f.name, f.read_bytes()))
    return copies


def remove_stale_figures(figures: Path, written: set[Path]) -> None:
    """Figures of an earlier report that this one did not write, and the folders they leave empty."""
    for stale in [f for f in figures.glob("*/*.png") if f not in written]:
        stale.unlink()
    for folder in figures.glob("*/"):
        if not any(folder.iterdir()):
            folder.rmdir()


def merged_claims(latest: Placed) -> tuple[list[ClaimRow], list[str]]:
    """The claims over the latest variants of every data set and image size (one study each: experiment ->
    variant, whatever run folder each came from), one row per claim across sizes; and the study's experiments no
    augmented run tested."""
    studies: dict[tuple[str, str], dict[str, dict[str, VariantResult]]] = {}
    for (exp, dataset, size, name), (_, _, r) in latest.items():
        studies.setdefault((dataset, size), {}).setdefault(exp, {})[name] = r
    untested = [e for e in STUDY_EXPERIMENTS
                if not any(e in study for (dataset, _), study in studies.items() if dataset == "augmented")]
    return claims_over_sizes(studies), untested


ABOUT_METRICS = (
    "Accuracies are means over seeds with a 95 % Student-t interval over seeds. TEST holds augmentations "
    "of 71 original photos of 68 cells (three pairs of photos show one cell); *leak-free* drops the TEST "
    "images whose cell is also in TRAIN (three cells re-photographed across the split); *by cell* weights "
    "each cell equally (photos of one cell merged) with its interval over seeds, *cells* counts them "
    "(TEST / leak-free); *balanced* is the mean recall over the four classes; *seed ensemble* averages the seeds' "
    "probabilities, as `bccd_jax.predict` does; *TEST best epoch* picks the epoch on TEST itself and is optimistic.")


def claims_section(claims: list[ClaimRow]) -> list[str]:
    """The study against the reproduction (one row per claim: the study's words and figure, ours, the budget, the
    seeds that never left chance, the verdict), then how each claim is tested (the measurement and its threshold,
    in experiments/claims/, and when it was fixed)."""
    cell = lambda text: text.replace("|", "/")  # noqa: E731  (a quote's "|" would split the row)
    lines = ["## The study against this reproduction", "",
             "Each claim in the study's words, its figure, what this reproduction measured (mean over seeds with a "
             "95 % interval where there is one; *clipped*: the t-interval reached past [0, 1] and is cut there; "
             "differences paired by seed id say in how many seeds they had their sign), the budget it ran at, the "
             f"seeds that never left chance (best training accuracy below {LEFT_CHANCE}) and the verdict. A row whose "
             "variants hold such seeds is judged over all seeds and over the seeds that left chance, and its "
             "verdict gives both where they differ. *not reached at this budget*: the claim's premise never held "
             "in the run, so the run cannot test it. A claim tested at two image sizes gives each.", "",
             "| experiment | the study | the study's figure | this reproduction | budget | never left chance "
             "| verdict |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {c.experiment} | {cell(c.quote)} | {cell(c.figure)} | {cell(c.ours)} | {c.budget} | "
              f"{c.stuck or 'none'} | **{c.verdict}** |" for c in claims]
    lines += ["", "How each claim is tested (`experiments/claims/`), and when the test and its threshold were fixed:",
              "", "| experiment | the study | test and threshold | fixed |", "|---|---|---|---|"]
    lines += [f"| {c.experiment} | {cell(c.quote)} ({cell(c.figure)}) | {cell(c.test)} | {cell(c.fixed)} |"
              for c in claims]
    return lines + [""]


def report_lines(runs, latest: Placed, keys: list[str], sections: list[str], title: str | None,
                 notes: str | None, command: str, other_labs: Sequence[str] = ()) -> list[str]:
    """REPORT.md: the header, the claims, the robustness comparison, other labs' images, then one section per
    run."""
    claims, untested = merged_claims(latest)
    lines = [f"# {title or 'bccd_jax: reproduction of the BCCD white-cell CNN study'}", ""]
    lines += header(runs, command)
    if notes:
        lines += [notes.strip(), ""]
    lines += [ABOUT_METRICS, ""]
    if claims:
        lines += claims_section(claims)
    if untested:
        lines += [f"No run of the augmented set among these folders for: {', '.join(untested)}. Their claims are "
                  "not tested by this report; `python -m experiments.study --protocol cpu --data-dir DATA` runs "
                  "every step that has no finished run.", ""]
    rob = robustness_rows(runs)
    if rob:
        lines += robustness_section(rob, [f"figures/{k}/{folder.robustness_figure.name}" for k, (folder, _, _) in
                                          zip(keys, runs) if folder.robustness_figure.is_file()])
    return lines + list(other_labs) + sections


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None,
                 notes: str | None = None, command: str | None = None) -> tuple[Path, Path]:
    """REPORT.md, summary.json and figures/ of the run folders, into `out`."""
    from bccd_jax.run import command_line

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(run_dirs)
    latest = latest_variants(runs)
    summary = summarize_runs(latest)
    keys = figure_keys(runs)
    sections: list[str] = []
    written: set[Path] = set()
    for key, (folder, record, results) in zip(keys, runs):
        copies = copy_figures(folder, out / "figures" / key)
        written.update(copies)
        sections += experiment_section(folder, record, results, f"figures/{key}",
                                       [f.name for f in copies if f.name != folder.robustness_figure.name])
    lines = report_lines(runs, latest, keys, sections, title, notes, command or command_line(),
                         other_labs_section(out) + few_shot_section(out) + peer_section(out, latest))
    remove_stale_figures(out / "figures", written)
    report = out / "REPORT.md"
    write_atomic(report, "\n".join(lines) + "\n")
    summary_path = out / "summary.json"
    write_json(summary_path, summary)
    return report, summary_path


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", help="run folders written by the experiments")
    p.add_argument("--out", default="results", help="folder for REPORT.md, summary.json, figures/")
    p.add_argument("--title")
    p.add_argument("--notes-file", help="markdown inserted below the generated header")
    args = p.parse_args(argv)
    notes = Path(args.notes_file).read_text() if args.notes_file else None
    report, summary = write_report(args.run_dirs, args.out, args.title, notes)
    print(f"wrote {report} and {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
