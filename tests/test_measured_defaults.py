"""Measured defaults live in hetero_qwen/measured_defaults.py, labelled, and are what the code uses;
the C++ compile-time mirrors agree with csrc/; `hetero-qwen probe` measures this machine's kernel
share of bandwidth and per-op cost into a profile that parses (values checked for sanity only)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from hetero_qwen import kernel_probe, measured_defaults as md
from hetero_qwen.formats import INT4_GROUP
from hetero_qwen.kernels import cpp, dispatch
from hetero_qwen.planner import cost
from hetero_qwen.probe import profile_yaml
from hetero_qwen.profile import DEFAULTS, load_profile

CSRC = Path(__file__).resolve().parents[1] / "csrc"
C_KNOBS = {"prefetch_bytes": "g_pf_dist", "min_split_bytes": "g_min_split", "spin_us": "g_spin_us",
           "prefetch_long_block": "g_pf_long", "prefetch_l2_row": "g_pf_l2_row", "rows_per_block": "g_rows1"}


def test_every_default_says_what_it_was_measured_on_and_how():
    rows = md.table()
    assert {r[0] for r in rows} >= {"CPU_KERNEL_EFFICIENCY", "CPU_OP_OVERHEAD", "SMALL_BATCH", "INT4_GROUP",
                                    "KERNEL_TUNING.prefetch_bytes", "ROWS_PER_BLOCK_AVX512"}
    for name, _value, on, how in rows:
        assert on and how and ("bench/" in how or "commit" in how), name


def test_the_code_uses_the_measured_defaults():
    assert cost.CPU_KERNEL_EFFICIENCY is md.CPU_KERNEL_EFFICIENCY.value
    assert DEFAULTS.cpu_op_overhead == md.CPU_OP_OVERHEAD.value
    assert dispatch.SMALL_BATCH == md.SMALL_BATCH.value
    assert INT4_GROUP == md.INT4_GROUP.value


def _c_int(expr: str) -> int:
    return eval(expr, {})  # an integer literal expression such as 256 * 1024 or 256 << 10


def test_the_cpp_initial_values_and_compile_time_constants_mirror_the_module():
    api = (CSRC / "hq_api.cpp").read_text()
    for key, var in C_KNOBS.items():
        m = re.search(rf"int64_t {var} = ([^;]+);", api)
        assert m and _c_int(m.group(1)) == md.KERNEL_TUNING[key].value, key
    m = re.search(r"t\.len \* D \* nkv \* 4 > \(([^)]+)\)", api)
    assert _c_int(m.group(1)) == md.ATTN_ALL_THREADS_BYTES.value
    assert re.search(rf"#define HQ_G {INT4_GROUP}\b", (CSRC / "hq_api.h").read_text())
    impl = (CSRC / "hq_impl.h").read_text()
    at = impl.index("// R1(row bytes)")  # the per-format table, AVX-512 branch first
    avx512 = impl[at:impl.index("#else", at)]
    assert "struct Bf16K { static int R1(int64_t) { return 2; }" in avx512
    assert "struct Int8K { static int R1(int64_t rb) { return rb >= 8192 ? 8 : 1; }" in avx512
    assert "struct Int4K { static int R1(int64_t rb) { return rb >= 2048 ? 1 : 2; }" in avx512
    assert md.ROWS_PER_BLOCK_AVX512.value == {"bf16": "2", "int8": "8 on rows >= 8192 bytes, else 1",
                                              "int4": "1 on rows >= 2048 bytes, else 2"}


@pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")
def test_the_library_runs_with_the_module_s_tuning():
    cpp.reload()
    for key, m in md.KERNEL_TUNING.items():
        assert cpp.tune(key) == m.value, key


def _measurement(**kernels) -> dict:
    return {"threads": 2, "ram_available": 8 * 2**30, "bw_cpu": 30e9, "cpu_flops": 2e11, **kernels}


def test_a_probed_profile_with_kernel_measurements_parses_and_feeds_the_cost_model():
    text = profile_yaml(_measurement(cpu_efficiency={"bf16": 0.93, "int8": 1.01, "int4": 2.7}, cpu_op_overhead=31e-6))
    p = load_profile(yaml.safe_load(text), name="probed")
    assert p.cpu_efficiency == (("bf16", 0.93), ("int4", 1.5), ("int8", 1.01))  # 2.7 clamped to the allowed 1.5
    assert p.cpu_op_overhead == pytest.approx(31e-6)
    assert cost.cpu_efficiency(p) == 0.93  # the profile's cpu_dtype (bf16)
    assert cost.cpu_efficiency(p.replace(cpu_dtype="int8")) == 1.01
    assert cost.cpu_efficiency(p.replace(cpu_dtype="fp32")) == md.CPU_KERNEL_EFFICIENCY.value["fp32"]
    without = load_profile(yaml.safe_load(profile_yaml(_measurement())), name="probed")
    assert without.cpu_efficiency is None and without.cpu_op_overhead == md.CPU_OP_OVERHEAD.value


def test_cpu_efficiency_per_format_is_validated():
    assert load_profile({"cpu": {"efficiency": 0.9}}).cpu_efficiency == 0.9
    with pytest.raises(Exception, match="cpu.efficiency"):
        load_profile({"cpu": {"efficiency": {"int3": 0.9}}})
    with pytest.raises(Exception, match="cpu.efficiency"):
        load_profile({"cpu": {"efficiency": {"int8": 0}}})


@pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")
def test_the_kernel_probe_measures_positive_finite_shares_and_op_cost(monkeypatch):
    monkeypatch.setattr(kernel_probe, "COLD_BYTES", 8 * 2**20)  # small: a sanity run, not a benchmark
    monkeypatch.setattr(kernel_probe, "GEMV_SHAPE", (1024, 1024))
    m = kernel_probe.measure_kernels(30e9)
    assert set(m["cpu_efficiency"]) == {"bf16", "int8", "int4"}
    assert all(math.isfinite(s) and s > 0 for s in m["cpu_efficiency"].values())
    assert math.isfinite(m["cpu_op_overhead"]) and 0 < m["cpu_op_overhead"] < 1.0
    p = load_profile(yaml.safe_load(profile_yaml(_measurement(**m))), name="probed")
    assert isinstance(p.cpu_efficiency, tuple) and p.cpu_op_overhead > 0
