"""The one-token CPU fast path (executor/cpu_decode.py) equals the generic forward, and its C++
norms equal the torch ones."""

import pytest
import torch

import hetero_qwen
from helpers import rel_err
from hetero_qwen.executor import cpu_decode
from hetero_qwen.kernels import cpp, dispatch
from hetero_qwen.model.layers import gated_rms_norm, rms_norm

pytestmark = pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")

PROMPT = [(13 * i + 7) % 300 + 1 for i in range(40)]
FOLLOW = [(29 * i + 3) % 300 + 1 for i in range(12)]


def load(path, fmt, dtype="fp32"):
    return hetero_qwen.load(path, dtype=dtype, quiet=True,
                            profile={"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256,
                                     "weights": {"gpu_dtype": "bf16", "cpu_dtype": fmt}})


def decode_logits(eng, fast: bool) -> torch.Tensor:
    """Teacher-forced decode logits [len(FOLLOW), vocab] with the fast path on or off."""
    keep = eng.runner.cpu_decode
    eng.runner.cpu_decode = keep if fast else None
    try:
        s = eng.session()
        s.feed(PROMPT)
        return torch.stack([s.feed([t])[-1].float() for t in FOLLOW])
    finally:
        eng.runner.cpu_decode = keep



@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_fast_path_equals_generic_fp32(hf_causal, fmt):
    _, path = hf_causal
    eng = load(path, fmt)
    fast = eng.runner.cpu_decode
    assert fast is not None and all(layer is not None for layer in fast.layers) and fast.head is not None
    # the loader stored each mixer's input projections back to back: one kernel call for them
    assert all(layer[1].fused is not None for layer in fast.layers)
    # fp32 model: the two paths differ only in summation order
    assert rel_err(decode_logits(eng, True), decode_logits(eng, False)) < 1e-4


def test_fast_path_bf16_close_to_generic(hf_causal):
    _, path = hf_causal
    eng = load(path, "bf16", dtype="bf16")
    assert eng.runner.cpu_decode is not None
    assert all(layer[1].fused is not None for layer in eng.runner.cpu_decode.layers)
    a, b = decode_logits(eng, True), decode_logits(eng, False)
    # the generic path rounds the residual to bf16 after every op; the fast one keeps it fp32
    assert rel_err(a, b) < 0.03
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9


def _ref_attn(q, k, v, qw1, kw1, eps, cos, sin, K, V, pos, scale, gated):
    """Torch twin of hq_attn_decode: returns (out [nh, D], K, V after the write)."""
    from hetero_qwen.model.rope import apply_rope
    nh, (nkv, _, D) = q.shape[0], K.shape

    def norm_rope(x, w1):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w1
        return apply_rope(x[None, :, None], cos[None], sin[None])[0, :, 0]

    K, V = K.clone(), V.clone()
    K[:, pos], V[:, pos] = norm_rope(k, kw1).to(K.dtype), v.to(V.dtype)
    qn = norm_rope(q[:, :D], qw1)
    out = torch.empty(nh, D)
    for h in range(nh):
        j = h // (nh // nkv)
        p = torch.softmax(K[j, :pos + 1].float() @ qn[h] * scale, dim=0)
        out[h] = p @ V[j, :pos + 1].float()
        if gated:
            out[h] *= torch.sigmoid(q[h, D:2 * D])
    return out, K, V


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gated,nh,nkv,D,rd,pos", [(True, 4, 2, 32, 16, 0), (True, 6, 2, 24, 24, 37),
                                                   (False, 3, 3, 16, 8, 5), (True, 8, 2, 64, 32, 3000)])
