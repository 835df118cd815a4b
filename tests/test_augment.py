"""On-the-fly augmentation: the transforms themselves, determinism given the seed, resume, and the off switch."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bccd_jax import augment
from bccd_jax.checkpoints import CheckpointStore
from bccd_jax.config import AugmentConfig, ModelConfig, TrainConfig
from bccd_jax.errors import UserError
from bccd_jax.models import build_model
from bccd_jax.optimizers import make_optimizer
from bccd_jax.steps import make_step_fns, seed_key
from bccd_jax.data.train_data import TrainData
from bccd_jax.train import fit

ALL = AugmentConfig(flip=True, rot90=True, rotate=20, shift=0.1, scale=0.1, brightness=0.1, contrast=0.2,
                    saturation=0.2, hue=10, gamma=0.2, stain=0.05, blur=1.0, jpeg=0.9)


def images(n=6, h=12, w=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3)).astype(np.float32))


def test_identity_transforms_change_nothing():
    x = images()
    x01 = x / 255.0
    np.testing.assert_allclose(augment.rotate_hue(x01, 0.0), x01, atol=1e-6)
    np.testing.assert_allclose(augment.rotate_hue(x01, 360.0), x01, atol=1e-5)
    np.testing.assert_allclose(augment.adjust_saturation(x01, 1.0), x01, atol=1e-6)
    np.testing.assert_allclose(augment.adjust_contrast(x01, 1.0), x01, atol=1e-6)
    np.testing.assert_allclose(augment.adjust_gamma(x01, 1.0), x01, atol=1e-6)
    bright = jnp.maximum(x01, 2 / 255)  # the optical-density floor is 1/255
    np.testing.assert_allclose(augment.stain_shift(bright, jnp.ones(3), jnp.zeros(3)), bright, rtol=1e-4)
    ident = augment.inverse_affine(jnp.zeros(6), jnp.ones(6), jnp.zeros((6, 2)), jnp.zeros(6, bool), jnp.zeros(6, bool))
    np.testing.assert_allclose(augment.affine_warp(x, ident), x, atol=1e-4)


def test_geometry_is_exact_on_pixel_grid():
    x = images()
    flips = jnp.asarray([True, False, True, False, True, False])
    both = augment.flip_batch(x, flips, ~flips)
    warped = augment.affine_warp(x, augment.inverse_affine(jnp.zeros(6), jnp.ones(6), jnp.zeros((6, 2)), flips, ~flips))
    np.testing.assert_allclose(warped, both, atol=1e-4)  # a flip through the warp equals the exact flip
    half_turn = augment.inverse_affine(jnp.full(6, np.pi), jnp.ones(6), jnp.zeros((6, 2)), jnp.zeros(6, bool),
                                       jnp.zeros(6, bool))
    np.testing.assert_allclose(augment.affine_warp(x, half_turn), x[:, ::-1, ::-1], atol=1e-3)
    shift = augment.inverse_affine(jnp.zeros(6), jnp.ones(6), jnp.tile(jnp.asarray([[0.0, 3.0]]), (6, 1)),
                                   jnp.zeros(6, bool), jnp.zeros(6, bool))
    moved = augment.affine_warp(x, shift)
    np.testing.assert_allclose(moved[:, :, 3:], x[:, :, :-3], atol=1e-4)  # content moves 3 px right
    assert float(jnp.abs(moved[:, :, :3]).max()) == 0.0  # black fill where nothing comes from


def smooth_images(n=4, h=60, w=80):
    """Stand-ins for microscope crops: a smooth background and a dark disc (a nucleus) per image."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    out = []
    for i in range(n):
        cy, cx, r = h / 2 + 3 * i, w / 2 - 4 * i, 12 + 2 * i
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
        background = np.stack([200 + 30 * np.sin(xx / 9 + i), 170 + 20 * np.cos(yy / 7), 190 + 0 * xx], -1)
        out.append(np.where(disc, np.asarray([110.0, 60.0, 150.0]), background))
    return np.clip(np.round(np.stack(out)), 0, 255).astype(np.uint8)


