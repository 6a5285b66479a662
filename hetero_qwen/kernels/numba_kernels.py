"""Numba kernels: the fallback when the C++ library is not built (same math, same results).

Parallel over output rows (GEMV) or over (sequence, value head) pairs (DeltaNet) with prange;
thread count = numba.set_num_threads (set by dispatch.set_threads). int4 uses the same integer
activation path as the C++ kernels (activations from quant.quantize_activations_int4), so every
backend gives the same numbers up to fp32 summation order.
Compiled lazily on first use and cached on disk (cache=True).

Threading layer: `workqueue` unless NUMBA_THREADING_LAYER says otherwise. Numba's OpenMP layer
spin-waits between parallel regions exactly like torch's OpenMP pool does, and alternating the
two (a decode step does) measured 100x slower on 2 busy cores (90 ms vs 1 ms per small step).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch

from ..formats import INT4_GROUP
from .quant import PackedWeight, quantize_activations_int4

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

G = INT4_GROUP
_JIT = dict(nopython=True, parallel=True, cache=True, fastmath={"contract", "reassoc"})


@numba.jit(**_JIT)
def _bf16_rows(w, x, y):  # w uint16 [out, in], x f32 [B, in], y f32 [B, out]
    out, n = w.shape
    B = x.shape[0]
    for r in numba.prange(out):
        wf = (w[r].astype(np.uint32) << np.uint32(16)).view(np.float32)
        for b in range(B):
            acc = np.float32(0.0)
            for j in range(n):
                acc += wf[j] * x[b, j]
            y[b, r] = acc


@numba.jit(**_JIT)
def _int8_rows(w, scale, x, y):
    out, n = w.shape
    B = x.shape[0]
    for r in numba.prange(out):
        for b in range(B):
            acc = np.float32(0.0)
            for j in range(n):
                acc += np.float32(w[r, j]) * x[b, j]
            y[b, r] = acc * scale[r]


@numba.jit(**_JIT)
def _int4_rows(p, meta, n, x, xq, xs, xsum, y):
    out = p.shape[0]
    B = x.shape[0]
    ng = meta.shape[1]
    full = n // G
    hg = G // 2
    for r in numba.prange(out):
        for b in range(B):
            acc = np.float32(0.0)
            off = np.float32(0.0)
            for q in range(full):
                d = 0
                base = q * hg
                xb = q * G
                for j in range(hg):
                    v = np.int32(p[r, base + j])
                    d += (v & 15) * np.int32(xq[b, xb + j]) + (v >> 4) * np.int32(xq[b, xb + j + hg])
                acc += np.float32(d) * (np.float32(meta[r, q, 0]) * xs[b, q])
                off += np.float32(meta[r, q, 1]) * xsum[b, q]
            s = acc + off
            if n > full * G:
                sc = np.float32(meta[r, full, 0])
                mo = np.float32(meta[r, full, 1])
                for j in range(n - full * G):
                    if j < hg:
                        qv = np.int32(p[r, full * hg + j]) & 15
                    else:
                        qv = np.int32(p[r, full * hg + j - hg]) >> 4
                    s += (np.float32(qv) * sc + mo) * x[b, full * G + j]
            y[b, r] = s


@numba.jit(**_JIT)
def _deltanet(mixed, a, bb, conv_w, conv_state, A_log, dt_bias, state, out, Hk):
    B, conv_dim = mixed.shape
    Hv, Dk, Dv = state.shape[1], state.shape[2], state.shape[3]
    K = conv_w.shape[1]
    L = conv_state.shape[2]
    qkv = np.empty((B, conv_dim), np.float32)
    for c in numba.prange(conv_dim):
        for b in range(B):
            acc = np.float32(0.0)
            for j in range(K - 1):
                acc += conv_w[c, j] * conv_state[b, c, L - (K - 1) + j]
            acc += conv_w[c, K - 1] * mixed[b, c]
            qkv[b, c] = acc / (np.float32(1.0) + np.exp(-acc))
            for j in range(L - 1):
                conv_state[b, c, j] = conv_state[b, c, j + 1]
            conv_state[b, c, L - 1] = mixed[b, c]
    rep = Hv // Hk
    key_dim = Hk * Dk
    inv_sqrt_dk = np.float32(1.0 / math.sqrt(Dk))
    for bh in numba.prange(B * Hv):
        b = bh // Hv
        h = bh % Hv
        kh = h // rep
        q = qkv[b, kh * Dk:(kh + 1) * Dk]
        k = qkv[b, key_dim + kh * Dk:key_dim + (kh + 1) * Dk]
        v = qkv[b, 2 * key_dim + h * Dv:2 * key_dim + (h + 1) * Dv]
        rq = np.float32(1.0) / np.sqrt(np.sum(q * q) + np.float32(1e-6))
        rk = np.float32(1.0) / np.sqrt(np.sum(k * k) + np.float32(1e-6))
        qn = q * rq * inv_sqrt_dk
        kn = k * rk
        kq = np.sum(kn * qn)
        beta = np.float32(1.0) / (np.float32(1.0) + np.exp(-bb[b, h]))
        z = a[b, h] + dt_bias[h]
        sp = z if z > 20.0 else np.log1p(np.exp(z))
        eg = np.exp(-np.exp(A_log[h]) * sp)
        S = state[b, h]
        av = np.zeros(Dv, np.float32)
        cv = np.zeros(Dv, np.float32)
        for i in range(Dk):
            for j in range(Dv):
                av[j] += S[i, j] * kn[i]
                cv[j] += S[i, j] * qn[i]
        for j in range(Dv):
            d = beta * (v[j] - eg * av[j])
            out[b, h, j] = eg * cv[j] + kq * d
            av[j] = d
        for i in range(Dk):
            for j in range(Dv):
                S[i, j] = eg * S[i, j] + kn[i] * av[j]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _meta32(w: PackedWeight) -> np.ndarray:
    """int4 metadata as fp32 (Numba has no fp16 arrays); converted once per weight and kept."""
    m = getattr(w, "_numba_meta32", None)
    if m is None:
        m = w.meta.float().contiguous().numpy()
        object.__setattr__(w, "_numba_meta32", m)
    return m


def linear(x: torch.Tensor, w: PackedWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, in] -> [B, out] fp32."""
    x = x.float().contiguous()
    B = x.shape[0]
    if out is None:
        out = torch.empty(B, w.out_features, dtype=torch.float32)
    y = out.numpy()
    if w.fmt == "bf16":
        _bf16_rows(w.data.view(torch.int16).numpy().view(np.uint16), x.numpy(), y)
    elif w.fmt == "int8":
        _int8_rows(_np(w.data), _np(w.meta), x.numpy(), y)
    elif w.fmt == "int4":
        xq, xs, xsum = quantize_activations_int4(x)
        _int4_rows(_np(w.data), _meta32(w), w.in_features,
                   x.numpy(), xq.numpy(), xs.numpy(), xsum.numpy(), y)
    else:
        raise ValueError(f"Numba kernels support bf16, int8, int4, not {w.fmt!r}")
    return out


def ffn(x: torch.Tensor, gate: PackedWeight, up: PackedWeight, down: PackedWeight,
        out: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
    x = x.float().contiguous()
    g = linear(x, gate)
    u = linear(x, up)
    h = torch.nn.functional.silu(g).mul_(u)
    if hidden is not None:
        hidden.copy_(h)
    return linear(h, down, out)


def deltanet_decode_step(mixed_qkv, a, b, conv_weight, conv_state, A_log, dt_bias, state,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    from .reference import deltanet_heads

    Hk, Hv, Dk, Dv = deltanet_heads(mixed_qkv.shape[1], state)
    for t, n in ((conv_state, "conv_state"), (state, "state")):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{n} must be contiguous fp32 (updated in place)")
    if out is None:
        out = torch.empty(mixed_qkv.shape[0], Hv, Dv, dtype=torch.float32)
    f = lambda t: t.detach().float().contiguous().numpy()  # noqa: E731
    _deltanet(f(mixed_qkv), f(a), f(b), f(conv_weight), conv_state.numpy(), f(A_log), f(dt_bias),
              state.numpy(), out.numpy(), Hk)
    return out


def set_threads(n: int) -> int:
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n
