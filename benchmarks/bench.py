"""Training throughput of bccd_jax against PyTorch eager, side by side in one process.

    python -m benchmarks.bench                                        # the grid of benchmarks/RESULTS.md
    python -m benchmarks.bench --seeds 1 8 --strategies unroll vmap   # + multi-seed rows
    python -m benchmarks.bench --only-compile-cache-check             # persistent compile cache, two processes

Grid: models x image sizes x dtypes x batch sizes, on synthetic uint8 images of each size. JAX
rows time the project's MultiSeedTrainer.run_epoch (epoch_mode loop, the steps asked for);
PyTorch rows an eager step of benchmarks/torch_cnn.TorchCNN (the same architecture at the same
size, the same init family, Adam eps=1e-7). bfloat16: ModelConfig(dtype="bfloat16") for JAX
(float32 parameters, bfloat16 compute), torch.autocast(bfloat16) around forward and loss for
PyTorch. Each cell is built once per framework and timed in rounds, JAX torch JAX torch
(`--rounds`), so that other load on the machine hits both alike; every round gives a JAX/torch
ratio, reported with its median. `--conv` sets BCCD_JAX_CONV (bccd_jax.models.conv: oneDNN
custom calls for the convolutions when the extension is built); with several values every cell gets
a JAX runner per value, timed in the same rounds (`--conv xla onednn-bf16`: XLA's float32
convolutions beside oneDNN's bfloat16 ones in the float32 model, PyTorch's autocast). Each JAX row
records the path its convolutions took (`conv`). A batch size is skipped for a framework when its step,
extrapolated from the previous batch size, would take longer than --max-step-seconds.
`img_per_s` is images x seeds per second; compile_s = first step minus a warm step. On a CPU
shared with other work, PyTorch's OpenMP threads can stall behind it (try --torch-threads 1).

Writes results.json (one row per framework, cell and round, and the ratios) to --out-dir, and
RESULTS.md there through benchmarks.report, which also renders the folder's other JSON files.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # `python benchmarks/bench.py`
    sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from bccd_jax.errors import ArgumentParser, UserError, run_cli  # noqa: E402  (imports bccd_jax first)

C, NUM_CLASSES = 3, 4
MODELS = {"base": dict(dropout=0.2), "deep": {}}  # ModelConfig.preset(name, **overrides)


def _median(xs):
    return float(statistics.median(xs))


def parse_size(text: str) -> tuple[int, int]:
    """'60x80' -> (60, 80)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--sizes expects HxW such as 60x80, got {text!r}") from None
    return h, w


def synthetic(n: int, hw: tuple[int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, *hw, C), dtype=np.uint8), rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def model_config(name: str, dtype: str = "float32"):
    from bccd_jax.config import ModelConfig

    return ModelConfig.preset(name, dtype=dtype, **MODELS[name])


def cpu_name() -> str:
    from bccd_jax.run import cpu_model

    return f"{cpu_model()} x{os.cpu_count()} threads"


# ----------------------------------------------------------------------------- the two step runners
# Each returns (run, info): run(n) takes n training steps and waits for them to finish.


@contextlib.contextmanager
def conv_env(conv: str | None):
    """BCCD_JAX_CONV=conv while a JAX runner traces and runs (None: the environment's own)."""
    from bccd_jax.models.conv import PATH_ENV

    old = os.environ.get(PATH_ENV)
    if conv:
        os.environ[PATH_ENV] = conv
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PATH_ENV, None)
        else:
            os.environ[PATH_ENV] = old


