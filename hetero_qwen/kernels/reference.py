"""Plain torch reference implementations, same signatures as the fast kernels.

These are the numerical oracles of tests/test_kernels_*.py. The DeltaNet step follows
transformers' `causal_conv1d_update` + `torch_recurrent_gated_delta_rule` (Qwen3.5 modeling
file) step by step: conv over cat(conv_state, x), SiLU, split, l2norm(q), l2norm(k), q / sqrt(Dk),
repeat_interleave of key heads, then decay, delta update, output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .quant import PackedWeight, linear_dequant


def linear(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """x [B, in] -> [B, out] fp32 (weights dequantized to fp32)."""
    return linear_dequant(x, w)


def ffn_decode(x: torch.Tensor, gate: PackedWeight, up: PackedWeight, down: PackedWeight) -> torch.Tensor:
    """SwiGLU FFN: down(silu(gate x) * up x). x [B, H] -> [B, H] fp32."""
    x = x.float()
    h = F.silu(linear(x, gate)) * linear(x, up)
    return linear(h, down)


def deltanet_heads(conv_dim: int, state: torch.Tensor) -> tuple[int, int, int, int]:
    """(Hk, Hv, Dk, Dv) from conv_dim = 2*Hk*Dk + Hv*Dv and state [B, Hv, Dk, Dv]."""
    _, Hv, Dk, Dv = state.shape
    rest = conv_dim - Hv * Dv
    if rest <= 0 or rest % (2 * Dk):
        raise ValueError(f"conv_dim {conv_dim} does not match state {tuple(state.shape)}")
    Hk = rest // (2 * Dk)
    if Hv % Hk:
        raise ValueError(f"value heads {Hv} not a multiple of key heads {Hk}")
    return Hk, Hv, Dk, Dv


def deltanet_decode_step(mixed_qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                         conv_weight: torch.Tensor, conv_state: torch.Tensor, A_log: torch.Tensor,
                         dt_bias: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """One Gated DeltaNet decode token.

    mixed_qkv [B, conv_dim] (in_proj_qkv output, before the conv), a, b [B, Hv],
    conv_weight [conv_dim, K], conv_state [B, conv_dim, L >= K-1] (updated in place),
    A_log, dt_bias [Hv], state [B, Hv, Dk, Dv] (updated in place). Returns o [B, Hv, Dv].
    Computes in the dtype of `state` (fp32 normally; fp64 for the long-run oracle).
    """
    dt = state.dtype
    B, conv_dim = mixed_qkv.shape
    Hk, Hv, Dk, Dv = deltanet_heads(conv_dim, state)
    K = conv_weight.shape[1]
    # causal depthwise conv on [state..., x], keep the last L inputs as the new state
    full = torch.cat([conv_state.to(dt), mixed_qkv.to(dt)[:, :, None]], dim=-1)
    conv_state.copy_(full[:, :, -conv_state.shape[-1]:])
    out = F.conv1d(full, conv_weight.to(dt)[:, None, :], padding=0, groups=conv_dim)[:, :, -1]
    qkv = F.silu(out)
    q, k, v = torch.split(qkv, [Hk * Dk, Hk * Dk, Hv * Dv], dim=-1)
    q, k, v = q.reshape(B, Hk, Dk), k.reshape(B, Hk, Dk), v.reshape(B, Hv, Dv)
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    q = q / (Dk ** 0.5)
    q = q.repeat_interleave(Hv // Hk, dim=1)
    k = k.repeat_interleave(Hv // Hk, dim=1)
    beta = torch.sigmoid(b.to(dt))
    g = -A_log.to(dt).exp() * F.softplus(a.to(dt) + dt_bias.to(dt))
    S = state * g.exp()[..., None, None]
    kv = (S * k[..., None]).sum(dim=-2)
    delta = (v - kv) * beta[..., None]
    S = S + k[..., None] * delta[..., None, :]
    state.copy_(S)
    return (S * q[..., None]).sum(dim=-2)
