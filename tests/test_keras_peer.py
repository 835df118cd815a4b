"""Keras, the study's framework, computes bccd_jax's function: one set of weights in both gives the same logits, loss,
TEST evaluation and optimizer steps (benchmarks/keras_cnn.py); benchmarks.keras_peer resumes a killed run exactly.
Skipped where Keras is not installed (`pip install -e '.[keras]'`; not a test dependency)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bccd_jax.config import ModelConfig, TrainConfig
from bccd_jax.models import build_model
from bccd_jax.optimizers import make_optimizer
from bccd_jax.steps import make_evaluate, make_step_fns, seed_key

from benchmarks.keras_cnn import use_jax_backend  # noqa: E402

use_jax_backend()  # before the import below, the first of Keras
pytest.importorskip("keras")
from benchmarks.keras_cnn import (compile_study, import_keras, keras_cnn, load_flax_params,  # noqa: E402
                                  logits_model, weighted_layers)

HW = (36, 48)  # the smallest size at which the deep CNN keeps a feature map, with room
N = 32


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (N, *HW, 3), dtype=np.uint8), rng.integers(0, 4, N).astype(np.int32)


def bccd_state(cfg: ModelConfig, optimizer: str, x):
    """bccd_jax's model and training functions for `cfg`, and a state with fresh parameters and `optimizer`."""
    model = build_model(cfg)
    train = TrainConfig(optimizer=optimizer, batch_size=N)
    fns = make_step_fns(model, make_optimizer(train), train, N)
    return model, fns, fns.init(seed_key(3), x)


def bccd_step(fns, state, x, y):
    """One bccd_jax training step over the whole batch, in order, no padding; the new parameters and the gradient."""
    idx, mask = jnp.arange(N)[None], jnp.ones((1, N), bool)
    grads, _, _ = jax.jit(fns.step_grads)(state.params, state.batch_stats, state.key, x, y, idx[0], mask[0], 0, 0)
    return jax.jit(fns.apply_grads)(state, grads, {}).params, grads


def weight_pairs(keras_model, params):
    """(layer, "kernel" or "bias", Keras array, bccd_jax array) for every kernel and bias."""
    names = sorted((k for k in params if k.startswith("Conv_")), key=lambda k: int(k[5:])) + ["Dense_0", "Dense_1"]
    return [(n, k, w, np.asarray(params[n][k])) for layer, n in zip(weighted_layers(keras_model), names)
            for w, k in zip(layer.get_weights(), ("kernel", "bias"))]


def max_abs_diff(keras_model, params) -> float:
    """The largest |Keras weight - bccd_jax parameter| over every kernel and bias."""
    return max(float(np.abs(w - p).max()) for _, _, w, p in weight_pairs(keras_model, params))


def assert_same_step(keras_model, before, after, rel: float = 1e-2):
    """Keras' weights after a step are bccd_jax's `after`, up to `rel` of the step (`after - before`) in norm, per
    kernel and bias. Not elementwise: a ReLU input within float rounding of zero (the two frameworks sum a
    convolution in other orders) can be on in one and off in the other, and then one unit's gradient (and all
    that flows through it) differs: in a deep CNN at this size one ReLU input 5e-7 from zero moved the first
    layer's kernel step by 0.3 % in norm. A wrong layout or gradient moves it by the order of 100 %."""
    for layer, kind, w, p in weight_pairs(keras_model, after):
        step = np.linalg.norm(p - np.asarray(before[layer][kind]))
        assert np.linalg.norm(w - p) <= rel * step + 1e-7, (layer, kind, float(np.linalg.norm(w - p)), float(step))


@pytest.mark.parametrize("arch", ["base", "expanded", "deep"])
def test_keras_cnn_computes_bccd_jax_function_and_sgd_step(arch):
    keras = import_keras()
    x, y = batch()
    cfg = ModelConfig.preset(arch)
    model, fns, state = bccd_state(cfg, "sgd", x)
    km = keras_cnn(cfg, HW)
    load_flax_params(km, state.params)

    # logits and probabilities: the dense kernel after Flatten is (H, W, C) in both, no reordering
    logits = np.asarray(model.apply({"params": state.params}, x))
    np.testing.assert_allclose(np.asarray(logits_model(km)(x)), logits, atol=1e-5)
    np.testing.assert_allclose(np.asarray(km(x)), np.asarray(jax.nn.softmax(logits)), atol=1e-6)
    # the loss and the TEST evaluation, as each framework computes them after an epoch
    compile_study(km, "sgd")
    ev = km.evaluate(x, y, batch_size=N, verbose=0, return_dict=True)
    loss, acc, _ = jax.jit(make_evaluate(model))(state, x, y)
    assert ev["loss"] == pytest.approx(float(loss), abs=1e-5)
    assert ev["accuracy"] == pytest.approx(float(acc), abs=1e-7)
    keras_loss = keras.losses.sparse_categorical_crossentropy(y, km(x))
    assert float(np.mean(keras_loss)) == pytest.approx(float(loss), abs=1e-5)

    # one SGD step (dropout off: the frameworks draw different masks): the same gradient
    if cfg.dropout:
        cfg = ModelConfig.preset(arch, dropout=0.0)
        km = keras_cnn(cfg, HW)
        load_flax_params(km, state.params)
    compile_study(km, "sgd").train_on_batch(x, y)
    new_params, _ = bccd_step(bccd_state(cfg, "sgd", x)[1], state, x, y)
    assert max_abs_diff(km, state.params) > 1e-4  # the step moved the weights
    assert_same_step(km, state.params, new_params)


