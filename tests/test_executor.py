"""The executor runs every plan (GPU tier simulated in host memory): equal to transformers,
within budgets and predictions, moving exactly the bytes it says, overlapping streamed copies."""

import pytest

import hetero_qwen
from helpers import check_matches_and_fits
from hetero_qwen.executor.devices import BudgetExceeded
from executor_cases import CASES, IDS, profile
from hf_models import hf_logits

@pytest.fixture(scope="module")
def ref(hf_causal):
    hf, path = hf_causal
    return path, hf_logits(hf, IDS)



@pytest.mark.parametrize("label", list(CASES))
def test_every_plan_matches_transformers_within_budgets(label, ref):
    path, expected = ref
    eng = hetero_qwen.load(path, profile=CASES[label], quiet=True)
    homes = {g.home for g in eng.plan.groups}
    assert eng.devices.gpu is not None and eng.devices.gpu.simulated
    # prefill in 64-token chunks (streaming ones included), then decode token by token
    # measured peaks never exceed the plan's prediction nor the budget
    check_matches_and_fits(eng, IDS, expected, 100, 110)
    if label == "disk":
        assert "disk" in homes and eng.memory_report()["disk"]["peak_bytes"] > 0
    if label == "overrides":
        assert eng.plan.group("model.layers.0.mlp").home == "cpu" and eng.plan.group("lm_head").home == "cpu"
        assert eng.runner.head.decode_device == "cpu"


@pytest.mark.parametrize("label", ["layers-700KB", "ffn-cpu", "auto", "disk"])
def test_decode_moves_exactly_the_planned_hops(label, ref):
    """Per decode token: one hidden-state hop per device change along embed -> layers -> head,
    each of hidden * 4 bytes (fp32), plus the cyclic hop the planner counts when the head's device
    differs from the embedding's (the next token's lookup)."""
    path, _ = ref
    eng = hetero_qwen.load(path, profile=CASES[label], quiet=True)
    s = eng.session()
    s.feed(IDS[:20])
    before = eng.devices.traffic.snapshot()
    s.feed([IDS[20]])
    moved = eng.devices.traffic.since(before)
    devs = [g.decode_device for g in eng.plan.groups]
    chain = sum(a != b for a, b in zip(devs, devs[1:]))
    assert moved.hops == chain
    assert moved.hops + (devs[0] != devs[-1]) == eng.plan.predicted.hops_decode
    assert moved.h2d + moved.d2h == chain * eng.cfg.hidden_size * 4
    assert moved.streamed == 0  # decode never streams weights


def test_streamed_prefill_moves_the_planned_blocks(ref):
    path, _ = ref
    eng = hetero_qwen.load(path, profile=CASES["ffn-cpu-streamed"], quiet=True)
    streamed = [g for g in eng.plan.groups if g.stream_prefill]
    assert streamed
    before = eng.devices.traffic.snapshot()
    eng.logits(IDS)  # 150 tokens: chunks of 64, 64, 22
    moved = eng.devices.traffic.since(before)
    slot_bytes = sum(eng.runner.prefetcher.groups[g.name].nbytes for g in streamed)
    assert moved.streamed == 3 * slot_bytes
    assert all(eng.runner.prefetcher.groups[g.name].nbytes <= eng.plan.stream_slot_bytes for g in streamed)


def test_copy_of_next_block_is_issued_before_current_compute_ends(ref):
    path, _ = ref
    eng = hetero_qwen.load(path, profile=CASES["ffn-cpu-streamed"], quiet=True)
    pf = eng.runner.prefetcher
    pf.timeline.clear()
    eng.logits(IDS[:64])  # one chunk: every FFN streamed once, in layer order
    events = [(e, n) for _, e, n in pf.timeline]
    order = [n for e, n in events if e == "compute_start"]
    assert order == [g.name for g in eng.plan.groups if g.stream_prefill]
    pos = {(e, n): i for i, (e, n) in enumerate(events)}
    for cur, nxt in zip(order, order[1:]):
        # block i+1's copy is issued before block i's compute ends (double buffering) ...
        assert pos[("copy_issued", nxt)] < pos[("compute_end", cur)]
        # ... and a block's compute never starts before its own copy finished
        assert pos[("copy_end", nxt)] < pos[("compute_start", nxt)]


def test_an_op_over_the_gpu_budget_is_an_error_naming_it(ref):
    path, _ = ref
    eng = hetero_qwen.load(path, profile=CASES["layers-all"], quiet=True)
    s = eng.session()  # caches charged now; then leave almost nothing for activations
    gpu = eng.devices.gpu.memory
    gpu.budget = gpu.used + 1000
    with pytest.raises(BudgetExceeded, match=r"op model\.layers\.0\.linear_attn needs .* on gpu"):
        s.feed(IDS[:64])


def test_a_plan_that_does_not_fit_is_one_line(ref, capsys):
    from helpers import run_cli
    import yaml
    path, _ = ref
    prof = path.parent / "tiny-budget.yaml"
    prof.write_text(yaml.safe_dump({"cpu": {"ram": "100KB", "reserve": "0MiB"}, "disk": {"spill": False}}))
    code, _, err = run_cli(["generate", "--model", path, "--profile", prof, "--prompt-ids", "1,2", "-n", "1"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "missing" in err and "fix:" in err


def test_engine_stats_report_traffic_devices_and_peaks(ref):
    path, _ = ref
    eng = hetero_qwen.load(path, profile=CASES["ffn-cpu"], quiet=True)
    toks = list(eng.generate(IDS[:30], max_new_tokens=5))
    st = eng.stats.as_dict()
    assert len(toks) == 5 and st["decode_tokens"] == 4 and st["prompt_tokens"] == 30
    assert st["hops"] > 0 and st["h2d_bytes"] > 0 and st["d2h_bytes"] > 0
    assert set(st["seconds_by_device"]) == {"gpu", "cpu"} and st["peak_bytes"]["gpu"] > 0
