"""Candidate trained runs on labelled folders of other labs' images, and one model chosen by a rule fixed here.

    python -m experiments.other_labs --candidates RUN_DIR[:VARIANT] [...] --dev FOLDER [--also FOLDER ...]
                                     --out results/other_labs

Every FOLDER is laid out as bccd_jax.evaluate reads it (`CLASS/*.jpg`). For each candidate (a run folder and a
variant; without `:VARIANT` the one bccd_jax.evaluate takes): its clean TEST accuracy per seed from the run's
metrics.json with their mean and 95 % t-interval, the robustness suite mean where experiments.robustness ran,
and on every folder the accuracy, balanced accuracy, confusion matrix and (crop "cell") the localiser's status
counts, computed by bccd_jax.evaluate: probabilities averaged over the run's seeds, images framed as the run
was trained.

The rule (RULE), fixed in code before it is applied (its history: RULE_REVISED): a candidate is eligible when it has
at least MIN_SEEDS (5) seeds, a clean TEST mean of at least MIN_CLEAN_TEST (0.85) and a lab-suite mean (the shifts
of bccd_jax.robustness.LAB_SUITE that stand for labs the project has no images of, from experiments.robustness);
among the eligible, the highest score wins, the score being the worse of its balanced accuracy on the `--dev` folder
and its lab-suite mean, so that fitting the one development lab alone does not pay; a tie goes to the higher clean
TEST mean (then to the earlier candidate). When none is eligible, no model is named. The `--also` folders are
evaluated and reported but never selected on: `choose` receives only seeds, clean TEST mean, the lab-suite mean and
balanced accuracy on the dev folder.

Writes to `--out`: other_labs.json (the rule, every candidate's numbers, the choice or why there is none),
confusion_<candidate>_<folder>.png per candidate and folder, and examples_<folder>.png: a few crops per class
as the chosen candidate (else the first) saw them, under their true and predicted class. Folders are named by
their own name, runs by experiment, variant and run-folder name: the outputs hold no path of the machine.
experiments.report renders `<its --out>/other_labs/other_labs.json` as the section "Other labs' images".
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bccd_jax import CLASS_NAMES
from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.metrics import ACC_BOUNDS, mean_ci
from bccd_jax.run import RunFolder, choose_variant

MIN_SEEDS = 5
MIN_CLEAN_TEST = 0.85
RULE = (f"A candidate is eligible when it has at least {MIN_SEEDS} seeds, its clean TEST mean is at least "
        f"{MIN_CLEAN_TEST:.2f} and the lab suite (shifts that stand for labs without images: a yellow cast with the "
        "cell filling the frame; grey, blurred, low contrast; another stain's colours) ran on it; among the "
        "eligible, the highest score wins, the score being the worse of its balanced accuracy on the development "
        "folder and its lab-suite mean, so that fitting one lab alone does not pay (ties: the higher clean TEST "
        "mean, then the earlier candidate). When none is eligible, no model is named. The other folders are "
        "evaluated but never used to select.")
RULE_REVISED = ("The rule was revised on 2026-12-07: until then it took the best balanced accuracy on the development "
                "folder alone, and results/model (cell_crops/saturation) was chosen that way; the lab-suite "
                "requirement and the worse-of score were added after that model and the cell-crop variants it was "
                "chosen among had been evaluated on the development folder; the candidates trained from then on "
                "(the labs variants, labs_half, VGG16 on cell crops, saturation_grey) were trained under the revised "
                "rule.")
EXAMPLES_PER_CLASS = 4
RESULTS_FILE = "other_labs.json"
SECTION_DIR = "other_labs"
"""The folder under experiments.report's --out where it looks for RESULTS_FILE."""


# ----------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Standing:
    """All the rule reads of a candidate: nothing of the folders other than the development one."""

    label: str
    n_seeds: int
    clean_test_mean: float
    dev_balanced_accuracy: float
    lab_mean: float | None  # the mean over seeds of the lab suite's mean accuracy; None where it has not run

    @property
    def score(self) -> float:
        """The worse of the development folder's balanced accuracy and the lab-suite mean."""
        return min(self.dev_balanced_accuracy, self.lab_mean if self.lab_mean is not None else -1.0)


