"""Image files -> pixels, grids and placeholder tokens (hetero_qwen/vision_input.py)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hetero_qwen.errors import InputError
from hetero_qwen.vision_config import load_multimodal_config
from hetero_qwen.vision_input import (ImageError, check_fits, image_placeholder_ids, load_image_processor,
                                      pixel_budget, prepare_images)
from vision_fixtures import IMAGE_PAD, VISION_END, VISION_START, hf_inputs, shared_vision_fixture


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return shared_vision_fixture(tmp_path_factory)


def save(path, w, h, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_processor_is_transformers_own_and_offline(fx):
    p = load_image_processor(fx.path)
    assert type(p).__module__.startswith("transformers.models.qwen2_vl.")
    assert pixel_budget(p) == (16 * 16, 64 * 64)


def test_prepared_images_equal_the_oracle_inputs(fx):
    got = prepare_images(load_image_processor(fx.path), [fx.images["a.png"], fx.images["b.png"]])
    o = fx.oracle["two"]
    assert torch.equal(got.pixel_values, o["pixel_values"]) and torch.equal(got.grid_thw, o["grid_thw"])
    assert got.token_counts == [8, 12] and got.notes == []
    assert o["ids"].count(IMAGE_PAD) == sum(got.token_counts)


def test_placeholder_ids_from_config(fx):
    mm = load_multimodal_config(fx.path)
    assert image_placeholder_ids(3, mm) == [VISION_START, IMAGE_PAD, IMAGE_PAD, IMAGE_PAD, VISION_END]
    real = load_multimodal_config("qwen3.6-27b")
    special = json.loads(open("/work/shared/reference/qwen3.6-27b/special_tokens.json").read())
    assert image_placeholder_ids(1, real) == [special["<|vision_start|>"], special["<|image_pad|>"],
                                              special["<|vision_end|>"]]


def test_pixel_budget_options_change_the_grid(fx, tmp_path):
    img = save(tmp_path / "x.png", 56, 40)
    small = prepare_images(load_image_processor(fx.path, max_pixels=32 * 32), [img])
    assert small.grid_thw.tolist() == [[1, 2, 4]] and small.token_counts == [2]
    assert small.notes == [f"note: {img}: 56x40 is above the image pixel budget (1024 pixels); "
                           f"resized to 32x16 (2 tokens)"]
    big = prepare_images(load_image_processor(fx.path, min_pixels=48 * 48), [img])
    assert int(big.grid_thw.prod()) * 64 >= 48 * 48 and big.notes == []
    with pytest.raises(ImageError, match="--image-min-pixels .* is above --image-max-pixels"):
        load_image_processor(fx.path, min_pixels=5000, max_pixels=4000)
    with pytest.raises(ImageError, match="--image-max-pixels must be a positive"):
        load_image_processor(fx.path, max_pixels=0)


def test_image_beyond_budget_is_resized_with_one_note(fx, tmp_path):
    img = save(tmp_path / "big.png", 300, 200)
    got = prepare_images(load_image_processor(fx.path), [img])
    assert len(got.notes) == 1 and "\n" not in got.notes[0]
    assert got.notes[0].startswith(f"note: {img}: 300x200 is above the image pixel budget (4096 pixels)")
    assert int(got.grid_thw.prod()) * 64 <= 4096


def test_bad_files_are_one_line_errors(fx, tmp_path):
    p = load_image_processor(fx.path)
    data = fx.images["a.png"].read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image at all\n")
    save(tmp_path / "thin.png", 600, 2)
    cases = {"trunc.png": "truncated or corrupt image", "notes.txt": "not an image",
             "missing.png": "no such image file", "thin.png": "cannot be resized into the budget"}
    for name, msg in cases.items():
        with pytest.raises(ImageError, match=msg) as e:
            prepare_images(p, [tmp_path / name])
        assert "\n" not in str(e.value) and str(tmp_path / name) in str(e.value)
        assert isinstance(e.value, InputError) and e.value.exit_code == 2


def test_no_preprocessor_config_is_one_line(tmp_path):
    with pytest.raises(ImageError, match="no preprocessor_config.json"):
        load_image_processor(tmp_path)


def test_digest_follows_image_content(fx, tmp_path):
    p = load_image_processor(fx.path)
    a = prepare_images(p, [fx.images["a.png"], fx.images["b.png"]])
    assert a.digest(0) == prepare_images(p, [fx.images["a.png"]]).digest(0)
    assert a.digest(0) != a.digest(1)
    changed = save(tmp_path / "a2.png", 56, 40, seed=99)
    assert prepare_images(p, [changed]).digest(0) != a.digest(0)


def test_prompt_must_fit_context():
    check_fits(100, 100)
    with pytest.raises(InputError, match="101 tokens, more than the context"):
        check_fits(101, 100)


def test_processor_output_is_what_hf_tower_is_fed(fx):
    """hf_inputs (the fixture's direct processor call) and prepare_images agree for one image."""
    pv, grid = hf_inputs(fx.processor, [fx.images["b.png"]])
    got = prepare_images(load_image_processor(fx.path), [fx.images["b.png"]])
    assert torch.equal(got.pixel_values, pv) and torch.equal(got.grid_thw, grid)
