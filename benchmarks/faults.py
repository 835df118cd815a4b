"""Fault soak: a short run killed with SIGKILL at seeded random moments, resumed each time, and compared with an
uninterrupted run bit for bit.

    python -m benchmarks.faults [--kills 24] [--seed 0] [--out-dir benchmarks]

Trains the optimizers experiment's Adam (2 seeds, 4 epochs at 24x32 on the embedded originals, a checkpoint
every epoch, figures on) once without a fault, timing its checkpoint saves; then runs it in chains: each
chain starts a run and kills it (SIGKILL) up to `--per-chain` times, each time resuming it with `--resume`,
until it finishes. Half the kills are timed into a checkpoint save (the child announces each save; the kill
comes a random fraction of the measured save time after the announcement), half at a random moment of the
process's life (startup, training, evaluation, writing metrics or figures). After every chain the final
metrics.json (history and final evaluation; wall times left out) and metrics.csv must equal the uninterrupted
run's bit for bit, and the folder must hold no temporary checkpoint folder, lock file or half-written file.
Writes faults.json (every kill) and faults.md (the table) into --out-dir, then RESULTS.md there
(benchmarks.report).

    python -m benchmarks.faults inject [--announce] [--pause GLOB [--until FILE]] [--enospc GLOB] -- MODULE ARGS...

runs `python -m MODULE ARGS` with faults injected where the process meets the operating system: a file opened
for writing whose path matches --enospc fails with ENOSPC ("No space left on device"); one matching --pause
holds the process there (until FILE exists) after printing "[faults] paused at PATH"; --announce prints
"[faults] save begin E" / "[faults] save end E" around every checkpoint save. The soak and tests/test_faults.py
inject their faults this way.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import fnmatch
import io
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXPERIMENT = "optimizers"
RUN_ARGS = ("--variants", "adam", "--epochs", "4", "--seeds", "2", "--image-size", "24", "32", "--checkpoint-every",
            "1", "--no-progress")
EPOCHS = 4
TIME_KEYS = ("wall_s", "wall_s_over_resumes", "compile_s_estimate")  # what two identical runs may differ in
MOMENTS = {"startup": "starting (imports, data, compiling)", "training": "training or evaluating an epoch",
           "after_epoch": "between an epoch's evaluation and its save", "save": "inside a checkpoint save",
           "finishing": "after the last save (metrics, figures, summary)"}


# ----------------------------------------------------------------------------- injection (the child's side)


def say(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


def install(announce: bool = False, pause: str | None = None, until: str | None = None,
            enospc: str | None = None) -> None:
    """Wrap io.open / open / os.open (what Python's file writes, Orbax's included, go through) and, with
    `announce`, CheckpointStore.save."""
    import builtins

    real_io_open, real_os_open = io.open, os.open
    paused = []

    def meet(path: Any, writing: bool) -> None:
        if not writing or not isinstance(path, (str, bytes, os.PathLike)):
            return
        p = os.path.abspath(os.fsdecode(path))
        if enospc and fnmatch.fnmatch(p, enospc):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), p)
        if pause and not paused and fnmatch.fnmatch(p, pause):
            paused.append(p)
            say(f"paused at {p}")
            while until is None or not os.path.exists(until):
                time.sleep(0.02)

    def io_open(file, mode="r", *args, **kwargs):
        meet(file, any(c in mode for c in "wax+"))
        return real_io_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        meet(path, bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = io_open
    os.open = os_open
    if announce:
        from bccd_jax.checkpoints import CheckpointStore

        real_save = CheckpointStore.save

        def save(self, epoch, state, meta):
            say(f"save begin {epoch}")
            real_save(self, epoch, state, meta)
            say(f"save end {epoch}")

        CheckpointStore.save = save


def inject(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults inject")
    p.add_argument("--announce", action="store_true", help="print a line as each checkpoint save begins and ends")
    p.add_argument("--pause", metavar="GLOB", help="hold at the first file opened for writing that matches")
    p.add_argument("--until", metavar="FILE", help="go on from --pause once FILE exists (default: never)")
    p.add_argument("--enospc", metavar="GLOB", help="files opened for writing that match fail with ENOSPC")
    p.add_argument("module")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    install(a.announce, a.pause, a.until, a.enospc)
    import runpy

    sys.argv = [a.module, *a.args]
    runpy.run_module(a.module, run_name="__main__", alter_sys=True)


# ----------------------------------------------------------------------------- the soak (the parent's side)


class Child:
    """A child process whose stderr lines are collected, with the time each arrived, by a thread."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.lines: list[tuple[float, str]] = []
        self.done = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def wait_for(self, text: str, deadline: float) -> bool:
        """Whether a line holding `text` arrived before the process ended or `deadline` (monotonic) passed."""
        with self._cond:
            while not any(text in ln for _, ln in self.lines):
                if self.done or time.monotonic() > deadline:
                    return False
                self._cond.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            return True

    def kill_at(self, t: float) -> float | None:
        """SIGKILL at `t` seconds after the start, unless it ended before; the time of the kill, or None."""
        while time.monotonic() - self.t0 < t:
            if self.proc.poll() is not None:
                return None
            time.sleep(min(0.005, max(0.0, t - (time.monotonic() - self.t0))))
        if self.proc.poll() is not None:
            return None
        os.kill(self.proc.pid, signal.SIGKILL)
        at = time.monotonic() - self.t0
        self.finish()
        return at

    def finish(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.ended = time.monotonic() - self.t0
        self._thread.join(timeout=10)
        return rc

    def text(self, before: float | None = None) -> list[str]:
        with self._cond:
            return [ln for t, ln in self.lines if before is None or t <= before]


def child_env(work: Path) -> dict[str, str]:
    return {**os.environ, "BCCD_JAX_CACHE": str(work / "data"), "BCCD_JAX_COMPILE_CACHE": str(work / "xla"),
            "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def child_cmd(out: Path, resume: Path | None) -> list[str]:
    return [sys.executable, "-m", "benchmarks.faults", "inject", "--announce", "--", f"experiments.{EXPERIMENT}",
            *RUN_ARGS, "--out", str(out), *(["--resume", str(resume)] if resume else [])]


def run_folder(out: Path) -> Path | None:
    """The newest run folder under `out` that has a config.json (what --resume needs), or None."""
    found = sorted(p for p in (out / EXPERIMENT).glob("*") if (p / "config.json").is_file())
    return found[-1] if found else None


def comparable(run: Path) -> tuple[dict, str]:
    """metrics.json's variant without wall times, and metrics.csv: what two identical runs share bit for bit."""
    m = json.loads((run / "metrics.json").read_text())["adam"]
    return {k: v for k, v in m.items() if k not in TIME_KEYS}, (run / "metrics.csv").read_text()


def finished(out: Path) -> bool:
    """Whether the run's metrics.json holds the variant finished (a resume then trains nothing)."""
    run = run_folder(out)
    m = run / "metrics.json" if run else None
    return bool(m and m.is_file() and "incomplete" not in json.loads(m.read_text()).get("adam", {"incomplete": 1}))


def unreadable(out: Path) -> list[str]:
    """The run folder's JSON files that do not parse (a file written by halves)."""
    bad = []
    for p in out.rglob("*.json"):
        try:
            json.loads(p.read_text())
        except ValueError:
            bad.append(str(p.relative_to(out)))
    return bad


def figures_missing(out: Path) -> list[str]:
    run = run_folder(out)
    want = ["figures/curves_optimizers.png", "figures/confusion_adam.png"]
    return [f for f in want if not run or not (run / f).is_file()]


def leftovers(out: Path) -> list[str]:
    """What a clean run folder does not hold: temporary checkpoint folders, lock files, temporary files, damaged
    checkpoints set aside."""
    found = []
    for p in out.rglob("*"):
        name = p.name
        if ".orbax-checkpoint-tmp" in name or name == "writer.lock" or ".damaged" in name or \
                (name.startswith(".") and name.endswith(".tmp")):
            found.append(str(p.relative_to(out)))
    return sorted(found)


def moment(lines: list[str], done: int = 0) -> tuple[str, int]:
    """Where a process was when the last of its stderr `lines` arrived: a MOMENTS key, and the epochs the run had
    finished (`done` when it started, the epoch it resumed from, or its last epoch line)."""
    where = "startup"
    for ln in lines:
        if m := re.search(r"resumed from .* at epoch (\d+)", ln):
            done = int(m.group(1))
        elif "run folder:" in ln:
            where = "training" if done < EPOCHS else "finishing"
        elif m := re.search(rf"adam epoch (\d+)/{EPOCHS}", ln):
            done, where = int(m.group(1)), "after_epoch"
        elif m := re.match(r"\[faults\] save begin (\d+)", ln):
            where = "save"
        elif m := re.match(r"\[faults\] save end (\d+)", ln):
            where = "training" if int(m.group(1)) < EPOCHS else "finishing"
    return where, done


def reference_times(child: Child) -> dict[str, Any]:
    """The uninterrupted run's process time and the duration of each checkpoint save, as the parent saw them."""
    begin, saves = {}, {}
    for t, ln in child.lines:
        if m := re.match(r"\[faults\] save (begin|end) (\d+)", ln):
            if m.group(1) == "begin":
                begin[int(m.group(2))] = t
            else:
                saves[int(m.group(2))] = t - begin[int(m.group(2))]
    run_folder_at = next(t for t, ln in child.lines if "run folder:" in ln)
    return {"process_s": round(child.ended, 3), "startup_s": run_folder_at, "save_s": saves,
            "save_median_s": statistics.median(saves.values())}


def plan_kill(rng: random.Random, done: int, ref: dict) -> dict[str, Any]:
    """Into a save still to come (half the time, while one is left), else at a uniform moment of a process's life."""
    if rng.random() < 0.5 and done < EPOCHS:
        return {"kind": "save", "epoch": rng.randint(done + 1, EPOCHS), "fraction": round(rng.random(), 3)}
    return {"kind": "anywhere", "at_s": round(rng.uniform(0.0, ref["process_s"]), 3)}


def carry_out(child: Child, plan: dict, ref: dict) -> float | None:
    """Kill `child` as planned; the kill's time after its start, or None when it ended first."""
    if plan["kind"] == "save":
        if not child.wait_for(f"[faults] save begin {plan['epoch']}", time.monotonic() + 600):
            return None
        begun = next(t for t, ln in child.lines if ln == f"[faults] save begin {plan['epoch']}")
        return child.kill_at(begun + plan["fraction"] * ref["save_median_s"])
    return child.kill_at(plan["at_s"])


def recovery_notes(lines: list[str]) -> list[str]:
    """What a process said about the state a kill left: a temporary folder removed, a lock taken over, a damaged
    checkpoint skipped, an error."""
    keys = (("removed", "the temporary folder of a checkpoint save"), ("removed a file", "a file a killed process was "
            "writing"), ("took over", "note: took over"),
            ("skipped damaged checkpoint", "warning: skipped checkpoint"), ("error", "error:"),
            ("traceback", "Traceback"))
    return [name for name, text in keys if any(text in ln for ln in lines)]


def soak(kills: int, seed: int, per_chain: int, work: Path, log=print, note: str = "") -> dict[str, Any]:
    env = child_env(work)
    rng = random.Random(seed)
    t_start = time.monotonic()
    for name in ("warm-up", "reference"):  # the first builds the data cache and compiles; the second is timed
        reference = Child(child_cmd(work / name, None), env)
        if reference.finish() != 0:
            raise RuntimeError(f"the uninterrupted run ({name}) failed:\n" + "\n".join(reference.text()))
    ref = reference_times(reference)
    want = comparable(run_folder(work / "reference"))
    ref["runs_identical"] = comparable(run_folder(work / "warm-up")) == want
    log(f"[faults] uninterrupted run: {ref['process_s']:.1f} s, saves {ref['save_median_s'] * 1000:.0f} ms (median)")
    records: list[dict[str, Any]] = []
    chains: list[dict[str, Any]] = []
    while len(records) < kills:
        c = len(chains) + 1
        out = work / f"chain{c:02d}"
        chain = {"chain": c, "processes": 0, "kills": 0, "failed": None}
        previous: dict[str, Any] | None = None
        killing = True  # until the chain's kills are spent, or its run has finished
        while True:
            resume = run_folder(out)
            child = Child(child_cmd(out, resume), env)
            chain["processes"] += 1
            killed_at, plan = None, None
            start_done = max(_checkpoints(out), default=0) if resume else 0
            if killing and chain["kills"] < per_chain and len(records) < kills:
                plan = plan_kill(rng, start_done, ref)
                killed_at = carry_out(child, plan, ref)
            rc = child.finish() if killed_at is None else -signal.SIGKILL
            lines = child.text()
            if previous is not None:
                previous["next_process"] = recovery_notes(lines)
            if killed_at is None:
                if rc != 0:
                    chain["failed"] = f"exit {rc}: " + next((ln for ln in reversed(lines) if ln.strip()), "")
                break
            where, done = moment(child.text(before=killed_at), start_done)
            saved, complete = _checkpoints(out), finished(out)
            previous = {"kill": len(records) + 1, "chain": c, "process": chain["processes"], "plan": plan,
                        "at_s": round(killed_at, 3), "moment": where, "epochs_done": done,
                        "checkpoints_after": saved, "metrics_written": complete, "left": leftovers(out),
                        "unreadable": unreadable(out),
                        # finished epochs whose checkpoint the kill cost (an epoch in progress is lost as well)
                        "trained_again": 0 if complete else max(0, done - max(saved, default=0))}
            records.append(previous)
            chain["kills"] += 1
            killing = not complete  # once metrics.json is written, the next process only completes the folder
            log(f"[faults] kill {len(records)}/{kills}: chain {c}, {MOMENTS[where]}, {done} epoch(s) done, "
                f"checkpoints {previous['checkpoints_after']}")
        run = run_folder(out)
        chain["identical"] = run is not None and (run / "metrics.json").is_file() and comparable(run) == want
        chain["left"] = leftovers(out) + figures_missing(out)
        chains.append(chain)
        if chain["failed"] and not chain["kills"]:
            raise RuntimeError(f"chain {c} failed before any kill: {chain['failed']}")
        log(f"[faults] chain {c}: {chain['kills']} kill(s), {chain['processes']} processes, final metrics "
            f"{'identical' if chain['identical'] else 'DIFFERENT'} to the uninterrupted run's"
            + (f", failed: {chain['failed']}" if chain["failed"] else ""))
    ok = {c["chain"] for c in chains if c["identical"] and not c["failed"] and not c["left"]}
    for r in records:
        r["survived"] = r["chain"] in ok and not r["unreadable"] and not (
            {"error", "traceback", "skipped damaged checkpoint"} & set(r.get("next_process", [])))
    from bccd_jax.run import cpu_model, versions

    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "benchmarks.faults", *sys.argv[1:]]), "seed": seed,
            "kills_requested": kills, "per_chain": per_chain, "run": f"python -m experiments.{EXPERIMENT} "
            + " ".join(RUN_ARGS), "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
            "versions": {k: versions()[k] for k in ("jax", "orbax_checkpoint", "python")},
            "reference": ref, "kills": records, "chains": chains, "wall_s": round(time.monotonic() - t_start, 1),
            "note": note}


