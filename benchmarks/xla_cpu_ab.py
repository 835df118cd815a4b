"""A/B of bccd_jax's XLA:CPU setting (YNNPACK fusions off) against XLA's own defaults.

    python -m benchmarks.xla_cpu_ab --rounds 2

XLA reads XLA_FLAGS once per process, so each side runs `benchmarks.bench` (JAX step
rows only) in a fresh subprocess, alternating A B B A ... so that machine load hits
both sides alike. A = XLA defaults (BCCD_JAX_XLA_CPU_DEFAULTS=1), B = bccd_jax's
setting. Prints a Markdown table of median step times and writes benchmarks/xla_cpu_ab.json.
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
SIDES = {"xla_defaults": {"BCCD_JAX_XLA_CPU_DEFAULTS": "1"}, "bccd_jax": {"BCCD_JAX_XLA_CPU_DEFAULTS": "0"}}


def run_side(side: str, models, batch_size: int, steps: int, repeats: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | SIDES[side]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "benchmarks.bench", "--frameworks", "jax", "--seeds", "1", "--sizes", "120x160",
               "--dtypes", "float32", "--rounds", "1",
               "--models", *models, "--batch-sizes", str(batch_size), "--steps", str(steps),
               "--repeats", str(repeats), "--max-step-seconds", "600", "--out-dir", out]
        subprocess.run(cmd, env=env, cwd=str(HERE.parent), check=True, stdout=subprocess.DEVNULL)
        res = json.loads((Path(out) / "results.json").read_text())
    return [dict(side=side, xla_flags=res.get("xla_flags", ""), model=r["model"], step_s=r["step_s"],
                 compile_s=r["compile_s"]) for r in res["rows"] if r["kind"] == "step"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["base", "deep"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="A B pairs (order alternates per round)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "xla_cpu_ab.json")
    a = p.parse_args(argv)
    rows = []
    for k in range(a.rounds):
        order = ["xla_defaults", "bccd_jax"] if k % 2 == 0 else ["bccd_jax", "xla_defaults"]
        for side in order:
            rows += run_side(side, a.models, a.batch_size, a.steps, a.repeats)
            print(f"round {k + 1} {side}: " + ", ".join(f"{r['model']} {r['step_s'] * 1e3:.0f} ms"
                                                         for r in rows[-len(a.models):]), file=sys.stderr, flush=True)
    table = ["| model | batch | XLA defaults step ms | bccd_jax step ms | speed-up |", "| --- | ---: | ---: | ---: | ---: |"]
    summary = {}
    for m in a.models:
        med = {s: statistics.median(r["step_s"] for r in rows if r["model"] == m and r["side"] == s) for s in SIDES}
        summary[m] = dict(med, speedup=med["xla_defaults"] / med["bccd_jax"])
        table.append(f"| {m} | {a.batch_size} | {med['xla_defaults'] * 1e3:,.0f} | {med['bccd_jax'] * 1e3:,.0f} | "
                     f"{summary[m]['speedup']:.2f}x |")
    a.out.write_text(json.dumps({"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                 "size": "120x160", "batch_size": a.batch_size,
                                 "command": "python -m benchmarks.xla_cpu_ab " + " ".join(argv or sys.argv[1:]),
                                 "loadavg_end": os.getloadavg(), "rows": rows, "summary": summary}, indent=1))
    print("\n".join(table))


if __name__ == "__main__":
    main()
