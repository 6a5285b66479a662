"""A tiny random `Qwen3_5ForConditionalGeneration` with a real vision tower, saved with save_pretrained
next to a `preprocessor_config.json`, two small PNGs of different sizes, and HF's fp32 oracle
(logits and greedy continuations) for prompts with one and with two images.

Shapes keep the structure of the 27B: temporal patch 2, spatial merge 2, a learned position grid that
must be both up- and down-sampled, interleaved M-RoPE sections that differ from the default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hf_models import TINY_TEXT, _randomize

IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END = 302, 303, 300, 301
VISION = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, in_channels=3, patch_size=8,
              temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=36, out_hidden_size=64,
              hidden_act="gelu_pytorch_tanh")
TEXT = {**TINY_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": 0.5, "mrope_section": [4, 2, 2],
                                         "mrope_interleaved": True}}
PREPROCESSOR = {"size": {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}, "patch_size": 8,
                "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                "image_processor_type": "Qwen2VLImageProcessorFast"}
IMAGE_SIZES = {"a.png": (56, 40), "b.png": (48, 72)}  # (width, height): grids 4x8 and 8x6 patches
GREEDY_TOKENS = 16


def make_vision_hf_model(seed: int = 11, dtype=torch.float32):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    torch.manual_seed(seed)
    cfg = Qwen3_5Config(text_config=TEXT, vision_config=VISION, image_token_id=IMAGE_PAD,
                        video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START,
                        vision_end_token_id=VISION_END)
    model = Qwen3_5ForConditionalGeneration(cfg)
    _randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # LayerNorms init to (1, 0): make them visible too
        for name, p in model.model.visual.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
    return model.to(dtype).eval()


def write_images(dest: Path) -> dict[str, Path]:
    from PIL import Image
    rng = np.random.default_rng(5)
    out = {}
    for name, (w, h) in IMAGE_SIZES.items():
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(dest / name)
        out[name] = dest / name
    return out


def placeholder(n_tokens: int) -> list[int]:
    return [VISION_START] + [IMAGE_PAD] * n_tokens + [VISION_END]


def prompt_ids(counts: list[int]) -> list[int]:
    """Text before, between and after the images."""
    ids = [(7 * i + 3) % 290 + 1 for i in range(6)]
    for j, n in enumerate(counts):
        ids += placeholder(n) + [(11 * i + 5 * j + 2) % 290 + 1 for i in range(4 + j)]
    return ids


@dataclass
class VisionFixture:
    hf: object              # the fp32 HF model
    path: Path              # saved model dir (weights, config.json, preprocessor_config.json)
    images: dict[str, Path]
    processor: object       # transformers' image processor for this dir
    oracle: dict            # "one" / "two" -> {ids, pixel_values, grid_thw, logits, greedy}


def hf_inputs(processor, paths: list[Path]):
    from PIL import Image
    out = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def hf_forward_and_greedy(hf, ids: list[int], pixel_values, grid_thw):
    input_ids = torch.tensor([ids])
    mm = (input_ids == IMAGE_PAD).int()
    with torch.no_grad():
        logits = hf(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid_thw,
                    mm_token_type_ids=mm).logits[0].float()
        out = hf.generate(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid_thw,
                          mm_token_type_ids=mm, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    return logits, out[0, len(ids):].tolist()


def build_vision_fixture(dest: Path) -> VisionFixture:
    from transformers import AutoImageProcessor
    dest.mkdir(parents=True, exist_ok=True)
    hf = make_vision_hf_model()
    hf.save_pretrained(dest, max_shard_size="200KB")
    (dest / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
    images = write_images(dest)
    processor = AutoImageProcessor.from_pretrained(dest)
    oracle = {}
    for key, names in (("one", ["a.png"]), ("two", ["a.png", "b.png"])):
        pv, grid = hf_inputs(processor, [images[n] for n in names])
        counts = [int(g.prod()) // 4 for g in grid]
        ids = prompt_ids(counts)
        logits, greedy = hf_forward_and_greedy(hf, ids, pv, grid)
        oracle[key] = dict(ids=ids, pixel_values=pv, grid_thw=grid, logits=logits, greedy=greedy)
    torch.save(oracle, dest / "hf_oracle.pt")  # what the integrated engine path must reproduce
    return VisionFixture(hf, dest, images, processor, oracle)


_BUILT: dict = {}


def shared_vision_fixture(tmp_path_factory) -> VisionFixture:
    """Built once per test process, whichever test module asks first."""
    if "fx" not in _BUILT:
        _BUILT["fx"] = build_vision_fixture(tmp_path_factory.mktemp("vision"))
    return _BUILT["fx"]
