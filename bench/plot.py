"""Charts from bench/results/*.json -> bench/results/*.png (README pictures).

  python bench/plot.py            # needs matplotlib (pip install -e ".[bench]")
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str):
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def main() -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit('error: bench/plot.py needs matplotlib: pip install -e ".[bench]"')
    made = []

    cmp = load("compare_cpu.json")
    if cmp:  # decode and prefill tokens/s: ours per CPU format vs transformers, per model size
        rows = cmp["results"]
        sizes = sorted({r["size"] for r in rows}, key=lambda s: [r["size"] for r in rows].index(s))
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, key, title in ((axes[0], "decode", "decode tokens/s"), (axes[1], "prefill", "prefill tokens/s")):
            labels, vals = [], []
            for s in sizes:
                rs = [r for r in rows if r["size"] == s]
                labels.append(f"{s}\ntransformers")
                vals.append(rs[0][f"hf_{key}_tok_s"])
                for r in rs:
                    labels.append(f"{s}\nours {r.get('format', 'bf16')}")
                    vals.append(r[f"ours_{key}_tok_s"])
            colors = ["#999999" if "transformers" in lab else "#1f77b4" for lab in labels]
            ax.bar(range(len(vals)), vals, color=colors)
            ax.set_xticks(range(len(vals)), labels, fontsize=7)
            ax.set_title(f"{title} ({rows[0]['threads']} threads, {rows[0]['dtype']})")
            ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(RESULTS / "compare_cpu.png", dpi=110)
        made.append("compare_cpu.png")

    runs = [load(f"run_27b_cpu-{f}.json") for f in ("int4", "int8")]
    runs = [r for r in runs if r]
    if runs:  # measured vs predicted vs roofline on the real 27B shape
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        x = range(len(runs))
        w = 0.27
        ax.bar([i - w for i in x], [r["decode_tokens_per_s"] for r in runs], w, label="measured")
        ax.bar(list(x), [r["predicted_tokens_per_s"] for r in runs], w, label="planner prediction")
        ax.bar([i + w for i in x], [r["roofline_tokens_per_s"] for r in runs], w, label="bandwidth roofline")
        ax.set_xticks(list(x), [f"27B {r['dtype']} ({100 * r['roofline_fraction']:.0f}% of roofline)" for r in runs])
        ax.set_ylabel("decode tokens/s")
        ax.legend(fontsize=7)
        ax.set_title("Qwen3.6-27B shape, CPU only")
        fig.tight_layout()
        fig.savefig(RESULTS / "run_27b_cpu.png", dpi=110)
        made.append("run_27b_cpu.png")

    for k in sorted(p for p in RESULTS.glob("kernels-*.json") if not p.stem.endswith("-rows")):  # sweeps: tables only
        d = json.loads(k.read_text())
        runs = d.get("runs") or {str(d.get("threads")): d}  # one entry per thread count
        fig, ax = plt.subplots(figsize=(9, 3.6))
        width = 0.8 / max(len(runs), 1)
        labels = None
        for j, (threads, run) in enumerate(sorted(runs.items())):
            rows = [r for r in run["results"] if r.get("batch", 1) == 1 and r.get("backend", "cpp") == "cpp"]
            labels = labels or [f"{r['kernel']}\n{r.get('shape', '')}\n{r['format']}" for r in rows]
            ax.bar([i + j * width for i in range(len(rows))], [100 * r["bw_fraction"] for r in rows], width,
                   label=f"{threads} thread{'s' if threads != '1' else ''}")
        if labels:
            ax.axhline(80, color="r", lw=0.8, ls="--", label="target 80% (bf16: 75%)")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, fontsize=6)
            ax.set_ylabel("% of measured read bandwidth")
            ax.set_title("CPU kernels, batch 1, cold weights (bench/kernels.py)")
            ax.legend(fontsize=7)
            fig.tight_layout()
            out = RESULTS / f"{k.stem}.png"
            fig.savefig(out, dpi=110)
            made.append(out.name)

    print("wrote " + ", ".join(made) if made else "no results to plot")


if __name__ == "__main__":
    main()
