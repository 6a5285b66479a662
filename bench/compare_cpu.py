"""Our engine against transformers (eager) on the same CPU, same weights, dtype and threads.

Builds a random Qwen3.5-shaped model with transformers, saves it, loads it in both, then
alternates timed runs (ours, theirs, ours, ...) and reports medians and ratios:
  prefill tokens/s for a `--prefill`-token prompt; decode tokens/s over `--decode` tokens.

  python bench/compare_cpu.py --size small --size mid --threads 2 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

SIZES = {
    # ~20M params: quick smoke
    "small": dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=64, linear_num_key_heads=4,
                  linear_num_value_heads=8, linear_key_head_dim=64, linear_value_head_dim=64),
    # ~174M params: the llama.cpp comparison point in issue 7 (hidden 1024, 8 layers, vocab 32000)
    "mid": dict(vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                num_attention_heads=8, num_key_value_heads=2, head_dim=128, linear_num_key_heads=4,
                linear_num_value_heads=8, linear_key_head_dim=128, linear_value_head_dim=128),
    # ~0.9B params: bytes dominate the fixed per-token cost, as on the real models
    "large": dict(vocab_size=32000, hidden_size=2048, intermediate_size=6144, num_hidden_layers=12,
                  num_attention_heads=16, num_key_value_heads=4, head_dim=128, linear_num_key_heads=8,
                  linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128),
}


def make_checkpoint(size: str, dtype: torch.dtype, where: Path):
    from hf_models import make_hf_model, save_hf_model
    hf = make_hf_model("causal", seed=0, max_position_embeddings=4096, **SIZES[size]).to(dtype)
    save_hf_model(hf, where, shard="2GB")
    return hf


def time_ours(engine, prompt: list[int], n_decode: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    s = engine.session()
    logits = s.feed(prompt)
    t1 = time.perf_counter()
    tok = int(logits[-1].argmax())
    for _ in range(n_decode):
        tok = int(s.feed([tok])[-1].argmax())
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), n_decode / (t2 - t1)


@torch.inference_mode()
def time_hf(model, prompt: list[int], n_decode: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = model(torch.tensor([prompt]), use_cache=True)
    t1 = time.perf_counter()
    past = out.past_key_values
    tok = out.logits[0, -1].argmax().view(1, 1)
    for _ in range(n_decode):
        out = model(tok, past_key_values=past, use_cache=True)
        past = out.past_key_values
        tok = out.logits[0, -1].argmax().view(1, 1)
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), n_decode / (t2 - t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", action="append", choices=list(SIZES), help="model size (repeatable)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--format", action="append", choices=["bf16", "int8", "int4"],
                    help="our CPU weight format(s), each timed in the same alternation (default bf16)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    import hetero_qwen
    from hetero_qwen.probe import read_bandwidth
    bw = read_bandwidth(args.threads, nbytes=2**30)  # the planner's predictions use this machine's bandwidth
    print(f"read bandwidth ({args.threads} threads): {bw / 1e9:.1f} GB/s", flush=True)
    results = []
    for size in args.size or ["small"]:
        with tempfile.TemporaryDirectory() as d:
            hf = make_checkpoint(size, dtype, Path(d))
            formats = args.format or ["bf16"]
            ours = {f: hetero_qwen.load(d, dtype=args.dtype, quiet=True,
                                        profile={"cpu": {"ram": "16GiB", "threads": args.threads},
                                                 "bandwidth": {"cpu": f"{bw / 1e9:.2f}GB/s"},
                                                 "workload": {"prompt_tokens": args.prefill,
                                                              "output_tokens": args.decode},
                                                 "context": 4096, "weights": {"cpu_dtype": f}})
                    for f in formats}
            prompt = [(i * 37) % (SIZES[size]["vocab_size"] - 1) + 1 for i in range(args.prefill)]
            for eng in ours.values():
                time_ours(eng, prompt[:16], 2)
            time_hf(hf, prompt[:16], 2)  # warm-up
            runs = {f"ours-{f}": [] for f in formats} | {"transformers": []}
            for _ in range(args.repeats):  # alternate so drift hits every contender equally
                for f, eng in ours.items():
                    runs[f"ours-{f}"].append(time_ours(eng, prompt, args.decode))
                runs["transformers"].append(time_hf(hf, prompt, args.decode))
            med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
                   for k, v in runs.items()}
            params = sum(p.numel() for p in hf.parameters())
            hf_pre, hf_dec = med["transformers"]
            for f in formats:
                pre, dec = med[f"ours-{f}"]
                cfg = ours[f].cfg  # bytes one decode token reads: weights + DeltaNet state (read and written)
                read = sum(g.decode_read_bytes(f) for g in cfg.weight_groups() if g.kind != "embed")
                read += cfg.deltanet_state_bytes() * 2
                row = {"size": size, "params": params, "dtype": args.dtype, "format": f, "threads": args.threads,
                       "prefill_tokens": args.prefill, "decode_tokens": args.decode,
                       "ours_prefill_tok_s": pre, "ours_decode_tok_s": dec,
                       "hf_prefill_tok_s": hf_pre, "hf_decode_tok_s": hf_dec,
                       "prefill_ratio": pre / hf_pre, "decode_ratio": dec / hf_dec,
                       "decode_vs_ours_bf16": dec / med["ours-bf16"][1] if "ours-bf16" in med else None,
                       "predicted_decode_tok_s": ours[f].plan.predicted.decode_tokens_per_s,
                       "prediction_error": ours[f].plan.predicted.decode_tokens_per_s / dec - 1,
                       "read_bw_gbs": bw / 1e9, "bytes_per_token": read,
                       "roofline_tok_s": bw / read, "roofline_fraction": dec * read / bw}
                results.append(row)
                print(f"{size:6s} {params / 1e6:7.1f}M {f:5s} {args.threads}t | prefill ours {pre:8.1f} "
                      f"hf {hf_pre:8.1f} tok/s x{pre / hf_pre:.2f} | decode ours {dec:7.1f} hf {hf_dec:7.1f} "
                      f"tok/s x{dec / hf_dec:.2f}, {100 * row['roofline_fraction']:.0f}% of roofline "
                      f"(planner {row['predicted_decode_tok_s']:.1f}, "
                      f"{100 * row['prediction_error']:+.0f}%)" + (f" | vs our bf16 x{row['decode_vs_ours_bf16']:.2f}"
                                                      if row["decode_vs_ours_bf16"] else ""), flush=True)
    path = Path(__file__).with_name("results") / "compare_cpu.json"
    path.parent.mkdir(exist_ok=True)
    try:  # sizes not run this time keep their last rows
        kept = [r for r in json.loads(path.read_text())["results"] if r["size"] not in (args.size or ["small"])]
    except (OSError, ValueError, KeyError):
        kept = []
    out = {"bench": "compare_cpu", "machine": {"cpu": platform.processor() or platform.machine(),
                                               "torch": torch.__version__}, "results": kept + results}
    path.write_text(json.dumps(out, indent=2) + "\n")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
