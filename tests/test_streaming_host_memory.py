"""Host memory and ordering of weights streamed to the GPU for prefill (simulated GPU).

Weights the plan streams stay in a huge-page arena (with their packed input projections) that is
page-locked once, at its exact size; sources that are not page-locked (memory-mapped disk-tier
blocks, a tied head sharing the embedding) are copied through the two page-locked bounce buffers;
each forward fetches exactly its streamed blocks; the rotary table is built once per forward."""

import pytest
import torch

import hetero_qwen
from executor_cases import BASE, CASES, IDS, profile
from helpers import rel_err
from hetero_qwen.model.rope import Rope
from hf_models import hf_logits, make_hf_model, save_hf_model

STREAM_ON = {"chunk": 64, "stream": "on"}


def streamed_groups(eng):
    return [g for g in eng.plan.groups if g.stream_prefill]


def cpu_tensors(slot):
    """The host tensors a slot's CPU variant computes from (weights, packed data and scales)."""
    op = slot.ops["cpu"]
    found = []
    for v in vars(op).values() if not hasattr(op, "kernel") else [op]:
        k = getattr(v, "kernel", None) or getattr(getattr(v, "fused", None), "kernel", None)
        ws = []
        if k is not None:
            ws = [k.weight] if hasattr(k, "weight") else [k.gate, k.up, k.down]
        for w in ws:
            found += [w.data] + ([w.meta] if w.meta is not None else [])
    return found


def slots(eng):
    return {s.name: s for layer in eng.runner.layers for s in (layer.mixer, layer.ffn)} | {
        eng.runner.head.name: eng.runner.head}


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_streamed_weights_stay_in_a_page_locked_arena_of_their_exact_size(hf_causal, monkeypatch, fmt):
    _, path = hf_causal
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda *a, **k: pytest.fail("per-matrix pinning"))
    prof = profile("layers", "64MB", prefill=STREAM_ON, weights={"gpu_dtype": "bf16", "cpu_dtype": fmt},
                   overrides=[{"match": r"layers\.[02]\.", "home": "cpu"}])  # layers 0 and 2 stream whole
    eng = hetero_qwen.load(path, profile=prof, dtype="bf16", quiet=True)
    streamed = streamed_groups(eng)
    assert streamed, "the profile must stream something"
    by_name = slots(eng)
    streamed_bytes = 0
    for g in streamed:
        ts = cpu_tensors(by_name[g.name])
        assert ts and all(eng.devices.is_locked(t) for t in ts), g.name
        streamed_bytes += sum(t.numel() * t.element_size() for t in ts)
        if g.kind in ("attention", "deltanet"):  # stored back to back: the fast path reads one block
            assert by_name[g.name].packed_in is not None, g.name
    for g in eng.plan.groups:  # nothing that is not streamed is locked
        if not g.stream_prefill and g.home != "gpu" and g.name in by_name:
            assert not any(eng.devices.is_locked(t) for t in cpu_tensors(by_name[g.name])), g.name
    # locked exactly what streams: its bytes, 64-byte aligned, rounded up to 4 KiB per mapping
    pf = eng.runner.prefetcher
    assert pf.bounce is None
    tensors = sum(len(cpu_tensors(by_name[g.name])) for g in streamed)
    assert streamed_bytes <= eng.devices.locked_bytes <= streamed_bytes + 64 * tensors + 4096 * len(eng.devices.locked)
    ref = hf_logits(hf_causal[0], IDS[:150])
    assert rel_err(eng.logits(IDS[:150]), ref) < 0.05


