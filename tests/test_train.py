"""Training core: models, optimizers, multi-seed equality, checkpoint resume, determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bccd_jax.checkpoints import CheckpointStore
from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.errors import UserError
from bccd_jax.models import build_model
from bccd_jax.optimizers import make_optimizer
from bccd_jax.steps import make_train
from bccd_jax.data.train_data import TrainData
from bccd_jax.train import fit


def synthetic(n=64, h=16, w=20, seed=0):
    """Images whose class is written in the mean colour, so a small CNN can learn it in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = rng.integers(0, 120, (n, h, w, 3)).astype(np.uint8)
    images[..., 0] += (labels * 40)[:, None, None].astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def data():
    x, y = synthetic()
    xt, yt = synthetic(24, seed=1)
    return TrainData(jnp.asarray(x), jnp.asarray(y), {"test": (jnp.asarray(xt), jnp.asarray(yt))})


SMALL = dict(conv_blocks=((4,),), dense_features=8)


@pytest.mark.parametrize("arch", ["base", "expanded", "deep"])
def test_presets_give_logits_of_four_classes(arch):
    model = build_model(ModelConfig.preset(arch, batch_norm=(arch == "deep")))
    x = jnp.zeros((2, 60, 80, 3), jnp.uint8)
    variables = model.init(jax.random.PRNGKey(0), x)
    assert model.apply(variables, x).shape == (2, 4)
    assert ("batch_stats" in variables) == (arch == "deep")


def test_dropout_is_active_only_in_training():
    model = build_model(ModelConfig.preset("base", dropout=0.5, **SMALL))
    x = jnp.asarray(synthetic(4)[0])
    v = model.init(jax.random.PRNGKey(0), x)
    a = model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    b = model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model.apply(v, x), model.apply(v, x))


@pytest.mark.parametrize("momentum", [0.99, 0.9])
def test_batch_norm_running_statistics_follow_bn_momentum(momentum):
    """One training-mode pass moves the running mean from its start (0) by (1 - momentum) of the batch mean,
    and the running variance from 1 likewise: the start keeps a weight of momentum**steps."""
    cfg = ModelConfig.preset("base", batch_norm=True, bn_momentum=momentum, **SMALL)
    model = build_model(cfg)
    x = jnp.asarray(synthetic(16)[0])
    v = model.init(jax.random.PRNGKey(0), x)
    _, upd = model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(1)})
    conv = jax.lax.conv_general_dilated(x.astype(jnp.float32) / 255.0, v["params"]["Conv_0"]["kernel"], (1, 1),
                                        "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    stats = upd["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], (1 - momentum) * conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(stats["var"], momentum + (1 - momentum) * conv.var((0, 1, 2)), rtol=1e-4)
    with pytest.raises(UserError, match="bn_momentum"):
        ModelConfig.preset("base", bn_momentum=1.0).validate()


def test_density_normalisation_ignores_the_strength_of_the_stain():
    """input_norm="density": a stain k times as strong multiplies each channel's optical density by k
    (transmittance T -> T**k); the standardised density, and so the network's input, stays the same. "image"
    (standardised pixel levels) does not have that property."""
    from bccd_jax.models.cnn import normalize_inputs

    rng = np.random.default_rng(0)
    x = rng.uniform(30, 250, (2, 12, 16, 3))
    k = np.array([1.8, 0.6, 1.3])  # per channel
    stronger = 256.0 * ((x + 1.0) / 256.0) ** k - 1.0
    norm = lambda v, how: np.asarray(normalize_inputs(jnp.asarray(v, jnp.float32), None, how, False, jnp.float32))  # noqa: E731
    np.testing.assert_allclose(norm(stronger, "density"), norm(x, "density"), atol=2e-4)
    assert not np.allclose(norm(stronger, "image"), norm(x, "image"), atol=1e-2)
    assert ModelConfig.preset("base", input_norm="density").validate().input_norm == "density"


def test_feature_centering_needs_and_uses_the_mean():
    cfg = ModelConfig.preset("base", feature_centering=True, **SMALL)
    with pytest.raises(UserError, match="train_mean"):
        build_model(cfg)
    x = jnp.asarray(synthetic(4)[0])
    plain, centred = build_model(ModelConfig.preset("base", **SMALL)), build_model(cfg, train_mean=[100.0, 50, 60])
    v = plain.init(jax.random.PRNGKey(0), x)  # identical parameter shapes, so identical init
    assert not np.allclose(plain.apply(v, x), centred.apply(v, x))


