"""Community int4 weights (IntGroupWeight) into our layouts, exactly where the arithmetic allows.

CPU int4 (hetero_qwen.kernels.quant, groups of 64, w = q * scale16 + offset16):
  exact when every one of our 64-input blocks lies inside one source group, i.e. source groups of
  64, 128, 256... (one source group -> 1, 2, 4 of ours with the same scale/offset). With act-order
  (desc_act) the inputs are first sorted by group (`perm`; the caller gathers x[..., perm]).
  q is kept; scale16 = fp16(scale) (exact for GPTQ/AWQ fp16 scales), offset16 = fp16(-zero * scale):
      |ours - source| <= q |scale16 - scale| + |offset16 + zero * scale| + 2^-24 |ours|
  i.e. at most 2^-11 |zero * scale| for fp16 source scales (fp16 rounding of the offset).
  Source group 32 (or any misaligned grouping) does not fit: the dequantized weight is
  re-quantized round-to-nearest in our groups, bound = kernels.quant.int4_error_bound.
GPU int4 (kernels.gpu_linear.Int4Linear, tinygemm groups 32..256, bf16 scale and zero):
  exact grouping for source groups 32/64/128/256 (the largest tinygemm group that fits), values up
  to bf16 rounding: |ours - source| <= |q - 8| |bf16(s) - s| + |bf16(z') - z'|, z' = (8 - zero) s,
  at most 2^-9 (8 |s| + |z'|).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import INT4_GROUP
from ..kernels.quant import PackedWeight, int4_error_bound
from .spec import IntGroupWeight

G = INT4_GROUP


@dataclass
class Repacked:
    weight: PackedWeight
    perm: torch.Tensor | None   # gather x[..., perm] before the GEMV (act-order only)
    exact: bool                 # True: only the stated fp16 rounding; False: re-quantized
    bound: torch.Tensor         # fp32 [out, in] bound on |weight.dequantize()[:, inv(perm)] - source|


def _sorted(w: IntGroupWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    perm = w.act_order_perm()
    if perm is None:
        return w.q, w.g_idx, None
    return w.q[:, perm], w.g_idx[perm], perm


def _block_groups(g_idx: torch.Tensor, block: int) -> torch.Tensor | None:
    """Source group of each `block`-input block if every block lies in one group, else None."""
    n = g_idx.numel()
    nb = -(-n // block)
    padded = torch.cat([g_idx, g_idx[-1:].expand(nb * block - n)]).view(nb, block)
    return padded[:, 0] if bool((padded == padded[:, :1]).all()) else None


def _unpermute(t: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    if perm is None:
        return t
    out = torch.empty_like(t)
    out[:, perm] = t
    return out


def to_cpu_int4(w: IntGroupWeight) -> Repacked:
    out, n = w.shape
    q, g_idx, perm = _sorted(w)
    grp = _block_groups(g_idx, G)
    if grp is None:
        deq = w.dequantize()
        return Repacked(PackedWeight.from_float(deq, "int4"), None, False, int4_error_bound(deq))
    s = w.scale.float()[:, grp]
    s16 = s.to(torch.float16)
    off = -w.zero.float()[:, grp] * s
    off16 = off.to(torch.float16)
    ng = grp.numel()
    qp = torch.zeros(out, ng * G, dtype=torch.uint8)
    qp[:, :n] = q
    qg = qp.view(out, ng, G)
    packed = (qg[..., : G // 2] | (qg[..., G // 2:] << 4)).reshape(out, ng * G // 2).contiguous()
    pw = PackedWeight("int4", packed, torch.stack([s16, off16], -1).contiguous(), out, n)
    per_group = (15 * (s16.float() - s).abs() + (off16.float() - off).abs())
    bound = per_group.repeat_interleave(G, 1)[:, :n] + 2.0 ** -23 * pw.dequantize().abs()
    return Repacked(pw, perm, True, _unpermute(bound, perm))


def gpu_int4_group(w: IntGroupWeight) -> int | None:
    """Largest tinygemm group whose blocks each lie in one source group (after act-order sort)."""
    _, g_idx, _ = _sorted(w)
    for g in (256, 128, 64, 32):
        if _block_groups(g_idx, g) is not None:
            return g
    return None


def to_gpu_int4(w: IntGroupWeight, device="cpu", **kw):
    """(Int4Linear, exact). Exact grouping when a tinygemm group fits (see module docstring);
    otherwise the dequantized weight re-quantized by Int4Linear.from_float."""
    from ..kernels.gpu_linear import GPU_INT4_GROUP, Int4Linear
    group = gpu_int4_group(w)
    if group is None:
        return Int4Linear.from_float(w.dequantize(), GPU_INT4_GROUP, device=device, **kw), False
    q, g_idx, perm = _sorted(w)
    grp = _block_groups(g_idx, group)
    return Int4Linear.from_int4_groups(q, w.scale.float()[:, grp], w.zero.float()[:, grp], group,
                                       perm=perm, device=device, **kw), True
