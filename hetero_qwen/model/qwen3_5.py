"""Qwen3.5/3.6 hybrid text model (`model_type: qwen3_5`): embed -> layers -> norm -> lm_head.

Each layer: x += mixer(norm(x)); x += ffn(norm(x)), the mixer being Gated DeltaNet or gated
full attention. This file says how a weight group becomes an op and which norm feeds it, which
projections are stored back to back, and what cache each layer keeps. It knows nothing of
devices: the executor's runner decides where each op runs and moves the hidden state.
"""

from __future__ import annotations

import torch

from ..config import FULL, ModelConfig
from .cache import DeltaNetCache, KVCache
from .layers import FFN, Attention, GatedDeltaNet

# A mixer's input projections, read as one matrix when stored back to back (nano-vllm's
# packed_modules_mapping): the loader stores them so, and the one-token CPU path reads them in one call.
PACKED_MODULES = {
    "deltanet": ("in_proj_qkv.weight", "in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight"),
    "attention": ("q_proj.weight", "k_proj.weight", "v_proj.weight"),
}


def norm_key(cfg: ModelConfig, kind: str) -> str:
    """The checkpoint name (local to the group) of the norm applied to an op's input."""
    if kind == "head":
        return f"{cfg.text_prefix}norm.weight"
    return "post_attention_layernorm.weight" if kind == "ffn" else "input_layernorm.weight"


def make_op(cfg: ModelConfig, kind: str, projs: dict, vectors: dict, decode_step=None):
    """The op of one weight group. `projs`: local name -> projection callable ([..., in] -> [..., out]);
    `vectors`: local name -> small fp32 tensor; `decode_step`: a fused DeltaNet step for T == 1."""
    if kind == "head":
        return projs["weight"]
    if kind == "ffn":
        return FFN(projs["gate_proj.weight"], projs["up_proj.weight"], projs["down_proj.weight"])
    if kind == "attention":
        return Attention(cfg, projs["q_proj.weight"], projs["k_proj.weight"], projs["v_proj.weight"],
                         projs["o_proj.weight"], vectors["q_norm.weight"], vectors["k_norm.weight"])
    return GatedDeltaNet(cfg, projs["in_proj_qkv.weight"], projs["in_proj_z.weight"], projs["in_proj_b.weight"],
                         projs["in_proj_a.weight"], projs["out_proj.weight"], vectors["conv1d.weight"],
                         vectors["A_log"], vectors["dt_bias"], vectors["norm.weight"], decode_step=decode_step)


def new_cache(cfg: ModelConfig, kind: str, batch: int, capacity: int, dtype: torch.dtype,
              device: torch.device | str):
    """A layer's cache: KV [B, kv_heads, capacity, D] for attention, conv + recurrent state for DeltaNet."""
    if kind == FULL:
        return KVCache(batch, cfg.num_key_value_heads, cfg.head_dim, capacity, dtype, device)
    return DeltaNetCache(batch, cfg.linear_conv_dim, cfg.linear_conv_kernel_dim, cfg.linear_num_value_heads,
                         cfg.linear_key_head_dim, cfg.linear_value_head_dim, dtype, device)

