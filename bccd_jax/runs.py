"""Self-describing run folders: what was run, on what data, with which code.

    <out>/<experiment>/<timestamp>/
        config.json    every setting, versions, git commit, data fingerprint, command line
        metrics.json   per variant: per-seed per-epoch history and final evaluation statistics
        metrics.csv    the same history in long form (variant, seed, epoch, metric columns)
        figures/*.png  2x2 learning curves (mean and band over seeds), confusion matrices
        checkpoints/<variant>/<epoch>/   Orbax checkpoints (state + JSON meta)
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from bccd_jax.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
METRICS_CSV = "metrics.csv"


def timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def cpu_model() -> str:
    """The host CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Versions of everything that can change a number."""
    import flax
    import jax
    import jaxlib
    import numpy
    import optax
    import orbax.checkpoint

    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "orbax_checkpoint": orbax.checkpoint.__version__,
            "numpy": numpy.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "platform": platform.platform()}


def git_commit() -> str | None:
    """HEAD of the repository holding this package, with '-dirty' when it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line() -> str:
    """The command as typed: `python -m pkg.mod ...` for modules (sys.argv[0] is then the file path)."""
    import shlex

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["-m", spec.name] if spec is not None and spec.name else [sys.argv[0]]
    return shlex.join([Path(sys.executable).name, *head, *sys.argv[1:]])


def new_run_dir(out_root: str | Path, experiment: str) -> Path:
    """A fresh <out_root>/<experiment>/<timestamp>[-k]/ folder."""
    base = Path(out_root) / experiment
    base.mkdir(parents=True, exist_ok=True)
    stamp = timestamp()
    path, k = base / stamp, 1
    while path.exists():
        k += 1
        path = base / f"{stamp}-{k}"
    path.mkdir()
    return path


def latest_run_dir(out_root: str | Path, experiment: str) -> Path:
    base = Path(out_root) / experiment
    runs = sorted(p for p in base.glob("*") if (p / CONFIG_FILE).exists()) if base.exists() else []
    if not runs:
        raise UserError(f"no run of {experiment!r} under {base} to resume; run without --resume first")
    return runs[-1]


def write_json(path: str | Path, obj: Any) -> None:
    """Write atomically (temp file + rename) so a killed process never leaves half a JSON file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")
    os.replace(tmp, path)


def _default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; is this a bccd_jax run folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the run folder is damaged") from e


def read_run(run_dir: str | Path) -> tuple[dict, dict]:
    """(config, metrics) of a run folder; metrics is {} while nothing has finished."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass a folder written by an experiment")
    config = read_json(run_dir / CONFIG_FILE)
    metrics = read_json(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).exists() else {}
    return config, metrics


def write_metrics_csv(path: str | Path, metrics: Mapping[str, Mapping[str, Any]]) -> None:
    """Long-form history: one row per (variant, seed, epoch)."""
    rows, columns = [], ["variant", "seed", "epoch"]
    for variant, m in metrics.items():
        hist, seeds = m["history"], m["seeds"]
        names = [k for k in hist if k != "epoch"]
        for c in names:
            if c not in columns:
                columns.append(c)
        for e, epoch in enumerate(hist["epoch"]):
            for s, seed in enumerate(seeds):
                rows.append({"variant": variant, "seed": seed, "epoch": epoch,
                             **{c: hist[c][e][s] for c in names}})
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
