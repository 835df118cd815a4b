"""Wall time to a TEST accuracy: the deep CNN's recipe trained by bccd_jax and by PyTorch eager.

    python -m benchmarks.time_to_accuracy --data-dir DATA          # the CPU protocol's recipe, seed 0
    python -m benchmarks.time_to_accuracy --data-dir DATA --epochs 20 --seeds 0 1 2 3 4 --stop-at-targets
    python -m benchmarks.time_to_accuracy --data-dir DATA --epochs 20 --seeds 0 1 2 3 4 --stop-at-targets --resume
    python -m benchmarks.time_to_accuracy --data-dir DATA --precision float32   # both sides in float32
    python -m benchmarks.time_to_accuracy --data-dir DATA --train-limit 256 --test-limit 256 --epochs 1 \\
        --image-size 48 64 --out-dir tta-smoke                    # a smoke test

The run is experiments.recipe's `best` variant under the `cpu` protocol (read at run time: model,
optimizer, schedule, augmentation, batch size, epochs, image size), on the augmented set, one seed
after another (`--seeds`; with `--stop-at-targets` every seed after the first stops after the epoch
in which both sides have reached every target and run past the longest wall budget: the first gives
the final accuracies, the others more draws). The race decides on medians over seeds (the `summary`
object of time_to_accuracy.json): wall time to each TEST target (--targets, default 0.80 and 0.83;
a seed that never gets there counts as the slowest), who got there first, and each side's TEST
accuracy after fixed wall budgets (--budgets, default 120, 300 and 600 s: its last evaluation
within the budget).

`--precision fastest` (default) runs each side in its fastest arithmetic on this CPU: PyTorch's
forward passes under bfloat16 autocast, and bccd_jax with BCCD_JAX_CONV=onednn-bf16 (oneDNN
bfloat16 convolutions in the float32 model, as autocast) when the oneDNN extension is built; both
only on a CPU with native bfloat16 instructions (benchmarks/RESULTS.md, the oneDNN A/B, has the
step times that make these the fastest). `--precision float32` runs both in float32.

The JAX side trains with MultiSeedTrainer.train_step
(epoch_mode loop, as `fit` on CPU) and
evaluates with MultiSeedTrainer.evaluate. The PyTorch side (benchmarks/torch_cnn.py) starts from
the same weights (the JAX init, copied), sees the same batches in the same order (the JAX batch
plan of the seed, the padded last batch masked out of the loss), takes the same Adam(W) steps
(eps 1e-7, the optax learning rate of every step, weight decay on kernels only), applies the
same input normalisation, and replays bccd_jax's random draws: every step's augmentation
parameters and dropout mask (bccd_jax.steps.step_draws, computed before either clock starts),
applied with torch ops. So both sides run one training run, step for step; what differs is the
float arithmetic (summation order, oneDNN against XLA), whose differences grow as training goes
on, so the curves drift apart by the noise of the arithmetic, not by two different draws.

The two frameworks alternate by epoch (JAX's epoch e, then PyTorch's epoch e), each with its own
clock, so that other load on the machine hits both alike. Both evaluate the full TEST split every
--eval-every-steps steps (default a quarter epoch) and at every epoch's end; evaluation counts in
the wall time (and is reported apart), so does JAX's compilation (JAX's own compile timings,
jax.monitoring, reported apart too). Writes time_to_accuracy.json to --out-dir after every epoch,
and RESULTS.md there through benchmarks.report (which keeps the throughput section). `--resume`
keeps the seeds that file has finished and races the rest: a killed race loses its unfinished seed
only, and more seeds can be added to a finished one.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # `python benchmarks/time_to_accuracy.py`
    sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from bccd_jax.errors import ArgumentParser, UserError, run_cli  # noqa: E402  (imports bccd_jax first)
from benchmarks.race_sides import JaxSide, TorchSide, replay_draws  # noqa: E402
from benchmarks.tta_section import race_summary  # noqa: E402

DATA_ENV = "BCCD_DATA_DIR"


def spread(n: int, limit: int | None) -> np.ndarray:
    """`limit` indices spread evenly over n (the splits are sorted by class), or all of them."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise UserError(f"a limit must be >= 1, got {limit}")
    return np.arange(limit) * n // limit


