"""A reply, as it is generated, split into reasoning, content and tool calls, in order.

Fed text deltas (the decoded reply), `ReplyParser` returns `Piece`s: reasoning text until
`</think>`, then content; a `<tool_call>...</tool_call>` block becomes one tool-call piece, parsed
by `replies.parse_tool_calls` (values typed by the tool's JSON schema). A `<tool_call>` opened
inside an unclosed think block ends the reasoning. Text that might be the start of a tag is held
back until it is known not to be; whitespace at the edges of a section is dropped (as
`split_reasoning` strips it), so the pieces of a stream concatenate to exactly the whole reply's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..replies import parse_tool_calls
from ..special_tokens import END_THINK, END_TOOL_CALL, THINK, TOOL_CALL

REASONING, CONTENT, TOOL = "reasoning", "content", "tool"


@dataclass
class Piece:
    kind: str                     # "reasoning" | "content" | "tool_call"
    text: str = ""
    call: dict[str, Any] = field(default_factory=dict)  # {"name", "arguments": {...}} for tool calls


class ReplyParser:
    def __init__(self, started_in_think: bool, tools: list[dict] | None = None, parse_tools: bool = True):
        self.state = REASONING if started_in_think else CONTENT
        self.tools = tools or []
        self.parse_tools = parse_tools
        self.buf = ""          # text not yet classified
        self._held_ws = ""     # trailing whitespace of the current section, emitted only if text follows
        self._fresh = True     # nothing emitted in the current section yet (leading whitespace is dropped)
        self._thought = started_in_think  # a reasoning section was seen (a later <think> is just text)
        self._before_call = (CONTENT, "", True)  # the section state a tool call interrupted

    def feed(self, text: str) -> list[Piece]:
        self.buf += text
        out: list[Piece] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Piece]:
        """The end of the reply: what was held back goes out; an unfinished tool call is content."""
        out: list[Piece] = []
        if self.state == TOOL:  # unfinished: back to the section it interrupted, as plain text
            self.state, self._held_ws, self._fresh = self._before_call
        self._emit(self.state, self.buf, out)
        self.buf = ""
        return out

    # ---- one step: consume what can be classified, False when waiting for more text ------------
    def _step(self, out: list[Piece]) -> bool:
        if self.state == TOOL:
            end = self.buf.find(END_TOOL_CALL)
            if end < 0:
                return False
            block, self.buf = self.buf[:end + len(END_TOOL_CALL)], self.buf[end + len(END_TOOL_CALL):]
            rest, calls = parse_tool_calls(block, self.tools)
            self._section(CONTENT)
            if len(calls) == 1 and not rest:
                out.append(Piece("tool_call", call=calls[0]))
            else:  # not a well-formed call: the model's text stays visible as content
                self._emit(CONTENT, block, out)
            return True
        if self.state == CONTENT and self._fresh and not self._thought:
            head = self.buf.lstrip()
            if head.startswith(THINK):  # the reply opens its own reasoning block
                self.buf = head[len(THINK):]
                self._thought = True
                self._section(REASONING)
                return True
            if THINK.startswith(head) and head:
                return False  # maybe "<think>" arriving in pieces
        tags = [END_THINK] if self.state == REASONING else []
        if self.parse_tools:
            tags.append(TOOL_CALL)
        hits = [(self.buf.find(t), t) for t in tags if t in self.buf]
        if not hits:
            keep = _partial_tag(self.buf, tags)
            self._emit(self.state, self.buf[:len(self.buf) - keep], out)
            self.buf = self.buf[len(self.buf) - keep:]
            return False
        at, tag = min(hits)
        self._emit(self.state, self.buf[:at], out)
        if tag == END_THINK:
            self.buf = self.buf[at + len(END_THINK):]
            self._section(CONTENT)
        else:  # a tool call: also ends unclosed reasoning
            self.buf = self.buf[at:]
            self._before_call = (self.state, self._held_ws, self._fresh)
            self._section(TOOL)
        return True

    def _section(self, state: str) -> None:
        self.state, self._held_ws, self._fresh = state, "", True

    def _emit(self, kind: str, text: str, out: list[Piece]) -> None:
        if self._fresh:
            text = text.lstrip()
        if not text:
            return
        text = self._held_ws + text
        body = text.rstrip()
        self._held_ws = text[len(body):]
        if body:
            self._fresh = False
            if out and out[-1].kind == kind:
                out[-1].text += body
            else:
                out.append(Piece(kind, body))


class RawText:
    """The parser for /v1/completions: no template, so the text is passed on as it is."""

    def feed(self, text: str) -> list[Piece]:
        return [Piece(CONTENT, text)] if text else []

    def finish(self) -> list[Piece]:
        return []


def _partial_tag(text: str, tags: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


class StopMatcher:
    """Finds the request's stop strings in streamed text; holds back what might be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to pass on, whether a stop string was hit: the text ends before it)."""
        if not self.stops:
            return text, False
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        keep = _partial_tag(self.buf, self.stops)
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out, False

    def finish(self) -> str:
        out, self.buf = self.buf, ""
        return out
