"""Image transforms in JAX: random augmentation inside the jitted train step, and the same
transforms with fixed strengths for the robustness suite (bccd_jax.robustness).

Every function takes and returns float32 NHWC images on the 0..255 scale. `augment_batch`
draws each image's parameters from one key (the step's `fold_in` key), so a run and its
resumption see the same augmented batches; with every strength at zero it is never called
and the train step is the one without augmentation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bccd_jax.config import AugmentConfig

# --------------------------------------------------------------------------- colour (0..1 inside)

_LUMA = jnp.asarray([0.299, 0.587, 0.114], jnp.float32)
_RGB_TO_YIQ = jnp.asarray([[0.299, 0.587, 0.114],
                           [0.596, -0.274, -0.322],
                           [0.211, -0.523, 0.312]], jnp.float32)
_YIQ_TO_RGB = jnp.linalg.inv(_RGB_TO_YIQ)
# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB) as in scikit-image's rgb2hed:
# rows are the optical densities of one unit of each stain in R, G, B.
_RGB_FROM_HED = jnp.asarray([[0.65, 0.70, 0.29],
                             [0.07, 0.99, 0.11],
                             [0.27, 0.57, 0.78]], jnp.float32)
_HED_FROM_RGB = jnp.linalg.inv(_RGB_FROM_HED)
_OD_FLOOR = 1.0 / 255.0  # a black pixel's optical density stays finite


def _per_image(v: jnp.ndarray) -> jnp.ndarray:
    """A scalar or (B,) parameter shaped to broadcast over (B, H, W, C)."""
    v = jnp.asarray(v, jnp.float32)
    return v.reshape(v.shape + (1,) * (4 - v.ndim)) if v.ndim <= 1 else v


def adjust_brightness(x01: jnp.ndarray, delta) -> jnp.ndarray:
    return x01 + _per_image(delta)


def adjust_contrast(x01: jnp.ndarray, factor) -> jnp.ndarray:
    mean = x01.mean(axis=(-3, -2, -1), keepdims=True)
    return mean + _per_image(factor) * (x01 - mean)


def adjust_saturation(x01: jnp.ndarray, factor) -> jnp.ndarray:
    grey = (x01 @ _LUMA)[..., None]
    return grey + _per_image(factor) * (x01 - grey)


def rotate_hue(x01: jnp.ndarray, degrees) -> jnp.ndarray:
    """Rotate the chroma (I, Q) plane of YIQ by `degrees`: hues turn, luma stays."""
    t = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    c, s = jnp.cos(t), jnp.sin(t)
    one, zero = jnp.ones_like(c), jnp.zeros_like(c)
    rot = jnp.stack([jnp.stack([one, zero, zero], -1), jnp.stack([zero, c, -s], -1),
                     jnp.stack([zero, s, c], -1)], -2)  # (..., 3, 3)
    m = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ
    if m.ndim == 2:
        return x01 @ m.T
    return jnp.einsum("bhwc,bdc->bhwd", x01, m)


def adjust_gamma(x01: jnp.ndarray, gamma) -> jnp.ndarray:
    return jnp.clip(x01, 0.0, 1.0) ** _per_image(gamma)


def stain_shift(x01: jnp.ndarray, scale, bias) -> jnp.ndarray:
    """Optical density -> H, E, D stain amounts, each scaled by `scale` and shifted by `bias`
    ((3,) or (B, 3)), then back to RGB: a different stain batch or staining time."""
    od = -jnp.log(jnp.maximum(x01, _OD_FLOOR))
    hed = od @ _HED_FROM_RGB
    scale, bias = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
    if scale.ndim == 2:
        scale, bias = scale[:, None, None, :], bias[:, None, None, :]
    od = (hed * scale + bias) @ _RGB_FROM_HED
    return jnp.exp(-od)


# --------------------------------------------------------------------------- geometry


def affine_warp(x: jnp.ndarray, inverse: jnp.ndarray) -> jnp.ndarray:
    """Resample each image through a 2x3 map from output to source coordinates.

    `inverse` (B, 2, 3) acts on (y, x, 1) measured in pixels from the image centre. Bilinear
    interpolation; source points outside the image read black (Keras' constant fill).
    """
    b, h, w, c = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx,
                          indexing="ij")
    grid = jnp.stack([yy.ravel(), xx.ravel(), jnp.ones(h * w, jnp.float32)], -1)  # (HW, 3)
    src = jnp.einsum("bij,pj->bpi", inverse, grid)
    sy, sx = src[..., 0] + cy, src[..., 1] + cx
    y0, x0 = jnp.floor(sy), jnp.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    flat = x.reshape(b, h * w, c)

    def tap(yi, xi):
        inside = ((yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1))[..., None]
        idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        return jnp.take_along_axis(flat, idx[..., None], axis=1) * inside

    out = (tap(y0, x0) * (1 - fy) * (1 - fx) + tap(y0, x0 + 1) * (1 - fy) * fx
           + tap(y0 + 1, x0) * fy * (1 - fx) + tap(y0 + 1, x0 + 1) * fy * fx)
    return out.reshape(b, h, w, c)


def inverse_affine(angle, scale, shift_yx, flip_y, flip_x) -> jnp.ndarray:
    """(B, 2, 3) output->source maps of: flip, then rotate by `angle` (radians), zoom by
    `scale` about the centre, shift by `shift_yx` pixels (all (B,) except shift (B, 2))."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    fy, fx = jnp.where(flip_y, -1.0, 1.0), jnp.where(flip_x, -1.0, 1.0)
    # source = F R(-angle) (output - shift) / scale, with F = diag(fy, fx) its own inverse
    a = jnp.stack([jnp.stack([fy * c, fy * s], -1), jnp.stack([-fx * s, fx * c], -1)], -2) / scale[:, None, None]
    t = -jnp.einsum("bij,bj->bi", a, shift_yx)
    return jnp.concatenate([a, t[..., None]], -1)


def flip_batch(x: jnp.ndarray, flip_y, flip_x) -> jnp.ndarray:
    """Exact pixel flips per image (no resampling)."""
    x = jnp.where(_per_image(flip_y) > 0, x[:, ::-1], x)
    return jnp.where(_per_image(flip_x) > 0, x[:, :, ::-1], x)


# --------------------------------------------------------------------------- random augmentation


_TAGS = {name: i for i, name in enumerate(
    ("stain_scale", "stain_bias", "brightness", "contrast", "saturation", "hue", "gamma",
     "flip_y", "flip_x", "rot90", "rotate", "scale", "shift"))}
"""One fold_in tag per random parameter: switching one transform on or off leaves the others' draws alone."""


def augment_batch(key: jax.Array, images: jnp.ndarray, cfg: AugmentConfig) -> jnp.ndarray:
    """A randomly augmented copy of `images` (uint8 or float, 0..255) as float32 0..255.

    Colour first, then geometry, so the black fill of a warp stays black as in the data set.
    """
    x = images.astype(jnp.float32)
    b, h, w = x.shape[:3]

    def uniform(name, bound, shape=(b,)):
        return jax.random.uniform(jax.random.fold_in(key, _TAGS[name]), shape, jnp.float32, -bound, bound)

    def coin(name):
        return jax.random.bernoulli(jax.random.fold_in(key, _TAGS[name]), 0.5, (b,))

    if cfg.colour:
        x = x / 255.0
        if cfg.stain:
            x = stain_shift(x, 1.0 + uniform("stain_scale", cfg.stain, (b, 3)), uniform("stain_bias", cfg.stain, (b, 3)))
        if cfg.brightness:
            x = adjust_brightness(x, uniform("brightness", cfg.brightness))
        if cfg.contrast:
            x = adjust_contrast(x, 1.0 + uniform("contrast", cfg.contrast))
        if cfg.saturation:
            x = adjust_saturation(x, 1.0 + uniform("saturation", cfg.saturation))
        if cfg.hue:
            x = rotate_hue(x, uniform("hue", cfg.hue))
        if cfg.gamma:
            x = adjust_gamma(x, jnp.exp(uniform("gamma", cfg.gamma)))
        x = jnp.clip(x, 0.0, 1.0) * 255.0
    if cfg.geometric:
        no = jnp.zeros((b,), bool)
        flip_y, flip_x = (coin("flip_y"), coin("flip_x")) if cfg.flip else (no, no)
        if cfg.flip and not (cfg.rot90 or cfg.rotate or cfg.shift or cfg.scale):
            return flip_batch(x, flip_y, flip_x)
        angle = jnp.zeros((b,), jnp.float32)
        if cfg.rot90:
            turns = jax.random.randint(jax.random.fold_in(key, _TAGS["rot90"]), (b,), 0, 4)
            angle += turns.astype(jnp.float32) * (math.pi / 2)
        if cfg.rotate:
            angle += jnp.deg2rad(uniform("rotate", cfg.rotate))
        scale = jnp.exp(uniform("scale", math.log1p(cfg.scale))) if cfg.scale else jnp.ones((b,), jnp.float32)
        shift = uniform("shift", cfg.shift, (b, 2)) * jnp.asarray([h, w], jnp.float32) if cfg.shift \
            else jnp.zeros((b, 2), jnp.float32)
        x = affine_warp(x, inverse_affine(angle, scale, shift, flip_y, flip_x))
    return x


def tta_flips(images: jnp.ndarray) -> list[jnp.ndarray]:
    """The four flips of a batch (identity, vertical, horizontal, both), for test-time averaging."""
    return [images, images[:, ::-1], images[:, :, ::-1], images[:, ::-1, ::-1]]
