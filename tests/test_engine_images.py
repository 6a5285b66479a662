"""Images through the engine (hetero_qwen.load -> Session / generate) against transformers'
Qwen3_5ForConditionalGeneration: the saved HF oracle of tests/vision_fixtures.py (fp32 logits and
greedy continuations for prompts with one and with two images of different sizes), bf16, every
placement policy on the simulated GPU, decode positions after an image (CPU fast path, prompt-cache
restore), and --text-only / `vision: off` planning and loading without the tower."""

import copy
import shutil

import pytest
import torch
from PIL import Image

import hetero_qwen
from executor_cases import CASES
from hetero_qwen.chat.prompt_cache import PromptCache
from hetero_qwen.errors import InputError
from hetero_qwen.image_prompt import ImagePrompt
from hetero_qwen.kernels import cpp
from hetero_qwen.planner.vision import TOWER
from hetero_qwen.vision_input import load_image_processor, prepare_images
from helpers import rel_err
from vision_fixtures import GREEDY_TOKENS, IMAGE_PAD, shared_vision_fixture

NAMES = {"one": ["a.png"], "two": ["a.png", "b.png"]}
CPU = {"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return shared_vision_fixture(tmp_path_factory)


def prepared(fx, key, **budget):
    return prepare_images(load_image_processor(fx.path, **budget), [fx.images[n] for n in NAMES[key]])


def load(fx, profile=None, **kw):
    return hetero_qwen.load(fx.path, profile=profile or CPU, quiet=True, **kw)


@pytest.mark.parametrize("chunk", [2048, 7])
@pytest.mark.parametrize("key", ["one", "two"])
def test_engine_fp32_logits_and_greedy_match_transformers(fx, key, chunk):
    """Prefill in one forward or in 7-token chunks cutting through the images."""
    o = fx.oracle[key]
    eng = load(fx, {**CPU, "prefill": {"chunk": chunk}}, dtype="fp32")
    prep = prepared(fx, key)
    assert torch.equal(prep.grid_thw, o["grid_thw"]) and torch.equal(prep.pixel_values, o["pixel_values"])
    s = eng.session()
    assert rel_err(s.feed(o["ids"], all_logits=True, images=prep), o["logits"]) < 1e-4
    assert s.rope_delta < 0 and len(s.image_keys) == len(NAMES[key])  # images take fewer positions than tokens
    assert list(eng.generate(o["ids"], max_new_tokens=GREEDY_TOKENS, images=prep)) == o["greedy"]
    assert eng.stats.extra["image_tokens"] == sum(prep.token_counts)


def test_engine_without_images_is_an_error_not_text(fx):
    o = fx.oracle["one"]
    eng = load(fx)
    with pytest.raises(InputError, match="placeholder tokens but no image"):
        eng.session().feed(o["ids"])


def test_engine_bf16_within_tolerance(fx):
    o = fx.oracle["two"]
    hf16 = copy.deepcopy(fx.hf).to(torch.bfloat16)
    ids = torch.tensor([o["ids"]])
    with torch.no_grad():
        ref = hf16(input_ids=ids, pixel_values=o["pixel_values"], image_grid_thw=o["grid_thw"],
                   mm_token_type_ids=(ids == IMAGE_PAD).int()).logits[0].float()
    eng = load(fx, dtype="bf16")
    assert eng.vision.dtype == torch.bfloat16
    ours = eng.session().feed(o["ids"], all_logits=True, images=prepared(fx, "two"))
    assert rel_err(ours, ref) < 0.05
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95


@pytest.mark.parametrize("label", list(CASES))
def test_every_policy_on_the_simulated_gpu(fx, label):
    o = fx.oracle["two"]
    eng = load(fx, CASES[label], dtype="fp32")
    assert eng.devices.gpu is not None and eng.devices.gpu.simulated
    tower = eng.plan.group(TOWER)
    assert eng.vision_device.name == ("gpu" if tower.home == "gpu" else "cpu")
    assert eng.vision["pos_embed.weight"].device == eng.vision_device.torch
    prep = prepared(fx, "two")
    assert rel_err(eng.session().feed(o["ids"], all_logits=True, images=prep), o["logits"]) < 1e-4
    assert list(eng.generate(o["ids"], max_new_tokens=GREEDY_TOKENS, images=prep)) == o["greedy"]
    for tier, m in eng.memory_report().items():  # the plan's figures hold the tower and its working set
        assert m["peak_bytes"] <= eng.plan.tiers[tier].used_bytes, (tier, m)
    if label == "layers-all":  # room to spare on the GPU: the tower goes there
        assert tower.home == "gpu" and eng.plan.tiers["gpu"].lines["vision"] == eng.vision.nbytes()


def decode_logits(eng, prep, ids, follow, fast: bool, delta_shift: int = 0) -> torch.Tensor:
    """Teacher-forced decode logits after an image prompt, with the CPU fast path on or off."""
    keep = eng.runner.cpu_decode
    eng.runner.cpu_decode = keep if fast else None
    try:
        s = eng.session()
        s.feed(ids, images=prep)
        s.rope_delta += delta_shift
        return torch.stack([s.feed([t])[-1].float() for t in follow])
    finally:
        eng.runner.cpu_decode = keep


@pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")
@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_decode_after_an_image_on_the_cpu_fast_path(fx, fmt):
    o = fx.oracle["two"]
    eng = load(fx, {**CPU, "weights": {"gpu_dtype": "bf16", "cpu_dtype": fmt}}, dtype="bf16" if fmt == "bf16" else "fp32")
    assert eng.runner.cpu_decode is not None and eng.runner._fast_path(1, 1) is not None
    prep = prepared(fx, "two")
    fast = decode_logits(eng, prep, o["ids"], o["greedy"][:8], True)
    generic = decode_logits(eng, prep, o["ids"], o["greedy"][:8], False)
    assert rel_err(fast, generic) < (0.03 if fmt == "bf16" else 1e-4)
    # the check can fail: decoding at the token count (no rope delta) moves the logits
    wrong = decode_logits(eng, prep, o["ids"], o["greedy"][:8], True, delta_shift=-eng.session().rope_delta + 12)
    assert rel_err(wrong, fast) > 1e-3


def test_decode_after_an_image_continues_at_the_right_positions(fx):
    """fp32 fast path vs HF's greedy: every generated token after the image prompt."""
    o = fx.oracle["one"]
    eng = load(fx, {**CPU, "weights": {"gpu_dtype": "bf16", "cpu_dtype": "fp32"}}, dtype="fp32")
    s = eng.session()
    logits = s.feed(o["ids"], images=prepared(fx, "one"))[-1]
    out = []
    for _ in range(GREEDY_TOKENS):
        out.append(int(logits.argmax()))
        logits = s.feed([out[-1]])[-1]
    assert out == o["greedy"]
    assert s.next_position == len(s.tokens) + s.rope_delta and s.rope_delta == -4


def test_prompt_cache_restores_positions_and_keys_images_by_content(fx, tmp_path):
    o = fx.oracle["two"]
    ids, greedy = o["ids"], o["greedy"]
    eng = load(fx, {**CPU, "prefill": {"chunk": 5}}, dtype="fp32")
    prep = prepared(fx, "two")
    cache = PromptCache(eng.session())

    def prompt(extra, images=prep):
        full = ids + extra
        return full, ImagePrompt(eng.mm, full, images)

    full, ip = prompt([])
    assert rel_err(cache.sync(full, marks=[len(ids)], images=ip), o["logits"][-1]) < 1e-4
    full, ip = prompt(greedy[:8])   # continues: nothing re-fed before it
    assert int(cache.sync(full, marks=[len(ids)], images=ip).argmax()) == greedy[8]
    assert cache.last.reused == len(ids)
    full, ip = prompt(greedy[:4])   # rewinds: the DeltaNet state comes from the snapshot at the mark
    assert int(cache.sync(full, images=ip).argmax()) == greedy[4]
    assert cache.last.reused == len(ids) and cache.session.rope_delta == -12
    # the same placeholders with different pixels: the first image and all after it are re-read
    changed = tmp_path / "a.png"
    shutil.copy(fx.images["a.png"], changed)
    im = Image.open(changed).convert("RGB")
    im.putpixel((3, 3), (255, 0, 0))
    im.save(changed)
    prep2 = prepare_images(load_image_processor(fx.path), [changed, fx.images["b.png"]])
    assert prep2.token_counts == prep.token_counts and prep2.digest(0) != prep.digest(0)
    full, ip = prompt([], prep2)
    got = cache.sync(full, images=ip)
    first_image = ids.index(IMAGE_PAD)
    assert cache.last.reused <= first_image
    fresh = eng.session().feed(full, images=prep2)[-1]
    assert rel_err(got, fresh) < 1e-5 and rel_err(got, o["logits"][-1]) > 1e-6


def test_text_only_plans_and_loads_without_the_tower(fx):
    full = load(fx, CASES["layers-all"])
    text = load(fx, CASES["layers-all"], text_only=True)
    off = load(fx, {**CASES["layers-all"], "vision": False})
    assert full.vision is not None and text.vision is None and off.vision is None
    for eng in (text, off):
        assert TOWER not in {g.name for g in eng.plan.groups}
        assert "vision" not in eng.plan.tiers["gpu"].lines
        with pytest.raises(InputError, match="images are off"):
            eng.session().feed(fx.oracle["one"]["ids"], images=prepared(fx, "one"))
    lines = full.plan.tiers[full.plan.group(TOWER).home].lines
    weights, working = lines["vision"], lines["vision_working"]
    assert weights == full.mm.vision.param_bytes(4) and working == full.mm.vision.working_bytes(64 * 64, 4)
    used = sum(t.used_bytes for t in full.plan.tiers.values())
    assert used - sum(t.used_bytes for t in text.plan.tiers.values()) == weights + working
    measured = full.memory_report()[full.plan.group(TOWER).home]["used_bytes"]
    assert measured - text.memory_report()[full.plan.group(TOWER).home]["used_bytes"] == weights
    # text still runs, identically
    ids = [5, 6, 7, 8, 9]
    assert torch.equal(full.logits(ids), text.logits(ids))


def test_a_checkpoint_without_a_tower_loads_and_refuses_images(hf_causal, fx):
    _, path = hf_causal
    eng = hetero_qwen.load(path, profile=CPU, quiet=True)
    assert eng.mm is None and TOWER not in {g.name for g in eng.plan.groups}
    with pytest.raises(InputError, match="no vision tower"):
        eng.session().feed([1, 2, 3], images=prepared(fx, "one"))


def test_27b_plan_puts_the_tower_on_the_gpu_when_it_fits_else_ram():
    from hetero_qwen.config import load_config
    from hetero_qwen.planner.report import render
    from hetero_qwen.profile import load_profile
    from hetero_qwen.vision_config import load_multimodal_config
    from placement_policies import make_plan
    cfg, mm = load_config("qwen3.6-27b"), load_multimodal_config("qwen3.6-27b")
    assert mm.vision.params == 460_730_096
    big = load_profile({"gpu": {"vram": "141GB"}, "cpu": {"ram": "64GiB"}, "context": 8192})
    small = load_profile({"gpu": {"vram": "24GiB"}, "cpu": {"ram": "64GiB"}, "context": 8192,
                          "weights": {"gpu_dtype": "bf16"}})  # int4 would leave room for the tower
    on_gpu = make_plan(cfg, big, model="qwen3.6-27b", vision=mm.vision)
    tower = on_gpu.group(TOWER)
    assert tower.home == "gpu" and tower.bytes == 921_460_192
    assert on_gpu.tiers["gpu"].lines["vision_working"] == mm.vision.working_bytes(16777216)
    assert make_plan(cfg, small, model="qwen3.6-27b", vision=mm.vision).group(TOWER).home == "cpu"
    assert "vision tower" in render(on_gpu)
    text = make_plan(cfg, big, model="qwen3.6-27b")
    assert on_gpu.tiers["gpu"].used_bytes - text.tiers["gpu"].used_bytes == tower.bytes + mm.vision.working_bytes(16777216)


def test_profile_vision_keys(tmp_path):
    from hetero_qwen.errors import ProfileError
    from hetero_qwen.profile import load_profile
    p = tmp_path / "p.yaml"
    p.write_text("vision: off\nimage_max_pixels: 1048576\n")
    prof = load_profile(p)
    assert prof.vision is False and prof.image_max_pixels == 1048576
    assert load_profile(None).vision is True and load_profile(None).image_max_pixels is None
    p.write_text("vision: maybe\n")
    with pytest.raises(ProfileError, match=r"p.yaml:1: vision: 'maybe' is not true/false \(use on or off\)"):
        load_profile(p)
