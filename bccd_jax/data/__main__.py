"""CLI: `python -m bccd_jax.data info|export ...`.

`info` builds if needed and prints exactly one JSON object on stdout (progress goes to stderr);
`export` writes the compact WebP file for carrying a data set to another machine.
Errors are one `error: ...` line on stderr with exit code 2 (see bccd_jax.errors.run_cli).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from bccd_jax.errors import ArgumentParser, run_cli


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bccd_jax.data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def common(sp: argparse.ArgumentParser, need_data: bool) -> None:
        sp.add_argument("--dataset", choices=("originals", "augmented"), default="originals" if not need_data else "augmented")
        sp.add_argument("--data-dir", default=None, help="dataset2-master (or its images/), an originals root, or an export file")
        sp.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=(120, 160))
        sp.add_argument("--cache-dir", default=None, help="default: $BCCD_JAX_CACHE or ~/.cache/bccd_jax")
        sp.add_argument("--trace-csv", default=None, help="dataset2_source_trace.csv (default: beside the data, else embedded)")
        sp.add_argument("--crop", choices=("frame", "cell"), default="frame",
                        help="frame: the whole image / the originals' WBC box (default); cell: around the located cell")

    common(sub.add_parser("info", help="build if needed and print counts as one JSON object"), need_data=False)
    ex = sub.add_parser("export", help="write a compact WebP export of a data set")
    common(ex, need_data=True)
    ex.add_argument("--out", required=True, help="output file (.npz)")
    ex.add_argument("--quality", type=int, default=90, help="WebP quality (default 90)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from bccd_jax.data import load_dataset

    args = _parser().parse_args(argv)
    t0 = time.time()
    ds = load_dataset(args.dataset, data_dir=args.data_dir, image_size=tuple(args.image_size),
                      cache_dir=args.cache_dir, trace_csv=args.trace_csv, crop=args.crop)
    if args.command == "info":
        out = {
            "dataset": ds.name,
            "splits": {s: {"total": len(sp.labels), "classes": ds.class_counts(s)} for s, sp in ds.splits.items()},
            "skipped": ds.skipped,
            "image_shape": list(ds.image_shape),
            "fingerprint": ds.fingerprint,
            "build_dir": ds.build_dir,
        }
        if ds.crop != "frame":
            out["crop"] = ds.crop
            out["localiser"] = ds.localiser
        print(f"[bccd_jax.data] loaded in {time.time() - t0:.2f}s", file=sys.stderr)
        print(json.dumps(out))
        return 0
    from bccd_jax.data.export import write_export

    size = write_export(ds, args.out, quality=args.quality)
    print(f"[bccd_jax.data] wrote {args.out}: {size / 2**20:.1f} MiB in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
