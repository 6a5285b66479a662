"""The format of each weight group in each tier, decided once here (the plan records it per group,
the executor carries it out):

  GPU  : the profile's gpu_dtype, or a matching override's `dtype`; with these defaults, which follow
         what the published int4 checkpoints keep unquantized (ANCHORS.md):
           embedding        float (a lookup reads one row per token: quantizing it saves no time)
           head             int8 when the layers are quantized (int8 keeps top-1 agreement; README
                            "GPU weight formats"; the 27B's head is 1.3 GB in int8, 0.7 GB in int4)
           DeltaNet in_proj_a / in_proj_b   float ([value heads, hidden]: tiny, and the gates' inputs)
  CPU  : the profile's cpu_dtype, or a matching override's `dtype` when it is a CPU format.
  disk : the checkpoint's own format (the mapped file is read as stored).
"Float" is the compute dtype: bf16, or fp32 for exactness checks.
"""

from __future__ import annotations

import math

from ..config import WeightGroup
from ..formats import FLOAT_BYTES, gpu_matrix_bytes

GPU_QUANT = ("int8", "int4", "fp8")
CPU_FORMATS = ("bf16", "int8", "int4", "fp32")
FLOAT_ON_GPU = {"deltanet": ("in_proj_b.weight", "in_proj_a.weight")}
PRECISION_ORDER = ("fp32", "bf16", "fp8", "int8", "int4")  # most precise first


def float_format(compute_dtype: str) -> str:
    return "fp32" if compute_dtype == "fp32" else "bf16"


def gpu_group_format(kind: str, gpu_dtype: str, override: str | None, compute_dtype: str = "bf16") -> str:
    flt = float_format(compute_dtype)
    if kind == "embed":
        return flt
    fmt = override or gpu_dtype
    if fmt in ("bf16", "fp32", "auto"):
        return flt
    if override is None and kind == "head" and fmt in GPU_QUANT:
        return "int8"
    return fmt


def cpu_group_format(cpu_dtype: str, override: str | None) -> str:
    if override in CPU_FORMATS:
        return "fp32" if override == "bf16" and cpu_dtype == "fp32" else override
    return cpu_dtype


def gpu_matrix_format(kind: str, local: str, group_fmt: str, compute_dtype: str = "bf16") -> str:
    """A matrix's format inside a group stored as `group_fmt` on the GPU."""
    if group_fmt in GPU_QUANT and local in FLOAT_ON_GPU.get(kind, ()):
        return float_format(compute_dtype)
    return group_fmt


def gpu_group_bytes(g: WeightGroup, group_fmt: str, compute_dtype: str = "bf16") -> int:
    """Resident GPU bytes of group `g` in `group_fmt` (vectors in fp32, as the engine keeps them)."""
    mats = sum(gpu_matrix_bytes(r, c, gpu_matrix_format(g.kind, local, group_fmt, compute_dtype))
               for local, (r, c) in g.matrices)
    vecs = sum(math.prod(s) for _, s in g.vectors) * FLOAT_BYTES["fp32"]
    return mats + vecs
