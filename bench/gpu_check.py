"""GPU check: run on a CUDA machine (an H200 here) with VRAM capped to a consumer size.

One run does, and writes one JSON file under $OUT (or --out):
  1. equivalence against transformers on CUDA, for every policy (tiny fp32 model, several budgets);
  2. decode and prefill tokens/s of a Qwen3.6-27B-shaped random-weight model cut to --layers
     layers, for `ffn-cpu`, `layers` and `auto`, with the planner's prediction next to each figure;
  3. HF accelerate `device_map="auto"` on the same checkpoint and the same max_memory.
The VRAM cap is scaled to the cut model: cap = --vram * (layers/64) (+ embed and head share) so the
placement pressure matches the full model on a card of --vram.
The JSON is rewritten after every row, so a run stopped at its time limit keeps what it measured;
speed rows that would start after --time-budget seconds are skipped (marked "skipped").

  python bench/gpu_check.py --vram 24GB --layers 8 --out $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
GiB = 2**30


def parse_size(s: str) -> int:
    from hetero_qwen.units import parse_size as ps
    return ps(s)


def cap_vram(nbytes: int) -> None:
    """Make the CUDA allocator refuse to grow past `nbytes` (a consumer card's size)."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, nbytes / total), 0)


def strict_fp32() -> None:
    """No TF32 on CUDA: the fp32 equivalence compares to 1e-4 against transformers on the CPU, and
    TF32 (cuDNN convolutions use it by default) rounds inputs to 10 mantissa bits."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def save(results: dict, out: str) -> None:
    """Write the results so far (after every row: a run killed at its time limit keeps them)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2, default=str))


def free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def equivalence(results: dict, simulate: bool = False, out: str | None = None) -> None:
    """Every policy at several budgets against transformers (fp32, tiny model), in prefill
    (64-token chunks, streamed blocks included) and in decode."""
    import hetero_qwen
    if not simulate:
        strict_fp32()
    from hf_models import hf_logits, make_hf_model, save_hf_model
    ids = [(7 * i + 3) % 300 + 1 for i in range(150)]
    slow_cpu = {"cpu": "1GB/s", "gpu": "100GB/s", "pcie": "10GB/s"}  # so `auto` uses the GPU
    stream = {"chunk": 64, "stream": "on"}
    # (model, policy, vram, profile extras, tolerance); int8/int4 rows check the GPU dequantization
    # of streamed packed blocks (their error is the quantization's); tied rows put the tied head on
    # the other device than the embedding
    cases = [("untied", "layers", "700KB", {}, 1e-4), ("untied", "layers", "1MB", {}, 1e-4),
             ("untied", "layers", "64MB", {}, 1e-4), ("untied", "ffn-cpu", "64MB", {}, 1e-4),
             ("untied", "ffn-cpu", "64MB", {"prefill": stream}, 1e-4),
             ("untied", "auto", "900KB", {"bandwidth": slow_cpu}, 1e-4),
             ("untied", "auto", "900KB", {"bandwidth": slow_cpu, "prefill": stream}, 1e-4),
             ("untied", "ffn-cpu", "64MB", {"prefill": stream, "weights": {"cpu_dtype": "int8"}}, 2e-2),
             ("untied", "ffn-cpu", "64MB", {"prefill": stream, "weights": {"cpu_dtype": "int4"}}, 2e-1),
             ("tied", "layers", "64MB", {"overrides": [{"match": "embed_tokens", "home": "cpu"},
                                                       {"match": "lm_head", "home": "gpu"}]}, 1e-4),
             ("tied", "layers", "64MB", {"overrides": [{"match": "embed_tokens", "home": "gpu"},
                                                       {"match": "lm_head", "home": "cpu"}]}, 1e-4)]
    rows = results["equivalence"] = []
    with tempfile.TemporaryDirectory() as root:
        models = {}
        for name, seed, tie in (("untied", 0, False), ("tied", 3, True)):
            hf = make_hf_model("causal", seed=seed, tie_word_embeddings=tie)
            models[name] = (save_hf_model(hf, Path(root) / name), hf_logits(hf, ids))
            del hf
        for model, policy, vram, extra, tol in cases:
            d, ref = models[model]
            prof = {"gpu": {"vram": vram, "reserve": "0MiB"}, "cpu": {"ram": "1GiB", "threads": 4, "reserve": "0MiB"},
                    "context": 256, "policy": policy, "prefill": {"chunk": 64},
                    "workload": {"prompt_tokens": 128, "output_tokens": 64}, **extra}
            row = {"model": model, "policy": policy, "vram": vram, **extra, "tolerance": tol}
            eng = s = None
            try:
                eng = hetero_qwen.load(d, profile=prof, quiet=True, simulate_gpu=simulate)
                row["homes"] = "".join(g.home[0] for g in eng.plan.groups)
                row["prefill_rel_err"] = float((eng.logits(ids) - ref).abs().max() / ref.abs().max())
                s = eng.session()
                s.feed(ids[:100])
                row["decode_rel_err"] = max(float((s.feed([ids[i]])[-1] - ref[i]).abs().max() / ref.abs().max())
                                            for i in range(100, 110))
                row["streamed_bytes"] = eng.devices.traffic.streamed
                row["ok"] = row["prefill_rel_err"] < tol and row["decode_rel_err"] < tol
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            eng = s = None
            free_cuda()
            rows.append(row)
            print("equivalence", row, flush=True)
            if out:
                save(results, out)


