"""The optional oneDNN path of bccd_jax.models.conv: forward pass, input gradient and kernel/bias gradients
against XLA's convolution within bfloat16 rounding (skipped when the extension is not built), and the
fallback to XLA's path when it is absent (runs everywhere)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export, lax

from bccd_jax.ext import onednn
from bccd_jax.models import conv as conv_mod
from bccd_jax.models.conv import Conv

built = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN extension not built: {onednn.load_error()}")
bf16 = pytest.mark.skipif(not onednn.native_bf16(), reason="oneDNN has no bfloat16 convolution on this CPU")


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
    _close(y, ref, 1e-2, "forward")  # one bfloat16 rounding of a float32 sum

    g = jax.jit(jax.grad(_loss(m), argnums=(0, 1)))(params, x)
    g_ref = jax.jit(jax.grad(_ref_loss(padding, jnp.bfloat16), argnums=(0, 1)))(params, x)
    assert jax.tree.structure(g) == jax.tree.structure(g_ref)
    for path, a in jax.tree_util.tree_leaves_with_path(g[0]):
        assert a.dtype == jnp.float32, path  # float32 master weights get float32 gradients
    assert g[1].dtype == jnp.float32
    # the output gradient is rounded to bfloat16 (as on XLA's bfloat16 path), the sums are float32
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
        _close(a, b, 3e-2, jax.tree_util.keystr(path))


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


def test_path_falls_back_to_xla_without_the_extension(monkeypatch, tmp_path):
    monkeypatch.setattr(onednn, "_lib", None)
    monkeypatch.setattr(onednn, "_error", None)
    monkeypatch.setenv(onednn.LIB_ENV, str(tmp_path / "absent.so"))
    monkeypatch.setattr(conv_mod, "_warned", set())
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


def test_build_reports_missing_onednn_in_one_line(monkeypatch, tmp_path, capsys):
    from bccd_jax.ext import build

    monkeypatch.setattr(build, "find_onednn", lambda: (_ for _ in ()).throw(build.Missing("oneDNN headers missing")))
    assert build.main(["--out", str(tmp_path / "x.so")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "oneDNN headers missing" in err and not (tmp_path / "x.so").exists()


@built
@bf16
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
    _close(y, y_ref, 1e-2, "forward")
    g = jax.jit(jax.grad(_loss(m), argnums=(0, 1)))(params, x)
    g_ref = jax.jit(jax.grad(_ref_loss(padding, jnp.bfloat16), argnums=(0, 1)))(params, x)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
        assert a.dtype == jnp.float32, path
        _close(a, b, 3e-2, jax.tree_util.keystr(path))
    cuda = export.export(jax.jit(jax.grad(_loss(m), argnums=(0, 1))), platforms=["cuda"])(params, x).mlir_module()
    assert "bccd_onednn" not in cuda and "xbf16>" not in cuda  # XLA's float32 convolutions off CPU


def _ref_out(params, x, padding):
    k = params["params"]["kernel"].astype(jnp.bfloat16).astype(jnp.float32)
    y = lax.conv_general_dilated(x.astype(jnp.bfloat16).astype(jnp.float32), k, (1, 1), padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + params["params"]["bias"] if "bias" in params["params"] else y
