"""The math of one Qwen3.5 layer: norms, gated attention, Gated DeltaNet, SwiGLU FFN.

Each op object holds its weights (on whatever device they were placed) and runs where they are.
Projections are callables `x[..., in] -> x[..., out]`: a torch weight through F.linear, or a CPU
kernel object (int8/int4/bf16 GEMV) with the same call signature.
Shapes: x [B, T, H]; attention heads [B, heads, T, D]; DeltaNet heads [B, T, heads, D].
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from .cache import DeltaNetCache, KVCache
from .causal_attention import causal_attention
from .delta_rule import chunked_gated_delta_rule, recurrent_gated_delta_rule, recurrent_gated_delta_rule_states
from .rope import apply_rope
from .scratch import metered_device, temporary

Proj = Callable[[torch.Tensor], torch.Tensor]


class TorchLinear:
    """y = x @ w^T with the weight kept in its storage dtype (activations cast to match)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero-centred RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w), computed in fp32."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (1.0 + w.float())).to(x.dtype)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """DeltaNet output norm per head: w * norm(x) * silu(z) (plain w, not 1 + w)."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return ((w.to(x.dtype) * y) * F.silu(z.float())).to(x.dtype)


class FFN:
    """SwiGLU: down(silu(gate x) * up x). A fused CPU kernel may replace the whole call."""

    def __init__(self, gate: Proj, up: Proj, down: Proj, fused: Proj | None = None):
        self.gate, self.up, self.down, self.fused = gate, up, down, fused

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(x)
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Attention:
    """Gated full attention with q/k norms, partial RoPE and grouped KV heads."""

    def __init__(self, cfg: ModelConfig, q_proj: Proj, k_proj: Proj, v_proj: Proj, o_proj: Proj,
                 q_norm: torch.Tensor, k_norm: torch.Tensor):
        self.cfg = cfg
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.q_norm, self.k_norm = q_norm, k_norm
        self.scale = cfg.head_dim ** -0.5

    def __call__(self, x: torch.Tensor, cache: KVCache, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        D, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        q = self.q_proj(x)
        if cfg.attn_output_gate:  # per head [q(D), gate(D)] interleaved along the output dim
            q, gate = q.view(B, T, nh, 2 * D).chunk(2, dim=-1)
            gate = gate.reshape(B, T, nh * D)
        q = rms_norm(q.reshape(B, T, nh, D), self.q_norm, cfg.rms_norm_eps).transpose(1, 2)
        k = rms_norm(self.k_proj(x).view(B, T, nkv, D), self.k_norm, cfg.rms_norm_eps).transpose(1, 2)
        v = self.v_proj(x).view(B, T, nkv, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = cache.length  # the cache may live on another device than this op (streamed prefill)
        k, v = cache.append(k.to(cache.device, cache.dtype), v.to(cache.device, cache.dtype))
        with temporary(_kv_copy_bytes(cache, k, q), "K/V copied from the cache's device"):
            k, v = k.to(q.device, q.dtype), v.to(q.device, q.dtype)
            o = causal_attention(q, k, v, past, self.scale)
        o = o.transpose(1, 2).reshape(B, T, nh * D)
        if cfg.attn_output_gate:
            o = o * torch.sigmoid(gate)
        return self.o_proj(o)


def _kv_copy_bytes(cache: KVCache, k: torch.Tensor, q: torch.Tensor) -> int:
    """Bytes of the K/V copy an op makes when its cache lives on another device (a streamed
    attention layer in prefill) or in another dtype; 0 when k/v are used in place."""
    owner = getattr(getattr(cache, "owner", None), "name", None)  # the cache's device, if known
    elsewhere = k.device != q.device or (owner is not None and metered_device() not in (None, owner))
    if not elsewhere and k.dtype == q.dtype:
        return 0
    return 2 * k.numel() * q.element_size()


def depthwise_causal_conv(seq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """seq [B, C, K-1+T] conv over time with w [C, K] per channel -> [B, C, T] in seq's dtype.
    On the CPU in fp32 and rounded once: torch's bf16 depthwise conv1d took ~80 ms for the 27B's
    10240 channels at any T (fp32: 0.5 ms), 3x the whole verify forward of a DeltaNet layer."""
    if seq.device.type == "cpu" and seq.dtype != torch.float32:
        return F.conv1d(seq.float(), w.float().unsqueeze(1), groups=seq.shape[1]).to(seq.dtype)
    return F.conv1d(seq, w.to(seq.dtype).unsqueeze(1), groups=seq.shape[1])


class GatedDeltaNet:
    """Causal depthwise conv + SiLU over qkv, then the gated delta rule, gated norm, out_proj."""

    def __init__(self, cfg: ModelConfig, in_proj_qkv: Proj, in_proj_z: Proj, in_proj_b: Proj,
                 in_proj_a: Proj, out_proj: Proj, conv_weight: torch.Tensor, A_log: torch.Tensor,
                 dt_bias: torch.Tensor, norm: torch.Tensor, decode_step: Callable | None = None):
        self.cfg = cfg
        self.in_proj_qkv, self.in_proj_z, self.in_proj_b, self.in_proj_a = in_proj_qkv, in_proj_z, in_proj_b, in_proj_a
        self.out_proj = out_proj
        self.conv_weight = conv_weight.reshape(cfg.linear_conv_dim, cfg.linear_conv_kernel_dim)  # [C, K]
        self.A_log, self.dt_bias, self.norm = A_log, dt_bias, norm
        self.decode_step = decode_step  # fused CPU kernel for T == 1 (same math), if any

    def __call__(self, x: torch.Tensor, cache: DeltaNetCache) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        Hv, Dv = cfg.linear_num_value_heads, cfg.linear_value_head_dim
        qkv = self.in_proj_qkv(x)                      # [B, T, conv_dim]
        z = self.in_proj_z(x).view(B, T, Hv, Dv)
        b, a = self.in_proj_b(x), self.in_proj_a(x)    # [B, T, Hv]
        if T == 1 and self.decode_step is not None and not cache.keep_slots:
            o = self.decode_step(qkv[:, 0], a[:, 0], b[:, 0], self.conv_weight, cache.conv, self.A_log,
                                 self.dt_bias, cache.state)          # [B, Hv, Dv] fp32
            o = o.to(x.dtype).view(B, 1, Hv, Dv)
        elif cache.keep_slots and self.decode_step is not None:
            o = self._steps_with_slots(qkv, a, b, cache).to(x.dtype)
        else:
            o = self._mix(qkv, a, b, cache, x.dtype)
        o = gated_rms_norm(o, z, self.norm, cfg.rms_norm_eps).reshape(B, T, Hv * Dv)
        return self.out_proj(o)

    def _steps_with_slots(self, qkv, a, b, cache: DeltaNetCache) -> torch.Tensor:
        """A verify forward where the fused decode step runs: that step once per position (a decode
        token's exact math; the torch recurrence with per-position states cost ~5x more on the 27B
        shape), each position's conv window and state kept as its slot. -> o [B, T, Hv, Dv] fp32."""
        T = qkv.shape[1]
        outs = []
        for t in range(T):
            outs.append(self.decode_step(qkv[:, t], a[:, t], b[:, t], self.conv_weight, cache.conv, self.A_log,
                                         self.dt_bias, cache.state))
            cache.record_step(t, T)
        return torch.stack(outs, 1)

    def _mix(self, qkv, a, b, cache: DeltaNetCache, dtype) -> torch.Tensor:
        cfg = self.cfg
        B, T, C = qkv.shape
        Hk, Hv, Dk, Dv = cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim
        K = cfg.linear_conv_kernel_dim
        seq = torch.cat([cache.conv.to(qkv.device, qkv.dtype), qkv.transpose(1, 2)], dim=-1)  # [B, C, K-1+T]
        cache.conv.copy_(seq[:, :, -(K - 1):])
        cache.slots = 0  # any earlier verify's slots are stale now
        conv = depthwise_causal_conv(seq, self.conv_weight)                         # [B, C, T]
        qkv = F.silu(conv).transpose(1, 2)
        kd = Hk * Dk
        q, k, v = qkv.split([kd, kd, Hv * Dv], dim=-1)
        q = q.reshape(B, T, Hk, Dk).float()
        k = k.reshape(B, T, Hk, Dk).float()
        v = v.reshape(B, T, Hv, Dv).float()
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) * Dk ** -0.5
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
        if Hv != Hk:  # each key head serves Hv/Hk consecutive value heads
            q, k = q.repeat_interleave(Hv // Hk, dim=2), k.repeat_interleave(Hv // Hk, dim=2)
        beta = torch.sigmoid(b).float()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        q, k, v, g, beta = (t.transpose(1, 2).contiguous() for t in (q, k, v, g, beta))
        if cache.keep_slots:  # a verify forward: the state after every position (rollback = index)
            o, states = recurrent_gated_delta_rule_states(q, k, v, g, beta, cache.state.to(q.device))
            cache.record(seq, states)
            S = states[-1]
        else:
            rule = recurrent_gated_delta_rule if T == 1 else chunked_gated_delta_rule
            o, S = rule(q, k, v, g, beta, cache.state.to(q.device))
        cache.state.copy_(S)
        return o.transpose(1, 2).to(dtype)             # [B, T, Hv, Dv]
