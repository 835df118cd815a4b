"""Writing files so that a killed process never leaves half of one: a temporary sibling, then a rename;
and the one rule by which values become JSON."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[BinaryIO], None]) -> Path:
    """Write `content` (text, bytes, or a function that writes to a binary file) to `path` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as indented JSON (numpy arrays and scalars as lists and numbers), atomically."""
    return write_atomic(path, json.dumps(obj, indent=2, default=_numpy) + "\n")


def plain(value: Any) -> Any:
    """`value` as JSON reads it back (tuples as lists, numpy values as numbers, anything else as its str), so
    a saved and a current setting compare equal."""
    return json.loads(json.dumps(value, default=lambda o: _numpy(o) if hasattr(o, "tolist") else str(o)))


def _numpy(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
