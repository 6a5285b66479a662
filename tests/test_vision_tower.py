"""Our vision tower (hetero_qwen/model/vision.py) against transformers' Qwen3_5VisionModel."""

import copy

import pytest
import torch
import torch.nn.functional as F

from hetero_qwen.checkpoint import Checkpoint
from hetero_qwen.config import load_config
from hetero_qwen.errors import CheckpointError, ConfigError
from hetero_qwen.model.vision import interpolated_pos_embed, load_vision_weights, merge_block_order, vision_tower
from hetero_qwen.vision_config import VisionConfig, load_multimodal_config
from helpers import rel_err
from vision_fixtures import hf_inputs, shared_vision_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return shared_vision_fixture(tmp_path_factory)


def our_weights(fx, dtype=torch.float32):
    mm = load_multimodal_config(fx.path)
    return load_vision_weights(Checkpoint(fx.path, load_config(fx.path)), mm.vision, dtype)


def hf_tower(visual, pv, grid):
    with torch.no_grad():
        return visual(pv.to(visual.dtype), grid).pooler_output


@pytest.mark.parametrize("names", [["a.png"], ["b.png"], ["a.png", "b.png"], ["b.png", "a.png"]])
def test_fp32_tower_equals_transformers(fx, names):
    pv, grid = hf_inputs(fx.processor, [fx.images[n] for n in names])
    assert len({tuple(g.tolist()) for g in grid}) == len(names)  # really different sizes
    ours = vision_tower(our_weights(fx), pv, grid)
    ref = hf_tower(fx.hf.model.visual, pv, grid)
    assert ours.shape == ref.shape == (int(grid.prod(-1).sum()) // 4, 64)
    assert rel_err(ours, ref) < 1e-5


def test_two_images_attend_separately(fx):
    """Per-image attention: each image's rows equal that image run alone."""
    pv, grid = hf_inputs(fx.processor, [fx.images["a.png"], fx.images["b.png"]])
    w = our_weights(fx)
    both = vision_tower(w, pv, grid)
    n_a = int(grid[0].prod())
    alone = vision_tower(w, pv[:n_a], grid[:1])
    assert rel_err(both[: n_a // 4], alone) < 1e-6


def test_bf16_tower_within_tolerance(fx):
    pv, grid = hf_inputs(fx.processor, [fx.images["a.png"], fx.images["b.png"]])
    hf16 = copy.deepcopy(fx.hf.model.visual).to(torch.bfloat16)
    ours = vision_tower(our_weights(fx, torch.bfloat16), pv, grid)
    assert ours.dtype == torch.bfloat16
    assert rel_err(ours, hf_tower(hf16, pv, grid)) < 0.05
    assert rel_err(ours, hf_tower(fx.hf.model.visual, pv, grid)) < 0.05


@pytest.mark.parametrize("h,w", [(4, 8), (8, 6), (2, 2), (12, 10)])
def test_position_table_is_bilinear_align_corners(h, w):
    """Against F.interpolate on the square table (independent of transformers' gather form)."""
    side, H = 6, 5
    table = torch.randn(side * side, H)
    ref = F.interpolate(table.T.reshape(1, H, side, side), size=(h, w), mode="bilinear", align_corners=True)
    ref = merge_block_order(ref[0].permute(1, 2, 0), 2)
    assert torch.allclose(interpolated_pos_embed(table, side, h, w, 2), ref, atol=1e-6)


def test_missing_tower_tensor_is_one_line(fx, tmp_path):
    import shutil
    for f in fx.path.iterdir():
        shutil.copy(f, tmp_path / f.name)
    ck = Checkpoint(tmp_path, load_config(tmp_path))
    del ck.entries["model.visual.blocks.1.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match="model.visual.blocks.1.attn.qkv.weight is missing"):
        load_vision_weights(ck, load_multimodal_config(tmp_path).vision)


def test_vision_config_rejects_what_we_cannot_run():
    with pytest.raises(ConfigError, match="deepstack"):
        VisionConfig.from_dict({"deepstack_visual_indexes": [8, 16]})
    with pytest.raises(ConfigError, match="not a square"):
        VisionConfig.from_dict({"num_position_embeddings": 2300})
    with pytest.raises(ConfigError, match="hidden_act"):
        VisionConfig.from_dict({"hidden_act": "relu"})


# ---- planner facts ---------------------------------------------------------------------------
def test_tower_parameter_bytes_equal_the_checkpoint(fx):
    mm = load_multimodal_config(fx.path)
    ck = Checkpoint(fx.path, load_config(fx.path))
    stored = {n[len("model.visual."):]: tuple(ck.entries[n].shape) for n in ck.names("model.visual.")}
    assert stored == mm.vision.tensor_shapes()
    assert mm.vision.param_bytes(4) == sum(ck.nbytes(n) for n in ck.names("model.visual."))
    assert mm.vision.params == sum(p.numel() for p in fx.hf.model.visual.parameters())
    assert our_weights(fx).nbytes() == mm.vision.param_bytes(4)


def test_working_set_equals_real_activation_sizes(fx):
    """At the processor's budget (64x64 pixels = 64 patches), the formula equals the sizes of the
    tensors the tower really makes (captured from transformers' modules)."""
    from PIL import Image
    cfg = load_multimodal_config(fx.path).vision
    budget = fx.processor.size["longest_edge"]
    side = int(budget ** 0.5)
    path = fx.path / "budget.png"
    Image.new("RGB", (side, side), (90, 40, 200)).save(path)
    pv, grid = hf_inputs(fx.processor, [path])
    assert pv.shape[0] == cfg.max_patches(budget)
    seen = {}
    vis = fx.hf.model.visual
    def record(k):
        def hook(mod, args, out):  # returns None: the output is left alone
            seen.setdefault(k, out.numel() * out.element_size())
        return hook
    hooks = [m.register_forward_hook(record(k))
             for k, m in (("norm", vis.blocks[0].norm1), ("qkv", vis.blocks[0].attn.qkv),
                          ("attn", vis.blocks[0].attn), ("fc1", vis.blocks[0].mlp.linear_fc1),
                          ("merge_fc1", vis.merger.linear_fc1), ("out", vis.merger.linear_fc2),
                          ("block", vis.blocks[0]))]
    try:
        hf_tower(vis, pv, grid)
    finally:
        for h in hooks:
            h.remove()
    b = 4
    rotated_qk = seen["qkv"] // 3 * 2 // b * 4            # q and k rotated in fp32
    attention = seen["norm"] + seen["qkv"] + rotated_qk + seen["attn"]
    mlp = seen["norm"] + 2 * seen["fc1"]                   # fc1 out and its GELU
    real = pv.numel() * (4 + b) + seen["block"] + max(attention, mlp) + seen["merge_fc1"] + seen["out"]
    assert cfg.working_bytes(budget, dtype_bytes=b) == real


def test_27b_tower_size_equals_transformers_on_meta():
    from transformers import Qwen3_5Config
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel
    mm = load_multimodal_config("qwen3.6-27b")
    with torch.device("meta"):
        hf = Qwen3_5VisionModel(Qwen3_5Config(vision_config=dict(out_hidden_size=5120)).vision_config)
    assert mm.vision.params == sum(p.numel() for p in hf.parameters()) == 460_730_096
    assert mm.vision.param_bytes(2) == 921_460_192
    # 16384 merged tokens (the preprocessor's largest budget): ~2.3 GiB of activations in bf16
    assert 2.0 * 2**30 < mm.vision.working_bytes(16384 * 32 * 32, 2) < 2.5 * 2**30