def test_pageable_sources_go_through_the_bounce_buffers(hf_causal):
    """Disk-tier blocks stream from the mapped file: copied through page-locked bounce buffers,
    the plan's `pinned_staging` (never an asynchronous copy straight from pageable memory)."""
    hf, path = hf_causal
    prof = profile("layers", "64MB", prefill=STREAM_ON, overrides=[{"match": r"layers\.[02]\.mlp", "home": "disk"}])
    eng = hetero_qwen.load(path, profile=prof, quiet=True)
    disk_streamed = [g for g in streamed_groups(eng) if g.home == "disk"]
    assert disk_streamed, "the profile must stream a disk-tier block"
    pf = eng.runner.prefetcher
    assert pf.bounce is not None and len(pf.bounce) == 2
    assert all(b.numel() == pf.slot_bytes and eng.devices.is_locked(b) for b in pf.bounce)
    assert eng.devices.cpu.memory.by_owner["pinned staging"] == 2 * pf.slot_bytes
    assert not any(pf.groups[g.name].locked[k] for g in disk_streamed for k in pf.groups[g.name].locked)
    assert rel_err(eng.logits(IDS), hf_logits(hf, IDS)) < 1e-4
    assert pf.bounced_bytes >= sum(pf.groups[g.name].nbytes for g in disk_streamed) - 256 * 8


def test_each_prefill_chunk_fetches_exactly_its_streamed_blocks_in_order(hf_causal, monkeypatch):
    """The prefetcher is told the blocks a forward computes on the GPU from staging, in execution
    order, and nothing else (the head is never streamed: prefill needs one row of it)."""
    hf, path = hf_causal
    prof = profile("layers", "64MB", prefill=STREAM_ON, overrides=[{"match": r"layers\.[02]\.", "home": "cpu"},
                                                                   {"match": "lm_head", "home": "cpu"}])
    eng = hetero_qwen.load(path, profile=prof, quiet=True)
    expected = [g.name for g in streamed_groups(eng)]
    assert len(expected) == 4 and eng.runner.head.name not in expected
    orders = []
    real = eng.runner.prefetcher.begin
    monkeypatch.setattr(eng.runner.prefetcher, "begin", lambda order: orders.append(list(order)) or real(order))
    s = eng.session()
    s.feed(IDS[:149])  # chunks of 64: two forwards without the head, then one with one logits row
    s.feed([IDS[149]])  # decode: nothing streams
    assert orders == [expected] * 3 + [[]]
    assert rel_err(eng.logits(IDS[:150]), hf_logits(hf, IDS[:150])) < 1e-4


def test_the_rotary_table_is_built_once_per_forward(tmp_path, monkeypatch):
    hf = make_hf_model("causal", seed=5, num_hidden_layers=6, layer_types=["linear_attention", "full_attention"] * 3)
    path = save_hf_model(hf, tmp_path)
    eng = hetero_qwen.load(path, profile={**BASE, "policy": "auto"}, quiet=True)
    calls = []
    real = Rope.cos_sin
    monkeypatch.setattr(Rope, "cos_sin", lambda self, pos, dtype: calls.append(pos.device) or real(self, pos, dtype))
    s = eng.session()
    s.feed(IDS[:20])
    s.feed([IDS[20]])
    # three attention layers, two forwards, one device: one table per forward
    assert len(calls) == 2
    assert rel_err(eng.logits(IDS[:21]), hf_logits(hf, IDS[:21])) < 1e-4


def test_every_case_keeps_locked_memory_within_the_streamed_weights(hf_causal):
    """No plan locks host memory it does not stream from (the pinned allocator's power-of-two
    rounding once took ~1.4x the streamed bytes)."""
    _, path = hf_causal
    streaming = 0
    for label in CASES:
        eng = hetero_qwen.load(path, profile=CASES[label], quiet=True)
        if eng.runner.prefetcher is None:
            assert eng.devices.locked_bytes == 0, label
            continue
        streaming += 1
        streamed = sum(g.bytes for g in streamed_groups(eng))
        bounce = 2 * eng.runner.prefetcher.slot_bytes if eng.runner.prefetcher.bounce is not None else 0
        slack = len(eng.devices.locked) * 4096 + 64 * 8 * len(streamed_groups(eng))
        assert eng.devices.locked_bytes <= streamed + bounce + slack, label
    assert streaming >= 1
