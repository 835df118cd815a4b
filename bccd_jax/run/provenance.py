"""Where a number comes from: the machine, the software versions, the commit and the command line."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DATA_DIR_PLACEHOLDER = "$BCCD_DATA_DIR"
"""How a recorded command names the data folder it was given (a path of one machine is not recorded)."""


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


def cpu_flags(names: Sequence[str] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")) -> list[str]:
    """Which of `names` the host CPU advertises in /proc/cpuinfo (empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [n for n in names if n in have]
    except OSError:
        pass
    return []


def hardware() -> dict[str, Any]:
    """The machine a number was measured on."""
    import jax

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()]}


def versions() -> dict[str, str]:
    """Versions of everything that can change a number."""
    import flax
    import jax
    import jaxlib
    import optax
    import orbax.checkpoint

    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "orbax_checkpoint": orbax.checkpoint.__version__,
            "numpy": np.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "platform": platform.platform(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), **conv_provenance()}


def conv_provenance() -> dict[str, str]:
    """The convolution path's switch ($BCCD_JAX_CONV) and the oneDNN extension's file name, when one is built
    (the name only: a results file says which library ran, not where a machine keeps it)."""
    from bccd_jax.ext import onednn

    out = {"conv_env": os.environ.get("BCCD_JAX_CONV", "")}
    if onednn.library_path().is_file():
        out["onednn_extension"] = onednn.library_path().name + ("" if onednn.available() else " (not loadable)")
    return out


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


def _relative(arg: str) -> str:
    """An absolute path under the current directory as a relative one (a record names no folder of the machine
    it ran on); any other argument as it is."""
    if not arg.startswith("/"):
        return arg
    try:
        return str(Path(arg).relative_to(Path.cwd()))
    except ValueError:
        return arg


def command_line(argv: Sequence[str] | None = None, module: str | None = None) -> str:
    """The command as typed (`python -m pkg.mod ...` for modules), with the data folder as $BCCD_DATA_DIR and
    absolute paths under the current directory made relative.

    `argv` and `module` describe a command run from inside another (the study runs each experiment
    in-process: its run folder records `python -m experiments.<name> <its flags>`)."""
    argv = [_relative(a) for a in (sys.argv[1:] if argv is None else argv)]
    for i, a in enumerate(argv):
        if a == "--data-dir" and i + 1 < len(argv):
            argv[i + 1] = DATA_DIR_PLACEHOLDER
        elif a.startswith("--data-dir="):
            argv[i] = f"--data-dir={DATA_DIR_PLACEHOLDER}"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if module is not None:
        head = ["-m", module]
    else:
        head = ["-m", spec.name] if spec is not None and spec.name else [Path(sys.argv[0]).name]
    return " ".join([Path(sys.executable).name, *head, *(a if a == DATA_DIR_PLACEHOLDER else shlex.quote(a)
                                                         for a in argv)])
