"""Running an experiment: a list of variants trained with the same seeds on the same data, into one run folder.

`run_experiment` parses the common flags, applies `--set` overrides to the declared variants
(bccd_jax.experiment), loads the data, trains every variant with all its seeds at once
(bccd_jax.train.fit), writes the run folder (bccd_jax.run) and prints the summary table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bccd_jax.config import ModelConfig, TrainConfig, field_names, replace
from bccd_jax.errors import ArgumentParser, UserError, WriteFailed, remedy, run_cli
from bccd_jax.experiment import Experiment, Variant
from bccd_jax.run import (DataRecord, RunFolder, RunRecord, VariantRecord, VariantResult, build, command_line,
                          finished_variant, git_commit, hardware, resume_problems, start_weights, timestamp, versions)
from bccd_jax.summary import CHANCE_BALANCED, format_table, majority_baseline, summarize_variant, write_figures


def make_parser(exp: Experiment) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=f"python -m experiments.{exp.name}", description=exp.description)
    names = ", ".join(f"{k} ({v.description})" for k, v in exp.protocols.items())
    p.add_argument("--protocol", choices=sorted(exp.protocols),
                   help=f"image size, seeds, batch size and epochs: {names}. Default: the first protocol for "
                        "the data set (the embedded originals unless --data-dir); the flags below override it")
    p.add_argument("--epochs", type=int, help="epochs for every variant (default: the protocol's)")
    p.add_argument("--seeds", type=int, help="seeds trained at once per variant, every variant (default: the "
                   "protocol's, which may give a group its own count; a resume keeps the run's)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed (seeds are offset..offset+S-1)")
    p.add_argument("--batch-size", type=int, help="default: the protocol's")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the protocol's")
    p.add_argument("--dataset", choices=["originals", "augmented"], default=None,
                   help="default: augmented when --data-dir is given, else the embedded originals")
    p.add_argument("--data-dir", help="the augmented Kaggle folder (dataset2-master) or an export file")
    p.add_argument("--crop", choices=["frame", "cell"],
                   help="frame: whole augmented images / the originals' WBC box (default, unless the protocol says "
                        "otherwise for this experiment); cell: each image cropped "
                        "around the white cell the localiser finds, at the cell's scale (bccd_jax.data.localize)")
    p.add_argument("--cache-dir", help="where built data sets are cached (default ~/.cache/bccd_jax)")
    p.add_argument("--out", default="runs", help="root of run folders (default ./runs)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                   help="continue a run folder (default: the latest run of this experiment under --out)")
    p.add_argument("--force", action="store_true", help="resume even if config or data fingerprint differ")
    p.add_argument("--variants", nargs="+", metavar="NAME", help="run only these variants")
    p.add_argument("--init-from", metavar="RUN_DIR",
                   help="the run folder whose trained weights the fine-tuning variants (init_variant) start from")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig/TrainConfig field in every variant, e.g. dropout=0.3 "
                        "augment.hue=10 schedule=cosine")
    p.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints (default: the protocol's)")
    p.add_argument("--no-progress", action="store_true", help="one log line per epoch instead of progress bars")
    p.add_argument("--no-figures", action="store_true", help="skip PNG figures")
    if exp.add_arguments:
        exp.add_arguments(p)
    return p


def parse_args(exp: Experiment, argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags, with the protocol's defaults filled in (`args.protocol` names it, `args.proto` is it)."""
    args = make_parser(exp).parse_args(argv)
    args.dataset = args.dataset or ("augmented" if args.data_dir else "originals")
    if args.dataset == "augmented" and not args.data_dir:
        raise UserError("--dataset augmented needs --data-dir (the dataset2-master folder or an export file)")
    if args.protocol is None:
        args.protocol = next((k for k, v in exp.protocols.items() if v.dataset == args.dataset),
                             next(iter(exp.protocols)))
    args.proto = exp.protocols[args.protocol]
    args.crop = args.crop or args.proto.crop_for(exp.name)
    args.set = [*args.proto.settings.get(exp.name, ()), *args.set]  # --set comes last: it wins
    args.seeds_flag = args.seeds  # given: it wins over every variant's own count (variant_seeds)
    args.seeds = args.proto.seeds if args.seeds is None else args.seeds
    args.batch_size = args.proto.batch_size if args.batch_size is None else args.batch_size
    args.checkpoint_every = args.proto.checkpoint_every if args.checkpoint_every is None else args.checkpoint_every
    args.image_size = tuple(args.image_size or args.proto.image_size)
    if args.seeds < 1:
        raise UserError("--seeds must be >= 1")
    return args


