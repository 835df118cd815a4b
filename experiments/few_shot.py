"""The few-shot curve: a trained run adapted to another lab from K labelled cells per class, for several K and draws.

    python -m experiments.few_shot --run results/model --labelled FOLDER [--shots 1 3 5 10 25] [--draws 5]
                                   [--out results/few_shot] [--runs-dir runs/few_shot]

Each (K, draw) is one `python -m bccd_jax.adapt --run RUN --labelled FOLDER --shots K --draw D`, run in this
process (so its compilations are shared), its adapted run folder under `--runs-dir/K<k>-draw<d>` and its record
(adaptation.json: held-out and zero-shot scores on the rest of FOLDER, BCCD TEST before and after, wall time)
gathered into `--out/few_shot.json`, written after every adaptation. A (K, draw) already there is kept, so the
same command finishes a curve that was stopped. experiments.report renders the file as the section "Adapting
to another lab from a few labelled cells": per K, the mean and range over draws of the held-out balanced
accuracy beside zero-shot.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bccd_jax.errors import ArgumentParser, UserError, run_cli

RESULTS_FILE = "few_shot.json"
SECTION_DIR = "few_shot"
"""The folder under experiments.report's --out where it looks for RESULTS_FILE."""
SHOTS = (1, 3, 5, 10, 25)


def key(shots: int, draw: int) -> str:
    return f"K{shots}-draw{draw}"


def main(argv: Sequence[str] | None = None) -> int:
    from bccd_jax import adapt
    from bccd_jax.run import read_json, write_json
    from bccd_jax.runtime import enable_compilation_cache

    p = ArgumentParser(prog="python -m experiments.few_shot", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the trained run to adapt")
    p.add_argument("--labelled", required=True, metavar="FOLDER", help="the other lab's labelled images, CLASS/*.jpg")
    p.add_argument("--shots", nargs="+", type=int, default=list(SHOTS), metavar="K")
    p.add_argument("--draws", type=int, default=5, help="draws per K: seeds 0..draws-1 (default 5)")
    p.add_argument("--out", default=f"results/{SECTION_DIR}", help="where few_shot.json goes")
    p.add_argument("--runs-dir", default="runs/few_shot", help="where the adapted run folders go")
    args = p.parse_args(argv)
    if args.draws < 1:
        raise UserError(f"--draws {args.draws}: at least one draw")
    out, runs = Path(args.out), Path(args.runs_dir)
    path = out / RESULTS_FILE
    done: dict[str, Any] = read_json(path) if path.exists() else {}
    if done and (done.get("run") != adapt.named(args.run) or done.get("labelled") != Path(args.labelled).name):
        raise UserError(f"{path} holds the curve of {done.get('run')} on {done.get('labelled')}; pass another --out "
                        "or remove it")
    enable_compilation_cache()
    done.update(run=adapt.named(args.run), labelled=Path(args.labelled).name)
    results = done.setdefault("adaptations", {})
    out.mkdir(parents=True, exist_ok=True)
    for k in args.shots:
        for d in range(args.draws):
            if key(k, d) in results:
                continue
            target = runs / key(k, d)
            flags = ["--run", args.run, "--labelled", args.labelled, "--shots", str(k), "--draw", str(d),
                     "--out", str(target)]
            if target.exists():  # an adaptation a stop cut short: it starts again
                shutil.rmtree(target)
            notes: list[str] = []
            r = adapt.adapt(adapt.make_parser().parse_args(flags), time.time(), notes)
            results[key(k, d)] = {f: r[f] for f in ("shots", "draw", "held_out", "zero_shot", "bccd_test", "wall_s",
                                                    "drawn", "recipe", "source", "git_commit", "hardware")}
            held, zero = r["held_out"], r["zero_shot"]
            print(f"[few_shot] K={k} draw {d}: held-out balanced accuracy {held['balanced_accuracy']:.3f} "
                  f"(zero-shot {zero['balanced_accuracy']:.3f}, {held['n_images']} images), {r['wall_s']:.0f} s",
                  file=sys.stderr, flush=True)
            write_json(path, done)
    write_json(path, done)
    print("\n".join(section_lines(done)))
    return 0


def curve(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per K: draws, the held-out balanced accuracy's mean, min and max, zero-shot's mean, accuracy's mean, BCCD
    TEST before and after, the median wall time."""
    rows = []
    for k in sorted({r["shots"] for r in results.values()}):
        rs = [r for r in results.values() if r["shots"] == k]
        bal = np.array([r["held_out"]["balanced_accuracy"] for r in rs])
        rows.append({"shots": k, "draws": len(rs), "balanced_mean": float(bal.mean()), "balanced_min": float(bal.min()),
                     "balanced_max": float(bal.max()),
                     "accuracy_mean": float(np.mean([r["held_out"]["accuracy"] for r in rs])),
                     "zero_shot_mean": float(np.mean([r["zero_shot"]["balanced_accuracy"] for r in rs])),
                     "n_images": sorted({r["held_out"]["n_images"] for r in rs}),
                     "bccd_before": float(np.mean([r["bccd_test"]["source_accuracy"] for r in rs])),
                     "bccd_after": float(np.mean([r["bccd_test"]["adapted_accuracy"] for r in rs])),
                     "wall_s_median": float(np.median([r["wall_s"] for r in rs]))})
    return rows


def report_section(results_dir: str | Path) -> list[str]:
    """REPORT.md's section on few-shot adaptation, from `<results_dir>/few_shot/few_shot.json` ([] without it)."""
    from bccd_jax.run import read_json

    path = Path(results_dir) / SECTION_DIR / RESULTS_FILE
    return section_lines(read_json(path)) if path.exists() else []


def section_lines(r: dict[str, Any]) -> list[str]:
    """The section's markdown from a few_shot.json object."""
    rows = curve(r.get("adaptations", {}))
    if not rows:
        return []
    from bccd_jax.adapt import describe_recipe

    recipe = describe_recipe(next(iter(r["adaptations"].values()))["recipe"])
    lines = ["## Adapting to another lab from a few labelled cells", "",
             f"`python -m bccd_jax.adapt` on run `{r['run']}` with K images per class drawn from **{r['labelled']}** "
             "(`python -m experiments.few_shot`); each draw is evaluated on the rest of the folder (held out), "
             f"beside the run before adaptation on the same images (zero-shot). Recipe: {recipe}. "
             "BCCD TEST: the embedded originals' TEST crops, never mixed in, before and after.", "",
             "| K per class | draws | held-out balanced accuracy, mean (min-max) | held-out accuracy | zero-shot "
             "balanced | held-out images | BCCD TEST before -> after | wall s (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['shots']} | {x['draws']} | {x['balanced_mean']:.3f} ({x['balanced_min']:.3f}-"
                     f"{x['balanced_max']:.3f}) | {x['accuracy_mean']:.3f} | {x['zero_shot_mean']:.3f} | "
                     f"{'/'.join(map(str, x['n_images']))} | {x['bccd_before']:.3f} -> {x['bccd_after']:.3f} | "
                     f"{x['wall_s_median']:.0f} |")
    return lines + [""]


if __name__ == "__main__":
    sys.exit(run_cli(main))
