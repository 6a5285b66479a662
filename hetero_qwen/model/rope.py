"""Rotary position embedding for the first `rotary_dim` dims of each attention head.

Text-only positions make Qwen3.5's interleaved M-RoPE identical to plain RoPE (all three
position streams are equal), so we only need one stream. YaRN (`rope_type: yarn`) rescales the
inverse frequencies and multiplies cos/sin by an attention factor.
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig


def inv_freq_and_scaling(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [rotary_dim/2] (fp32) and the cos/sin multiplier."""
    r = cfg.rope
    dim = cfg.rotary_dim
    pos_freqs = r.theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv_freq = 1.0 / pos_freqs
    if r.rope_type != "yarn":
        return inv_freq, 1.0

    factor = r.factor
    orig = r.original_max_position_embeddings or cfg.max_position_embeddings

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if r.attention_factor is not None:
        attention_factor = float(r.attention_factor)
    elif r.mscale and r.mscale_all_dim:
        attention_factor = mscale(factor, r.mscale) / mscale(factor, r.mscale_all_dim)
    else:
        attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:
        # the dim index whose wavelength completes `rotations` turns over the original context
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(r.theta))

    low, high = correction_dim(r.beta_fast), correction_dim(r.beta_slow)
    if r.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1: keep the original frequency (high-frequency dims), 0: interpolate
    inv_freq = (inv_freq / factor) * (1 - extrapolate) + inv_freq * extrapolate
    return inv_freq, attention_factor


class Rope:
    """cos/sin tables computed on demand for absolute positions; shape [T, rotary_dim]."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str = "cpu"):
        self.inv_freq, self.scaling = inv_freq_and_scaling(cfg)
        self.inv_freq = self.inv_freq.to(device)
        self.rotary_dim = cfg.rotary_dim

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(self.inv_freq.device, torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)  # [T, rotary_dim]: rotate-half layout
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim]; rotates the first rotary_dim dims (rotate-half convention)."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([rot * cos + rotated * sin, rest], dim=-1)
