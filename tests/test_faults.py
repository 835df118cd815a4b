"""Faults a long run meets, injected into real runs: a damaged checkpoint, a full disk, a second writer, kill -9
between steps and during a save, `--seeds` against a protocol's seed count, a truncated training image.

Every run is the optimizers experiment's Adam (2 seeds, 4 epochs at 24x32 on the embedded originals, a checkpoint
every epoch); one uninterrupted run is the reference that every resumed run must equal bit for bit (metrics.json
without wall times, and metrics.csv: benchmarks.faults.comparable). Faults are injected where the process meets
the operating system (`python -m benchmarks.faults inject`: a file opened for writing fails with ENOSPC, or holds
the process there). Every fault ends in one line, its exit code, and no traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.faults import Child, comparable
from bccd_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--variants", "adam", "--epochs", "4", "--seeds", "2", "--image-size", "24", "32", "--checkpoint-every", "1",
        "--no-progress", "--no-figures"]
TMP = ".orbax-checkpoint-tmp"


def train_cmd(out: Path, *extra: str, inject: tuple[str, ...] | None = None) -> list[str]:
    """The run's command; with `inject`, under `python -m benchmarks.faults inject <inject> --`."""
    head = [sys.executable, "-m", "experiments.optimizers"] if inject is None else \
        [sys.executable, "-m", "benchmarks.faults", "inject", *inject, "--", "experiments.optimizers"]
    return [*head, *ARGS, "--out", str(out), *map(str, extra)]


def run(cmd: list[str], env) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def the_error(stderr: str, rc: int, want_rc: int = 2) -> str:
    """The one `error:` line of a failed command (no traceback)."""
    assert rc == want_rc, stderr
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def run_dir(out: Path) -> Path:
    (found,) = (out / "optimizers").iterdir()
    return found


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints" / "adam").iterdir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("faults_reference")
    r = run(train_cmd(out), env)
    assert r.returncode == 0, r.stderr
    return run_dir(out)


def copy_run(reference: Path, tmp_path: Path, keep_metrics: bool = False) -> Path:
    """The reference run folder copied, as a run killed after its last checkpoint and before its metrics (or not)."""
    run_ = tmp_path / "optimizers" / reference.name
    shutil.copytree(reference, run_)
    if not keep_metrics:
        for name in ("metrics.json", "metrics.csv"):
            (run_ / name).unlink()
    return run_


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


