"""M-RoPE position ids and cos/sin (hetero_qwen/model/mrope.py) against transformers."""

import pytest
import torch

from hetero_qwen.config import ModelConfig, load_config
from hetero_qwen.errors import InputError
from hetero_qwen.model.mrope import (MRope, decode_position, interleave_axes, mrope_position_ids, next_position,
                                     rope_delta, text_positions)
from hetero_qwen.model.rope import Rope
from vision_fixtures import IMAGE_PAD, VISION_END, VISION_START, placeholder, shared_vision_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return shared_vision_fixture(tmp_path_factory)


def hf_rope_index(fx, ids, grid):
    input_ids = torch.tensor([ids])
    pos, delta = fx.hf.model.get_rope_index(input_ids, (input_ids == IMAGE_PAD).int(),
                                            image_grid_thw=torch.as_tensor(grid))
    return pos[:, 0], int(delta[0, 0])


PROMPTS = {
    # name: (ids, grids)
    "text-image-text": ([5, 6, 7] + placeholder(8) + [9, 10], [(1, 4, 8)]),
    "image-first-and-last": (placeholder(12) + [9] + placeholder(8), [(1, 8, 6), (1, 4, 8)]),
    "two-images-between": ([1, 2] + placeholder(8) + [3, 4, 5] + placeholder(12) + [6], [(1, 4, 8), (1, 8, 6)]),
    "tall-and-wide": ([1] + placeholder(6) + [2] + placeholder(6) + [3], [(1, 6, 4), (1, 4, 6)]),
    "video-like-t2": ([1] + placeholder(16) + [2], [(2, 4, 8)]),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_position_ids_equal_get_rope_index(fx, name):
    ids, grids = PROMPTS[name]
    ref, delta = hf_rope_index(fx, ids, grids)
    ours = mrope_position_ids(ids, grids, IMAGE_PAD, 2)
    assert torch.equal(ours, ref)
    assert rope_delta(ours) == delta


def test_fixture_prompts_equal_get_rope_index(fx):
    for o in fx.oracle.values():
        ref, _ = hf_rope_index(fx, o["ids"], o["grid_thw"])
        assert torch.equal(mrope_position_ids(o["ids"], o["grid_thw"], IMAGE_PAD, 2), ref)


def test_positions_are_prefix_stable_for_chunks_and_continuations():
    ids, grids = PROMPTS["two-images-between"]
    full = mrope_position_ids(ids, grids, IMAGE_PAD, 2)
    cut = ids.index(VISION_END) + 2                     # a chunk boundary in the text after image 1
    first = mrope_position_ids(ids[:cut], grids[:1], IMAGE_PAD, 2)
    rest = mrope_position_ids(ids[cut:], grids[1:], IMAGE_PAD, 2, start=next_position(first))
    assert torch.equal(torch.cat([first, rest], dim=1), full)


def test_decode_positions_equal_transformers_generate(fx):
    """The language model's position ids at every generate step: the prompt's M-RoPE ids, then
    next_position + n on all three axes (transformers' rope delta)."""
    o = fx.oracle["two"]
    seen = []
    lm = fx.hf.model.language_model
    h = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    ids = torch.tensor([o["ids"]])
    try:
        with torch.no_grad():
            fx.hf.generate(input_ids=ids, pixel_values=o["pixel_values"], image_grid_thw=o["grid_thw"],
                           mm_token_type_ids=(ids == IMAGE_PAD).int(), max_new_tokens=5, min_new_tokens=5,
                           do_sample=False, pad_token_id=0, eos_token_id=None)
    finally:
        h.remove()
    prompt = mrope_position_ids(o["ids"], o["grid_thw"], IMAGE_PAD, 2)
    assert torch.equal(seen[0][-3:, 0], prompt)          # rows t, h, w (row 0 is the text stream)
    assert next_position(prompt) < len(o["ids"])          # the images really shift decode positions
    for n, step in enumerate(seen[1:]):
        assert step[-3:, 0].flatten().tolist() == [decode_position(prompt, n)] * 3
        assert torch.equal(step[-3:, 0], text_positions(decode_position(prompt, n), 1))


def test_placeholder_mismatch_is_one_line():
    with pytest.raises(InputError, match="image 1 has 8 tokens but the prompt holds 7"):
        mrope_position_ids([1] + [IMAGE_PAD] * 7 + [2], [(1, 4, 8)], IMAGE_PAD, 2)
    with pytest.raises(InputError, match="2 images but 1"):
        mrope_position_ids([1] + [IMAGE_PAD] * 8, [(1, 4, 8), (1, 4, 8)], IMAGE_PAD, 2)
    with pytest.raises(InputError, match="more image placeholder runs"):
        mrope_position_ids([IMAGE_PAD] * 8 + [VISION_START] + [IMAGE_PAD] * 8, [(1, 4, 8)], IMAGE_PAD, 2)


# ---- cos / sin -------------------------------------------------------------------------------
def test_cos_sin_equal_transformers_rotary_for_image_positions(fx):
    cfg = load_config(fx.path)
    o = fx.oracle["two"]
    pos = mrope_position_ids(o["ids"], o["grid_thw"], IMAGE_PAD, 2)
    rot = fx.hf.model.language_model.rotary_emb
    ref_cos, ref_sin = rot(torch.zeros(1, dtype=torch.float32), pos[:, None])
    cos, sin = MRope(cfg, (4, 2, 2)).cos_sin(pos, torch.float32)
    assert torch.equal(cos, ref_cos[0]) and torch.equal(sin, ref_sin[0])
    default_cos, _ = MRope(cfg).cos_sin(pos, torch.float32)  # sections matter: [4,2,2] != [11,11,10]
    assert not torch.equal(default_cos, cos)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope", [None, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                                         "rope_theta": 10000.0, "partial_rotary_factor": 0.25}])
def test_text_only_positions_equal_plain_rope_exactly(dtype, rope):
    cfg = load_config("qwen3.6-27b")
    if rope is not None:
        cfg = ModelConfig.from_dict({"model_type": "qwen3_5_text", "vocab_size": 10, "hidden_size": 64,
                                     "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                                     "head_dim": 64, "max_position_embeddings": 4096, "rope_parameters": rope})
    positions = torch.arange(0, 5000, 7)
    ref = Rope(cfg).cos_sin(positions, dtype)
    for pos in (positions, text_positions(0, 5000)[:, ::7]):
        ours = MRope(cfg).cos_sin(pos, dtype)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


def test_27b_interleave_gives_each_axis_its_section():
    cfg = load_config("qwen3.6-27b")
    axis = interleave_axes(cfg.rotary_dim // 2, (11, 11, 10))
    assert cfg.rotary_dim == 64
    assert [int((axis == a).sum()) for a in range(3)] == [11, 11, 10]
    assert axis[:6].tolist() == [0, 1, 2, 0, 1, 2] and axis[-3:].tolist() == [2, 0, 1]
