"""Placement items: one per weight group, in execution order (embed, mixer/ffn per layer, head),
with everything the cost model needs as plain numbers. Built from the config alone.

A mixer item carries its cache: the KV slice of its attention layer (context tokens) or the
recurrent + conv state of its DeltaNet layer. The cache always lives on the mixer's home device.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Callable

from ..config import ModelConfig, WeightGroup
from ..formats import matrix_bytes
from .group_formats import cpu_group_format, gpu_group_bytes, gpu_group_format

STREAMABLE_KINDS = ("attention", "deltanet", "ffn")  # embed reads rows; prefill needs one head row


@dataclass(frozen=True)
class Item:
    name: str
    kind: str  # ffn | deltanet | attention | embed | head
    layer: int | None
    params: int  # matrix parameters: 2*params FLOPs per token row
    bytes_gpu: int  # resident bytes in its GPU format (fmt_gpu)
    bytes_cpu: int  # resident bytes in its CPU format (fmt_cpu)
    bytes_disk: int  # bytes in the checkpoint's own format (the mmap'd tier)
    row_bytes: dict  # embed: bytes of one row per format key ("gpu"/"cpu"/"disk"); else {}
    fmt_gpu: str = "bf16"  # planner/group_formats.py decides these
    fmt_cpu: str = "bf16"
    fmt_disk: str = "bf16"
    kv_per_token: int = 0  # attention: K+V bytes one token adds to this layer's cache
    state_bytes: int = 0  # deltanet: recurrent + conv state of this layer (fp32)
    attn_pair_flops: int = 0  # attention: FLOPs per (query, key) pair = 4 * heads * head_dim
    recurrent_flops: int = 0  # deltanet: FLOPs per token of the state update = 6 * Hv * Dk * Dv

    @property
    def streamable(self) -> bool:
        return self.kind in STREAMABLE_KINDS

    def nbytes(self, home: str) -> int:
        return {"gpu": self.bytes_gpu, "cpu": self.bytes_cpu, "disk": self.bytes_disk}[home]

    def fmt(self, home: str) -> str:
        """The format this item's weights are stored in when they live in `home`."""
        return {"gpu": self.fmt_gpu, "cpu": self.fmt_cpu, "disk": self.fmt_disk}[home]

    def cache_bytes(self, context: int) -> int:
        """Resident cache this mixer keeps next to itself for a `context`-token sequence."""
        return self.kv_per_token * context + self.state_bytes


COMMUNITY_INT4 = ("gptq", "awq", "compressed-tensors")


def community_int4(cfg: ModelConfig) -> str | None:
    """The quantizer's name when the checkpoint is a GPTQ/AWQ/compressed-tensors int4 download."""
    q = (cfg.quantization or {}).get("quant_method")
    return q if q in COMMUNITY_INT4 else None


def checkpoint_format(cfg: ModelConfig) -> str:
    """Format of the weights as stored on disk (what a memory-mapped group is read in)."""
    if cfg.hetero_format:
        return cfg.hetero_format
    if cfg.quantization and cfg.quantization.get("quant_method") == "fp8":
        return "fp8"
    if community_int4(cfg):
        return "int4"  # its packing is not our kernels' layout: no disk tier (planner.formats)
    return "fp32" if cfg.torch_dtype == "float32" else "bf16"


def build_items(cfg: ModelConfig, gpu_dtype: str, cpu_dtype: str,
                dtype_override: Callable[[str], str | None] = lambda name: None,
                compute_dtype: str | None = None) -> list[Item]:
    """One item per weight group; each group's GPU and CPU format from planner/group_formats.py
    (`dtype_override`: the profile's per-group `dtype`, by group name)."""
    disk_fmt = checkpoint_format(cfg)
    if compute_dtype is None:
        compute_dtype = "fp32" if "fp32" in (gpu_dtype, cpu_dtype) else "bf16"
    act = 4 if compute_dtype == "fp32" else 2  # KV in the compute dtype: fp32 or bf16
    kv_layer = cfg.num_key_value_heads * cfg.head_dim * 2 * act  # K and V
    n_linear = max(len(cfg.linear_attention_layers), 1)
    state_layer = cfg.deltanet_state_bytes() // n_linear
    items = []
    for g in cfg.weight_groups():
        o = dtype_override(g.name)
        fmts = (gpu_group_format(g.kind, gpu_dtype, o, compute_dtype), cpu_group_format(cpu_dtype, o), disk_fmt)
        items.append(_item(cfg, g, fmts, compute_dtype, kv_layer, state_layer))
    return items


def _item(cfg: ModelConfig, g: WeightGroup, fmts: tuple[str, str, str], compute_dtype: str,
          kv_layer: int, state_layer: int) -> Item:
    gpu_fmt, cpu_fmt, disk_fmt = fmts
    params = sum(r * c for _, (r, c) in g.matrices)
    row_bytes = {}
    if g.kind == "embed":
        (_, (_, cols)), = g.matrices
        row_bytes = {"gpu": matrix_bytes(1, cols, gpu_fmt), "cpu": matrix_bytes(1, cols, cpu_fmt),
                     "disk": matrix_bytes(1, cols, disk_fmt)}
    extra = {}
    if g.kind == "attention":
        extra = dict(kv_per_token=kv_layer, attn_pair_flops=4 * cfg.num_attention_heads * cfg.head_dim)
    elif g.kind == "deltanet":
        extra = dict(state_bytes=state_layer, recurrent_flops=6 * cfg.linear_num_value_heads
                     * cfg.linear_key_head_dim * cfg.linear_value_head_dim)
    return Item(g.name, g.kind, g.layer, params, gpu_group_bytes(g, gpu_fmt, compute_dtype), g.nbytes(cpu_fmt),
                g.nbytes(disk_fmt), row_bytes, gpu_fmt, cpu_fmt, disk_fmt, **extra)