def _parse_value(text: str) -> Any:
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
    model_fields, train_fields = field_names(ModelConfig), field_names(TrainConfig)
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
    if args.init_from is not None and train_over.get("init_variant", v.train.init_variant):
        train_over["init_from"] = args.init_from
    return dataclasses.replace(v, model=replace(v.model, **model_over).validate(),
                               train=replace(v.train, **train_over).validate())


def select_variants(exp: Experiment, args: argparse.Namespace) -> list[Variant]:
    variants = [apply_overrides(v, args) for v in exp.variants(args)]
    if args.variants:
        unknown = set(args.variants) - {v.name for v in variants}
        if unknown:
            raise UserError(f"unknown variant(s) {sorted(unknown)}; this experiment has {[v.name for v in variants]}")
        variants = [v for v in variants if v.name in args.variants]
    return variants


def load_data(args: argparse.Namespace):
    """The data set named by the flags (embedded originals unless --data-dir)."""
    from bccd_jax.data import load_dataset

    return load_dataset(args.dataset, data_dir=args.data_dir, image_size=args.image_size, cache_dir=args.cache_dir,
                        crop=args.crop)


def data_record(ds, data_dir: str | None) -> DataRecord:
    return DataRecord(dataset=ds.name, image_shape=tuple(ds.image_shape), fingerprint=ds.fingerprint,
                      train_mean=tuple(float(m) for m in ds.train_mean()),
                      splits={s: int(sp.labels.size) for s, sp in ds.splits.items()},
                      source=Path(data_dir).name if data_dir else "embedded", crop=getattr(ds, "crop", "frame"))


# ----------------------------------------------------------------------------- the runner


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=True, dynamic_ncols=True)


def resumed_run(exp: Experiment, args: argparse.Namespace) -> tuple[RunFolder | None, RunRecord | None]:
    """The run folder --resume names and its record ((None, None) for a new run); a resume on another
    data set, image size or crop is refused here, before any data is loaded. A run started with --seeds
    keeps that count when resumed without the flag."""
    if not args.resume:
        return None, None
    folder = RunFolder.latest(args.out, exp.name) if args.resume == "latest" else RunFolder(args.resume)
    if not folder.exists():
        raise UserError(f"--resume {folder}: no config.json there; not a run folder")
    old = folder.record()
    have = [old.data.dataset, list(old.data.image_size), old.data.crop]
    if not args.force and have != [args.dataset, list(args.image_size), args.crop]:
        raise UserError(f"cannot resume: the run was trained on {have[0]} at {'x'.join(map(str, have[1]))} "
                        f"({have[2]} crop), now {args.dataset} at {args.image_size[0]}x{args.image_size[1]} "
                        f"({args.crop} crop) (start a new run, or pass --force)")
    if args.seeds_flag is None and old.seeds_flag is not None:
        args.seeds_flag = args.seeds = old.seeds_flag
    return folder, old


def variant_seeds(v: Variant, args) -> tuple[int, ...]:
    """The seeds a variant trains from --seed-offset: --seeds where given, else the variant's own count (a protocol's
    for its group), else the protocol's."""
    count = getattr(args, "seeds_flag", None) or v.num_seeds or args.seeds
    return tuple(range(args.seed_offset, args.seed_offset + count))


def variant_record(v: Variant, args) -> VariantRecord:
    """How config.json records variant `v` as these flags train it."""
    return VariantRecord(v.name, v.model, v.train, variant_seeds(v, args), v.group,
                         v.train.optimizer if v.optimizer is None else repr(v.optimizer))


