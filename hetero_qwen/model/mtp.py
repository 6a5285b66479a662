"""The multi-token-prediction (MTP) layer of Qwen3.5/3.6 (`mtp.*` tensors), math only.

One draft step, for the hidden state h_p of position p (after the model's final norm) and the token
x_{p+1} that follows it:

    e = norm_e(embed(x_{p+1}));  g = norm_h(h_p)                 (both (1 + w) RMSNorms)
    x = fc(concat(e, g))                                         fc [H, 2H]: embedding first
    x = x + attn(input_layernorm(x), cache, rope at position p)  gated full attention, own KV cache
    x = x + ffn(post_attention_layernorm(x))
    out = norm(x)                                                the next hidden; logits = head(out)

Checkpoint names and the concat order follow vLLM's `qwen3_5_mtp.py` (Qwen3_5MultiTokenPredictor:
`torch.cat([inputs_embeds, hidden_states])` after `pre_fc_norm_embedding` / `pre_fc_norm_hidden`,
one `Qwen3_5DecoderLayer(layer_type="full_attention")`, then `norm`; embeddings and head shared).
Further drafts reuse the layer on its own output `out` and the token it drafted. Position p is the
hidden state's position (vLLM's proposer passes the target positions with the ids shifted by one).
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .cache import KVCache
from .layers import rms_norm


class MtpLayer:
    """`fc`: projection [..., 2H] -> [..., H]; `attn`, `ffn`: the decoder layer's ops (qwen3_5.make_op's
    Attention and FFN, over weights wherever they live); `vectors`: the fp32 norms by local name
    (pre_fc_norm_embedding, pre_fc_norm_hidden, input_layernorm, post_attention_layernorm, norm)."""

    def __init__(self, cfg: ModelConfig, fc, attn, ffn, vectors: dict[str, torch.Tensor]):
        self.cfg, self.fc, self.attn, self.ffn = cfg, fc, attn, ffn
        self.norm_embedding = vectors["pre_fc_norm_embedding.weight"]
        self.norm_hidden = vectors["pre_fc_norm_hidden.weight"]
        self.attn_norm = vectors["input_layernorm.weight"]
        self.ffn_norm = vectors["post_attention_layernorm.weight"]
        self.final_norm = vectors["norm.weight"]

    def __call__(self, emb: torch.Tensor, hidden: torch.Tensor, cache: KVCache,
                 cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """emb = embed(x_{p+1}) [B, T, H], hidden = h_p [B, T, H] for T consecutive positions p
        (cos/sin theirs) -> the MTP's normed hidden [B, T, H]; its K/V are appended to `cache`."""
        eps = self.cfg.rms_norm_eps
        dtype = emb.dtype
        x = self.fc(torch.cat([rms_norm(emb, self.norm_embedding, eps),
                               rms_norm(hidden.to(dtype), self.norm_hidden, eps)], dim=-1))
        x = x + self.attn(rms_norm(x, self.attn_norm, eps), cache, cos, sin)
        x = x + self.ffn(rms_norm(x, self.ffn_norm, eps))
        return rms_norm(x, self.final_norm, eps)
