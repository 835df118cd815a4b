"""Robustness to simulated shifts: a trained run on TEST under a fixed, seeded suite of shifts.

    python -m experiments.robustness --run RUN_DIR --data-dir DATA [--variants NAME...] [--stride 3]

For every variant (default: each finished one with checkpoints) and each of its seeds: accuracy on
clean TEST and under hue, saturation, brightness, gamma, blur, JPEG, rescale and stain shifts at
several strengths, and under the shifts that stand for other labs (yellow cast with the cell filling the
frame; grey, blurred, low-contrast; another stain's colours) (bccd_jax.robustness), on every `--stride`-th
TEST image. Writes `robustness.json` and `figures/robustness.png` into the run folder (holding its writer
lock, as training does), where experiments.report finds them, and prints the table.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import numpy as np

from bccd_jax.errors import ArgumentParser, UserError, run_cli
from bccd_jax.metrics import ACC_BOUNDS, mean_ci


def main(argv: Sequence[str] | None = None) -> int:
    from bccd_jax.plots import plot_robustness
    from bccd_jax.robustness import LAB_SUITE, SUITE, evaluate_suite, subset
    from bccd_jax.run import RunFolder, command_line, restore, run_dataset
    from bccd_jax.runtime import enable_compilation_cache

    p = ArgumentParser(prog="python -m experiments.robustness", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--data-dir", help="the data the run was trained on (dataset2-master folder or an export)")
    p.add_argument("--cache-dir")
    p.add_argument("--variants", nargs="+", metavar="NAME")
    p.add_argument("--stride", type=int, default=3, help="every k-th TEST image (default 3: 829 of 2487)")
    args = p.parse_args(argv)
    folder = RunFolder(args.run)
    record = folder.record()
    command = command_line(argv, "experiments.robustness") if argv is not None else command_line()
    with folder.writer(command, note=lambda msg: print(f"[robustness] note: {msg}", file=sys.stderr)):
        names = args.variants or [v for v, r in folder.results().items()
                                  if not r.incomplete and folder.checkpoint_epochs(v)]
        if not names:
            raise UserError(f"{folder} has no finished variant with checkpoints to evaluate")
        enable_compilation_cache()
        ds = run_dataset(folder, args.data_dir, args.cache_dir)
        test = ds.splits["test"]
        idx = subset(len(test), args.stride)
        images, labels = np.asarray(test.images)[idx], np.asarray(test.labels)[idx]
        out = {"stride": args.stride, "n_images": int(len(idx)), "fingerprint": ds.fingerprint, "variants": {}}
        old = folder.read_robustness() or {}
        if old.get("stride") == args.stride:
            out["variants"].update(old.get("variants", {}))
        for name in names:
            t = time.perf_counter()
            restored = restore(folder, name)
            log = lambda msg: print(f"[robustness] {name}: {msg}", file=sys.stderr, flush=True)  # noqa: E731
            res = evaluate_suite(restored, images, labels, log=log)
            res.update(seeds=restored.seeds, epoch=restored.epoch, wall_s=time.perf_counter() - t)
            out["variants"][name] = res
            folder.write_robustness(out)
        plot_robustness(out["variants"], folder.robustness_figure,
                        title=f"{record.experiment}: {len(idx)} TEST images (every k-th, k={args.stride}) under the "
                              "shift suite")
        print(f"{record.experiment} {folder.path.name}: accuracy on {len(idx)} TEST images, mean over seeds (95% CI)")
        head = f"{'shift':<12}{'strength':>10}" + "".join(f"{n:>24}" for n in out["variants"])
        print(head)

        def row(label, strength, values):
            cells = "".join(f"{m:>10.3f} ({lo:.3f}-{hi:.3f})"
                            for m, (lo, hi) in (mean_ci(v, ACC_BOUNDS) for v in values))
            print(f"{label:<12}{strength:>10}{cells}")

        row("clean", "", [r["clean"] for r in out["variants"].values()])
        for shift in SUITE:
            for k, s in enumerate(shift.strengths):
                row(shift.name, f"{s:g}", [r["shifts"][shift.name]["acc"][k] for r in out["variants"].values()])
        row("suite mean", "", [r["suite_mean"] for r in out["variants"].values()])
        labbed = [r for r in out["variants"].values() if "lab_mean" in r]  # robustness.json of older runs lack them
        for shift in LAB_SUITE:
            for k, s in enumerate(shift.strengths):
                row(shift.name, f"{s:g}", [r["shifts"][shift.name]["acc"][k] for r in labbed])
        row("lab mean", "", [r["lab_mean"] for r in labbed])
        print(f"wrote {folder.robustness_path} and {folder.robustness_figure}")
        return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