def write_27b_cut(where: Path, layers: int, device: str | None = None, text_overrides: dict | None = None) -> None:
    """Random bf16 weights of the real 27B shapes, `layers` layers (keeps the 3:1 pattern),
    drawn on `device` (default: CUDA when present). `text_overrides` shrinks the shapes (tests)."""
    from safetensors.torch import save_file
    from hetero_qwen.checkpoint import tensor_name
    from hetero_qwen.config import ModelConfig, load_raw_config
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    raw = load_raw_config("qwen3.6-27b")
    text = {**raw["text_config"], **(text_overrides or {})}
    text["num_hidden_layers"] = layers
    text["layer_types"] = text["layer_types"][:layers]
    raw["text_config"] = text
    raw.pop("vision_config", None)
    raw["architectures"] = ["Qwen3_5ForConditionalGeneration"]
    cfg = ModelConfig.from_dict(raw)
    (where / "config.json").write_text(json.dumps(raw))
    g = torch.Generator(device=device).manual_seed(0)
    shard, n, index = {}, 0, {}
    def flush():
        nonlocal shard, n
        if shard:
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(where / name))
            index.update({k: name for k in shard})
            shard, n = {}, n + 1
    for grp in cfg.weight_groups():
        for local, shape in list(grp.matrices) + list(grp.vectors):
            t = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 0.02
            if local == "A_log":
                t = torch.zeros(shape, device=device)
            shard[tensor_name(grp.name, grp.kind, local, cfg)] = t.to(torch.bfloat16).cpu()
            del t
        if sum(v.numel() * 2 for v in shard.values()) > 2 * GiB:
            flush()
    flush()
    (where / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))


def time_left(args) -> float:
    return args.deadline - time.time()


