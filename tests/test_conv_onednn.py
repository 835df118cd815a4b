"""The optional oneDNN path of bccd_jax.models.conv: the FFI calls against XLA's convolution on many shapes, the
layer's forward pass and gradients within bfloat16 rounding (skipped when the extension is not built), and what runs
everywhere: the fallback to XLA's path, the announcement of a stale or unloadable library, the build's search for
oneDNN, a batch of 0 and `shard_map(check_vma=True)` on the XLA path.

`test_ffi_matches_xla` was checked against broken builds: a copy of onednn_conv.cc with the top and bottom pads
swapped (`sed 's/return {pt, pl}/return {pb, pl}/; s/return {pb, pr}/return {pt, pr}/'`), and one with kh and kw
swapped in `Geometry::weights` (`sed 's/return memory::desc({oc, ic, kh, kw}/return memory::desc({oc, ic, kw, kh}/'`),
each compiled under the current build id:

    python -c "import pathlib, bccd_jax.ext.build as b; i = b.build_id(); b.SOURCE = pathlib.Path('broken.cc');
               b.build_id = lambda: i; b.build(pathlib.Path('broken.so'))"
    BCCD_JAX_ONEDNN_LIB=broken.so python -m pytest tests/test_conv_onednn.py -k ffi_matches

fails every case with images and different top and bottom pads (the first: 12 of the file's 70 tests fail) or a
non-square kernel (the second: oneDNN refuses the shapes, 11 fail).
"""

from __future__ import annotations

import threading
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import export, lax
from jax.sharding import PartitionSpec as P

from bccd_jax.ext import onednn
from bccd_jax.models import conv as conv_mod
from bccd_jax.models.conv import Conv

built = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN extension not built: {onednn.load_error()}")
bf16 = pytest.mark.skipif(not onednn.native_bf16(), reason="oneDNN has no bfloat16 convolution on this CPU")
_DIMS = ("NHWC", "HWIO", "NHWC")
BF16_ROUNDING = 2.0 ** -8
"""bfloat16's relative rounding error (8 significant bits): y and dx in bfloat16 are the float32 sums rounded once."""
F32_SUMS = 2e-6
"""Float32 sums in another order, relative to the largest value: measured up to 6e-7 on these shapes."""
LAYER_GRADS = 1.5e-2
"""A bfloat16 layer's gradients of sin(y)^2 against float32 ones on the same rounded inputs, relative to the largest:
y's and dy's roundings propagate (measured up to 6.5e-3 for the kernel and bias, 9.6e-3 for x)."""
PATHS = [pytest.param("xla"), pytest.param("onednn", marks=built), pytest.param("onednn-bf16", marks=[built, bf16])]


@pytest.fixture
def fresh_loader(monkeypatch):
    """bccd_jax.ext.onednn as if nothing had been loaded yet in this process (restored afterwards)."""
    for name, value in (("_lib", None), ("_error", None), ("_error_file", None), ("_unusable", False)):
        monkeypatch.setattr(onednn, name, value)
    monkeypatch.setattr(conv_mod, "_warned", set())
    return monkeypatch


def _loss(module):
    return lambda params, x: (jnp.sin(module.apply(params, x).astype(jnp.float32)) ** 2).sum()


def _ref_loss(padding, dtype):
    """lax.conv in float32 on the inputs rounded to `dtype`: what a bfloat16 convolution should compute."""
    def loss(params, x):
        k = params["params"]["kernel"].astype(dtype).astype(jnp.float32)
        y = lax.conv_general_dilated(x.astype(dtype).astype(jnp.float32), k, (1, 1), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if "bias" in params["params"]:
            y = y + params["params"]["bias"].astype(dtype).astype(jnp.float32)
        return (jnp.sin(y) ** 2).sum()
    return loss


def _close(a, b, tol, msg=""):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()), err_msg=msg)


