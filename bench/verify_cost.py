"""Cost of a speculative verify forward of k + 1 tokens over one decode token, on the 27B shape.

    PYTHONPATH=. python bench/verify_cost.py --dtype int4 --threads 1 [--reps 9] [--keep]

MTP pays only when verifying k drafts plus one costs about one decode token (the weights are read
once for all k + 1 rows). This times it through the real executor: a random checkpoint of the
Qwen3.6-27B layer shapes (hidden 5120, intermediate 17408, the DeltaNet and gated-attention heads of
the real config) cut to --layers layers in the real 3:1 pattern (default 4: three DeltaNet + FFN, one
attention + FFN), written pre-quantized (int4 or int8, as bench/run_27b_cpu.py writes the whole
model), loaded by `hetero_qwen.load` with a CPU-only profile. The vocabulary is cut in the same
proportion as the layers (248320 * layers / 64), so the lm_head's share of the bytes read is the
full model's.

After a 32-token prompt, one round times, at the same cache position (a snapshot is restored
before each):
  decode : `Session.feed([t])`, one token (the CPU one-token fast path)
  verify : `Session.verify([t, d1..dk])` for k = 1..4 (the forward speculative decoding runs,
           DeltaNet states kept per position)
in a rotating order per round. Prints the median over rounds of each size's time over the decode
token's time in the same round (the machine may be shared: ratios within a round are the robust
number), and the median times.

`--tiny` times the tiny random model (hidden 128) the same way: its weights are a few KB, so the
ratio is the per-op cost of a verify over a decode token (measured_defaults.CPU_VERIFY_OP_PER_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hetero_qwen.config import load_raw_config  # noqa: E402
from run_27b_cpu import write_random_quantized  # noqa: E402

FULL_LAYERS, FULL_VOCAB = 64, 248320


def cut_config(layers: int) -> dict:
    """The 27B config with `layers` layers (3 DeltaNet : 1 attention) and the vocab cut alike."""
    raw = load_raw_config("qwen3.6-27b")
    text = raw.get("text_config", raw)
    vocab = FULL_VOCAB * layers // FULL_LAYERS // 64 * 64
    text.update(num_hidden_layers=layers, layer_types=text["layer_types"][:layers], vocab_size=vocab,
                mtp_num_hidden_layers=0, bos_token_id=vocab - 2, eos_token_id=vocab - 1)
    return raw


def time_rounds(session, prompt_next: int, ks: list[int], reps: int) -> dict[int, list[float]]:
    """Seconds per forward for each size n = k + 1 (n = 1: a decode token), `reps` rounds."""
    snap = session.snapshot()
    sizes = [1] + [k + 1 for k in ks]
    ids = [prompt_next + i for i in range(max(sizes))]
    times: dict[int, list[float]] = {n: [] for n in sizes}

    def one(n: int) -> float:
        session.restore(snap)
        t0 = time.perf_counter()
        if n == 1:
            session.feed(ids[:1])
        else:
            session.verify(ids[:n])
        dt = time.perf_counter() - t0
        session.restore(snap)
        return dt

    for n in sizes:  # warm-up: code paths, buffers, slot allocations
        one(n)
    for r in range(reps):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
        for n in order:
            times[n].append(one(n))
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="int4", choices=["int4", "int8"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=4, help="layers of the 27B shape (3:1 DeltaNet:attention)")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--max-k", type=int, default=4)
    ap.add_argument("--dir", default="/tmp/hq-verify-cost")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the written checkpoint")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--lib", help="load the C++ kernels from this directory (another build, to compare)")
    ap.add_argument("--tiny", action="store_true",
                    help="the tiny random model instead (hidden 128: weight reads are negligible, so the "
                         "ratio is the fast path's per-op cost of a verify over a decode token)")
    a = ap.parse_args(argv)
    import hetero_qwen
    from hetero_qwen.kernels import cpp

    if a.lib and not cpp.reload(a.lib):
        raise SystemExit(f"error: no usable kernel library in {a.lib}: {cpp.load_error()}")
    d = Path(f"{a.dir}-{a.dtype}-{a.layers}")
    if a.tiny:
        from hetero_qwen.tiny import ensure_tiny
        d, a.keep = ensure_tiny(), True  # the user cache's tiny model: never deleted
    elif not (d / "config.json").is_file():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        write_random_quantized(d, a.dtype, raw=cut_config(a.layers))
    prof = {"cpu": {"ram": "8GiB", "threads": a.threads, "reserve": "1GiB"}, "context": 1024,
            "weights": {"cpu_dtype": a.dtype}, "prefill": {"chunk": 64},
            "workload": {"prompt_tokens": 32, "output_tokens": 16}}
    try:
        eng = hetero_qwen.load(d, profile=prof, quiet=True, mtp=False)
        s = eng.session()
        s.feed([100 + i for i in range(32)])
        ks = list(range(1, a.max_k + 1))
        times = time_rounds(s, 200, ks, a.reps)
    finally:
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)
    base = times[1]
    rows = []
    for k in [0] + ks:
        n = k + 1
        ratio = statistics.median(t / b for t, b in zip(times[n], base))
        rows.append(dict(bench="verify_cost", dtype=a.dtype, threads=a.threads, layers=a.layers, k=k, tokens=n,
                         ms=round(statistics.median(times[n]) * 1e3, 2), vs_decode=round(ratio, 3),
                         isa=cpp.isa() if cpp.available() else None))
    for r in rows:
        if a.json:
            print(json.dumps(r))
        else:
            what = "decode 1 token " if r["k"] == 0 else f"verify k={r['k']} ({r['tokens']} tok)"
            model = "tiny" if a.tiny else f"27B x{a.layers} layers"
            print(f"{model} {a.dtype} {a.threads}t  {what}  {r['ms']:>8.2f} ms  "
                  f"{r['vs_decode']:.3f}x decode", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