def _checkpoints(out: Path) -> list[int]:
    run = run_folder(out)
    d = run / "checkpoints" / "adam" if run else None
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d and d.is_dir() else []


# ----------------------------------------------------------------------------- the table


def summary_rows(fa: dict) -> list[tuple[str, int, int, int]]:
    """(moment, kills, survived, finished epochs trained again) per moment with kills, and for all."""
    rows = []
    for key, label in MOMENTS.items():
        ks = [k for k in fa["kills"] if k["moment"] == key]
        if ks:
            rows.append((label, len(ks), sum(k["survived"] for k in ks), sum(k.get("trained_again", 0) for k in ks)))
    ks = fa["kills"]
    rows.append(("all", len(ks), sum(k["survived"] for k in ks), sum(k.get("trained_again", 0) for k in ks)))
    return rows


def table_lines(fa: dict) -> list[str]:
    chains, ks = fa["chains"], fa["kills"]
    same = sum(c["identical"] for c in chains)
    notes = [n for k in ks for n in k.get("next_process", [])]
    lines = ["| moment of the SIGKILL | kills | survived | finished epochs trained again |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {label} | {n} | {s} | {e} |" for label, n, s, e in summary_rows(fa)]
    lines += ["", f"{len(ks)} kills in {len(chains)} chains ({sum(c['processes'] for c in chains)} processes); "
              f"the final metrics.json (history and final evaluation, wall times left out) and metrics.csv of "
              f"{same} of {len(chains)} chains equal the uninterrupted run's bit for bit. Lost: "
              + ("nothing but training time: the epoch in progress, and a finished epoch whose checkpoint the kill "
                 "cut short" if same == len(chains) and all(k["survived"] for k in ks) else "see faults.json")
              + f". Left for the next process: {notes.count('removed')} temporary checkpoint folder(s) and "
              f"{notes.count('removed a file')} temporary file(s), removed on resume; {notes.count('took over')} "
              "lock file(s), taken over; "
              f"{notes.count('skipped damaged checkpoint')} damaged checkpoint(s); "
              f"{notes.count('error') + notes.count('traceback')} error(s). Nothing left behind in any chain's "
              f"folder at the end, and every figure there: {'yes' if not any(c['left'] for c in chains) else 'no'}."
              + (f" Note: {fa['note']}" if fa.get("note") else "")]
    return lines


