"""Writing files so that a killed process or a full disk never leaves half of one: a temporary sibling, flushed
to disk, then a rename; a failure is one line naming the file (errors.WriteFailed); and the one rule by which
values become JSON."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from bccd_jax.errors import WriteFailed, remedy

TMP_SUFFIX = ".tmp"  # write_atomic's temporary file: .<name>.<random>.tmp beside <name>


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
"""The mode open() gives a new file: what a file written in place had."""


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[BinaryIO], None]) -> Path:
    """Write `content` (text, bytes, or a function that writes to a binary file) to `path` atomically: the file
    holds the whole new content or its previous one. An OSError (a full disk, a read-only folder) is a
    WriteFailed naming `path`; the temporary file is removed."""
    path = Path(path)
    existed, tmp = path.exists(), None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 would hide results from the other users of a shared folder
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())  # whole on disk before it takes the name, also across a power cut
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(path, e, existed) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def partial_files(folder: str | os.PathLike) -> list[Path]:
    """The temporary files write_atomic left in `folder` when its process was killed mid-write (never the file they
    were to become). Removing them is for the folder's one writer: another process may be writing them now."""
    return sorted(p for p in Path(folder).glob(f".*{TMP_SUFFIX}") if p.is_file())


def write_failed(path: str | os.PathLike, err: BaseException, existed: bool) -> WriteFailed:
    """The one-line error of a file that could not be written atomically."""
    kept = "its previous content is kept" if existed else "nothing was written"
    return WriteFailed(path, f"{reason(err)} ({free_space(path)} free there)", kept,
                       f"{remedy(err)}, then run the command again")


def reason(err: BaseException, drop: str = "") -> str:
    """Why an OSError (or an error of a library that wraps one) happened, in a few words; `drop`: a pattern (a
    path, say) to leave out of the text."""
    if "No space left on device" in str(err) or "os_error_code='28'" in str(err):
        return "no space left on device"
    text = getattr(err, "strerror", None) or (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = re.sub(drop, "", text) if drop else text
    if text[:2].istitle():  # "No such file" -> "no such file"; "OUT_OF_RANGE" stays
        text = text[0].lower() + text[1:]
    return text[:240]


def free_space(path: str | os.PathLike) -> str:
    """Free space on the disk that holds `path` (or its nearest existing parent), e.g. "1.5 MB"."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return size_text(shutil.disk_usage(p).free)
    except OSError:
        return "unknown"


def size_text(nbytes: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError  # unreachable


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
