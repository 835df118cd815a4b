"""bccd_jax.models.conv: nn.Conv's parameters and forward pass, XLA's gradients within rounding, and the
chunked kernel gradient only where the program is lowered for CPU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from bccd_jax.models import conv as conv_mod
from bccd_jax.models.conv import Conv


def _loss(module):
    return lambda params, x: (jnp.sin(module.apply(params, x).astype(jnp.float32)) ** 2).sum()


@pytest.mark.parametrize("batch", [1, 10, 33])
@pytest.mark.parametrize("use_bias,padding", [(True, "VALID"), (False, "SAME")])
def test_same_parameters_forward_and_gradients_as_nn_conv(batch, use_bias, padding):
    x = jnp.asarray(np.random.default_rng(batch).standard_normal((batch, 9, 11, 3)), jnp.float32)
    ref, ours = (m(6, (3, 3), padding=padding, use_bias=use_bias) for m in (nn.Conv, Conv))
    params = ref.init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(np.shape, params)
    for a, b in zip(jax.tree.leaves(ours.init(jax.random.key(0), x)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours.apply(params, x), ref.apply(params, x))
    g_ref = jax.jit(jax.grad(_loss(ref), argnums=(0, 1)))(params, x)
    g_ours = jax.jit(jax.grad(_loss(ours), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):  # float32 sums in another order
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_bfloat16_gradients_as_close_to_float32_as_nn_conv():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((12, 9, 11, 4)), jnp.float32)
    params = nn.Conv(5, (3, 3)).init(jax.random.key(1), x)
    exact = jax.jit(jax.grad(_loss(nn.Conv(5, (3, 3)))))(params, x)
    for m in (nn.Conv, Conv):
        g = jax.jit(jax.grad(_loss(m(5, (3, 3), dtype=jnp.bfloat16))))(params, x)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(exact)):
            assert a.dtype == jnp.float32  # parameters stay float32
            np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * float(jnp.abs(b).max()), err_msg=m.__name__)


def _kernel_grad_convs(text: str, op: str) -> int:
    return text.count(op) - 1  # minus the forward convolution


def test_kernel_gradient_is_chunked_on_cpu_only(monkeypatch):
    x = jnp.zeros((32, 9, 11, 3), jnp.float32)
    params = Conv(4, (3, 3)).init(jax.random.key(0), x)

    def grad(params, x):  # parameters only: no input-gradient convolution; traced anew by every jit
        return jax.grad(_loss(Conv(4, (3, 3))))(params, x)

    n_chunks = len(conv_mod._bounds(32, conv_mod.KERNEL_GRAD_CHUNK))
    assert n_chunks == 8
    cpu = jax.jit(grad).lower(params, x).compile().as_text()
    assert _kernel_grad_convs(cpu, "convolution(") == n_chunks
    cuda = export.export(jax.jit(grad), platforms=["cuda"])(params, x).mlir_module()
    assert _kernel_grad_convs(cuda, "stablehlo.convolution") == 1
    monkeypatch.setenv(conv_mod.OPT_OUT_ENV, "xla")
    cpu_xla = jax.jit(lambda p, x: grad(p, x)).lower(params, x).compile().as_text()
    assert _kernel_grad_convs(cpu_xla, "convolution(") == 1


def test_chunks_cover_the_batch_at_most_max_chunks():
    for n in (1, 3, 4, 31, 32, 33, 256, 1000):
        bounds = conv_mod._bounds(n, conv_mod.KERNEL_GRAD_CHUNK)
        assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) <= conv_mod.MAX_CHUNKS
        assert all(a < b and b == c for (a, b), (c, _) in zip(bounds, bounds[1:] + [(n, n)]))


@pytest.mark.parametrize("padding", ["SAME", ((2, 0), (0, 1))])
def test_an_empty_batch_has_nn_conv_s_empty_output_and_zero_gradients(padding):
    x = jnp.zeros((0, 9, 11, 3), jnp.float32)
    ref, ours = (m(6, (3, 2), padding=padding) for m in (nn.Conv, Conv))
    params = ref.init(jax.random.key(0), jnp.zeros((1, 9, 11, 3)))
    assert ours.apply(params, x).shape == ref.apply(params, x).shape
    g = jax.jit(jax.grad(_loss(ours)))(params, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(jax.jit(jax.grad(_loss(ref)))(params, x))):
        assert a.shape == b.shape and not np.asarray(a).any() and not np.asarray(b).any()


def test_pool_then_relu_is_relu_then_pool_values_and_gradients():
    from bccd_jax.models.pool import max_pool_2x2

    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 9, 11, 5)), jnp.float32)
    x = x.at[0, :4, :4].set(0.5).at[1, :4, :4].set(-0.5)  # flat patches: ties above and below zero
    w = jnp.asarray(np.random.default_rng(4).standard_normal((4, 4, 5, 5)), jnp.float32)
    fns = (lambda x: max_pool_2x2(jax.nn.relu(x)), lambda x: jax.nn.relu(max_pool_2x2(x)))
    np.testing.assert_array_equal(fns[0](x), fns[1](x))
    g0, g1 = (jax.grad(lambda x: (f(x) * w).sum())(x) for f in fns)
    np.testing.assert_array_equal(g0, g1)


@pytest.mark.parametrize("shape", [(3, 8, 10, 4), (2, 9, 11, 3)])
def test_max_pool_relu_is_relu_of_pool_plus_bias(shape):
    """Values equal relu(pool(y) + b) exactly; gradients equal autodiff's of that composition away from ties
    (odd trailing rows/columns get none)."""
    from bccd_jax.models.pool import max_pool_2x2, max_pool_relu

    rng = np.random.default_rng(6)
    y = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    b = jnp.asarray(rng.standard_normal(shape[-1:]) * 0.3, jnp.float32)
    w = jnp.asarray(rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3])), jnp.float32)
    ref = lambda y, b: jax.nn.relu(max_pool_2x2(y + b))
    np.testing.assert_array_equal(max_pool_relu(y, b), ref(y, b))
    np.testing.assert_array_equal(max_pool_relu(y), jax.nn.relu(max_pool_2x2(y)))
    got = jax.grad(lambda y, b: (max_pool_relu(y, b) * w).sum(), argnums=(0, 1))(y, b)
    want = jax.grad(lambda y, b: (ref(y, b) * w).sum(), argnums=(0, 1))(y, b)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(got[0][:, -1]).sum() if shape[1] % 2 else 0.0) == 0.0


@pytest.mark.parametrize("tied", [((0, 0), (0, 1), (1, 0)), ((0, 1), (1, 1)), ((1, 0), (1, 1))])
def test_max_pool_relu_gives_a_tie_to_the_first_maximum_as_nn_max_pool(tied):
    from bccd_jax.models.pool import max_pool_relu

    y = jnp.full((1, 2, 2, 1), -1.0)
    for r, c in tied:
        y = y.at[0, r, c, 0].set(0.5)
    g = jax.grad(lambda y: max_pool_relu(y).sum())(y)
    want = jax.grad(lambda y: jax.nn.relu(nn.max_pool(y, (2, 2), strides=(2, 2))).sum())(y)
    np.testing.assert_array_equal(g, want)
    assert float(g[0, tied[0][0], tied[0][1], 0]) == 1.0 and float(g.sum()) == 1.0


@pytest.mark.parametrize("batch_norm", [False, True])
def test_cnn_with_conv_is_the_cnn_with_nn_conv(monkeypatch, batch_norm):
    from bccd_jax.config import ModelConfig
    from bccd_jax.models import build_model, cnn

    cfg = ModelConfig.preset("deep", conv_blocks=((4, 4), (8,)), dense_features=8, batch_norm=batch_norm)
    x = np.random.default_rng(5).integers(0, 256, (6, 24, 32, 3)).astype(np.uint8)
    y = jnp.asarray([0, 1, 2, 3, 0, 1])

    def logits_and_grads():
        model = build_model(cfg)
        params = model.init(jax.random.key(0), x[:1])

        def loss(p):
            return -jax.nn.log_softmax(model.apply(p, x))[jnp.arange(6), y].mean()

        return model.apply(params, x), jax.jit(jax.grad(loss))(params)

    ours = logits_and_grads()
    class Conv(nn.Conv):  # flax's convolution (same name: same parameter paths); a block's end as flax's pool
        def __call__(self, x, pool_relu=False):
            y = super().__call__(x)
            return jax.nn.relu(nn.max_pool(y, (2, 2), strides=(2, 2))) if pool_relu else y

    monkeypatch.setattr(cnn, "Conv", Conv)
    monkeypatch.setattr(cnn, "max_pool_relu", lambda y: jax.nn.relu(nn.max_pool(y, (2, 2), strides=(2, 2))))
    ref = logits_and_grads()
    np.testing.assert_array_equal(ours[0], ref[0])
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))
