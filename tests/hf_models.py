"""Tiny random HF reference models, saved with save_pretrained (sharded), for oracle tests."""

from __future__ import annotations

from pathlib import Path

import torch

# Structure-preserving tiny shapes: both layer kinds, kv groups > 1, value heads > key heads,
# partial rotary, untied head.
TINY_TEXT = dict(
    vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    linear_key_head_dim=16, linear_value_head_dim=24, linear_num_key_heads=2, linear_num_value_heads=6,
    linear_conv_kernel_dim=4, max_position_embeddings=1024, rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """HF zero-inits the (1+w) norms; random values make the oracle see every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (0.0 if "norm" in name else 0.0))
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 4 + 0.5))
            if name.endswith("dt_bias"):
                p.copy_(torch.rand(p.shape, generator=g))


def make_hf_model(kind: str = "causal", seed: int = 0, dtype=torch.float32, **overrides):
    from transformers import Qwen3_5Config, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration, Qwen3_5TextConfig
    torch.manual_seed(seed)
    text = {**TINY_TEXT, **overrides}
    if kind == "causal":
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**text))
    else:
        cfg = Qwen3_5Config(text_config=text, vision_config=dict(depth=1, hidden_size=32, intermediate_size=64,
                                                                  num_heads=2, out_hidden_size=text["hidden_size"]))
        model = Qwen3_5ForConditionalGeneration(cfg)
    _randomize(model, seed)
    return model.to(dtype).eval()


def save_hf_model(model, path: Path, shard: str = "200KB") -> Path:
    model.save_pretrained(path, max_shard_size=shard)
    return path


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                             pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()