def faults_markdown(fa: dict) -> str:
    ref = fa["reference"]
    head = ["# Fault soak: SIGKILL at random moments, resumed each time", "",
            f"Generated by `{fa['command']}` on {fa['date'][:10]} ({fa['machine']['cpu']}, "
            f"{fa['machine']['cores']} cores; {fa['wall_s']:.0f} s) from faults.json; do not edit. The run: "
            f"`{fa['run']}` (embedded originals); uninterrupted it takes {ref['process_s']:.1f} s as a process "
            f"({ref['startup_s']:.1f} s to its run folder), a checkpoint save {ref['save_median_s'] * 1000:.0f} ms "
            f"(median), and two uninterrupted runs are {'' if ref['runs_identical'] else 'NOT '}identical. "
            f"Seed {fa['seed']}: half the kills land a random fraction of a save's time after the save "
            f"announced itself, half at a uniform moment of a process's life; each chain is killed up to "
            f"{fa['per_chain']} times, resumed after each kill, then left to finish.", ""]
    detail = ["", "| kill | chain | planned | landed | epochs done | checkpoints after | next process | "
              "finished epochs trained again |", "| ---: | ---: | --- | --- | ---: | --- | --- | ---: |"]
    for k in fa["kills"]:
        p = k["plan"]
        planned = f"save {p['epoch']} + {p['fraction']:.2f} of a save" if p["kind"] == "save" else \
            f"{p['at_s']:.2f} s after start"
        detail.append(f"| {k['kill']} | {k['chain']} | {planned} | {MOMENTS[k['moment']]} ({k['at_s']:.2f} s) | "
                      f"{k['epochs_done']} | {', '.join(map(str, k['checkpoints_after'])) or '-'} | "
                      f"{', '.join(k.get('next_process', [])) or '-'} | {k.get('trained_again', '-')} |")
    return "\n".join(head + table_lines(fa) + detail) + "\n"


