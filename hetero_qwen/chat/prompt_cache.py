"""Keeping one session's caches in step with a growing prompt, without re-prefilling it.

Each turn the chat renders the whole history again. `PromptCache.sync(ids)` compares those ids with
the tokens already in the caches, rewinds to the first difference and feeds only what follows.
KV caches can be cut back to any length, but a DeltaNet recurrent state folds in every token and
cannot be rewound: it is restored from a snapshot taken earlier at or before the difference.

Snapshot policy: a sync takes snapshots only at the positions its caller marks (where the next
turn's rendering is expected to diverge) and at the end of the prompt, and after a successful sync
only those snapshots are kept. Older ones can only help if history before the latest prompt changes
(/system, /preserve, /load), which is rare and answered by a fresh prefill. A snapshot costs the
DeltaNet state (~150 MiB on 27B; KV layers only store a length), so a chat holds at most two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..engine import Session


class Interrupted(Exception):
    """The caller asked to stop while a prompt was being prefilled (the caches stay consistent)."""


@dataclass
class SyncStats:
    reused: int = 0          # prompt tokens already in the caches (kept or restored)
    prefilled: int = 0       # prompt tokens run through the model by this sync
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.prefilled / self.seconds if self.seconds else 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """A session plus the snapshots that let it rewind. Bookkeeping only: tensors stay in the session."""

    def __init__(self, session: Session):
        self.session = session
        self.chunk = session.engine.prefill_chunk  # stop requests are honoured between chunks
        self.snapshots: list[tuple[int, tuple]] = []  # (position, Session.snapshot()), by position
        self.prefilled_total = 0
        self.last = SyncStats()

    @property
    def tokens(self) -> list[int]:
        return self.session.tokens

    @property
    def snapshot_positions(self) -> list[int]:
        return [pos for pos, _ in self.snapshots]

    def snapshot_bytes(self) -> int:
        return sum(_tensor_bytes(snap) for _, snap in self.snapshots)

    def clear(self) -> None:
        self.session.reset()
        self.snapshots = []

    def sync(self, ids: Sequence[int], marks: Sequence[int] = (),
             should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """Make the caches hold exactly `ids`; return the fp32 logits [V] after the last one.

        Snapshots are taken at each position in `marks` that gets fed, and at the end.
        Raises Interrupted (caches consistent, at a chunk boundary) when `should_stop()` turns true.
        """
        ids = list(ids)
        if not ids:
            raise ValueError("sync needs at least one token")
        t0 = time.perf_counter()
        # At least the last token must be fed to get its logits.
        self._rewind(min(common_prefix(self.tokens, ids), len(ids) - 1))
        start = len(self.tokens)
        self.last = SyncStats(reused=start)
        stops = sorted({m for m in marks if start <= m < len(ids)} | {len(ids)})
        taken = 0
        logits = None
        for stop in stops:
            while len(self.tokens) < stop:
                if should_stop is not None and should_stop():
                    raise Interrupted()  # snapshots taken so far stay usable
                piece = ids[len(self.tokens):min(stop, len(self.tokens) + self.chunk)]
                logits = self.feed(piece)
                self.last.prefilled += len(piece)
                self.prefilled_total += len(piece)
            self.snapshots = [s for s in self.snapshots if s[0] < stop] + [(stop, self.session.snapshot())]
            taken += 1
        self.snapshots = self.snapshots[-taken:]  # the policy: keep only this prompt's snapshots
        self.last.seconds = time.perf_counter() - t0
        return logits

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Run `ids` after the cached tokens -> logits [V] of the last one. A failure part-way
        (a second Ctrl-C, out of memory) leaves layers out of step, so the caches are dropped."""
        try:
            return self.session.feed(ids)[-1]
        except BaseException:
            self.clear()
            raise

    def _rewind(self, keep: int) -> None:
        """Cut the caches back to at most `keep` tokens: to the latest snapshot at or before it."""
        if len(self.tokens) <= keep:
            return
        self.snapshots = [(pos, snap) for pos, snap in self.snapshots if pos <= keep]
        if self.snapshots:
            self.session.restore(self.snapshots[-1][1])
        else:
            self.session.reset()


def _tensor_bytes(obj) -> int:
    """Bytes held by the tensors inside a snapshot (nested tuples, lists and dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(_tensor_bytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 0
