"""The one format resolver: which storage format each tier's weights use for this checkpoint.

A profile asks for formats (`weights.gpu_dtype`, `weights.cpu_dtype`); the checkpoint and the compute
dtype constrain them. The plan records the result per group, and the loader only carries it out.
"""

from __future__ import annotations

from ..config import ModelConfig
from ..profile import Profile
from .items import community_int4


def resolve_formats(cfg: ModelConfig, profile: Profile, compute_dtype: str = "bf16") -> Profile:
    """The profile with the formats this run will really use:
      - a checkpoint pre-quantized by `hetero-qwen quantize` keeps its packed format in RAM (no
        re-quantization; its disk tier is those packed bytes);
      - a GPTQ/AWQ/compressed-tensors int4 checkpoint has no disk tier: its packing is not what our
        CPU kernels read, so nothing is left memory-mapped (`hetero-qwen quantize --format int4`
        repacks it into ours, exactly where the groups allow, and that has one);
      - an fp32 compute dtype keeps float weights in fp32 on both devices (quantized GPU formats
        stay; their float parts are fp32).
    `gpu_dtype: auto` stays auto here: planner.gpu_format_choice plans each candidate."""
    p = profile.replace(compute_dtype=compute_dtype)
    if cfg.hetero_format and p.cpu_dtype != cfg.hetero_format:
        p = p.replace(cpu_dtype=cfg.hetero_format)
    if community_int4(cfg) and p.disk_spill:
        p = p.replace(disk_spill=False)
    if compute_dtype == "fp32":
        p = p.replace(gpu_dtype="fp32" if p.gpu_dtype == "bf16" else p.gpu_dtype,
                      cpu_dtype="fp32" if p.cpu_dtype == "bf16" else p.cpu_dtype)
    return p
