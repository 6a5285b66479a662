"""Causal attention of T new queries over past + T keys, in forms CUDA's fused kernels take.

A chunk after the first (past > 0) needs a bottom-right aligned causal mask. An explicit boolean
mask together with grouped KV heads sends CUDA's SDPA to its math path (flash takes no mask, the
memory-efficient kernel no GQA): fp32 scores [B, heads, T, past + T], a softmax copy and K/V
repeated per group, gigabytes at a long cache. So:
  * fused path (half dtypes, head_dim <= 256; on CUDA when flash accepts it): `causal_lower_right`,
    which flash runs with grouped heads and no mask; its only temporary is the fp32 logsumexp
    [B, heads, T];
  * otherwise (fp32, or a card flash refuses): query rows in tiles of SCORE_TILE_ROWS, each
    kv head's query group stacked into one batch (no K/V repeat), so the scores never exceed
    [B, heads, SCORE_TILE_ROWS, past + T] fp32 (plus their softmax).
Both declare their temporaries (model.scratch), which the simulated GPU charges. The plan prices
the same bytes (`attention_working_set`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .scratch import metered_device, temporary

SCORE_TILE_ROWS = 8   # query rows per tile on the math path
FP32 = 4


def fused_eligible(dtype: torch.dtype, head_dim: int) -> bool:
    """Inputs CUDA's flash kernel takes (grouped heads, bottom-right causal, no mask)."""
    return dtype in (torch.float16, torch.bfloat16) and head_dim <= 256


def _flash_takes(q, k, v, causal: bool) -> bool:
    """On CUDA: ask SDPA whether flash attention runs these exact inputs."""
    from torch.backends.cuda import SDPAParams, can_use_flash_attention
    try:
        params = SDPAParams(q, k, v, None, 0.0, causal, q.shape[1] != k.shape[1])
    except TypeError:  # an older signature without enable_gqa
        return False
    return bool(can_use_flash_attention(params, False))


def attention_temp_bytes(batch: int, heads: int, q_rows: int, keys: int, fused: bool, kv_heads: int = 1) -> int:
    """Bytes one attention call holds besides q, K/V and its output: the fused kernel's fp32
    logsumexp, or a math tile's fp32 scores and softmax plus its boolean mask."""
    if fused:
        return batch * heads * q_rows * FP32
    rows = min(q_rows, SCORE_TILE_ROWS)
    return 2 * batch * heads * rows * keys * FP32 + (heads // max(kv_heads, 1)) * rows * keys


def attention_working_set(heads: int, kv_heads: int, head_dim: int, chunk: int, context: int,
                          dtype: torch.dtype, kv_itemsize: int, kv_elsewhere: bool) -> int:
    """The plan's attention working set for one chunk of `chunk` queries at a full `context`:
    the temporaries above, plus a K/V copy of the whole context when the cache lives on another
    device than the op (a streamed attention layer in prefill)."""
    n = attention_temp_bytes(1, heads, chunk, context, fused_eligible(dtype, head_dim), kv_heads)
    if kv_elsewhere:
        n += 2 * kv_heads * context * head_dim * max(kv_itemsize, dtype.itemsize)
    return n


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int, scale: float) -> torch.Tensor:
    """q [B, heads, T, D] at positions past..past+T-1; k, v [B, kv_heads, past+T, D] -> [B, heads, T, D]."""
    B, nh, T, D = q.shape
    nkv = k.shape[1]
    gqa = nh != nkv
    cuda_like = q.is_cuda or metered_device() is not None  # a real or simulated GPU op
    fused = fused_eligible(q.dtype, D) and (not q.is_cuda or _flash_takes(q, k, v, T > 1))
    if fused or not cuda_like:  # plain CPU: SDPA's CPU kernel never materialises the scores
        if T == 1:
            mask, causal = None, False
        elif past == 0:
            mask, causal = None, True
        else:  # query i sees keys up to past + i
            mask, causal = causal_lower_right(T, past + T), False
        with temporary(attention_temp_bytes(B, nh, T, past + T, True) if fused else 0, "attention logsumexp"):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                                  enable_gqa=gqa)
    return _tiled(q, k, v, past, scale)


def _tiled(q, k, v, past: int, scale: float) -> torch.Tensor:
    """The math path in query tiles: each kv head's `group` query heads become rows of one batch."""
    B, nh, T, D = q.shape
    nkv = k.shape[1]
    group = nh // nkv
    out = q.new_empty(B, nh, T, D)
    for a in range(0, T, SCORE_TILE_ROWS):
        b = min(T, a + SCORE_TILE_ROWS)
        t, keys = b - a, past + b  # this tile's queries see keys [0, past + b)
        qg = q[:, :, a:b].reshape(B, nkv, group * t, D)  # head h = kv * group + j -> rows j*t + i
        mask = None
        if t > 1:
            rows = torch.arange(past + a, past + b, device=q.device)[:, None]
            mask = (torch.arange(keys, device=q.device)[None, :] <= rows).repeat(group, 1)
        with temporary(attention_temp_bytes(B, nh, t, keys, False, nkv), "attention scores"):
            o = F.scaled_dot_product_attention(qg, k[:, :, :keys], v[:, :, :keys], attn_mask=mask, scale=scale)
        out[:, :, a:b] = o.view(B, nh, t, D)
    return out