DAMAGE = {  # how a checkpoint is damaged, and a word of the warning that names why
    "truncated": (lambda ck: truncate(largest_file(ck / "state")), "OUT_OF_RANGE"),
    "missing_file": (lambda ck: largest_file(ck / "state").unlink(), "its state does not read"),
    "garbage_metadata": (lambda ck: (ck / "meta" / "metadata").write_bytes(b"\x00garbage{"), "its meta does not read"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_skips_a_damaged_checkpoint(reference, tmp_path, env, damage):
    """The newest checkpoint damaged: one warning naming it and why, the resume starts from the one before, and the
    run ends where the uninterrupted one did."""
    run_ = copy_run(reference, tmp_path)
    spoil, why = DAMAGE[damage]
    spoil(run_ / "checkpoints" / "adam" / "4")
    r = run(train_cmd(tmp_path, "--resume", run_), env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    (warning,) = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert f"skipped checkpoint {run_}/checkpoints/adam/4, it is damaged" in warning and why in warning, warning
    assert f"resumed from {run_}/checkpoints/adam at epoch 3" in r.stderr
    assert comparable(run_) == comparable(reference)
    assert checkpoints(run_) == ["2", "3", "4", "4.damaged"]  # set aside, not deleted


def test_resume_with_no_checkpoint_that_reads_is_one_line(reference, tmp_path, env):
    run_ = copy_run(reference, tmp_path)
    for epoch in ("2", "3", "4"):
        (run_ / "checkpoints" / "adam" / epoch / "meta" / "metadata").write_text("{not json")
    r = run(train_cmd(tmp_path, "--resume", run_), env)
    line = the_error(r.stderr, r.returncode)
    assert f"no checkpoint in {run_}/checkpoints/adam reads (epochs 4, 3, 2: its meta does not read" in line, line
    assert "without --resume" in line
    assert checkpoints(run_) == ["2", "3", "4"]  # left as they were


@pytest.mark.parametrize("command", ["predict", "ship"])
def test_reading_a_damaged_checkpoint_is_one_line(reference, tmp_path, env, command):
    run_ = copy_run(reference, tmp_path, keep_metrics=True)
    truncate(largest_file(run_ / "checkpoints" / "adam" / "4" / "state"))
    cmd = [sys.executable, "-m", "bccd_jax.predict", str(ROOT / "data/BCCD/JPEGImages/BloodImage_00000.jpg"),
           "--run", str(run_)] if command == "predict" else \
        [sys.executable, "-m", "experiments.ship", "--run", str(run_), "--out", str(tmp_path / "model")]
    r = run(cmd, env)
    line = the_error(r.stderr, r.returncode)
    assert f"checkpoint {run_}/checkpoints/adam/4 is damaged: its state does not read (OUT_OF_RANGE" in line, line
    assert "other checkpoints are of epochs 2, 3" in line


@pytest.fixture(scope="module")
def full_disk(reference, tmp_path_factory, env) -> dict:
    """A run whose disk is full at its third checkpoint; resumed, full again at metrics.json; resumed to the end."""
    out = tmp_path_factory.mktemp("faults_full_disk")
    res = {"at_save": run(train_cmd(out, inject=("--enospc", f"*/adam/3{TMP}/*/_METADATA")), env)}
    res["run"] = run_ = run_dir(out)
    res["after_save"] = (checkpoints(run_), sorted(p.name for p in run_.iterdir()))
    res["at_metrics"] = run(train_cmd(out, "--resume", run_, inject=("--enospc", "*/.metrics.json.*")), env)
    res["after_metrics"] = sorted(p.name for p in run_.iterdir())
    res["resumed"] = run(train_cmd(out, "--resume", run_), env)
    return res


def test_full_disk_during_a_checkpoint_save(full_disk):
    run_, r = full_disk["run"], full_disk["at_save"]
    line = the_error(r.stderr, r.returncode)
    assert line.startswith(f"error: cannot write {run_}/checkpoints/adam/3: no space left on device ("), line
    assert re.search(r"\([\d.]+ [kMG]?B free there, a checkpoint takes about [\d.]+ MB\)", line), line
    assert "kept: the checkpoints of adam at epochs 1, 2" in line
    assert line.endswith(f"free space on that disk, then continue with: python -m experiments.optimizers "
                         f"--resume {run_}"), line
    ckpts, files = full_disk["after_save"]
    assert ckpts == ["1", "2"]  # no temporary folder left, the good ones kept
    assert files == ["checkpoints", "config.json"]  # no lock file left


def test_full_disk_writing_metrics(full_disk):
    run_, r = full_disk["run"], full_disk["at_metrics"]
    line = the_error(r.stderr, r.returncode)
    assert line.startswith(f"error: cannot write {run_}/metrics.json: no space left on device"), line
    assert "kept: the checkpoints of adam at epochs 2, 3, 4" in line and f"--resume {run_}" in line
    assert full_disk["after_metrics"] == ["checkpoints", "config.json"]  # no half file, no temporary file


def test_resume_after_a_full_disk_equals_the_uninterrupted_run(full_disk, reference):
    r = full_disk["resumed"]
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert comparable(full_disk["run"]) == comparable(reference)


def test_figures_and_reports_are_written_whole_or_not_at_all(reference, tmp_path, monkeypatch):
    """A full disk while a figure or REPORT.md is written: one line (errors.WriteFailed) naming the file; the previous
    file kept."""
    import tempfile

    from bccd_jax.plots import plot_curves
    from experiments.report import write_report

    figure = tmp_path / "curves.png"
    history = {"adam": {"epoch": [1, 2], "train_acc": [[0.3], [0.4]]}}
    plot_curves(history, figure)
    before = figure.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(UserError, match=f"cannot write {figure}: no space left on device .* free there.; its "
                                          "previous content is kept; free space on that disk"):
        plot_curves(history, figure)
    assert figure.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    with pytest.raises(UserError, match=f"cannot write {tmp_path}/results/REPORT.md: no space left on device .*; "
                                          "nothing was written"):
        write_report([reference], tmp_path / "results")


@pytest.fixture(scope="module")
def two_writers(reference, tmp_path_factory, env) -> dict:
    """A run held inside its second checkpoint save; a second process resuming the same folder meanwhile; then the
    first killed there (kill -9 during a save) and the run resumed."""
    out = tmp_path_factory.mktemp("faults_writers")
    first = Child(train_cmd(out, inject=("--pause", f"*/adam/2{TMP}/commit_success.txt")), env)
    try:
        assert first.wait_for("[faults] paused at", time.monotonic() + 300), "\n".join(first.text())
        run_ = run_dir(out)
        res = {"run": run_, "pid": first.proc.pid, "second": run(train_cmd(out, "--resume", run_), env)}
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.finish()
    res["left"] = sorted(p.name for p in run_.iterdir()), checkpoints(run_)
    (run_ / ".metrics.json.k1ll3d00.tmp").write_text('{"adam": {"hist')  # as a kill inside write_atomic leaves it
    res["resumed"] = run(train_cmd(out, "--resume", run_), env)
    res["after"] = sorted(p.name for p in run_.iterdir()), checkpoints(run_)
    return res


def test_a_second_writer_is_refused(two_writers):
    r, run_ = two_writers["second"], two_writers["run"]
    line = the_error(r.stderr, r.returncode)
    assert line.startswith(f"error: {run_} is being written by process {two_writers['pid']} on "), line
    assert "python -m experiments.optimizers" in line and "wait for it to finish or stop it" in line


def test_kill_during_a_save_resumes_and_takes_over_the_lock(two_writers, reference):
    run_ = two_writers["run"]
    assert two_writers["left"] == (["checkpoints", "config.json", "writer.lock"], ["1", f"2{TMP}"])
    r = two_writers["resumed"]
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"note: took over {run_}/writer.lock from process {two_writers['pid']} on " in r.stderr
    assert f"removed {run_}/checkpoints/adam/2{TMP}, the temporary folder of a checkpoint save" in r.stderr
    assert f"removed {run_}/.metrics.json.k1ll3d00.tmp, a file a killed process was writing" in r.stderr
    assert f"resumed from {run_}/checkpoints/adam at epoch 1" in r.stderr
    assert comparable(run_) == comparable(reference)
    assert two_writers["after"] == (["checkpoints", "config.json", "metrics.csv", "metrics.json"], ["2", "3", "4"])


def test_kill_between_steps_resumes_bit_identical(reference, tmp_path, env):
    """kill -9 while epoch 3 trains (its checkpoint 2 saved): the resume redoes epoch 3 to the same bits."""
    child = Child(train_cmd(tmp_path, inject=("--announce",)), env)
    assert child.wait_for("[faults] save end 2", time.monotonic() + 300), "\n".join(child.text())
    os.kill(child.proc.pid, signal.SIGKILL)
    child.finish()
    assert "[faults] save begin 3" not in child.text()
    run_ = run_dir(tmp_path)
    r = run(train_cmd(tmp_path, "--resume", run_), env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"resumed from {run_}/checkpoints/adam at epoch 2" in r.stderr
    assert comparable(run_) == comparable(reference)


def test_seeds_flag_wins_over_the_protocols_count(tmp_path):
    """`--seeds 1` trains one seed where the protocol gives the group three; config.json records the flag, and a
    resume without it keeps it."""
    from bccd_jax.run import DataRecord, RunFolder
    from bccd_jax.runner import make_record, parse_args, resumed_run, select_variants, variant_seeds
    from experiments import optimizers

    def seeds(argv):
        args = parse_args(optimizers.EXPERIMENT, argv)
        return args, {v.name: variant_seeds(v, args) for v in select_variants(optimizers.EXPERIMENT, args)}

    cpu = ["--protocol", "cpu", "--data-dir", str(tmp_path), "--out", str(tmp_path / "runs")]
    assert seeds(cpu)[1] == {"sgd": (0, 1, 2), "rmsprop": (0, 1, 2), "adam": (0, 1, 2)}
    args, got = seeds([*cpu, "--seeds", "1"])
    assert got == {"sgd": (0,), "rmsprop": (0,), "adam": (0,)}
    data = DataRecord("augmented", (60, 80, 3), "0" * 64, (0.0, 0.0, 0.0), {"train": 8})
    variants = select_variants(optimizers.EXPERIMENT, args)
    folder = RunFolder(tmp_path / "runs" / "optimizers" / "run")
    folder.path.mkdir(parents=True)
    folder.write_record(make_record(optimizers.EXPERIMENT, args, variants, data, ["test"], None, folder, "cmd"))
    saved = json.loads(folder.config_path.read_text())
    assert saved["seeds_flag"] == 1 and {v["seeds"][0] for v in saved["variants"].values()} == {0}
    assert all(len(v["seeds"]) == 1 for v in saved["variants"].values())
    args, _ = seeds([*cpu, "--resume", str(folder.path)])
    resumed_run(optimizers.EXPERIMENT, args)
    assert {v.name: variant_seeds(v, args) for v in variants} == {"sgd": (0,), "rmsprop": (0,), "adam": (0,)}


def test_a_truncated_training_image_is_one_line(tmp_path, env):
    """A training image that does not decode: one line naming it, exit 2."""
    from test_data import _write_layout

    root = _write_layout(tmp_path / "dataset2-master")
    bad = sorted((root / "images" / "TRAIN" / "MONOCYTE").iterdir())[-1]
    bad.write_bytes(bad.read_bytes()[:300])
    r = run([sys.executable, "-m", "experiments.optimizers", "--data-dir", str(root), "--image-size", "24", "32",
             "--variants", "adam", "--epochs", "1", "--seeds", "1", "--out", str(tmp_path / "runs"),
             "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--no-figures"], env)
    line = the_error(r.stderr, r.returncode)
    assert "cannot decode image" in line and str(bad) in line, line


def test_lock_without_flock_goes_by_the_pid(tmp_path, monkeypatch):
    """Where the file system has no flock, a lock naming a live process of this host refuses, one naming a process
    that is gone is taken over with a note."""
    import fcntl
    import socket

    from bccd_jax.run.lock import LOCK_FILE, writer_lock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = tmp_path / LOCK_FILE
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(), "command": "train"}))
        with pytest.raises(UserError, match=f"is being written by process {alive.pid} on .* \\(train"):
            with writer_lock(tmp_path, "second"):
                pass
    finally:
        alive.kill()
        alive.wait()
    notes: list[str] = []
    with writer_lock(tmp_path, "second", notes.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert notes == [f"took over {lock} from process {alive.pid} on {socket.gethostname()} (train), which is gone"]
    assert not lock.exists()


def test_files_written_whole_keep_the_mode_a_plain_write_gives(tmp_path):
    """write_atomic's temporary file (0600 from mkstemp) takes the mode open() would give before it takes the name."""
    import os
    import stat

    from bccd_jax.files import write_atomic

    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    written = write_atomic(tmp_path / "whole.json", "{}")
    assert stat.S_IMODE(os.stat(written).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_no_library_thread_prints_a_traceback_around_the_error_line(monkeypatch, capsys):
    """A read of a damaged checkpoint can leave a native TensorStore thread calling back into an event loop that
    is already closed; its RuntimeError reached the user through sys.excepthook after the one line (under load) and
    while it printed (on a quiet machine): it is dropped from the command's start, and nothing else is."""
    import threading

    from bccd_jax.errors import UserError, run_cli

    # a fresh process's hooks (an in-process run_cli of another test may have silenced them)
    for hook in ("excepthook", "unraisablehook"):
        monkeypatch.setattr(sys, hook, getattr(sys, f"__{hook}__"))
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)

    def main(argv):
        # a native thread's callback can come before the error line: dropped; any other error still shows
        sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
        sys.excepthook(ValueError, ValueError("a real error"), None)
        raise UserError("checkpoint x is damaged")

    assert run_cli(main, []) == 2
    before = capsys.readouterr().err
    assert "ValueError: a real error" in before and "Event loop" not in before
    assert before.endswith("\nerror: checkpoint x is damaged\n")
    late = RuntimeError("Event loop is closed")
    sys.excepthook(RuntimeError, late, None)
    thread = threading.Thread(target=lambda: (_ for _ in ()).throw(late))
    thread.start()
    thread.join()
    assert capsys.readouterr().err == ""  # and nothing after it
