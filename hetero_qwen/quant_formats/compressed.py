"""compressed-tensors `pack-quantized` int4 (llm-compressor W4A16), per linear module `X`:

    X.weight_packed      int32 [out, ceil(in/8)]   nibble k of word c = q[o, 8c + k] + 8 (signed q)
    X.weight_scale       float [out, groups]       (bf16 / fp16 / fp32 as saved)
    X.weight_zero_point  int32 [ceil(out/8), groups], asymmetric only: signed zero + 8, packed
                         along outputs (nibble k of row r = output 8r + k)
    X.weight_shape       int64 [2] = [out, in]
    X.weight_g_idx       int32 [in], only with actorder
    w[o, i] = (q[o, i] - zero[o, g]) * scale[o, g]     (symmetric: zero = 0)

Written from compressed_tensors.compressors.pack_quantized (pack_to_int32 / unpack_from_int32);
the tests write fixtures with that library and compare against its own decompress.
"""

from __future__ import annotations

import torch

from .spec import FormatInfo, IntGroupWeight, QuantFormatError, need, unpack_nibbles

SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


def read_compressed(parts: dict[str, torch.Tensor], base: str, info: FormatInfo) -> IntGroupWeight:
    packed = need(parts, "weight_packed", base)
    scale = need(parts, "weight_scale", base)
    shape = need(parts, "weight_shape", base)
    if packed.dtype != torch.int32:
        raise QuantFormatError(f"{base}.weight_packed: expected int32, got {packed.dtype}")
    n_out, n_in = (int(v) for v in shape.tolist())
    if scale.dim() == 1:
        scale = scale[:, None]
    groups = scale.shape[1]
    if packed.shape[0] != n_out or packed.shape[1] * 8 < n_in or scale.shape[0] != n_out:
        raise QuantFormatError(f"{base}.weight_packed {list(packed.shape)} / weight_scale "
                               f"{list(scale.shape)} do not match weight_shape [{n_out}, {n_in}]")
    gs = -(-n_in // groups)
    g_idx = parts.get("weight_g_idx")
    g_idx = torch.arange(n_in) // gs if g_idx is None else g_idx.to(torch.int64)
    q = unpack_nibbles(packed)[:, :n_in].contiguous()                 # signed q + 8
    zp = parts.get("weight_zero_point")
    if zp is None:
        zero = torch.full((n_out, groups), 8.0)
    else:
        zero = unpack_nibbles(zp.t().contiguous())[:, :n_out].float().t().contiguous()  # zp + 8
    return IntGroupWeight(q, scale.contiguous(), zero, g_idx, gs)
