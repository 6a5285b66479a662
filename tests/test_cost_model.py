"""The cost-model equations on hand-computed cases (numbers chosen to be easy to check by hand)."""

import pytest

from hetero_qwen.config import load_config
from hetero_qwen.planner import cost
from hetero_qwen.planner.build import cyclic_changes
from hetero_qwen.planner.items import Item, build_items
from hetero_qwen.profile import Profile

P = Profile(vram=8 * 2**30, cpu_efficiency=1.0, gpu_efficiency=1.0, cpu_op_overhead=0.0, bw_gpu=1000e9, bw_cpu=50e9, bw_pcie=25e9, bw_disk=2e9,
            gpu_flops=100e12, cpu_flops=1e12, hop_latency=10e-6)
# a 0.5 B-parameter block stored in 1 GB (bf16)
FFN = Item("b.mlp", "ffn", 0, params=500_000_000, bytes_gpu=10**9, bytes_cpu=10**9, bytes_disk=10**9, row_bytes={})
ATTN = Item("b.attn", "attention", 3, params=1000, bytes_gpu=2000, bytes_cpu=2000, bytes_disk=2000,
            row_bytes={}, kv_per_token=100, attn_pair_flops=8)
DELTA = Item("b.lin", "deltanet", 0, params=1000, bytes_gpu=2000, bytes_cpu=2000, bytes_disk=2000,
             row_bytes={}, state_bytes=10**6, recurrent_flops=6)


def test_decode_is_bytes_over_bandwidth_of_home():
    assert cost.decode_time(FFN, "gpu", 0, P) == pytest.approx(1e9 / 1000e9)  # 1 ms
    assert cost.decode_time(FFN, "cpu", 0, P) == pytest.approx(1e9 / 50e9)  # 20 ms
    assert cost.decode_time(FFN, "disk", 0, P) == pytest.approx(1e9 / 2e9)  # 0.5 s


def test_gpu_weights_read_at_their_format_share():
    """Each GPU format at its share of bandwidth.gpu (profile `gpu.efficiency` per format, else the
    published defaults); caches at the bf16 share."""
    from dataclasses import replace
    per_fmt = P.replace(gpu_efficiency=(("bf16", 0.8), ("int4", 0.5)))
    int4 = replace(FFN, fmt_gpu="int4")
    assert cost.decode_time(int4, "gpu", 0, per_fmt) == pytest.approx(1e9 / 500e9)
    assert cost.decode_time(FFN, "gpu", 0, per_fmt) == pytest.approx(1e9 / 800e9)
    assert cost.decode_time(replace(DELTA, fmt_gpu="int4"), "gpu", 0, per_fmt) == pytest.approx(
        2000 / 500e9 + 2 * 10**6 / 800e9)
    default = P.replace(gpu_efficiency=None)
    assert cost.decode_time(int4, "gpu", 0, default) == pytest.approx(1e9 / (1000e9 * cost.GPU_KERNEL_EFFICIENCY["int4"]))


def test_decode_kv_grows_with_position_and_state_is_read_and_written():
    # 2000 weight bytes + 1000 tokens * 100 B of K/V, all at 50 GB/s
    assert cost.decode_time(ATTN, "cpu", 1000, P) == pytest.approx((2000 + 100_000) / 50e9)
    assert cost.decode_time(DELTA, "gpu", 0, P) == pytest.approx((2000 + 2 * 10**6) / 1000e9)


def test_prefill_roofline_on_each_device():
    n = 100  # 2 * 0.5e9 * 100 = 1e11 FLOPs
    assert cost.prefill_time(FFN, "cpu", "cpu", n, 0, P) == pytest.approx(max(1e9 / 50e9, 1e11 / 1e12))  # 0.1 s compute
    assert cost.prefill_time(FFN, "gpu", "gpu", n, 0, P) == pytest.approx(max(1e9 / 1000e9, 1e11 / 100e12))  # 1 ms
    assert cost.prefill_time(FFN, "cpu", "gpu", n, 0, P) == pytest.approx(1e9 / 25e9)  # streamed: 40 ms
    assert cost.prefill_time(FFN, "disk", "gpu", n, 0, P) == pytest.approx(1e9 / 2e9)  # disk-bound stream