FFI_CASES = [  # batch, height, width, in and out channels, (kh, kw), ((top, bottom), (left, right))
    (2, 7, 9, 3, 5, (2, 2), ((0, 1), (1, 0))),
    (3, 8, 6, 16, 8, (3, 5), ((2, 0), (1, 3))),
    (1, 9, 10, 33, 17, (5, 3), ((0, 2), (3, 1))),
    (2, 6, 7, 1, 4, (4, 4), ((1, 2), (2, 1))),
    (4, 5, 5, 24, 1, (1, 1), ((0, 0), (0, 0))),
    (3, 6, 8, 16, 16, (3, 3), ((1, 1), (1, 1))),  # the CNN's SAME
    (2, 5, 6, 17, 9, (3, 2), ((4, 0), (0, 3))),  # pads larger than the kernel
    (1, 4, 9, 2, 33, (2, 4), ((0, 0), (0, 0))),
    (0, 6, 7, 16, 8, (3, 5), ((1, 0), (2, 1))),  # an empty batch: empty y and dx, zero dk and db
]


def _ffi_and_reference(case, dtype):
    """The three FFI calls on random inputs in `dtype` (float32 weights and bias, as the layer passes them) and
    XLA's float32 convolution, its input gradient and its kernel and bias gradients on the same rounded values."""
    n, h, w, ci, co, (kh, kw), pads = case
    rng = np.random.default_rng(n * 1000 + ci * 10 + kh)
    (pt, pb), (pl, pr) = pads
    x = jnp.asarray(rng.standard_normal((n, h, w, ci)), dtype)
    k = jnp.asarray(rng.standard_normal((kh, kw, ci, co)) / np.sqrt(kh * kw * ci), jnp.float32)
    b = jnp.asarray(rng.standard_normal(co), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((n, h + pt + pb - kh + 1, w + pl + pr - kw + 1, co)), dtype)
    got = jax.jit(lambda x, k, b, dy: (onednn.conv_fwd(x, k, b, pads), onednn.conv_bwd_data(dy, k, pads, x.shape),
                                       *onednn.conv_bwd_weights(x, dy, pads, k.shape)))(x, k, b, dy)
    f32 = lambda a: a.astype(jnp.float32)
    y, vjp = jax.vjp(lambda x, k, b: lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=_DIMS) + b,
                     f32(x), f32(k.astype(dtype)), b)
    return got, (y, *vjp(f32(dy)))


