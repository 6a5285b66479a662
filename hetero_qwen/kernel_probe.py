"""`hetero-qwen probe`'s measurements of our own CPU kernels on this machine, for the cost model:

  kernel share : GB/s a batch-1 GEMV reads cold weights at, per CPU format, over the measured read
                 bandwidth (profile `cpu.efficiency`; can exceed 1: the bandwidth is a plain sum).
  op overhead  : the fixed cost of one decode op on the CPU (profile `cpu.op_overhead`): a DeltaNet
                 mixer and an FFN of a small model run the way the one-token fast path runs them
                 (executor/cpu_decode.py: the same bound kernel calls), on cold weights; what their
                 time exceeds their bytes at the kernel bandwidth, per op.

Bounded: about COLD_BYTES of weights per format, a few passes each (well under a second at tens of
GB/s). Weight values are constants: the kernels' speed does not depend on them. Needs the C++
kernels (None otherwise: the profile then keeps the defaults in measured_defaults.py).
"""

from __future__ import annotations

import time

import torch

from .formats import INT4_GROUP

FORMATS = ("bf16", "int8", "int4")
COLD_BYTES = 64 * 2**20  # weights rotated per measurement: past the last-level cache of most CPUs
GEMV_SHAPE = (4096, 4096)  # [out, in] of each matrix: a mid-size projection
PASSES = 3


def _median_pass(fn, passes: int = PASSES) -> float:
    fn()  # warm up: page faults, thread pool, ISA choice
    ts = []
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def constant_weight(fmt: str, rows: int, cols: int, arena):
    """A PackedWeight of the format's layout (formats.py) filled with constants, in `arena`."""
    from .kernels.quant import PackedWeight

    if fmt == "bf16":
        data, meta = arena.empty((rows, cols), torch.bfloat16).fill_(0.01), None
    elif fmt == "int8":
        data, meta = arena.empty((rows, cols), torch.int8).fill_(3), arena.empty((rows,), torch.float32).fill_(0.01)
    else:
        groups = -(-cols // INT4_GROUP)
        data = arena.empty((rows, groups * INT4_GROUP // 2), torch.uint8).fill_(0x35)
        meta = arena.empty((rows, groups, 2), torch.float16).fill_(0.01)
    return PackedWeight(fmt, data, meta, rows, cols)


def _copies(bytes_each: int) -> int:
    return max(2, -(-COLD_BYTES // bytes_each))


def kernel_read_rate(fmt: str) -> float:
    """Bytes/s of weights a batch-1 hq_linear reads, cold (rotating over ~COLD_BYTES of matrices)."""
    from .executor.host_arena import HostArena
    from .kernels import cpp

    rows, cols = GEMV_SHAPE
    arena = HostArena()
    first = constant_weight(fmt, rows, cols, arena)
    ws = [first] + [constant_weight(fmt, rows, cols, arena) for _ in range(_copies(first.nbytes) - 1)]
    x, y = torch.ones(1, cols), torch.empty(1, rows)
    calls = [cpp.bound_linear(w) for w in ws]

    def one_pass():
        for call in calls:
            call(x, 1, y)
    return sum(w.nbytes for w in ws) / _median_pass(one_pass)


def _decode_ops(arena, H: int = 256, I: int = 768, Hk: int = 2, Hv: int = 4, D: int = 32, K: int = 4):
    """One DeltaNet mixer and one FFN of a small bf16 model as the fast path calls them: a function
    running both (one token) and their weight bytes."""
    from .kernels import abi, cpp

    conv_dim = 2 * Hk * D + Hv * D
    n_in = conv_dim + Hv * D + 2 * Hv  # qkv | z | b | a rows in one matrix
    w_in = constant_weight("bf16", n_in, H, arena)
    w_out = constant_weight("bf16", H, Hv * D, arena)
    gate, up = constant_weight("bf16", I, H, arena), constant_weight("bf16", I, H, arena)
    down = constant_weight("bf16", H, I, arena)
    f32 = lambda *s: torch.full(s, 0.01)  # noqa: E731
    x, norm_out, o, g, hidden, y = f32(1, H), f32(1, H), f32(Hv, D), f32(Hv, D), f32(1, I), f32(1, H)
    conv_state, state = f32(1, conv_dim, K - 1), f32(1, Hv, D, D)
    norm = abi.HQ_RMSNORM.bind(rows=1, n=H, ldx=H, w=f32(H), eps=1e-6, out=norm_out)
    proj, out = torch.empty(1, n_in), torch.empty(1, H)
    lin_in, lin_out = cpp.bind_linear(w_in, B=1, y=proj), cpp.bind_linear(w_out, B=1, y=out)
    step = abi.HQ_DELTANET_STEP.bind(B=1, conv_dim=conv_dim, K=K, S_len=K - 1, conv_w=f32(conv_dim, K),
                                     A_log=f32(Hv), dt_bias=f32(Hv), Hk=Hk, Hv=Hv, Dk=D, Dv=D, out=o.view(1, Hv, D))
    gnorm = abi.HQ_GATED_RMSNORM.bind(rows=Hv, n=D, x=o, w=f32(D), eps=1e-6, out=g)
    ffn = abi.HQ_FFN.bind(fmt=0, gw=gate.data, gm=None, uw=up.data, um=None, dw=down.data, dm=None, H=H, I=I,
                          B=1, h=hidden, y=y)
    splits = [conv_dim, Hv * D, Hv, Hv]

    def run():
        norm(x)
        lin_in(norm_out)
        qkv, z, b, a = proj.split(splits, dim=1)
        step(qkv, a, b, conv_state, state)
        gnorm(z.view(Hv, D))
        lin_out(g.view(1, Hv * D))
        x.add_(out)
        norm(x)
        ffn(norm_out)
        x.add_(y)
    nbytes = sum(w.nbytes for w in (w_in, w_out, gate, up, down)) + 2 * state.numel() * 4
    return run, nbytes


def op_overhead(bf16_rate: float) -> float:
    """Seconds per op beyond its bytes at `bf16_rate` (a mixer and an FFN, cold, averaged)."""
    from .executor.host_arena import HostArena

    arena = HostArena()
    first, nbytes = _decode_ops(arena)
    runs = [first] + [_decode_ops(arena)[0] for _ in range(_copies(nbytes) - 1)]

    def one_pass():
        for r in runs:
            r()
    per_pair = _median_pass(one_pass) / len(runs)
    hot = _median_pass(first, 20)  # the same calls with every byte in cache: the floor
    return max(per_pair - nbytes / bf16_rate, hot) / 2


def measure_kernels(read_bandwidth: float) -> dict | None:
    """{'cpu_efficiency': {fmt: share}, 'cpu_op_overhead': seconds}, or None without the C++ kernels."""
    from .kernels import cpp

    if not cpp.available():
        return None
    rates = {fmt: kernel_read_rate(fmt) for fmt in FORMATS}
    return {"cpu_efficiency": {fmt: r / read_bandwidth for fmt, r in rates.items()},
            "cpu_op_overhead": op_overhead(rates["bf16"])}
