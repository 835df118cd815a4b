"""bccd_jax's glibc malloc setting (bccd_jax/_malloc.py): freed buffers are reused, not faulted in again.

Each case is a fresh interpreter: the settings are process-wide, applied at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bccd_jax._malloc import OPT_OUT_ENV, _glibc

_CHILD = textwrap.dedent("""
    import resource
    import bccd_jax
    import numpy as np
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(2**24, np.float32)  # 64 MB, freed: glibc's default hands it back to the OS
    del a
    before = faults()
    a = np.ones(2**24, np.float32)
    print("RESULT", faults() - before)
""")

pytestmark = pytest.mark.skipif(_glibc() is None, reason="not glibc: bccd_jax leaves malloc alone")


def _faults_of_a_second_64mb_buffer(**env) -> int:
    full = {k: v for k, v in os.environ.items() if k != OPT_OUT_ENV} | env
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=full, timeout=120)
    assert out.returncode == 0, out.stderr
    return int([line for line in out.stdout.splitlines() if line.startswith("RESULT ")][-1].split()[1])


def test_a_freed_buffer_is_reused_without_page_faults_and_the_opt_out_restores_glibcs_own():
    ours = _faults_of_a_second_64mb_buffer()
    glibc = _faults_of_a_second_64mb_buffer(**{OPT_OUT_ENV: "1"})
    assert ours <= 16, f"{ours} page faults touching a reused 64 MB buffer"
    assert glibc > ours
