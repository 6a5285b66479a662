"""Measure this machine and write a starting profile: RAM and VRAM budgets, CPU read bandwidth and
GEMM rate, and on CUDA machines GPU bandwidth, pinned host-to-device bandwidth, hop latency and GEMM
rate. Every CUDA call is guarded: without a GPU the profile simply has no `gpu` section.
Takes a few seconds; numbers are best-of-N to dodge noise from other processes."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from .errors import ProfileError
from .profile import load_profile
from .units import fmt_flops, fmt_rate, fmt_size_yaml

RAM_FRACTION = 0.8  # of what is available now: leave the OS and page cache room
VRAM_FRACTION = 0.9  # of the free VRAM now
CPU_BUFFER = 256 * 2**20  # bytes summed to measure read bandwidth (well past any cache)


def _best(fn, repeats: int) -> float:
    fn()  # warm up: page faults, thread pool start, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _median(fn, repeats: int) -> float:
    fn()  # warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def read_bandwidth(threads: int, nbytes: int = CPU_BUFFER, repeats: int = 5, rounds: int = 3) -> float:
    """Bytes/s of a `threads`-thread fp32 sum over `nbytes`: the read bandwidth the profile, the
    planner and the benches compare against. The buffer lives in the same huge-page host memory as
    the engine's CPU weights (executor.host_arena). Median over `rounds` fresh buffers of the
    median of `repeats` sums: single buffers read anywhere from 30 to 60 GB/s on the 2-core dev
    VM (the fast ones rarely, apparently by how the host backs the pages)."""
    import torch

    from .executor.host_arena import HostArena

    torch.set_num_threads(threads)
    got = []
    for _ in range(rounds):
        x = HostArena().empty((nbytes // 4,), torch.float32).fill_(1.0)
        got.append(nbytes / _median(lambda: x.sum(), repeats))
        del x
    return sorted(got)[len(got) // 2]


def measure_cpu(threads: int) -> dict:
    import psutil
    import torch

    bw = read_bandwidth(threads)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2 * n**3 / _best(lambda: a @ b, 5)
    return {"ram_available": psutil.virtual_memory().available, "bw_cpu": bw, "cpu_flops": flops}


def measure_gpu() -> dict | None:
    """VRAM, device bandwidth, pinned H2D bandwidth, hop latency and bf16 GEMM rate; None without
    CUDA. A CUDA error while measuring (a broken driver, too little free memory) is reported in one
    line and leaves the profile without a gpu section; any other exception is a bug and propagates."""
    import torch
    if not torch.cuda.is_available():
        return None
    try:
        return _measure_cuda(torch)
    except RuntimeError as e:  # torch's CUDA errors, OutOfMemoryError included
        reason = (str(e).strip().splitlines() or [""])[0]
        print(f"warning: the GPU was not measured ({type(e).__name__}: {reason}); "
              f"the profile has no gpu section", file=sys.stderr)
        return None


def _measure_cuda(torch) -> dict:
    dev = torch.device("cuda", 0)
    free, _total = torch.cuda.mem_get_info(dev)

    def timed(fn, repeats=5) -> float:
        def run():
            fn()
            torch.cuda.synchronize(dev)
        return _best(run, repeats)

    n = 128 * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    bw_gpu = 2 * n / timed(lambda: dst.copy_(src))  # read + write
    host = torch.empty(n, dtype=torch.uint8).pin_memory()
    bw_pcie = n / timed(lambda: dst.copy_(host, non_blocking=True))
    small = torch.empty(5120 * 2, dtype=torch.uint8).pin_memory()
    small_dev = torch.empty_like(small, device=dev)
    hop = timed(lambda: (small_dev.copy_(small), small.copy_(small_dev)), 20) / 2
    m = 4096
    a = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
    flops = 2 * m**3 / timed(lambda: a @ a)
    del src, dst, host, small, small_dev, a
    torch.cuda.empty_cache()
    return {"vram_free": free, "bw_gpu": bw_gpu, "bw_pcie": bw_pcie, "hop": hop, "gpu_flops": flops}


def measure() -> dict:
    import psutil
    threads = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    out = {"threads": threads, **measure_cpu(threads)}
    from .kernel_probe import measure_kernels
    from .kernels.dispatch import set_threads
    set_threads(threads)
    out.update(measure_kernels(out["bw_cpu"]) or {})
    gpu = measure_gpu()
    if gpu:
        out.update(gpu)
    return out


def profile_yaml(m: dict) -> str:
    """A commented profile from measurements (see `measure`)."""
    ram = max(int(m["ram_available"] * RAM_FRACTION) // 2**20 * 2**20, 2**30)
    cpu_reserve = min(2**30, ram // 4)
    lines = ["# Written by `hetero-qwen probe`: measured on this machine; edit freely.",
             "# Budgets are safe fractions of what was free when probed."]
    if "vram_free" in m:
        vram = int(m["vram_free"] * VRAM_FRACTION) // 2**20 * 2**20
        lines += [f"gpu:   # {VRAM_FRACTION:.0%} of the free VRAM; reserve = CUDA context + allocator slack",
                  f"  vram: {fmt_size_yaml(vram)}",
                  "  reserve: 768MiB",
                  f"  flops: {fmt_flops(m['gpu_flops'])}   # bf16 4096^3 GEMM"]
    else:
        lines += ["# no CUDA device found: everything runs on the CPU (add gpu: {vram: ...} if you have one)"]
    lines += [f"cpu:   # ram = {RAM_FRACTION:.0%} of available RAM",
              f"  ram: {fmt_size_yaml(ram)}",
              f"  threads: {m['threads']}   # physical cores",
              f"  reserve: {fmt_size_yaml(cpu_reserve)}",
              f"  flops: {fmt_flops(m['cpu_flops'])}   # fp32 1024^3 GEMM",
              *_kernel_lines(m),
              "context: 32768",
              "policy: auto",
              "weights: {gpu_dtype: bf16, cpu_dtype: bf16}   # cpu_dtype int8 | int4 halves/quarters RAM reads",
              "bandwidth:",
              f"  cpu: {fmt_rate(m['bw_cpu'])}   # sum over a {CPU_BUFFER >> 20} MiB buffer"]
    if "bw_gpu" in m:
        lines += [f"  gpu: {fmt_rate(m['bw_gpu'])}   # device-to-device copy",
                  f"  pcie: {fmt_rate(m['bw_pcie'])}   # pinned host-to-device copy"]
    lines += ["  disk: 3GB/s   # not measured: NVMe default; only used when RAM overflows"]
    if "hop" in m:
        lines += [f"hop_latency: {max(m['hop'] * 1e6, 1):.0f}us   # one hidden-state copy each way"]
    return "\n".join(lines) + "\n"


def _kernel_lines(m: dict) -> list[str]:
    """cpu.efficiency / cpu.op_overhead lines from kernel_probe's measurements, when it ran."""
    if "cpu_efficiency" not in m:
        return ["  # C++ kernels not built: efficiency and op_overhead keep the defaults of measured_defaults.py"]
    shares = ", ".join(f"{f}: {min(max(s, 0.05), 1.5):.2f}" for f, s in m["cpu_efficiency"].items())
    return [f"  efficiency: {{{shares}}}   # cold batch-1 GEMV GB/s over bandwidth.cpu, per format",
            f"  op_overhead: {max(m['cpu_op_overhead'] * 1e6, 1):.0f}us   # per CPU decode op beyond its bytes"]


def write_profile(path: Path, text: str) -> None:
    """Validate, then write atomically: a temp file in the same directory renamed over `path`."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ProfileError(f"{path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        load_profile(tmp)  # never leave behind a profile we cannot read back
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
