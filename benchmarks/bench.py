"""Training-throughput benchmark of bccd_jax against PyTorch eager, on whatever backend is present.

    python -m benchmarks.bench                                   # the CPU grid of benchmarks/RESULTS.md
    python -m benchmarks.bench --images 9957 --steps 50 --seeds 1 8 32 --repeats 5   # a GPU run
    python -m benchmarks.bench --compile-cache-check             # persistent compile cache, two processes

JAX rows time the project's own MultiSeedTrainer (bccd_jax.train): `train_step` calls
for the step rows (epoch_mode "loop", one dispatch per step for all S seeds) and
`run_epoch` for the epoch rows (scan vs loop). The first call of each compiled
function is timed apart and reported as `compile_s` (first call minus the median
steady call). Data are synthetic uint8 images of the real shape (120x160x3).
`img_per_s` is always images x seeds per second; `per_seed_vs_1` divides the
per-seed throughput of an S-seed row by the 1-seed row of the same model/batch/strategy.

Writes benchmarks/results.json and benchmarks/RESULTS.md (or --out-dir).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # `python benchmarks/bench.py`
    sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

H, W, C, NUM_CLASSES = 120, 160, 3, 4
MODELS = {"base": dict(dropout=0.2), "deep": {}}  # ModelConfig.preset(name, **overrides)


def _median(xs):
    return float(statistics.median(xs))


def synthetic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, H, W, C), dtype=np.uint8), rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def cpu_name() -> str:
    from bccd_jax.run import cpu_model

    return f"{cpu_model()} x{os.cpu_count()} threads"


# ----------------------------------------------------------------------------- JAX


def _jax_setup(model_name, batch_size, seeds, strategy, epoch_mode, dtype, n):
    import jax

    from bccd_jax.config import ModelConfig, TrainConfig
    from bccd_jax.models import build_model
    from bccd_jax.optimizers import make_optimizer
    from bccd_jax.runtime import seed_sharding
    from bccd_jax.seeds import MultiSeedTrainer

    model = build_model(ModelConfig.preset(model_name, dtype=dtype, **MODELS[model_name]))
    cfg = TrainConfig(batch_size=batch_size, seed_strategy=strategy, epoch_mode=epoch_mode)
    trainer = MultiSeedTrainer(model, make_optimizer(cfg), cfg, n, sharding=seed_sharding(seeds))
    return jax, trainer


def bench_jax_steps(model_name, batch_size, seeds, strategy, dtype, images, labels, steps, repeats):
    """Step rows: `steps` train_step calls per repeat, after one compiling call."""
    n = images.shape[0]
    jax, tr = _jax_setup(model_name, batch_size, seeds, strategy, "loop", dtype, n)
    x, y = jax.device_put(images), jax.device_put(labels)
    t0 = time.perf_counter()
    state = tr.init_state(list(range(seeds)), x)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    idx, mask = tr.batch_plan(state.key, jax.numpy.int32(0))
    mask = mask[0]
    spe = tr.steps_per_epoch
    ep, zero = jax.numpy.int32(0), jax.numpy.int32(0)

    def step(state, i):
        return tr.train_step(state, x, y, idx[:, i % spe], mask[i % spe], ep, jax.numpy.int32(i))

    t0 = time.perf_counter()
    state, m = step(state, 0)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            state, m = step(state, i)
        jax.block_until_ready((state, m))
        times.append((time.perf_counter() - t0) / steps)
    del zero
    step_s = _median(times)
    return dict(step_s=step_s, step_s_all=times, img_per_s=batch_size * seeds / step_s,
                compile_s=max(0.0, first - step_s), init_s=init_s, strategy=tr.seed_strategy)


def bench_jax_epochs(model_name, batch_size, seeds, strategy, epoch_mode, images, labels, repeats):
    """Epoch rows: whole run_epoch calls (batch plan included) in scan or loop mode."""
    n = images.shape[0]
    jax, tr = _jax_setup(model_name, batch_size, seeds, strategy, epoch_mode, "float32", n)
    x, y = jax.device_put(images), jax.device_put(labels)
    state = tr.init_state(list(range(seeds)), x)
    t0 = time.perf_counter()
    state, m = tr.run_epoch(state, x, y, 0)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for e in range(1, repeats + 1):
        t0 = time.perf_counter()
        state, m = tr.run_epoch(state, x, y, e)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    epoch_s = _median(times)
    return dict(epoch_s=epoch_s, epoch_s_all=times, img_per_s=n * seeds / epoch_s,
                compile_s=max(0.0, first - epoch_s), strategy=tr.seed_strategy, epoch_mode=tr.epoch_mode)


# ----------------------------------------------------------------------------- PyTorch eager


def torch_model(name):
    import torch.nn as tnn

    def conv(cin, cout):
        return [tnn.Conv2d(cin, cout, 3), tnn.ReLU()]

    if name == "base":
        layers, ch, hw = conv(3, 32) + [tnn.MaxPool2d(2)], 32, ((H - 2) // 2, (W - 2) // 2)
        dense, p = 128, 0.2
    else:
        layers = conv(3, 32) + conv(32, 32) + [tnn.MaxPool2d(2)] + conv(32, 64) + conv(64, 64) + [tnn.MaxPool2d(2)]
        layers += conv(64, 128) + [tnn.MaxPool2d(2)]
        h, w = H, W
        for k in (2, 2, "p", 2, 2, "p", 2, "p"):
            h, w = (h - 2, w - 2) if k == 2 else (h // 2, w // 2)
        ch, hw, dense, p = 128, (h, w), 256, 0.2
    return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(ch * hw[0] * hw[1], dense), tnn.ReLU(),
                          tnn.Dropout(p), tnn.Linear(dense, NUM_CLASSES))


def bench_torch(model_name, batch_size, images, labels, steps, repeats, device):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    dev = torch.device(device)
    net = torch_model(model_name).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev)  # uint8 NCHW on device
    y = torch.from_numpy(labels).long().to(dev)
    n = x.shape[0]
    g = torch.Generator(device="cpu").manual_seed(0)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(i):
        idx = torch.randint(0, n, (batch_size,), generator=g).to(dev)
        xb = x[idx].float() / 255.0
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(xb), y[idx])
        loss.backward()
        opt.step()
        return loss

    net.train()
    t0 = time.perf_counter()
    step(0)
    sync()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        sync()
        times.append((time.perf_counter() - t0) / steps)
    step_s = _median(times)
    return dict(step_s=step_s, step_s_all=times, img_per_s=batch_size / step_s,
                compile_s=max(0.0, first - step_s), threads=torch.get_num_threads())


# ----------------------------------------------------------------------------- compile cache check

_CACHE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import collections, jax.monitoring
events = collections.defaultdict(float)
jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: events.__setitem__(name, events[name] + secs))
from bccd_jax.runtime import enable_compilation_cache
enable_compilation_cache(sys.argv[1])
import numpy as np, jax
from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.models import build_model
from bccd_jax.optimizers import make_optimizer
from bccd_jax.train import TrainData, fit
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (64, 120, 160, 3), dtype=np.uint8); y = rng.integers(0, 4, 64).astype(np.int32)
data = TrainData(jax.device_put(x), jax.device_put(y), {"test": (jax.device_put(x[:32]), jax.device_put(y[:32]))})
cfg = TrainConfig(epochs=3, batch_size=32, epoch_mode=sys.argv[2], seed_strategy="auto")
res = fit(build_model(ModelConfig.preset("base", dropout=0.2)), make_optimizer(cfg), cfg, data, [0, 1])
jit_s = sum(v for k, v in events.items() if k.startswith("/jax/core/compile/") or k.startswith("/jax/compilation_cache/cache_retrieval"))
print("RESULT " + json.dumps({"compile_s": jit_s, "fit_compile_estimate_s": res.compile_s, "events": dict(events), "wall_s": res.wall_s,
      "process_s": time.perf_counter() - t0, "test_acc": res.history["test_acc"][-1]}))
"""


