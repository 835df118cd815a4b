"""benchmarks.bench times bccd_jax alone where PyTorch is not installed; benchmarks.roofline counts a step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NO_TORCH = """
import runpy, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["benchmarks.bench"] + sys.argv[1:]
runpy.run_module("benchmarks.bench", run_name="__main__")
"""


def test_bench_runs_jax_alone_without_torch(tmp_path):
    args = ["--frameworks", "jax", "--models", "base", "--sizes", "24x32", "--batch-sizes", "8", "--dtypes",
            "float32", "--rounds", "1", "--steps", "1", "--repeats", "1", "--min-seconds", "0", "--images", "16",
            "--out-dir", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows and {r["framework"] for r in rows} == {"jax"}
    assert all(r["img_per_s"] > 0 for r in rows)
    assert (tmp_path / "RESULTS.md").is_file()


def test_roofline_counts_a_steps_flops_and_adams_bytes(tmp_path):
    """XLA's FLOPs of a base-CNN train step lie near the convolutions' and dense layers' own count (forward 2 FLOPs
    per multiply-add, backward twice that, less the first layer's input gradient) plus Adam's few per parameter,
    Adam's bytes are 7 float32 per parameter, and RESULTS.md gets the section."""
    from benchmarks import roofline
    from benchmarks.bench import model_config
    from benchmarks.layers import conv_shapes
    from bccd_jax.models.cnn import feature_map_size

    hw, batch = (24, 32), 4
    res = roofline.main(["--models", "base", "--sizes", "24x32", "--batch-sizes", str(batch), "--calls", "1",
                         "--matmul-n", "128", "--stream-mb", "8", "--out-dir", str(tmp_path)])
    (row,) = res["rows"]
    cfg = model_config("base")
    convs = [(h - 2) * (w - 2) * cin * cout * 9 for h, w, cin, cout in conv_shapes(cfg, hw)]
    fh, fw = feature_map_size(cfg, hw)
    dense = [fh * fw * cfg.conv_blocks[-1][-1] * cfg.dense_features, cfg.dense_features * cfg.num_classes]
    macs = batch * (sum(convs) + sum(dense))
    expected = 6 * macs - 2 * batch * convs[0]
    assert 0.9 * expected <= row["flops"] <= 1.1 * expected + 20 * row["params"], (row["flops"], expected)
    assert row["adam_bytes"] == 28 * row["params"] and row["bytes"] > row["adam_bytes"]
    assert row["bound"] in ("memory", "compute") and 0 < row["fraction"] and row["step_s"] > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## The training step against this CPU's roofline" in text and "| base | 24x32 | 4 |" in text


def test_report_compares_several_seeds_in_one_program_with_pytorch():
    """The best per-seed speed counts several seeds in one program, each round's ratio against the same round's
    PyTorch row."""
    from benchmarks.report import computed_notes, summarize

    def row(framework, seeds, img_per_s, rnd):
        return dict(kind="step", model="base", size="60x80", dtype="float32", batch_size=32, framework=framework,
                    seeds=seeds, img_per_s=img_per_s, step_s=32 / img_per_s, compile_s=1.0, round=rnd,
                    strategy="unroll" if seeds > 1 else "single", strategy_requested="unroll" if seeds > 1 else None)

    res = {"rows": [row("torch", 1, 100.0, 0), row("jax", 1, 130.0, 0), row("jax", 3, 170.0, 0),
                    row("torch", 1, 200.0, 1), row("jax", 1, 260.0, 1), row("jax", 3, 320.0, 1)]}
    notes = computed_notes(res, summarize(res))
    assert any("3 seeds at once (unroll)" in n and "1.65x PyTorch's img/s" in n for n in notes), notes
    best = ("Best per-seed JAX img/s over PyTorch's, base 60x80 float32, xla conv b32: **1.65x** (3 seeds unroll in "
            "one program).")
    assert best in notes, notes


