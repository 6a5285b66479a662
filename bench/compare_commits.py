"""CPU decode of this tree against another commit, alternating runs in one session.

A refactor must not cost speed: this checks out `--base` (default HEAD~1) into a temporary
worktree, then alternates child processes (base, this tree, base, ...) that each load the same
random Qwen3.5-shaped checkpoint (compare_cpu.py's sizes) CPU-only and time decode. Prints the
medians and the ratio this tree / base per format.

  python bench/compare_commits.py --base ca5b29d --size mid --format bf16 --format int8 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time, torch
import hetero_qwen
path, fmt, threads, prompt_n, decode_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
eng = hetero_qwen.load(path, dtype="bf16", quiet=True, profile={
    "cpu": {"ram": "16GiB", "threads": threads, "reserve": "0MiB"}, "context": 1024,
    "weights": {"cpu_dtype": fmt}})
prompt = [(7 * i + 3) % 1000 + 1 for i in range(prompt_n)]
best = 0.0
with torch.inference_mode():
    for _ in range(2):  # the first pass warms caches and the thread pool
        s = eng.session()
        tok = int(s.feed(prompt)[-1].argmax())
        t0 = time.perf_counter()
        for _ in range(decode_n):
            tok = int(s.feed([tok])[-1].argmax())
        best = max(best, decode_n / (time.perf_counter() - t0))
        s.close()
print(json.dumps({"decode_tokens_per_s": best}))
"""


def run_child(tree: Path, ckpt: Path, fmt: str, args) -> float:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), fmt, str(args.threads), str(args.prompt),
                          str(args.decode)], env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["decode_tokens_per_s"]


def base_tree(rev: str, where: Path) -> Path:
    """`rev` checked out in a worktree, with the C++ kernels built (copied when csrc/ is unchanged)."""
    tree = where / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    same = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", rev, "--", "csrc", "setup.py"]).returncode == 0
    built = sorted((ROOT / "hetero_qwen" / "kernels").glob("_hq_kernels*.so"))
    if same and built:
        shutil.copy(built[0], tree / "hetero_qwen" / "kernels" / built[0].name)
    else:
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=True,
                       capture_output=True)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD~1")
    ap.add_argument("--size", default="mid")
    ap.add_argument("--format", action="append", dest="formats")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    formats = args.formats or ["bf16", "int8"]
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from compare_cpu import make_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="hq-commits-"))
    try:
        ckpt = tmp / "ckpt"
        make_checkpoint(args.size, torch.bfloat16, ckpt)
        base = base_tree(args.base, tmp)
        rows = []
        for fmt in formats:
            times = {"base": [], "this": []}
            for _ in range(args.repeats):  # alternating: machine drift hits both alike
                times["base"].append(run_child(base, ckpt, fmt, args))
                times["this"].append(run_child(ROOT, ckpt, fmt, args))
            b, t = statistics.median(times["base"]), statistics.median(times["this"])
            rows.append({"size": args.size, "format": fmt, "base": args.base, "base_tokens_per_s": round(b, 2),
                         "this_tokens_per_s": round(t, 2), "ratio": round(t / b, 3), "runs": times})
            print(f"{args.size} {fmt}: base {b:.1f} tok/s, this tree {t:.1f} tok/s, ratio {t / b:.3f} "
                  f"(medians of {args.repeats}, {args.threads} threads)", flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "base")],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
