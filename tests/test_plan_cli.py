"""`hetero-qwen plan` and `hetero-qwen probe` through the real entry point (error handling included)."""

import json

import pytest

from hetero_qwen.cli import main
from hetero_qwen.profile import load_profile

PROFILE = "placement_policies/profiles/gpu24-ram64.yaml"


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_plan_report(capsys):
    code, out, err = run(["plan", "--model", "qwen3.6-27b", "--profile", PROFILE], capsys)
    assert code == 0, err
    for needle in ("memory (used / budget)", "mixer", "ffn", "decode", "prefill", "bottleneck"):
        assert needle in out
    mixer_row = next(line for line in out.splitlines() if line.startswith("  mixer"))
    assert len(mixer_row.split()[1]) == 64  # one character per layer


def test_plan_json_and_default_model_note(tmp_path, capsys):
    code, out, err = run(["plan", "--profile", PROFILE, "--policy", "layers", "--context", "4096", "--json"], capsys)
    assert code == 0 and "qwen3.6-27b preset" in err
    d = json.loads(out)
    assert d["fits"] is True and d["policy"] == "layers" and d["context"] == 4096
    assert set(d["tiers"]) == {"gpu", "cpu", "disk"}
    assert d["tiers"]["gpu"]["used_bytes"] <= d["tiers"]["gpu"]["budget_bytes"]
    assert d["predicted"]["decode_tokens_per_s"] > 0 and d["predicted"]["prefill_tokens_per_s"] > 0
    g = d["groups"][1]
    assert g["name"] == "model.language_model.layers.0.linear_attn" and g["kind"] == "deltanet"
    assert {"bytes", "home", "decode_device", "prefill_device"} <= set(g)


def test_infeasible_is_one_line_and_nonzero(tmp_path, capsys):
    p = tmp_path / "tiny.yaml"
    p.write_text("cpu: {ram: 8GiB}\ncontext: 262144\ndisk: {spill: false}\n")
    code, out, err = run(["plan", "--profile", str(p)], capsys)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "missing" in lines[0] and "cpu_dtype: int4" in lines[0]


def test_bad_profile_and_bad_policy(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("gpu:\n  vram: 24 gigs\n")
    code, _, err = run(["plan", "--profile", str(p)], capsys)
    assert code == 2 and f"error: {p}:2: gpu.vram: '24 gigs' is not a size" in err
    code, _, err = run(["plan", "--profile", PROFILE, "--policy", "layer"], capsys)
    assert code == 2 and "did you mean 'layers'" in err


def test_probe_writes_a_valid_profile_atomically(tmp_path, capsys):
    out = tmp_path / "me.yaml"
    code, _, err = run(["probe", "--out", str(out)], capsys)
    assert code == 0, err
    p = load_profile(out)
    assert p.ram > p.cpu_reserve and p.bw_cpu > 0 and p.cpu_flops > 0
    from hetero_qwen.kernels import cpp
    if cpp.available():  # this machine's kernel share per format and per-op cost (sanity only)
        assert {f for f, _ in p.cpu_efficiency} == {"bf16", "int8", "int4"}
        assert all(0 < s <= 1.5 for _, s in p.cpu_efficiency) and 0 < p.cpu_op_overhead < 1
    assert [f.name for f in tmp_path.iterdir()] == ["me.yaml"]  # no temp file left behind
    code, _, err = run(["probe", "--out", str(tmp_path / "missing" / "x.yaml")], capsys)
    assert code == 2 and "does not exist" in err


def test_a_plan_that_spills_to_disk_suggests_smaller_cpu_weights():
    from hetero_qwen.config import load_config
    from hetero_qwen.profile import load_profile
    from placement_policies import make_plan
    plan = make_plan(load_config("qwen3.6-27b"), load_profile({"cpu": {"ram": "16GiB", "threads": 2}}))
    assert any(g.home == "disk" for g in plan.groups)
    assert any("weights.cpu_dtype: int8 or int4" in n for n in plan.notes)
