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

oneDNN (optional): with the extension built (`python -m bccd_jax.ext.build`, see bccd_jax.ext), a
bfloat16 `Conv` runs its forward pass, input gradient and kernel/bias gradients as oneDNN custom calls
on CPU (`conv_bias_onednn`: bfloat16 kernels with float32 accumulation; the float32 kernel and bias go
in as they are and their gradients come back in float32). `BCCD_JAX_CONV` (read when a program is
traced) chooses: `auto` (default) oneDNN for bfloat16 on a CPU with native bfloat16 instructions,
`onednn` oneDNN for float32 and bfloat16, `onednn-bf16` oneDNN bfloat16 convolutions in a float32 model
too (their inputs rounded to bfloat16, their outputs and gradients converted back to float32, the other
layers float32, as autocast), `xla` never. On a CPU without bfloat16 instructions (oneDNN has no
bfloat16 convolution there) bfloat16 convolutions stay XLA's, and `onednn-bf16` is `onednn`, with a
warning. Without the extension every choice falls back to the XLA path above (`onednn` with a warning;
`auto` too when a library exists but is stale or does not load: the warning names the command that
rebuilds it). On other platforms the program lowers to XLA's convolutions either way
(`lax.platform_dependent`).

Both paths take an empty batch (an empty output, zero kernel and bias gradients) and run inside
`shard_map(check_vma=True)`: the backward passes return each gradient varying over the mesh axes its
parameter varies over (`cotangent_like`).
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from bccd_jax.models.pool import max_pool_relu

KERNEL_GRAD_CHUNK = 4
"""Images per kernel-gradient chunk on CPU (at most `MAX_CHUNKS` chunks); measured by benchmarks.layers."""
MAX_CHUNKS = 8
_DIMS = ("NHWC", "HWIO", "NHWC")
OPT_OUT_ENV = "BCCD_JAX_CONV_GRAD"
PATH_ENV = "BCCD_JAX_CONV"
PATHS = ("auto", "onednn", "onednn-bf16", "xla")
ONEDNN_MIN_KERNEL_GRAD_CHANNELS = 16
"""Below this many input channels (the first layer's 3) the oneDNN path's kernel gradient is XLA's chunked float32
one: the deep CNN's first layer at 60x80, batch 32, took oneDNN 48 ms in bfloat16 (537 ms over NHWC) against
XLA's 12 ms."""


def _conv(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMS)


