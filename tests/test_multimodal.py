"""Images through the language model against transformers' Qwen3_5ForConditionalGeneration:
the embedding scatter, and the whole multimodal path (logits and greedy decode) against HF's
saved fp32 oracle (`hf_oracle.pt` in the fixture directory)."""

import copy

import pytest
import torch

from hetero_qwen.errors import InputError
from hetero_qwen.model.mrope import next_position, text_positions
from hetero_qwen.model.multimodal import MultimodalModel, scatter_image_embeds
from helpers import rel_err
from vision_fixtures import GREEDY_TOKENS, IMAGE_PAD, VISION_END, shared_vision_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return shared_vision_fixture(tmp_path_factory)


@pytest.fixture(scope="module")
def ours(fx):
    return MultimodalModel(fx.path)


def hf_inputs_embeds(fx, o):
    """The inputs_embeds transformers hands its language model (images already scattered in)."""
    seen = {}

    def hook(module, args, kwargs):  # returns None: the call goes on unchanged
        seen.setdefault("x", kwargs["inputs_embeds"].clone())
    h = fx.hf.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    ids = torch.tensor([o["ids"]])
    try:
        with torch.no_grad():
            fx.hf(input_ids=ids, pixel_values=o["pixel_values"], image_grid_thw=o["grid_thw"],
                  mm_token_type_ids=(ids == IMAGE_PAD).int())
    finally:
        h.remove()
    return seen["x"][0]


@pytest.mark.parametrize("key", ["one", "two"])
def test_scatter_equals_transformers_inputs_embeds(fx, ours, key):
    o = fx.oracle[key]
    ids = torch.tensor(o["ids"])
    x = scatter_image_embeds(ours.embed[ids], ours.encode_images(o["pixel_values"], o["grid_thw"]), ids == IMAGE_PAD)
    ref = hf_inputs_embeds(fx, o)
    assert rel_err(x, ref) < 1e-5
    assert torch.equal(x[ids != IMAGE_PAD], ours.embed[ids[ids != IMAGE_PAD]])  # text rows untouched


def test_scatter_count_mismatch_is_one_line():
    with pytest.raises(InputError, match="3 image placeholder tokens but the images give 2"):
        scatter_image_embeds(torch.zeros(5, 4), torch.ones(2, 4), torch.tensor([0, 1, 1, 1, 0]).bool())


def test_saved_oracle_is_what_transformers_gives(fx):
    saved = torch.load(fx.path / "hf_oracle.pt")
    o = saved["two"]
    ids = torch.tensor([o["ids"]])
    with torch.no_grad():
        again = fx.hf(input_ids=ids, pixel_values=o["pixel_values"], image_grid_thw=o["grid_thw"],
                      mm_token_type_ids=(ids == IMAGE_PAD).int()).logits[0]
    assert torch.equal(again, o["logits"])


@pytest.mark.parametrize("key", ["one", "two"])
def test_multimodal_path_matches_hf_oracle(fx, ours, key):
    """The integrated path: logits within 1e-4 of the logit scale, greedy 16 tokens identical."""
    o = torch.load(fx.path / "hf_oracle.pt")[key]
    logits = ours.logits(o["ids"], o["pixel_values"], o["grid_thw"])
    assert rel_err(logits, o["logits"]) < 1e-4
    assert ours.greedy(o["ids"], GREEDY_TOKENS, o["pixel_values"], o["grid_thw"]) == o["greedy"]
    # the oracle can tell: plain text positions give visibly different logits
    plain = ours.forward(o["ids"], ours.new_caches(len(o["ids"])), text_positions(0, len(o["ids"])),
                         ours.encode_images(o["pixel_values"], o["grid_thw"]))
    assert rel_err(plain, o["logits"]) > 1e-3


