"""A training step of Keras, the study's framework, beside bccd_jax's, in one process on the same CPU.

    python -m benchmarks.keras_step                      # base and deep, 60x80, batch 32 -> benchmarks/keras_step.json
    python -m benchmarks.keras_step --rounds 1 --steps 2 --repeats 1 --out /tmp/keras_step.json   # a quick check

Per model (the study's presets, bccd_jax.config.ARCH_PRESETS, with Adam 1e-3): bccd_jax's step
(MultiSeedTrainer.run_epoch in loop mode, one seed, benchmarks.bench.jax_runner) and Keras' (`model.fit` of the
same network written in Keras, benchmarks/keras_cnn.py, over `--steps` batches per call, one epoch, no shuffle,
verbose 0: what an epoch of the study's training runs, with fit's per-call setup spread over those batches), both
built and warmed up first, then timed in rounds, bccd_jax then Keras, so that other load on the machine hits both
alike; each round gives a Keras / bccd_jax ratio, reported with its median. Synthetic uint8 images of the size.
Keras runs on its JAX backend in this process, so on the XLA:CPU settings bccd_jax applies when imported
(bccd_jax/_xla_env.py, bccd_jax/_malloc.py); a Keras process of its own would run on XLA's defaults.

Writes the JSON (rows per model, framework and round; a summary per model) and, when it is
benchmarks/keras_step.json, regenerates benchmarks/RESULTS.md (benchmarks.report renders `keras_step_section`).
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # `python benchmarks/keras_step.py`
    sys.path.insert(0, str(HERE.parent))

from bccd_jax.errors import ArgumentParser, UserError, run_cli  # noqa: E402  (imports bccd_jax first)

FRAMEWORKS = ("bccd_jax", "keras")


def keras_runner(cfg, batch_size: int, images, labels):
    """run(steps): `model.fit` of the Keras model of `cfg` over `steps` batches (Adam 1e-3, as jax_runner's)."""
    from benchmarks.keras_cnn import compile_study, keras_cnn

    model = compile_study(keras_cnn(cfg, images.shape[1:3]), "adam")

    def run(steps):
        n = steps * batch_size
        model.fit(images[:n], labels[:n], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)

    return run


def measure(models, hw, batch_size: int, rounds: int, steps: int, repeats: int, log) -> list[dict]:
    """Rows: per model, round and framework, the median seconds per step over `repeats` runs of `steps` steps."""
    from benchmarks.bench import jax_runner, synthetic, timed_steps
    from bccd_jax.config import ModelConfig

    images, labels = synthetic(steps * batch_size, hw)
    rows = []
    for model in models:
        cfg = ModelConfig.preset(model)
        runners = {"bccd_jax": jax_runner(model, "float32", batch_size, 1, "auto", images, labels,
                                          model_cfg=cfg)[0],
                   "keras": keras_runner(cfg, batch_size, images, labels)}
        first = {fw: timed_steps(run, steps, 1)[0] for fw, run in runners.items()}  # compiles, warms up
        for rnd in range(rounds):
            for fw, run in runners.items():
                times = timed_steps(run, steps, repeats)
                rows.append(dict(model=model, framework=fw, round=rnd, step_s=statistics.median(times),
                                 step_s_all=times, first_call_step_s=first[fw], steps=steps))
                log(f"round {rnd + 1} {model} {fw}: {rows[-1]['step_s'] * 1e3:,.0f} ms/step")
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per model: each framework's median step over rounds, and the per-round Keras / bccd_jax ratios."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        step = {(r["framework"], r["round"]): r["step_s"] for r in rows if r["model"] == model}
        rounds = sorted({rnd for _, rnd in step})
        ratios = [step[("keras", rnd)] / step[("bccd_jax", rnd)] for rnd in rounds]
        out[model] = {"bccd_jax_step_s": statistics.median(step[("bccd_jax", rnd)] for rnd in rounds),
                      "keras_step_s": statistics.median(step[("keras", rnd)] for rnd in rounds),
                      "keras_over_bccd_jax": ratios, "keras_over_bccd_jax_median": statistics.median(ratios)}
    return out


def keras_step_section(ks: dict) -> list[str]:
    """benchmarks/RESULTS.md's section of keras_step.json."""
    lines = ["", "## Keras, the study's framework, beside bccd_jax: a training step", "",
             f"`{ks['command']}` ({ks['date']}, {ks['machine']}; Keras {ks['versions']['keras']} on JAX "
             f"{ks['versions']['jax']}, one process, XLA_FLAGS `{ks.get('xla_flags') or '(none)'}`; load average "
             f"at start / end {ks['loadavg_start'][0]:.1f} / {ks['loadavg_end'][0]:.1f}): the study's presets, "
             f"{ks['size']} images, batch {ks['batch_size']}, Adam, float32. bccd_jax: MultiSeedTrainer.run_epoch, "
             f"one seed; Keras: `model.fit` over {ks['steps']} batches per call (its per-call setup included). Timed "
             "in rounds, bccd_jax then Keras; step ms is the median over rounds, the ratio is per round.", "",
             "| model | bccd_jax step ms | Keras step ms | Keras / bccd_jax per round | Keras / bccd_jax median |",
             "| --- | ---: | ---: | --- | ---: |"]
    for model, s in ks["summary"].items():
        lines.append(f"| {model} | {s['bccd_jax_step_s'] * 1e3:,.0f} | {s['keras_step_s'] * 1e3:,.0f} | "
                     + " ".join(f"{r:.2f}" for r in s["keras_over_bccd_jax"])
                     + f" | **{s['keras_over_bccd_jax_median']:.2f}** |")
    return lines


def main(argv=None) -> int:
    import json

    from benchmarks.bench import cpu_name, parse_size
    from benchmarks.keras_cnn import check_config, import_keras
    from bccd_jax.config import ModelConfig
    from bccd_jax.files import write_json
    from bccd_jax.run import command_line, versions

    p = ArgumentParser(prog="python -m benchmarks.keras_step", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["base", "deep"], choices=["base", "expanded", "deep"])
    p.add_argument("--size", default="60x80", help="image size HxW")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="bccd_jax-then-Keras rounds")
    p.add_argument("--steps", type=int, default=20, help="steps per timed call (Keras: batches per fit)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per round and framework (their median)")
    p.add_argument("--out", type=Path, default=HERE / "keras_step.json")
    a = p.parse_args(argv)
    if min(a.batch_size, a.rounds, a.steps, a.repeats) < 1:
        raise UserError("--batch-size, --rounds, --steps and --repeats must be >= 1")
    hw = parse_size(a.size)
    for model in a.models:
        check_config(ModelConfig.preset(model), hw)
    if a.out.is_dir() or not a.out.parent.is_dir():
        raise UserError(f"--out {a.out} must be a file in an existing folder")
    keras = import_keras()
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command_line(argv),
           "machine": cpu_name(), "size": a.size, "batch_size": a.batch_size, "steps": a.steps,
           "versions": {**versions(), "keras": keras.__version__}, "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "loadavg_start": os.getloadavg()}
    res["rows"] = measure(a.models, hw, a.batch_size, a.rounds, a.steps, a.repeats,
                          lambda msg: print(msg, file=sys.stderr, flush=True))
    res.update(loadavg_end=os.getloadavg(), summary=summarize(res["rows"]))
    write_json(a.out, res)
    print("\n".join(keras_step_section(json.loads(a.out.read_text()))))
    if a.out.parent == HERE:  # the section of benchmarks/RESULTS.md
        from benchmarks.report import write_report
        write_report(HERE)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