def keras_adam_in_optax(lr: float = 1e-3, b2: float = 0.999, eps: float = 1e-7) -> optax.GradientTransformation:
    """Keras 3's Adam in optax: Keras adds epsilon to sqrt(v) before the bias correction, which is optax's Adam with
    epsilon / sqrt(1 - b2^t) at step t (32x Keras' 1e-7 at the first step, 1.3x at step 1000)."""
    return optax.chain(optax.inject_hyperparams(optax.scale_by_adam)(
        b2=b2, eps=lambda count: eps / jnp.sqrt(1.0 - b2 ** (count + 1.0))), optax.scale_by_learning_rate(lr))


def test_one_rmsprop_and_adam_step_as_keras_takes_them():
    """RMSProp: bccd_jax's (optax, epsilon inside the square root, rho 0.9) is Keras 3's. Adam: bccd_jax's adds
    epsilon 1e-7 to the bias-corrected sqrt(v), Keras to the uncorrected one; the steps agree where the gradient
    is large against that epsilon, and Keras' Adam written in optax agrees everywhere."""
    x, y = batch(1)
    cfg = ModelConfig.preset("base")
    for name in ("rmsprop", "adam"):
        _, fns, state = bccd_state(cfg, name, x)
        km = compile_study(keras_cnn(cfg, HW), name)
        load_flax_params(km, state.params)
        km.train_on_batch(x, y)
        new_params, grads = bccd_step(fns, state, x, y)
        if name == "rmsprop":
            assert_same_step(km, state.params, new_params)
            continue
        mirror = keras_adam_in_optax()
        updates, _ = mirror.update(grads, mirror.init(state.params), state.params)
        assert_same_step(km, state.params, optax.apply_updates(state.params, updates))
        # bccd_jax's own Adam: a step of lr * g / (|g| + 1e-7) against Keras' lr * g / (|g| + 3.2e-6)
        big = jax.tree.map(lambda g: np.abs(np.asarray(g)) >= 1e-3, grads)
        step_diff = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)), new_params,
                                 optax.apply_updates(state.params, updates))
        assert max(float(d[m].max(initial=0.0)) for d, m in zip(jax.tree.leaves(step_diff), jax.tree.leaves(big))) \
            < 1e-3 * 5e-3  # within 0.5 % of a step where |g| >= 1e-3
        assert max(float(d.max()) for d in jax.tree.leaves(step_diff)) > 1e-6  # and not everywhere: the epsilon


def test_a_saturated_softmax_stops_keras_on_probabilities_and_not_on_logits():
    """Why Keras' RMSProp base CNN never leaves chance where bccd_jax's learns: once every softmax saturates, Keras 3's
    loss on probabilities (clipped to [1e-7, 1 - 1e-7]) has a gradient of exactly 0, so no step moves the weights;
    from the logits (tf.keras, bccd_jax) the gradient stays, and Keras' step is bccd_jax's."""
    x, y = batch(2)
    cfg = ModelConfig.preset("base")
    _, fns, state = bccd_state(cfg, "sgd", x)
    # the output layer scaled up until every true-class probability is clipped (logit margins in the hundreds)
    params = {**state.params, "Dense_1": {**state.params["Dense_1"],
                                          "kernel": state.params["Dense_1"]["kernel"] * 3e4}}
    state = state.replace(params=params)
    on_probabilities = compile_study(keras_cnn(cfg, HW), "sgd")
    load_flax_params(on_probabilities, params)
    from benchmarks.keras_peer import clipped_share

    assert clipped_share(np.asarray(logits_model(on_probabilities)(x)), y) == 1.0
    on_probabilities.train_on_batch(x, y)
    assert max_abs_diff(on_probabilities, params) == 0.0  # not one weight moved

    on_logits = compile_study(keras_cnn(cfg, HW, softmax=False), "sgd", loss="logits")
    load_flax_params(on_logits, params)
    on_logits.train_on_batch(x, y)
    new_params, _ = bccd_step(fns, state, x, y)
    assert max_abs_diff(on_logits, params) > 1e-3
    assert_same_step(on_logits, params, new_params)


