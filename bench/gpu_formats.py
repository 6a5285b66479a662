"""GPU weight formats (hetero_qwen/kernels/gpu_linear.py) against bf16: time per matmul, ratio to
bf16, and the share of the device's read bandwidth (roofline fraction: weight bytes / time / bw).

    PYTHONPATH=. python bench/gpu_formats.py                 # CUDA when present, 27B shapes
    PYTHONPATH=. python bench/gpu_formats.py --quick         # small shapes, 3 reps: proves it runs
    PYTHONPATH=. python bench/gpu_formats.py --json --out results.json

Shapes: the 27B's FFN (5120 -> 17408, 17408 -> 5120) and attention output (6144 -> 5120), at decode
(rows 1) and prefill (rows 512). Bandwidth: one device-to-device copy of a 1 GiB buffer (read +
write counted). Weights are hot in L2 only if they fit it (they do not at these shapes on a GPU).
On a CPU the numbers say only that the ops run: the CPU tier has its own kernels (bench/kernels.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hetero_qwen.kernels.gpu_linear import GPU_INT4_GROUP, gpu_linear_from_float  # noqa: E402

SHAPES = [(17408, 5120), (5120, 17408), (5120, 6144)]
QUICK_SHAPES = [(512, 1024), (1024, 512)]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit(fn, dev, reps: int) -> float:
    fn()
    sync(dev)
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(dev)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def bandwidth(dev: torch.device, nbytes: int) -> float:
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=dev)
    b = torch.empty_like(a)
    t = timeit(lambda: b.copy_(a), dev, 5)
    return 2 * nbytes / t


class Bf16:
    def __init__(self, w, dev):
        self.w = w.to(device=dev, dtype=torch.bfloat16)
        self.nbytes = self.w.numel() * 2

    def __call__(self, x):
        return x @ self.w.t()


def run(quick: bool, reps: int) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bw = bandwidth(dev, (64 if quick else 1024) * 2**20)
    rows_out = []
    for out_f, in_f in (QUICK_SHAPES if quick else SHAPES):
        w = torch.randn(out_f, in_f) * 0.02
        ops = {"bf16": Bf16(w, dev),
               f"int4-g{GPU_INT4_GROUP}": gpu_linear_from_float(w, "int4", device=dev),
               "int4-g128": gpu_linear_from_float(w, "int4", 128, device=dev),
               "int8": gpu_linear_from_float(w, "int8", device=dev),
               "fp8": gpu_linear_from_float(w, "fp8", device=dev)}
        for m in (1, 512 if not quick else 16):
            x = torch.randn(m, in_f, device=dev, dtype=torch.bfloat16)
            base = None
            for name, op in ops.items():
                t = timeit(lambda: op(x), dev, reps)
                base = base or t
                rows_out.append(dict(shape=f"{out_f}x{in_f}", rows=m, fmt=name, us=round(t * 1e6, 1),
                                     vs_bf16=round(base / t, 3), bytes=op.nbytes,
                                     roofline=round(op.nbytes / t / bw, 3)))
                r = rows_out[-1]
                print(f"{r['shape']:>12} rows {m:4d} {name:10s} {r['us']:10.1f} us  x{r['vs_bf16']:.2f} of bf16  "
                      f"{100 * r['roofline']:5.1f}% of {bw / 1e9:.0f} GB/s", flush=True)
    return dict(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                torch=torch.__version__, bandwidth_gbs=round(bw / 1e9, 1), rows=rows_out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes and 3 reps")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    res = run(a.quick, a.reps or (3 if a.quick else 20))
    if a.json:
        print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
