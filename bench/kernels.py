"""CPU kernel benchmark, with COLD weights, against this machine's read bandwidth and torch.

    PYTHONPATH=. python bench/kernels.py [--threads N] [--json] [--reps R] [--int4-groups] [--call-overhead]

Measures in one run, at one thread count: read bandwidth (torch sum over a 1 GiB fp32 buffer),
the FFN decode (gate+up fused with SiLU, then down) at the 27B shape (5120 -> 17408 -> 5120,
batch 1 and 4) and at a small-model shape (1024 -> 3584 -> 1024), and single projections
(2048x1024, and a 32000x1024 lm_head) in bf16/int8/int4 at batch 1, plus the fused DeltaNet
decode step (48 value heads x 128x128 fp32 state).

Weights are cold, as in decode (every CPU-resident matrix is read once per token and evicted
before the next): each case rotates through enough independent copies of its weights to total
at least --cold-mb (default 320 MB, 10x the 32 MB LLC of the dev machine), and one timed
sample is one pass over all copies. Hot-cache numbers would hide prefetch and memory-level-
parallelism problems. Prints GB/s of weight bytes (state bytes read + written for DeltaNet),
the fraction of the measured bandwidth, and for the 27B FFN the ratio to torch's best path
for the same format (F.linear bf16 / oneDNN; _weight_int8pack_mm; _weight_int4pack_mm_for_cpu;
the torch reference DeltaNet step), timed the same cold way. Medians of --reps samples.
`--verify` instead times the 27B FFN in each format at batch 1..5, the forward sizes of a
speculative verify of k = 0..4 drafts, alternating the batches within each round, and prints the
median over rounds of each batch's time over batch 1's in the same round (MTP pays when
a verify of k + 1 tokens costs about one token: the weights are read once for all of them).
Writes bench/results/kernels-<host>.json: machine description and one entry per thread count
under "runs" (a run at another thread count is merged in, not overwritten).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from hetero_qwen.executor.host_arena import HostArena  # noqa: E402
from hetero_qwen.formats import INT4_GROUP  # noqa: E402
from hetero_qwen.kernels import cpp, dispatch, reference  # noqa: E402
from hetero_qwen.kernels import numba_kernels as nk  # noqa: E402
from hetero_qwen.kernels.quant import PackedWeight, unpack_int4  # noqa: E402

H, I = 5120, 17408
HK, HV, DK, DV, KCONV = 16, 48, 128, 128, 4


ARENA = [HostArena()]  # weights in the engine's huge-page host memory (--plain-pages: None)


def home(t):
    """A tensor or PackedWeight moved where the engine keeps CPU weights."""
    if ARENA[0] is None:
        return t
    if isinstance(t, PackedWeight):
        return ARENA[0].copy_packed(t)
    return ARENA[0].copy(t)


def timeit(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def read_bandwidth(reps):
    buf = home(torch.ones(256 * 1024 * 1024))  # 1 GiB fp32, in the weights' kind of memory
    t = timeit(lambda: buf.sum(), reps)
    return buf.numel() * 4 / t / 1e9


def torch_int4_path(w: PackedWeight):
    """torch's own int4 CPU GEMV on the same quantized values (its packing; group 64)."""
    q = unpack_int4(w.data, w.in_features).to(torch.int32).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    m = w.meta.float()  # torch uses w = (q - 8) * scale + zero: zero = offset + 8 * scale
    sz = torch.stack([m[..., 0], m[..., 1] + 8 * m[..., 0]], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, INT4_GROUP, sz)


def torch_linear_fn(w: PackedWeight):
    if w.fmt == "bf16":
        return lambda x: F.linear(x.to(torch.bfloat16), w.data)
    if w.fmt == "int8":  # bf16 activations: torch's faster int8 path (fp32 x is a scalar loop)
        sb = w.meta.to(torch.bfloat16)
        return lambda x: torch._weight_int8pack_mm(x.to(torch.bfloat16), w.data, sb)
    f = torch_int4_path(w)
    return lambda x: f(x.to(torch.bfloat16))


