"""The official FP8 checkpoints (Qwen/Qwen3.6-27B-FP8): `X.weight` float8_e4m3fn [out, in] and
`X.weight_scale_inv` fp32 [ceil(out/128), ceil(in/128)]; w = e4m3 * scale of its 128x128 block.
Checkpoint.get keeps dequantizing these to bf16 on load (checkpoint.dequantize_fp8); this module
gives the fp32 value (the e4m3 value times its fp32 block scale, rounded once to fp32: what an
e4m3 GEMM with fp32 scaling computes) for references and the GPU fp8 format."""

from __future__ import annotations

import torch

from .spec import QuantFormatError, need

SUFFIXES = ("weight", "weight_scale_inv")
BLOCK = 128


def read_fp8(parts: dict[str, torch.Tensor], base: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight [out, in], fp32 block scales) of one module."""
    w = need(parts, "weight", base)
    s = need(parts, "weight_scale_inv", base)
    if w.dtype != torch.float8_e4m3fn:
        raise QuantFormatError(f"{base}.weight: expected float8_e4m3fn, got {w.dtype}")
    want = (-(-w.shape[0] // BLOCK), -(-w.shape[1] // BLOCK))
    if tuple(s.shape) != want:
        raise QuantFormatError(f"{base}.weight_scale_inv has shape {list(s.shape)}, 128x128 blocks "
                               f"of {list(w.shape)} need {list(want)}")
    return w, s.float()


def dequantize_fp8_exact(w: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    R, C = w.shape
    s = scale_inv.float().repeat_interleave(BLOCK, 0)[:R].repeat_interleave(BLOCK, 1)[:, :C]
    return w.float() * s
