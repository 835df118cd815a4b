"""One error type for everything a user can get wrong, and the CLI wrapper that prints it.

Every bad input (missing file, corrupt JPEG, malformed XML, wrong weights, wrong
shapes) is raised as `UserError` with a one-line message naming the thing and
what to do. CLIs run through `run_cli`, which prints that line on stderr and
exits with code 2; `--debug` shows the traceback instead. A file that cannot be written is a
`WriteFailed` (path, why, what is kept, what to do); an OSError nothing caught is one line too.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force one line


class WriteFailed(UserError):
    """A file or folder that could not be written (a full disk, a read-only folder), in one line: its path, why,
    what is kept and what to do. A caller that knows more (the run a checkpoint belongs to) gives better advice
    with `advise`."""

    def __init__(self, path: str | Path, reason: str, kept: str, todo: str):
        self.path, self.reason, self.kept, self.todo = Path(path), reason, kept, todo
        super().__init__(f"cannot write {path}: {reason}; {kept}; {todo}")

    def advise(self, kept: str | None = None, todo: str | None = None) -> "WriteFailed":
        return WriteFailed(self.path, self.reason, self.kept if kept is None else kept,
                           self.todo if todo is None else todo)


def remedy(err: BaseException | None) -> str:
    """What to do about an OSError, in a few words: free space, make writable, or look at the disk."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err):
        return "free space on that disk"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make that folder writable"
    if code in (errno.ENOENT, errno.ENOTDIR):
        return "check that its folder exists"
    return "check that disk"


def os_error_line(err: OSError) -> str:
    """An OSError no caller turned into a UserError, as one line naming the path."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    what = err.strerror or str(err) or type(err).__name__
    return f"{where}: {what} ({remedy(err)}, then run the command again)" if where else \
        f"{what} ({remedy(err)}, then run the command again)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (exit 2 through run_cli, no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _quiet_after_error() -> None:
    """The process ends with its one error line: from just before it, silence what library threads report while it
    shuts down (a TensorStore read of a damaged checkpoint calls back into an event loop already closed:
    "RuntimeError: Event loop is closed", printed through sys.excepthook from a native thread, or through
    threading.excepthook), and the "Exception ignored in ..." of garbage-collected coroutines."""
    import threading

    sys.unraisablehook = lambda unraisable: None
    sys.excepthook = lambda *exc: None
    threading.excepthook = lambda args: None


def _is_closed_loop_callback(exc: BaseException | None) -> bool:
    return type(exc) is RuntimeError and str(exc) == "Event loop is closed"


def _drop_closed_loop_callbacks() -> None:
    """From the start of a command, sys.excepthook and threading.excepthook drop one error and pass every other on:
    a native TensorStore thread calling back into an event loop that a failed checkpoint read has closed. It can
    fire at any moment after that read, before or while the error line prints, so silencing after the line
    (`_quiet_after_error`) cannot catch it alone."""
    import threading

    if getattr(sys.excepthook, "drops_closed_loop_callbacks", False):
        return
    sys_hook, thread_hook = sys.excepthook, threading.excepthook

    def excepthook(exc_type, exc, tb):
        if not _is_closed_loop_callback(exc):
            sys_hook(exc_type, exc, tb)

    def thread_excepthook(args):
        if not _is_closed_loop_callback(args.exc_value):
            thread_hook(args)

    excepthook.drops_closed_loop_callbacks = True
    sys.excepthook, threading.excepthook = excepthook, thread_excepthook


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; turn UserError (and KeyboardInterrupt) into one stderr line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    else:
        _drop_closed_loop_callbacks()
    try:
        return int(main(args) or 0)
    except UserError as e:
        if debug:
            traceback.print_exc()
        else:
            _quiet_after_error()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a disk or folder problem below a caller that did not expect one
        if debug:
            traceback.print_exc()
        else:
            _quiet_after_error()
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