def test_optimizer_names_and_custom_chains():
    assert isinstance(make_optimizer("sgd"), optax.GradientTransformation)
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    assert make_optimizer(chain) is chain
    with pytest.raises(UserError, match="unknown optimizer"):
        make_optimizer("adamw2")
    with pytest.raises(UserError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs").validate()


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(UserError, match="unknown architecture"):
        ModelConfig.preset("resnet")


def _fit(data, seeds, epochs=3, checkpoints=None, **kw):
    mc = ModelConfig.preset("base", dropout=0.2, batch_norm=True, **SMALL)
    fit_kw = {k: kw.pop(k) for k in ("run_meta", "resume", "stop_after_epoch") if k in kw}
    tc = TrainConfig(epochs=epochs, batch_size=16, checkpoint_every=1, **kw)
    return fit(build_model(mc), make_optimizer(tc), tc, data, seeds, checkpoints=checkpoints, **fit_kw)


@pytest.fixture(scope="module")
def three_seeds(data):
    """The reference: seeds 0, 1, 2 batched with vmap, a Python loop of jitted steps."""
    return _fit(data, [0, 1, 2], seed_strategy="vmap", epoch_mode="loop")


@pytest.fixture(scope="module")
def seed_one_alone(data):
    return _fit(data, [1], seed_strategy="vmap", epoch_mode="loop")


def assert_accuracies_close(a, b, n: int, max_flips: int = 2):
    """Accuracies over `n` examples that may differ by at most `max_flips` examples per epoch.

    Two formulations whose losses agree to 1e-3 relative (asserted beside every use) differ only
    in the order in which convolutions sum: their logits differ by ~1e-5 relative, and an example
    changes its predicted class only if its two largest logits are that close. Early in training
    the logits of this small synthetic set are nearly uniform, so such near-ties occur: one example
    flipped on a 2-core AMD EPYC (none on an Intel Xeon). A real error (another seed's data,
    another dropout mask) moves the loss far beyond its tolerance and most accuracies by more
    than 2 of the 24-64 examples.
    """
    flips = np.rint(np.abs(np.asarray(a, float) - np.asarray(b, float)) * n)
    assert flips.max() <= max_flips, (a, b)


def test_seed_inside_vmapped_batch_equals_seed_alone(data, three_seeds, seed_one_alone):
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(np.asarray(three_seeds.history[key])[:, 1],
                                   np.asarray(seed_one_alone.history[key])[:, 0],
                                   rtol=1e-3, atol=1e-4)  # batched convolutions sum in another order
    for key, n in (("train_acc", data.train_labels.shape[0]), ("test_acc", data.eval_sets["test"][1].shape[0])):
        assert_accuracies_close(np.asarray(three_seeds.history[key])[:, 1],
                                np.asarray(seed_one_alone.history[key])[:, 0], n)
    # different seeds really differ
    losses = np.asarray(three_seeds.history["train_loss"])
    assert not np.allclose(losses[:, 0], losses[:, 1])


def test_pure_make_train_vmapped_matches_single_key(data):
    mc = ModelConfig.preset("base", dropout=0.2, **SMALL)
    tc = TrainConfig(epochs=2, batch_size=16, optimizer="sgd")
    train = make_train(build_model(mc), make_optimizer(tc), tc, int(data.train_images.shape[0]))
    args = (data.train_images, data.train_labels, *data.eval_sets["test"])
    keys = jnp.stack([jax.random.PRNGKey(s) for s in range(3)])
    _, hist_many = jax.jit(jax.vmap(train, in_axes=(0, None, None, None, None)))(keys, *args)
    _, hist_one = jax.jit(train)(keys[2], *args)
    for k in ("train_loss", "test_loss"):
        np.testing.assert_allclose(hist_many[k][2], hist_one[k], rtol=1e-3, atol=1e-4)
    assert_accuracies_close(hist_many["train_acc"][2], hist_one["train_acc"], data.train_labels.shape[0])
    assert_accuracies_close(hist_many["test_acc"][2], hist_one["test_acc"], data.eval_sets["test"][1].shape[0])


@pytest.mark.parametrize("variant", [dict(seed_strategy="map"), dict(seed_strategy="unroll"),
                                     dict(seed_strategy="sequential"), dict(epoch_mode="scan")])
def test_formulations_agree(data, three_seeds, variant):
    other = _fit(data, [0, 1, 2], **{"seed_strategy": "vmap", "epoch_mode": "loop", **variant})
    np.testing.assert_allclose(three_seeds.history["test_loss"], other.history["test_loss"], rtol=1e-3, atol=1e-4)


def test_same_seed_same_numbers_run_to_run(data, seed_one_alone):
    again = _fit(data, [1], seed_strategy="vmap", epoch_mode="loop")
    assert again.history == seed_one_alone.history
    np.testing.assert_array_equal(again.final_logits["test"], seed_one_alone.final_logits["test"])


def test_resume_equals_uninterrupted(data, three_seeds, tmp_path):
    meta = {"model": {"arch": "base"}, "data_fingerprint": "abc"}
    same = dict(seed_strategy="vmap", epoch_mode="loop")  # the formulation of `three_seeds`
    first = _fit(data, [0, 1, 2], checkpoints=CheckpointStore(tmp_path), run_meta=meta, stop_after_epoch=1, **same)
    assert first.interrupted and CheckpointStore(tmp_path).latest_epoch() == 1
    resumed = _fit(data, [0, 1, 2], checkpoints=CheckpointStore(tmp_path), run_meta=meta, resume=True, **same)
    assert resumed.history["epoch"] == [1, 2, 3]
    np.testing.assert_allclose(three_seeds.history["test_loss"], resumed.history["test_loss"], rtol=1e-6)
    np.testing.assert_allclose(three_seeds.final_logits["test"], resumed.final_logits["test"], rtol=1e-5, atol=1e-6)
    # another data fingerprint is refused unless forced
    with pytest.raises(UserError, match="data_fingerprint differs"):
        _fit(data, [0, 1, 2], checkpoints=CheckpointStore(tmp_path), run_meta={**meta, "data_fingerprint": "xyz"},
             resume=True, **same)


def test_training_stops_at_the_first_epoch_reaching_the_stopping_accuracy(data, three_seeds, tmp_path):
    same = dict(seed_strategy="vmap", epoch_mode="loop")  # the formulation of `three_seeds`
    means = np.asarray(three_seeds.history["train_acc"]).mean(axis=1)
    stop_epoch = int(means.argmax()) + 1  # the first epoch whose mean reaches the run's best
    meta = {"model": {"arch": "base"}, "data_fingerprint": "abc"}
    r = _fit(data, [0, 1, 2], epochs=6, stop_at_train_acc=float(means.max()), checkpoints=CheckpointStore(tmp_path),
             run_meta=meta, **same)
    assert r.history["epoch"] == list(range(1, stop_epoch + 1)) and not r.interrupted
    np.testing.assert_allclose(r.history["train_acc"], three_seeds.history["train_acc"][:stop_epoch], rtol=1e-6)
    assert CheckpointStore(tmp_path).latest_epoch() == stop_epoch
    # resumed after its stopping epoch, the run trains nothing more
    again = _fit(data, [0, 1, 2], epochs=6, stop_at_train_acc=float(means.max()), checkpoints=CheckpointStore(tmp_path),
                 run_meta=meta, resume=True, **same)
    assert again.history["epoch"] == r.history["epoch"]
    with pytest.raises(UserError, match="stop_at_train_acc"):
        TrainConfig(stop_at_train_acc=1.5).validate()


def test_a_seed_stuck_at_chance_does_not_hold_the_others_to_every_epoch():
    cfg = TrainConfig(stop_at_train_acc=0.95)
    stuck = [[0.243, 0.307, 0.421], [0.247, 0.724, 0.784], [0.249, 0.965, 0.968]]  # [epoch][seed]
    assert cfg.reached_stop(stuck) and not cfg.reached_stop(stuck[:2])
    assert not cfg.reached_stop([[0.30, 0.35]]) and not cfg.reached_stop([])  # no seed has left chance yet
    # a seed that left chance and fell back still counts: it is learning badly, not stuck
    assert not cfg.reached_stop([[0.5, 0.5], [0.3, 0.99]])
    assert not TrainConfig().reached_stop(stuck)


def test_custom_chain_and_schedule_reduce_the_loss(data):
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 4, 40)
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-4), optax.adam(schedule))
    tc = TrainConfig(epochs=8, batch_size=16)
    r = fit(build_model(ModelConfig.preset("base", **SMALL)), chain, tc, data, [0, 1])
    loss = np.asarray(r.history["train_loss"]).mean(axis=1)
    assert loss[-1] < 0.8 * loss[0]


