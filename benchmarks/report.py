"""RESULTS.md of a benchmarks folder, generated from the JSON files the benchmarks write there.

    python -m benchmarks.report [--out-dir DIR]      # rewrite DIR/RESULTS.md (default benchmarks/)

The file opens with what moved and why (benchmarks/moved_section.py: each speed-up with the file that measured
it). Sections, each from its file when present: throughput (results.json, `python -m benchmarks.bench`),
time to TEST accuracy (time_to_accuracy.json, `python -m benchmarks.time_to_accuracy`) and the
XLA:CPU flag A/B (xla_cpu_ab.json, `python -m benchmarks.xla_cpu_ab`), the glibc malloc A/B (malloc_ab.json, the
same command with --out), the oneDNN convolution A/B
(onednn_ab.json, `python -m benchmarks.onednn_ab`), each convolution of a step
(layers.json, `python -m benchmarks.layers`), the step against the CPU's roofline (roofline.json,
`python -m benchmarks.roofline`), the VGG16 feature cache (vgg_cache.json,
`python -m benchmarks.vgg_cache`), the fault soak (faults.json, `python -m benchmarks.faults`) and Keras'
training step beside bccd_jax's (keras_step.json, `python -m benchmarks.keras_step`). Every number
and every note is computed from those files; hand-written notes (`--note` of a benchmark) appear with the command
that recorded them. Each benchmark rewrites the whole file, so no section is lost to another.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # `python benchmarks/report.py`
    sys.path.insert(0, str(HERE.parent))

from benchmarks.faults import faults_section  # noqa: E402
from benchmarks.keras_step import keras_step_section  # noqa: E402
from benchmarks.moved_section import what_moved_section  # noqa: E402
from benchmarks.tta_section import fmt, time_to_accuracy_section  # noqa: E402


def _median(xs):
    return float(statistics.median(xs))


def _size_key(size: str) -> tuple[int, ...]:
    return tuple(int(v) for v in size.split("x"))


_SHORT = {"float32": "f32", "bfloat16": "bf16"}


def _conv(r: dict) -> str | None:
    """The path a JAX row's convolutions took (rows of older files: XLA's); None for PyTorch rows."""
    return r.get("conv") or "xla" if r["framework"] == "jax" else None


def summarize(res: dict) -> dict:
    """Per cell (model, size, dtype, batch, JAX's convolution path): median img/s per framework, the JAX/torch
    ratio of every round and its median; per (model, size, batch): bfloat16 / float32 per framework, and each
    side's best setting; multi-seed per-seed speed vs 1 seed."""
    step = [dict(r, size=r.get("size", "120x160"), round=r.get("round", 0)) for r in res.get("rows", [])
            if r["kind"] == "step"]  # rows of older files: one size (120x160), one round

    def med(rows):
        return _median([r["img_per_s"] for r in rows]) if rows else None

    def cell_of(r):
        return r["model"], r["size"], r["dtype"], r["batch_size"]

    keys = {cell_of(r) + (_conv(r),) for r in step if r["framework"] == "jax"}
    keys |= {cell_of(r) + (None,) for r in step if not any(k[:4] == cell_of(r) for k in keys)}  # PyTorch only
    keys = sorted(keys, key=lambda k: (k[0], _size_key(k[1]), k[2], k[3], k[4] or ""))
    cells, multi = [], []
    for model, size, dtype, bs, conv in keys:
        rows = [r for r in step if cell_of(r) == (model, size, dtype, bs) and _conv(r) in (conv, None)]
        jax1 = [r for r in rows if r["framework"] == "jax" and r["seeds"] == 1]
        torch_ = [r for r in rows if r["framework"] == "torch"]
        per_round = [j["img_per_s"] / t["img_per_s"] for j in jax1 for t in torch_ if j["round"] == t["round"]]
        cells.append(dict(model=model, size=size, dtype=dtype, batch_size=bs, conv=conv, jax_img_per_s=med(jax1),
                          torch_img_per_s=med(torch_), jax_over_torch=per_round,
                          jax_over_torch_median=_median(per_round) if per_round else None,
                          jax_step_s=_median([r["step_s"] for r in jax1]) if jax1 else None,
                          torch_step_s=_median([r["step_s"] for r in torch_]) if torch_ else None,
                          jax_compile_s=jax1[0]["compile_s"] if jax1 else None))
        for s, st in sorted({(r["seeds"], r.get("strategy_requested")) for r in rows if r["seeds"] > 1}):
            mr = [r for r in rows if r["seeds"] == s and r.get("strategy_requested") == st]
            vs_torch = [m["img_per_s"] / t["img_per_s"] for m in mr for t in torch_ if m["round"] == t["round"]]
            multi.append(dict(model=model, size=size, dtype=dtype, batch_size=bs, conv=conv, seeds=s, strategy=st,
                              resolved=mr[0]["strategy"], img_per_s=med(mr), step_s=_median([r["step_s"] for r in mr]),
                              compile_s=mr[0]["compile_s"], per_seed_vs_1=med(mr) / med(jax1) if jax1 else None,
                              per_seed_over_torch=_median(vs_torch) if vs_torch else None))
    by = {(c["model"], c["size"], c["dtype"], c["batch_size"], c["conv"]): c for c in cells}
    dtypes = []
    for (model, size, dtype, bs, conv), c in by.items():
        f = by.get((model, size, "float32", bs, "xla" if conv else None))  # against XLA's float32
        if dtype == "bfloat16" and f:
            dtypes.append(dict(model=model, size=size, batch_size=bs, conv=conv, **{
                fw: c[f"{fw}_img_per_s"] / f[f"{fw}_img_per_s"] if c[f"{fw}_img_per_s"] and f[f"{fw}_img_per_s"]
                else None for fw in ("jax", "torch")}))
    return dict(ratios=cells, bf16_over_f32=dtypes, multi_seed=multi, best=best_settings(step))


def _setting(r: dict) -> str:
    """How a row computed: dtype, and for JAX its convolutions' path and seeds in one program."""
    if r["framework"] == "torch":
        return "bfloat16 autocast" if r["dtype"] == "bfloat16" else r["dtype"]
    return (f"{r['dtype']}, {_conv(r)} conv" + (f", {r['seeds']} seeds {r['strategy']}" if r["seeds"] > 1 else ""))


def best_settings(step: list[dict]) -> list[dict]:
    """Per (model, size, batch): each framework's fastest setting (median img*seed/s over rounds), and per round the
    best JAX row over the best PyTorch row and over PyTorch float32's: the comparisons a side-by-side grid decides."""
    out = []
    for model, size, bs in sorted({(r["model"], r["size"], r["batch_size"]) for r in step},
                                  key=lambda k: (k[0], _size_key(k[1]), k[2])):
        rows = [r for r in step if (r["model"], r["size"], r["batch_size"]) == (model, size, bs)]
        by_setting: dict = {}
        for r in rows:
            by_setting.setdefault((r["framework"], _setting(r)), []).append(r)
        best = {}
        for fw in ("jax", "torch"):
            cands = [(med, name) for (f, name), rs in by_setting.items() if f == fw
                     for med in [_median([r["img_per_s"] for r in rs])]]
            best[fw] = max(cands) if cands else None
        if not best["jax"] or not best["torch"]:
            continue
        rounds = sorted({r["round"] for r in rows})

        def top(fw, rnd, pred=lambda r: True):
            xs = [r["img_per_s"] for r in rows if r["framework"] == fw and r["round"] == rnd and pred(r)]
            return max(xs) if xs else None

        def per_round(pred):
            rs = [(j, t) for rnd in rounds for j, t in [(top("jax", rnd), top("torch", rnd, pred))] if j and t]
            return [j / t for j, t in rs]

        vs_best = per_round(lambda r: True)
        vs_f32 = per_round(lambda r: r["dtype"] == "float32")
        out.append(dict(model=model, size=size, batch_size=bs, jax_best=best["jax"][1], jax_img_per_s=best["jax"][0],
                        torch_best=best["torch"][1], torch_img_per_s=best["torch"][0],
                        jax_over_torch_best=vs_best, jax_over_torch_best_median=_median(vs_best) if vs_best else None,
                        jax_over_torch_f32=vs_f32, jax_over_torch_f32_median=_median(vs_f32) if vs_f32 else None))
    return out


def computed_notes(res: dict, s: dict) -> list[str]:
    """Findings read off the rows of this file: nothing here is typed by hand."""
    notes, cells = [], [c for c in s["ratios"] if c["jax_over_torch_median"] is not None]
    for size, dtype, model, conv in sorted({(c["size"], c["dtype"], c["model"], c["conv"] or "") for c in cells},
                                           key=lambda k: (_size_key(k[0]), k[1], k[2], k[3])):
        cs = [c for c in cells if (c["size"], c["dtype"], c["model"], c["conv"] or "") == (size, dtype, model, conv)]
        best = max(cs, key=lambda c: c["jax_over_torch_median"])
        notes.append(f"Best {model} JAX/PyTorch ratio over batch sizes at {size} ({dtype}{', ' + conv + ' conv' if conv else ''}): "
                     f"**{best['jax_over_torch_median']:.2f}** at batch {best['batch_size']} ("
                     + ", ".join(f"b{c['batch_size']} {c['jax_over_torch_median']:.2f}" for c in cs) + ").")
    for size, model in sorted({(c["size"], c["model"]) for c in s["ratios"] if c["jax_img_per_s"]},
                              key=lambda k: (_size_key(k[0]), k[1])):
        cs = [c for c in s["ratios"] if (c["size"], c["model"]) == (size, model) and c["jax_img_per_s"]]
        top = max(cs, key=lambda c: c["jax_img_per_s"])
        notes.append(f"Fastest 1-seed JAX setting for {model} at {size}: {_cell_setting(top)} batch {top['batch_size']} "
                     f"({top['jax_img_per_s']:,.1f} img/s; the others " + ", ".join(
                         f"{_cell_setting(c, short=True)} b{c['batch_size']} {c['jax_img_per_s']:,.1f}" for c in cs if c is not top)
                     + ").")
    flags = set(res.get("cpu_flags") or [])
    have = ", ".join(f"{f}: {'yes' if f in flags else 'no'}" for f in ("avx512_bf16", "amx_bf16"))
    for size in sorted({d["size"] for d in s["bf16_over_f32"]}, key=_size_key):
        ds = [d for d in s["bf16_over_f32"] if d["size"] == size]
        bs = min(d["batch_size"] for d in ds)
        parts = [f"{name} " + ", ".join(f"{d['model']}{' (' + d['conv'] + ' conv)' if fw == 'jax' and d['conv'] else ''} "
                                        f"{d[fw]:.2f}x" for d in ds if d["batch_size"] == bs and d[fw])
                 for fw, name in (("jax", "JAX"), ("torch", "PyTorch"))
                 if any(d["batch_size"] == bs and d[fw] for d in ds)]
        notes.append(f"bfloat16 / float32 img/s at batch {bs}, {size}: {'; '.join(parts)} on this CPU ({have}).")
    spread = [(abs(r / c["jax_over_torch_median"] - 1), c) for c in cells for r in c["jax_over_torch"]
              if len(c["jax_over_torch"]) > 1]
    if spread:
        worst, c = max(spread, key=lambda t: t[0])
        notes.append(f"Round-to-round noise: per-round JAX/PyTorch ratios lie within {worst * 100:.0f} % of their "
                     f"cell's median (largest: {c['model']} {c['size']} {c['dtype']} b{c['batch_size']}, rounds "
                     + ", ".join(f"{r:.2f}" for r in c["jax_over_torch"]) + ").")
    for m in s["multi_seed"]:
        if m["per_seed_vs_1"] is not None:
            vs = m.get("per_seed_over_torch")
            notes.append(f"{m['seeds']} seeds at once ({m['resolved']}), {m['model']} {m['size']} "
                         f"{_cell_setting(m)} b{m['batch_size']}: {m['per_seed_vs_1']:.2f}x the per-seed speed of one seed"
                         + (f", {vs:.2f}x PyTorch's img/s (median of the rounds' ratios)." if vs else "."))
    def key_of(c):
        return c["model"], c["size"], c["dtype"], c["batch_size"], c["conv"] or ""

    for key in sorted({key_of(c) for c in cells}, key=lambda k: (k[0], _size_key(k[1]), k[2], k[3], k[4])):
        sides = [(c["jax_over_torch_median"], "1 seed") for c in cells if key_of(c) == key]
        sides += [(m["per_seed_over_torch"], f"{m['seeds']} seeds {m['resolved']}") for m in s["multi_seed"]
                  if key_of(m) == key and m.get("per_seed_over_torch")]
        if len(sides) > 1:
            ratio, how = max(sides)
            notes.append(f"Best per-seed JAX img/s over PyTorch's, {key[0]} {key[1]} {key[2]}"
                         f"{', ' + key[4] + ' conv' if key[4] else ''} b{key[3]}: **{ratio:.2f}x** ({how} in one program).")
    load = res.get("loadavg_start")
    threads = res.get("cpu_threads")
    if load and threads and load[0] > 0.25 * threads:
        notes.append(f"Other work shared the CPU: 1-minute load average {load[0]:.2f} at the start and "
                     f"{(res.get('loadavg_end') or [float('nan')])[0]:.2f} at the end, on {threads} threads; "
                     "compare the per-round ratios rather than single img/s figures.")
    if res.get("skipped"):
        notes.append(f"{len(res['skipped'])} runner(s) skipped by --max-step-seconds (section Skipped).")
    return notes


def _cell_setting(c: dict, short: bool = False) -> str:
    """A summarized cell's dtype, with the path of JAX's convolutions when the file records one."""
    dtype = _SHORT.get(c["dtype"], c["dtype"]) if short else c["dtype"]
    return f"{dtype} ({c['conv']} conv)" if c.get("conv") else dtype


def _seeds_text(seeds: int) -> str:
    return "1 seed" if seeds == 1 else f"{seeds} seeds (as training runs them on CPU: one after another)"


def xla_ab_section(ab: dict, title: str = "XLA:CPU settings side by side") -> list[str]:
    sides = list(ab.get("sides", {})) or ["xla_defaults", "bccd_jax"]
    lines = ["", f"## {title}", "",
             f"`{ab.get('command', 'python -m benchmarks.xla_cpu_ab')}` ({ab.get('date', '?')}), each side in fresh "
             f"processes, the order rotating every round, {_seeds_text(ab.get('seeds', 1))}, {ab.get('size', '120x160')} images, batch "
             f"{ab.get('batch_size', 32)}, median step. Sides: "
             + "; ".join(f"`{s}` = {ab['sides'][s]}" for s in sides if s in ab.get("sides", {})) + ".", ""]
    return lines + list(ab.get("table", []))


def layers_section(ly: dict) -> list[str]:
    """Per conv layer and op (forward, input gradient, kernel gradient): JAX and PyTorch ms and GFLOP/s; then
    the whole model's forward and forward+backward, and what the convolutions of a training step leave over."""
    b, k = ly["batch_size"], 3
    med = {(r["layer"], r["op"]): (_median(r["jax_s"]), _median(r["torch_s"])) for r in ly["rows"]}
    lines = ["", f"## Where the {ly['model']} CNN's step goes: each convolution, JAX vs PyTorch", "",
             f"`{ly['command']}` ({ly['date']}, {ly['machine']}; CPU flags: {', '.join(ly.get('cpu_flags') or []) or '-'}"
             f"; XLA_FLAGS `{ly.get('xla_flags') or '(none)'}`; PyTorch threads {ly.get('torch_threads')}): "
             f"{ly['size']} images, batch {b}, float32. Each op alone, JAX (jitted lax.conv_general_dilated and its "
             "VJPs, NHWC) then PyTorch (conv2d, aten.convolution_backward, NCHW) in every round; medians over rounds. "
             "dx: the gradient to the layer's input (the first layer needs none in training); dk: to its kernel, as "
             "bccd_jax's Conv layer computes it (bccd_jax/models/conv.py: in batch chunks on CPU); dk_xla: XLA's own "
             "kernel gradient, for reference (not part of the step), against the same PyTorch op.", "",
             "| conv | input HxWxC -> C | op | JAX ms | PyTorch ms | PyTorch/JAX time | JAX GFLOP/s | PyTorch GFLOP/s |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    def in_step(r) -> bool:  # a conv op a training step runs: all but the first layer's input gradient
        return r["layer"] is not None and r["op"] != "dk_xla" and not (r["op"] == "dx" and r["layer"] == 1)

    conv_sum = [0.0, 0.0]
    for r in ly["rows"]:
        if r["layer"] is None:
            continue
        h, w, ci, co = r["input"]
        flops = 2.0 * b * (h - k + 1) * (w - k + 1) * k * k * ci * co
        j, t = med[(r["layer"], r["op"])]
        if in_step(r):
            conv_sum[0] += j
            conv_sum[1] += t
        lines.append(f"| {r['layer']} | {h}x{w}x{ci} -> {co} | {r['op']} | {j * 1e3:,.1f} | {t * 1e3:,.1f} | "
                     f"{t / j:.2f} | {flops / j / 1e9:,.1f} | {flops / t / 1e9:,.1f} |")
    lines.append(f"| | all a training step runs (no dx of conv 1) | | {conv_sum[0] * 1e3:,.1f} | {conv_sum[1] * 1e3:,.1f} | "
                 f"{conv_sum[1] / conv_sum[0]:.2f} | | |")
    for op, label in (("model_fwd", "the model's forward + loss"), ("model_fwd_bwd", "forward + backward (no update)")):
        if (None, op) in med:
            j, t = med[(None, op)]
            lines.append(f"| | {label} | | {j * 1e3:,.1f} | {t * 1e3:,.1f} | {t / j:.2f} | | |")
    if (None, "model_fwd_bwd") in med:
        j, t = med[(None, "model_fwd_bwd")]
        by_share = sorted(((med[(r["layer"], r["op"])][0], r["layer"], r["op"]) for r in ly["rows"]
                           if in_step(r)), reverse=True)
        top = ", ".join(f"conv {layer} {op} {s / j:.0%}" for s, layer, op in by_share[:3])
        lines += ["", f"- The convolutions alone take {conv_sum[0] / j:.0%} of JAX's forward+backward "
                      f"({conv_sum[0] * 1e3:,.0f} of {j * 1e3:,.0f} ms) and {conv_sum[1] / t:.0%} of PyTorch's "
                      f"({conv_sum[1] * 1e3:,.0f} of {t * 1e3:,.0f} ms); the rest is bias, ReLU, pooling, dense layers "
                      "and the loss, plus what running the ops together costs or saves.",
                  f"- JAX's largest ops, as shares of its forward+backward: {top}."]
        by_op = {op: [sum(med[(r["layer"], r["op"])][i] for r in ly["rows"] if in_step(r) and r["op"] == op)
                      for i in (0, 1)] for op in ("fwd", "dx", "dk")}
        layer, op = max(((r["layer"], r["op"]) for r in ly["rows"] if in_step(r)),
                        key=lambda k: med[k][0] - med[k][1])
        lines.append("- By kind, JAX / PyTorch ms over the convolutions a step runs: "
                     + ", ".join(f"{kind} {j * 1e3:,.1f} / {t * 1e3:,.1f} ({t / j:.2f}x)" for kind, (j, t) in by_op.items())
                     + f". The largest gap is conv {layer} {op}: JAX {med[(layer, op)][0] * 1e3:,.1f} ms, PyTorch "
                     f"{med[(layer, op)][1] * 1e3:,.1f} ms.")
        xla_dk = [med[(r["layer"], "dk_xla")][0] for r in ly["rows"] if r["op"] == "dk_xla"]
        if xla_dk:
            lines.append(f"- The kernel gradients as bccd_jax computes them take {by_op['dk'][0] * 1e3:,.1f} ms in all; "
                         f"XLA's own would take {sum(xla_dk) * 1e3:,.1f} ms ({sum(xla_dk) / by_op['dk'][0]:.2f}x).")
    return lines


def vgg_cache_section(vc: dict) -> list[str]:
    hw = vc.get("hardware", {})
    lines = ["", "## VGG16: an epoch on cached features vs through the whole network", "",
             f"`{vc.get('command', 'python -m benchmarks.vgg_cache')}` ({vc.get('date', '?')}, {hw.get('cpu', '?')}, "
             f"{hw.get('cores', '?')} cores): one Adam step of the top on the frozen prefix's output vs the whole "
             f"VGG16 with the prefix frozen, timed back to back each round (median); an epoch is "
             f"{vc.get('train_images')} TRAIN images; filling the cache runs the prefix once over all "
             f"{vc.get('all_images')} images.", "",
             "| frozen | size | batch | whole network s/epoch | cached features s/epoch | ratio (per round) | "
             "filling the cache s |", "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for r in vc.get("rows", []):
        lines.append(f"| {r['policy']} | {r['size']} | {r['batch_size']} | {r['epoch_whole_s']:,.0f} | "
                     f"{r['epoch_cached_s']:,.0f} | " + ", ".join(f"{x:.2f}" for x in r["ratio_per_round"])
                     + f" | {r['fill_cache_s']:,.0f} |")
    return lines


def write_report(out_dir: Path) -> Path:
    """RESULTS.md of `out_dir` from the JSON files the benchmarks wrote there (those present)."""
    def load(name):
        p = out_dir / name
        return json.loads(p.read_text()) if p.exists() else None

    res, tta, ab = load("results.json"), load("time_to_accuracy.json"), load("xla_cpu_ab.json")
    vc, ly, od = load("vgg_cache.json"), load("layers.json"), load("onednn_ab.json")
    rf, malloc_ab, fa = load("roofline.json"), load("malloc_ab.json"), load("faults.json")
    ks = load("keras_step.json")
    lines = ["# bccd_jax training speed", "", "Generated by `python -m benchmarks.report` (which every benchmark calls after it "
             "saves) from the JSON files beside it; do not edit."]
    s = summarize(res) if res else None
    lines += what_moved_section(s["best"] if s else None, tta, ab, malloc_ab, od, rf)
    if res:
        lines += step_sections(res, s)
    if tta:
        lines += time_to_accuracy_section(tta)
    if ab:
        lines += xla_ab_section(ab)
    if malloc_ab:  # `python -m benchmarks.xla_cpu_ab --out benchmarks/malloc_ab.json --sides glibc_malloc_defaults bccd_jax`
        lines += xla_ab_section(malloc_ab, "glibc malloc: buffers faulted in every step, or reused (bccd_jax/_malloc.py)")
    if od:
        lines += onednn_ab_section(od)
    if rf:
        lines += roofline_section(rf)
    if ly:
        lines += layers_section(ly)
    if vc:
        lines += vgg_cache_section(vc)
    if fa:
        lines += faults_section(fa)
    if ks:
        lines += keras_step_section(ks)
    path = out_dir / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _compile_cache_section(cc: dict) -> list[str]:
    return ["", "### Persistent compilation cache", "",
            f"A 3-epoch fit of `base` (2 seeds, epoch_mode {cc['epoch_mode']}) in two fresh processes sharing one "
            "cache directory (bccd_jax.runtime.enable_compilation_cache); compile = JAX's own timings "
            "(jax.monitoring: tracing, lowering, XLA compile or cache retrieval):", "",
            f"- first process: compile {cc['first']['compile_s']:.2f} s, process {cc['first']['process_s']:.2f} s",
            f"- second process: compile {cc['second']['compile_s']:.2f} s, process {cc['second']['process_s']:.2f} s",
            f"- second/first compile time **{cc['compile_fraction'] * 100:.1f} %** (process "
            f"{cc['process_fraction'] * 100:.1f} %); {cc['cache_entries']} cache entries; identical numbers: "
            f"{cc['same_numbers']}"]


def roofline_section(rf: dict) -> list[str]:
    """The section of roofline.json: each step's FLOPs and bytes against the machine's measured limits."""
    lim = rf["limits"]
    lines = ["", "## The training step against this CPU's roofline", "",
             f"`{rf['command']}` ({rf['date']}, {rf['machine']}, load average at the end "
             f"{', '.join(f'{v:.1f}' for v in rf.get('loadavg_end') or [])}). Measured here: peak float32 "
             f"{lim['peak_flops'] / 1e9:.0f} GFLOP/s (a {lim['matmul_n']}^3 matmul), memory bandwidth "
             f"{lim['bandwidth'] / 1e9:.1f} GB/s (the faster of a {lim['stream_mb']} MB numpy copy, "
             f"{lim['numpy_copy_bandwidth'] / 1e9:.1f} GB/s, and a jitted elementwise pass, "
             f"{lim['jax_stream_bandwidth'] / 1e9:.1f} GB/s). FLOPs and bytes per step are XLA's cost analysis of the "
             "compiled one-seed train step (forward, backward, Adam); its bytes count every fusion's operands and "
             "results, as if nothing stayed in cache. Roofline time: max(FLOPs / peak, bytes / bandwidth); "
             "'of roofline' is that time over the measured step.", "",
             "| model | size | batch | params | GFLOP/step | MB/step | of which Adam | FLOP/byte | step ms | "
             "GFLOP/s | GB/s | bound | roofline ms | of roofline |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rf["rows"]:
        lines.append(f"| {r['model']} | {r['size']} | {r['batch_size']} | {r['params'] / 1e6:.2f} M | "
                     f"{r['flops'] / 1e9:.2f} | {r['bytes'] / 1e6:.0f} | {r['adam_bytes'] / 1e6:.0f} | "
                     f"{r['intensity']:.1f} | {r['step_s'] * 1e3:.1f} | {r['flops_per_s'] / 1e9:.1f} | "
                     f"{r['bytes_per_s'] / 1e9:.1f} | {r['bound']} | {r['roofline_s'] * 1e3:.1f} | "
                     f"{r['fraction']:.0%} |")
    return lines


def onednn_ab_section(od: dict) -> list[str]:
    """The section of onednn_ab.json."""
    return ["", "## Convolutions through oneDNN custom calls (bccd_jax.ext)", "",
            "A train step (MultiSeedTrainer.run_epoch, one seed) with `Conv`'s forward pass and gradients as "
            "oneDNN bfloat16 custom calls in a bfloat16 model (`onednn_bf16`) and in a float32 one (`onednn_mixed`, "
            "BCCD_JAX_CONV=onednn-bf16: only the convolutions in bfloat16, as PyTorch's autocast) against XLA's "
            "convolutions in float32 and bfloat16 and PyTorch eager, the sides interleaved in one process (medians over rounds; ratios are the measurement, "
            "absolute times depend on the machine's other load).", "", f"`{od['command']}` ({od['date']}, load "
            f"average at the end {', '.join(f'{v:.1f}' for v in od.get('loadavg_end') or [])})", ""] + od["table"]


def step_sections(res: dict, s: dict) -> list[str]:
    """The throughput sections of results.json; `s` is its summarize()."""
    commands = res["command"] if isinstance(res["command"], list) else [res["command"]]
    lines = ["", "## Throughput: JAX (MultiSeedTrainer.train_step) vs PyTorch eager", "",
             f"- command: {' and '.join(f'`{c}`' for c in commands)}",
             f"- machine: {res['machine']} (backend {res['backend']}, device {res['device']}); "
             f"CPU flags: {', '.join(res.get('cpu_flags') or []) or 'none of interest'}",
             f"- date: {res['date']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}",
             f"- XLA_FLAGS: `{res.get('xla_flags') or '(none)'}` (bccd_jax/_xla_env.py); PyTorch threads: "
             f"{', '.join(sorted({str(r['threads']) for r in res['rows'] if 'threads' in r})) or '-'}",
             f"- load average at start / end: {res.get('loadavg_start')} / {res.get('loadavg_end')}",
             "", "img/s: median over rounds of each round's median over repeats; per round: JAX img/s / PyTorch "
             "img/s measured back to back (JAX first); compile s: JAX's first step minus a warm step.", "",
             "| model | size | dtype | JAX conv | batch | JAX img/s | PyTorch img/s | JAX/PyTorch per round | "
             "JAX/PyTorch median | JAX step ms | PyTorch step ms | JAX compile s |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for c in s["ratios"]:
        lines.append(f"| {c['model']} | {c['size']} | {c['dtype']} | {c['conv'] or '-'} | {c['batch_size']} | "
                     f"{fmt(c['jax_img_per_s'])} | "
                     f"{fmt(c['torch_img_per_s'])} | {' '.join(f'{r:.2f}' for r in c['jax_over_torch']) or '-'} | "
                     f"**{fmt(c['jax_over_torch_median'], 2)}** | "
                     f"{fmt(c['jax_step_s'] and c['jax_step_s'] * 1e3)} | "
                     f"{fmt(c['torch_step_s'] and c['torch_step_s'] * 1e3)} | {fmt(c['jax_compile_s'], 2)} |")
    if s["best"]:
        lines += ["", "### Each side's fastest setting", "",
                  "img*seed/s, median over rounds, of the fastest setting (dtype, JAX's convolution path, seeds in one "
                  "program); the ratios are per round (the round's fastest JAX row over its fastest PyTorch row, and "
                  "over PyTorch float32's), then their median.", "",
                  "| model | size | batch | JAX fastest | JAX img*seed/s | PyTorch fastest | PyTorch img/s | "
                  "JAX / PyTorch fastest | JAX / PyTorch float32 |",
                  "| --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: |"]
        lines += [f"| {b['model']} | {b['size']} | {b['batch_size']} | {b['jax_best']} | {fmt(b['jax_img_per_s'])} | "
                  f"{b['torch_best']} | {fmt(b['torch_img_per_s'])} | **{fmt(b['jax_over_torch_best_median'], 2)}** | "
                  f"**{fmt(b['jax_over_torch_f32_median'], 2)}** |" for b in s["best"]]
    if s["bf16_over_f32"]:
        lines += ["", "### bfloat16 / float32 (img/s)", "",
                  "JAX: a bfloat16 model over the float32 model with XLA's convolutions.", "",
                  "| model | size | batch | JAX conv (bfloat16) | JAX | PyTorch |",
                  "| --- | --- | ---: | --- | ---: | ---: |"]
        lines += [f"| {d['model']} | {d['size']} | {d['batch_size']} | {d['conv'] or '-'} | {fmt(d['jax'], 2)} | "
                  f"{fmt(d['torch'], 2)} |" for d in s["bf16_over_f32"]]
    if s["multi_seed"]:
        lines += ["", "### Several seeds in one program (JAX)", "",
                  "vs 1 seed: img*seed/s over the 1-seed img/s of the same cell (>= 1: not slower than one by one).",
                  "", "| model | size | dtype | JAX conv | batch | seeds | strategy | img*seed/s | vs 1 seed | step ms | "
                  "compile s |",
                  "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {m['model']} | {m['size']} | {m['dtype']} | {m['conv'] or '-'} | {m['batch_size']} | {m['seeds']} | "
                  f"{m['strategy']}{'' if m['resolved'] == m['strategy'] else ' -> ' + m['resolved']} | {fmt(m['img_per_s'])} | {fmt(m['per_seed_vs_1'], 2)} | "
                  f"{fmt(m['step_s'] * 1e3)} | {fmt(m['compile_s'], 2)} |" for m in s["multi_seed"]]
    ep = [r for r in res["rows"] if r["kind"] == "epoch"]
    if ep:
        lines += ["", "### Epochs: scan vs loop (MultiSeedTrainer.run_epoch)", "",
                  "| model | size | batch | seeds | strategy | epoch_mode | images | epoch s | img/s | compile s |",
                  "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['model']} | {r.get('size', '120x160')} | {r['batch_size']} | {r['seeds']} | {r['strategy']} | "
                  f"{r['epoch_mode']} | {r['images']} | {fmt(r['epoch_s'], 2)} | {fmt(r['img_per_s'])} | "
                  f"{fmt(r['compile_s'], 2)} |" for r in ep]
    if res.get("compile_cache"):
        lines += _compile_cache_section(res["compile_cache"])
    if res.get("skipped"):
        lines += ["", "### Skipped", ""] + [f"- {x}" for x in res["skipped"]]
    notes = [f"- {n}" for n in computed_notes(res, s)]
    # hand notes: only those given with --note, shown with their command (older files' free-text notes stay in
    # their results.json)
    notes += [f"- {n['text']} (note given to `{n['command']}`)" for n in res.get("notes", []) if isinstance(n, dict)]
    return lines + (["", "### Notes", ""] + notes if notes else [])


def main(argv=None) -> int:
    from bccd_jax.errors import ArgumentParser

    p = ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=HERE, help="the folder of the JSON files (default benchmarks/)")
    print(write_report(p.parse_args(argv).out_dir))
    return 0


if __name__ == "__main__":
    from bccd_jax.errors import run_cli

    sys.exit(run_cli(main))