@built
@pytest.mark.parametrize("dtype", [pytest.param(jnp.bfloat16, marks=bf16), jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("case", FFI_CASES, ids=lambda c: "n{}_{}x{}x{}-{}_k{}x{}_p{}{}{}{}".format(
    *c[:5], *c[5], *c[6][0], *c[6][1]))
def test_ffi_matches_xla(case, dtype):
    """y and dx within one bfloat16 rounding of XLA's float32 sums (bfloat16) or float32 summation order
    (float32); dk and db (float32 sums of exact products) within summation order."""
    got, ref = _ffi_and_reference(case, dtype)
    for name, a, r in zip(("y", "dx", "dk", "db"), got, ref):
        assert a.dtype == (dtype if name in ("y", "dx") else jnp.float32) and a.shape == r.shape, name
        a, r = np.asarray(a, np.float32), np.asarray(r, np.float32)
        scale = float(np.abs(r).max()) if r.size else 0.0
        rounding = BF16_ROUNDING if name in ("y", "dx") and dtype == jnp.bfloat16 else 0.0
        np.testing.assert_allclose(a, r, rtol=rounding, atol=F32_SUMS * scale, err_msg=name)
    if case[0] == 0:
        assert not np.asarray(got[2]).any() and not np.asarray(got[3]).any()


@built
def test_ffi_from_several_threads_and_a_bounded_cache(monkeypatch):
    """Calls from 4 threads at once (one shape and one each) give the single-threaded results; the primitive cache
    keeps at most its capacity, and an evicted shape is made again with the same results."""
    pads = ((1, 0), (0, 2))
    calls = {n: jax.jit(lambda x, k, b: onednn.conv_fwd(x, k, b, pads)) for n in (1, 2, 3, 5)}
    inputs = {n: (jnp.asarray(np.random.default_rng(n).standard_normal((n, 6, 7, 16)), jnp.float32),
                  jnp.asarray(np.random.default_rng(9).standard_normal((3, 2, 16, 8)), jnp.float32),
                  jnp.zeros((8,), jnp.float32)) for n in calls}
    want = {n: np.asarray(calls[n](*inputs[n])) for n in calls}
    got, errors = {}, []

    def run(i, n):
        try:
            for _ in range(5):
                got[(i, n)] = np.asarray(calls[n](*inputs[n]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate([3, 3, 1, 5, 2, 3])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == len(threads)
    for (_, n), y in got.items():
        np.testing.assert_array_equal(y, want[n])
    old = onednn.cache_capacity(2)
    try:
        for n in calls:
            np.testing.assert_array_equal(calls[n](*inputs[n]), want[n])
        lines = onednn.describe().splitlines()
        assert len(lines) == 2 and lines[0].startswith("fwd:5,") and lines[1].startswith("fwd:3,")
        np.testing.assert_array_equal(calls[1](*inputs[1]), want[1])  # made again
        assert onednn.describe().splitlines()[0].startswith("fwd:1,")
    finally:
        assert onednn.cache_capacity(old) == 2


@built
def test_ffi_error_is_an_exception_not_a_crash_and_conv_keeps_such_shapes_xla_s(monkeypatch):
    x = jnp.zeros((2, 5, 6, 0), jnp.float32)  # no input channels: oneDNN has no primitive for it
    with pytest.raises(Exception, match="oneDNN"):
        jax.block_until_ready(jax.jit(lambda x: onednn.conv_fwd(x, jnp.zeros((3, 3, 0, 4)), None, ((1, 1),) * 2))(x))
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn")
    m = Conv(4, (3, 3), kernel_init=nn.initializers.zeros, bias_init=nn.initializers.ones)
    params = m.init(jax.random.key(0), x)
    assert "bccd_onednn" not in jax.jit(m.apply).lower(params, x).as_text()
    np.testing.assert_array_equal(m.apply(params, x), jnp.ones((2, 5, 6, 4)))


@pytest.mark.parametrize("path", PATHS)
def test_a_train_step_on_an_empty_batch_changes_nothing(monkeypatch, path):
    """A step of the deep CNN on no images: loss and counts 0, zero gradients (SGD leaves the weights as they were),
    on every convolution path. (bccd_jax.train.fit never takes one: an empty training split and a batch size
    below 1 are refused with one line.)"""
    from bccd_jax.config import ModelConfig, TrainConfig
    from bccd_jax.models import build_model
    from bccd_jax.steps import make_step_fns

    monkeypatch.setenv(conv_mod.PATH_ENV, path)
    model = build_model(ModelConfig.preset("deep", conv_blocks=((16,), (16,)), dense_features=4))
    fns = make_step_fns(model, optax.sgd(0.1), TrainConfig(batch_size=4), 4)
    images, labels = jnp.zeros((4, 12, 16, 3), jnp.uint8), jnp.zeros((4,), jnp.int32)
    state = fns.init(jax.random.key(0), images)
    step = jax.jit(fns.train_step)
    if path != "xla":
        assert "bccd_onednn_conv_bwd_weights" in step.lower(state, images, labels, jnp.zeros((4,), jnp.int32),
                                                             jnp.ones((4,), bool), 0, 0).as_text()
    new, metrics = step(state, images, labels, jnp.zeros((0,), jnp.int32), jnp.zeros((0,), bool), 0, 0)
    assert float(metrics.loss_sum) == 0.0 and float(metrics.count) == 0.0 and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_shard_map_with_check_vma_as_nn_conv(monkeypatch, path):
    """Inside `shard_map(check_vma=True)` (the batch split, the weights replicated) `Conv` gives nn.Conv's outputs
    and gradients: its outputs vary with the batch, its weight gradients are summed over it."""
    monkeypatch.setenv(conv_mod.PATH_ENV, path)
    mesh = jax.make_mesh((1,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 7, 9, 16)), jnp.float32)
    results = []
    for m in (nn.Conv(5, (3, 2), padding=((1, 0), (0, 1))), Conv(5, (3, 2), padding=((1, 0), (0, 1)))):
        params = nn.Conv(5, (3, 2)).init(jax.random.key(0), x)

        def step(p, x, m=m):
            y = m.apply(p, x)
            return y, jax.grad(lambda p, x: (jnp.sin(m.apply(p, x)) ** 2).sum(), argnums=(0, 1))(p, x)

        fn = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch")),
                                   out_specs=(P("batch"), (P(), P("batch"))), check_vma=True))
        results.append(fn(params, x))
    tol = LAYER_GRADS if path == "onednn-bf16" else 1e-5  # bfloat16 against a float32 nn.Conv: within its roundings
    for a, b in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0])):
        _close(a, b, tol)


