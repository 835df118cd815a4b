"""What caching a frozen VGG16 prefix buys: an epoch on cached features vs the same epoch through the whole network.

    python -m benchmarks.vgg_cache [--size 60x80] [--policies blocks1-3 blocks1-4] [--rounds 3]

For each freeze policy that freezes a prefix of blocks, one Adam step of batch 32 is timed two ways,
back to back in each round: the top of the network on the prefix's output (what `experiments.vgg`
trains on cached features) and the whole VGG16 with the prefix frozen by optax (what it would run
without the cache). Both steps move the top's weights the same way (tests/test_vgg.py checks that).
Also timed: the prefix's forward pass per image, i.e. the one-off cost of filling the cache. Per-epoch
figures are step time x steps per epoch of the augmented TRAIN split (9957 images). The weights are
random: the cost of a step does not depend on their values. Writes benchmarks/vgg_cache.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_IMAGES = 9957
ALL_IMAGES = 12515  # TRAIN + TEST + TEST_SIMPLE of the augmented set


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="60x80", help="image size HxW")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--policies", nargs="+", default=["blocks1-3", "blocks1-4"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="steps timed per side and round (median)")
    p.add_argument("--out", type=Path, default=HERE / "vgg_cache.json")
    return p


def make_step(model, tx, p0, y, key):
    """One compiled Adam step of `model` on labels `y`, run in place on its own state: `run(inputs)`."""
    import jax
    import optax

    def step(p, opt, inputs):
        def loss(p):
            logits = model.apply({"params": p}, inputs, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        u, opt = tx.update(jax.grad(loss)(p), opt, p)
        return optax.apply_updates(p, u), opt
    fn = jax.jit(step)
    state = [p0, tx.init(p0)]

    def run(inputs):
        state[0], state[1] = fn(state[0], state[1], inputs)
        jax.block_until_ready(state[0])
    return run


def time_policy(a: argparse.Namespace, policy: str, cut: int, params, x, y, key) -> dict:
    """A step of the whole network with the prefix frozen against a step of the top on cached features, and
    the prefix's forward pass, timed in `a.rounds` rounds; their medians and per-epoch figures."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from bccd_jax.features import extract, split_weights
    from bccd_jax.models.vgg import VGG16
    from bccd_jax.transfer import freeze_vgg16

    conv = {k: {n: np.asarray(t) for n, t in v.items()} for k, v in params.items() if k.startswith("block")}
    prefix, _ = split_weights(conv, cut)
    feats = jnp.asarray(extract(prefix, cut, np.asarray(x), batch_size=a.batch_size))
    full, top = VGG16(), VGG16(first_block=cut + 1)
    top_params = {k: v for k, v in params.items() if k not in prefix}
    whole = make_step(full, freeze_vgg16(optax.adam(1e-4), params, policy), params, y, key)
    cached = make_step(top, optax.adam(1e-4), top_params, y, key)
    fill = jax.jit(lambda p, im: full.apply({"params": p}, im, cut, method=VGG16.features))
    prefix_params = {k: v for k, v in params.items() if k in prefix}
    t = time.perf_counter()
    whole(x)
    whole_compile = time.perf_counter() - t
    t = time.perf_counter()
    cached(feats)
    cached_compile = time.perf_counter() - t
    jax.block_until_ready(fill(prefix_params, x))
    per_round = []
    for r in range(a.rounds):
        tw = _median_time(lambda: whole(x), a.repeats)
        tc = _median_time(lambda: cached(feats), a.repeats)
        tf = _median_time(lambda: jax.block_until_ready(fill(prefix_params, x)), a.repeats)
        per_round.append(dict(whole_step_s=tw, cached_step_s=tc, prefix_batch_s=tf))
        print(f"{policy} round {r + 1}: whole network {tw * 1e3:,.0f} ms, cached features {tc * 1e3:,.0f} ms "
              f"({tw / tc:.1f}x), prefix forward {tf * 1e3:,.0f} ms a batch", flush=True)
    med = {k: statistics.median(d[k] for d in per_round) for k in per_round[0]}
    steps_per_epoch = math.ceil(TRAIN_IMAGES / a.batch_size)
    return dict(policy=policy, cut=cut, size=a.size, batch_size=a.batch_size, rounds=per_round, **med,
                ratio_per_round=[d["whole_step_s"] / d["cached_step_s"] for d in per_round],
                epoch_whole_s=med["whole_step_s"] * steps_per_epoch,
                epoch_cached_s=med["cached_step_s"] * steps_per_epoch,
                fill_cache_s=med["prefix_batch_s"] / a.batch_size * ALL_IMAGES,
                compile_whole_s=whole_compile, compile_cached_s=cached_compile)


def main(argv=None) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bccd_jax.models.vgg import VGG16
    from bccd_jax.run import command_line, hardware
    from bccd_jax.transfer import frozen_prefix

    a = make_parser().parse_args(argv)
    h, w = (int(v) for v in a.size.split("x"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 255, (a.batch_size, h, w, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, a.batch_size))
    params = VGG16().init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x[:1])["params"]
    rows = []
    for policy in a.policies:
        cut = frozen_prefix(policy)
        if not cut:
            print(f"error: {policy} does not freeze a prefix of blocks", file=sys.stderr)
            return 2
        rows.append(time_policy(a, policy, cut, params, x, y, jax.random.key(7)))
    res = dict(command=command_line(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               hardware=hardware(), train_images=TRAIN_IMAGES, all_images=ALL_IMAGES, rows=rows)
    a.out.write_text(json.dumps(res, indent=1))
    print("| policy | size | whole network s/epoch | cached features s/epoch | ratio | filling the cache s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['policy']} | {r['size']} | {r['epoch_whole_s']:,.0f} | {r['epoch_cached_s']:,.0f} | "
              f"{r['epoch_whole_s'] / r['epoch_cached_s']:.1f}x | {r['fill_cache_s']:,.0f} |")
    print(f"wrote {a.out}")
    if a.out.parent == HERE:  # the section of benchmarks/RESULTS.md
        from benchmarks.report import write_report
        write_report(HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
