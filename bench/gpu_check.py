"""GPU check: run on a CUDA machine (an H200 here) with VRAM capped to a consumer size.

One run does, and writes one JSON file under $OUT (or --out):
  1. equivalence against transformers on CUDA, for every policy (tiny fp32 model, several budgets);
  2. decode and prefill tokens/s of a Qwen3.6-27B-shaped random-weight model cut to --layers
     layers, for `ffn-cpu`, `layers` and `auto`, with the planner's prediction next to each figure,
     and the cases the simulated GPU cannot size: a prompt of three chunks on a long cache,
     disk-tier blocks streamed for prefill, and int8 / int4 blocks streamed and dequantized on the GPU;
     the GPU weight formats (int4 tinygemm, int8, fp8) with the whole cut on the GPU, each with its
     measured share of the card's bandwidth (--gpu-bw) next to the planner's assumption;
  1b. each GPU weight format against the dequantized reference (tests/gpu_format_reference.py);
  1c. the per-token launch overhead: the cut's layer count at tiny widths, all on the GPU, so the
     weights cost nothing and what is left is kernel launches and Python, extrapolated to 64 layers
     and compared with the planner's 27B int4 token time on a 24 GB card;
  3. HF accelerate `device_map="auto"` on the same checkpoint and the same max_memory, warmed up
     and timed exactly as ours.
The VRAM cap is scaled to the cut model: cap = --vram * (layers/64) (+ embed and head share) so the
placement pressure matches the full model on a card of --vram. Every speed row runs under its own cap
(the allocator's memory fraction) and records max_memory_reserved() against it.
A row is recorded and the JSON rewritten before any cleanup, so a row that raises keeps its error
text (and a sticky CUDA error in the cleanup is recorded too); the rows after it still run. Speed
rows that would start after --time-budget seconds are skipped (marked "skipped").
--simulate runs every row here without CUDA (GPU tier simulated, the cut shrunk to tiny shapes).

  python bench/gpu_check.py --vram 24GB --layers 8 --out $OUT/gpu_check.json
  python bench/gpu_check.py --simulate --layers 4 --vram 64MB --skip-equivalence
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
        torch.cuda.synchronize()  # raises again after a sticky CUDA error: callers guard it
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class InjectedFailure(RuntimeError):
    """--inject-failure: a row (and its cleanup) raises, to check the rows around it survive."""


def run_row(rows: list, row: dict, body, save_now, inject: str | None = None, label: str = "row") -> dict:
    """Append `row`, run `body(row)`, record any error in the row and save the JSON, and only then
    clean up (guarded: after a sticky CUDA error the cleanup raises too, and is recorded)."""
    rows.append(row)
    name = row.get("case") or row.get("policy")
    try:
        if inject == name:
            raise InjectedFailure(f"injected failure in row {name}")
        body(row)
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    save_now()
    try:
        if inject == name:
            raise InjectedFailure(f"injected cleanup failure in row {name}")
        free_cuda()
    except Exception as e:
        row["cleanup_error"] = f"{type(e).__name__}: {e}"
        save_now()
    print(label, row, flush=True)
    return row


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
             ("untied", "ffn-cpu", "64MB", {"prefill": stream, "weights": {"gpu_dtype": "bf16", "cpu_dtype": "int8"}}, 2e-2),
             ("untied", "ffn-cpu", "64MB", {"prefill": stream, "weights": {"gpu_dtype": "bf16", "cpu_dtype": "int4"}}, 2e-1),
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

            def body(row, d=d, ref=ref, prof=prof, tol=tol):
                eng = hetero_qwen.load(d, profile=prof, quiet=True, simulate_gpu=simulate)
                row["homes"] = "".join(g.home[0] for g in eng.plan.groups)
                row["prefill_rel_err"] = float((eng.logits(ids) - ref).abs().max() / ref.abs().max())
                s = eng.session()
                s.feed(ids[:100])
                row["decode_rel_err"] = max(float((s.feed([ids[i]])[-1] - ref[i]).abs().max() / ref.abs().max())
                                            for i in range(100, 110))
                row["streamed_bytes"] = eng.devices.traffic.streamed
                row["ok"] = row["prefill_rel_err"] < tol and row["decode_rel_err"] < tol
                s.close()
            run_row(rows, row, body, lambda: out and save(results, out), label="equivalence")


FORMAT_TOLERANCE = {"int8": 1e-2, "int4": 3e-2, "fp8": 8e-2}  # CUDA: bf16 tinygemm, fp8 activations


def format_equivalence(results: dict, simulate: bool = False, out: str | None = None) -> None:
    """Each GPU weight format, whole model on the GPU and split, against transformers with the same
    stored values (fp32 reference; on CUDA int4 runs tinygemm in bf16 and fp8 quantizes activations,
    hence the looser tolerances there; simulated: 1e-4)."""
    import hetero_qwen
    from gpu_format_reference import dequantized_reference
    from hf_models import hf_logits, make_hf_model, save_hf_model
    ids = [(7 * i + 3) % 300 + 1 for i in range(150)]
    rows = results["format_equivalence"] = []
    with tempfile.TemporaryDirectory() as root:
        hf = make_hf_model("causal", seed=0)
        d = save_hf_model(hf, Path(root) / "m")
        for fmt in ("int4", "int8", "fp8"):
            for policy, vram in (("layers", "64MB"), ("layers", "500KB")):
                tol = 1e-4 if simulate else FORMAT_TOLERANCE[fmt]
                prof = {"gpu": {"vram": vram, "reserve": "0MiB"}, "cpu": {"ram": "1GiB", "threads": 4, "reserve": "0MiB"},
                        "context": 256, "policy": policy, "prefill": {"chunk": 64}, "weights": {"gpu_dtype": fmt},
                        "workload": {"prompt_tokens": 128, "output_tokens": 64}}
                row = {"format": fmt, "policy": policy, "vram": vram, "tolerance": tol}

                def body(row, prof=prof, tol=tol):
                    eng = hetero_qwen.load(d, profile=prof, quiet=True, simulate_gpu=simulate)
                    ref = hf_logits(dequantized_reference(hf, eng), ids)
                    row["homes"] = "".join(g.home[0] for g in eng.plan.groups)
                    got = eng.logits(ids).float().cpu()
                    row["prefill_rel_err"] = float((got - ref).abs().max() / ref.abs().max())
                    s = eng.session()
                    s.feed(ids[:100])
                    row["decode_rel_err"] = max(float((s.feed([ids[i]])[-1].float().cpu() - ref[i]).abs().max()
                                                      / ref.abs().max()) for i in range(100, 105))
                    s.close()
                    row["ok"] = row["prefill_rel_err"] < tol and row["decode_rel_err"] < tol
                run_row(rows, row, body, lambda: out and save(results, out), label="format")


def launch_overhead(results: dict, args) -> None:
    """Seconds per decoded token of a model with the cut's layers at tiny widths, all on the GPU:
    weights are negligible there, so this is the launch and Python cost per token; times 64/layers
    for the 27B, against the planner's int4 token time on a 24 GB card."""
    import hetero_qwen
    from hetero_qwen.config import load_config
    from hetero_qwen.profile import load_profile
    from placement_policies import make_plan
    row = {"case": "launch-overhead", "layers": args.layers}

    def body(row):
        with tempfile.TemporaryDirectory(dir=args.tmp) as d:
            write_27b_cut(Path(d), args.layers, device="cpu", text_overrides=SIM_SHAPES)
            prof = {"gpu": {"vram": "1GB", "reserve": "0MiB"}, "cpu": {"ram": "4GiB", "threads": args.threads, "reserve": "0MiB"},
                    "context": 512, "policy": "layers", "weights": {"gpu_dtype": "bf16"}}
            eng = hetero_qwen.load(d, profile=prof, quiet=True, simulate_gpu=args.simulate)
            s = eng.session()
            first = lambda ids: int(s.feed(ids)[-1].argmax())  # noqa: E731
            prompt = [(i * 31) % 300 + 10 for i in range(32)]
            out = timed_generation(first, lambda t: int(s.feed([t])[-1].argmax()), prompt, 32, args.simulate)
            s.close()
        per_token = 1.0 / out["decode_tokens_per_s"]
        row["s_per_token"] = per_token
        row["s_per_token_at_64_layers"] = per_token * 64 / args.layers
        plan = make_plan(load_config("qwen3.6-27b"),
                         load_profile(str(ROOT / "placement_policies/profiles/gpu24-ram64.yaml")))
        row["planned_27b_int4_s_per_token"] = plan.predicted.decode_s_per_token
        row["share_of_27b_int4_token"] = row["s_per_token_at_64_layers"] / (
            row["s_per_token_at_64_layers"] + plan.predicted.decode_s_per_token)
        row["cuda_graphs_needed"] = row["share_of_27b_int4_token"] > 0.2  # issue 12: above 20%, capture
        row["ok"] = True
    results["launch_overhead"] = []
    run_row(results["launch_overhead"], row, body, lambda: args.out and save(results, args.out), label="launch")


