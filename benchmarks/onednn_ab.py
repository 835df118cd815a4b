"""Train steps with the oneDNN convolutions against XLA's, float32 and bfloat16, side by side in one process.

    python -m benchmarks.onednn_ab --sizes 60x80 120x160 --rounds 3          # + --torch for PyTorch rows

Sides (each a MultiSeedTrainer.run_epoch step of one seed, as benchmarks.bench times it): `xla_f32`
(float32, XLA's convolutions), `xla_bf16` (bfloat16 compute, XLA's convolutions), `onednn_bf16`
(bfloat16, bccd_jax.models.conv's oneDNN custom calls), `onednn_f32` (float32 through oneDNN),
`onednn_mixed` (a float32 model whose convolutions are oneDNN bfloat16 ones: BCCD_JAX_CONV=onednn-bf16) and, with
--torch, `torch_f32` and `torch_bf16` (autocast) eager steps. BCCD_JAX_CONV is set while a side is built
and compiled (it is read when the program is traced). Every round times the sides in turn, A B C A B C,
so that other load hits all alike; prints median step times, images per second and each side's speed
relative to `xla_f32` (and to `torch_bf16` when timed), and writes --out (JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from benchmarks.bench import jax_runner, parse_size, synthetic, timed_steps, torch_runner
from benchmarks.moved_section import onednn_medians

HERE = Path(__file__).resolve().parent
SIDES = {"xla_f32": ("jax", "float32", "xla"), "xla_bf16": ("jax", "bfloat16", "xla"),
         "onednn_bf16": ("jax", "bfloat16", "onednn"), "onednn_f32": ("jax", "float32", "onednn"),
         "onednn_mixed": ("jax", "float32", "onednn-bf16"),
         "torch_f32": ("torch", "float32", None), "torch_bf16": ("torch", "bfloat16", None)}


def build(side, model, bs, images, labels):
    fw, dtype, conv = SIDES[side]
    if fw == "torch":
        run, info = torch_runner(model, dtype, bs, images, labels, "cpu")
    else:
        old = os.environ.get("BCCD_JAX_CONV")
        os.environ["BCCD_JAX_CONV"] = conv
        try:
            run, info = jax_runner(model, dtype, bs, 1, "auto", images, labels)
            if info["conv"] != conv:
                raise SystemExit(f"{side}: the convolutions took the {info['conv']} path (is the extension built? "
                                 "python -m bccd_jax.ext.build)")
            timed_steps(run, 1, 2)  # compile while BCCD_JAX_CONV holds
        finally:
            os.environ.pop("BCCD_JAX_CONV") if old is None else os.environ.update(BCCD_JAX_CONV=old)
    timed_steps(run, 1, 1)
    return run, info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deep")
    p.add_argument("--sizes", nargs="+", default=["60x80", "120x160"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sides", nargs="+", default=["xla_f32", "xla_bf16", "onednn_bf16"], choices=list(SIDES))
    p.add_argument("--torch", action="store_true", help="add torch_f32 and torch_bf16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps per timing (one timing per side and round)")
    p.add_argument("--out", type=Path, default=HERE / "onednn_ab.json")
    a = p.parse_args(argv)
    sides = a.sides + (["torch_f32", "torch_bf16"] if a.torch else [])
    rows, table = [], []
    for size in a.sizes:
        hw = parse_size(size)
        images, labels = synthetic(max(256, a.batch_size), hw)
        runners = {s: build(s, a.model, a.batch_size, images, labels) for s in sides}
        for k in range(a.rounds):
            order = sides[k % len(sides):] + sides[:k % len(sides)]
            for s in order:
                step_s = timed_steps(runners[s][0], a.steps, 1)[0]
                rows.append(dict(size=size, side=s, round=k, step_s=step_s))
                print(f"{size} round {k + 1} {s}: {step_s * 1e3:,.0f} ms/step", file=sys.stderr, flush=True)
        med = {s: m for (z, s), m in onednn_medians(rows).items() if z == size}
        for s in sides:
            line = (f"| {a.model} | {size} | {a.batch_size} | {s} | {med[s] * 1e3:,.0f} | "
                    f"{a.batch_size / med[s]:,.0f} | {med['xla_f32'] / med[s]:.2f}x |" if "xla_f32" in med else "")
            if "torch_bf16" in med:
                line += f" {med['torch_bf16'] / med[s]:.2f}x |"
            table.append(line)
    head = "| model | size | batch | side | step ms (median) | img/s | vs xla_f32 |" + \
        (" vs torch_bf16 |" if a.torch else "")
    table = [head, "| --- | --- | ---: | --- | ---: | ---: | ---: |" + (" ---: |" if a.torch else "")] + table
    from bccd_jax.ext import onednn

    a.out.write_text(json.dumps({"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                 "command": "python -m benchmarks.onednn_ab " + " ".join(argv or sys.argv[1:]),
                                 "loadavg_end": os.getloadavg(), "rows": rows, "table": table,
                                 "onednn_primitives": onednn.describe().splitlines()}, indent=1))
    print("\n".join(table))
    if a.out.parent == HERE:  # the section of benchmarks/RESULTS.md
        from benchmarks.report import write_report
        write_report(HERE)


if __name__ == "__main__":
    main()