def test_blur_and_jpeg_match_pillow():
    """The in-step degradations reproduce what the robustness suite does with Pillow, far closer than the
    difference they make."""
    import io

    from PIL import Image, ImageFilter

    ims = smooth_images()
    x = jnp.asarray(ims, jnp.float32)
    np.testing.assert_array_equal(augment.gaussian_blur(x, 0.0, radius=3), x)  # sigma 0 is the identity
    for sigma in (1.0, 2.0):
        pil = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(sigma))) for im in ims])
        ours = np.asarray(augment.gaussian_blur(x, sigma, radius=int(np.ceil(3 * sigma))))
        assert np.abs(ours - pil).mean() < 0.25 * np.abs(ims.astype(np.float32) - pil).mean(), sigma
    for quality in (50, 10):
        def roundtrip(im):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="JPEG", quality=quality)
            return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        pil = np.stack([roundtrip(im) for im in ims]).astype(np.float32)
        ours = np.asarray(augment.jpeg_roundtrip(x, quality))
        assert np.abs(ours - pil).mean() < 0.4 * np.abs(ims - pil).mean(), quality  # 0.33 at 50, 0.11 at 10
        assert np.abs(ims - ours).mean() > 0.5 * np.abs(ims - pil).mean(), quality  # it does degrade
    near_lossless = np.asarray(augment.jpeg_roundtrip(x, 100))
    assert np.abs(near_lossless - ims).mean() < 1.5


def test_augment_batch_is_keyed_and_in_range():
    x = images(8)
    a = augment.augment_batch(jax.random.PRNGKey(0), x, ALL)
    b = augment.augment_batch(jax.random.PRNGKey(0), x, ALL)
    c = augment.augment_batch(jax.random.PRNGKey(1), x, ALL)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == x.shape and a.dtype == jnp.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 255.0
    # one transform switched off leaves the other draws as they were (one fold_in tag per parameter)
    only_flip = augment.augment_batch(jax.random.PRNGKey(0), x, AugmentConfig(flip=True))
    flip_and_gamma = augment.augment_batch(jax.random.PRNGKey(0), x, AugmentConfig(flip=True, gamma=1e-9))
    np.testing.assert_allclose(only_flip, flip_and_gamma, atol=1e-3)


def test_heavy_p_picks_the_images_that_get_zoom_blur_and_jpeg():
    x = jnp.asarray(smooth_images(64, 12, 16), jnp.float32)
    heavy = AugmentConfig(scale=0.5, blur=1.0, jpeg=0.5)
    key = jax.random.PRNGKey(3)
    all_heavy = augment.augment_batch(key, x, heavy)
    assert bool(jnp.all(jnp.abs(all_heavy - x).max(axis=(1, 2, 3)) > 0))  # heavy_p 1: every image changes
    half = augment.augment_batch(key, x, dataclasses.replace(heavy, heavy_p=0.5))
    untouched = np.asarray(jnp.abs(half - x).max(axis=(1, 2, 3)) < 1e-3)
    assert 16 <= untouched.sum() <= 48  # about half keep zoom 1, no blur and no JPEG
    np.testing.assert_allclose(half[~untouched], all_heavy[~untouched], atol=1e-3)  # the others: the same draws
    assert np.allclose(augment.augment_batch(key, x, dataclasses.replace(heavy, heavy_p=0.0)), x, atol=1e-3)


def test_cast_lowres_and_restaining_are_the_identity_at_rest_and_do_what_they_say():
    x = images()
    x01 = x / 255.0
    np.testing.assert_allclose(augment.colour_cast(x01, jnp.ones(3)), x01, atol=1e-7)
    yellow = augment.colour_cast(x01, jnp.asarray([1.1, 1.05, 0.8]))
    assert float((yellow[..., 2] - x01[..., 2]).max()) <= 0 <= float((yellow[..., 0] - x01[..., 0]).min())
    np.testing.assert_allclose(augment.lower_resolution(x, jnp.ones(len(x))), x, atol=1e-3)
    low = augment.lower_resolution(x, jnp.full(len(x), 4.0))
    assert float(low.std()) < 0.5 * float(x.std())  # noise at 4x lower resolution: averaged out
    bright = jnp.maximum(x01, 2 / 255)  # the optical-density floor is 1/255
    np.testing.assert_allclose(augment.restain(bright, augment.swapped_stains(0.0)), bright, rtol=1e-4)
    np.testing.assert_allclose(augment.restain(bright, augment.rotated_stains(0.0)), bright, rtol=1e-4)
    swapped = np.asarray(augment.swapped_stains(1.0))
    np.testing.assert_allclose(swapped[[1, 0, 2]], np.asarray(augment._RGB_FROM_HED), atol=1e-7)
    turned = np.asarray(augment.rotated_stains(30.0))  # H and E keep their lengths and their angle
    original = np.asarray(augment._RGB_FROM_HED)
    np.testing.assert_allclose(np.linalg.norm(turned, axis=1), np.linalg.norm(original, axis=1), rtol=1e-5)
    cos = lambda m: m[0] @ m[1] / np.linalg.norm(m[0]) / np.linalg.norm(m[1])  # noqa: E731
    assert abs(cos(turned) - cos(original)) < 1e-5 and not np.allclose(turned[:2], original[:2], atol=1e-2)


