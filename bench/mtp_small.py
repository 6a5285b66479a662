"""What random weights cannot show, measured on the small trained model (bench/train_small.py):

  1. held-out perplexity per weight format: the runtime's CPU formats (bf16, int8, int4, our kernels)
     and the GPU formats (int4 g32/g64/g128, int8, fp8: transformers with the stored values);
  2. MTP acceptance at k = 1..4 (greedy, continuing held-out prompts): drafts accepted / proposed and
     the mean accepted length per verify step;
  3. decode tokens/s with MTP off and on at each k, alternating runs in one process, medians
     (the engine's own decode timing: prefill excluded).

    PYTHONPATH=. python bench/mtp_small.py [--model DIR] [--threads 2] [--prompts 6] [--tokens 96]
        [--skip-perplexity] [--draft-vocab N]

Prints one JSON object (and writes it next to the model as mtp_small.json). Ratios only: the machine
is shared, so absolute figures move between runs; every speed is compared with its baseline measured
in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WINDOW = 256


def heldout_tokens(model_dir: Path) -> list[int]:
    """The training run's held-out split, tokenized with the model's tokenizer."""
    sys.path.insert(0, str(ROOT / "bench"))
    import train_small
    from tokenizers import Tokenizer
    _, held = train_small.corpus(int(24 * 2**20))
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    end = tok.token_to_id("<|endoftext|>")
    return [t for x in tok.encode_batch(held) for t in x.ids + [end]]


def windows(tokens: list[int], n: int) -> list[list[int]]:
    step = max(1, (len(tokens) - WINDOW - 1) // n)
    return [tokens[s:s + WINDOW] for s in range(0, step * n, step)]


def nll(logits: torch.Tensor, ids: list[int]) -> tuple[float, int]:
    lp = torch.log_softmax(logits[:-1].float(), -1)
    tgt = torch.tensor(ids[1:])
    return float(-lp[torch.arange(len(tgt)), tgt].sum()), len(tgt)


def runtime_perplexity(model_dir: Path, fmt: str, wins: list[list[int]], threads: int) -> float:
    import hetero_qwen
    eng = hetero_qwen.load(model_dir, profile={"cpu": {"ram": "8GiB", "threads": threads},
                                               "weights": {"cpu_dtype": fmt}}, dtype="fp32", quiet=True, mtp=False)
    tot = n = 0
    for w in wins:
        a, b = nll(eng.logits(w), w)
        tot, n = tot + a, n + b
    return math.exp(tot / n)


def gpu_format_perplexities(model_dir: Path, wins: list[list[int]]) -> dict:
    """transformers with each quantizable matrix replaced by what the GPU format stores: held-out
    perplexity, and top-1 agreement and KL divergence against the bf16 weights' next-token
    distributions (the quality table's measures, here on a trained model)."""
    from transformers import Qwen3_5ForCausalLM
    from hetero_qwen.quality import _dequantized, quantizable
    model = Qwen3_5ForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    out, base = {}, []
    for name, fmt, group in (("bf16", "bf16", None), ("int8", "int8", None), ("fp8", "fp8", None),
                             ("int4-g32", "int4", 32), ("int4-g64", "int4", 64), ("int4-g128", "int4", 128)):
        with torch.no_grad():
            for n, p in model.named_parameters():
                w = saved[n].to(torch.bfloat16).float()
                if fmt != "bf16" and quantizable(n, p):
                    w = _dequantized(saved[n], fmt, group)
                p.copy_(w)
            tot = cnt = 0
            top1 = kl = 0.0
            for i, w in enumerate(wins):
                logits = model(torch.tensor([w])).logits[0].double()
                a, b = nll(logits, w)
                tot, cnt = tot + a, cnt + b
                if fmt == "bf16":
                    base.append(logits)
                lp, lq = torch.log_softmax(base[i], -1), torch.log_softmax(logits, -1)
                kl += float((lp.exp() * (lp - lq)).sum(-1).mean())
                top1 += float((base[i].argmax(-1) == logits.argmax(-1)).double().mean())
        out[name] = {"perplexity": math.exp(tot / cnt), "top1_vs_bf16": top1 / len(wins), "kl_vs_bf16": kl / len(wins)}
    return out


def generate(eng, prompt: list[int], tokens: int, k: int) -> tuple[list[int], dict]:
    out = list(eng.generate(prompt, max_new_tokens=tokens, mtp=k > 0, draft_tokens=k, stop_ids=()))
    return out, eng.stats.as_dict()


def speculation(model_dir: Path, prompts: list[list[int]], tokens: int, threads: int, ks, rounds: int,
                draft_vocab: int | None = None) -> dict:
    import hetero_qwen
    prof = {"cpu": {"ram": "8GiB", "threads": threads}}
    if draft_vocab:
        prof["mtp"] = {"draft_vocab": draft_vocab}
    eng = hetero_qwen.load(model_dir, profile=prof, dtype="bf16", quiet=True,
                           mtp=True)  # on whatever the plan predicts: this measures it
    assert eng.mtp is not None, "the model has no MTP layer"
    base = {i: generate(eng, p, tokens, 0)[0] for i, p in enumerate(prompts)}
    acc = {}
    for k in ks:  # acceptance, and whether greedy output is identical with MTP on (bf16 compute)
        prop = accd = steps = same = 0
        for i, p in enumerate(prompts):
            toks, st = generate(eng, p, tokens, k)
            same += toks == base[i]
            prop, accd = prop + st["draft_tokens_proposed"], accd + st["draft_tokens_accepted"]
            steps += st["draft_tokens_proposed"] // k
        acc[k] = {"acceptance": accd / max(prop, 1), "mean_accepted_length": 1 + accd / max(steps, 1),
                  "greedy_identical_prompts": f"{same}/{len(prompts)}"}
    speeds = {k: [] for k in (0, *ks)}
    for _ in range(rounds):  # interleaved: off, k=1, ..., k=4, off, ...
        for k in speeds:
            per = [generate(eng, p, tokens, k)[1]["decode_tokens_per_s"] for p in prompts]
            speeds[k].append(statistics.median(per))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    return {"acceptance": acc, "decode_tokens_per_s": med,
            "speedup": {k: med[k] / med[0] for k in ks}, "rounds": rounds}


def main(argv=None) -> int:
    from hetero_qwen.tiny import default_tiny_dir
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=default_tiny_dir().parent / "small-trained")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=16, help="held-out windows of 256 tokens for perplexity")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=96, help="tokens generated per prompt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-perplexity", action="store_true")
    ap.add_argument("--draft-vocab", type=int, help="drafts pick among token ids < N (profile mtp.draft_vocab)")
    a = ap.parse_args(argv)
    if not (a.model / "config.json").is_file():
        raise SystemExit(f"error: no trained model at {a.model}: run `python bench/train_small.py` first")
    torch.set_num_threads(a.threads)
    held = heldout_tokens(a.model)
    wins = windows(held, a.windows)
    result = {"model": str(a.model), "threads": a.threads}
    trained = a.model / "train_small.json"
    if trained.is_file():
        result["training"] = json.loads(trained.read_text())
    if not a.skip_perplexity:
        result["perplexity_cpu_formats"] = {f: runtime_perplexity(a.model, f, wins, a.threads)
                                            for f in ("bf16", "int8", "int4")}
        result["perplexity_gpu_formats"] = gpu_format_perplexities(a.model, wins)
        print(json.dumps(result, indent=2), flush=True)
    prompts = [w[: a.prompt_tokens] for w in windows(held[len(held) // 2:], a.prompts)]
    key = f"mtp_draft_vocab_{a.draft_vocab}" if a.draft_vocab else "mtp"
    result[key] = speculation(a.model, prompts, a.tokens, a.threads, (1, 2, 3, 4), a.rounds, a.draft_vocab)
    out = a.model / "mtp_small.json"
    if a.skip_perplexity and out.is_file():  # keep the perplexities an earlier full run wrote
        old = json.loads(out.read_text())
        result = {**{k: v for k, v in old.items() if k.startswith(("perplexity", "mtp"))}, **result}
    text = json.dumps(result, indent=2)
    print(text)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