def recipe_variant(a, data_dir: str):
    """The recipe's variant `a.variant` under the `cpu` protocol, with --epochs / --image-size applied."""
    from bccd_jax.runner import parse_args, select_variants
    from experiments import recipe

    argv = ["--protocol", a.protocol, "--data-dir", data_dir, "--seeds", "1", "--variants", a.variant]
    argv += ["--epochs", str(a.epochs)] if a.epochs is not None else []
    argv += ["--image-size", *map(str, a.image_size)] if a.image_size else []
    args = parse_args(recipe.EXPERIMENT, argv)
    return select_variants(recipe.EXPERIMENT, args)[0], tuple(args.image_size)


# what a resumed race must share with the file it adds to
_SAME = ("recipe", "data", "steps_per_epoch", "eval_every_steps", "targets", "budgets", "precision", "stop_at_targets",
         "draws", "machine", "versions", "xla_flags")


def finished_seeds(path: Path, out: dict, frameworks) -> dict:
    """The file a resumed race adds to, its `by_seed` cut to the seeds it finished: every side ran all
    epochs, or (a seed after the first, with --stop-at-targets) every side reached every target."""
    if not path.exists():
        raise UserError(f"--resume: there is no {path.name} in {path.parent}; drop --resume to start one")
    try:
        prev = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--resume: {path} is not valid JSON ({e}); move it away or drop --resume") from None
    differ = [k for k in _SAME if prev.get(k) != json.loads(json.dumps(out[k]))]  # tuples read back as lists
    if prev.get("seeds", [None])[0] != out["seeds"][0]:
        differ.append("first seed")
    if differ:
        raise UserError(f"--resume: {path} was raced with other {', '.join(differ)}; use the same settings on the "
                        "same machine, or another --out-dir")
    epochs = out["recipe"]["train"]["epochs"]

    def finished(seed: str, runs: dict) -> bool:
        if not all(fw in runs for fw in frameworks):
            return False
        if all(runs[fw]["epochs"] == epochs for fw in frameworks):
            return True
        return out["stop_at_targets"] and int(seed) != out["seeds"][0] and raced_enough(out, runs.values())

    return dict(prev, by_seed={s: r for s, r in prev.get("by_seed", {}).items() if finished(s, r)})


def raced_enough(out: dict, sides) -> bool:
    """Every side has reached every target and run past the longest wall budget (--stop-at-targets)."""
    top, longest = f"{max(out['targets']):.2f}", max(out["budgets"], default=0.0)
    return all(s["reached"].get(top) is not None and s["wall_s"] >= longest for s in sides)


def precision_plan(choice: str) -> dict:
    """What each side computes in: {"jax": BCCD_JAX_CONV or None, "torch": "bfloat16" | "float32", "why": ...}."""
    from bccd_jax.ext import onednn
    from bccd_jax.run import cpu_flags

    if choice == "float32":
        return dict(jax="xla", torch="float32", why="--precision float32")
    native = bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))
    jax_conv = "onednn-bf16" if onednn.available() and onednn.native_bf16() else None
    why = ("this CPU has native bfloat16 instructions" if native else "this CPU has no native bfloat16 instructions") \
        + ("; the oneDNN extension is built" if jax_conv else f"; the oneDNN extension is not available "
           f"({onednn.load_error() or 'no native bfloat16'})")
    return dict(jax=jax_conv, torch="bfloat16" if native else "float32", why=why)


def summary(side, targets) -> dict:
    """Time (wall, and training only) and step at which the TEST accuracy first reaches each target."""
    out = dict(wall_s=side.clock.wall_s, train_s=side.clock.train_s, eval_s=side.clock.eval_s,
               first_step_s=side.first_step_s, steps=side.step, epochs=side.epochs, evaluations=len(side.curve),
               final_test_acc=side.curve[-1]["test_acc"] if side.curve else None, curve=side.curve, reached={})
    for t in targets:
        hit = next((p for p in side.curve if p["test_acc"] >= t), None)
        out["reached"][f"{t:.2f}"] = None if hit is None else dict(time_s=hit["time_s"], train_time_s=hit["train_time_s"],
                                                                   step=hit["step"])
    return out


