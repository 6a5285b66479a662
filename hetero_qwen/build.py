"""Turn a checkpoint into a runnable model: read each weight group once, convert it to its
compute dtype (a zero-copy mmap view when the dtypes already match) and wrap projections.

`make_proj(group, local_name, weight)` decides how a projection runs: a plain torch weight by
default, or a CPU kernel object (int8/int4/bf16 GEMV) when the caller passes one.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from .checkpoint import Checkpoint, tensor_name
from .config import FULL, ModelConfig, WeightGroup
from .model.layers import FFN, Attention, GatedDeltaNet, Proj, TorchLinear
from .model.qwen3_5 import Layer, Qwen35Model

MakeProj = Callable[[WeightGroup, str, torch.Tensor], Proj]


def default_proj(group: WeightGroup, local: str, weight: torch.Tensor) -> Proj:
    return TorchLinear(weight)


def build_model(ckpt: Checkpoint, dtype: torch.dtype, make_proj: MakeProj = default_proj,
                progress: Callable[[Iterable], Iterable] = lambda it: it) -> Qwen35Model:
    cfg = ckpt.cfg
    groups = {g.name: g for g in cfg.weight_groups()}

    def load_group(g: WeightGroup) -> dict[str, torch.Tensor]:
        out = {}
        for local, shape in g.matrices:
            out[local] = ckpt.get(tensor_name(g.name, g.kind, local, cfg), shape).to(dtype)
        for local, shape in g.vectors:  # norms, A_log, dt_bias, conv: fp32, tiny
            out[local] = ckpt.get(tensor_name(g.name, g.kind, local, cfg), shape).to(torch.float32)
        return out

    embed_group = groups[f"{cfg.text_prefix}embed_tokens"]
    embed = load_group(embed_group)["weight"]
    layers = []
    for i in progress(range(cfg.num_hidden_layers)):
        mixer_group = groups[f"{cfg.layer_prefix(i)}{cfg.mixer_name(i)}"]
        ffn_group = groups[f"{cfg.layer_prefix(i)}mlp"]
        mw, fw = load_group(mixer_group), load_group(ffn_group)
        P = lambda g, w, name: make_proj(g, name, w[name])  # noqa: E731
        if cfg.layer_types[i] == FULL:
            mixer = Attention(cfg, P(mixer_group, mw, "q_proj.weight"), P(mixer_group, mw, "k_proj.weight"),
                              P(mixer_group, mw, "v_proj.weight"), P(mixer_group, mw, "o_proj.weight"),
                              mw["q_norm.weight"], mw["k_norm.weight"])
        else:
            mixer = GatedDeltaNet(cfg, P(mixer_group, mw, "in_proj_qkv.weight"), P(mixer_group, mw, "in_proj_z.weight"),
                                  P(mixer_group, mw, "in_proj_b.weight"), P(mixer_group, mw, "in_proj_a.weight"),
                                  P(mixer_group, mw, "out_proj.weight"), mw["conv1d.weight"], mw["A_log"],
                                  mw["dt_bias"], mw["norm.weight"])
        ffn = FFN(P(ffn_group, fw, "gate_proj.weight"), P(ffn_group, fw, "up_proj.weight"),
                  P(ffn_group, fw, "down_proj.weight"))
        layers.append(Layer(cfg.layer_types[i], mw["input_layernorm.weight"], mixer,
                            fw["post_attention_layernorm.weight"], ffn))
    head_group = groups["lm_head"]
    if cfg.tie_word_embeddings and "lm_head.weight" not in ckpt:
        head_w = embed
    else:
        head_w = ckpt.get("lm_head.weight", (cfg.vocab_size, cfg.hidden_size)).to(dtype)
    final_norm = ckpt.get(f"{cfg.text_prefix}norm.weight", (cfg.hidden_size,)).to(torch.float32)
    return Qwen35Model(cfg, embed, layers, final_norm, make_proj(head_group, "weight", head_w), dtype)


def checkpoint_dtype(cfg: ModelConfig) -> torch.dtype:
    """Compute dtype matching the checkpoint: fp32 stays fp32, everything else runs in bf16."""
    return {"float32": torch.float32, "float16": torch.float16}.get(cfg.torch_dtype, torch.bfloat16)
