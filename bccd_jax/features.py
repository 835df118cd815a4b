"""Cached features of a frozen VGG16 prefix: computed once, reused by every epoch and every seed.

A freeze policy that freezes the first k blocks whole (bccd_jax.transfer.frozen_prefix) makes
blocks 1..k a fixed function of each image, as long as nothing random acts before the cut (no
augmentation: VGG16 has no dropout before its head). Its output is computed once per (weights
file, k, image size, data set) and stored as one memory-mapped .npy per split; training then
runs the top of the network (`VGG16(first_block=k + 1)`, the same layer names) on it, with the
same `fit`. Prediction rebuilds the full network from the run folder: the frozen prefix's
weights are saved there beside the checkpoints of the top.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bccd_jax.files import write_atomic
from bccd_jax.models.vgg import CONV_NAMES, VGG16, ConvWeights, block_of

FORMAT = 1
"""Bump when the stored features would change for the same inputs."""


def split_weights(conv: ConvWeights, cut: int) -> tuple[ConvWeights, ConvWeights]:
    """(prefix: blocks 1..cut, top: blocks cut+1..5) of a VGG16 conv-weights dict."""
    prefix = {n: w for n, w in conv.items() if block_of(n) <= cut}
    top = {n: w for n, w in conv.items() if block_of(n) > cut}
    return prefix, top


def extract(prefix: Mapping[str, Mapping[str, np.ndarray]], cut: int, images: np.ndarray,
            batch_size: int = 64) -> np.ndarray:
    """The output of VGG16 blocks 1..cut (caffe preprocessing included) for uint8 images, float32."""
    model = VGG16()
    params = {n: {k: jnp.asarray(v) for k, v in w.items()} for n, w in prefix.items()}
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, cut, method=VGG16.features))
    n = len(images)
    out = None
    for start in range(0, n, batch_size):
        chunk = np.asarray(images[start:start + batch_size])
        if len(chunk) < batch_size:  # one compiled shape: pad the last batch
            chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        f = np.asarray(fn(params, chunk))
        if out is None:
            out = np.empty((n, *f.shape[1:]), np.float32)
        out[start:start + batch_size] = f[: min(batch_size, n - start)]
    return out


def weights_digest(conv: ConvWeights) -> str:
    """sha256 over the given conv layers' weights themselves (file format and path do not matter)."""
    h = hashlib.sha256()
    for name in (n for n in CONV_NAMES if n in conv):
        h.update(name.encode())
        for part in ("kernel", "bias"):
            h.update(np.ascontiguousarray(conv[name][part], np.float32).tobytes())
    return h.hexdigest()


def cached_features(ds, prefix: ConvWeights, cut: int, cache_dir: str | Path | None = None,
                    log=print) -> dict[str, np.ndarray]:
    """{split: features} of VGG16 blocks 1..cut (weights `prefix`) over every split of `ds`, memory-mapped.

    Keyed by the weights' digest, the cut, the data set's fingerprint and image shape: any change
    computes (and atomically writes) new files; the same key is read back without recomputing.
    """
    from bccd_jax.data import default_cache_dir

    key = hashlib.sha256(json.dumps({"weights": weights_digest(prefix), "cut": cut, "data": ds.fingerprint,
                                     "shape": list(ds.image_shape), "format": FORMAT}).encode()).hexdigest()
    h, w = ds.image_shape[:2]
    folder = Path(cache_dir or default_cache_dir()) / "features" / f"vgg16-blocks1-{cut}-{h}x{w}-{key[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, sp in ds.splits.items():
        path = folder / f"{split}.npy"
        if not path.exists():
            t = time.perf_counter()
            feats = extract(prefix, cut, sp.images)
            write_atomic(path, lambda f: np.save(f, feats))
            log(f"[bccd_jax.features] VGG16 blocks 1-{cut} on {len(feats)} {split} images: "
                f"{time.perf_counter() - t:.1f} s -> {path}")
        out[split] = np.load(path, mmap_mode="r")
    return out
