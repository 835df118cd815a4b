"""Ctrl-C during an experiment saves a checkpoint and exits 130; --resume then reaches the uninterrupted numbers.

Three subprocesses of the same command share the test run's XLA compile cache and a data cache:
an uninterrupted run, a run sent SIGINT after its first epoch line, and its --resume. Resuming
with another config or image size is refused (one line, exit 2, config.json untouched) unless --force.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cache_env

ROOT = Path(__file__).resolve().parents[1]

ARGS = ["--variants", "adam", "--epochs", "4", "--seeds", "2", "--image-size", "24", "32", "--no-progress",
        "--no-figures"]


def experiment(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.optimizers", *ARGS, "--out", str(out), *extra]


class Watched:
    """A subprocess whose stderr lines are collected by a thread; `wait_for` blocks until a line matches."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append(None)  # EOF marker
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(ln is not None and text in ln for ln in self.lines):
                    return True
                if None in self.lines or time.monotonic() > deadline:
                    return False
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))

    def finish(self, timeout: float = 600) -> tuple[int, str, str]:
        stdout = self.proc.stdout.read()
        rc = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=10)
        return rc, stdout, "".join(ln for ln in self.lines if ln is not None)


def run_dir_of(out: Path) -> Path:
    (run,) = (out / "optimizers").iterdir()
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    env = cache_env(tmp_path_factory.getbasetemp())
    tmp = tmp_path_factory.mktemp("interrupt")
    res: dict = {}
    full = Watched(experiment(tmp / "full"), env)
    # start the interrupted one once the data set is built/cached (no two builds of the same set at once)
    assert full.wait_for("run folder:"), "".join(ln or "" for ln in full.lines)
    t0 = time.monotonic()
    inter = Watched(experiment(tmp / "inter"), env)
    assert inter.wait_for("adam epoch 1/4"), "".join(ln or "" for ln in inter.lines)
    inter.proc.send_signal(signal.SIGINT)
    res["interrupted"] = inter.finish()
    res["interrupt_s"] = time.monotonic() - t0
    run = run_dir_of(tmp / "inter")
    res["run"] = run
    res["ckpt_after_interrupt"] = sorted(p.name for p in (run / "checkpoints" / "adam").iterdir())
    res["metrics_after_interrupt"] = json.loads((run / "metrics.json").read_text())
    config_before = (run / "config.json").read_text()

    def refused(*extra):
        r = subprocess.run(experiment(tmp / "inter", "--resume", str(run), *extra), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        return r, (run / "config.json").read_text() == config_before

    res["refused_dropout"] = refused("--set", "dropout=0.3")
    res["refused_size"] = refused("--image-size", "24", "40")  # argparse: the last --image-size wins
    res["resumed"] = Watched(experiment(tmp / "inter", "--resume", str(run)), env).finish()
    res["full"] = full.finish()
    res["full_run"] = run_dir_of(tmp / "full")
    return res


def test_sigint_saves_checkpoint_and_exits_130(runs):
    rc, _, stderr = runs["interrupted"]
    assert rc == 130, stderr
    assert "Traceback" not in stderr
    assert "SIGINT: saving a checkpoint after this epoch" in stderr
    assert f"--resume {runs['run']}" in stderr
    saved = [int(e) for e in runs["ckpt_after_interrupt"]]
    assert len(saved) == 1 and 1 <= saved[0] < 4, saved  # stopped after the epoch in flight, before the end
    m = runs["metrics_after_interrupt"]["adam"]
    assert m["incomplete"] is True and m["history"]["epoch"] == list(range(1, saved[0] + 1))


@pytest.mark.parametrize("case,words", [("refused_dropout", ["dropout 0.0 -> 0.3", "--force"]),
                                        ("refused_size", ["24x32", "24x40", "--force"])])
def test_resume_with_other_settings_is_refused(runs, case, words):
    r, config_untouched = runs[case]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: cannot resume"), r.stderr
    for w in words:
        assert w in lines[0]
    assert config_untouched


def test_resume_reaches_uninterrupted_numbers(runs):
    rc, _, stderr = runs["resumed"]
    assert rc == 0, stderr
    assert f"resumed from {runs['run']}/checkpoints/adam at epoch {runs['ckpt_after_interrupt'][0]}" in stderr
    rc_full, _, stderr_full = runs["full"]
    assert rc_full == 0, stderr_full
    got = json.loads((runs["run"] / "metrics.json").read_text())["adam"]
    want = json.loads((runs["full_run"] / "metrics.json").read_text())["adam"]
    assert "incomplete" not in got
    assert got["history"]["epoch"] == want["history"]["epoch"] == [1, 2, 3, 4]
    for key in want["history"]:
        np.testing.assert_allclose(got["history"][key], want["history"][key], rtol=1e-5, atol=1e-6, err_msg=key)
    for key in ("test_acc_final_mean", "test_acc_best_mean", "train_acc_final_mean"):
        assert got[key] == pytest.approx(want[key], abs=1e-6)


def test_run_folder_is_self_describing(runs):
    cfg = json.loads((runs["run"] / "config.json").read_text())
    for key in ("command", "git_commit", "versions", "hardware", "data", "variants", "created", "protocol"):
        assert key in cfg, key
    assert cfg["command"].startswith("python") and "-m experiments.optimizers" in cfg["command"]
    assert "--resume" in cfg["command"]  # the latest invocation...
    assert "--resume" not in cfg["previous_commands"][0]  # ...and the one that started the run
    assert len(cfg["resumed_from"]) == 1
    assert len(cfg["data"]["fingerprint"]) == 64 and cfg["data"]["image_shape"] == [24, 32, 3]
    for key in ("jax", "jaxlib", "flax", "optax", "orbax_checkpoint", "numpy", "python", "backend"):
        assert key in cfg["versions"]
    v = cfg["variants"]["adam"]
    assert v["seeds"] == [0, 1] and v["train"]["epochs"] == 4 and v["model"]["arch"] == "base"


def test_a_finished_variant_without_checkpoints_is_kept_on_resume(runs, tmp_path):
    """A run folder committed without its checkpoints resumes without retraining what it finished."""
    import shutil

    run = tmp_path / "optimizers" / runs["full_run"].name
    shutil.copytree(runs["full_run"], run, ignore=shutil.ignore_patterns("checkpoints"))
    before = (run / "metrics.json").read_text()
    r = subprocess.run(experiment(tmp_path, "--resume", str(run)), cwd=ROOT, env=cache_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"adam: finished in {run}, kept" in r.stderr and "epoch 1/4" not in r.stderr
    assert json.loads((run / "metrics.json").read_text()) == json.loads(before)
    assert not (run / "checkpoints" / "adam").exists() or not any((run / "checkpoints" / "adam").iterdir())