def make_record(exp: Experiment, args, variants: Sequence[Variant], data: DataRecord, eval_splits,
                old: RunRecord | None, folder: RunFolder, command: str) -> RunRecord:
    """config.json of this invocation; resuming with other settings is refused before it is written."""
    records = {v.name: variant_record(v, args) for v in variants}
    record = RunRecord(experiment=exp.name, description=exp.description, protocol=args.protocol, data=data,
                       variants=records, eval_splits=tuple(eval_splits), command=command,
                       created=timestamp(), git_commit=git_commit(), versions=versions(), hardware=hardware(),
                       seeds_flag=getattr(args, "seeds_flag", None))
    if old is None:
        return record
    if not args.force:
        problems = resume_problems(old.to_json(), record.to_json())
        if problems:
            raise UserError(f"cannot resume {folder} with different settings: {'; '.join(problems)} "
                            "(start a new run, or pass --force)")
    print(f"[{exp.name}] resuming {folder}", file=sys.stderr)
    # variants of the old run that this invocation does not train stay described
    return dataclasses.replace(record, created=old.created, variants={**old.variants, **records},
                               previous_commands=old.previous_commands + [old.command],
                               resumed_from=old.resumed_from + [record.created])


def train_variant(exp: Experiment, args, v: Variant, record: RunRecord, folder: RunFolder, ds, data, start=None):
    """fit() one variant with its checkpoints, progress bar and per-epoch log line; `start`: the per-seed
    weights a fine-tuning variant starts from (bccd_jax.run.start_weights)."""
    from bccd_jax.train import fit

    vr = record.variants[v.name]
    built = build(v.model, v.train, record.data, optimizer=v.optimizer)
    if built.cut:  # train the top on the cached output of the frozen prefix
        from bccd_jax.features import cached_features
        from bccd_jax.data.train_data import TrainData

        folder.write_frozen(v.name, built.prefix)
        features = cached_features(ds, built.prefix, built.cut, args.cache_dir,
                                   log=lambda msg: print(msg, file=sys.stderr, flush=True))
        data = TrainData.from_dataset(ds, list(data.eval_sets), inputs=features)
    store = folder.checkpoints(v.name)
    for tmp in store.remove_temporaries():  # this process is the folder's one writer: no save is in progress
        print(f"[{exp.name}] removed {tmp}, the temporary folder of a checkpoint save that did not finish",
              file=sys.stderr)
    run_meta = {"model": dataclasses.asdict(v.model), "train": dataclasses.asdict(v.train),
                "data_fingerprint": ds.fingerprint, "image_shape": list(ds.image_shape), "variant": v.name,
                "optimizer": vr.optimizer}
    bar = _progress(v.train.epochs, v.name, not args.no_progress)

    def on_epoch(epoch: int, hist: dict):
        bar.n = epoch
        post = {"train": f"{np.mean(hist['train_acc'][-1]):.3f}", "test": f"{np.mean(hist['test_acc'][-1]):.3f}"}
        if args.no_progress:  # one plain line per epoch, for logs
            print(f"[{exp.name}] {v.name} epoch {epoch}/{v.train.epochs}: train acc {post['train']}, "
                  f"test acc {post['test']}", file=sys.stderr, flush=True)
            return
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    try:
        return fit(built.model, built.tx, v.train, data, list(vr.seeds), checkpoints=store, run_meta=run_meta,
                   resume=bool(args.resume), force=args.force, pretrained=built.pretrained,
                   start=start, on_epoch=on_epoch)
    finally:
        bar.close()
        store.close()


def run_experiment(exp: Experiment, argv: Sequence[str] | None = None) -> int:
    """Parse flags, train every variant (all seeds at once), write the run folder, print the summary.

    The run folder has one writer (RunFolder.writer): a resume takes its lock before loading the data; a new
    run makes its folder once the data is loaded and writes config.json right after taking the lock. A file
    that cannot be written is one line saying what the folder keeps and how to continue (`_advise`)."""
    from bccd_jax.runtime import enable_compilation_cache

    args = parse_args(exp, argv)
    enable_compilation_cache()
    t_start = time.perf_counter()
    variants = select_variants(exp, args)
    resumed, old = resumed_run(exp, args)
    # the weights fine-tuning variants start from, checked before a run folder is made
    starts = {v.name: start_weights(v.model, v.train, variant_seeds(v, args)) for v in variants}
    command = command_line() if argv is None else command_line(argv, f"experiments.{exp.name}")
    note = lambda msg: print(f"[{exp.name}] note: {msg}", file=sys.stderr)  # noqa: E731
    folder = resumed
    try:
        if resumed is not None:
            with resumed.writer(command, note):
                return _write_run(exp, args, variants, starts, resumed, old, command, t_start)
        ds = load_data(args)
        folder = RunFolder.create(args.out, exp.name)
        with folder.writer(command, note):
            return _write_run(exp, args, variants, starts, folder, None, command, t_start, ds)
    except WriteFailed as e:
        if folder is None:  # the data cache, before there was a run folder: its own advice stands
            raise
        raise _advise(e, exp, folder, variants) from e


