"""A/B of XLA:CPU settings: bccd_jax's (YNNPACK fusions off, glibc malloc keeping freed memory), XLA's own
defaults, and candidates.

    python -m benchmarks.xla_cpu_ab --rounds 2 --size 60x80 --sides xla_defaults bccd_jax onednn_custom_call

XLA reads XLA_FLAGS once per process, so each side runs `benchmarks.bench` (JAX step
rows only) in a fresh subprocess, the order of the sides rotating every round so that
machine load hits all alike. Prints a Markdown table of median step times with the minor page
faults per step in brackets (speed-up against the first side), writes benchmarks/xla_cpu_ab.json and regenerates RESULTS.md beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="
SIDES = {"xla_defaults": {"BCCD_JAX_XLA_CPU_DEFAULTS": "1"},
         "bccd_jax": {"BCCD_JAX_XLA_CPU_DEFAULTS": "0"},
         # a candidate: oneDNN custom calls for convolutions and dots on x86, on top of bccd_jax's setting
         "onednn_custom_call": {"XLA_FLAGS": f"{YNN_OFF} --xla_cpu_experimental_onednn_custom_call=true"},
         # candidates: YNNPACK for some fusion kinds only (reductions such as the bias gradients, elementwise
         # ops, single dots such as the dense layers), Eigen for the convolutions
         "ynn_reduce": {"XLA_FLAGS": f"{YNN_OFF}reduce"},
         "ynn_eltwise_reduce": {"XLA_FLAGS": f"{YNN_OFF}eltwise,reduce"},
         "ynn_individual_dot": {"XLA_FLAGS": f"{YNN_OFF}individual_dot"},
         # bccd_jax's setting with XLA's own convolution backward pass instead of bccd_jax.models.conv's
         "xla_conv_grad": {"BCCD_JAX_CONV_GRAD": "xla"},
         # bccd_jax's setting with glibc's own malloc (bccd_jax/_malloc.py off): buffers mmapped and unmapped per step
         "glibc_malloc_defaults": {"BCCD_JAX_MALLOC_DEFAULTS": "1"}}


def run_side(side: str, models, batch_size: int, steps: int, repeats: int, size: str, seeds: int = 1) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | SIDES[side]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "benchmarks.bench", "--frameworks", "jax", "--seeds", str(seeds), "--sizes", size,
               "--dtypes", "float32", "--rounds", "1",
               "--models", *models, "--batch-sizes", str(batch_size), "--steps", str(steps),
               "--repeats", str(repeats), "--max-step-seconds", "600", "--out-dir", out]
        subprocess.run(cmd, env=env, cwd=str(HERE.parent), check=True, stdout=subprocess.DEVNULL)
        res = json.loads((Path(out) / "results.json").read_text())
    return [dict(side=side, xla_flags=res.get("xla_flags", ""), model=r["model"], seeds=seeds, step_s=r["step_s"],
                 compile_s=r["compile_s"], minor_faults_per_step=r.get("minor_faults_per_step"))
            for r in res["rows"] if r["kind"] == "step" and r.get("seeds", 1) == seeds]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["base", "deep"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="rounds over all sides (their order rotates per round)")
    p.add_argument("--size", default="120x160", help="image size HxW")
    p.add_argument("--sides", nargs="+", default=["xla_defaults", "bccd_jax"], choices=sorted(SIDES))
    p.add_argument("--seeds", type=int, default=1, help="seeds per side (seed_strategy auto: on CPU one after another, as training runs them)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "xla_cpu_ab.json")
    a = p.parse_args(argv)
    rows = []
    for k in range(a.rounds):
        order = a.sides[k % len(a.sides):] + a.sides[:k % len(a.sides)]
        for side in order:
            rows += run_side(side, a.models, a.batch_size, a.steps, a.repeats, a.size, a.seeds)
            print(f"round {k + 1} {side}: " + ", ".join(f"{r['model']} {r['step_s'] * 1e3:.0f} ms"
                                                         for r in rows[-len(a.models):]), file=sys.stderr, flush=True)
    first = a.sides[0]
    table = ["| model | size | batch | " + " | ".join(f"{s} step ms (page faults)" for s in a.sides) + " | " +
             " | ".join(f"{s} vs {first}" for s in a.sides[1:]) + " |",
             "| --- | --- | ---: |" + " ---: |" * (2 * len(a.sides) - 1)]
    summary = {}
    for m in a.models:
        med = {s: statistics.median(r["step_s"] for r in rows if r["model"] == m and r["side"] == s) for s in a.sides}
        faults = {s: statistics.median(r.get("minor_faults_per_step") or 0.0 for r in rows
                                       if r["model"] == m and r["side"] == s) for s in a.sides}
        summary[m] = dict(med, **{f"{s}_speedup_vs_{first}": med[first] / med[s] for s in a.sides[1:]},
                          **{f"{s}_minor_faults_per_step": faults[s] for s in a.sides})
        table.append(f"| {m} | {a.size} | {a.batch_size} | " +
                     " | ".join(f"{med[s] * 1e3:,.0f} ({faults[s]:,.0f})" for s in a.sides) +
                     " | " + " | ".join(f"{med[first] / med[s]:.2f}x" for s in a.sides[1:]) + " |")
    a.out.write_text(json.dumps({"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                 "size": a.size, "batch_size": a.batch_size, "seeds": a.seeds, "sides": {s: SIDES[s] for s in a.sides},
                                 "command": "python -m benchmarks.xla_cpu_ab " + " ".join(argv or sys.argv[1:]),
                                 "loadavg_end": os.getloadavg(), "rows": rows, "summary": summary,
                                 "table": table}, indent=1))
    print("\n".join(table))
    if a.out.parent == HERE:  # the section of benchmarks/RESULTS.md
        from benchmarks.report import write_report
        write_report(HERE)


if __name__ == "__main__":
    main()
