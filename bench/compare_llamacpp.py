"""Our engine against llama.cpp (llama-bench) on the same random Qwen3.5-shaped checkpoint and CPU threads.

Builds compare_cpu.py's "mid" model (hidden 1024, 8 layers, vocab 32000: 3 DeltaNet layers then 1 full
attention, twice) in bf16, converts it to GGUF bf16 with llama.cpp's convert_hf_to_gguf.py, quantizes a
q8_0 copy with llama-quantize, then alternates timed runs (ours bf16, llama.cpp bf16, ours int8,
llama.cpp q8_0; `--repeats` rounds) and reports medians: prefill tokens/s for a `--prefill`-token prompt
and decode tokens/s over `--decode` tokens (llama-bench's pp<N> and tg<N> tests, one rep per round).
llama.cpp is not part of this repo: pass an existing build (flags or LLAMA_BENCH / LLAMA_CONVERT /
LLAMA_QUANTIZE in the environment).

  python bench/compare_llamacpp.py --llama-bench BUILD/bin/llama-bench --quantize BUILD/bin/llama-quantize \\
      --convert LLAMA_CPP_SRC/convert_hf_to_gguf.py --threads 2

Differences to keep in mind: llama-bench's tg test decodes from an empty context, ours after the prompt;
a random checkpoint has no tokenizer, so a small byte-level one (our tiny tokenizer) is written next to it
and the converter's pre-tokenizer check is bypassed (the token ids never matter for timing). The machine
should be otherwise idle: each timed run first waits (`--wait-idle`) for other processes to leave the cores,
as llama.cpp's spinning threads slow down many times over when a core is taken. Build our C++ kernels first
(`python setup.py build_ext --inplace` in a fresh checkout), or our slower fallback is what gets timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_cpu import SIZES, make_checkpoint, time_ours

# Runs convert_hf_to_gguf.py (argv[1]) with its remaining arguments, after telling its vocab code that our
# tiny tokenizer pre-tokenizes like Qwen3.5 (its hash is unknown to the converter).
CONVERT_SHIM = """
import runpy, sys
from pathlib import Path
script = Path(sys.argv[1]).resolve()
sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
sys.argv = [str(script)] + sys.argv[2:]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen35"
runpy.run_path(str(script), run_name="__main__")
"""


def step(msg: str) -> float:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    return time.perf_counter()


def run(cmd: list[str], **kw) -> str:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    if out.returncode:
        sys.exit(f"error: {' '.join(map(str, cmd[:3]))} ... failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def make_gguf(hf_dir: Path, work: Path, convert: Path, quantize: Path) -> dict[str, Path]:
    """GGUF bf16 (converted) and q8_0 (quantized) copies of the checkpoint in `hf_dir`."""
    from hetero_qwen.tiny_tokenizer import write_tiny_tokenizer
    src = work / "gguf-src"  # the checkpoint's files plus a tokenizer, so our engine's copy stays untouched
    src.mkdir()
    for f in hf_dir.iterdir():
        (src / f.name).symlink_to(f)
    write_tiny_tokenizer(src)  # 512 ids; the converter pads the rest of the 32000-id vocab
    bf16, q8 = work / "model-bf16.gguf", work / "model-q8_0.gguf"
    t = step("converting to GGUF bf16 (convert_hf_to_gguf.py)")
    run([sys.executable, "-c", CONVERT_SHIM, convert, src, "--outtype", "bf16", "--no-mtp", "--outfile", bf16])
    t = step(f"  done in {time.perf_counter() - t:.0f}s, {bf16.stat().st_size / 2**20:.0f} MiB; quantizing to q8_0")
    run([quantize, bf16, q8, "q8_0"])
    step(f"  done in {time.perf_counter() - t:.0f}s, {q8.stat().st_size / 2**20:.0f} MiB")
    return {"bf16": bf16, "q8_0": q8}


def time_llama(llama_bench: Path, model: Path, args) -> tuple[float, float, dict]:
    """One llama-bench rep of pp<prefill> and tg<decode> (after its own warm-up): tokens/s and a record."""
    rows = json.loads(run([llama_bench, "-m", model, "-t", args.threads, "-p", args.prefill, "-n", args.decode,
                           "-r", 1, "-o", "json"]))
    pp = next(r for r in rows if r["n_prompt"] and not r["n_gen"])
    tg = next(r for r in rows if r["n_gen"] and not r["n_prompt"])
    return pp["avg_ts"], tg["avg_ts"], tg


def busy_cores(interval: float = 0.5) -> float:
    """Cores kept busy by other processes over `interval` seconds (we sleep meanwhile); 0 off Linux."""
    def snap():
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait
    try:
        (t0, i0), _, (t1, i1) = snap(), time.sleep(interval), snap()
    except OSError:
        return 0.0
    return os.cpu_count() * (1 - (i1 - i0) / max(t1 - t0, 1))


def wait_idle(limit_s: float, threshold: float = 0.25) -> float:
    """Wait up to `limit_s` for other processes to leave the cores alone; the busy cores measured last."""
    t, busy = time.perf_counter(), busy_cores()
    if busy > threshold and limit_s > 0:
        print(f"    {busy:.1f} cores busy with other work: waiting up to {limit_s:.0f}s", flush=True)
    while busy > threshold and time.perf_counter() - t < limit_s:
        busy = busy_cores()
    return busy


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"), help="llama-bench binary")
    ap.add_argument("--convert", default=os.environ.get("LLAMA_CONVERT"), help="llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--quantize", default=os.environ.get("LLAMA_QUANTIZE"), help="llama-quantize binary")
    ap.add_argument("--size", default="mid", choices=list(SIZES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wait-idle", type=float, default=60,
                    help="before each timed run, wait up to this many seconds for other processes to go idle")
    ap.add_argument("--workdir", help="keep the checkpoint and GGUF files here (default: a temporary directory)")
    args = ap.parse_args()
    env = {"llama_bench": "LLAMA_BENCH", "convert": "LLAMA_CONVERT", "quantize": "LLAMA_QUANTIZE"}
    missing = [f"--{k.replace('_', '-')} PATH (or {v}=PATH)" for k, v in env.items() if not getattr(args, k)]
    if missing:
        sys.exit("error: needs an existing llama.cpp build; pass " + ", ".join(missing)
                 + ": the llama-bench binary, llama.cpp's convert_hf_to_gguf.py and the llama-quantize binary")
    for k in env:
        if not Path(getattr(args, k)).is_file():
            sys.exit(f"error: --{k.replace('_', '-')} {getattr(args, k)}: no such file")
    torch.set_num_threads(args.threads)
    import hetero_qwen
    from hetero_qwen.kernels import cpp
    kernels = f"C++ {cpp.isa()}" if cpp.available() else "Numba fallback (C++ kernels not built)"
    if not cpp.available():
        print(f"warning: timing our slower fallback kernels. {cpp.BUILD_HINT}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        hf_dir = work / "hf"
        t = step(f"building the random {args.size} checkpoint (bf16) in {hf_dir}")
        hf = make_checkpoint(args.size, torch.bfloat16, hf_dir)
        params = sum(p.numel() for p in hf.parameters())
        del hf
        step(f"  {params / 1e6:.1f}M params in {time.perf_counter() - t:.0f}s")
        gguf = make_gguf(hf_dir, work, Path(args.convert), Path(args.quantize))

        step("loading our engine (bf16 and int8 CPU weights)")
        ours = {f: hetero_qwen.load(hf_dir, dtype="bf16", quiet=True,
                                    profile={"cpu": {"ram": "16GiB", "threads": args.threads}, "context": 4096,
                                             "weights": {"cpu_dtype": f}})
                for f in ("bf16", "int8")}
        prompt = [(i * 37) % (SIZES[args.size]["vocab_size"] - 1) + 1 for i in range(args.prefill)]
        for eng in ours.values():
            time_ours(eng, prompt, 2)  # warm-up at full prompt length; llama-bench warms up inside each run
        pairs = [("ours bf16", "bf16"), ("llama.cpp bf16", "bf16"), ("ours int8", "int8"), ("llama.cpp q8_0", "q8_0")]
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in pairs}
        busy: dict[str, list[float]] = {name: [] for name, _ in pairs}
        llama_info = {}
        for r in range(args.repeats):  # alternate so drift hits every contender equally
            for name, fmt in pairs:
                step(f"round {r + 1}/{args.repeats}: {name}")
                busy[name].append(wait_idle(args.wait_idle))
                if name.startswith("ours"):
                    runs[name].append(time_ours(ours[fmt], prompt, args.decode))
                else:
                    pre, dec, llama_info = time_llama(Path(args.llama_bench), gguf[fmt], args)
                    runs[name].append((pre, dec))
                print(f"    prefill {runs[name][-1][0]:8.1f}  decode {runs[name][-1][1]:7.1f} tok/s "
                      f"({busy[name][-1]:.1f} cores busy with other work just before)", flush=True)

    med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in runs.items()}
    best = {k: (max(p for p, _ in v), max(d for _, d in v)) for k, v in runs.items()}
    rows = []
    print(f"\n{args.size} ({params / 1e6:.1f}M params), {args.threads} threads, {cpu_model()}; "
          f"tokens/s, median of {args.repeats} (best in brackets)")
    pp, tg = f"pp{args.prefill}", f"tg{args.decode}"
    print(f"{'':16s} {pp:>18s} {tg:>18s}")
    for ours_name, theirs_name in (("ours bf16", "llama.cpp bf16"), ("ours int8", "llama.cpp q8_0")):
        (op, od), (lp, ld) = med[ours_name], med[theirs_name]
        for name in (ours_name, theirs_name):
            print(f"{name:16s} " + " ".join(f"{m:8.1f} [{b:7.1f}]" for m, b in zip(med[name], best[name])))
        print(f"{'  ours / theirs':16s} {op / lp:8.2f}x {'':9s} {od / ld:8.2f}x")
        rows.append({"ours": ours_name, "llama_cpp": theirs_name, "ours_prefill_tok_s": op, "ours_decode_tok_s": od,
                     "llama_prefill_tok_s": lp, "llama_decode_tok_s": ld,
                     "prefill_ratio": op / lp, "decode_ratio": od / ld,
                     "best": {ours_name: best[ours_name], theirs_name: best[theirs_name]}})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).parent).stdout.strip()
    out = {"bench": "compare_llamacpp", "size": args.size, "params": params, "threads": args.threads,
           "prefill_tokens": args.prefill, "decode_tokens": args.decode, "repeats": args.repeats,
           "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
                       "ours_commit": commit, "ours_kernels": kernels,
                       "llama_cpp": {k: llama_info.get(k) for k in ("build_commit", "build_number", "cpu_info",
                                                                    "backends", "flash_attn", "n_batch", "n_ubatch")}},
           "notes": "llama-bench tg starts from an empty context; ours decodes after the prefill prompt. "
                    "GGUF from convert_hf_to_gguf.py (bf16) with a 512-id byte-level tokenizer padded to the "
                    "model's vocab; q8_0 by llama-quantize. Ours: bf16 / int8 CPU weights.",
           "results": rows, "runs": runs, "busy_cores_before": busy}
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    dest = Path(__file__).with_name("results") / "compare_llamacpp.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
