"""The time-to-accuracy section of RESULTS.md (time_to_accuracy.json, `python -m benchmarks.time_to_accuracy`),
and how RESULTS.md writes a number."""

from __future__ import annotations

import math
import statistics


def fmt(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def _median_or_none(vals) -> float | None:
    """The median, where None counts as worse than every number (a seed that never got there); None if the
    median itself is such a seed."""
    m = statistics.median([math.inf if v is None else v for v in vals])
    return None if math.isinf(m) else m


def last_within(side: dict, budget_s: float) -> dict | None:
    """A side's last TEST evaluation within `budget_s` wall seconds (its final one when it finished sooner)."""
    done = [p for p in side["curve"] if p["time_s"] <= budget_s]
    return done[-1] if done else None


def accuracy_at(side: dict, budget_s: float, epochs: int) -> float | None:
    """A side's TEST accuracy after `budget_s` wall seconds: its last evaluation within the budget (its final one
    when it finished all `epochs` sooner); math.nan when it stopped before the budget without finishing (unknown);
    None when it had not evaluated yet."""
    if side["wall_s"] < budget_s and side.get("epochs") != epochs:
        return math.nan
    last = last_within(side, budget_s)
    return last["test_acc"] if last else None


def race_summary(d: dict) -> dict:
    """Per target: each side's median wall seconds over seeds to the first TEST evaluation at or above it (a seed
    that never got there counts as the slowest), and in how many seeds bccd_jax got there first; per wall budget:
    each side's median TEST accuracy after that many seconds (over the seeds whose sides both ran that long or
    finished), and in how many of those seeds bccd_jax's was the higher."""
    by_seed = {s: r for s, r in (d.get("by_seed") or {}).items() if "jax" in r and "torch" in r}
    epochs = d["recipe"]["train"]["epochs"]
    out: dict = {"targets": {}, "budgets": {}}
    for x in d["targets"]:
        t = {fw: [r[fw]["reached"].get(f"{x:.2f}") for r in by_seed.values()] for fw in ("jax", "torch")}
        t = {fw: [None if h is None else h["time_s"] for h in v] for fw, v in t.items()}
        first = sum(j is not None and (p is None or j < p) for j, p in zip(t["jax"], t["torch"]))
        out["targets"][f"{x:.2f}"] = dict(jax_median_s=_median_or_none(t["jax"]), torch_median_s=_median_or_none(t["torch"]),
                                          jax_first=first, seeds=len(by_seed))
    for b in d.get("budgets") or []:
        acc = {fw: [accuracy_at(r[fw], b, epochs) for r in by_seed.values()] for fw in ("jax", "torch")}
        known = [i for i in range(len(by_seed)) if not any(isinstance(acc[fw][i], float) and math.isnan(acc[fw][i])
                                                          for fw in acc)]
        low = {fw: [-math.inf if acc[fw][i] is None else acc[fw][i] for i in known] for fw in acc}
        med = {fw: statistics.median(v) if v else None for fw, v in low.items()}
        out["budgets"][f"{b:g}"] = {**{f"{fw}_median_acc": None if m is None or math.isinf(m) else m
                                       for fw, m in med.items()},
                                    "jax_ahead": sum(j > p for j, p in zip(low["jax"], low["torch"])), "seeds": len(known)}
    return out


def summary_of(d: dict) -> dict:
    """The race's `summary` object as the file holds it, or computed from its seeds (files written before it)."""
    return d.get("summary") or race_summary(d)


def summary_table(d: dict) -> list[str]:
    """The race's decision: medians over seeds to each target and after each wall budget."""
    s = summary_of(d)
    if not s["targets"] or not next(iter(s["targets"].values()))["seeds"]:
        return []
    n = next(iter(s["targets"].values()))["seeds"]
    lines = ["", f"### Summary over {n} seed{'s' if n != 1 else ''}", "",
             "A seed that never reached a target counts as the slowest; after a wall budget, a side's accuracy is its "
             "last TEST evaluation within it.", "",
             "| | bccd_jax median | PyTorch median | PyTorch / bccd_jax | bccd_jax first |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for x, t in s["targets"].items():
        j, p = t["jax_median_s"], t["torch_median_s"]
        lines.append(f"| wall s to TEST {x} | {fmt(j, 0) if j is not None else 'never'} | "
                     f"{fmt(p, 0) if p is not None else 'never'} | {f'{p / j:.2f}x' if j and p else '-'} | "
                     f"{t['jax_first']} of {t['seeds']} |")
    for b, v in s["budgets"].items():
        ahead = f"{v['jax_ahead']} of {v['seeds']} ahead" if "jax_ahead" in v else ""
        lines.append(f"| TEST accuracy after {b} s ({v['seeds']} seeds) | {fmt(v['jax_median_acc'], 3)} | "
                     f"{fmt(v['torch_median_acc'], 3)} | | {ahead} |")
    return lines + [""] + [f"- {n}" for n in summary_notes(d, s)]


def equal_steps(r: dict) -> list[tuple[dict, dict]]:
    """One seed's (bccd_jax, PyTorch) evaluations made at the same step."""
    tj = {p["step"]: p for p in r["jax"]["curve"]}
    return [(tj[p["step"]], p) for p in r["torch"]["curve"] if p["step"] in tj]


def summary_notes(d: dict, s: dict) -> list[str]:
    """What bounds the summary, computed from the seeds: budgets past both sides' whole recipe (they compare final
    accuracies, not speed) and how far the two sides' accuracies lie apart at the same step."""
    notes, epochs = [], d["recipe"]["train"]["epochs"]
    seeds = {k: r for k, r in (d.get("by_seed") or {}).items() if "jax" in r and "torch" in r}
    done = {k: r for k, r in seeds.items() if all(r[fw]["epochs"] >= epochs for fw in ("jax", "torch"))}
    if done:
        walls = {fw: statistics.median(r[fw]["wall_s"] for r in done.values()) for fw in ("jax", "torch")}
        latest = max(max(r["jax"]["wall_s"], r["torch"]["wall_s"]) for r in done.values())
        past = [b for b in s["budgets"] if float(b) >= latest and len(done) == len(seeds)]
        if past:
            notes.append(f"After {', '.join(past)} s every seed's two sides had finished the {epochs}-epoch recipe "
                         f"(median wall bccd_jax {walls['jax']:.0f} s, PyTorch {walls['torch']:.0f} s): "
                         + ("those rows compare" if len(past) > 1 else "that row compares")
                         + " final accuracies, not speed.")
    notes += budget_notes(d, seeds)
    gaps = [abs(j["test_acc"] - t["test_acc"]) for r in seeds.values() for j, t in equal_steps(r)]
    if gaps:
        notes.append("At the same step the two sides' TEST accuracies differ by a median of "
                     f"{statistics.median(gaps):.3f} "
                     f"(largest {max(gaps):.3f}) over {len(gaps)} evaluations: the arithmetic's drift, which moves a "
                     "target's first crossing by whole evaluations.")
    return notes


def budget_notes(d: dict, seeds: dict) -> list[str]:
    """Per wall budget, seed by seed: how much further along the recipe bccd_jax was (steps) and how its TEST
    accuracy differed from PyTorch's; where those differences change sign, the row's medians compare the two sides'
    float drift (summary_notes' last note), not their speed."""
    epochs, notes, mixed = d["recipe"]["train"]["epochs"], [], []
    for b in d.get("budgets") or []:
        diffs, leads = [], []
        for r in seeds.values():
            acc = {fw: accuracy_at(r[fw], b, epochs) for fw in ("jax", "torch")}
            if any(a is None or math.isnan(a) for a in acc.values()):
                continue
            diffs.append(acc["jax"] - acc["torch"])
            leads.append(last_within(r["jax"], b)["step"] / last_within(r["torch"], b)["step"])
        if diffs:
            notes.append(f"After {b:g} s bccd_jax had taken {statistics.median(leads):.2f}x PyTorch's steps (median "
                         f"over {len(diffs)} seeds); its TEST accuracy minus PyTorch's: {min(diffs):+.3f} to "
                         f"{max(diffs):+.3f}, median {statistics.median(diffs):+.3f}.")
            if min(diffs) < 0 < max(diffs):
                mixed.append(f"{b:g}")
    if mixed:
        notes.append(f"After {', '.join(mixed)} s the per-seed differences change sign: "
                     + ("those rows' medians compare" if len(mixed) > 1 else "that row's medians compare")
                     + " the two sides' drift at the same step, not their speed.")
    return notes


def _epochs(d: dict) -> str:
    n = d["recipe"]["train"]["epochs"]
    return f"{n} epoch{'s' if n != 1 else ''}"


def seeds_table(d: dict) -> list[str]:
    """With several seeds (`--seeds`): each seed's wall time to every target per framework, the medians over
    seeds, and the wall-time ratio at the same step, which the curves' accuracies do not move."""
    by_seed, targets = d.get("by_seed") or {}, list(d["targets"])
    if len(by_seed) < 2 or not all("jax" in r and "torch" in r for r in by_seed.values()):
        return []
    fws = (("jax", "bccd_jax"), ("torch", "PyTorch"))
    lines = ["", f"### Every seed ({len(by_seed)}: {', '.join(by_seed)})", "",
             "Wall s (step) to each TEST accuracy. " + ("Seeds after the first stopped after the epoch in which both "
                                                      "sides had reached every target (`--stop-at-targets`)."
                                                      if d.get("stop_at_targets") else ""), "",
             "| seed | epochs | " + " | ".join(f"{name} to {x:.2f}" for x in targets for _, name in fws) + " |",
             "| ---: | ---: | " + " | ".join("---:" for _ in targets for _ in fws) + " |"]
    ratios, gaps = [], []
    steps = {(x, fw): [] for x in targets for fw, _ in fws}
    for seed, r in by_seed.items():
        cells = []
        for x in targets:
            for fw, _ in fws:
                h = r[fw]["reached"].get(f"{x:.2f}")
                steps[(x, fw)].append(math.inf if h is None else h["step"])
                cells.append("never" if h is None else f"{h['time_s']:,.0f} ({h['step']})")
        lines.append(f"| {seed} | {r['jax'].get('epochs', '-')} | " + " | ".join(cells) + " |")
        pairs = equal_steps(r)
        ratios += [t["time_s"] / j["time_s"] for j, t in pairs]
        gaps += [j["test_acc"] - t["test_acc"] for j, t in pairs]
    summ = summary_of(d)["targets"]
    first = {x: summ[f"{x:.2f}"]["jax_first"] for x in targets}
    med = {(x, fw): summ[f"{x:.2f}"][f"{fw}_median_s"] for x in targets for fw, _ in fws}
    lines.append("| median | | " + " | ".join(fmt(med[(x, fw)]) if med[(x, fw)] is not None else "never"
                                                 for x in targets for fw, _ in fws) + " |")
    notes = []
    for x in targets:
        j, p = med[(x, "jax")], med[(x, "torch")]
        if j and p:
            notes.append(f"To TEST accuracy {x:.2f}, median over {len(by_seed)} seeds: bccd_jax {j:,.0f} s, PyTorch "
                         f"eager {p:,.0f} s (PyTorch/bccd_jax {p / j:.2f}x); bccd_jax got there first in {first[x]} "
                         f"of {len(by_seed)} seeds. The step of the first evaluation at or above it: median "
                         f"{statistics.median(steps[(x, 'jax')]):,.0f} (bccd_jax) and "
                         f"{statistics.median(steps[(x, 'torch')]):,.0f} (PyTorch), range "
                         f"{min(steps[(x, 'jax')] + steps[(x, 'torch')]):,.0f}-{max(steps[(x, 'jax')] + steps[(x, 'torch')]):,.0f} "
                         "over seeds and sides.")
    if ratios:
        notes.append(f"At the same step (every evaluation point of every seed), PyTorch's wall time over bccd_jax's: "
                     f"median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}, "
                     f"{len(ratios)} points).")
    if gaps and d.get("draws") == "shared":
        notes.append(f"With the same draws, the two sides' TEST accuracies at the same step differ by "
                     f"{statistics.median(map(abs, gaps)):.3f} (median; at most {max(map(abs, gaps)):.3f}; mean of "
                     f"bccd_jax's minus PyTorch's {statistics.mean(gaps):+.4f}; {len(gaps)} points): the same run in "
                     "other float arithmetic drifts apart, so the step at which each side first reaches a target is not "
                     "the same.")
    return lines + [""] + [f"- {n}" for n in notes]


def _jax_precision(conv: str | None) -> str:
    return {"onednn-bf16": "float32 with oneDNN bfloat16 convolutions (BCCD_JAX_CONV=onednn-bf16)",
            "xla": "float32 (BCCD_JAX_CONV=xla)"}.get(conv or "", "float32 (XLA's convolutions)")


def _setting(d: dict) -> list[str]:
    """The section's head: command, machine, recipe, data, and what the two sides share; the table's head."""
    spe, targets = d["steps_per_epoch"], list(d["targets"])
    m, t = d["recipe"]["model"], d["recipe"]["train"]
    aug = ", ".join(k if v is True else f"{k} {v:g}" for k, v in t["augment"].items() if v) or "none"
    lines = ["", "## Time to TEST accuracy: the deep recipe in bccd_jax and in PyTorch eager", "",
             f"- command: `{d['command']}`" + "".join(f"; earlier seeds by `{c}`" for c in d.get("previous_commands", [])),
             f"- machine: {d['machine']}; CPU flags: {', '.join(d.get('cpu_flags') or []) or 'none of interest'}; "
             f"PyTorch threads {d.get('torch_threads')}",
             f"- date{' of the last command' if d.get('previous_commands') else ''}: {d['date']}; load average at start / end: {d.get('loadavg_start')} / {d.get('loadavg_end')}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in d['versions'].items())}",
             *([f"- precision: bccd_jax {_jax_precision(d['precision']['jax'])}; PyTorch "
                f"{'bfloat16 autocast' if d['precision']['torch'] == 'bfloat16' else 'float32'} ({d['precision']['why']})"]
               if d.get("precision") else []),
             f"- recipe: experiments.recipe variant `{d['recipe']['variant']}`, protocol `{d['recipe']['protocol']}`: "
             f"{m['arch']} CNN (init {m['init']}, dropout {m['dropout']}, input {m['input_norm']}), "
             f"{t['optimizer']} (eps 1e-7) peak learning rate {d['recipe']['peak_learning_rate']:g}, schedule "
             f"{t['schedule']} (warmup {t['warmup_epochs']:g} epochs), weight decay "
             f"{t['weight_decay']}, augmentation: {aug}; batch {t['batch_size']}, {t['epochs']} epochs, seed {d['seed']}"
             + (f" (the first of seeds {', '.join(map(str, d['seeds']))}: the table and the curve are its; every "
                "seed under 'Every seed')" if len(d.get("seeds") or []) > 1 else ""),
             f"- data: {d['data']['dataset']} at {d['data']['image_size'][0]}x{d['data']['image_size'][1]}, "
             f"{d['data']['train']} training and {d['data']['test']} TEST images; {spe} steps per epoch; TEST "
             f"evaluated every {d['eval_every_steps']} steps and at each epoch's end",
             f"- same start: the initial TEST logits of the two sides differ by at most "
             f"{d['initial_logits_max_abs_diff']:.2e}; same batches, learning rates and optimizer; "
             + ("the same dropout masks and augmentation parameters (bccd_jax's draws, replayed by PyTorch)"
                if d.get("draws") == "shared" else "own RNG for dropout and augmentation")
             + " (module docstring of benchmarks/time_to_accuracy.py); frameworks alternate by epoch, each on its "
             "own clock", "",
             "wall = training + evaluation, compilation included; 'training only' leaves the evaluations out.", "",
             "| framework | " + " | ".join(f"wall s to {x:.2f} (training only)" for x in targets)
             + " | final TEST acc | wall s | evaluation s | JAX compile s | first step s |",
             "| --- | " + " | ".join("---:" for _ in targets) + " | ---: | ---: | ---: | ---: | ---: |"]
    return lines


def _notes(d: dict) -> list[str]:
    """Who reached each target first and by how much, the whole run's ratio, and the hand-written notes."""
    runs, targets = d["runs"], list(d["targets"])
    notes = []
    if "jax" in runs and "torch" in runs:
        j, p = runs["jax"], runs["torch"]
        for x in targets:
            hj, hp = j["reached"].get(f"{x:.2f}"), p["reached"].get(f"{x:.2f}")
            if hj and hp:
                notes.append(f"To TEST accuracy {x:.2f}: PyTorch eager took {hp['time_s'] / hj['time_s']:.2f}x the "
                             f"wall time of bccd_jax ({hp['time_s']:,.0f} s vs {hj['time_s']:,.0f} s; step "
                             f"{hp['step']} vs {hj['step']}).")
            elif hj or hp:
                who, other = ("bccd_jax", "PyTorch eager") if hj else ("PyTorch eager", "bccd_jax")
                notes.append(f"To TEST accuracy {x:.2f}: only {who} got there ({(hj or hp)['time_s']:,.0f} s); "
                             f"{other} did not within {_epochs(d)}.")
            else:
                notes.append(f"TEST accuracy {x:.2f}: reached by neither within {_epochs(d)}.")
        notes.append(f"Whole run: PyTorch eager {p['wall_s'] / j['wall_s']:.2f}x the wall time of bccd_jax "
                     f"(training only {p['train_s'] / j['train_s']:.2f}x); final TEST accuracy "
                     f"{j['final_test_acc']:.3f} (bccd_jax) vs {p['final_test_acc']:.3f} (PyTorch).")
    notes += [f"{n['text']} (note given to `{n['command']}`)" for n in d.get("notes", [])]
    return ["", "Notes:", ""] + [f"- {n}" for n in notes] if notes else []


def _curve(d: dict) -> list[str]:
    """Both sides' TEST accuracy at every evaluation step, folded away."""
    runs, spe = d["runs"], d["steps_per_epoch"]
    curves = {fw: {p["step"]: p for p in r["curve"]} for fw, r in runs.items()}
    steps = sorted(set().union(*[set(c) for c in curves.values()])) if curves else []
    lines = ["", "<details><summary>TEST accuracy curve</summary>", "",
              "| step | epoch | bccd_jax s | bccd_jax TEST acc | PyTorch s | PyTorch TEST acc |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for st in steps:
        j, p = curves.get("jax", {}).get(st), curves.get("torch", {}).get(st)
        lines.append(f"| {st} | {st / spe:.2f} | {fmt(j and j['time_s'])} | {fmt(j and j['test_acc'], 3)} | "
                     f"{fmt(p and p['time_s'])} | {fmt(p and p['test_acc'], 3)} |")
    return lines + ["", "</details>"]


def time_to_accuracy_section(d: dict) -> list[str]:
    """The section of time_to_accuracy.json."""
    runs, targets = d["runs"], list(d["targets"])
    lines = _setting(d)
    for fw, name in (("jax", "bccd_jax"), ("torch", "PyTorch eager")):
        r = runs.get(fw)
        if not r:
            continue
        hits = [r["reached"].get(f"{x:.2f}") for x in targets]
        lines.append(f"| {name} | " + " | ".join("never" if h is None else f"{h['time_s']:,.0f} ({h['train_time_s']:,.0f})"
                                                for h in hits)
                     + f" | {fmt(r['final_test_acc'], 3)} | {r['wall_s']:,.0f} | {r['eval_s']:,.0f} | "
                       f"{fmt(r.get('compile_s'), 1)} | {fmt(r['first_step_s'], 2)} |")
    return lines + _notes(d) + summary_table(d) + seeds_table(d) + _curve(d)
