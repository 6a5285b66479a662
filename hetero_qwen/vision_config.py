"""Vision side of a `Qwen3_5ForConditionalGeneration` config: the tower's shape, the image token ids,
the M-RoPE sections, and the sizes the planner needs (tower parameters, working set per image budget).

Kept apart from config.py so a text-only model never parses it. `load_vision_config` returns None for
a checkpoint without a `vision_config` (text-only `Qwen3_5ForCausalLM`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .config import load_raw_config
from .errors import ConfigError
from .special_tokens import QWEN_FIRST_SPECIAL_ID, QWEN_SPECIAL_TOKENS

LAYER_NORM_EPS = 1e-6  # hard-coded by transformers for every vision LayerNorm
GELU_KINDS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}  # hidden_act -> F.gelu approximate=


def _qwen_special_id(text: str) -> int:
    return QWEN_FIRST_SPECIAL_ID + [t for t, _ in QWEN_SPECIAL_TOKENS].index(text)


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 5120
    num_position_embeddings: int = 2304
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch as the image processor emits them: C * tps * p * p."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size ** 2

    @property
    def merged_dim(self) -> int:
        return self.hidden_size * self.merge_unit

    @property
    def grid_side(self) -> int:
        """The learned position table is a square grid of this many patches per side."""
        return math.isqrt(self.num_position_embeddings)

    # ---- planner facts ----------------------------------------------------------------------
    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tower tensor by its name under `model.visual.`."""
        h, i, m, o = self.hidden_size, self.intermediate_size, self.merged_dim, self.out_hidden_size
        shapes = {
            "patch_embed.proj.weight": (h, self.in_channels, self.temporal_patch_size, self.patch_size, self.patch_size),
            "patch_embed.proj.bias": (h,),
            "pos_embed.weight": (self.num_position_embeddings, h),
        }
        for b in range(self.depth):
            p = f"blocks.{b}."
            shapes |= {p + "norm1.weight": (h,), p + "norm1.bias": (h,), p + "norm2.weight": (h,), p + "norm2.bias": (h,),
                       p + "attn.qkv.weight": (3 * h, h), p + "attn.qkv.bias": (3 * h,),
                       p + "attn.proj.weight": (h, h), p + "attn.proj.bias": (h,),
                       p + "mlp.linear_fc1.weight": (i, h), p + "mlp.linear_fc1.bias": (i,),
                       p + "mlp.linear_fc2.weight": (h, i), p + "mlp.linear_fc2.bias": (h,)}
        shapes |= {"merger.norm.weight": (h,), "merger.norm.bias": (h,),
                   "merger.linear_fc1.weight": (m, m), "merger.linear_fc1.bias": (m,),
                   "merger.linear_fc2.weight": (o, m), "merger.linear_fc2.bias": (o,)}
        return shapes

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.tensor_shapes().values())

    def param_bytes(self, dtype_bytes: int = 2) -> int:
        """The tower's resident weights (all kept in the activation dtype)."""
        return self.params * dtype_bytes

    def max_patches(self, max_pixels: int) -> int:
        """Patches of the largest image the processor lets through at this pixel budget
        (one frame: the processor resizes so that height * width <= max_pixels)."""
        return max_pixels // self.patch_size ** 2

    def working_bytes(self, max_pixels: int, dtype_bytes: int = 2) -> int:
        """Peak activation bytes while the tower runs one image at the pixel budget, assuming a
        fused attention kernel (no [heads, N, N] score matrix; true of torch's SDPA on CUDA and CPU
        without a mask). Live at the peak: pixels (fp32 + cast), residual, the larger of the
        attention stage (norm out, qkv, fp32 rotated q and k, attention out) and the MLP stage (norm
        out, fc1 out, GELU out), plus the merged output."""
        n = self.max_patches(max_pixels)
        h, i, b = self.hidden_size, self.intermediate_size, dtype_bytes
        pixels = n * self.patch_dim * (4 + b)
        residual = n * h * b
        attention = n * h * b + n * 3 * h * b + 2 * n * h * 4 + n * h * b
        mlp = n * h * b + 2 * n * i * b
        merged = (n // self.merge_unit) * (self.merged_dim + self.out_hidden_size) * b
        return pixels + residual + max(attention, mlp) + merged

    @classmethod
    def from_dict(cls, v: dict, source: str = "config.json") -> "VisionConfig":
        try:
            if v.get("deepstack_visual_indexes"):
                raise ConfigError(f"{source}: vision deepstack (deepstack_visual_indexes) is not supported")
            rope = v.get("rope_parameters") or {}
            cfg = cls(
                depth=int(v.get("depth", 27)), hidden_size=int(v.get("hidden_size", 1152)),
                intermediate_size=int(v.get("intermediate_size", 4304)), num_heads=int(v.get("num_heads", 16)),
                in_channels=int(v.get("in_channels", 3)), patch_size=int(v.get("patch_size", 16)),
                temporal_patch_size=int(v.get("temporal_patch_size", 2)),
                spatial_merge_size=int(v.get("spatial_merge_size", 2)),
                out_hidden_size=int(v.get("out_hidden_size", 3584)),
                num_position_embeddings=int(v.get("num_position_embeddings", 2304)),
                hidden_act=str(v.get("hidden_act", "gelu_pytorch_tanh")),
                rope_theta=float(rope.get("rope_theta", 10000.0)),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: bad vision_config value: {e}") from None
        if cfg.hidden_act not in GELU_KINDS:
            raise ConfigError(f"{source}: vision hidden_act {cfg.hidden_act!r} is not supported "
                              f"({', '.join(GELU_KINDS)})")
        if cfg.grid_side ** 2 != cfg.num_position_embeddings:
            raise ConfigError(f"{source}: vision num_position_embeddings {cfg.num_position_embeddings} is not a square")
        if cfg.hidden_size % cfg.num_heads or cfg.head_dim % 4:
            raise ConfigError(f"{source}: vision head dim must divide hidden_size and be a multiple of 4")
        return cfg


@dataclass(frozen=True)
class MultimodalConfig:
    """What the language model needs to take images: token ids and interleaved M-RoPE sections."""

    vision: VisionConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    mrope_section: tuple[int, int, int] = (11, 11, 10)  # frequencies per (t, h, w) axis, interleaved

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "MultimodalConfig | None":
        if "vision_config" not in raw:
            return None
        text = raw.get("text_config") or {}
        rp = text.get("rope_parameters") or text.get("rope_scaling") or {}
        section = tuple(int(s) for s in rp.get("mrope_section", (11, 11, 10)))
        if len(section) != 3:
            raise ConfigError(f"{source}: mrope_section must have 3 entries, got {list(section)}")

        def tok(key: str, text_name: str) -> int:
            return int(raw.get(key, _qwen_special_id(text_name)))

        return cls(
            vision=VisionConfig.from_dict(raw["vision_config"] or {}, source),
            image_token_id=tok("image_token_id", "<|image_pad|>"),
            video_token_id=tok("video_token_id", "<|video_pad|>"),
            vision_start_token_id=tok("vision_start_token_id", "<|vision_start|>"),
            vision_end_token_id=tok("vision_end_token_id", "<|vision_end|>"),
            mrope_section=section,  # type: ignore[arg-type]
        )


def load_multimodal_config(path_or_preset: str | Path) -> MultimodalConfig | None:
    """The vision side of a model directory / config.json / preset; None when it has no tower."""
    return MultimodalConfig.from_dict(load_raw_config(path_or_preset), source=str(path_or_preset))