def test_first_steps_and_the_logits_loss_from_the_command_line(tmp_path, capsys):
    """--first-steps records a run's first steps batch by batch; --loss logits trains and names its own files; a loss
    and a model that do not fit together are one line."""
    from benchmarks.keras_peer import main, probe_indices
    from bccd_jax.errors import UserError, run_cli

    args = ["--optimizers", "rmsprop", "--seeds", "0", "--dataset", "originals", "--image-size", *map(str, HW),
            "--out", str(tmp_path)]
    assert run_cli(main, [*args, "--loss", "probabilities", "logits", "--first-steps", "3"]) == 0
    for name in ("base-rmsprop-glorot_uniform-seed0", "base-rmsprop-glorot_uniform-logits-seed0"):
        r = json.loads((tmp_path / "first-steps" / f"{name}.json").read_text())
        assert r["steps"]["step"] == [1, 2, 3]
        assert r["probe_images"] == min(256, r["settings"]["data"]["splits"]["test"])
        assert all(0.0 <= v <= 1.0 for v in r["steps"]["probe_clipped"] + r["steps"]["probe_acc"])
        assert r["settings"]["loss"] == ("logits" if "logits" in name else "probabilities")
    # the probe spans TEST, whose order runs class by class: every class is in it
    assert probe_indices(2487).size == 256 and probe_indices(2487)[[0, -1]].tolist() == [0, 2486]
    assert run_cli(main, [*args, "--loss", "logits", "--epochs", "1"]) == 0
    r = json.loads((tmp_path / "base-rmsprop-glorot_uniform-logits-seed0.json").read_text())
    # evaluated from the logits, Keras' TEST loss is bccd_jax's
    assert r["history"]["test_loss"][0] == pytest.approx(r["history"]["test_loss_logits"][0], rel=1e-5)
    assert run_cli(main, [*args, "--first-steps", "0"]) == 2
    assert "--first-steps" in capsys.readouterr().err
    with pytest.raises(UserError, match="softmax=False"):
        compile_study(keras_cnn(ModelConfig.preset("base"), HW), "sgd", loss="logits")


def test_a_result_file_from_before_the_loss_setting_resumes_as_probabilities():
    from benchmarks.keras_peer import PeerRun, settings_of

    run = PeerRun("base", "sgd", "glorot_uniform", 0)
    recorded = {k: v for k, v in run.settings({"dataset": "augmented"}).items() if k != "loss"}
    assert settings_of(recorded) == run.settings({"dataset": "augmented"})
    assert settings_of(recorded) != PeerRun("base", "sgd", "glorot_uniform", 0, loss="logits").settings(
        {"dataset": "augmented"})


def test_peer_run_resumes_exactly_and_refuses_bad_input(tmp_path, capsys):
    """Two epochs of the deep CNN (dropout on) in one go, and one epoch then --resume, give the same history."""
    from benchmarks.keras_peer import main
    from bccd_jax.errors import run_cli

    args = ["--models", "deep", "--optimizers", "adam", "--seeds", "0", "--dataset", "originals",
            "--image-size", *map(str, HW)]
    assert run_cli(main, [*args, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    assert run_cli(main, [*args, "--epochs", "1", "--out", str(tmp_path / "b")]) == 0
    assert run_cli(main, [*args, "--epochs", "2", "--out", str(tmp_path / "b")]) == 2  # would overwrite
    assert "pass --resume" in capsys.readouterr().err
    assert run_cli(main, [*args, "--epochs", "2", "--out", str(tmp_path / "b"), "--resume"]) == 0
    name = "deep-adam-glorot_uniform-seed0.json"
    a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("a", "b"))
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "test_loss_logits"):
        assert a["history"][key] == b["history"][key], key
    assert a["settings"] == b["settings"] and a["settings"]["data"]["dataset"] == "originals"
    assert list((tmp_path / "b" / "checkpoints" / name[:-5]).glob("*.keras")) == \
        [tmp_path / "b" / "checkpoints" / name[:-5] / "epoch-0002.keras"]

    capsys.readouterr()
    for bad, says in ((["--epochs", "0"], "--epochs"), (["--seeds", "1", "1"], "--seeds"),
                      (["--image-size", "20", "20"], "too small"), (["--inits", "zeros"], "--inits")):
        assert run_cli(main, [*args, "--out", str(tmp_path / "c"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err


def test_step_benchmark_times_both_frameworks_and_renders_its_section(tmp_path):
    from benchmarks.keras_step import main
    from benchmarks.report import write_report

    out = tmp_path / "keras_step.json"
    assert main(["--models", "base", "--size", "24x32", "--rounds", "2", "--steps", "2", "--repeats", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(r["framework"], r["round"]) for r in res["rows"]] == [("bccd_jax", 0), ("keras", 0), ("bccd_jax", 1),
                                                                   ("keras", 1)]
    s = res["summary"]["base"]
    assert s["keras_over_bccd_jax"] == [res["rows"][1]["step_s"] / res["rows"][0]["step_s"],
                                        res["rows"][3]["step_s"] / res["rows"][2]["step_s"]]
    text = write_report(tmp_path).read_text()
    assert "## Keras, the study's framework, beside bccd_jax: a training step" in text
    assert f"| base | {s['bccd_jax_step_s'] * 1e3:,.0f} | {s['keras_step_s'] * 1e3:,.0f} |" in text
