"""Where a training step's time goes: each convolution of a CNN preset, forward and both gradients,
in JAX (XLA:CPU) and PyTorch eager, side by side.

    python -m benchmarks.layers                          # deep CNN, 60x80, batch 32
    python -m benchmarks.layers --model base --size 120x160

For every conv layer of the preset at its input shape (VALID 3x3 convolutions and 2x2 pools, as
bccd_jax.models.cnn.CNN): the forward convolution, the input gradient (dx, the backward pass's
data path; the first layer needs none in training) and the kernel gradient (dk), each timed on
its own (JAX's kernel gradient twice: bccd_jax's Conv layer's, dk, and XLA's own, dk_xla); then
the whole step's forward and forward+backward of the model, to show what the convolutions leave
to everything else (bias, ReLU, pooling, dense layers, the loss). JAX times
jitted `lax.conv_general_dilated` and its VJPs in NHWC/HWIO (the layout flax uses); PyTorch times
`conv2d` and `aten.convolution_backward` with one output at a time in NCHW. Each op is timed JAX
then PyTorch in every round, so machine load hits both alike; the table gives medians over rounds.
Writes layers.json to --out-dir and RESULTS.md there through benchmarks.report.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # `python benchmarks/layers.py`
    sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from bccd_jax.errors import ArgumentParser, UserError, run_cli  # noqa: E402  (imports bccd_jax first)
from bccd_jax.models.cnn import feature_map_size  # noqa: E402

OPS = ("fwd", "dx", "dk", "dk_xla")
"""dk is the kernel gradient bccd_jax's Conv layer computes (bccd_jax.models.conv: in batch chunks on CPU);
dk_xla is XLA's own, for reference, against the same PyTorch op."""


