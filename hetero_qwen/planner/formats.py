"""The one format resolver: which storage format each tier's weights use for this checkpoint.

A profile asks for formats (`weights.gpu_dtype`, `weights.cpu_dtype`); the checkpoint and the compute
dtype constrain them. The plan records the result per group, and the loader only carries it out.
"""

from __future__ import annotations

from ..config import ModelConfig
from ..profile import Profile


def resolve_formats(cfg: ModelConfig, profile: Profile, compute_dtype: str = "bf16") -> Profile:
    """The profile with the formats this run will really use:
      - a checkpoint pre-quantized by `hetero-qwen quantize` keeps its packed format in RAM (no
        re-quantization; its disk tier is those packed bytes);
      - an fp32 compute dtype keeps float weights in fp32 on both devices."""
    p = profile
    if cfg.hetero_format and p.cpu_dtype != cfg.hetero_format:
        p = p.replace(cpu_dtype=cfg.hetero_format)
    if compute_dtype == "fp32":
        p = p.replace(gpu_dtype="fp32", cpu_dtype="fp32" if p.cpu_dtype == "bf16" else p.cpu_dtype)
    return p