def attention_check(results: dict, simulate: bool, out: str | None) -> None:
    """A later prefill chunk's attention in bf16 at the 27B's head shapes (24 query heads, 4 kv
    heads, head_dim 256) against fp32 math with an explicit mask: its error, whether flash took it,
    and the peak bytes it allocated (the dense-mask path it replaces held fp32 [24, T, past+T])."""
    from hetero_qwen.model.causal_attention import _flash_takes, causal_attention
    dev = "cpu" if simulate else "cuda"
    past, T = (192, 64) if simulate else (8192, 512)
    row = {"case": "attention-later-chunk", "past": past, "chunk": T}

    def body(row):
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(1, 24, T, 256, generator=g, device=dev).to(torch.bfloat16)
        k = torch.randn(1, 4, past + T, 256, generator=g, device=dev).to(torch.bfloat16)
        v = torch.randn(1, 4, past + T, 256, generator=g, device=dev).to(torch.bfloat16)
        mask = torch.arange(past + T, device=dev)[None, :] <= torch.arange(past, past + T, device=dev)[:, None]
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float().repeat_interleave(6, 1), v.float().repeat_interleave(6, 1), attn_mask=mask)
        if not simulate:
            row["flash"] = _flash_takes(q, k, v, True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        got = causal_attention(q, k, v, past, 256 ** -0.5)
        if not simulate:
            torch.cuda.synchronize()
            row["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
            row["dense_mask_scores_bytes"] = 24 * T * (past + T) * 4
        row["max_abs_err"] = float((got.float() - ref).abs().max())
        row["ok"] = row["max_abs_err"] < 2e-2
    results["attention"] = []
    run_row(results["attention"], row, body, lambda: out and save(results, out), label="attention")


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


# tiny shapes of the 27B cut for --simulate (and the tests): both layer kinds, grouped heads
SIM_SHAPES = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=32, linear_key_head_dim=16, linear_value_head_dim=24, linear_num_key_heads=2,
                  linear_num_value_heads=6)


def sync(simulate: bool) -> None:
    if not simulate:
        torch.cuda.synchronize()


def timed_generation(prefill, decode_one, prompt: list[int], n_decode: int, simulate: bool, warm=None) -> dict:
    """The one timing recipe for every speed row, ours and accelerate's: `warm()` (a 32-token
    prefill and one decode step on a throwaway cache: cuBLAS handles, kernel loads), then the
    prompt timed in one `prefill(prompt) -> next token`, then `n_decode` tokens timed one
    `decode_one(token) -> next token` at a time."""
    if warm is not None:
        warm()
    sync(simulate)
    t0 = time.perf_counter()
    tok = prefill(prompt)
    sync(simulate)
    out = {"prefill_tokens_per_s": len(prompt) / (time.perf_counter() - t0)}
    t0 = time.perf_counter()
    for _ in range(n_decode):
        tok = decode_one(tok)
    sync(simulate)
    out["decode_tokens_per_s"] = n_decode / (time.perf_counter() - t0)
    out["decode_tokens"] = n_decode
    return out


def speed_cases(args, cap: int) -> list[tuple[str, dict, dict]]:
    """(case, profile, run) per speed row; run: prompt tokens, optional cached tokens before it."""
    bw = {"gpu": "4000GB/s", "cpu": args.cpu_bw, "pcie": args.pcie_bw}
    ram = "1GiB" if args.simulate else "100GiB"
    base = {"gpu": {"vram": cap, "reserve": "0MiB" if args.simulate else "768MiB"},
            "cpu": {"ram": ram, "threads": args.threads, **({"reserve": "0MiB"} if args.simulate else {})},
            "context": 4096, "bandwidth": bw,
            "prefill": {"chunk": args.chunk}}
    stream = {"chunk": args.chunk, "stream": "on"}
    plain = {"prompt": args.prefill, "cached": 0}
    long = {"prompt": 3 * args.chunk, "cached": args.long_cache}  # three chunks after a long cache
    ctx_long = args.long_cache + 3 * args.chunk + args.decode + 64
    # the rows only a real card can size first (they are what the simulated GPU cannot show), then
    # the policy comparison
    return [("long-prompt", {**base, "policy": "auto", "context": ctx_long}, long),
            ("long-prompt-streamed", {**base, "policy": "ffn-cpu", "context": ctx_long, "prefill": stream}, long),
            ("int8-streamed", {**base, "policy": "ffn-cpu", "prefill": stream, "weights": {"gpu_dtype": "bf16", "cpu_dtype": "int8"}}, plain),
            ("int4-streamed", {**base, "policy": "ffn-cpu", "prefill": stream, "weights": {"gpu_dtype": "bf16", "cpu_dtype": "int4"}}, plain),
            *[(f"gpu-{fmt}", {**base, "policy": "layers", "weights": {"gpu_dtype": fmt, "cpu_dtype": "int4"}}, plain)
              for fmt in ("int4", "int8", "fp8")],
            ("disk-streamed", {**base, "policy": "ffn-cpu", "prefill": stream,
                               "overrides": [{"match": r"layers\.\d+\.mlp", "home": "disk"}]}, plain),
            ("ffn-cpu", {**base, "policy": "ffn-cpu"}, plain),
            ("layers", {**base, "policy": "layers"}, plain),
            ("auto", {**base, "policy": "auto"}, plain)]


def speed(results: dict, args) -> None:
    layers, vram = args.layers, parse_size(args.vram)
    # embed + head (5.1 GB) are fixed; scale the per-layer share of the card with the cut
    cap = int((vram - 5.1e9) * layers / 64 + 5.1e9) if args.scale_vram and not args.simulate else vram
    results["cap_bytes"] = cap
    vocab = SIM_SHAPES["vocab_size"] if args.simulate else 200000
    rows = results["speed"] = []
    save_now = lambda: save(results, args.out)  # noqa: E731
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        t0 = time.time()
        try:
            write_27b_cut(Path(d), layers, device="cpu" if args.simulate else None,
                          text_overrides=SIM_SHAPES if args.simulate else None)
        except Exception as e:
            results["write_error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            return
        finally:
            free_cuda()  # the random draws' cached blocks must not count as the first policy's peak
        results["write_seconds"] = time.time() - t0
        save_now()
        for case, prof, run in speed_cases(args, cap):
            row = {"case": case, "policy": prof["policy"], "cap_bytes": cap}
            if time_left(args) < args.row_seconds:
                row["skipped"] = "time budget (--time-budget) spent"
                rows.append(row)
                print("speed", row, flush=True)
                continue
            prompt = [(i * 31) % (vocab - 20) + 10 for i in range(run["cached"] + run["prompt"])]
            run_row(rows, row, lambda row: speed_row(row, d, prof, prompt, run["cached"], cap, args), save_now,
                    args.inject_failure, "speed")
        row = {"case": "hf-accelerate", "policy": "hf-accelerate", "cap_bytes": cap}
        if args.simulate:
            rows.append({**row, "skipped": "simulated: accelerate's device_map needs CUDA"})
        elif time_left(args) < max(args.row_seconds, 90):
            rows.append({**row, "skipped": "time budget (--time-budget) spent"})
        else:
            prompt = [(i * 31) % (vocab - 20) + 10 for i in range(args.prefill)]
            run_row(rows, row, lambda row: accelerate_row(row, d, cap, prompt, args), save_now,
                    args.inject_failure, "speed")
        save_now()


def speed_row(row: dict, d: str, prof: dict, prompt: list[int], cached: int, cap: int, args) -> None:
    """One of our speed rows under its own VRAM cap; `cached` tokens are fed (untimed) first."""
    import hetero_qwen
    if not args.simulate:
        cap_vram(cap)  # this row's cap binds the allocator (findings 1 and 3 surface as OOM)
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    eng = hetero_qwen.load(d, profile=prof, quiet=True, simulate_gpu=args.simulate)
    row["load_seconds"] = time.perf_counter() - t0
    row["homes"] = "".join(g.home[0] for g in eng.plan.groups)
    row["streams"] = sum(g.stream_prefill for g in eng.plan.groups)
    row["planned_gpu_bytes"] = eng.plan.tiers["gpu"].used_bytes
    row["planned_gpu_lines"] = eng.plan.tiers["gpu"].lines
    row["predicted"] = {"decode_tokens_per_s": eng.plan.predicted.decode_tokens_per_s,
                        "prefill_tokens_per_s": eng.plan.predicted.prefill_tokens_per_s}
    w = eng.session()  # the warm-up of `timed_generation`, on its own cache, closed before the timed one opens
    w.feed(prompt[:32])
    w.feed([prompt[32]])
    w.close()
    s = eng.session()
    try:
        if cached:
            s.feed(prompt[:cached])  # the long cache the timed chunks attend to
        first = lambda ids: int(s.feed(ids)[-1].argmax())  # noqa: E731
        row.update(timed_generation(first, lambda t: int(s.feed([t])[-1].argmax()), prompt[cached:],
                                    args.decode, args.simulate))
        row["prompt_tokens"], row["cached_tokens"] = len(prompt) - cached, cached
        row["streamed_bytes"] = eng.devices.traffic.streamed
        row["stats"] = eng.memory_report()
    finally:
        s.close()
    gpu_peak = eng.devices.gpu.memory.peak if eng.devices.gpu is not None else 0
    if args.simulate:
        row["peak_gpu_bytes"] = row["peak_gpu_reserved_bytes"] = gpu_peak
    else:
        row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        row["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
    row["within_cap"] = row["peak_gpu_reserved_bytes"] <= cap
    if all(g.home == "gpu" for g in eng.plan.groups if g.kind != "embed"):  # a GPU format's roofline
        from hetero_qwen.planner.cost import gpu_efficiency
        from hetero_qwen.profile import load_profile
        from hetero_qwen.units import parse_rate
        gpu_bytes = eng.plan.predicted.decode_bytes["gpu"]
        row["decode_gpu_bytes_per_token"] = gpu_bytes
        row["achieved_gpu_bandwidth"] = gpu_bytes * row["decode_tokens_per_s"]
        row["roofline_fraction"] = row["achieved_gpu_bandwidth"] / parse_rate(args.gpu_bw)
        row["planner_share"] = gpu_efficiency(load_profile(prof), eng.plan.gpu_dtype)


def accelerate_row(row: dict, d: str, cap: int, prompt: list[int], args) -> dict:
    """HF accelerate's device_map="auto" on the same checkpoint and max_memory, timed by the same
    recipe as ours (`timed_generation`: the same warm-up, the same number of decode tokens)."""
    if importlib.util.find_spec("accelerate") is None:
        row["error"] = "accelerate is not installed (pip install accelerate): no device_map='auto' baseline"
        return row
    from transformers import AutoModelForCausalLM
    cap_vram(cap)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="auto",
                                                 max_memory={0: cap, "cpu": 100 * GiB})
    row["load_seconds"] = time.perf_counter() - t0
    row["device_map"] = sorted({str(v) for v in getattr(model, "hf_device_map", {}).values()})
    row.update(hf_generation(model, prompt, args.decode, simulate=False))
    row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    row["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
    row["within_cap"] = row["peak_gpu_reserved_bytes"] <= cap
    return row


def hf_generation(model, prompt: list[int], n_decode: int, simulate: bool) -> dict:
    """`timed_generation` for a transformers model with its KV cache."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    device = "cpu" if simulate else "cuda"
    state = {}

    def step(ids, past=None):
        out = model(torch.tensor([ids], device=device), use_cache=True, **keep,
                    **({cache_kw: past} if past is not None else {}))
        cache = getattr(out, "cache", None)
        return int(out.logits[0, -1].argmax()), cache if cache is not None else getattr(out, "past_key_values", None)

    def warm():
        tok, past = step(prompt[:32])
        step([prompt[32]], past)

    def prefill(ids):
        tok, state["past"] = step(ids)
        return tok

    def decode_one(tok):
        tok, state["past"] = step([tok], state["past"])
        return tok
    with torch.inference_mode():
        return timed_generation(prefill, decode_one, prompt, n_decode, simulate, warm)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vram", default="24GB")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--no-scale-vram", dest="scale_vram", action="store_false")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=512, help="prefill chunk of the speed rows (default 512)")
    ap.add_argument("--long-cache", type=int, default=8192,
                    help="tokens cached before the three-chunk prompt of the long-prompt rows (default 8192)")
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--cpu-bw", default="100GB/s")
    ap.add_argument("--gpu-bw", default="4800GB/s", help="the card's memory bandwidth, for the roofline fraction "
                    "(default: an H200's 4.8 TB/s)")
    ap.add_argument("--pcie-bw", default="50GB/s")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-equivalence", action="store_true")
    ap.add_argument("--time-budget", type=float, default=420,
                    help="seconds; speed rows that would start too late are skipped (default 420)")
    ap.add_argument("--row-seconds", type=float, default=60,
                    help="a speed row starts only with this many seconds of the budget left (default 60)")
    ap.add_argument("--simulate", action="store_true",
                    help="check this script without CUDA: GPU tier simulated, the 27B cut shrunk to tiny shapes")
    ap.add_argument("--inject-failure", default=None, metavar="ROW",
                    help="(testing) the row of this case or policy raises, and so does its cleanup")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "bench/results"), "gpu_check.json"))
    args = ap.parse_args(argv)
    args.deadline = time.time() + args.time_budget
    if args.simulate:
        results = {"machine": {"gpu": "simulated", "host": platform.node(), "torch": torch.__version__,
                               "vram_cap": args.vram, "layers": args.layers}}
    else:
        if not torch.cuda.is_available():
            sys.exit("error: bench/gpu_check.py needs a CUDA GPU (or --simulate)")
        cap_vram(parse_size(args.vram))
        results = {"machine": {"gpu": torch.cuda.get_device_name(0), "host": platform.node(),
                               "torch": torch.__version__, "vram_cap": args.vram, "layers": args.layers}}
    try:
        attention_check(results, args.simulate, args.out)
        if not args.skip_equivalence:
            equivalence(results, simulate=args.simulate, out=args.out)
            format_equivalence(results, simulate=args.simulate, out=args.out)
            ok = all(r.get("ok") for r in results["equivalence"] + results["format_equivalence"])
            print("all equal" if ok else "MISMATCH", flush=True)
        launch_overhead(results, args)
        if not args.skip_speed:
            speed(results, args)
    finally:
        results["seconds"] = round(time.time() - args.deadline + args.time_budget, 1)
        save(results, args.out)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
