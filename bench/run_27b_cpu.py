"""The real Qwen3.6-27B shape on this CPU: all 64 layers, vocab 248320, random weights.

Writes a pre-quantized (`hetero_qwen_format`) checkpoint straight in int4 (or int8) — the bf16
model is never materialized — loads it with a CPU-only profile, decodes N tokens and reports
tokens/s, peak RSS, and the bandwidth roofline fraction:
    roofline tokens/s = measured read bandwidth / bytes read per decode token
The planner's prediction (same profile, measured bandwidth) is printed next to the measurement.

  python bench/run_27b_cpu.py --dtype int4 --tokens 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hetero_qwen.checkpoint import tensor_name  # noqa: E402
from hetero_qwen.config import ModelConfig, load_raw_config  # noqa: E402
from hetero_qwen.formats import INT4_GROUP  # noqa: E402
from hetero_qwen.quantized_checkpoint import META_SUFFIX, ShardWriter, quantized_names  # noqa: E402


def progress(it, desc):
    try:
        from tqdm import tqdm
        return tqdm(it, desc=desc, file=sys.stderr, leave=False)
    except ImportError:
        return it


def write_random_quantized(dst: Path, fmt: str, seed: int = 0, raw: dict | None = None) -> ModelConfig:
    """Random packed weights of the real shapes, written shard by shard (never all in RAM).
    `raw`: a config dict to write instead of the 27B's (bench/verify_cost.py cuts its layers)."""
    raw = dict(raw) if raw is not None else load_raw_config("qwen3.6-27b")
    raw.pop("vision_config", None)
    raw["hetero_qwen_format"] = fmt
    cfg = ModelConfig.from_dict(raw)
    g = torch.Generator().manual_seed(seed)
    packed = dict(quantized_names(cfg))
    w = ShardWriter(dst)
    for group in progress(cfg.weight_groups(), "writing"):
        for local, shape in list(group.matrices) + list(group.vectors):
            name = tensor_name(group.name, group.kind, local, cfg)
            if name in packed:
                out, n = shape
                if fmt == "int4":
                    ng = -(-n // INT4_GROUP)
                    w.add(name, torch.randint(0, 256, (out, ng * INT4_GROUP // 2), generator=g, dtype=torch.uint8))
                    meta = torch.empty(out, ng, 2, dtype=torch.float16)
                    meta[..., 0] = 0.02 / 4   # scale: values in about +-0.04
                    meta[..., 1] = -0.02 * 15 / 8
                    w.add(name + META_SUFFIX, meta)
                else:
                    w.add(name, torch.randint(-127, 128, (out, n), generator=g, dtype=torch.int8))
                    w.add(name + META_SUFFIX, torch.full((out,), 0.02 / 64, dtype=torch.float32))
            elif local == "A_log":
                w.add(name, torch.zeros(shape))
            elif len(shape) == 2:  # the embedding: bf16, row gather
                w.add(name, (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16))
            else:
                w.add(name, torch.randn(shape, generator=g) * 0.02)
    w.close()
    (dst / "config.json").write_text(json.dumps(raw, indent=1))
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="int4", choices=["int4", "int8"])
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/hq-27b")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the written checkpoint")
    args = ap.parse_args()
    import hetero_qwen
    from hetero_qwen.probe import read_bandwidth
    from hetero_qwen.units import fmt_bytes
    d = Path(f"{args.dir}-{args.dtype}")
    if not (d / "config.json").is_file():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t0 = time.time()
        write_random_quantized(d, args.dtype)
        print(f"wrote {fmt_bytes(sum(f.stat().st_size for f in d.glob('*.safetensors')))} in {time.time() - t0:.0f} s",
              flush=True)
    bw = read_bandwidth(args.threads, nbytes=2**30)
    prof = {"cpu": {"ram": "20GiB", "threads": args.threads, "reserve": "1GiB"}, "context": 4096,
            "weights": {"cpu_dtype": args.dtype}, "bandwidth": {"cpu": f"{bw / 1e9:.2f}GB/s"},
            "prefill": {"chunk": 64}, "workload": {"prompt_tokens": 8, "output_tokens": args.tokens}}
    t0 = time.time()
    eng = hetero_qwen.load(d, profile=prof, quiet=True)
    load_s = time.time() - t0
    s = eng.session()
    prompt = [1000 + i for i in range(8)]
    tok = int(s.feed(prompt)[-1].argmax())
    times = []
    for _ in range(args.tokens):
        t = time.perf_counter()
        tok = int(s.feed([tok])[-1].argmax())
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    read = sum(g.decode_read_bytes(args.dtype) for g in eng.cfg.weight_groups() if g.kind != "embed")
    read += eng.cfg.deltanet_state_bytes() * 2  # the recurrent state is read and written
    roof = bw / read
    pred = eng.plan.predicted.decode_tokens_per_s
    out = {"bench": "run_27b_cpu", "dtype": args.dtype, "threads": args.threads,
           "machine": {"cpu": platform.processor() or platform.machine(), "read_bw_gbs": bw / 1e9},
           "load_seconds": load_s, "decode_tokens_per_s": 1 / sec, "seconds_per_token": sec,
           "bytes_per_token": read, "roofline_tokens_per_s": roof, "roofline_fraction": (1 / sec) / roof,
           "achieved_gbs": read / sec / 1e9, "predicted_tokens_per_s": pred,
           "prediction_error": pred * sec - 1, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "homes": sorted({g.home for g in eng.plan.groups})}
    print(f"27B {args.dtype} {args.threads}t: {1 / sec:.3f} tok/s ({sec:.2f} s/token), "
          f"{read / 2**30:.2f} GiB/token at {read / sec / 1e9:.1f} GB/s = {100 * out['roofline_fraction']:.0f}% of "
          f"{bw / 1e9:.1f} GB/s; planner predicted {pred:.3f} tok/s ({100 * out['prediction_error']:+.0f}%); "
          f"peak RSS {fmt_bytes(out['peak_rss_bytes'])}; load {load_s:.1f} s", flush=True)
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / f"run_27b_cpu-{args.dtype}.json").write_text(json.dumps(out, indent=2) + "\n")
    if not args.keep:
        del eng, s
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