def test_cpp_attention_decode_equals_torch(cache_dtype, gated, nh, nkv, D, rd, pos):
    """q/k norm, RoPE, the cache write and GQA softmax attention in one call; pos 3000 spreads
    the heads over the thread pool."""
    g = torch.Generator().manual_seed(nh * D + pos)
    q = torch.randn(nh, D * (2 if gated else 1), generator=g)
    k, v = torch.randn(nkv, D, generator=g), torch.randn(nkv, D, generator=g)
    qw1, kw1 = 1 + 0.1 * torch.randn(D, generator=g), 1 + 0.1 * torch.randn(D, generator=g)
    ang = torch.rand(rd // 2, generator=g) * 6
    cos, sin = torch.cat([ang, ang]).cos(), torch.cat([ang, ang]).sin()
    K = torch.randn(nkv, pos + 3, D, generator=g).to(cache_dtype)
    V = torch.randn(nkv, pos + 3, D, generator=g).to(cache_dtype)
    ref, K_ref, V_ref = _ref_attn(q, k, v, qw1, kw1, 1e-6, cos, sin, K, V, pos, D ** -0.5, gated)
    K0, V0 = K, V
    for isa in [i for i in cpp.ISA_CODE if cpp.isa_supported(i)]:  # each ISA's score / value loops
        K, V = K0.clone(), V0.clone()
        cpp.force_isa(isa)
        try:
            out = cpp.attn_decode(q, k, v, qw1, kw1, 1e-6, cos, sin, K, V, pos, D ** -0.5, gated)
        finally:
            cpp.force_isa(None)
        # bf16 cache: the new key's rounding may differ by an ulp (fp32 summation order)
        tol = 1e-5 if cache_dtype == torch.float32 else 1e-2
        assert torch.allclose(K.float(), K_ref.float(), atol=tol, rtol=tol) and torch.equal(V, V_ref), isa
        assert torch.allclose(out, ref, atol=10 * tol, rtol=10 * tol), isa
        before = K_ref.clone()
        before[:, pos] = K[:, pos]
        assert torch.equal(K, before), isa  # only position `pos` was written


def test_cpp_attention_decode_rejects_bad_shapes():
    q, k = torch.randn(3, 16), torch.randn(2, 16)
    K = torch.zeros(2, 4, 16)
    with pytest.raises(ValueError):  # 3 query heads cannot share 2 KV heads
        cpp.attn_decode(q, k, k, torch.ones(16), torch.ones(16), 1e-6, torch.ones(8), torch.zeros(8),
                        K, K.clone(), 0, 0.25, False)
    with pytest.raises(ValueError):  # position past the cache
        cpp.attn_decode(torch.randn(2, 16), k, k, torch.ones(16), torch.ones(16), 1e-6, torch.ones(8),
                        torch.zeros(8), K, K.clone(), 4, 0.25, False)


def test_long_context_fast_path(hf_causal):
    """200 cached tokens (near the tiny model's 256): fast path equals the generic one."""
    _, path = hf_causal
    eng = load(path, "int8")
    prompt = [(7 * i + 3) % 300 + 1 for i in range(200)]
    outs = []
    for fast in (True, False):
        keep = eng.runner.cpu_decode
        eng.runner.cpu_decode = keep if fast else None
        s = eng.session()
        s.feed(prompt)
        outs.append(torch.stack([s.feed([t])[-1].float() for t in FOLLOW[:4]]))
        eng.runner.cpu_decode = keep
    assert rel_err(outs[0], outs[1]) < 1e-4


def test_one_token_decode_takes_the_fast_path_and_counts_cpu_time(hf_causal, monkeypatch):
    _, path = hf_causal
    eng = load(path, "int8")
    calls = []
    real = cpu_decode.CpuDecodePath.logits
    monkeypatch.setattr(cpu_decode.CpuDecodePath, "logits", lambda self, x: calls.append(1) or real(self, x))
    ffn_calls = []
    real_ffn = cpu_decode._Ffn.__call__
    monkeypatch.setattr(cpu_decode._Ffn, "__call__", lambda self, x: ffn_calls.append(1) or real_ffn(self, x))
    s = eng.session()
    s.feed(PROMPT[:cpu_decode.MAX_TOKENS + 1])
    assert calls == [] and ffn_calls == []  # a prefill past MAX_TOKENS: the generic path
    busy = eng.devices.cpu.busy_seconds
    s.feed([3])
    # every layer's FFN and the head ran on the fast path, and their time is charged to the CPU
    assert calls == [1] and len(ffn_calls) == len(eng.runner.layers) and eng.devices.cpu.busy_seconds > busy


def test_forced_backend_or_hook_takes_generic_path(hf_causal, monkeypatch):
    _, path = hf_causal
    eng = load(path, "int8")
    monkeypatch.setattr(cpu_decode.CpuDecodePath, "logits", lambda self, x: pytest.fail("fast path ran"))
    dispatch.force_backend("numba")
    try:
        s = eng.session()
        s.feed(PROMPT[:5])
        s.feed([3])
    finally:
        dispatch.force_backend(None)
    seen = []
    eng.runner.op_hook = lambda name, dev, x, out: seen.append(x.shape[1])
    s = eng.session()
    s.feed(PROMPT[:5])
    seen.clear()
    s.feed([3])
    # an accounting hook on CPU ops sees every op of the decode token: the generic path ran it
    assert seen == [1] * (2 * len(eng.runner.layers) + 1)


def test_no_fast_path_for_torch_weights(hf_causal):
    """fp32 float weights run through torch's F.linear: nothing for the fast path to call."""
    _, path = hf_causal
    assert load(path, "bf16", dtype="fp32").runner.cpu_decode is None


@pytest.mark.parametrize("rows,n", [(1, 64), (3, 37), (5, 128)])
def test_cpp_rmsnorm_equals_torch(rows, n):
    g = torch.Generator().manual_seed(rows * n)
    x, w = torch.randn(rows, n, generator=g) * 3, torch.randn(n, generator=g) * 0.1
    ref = rms_norm(x, w, 1e-6)
    assert torch.allclose(cpp.rmsnorm(x, 1 + w, 1e-6), ref, rtol=1e-5, atol=1e-5)
    # strided rows (q heads interleaved with their gates)
    wide = torch.randn(rows, 2 * n, generator=g)
    assert torch.allclose(cpp.rmsnorm(wide[:, :n], 1 + w, 1e-6), rms_norm(wide[:, :n].contiguous(), w, 1e-6),
                          rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,n", [(1, 24), (6, 24), (4, 129)])
def test_cpp_gated_rmsnorm_equals_torch(rows, n):
    g = torch.Generator().manual_seed(rows + n)
    x, z, w = torch.randn(rows, n, generator=g), torch.randn(rows, n, generator=g), torch.randn(n, generator=g)
    assert torch.allclose(cpp.gated_rmsnorm(x, z, w, 1e-6), gated_rms_norm(x, z, w, 1e-6), rtol=1e-5, atol=1e-5)


def test_cpp_rmsnorm_rejects_bad_input():
    with pytest.raises(ValueError):
        cpp.rmsnorm(torch.randn(2, 8, dtype=torch.float64), torch.ones(8), 1e-6)
    with pytest.raises(ValueError):
        cpp.gated_rmsnorm(torch.randn(2, 8), torch.randn(2, 7), torch.ones(8), 1e-6)


def test_unfused_projections_still_take_the_fast_path(hf_causal, monkeypatch):
    """Projections not stored back to back (e.g. some of them pinned or on disk) run one by one."""
    from hetero_qwen.executor import weights
    _, path = hf_causal
    monkeypatch.setattr(weights, "PACKED_MODULES", {})
    eng = load(path, "int4")
    fast = eng.runner.cpu_decode
    assert all(layer[1].fused is None for layer in fast.layers)
    assert rel_err(decode_logits(eng, True), decode_logits(eng, False)) < 1e-4


def test_fuse_rows_views_share_one_block():
    from hetero_qwen.executor.weights import fuse_rows
    from hetero_qwen.kernels.quant import PackedWeight
    ws = [PackedWeight.from_float(torch.randn(r, 130), "int4") for r in (5, 3, 7)]
    views, block = fuse_rows(ws, lambda shape, dt: torch.empty(shape, dtype=dt), PackedWeight)
    for w, v in zip(ws, views):
        assert torch.equal(w.data, v.data) and torch.equal(w.meta, v.meta) and v.out_features == w.out_features
    assert views[1].data.data_ptr() == views[0].data.data_ptr() + views[0].data.numel()
    # the block is the three matrices as one: what the one-token path reads in one call
    assert block.out_features == 15 and block.data.data_ptr() == views[0].data.data_ptr()
    assert torch.equal(block.dequantize(), torch.cat([w.dequantize() for w in ws]))
