"""Keeping one session's caches in step with a growing prompt, without re-prefilling it.

Each turn the chat renders the whole history again. `PromptCache.sync(ids)` compares those ids with
the tokens already in the caches, rewinds to the first difference and feeds only what follows.
KV caches can be cut back to any length, but a DeltaNet recurrent state folds in every token and
cannot be rewound: it is restored from a snapshot taken earlier at or before the difference.

Snapshot policy: a sync takes snapshots only at the positions its caller marks (where the next
turn's rendering is expected to diverge; the server also marks the end of the system prompt) and at
the end of the prompt, and after a successful sync only snapshots at this prompt's marks (taken now
or by an earlier sync) and at its end are kept. Older ones can only help if history before the
latest prompt changes (/system, /preserve, /load), which is rare and answered by a fresh prefill. A
snapshot costs the DeltaNet state (~150 MiB on 27B; KV layers only store a length), so a chat holds
at most two.
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
        self._t0, self._keep = time.perf_counter(), set()  # the sync in progress (prepare -> record_end)
        self._images = None  # image_prompt.ImagePrompt of the prompt being synced (positions, image rows)

    @property
    def tokens(self) -> list[int]:
        return self.session.tokens

    @property
    def snapshot_positions(self) -> list[int]:
        return [pos for pos, _ in self.snapshots]

    def snapshot_bytes(self) -> int:
        return sum(tensor_bytes(snap) for _, snap in self.snapshots)

    def clear(self) -> None:
        self.session.reset()
        self.snapshots = []

    def sync(self, ids: Sequence[int], marks: Sequence[int] = (),
             should_stop: Callable[[], bool] | None = None, images=None) -> torch.Tensor:
        """Make the caches hold exactly `ids`; return the fp32 logits [V] after the last one.

        Snapshots are taken at each position in `marks` that gets fed, and at the end.
        `images`: an image_prompt.ImagePrompt over all of `ids` (from token 0) when they hold images;
        a cached image is reused only if its content digest matches (a changed image is re-read).
        Raises Interrupted (caches consistent, at a chunk boundary) when `should_stop()` turns true.
        """
        ids = list(ids)
        self.prepare(ids, marks, should_stop, images)
        logits = self._feed_to(ids, len(ids), should_stop)
        self.record_end()
        return logits

    def prepare(self, ids: Sequence[int], marks: Sequence[int] = (),
                should_stop: Callable[[], bool] | None = None, images=None) -> list[int]:
        """The first half of a sync, for callers that run the prompt's tail through
        `Engine.generate` themselves: rewind to the longest reusable prefix of `ids`, feed up to
        the last mark before the end (snapshotting each mark) and return the ids still to feed
        (never empty: the last prompt token must be fed to get its logits). Call `record_end()`
        once the caches hold all of `ids` (at the first generated token)."""
        ids = list(ids)
        if not ids:
            raise ValueError("sync needs at least one token")
        self._t0 = time.perf_counter()
        self._images = images
        reuse = same_images_prefix(self.session.image_keys, images.keys if images is not None else [],
                                   common_prefix(self.tokens, ids))
        self._rewind(min(reuse, len(ids) - 1))  # at least the last is fed
        start = len(self.tokens)
        self.last = SyncStats(reused=start)
        self._keep = {m for m in marks if m < len(ids)}
        for stop in sorted(m for m in self._keep if m >= start):
            self._feed_to(ids, stop, should_stop)
            self.snapshots = [s for s in self.snapshots if s[0] < stop] + [(stop, self.session.snapshot())]
        return ids[len(self.tokens):]

    def record_end(self, fed: int = 0) -> None:
        """The caches now hold the whole prompt (`fed` tokens of it went in outside `feed`):
        snapshot here and keep only this prompt's snapshots (the policy above)."""
        self.last.prefilled += fed
        self.prefilled_total += fed
        end = len(self.tokens)
        kept = [s for s in self.snapshots if s[0] < end and s[0] in self._keep]
        self.snapshots = kept + [(end, self.session.snapshot())]
        self.last.seconds = time.perf_counter() - self._t0

    def _feed_to(self, ids: list[int], stop: int, should_stop: Callable[[], bool] | None) -> torch.Tensor | None:
        """Feed ids[len(tokens):stop] in chunks; the logits after the last one fed."""
        logits = None
        while len(self.tokens) < stop:
            if should_stop is not None and should_stop():
                raise Interrupted()  # snapshots taken so far stay usable
            piece = ids[len(self.tokens):min(stop, len(self.tokens) + self.chunk)]
            logits = self.feed(piece, self._images)
            self.last.prefilled += len(piece)
            self.prefilled_total += len(piece)
        return logits

    def feed(self, ids: list[int], images=None) -> torch.Tensor:
        """Run `ids` after the cached tokens -> logits [V] of the last one. A failure part-way
        (a second Ctrl-C, out of memory) leaves layers out of step, so the caches are dropped."""
        try:
            out = self.session.feed(ids) if images is None else self.session.feed(ids, images=images)
            return out[-1]
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


def same_images_prefix(cached: Sequence[tuple[int, str]], wanted: Sequence[tuple[int, str]], prefix: int) -> int:
    """`prefix` (tokens equal) cut back to the first cached image, within it, whose content
    digest the new prompt does not have at the same place: placeholders alone never match an image."""
    wanted = set(wanted)
    for key in cached:
        if key[0] < prefix and key not in wanted:
            return key[0]
    return prefix


def next_divergence(render: Callable[[list[dict]], str], encode: Callable[[str], list[int]],
                    messages: Sequence[dict], ids: Sequence[int], think: bool) -> int:
    """Where the next turn's prompt will likely first differ from `ids` (the prompt for
    `messages`): render the history as it will look then (a reply to these messages, another
    question asked) with stand-in text. `render(messages)` renders without a generation prompt."""
    reply = {"role": "assistant", "content": _PLACEHOLDER}
    if think:
        reply["reasoning_content"] = _PLACEHOLDER
    later = list(messages) + [reply, {"role": "user", "content": _PLACEHOLDER}]
    return common_prefix(ids, encode(render(later)))


_PLACEHOLDER = "x"  # stand-in reply text (any short word will do)


def tensor_bytes(obj) -> int:
    """Bytes held by the tensors inside a snapshot (nested tuples, lists and dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(o) for o in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(tensor_bytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 0
