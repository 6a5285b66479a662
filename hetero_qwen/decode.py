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

    def _ends_after(self, token: int) -> bool:
        """Whether the reply ends after `token` (just yielded), with `finish_reason` set: a stop id,
        the length limit, or no room in the context for feeding it."""
        if token in self.stop_ids:
            self.finish_reason = STOP
        elif self.max_new_tokens is not None and len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = LENGTH
        elif self.cached() + 1 > self.context:
            self.finish_reason = CONTEXT
        else:
            return False
        return True

    def __iter__(self) -> Iterator[int]:
        logits = self.logits
        while True:
            if self.check_logits is not None:
                self.check_logits(logits, len(self.tokens))
            token = self.sampler(logits)
            self.sampler.accept(token)
            self.tokens.append(token)
            yield token
            if self._ends_after(token):
                return
            t0 = time.perf_counter()
            logits = self.feed([token])
            self.decode_seconds += time.perf_counter() - t0
            self.decode_steps += 1


class SpeculativeGeneration(Generation):
    """The same loop, k + 1 tokens a step: `spec` drafts k tokens after the last sampled one
    (`spec.draft(token, k, pick) -> (drafts, q rows)`), verifies them in one forward
    (`spec.verify(ids) -> logits [k+1, V]`) and keeps what was accepted (`spec.commit(m)`: the first
    m of the verified tokens stay in the caches). Acceptance: hetero_qwen.speculative.accept_draft
    (greedy: the target's argmax), so the tokens have exactly the distribution of `Generation`'s;
    the sampler's penalties see accepted tokens only. Same stops, limits and "last token never fed".
    """

    def __init__(self, *args, spec, draft_tokens: int, **kw):
        super().__init__(*args, **kw)
        self.spec, self.k = spec, draft_tokens
        self.drafts_proposed = self.drafts_accepted = self.steps = 0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verify forward (1 + accepted drafts, on average)."""
        return (self.steps + self.drafts_accepted) / self.steps if self.steps else 0.0

    def _pick(self, logits: torch.Tensor):
        """A draft from the MTP's logits: (token, the distribution q it was sampled from, or None)."""
        s = self.sampler
        if s.greedy:
            return int(s.adjusted(logits).argmax()), None
        q = s.probs(logits)
        return int(torch.multinomial(q, 1, generator=s.generator)), q

    def _step(self, token: int) -> list[int]:
        """Feed `token` with up to k drafts behind it; returns the tokens emitted after it (the accepted
        drafts and one more), cut at the first stop id or the length limit; the caches keep `token`
        and every emitted token but the last."""
        from .speculative import accept_draft
        s = self.sampler
        room = self.context - self.cached() - 1  # verify feeds k + 1 tokens
        left = self.max_new_tokens - len(self.tokens) - 1 if self.max_new_tokens is not None else self.k
        drafts, qs = self.spec.draft(token, max(0, min(self.k, room, left)), self._pick)
        logits = self.spec.verify([token] + drafts)
        if self.check_logits is not None:
            self.check_logits(logits, len(self.tokens))
        out, accepted = [], 0
        for i, d in enumerate(drafts):
            if s.greedy:
                target = int(s.adjusted(logits[i]).argmax())
                nxt = None if target == d else target
            else:
                nxt = accept_draft(s.probs(logits[i]), qs[i], d, s.generator)
            if nxt is not None:
                break
            out.append(d)
            s.accept(d)
            accepted += 1
            if self._ends(out):
                break
        else:
            nxt = s(logits[len(drafts)])  # every draft accepted: the bonus token
        if not self._ends(out):
            out.append(nxt)
            s.accept(nxt)
        self.drafts_proposed += len(drafts)
        self.drafts_accepted += accepted
        self.steps += 1
        self.spec.commit(len(out))
        return out

    def _ends(self, out: list[int]) -> bool:
        """Whether the tokens emitted so far this step end the reply (a stop id or the length limit)."""
        if not out:
            return False
        if out[-1] in self.stop_ids:
            return True
        return self.max_new_tokens is not None and len(self.tokens) + len(out) >= self.max_new_tokens

    def __iter__(self) -> Iterator[int]:
        if self.check_logits is not None:
            self.check_logits(self.logits, 0)
        token = self.sampler(self.logits)
        self.sampler.accept(token)
        while True:
            self.tokens.append(token)
            yield token
            if self._ends_after(token):
                return
            t0 = time.perf_counter()
            out = self._step(token)
            self.decode_seconds += time.perf_counter() - t0
            self.decode_steps += len(out)
            for t in out[:-1]:
                self.tokens.append(t)
                yield t
            token = out[-1]
