"""benchmarks.bench times bccd_jax alone where PyTorch is not installed."""

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