def ineligible_because(s: Standing) -> str | None:
    """Why the rule leaves `s` out, or None when it is eligible."""
    why = ([f"{s.n_seeds} seeds (needs at least {MIN_SEEDS})"] if s.n_seeds < MIN_SEEDS else []) + \
          ([f"clean TEST mean {s.clean_test_mean:.3f} (needs at least {MIN_CLEAN_TEST:.2f})"]
           if s.clean_test_mean < MIN_CLEAN_TEST else []) + \
          (["no lab-suite mean (run python -m experiments.robustness on it)"] if s.lab_mean is None else [])
    return "; ".join(why) or None


def choose(standings: Sequence[Standing]) -> tuple[str | None, str]:
    """(the chosen candidate's label or None, why) by the rule in RULE."""
    eligible = [s for s in standings if ineligible_because(s) is None]
    if not eligible:
        return None, "no candidate is eligible: " + ("; ".join(
            f"{s.label}: {ineligible_because(s)}" for s in standings) or "none was given")
    best = max(eligible, key=lambda s: (s.score, s.clean_test_mean))  # max keeps the first of ties
    return best.label, ("eligible: " + ", ".join(
        f"{s.label} (score {s.score:.3f}: balanced accuracy on the development folder {s.dev_balanced_accuracy:.3f}, "
        f"lab-suite mean {s.lab_mean:.3f}; clean TEST {s.clean_test_mean:.3f})" for s in eligible)
        + f"; the highest is {best.label}")


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Candidate:
    """A run folder and one of its variants, checked, with what its run folder records about it."""

    folder: RunFolder
    experiment: str
    variant: str
    label: str
    clean_test: list[float]
    suite: dict[str, Any] | None
    lab: dict[str, Any] | None = None  # the lab suite's mean, as `suite`


def split_candidate(text: str) -> tuple[Path, str | None]:
    """RUN_DIR[:VARIANT] as (run folder, variant or None); a folder whose own name holds ':' is taken whole."""
    path = Path(text).expanduser()
    if path.is_dir() or ":" not in text:
        return path, None
    run, _, variant = text.rpartition(":")
    return Path(run).expanduser(), variant or None


def load_candidate(text: str) -> Candidate:
    """The candidate `text` names, or a one-line UserError: not a run folder, unknown variant, no clean TEST."""
    path, asked = split_candidate(text)
    folder = RunFolder(path).check()
    record = folder.record()
    variant, _ = choose_variant(folder, record, asked)
    result = folder.results().get(variant)
    test = None if result is None else result.final("test")
    if test is None or not test.get("acc_per_seed"):
        raise UserError(f"variant {variant!r} of {folder} has no final TEST accuracy in its metrics.json; "
                        "finish (or resume) the run before comparing it")
    rob = ((folder.read_robustness() or {}).get("variants") or {}).get(variant)
    def over_seeds(key: str) -> dict[str, Any] | None:
        if not rob or key not in rob:
            return None
        m, ci = mean_ci(rob[key], ACC_BOUNDS)
        return {"per_seed": [float(v) for v in rob[key]], "mean": m, "ci95": list(ci)}

    return Candidate(folder, record.experiment, variant, f"{record.experiment}/{variant}",
                     [float(a) for a in test["acc_per_seed"]], over_seeds("suite_mean"), over_seeds("lab_mean"))


def load_candidates(texts: Sequence[str]) -> list[Candidate]:
    """Every candidate, labelled experiment/variant (with @run-folder name where two would share a label)."""
    candidates = [load_candidate(t) for t in texts]
    labels = [c.label for c in candidates]
    out = []
    for c in candidates:
        label = c.label if labels.count(c.label) == 1 else f"{c.label}@{c.folder.path.name}"
        if label in [o.label for o in out]:
            raise UserError(f"candidate {label} ({c.folder}) is given twice; pass each run and variant once")
        out.append(dataclasses.replace(c, label=label))
    return out


def scan_folders(dev: str, also: Sequence[str]) -> dict[str, tuple[list[tuple[Path, int]], dict[str, int]]]:
    """{folder name: (labelled images, skip counts)}, the development folder first; two folders of one name are
    refused, since the outputs name folders by their name alone."""
    from bccd_jax.evaluate import scan

    out: dict[str, tuple[list[tuple[Path, int]], dict[str, int]]] = {}
    for f in [dev, *also]:
        name = Path(f).expanduser().resolve().name
        if name in out:
            raise UserError(f"two folders are named {name!r} ({f}); the outputs name folders by their name alone, "
                            "so give each folder its own name")
        items, skipped = scan([f])
        out[name] = items, dict(skipped)
    return out


