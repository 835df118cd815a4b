"""A training step against this CPU's roofline: how far the step is from what the machine can do.

    python -m benchmarks.roofline                                  # base and deep, 60x80, batch 32
    python -m benchmarks.roofline --models base --sizes 60x80 120x160

Per model, image size and batch: the FLOPs and bytes of one compiled training step of one seed
(bccd_jax.steps.make_step_fns' train_step: forward, backward and Adam's update) as XLA's own cost
analysis counts them (`Compiled.cost_analysis()`: every fusion's operands and results, so the bytes are
the traffic of a step whose intermediates never stay in cache, an upper bound), Adam's share of the bytes
(it reads parameters, gradients and both moments and writes parameters and moments: 7 x 4 bytes per
parameter), and the step's median time. The machine's side, measured in the same process: the peak
float32 FLOP rate of a large matrix product (jnp.dot, every core) and the memory bandwidth of a streaming
copy (numpy, one thread, and a jitted elementwise pass, every core; the larger counts). The roofline's
time is max(FLOPs / peak, bytes / bandwidth); the step's fraction of it says how close the step is to
the machine's limit, and which limit binds. Writes roofline.json to --out-dir and RESULTS.md there
through benchmarks.report.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # `python benchmarks/roofline.py`
    sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from bccd_jax.errors import ArgumentParser, UserError, run_cli  # noqa: E402  (imports bccd_jax first)

ADAM_BYTES_PER_PARAM = 7 * 4
"""Adam's update reads parameter, gradient and two moments and writes parameter and two moments, float32."""


def median_seconds(fn, calls: int) -> float:
    """Median seconds of one call of `fn` (which waits for its result) over `calls` calls, after warm calls."""
    from benchmarks.layers import timed

    return timed(fn, 0.0, calls)


def machine_limits(calls: int, matmul_n: int = 2048, stream_mb: int = 512) -> dict:
    """Peak float32 FLOP/s (a matmul) and memory bandwidth (streaming copies), measured here."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((matmul_n, matmul_n), np.float32))
    dot = jax.jit(jnp.dot)
    matmul_s = median_seconds(lambda: dot(a, a).block_until_ready(), calls)
    n = stream_mb * 2**20 // 4
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    copy_s = median_seconds(lambda: np.copyto(dst, src), calls)
    x = jnp.ones(n, jnp.float32)
    inc = jax.jit(lambda v: v + 1.0)
    inc_s = median_seconds(lambda: inc(x).block_until_ready(), calls)
    numpy_bw, jax_bw = 2 * 4 * n / copy_s, 2 * 4 * n / inc_s  # each reads and writes every element once
    return {"peak_flops": 2 * matmul_n**3 / matmul_s, "matmul_n": matmul_n,
            "bandwidth": max(numpy_bw, jax_bw), "numpy_copy_bandwidth": numpy_bw, "jax_stream_bandwidth": jax_bw,
            "stream_mb": stream_mb}


def step_program(model: str, hw: tuple[int, int], batch: int):
    """(compiled one-seed train step, its arguments, parameter count) for `model` at `hw` and `batch`."""
    import jax
    import jax.numpy as jnp

    from bccd_jax.config import TrainConfig
    from bccd_jax.models import build_model
    from bccd_jax.optimizers import make_optimizer
    from bccd_jax.steps import make_step_fns, seed_key
    from benchmarks.bench import model_config, synthetic

    cfg = TrainConfig(batch_size=batch)
    images, labels = synthetic(batch * 4, hw)
    fns = make_step_fns(build_model(model_config(model)), make_optimizer(cfg), cfg, images.shape[0])
    images, labels = jax.device_put(images), jax.device_put(labels)
    state = fns.init(seed_key(0), images)
    args = (state, images, labels, jnp.arange(batch, dtype=jnp.int32), jnp.ones(batch, bool), jnp.int32(0),
            jnp.int32(0))
    compiled = jax.jit(fns.train_step).lower(*args).compile()
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    return compiled, args, n_params


def step_row(model: str, hw: tuple[int, int], batch: int, calls: int, limits: dict) -> dict:
    import jax

    compiled, args, n_params = step_program(model, hw, batch)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops, nbytes = float(cost["flops"]), float(cost["bytes accessed"])
    step_s = median_seconds(lambda: jax.block_until_ready(compiled(*args)), calls)
    compute_s, memory_s = flops / limits["peak_flops"], nbytes / limits["bandwidth"]
    return {"model": model, "size": f"{hw[0]}x{hw[1]}", "batch_size": batch, "params": n_params,
            "flops": flops, "bytes": nbytes, "adam_bytes": ADAM_BYTES_PER_PARAM * n_params,
            "intensity": flops / nbytes, "step_s": step_s, "flops_per_s": flops / step_s,
            "bytes_per_s": nbytes / step_s, "compute_bound_s": compute_s, "memory_bound_s": memory_s,
            "bound": "memory" if memory_s > compute_s else "compute", "roofline_s": max(compute_s, memory_s),
            "fraction": max(compute_s, memory_s) / step_s}


def main(argv=None) -> dict:
    p = ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["base", "deep"], choices=["base", "expanded", "deep"])
    p.add_argument("--sizes", nargs="+", default=["60x80"], help="image sizes HxW")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    p.add_argument("--calls", type=int, default=20, help="timed calls per measurement (their median counts)")
    p.add_argument("--matmul-n", type=int, default=2048, help="side of the matrices of the peak FLOP measurement")
    p.add_argument("--stream-mb", type=int, default=512, help="size of the arrays of the bandwidth measurement")
    p.add_argument("--out-dir", type=Path, default=HERE)
    a = p.parse_args(argv)
    from benchmarks.bench import cpu_name, parse_size, versions

    sizes = [parse_size(s) for s in a.sizes]
    if min(a.calls, a.matmul_n, a.stream_mb, *a.batch_sizes) < 1:
        raise UserError("--calls, --batch-sizes, --matmul-n and --stream-mb must be >= 1")
    from bccd_jax.run import command_line, cpu_flags
    from benchmarks.report import write_report

    limits = machine_limits(max(a.calls // 4, 3), a.matmul_n, a.stream_mb)
    print(f"peak {limits['peak_flops'] / 1e9:.0f} GFLOP/s, bandwidth {limits['bandwidth'] / 1e9:.1f} GB/s",
          file=sys.stderr)
    rows = []
    for model in a.models:
        for hw in sizes:
            for batch in a.batch_sizes:
                r = step_row(model, hw, batch, a.calls, limits)
                rows.append(r)
                print(f"{model} {r['size']} b{batch}: {r['step_s'] * 1e3:.1f} ms, {r['flops'] / 1e9:.2f} GFLOP, "
                      f"{r['bytes'] / 1e6:.0f} MB, {r['fraction']:.0%} of the roofline ({r['bound']}-bound)",
                      file=sys.stderr, flush=True)
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command_line(argv),
           "machine": cpu_name(), "cpu_flags": cpu_flags(), "versions": versions(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "limits": limits, "rows": rows,
           "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / "roofline.json").write_text(json.dumps(res, indent=1))
    write_report(a.out_dir)
    return res


def cli(argv=None) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))