def test_crossover_matches_closed_form():
    # cpu(n) = max(20 ms, 1 ms * n); stream(n) = max(40 ms, 10 us * n): streaming wins once n > 40
    # = b * F_cpu / (2 P B_pcie) = 1e9 * 1e12 / (1e9 * 25e9)
    assert cost.crossover_tokens(FFN, "cpu", P) == 41
    assert cost.crossover_tokens(FFN, "gpu", P) is None
    assert cost.crossover_tokens(FFN, "cpu", P.replace(vram=0)) is None
    slow_gpu = P.replace(gpu_flops=0.5e12)  # GPU slower than CPU at compute: never worth streaming
    assert cost.crossover_tokens(FFN, "cpu", slow_gpu) is None


def test_attention_flops_are_quadratic():
    # 4 new tokens after 2 cached: causal pairs = 4*2 + (1+2+3+4) = 18
    assert cost.prefill_flops(ATTN, 4, 2) == 2 * 1000 * 4 + 8 * 18
    assert cost.prefill_flops(DELTA, 4, 0) == 2 * 1000 * 4 + 6 * 4


def test_hops_are_cyclic_device_changes():
    assert cyclic_changes(["cpu", "gpu", "gpu", "cpu"]) == 2
    assert cyclic_changes(["cpu", "gpu", "gpu", "gpu"]) == 2  # head on gpu -> next embed on cpu
    assert cyclic_changes(["gpu", "gpu"]) == 0
    assert cost.prefill_hop_time(1000, 5120, P) == pytest.approx(10e-6 + 1000 * 5120 * 2 / 25e9)


def test_chunks_and_mean_position():
    assert cost.prompt_chunks(5000, 2048) == [(2048, 0), (2048, 2048), (904, 4096)]
    assert cost.mean_decode_position(P.replace(prompt_tokens=100, output_tokens=3)) == 102


def test_27b_item_sizes_match_the_design_table():
    items = build_items(load_config("qwen3.6-27b"), "bf16", "int8")
    by_kind = {}
    for it in items:
        by_kind.setdefault(it.kind, []).append(it)
    assert len(by_kind["ffn"]) == 64 and len(by_kind["deltanet"]) == 48 and len(by_kind["attention"]) == 16
    ffn = by_kind["ffn"][0]
    assert ffn.bytes_gpu == 3 * 17408 * 5120 * 2 + 5120 * 4  # 0.535 GB
    assert ffn.bytes_cpu == 3 * 17408 * 5120 + (2 * 17408 + 5120) * 4 + 5120 * 4  # int8 + row scales
    assert by_kind["attention"][0].kv_per_token * 16 == 64 * 1024  # 64 KiB per token in all
    assert sum(it.state_bytes for it in by_kind["deltanet"]) == load_config("qwen3.6-27b").deltanet_state_bytes()
    embed = by_kind["embed"][0]
    assert cost.decode_weight_bytes(embed, "gpu") == 5120 * 2  # one row per token


def test_cpu_kernel_efficiency_scales_cpu_and_disk_reads():
    """CPU kernels reach a fraction of the RAM read bandwidth: the model charges that, per format."""
    half = P.replace(cpu_efficiency=0.5)
    assert cost.decode_time(FFN, "cpu", 0, half) == pytest.approx(1e9 / 25e9)
    assert cost.decode_time(FFN, "gpu", 0, half) == cost.decode_time(FFN, "gpu", 0, P)
    assert cost.tier_bandwidth(P.replace(cpu_efficiency=0.01), "disk") == pytest.approx(0.5e9)  # CPU-bound
    default = P.replace(cpu_efficiency=None, cpu_dtype="int4")
    assert cost.tier_bandwidth(default, "cpu") == pytest.approx(50e9 * cost.CPU_KERNEL_EFFICIENCY["int4"])


def test_cpu_ops_pay_a_fixed_overhead_in_decode():
    slow = P.replace(cpu_op_overhead=1e-3)
    assert cost.decode_time(FFN, "cpu", 0, slow) == pytest.approx(1e9 / 50e9 + 1e-3)
    assert cost.decode_time(FFN, "gpu", 0, slow) == cost.decode_time(FFN, "gpu", 0, P)