@built
@bf16
@pytest.mark.parametrize("channels", [3, 16])  # 3: the kernel gradient is XLA's (ONEDNN_MIN_KERNEL_GRAD_CHANNELS)
@pytest.mark.parametrize("batch", [1, 10, 33])
@pytest.mark.parametrize("use_bias,padding", [(True, "VALID"), (False, "VALID"), (True, "SAME"), (False, "SAME")])
def test_onednn_bfloat16_forward_and_gradients_match_lax_conv(monkeypatch, batch, use_bias, padding, channels):
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn")
    rng = np.random.default_rng(batch)
    x = jnp.asarray(rng.standard_normal((batch, 9, 11, channels)), jnp.float32)
    m = Conv(6, (3, 3), padding=padding, use_bias=use_bias, dtype=jnp.bfloat16)
    params = m.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    assert conv_mod.conv_path(jnp.bfloat16) == "onednn"
    text = jax.jit(jax.grad(_loss(m), argnums=(0, 1))).lower(params, x).as_text()
    assert text.count("bccd_onednn_conv_fwd") == 1 and "bccd_onednn_conv_bwd_data" in text
    onednn_dk = channels >= conv_mod.ONEDNN_MIN_KERNEL_GRAD_CHANNELS
    assert ("bccd_onednn_conv_bwd_weights" in text) == onednn_dk and ("convolution" in text) != onednn_dk

    y = m.apply(params, x)
    assert y.dtype == jnp.bfloat16
    ref = lax.conv_general_dilated(x.astype(jnp.bfloat16).astype(jnp.float32),
                                   params["params"]["kernel"].astype(jnp.bfloat16).astype(jnp.float32), (1, 1),
                                   padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if use_bias:
        ref = ref + params["params"]["bias"].astype(jnp.bfloat16).astype(jnp.float32)
    _close(y, ref, BF16_ROUNDING, "forward")  # one bfloat16 rounding of a float32 sum

    g = jax.jit(jax.grad(_loss(m), argnums=(0, 1)))(params, x)
    g_ref = jax.jit(jax.grad(_ref_loss(padding, jnp.bfloat16), argnums=(0, 1)))(params, x)
    assert jax.tree.structure(g) == jax.tree.structure(g_ref)
    for path, a in jax.tree_util.tree_leaves_with_path(g[0]):
        assert a.dtype == jnp.float32, path  # float32 master weights get float32 gradients
    assert g[1].dtype == jnp.float32
    # the output gradient is rounded to bfloat16 (as on XLA's bfloat16 path), the sums are float32
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
        _close(a, b, LAYER_GRADS, jax.tree_util.keystr(path))


@built
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_onednn_float32_matches_lax_conv_to_float32_rounding(monkeypatch, padding):
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((7, 8, 10, 16)), jnp.float32)
    m = Conv(5, (3, 3), padding=padding)
    params = m.init(jax.random.key(1), x)
    assert "bccd_onednn_conv_fwd" in jax.jit(m.apply).lower(params, x).as_text()
    ref = Conv(5, (3, 3), padding=padding)
    monkeypatch.setenv(conv_mod.PATH_ENV, "xla")
    y_ref = ref.apply(params, x)
    g_ref = jax.jit(jax.grad(_loss(ref), argnums=(0, 1)))(params, x)
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn")
    _close(m.apply(params, x), y_ref, 1e-5)
    for a, b in zip(jax.tree.leaves(jax.jit(jax.grad(_loss(m), argnums=(0, 1)))(params, x)), jax.tree.leaves(g_ref)):
        _close(a, b, 1e-4)


