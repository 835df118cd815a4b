"""Fingerprints of the files a data set is built from: content hashes, and a cheap stat key to skip them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from bccd_jax.data.pixels import parallel_map


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SourceFile = tuple[str, str, int, int]
"""(name relative to its source root, absolute path, size, mtime_ns) of one file a build depends on."""


def scan_files(root: Path, prefix: str, keep: Callable[[str], bool] = lambda n: True) -> list[SourceFile]:
    """Recursively list files under `root` with os.scandir (its cached stat keeps 12.5k files well under 1 s)."""
    out: list[SourceFile] = []
    stack = [(str(root), prefix)]
    while stack:
        d, pre = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append((e.path, f"{pre}{e.name}/"))
                elif e.is_file() and keep(e.name):
                    st = e.stat()
                    out.append((pre + e.name, e.path, st.st_size, st.st_mtime_ns))
    return sorted(out)


def source_file(name: str, path: Path) -> SourceFile:
    st = path.stat()
    return name, str(path), st.st_size, st.st_mtime_ns


def fingerprint(files: Sequence[SourceFile], settings: dict[str, object], workers: int | None = None) -> str:
    """sha256 over the sorted (name, sha256(content)) of the source files plus the build settings."""
    files = sorted(files)
    digests = list(parallel_map(lambda f: sha256_file(Path(f[1])), files, workers))
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for f, d in zip(files, digests):
        h.update(f"{f[0]}\0{d}\n".encode())
    return h.hexdigest()


def stat_key(files: Sequence[SourceFile], settings: dict[str, object]) -> str:
    """Cheap key from (name, path, size, mtime) of the files + settings, to skip re-hashing unchanged sources."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, path, size, mtime in sorted(files):
        h.update(f"{name}\0{os.path.abspath(path)}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()
