"""bench/gpu_check.py, checked without a GPU: its --simulate mode runs every speed row on a tiny
cut of the 27B shapes; a row that raises keeps its error and the rows after it still run; the
accelerate baseline is timed by the same recipe as ours."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import hetero_qwen
from executor_cases import IDS, profile
from helpers import ROOT, load_bench, rel_err
from hf_models import hf_logits

SPEED_CASES = ["long-prompt", "long-prompt-streamed", "int8-streamed", "int4-streamed", "gpu-int4", "gpu-int8",
               "gpu-fp8", "disk-streamed", "ffn-cpu", "layers", "auto"]


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    """One --simulate run over 4 layers with the int8 row made to fail (body and cleanup)."""
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--simulate", "--skip-equivalence",
           "--layers", "4", "--vram", "64MB", "--chunk", "32", "--prefill", "80", "--long-cache", "64",
           "--decode", "3", "--threads", "1", "--time-budget", "600", "--row-seconds", "1",
           "--inject-failure", "int8-streamed", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def test_simulated_run_writes_every_speed_row_under_its_cap(simulated_run):
    rows = {r["case"]: r for r in simulated_run["speed"]}
    assert list(rows) == SPEED_CASES + ["hf-accelerate"]
    for case in SPEED_CASES:
        if case == "int8-streamed":
            continue
        r = rows[case]
        assert "error" not in r, r
        assert r["within_cap"] and 0 < r["peak_gpu_reserved_bytes"] <= r["cap_bytes"]
        assert r["peak_gpu_bytes"] <= r["planned_gpu_bytes"]
        assert r["decode_tokens"] == 3 and r["prefill_tokens_per_s"] > 0
    assert rows["long-prompt"]["prompt_tokens"] == 3 * 32 and rows["long-prompt"]["cached_tokens"] == 64
    assert "attention_working_set" in rows["long-prompt"]["planned_gpu_lines"]
    assert "d" in rows["disk-streamed"]["homes"] and rows["disk-streamed"]["streamed_bytes"] > 0
    assert rows["int4-streamed"]["streamed_bytes"] > 0
    assert rows["int4-streamed"]["planned_gpu_lines"]["dequant_tile_working_set"] > 0
    assert "skipped" in rows["hf-accelerate"]
    for fmt in ("int4", "int8", "fp8"):  # whole cut on the GPU in each format, with its roofline share
        r = rows[f"gpu-{fmt}"]
        assert set(r["homes"]) <= {"g", "c"} and r["homes"][1:].count("c") == 0, r["homes"]
        assert r["roofline_fraction"] > 0 and 0 < r["planner_share"] <= 1
    assert rows["gpu-int4"]["decode_gpu_bytes_per_token"] < rows["gpu-int8"]["decode_gpu_bytes_per_token"]
    (lo,) = simulated_run["launch_overhead"]
    assert lo["s_per_token_at_64_layers"] == pytest.approx(lo["s_per_token"] * 16) and lo["planned_27b_int4_s_per_token"] > 0


def test_gpu_formats_equal_their_dequantized_reference_in_the_check():
    gc = load_bench("gpu_check")
    results = {}
    gc.format_equivalence(results, simulate=True)
    rows = results["format_equivalence"]
    assert len(rows) == 6 and all(r["ok"] for r in rows), rows
    assert {r["format"] for r in rows} == {"int4", "int8", "fp8"}


def test_a_failing_row_keeps_its_error_and_later_rows_run(simulated_run):
    rows = {r["case"]: r for r in simulated_run["speed"]}
    failed = rows["int8-streamed"]
    assert failed["error"] == "InjectedFailure: injected failure in row int8-streamed"
    assert failed["cleanup_error"].startswith("InjectedFailure: injected cleanup failure")
    assert "error" not in rows["int4-streamed"] and rows["int4-streamed"]["within_cap"]


def test_run_row_saves_the_row_before_its_cleanup(monkeypatch):
    """The JSON holds the failed row (with its error) before the cleanup runs, and a cleanup
    that raises (a sticky CUDA error in torch.cuda.synchronize) is recorded, not propagated."""
    gc = load_bench("gpu_check")
    rows, saved = [], []

    def sticky():
        saved.append(("cleanup starts; saved so far", [dict(r) for r in rows]))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(gc, "free_cuda", sticky)

    def body(row):
        raise RuntimeError("CUDA error: out of memory")
    gc.run_row(rows, {"case": "x"}, body, lambda: saved.append(("save", [dict(r) for r in rows])))
    assert saved[0] == ("save", [{"case": "x", "error": "RuntimeError: CUDA error: out of memory"}])
    assert saved[1][0].startswith("cleanup")
    assert rows[0]["cleanup_error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert saved[-1][1] == rows  # saved again with the cleanup error


def test_accelerate_is_timed_like_our_rows():
    """Same warm-up (32 tokens, then one decode step) and the same number of timed decode tokens."""
    gc = load_bench("gpu_check")
    calls = []

    class FakeHF:
        def forward(self, input_ids, use_cache=True, past_key_values=None, logits_to_keep=None):
            pass

        def __call__(self, ids, use_cache=True, past_key_values=None, logits_to_keep=None):
            calls.append((ids.shape[1], past_key_values is not None))
            return SimpleNamespace(logits=torch.zeros(1, 1, 8), past_key_values=object())
    out = gc.hf_generation(FakeHF(), list(range(1, 50)), 16, simulate=True)
    assert calls[:3] == [(32, False), (1, True), (49, False)]
    assert calls[3:] == [(1, True)] * 16 and out["decode_tokens"] == 16


def test_cut_checkpoint_loads_the_same_in_transformers(tmp_path):
    """The speed part's random 27B cut (shrunk, drawn on the CPU) is the same model for hetero-qwen
    and for the HF accelerate baseline: no key left randomly initialised by HF."""
    from transformers import AutoModelForCausalLM
    gc = load_bench("gpu_check")
    gc.write_27b_cut(tmp_path, 4, device="cpu", text_overrides=gc.SIM_SHAPES)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    eng = hetero_qwen.load(tmp_path, profile=profile("ffn-cpu"), quiet=True, dtype="fp32")
    assert rel_err(eng.logits(IDS[:40]), hf_logits(hf, IDS[:40])) < 1e-3


def test_accelerate_row_says_when_accelerate_is_missing(monkeypatch, tmp_path):
    import importlib.util
    gc = load_bench("gpu_check")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    row = gc.accelerate_row({}, str(tmp_path), 1 << 30, [1, 2, 3], SimpleNamespace(decode=4))
    assert "accelerate is not installed" in row["error"]


def test_help_runs():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--time-budget" in r.stdout and "--inject-failure" in r.stdout