def compile_cache_check(epoch_mode: str = "auto") -> dict:
    """A small fit() twice, each in a fresh subprocess sharing one new cache directory."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="bccd_jax_cache_") as cache:
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", _CACHE_CHILD, cache, epoch_mode], capture_output=True,
                                 text=True, cwd=str(HERE.parent), check=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
            runs.append(json.loads(line[len("RESULT "):]))
        entries = sum(len(f) for _, _, f in os.walk(cache))
    first, second = runs
    return dict(epoch_mode=epoch_mode, first=first, second=second, cache_entries=entries,
                compile_fraction=second["compile_s"] / max(first["compile_s"], 1e-9),
                process_fraction=second["process_s"] / max(first["process_s"], 1e-9),
                same_numbers=first["test_acc"] == second["test_acc"])


# ----------------------------------------------------------------------------- report


def versions() -> dict:
    """bccd_jax.run.versions() plus the PyTorch the torch rows ran with (None when it is not installed)."""
    from bccd_jax.run import versions as run_versions

    try:
        import torch
    except ImportError:
        torch = None
    return {**run_versions(), "torch": torch.__version__ if torch is not None else None}


def _fmt(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def write_markdown(res: dict, path: Path):
    rows = res["rows"]
    step = [r for r in rows if r["kind"] == "step"]
    lines = [
        "# bccd_jax training throughput",
        "",
        f"- command: `{res['command']}`",
        f"- machine: {res['machine']} (backend {res['backend']}, device {res['device']})",
        f"- date: {res['date']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}",
        f"- XLA_FLAGS: `{res.get('xla_flags') or '(none)'}` (bccd_jax/_xla_env.py)",
        f"- load average at start / end: {res.get('loadavg_start')} / {res.get('loadavg_end')}",
        "",
        "img*seed/s = images x seeds per second (median over repeats); 'vs 1 seed' = an S-seed row's img*seed/s "
        "over the 1-seed row's img/s (per-seed throughput relative to training the seeds one by one); "
        "compile_s = first call minus median call.",
        "",
        "## Steps (MultiSeedTrainer.train_step, epoch_mode loop) and PyTorch eager",
        "",
        "| framework | model | dtype | batch | seeds | strategy | img*seed/s | vs 1 seed | step ms | compile s |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in step:
        lines.append(f"| {r['framework']} | {r['model']} | {r.get('dtype', 'float32')} | {r['batch_size']} | "
                     f"{r['seeds']} | {r.get('strategy', '-')} | {_fmt(r['img_per_s'])} | "
                     f"{_fmt(r.get('per_seed_vs_1'), 2)} | "
                     f"{_fmt(r['step_s'] * 1e3)} | {_fmt(r['compile_s'], 2)} |")
    if res.get("ratios"):
        lines += ["", "## Ratios", "", "| ratio | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
    ep = [r for r in rows if r["kind"] == "epoch"]
    if ep:
        lines += ["", "## Epochs: scan vs loop (MultiSeedTrainer.run_epoch)", "",
                  "| model | batch | seeds | strategy | epoch_mode | images | epoch s | img/s | compile s |",
                  "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in ep:
            lines.append(f"| {r['model']} | {r['batch_size']} | {r['seeds']} | {r['strategy']} | {r['epoch_mode']} | "
                         f"{r['images']} | {_fmt(r['epoch_s'], 2)} | {_fmt(r['img_per_s'])} | {_fmt(r['compile_s'], 2)} |")
    if res.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in res["skipped"]]
    if res.get("compile_cache"):
        cc = res["compile_cache"]
        lines += ["", "## Persistent compilation cache (`--compile-cache-check`)", "",
                  "compile = JAX's own timings (jax.monitoring: tracing, lowering, XLA compile or cache "
                  "retrieval), summed over the process.",
                  f"A 3-epoch fit of `base` (2 seeds, seed_strategy auto, epoch_mode {cc['epoch_mode']}) in two fresh processes "
                  "sharing one cache directory (bccd_jax.runtime.enable_compilation_cache):", "",
                  f"- first run compile {cc['first']['compile_s']:.2f} s, process {cc['first']['process_s']:.2f} s",
                  f"- second run compile {cc['second']['compile_s']:.2f} s, process {cc['second']['process_s']:.2f} s",
                  f"- second/first compile time: **{cc['compile_fraction'] * 100:.1f} %** "
                  f"(process wall time {cc['process_fraction'] * 100:.1f} %); {cc['cache_entries']} cache entries; "
                  f"identical numbers: {cc['same_numbers']}"]
    if res.get("notes"):
        lines += ["", "## Notes", ""] + list(res["notes"])
    path.write_text("\n".join(lines) + "\n")


def add_ratios(res: dict):
    step = [r for r in res["rows"] if r["kind"] == "step"]
    ratios = {}

    def find(**kw):
        for r in step:
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    for r in step:
        if r["framework"] == "jax" and r["seeds"] > 1:
            one = find(framework="jax", model=r["model"], batch_size=r["batch_size"], seeds=1,
                       dtype=r.get("dtype"))
            if one:
                r["per_seed_vs_1"] = r["img_per_s"] / one["img_per_s"]
                ratios[f"{r['model']} b{r['batch_size']} S={r['seeds']} {r['strategy_requested']}: "
                       "img*seed/s vs 1 seed's img/s (>= 1: not slower than seeds one by one)"] = r["per_seed_vs_1"]
    for r in step:
        if r["framework"] == "jax" and r["seeds"] == 1 and r.get("dtype") == "float32":
            t = find(framework="torch", model=r["model"], batch_size=r["batch_size"])
            if t:
                ratios[f"{r['model']} b{r['batch_size']} JAX ({r['strategy_requested']}) / torch"] = \
                    r["img_per_s"] / t["img_per_s"]
        if r["framework"] == "jax" and r.get("dtype") == "bfloat16":
            f = find(framework="jax", model=r["model"], batch_size=r["batch_size"], seeds=r["seeds"],
                     dtype="float32")
            if f:
                ratios[f"{r['model']} b{r['batch_size']} S={r['seeds']} bfloat16 / float32"] = \
                    r["img_per_s"] / f["img_per_s"]
    res["ratios"] = ratios


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256, help="synthetic training images (epoch rows use all)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    p.add_argument("--models", nargs="+", default=["base", "deep"], choices=sorted(MODELS))
    p.add_argument("--frameworks", nargs="+", default=["jax", "torch"], choices=["jax", "torch"])
    p.add_argument("--strategies", nargs="+", default=["auto"], help="seed_strategy values for S > 1 rows")
    p.add_argument("--bf16", action="store_true", help="add bfloat16 rows (1 seed, every model/batch)")
    p.add_argument("--epochs", action="store_true", help="add scan-vs-loop epoch rows")
    p.add_argument("--epoch-images", type=int, default=256)
    p.add_argument("--skip-steps", action="store_true", help="no step rows (only --epochs / cache check)")
    p.add_argument("--epoch-seeds", type=int, nargs="+", default=[1, 8])
    p.add_argument("--epoch-models", nargs="+", default=["base"])
    p.add_argument("--epoch-strategies", nargs="+", default=["vmap", "map"])
    p.add_argument("--max-step-seconds", type=float, default=60.0,
                   help="skip a JAX row whose step would take longer (estimated from its 1-seed row)")
    p.add_argument("--compile-cache-check", action="store_true", help="also run the compile-cache check")
    p.add_argument("--only-compile-cache-check", action="store_true")
    p.add_argument("--out-dir", type=Path, default=HERE)
    p.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    p.add_argument("--append", action="store_true", help="add to the rows of an existing results.json")
    a = p.parse_args(argv)

    import bccd_jax  # noqa: F401  first: sets the XLA:CPU flags (bccd_jax/_xla_env.py) before JAX starts
    import jax

    if a.out_dir != HERE:
        a.out_dir.mkdir(parents=True, exist_ok=True)
    backend = jax.default_backend()
    dev = jax.devices()[0]
    device = getattr(dev, "device_kind", str(dev))
    res = {"machine": f"{platform.node()}: {cpu_name()}" + (f", {jax.device_count()}x {device}" if backend != "cpu" else ""),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": "python -m benchmarks.bench " + " ".join(shlex.quote(s) for s in (argv if argv is not None else sys.argv[1:])),
           "backend": backend, "device": device, "versions": versions(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "rows": [], "skipped": [],
           "notes": a.note, "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    out_json = a.out_dir / "results.json"
    if a.append and out_json.exists():
        old = json.loads(out_json.read_text())
        res["rows"] = old["rows"]
        res["skipped"] = old.get("skipped", []) + res["skipped"]
        res["notes"] = old.get("notes", []) + res["notes"]
        res["command"] = old["command"] + "` and `" + res["command"]
        res["date"] = old["date"] + " .. " + res["date"]
        res["loadavg_start"] = old.get("loadavg_start")
        if "compile_cache" in old:
            res["compile_cache"] = old["compile_cache"]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    def save():
        res["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        add_ratios(res)
        out_json.write_text(json.dumps(res, indent=1))
        write_markdown(res, a.out_dir / "RESULTS.md")

    base_row = dict(backend="gpu" if backend in ("gpu", "cuda", "rocm") else backend, device=device)
    if not a.only_compile_cache_check:
        images, labels = synthetic(max(a.images, max(a.batch_sizes)))
        for model in ([] if a.skip_steps else a.models):
            for bs in a.batch_sizes:
                if "torch" in a.frameworks:
                    tdev = "cuda" if backend == "gpu" else "cpu"
                    r = bench_torch(model, bs, images, labels, a.steps, a.repeats, tdev)
                    res["rows"].append(dict(base_row, kind="step", framework="torch", model=model, batch_size=bs,
                                            seeds=1, dtype="float32", strategy="eager", strategy_requested=None, **r))
                    log(f"torch {model} b{bs}: {r['img_per_s']:.1f} img/s")
                    save()
                if "jax" not in a.frameworks:
                    continue
                one_step = None
                combos = [(1, "auto", "float32")] + [(s, st, "float32") for s in a.seeds if s > 1 for st in a.strategies]
                if a.bf16:
                    combos.append((1, "auto", "bfloat16"))
                for seeds, strat, dtype in combos:
                    if seeds == 1 and 1 not in a.seeds and dtype == "float32" and one_step is not None:
                        continue
                    if one_step is not None and one_step * seeds > a.max_step_seconds:
                        res["skipped"].append(f"jax {model} b{bs} S={seeds} {strat}: estimated "
                                              f"{one_step * seeds:.0f} s/step > --max-step-seconds {a.max_step_seconds}")
                        log(res["skipped"][-1])
                        continue
                    r = bench_jax_steps(model, bs, seeds, strat, dtype, images, labels, a.steps, a.repeats)
                    if seeds == 1 and dtype == "float32":
                        one_step = r["step_s"]
                    res["rows"].append(dict(base_row, kind="step", framework="jax", model=model, batch_size=bs,
                                            seeds=seeds, dtype=dtype, strategy_requested=strat, **r))
                    log(f"jax {model} b{bs} S={seeds} {strat}->{r['strategy']} {dtype}: {r['img_per_s']:.1f} "
                        f"img*seed/s, compile {r['compile_s']:.1f} s")
                    save()
        if a.epochs:
            images, labels = synthetic(a.epoch_images, seed=1)
            for model in a.epoch_models:
                for seeds in a.epoch_seeds:
                    for strat in (a.epoch_strategies if seeds > 1 else ["vmap"]):
                        for mode in ("loop", "scan"):
                            r = bench_jax_epochs(model, a.batch_sizes[0], seeds, strat, mode, images, labels,
                                                 a.repeats)
                            res["rows"].append(dict(base_row, kind="epoch", framework="jax", model=model,
                                                    batch_size=a.batch_sizes[0], seeds=seeds, dtype="float32",
                                                    images=a.epoch_images, **r))
                            log(f"epoch {model} S={seeds} {strat} {mode}: {r['epoch_s']:.2f} s")
                            save()
    if a.compile_cache_check or a.only_compile_cache_check:
        res["compile_cache"] = compile_cache_check()
        log(f"compile cache: second/first = {res['compile_cache']['compile_fraction']:.3f}")
    save()
    print(json.dumps(res.get("ratios", {}), indent=1))
    return res


if __name__ == "__main__":
    main()
