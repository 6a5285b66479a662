"""The planner places the MTP layer (planner/mtp.py): its weights, KV cache and the DeltaNet state
slots of a verify forward are on the tiers' lines exactly as the config's arithmetic says, k is chosen
by the predicted speed E(k) / step(k), `plan` shows it, old plans still load, and the executor loads
the layer where the plan says and only when the plan (or the user) turns it on."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import run_cli
from mtp_fixtures import add_mtp
from planner_fixtures import tiny_config, tiny_profile_dict

import hetero_qwen
from hetero_qwen import measured_defaults
from hetero_qwen.config import load_config
from hetero_qwen.errors import ProfileError
from hetero_qwen.planner import cost
from hetero_qwen.planner.context import PlanContext
from hetero_qwen.planner.mtp import expected_tokens, objective_with_mtp, verify_seconds
from hetero_qwen.planner.plan import Plan
from hetero_qwen.planner.report import render
from hetero_qwen.profile import load_profile
from placement_policies import POLICIES, make_plan

CTX = 4096
CPU_ONLY = {"cpu": {"ram": "128GiB", "reserve": "1GiB", "flops": "2TFLOPS", "op_overhead": "0us"},
            "bandwidth": {"cpu": "60GB/s"}, "context": CTX, "weights": {"cpu_dtype": "int8"},
            "workload": {"prompt_tokens": 512, "output_tokens": 256}}


def _prof(base: dict, **mtp) -> object:
    return load_profile({**base, "mtp": mtp} if mtp else base)


@pytest.fixture(scope="module")
def cfg27():
    return load_config("qwen3.6-27b")


@pytest.fixture(scope="module")
def cpu_plans(cfg27):
    """The 27B in RAM (int8), planned with MTP at a fixed k = 3 and with MTP off."""
    return (make_plan(cfg27, _prof(CPU_ONLY, draft_tokens=3)), make_plan(cfg27, _prof(CPU_ONLY, draft_tokens=0)))


def mtp_bytes(cfg, fmt: str, context: int, k: int, kv_dtype_bytes: int = 2) -> dict:
    """What the MTP layer must add, from the config alone."""
    return {"mtp": sum(g.nbytes(fmt) for g in cfg.mtp_weight_groups()),
            "mtp_kv": 2 * cfg.num_key_value_heads * cfg.head_dim * kv_dtype_bytes * context,
            "state_slots": (k + 1) * cfg.deltanet_state_bytes()}


def test_tier_lines_hold_the_mtp_layer_exactly(cfg27, cpu_plans):
    on, off = cpu_plans
    want = mtp_bytes(cfg27, "int8", CTX, 3)
    assert want["mtp"] == pytest.approx(0.85e9 / 2, rel=0.02)  # ~425M parameters at ~1 byte each
    cpu = on.tiers["cpu"]
    assert {k: cpu.lines[k] for k in want} == want
    assert not {"mtp", "mtp_kv", "state_slots"} & set(off.tiers["cpu"].lines)
    assert [g.home for g in on.groups] == [g.home for g in off.groups]
    assert cpu.used_bytes == off.tiers["cpu"].used_bytes + sum(want.values())
    m = on.mtp
    assert (m.home, m.dtype, m.draft_tokens) == ("cpu", "int8", 3)
    assert (m.bytes, m.cache_bytes, m.state_slot_bytes) == (want["mtp"], want["mtp_kv"], want["state_slots"])
    assert off.mtp.draft_tokens == 0 and off.mtp.state_slot_bytes == 0 and "off" in off.mtp.reason


def test_on_the_gpu_beside_the_head(cfg27):
    prof = {"gpu": {"vram": "80GiB"}, "cpu": {"ram": "64GiB"}, "context": CTX,
            "weights": {"gpu_dtype": "bf16"}, "mtp": {"draft_tokens": 2}}
    plan = make_plan(cfg27, load_profile(prof))
    assert all(g.home == "gpu" for g in plan.groups)
    want = mtp_bytes(cfg27, "bf16", CTX, 2)
    assert {k: plan.tiers["gpu"].lines[k] for k in want} == want
    assert plan.mtp.home == "gpu" and "mtp" not in plan.tiers["cpu"].lines and plan.fits


def test_verify_of_one_token_is_the_plans_decode(cfg27, cpu_plans):
    on, _ = cpu_plans
    ctx = PlanContext(cfg27, _prof(CPU_ONLY, draft_tokens=3))
    t1 = verify_seconds(ctx, [g.home for g in on.groups], on.predicted.hops_decode, 1)
    assert t1 == pytest.approx(on.predicted.decode_s_per_token, rel=1e-12)
    assert on.mtp.tokens_per_s_by_k[0] == pytest.approx(on.predicted.decode_tokens_per_s, rel=1e-12)


def test_speed_by_k_against_a_hand_computation(cfg27, cpu_plans):
    from hetero_qwen.planner.mtp import CPU_VERIFY_EXTRA_TOKEN
    """All in RAM, bandwidth-bound (FLOPs effectively free, no per-op cost): every term is bytes / B."""
    base = {**CPU_ONLY, "cpu": {**CPU_ONLY["cpu"], "flops": "1000000TFLOPS"}}
    plan = make_plan(cfg27, _prof(base, draft_tokens=2, acceptance=0.7))
    B = 60e9 * cost.CPU_KERNEL_EFFICIENCY["int8"]
    pos = 512 + (256 + 1) / 2
    fmt, H = "int8", cfg27.hidden_size
    groups = cfg27.weight_groups()
    from hetero_qwen.formats import matrix_bytes
    embed_row = matrix_bytes(1, H, fmt)  # one int8 row and its scale
    trunk = sum(g.nbytes(fmt) for g in groups if g.kind != "embed")
    kv_layer = 2 * cfg27.num_key_value_heads * cfg27.head_dim * 2
    kv_read = len(cfg27.full_attention_layers) * kv_layer * pos
    state = cfg27.deltanet_state_bytes()
    mtp_w = sum(g.nbytes(fmt) for g in cfg27.mtp_weight_groups())
    head_w = next(g for g in groups if g.kind == "head").nbytes(fmt)

    # a CPU forward of n tokens reads each op's weights at 1 + (n - 1) x the measured extra share
    extra = CPU_VERIFY_EXTRA_TOKEN[fmt]

    def verify(n):
        return (trunk * (1 + (n - 1) * extra) + n * embed_row + kv_read + (1 + n) * state) / B

    t_draft = (mtp_w + kv_layer * pos + head_w + embed_row) / B
    for k, got in enumerate(plan.mtp.tokens_per_s_by_k):
        E = expected_tokens(0.7, k)
        t_catchup = (mtp_w * (1 + (max(E - 1, 1) - 1) * extra) + kv_layer * pos) / B
        want = 1 / verify(1) if k == 0 else E / (k * t_draft + t_catchup + verify(k + 1))
        assert got == pytest.approx(want, rel=1e-9), k
    assert expected_tokens(0.7, 2) == pytest.approx(1 + 0.7 + 0.49)


def test_k_follows_the_acceptance(cfg27):
    """CPU-bound 27B: nothing accepted -> off (and nothing charged); 0.85 -> some k > 0 that is faster."""
    none = make_plan(cfg27, _prof(CPU_ONLY, acceptance=0.0))
    assert none.mtp.draft_tokens == 0 and "no k pays" in none.mtp.reason
    assert "mtp" not in none.tiers["cpu"].lines
    good = make_plan(cfg27, _prof(CPU_ONLY, acceptance=0.85))
    m = good.mtp
    assert 1 <= m.draft_tokens <= 4 and m.acceptance == 0.85
    assert m.decode_tokens_per_s_mtp == max(m.tokens_per_s_by_k) > m.decode_tokens_per_s
    default = make_plan(cfg27, _prof(CPU_ONLY))
    assert default.mtp.acceptance == measured_defaults.MTP_ACCEPTANCE.value


def test_profile_keys():
    p = load_profile({"mtp": {"acceptance": 0.7, "draft_tokens": 3}})
    assert (p.mtp_acceptance, p.mtp_draft_tokens) == (0.7, 3)
    assert load_profile({"mtp": {"draft_tokens": "auto"}}).mtp_draft_tokens == "auto"
    with pytest.raises(ProfileError, match=r"mtp\.acceptance: 1\.5 is not a share"):
        load_profile({"mtp": {"acceptance": 1.5}})
    with pytest.raises(ProfileError, match=r"mtp\.draft_tokens: 7 is not allowed \(use auto or"):
        load_profile({"mtp": {"draft_tokens": 7}})


def test_trimmed_draft_vocabulary_prices_fewer_head_rows(cfg27):
    """mtp.draft_vocab N: a draft reads N of the head's 248320 rows; the plan records N and shows it."""
    full = make_plan(cfg27, _prof(CPU_ONLY, draft_tokens=2))
    trimmed = make_plan(cfg27, _prof(CPU_ONLY, draft_tokens=2, draft_vocab=32768))
    assert full.mtp.draft_vocab == 0 and trimmed.mtp.draft_vocab == 32768
    f, t = full.mtp.tokens_per_s_by_k, trimmed.mtp.tokens_per_s_by_k
    assert t[0] == f[0] and all(a > b for a, b in zip(t[1:], f[1:]))
    assert "drafts from token ids < 32768" in render(trimmed) and "drafts from" not in render(full)
    assert Plan.from_json(trimmed.to_json()) == trimmed
    with pytest.raises(ProfileError, match=r"mtp\.draft_vocab: 100 is not allowed"):
        load_profile({"mtp": {"draft_vocab": 100}})


