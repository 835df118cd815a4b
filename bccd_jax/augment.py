"""Image transforms in JAX: random augmentation inside the jitted train step, and the same
transforms with fixed strengths for the robustness suite (bccd_jax.robustness).

Every function takes and returns float32 NHWC images on the 0..255 scale. `augment_batch`
draws each image's parameters from one key (the step's `fold_in` key), so a run and its
resumption see the same augmented batches; with every strength at zero it is never called
and the train step is the one without augmentation. The draws (`draw_augment`) are apart
from their application (`apply_augment`), so another implementation can replay them.
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


def colour_cast(x01: jnp.ndarray, gains) -> jnp.ndarray:
    """Each of R, G, B multiplied by its gain ((3,) or (B, 3)): the tint of a lamp or a camera's white balance."""
    gains = jnp.asarray(gains, jnp.float32)
    return x01 * (gains[:, None, None, :] if gains.ndim == 2 else gains)


def stain_amounts(x01: jnp.ndarray) -> jnp.ndarray:
    """The H, E, D stain amounts of each pixel (Ruifrok & Johnston's colour deconvolution of optical density)."""
    return -jnp.log(jnp.maximum(x01, _OD_FLOOR)) @ _HED_FROM_RGB


def stain_shift(x01: jnp.ndarray, scale, bias) -> jnp.ndarray:
    """Optical density -> H, E, D stain amounts, each scaled by `scale` and shifted by `bias`
    ((3,) or (B, 3)), then back to RGB: a different stain batch or staining time."""
    hed = stain_amounts(x01)
    scale, bias = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
    if scale.ndim == 2:
        scale, bias = scale[:, None, None, :], bias[:, None, None, :]
    od = (hed * scale + bias) @ _RGB_FROM_HED
    return jnp.exp(-od)


def restain(x01: jnp.ndarray, rgb_from_hed) -> jnp.ndarray:
    """The image's H, E, D stain amounts (Ruifrok & Johnston) rendered with other stain vectors `rgb_from_hed`
    (3x3, rows: the optical density of one unit of each stain): the same slide stained with another stain's
    colours."""
    return jnp.exp(-(stain_amounts(x01) @ jnp.asarray(rgb_from_hed, jnp.float32)))


def rotated_stains(degrees: float) -> jnp.ndarray:
    """Ruifrok & Johnston's stain vectors with H and E both turned by `degrees` in the plane they span."""
    h, e, d = (jnp.asarray(v) for v in _RGB_FROM_HED)
    u = h / jnp.linalg.norm(h)
    v = e - (e @ u) * u
    v = v / jnp.linalg.norm(v)
    t = jnp.deg2rad(degrees)

    def turn(s):
        a, b = s @ u, s @ v
        return s + (a * jnp.cos(t) - b * jnp.sin(t) - a) * u + (a * jnp.sin(t) + b * jnp.cos(t) - b) * v

    return jnp.stack([turn(h), turn(e), d])


def swapped_stains(t: float) -> jnp.ndarray:
    """Stain vectors whose H and E are mixed: (1 - t) of its own and t of the other's (t = 1: swapped)."""
    h, e, d = _RGB_FROM_HED
    return jnp.stack([(1 - t) * h + t * e, t * h + (1 - t) * e, d])


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


# --------------------------------------------------------------------------- degradation (0..255)


def gaussian_blur(x: jnp.ndarray, sigma, radius: int) -> jnp.ndarray:
    """Separable Gaussian blur with a per-image `sigma` (pixels; 0 is the identity), taps out
    to `radius` pixels, edges extended as a camera's neighbouring pixels would be."""
    b, h, w = x.shape[:3]
    sigma = jnp.maximum(jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (b,)), 1e-3)
    taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1, dtype=jnp.float32)[None] / sigma[:, None]) ** 2)
    taps = (taps / taps.sum(-1, keepdims=True))[:, :, None, None, None]  # (B, 2R+1, 1, 1, 1)
    p = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(taps[:, i] * p[:, i:i + h] for i in range(2 * radius + 1))
    return sum(taps[:, i] * rows[:, :, i:i + w] for i in range(2 * radius + 1))


