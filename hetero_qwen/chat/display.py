"""Printing a reply as it streams: reasoning dim (or hidden), the answer plain.

Reasoning is told apart by token id: the reply starts inside `<think>` when the prompt opened it,
and `</think>` ends it. The tags and end tokens themselves are never printed.
"""

from __future__ import annotations

from typing import TextIO

DIM, RESET = "\x1b[2m", "\x1b[0m"
ERASE_LINE = "\r\x1b[K"
# Control characters other than newline and tab, shown as U+FFFD on a terminal so that a reply can
# never move the cursor or change colours (a random or misbehaving model emits anything).
_CONTROLS = {c: "\ufffd" for c in [*range(0x20), 0x7F] if chr(c) not in "\n\t"}


class ReplyView:
    """Streams one reply's tokens to `out`.

    color: ANSI styling (a terminal); show_thinking: print the reasoning (dim when color), else a
    dim "thinking..." marker on a terminal and nothing on a pipe.
    """

    def __init__(self, tokenizer, out: TextIO, *, color: bool, show_thinking: bool,
                 starts_in_think: bool, stop_ids: frozenset[int]):
        self.tokenizer, self.out = tokenizer, out
        self.color, self.show_thinking = color, show_thinking
        self.stop_ids = stop_ids
        self.thinking = False
        self.marker = False        # the "thinking..." marker is on screen
        self.at_content_start = True
        self.printed = False       # anything printed on the current line
        self.decoder = tokenizer.stream_decoder()
        if starts_in_think:
            self._enter_thinking()

    def token(self, token: int) -> None:
        if token in self.stop_ids:
            return
        if token == self.tokenizer.think_id and not self.thinking and self.at_content_start:
            self._enter_thinking()
        elif token == self.tokenizer.end_think_id and self.thinking:
            self._leave_thinking()
        else:
            self._emit(self.decoder.feed(token))

    def finish(self, note: str | None = None) -> None:
        """End the reply's line, with an optional dim note like "[stopped]"."""
        self._emit(self.decoder.finish())
        if self.thinking and self.color and self.show_thinking:
            self._write(RESET)
        if note:
            self._write((" " if self.printed else "") + self._dim(note))
        self._write("\n")

    # ---- internals -------------------------------------------------------------------------
    def _enter_thinking(self) -> None:
        self.thinking = True
        if self.color and self.show_thinking:
            self._write(DIM)
        elif self.color:
            self._write(self._dim("thinking..."))
            self.marker = True
        elif self.show_thinking:
            self._write("<think>\n")

    def _leave_thinking(self) -> None:
        self._emit(self.decoder.finish())
        self.decoder = self.tokenizer.stream_decoder()
        self.thinking = False
        self.at_content_start = True
        if self.marker:
            self._write(ERASE_LINE)
            self.marker = self.printed = False
        elif self.show_thinking:
            self._write((RESET if self.color else "</think>") + "\n")
            self.printed = False

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.color:
            text = text.translate(_CONTROLS)
        if self.thinking:
            if self.show_thinking:
                self._write(text)
                self.printed = not text.endswith("\n")
            return
        if self.at_content_start:
            text = text.lstrip("\n")  # the template puts blank lines after </think>
            if not text:
                return
            self.at_content_start = False
        self._write(text)
        self.printed = not text.endswith("\n")

    def _dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color else text

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