def faults_section(fa: dict) -> list[str]:
    """The section of RESULTS.md (faults.json): the soak's table, and where its every kill is listed."""
    return ["", "## Faults: SIGKILL at random moments", "",
            f"`{fa['command']}` ({fa['date'][:10]}): `{fa['run']}` killed {len(fa['kills'])} times and resumed each "
            "time (faults.md beside this file lists every kill):", "", *table_lines(fa)]


# ----------------------------------------------------------------------------- the command


def main(argv: Sequence[str] | None = None) -> int:
    from bccd_jax.errors import ArgumentParser, UserError
    from bccd_jax.files import write_atomic, write_json

    p = ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=24, help="SIGKILLs to deliver (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    p.add_argument("--per-chain", type=int, default=4, help="kills of one run before it is left to finish")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where faults.json, faults.md and RESULTS.md go")
    p.add_argument("--work-dir", type=Path, help="where the runs go (default: a temporary folder, removed)")
    p.add_argument("--note", default="", help="a line for the table (e.g. what else ran on the machine)")
    a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if a.kills < 1 or a.per_chain < 1:
        raise UserError("--kills and --per-chain must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bccd_jax_faults_") as tmp:
        fa = soak(a.kills, a.seed, a.per_chain, a.work_dir or Path(tmp),
                  log=lambda msg: print(msg, file=sys.stderr, flush=True), note=a.note)
    write_json(a.out_dir / "faults.json", fa)
    write_atomic(a.out_dir / "faults.md", faults_markdown(fa))
    print("\n".join(table_lines(fa)))
    from benchmarks.report import write_report

    print(f"wrote {a.out_dir / 'faults.json'}, {a.out_dir / 'faults.md'} and {write_report(a.out_dir)}")
    return 0 if all(k["survived"] for k in fa["kills"]) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["inject"]:  # the child: no run_cli of its own, the module it runs has one
        inject(sys.argv[2:])
    else:
        from bccd_jax.errors import run_cli

        sys.exit(run_cli(main))
