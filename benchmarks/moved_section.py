"""RESULTS.md's opening section: what made bccd_jax's CPU step faster, each change with the measurement that shows it.

Every figure is read from the benchmark files (results.json, malloc_ab.json, xla_cpu_ab.json, onednn_ab.json,
roofline.json, time_to_accuracy.json); a change whose file is absent is left out, so the section never quotes a
number no command made. The reasons are the mechanisms the library's modules document.
"""

from __future__ import annotations

import statistics

from benchmarks.tta_section import summary_of


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f} ms"


def _best_line(best: list[dict], model: str, size: str) -> str | None:
    b = next((b for b in best if (b["model"], b["size"], b["batch_size"]) == (model, size, 32)), None)
    if not b or b["jax_over_torch_f32_median"] is None:
        return None
    return (f"{model} CNN, {size}, batch 32: bccd_jax's fastest setting ({b['jax_best']}) trains "
            f"{b['jax_img_per_s']:,.0f} img*seed/s, **{b['jax_over_torch_f32_median']:.2f}x** PyTorch "
            f"float32's and **{b['jax_over_torch_best_median']:.2f}x** PyTorch's fastest ({b['torch_best']}), "
            "medians of per-round ratios (section 'Each side's fastest setting').")


def onednn_medians(rows: list[dict]) -> dict[tuple[str, str], float]:
    """(size, side) -> median step seconds over rounds of benchmarks.onednn_ab's rows: its table and this section
    read the same figures."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["size"], r["side"]), []).append(r["step_s"])
    return {k: statistics.median(v) for k, v in by.items()}


def what_moved_section(best: list[dict] | None, tta: dict | None, ab: dict | None, malloc_ab: dict | None,
                       od: dict | None, rf: dict | None) -> list[str]:
    """`best` is benchmarks.report.best_settings of results.json's step rows; the others are the loaded files."""
    lines = ["", "## What moved and why", ""]
    for model, size in (("base", "60x80"), ("base", "120x160"), ("deep", "60x80"), ("deep", "120x160")):
        line = _best_line(best or [], model, size)
        if line:
            lines.append(f"- {line}")
    if malloc_ab:
        s = malloc_ab["summary"]
        parts = [f"{m} {_ms(s[m]['glibc_malloc_defaults'])} -> {_ms(s[m]['bccd_jax'])} "
                 f"({s[m]['glibc_malloc_defaults_minor_faults_per_step']:,.0f} -> "
                 f"{s[m]['bccd_jax_minor_faults_per_step']:,.0f} page faults)" for m in ("base", "deep") if m in s]
        lines.append("- **Buffers reused, not faulted in.** XLA:CPU allocates each step's temporaries with malloc; "
                     "glibc serves blocks this large with mmap and unmaps them on free, so every step faulted its "
                     "buffers in anew. bccd_jax/_malloc.py turns glibc's mmap and heap trimming off (mallopt) before "
                     "JAX starts its threads, so freed buffers come back from the heap: one-seed step "
                     + "; ".join(parts) + " (section 'glibc malloc').")
    if ab:
        s = ab["summary"].get("deep")
        if s and "xla_defaults" in s:
            lines.append("- **XLA:CPU's YNNPACK fusions off.** jaxlib 0.10 routes CPU convolutions and their weight "
                         "gradients through YNNPACK fusions by default, slower here than XLA's own; "
                         "bccd_jax/_xla_env.py turns them off "
                         f"(`--xla_cpu_experimental_ynn_fusion_type=`): deep CNN step {_ms(s['xla_defaults'])} -> "
                         f"{_ms(s['bccd_jax'])} (section 'XLA:CPU settings side by side').")
    if od:
        med = onednn_medians(od.get("rows") or [])
        sizes = [z for z in dict.fromkeys(r["size"] for r in od.get("rows") or [])  # the order the benchmark ran them
                 if (z, "xla_f32") in med and (z, "onednn_mixed") in med]
        parts = [f"{size} {_ms(med[(size, 'xla_f32')])} -> {_ms(med[(size, 'onednn_mixed')])}"
                 + (f" (PyTorch bfloat16 autocast {_ms(med[(size, 'torch_bf16')])})"
                    if (size, "torch_bf16") in med else "") for size in sizes]
        lines.append("- **bfloat16 convolutions through oneDNN.** XLA:CPU has no bfloat16 convolution: it computes "
                     "them in float32 and converts around them, so a bfloat16 model got slower. bccd_jax.ext runs a "
                     "convolution's forward pass and both gradients as oneDNN custom calls in bfloat16 with float32 "
                     "accumulation, the rest of the step and the weights staying float32 (BCCD_JAX_CONV=onednn-bf16, "
                     "as PyTorch's autocast): deep CNN step " + "; ".join(parts)
                     + " (section 'Convolutions through oneDNN custom calls').")
    lines.append("- **Pooling and bias in one pass; seeds in one program.** A convolution block ends in "
                 "max_pool_relu (bccd_jax/models/pool.py): the 2x2 pool, then the bias and ReLU on a quarter of the "
                 "elements; its backward pass routes each gradient to its window's maximum in one elementwise "
                 "pass, keeping one byte per pooled value instead of a copy of the activations; "
                 "several seeds unrolled in one compiled step share its dispatch (section 'Several seeds in one "
                 "program').")
    if rf:
        parts = [f"{r['model']} {r['size']} {r['fraction']:.0%} ({r['bound']}-bound, {r['bytes'] / 1e6:,.0f} MB and "
                 f"{r['flops'] / 1e9:.2f} GFLOP per step)" for r in rf["rows"]]
        lines.append("- **What is left.** Against this CPU's measured bandwidth and peak, the float32 steps run at "
                     + "; ".join(parts)
                     + " of their roofline (section 'The training step against this CPU's roofline').")
    if tta and tta.get("by_seed"):
        s = summary_of(tta)

        def sec(x):
            return f"{x:.0f} s" if x is not None else "never (the median seed did not get there)"

        def acc(x):
            return f"{x:.3f}" if x is not None else "none (the median seed had no evaluation yet)"

        t = [f"{k}: {sec(v.get('jax_median_s'))} against {sec(v.get('torch_median_s'))}"
             for k, v in s["targets"].items()]
        b = [f"{k} s: {acc(v.get('jax_median_acc'))} against {acc(v.get('torch_median_acc'))}"
             for k, v in s["budgets"].items()]
        prec = tta.get("precision")
        arithmetic = (f"bccd_jax {prec['jax']}, PyTorch {prec['torch']}" if isinstance(prec, dict)
                      else "both sides in float32")
        said = ((["wall time to TEST " + "; ".join(t)] if t else [])
                + (["TEST accuracy after " + "; ".join(b)] if b else []))
        if said:
            lines.append(f"- **The race.** The deep recipe, {arithmetic}, medians over "
                         f"{len(tta['by_seed'])} seeds, bccd_jax against PyTorch: " + "; ".join(said)
                         + " (section 'Time to TEST accuracy').")
    return lines
