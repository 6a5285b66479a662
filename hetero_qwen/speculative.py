"""Speculative decoding with the MTP layer: the acceptance rule and one session's MTP state.

Acceptance (Leviathan et al. 2023; Chen et al. 2023), which keeps the output distribution exactly
the model's: a draft d sampled from q is accepted with probability min(1, p(d) / q(d)); on reject the
token is drawn from norm(max(p - q, 0)); after k accepted drafts a bonus token comes from the last
verify position. Greedy is the limit: accept while the draft is the target's argmax.

`MtpState` keeps the MTP layer's KV cache in step with a session: entry p of it is the pair
(h_p, x_{p+1}) at position p, h_p the model's hidden after its final norm. Entries only ever depend
on tokens before them, so after a rewind the ones past it are dropped and the rest stay valid; an
entry that could not be formed (a gap after a rewind) only lowers acceptance, never changes output.
The pairs a commit adds wait (`pending`) and run in the next draft's first forward, with its own
pair: one MTP forward per step instead of two (the layer's weights read once).
"""

from __future__ import annotations

import torch


def accept_draft(p: torch.Tensor, q: torch.Tensor, draft: int, generator: torch.Generator) -> int | None:
    """One draft under the speculative-sampling rule: None when `draft` (sampled from q) is
    accepted, else the replacement token drawn from norm(max(p - q, 0)). p, q: fp32 [V], sum 1."""
    ratio = float(p[draft]) / max(float(q[draft]), 1e-30)
    if ratio >= 1.0 or float(torch.rand((), generator=generator)) < ratio:
        return None
    residual = (p - q).clamp_(min=0)
    total = float(residual.sum())
    if total <= 0:  # p == q up to rounding: any sample of p is right
        residual, total = p, float(p.sum())
    return int(torch.multinomial(residual / total, 1, generator=generator))


MERGE_PAIRS = 8  # pending pairs at most (with the draft's own, a forward the CPU fast path takes)


class MtpState:
    """One session's MTP cache: `push` the model's hiddens as tokens are fed, `draft` k tokens."""

    def __init__(self, drafter, capacity: int):
        self.drafter = drafter
        self.cache = drafter.new_cache(capacity)
        self.positions: list[int] = []  # position p of each cache entry, increasing
        self.last: tuple[int, torch.Tensor] | None = None  # (n - 1, h_{n-1}): the last fed token's hidden
        self.drafted: tuple[int, int] | None = None  # (position, token) of the pair the last draft added
        # (first position, tokens, hiddens [T, H]): pairs after `positions`, not yet run
        self.pending: tuple[int, list[int], torch.Tensor] | None = None

    def entries(self) -> list[int]:
        """Positions of every pair the session holds, run or pending."""
        p = self.pending
        return self.positions + (list(range(p[0], p[0] + len(p[1]))) if p else [])

    def _flush(self) -> None:
        """Run the pending pairs (into the cache, no logits)."""
        if self.pending is not None:
            first, tokens, hidden = self.pending
            self.pending = None
            self.drafter.forward(tokens, hidden, first, self.cache, logits=False)
            self.positions.extend(range(first, first + len(tokens)))

    def close(self) -> None:
        if self.cache is not None:
            self.drafter.release_cache(self.cache)
            self.cache = None

    def reset(self) -> None:
        self.cache.reset()
        self.positions, self.last, self.drafted, self.pending = [], None, None, None

    def _drop_from(self, pos: int) -> None:
        """Forget entries at positions >= pos (they paired tokens that are no longer there)."""
        if self.pending is not None:  # pending pairs come after every run one
            first, tokens, hidden = self.pending
            n = max(0, min(len(tokens), pos - first))
            self.pending = (first, tokens[:n], hidden[:n]) if n else None
            if n:
                return
        keep = len(self.positions)
        while keep and self.positions[keep - 1] >= pos:
            keep -= 1
        self.cache.trim(len(self.positions) - keep)
        del self.positions[keep:]

    def push(self, start: int, tokens: list[int], hidden: torch.Tensor) -> None:
        """Tokens x_start.. were fed with hiddens `hidden` [T, H]: add the pairs they complete."""
        T = len(tokens)
        have_prev = self.last is not None and self.last[0] == start - 1
        if have_prev and self.drafted == (start - 1, tokens[0]) and self.positions[-1:] == [start - 1]:
            have_prev = False  # (h_{start-1}, x_start) is in already: drafting made it
            self._drop_from(start)
        else:
            self._drop_from(start - 1)
        self.drafted = None
        first = start - 1 if have_prev else start
        pair_h = torch.cat([self.last[1].view(1, -1).to(hidden.device), hidden[:T - 1]]) if have_prev else hidden[:T - 1]
        pair_t = tokens if have_prev else tokens[1:]
        if pair_t:
            p = self.pending
            if p is not None and p[0] + len(p[1]) == first:  # they follow the pending ones: wait with them
                self.pending = (p[0], p[1] + list(pair_t), torch.cat([p[2], pair_h.to(p[2].device, p[2].dtype)]))
            else:
                self._flush()
                self.pending = (first, list(pair_t), pair_h)
            if len(self.pending[1]) >= MERGE_PAIRS:  # a prompt: run now (a draft's forward stays small)
                self._flush()
        self.last = (start + T - 1, hidden[-1].clone())

    def draft(self, n: int, token: int, k: int, pick) -> tuple[list[int], list]:
        """`token` x_n follows the n fed tokens: up to k drafts for positions n+1.., each from
        `pick(logits) -> (token, q or None)`. Returns (drafts, their q rows). No drafts when the
        hidden of position n - 1 is unknown (a rewind or a fresh restore)."""
        if k == 0 or self.last is None or self.last[0] != n - 1:
            return [], []
        self._drop_from(n - 1)
        h = self.last[1].view(1, -1)
        p = self.pending
        if p is not None and p[0] + len(p[1]) == n - 1:  # the pending pairs lead up to this one: one forward
            self.pending = None
            first, tokens, hidden = p
            out, logits = self.drafter.forward(tokens + [token], torch.cat([hidden, h.to(hidden.device, hidden.dtype)]),
                                               first, self.cache)
            self.positions.extend(range(first, n))
        else:
            self._flush()
            out, logits = self.drafter.forward([token], h, n - 1, self.cache)
            self.positions.append(n - 1)
        self.drafted = (n - 1, token)
        drafts, qs = [], []
        for i in range(k):
            d, q = pick(logits)
            drafts.append(d)
            qs.append(q)
            if i + 1 < k:  # the layer again, on its own output and the token it drafted
                out, logits = self.drafter.forward([d], out[-1:], n + i, self.cache)
        self.cache.trim(k - 1)  # entries from the MTP's own hiddens: the true ones come with commit
        return drafts, qs
