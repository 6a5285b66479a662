"""Ctrl-C and SIGTERM as exceptions the CLI can report in one line.

typer turns a KeyboardInterrupt raised inside a command into a plain exit status, so
`hetero_qwen.cli` wraps every command to re-raise it as `Interrupted` (exit 130). SIGTERM's default
action kills the process without running `finally` blocks; `install_sigterm` makes it raise
`Terminated` (exit 143) so atomic writers remove their temporaries. Both derive from
BaseException, like KeyboardInterrupt, so no `except Exception` swallows them.

`signal_point(name)`: tests set HETERO_QWEN_SIGNAL_AT=name:INT|TERM and the process signals itself
when it reaches that named point (a deterministic interrupt, no sleeps).
"""

from __future__ import annotations

import os
import signal

INTERRUPT_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATE_EXIT = 143  # 128 + SIGTERM
SIGNAL_ENV = "HETERO_QWEN_SIGNAL_AT"


class Interrupted(BaseException):
    """Ctrl-C reached the command; the CLI prints `interrupted` and exits 130."""

    exit_code = INTERRUPT_EXIT


class Terminated(BaseException):
    """SIGTERM reached the command; the CLI prints `terminated` and exits 143."""

    exit_code = TERMINATE_EXIT


def _raise_terminated(signum, frame):
    raise Terminated()


def install_sigterm() -> None:
    """Make SIGTERM unwind the stack (cleanup runs) instead of killing the process outright."""
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (an embedding caller): leave it alone
        pass


def signal_point(name: str) -> None:
    """Send this process the signal named in $HETERO_QWEN_SIGNAL_AT when it says `name:SIG`."""
    spec = os.environ.get(SIGNAL_ENV)
    if not spec:
        return
    point, _, sig = spec.partition(":")
    if point == name:
        os.kill(os.getpid(), {"INT": signal.SIGINT, "TERM": signal.SIGTERM}[sig or "INT"])