def _bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    chunk = max(chunk, -(-n // MAX_CHUNKS))
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def cotangent_like(ct, primal):
    """`ct` varying over the manual mesh axes (inside a `shard_map` with check_vma=True) that `primal` varies over,
    as a custom_vjp's backward pass must return it: summed over the axes only `ct` varies over (the transpose of
    the implicit broadcast of an invariant primal, as JAX's own autodiff does), cast to vary over those only
    `primal` varies over. Unchanged elsewhere."""
    have, want = (jax.typeof(a).manual_axis_type.varying for a in (ct, primal))
    if have - want:
        ct = lax.psum(ct, tuple(have - want))
    return lax.pcast(ct, tuple(want - have), to="varying") if want - have else ct


def kernel_grad_chunked(x, kernel, dy, padding, chunk: int = KERNEL_GRAD_CHUNK):
    """d(loss)/d(kernel) as the sum of XLA's kernel gradients over batch chunks of `chunk` images (zeros for
    an empty batch)."""
    def one(a, b):
        _, vjp = jax.vjp(lambda k: _conv(x[a:b], k, padding), kernel)
        return vjp(dy[a:b])[0].astype(jnp.float32)

    parts = [one(a, b) for a, b in _bounds(x.shape[0], chunk)]
    return functools.reduce(jnp.add, parts).astype(kernel.dtype) if parts else jnp.zeros_like(kernel)


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

    def chunked(x, dy):
        return cotangent_like(kernel_grad_chunked(x, kernel, dy, padding), kernel)

    if os.environ.get(OPT_OUT_ENV) == "xla":
        dk = xla_own(x, dy)
    else:
        dk = lax.platform_dependent(x, dy, cpu=chunked, default=xla_own)
    return dx, dk, None if bias is None else cotangent_like(db, bias)


conv_bias.defvjp(_fwd, _bwd)


def explicit_padding(padding, kernel_hw) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """"SAME"/"VALID" (stride 1) or ((top, bottom), (left, right)) -> the latter; None for anything else."""
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return (0, 0), (0, 0)
        if padding.upper() == "SAME":
            return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_hw)
        return None
    try:
        (t, b), (l, r) = padding
        return (int(t), int(b)), (int(l), int(r))
    except (TypeError, ValueError):
        return None


_warned: set[str] = set()


def conv_path(dtype) -> str:
    """"onednn", "onednn-bf16" or "xla": the path a `Conv` computing in `dtype` takes on CPU (see the module's
    docstring)."""
    choice = (os.environ.get(PATH_ENV) or "auto").lower()
    if choice not in PATHS:
        raise ValueError(f"{PATH_ENV} must be one of {PATHS}, got {choice!r}")
    dtype = jnp.dtype(dtype)
    if choice == "xla" or dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        return "xla"
    if choice == "auto" and dtype != jnp.dtype(jnp.bfloat16):
        return "xla"
    from bccd_jax.ext import onednn

    if not onednn.available():  # announced when asked for, or when a library exists but is stale or does not load
        error = onednn.load_error()
        if (choice.startswith("onednn") or onednn.unusable()) and error not in _warned:
            _warned.add(error)
            warnings.warn(f"{PATH_ENV}={choice} but the oneDNN extension is not available ({error}); using XLA's "
                          "convolutions", stacklevel=3)
        return "xla"
    bf16 = choice == "onednn-bf16" or dtype == jnp.dtype(jnp.bfloat16)
    if bf16 and not onednn.native_bf16():  # oneDNN has no bfloat16 convolution for this CPU
        if choice != "auto" and "no-bf16" not in _warned:
            _warned.add("no-bf16")
            warnings.warn(f"{PATH_ENV}={choice}: this CPU has no bfloat16 instructions for oneDNN; bfloat16 "
                          f"convolutions use XLA's{', float32 ones oneDNN' if choice == 'onednn-bf16' else ''}",
                          stacklevel=3)
        return "onednn" if choice == "onednn-bf16" and dtype == jnp.dtype(jnp.float32) else "xla"
    return "onednn-bf16" if choice == "onednn-bf16" and dtype == jnp.dtype(jnp.float32) else "onednn"


def _conv_ref(x, kernel, bias, pads):
    """XLA's convolution in x's dtype (the kernel and bias converted to it): the oneDNN path's reference."""
    y = lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), pads, dimension_numbers=_DIMS)
    return y if bias is None else y + bias.astype(x.dtype).reshape((1, 1, 1, -1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv_bias_onednn(x, kernel, bias, pads, compute_dtype=None):
    """`x * kernel (+ bias)` in NHWC/HWIO, stride 1, explicit `pads` ((top, bottom), (left, right)), returned
    in x's dtype (float32 or bfloat16); kernel and bias keep their own dtype (float32 master weights) and get
    gradients in it. Where the program is lowered for CPU: oneDNN custom calls in `compute_dtype` (default
    x's; bfloat16 with float32 x rounds x and the output gradient to bfloat16 for them and converts their
    results back). Elsewhere: `_conv_ref` in x's dtype, XLA's convolution."""
    return _onednn_fwd(x, kernel, bias, pads, compute_dtype)[0]


def _onednn_fwd(x, kernel, bias, pads, compute_dtype):
    from bccd_jax.ext import onednn

    compute = x.dtype if compute_dtype is None else jnp.dtype(compute_dtype)
    y = lax.platform_dependent(
        x, kernel, cpu=lambda x, k: onednn.conv_fwd(x.astype(compute), k, bias, pads).astype(x.dtype),
        default=lambda x, k: _conv_ref(x, k, bias, pads))
    return y, (x, kernel, bias)


def _onednn_bwd(pads, compute_dtype, res, dy):
    from bccd_jax.ext import onednn

    x, kernel, bias = res
    dy = dy.astype(x.dtype)
    compute = x.dtype if compute_dtype is None else jnp.dtype(compute_dtype)
    bias_like = jnp.zeros(kernel.shape[-1:], jnp.float32) if bias is None else bias

    def cpu(x, kernel, dy):  # the sums over the batch summed over the mesh axes `kernel` and `bias` do not vary over
        xc, dyc = x.astype(compute), dy.astype(compute)
        dx = onednn.conv_bwd_data(dyc, kernel, pads, x.shape).astype(x.dtype)
        if x.shape[-1] < ONEDNN_MIN_KERNEL_GRAD_CHANNELS:  # XLA's chunked float32 kernel gradient is faster here
            x32, dy32 = xc.astype(jnp.float32), dyc.astype(jnp.float32)
            dk = kernel_grad_chunked(x32, kernel.astype(jnp.float32), dy32, pads)
            db = dy32.sum(axis=(0, 1, 2))
        else:
            dk, db = onednn.conv_bwd_weights(xc, dyc, pads, kernel.shape)
        return (cotangent_like(dx, x), cotangent_like(dk.astype(kernel.dtype), kernel),
                cotangent_like(db, bias_like))

    def default(x, kernel, dy):
        dx, dk, db = jax.vjp(lambda x, k, b: _conv_ref(x, k, b, pads), x, kernel, bias_like)[1](dy)
        return dx, dk, db.astype(jnp.float32)

    dx, dk, db = lax.platform_dependent(x, kernel, dy, cpu=cpu, default=default)
    return dx, dk, None if bias is None else db.astype(bias.dtype)


conv_bias_onednn.defvjp(_onednn_fwd, _onednn_bwd)


class Conv(nn.Module):
    """`nn.Conv` for stride 1, no dilation, one group: the same parameters ("kernel", "bias"), initialisers,
    dtype promotion and forward pass, so checkpoints and numbers carry over; the backward pass is
    `conv_bias`'s (or, where `conv_path` says so, `conv_bias_onednn`'s forward and backward passes)."""

    features: int
    kernel_size: Sequence[int]
    padding: str = "SAME"  # nn.Conv's default; the CNN passes its own
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray, pool_relu: bool = False) -> jnp.ndarray:
        """The convolution; with `pool_relu`, relu(2x2 max-pool(conv) + bias) (`pool.max_pool_relu`: the bias
        added after the pool, the same numbers)."""
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        dtype = nn.dtypes.canonicalize_dtype(x, kernel, bias, dtype=self.dtype)
        pads = explicit_padding(self.padding, self.kernel_size)
        onednn_shape = pads is not None and kernel.dtype in (jnp.float32, jnp.bfloat16) and 0 not in kernel.shape \
            and 0 not in x.shape[1:]  # an empty batch is the extension's; empty images or channels are not
        path = conv_path(dtype) if onednn_shape else "xla"
        conv_bias_in = None if pool_relu else bias
        if path == "onednn-bf16":  # a bfloat16 convolution between float32 activations
            y = conv_bias_onednn(jnp.asarray(x, dtype), kernel, conv_bias_in, pads, "bfloat16")
        elif path == "onednn":
            y = conv_bias_onednn(jnp.asarray(x, dtype), kernel, conv_bias_in, pads)
        else:
            x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
            y = conv_bias(x, kernel, None if pool_relu else bias, self.padding)
        if not pool_relu:
            return y
        return max_pool_relu(y, bias)
