"""One-token decode of CPU-resident layers straight through the C++ kernels.

The generic forward (runner.Runner.hidden) wraps each kernel call in small torch ops: norms,
dtype casts, reshapes, about 250 per layer. On the mid bench model that was ~4 ms per token,
more than the int4 weight reads themselves (~3 ms). For a single token (B = T = 1) of a layer
whose mixer and FFN both decode on the CPU with the C++ kernels, this path runs the same math
as model/layers.py with the hidden state in fp32 and one C++ call per step, into buffers
allocated once:

  DeltaNet mixer : rmsnorm, the input projections (one call over the model's PACKED_MODULES block),
                   fused conv + delta step, gated norm, out_proj, += x
  attention mixer: rmsnorm, q/k/v projections (one call), then one call for the q/k norms, RoPE, the KV
                   cache write, softmax attention and the sigmoid gate; o_proj, += x
  FFN            : rmsnorm, fused gate/up/down, += x
  head           : rmsnorm, lm_head

The residual stays fp32 across consecutive fast layers (the generic path rounds it to the model
dtype after every op). tests/test_cpu_decode.py checks it against the generic path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..config import FULL
from ..kernels import abi, cpp, dispatch
from ..kernels.ops import CpuFFN, CpuLinear
from ..model.layers import FFN, Attention, GatedDeltaNet
from ..model.rope import Rope
from .cpu_ops import CpuKernelOp

if TYPE_CHECKING:
    from .runner import Runner


def _kernel(op, cls):
    """The CPU kernel object behind a CpuKernelOp, if it is a `cls`."""
    if isinstance(op, CpuKernelOp) and isinstance(op.kernel, cls):
        return op.kernel
    return None


class _Linear:
    """y [1, out] = x [1, in] @ W^T through hq_linear, into a buffer reused every token."""

    def __init__(self, k: CpuLinear, fresh_output: bool = False):
        self.w = k.weight
        self.fresh = fresh_output  # logits leave this module: a new tensor per call
        self.y = torch.empty(1, self.w.out_features)
        # per token: (x), or (x, y) for fresh outputs; the weight and buffers are checked once
        self.hq_linear = cpp.bind_linear(self.w, B=1) if fresh_output else cpp.bind_linear(self.w, B=1, y=self.y)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fresh:
            y = torch.empty(1, self.w.out_features)
            self.hq_linear(x, y)
            return y
        self.hq_linear(x)
        return self.y


class _Norm:
    """rmsnorm of the [1, H] residual with the zero-centred weight (1 + w) precomputed."""

    def __init__(self, w: torch.Tensor, eps: float):
        self.w = (1.0 + w.float()).contiguous()
        self.eps = eps
        self.out = torch.empty(1, self.w.numel())
        n = self.w.numel()
        self.hq_rmsnorm = abi.HQ_RMSNORM.bind(rows=1, n=n, ldx=n, w=self.w, eps=eps, out=self.out)  # (x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.hq_rmsnorm(x)
        return self.out


class _Ffn:
    def __init__(self, norm: torch.Tensor, k: CpuFFN, eps: float):
        self.norm = _Norm(norm, eps)
        g, u, d = k.gate, k.up, k.down
        H, I = g.in_features, g.out_features
        self.hidden, self.y = torch.empty(1, I), torch.empty(1, H)
        self.hq_ffn = abi.HQ_FFN.bind(fmt=cpp.FMT_CODE[g.fmt], gw=g.data, gm=g.meta, uw=u.data, um=u.meta,
                                      dw=d.data, dm=d.meta, H=H, I=I, B=1, h=self.hidden, y=self.y)  # (x)

    def __call__(self, x: torch.Tensor) -> None:
        self.hq_ffn(self.norm(x))
        x += self.y


class _DeltaNet:
    def __init__(self, cfg, norm: torch.Tensor, op: GatedDeltaNet, lins: dict):
        self.norm = _Norm(norm, cfg.rms_norm_eps)
        self.qkv, self.z, self.b, self.a, self.out = (lins[k] for k in ("qkv", "z", "b", "a", "out"))
        self.fused = lins.get("in")  # qkv | z | b | a rows in one matrix: one call instead of four
        self.op = op
        self.Hk, self.Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.Dk, self.Dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.conv_dim, self.K = cfg.linear_conv_dim, cfg.linear_conv_kernel_dim
        self.conv_w = op.conv_weight.float().contiguous()
        self.A_log, self.dt_bias = op.A_log.float().contiguous(), op.dt_bias.float().contiguous()
        self.gnorm_w = op.norm.float().contiguous()
        self.eps = cfg.rms_norm_eps
        self.o = torch.empty(self.Hv, self.Dv)
        self.g = torch.empty(1, self.Hv * self.Dv)
        self.splits = [self.conv_dim, self.Hv * self.Dv, self.Hv, self.Hv]
        # (S_len, mixed, a, b, conv_state, state) and (z [Hv, Dv]) per token; the rest checked once
        self.hq_deltanet_step = abi.HQ_DELTANET_STEP.bind(
            B=1, conv_dim=self.conv_dim, K=self.K, conv_w=self.conv_w, A_log=self.A_log, dt_bias=self.dt_bias,
            Hk=self.Hk, Hv=self.Hv, Dk=self.Dk, Dv=self.Dv, out=self.o.view(1, self.Hv, self.Dv))
        self.hq_gated_rmsnorm = abi.HQ_GATED_RMSNORM.bind(rows=self.Hv, n=self.Dv, x=self.o, w=self.gnorm_w,
                                                          eps=self.eps, out=self.g.view(self.Hv, self.Dv))

    def __call__(self, x: torch.Tensor, cache) -> None:
        h = self.norm(x)
        if self.fused is not None:
            qkv, z, b, a = self.fused(h).split(self.splits, dim=1)  # B = 1: each slice is contiguous
        else:
            qkv, z, b, a = self.qkv(h), self.z(h), self.b(h), self.a(h)
        conv, state = cache.conv, cache.state  # fp32: checked by the kernel declaration
        self.hq_deltanet_step(conv.shape[-1], qkv, a, b, conv, state)
        self.hq_gated_rmsnorm(z.view(self.Hv, self.Dv))
        x += self.out(self.g)


class _RopeAt:
    """cos / sin [rotary_dim] fp32 of one position, computed once per token for every layer."""

    def __init__(self, rope):
        self.rope, self.pos, self.cs = rope, None, None

    def __call__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        if pos != self.pos:
            cos, sin = self.rope.cos_sin(torch.tensor([pos]), torch.float32)
            self.pos, self.cs = pos, (cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous())
        return self.cs


class _Attention:
    def __init__(self, cfg, norm: torch.Tensor, op: Attention, lins: dict, rope_at: _RopeAt):
        self.cfg, self.rope_at = cfg, rope_at
        self.norm = _Norm(norm, cfg.rms_norm_eps)
        self.q, self.k, self.v, self.o = (lins[k] for k in ("q", "k", "v", "o"))
        self.fused = lins.get("in")  # q | k | v rows in one matrix
        self.nh, self.nkv, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.gated = bool(cfg.attn_output_gate)
        self.qld = self.D * (2 if self.gated else 1)  # per head [q(D), gate(D)]
        self.splits = [self.nh * self.qld, self.nkv * self.D, self.nkv * self.D]
        self.q_w1 = (1.0 + op.q_norm.float()).contiguous()
        self.k_w1 = (1.0 + op.k_norm.float()).contiguous()
        self.eps, self.scale = cfg.rms_norm_eps, op.scale
        self.out = torch.empty(self.nh, self.D)

    def __call__(self, x: torch.Tensor, cache, pos: int) -> None:
        nh, nkv, D = self.nh, self.nkv, self.D
        h = self.norm(x)
        if self.fused is not None:
            q, k, v = self.fused(h).split(self.splits, dim=1)  # B = 1: each slice is contiguous
        else:
            q, k, v = self.q(h), self.k(h), self.v(h)
        at = cache.claim(1)
        cos, sin = self.rope_at(pos)
        o = cpp.attn_decode(q.view(nh, self.qld), k.view(nkv, D), v.view(nkv, D), self.q_w1, self.k_w1,
                            self.eps, cos, sin, cache.k[0], cache.v[0], at, self.scale, self.gated, self.out)
        x += self.o(o.view(1, nh * D))


class CpuDecodePath:
    """Per layer: a fast one-token runner, or None where the generic path must run it."""

    def __init__(self, layers: list, head):
        self.layers, self.head = layers, head

    @staticmethod
    def build(model: "Runner") -> "CpuDecodePath | None":
        if not cpp.available():
            return None
        cfg = model.cfg
        rope = _RopeAt(Rope(cfg, "cpu"))
        layers = [_build_layer(cfg, layer, rope) for layer in model.layers]
        head = None
        hs = model.head
        if hs.decode_device == "cpu" and _kernel(hs.ops.get("cpu"), CpuLinear) is not None:
            head = (_Norm(hs.norms["cpu"], cfg.rms_norm_eps), _Linear(_kernel(hs.ops["cpu"], CpuLinear), True))
        if all(x is None for x in layers):
            return None
        return CpuDecodePath(layers, head)

    @staticmethod
    def enabled() -> bool:
        """Only while the C++ backend is the one in use (tests force the others)."""
        return dispatch.forced_backend() in (None, "cpp")

    def logits(self, x32: torch.Tensor) -> torch.Tensor:
        norm, lin = self.head
        return lin(norm(x32))


def _build_layer(cfg, layer, rope):
    mixer, ffn = layer.mixer, layer.ffn
    if mixer.decode_device != "cpu" or ffn.decode_device != "cpu":
        return None
    fop = ffn.ops.get("cpu")
    fk = _kernel(fop.fused, CpuFFN) if isinstance(fop, FFN) and fop.fused is not None else None
    if fk is None:
        return None
    f = _Ffn(ffn.norms["cpu"], fk, cfg.rms_norm_eps)
    mop = mixer.ops.get("cpu")
    if layer.kind == FULL and isinstance(mop, Attention):
        ks = {n: _kernel(getattr(mop, n + "_proj"), CpuLinear) for n in ("q", "k", "v", "o")}
        if any(k is None for k in ks.values()):
            return None
        lins = {n: _Linear(k) for n, k in ks.items()}
        if mixer.packed_in is not None:
            lins["in"] = _Linear(mixer.packed_in)
        m = _Attention(cfg, mixer.norms["cpu"], mop, lins, rope)
    elif layer.kind != FULL and isinstance(mop, GatedDeltaNet) and mop.decode_step is not None:
        names = {"qkv": mop.in_proj_qkv, "z": mop.in_proj_z, "b": mop.in_proj_b, "a": mop.in_proj_a,
                 "out": mop.out_proj}
        ks = {n: _kernel(op, CpuLinear) for n, op in names.items()}
        if any(k is None for k in ks.values()):
            return None
        lins = {n: _Linear(k) for n, k in ks.items()}
        if mixer.packed_in is not None:
            lins["in"] = _Linear(mixer.packed_in)
        m = _DeltaNet(cfg, mixer.norms["cpu"], mop, lins)
    else:
        return None
    return (layer.kind == FULL, m, f)