def out_folder(text: str) -> Path:
    out = Path(text).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder (it is created when missing)")
    return out


# ----------------------------------------------------------------------------- evaluation


def slug(text: str) -> str:
    """`text` as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def evaluate_candidate(c: Candidate, folders: Mapping[str, tuple[list[tuple[Path, int]], dict[str, int]]],
                       notes: list[str]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], tuple]:
    """(the candidate's entry of other_labs.json, per folder its images with true and predicted class, and
    (image size, crop) to frame them again) by bccd_jax.evaluate on every folder."""
    from bccd_jax.evaluate import evaluation
    from bccd_jax.images import run_crop
    from bccd_jax.run import restore

    restored = restore(c.folder, c.variant, notes=notes)
    crop = run_crop(None, restored.data.crop)
    clean, ci = mean_ci(c.clean_test, ACC_BOUNDS)
    entry: dict[str, Any] = {
        "label": c.label, "experiment": c.experiment, "run": c.folder.path.name, "variant": c.variant,
        "checkpoint_epoch": restored.epoch, "seeds": restored.seeds, "crop": crop,
        "model_input": restored.preprocessing(),
        "clean_test": {"acc_per_seed": c.clean_test, "mean": clean, "ci95": list(ci), "n_seeds": len(c.clean_test)},
        "suite_mean": c.suite, "lab_mean": c.lab, "folders": {}}
    images = {}
    for name, (items, skipped) in folders.items():
        result, unread, load_notes = evaluation(restored, items, crop)
        notes += [f"{c.label} on {name}: {n}" for n in load_notes]
        images[name] = result.pop("images")
        entry["folders"][name] = {**result, "skipped": {**skipped, **unread},
                                  "confusion_png": f"confusion_{slug(c.label)}_{slug(name)}.png"}
    return entry, images, (restored.image_size, crop)


def example_rows(images: Sequence[Mapping[str, Any]], hw: tuple[int, int], crop: str,
                 per_class: int = EXAMPLES_PER_CLASS) -> list[list[tuple[np.ndarray, str, bool]]]:
    """Per class present, up to `per_class` images spread over its list, framed again as the model saw them
    (bccd_jax.evaluate.prepare_item), each with its true and predicted class."""
    from bccd_jax.evaluate import prepare_item

    rows = []
    for cls in CLASS_NAMES:
        mine = [im for im in images if im["class"] == cls]
        picks = sorted({int(i) for i in np.linspace(0, len(mine) - 1, min(per_class, len(mine)))}) if mine else []
        rows.append([(prepare_item((Path(mine[i]["path"]), 0), hw, crop).array,
                      f"true {cls[:3]}, pred {mine[i]['predicted'][:3]}", mine[i]["predicted"] == cls)
                     for i in picks])
    return rows


# ----------------------------------------------------------------------------- outputs


def format_table(result: Mapping[str, Any]) -> str:
    """The compact table printed to stdout: per candidate its seeds, clean TEST, suite and every folder."""
    names = [result["dev"], *result["also"]]
    widths = [max(len(n), 11) for n in names]
    label_w = max([len("candidate"), *(len(c["label"]) for c in result["candidates"])]) + 2
    lines = [f"{'candidate':<{label_w}}{'seeds':>6}  {'clean TEST (95% CI)':<19}{'suite':>7}{'lab':>7}"
             + "".join(f"  {n:>{w}}" for n, w in zip(names, widths)) + "  eligible",
             f"{'':<{label_w + 39}}" + "".join(f"  {'acc/bal':>{w}}" for w in widths)]
    for c in result["candidates"]:
        t = c["clean_test"]
        suite = f"{c['suite_mean']['mean']:.3f}" if c["suite_mean"] else "-"
        lab = f"{c['lab_mean']['mean']:.3f}" if c.get("lab_mean") else "-"
        cells = "".join(f"  {c['folders'][n]['accuracy']:.3f}/{c['folders'][n]['balanced_accuracy']:.3f}".rjust(w + 2)
                        for n, w in zip(names, widths))
        clean = f"{t['mean']:.3f} ({t['ci95'][0]:.3f}-{t['ci95'][1]:.3f})"
        lines.append(f"{c['label']:<{label_w}}{t['n_seeds']:>6}  {clean:<19}{suite:>7}{lab:>7}{cells}  "
                     f"{'yes' if c['eligible'] else 'no: ' + c['not_eligible_because']}")
    lines.append(f"chosen: {result['choice']} ({result['why']})" if result["choice"]
                 else f"no model chosen: {result['why']}")
    return "\n".join(lines)


def write_figures(result: Mapping[str, Any], images: Mapping[str, Mapping[str, list]],
                  framing: Mapping[str, tuple], out: Path) -> dict[str, str]:
    """The confusion matrices of every candidate and folder, and per folder the examples of the chosen candidate
    (else the first); {folder: examples file}."""
    from bccd_jax.plots import plot_confusion, plot_examples

    for c in result["candidates"]:
        for name, f in c["folders"].items():
            plot_confusion(np.asarray(f["confusion_matrix"]), out / f["confusion_png"],
                           title=f"{c['label']} on {name}: {f['n_images']} images, accuracy {f['accuracy']:.3f}, "
                                 f"balanced {f['balanced_accuracy']:.3f}")
    shown = result["examples_of"]
    examples = {}
    for name, listed in images[shown].items():
        examples[name] = f"examples_{slug(name)}.png"
        plot_examples(example_rows(listed, *framing[shown]), out / examples[name],
                      title=f"{shown} on {name}: crops as the model saw them (red: wrong)")
    return examples


def parse_sources(items: Sequence[str], folders) -> dict[str, str]:
    """--source FOLDER=TEXT items -> {folder name: text}; a one-line error for a folder not evaluated."""
    sources = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not text.strip():
            raise UserError(f"--source expects FOLDER=TEXT, got {item!r}")
        if name not in folders:
            raise UserError(f"--source {name}: not one of the evaluated folders {list(folders)}")
        sources[name] = text.strip()
    return sources


def run(candidates: Sequence[Candidate], folders, out: Path, notes: list[str],
        sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Evaluate every candidate on every folder, apply the rule, write other_labs.json and the figures."""
    from bccd_jax.run import write_json

    dev, *also = folders
    entries, standings, images, framing = [], [], {}, {}
    for c in candidates:
        entry, images[c.label], framing[c.label] = evaluate_candidate(c, folders, notes)
        lab = entry["lab_mean"]["mean"] if entry["lab_mean"] else None
        standings.append(Standing(c.label, entry["clean_test"]["n_seeds"], entry["clean_test"]["mean"],
                                  entry["folders"][dev]["balanced_accuracy"], lab))
        why = ineligible_because(standings[-1])
        entries.append({**entry, "eligible": why is None, "not_eligible_because": why})
    choice, why = choose(standings)
    result: dict[str, Any] = {
        "rule": {"text": RULE, "min_seeds": MIN_SEEDS, "min_clean_test_mean": MIN_CLEAN_TEST,
                 "selects_on": "the worse of the balanced accuracy on the development folder and the "
                               "lab-suite mean"},
        "dev": dev, "also": also, "sources": dict(sources or {}), "candidates": entries, "choice": choice, "why": why,
        "examples_of": choice or entries[0]["label"]}
    out.mkdir(parents=True, exist_ok=True)
    result["examples"] = write_figures(result, images, framing, out)
    write_json(out / RESULTS_FILE, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from bccd_jax.runtime import enable_compilation_cache

    p = ArgumentParser(prog="python -m experiments.other_labs", description=__doc__.splitlines()[0])
    p.add_argument("--candidates", nargs="+", required=True, metavar="RUN_DIR[:VARIANT]",
                   help="run folders, each with the variant to compare (default: the one bccd_jax.evaluate takes)")
    p.add_argument("--dev", required=True, metavar="FOLDER", help="the labelled folder the rule selects on")
    p.add_argument("--also", nargs="+", default=[], metavar="FOLDER",
                   help="labelled folders reported, never selected on")
    p.add_argument("--out", required=True, help=f"folder for {RESULTS_FILE} and the figures")
    p.add_argument("--source", nargs="+", default=[], metavar="FOLDER=TEXT",
                   help="where a folder's images come from (lab, stain, licence, citation), for the report")
    args = p.parse_args(argv)
    out = out_folder(args.out)
    folders = scan_folders(args.dev, args.also)
    sources = parse_sources(args.source, folders)
    candidates = load_candidates(args.candidates)
    enable_compilation_cache()
    notes: list[str] = []
    result = run(candidates, folders, out, notes, sources)
    for msg in notes[:10] + ([f"... and {len(notes) - 10} more"] if len(notes) > 10 else []):
        print(f"[other_labs] {msg}", file=sys.stderr)
    print(f"[other_labs] wrote {out / RESULTS_FILE} and {len(list(out.glob('*.png')))} figures", file=sys.stderr)
    print(format_table(result))
    return 0


# ----------------------------------------------------------------------------- the report's section


def report_section(results_dir: str | Path) -> list[str]:
    """REPORT.md's section "Other labs' images" from `<results_dir>/other_labs/other_labs.json`; [] without it.
    Figure paths are relative to `results_dir`, where REPORT.md lies."""
    from bccd_jax.run import read_json
    from bccd_jax.summary import format_ci

    path = Path(results_dir) / SECTION_DIR / RESULTS_FILE
    if not path.is_file():
        return []
    r = read_json(path)
    names = [r["dev"], *r["also"]]
    lines = ["## Other labs' images", "",
             "Candidate runs on labelled folders of images from other labs (`python -m experiments.other_labs`, "
             "bccd_jax.evaluate: probabilities averaged over seeds, images framed as each run was trained). "
             f"Development folder: **{r['dev']}**" + (f"; also evaluated: {', '.join(r['also'])}" if r["also"] else "")
             + ". The rule, fixed in `experiments/other_labs.py`: " + r["rule"]["text"]
             + (" " + RULE_REVISED if r["rule"]["text"] == RULE else ""),
             *([""] + [f"- {n}: {text}" for n, text in r.get("sources", {}).items()] if r.get("sources") else []),
             "", "| candidate | seeds | epochs | clean TEST (95% CI) | suite mean (95% CI) | lab-suite mean (95% CI) | "
             + " | ".join(f"{n}{' (dev)' if n == r['dev'] else ''}: accuracy | {n}: balanced" for n in names)
             + " | eligible |", "|---|---|---|---|---|---|" + "---|---|" * len(names) + "---|"]

    def mean_cell(stat: Mapping[str, Any] | None, per_seed: str = "per_seed") -> str:
        """A mean with its interval over seeds; a mean of one seed says so (its interval would have no width)."""
        if not stat:
            return "-"
        return f"{stat['mean']:.3f} (one seed)" if len(stat[per_seed]) == 1 else format_ci(stat["mean"], stat["ci95"])

    for c in r["candidates"]:
        cells = " | ".join(f"{c['folders'][n]['accuracy']:.3f} | {c['folders'][n]['balanced_accuracy']:.3f}"
                           for n in names)
        lines.append(f"| {c['label']} (run `{c['run']}`) | {c['clean_test']['n_seeds']} | {c['checkpoint_epoch']} | "
                     f"{mean_cell(c['clean_test'], 'acc_per_seed')} | {mean_cell(c['suite_mean'])} | "
                     f"{mean_cell(c.get('lab_mean'))} | {cells} | "
                     f"{'yes' if c['eligible'] else 'no: ' + c['not_eligible_because']} |")
    localiser = [(c["label"], n, c["folders"][n]) for c in r["candidates"] for n in names
                 if c["folders"][n].get("localiser")]
    lines.append("")
    if localiser:
        lines += [f"- {label} on {n} ({f['n_images']} images): localiser "
                  + ", ".join(f"{k} {v}" for k, v in f["localiser"].items()) + "; accuracy on status one "
                  + ("-" if f["accuracy_status_one"] is None else f"{f['accuracy_status_one']:.3f}")
                  for label, n, f in localiser] + [""]
    lines += [f"Chosen: **{r['choice']}** ({r['why']})." if r["choice"] else f"No model chosen: {r['why']}.", ""]
    lines += [f"![{c['label']} on {n}]({SECTION_DIR}/{c['folders'][n]['confusion_png']})"
              for c in r["candidates"] for n in names]
    lines += ["", f"Crops as {r['examples_of']} saw them (red: wrong):", ""]
    lines += [f"![examples on {n}]({SECTION_DIR}/{png})" for n, png in r["examples"].items()]
    return lines + [""]


if __name__ == "__main__":
    sys.exit(run_cli(main))