def test_smoke_training_on_embedded_originals_reduces_the_loss(tmp_path_factory):
    from bccd_jax.data import load_dataset

    ds = load_dataset("originals", image_size=(24, 32), cache_dir=str(tmp_path_factory.mktemp("data_cache")))
    data = TrainData.from_dataset(ds, ["test"])
    assert data.train_images.shape[1:] == (24, 32, 3) and data.train_images.shape[0] >= 250
    tc = TrainConfig(epochs=4, batch_size=32, optimizer="adam")
    r = fit(build_model(ModelConfig.preset("base")), make_optimizer(tc), tc, data, [0, 1])
    loss = np.asarray(r.history["train_loss"]).mean(axis=1)
    assert loss[-1] < loss[0], loss
    assert np.isfinite(np.asarray(r.history["test_loss"])).all()


def test_batch_norm_statistics_ignore_padded_rows():
    """The last batch of an epoch is padded by wrapping and masked: batch norm's batch statistics, running
    averages and the gradients must not depend on what the padded rows hold."""
    from bccd_jax.steps import make_step_fns, seed_key

    model = build_model(ModelConfig.preset("base", batch_norm=True, bn_momentum=0.9, **SMALL))
    cfg = TrainConfig(batch_size=16)
    tx = make_optimizer(cfg)
    x, y = synthetic(40)  # 40 = 2 x 16 + 8: the third batch has 8 padded rows
    fns = make_step_fns(model, tx, cfg, 40)
    state = fns.init(seed_key(0), jnp.asarray(x))
    idx, mask = fns.batch_plan(state.key, 0)
    assert int(mask[2].sum()) == 8
    other = np.asarray(x).copy()
    padded_rows = np.asarray(idx[2])[~np.asarray(mask[2])]
    assert not set(padded_rows) & set(np.asarray(idx[2])[np.asarray(mask[2])])  # wrapped rows are other examples
    other[padded_rows] = 255 - other[padded_rows]  # change only what the padded rows show
    step = jax.jit(fns.step_grads)
    g1, s1, m1 = step(state.params, state.batch_stats, state.key, jnp.asarray(x), jnp.asarray(y), idx[2], mask[2], 0, 2)
    g2, s2, m2 = step(state.params, state.batch_stats, state.key, jnp.asarray(other), jnp.asarray(y), idx[2], mask[2],
                      0, 2)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # and the running statistics did move: the real rows are used
    assert not np.allclose(jax.tree.leaves(s1)[0], jax.tree.leaves(state.batch_stats)[0])


