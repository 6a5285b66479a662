"""The one decode loop: sample a token, stop or feed it, repeat. Generate, chat and the server all
iterate a `Generation`, so sampling, stop ids and the context limit are decided here only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from .sampling import Sampler

# finish_reason values
STOP, LENGTH, CONTEXT, INTERRUPTED = "stop", "length", "context", "interrupted"


class Generation:
    """Tokens sampled after a prompt whose last logits are `logits` [V] (the prompt already fed).

    `feed(ids)` runs tokens after the cached ones and returns the last one's logits [V];
    `cached()` is how many tokens the caches hold; `context` their capacity; `check_logits(logits,
    step)` sees every logits row before sampling (the engine stops on NaN/inf there).
    Iterate for token ids. It ends after a stop id (yielded; `finish_reason` "stop"), after
    `max_new_tokens` ("length"), or when the next token would not fit the context ("context");
    a caller that stops iterating leaves "interrupted". The last token yielded is never fed to
    the caches: the next prompt feeds it if it keeps it.
    """

    def __init__(self, feed: Callable[[list[int]], torch.Tensor], cached: Callable[[], int], context: int,
                 logits: torch.Tensor, sampler: Sampler, stop_ids, max_new_tokens: int | None = None,
                 check_logits: Callable[[torch.Tensor, int], None] | None = None):
        self.feed, self.cached, self.context = feed, cached, context
        self.check_logits = check_logits  # (logits, step) -> raises on NaN/inf (numerics.check_finite_logits)
        self.logits, self.sampler = logits, sampler
        self.stop_ids = frozenset(stop_ids)
        self.max_new_tokens = max_new_tokens
        self.tokens: list[int] = []
        self.finish_reason = INTERRUPTED
        self.decode_steps = 0
        self.decode_seconds = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds else 0.0

    def __iter__(self) -> Iterator[int]:
        logits = self.logits
        while True:
            if self.check_logits is not None:
                self.check_logits(logits, len(self.tokens))
            token = self.sampler(logits)
            self.sampler.accept(token)
            self.tokens.append(token)
            yield token
            if token in self.stop_ids:
                self.finish_reason = STOP
                return
            if self.max_new_tokens is not None and len(self.tokens) >= self.max_new_tokens:
                self.finish_reason = LENGTH
                return
            if self.cached() + 1 > self.context:
                self.finish_reason = CONTEXT
                return
            t0 = time.perf_counter()
            logits = self.feed([token])
            self.decode_seconds += time.perf_counter() - t0
            self.decode_steps += 1