def jax_runner(model, dtype, batch_size, seeds, strategy, images, labels, conv=None, model_cfg=None):
    """MultiSeedTrainer.run_epoch (epoch_mode loop) cut to the steps asked for: what training runs, with its
    convolutions on the path `conv` chooses (BCCD_JAX_CONV; None: the environment's). `model_cfg` (a ModelConfig)
    replaces the grid's network `model`."""
    import jax

    from bccd_jax.config import TrainConfig
    from bccd_jax.models import build_model
    from bccd_jax.models.conv import conv_path
    from bccd_jax.optimizers import make_optimizer
    from bccd_jax.runtime import seed_sharding
    from bccd_jax.seeds import MultiSeedTrainer, resolve_seed_strategy

    cfg = TrainConfig(batch_size=batch_size, seed_strategy=strategy, epoch_mode="loop")
    net = build_model(model_cfg or model_config(model, dtype))
    tr = MultiSeedTrainer(net, make_optimizer(cfg), cfg, images.shape[0], sharding=seed_sharding(seeds))
    x, y = jax.device_put(images), jax.device_put(labels)
    t0 = time.perf_counter()
    state = tr.init_state(list(range(seeds)), x)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    def run(steps):
        nonlocal state
        with conv_env(conv):  # read when a step is traced
            for epoch in range(math.ceil(steps / tr.steps_per_epoch)):
                state, m = tr.run_epoch(state, x, y, epoch, steps=min(steps, tr.steps_per_epoch))
                steps -= tr.steps_per_epoch
            jax.block_until_ready((state, m))

    with conv_env(conv):
        path = conv_path(dtype)
    return run, dict(strategy=resolve_seed_strategy(strategy, seeds), init_s=init_s, conv=path, conv_env=conv)


def torch_runner(model, dtype, batch_size, images, labels, device):
    """An eager PyTorch step (random batches) of the same CNN at the same image size."""
    import torch
    import torch.nn.functional as F

    from benchmarks.torch_cnn import TorchCNN

    torch.manual_seed(0)
    dev = torch.device(device)
    net = TorchCNN(model_config(model), images.shape[1:3]).to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev)  # uint8 NCHW; the net scales it
    y = torch.from_numpy(labels).long().to(dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext

    def run(steps):
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=g).to(dev)
            opt.zero_grad(set_to_none=True)
            with amp():
                loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return run, dict(threads=torch.get_num_threads())


def minor_faults() -> int:
    """This process's minor page faults so far (pages the kernel mapped in on first touch; bccd_jax/_malloc.py:
    a step whose buffers are faulted in anew each time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_steps(run, steps: int, repeats: int) -> list[float]:
    """Seconds per step of `repeats` runs of `steps` steps."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(steps)
        out.append((time.perf_counter() - t0) / steps)
    return out


def bench_jax_epochs(model, batch_size, seeds, strategy, epoch_mode, images, labels, repeats):
    """Epoch rows: whole run_epoch calls (batch plan included) in scan or loop mode."""
    import jax

    from bccd_jax.config import TrainConfig
    from bccd_jax.models import build_model
    from bccd_jax.optimizers import make_optimizer
    from bccd_jax.seeds import MultiSeedTrainer, resolve_seed_strategy

    cfg = TrainConfig(batch_size=batch_size, seed_strategy=strategy, epoch_mode=epoch_mode)
    tr = MultiSeedTrainer(build_model(model_config(model)), make_optimizer(cfg), cfg, images.shape[0])
    x, y = jax.device_put(images), jax.device_put(labels)
    state = tr.init_state(list(range(seeds)), x)
    times = []
    for e in range(repeats + 1):  # the first epoch compiles
        t0 = time.perf_counter()
        state, m = tr.run_epoch(state, x, y, e)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    epoch_s = _median(times[1:])
    return dict(epoch_s=epoch_s, epoch_s_all=times[1:], img_per_s=images.shape[0] * seeds / epoch_s,
                compile_s=max(0.0, times[0] - epoch_s), strategy=resolve_seed_strategy(strategy, seeds),
                epoch_mode=tr.epoch_mode)


# ----------------------------------------------------------------------------- one cell, interleaved


def _estimate(spec: tuple, last: dict, bs: int, one_seed: float | None) -> tuple[float | None, str]:
    """A runner's step time before it is built, and why: from its step at the previous batch size, or S x this
    cell's 1-seed step; None where neither is known."""
    seeds = spec[1]
    if spec in last:
        b0, s0 = last[spec]
        return s0 * bs / b0, f"from {s0:.2f} s at batch {b0}"
    if seeds > 1 and one_seed is not None:
        return one_seed * seeds, f"{seeds} x the 1-seed step {one_seed:.2f} s"
    return None, ""


