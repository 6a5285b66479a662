"""The C++ attention decode step (hq_attn_decode: q/k norms, RoPE, the cache write, softmax
attention over the cached keys, the output gate) against torch on the same cache, by context length.

    PYTHONPATH=. python bench/attention.py [--threads 2] [--contexts 1024,8192,32768] [--reps 9]

Shapes: the Qwen3.6-27B gated attention layer (24 query heads, 4 KV heads, head dim 256, rotary 64),
bf16 cache. torch's path is what the generic forward does for one token: F.scaled_dot_product_attention
over the cache's first pos + 1 rows with the KV heads repeated. Both read the whole cache of the layer
once per token, so the figure that matters is GB/s of K and V read, and the ratio to torch in the same
run (the machine may be shared). Medians of --reps, the two paths alternating.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hetero_qwen.kernels import cpp, dispatch  # noqa: E402

NH, NKV, D, RD = 24, 4, 256, 64


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contexts", default="1024,8192,32768")
    ap.add_argument("--reps", type=int, default=9)
    a = ap.parse_args(argv)
    dispatch.set_threads(a.threads)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    print(f"attention decode, 27B shape ({NH} q heads, {NKV} kv heads, D {D}), bf16 cache, {a.threads} threads, "
          f"isa {cpp.isa()}")
    for ctx in (int(c) for c in a.contexts.split(",")):
        K = torch.randn(NKV, ctx + 1, D, generator=g).to(torch.bfloat16)
        V = torch.randn(NKV, ctx + 1, D, generator=g).to(torch.bfloat16)
        q = torch.randn(NH, 2 * D, generator=g)
        k, v = torch.randn(NKV, D, generator=g), torch.randn(NKV, D, generator=g)
        w1 = torch.ones(D)
        cos, sin = torch.ones(RD), torch.zeros(RD)
        out = torch.empty(NH, D)
        pos = ctx - 1

        def ours():
            cpp.attn_decode(q, k, v, w1, w1, 1e-6, cos, sin, K, V, pos, D ** -0.5, True, out)

        def torchs():
            kk = K[:, :pos + 1].repeat_interleave(NH // NKV, 0)
            vv = V[:, :pos + 1].repeat_interleave(NH // NKV, 0)
            o = F.scaled_dot_product_attention(q[:, None, :D].to(torch.bfloat16), kk, vv)
            return o[:, 0].float() * torch.sigmoid(q[:, D:])

        ts = {"ours": [], "torch": []}
        for f in (ours, torchs):
            f()
        for r in range(a.reps):
            for name, f in (("ours", ours), ("torch", torchs)) if r % 2 == 0 else (("torch", torchs), ("ours", ours)):
                t0 = time.perf_counter()
                f()
                ts[name].append(time.perf_counter() - t0)
        t, tt = statistics.median(ts["ours"]), statistics.median(ts["torch"])
        kv_bytes = 2 * NKV * ctx * D * 2
        print(f"context {ctx:>6}: ours {t * 1e3:8.3f} ms ({kv_bytes / t / 1e9:6.2f} GB/s of KV)   "
              f"torch {tt * 1e3:8.3f} ms   {tt / t:5.2f}x torch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