def test_report_keeps_convolution_paths_apart_and_finds_each_sides_fastest():
    """JAX rows with XLA's and with oneDNN's bfloat16 convolutions (`--conv xla onednn-bf16`) are separate cells,
    each against the same PyTorch rows; the fastest-setting table compares each round's fastest rows."""
    from benchmarks.report import summarize

    def row(framework, dtype, img_per_s, rnd, conv=None):
        return dict(kind="step", model="deep", size="60x80", dtype=dtype, batch_size=32, framework=framework, seeds=1,
                    img_per_s=img_per_s, step_s=32 / img_per_s, compile_s=1.0, round=rnd, strategy="single",
                    strategy_requested=None, **({"conv": conv} if conv else {}))

    res = {"rows": [row("torch", "float32", 100.0, 0), row("torch", "bfloat16", 150.0, 0),
                    row("jax", "float32", 130.0, 0, "xla"), row("jax", "float32", 180.0, 0, "onednn-bf16"),
                    row("torch", "float32", 110.0, 1), row("torch", "bfloat16", 140.0, 1),
                    row("jax", "float32", 120.0, 1, "xla"), row("jax", "float32", 170.0, 1, "onednn-bf16")]}
    s = summarize(res)
    f32 = {c["conv"]: c for c in s["ratios"] if c["dtype"] == "float32"}
    assert f32["xla"]["jax_img_per_s"] == 125.0 and f32["onednn-bf16"]["jax_img_per_s"] == 175.0
    assert f32["onednn-bf16"]["jax_over_torch"] == [1.8, 170.0 / 110.0]
    (b,) = s["best"]
    assert b["jax_best"] == "float32, onednn-bf16 conv" and b["torch_best"] == "bfloat16 autocast"
    assert b["jax_over_torch_best"] == [180.0 / 150.0, 170.0 / 140.0]
    assert b["jax_over_torch_f32_median"] == (1.8 + 170.0 / 110.0) / 2


def test_what_moved_quotes_the_files_and_leaves_out_what_none_measured():
    from benchmarks.moved_section import what_moved_section

    malloc_ab = {"summary": {"base": {"glibc_malloc_defaults": 0.047, "bccd_jax": 0.031,
                                      "glibc_malloc_defaults_minor_faults_per_step": 12421.0,
                                      "bccd_jax_minor_faults_per_step": 251.0}}}
    tta = {"precision": {"jax": "onednn-bf16", "torch": "bfloat16"}, "by_seed": {"0": {}}, "summary": {
        "targets": {"0.80": {"jax_median_s": 95.2, "torch_median_s": None}},
        "budgets": {"120": {"jax_median_acc": 0.812, "torch_median_acc": 0.801}}}}
    text = "\n".join(what_moved_section(None, tta, None, malloc_ab, None, None))
    assert "base 47 ms -> 31 ms (12,421 -> 251 page faults)" in text
    assert "0.80: 95 s against never" in text and "120 s: 0.812 against 0.801" in text
    assert "bccd_jax onednn-bf16, PyTorch bfloat16" in text
    # no XLA flag A/B, oneDNN A/B or roofline file: their bullets are left out, not filled with figures
    assert "YNNPACK" not in text and "oneDNN custom calls" not in text and "roofline" not in text
    # onednn_ab.json's rows: the median over rounds of each size and side, in the order the benchmark ran the sizes
    od = {"rows": [{"size": z, "side": side, "round": k, "step_s": t} for z, side, k, t in (
        ("120x160", "xla_f32", 0, 0.30), ("120x160", "onednn_mixed", 0, 0.20), ("120x160", "xla_f32", 1, 0.34),
        ("120x160", "onednn_mixed", 1, 0.22), ("120x160", "xla_f32", 2, 0.31), ("120x160", "onednn_mixed", 2, 0.90),
        ("60x80", "xla_f32", 0, 0.08), ("60x80", "onednn_mixed", 0, 0.05), ("60x80", "torch_bf16", 0, 0.06))]}
    text = "\n".join(what_moved_section(None, None, None, None, od, None))
    assert "deep CNN step 120x160 310 ms -> 220 ms; 60x80 80 ms -> 50 ms (PyTorch bfloat16 autocast 60 ms)" in text