def measure_cell(a, cell: dict, images, labels, last: dict, torch_device: str, log) -> tuple[list, list]:
    """Rows (one per runner and round) and skip reasons of one (model, size, dtype, batch) cell.

    Runners: JAX 1 seed (one per --conv value), PyTorch, then JAX with S > 1 seeds; each is built on its first round
    unless its estimated step (previous batch size's step x batch ratio; S x this cell's 1-seed
    step) exceeds --max-step-seconds. `last` carries each runner's (batch, step_s) to the next cell."""
    from bccd_jax.run import cpu_flags, cpu_model

    convs = a.conv or [None]
    specs = ([("jax", 1, "auto", c) for c in convs] if "jax" in a.frameworks else []) + \
            ([("torch", 1, "eager", None)] if "torch" in a.frameworks else []) + \
            ([("jax", s, st, c) for c in convs for s in a.seeds if s > 1 for st in a.strategies]
             if "jax" in a.frameworks else [])
    bs, runners, rows, skipped, dead = cell["batch_size"], {}, [], [], set()
    base = dict(kind="step", **cell, cpu=cpu_model(), cpu_flags=cpu_flags())
    label = f"{cell['model']} {cell['size']} {cell['dtype']} b{bs}"
    for rnd in range(a.rounds):
        for spec in specs:
            fw, seeds, strat, conv = spec
            if spec in dead:
                continue
            one_seed = next((r["step_s"] for r in rows if r["round"] == rnd and r["framework"] == "jax"
                             and r["seeds"] == 1 and r["conv_env"] == conv), None)
            name = f"{fw} {label}" + (f" S={seeds} {strat}" if seeds > 1 else "") + (f" conv={conv}" if conv else "")
            if spec not in runners:
                est, why = _estimate(spec, last, bs, one_seed)
                if est is not None and est > a.max_step_seconds:
                    dead.add(spec)
                    last[spec] = (bs, est)  # larger batches are skipped too
                    skipped.append(f"{name}: estimated {est:.1f} s/step ({why}) > --max-step-seconds "
                                   f"{a.max_step_seconds:g}")
                    log(skipped[-1])
                    continue
                if fw == "jax":
                    run, info = jax_runner(cell["model"], cell["dtype"], bs, seeds, strat, images, labels, conv)
                else:
                    run, info = torch_runner(cell["model"], cell["dtype"], bs, images, labels, torch_device)
                first = timed_steps(run, 1, 1)[0]
                warm = min(timed_steps(run, 1, 2))  # PyTorch too warms up over its first steps
                if warm > a.max_step_seconds:
                    dead.add(spec)
                    last[spec] = (bs, warm)
                    skipped.append(f"{name}: a warm step took {warm:.1f} s > --max-step-seconds {a.max_step_seconds:g}")
                    log(skipped[-1])
                    continue
                steps = min(50, max(a.steps, math.ceil(a.min_seconds / max(warm, 1e-6))))
                runners[spec] = (run, dict(info, compile_s=max(0.0, first - warm), steps=steps))
            run, info = runners[spec]
            faults_before = minor_faults()
            times = timed_steps(run, info["steps"], a.repeats)
            faults = (minor_faults() - faults_before) / (info["steps"] * a.repeats)
            step_s = _median(times)
            rows.append(dict(base, framework=fw, seeds=seeds, strategy_requested=strat if fw == "jax" else None,
                             round=rnd, step_s=step_s, step_s_all=times, img_per_s=bs * seeds / step_s,
                             minor_faults_per_step=faults,
                             **{"strategy": "eager", "conv_env": None, **info}))
            log(f"round {rnd + 1} {name}: {bs * seeds / step_s:,.1f} img/s ({step_s * 1e3:,.0f} ms/step)")
    for spec in runners:  # measured: the next batch size's estimate starts from here
        last[spec] = (bs, _median([r["step_s"] for r in rows if (r["framework"], r["seeds"], r["strategy_requested"]
                                                                  or "eager", r["conv_env"]) == spec]))
    return rows, skipped


