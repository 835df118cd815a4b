"""Ship a trained model: a run folder reduced to config.json and one weights-only checkpoint.

    python -m experiments.ship --run RUN_DIR --variant best --data-dir DATA --out results/model

Keeps the seed whose final TEST accuracy is closest to the variant's mean over seeds (or
`--seeds all`), with its part of the run's robustness.json where experiments.robustness ran; stores the
weights as float16 when that changes no TEST prediction (checked on the run's own TEST set when
--data-dir is given, else float32), and refuses a result over `--max-mb`.
`python -m bccd_jax.predict IMAGE --run <out>` then works without training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from bccd_jax.errors import ArgumentParser, UserError, run_cli


def closest_seed(acc_per_seed: Sequence[float], seeds: Sequence[int]) -> int:
    acc = np.asarray(acc_per_seed, float)
    return int(seeds[int(np.abs(acc - acc.mean()).argmin())])


def main(argv: Sequence[str] | None = None) -> int:
    import dataclasses

    import jax

    from bccd_jax.checkpoints import InferenceState
    from bccd_jax.run import RunFolder, export_model, restore, run_dataset
    from bccd_jax.runtime import enable_compilation_cache

    p = ArgumentParser(prog="python -m experiments.ship", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--variant")
    p.add_argument("--seeds", nargs="+", default=["closest"], help="closest (default), all, or seed numbers")
    p.add_argument("--data-dir", help="the run's data, to check that float16 weights change no TEST prediction")
    p.add_argument("--out", required=True)
    p.add_argument("--max-mb", type=float, default=10.0)
    args = p.parse_args(argv)
    enable_compilation_cache()
    notes: list[str] = []
    everything = restore(args.run, args.variant, notes=notes)
    name = everything.variant.name
    result = RunFolder(args.run).results().get(name)
    if args.seeds == ["closest"]:
        if result is None or result.final("test") is None:
            raise UserError(f"variant {name!r} of {args.run} has no final TEST accuracy to pick a seed by")
        seeds = [closest_seed(result.final("test")["acc_per_seed"], result.seeds)]
        notes.append(f"seed {seeds[0]}: final TEST accuracy closest to the mean "
                     f"{np.mean(result.final('test')['acc_per_seed']):.4f} of seeds {result.seeds}")
    elif args.seeds == ["all"]:
        seeds = everything.seeds
    else:
        seeds = [int(s) for s in args.seeds]
    keep = [everything.seeds.index(s) for s in seeds]
    chosen = dataclasses.replace(everything, seeds=seeds, state=jax.tree.map(lambda a: a[np.asarray(keep)],
                                                                             everything.state))
    dtype = "float32"
    if args.data_dir:
        ds = run_dataset(chosen.folder, args.data_dir)  # the run's own TEST images, framed as it was trained
        images = np.asarray(ds.splits["test"].images)
        half = dataclasses.replace(chosen, state=InferenceState(
            *(jax.tree.map(lambda a: np.asarray(a, np.float16).astype(np.float32), t)
              for t in (chosen.state.params, chosen.state.batch_stats))))
        same = np.array_equal(chosen.logits(images).argmax(-1), half.logits(images).argmax(-1))
        dtype = "float16" if same else "float32"
        notes.append(f"float16 weights {'change none' if same else 'change some'} of the {len(images)} TEST "
                     f"predictions: stored as {dtype}")
    out = export_model(chosen, args.out, dtype)
    rob = RunFolder(args.run).robustness_of(name, seeds)
    if rob is not None:  # the shift suite of the seeds shipped, for whoever compares shipped models
        out.write_robustness(rob)
        notes.append(f"robustness.json: the shift suite of seeds {seeds}")
    size = sum(f.stat().st_size for f in Path(out.path).rglob("*") if f.is_file()) / 2**20
    for n in notes:
        print(f"[ship] {n}", file=sys.stderr)
    if size > args.max_mb:
        raise UserError(f"{out.path} holds {size:.1f} MB, over --max-mb {args.max_mb}; ship fewer seeds or float16")
    print(f"wrote {out.path}: variant {name}, seeds {seeds}, {dtype}, {size:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
