"""GPTQ int4 (auto-gptq / GPTQModel) tensors, per linear module `X`:

    X.qweight  int32 [in/8, out]     nibble k (bits 4k..4k+3) of row r = q[input 8r + k, out]
    X.qzeros   int32 [groups, out/8] nibble k of column c = stored zero of output 8c + k
    X.scales   fp16  [groups, out]
    X.g_idx    int32 [in]            group of each input (act-order / desc_act permutes it)
    w[o, i] = (q[i, o] - zero[g_idx[i], o]) * scales[g_idx[i], o]

Zero points: the classic `gptq` checkpoint format (auto-gptq, and GPTQModel's default on save)
stores zero - 1, so a reader adds 1 (symmetric: stored 7, zero 8); GPTQModel's internal `gptq_v2`
format stores the zero itself. We read and write both. A `gptq` asymmetric zero of 0 cannot be
stored (auto-gptq wraps -1 into the neighbouring nibbles); our packer refuses it.
Layout as in transformers/optimum's GPTQ docs and the packing loop of auto-gptq's QuantLinear.pack.
"""

from __future__ import annotations

import torch

from .spec import FormatInfo, IntGroupWeight, QuantFormatError, check_int4_packing, need, pack_nibbles, unpack_nibbles

SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


def zero_offset(info: FormatInfo) -> int:
    return 0 if info.packing == "gptq_v2" else 1


def read_gptq(parts: dict[str, torch.Tensor], base: str, info: FormatInfo) -> IntGroupWeight:
    qweight = need(parts, "qweight", base)
    qzeros = need(parts, "qzeros", base)
    scales = need(parts, "scales", base)
    n_in, n_out = qweight.shape[0] * 8, qweight.shape[1]
    groups = scales.shape[0]
    check_int4_packing(base, qweight, qzeros, scales, n_out, "4-bit: [in/8, out]")
    g_idx = parts.get("g_idx")
    gs = info.group_size if info.group_size and info.group_size > 0 else n_in
    if g_idx is None:
        g_idx = torch.arange(n_in) // gs
    g_idx = g_idx.to(torch.int64)
    if g_idx.shape != (n_in,) or int(g_idx.max()) >= groups or int(g_idx.min()) < 0:
        raise QuantFormatError(f"{base}.g_idx: expected {n_in} group indices below {groups}")
    q = unpack_nibbles(qweight.t().contiguous())                       # [out, in]
    zero = unpack_nibbles(qzeros).float().t() + zero_offset(info)      # [out, groups]
    return IntGroupWeight(q, scales.t().contiguous(), zero.contiguous(), g_idx, gs)


def pack_gptq(w: IntGroupWeight, info: FormatInfo) -> dict[str, torch.Tensor]:
    """The four GPTQ tensors of `w` (our fixture packer; `info.packing` picks gptq or gptq_v2)."""
    out, n_in = w.shape
    if n_in % 8 or out % 8:
        raise ValueError(f"GPTQ 4-bit packing needs in and out divisible by 8, got {out}x{n_in}")
    stored = w.zero.round().to(torch.int64) - zero_offset(info)
    if int(stored.min()) < 0 or int(stored.max()) > 15:
        raise ValueError("zero point not storable in this GPTQ format (gptq stores zero - 1: zero 0 overflows)")
    return {"qweight": pack_nibbles(w.q).t().contiguous(),  # [out, in/8] words -> [in/8, out]
            "qzeros": pack_nibbles(stored.t().contiguous()),
            "scales": w.scale.t().to(torch.float16).contiguous(),
            "g_idx": w.g_idx.to(torch.int32)}

