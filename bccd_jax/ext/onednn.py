"""Loads the oneDNN convolution extension (built by `python -m bccd_jax.ext.build`) and calls it.

`available()` loads the shared library once and registers its XLA FFI targets for the CPU platform;
it never builds anything and returns False (with the reason in `load_error()`) when the library is
absent or cannot be loaded. The library is looked up at $BCCD_JAX_ONEDNN_LIB, else at
bccd_jax/ext/_build/libbccd_onednn.so.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

LIB_ENV = "BCCD_JAX_ONEDNN_LIB"
LIB_NAME = "libbccd_onednn.so"
SOURCE = Path(__file__).with_name("onednn_conv.cc")
TARGETS = {"bccd_onednn_conv_fwd": "BccdOnednnConvFwd", "bccd_onednn_conv_bwd_data": "BccdOnednnConvBwdData",
           "bccd_onednn_conv_bwd_weights": "BccdOnednnConvBwdWeights"}

_lib: ctypes.CDLL | None = None
_error: str | None = None


def default_library_path() -> Path:
    return Path(__file__).with_name("_build") / LIB_NAME


def library_path() -> Path:
    return Path(os.environ[LIB_ENV]) if os.environ.get(LIB_ENV) else default_library_path()


def available() -> bool:
    """Whether the extension is built and loaded (loads and registers it on the first call)."""
    global _lib, _error
    if _lib is not None:
        return True
    if _error is not None:
        return False
    path = library_path()
    if not path.is_file():
        _error = f"{path} not found (build it with: python -m bccd_jax.ext.build)"
        return False
    try:
        import jax

        lib = ctypes.CDLL(str(path))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (OSError, AttributeError) as e:
        _error = f"{path} could not be loaded: {e}"
        return False
    _lib = lib
    return True


def load_error() -> str | None:
    """Why `available()` returned False; None when it did not (or was not called)."""
    return _error


def native_bf16() -> bool:
    """Whether oneDNN computes bfloat16 convolutions on native instructions on this CPU."""
    return available() and bool(_lib.BccdOnednnNativeBf16())


def describe() -> str:
    """oneDNN's implementation for each primitive created so far ("kind:shape impl" per line)."""
    if not available():
        return ""
    n = _lib.BccdOnednnDescribe(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    _lib.BccdOnednnDescribe(buf, n + 1)
    return buf.value.decode()


def _pads(pads):
    (pt, pb), (pl, pr) = pads
    return dict(pad_top=np.int64(pt), pad_bottom=np.int64(pb), pad_left=np.int64(pl), pad_right=np.int64(pr))


def _out_hw(h, w, kh, kw, pads):
    (pt, pb), (pl, pr) = pads
    return h + pt + pb - kh + 1, w + pl + pr - kw + 1


def conv_fwd(x, kernel, bias, pads):
    """y (x.dtype) = x (NHWC) * kernel (HWIO, float32 or bfloat16) + bias (float32 or None)."""
    import jax
    import jax.numpy as jnp

    n, h, w, _ = x.shape
    kh, kw, _, o = kernel.shape
    oh, ow = _out_hw(h, w, kh, kw, pads)
    b = jnp.zeros((o,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    call = jax.ffi.ffi_call("bccd_onednn_conv_fwd", jax.ShapeDtypeStruct((n, oh, ow, o), x.dtype),
                            vmap_method="sequential")
    return call(x, kernel, b, has_bias=bias is not None, **_pads(pads))


def conv_bwd_data(dy, kernel, pads, x_shape):
    """d(loss)/dx (dy.dtype) from dy (NHWC) and the kernel (HWIO)."""
    import jax

    call = jax.ffi.ffi_call("bccd_onednn_conv_bwd_data", jax.ShapeDtypeStruct(x_shape, dy.dtype),
                            vmap_method="sequential")
    return call(dy, kernel, **_pads(pads))


def conv_bwd_weights(x, dy, pads, kernel_shape):
    """(d(loss)/d(kernel), d(loss)/d(bias)), both float32, from x and dy (NHWC, one dtype)."""
    import jax
    import jax.numpy as jnp

    call = jax.ffi.ffi_call("bccd_onednn_conv_bwd_weights",
                            (jax.ShapeDtypeStruct(kernel_shape, jnp.float32),
                             jax.ShapeDtypeStruct((kernel_shape[-1],), jnp.float32)),
                            vmap_method="sequential")
    return call(x, dy, **_pads(pads))
