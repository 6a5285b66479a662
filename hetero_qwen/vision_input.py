"""Image files -> what the vision tower and the prompt need, by transformers' own image processor.

The checkpoint's `preprocessor_config.json` picks the processor (`Qwen2VLImageProcessor(Fast)`;
transformers falls back to its PIL backend, `Qwen2VLImageProcessorPil`, without torchvision). It
resizes each image into the pixel budget (multiples of patch * merge), normalises, and flattens
patches in merge-block order. Bad files give one clear line; an image resized down to the budget
gives one note. Each image becomes `<|vision_start|>` + n x `<|image_pad|>` + `<|vision_end|>`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputError
from .vision_config import MultimodalConfig

PREPROCESSOR_FILE = "preprocessor_config.json"


class ImageError(InputError):
    """An image file we cannot use (missing, not an image, truncated, absurd shape)."""


def load_image_processor(model_dir: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """transformers' image processor for the checkpoint, with optional pixel-budget overrides."""
    from transformers import AutoImageProcessor
    model_dir = Path(model_dir)
    if not (model_dir / PREPROCESSOR_FILE).is_file():
        raise ImageError(f"{model_dir}: no {PREPROCESSOR_FILE}; this checkpoint cannot take images")
    for name, v in (("--image-min-pixels", min_pixels), ("--image-max-pixels", max_pixels)):
        if v is not None and v <= 0:
            raise ImageError(f"{name} must be a positive number of pixels, got {v}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ImageError(f"--image-min-pixels ({min_pixels}) is above --image-max-pixels ({max_pixels})")
    overrides = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    try:
        return AutoImageProcessor.from_pretrained(str(model_dir), **overrides)
    except (OSError, ValueError, KeyError) as e:
        raise ImageError(f"{model_dir / PREPROCESSOR_FILE}: cannot build the image processor ({e})") from None


def pixel_budget(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) the processor resizes into."""
    return int(processor.size["shortest_edge"]), int(processor.size["longest_edge"])


def open_image(path: str | Path):
    """The image as an upright RGB PIL image, fully decoded (so a truncated file fails here)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such image file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (Pillow cannot read this file)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large to decode ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: truncated or corrupt image ({e})") from None


def resized_size(processor, width: int, height: int, label: str = "image") -> tuple[int, int]:
    """(width, height) the processor will resize an image to."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    lo, hi = pixel_budget(processor)
    try:
        h, w = smart_resize(height, width, factor=processor.patch_size * processor.merge_size,
                            min_pixels=lo, max_pixels=hi)
    except ValueError as e:
        raise ImageError(f"{label}: {width}x{height} cannot be resized into the budget ({e})") from None
    return w, h


@dataclass
class PreparedImages:
    pixel_values: torch.Tensor               # [sum patches, C * tps * p * p] fp32, images in order
    grid_thw: torch.Tensor                   # [n_images, 3] long, in patches
    token_counts: list[int]                  # placeholder tokens per image
    paths: list[Path]
    notes: list[str] = field(default_factory=list)  # one line per image resized down to the budget

    def __len__(self) -> int:
        return len(self.token_counts)

    def digest(self, i: int) -> str:
        """Content hash of image i as the model sees it (grid + pixels): a prompt-cache key part."""
        start = int(self.grid_thw[:i].prod(-1).sum())
        n = int(self.grid_thw[i].prod())
        h = hashlib.sha256(str(self.grid_thw[i].tolist()).encode())
        h.update(self.pixel_values[start:start + n].contiguous().numpy().tobytes())
        return h.hexdigest()


def prepare_images(processor, paths) -> PreparedImages:
    """Open, resize into the budget, normalise and patchify every image (transformers' processor)."""
    paths = [Path(p) for p in paths]
    images, notes = [], []
    _, hi = pixel_budget(processor)
    merge = processor.merge_size
    for p in paths:
        im = open_image(p)
        w, h = resized_size(processor, *im.size, label=str(p))
        if im.size[0] * im.size[1] > hi:
            tokens = (w // processor.patch_size) * (h // processor.patch_size) // merge ** 2
            notes.append(f"note: {p}: {im.size[0]}x{im.size[1]} is above the image pixel budget "
                         f"({hi} pixels); resized to {w}x{h} ({tokens} tokens)")
        images.append(im)
    if not images:
        return PreparedImages(torch.zeros(0, 0), torch.zeros(0, 3, dtype=torch.long), [], [], [])
    out = processor(images=images, return_tensors="pt")
    grid = out["image_grid_thw"].long()
    counts = [int(g.prod()) // merge ** 2 for g in grid]
    return PreparedImages(out["pixel_values"].float(), grid, counts, paths, notes)


def image_placeholder_ids(n_tokens: int, mm: MultimodalConfig) -> list[int]:
    """`<|vision_start|>` + n x `<|image_pad|>` + `<|vision_end|>` as token ids."""
    return [mm.vision_start_token_id] + [mm.image_token_id] * n_tokens + [mm.vision_end_token_id]


def check_fits(prompt_tokens: int, context: int) -> None:
    """One line when a prompt with its image tokens does not fit the context."""
    if prompt_tokens > context:
        raise InputError(f"the prompt with its images is {prompt_tokens} tokens, more than the context "
                         f"({context}); use fewer or smaller images (--image-max-pixels)")
