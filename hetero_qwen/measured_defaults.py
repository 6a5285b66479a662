"""Defaults that were measured on one machine, gathered in one place, each with what it was measured
on and how. They are starting points, not facts about every CPU: `hetero-qwen probe` measures this
machine's kernel share of bandwidth and per-op cost (profile `cpu.efficiency`, `cpu.op_overhead`),
and a profile overrides both. Everything else here is used as is; the C++ kernels' scheduling knobs
are set from this module when the library loads (hq_tune), and the few that must stay compile-time
constants in csrc/ are listed as mirrors (tests/test_measured_defaults.py checks they agree).

Plain data: this module imports nothing, so any module may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The development machine of every measurement below (README "Measured results").
DEV_MACHINE = "2 cores of an AMD EPYC (Zen 4, AVX-512 + VNNI), 24 GiB RAM, no GPU, torch 2.13 CPU"


@dataclass(frozen=True)
class Measured:
    value: object
    on: str  # the machine it was measured on
    how: str  # the command or fit that gave it, and the commit that set it


# ---- the cost model (hetero_qwen/planner/cost.py); `hetero-qwen probe` measures both per machine
CPU_KERNEL_EFFICIENCY = Measured(
    {"int4": 1.1, "int8": 1.0, "bf16": 1.0, "fp32": 0.5}, DEV_MACHINE,
    "share of the read bandwidth (a plain torch sum, which the prefetching GEMVs out-read) the CPU "
    "kernels reach in decode, per weight format, 2 threads, huge-page arena, one-token fast path; fitted "
    "with CPU_OP_OVERHEAD to `python bench/compare_cpu.py` (mid model, 3 formats) and `python "
    "bench/run_27b_cpu.py --dtype int4 --threads 2`; commit 3349d2e, 2026-11-29")
CPU_OP_OVERHEAD = Measured(
    80e-6, DEV_MACHINE,
    "seconds per op (a mixer or FFN) computed on the CPU in decode: kernel calls (~43 us on the tiny "
    "model) plus the cold start of the op's matrices; fitted with CPU_KERNEL_EFFICIENCY (same benches); "
    "commits 7b354b5 / 3e41d89, 2026-11-29")

# Share of bandwidth.gpu the GPU weight formats reach in batch-1 decode. NOT measured on our code yet
# (no GPU has run it): derived from published whole-model decode figures, which include each runtime's
# overheads (ANCHORS.md): bf16 25.6 tok/s x 54 GB and GPTQ-int4 62.3 tok/s x 15 GB on vLLM (the
# AxisQuant card; ~1.8 TB/s card) give 0.77 and 0.52; llama.cpp Q4_K_M on a 4090 (1008 GB/s), 39.3
# tok/s x 16.5 GB, gives 0.64. int8/fp8 between the two. `bench/gpu_check.py` measures ours; a
# profile's `gpu.efficiency` overrides these.
GPU_KERNEL_EFFICIENCY = Measured(
    {"bf16": 0.8, "fp32": 0.8, "fp8": 0.7, "int8": 0.7, "int4": 0.6},
    "published figures (RTX 4090 / a ~1.8 TB/s card), see the comment above",
    "tokens/s x model bytes / card bandwidth from the ANCHORS.md table, set 2026-11-30 (issue 12), "
    "until `python bench/gpu_check.py` measures our kernels on a GPU")

# ---- speculative decoding (hetero_qwen/planner/mtp.py): the acceptance k is chosen for until measured
MTP_ACCEPTANCE = Measured(
    0.8, "Qwen3.6-27B in other runtimes (published, not measured here: random weights accept nothing)",
    "expected per-draft acceptance of the 27B's MTP layer: llama.cpp with MTP on an RTX 3090 at Q4 reports "
    "79-87% (club-3090 issues 85, 94), a 12 GB laptop with part of the model in RAM 0.85 (qwen38-mtp issue "
    "46); shared/ANCHORS.md. The low end, since it prices every draft alike; profile `mtp.acceptance` "
    "overrides it; set in the commit that added planner/mtp.py, 2026-11-30")

# What a speculative verify forward of n tokens costs on the CPU beyond one decode token, for the
# MTP pricing (planner/mtp.py). A forward of n <= 8 tokens takes the CPU fast path
# (executor/cpu_decode.py): each projection reads its weights once for the n rows, each mixer runs
# once per position. On a 2-core AVX2 EPYC (no AVX-512), both cores:
#  - each extra token adds this share of the weights' batch-1 read time (the small-batch kernels are
#    compute-bound there): `PYTHONPATH=. python bench/verify_cost.py --dtype int4|int8 --threads 2`,
#    27B shape cut to 4 layers, verify(n) / decode - 1 per extra token, k = 1..4: int4 0.30 / 0.24 /
#    0.30 / 0.39 (after the AVX2 int4 kernel rework; 0.39 / 0.39 / 0.36 / 0.40 before it); int8
#    0.36 / 0.38 / 0.36 / 0.34; bf16 from the kernel-only view
#    (`python bench/kernels.py --verify`, 27B FFN, batch 3 / batch 1 = 1.20) -> 0.1;
#  - each extra token adds this share of the per-op cost: a tiny model (hidden 128, all per-op cost)
#    through the same forward, `PYTHONPATH=. python bench/verify_cost.py --tiny --dtype int8|int4
#    --threads 2 --reps 25`: int8 0.49 / 0.36 / 0.38 / 0.35, int4 0.42 / 0.39 / 0.35 / 0.33.
CPU_VERIFY_EXTRA_TOKEN = Measured(
    {"int4": 0.3, "int8": 0.36, "bf16": 0.1, "fp32": 0.5},
    "2 cores of an AMD EPYC VM, AVX2 only (no AVX-512), torch 2.13 CPU, 2 kernel threads",
    "bench/verify_cost.py --threads 2 (int4, int8) and bench/kernels.py --verify (bf16), after the "
    "fast path took verify forwards, 2026-11-30")
CPU_VERIFY_OP_PER_TOKEN = Measured(
    0.4, "2 cores of an AMD EPYC VM, AVX2 only, torch 2.13 CPU",
    "per-op cost of each extra token of a CPU forward of n <= 8 tokens over cpu.op_overhead: "
    "bench/verify_cost.py --tiny, 2026-11-30")

# ---- kernel dispatch (hetero_qwen/kernels/dispatch.py)
SMALL_BATCH = Measured(
    8, DEV_MACHINE,
    "rows of a batch above which a CPU matmul goes to torch's compute-bound GEMM (oneDNN bf16) instead "
    "of our bandwidth-bound GEMV kernels; set with the dispatcher, commit 755ef57, 2026-11-29")

# ---- C++ kernel scheduling, set at load through hq_tune (key name as in kernels/cpp.TUNE_KEYS);
# the same numbers are the initial values in csrc/hq_api.cpp, used if the library runs alone
KERNEL_TUNING = {
    "prefetch_bytes": Measured(
        8192, DEV_MACHINE,
        "software prefetch distance ahead of each row block (bytes); `python bench/kernels.py` sweeps "
        "with cpp.tune, cold weights, 1-2 threads; commit 3cc395c, 2026-11-29"),
    "min_split_bytes": Measured(
        256 * 1024, DEV_MACHINE,
        "a matrix is split over threads only with at least this many bytes per thread (smaller ones "
        "lose more to the hand-off than they gain); bench/kernels.py; commit 3cc395c, 2026-11-29"),
    "spin_us": Measured(
        500, DEV_MACHINE,
        "microseconds an idle worker spins before it sleeps (a decode step issues calls back to back); "
        "bench/kernels.py; commit 3cc395c, 2026-11-29"),
    "prefetch_long_block": Measured(
        16384, DEV_MACHINE,
        "row blocks above this many bytes are prefetched as one stream per row; bench/kernels.py; "
        "commit a375550, 2026-11-29"),
    "prefetch_l2_row": Measured(
        2048, DEV_MACHINE,
        "rows above this many bytes are prefetched into L2 only (prefetcht2); bench/kernels.py; "
        "commit 114f43a, 2026-11-29"),
    "rows_per_block": Measured(
        0, DEV_MACHINE,
        "rows a batch-1 GEMV works on at once; 0 = the per-format table ROWS_PER_BLOCK_AVX512 below, "
        "which `python bench/kernels.py --rows` measured; commit 03be4bf, 2026-11-29"),
}

# ---- compile-time constants of csrc/, mirrored here (changing one means editing csrc/ and rebuilding)
ROWS_PER_BLOCK_AVX512 = Measured(
    {"bf16": "2", "int8": "8 on rows >= 8192 bytes, else 1", "int4": "1 on rows >= 2048 bytes, else 2"},
    DEV_MACHINE,
    "csrc/hq_impl.h R1(): rows per block at batch 1 on AVX-512 (4 on other ISAs); two cold 1-thread "
    "sweeps `python bench/kernels.py --rows`; commit 03be4bf, 2026-11-29")
ATTN_ALL_THREADS_BYTES = Measured(
    256 * 1024, DEV_MACHINE,
    "csrc/hq_api.cpp hq_attn_decode: a KV cache read above this many bytes per layer is split over all "
    "threads, below it one thread does it; commit 097d1f6, 2026-11-29")

# A format constant, the same on every machine (pre-quantized checkpoints depend on it), chosen by a
# measurement of weight error, not of speed; csrc/hq_api.h HQ_G mirrors it (checked at load).
INT4_GROUP = Measured(
    64, "any machine (relative RMS weight error of random Gaussian / Student-t3 rows)",
    "`python bench/kernels.py --int4-groups`: G=128 fp16 0.100/0.170, G=64 fp16 0.090/0.131 (chosen), "
    "G=32 fp16 0.078/0.100 at 11% more bytes; 64 is also the int4 kernels' activation block; "
    "commit ca2182b, 2026-11-29")


def table() -> list[tuple[str, object, str, str]]:
    """(name, value, measured on, how) of every default here, for `hetero-qwen info` and the docs."""
    rows = [(n, m.value, m.on, m.how) for n, m in globals().items() if isinstance(m, Measured)]
    rows += [(f"KERNEL_TUNING.{k}", m.value, m.on, m.how) for k, m in KERNEL_TUNING.items()]
    return rows
