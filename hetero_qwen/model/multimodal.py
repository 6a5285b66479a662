"""Images into the language model: the embedding scatter, and a reference multimodal forward.

`scatter_image_embeds` writes the tower's output rows over the image placeholder tokens, in order
(transformers' `masked_scatter`). `MultimodalModel` is the whole path as plain math on one device,
straight from a checkpoint (no placement): embed -> scatter -> layers with M-RoPE -> norm -> head.
It is the reference the placed engine must reproduce, built from the same layer classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import FULL, ModelConfig, load_config
from ..errors import InputError
from ..vision_config import MultimodalConfig, load_multimodal_config
from .cache import DeltaNetCache, KVCache
from .layers import FFN, Attention, GatedDeltaNet, TorchLinear, rms_norm
from .mrope import MRope, mrope_position_ids, next_position, text_positions
from .vision import VisionWeights, load_vision_weights, vision_tower


def scatter_image_embeds(embeds: torch.Tensor, image_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """embeds [..., T, H], image_embeds [N, H], mask [..., T] bool with N True entries -> a copy of
    embeds whose masked rows are image_embeds in order."""
    n = int(mask.sum())
    if n != image_embeds.shape[0]:
        raise InputError(f"the prompt holds {n} image placeholder tokens but the images give {image_embeds.shape[0]}")
    out = embeds.clone()
    out[mask.to(out.device)] = image_embeds.to(out.device, out.dtype)
    return out


def image_rows_for_chunk(ids, start: int, end: int, image_token_id: int) -> slice:
    """Rows of the prompt's image embeddings that fall in tokens [start, end) (a prefill chunk may
    cut through an image: slice the full prompt's positions and these rows, never recompute)."""
    is_image = torch.as_tensor(ids).reshape(-1) == image_token_id
    return slice(int(is_image[:start].sum()), int(is_image[:end].sum()))


@dataclass
class TextLayer:
    kind: str
    norm1: torch.Tensor
    mixer: object      # Attention | GatedDeltaNet
    norm2: torch.Tensor
    ffn: FFN


