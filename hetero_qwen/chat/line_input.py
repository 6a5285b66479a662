"""Reading the user's messages: edited lines on a terminal, one message per line from a pipe.

On a terminal a message can span lines: end a line with a backslash to continue it, or put
\"\"\" on a line of its own to start a block and again to end it. readline gives line editing and
a history kept in the hetero-qwen cache directory between runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

PROMPT, MORE = ">>> ", "... "
BLOCK = '"""'
HISTORY_LENGTH = 1000


def history_path() -> Path:
    from ..tiny import default_tiny_dir
    return default_tiny_dir().parent / "chat_history"  # beside the tiny model, in hetero-qwen's cache dir


class TerminalReader:
    """input() with readline; `read()` returns one message, None at Ctrl-D; Ctrl-C raises
    KeyboardInterrupt (and drops a half-typed multi-line message)."""

    def __init__(self, history_file: Path | None = None):
        self.history_file = history_file
        try:
            import readline
        except ImportError:  # some Pythons lack it: plain input() still works
            self.readline = None
            return
        self.readline = readline
        readline.set_history_length(HISTORY_LENGTH)
        if history_file and history_file.is_file():
            try:
                readline.read_history_file(str(history_file))
            except OSError:
                pass

    def read(self) -> str | None:
        try:
            first = input(PROMPT)
        except EOFError:
            return None
        if first.strip() == BLOCK:
            return self._block()
        lines = [first]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            try:
                lines.append(input(MORE))
            except EOFError:
                break
        return "\n".join(lines)

    def _block(self) -> str:
        lines = []
        while True:
            try:
                line = input(MORE)
            except EOFError:
                break
            if line.strip() == BLOCK:
                break
            lines.append(line)
        return "\n".join(lines)

    def close(self) -> None:
        if self.readline is None or self.history_file is None:
            return
        try:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(str(self.history_file))
        except OSError:
            pass  # a read-only home must not spoil leaving the chat


class PipeReader:
    """One message per non-empty line of `stream`; None at the end of input."""

    def __init__(self, stream: TextIO = sys.stdin):
        self.stream = stream

    def read(self) -> str | None:
        while line := self.stream.readline():  # readline, not iteration: no read-ahead past a line
            line = line.rstrip("\r\n")
            if line.strip():
                return line
        return None

    def close(self) -> None:
        pass
