"""Multimodal RoPE (M-RoPE) for Qwen3.5/3.6: three position streams (t, row, col) per token.

Text tokens carry the same position on all three axes; an image's merged tokens carry
(start, start + row, start + col), and the text after an image resumes at start + max(rows, cols)
(what transformers' `get_rope_index` does). The rotary frequencies are interleaved over the axes:
frequency j follows the row stream if j % 3 == 1 and j < 3 * section[1], the column stream if
j % 3 == 2 and j < 3 * section[2], the t stream otherwise. With text-only positions this is plain
RoPE exactly.

Positions are prefix-stable: the positions of tokens [0, k) depend only on those tokens, so a chunk
or a continuation is `mrope_position_ids(chunk, grids_in_chunk, ..., start=next_position(earlier))`.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import InputError
from .rope import inv_freq_and_scaling


def mrope_position_ids(ids, image_grids, image_token_id: int, merge: int, start: int = 0) -> torch.Tensor:
    """ids [T] with runs of `image_token_id` (one run per image, in order), `image_grids` the
    (t, h, w) patch grid of each image -> positions [3, T] long, the first text token at `start`."""
    ids = torch.as_tensor(ids).reshape(-1)
    grids = [tuple(int(v) for v in g) for g in image_grids]
    is_image = (ids == image_token_id).tolist()
    out = torch.empty(3, len(is_image), dtype=torch.long)
    pos, i, n_img = start, 0, 0
    while i < len(is_image):
        j = i
        while j < len(is_image) and is_image[j] == is_image[i]:
            j += 1
        if not is_image[i]:
            out[:, i:j] = torch.arange(pos, pos + j - i)
            pos += j - i
        else:
            if n_img >= len(grids):
                raise InputError(f"the prompt has more image placeholder runs than images ({len(grids)})")
            t, h, w = grids[n_img]
            h, w = h // merge, w // merge
            if j - i != t * h * w:
                raise InputError(f"image {n_img + 1} has {t * h * w} tokens but the prompt holds {j - i} placeholders")
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            out[:, i:j] = torch.stack([tt, hh, ww]).reshape(3, -1) + pos
            pos += max(h, w)
            n_img += 1
        i = j
    if n_img != len(grids):
        raise InputError(f"{len(grids)} images but {n_img} image placeholder runs in the prompt")
    return out


def next_position(positions: torch.Tensor, start: int = 0) -> int:
    """The position of the token that follows `positions` [3, T] (max + 1; `start` if empty)."""
    return int(positions.max()) + 1 if positions.numel() else start


def rope_delta(positions: torch.Tensor) -> int:
    """next_position - token count: transformers' `rope_deltas` (0 for text-only prompts)."""
    return next_position(positions) - positions.shape[-1]


def decode_position(prompt_positions: torch.Tensor, n: int) -> int:
    """Position of the n-th token (n = 0, 1, ...) generated after the prompt; all three axes equal it."""
    return next_position(prompt_positions) + n


def text_positions(start: int, count: int) -> torch.Tensor:
    """[3, count] positions of `count` text tokens from `start` (decode steps, text chunks)."""
    return torch.arange(start, start + count).expand(3, count)


def interleave_axes(half_dim: int, section) -> torch.Tensor:
    """[half_dim] axis (0 = t, 1 = row, 2 = col) each rotary frequency follows."""
    axis = torch.zeros(half_dim, dtype=torch.long)
    for a in (1, 2):
        axis[a:3 * int(section[a]):3] = a
    return axis


class MRope:
    """cos/sin [T, rotary_dim] for M-RoPE positions [3, T] (or plain positions [T])."""

    def __init__(self, cfg: ModelConfig, mrope_section=(11, 11, 10), device: torch.device | str = "cpu"):
        inv_freq, self.scaling = inv_freq_and_scaling(cfg)
        self.inv_freq = inv_freq.to(device)
        self.axis = interleave_axes(inv_freq.numel(), mrope_section).to(device)
        self.rotary_dim = cfg.rotary_dim

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = positions.to(self.inv_freq.device, torch.float32)
        if pos.ndim == 1:
            pos = pos.expand(3, -1)
        freqs = pos[self.axis].T * self.inv_freq[None, :]          # [T, rotary_dim / 2]
        emb = torch.cat([freqs, freqs], dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)
