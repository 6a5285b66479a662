"""AWQ int4, AutoAWQ GEMM packing (`version: gemm`), per linear module `X`:

    X.qweight int32 [in, out/8]      word c of row i holds outputs 8c..8c+7 in the interleaved
    X.qzeros  int32 [groups, out/8]  nibble order AWQ_ORDER: nibble k = output 8c + AWQ_ORDER[k]
    X.scales  fp16  [groups, out]
    w[o, i] = (q[i, o] - zero[i // group, o]) * scales[i // group, o]      (zero stored as is)

AWQ_ORDER [0, 2, 4, 6, 1, 3, 5, 7] is the packing order of AutoAWQ's WQLinear_GEMM.from_linear
(its readers undo it with the reverse order [0, 4, 1, 5, 2, 6, 3, 7]). GEMV / Marlin / ExLlama
packings and zero_point: false (which GEMM cannot store) are refused by detect_format.
"""

from __future__ import annotations

import torch

from .spec import FormatInfo, IntGroupWeight, QuantFormatError, check_int4_packing, need, pack_nibbles, unpack_nibbles

SUFFIXES = ("qweight", "qzeros", "scales")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# value j of a word (outputs in order) sits in nibble AWQ_NIBBLE[j]; AWQ_NIBBLE is AWQ_ORDER's inverse
AWQ_NIBBLE = tuple(AWQ_ORDER.index(j) for j in range(8))


def read_awq(parts: dict[str, torch.Tensor], base: str, info: FormatInfo) -> IntGroupWeight:
    qweight = need(parts, "qweight", base)
    qzeros = need(parts, "qzeros", base)
    scales = need(parts, "scales", base)
    n_in, n_out = qweight.shape[0], qweight.shape[1] * 8
    groups = scales.shape[0]
    check_int4_packing(base, qweight, qzeros, scales, n_out, "AWQ GEMM: [in, out/8]")
    gs = info.group_size if info.group_size and info.group_size > 0 else n_in
    if -(-n_in // gs) != groups:
        raise QuantFormatError(f"{base}.scales: {groups} groups, but {n_in} inputs in groups of {gs} "
                               f"make {-(-n_in // gs)}")
    q = unpack_nibbles(qweight, AWQ_NIBBLE).t().contiguous()         # [out, in]
    zero = unpack_nibbles(qzeros, AWQ_NIBBLE).float().t().contiguous()  # [out, groups]
    return IntGroupWeight(q, scales.t().contiguous(), zero, torch.arange(n_in) // gs, gs)


def pack_awq(w: IntGroupWeight) -> dict[str, torch.Tensor]:
    """The three AWQ GEMM tensors of `w` (our fixture packer; contiguous groups only)."""
    out, n_in = w.shape
    if out % 8:
        raise ValueError(f"AWQ GEMM packing needs out divisible by 8, got {out}")
    if w.act_order_perm() is not None:
        raise ValueError("AWQ has no act-order: groups must be contiguous")
    return {"qweight": pack_nibbles(w.q.t().contiguous(), AWQ_NIBBLE),
            "qzeros": pack_nibbles(w.zero.round().to(torch.int64).t().contiguous(), AWQ_NIBBLE),
            "scales": w.scale.t().to(torch.float16).contiguous()}
