"""Guarantees of the planner and its policies, mostly as properties over random budgets."""

import itertools
import re
import glob

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hetero_qwen.config import load_config
from hetero_qwen.errors import PlanError
from hetero_qwen.planner import PlanContext
from hetero_qwen.planner.build import build_plan
from hetero_qwen.planner.run_policy import stream_caps
from hetero_qwen.planner.plan import Plan
from hetero_qwen.profile import load_profile
from placement_policies import POLICIES, make_plan
from tests.planner_fixtures import tiny_config, tiny_profile_dict

TINY = tiny_config()
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FMT_BYTES = {"gpu": "gpu_dtype", "cpu": "cpu_dtype"}


@st.composite
def profiles(draw, spill=None, roomy=False):
    """Random budgets for TINY; `roomy`: RAM holds every weight (the regime where auto is exact)."""
    d = tiny_profile_dict(
        gpu__vram=draw(st.sampled_from([0, 30_000, 100_000, 250_000, 400_000, 800_000])),
        cpu__ram=draw(st.integers(60_000, 1_500_000)) if not roomy else 20_000_000,
        cpu__pinned=draw(st.sampled_from([20_000, 1_000_000])),
        context=draw(st.integers(1, 2048)),
        weights={"gpu_dtype": draw(st.sampled_from(["bf16", "fp32"])),
                 "cpu_dtype": draw(st.sampled_from(["bf16", "int8", "int4"]))},
        bandwidth={"gpu": f"{draw(st.integers(100, 2000))}GB/s", "cpu": f"{draw(st.integers(10, 120))}GB/s",
                   "pcie": f"{draw(st.integers(4, 64))}GB/s", "disk": f"{draw(st.integers(1, 8))}GB/s"},
        disk={"spill": draw(st.booleans()) if spill is None else spill},
        prefill={"chunk": draw(st.sampled_from([1, 16, 64])), "stream": draw(st.sampled_from(["auto", "on", "off"]))},
    )
    return load_profile(d, name="drawn")


def plan_or_none(profile, policy, cfg=TINY):
    try:
        return make_plan(cfg, profile, policy)
    except PlanError as e:
        assert "\n" not in str(e) and "missing" in str(e)
        return None


def check_budgets(plan: Plan, profile) -> None:
    assert plan.fits
    for tier in plan.tiers.values():
        assert sum(tier.lines.values()) == tier.used_bytes <= tier.budget_bytes
    gpu_weights = sum(g.bytes for g in plan.groups if g.home == "gpu")
    cpu_weights = sum(g.bytes for g in plan.groups if g.home == "cpu")
    assert plan.tiers["gpu"].lines["weights"] == gpu_weights
    assert plan.tiers["cpu"].lines["weights"] == cpu_weights
    caches_on_gpu = sum(g.cache_bytes for g in plan.groups if g.cache and g.decode_device == "gpu")
    assert gpu_weights + caches_on_gpu <= profile.vram
    assert plan.tiers["cpu"].lines["pinned_staging"] <= profile.pinned
    for g in plan.groups:
        assert g.decode_device == ("gpu" if g.home == "gpu" else "cpu")
        if g.stream_prefill:
            assert g.home != "gpu" and g.prefill_device == "gpu" and g.bytes <= plan.stream_slot_bytes
    if not profile.has_gpu:
        assert all(g.home != "gpu" and g.prefill_device == "cpu" for g in plan.groups)
    if not profile.disk_spill:
        assert all(g.home != "disk" for g in plan.groups)


@SETTINGS
@given(profiles())
def test_every_plan_respects_every_budget(profile):
    for name in POLICIES:
        plan = plan_or_none(profile, name)
        if plan:
            check_budgets(plan, profile)


@SETTINGS
@given(profiles())
def test_auto_never_slower_than_layers_or_ffn_cpu(profile):
    auto = plan_or_none(profile, "auto")
    for other in ("layers", "ffn-cpu"):
        plan = plan_or_none(profile, other)
        if plan:
            assert auto is not None
            assert auto.predicted.objective_s <= plan.predicted.objective_s * (1 + 1e-12)


def _objective(profile):
    plan = plan_or_none(profile, "auto")
    return None if plan is None else plan.predicted.objective_s