def test_no_mtp_layer_no_mtp_in_the_plan():
    plan = make_plan(tiny_config(), load_profile(tiny_profile_dict()))
    assert plan.mtp is None and "MTP" not in render(plan)
    assert Plan.from_json(plan.to_json()) == plan


def test_room_is_kept_on_the_gpu_when_mtp_pays(monkeypatch):
    """A search that fills the GPU leaves MTP no room; the second one, with VRAM kept for it, wins.
    (CPU verify priced as reading the weights once: this is about the room, not the CPU's batch cost.)"""
    from hetero_qwen.planner import mtp
    from hetero_qwen.planner.run_policy import _search
    monkeypatch.setattr(mtp, "CPU_VERIFY_EXTRA_TOKEN", {f: 0.0 for f in ("bf16", "int8", "int4", "fp32")})
    monkeypatch.setattr(mtp, "CPU_VERIFY_OP_PER_TOKEN", 0.0)
    cfg = dataclasses.replace(tiny_config(), mtp_num_hidden_layers=1)
    prof = load_profile(tiny_profile_dict()).replace(gpu_dtype="bf16")  # the budgets are sized for bf16
    ctx = PlanContext(cfg, prof)
    first = _search(ctx, "auto", POLICIES["auto"])
    plan = make_plan(cfg, prof)
    assert first.mtp.draft_tokens == 0 and plan.mtp.draft_tokens > 0 and plan.fits
    assert objective_with_mtp(ctx, plan) < objective_with_mtp(ctx, first)