@built
def test_onednn_path_lowers_to_xla_convolutions_for_cuda(monkeypatch):
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn")
    x = jnp.zeros((4, 9, 11, 16), jnp.float32)
    m = Conv(4, (3, 3))
    params = m.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(_loss(m), argnums=(0, 1)))
    assert "bccd_onednn" in grad.lower(params, x).as_text()
    cuda = export.export(grad, platforms=["cuda"])(params, x).mlir_module()
    assert "bccd_onednn" not in cuda and cuda.count("stablehlo.convolution") == 3


@built
def test_onednn_under_vmap_matches_per_example(monkeypatch):
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn")
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 6, 7, 16)), jnp.float32)
    m = Conv(3, (3, 3))
    params = jax.vmap(lambda k: m.init(k, x[0]))(jax.random.split(jax.random.key(0), 2))
    g = jax.jit(jax.vmap(jax.grad(_loss(m))))(params, x)
    for i in range(2):
        gi = jax.grad(_loss(m))(jax.tree.map(lambda p: p[i], params), x[i])
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gi)):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-6)


def test_path_falls_back_to_xla_without_the_extension(fresh_loader, tmp_path):
    monkeypatch = fresh_loader
    monkeypatch.setenv(onednn.LIB_ENV, str(tmp_path / "absent.so"))
    x = jnp.zeros((2, 9, 11, 3), jnp.float32)
    m = Conv(4, (3, 3), dtype=jnp.bfloat16)
    params = m.init(jax.random.key(0), x)
    for choice in ("auto", "onednn", "xla"):
        monkeypatch.setenv(conv_mod.PATH_ENV, choice)
        if choice == "onednn":
            with pytest.warns(UserWarning, match="not available"):
                assert conv_mod.conv_path(jnp.bfloat16) == "xla"
        else:
            assert conv_mod.conv_path(jnp.bfloat16) == "xla"
        text = jax.jit(jax.grad(_loss(m))).lower(params, x).as_text()
        assert "bccd_onednn" not in text and "convolution" in text, choice
    assert not onednn.available() and "absent.so" in onednn.load_error()
    monkeypatch.setenv(conv_mod.PATH_ENV, "bogus")
    with pytest.raises(ValueError, match=conv_mod.PATH_ENV):
        conv_mod.conv_path(jnp.bfloat16)


@built
def test_without_native_bf16_bfloat16_convolutions_stay_xla(monkeypatch):
    monkeypatch.setattr(onednn, "native_bf16", lambda: False)
    monkeypatch.setattr(conv_mod, "_warned", set())
    monkeypatch.setenv(conv_mod.PATH_ENV, "auto")
    assert conv_mod.conv_path(jnp.bfloat16) == "xla" and conv_mod.conv_path(jnp.float32) == "xla"
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn")
    with pytest.warns(UserWarning, match="no bfloat16"):
        assert conv_mod.conv_path(jnp.bfloat16) == "xla"
    assert conv_mod.conv_path(jnp.float32) == "onednn"
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn-bf16")
    assert conv_mod.conv_path(jnp.float32) == "onednn" and conv_mod.conv_path(jnp.bfloat16) == "xla"


def test_float32_auto_and_xla_choice_never_take_onednn(monkeypatch):
    for choice, dtype in (("auto", jnp.float32), ("xla", jnp.bfloat16), ("xla", jnp.float32)):
        monkeypatch.setenv(conv_mod.PATH_ENV, choice)
        assert conv_mod.conv_path(dtype) == "xla"


def test_explicit_padding():
    assert conv_mod.explicit_padding("VALID", (3, 3)) == ((0, 0), (0, 0))
    assert conv_mod.explicit_padding("SAME", (3, 4)) == ((1, 1), (1, 2))
    assert conv_mod.explicit_padding(((1, 0), (2, 2)), (3, 3)) == ((1, 0), (2, 2))
    assert conv_mod.explicit_padding("CIRCULAR", (3, 3)) is None