def test_decode_after_image_at_token_count_would_be_wrong(fx, ours):
    """Decoding at position = token count (ignoring the rope delta) changes the logits."""
    o = fx.oracle["two"]
    caches = ours.new_caches(len(o["ids"]) + 1)
    pos = ours.positions(o["ids"], o["grid_thw"])
    ours.forward(o["ids"], caches, pos, ours.encode_images(o["pixel_values"], o["grid_thw"]))
    snap = [c.snapshot() for c in caches]
    right = ours.forward([o["greedy"][0]], caches, text_positions(next_position(pos), 1))
    for c, s in zip(caches, snap):
        c.restore(s)
    wrong = ours.forward([o["greedy"][0]], caches, text_positions(len(o["ids"]), 1))
    assert next_position(pos) != len(o["ids"]) and rel_err(wrong, right) > 1e-4


def test_chunked_prefill_with_images_equals_one_prefill(fx, ours):
    """A prompt split in the text after the first image (a chat turn continuing a cached prefix)."""
    o = fx.oracle["two"]
    ids, grid = o["ids"], o["grid_thw"]
    cut = ids.index(VISION_END) + 2
    n_first = int(grid[0].prod())
    caches = ours.new_caches(len(ids))
    p1 = ours.positions(ids[:cut], grid[:1])
    a = ours.forward(ids[:cut], caches, p1, ours.encode_images(o["pixel_values"][:n_first], grid[:1]))
    p2 = ours.positions(ids[cut:], grid[1:], start=next_position(p1))
    b = ours.forward(ids[cut:], caches, p2, ours.encode_images(o["pixel_values"][n_first:], grid[1:]))
    assert rel_err(torch.cat([a, b]), o["logits"]) < 1e-4


def test_bf16_multimodal_within_tolerance(fx):
    o = fx.oracle["two"]
    hf16 = copy.deepcopy(fx.hf).to(torch.bfloat16)
    ids = torch.tensor([o["ids"]])
    with torch.no_grad():
        ref = hf16(input_ids=ids, pixel_values=o["pixel_values"], image_grid_thw=o["grid_thw"],
                   mm_token_type_ids=(ids == IMAGE_PAD).int()).logits[0].float()
    ours16 = MultimodalModel(fx.path, dtype=torch.bfloat16).logits(o["ids"], o["pixel_values"], o["grid_thw"])
    assert rel_err(ours16, ref) < 0.05
    assert (ours16.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95


@pytest.mark.parametrize("chunk", [5, 7, 16])
def test_prefill_chunks_cutting_through_images(fx, ours, chunk):
    """Fixed-size prefill chunks that split image placeholder runs: slice the whole prompt's
    positions and image rows per chunk."""
    from hetero_qwen.model.multimodal import image_rows_for_chunk
    o = fx.oracle["two"]
    ids = o["ids"]
    pos = ours.positions(ids, o["grid_thw"])
    embeds = ours.encode_images(o["pixel_values"], o["grid_thw"])
    caches = ours.new_caches(len(ids))
    out = [ours.forward(ids[a:a + chunk], caches, pos[:, a:a + chunk],
                        embeds[image_rows_for_chunk(ids, a, a + chunk, IMAGE_PAD)])
           for a in range(0, len(ids), chunk)]
    assert rel_err(torch.cat(out), o["logits"]) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tower_and_mrope_on_cuda_equal_cpu(fx, ours):
    from hetero_qwen.model.mrope import MRope
    from hetero_qwen.model.vision import VisionWeights, vision_tower
    o = fx.oracle["two"]
    w = VisionWeights(ours.vision.cfg, {k: v.cuda() for k, v in ours.vision.t.items()})
    assert rel_err(vision_tower(w, o["pixel_values"], o["grid_thw"]).cpu(),
                   vision_tower(ours.vision, o["pixel_values"], o["grid_thw"])) < 1e-4
    pos = ours.positions(o["ids"], o["grid_thw"])
    assert torch.allclose(MRope(ours.cfg, (4, 2, 2), "cuda").cos_sin(pos, torch.float32)[0].cpu(),
                          ours.rope.cos_sin(pos, torch.float32)[0], atol=1e-6)


def test_placeholders_without_image_embeddings_are_refused(fx, ours):
    ids = fx.oracle["one"]["ids"]
    with pytest.raises(InputError, match="8 image placeholder tokens but the images give 0"):
        ours.forward(ids, ours.new_caches(len(ids)), text_positions(0, len(ids)))
