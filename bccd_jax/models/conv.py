"""A 2-D convolution layer, `nn.Conv`'s parameters and forward pass, with a backward pass for XLA:CPU.

XLA:CPU computes a convolution's kernel gradient as one convolution over the whole batch, through an
im2col patch matrix and layout transposes of the input and the output gradient as large as the batch
(benchmarks/RESULTS.md, "Where the deep CNN's step goes"). On the CPU platform `Conv`'s backward pass
sums the kernel gradient over chunks of `KERNEL_GRAD_CHUNK` images instead (the same convolution on a
slice that fits in cache); elsewhere (GPU) it is XLA's own. The choice is made when the program is
lowered (`lax.platform_dependent`), so an export for CUDA carries XLA's own. The gradients are the same
sums in another order: equal to XLA's within float rounding (tests/test_conv.py). The input and bias
gradients stay XLA's (the bias gradient as a matrix-vector product was no faster in the deep CNN's
step, and slower in the base CNN's, where XLA fuses the reduction into the pooling's backward).
Set BCCD_JAX_CONV_GRAD=xla to keep XLA's own backward pass everywhere (read when a program is traced).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

KERNEL_GRAD_CHUNK = 4
"""Images per kernel-gradient chunk on CPU (at most `MAX_CHUNKS` chunks); measured by benchmarks.layers."""
MAX_CHUNKS = 8
_DIMS = ("NHWC", "HWIO", "NHWC")
OPT_OUT_ENV = "BCCD_JAX_CONV_GRAD"


def _conv(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMS)


def _bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    chunk = max(chunk, -(-n // MAX_CHUNKS))
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def kernel_grad_chunked(x, kernel, dy, padding, chunk: int = KERNEL_GRAD_CHUNK):
    """d(loss)/d(kernel) as the sum of XLA's kernel gradients over batch chunks of `chunk` images."""
    def one(a, b):
        _, vjp = jax.vjp(lambda k: _conv(x[a:b], k, padding), kernel)
        return vjp(dy[a:b])[0].astype(jnp.float32)

    return functools.reduce(jnp.add, [one(a, b) for a, b in _bounds(x.shape[0], chunk)]).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_bias(x, kernel, bias, padding):
    """`x * kernel (+ bias)` in NHWC/HWIO, stride 1; `bias` may be None."""
    y = _conv(x, kernel, padding)
    return y if bias is None else y + bias.reshape((1, 1, 1, -1))


def _fwd(x, kernel, bias, padding):
    return conv_bias(x, kernel, bias, padding), (x, kernel, bias)


def _bwd(padding, res, dy):
    x, kernel, bias = res
    _, vjp_x = jax.vjp(lambda a: _conv(a, kernel, padding), x)
    dx = vjp_x(dy)[0]

    db = None if bias is None else dy.sum(axis=(0, 1, 2))

    def xla_own(x, dy):
        return jax.vjp(lambda k: _conv(x, k, padding), kernel)[1](dy)[0]

    if os.environ.get(OPT_OUT_ENV) == "xla":
        dk = xla_own(x, dy)
    else:
        dk = lax.platform_dependent(x, dy, cpu=lambda x, dy: kernel_grad_chunked(x, kernel, dy, padding),
                                    default=xla_own)
    return dx, dk, db


conv_bias.defvjp(_fwd, _bwd)


class Conv(nn.Module):
    """`nn.Conv` for stride 1, no dilation, one group: the same parameters ("kernel", "bias"), initialisers,
    dtype promotion and forward pass, so checkpoints and numbers carry over; the backward pass is
    `conv_bias`'s."""

    features: int
    kernel_size: Sequence[int]
    padding: str = "SAME"  # nn.Conv's default; the CNN passes its own
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv_bias(x, kernel, bias, self.padding)