def _library_file(path, build_id: str | None, body: bytes = b"not an ELF file"):
    path.write_bytes(body + (b"" if build_id is None else onednn.BUILD_ID_MARK + build_id.encode()))
    return path


def _auto_warnings(monkeypatch) -> list[str]:
    monkeypatch.setenv(conv_mod.PATH_ENV, "auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert conv_mod.conv_path(jnp.bfloat16) == "xla" and conv_mod.conv_path(jnp.bfloat16) == "xla"
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("kind", ["stale", "no build id", "unloadable"])
def test_a_stale_or_unloadable_library_is_announced_with_the_rebuild_command(fresh_loader, tmp_path, kind):
    """In `auto` too, once, in one line; a library built from another source is never loaded."""
    from bccd_jax.ext.build import build_id

    monkeypatch = fresh_loader
    lib = _library_file(tmp_path / "lib.so", {"stale": "0" * 64, "no build id": None, "unloadable": build_id()}[kind])
    monkeypatch.setenv(onednn.LIB_ENV, str(lib))
    assert not onednn.available()
    error = onednn.load_error()
    assert onednn.unusable() == error and "\n" not in error and error.endswith(f"rebuild it with: {onednn.REBUILD}")
    assert ("could not be loaded" if kind == "unloadable" else "is stale") in error
    assert _auto_warnings(monkeypatch) == [f"{conv_mod.PATH_ENV}=auto but the oneDNN extension is not available "
                                           f"({error}); using XLA's convolutions"]


def test_an_absent_library_is_silent_in_auto_and_a_failed_load_is_retried_when_the_file_changes(fresh_loader,
                                                                                               tmp_path):
    monkeypatch = fresh_loader
    lib = tmp_path / "lib.so"
    monkeypatch.setenv(onednn.LIB_ENV, str(lib))
    assert not onednn.available() and "not found" in onednn.load_error() and onednn.unusable() is None
    assert _auto_warnings(monkeypatch) == []
    _library_file(lib, "0" * 64)
    assert not onednn.available() and "is stale" in onednn.load_error()
    lib.unlink()
    assert not onednn.available() and "not found" in onednn.load_error()


REBUILT_CHILD = """
import os, shutil, sys
import jax, jax.numpy as jnp
from bccd_jax.ext import onednn
lib = sys.argv[1]
os.environ[onednn.LIB_ENV] = lib
assert not onednn.available() and "is stale" in onednn.load_error()
os.remove(lib)
shutil.copyfile(onednn.default_library_path(), lib)  # a rebuild
assert onednn.available() and onednn.load_error() is None
y = jax.jit(lambda x, k: onednn.conv_fwd(x, k, None, ((0, 0), (0, 0))))(jnp.ones((1, 2, 2, 1)), jnp.ones((1, 1, 1, 1)))
print(float(y.sum()))
"""


@built
def test_a_rebuild_is_picked_up_by_the_process_that_found_the_library_stale(tmp_path, env):
    import subprocess
    import sys

    lib = _library_file(tmp_path / "lib.so", "0" * 64)
    r = subprocess.run([sys.executable, "-c", REBUILT_CHILD, str(lib)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["4.0"], r.stderr


def test_build_id_follows_the_source(monkeypatch, tmp_path):
    from bccd_jax.ext import build

    source = tmp_path / "onednn_conv.cc"
    source.write_bytes(onednn.SOURCE.read_bytes())
    monkeypatch.setattr(build, "SOURCE", source)
    same = build.build_id()
    source.write_bytes(onednn.SOURCE.read_bytes() + b"\n")
    assert len(same) == 64 and build.build_id() != same


def _onednn_tree(root, headers=True, lib=True, major=3):
    if headers:
        (root / "include/oneapi/dnnl").mkdir(parents=True)
        (root / "include/oneapi/dnnl/dnnl.hpp").write_text("")
        (root / "include/oneapi/dnnl/dnnl_version.h").write_text(f"#define DNNL_VERSION_MAJOR {major}\n")
    if lib:
        (root / "lib").mkdir(parents=True)
        (root / "lib/libdnnl.so").write_bytes(b"")
    return root


def test_build_takes_onednn_root_first_and_headers_and_library_from_one_install(monkeypatch, tmp_path):
    from bccd_jax.ext import build

    pip = _onednn_tree(tmp_path / "pip")
    monkeypatch.setattr(build, "search_roots", lambda: [tmp_path / "headers", tmp_path / "lib", pip])
    _onednn_tree(tmp_path / "headers", lib=False)
    _onednn_tree(tmp_path / "lib", headers=False)
    monkeypatch.delenv(build.ROOT_ENV, raising=False)
    assert build.find_onednn() == (pip / "include", pip / "lib")  # not the first headers with the first library
    root = _onednn_tree(tmp_path / "root")
    monkeypatch.setenv(build.ROOT_ENV, str(root))
    assert build.find_onednn() == (root / "include", root / "lib")
    monkeypatch.setenv(build.ROOT_ENV, str(tmp_path / "headers"))
    with pytest.raises(build.Missing, match=f"{build.ROOT_ENV}=.*headers lacks"):
        build.find_onednn()  # not the pip packages' instead
    monkeypatch.setenv(build.ROOT_ENV, str(_onednn_tree(tmp_path / "old", major=2)))
    with pytest.raises(build.Missing, match="oneDNN 3.x needed"):
        build.find_onednn()


def test_build_reports_missing_onednn_in_one_line(monkeypatch, tmp_path, capsys):
    from bccd_jax.ext import build

    monkeypatch.setattr(build, "find_onednn", lambda: (_ for _ in ()).throw(build.Missing("oneDNN headers missing")))
    assert build.main(["--out", str(tmp_path / "x.so")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "oneDNN headers missing" in err and not (tmp_path / "x.so").exists()


@built
@bf16
@pytest.mark.parametrize("channels", [3, 16])
@pytest.mark.parametrize("use_bias,padding", [(True, "VALID"), (False, "SAME")])
def test_onednn_bf16_in_a_float32_model_rounds_like_bfloat16_and_returns_float32(monkeypatch, use_bias, padding,
                                                                                  channels):
    monkeypatch.setenv(conv_mod.PATH_ENV, "onednn-bf16")
    x = jnp.asarray(np.random.default_rng(channels).standard_normal((10, 9, 11, channels)), jnp.float32)
    m = Conv(6, (3, 3), padding=padding, use_bias=use_bias)  # float32
    params = jax.tree.map(lambda p: p + 0.1, m.init(jax.random.key(0), x))
    assert conv_mod.conv_path(jnp.float32) == "onednn-bf16" and conv_mod.conv_path(jnp.bfloat16) == "onednn"
    text = jax.jit(jax.grad(_loss(m), argnums=(0, 1))).lower(params, x).as_text()
    assert "bccd_onednn_conv_fwd" in text and "bccd_onednn_conv_bwd_data" in text
    y = m.apply(params, x)
    assert y.dtype == jnp.float32
    y_ref = jax.jit(lambda p, x: _ref_out(p, x, padding))(params, x)
    _close(y, y_ref, BF16_ROUNDING, "forward")
    g = jax.jit(jax.grad(_loss(m), argnums=(0, 1)))(params, x)
    g_ref = jax.jit(jax.grad(_ref_loss(padding, jnp.bfloat16), argnums=(0, 1)))(params, x)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
        assert a.dtype == jnp.float32, path
        _close(a, b, LAYER_GRADS, jax.tree_util.keystr(path))
    cuda = export.export(jax.jit(jax.grad(_loss(m), argnums=(0, 1))), platforms=["cuda"])(params, x).mlir_module()
    assert "bccd_onednn" not in cuda and "xbf16>" not in cuda  # XLA's float32 convolutions off CPU


def _ref_out(params, x, padding):
    k = params["params"]["kernel"].astype(jnp.bfloat16).astype(jnp.float32)
    y = lax.conv_general_dilated(x.astype(jnp.bfloat16).astype(jnp.float32), k, (1, 1), padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + params["params"]["bias"] if "bias" in params["params"] else y