# ----------------------------------------------------------------------------- main


def make_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.time_to_accuracy", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get(DATA_ENV),
                   help=f"the augmented Kaggle folder (dataset2-master) or an export file (default ${DATA_ENV})")
    p.add_argument("--cache-dir", help="where built data sets are cached (default ~/.cache/bccd_jax)")
    p.add_argument("--variant", default="best", help="the experiments.recipe variant (default best)")
    p.add_argument("--protocol", default="cpu", help="the experiments.protocol protocol (default cpu)")
    p.add_argument("--epochs", type=int, help="default: the protocol's for the recipe")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the protocol's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one race per seed, one after another")
    p.add_argument("--stop-at-targets", action="store_true",
                   help="seeds after the first stop once both sides have reached every target")
    p.add_argument("--eval-every-steps", type=int, help="TEST evaluation cadence (default: a quarter epoch)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.80, 0.83], help="TEST accuracies to time")
    p.add_argument("--budgets", type=float, nargs="+", default=[120.0, 300.0, 600.0],
                   help="wall seconds after which each side's TEST accuracy is compared")
    p.add_argument("--precision", choices=["fastest", "float32"], default="fastest",
                   help="fastest: PyTorch bfloat16 autocast and bccd_jax's oneDNN bfloat16 convolutions where this "
                        "CPU and build allow (module docstring); float32: both sides in float32")
    p.add_argument("--train-limit", type=int, help="train on this many images, spread evenly over the split")
    p.add_argument("--test-limit", type=int, help="evaluate on this many TEST images, spread evenly")
    p.add_argument("--frameworks", nargs="+", default=["jax", "torch"], choices=["jax", "torch"])
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: PyTorch's own)")
    p.add_argument("--out-dir", type=Path, default=HERE)
    p.add_argument("--resume", action="store_true",
                   help="keep the seeds that time_to_accuracy.json in --out-dir has finished (same recipe, data, "
                        "settings and machine) and race only the others")
    p.add_argument("--note", action="append", default=[], help="a hand-written line for the notes (shown with this command)")
    return p


@dataclasses.dataclass
class Race:
    """What every seed's race shares: the flags, the recipe, the data, when to evaluate, every step's learning rate."""

    a: argparse.Namespace
    variant: Any
    hw: tuple[int, int]
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    train_mean: np.ndarray
    spe: int  # steps per epoch
    eval_every: int
    model: Any
    tx: Any
    lrs: np.ndarray
    precision: dict  # precision_plan

    @property
    def cfg(self):
        return self.variant.train

    @property
    def eval_at(self) -> set[int]:
        total = self.cfg.epochs * self.spe
        return set(range(self.eval_every, total + 1, self.eval_every)) | {self.spe * (e + 1) for e in range(self.cfg.epochs)}


def prepare(a: argparse.Namespace) -> Race:
    """The recipe and the data of the flags, checked before anything is trained."""
    import jax
    import jax.numpy as jnp

    from bccd_jax.models.cnn import feature_map_size
    from bccd_jax.data import load_dataset
    from bccd_jax.models import build_model
    from bccd_jax.optimizers import learning_rate, make_optimizer
    from bccd_jax.steps import steps_per_epoch

    precision = precision_plan(a.precision)
    if precision["jax"]:  # read when the JAX side's programs are traced
        os.environ["BCCD_JAX_CONV"] = precision["jax"]
    variant, hw = recipe_variant(a, a.data_dir)
    mcfg, cfg = variant.model, variant.train
    if cfg.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {cfg.epochs}")
    if len(set(a.seeds)) != len(a.seeds):
        raise UserError(f"--seeds must differ from each other, got {a.seeds}")
    feature_map_size(mcfg, hw)
    ds = load_dataset("augmented", data_dir=a.data_dir, image_size=hw, cache_dir=a.cache_dir)
    tr_i, te_i = spread(len(ds.splits["train"].labels), a.train_limit), spread(len(ds.splits["test"].labels), a.test_limit)
    train = (np.ascontiguousarray(ds.splits["train"].images[tr_i]), ds.splits["train"].labels[tr_i].astype(np.int32))
    test = (np.ascontiguousarray(ds.splits["test"].images[te_i]), ds.splits["test"].labels[te_i].astype(np.int32))
    train_mean = ds.train_mean()
    spe = steps_per_epoch(len(train[1]), cfg.batch_size)
    total = cfg.epochs * spe
    if a.eval_every_steps is not None and a.eval_every_steps < 1:
        raise UserError(f"--eval-every-steps must be >= 1, got {a.eval_every_steps}")
    lr = learning_rate(cfg, spe)
    lrs = np.asarray(jax.vmap(lr)(jnp.arange(max(total, 1)))) if callable(lr) else np.full(max(total, 1), lr)
    return Race(a, variant, hw, train, test, train_mean, spe, a.eval_every_steps or max(1, math.ceil(spe / 4)),
                build_model(mcfg, train_mean=train_mean), make_optimizer(cfg, steps_per_epoch=spe), lrs, precision)


def race_record(r: Race, command: str) -> dict:
    """time_to_accuracy.json before any seed has run: the command, machine, recipe, data and settings."""
    from benchmarks.bench import cpu_name, versions
    from bccd_jax.config import to_dict
    from bccd_jax.run import cpu_flags

    a, cfg = r.a, r.cfg
    return dict(command=command, date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                machine=f"{platform.node()}: {cpu_name()}", cpu_flags=cpu_flags(), versions=versions(),
                xla_flags=os.environ.get("XLA_FLAGS", ""), loadavg_start=os.getloadavg(),
                recipe=dict(experiment="recipe", variant=r.variant.name, protocol=a.protocol,
                            model=to_dict(r.variant.model), train=to_dict(cfg),
                            peak_learning_rate=cfg.resolved_learning_rate()),
                data=dict(dataset="augmented", image_size=list(r.hw), train=len(r.train[1]), test=len(r.test[1]),
                          train_limit=a.train_limit, test_limit=a.test_limit),
                seed=a.seeds[0], seeds=list(a.seeds), stop_at_targets=a.stop_at_targets, steps_per_epoch=r.spe,
                eval_every_steps=r.eval_every, targets=a.targets, budgets=a.budgets, precision=r.precision,
                order="alternating by epoch", draws="shared",
                notes=[{"text": t, "command": command} for t in a.note], runs={}, by_seed={})


def keep_finished(out: dict, a: argparse.Namespace) -> None:
    """--resume: the seeds the file in --out-dir has finished go into `out`, so only the others race."""
    kept = finished_seeds(a.out_dir / "time_to_accuracy.json", out, a.frameworks)
    out["by_seed"] = {s: r for s, r in kept["by_seed"].items() if int(s) in a.seeds}
    if str(a.seeds[0]) in out["by_seed"]:
        out["runs"] = {fw: out["by_seed"][str(a.seeds[0])][fw] for fw in a.frameworks}
        out["initial_logits_max_abs_diff"] = kept["initial_logits_max_abs_diff"]
    out["previous_commands"] = kept.get("previous_commands", []) + [kept["command"]]


def start_sides(r: Race, seed: int, out: dict, runs: dict) -> dict:
    """Both frameworks at the same initial weights, with what the PyTorch side copies from bccd_jax (batch plans,
    random draws) computed before either clock starts; the initial logits' difference goes into `runs`."""
    import jax
    import jax.numpy as jnp

    from bccd_jax.steps import make_step_fns, seed_key, variables

    a, cfg = r.a, r.cfg
    fns = make_step_fns(r.model, r.tx, cfg, len(r.train[1]))
    plan = jax.jit(fns.batch_plan)
    plans = [tuple(np.array(v) for v in plan(seed_key(seed), jnp.int32(e))) for e in range(cfg.epochs)]
    sides = {}
    if "jax" in a.frameworks:
        sides["jax"] = JaxSide(r.model, r.tx, cfg, seed, r.train, r.test, r.eval_at)
    params0 = sides["jax"].initial_params() if "jax" in sides else \
        jax.tree.map(np.asarray, fns.init(seed_key(seed), r.train[0][:1]).params)
    if "torch" in a.frameworks:
        draws = replay_draws(r.model, cfg, params0, seed, (cfg.batch_size, *r.hw, 3), r.spe)
        sides["torch"] = TorchSide(r.variant.model, cfg, r.hw, r.train_mean, params0, plans, draws, r.lrs, seed,
                                   r.train, r.test, r.eval_at, a.torch_threads, r.precision["torch"])
        out["torch_threads"] = sides["torch"].torch.get_num_threads()
        sides["torch"].net.eval()
        with sides["torch"].torch.no_grad():
            t_logits = sides["torch"].net(sides["torch"].tx_[:32]).numpy()
        j_logits = np.asarray(r.model.apply(variables(params0, {}), r.test[0][:32]))
        runs["initial_logits_max_abs_diff"] = float(np.abs(t_logits - j_logits).max())
    return sides


def save_race(a: argparse.Namespace, out: dict, seed: int, sides: dict, runs: dict) -> None:
    """The seed's summaries into `out`, written to time_to_accuracy.json and RESULTS.md."""
    from benchmarks.report import write_report

    for fw, side in sides.items():
        runs[fw] = summary(side, a.targets)
        if fw == "jax":
            runs[fw].update(compile_s=sum(side.compile_events.values()), compile_events=dict(side.compile_events))
    out["by_seed"][str(seed)] = runs
    if seed == a.seeds[0]:
        out["runs"] = {fw: runs[fw] for fw in sides}
        out["initial_logits_max_abs_diff"] = runs.get("initial_logits_max_abs_diff", float("nan"))
    out["summary"] = race_summary(out)
    out["loadavg_end"] = os.getloadavg()
    (a.out_dir / "time_to_accuracy.json").write_text(json.dumps(out, indent=1))
    write_report(a.out_dir)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def race(r: Race, out: dict, seed: int, stop_early: bool) -> dict:
    """One seed: the frameworks alternate by epoch; their summaries (saved after every epoch)."""
    a, cfg = r.a, r.cfg
    runs: dict = {}
    sides = start_sides(r, seed, out, runs)
    for epoch in range(cfg.epochs):
        for fw, side in sides.items():
            side.run_epoch(epoch)
            last = side.curve[-1] if side.curve else {}
            log(f"seed {seed} epoch {epoch + 1}/{cfg.epochs} {fw}: TEST acc {last.get('test_acc', float('nan')):.3f} "
                f"at {side.clock.wall_s:,.1f} s (evaluation {side.clock.eval_s:,.1f} s)")
        save_race(a, out, seed, sides, runs)
        if stop_early and raced_enough(out, [runs[fw] for fw in sides]):
            log(f"seed {seed}: both sides reached {max(a.targets):.2f} and ran past {max(a.budgets, default=0):g} s; "
                f"stopped after epoch {epoch + 1}")
            break
    return runs


def main(argv=None) -> dict:
    a = make_parser().parse_args(argv)
    if not a.data_dir:
        raise UserError(f"the augmented data set is needed: pass --data-dir (the dataset2-master folder) or set {DATA_ENV}")
    from bccd_jax.run import command_line

    if any(b <= 0 for b in a.budgets):
        raise UserError(f"--budgets must be positive seconds, got {a.budgets}")
    r = prepare(a)
    out = race_record(r, command_line(argv))
    a.out_dir.mkdir(parents=True, exist_ok=True)
    if a.resume:
        keep_finished(out, a)
    for i, seed in enumerate(a.seeds):
        if str(seed) in out["by_seed"]:
            log(f"seed {seed}: finished in the file already (--resume)")
            continue
        runs = race(r, out, seed, a.stop_at_targets and i > 0)
        for fw in a.frameworks:
            res = runs[fw]
            reached = ", ".join(f"{t} " + ("never" if h is None else f"after {h['time_s']:.0f} s")
                                for t, h in res["reached"].items())
            log(f"seed {seed} {fw}: TEST accuracy {reached}; last {res['final_test_acc']:.3f}; wall {res['wall_s']:.0f} s")
    return out


def cli(argv=None) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))
