"""One request's generation, on the worker thread: prompt cache -> Engine.generate -> reply pieces.

The prompt cache rewinds to the longest prefix it holds and feeds up to the divergence mark; the
rest of the prompt goes through `Engine.generate` (the engine's one generate path), so only the
request's new tokens are run. The caches then hold the whole prompt at the first generated token,
where a snapshot is taken for the next turn. Decoded text passes the stop strings, then the
ReplyParser; its pieces go to the request as they come.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..chat.prompt_cache import Interrupted
from ..special_tokens import END_THINK
from .conversation_cache import ConversationCache
from .prompts import Prompt
from .reply_parser import Piece, RawText, ReplyParser, StopMatcher


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    fed_tokens: int = 0      # prompt tokens this request ran through the model (not OpenAI's: for tests/logs)

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


@dataclass
class Job:
    """A queued request. `emit` is called from the worker thread with ("piece", Piece),
    ("end", finish_reason, Usage) or ("error", exception)."""
    prompt: Prompt
    emit: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class GenerationRunner:
    def __init__(self, engine, cache: ConversationCache, generate: Callable | None = None, tokenizer_lock=None):
        self.engine = engine
        self.lock = tokenizer_lock or threading.Lock()
        self.tokenizer = engine.tokenizer
        self.cache = cache
        self.generate = generate or engine.generate  # tests put a scripted double here
        self.stop_ids = frozenset([*engine.eos_ids, *self.tokenizer.eos_ids])
        self.end_think_id = self.tokenizer.end_think_id
        self.last_usage: Usage | None = None

    def run(self, job: Job) -> None:
        try:
            finish, usage = self._run(job)
        except Interrupted:
            finish, usage = "cancelled", Usage(prompt_tokens=len(job.prompt.ids))
        except BaseException:
            self.cache.live.clear()  # a failure part-way may leave layers out of step
            raise
        self.last_usage = usage
        job.emit(("end", finish, usage))

    def _run(self, job: Job) -> tuple[str, Usage]:
        p = job.prompt
        live = self.cache.live
        usage = Usage(prompt_tokens=len(p.ids))
        self.cache.select(p.ids, p.resume_at)
        feed = live.prepare(p.ids, p.marks, should_stop=job.cancelled.is_set)
        usage.cached_tokens = live.last.reused
        usage.fed_tokens = live.last.prefilled + len(feed)
        req = p.request
        parser = (RawText() if req.kind == "completion"
                  else ReplyParser(p.started_in_think, req.tools, parse_tools=p.parse_tools))
        stops = StopMatcher(req.stop)
        decoder = self.tokenizer.stream_decoder()
        pending_force = p.forced_after_think
        called = hit = False
        room = p.max_new_tokens
        first = True
        finish = "length"

        def out(new: list[Piece]) -> None:
            nonlocal called
            for piece in new:
                called |= piece.kind == "tool_call"
                job.emit(("piece", piece))

        def send(text: str) -> bool:
            """Text through the stop strings and the parser; True once a stop string was hit."""
            nonlocal hit
            if not hit:
                text, hit = stops.feed(text)
                out(parser.feed(text))
            return hit

        out(parser.feed(p.forced_now))
        while True:
            stop_ids = self.stop_ids | ({self.end_think_id} if pending_force else set())
            tokens = self.generate(feed, max_new_tokens=room, params=p.params, session=live.session,
                                   stop_ids=tuple(stop_ids))
            ended_think = False
            try:
                for token in tokens:
                    if first:  # the caches hold the whole prompt now
                        live.record_end(fed=len(feed))
                        first = False
                    usage.completion_tokens += 1
                    room -= 1
                    if token in self.stop_ids:
                        finish = "stop"
                        break
                    if pending_force and token == self.end_think_id:
                        ended_think = True
                        break
                    with self.lock:
                        text = decoder.feed(token)
                    if send(text):
                        finish = "stop"
                        break
                    if job.cancelled.is_set():
                        finish = "cancelled"
                        break
                    if room <= 0:
                        break
            finally:
                tokens.close()
            if not ended_think:
                break
            # tool_choice asked for a call: write its start right after the reasoning, then go on.
            with self.lock:
                send(decoder.finish())
                forced = self.tokenizer.encode(END_THINK + pending_force)
            send(END_THINK + pending_force)
            feed, pending_force = forced, ""
            usage.fed_tokens += len(forced)
            room = min(room, self.engine.context - len(live.tokens) - len(forced))
            if room <= 0:
                break
        if finish != "cancelled":
            with self.lock:
                tail = decoder.finish()
            if not send(tail):
                out(parser.feed(stops.finish()))
            out(parser.finish())
        if called and finish == "stop":
            finish = "tool_calls"
        return finish, usage