class MultimodalModel:
    """The reference: every weight on one device in one dtype, read from a checkpoint directory."""

    def __init__(self, path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        from ..checkpoint import Checkpoint, tensor_name
        self.cfg: ModelConfig = load_config(path)
        self.mm: MultimodalConfig | None = load_multimodal_config(path)
        self.dtype, self.device = dtype, torch.device(device)
        ckpt = Checkpoint(path, self.cfg)
        cfg = self.cfg

        def get(name):
            return ckpt.get(name).to(self.device, dtype, copy=True)

        self.embed = get(f"{cfg.text_prefix}embed_tokens.weight")
        self.layers: list[TextLayer] = []
        groups = {g.name: g for g in cfg.weight_groups()}
        for i in range(cfg.num_hidden_layers):
            p = cfg.layer_prefix(i)
            mg = groups[p + cfg.mixer_name(i)]
            P = {local: get(tensor_name(mg.name, mg.kind, local, cfg)) for local, _ in mg.matrices + mg.vectors}
            L = {k: TorchLinear(v) for k, v in P.items() if v.ndim == 2}
            if cfg.layer_types[i] == FULL:
                mixer = Attention(cfg, L["q_proj.weight"], L["k_proj.weight"], L["v_proj.weight"],
                                  L["o_proj.weight"], P["q_norm.weight"], P["k_norm.weight"])
            else:
                mixer = GatedDeltaNet(cfg, L["in_proj_qkv.weight"], L["in_proj_z.weight"], L["in_proj_b.weight"],
                                      L["in_proj_a.weight"], L["out_proj.weight"], P["conv1d.weight"],
                                      P["A_log"], P["dt_bias"], P["norm.weight"])
            ffn = FFN(*(TorchLinear(get(f"{p}mlp.{n}_proj.weight")) for n in ("gate", "up", "down")))
            self.layers.append(TextLayer(cfg.layer_types[i], P["input_layernorm.weight"], mixer,
                                         get(f"{p}post_attention_layernorm.weight"), ffn))
        self.norm = get(f"{cfg.text_prefix}norm.weight")
        self.head = self.embed if cfg.tie_word_embeddings and "lm_head.weight" not in ckpt else get("lm_head.weight")
        self.vision: VisionWeights | None = (load_vision_weights(ckpt, self.mm.vision, dtype, self.device)
                                             if self.mm is not None else None)
        self.rope = MRope(cfg, self.mm.mrope_section if self.mm else (11, 11, 10), self.device)

    # ---- caches and images -----------------------------------------------------------------
    def new_caches(self, capacity: int) -> list:
        cfg = self.cfg
        return [KVCache(1, cfg.num_key_value_heads, cfg.head_dim, capacity, self.dtype, self.device)
                if layer.kind == FULL else
                DeltaNetCache(1, cfg.linear_conv_dim, cfg.linear_conv_kernel_dim, cfg.linear_num_value_heads,
                              cfg.linear_key_head_dim, cfg.linear_value_head_dim, self.dtype, self.device)
                for layer in self.layers]

    def encode_images(self, pixel_values: torch.Tensor, grid_thw) -> torch.Tensor:
        if self.vision is None:
            raise InputError("this model has no vision tower")
        return vision_tower(self.vision, pixel_values, grid_thw)

    def positions(self, ids, grid_thw=(), start: int = 0) -> torch.Tensor:
        mm = self.mm
        if mm is None:
            return text_positions(start, len(ids))
        return mrope_position_ids(ids, grid_thw, mm.image_token_id, mm.vision.spatial_merge_size, start)

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, ids, caches: list, positions: torch.Tensor,
                image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """ids [T] at M-RoPE positions [3, T] (continuing `caches`) -> logits fp32 [T, vocab]."""
        ids = torch.as_tensor(ids, device=self.device).reshape(-1)
        x = self.embed[ids]
        if image_embeds is not None or (self.mm is not None and bool((ids == self.mm.image_token_id).any())):
            # placeholders without embeddings (or the reverse) are an error, never a silent text embed
            x = scatter_image_embeds(x, x[:0] if image_embeds is None else image_embeds,
                                     ids == (self.mm.image_token_id if self.mm else -1))
        x = x[None]                                                     # [1, T, H]
        cos, sin = self.rope.cos_sin(positions, self.dtype)
        eps = self.cfg.rms_norm_eps
        for layer, cache in zip(self.layers, caches):
            h = rms_norm(x, layer.norm1, eps)
            x = x + (layer.mixer(h, cache, cos, sin) if layer.kind == FULL else layer.mixer(h, cache))
            x = x + layer.ffn(rms_norm(x, layer.norm2, eps))
        return torch.nn.functional.linear(rms_norm(x, self.norm, eps), self.head)[0].float()

    def logits(self, ids, pixel_values=None, grid_thw=()) -> torch.Tensor:
        """One prefill of a prompt with its images -> logits [T, vocab]."""
        embeds = self.encode_images(pixel_values, grid_thw) if pixel_values is not None else None
        return self.forward(ids, self.new_caches(len(ids)), self.positions(ids, grid_thw), embeds)

    def greedy(self, ids, n: int, pixel_values=None, grid_thw=()) -> list[int]:
        """Prefill, then n greedy decode steps at positions next_position(prompt) + k."""
        caches = self.new_caches(len(ids) + n)
        pos = self.positions(ids, grid_thw)
        embeds = self.encode_images(pixel_values, grid_thw) if pixel_values is not None else None
        tok = int(self.forward(ids, caches, pos, embeds)[-1].argmax())
        out, at = [tok], next_position(pos)
        for _ in range(n - 1):
            tok = int(self.forward([tok], caches, text_positions(at, 1))[-1].argmax())
            out.append(tok)
            at += 1
        return out