def test_colour_p_picks_the_images_that_get_the_colour_transforms():
    x = images(64)
    key = jax.random.PRNGKey(2)
    strong = AugmentConfig(hue=90.0, cast=0.3)
    every = augment.augment_batch(key, x, strong)
    half = augment.augment_batch(key, x, dataclasses.replace(strong, colour_p=0.5))
    kept = np.asarray(jnp.abs(half - x).max(axis=(1, 2, 3)) < 1e-3)
    assert 16 <= kept.sum() <= 48  # about half keep their colours
    np.testing.assert_allclose(half[~kept], every[~kept], atol=1e-3)  # the others: the same draws
    np.testing.assert_allclose(augment.augment_batch(key, x, dataclasses.replace(strong, colour_p=0.0)), x,
                               atol=1e-3)


def test_cast_and_lowres_draws_leave_the_others_alone():
    x = images(8)
    key = jax.random.PRNGKey(0)
    base = AugmentConfig(flip=True, gamma=0.2)
    plain = augment.augment_batch(key, x, base)
    cast = augment.augment_batch(key, x, dataclasses.replace(base, cast=1e-9, lowres=1e-9))
    np.testing.assert_allclose(plain, cast, atol=1e-2)
    strong = augment.augment_batch(key, x, dataclasses.replace(base, cast=0.3, lowres=1.0))
    assert not np.allclose(plain, strong, atol=1.0)
    with pytest.raises(UserError, match="augment.cast"):
        TrainConfig(augment=AugmentConfig(cast=1.0)).validate()


def test_the_lab_suite_is_fixed_and_keeps_uint8_images():
    from bccd_jax import robustness

    x = np.asarray(smooth_images(4, 24, 32)).astype(np.uint8)
    for shift in robustness.LAB_SUITE:
        for s in shift.strengths:
            y = robustness.shifted(x, shift, s)
            assert y.dtype == np.uint8 and y.shape == x.shape, shift.name
            np.testing.assert_array_equal(y, robustness.shifted(x, shift, s))
    grey = robustness.shifted(x, robustness.LAB_SUITE[1], 0.4).astype(float)
    assert np.abs(grey - grey.mean(axis=-1, keepdims=True)).mean() < 0.5 * np.abs(
        x - x.mean(axis=-1, keepdims=True)).mean()  # washed out towards grey
    assert set(robustness.names()) >= {"yellow_fill", "grey_blur", "stain_swap", "stain_turn"}


def test_stain_normalisation_takes_each_stains_strength_out():
    """input_norm "stain": a slide stained longer (every stain amount x1.5) looks the same."""
    from bccd_jax.models.cnn import normalize_inputs

    x01 = jnp.clip(images(2) / 255.0, 0.4, 0.95)
    darker = augment.stain_shift(x01, jnp.full(3, 1.5), jnp.zeros(3))
    a = normalize_inputs(x01 * 256 - 1, None, "stain", False, jnp.float32)
    b = normalize_inputs(darker * 256 - 1, None, "stain", False, jnp.float32)
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert not np.allclose(normalize_inputs(x01 * 256 - 1, None, "image", False, jnp.float32),
                           normalize_inputs(darker * 256 - 1, None, "image", False, jnp.float32), atol=1e-2)


def test_bad_strengths_are_user_errors():
    with pytest.raises(UserError, match="augment.hue"):
        TrainConfig(augment=AugmentConfig(hue=-1)).validate()
    with pytest.raises(UserError, match="augment.contrast"):
        TrainConfig(augment=AugmentConfig(contrast=1.5)).validate()
    with pytest.raises(UserError, match="augment.heavy_p"):
        TrainConfig(augment=AugmentConfig(heavy_p=2.0)).validate()


SMALL = dict(conv_blocks=((4,),), dense_features=8)


def synthetic(n=48, h=12, w=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int32)
    x = rng.integers(0, 120, (n, h, w, 3)).astype(np.uint8)
    x[..., 0] += (labels * 40)[:, None, None].astype(np.uint8)
    return jnp.asarray(x), jnp.asarray(labels)


@pytest.fixture(scope="module")
def data():
    x, y = synthetic()
    xt, yt = synthetic(16, seed=1)
    return TrainData(x, y, {"test": (xt, yt)})


def _fit(data, augment_cfg, **kw):
    tc = TrainConfig(epochs=3, batch_size=16, checkpoint_every=1, augment=augment_cfg,
                     seed_strategy="vmap", epoch_mode="loop")
    model = build_model(ModelConfig.preset("base", dropout=0.2, **SMALL))
    return fit(model, make_optimizer(tc), tc, data, [0, 1], **kw)


