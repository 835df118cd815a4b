"""One error type for everything a user can get wrong, and the CLI wrapper that prints it.

Every bad input (missing file, corrupt JPEG, malformed XML, wrong weights, wrong
shapes) is raised as `UserError` with a one-line message naming the thing and
what to do. CLIs run through `run_cli`, which prints that line on stderr and
exits with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Sequence

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force one line


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (exit 2 through run_cli, no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; turn UserError (and KeyboardInterrupt) into one stderr line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        return int(main(args) or 0)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        if not debug:  # the process ends here: no late "Exception ignored in ..." noise from GC'd coroutines
            sys.unraisablehook = lambda unraisable: None
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
