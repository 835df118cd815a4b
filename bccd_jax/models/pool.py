"""The CNN's 2x2 max-pool, and the end of a conv block (pool, bias, ReLU) with a backward pass for XLA:CPU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool, stride 2, VALID (odd trailing rows/columns dropped), as `nn.max_pool(x, (2, 2), (2, 2))`:
    the maximum of the windows' four positions."""
    q = _quarters(x)
    return jnp.maximum(jnp.maximum(q[0], q[1]), jnp.maximum(q[2], q[3]))


def _quarters(y: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """The four positions of every 2x2 window, (top-left, top-right, bottom-left, bottom-right), each
    (..., H//2, W//2, C); odd trailing rows/columns dropped."""
    h, w = (y.shape[-3] // 2) * 2, (y.shape[-2] // 2) * 2
    y = y[..., :h, :w, :]
    return y[..., 0::2, 0::2, :], y[..., 0::2, 1::2, :], y[..., 1::2, 0::2, :], y[..., 1::2, 1::2, :]


@jax.custom_vjp
def max_pool_relu(y: jnp.ndarray, bias: jnp.ndarray | None = None) -> jnp.ndarray:
    """relu(max_pool_2x2(y) + bias), bias per channel (or None): the block's end in one op.

    The bias is added after the pool: max(y + b) = max(y) + b exactly (rounding is monotone), on a
    quarter of the elements, so a convolution before it can leave its bias out. The forward pass keeps
    which of the window's four positions held the maximum (one byte per pooled value; the first in
    row-major order among exact ties, as `nn.max_pool`'s and PyTorch's gradients choose), and the backward
    pass routes the gradient there in one elementwise pass: no copy of `y` is kept for it, where autodiff
    of the four slices' maxima keeps `y` and pads and adds four tensors its size.
    """
    return _max_pool_relu_fwd(y, bias)[0]


def _max_pool_relu_fwd(y, bias):
    q, pooled = _quarters(y), max_pool_2x2(y)
    which = jnp.where(q[0] == pooled, 0, jnp.where(q[1] == pooled, 1, jnp.where(q[2] == pooled, 2, 3)))
    z = pooled if bias is None else pooled + bias.astype(pooled.dtype)
    out = nn.relu(z)
    return out, (which.astype(jnp.int8), out > 0, bias, y.shape)


def _max_pool_relu_bwd(res, g):
    which, live, bias, shape = res
    dz = jnp.where(live, g, jnp.zeros_like(g))
    n, hp, wp, c = dz.shape
    position = (2 * jnp.arange(2, dtype=jnp.int8).reshape(1, 1, 2, 1, 1, 1)
                + jnp.arange(2, dtype=jnp.int8).reshape(1, 1, 1, 1, 2, 1))  # window row a, column b: 2a + b
    dy = jnp.where(which[:, :, None, :, None, :] == position, dz[:, :, None, :, None, :], jnp.zeros((), dz.dtype))
    dy = dy.reshape(n, hp * 2, wp * 2, c)
    if dy.shape[1:3] != tuple(shape[1:3]):
        dy = jnp.pad(dy, ((0, 0), (0, shape[1] - dy.shape[1]), (0, shape[2] - dy.shape[2]), (0, 0)))
    db = None if bias is None else dz.astype(jnp.float32).sum(axis=(0, 1, 2)).astype(bias.dtype)
    return dy, db


max_pool_relu.defvjp(_max_pool_relu_fwd, _max_pool_relu_bwd)