def conv_shapes(cfg, hw: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(H, W, C_in, C_out) at the input of every conv layer of `cfg` for images of `hw`."""
    if cfg.padding != "VALID":
        raise UserError(f"benchmarks.layers follows VALID convolutions; the {cfg.arch} config has {cfg.padding}")
    (h, w), c, out = hw, 3, []
    for block in cfg.conv_blocks:
        for features in block:
            out.append((h, w, c, features))
            h, w, c = h - cfg.kernel_size + 1, w - cfg.kernel_size + 1, features
        h, w = h // 2, w // 2
    feature_map_size(cfg, hw)
    return out


def timed(fn, min_seconds: float, repeats: int) -> float:
    """Median seconds of one call of `fn` (which waits for its result), over `repeats` timed repeats
    of as many calls as fill `min_seconds`."""
    fn()
    t0 = time.perf_counter()
    fn()
    calls = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls)
    return statistics.median(out)


def jax_ops(shape, k: int, batch: int, rng) -> dict:
    import jax
    from jax import lax

    from bccd_jax.models.conv import conv_bias

    h, w, ci, co = shape
    x = jax.device_put(rng.standard_normal((batch, h, w, ci)).astype(np.float32))
    kern = jax.device_put((0.1 * rng.standard_normal((k, k, ci, co))).astype(np.float32))

    def conv(x, kern):
        return lax.conv_general_dilated(x, kern, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    g = jax.device_put(rng.standard_normal(conv(x, kern).shape).astype(np.float32))
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, kern, g: jax.vjp(lambda x: conv(x, kern), x)[1](g)[0])
    dk = jax.jit(lambda x, kern, g: jax.vjp(lambda kern: conv_bias(x, kern, None, "VALID"), kern)[1](g)[0])
    dk_xla = jax.jit(lambda x, kern, g: jax.vjp(lambda kern: conv(x, kern), kern)[1](g)[0])
    return {"fwd": lambda: fwd(x, kern).block_until_ready(), "dx": lambda: dx(x, kern, g).block_until_ready(),
            "dk": lambda: dk(x, kern, g).block_until_ready(), "dk_xla": lambda: dk_xla(x, kern, g).block_until_ready()}


def torch_ops(shape, k: int, batch: int, rng) -> dict:
    import torch
    import torch.nn.functional as F

    h, w, ci, co = shape
    x = torch.from_numpy(rng.standard_normal((batch, ci, h, w)).astype(np.float32))
    kern = torch.from_numpy((0.1 * rng.standard_normal((co, ci, k, k))).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal((batch, co, h - k + 1, w - k + 1)).astype(np.float32))

    def backward(mask):
        return torch.ops.aten.convolution_backward(g, x, kern, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)

    @torch.no_grad()
    def fwd():
        return F.conv2d(x, kern)

    dk = lambda: backward([False, True, False])  # noqa: E731
    return {"fwd": fwd, "dx": lambda: backward([True, False, False]), "dk": dk, "dk_xla": dk}


def model_ops(cfg, hw, batch: int, rng) -> dict[str, dict]:
    """The whole model's forward and forward+backward (the loss's gradient), per framework."""
    import jax
    import optax
    import torch
    import torch.nn.functional as F

    from bccd_jax.models import build_model
    from benchmarks.torch_cnn import TorchCNN

    images = rng.integers(0, 256, (batch, *hw, 3)).astype(np.uint8)
    labels = rng.integers(0, 4, batch).astype(np.int32)
    model = build_model(cfg)
    params = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, images[:1])["params"]
    xj, yj = jax.device_put(images), jax.device_put(labels)

    def loss(p, x, y):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    jfwd, jgrad = jax.jit(loss), jax.jit(jax.grad(loss))
    net = TorchCNN(cfg, hw).train()
    xt = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW; the net scales it
    yt = torch.from_numpy(labels).long()

    @torch.no_grad()
    def tfwd():
        return F.cross_entropy(net(xt), yt)

    def tgrad():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(xt), yt).backward()

    return {"jax": {"model_fwd": lambda: jfwd(params, xj, yj).block_until_ready(),
                    "model_fwd_bwd": lambda: jax.block_until_ready(jgrad(params, xj, yj))},
            "torch": {"model_fwd": tfwd, "model_fwd_bwd": tgrad}}


def main(argv=None) -> dict:
    p = ArgumentParser(prog="python -m benchmarks.layers", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deep", choices=["base", "expanded", "deep"])
    p.add_argument("--size", default="60x80", help="image size HxW")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="JAX-then-PyTorch rounds per op")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per round (their median is the round's)")
    p.add_argument("--min-seconds", type=float, default=0.5, help="calls per repeat until a repeat lasts this long")
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: PyTorch's own)")
    p.add_argument("--out-dir", type=Path, default=HERE)
    a = p.parse_args(argv)
    from benchmarks.bench import cpu_name, model_config, parse_size, versions

    hw = parse_size(a.size)
    if min(a.rounds, a.repeats, a.batch_size) < 1:
        raise UserError("--rounds, --repeats and --batch-size must be >= 1")
    cfg = model_config(a.model)
    shapes = conv_shapes(cfg, hw)
    import torch

    from bccd_jax.run import command_line, cpu_flags
    from benchmarks.report import write_report

    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    rng = np.random.default_rng(0)
    rows = []

    def measure(label: str, fns: dict, **row) -> None:
        """One row: `fns[fw]` timed JAX then PyTorch in every round."""
        row.update(jax_s=[], torch_s=[])
        for _ in range(a.rounds):
            for fw in ("jax", "torch"):
                row[f"{fw}_s"].append(timed(fns[fw], a.min_seconds, a.repeats))
        rows.append(row)
        print(f"{label}: JAX {statistics.median(row['jax_s']) * 1e3:.1f} ms, PyTorch "
              f"{statistics.median(row['torch_s']) * 1e3:.1f} ms", file=sys.stderr, flush=True)

    for i, shape in enumerate(shapes):
        ops = {"jax": jax_ops(shape, cfg.kernel_size, a.batch_size, rng),
               "torch": torch_ops(shape, cfg.kernel_size, a.batch_size, rng)}
        for op in OPS:
            measure(f"conv {i + 1} {shape} {op}", {fw: ops[fw][op] for fw in ops},
                    layer=i + 1, input=list(shape), op=op)
    whole = model_ops(cfg, hw, a.batch_size, rng)
    for op in ("model_fwd", "model_fwd_bwd"):
        measure(op, {fw: whole[fw][op] for fw in whole}, layer=None, input=None, op=op)
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command_line(argv),
           "machine": cpu_name(), "cpu_flags": cpu_flags(), "versions": versions(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "torch_threads": torch.get_num_threads(),
           "model": a.model, "size": a.size, "batch_size": a.batch_size, "rows": rows,
           "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / "layers.json").write_text(json.dumps(res, indent=1))
    write_report(a.out_dir)
    return res


def cli(argv=None) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))