@SETTINGS
@given(profiles(roomy=True), st.integers(1, 500_000))
def test_more_vram_never_slower(profile, extra):
    """Guaranteed where auto is exact: RAM holds every off-GPU weight (see hetero_qwen/planner/COST_MODEL.md)."""
    before, after = _objective(profile), _objective(profile.replace(vram=profile.vram + extra))
    if before is not None:
        assert after is not None and after <= before * (1 + 1e-12)


@SETTINGS
@given(profiles(roomy=True), st.sampled_from(["bw_gpu", "bw_cpu", "bw_pcie", "bw_disk", "gpu_flops", "cpu_flops"]),
       st.floats(1.01, 4.0))
def test_more_bandwidth_never_slower(profile, knob, factor):
    before = _objective(profile)
    after = _objective(profile.replace(**{knob: getattr(profile, knob) * factor}))
    if before is not None:
        assert after is not None and after <= before * (1 + 1e-12)


@SETTINGS
@given(profiles(), st.sampled_from([i for i in range(len(TINY.weight_groups()))]), st.sampled_from(["gpu", "cpu", "disk"]))
def test_overrides_win(profile, index, home):
    name = TINY.weight_groups()[index].name
    forced = profile.replace(overrides=load_profile(
        {"overrides": [{"match": re.escape(name) + "$", "home": home}]}).overrides)
    for policy in POLICIES:
        plan = plan_or_none(forced, policy)
        if plan:
            assert plan.group(name).home == home


def test_auto_is_the_exact_optimum_by_brute_force():
    """2 layers -> 6 groups: score all 2^6 GPU sets for every stream slot; the DP must match."""
    cfg = tiny_config(layers=2)
    for vram in (20_000, 60_000, 120_000):
        profile = load_profile(tiny_profile_dict(gpu__vram=vram, cpu__ram=10_000_000), name="bf")
        ctx = PlanContext(cfg, profile)
        best = min(
            plan.predicted.objective_s
            for cap in stream_caps(ctx)
            for gpu_set in itertools.product(("gpu", "cpu"), repeat=len(ctx.items))
            for plan in [build_plan(ctx, list(gpu_set), cap, "brute")]
            if plan.fits)
        assert make_plan(cfg, profile, "auto").predicted.objective_s == pytest.approx(best, rel=1e-12)


def test_no_gpu_puts_everything_on_the_cpu():
    plan = make_plan(TINY, load_profile(tiny_profile_dict(gpu={}), name="cpu-only"), "auto")
    assert {g.home for g in plan.groups} == {"cpu"} and plan.tiers["gpu"].used_bytes == 0
    assert plan.kv_home == "cpu" and plan.state_home == "cpu" and plan.predicted.hops_decode == 0


def test_ram_overflow_goes_to_disk_embedding_first():
    profile = load_profile(tiny_profile_dict(gpu={}, cpu__ram=480_000, context=16), name="small")
    plan = make_plan(TINY, profile, "auto")
    assert plan.group("model.embed_tokens").home == "disk"
    assert plan.tiers["disk"].used_bytes > 0 and plan.fits


def test_infeasible_names_shortfall_and_knobs_and_the_context_hint_works():
    profile = load_profile(tiny_profile_dict(gpu={}, cpu__ram=700_000, context=4000), name="tight")
    with pytest.raises(PlanError) as e:
        make_plan(TINY, profile, "auto")
    msg = str(e.value)
    assert msg.startswith("auto: does not fit in cpu.ram") and "missing" in msg and "cpu.ram >=" in msg
    fit = int(re.search(r"context <= (\d+)", msg).group(1))
    assert make_plan(TINY, profile, "auto", context=fit).fits


def test_infeasible_without_spill_suggests_quantized_cpu_weights():
    profile = load_profile(tiny_profile_dict(gpu={}, cpu__ram=300_000, context=8, disk={"spill": False}), name="q")
    with pytest.raises(PlanError, match=r"weights.cpu_dtype: int8 \(saves .*disk.spill: true"):
        make_plan(TINY, profile, "layers")


def test_forced_gpu_override_that_cannot_fit_is_an_error():
    profile = load_profile(tiny_profile_dict(gpu__vram=30_000, overrides=[{"match": "mlp", "home": "gpu"}]), name="o")
    with pytest.raises(PlanError, match="does not fit in gpu.vram.*overrides pin"):
        make_plan(TINY, profile, "auto")