def _cold_time(fn, items, reps):
    """Median seconds per item of one pass of fn over all items (first pass warms up code)."""
    for it in items:
        fn(it)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        for it in items:
            fn(it)
        ts.append((time.perf_counter() - t) / len(items))
    return statistics.median(ts)


def _row(kernel, fmt, B, be, threads, shape, t, nbytes, bw, t_torch=None):
    gbps = nbytes / t / 1e9
    return dict(kernel=kernel, format=fmt, batch=B, backend=be, threads=threads, shape=shape,
                ms=round(t * 1e3, 3), gbps=round(gbps, 2), bw_fraction=round(gbps / bw, 3),
                vs_torch=None if t_torch is None else round(t_torch / t, 2),
                torch_ms=None if t_torch is None else round(t_torch * 1e3, 3))


def cold_ffn_sets(fmt: str, g: torch.Generator, cold_bytes: int, H: int = H, I: int = I) -> tuple[list, int]:
    """Enough independent (gate, up, down) weight sets in `fmt` to cover `cold_bytes`, so cycling
    through them reads each from RAM, not cache: (sets, bytes of one set)."""
    def make():
        return (home(PackedWeight.from_float(torch.randn(I, H, generator=g) * 0.02, fmt)),
                home(PackedWeight.from_float(torch.randn(I, H, generator=g) * 0.02, fmt)),
                home(PackedWeight.from_float(torch.randn(H, I, generator=g) * 0.02, fmt)))
    first = make()
    nbytes = sum(w.nbytes for w in first)
    return [first] + [make() for _ in range(max(0, -(-cold_bytes // nbytes) - 1))], nbytes


def bench_ffn(fmt, threads, reps, bw, batches, with_numba, H=H, I=I, cold_bytes=320 << 20, with_torch=True):
    g = torch.Generator().manual_seed(0)
    sets, nbytes = cold_ffn_sets(fmt, g, cold_bytes, H, I)
    shape = f"{H}x{I}"
    rows = []
    for B in batches:
        x = torch.randn(B, H, generator=g)
        t_torch = None
        if with_torch:
            fns = [tuple(torch_linear_fn(w) for w in s) for s in sets]

            def torch_ffn(f):
                return f[2](F.silu(f[0](x).float()) * f[1](x).float())

            t_torch = _cold_time(torch_ffn, fns, max(3, reps // 2))
            del fns
        if cpp.available():
            out, hid = torch.empty(B, H), torch.empty(B, I)
            t = _cold_time(lambda s: cpp.ffn(x, *s, out, hid), sets, reps)
            rows.append(_row("ffn", fmt, B, "cpp", threads, shape, t, nbytes, bw, t_torch))
        if with_numba and B == 1:
            t = _cold_time(lambda s: nk.ffn(x, *s), sets, max(2, reps // 3))
            rows.append(_row("ffn", fmt, B, "numba", threads, shape, t, nbytes, bw, t_torch))
    return rows


def bench_linear(fmt, threads, reps, bw, out_f, in_f, kernel, cold_bytes=320 << 20):
    g = torch.Generator().manual_seed(2)
    first = PackedWeight.from_float(torch.randn(out_f, in_f, generator=g) * 0.02, fmt)
    n = max(1, -(-cold_bytes // first.nbytes))
    ws = [home(first)] + [home(PackedWeight(fmt, first.data.clone(), None if first.meta is None else first.meta.clone(),
                                            out_f, in_f)) for _ in range(n - 1)]
    x, out = torch.randn(1, in_f, generator=g), torch.empty(1, out_f)
    rows = []
    if cpp.available():
        t = _cold_time(lambda w: cpp.linear(x, w, out), ws, reps)
        rows.append(_row(kernel, fmt, 1, "cpp", threads, f"{out_f}x{in_f}", t, first.nbytes, bw))
    return rows


def bench_deltanet(threads, reps, bw, with_numba):
    g = torch.Generator().manual_seed(1)
    cd = 2 * HK * DK + HV * DV
    kw = dict(mixed_qkv=torch.randn(1, cd, generator=g), a=torch.randn(1, HV, generator=g),
              b=torch.randn(1, HV, generator=g), conv_weight=torch.randn(cd, KCONV, generator=g),
              conv_state=torch.randn(1, cd, KCONV - 1, generator=g), A_log=torch.randn(HV, generator=g),
              dt_bias=torch.randn(HV, generator=g), state=torch.randn(1, HV, DK, DV, generator=g) * 0.01)
    nbytes = 2 * HV * DK * DV * 4 + 2 * cd * (KCONV - 1) * 4  # state + conv state, read + written
    t_ref = timeit(lambda: reference.deltanet_decode_step(**kw), reps)
    rows = []
    for be in (["cpp"] if cpp.available() else []) + (["numba"] if with_numba else []):
        f = cpp.deltanet_decode_step if be == "cpp" else nk.deltanet_decode_step
        t = timeit(lambda: f(**kw), reps * 4)
        gbps = nbytes / t / 1e9
        rows.append(dict(kernel="deltanet_step", format="fp32", batch=1, backend=be, threads=threads, shape="48x128x128",
                         ms=round(t * 1e3, 3), gbps=round(gbps, 2), bw_fraction=round(gbps / bw, 3),
                         vs_torch=round(t_ref / t, 2), torch_ms=round(t_ref * 1e3, 3)))
    return rows


def rows_sweep(threads, reps, bw, cold_bytes=300 << 20):
    """GB/s of batch-1 GEMVs per rows-per-block choice (hq_tune rows_per_block), per format and
    27B / mid shape, cold; the data behind the kernels' per-format defaults (hq_impl.h R1)."""
    g = torch.Generator().manual_seed(5)
    rows = []
    for out_f, in_f in ((17408, 5120), (5120, 17408), (3584, 1024)):
        for fmt in ("bf16", "int8", "int4"):
            w0 = PackedWeight.from_float(torch.randn(out_f, in_f, generator=g) * 0.02, fmt)
            ws = [home(PackedWeight(fmt, w0.data.clone(), None if w0.meta is None else w0.meta.clone(), out_f, in_f))
                  for _ in range(max(2, -(-cold_bytes // w0.nbytes)))]
            x, out = torch.randn(1, in_f, generator=g), torch.empty(1, out_f)
            for R in (0, 1, 2, 4, 8):  # 0: the built-in default
                cpp.tune("rows_per_block", R)
                t = _cold_time(lambda w: cpp.linear(x, w, out), ws, reps)
                rows.append(_row(f"rows={R or 'default'}", fmt, 1, "cpp", threads, f"{out_f}x{in_f}", t, w0.nbytes, bw))
            del ws
    cpp.tune("rows_per_block", 0)
    return rows


def int4_group_table():
    """RMS relative error and bits/weight of int4 choices on Gaussian and heavy-tailed rows."""
    g = torch.Generator().manual_seed(0)
    ws = {"gauss": torch.randn(512, 5120, generator=g),
          "student-t3": torch.distributions.StudentT(3.0).sample((512, 5120))}
    out = []
    for G in (32, 64, 128):
        for meta in ("fp16", "fp32"):
            for name, w in ws.items():
                v = w.view(512, -1, G)
                mn, mx = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
                s, m = (mx - mn) / 15, mn
                if meta == "fp16":
                    s, m = s.half().float(), m.half().float()
                q = torch.round((v - m) / s).clamp(0, 15)
                err = ((q * s + m - v).norm() / v.norm()).item()
                bits = 4 + (2 * (16 if meta == "fp16" else 32)) / G
                out.append(dict(group=G, meta=meta, weights=name, bits_per_weight=bits, rel_rms_error=round(err, 4)))
    return out


def call_overhead(reps: int) -> list[dict]:
    """Per-call cost of the checked kernel boundary (kernels/abi.py) against a raw ctypes call with
    pointers (what the fast decode path did before), hot weights, batch 1, the tiny test model's and
    the mid bench model's shapes: hq_linear [H -> H] and hq_ffn (H, I), bf16. Medians of `reps`
    interleaved rounds of 200 calls each; ratio = checked / raw."""
    from hetero_qwen.kernels import abi

    out = []
    for size, H, I in (("tiny", 64, 256), ("mid", 1024, 3584)):
        w = PackedWeight.from_float(torch.randn(H, H), "bf16")
        g, u, d = (PackedWeight.from_float(torch.randn(*s), "bf16") for s in ((I, H), (I, H), (H, I)))
        x, y, h = torch.randn(1, H), torch.empty(1, H), torch.empty(1, I)
        lin = abi.HQ_LINEAR.fn
        bound_lin = cpp.bind_linear(w, B=1, y=y)  # as the fast decode path binds it
        ffn = abi.HQ_FFN.fn
        bound_ffn = abi.HQ_FFN.bind(fmt=0, gw=g.data, gm=None, uw=u.data, um=None, dw=d.data, dm=None, H=H, I=I,
                                    B=1, h=h, y=y)
        cases = {
            "linear raw": lambda: lin(0, w.data.data_ptr(), None, H, H, x.data_ptr(), 1, y.data_ptr()),
            "linear bound": lambda: bound_lin(x),
            "linear cpp.linear": lambda: cpp.linear(x, w, y),
            "ffn raw": lambda: ffn(0, g.data.data_ptr(), None, u.data.data_ptr(), None, d.data.data_ptr(), None,
                                   H, I, x.data_ptr(), 1, h.data_ptr(), y.data_ptr()),
            "ffn bound": lambda: bound_ffn(x),
            "ffn cpp.ffn": lambda: cpp.ffn(x, g, u, d, y, h),
        }
        times = {k: [] for k in cases}
        for _ in range(reps):
            for k, fn in cases.items():
                fn()
                t0 = time.perf_counter()
                for _ in range(200):
                    fn()
                times[k].append((time.perf_counter() - t0) / 200 * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, us in med.items():
            raw = med[k.split()[0] + " raw"]
            out.append(dict(size=size, call=k, us=round(us, 2), ratio_to_raw=round(us / raw, 3)))
    return out


def machine():
    feats = dispatch.cpu_features()
    return dict(host=socket.gethostname(), cpu=feats["cpu"], cores=feats["cores"], isa=feats["isa"],
                cpp_isa=cpp.isa() if cpp.available() else None, torch=torch.__version__)


def verify_rows(threads, reps, bw, cold_bytes, H=H, I=I, batches=(1, 2, 3, 4, 5), fmts=("int8", "int4", "bf16")):
    """The FFN per format at each batch, cold, the batches alternating within each round (a shared
    machine's load drifts): `vs_batch1` = the median over rounds of its time over batch 1's in the
    same round; `ms` / `gbps` from the median time."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for fmt in fmts:
        sets, nbytes = cold_ffn_sets(fmt, g, cold_bytes, H, I)
        xs = {B: torch.randn(B, H, generator=g) for B in batches}
        bufs = {B: (torch.empty(B, H), torch.empty(B, I)) for B in batches}

        def one_pass(B):
            t = time.perf_counter()
            for s in sets:
                cpp.ffn(xs[B], *s, *bufs[B])
            return (time.perf_counter() - t) / len(sets)

        for B in batches:  # warm-up
            one_pass(B)
        ts = {B: [] for B in batches}
        for r in range(reps):
            k = r % len(batches)
            for B in batches[k:] + batches[:k]:
                ts[B].append(one_pass(B))
        for B in batches:
            t = statistics.median(ts[B])
            row = _row("ffn", fmt, B, "cpp", threads, f"{H}x{I}", t, nbytes, bw)
            row["vs_batch1"] = round(statistics.median(a / b for a, b in zip(ts[B], ts[batches[0]])), 3)
            rows.append(row)
        del sets
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", action="store_true", help="print one JSON object per kernel")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-numba", action="store_true")
    ap.add_argument("--plain-pages", action="store_true",
                    help="weights and the bandwidth buffer in ordinary 4 KiB pages, not the engine's huge-page arena")
    ap.add_argument("--no-torch", action="store_true", help="skip torch's paths (vs_torch = null)")
    ap.add_argument("--cold-mb", type=int, default=320, help="weight bytes rotated per case (>> LLC)")
    ap.add_argument("--int4-groups", action="store_true", help="print the int4 group-size table and exit")
    ap.add_argument("--rows", action="store_true",
                    help="only sweep the rows per block of batch-1 GEMVs (1, 2, 4, 8 and the default)")
    ap.add_argument("--call-overhead", action="store_true",
                    help="only time the checked kernel boundary against raw ctypes calls (tiny and mid shapes)")
    ap.add_argument("--verify", action="store_true",
                    help="only the 27B FFN at batch 1..5 (speculative verify sizes), with the ratio to batch 1")
    ap.add_argument("--formats", default="int8,int4,bf16", help="with --verify: the formats, comma-separated")
    a = ap.parse_args(argv)
    if a.call_overhead:
        dispatch.set_threads(a.threads)
        for r in call_overhead(a.reps):
            print(json.dumps(r))
        return 0
    if a.verify:
        dispatch.set_threads(a.threads)
        bw = read_bandwidth(a.reps)
        fmts = tuple(a.formats.split(","))
        print(f"read bandwidth ({a.threads} threads): {bw:.1f} GB/s   [{machine()['cpp_isa']}]")
        for r in verify_rows(a.threads, a.reps, bw, a.cold_mb << 20, fmts=fmts):
            print(json.dumps(r) if a.json else
                  f"ffn {r['shape']} {r['format']:5} B={r['batch']} {r['ms']:>8} ms {r['gbps']:>6} GB/s "
                  f"{r['bw_fraction']:>5.0%} of bw  {r['vs_batch1']:.2f}x batch 1")
        return 0
    if a.int4_groups:
        for r in int4_group_table():
            print(json.dumps(r))
        return 0
    if a.plain_pages:
        ARENA[0] = None
    pages = "4KiB" if a.plain_pages else "huge (THP arena)"
    dispatch.set_threads(a.threads)
    bw = read_bandwidth(a.reps)
    rows = []
    cold = a.cold_mb << 20
    for fmt in (() if a.rows else ("int8", "int4", "bf16")):
        rows += bench_ffn(fmt, a.threads, a.reps, bw, (1, 4), not a.no_numba, cold_bytes=cold,
                          with_torch=not a.no_torch)
        rows += bench_ffn(fmt, a.threads, a.reps, bw, (1,), False, H=1024, I=3584, cold_bytes=cold,
                          with_torch=False)
        rows += bench_linear(fmt, a.threads, a.reps, bw, 2048, 1024, "linear", cold)
        rows += bench_linear(fmt, a.threads, a.reps, bw, 32000, 1024, "lm_head", cold)
    rows += rows_sweep(a.threads, a.reps, bw) if a.rows else bench_deltanet(a.threads, a.reps, bw, not a.no_numba)
    for r in rows:
        r["read_bw_gbps"] = round(bw, 2)
    if a.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(f"read bandwidth ({a.threads} threads): {bw:.1f} GB/s   [{machine()['cpp_isa']}, pages: {pages}]")
        print(f"{'kernel':14} {'shape':12} {'fmt':5} {'B':>2} {'backend':7} {'ms':>8} {'GB/s':>7} {'of bw':>6} {'vs torch':>8}")
        for r in rows:
            vt = "" if r["vs_torch"] is None else f"{r['vs_torch']}x"
            print(f"{r['kernel']:14} {r.get('shape', ''):12} {r['format']:5} {r['batch']:>2} {r['backend']:7} "
                  f"{r['ms']:>8} {r['gbps']:>7} {r['bw_fraction']:>6.0%} {vt:>8}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    suffix = "-rows" if a.rows else ""  # a rows sweep is kept beside the kernel runs
    path = os.path.join(os.path.dirname(__file__), "results", f"kernels-{socket.gethostname()}{suffix}.json")
    runs = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                runs = json.load(f).get("runs", {})
        except (OSError, ValueError):
            runs = {}
    runs[str(a.threads)] = dict(read_bw_gbps=round(bw, 2), cold_mb=a.cold_mb, pages=pages, results=rows)
    with open(path, "w") as f:
        json.dump(dict(machine=machine(), runs=runs), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
