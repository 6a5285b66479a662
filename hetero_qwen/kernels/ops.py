"""Module-free CPU ops the engine calls for CPU-resident weights.

    ffn = CpuFFN(gate_w, up_w, down_w, "int8")   # bf16/fp32 torch weights, quantized here
    y = ffn(x)                                   # x [B, H] fp32/bf16 -> [B, H] fp32
    proj = CpuLinear(w, "bf16"); y = proj(x)     # x [B, in] -> [B, out] fp32

Backends are chosen per call by dispatch.choose (batch <= 8: C++/Numba GEMV; larger: torch).
"""

from __future__ import annotations

import torch

from . import dispatch
from .quant import PackedWeight


def _pack(w, fmt: str) -> PackedWeight:
    if isinstance(w, PackedWeight):
        if w.fmt != fmt:
            raise ValueError(f"weight is already packed as {w.fmt}, not {fmt}")
        return w
    return PackedWeight.from_float(w, fmt)


class CpuLinear:
    """y = x @ W^T with W `[out, in]` stored in fmt (bf16 | int8 | int4)."""

    def __init__(self, w: torch.Tensor | PackedWeight, fmt: str = "bf16"):
        self.weight = _pack(w, fmt)
        self.fmt = fmt

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.linear(x, self.weight)


class CpuFFN:
    """SwiGLU FFN down(silu(gate x) * up x) with all three weights in fmt."""

    def __init__(self, gate_w, up_w, down_w, fmt: str = "bf16"):
        self.gate, self.up, self.down = _pack(gate_w, fmt), _pack(up_w, fmt), _pack(down_w, fmt)
        self.fmt = fmt

    @property
    def nbytes(self) -> int:
        return self.gate.nbytes + self.up.nbytes + self.down.nbytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.ffn(x, self.gate, self.up, self.down)