def test_augmented_training_is_deterministic_and_resumes_exactly(data, tmp_path):
    a = _fit(data, ALL)
    b = _fit(data, ALL)
    assert a.history == b.history  # same seeds, same augmented batches, same numbers
    plain = _fit(data, AugmentConfig())
    assert not np.allclose(a.history["train_loss"], plain.history["train_loss"])  # augmentation did something
    meta = {"model": {"arch": "base"}, "data_fingerprint": "x"}
    first = _fit(data, ALL, checkpoints=CheckpointStore(tmp_path), run_meta=meta, stop_after_epoch=1)
    assert first.interrupted
    resumed = _fit(data, ALL, checkpoints=CheckpointStore(tmp_path), run_meta=meta, resume=True)
    np.testing.assert_allclose(resumed.history["train_loss"], a.history["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(resumed.final_logits["test"], a.final_logits["test"], rtol=1e-5, atol=1e-6)


def test_augmentation_off_is_the_plain_train_step(data, monkeypatch):
    """With every strength 0 no augmentation is traced at all, and the step equals one written out by hand."""
    import bccd_jax.steps

    def never(*a, **k):
        raise AssertionError("augment_batch traced with augmentation off")

    monkeypatch.setattr(bccd_jax.steps, "augment_batch", never)
    model = build_model(ModelConfig.preset("base", dropout=0.2, **SMALL))
    cfg = TrainConfig(batch_size=16, augment=AugmentConfig())
    tx = make_optimizer(cfg)
    fns = make_step_fns(model, tx, cfg, int(data.train_labels.shape[0]))
    x, y = data.train_images, data.train_labels
    state = fns.init(seed_key(3), x)
    idx, mask = fns.batch_plan(state.key, 0)
    new, _ = jax.jit(fns.train_step)(state, x, y, idx[0], mask[0], 0, 0)

    def loss(p):  # the same computation without bccd_jax.steps
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.key, 2), 0), 0)
        logits = model.apply({"params": p}, x[idx[0]], train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx[0]]).mean()

    grads = jax.jit(jax.grad(loss))(state.params)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    want = optax.apply_updates(state.params, updates)
    for got, ref in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
        # two separately compiled programs may round one element differently (1 ulp seen)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-9)
    with pytest.raises(AssertionError, match="traced"):  # and with augmentation on it is traced
        on = dataclasses.replace(cfg, augment=AugmentConfig(flip=True))
        jax.jit(make_step_fns(model, tx, on, 48).train_step)(state, x, y, idx[0], mask[0], 0, 0)


def test_step_draws_replay_the_train_step(data):
    """The draws step_draws reports (augmentation parameters, dropout keep masks), applied by hand, give
    the train step's own gradients: what a replay in another framework relies on."""
    import flax.linen as nn

    from bccd_jax.steps import step_draws

    model = build_model(ModelConfig.preset("base", dropout=0.5, **SMALL))
    aug = dataclasses.replace(ALL, blur=0.0, jpeg=0.0, scale=0.3, heavy_p=0.5)
    cfg = TrainConfig(batch_size=16, augment=aug)
    fns = make_step_fns(model, make_optimizer(cfg), cfg, int(data.train_labels.shape[0]))
    x, y = data.train_images, data.train_labels
    state = fns.init(seed_key(5), x)
    idx, mask = fns.batch_plan(state.key, 1)
    want, _, _ = jax.jit(fns.step_grads)(state.params, {}, state.key, x, y, idx[2], mask[2], 1, 2)

    draws_of = jax.jit(lambda e, i: step_draws(model, {"params": state.params}, state.key, (16, 12, 16, 3), cfg, e, i))
    draws, keeps = draws_of(1, 2)
    assert set(draws) == {"stain_scale", "stain_bias", "brightness", "contrast", "saturation", "hue", "gamma",
                          "flip_y", "flip_x", "angle", "scale", "shift"}
    assert len(keeps) == 1 and keeps[0].shape == (16, 8) and 0 < float(keeps[0].mean()) < 1
    assert not np.array_equal(keeps[0], draws_of(1, 3)[1][0])  # every step its own mask

    def dropout_from(keep):
        def replace(next_fun, args, kwargs, context):
            if isinstance(context.module, nn.Dropout):
                return jnp.where(keep, args[0] / (1 - context.module.rate), 0.0)
            return next_fun(*args, **kwargs)
        return replace

    def loss(p):
        with nn.intercept_methods(dropout_from(keeps[0])):
            logits = model.apply({"params": p}, augment.apply_augment(x[idx[2]], draws, aug), train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx[2]]).mean()

    got = jax.jit(jax.grad(loss))(state.params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)