def test_plan_json_round_trip_and_executor_lookups():
    plan = make_plan(TINY, load_profile(tiny_profile_dict(), name="t"), "auto")
    assert Plan.from_json(plan.to_json()) == plan
    d = plan.to_dict()
    assert {"fits", "policy", "tiers", "predicted", "groups"} <= set(d)
    assert {"budget_bytes", "used_bytes"} <= set(d["tiers"]["gpu"])
    g = plan.group("model.layers.3.self_attn")
    assert g.cache == "kv" and plan.cache_device(3) == g.decode_device
    assert plan.peak_bytes["gpu"] == plan.tiers["gpu"].used_bytes
    with pytest.raises(KeyError):
        plan.group("nope")


CFG_27B = load_config("qwen3.6-27b")


@pytest.mark.parametrize("path", sorted(glob.glob("placement_policies/profiles/*.yaml")))
def test_example_profiles_plan_the_27b(path):
    profile = load_profile(path)
    for policy in POLICIES:
        plan = make_plan(CFG_27B, profile, policy)
        check_budgets(plan, profile)
        assert plan.predicted.decode_tokens_per_s > 0.5


def test_27b_decode_prediction_is_the_roofline():
    """Decode is memory bound: time = sum over tiers of bytes read / bandwidth + hops * t_hop."""
    profile = load_profile("placement_policies/profiles/gpu24-ram64.yaml").replace(gpu_dtype="bf16", cpu_dtype="bf16")
    plan = make_plan(CFG_27B, profile, "auto")
    b, pr = plan.predicted.decode_bytes, plan.predicted
    from hetero_qwen.planner.cost import CPU_KERNEL_EFFICIENCY, GPU_KERNEL_EFFICIENCY, tier_bandwidth
    cpu_ops = sum(g.decode_device == "cpu" and g.kind != "embed" for g in plan.groups)
    gpu_bw = profile.bw_gpu * GPU_KERNEL_EFFICIENCY["bf16"]  # weights and caches: all bf16 on the GPU
    roofline = (b["gpu"] / gpu_bw + b["cpu"] / tier_bandwidth(profile, "cpu")
                + b["disk"] / tier_bandwidth(profile, "disk") + pr.hops_decode * profile.hop_latency
                + cpu_ops * profile.cpu_op_overhead)
    # the kernels' measured share of the bandwidth, per CPU format
    assert tier_bandwidth(profile, "cpu") == pytest.approx(profile.bw_cpu * CPU_KERNEL_EFFICIENCY[profile.cpu_dtype])
    assert pr.decode_s_per_token == pytest.approx(roofline, rel=1e-9)
    # every weight is read once per token, except the embedding (one row)
    weights = sum(g.bytes for g in plan.groups if g.kind != "embed") + 5120 * 2
    caches = b["gpu"] + b["cpu"] + b["disk"] - weights
    assert 0 < caches < 2**30


def test_27b_int4_decode_prices_each_group_in_its_format():
    """A quantized GPU plan: each group's weights at its own format's share of the GPU bandwidth
    (int4 layers, int8 head), caches at the bf16 share."""
    from hetero_qwen.planner.cost import GPU_KERNEL_EFFICIENCY
    profile = load_profile("placement_policies/profiles/gpu24-ram64.yaml").replace(gpu_dtype="int4")
    plan = make_plan(CFG_27B, profile, "auto")
    assert all(g.home == "gpu" for g in plan.groups)
    assert {g.kind: g.dtype for g in plan.groups if g.kind in ("head", "embed", "ffn")} == {
        "head": "int8", "embed": "bf16", "ffn": "int4"}
    weights = sum(g.bytes / GPU_KERNEL_EFFICIENCY[g.dtype] for g in plan.groups if g.kind != "embed")
    weights += 5120 * 2 / GPU_KERNEL_EFFICIENCY["bf16"]  # one embedding row
    cache = plan.predicted.decode_bytes["gpu"] - sum(g.bytes for g in plan.groups if g.kind != "embed") - 5120 * 2
    expected = (weights + cache / GPU_KERNEL_EFFICIENCY["bf16"]) / profile.bw_gpu
    assert plan.predicted.decode_s_per_token == pytest.approx(expected, rel=1e-9)