def speed(results: dict, args) -> None:
    import hetero_qwen
    layers, vram = args.layers, parse_size(args.vram)
    # embed + head (5.1 GB) are fixed; scale the per-layer share of the card with the cut
    cap = int((vram - 5.1e9) * layers / 64 + 5.1e9) if args.scale_vram else vram
    results["cap_bytes"] = cap
    prompt = [(i * 31) % 200000 + 10 for i in range(args.prefill)]
    rows = results["speed"] = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        t0 = time.time()
        try:
            write_27b_cut(Path(d), layers)
        except Exception as e:
            results["write_error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            return
        finally:
            free_cuda()  # the random draws' cached blocks must not count as the first policy's peak
        results["write_seconds"] = time.time() - t0
        save(results, args.out)
        for policy in ("ffn-cpu", "layers", "auto"):
            row = {"policy": policy}
            if time_left(args) < 60:
                row["skipped"] = "time budget (--time-budget) spent"
                rows.append(row)
                print("speed", row, flush=True)
                continue
            prof = {"gpu": {"vram": cap}, "cpu": {"ram": "100GiB", "threads": args.threads}, "context": 4096,
                    "policy": policy, "bandwidth": {"gpu": "4000GB/s", "cpu": args.cpu_bw, "pcie": args.pcie_bw}}
            eng = s = None
            try:
                t0 = time.perf_counter()
                eng = hetero_qwen.load(d, profile=prof, quiet=True)
                row["load_seconds"] = time.perf_counter() - t0
                row["homes"] = "".join(g.home[0] for g in eng.plan.groups)
                row["predicted"] = {"decode_tokens_per_s": eng.plan.predicted.decode_tokens_per_s,
                                    "prefill_tokens_per_s": eng.plan.predicted.prefill_tokens_per_s}
                w = eng.session()  # warm-up (cuBLAS handles, kernel loads) outside the timed runs
                w.feed(prompt[:32])
                w.feed([prompt[32]])
                w.close()
                s = eng.session()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                logits = s.feed(prompt)
                torch.cuda.synchronize()
                row["prefill_tokens_per_s"] = len(prompt) / (time.perf_counter() - t0)
                tok = int(logits[-1].argmax())
                t0 = time.perf_counter()
                for _ in range(args.decode):
                    tok = int(s.feed([tok])[-1].argmax())
                torch.cuda.synchronize()
                row["decode_tokens_per_s"] = args.decode / (time.perf_counter() - t0)
                row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
                row["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
                row["planned_gpu_bytes"] = eng.plan.tiers["gpu"].used_bytes
                row["stats"] = eng.memory_report()
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            if s is not None:
                s.close()
            eng = s = None
            free_cuda()
            rows.append(row)
            print("speed", row, flush=True)
            save(results, args.out)
        if time_left(args) < 90:
            rows.append({"policy": "hf-accelerate", "skipped": "time budget (--time-budget) spent"})
        else:
            rows.append(accelerate_row(d, cap, prompt, args))
        save(results, args.out)


def accelerate_row(d: str, cap: int, prompt: list[int], args) -> dict:
    row = {"policy": "hf-accelerate"}
    if importlib.util.find_spec("accelerate") is None:
        row["error"] = "accelerate is not installed (pip install accelerate): no device_map='auto' baseline"
        print("speed", row, flush=True)
        return row
    model = None
    try:
        from transformers import AutoModelForCausalLM
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="auto",
                                                     max_memory={0: cap, "cpu": 100 * GiB})
        row["load_seconds"] = time.perf_counter() - t0
        row["device_map"] = sorted({str(v) for v in getattr(model, "hf_device_map", {}).values()})
        params = inspect.signature(model.forward).parameters
        cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

        def step(ids, past=None):
            out = model(ids, use_cache=True, **keep, **({cache_kw: past} if past is not None else {}))
            cache = getattr(out, "cache", None)
            return out, cache if cache is not None else getattr(out, "past_key_values", None)

        ids = torch.tensor([prompt], device="cuda")
        with torch.inference_mode():
            step(ids[:, :32])  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out, past = step(ids)
            torch.cuda.synchronize()
            row["prefill_tokens_per_s"] = len(prompt) / (time.perf_counter() - t0)
            tok = out.logits[:, -1:].argmax(-1)
            n = max(2, args.decode // 4)
            t0 = time.perf_counter()
            for _ in range(n):
                out, past = step(tok, past)
                tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            row["decode_tokens_per_s"] = n / (time.perf_counter() - t0)
        row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    model = None
    free_cuda()
    print("speed", row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vram", default="24GB")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--no-scale-vram", dest="scale_vram", action="store_false")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--cpu-bw", default="100GB/s")
    ap.add_argument("--pcie-bw", default="50GB/s")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--time-budget", type=float, default=420,
                    help="seconds; speed rows that would start too late are skipped (default 420)")
    ap.add_argument("--simulate", action="store_true",
                    help="check this script without CUDA: equivalence only, GPU tier simulated")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "bench/results"), "gpu_check.json"))
    args = ap.parse_args()
    args.deadline = time.time() + args.time_budget
    if args.simulate:
        results = {"machine": {"gpu": "simulated", "host": platform.node(), "torch": torch.__version__}}
        equivalence(results, simulate=True)
        print("all equal" if all(r.get("ok") for r in results["equivalence"]) else "MISMATCH")
        return
    if not torch.cuda.is_available():
        sys.exit("error: bench/gpu_check.py needs a CUDA GPU (or --simulate)")
    cap_vram(parse_size(args.vram))
    results = {"machine": {"gpu": torch.cuda.get_device_name(0), "host": platform.node(),
                           "torch": torch.__version__, "vram_cap": args.vram, "layers": args.layers}}
    try:
        equivalence(results, out=args.out)
        if not args.skip_speed:
            speed(results, args)
    finally:
        results["seconds"] = round(time.time() - args.deadline + args.time_budget, 1)
        save(results, args.out)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