def _advise(e: WriteFailed, exp: Experiment, folder: RunFolder, variants: Sequence[Variant]) -> WriteFailed:
    """A write failure of a run: what the run folder keeps, and the command that continues it."""
    saved = [f"{v.name} at epoch{'s' if len(eps) > 1 else ''} {', '.join(map(str, eps))}" for v in variants
             if (eps := folder.checkpoint_epochs(v.name))]
    kept = f"kept: the checkpoints of {'; '.join(saved)}" if saved else "kept: no checkpoint yet"
    kept += " and the run folder's other files as they were"
    then = f"continue with: python -m experiments.{exp.name} --resume {folder}" if folder.exists() else \
        "run the command again"
    return e.advise(kept, f"{remedy(e.__cause__)}, then {then}")


def _write_run(exp: Experiment, args, variants: Sequence[Variant], starts, folder: RunFolder, old: RunRecord | None,
               command: str, t_start: float, ds=None) -> int:
    """The part of run_experiment that writes the run folder, its writer lock held."""
    from bccd_jax.data.train_data import TrainData

    for tmp in folder.partial_files():  # this process is the folder's one writer: nothing else writes them
        tmp.unlink()
        print(f"[{exp.name}] removed {tmp}, a file a killed process was writing", file=sys.stderr)
    ds = load_data(args) if ds is None else ds
    eval_names = [s for s in ("test", "test_simple") if s in ds.splits]
    data = TrainData.from_dataset(ds, eval_names)
    record = make_record(exp, args, variants, data_record(ds, args.data_dir), eval_names, old, folder, command)
    folder.write_record(record)
    print(f"[{exp.name}] run folder: {folder}", file=sys.stderr)

    results = folder.results()
    for v in variants:
        if finished_variant(results.get(v.name), record.variants[v.name]):
            print(f"[{exp.name}] {v.name}: finished in {folder}, kept", file=sys.stderr)
            if not args.no_figures and not folder.confusion_figure(v.name).is_file():  # killed before its figures
                write_figures(exp.name, folder, results)
            continue
        result = train_variant(exp, args, v, record, folder, ds, data, starts[v.name])
        if result.interrupted:
            results[v.name] = VariantResult(v.name, {"group": v.group, "seeds": result.seeds,
                                                     "history": result.history, "incomplete": True})
            folder.write_results(results)
            print(f"[{exp.name}] interrupted; checkpoint saved. Continue with: python -m experiments.{exp.name} "
                  f"--resume {folder}", file=sys.stderr)
            return 130
        results[v.name] = VariantResult(v.name, summarize_variant(record.variants[v.name], result, ds, data))
        folder.write_results(results)
        if not args.no_figures:  # after every variant: a run stopped later still has the figures of what finished
            write_figures(exp.name, folder, results)

    done = {k: r for k, r in results.items() if k in {v.name for v in variants}}
    base, major = majority_baseline(ds.class_counts("test"))
    print(f"\n{exp.name}: {ds.name} data, image {ds.image_shape[0]}x{ds.image_shape[1]}, protocol {args.protocol}; "
          f"accuracy = mean over seeds (95% t-interval); balanced = mean recall over the 4 classes; leak-free = "
          f"TEST without cells seen in training; by cell = each cell weighted equally; ensemble = seeds' "
          f"probabilities averaged")
    print(format_table(done))
    print(f"majority-class baseline on TEST: accuracy {base:.3f} (always {major}), balanced accuracy {CHANCE_BALANCED:.3f}")
    if exp.expectation:
        print(exp.expectation)
    print(f"\nrun folder: {folder}  ({time.perf_counter() - t_start:.0f} s)")
    return 0


def main_for(exp: Experiment) -> None:
    """The `if __name__ == "__main__"` body of an experiment module."""
    sys.exit(run_cli(lambda argv: run_experiment(exp, argv)))
