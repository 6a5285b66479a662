"""HostArena: huge-page-advised host memory for CPU-resident weights; Checkpoint.release."""

import gc

import pytest
import torch

import hetero_qwen
from hetero_qwen.config import load_config
from hetero_qwen.checkpoint import Checkpoint
from hetero_qwen.executor.host_arena import ALIGN, HUGE_PAGE, HostArena
from hetero_qwen.kernels.quant import PackedWeight


def test_tensors_are_aligned_disjoint_and_outlive_the_arena():
    a = HostArena(chunk_bytes=1 << 20)
    ts = [a.empty((n, 3), dt) for n, dt in [(5, torch.float32), (7, torch.bfloat16), (1, torch.int8),
                                             (100, torch.float16)]]
    for i, t in enumerate(ts):
        assert t.data_ptr() % ALIGN == 0 and t.is_contiguous()
        t.fill_(i + 1)
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in ts)
    assert all(e <= b for (_, e), (b, _) in zip(spans, spans[1:]))
    big = a.empty((600, 1024), torch.uint8)  # over half a chunk: its own mapping
    big.fill_(9)
    assert len(a._chunks) == 1
    del a
    gc.collect()
    assert [float(t.float().mean()) for t in ts] == [1.0, 2.0, 3.0, 4.0] and int(big.sum()) == 9 * 600 * 1024


def test_chunks_fill_first_fit():
    a = HostArena(chunk_bytes=HUGE_PAGE)
    x = a.empty((800_000,), torch.uint8)
    y = a.empty((800_000,), torch.uint8)
    z = a.empty((600_000,), torch.uint8)  # does not fit the first chunk's tail
    w = a.empty((1000,), torch.uint8)     # fits it
    assert len(a._chunks) == 2
    assert y.data_ptr() == x.data_ptr() + 800_000 and w.data_ptr() == y.data_ptr() + 800_000
    assert x.data_ptr() % HUGE_PAGE == 0 and z.data_ptr() % HUGE_PAGE == 0
    assert all(a.holds(t) for t in (x, y, z, w))
    assert z.data_ptr() != w.data_ptr()


def test_copy_and_copy_packed():
    a = HostArena()
    t = torch.randn(33, 17)
    c = a.copy(t)
    assert torch.equal(c, t) and c.data_ptr() != t.data_ptr()
    pw = PackedWeight.from_float(torch.randn(9, 130), "int4")
    data, meta = pw.data.clone(), pw.meta.clone()
    a.copy_packed(pw)
    assert torch.equal(pw.data, data) and torch.equal(pw.meta, meta)
    assert a.empty((0, 4), torch.float32).shape == (0, 4)


def test_release_keeps_values(hf_causal):
    _, path = hf_causal
    ck = Checkpoint(path, load_config(path))
    name = next(n for n in ck.names() if n.endswith("mlp.down_proj.weight"))
    view = ck.get(name)
    before = view.clone()
    ck.release(name)
    ck.release("not-a-tensor")  # unknown names are ignored
    assert torch.equal(view, before)  # pages fault back in from the file, unchanged


@pytest.mark.parametrize("fmt", ["bf16", "int4"])
def test_loaded_cpu_weights_live_in_the_arena(hf_causal, fmt):
    """Engine weights on the CPU are arena copies (huge pages), not views of the mapped file."""
    _, path = hf_causal
    eng = hetero_qwen.load(path, quiet=True, dtype="bf16", profile={"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"},
                                                                    "weights": {"gpu_dtype": "bf16", "cpu_dtype": fmt}})
    arena = eng.runner.host_arena
    ffn = eng.runner.layers[0].ffn.ops["cpu"].fused.kernel
    mixer = eng.runner.layers[0].mixer.ops["cpu"]
    for w in (ffn.gate, ffn.up, ffn.down, mixer.in_proj_qkv.kernel.weight):
        assert arena.holds(w.data) and (w.meta is None or arena.holds(w.meta))
    assert not arena.holds(torch.empty(10))
    assert eng.logits([1, 2, 3]).shape[0] == 3
