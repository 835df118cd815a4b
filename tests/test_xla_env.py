"""bccd_jax's XLA:CPU setting (bccd_jax/_xla_env.py): when it is applied, and that it changes no numbers.

Each case is a fresh interpreter: XLA reads XLA_FLAGS once, when JAX starts its backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bccd_jax._xla_env import OPT_OUT_ENV, YNN_FLAG, _jaxlib_knows

ROOT = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent("""
    import json, os, sys
    if sys.argv[1] == "jax-first":
        import jax; jax.devices()
    import bccd_jax
    import jax, jax.numpy as jnp, numpy as np
    x = jnp.asarray(np.random.default_rng(0).random((2, 12, 14, 3)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).random((3, 3, 3, 8)), jnp.float32)
    f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.vjp(f, x, w)
    dx, dw = vjp(jnp.ones_like(y))
    print("RESULT " + json.dumps({"flags": os.environ.get("XLA_FLAGS", ""),
                                  "y": np.asarray(y).ravel()[:50].tolist(), "dw": np.asarray(dw).ravel().tolist()}))
""")

pytestmark = pytest.mark.skipif(not _jaxlib_knows(b"xla_cpu_experimental_ynn_fusion_type"),
                                reason="this jaxlib has no YNNPACK fusion flag; bccd_jax leaves XLA_FLAGS alone")


def _child(mode: str = "bccd-first", **env) -> tuple[dict, str]:
    full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT_ENV)} | env
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, cwd=str(ROOT),
                         env=full, timeout=120)
    assert out.returncode == 0, out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), out.stderr


def test_flag_added_on_import_and_numbers_unchanged():
    on, _ = _child()
    off, _ = _child(**{OPT_OUT_ENV: "1"})
    assert YNN_FLAG in on["flags"].split()
    assert YNN_FLAG not in off["flags"].split()
    # the Eigen and YNNPACK convolutions agree (forward and weight gradient)
    for key in ("y", "dw"):
        a, b = on[key], off[key]
        assert max(abs(p - q) for p, q in zip(a, b)) <= 1e-4 * max(abs(v) for v in b)


def test_users_own_xla_flags_win():
    res, _ = _child(XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
    assert res["flags"] == "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    res, _ = _child(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert res["flags"].split() == ["--xla_force_host_platform_device_count=2", YNN_FLAG]


def test_too_late_warns_once_and_leaves_flags():
    res, err = _child("jax-first")
    assert YNN_FLAG not in res["flags"]
    warnings = [l for l in err.splitlines() if "imported after JAX started its backend" in l]
    assert len(warnings) == 1, err
