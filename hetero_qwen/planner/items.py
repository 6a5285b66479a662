"""Placement items: one per weight group, in execution order (embed, mixer/ffn per layer, head),
with everything the cost model needs as plain numbers. Built from the config alone.

A mixer item carries its cache: the KV slice of its attention layer (context tokens) or the
recurrent + conv state of its DeltaNet layer. The cache always lives on the mixer's home device.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig, WeightGroup
from ..formats import matrix_bytes

STREAMABLE_KINDS = ("attention", "deltanet", "ffn")  # embed reads rows; prefill needs one head row


@dataclass(frozen=True)
class Item:
    name: str
    kind: str  # ffn | deltanet | attention | embed | head
    layer: int | None
    params: int  # matrix parameters: 2*params FLOPs per token row
    bytes_gpu: int  # resident bytes in weights.gpu_dtype
    bytes_cpu: int  # resident bytes in weights.cpu_dtype
    bytes_disk: int  # bytes in the checkpoint's own format (the mmap'd tier)
    row_bytes: dict  # embed: bytes of one row per format key ("gpu"/"cpu"/"disk"); else {}
    kv_per_token: int = 0  # attention: K+V bytes one token adds to this layer's cache
    state_bytes: int = 0  # deltanet: recurrent + conv state of this layer (fp32)
    attn_pair_flops: int = 0  # attention: FLOPs per (query, key) pair = 4 * heads * head_dim
    recurrent_flops: int = 0  # deltanet: FLOPs per token of the state update = 6 * Hv * Dk * Dv

    @property
    def streamable(self) -> bool:
        return self.kind in STREAMABLE_KINDS

    def nbytes(self, home: str) -> int:
        return {"gpu": self.bytes_gpu, "cpu": self.bytes_cpu, "disk": self.bytes_disk}[home]

    def cache_bytes(self, context: int) -> int:
        """Resident cache this mixer keeps next to itself for a `context`-token sequence."""
        return self.kv_per_token * context + self.state_bytes


def checkpoint_format(cfg: ModelConfig) -> str:
    """Format of the weights as stored on disk (what a memory-mapped group is read in)."""
    if cfg.hetero_format:
        return cfg.hetero_format
    if cfg.quantization and cfg.quantization.get("quant_method") == "fp8":
        return "fp8"
    return "fp32" if cfg.torch_dtype == "float32" else "bf16"


def build_items(cfg: ModelConfig, gpu_dtype: str, cpu_dtype: str) -> list[Item]:
    disk_fmt = checkpoint_format(cfg)
    act = 4 if "fp32" in (gpu_dtype, cpu_dtype) else 2  # KV in the compute dtype: fp32 or bf16
    kv_layer = cfg.num_key_value_heads * cfg.head_dim * 2 * act  # K and V
    n_linear = max(len(cfg.linear_attention_layers), 1)
    state_layer = cfg.deltanet_state_bytes() // n_linear
    items = []
    for g in cfg.weight_groups():
        items.append(_item(cfg, g, gpu_dtype, cpu_dtype, disk_fmt, kv_layer, state_layer))
    return items


def _item(cfg: ModelConfig, g: WeightGroup, gpu_fmt: str, cpu_fmt: str, disk_fmt: str,
          kv_layer: int, state_layer: int) -> Item:
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
    return Item(g.name, g.kind, g.layer, params, g.nbytes(gpu_fmt), g.nbytes(cpu_fmt),
                g.nbytes(disk_fmt), row_bytes, **extra)