def test_plan_cli_shows_and_serialises_mtp(tmp_path, capsys):
    import yaml
    prof = tmp_path / "cpu.yaml"
    prof.write_text(yaml.safe_dump(CPU_ONLY))
    argv = ["plan", "--model", "qwen3.6-27b", "--profile", str(prof), "--context", str(CTX)]
    code, out, err = run_cli(argv + ["--json", "--draft-tokens", "2"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["mtp"]["draft_tokens"] == 2 and d["mtp"]["home"] == "cpu" and len(d["mtp"]["tokens_per_s_by_k"]) == 5
    plan = Plan.from_dict(d)
    assert plan.mtp.draft_tokens == 2 and Plan.from_json(plan.to_json()) == plan
    old = {k: v for k, v in d.items() if k != "mtp"}  # a plan saved before the planner placed MTP
    assert Plan.from_dict(old).mtp is None
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("  MTP"))
    by_k = next(ln for ln in out.splitlines() if "tokens/s by drafts per step k" in ln)
    assert "drafts per step" in line and "without" in line and "0: " in by_k and "4: " in by_k


# ---- the executor follows the plan ------------------------------------------------------------

@pytest.fixture(scope="module")
def mtp_dir(hf_causal, tmp_path_factory):
    return add_mtp(hf_causal[1], tmp_path_factory.mktemp("mtpplan") / "ckpt")


def _load(path, profile, **kw):
    return hetero_qwen.load(path, dtype="fp32", quiet=True, profile=profile, simulate_gpu=True, **kw)


def test_loading_follows_the_plans_placement(mtp_dir):
    from executor_cases import CASES
    gpu_head = _load(mtp_dir, {**CASES["ffn-cpu"], "mtp": {"draft_tokens": 3}})  # head on the GPU
    cpu_head = _load(mtp_dir, {**CASES["overrides"], "mtp": {"draft_tokens": 2}})  # lm_head pinned to RAM
    for eng, home, k in ((gpu_head, "gpu", 3), (cpu_head, "cpu", 2)):
        assert eng.plan.mtp.home == home and eng.mtp.device.name == home
        assert eng.draft_tokens == k and eng.speculation(None, None) == k
    # the weights charged on the GPU are the plan's MTP bytes; its KV cache comes with a session
    off = _load(mtp_dir, CASES["ffn-cpu"], mtp=False)
    assert off.mtp is None and off.plan.mtp.draft_tokens == 0
    assert gpu_head.devices.gpu.memory.used - off.devices.gpu.memory.used == gpu_head.plan.mtp.bytes
    before = gpu_head.devices.gpu.memory.used
    s = gpu_head.session()
    after = gpu_head.devices.gpu.memory.used
    s.close()
    assert after - before == gpu_head.plan.mtp.cache_bytes + sum(
        g.cache_bytes for g in gpu_head.plan.groups if g.cache and g.decode_device == "gpu")


def test_off_in_the_plan_means_not_loaded(mtp_dir):
    from hetero_qwen.errors import InputError
    eng = _load(mtp_dir, {"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256,
                          "mtp": {"acceptance": 0.0}})
    assert eng.plan.mtp.draft_tokens == 0 and eng.mtp is None and eng.speculation(None, None) == 0
    with pytest.raises(InputError, match="MTP layer is not loaded .*no k pays"):
        eng.speculation(True, None)
    forced = _load(mtp_dir, {"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256,
                             "mtp": {"acceptance": 0.0}}, mtp=True)  # --mtp: the best k >= 1
    assert forced.mtp is not None and forced.plan.mtp.draft_tokens >= 1
    assert forced.draft_tokens == forced.plan.mtp.draft_tokens


def test_a_reply_without_drafts_skips_the_mtp_layer(mtp_dir):
    eng = _load(mtp_dir, {"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256,
                          "mtp": {"draft_tokens": 2}})
    ref = list(eng.generate([5, 9, 13, 2, 7], max_new_tokens=6, mtp=False))

    def boom(*a, **k):
        raise AssertionError("the MTP layer ran")
    eng.mtp.forward = boom
    assert list(eng.generate([5, 9, 13, 2, 7], max_new_tokens=6, mtp=False)) == ref
    assert eng.session(mtp=False).mtp is None and eng.session().mtp is not None


def test_an_old_plan_falls_back_to_the_heads_placement(mtp_dir):
    import torch
    from hetero_qwen.executor.mtp import mtp_placement
    from executor_cases import CASES
    eng = _load(mtp_dir, {**CASES["ffn-cpu"], "mtp": {"draft_tokens": 2}})
    old = dataclasses.replace(eng.plan, mtp=None)
    head = next(g for g in old.groups if g.kind == "head")
    assert mtp_placement(eng.cfg, old, head, 256, torch.float32) == head
    new = mtp_placement(eng.cfg, eng.plan, head, 256, torch.float32)
    assert (new.home, new.decode_device, new.bytes) == ("gpu", "gpu", eng.plan.mtp.bytes)
