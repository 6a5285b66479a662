"""The cost model: seconds for one item in decode and in prefill, hops, and the stream crossover.

Equations (see COST_MODEL.md, next to this file). Every op is roofline-bound:
    t = max(bytes_read / bandwidth, flops / flop_rate)
Decode runs each item on its home device (GPU home -> GPU, RAM or disk home -> CPU): streaming a
block over PCIe per token costs bytes/B_pcie >= bytes/B_cpu whenever B_cpu >= B_pcie.
Prefill may stream an off-GPU block to the GPU instead (overlapped copy, so max() of the terms).
"""

from __future__ import annotations

from .. import measured_defaults
from ..profile import Profile
from .items import Item
from .plan import device_of

MAX_CROSSOVER = 1 << 20  # tokens; beyond this we say streaming never wins


# Share of the measured read bandwidth our CPU kernels reach in decode, per CPU weight format (can
# exceed 1: the bandwidth is a plain torch sum, which our prefetching GEMVs out-read). Measured on
# the dev machine (measured_defaults.py says how); `cpu.efficiency` (written by `hetero-qwen probe`
# for this machine) overrides it, as one share or one per format.
CPU_KERNEL_EFFICIENCY = measured_defaults.CPU_KERNEL_EFFICIENCY.value
# The same for the GPU formats (published figures until bench/gpu_check.py measures ours); a
# profile's `gpu.efficiency` overrides it.
GPU_KERNEL_EFFICIENCY = measured_defaults.GPU_KERNEL_EFFICIENCY.value


def _share(profile_value, table: dict, fmt: str, default: float) -> float:
    e = profile_value
    if isinstance(e, tuple):  # per format: ((fmt, share), ...)
        e = dict(e).get(fmt)
    return e or table.get(fmt, default)


def cpu_efficiency(p: Profile, fmt: str | None = None) -> float:
    return _share(p.cpu_efficiency, CPU_KERNEL_EFFICIENCY, fmt or p.cpu_dtype, 0.5)


def gpu_efficiency(p: Profile, fmt: str | None = None) -> float:
    fmt = fmt or (p.gpu_dtype if p.gpu_dtype != "auto" else "bf16")
    return _share(p.gpu_efficiency, GPU_KERNEL_EFFICIENCY, fmt, 0.6)


def tier_bandwidth(p: Profile, tier: str, fmt: str | None = None) -> float:
    """Bytes/s an op reads weights stored as `fmt` (default: the tier's profile format) from `tier`
    at: each device at its kernels' share of its bandwidth for that format; the disk tier no faster
    than the CPU kernels either."""
    if tier == "gpu":
        return p.bw_gpu * gpu_efficiency(p, fmt)
    cpu = p.bw_cpu * cpu_efficiency(p, fmt)
    return cpu if tier == "cpu" else min(p.bw_disk, cpu)


def cache_bandwidth(p: Profile, device: str) -> float:
    """Bytes/s the KV cache and DeltaNet state are read at: on the GPU plain float tensors (the bf16
    share); on the CPU at the kernels' share for the profile's CPU format (as fitted)."""
    return p.bw_gpu * gpu_efficiency(p, "bf16") if device == "gpu" else tier_bandwidth(p, "cpu")


def flop_rate(p: Profile, device: str) -> float:
    return p.gpu_flops if device == "gpu" else p.cpu_flops


def stream_bandwidth(p: Profile, home: str) -> float:
    """Bytes/s a block reaches the GPU from its home: PCIe, or the slower of disk and PCIe."""
    return p.bw_pcie if home == "cpu" else min(p.bw_pcie, p.bw_disk)


# ---- decode: one token at `position` tokens of context -------------------------------------------
def decode_weight_bytes(item: Item, home: str) -> int:
    return item.row_bytes[home] if item.kind == "embed" else item.nbytes(home)


def decode_cache_bytes(item: Item, position: float) -> float:
    """Attention reads K and V of every cached token; DeltaNet reads and writes its state."""
    return item.kv_per_token * position + 2 * item.state_bytes


