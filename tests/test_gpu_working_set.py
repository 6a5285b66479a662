"""The simulated GPU charges the temporaries a real card would hold inside an op: attention scores
(or the fused kernel's logsumexp) and streamed int8/int4 dequantization tiles. A budget too small
for them fails naming the op, as an out-of-memory error would on CUDA; the plan prices them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import CausalBias
from torch.utils._python_dispatch import TorchDispatchMode

import hetero_qwen
from hetero_qwen.executor.devices import BudgetExceeded
from hetero_qwen.kernels import quant
from hetero_qwen.model import causal_attention as ca
from executor_cases import IDS, profile
from helpers import rel_err
from hf_models import hf_logits


def shrink_gpu(eng, free: int) -> None:
    """Leave `free` bytes of the (simulated) GPU budget for the ops' working set."""
    mem = eng.devices.gpu.memory
    mem.budget = mem.used + free


@pytest.fixture
def sdpa_calls(monkeypatch):
    """The outermost F.scaled_dot_product_attention calls: (q shape, k shape, mask kind, enable_gqa)."""
    calls, depth, real = [], [0], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *a, enable_gqa=False, **kw):
        if depth[0] == 0:
            kind = None if attn_mask is None else type(attn_mask).__name__
            calls.append((tuple(q.shape), tuple(k.shape), kind, enable_gqa))
        depth[0] += 1
        try:  # a CausalBias dispatches itself only when called through the real F function
            call = CausalBias._dispatch if isinstance(attn_mask, CausalBias) else real
            return call(q, k, v, attn_mask, *a, enable_gqa=enable_gqa, **kw)
        finally:
            depth[0] -= 1
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_later_prefill_chunks_never_pass_a_dense_mask_with_grouped_heads(dtype, hf_causal, sdpa_calls):
    """An explicit mask with enable_gqa sends CUDA to the math path with fp32 [heads, T, past+T]
    scores: GPU attention on a chunk after the first uses the bottom-right causal form (half
    dtypes: flash) or query tiles of SCORE_TILE_ROWS rows without a K/V repeat (fp32)."""
    hf, path = hf_causal
    ref = hf_logits(hf, IDS[:150])
    eng = hetero_qwen.load(path, profile=profile("layers"), quiet=True, dtype=dtype)
    sdpa_calls.clear()
    got = eng.logits(IDS[:150])  # chunks of 64: two of them continue a cached sequence
    assert rel_err(got, ref) < (1e-4 if dtype == "fp32" else 5e-2)
    later = [c for c in sdpa_calls if c[1][2] > 64]
    assert later, sdpa_calls
    for q, k, mask, gqa in sdpa_calls:
        assert not (mask == "Tensor" and gqa), f"dense mask with grouped heads: q {q}, k {k}"
        if dtype == "fp32":
            assert q[1] == k[1] and q[2] <= 2 * ca.SCORE_TILE_ROWS  # one tile: 2 query heads per kv head
        else:
            assert mask in (None, "CausalBias")


def test_a_budget_without_room_for_attention_scores_fails_naming_the_op(hf_causal):
    _, path = hf_causal
    eng = hetero_qwen.load(path, profile=profile("layers"), quiet=True)
    s = eng.session()
    s.feed(IDS[:64])
    shrink_gpu(eng, 24 * 1024)  # room for every op's input + output (36 tokens x 64 x fp32 x 2 = 18 KiB), not for scores
    with pytest.raises(BudgetExceeded, match=r"self_attn \(attention scores\)"):
        s.feed(IDS[64:100])


def test_attention_temporaries_are_charged_within_the_planned_working_set(hf_causal):
    _, path = hf_causal
    eng = hetero_qwen.load(path, profile=profile("layers"), quiet=True)
    mem = eng.devices.gpu.memory
    seen = []
    real = mem.alloc
    mem.alloc = lambda n, owner: (seen.append((owner, n)), real(n, owner))[1]
    eng.logits(IDS[:150])
    scores = [n for owner, n in seen if "attention scores" in owner]
    assert scores and max(scores) <= eng.plan.tiers["gpu"].lines["attention_working_set"]
    assert mem.peak <= eng.plan.tiers["gpu"].used_bytes


class LargestFloatTensor(TorchDispatchMode):
    """Records the largest fp32 tensor any op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_streamed_dequantization_holds_one_tile_and_charges_it(fmt, hf_causal, monkeypatch):
    hf, path = hf_causal
    prof = {**profile("ffn-cpu", prefill={"chunk": 64, "stream": "on"}), "weights": {"gpu_dtype": "bf16", "cpu_dtype": fmt}}
    eng = hetero_qwen.load(path, profile=prof, quiet=True)
    slot = eng.runner.layers[0].ffn
    assert "gpu" in slot.streamed
    monkeypatch.setattr(quant, "DEQUANT_TILE_FP32", 16 * 64 * 4)  # 16 rows of the 64-wide gate/up matrices
    from hetero_qwen.executor import streaming
    seen, real = [], streaming.SlotLinear.__call__

    def traced(self, x):
        with LargestFloatTensor() as mode:
            y = real(self, x)
        seen.append((self.local, mode.largest, x.shape[-1]))
        return y
    monkeypatch.setattr(streaming.SlotLinear, "__call__", traced)
    got = eng.logits(IDS[:100])
    assert rel_err(got, hf_logits(hf, IDS[:100])) < (2e-2 if fmt == "int8" else 2e-1)
    x_elems = 64 * 96  # the largest activation a streamed projection sees or returns [chunk, intermediate]
    for local, largest, n_in in seen:
        assert largest <= max(quant.dequant_tile_rows(n_in) * n_in, x_elems), (local, largest)
    assert any(local == "gate_proj.weight" for local, _, _ in seen)
    # a GPU without room for one tile fails naming the op and the temporary
    s = eng.session()
    s.feed(IDS[:64])
    monkeypatch.setattr(quant, "DEQUANT_TILE_FP32", 1 << 20)  # whole matrices again
    shrink_gpu(eng, 40 * 1024)  # > an op's input + output, < a 96x64 matrix's temporaries
    with pytest.raises(BudgetExceeded, match=rf"mlp \(dequantize {fmt} \w+_proj.weight tile\)"):
        s.feed(IDS[64:100])
