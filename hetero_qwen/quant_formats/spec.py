"""What every community-format reader produces: `FormatInfo` (from the config) and `IntGroupWeight`
(one linear weight as 4-bit integers with per-group scale and zero point).

IntGroupWeight is the common form of GPTQ, AWQ and compressed-tensors pack-quantized:
    w[o, i] = (q[o, i] - zero[o, g]) * scale[o, g],   g = g_idx[i]
with q unsigned 0..15, zero in the same integer units (8 for symmetric), scale in the checkpoint's
float dtype (fp16 for GPTQ/AWQ, bf16 or fp32 for compressed-tensors). `dequantize()` evaluates it in
fp32: (q - zero) is an integer in [-15, 15], so with fp16/bf16 scales every product is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CheckpointError


class QuantFormatError(CheckpointError):
    """A quantized checkpoint whose config or tensors we cannot read (one line naming the key)."""


@dataclass(frozen=True)
class FormatInfo:
    name: str                  # "gptq" | "awq" | "compressed-tensors" | "fp8" | "hetero-qwen" | "none"
    bits: int | None = None    # 4 for the int formats, 8 for fp8
    group_size: int | None = None  # inputs per group; -1 = one group per row (per channel)
    sym: bool | None = None
    desc_act: bool = False     # GPTQ act-order (g_idx permutes inputs across groups)
    ignore: tuple[str, ...] = ()  # modules the config says stay unquantized
    packing: str = ""          # "gptq" (zero stored - 1) | "gptq_v2" | "gemm" | "pack-quantized" | "e4m3-block128"

    def describe(self) -> str:
        if self.name == "none":
            return "none (float weights)"
        if self.name == "fp8":
            return "fp8 e4m3, 128x128 block scales"
        if self.name == "hetero-qwen":
            return f"hetero-qwen {self.packing} (written by `hetero-qwen quantize`)"
        g = "per channel" if self.group_size in (-1, None) else f"group {self.group_size}"
        bits = f"int{self.bits}"
        s = "symmetric" if self.sym else "asymmetric"
        extra = ", desc_act" if self.desc_act else ""
        return f"{self.name} {bits} {g} {s}{extra} ({self.packing} packing)"


@dataclass
class IntGroupWeight:
    """One `[out, in]` linear weight in 4-bit groups (see module docstring)."""

    q: torch.Tensor       # uint8 [out, in], 0..15
    scale: torch.Tensor   # float [out, groups] (as stored: fp16 / bf16 / fp32)
    zero: torch.Tensor    # float32 [out, groups], integer-valued
    g_idx: torch.Tensor   # int64 [in], group of each input column
    group_size: int       # nominal inputs per group (= in_features for per-channel)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in], exactly (q - zero) * scale per element."""
        s = self.scale.float()[:, self.g_idx]
        z = self.zero.float()[:, self.g_idx]
        return (self.q.float() - z) * s

    def act_order_perm(self) -> torch.Tensor | None:
        """None when groups are contiguous runs in input order; else the stable sort of g_idx,
        which makes them contiguous (w[:, perm] then has groups in order; x must be gathered the same)."""
        g = self.g_idx
        if bool((g[1:] >= g[:-1]).all()):
            return None
        return torch.sort(g, stable=True).indices


def unpack_nibbles(packed: torch.Tensor, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """int32 [..., n] -> uint8 [..., n * 8]: value j of each word is nibble order[j] (shift 4 * order[j])."""
    shifts = torch.tensor([4 * k for k in order], dtype=torch.int32)
    v = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF
    return v.reshape(*packed.shape[:-1], packed.shape[-1] * 8).to(torch.uint8)


def pack_nibbles(values: torch.Tensor, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """Inverse of unpack_nibbles: uint [..., n * 8] (0..15) -> int32 [..., n]."""
    v = values.to(torch.int64).reshape(*values.shape[:-1], values.shape[-1] // 8, 8)
    word = torch.zeros(v.shape[:-1], dtype=torch.int64)
    for j, k in enumerate(order):
        word |= (v[..., j] & 0xF) << (4 * k)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def need(tensors: dict, name: str, where: str) -> torch.Tensor:
    t = tensors.get(name)
    if t is None:
        raise QuantFormatError(f"{where}: quantized weight is missing tensor {name}")
    return t


def check_int4_packing(base: str, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                       n_out: int, layout: str) -> None:
    """qweight/qzeros int32 4-bit packed, scales [groups, out] and qzeros [groups, out/8] (GPTQ, AWQ)."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise QuantFormatError(f"{base}.qweight/qzeros: expected int32 4-bit packing, got "
                               f"{qweight.dtype}/{qzeros.dtype}")
    groups = scales.shape[0]
    if tuple(scales.shape) != (groups, n_out) or tuple(qzeros.shape) != (groups, n_out // 8):
        raise QuantFormatError(f"{base}.scales {list(scales.shape)} / qzeros {list(qzeros.shape)} do not "
                               f"match qweight {list(qweight.shape)} ({layout})")
