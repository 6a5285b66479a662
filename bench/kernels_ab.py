"""Same-process A/B of two C++ kernel builds on the 27B FFN (cold weights) at batch 1..5.

    PYTHONPATH=. python bench/kernels_ab.py --a DIR_A --b DIR_B [--threads N] [--reps R] [--format int4]

Each DIR holds a `_hq_kernels*.so` (for example a copy of hetero_qwen/kernels/ built before
and after a change). The same weight sets and inputs are used for both builds. Each round
loads A and B in turn (alternating which goes first) and times every batch (in a rotating order)
with the same one-pass-over-the-cold-sets method as `bench/kernels.py --verify`. On a shared
machine the load changes from minute to minute, so comparing two separate runs of
bench/kernels.py can be off by 10-20%; alternating builds within one process cancels most of that.
Prints, per build and batch, the median ms, GB/s and ratio to batch 1 (medians over rounds), then
B/A per batch (the median over rounds of the ratio within each round).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import kernels as kb  # noqa: E402

from hetero_qwen.kernels import cpp, dispatch  # noqa: E402

BATCHES = (1, 2, 3, 4, 5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="directory of build A's _hq_kernels*.so")
    ap.add_argument("--b", required=True, help="directory of build B's _hq_kernels*.so")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=9, help="rounds (each times both builds at every batch)")
    ap.add_argument("--format", default="int4", choices=("int4", "int8", "bf16"))
    ap.add_argument("--cold-mb", type=int, default=320, help="weight bytes rotated per case (>> LLC)")
    a = ap.parse_args(argv)
    libs = {"A": a.a, "B": a.b}
    for name, d in libs.items():
        if not cpp.reload(d):
            raise SystemExit(f"error: no usable kernel library for --{name.lower()} in {d}: {cpp.load_error()}")
    g = torch.Generator().manual_seed(0)
    sets, nbytes = kb.cold_ffn_sets(a.format, g, a.cold_mb << 20)
    xs = {B: torch.randn(B, kb.H, generator=g) for B in BATCHES}
    bufs = {B: (torch.empty(B, kb.H), torch.empty(B, kb.I)) for B in BATCHES}

    def one_pass(B):
        t = time.perf_counter()
        for s in sets:
            cpp.ffn(xs[B], *s, *bufs[B])
        return (time.perf_counter() - t) / len(sets)

    ts = {(name, B): [] for name in libs for B in BATCHES}
    for r in range(a.reps):
        for name in (("A", "B") if r % 2 == 0 else ("B", "A")):
            cpp.reload(libs[name])
            dispatch.set_threads(a.threads)
            one_pass(1)  # wake the pool, warm the code
            k = r % len(BATCHES)
            for B in BATCHES[k:] + BATCHES[:k]:
                ts[(name, B)].append(one_pass(B))
    print(f"{a.format} ffn {kb.H}x{kb.I}, threads={a.threads}, {a.reps} rounds; A={a.a} B={a.b}")
    for name in libs:
        for B in BATCHES:
            t = statistics.median(ts[(name, B)])
            vs1 = statistics.median(x / y for x, y in zip(ts[(name, B)], ts[(name, 1)]))
            print(f"{name} B={B}  {t * 1e3:8.3f} ms  {nbytes / t / 1e9:6.2f} GB/s  {vs1:.2f}x batch 1")
    for B in BATCHES:
        r = statistics.median(y / x for x, y in zip(ts[("A", B)], ts[("B", B)]))
        print(f"B/A at B={B}: {r:.3f}")
    cpp.reload()
    return 0


if __name__ == "__main__":
    sys.exit(main())
