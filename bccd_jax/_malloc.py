"""glibc malloc settings applied when bccd_jax is imported: freed memory stays in the process for reuse.

XLA:CPU allocates the large buffers of a training step (activations, their gradients, the dense
layer's kernel gradient: about 18 MB each for the base CNN at 60x80, batch 32) afresh on every call
and frees them at its end. glibc serves requests that large with mmap and hands them back with munmap,
so every step touches its buffers' pages for the first time again, each fault a trip into the kernel,
and on a virtual machine an expensive one. With mmap off (M_MMAP_MAX 0), no trimming of the heap's
top (M_TRIM_THRESHOLD), a 256 MB top pad (M_TOP_PAD) and one arena for every thread (M_ARENA_MAX 1:
the heaps of XLA's worker threads' own arenas are capped at 64 MB and shrink back to the OS), the
buffers come back from the heap. On a 2-core AMD EPYC the base CNN's step at 60x80, batch 32 went
from 47 ms and 12,421 minor page faults to 31 ms and 251, the deep CNN's from 155 ms to 133 ms
(benchmarks/RESULTS.md, "glibc malloc", `benchmarks/malloc_ab.json`). The
price: the process keeps its peak memory until it exits. The arena setting only holds for threads
started after it, so it is applied at import, before JAX starts its thread pools.

Applied only where the C library is glibc (mallopt exists), and only when BCCD_JAX_MALLOC_DEFAULTS is
not "1" (set it to keep glibc's own behaviour). The settings concern allocation, never numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "BCCD_JAX_MALLOC_DEFAULTS"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8  # glibc's <malloc.h>
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 * 2**20))
"""(parameter, value) pairs handed to mallopt, in order."""


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and others lack it)
        return libc
    except (OSError, AttributeError):
        return None


def configure_malloc() -> bool:
    """Apply SETTINGS through mallopt when the conditions above hold; True when every call succeeded."""
    if os.environ.get(OPT_OUT_ENV) == "1":
        return False
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in SETTINGS)
