"""The prompt cache across requests: one live session plus recent conversations parked in host RAM.

The live conversation is the chat's `PromptCache` (its snapshots rewind the DeltaNet state to where
the next turn diverges). A request for another conversation parks the live one (a host copy of its
KV rows and DeltaNet state, with its snapshots) and brings back the parked conversation that shares
the longest reusable prefix with the new prompt. Parked conversations are kept least recently used
first and dropped from the front to stay within the byte budget (profile key `server.prompt_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..chat.prompt_cache import PromptCache, common_prefix, tensor_bytes
from ..engine import Session


@dataclass
class Parked:
    tokens: list[int]
    layers: list        # per cache: ("kv", k [B, H, n, D] host, v) or ("state", DeltaNet snapshot)
    snapshots: list     # the PromptCache's (position, Session.snapshot()) list
    resume_at: int      # a request that reuses less than this is another conversation
    nbytes: int

    @property
    def positions(self) -> list[int]:
        return [pos for pos, _ in self.snapshots]


def reusable(tokens: Sequence[int], positions: Sequence[int], ids: Sequence[int]) -> int:
    """How many of `ids` a conversation holding `tokens` (snapshots at `positions`) can skip:
    all it holds when `ids` extends it, else the latest snapshot at or before the first difference.
    The last prompt token is always fed (its logits start the reply)."""
    shared = min(common_prefix(tokens, ids), len(ids) - 1)
    if shared >= len(tokens):
        return len(tokens)
    return max((p for p in positions if p <= shared), default=0)


class ConversationCache:
    def __init__(self, session: Session, budget_bytes: int):
        self.live = PromptCache(session)
        self.budget = budget_bytes
        self.parked: list[Parked] = []  # least recently used first
        self.resume_at = 0  # the live conversation's next turn reuses at least this much

    @property
    def parked_bytes(self) -> int:
        return sum(p.nbytes for p in self.parked)

    def select(self, ids: Sequence[int], resume_at: int) -> int:
        """Make the live session the conversation that can skip most of `ids`; returns that count.
        `resume_at`: where this prompt's next turn will diverge (kept to tell continuations apart)."""
        live = reusable(self.live.tokens, self.live.snapshot_positions, ids)
        best, best_n = None, live
        for i, entry in enumerate(self.parked):
            n = reusable(entry.tokens, entry.positions, ids)
            if n > best_n:
                best, best_n = i, n
        if best is not None:
            entry = self.parked.pop(best)
            if best_n < entry.resume_at:  # only its start is shared: bring back a copy, keep it parked
                self.parked.append(entry)
            self._park_live()
            self._unpark(entry)
        elif self.live.tokens and live < self.resume_at:
            # Another conversation (perhaps sharing the system prompt): keep a copy of this one,
            # since serving the new one rewinds it past its own history.
            self._park_live()
        self.resume_at = resume_at
        return best_n

    def clear(self) -> None:
        self.live.clear()
        self.parked = []
        self.resume_at = 0

    # ---- parking ------------------------------------------------------------------------------
    def _park_live(self) -> None:
        session = self.live.session
        if not session.tokens or self.budget <= 0:
            return
        layers = []
        for cache in session.caches:
            if getattr(cache, "can_trim", False):  # KV: copy the rows in use
                n = cache.length
                k = cache.k[:, :, :n].to("cpu", copy=True) if cache.k is not None else None
                v = cache.v[:, :, :n].to("cpu", copy=True) if cache.v is not None else None
                layers.append(("kv", n, k, v))
            else:
                layers.append(("state", cache.snapshot()))
        snapshots = list(self.live.snapshots)
        entry = Parked(list(session.tokens), layers, snapshots, self.resume_at,
                       tensor_bytes(layers) + tensor_bytes(snapshots))
        if entry.nbytes > self.budget:
            return
        self.parked.append(entry)
        while self.parked_bytes > self.budget:
            self.parked.pop(0)

    @torch.inference_mode()
    def _unpark(self, entry: Parked) -> None:
        session = self.live.session
        for cache, layer in zip(session.caches, entry.layers):
            if layer[0] == "kv":
                _, n, k, v = layer
                cache.reset()
                if n:
                    cache.claim(n)
                    cache.k[:, :, :n].copy_(k)
                    cache.v[:, :, :n].copy_(v)
            else:
                cache.restore(layer[1])
        session.tokens = list(entry.tokens)
        self.live.snapshots = list(entry.snapshots)
        self.resume_at = entry.resume_at