def decode_flops(item: Item, position: float) -> float:
    weights = 0 if item.kind == "embed" else 2 * item.params
    return weights + item.attn_pair_flops * position + item.recurrent_flops


def decode_time(item: Item, home: str, position: float, p: Profile) -> float:
    """Roofline time of the item on its home device, plus the fixed per-op cost on the CPU
    (`cpu.op_overhead`: the interpreter and kernel calls, ~43 us on the tiny model where bytes are
    negligible, plus the cold start of the op's matrices; 80 us fitted on the mid and 27B decode
    benches). The embedding lookup is not an op in that sense."""
    dev = device_of(home)
    mem = (decode_weight_bytes(item, home) / tier_bandwidth(p, home, item.fmt(home))
           + decode_cache_bytes(item, position) / cache_bandwidth(p, dev))
    overhead = p.cpu_op_overhead if dev == "cpu" and item.kind != "embed" else 0.0
    return max(mem, decode_flops(item, position) / flop_rate(p, dev)) + overhead


# ---- prefill: `n` new tokens after `prefix` cached ones ------------------------------------------
def prefill_weight_bytes(item: Item, home: str, n: int) -> int:
    if item.kind == "embed":
        return min(n * item.row_bytes[home], item.nbytes(home))
    return item.nbytes(home)


def prefill_cache_bytes(item: Item, n: int, prefix: int) -> float:
    return item.kv_per_token * (prefix + n) + 2 * item.state_bytes


def prefill_flops(item: Item, n: int, prefix: int) -> float:
    if item.kind == "embed":
        return 0.0
    if item.kind == "head":
        return 2.0 * item.params  # only the last position's logits are needed
    pairs = n * prefix + n * (n + 1) / 2  # causal (query, key) pairs
    return 2.0 * item.params * n + item.attn_pair_flops * pairs + item.recurrent_flops * n


def prefill_time(item: Item, home: str, device: str, n: int, prefix: int, p: Profile) -> float:
    """Seconds for `item` over an n-token chunk; device != device_of(home) means streamed to the GPU."""
    wb, cb, fl = prefill_weight_bytes(item, home, n), prefill_cache_bytes(item, n, prefix), prefill_flops(item, n, prefix)
    if device == device_of(home):
        mem = wb / tier_bandwidth(p, home, item.fmt(home)) + cb / cache_bandwidth(p, device)
    else:  # weights and cache cross PCIe, overlapped with the previous block's compute
        mem = wb / stream_bandwidth(p, home) + cb / p.bw_pcie
    return max(mem, fl / flop_rate(p, device))


def crossover_tokens(item: Item, home: str, p: Profile) -> int | None:
    """Smallest chunk n for which streaming this off-GPU item beats computing it on the CPU
    (assumes one crossing, true when F_gpu >= F_cpu); None if it never does."""
    if home == "gpu" or not item.streamable or not p.has_gpu:
        return None

    def wins(n: int) -> bool:
        return prefill_time(item, home, "gpu", n, 0, p) < prefill_time(item, home, "cpu", n, 0, p)

    if not wins(MAX_CROSSOVER):
        return None
    lo, hi = 0, MAX_CROSSOVER  # wins(hi) is true; find the smallest such n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if wins(mid) else (mid, hi)
    return hi


# ---- hops: the hidden state changes device -------------------------------------------------------
def decode_hop_time(p: Profile) -> float:
    return p.hop_latency  # one [hidden] vector: latency bound


def prefill_hop_time(n: int, hidden: int, p: Profile) -> float:
    return p.hop_latency + n * hidden * 2 / p.bw_pcie  # [n, hidden] bf16 activations


def prompt_chunks(prompt_tokens: int, chunk: int) -> list[tuple[int, int]]:
    """(n, prefix) for each forward of a prompt processed `chunk` tokens at a time."""
    out, done = [], 0
    while done < prompt_tokens:
        n = min(chunk, prompt_tokens - done)
        out.append((n, done))
        done += n
    return out


def mean_decode_position(p: Profile) -> float:
    """Average cached length over the workload's output tokens (token i sees prompt + i + 1)."""
    return p.prompt_tokens + (p.output_tokens + 1) / 2