def test_balance_classes_weights_every_class_equally():
    """balance_classes: the loss is the mean cross-entropy with each example weighted by N / (4 n_class) over
    all training labels; with balanced labels it is the plain step."""
    from bccd_jax.steps import make_step_fns, seed_key

    model = build_model(ModelConfig.preset("base", **SMALL))
    x, _ = synthetic(40)
    skewed = np.array([3] * 25 + [0] * 10 + [1] * 4 + [2] * 1, np.int32)
    even = np.repeat(np.arange(4, dtype=np.int32), 10)
    idx, mask = jnp.arange(40), jnp.ones(40, bool)

    def grads(labels, balance):
        cfg = TrainConfig(batch_size=40, balance_classes=balance)
        fns = make_step_fns(model, make_optimizer(cfg), cfg, 40)
        state = fns.init(seed_key(0), jnp.asarray(x))
        g, _, _ = jax.jit(fns.step_grads)(state.params, {}, state.key, jnp.asarray(x), jnp.asarray(labels), idx,
                                          mask, 0, 0)
        return state.params, g

    params, g = grads(skewed, True)
    w = jnp.asarray(40 / (4 * np.bincount(skewed, minlength=4)))[skewed]

    def weighted(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, jnp.asarray(x)), skewed)
        return jnp.sum(ce * w) / jnp.sum(w)

    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(jax.grad(weighted)(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    _, plain = grads(skewed, False)
    assert not np.allclose(jax.tree.leaves(plain)[0], jax.tree.leaves(g)[0], rtol=1e-3)
    for a, b in zip(jax.tree.leaves(grads(even, True)[1]), jax.tree.leaves(grads(even, False)[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("init, std", [("keras", lambda fi, fo: np.sqrt(2 / (fi + fo))),
                                       ("lecun", lambda fi, fo: np.sqrt(1 / fi)),
                                       ("he", lambda fi, fo: np.sqrt(2 / fi))])
def test_kernel_initialisers_by_name(init, std):
    model = build_model(ModelConfig.preset("deep", init=init))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 60, 80, 3), jnp.uint8))["params"]
    k = np.asarray(params["Conv_1"]["kernel"])  # 3x3x32 -> 32
    fan_in, fan_out = 9 * 32, 9 * 32
    assert np.std(k) == pytest.approx(std(fan_in, fan_out), rel=0.1)
    assert not np.asarray(params["Conv_1"]["bias"]).any()  # biases start at zero
    with pytest.raises(UserError, match="init must be"):
        ModelConfig.preset("deep", init="orthogonal").validate()
