"""A plain reference of the MTP draft step, written from its definition (transformers has no MTP
forward): every step spelled out over the checkpoint's `mtp.*` tensors in fp32, sharing nothing
with hetero_qwen.model but the config."""

from __future__ import annotations

import math

import torch


def _norm(x, w, eps):  # (1 + w) RMSNorm
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)


def _rope(x, pos, cfg):
    """x [T, heads, D]: rotate-half over the first rotary_dim dims, angle pos * theta^(-2i/rd)."""
    rd = cfg.rotary_dim
    inv = 1.0 / cfg.rope.theta ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    ang = torch.tensor(pos, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().float()[:, None, :], ang.sin().float()[:, None, :]
    a, b, rest = x[..., :rd // 2], x[..., rd // 2:rd], x[..., rd:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)


def reference_mtp(t: dict, cfg, embed, head, tokens, hidden, positions, past_kv=None):
    """t: "mtp.*" name -> fp32 tensor; embed [V, H], head [V, H]; pairs (hidden[i], tokens[i]) at
    positions[i]. past_kv: (K [n, kvh, D], V) from earlier calls. Returns (out [T, H], logits [T, V],
    (K, V) including these positions)."""
    eps, D = cfg.rms_norm_eps, cfg.head_dim
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    p = "mtp.layers.0."
    e = _norm(embed[torch.tensor(tokens)], t["mtp.pre_fc_norm_embedding.weight"], eps)
    h = _norm(hidden, t["mtp.pre_fc_norm_hidden.weight"], eps)
    x = torch.cat([e, h], dim=-1) @ t["mtp.fc.weight"].T                    # [T, H]
    T = x.shape[0]
    a = _norm(x, t[p + "input_layernorm.weight"], eps)
    qg = (a @ t[p + "self_attn.q_proj.weight"].T).view(T, nh, 2 * D)
    q, gate = qg[..., :D], qg[..., D:]
    q = _rope(_norm(q, t[p + "self_attn.q_norm.weight"], eps), positions, cfg)
    k = _rope(_norm((a @ t[p + "self_attn.k_proj.weight"].T).view(T, nkv, D), t[p + "self_attn.k_norm.weight"], eps),
              positions, cfg)
    v = (a @ t[p + "self_attn.v_proj.weight"].T).view(T, nkv, D)
    if past_kv is not None:
        k, v = torch.cat([past_kv[0], k]), torch.cat([past_kv[1], v])
    n = k.shape[0]
    o = torch.empty(T, nh, D)
    for i in range(T):  # query i sees every earlier key and its own
        sees = n - T + i + 1
        for hd in range(nh):
            kv = hd // (nh // nkv)
            w = torch.softmax((k[:sees, kv] @ q[i, hd]) / math.sqrt(D), dim=0)
            o[i, hd] = w @ v[:sees, kv]
    o = (o * torch.sigmoid(gate)).reshape(T, nh * D)
    x = x + o @ t[p + "self_attn.o_proj.weight"].T
    f = _norm(x, t[p + "post_attention_layernorm.weight"], eps)
    gate_up = torch.nn.functional.silu(f @ t[p + "mlp.gate_proj.weight"].T) * (f @ t[p + "mlp.up_proj.weight"].T)
    x = x + gate_up @ t[p + "mlp.down_proj.weight"].T
    out = _norm(x, t["mtp.norm.weight"], eps)
    return out, out @ head.T, (k, v)
