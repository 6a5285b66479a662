"""The GPU working set of one forward, line by line, as the executor charges it.

  activations  [chunk, 4*hidden + 3*intermediate] fp32 plus one fp32 logits row
  attention    what one attention call holds for a chunk at the full context (model.causal_attention):
               the fused kernel's fp32 logsumexp [heads, chunk] in bf16, or a math-path tile of
               fp32 scores [heads, 8, context] x2 in fp32; plus, when the plan streams, a K/V copy
               of a cache that lives in RAM (2 x kv_heads x context x head_dim)
  dequant_tile when the plan streams int8/int4 blocks: one row tile dequantized on the GPU
               (kernels.quant)
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..kernels.quant import dequant_tile_bytes, dequant_tile_rows
from ..model.causal_attention import attention_working_set
from ..profile import Profile
from .items import STREAMABLE_KINDS

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def activation_bytes(cfg: ModelConfig, chunk: int) -> int:
    return chunk * 4 * (4 * cfg.hidden_size + 3 * cfg.intermediate_size) + cfg.vocab_size * 4


def gpu_working_set(cfg: ModelConfig, p: Profile, streams: bool) -> dict[str, int]:
    """Bytes per line (see the module docstring); their sum is the plan's GPU working set.
    `streams`: the plan streams blocks to the GPU for prefill (its staging slots are non-empty)."""
    dtype = DTYPES.get(p.gpu_dtype, torch.bfloat16)
    chunk = min(p.prefill_chunk, p.context)
    lines = {"activations": activation_bytes(cfg, chunk)}
    if cfg.full_attention_layers:
        lines["attention"] = attention_working_set(
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, chunk, p.context, dtype,
            dtype.itemsize, kv_elsewhere=streams)
    if p.cpu_dtype in ("int8", "int4") and streams:
        shapes = [s for g in cfg.weight_groups() if g.kind in STREAMABLE_KINDS for _, s in g.matrices]
        lines["dequant_tile"] = max((dequant_tile_bytes(p.cpu_dtype, min(out, dequant_tile_rows(n)), n,
                                                        dtype.itemsize) for out, n in shapes), default=0)
    return lines
