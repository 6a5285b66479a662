"""Qwen3.5/3.6 hybrid text model (`model_type: qwen3_5`): embed -> layers -> norm -> lm_head.

Each layer: x += mixer(norm(x)); x += ffn(norm(x)), the mixer being Gated DeltaNet or gated
full attention. The model holds op objects only; where their weights live is decided by whoever
builds it (`hetero_qwen.build`), and the hidden state follows the ops (`Layer.device`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import FULL, ModelConfig
from .cache import DeltaNetCache, KVCache
from .layers import FFN, Attention, GatedDeltaNet, Proj, rms_norm
from .rope import Rope


@dataclass
class Layer:
    kind: str                 # "full_attention" | "linear_attention"
    input_norm: torch.Tensor  # [H]
    mixer: Attention | GatedDeltaNet
    post_norm: torch.Tensor   # [H]
    ffn: FFN
    mixer_device: torch.device = torch.device("cpu")
    ffn_device: torch.device = torch.device("cpu")


class Qwen35Model:
    def __init__(self, cfg: ModelConfig, embed: torch.Tensor, layers: list[Layer], final_norm: torch.Tensor,
                 lm_head: Proj, dtype: torch.dtype, head_device: torch.device | str = "cpu",
                 rope_device: torch.device | str = "cpu"):
        self.cfg, self.embed, self.layers = cfg, embed, layers
        self.final_norm, self.lm_head, self.dtype = final_norm, lm_head, dtype
        self.head_device = torch.device(head_device)
        self.rope = Rope(cfg, rope_device)

    def new_caches(self, batch: int, capacity: int, kv_dtype: torch.dtype | None = None,
                   devices: list[torch.device] | None = None) -> list[KVCache | DeltaNetCache]:
        """One cache per layer; KV preallocated lazily to `capacity` tokens, DeltaNet state zeroed."""
        cfg = self.cfg
        caches = []
        for i, layer in enumerate(self.layers):
            dev = devices[i] if devices else layer.mixer_device
            if layer.kind == FULL:
                caches.append(KVCache(batch, cfg.num_key_value_heads, cfg.head_dim, capacity,
                                      kv_dtype or self.dtype, dev))
            else:
                caches.append(DeltaNetCache(batch, cfg.linear_conv_dim, cfg.linear_conv_kernel_dim,
                                            cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                                            cfg.linear_value_head_dim, self.dtype, dev))
        return caches

    def hidden(self, ids: torch.Tensor, caches: list, start: int) -> torch.Tensor:
        """ids [B, T] at absolute positions start..start+T-1 -> final-normed hidden [B, T, H]."""
        T = ids.shape[1]
        x = self.embed[ids.to(self.embed.device)].to(self.dtype)
        positions = torch.arange(start, start + T)
        cos_sin: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, cache in zip(self.layers, caches):
            x = x.to(layer.mixer_device)
            h = rms_norm(x, layer.input_norm, self.cfg.rms_norm_eps)
            if layer.kind == FULL:
                dev = layer.mixer_device
                if dev not in cos_sin:
                    cos, sin = self.rope.cos_sin(positions, self.dtype)
                    cos_sin[dev] = (cos.to(dev), sin.to(dev))
                x = x + layer.mixer(h, cache, *cos_sin[dev])
            else:
                x = x + layer.mixer(h, cache)
            x = x.to(layer.ffn_device)
            x = x + layer.ffn(rms_norm(x, layer.post_norm, self.cfg.rms_norm_eps))
        x = x.to(self.head_device)
        return rms_norm(x, self.final_norm, self.cfg.rms_norm_eps)

    def forward(self, ids: torch.Tensor, caches: list, start: int, last_only: bool = False) -> torch.Tensor:
        """Logits fp32 [B, T, vocab] (or [B, 1, vocab] with last_only)."""
        h = self.hidden(ids, caches, start)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h).float()
