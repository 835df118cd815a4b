"""A fixed, seeded suite of image shifts that stand in for other labs' microscopes, cameras and stains.

Each shift is applied at several strengths to uint8 images of the model's input size and the
result is quantised back to uint8, as a real image would be: hue rotation, saturation,
brightness, gamma, Gaussian blur, JPEG quality, rescaling about the centre (crop or black
pad) and a stain shift in optical density (the H, E and D channels of Ruifrok & Johnston's
decomposition scaled and shifted). Signed shifts draw each image's sign from a fixed seed, so
the suite is the same on every run and machine. `evaluate_suite` scores a restored run on it.

`LAB_SUITE` stands for labs the project has no images of, each shift built from a way a model trained
on BCCD alone failed on another lab's real images: a yellow cast with the cell filling the frame (a rapid
stain of another maker, cells photographed larger), a grey, blurred, low-contrast picture (a routine
microscope camera), and another stain's colours (the H and E stain vectors mixed or swapped, or both
turned). Its mean (`lab_mean`) is reported apart from the suite mean.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFilter

from bccd_jax import augment

SEED = 0


@dataclass(frozen=True)
class Shift:
    name: str
    unit: str
    strengths: tuple[float, ...]
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]  # uint8 NHWC -> uint8 NHWC


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.asarray([-1.0, 1.0], np.float32), n)


def _colour(fn) -> Callable[[np.ndarray, float, np.random.Generator], np.ndarray]:
    """A 0..1 colour transform of bccd_jax.augment applied to uint8 images and quantised back."""
    def apply(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
        y = fn(jnp.asarray(x, jnp.float32) / 255.0, s, rng, len(x))
        return np.asarray(jnp.round(jnp.clip(y, 0.0, 1.0) * 255.0)).astype(np.uint8)
    return apply


def _per_image(x: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(im)).convert("RGB")) for im in x])


def _jpeg(x: np.ndarray, quality: float, rng) -> np.ndarray:
    def roundtrip(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(quality))
        return Image.open(io.BytesIO(buf.getvalue()))
    return _per_image(x, roundtrip)


def _rescale(x: np.ndarray, factor: float, rng) -> np.ndarray:
    n = len(x)
    inv = augment.inverse_affine(jnp.zeros(n), jnp.full(n, factor, jnp.float32), jnp.zeros((n, 2)),
                                 jnp.zeros(n, bool), jnp.zeros(n, bool))
    y = augment.affine_warp(jnp.asarray(x, jnp.float32), inv)
    return np.asarray(jnp.round(jnp.clip(y, 0, 255))).astype(np.uint8)


def _rescaled(apply):
    """`apply` (uint8 in and out) after a zoom about the centre by 1 + 1.5 s: the cell fills more of the frame."""
    return lambda x, s, rng: _rescale(apply(x, s, rng), 1.0 + 1.5 * s, rng)


def _yellow(x01, s, rng, n):
    return augment.colour_cast(x01, jnp.asarray([1.0 + 0.5 * s, 1.0 + 0.3 * s, 1.0 - s]))


def _grey_blur(x: np.ndarray, s: float, rng) -> np.ndarray:
    washed = _colour(lambda x01, s, rng, n: augment.adjust_contrast(augment.adjust_saturation(x01, 1.0 - 2.0 * s),
                                                                    1.0 - s))(x, s, rng)
    return _per_image(washed, lambda im: im.filter(ImageFilter.GaussianBlur(3.0 * s)))


def _stain(x01, s, rng, n):
    directions = rng.choice(np.asarray([-1.0, 1.0], np.float32), (n, 3))
    return augment.stain_shift(x01, 1.0 + s * directions, 0.5 * s * rng.choice(np.asarray([-1.0, 1.0], np.float32),
                                                                                 (n, 3)))


SUITE: tuple[Shift, ...] = (
    Shift("hue", "degrees (sign per image)", (10.0, 20.0, 40.0),
          _colour(lambda x, s, rng, n: augment.rotate_hue(x, jnp.asarray(s * _signs(rng, n))))),
    Shift("saturation", "factor", (0.5, 0.75, 1.5),
          _colour(lambda x, s, rng, n: augment.adjust_saturation(x, s))),
    Shift("brightness", "added on 0..1 (sign per image)", (0.1, 0.2, 0.3),
          _colour(lambda x, s, rng, n: augment.adjust_brightness(x, jnp.asarray(s * _signs(rng, n))))),
    Shift("gamma", "exponent", (0.5, 0.75, 1.5, 2.0),
          _colour(lambda x, s, rng, n: augment.adjust_gamma(x, s))),
    Shift("blur", "Gaussian sigma, px at the model's size", (0.5, 1.0, 2.0),
          lambda x, s, rng: _per_image(x, lambda im: im.filter(ImageFilter.GaussianBlur(s)))),
    Shift("jpeg", "quality", (50.0, 20.0, 10.0), _jpeg),
    Shift("rescale", "zoom about the centre (<1 pads black, >1 crops)", (0.6, 0.8, 1.25, 1.5), _rescale),
    Shift("stain", "H/E/D scale 1+-s and shift +-s/2 (directions per image)", (0.1, 0.2, 0.3), _colour(_stain)),
)


LAB_SUITE: tuple[Shift, ...] = (
    Shift("yellow_fill", "yellow cast (R x1+s/2, G x1+0.3s, B x1-s) and zoom 1+1.5s", (0.1, 0.2, 0.3),
          _rescaled(_colour(_yellow))),
    Shift("grey_blur", "saturation x1-2s, contrast x1-s, Gaussian blur sigma 3s px", (0.2, 0.3, 0.4), _grey_blur),
    Shift("stain_swap", "H and E stain vectors mixed, t of the other's (1: swapped)", (0.25, 0.5, 1.0),
          _colour(lambda x01, t, rng, n: augment.restain(x01, augment.swapped_stains(t)))),
    Shift("stain_turn", "H and E stain vectors turned in their plane (degrees)", (15.0, 30.0, 45.0),
          _colour(lambda x01, deg, rng, n: augment.restain(x01, augment.rotated_stains(deg)))),
)


def shifted(images: np.ndarray, shift: Shift, strength: float) -> np.ndarray:
    """`images` (uint8 NHWC) under one shift at one strength; the same result on every call."""
    index = SUITE.index(shift) if shift in SUITE else 100 + LAB_SUITE.index(shift)
    rng = np.random.default_rng([SEED, index, int(round(strength * 1000))])
    return shift.apply(np.asarray(images), strength, rng)


def evaluate_suite(restored, images: np.ndarray, labels: np.ndarray, log=None) -> dict:
    """Per-seed accuracy of a restored run on clean `images` and under every shift and strength.

    Returns {"clean": [per seed], "shifts": {name: {"unit", "strengths", "acc": [[per seed] per strength]}},
    "suite_mean": [per seed], "lab_mean": [per seed]} (suite mean: the mean over SUITE's shifts and strengths;
    lab mean: over LAB_SUITE's; "shifts" holds both).
    """
    def acc(x):
        return (restored.logits(x).argmax(-1) == labels[None]).mean(axis=1)

    out = {"clean": acc(images).tolist(), "shifts": {}}
    for suite, key in ((SUITE, "suite_mean"), (LAB_SUITE, "lab_mean")):
        everything = []
        for shift in suite:
            per = []
            for s in shift.strengths:
                per.append(acc(shifted(images, shift, s)))
                if log:
                    log(f"{shift.name} {s:g}: accuracy {per[-1].mean():.3f}")
            everything += per
            out["shifts"][shift.name] = {"unit": shift.unit, "strengths": list(shift.strengths),
                                         "acc": [a.tolist() for a in per]}
        out[key] = np.mean(everything, axis=0).tolist()
    return out


def subset(n: int, stride: int) -> np.ndarray:
    """Every `stride`-th index of n: the suite's share of TEST (the suite is as long as 27 TEST passes)."""
    return np.arange(0, n, max(1, stride))


def names() -> Sequence[str]:
    return [s.name for s in SUITE + LAB_SUITE]
