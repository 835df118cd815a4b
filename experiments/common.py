"""What every experiment shares: flags, data loading, the variant loop, run folder, summary table.

An experiment is a list of `Variant`s (a model config, a train config, optionally
a composed optax optimizer) trained with the same seeds on the same data. Each
experiment module only says which variants it compares.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optax

from bccd_jax import CLASS_NAMES
from bccd_jax.config import ModelConfig, TrainConfig, from_dict, to_dict
from bccd_jax.errors import UserError, run_cli
from bccd_jax.metrics import mean_ci, summarize_predictions

DEFAULT_IMAGE_SIZE = {"originals": (32, 40), "augmented": (120, 160)}  # originals: the 5-minute default run on 2 cores
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment."""

    name: str
    model: ModelConfig
    train: TrainConfig
    group: str = ""  # the part of the experiment it belongs to ("dropout", "overfit", ...)
    num_seeds: int | None = None  # None: the experiment's --seeds
    optimizer: optax.GradientTransformation | None = None  # a composed chain instead of train.optimizer
    epochs_follow_flag: bool = True  # False: --epochs leaves this variant's epochs alone (e.g. the 200-epoch run)


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    p.add_argument("--epochs", type=int, help="epochs for every variant (default: the experiment's)")
    p.add_argument("--seeds", type=int, default=5, help="seeds trained at once per variant (default 5)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed (seeds are offset..offset+S-1)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="default 32 40 on the embedded originals, 120 160 on the augmented set")
    p.add_argument("--dataset", choices=["originals", "augmented"], default=None,
                   help="default: augmented when --data-dir is given, else the embedded originals")
    p.add_argument("--data-dir", help="the augmented Kaggle folder (dataset2-master) or an export file")
    p.add_argument("--cache-dir", help="where built data sets are cached (default ~/.cache/bccd_jax)")
    p.add_argument("--out", default="runs", help="root of run folders (default ./runs)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                   help="continue a run folder (default: the latest run of this experiment under --out)")
    p.add_argument("--force", action="store_true", help="resume even if config or data fingerprint differ")
    p.add_argument("--variants", nargs="+", metavar="NAME", help="run only these variants")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig/TrainConfig field in every variant, e.g. dropout=0.3 dtype=bfloat16")
    p.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-figures", action="store_true", help="skip PNG figures")
    return p


def _parse_value(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(v: Variant, args: argparse.Namespace) -> Variant:
    """--epochs / --batch-size / --checkpoint-every / --set FIELD=VALUE applied to one variant."""
    train_over: dict[str, Any] = {"batch_size": args.batch_size, "checkpoint_every": args.checkpoint_every}
    if args.epochs is not None and v.epochs_follow_flag:
        train_over["epochs"] = args.epochs
    model_over: dict[str, Any] = {}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        val = _parse_value(value)
        if isinstance(val, list):
            val = tuple(tuple(x) if isinstance(x, list) else x for x in val)
        if key in model_fields:
            model_over[key] = val
        elif key in train_fields:
            train_over[key] = val
        else:
            raise UserError(f"--set {key}: unknown field; ModelConfig has {sorted(model_fields)}, "
                            f"TrainConfig has {sorted(train_fields)}")
    return dataclasses.replace(v, model=dataclasses.replace(v.model, **model_over).validate(),
                               train=dataclasses.replace(v.train, **train_over).validate())


def load_data(args: argparse.Namespace):
    """The data set named by the flags (embedded originals unless --data-dir)."""
    from bccd_jax.data import load_dataset

    dataset = args.dataset or ("augmented" if args.data_dir else "originals")
    if dataset == "augmented" and not args.data_dir:
        raise UserError("--dataset augmented needs --data-dir (the dataset2-master folder or an export file)")
    size = tuple(args.image_size) if args.image_size else DEFAULT_IMAGE_SIZE[dataset]
    return load_dataset(dataset, data_dir=args.data_dir, image_size=size, cache_dir=args.cache_dir)


def build_model_and_optimizer(v: Variant, train_mean, sample_images):
    """The Flax module, the optax transformation (frozen layers masked) and pretrained weights."""
    from bccd_jax.models import build_model
    from bccd_jax.optimizers import make_optimizer

    model = build_model(v.model, train_mean=train_mean)
    tx = v.optimizer if v.optimizer is not None else make_optimizer(v.train)
    pretrained = None
    if v.model.arch == "vgg16":
        import jax

        from bccd_jax.models.vgg import load_vgg16_conv_weights
        from bccd_jax.transfer import freeze_vgg16

        if v.model.pretrained:
            _, conv = load_vgg16_conv_weights(v.model.pretrained)
            pretrained = conv
        abstract = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                                  sample_images[:1])
        tx = freeze_vgg16(tx, abstract["params"], v.model.freeze)
    return model, tx, pretrained


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=True, dynamic_ncols=True)


def summarize_variant(v: Variant, result, ds, eval_names: Sequence[str]) -> dict[str, Any]:
    """Everything the report needs about one variant, from its history and final logits."""
    hist = result.history
    out: dict[str, Any] = {
        "group": v.group, "model": to_dict(v.model), "train": to_dict(v.train),
        "optimizer": v.train.optimizer if v.optimizer is None else "custom optax chain",
        "seeds": result.seeds, "epochs": len(hist["epoch"]), "wall_s": result.wall_s,
        "compile_s_estimate": result.compile_s, "history": hist, "final": {},
    }
    for name in eval_names:
        split = ds.splits[name]
        out["final"][name] = summarize_predictions(result.final_logits[name], split.labels, split.original_ids)
        acc = np.asarray(hist[f"{name}_acc"])  # [epochs, seeds]
        out[f"{name}_acc_final_mean"], ci = mean_ci(acc[-1])
        out[f"{name}_acc_final_ci95"] = list(ci)
        out[f"{name}_acc_best_mean"], ci = mean_ci(acc.max(axis=0))
        out[f"{name}_acc_best_ci95"] = list(ci)
        out[f"{name}_acc_best_epoch_per_seed"] = (acc.argmax(axis=0) + 1).tolist()
    tr = np.asarray(hist["train_acc"])
    out["train_acc_final_mean"] = float(tr[-1].mean())
    return out


def format_table(results: dict[str, dict[str, Any]], eval_names: Sequence[str]) -> str:
    """A fixed-width summary: final/best test accuracy with 95 % CI over seeds, grouped-by-cell."""
    head = ["variant", "seeds", "epochs", "train", "test final (95% CI)", "test best", "grouped"]
    if "test_simple" in eval_names:
        head.append("test_simple")
    head.append("time")
    rows = [head]
    for name, r in results.items():
        lo, hi = r["test_acc_final_ci95"]
        g = r["final"]["test"].get("grouped_acc_mean")
        row = [name, str(len(r["seeds"])), str(r["epochs"]), f"{r['train_acc_final_mean']:.3f}",
               f"{r['test_acc_final_mean']:.3f} ({lo:.3f}-{hi:.3f})", f"{r['test_acc_best_mean']:.3f}",
               "-" if g is None else f"{g:.3f}"]
        if "test_simple" in eval_names:
            row.append(f"{r['test_simple_acc_final_mean']:.3f}")
        row.append(f"{r['wall_s']:.0f}s")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_experiment(name: str, description: str, make_variants: Callable[[argparse.Namespace], list[Variant]],
                   argv: Sequence[str] | None = None,
                   add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse flags, train every variant (all seeds at once), write the run folder, print the summary."""
    parser = make_parser(name, description)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise UserError("--seeds must be >= 1")

    from bccd_jax import runs
    from bccd_jax.checkpoints import CheckpointStore
    from bccd_jax.plots import plot_confusion, plot_curves
    from bccd_jax.runtime import enable_compilation_cache
    from bccd_jax.train import TrainData, fit

    enable_compilation_cache()
    t_start = time.perf_counter()
    variants = [apply_overrides(v, args) for v in make_variants(args)]
    if args.variants:
        unknown = set(args.variants) - {v.name for v in variants}
        if unknown:
            raise UserError(f"unknown variant(s) {sorted(unknown)}; this experiment has {[v.name for v in variants]}")
        variants = [v for v in variants if v.name in args.variants]

    old_config = None
    if args.resume:
        run_dir = runs.latest_run_dir(args.out, name) if args.resume == "latest" else Path(args.resume)
        if not (run_dir / runs.CONFIG_FILE).exists():
            raise UserError(f"--resume {run_dir}: no {runs.CONFIG_FILE} there; not a run folder")
        old_config, _ = runs.read_run(run_dir)
        if not args.force:  # cheap check before loading (maybe building) another data set
            check_resume_data(old_config, args)

    ds = load_data(args)
    eval_names = [s for s in ("test", "test_simple") if s in ds.splits]
    data = TrainData.from_dataset(ds, eval_names)
    train_mean = ds.train_mean()

    if not args.resume:
        run_dir = runs.new_run_dir(args.out, name)
    data_meta = {"dataset": ds.name, "fingerprint": ds.fingerprint, "image_shape": list(ds.image_shape),
                 "data_dir": args.data_dir, "train_mean": [float(m) for m in train_mean],
                 "splits": {s: int(sp.labels.size) for s, sp in ds.splits.items()}}
    config = {
        "experiment": name, "description": description, "created": runs.timestamp(),
        "command": runs.command_line(), "cwd": str(Path.cwd()), "git_commit": runs.git_commit(),
        "versions": runs.versions(),
        "data": data_meta, "class_names": list(CLASS_NAMES), "eval_splits": eval_names,
        "args": {k: v for k, v in vars(args).items()},
        "variants": {v.name: {"group": v.group, "model": to_dict(v.model), "train": to_dict(v.train),
                              "seeds": list(range(args.seed_offset, args.seed_offset + (v.num_seeds or args.seeds))),
                              "optimizer": v.train.optimizer if v.optimizer is None else repr(v.optimizer)}
                     for v in variants},
    }
    if old_config is not None:
        old = old_config
        if not args.force:  # refuse before config.json is overwritten with the new settings
            check_resume_config(old, config, run_dir)
        config["resumed_from"] = old.get("resumed_from", []) + [old.get("created")]
        config["previous_commands"] = old.get("previous_commands", []) + [old.get("command")]
        config["created"] = old.get("created")
        print(f"[{name}] resuming {run_dir}", file=sys.stderr)
        # variants of the old run that this invocation does not train stay described
        config["variants"] = {**old.get("variants", {}), **config["variants"]}
    runs.write_json(run_dir / runs.CONFIG_FILE, config)
    print(f"[{name}] run folder: {run_dir}", file=sys.stderr)

    _, old_metrics = runs.read_run(run_dir)
    results: dict[str, dict[str, Any]] = {}
    interrupted = False
    for v in variants:
        seeds = config["variants"][v.name]["seeds"]
        model, tx, pretrained = build_model_and_optimizer(v, train_mean, ds.splits["train"].images)
        store = CheckpointStore(run_dir / "checkpoints" / v.name)
        run_meta = {"model": to_dict(v.model), "train": to_dict(v.train), "data_fingerprint": ds.fingerprint,
                    "image_shape": list(ds.image_shape), "variant": v.name}
        bar = _progress(v.train.epochs, v.name, not args.no_progress)

        def on_epoch(epoch: int, hist: dict, bar=bar, vname=v.name, total=v.train.epochs):
            bar.n = epoch
            post = {"train": f"{np.mean(hist['train_acc'][-1]):.3f}", "test": f"{np.mean(hist['test_acc'][-1]):.3f}"}
            if args.no_progress:  # one plain line per epoch, for logs
                print(f"[{name}] {vname} epoch {epoch}/{total}: train acc {post['train']}, test acc {post['test']}",
                      file=sys.stderr, flush=True)
                return
            bar.set_postfix(post, refresh=False)
            bar.refresh()

        result = fit(model, tx, v.train, data, seeds, checkpoints=store, run_meta=run_meta,
                     resume=bool(args.resume), force=args.force, pretrained=pretrained, on_epoch=on_epoch)
        bar.close()
        store.close()
        if result.interrupted:
            interrupted = True
            old_metrics[v.name] = {"group": v.group, "seeds": seeds, "history": result.history, "incomplete": True}
            break
        results[v.name] = summarize_variant(v, result, ds, eval_names)
        all_metrics = {**{k: m for k, m in old_metrics.items() if k not in results}, **results}
        runs.write_json(run_dir / runs.METRICS_FILE, all_metrics)
        runs.write_metrics_csv(run_dir / runs.METRICS_CSV, all_metrics)

    if interrupted:
        all_metrics = {**old_metrics, **results}
        runs.write_json(run_dir / runs.METRICS_FILE, all_metrics)
        runs.write_metrics_csv(run_dir / runs.METRICS_CSV, all_metrics)
        print(f"[{name}] interrupted; checkpoint saved. Continue with: python -m experiments.{name} "
              f"--resume {run_dir}", file=sys.stderr)
        return 130

    if not args.no_figures:
        write_figures(name, run_dir, results, plot_curves, plot_confusion)
    print(f"\n{name}: {ds.name} data, image {ds.image_shape[0]}x{ds.image_shape[1]}, "
          f"accuracy mean over seeds with 95% t-interval; grouped = mean over source cells")
    print(format_table(results, eval_names))
    print(f"\nrun folder: {run_dir}  ({time.perf_counter() - t_start:.0f} s)")
    return 0


_RESUME_FREE_TRAIN_FIELDS = ("epochs", "checkpoint_every", "epoch_mode", "eval_batch_size")


def check_resume_data(old: dict, args: argparse.Namespace) -> None:
    """Refuse (UserError) resuming a run with another data set or image size, before any data is loaded."""
    dataset = args.dataset or ("augmented" if args.data_dir else "originals")
    size = list(args.image_size) if args.image_size else list(DEFAULT_IMAGE_SIZE[dataset])
    old_data = old.get("data", {})
    have = [old_data.get("dataset"), list(old_data.get("image_shape", [])[:2])]
    if have != [dataset, size]:
        raise UserError(f"cannot resume: the run was trained on {have[0]} at {'x'.join(map(str, have[1]))}, "
                        f"now {dataset} at {size[0]}x{size[1]} (start a new run, or pass --force)")


def check_resume_config(old: dict, new: dict, run_dir: Path) -> None:
    """Refuse (UserError) resuming when data fingerprint, model/train config or seeds of a variant changed.

    Only `epochs`, `checkpoint_every`, `epoch_mode` and `eval_batch_size` may change on resume.
    """
    import json

    new = json.loads(json.dumps(new, default=str))  # tuples -> lists, as in the saved config
    diffs = []
    od, nd = old.get("data", {}), new.get("data", {})
    for key in ("dataset", "image_shape", "fingerprint"):
        if od.get(key) != nd.get(key):
            diffs.append(f"data {key} {od.get(key)} -> {nd.get(key)}")
    for vname, nv in new["variants"].items():
        ov = old.get("variants", {}).get(vname)
        if ov is None:
            continue  # a variant the old run never trained
        for key in ("model", "train", "seeds", "optimizer"):
            a, b = ov.get(key), nv.get(key)
            if key == "train" and isinstance(a, dict) and isinstance(b, dict):
                a = {k: x for k, x in a.items() if k not in _RESUME_FREE_TRAIN_FIELDS}
                b = {k: x for k, x in b.items() if k not in _RESUME_FREE_TRAIN_FIELDS}
            if isinstance(a, dict) and isinstance(b, dict):
                changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                if changed:
                    diffs.append(f"{vname} {key}: {', '.join(changed)}")
            elif a != b:
                diffs.append(f"{vname} {key} {a!r} -> {b!r}")
    if diffs:
        raise UserError(f"cannot resume {run_dir} with different settings: {'; '.join(diffs)} "
                        "(start a new run, or pass --force)")


def write_figures(name: str, run_dir: Path, results: dict[str, dict], plot_curves, plot_confusion) -> None:
    """One 2x2 curve figure per group of variants, one confusion matrix per variant."""
    groups: dict[str, dict[str, dict]] = {}
    for vname, r in results.items():
        groups.setdefault(r["group"] or name, {})[vname] = r["history"]
    for group, hists in groups.items():
        plot_curves(hists, run_dir / "figures" / f"curves_{group}.png", title=f"{name}: {group}")
    for vname, r in results.items():
        cm = np.asarray(r["final"]["test"]["confusion_matrix_summed_over_seeds"])
        plot_confusion(cm, run_dir / "figures" / f"confusion_{vname}.png",
                       title=f"{vname}: TEST, summed over {len(r['seeds'])} seeds")


def main_for(name: str, description: str, make_variants, add_arguments=None):
    """The `if __name__ == "__main__"` body of an experiment module."""
    sys.exit(run_cli(lambda argv: run_experiment(name, description, make_variants, argv, add_arguments)))


def preset_variant(name: str, arch: str, group: str = "", optimizer: str = "adam", epochs: int = 50,
                   num_seeds: int | None = None, **model_overrides) -> Variant:
    """A variant from an architecture preset and the study's optimizer settings."""
    return Variant(name=name, model=ModelConfig.preset(arch, **model_overrides),
                   train=TrainConfig(epochs=epochs, optimizer=optimizer), group=group, num_seeds=num_seeds)


__all__ = ["Variant", "run_experiment", "main_for", "preset_variant", "from_dict"]