# ----------------------------------------------------------------------------- main


def versions() -> dict:
    """bccd_jax.run.versions() (less what the header shows apart) plus the PyTorch the torch rows ran with."""
    from bccd_jax.run import versions as run_versions

    try:
        import torch
    except ImportError:
        torch = None
    v = {k: x for k, x in run_versions().items() if k not in ("devices", "xla_flags", "backend")}
    return {**v, "torch": torch.__version__ if torch is not None else None}


def make_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["60x80", "120x160"], help="image sizes HxW")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--models", nargs="+", default=["base", "deep"], choices=sorted(MODELS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--frameworks", nargs="+", default=["jax", "torch"], choices=["jax", "torch"])
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: PyTorch's own)")
    p.add_argument("--rounds", type=int, default=2, help="JAX-then-PyTorch rounds per cell")
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat (at least; see --min-seconds)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="more steps per repeat until a repeat lasts this long")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per round (their median is the round's)")
    p.add_argument("--images", type=int, default=256, help="synthetic training images per size (>= the batch)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="JAX seeds at once; > 1 adds multi-seed rows")
    p.add_argument("--strategies", nargs="+", default=["auto"], help="seed_strategy values for S > 1 rows")
    p.add_argument("--max-step-seconds", type=float, default=10.0,
                   help="skip a runner whose step would take longer (estimated from the previous batch size)")
    p.add_argument("--epochs", action="store_true", help="add scan-vs-loop epoch rows (first size, first batch)")
    p.add_argument("--epoch-images", type=int, default=256)
    p.add_argument("--epoch-seeds", type=int, nargs="+", default=[1, 8])
    p.add_argument("--epoch-models", nargs="+", default=["base"])
    p.add_argument("--epoch-strategies", nargs="+", default=["vmap", "map"])
    p.add_argument("--skip-steps", action="store_true", help="no step rows (only --epochs / the cache check)")
    p.add_argument("--compile-cache-check", action="store_true", help="also run the compile-cache check")
    p.add_argument("--only-compile-cache-check", action="store_true")
    p.add_argument("--out-dir", type=Path, default=HERE)
    p.add_argument("--note", action="append", default=[], help="a hand-written line for the Notes (shown with this command)")
    p.add_argument("--append", action="store_true", help="add to the rows of an existing results.json")
    p.add_argument("--conv", nargs="+", choices=["auto", "onednn", "onednn-bf16", "xla"],
                   help="BCCD_JAX_CONV for the JAX rows, one JAX runner per value (default: the environment's, "
                        "else auto)")
    return p


def start_results(a: argparse.Namespace, argv) -> dict:
    """results.json before any row: machine, versions, command (and the rows of the file with --append)."""
    import jax

    from bccd_jax.run import command_line, cpu_flags

    backend = jax.default_backend()
    dev = jax.devices()[0]
    device = getattr(dev, "device_kind", str(dev))
    command = command_line(argv)
    res = {"machine": f"{platform.node()}: {cpu_name()}" + (f", {jax.device_count()}x {device}" if backend != "cpu" else ""),
           "cpu_flags": cpu_flags(), "cpu_threads": os.cpu_count(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": [command], "backend": backend, "device": device, "versions": versions(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "conv_env": os.environ.get("BCCD_JAX_CONV", ""),
           "rows": [], "skipped": [],
           "notes": [{"text": t, "command": command} for t in a.note],
           "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    out_json = a.out_dir / "results.json"
    if a.append and out_json.exists():
        old = json.loads(out_json.read_text())
        old_cmd = old["command"] if isinstance(old["command"], list) else [old["command"]]
        res.update(rows=old["rows"], skipped=old.get("skipped", []) + res["skipped"], command=old_cmd + [command],
                   notes=old.get("notes", []) + res["notes"],
                   date=old["date"] + " .. " + res["date"], loadavg_start=old.get("loadavg_start"))
        if "compile_cache" in old:
            res["compile_cache"] = old["compile_cache"]
    return res


def save_results(a: argparse.Namespace, res: dict) -> None:
    """results.json with its summary, and RESULTS.md (benchmarks.report)."""
    from benchmarks.report import summarize, write_report

    res["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    res.update(summarize(res))
    (a.out_dir / "results.json").write_text(json.dumps(res, indent=1))
    write_report(a.out_dir)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def step_rows(a: argparse.Namespace, sizes, res: dict, base_row: dict) -> None:
    """A step's time for every model, size, dtype and batch size, both frameworks (measure_cell)."""
    torch_device = "cuda" if res["backend"] != "cpu" else "cpu"
    for model in a.models:
        for hw in sizes:
            images, labels = synthetic(max(a.images, max(a.batch_sizes)), hw)
            for dtype in a.dtypes:
                last: dict = {}
                for bs in a.batch_sizes:
                    cell = dict(model=model, size=f"{hw[0]}x{hw[1]}", height=hw[0], width=hw[1], dtype=dtype,
                                batch_size=bs)
                    rows, skipped = measure_cell(a, cell, images, labels, last, torch_device, log)
                    res["rows"] += [dict(base_row, **r) for r in rows]
                    res["skipped"] += skipped
                    save_results(a, res)


def epoch_rows(a: argparse.Namespace, hw, res: dict, base_row: dict) -> None:
    """An epoch's time as a Python loop of steps and as one scan, per model, seed count and strategy."""
    images, labels = synthetic(a.epoch_images, hw, seed=1)
    for model in a.epoch_models:
        for seeds in a.epoch_seeds:
            for strat in (a.epoch_strategies if seeds > 1 else ["vmap"]):
                for mode in ("loop", "scan"):
                    r = bench_jax_epochs(model, a.batch_sizes[0], seeds, strat, mode, images, labels, a.repeats)
                    res["rows"].append(dict(base_row, kind="epoch", framework="jax", model=model,
                                            size=f"{hw[0]}x{hw[1]}", batch_size=a.batch_sizes[0], seeds=seeds,
                                            dtype="float32", images=a.epoch_images, **r))
                    log(f"epoch {model} S={seeds} {strat} {mode}: {r['epoch_s']:.2f} s")
                    save_results(a, res)


def main(argv=None):
    a = make_parser().parse_args(argv)
    sizes = [parse_size(s) for s in a.sizes]
    from bccd_jax.models.cnn import feature_map_size

    for m in a.models:
        for hw in sizes:
            feature_map_size(model_config(m), hw)
    if min(a.rounds, a.steps, a.repeats, min(a.batch_sizes), min(a.seeds)) < 1:
        raise UserError("--rounds, --steps, --repeats, --batch-sizes and --seeds must be >= 1")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    res = start_results(a, argv)
    if a.torch_threads and "torch" in a.frameworks:
        import torch

        torch.set_num_threads(a.torch_threads)
    backend = res["backend"]
    base_row = dict(backend="gpu" if backend in ("gpu", "cuda", "rocm") else backend, device=res["device"])
    if not a.only_compile_cache_check and not a.skip_steps:
        step_rows(a, sizes, res, base_row)
    if a.epochs and not a.only_compile_cache_check:
        epoch_rows(a, sizes[0], res, base_row)
    if a.compile_cache_check or a.only_compile_cache_check:
        from benchmarks.compile_cache import compile_cache_check

        res["compile_cache"] = compile_cache_check()
        log(f"compile cache: second/first = {res['compile_cache']['compile_fraction']:.3f}")
    save_results(a, res)
    for c in res["ratios"]:
        if c["jax_over_torch_median"] is not None:
            print(f"{c['model']} {c['size']} {c['dtype']} b{c['batch_size']}: JAX/PyTorch "
                  f"{c['jax_over_torch_median']:.2f} (rounds {', '.join(f'{r:.2f}' for r in c['jax_over_torch'])})")
    return res


def cli(argv=None) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))
