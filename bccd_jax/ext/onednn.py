"""Loads the oneDNN convolution extension (built by `python -m bccd_jax.ext.build`) and calls it.

`available()` loads the shared library and registers its XLA FFI targets for the CPU platform; it never
builds anything and returns False (with the reason in `load_error()`) when the library is absent, stale
(its build id, read from the file before it is loaded, is not `build.build_id()` of this source: built
from another onednn_conv.cc, other flags or another jaxlib) or cannot be loaded. A failure is retried
when the file changes, so a rebuild in the same process is picked up; a library once loaded stays
loaded for the process (the dynamic loader keeps one copy per path). The library is looked up at
$BCCD_JAX_ONEDNN_LIB, else at bccd_jax/ext/_build/libbccd_onednn.so.

The FFI calls' outputs vary over the manual mesh axes their inputs vary over (inside a `shard_map` with
check_vma=True), as XLA's own convolution's do.
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
BUILD_ID_MARK = b"bccd-onednn-build-id:"
REBUILD = "python -m bccd_jax.ext.build"

_lib: ctypes.CDLL | None = None
_error: str | None = None
_error_file: tuple | None = None  # the file's state when `_error` was found; None: not retried in this process
_unusable = False  # `_error` is about a library that exists


def default_library_path() -> Path:
    return Path(__file__).with_name("_build") / LIB_NAME


def library_path() -> Path:
    return Path(os.environ[LIB_ENV]) if os.environ.get(LIB_ENV) else default_library_path()


def _file_state(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (str(path),)
    return str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def stale_reason(path: Path) -> str | None:
    """Why the library at `path` was not built from this source, flags and jaxlib; None when it was."""
    from bccd_jax.ext.build import build_id

    data = path.read_bytes()
    at = data.find(BUILD_ID_MARK)
    if at < 0:
        return "it carries no build id (built by an older bccd_jax)"
    found = data[at + len(BUILD_ID_MARK):at + len(BUILD_ID_MARK) + 64].decode("ascii", "replace")
    if found != build_id():
        return f"built from another {SOURCE.name}, compiler flags or jaxlib (build id {found[:12]})"
    return None


def available() -> bool:
    """Whether the extension is built and loaded (loads and registers it on the first call that finds it)."""
    global _lib, _error, _error_file, _unusable
    if _lib is not None:
        return True
    path = library_path()
    state = _file_state(path)
    if _error is not None and (_error_file is None or _error_file == state):
        return False
    _error_file, _unusable = state, len(state) > 1
    if not _unusable:
        _error = f"{path} not found (build it with: {REBUILD})"
        return False
    try:
        stale = stale_reason(path)
    except OSError as e:
        stale = f"it cannot be read: {e}"
    if stale:
        _error = f"{path} is stale: {stale}; rebuild it with: {REBUILD}"
        return False
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        _error = f"{path} could not be loaded ({' '.join(str(e).split())}); rebuild it with: {REBUILD}"
        return False
    try:
        import jax

        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except Exception as e:  # noqa: BLE001 - loaded (a rebuilt file at this path would not be) or targets taken
        _error_file = None
        _error = (f"{path} could not be registered ({' '.join(str(e).split())}); rebuild it with: {REBUILD}, then "
                  "restart Python")
        return False
    _lib, _error = lib, None
    return True


def load_error() -> str | None:
    """Why `available()` returned False; None when it did not (or was not called)."""
    return _error


def unusable() -> str | None:
    """`load_error()` when a library file exists but is stale or does not load (worth a warning even where the
    extension is optional); None otherwise."""
    return _error if _error is not None and _unusable else None


def cache_capacity(n: int | None = None) -> int:
    """The extension's cache's capacity in primitives (each shape, batch size included, takes up to three);
    with `n`, sets it (dropping the least recently used beyond it) and returns the one before."""
    if not available():
        raise RuntimeError(f"oneDNN extension not available: {load_error()}")
    _lib.BccdOnednnCacheCapacity.restype = ctypes.c_long
    return int(_lib.BccdOnednnCacheCapacity(ctypes.c_long(-1 if n is None else n)))


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


def _call(target, results, *args, **attrs):
    """`target` on `args`, with every input cast to vary over the manual mesh axes any of them varies over (an FFI
    call wants them equal) and the `results` (shape-dtype structs) varying over them too."""
    import jax
    from jax.sharding import ManualAxisType, NamedSharding, PartitionSpec

    varying = [jax.typeof(a).manual_axis_type.varying for a in args]
    union = frozenset().union(*varying)
    if union:  # the results on the inputs' (manual) mesh
        args = [jax.lax.pcast(a, tuple(union - v), to="varying") for a, v in zip(args, varying)]
        mat = ManualAxisType(varying=union)
        sharding = NamedSharding(jax.typeof(args[0]).sharding.mesh, PartitionSpec())
        results = jax.tree.map(lambda r: jax.ShapeDtypeStruct(r.shape, r.dtype, sharding=sharding,
                                                              manual_axis_type=mat), results)
    return jax.ffi.ffi_call(target, results, vmap_method="sequential")(*args, **attrs)


def conv_fwd(x, kernel, bias, pads):
    """y (x.dtype) = x (NHWC) * kernel (HWIO, float32 or bfloat16) + bias (float32 or None)."""
    import jax
    import jax.numpy as jnp

    n, h, w, _ = x.shape
    kh, kw, _, o = kernel.shape
    oh, ow = _out_hw(h, w, kh, kw, pads)
    b = jnp.zeros((o,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    return _call("bccd_onednn_conv_fwd", jax.ShapeDtypeStruct((n, oh, ow, o), x.dtype), x, kernel, b,
                 has_bias=bias is not None, **_pads(pads))


def conv_bwd_data(dy, kernel, pads, x_shape):
    """d(loss)/dx (dy.dtype) from dy (NHWC) and the kernel (HWIO)."""
    import jax

    return _call("bccd_onednn_conv_bwd_data", jax.ShapeDtypeStruct(x_shape, dy.dtype), dy, kernel, **_pads(pads))


def conv_bwd_weights(x, dy, pads, kernel_shape):
    """(d(loss)/d(kernel), d(loss)/d(bias)), both float32, from x and dy (NHWC, one dtype)."""
    import jax
    import jax.numpy as jnp

    results = (jax.ShapeDtypeStruct(kernel_shape, jnp.float32), jax.ShapeDtypeStruct((kernel_shape[-1],), jnp.float32))
    return _call("bccd_onednn_conv_bwd_weights", results, x, dy, **_pads(pads))
