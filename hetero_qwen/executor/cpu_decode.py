"""Decode and verify forwards of CPU-resident layers straight through the C++ kernels.

The generic forward (runner.Runner.hidden) wraps each kernel call in small torch ops: norms,
dtype casts, reshapes, about 250 per layer. On the mid bench model that was ~4 ms per token,
more than the int4 weight reads themselves (~3 ms). For a forward of T <= MAX_TOKENS tokens of
one sequence (a decode token, or a speculative verify of k drafts + 1) through a layer whose
mixer and FFN both run on the CPU with the C++ kernels, this path runs the same math as
model/layers.py with the hidden state in fp32 and few C++ calls per step, into buffers allocated
once per T:

  DeltaNet mixer : rmsnorm, the input projections (one call over the model's PACKED_MODULES block),
                   per position the fused conv + delta step (its state kept as a verify slot when
                   the cache asks), gated norm, out_proj, += x
  attention mixer: rmsnorm, q/k/v projections (one call), then per position one call for the q/k
                   norms, RoPE, the KV cache write, softmax attention and the sigmoid gate; o_proj, += x
  FFN            : rmsnorm, fused gate/up/down, += x
  head           : rmsnorm, lm_head

The projections read their weights once for all T rows, and every row is computed by the same
operations as a one-token call (the C++ kernels' rows do not depend on the batch:
tests/test_kernels_linear.py), so a verify's logits equal the tokens decoded one by one, bit for
bit (tests/test_cpu_verify_path.py). The residual stays fp32 across consecutive fast layers (the
generic path rounds it to the model dtype after every op). tests/test_cpu_decode.py checks it
against the generic path.
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

MAX_TOKENS = 8  # rows a fast forward takes: a decode token, or a verify of up to 7 drafts + 1


def _kernel(op, cls):
    """The CPU kernel object behind a CpuKernelOp, if it is a `cls`."""
    if isinstance(op, CpuKernelOp) and isinstance(op.kernel, cls):
        return op.kernel
    return None


class _PerT:
    """What a step needs for T rows (bound kernels, buffers), made on first use of each T."""

    def __init__(self, make):
        self.make, self.by_t = make, {}

    def __call__(self, T: int):
        v = self.by_t.get(T)
        if v is None:
            v = self.by_t[T] = self.make(T)
        return v


class _Linear:
    """y [T, out] = x [T, in] @ W^T through hq_linear, into a buffer per T reused every call."""

    def __init__(self, k: CpuLinear, fresh_output: bool = False):
        self.w = k.weight
        self.fresh = fresh_output  # logits leave this module: a new tensor per call
        n = self.w.out_features

        def make(T):  # (x) -> y, or (x, y) for fresh outputs; the weight and buffers checked once
            if fresh_output:
                return cpp.bind_linear(self.w, B=T), None
            y = torch.empty(T, n)
            return cpp.bind_linear(self.w, B=T, y=y), y
        self.per_t = _PerT(make)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        hq_linear, y = self.per_t(T)
        if self.fresh:
            y = torch.empty(T, self.w.out_features)
            hq_linear(x, y)
            return y
        hq_linear(x)
        return y


class _Norm:
    """rmsnorm of the [T, H] residual with the zero-centred weight (1 + w) precomputed."""

    def __init__(self, w: torch.Tensor, eps: float):
        self.w = (1.0 + w.float()).contiguous()
        n = self.w.numel()

        def make(T):  # (x) -> out
            out = torch.empty(T, n)
            return abi.HQ_RMSNORM.bind(rows=T, n=n, ldx=n, w=self.w, eps=eps, out=out), out
        self.per_t = _PerT(make)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hq_rmsnorm, out = self.per_t(x.shape[0])
        hq_rmsnorm(x)
        return out


class _Ffn:
    def __init__(self, norm: torch.Tensor, k: CpuFFN, eps: float):
        self.norm = _Norm(norm, eps)
        g, u, d = k.gate, k.up, k.down
        H, I = g.in_features, g.out_features

        def make(T):  # (x) -> y
            hidden, y = torch.empty(T, I), torch.empty(T, H)
            return abi.HQ_FFN.bind(fmt=cpp.FMT_CODE[g.fmt], gw=g.data, gm=g.meta, uw=u.data, um=u.meta,
                                   dw=d.data, dm=d.meta, H=H, I=I, B=T, h=hidden, y=y), y
        self.per_t = _PerT(make)

    def __call__(self, x: torch.Tensor) -> None:
        hq_ffn, y = self.per_t(x.shape[0])
        hq_ffn(self.norm(x))
        x += y


def _rows(out: torch.Tensor, splits: list[int]) -> list:
    """Per row t of out [T, sum(splits)]: its pieces [1, n] (contiguous: they lie in one row)."""
    if out.shape[0] == 1:
        return [out.split(splits, dim=1)]
    return [out[t:t + 1].split(splits, dim=1) for t in range(out.shape[0])]


class _DeltaNet:
    def __init__(self, cfg, norm: torch.Tensor, op: GatedDeltaNet, lins: dict):
        self.norm = _Norm(norm, cfg.rms_norm_eps)
        self.qkv, self.z, self.b, self.a, self.out = (lins[k] for k in ("qkv", "z", "b", "a", "out"))
        self.fused = lins.get("in")  # qkv | z | b | a rows in one matrix: one call instead of four
        Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        Dk, Dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.Hv, self.Dv = Hv, Dv
        self.conv_dim, self.K = cfg.linear_conv_dim, cfg.linear_conv_kernel_dim
        self.conv_w = op.conv_weight.float().contiguous()
        self.A_log, self.dt_bias = op.A_log.float().contiguous(), op.dt_bias.float().contiguous()
        self.gnorm_w = op.norm.float().contiguous()
        self.splits = [self.conv_dim, Hv * Dv, Hv, Hv]
        # per position: (S_len, mixed, a, b, conv_state, state, out [1, Hv, Dv]); the rest checked once
        self.hq_deltanet_step = abi.HQ_DELTANET_STEP.bind(
            B=1, conv_dim=self.conv_dim, K=self.K, conv_w=self.conv_w, A_log=self.A_log, dt_bias=self.dt_bias,
            Hk=Hk, Hv=Hv, Dk=Dk, Dv=Dv)

        def make(T):  # per position its delta output [1, Hv, Dv]; the gated norms' output and call (z)
            o, g = torch.empty(T, Hv, Dv), torch.empty(T, Hv * Dv)
            gnorm = abi.HQ_GATED_RMSNORM.bind(rows=T * Hv, n=Dv, x=o.view(T * Hv, Dv), w=self.gnorm_w,
                                              eps=cfg.rms_norm_eps, out=g.view(T * Hv, Dv))
            z = torch.empty(T, Hv * Dv) if T > 1 else None  # the rows' z pieces side by side
            return [o[t:t + 1] for t in range(T)], g, gnorm, z, (z.view(T * Hv, Dv) if T > 1 else None)
        self.per_t = _PerT(make)

    def __call__(self, x: torch.Tensor, cache) -> None:
        T = x.shape[0]
        o_rows, g, gnorm, z_all, z_all_rows = self.per_t(T)
        h = self.norm(x)
        if self.fused is not None:
            inp = self.fused(h)
            rows = _rows(inp, self.splits)  # B = 1 per position: each piece is contiguous
        else:
            qkv, z, b, a = self.qkv(h), self.z(h), self.b(h), self.a(h)
            rows = [(qkv, z, b, a)] if T == 1 else [(qkv[t:t + 1], z[t:t + 1], b[t:t + 1], a[t:t + 1]) for t in range(T)]
        conv, state = cache.conv, cache.state  # fp32: checked by the kernel declaration
        keep = cache.keep_slots  # a verify: each position's conv window and state kept as its slot
        for t, (qkv_t, z_t, b_t, a_t) in enumerate(rows):
            self.hq_deltanet_step(conv.shape[-1], qkv_t, a_t, b_t, conv, state, o_rows[t])
            if keep:
                cache.record_step(t, T)
            if z_all is not None:
                z_all[t].copy_(z_t[0])
        gnorm(rows[0][1].view(self.Hv, self.Dv) if z_all is None else z_all_rows)
        x += self.out(g)


class _RopeAt:
    """cos / sin [rotary_dim] fp32 of one position, computed once per forward for every layer."""

    def __init__(self, rope):
        self.rope, self.cs = rope, {}

    def __call__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        cs = self.cs.get(pos)
        if cs is None:
            if len(self.cs) >= 4 * MAX_TOKENS:  # positions only move forward: old ones are done with
                self.cs.clear()
            cos, sin = self.rope.cos_sin(torch.tensor([pos]), torch.float32)
            cs = self.cs[pos] = (cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous())
        return cs


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
        self.per_t = _PerT(lambda T: (lambda out: (out, list(out)))(torch.empty(T, self.nh, self.D)))

    def __call__(self, x: torch.Tensor, cache, pos: int) -> None:
        nh, nkv, D = self.nh, self.nkv, self.D
        T = x.shape[0]
        out, out_rows = self.per_t(T)  # [T, nh, D] and its rows
        h = self.norm(x)
        if self.fused is not None:
            rows = _rows(self.fused(h), self.splits)
        else:
            q, k, v = self.q(h), self.k(h), self.v(h)
            rows = [(q, k, v)] if T == 1 else [(q[t:t + 1], k[t:t + 1], v[t:t + 1]) for t in range(T)]
        for t, (q, k, v) in enumerate(rows):  # causal: position t sees the cache up to itself
            at = cache.claim(1)
            cos, sin = self.rope_at(pos + t)
            cpp.attn_decode(q.view(nh, self.qld), k.view(nkv, D), v.view(nkv, D), self.q_w1, self.k_w1,
                            self.eps, cos, sin, cache.k[0], cache.v[0], at, self.scale, self.gated, out_rows[t])
        x += self.o(out.view(T, nh * D))


class CpuDecodePath:
    """Per layer: a fast runner for T <= MAX_TOKENS tokens, or None where the generic path must run it."""

    max_tokens = MAX_TOKENS

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
        """x32 [T, H] fp32 residual -> fp32 logits [T, V] (a new tensor)."""
        norm, lin = self.head
        return lin(norm(x32))

    def logits_and_normed(self, x32: torch.Tensor, last_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x32 [T, H] -> (logits [T or 1, V], the hidden after the final norm [T, H] fp32, a copy)."""
        norm, lin = self.head
        normed = norm(x32)
        return lin(normed[-1:] if last_only else normed), normed.clone()


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
