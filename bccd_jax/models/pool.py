"""The CNN's 2x2 max-pool, and the end of a conv block (pool, bias, ReLU) with a backward pass for XLA:CPU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool, stride 2, VALID (odd trailing rows/columns dropped), as `nn.max_pool(x, (2, 2), (2, 2))`:
    the maximum of four strided slices."""
    h, w = (x.shape[-3] // 2) * 2, (x.shape[-2] // 2) * 2
    x = x[..., :h, :w, :]
    return jnp.maximum(jnp.maximum(x[..., 0::2, 0::2, :], x[..., 0::2, 1::2, :]),
                       jnp.maximum(x[..., 1::2, 0::2, :], x[..., 1::2, 1::2, :]))


def _windows(y: jnp.ndarray) -> jnp.ndarray:
    """(N, H, W, C) -> (N, H//2, 2, W//2, 2, C), odd trailing rows/columns dropped: 2x2 windows as axes 2 and 4."""
    n, h, w, c = y.shape
    return y[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_relu(y: jnp.ndarray, bias: jnp.ndarray | None = None) -> jnp.ndarray:
    """relu(max_pool_2x2(y) + bias), bias per channel (or None): the block's end in one op.

    The bias is added after the pool: max(y + b) = max(y) + b exactly (rounding is monotone), on a
    quarter of the elements, so a convolution before it can leave its bias out. The backward pass
    is one elementwise pass over the window: the gradient goes to the window's maximum, split
    equally among exact ties (as `jnp.max`'s), where autodiff of the four slices' maxima pads and
    adds four tensors the size of `y`.
    """
    return _max_pool_relu_fwd(y, bias)[0]


def _max_pool_relu_fwd(y, bias):
    pooled = max_pool_2x2(y)
    z = pooled if bias is None else pooled + bias.astype(pooled.dtype)
    return nn.relu(z), (y, pooled, z, bias)


def _max_pool_relu_bwd(res, g):
    y, pooled, z, bias = res
    dz = jnp.where(z > 0, g, jnp.zeros_like(g))
    at_max = _windows(y) == pooled[:, :, None, :, None, :]
    share = dz / at_max.sum(axis=(2, 4), dtype=dz.dtype)
    dy = jnp.where(at_max, share[:, :, None, :, None, :], jnp.zeros((), dz.dtype)).reshape(
        y.shape[0], pooled.shape[1] * 2, pooled.shape[2] * 2, y.shape[3])
    dy = jnp.pad(dy, ((0, 0), (0, y.shape[1] - dy.shape[1]), (0, y.shape[2] - dy.shape[2]), (0, 0)))
    db = None if bias is None else dz.astype(jnp.float32).sum(axis=(0, 1, 2)).astype(bias.dtype)
    return dy, db


max_pool_relu.defvjp(_max_pool_relu_fwd, _max_pool_relu_bwd)
