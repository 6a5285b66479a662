"""The chat loop: read a message or a command, stream the reply, repeat.

On a terminal replies stream with dim reasoning and a stats line; from a pipe each input line is
one message and stdout gets only the reply text (notes and errors go to stderr).
"""

from __future__ import annotations

import signal
import sys
from typing import TextIO

from ..errors import InputError
from .commands import SlashCommands, reply_stats
from .conversation import CONTEXT_ADVICE, Conversation
from .display import DIM, RESET, ReplyView
from .line_input import PipeReader, TerminalReader, history_path
from .prompt_cache import Interrupted


class StopOnCtrlC:
    """While a reply runs, the first Ctrl-C only asks it to stop (checked between tokens and
    prefill chunks, so the caches stay whole); a second one interrupts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self) -> "StopOnCtrlC":
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def is_set(self) -> bool:
        return self.requested


class ChatApp:
    def __init__(self, conversation: Conversation, *, interactive: bool, color: bool, show_thinking: bool,
                 out: TextIO | None = None, err: TextIO | None = None):
        self.conversation = conversation
        self.interactive = interactive
        self.color, self.show_thinking = color, show_thinking
        self.out, self.err = out or sys.stdout, err or sys.stderr  # looked up now, not at import
        self.notes = self.out if interactive else self.err  # a pipe's stdout carries replies only
        self.commands = SlashCommands(conversation, self)

    # ---- output (also the Output protocol of SlashCommands) --------------------------------
    def info(self, text: str) -> None:
        self.notes.write(text + "\n")
        self.notes.flush()

    def error(self, text: str) -> None:
        self.out.flush()
        self.err.write(f"error: {text}\n")
        self.err.flush()

    def dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color else text

    # ---- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        reader = TerminalReader(history_path()) if self.interactive else PipeReader(sys.stdin)
        try:
            while True:
                try:
                    text = reader.read()
                except KeyboardInterrupt:
                    self.info("\n" + self.dim("(Ctrl-C: type /exit or press Ctrl-D to leave)"))
                    continue
                if text is None:
                    if self.interactive:
                        self.info("")
                    return 0
                if not text.strip():
                    continue
                if text.startswith("/") and not text.startswith("//"):
                    if self.commands.run(text):
                        return 0
                    continue
                self.reply(text[1:] if text.startswith("//") else text)
        finally:
            reader.close()

    def reply(self, text: str) -> None:
        conversation = self.conversation
        with StopOnCtrlC() as stop:
            try:
                turn = conversation.begin(text, should_stop=stop.is_set)
            except (Interrupted, KeyboardInterrupt):
                self.info(self.dim("(stopped before the reply began; the message was not sent)"))
                return
            except InputError as e:
                self.error(str(e))
                return
            view = ReplyView(conversation.tokenizer, self.out, color=self.color, show_thinking=self.show_thinking,
                             starts_in_think=turn.starts_in_think, stop_ids=turn.stop_ids)
            try:
                for token in turn:
                    view.token(token)
                    if stop.is_set():
                        break
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: what was generated is kept, like the first
            finally:
                conversation.end(turn)
            # Still inside StopOnCtrlC: a late Ctrl-C must not break off the tidy-up.
            view.finish("[stopped]" if turn.finish_reason == "interrupted" and self.interactive else None)
        if turn.finish_reason == "context":
            self.error(f"the reply stopped at the context limit of {conversation.engine.context} tokens: "
                       f"{CONTEXT_ADVICE}")
        if self.interactive:
            self.info(self.dim(f"[{reply_stats(turn)}]"))
