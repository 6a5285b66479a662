"""A prompt's images placed in a session: M-RoPE positions, the tower's output rows, content keys.

`ImagePrompt` covers a span of token ids that a session is fed from token index `offset` (its
first token at rotary position `start`). The positions are prefix-stable, so any slice of the span
(a prefill chunk, the prompt cache's piece) takes its positions and image rows from the whole:
never recomputed, even when a chunk cuts through an image. The tower runs once, on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .errors import InputError
from .model.mrope import mrope_position_ids
from .vision_config import MultimodalConfig
from .vision_input import PreparedImages


def combine_images(parts: Sequence[PreparedImages]) -> PreparedImages:
    """Several prepared images (in prompt order) as one batch for the tower."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return PreparedImages(torch.zeros(0, 0), torch.zeros(0, 3, dtype=torch.long), [], [], [])
    return PreparedImages(torch.cat([p.pixel_values for p in parts]), torch.cat([p.grid_thw for p in parts]),
                          [c for p in parts for c in p.token_counts], [q for p in parts for q in p.paths],
                          [n for p in parts for n in p.notes])


def expand_image_pads(ids: Sequence[int], token_counts: Sequence[int], mm: MultimodalConfig) -> list[int]:
    """The chat template writes one `<|image_pad|>` per image; image i takes token_counts[i]."""
    out, i = [], 0
    for t in ids:
        if t == mm.image_token_id:
            if i >= len(token_counts):
                raise InputError(f"the prompt holds more image slots than the {len(token_counts)} images attached")
            out.extend([t] * token_counts[i])
            i += 1
        else:
            out.append(t)
    if i != len(token_counts):
        raise InputError(f"{len(token_counts)} images attached but the prompt has {i} image slots")
    return out


class ImagePrompt:
    """ids (a span fed from session token `offset`, first position `start`) with their images."""

    def __init__(self, mm: MultimodalConfig, ids: Sequence[int], images: PreparedImages,
                 offset: int = 0, start: int = 0):
        self.mm, self.ids, self.images = mm, list(ids), images
        self.offset = offset
        self.positions = mrope_position_ids(self.ids, images.grid_thw, mm.image_token_id,
                                            mm.vision.spatial_merge_size, start)   # [3, len(ids)]
        is_image = torch.tensor(self.ids, dtype=torch.long) == mm.image_token_id
        self._rows_before = torch.cat([torch.zeros(1, dtype=torch.long), is_image.long().cumsum(0)])
        firsts = (is_image & ~torch.cat([torch.zeros(1, dtype=torch.bool), is_image[:-1]])).nonzero().reshape(-1)
        # (session token index of each image's first placeholder, content digest): the cache key
        self.keys = [(offset + int(f), images.digest(i)) for i, f in enumerate(firsts.tolist())]
        self._embeds: torch.Tensor | None = None

    @property
    def end(self) -> int:
        return self.offset + len(self.ids)

    def covers(self, at: int, ids: Sequence[int]) -> bool:
        """Whether `ids` fed at session token `at` are this span's tokens there."""
        a = at - self.offset
        return 0 <= a and a + len(ids) <= len(self.ids) and self.ids[a:a + len(ids)] == list(ids)

    def positions_for(self, at: int, n: int) -> torch.Tensor:
        a = at - self.offset
        return self.positions[:, a:a + n]

    def rows_for(self, at: int, n: int, encode: Callable[[PreparedImages], torch.Tensor]) -> torch.Tensor | None:
        """The tower's output rows [k, H] for the k placeholders among tokens [at, at + n); the
        tower runs on the first call (once per prompt). None when the slice holds no image token."""
        a = at - self.offset
        lo, hi = int(self._rows_before[a]), int(self._rows_before[a + n])
        if lo == hi:
            return None
        if self._embeds is None:
            self._embeds = encode(self.images)
        return self._embeds[lo:hi]