def lower_resolution(x: jnp.ndarray, factor) -> jnp.ndarray:
    """Each image taken at a resolution `factor` (per image, >= 1; 1 is the identity) times lower, then shown at
    its size again: area-averaged down, bilinear up (jax.image.scale_and_translate, antialiased)."""
    b, h, w, c = x.shape
    factor = jnp.broadcast_to(jnp.asarray(factor, jnp.float32), (b,))

    def one(image, f):
        shrink, grow = jnp.stack([1.0 / f, 1.0 / f]), jnp.stack([f, f])
        small = jax.image.scale_and_translate(image, (h, w, c), (0, 1), shrink, jnp.zeros(2), "linear")
        return jax.image.scale_and_translate(small, (h, w, c), (0, 1), grow, jnp.zeros(2), "linear")

    return jax.vmap(one)(x, factor)


# The IJG (libjpeg) base quantisation tables at quality 50, luma and chroma.
_JPEG_LUMA = jnp.asarray([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                          [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
                          [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
                          [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], jnp.float32)
_JPEG_CHROMA = jnp.full((8, 8), 99.0, jnp.float32).at[:4, :4].set(
    jnp.asarray([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]], jnp.float32))
_DCT8 = jnp.asarray([[math.sqrt((1 if k == 0 else 2) / 8) * math.cos(math.pi * (2 * i + 1) * k / 16)
                      for i in range(8)] for k in range(8)], jnp.float32)  # orthonormal DCT-II rows
_RGB_TO_YCC = jnp.asarray([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                          jnp.float32)  # JFIF; Cb and Cr centred on 128


def _quantised_blocks(plane: jnp.ndarray, table: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W) with H, W multiples of 8: each 8x8 block's DCT rounded to multiples of the
    per-image `table` (B, 8, 8), transformed back."""
    b, h, w = plane.shape
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8)
    coef = jnp.einsum("ki,bhiwj,lj->bhkwl", _DCT8, blocks, _DCT8)
    q = table[:, None, :, None, :]
    coef = jnp.round(coef / q) * q
    return jnp.einsum("ki,bhkwl,lj->bhiwj", _DCT8, coef, _DCT8).reshape(b, h, w)


def jpeg_roundtrip(x: jnp.ndarray, quality) -> jnp.ndarray:
    """A baseline JPEG encode and decode at a per-image `quality` (1..100, IJG scaling), as Pillow
    saves by default: YCbCr, 4:2:0 chroma subsampling, 8x8 DCT quantisation; decoded with
    linear chroma upsampling. The entropy coding is lossless and left out."""
    b, h, w, _ = x.shape
    q = jnp.clip(jnp.round(jnp.broadcast_to(jnp.asarray(quality, jnp.float32), (b,))), 1, 100)
    scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)[:, None, None]

    def table(base):
        return jnp.clip(jnp.floor((base * scale + 50.0) / 100.0), 1.0, 255.0)

    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    ycc = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="edge") @ _RGB_TO_YCC.T
    luma = _quantised_blocks(ycc[..., 0] - 128.0, table(_JPEG_LUMA)) + 128.0
    chroma = ycc[..., 1:].reshape(b, hp // 2, 2, wp // 2, 2, 2).mean(axis=(2, 4))  # 4:2:0
    chroma = jnp.stack([_quantised_blocks(chroma[..., c], table(_JPEG_CHROMA)) for c in range(2)], -1)
    chroma = jax.image.resize(chroma, (b, hp, wp, 2), "linear")
    rgb = jnp.concatenate([luma[..., None], chroma], -1) @ jnp.linalg.inv(_RGB_TO_YCC).T
    return jnp.clip(jnp.round(rgb[:, :h, :w]), 0.0, 255.0)


# --------------------------------------------------------------------------- random augmentation


_TAGS = {name: i for i, name in enumerate(
    ("stain_scale", "stain_bias", "brightness", "contrast", "saturation", "hue", "gamma",
     "flip_y", "flip_x", "rot90", "rotate", "scale", "shift", "blur", "jpeg", "heavy", "cast", "lowres", "colour_p"))}
"""One fold_in tag per random parameter: switching one transform on or off leaves the others' draws alone."""


def _uniform(key: jax.Array, name: str, bound: float, shape: tuple[int, ...]) -> jnp.ndarray:
    """U(-bound, bound) of `shape` from the stream tagged `name`."""
    return jax.random.uniform(jax.random.fold_in(key, _TAGS[name]), shape, jnp.float32, -bound, bound)


def _colour_draws(key: jax.Array, b: int, cfg: AugmentConfig) -> dict[str, jnp.ndarray]:
    """The colour factors of `b` images as applied (see draw_augment)."""
    d: dict[str, jnp.ndarray] = {}
    if cfg.stain:
        d["stain_scale"], d["stain_bias"] = 1.0 + _uniform(key, "stain_scale", cfg.stain, (b, 3)), \
            _uniform(key, "stain_bias", cfg.stain, (b, 3))
    if cfg.brightness:
        d["brightness"] = _uniform(key, "brightness", cfg.brightness, (b,))
    if cfg.contrast:
        d["contrast"] = 1.0 + _uniform(key, "contrast", cfg.contrast, (b,))
    if cfg.saturation:
        d["saturation"] = 1.0 + _uniform(key, "saturation", cfg.saturation, (b,))
    if cfg.hue:
        d["hue"] = _uniform(key, "hue", cfg.hue, (b,))
    if cfg.gamma:
        d["gamma"] = jnp.exp(_uniform(key, "gamma", cfg.gamma, (b,)))
    if cfg.cast:
        d["cast"] = 1.0 + _uniform(key, "cast", cfg.cast, (b, 3))
    return d


def draw_augment(key: jax.Array, shape: tuple[int, ...], cfg: AugmentConfig) -> dict[str, jnp.ndarray]:
    """Every random parameter of one augmented batch of `shape` (B, H, W, C), by name, each with the
    batch axis first: what `apply_augment` needs, and all a replay in another framework needs.

    Colour factors as applied (1 + u for stain scale, contrast and saturation; exp(u) for gamma;
    hue in degrees); geometry as flips, or as the warp's angle (radians), zoom and shift (pixels);
    blur sigma and JPEG quality with `heavy` (the images that get zoom, blur and JPEG) applied.
    """
    b, h, w = shape[:3]

    def uniform(name, bound, shape=(b,)):
        return _uniform(key, name, bound, shape)

    def coin(name):
        return jax.random.bernoulli(jax.random.fold_in(key, _TAGS[name]), 0.5, (b,))

    # the images that get zoom, blur and JPEG (all of them at heavy_p 1: no draw, bit-identical to before)
    heavy = None if cfg.heavy_p >= 1 else \
        jax.random.bernoulli(jax.random.fold_in(key, _TAGS["heavy"]), cfg.heavy_p, (b,))

    def only_heavy(value, off):
        """`value` for the heavy images, `off` for the others."""
        return value if heavy is None else jnp.where(heavy, value, off)

    d: dict[str, jnp.ndarray] = _colour_draws(key, b, cfg) if cfg.colour else {}
    if cfg.colour and cfg.colour_p < 1:  # the images that get the colour transforms (all at colour_p 1: no draw)
        d["coloured"] = jax.random.bernoulli(jax.random.fold_in(key, _TAGS["colour_p"]), cfg.colour_p, (b,))
    if cfg.geometric:
        no = jnp.zeros((b,), bool)
        d["flip_y"], d["flip_x"] = (coin("flip_y"), coin("flip_x")) if cfg.flip else (no, no)
        if not _flips_only(cfg):
            angle = jnp.zeros((b,), jnp.float32)
            if cfg.rot90:
                turns = jax.random.randint(jax.random.fold_in(key, _TAGS["rot90"]), (b,), 0, 4)
                angle += turns.astype(jnp.float32) * (math.pi / 2)
            if cfg.rotate:
                angle += jnp.deg2rad(uniform("rotate", cfg.rotate))
            d["angle"] = angle
            d["scale"] = only_heavy(jnp.exp(uniform("scale", math.log1p(cfg.scale))), 1.0) if cfg.scale \
                else jnp.ones((b,), jnp.float32)
            d["shift"] = uniform("shift", cfg.shift, (b, 2)) * jnp.asarray([h, w], jnp.float32) if cfg.shift \
                else jnp.zeros((b, 2), jnp.float32)
    if cfg.lowres:
        factor = jax.random.uniform(jax.random.fold_in(key, _TAGS["lowres"]), (b,), jnp.float32, 1.0, 1.0 + cfg.lowres)
        d["lowres"] = only_heavy(factor, 1.0)
    if cfg.blur:
        sigma = jax.random.uniform(jax.random.fold_in(key, _TAGS["blur"]), (b,), jnp.float32, 0.0, cfg.blur)
        d["blur"] = only_heavy(sigma, 0.0)
    if cfg.jpeg:
        d["jpeg"] = jax.random.uniform(jax.random.fold_in(key, _TAGS["jpeg"]), (b,), jnp.float32,
                                       100.0 * (1.0 - cfg.jpeg), 100.0)
        if heavy is not None:
            d["heavy"] = heavy
    return d


def _flips_only(cfg: AugmentConfig) -> bool:
    """Flips with no other geometry: exact pixel flips instead of a resampling warp."""
    return cfg.flip and not (cfg.rot90 or cfg.rotate or cfg.shift or cfg.scale)


def apply_augment(images: jnp.ndarray, d: dict[str, jnp.ndarray], cfg: AugmentConfig) -> jnp.ndarray:
    """`images` (uint8 or float, 0..255) augmented with the drawn parameters `d`, as float32 0..255.

    Colour first, then geometry, so the black fill of a warp stays black as in the data set;
    blur and JPEG last, as a camera and a saved file degrade the image the model is shown.
    """
    x = images.astype(jnp.float32)
    if cfg.colour:
        plain = x
        x = x / 255.0
        if cfg.stain:
            x = stain_shift(x, d["stain_scale"], d["stain_bias"])
        if cfg.brightness:
            x = adjust_brightness(x, d["brightness"])
        if cfg.contrast:
            x = adjust_contrast(x, d["contrast"])
        if cfg.saturation:
            x = adjust_saturation(x, d["saturation"])
        if cfg.hue:
            x = rotate_hue(x, d["hue"])
        if cfg.gamma:
            x = adjust_gamma(x, d["gamma"])
        if cfg.cast:
            x = colour_cast(x, d["cast"])
        x = jnp.clip(x, 0.0, 1.0) * 255.0
        if "coloured" in d:
            x = jnp.where(_per_image(d["coloured"]) > 0, x, plain)
    if cfg.geometric:
        if _flips_only(cfg):
            x = flip_batch(x, d["flip_y"], d["flip_x"])  # exact, no resampling
        else:
            x = affine_warp(x, inverse_affine(d["angle"], d["scale"], d["shift"], d["flip_y"], d["flip_x"]))
    if cfg.lowres:
        x = lower_resolution(x, d["lowres"])
    if cfg.blur:
        x = gaussian_blur(x, d["blur"], radius=max(1, math.ceil(3 * cfg.blur)))
    if cfg.jpeg:
        degraded = jpeg_roundtrip(x, d["jpeg"])
        x = jnp.where(_per_image(d["heavy"]) > 0, degraded, x) if "heavy" in d else degraded
    return x


def augment_batch(key: jax.Array, images: jnp.ndarray, cfg: AugmentConfig) -> jnp.ndarray:
    """A randomly augmented copy of `images` (uint8 or float, 0..255) as float32 0..255: the
    parameters drawn from `key` (`draw_augment`), then applied (`apply_augment`)."""
    return apply_augment(images, draw_augment(key, images.shape, cfg), cfg)


def tta_flips(images: jnp.ndarray) -> list[jnp.ndarray]:
    """The four flips of a batch (identity, vertical, horizontal, both), for test-time averaging."""
    return [images, images[:, ::-1], images[:, :, ::-1], images[:, ::-1, ::-1]]
