"""One writer per run folder: `writer.lock` holds the writing process's pid, host, start time and command.

The file is locked with flock(2), which the kernel releases when the process ends however it ends (kill -9
included): a second writer finds it locked and is refused in one line naming the first; a file left by a
process that is gone is not locked, and the next writer takes it over with a note naming the process it
replaces. Where the file system has no flock, the pid decides: a live process of this host holds the lock.
The writer removes the file when it is done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

from bccd_jax.errors import UserError, WriteFailed, remedy
from bccd_jax.files import reason
from bccd_jax.run.provenance import timestamp

LOCK_FILE = "writer.lock"


def holder_text(holder: dict[str, Any]) -> str:
    """Who a lock file names, in words: "process 123 on host h (python -m ..., since 20260101-120000)"."""
    if "pid" not in holder:  # a writer between taking the lock and writing its name into it
        return "another process"
    since = f"since {holder['started']}" if holder.get("started") else ""
    what = ", ".join(x for x in (holder.get("command", ""), since) if x)
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}" + (f" ({what})" if what else "")


@contextlib.contextmanager
def writer_lock(folder: Path, command: str, note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold `folder/writer.lock` for the block; UserError when another live process holds it."""
    path = Path(folder) / LOCK_FILE
    fd, previous = _acquire(path)
    try:
        _write_holder(fd, path, {"pid": os.getpid(), "host": socket.gethostname(), "started": timestamp(),
                                 "command": command})
        if previous and previous.get("pid") != os.getpid() and note is not None:
            note(f"took over {path} from {holder_text(previous)}, which is gone")
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked: a writer waiting on this file then sees it gone and retries
        os.close(fd)


def _acquire(path: Path) -> tuple[int, dict[str, Any] | None]:
    """An open, locked descriptor of `path` (the file it names now) and what the file said before."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WriteFailed(path, reason(e), "nothing was written", f"{remedy(e)}, then run the command again") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # no flock here: the pid decides
                if not _alive(holder):
                    return fd, holder
            os.close(fd)
            raise UserError(f"{path.parent} is being written by {holder_text(holder or {})}; two writers would "
                            "overwrite each other's checkpoints and metrics: wait for it to finish or stop it, "
                            f"then resume (a lock left by a process that is gone is taken over by itself)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the writer before removed it as this one opened it
            same = False
        if same:
            return fd, _read_holder(fd)
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 4096, 0)
        holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _write_holder(fd: int, path: Path, holder: dict[str, Any]) -> None:
    data = (json.dumps(holder) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as e:
        raise WriteFailed(path, reason(e), "nothing else was written", f"{remedy(e)}, then run the command again") \
            from e


def _alive(holder: dict[str, Any] | None) -> bool:
    """Whether the process a lock file names runs (a process of another host counts as running)."""
    if not holder or not isinstance(holder.get("pid"), int):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

